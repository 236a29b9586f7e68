"""Forward-only passes on an inference runtime (``models.runtime``): the converted model agrees with
torch to float rounding in fp32 (outputs, ``cic``, ``abl``, heatmaps, metric scores and a whole
search), is converted once and kept, ``auto`` picks and keeps one runtime, and every bad case is one
line: a runtime that is not installed, one that cannot run the precision, a model that cannot be
converted (explicit: an error; ``auto``: a warning and torch)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sycam_dsl.cam.compute import CIC, compute_terminals
from sycam_dsl.cam.store import TerminalStore, compute_terminals_stored, record_settings
from sycam_dsl.metrics import get_metric
from sycam_dsl.metrics.registry import MetricInputs
from sycam_dsl.models import onnx_export, runtime_choice
from sycam_dsl.models import runtime as rt
from sycam_dsl.models.onnx_export import dynamo_available
from sycam_dsl.models.runtime import (
    ConversionError,
    RuntimeModule,
    RuntimeSpec,
    RuntimeUnavailable,
    forward_module,
    reference_of,
)
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.synthesis import Budget, SearchOptions
from tests.cam_reference import TinyCNN

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'sycam-dsl[onnxruntime]')")
pytest.importorskip("openvino", reason="needs openvino (pip install 'sycam-dsl[openvino]')")

ROOT = Path(__file__).resolve().parents[1]
CONVERTED = ["onnxruntime", "openvino"]


def _model(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN(classes=classes).eval()


def _images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test converts and chooses as a new process would."""
    for memo in (rt._BUILT, rt._ONNX, rt._FAILED, runtime_choice._CHOSEN, runtime_choice._BATCHES):
        memo.clear()
    rt._WARNED.clear()
    yield


@pytest.mark.parametrize("name", CONVERTED)
def test_a_converted_model_gives_torchs_outputs_and_is_kept_once(tmp_path, name):
    model, x = _model(), _images(5)
    run = forward_module(model, [x[:1]], RuntimeSpec(name, cache_dir=tmp_path))
    assert isinstance(run, RuntimeModule) and run.runtime == name and reference_of(run) is model
    with torch.inference_mode():
        assert torch.allclose(run(x), model(x), atol=1e-5, rtol=1e-5)
        # channels-last and non-contiguous input give the same values (the runtime takes contiguous arrays)
        assert torch.allclose(run(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-5)
    files = sorted(p.name for p in (tmp_path / rt.FOLDER).iterdir())
    # the converted model and its best batch
    assert [f.split("-")[0].split(".")[-1] for f in files] == ["batch", "onnx"], files
    assert all(rt.FILE_NAMES.fullmatch(f) for f in files), files
    stamps = [(tmp_path / rt.FOLDER / f).stat().st_mtime_ns for f in files]
    rt._BUILT.clear()  # a new process: the files are read, not converted or timed again
    runtime_choice._BATCHES.clear()
    again = forward_module(model, [x[:1]], RuntimeSpec(name, cache_dir=tmp_path))
    assert again is not run and again.seconds == 0.0 and again.batch == run.batch
    assert [(tmp_path / rt.FOLDER / f).stat().st_mtime_ns for f in files] == stamps


def test_other_weights_or_input_sizes_are_converted_apart(tmp_path):
    spec = RuntimeSpec("onnxruntime", cache_dir=tmp_path)
    forward_module(_model(0), [_images(1)], spec)
    forward_module(_model(1), [_images(1)], spec)  # other weights
    forward_module(_model(0), [torch.randn(1, 3, 48, 48)], spec)  # another input size
    assert len(list((tmp_path / rt.FOLDER).glob("*.onnx"))) == 3


@pytest.mark.parametrize("name", CONVERTED)
def test_terminals_on_a_runtime_match_torch(name):
    model, x = _model(), _images(6)
    want, _ = compute_terminals(model, "features", x, None, ["cic", "abl", "grads"], progress=False)
    got, info = compute_terminals(model, "features", x, None, ["cic", "abl", "grads"], progress=False,
                                  runtime=RuntimeSpec(name))
    assert info.abl_method == "fx"
    for t in ("cic", "abl"):
        assert torch.allclose(got[t], want[t], atol=1e-4, rtol=0), t
    assert torch.equal(got["grads"], want["grads"])  # the gradient pass stays in torch
    # the heatmaps ReLU(sum_k w_k A_k) of ScoreCAM and AblationCAM agree to Pearson >= 0.99999
    acts = info.acts
    for t in ("cic", "abl"):
        h_want = torch.relu((want[t][:, :, None, None] * acts).sum(1)).flatten(1)
        h_got = torch.relu((got[t][:, :, None, None] * acts).sum(1)).flatten(1)
        for a, b in zip(h_want, h_got):
            if a.std() > 0:
                assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) >= 0.99999


