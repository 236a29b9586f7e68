"""The search under stress: the time budget bounds the whole search, early checkpoints and SIGTERM,
the output folder (checked, locked) and checkpoints checked field by field, and a search killed
(SIGKILL) at random moments and resumed gives the uninterrupted result, scoring nothing twice."""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest
import torch

import sycam_dsl.run.runner as api
from sycam_dsl.baselines import baseline
from sycam_dsl.errors import SycamError
from sycam_dsl.lang.ast import to_sexpr
from sycam_dsl.parse import parse_grammar
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.synthesis import Budget, Search, SearchOptions
from tests.conftest import Clock
from tests.test_synthesis import GRAMMAR, ScriptedScorer, config, planted, scripted

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


# -- the time budget (fix 10) -----------------------------------------------------------------------


class TickingScorer(ScriptedScorer):
    """Scores from a table (None for expressions in ``invalid``, or for all with ``invalid=True``);
    each call takes one second of ``clock``."""

    def __init__(self, inner, table, clock: Clock, invalid: bool | set[str] = False) -> None:
        super().__init__(inner, table)
        self.clock, self.invalid, self.times = clock, invalid, []

    def score(self, nodes, j, c):
        self.times.append(self.clock.t)
        self.clock.t += 1.0
        out = super().score(nodes, j, c)
        return [None if self.invalid is True or to_sexpr(n) in (self.invalid or ()) else s
                for n, s in zip(nodes, out)]


def test_time_bounds_a_search_where_every_candidate_is_invalid(clock):
    # before: the deadline was checked only once there was an incumbent, so this ran to the grammar's end
    cfg = config(candidates=None, seconds=2.5, baselines=(), candidate_batch=32, image_chunk=None)
    s, scorer = scripted(Search(planted(), GRAMMAR, cfg, progress=False), TickingScorer, {}, clock, invalid=True)
    out = s.run()
    assert out.stopped_by == "time" and out.best is None and out.state.incumbent is None
    # every call started before the deadline; the last ends at most one chunk after it
    assert all(t < 2.5 for t in scorer.times) and out.seconds <= 2.5 + 1.0
    assert len(scorer.times) == 3
    c = out.state.counts
    assert c.considered == out.state.next_candidate == 1 + 2 + 4  # batches grow 1, 2, 4, ... up to 32
    assert c.invalid + c.heatmap_equivalent == c.considered


def test_a_batch_cut_by_the_deadline_keeps_its_judged_candidates(clock):
    # grads (the first candidate) wins everywhere; the rest lose on I3 from the batch's prefetched scores
    n = 24
    table = {"grads": [1.0] * n}
    cfg = config(candidates=None, seconds=4.5, baselines=(), candidate_batch=8, image_chunk=None)
    s, scorer = scripted(Search(planted(n), GRAMMAR, cfg, progress=False), TickingScorer, table, clock)
    out = s.run()
    # batches grow 1, 2, 4, 8. 1 s: batch 1 (grads) on I3; 2, 3 s: grads on I2, I1; 4 s: batch 2;
    # 5 s: batch 3 (4 candidates), started before the deadline and judged entirely by its I3 scores,
    # so it counts (before: thrown away)
    assert scorer.times == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert out.stopped_by == "time" and out.seconds == 5.0
    assert out.state.counts.considered == out.state.next_candidate == 1 + 2 + 4
    assert to_sexpr(out.best) == "grads" and out.state.counts.accepted == 1


def test_the_deadline_stops_the_loop_and_the_end_still_checks_the_baselines(clock, tmp_path):
    cfg = config(candidates=None, seconds=0.5)
    s, scorer = scripted(Search(planted(), GRAMMAR, cfg, tmp_path, progress=False), TickingScorer, {}, clock)
    out = s.run()
    assert scorer.times[0] == 0.0 and out.state.counts.considered == 0  # one chunk of candidates, then the deadline
    assert out.stopped_by == "time" and sorted(out.state.baselines) == sorted(
        ["GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM"])
    # every expression scores 0 here: the first baseline the grammar expresses is the result
    assert to_sexpr(out.best) == "grads" and out.state.history[-1]["baseline"] == "GradCAM"
    saved = json.loads((tmp_path / "checkpoint.json").read_text())["state"]
    assert saved["next_candidate"] == 0 and saved["seconds"] == out.seconds == len(scorer.times)


