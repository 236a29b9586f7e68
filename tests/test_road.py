"""ROAD against grad-cam's implementation on the same heatmaps, and AOPC (MoRF / LeRF) from the
Deletion curves of the memoized engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sycam_dsl.metrics import MetricError, MetricInputs, get_metric
from sycam_dsl.metrics.memo import ScoreCache
from sycam_dsl.metrics.perturbation import perturbation_curve
from sycam_dsl.metrics.road import linear_imputation, noisy_imputation, removed_pixels
from sycam_dsl.metrics.scoring import class_scores
from tests.cam_reference import TinyCNN

GRADCAM = "grad-cam is not installed (pip install 'sycam-dsl[gradcam]')"


def setup(n: int = 3, size: int = 32):
    torch.manual_seed(0)
    model = TinyCNN(classes=4, logit_scale=4.0).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=g)
    low = torch.rand(n, 1, 8, 8, generator=g)
    h = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    h = (h - h.amin(dim=(1, 2), keepdim=True)) / (h.amax(dim=(1, 2), keepdim=True) - h.amin(dim=(1, 2), keepdim=True))
    t = torch.tensor([i % 4 for i in range(n)])
    return model, x, h, t, low[:, 0]


# grad-cam passes a torch tensor to np.percentile (its ROAD thresholds): numpy 2 warns, nothing to act on here
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

@pytest.fixture
def road(monkeypatch):
    """grad-cam's ROAD module, its imputer with torch's global generator seeded before each imputation, as
    ours is."""
    module = pytest.importorskip("pytorch_grad_cam.metrics.road", reason=GRADCAM)
    original = module.NoisyLinearImputer.__call__

    def call(self, img, mask):
        torch.manual_seed(0)
        return original(self, img, mask)

    monkeypatch.setattr(module.NoisyLinearImputer, "__call__", call)
    return module


def gradcam_targets(t):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return [ClassifierOutputSoftmaxTarget(int(c)) for c in t]


@pytest.mark.parametrize("name,cls", [("road_morf", "ROADMostRelevantFirstAverage"),
                                      ("road_lerf", "ROADLeastRelevantFirstAverage")])
def test_road_equals_gradcam(road, name, cls):
    model, x, h, t, _ = setup()
    percentiles = [20, 50, 80]
    theirs = getattr(road, cls)(percentiles)(x, h.numpy(), gradcam_targets(t), model)
    ours = get_metric(name, percentiles=percentiles)(MetricInputs(x, t, heatmaps=h, model=model)).per_image
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-6)
    assert float(np.abs(theirs).max()) > 1e-3  # the perturbation changed the scores: the check is not vacuous


def test_road_combined_equals_gradcam(road):
    model, x, h, t, _ = setup(n=2)
    theirs = road.ROADCombined([30, 70])(x, h.numpy(), gradcam_targets(t), model)
    ours = get_metric("road_combined", percentiles=[30, 70])(MetricInputs(x, t, heatmaps=h, model=model)).per_image
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-6)


def test_imputation_solves_the_neighbour_equations():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 12, 10, generator=g)
    removed = torch.rand(12, 10, generator=g) > 0.4
    out = linear_imputation(x, removed).double()
    # every removed pixel is the weighted mean of its in-image neighbours
    k = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64)
    nb = torch.nn.functional.conv2d(out[:, None], k[None, None], padding=1)[:, 0]
    weight = torch.nn.functional.conv2d(torch.ones(1, 1, 12, 10, dtype=torch.float64), k[None, None], padding=1)[0, 0]
    torch.testing.assert_close((nb / weight)[:, removed], out[:, removed], atol=1e-5, rtol=0)
    assert torch.equal(out[:, ~removed].float(), x[:, ~removed])
    noisy = noisy_imputation(x[None], removed[None], noise=0.5, seed=3)[0]
    assert torch.equal(noisy[:, ~removed], x[:, ~removed]) and not torch.equal(noisy, out.float())
    assert torch.equal(noisy, noisy_imputation(x[None], removed[None], noise=0.5, seed=3)[0])  # seeded


def test_constant_heatmap_removes_everything():
    model, x, _, t, _ = setup(n=1)
    removed = removed_pixels(torch.zeros(1, 32, 32), [50], True)[:, 0]
    assert bool(removed.all())
    out = linear_imputation(x[0], removed[0])
    torch.testing.assert_close(out, x[0].mean(dim=(1, 2), keepdim=True).expand_as(out))
    score = get_metric("road_morf", percentiles=[50])(MetricInputs(x, t, heatmaps=torch.zeros(1, 32, 32), model=model))
    assert torch.isfinite(score.per_image).all()


def test_removed_pixels_count_and_order():
    _, _, hs, _, _ = setup(n=1)
    morf = removed_pixels(hs, [25, 75], True)[0]
    lerf = removed_pixels(hs, [25], False)[0, 0]
    h = hs[0]
    assert morf[0].sum() > morf[1].sum() and bool((morf[1] <= morf[0]).all())  # nested: fewer pixels at 75
    assert h[morf[1]].min() >= h[~morf[1]].max()                              # the most relevant ones
    assert h[lerf].max() <= h[~lerf].min()                                    # LeRF: the least relevant ones


def test_road_memo_reuses_imputations():
    model, x, h, t, _ = setup(n=2)
    memo = ScoreCache()
    metric = get_metric("road_morf", percentiles=[40, 60])
    first = metric(MetricInputs(x, t, heatmaps=h, model=model, memo=memo)).per_image
    misses = memo.stats.misses
    again = metric(MetricInputs(x, t, heatmaps=h.clone(), model=model, memo=memo)).per_image
    assert misses == 4 and memo.stats.misses == misses and memo.stats.hits == 4
    assert torch.equal(first, again)


def test_road_options_are_checked():
    model, x, h, t, _ = setup(n=1)
    with pytest.raises(MetricError, match="percentiles"):
        get_metric("road_morf", percentiles=[0, 150])(MetricInputs(x, t, heatmaps=h, model=model))
    with pytest.raises(MetricError, match="no option"):
        get_metric("road_morf", steps=3)


@pytest.mark.parametrize("lerf", [False, True])
def test_aopc_from_the_deletion_curve(lerf):
    model, x, _, t, s = setup()
    steps = 10
    name = "aopc_lerf" if lerf else "aopc_morf"
    inputs = MetricInputs(x, t, saliency=s, model=model, memo=ScoreCache())
    ours = get_metric(name, steps=steps)(inputs).per_image
    curve = perturbation_curve(model, x, t, -s if lerf else s, steps, insert=False)
    base = class_scores(model, x, t)
    expected = torch.cat([torch.zeros(len(t), 1), base[:, None] - curve], dim=1).mean(dim=1)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_aopc_lerf_shares_the_deletion_memo():
    model, x, _, t, s = setup()
    memo = ScoreCache()
    get_metric("aopc_lerf", steps=64)(MetricInputs(x, t, saliency=s, model=model, memo=memo))
    assert memo.stats.hits == 0
    get_metric("deletion", steps=64)(MetricInputs(x, t, saliency=s, model=model, memo=memo))
    assert memo.stats.hits >= len(t)  # at least the step that blurs every cell: the same image in both orders


def test_directions():
    assert get_metric("road_morf").higher_is_better is False and get_metric("road_lerf").higher_is_better
    assert get_metric("aopc_morf").higher_is_better and get_metric("aopc_lerf").higher_is_better is False
    assert get_metric("road_combined").higher_is_better
