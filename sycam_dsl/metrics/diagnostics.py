"""Why a method's scores may mean nothing, said per method in one line each: weights that are NaN
or Inf, heatmaps that are constant (blank) on many images and the likely cause, and scores that are
NaN or Inf. ``eval``, ``explain`` and the search's report print these lines."""

from __future__ import annotations

import torch

from ..evaluate import Terminals, evaluate
from ..lang.ast import Node
from ..template import layer_saliency
from .registry import MetricResult

#: A method whose heatmaps are constant on more than this share of images is flagged.
DEGENERATE_SHARE = 0.1
#: A layer where more than this share of activations is negative is most likely pre-activation.
NEGATIVE_SHARE = 0.5


def constant_maps(s: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: which of the saliency maps ``S`` ``[N, h, w]`` are constant (blank heatmaps)."""
    flat = s.flatten(1)
    return flat.amax(dim=1) == flat.amin(dim=1)


def _cause(weights: torch.Tensor, acts: torch.Tensor) -> str:
    """The likely reason why ``ReLU(sum_k w_k A_k)`` is constant for these images (``weights``
    ``[n, K(, h, w)]``, ``acts`` ``[n, K, h, w]``)."""
    negative = float((acts < 0).double().mean())
    if negative > NEGATIVE_SHARE:
        return (f"the layer looks pre-activation ({100 * negative:.0f}% of its activations are negative); choose "
                f"an activated layer with --layer")
    dead = float((acts.flatten(2).amax(dim=2) == acts.flatten(2).amin(dim=2)).double().mean())
    if dead > NEGATIVE_SHARE:
        return f"{100 * dead:.0f}% of the layer's channels are dead (constant maps) on these images"
    if bool((weights <= 0).all()):
        return "its weights are all zero or negative on these images"
    return "its weighted activations are nowhere positive"


def nonfinite_weights(name: str, weights: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """``[N]`` bool: the images whose weights ``[N, ...]`` have a NaN or Inf, and the one line saying so
    (none when all are finite); ``explain``, ``eval`` and the Python API warn with it."""
    n = weights.shape[0]
    bad = ~torch.isfinite(weights.reshape(n, -1)).all(dim=1)
    if not bool(bad.any()):
        return bad, []
    return bad, [f"{name}: weights are NaN or Inf on {int(bad.sum())} of {n} images (their heatmaps are blank)"]


def weight_problems(name: str, node: Node, terms: Terminals, acts: torch.Tensor) -> list[str]:
    """One line for NaN/Inf weights and one for blank heatmaps on more than ``DEGENERATE_SHARE`` of
    the images of ``acts`` ``[N, K, h, w]``; empty when the method is sound."""
    weights = evaluate(node, terms)
    n = acts.shape[0]
    bad, lines = nonfinite_weights(name, weights)
    flat = constant_maps(layer_saliency(weights, acts, node.type)) & ~bad
    if int(flat.sum()) > DEGENERATE_SHARE * n:
        idx = flat.nonzero().flatten()
        lines.append(f"{name}: constant (blank) heatmaps on {int(flat.sum())} of {n} images; "
                     f"{_cause(weights[idx.to(weights.device)], acts[idx.to(acts.device)])}")
    return lines


def score_problems(name: str, results: dict[str, MetricResult]) -> list[str]:
    """One line per metric whose per-image scores of method ``name`` are NaN or Inf somewhere."""
    lines = []
    for metric, r in results.items():
        bad = ~torch.isfinite(r.per_image)
        if bool(bad.any()):
            lines.append(f"{name}: {metric} is NaN or Inf on {int(bad.sum())} of {bad.numel()} images (the model "
                         f"gave NaN or Inf logits); its mean is not meaningful")
    return lines
