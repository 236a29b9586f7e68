"""The model-parameter randomization check: Spearman, SSIM, the check on the bundled model, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sycam_dsl.baselines import baseline
from sycam_dsl.bundled import bundled_images, load_bundled_model
from sycam_dsl.cam.sanity import (
    SanityError,
    average_ranks,
    modules_after,
    randomization_check,
    randomized_copy,
    spearman,
    ssim,
)
from sycam_dsl.cli.main import main as cli_main

# -- Spearman -------------------------------------------------------------------------------------

def test_average_ranks_with_ties():
    r = average_ranks(torch.tensor([[10.0, 20.0, 20.0, 5.0, 20.0]]))
    assert r.tolist() == [[2.0, 4.0, 4.0, 1.0, 4.0]]


def test_spearman_hand_computed_with_ties():
    # x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] -> ranks [1, 3, 2, 4]
    # centered: x' = [-1.5, 0, 0, 1.5], y' = [-1.5, 0.5, -0.5, 1.5]; sum x'y' = 4.5,
    # |x'|^2 = 4.5, |y'|^2 = 5 -> rho = 4.5 / sqrt(22.5) = 0.948683...
    rho = spearman(torch.tensor([[1.0, 2.0, 2.0, 3.0]]), torch.tensor([[1.0, 3.0, 2.0, 4.0]]))
    assert float(rho[0]) == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-12)
    assert float(spearman(torch.tensor([[1.0, 2, 3]]), torch.tensor([[3.0, 2, 1]]))[0]) == pytest.approx(-1)


def test_spearman_matches_scipy_and_constant_is_nan():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (5, 8, 8), generator=g).float()  # many ties
    b = a + torch.randint(0, 4, (5, 8, 8), generator=g).float()
    got = spearman(a, b)
    for i in range(5):
        assert float(got[i]) == pytest.approx(stats.spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-10)
    assert torch.isnan(spearman(torch.zeros(1, 4, 4), a[:1, :4, :4]))[0]


# -- SSIM -----------------------------------------------------------------------------------------

def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM as scikit-image computes it with gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1: scipy's Gaussian filter (truncate 3.5 -> 11 taps), borders of 5 cropped."""
    ndimage = pytest.importorskip("scipy.ndimage")

    def f(t):
        return ndimage.gaussian_filter(t, sigma=1.5, truncate=3.5, mode="reflect")

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def test_ssim_of_a_map_with_itself_is_one_and_matches_the_reference():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 32, 40, generator=g, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(3, 32, 40, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64), atol=1e-12)
    got = ssim(a, b)
    for i in range(3):
        assert float(got[i]) == pytest.approx(_ssim_reference(a[i].numpy(), b[i].numpy()), abs=1e-10)
    assert float(ssim(a, 1 - a)[0]) < 0  # anti-correlated maps


def test_ssim_refuses_maps_smaller_than_the_window():
    with pytest.raises(SanityError, match="at least 11x11"):
        ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))


# -- the check on the bundled model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled():
    return load_bundled_model(), bundled_images(8).images


def test_layers_after_follow_the_forward_order(bundled):
    model, images = bundled
    assert modules_after(model, None, images[:1]) == ["classifier"]  # features.14 is the last ReLU
    assert modules_after(model, "features.8", images[:1]) == ["features.8", "features.9", "features.12",
                                                             "features.13", "classifier"]


def test_randomized_copy_leaves_the_model_and_rng_alone(bundled):
    model, _ = bundled
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    state = torch.random.get_rng_state()
    a = randomized_copy(model, ["features.12", "features.13"], seed=3)
    b = randomized_copy(model, ["features.12", "features.13"], seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())
    assert torch.equal(a.features[12].weight, b.features[12].weight)
    assert not torch.equal(a.features[12].weight, model.module.features[12].weight)
    assert float(a.features[13].running_var.sub(1).abs().max()) == 0  # BatchNorm statistics reset


