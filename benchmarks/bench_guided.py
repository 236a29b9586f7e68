"""Size order against guided search (``--strategy size|guided``), in one run: for the bundled default
(Deletion), E1 (Average Drop) and E3 (SCH), all with ``g2.sy`` on the built-in benchmark, the time
and the number of candidates until each strategy first reaches the best ``I1`` mean that either found
in the budget, and the best ``I1`` mean each had at a quarter, half and all of the budget, per seed.

    python benchmarks/bench_guided.py                         # --time 120 --seeds 0,1: about 25 min
    python benchmarks/bench_guided.py --time 30 --seeds 0     # a quick look

Both strategies of one seed search the same subsets (the seed picks them), so their ``I1`` means
compare directly. The final baseline check is left out: only the candidates each search judged count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from sycam_dsl.allocator import keep_freed_memory
from sycam_dsl.bundled import bundled_images, load_bundled_model
from sycam_dsl.cli.synth import BUNDLED
from sycam_dsl.synthesis import (
    Budget,
    DataOptions,
    OutputOptions,
    SearchOptions,
    parse_level_sizes,
    synthesize,
)

PROBLEMS = {"bundled default (deletion)": ("deletion", {"steps": BUNDLED["steps"]}),
            "E1 (average_drop)": ("average_drop", {}), "E3 (sch)": ("sch", {})}
STRATEGIES = ("size", "guided")


def run(metric: str, options: dict, strategy: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    data = bundled_images(args.images)
    folder = out / f"{metric}-{strategy}-{seed}"
    synthesize(load_bundled_model(), None, data, metric=metric, metric_options=options, grammar="g2",
               budget=Budget(seconds=args.time), data=DataOptions(masks=data.masks, use_cache=False),
               search=SearchOptions(level_sizes=parse_level_sizes(BUNDLED["levels"]), seed=seed, strategy=strategy),
               output=OutputOptions(progress=False, report_images=0), out_dir=folder)
    d = json.loads((folder / "result.json").read_text())
    found = [h for h in d["history"] if h.get("candidate") is not None]
    return {"history": found, "higher": d["evaluation"][0]["higher_is_better"],
            "considered": d["counts"]["considered"], "restarts": d["counts"].get("restarts", 0)}


def best_by(history: list[dict], seconds: float) -> float | None:
    """The incumbent's I1 mean at ``seconds`` into the search (None before the first)."""
    scores = [h["score"] for h in history if h["seconds"] <= seconds]
    return scores[-1] if scores else None


def main() -> None:
    keep_freed_memory()  # as the CLI does (see sycam_dsl.allocator)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time", type=float, default=120.0, help="search budget per run in seconds (default 120)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--images", type=int, default=BUNDLED["images"])
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    marks = (args.time / 4, args.time / 2, args.time)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; built-in benchmark, {args.images} images, "
          f"g2, levels {BUNDLED['levels']}, --time {args.time:g} s per run, seeds {seeds}")
    with tempfile.TemporaryDirectory() as tmp:
        for title, (metric, options) in PROBLEMS.items():
            for seed in seeds:
                runs = {s: run(metric, options, s, seed, args, Path(tmp)) for s in STRATEGIES}
                higher = runs["size"]["higher"]
                finals = [r["history"][-1]["score"] for r in runs.values() if r["history"]]
                target = (max if higher else min)(finals) if finals else None
                print(f"\n{title}, seed {seed}: best I1 mean either found {target}")
                for s, r in runs.items():
                    hit = next((h for h in r["history"] if target is not None and h["score"] == target), None)
                    reached = (f"reached at {hit['seconds']:.1f} s, candidate {hit['candidate']}" if hit
                               else "not reached")
                    at = ", ".join(f"{m:g} s: {best_by(r['history'], m)}" for m in marks)
                    last = r["history"][-1]["expression"] if r["history"] else None
                    print(f"  {s:6s} {reached}; best at {at}; {r['considered']} candidates, "
                          f"{r['restarts']} restarts; result {last}")


if __name__ == "__main__":
    main()
