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
    # two comparisons form the family: ScoreCAM's lead (p = 2 / 10001, the smallest) survives Holm, GradCAM's tie does not lead
    assert versus["ScoreCAM"]["family_verdict"] == "better" and versus["ScoreCAM"]["family_size"] == 2
    assert versus["GradCAM"]["family_verdict"] == "no significant difference" and versus["GradCAM"]["p_holm"] == 1.0
    assert "is better than ScoreCAM" in versus["ScoreCAM"]["sentence"] and "over 2 comparisons" in versus["ScoreCAM"]["sentence"]


def test_an_interval_that_straddles_zero_is_no_significant_difference():
    b = torch.zeros(40, dtype=torch.float64)
    a = torch.tensor([0.1, -0.1] * 20, dtype=torch.float64)   # as often better as worse
    got = paired_bootstrap(a, b, higher_is_better=True)
    assert got.low < 0 < got.high and got.verdict == "no significant difference"
    assert "shows no significant difference from ScoreCAM" in got.sentence("SyCAM", "ScoreCAM")


def _brute_force_holm(p: list[float], alpha: float) -> list[bool]:
    """Holm's procedure as its definition states it: walk the p-values from the smallest, reject
    while ``p_(i) <= alpha / (m - i)`` (strictly below, as ``family_verdicts`` compares), stop at the first that fails."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = [False] * len(p)
    for rank, i in enumerate(order):
        if p[i] < alpha / (len(p) - rank):
            rejected[i] = True
        else:
            break
    return rejected


@pytest.mark.parametrize("seed", range(20))
def test_holm_rejects_exactly_what_the_step_down_definition_rejects(seed):
    from sycam_dsl.metrics.intervals import holm
    gen = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 12, (1,), generator=gen))
    p = (torch.rand(m, generator=gen) ** 3 * 0.2).tolist()   # many small p-values: some rejected, some not
    adjusted = holm(p)
    assert [a < 0.05 for a in adjusted] == _brute_force_holm(p, 0.05)
    assert all(a >= q for a, q in zip(adjusted, p)) and all(a <= 1 for a in adjusted)


def test_holm_adjusts_a_small_table_as_computed_by_hand():
    from sycam_dsl.metrics.intervals import holm
    # sorted: 0.01 * 4 = 0.04, 0.02 * 3 = 0.06, 0.03 * 2 = 0.06 (kept non-decreasing), 0.5 * 1 = 0.5
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])


def test_the_bootstrap_p_value_agrees_with_the_interval():
    gen = torch.Generator().manual_seed(3)
    for shift in (0.0, 0.05, 0.1, 0.3):
        a = torch.randn(60, generator=gen, dtype=torch.float64) * 0.5 + shift
        c = paired_bootstrap(a, torch.zeros(60, dtype=torch.float64), True)
        assert 0 <= c.p_value <= 1
        # the percentile interval excludes 0 exactly when fewer than 2.5% of resampled means cross it
        assert (c.low > 0 or c.high < 0) == (c.p_value < 0.05) or abs(c.p_value - 0.05) < 0.002


def test_a_lead_significant_alone_can_fail_the_family_wise_verdict():
    from sycam_dsl.metrics.intervals import family_verdicts
    gen = torch.Generator().manual_seed(0)
    strong = paired_bootstrap(torch.ones(40, dtype=torch.float64) + 0.01 * torch.randn(40, generator=gen, dtype=torch.float64),
                              torch.zeros(40, dtype=torch.float64), True)
    # a lead whose interval barely excludes 0 on its own: p just under 0.05
    weak = next(c for s in range(200)
                for c in [paired_bootstrap(torch.randn(40, generator=torch.Generator().manual_seed(s), dtype=torch.float64) + 0.35,
                                           torch.zeros(40, dtype=torch.float64), True)]
                if 0.01 < c.p_value < 0.05)
    assert weak.verdict == "better"
    verdicts = family_verdicts([strong] + [weak] * 5)
    assert verdicts[0][0] == "better" and verdicts[0][1] == pytest.approx(6 * 2 / 10_001)
    assert all(v == "no significant difference" for v, _ in verdicts[1:])
    sentence = weak.sentence("SyCAM", "ScoreCAM", (verdicts[1][0], verdicts[1][1], 6))
    assert "shows no significant difference from ScoreCAM" in sentence and "better on this comparison alone" in sentence
    assert "over 6 comparisons" in sentence
