"""Control maps (docs/search.md#control-maps): heatmaps that owe nothing to the model, scored by the
same metric code as the methods, so a table shows what a metric gives a map that does not explain.

``random`` (seeded, per image), ``gaussian`` (centred), ``sobel`` (the image's edge magnitude),
``intensity`` (the image's own brightness) and ``blurred`` (a method's heatmaps under a Gaussian
blur of sigma = 1/8 of the image side). Each is ``[N, H, W]`` in ``[0, 1]`` at image resolution; they
are never candidates of a search, and their rows are named ``control: NAME``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..template.saliency import minmax_normalize
from ..util.text import comma_list
from .errors import MetricError
from .perturbation import blurred
from .registry import Metric, MetricInputs, MetricResult

#: The control maps, in table order.
CONTROLS = ("random", "gaussian", "sobel", "intensity", "blurred")
#: What a control's row name starts with (``control: sobel``).
CONTROL_PREFIX = "control: "
#: The centred Gaussian's sigma, as a fraction of the image side.
GAUSSIAN_SIGMA = 1 / 4
#: The blurred control's sigma, as a fraction of the image side.
BLUR_SIGMA = 1 / 8


def control_text(name: str, blur_of: str | None = None) -> str:
    """What control ``name`` is, for a table's expression column."""
    return {"random": "uniform noise, seeded per image", "gaussian": "centred Gaussian, sigma = side/4",
            "sobel": "Sobel edge magnitude of the image", "intensity": "the image's own intensity",
            "blurred": f"{blur_of} blurred, sigma = side/8"}[name]


def control_name(name: str) -> str:
    """The table row name of control ``name`` (``control: sobel``)."""
    return CONTROL_PREFIX + name


def is_control(row_name: str) -> bool:
    """Whether a table row is a control map's."""
    return row_name.startswith(CONTROL_PREFIX)


def parse_controls(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"all"`` (or None), ``"none"``, a comma list or a sequence of control names -> names in
    table order; an unknown name raises ``MetricError``."""
    if value is None:
        return CONTROLS
    names = comma_list(value) if isinstance(value, str) else list(value)
    keys = [n.strip().lower() for n in names if n.strip()]
    if keys == ["all"]:
        return CONTROLS
    if keys in (["none"], []):
        return ()
    unknown = [k for k in keys if k not in CONTROLS]
    if unknown:
        raise MetricError(f"unknown control(s) {', '.join(unknown)}; choose from {', '.join(CONTROLS)}, all or none")
    return tuple(c for c in CONTROLS if c in keys)


def _gray(images: torch.Tensor) -> torch.Tensor:
    """The channel mean of ``images`` ``[N, C, H, W]``: ``[N, 1, H, W]`` float32."""
    return images.detach().float().mean(dim=1, keepdim=True)


def random_map(images: torch.Tensor, image_ids: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform noise ``[N, H, W]``, seeded by ``seed`` and each image's id (the same map for an image in
    every subset and run)."""
    h, w = images.shape[-2:]
    maps = [torch.rand(h, w, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i)))
            for i in image_ids.detach().cpu().tolist()]
    return minmax_normalize(torch.stack(maps).reshape(-1, h, w)).to(images.device)


def gaussian_map(images: torch.Tensor) -> torch.Tensor:
    """A centred Gaussian of sigma ``GAUSSIAN_SIGMA`` times the side, 1 at the centre: ``[N, H, W]``."""
    n, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    ys = torch.arange(h, dtype=torch.float32, device=images.device) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32, device=images.device) - (w - 1) / 2
    sigma = GAUSSIAN_SIGMA * min(h, w)
    g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))
    return (g / g.max()).expand(n, h, w).clone()


def sobel_map(images: torch.Tensor) -> torch.Tensor:
    """The Sobel gradient magnitude of the channel mean (replicate padding), min-max normalized per image:
    ``[N, C, H, W]`` -> ``[N, H, W]``."""
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device)
    kernels = torch.stack([gx, gx.t()]).unsqueeze(1)  # [2, 1, 3, 3]
    grad = F.conv2d(F.pad(_gray(images), (1, 1, 1, 1), mode="replicate"), kernels)
    return minmax_normalize(grad.pow(2).sum(dim=1).sqrt())


def intensity_map(images: torch.Tensor) -> torch.Tensor:
    """The channel mean, min-max normalized per image: ``[N, C, H, W]`` -> ``[N, H, W]``."""
    return minmax_normalize(_gray(images)[:, 0])


