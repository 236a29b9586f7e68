"""Metrics (docs/metrics.md) on constructed cases with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sycam_dsl.metrics import (
    Metric,
    MetricError,
    MetricInputs,
    MetricResult,
    average_drop,
    blurred,
    cell_ranks,
    deletion,
    get_metric,
    gt_overlap,
    increase_in_confidence,
    insertion,
    known_metrics,
    perturbation_curve,
    register_metric,
    sch,
    unregister_metric,
)
from sycam_dsl.metrics.perturbation import blur_kernel_size, pixel_cells
from sycam_dsl.metrics.scoring import class_scores

SIZE, GRID = 32, 4          # 32 x 32 images, a 4 x 4 layer grid: cells of 8 x 8 pixels
CELL = 6                    # the relevant cell (row 1, column 2), row-major index
SCALE = 1.5


class RegionModel(nn.Module):
    """Two classes: ``z_0 = SCALE * mean of channel 0 over cell CELL``, ``z_1 = 0``; nothing else
    in the image matters, so ``y_0 = sigmoid(z_0)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c = divmod(CELL, GRID)
        z0 = SCALE * x[:, 0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].mean(dim=(1, 2))
        return torch.stack([z0, torch.zeros_like(z0)], dim=1)


def region_images(n: int = 3, value: float = 2.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g) * 0.3
    r, c = divmod(CELL, GRID)
    x[:, 0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = value
    return x


def saliency_ranking(order: list[int], n: int) -> torch.Tensor:
    """``[n, GRID, GRID]`` saliency whose cells rank in ``order`` (first = highest)."""
    s = torch.zeros(GRID * GRID)
    for rank, cell in enumerate(order):
        s[cell] = GRID * GRID - rank
    return s.view(GRID, GRID).expand(n, GRID, GRID).clone()


GOOD = [CELL] + [i for i in range(GRID * GRID) if i != CELL]
REVERSE = GOOD[::-1]
SECOND = [0, CELL] + [i for i in range(1, GRID * GRID) if i != CELL]


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


# ---- Deletion / Insertion ------------------------------------------------------------------------

def test_deletion_hand_computed_with_given_blur():
    model, x = RegionModel(), region_images()
    t = torch.zeros(3, dtype=torch.long)
    zeros = torch.zeros_like(x)        # x~ = 0: a deleted relevant cell gives z_0 = 0, y_0 = 1/2
    y = sigmoid(SCALE * 2.0)
    drop = (y - 0.5) / y
    got = deletion(model, x, t, saliency_ranking(GOOD, 3), steps=3, blurred_images=zeros)
    torch.testing.assert_close(got, torch.full((3,), drop))
    # relevant cell second: step 1 keeps it, steps 2 and 3 delete it -> 2/3 of the drop
    got = deletion(model, x, t, saliency_ranking(SECOND, 3), steps=3, blurred_images=zeros)
    torch.testing.assert_close(got, torch.full((3,), 2 / 3 * drop))
    got = deletion(model, x, t, saliency_ranking(REVERSE, 3), steps=3, blurred_images=zeros)
    torch.testing.assert_close(got, torch.zeros(3))


def test_insertion_hand_computed_with_given_blur():
    model, x = RegionModel(), region_images()
    t = torch.zeros(3, dtype=torch.long)
    zeros = torch.zeros_like(x)
    y = sigmoid(SCALE * 2.0)
    gain = (y - 0.5) / y              # from y(x~) = 1/2 to y(x), relative to y(x)
    got = insertion(model, x, t, saliency_ranking(SECOND, 3), steps=4, blurred_images=zeros)
    torch.testing.assert_close(got, torch.full((3,), 3 / 4 * gain))
    got = insertion(model, x, t, saliency_ranking(REVERSE, 3), steps=4, blurred_images=zeros)
    torch.testing.assert_close(got, torch.zeros(3))


def test_curve_steps_touch_one_more_cell_each():
    model, x = RegionModel(), region_images(1)
    t = torch.zeros(1, dtype=torch.long)
    ranking = [0, 1, 2, 3, 4, 5, CELL]
    curve = perturbation_curve(model, x, t, saliency_ranking(ranking, 1), steps=7, insert=False,
                               blurred_images=torch.zeros_like(x))
    y = sigmoid(SCALE * 2.0)
    torch.testing.assert_close(curve, torch.tensor([[y] * 6 + [0.5]]))


@pytest.mark.parametrize("name", ["deletion", "insertion"])
def test_relevant_cell_first_beats_its_reverse_with_default_blur(name):
    model, x = RegionModel(), region_images()
    t = torch.zeros(3, dtype=torch.long)
    metric = get_metric(name, steps=5)
    inputs = MetricInputs(x, t, model=model)
    good = metric(inputs.with_heatmaps(torch.zeros(3, SIZE, SIZE), saliency_ranking(GOOD, 3)))
    bad = metric(inputs.with_heatmaps(torch.zeros(3, SIZE, SIZE), saliency_ranking(REVERSE, 3)))
    assert metric.higher_is_better
    assert bool((good.per_image > bad.per_image + 0.1).all()), (good.per_image, bad.per_image)
    assert abs(float(bad.mean)) < 1e-6          # the relevant cell is never touched in 5 steps


def test_batched_equals_one_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3))
    x = torch.randn(4, 3, SIZE, SIZE)
    t = torch.tensor([0, 1, 2, 1])
    s = torch.rand(3, 4, GRID, GRID)                 # 3 candidates
    h = torch.rand(3, 4, SIZE, SIZE)
    for fn, arg in [(deletion, s), (insertion, s)]:
        batched = fn(model, x, t, arg, steps=6, batch_size=50)
        single = torch.stack([torch.stack([fn(model, x[i:i + 1], t[i:i + 1], arg[c, i:i + 1], steps=6,
                                              batch_size=1)[0] for i in range(4)]) for c in range(3)])
        torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-5)
    for fn in (average_drop, increase_in_confidence):
        batched = fn(model, x, t, h, batch_size=7)
        single = torch.stack([fn(model, x, t, h[c], batch_size=1) for c in range(3)])
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    masks = torch.rand(4, SIZE, SIZE) > 0.6
    for fn in (gt_overlap, sch):
        torch.testing.assert_close(fn(h, masks), torch.stack([fn(h[c], masks) for c in range(3)]))
    # through the registry, with the cache shared between candidates
    inputs = MetricInputs(x, t, model=model, batch_size=9)
    m = get_metric("deletion", steps=6)
    torch.testing.assert_close(m(inputs.with_heatmaps(h, s)).per_image,
                               torch.stack([m(inputs.with_heatmaps(h[c], s[c])).per_image for c in range(3)]),
                               atol=1e-6, rtol=1e-5)
    assert "scores" in inputs.cache


