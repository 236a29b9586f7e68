"""Control maps (docs/search.md#control-maps): each map's shape, range and determinism, Sobel on a
planted edge, a planted metric that rewards image edges (the Sobel control wins and the run warns),
the controls in the bundled benchmark's tables (marked, never the result), ``--controls none``, and
``sycam-dsl eval``'s controls."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from sycam_dsl.bundled import bundled_images, load_bundled_model
from sycam_dsl.errors import SycamError
from sycam_dsl.metrics import register_metric
from sycam_dsl.metrics.compare import compare
from sycam_dsl.metrics.controls import (
    CONTROLS,
    blurred_map,
    control_maps,
    gaussian_map,
    intensity_map,
    parse_controls,
    random_map,
    sobel_map,
)
from sycam_dsl.metrics.registry import MetricResult, get_metric, unregister_metric
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.synthesis import Budget, SearchOptions
from tests.test_synthesize_api import SCHEMA, data, tiny_model

WARNING = "the metric may reward something other than the model on these images"


def images(n: int = 3, h: int = 16, w: int = 20) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(1))


def test_each_control_map_is_n_h_w_in_unit_range():
    x = images()
    maps = control_maps(CONTROLS, x, torch.arange(3), heatmaps=torch.rand(3, 16, 20))
    assert list(maps) == [f"control: {c}" for c in CONTROLS]
    for name, m in maps.items():
        assert m.shape == (3, 16, 20), name
        assert float(m.min()) >= 0 and float(m.max()) == pytest.approx(1.0), name
    # no heatmaps to blur: the blurred control is left out
    assert "control: blurred" not in control_maps(CONTROLS, x, torch.arange(3))


def test_random_control_is_seeded_per_image():
    x = images()
    a = random_map(x, torch.tensor([0, 1, 2]), seed=5)
    torch.testing.assert_close(a, random_map(x, torch.tensor([0, 1, 2]), seed=5))
    torch.testing.assert_close(a[1:], random_map(x[1:], torch.tensor([1, 2]), seed=5))  # same image, same map
    assert not torch.equal(a, random_map(x, torch.tensor([0, 1, 2]), seed=6))
    assert not torch.equal(a[0], a[1])


def test_gaussian_peaks_at_the_centre_and_intensity_follows_the_image():
    g = gaussian_map(images(1, 17, 17))[0]
    assert divmod(int(g.argmax()), 17) == (8, 8) and float(g[0, 0]) < 0.2
    x = torch.zeros(1, 3, 8, 8)
    x[..., 2, 5] = 3.0
    i = intensity_map(x)[0]
    assert float(i[2, 5]) == 1.0 and float(i.sum()) == 1.0


def test_sobel_peaks_on_a_vertical_edge():
    x = torch.zeros(2, 3, 12, 16)
    x[..., 8:] = 1.0  # the edge between columns 7 and 8
    s = sobel_map(x)
    cols = s.amax(dim=(0, 1))
    assert set(torch.nonzero(cols == cols.max()).flatten().tolist()) == {7, 8}
    assert float(s[..., :6].max()) == 0 and float(s[..., 10:].max()) == 0
    torch.testing.assert_close(s[0, 0], s[0, -1])  # the same along the edge, borders included


def test_blurred_map_spreads_a_point():
    h = torch.zeros(1, 32, 32)
    h[0, 16, 16] = 1.0
    b = blurred_map(h)
    assert float(b[0, 16, 16]) == 1.0 and float(b[0, 16, 20]) > 0.5 and float(b[0, 0, 0]) < 0.1


def test_parse_controls():
    assert parse_controls("all") == CONTROLS and parse_controls(None) == CONTROLS
    assert parse_controls("none") == () and parse_controls([]) == ()
    assert parse_controls("Sobel, random") == ("random", "sobel")
    with pytest.raises(SycamError, match="unknown control"):
        parse_controls("sobel,edges")
    with pytest.raises(SycamError, match="unknown control"):
        OutputOptions(controls="edges")


def test_controls_change_no_method_best_share():
    m = get_metric("sch")
    res = {n: MetricResult("sch", torch.tensor(v, dtype=torch.float64), True)
           for n, v in {"a": [1.0, 0.0], "b": [0.0, 1.0], "control: sobel": [2.0, 0.5]}.items()}
    rows = compare(res, {n: n for n in res}, m)
    assert [(r.best_share, r.control) for r in rows] == [(0.5, False), (0.5, False), (0.5, True)]


@pytest.fixture
def edge_metric():
    """A planted metric that rewards heatmaps equal to the image's Sobel edges (the Sobel control is perfect)."""
    def edge_match(inputs):
        return -(inputs.heatmaps - sobel_map(inputs.images)).pow(2).mean(dim=(-2, -1))

    register_metric("edge_match", edge_match, higher_is_better=True)
    yield "edge_match"
    unregister_metric("edge_match")


