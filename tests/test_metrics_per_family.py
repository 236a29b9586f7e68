"""Every built-in metric (docs/metrics.md) on every model family and target kind beyond the CNN
classifier (docs/cam-engine.md, "Vision transformers" and "Targets"): a ViT and a Swin read through the
reshape, a segmentation net's ``segmentation:C`` target (its dict output, on torch and on ONNX Runtime),
a multi-label ``classes:`` and a regression ``output:`` target. Each metric gives one finite score per
image, the same whichever runtime runs the forward passes. Small seeded random-weight models."""

from __future__ import annotations

import pytest
import torch

from sycam_dsl.baselines import baseline
from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.deploy.sycam import method_heatmaps
from sycam_dsl.metrics.controls import score_heatmaps
from sycam_dsl.metrics.registry import MetricInputs, get_metric, known_metrics
from sycam_dsl.models.runtime import RuntimeSpec, is_installed
from sycam_dsl.models.targets import parse_target

from .test_targets import Net, SegNet, _setup
from .test_transformers import SWIN_LAYER, VIT_LAYER, small_swin, small_vit


def lraspp() -> torch.nn.Module:
    """torchvision's LRASPP (MobileNetV3 backbone), 3 classes, random weights; its classifier drawn again
    so that more than one class has pixels (at its own init every pixel is class 0)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=3).eval()
    for conv in (model.classifier.low_classifier, model.classifier.high_classifier):
        torch.nn.init.normal_(conv.weight, std=1.0)
    return model


#: family -> (model factory, layer, target spec or None for the predicted class)
FAMILIES = {
    "lraspp": (lraspp, "backbone.4", "segmentation:1"),
    "vit": (small_vit, VIT_LAYER, None),
    "swin": (small_swin, SWIN_LAYER, None),
    "segmentation": (lambda: _setup(SegNet(), dtype=torch.float32)[0], "block", "segmentation:1"),
    "multi-label": (lambda: _setup(Net(), dtype=torch.float32)[0], "block", "classes:1,3"),
    "regression": (lambda: _setup(Net(), dtype=torch.float32)[0], "block", "output:2"),
}

#: image sizes other than 32 px (LRASPP's class 1 has pixels in every image at 64 px)
SIZES = {"lraspp": 64}


def _scores(family: str, runtime: str = "torch") -> dict[str, torch.Tensor]:
    """Every built-in metric's per-image scores ``[N]`` of GradCAM's heatmaps on ``family``."""
    make, layer, spec = FAMILIES[family]
    model = make()
    size = SIZES.get(family, 32)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    target = parse_target(spec) if spec else None
    node = baseline("GradCAM").node
    terms, info = compute_terminals(model, layer, x, target, sorted(node.terminals()), progress=False)
    heatmaps = method_heatmaps(node, terms, info.acts, info.targets, (size, size))
    masks = torch.zeros(3, size, size, dtype=torch.bool)
    masks[:, size // 4:size * 3 // 4, size // 8:size * 5 // 8] = True  # gt_overlap and sch need object masks
    inputs = MetricInputs(x, info.targets, masks=masks, model=model, target=info.target,
                          runtime=RuntimeSpec(runtime))
    metrics = [get_metric(name) for name in known_metrics()]
    results = score_heatmaps(heatmaps, metrics, inputs, tuple(info.acts.shape[-2:]))
    return {name: r.per_image for name, r in results.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_metric_runs_on_every_family(family):
    scores = _scores(family)
    assert set(scores) == set(known_metrics()) and len(scores) >= 11
    for name, values in scores.items():
        assert tuple(values.shape) == (3,), name
        assert bool(torch.isfinite(values).all()), (name, values)
    # the metrics read the target's score: the curves are not constant
    assert float(scores["deletion"].std()) > 0 or float(scores["insertion"].std()) > 0


@pytest.mark.skipif(not is_installed("onnxruntime"), reason="needs onnxruntime (pip install -e '.[test]')")
def test_a_segmentation_model_with_dict_output_runs_on_onnxruntime():
    from sycam_dsl.models.runtime import RuntimeModule, forward_module

    model = FAMILIES["segmentation"][0]()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    built = forward_module(model, [x[:1]], RuntimeSpec("onnxruntime"))
    assert isinstance(built, RuntimeModule)  # converted, not the torch fallback
    torch.testing.assert_close(built(x), model(x)["out"], rtol=1e-4, atol=1e-4)
    on_torch, on_ort = _scores("segmentation"), _scores("segmentation", "onnxruntime")
    for name in ("deletion", "insertion", "average_drop", "road_combined", "aopc_morf"):
        torch.testing.assert_close(on_ort[name], on_torch[name], rtol=1e-3, atol=1e-3, msg=name)
