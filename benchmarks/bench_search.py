"""The end-to-end search on the built-in benchmark: candidates judged per minute with the plain
oracle (one candidate at a time, every perturbed image through the model, no early stopping)
against the evaluation engine (memoized Deletion, candidates batched on I3, early stopping), with
the same time budget, in one run.

    python benchmarks/bench_search.py [--time 60] [--metric deletion] [--steps 10] [--images 200]
"""

from __future__ import annotations

import argparse

import torch
from _bundled import bundled_problem

from sycam_dsl.lang.ast import to_sexpr
from sycam_dsl.metrics import get_metric
from sycam_dsl.synthesis import Budget, Search, SearchConfig, resolve_grammar

ENGINES = {"plain": dict(candidate_batch=1, image_chunk=None, early_stop=False, memo_mb=0),
           "engine": dict(memo_mb=256.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time", type=float, default=60.0)
    p.add_argument("--metric", default="deletion")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--images", type=int, default=200)
    args = p.parse_args()
    metric = get_metric(args.metric, **({"steps": args.steps} if args.metric in ("deletion", "insertion") else {}))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; built-in benchmark, {args.images} images, "
          f"levels 50,100,all, {metric.name} {dict(metric.options)}, {args.time:g} s per search")
    rates = {}
    for name, engine in ENGINES.items():
        engine = dict(engine)
        problem = bundled_problem(args.images, memo_mb=engine.pop("memo_mb"))
        cfg = SearchConfig(metric, Budget(seconds=args.time), level_sizes=(50, 100, None), **engine)
        out = Search(problem, resolve_grammar("g2"), cfg, progress=False).run()
        c = out.state.counts
        minutes = out.seconds / 60
        rates[name] = c.considered / minutes
        memo = problem.inputs.memo
        hit = f", cache hit rate {100 * memo.stats.hit_rate:.1f}%" if memo is not None else ""
        print(f"\n{name}: {c.considered} candidates judged in {out.seconds:.1f} s = {c.considered / minutes:,.0f} "
              f"per minute ({c.scored['I3'] / minutes:,.0f} scored on I3 per minute; "
              f"{c.heatmap_equivalent} skipped as heatmap-equivalent){hit}")
        print(f"  best: {to_sexpr(out.best)}  {metric.name} on I1 {out.level_means['I1']:.4f}; incumbents: "
              + ", ".join(f"{h['expression']} @{h['candidate']}" for h in out.state.history))
    print(f"\nratio: {rates['engine'] / rates['plain']:.1f}x candidates judged per minute")


if __name__ == "__main__":
    main()
