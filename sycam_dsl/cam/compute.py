"""Computing the terminals (docs/cam-engine.md, "Terminals") for a model, a target layer and a batch of images.

One forward and backward pass per image batch gives ``A``, ``G``, ``grads``, ``pgrads`` and ``acts``;
``cic`` (ScoreCAM) runs the model on masked copies of each image, ``abl`` (AblationCAM) reruns only the
layers after the target layer (``layer_split``) on activations with one channel zeroed. Both go through
(image, channel) rows ``chunk_size`` at a time, so memory stays bounded for any ``K``.
The values come in three **records** per image, by how they are computed: ``base`` (the gradient
pass: ``A``, the logits, the target and, when asked, ``grads``, ``pgrads``, ``G``), ``cic`` (``cic``
and the masked logits) and ``abl`` (``abl``, the ablated logits and the method). ``compute_records``
computes the missing records of some images, ``chunk_size`` images at a time and ``base`` first,
calling back after each chunk (``cam.store`` writes it to disk there); ``assemble`` turns the
records into ``Terminals`` and ``TerminalInfo``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SycamError
from ..evaluate.terminal_values import Terminals
from ..lang.terminals import TERMINALS
from ..models.batching import AUTO, BatchSize, auto_batch_size, check_batch_size, layout_error
from ..models.devices import resolve_device
from ..models.errors import LayerError, ModelError
from ..models.loaded import LoadedModel
from ..models.precision import DEFAULT_PRECISION, check_precision, float32_model, forward_precision
from ..models.runtime import RuntimeModule, RuntimeSpec, check_support, forward_module, runtime_name
from ..template.saliency import minmax_normalize
from ..util.modes import eval_mode
from ..util.progress import progress as progress_bar
from ..util.progress import progress_label
from .errors import TerminalError
from .layer_split import LayerAccess, SplitError, TailRunner, fallback_warning, layer_access, tail_runner

#: Bytes of ScoreCAM masks built at once (a multiple of the batch; at least one batch).
MASK_BLOCK_BYTES = 4 * 2**20
#: Terminals that need the backward pass.
_GRAD_NAMES = frozenset({"grads", "pgrads", "G"})
DEFAULT_CHUNK_SIZE = 32

#: The record kinds, in the order they are computed (``cic`` and ``abl`` read ``base``).
BASE, CIC, ABL = "base", "cic", "abl"

#: One image's values of one record kind: tensors without the image dimension (``abl`` also holds
#: ``abl_method``, a string).
Record = dict[str, Any]


@dataclass
class TerminalInfo:
    """What was computed besides the terminals, for the heatmaps and metrics.

    ``acts`` ``[N, K, h, w]`` (always), ``logits`` ``[N, C]``, ``targets`` ``[N]`` (the predicted class
    unless given), ``z_c`` / ``y_c`` ``[N]`` the target's logit and softmax score; ``masked_logits``
    ``[N, K]`` ``z_c(x * M_k)`` when ``cic`` was computed (ScoreCAM variants that softmax over
    channels use it); ``ablated_logits`` ``[N, K]`` ``z_c^(k)`` when ``abl`` was, by ``abl_method``.
    ``batch_sizes``: the rows per forward pass each loop used (``gradients``, ``cic``, ``abl``; what
    ``chunk_size="auto"`` picked; empty when every record came from the store); ``stored``: how many
    images came whole from the terminal store (``cam.store``), nothing computed for them."""

    layer: str
    acts: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    z_c: torch.Tensor
    y_c: torch.Tensor
    masked_logits: torch.Tensor | None = None
    ablated_logits: torch.Tensor | None = None
    abl_method: str | None = None
    stored: int = 0
    batch_sizes: dict[str, int] = field(default_factory=dict)


def check_names(names: Sequence[str]) -> list[str]:
    """``names`` without duplicates, each a known terminal."""
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    out: list[str] = []
    for n in names:
        if n not in TERMINALS:
            raise TerminalError(f"unknown terminal {n!r}; known: {', '.join(TERMINALS)}")
        if n not in out:
            out.append(n)
    if not out:
        raise TerminalError(f"no terminals asked for; choose from {', '.join(TERMINALS)}")
    return out


def _check_targets(targets: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    if targets is None:
        return None
    t = torch.as_tensor(targets)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() != 1 or t.shape[0] != n:
        raise TerminalError(f"targets must be class indices [N] = [{n}] (long), got {t.dtype} of shape {list(t.shape)}")
    return t.to(device=device, dtype=torch.long)


def gradient_chunk(access: LayerAccess, x: torch.Tensor, names: Sequence[str]) -> int:
    """``auto_batch_size`` of the gradient pass (a forward and, for gradient terminals, a backward pass
    in float32) of ``access``'s model on images ``x`` ``[N, 3, H, W]``: at most ``N``; the model in eval
    mode (``prepare_model``'s)."""
    need_grad = bool(_GRAD_NAMES & set(names))

    def run(batch: torch.Tensor) -> None:
        with torch.set_grad_enabled(need_grad):
            acts, logits = access.forward(batch)
            if need_grad:
                torch.autograd.grad(logits[:, 0].sum(), acts, allow_unused=True)

    with eval_mode(access.model):
        return auto_batch_size(run, x[:1], x.device, cap=x.shape[0], module=access.model, backward=need_grad,
                               what="terminals: gradients")


def _gradient_pass(access: LayerAccess, x: torch.Tensor, targets: torch.Tensor | None, names: list[str],
                   chunk: BatchSize, show: bool, sizes: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """``A``, logits, targets and the gradient terminals, ``chunk`` images per forward + backward
    (``"auto"``: ``auto_batch_size`` of that pass, always in float32; recorded in ``sizes``)."""
    need_grad = bool(_GRAD_NAMES & set(names))
    if chunk == AUTO:
        chunk = gradient_chunk(access, x, names)
    assert isinstance(chunk, int)
    if sizes is not None:
        sizes["gradients"] = chunk
    parts: dict[str, list[torch.Tensor]] = {}
    bar = progress_bar(x.shape[0], "terminals: gradients", show)
    try:
        for s in range(0, x.shape[0], chunk):
            with torch.set_grad_enabled(need_grad):
                acts, logits = access.forward(x[s:s + chunk])
                n_classes = logits.shape[1]
                t = logits.argmax(dim=1) if targets is None else targets[s:s + chunk]
                # every image's target is checked with the first batch: one wait for the device, not one a batch
                if targets is not None and s == 0 and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
                    bad = int(((targets < 0) | (targets >= n_classes)).nonzero()[0])
                    raise TerminalError(f"target class {int(targets[bad])} of image {bad} is out of range: the "
                                        f"model has {n_classes} classes")
                out = {"A": acts.detach(), "logits": logits.detach(), "targets": t}
                if need_grad:
                    z = logits.gather(1, t[:, None]).sum()
                    (g,) = torch.autograd.grad(z, acts, allow_unused=True)
                    if g is None:
                        raise LayerError(f"the logits do not depend on layer {access.name!r}; choose a layer "
                                         f"on the path to the output")
                    out["grads"], out["pgrads"] = g.mean(dim=(2, 3)), torch.relu(g).mean(dim=(2, 3))
                    if "G" in names:  # [N, K, h, w] kept only when asked for
                        out["G"] = g
            for key, v in out.items():
                parts.setdefault(key, []).append(v)
            bar.update(acts.shape[0])
    finally:
        bar.close()
    return {k: torch.cat(v) for k, v in parts.items()}


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


def _target_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``z_c``, ``y_c``) ``[B]`` of ``logits`` ``[B, C]``."""
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


@torch.no_grad()
def _cic(model: nn.Module, x: torch.Tensor, acts: torch.Tensor, targets: torch.Tensor, chunk: BatchSize,
         show: bool, precision: str = DEFAULT_PRECISION, sizes: dict[str, int] | None = None,
         forward: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``cic`` ``[N, K]``, ``z_c(x * M_k)`` ``[N, K]``); the baseline ``x_b = 0`` is one forward pass,
    since every image shares it. ``chunk``: masked images per forward pass, or ``"auto"``;
    ``precision``: of the forward passes (the masks are built in float32 either way); ``forward``:
    what runs them (``models.runtime.forward_module``'s; default ``model`` in torch), while ``model``
    sizes the batches.

    A channel whose activation map is constant (a dead ReLU channel, common at deep layers) has an
    all-zero mask, so its masked image *is* the baseline: its scores are the baseline's, exactly,
    and it costs no forward pass.

    Each batch is written straight into channels-last memory, a run of rows of one image as one
    broadcast product of that image and its masks (no gathered copy, no layout conversion); the scores
    stay on the device until the end, so nothing in the loop waits for it."""
    n, k = acts.shape[:2]
    size = (x.shape[2], x.shape[3])
    dev = x.device
    forward = model if forward is None else forward
    with forward_precision(precision, dev):
        base_logits = forward(torch.zeros_like(x[:1])).to(x.dtype)  # autocast's half logits to float32
    base_z, base_y = _target_scores(base_logits.expand(n, -1), targets)
    masked_z = base_z[:, None].repeat(1, k)
    masked_y = base_y[:, None].repeat(1, k)
    flat = acts.flatten(2)
    live = (flat.amax(dim=2) > flat.amin(dim=2)).nonzero()  # [M, 2] (image, channel) with a real mask
    rows = live.shape[0]
    live_img, live_ch = live.unbind(1)
    # where each image's rows start (nonzero() lists them image by image), on the host so that each
    # batch's runs of one image need no sync
    offsets = [0, *torch.bincount(live_img, minlength=n).cumsum(0).tolist()]
    # Convolutions run about 1.4x faster on channels-last input here (oneDNN); a model that cannot
    # take it (a .view() on its input, say) gets contiguous input for the whole run instead. An
    # inference runtime takes contiguous arrays.
    layout = torch.channels_last if x.dim() == 4 and not isinstance(forward, RuntimeModule) \
        else torch.contiguous_format
    auto = chunk == AUTO
    if auto:
        def run(batch: torch.Tensor) -> object:
            with forward_precision(precision, dev):
                return model(batch)

        try:
            chunk = auto_batch_size(run, x[:1].contiguous(memory_format=layout), dev, cap=max(1, rows),
                                    module=model, extra_inputs=2, what="terminals: cic")
        except RuntimeError as e:
            if layout == torch.contiguous_format or not layout_error(e):
                raise
            layout = torch.contiguous_format
            chunk = auto_batch_size(run, x[:1], dev, cap=max(1, rows), module=model, extra_inputs=2,
                                    what="terminals: cic")
    assert isinstance(chunk, int)
    if sizes is not None:
        sizes["cic"] = chunk
    # at a fixed batch size in fp32 the values are those of every earlier version, bit for bit; "auto"
    # or a lower precision changes the bits anyway, so the masks take the faster path there
    exact = not auto and precision == DEFAULT_PRECISION
    z_live = torch.empty(rows, dtype=masked_z.dtype, device=dev)
    y_live = torch.empty(rows, dtype=masked_y.dtype, device=dev)
    bar = progress_bar(n * k, "terminals: cic", show)
    bar.update(n * k - rows)
    # masks are built for several batches at once (up to MASK_BLOCK_BYTES): a small model's batches are
    # short, and each operation's fixed cost would otherwise weigh on every batch (the values per row
    # do not depend on the block)
    block = max(1, MASK_BLOCK_BYTES // (size[0] * size[1] * x.element_size()) // chunk) * chunk
    masks_of = torch.empty(0)
    target_of = targets[live_img]
    try:
        for start in range(0, rows, chunk):
            end = min(start + chunk, rows)
            with torch.inference_mode():  # less bookkeeping per op; z_live / y_live stay normal tensors
                if start % block == 0:
                    b_end = min(start + block, rows)
                    masks_of = _masks_fast(acts[live_img[start:b_end], live_ch[start:b_end]], size, exact)[:, None]
                masks = masks_of[start % block:start % block + end - start]
                masked = torch.empty((end - start, *x.shape[1:]), dtype=torch.promote_types(x.dtype, masks.dtype),
                                     device=dev, memory_format=layout)
                runs = _image_runs(offsets, start, end)
                if len(runs) > max(4, (end - start) // 4):  # many short runs: one gather is cheaper
                    torch.mul(x[live_img[start:end]], masks, out=masked)
                else:
                    for i, first, last in runs:
                        torch.mul(x[i:i + 1], masks[first:last], out=masked[first:last])
                try:
                    with forward_precision(precision, dev):
                        out = forward(masked)
                except RuntimeError as e:
                    if layout == torch.contiguous_format or start > 0 or not layout_error(e):
                        raise
                    layout = torch.contiguous_format
                    with forward_precision(precision, dev):
                        out = forward(masked.contiguous())
                z_live[start:end], y_live[start:end] = _target_scores(out.to(x.dtype), target_of[start:end])
            bar.update(end - start)
    finally:
        bar.close()
    masked_z[live_img, live_ch], masked_y[live_img, live_ch] = z_live, y_live
    return masked_y - base_y[:, None], masked_z


def _check_tail(runner: TailRunner, x: torch.Tensor, acts: torch.Tensor, logits: torch.Tensor) -> None:
    """Raise ``SplitError`` unless ``runner`` reproduces ``logits`` from unablated activations: fx
    tracing can bake in Python-side decisions that do not hold for these inputs."""
    got = runner(acts.clone(), runner.carry(x))
    tol = 1e-3 * max(1.0, float(logits.abs().max()))
    if got.shape != logits.shape or not torch.allclose(got, logits, rtol=1e-3, atol=tol):
        diff = float((got - logits).abs().max()) if got.shape == logits.shape else float("inf")
        raise SplitError(f"rerunning the model from layer {runner.access.name!r} ({runner.method}) does not "
                         f"reproduce its logits (max difference {diff:.3g})")


def ablation_layout(n: int, k: int, chunk: int) -> tuple[int, int]:
    """``(B, c)`` for ``abl``'s batches: each ablates ``c`` channels of each of ``B`` images (``c * B <=
    chunk`` rows). A row of the batch buffer keeps its image for the ``ceil(K / c)`` batches of a block
    of ``B`` images and only two of its channels change between batches, so the full copy of the
    activations, once per block, costs ``c / K`` of the rows: ``B`` is as large as ``chunk`` and ``n``
    allow, and ``c`` is spread evenly over the block's batches. (TorchScript compiles it too: the
    explainer file lays its batches out the same way, so its values are the engine's bit for bit.)"""
    b = max(1, min(n, chunk))
    per_batch = max(1, min(k, chunk // b))
    batches = (k + per_batch - 1) // per_batch
    return b, (k + batches - 1) // batches


@torch.no_grad()
def _abl(access: LayerAccess, x: torch.Tensor, acts: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
         chunk: BatchSize, method: str, show: bool, precision: str = DEFAULT_PRECISION,
         sizes: dict[str, int] | None = None,
         runtime: RuntimeSpec | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(``abl`` ``[N, K]``, ``z_c^(k)`` ``[N, K]``, method used). ``chunk`` ablated rows per pass of the
    layers after the target layer (``"auto"``: ``auto_batch_size`` of that pass), laid out by
    ``ablation_layout``: blocks of ``B`` images, whose values carried around the layer are computed
    once per block, and batches of ``c`` channels of each of them.

    The batch buffer ``[c * B, K, h, w]`` is filled with the block's activations once; between
    batches each row gets its previous channel back and its next one zeroed (two channels, not a
    copy of all ``K``). A tail that writes into its input in place (seen by the buffer's version
    counter) gets a fresh copy before the next batch.

    In float32 ``z_c`` is the model's logit; at a lower ``precision`` it is the tail's own logit for
    the unablated activations at that precision, so that ``z_c - z_c^(k)`` compares two values with the
    same rounding (the model's float32 logit would add the precision's error to every channel alike).
    ``runtime``: where the fx split's tail runs (``models.runtime.forward_module``; None: torch); the
    hook and script methods rerun the model in torch. No host-device sync per batch."""
    n, k = acts.shape[:2]
    dev = x.device
    runner = tail_runner(access, method)
    first = max(1, chunk // k) if isinstance(chunk, int) else 1
    try:
        _check_tail(runner, x[:first], acts[:first], logits[:first])
    except SplitError as e:
        if runner.method != "fx" or method != "auto":
            raise
        fallback_warning(access.name, str(e))
        runner = tail_runner(access, "hook")
    if chunk == AUTO:
        carried1 = runner.carry(x[:1])

        def run(batch: torch.Tensor) -> object:
            rows = torch.zeros(batch.shape[0], dtype=torch.long, device=dev)
            with forward_precision(precision, dev):
                return runner(batch, [c[rows] for c in carried1])

        tail = runner.split.tail if runner.split is not None else access.model
        chunk = auto_batch_size(run, acts[:1], dev, cap=n * k, module=tail, extra_inputs=1, what="terminals: abl")
    assert isinstance(chunk, int)
    if runtime is not None and runner.split is not None:
        runner = runner.with_tail(tail_forward(runner, [acts[:1], *runner.carry(x[:1])], runtime, show))
    if sizes is not None:
        sizes["abl"] = chunk
    block, per = ablation_layout(n, k, chunk)
    z_c = logits.gather(1, targets[:, None])[:, 0]
    ablated = torch.empty(n, k, dtype=x.dtype, device=dev)
    slots = torch.arange(per, device=dev)
    reference = torch.empty(n, dtype=x.dtype, device=dev) if precision != DEFAULT_PRECISION else None
    bar = progress_bar(n * k, f"terminals: abl ({runner.method})", show)
    try:
        for s in range(0, n, block):
            xs, a_s, ts = x[s:s + block], acts[s:s + block], targets[s:s + block]
            g = xs.shape[0]
            carried = runner.carry(xs)
            if reference is not None:
                with forward_precision(precision, dev):
                    unablated = runner(a_s, carried).to(x.dtype)
                reference[s:s + g] = unablated.gather(1, ts[:, None])[:, 0]
            buf = _buffer(a_s, per)  # [per, g, K, h, w]: made outside inference mode, so it counts versions
            rows_carried = [_buffer(c, per) for c in carried]
            # buf's and a_s's channel maps as rows [per * g * K, h * w] / [g * K, h * w]; slot o of image
            # b ablates channel c0 + o: buf row (o * g + b) * K + c0 + o, a_s row b * K + c0 + o
            buf_maps, maps = buf.view(per * g * k, -1), a_s.reshape(g * k, -1)
            at = ((slots[:, None] * g + slots.new_tensor(range(g))[None]) * k + slots[:, None]).flatten()
            src = (slots.new_tensor(range(g))[None] * k + slots[:, None]).flatten()
            fresh = True
            for c0 in range(0, k, per):
                m = min(per, k - c0)
                with torch.inference_mode():  # less bookkeeping per op; the buffer stays a normal tensor
                    if fresh:
                        buf.copy_(a_s.unsqueeze(0).expand_as(buf))
                        for r, c in zip(rows_carried, carried):
                            r.copy_(c.unsqueeze(0).expand_as(r))
                    else:  # the channels the last batch zeroed come back (its slots are a superset)
                        buf_maps.index_copy_(0, at[:m * g] + (c0 - per), maps.index_select(0, src[:m * g] + (c0 - per)))
                    buf_maps.index_fill_(0, at[:m * g] + c0, 0)
                    versions = [t._version for t in (buf, *rows_carried)]
                    with forward_precision(precision, dev):
                        out = runner(buf[:m].flatten(0, 1), [r[:m].flatten(0, 1) for r in rows_carried])
                    picked = out.to(x.dtype).view(m, g, -1).gather(2, ts.view(1, g, 1).expand(m, g, 1))[..., 0]
                    ablated[s:s + g, c0:c0 + m] = picked.transpose(0, 1)
                    fresh = versions != [t._version for t in (buf, *rows_carried)]
                bar.update(m * g)
    finally:
        bar.close()
    if reference is not None:
        z_c = reference
    return (z_c[:, None] - ablated) / z_c[:, None], ablated, runner.method


def tail_forward(runner: TailRunner, example: list[torch.Tensor], runtime: RuntimeSpec, show: bool) -> nn.Module:
    """What runs ``runner``'s fx tail under ``runtime`` (``auto``: timed on its own, since a small tail
    can run faster in torch than the model does); ``example``: its inputs (activations, then the carried
    values) for one image."""
    assert runner.split is not None
    layer = runner.access.name
    return forward_module(runner.split.tail, example, runtime, part=f"tail@{layer}",
                          what=f"the layers after {layer!r}", show=show)


def _buffer(t: torch.Tensor, times: int) -> torch.Tensor:
    """A contiguous ``[times, *t.shape]`` buffer (uninitialized) for ``times`` copies of ``t``."""
    return torch.empty((times, *t.shape), dtype=t.dtype, device=t.device)


def _check_finite(values: dict[str, torch.Tensor], names: list[str], z_c: torch.Tensor) -> None:
    for name in names:
        v = values[name]
        bad = ~torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            hint = "check the model weights and the input images"
            if name == "abl" and float(z_c[i]) == 0:
                hint = "the target logit z_c is 0 for that image, so (z_c - z_c^(k)) / z_c is undefined"
            raise TerminalError(f"terminal {name!r} has NaN or Inf values for image {i}: {hint}")


def _dtype(module: nn.Module) -> torch.dtype:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _probe(access: LayerAccess, x: torch.Tensor, names: list[str]) -> int:
    """One image through the model before any terminal work, so that a model or an input size that
    cannot give these terminals fails at once, with one line, not after minutes or in a traceback;
    returns the number of classes."""
    need_grad = bool(_GRAD_NAMES & set(names))
    size = "x".join(str(d) for d in x.shape[2:])
    try:
        with torch.set_grad_enabled(need_grad):
            acts, logits = access.forward(x[:1])
    except SycamError:
        raise
    except Exception as e:  # the user's model code: torch raises RuntimeError, ValueError, ... on bad sizes
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TerminalError(f"the model fails on one {size} image ({first}); if the images are too small for "
                            f"it, use a larger --size") from None
    if acts.shape[2] < 1 or acts.shape[3] < 1:
        raise TerminalError(f"at {size} px layer {access.name!r} outputs {list(acts.shape[1:])}, less than 1x1; "
                            f"use a larger --size")
    if not logits.is_floating_point():
        raise TerminalError(f"the model returns {str(logits.dtype).removeprefix('torch.')} values, not "
                            f"floating-point logits; return the class scores before argmax or rounding")
    if need_grad and not logits.requires_grad:
        grads = ", ".join(sorted(_GRAD_NAMES & set(names)))
        raise TerminalError(f"the model's output does not depend on its input through autograd (detached or "
                            f"computed under no_grad); gradient terminals ({grads}) need it: remove the detach "
                            f"or no_grad from forward, or ask for cic, abl, acts or A only")
    return int(logits.shape[1])


def prepare_model(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor, names: list[str],
                  device: torch.device) -> tuple[nn.Module, LayerAccess, torch.Tensor, int]:
    """(module, its layer access, images on ``device``, number of classes) for ``compute_terminals``,
    checked up front.

    A model in float16 or bfloat16 (or mixed types) runs as a float32 copy (one warning line); float64
    models run in float64 (``load_model`` casts them to float32, for the metrics' float32 images). The model
    must return one tensor of floating-point logits ``[N, C]``: tuples and dicts (auxiliary outputs,
    ``ModelOutput`` objects) are refused, so wrap the model to return the logits. One image goes
    through the model (``_probe``) to check the input size, the layer and, when ``names`` has a
    gradient terminal, that the logits depend on the input through autograd."""
    module = model.module if isinstance(model, LoadedModel) else model
    if isinstance(model, LoadedModel) and layer is None:
        layer = model.target_layer
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        what = f"shape {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise TerminalError(f"images must be a tensor [N, 3, H, W] with N >= 1, got {what}")
    module = float32_model(module, allow_float64=True)
    access = layer_access(module, layer)
    module.to(device)
    x = images.to(device=device, dtype=_dtype(module))
    with eval_mode(module):
        n_classes = _probe(access, x, names)
    return module, access, x, n_classes


@dataclass
class TerminalRun:
    """Terminal work ready to run (``prepare_run``): the checked ``module`` and its layer ``access``,
    the images ``x`` ``[N, 3, H, W]`` on the device, the ``targets`` ``[N]`` (None: the predicted
    classes), the terminal ``names``, and how: ``chunk_size`` (rows per forward pass, or ``"auto"``),
    ``progress``, ``ablation``, ``precision``, ``runtime`` (where the forward-only passes run; None:
    torch); ``sizes``: the rows per forward pass each loop used."""

    module: nn.Module
    access: LayerAccess
    x: torch.Tensor
    targets: torch.Tensor | None
    names: list[str]
    chunk_size: BatchSize
    progress: bool
    ablation: str
    precision: str = DEFAULT_PRECISION
    sizes: dict[str, int] = field(default_factory=dict)
    runtime: RuntimeSpec | None = None
    forwards: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def model_forward(self) -> nn.Module:
        """What runs the model's forward-only passes (``cic``): the model, or a ``RuntimeModule``
        (``models.runtime.forward_module``, resolved once per run)."""
        if self.runtime is None:
            return self.access.model
        if "model" not in self.forwards:
            self.forwards["model"] = forward_module(self.access.model, [self.x[:1]], self.runtime, show=self.progress)
        return self.forwards["model"]

    def runtime_of(self, kind: str) -> str:
        """The runtime that computes ``kind``'s records: ``cic`` the model's, ``abl`` the tail's (torch for
        the hook and script methods), ``base`` torch (gradients)."""
        if self.runtime is None or self.runtime.name == "torch" or kind == BASE:
            return "torch"
        if kind == CIC:
            return runtime_name(self.model_forward())
        if "tail" not in self.forwards:
            runner = tail_runner(self.access, self.ablation)
            if runner.split is None:
                return "torch"
            with eval_mode(self.module), torch.no_grad():
                example = [runner.split.run_head(self.x[:1])[0], *runner.carry(self.x[:1])]
                self.forwards["tail"] = tail_forward(runner, example, self.runtime, self.progress)
        return runtime_name(self.forwards["tail"])

    @property
    def images_per_chunk(self) -> int:
        """Images per chunk of records (``chunk_size``; ``DEFAULT_CHUNK_SIZE`` with ``"auto"``)."""
        return self.chunk_size if isinstance(self.chunk_size, int) else DEFAULT_CHUNK_SIZE

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def kinds(self) -> tuple[str, ...]:
        """The record kinds ``names`` need: ``base`` always, ``cic`` and ``abl`` when read."""
        wanted = {BASE: True, CIC: "cic" in self.names or "mlogits" in self.names, ABL: "abl" in self.names}
        return tuple(kind for kind, needed in wanted.items() if needed)

    def base_covers(self, record: Record) -> bool:
        """Whether a ``base`` record holds every gradient terminal ``names`` need (one computed for
        other names may lack them)."""
        need = ({"grads", "pgrads"} if _GRAD_NAMES & set(self.names) else set()) | ({"G"} & set(self.names))
        return need <= record.keys()


def prepare_run(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                targets: torch.Tensor | None, names: Sequence[str], device: str | torch.device = "cpu",
                chunk_size: BatchSize = DEFAULT_CHUNK_SIZE, progress: bool = True, ablation: str = "auto",
                precision: str = DEFAULT_PRECISION, runtime: RuntimeSpec | None = None) -> TerminalRun:
    """The arguments of ``compute_terminals`` checked (``prepare_model``; targets in range) and ready;
    ``runtime`` runs at ``precision`` (its own precision is replaced)."""
    names = check_names(names)
    dev = resolve_device(device)
    try:
        check_batch_size(chunk_size, "chunk_size")
        check_precision(precision)
        if runtime is not None:
            runtime = replace(runtime, precision=precision)
            check_support(runtime.name, precision, dev)
    except ModelError as e:
        raise TerminalError(str(e)) from None
    module, access, x, n_classes = prepare_model(model, layer, images, names, dev)
    t = _check_targets(targets, x.shape[0], dev)
    if t is not None and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        bad = int(((t < 0) | (t >= n_classes)).nonzero()[0])
        raise TerminalError(f"target class {int(t[bad])} of image {bad} is out of range: the model has {n_classes} "
                            f"classes")
    return TerminalRun(module, access, x, t, names, chunk_size, progress, ablation, precision, runtime=runtime)


def _split(values: dict[str, torch.Tensor], n: int) -> list[Record]:
    """Batched values ``{name: [n, ...]}`` as ``n`` records of one image each (views)."""
    return [{k: v[i] for k, v in values.items()} for i in range(n)]


def _stack(records: Sequence[Record], key: str) -> torch.Tensor:
    return torch.stack([r[key] for r in records])


def _compute_chunk(run: TerminalRun, kind: str, idx: list[int], base: list[Record | None],
                   ablation: str) -> list[Record]:
    """The ``kind`` records of the images ``idx`` (``base`` must hold theirs for ``cic`` and ``abl``)."""
    index = torch.tensor(idx, device=run.x.device)
    x = run.x.index_select(0, index)
    if kind == BASE:
        t = None if run.targets is None else run.targets.index_select(0, index)
        return _split(_gradient_pass(run.access, x, t, run.names, run.chunk_size, run.progress, run.sizes), len(idx))
    have = [base[i] for i in idx]
    assert all(r is not None for r in have), "the base records come first"
    done = [r for r in have if r is not None]
    acts, targets = _stack(done, "A"), _stack(done, "targets")
    if kind == CIC:
        cic, masked = _cic(run.access.model, x, acts, targets, run.chunk_size, run.progress, run.precision,
                           run.sizes, run.model_forward())
        return _split({"cic": cic, "mlogits": masked}, len(idx))
    abl, ablated, method = _abl(run.access, x, acts, _stack(done, "logits"), targets, run.chunk_size, ablation,
                                run.progress, run.precision, run.sizes, run.runtime)
    return [{**r, "abl_method": method} for r in _split({"abl": abl, "ablated_logits": ablated}, len(idx))]


def _check_logits(base: Sequence[Record | None]) -> None:
    logits = _stack([r for r in base if r is not None], "logits")
    if not bool(torch.isfinite(logits).all()):
        i = int((~torch.isfinite(logits)).any(dim=1).nonzero()[0])
        raise TerminalError(f"the model's logits have NaN or Inf values for image {i}; check the model weights "
                            f"and the input images")


#: Called after each computed chunk with its record kind, the images' positions and their records.
ChunkDone = Callable[[str, list[int], list[Record]], None]


def compute_records(run: TerminalRun, records: dict[str, list[Record | None]],
                    on_chunk: ChunkDone | None = None) -> None:
    """Fill in the missing (None) records of each kind in ``records`` (``{kind: [record or None] * N}``,
    the kinds of ``run.kinds``), ``run.images_per_chunk`` images at a time, every ``base`` record first,
    calling ``on_chunk`` after each chunk. Run in eval mode (``eval_mode(run.module)``)."""
    ablation = run.ablation
    for kind in run.kinds:
        missing = [i for i, r in enumerate(records[kind]) if r is None]
        size = run.images_per_chunk
        chunks = [missing[s:s + size] for s in range(0, len(missing), size)]
        for c, idx in enumerate(chunks):
            with progress_label(f" (chunk {c + 1} of {len(chunks)})" if len(chunks) > 1 else ""):
                done = _compute_chunk(run, kind, idx, records[BASE], ablation)
            for i, record in zip(idx, done):
                records[kind][i] = record
            if kind == ABL and done[0]["abl_method"] == "hook":
                ablation = "hook"  # the fx split failed once: do not trace (and warn) again for every chunk
            if on_chunk is not None:
                on_chunk(kind, idx, done)
        if kind == BASE:
            _check_logits(records[BASE])  # before the long masked and ablated passes


def assemble(run: TerminalRun, records: dict[str, list[Record | None]]) -> tuple[Terminals, TerminalInfo]:
    """``Terminals`` and ``TerminalInfo`` of ``run.names`` from every image's records (all present)."""
    def complete(kind: str) -> list[Record]:
        out = [r for r in records[kind] if r is not None]
        assert len(out) == run.n, f"missing {kind} records"
        return out

    base = complete(BASE)
    acts, logits, t = _stack(base, "A"), _stack(base, "logits"), _stack(base, "targets")
    z_c, y_c = _target_scores(logits, t)
    values = {"A": acts, "acts": acts.mean(dim=(2, 3))}
    values.update({k: _stack(base, k) for k in ("G", "grads", "pgrads") if k in run.names})
    info = TerminalInfo(run.access.name, acts, logits, t, z_c, y_c, batch_sizes=dict(run.sizes))
    if CIC in run.kinds:
        cic = complete(CIC)
        values["cic"], values["mlogits"] = _stack(cic, "cic"), _stack(cic, "mlogits")
        info.masked_logits = values["mlogits"]
    if ABL in run.kinds:
        abl = complete(ABL)
        values["abl"], info.ablated_logits = _stack(abl, "abl"), _stack(abl, "ablated_logits")
        info.abl_method = "/".join(sorted({r["abl_method"] for r in abl}))  # one method, unless a store mixes them
    _check_finite(values, run.names, z_c)
    return Terminals({n: values[n] for n in run.names}), info


def compute_terminals(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                      targets: torch.Tensor | None, names: Sequence[str], device: str | torch.device = "cpu",
                      chunk_size: BatchSize = DEFAULT_CHUNK_SIZE, progress: bool = True,
                      ablation: str = "auto", precision: str = DEFAULT_PRECISION,
                      runtime: RuntimeSpec | None = None) -> tuple[Terminals, TerminalInfo]:
    """The terminals ``names`` of ``model`` at ``layer`` for ``images``.

    ``images``: ``[N, 3, H, W]``, normalized as the model expects; ``targets``: ``[N]`` class indices,
    None for the predicted class; ``layer``: dotted module path, None for the model's default.
    ``chunk_size``: the most images, masked images (``cic``) or ablated activation copies (``abl``)
    per forward pass, and the images per chunk of records, or ``"auto"`` (each loop picks its own
    with ``models.batching.auto_batch_size``; ``info.batch_sizes`` says what; records then go
    ``DEFAULT_CHUNK_SIZE`` images at a time). ``ablation``: ``auto`` (fx split, hook fallback), ``fx``
    or ``hook``. ``precision``: fp32 (default), bf16 or fp16 for the forward passes of ``cic`` and
    ``abl`` (autocast; the gradient pass, ``A`` and the logits stay float32); ``runtime``: where those
    passes run (``models.runtime``: ONNX Runtime or OpenVINO on the CPU; None: torch). The model is checked
    first (``prepare_model``: float32, logits, input size, autograd), moved to ``device`` and run in
    eval mode; its modes are restored and its hooks removed on every exit. Vec terminals are
    ``[N, K]``, Map terminals ``[N, K, h, w]``, on ``device``. ``cam.store.compute_terminals_stored``
    is the same through the on-disk store."""
    run = prepare_run(model, layer, images, targets, names, device, chunk_size, progress, ablation, precision,
                      runtime)
    records: dict[str, list[Record | None]] = {kind: [None] * run.n for kind in run.kinds}
    with eval_mode(run.module):
        compute_records(run, records)
    return assemble(run, records)
