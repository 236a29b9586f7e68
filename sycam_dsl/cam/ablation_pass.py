"""The ablation pass (``lang.terminals.ABLATION``): AblationCAM's ``abl``, by rerunning only the layers
after the target layer (``layer_split``) on the activations with one channel zeroed, ``chunk``
ablated copies at a time (blocks of images, batches of channels: ``ablation_layout``)."""

from __future__ import annotations

import torch
from torch import nn

from ..models.batching import AUTO, BatchSize, auto_batch_size
from ..models.precision import DEFAULT_PRECISION, forward_precision
from ..models.runtime import RuntimeSpec, forward_module, measured_batch, runtime_loop
from ..models.targets import Target
from ..util.progress import Progress
from ..util.progress import progress as progress_bar
from .layer_split import LayerAccess, SplitError, TailRunner, fallback_warning, tail_runner


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



def _checked_runner(access: LayerAccess, x: torch.Tensor, acts: torch.Tensor, logits: torch.Tensor,
                    chunk: BatchSize, method: str) -> TailRunner:
    """The tail runner of ``method``, checked on the first images (``_check_tail``); ``auto`` falls back
    from the fx split to the hook with one warning line."""
    runner = tail_runner(access, method)
    first = max(1, chunk // acts.shape[1]) if isinstance(chunk, int) else 1
    try:
        _check_tail(runner, x[:first], acts[:first], logits[:first])
    except SplitError as e:
        if runner.method != "fx" or method != "auto":
            raise
        fallback_warning(access, str(e))
        runner = tail_runner(access, "hook")
    return runner


def _auto_chunk(runner: TailRunner, x: torch.Tensor, acts: torch.Tensor, precision: str) -> int:
    """``auto_batch_size`` of ``runner``'s pass over ablated copies of ``acts`` ``[N, K, h, w]``."""
    dev = x.device
    carried1 = runner.carry(x[:1])

    def run(batch: torch.Tensor) -> object:
        rows = torch.zeros(batch.shape[0], dtype=torch.long, device=dev)
        with forward_precision(precision, dev):
            return runner(batch, [c[rows] for c in carried1])

    tail = runner.split.tail if runner.split is not None else runner.access.model
    n, k = acts.shape[:2]
    return auto_batch_size(run, acts[:1], dev, cap=n * k, module=tail, extra_inputs=1, what="terminals: abl")


def _picked(out: torch.Tensor, ts: torch.Tensor, m: int, target: Target | None) -> torch.Tensor:
    """``[g, m]`` target scores of ``out`` ``[m * g, ...]`` (row ``o * g + b``: image ``b``, targets ``ts`` ``[g]``)."""
    g = ts.shape[0]
    if target is not None:
        return target.raw(out, ts.repeat(m)).view(m, g).transpose(0, 1)
    return out.view(m, g, -1).gather(2, ts.view(1, g, 1).expand(m, g, 1))[..., 0].transpose(0, 1)


def _ablate_block(runner: TailRunner, a_s: torch.Tensor, ts: torch.Tensor, carried: list[torch.Tensor], per: int,
                  precision: str, ablated: torch.Tensor, bar: Progress, target: Target | None = None) -> None:
    """Fill ``ablated`` ``[g, K]`` with ``z_c^(k)`` of a block of ``g`` images (activations ``a_s``
    ``[g, K, h, w]``, targets ``ts`` ``[g]``, ``carried`` values), ``per`` channels of each per batch;
    ``target``: a bound target whose raw score replaces ``z_c`` (``ts`` its ids)."""
    g, k = a_s.shape[:2]
    dev = a_s.device
    slots = torch.arange(per, device=dev)
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
                logits = runner(buf[:m].flatten(0, 1), [r[:m].flatten(0, 1) for r in rows_carried])
            ablated[:, c0:c0 + m] = _picked(logits.to(ablated.dtype), ts, m, target)
            fresh = versions != [t._version for t in (buf, *rows_carried)]
        bar.update(m * g)


@torch.no_grad()
def ablation_pass(access: LayerAccess, x: torch.Tensor, acts: torch.Tensor, logits: torch.Tensor,
                  targets: torch.Tensor, chunk: BatchSize, method: str, show: bool, precision: str = DEFAULT_PRECISION,
                  sizes: dict[str, int] | None = None,
                  runtime: RuntimeSpec | None = None,
                  target: Target | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
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
    hook and script methods rerun the model in torch. ``target``: a bound target of another kind than the
    class (``models.targets``; ``targets`` its ids), whose raw score stands for ``z_c``. No host-device
    sync per batch."""
    n, k = acts.shape[:2]
    dev = x.device
    runner = _checked_runner(access, x, acts, logits, chunk, method)
    if runtime is not None and runner.split is not None:
        runner = runner.with_tail(tail_forward(runner, runner.example(x[:1], acts[:1]), runtime, show))
    measured = measured_batch(runner.tail)
    if chunk == AUTO and measured is not None:  # the runtime's best batch of rows
        chunk = min(measured, n * k)
    elif chunk == AUTO:
        chunk = _auto_chunk(runner, x, acts, precision)
    assert isinstance(chunk, int)
    if sizes is not None:
        sizes["abl"] = chunk
    block, per = ablation_layout(n, k, chunk)
    z_c = logits.gather(1, targets[:, None])[:, 0] if target is None else target.raw(logits, targets)
    ablated = torch.empty(n, k, dtype=x.dtype, device=dev)
    reference = torch.empty(n, dtype=x.dtype, device=dev) if precision != DEFAULT_PRECISION else None
    bar = progress_bar(n * k, f"terminals: abl ({runner.method})", show)
    try:
        for s in range(0, n, block):
            xs, a_s, ts = x[s:s + block], acts[s:s + block], targets[s:s + block]
            g = xs.shape[0]
            carried = runner.carry(xs)  # the layers before the target layer, if any, in torch
            with runtime_loop(runner.tail):
                if reference is not None:
                    with forward_precision(precision, dev):
                        unablated = runner(a_s, carried).to(x.dtype)
                    reference[s:s + g] = _picked(unablated, ts, 1, target)[:, 0]
                _ablate_block(runner, a_s, ts, carried, per, precision, ablated[s:s + g], bar, target)
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

