"""``synthesize`` and ``sycam-dsl synth`` end to end on a tiny CNN: the output folder, result.json
against its schema, the compiled module, resume through the CLI, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from sycam_dsl.cli import main
from sycam_dsl.evaluate import evaluate
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.synthesis import Budget, SearchOptions
from tests.cam_reference import TinyCNN

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "sycam_dsl" / "synthesis" / "result.schema.json")
                    .read_text())


def tiny_model() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN(classes=3)


def data(n: int = 16, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 8:20, 6:22] = True
    return x, masks


def run(tmp_path: Path, report_images: int = 3, **kw):
    x, masks = data()
    args = dict(metric="deletion", metric_options={"steps": 4}, budget=Budget(candidates=12),
                data=DataOptions(masks=masks, use_cache=False),
                search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4),
                output=OutputOptions(report_metrics=["insertion", "average_drop", "sch"], progress=False,
                                     report_images=report_images),
                out_dir=tmp_path / "run")
    args.update(kw)
    return synthesize(tiny_model(), "features", x, **args), x


def test_output_folder_and_schema(tmp_path):
    result, x = run(tmp_path)
    out = tmp_path / "run"
    d = json.loads((out / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    assert d["expression"] == result.expression and d["stopped_by"] == "candidates"
    assert d["counts"]["considered"] == 12
    assert [e["metric"] for e in d["evaluation"]] == ["deletion", "insertion", "average_drop", "sch"]
    assert [m["name"] for m in d["evaluation"][0]["methods"] if not m["control"]] == [
        "GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM", "SyCAM"]
    assert set(d["level_scores"]) == {"I3", "I2", "I1"}
    # the searched images' table's SyCAM mean is the incumbent's I1 score (same images, same metric)
    assert d["test_split"]["images"] == 3 and len(d["evaluation"]) == len(d["evaluation_search"])
    sycam = next(m["mean"] for m in d["evaluation_search"][0]["methods"] if m["name"] == "SyCAM")
    assert sycam == pytest.approx(d["level_scores"]["I1"], abs=1e-9)
    assert d["history"][-1]["score"] == pytest.approx(sycam, abs=1e-9)
    for name in ("report.md", "heatmaps.png", "score.png", "cam.pt", "checkpoint.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert result.expression in report and "| SyCAM |" in report and "**sch**" in report
    # the compiled module computes the incumbent's weights
    from sycam_dsl.cam.compute import compute_terminals
    module = torch.jit.load(str(out / "cam.pt"))
    names = result.best.terminals()
    terms, _ = compute_terminals(tiny_model(), "features", x, None, names, progress=False)
    assert torch.allclose(module(*[terms[t] for t in names]), evaluate(result.best, terms))
    assert "SyCAM" in result.table()


def test_broken_result_fails_the_schema(tmp_path):
    _, _ = run(tmp_path, report_images=0)
    d = json.loads((tmp_path / "run" / "result.json").read_text())
    d["counts"].pop("considered")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(d, SCHEMA)


def test_per_class_result_compiles_to_a_dispatch(tmp_path):
    x, masks = data(24)
    result = synthesize(tiny_model(), "features", x, metric="sch", per_class=True, budget=Budget(candidates=6),
                        data=DataOptions(masks=masks, use_cache=False),
                        search=SearchOptions(level_sizes=(2, 4, None), equivalence_size=2, min_class_images=2),
                        output=OutputOptions(progress=False, report_images=2), out_dir=tmp_path / "pc")
    d = json.loads((tmp_path / "pc" / "result.json").read_text())
    jsonschema.validate(d, SCHEMA)
    assert d["per_class"] is not None and d["expression"] == d["per_class"]["fallback"]
    assert result.dispatch is not None
    classes = {int(c) for c in d["per_class"]["classes"]}
    assert classes == set(result.dispatch.per_class)
    files = torch.jit.load(str(tmp_path / "pc" / "cam.pt"), _extra_files={"sycam_dsl/dispatch.json": ""})
    assert files is not None
    # sycam-dsl compile turns the per-class result.json into the same dispatch
    assert main(["compile", str(tmp_path / "pc" / "result.json"), "-o", str(tmp_path / "again.pt")]) == 0
    extra = {"sycam_dsl/dispatch.json": ""}
    torch.jit.load(str(tmp_path / "again.pt"), _extra_files=extra)
    manifest = json.loads(extra["sycam_dsl/dispatch.json"])
    assert manifest["fallback"] == d["per_class"]["fallback"]
    assert {int(c) for c in manifest["classes"]} == classes


def _write_folder(root: Path, n: int = 12) -> Path:
    x, _ = data(n)
    img = ((x - x.amin()) / (x.amax() - x.amin()) * 255).byte().permute(0, 2, 3, 1).numpy()
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.ascontiguousarray(img[i])).save(root / f"c{i % 2}" / f"{i:03d}.png")
    return root


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sycam_dsl.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)


def test_cli_synth_resume_and_errors(tmp_path):
    images = _write_folder(tmp_path / "imgs")
    common = ["synth", "--model", "tests.cam_reference:TinyCNN", "--weights", "random:0", "--layer", "features",
              "--size", "32", "--images", str(images), "--metric", "deletion", "--steps", "3", "--levels", "4,8,all",
              "--equivalence-images", "4", "--no-cache", "--quiet", "-o", str(tmp_path / "out")]
    first = _cli(*common, "--candidates", "5", "--sanity")
    assert first.returncode == 0, first.stderr
    assert "best expression:" in first.stdout and "GradCAM++" in first.stdout
    sanity = first.stdout.splitlines().index(next(line for line in first.stdout.splitlines()
                                                  if line.startswith("model-parameter randomization:")))
    assert first.stdout.splitlines()[sanity + 1].split()[:3] == ["method", "Spearman", "SSIM"]
    again = _cli(*common, "--candidates", "9")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--resume" in again.stderr
    resumed = _cli(*common, "--candidates", "9", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    d = json.loads((tmp_path / "out" / "result.json").read_text())
    assert d["counts"]["considered"] == 9
    missing = _cli("synth", "--model", "resnet18", "--resume", "-o", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stderr.startswith("sycam-dsl: error:")
    assert "Traceback" not in missing.stderr