def test_planted_edge_metric_sobel_control_wins_and_warns(tmp_path, edge_metric):
    x, masks = data(n=24)
    result = synthesize(tiny_model(), "features", x, metric=edge_metric, budget=Budget(candidates=10),
                        data=DataOptions(use_cache=False),
                        search=SearchOptions(level_sizes=(4, None), equivalence_size=4, test_split=0.5),
                        output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run")
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    for tables in (d["evaluation"], d["evaluation_search"]):
        rows = {r["name"]: r for r in tables[0]["methods"]}
        sobel = rows.pop("control: sobel")
        assert sobel["control"] and sobel["mean"] == 0.0
        assert all(sobel["mean"] > r["mean"] for r in rows.values())
    versus = {v["method"]: v for v in d["comparisons"][0]["versus"]}
    assert versus["control: sobel"]["family_verdict"] == "worse" and versus["control: sobel"]["control"]
    assert versus["control: sobel"]["family_size"] == len(CONTROLS)  # the controls' own family
    assert versus["GradCAM"]["family_size"] == 4 and not versus["GradCAM"]["control"]
    lines = [w for w in d["warnings"] if w.startswith(WARNING)]
    assert len(lines) == 1 and "control sobel scores 0.0000 (SyCAM worse)" in lines[0], d["warnings"]
    assert WARNING in (tmp_path / "run" / "report.md").read_text()
    assert result.expression is not None and "control" not in result.expression


@pytest.mark.parametrize("controls", [CONTROLS, ()])
def test_the_heatmap_grid_shows_the_controls_after_the_methods(tmp_path, monkeypatch, controls):
    from sycam_dsl.run import figures

    seen = {}
    save = figures.save_heatmap_grid

    def spy(images, columns, path, **kw):
        seen.update(columns)
        return save(images, columns, path, **kw)

    monkeypatch.setattr(figures, "save_heatmap_grid", spy)
    x, _ = data(n=12)
    synthesize(tiny_model(), "features", x, budget=Budget(candidates=6), data=DataOptions(use_cache=False),
               search=SearchOptions(level_sizes=(4, None), equivalence_size=4),
               output=OutputOptions(progress=False, report_images=3, controls=controls), out_dir=tmp_path / "run")
    assert (tmp_path / "run" / "heatmaps.png").is_file()
    names = list(seen)
    assert names[:5] == ["GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM", "SyCAM"]
    assert names[5:] == [f"control: {c}" for c in controls]
    if controls:  # the map the tables score: SyCAM's own heatmaps blurred
        torch.testing.assert_close(seen["control: blurred"], blurred_map(seen["SyCAM"]))
        assert all(tuple(m.shape) == tuple(seen["SyCAM"].shape) for m in seen.values())


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundled") / "run"
    result = synthesize(load_bundled_model(), None, bundled_images(40), metric="deletion",
                        metric_options={"steps": 10}, budget=Budget(candidates=12),
                        search=SearchOptions(level_sizes=(12, None), equivalence_size=4),
                        output=OutputOptions(report_metrics=["insertion", "average_drop", "sch"], progress=False,
                                             report_images=0), out_dir=out)
    return result, json.loads((out / "result.json").read_text()), out


def test_bundled_tables_show_marked_controls_and_never_return_one(bundled_run):
    result, d, out = bundled_run
    jsonschema.validate(d, SCHEMA)
    names = [f"control: {c}" for c in CONTROLS]
    assert d["settings"]["controls"] == list(CONTROLS)
    for tables in (d["evaluation"], d["evaluation_search"]):
        assert [e["metric"] for e in tables] == ["deletion", "insertion", "average_drop", "sch"]
        for ev in tables:
            assert [m["name"] for m in ev["methods"]][-5:] == names
            assert [m["control"] for m in ev["methods"]] == [False] * 5 + [True] * 5
    assert result.expression is not None and d["expression"] == result.expression
    assert all(b["name"] != n for b in d["baselines"] for n in names)
    assert all(n["method"] not in names for n in d["not_chosen"])
    for comp in d["comparisons"]:
        assert [v["control"] for v in comp["versus"]] == [False] * 4 + [True] * 5
    text = result.table()
    report = (out / "report.md").read_text()
    for n in names:
        assert n in text and f"| {n} |" in report
    assert "SyCAM blurred, sigma = side/8" in text


def test_on_the_bundled_default_the_model_free_controls_lose(bundled_run):
    """The four controls that use no model lose family-wise on every metric of the test split, and every
    control loses on the searched metric; only SyCAM's own map blurred may be warned about (it wins
    Average Drop, which rewards smooth maps: docs/benchmarks.md)."""
    _, d, _ = bundled_run
    for comp in d["comparisons"]:
        for v in comp["versus"]:
            if v["control"] and (v["method"] != "control: blurred" or comp["metric"] == "deletion"):
                assert v["family_verdict"] == "better", (comp["metric"], v["method"], v["sentence"])
    flagged = [w for w in d["warnings"] if "may reward something other than the model" in w]
    assert all("control blurred" in w and not any(f"control {c} " in w for c in CONTROLS if c != "blurred")
               for w in flagged), flagged


def test_controls_none_removes_them(tmp_path, bundled_run):
    _, with_controls, _ = bundled_run
    result = synthesize(load_bundled_model(), None, bundled_images(40), metric="deletion",
                        metric_options={"steps": 10}, budget=Budget(candidates=12),
                        search=SearchOptions(level_sizes=(12, None), equivalence_size=4),
                        output=OutputOptions(report_metrics=["insertion", "average_drop", "sch"], progress=False,
                                             report_images=0, controls="none"), out_dir=tmp_path / "run")
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    assert d["settings"]["controls"] == []
    assert not any(m["control"] for ev in d["evaluation"] + d["evaluation_search"] for m in ev["methods"])
    assert not any(v["control"] for c in d["comparisons"] for v in c["versus"])
    assert not any(w.startswith(WARNING) for w in d["warnings"]) and "control:" not in result.table()
    # the same search and the same verdicts against the baselines with or without the controls
    assert d["expression"] == with_controls["expression"]
    verdicts = [(c["metric"], v["method"], v["family_verdict"], v["p_holm"])
                for c in with_controls["comparisons"] for v in c["versus"] if not v["control"]]
    assert verdicts == [(c["metric"], v["method"], v["family_verdict"], v["p_holm"])
                        for c in d["comparisons"] for v in c["versus"]]


def _eval(folder: Path, *extra: str) -> list[str]:
    from sycam_dsl.cli import build_parser

    argv = ["eval", "(relu (- grads abl))", "--model", "tests.cam_reference:TinyCNN", "--weights", "random:0",
            "--layer", "features.4", "--size", "32", "--no-cache", "--quiet", "--images", str(folder),
            "--metric", "deletion", "--steps", "5", "--baselines", "GradCAM", *extra]
    args = build_parser().parse_args(argv)
    args.handler(args)
    return argv


def test_eval_scores_controls_and_blurs_the_first_expression(tmp_path, capsys, edge_metric):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    _eval(folder, "--metric", f"deletion,{edge_metric}", "--json", str(tmp_path / "e.json"))
    out, err = capsys.readouterr()
    assert "control: sobel" in out and "expr 1 blurred, sigma = side/8" in out
    res = json.loads((tmp_path / "e.json").read_text())
    edge = {m["name"]: m for m in res["metrics"][1]["methods"]}
    assert edge["control: sobel"]["control"] and not edge["GradCAM"]["control"]
    assert f"{WARNING}: control sobel scores 0.0000 on edge_match" in err
    _eval(folder, "--controls", "none", "--metric", edge_metric)
    out, err = capsys.readouterr()
    assert "control:" not in out and WARNING not in err


def test_controls_option_is_checked_with_one_line(capsys):
    from sycam_dsl.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["eval", "--images", "x", "--model", "m", "--controls", "edges"])
    assert e.value.code == 2
    assert "unknown control(s) edges" in capsys.readouterr().err


def test_synth_and_eval_take_controls():
    from sycam_dsl.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["synth"]).controls == CONTROLS
    assert parser.parse_args(["synth", "--controls", "none"]).controls == ()
    assert parser.parse_args(["eval", "--images", "x", "--model", "m", "--controls", "sobel,random"]).controls == \
        ("random", "sobel")
