"""What the paper's experiments (E1-E3) share: the data they run on and how a search is launched.

By default an experiment runs on the built-in benchmark (the bundled small CNN on generated images
with object masks). ``--model NAME --images DIR`` (with ``--weights``, ``--layer``, ``--masks``)
runs it on your model and images instead, e.g. ``--model resnet50 --weights resnet50.pth``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sycam_dsl.synthesis import Budget, Result, SearchOptions, synthesize


def parser(description: str, default_time: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", help="torchvision name, TorchScript file or package.module:function (default: bundled)")
    p.add_argument("--weights", help="state-dict file for --model (random:SEED for seeded random weights)")
    p.add_argument("--layer", help="target layer (default: the model's)")
    p.add_argument("--images", help="image folder (default: the built-in benchmark's generated images)")
    p.add_argument("--masks", help="mask folder, one binary PNG per image (needed by gt_overlap and sch)")
    p.add_argument("--bundled-images", type=int, default=200, help="images of the built-in benchmark (default 200)")
    p.add_argument("--time", type=float, default=default_time,
                   help=f"seconds per search (default {default_time:g})")
    p.add_argument("--levels", default="50,100,all", help="oracle level sizes I3,I2,I1 (default 50,100,all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="output folder (default runs/<experiment>)")
    return p


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, image set) from the flags, or the built-in benchmark."""
    if args.model is None and args.images is None:
        from sycam_dsl.bundled import bundled_images, load_bundled_model
        return load_bundled_model(args.device), bundled_images(args.bundled_images)
    if args.model is None or args.images is None:
        raise SystemExit("give both --model and --images, or neither (built-in benchmark)")
    from sycam_dsl.cam.images import load_images
    from sycam_dsl.models import load_model
    model = load_model(args.model, args.weights, args.device)
    return model, load_images(args.images, size=model.input_size, normalize=model.normalize, masks=args.masks)


def search(args: argparse.Namespace, model: Any, images: Any, name: str, **kw: Any) -> Result:
    """One search written to ``<out>/<name>``; keyword arguments go to ``synthesize``."""
    from sycam_dsl.synthesis import parse_level_sizes

    out = Path(args.out or f"runs/{Path(__import__('sys').argv[0]).stem}") / name
    print(f"\n== {name} -> {out}")
    return synthesize(model, args.layer, images, budget=Budget(seconds=args.time), out_dir=out, device=args.device,
                      search=SearchOptions(level_sizes=parse_level_sizes(args.levels)), **kw)


def summary(rows: list[tuple[str, Result]]) -> str:
    """One line per search: its name, SyCAM's mean on the test split next to the best baseline's,
    the paired 95% bootstrap interval of the difference and its family-wise verdict, SyCAM's mean on the
    searched images, and the result."""
    lines = []
    for name, r in rows:
        metric, table = r.tables[0]
        by = {row.name: row.mean for row in table}
        base = {k: v for k, v in by.items() if k != "SyCAM"}
        best_base = (max if metric.higher_is_better else min)(base, key=base.get)
        versus = {v["method"]: v for c in r.data.get("comparisons", [])[:1] for v in c["versus"]}
        ci = versus.get(best_base)
        interval = (f"diff {ci['mean_difference']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}] "
                    f"{ci['family_verdict']} (family-wise)"
                    if ci else "no interval")
        searched = {row.name: row.mean for row in r.searched_tables[0][1]}.get("SyCAM", float("nan"))
        what = "per-class dispatch" if r.dispatch is not None else r.expression
        lines.append(f"{name:<28} {metric.name:<12} SyCAM {by.get('SyCAM', float('nan')):8.4f} "
                     f"(searched {searched:8.4f})   best baseline {best_base} {base[best_base]:8.4f}   "
                     f"{interval}   {what}")
    return "\n".join(lines)
