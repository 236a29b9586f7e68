"""The self-contained explainer file (``sycam-dsl export``): one TorchScript module holding the model
split at the target layer, the computation of exactly the terminals the method reads, the method's
weights (``backend.dispatch_module``'s generated code) and the CAM template, so that
``torch.jit.load(file)(images, targets=None)`` gives the heatmaps ``[N, H, W]`` without sycam-dsl.

The maths is the engine's, step for step (``cam.compute``), pass by pass (``lang.terminals.PASSES``):
the gradient pass (``cam.gradient_pass``: ``dz_c/dA`` by ``torch.autograd.grad``), ScoreCAM's masked
passes (``cam.scorecam_pass``: ``channel_masks``, baseline ``x_b = 0``, constant maps keep the
baseline's scores, the same rows per batch and channels-last input), ablation through the layers
after the target layer (``cam.ablation_pass``: the same blocks of images and channels,
``ablation_layout``), then ``template``'s saliency, upsampling matrices and min-max normalization.
The model is split with ``cam.layer_split.split_model`` (torch.fx); each half is compiled with
``torch.jit.script``, else ``torch.jit.trace``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..backend.dispatch_module import compile_dispatch, generate_dispatch_source
from ..backend.export import python_module
from ..cam.ablation_pass import ablation_layout
from ..cam.compute import DEFAULT_CHUNK_SIZE
from ..cam.layer_split import SplitError, layer_access, split_model
from ..cam.reshape import Reshape, TokenMap, gather_maps, scatter_maps
from ..errors import SycamError
from ..lang.ast import Node
from ..lang.operators import HELPERS_SRC
from ..lang.terminals import ABLATION, GRADIENT, SCORECAM, TERMINALS, needs_backward, pass_of, terminals_of_pass
from ..lang.types import Type
from ..models.layers import kind, resolve_layer
from ..models.precision import float32_model
from ..models.targets import Target, model_output
from ..template.saliency import map_saliency, minmax_normalize, vec_saliency
from ..template.upsampling import linear_weights
from ..util.warnings import quiet_deprecations
from .explainer_target import TargetScore, target_score, tensor_output
from .method import Method, method_terminals, method_text, method_type

#: The terminals the explainer computes, in the order its weights module takes them: the table's (a terminal
#: added to the language needs its computation and its argument in ``Explainer.forward`` too;
#: ``tests/test_terminal_table.py`` checks that they match).
WEIGHT_INPUTS = tuple(TERMINALS)
#: Terminals whose values the gradient pass gives (the ``export`` format handles only these).
GRADIENT_ONLY = frozenset(terminals_of_pass(GRADIENT))


class ExportError(SycamError):
    """A model or method that cannot go into an explainer file; the message names the part."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# the model's two halves, with a fixed signature whatever the layers after the target layer read


def _list_head(head: fx.GraphModule) -> fx.GraphModule:
    """``head`` returning ``[A, *carried]`` (a list, so that the explainer's code needs no arity)."""
    graph = head.graph
    for node in graph.nodes:
        if node.op == "placeholder":
            # forward's own annotation comes back as a name TorchScript cannot resolve; Tensor is the default
            node.type = None
    out = next(n for n in graph.nodes if n.op == "output")
    value = out.args[0]
    out.args = (list(value) if isinstance(value, tuple) else [value],)
    graph.lint()
    return fx.GraphModule(head, graph)


def _list_tail(tail: fx.GraphModule, n_carried: int) -> fx.GraphModule:
    """``tail(acts, carried: List[Tensor])`` around ``tail(acts, *carried)``."""
    graph = fx.Graph()
    acts = graph.placeholder("acts", type_expr=torch.Tensor)
    carried = graph.placeholder("carried", type_expr=list[torch.Tensor])
    items = [graph.call_function(_getitem, (carried, i)) for i in range(n_carried)]
    graph.output(graph.call_module("tail", (acts, *items)))
    return fx.GraphModule({"tail": tail}, graph)


def _getitem(values: list[Tensor], i: int) -> Tensor:
    return values[i]