def blurred_map(heatmaps: torch.Tensor) -> torch.Tensor:
    """``heatmaps`` ``[N, H, W]`` under a Gaussian blur of sigma ``BLUR_SIGMA`` times the side, min-max
    normalized again."""
    sigma = BLUR_SIGMA * min(heatmaps.shape[-2:])
    return minmax_normalize(blurred(heatmaps.detach().float().unsqueeze(1), sigma)[:, 0])


def control_maps(names: Sequence[str], images: torch.Tensor, image_ids: torch.Tensor, seed: int = 0,
                 heatmaps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Row name -> control map ``[N, H, W]`` for each of ``names`` (``CONTROLS``) of ``images``
    ``[N, C, H, W]``; ``blurred`` blurs ``heatmaps`` ``[N, H, W]`` and is left out when they are None."""
    make: dict[str, Any] = {"random": lambda: random_map(images, image_ids, seed),
                            "gaussian": lambda: gaussian_map(images), "sobel": lambda: sobel_map(images),
                            "intensity": lambda: intensity_map(images),
                            "blurred": None if heatmaps is None else (lambda: blurred_map(heatmaps))}
    return {control_name(n): make[n]() for n in names if make[n] is not None}


def score_heatmaps(heatmaps: torch.Tensor, metrics: list[Metric], inputs: MetricInputs,
                   layer_size: tuple[int, int]) -> dict[str, MetricResult]:
    """Per-image scores of given heatmaps ``H`` ``[N, H, W]`` on each metric (name -> result); the
    saliency ``S`` the layer-resolution metrics rank is ``H`` average-pooled to ``layer_size`` ``(h, w)``."""
    h = heatmaps.to(inputs.images.device, torch.float32)
    s = F.adaptive_avg_pool2d(h.unsqueeze(1), layer_size)[:, 0]
    candidate = inputs.with_heatmaps(h, s)
    return {m.name: m(candidate) for m in metrics}


def score_controls(names: Sequence[str], metrics: list[Metric], inputs: MetricInputs, image_ids: torch.Tensor,
                   layer_size: tuple[int, int], seed: int = 0,
                   heatmaps: torch.Tensor | None = None) -> dict[str, dict[str, MetricResult]]:
    """Row name -> metric name -> result of the control maps ``names`` of ``inputs``' images (``image_ids``
    ``[N]`` seed ``random``; ``blurred`` blurs ``heatmaps`` ``[N, H, W]``), scored as ``score_heatmaps``."""
    maps = control_maps(names, inputs.images, image_ids, seed, heatmaps)
    return {row: score_heatmaps(h, metrics, inputs, layer_size) for row, h in maps.items()}


def control_warnings(evaluation: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> list[str]:
    """A line per table of ``evaluation`` (result.json's form) with control rows the reference method does
    not beat: with ``comparisons`` for its metric, those against which the family-wise verdict is not
    "better"; without, those whose mean is at least as good as every method's."""
    lines = []
    for ev in evaluation:
        rows = {r["name"]: r for r in ev["methods"]}
        comp = next((c for c in comparisons if c["metric"] == ev["metric"]), None)
        others = [r for r in ev["methods"] if not r.get("control")]
        if not others:
            continue
        if comp is not None:
            ref = next(r for r in others if r["name"] not in {v["method"] for v in comp["versus"]})
            said = {"worse": f"{ref['name']} worse", "no significant difference": "no significant difference"}
            losing = [(rows[v["method"]], said[v["family_verdict"]])
                      for v in comp["versus"] if v.get("control") and v["family_verdict"] != "better"]
            rule = f"the family-wise test does not show {ref['name']} better"
        else:
            ref = (max if ev["higher_is_better"] else min)(others, key=lambda r: r["mean"])
            at_least = (lambda a, b: a >= b) if ev["higher_is_better"] else (lambda a, b: a <= b)
            losing = [(r, "") for r in ev["methods"] if r.get("control") and at_least(r["mean"], ref["mean"])]
            rule = "as good or better on average"
        if losing:
            found = ", ".join(f"control {r['name'][len(CONTROL_PREFIX):]} scores {r['mean']:.4f}"
                              + (f" ({why})" if why else "") for r, why in losing)
            direction = "higher" if ev["higher_is_better"] else "lower"
            lines.append(f"the metric may reward something other than the model on these images: {found} on "
                         f"{ev['metric']} against {ref['name']}'s {ref['mean']:.4f} ({direction} is better; {rule})")
    return lines
