"""Baselines as expressions of the weight language, the heatmap engine, and agreement with the
reference implementations of the PyPI package grad-cam (``pytorch_grad_cam``, a test-only
dependency) on the same model, layer, images and targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from sycam_dsl.baselines import BASELINE_EXPRESSIONS, SEARCH_BASELINES, baseline, baselines
from sycam_dsl.errors import ShapeError, SycamError
from sycam_dsl.evaluate import Terminals, evaluate
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import terminal_types
from sycam_dsl.lang.types import Type
from sycam_dsl.template import heatmaps, layer_saliency, upsample

from .cam_reference import TinyCNN, gradcam_scorecam_weights, reference_terminals

# ---- the heatmap engine ----------------------------------------------------------------------------


def test_heatmaps_are_upsampled_normalized_saliency():
    torch.manual_seed(0)
    acts = torch.rand(3, 5, 4, 4)
    w = torch.randn(3, 5)
    w[:, 0] = 5.0                    # every saliency map positive somewhere, so none is constant
    s = torch.relu((w[:, :, None, None] * acts).sum(1))
    torch.testing.assert_close(layer_saliency(w, acts, Type.VEC), s)
    up = F.interpolate(s[:, None], size=(16, 12), mode="bilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).min(1).values[:, None, None]
    hi = up.flatten(1).max(1).values[:, None, None]
    h = heatmaps(w, acts, Type.VEC, (16, 12))
    torch.testing.assert_close(h, (up - lo) / (hi - lo))
    assert h.shape == (3, 16, 12) and float(h.min()) == 0.0 and float(h.max()) == 1.0
    torch.testing.assert_close(upsample(s, (16, 12)), up)


def test_constant_saliency_gives_zeros_and_map_weights_broadcast():
    acts = torch.rand(2, 3, 4, 4)
    h = heatmaps(-torch.ones(2, 3), acts, Type.VEC, (8, 8))        # ReLU of a negative sum: constant 0
    assert bool((h == 0).all())
    w = torch.randn(2, 3)
    torch.testing.assert_close(heatmaps(w[..., None, None], acts, Type.MAP, (8, 8)),
                               heatmaps(w, acts, Type.VEC, (8, 8)))


def test_batched_candidates_chunked_equal_one_at_a_time():
    torch.manual_seed(1)
    acts = torch.rand(4, 6, 5, 5)
    for wt, w in [(Type.VEC, torch.randn(7, 4, 6)), (Type.MAP, torch.randn(7, 4, 6, 5, 5))]:
        one = torch.stack([heatmaps(w[c], acts, wt, (20, 20)) for c in range(7)])
        chunked = heatmaps(w, acts, wt, (20, 20), max_elements=1)       # one candidate per chunk
        torch.testing.assert_close(heatmaps(w, acts, wt, (20, 20)), one)
        torch.testing.assert_close(chunked, one)
        torch.testing.assert_close(layer_saliency(w, acts, wt, max_elements=1),
                                   torch.stack([layer_saliency(w[c], acts, wt) for c in range(7)]))


def test_heatmap_shape_errors():
    acts = torch.rand(2, 3, 4, 4)
    with pytest.raises(ShapeError, match=r"Vec weights must be \[\.\.\., 2, 3\]"):
        heatmaps(torch.rand(2, 4), acts, Type.VEC, (8, 8))
    with pytest.raises(ShapeError, match="Map weights must be"):
        heatmaps(torch.rand(2, 3, 5, 4), acts, Type.MAP, (8, 8))
    with pytest.raises(ShapeError, match=r"activations must be \[N, K, h, w\]"):
        heatmaps(torch.rand(2, 3), acts[0], Type.VEC, (8, 8))


# ---- baselines as expressions ------------------------------------------------------------------------


def test_baselines_are_parsed_expressions_with_the_right_types():
    want = {"GradCAM": Type.VEC, "GradCAM++": Type.VEC, "GradCAM++pos": Type.VEC, "ScoreCAM": Type.VEC,
            "AblationCAM": Type.VEC,
            "XGradCAM": Type.VEC, "HiResCAM": Type.MAP, "LayerCAM": Type.MAP, "ScoreCAM-softmax": Type.VEC}
    assert [b.name for b in baselines()] == list(want)
    for b in baselines():
        assert b.node == parse_expr(BASELINE_EXPRESSIONS[b.name], terminal_types())
        assert b.node.type == want[b.name]
    assert baseline("gradcam++").name == "GradCAM++"
    assert set(SEARCH_BASELINES) <= set(want)
    with pytest.raises(SycamError, match="unknown baseline 'FooCAM'.*GradCAM"):
        baseline("FooCAM")


def test_baseline_heatmaps_go_through_evaluate():
    terms = Terminals.random(["grads", "pgrads", "cic", "abl", "mlogits", "G", "A"], n=3, k=8, hw=(4, 4))
    acts = terms["A"].abs()
    for b in baselines():
        w = evaluate(b.node, terms)
        torch.testing.assert_close(b.heatmaps(terms, acts, (16, 16)), heatmaps(w, acts, b.node.type, (16, 16)))
        torch.testing.assert_close(b.saliency(terms, acts), layer_saliency(w, acts, b.node.type))
    G, A = terms["G"], terms["A"]
    torch.testing.assert_close(baseline("XGradCAM").weights(terms), (A * G).sum((2, 3)) / A.sum((2, 3)))
    torch.testing.assert_close(baseline("LayerCAM").weights(terms), G.relu())
    torch.testing.assert_close(baseline("ScoreCAM-softmax").weights(terms), terms["mlogits"].softmax(dim=1))


# ---- agreement with grad-cam -------------------------------------------------------------------------

#: our method name -> grad-cam's class name
GRADCAM_CLASSES = {
    "GradCAM": "GradCAM", "XGradCAM": "XGradCAM", "HiResCAM": "HiResCAM", "LayerCAM": "LayerCAM",
    "AblationCAM": "AblationCAM", "ScoreCAM": "ScoreCAM", "GradCAM++": "GradCAMPlusPlus",
}
MIN_CORRELATION = 0.99


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of ``[N, H, W]`` maps."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def gradcam_heatmaps(method: str, model, layer, images, targets, reshape_transform=None) -> torch.Tensor:
    """grad-cam's ``[N, H, W]`` heatmaps (upsampled with cv2 and min-max scaled); ``reshape_transform``:
    grad-cam's, for a layer with token or channels-last output."""
    # imported here, so that only the tests comparing with grad-cam skip when it is missing
    gradcam = pytest.importorskip("pytorch_grad_cam", reason="grad-cam is not installed (pip install grad-cam); "
                                                             "the agreement tests need it")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = getattr(gradcam, GRADCAM_CLASSES[method])(model=model, target_layers=[layer],
                                                    reshape_transform=reshape_transform)
    if hasattr(cam, "batch_size"):
        cam.batch_size = 64                     # ScoreCAM / AblationCAM: masked copies per forward pass
    try:
        return torch.from_numpy(cam(images, targets=[ClassifierOutputTarget(int(c)) for c in targets]))
    finally:
        cam.activations_and_grads.release()


