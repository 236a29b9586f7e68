"""A search over several metrics end to end on a tiny CNN: result.json's front against its schema and
the final tables, one compiled file per member, front.png, the report, choosing a member to compile
or deploy, per-class fronts and one-line errors."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.cli import main
from sycam_dsl.deploy.method import MethodError, load_method
from sycam_dsl.evaluate import evaluate
from sycam_dsl.lang.ast import to_sexpr
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.synthesis import Budget, SearchOptions
from sycam_dsl.synthesis.front import covers
from sycam_dsl.synthesis.pareto import knee
from tests.test_synthesize_api import SCHEMA, data, tiny_model


def front_run(tmp_path, name="run", **kw):
    x, masks = data(24)
    args = dict(metric="deletion,average_drop", metric_options={"steps": 4}, budget=Budget(candidates=20),
                data=DataOptions(masks=masks, use_cache=False),
                search=SearchOptions(level_sizes=(6, 12, None), equivalence_size=4),
                output=OutputOptions(report_metrics=["insertion"], progress=False, report_images=2),
                out_dir=tmp_path / name)
    args.update(kw)
    return synthesize(tiny_model(), "features", x, **args), x


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("front")
    result, x = front_run(tmp)
    return result, x, tmp / "run"


def test_result_json_holds_the_front_and_validates(front):
    result, _, out = front
    d = json.loads((out / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    f = d["front"]
    assert [m["name"] for m in f["metrics"]] == ["deletion", "average_drop"]
    assert f["metrics"][0]["options"]["steps"] == 4 and f["metrics"][1]["options"] == {}
    assert len(f["members"]) == len(result.front) >= 2  # a trade-off on this model and these images
    names, higher = ["deletion", "average_drop"], [True, False]
    assert f["knee"] == knee([[m["search"][n] for n in names] for m in f["members"]],
                             [[b[n] for n in names] for b in f["baselines"].values()], higher)
    assert [m["expression"] for m in f["members"]] == [to_sexpr(n) for n in result.front]
    assert d["expression"] == f["members"][f["knee"]]["expression"] == result.expression
    assert [m["knee"] for m in f["members"]].count(True) == 1
    # the knee member is SyCAM in the tables: its mean on the searched images is its front mean there
    for ev in d["evaluation_search"][:2]:
        sycam = next(m for m in ev["methods"] if m["name"] == "SyCAM")
        assert sycam["mean"] == pytest.approx(f["members"][f["knee"]]["search"][ev["metric"]], abs=1e-9)
        assert sycam["expression"] == result.expression
    # and on the test split too
    for ev in d["evaluation"][:2]:
        sycam = next(m for m in ev["methods"] if m["name"] == "SyCAM")
        assert sycam["mean"] == pytest.approx(f["members"][f["knee"]]["test"][ev["metric"]], abs=1e-9)
    # no member's means are at least as good as another's on both metrics
    pts = [[m["search"][n] for n in names] for m in f["members"]]
    assert not any(covers(a, b, higher) for a in pts for b in pts if a is not b)
    assert set(f["baselines"]) == {"GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM"}
    assert all("scores" in h and "evicted" in h for h in d["history"])
    assert d["level_scores"] == {}


def test_one_file_per_member_computes_its_weights(front):
    result, x, out = front
    d = json.loads((out / "result.json").read_text())
    names = sorted({t for n in result.front for t in n.terminals()})
    terms, _ = compute_terminals(tiny_model(), "features", x, None, names, progress=False)
    for k, node in enumerate(result.front):
        rel = d["front"]["members"][k]["file"]
        assert rel == f"front/member-{k}.pt" and rel in d["files"]["front"]
        module = torch.jit.load(str(out / rel))
        assert torch.allclose(module(*[terms[t] for t in node.terminals()]), evaluate(node, terms))
    knee = torch.jit.load(str(out / "cam.pt"))
    assert torch.allclose(knee(*[terms[t] for t in result.best.terminals()]), evaluate(result.best, terms))


def test_the_report_has_the_front_table_and_plot(front):
    result, _, out = front
    report = (out / "report.md").read_text()
    assert f"the Pareto front ({len(result.front)} members)" in report
    assert "![front](front.png)" in report and (out / "front.png").stat().st_size > 1000
    assert not (out / "score.png").exists()
    for node in result.front:
        assert f"`{to_sexpr(node)}`" in report
    assert f"| {result.knee} (knee) |" in report
    assert "**deletion** (steps=4" in report and "**average_drop**, lower is better" in report


def test_compile_and_deploy_pick_a_member(front, tmp_path, capsys):
    result, _, out = front
    last = len(result.front) - 1
    assert load_method(out, member=last) == result.front[last]
    assert load_method(out / "result.json", member="knee") == result.best == load_method(out)
    with pytest.raises(MethodError, match=f"front member {last + 1}: the front has {last + 1} member"):
        load_method(out, member=last + 1)
    with pytest.raises(MethodError, match="output folder or its result.json only"):
        load_method("(relu grads)", member=0)
    target = tmp_path / "m.pt"
    assert main(["compile", str(out / "result.json"), "--member", str(last), "-o", str(target)]) == 0
    assert to_sexpr(result.front[last]) in capsys.readouterr().out or target.is_file()
    assert target.is_file()
    assert main(["compile", str(out / "result.json"), "--member", "x", "-o", str(target)]) == 2
    assert "give its number" in capsys.readouterr().err
    exported = tmp_path / "e.pt"
    capsys.readouterr()
    assert main(["export", str(out), "--member", str(last), "--model", "bundled", "-o", str(exported)]) == 0
    said = capsys.readouterr().out
    assert exported.is_file() and all(t in said for t in result.front[last].terminals())


def test_a_member_of_a_single_metric_result_is_refused(tmp_path, capsys):
    x, masks = data(16)
    synthesize(tiny_model(), "features", x, metric="deletion", metric_options={"steps": 4},
               budget=Budget(candidates=4), data=DataOptions(use_cache=False),
               search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4),
               output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "one")
    assert main(["compile", str(tmp_path / "one" / "result.json"), "--member", "0", "-o",
                 str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "has no Pareto front" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(tmp_path / "one"), "--member", "knee", "--model", "bundled", "-o",
                 str(tmp_path / "e.pt")]) == 2
    assert "has no Pareto front" in capsys.readouterr().err


def test_per_class_fronts(tmp_path):
    result, _ = front_run(tmp_path, per_class=True,
                          search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4, min_class_images=4))
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    classes = d["per_class"]["classes"]
    assert classes and all(part["front"] is not None for part in classes.values())
    for c, part in classes.items():
        # each class's expression is its own front's knee member
        assert part["expression"] == part["front"]["members"][part["front"]["knee"]]["expression"]
        assert (tmp_path / "run" / "classes" / f"class-{c}" / "front.png").is_file()
    assert d["front"] is None and result.dispatch is not None


def test_one_threshold_per_metric_and_distinct_metrics(tmp_path, capsys):
    common = ["synth", "--quiet", "-o", str(tmp_path / "o")]  # the bundled benchmark: refused before any search
    assert main([*common, "--metric", "deletion,insertion", "--until", "0.1"]) == 2
    assert "one threshold per metric (2)" in capsys.readouterr().err
    assert main([*common, "--metric", "deletion,deletion"]) == 2
    assert "named twice" in capsys.readouterr().err


def test_a_front_of_one_member_is_a_warning(tmp_path):
    # on this untrained model pgrads is at least as good as every other candidate on both metrics
    result, _ = front_run(tmp_path, metric="deletion,insertion", output=OutputOptions(progress=False,
                                                                                      report_images=0))
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    assert len(result.front) == 1
    assert any(w.startswith(f"the Pareto front has one member, {result.expression}") for w in d["warnings"])
    assert "## Warnings" in (tmp_path / "run" / "report.md").read_text()
