"""The run as one object (``run.runner.Run``) and the facts of a run kept in one place: the objective
parsed by one function (``parse_objective``), the output folder taken by one (``take_output_folder``),
the default time budget written once (``DEFAULT_SECONDS``) and ``build_problem``'s options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import sycam_dsl
from sycam_dsl.errors import SycamError
from sycam_dsl.metrics import get_metric
from sycam_dsl.metrics.errors import MetricError
from sycam_dsl.metrics.objectives import Objectives, metric_names, parse_objective
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.run import runner as runner_module
from sycam_dsl.run.inputs import as_budget, loaded_model
from sycam_dsl.run.outputs import take_output_folder
from sycam_dsl.synthesis import Budget, SearchOptions
from sycam_dsl.synthesis.build import ProblemOptions, build_problem
from sycam_dsl.synthesis.config import DEFAULT_SECONDS, SearchConfig
from sycam_dsl.synthesis.problem import Data
from sycam_dsl.synthesis.state import CHECKPOINT_NAME
from tests.cam_reference import TinyCNN

PACKAGE = Path(sycam_dsl.__file__).parent


def test_metric_names_split_one_way():
    assert metric_names("deletion, insertion,,") == ["deletion", "insertion"]
    assert metric_names(" ") == []


def test_parse_objective_one_metric_several_and_options():
    one = parse_objective("deletion", {"steps": 4})
    assert one == get_metric("deletion").with_options(steps=4)
    both = parse_objective(" deletion , insertion", {"deletion.steps": 3})
    assert isinstance(both, Objectives) and both.names == ["deletion", "insertion"]
    assert both.options["deletion"] == {"steps": 3}
    assert both.higher == [get_metric(n).higher_is_better for n in ("deletion", "insertion")]
    assert parse_objective(["deletion", get_metric("insertion")]) == parse_objective("deletion,insertion")
    assert parse_objective(both) is both
    # the command line's way: each name made with its own options
    made = parse_objective("deletion,insertion", make=lambda n: get_metric(n, steps=5))
    assert isinstance(made, Objectives) and made.options == {"deletion": {"steps": 5}, "insertion": {"steps": 5}}
    with pytest.raises(MetricError, match="named twice"):
        parse_objective("deletion,deletion")
    with pytest.raises(MetricError, match="no metric of"):
        parse_objective("deletion,insertion", {"colour": 1})


def test_the_metric_list_is_split_in_one_place():
    splits = [f"{p.relative_to(PACKAGE)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
              for i, line in enumerate(p.read_text().splitlines(), 1)
              if re.search(r"(metric|report)\w*\.split\(\",\"\)", line)]
    assert splits == [], splits


def test_the_default_time_budget_has_one_home():
    assert as_budget(None).seconds == DEFAULT_SECONDS
    assert SearchConfig(get_metric("deletion")).budget.seconds == DEFAULT_SECONDS
    written = [f"{p.relative_to(PACKAGE)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if re.search(r"\b600(\.0)?\b", line) and "budget=600" not in line]
    assert written == ["synthesis/config.py:" + str(_line_of(PACKAGE / "synthesis/config.py", "DEFAULT_SECONDS ="))]


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_take_output_folder(tmp_path):
    with take_output_folder(tmp_path / "new", resume=False, per_class=False) as folder:
        assert folder.is_dir()
    with pytest.raises(SycamError, match="--resume: no checkpoint"):
        with take_output_folder(tmp_path / "absent", resume=True, per_class=False, strict=True):
            pass
    single = tmp_path / "single"
    single.mkdir()
    (single / CHECKPOINT_NAME).write_text("{}")
    with pytest.raises(SycamError, match="pass --resume"):
        with take_output_folder(single, resume=False, per_class=False, strict=True):
            pass
    with take_output_folder(single, resume=False, per_class=False):  # the API starts afresh
        pass
    with pytest.raises(SycamError, match="cannot resume .* with per-class searches"):
        with take_output_folder(single, resume=True, per_class=True):
            pass


def test_build_problem_options_and_keywords_agree():
    torch.manual_seed(0)
    model = loaded_model(TinyCNN(classes=3), None, "cpu")
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    names = ["grads", "acts"]
    by_options, _ = build_problem(model, "features", Data(x, list("abcd")), names,
                                  options=ProblemOptions(use_cache=False, progress=False, memo_mb=0))
    by_keywords, _ = build_problem(model, "features", Data(x, list("abcd")), names, use_cache=False, progress=False,
                                   memo_mb=0)
    assert by_options.inputs.memo is None and by_keywords.inputs.memo is None
    assert torch.equal(by_options.terminals["grads"], by_keywords.terminals["grads"])
    with pytest.raises(TypeError):
        build_problem(model, "features", Data(x, list("abcd")), names, colour=1)


def test_synthesize_runs_the_phases_of_one_run_in_order(tmp_path, monkeypatch):
    called: list[str] = []
    for phase in ("terminals", "split", "search", "evaluate", "write"):
        original = getattr(runner_module.Run, phase)

        def recorded(self, *args, _original=original, _phase=phase, **kw):
            called.append(_phase)
            return _original(self, *args, **kw)
        monkeypatch.setattr(runner_module.Run, phase, recorded)
    torch.manual_seed(0)
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = synthesize(TinyCNN(classes=3), "features", x, metric="deletion", metric_options={"steps": 3},
                        budget=Budget(candidates=5), out_dir=tmp_path / "run",
                        data=DataOptions(use_cache=False), search=SearchOptions(level_sizes=(4, 8, None),
                                                                                equivalence_size=4),
                        output=OutputOptions(progress=False, report_images=0))
    assert called == ["terminals", "split", "search", "evaluate", "write"]
    assert (tmp_path / "run" / "result.json").is_file() and result.data["settings"]["budget_seconds"] is None
