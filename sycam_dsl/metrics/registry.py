"""Metrics by name: the built-in ones and any a user registers from Python.

A metric is a function ``fn(inputs: MetricInputs, **options) -> Tensor`` of per-image scores
``[N]`` (or ``[C, N]`` when ``inputs.heatmaps`` is ``[C, N, H, W]`` and the metric is
``batched``) plus a direction. Register your own without editing the package::

    from sycam_dsl.metrics import register_metric

    def centre_mass(inputs):                       # inputs.heatmaps: [N, H, W]
        h = inputs.heatmaps
        return h[..., 8:-8, 8:-8].sum(dim=(-2, -1)) / h.sum(dim=(-2, -1)).clamp_min(1e-12)

    register_metric("centre_mass", centre_mass, higher_is_better=True)

A metric that is not ``batched`` gets one candidate's ``[N, H, W]`` heatmaps at a time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..models.batching import AUTO
from ..models.precision import DEFAULT_PRECISION
from ..models.runtime import RuntimeModule, RuntimeSpec, forward_module
from ..models.targets import Target
from .errors import MetricError
from .scoring import DEFAULT_BATCH_SIZE, Device, plan_forward

MetricFn = Callable[..., torch.Tensor]
BoundsFn = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class MetricInputs:
    """What a metric may look at, for ``N`` images.

    ``images`` ``[N, 3, H, W]`` in the model's normalized input space; ``targets`` ``[N]`` class
    indices; ``heatmaps`` ``H`` ``[N, H, W]`` or ``[C, N, H, W]`` in ``[0, 1]``; ``saliency`` ``S``
    at the target layer's resolution ``[N, h, w]`` / ``[C, N, h, w]``; ``masks`` ``[N, H, W]`` bool.
    ``cache`` holds values that do not depend on the heatmaps (such as ``y_c(x)``), shared by the
    copies ``with_heatmaps`` makes, so scoring many candidates computes them once. ``image_ids``
    ``[N]`` name the images across subsets (default ``0..N-1``); ``memo``, a
    ``metrics.memo.ScoreCache`` shared by every subset, memoizes Deletion / Insertion scores.
    ``batch_size``: images per forward pass, or ``"auto"`` (picked once, here, by
    ``scoring.plan_forward``); ``precision``: fp32, bf16 or fp16 forward passes; ``channels_last``:
    channels-last batches, None to let ``plan_forward`` decide (on for convolutional models with
    ``"auto"`` or a lower precision, whose bits differ anyway; off for fp32 at a fixed batch size);
    ``runtime``: where the forward passes run (``models.runtime``: the model is replaced by what
    ``forward_module`` gives, once; None: torch); ``progress``: print the conversion line; ``target``:
    a bound target of another kind than the class (``models.targets``; ``targets`` are then its ids)."""

    images: torch.Tensor
    targets: torch.Tensor
    heatmaps: torch.Tensor | None = None
    saliency: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    model: nn.Module | None = None
    device: Device = "cpu"
    batch_size: int | str = DEFAULT_BATCH_SIZE
    cache: dict[str, Any] = field(default_factory=dict)
    image_ids: torch.Tensor | None = None
    memo: Any = None
    precision: str = DEFAULT_PRECISION
    channels_last: bool | None = None
    runtime: RuntimeSpec | None = None
    progress: bool = False
    target: Target | None = None

    def __post_init__(self) -> None:
        if self.image_ids is None:
            self.image_ids = torch.arange(self.images.shape[0])
        # the model's forward passes move to the runtime once: copies carry the converted model
        if self.model is not None and self.runtime is not None and not isinstance(self.model, RuntimeModule):
            spec = replace(self.runtime, precision=self.precision)
            self.model = forward_module(self.model, [self.images[:1].to(self.device)], spec, show=self.progress)
        # decided once: copies (with_heatmaps, subset) carry the decision
        if self.model is not None and (self.batch_size == AUTO or self.channels_last is None):
            size, channels_last = plan_forward(self.model, self.images, self.device, self.batch_size, self.precision)
            self.batch_size = size
            self.channels_last = channels_last if self.channels_last is None else self.channels_last
        if self.channels_last is None:
            self.channels_last = False

    @property
    def forward_options(self) -> dict[str, Any]:
        """``precision``, ``channels_last`` and ``target`` (when not the class), as the keywords of
        ``scores_of`` and the metrics."""
        out: dict[str, Any] = {"precision": self.precision, "channels_last": bool(self.channels_last)}
        if self.target is not None:
            out["target"] = self.target
        return out

    def with_heatmaps(self, heatmaps: torch.Tensor | None, saliency: torch.Tensor | None = None) -> MetricInputs:
        """The same images, model and cache with another candidate's ``H`` (and ``S``)."""
        return replace(self, heatmaps=heatmaps, saliency=saliency)

    def subset(self, index: torch.Tensor) -> MetricInputs:
        """The inputs of the images at ``index`` (``[n]`` long), with a fresh cache of their own."""
        idx = index.to(self.images.device)
        pick = (lambda t: None if t is None else t.index_select(0, index.to(t.device)))
        assert self.image_ids is not None  # set by __post_init__
        return replace(self, images=self.images.index_select(0, idx),
                       targets=self.targets.index_select(0, index.to(self.targets.device)),
                       heatmaps=None, saliency=None, masks=pick(self.masks), cache={},
                       image_ids=self.image_ids.index_select(0, index.to(self.image_ids.device).long()))

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


