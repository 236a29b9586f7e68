"""Running the model for metrics: softmax scores of the target class, in batches.

Images are built lazily per batch (``build(rows)``), so a metric that perturbs every image ``P``
times never holds more than ``batch_size`` perturbed images at once. The model runs in eval
mode (restored afterwards) and without autograd, so a batch's composition cannot change a score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..util.modes import eval_mode
from .errors import MetricError

#: Images (or perturbed copies) per forward pass when a metric runs the model.
DEFAULT_BATCH_SIZE = 64

Device = str | torch.device


def check_inputs(images: torch.Tensor, targets: torch.Tensor) -> None:
    """``images`` ``[N, C, H, W]`` and integer ``targets`` ``[N]``."""
    if images.dim() != 4:
        raise MetricError(f"images must be [N, C, H, W], got shape {list(images.shape)}")
    if targets.dim() != 1 or targets.shape[0] != images.shape[0]:
        raise MetricError(f"targets must be [N] = [{images.shape[0]}] class indices, got shape "
                          f"{list(targets.shape)}")
    if targets.is_floating_point():
        raise MetricError(f"targets must be integer class indices, got {targets.dtype}")


def scores_of(model: nn.Module, build: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
              device: Device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """Softmax score of ``targets[r]`` for each row ``r`` of ``M = len(targets)`` rows.

    ``build(rows)`` gets a ``[B]`` long tensor of row indices (on ``device``) and returns the
    ``[B, C, H, W]`` model inputs of those rows. Returns ``[M]`` on ``device``."""
    if batch_size < 1:
        raise MetricError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    _check_device(model, device)
    targets = targets.to(device)
    out = []
    with eval_mode(model), torch.inference_mode():
        for i in range(0, targets.shape[0], batch_size):
            rows = torch.arange(i, min(i + batch_size, targets.shape[0]), device=device)
            logits = model(build(rows).to(device))
            if logits.dim() != 2:
                raise MetricError(f"the model must return class logits [B, classes], got shape "
                                  f"{list(logits.shape)}")
            t = targets[rows]
            if int(t.min()) < 0 or int(t.max()) >= logits.shape[1]:
                raise MetricError(f"target classes must lie in [0, {logits.shape[1]}), got "
                                  f"{int(t.min())}..{int(t.max())}")
            out.append(torch.softmax(logits.float(), dim=1).gather(1, t[:, None]).squeeze(1))
    if not out:
        return torch.zeros(0, device=device)
    return torch.cat(out)


def _check_device(model: nn.Module, device: torch.device) -> None:
    p = next(iter(model.parameters()), None)
    if p is not None and p.device.type != device.type:
        raise MetricError(f"the model is on {p.device} but the metric runs on {device}; move it with "
                          f"model.to({str(device)!r}) or pass device={str(p.device)!r}")


def class_scores(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, device: Device = "cpu",
                 batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """``y_c(x)``: softmax score of each image's target class, ``[N]`` on ``device``."""
    check_inputs(images, targets)
    return scores_of(model, lambda rows: images[rows.to(images.device)], targets, device, batch_size)


def safe_denominator(scores: torch.Tensor) -> torch.Tensor:
    """Scores used as divisors; a softmax that underflowed to 0 becomes the smallest normal float."""
    return scores.clamp_min(torch.finfo(scores.dtype).tiny)


class ForwardCounter(nn.Module):
    """``model`` that counts the images it is run on (``images``): how benchmarks and tests measure
    the forward passes the metric engine saves."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.model(x)
