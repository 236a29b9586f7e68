"""The grad-cam and torchcam adapters: their heatmaps equal this package's for gradient-only, ``cic`` and
``abl`` expressions (Vec and Map), grad-cam's own GradCAM for ``grads``, and grad-cam's ROAD runs on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.errors import SycamError
from sycam_dsl.evaluate import evaluate
from sycam_dsl.integrations.errors import IntegrationError
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import terminal_types
from sycam_dsl.template.heatmaps import heatmaps, layer_saliency
from sycam_dsl.template.saliency import minmax_normalize
from tests.cam_reference import TinyCNN

# grad-cam passes a torch tensor to np.percentile (its ROAD thresholds): numpy 2 warns, nothing to act on here
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

EXPRESSIONS = ["grads", "(* (relu grads) acts)", "cic", "abl", "(* G (bcast abl))", "(relu (* G (bcast cic)))"]


def setup(n: int = 3):
    torch.manual_seed(0)
    model = TinyCNN(classes=4, logit_scale=4.0).eval()
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        classes = model(x).argmax(dim=1).tolist()  # the predicted classes: their cic are mostly positive
    return model, x, classes


def ours(model, x, classes, text, resolution="input"):
    node = parse_expr(text, terminal_types())
    terms, info = compute_terminals(model, "features", x, torch.tensor(classes), sorted(node.terminals()),
                                    progress=False)
    w = evaluate(node, terms)
    if resolution == "layer":
        return minmax_normalize(layer_saliency(w, info.acts, node.type))
    return heatmaps(w, info.acts, node.type, (x.shape[-2], x.shape[-1]))


def pearson(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def gradcam():
    pytest.importorskip("pytorch_grad_cam", reason="grad-cam is not installed (pip install 'sycam-dsl[gradcam]')")
    from sycam_dsl.integrations import gradcam as module
    return module


@pytest.fixture(scope="module")
def torchcam():
    pytest.importorskip("torchcam", reason="torchcam is not installed (pip install 'sycam-dsl[torchcam]')")
    from sycam_dsl.integrations import torchcam as module
    return module


def test_a_missing_library_is_one_line(monkeypatch):
    import sys

    for name in ("pytorch_grad_cam", "pytorch_grad_cam.base_cam", "torchcam", "torchcam.methods.core"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as when not installed
    for module, extra in (("gradcam", "gradcam"), ("torchcam", "torchcam")):
        monkeypatch.delitem(sys.modules, f"sycam_dsl.integrations.{module}", raising=False)
        with pytest.raises(IntegrationError, match=rf"pip install 'sycam-dsl\[{extra}\]'") as e:
            __import__(f"sycam_dsl.integrations.{module}")
        assert isinstance(e.value, ImportError) and "\n" not in str(e.value)


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_gradcam_adapter_equals_ours(gradcam, text):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, classes = setup()
    with gradcam.SyCAMGradCAM(model, [model.features], text) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    expected = ours(model, x, classes, text)
    assert theirs.shape == tuple(expected.shape)
    check_maps(theirs, expected)


def check_maps(theirs, expected):
    """Pearson >= 0.999 per image; an all-zero map (every weighted channel negative) must be all zero in both."""
    live = 0
    for i in range(expected.shape[0]):
        if float(expected[i].max()) == 0:
            assert float(np.max(np.asarray(theirs[i]))) == 0
        else:
            live += 1
            assert pearson(theirs[i], expected[i]) >= 0.999
    assert live >= 2  # most maps are not trivial: the comparison says something


def test_gradcam_adapter_grads_is_gradcam_and_road_runs(gradcam):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    model, x, classes = setup()
    targets = [ClassifierOutputTarget(c) for c in classes]
    with GradCAM(model, [model.features]) as cam:
        reference = cam(input_tensor=x, targets=targets)
    with gradcam.SyCAMGradCAM(model, [model.features], "grads") as cam:
        mine = cam(input_tensor=x, targets=targets)
        smooth = cam(input_tensor=x, targets=targets, aug_smooth=True)
    np.testing.assert_allclose(mine, reference, atol=1e-5)
    assert smooth.shape == mine.shape
    with gradcam.SyCAMGradCAM(model, [model.features], "(* grads cic)") as cam:
        maps = cam(input_tensor=x, targets=targets)
    scores = ROADCombined(percentiles=[20, 80])(x, maps, [ClassifierOutputSoftmaxTarget(c) for c in classes], model)
    assert scores.shape == (len(classes),) and np.isfinite(scores).all()


def test_gradcam_adapter_hooks_and_errors(gradcam):
    model, x, classes = setup(n=1)
    with gradcam.SyCAMGradCAM(model, [model.features], "abl") as cam:
        cam(input_tensor=x, targets=None)  # the predicted class
        assert len(cam.activations_and_grads.handles) == 2  # grad-cam's hooks are back after the engine's passes
    assert not model.features._forward_hooks
    with pytest.raises(SycamError, match="single out one class"):
        with gradcam.SyCAMGradCAM(model, [model.features], "grads") as cam:
            cam(input_tensor=x, targets=[lambda out: out.sum()])
    with pytest.raises(SycamError, match="not a submodule"):
        gradcam.SyCAMGradCAM(model, [torch.nn.Conv2d(1, 1, 1)], "grads")
    with pytest.raises(IntegrationError, match="Map"):
        gradcam.SyCAMGradCAM(model, [model.features], "G").get_cam_weights(x, model.features, [], None, None)


@pytest.mark.parametrize("text", ["grads", "cic", "abl", "(* G (bcast abl))"])
def test_torchcam_adapter_equals_ours(torchcam, text):
    model, x, classes = setup()
    with torchcam.SyCAMTorchCAM(model, "features", text) as extractor:
        with torch.inference_mode():
            model(x)
        (theirs,) = extractor(class_idx=classes)
    check_maps(theirs, ours(model, x, classes, text, resolution="layer"))
    assert not model.features._forward_hooks and not model._forward_pre_hooks


def test_torchcam_adapter_grads_is_torchcam_gradcam(torchcam):
    from torchcam.methods import GradCAM

    model, x, classes = setup()
    with GradCAM(model, "features") as extractor:
        (reference,) = extractor(class_idx=classes, scores=model(x))
    with torchcam.SyCAMTorchCAM(model, model.features, "grads") as extractor:
        model(x)
        (mine,) = extractor(class_idx=classes)
    torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="does not support arbitrary output targets"):  # torchcam's own check
        with torchcam.SyCAMTorchCAM(model, "features", "grads") as extractor:
            model(x)
            extractor(targets=lambda out: out[0])
