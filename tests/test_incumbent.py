"""The search ends with the best baseline the grammar expresses when the result is worse, small levels
are judged by the mean with a margin, ``until`` stops at a threshold, and the report says why a better
method was not chosen."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest
import torch

from sycam_dsl.baselines import baseline
from sycam_dsl.cli import main
from sycam_dsl.errors import SycamError
from sycam_dsl.lang.ast import to_sexpr
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.parse import parse_grammar
from sycam_dsl.parse.grammar import derivable
from sycam_dsl.run.report import markdown_report
from sycam_dsl.synthesis import Budget, Search, SearchConfig, SearchOptions
from sycam_dsl.synthesis.incumbent import Until, grammar_baselines, not_chosen_reason, parse_until
from sycam_dsl.synthesis.oracle import SMALL_LEVEL, SMALL_LEVEL_MARGIN, judge
from sycam_dsl.synthesis.subsets import make_subsets

from .test_synthesis import GRAMMAR, SCH, ScriptedScorer, planted, scripted
from .test_synthesize_api import SCHEMA, run

N, LEVELS = 24, (6, 12, None)  # I3 has 6 images: a small level
#: SCH's mirror image: the same fake scores, lower is better (no bounds: early stops count images only).
LOW = replace(SCH, name="sch_low", higher_is_better=False, bounds=None)


class Table(dict):
    """Expression -> per-image scores; any other expression gets ``worst`` on every image."""

    def __init__(self, scores: dict[str, list[float]], worst: float) -> None:
        super().__init__(scores)
        self.worst = worst

    def get(self, key, default=None):
        return super().get(key, [self.worst] * N)


def order() -> list[int]:
    return make_subsets(N, LEVELS, 0, planted(N).classes, 6).order.tolist()


def abl_table(higher: bool = True) -> Table:
    """grads 0.5 everywhere; abl better on average everywhere, but on I3 it wins only 2 of 6 images
    (AblationCAM "loses the half-the-images rule on a small I3"); every other expression scores 0
    (the worst, so the search returns grads or abl). ``higher`` False: mirrored for a lower-is-better
    metric (1 - score)."""
    o = order()
    abl = [0.9] * N
    for k, i in enumerate(o[:6]):
        abl[i] = 1.0 if k < 2 else 0.45
    table = {"grads": [0.5] * N, "abl": abl, "cic": [0.2] * N}
    if not higher:
        return Table({k: [1 - x for x in v] for k, v in table.items()}, 1.0)
    return Table(table, 0.0)


def search(table, metric=SCH, candidates: int | None = 40, **kw) -> Search:
    cfg = SearchConfig(metric, Budget(candidates=candidates), level_sizes=LEVELS, equivalence_size=6, max_size=5, **kw)
    s, _ = scripted(Search(planted(N), GRAMMAR, cfg, progress=False), ScriptedScorer, table)
    return s


def mean(scores) -> float:
    return sum(scores) / len(scores)


# -- 1(a): never worse than a baseline the grammar contains --------------------------------------

def test_which_baselines_the_grammar_expresses():
    assert list(grammar_baselines(GRAMMAR, ["GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM"])) == [
        "GradCAM", "ScoreCAM", "AblationCAM"]  # GradCAM++ reads G and A, not inputs of the grammar
    only_sums = parse_grammar("""
