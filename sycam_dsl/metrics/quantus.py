"""Any Quantus metric as a sycam-dsl metric: ``get_metric("quantus:RegionPerturbation", patch_size=4)``
(``--metric quantus:RegionPerturbation --metric-option patch_size=4`` on the command line), a search or
report metric like the built-in ones.

The options are the Quantus class's constructor arguments; the bridge passes the images, target classes
and heatmaps ``H`` ``[N, 1, H, W]`` (and the masks, for localisation metrics) to its ``__call__`` and
takes per-image scores and the direction (``score_direction``) from Quantus. A metric whose per-image
result is a curve (RegionPerturbation, PixelFlipping, ...) scores each image by the curve's mean (AOPC
style). ``higher_is_better=true|false`` overrides Quantus's direction (Quantus 0.6 says LOWER for
RegionPerturbation, whose curve is a score drop: with ``order="morf"`` higher is better). Quantus runs
its own perturbations and forward passes, so these metrics do not use the memoized engine; metrics that
explain perturbed inputs or models again (robustness, randomisation) cannot score given heatmaps and say so.
A target of another kind than the class (``models.targets``: ``classes:``, ``output:``, a callable) reaches
Quantus as a model with one output, the target's raw score, read as class 0 without Quantus's softmax
(``TargetAsClass``); a target with per-image state (a segmentation mask) is refused in one line by the
metrics that run the model (complexity and localisation metrics read the heatmaps only).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from ..models.runtime import reference_of
from ..models.targets import Target, model_output
from ..util.text import first_line
from .errors import MetricError
from .registry import Metric, MetricInputs

PREFIX = "quantus"
#: Constructor arguments the bridge sets unless given: no aggregation (per-image scores), quiet.
_QUIET = {"return_aggregate": False, "disable_warnings": True, "display_progressbar": False}
#: The score of a candidate whose heatmaps are all blank (all zero), in the metric's worse direction:
#: finite, so that means and the oracle's margins stay comparable, and beyond any score a Quantus
#: metric gives a real heatmap.
BLANK_SCORE = 1e9
#: Quantus metrics that compare the predicted class (an argmax over outputs) with ``y_batch``: over the
#: one column of a target's score it is always class 0, so they cannot score another kind of target.
_PREDICTED_CLASS = ("ROAD", "Sufficiency", "BatchSufficiency")
#: Options that must be positive whole numbers (0 divides by zero inside Quantus).
_POSITIVE_OPTIONS = ("patch_size", "features_in_step", "subset_size", "nr_samples", "nr_runs")


def _quantus() -> Any:
    try:
        import quantus
    except ImportError:
        raise MetricError("Quantus is not installed: pip install 'sycam-dsl[quantus]'") from None
    return quantus


def quantus_classes() -> dict[str, type]:
    """Quantus metric classes by name."""
    quantus = _quantus()
    base = quantus.metrics.base.Metric
    return {n: c for n in dir(quantus) if inspect.isclass(c := getattr(quantus, n)) and issubclass(c, base)
            and c is not base}


@dataclass(frozen=True)
class QuantusMetric(Metric):
    """A Quantus metric; the option ``higher_is_better`` sets the direction; ``refusal(target)`` says why
    it cannot score a target (None when it can)."""

    refusal: Callable[[Target], str | None] | None = None

    def check_target(self, target: Target | None) -> None:
        why = None if target is None or self.refusal is None else self.refusal(target)
        if why is not None:
            raise MetricError(why)

    def with_options(self, **options: Any) -> Metric:
        for k in _POSITIVE_OPTIONS:
            v = options.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and v < 1:
                raise MetricError(f"metric {self.name!r}: {k} must be 1 or more, got {v!r}")
        m = super().with_options(**options)
        direction = m.options.get("higher_is_better")
        if direction is None:
            return m
        if not isinstance(direction, bool):
            raise MetricError(f"metric {self.name!r}: higher_is_better must be true or false, got {direction!r}")
        return replace(m, higher_is_better=direction)


def _explain_again(*_: Any, **__: Any) -> Any:
    raise MetricError("this Quantus metric explains perturbed inputs or models again; the bridge scores given "
                      "heatmaps only (use a faithfulness, complexity, localisation or axiomatic metric)")


def _per_image(scores: Any, n: int, name: str) -> torch.Tensor:
    """One float per image: a curve (list / array per image) becomes its mean."""
    if not isinstance(scores, list | tuple | np.ndarray) or len(scores) != n:
        raise MetricError(f"quantus:{name} returned {type(scores).__name__} instead of one score per image; "
                          f"leave return_aggregate off")
    return torch.tensor([float(np.mean(np.asarray(s, dtype=np.float64))) for s in scores], dtype=torch.float64)


class TargetAsClass(torch.nn.Module):
    """``model`` whose output is one column, the target's metric score ``[B, 1]`` (``target`` has no
    per-image state, so every row is scored alike), for Quantus to read as class 0."""

    def __init__(self, model: torch.nn.Module, target: Target) -> None:
        super().__init__()
        self.model, self.target = model, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.target.metric(model_output(self.model(x)), ids)[:, None]


def _refusal(key: str, reads_model: bool, target: Target) -> str | None:
    """Why ``quantus:<key>`` cannot score ``target`` (None when it can): a metric that runs the model
    cannot score a target with per-image state, nor one naming no class when it compares classes."""
    if target.is_class or not reads_model:
        return None
    if target.per_image:
        return (f"quantus:{key} cannot score target {target.name}: its score depends on each image's own state "
                f"(a mask), which Quantus's perturbed batches do not carry; use the built-in metrics, which "
                f"score any target")
    if key in _PREDICTED_CLASS:
        return (f"quantus:{key} compares the predicted class with the target class, and target {target.name} "
                f"names no class; use the built-in metrics (road_combined, ...), which score any target")
    return None


def _target_model(model: torch.nn.Module, target: Target, n: int, key: str,
                  softmax: bool) -> tuple[torch.nn.Module, np.ndarray, dict[str, Any]]:
    """(the model Quantus calls, ``y_batch``, extra call arguments) for a target of another kind than the
    class: its raw score as class 0, without Quantus's softmax (over one column it is always 1)."""
    why = _refusal(key, True, target)
    if why is not None:
        raise MetricError(why)
    return TargetAsClass(model, target).eval(), np.zeros(n, dtype=np.int64), {"softmax": False} if softmax else {}


