"""Computing the terminals (docs/cam-engine.md#terminals) for a model, a target layer and a batch of images.

The passes that compute them (``lang.terminals.PASSES``) each have a module: ``gradient_pass`` (one
forward and backward pass per image batch: ``A``, ``G``, ``grads``, ``pgrads``, and ``acts`` from
``A``), ``scorecam_pass`` (``cic`` and ``mlogits``: the model on masked copies of each image) and
``ablation_pass`` (``abl``: the layers after the target layer on activations with one channel zeroed).
The values come in one **record** per image and pass, of the pass's record kind (``base``, ``cic``,
``abl``; the fields each holds: ``lang.terminals.record_fields``). ``compute_records`` computes the
missing records of some images, ``chunk_size`` images at a time and ``base`` first, calling back after
each chunk (``cam.store`` writes it to disk there); ``assemble`` turns the records into ``Terminals``
and ``TerminalInfo``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import SycamError
from ..evaluate.terminal_values import Terminals
from ..lang.terminals import (
    ABLATION,
    GRADIENT,
    SCORECAM,
    TERMINALS,
    backward_terminals,
    needs_backward,
    passes_for,
    terminals_of_pass,
)
from ..models.batching import BatchSize, check_batch_size
from ..models.devices import resolve_device
from ..models.errors import ModelError
from ..models.loaded import LoadedModel
from ..models.precision import DEFAULT_PRECISION, check_precision, float32_model
from ..models.runtime import RuntimeSpec, check_support, forward_module, runtime_name
from ..models.targets import ClassTarget, Target
from ..util.modes import eval_mode
from ..util.progress import progress_label
from ..util.text import first_line
from .ablation_pass import ablation_pass, tail_forward
from .errors import TerminalError
from .gradient_pass import gradient_pass, recorded_gradients
from .layer_split import LayerAccess, layer_access, tail_runner
from .reshape import Reshape
from .scorecam_pass import scorecam_pass, target_scores

DEFAULT_CHUNK_SIZE = 32

#: The record kinds (each pass's ``record``), in the order they are computed (``cic`` and ``abl`` read ``base``).
BASE, CIC, ABL = GRADIENT.record, SCORECAM.record, ABLATION.record

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
    images came whole from the terminal store (``cam.store``), nothing computed for them.
    ``target``: a target of another kind than the class (``models.targets``, bound to these images:
    ``targets`` are then its ids, ``z_c`` its raw score, ``y_c`` its metric score); None for the class."""

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
    target: Target | None = None


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


def _check_finite(values: dict[str, torch.Tensor], names: list[str], z_c: torch.Tensor) -> None:
    for name in names:
        v = values[name]
        bad = ~torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            hint = "check the model weights and the input images"
            if name == "abl" and float(z_c[i]) == 0:
                hint = ("the target's score z_c is 0 for that image, so (z_c - z_c^(k)) / z_c is undefined; leave "
                        "the image out or choose another target")
            raise TerminalError(f"terminal {name!r} has NaN or Inf values for image {i}: {hint}")


def _dtype(module: nn.Module) -> torch.dtype:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _probe(access: LayerAccess, x: torch.Tensor, names: list[str], target: Target | None = None) -> int:
    """One image through the model before any terminal work, so that a model, an input size or a
    ``target`` (None: the class) that cannot give these terminals fails at once, with one line, not
    after minutes or in a traceback; returns the number of classes (outputs)."""
    need_grad = needs_backward(names)
    size = "x".join(str(d) for d in x.shape[2:])
    try:
        with torch.set_grad_enabled(need_grad):
            acts, logits = access.forward(x[:1])
    except SycamError:
        raise
    except Exception as e:  # the user's model code: torch raises RuntimeError, ValueError, ... on bad sizes
        first = first_line(e)
        raise TerminalError(f"the model fails on one {size} image ({first}); if the images are too small for "
                            f"it, use a larger --size") from None
    if acts.shape[2] < 1 or acts.shape[3] < 1:
        raise TerminalError(f"at {size} px layer {access.name!r} outputs {list(acts.shape[1:])}, less than 1x1; "
                            f"use a larger --size")
    if not logits.is_floating_point():
        raise TerminalError(f"the model returns {str(logits.dtype).removeprefix('torch.')} values, not "
                            f"floating-point logits; return the class scores before argmax or rounding")
    if need_grad and not logits.requires_grad:
        grads = ", ".join(sorted(backward_terminals() & set(names)))
        raise TerminalError(f"the model's output does not depend on its input through autograd (detached or "
                            f"computed under no_grad); gradient terminals ({grads}) need it: remove the detach "
                            f"or no_grad from forward, or ask for cic, abl, acts or A only")
    bound, ids = (target or ClassTarget()).select([0]).bind(logits.detach())
    bound.raw(logits.detach(), ids)  # a callable that returns the wrong shape fails here
    return int(logits.shape[1])


