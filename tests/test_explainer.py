"""The self-contained explainer file (``sycam-dsl export``): loaded in a fresh Python process that cannot
import sycam_dsl, it gives the heatmaps of the engine (``compute_terminals`` + ``evaluate`` + the
template, as ``sycam-dsl explain``) for gradient, ScoreCAM, ablation and per-class methods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from sycam_dsl.bundled import load_bundled_model
from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.cli.main import main
from sycam_dsl.deploy.explainer import ExportError, build_explainer, export_explainer, save_explainer
from sycam_dsl.deploy.method import load_method
from sycam_dsl.evaluate import evaluate
from sycam_dsl.lang.ast import Node
from sycam_dsl.models import load_model
from sycam_dsl.template.heatmaps import layer_saliency, normalize_upsampled

GRADIENT, CIC, ABL = "(* grads acts)", "(relu cic)", "(+ abl (* 0.5 pgrads))"
#: the per-class result: classes 3 and 5 have their own expressions, every other class the fallback
PER_CLASS = {"1": "(* grads acts)", "2": "abl"}
FALLBACK = "(- abl (* 0.1 grads))"
TOLERANCE = 1e-5


def reference(model, layer: str | None, method, x: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The engine's heatmaps, as ``sycam-dsl explain`` computes them (``metrics.expression.expression_inputs``);
    a dispatch by hand, image by image with the expression of its target class."""
    nodes = [method] if isinstance(method, Node) else [*method.per_class.values(), method.fallback]
    names = sorted({n for node in nodes for n in node.terminals()})
    terms, info = compute_terminals(model, layer, x, targets, names, progress=False)
    size = tuple(x.shape[-2:])

    def heatmaps(node: Node) -> torch.Tensor:
        return normalize_upsampled(layer_saliency(evaluate(node, terms), info.acts, node.type), size)

    if isinstance(method, Node):
        return heatmaps(method)
    out = torch.stack([heatmaps(method.expression_for(int(c)))[i] for i, c in enumerate(info.targets)])
    return out


def per_class_result(folder: Path) -> Path:
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps({
        "expression": FALLBACK, "settings": {},
        "per_class": {"classes": {c: {"expression": e} for c, e in PER_CLASS.items()}, "fallback": FALLBACK}}))
    return folder


