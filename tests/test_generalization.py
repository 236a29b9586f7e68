"""The generalization curve: every incumbent of a search scored on the test split after it (one point
per incumbent, the scores of an independent evaluation), its plot, the best-test incumbent beside the
chosen one, the warning when a later incumbent is worse on the test split, and no curve without a
test split or with per-class searches."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from sycam_dsl.baselines import SEARCH_BASELINES, baseline
from sycam_dsl.cli.synth import _report
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.metrics import get_metric
from sycam_dsl.metrics.expression import score_expression
from sycam_dsl.parse import resolve_grammar
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.run.generalization import best_test_line, overfit_warning
from sycam_dsl.run.runner import build_problem, loaded_model
from sycam_dsl.synthesis import Budget, SearchOptions
from sycam_dsl.synthesis.budget import CURVE_INCUMBENTS, AfterSearch, Reserve, estimate_reserve
from sycam_dsl.synthesis.problem import Data
from tests.test_synthesize_api import SCHEMA, data, tiny_model


def _run(tmp_path, metric="deletion", options=None, **search):
    x, masks = data(20)
    result = synthesize(tiny_model(), "features", x, metric=metric, metric_options=options or {"steps": 3},
                        budget=Budget(candidates=12),
                        data=DataOptions(masks=masks, use_cache=False, runtime="torch"),
                        search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4, **search),
                        output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run")
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    return result, d, x, masks


def _independent(x, masks, indices, expressions, metric):
    """Each expression's per-image scores on the held-out images alone, computed afresh."""
    gram = resolve_grammar("g2")
    names = list(dict.fromkeys(list(gram.inputs) + [t for b in SEARCH_BASELINES for t in baseline(b).terminals]))
    idx = torch.tensor(indices)
    problem, _ = build_problem(loaded_model(tiny_model(), None, "cpu"), "features",
                               Data(x[idx], [str(i) for i in indices], masks=masks[idx]), names, use_cache=False,
                               progress=False)
    return {e: score_expression(parse_expr(e, gram.inputs), [metric], problem.inputs, problem.terminals,
                                problem.acts)[metric.name].per_image.double() for e in expressions}


