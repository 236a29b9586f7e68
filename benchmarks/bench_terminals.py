"""ScoreCAM / AblationCAM terminals against the grad-cam package, same model and images, one run.

Times our ``cic`` and ``abl`` (``compute_terminals``) and grad-cam's ``ScoreCAM`` / ``AblationCAM``,
prints the time ratios (best of ``--repeat`` alternating runs) and the Pearson correlation of the
heatmaps (``relu(sum_k w_k A_k)`` upsampled and min-max normalized). For ScoreCAM two of our maps are
compared: the weights ``cic`` (softmax-score increase over the zero baseline;
docs/language.md#terminals) and grad-cam's weights, a softmax over
channels of the masked-input logits ``z_c(x * M_k)``, which ``compute_terminals`` keeps as
``info.masked_logits``. The machine may be shared, so compare ratios, not absolute times.

    pip install grad-cam   # benchmark-only dependency
    python benchmarks/bench_terminals.py [--model resnet18|resnet50] [--images 8] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # grad-cam prints a bar per image and chunk

import numpy as np
import torch
import torch.nn.functional as F

from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.lang.types import Type
from sycam_dsl.models import load_model, resolve_layer
from sycam_dsl.template.heatmaps import heatmaps as cam_heatmaps


def heatmaps(weights: torch.Tensor, acts: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``[N, K]`` weights, ``[N, K, h, w]`` activations -> ``[N, H, W]`` maps in ``[0, 1]``."""
    return cam_heatmaps(weights, acts, Type.VEC, size).cpu().numpy()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the Pearson correlation of two ``[N, H, W]`` map stacks (a constant map
    counts as uncorrelated)."""
    out = []
    for x, y in zip(a.reshape(len(a), -1), b.reshape(len(b), -1)):
        x, y = x - x.mean(), y - y.mean()
        d = np.sqrt((x * x).sum() * (y * y).sum())
        out.append(float((x * y).sum() / d) if d > 0 else 0.0)
    return float(np.mean(out))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(fn):
    """(result, (wall seconds, CPU seconds of this process)); CPU time is inflated less than wall
    time by other jobs on a shared machine."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - w0, time.process_time() - c0)


def race(ours, theirs, repeat: int):
    """Best-of-``repeat`` (result, time) of both, alternating which runs first (shared machines drift),
    and the peak RSS after each one's first run (ours runs first, so its figure is ours alone)."""
    best = {"ours": (None, (float("inf"),) * 2), "theirs": (None, (float("inf"),) * 2)}
    rss = {}
    for r in range(max(1, repeat)):
        order = [("ours", ours), ("theirs", theirs)]
        for key, fn in (order if r % 2 == 0 else order[::-1]):
            out, t = timed(fn)
            rss.setdefault(key, peak_rss_gb())
            if t[0] < best[key][1][0]:
                best[key] = (out, (t[0], min(t[1], best[key][1][1])))
            else:
                best[key] = (best[key][0], (best[key][1][0], min(t[1], best[key][1][1])))
    return best["ours"], best["theirs"], rss["ours"], rss["theirs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", help="torchvision name (default resnet18)")
    ap.add_argument("--weights", default="random:0", help="state-dict file or random:SEED (default random:0)")
    ap.add_argument("--layer", help="target layer (default: the model's default)")
    ap.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--chunk-size", type=int, default=32, help="ours: chunk_size; grad-cam: batch_size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each method, alternating which goes first; the best time counts")
    ap.add_argument("--skip", choices=("scorecam", "ablationcam"), action="append", default=[])
    args = ap.parse_args()
    try:
        from pytorch_grad_cam import AblationCAM, ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        sys.exit("this benchmark needs the grad-cam package: pip install grad-cam")

    torch.manual_seed(0)
    m = load_model(args.model, args.weights, args.device)
    layer_name, layer = resolve_layer(m, args.layer)
    # Smooth random images: noise blurred so that activations have spatial structure.
    x = F.avg_pool2d(torch.randn(args.images, 3, args.size + 8, args.size + 8), 9, stride=1) * 3
    x = x.to(args.device)
    size = (args.size, args.size)
    print(f"{args.model} ({args.weights}), layer {layer_name}, {args.images} images {args.size}x{args.size}, "
          f"chunk {args.chunk_size}, device {args.device}, torch threads {torch.get_num_threads()}")

    (_, info), _ = timed(lambda: compute_terminals(m, layer_name, x, None, ["A"], args.device, progress=False))
    targets = [ClassifierOutputTarget(int(c)) for c in info.targets]
    acts = info.acts
    print(f"activations {list(acts.shape)}")

    def ours(name):
        return lambda: compute_terminals(m, layer_name, x, info.targets, [name], args.device, args.chunk_size,
                                         progress=False)

    rows = []
    if "scorecam" not in args.skip:
        cam = ScoreCAM(model=m.module, target_layers=[layer])
        cam.batch_size = args.chunk_size
        ((terms, sinfo), t_ours), (theirs, t_theirs), rss_ours, rss_theirs = race(
            ours("cic"), lambda: cam(input_tensor=x, targets=targets), args.repeat)
        spec_map = heatmaps(terms["cic"], acts, size)
        softmax_map = heatmaps(torch.softmax(sinfo.masked_logits, dim=1), acts, size)
        rows.append(("ScoreCAM", t_ours, t_theirs,
                     f"r(cic map, grad-cam) = {pearson(spec_map, theirs):.4f}; r(softmax_k z_c(x*M_k) map, "
                     f"grad-cam) = {pearson(softmax_map, theirs):.4f}", rss_ours, rss_theirs))
    if "ablationcam" not in args.skip:
        cam = AblationCAM(model=m.module, target_layers=[layer], batch_size=args.chunk_size)
        ((terms, ainfo), t_ours), (theirs, t_theirs), rss_ours, rss_theirs = race(
            ours("abl"), lambda: cam(input_tensor=x, targets=targets), args.repeat)
        ours_map = heatmaps(terms["abl"], acts, size)
        rows.append((f"AblationCAM (ours via {ainfo.abl_method})", t_ours, t_theirs,
                     f"r(abl map, grad-cam) = {pearson(ours_map, theirs):.4f}", rss_ours, rss_theirs))
    for name, (w_ours, c_ours), (w_theirs, c_theirs), corr, rss_ours, rss_theirs in rows:
        print(f"{name}: wall ours {w_ours:.2f} s, grad-cam {w_theirs:.2f} s, grad-cam / ours = "
              f"{w_theirs / w_ours:.2f}x; CPU ours {c_ours:.2f} s, grad-cam {c_theirs:.2f} s, grad-cam / ours = "
              f"{c_theirs / c_ours:.2f}x; {corr}; peak RSS after ours {rss_ours:.2f} GB, after grad-cam "
              f"{rss_theirs:.2f} GB")


if __name__ == "__main__":
    main()
