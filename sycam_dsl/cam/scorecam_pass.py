"""The ScoreCAM pass (``lang.terminals.SCORECAM``): the model on each image masked by each channel's
upsampled, min-max normalized activation map gives ``cic`` (the increase of the target's softmax
score over the baseline's) and ``mlogits`` (the target's logit of each masked image), together.
Masked images go through the model ``chunk`` rows at a time, so memory stays bounded for any ``K``."""

from __future__ import annotations

import bisect
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.batching import AUTO, BatchSize, auto_batch_size, layout_error
from ..models.precision import DEFAULT_PRECISION, forward_precision
from ..models.runtime import RuntimeModule, measured_batch, runtime_loop
from ..models.targets import Target, model_output
from ..template.saliency import minmax_normalize
from ..util.progress import Progress
from ..util.progress import progress as progress_bar

#: Bytes of ScoreCAM masks built at once (a multiple of the batch; at least one batch).
MASK_BLOCK_BYTES = 4 * 2**20


def channel_masks(acts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ScoreCAM masks ``M = minmax(upsample(A))``: ``[B, h, w]`` -> ``[B, H, W]`` in ``[0, 1]``
    (bilinear, ``align_corners=False``; a constant map gives an all-zero mask)."""
    up = F.interpolate(acts[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax_normalize(up)


def _masks_fast(acts: torch.Tensor, size: tuple[int, int], exact: bool = True) -> torch.Tensor:
    """``channel_masks`` with fewer passes over the ``[B, H, W]`` maps: in-place arithmetic, and
    ``masked_fill_`` for the constant maps instead of two full ``torch.where`` and a zero tensor
    (``aminmax`` is slower here than ``amin`` and ``amax``); the same bits. With ``exact=False`` the
    maps are upsampled as the channels of one channels-last image, which the CPU kernel vectorizes
    (about 4x faster) and which agrees with the default to float rounding (1 ulp), not bit for bit."""
    if exact:
        up = F.interpolate(acts[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    else:
        planes = acts[None].contiguous(memory_format=torch.channels_last)
        up = F.interpolate(planes, size=size, mode="bilinear", align_corners=False)[0].contiguous()
    flat = up.flatten(-2)
    lo = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - lo
    live = span > 0
    out = flat.sub(lo).div_(torch.where(live, span, torch.ones_like(span)))
    return out.masked_fill_(~live, 0).view(up.shape)


def target_scores(logits: torch.Tensor, targets: torch.Tensor,
                  target: Target | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``z_c``, ``y_c``) ``[B]`` of ``logits`` ``[B, C]`` for classes ``targets`` ``[B]``; with a bound
    ``target`` (``models.targets``), its (raw, metric) scores of outputs ``[B, ...]`` for ids ``targets``."""
    if target is not None:
        return target.raw(logits, targets), target.metric(logits, targets)
    idx = targets[:, None]
    return logits.gather(1, idx)[:, 0], torch.softmax(logits, dim=1).gather(1, idx)[:, 0]


def _image_runs(offsets: list[int], start: int, end: int) -> list[tuple[int, int, int]]:
    """``(image, first, last + 1)`` of the rows ``start..end-1`` of each image (positions counted from
    ``start``), for rows sorted by image where image ``i`` has rows ``offsets[i]..offsets[i+1]-1``."""
    runs: list[tuple[int, int, int]] = []
    i = bisect.bisect_right(offsets, start) - 1
    while i < len(offsets) - 1 and offsets[i] < end:
        first, last = max(offsets[i], start), min(offsets[i + 1], end)
        if first < last:
            runs.append((i, first - start, last - start))
        i += 1
    return runs


class _LiveRows(NamedTuple):
    """The (image, channel) rows with a real mask, sorted by image: ``img`` / ``ch`` / ``targets``
    ``[M]``, and ``offsets``: where each image's rows start (on the host, so that each batch's runs
    of one image need no sync)."""

    img: torch.Tensor
    ch: torch.Tensor
    targets: torch.Tensor
    offsets: list[int]


def live_channels(acts: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` bool of ``acts`` ``[N, K, h, w]``: the channels whose map is not constant. The others'
    normalized mask is all zeros, the baseline's input, so the pass skips them: an image's cost is
    proportional to its live channels."""
    flat = acts.flatten(2)
    return flat.amax(dim=2) > flat.amin(dim=2)


def _auto_chunk(model: nn.Module, x: torch.Tensor, rows: int, precision: str,
                layout: torch.memory_format) -> tuple[int, torch.memory_format]:
    """(``auto_batch_size`` of the masked forward passes, the layout they run in): contiguous when the
    model cannot take channels-last input."""
    dev = x.device

    def run(batch: torch.Tensor) -> object:
        with forward_precision(precision, dev):
            return model(batch)

    try:
        return auto_batch_size(run, x[:1].contiguous(memory_format=layout), dev, cap=max(1, rows), module=model,
                               extra_inputs=2, what="terminals: cic"), layout
    except RuntimeError as e:
        if layout == torch.contiguous_format or not layout_error(e):
            raise
        return auto_batch_size(run, x[:1], dev, cap=max(1, rows), module=model, extra_inputs=2,
                               what="terminals: cic"), torch.contiguous_format


def _live_scores(forward: nn.Module, x: torch.Tensor, acts: torch.Tensor, live: _LiveRows, chunk: int,
                 layout: torch.memory_format, exact: bool, precision: str,
                 bar: Progress, target: Target | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``z_c``, ``y_c``) ``[M]`` of the masked image of each live row, ``chunk`` rows per forward pass
    (``target_scores``' of ``target``)."""
    rows, size, dev = live.img.shape[0], (x.shape[2], x.shape[3]), x.device
    z_live = torch.empty(rows, dtype=x.dtype, device=dev)
    y_live = torch.empty(rows, dtype=x.dtype, device=dev)
    # masks are built for several batches at once (up to MASK_BLOCK_BYTES): a small model's batches are
    # short, and each operation's fixed cost would otherwise weigh on every batch (the values per row
    # do not depend on the block)
    block = max(1, MASK_BLOCK_BYTES // (size[0] * size[1] * x.element_size()) // chunk) * chunk
    masks_of = torch.empty(0)
    for start in range(0, rows, chunk):
        end = min(start + chunk, rows)
        with torch.inference_mode():  # less bookkeeping per op; z_live / y_live stay normal tensors
            if start % block == 0:
                b_end = min(start + block, rows)
                masks_of = _masks_fast(acts[live.img[start:b_end], live.ch[start:b_end]], size, exact)[:, None]
            masks = masks_of[start % block:start % block + end - start]
            masked = torch.empty((end - start, *x.shape[1:]), dtype=torch.promote_types(x.dtype, masks.dtype),
                                 device=dev, memory_format=layout)
            runs = _image_runs(live.offsets, start, end)
            if len(runs) > max(4, (end - start) // 4):  # many short runs: one gather is cheaper
                torch.mul(x[live.img[start:end]], masks, out=masked)
            else:
                for i, first, last in runs:
                    torch.mul(x[i:i + 1], masks[first:last], out=masked[first:last])
            try:
                with forward_precision(precision, dev):
                    out = model_output(forward(masked))
            except RuntimeError as e:
                if layout == torch.contiguous_format or start > 0 or not layout_error(e):
                    raise
                layout = torch.contiguous_format
                with forward_precision(precision, dev):
                    out = model_output(forward(masked.contiguous()))
            z_live[start:end], y_live[start:end] = target_scores(out.to(x.dtype), live.targets[start:end], target)
        bar.update(end - start)
    return z_live, y_live


@torch.no_grad()
def scorecam_pass(model: nn.Module, x: torch.Tensor, acts: torch.Tensor, targets: torch.Tensor, chunk: BatchSize,
                  show: bool, precision: str = DEFAULT_PRECISION, sizes: dict[str, int] | None = None,
                  forward: nn.Module | None = None, target: Target | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``cic`` ``[N, K]``, ``z_c(x * M_k)`` ``[N, K]``) of images ``x`` ``[N, 3, H, W]`` with
    activations ``acts`` ``[N, K, h, w]`` and ``targets`` ``[N]``; the baseline ``x_b = 0`` is one
    forward pass, since every image shares it. ``chunk``: masked images per forward pass, or
    ``"auto"``; ``precision``: of the forward passes (the masks are built in float32 either way);
    ``forward``: what runs them (``models.runtime.forward_module``'s; default ``model`` in torch),
    while ``model`` sizes the batches; ``target``: a bound target of another kind than the class
    (``models.targets``; ``targets`` are then its ids, ``cic`` the increase of its metric score and the
    second value its raw score).

    A channel whose activation map is constant (a dead ReLU channel, common at deep layers) has an
    all-zero mask, so its masked image *is* the baseline: its scores are the baseline's, exactly,
    and it costs no forward pass.

    Each batch is written straight into channels-last memory, a run of rows of one image as one
    broadcast product of that image and its masks (no gathered copy, no layout conversion); the scores
    stay on the device until the end, so nothing in the loop waits for it."""
    n, k = acts.shape[:2]
    dev = x.device
    forward = model if forward is None else forward
    with forward_precision(precision, dev):
        base_logits = model_output(forward(torch.zeros_like(x[:1]))).to(x.dtype)  # autocast's half to float32
    base_z, base_y = target_scores(base_logits.expand(n, *base_logits.shape[1:]), targets, target)
    masked_z = base_z[:, None].repeat(1, k)
    masked_y = base_y[:, None].repeat(1, k)
    live = live_channels(acts).nonzero()  # [M, 2] (image, channel) with a real mask
    rows = live.shape[0]
    live_img, live_ch = live.unbind(1)
    # nonzero() lists the rows image by image
    offsets = [0, *torch.bincount(live_img, minlength=n).cumsum(0).tolist()]
    # Convolutions run about 1.4x faster on channels-last input here (oneDNN); a model that cannot
    # take it (a .view() on its input, say) gets contiguous input for the whole run instead. An
    # inference runtime takes contiguous arrays.
    layout = torch.channels_last if x.dim() == 4 and not isinstance(forward, RuntimeModule) \
        else torch.contiguous_format
    auto = chunk == AUTO
    measured = measured_batch(forward)
    if auto and measured is not None:  # the runtime's own best batch, not the torch model's
        chunk = min(measured, max(1, rows))
    elif auto:
        chunk, layout = _auto_chunk(model, x, rows, precision, layout)
    assert isinstance(chunk, int)
    if sizes is not None:
        sizes["cic"] = chunk
    # at a fixed batch size in fp32 the values are those of every earlier version, bit for bit; "auto"
    # or a lower precision changes the bits anyway, so the masks take the faster path there
    exact = not auto and precision == DEFAULT_PRECISION
    bar = progress_bar(n * k, "terminals: cic", show)
    bar.update(n * k - rows)
    try:
        with runtime_loop(forward):
            z_live, y_live = _live_scores(forward, x, acts, _LiveRows(live_img, live_ch, targets[live_img], offsets),
                                          chunk, layout, exact, precision, bar, target)
    finally:
        bar.close()
    masked_z[live_img, live_ch], masked_y[live_img, live_ch] = z_live, y_live
    return masked_y - base_y[:, None], masked_z