def assert_agree(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, what
    r = pearson(ours, ref)
    assert bool((r >= MIN_CORRELATION).all()), f"{what}: per-image Pearson {r.tolist()}"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    images = torch.randn(3, 3, 32, 32)
    layer = model.features[4]        # mid-network: gradients vary over positions (16 x 16 x 16)
    terms, acts, targets = reference_terminals(model, layer, images)
    return model, layer, images, terms, acts, targets


@pytest.fixture(scope="module")
def tiny_steep():
    """The tiny CNN with logits (and gradients) 100x larger: there grad-cam's GradCAM++ eps (1e-6) no
    longer swamps ``2 G^2``, so every term of the alpha formula counts."""
    torch.manual_seed(0)
    model = TinyCNN(logit_scale=100.0).eval()
    images = torch.randn(3, 3, 32, 32)
    terms, acts, targets = reference_terminals(model, model.features[4], images, names=("grads", "G", "A"))
    return model, model.features[4], images, terms, acts, targets


@pytest.fixture(scope="module")
def resnet18_layer4():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(2, 3, 128, 128)
    terms, acts, targets = reference_terminals(model, model.layer4, images, names=("grads", "pgrads", "G", "A"))
    return model, model.layer4, images, terms, acts, targets


@pytest.fixture(scope="module")
def resnet18_layer3():
    """layer3 at 64 px (256 x 4 x 4): spatially varying gradients, and cheap enough for the
    K forward passes per image that ScoreCAM and AblationCAM need."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(1, 3, 64, 64)
    terms, acts, targets = reference_terminals(model, model.layer3, images,
                                               names=("grads", "pgrads", "abl", "G", "A"))
    return model, model.layer3, images, terms, acts, targets


def _check(case, methods):
    model, layer, images, terms, acts, targets = case
    for name in methods:
        ours = baseline(name).heatmaps(terms, acts, tuple(images.shape[-2:]))
        assert_agree(ours, gradcam_heatmaps(name, model, layer, images, targets), name)


def _check_scorecam_variant(case):
    """grad-cam's ScoreCAM weights are ``softmax_k z_c(x * M_k)``, not ``cic`` (docs/language.md#terminals); they are
    computed by a test-only function and evaluated through the ``ScoreCAM`` expression."""
    model, layer, images, terms, acts, targets = case
    w = gradcam_scorecam_weights(model, layer, images, targets)
    ours = baseline("ScoreCAM").heatmaps(Terminals({"cic": w, "A": acts}), acts, tuple(images.shape[-2:]))
    assert_agree(ours, gradcam_heatmaps("ScoreCAM", model, layer, images, targets), "ScoreCAM (grad-cam variant)")


def test_tiny_cnn_agrees_with_gradcam(tiny):
    _check(tiny, ["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM", "AblationCAM"])
    _check_scorecam_variant(tiny)


def test_steep_tiny_cnn_agrees_with_gradcam(tiny_steep):
    _check(tiny_steep, ["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM"])


def test_resnet18_layer4_agrees_with_gradcam(resnet18_layer4):
    _check(resnet18_layer4, ["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM"])


def test_resnet18_layer3_agrees_with_gradcam(resnet18_layer3):
    _check(resnet18_layer3, ["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM", "AblationCAM"])
    _check_scorecam_variant(resnet18_layer3)


def test_engine_terminals_agree_with_gradcam(tiny):
    """The same comparison on terminals from ``sycam_dsl.cam.compute.compute_terminals``."""
    from sycam_dsl.cam.compute import compute_terminals as compute

    model, layer, images, _, _, _ = tiny
    terms, info = compute(model, "features.4", images, None, ["grads", "abl", "cic", "G", "A"], progress=False)
    case = (model, layer, images, terms, info.acts, info.targets)
    _check(case, ["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM", "AblationCAM"])
    # grad-cam's ScoreCAM variant as an expression of our grammar, (softmax mlogits), on the
    # engine's terminals (its masks use align_corners=False, grad-cam's True)
    terms, info = compute(model, "features.4", images, None, ["mlogits", "A"], progress=False)
    ours = baseline("ScoreCAM-softmax").heatmaps(terms, info.acts, (32, 32))
    assert_agree(ours, gradcam_heatmaps("ScoreCAM", model, layer, images, info.targets), "ScoreCAM (grad-cam variant)")