def test_model_mode_restored_and_scores_independent_of_batch():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.train()
    x = torch.randn(5, 3, 8, 8)
    t = torch.zeros(5, dtype=torch.long)
    a = class_scores(model, x, t, batch_size=5)
    b = class_scores(model, x, t, batch_size=1)
    torch.testing.assert_close(a, b)
    assert model.training


def test_model_on_another_device_is_reported():
    model = nn.Linear(4, 2).to("meta")
    with pytest.raises(MetricError, match=r"the model is on meta but the metric runs on cpu; move it with"):
        class_scores(model, torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), device="cpu")


def test_cell_ranks_ties_by_index_and_pixel_cells_tile():
    s = torch.tensor([[1.0, 2.0], [2.0, 0.0]])
    assert cell_ranks(s).tolist() == [2, 0, 1, 3]
    assert cell_ranks(torch.zeros(3, 3)).tolist() == list(range(9))
    cells = pixel_cells((3, 2), (10, 5))
    assert cells[:, 0].tolist() == [0, 0, 0, 0, 2, 2, 2, 4, 4, 4]
    assert cells[0].tolist() == [0, 0, 0, 1, 1]
    assert sorted(cells.unique().tolist()) == list(range(6))


def test_blur_is_a_normalized_gaussian():
    assert blur_kernel_size(10.0, (224, 224)) == 51
    assert blur_kernel_size(10.0, (16, 20)) == 31
    const = torch.full((1, 3, 16, 16), 0.7)
    torch.testing.assert_close(blurred(const), const)
    x = torch.zeros(1, 1, 64, 64)
    x[..., 32, 32] = 1.0
    b = blurred(x, 2.0)
    # a point spreads as the (discretized) Gaussian: its centre weight is 1 / (2 pi sigma^2) roughly
    k1 = torch.exp(-torch.arange(-5.0, 6.0) ** 2 / 8)
    k1 = k1 / k1.sum()
    torch.testing.assert_close(b[0, 0, 27:38, 27:38], k1[:, None] * k1[None, :], atol=1e-6, rtol=1e-4)


