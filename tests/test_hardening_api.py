"""Hardening II, the deploy side: ``export`` refuses a layer or a result it cannot serve in one line, and the
Python API (``SyCAM``, the grad-cam and torchcam adapters) and the explainer file warn or say in one line
what is wrong, as the command line does.

CLI cases run ``sycam-dsl`` in a subprocess and check exit code 2 and exactly one line on stderr."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sycam_dsl import SyCAM
from sycam_dsl.bundled import load_bundled_model
from sycam_dsl.cli.main import main
from sycam_dsl.deploy.explainer import save_explainer
from sycam_dsl.deploy.method import MethodError, load_method
from sycam_dsl.errors import SycamError

ROOT = Path(__file__).resolve().parents[1]
#: Finite terminals, but weights that overflow float32 to Inf (and NaN after the template's sums).
OVERFLOW = "(* 1e30 (* 1e30 (* grads grads)))"
GRADIENT = "(* grads acts)"
#: a model factory of 10 classes, for a result "searched" on another model than the bundled one (4 classes)
TEN_CLASSES = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
"""


@pytest.fixture(scope="module")
def loaded():
    return load_bundled_model()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _cli(*args: str, cwd: Path | None = None) -> tuple[int, list[str], str]:
    """``sycam-dsl ARGS`` in a subprocess: (exit code, stderr lines, stdout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd or ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "sycam_dsl.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=600)
    return proc.returncode, proc.stderr.strip().splitlines(), proc.stdout


def _one_error(code: int, err: list[str], *words: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("sycam-dsl: error: "), err
    assert all(w in err[0] for w in words), err[0]


def _warned(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# -- S6: export checks the layer as terminals does ----------------------------------------------------

def test_export_refuses_a_layer_without_activations_in_one_line(tmp_path):
    out = tmp_path / "e.pt"
    code, err, _ = _cli("export", "(relu grads)", "--model", "bundled", "--layer", "classifier", "-o", str(out))
    _one_error(code, err, "layer 'classifier' (Linear)", "not activations [N, K, h, w]", "convolutional layer")
    assert not out.exists()


# -- export of a result searched on a model with another number of classes ------------------------------

def _result(folder: Path, settings: dict, per_class: bool = False) -> Path:
    folder.mkdir()
    data = {"expression": GRADIENT, "settings": settings}
    if per_class:
        data["per_class"] = {"classes": {"1": {"expression": "(* grads acts)"}}, "fallback": "(relu grads)"}
    (folder / "result.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("per_class", [False, True])
def test_export_refuses_a_result_searched_on_a_model_of_other_classes(tmp_path, monkeypatch, per_class):
    (tmp_path / "tenclasses.py").write_text(TEN_CLASSES)
    run = _result(tmp_path / "run", {"model": "tenclasses:make", "model_source": "factory", "weights": None,
                                     "size": 32}, per_class)
    code, err, _ = _cli("export", str(run), "--model", "bundled", "-o", str(tmp_path / "e.pt"), cwd=tmp_path)
    _one_error(code, err, "searched on tenclasses:make (10 classes)", "bundled-small-cnn (4 classes)",
               "--model tenclasses:make", "class index" if per_class else "scores")
    assert not (tmp_path / "e.pt").exists()
    # the hint's command: into the model it was searched on, the result exports
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["export", str(run), "--model", "tenclasses:make", "--size", "32", "--layer", "1", "-o", str(tmp_path / "e.pt")]) == 0


def test_export_of_a_result_uses_the_layer_it_was_searched_at(tmp_path, capsys):
    run = _result(tmp_path / "run", {"model": "bundled-small-cnn", "model_source": "bundled", "weights": None,
                                     "layer": "features.10", "size": 64})
    assert main(["export", str(run), "--model", "bundled", "-o", str(tmp_path / "e.pt")]) == 0
    assert "at layer features.10," in capsys.readouterr().out
    # --layer still wins, and a result of another model keeps the model's default
    assert main(["export", str(run), "--model", "bundled", "--layer", "features.14", "-o", str(tmp_path / "f.pt")]) == 0
    assert "at layer features.14," in capsys.readouterr().out
    other = _result(tmp_path / "other", {"model": "elsewhere", "layer": "features.10"})
    assert main(["export", str(other), "--model", "bundled", "-o", str(tmp_path / "g.pt")]) == 0
    assert "at layer features.14," in capsys.readouterr().out


# -- S8: NaN or Inf weights are warned about, as explain does ------------------------------------------

def test_sycam_warns_when_the_weights_overflow(loaded, images, caplog):
    with caplog.at_level(logging.WARNING, logger="sycam_dsl"):
        SyCAM(loaded, None, GRADIENT)(images)
        assert not _warned(caplog, "NaN or Inf")  # finite weights: no warning
        h = SyCAM(loaded, None, OVERFLOW)(images)
    assert torch.equal(h, torch.zeros_like(h))  # blank, as explain's
    assert _warned(caplog, "weights are NaN or Inf on 2 of 2 images (their heatmaps are blank)")


def test_the_grad_cam_adapter_warns_and_gives_blank_maps_not_nan(loaded, images, caplog):
    gradcam = pytest.importorskip("sycam_dsl.integrations.gradcam")
    with caplog.at_level(logging.WARNING, logger="sycam_dsl"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with gradcam.SyCAMGradCAM(loaded.module, [loaded.module.features[14]], OVERFLOW) as cam:
            h = cam(images, None)
    assert not np.isnan(h).any() and float(np.abs(h).max()) == 0.0
    assert _warned(caplog, "weights are NaN or Inf on 2 of 2 images")


def test_the_torchcam_adapter_warns(loaded, images, caplog):
    torchcam = pytest.importorskip("sycam_dsl.integrations.torchcam")
    with caplog.at_level(logging.WARNING, logger="sycam_dsl"):
        with torchcam.SyCAMTorchCAM(loaded.module, "features.14", OVERFLOW, input_shape=(3, 64, 64)) as cam:
            out = loaded.module(images)
            maps = cam(class_idx=out.argmax(dim=1).tolist())
    assert not torch.isnan(maps[0]).any()
    assert _warned(caplog, "weights are NaN or Inf on 2 of 2 images")


@pytest.fixture(scope="module")
def explainers(loaded, images, tmp_path_factory) -> dict[str, torch.jit.ScriptModule]:
    """The explainer files of a sound and of an overflowing expression, loaded back."""
    tmp = tmp_path_factory.mktemp("explainers")
    files = {}
    for name, text in (("gradient", GRADIENT), ("overflow", OVERFLOW)):
        path = tmp / f"{name}.pt"
        save_explainer(loaded.module, loaded.target_layer, load_method(text), path, images[:1], loaded.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation
            files[name] = torch.jit.load(str(path))
    return files


def test_the_explainer_file_warns_when_the_weights_overflow(explainers, images):
    with pytest.warns(UserWarning, match=r"the expression: weights are NaN or Inf on 2 of 2 images \(their "
                                         r"heatmaps are blank\)"):
        h = explainers["overflow"](images)
    assert torch.equal(h, torch.zeros_like(h))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_explainer_file_refuses_nan_or_inf_images(explainers, images, value):
    x = images.clone()
    x[1, 0, 3, 3] = value
    with pytest.raises(torch.jit.Error) as e:
        explainers["gradient"](x)
    assert str(e.value).strip().splitlines()[-1] == ("builtins.ValueError: image 1 has NaN or Inf values; the "
                                                     "explainer needs finite images")


def test_the_explainer_file_says_which_target_is_out_of_range(explainers, images):
    with pytest.raises(torch.jit.Error) as e:
        explainers["gradient"](images, torch.tensor([0, 7]))
    # TorchScript puts its own traceback first; the error itself is one line
    assert str(e.value).strip().splitlines()[-1] == (
        "builtins.ValueError: target class 7 of image 1 is out of range: the model has 4 classes (a negative target "
        "explains the predicted class)")
    assert explainers["gradient"](images, torch.tensor([-1, 3])).shape == (2, 64, 64)  # in range: no error


# -- API messages: one line that says what to change -----------------------------------------------

@pytest.mark.parametrize("targets, message", [
    ("cat", "got str; map class names to their indices first"),
    (["cat", "dog"], "got str 'cat'; map class names to their indices first"),
    ([0.5, 1.0], "got float '0.5'"),
])
def test_targets_that_are_not_class_indices_are_refused_in_one_line(loaded, images, targets, message):
    cam = SyCAM(loaded, None, GRADIENT)
    with pytest.raises(MethodError) as e:
        cam(images, targets)
    assert message in str(e.value) and "\n" not in str(e.value)
    # class indices of any integer kind still work
    assert torch.equal(cam(images, [np.int64(1), torch.tensor(2)]), cam(images, [1, 2]))


def test_a_raw_scores_target_is_refused_in_one_line(loaded, images):
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    with pytest.raises(MethodError) as e:
        SyCAM(loaded, None, GRADIENT)(images, [targets.RawScoresOutputTarget()] * 2)
    assert "RawScoresOutputTarget gives 4 scores, not one class logit" in str(e.value)
    assert "ClassifierOutputTarget(c)" in str(e.value) and "\n" not in str(e.value)


def _adapter(name: str):
    """A constructor of ``SyCAM`` or an adapter on a given model, at the bundled model's layer."""
    if name == "sycam":
        return lambda model: SyCAM(model, None, GRADIENT)
    if name == "gradcam":
        gradcam = pytest.importorskip("sycam_dsl.integrations.gradcam").SyCAMGradCAM
        return lambda model: gradcam(model, ["features.14"], GRADIENT)
    torchcam = pytest.importorskip("sycam_dsl.integrations.torchcam").SyCAMTorchCAM
    return lambda model: torchcam(model, "features.14", GRADIENT)


@pytest.mark.parametrize("adapter", ["sycam", "gradcam", "torchcam"])
def test_a_model_that_is_not_a_module_is_refused_in_one_line(adapter):
    with pytest.raises(SycamError) as e:
        _adapter(adapter)("resnet18")
    assert str(e.value) == ("model must be a torch.nn.Module (or a LoadedModel), got str: load it with "
                            "sycam_dsl.models.load_model('resnet18').module")


def test_the_grad_cam_adapter_takes_a_layer_name_alone(loaded, images):
    gradcam = pytest.importorskip("sycam_dsl.integrations.gradcam")
    with gradcam.SyCAMGradCAM(loaded.module, "features.14", GRADIENT) as by_name:
        got = by_name(images, None)
    with gradcam.SyCAMGradCAM(loaded.module, [loaded.module.features[14]], GRADIENT) as by_module:
        want = by_module(images, None)
    assert np.array_equal(got, want)
