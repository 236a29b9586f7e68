"""The explainer file against the engine: file size, and seconds per image of ``torch.jit.load(file)(x)``
and of ``SyCAM`` (the engine: ``compute_terminals`` + ``evaluate`` + ``heatmaps``, what ``sycam-dsl
explain`` runs), on the same images, for a gradient, a ScoreCAM and an ablation method.

    python benchmarks/bench_explainer.py --model bundled --images 8
    python benchmarks/bench_explainer.py --model resnet18 --weights random:0 --images 2

Each timing is the best of ``--repeats`` runs after ``--warmup`` calls (TorchScript's profiling executor
optimizes on the first calls); the largest difference between the two heatmaps is printed too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch

from sycam_dsl import SyCAM
from sycam_dsl.allocator import keep_freed_memory
from sycam_dsl.deploy.explainer import explainer_size, save_explainer
from sycam_dsl.deploy.method import load_method
from sycam_dsl.models import load_model

METHODS = {"gradient": "(* grads acts)", "cic": "cic", "abl": "abl"}


def best_of(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):  # TorchScript's profiling executor profiles, then optimizes, on the first calls
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    keep_freed_memory()  # as the CLI does (see sycam_dsl.allocator)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--weights")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*torch.jit", category=FutureWarning)
    torch.manual_seed(0)
    model = load_model(args.model, args.weights)
    size = model.input_size
    x = torch.randn(args.images, 3, size, size)
    print(f"{model.name} at {model.target_layer}, {args.images} images of {size}x{size}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            method = load_method(METHODS[name])
            path = Path(tmp) / f"{name}.pt"
            save_explainer(model.module, model.target_layer, method, path, x[:1], model.name)
            explainer = torch.jit.load(str(path))
            with SyCAM(model, None, method) as cam:
                diff = float((explainer(x) - cam(x)).abs().max())
                t_file = best_of(partial(explainer, x), args.repeats, args.warmup) / args.images
                t_engine = best_of(partial(cam, x), args.repeats, args.warmup) / args.images
            print(f"{name:9s} file {explainer_size(path):>8s}  explainer {t_file:8.4f} s/image  engine "
                  f"{t_engine:8.4f} s/image  max |difference| {diff:.1e}")


if __name__ == "__main__":
    main()