def test_perturbation_errors():
    model, x = RegionModel(), region_images(2)
    t = torch.zeros(2, dtype=torch.long)
    s = saliency_ranking(GOOD, 2)
    with pytest.raises(MetricError, match=r"steps must be between 1 and the 4x4 = 16 cells"):
        deletion(model, x, t, s, steps=17)
    with pytest.raises(MetricError, match="steps must be"):
        insertion(model, x, t, s, steps=0)
    with pytest.raises(MetricError, match=r"saliency must be \[\.\.\., 2, h, w\]"):
        deletion(model, x, t, s[:1], steps=3)
    with pytest.raises(MetricError, match="targets must be"):
        deletion(model, x, t[:1], s, steps=3)
    with pytest.raises(MetricError, match="target classes must lie in"):
        deletion(model, x, torch.tensor([0, 5]), s, steps=3)
    with pytest.raises(MetricError, match="needs model, saliency"):
        get_metric("deletion")(MetricInputs(x, t, heatmaps=torch.zeros(2, SIZE, SIZE)))


# ---- Average Drop / Increase in Confidence ---------------------------------------------------------

def test_average_drop_of_all_ones_heatmap_is_zero():
    model, x = RegionModel(), region_images()
    t = torch.zeros(3, dtype=torch.long)
    ones = torch.ones(3, SIZE, SIZE)
    torch.testing.assert_close(average_drop(model, x, t, ones), torch.zeros(3))
    torch.testing.assert_close(increase_in_confidence(model, x, t, ones), torch.zeros(3))
    assert not get_metric("average_drop").higher_is_better


def test_average_drop_hand_computed():
    model, x = RegionModel(), region_images(2)
    h = torch.ones(2, SIZE, SIZE)
    r, c = divmod(CELL, GRID)
    h[:, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 0.25       # x * H: the cell's mean falls to 0.5
    y0, y0m = sigmoid(SCALE * 2.0), sigmoid(SCALE * 0.5)
    # image 0 explains class 0 (its score drops); image 1 explains class 1 (its score rises)
    t = torch.tensor([0, 1])
    drop = average_drop(model, x, t, h)
    torch.testing.assert_close(drop, torch.tensor([100 * (y0 - y0m) / y0, 0.0]))
    torch.testing.assert_close(increase_in_confidence(model, x, t, h), torch.tensor([0.0, 100.0]))
    res = get_metric("average_drop")(MetricInputs(x, t, heatmaps=h, model=model))
    torch.testing.assert_close(res.mean, drop.mean())


def test_average_drop_shape_errors():
    model, x = RegionModel(), region_images(2)
    t = torch.zeros(2, dtype=torch.long)
    with pytest.raises(MetricError, match=r"heatmaps must be \[\.\.\., 2, 32, 32\]"):
        average_drop(model, x, t, torch.ones(2, 16, 16))


# ---- Ground-truth overlap / SCH --------------------------------------------------------------------

def test_gt_overlap_exact_on_constructed_mask():
    h = torch.arange(16.0).view(1, 4, 4) / 15           # top 4 pixels: indices 12..15 (last row)
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m.view(-1)[[15, 13, 0, 1]] = True                   # 2 of the top 4 inside
    torch.testing.assert_close(gt_overlap(h, m), torch.tensor([0.5]))
    m2 = torch.zeros(1, 4, 4, dtype=torch.bool)
    m2.view(-1)[[15, 14, 13, 12, 11, 0]] = True          # m = 6: top 6 are 10..15, 5 inside
    torch.testing.assert_close(gt_overlap(h, m2), torch.tensor([5 / 6]))
    # ties: a constant heatmap takes pixels in row-major order
    flat = torch.full((1, 4, 4), 0.5)
    first_row = torch.zeros(1, 4, 4, dtype=torch.bool)
    first_row[:, 0] = True
    torch.testing.assert_close(gt_overlap(flat, first_row), torch.tensor([1.0]))
    torch.testing.assert_close(gt_overlap(flat, first_row.flip(1)), torch.tensor([0.0]))


def test_sch():
    m = torch.zeros(2, 8, 8, dtype=torch.bool)
    m[:, 2:5, 3:7] = True
    inside = torch.rand(2, 8, 8) * m
    torch.testing.assert_close(sch(inside, m), torch.ones(2))
    h = torch.zeros(2, 8, 8)
    h[0, 2, 3], h[0, 0, 0] = 0.75, 0.25                  # 0.75 of the mass inside
    torch.testing.assert_close(sch(h, m), torch.tensor([0.75, 0.0]))   # all-zero heatmap scores 0
    torch.testing.assert_close(sch(h, m.float()), torch.tensor([0.75, 0.0]))


def test_mask_errors():
    h = torch.rand(2, 8, 8)
    with pytest.raises(MetricError, match=r"masks must be \[N, H, W\] = \[2, 8, 8\]"):
        sch(h, torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(MetricError, match="masks must be"):
        gt_overlap(h, torch.ones(3, 8, 8, dtype=torch.bool))
    with pytest.raises(MetricError, match="binary"):
        sch(h, torch.full((2, 8, 8), 0.5))
    empty = torch.ones(2, 8, 8, dtype=torch.bool)
    empty[1] = False
    with pytest.raises(MetricError, match="mask of image 1 is empty"):
        gt_overlap(h, empty)
    with pytest.raises(MetricError, match=r"needs masks \(give --masks DIR\)"):
        get_metric("sch")(MetricInputs(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), heatmaps=h))


# ---- Registry --------------------------------------------------------------------------------------

def test_user_metric_registration():
    def centre(inputs: MetricInputs) -> torch.Tensor:
        assert inputs.heatmaps.dim() == 3           # a per-candidate metric sees [N, H, W] only
        return inputs.heatmaps[:, 2:6, 2:6].sum(dim=(1, 2))

    try:
        m = register_metric("Centre-Mass", centre, higher_is_better=False)
        assert "centre_mass" in known_metrics()
        got = get_metric("centre_mass")
        assert got is m and not got.higher_is_better and not got.batched
        x, t = torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)
        h = torch.zeros(3, 2, 8, 8)
        h[1, 0, 3, 3] = 1.0
        res = got(MetricInputs(x, t, heatmaps=h))   # [C, N, H, W] through a per-candidate metric
        assert res.per_image.tolist() == [[0, 0], [1, 0], [0, 0]]
        assert res.mean.tolist() == [0, 0.5, 0]
        assert bool(got.better(torch.tensor(0.0), torch.tensor(1.0)))
        with pytest.raises(MetricError, match="already registered"):
            register_metric("centre_mass", centre, True)
        with pytest.raises(MetricError, match="has no option steps"):
            get_metric("centre_mass", steps=3)
    finally:
        unregister_metric("centre_mass")
    assert "centre_mass" not in known_metrics()


