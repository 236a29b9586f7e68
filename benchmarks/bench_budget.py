"""Does ``synth --time`` bound the whole run? The built-in benchmark with ``--time 30`` and a slow model
(resnet18 with random weights at 224 px on 20 generated images, ``--time 60``), in one run: each run's
wall time (the process, start to exit) against ``--time``, and whether it said at the start that the
work after the search needs more time than the budget leaves.

    python benchmarks/bench_budget.py [--scale 1.0]

Each case runs ``sycam-dsl synth`` in a fresh process with an empty terminal store (so the terminals
are computed, as on a first run). The ratio is wall time / ``--time``: at most 1.1 is the goal on a
quiet machine, unless the run said so at the start. ``--scale`` multiplies every ``--time``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sycam_dsl.bundled import write_bundled

ROOT = Path(__file__).resolve().parents[1]


def cases(folder: Path) -> dict[str, tuple[float, list[str]]]:
    """name -> (--time, the other arguments of ``synth``)."""
    photos = folder / "photos"
    write_bundled(photos, 20)
    return {
        "bundled default": (30.0, []),
        "resnet18 random, 224 px, 20 images": (60.0, ["--model", "resnet18", "--weights", "random:0", "--size", "224",
                                                      "--images", str(photos / "images")]),
    }


def run(k: int, name: str, seconds: float, extra: list[str], folder: Path) -> dict:
    out, cache = folder / f"out-{k}", folder / f"cache-{k}"
    cmd = [sys.executable, "-m", "sycam_dsl.cli", "synth", "--time", f"{seconds:g}", "--quiet", "--cache-dir",
           str(cache), "-o", str(out), *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    warned = [line for line in p.stderr.splitlines() if "the work after the search needs" in line]
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else {}
    return {"name": name, "time": seconds, "wall": wall, "ratio": wall / seconds, "exit": p.returncode,
            "warning": warned[0] if warned else None, "timings": result.get("timings", {}),
            "search_budget": result.get("settings", {}).get("search_budget_seconds"),
            "candidates": result.get("counts", {}).get("considered"), "error": p.stderr[-600:] if p.returncode else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every --time by this")
    args = p.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [run(k, name, seconds * args.scale, extra, folder)
                for k, (name, (seconds, extra)) in enumerate(cases(folder).items())]
    for r in rows:
        t = r["timings"]
        print(f"{r['name']}: --time {r['time']:g} s, whole run {r['wall']:.1f} s, ratio {r['ratio']:.2f} "
              f"(exit {r['exit']}; search budget {r['search_budget'] or 0:.1f} s, {r['candidates']} candidates; "
              f"terminals {t.get('terminals_s', 0):.1f} s, search {t.get('search_s', 0):.1f} s, "
              f"tables {t.get('evaluation_s', 0):.1f} s)")
        if r["warning"]:
            print(f"  said at the start: {r['warning']}")
        if r["error"]:
            print(f"  stderr: {r['error']}")
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
