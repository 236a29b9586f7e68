"""The built-in metrics (definitions: docs/metrics.md), registered under their names.

Values that do not depend on the heatmaps (``y_c(x)``, ``x~``, ``y_c(x~)``) are kept in
``MetricInputs.cache``, so scoring many candidates on the same images computes them once.
"""

from __future__ import annotations

import torch

from ..models.precision import DEFAULT_PRECISION
from ..template.upsampling import Upsampler
from .average_drop import average_drop, increase_in_confidence
from .memo import memoized_curve
from .overlap import gt_overlap, gt_overlap_from_saliency, sch, sch_from_saliency
from .perturbation import DEFAULT_BLUR_SIGMA, blurred, deletion_from_curve, insertion_from_curve, perturbation_curve
from .quantus import PREFIX as QUANTUS
from .quantus import quantus_metric
from .registry import MetricInputs, register_metric, register_metric_family
from .road import DEFAULT_NOISE, DEFAULT_PERCENTILES, DEFAULT_SEED, road_curve, road_from_curve
from .scoring import class_scores, safe_denominator

# Metric._check gives each metric the fields its registration (below) says it needs: the asserts rely on that.


def _base(inputs: MetricInputs) -> torch.Tensor:
    model = inputs.model
    assert model is not None  # only metrics registered with needs_model compare against y_c(x)
    return inputs.cached("scores", lambda: class_scores(model, inputs.images, inputs.targets,
                                                        inputs.device, _batch(inputs), **inputs.forward_options))


def _batch(inputs: MetricInputs) -> int:
    # "auto" is resolved when MetricInputs is made with a model, and every metric here needs one
    assert isinstance(inputs.batch_size, int)
    return inputs.batch_size


def _blurred(inputs: MetricInputs, sigma: float) -> torch.Tensor:
    return inputs.cached(f"blurred:{sigma}", lambda: blurred(inputs.images, sigma))


def _steps(inputs: MetricInputs, steps: int | None) -> int:
    assert inputs.saliency is not None  # deletion and insertion need saliency
    return steps if steps is not None else inputs.saliency.shape[-2] * inputs.saliency.shape[-1]


def _average_drop(inputs: MetricInputs) -> torch.Tensor:
    """Average Drop %: 100 * max(0, y_c(x) - y_c(x * H)) / y_c(x)."""
    assert inputs.model is not None and inputs.heatmaps is not None
    return average_drop(inputs.model, inputs.images, inputs.targets, inputs.heatmaps, inputs.device,
                        _batch(inputs), _base(inputs), **inputs.forward_options)


def _increase(inputs: MetricInputs) -> torch.Tensor:
    """Increase in Confidence %: 100 where y_c(x * H) > y_c(x)."""
    assert inputs.model is not None and inputs.heatmaps is not None
    return increase_in_confidence(inputs.model, inputs.images, inputs.targets, inputs.heatmaps,
                                  inputs.device, _batch(inputs), _base(inputs), **inputs.forward_options)


def _curve(inputs: MetricInputs, steps: int | None, blur_sigma: float, insert: bool,
           least_relevant_first: bool = False) -> torch.Tensor:
    """``y_c`` after each step, ``[..., N, P]``: through ``inputs.memo`` when there is one.
    ``least_relevant_first``: cells ranked lowest ``S`` first (the perturbed image still depends only on the
    set of perturbed cells, so both orders share the memo's entries)."""
    blur = _blurred(inputs, blur_sigma)
    p = _steps(inputs, steps)
    # image_ids: set by MetricInputs.__post_init__.
    assert inputs.model is not None and inputs.saliency is not None and inputs.image_ids is not None
    s = -inputs.saliency if least_relevant_first else inputs.saliency
    if inputs.memo is None:
        return perturbation_curve(inputs.model, inputs.images, inputs.targets, s, p, insert,
                                  inputs.device, _batch(inputs), blur_sigma, blur, **inputs.forward_options)
    # the blur, not the metric: Deletion, AOPC and Insertion share the images they all build (memo.py)
    kind = f"blur:sigma={float(blur_sigma)!r}"
    if inputs.precision != DEFAULT_PRECISION:  # a cache shared across precisions never mixes their scores
        kind += f":{inputs.precision}"
    return memoized_curve(inputs.model, inputs.images, inputs.targets, s, p, insert, blur,
                          inputs.image_ids, inputs.memo, kind, inputs.device, _batch(inputs),
                          **inputs.forward_options)