def test_user_metric_wrong_shape_and_unknown_name():
    try:
        register_metric("bad_shape", lambda inputs: torch.zeros(7), True)
        with pytest.raises(MetricError, match="expected one score per image"):
            get_metric("bad_shape")(MetricInputs(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long),
                                                 heatmaps=torch.zeros(2, 8, 8)))
    finally:
        unregister_metric("bad_shape")
    with pytest.raises(MetricError, match=r"unknown metric 'delet'.*deletion.*insertion"):
        get_metric("delet")


def test_best_shares_and_table():
    from sycam_dsl.metrics.compare import best_shares, compare, format_table

    scores = torch.tensor([[0.1, 0.5, 0.3, 0.2],
                           [0.2, 0.5, 0.1, 0.1],
                           [0.0, 0.4, 0.2, 0.3]])
    assert best_shares(scores, True).tolist() == [0.5, 0.5, 0.25]       # ties count for both
    assert best_shares(scores, False).tolist() == [0.0, 0.5, 0.5]
    metric = get_metric("average_drop")
    results = {n: MetricResult(n, scores[i], False) for i, n in enumerate("abc")}
    rows = compare(results, {"a": "grads", "b": "pgrads", "c": "cic"}, metric)
    assert [r.name for r in rows] == ["a", "b", "c"] and [r.best_share for r in rows] == [0.0, 0.5, 0.5]
    assert rows[0].mean == pytest.approx(0.275)
    table = format_table(rows, metric, 4)
    assert "average_drop on 4 images (lower is better)" in table and "50.0%" in table


def test_builtin_directions():
    want = {"average_drop": False, "increase_in_confidence": True, "deletion": True, "insertion": True,
            "gt_overlap": True, "sch": True}
    for name, higher in want.items():
        m = get_metric(name)
        assert isinstance(m, Metric) and m.higher_is_better is higher and m.batched