(synth-cam weights ((grads Vec) (cic Vec) (abl Vec)) Vec ((E Vec)) ((E Vec (grads cic (+ E E)))))""")
    assert list(grammar_baselines(only_sums, ["GradCAM", "ScoreCAM", "AblationCAM"])) == ["GradCAM", "ScoreCAM"]
    assert derivable(only_sums, "E", parse_expr("(+ grads (+ cic grads))", only_sums.inputs))
    assert not derivable(only_sums, "E", parse_expr("(- grads cic)", only_sums.inputs))


@pytest.mark.parametrize("higher", [True, False])
def test_the_result_is_never_worse_than_a_baseline_in_the_grammar(higher):
    table, metric = abl_table(higher), SCH if higher else LOW
    abl = mean(table["abl"])
    # the plain oracle (no final check, half-the-images rule on every level) loses AblationCAM on I3
    old = search(table, metric, baseline_check=False, small_level=0).run()
    assert to_sexpr(old.best) == "grads"
    assert (old.level_means["I1"] < abl) if higher else (old.level_means["I1"] > abl)
    # with the final check, AblationCAM (the best baseline in the grammar by its I1 mean) replaces it
    out = search(table, metric, small_level=0).run()
    assert to_sexpr(out.best) == "abl"
    assert out.level_means["I1"] == pytest.approx(abl)
    last = out.state.history[-1]
    assert last["candidate"] is None and last["baseline"] == "AblationCAM" and last["expression"] == "abl"
    assert last["score"] == pytest.approx(abl)
    assert [h["expression"] for h in out.state.history] == ["grads", "abl"]
    assert out.state.counts.accepted == len(out.state.history) - 1 == 1


def test_the_final_check_survives_a_checkpoint_and_resumes(tmp_path):
    table = abl_table()
    cfg = SearchConfig(SCH, Budget(candidates=10), level_sizes=LEVELS, equivalence_size=6, max_size=5,
                       small_level=0)
    s, _ = scripted(Search(planted(N), GRAMMAR, cfg, tmp_path, progress=False), ScriptedScorer, table)
    s.run()
    saved = json.loads((tmp_path / "checkpoint.json").read_text())["state"]
    assert saved["incumbent"]["candidate"] is None and saved["history"][-1]["baseline"] == "AblationCAM"
    more = replace(cfg, budget=Budget(candidates=30))
    s, _ = scripted(Search(planted(N), GRAMMAR, more, tmp_path, progress=False), ScriptedScorer, table)
    out = s.run(resume=True)  # the candidates after the first 10 are judged against AblationCAM
    assert to_sexpr(out.best) == "abl" and len(out.state.history) == 2 and out.state.next_candidate == 30
    # a forged start (scores that are not the baseline's) is refused
    data = json.loads((tmp_path / "checkpoint.json").read_text())
    data["state"]["incumbent"]["blocks"][0][0] = 0.0
    (tmp_path / "checkpoint.json").write_text(json.dumps(data))
    s, _ = scripted(Search(planted(N), GRAMMAR, more, tmp_path, progress=False), ScriptedScorer, table)
    with pytest.raises(SycamError, match="are not the scores of baseline AblationCAM"):
        s.run(resume=True)


# -- 1(b): small levels are judged by the mean with a margin -------------------------------------

@pytest.mark.parametrize("higher", [True, False])
def test_small_levels_fall_back_to_the_mean_with_a_margin(higher):
    sign = 1.0 if higher else -1.0
    inc = sign * torch.full((6,), 0.5, dtype=torch.float64)
    cand = sign * torch.tensor([1.0, 1.0, 0.45, 0.45, 0.45, 0.45], dtype=torch.float64)  # 2 wins of 6
    assert judge(cand, inc, higher).passed and judge(cand, inc, higher).small
    assert not judge(cand, inc, higher, small_level=0).passed  # the half-the-images rule
    # a better mean, but by less than the margin: not enough on a small level
    near = inc + sign * 0.5 * SMALL_LEVEL_MARGIN * 0.5
    assert not judge(near, inc, higher).passed and judge(near, inc, higher, small_level=0).passed
    above = inc + sign * 2 * SMALL_LEVEL_MARGIN * 0.5
    assert judge(above, inc, higher).passed
    # from SMALL_LEVEL images on, the half-the-images rule again
    big_inc = sign * torch.full((SMALL_LEVEL,), 0.5, dtype=torch.float64)
    big = sign * torch.tensor([1.0] * 4 + [0.45] * (SMALL_LEVEL - 4), dtype=torch.float64)
    assert not judge(big, big_inc, higher).passed and not judge(big, big_inc, higher).small


def test_a_search_without_the_final_check_keeps_abl_through_the_small_level():
    # abl, enumerated after grads, now passes I3 (6 images) on its mean and I2, I1 on both rules
    out = search(abl_table(), baseline_check=False).run()
    assert [h["expression"] for h in out.state.history] == ["grads", "abl"]


# -- 4: until ------------------------------------------------------------------------------------

def staircase(higher: bool) -> Table:
    """Incumbents in enumeration order grads (0.3) < pgrads (0.5) < cic (0.7) < abl (0.9), each
    better on every image; mirrored (1 - score) for a lower-is-better metric. ScoreCAM (cic) 0.7."""
    table = {"grads": [0.3] * N, "pgrads": [0.5] * N, "cic": [0.7] * N, "abl": [0.9] * N}
    return Table(table, 0.0) if higher else Table({k: [1 - x for x in v] for k, v in table.items()}, 1.0)


@pytest.mark.parametrize("higher", [True, False])
@pytest.mark.parametrize("until, stops_at", [(0.4, "pgrads"), ("0.6", "cic"), ("GradCAM+0.15", "pgrads"),
                                             ("GradCAM+0.25", "cic"), ("gradcam", "pgrads"), (0.95, None)])
def test_until_stops_at_the_first_incumbent_beyond_the_threshold(higher, until, stops_at):
    if not higher and isinstance(until, float):
        until = 1 - until  # the same threshold, mirrored
    elif not higher and until == "0.6":
        until = "0.4"
    table = staircase(higher)
    out = search(table, SCH if higher else LOW, baseline_check=False, until=until).run()
    if stops_at is None:  # never reached: the whole budget, the best as before
        assert out.stopped_by == "candidates" and to_sexpr(out.best) == "abl"
        return
    assert out.stopped_by == "threshold" and to_sexpr(out.best) == stops_at
    assert out.state.history[-1]["expression"] == stops_at
    assert out.state.next_candidate == out.state.history[-1]["candidate"] + 1  # stopped right there


def test_until_a_baseline_scores_only_that_baseline_before_the_end():
    s = search(staircase(True), until="ScoreCAM")
    scored_before_end = []
    final_check = s._final_check

    def at_the_end(state):
        scored_before_end.extend(state.baselines)
        final_check(state)

    s._final_check = at_the_end
    out = s.run()
    assert out.stopped_by == "threshold" and to_sexpr(out.best) == "abl"  # the first better than cic (0.7)
    assert scored_before_end == ["ScoreCAM"]  # its threshold needed it; the others wait for the end
    assert set(out.state.baselines) == {"GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM"}
    out = search(staircase(True), until="AblationCAM+0.01").run()  # never beaten
    assert out.stopped_by == "candidates" and to_sexpr(out.best) == "abl"


@pytest.mark.parametrize("text, message", [
    ("NoCAM", "unknown baseline 'NoCAM'"), ("ScoreCAM+x", "expected a number or a baseline name"),
    ("ScoreCAM+-1", "the margin must be a finite non-negative number"), ("nan", "finite number"),
    ("", "expected a number or a baseline name")])
def test_until_parse_errors_are_one_line(text, message):
    with pytest.raises(SycamError, match=message) as e:
        parse_until(text)
    assert "\n" not in str(e.value)
    with pytest.raises(SycamError, match=message):
        SearchOptions(until=text)


def test_until_parses_numbers_and_margins():
    assert parse_until("0.40") == Until(value=0.4) and parse_until(0.4) == Until(value=0.4)
    assert parse_until(" scorecam + 0.005 ") == Until(baseline="ScoreCAM", margin=0.005)
    assert parse_until("GradCAM++") == Until(baseline="GradCAM++")
    assert parse_until("GradCAM+++0.1") == Until(baseline="GradCAM++", margin=0.1)
    assert Until(baseline="ScoreCAM", margin=0.005).threshold({"ScoreCAM": [0.3, 0.5]}, False) == pytest.approx(0.395)
    with pytest.raises(SycamError, match="does not score baseline XGradCAM"):
        search(staircase(True), until="XGradCAM")


def test_cli_until_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--until", "ScoreCAM+x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "expected a number or a baseline name" in err


# -- 1(c): why a better method was not chosen ----------------------------------------------------

def test_the_reason_names_the_grammar_or_the_lost_level():
    table = abl_table()
    out = search(table, baseline_check=False, small_level=0).run()
    args = (out.level_names, out.state.baselines["AblationCAM"], out.state.incumbent.blocks, True, False, 0)
    assert not_chosen_reason("AblationCAM", GRAMMAR, *args) == (
        "in the grammar, but it loses the oracle's test against the result on level I3 "
        "(it beat the result on 2 of 6 images, fewer than half)")
    reason = not_chosen_reason("GradCAM++", GRAMMAR, *args)
    assert reason.startswith("not in the grammar <test grammar>") and baseline("GradCAM++").expression in reason
    checked = not_chosen_reason("AblationCAM", GRAMMAR, *args[:4], True, 0)
    assert checked.startswith("in the grammar; on the searched images (I1) its mean 0.8")
    assert checked.endswith("so it is better on the test split only")


def test_report_and_result_json_say_why_a_better_baseline_was_not_chosen(tmp_path):
    # a grammar of pgrads alone: every table baseline is outside it
    g = parse_grammar("(synth-cam weights ((pgrads Vec)) Vec ((E Vec)) ((E Vec (pgrads (relu E) (- E E)))))",
                      source="<pgrads grammar>")
    result, _ = run(tmp_path, report_images=0, grammar=g, metric="sch", metric_options=None)
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    ev = d["evaluation"][0]
    sycam = next(m["mean"] for m in ev["methods"] if m["name"] == "SyCAM")
    better = [m["name"] for m in ev["methods"] if m["name"] != "SyCAM" and not m["control"] and m["mean"] > sycam]
    assert [n["method"] for n in d["not_chosen"]] == better
    assert all(n["reason"].startswith("not in the grammar <pgrads grammar>") for n in d["not_chosen"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert all(f"- {n['method']}: {n['reason']}" in report for n in d["not_chosen"])
    # the report's wording, whatever the tiny model gives
    fake = dict(d, not_chosen=[{"method": "AblationCAM", "reason": "in the grammar, but it loses ... on level I3"}])
    assert "- AblationCAM: in the grammar, but it loses ... on level I3" in markdown_report(fake)
    assert "Better on average than the result, but not chosen:" in markdown_report(fake)
