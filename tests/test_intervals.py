"""The paired bootstrap interval: degenerate cases exactly, a general case against an independent
numpy reference, and the verdict's direction for both kinds of metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sycam_dsl.metrics.intervals import paired_bootstrap


def numpy_reference(d: np.ndarray, resamples: int, level: float, seed: int) -> tuple[float, float]:
    """The percentile bootstrap of the mean of ``d``, written independently with numpy's RNG."""
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def test_interval_matches_an_independent_reference():
    rng = np.random.default_rng(7)
    b = rng.uniform(0.2, 0.6, 200)
    a = b + rng.normal(0.01, 0.03, 200)
    got = paired_bootstrap(torch.from_numpy(a), torch.from_numpy(b), higher_is_better=True, seed=3)
    lo, hi = numpy_reference(a - b, 10_000, 0.95, seed=11)
    se = float(np.std(a - b, ddof=1) / np.sqrt(len(a)))
    # two Monte Carlo estimates of the same quantiles: they agree to a small fraction of the standard error
    assert got.low == pytest.approx(lo, abs=0.1 * se) and got.high == pytest.approx(hi, abs=0.1 * se)
    assert got.mean == pytest.approx(float(np.mean(a - b)))
    assert got.better_share == pytest.approx(float(np.mean(a > b)))
    assert got.verdict == "better"


def test_all_equal_differences_give_a_point_interval():
    a = torch.full((30,), 0.5, dtype=torch.float64)
    got = paired_bootstrap(a + 0.01, a, higher_is_better=True)
    assert got.low == pytest.approx(0.01) and got.high == pytest.approx(0.01) and got.verdict == "better"
    same = paired_bootstrap(a, a, higher_is_better=True)
    assert (same.low, same.high, same.better_share) == (0.0, 0.0, 0.0)
    assert same.verdict == "no significant difference"


def test_a_single_image_is_never_significant():
    got = paired_bootstrap(torch.tensor([0.9]), torch.tensor([0.1]), higher_is_better=True)
    assert got.n == 1 and got.low == got.high == pytest.approx(0.8)
    assert got.verdict == "no significant difference"


def test_lower_is_better_metrics_are_oriented():
    b = torch.linspace(5, 15, 50, dtype=torch.float64)
    got = paired_bootstrap(b - 1.0, b, higher_is_better=False)   # first has a lower Average Drop: better
    assert got.mean == pytest.approx(1.0) and got.verdict == "better"
    assert "is better than ScoreCAM (+1.0000" in got.sentence("SyCAM", "ScoreCAM")
    worse = paired_bootstrap(b + 1.0, b, higher_is_better=False)
    assert worse.verdict == "worse" and "is worse than" in worse.sentence("SyCAM", "ScoreCAM")


def test_the_interval_is_seeded():
    a, b = torch.rand(40, generator=torch.Generator().manual_seed(1)), torch.rand(40)
    assert paired_bootstrap(a, b, True, seed=5) == paired_bootstrap(a, b, True, seed=5)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        paired_bootstrap(torch.zeros(3), torch.zeros(4), True)
    with pytest.raises(ValueError):
        paired_bootstrap(torch.zeros(0), torch.zeros(0), True)


def test_the_result_compares_sycam_with_each_method_on_the_same_images():
    from sycam_dsl.metrics import get_metric
    from sycam_dsl.metrics.compare import Row
    from sycam_dsl.run.result import SYCAM, comparison_lines, comparisons

    metric = get_metric("average_drop")            # lower is better
    base = [10.0, 12.0, 9.0, 11.0, 10.5, 8.0]
    rows = [Row("ScoreCAM", "cic", sum(base) / 6, 0.0, base),
            Row(SYCAM, "(* cic cic)", 0.0, 1.0, [b - 1.0 for b in base]),
            Row("GradCAM", "grads", 0.0, 0.0, [b - 1.0 for b in base])]
    comps = comparisons([(metric, rows)])
    versus = {v["method"]: v for v in comps[0]["versus"]}
    assert set(versus) == {"ScoreCAM", "GradCAM"}
    assert versus["ScoreCAM"]["verdict"] == "better" and versus["ScoreCAM"]["mean_difference"] == pytest.approx(1.0)
    assert versus["GradCAM"]["verdict"] == "no significant difference" and versus["GradCAM"]["better_share"] == 0.0
    direct = paired_bootstrap(torch.tensor(rows[1].per_image), torch.tensor(base), higher_is_better=False)
    assert (versus["ScoreCAM"]["low"], versus["ScoreCAM"]["high"]) == (direct.low, direct.high)
    lines = comparison_lines({"comparisons": comps, "evaluation_search": None})
    assert lines[1] == "  average_drop: " + versus["ScoreCAM"]["sentence"]


def test_an_interval_that_straddles_zero_is_no_significant_difference():
    b = torch.zeros(40, dtype=torch.float64)
    a = torch.tensor([0.1, -0.1] * 20, dtype=torch.float64)   # as often better as worse
    got = paired_bootstrap(a, b, higher_is_better=True)
    assert got.low < 0 < got.high and got.verdict == "no significant difference"
    assert "shows no significant difference from ScoreCAM" in got.sentence("SyCAM", "ScoreCAM")