#: Runs in a fresh interpreter (isolated mode) where importing sycam_dsl fails: each case's file is
#: loaded with torch.jit.load (or torch.export.load) and run on the saved images and targets.
FRESH = textwrap.dedent("""
    import importlib.abc, json, sys
    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "sycam_dsl":
                raise ImportError("sycam_dsl must not be imported")
    sys.meta_path.insert(0, Blocked())
    import torch
    out = {}
    for case in json.load(open(sys.argv[1])):
        data = torch.load(case["data"])
        if case["file"].endswith(".pt2"):
            explainer = torch.export.load(case["file"]).module()
            t = data["targets"] if data["targets"] is not None else torch.full((data["x"].shape[0],), -1)
            h = explainer(data["x"], t)
        else:
            explainer = torch.jit.load(case["file"], map_location="cpu")
            h = explainer(data["x"], data["targets"]) if data["targets"] is not None else explainer(data["x"])
        out[case["file"]] = [list(h.shape), float((h - data["reference"]).abs().max())]
    out["imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "sycam_dsl")
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def fresh_results(tmp_path_factory) -> dict:
    """Explainer files of every case, checked in one fresh process: file -> [shape, max |difference|]."""
    tmp = tmp_path_factory.mktemp("explainers")
    bundled = load_bundled_model()
    resnet = load_model("resnet18", "random:0")
    gen = torch.Generator().manual_seed(0)
    per_class = load_method(str(per_class_result(tmp / "per_class_run")))
    cases = []
    # resnet18 at a layer inside a residual block: the layers after it also read the block's input (carried)
    for name, loaded, n, layer in (("bundled", bundled, 3, None), ("resnet18", resnet, 2, "layer3.1.conv1")):
        x = torch.randn(n, 3, 64, 64, generator=gen)
        targets = torch.tensor([1, 2, 0][:n])  # both class expressions and the fallback (on the bundled model)
        methods = {"gradient": (GRADIENT, None), "cic": (CIC, None), "abl": (ABL, targets),
                   "per_class": (per_class, targets)}
        for kind, (text, t) in methods.items():
            method = load_method(text)
            file = tmp / f"{name}_{kind}.pt"
            save_explainer(loaded.module, layer or loaded.target_layer, method, file, x[:1], loaded.name)
            data = tmp / f"{name}_{kind}.data"
            torch.save({"x": x, "targets": t, "reference": reference(loaded, layer, method, x, t)}, data)
            cases.append({"file": str(file), "data": str(data)})
        if name == "bundled":  # the torch.export form of the gradient expression
            file = tmp / "bundled_gradient.pt2"
            export_explainer(loaded.module, loaded.target_layer, load_method(GRADIENT), file, x[:2])
            cases.append({"file": str(file), "data": str(tmp / "bundled_gradient.data")})
    (tmp / "cases.json").write_text(json.dumps(cases))
    script = tmp / "fresh.py"
    script.write_text(FRESH)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-I", "-W", "ignore", str(script), str(tmp / "cases.json")],
                          capture_output=True, text=True, env=env, cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(cases) + 1
    return results


@pytest.mark.parametrize("case", [f"{model}_{kind}.pt" for model in ("bundled", "resnet18")
                                  for kind in ("gradient", "cic", "abl", "per_class")] + ["bundled_gradient.pt2"])
def test_the_file_gives_the_engines_heatmaps_without_sycam_dsl(fresh_results, case):
    found = {Path(f).name: v for f, v in fresh_results.items() if f != "imported"}
    shape, diff = found[case]
    assert shape[1:] == [64, 64]
    assert diff < TOLERANCE
    assert fresh_results["imported"] == []


def test_targets_pick_the_class_and_negative_ones_the_prediction():
    loaded = load_bundled_model()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    explainer = build_explainer(loaded.module, loaded.target_layer, load_method(GRADIENT), x[:1])
    with torch.no_grad():
        predicted = loaded.module(x).argmax(dim=1)
    other = (predicted + 1) % 4
    assert torch.equal(explainer(x, torch.full((3,), -1)), explainer(x))
    with torch.no_grad():  # the gradient pass turns gradients on for itself, and the mode comes back
        assert torch.equal(explainer(x), explainer(x, torch.full((3,), -1))) and not torch.is_grad_enabled()
    got = explainer(x, other)
    assert float((got - reference(loaded, None, load_method(GRADIENT), x, other)).abs().max()) < TOLERANCE
    assert float((got - explainer(x)).abs().max()) > 1e-3  # another class explains differently


def test_the_callers_model_is_left_as_it_was():
    loaded = load_bundled_model()
    module = loaded.module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    build_explainer(module, loaded.target_layer, load_method(GRADIENT), torch.randn(1, 3, 64, 64))
    assert module.training
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(not m._forward_hooks for m in module.modules())


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot split it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        if a.sum() > 0:
            a = a * 2
        return self.fc(a.mean(dim=(2, 3)))


def test_a_model_that_cannot_be_split_is_refused_in_one_line():
    with pytest.raises(ExportError) as e:
        build_explainer(DataDependent(), "conv", load_method(GRADIENT), torch.randn(1, 3, 16, 16))
    assert "cannot split DataDependent at layer 'conv'" in str(e.value) and "\n" not in str(e.value)


def test_the_export_form_refuses_what_it_cannot_hold(tmp_path):
    loaded = load_bundled_model()
    with pytest.raises(ExportError, match="reads cic: use the TorchScript form"):
        export_explainer(loaded.module, loaded.target_layer, load_method(CIC), tmp_path / "x.pt2",
                         torch.randn(2, 3, 64, 64))


def test_the_command_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "explainer.pt"
    assert main(["export", GRADIENT, "--model", "bundled", "-o", str(out)]) == 0
    line = capsys.readouterr().out
    assert "wrote" in line and "features.14" in line and "grads acts" in line
    explainer = torch.jit.load(str(out))
    manifest = json.loads(_extra(out, "sycam_dsl/explainer.json"))
    assert manifest["method"] == GRADIENT and manifest["terminals"] == ["grads", "acts"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    loaded = load_bundled_model()
    assert float((explainer(x) - reference(loaded, None, load_method(GRADIENT), x, None)).abs().max()) < TOLERANCE


def test_the_command_says_in_one_line_what_is_wrong(tmp_path, capsys):
    code = main(["export", CIC, "--model", "bundled", "--format", "export", "-o", str(tmp_path / "x.pt2")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sycam-dsl: error: ") and "TorchScript form" in err and "\n" not in err


def _extra(path: Path, name: str) -> str:
    files = {name: ""}
    torch.jit.load(str(path), _extra_files=files)
    return files[name]
