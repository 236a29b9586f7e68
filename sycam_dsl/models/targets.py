"""Targets (docs/cam-engine.md#targets): what a CAM explains and a metric scores, from the model's output.

A target maps the model's output (logits ``[B, C]``, a segmentation model's ``[B, C, H, W]``; a
dict's ``'out'``, as torchvision's segmentation models return) to one score per image, two ways:
``raw`` is what the gradients, ``cic`` and ``abl`` read (a class's logit) and ``metric`` what the
metrics score (a class's softmax probability; for the other kinds the raw score, as pytorch-grad-cam's
metrics apply the target to the output). Scores depend on per-image state fixed from the unperturbed
images' outputs (the class, a segmentation mask): ``bind`` gives the target holding that state and
each image's ``ids`` ``[N]`` (long), which the engine and the metrics carry as their ``targets``
(rows of masked or perturbed copies of an image carry its id). For the default, ``ClassTarget``,
the ids are the class indices themselves, as before targets had kinds.

Kinds (``parse_target``): ``class`` (the predicted class unless classes are given), ``classes:3,7``
(the sum of several logits: multi-label), ``output:I`` (regression output ``I``), ``segmentation:C``
(the sum of class ``C``'s logits over the pixels the model assigns to ``C`` in the unperturbed image,
grad-cam's ``SemanticSegmentationTarget``, or over given masks: ``with_masks``) and ``module:function``
(a callable from the output ``[B, ...]`` to ``[B]`` scores). ``gradcam_targets`` reads grad-cam's
per-image target objects and ``as_target`` everything the API takes.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import SycamError
from ..util.imports import import_attr
from ..util.text import comma_list, first_line
from .errors import TargetError

#: The default target's name (``Target.name``), which the terminal store's keys leave out.
CLASS = "class"


def model_output(out: Any) -> Any:
    """The tensor of a model's output: a dict's ``'out'`` (torchvision segmentation models), else ``out``."""
    if isinstance(out, dict) and isinstance(out.get("out"), torch.Tensor):
        return out["out"]
    return out


def _shape(output: torch.Tensor) -> str:
    return "x".join(str(d) for d in output.shape)


class Target:
    """One score per image from the model's output; the default implementations fit targets with no
    per-image state."""

    #: ``class``, ``classes:3,7``, ``output:2``, ``segmentation:1``, ``callable:NAME`` (result.json, store keys).
    name: str = CLASS
    #: Whether the terminal store may keep values for this target (a callable's code is not in its key).
    cacheable: bool = True
    #: Whether scores depend on per-image state (a segmentation mask, a grad-cam target per image), so a
    #: row must be scored as its image's (``ids``); a target without it scores any row alike.
    per_image: bool = False

    @property
    def is_class(self) -> bool:
        """Whether this is the default, one class logit per image (``ids`` are the classes)."""
        return False

    def check(self, output: torch.Tensor) -> None:
        """Raise ``TargetError`` (one line) unless the output ``[B, ...]`` fits this target."""

    def select(self, index: Sequence[int]) -> Target:
        """This target for the images at positions ``index`` only (a target per image keeps theirs)."""
        return self

    def cpu(self) -> Target:
        """This target with its tensors on the CPU (to send to a worker process that may have no GPU)."""
        return self

    def check_images(self, n: int) -> None:
        """Raise ``TargetError`` unless this target can explain ``n`` images (one per image: ``n`` of them)."""

    def bind(self, output: torch.Tensor, ids: torch.Tensor | None = None) -> tuple[Target, torch.Tensor]:
        """(this target with the state of the unperturbed outputs ``[N, ...]``, each image's id ``[N]``)."""
        self.check(output)
        return self, torch.zeros(output.shape[0], dtype=torch.long, device=output.device)

    def raw(self, output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``[B]`` scores the gradients, ``cic`` and ``abl`` read, of rows ``ids`` ``[B]``."""
        raise NotImplementedError

    def metric(self, output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``[B]`` scores the metrics read (the raw score unless a kind says otherwise)."""
        return self.raw(output, ids)


class ClassTarget(Target):
    """One class logit per image: ``ids`` are the classes (the predicted class unless given)."""

    @property
    def is_class(self) -> bool:
        return True

    def check(self, output: torch.Tensor) -> None:
        if output.dim() != 2:
            raise TargetError(f"a class target needs logits [N, classes], but the model returns {_shape(output)}; "
                              f"pick another --target (segmentation:C, output:I, module:function)")

    def bind(self, output: torch.Tensor, ids: torch.Tensor | None = None) -> tuple[Target, torch.Tensor]:
        self.check(output)
        return self, output.argmax(dim=1) if ids is None else ids

    def raw(self, output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return output.gather(1, ids[:, None])[:, 0]

    def metric(self, output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=1).gather(1, ids[:, None])[:, 0]


def _check_indices(output: torch.Tensor, indices: Sequence[int], what: str, dims: int, kind: str) -> None:
    """``output`` has ``dims`` dimensions and every index (a ``what``) is one of its dimension 1's."""
    if output.dim() != dims:
        need = "[N, outputs]" if dims == 2 else "spatial output [N, classes, H, W]"
        raise TargetError(f"a {kind} target needs {need}, but the model returns {_shape(output)}")
    bad = [i for i in indices if not 0 <= i < output.shape[1]]
    if bad:
        raise TargetError(f"{what} {bad[0]} does not exist: the model has {output.shape[1]} outputs "
                          f"(0..{output.shape[1] - 1})")


class ClassesTarget(Target):
    """The sum of several classes' logits (multi-label)."""

    def __init__(self, classes: Sequence[int]) -> None:
        self.classes = tuple(int(c) for c in classes)
        self.name = "classes:" + ",".join(map(str, self.classes))

    def check(self, output: torch.Tensor) -> None:
        _check_indices(output, self.classes, "class", 2, "classes")

    def raw(self, output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return output[:, list(self.classes)].sum(dim=1)


class OutputTarget(Target):
    """One output of a regression model."""

    def __init__(self, index: int) -> None:
        self.index = int(index)
        self.name = f"output:{self.index}"

    def check(self, output: torch.Tensor) -> None:
        _check_indices(output, [self.index], "output", 2, "output")

    def raw(self, output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return output[:, self.index]


class SegmentationTarget(Target):
    """The sum of class ``category``'s logits ``[B, C, H, W]`` over the pixels of its mask, fixed by ``bind``
    (``masks`` ``[N, H, W]``): the pixels the unperturbed image's output assigns to it (argmax), or the
    ``given`` masks ``[N, h, w]`` (``--masks``, resized to the output's size). ``positions``: the images'
    indices in the whole set, which a target that is empty on an image names."""

    def __init__(self, category: int, masks: torch.Tensor | None = None, given: torch.Tensor | None = None,
                 positions: Sequence[int] | None = None) -> None:
        self.category, self.masks, self.given = int(category), masks, given
        self.positions = list(positions) if positions is not None else None
        self.name = f"segmentation:{self.category}"
        self.per_image = True
        # given masks are not in the store's keys (they hold the target's name only)
        self.cacheable = given is None

    def with_masks(self, given: torch.Tensor) -> SegmentationTarget:
        """This target over the ``given`` masks ``[N, h, w]`` instead of the predicted pixels."""
        return SegmentationTarget(self.category, None, given.bool(), self.positions)

    def check(self, output: torch.Tensor) -> None:
        _check_indices(output, [self.category], "class", 4, "segmentation")

    def check_images(self, n: int) -> None:
        if self.given is not None and self.given.shape[0] != n:
            raise TargetError(f"{self.given.shape[0]} segmentation masks for {n} images; give one per image")

    def select(self, index: Sequence[int]) -> Target:
        index = list(index)
        positions = [self.positions[i] for i in index] if self.positions is not None else index
        given = self.given[index] if self.given is not None else None
        return SegmentationTarget(self.category, None, given, positions)

    def cpu(self) -> Target:
        def on_cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.cpu()

        return SegmentationTarget(self.category, on_cpu(self.masks), on_cpu(self.given), self.positions)

    def bind(self, output: torch.Tensor, ids: torch.Tensor | None = None) -> tuple[Target, torch.Tensor]:
        self.check(output)
        if self.given is not None:
            self.check_images(output.shape[0])
            given = self.given.to(output.device, torch.float32)[:, None]
            masks = torch.nn.functional.interpolate(given, size=output.shape[-2:], mode="nearest")[:, 0]
        else:
            masks = (output.detach().argmax(dim=1) == self.category).to(output.dtype)
        self._check_not_empty(masks)
        bound = SegmentationTarget(self.category, masks.to(output.dtype), self.given, self.positions)
        return bound, torch.arange(output.shape[0], device=output.device)

    def _check_not_empty(self, masks: torch.Tensor) -> None:
        """``TargetError`` naming the images whose mask ``[N, H, W]`` has no pixel: their score is 0 for any
        input, so they have no gradient, and ``cic`` and ``abl`` divide by it."""
        empty = (masks.flatten(1).sum(dim=1) == 0).nonzero()[:, 0].tolist()
        if not empty:
            return
        where = [self.positions[i] if self.positions is not None else i for i in empty]
        which = ", ".join(map(str, where[:5])) + (", ..." if len(where) > 5 else "")
        if self.given is not None:
            source, fix = "the given mask has no pixel", "leave the image out or give it a mask with pixels"
        else:
            source = f"the model assigns none of its pixels to class {self.category}"
            fix = "leave the image out, pick a class it shows, or give masks (--masks)"
        raise TargetError(f"target {self.name} is empty on image {which}: {source}, so there is nothing to "
                          f"explain; {fix}")

    def raw(self, output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        assert self.masks is not None, "bind first"
        masks = self.masks.to(output.device).index_select(0, ids.to(output.device))
        return (output[:, self.category] * masks.to(output.dtype)).sum(dim=(1, 2))


def _user_call(fn: Callable[[Any], Any], arg: Any, what: str) -> Any:
    """``fn(arg)`` for a user's target callable: an error in it is one ``TargetError`` line."""
    try:
        return fn(arg)
    except (SycamError, torch.OutOfMemoryError):
        raise
    except Exception as e:  # the user's code: IndexError, a device mismatch, ...
        raise TargetError(f"target {what} fails on the model's output ({first_line(e, with_type=True)})") from None


def _scores(got: Any, n: int, what: str) -> torch.Tensor:
    """A callable's result as ``[n]`` scores, or ``TargetError``."""
    if not isinstance(got, torch.Tensor) or got.dim() > 1 or got.numel() != n:
        shape = _shape(got) if isinstance(got, torch.Tensor) else type(got).__name__
        raise TargetError(f"target {what} must return one score per image ([{n}]), got {shape or 'a scalar'}")
    return got.reshape(n)


class CallableTarget(Target):
    """A callable from the output ``[B, ...]`` to ``[B]`` scores."""

    cacheable = False

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None) -> None:
        self.fn = fn
        self.name = f"callable:{name or getattr(fn, '__qualname__', type(fn).__name__)}"

    def raw(self, output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        what = self.name.removeprefix("callable:")
        return _scores(_user_call(self.fn, output, what), output.shape[0], what)


class PerImageTarget(Target):
    """One grad-cam-style target per image (``SemanticSegmentationTarget(c, mask)``, say): each
    maps one image's output ``[...]`` to a scalar; ``ids`` are the images' positions."""

    cacheable = False
    per_image = True

    def __init__(self, targets: Sequence[Callable[[torch.Tensor], Any]]) -> None:
        self.targets = list(targets)
        self.name = f"callable:{type(self.targets[0]).__name__}" if self.targets else "callable:none"

    def select(self, index: Sequence[int]) -> Target:
        return PerImageTarget([self.targets[i] for i in index])

    def check_images(self, n: int) -> None:
        if len(self.targets) != n:
            raise TargetError(f"{len(self.targets)} targets for {n} images; give one per image")

    def bind(self, output: torch.Tensor, ids: torch.Tensor | None = None) -> tuple[Target, torch.Tensor]:
        if output.shape[0] != len(self.targets):
            raise TargetError(f"{len(self.targets)} targets for {output.shape[0]} images")
        return self, torch.arange(output.shape[0], device=output.device)

    def raw(self, output: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        what = self.name.removeprefix("callable:")
        return torch.cat([_scores(torch.as_tensor(_user_call(self.targets[int(i)], row, what)), 1, what)
                          for i, row in zip(ids.tolist(), output)])


def _ints(text: str, spec: str) -> list[int]:
    try:
        out = [int(p) for p in comma_list(text)]
    except ValueError:
        out = []
    if not out or any(i < 0 for i in out):
        raise TargetError(f"target {spec!r}: expected non-negative integers after the colon, e.g. classes:3,7")
    return out


def _callable(spec: str) -> Target:
    module, _, attr = spec.partition(":")
    try:
        fn = import_attr(spec)
    except Exception as e:  # ImportError, AttributeError, or whatever the module raises on import
        raise TargetError(f"target {spec!r}: cannot import {attr!r} from {module!r} ({first_line(e)})") from None
    if not callable(fn):
        raise TargetError(f"target {spec!r} is not callable")
    return CallableTarget(fn, spec)


def parse_target(spec: str) -> Target | torch.Tensor:
    """``class`` / ``predicted``, a class index (``3``: a tensor of it, for every image), ``classes:3,7``,
    ``output:I``, ``segmentation:C`` or ``module:function`` as a target."""
    text = spec.strip()
    kind, _, rest = text.partition(":")
    if text in (CLASS, "predicted"):
        return ClassTarget()
    if text.isdigit():
        return torch.tensor(int(text))
    if kind == "classes":
        return ClassesTarget(_ints(rest, text))
    if kind in ("output", "segmentation"):
        index = _ints(rest, text)
        if len(index) != 1:
            raise TargetError(f"target {text!r}: {kind} takes one index, e.g. {kind}:1")
        return OutputTarget(index[0]) if kind == "output" else SegmentationTarget(index[0])
    if rest and kind:
        return _callable(text)
    raise TargetError(f"unknown target {spec!r}; use class, an index, classes:3,7, output:I, segmentation:C "
                      f"or module:function")


def is_class_index(t: Any) -> bool:
    """Whether ``t`` is one class index: an integer (Python, NumPy) or a one-element integer tensor."""
    if isinstance(t, torch.Tensor):
        return t.numel() == 1 and not t.is_floating_point() and t.dtype != torch.bool
    return isinstance(t, numbers.Integral) and not isinstance(t, bool)


def gradcam_targets(items: Sequence[Any]) -> Target | torch.Tensor | None:
    """Grad-cam's per-image target objects as a target: ``SemanticSegmentationTarget(c, mask)`` (anything
    with a ``mask``) as a ``PerImageTarget``, ``ClassifierOutputTarget(c)`` and the others with an integer
    ``category`` as class indices ``[N]``; None for other callables (a caller may probe them)."""
    if items and all(callable(t) and hasattr(t, "mask") for t in items):
        return PerImageTarget(items)
    if items and all(callable(t) and isinstance(getattr(t, "category", None), int) for t in items):
        return torch.tensor([t.category for t in items], dtype=torch.long)
    return None


def as_target(value: Any) -> Target | torch.Tensor | None:
    """What ``DataOptions(targets=)`` and ``synthesize`` take, as a ``Target``, class indices ``[N]`` or
    None (the predicted classes): a ``Target``, a spec (``parse_target``), one callable from the output
    ``[B, ...]`` to ``[B]`` scores, class indices (a tensor or a list) or grad-cam's per-image targets
    (``gradcam_targets``); ``TargetError`` for anything else."""
    if value is None or isinstance(value, (Target, torch.Tensor)):
        return value
    if isinstance(value, str):
        return parse_target(value)
    if callable(value):
        return CallableTarget(value)
    if isinstance(value, Sequence) and value and all(is_class_index(t) for t in value):
        return torch.tensor([int(t) for t in value], dtype=torch.long)
    got = gradcam_targets(list(value)) if isinstance(value, Sequence) else None
    if got is None:
        raise TargetError(f"targets must be class indices, a target spec (classes:3,7, output:I, segmentation:C), "
                          f"one callable or grad-cam targets, got {type(value).__name__}")
    return got


def target_name(target: Target | torch.Tensor | None) -> str:
    """How ``result.json`` and the explainer file name a target: ``class`` for class indices or None."""
    return target.name if isinstance(target, Target) else CLASS
