"""Targets other than one class logit (docs/cam-engine.md#targets): multi-label (``classes:``) and
regression (``output:``) targets against autograd and a ScoreCAM loop written here, a segmentation
target on a small hand-made segmentation net through every terminal, the baselines and a search, a
callable target, grad-cam's target objects, the one-line errors and the class default unchanged.

CPU only, nothing downloaded: seeded random weights, float64 where values are compared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.errors import SycamError
from sycam_dsl.metrics.registry import MetricInputs, get_metric
from sycam_dsl.models.errors import TargetError
from sycam_dsl.models.targets import (
    ClassesTarget,
    ClassTarget,
    OutputTarget,
    SegmentationTarget,
    parse_target,
)

ALL = ["grads", "pgrads", "cic", "mlogits", "abl", "acts", "G", "A"]

ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    """conv -> ReLU -> ``block`` (the target layer) -> pool -> fc: ``outputs`` scores per image."""

    def __init__(self, outputs: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean(dim=(2, 3)))


class SegNet(nn.Module):
    """A tiny segmentation net: ``{'out': [N, classes, H, W]}`` as torchvision's segmentation models."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.block(self.stem(x)))
        return {"out": F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def _setup(model: nn.Module, n: int = 2, size: int = 16, dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    model = model.to(dtype).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    return model, torch.randn(n, 3, size, size, dtype=dtype)


def _reference(model: Net, x: torch.Tensor, score) -> dict[str, torch.Tensor]:
    """``grads`` (autograd by hand), ``cic`` and ``abl`` (a loop per channel) of ``score(logits) -> [N]``."""
    acts = model.block(model.stem(x)).detach().requires_grad_(True)
    head = (lambda a: model.fc(a.mean(dim=(2, 3))))
    s = score(head(acts))
    (g,) = torch.autograd.grad(s.sum(), acts)
    n, k = acts.shape[:2]
    base = score(model(torch.zeros_like(x[:1])).expand(n, -1))
    cic, abl = torch.empty(n, k, dtype=x.dtype), torch.empty(n, k, dtype=x.dtype)
    with torch.no_grad():
        for c in range(k):
            up = F.interpolate(acts[:, c:c + 1], size=x.shape[-2:], mode="bilinear", align_corners=False)
            lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
            mask = torch.where(hi > lo, (up - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(up))
            cic[:, c] = score(model(x * mask)) - base
            dropped = acts.clone()
            dropped[:, c] = 0
            abl[:, c] = (s - score(head(dropped))) / s
    return {"grads": g.mean(dim=(2, 3)), "cic": cic, "abl": abl}


@pytest.mark.parametrize("spec, score", [
    ("classes:1,3", lambda z: z[:, 1] + z[:, 3]),
    ("output:2", lambda z: z[:, 2]),
])
def test_multilabel_and_regression_targets_match_a_brute_force_reference(spec, score):
    model, x = _setup(Net())
    target = parse_target(spec)
    terms, info = compute_terminals(model, "block", x, target, ["grads", "cic", "abl"], progress=False)
    want = _reference(model, x, score)
    for name in ("grads", "cic", "abl"):
        torch.testing.assert_close(terms[name], want[name], rtol=1e-7, atol=1e-9, msg=name)
    torch.testing.assert_close(info.z_c, score(model(x)))
    assert info.target is not None and info.target.name == spec
    # the metrics score the raw target score too
    inputs = MetricInputs(x, info.targets, model=model, target=info.target)
    heat = torch.rand(2, 16, 16, dtype=x.dtype)
    got = get_metric("average_drop")(inputs.with_heatmaps(heat))
    base, masked = score(model(x)), score(model(x * heat[:, None]))
    want_drop = 100 * (base - masked).clamp_min(0) / base.clamp_min(torch.finfo(base.dtype).tiny)
    torch.testing.assert_close(got.per_image.double(), want_drop, rtol=1e-5, atol=1e-5)


def test_the_class_target_is_the_default_bit_for_bit():
    model, x = _setup(Net())
    plain, plain_info = compute_terminals(model, "block", x, None, ALL, progress=False)
    named, named_info = compute_terminals(model, "block", x, ClassTarget(), ALL, progress=False)
    for name in ALL:
        assert torch.equal(plain[name], named[name]), name
    assert named_info.target is None and torch.equal(plain_info.targets, named_info.targets)
    assert parse_target("class").is_class and parse_target("predicted").is_class
    assert torch.equal(parse_target("3"), torch.tensor(3))


def _seg_score(model: SegNet, x: torch.Tensor, c: int):
    """The segmentation score with the mask fixed from ``x``'s own prediction, for the reference."""
    with torch.no_grad():
        mask = (model(x)["out"].argmax(dim=1) == c).to(x.dtype)
    return mask, (lambda out: (out[:, c] * mask).sum(dim=(1, 2)))


def test_a_segmentation_target_fixes_the_mask_from_the_unperturbed_prediction():
    model, x = _setup(SegNet())
    mask, score = _seg_score(model, x, 1)
    assert 0 < float(mask.mean()) < 1  # the test is about something
    terms, info = compute_terminals(model, "block", x, parse_target("segmentation:1"), ["grads", "cic", "abl"],
                                    progress=False)
    acts = model.block(model.stem(x)).detach().requires_grad_(True)
    head = (lambda a: F.interpolate(model.head(a), size=x.shape[-2:], mode="bilinear", align_corners=False))
    s = score(head(acts))
    (g,) = torch.autograd.grad(s.sum(), acts)
    torch.testing.assert_close(terms["grads"], g.mean(dim=(2, 3)))
    torch.testing.assert_close(info.z_c, s.detach())
    # cic of channel 0 of image 0 by hand: the masked image scored with the original image's mask
    with torch.no_grad():
        up = F.interpolate(acts[:1, :1], size=x.shape[-2:], mode="bilinear", align_corners=False)
        m = (up - up.min()) / (up.max() - up.min())
        masked = (model(x[:1] * m)["out"][:, 1] * mask[:1]).sum()
        base = (model(torch.zeros_like(x[:1]))["out"][:, 1] * mask[:1]).sum()
    torch.testing.assert_close(terms["cic"][0, 0], masked - base)
    assert isinstance(info.target, SegmentationTarget) and torch.equal(info.target.masks, mask)


def test_a_segmentation_target_runs_every_terminal_the_baselines_and_a_search(tmp_path):
    from sycam_dsl.baselines import baselines
    from sycam_dsl.run import DataOptions, OutputOptions, synthesize
    from sycam_dsl.synthesis import Budget

    model, x = _setup(SegNet(), n=4, size=32, dtype=torch.float32)
    terms, info = compute_terminals(model, "block", x, SegmentationTarget(1), ALL, progress=False)
    for name in ALL:
        assert bool(torch.isfinite(terms[name]).all()), name
    inputs = MetricInputs(x, info.targets, model=model, target=info.target)
    for b in baselines():
        heat = b.heatmaps(terms, info.acts, (32, 32))
        assert heat.shape == (4, 32, 32)
        assert torch.isfinite(get_metric("average_drop")(inputs.with_heatmaps(heat)).per_image).all()
    result = synthesize(model, "block", x, metric="deletion", metric_options={"steps": 4}, budget=Budget(candidates=6),
                        data=DataOptions(targets="segmentation:1", use_cache=False, runtime="torch"),
                        output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / "run")
    assert result.expression is not None
    import json
    settings = json.loads((tmp_path / "run" / "result.json").read_text())["settings"]
    assert settings["target"] == "segmentation:1"


def doubled_class_one(out: torch.Tensor) -> torch.Tensor:
    """A callable target (``tests.test_targets:doubled_class_one`` on the command line)."""
    return 2 * out[:, 1]


def whole_output(out: torch.Tensor) -> torch.Tensor:
    """A callable target that returns the wrong shape."""
    return out


def test_a_callable_target_is_what_it_computes():
    from sycam_dsl.models.targets import CallableTarget

    model, x = _setup(Net())
    target = parse_target("tests.test_targets:doubled_class_one")
    assert isinstance(target, CallableTarget) and not target.cacheable
    got, info = compute_terminals(model, "block", x, target, ["grads", "cic", "abl"], progress=False)
    ref, _ = compute_terminals(model, "block", x, torch.tensor([1, 1]), ["grads", "cic", "abl"], progress=False)
    torch.testing.assert_close(got["grads"], 2 * ref["grads"])
    torch.testing.assert_close(got["abl"], ref["abl"])  # a ratio: the factor 2 cancels
    _, score = None, (lambda z: 2 * z[:, 1])
    torch.testing.assert_close(got["cic"], _reference(model, x, score)["cic"], rtol=1e-7, atol=1e-9)
    assert info.target is target and info.target.name == "callable:tests.test_targets:doubled_class_one"


@pytest.mark.parametrize("model, spec, message", [
    (Net(), "classes:1,9", r"class 9 does not exist: the model has 5 outputs \(0\.\.4\)"),
    (Net(), "output:5", r"output 5 does not exist: the model has 5 outputs"),
    (Net(), "segmentation:1", r"a segmentation target needs spatial output \[N, classes, H, W\], but the model "
                              r"returns 1x5"),
    (SegNet(), "segmentation:3", r"class 3 does not exist: the model has 3 outputs"),
    (SegNet(), "class", r"a class target needs logits \[N, classes\], but the model returns 1x3x16x16"),
    (Net(), "tests.test_targets:whole_output", r"must return one score per image \(\[1\]\), got 1x5"),
])
def test_bad_targets_are_refused_in_one_line(model, spec, message):
    model, x = _setup(model)
    with pytest.raises(TargetError, match=message) as e:
        compute_terminals(model, "block", x, parse_target(spec), ["grads"], progress=False)
    assert "\n" not in str(e.value) and isinstance(e.value, SycamError)


@pytest.mark.parametrize("spec, message", [
    ("classes:", "expected non-negative integers after the colon"),
    ("output:1,2", "output takes one index"),
    ("nosuchmodule_xyz:f", "cannot import 'f' from 'nosuchmodule_xyz'"),
    ("banana", "unknown target 'banana'"),
])
def test_bad_target_specs_are_refused_in_one_line(spec, message):
    with pytest.raises(TargetError, match=message) as e:
        parse_target(spec)
    assert "\n" not in str(e.value)


def test_the_metrics_refuse_a_target_that_does_not_fit_the_output():
    from sycam_dsl.metrics.scoring import class_scores

    model, x = _setup(Net())
    with pytest.raises(TargetError, match="output 7 does not exist"):
        class_scores(model, x, torch.zeros(2, dtype=torch.long), target=OutputTarget(7))
    got = class_scores(model, x, torch.zeros(2, dtype=torch.long), target=ClassesTarget([0, 2]))
    torch.testing.assert_close(got.double(), (model(x)[:, 0] + model(x)[:, 2]).detach(), rtol=1e-6, atol=1e-6)


def test_sycam_takes_targets_callables_and_gradcam_segmentation_targets():
    from sycam_dsl.deploy.sycam import SyCAM

    model, x = _setup(Net())
    cam = SyCAM(model, "block", "(* grads cic)", runtime="torch")
    spec = cam(x, parse_target("tests.test_targets:doubled_class_one"))
    assert torch.allclose(cam(x, doubled_class_one), spec)
    assert not torch.allclose(cam(x, parse_target("output:2")), spec)
    seg, xs = _setup(SegNet())
    cam = SyCAM(seg, "block", "(* grads cic)", runtime="torch")
    want = cam(xs, SegmentationTarget(1))
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    with torch.no_grad():
        masks = (seg(xs)["out"].argmax(dim=1) == 1).float().numpy()
    got = cam(xs, [targets.SemanticSegmentationTarget(1, m) for m in masks])
    torch.testing.assert_close(got, want)


def test_the_cli_takes_a_target_records_it_and_refuses_bad_ones_in_one_line(tmp_path, capsys):
    import json

    from sycam_dsl.bundled import write_bundled
    from sycam_dsl.cli import main

    images = str(write_bundled(tmp_path / "b", 4) / "images")
    common = ["--model", "bundled", "--images", images, "--quiet", "--no-cache", "--metric", "average_drop"]
    out = tmp_path / "eval.json"
    assert main(["eval", "grads", *common, "--baselines", "none", "--target", "classes:0,1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["target"] == "classes:0,1"
    capsys.readouterr()
    assert main(["eval", "grads", *common, "--baselines", "none", "--target", "output:99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output 99 does not exist" in err[0], err
    assert main(["eval", "grads", *common, "--baselines", "none", "--target", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["targets"] == [2] * 4
    assert main(["eval", "grads", *common, "--baselines", "none", "--target", "1", "--targets", "labels"]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["eval", "grads", *common, "--target", "classes:x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "expected non-negative integers" in err[0], err


@pytest.mark.parametrize("model, spec, expr", [
    (SegNet(), "segmentation:1", "(* grads cic)"),
    (Net(), "classes:0,2", "(+ abl grads)"),
])
def test_the_explainer_file_computes_the_target_and_records_it(tmp_path, model, spec, expr):
    import json
    import zipfile

    from sycam_dsl.deploy.explainer import save_explainer
    from sycam_dsl.deploy.method import load_method
    from sycam_dsl.deploy.sycam import SyCAM

    model, x = _setup(model, n=3, dtype=torch.float32)
    target = parse_target(spec)
    file = tmp_path / "explainer.pt"
    save_explainer(model, "block", load_method(expr), file, x[:1], "net", target=target)
    got = torch.jit.load(str(file))(x)
    want = SyCAM(model, "block", expr, runtime="torch")(x, target)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with zipfile.ZipFile(file) as z:
        name = next(n for n in z.namelist() if n.endswith("sycam_dsl/explainer.json"))
        assert json.loads(z.read(name))["target"] == spec


def test_the_explainer_refuses_a_callable_target_in_one_line(tmp_path):
    from sycam_dsl.deploy.explainer import save_explainer
    from sycam_dsl.deploy.method import load_method

    model, x = _setup(Net(), dtype=torch.float32)
    with pytest.raises(TargetError, match="a Python callable, which an explainer file cannot hold") as e:
        save_explainer(model, "block", load_method("grads"), tmp_path / "e.pt", x[:1],
                       target=parse_target("tests.test_targets:doubled_class_one"))
    assert "\n" not in str(e.value)


def test_export_takes_a_target_and_refuses_a_callable_in_one_line(tmp_path, capsys):
    import json
    import zipfile

    from sycam_dsl.cli import main

    file = tmp_path / "e.pt"
    common = ["export", "grads", "--model", "bundled", "-o", str(file)]
    assert main([*common, "--target", "classes:0,1"]) == 0
    with zipfile.ZipFile(file) as z:
        name = next(n for n in z.namelist() if n.endswith("sycam_dsl/explainer.json"))
        assert json.loads(z.read(name))["target"] == "classes:0,1"
    capsys.readouterr()
    assert main([*common, "--target", "tests.test_targets:doubled_class_one"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot hold" in err[0], err
    # a class index is the call's to give, and the export format holds classes only: one line each
    for args, words in ((["--target", "2"], "the class each call names"),
                        (["--target", "output:1", "--format", "export", "-o", str(tmp_path / "e.pt2")],
                         "explains classes only, not target output:1")):
        assert main([*common, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_a_target_callable_that_raises_is_one_line():
    model, x = _setup(Net(), dtype=torch.float32)
    with pytest.raises(TargetError, match=r"target tests.test_targets:bad_index fails on the model's output "
                                          r"\(IndexError: ") as e:
        compute_terminals(model, "block", x, parse_target("tests.test_targets:bad_index"), ["grads"], progress=False)
    assert "\n" not in str(e.value)


def bad_index(out: torch.Tensor) -> torch.Tensor:
    """A target callable with a bug: an output the model does not have."""
    return out[:, 99]


def test_torchvision_lraspp_runs_every_terminal_and_the_baselines_for_a_segmentation_target():
    torchvision = pytest.importorskip("torchvision")
    from sycam_dsl.baselines import baselines

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=3).eval()
    for conv in (model.classifier.low_classifier, model.classifier.high_classifier):
        nn.init.normal_(conv.weight, std=1.0)  # at its random init every pixel is class 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)["out"]
    mask = (out.argmax(dim=1) == 1).float()
    assert 0 < float(mask.mean()) < 1
    terms, info = compute_terminals(model, "backbone.4", x, SegmentationTarget(1), ALL, progress=False)
    assert all(bool(torch.isfinite(terms[n]).all()) for n in ALL) and info.abl_method == "fx"
    torch.testing.assert_close(info.z_c, (out[:, 1] * mask).sum(dim=(1, 2)), rtol=1e-4, atol=1e-3)
    inputs = MetricInputs(x, info.targets, model=model, target=info.target)
    for b in baselines():
        heat = b.heatmaps(terms, info.acts, (64, 64))
        assert torch.isfinite(get_metric("deletion", steps=4)(inputs.with_heatmaps(heat, heat[:, ::8, ::8])).per_image).all()


def test_synthesize_takes_gradcam_segmentation_targets_with_terminals_on_demand(tmp_path):
    targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    from sycam_dsl.run import DataOptions, OutputOptions, synthesize
    from sycam_dsl.synthesis import Budget, SearchOptions

    model, x = _setup(SegNet(), n=4, size=32, dtype=torch.float32)
    with torch.no_grad():
        masks = (model(x)["out"].argmax(dim=1) == 1).float().numpy()
    per_image = [targets.SemanticSegmentationTarget(1, m) for m in masks]
    result = synthesize(model, "block", x, metric="deletion", metric_options={"steps": 4},
                        budget=Budget(candidates=6), grammar="g1",
                        data=DataOptions(targets=per_image, runtime="torch", cache_dir=tmp_path / "cache"),
                        search=SearchOptions(terminals="on-demand"),
                        output=OutputOptions(progress=False, report_images=2), out_dir=tmp_path / "run")
    assert result.expression is not None
    import json
    assert json.loads((tmp_path / "run" / "result.json").read_text())["settings"]["target"] == \
        "callable:SemanticSegmentationTarget"


def test_the_store_keys_name_a_non_class_target_and_keep_the_class_ones(tmp_path):
    from sycam_dsl.cam.store import TerminalStore, compute_terminals_stored

    model, x = _setup(Net())
    store = TerminalStore(tmp_path)
    names = ["grads", "cic"]
    _, first = compute_terminals_stored(model, "block", x, None, names, progress=False, store=store)
    cls, again = compute_terminals_stored(model, "block", x, ClassTarget(), names, progress=False, store=store)
    assert (first.stored, again.stored) == (0, 2)  # the class target reads the class entries
    multi, info = compute_terminals_stored(model, "block", x, ClassesTarget([0, 1]), names, progress=False,
                                           store=store)
    assert info.stored == 0 and not torch.allclose(multi["grads"], cls["grads"])
    stored, info = compute_terminals_stored(model, "block", x, ClassesTarget([0, 1]), names, progress=False,
                                            store=store)
    assert info.stored == 2 and torch.equal(stored["grads"], multi["grads"]) and torch.equal(stored["cic"], multi["cic"])


def test_quantus_metrics_score_the_targets_raw_score_and_refuse_per_image_state():
    quantus = pytest.importorskip("quantus")
    from sycam_dsl.metrics.errors import MetricError

    model, x = _setup(Net(), dtype=torch.float32)
    heat = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(3))
    inputs = MetricInputs(x, torch.zeros(2, dtype=torch.long), model=model, target=ClassesTarget([1, 3]))
    got = get_metric("quantus:PixelFlipping", features_in_step=32)(inputs.with_heatmaps(heat)).per_image

    class Summed(nn.Module):  # the reference: the two logits' sum as the one output, no softmax
        def forward(self, t):
            return model(t)[:, [1, 3]].sum(dim=1, keepdim=True)

    want = quantus.PixelFlipping(features_in_step=32, disable_warnings=True)(
        model=Summed().eval(), x_batch=x.numpy(), y_batch=np.zeros(2, dtype=np.int64), a_batch=heat[:, None].numpy(),
        softmax=False, device="cpu")
    np.testing.assert_allclose(got.numpy(), [np.mean(c) for c in want], rtol=1e-5, atol=1e-6)
    assert float(got.std()) > 0  # not the constant 1 of a softmax over one column
    seg_model, seg_x = _setup(SegNet(), dtype=torch.float32)
    bound, ids = SegmentationTarget(1).bind(seg_model(seg_x)["out"])
    seg = MetricInputs(seg_x, ids, model=seg_model, target=bound)
    with pytest.raises(MetricError, match="quantus:PixelFlipping cannot score target segmentation:1: its score "
                                          "depends on each image's own state") as e:
        get_metric("quantus:PixelFlipping", features_in_step=32)(seg.with_heatmaps(heat))
    assert "\n" not in str(e.value)
    # a metric that compares the predicted class with the target's cannot score a target that names none
    with pytest.raises(MetricError, match="quantus:ROAD compares the predicted class with the target class"):
        get_metric("quantus:ROAD")(inputs.with_heatmaps(heat))
    # a metric that reads the heatmaps only scores them as for any target
    sparse = get_metric("quantus:Sparseness")
    torch.testing.assert_close(sparse(seg.with_heatmaps(heat)).per_image, sparse(inputs.with_heatmaps(heat)).per_image)


def test_explain_takes_a_target_and_an_int_stays_a_class(tmp_path, capsys):
    from sycam_dsl.bundled import write_bundled
    from sycam_dsl.cli import main

    image = str(next((write_bundled(tmp_path / "b", 4) / "images").rglob("*.png")))
    common = ["explain", "grads", "--model", "bundled", "--image", image, "--quiet", "--no-cache"]
    assert main([*common, "--target", "output:1", "-o", str(tmp_path / "a.png")]) == 0
    assert "target output:1: score = " in capsys.readouterr().out
    assert main([*common, "--target", "2", "-o", str(tmp_path / "b.png")]) == 0
    assert "class 2" in capsys.readouterr().out


def test_a_per_class_search_refuses_a_target_that_names_no_class(tmp_path):
    from sycam_dsl.run import DataOptions, synthesize

    model, x = _setup(Net(), dtype=torch.float32)
    with pytest.raises(SycamError, match="target output:1 explains no class: a per-class search") as e:
        synthesize(model, "block", x, per_class=True, data=DataOptions(targets="output:1", use_cache=False))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("target, metric, message", [
    ("segmentation:1", "quantus:PixelFlipping", "its score depends on each image's own state"),
    ("output:1", "quantus:ROAD", "compares the predicted class with the target class"),
])
def test_a_quantus_metric_that_cannot_score_the_target_is_refused_before_any_work(tmp_path, target, metric,
                                                                                   message):
    pytest.importorskip("quantus")
    from sycam_dsl.run import DataOptions, OutputOptions, synthesize

    model, x = _setup(SegNet() if target.startswith("segmentation") else Net(), n=4, size=32, dtype=torch.float32)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(SycamError, match=message) as e:
        synthesize(model, "block", x, metric=metric, data=DataOptions(targets=target, use_cache=False),
                   output=OutputOptions(progress=False))
    assert "\n" not in str(e.value) and not calls  # before: after every terminal and the search
    # and as a report metric of a search on another metric
    with pytest.raises(SycamError, match=message):
        synthesize(model, "block", x, metric="deletion", data=DataOptions(targets=target, use_cache=False),
                   output=OutputOptions(progress=False, report_metrics=[metric]))
    assert not calls
    p = subprocess.run([sys.executable, "-m", "sycam_dsl.cli", "eval", "--model", "tests.cam_reference:TinyCNN",
                        "--weights", "random:0", "--layer", "features.4", "--size", "32", "--no-cache", "--images",
                        "missing-folder-never-read", "--metric", metric, "--target", target],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and message in err[0], err  # before the images are read


class _MaskTarget:
    """grad-cam's per-image target protocol: a ``category``, a ``mask`` and ``target(output) -> scalar``."""

    def __init__(self, category: int, mask: torch.Tensor) -> None:
        self.category, self.mask = category, mask

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return (out[self.category] * self.mask).sum()


def test_per_image_targets_score_each_image_with_its_own_and_must_be_one_per_image():
    from sycam_dsl.models.targets import as_target

    model, x = _setup(SegNet(), n=3)
    with torch.no_grad():
        masks = (model(x)["out"].argmax(dim=1) == 1).to(x.dtype)
    per_image = as_target([_MaskTarget(1, m) for m in masks])
    got, _ = compute_terminals(model, "block", x, per_image, ["grads", "cic"], progress=False, chunk_size=2)
    want, _ = compute_terminals(model, "block", x, SegmentationTarget(1), ["grads", "cic"], progress=False)
    torch.testing.assert_close(got["grads"], want["grads"])
    torch.testing.assert_close(got["cic"], want["cic"])
    with pytest.raises(TargetError, match="2 targets for 3 images; give one per image"):
        compute_terminals(model, "block", x, as_target([_MaskTarget(1, m) for m in masks[:2]]), ["grads"],
                          progress=False)


def test_an_empty_segmentation_target_stops_with_a_line_that_names_the_image():
    model, x = _setup(SegNet(), n=5)
    with torch.no_grad():
        model.head.bias[2] = -100.0  # class 2 wins no pixel: its mask, and so its score z_c, is empty
    predicted = model(x)["out"].argmax(dim=1)
    assert not bool((predicted == 2).any())
    with pytest.raises(TargetError, match=r"target segmentation:2 is empty on image 0: the model "
                                          r"assigns none of its pixels to class 2.*give masks \(--masks\)"):
        compute_terminals(model, "block", x, parse_target("segmentation:2"), ["abl"], progress=False)
    # given masks: the image positions in the whole set are named, chunk by chunk
    given = torch.ones(5, 16, 16, dtype=torch.bool)
    given[3] = False
    target = SegmentationTarget(2).with_masks(given)
    with pytest.raises(TargetError, match=r"empty on image 3: the given mask has no pixel"):
        compute_terminals(model, "block", x, target, ["grads"], chunk_size=2, progress=False)


def test_a_segmentation_target_takes_given_masks():
    model, x = _setup(SegNet(), n=3)
    given = torch.zeros(3, 8, 8, dtype=torch.bool)  # coarser than the output: resized (nearest) to 16 x 16
    given[:, 2:5, 1:7] = True
    given[1, 6:, :] = True
    mask = F.interpolate(given[:, None].double(), size=(16, 16), mode="nearest")[:, 0]
    assert not torch.equal(mask, (model(x)["out"].argmax(dim=1) == 1).double())  # not the predicted mask
    target = parse_target("segmentation:1").with_masks(given)
    assert not target.cacheable and target.name == "segmentation:1"
    terms, info = compute_terminals(model, "block", x, target, ["grads"], progress=False)
    acts = model.block(model.stem(x)).detach().requires_grad_(True)
    out = F.interpolate(model.head(acts), size=x.shape[-2:], mode="bilinear", align_corners=False)
    s = (out[:, 1] * mask).sum(dim=(1, 2))
    (g,) = torch.autograd.grad(s.sum(), acts)
    torch.testing.assert_close(terms["grads"], g.mean(dim=(2, 3)))
    torch.testing.assert_close(info.z_c, s.detach())
    with pytest.raises(TargetError, match="2 segmentation masks for 3 images"):
        compute_terminals(model, "block", x, SegmentationTarget(1).with_masks(given[:2]), ["grads"], progress=False)


def test_the_command_lines_masks_become_the_segmentation_targets_pixels():
    import argparse

    from sycam_dsl.cli.options import targets_from

    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    args = argparse.Namespace(target=parse_target("segmentation:1"), targets="predicted")
    got = targets_from(args, None, 2, masks)
    assert isinstance(got, SegmentationTarget) and got.given is not None and torch.equal(got.given, masks)
    assert targets_from(args, None, 2).given is None  # without --masks: the predicted pixels
    args.target = parse_target("classes:0,1")  # masks are for gt_overlap and sch only
    assert targets_from(args, None, 2, masks) is args.target