class _MapsHead(nn.Module):
    """``head`` with the layer's token or channels-last output read as maps (``cam.reshape``):
    ``[maps, *carried, output]``, the output last, for ``_MapsTail`` to write (ablated) maps back into."""

    def __init__(self, head: nn.Module, tokens: TokenMap) -> None:
        super().__init__()
        self.head, self.shape = head, list(tokens.shape)
        self.register_buffer("index", tokens.index.flatten())

    def forward(self, x: Tensor) -> list[Tensor]:
        parts: list[Tensor] = self.head(x)
        index = self.index
        assert isinstance(index, Tensor)  # a buffer (for mypy, which sees Tensor | Module)
        return [gather_maps(parts[0], index, self.shape)] + parts[1:] + [parts[0]]


class _MapsTail(nn.Module):
    """``tail(acts, carried)`` from maps ``acts``, written back into the layer's output (``carried[-1]``)."""

    def __init__(self, tail: nn.Module, tokens: TokenMap) -> None:
        super().__init__()
        self.tail = tail
        self.register_buffer("index", tokens.index.flatten())

    def forward(self, acts: Tensor, carried: list[Tensor]) -> Tensor:
        index = self.index
        assert isinstance(index, Tensor)  # a buffer (for mypy, which sees Tensor | Module)
        return self.tail(scatter_maps(acts, carried[-1], index), carried[:-1])


@contextmanager
def _quiet_script() -> Iterator[None]:
    """``quiet_deprecations``, and no notes on how torch.fx's generated modules annotate themselves."""
    with quiet_deprecations(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*instance-level annotations", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*list at the output of the tracer")
        yield


def _compile_part(module: nn.Module, example: tuple[Any, ...], what: str) -> torch.jit.ScriptModule:
    """``module`` as TorchScript: scripted, else traced on ``example``; ``ExportError`` naming ``what``."""
    with _quiet_script():
        try:
            return torch.jit.script(module)
        except Exception as e:  # TorchScript raises RuntimeError, NotSupportedError, ... on Python it cannot compile
            scripted = _first_line(e)
        try:
            with torch.no_grad():
                return torch.jit.trace(module, example, check_trace=False)
        except Exception as e:
            raise ExportError(f"cannot compile {what} to TorchScript: torch.jit.script failed ({scripted}) and "
                              f"torch.jit.trace failed ({_first_line(e)})") from None


def model_halves(model: nn.Module, layer: str, example: Tensor) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(``head``: images ``[n, 3, H, W]`` -> ``[A [n, K, h, w], *carried]``, ``tail``: ``(A, carried)`` ->
    logits ``[n, C]``) of ``model`` split at ``layer`` with torch.fx (eager modules; ``example`` one image
    batch, to check that the split reproduces the model)."""
    try:
        split = split_model(model, layer)
    except SplitError as e:
        raise ExportError(f"cannot split {kind(model)} at layer {layer!r} into the layers before and after it: "
                          f"{e}") from None
    head, tail = _list_head(split.head), _list_tail(tensor_output(split.tail), len(split.carried))
    with torch.no_grad():
        parts = head(example)
        got, want = tail(parts[0], parts[1:]), model_output(model(example))
    if not isinstance(want, Tensor) or got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4,
                                                                                        atol=1e-5):
        raise ExportError(f"the torch.fx split of {kind(model)} at layer {layer!r} does not reproduce the model's "
                          f"logits (Python-side decisions baked in by tracing)")
    return head, tail


# ---------------------------------------------------------------------------------------------
# the explainer module


M = TypeVar("M", bound=nn.Module)


class _AddmmLinear(nn.Module):
    """An ``nn.Linear`` whose 2-D case is ``addmm`` (what ``F.linear`` runs, the same bits): torch.export
    cannot differentiate through ``aten.linear`` (its backward lifts a fake parameter), through ``addmm`` it can."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and self.bias is not None:
            return torch.addmm(self.bias, x, self.weight.t())
        return F.linear(x, self.weight, self.bias)