def test_synthesize_with_no_candidate_scored_writes_a_null_expression(tmp_path):
    from tests.test_synthesize_api import SCHEMA, data, tiny_model

    x, masks = data()
    # pgrads alone: no baseline is in this grammar, so the final check cannot give a result either
    g = parse_grammar("(synth-cam weights ((pgrads Vec)) Vec ((E Vec)) ((E Vec (pgrads (relu E)))))")
    result = synthesize(tiny_model(), "features", x, metric="sch", budget=Budget(seconds=1e-6), grammar=g,
                        data=DataOptions(masks=masks, use_cache=False),
                        search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4),
                        output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run")
    assert result.best is None and result.expression is None
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    assert d["expression"] is None and d["stopped_by"] == "time" and d["counts"]["considered"] == 0
    assert "SyCAM" not in [m["name"] for m in d["evaluation"][0]["methods"]]


# -- early checkpoints and SIGTERM (fix 11) -----------------------------------------------------------


class DyingScorer(ScriptedScorer):
    """Real scores for the baselines; the process "dies" (an exception no one catches) at the first
    candidate."""

    def __init__(self, inner) -> None:
        super().__init__(inner, {})
        self.baselines = {to_sexpr(baseline(b).node) for b in ("GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM")}

    def score(self, nodes, j, c):
        if any(to_sexpr(n) not in self.baselines for n in nodes):
            raise RuntimeError("killed")
        return self.inner.score(nodes, j, c)


def test_the_first_checkpoint_comes_when_the_search_starts(tmp_path):
    # before: the first one came after checkpoint_seconds (30 s), so a kill before that lost everything
    s, _ = scripted(Search(planted(), GRAMMAR, config(), tmp_path, progress=False), DyingScorer)
    with pytest.raises(RuntimeError, match="killed"):
        s.run()
    saved = json.loads((tmp_path / "checkpoint.json").read_text())["state"]
    assert saved["next_candidate"] == 0 and saved["baselines"] == {} and saved["incumbent"] is None
    resumed = Search(planted(), GRAMMAR, config(candidates=20), tmp_path, progress=False).run(resume=True)
    assert resumed.state.next_candidate == 20
    assert sorted(resumed.state.baselines) == sorted(["GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM"])


SIGTERM_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from sycam_dsl.synthesis import Search
    from tests.test_synthesis import GRAMMAR, CountingScorer, config, planted, scripted

    class Terminated(CountingScorer):
        def score(self, nodes, j, c):
            if len(self.calls) >= 60:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().score(nodes, j, c)

    def mine(signum, frame):
        raise SystemExit("the previous handler ran")

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    s, _ = scripted(Search(planted(), GRAMMAR, config(candidates=None), sys.argv[1], progress=False), Terminated)
    out = s.run()
    print(json.dumps({"stopped_by": out.stopped_by, "next": out.state.next_candidate,
                      "considered": out.state.counts.considered,
                      "restored": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL}))