@dataclass(frozen=True)
class MetricResult:
    """Per-image scores ``[N]`` (``[C, N]`` for batched candidates) and their mean over images."""

    name: str
    per_image: torch.Tensor
    higher_is_better: bool

    @property
    def mean(self) -> torch.Tensor:
        """Mean over images: a 0-dim tensor, or ``[C]`` for batched candidates."""
        return self.per_image.mean(dim=-1)


@dataclass(frozen=True)
class Metric:
    """A named metric: ``fn(inputs, **options)`` gives per-image scores; ``higher_is_better`` its
    direction. ``needs_*`` say which ``MetricInputs`` fields must be set."""

    name: str
    fn: MetricFn
    higher_is_better: bool
    needs_model: bool = False
    needs_masks: bool = False
    needs_saliency: bool = False
    batched: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""
    bounds: BoundsFn | None = None
    needs_heatmaps: bool = True

    def check_target(self, target: Target | None) -> None:
        """Raise a one-line ``MetricError`` when this metric cannot score ``target`` (None: the class), so
        that the run refuses it before any work; the built-in metrics score any target."""

    def score_bounds(self, inputs: MetricInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The lowest and highest score each image can get, ``([N], [N])``, or None when unknown
        (the oracle then stops a losing candidate early only by counting images)."""
        return None if self.bounds is None else self.bounds(inputs, **self.options)

    @property
    def option_names(self) -> tuple[str, ...]:
        """Keyword options ``fn`` accepts besides ``inputs``."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))

    def with_options(self, **options: Any) -> Metric:
        """This metric with ``options`` bound (e.g. ``steps=10`` for deletion)."""
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            known = ", ".join(self.option_names) or "none"
            raise MetricError(f"metric {self.name!r} has no option {', '.join(unknown)} (options: {known})")
        return replace(self, options={**self.options, **options})

    def scores(self, inputs: MetricInputs) -> torch.Tensor:
        """Per-image scores ``[N]`` or ``[C, N]`` of ``inputs``' heatmaps (``self(inputs).per_image``)."""
        return self(inputs).per_image

    def better(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Where score ``a`` is strictly better than ``b`` (element-wise bool)."""
        return a > b if self.higher_is_better else a < b

    def __call__(self, inputs: MetricInputs) -> MetricResult:
        """Score ``inputs.heatmaps`` (or only ``inputs.saliency``, for a metric that does not
        ``needs_heatmaps``); per-image scores ``[N]`` or ``[C, N]``."""
        self._check(inputs)
        h, s = inputs.heatmaps, inputs.saliency
        ref = h if h is not None else s
        assert ref is not None  # _check: heatmaps, or saliency for a metric that can do without them
        if ref.dim() == 4 and not self.batched:
            pick = (lambda t, c: None if t is None else t[c])  # noqa: E731
            parts = [self._score(inputs.with_heatmaps(pick(h, c), pick(s, c))) for c in range(ref.shape[0])]
            scores = torch.stack(parts)
        else:
            scores = self._score(inputs)
        return MetricResult(self.name, scores, self.higher_is_better)

    def _score(self, inputs: MetricInputs) -> torch.Tensor:
        scores = torch.as_tensor(self.fn(inputs, **self.options))
        ref = inputs.heatmaps if inputs.heatmaps is not None else inputs.saliency
        assert ref is not None  # __call__ checked the inputs
        want = tuple(ref.shape[:-2])
        if tuple(scores.shape) != want:
            raise MetricError(f"metric {self.name!r} returned scores of shape {list(scores.shape)}; "
                              f"expected one score per image, {list(want)}")
        return scores

    def _check(self, inputs: MetricInputs) -> None:
        missing = [what for what, need, have in [
            ("heatmaps", self.needs_heatmaps or inputs.saliency is None, inputs.heatmaps),
            ("model", self.needs_model, inputs.model),
            ("masks (give --masks DIR)", self.needs_masks, inputs.masks),
            ("saliency (S at layer resolution)", self.needs_saliency, inputs.saliency),
        ] if need and have is None]
        if missing:
            raise MetricError(f"metric {self.name!r} needs {', '.join(missing)}")
        for what, t in (("heatmaps", inputs.heatmaps), ("saliency", inputs.saliency)):
            if t is not None and (t.dim() not in (3, 4) or t.shape[-3] != inputs.images.shape[0]):
                raise MetricError(f"{what} must be [N, h, w] or [C, N, h, w] with N = "
                                  f"{inputs.images.shape[0]} images, got {list(t.shape)}")


_REGISTRY: dict[str, Metric] = {}
#: Families of metrics named ``PREFIX:NAME`` (``quantus:RegionPerturbation``): prefix -> factory(NAME).
_FAMILIES: dict[str, Callable[[str], Metric]] = {}


def metric_key(name: str) -> str:
    """A metric's name as the registry keys it: case-insensitive, ``-`` equal to ``_``."""
    return name.strip().lower().replace("-", "_")


def register_metric(name: str, fn: MetricFn, higher_is_better: bool, *, needs_model: bool = False,
                    needs_masks: bool = False, needs_saliency: bool = False, batched: bool = False,
                    doc: str = "", replace_existing: bool = False, bounds: BoundsFn | None = None,
                    needs_heatmaps: bool = True) -> Metric:
    """Make ``fn(inputs: MetricInputs, **options) -> [N]`` scores available as ``name``.

    Names are case-insensitive and ``-`` equals ``_``. Registering a taken name raises
    ``MetricError`` unless ``replace_existing``. ``bounds(inputs, **options) -> (low [N], high [N])``,
    if given, must hold for every heatmap (the search uses it to stop scoring hopeless candidates).
    ``needs_heatmaps=False``: ``fn`` can score from ``inputs.saliency`` alone when ``inputs.heatmaps``
    is None, and the search then skips building full-resolution heatmaps."""
    key = metric_key(name)
    if not key:
        raise MetricError("a metric needs a non-empty name")
    if not callable(fn):
        raise MetricError(f"metric {name!r}: fn must be callable, got {type(fn).__name__}")
    if key in _REGISTRY and not replace_existing:
        raise MetricError(f"metric {key!r} is already registered; pass replace_existing=True to replace it")
    metric = Metric(key, fn, bool(higher_is_better), needs_model, needs_masks, needs_saliency, batched,
                    doc=doc or (inspect.getdoc(fn) or "").split("\n")[0], bounds=bounds,
                    needs_heatmaps=needs_heatmaps)
    _REGISTRY[key] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a registered metric (no error if it is not there)."""
    _REGISTRY.pop(metric_key(name), None)


def register_metric_family(prefix: str, factory: Callable[[str], Metric]) -> None:
    """Make ``PREFIX:NAME`` resolve to ``factory(NAME)`` (a ``Metric``), e.g. ``quantus:RegionPerturbation``."""
    _FAMILIES[metric_key(prefix)] = factory


def get_metric(name: str, **options: Any) -> Metric:
    """The metric registered as ``name`` (or made by the family of its ``PREFIX:``), with ``options`` bound."""
    prefix, colon, rest = name.partition(":")
    if colon:
        factory = _FAMILIES.get(metric_key(prefix))
        if factory is None:
            raise MetricError(f"unknown metric family {prefix!r} in {name!r} (known: "
                              f"{', '.join(f'{p}:NAME' for p in sorted(_FAMILIES)) or 'none'})")
        metric: Metric | None = factory(rest)
    else:
        metric = _REGISTRY.get(metric_key(name))
    if metric is None:
        families = "".join(f", {p}:NAME" for p in sorted(_FAMILIES))
        raise MetricError(f"unknown metric {name!r} (known: {', '.join(known_metrics())}{families}); "
                          f"add one with sycam_dsl.metrics.register_metric")
    return metric.with_options(**options) if options else metric


def known_metrics() -> list[str]:
    """Names of the registered metrics, sorted."""
    return sorted(_REGISTRY)