def _exportable(module: M) -> M:
    """``module`` (the explainer's own half) with its ``nn.Linear`` layers as ``_AddmmLinear``, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, _AddmmLinear(child))
        else:
            _exportable(child)
    return module


class _IgnoreClasses(nn.Module):
    """A single expression's weights (``backend.export.python_module``) with the dispatch's signature."""

    def __init__(self, weights: nn.Module) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, classes: Tensor, grads: Tensor, pgrads: Tensor, cic: Tensor, abl: Tensor, mlogits: Tensor,
                acts: Tensor, G: Tensor, A: Tensor) -> Tensor:
        return self.weights(**{name: value for name, value in zip(WEIGHT_INPUTS, (grads, pgrads, cic, abl, mlogits,
                                                                                     acts, G, A))})


def _check_finite(values: Tensor, message: str) -> None:
    """Raise ``ValueError(message.format(i))`` for the first row ``i`` of ``values`` ``[N, ...]`` with a NaN or
    Inf (a TorchScript error: its last line is the message)."""
    bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        raise ValueError(message.format(int(bad.nonzero()[0, 0])))


def _check_targets(targets: Tensor, n_classes: int) -> None:
    """Raise ``ValueError`` for the first target class beyond the model's ``n_classes`` (negative ones: the
    predicted class)."""
    bad = targets >= n_classes
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"target class {int(targets[i])} of image {i} is out of range: the model has {n_classes} "
                         f"classes (a negative target explains the predicted class)")


class Explainer(nn.Module):
    """``forward(images [N, 3, H, W], targets [N] | None) -> heatmaps [N, H, W]`` in ``[0, 1]``.

    ``head`` / ``tail``: the model before / after the target layer (``model_halves``); ``weights``:
    ``forward(classes, grads, pgrads, cic, abl, mlogits, acts, G, A)`` -> W (``WEIGHT_INPUTS`` order;
    the terminals the method does not read get zero stand-ins); ``names``: the terminals to compute;
    ``chunk``: masked images / ablated copies per forward pass, as the engine's ``chunk_size``.
    Targets: the class to explain per image; None, or a negative entry, for the predicted class. Scripted, it
    checks as the engine does: ``ValueError`` for NaN or Inf images or logits and for a target beyond the
    model's classes, and ``warnings.warn`` (a C++ warning under libtorch) when the weights are NaN or Inf."""

    def __init__(self, head: nn.Module, tail: nn.Module, weights: nn.Module, names: list[str], vec: bool,
                 chunk: int = DEFAULT_CHUNK_SIZE, score: TargetScore | None = None) -> None:
        super().__init__()
        self.head, self.tail, self.weights = head, tail, weights
        self.score = score if score is not None else TargetScore()  # the target (explainer_target); targets: ids
        self.need_grad = needs_backward(names)
        self.need_cic = any(pass_of(n) == SCORECAM for n in names)
        self.need_abl = any(pass_of(n) == ABLATION for n in names)
        self.vec = vec
        self.chunk = int(chunk)

    def logits(self, x: Tensor) -> Tensor:
        """The model's logits ``[n, C]`` of images ``x`` ``[n, 3, H, W]``."""
        parts = self.head(x)
        return self.tail(parts[0], parts[1:])

    def forward(self, images: Tensor, targets: Tensor | None = None) -> Tensor:
        x = images
        n = x.shape[0]
        assert x.dim() == 4, "images must be [N, 3, H, W]"
        assert targets is None or (targets.dim() == 1 and targets.shape[0] == n), "targets must be class indices [N]"
        if torch.jit.is_scripting():  # data-dependent checks: torch.export cannot trace them
            _check_finite(x, "image {} has NaN or Inf values; the explainer needs finite images")
        # gradients even when called under torch.no_grad(); the caller's mode comes back below
        grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(self.need_grad)
        parts = self.head(x)
        acts = parts[0].detach().requires_grad_(self.need_grad)  # a leaf: dz_c/dA is one autograd.grad away
        logits = self.tail(acts.clone(), parts[1:])
        if torch.jit.is_scripting():  # as the engine's checks (cam.compute), so the file fails as explain does
            _check_finite(logits.detach(), "the model's logits have NaN or Inf values for image {}; check the "
                                            "model weights and the input images")
        predicted = logits.detach().argmax(dim=1)
        t = predicted
        state = self.score.prepare(logits.detach())
        if self.score.kind != 0:  # another kind than the class: the target is the file's own, t the images
            t = torch.arange(n, device=x.device)
        elif targets is not None:
            given = targets.to(device=x.device, dtype=torch.long)
            if torch.jit.is_scripting():
                _check_targets(given, logits.shape[1])
            t = torch.where(given < 0, predicted, given)
        k = acts.shape[1]
        zero_vec = x.new_zeros([1, 1]).expand(n, k)
        zero_map = x.new_zeros([1, 1, 1, 1]).expand(acts.shape)
        grads, pgrads, g = zero_vec, zero_vec, zero_map
        if self.need_grad:
            z = self.score.raw(logits, t, state).sum()
            found = torch.autograd.grad([z], [acts])[0]
            assert found is not None, "the logits do not depend on the target layer"
            g = found
            grads, pgrads = g.mean(dim=(2, 3)), torch.relu(g).mean(dim=(2, 3))
        torch.set_grad_enabled(grad_was)
        a = acts.detach()
        logits = logits.detach()
        cic, mlogits, abl = zero_vec, zero_vec, zero_vec
        if self.need_cic:
            cic, mlogits = self.cic(x, a, t, state)
        if self.need_abl:
            abl = self.abl(x, a, logits, t, state)
        w = self.weights(t, grads, pgrads, cic, abl, mlogits, a.mean(dim=(2, 3)), g.detach(), a)
        if torch.jit.is_scripting():  # the warning explain and the Python API give (metrics.diagnostics)
            bad = ~torch.isfinite(w.reshape(n, -1)).all(dim=1)
            if bool(bad.any()):
                warnings.warn(f"the expression: weights are NaN or Inf on {int(bad.sum())} of {n} images (their "
                              f"heatmaps are blank)", stacklevel=2)
        s = vec_saliency(w, a) if self.vec else map_saliency(w, a)
        return minmax_normalize(self.upsample(s, x.shape[2], x.shape[3])).detach()

    def upsample(self, s: Tensor, height: int, width: int) -> Tensor:
        """``template.upsampling.upsample``: ``[N, h, w]`` -> ``[N, H, W]`` as ``Ly @ S @ Lx.T``."""
        ly = linear_weights(s.shape[-2], height).to(device=s.device, dtype=s.dtype)
        lx = linear_weights(s.shape[-1], width).to(device=s.device, dtype=s.dtype)
        return ly @ s @ lx.T

    def cic(self, x: Tensor, a: Tensor, t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """(``cic`` ``[N, K]``, ``mlogits`` ``[N, K]``): ``cam.scorecam_pass`` at a fixed chunk size in fp32;
        ``state``: the target's, from the images' own outputs (a segmentation target's masks)."""
        n, k = a.shape[0], a.shape[1]
        with torch.no_grad():
            base = self.logits(torch.zeros_like(x[:1]))
            base = base.expand([n] + list(base.shape[1:]))
            base_z, base_y = self.score.raw(base, t, state), self.score.metric(base, t, state)
            masked_z = base_z[:, None].repeat(1, k)
            masked_y = base_y[:, None].repeat(1, k)
            flat = a.flatten(2)
            live = (flat.amax(dim=2) > flat.amin(dim=2)).nonzero()  # constant maps: the baseline's scores
            img, ch = live[:, 0], live[:, 1]
            rows = live.shape[0]
            z_live = x.new_empty([rows])
            y_live = x.new_empty([rows])
            for start in range(0, rows, self.chunk):
                end = min(start + self.chunk, rows)
                i, c = img[start:end], ch[start:end]
                up = F.interpolate(a[i, c][:, None], size=[x.shape[2], x.shape[3]], mode="bilinear",
                                   align_corners=False)
                masked = (x[i] * minmax_normalize(up)).contiguous(memory_format=torch.channels_last)
                out = self.logits(masked)
                z_live[start:end] = self.score.raw(out, t[i], state)
                y_live[start:end] = self.score.metric(out, t[i], state)
            masked_z[img, ch] = z_live
            masked_y[img, ch] = y_live
        return masked_y - base_y[:, None], masked_z

    def abl(self, x: Tensor, a: Tensor, logits: Tensor, t: Tensor, state: Tensor) -> Tensor:
        """``abl`` ``[N, K]``: ``cam.ablation_pass`` with the fx split, at a fixed chunk size in fp32, its
        batches laid out as the engine's (``ablation_layout``: ``c`` channels of each of ``B`` images)."""
        n, k = a.shape[0], a.shape[1]
        block, per = ablation_layout(n, k, self.chunk)
        with torch.no_grad():
            ablated = x.new_empty([n, k])
            slots = torch.arange(per, device=x.device)
            for s in range(0, n, block):
                xs, a_s, ts = x[s:s + block], a[s:s + block], t[s:s + block]
                g = xs.shape[0]
                carried = self.head(xs)[1:]  # per block, as the engine carries them
                images = torch.arange(g, device=x.device)
                for c0 in range(0, k, per):
                    m = min(per, k - c0)
                    o = slots[:m]
                    rows = a_s.unsqueeze(0).expand([m] + list(a_s.shape)).contiguous()  # [m, g, K, h, w]
                    # slot o of image b ablates channel c0 + o: row (o * g + b) * K + c0 + o of the maps
                    at = ((o[:, None] * g + images[None, :]) * k + (c0 + o)[:, None]).flatten()
                    rows.view(m * g * k, -1).index_fill_(0, at, 0.0)
                    rows_carried = [v.unsqueeze(0).expand([m] + list(v.shape)).contiguous().flatten(0, 1)
                                    for v in carried]
                    out = self.tail(rows.flatten(0, 1), rows_carried)
                    picked = self.score.raw(out, ts.repeat(m), state).view(m, g)
                    ablated[s:s + g, c0:c0 + m] = picked.transpose(0, 1)
            z_c = self.score.raw(logits, t, state)[:, None]
        return (z_c - ablated) / z_c


# ---------------------------------------------------------------------------------------------
# building and saving


def _prepare(model: nn.Module, layer: str | None) -> tuple[nn.Module, str]:
    """A float32 copy of ``model`` in eval mode (the explainer's own: the halves share its modules, so the
    caller's model keeps its mode and dtype) and the canonical layer name."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ExportError("the model is a TorchScript module, which torch.fx cannot split at a layer; load the Python "
                          "model (--model package.module:function) to export it")
    name, _ = resolve_layer(model, layer)
    module = float32_model(copy.deepcopy(model), copy_first=False).eval()
    return module, name


def build_explainer(model: nn.Module, layer: str | None, method: Method, example: Tensor,
                    chunk: int = DEFAULT_CHUNK_SIZE, script: bool = True, target: Target | None = None,
                    reshape: Reshape = "auto") -> nn.Module:
    """The explainer of ``method`` for ``model`` at ``layer`` (dotted path, None: the model's default):
    a ``torch.jit.ScriptModule`` (``script``), else the eager ``Explainer`` (for ``torch.export``).
    ``example``: images ``[n, 3, H, W]`` the model takes (a few; to check the split, trace a half
    that cannot be scripted, and check the result); ``target``: what it explains (``models.targets``; None:
    the class; a callable is refused). ``ExportError`` names the part that fails. A layer with token or
    channels-last output is read through ``reshape`` (``cam.reshape``), as the engine reads it."""
    score = target_score(target)
    if score.kind != 0 and not isinstance(method, Node):
        raise ExportError(f"a per-class result dispatches on classes; target {score.name} names none")
    module, name = _prepare(model, layer)
    access = layer_access(module, name, reshape)
    with torch.no_grad():  # the engine's own check of the layer (outputs [N, K, h, w], runs once), as terminals'
        access.forward(example[:1])
    names = method_terminals(method)
    halves = model_halves(module, name, example)
    head, tail = halves if access.tokens is None else (_MapsHead(halves[0], access.tokens),
                                                       _MapsTail(halves[1], access.tokens))
    weights: nn.Module
    if script:
        with torch.no_grad():
            parts = head(example)
        weights = compile_dispatch(*_dispatch_parts(method), WEIGHT_INPUTS)
        explainer = Explainer(_compile_part(head, (example,), f"the layers before {name!r} (the head)"),
                              _compile_part(tail, (parts[0], parts[1:]), f"the layers after {name!r} (the tail)"),
                              weights, names, method_type(method) == Type.VEC, chunk, score).eval()
        with _quiet_script():
            try:
                return torch.jit.script(explainer)
            except Exception as e:
                raise ExportError(f"cannot compile the explainer to TorchScript: {_first_line(e)}") from None
    if not isinstance(method, Node):
        raise ExportError("a per-class result goes into a TorchScript explainer only (drop --format export)")
    weights = _IgnoreClasses(python_module(method, WEIGHT_INPUTS))
    return Explainer(head, _exportable(tail), weights, names, method_type(method) == Type.VEC, chunk, score).eval()


def _dispatch_parts(method: Method) -> tuple[dict[int, Node], Node]:
    """(per-class expressions, fallback) of ``method``: one expression is a dispatch without classes
    (the generated code then is ``compile_torchscript``'s)."""
    return ({}, method) if isinstance(method, Node) else (method.per_class, method.fallback)


def manifest(method: Method, layer: str, model_name: str, names: list[str], target: str = "class") -> dict[str, Any]:
    """What the file holds, saved in it as ``sycam_dsl/explainer.json``."""
    return {"method": method_text(method), "per_class": not isinstance(method, Node), "layer": layer,
            "model": model_name, "terminals": names, "weights": str(method_type(method)), "target": target,
            "call": "explainer(images [N, 3, H, W], targets [N] or None) -> heatmaps [N, H, W]"}


def save_explainer(model: nn.Module, layer: str | None, method: Method, path: str | os.PathLike[str],
                   example: Tensor, model_name: str = "", chunk: int = DEFAULT_CHUNK_SIZE,
                   target: Target | None = None, reshape: Reshape = "auto") -> torch.jit.ScriptModule:
    """``build_explainer`` saved to ``path`` (``.pt``, for ``torch.jit.load``); the archive also holds
    ``sycam_dsl/explainer.json`` (``manifest``, with the target's name) and the weights' generated source."""
    explainer = build_explainer(model, layer, method, example, chunk, target=target, reshape=reshape)
    assert isinstance(explainer, torch.jit.ScriptModule)
    name, _ = resolve_layer(model, layer)
    source = generate_dispatch_source(*_dispatch_parts(method), WEIGHT_INPUTS)
    extra = {"sycam_dsl/explainer.json": json.dumps(manifest(method, name, model_name or kind(model),
                                                             method_terminals(method), target_score(target).name),
                                                    indent=2) + "\n",
             "sycam_dsl/weights.py": HELPERS_SRC + source}
    with quiet_deprecations():
        torch.jit.save(explainer, os.fspath(path), _extra_files=extra)
    return explainer


def export_explainer(model: nn.Module, layer: str | None, method: Method, path: str | os.PathLike[str],
                     example: Tensor, reshape: Reshape = "auto") -> torch.export.ExportedProgram:
    """The explainer as a ``torch.export`` program saved to ``path`` (``.pt2``): one expression that
    reads gradient terminals only (``GRADIENT_ONLY``; ScoreCAM's and ablation's loops depend on the
    data). Its inputs are ``(images [N, 3, H, W], targets [N])`` (a negative target: the predicted
    class); ``N`` is dynamic, ``H`` and ``W`` are the example's."""
    if not isinstance(method, Node):
        raise ExportError("a per-class result goes into a TorchScript explainer only (drop --format export)")
    extra = sorted(set(method_terminals(method)) - GRADIENT_ONLY)
    if extra:
        raise ExportError(f"the torch.export form handles gradient terminals only ({', '.join(sorted(GRADIENT_ONLY))});"
                          f" the expression reads {', '.join(extra)}: use the TorchScript form (.pt)")
    explainer = build_explainer(model, layer, method, example, script=False, reshape=reshape)
    targets = torch.full((example.shape[0],), -1, dtype=torch.long, device=example.device)
    batch = torch.export.Dim.AUTO
    with quiet_deprecations():
        try:
            program = torch.export.export(explainer, (example, targets), dynamic_shapes=({0: batch}, {0: batch}),
                                          strict=False)
        except Exception as e:
            raise ExportError(f"torch.export cannot export the explainer: {_first_line(e)}; use the TorchScript "
                              f"form (.pt)") from None
        torch.export.save(program, os.fspath(path))
    return program


def explainer_size(path: str | os.PathLike[str]) -> str:
    """The file's size as text (``12.3 MB``)."""
    return f"{Path(path).stat().st_size / 2**20:.1f} MB"