""")


def test_sigterm_stops_the_search_like_ctrl_c(tmp_path):
    # before: SIGTERM killed the process with nothing saved since the last checkpoint
    p = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["stopped_by"] == "interrupted" and got["restored"]
    saved = json.loads((tmp_path / "checkpoint.json").read_text())["state"]
    assert saved["next_candidate"] == got["next"] == got["considered"] > 0


# -- the output folder (fix 12) -----------------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """``synthesize`` fails loudly (not with a SycamError) once it starts loading the model."""
    def loaded_model(*args, **kw):
        raise AssertionError("synthesize started working")
    monkeypatch.setattr(api, "loaded_model", loaded_model)


def _synth(out_dir, **kw):
    return synthesize("tiny", "features", torch.zeros(2, 3, 8, 8), out_dir=out_dir, **kw)


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def _unlocked(folder: Path) -> bool:
    fd = os.open(folder / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_an_output_folder_that_cannot_take_the_results_is_refused_before_any_work(tmp_path, no_work, monkeypatch):
    file = tmp_path / "results"
    file.write_text("not a folder")
    for bad in (file, file / "sub"):
        with pytest.raises(SycamError) as e:
            _synth(bad)
        assert str(bad) in _one_line(e) and "folder" in str(e.value)
    # an unwritable folder (simulated: chmod does not stop root)
    import sycam_dsl.util.files as files

    def refuse(*args, **kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(files.tempfile, "TemporaryFile", refuse)
    with pytest.raises(SycamError, match="cannot write to the output folder .*Permission denied") as e:
        _synth(tmp_path / "new")
    _one_line(e)


LOCK_SCRIPT = textwrap.dedent("""
    import sys
    from sycam_dsl.util.files import folder_lock
    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_a_folder_another_run_holds_is_refused_with_its_pid(tmp_path, no_work):
    folder = tmp_path / "out"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_SCRIPT, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SycamError) as e:
            _synth(folder)
        assert f"is used by another sycam-dsl run (pid {holder.pid}); wait for it" in _one_line(e)
        cli = subprocess.run([sys.executable, "-m", "sycam_dsl.cli", "synth", "-o", str(folder), "--quiet"],
                             capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
        assert cli.returncode == 2 and cli.stderr.count("\n") == 1
        assert cli.stderr.startswith("sycam-dsl: error:") and f"(pid {holder.pid})" in cli.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # once the holder is gone the folder is free again, and a failed run releases it too
    with pytest.raises(AssertionError, match="started working"):
        _synth(folder)
    assert _unlocked(folder)


# -- checkpoints checked field by field (fix 13) -------------------------------------------------------


class NoScorer(ScriptedScorer):
    def score(self, nodes, j, c):
        raise AssertionError("scored before the checkpoint was checked")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ckpt")
    Search(planted(), GRAMMAR, config(candidates=30), folder, progress=False).run()
    return json.loads((folder / "checkpoint.json").read_text())


def _set(d: dict, path: str, value) -> None:
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


BAD_CHECKPOINTS = [
    ("state.seconds", "NaN", "state.seconds must be a finite non-negative number"),
    ("state.seconds", math.nan, "state.seconds must be a finite"),
    ("state.seconds", -1.0, "state.seconds must be a finite non-negative"),
    ("state.next_candidate", -3, "state.next_candidate must be a non-negative integer"),
    ("state.counts.invalid", 1.5, "state.counts.invalid must be a non-negative integer"),
    ("state.counts.scored.I3", -1, "state.counts.scored.I3 must be"),
    ("state.counts.considered", 10 ** 6, "state.counts.considered is 1000000, but state.next_candidate"),
    ("state.incumbent.blocks[0][0]", 99.0, r"state.incumbent.blocks\[0\]\[0\] is 99.0, outside the metric's bounds"),
    ("state.incumbent.blocks[1][2]", math.inf, r"state.incumbent.blocks\[1\]\[2\] must be a finite number"),
    ("state.incumbent.blocks", [], "state.incumbent.blocks must be a list of 3 score lists"),
    ("state.incumbent.blocks[1]", [0.5], r"state.incumbent.blocks\[1\] has 1 scores, expected 6"),
    ("state.incumbent.expression", "(+ grads", "state.incumbent.expression '\\(\\+ grads' is not an expression"),
    ("state.incumbent.expression", "(+ grads nosuch)", "state.incumbent.expression .* is not an expression"),
    ("state.incumbent.expression", "2.0", "state.incumbent.expression '2.0' is a Real, not a Vec"),
    ("state.baselines.GradCAM", [0.5, 0.5], "state.baselines.GradCAM has 2 scores, expected 24"),
    ("state.baselines.FancyCAM", [0.5] * 24, "state.baselines has unknown baseline"),
    ("state.history", {}, "state.history must be a list"),
    ("state.counts", [], "state.counts must be an object"),
    ("state", [], "state must be an object"),
]


@pytest.mark.parametrize("field, value, message", BAD_CHECKPOINTS,
                         ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD_CHECKPOINTS])
def test_a_bad_checkpoint_is_refused_before_any_work(tmp_path, checkpoint, field, value, message):
    data = json.loads(json.dumps(checkpoint))
    _set(data, field, value)
    (tmp_path / "checkpoint.json").write_text(json.dumps(data))
    s, _ = scripted(Search(planted(), GRAMMAR, config(candidates=60), tmp_path, progress=False), NoScorer, {})
    with pytest.raises(SycamError, match=message) as e:
        s.run(resume=True)
    assert _one_line(e).startswith(f"cannot resume from {tmp_path / 'checkpoint.json'}: ")


def test_the_untouched_checkpoint_resumes(tmp_path, checkpoint):
    (tmp_path / "checkpoint.json").write_text(json.dumps(checkpoint))
    out = Search(planted(), GRAMMAR, config(candidates=60), tmp_path, progress=False).run(resume=True)
    assert out.state.counts.considered == 60


