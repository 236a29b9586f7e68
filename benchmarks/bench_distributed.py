"""Ray workers against one process, in one run: the overhead of scoring candidates on workers (the
bundled default's search, candidates judged per minute) and the scaling of terminal computation
(``cic`` and ``abl`` of every image) with the number of workers.

    python benchmarks/bench_distributed.py                       # bundled default, 1 and 2 workers
    python benchmarks/bench_distributed.py --workers 1,2,4 --worker-gpus 1 --device cuda

Every worker asks Ray for ``--worker-cpus`` CPUs (its torch threads); one process uses torch's
default threads. On a machine with C cores, W workers of C / W CPUs use what one process uses.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray
import torch

from sycam_dsl.allocator import keep_freed_memory
from sycam_dsl.bundled import bundled_images, load_bundled_model
from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.cli.synth import BUNDLED
from sycam_dsl.parse import resolve_grammar
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.run.runner import resolve_metric
from sycam_dsl.synthesis import Budget, SearchOptions, parse_level_sizes
from sycam_dsl.synthesis.distributed import ClusterOptions, WorkerSpec, shard_pool

TERMINALS = ["grads", "cic", "abl"]


def search(workers: int, args: argparse.Namespace, out: Path) -> dict:
    """The bundled default's search for ``--time`` seconds; candidates judged and the result."""
    data = bundled_images(args.images)
    t0 = time.perf_counter()
    result = synthesize(load_bundled_model(), None, data, metric="deletion",
                        metric_options={"steps": BUNDLED["steps"]}, grammar="g2", budget=Budget(seconds=args.time),
                        device=args.device, data=DataOptions(masks=data.masks, use_cache=False),
                        search=SearchOptions(level_sizes=parse_level_sizes(BUNDLED["levels"])),
                        output=OutputOptions(progress=False, report_images=0), out_dir=out / f"w{workers}",
                        cluster=ClusterOptions(workers, worker_cpus=args.worker_cpus, worker_gpus=args.worker_gpus))
    total = time.perf_counter() - t0
    d = json.loads((out / f"w{workers}" / "result.json").read_text())
    return {"considered": d["counts"]["considered"], "search": d["timings"]["search_s"], "total": total,
            "expression": result.expression}


def terminals(workers: int, args: argparse.Namespace) -> float:
    """Seconds to compute ``cic`` and ``abl`` of every image: here (0 workers) or on a pool (its start,
    which runs each shard's gradient pass, not counted)."""
    model, data = load_bundled_model(), bundled_images(args.images)
    if workers == 0:  # less the gradient pass, which the workers' start runs
        t0 = time.perf_counter()
        compute_terminals(model, None, data.images, None, TERMINALS, device=args.device, progress=False)
        t1 = time.perf_counter()
        compute_terminals(model, None, data.images, None, ["grads"], device=args.device, progress=False)
        return (t1 - t0) - (time.perf_counter() - t1)
    terms, info = compute_terminals(model, None, data.images, None, ["grads"], device=args.device, progress=False)
    g = resolve_grammar("g2")
    spec = WorkerSpec(model, info.layer, tuple(TERMINALS), resolve_metric("deletion", None), g.start.type,
                      {"use_cache": False})
    cluster = ClusterOptions(workers, worker_cpus=args.worker_cpus, worker_gpus=args.worker_gpus)
    with shard_pool(cluster, spec, data.images, info.targets, None) as pool:
        t0 = time.perf_counter()
        pool.terminals(["cic", "abl"], torch.arange(data.images.shape[0]))
        return time.perf_counter() - t0


def main() -> None:
    keep_freed_memory()  # as the CLI does (see sycam_dsl.allocator)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    p.add_argument("--worker-cpus", type=float, default=1.0)
    p.add_argument("--worker-gpus", type=float, default=0.0)
    p.add_argument("--images", type=int, default=BUNDLED["images"])
    p.add_argument("--time", type=float, default=60.0, help="search budget per run in seconds (default 60)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    cpus = max(counts) * args.worker_cpus
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads here, device {args.device}; bundled default "
          f"({args.images} images, g2, Deletion), --time {args.time:g} s; Ray {ray.__version__}, workers of "
          f"{args.worker_cpus:g} CPU / {args.worker_gpus:g} GPU")
    with tempfile.TemporaryDirectory() as tmp:
        # one process first, before Ray starts (its processes would share the CPUs)
        base = terminals(0, args)
        one = search(0, args, Path(tmp))
        ray.init(num_cpus=max(1, int(cpus + 0.999)), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        try:
            print(f"\nterminals (cic and abl of {args.images} images): one process {base:.1f} s")
            for w in counts:
                s = terminals(w, args)
                print(f"  {w} worker(s): {s:.1f} s ({base / s:.2f}x one process)")
            rate = one["considered"] / one["search"] * 60
            print(f"\nsearch, one process: {one['considered']} candidates in {one['search']:.1f} s = {rate:,.0f} "
                  f"per minute (whole run {one['total']:.1f} s); result {one['expression']}")
            for w in counts:
                r = search(w, args, Path(tmp))
                rw = r["considered"] / r["search"] * 60
                print(f"  {w} worker(s): {r['considered']} candidates in {r['search']:.1f} s = {rw:,.0f} per minute "
                      f"({rw / rate:.2f}x one process; whole run {r['total']:.1f} s); result {r['expression']}")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