def test_metric_scores_on_a_runtime_match_torch():
    model, x = _model(), _images(6)
    targets = model(x).argmax(1)
    heat = torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(3))
    metric = get_metric("deletion", steps=4)
    want = metric(MetricInputs(x, targets, heatmaps=heat, saliency=heat[:, ::4, ::4], model=model)).per_image
    inputs = MetricInputs(x, targets, heatmaps=heat, saliency=heat[:, ::4, ::4], model=model,
                          runtime=RuntimeSpec("openvino"))
    assert isinstance(inputs.model, RuntimeModule) and inputs.channels_last is False
    got = metric(inputs).per_image
    assert torch.allclose(got, want, atol=1e-4, rtol=0)


def test_the_store_keeps_runtime_values_apart(tmp_path):
    model, x = _model(), _images(4)
    store = TerminalStore(tmp_path)
    a, _ = compute_terminals_stored(model, "features", x, None, ["cic"], progress=False, store=store,
                                    runtime=RuntimeSpec("onnxruntime"))
    b, info = compute_terminals_stored(model, "features", x, None, ["cic"], progress=False, store=store,
                                       runtime=RuntimeSpec("torch"))
    assert info.stored == 0, "torch's cic came from onnxruntime's records"
    assert torch.allclose(a["cic"], b["cic"], atol=1e-4)
    # the converted model lives beside the store
    assert list((tmp_path / rt.FOLDER).glob("*.onnx"))


def test_record_settings_name_the_runtime_only_when_not_torch():
    from sycam_dsl.cam.compute import prepare_run

    model, x = _model(), _images(2)
    on = prepare_run(model, "features", x, None, ["cic"], progress=False, runtime=RuntimeSpec("onnxruntime"))
    off = prepare_run(model, "features", x, None, ["cic"], progress=False)
    assert "runtime=onnxruntime" in record_settings(CIC, on)
    assert record_settings(CIC, off) == ""  # torch's keys are those of earlier versions


def test_auto_picks_one_runtime_and_keeps_the_choice(tmp_path, monkeypatch):
    model, x = _model(), _images(2)
    spec = RuntimeSpec("auto", cache_dir=tmp_path)
    first = forward_module(model, [x[:1]], spec)
    choices = list((tmp_path / rt.FOLDER).glob("choice-*.json"))
    assert len(choices) == 1
    kept = json.loads(choices[0].read_text())
    assert kept["runtime"] == rt.runtime_name(first)
    assert set(kept["rows_per_second"]) == {"torch", *CONVERTED}
    # a new process reads the choice: no timing (a timing would fail here)
    runtime_choice._CHOSEN.clear()
    rt._BUILT.clear()
    monkeypatch.setattr(runtime_choice, "_once", lambda run, device=None: pytest.fail("timed again"))
    assert rt.runtime_name(forward_module(model, [x[:1]], spec)) == kept["runtime"]
    monkeypatch.undo()
    # a kept file that does not hold a runtime's name is timed again, not an error
    choices[0].write_text(json.dumps({"runtime": ["onnxruntime"]}))
    runtime_choice._CHOSEN.clear()
    rt._BUILT.clear()
    forward_module(model, [x[:1]], spec)
    assert isinstance(json.loads(choices[0].read_text())["runtime"], str)


def _timed_rows(run) -> tuple[str, int]:
    """(runtime, rows) of a run ``runtime_choice._once`` times: a converted model's sweep, or torch's batch."""
    if isinstance(getattr(run, "func", None), RuntimeModule):
        return run.func.runtime, run.args[0].shape[0]
    return "torch", runtime_choice.TIMING_ROWS


