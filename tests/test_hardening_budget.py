"""Hardening II (issue 23): forged checkpoints and changed held-out images refused on resume, an
interrupted guided search that does not suggest a resume it refuses, budgets that bound the whole
run (batches sized by a candidate's cost, the final tables reserved) and progress on every long phase.

Library-level cases call the function and check the exception; CLI cases run ``sycam-dsl`` in a
subprocess. The budget's wall-time figures come from ``benchmarks/bench_budget.py``, not from a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sycam_dsl.errors import SycamError
from sycam_dsl.synthesis import Budget, DataOptions, OutputOptions, Search, SearchOptions, synthesize
from tests.test_synthesis import GRAMMAR, config, planted
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
    p = subprocess.Popen([sys.executable, "-m", "sycam_dsl.cli", "synth", "--strategy", "guided", "--bundled-images",
                          "24", "--test-split", "0", "--levels", "8,all", "--report-images", "0",
                          "--report-metrics", "deletion", "--time", "1000", "--no-cache", "-o", str(out)],
                         cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / "checkpoint.json").is_file() and p.poll() is None and time.monotonic() - t0 < 240:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=240)
    assert p.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    # before: "continue with --resume -o DIR", which then said a guided search cannot be resumed
    assert "interrupted" in last and "--resume" not in last and "another --out" in last