def prepare_model(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor, names: list[str],
                  device: torch.device, reshape: Reshape = "auto",
                  target: Target | None = None) -> tuple[nn.Module, LayerAccess, torch.Tensor, int]:
    """(module, its layer access, images on ``device``, number of classes) for ``compute_terminals``,
    checked up front.

    A model in float16 or bfloat16 (or mixed types) runs as a float32 copy (one warning line); float64
    models run in float64 (``load_model`` casts them to float32, for the metrics' float32 images). The model
    must return one tensor of floating-point logits ``[N, C]`` (for ``target`` of another kind, what it
    reads: ``models.targets``; a dict's ``'out'``): tuples and other dicts (auxiliary outputs,
    ``ModelOutput`` objects) are refused, so wrap the model to return the logits. One image goes
    through the model (``_probe``) to check the input size, the layer and, when ``names`` has a
    gradient terminal, that the logits depend on the input through autograd; it also resolves the
    layer's ``reshape`` (``cam.reshape``: ``access.tokens``)."""
    module = model.module if isinstance(model, LoadedModel) else model
    if isinstance(model, LoadedModel) and layer is None:
        layer = model.target_layer
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        what = f"shape {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise TerminalError(f"images must be a tensor [N, 3, H, W] with N >= 1, got {what}")
    module = float32_model(module, allow_float64=True)
    access = layer_access(module, layer, reshape)
    module.to(device)
    x = images.to(device=device, dtype=_dtype(module))
    with eval_mode(module):
        n_classes = _probe(access, x, names, target)
    return module, access, x, n_classes


@dataclass
class TerminalRun:
    """Terminal work ready to run (``prepare_run``): the checked ``module`` and its layer ``access``,
    the images ``x`` ``[N, 3, H, W]`` on the device, the ``targets`` ``[N]`` (None: the predicted
    classes), ``target`` (``models.targets``; None: the class), the terminal ``names``, and how:
    ``chunk_size`` (rows per forward pass, or ``"auto"``), ``progress``, ``ablation``, ``precision``,
    ``runtime`` (where the forward-only passes run; None: torch); ``sizes``: the rows per forward pass
    each loop used."""

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
    target: Target | None = None

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
                self.forwards["tail"] = tail_forward(runner, runner.example(self.x[:1]), self.runtime, self.progress)
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
        return tuple(p.record for p in passes_for(self.names))

    def base_covers(self, record: Record) -> bool:
        """Whether a ``base`` record holds every gradient terminal ``names`` need (one computed for
        other names may lack them)."""
        return recorded_gradients(self.names) <= record.keys()