def test_auto_takes_the_faster_runtime(tmp_path, monkeypatch):
    speed = {"torch": 300.0, "onnxruntime": 900.0, "openvino": 600.0}  # rows per second
    calls = []

    def fake_time(run, device=None):
        name, n = _timed_rows(run)
        calls.append(name)
        return n / speed[name]

    monkeypatch.setattr(runtime_choice, "_once", fake_time)
    chosen = forward_module(_model(), [_images(1)], RuntimeSpec("auto", cache_dir=tmp_path))
    assert set(calls) == set(speed) and rt.runtime_name(chosen) == "onnxruntime"
    kept = json.loads(next((tmp_path / rt.FOLDER).glob("choice-*.json")).read_text())
    assert kept["rows_per_second"] == pytest.approx(speed)


def test_the_sweep_keeps_the_largest_batch_within_its_noise_and_stops_at_slow_batches(monkeypatch):
    def sweep(rate):
        timed = []

        def fake_once(run, device=None):
            timed.append(run.args[0].shape[0])
            return timed[-1] / rate(timed[-1])

        monkeypatch.setattr(runtime_choice, "_once", fake_once)
        runtime_choice._BATCHES.clear()
        got = runtime_choice.best_batch(lambda x: x, [torch.zeros(1, 3)], "key", "onnxruntime", "fp32", None,
                                        "the model", False)
        return got, sorted(set(timed))

    # 8 runs within 10% of 4's rate: the larger size is kept
    peak = {1: 50.0, 2: 80.0, 4: 200.0, 8: 194.0, 16: 120.0, 32: 100.0}
    assert sweep(lambda n: peak.get(n, 1.0)) == ((8, 194.0), [1, 2, 4, 8, 16, 32])
    # 10 rows/s: the batch of 8 takes 0.8 s, over SWEEP_SECONDS, and ends the sweep
    assert sweep(lambda n: 10.0) == ((8, 10.0), [1, 2, 4, 8])


@pytest.mark.parametrize("name", CONVERTED)
def test_a_runtime_runs_at_its_own_best_batch(tmp_path, monkeypatch, name):
    """The sweep finds the batch a runtime runs fastest at (stopping once rates fall); larger batches
    are split into it, and the loops' ``auto`` sizes are it."""
    rate = {1: 50.0, 2: 80.0, 4: 120.0, 8: 200.0, 16: 150.0, 32: 100.0}  # rows per second, peak at 8
    timed = []

    def fake_time(run, device=None):
        _, n = _timed_rows(run)
        timed.append(n)
        return n / rate.get(n, 1.0)

    monkeypatch.setattr(runtime_choice, "_once", fake_time)
    model, x = _model(), _images(20)
    run = forward_module(model, [x[:1]], RuntimeSpec(name, cache_dir=tmp_path))
    assert (run.batch, run.rows_per_second) == (8, 200.0)
    # the first round: two sizes below 90% of the best end the sweep; then rounds over every size
    sweep = [1, 2, 4, 8, 16, 32]
    assert timed == sweep * runtime_choice.TIMING_ROUNDS
    kept = json.loads(next((tmp_path / rt.FOLDER).glob("batch-*.json")).read_text())
    assert kept["batch"] == 8 and set(kept["rates"]) == {str(b) for b in rate}

    sizes = []
    inner = run._run
    monkeypatch.setattr(run, "_run", lambda arrays: sizes.append(arrays[0].shape[0]) or inner(arrays))
    with torch.inference_mode():
        assert torch.allclose(run(x), model(x), atol=1e-5, rtol=1e-5)
    assert sizes == [8, 8, 4]

    from sycam_dsl.cam.scorecam_pass import scorecam_pass
    from sycam_dsl.metrics.scoring import plan_forward

    assert plan_forward(run, x, "cpu", "auto") == (8, False)
    assert plan_forward(run, x, "cpu", 64) == (64, False)  # a size asked for is kept (and split)
    picked: dict[str, int] = {}
    acts = torch.rand(2, 6, 4, 4)
    scorecam_pass(model, x[:2], acts, torch.zeros(2, dtype=torch.long), "auto", False, sizes=picked, forward=run)
    assert picked["cic"] == 8
    # the terminals at "auto": cic's masked images and abl's ablated rows (the tail, converted and swept
    # on its own) go at the runtime's best batch
    want, _ = compute_terminals(model, "features", x[:3], None, ["cic", "abl"], progress=False)
    got, info = compute_terminals(model, "features", x[:3], None, ["cic", "abl"], progress=False, chunk_size="auto",
                                  runtime=RuntimeSpec(name, cache_dir=tmp_path))
    assert info.batch_sizes["cic"] == info.batch_sizes["abl"] == 8
    for t in ("cic", "abl"):
        assert torch.allclose(got[t], want[t], atol=1e-4, rtol=0), t


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: a trace would bake in one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN(classes=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if y.sum() > 0:
            return y
        return -y


def test_a_model_that_cannot_be_converted(tmp_path, caplog):
    model, x = DataDependent().eval(), _images(2)
    with pytest.raises(ConversionError, match="Python decision on tensor values") as e:
        forward_module(model, [x[:1]], RuntimeSpec("onnxruntime", cache_dir=tmp_path))
    assert "\n" not in str(e.value)
    with caplog.at_level(logging.WARNING, logger="sycam_dsl"):
        got = forward_module(model, [x[:1]], RuntimeSpec("auto", cache_dir=tmp_path))
    assert got is model  # torch
    warned = [r.getMessage() for r in caplog.records if "runtime auto" in r.getMessage()]
    assert len(warned) == 1 and "running it in torch" in warned[0]
    assert not list((tmp_path / rt.FOLDER).glob("*.onnx"))
    if dynamo_available():  # the dynamo exporter refuses the data-dependent branch too, and says so
        assert "the dynamo exporter fails too" in str(e.value)


@pytest.mark.skipif(not dynamo_available(), reason="the dynamo exporter needs onnxscript (pip install onnxscript)")
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_vision_transformer_converts_through_the_dynamo_exporter(tmp_path, runtime, capfd):
    from tests.test_transformers import small_vit

    model = small_vit()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConversionError, match="_native_multi_head_attention"):
        onnx_export._traced(model, [x[:2]], "the model")  # the tracer cannot: torchvision's fused attention
    built = forward_module(model, [x[:1]], RuntimeSpec(runtime, cache_dir=tmp_path))
    assert isinstance(built, RuntimeModule) and len(list((tmp_path / rt.FOLDER).glob("*.onnx"))) == 1
    with torch.no_grad():
        for rows in (1, 5):  # a dynamic batch
            torch.testing.assert_close(built(x[:rows]), model(x[:rows]), rtol=1e-4, atol=1e-4)
    assert "Torch IR graph" not in capfd.readouterr().out  # the tracer's graph dump is kept off stdout


