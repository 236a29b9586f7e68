"""Hardening II (issue 23): forged checkpoints and changed held-out images refused on resume, an
interrupted guided search that does not suggest a resume it refuses, budgets that bound the whole
run (batches sized by a candidate's cost, the final tables reserved) and progress on every long phase.

Library-level cases call the function and check the exception; CLI cases run ``sycam-dsl`` in a
subprocess. The budget's wall-time figures come from ``benchmarks/bench_budget.py``, not from a test."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sycam_dsl.errors import SycamError
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.synthesis import Budget, Search, SearchOptions
from tests.conftest import Clock
from tests.signals import interrupt_cli
from tests.test_synthesis import GRAMMAR, ScriptedScorer, config, planted, scripted
from tests.test_synthesize_api import data, tiny_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# -- S2: a checkpoint's scores are scored again on resume ---------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ckpt")
    Search(planted(), GRAMMAR, config(candidates=30), folder, progress=False).run()
    return json.loads((folder / "checkpoint.json").read_text())


def _forged(d: dict, where: str) -> None:
    state = d["state"]
    if where == "incumbent":
        blocks = state["incumbent"]["blocks"]
        blocks[0] = [0.99 if abs(x - 0.99) > 0.1 else 0.5 for x in blocks[0]]  # within SCH's bounds [0, 1]
    elif where == "history":
        h = state["history"][0]
        h["score"] = 0.99 if abs(h["score"] - 0.99) > 0.1 else 0.5
    else:
        state["baselines"]["GradCAM"] = [0.99] * len(state["baselines"]["GradCAM"])


@pytest.mark.parametrize("where, field", [("incumbent", r"state.incumbent.blocks\[0\]\[0\] is "),
                                          ("history", r"state.history\[0\].score is "),
                                          ("baselines", r"state.baselines.GradCAM\[\d+\] is ")])
def test_a_forged_score_in_the_checkpoint_is_refused_on_resume(tmp_path, checkpoint, where, field):
    # before: structure was checked, values were not; a forged incumbent blocked every candidate and
    # a forged history score was copied into the report
    d = json.loads(json.dumps(checkpoint))
    _forged(d, where)
    (tmp_path / "checkpoint.json").write_text(json.dumps(d))
    with pytest.raises(SycamError, match=field) as e:
        Search(planted(), GRAMMAR, config(candidates=60), tmp_path, progress=False).run(resume=True)
    assert _one_line(e).startswith(f"cannot resume from {tmp_path / 'checkpoint.json'}: ")
    assert "the checkpoint was changed" in str(e.value)


def test_the_untouched_checkpoint_still_resumes(tmp_path, checkpoint):
    (tmp_path / "checkpoint.json").write_text(json.dumps(checkpoint))
    out = Search(planted(), GRAMMAR, config(candidates=60), tmp_path, progress=False).run(resume=True)
    assert out.state.counts.considered == 60
    assert out.state.history[:len(checkpoint["state"]["history"]) - 1] == checkpoint["state"]["history"][:-1]


# -- a resume with other pixels in the test split is refused ------------------------------------------


def test_resume_with_changed_test_split_images_is_refused(tmp_path):
    x, masks = data(16)

    def run(images: torch.Tensor, resume: bool, candidates: int):
        return synthesize(tiny_model(), "features", images, metric="sch", budget=Budget(candidates=candidates),
                          data=DataOptions(masks=masks, use_cache=False),
                          search=SearchOptions(level_sizes=(4, None), equivalence_size=4, test_split=0.25),
                          output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run",
                          resume=resume)

    first = run(x, False, 3)
    held_out = first.data["test_split"]["indices"]
    changed = x.clone()
    changed[held_out[0], :, 0, 0] += 0.5  # one pixel of one held-out image; the searched images are the same
    with pytest.raises(SycamError, match=r"1 of the 4 test-split image\(s\) changed") as e:
        run(changed, True, 6)
    assert _one_line(e).startswith(f"cannot resume from {tmp_path / 'run' / 'checkpoint.json'}: ")
    assert run(x, True, 6).data["counts"]["considered"] == 6


# -- an interrupted guided search does not suggest --resume -------------------------------------------


def test_an_interrupted_guided_search_does_not_suggest_a_resume_it_refuses(tmp_path):
    out = tmp_path / "run"
    code, err = interrupt_cli(["synth", "--strategy", "guided", "--bundled-images", "24", "--test-split", "0",
                               "--levels", "8,all", "--report-images", "0", "--report-metrics", "deletion", "--time",
                               "1000", "--no-cache", "-o", str(out)], signal.SIGINT, out / "checkpoint.json",
                              cwd=tmp_path, env=ENV)
    assert code == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    # before: "continue with --resume -o DIR", which then said a guided search cannot be resumed
    assert "interrupted" in last and "--resume" not in last and "another --out" in last


# -- budgets on slow models ---------------------------------------------------------------------------


class SlowScorer(ScriptedScorer):
    """Scores from a table; each candidate costs ``seconds`` of ``clock`` per chunk (a slow model)."""

    def __init__(self, inner, table, clock: Clock, seconds: float) -> None:
        super().__init__(inner, table)
        self.clock, self.seconds, self.sizes = clock, seconds, []

    def score(self, nodes, j, c):
        self.sizes.append(len(nodes))
        self.clock.t += self.seconds * len(nodes)
        return super().score(nodes, j, c)


def test_batches_are_sized_by_a_candidates_cost_and_the_deadline_holds(clock):
    # before: batches grew 1, 2, 4, ... 32 whatever a candidate cost: at 4 s a candidate the batch of 32
    # started just before the deadline ran for 128 s past it
    cfg = config(candidates=None, seconds=300.0, baselines=(), candidate_batch=32, image_chunk=None)
    s, scorer = scripted(Search(planted(), GRAMMAR, cfg, progress=False), SlowScorer, {}, clock, 4.0)
    out = s.run()
    assert out.stopped_by == "time"
    # a batch takes at most about BATCH_SHARE of the budget (6 s: one candidate at 4 s, never 32)
    assert max(scorer.sizes) <= 2, scorer.sizes
    assert out.seconds <= 300.0 + 8.0


def test_a_fast_candidate_still_gets_the_large_batches(clock):
    cfg = config(candidates=None, seconds=300.0, baselines=(), candidate_batch=32, image_chunk=None)
    s, scorer = scripted(Search(planted(), GRAMMAR, cfg, progress=False), SlowScorer, {}, clock, 0.001)
    s.run()
    assert max(scorer.sizes) == 32


def test_a_whole_run_budget_counts_this_run_only_on_resume(tmp_path, clock):
    first = Search(planted(), GRAMMAR, config(candidates=10), tmp_path, progress=False)
    scripted(first, SlowScorer, {}, clock, 1.0)
    spent = first.run().seconds
    assert spent > 20
    again = Search(planted(), GRAMMAR, replace(config(), budget=Budget(20.0, None, whole_run=True)), tmp_path,
                   progress=False)
    scripted(again, SlowScorer, {}, clock, 1.0)
    out = again.run(resume=True)
    # 20 s for this run, the checks of the checkpoint's scores included (a search budget over every run
    # would have stopped at once)
    this_run = out.seconds - spent + again._verify_seconds
    assert out.state.next_candidate > 10 and again._verify_seconds > 0 and 20 <= this_run <= 20 + 8


def _tiny_synth(out: Path, budget: Budget, progress: bool = False, sanity: bool = False):
    x, masks = data(20)
    return synthesize(tiny_model(), "features", x, metric="deletion", metric_options={"steps": 3}, budget=budget,
                      data=DataOptions(masks=masks, use_cache=False),
                      search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4),
                      output=OutputOptions(progress=progress, report_images=0, sanity=sanity), out_dir=out)


def test_a_whole_run_budget_leaves_the_tables_their_estimated_time(tmp_path, monkeypatch, capsys):
    from sycam_dsl.synthesis import budget as budget_module
    monkeypatch.setattr(budget_module, "estimate_reserve", lambda *a, **kw: budget_module.Reserve(tables=20.0))
    result = _tiny_synth(tmp_path / "run", Budget(60.0, 4, whole_run=True))
    settings = result.data["settings"]
    assert settings["budget_seconds"] == 60.0 and settings["budget_whole_run"]
    # the search gets the budget less the start-up, the tables (20 s) and the files (3 s)
    assert 30.0 < settings["search_budget_seconds"] <= 60.0 - 23.0
    assert "warning" not in capsys.readouterr().err


def test_a_budget_the_tables_do_not_fit_in_is_named_at_the_start_in_one_line(tmp_path, monkeypatch, caplog):
    import logging

    from sycam_dsl.synthesis import budget as budget_module
    monkeypatch.setattr(budget_module, "estimate_reserve", lambda *a, **kw: budget_module.Reserve(tables=1000.0))
    with caplog.at_level(logging.WARNING, logger="sycam_dsl"):  # a warning: shown with --quiet too
        _tiny_synth(tmp_path / "run", Budget(30.0, 4, whole_run=True), progress=False)
    lines = [r.getMessage() for r in caplog.records if "time budget" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "the work after the search needs about 1003 s (tables 1000 s, files 3 s)" in lines[0]
    assert "left of the time budget" in lines[0]


def test_the_floor_of_a_budget_too_small_is_the_searchs_own(tmp_path, monkeypatch, caplog):
    """When the work after the search leaves it less than half the budget, the search gets half, and
    does not end early by the terminals the baselines' check will need (a slow real model's search
    ended before its first candidate, its floor all reserved for them)."""
    import logging

    from sycam_dsl.run.runner import MIN_SEARCH_SHARE
    from sycam_dsl.synthesis import budget as budget_module
    from sycam_dsl.synthesis.on_demand import TerminalSource
    monkeypatch.setattr(budget_module, "estimate_reserve",
                        lambda *a, **kw: budget_module.Reserve(tables=100.0, searched_terminals=50.0))
    # terminals on demand that would take longer than the whole budget
    monkeypatch.setattr(TerminalSource, "remaining_seconds", lambda self, names, index=None: 1000.0)
    with caplog.at_level(logging.WARNING, logger="sycam_dsl"):
        result = _tiny_synth(tmp_path / "run", Budget(30.0, 4, whole_run=True))
    floor = MIN_SEARCH_SHARE * 30.0
    assert result.data["settings"]["search_budget_seconds"] == pytest.approx(floor)
    assert result.data["counts"]["considered"] == 4  # before: 0, the search out of time at once
    lines = [r.getMessage() for r in caplog.records if "time budget" in r.getMessage()]
    assert len(lines) == 1 and f"the search gets {floor:.1f} s" in lines[0], lines


def test_the_terminal_estimate_weighs_each_image_by_its_live_channels(monkeypatch):
    """ScoreCAM's pass costs one forward pass per live channel, so the whole-run budget's estimate of the
    terminals still to compute scales the sampled rate by each image's live channels, not by images
    (on a fake clock: ``cic`` 1 s per live channel, ``abl`` 0.5 s per image; the sampled image has one
    live channel, the others 8: a rate per image said 1.5 s for each of them)."""
    from types import SimpleNamespace

    from sycam_dsl.baselines import SEARCH_BASELINES, baseline
    from sycam_dsl.cam.scorecam_pass import live_channels
    from sycam_dsl.metrics import get_metric
    from sycam_dsl.synthesis import budget as budget_module
    from sycam_dsl.synthesis import on_demand as on_demand_module
    from sycam_dsl.synthesis.budget import AfterSearch, estimate_reserve
    from tests.test_on_demand import _problem

    clock = Clock()
    fake = SimpleNamespace(perf_counter=clock, monotonic=clock)
    monkeypatch.setattr(on_demand_module, "time", fake)
    monkeypatch.setattr(budget_module, "time", fake)
    problem = _problem(12)
    search, test = torch.arange(8), torch.arange(8, 12)
    acts = torch.randn(problem.acts.shape, generator=torch.Generator().manual_seed(0))
    acts[8, 1:] = 0.0  # the first held-out image, the one sampled, has one live channel
    problem = replace(problem, acts=acts)
    live = live_channels(acts).sum(dim=1)
    assert live[8] == 1 and bool((live[torch.arange(12) != 8] == acts.shape[1]).all())
    source = problem.terminals.source
    compute = source._compute

    def timed(names, index):
        clock.t += float(live[index].sum()) if "cic" in names else 0.5 * len(index)
        return compute(names, index)

    source._compute = timed
    names = sorted({t for b in SEARCH_BASELINES for t in baseline(b).terminals})
    metric = get_metric("deletion").with_options(steps=3)
    after = AfterSearch([metric], [metric], names, SEARCH_BASELINES, len(SEARCH_BASELINES) + 1, 0)
    reserve = estimate_reserve(problem, search, test, after, 0.0)
    k = acts.shape[1]
    assert reserve.terminals == pytest.approx(3 * (k + 0.5))  # before: 3 * 1.5
    assert reserve.searched_terminals == pytest.approx(8 * (k + 0.5))  # before: 8 * 1.5


def test_cli_time_and_search_time_are_one_or_the_other():
    p = subprocess.run([sys.executable, "-m", "sycam_dsl.cli", "synth", "--time", "5", "--search-time", "5"],
                       capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "not allowed with argument" in err[0], err
    help_text = subprocess.run([sys.executable, "-m", "sycam_dsl.cli", "synth", "--help"], capture_output=True,
                               text=True, cwd=ROOT, env=ENV, timeout=120).stdout
    assert "--search-time" in help_text and "whole run" in help_text


# -- progress on every long phase ---------------------------------------------------------------------


def test_synth_shows_progress_on_the_final_tables_and_the_sanity_check(tmp_path, capsys):
    _tiny_synth(tmp_path / "run", Budget(candidates=4), progress=True, sanity=True)
    err = capsys.readouterr().err
    assert "final tables, searched images: 5 methods on 16 images" in err  # before: nothing after the search
    assert "final tables, test split: 5 methods on 4 images" in err
    assert "sanity check: the result and 4 baselines" in err


def test_eval_shows_progress_while_it_scores_the_metrics(tmp_path):
    from PIL import Image
    for i in range(3):
        Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8,
                                      generator=torch.Generator().manual_seed(i)).numpy()).save(tmp_path / f"p{i}.png")
    p = subprocess.run([sys.executable, "-m", "sycam_dsl.cli", "eval", "--model", "tests.cam_reference:TinyCNN",
                        "--weights", "random:0", "--layer", "features.4", "--size", "32", "--no-cache", "--images",
                        str(tmp_path), "--metric", "deletion,average_drop", "--baselines", "GradCAM,ScoreCAM"],
                       capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    # before: nothing on stderr between the terminals and the tables
    assert re.search(r"scoring deletion, average_drop.* of 2 methods on 3 images", p.stderr), p.stderr[-2000:]