def test_resuming_a_single_search_per_class_or_the_other_way_round_is_refused(tmp_path, no_work):
    single = tmp_path / "single"
    single.mkdir()
    (single / "checkpoint.json").write_text("{}")
    with pytest.raises(SycamError, match="holds the checkpoint of a single search") as e:
        _synth(single, per_class=True, resume=True)
    _one_line(e)
    classes = tmp_path / "classes"
    (classes / "classes" / "class-3").mkdir(parents=True)
    (classes / "classes" / "class-3" / "checkpoint.json").write_text("{}")
    with pytest.raises(SycamError, match="holds the checkpoints of per-class searches") as e:
        _synth(classes, resume=True)
    _one_line(e)


# -- killed at random moments, resumed (fixes 10, 11) --------------------------------------------------

KILL_ARGS = ["synth", "--bundled-images", "60", "--levels", "10,20,all", "--quiet", "--report-images", "0",
             "--report-metrics", "deletion", "--candidates", "300", "--time", "1000"]


def _synth_cli(out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sycam_dsl.cli", *KILL_ARGS, "--cache-dir", str(cache),
                             "-o", str(out), *extra], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _watch(p: subprocess.Popen, folder: Path, until: float | None = None,
           after_checkpoint: float | None = None) -> dict | None:
    """Wait for ``p`` to end, or SIGKILL it ``until`` seconds after now or ``after_checkpoint``
    seconds after a checkpoint first shows in ``folder``; returns that first checkpoint, with ``at``
    the seconds after the start it was seen."""
    t0, first = time.monotonic(), None
    while p.poll() is None:
        now = time.monotonic() - t0
        if until is not None and now >= until:
            break
        if first is not None and after_checkpoint is not None and now >= first["at"] + after_checkpoint:
            break
        path = folder / "checkpoint.json"
        if first is None and path.is_file():
            first = {**json.loads(path.read_text()), "at": now}
        time.sleep(0.05)
    killed = p.poll() is None
    if killed:
        p.kill()
    out, err = p.communicate(timeout=60)
    assert killed or p.returncode == 0, err[-2000:]
    return first


def _final(folder: Path) -> dict:
    s = json.loads((folder / "checkpoint.json").read_text())["state"]
    return {"incumbent": (s["incumbent"]["expression"], s["incumbent"]["candidate"], s["incumbent"]["blocks"]),
            "history": [(h["expression"], h["score"], h["candidate"]) for h in s["history"]],
            "next_candidate": s["next_candidate"], "counts": s["counts"], "baselines": s["baselines"]}


def test_a_search_killed_at_random_moments_and_resumed_gives_the_uninterrupted_result(tmp_path):
    cache = tmp_path / "cache"
    t0 = time.monotonic()
    first = _watch(_synth_cli(tmp_path / "whole", cache), tmp_path / "whole")
    whole_seconds = time.monotonic() - t0
    # the first checkpoint comes right after the baselines, before any candidate is done (before: at the end)
    assert first is not None and first["state"]["next_candidate"] < 300 and first["state"]["seconds"] < 60

    out = tmp_path / "killed"
    rng = random.Random(11)
    # the first run is killed at a random moment after its first checkpoint (mid-search), the others
    # at random moments after their start (during the start-up, the search or the final tables)
    after = rng.uniform(0.5, 4.0)
    first_kill = _watch(_synth_cli(out, cache), out, after_checkpoint=after)
    assert first_kill is not None and first_kill["state"]["next_candidate"] < 300
    delays = [first_kill["at"] + after] + [rng.uniform(2, 12) for _ in range(2)]
    progress = [json.loads((out / "checkpoint.json").read_text())["state"]["next_candidate"]]
    for delay in delays[1:]:
        _watch(_synth_cli(out, cache, "--resume"), out, until=delay)
        # a resume loses at most the work since the last checkpoint: the file is always there
        progress.append(json.loads((out / "checkpoint.json").read_text())["state"]["next_candidate"])
    assert progress == sorted(progress)
    _watch(_synth_cli(out, cache, "--resume"), out)
    assert _final(out) == _final(tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert json.loads((out / "result.json").read_text())["expression"] == whole["expression"]
    print(f"kills at {', '.join(f'{d:.1f}' for d in delays)} s after the start; next_candidate after each: "
          f"{progress}; "
          f"uninterrupted run {whole_seconds:.1f} s, first checkpoint at {first['at']:.1f} s; "
          f"total {time.monotonic() - t0:.1f} s")