def _blurred_scores(inputs: MetricInputs, blur_sigma: float) -> torch.Tensor:
    model = inputs.model
    assert model is not None  # insertion needs the model
    return inputs.cached(f"blurred_scores:{blur_sigma}", lambda: class_scores(
        model, _blurred(inputs, blur_sigma), inputs.targets, inputs.device, _batch(inputs),
        **inputs.forward_options))


def _deletion(inputs: MetricInputs, steps: int | None = None,
              blur_sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor:
    """Deletion: mean relative score drop as the top-ranked cells are blurred (steps: all cells)."""
    return deletion_from_curve(_curve(inputs, steps, blur_sigma, False), _base(inputs))


def _insertion(inputs: MetricInputs, steps: int | None = None,
               blur_sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor:
    """Insertion: mean relative score gain as the top-ranked cells are pasted into the blur."""
    return insertion_from_curve(_curve(inputs, steps, blur_sigma, True), _base(inputs),
                                _blurred_scores(inputs, blur_sigma))


def _aopc(inputs: MetricInputs, steps: int | None, blur_sigma: float, least_relevant_first: bool) -> torch.Tensor:
    curve = _curve(inputs, steps, blur_sigma, False, least_relevant_first)
    # AOPC = 1/(P+1) sum_{k=0..P} (y_c(x) - y_c(x^k)), whose k = 0 term is 0
    return (_base(inputs)[:, None] - curve).sum(dim=-1) / (curve.shape[-1] + 1)


def _aopc_morf(inputs: MetricInputs, steps: int | None = None,
               blur_sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor:
    """AOPC, most relevant first: mean score drop y_c(x) - y_c(x^k), k = 0..P, top-ranked cells blurred first."""
    return _aopc(inputs, steps, blur_sigma, False)


def _aopc_lerf(inputs: MetricInputs, steps: int | None = None,
               blur_sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor:
    """AOPC, least relevant first: mean score drop y_c(x) - y_c(x^k), lowest-ranked cells blurred first."""
    return _aopc(inputs, steps, blur_sigma, True)


def _road(inputs: MetricInputs, percentiles, noise: float, seed: int, most_relevant_first: bool) -> torch.Tensor:
    assert inputs.model is not None and inputs.heatmaps is not None and inputs.image_ids is not None
    curve = road_curve(inputs.model, inputs.images, inputs.targets, inputs.heatmaps, percentiles, most_relevant_first,
                       noise, seed, inputs.device, _batch(inputs), inputs.memo, inputs.image_ids,
                       **inputs.forward_options)
    return road_from_curve(curve, _base(inputs))


def _road_morf(inputs: MetricInputs, percentiles=DEFAULT_PERCENTILES, noise: float = DEFAULT_NOISE,
               seed: int = DEFAULT_SEED) -> torch.Tensor:
    """ROAD MoRF: mean of y_c(x_p) - y_c(x) over percentiles p, the pixels of H above its p-th percentile imputed."""
    return _road(inputs, percentiles, noise, seed, True)


def _road_lerf(inputs: MetricInputs, percentiles=DEFAULT_PERCENTILES, noise: float = DEFAULT_NOISE,
               seed: int = DEFAULT_SEED) -> torch.Tensor:
    """ROAD LeRF: mean of y_c(x_p) - y_c(x) over percentiles p, the pixels of 1 - H above its p-th one imputed."""
    return _road(inputs, percentiles, noise, seed, False)


def _road_combined(inputs: MetricInputs, percentiles=DEFAULT_PERCENTILES, noise: float = DEFAULT_NOISE,
                   seed: int = DEFAULT_SEED) -> torch.Tensor:
    """ROAD combined (grad-cam's ROADCombined): (LeRF - MoRF) / 2."""
    return (_road(inputs, percentiles, noise, seed, False) - _road(inputs, percentiles, noise, seed, True)) / 2


# Bounds that hold for every heatmap (softmax scores lie in [0, 1]), loosened by SLACK so that float
# rounding in the metric can never step outside them; the oracle uses them to stop early.
SLACK = 1e-6


def _deletion_bounds(inputs: MetricInputs, steps: int | None = None, blur_sigma: float = DEFAULT_BLUR_SIGMA):
    base = safe_denominator(_base(inputs)).double()
    return (base - 1) / base - SLACK, torch.full_like(base, 1 + SLACK)


def _insertion_bounds(inputs: MetricInputs, steps: int | None = None, blur_sigma: float = DEFAULT_BLUR_SIGMA):
    base = safe_denominator(_base(inputs)).double()
    start = _blurred_scores(inputs, blur_sigma).double()
    return -start / base - SLACK, (1 - start) / base + SLACK


def _drop_bounds(inputs: MetricInputs, **_):
    """A mean of y_c(x) - y_c(x') lies in [y_c(x) - 1, y_c(x)]."""
    base = _base(inputs).double()
    return base - 1 - SLACK, base + SLACK


def _gain_bounds(inputs: MetricInputs, **_):
    """A mean of y_c(x') - y_c(x) lies in [-y_c(x), 1 - y_c(x)]."""
    base = _base(inputs).double()
    return -base - SLACK, 1 - base + SLACK


def _combined_bounds(inputs: MetricInputs, **_):
    return torch.full_like(_base(inputs).double(), -0.5 - SLACK), torch.full_like(_base(inputs).double(), 0.5 + SLACK)


def _fixed_bounds(low: float, high: float):
    def bounds(inputs: MetricInputs, **_) -> tuple[torch.Tensor, torch.Tensor]:
        n = inputs.images.shape[0]
        return torch.full((n,), low - SLACK, dtype=torch.float64), torch.full((n,), high + SLACK, dtype=torch.float64)
    return bounds


def _gt_overlap(inputs: MetricInputs) -> torch.Tensor:
    """Ground-truth overlap: share of the |M| highest pixels of H inside the mask M."""
    assert inputs.masks is not None
    if inputs.heatmaps is not None:
        return gt_overlap(inputs.heatmaps, inputs.masks)
    assert inputs.saliency is not None  # without heatmaps, saliency is there
    return gt_overlap_from_saliency(inputs.saliency, inputs.masks, (inputs.images.shape[-2], inputs.images.shape[-1]))


def _sch(inputs: MetricInputs) -> torch.Tensor:
    """SCH: sum of H inside the mask over the sum of H."""
    assert inputs.masks is not None
    if inputs.heatmaps is not None:
        return sch(inputs.heatmaps, inputs.masks)
    s = inputs.saliency
    assert s is not None  # without heatmaps, saliency is there
    up = inputs.cached(f"upsampler:{tuple(s.shape[-2:])}", lambda: Upsampler(
        (s.shape[-2], s.shape[-1]), (inputs.images.shape[-2], inputs.images.shape[-1]), s.device, torch.float64))
    return sch_from_saliency(s, inputs.masks, up)


def register_builtins() -> None:
    register_metric_family(QUANTUS, quantus_metric)
    for name, fn, higher, kw in [
        ("average_drop", _average_drop, False, {"needs_model": True, "bounds": _fixed_bounds(0, 100)}),
        ("increase_in_confidence", _increase, True, {"needs_model": True, "bounds": _fixed_bounds(0, 100)}),
        ("deletion", _deletion, True, {"needs_model": True, "needs_saliency": True, "bounds": _deletion_bounds,
                                       "needs_heatmaps": False}),
        ("insertion", _insertion, True, {"needs_model": True, "needs_saliency": True, "bounds": _insertion_bounds,
                                         "needs_heatmaps": False}),
        ("aopc_morf", _aopc_morf, True, {"needs_model": True, "needs_saliency": True, "bounds": _drop_bounds,
                                         "needs_heatmaps": False}),
        ("aopc_lerf", _aopc_lerf, False, {"needs_model": True, "needs_saliency": True, "bounds": _drop_bounds,
                                          "needs_heatmaps": False}),
        ("road_morf", _road_morf, False, {"needs_model": True, "bounds": _gain_bounds, "batched": False}),
        ("road_lerf", _road_lerf, True, {"needs_model": True, "bounds": _gain_bounds, "batched": False}),
        ("road_combined", _road_combined, True, {"needs_model": True, "bounds": _combined_bounds, "batched": False}),
        ("gt_overlap", _gt_overlap, True, {"needs_masks": True, "bounds": _fixed_bounds(0, 1),
                                           "needs_heatmaps": False}),
        ("sch", _sch, True, {"needs_masks": True, "bounds": _fixed_bounds(0, 1), "needs_heatmaps": False}),
    ]:
        register_metric(name, fn, higher, replace_existing=True, **{"batched": True, **kw})
