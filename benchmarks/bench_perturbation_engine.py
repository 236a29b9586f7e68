"""Deletion and Insertion through the evaluation engine against a naive per-candidate evaluation.

The same candidates (the first ``--candidates`` of g2.sy, in the enumerator's order) are scored on
the same ``--images`` images of the built-in benchmark, twice, in one run:

* naive: one candidate at a time, every perturbed image through the model (the metric without a
  cache, already batched over images and steps);
* engine: ``--batch`` candidates per call through the memoized score cache (``ScoreCache``): only
  perturbed images whose (image, top-p cell set) was never seen go through the model.

It prints forward passes (images through the model, counted by a wrapper), wall and CPU time, the
ratios, the cache's hit rate, and the largest per-image score difference between the two.

    python benchmarks/bench_perturbation_engine.py [--candidates 2000] [--images 100] [--steps 10]
"""

from __future__ import annotations

import argparse
import time

import torch
from _bundled import bundled_problem, first_candidates

from sycam_dsl.metrics import get_metric
from sycam_dsl.metrics.memo import ScoreCache
from sycam_dsl.metrics.scoring import ForwardCounter
from sycam_dsl.synthesis import Budget, Search, SearchConfig, resolve_grammar


def scores(problem, nodes, metric, batch: int) -> tuple[torch.Tensor, int, float, float]:
    """Per-image scores ``[C, N]`` of every candidate, forward passes, wall and CPU seconds."""
    counter = ForwardCounter(problem.inputs.model)
    problem.inputs.model = counter
    cfg = SearchConfig(metric, Budget(candidates=1), level_sizes=(None,), image_chunk=None, baselines=())
    search = Search(problem, resolve_grammar("g2"), cfg, progress=False)
    search.scorer.score(nodes[:1], 0, 0)  # y_c(x), x~ and y_c(x~): shared by both engines, not timed
    counter.images = 0
    w, c = time.perf_counter(), time.process_time()
    out = []
    for i in range(0, len(nodes), batch):
        out += search.scorer.score(nodes[i:i + batch], 0, 0)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    order = torch.argsort(search.subsets.order)  # back to image order
    return torch.stack([s[order] for s in out]), counter.images, wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=2000)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32, help="candidates per engine call (default 32)")
    p.add_argument("--metrics", default="deletion,insertion")
    p.add_argument("--memo-mb", type=float, default=256.0)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, built-in benchmark, "
          f"{args.images} images, P = {args.steps}")
    problem = bundled_problem(args.images)
    nodes = first_candidates(problem, args.candidates)
    for name in args.metrics.split(","):
        metric = get_metric(name, steps=args.steps)
        cache = ScoreCache(args.memo_mb)
        fast = bundled_problem(args.images, memo_mb=args.memo_mb)
        fast.inputs.memo = cache
        s_fast, f_fast, w_fast, c_fast = scores(fast, nodes, metric, args.batch)
        s_naive, f_naive, w_naive, c_naive = scores(problem, nodes, metric, 1)
        diff = float((s_fast - s_naive).abs().max())
        st = cache.stats
        print(f"\n{name}, {len(nodes)} candidates x {args.images} images x P={args.steps}")
        print(f"  naive : {f_naive:>9,} forward passes  {w_naive:8.1f} s wall  {c_naive:8.1f} s CPU")
        print(f"  engine: {f_fast:>9,} forward passes  {w_fast:8.1f} s wall  {c_fast:8.1f} s CPU")
        print(f"  ratio : {f_naive / max(f_fast, 1):8.1f}x fewer forward passes, {w_naive / w_fast:.1f}x less wall "
              f"time, {c_naive / c_fast:.1f}x less CPU time")
        print(f"  cache : hit rate {100 * st.hit_rate:.1f}% ({st.hits:,} hits, {st.deduplicated:,} shared within a "
              f"call, {st.misses:,} misses), {len(cache):,} entries, {cache.bytes / 2**20:.1f} MB")
        print(f"  largest per-image score difference: {diff:.3g}")


if __name__ == "__main__":
    main()
