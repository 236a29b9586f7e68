"""A real model at the runtime's speed: ``sycam-dsl eval`` of the baselines and a timed ``synth`` on
EfficientNet-Lite0 (the shipped ImageNet weights), once with ``--runtime torch`` and once with
``--runtime auto``, in one run, on generated images (the built-in benchmark's shapes, rendered at
224 px). Each command runs in a process of its own with a cache folder of its own (so no run reads
another's terminals); ``auto``'s conversion and timing are part of its wall time.

Prints each command's wall time, the candidates the searches judged, their ratio, and whether the
searches found the same incumbents for as long as both lasted (the first ``min(len)`` entries of
their histories). ``--precision bf16`` adds an ``auto`` run at bf16 (OpenVINO's bf16 on a CPU with
bf16 instructions, else torch's autocast).

``--batch-size auto`` runs every command at its loops' best batch and layout (the default, 64
contiguous images per metric batch, keeps the bits of earlier versions but is slow for torch on a
real model's CPU passes).

    python benchmarks/bench_realmodel.py [--images 20] [--time 120] [--precision fp32,bf16] [--batch-size auto]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sycam_dsl.bundled.shapes import render


def write_images(folder: Path, n: int, size: int) -> None:
    images, _, _ = render(n, seed=7, size=size)  # [n, size, size, 3] uint8
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(folder / f"{i:03d}.png")


def run(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sycam_dsl.cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): sycam-dsl {' '.join(args)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--time", type=float, default=120, help="synth --time (default 120)")
    ap.add_argument("--precision", default="fp32", help="fp32 and/or bf16 for the auto runs (default fp32)")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--skip-eval", action="store_true", help="only the searches")
    ap.add_argument("--batch-size", default=None,
                    help="--batch-size of every run (default: the commands' own, 64; 'auto' runs torch at its "
                         "best batch and layout, which on Lite0 on the CPU is several times faster than 64)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-realmodel-"))
    folder = work / "images"
    write_images(folder, args.images, 224)
    batch = f", --batch-size {args.batch_size}" if args.batch_size is not None else ""
    print(f"{args.model}, {args.images} generated 224 px images in {folder}; synth --time {args.time:g}{batch}")
    runs = [("torch", "fp32")] + [("auto", p) for p in args.precision.split(",") if p]
    found: dict[tuple[str, str], dict] = {}
    for runtime, precision in runs:
        tag = f"{runtime}-{precision}"
        common = ["--model", args.model, "--images", str(folder), "--runtime", runtime, "--precision", precision,
                  "--cache-dir", str(work / f"cache-{tag}"), "--quiet"]
        if args.batch_size is not None:
            common += ["--batch-size", args.batch_size]
        row: dict = {}
        if not args.skip_eval:
            row["eval_s"], _ = run(["eval", *common, "--json", str(work / f"eval-{tag}.json")])
        row["synth_s"], err = run(["synth", *common, "--time", f"{args.time:g}", "-o", str(work / f"run-{tag}")])
        result = json.loads((work / f"run-{tag}" / "result.json").read_text())
        row["candidates"] = result["counts"]["considered"]
        # the search's incumbents (not the baselines offered by the final check)
        row["history"] = [h["expression"] for h in result["history"] if h.get("candidate") is not None]
        row["expression"] = result["expression"]
        row["used"] = result["settings"].get("runtime", {}).get("used", "torch")
        found[(runtime, precision)] = row
        evals = f"eval {row['eval_s']:.1f} s, " if "eval_s" in row else ""
        print(f"--runtime {runtime} --precision {precision} (ran on {row['used']}): {evals}synth "
              f"{row['synth_s']:.1f} s, {row['candidates']} candidates judged, result {row['expression']}", flush=True)
    base = found[("torch", "fp32")]
    for key, row in found.items():
        if key == ("torch", "fp32"):
            continue
        m = min(len(row["history"]), len(base["history"]))
        same = row["history"][:m] == base["history"][:m]
        ratio = f"{row['candidates'] / base['candidates']:.2f}x" if base["candidates"] else "n/a (torch judged 0)"
        evals = f"eval {base['eval_s'] / row['eval_s']:.2f}x faster; " if "eval_s" in row else ""
        evals += f"synth {base['synth_s'] / row['synth_s']:.2f}x faster in all; "
        print(f"{key[0]} {key[1]} against torch fp32: {evals}{ratio} the candidates; the first {m} incumbents "
              f"{'the same' if same else 'differ'}")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