def test_a_runtime_that_is_not_installed_names_its_extra(monkeypatch):
    real = rt.is_installed
    monkeypatch.setattr(rt, "is_installed", lambda name: name != "openvino" and real(name))
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'sycam-dsl\[openvino\]'"):
        forward_module(_model(), [_images(1)], RuntimeSpec("openvino"))
    assert rt.candidates("auto", "fp32", torch.device("cpu")) == ["torch", "onnxruntime"]


@pytest.mark.parametrize("name, precision, message", [
    ("onnxruntime", "bf16", "fp32 only"),
    ("onnxruntime", "fp16", "does not run fp16"),
    ("openvino", "fp16", "does not run fp16"),
])
def test_a_precision_a_runtime_cannot_run_is_refused(name, precision, message):
    with pytest.raises(RuntimeUnavailable, match=message):
        rt.check_support(name, precision, "cpu")
    assert name not in rt.candidates("auto", precision, torch.device("cpu"))


def test_openvino_bf16_follows_the_cpu():
    if rt._openvino_bf16():
        assert "openvino" in rt.candidates("auto", "bf16", torch.device("cpu"))
    else:
        with pytest.raises(RuntimeUnavailable, match="bf16 instructions"):
            rt.check_support("openvino", "bf16", "cpu")
        assert rt.candidates("auto", "bf16", torch.device("cpu")) == ["torch"]


def test_runtimes_run_on_the_cpu_only():
    with pytest.raises(RuntimeUnavailable, match="runs on the CPU"):
        rt.check_support("onnxruntime", "fp32", "cuda")
    assert set(rt.candidates("auto", "fp32", torch.device("cuda"))).isdisjoint(CONVERTED)


def _search(tmp_path: Path, name: str):
    x = _images(16, seed=4)
    return synthesize(_model(), "features", x, metric="deletion", metric_options={"steps": 4},
                      budget=Budget(candidates=60), data=DataOptions(use_cache=False, runtime=name),
                      search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4, test_split=0.25),
                      output=OutputOptions(report_metrics=["average_drop"], progress=False, report_images=0),
                      out_dir=tmp_path / name)