def test_nothing_randomized_gives_similarity_one(bundled):
    model, images = bundled
    methods = {"GradCAM": baseline("GradCAM").node, "GradCAM++": baseline("GradCAM++").node}
    report = randomization_check(model, None, images, None, methods, modules=[])
    for sim in report.methods.values():
        assert sim.mean_spearman > 0.99 and sim.mean_ssim > 0.99


def test_randomized_layers_lower_gradcam_similarity(bundled):
    model, images = bundled
    methods = {"GradCAM": baseline("GradCAM").node}
    head = randomization_check(model, None, images, None, methods, seed=0)
    assert head.randomized == ["classifier"]
    assert head.methods["GradCAM"].mean_spearman < 0.5
    deep = randomization_check(model, None, images, None, methods, seed=0, start="features.8")
    assert deep.randomized[0] == "features.8"
    assert deep.methods["GradCAM"].mean_spearman < 0.5 and deep.methods["GradCAM"].mean_ssim < 0.5
    # the same targets are explained under both models
    assert torch.equal(deep.targets, head.targets)


# -- the command ----------------------------------------------------------------------------------

def _result(folder, expression="acts", test_indices=(), **settings):
    folder.mkdir(parents=True, exist_ok=True)
    base = {"model": "bundled-small-cnn", "model_source": "bundled", "weights": None, "layer": "features.14",
            "images": "<bundled>", "size": 64, "bundled_benchmark": True}
    (folder / "result.json").write_text(json.dumps({
        "expression": expression, "images": {"total": 8, "evaluated": 8, "source": "<bundled>"},
        "test_split": {"indices": list(test_indices)}, "settings": {**base, **settings}}))
    return folder


def test_cli_checks_the_test_split_images_only(tmp_path, capsys):
    from sycam_dsl.cam.sanity import check_result, spread
    from sycam_dsl.lang.sexpr import parse_expr
    from sycam_dsl.lang.terminals import terminal_types

    out = tmp_path / "s.json"
    folder = _result(tmp_path / "run", expression="grads", test_indices=[1, 4, 6])
    assert cli_main(["sanity", str(folder), "--images", "10", "--quiet", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["images"] == 3
    # the same figures as a check on exactly those three images
    images = bundled_images(8).images[[1, 4, 6]]
    node = parse_expr("grads", terminal_types())
    ref = check_result(load_bundled_model("cpu"), "features.14", images, {"SyCAM": node}, {"SyCAM": "grads"},
                       "SyCAM")
    assert data["methods"][0]["spearman"] == ref["methods"][0]["spearman"]
    assert spread(8, 3).tolist() == [0, 4, 7] and spread(2, 20).tolist() == [0, 1]
    bad = _result(tmp_path / "bad", test_indices=[3, 99])
    capsys.readouterr()
    assert cli_main(["sanity", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test_split.indices do not fit the 8 images" in err


def test_cli_prints_the_table_and_flags_an_insensitive_expression(tmp_path, capsys):
    # ``acts`` weights the activations by their means: randomizing the head after features.14 leaves
    # its heatmaps unchanged, the metric-gaming case the check is for.
    out = tmp_path / "s.json"
    code = cli_main(["sanity", str(_result(tmp_path / "run")), "--images", "3", "--quiet", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.out.splitlines()
    assert lines[1].split()[:3] == ["method", "Spearman", "SSIM"]
    names = [line.split()[0] for line in lines[2:]]
    assert names == ["SyCAM", "GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM"]
    assert float(lines[2].split()[1]) > 0.99
    assert "sycam-dsl: warning: acts is markedly less sensitive" in captured.err
    data = json.loads(out.read_text())
    assert data["flagged"] and data["randomized"] == ["classifier"] and len(data["methods"][0]["spearman"]) == 3


def test_cli_missing_result_is_one_line(tmp_path, capsys):
    assert cli_main(["sanity", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sycam-dsl: error: no result.json")


def test_cli_missing_setting_is_one_line(tmp_path, capsys):
    folder = _result(tmp_path / "run", bundled_benchmark=False, model="resnet18", model_source="torchvision",
                     layer=None)
    assert cli_main(["sanity", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "settings.layer is missing" in err