# ---- eval / explain commands ---------------------------------------------------------------------

def _cli(argv: list[str]) -> None:
    from sycam_dsl.cli import build_parser

    args = build_parser().parse_args(argv)
    args.handler(args)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(3):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        m = np.zeros((40, 40), np.uint8)
        m[8:30, 4 + i:28] = 255
        Image.fromarray(m).save(root / "masks" / f"im{i}.png")
    return root


MODEL = ["--model", "tests.cam_reference:TinyCNN", "--weights", "random:0", "--layer", "features.4", "--size", "32",
         "--no-cache", "--quiet"]


def test_eval_command_table_and_json(image_folder, capsys):
    import json

    from sycam_dsl.cam.images import load_images
    from sycam_dsl.models import load_model

    from .cam_reference import reference_terminals

    out = image_folder / "eval.json"
    _cli(["eval", "(relu (- grads abl))", *MODEL, "--images", str(image_folder / "images"), "--metric", "deletion",
          "--steps", "5", "--baselines", "GradCAM,LayerCAM", "--json", str(out)])
    table = capsys.readouterr().out
    assert "deletion on 3 images (higher is better)" in table
    for name in ("GradCAM", "LayerCAM", "expr 1", "(relu (- grads abl))"):
        assert name in table
    res = json.loads(out.read_text())
    assert res["layer"] == "features.4" and len(res["files"]) == 3 and len(res["metrics"]) == 1
    res = res["metrics"][0]
    assert res["metric"] == "deletion" and res["options"]["steps"] == 5
    assert [m["name"] for m in res["methods"] if not m["control"]] == ["GradCAM", "LayerCAM", "expr 1"]
    # every image has a best method; the scores are the metric's on the engine's heatmaps
    best = [m["best_share"] for m in res["methods"]]
    assert sum(best) >= 1.0 - 1e-9
    model = load_model("tests.cam_reference:TinyCNN", "random:0")
    x = load_images(image_folder / "images", size=32, normalize=model.normalize).images
    terms, acts, targets = reference_terminals(model.module, model.module.features[4], x, names=("grads", "A"))
    s = torch.relu((terms["grads"][:, :, None, None] * acts).sum(1))
    want = deletion(model.module, x, targets, s, steps=5)
    torch.testing.assert_close(torch.tensor(res["methods"][0]["per_image"], dtype=torch.float32), want,
                               atol=1e-5, rtol=1e-4)


def test_eval_command_masks_and_errors(image_folder, capsys):
    _cli(["eval", *MODEL, "--images", str(image_folder / "images"), "--masks", str(image_folder / "masks"),
          "--metric", "sch", "--baselines", "GradCAM"])
    assert "sch on 3 images" in capsys.readouterr().out
    _cli(["eval", *MODEL, "--images", str(image_folder / "images"), "--metric", "average-drop", "--baselines",
          "GradCAM"])
    out = capsys.readouterr().out     # Increase in Confidence comes beside Average Drop
    assert "average_drop on 3 images (lower is better)" in out and "increase_in_confidence on 3 images" in out
    # a missing --masks is reported before anything is loaded (the image folder here does not exist)
    with pytest.raises(MetricError, match="give --masks DIR"):
        _cli(["eval", *MODEL, "--images", str(image_folder / "missing"), "--metric", "gt_overlap"])
    with pytest.raises(MetricError, match="unknown metric 'nope'"):
        _cli(["eval", *MODEL, "--images", str(image_folder / "images"), "--metric", "nope"])
    with pytest.raises(MetricError, match="steps must be between 1 and the 16x16 = 256 cells"):
        _cli(["eval", *MODEL, "--images", str(image_folder / "images"), "--steps", "300", "--baselines", "GradCAM"])


def test_explain_command_writes_an_overlay(image_folder, capsys):
    from PIL import Image

    out = image_folder / "explain.png"
    _cli(["explain", "(relu G)", *MODEL, "--image", str(image_folder / "images" / "im1.png"), "-o", str(out),
          "--metric", "insertion", "--steps", "8", "--target", "2"])
    msg = capsys.readouterr().out
    assert "(relu G)" in msg and "class 2" in msg and "insertion = " in msg
    with Image.open(out) as im:
        assert im.width > 32 and im.height > 32