def test_a_search_on_a_runtime_finds_what_torch_finds(tmp_path):
    want, got = _search(tmp_path, "torch"), _search(tmp_path, "onnxruntime")
    w = json.loads((tmp_path / "torch" / "result.json").read_text())
    g = json.loads((tmp_path / "onnxruntime" / "result.json").read_text())
    assert g["expression"] == w["expression"]
    assert [h["expression"] for h in g["history"]] == [h["expression"] for h in w["history"]]
    for a, b in zip(g["history"], w["history"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
    assert g["settings"]["runtime"] == {"asked": "onnxruntime", "used": "onnxruntime"}
    assert w["settings"]["runtime"]["used"] == "torch"
    assert want.best is not None and got.best is not None


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sycam_dsl.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


@pytest.mark.parametrize("command", ["synth", "eval"])
def test_cli_refuses_a_runtime_that_cannot_run_in_one_line(tmp_path, command):
    if command == "synth":
        args = ["synth", "--candidates", "1", "-o", str(tmp_path / "run")]
    else:
        from PIL import Image

        (tmp_path / "img").mkdir()
        Image.new("RGB", (64, 64), (90, 30, 200)).save(tmp_path / "img" / "a.png")
        args = ["eval", "grads", "--model", "bundled", "--images", str(tmp_path / "img"), "--cache-dir",
                str(tmp_path / "cache")]
    proc = _cli(*args, "--runtime", "onnxruntime", "--precision", "bf16")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "fp32 only" in lines[0], lines


def test_torch_compile_is_a_runtime_too():
    model, x = _model(), _images(5)
    compiled = forward_module(model, [x[:1]], RuntimeSpec("compile"))
    assert rt.runtime_name(compiled) == "compile" and reference_of(compiled) is model
    with torch.inference_mode():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)
    assert "compile" not in rt.candidates("auto", "fp32", torch.device("cpu"))  # auto: on CUDA only
    assert rt.candidates("auto", "fp32", torch.device("cuda")) == ["torch", "compile"]


def test_cache_info_clear_and_the_size_bound_cover_the_converted_models(tmp_path):
    forward_module(_model(), [_images(1)], RuntimeSpec("auto", cache_dir=tmp_path))
    folder = tmp_path / rt.FOLDER
    assert len(list(folder.glob("*.onnx"))) == 1 and len(list(folder.glob("choice-*.json"))) == 1
    assert len(list(folder.glob("batch-*.json"))) == len(CONVERTED)  # each runtime's best batch
    (folder / "mine.onnx").write_bytes(b"\x08 a user's file, not a name the store writes")
    info = _cli("cache", "info", "--cache-dir", str(tmp_path))
    owned = 2 + len(CONVERTED)
    assert info.returncode == 0 and f"{owned} converted model file(s)" in info.stdout, info.stdout
    # the size bound evicts them like terminal records
    TerminalStore(tmp_path, max_bytes=1).evict()
    assert sorted(p.name for p in folder.iterdir()) == ["mine.onnx"]
    forward_module(_model(1), [_images(1)], RuntimeSpec("onnxruntime", cache_dir=tmp_path))
    assert list(folder.glob("[0-9a-f]*.onnx"))
    cleared = _cli("cache", "clear", "--cache-dir", str(tmp_path))
    assert cleared.returncode == 0, cleared.stderr
    assert not list(folder.glob("[0-9a-f]*.onnx")) and (folder / "mine.onnx").exists()


def test_the_sycam_api_runs_on_a_runtime(tmp_path):
    from sycam_dsl import SyCAM

    model, x = _model(), _images(3)
    want = SyCAM(model, "features", "(relu (+ cic abl))", runtime="torch")(x)
    cam = SyCAM(model, "features", "(relu (+ cic abl))", runtime="onnxruntime", cache_dir=tmp_path)
    got = cam(x)
    assert list((tmp_path / rt.FOLDER).glob("*.onnx")), "not converted into the given cache folder"
    for a, b in zip(want.flatten(1), got.flatten(1)):
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) >= 0.99999