def prepare_run(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                targets: torch.Tensor | Target | None, names: Sequence[str], device: str | torch.device = "cpu",
                chunk_size: BatchSize = DEFAULT_CHUNK_SIZE, progress: bool = True, ablation: str = "auto",
                precision: str = DEFAULT_PRECISION, runtime: RuntimeSpec | None = None,
                reshape: Reshape = "auto") -> TerminalRun:
    """The arguments of ``compute_terminals`` checked (``prepare_model``; targets in range) and ready;
    ``runtime`` runs at ``precision`` (its own precision is replaced); ``targets``: class indices, None
    (the predicted classes) or a ``Target`` (``models.targets``)."""
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
    target = None
    if isinstance(targets, Target):  # the class kind stays the class-index path, bit for bit
        target, targets = (None if targets.is_class else targets), None
        if target is not None and isinstance(images, torch.Tensor):
            target.check_images(images.shape[0])
    module, access, x, n_classes = prepare_model(model, layer, images, names, dev, reshape, target)
    t = _check_targets(targets, x.shape[0], dev)
    if t is not None and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        bad = int(((t < 0) | (t >= n_classes)).nonzero()[0])
        raise TerminalError(f"target class {int(t[bad])} of image {bad} is out of range: the model has {n_classes} "
                            f"classes")
    return TerminalRun(module, access, x, t, names, chunk_size, progress, ablation, precision, runtime=runtime,
                       target=target)


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
        target = None if run.target is None else run.target.select(idx)
        return _split(gradient_pass(run.access, x, t, run.names, run.chunk_size, run.progress, run.sizes, target),
                      len(idx))
    have = [base[i] for i in idx]
    assert all(r is not None for r in have), "the base records come first"
    done = [r for r in have if r is not None]
    acts, targets, logits = _stack(done, "A"), _stack(done, "targets"), _stack(done, "logits")
    target = None
    if run.target is not None:  # its state (a segmentation mask) comes from these images' unperturbed outputs
        target, targets = run.target.select(idx).bind(logits)
    if kind == CIC:
        cic, masked = scorecam_pass(run.access.model, x, acts, targets, run.chunk_size, run.progress, run.precision,
                                    run.sizes, run.model_forward(), target)
        return _split({"cic": cic, "mlogits": masked}, len(idx))
    abl, ablated, method = ablation_pass(run.access, x, acts, logits, targets, run.chunk_size,
                                         ablation, run.progress, run.precision, run.sizes, run.runtime, target)
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
    target = None
    if run.target is not None:
        target, t = run.target.bind(logits)
    z_c, y_c = target_scores(logits, t, target)
    values = {"A": acts, "acts": acts.mean(dim=(2, 3))}
    values.update({k: _stack(base, k) for k in sorted(backward_terminals() & set(run.names))})
    info = TerminalInfo(run.access.name, acts, logits, t, z_c, y_c, batch_sizes=dict(run.sizes), target=target)
    if CIC in run.kinds:
        cic = complete(CIC)
        values.update({k: _stack(cic, k) for k in terminals_of_pass(SCORECAM)})
        info.masked_logits = values["mlogits"]
    if ABL in run.kinds:
        abl = complete(ABL)
        values.update({k: _stack(abl, k) for k in terminals_of_pass(ABLATION)})
        info.ablated_logits = _stack(abl, "ablated_logits")
        info.abl_method = "/".join(sorted({r["abl_method"] for r in abl}))  # one method, unless a store mixes them
    _check_finite(values, run.names, z_c)
    return Terminals({n: values[n] for n in run.names}), info


def compute_terminals(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                      targets: torch.Tensor | Target | None, names: Sequence[str], device: str | torch.device = "cpu",
                      chunk_size: BatchSize = DEFAULT_CHUNK_SIZE, progress: bool = True,
                      ablation: str = "auto", precision: str = DEFAULT_PRECISION,
                      runtime: RuntimeSpec | None = None, reshape: Reshape = "auto") -> tuple[Terminals, TerminalInfo]:
    """The terminals ``names`` of ``model`` at ``layer`` for ``images``.

    ``images``: ``[N, 3, H, W]``, normalized as the model expects; ``targets``: ``[N]`` class indices,
    None for the predicted class, or a ``Target`` of another kind (``models.targets``: what the
    gradients, ``cic`` and ``abl`` read); ``layer``: dotted module path, None for the model's default.
    ``chunk_size``: the most images, masked images (``cic``) or ablated activation copies (``abl``)
    per forward pass, and the images per chunk of records, or ``"auto"`` (each loop picks its own
    with ``models.batching.auto_batch_size``; ``info.batch_sizes`` says what; records then go
    ``DEFAULT_CHUNK_SIZE`` images at a time). ``ablation``: ``auto`` (fx split, hook fallback), ``fx``
    or ``hook``. ``precision``: fp32 (default), bf16 or fp16 for the forward passes of ``cic`` and
    ``abl`` (autocast; the gradient pass, ``A`` and the logits stay float32); ``runtime``: where those
    passes run (``models.runtime``: ONNX Runtime or OpenVINO on the CPU; None: torch); ``reshape``: how a
    layer with token ``[N, T, C]`` or channels-last ``[N, h, w, C]`` output is read as ``[N, C, h, w]``
    (``cam.reshape``: ``auto``, ``none`` or a callable; ``auto`` leaves ``[N, K, h, w]`` outputs as they
    are, and the backward pass, ``cic``'s masks and ``abl``'s ablations go through it). The model is checked
    first (``prepare_model``: float32, logits, input size, autograd), moved to ``device`` and run in
    eval mode; its modes are restored and its hooks removed on every exit. Vec terminals are
    ``[N, K]``, Map terminals ``[N, K, h, w]``, on ``device``. ``cam.store.compute_terminals_stored``
    is the same through the on-disk store."""
    run = prepare_run(model, layer, images, targets, names, device, chunk_size, progress, ablation, precision,
                      runtime, reshape)
    records: dict[str, list[Record | None]] = {kind: [None] * run.n for kind in run.kinds}
    with eval_mode(run.module):
        compute_records(run, records)
    return assemble(run, records)
