"""Ground-truth overlap and SCH: candidates scored together (``[C, N, H, W]`` heatmaps in one call)
against one at a time, on the same candidates and images, in one run.

Both go through ``Search.score_part``, which evaluates each candidate's weights, computes the
heatmaps (saliency, upsampling, normalization) and scores them; the only difference is how many
candidates one call gets. Prints candidates per second, the ratio, and the largest score difference.

    python benchmarks/bench_overlap_batched.py [--candidates 2000] [--images 100] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from _bundled import bundled_problem, first_candidates
from sycam_dsl.metrics import get_metric
from sycam_dsl.synthesis import Budget, Search, SearchConfig, resolve_grammar


def run(search: Search, nodes, batch: int) -> tuple[torch.Tensor, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = []
    for i in range(0, len(nodes), batch):
        out += search.score_part(nodes[i:i + batch], 0, 0)
    return torch.stack(out), time.perf_counter() - w, time.process_time() - c


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
        cfg = SearchConfig(get_metric(name), Budget(candidates=1), level_sizes=(None,), image_chunk=None, baselines=())
        search = Search(problem, resolve_grammar("g2"), cfg, progress=False)
        best = {}
        for _ in range(args.repeat):
            for label, batch in (("one at a time", 1), (f"batches of {args.batch}", args.batch)):
                scores, wall, cpu = run(search, nodes, batch)
                prev = best.get(label)
                if prev is None or wall < prev[1]:
                    best[label] = (scores, wall, cpu)
        (s1, w1, c1), (sb, wb, cb) = best.values()
        print(f"\n{name}, {len(nodes)} candidates x {args.images} images (best of {args.repeat})")
        for label, (_, wall, cpu) in best.items():
            print(f"  {label:<15} {len(nodes) / wall:9.1f} candidates/s   {wall:7.2f} s wall  {cpu:7.2f} s CPU")
        print(f"  ratio: {w1 / wb:.1f}x candidates/s (wall), {c1 / cb:.1f}x (CPU); "
              f"largest score difference {float((s1 - sb).abs().max()):.3g}")


if __name__ == "__main__":
    main()
