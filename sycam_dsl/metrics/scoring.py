"""Running the model for metrics: softmax scores of the target class, in batches.

Images are built lazily per batch (``build(rows)``), so a metric that perturbs every image ``P``
times never holds more than ``batch_size`` perturbed images at once. The model runs in eval
mode (restored afterwards) and without autograd, so a batch's composition cannot change a score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..models.batching import AUTO, auto_batch_size, has_convolutions, layout_error, takes_channels_last
from ..models.errors import ModelError
from ..models.precision import DEFAULT_PRECISION, check_precision, forward_precision
from ..models.runtime import measured_batch, reference_of, runtime_loop
from ..models.targets import Target, model_output
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
              device: Device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE, *, precision: str = DEFAULT_PRECISION,
              channels_last: bool = False, target: Target | None = None) -> torch.Tensor:
    """Softmax score of ``targets[r]`` for each row ``r`` of ``M = len(targets)`` rows; with a bound
    ``target`` (``models.targets``), its metric score of each row, whose ``targets[r]`` is its id.

    ``build(rows)`` gets a ``[B]`` long tensor of row indices (on ``device``) and returns the
    ``[B, C, H, W]`` model inputs of those rows; a builder with a ``build_range(start, stop,
    memory_format)`` method (``perturbed_builder``'s) gets the rows ``start..stop-1`` that way instead
    and may write them straight in the layout the model gets. Returns ``[M]`` float32 on ``device``.

    ``precision``: fp32, bf16 or fp16 forward passes (``models.precision.forward_precision``; scores in
    float32 either way). ``channels_last``: feed the model channels-last batches (faster convolutions on
    the CPU and on tensor cores; a model that cannot take them gets contiguous ones after the first
    batch fails). Inputs built on the host for a CUDA device are copied from pinned memory without
    blocking; nothing in the loop waits for the device (the targets are checked once)."""
    if batch_size < 1:
        raise MetricError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    _check_device(model, device)
    precision = _checked_precision(precision)
    targets = targets.to(device)
    total = targets.shape[0]
    out = torch.empty(total, dtype=torch.float32, device=device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    build_range = getattr(build, "build_range", None)
    with eval_mode(model), torch.inference_mode(), runtime_loop(model):
        for i in range(0, total, batch_size):
            j = min(i + batch_size, total)
            if build_range is not None:
                x = build_range(i, j, fmt)
            else:
                x = build(torch.arange(i, j, device=device))
            x = _to_device(x, device)
            if fmt is torch.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=fmt)
            try:
                with forward_precision(precision, device):
                    logits = model_output(model(x))
            except RuntimeError as e:  # a model that cannot take channels-last input (a .view() on it, say)
                if i > 0 or fmt is not torch.channels_last or not layout_error(e):
                    raise
                fmt = torch.contiguous_format
                with forward_precision(precision, device):
                    logits = model_output(model(x.contiguous()))
            if i == 0:
                _check_logits(logits, targets, target)
            if target is not None:
                out[i:j] = target.metric(logits.float(), targets[i:j])
            else:
                out[i:j] = torch.softmax(logits.float(), dim=1).gather(1, targets[i:j, None]).squeeze(1)
    return out


def plan_forward(model: nn.Module, images: torch.Tensor, device: Device = "cpu",
                 batch_size: int | str = DEFAULT_BATCH_SIZE,
                 precision: str = DEFAULT_PRECISION) -> tuple[int, bool]:
    """``(batch size, channels_last)`` for the metrics' forward passes of ``model`` on ``images``
    ``[N, C, H, W]``. A number is kept; ``"auto"`` picks the size with
    ``models.batching.auto_batch_size`` (the largest that fits on CUDA, on the CPU the largest whose
    largest layer fits in half the cache), for ``model`` in eval mode at ``precision``. Batches are
    channels-last for a model with 2-d convolutions that takes them, with ``"auto"`` or a lower
    precision; fp32 at a fixed batch size keeps the images' own layout, and so the bits of earlier
    versions."""
    if batch_size != AUTO and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise MetricError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    if batch_size != AUTO and precision == DEFAULT_PRECISION:
        assert isinstance(batch_size, int)
        return batch_size, False
    if images.dim() != 4 or images.shape[0] < 1:
        raise MetricError(f"images must be [N, C, H, W] with N >= 1, got shape {list(images.shape)}")
    device = torch.device(device)
    _check_device(model, device)
    precision = _checked_precision(precision)
    measured = measured_batch(model)
    if batch_size == AUTO and measured is not None:  # the runtime's best batch; it takes contiguous arrays
        return measured, False
    sample = images[:1].to(device)
    reference = reference_of(model)  # the layout is the torch model's

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), forward_precision(precision, device):
            return reference(batch)

    with eval_mode(reference):
        # an inference runtime takes contiguous arrays (a RuntimeModule has no convolutions of its own)
        channels_last = has_convolutions(model) and takes_channels_last(run, sample)
        if isinstance(batch_size, int):
            return batch_size, channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        size = auto_batch_size(run, sample.contiguous(memory_format=fmt), device, module=reference, extra_inputs=2,
                               what="metrics")
    return size, channels_last


def _checked_precision(precision: str) -> str:
    try:
        return check_precision(precision)
    except ModelError as e:
        raise MetricError(str(e)) from None


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; a host batch bound for CUDA goes through pinned memory, without blocking."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _check_logits(logits: torch.Tensor, targets: torch.Tensor, target: Target | None = None) -> None:
    """The first batch's logits are ``[B, classes]`` and every target (all batches') a class index:
    one check, so the loop never waits for the device (a ``target``'s own check, if given)."""
    if target is not None:
        target.check(logits)
        return
    if logits.dim() != 2:
        raise MetricError(f"the model must return class logits [B, classes], got shape {list(logits.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise MetricError(f"target classes must lie in [0, {logits.shape[1]}), got "
                          f"{int(targets.min())}..{int(targets.max())}")


def _check_device(model: nn.Module, device: torch.device) -> None:
    p = next(iter(model.parameters()), None)
    if p is not None and p.device.type != device.type:
        raise MetricError(f"the model is on {p.device} but the metric runs on {device}; move it with "
                          f"model.to({str(device)!r}) or pass device={str(p.device)!r}")


def class_scores(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, device: Device = "cpu",
                 batch_size: int = DEFAULT_BATCH_SIZE, *, precision: str = DEFAULT_PRECISION,
                 channels_last: bool = False, target: Target | None = None) -> torch.Tensor:
    """``y_c(x)``: softmax score of each image's target class (``target``'s metric score), ``[N]`` on ``device``."""
    check_inputs(images, targets)
    return scores_of(model, lambda rows: images[rows.to(images.device)], targets, device, batch_size,
                     precision=precision, channels_last=channels_last, target=target)


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