def quantus_metric(name: str) -> Metric:
    """The Quantus metric class ``name`` (case-insensitive) as a ``Metric`` named ``quantus:<Class>``."""
    classes = quantus_classes()
    by_key = {k.lower(): k for k in classes}
    key = by_key.get(name.strip().lower().replace("_", ""))
    if key is None:
        raise MetricError(f"Quantus has no metric {name!r} (known: {', '.join(sorted(classes))})")
    cls = classes[key]
    quantus = _quantus()
    localisation = getattr(cls, "evaluation_category", None) == quantus.helpers.enums.EvaluationCategory.LOCALISATION
    higher = getattr(cls, "score_direction", None) != quantus.helpers.enums.ScoreDirection.LOWER
    params = [p for p in inspect.signature(cls).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def fn(inputs: MetricInputs, **options: Any) -> torch.Tensor:
        assert inputs.model is not None and inputs.heatmaps is not None  # needs_model; heatmaps always
        model, y_batch = reference_of(inputs.model).eval(), inputs.targets.cpu().numpy()
        call: dict[str, Any] = {}
        if inputs.target is not None and reads_model:  # Quantus takes class indices: the target's score as class 0
            model, y_batch, call = _target_model(model, inputs.target, len(y_batch), key, softmax)
        init = {**_QUIET, **{k: v for k, v in options.items() if k != "higher_is_better"}}
        try:
            metric = cls(**init)
        except (TypeError, ValueError, AssertionError) as e:
            raise MetricError(f"quantus:{key}: {e}") from None
        n = inputs.images.shape[0]
        higher_is_better = options.get("higher_is_better")
        worst = -BLANK_SCORE if (higher if higher_is_better is None else higher_is_better) else BLANK_SCORE
        # Quantus refuses a batch of all-zero heatmaps (an assertion) and gives NaN for some metrics on
        # one: a blank candidate scores as the worst instead of ending the search; blank maps among
        # others keep the score Quantus gives them (0 sparseness, ...) unless it is not finite
        blank = ~(inputs.heatmaps.detach().flatten(1) != 0).any(dim=1).cpu()
        if bool(blank.all()):
            return torch.full((n,), worst, dtype=torch.float64)
        s_batch = None if inputs.masks is None else inputs.masks[:, None].float().cpu().numpy()
        try:
            scores = metric(model=model, x_batch=inputs.images.detach().cpu().numpy(), y_batch=y_batch, **call,
                            a_batch=inputs.heatmaps[:, None].detach().cpu().numpy(), s_batch=s_batch,
                            channel_first=True, explain_func=_explain_again, device=str(inputs.device),
                            batch_size=inputs.batch_size if isinstance(inputs.batch_size, int) else 64)
        except MetricError:
            raise
        except Exception as e:  # Quantus checks its options with asserts and fails on bad ones deep inside
            first = first_line(e)
            raise MetricError(f"quantus:{key} failed ({type(e).__name__}: {first}); check its "
                              f"--metric-option values") from None
        out = _per_image(scores, n, key)
        return torch.where(blank & ~torch.isfinite(out), torch.full_like(out, worst), out)

    softmax = "softmax" in inspect.signature(cls.__call__).parameters
    # complexity and localisation metrics read the heatmaps (and masks) only, whatever the target
    category = getattr(cls, "evaluation_category", None)
    reads_model = category not in (quantus.helpers.enums.EvaluationCategory.COMPLEXITY,
                                   quantus.helpers.enums.EvaluationCategory.LOCALISATION)
    options = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default) for p in params]
    options.append(inspect.Parameter("higher_is_better", inspect.Parameter.KEYWORD_ONLY, default=None))
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD), *options])
    doc = (inspect.getdoc(cls) or "").split("\n")[0]
    return QuantusMetric(f"{PREFIX}:{key}", fn, higher, needs_model=True, needs_masks=localisation,
                         doc=f"Quantus {getattr(cls, 'name', key)}: {doc}", refusal=partial(_refusal, key, reads_model))
