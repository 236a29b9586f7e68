"""``abl`` without forward passes up to the target layer against ``abl`` with them (the behaviour before
2026-12-08, patched back in: ``LayerSplit.carried_of`` runs the head whenever the tail carries a value,
even the input itself, and ``TailRunner.example`` ignores the activations at hand). In one process,
rounds interleaved, on torch and each inference runtime; prints each side's median rate in ablated rows
per second and the median of the paired ratios (new / old).

    python benchmarks/bench_abl_head.py [--models efficientnet_lite0,resnet18]
        [--runtimes torch,onnxruntime,openvino] [--images 4] [--rounds 6]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_runtime_threads import paired

from sycam_dsl.allocator import keep_freed_memory
from sycam_dsl.cam import layer_split
from sycam_dsl.cam.ablation_pass import ablation_pass
from sycam_dsl.models import load_model, resolve_layer
from sycam_dsl.models.runtime import RuntimeSpec

NEW = (layer_split.LayerSplit.carried_of, layer_split.TailRunner.example)


def _old_carried_of(self: layer_split.LayerSplit, x: torch.Tensor) -> list[torch.Tensor]:
    return self.run_head(x)[1] if self.carried else []


def _old_example(self: layer_split.TailRunner, x: torch.Tensor, acts: torch.Tensor | None = None) -> list:
    return NEW[1](self, x, None)


def use(new: bool) -> None:
    layer_split.LayerSplit.carried_of, layer_split.TailRunner.example = (  # type: ignore[method-assign]
        NEW if new else (_old_carried_of, _old_example))


def main() -> None:
    keep_freed_memory()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0,resnet18")
    ap.add_argument("--runtimes", default="torch,onnxruntime,openvino")
    ap.add_argument("--images", type=int, default=4, help="smooth random 224 px images (default 4)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    x = F.avg_pool2d(torch.randn(args.images, 3, 232, 232, generator=gen), 9, stride=1) * 3
    folder = Path(tempfile.mkdtemp(prefix="bench-abl-head-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images, {args.rounds} rounds")
    for name in args.models.split(","):
        m = load_model(name, None if name.startswith("efficientnet") else "random:0", "cpu")
        layer = m.target_layer or resolve_layer(m.module, None)[0]
        access = layer_split.layer_access(m.module, layer)
        with torch.no_grad():
            acts, logits = access.forward(x)
        targets, rows = logits.argmax(1), acts.shape[0] * acts.shape[1]
        for rt in args.runtimes.split(","):
            spec = None if rt == "torch" else RuntimeSpec(rt, "fp32", folder)
            run = functools.partial(ablation_pass, access, x, acts, logits, targets, "auto", "auto", False, "fp32",
                                    None, spec)
            for new in (True, False):  # warm-up: conversions, sweeps and the first call of each side
                use(new)
                run()
            rates_new, rates_old, ratio = paired(use, run, rows, args.rounds, args.min_seconds)
            print(f"{name:20} {rt:12} new {statistics.median(rates_new):10,.0f}  old "
                  f"{statistics.median(rates_old):10,.0f} rows/s  median paired ratio {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
