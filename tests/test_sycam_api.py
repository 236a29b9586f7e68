"""``from sycam_dsl import SyCAM``: grad-cam's calling convention over the CAM engine."""

from __future__ import annotations

import json

import pytest
import torch

from sycam_dsl import SyCAM
from sycam_dsl.bundled import load_bundled_model
from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.deploy.method import MethodError, load_method
from sycam_dsl.evaluate import evaluate
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import terminal_types
from sycam_dsl.synthesis.dispatch import Dispatch
from sycam_dsl.template.heatmaps import heatmaps

EXPR = "(+ (* grads acts) (relu abl))"


@pytest.fixture(scope="module")
def loaded():
    return load_bundled_model()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def engine(loaded, node, x, targets=None) -> torch.Tensor:
    """``evaluate`` + ``heatmaps`` on the engine's terminals."""
    terms, info = compute_terminals(loaded, None, x, targets, sorted(node.terminals()), progress=False)
    return heatmaps(evaluate(node, terms), info.acts, node.type, tuple(x.shape[-2:]))


def no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               and not getattr(m, "_backward_pre_hooks", {}) for m in model.modules())


def test_sycam_equals_evaluate_and_heatmaps(loaded, images):
    node = parse_expr(EXPR, terminal_types())
    layer = loaded.module.features[14]
    with SyCAM(loaded.module, layer, EXPR, runtime="torch") as cam:  # the engine's own forward passes, bit for bit
        got = cam(images)
    assert got.shape == (4, 64, 64) and got.device == images.device
    assert torch.equal(got, engine(loaded, node, images))


def test_targets_as_indices_and_grad_cam_targets(loaded, images):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    node = parse_expr("(* grads acts)", terminal_types())
    classes = [1, 0, 3, 2]
    want = engine(loaded, node, images, torch.tensor(classes))
    with SyCAM(loaded.module, "features.14", node) as cam:
        assert torch.equal(cam(images, classes), want)
        assert torch.equal(cam(images, torch.tensor(classes)), want)
        assert torch.equal(cam(images, [ClassifierOutputTarget(c) for c in classes]), want)
        assert torch.equal(cam(images, [ClassifierOutputSoftmaxTarget(c) for c in classes]), want)
        assert torch.equal(cam(images, 2), engine(loaded, node, images, torch.full((4,), 2)))
        assert not torch.equal(cam(images, [ClassifierOutputTarget(0)] * 4), want)


def test_a_per_class_result_dispatches_on_the_target(loaded, images, tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({
        "expression": "abl", "settings": {},
        "per_class": {"classes": {"1": {"expression": "(* grads acts)"}, "2": {"expression": "cic"}},
                      "fallback": "abl"}}))
    method = load_method(str(tmp_path))
    assert isinstance(method, Dispatch) and set(method.per_class) == {1, 2}
    classes = torch.tensor([1, 2, 0, 2])
    with SyCAM(loaded, None, tmp_path) as cam:  # a LoadedModel brings its default layer
        got = cam(images, classes)
    for i, c in enumerate(classes.tolist()):
        want = engine(loaded, method.expression_for(c), images[i:i + 1], classes[i:i + 1])
        assert float((got[i] - want[0]).abs().max()) < 1e-6


def test_hooks_are_gone_after_an_exception_inside_the_with(loaded, images):
    model = loaded.module
    with pytest.raises(RuntimeError, match="user code"):
        with SyCAM(model, "features.14", EXPR) as cam:
            cam(images[:1])
            raise RuntimeError("user code")
    assert no_hooks(model)
    with pytest.raises(Exception, match="out of range"):
        with SyCAM(model, "features.14", EXPR) as cam:
            cam(images[:1], [99])  # fails inside the engine's computation
    assert no_hooks(model)
    with pytest.raises(MethodError, match="closed"):
        cam(images[:1])


def test_bad_arguments_say_what_to_change(loaded):
    with pytest.raises(MethodError, match="not a submodule"):
        SyCAM(loaded.module, torch.nn.Conv2d(3, 3, 1), "grads")
    with pytest.raises(MethodError, match="one target layer"):
        SyCAM(loaded.module, [loaded.module.features[10], loaded.module.features[14]], "grads")
    with pytest.raises(MethodError, match="Vec or a Map"):
        SyCAM(loaded.module, "features.14", "0.5")
