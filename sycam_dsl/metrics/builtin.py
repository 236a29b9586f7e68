"""The built-in metrics of SPEC section 6, registered under their names.

Values that do not depend on the heatmaps (``y_c(x)``, ``x~``, ``y_c(x~)``) are kept in
``MetricInputs.cache``, so scoring many candidates on the same images computes them once.
"""

from __future__ import annotations

import torch

from .average_drop import average_drop, increase_in_confidence
from .overlap import gt_overlap, sch
from .perturbation import DEFAULT_BLUR_SIGMA, blurred, deletion, insertion
from .registry import MetricInputs, register_metric
from .scoring import class_scores


def _base(inputs: MetricInputs) -> torch.Tensor:
    return inputs.cached("scores", lambda: class_scores(inputs.model, inputs.images, inputs.targets,
                                                        inputs.device, inputs.batch_size))


def _blurred(inputs: MetricInputs, sigma: float) -> torch.Tensor:
    return inputs.cached(f"blurred:{sigma}", lambda: blurred(inputs.images, sigma))


def _steps(inputs: MetricInputs, steps: int | None) -> int:
    return steps if steps is not None else inputs.saliency.shape[-2] * inputs.saliency.shape[-1]


def _average_drop(inputs: MetricInputs) -> torch.Tensor:
    """Average Drop %: 100 * max(0, y_c(x) - y_c(x * H)) / y_c(x)."""
    return average_drop(inputs.model, inputs.images, inputs.targets, inputs.heatmaps, inputs.device,
                        inputs.batch_size, _base(inputs))


def _increase(inputs: MetricInputs) -> torch.Tensor:
    """Increase in Confidence %: 100 where y_c(x * H) > y_c(x)."""
    return increase_in_confidence(inputs.model, inputs.images, inputs.targets, inputs.heatmaps,
                                  inputs.device, inputs.batch_size, _base(inputs))


def _deletion(inputs: MetricInputs, steps: int | None = None,
              blur_sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor:
    """Deletion: mean relative score drop as the top-ranked cells are blurred (steps: all cells)."""
    return deletion(inputs.model, inputs.images, inputs.targets, inputs.saliency, _steps(inputs, steps),
                    inputs.device, inputs.batch_size, blur_sigma, _base(inputs), _blurred(inputs, blur_sigma))


def _insertion(inputs: MetricInputs, steps: int | None = None,
               blur_sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor:
    """Insertion: mean relative score gain as the top-ranked cells are pasted into the blur."""
    blur = _blurred(inputs, blur_sigma)
    start = inputs.cached(f"blurred_scores:{blur_sigma}", lambda: class_scores(
        inputs.model, blur, inputs.targets, inputs.device, inputs.batch_size))
    return insertion(inputs.model, inputs.images, inputs.targets, inputs.saliency, _steps(inputs, steps),
                     inputs.device, inputs.batch_size, blur_sigma, _base(inputs), start, blur)


def _gt_overlap(inputs: MetricInputs) -> torch.Tensor:
    """Ground-truth overlap: share of the |M| highest pixels of H inside the mask M."""
    return gt_overlap(inputs.heatmaps, inputs.masks)


def _sch(inputs: MetricInputs) -> torch.Tensor:
    """SCH: sum of H inside the mask over the sum of H."""
    return sch(inputs.heatmaps, inputs.masks)


def register_builtins() -> None:
    for name, fn, higher, kw in [
        ("average_drop", _average_drop, False, {"needs_model": True}),
        ("increase_in_confidence", _increase, True, {"needs_model": True}),
        ("deletion", _deletion, True, {"needs_model": True, "needs_saliency": True}),
        ("insertion", _insertion, True, {"needs_model": True, "needs_saliency": True}),
        ("gt_overlap", _gt_overlap, True, {"needs_masks": True}),
        ("sch", _sch, True, {"needs_masks": True}),
    ]:
        register_metric(name, fn, higher, batched=True, replace_existing=True, **kw)
