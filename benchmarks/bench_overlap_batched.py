"""Ground-truth overlap and SCH: the evaluation engine (candidates scored together by
``LocalScorer.score``: batched saliency, and the metric computed from ``S`` -- SCH from masked sums
at layer resolution, ground-truth overlap with ``kthvalue`` instead of a sort) against one candidate
at a time through the plain path (full-resolution heatmaps, then ``sch`` / ``gt_overlap``, as
``sycam-dsl eval`` scores an expression), on the same candidates and images, in one run. Also shows
the engine fed one candidate at a time. Prints candidates per second, ratios and the largest score
difference.

    python benchmarks/bench_overlap_batched.py [--candidates 2000] [--images 100] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import torch
from _bundled import bundled_problem, first_candidates

from sycam_dsl.metrics import get_metric
from sycam_dsl.metrics.expression import expression_inputs
from sycam_dsl.synthesis import Budget, Search, SearchConfig, resolve_grammar


def engine(search: Search, nodes, batch: int) -> torch.Tensor:
    out = []
    for i in range(0, len(nodes), batch):
        out += search.scorer.score(nodes[i:i + batch], 0, 0)
    return torch.stack(out)


def plain(problem, metric, nodes) -> torch.Tensor:
    """One candidate at a time with full-resolution heatmaps (``score_expression``'s path when a
    metric needs heatmaps)."""
    out = []
    for node in nodes:
        candidate = expression_inputs(node, problem.inputs, problem.terminals, problem.acts, heatmaps=True)
        out.append(metric(candidate).per_image.double())
    return torch.stack(out)


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=2000)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="alternating runs; the best of each is kept")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, built-in benchmark, {args.images} images")
    problem = bundled_problem(args.images)
    nodes = first_candidates(problem, args.candidates)
    for name in ("gt_overlap", "sch"):
        metric = get_metric(name)
        cfg = SearchConfig(metric, Budget(candidates=1), level_sizes=(None,), image_chunk=None, baselines=())
        search = Search(problem, resolve_grammar("g2"), cfg, progress=False)
        order = torch.argsort(search.subsets.order)  # the engine's images follow the search's order
        runs = {"plain, one at a time": lambda metric=metric: plain(problem, metric, nodes),
                "engine, one at a time": lambda search=search, order=order: engine(search, nodes, 1)[:, order],
                f"engine, batches of {args.batch}":
                    lambda search=search, order=order: engine(search, nodes, args.batch)[:, order]}
        best = {}
        for _ in range(args.repeat):
            for label, fn in runs.items():
                res = timed(fn)
                if label not in best or res[1] < best[label][1]:
                    best[label] = res
        print(f"\n{name}, {len(nodes)} candidates x {args.images} images (best of {args.repeat})")
        for label, (_, wall, cpu) in best.items():
            print(f"  {label:<24} {len(nodes) / wall:9.1f} candidates/s   {wall:7.2f} s wall  {cpu:7.2f} s CPU")
        (s_plain, w_plain, c_plain) = best["plain, one at a time"]
        (s_one, w_one, _) = best["engine, one at a time"]
        (s_fast, w_fast, c_fast) = best[f"engine, batches of {args.batch}"]
        print(f"  ratio: engine batched vs plain {w_plain / w_fast:.1f}x candidates/s (wall), {c_plain / c_fast:.1f}x "
              f"(CPU); batched vs the engine one at a time {w_one / w_fast:.1f}x")
        print(f"  largest score difference vs plain: {float((s_fast - s_plain).abs().max()):.3g} (batched), "
              f"{float((s_one - s_plain).abs().max()):.3g} (one at a time)")


if __name__ == "__main__":
    main()
