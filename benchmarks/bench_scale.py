"""A search at real-model scale: terminals on demand against the eager pipeline (every terminal
before the search), in one run, on a torchvision ResNet with seeded random weights at 224 px over
generated images (the built-in benchmark's shapes, upsampled): time to the first scored candidate,
time to the search's last incumbent, the terminals' forward passes done, candidates judged per
minute and the whole run's time.

    python benchmarks/bench_scale.py                                   # ResNet18, 20 images (CPU)
    python benchmarks/bench_scale.py --model resnet50 --images 1000 --device cuda --levels 100,300,all

Nothing is downloaded: the weights are random (seeded), the images generated.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from sycam_dsl.allocator import keep_freed_memory
from sycam_dsl.bundled import bundled_images
from sycam_dsl.synthesis import (
    Budget,
    DataOptions,
    OutputOptions,
    SearchOptions,
    parse_level_sizes,
    synthesize,
)


def images(n: int, size: int) -> torch.Tensor:
    """``n`` generated images ``[n, 3, size, size]`` (normalized shapes, bilinearly upsampled)."""
    x = bundled_images(n).images
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def run(mode: str, args: argparse.Namespace, x: torch.Tensor, out: Path) -> dict:
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    t0 = time.perf_counter()
    result = synthesize(model, args.layer, x, metric="deletion", metric_options={"steps": args.steps},
                        grammar="g2", budget=Budget(seconds=args.time), device=args.device,
                        data=DataOptions(use_cache=False, chunk_size=args.chunk_size),
                        search=SearchOptions(level_sizes=parse_level_sizes(args.levels),
                                             equivalence_size=args.equivalence_images, terminals=mode),
                        output=OutputOptions(progress=False, report_images=0), out_dir=out / mode)
    total = time.perf_counter() - t0
    d = json.loads((out / mode / "result.json").read_text())
    t, c = d["timings"], d["counts"]
    with torch.no_grad():  # K: the target layer's channels, from one image
        k = _channels(model, d["settings"]["layer"], x[:1])
    n = d["images"]["total"]
    on_demand = d["engine"].get("on_demand")
    before = {key: v["images"] for key, v in on_demand.items()} if on_demand else {"cic+mlogits": n, "abl": n}
    found = [h for h in d["history"] if h.get("candidate") is not None]  # the search's own incumbents
    to_result = t["terminals_s"] + found[-1]["seconds"] if found else None
    return {"mode": mode, "first": t.get("first_scored_s"), "to_result": to_result,
            "terminals": t["terminals_s"] + t["terminals_on_demand_s"],
            "search": t["search_s"], "total": total, "considered": c["considered"],
            "passes": {key: v * k for key, v in before.items()}, "k": k, "expression": result.expression}


def _channels(model: torch.nn.Module, layer: str, x: torch.Tensor) -> int:
    """The number of channels of ``layer``'s output for ``x``."""
    out: list[int] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: out.append(o.shape[1]))
    try:
        model(x)
    finally:
        handle.remove()
    return out[0]


def main() -> None:
    keep_freed_memory()  # as the CLI does (see sycam_dsl.allocator)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="torchvision model name (seeded random weights)")
    p.add_argument("--layer", default=None, help="target layer (default: the model's)")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--time", type=float, default=300.0, help="time budget in seconds per mode")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--levels", default="4,8,all")
    p.add_argument("--equivalence-images", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    x = images(args.images, args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; {args.model} "
          f"(random weights, seed 0) at {args.size} px, {args.images} generated images, g2, Deletion P={args.steps}, "
          f"levels {args.levels}, equivalence subset {args.equivalence_images}, --time {args.time:g} s, test split 0.2")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("eager", "on-demand"):
            r = run(mode, args, x, Path(tmp))
            rows[mode] = r
            minutes = max(r["search"], 1e-9) / 60
            passes = ", ".join(f"{key.split('+')[0]} {v:,}" for key, v in r["passes"].items())
            first = f"after {r['first']:.1f} s" if r["first"] is not None else "never (the budget went to terminals)"
            result_at = f"{r['to_result']:.1f} s" if r["to_result"] is not None else "never"
            print(f"\n{mode}: first scored candidate {first}; its last incumbent found after {result_at}; "
                  f"terminals {r['terminals']:.1f} s "
                  f"({passes} forward passes, K = {r['k']}); {r['considered']} candidates judged in "
                  f"{r['search']:.1f} s of search = {r['considered'] / minutes:,.1f} per minute; whole run "
                  f"{r['total']:.1f} s; result {r['expression']}")
    e, o = rows["eager"], rows["on-demand"]
    if e["first"] is not None and o["first"] is not None:
        print(f"\nratio: first scored candidate {e['first'] / max(o['first'], 1e-9):.1f}x sooner on demand; "
              f"whole run {e['total'] / o['total']:.2f}x as long eager (--time bounds the search loop only there)")
    if e["to_result"] is not None and o["to_result"] is not None:
        print(f"last incumbent: eager {e['to_result']:.1f} s, on demand {o['to_result']:.1f} s")


if __name__ == "__main__":
    main()
