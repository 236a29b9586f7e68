"""``SyCAM``: a synthesized method with pytorch-grad-cam's calling convention.

``with SyCAM(model, target_layer, method) as cam: heatmaps = cam(images, targets)``. Each call runs
the CAM engine (``cam.compute.compute_terminals``, then ``evaluate`` and ``template.heatmaps``),
so the heatmaps are exactly ``sycam-dsl explain``'s and the search's. The engine registers its
hooks for one computation and removes them on every exit (exceptions included), so no hook
outlives a call; leaving the ``with`` block closes the object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from ..cam.compute import DEFAULT_CHUNK_SIZE, compute_terminals
from ..cam.reshape import Reshape, check_reshape
from ..cam.store import default_cache_dir
from ..evaluate import Terminals, evaluate
from ..lang.ast import Node, to_sexpr
from ..metrics.diagnostics import nonfinite_weights
from ..models.layers import resolve_layer
from ..models.loaded import LoadedModel
from ..models.precision import DEFAULT_PRECISION
from ..models.runtime import DEFAULT_RUNTIME, RuntimeSpec
from ..models.targets import CallableTarget, Target, gradcam_targets, is_class_index
from ..template.heatmaps import heatmaps
from .method import Method, MethodError, load_method, method_terminals

log = logging.getLogger(__name__)

Targets = None | int | Sequence[int] | torch.Tensor | Target | Callable | Sequence[Callable[[torch.Tensor], Any]]


def method_heatmaps(method: Method, terms: Terminals, acts: torch.Tensor, classes: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
    """Heatmaps ``[N, H, W]`` of ``method`` from terminals and activations ``acts`` ``[N, K, h, w]``; a
    dispatch gives each image the expression of its class (``classes`` ``[N]``, the explained ones)."""
    if isinstance(method, Node):
        return heatmaps(checked_weights(method, terms), acts, method.type, size)
    out = acts.new_zeros((acts.shape[0], *size))
    for node, idx in method.groups(classes).items():
        idx = idx.to(acts.device)
        out[idx] = heatmaps(checked_weights(node, terms.subset(idx)), acts[idx], node.type, size)
    return out


def checked_weights(node: Node, terms: Terminals) -> torch.Tensor:
    """``evaluate(node, terms)``, with ``explain``'s warning (``metrics.diagnostics``) logged when some images'
    weights are NaN or Inf (an expression that overflows): their heatmaps are blank."""
    weights = evaluate(node, terms)
    for line in nonfinite_weights(to_sexpr(node), weights)[1]:
        log.warning("%s", line)
    return weights


def check_model(model: Any) -> nn.Module:
    """``model`` when it is an ``nn.Module``; else ``MethodError`` saying how to get one."""
    if isinstance(model, nn.Module):
        return model
    hint = f": load it with sycam_dsl.models.load_model({model!r}).module" if isinstance(model, str) else ""
    raise MethodError(f"model must be a torch.nn.Module (or a LoadedModel), got {type(model).__name__}{hint}")


def layer_name(model: nn.Module, target_layer: nn.Module | str | Sequence[nn.Module] | None) -> str:
    """The dotted name of ``target_layer`` in ``model``: a module of it (or grad-cam's list of one), a
    dotted path, or None for the model's default."""
    if isinstance(target_layer, (list, tuple)):
        if len(target_layer) != 1:
            raise MethodError(f"SyCAM explains one target layer, got a list of {len(target_layer)}")
        target_layer = target_layer[0]
    if isinstance(target_layer, nn.Module):
        for name, module in model.named_modules():
            if module is target_layer and name:
                return name
        raise MethodError(f"target layer {type(target_layer).__name__} is not a submodule of the model")
    if target_layer is not None and not isinstance(target_layer, str):
        raise MethodError(f"target_layer must be a module, a dotted name or None, got {type(target_layer).__name__}")
    return resolve_layer(model, target_layer)[0]


def _class_of(target: Callable[[torch.Tensor], Any], n_classes: int, device: torch.device) -> int:
    """The class a grad-cam-style target explains: its ``category`` (``ClassifierOutputTarget``), else
    the one-hot logit row it scores highest (``ClassifierOutputSoftmaxTarget`` and the like)."""
    category = getattr(target, "category", None)
    if isinstance(category, int):
        return category
    outs = [torch.as_tensor(target(row)) for row in torch.eye(n_classes, device=device)]
    if any(out.numel() != 1 for out in outs):  # RawScoresOutputTarget and the like: the whole output row
        raise MethodError(f"target {type(target).__name__} gives {outs[0].numel()} scores, not one class logit; "
                          f"SyCAM explains one class per image: pass class indices or ClassifierOutputTarget(c)")
    scores = torch.stack([out.reshape(()).float() for out in outs])
    best = scores.argmax()
    if int((scores == scores[best]).sum()) != 1:
        raise MethodError(f"target {type(target).__name__} does not single out one class; SyCAM explains one class "
                          f"logit per image: pass class indices or ClassifierOutputTarget(c)")
    return int(best)


def resolve_targets(targets: Targets, model: nn.Module, images: torch.Tensor) -> torch.Tensor | Target | None:
    """``targets`` as class indices ``[N]`` on the images' device (None: the predicted classes), or a
    ``Target`` (``models.targets``: one given, one callable from the output ``[B, ...]`` to ``[B]``
    scores, or grad-cam's ``SemanticSegmentationTarget`` per image)."""
    n, dev = images.shape[0], images.device
    if targets is None or isinstance(targets, Target):
        return targets
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return CallableTarget(targets)
    if isinstance(targets, int) and not isinstance(targets, bool):
        return torch.full((n,), targets, dtype=torch.long, device=dev)
    if isinstance(targets, torch.Tensor):
        return targets.to(dev)
    if isinstance(targets, (bool, str, bytes)) or not isinstance(targets, Sequence):
        hint = "; map class names to their indices first" if isinstance(targets, str) else ""
        raise MethodError(f"targets must be None, a class index, class indices or grad-cam targets, got "
                          f"{type(targets).__name__}{hint}")
    items: list[Any] = list(targets)
    if items and all(callable(t) for t in items):
        if len(items) != n:
            raise MethodError(f"{len(items)} targets for {n} images")
        known = gradcam_targets(items)
        if known is not None:
            return known.to(dev) if isinstance(known, torch.Tensor) else known
        n_classes = 0
        if not all(isinstance(getattr(t, "category", None), int) for t in items):
            with torch.no_grad():
                n_classes = int(model(images[:1]).shape[1])
        return torch.tensor([_class_of(t, n_classes, dev) for t in items], dtype=torch.long, device=dev)
    odd = next((t for t in items if not is_class_index(t)), None)
    if odd is not None:  # e.g. class names: torch.as_tensor would say "too many dimensions 'str'"
        hint = "; map class names to their indices first" if isinstance(odd, str) else ""
        raise MethodError(f"targets must be class indices (ints) or grad-cam targets, got {type(odd).__name__} "
                          f"{str(odd)[:40]!r}{hint}")
    return torch.as_tensor([int(t) for t in items], dtype=torch.long, device=dev)


class SyCAM:
    """A synthesized CAM method on ``model`` (an ``nn.Module`` or a ``LoadedModel``) at ``target_layer``
    (a module, grad-cam's ``[module]``, a dotted name, or None for the model's default), grad-cam style.

    ``method``: an s-expression, a ``Node``, a ``Dispatch``, or a search's output folder / result.json
    (a per-class result dispatches on each image's target class; ``member``: of a search over several
    metrics, that front member, a number or ``knee``, the default). ``chunk_size``, ``ablation``, ``precision``
    and ``runtime`` are the engine's (``compute_terminals``; ``runtime``: ``auto``, the default, runs the
    forward-only passes of ``cic`` and ``abl`` on the fastest of torch, ONNX Runtime and OpenVINO that
    converts the model, kept converted in ``cache_dir``, default the terminal store's folder);
    ``reshape_transform``: how a target layer with token or channels-last output (a vision transformer)
    is read as ``[N, C, h, w]``: ``auto`` (the default; convolutional layers are read as they are),
    ``none``, or a callable such as grad-cam's ``reshape_transform`` (``cam.reshape``).
    ``cam(images [N, 3, H, W], targets=None)`` returns heatmaps
    ``[N, H, W]`` in ``[0, 1]`` on the images' device (the model is moved there); ``targets``: None
    (the predicted classes), a class index for all images, ``[N]`` class indices (list or tensor),
    ``N`` grad-cam targets (``ClassifierOutputTarget(c)``: the class whose logit is explained;
    ``SemanticSegmentationTarget(c, mask)``), a ``models.targets`` target (``parse_target("classes:3,7")``)
    or one callable from the model's output ``[B, ...]`` to ``[B]`` scores (docs/cam-engine.md#targets). Images whose
    weights are NaN or Inf (an expression that overflows) get blank heatmaps and ``explain``'s warning (logged)."""

    def __init__(self, model: nn.Module | LoadedModel, target_layer: nn.Module | str | Sequence[nn.Module] | None,
                 method: Method | str | Path, chunk_size: int | str = DEFAULT_CHUNK_SIZE,
                 ablation: str = "auto", member: int | str | None = None, *, precision: str = DEFAULT_PRECISION,
                 runtime: str = DEFAULT_RUNTIME, cache_dir: str | Path | None = None,
                 reshape_transform: Reshape = "auto") -> None:
        if isinstance(model, LoadedModel):  # its default layer, when none is named
            target_layer = target_layer if target_layer is not None else model.target_layer
            model = model.module
        self.model = check_model(model)
        self.layer = layer_name(model, target_layer)
        self.method = load_method(method, member=member)
        self.names = method_terminals(self.method)
        self.chunk_size, self.ablation = chunk_size, ablation
        self.reshape = check_reshape(reshape_transform)
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.runtime = RuntimeSpec(runtime, precision, folder)
        self.closed = False

    def __call__(self, images: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        if self.closed:
            raise MethodError("this SyCAM was closed (its with block ended); create a new one")
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            what = f"shape {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise MethodError(f"images must be a tensor [N, 3, H, W], got {what}")
        t = resolve_targets(targets, self.model, images)
        if isinstance(t, Target) and not t.is_class and not isinstance(self.method, Node):
            raise MethodError(f"a per-class method dispatches on classes; target {t.name} names none: "
                              f"pass class targets")
        terms, info = compute_terminals(self.model, self.layer, images, t, self.names, device=images.device,
                                        chunk_size=self.chunk_size, progress=False, ablation=self.ablation,
                                        precision=self.runtime.precision, runtime=self.runtime,
                                        reshape=self.reshape)
        return method_heatmaps(self.method, terms, info.acts, info.targets, (images.shape[2], images.shape[3]))

    def close(self) -> None:
        """End this object's use (the engine's hooks are gone already: they live for one call)."""
        self.closed = True

    def __enter__(self) -> SyCAM:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