def test_a_converted_model_that_gives_other_outputs_is_refused(monkeypatch, caplog):
    real = rt._session

    def off_by_one(runtime, onnx, precision):  # a conversion that went wrong: every logit moved by 1
        run = real(runtime, onnx, precision)
        return lambda arrays: run(arrays) + 1.0

    monkeypatch.setattr(rt, "_session", off_by_one)
    model, x = _model(), _images(2)
    with pytest.raises(ConversionError, match="does not reproduce torch's outputs"):
        forward_module(model, [x[:1]], RuntimeSpec("onnxruntime"))
    with caplog.at_level(logging.WARNING, logger="sycam_dsl"):
        assert forward_module(model, [x[:1]], RuntimeSpec("auto")) is model  # auto: torch, with a warning
    assert any("does not reproduce" in r.getMessage() for r in caplog.records)


class _DictNet(nn.Module):
    """A tiny segmentation-style net returning ``{'out': ...}``; counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"out": self.conv(x)}


def test_a_dict_output_model_is_probed_once_and_exports_through_either_exporter():
    model, x = _DictNet().eval(), _images(3)
    first = rt._tensor_output(model, [x[:1]])
    assert isinstance(first, rt.TensorOutput) and model.calls == 1
    again = rt._tensor_output(model, [x[:1]])
    assert isinstance(again, rt.TensorOutput) and again.module is model and model.calls == 1  # probed once
    assert rt._tensor_output(first, [x[:1]]) is first
    import gc
    import weakref

    gone = weakref.ref(model)
    del model, first, again
    gc.collect()
    assert gone() is None  # the probe's memo keeps no model alive
    if not dynamo_available():
        pytest.skip("the dynamo exporter needs onnxscript")
    import onnxruntime as ort

    # the dynamo exporter takes TensorOutput's forward(*inputs) (its dynamic shapes nested once)
    wrapped = rt.TensorOutput(_DictNet().eval())
    data = onnx_export._dynamo(wrapped, [x[:2]])
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), wrapped.module(x)["out"].detach(), rtol=1e-5, atol=1e-5)


def test_weights_beyond_one_onnx_file_are_refused_in_one_line():
    big = nn.Linear(1, 1)
    big.huge = nn.Parameter(torch.empty(600_000_000, device="meta"))  # 2.2 GB, never allocated
    with pytest.raises(ConversionError, match=r"holds 2\.2 GB of weights, more than one ONNX file holds") as e:
        onnx_export.export_onnx(big, [torch.zeros(1, 1)], None, "the model")
    assert "\n" not in str(e.value)


def test_the_tracer_converts_with_stdout_closed(tmp_path):
    """The tracer's stdout redirection leaves a process without a descriptor 1 alone."""
    code = ("import torch, sys; from tests.cam_reference import TinyCNN; "
            "from sycam_dsl.models.onnx_export import _traced; "
            "data = _traced(TinyCNN(classes=3).eval(), [torch.randn(2, 3, 32, 32)], 'm'); "
            "sys.stderr.write('ok %d' % len(data))")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" >&-", shell=True, capture_output=True, text=True,
                          cwd=root, timeout=300)
    assert proc.returncode == 0 and proc.stderr.startswith("ok "), proc.stderr[-2000:]


def test_loops_build_batches_on_one_torch_thread_while_a_runtime_runs(monkeypatch):
    """cic, abl and the metrics' loops run torch's own operations on one thread while a runtime runs
    their forward passes (idle torch threads would spin on the runtime's cores), and give torch its
    thread count back; the runtime itself keeps torch's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model, x = _model(), _images(6)
        seen: list[int] = []
        real = rt._session

        def watched(runtime, onnx, precision):
            assert rt.runtime_threads() == 2
            run = real(runtime, onnx, precision)

            def call(arrays):
                seen.append(torch.get_num_threads())
                return run(arrays)
            return call

        monkeypatch.setattr(rt, "_session", watched)
        targets = model(x).argmax(1)
        heat = torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(3))
        inputs = MetricInputs(x, targets, heatmaps=heat, saliency=heat[:, ::4, ::4], model=model,
                              runtime=RuntimeSpec("onnxruntime"))
        for terminal in ("cic", "abl", "deletion"):
            seen.clear()
            if terminal == "deletion":
                get_metric("deletion", steps=4)(inputs)
            else:
                compute_terminals(model, "features", x, None, [terminal], progress=False,
                                  runtime=RuntimeSpec("onnxruntime"))
            # the builds' own checks run outside the loops (2 threads); the loop's passes inside (1)
            assert 1 in seen, (terminal, seen)
            assert torch.get_num_threads() == 2 and rt.runtime_threads() == 2
    finally:
        torch.set_num_threads(threads)
