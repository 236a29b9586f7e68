"""The Quantus bridge: any Quantus metric by name, with options, per-image scores and Quantus's direction,
driving a short search on the bundled benchmark; and the ``--metric-option`` command-line option."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sycam_dsl.bundled import bundled_images, load_bundled_model
from sycam_dsl.cli import main
from sycam_dsl.metrics import MetricError, MetricInputs, get_metric
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.synthesis import Budget, SearchOptions
from tests.cam_reference import TinyCNN


@pytest.fixture
def quantus():
    return pytest.importorskip("quantus", reason="Quantus is not installed (pip install 'sycam-dsl[quantus]')")


def test_without_quantus_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "quantus", None)  # import fails as when not installed
    with pytest.raises(MetricError, match=r"Quantus is not installed: pip install 'sycam-dsl\[quantus\]'"):
        get_metric("quantus:RegionPerturbation")


def small():
    torch.manual_seed(0)
    model = TinyCNN(classes=4, logit_scale=4.0).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 32, 32, generator=g)
    return model, x, torch.tensor([0, 1, 2]), torch.rand(3, 32, 32, generator=g)


def test_per_image_scores_and_direction_from_quantus(quantus):
    model, x, t, h = small()
    metric = get_metric("quantus:region_perturbation", patch_size=8, regions_evaluation=3)
    assert metric.name == "quantus:RegionPerturbation"
    assert metric.higher_is_better == (quantus.RegionPerturbation.score_direction == quantus.helpers.enums.ScoreDirection.HIGHER)
    ours = metric(MetricInputs(x, t, heatmaps=h, model=model)).per_image
    theirs = quantus.RegionPerturbation(patch_size=8, regions_evaluation=3, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=h[:, None].numpy(), device="cpu")
    np.testing.assert_allclose(ours.numpy(), [np.mean(c) for c in theirs], rtol=1e-6, atol=1e-9)
    assert get_metric("quantus:RegionPerturbation", higher_is_better=True).higher_is_better
    sparse = get_metric("quantus:Sparseness")
    assert sparse.higher_is_better == (quantus.Sparseness.score_direction == quantus.helpers.enums.ScoreDirection.HIGHER)
    assert sparse(MetricInputs(x, t, heatmaps=h, model=model)).per_image.shape == (3,)


def test_errors_are_one_line(quantus):
    model, x, t, h = small()
    with pytest.raises(MetricError, match="Quantus has no metric 'NoSuchMetric'"):
        get_metric("quantus:NoSuchMetric")
    with pytest.raises(MetricError, match="no option colour"):
        get_metric("quantus:RegionPerturbation", colour=1)
    with pytest.raises(MetricError, match="unknown metric family"):
        get_metric("nosuch:Thing")
    with pytest.raises(MetricError, match="explains perturbed inputs"):
        get_metric("quantus:MaxSensitivity", nr_samples=2)(MetricInputs(x, t, heatmaps=h, model=model))


def test_quantus_metric_drives_a_short_search(quantus, tmp_path):
    images = bundled_images(12, seed=5)
    result = synthesize(load_bundled_model(), None, images, metric="quantus:RegionPerturbation",
                        metric_options={"patch_size": 16, "regions_evaluation": 3, "higher_is_better": True},
                        budget=Budget(candidates=4), data=DataOptions(use_cache=False),
                        search=SearchOptions(level_sizes=(4, None), equivalence_size=4, test_split=0),
                        output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run")
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result.best is not None and d["counts"]["considered"] == 4
    assert d["metric"]["name"] == "quantus:RegionPerturbation" and d["metric"]["higher_is_better"] is True
    assert d["metric"]["options"]["patch_size"] == 16
    table = d["evaluation"][0]
    assert table["metric"] == "quantus:RegionPerturbation"
    assert {m["name"] for m in table["methods"]} >= {"GradCAM", "SyCAM"}


def test_metric_option_on_the_command_line(quantus, tmp_path, capsys):
    from sycam_dsl.bundled import write_bundled

    root = write_bundled(tmp_path / "imgs", n=6, seed=2)
    args = ["eval", "grads", "--model", "bundled", "--images", str(root / "images"), "--baselines", "GradCAM", "--quiet",
            "--no-cache", "--json", str(tmp_path / "scores.json")]
    assert main([*args, "--metric", "road_morf,quantus:Sparseness", "--metric-option", "percentiles=[50]"]) == 0
    assert "road_morf" in capsys.readouterr().out
    scored = {m["metric"]: m for m in json.loads((tmp_path / "scores.json").read_text())["metrics"]}
    assert scored["road_morf"]["options"] == {"percentiles": [50]}              # the JSON value, parsed
    assert scored["quantus:Sparseness"]["options"] == {}                        # only where the metric takes it
    assert len(scored["quantus:Sparseness"]["methods"][0]["per_image"]) == 6
    assert main([*args, "--metric", "deletion", "--metric-option", "percentiles=[50]"]) == 2
    assert "--metric-option percentiles: no metric of deletion takes it" in capsys.readouterr().err
    assert main([*args, "--metric", "road_morf", "--metric-option", "percentiles"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
