"""The loops on an inference runtime with torch building their batches on one thread (the library's
``models.runtime.runtime_loop``) against the same loops with torch's full thread count (a no-op in its
place): ``cic`` and Deletion, in one process, rounds interleaved; prints each side's best rate and the
median of the paired ratios (new / old).

    python benchmarks/bench_runtime_threads.py [--models bundled,resnet18,efficientnet_lite0]
        [--runtimes onnxruntime,openvino] [--rounds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from bench_throughput import Setup, blurred, layer_values, setups

from sycam_dsl.allocator import keep_freed_memory
from sycam_dsl.cam import ablation_pass, scorecam_pass
from sycam_dsl.metrics import scoring
from sycam_dsl.metrics.perturbation import perturbation_curve
from sycam_dsl.models.runtime import RuntimeSpec, forward_module, runtime_loop

#: The modules whose loops call ``runtime_loop``.
USERS = (scorecam_pass, ablation_pass, scoring)


def use(single_thread: bool) -> None:
    for module in USERS:
        module.runtime_loop = runtime_loop if single_thread else (  # type: ignore[attr-defined]
            lambda forward: contextlib.nullcontext())


def paired(use: Callable[[bool], None], fn: Callable[[], object], items: int, rounds: int,
           seconds: float) -> tuple[list[float], list[float], float]:
    """(new rates, old rates, median of the paired ratios new / old) of ``fn`` (``items`` per call) with
    ``use(False)`` (the old code) and ``use(True)`` (the new) in interleaved rounds of ``seconds`` each;
    leaves the new code in place."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for new in (False, True):
            use(new)
            t, done = time.perf_counter(), 0
            while time.perf_counter() - t < seconds:
                fn()
                done += items
            rates[new].append(done / (time.perf_counter() - t))
    use(True)
    return rates[True], rates[False], statistics.median(a / b for a, b in zip(rates[True], rates[False]))


def loops(s: Setup, fwd: torch.nn.Module) -> dict[str, tuple[Callable[[], object], int]]:
    """``{loop: (run, items per run)}``: ``cic`` (live masked images) and Deletion (perturbed images)."""
    x = s.x
    _, acts, _, targets, cic_acts, live = layer_values(s, x)
    n, _, h, w = acts.shape
    steps = min(10, h * w)
    sal = torch.rand(2, n, h, w, generator=torch.Generator().manual_seed(1))
    blur = blurred(x)
    return {"cic": (lambda: scorecam_pass.scorecam_pass(s.module, x, cic_acts, targets, "auto", False, "fp32", None,
                                                        fwd), live),
            "Deletion": (lambda: perturbation_curve(fwd, x, targets, sal, steps, False, "cpu", 32,
                                                    blurred_images=blur), 2 * n * steps)}


def main() -> None:
    keep_freed_memory()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bundled,resnet18,efficientnet_lite0")
    ap.add_argument("--runtimes", default="onnxruntime,openvino")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement (default 1)")
    args = ap.parse_args()
    data = argparse.Namespace(models=args.models, device="cpu", bundled_images=32, images=4, size=224,
                              cic_channels=32, weights="random:0")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for s in setups(data):
        s.module.eval()
        for name in args.runtimes.split(","):
            fwd = forward_module(s.module, [s.x[:1]], RuntimeSpec(name, "fp32", tempfile.mkdtemp()))
            for what, (fn, items) in loops(s, fwd).items():
                fn()  # warm-up
                new, old, ratio = paired(use, fn, items, args.rounds, args.seconds)
                print(f"{s.name[:28]:28} {name:12} {what:9} old {max(old):10,.1f}/s  new "
                      f"{max(new):10,.1f}/s  median paired ratio {ratio:.2f}x", flush=True)

if __name__ == "__main__":
    main()
