"""The held-out test split of ``synthesize`` / ``sycam-dsl synth --test-split``: seeded and
stratified, never seen by the search (with and without per-class searches), reported first with the
searched images' tables beside it, off at 0 (today's tables exactly), and part of a checkpoint."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import jsonschema
import pytest
import torch

from sycam_dsl.baselines import SEARCH_BASELINES, baseline
from sycam_dsl.errors import SycamError
from sycam_dsl.lang.ast import to_sexpr
from sycam_dsl.metrics import get_metric
from sycam_dsl.metrics.registry import Metric, MetricInputs
from sycam_dsl.parse import resolve_grammar
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.run import runner as api_module
from sycam_dsl.run.runner import build_problem, loaded_model
from sycam_dsl.synthesis import Budget, SearchConfig, SearchOptions
from sycam_dsl.synthesis.evaluation import evaluate_methods
from sycam_dsl.synthesis.problem import Data
from sycam_dsl.synthesis.search import Search
from sycam_dsl.synthesis.split import check_fraction, split_indices
from tests.test_bad_inputs import _one_line
from tests.test_synthesize_api import SCHEMA, data, tiny_model


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35, 0.5])
def test_split_is_seeded_and_stratified(seed, fraction):
    g = torch.Generator().manual_seed(100 + seed)
    sizes = torch.randint(1, 40, (5,), generator=g).tolist()
    classes = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    classes = classes[torch.randperm(len(classes), generator=g)]
    n = len(classes)
    search, test = split_indices(n, fraction, seed, classes)
    assert sorted(search.tolist() + test.tolist()) == list(range(n))
    assert len(test) == int(fraction * n + 0.5)
    for c, size in enumerate(sizes):  # each class holds out its share, within one image
        assert abs(int((classes[test] == c).sum()) - fraction * size) < 1
    again = split_indices(n, fraction, seed, classes)
    assert torch.equal(again[1], test) and torch.equal(again[0], search)
    assert not torch.equal(split_indices(n, fraction, seed + 1, classes)[1], test)


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), 1.5])
def test_fraction_must_be_in_zero_one(bad):
    with pytest.raises(SycamError, match=r"fraction in \[0, 1\)"):
        check_fraction(bad)


def recording(metric: Metric, seen: list[tuple[str, list[int]]], phase: list[str]) -> Metric:
    """``metric`` recording, per call, the phase and the images (``MetricInputs.image_ids``) it sees."""
    fn, bounds = metric.fn, metric.bounds

    def record(inputs: MetricInputs) -> None:
        assert inputs.image_ids is not None
        seen.append((phase[0], inputs.image_ids.tolist()))

    def scored(inputs: MetricInputs, **options: Any) -> Any:
        record(inputs)
        return fn(inputs, **options)

    def bounded(inputs: MetricInputs, **options: Any) -> Any:
        record(inputs)
        assert bounds is not None
        return bounds(inputs, **options)

    return replace(metric, fn=scored, bounds=bounded if bounds is not None else None)


@pytest.mark.parametrize("per_class", [False, True])
def test_the_search_never_sees_the_test_split(tmp_path, monkeypatch, per_class):
    seen: list[tuple[str, list[int]]] = []
    phase = ["search"]
    searched: list[list[int]] = []
    evaluate = api_module.evaluate_methods

    def final_tables(*args: Any, **kw: Any) -> Any:
        phase[0] = "tables"
        return evaluate(*args, **kw)

    class Recorded(Search):
        def __init__(self, problem, *args: Any, **kw: Any) -> None:
            searched.append(problem.index.tolist())
            super().__init__(problem, *args, **kw)

    monkeypatch.setattr(api_module, "evaluate_methods", final_tables)
    monkeypatch.setattr(api_module, "Search", Recorded)
    monkeypatch.setattr("sycam_dsl.synthesis.per_class.Search", Recorded)
    x, masks = data(30)
    metric = recording(get_metric("deletion").with_options(steps=3), seen, phase)
    result = synthesize(tiny_model(), "features", x, metric=metric, per_class=per_class,
                        budget=Budget(candidates=10), data=DataOptions(masks=masks, use_cache=False),
                        search=SearchOptions(level_sizes=(3, 6, None), equivalence_size=3, seed=3,
                                             test_split=0.3, min_class_images=2),
                        output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run")
    d = result.data
    test = set(d["test_split"]["indices"])
    assert len(test) == 9 and d["images"]["searched"] == 21 and d["images"]["evaluated"] == 9
    assert searched and all(test.isdisjoint(s) for s in searched)
    during = {i for p, ids in seen if p == "search" for i in ids}
    assert during and test.isdisjoint(during)
    assert during == set(range(30)) - test or per_class  # every searched image is scored (a class may be too small)
    after = {i for p, ids in seen if p == "tables" for i in ids}
    assert test <= after  # the final tables score the test split
    # stratified by predicted class with per-class searches, by the predicted classes (no labels) otherwise
    assert d["test_split"]["stratified_by"] == "predicted class"


def test_result_has_test_and_search_tables(tmp_path):
    x, masks = data(20)
    result = synthesize(tiny_model(), "features", x, metric="deletion", metric_options={"steps": 3},
                        budget=Budget(candidates=8), data=DataOptions(masks=masks, use_cache=False),
                        search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4),
                        output=OutputOptions(report_metrics=["insertion"], progress=False, report_images=2),
                        out_dir=tmp_path / "run")
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    assert d["test_split"]["fraction"] == 0.2 and d["test_split"]["images"] == 4
    assert len(d["test_split"]["files"]) == 4 and d["settings"]["test_split"] == 0.2
    assert [e["metric"] for e in d["evaluation"]] == [e["metric"] for e in d["evaluation_search"]] == \
        ["deletion", "insertion"]
    # the searched images' table is the one the search saw: SyCAM's mean there is its I1 score
    def sycam(table):
        return next(m["mean"] for m in table[0]["methods"] if m["name"] == "SyCAM")

    assert sycam(d["evaluation_search"]) == pytest.approx(d["level_scores"]["I1"], abs=1e-9)
    test_mean = sycam(d["evaluation"])
    assert d["test_split"]["gap"]["deletion"] == pytest.approx(d["level_scores"]["I1"] - test_mean, abs=1e-9)
    text = result.table()
    assert text.index("test split: 4 images") < text.index("search split: the 16 images") < text.index("gap of SyCAM")
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.index("test split (4 images never searched)") < report.index("search split (16 images searched)")
    assert "Gap of SyCAM (search split minus test split): deletion" in report


def test_split_zero_gives_todays_tables(tmp_path):
    x, masks = data(16)
    options = SearchOptions(level_sizes=(4, 8, None), equivalence_size=4, test_split=0)
    result = synthesize(tiny_model(), "features", x, metric="deletion", metric_options={"steps": 3},
                        budget=Budget(candidates=10),
                        data=DataOptions(masks=masks, use_cache=False, runtime="torch"),  # build_problem's, below
                        search=options, output=OutputOptions(progress=False, report_images=0),
                        out_dir=tmp_path / "run")
    d = result.data
    assert d["evaluation_search"] is None and d["test_split"]["images"] == 0 and d["test_split"]["warning"] is None
    assert d["images"]["evaluated"] == d["images"]["searched"] == 16
    assert "test split: off" in (tmp_path / "run" / "report.md").read_text()
    assert "search split" not in result.table()
    # what the pipeline did before the split: search every image, tables on I1
    metric = get_metric("deletion").with_options(steps=3)
    gram = resolve_grammar("g2")
    names = list(dict.fromkeys(list(gram.inputs) + [t for b in SEARCH_BASELINES for t in baseline(b).terminals]))
    problem, _ = build_problem(loaded_model(tiny_model(), None, "cpu"), "features", Data(x, [str(i) for i in range(16)],
                               masks=masks), names, use_cache=False, progress=False)
    outcome = Search(problem, gram, SearchConfig(metric, Budget(candidates=10), level_sizes=(4, 8, None),
                                                 equivalence_size=4), progress=False).run()
    assert outcome.best is not None and to_sexpr(outcome.best) == result.expression
    methods = {b: (baseline(b).expression, baseline(b).node) for b in SEARCH_BASELINES}
    methods["SyCAM"] = (to_sexpr(outcome.best), outcome.best)
    (m, rows), = evaluate_methods(methods, [metric], problem.subset(outcome.subsets.level(2)))
    assert [(r.name, r.mean, r.best_share, r.expression) for r in rows] == \
        [(r.name, r.mean, r.best_share, r.expression) for r in result.tables[0][1] if not r.control]


def test_too_few_images_turn_the_split_off_with_a_warning(tmp_path):
    x, _ = data(6)
    result = synthesize(tiny_model(), "features", x, metric="sch", budget=Budget(candidates=3),
                        data=DataOptions(masks=data(6)[1], use_cache=False),
                        search=SearchOptions(level_sizes=(2, None), equivalence_size=2, test_split=0.2),
                        output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run")
    d = result.data
    assert d["test_split"]["images"] == 0 and d["evaluation_search"] is None
    assert d["test_split"]["warning"].startswith("test split off: 6 images are too few for a 0.2 test split")
    assert d["warnings"][0] == d["test_split"]["warning"]
    assert "split off: 6 images are too few" in (tmp_path / "run" / "report.md").read_text()


def test_resume_with_another_split_is_refused(tmp_path):
    x, masks = data(16)

    def run(split: float, resume: bool, candidates: int):
        return synthesize(tiny_model(), "features", x, metric="sch", budget=Budget(candidates=candidates),
                          data=DataOptions(masks=masks, use_cache=False),
                          search=SearchOptions(level_sizes=(4, None), equivalence_size=4, test_split=split),
                          output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run",
                          resume=resume)

    run(0.25, False, 3)
    with pytest.raises(SycamError) as e:
        run(0.5, True, 6)
    assert "\n" not in str(e.value) and re.search(r"different .*test_split", str(e.value))
    assert run(0.25, True, 6).data["counts"]["considered"] == 6


@pytest.mark.parametrize("value", ["1", "abc"])
def test_cli_test_split_must_be_a_fraction(value):
    _one_line(["synth", "--test-split", value], r"argument --test-split: .*fraction in \[0, 1\)")


def test_schema_lists_the_split():
    assert {"test_split", "evaluation_search"} <= set(SCHEMA["required"])


def test_per_class_result_has_intervals_per_class_and_overall(tmp_path):
    from sycam_dsl.metrics.intervals import paired_bootstrap
    from sycam_dsl.run.result import SYCAM

    x, masks = data(30)
    result = synthesize(tiny_model(), "features", x, metric="deletion", metric_options={"steps": 3}, per_class=True,
                        budget=Budget(candidates=8), data=DataOptions(masks=masks, use_cache=False),
                        search=SearchOptions(level_sizes=(3, 6, None), equivalence_size=3, test_split=0.3,
                                             min_class_images=2),
                        output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run")
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    assert d["comparisons"] and d["per_class"] is not None
    test_classes = torch.tensor([int(c) for c in result.data["test_split"]["indices"]])
    rows = {r.name: r for r in result.tables[0][1]}
    targets = api_module.loaded_model(tiny_model(), None, "cpu").module(x[test_classes]).argmax(dim=1)
    for c, part in d["per_class"]["classes"].items():
        keep = targets == int(c)
        assert part["evaluated"] == int(keep.sum())
        if not part["evaluated"]:
            assert part["comparisons"] == []
            continue
        versus = {v["method"]: v for v in part["comparisons"][0]["versus"]}
        ours = torch.tensor(rows[SYCAM].per_image)[keep]
        for name in SEARCH_BASELINES:
            ref = paired_bootstrap(ours, torch.tensor(rows[name].per_image)[keep], d["metric"]["higher_is_better"])
            assert (versus[name]["low"], versus[name]["high"], versus[name]["images"]) == (ref.low, ref.high, ref.n)
    report = (tmp_path / "run" / "report.md").read_text()
    assert any(re.search(rf"class {c}, deletion: SyCAM", report) for c in d["per_class"]["classes"])


def test_synth_sanity_checks_the_result_on_the_test_split(tmp_path, monkeypatch):
    from sycam_dsl.cam import sanity as sanity_module

    checked: list[torch.Tensor] = []
    check = sanity_module.check_result

    def recorded(model: Any, layer: Any, images: torch.Tensor, *args: Any, **kw: Any) -> Any:
        checked.append(images.clone())
        return check(model, layer, images, *args, **kw)

    monkeypatch.setattr(sanity_module, "check_result", recorded)
    x, masks = data(20)
    result = synthesize(tiny_model(), "features", x, metric="deletion", metric_options={"steps": 3},
                        budget=Budget(candidates=6), data=DataOptions(masks=masks, use_cache=False),
                        search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4),
                        output=OutputOptions(progress=False, report_images=0, sanity=True), out_dir=tmp_path / "run")
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    test = d["test_split"]["indices"]
    assert len(checked) == 1 and torch.equal(checked[0], x[test])  # the test split's images, no other
    names = [m["name"] for m in d["sanity"]["methods"]]
    assert names == ["SyCAM", *SEARCH_BASELINES] and d["sanity"]["images"] == len(test)
    assert d["sanity"]["methods"][0]["expression"] == result.expression
    assert "## Sanity check" in (tmp_path / "run" / "report.md").read_text()


def test_synth_sanity_refuses_small_images_before_the_search(tmp_path):
    x, _ = data(12, size=8)
    with pytest.raises(SycamError, match="SSIM window") as e:
        synthesize(tiny_model(), "features", x, budget=Budget(candidates=2),
                   output=OutputOptions(progress=False, sanity=True), out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists() and "8x8" in str(e.value)