def test_curve_scores_each_incumbent_on_the_test_split(tmp_path, capsys):
    result, d, x, masks = _run(tmp_path)
    g, history = d["generalization"], d["history"]
    assert len(history) >= 2  # a curve, not a point (the tiny search finds more than one incumbent)
    assert [(p["seconds"], p["candidate"], p["expression"]) for p in g["points"]] == \
        [(h["seconds"], h["candidate"], h["expression"]) for h in history]
    assert [p["search"]["deletion"] for p in g["points"]] == [h["score"] for h in history]
    assert g["images"] == d["test_split"]["images"] == 4 and g["metrics"][0]["name"] == "deletion"
    metric = get_metric("deletion").with_options(steps=3)
    scores = _independent(x, masks, d["test_split"]["indices"], [p["expression"] for p in g["points"]], metric)
    for p in g["points"]:
        assert p["test"]["deletion"] == pytest.approx(float(scores[p["expression"]].mean()), rel=1e-6, abs=1e-12)
    # the chosen incumbent is the result, and its test mean is the final table's
    assert g["points"][g["chosen"]]["expression"] == d["expression"] == history[-1]["expression"]
    sycam = next(m["mean"] for m in d["evaluation"][0]["methods"] if m["name"] == "SyCAM")
    assert g["points"][g["chosen"]]["test"]["deletion"] == pytest.approx(sycam, rel=1e-9)
    assert g["points"][0]["versus_previous"] is None
    assert all(p["versus_previous"]["deletion"]["low"] <= p["versus_previous"]["deletion"]["high"]
               for p in g["points"][1:])
    # the best-test incumbent: in result.json, the printed line and report.md
    means = [p["test"]["deletion"] for p in g["points"]]
    best = g["best_test"]["deletion"]
    assert means[best] == max(means)
    line = best_test_line(d)
    assert line is not None and f"{len(history)} incumbents on 4 test images" in line
    assert (f"incumbent {best}, `{g['points'][best]['expression']}`" in line) == (best != g["chosen"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## The generalization curve" in report and line in report
    assert "![generalization](generalization.png)" in report and d["files"]["generalization"] == "generalization.png"
    picture = np.asarray(Image.open(tmp_path / "run" / "generalization.png").convert("RGB"))
    assert picture.shape[0] > 100 and picture.shape[1] > 100
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 20  # lines, markers and text, not a blank canvas
    assert _report(result, tmp_path / "run") == 0  # what `sycam-dsl synth` prints
    assert line in capsys.readouterr().out


def test_front_curve_has_one_point_per_entry(tmp_path):
    _, d, x, masks = _run(tmp_path, metric="deletion,insertion", options={"steps": 3})
    g = d["generalization"]
    assert [m["name"] for m in g["metrics"]] == ["deletion", "insertion"]
    assert [p["expression"] for p in g["points"]] == [h["expression"] for h in d["history"]]
    assert all(set(p["test"]) == {"deletion", "insertion"} for p in g["points"])
    assert set(g["best_test"]) == {"deletion", "insertion"} and g["warning"] is None
    knee = d["front"]["members"][d["front"]["knee"]]
    assert g["points"][g["chosen"]]["expression"] == knee["expression"] == d["expression"]
    assert g["points"][g["chosen"]]["test"] == pytest.approx(knee["test"], rel=1e-9)


@pytest.mark.parametrize("how", ["no test split", "per class"])
def test_no_curve_without_a_test_split_or_per_class(tmp_path, how):
    x, masks = data(16)
    result = synthesize(tiny_model(), "features", x, metric="deletion", metric_options={"steps": 3},
                        budget=Budget(candidates=4), per_class=how == "per class",
                        data=DataOptions(masks=masks, use_cache=False),
                        search=SearchOptions(level_sizes=(4, None), equivalence_size=4, min_class_images=2,
                                             test_split=0 if how == "no test split" else 0.25),
                        output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run")
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    assert d["generalization"] is None and "generalization" not in d["files"]
    assert not (tmp_path / "run" / "generalization.png").exists()
    assert best_test_line(d) is None and "generalization curve" not in (tmp_path / "run" / "report.md").read_text()
    assert result.data["generalization"] is None


def _points(n):
    return [{"expression": f"e{k}", "seconds": float(k)} for k in range(n)]


def test_warning_when_a_later_incumbent_is_worse_on_the_test_split():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(60, generator=g, dtype=torch.float64)
    good, worse = base + 0.5, base  # the later one is worse on every image by 0.5
    line = overfit_warning(_points(3), [base + 0.2, good, worse], higher_is_better=True)
    assert line is not None and "\n" not in line
    assert "incumbent 2 (`e2`, 2.0 s) is worse on the test split than the earlier incumbent 1 (`e1`" in line
    assert "-0.5000" in line
    # lower is better: falling scores are better, rising ones worse
    assert overfit_warning(_points(3), [base + 0.5, base + 0.2, base], higher_is_better=False) is None
    assert overfit_warning(_points(2), [base, base + 0.5], higher_is_better=False) is not None


def test_no_warning_when_the_difference_is_within_the_interval():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(40, generator=g, dtype=torch.float64)
    noisy = a + 0.3 * (torch.rand(40, generator=g, dtype=torch.float64) - 0.5) - 0.001  # a hair worse on average
    assert overfit_warning(_points(2), [a, noisy], higher_is_better=True) is None
    assert overfit_warning(_points(3), [a, a + 0.1, a + 0.2], higher_is_better=True) is None  # steadily better
    assert overfit_warning(_points(1), [a], higher_is_better=True) is None


def test_warning_compares_with_the_best_earlier_incumbent_and_counts_the_rest():
    x = torch.linspace(0, 1, 50, dtype=torch.float64)
    line = overfit_warning(_points(4), [x + 1.0, x, x + 0.5, x + 0.2], higher_is_better=True)
    assert line is not None
    assert "incumbent 3 (`e3`, 3.0 s) is worse on the test split than the earlier incumbent 0 (`e0`" in line
    assert "(3 later incumbents are worse than an earlier one)" in line


@pytest.mark.parametrize("name", ["deletion", "average_drop"])  # higher, lower is better
def test_an_incumbent_whose_test_mean_is_nan_is_never_the_best(name):
    from sycam_dsl.run.generalization import _best

    metric = get_metric(name)
    good = 0.8 if metric.higher_is_better else 0.2
    points = [{"test": {metric.name: v}} for v in (float("nan"), 0.5, good, float("nan"))]
    assert _best(points, metric) == 2  # before: the NaN first, which no comparison displaces
    x = torch.linspace(0, 1, 50, dtype=torch.float64)
    nan = torch.full_like(x, float("nan"))
    # the best earlier incumbent is the finite one, not the NaN first
    line = overfit_warning(_points(3), [nan, x + 1.0, x], higher_is_better=True)
    assert line is not None and "than the earlier incumbent 1 (`e1`" in line


def test_a_whole_run_budget_sets_the_curve_aside():
    x, masks = data(12)
    gram = resolve_grammar("g2")
    names = list(dict.fromkeys(list(gram.inputs) + [t for b in SEARCH_BASELINES for t in baseline(b).terminals]))
    problem, _ = build_problem(loaded_model(tiny_model(), None, "cpu"), "features",
                               Data(x, [str(i) for i in range(12)], masks=masks), names, use_cache=False,
                               progress=False)
    metric = get_metric("deletion").with_options(steps=3)
    search, test = torch.arange(9), torch.arange(9, 12)

    def reserve(rows: int, held_out: torch.Tensor | None) -> Reserve:
        after = AfterSearch([metric], [metric], names, SEARCH_BASELINES, len(SEARCH_BASELINES) + 1, 0, rows)
        return estimate_reserve(problem, search, held_out, after, 0.0)

    with_curve = reserve(CURVE_INCUMBENTS, test)
    assert with_curve.curve > 0
    assert with_curve.set_aside == pytest.approx(with_curve.terminals + with_curve.check + with_curve.tables
                                                 + with_curve.outputs + with_curve.curve)
    assert reserve(0, test).curve == 0.0  # per-class searches: no curve
    assert reserve(CURVE_INCUMBENTS, None).curve == 0.0  # no test split: no curve
