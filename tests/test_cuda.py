"""The CUDA path, run where a GPU is (``benchmarks/device_check.sh`` runs this file first): terminals,
metrics, the compiled runtime and a short search on ``cuda`` agree with the CPU's values. Skipped
without CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.metrics import get_metric
from sycam_dsl.metrics.registry import MetricInputs
from sycam_dsl.models.runtime import RuntimeSpec, candidates, forward_module, runtime_name
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.synthesis import Budget, SearchOptions
from tests.cam_reference import TinyCNN

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
NAMES = ["grads", "pgrads", "cic", "abl", "G", "A"]


def _model() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN(classes=3).eval()


def _images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("chunk", [4, "auto"])
def test_terminals_on_cuda_match_the_cpu(chunk):
    x = _images()
    cpu, _ = compute_terminals(_model(), "features", x, None, NAMES, progress=False)
    gpu, info = compute_terminals(_model(), "features", x, None, NAMES, device="cuda", chunk_size=chunk,
                                  progress=False)
    assert info.acts.device.type == "cuda" and info.abl_method == "fx"
    for name in NAMES:
        assert torch.allclose(gpu[name].cpu(), cpu[name], atol=1e-4, rtol=1e-4), name


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_on_cuda_stays_close(precision):
    x = _images()
    ref, _ = compute_terminals(_model(), "features", x, None, ["cic", "abl"], progress=False)
    low, _ = compute_terminals(_model(), "features", x, None, ["cic", "abl"], device="cuda", progress=False,
                               precision=precision)
    for name in ("cic", "abl"):
        assert float((low[name].cpu() - ref[name]).abs().max()) < 0.05, name


def test_metrics_on_cuda_match_the_cpu():
    model, x = _model(), _images()
    targets = model(x).argmax(1)
    heat = torch.rand(8, 32, 32, generator=torch.Generator().manual_seed(2))
    metric = get_metric("deletion", steps=4)
    cpu = metric(MetricInputs(x, targets, heatmaps=heat, saliency=heat[:, ::4, ::4], model=model)).per_image
    gpu_model = _model().cuda()
    gpu = metric(MetricInputs(x.cuda(), targets.cuda(), heatmaps=heat.cuda(), saliency=heat[:, ::4, ::4].cuda(),
                              model=gpu_model, device="cuda", batch_size="auto")).per_image
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)


def test_the_compiled_runtime_on_cuda():
    model, x = _model().cuda(), _images().cuda()
    compiled = forward_module(model, [x[:1]], RuntimeSpec("compile"))
    assert runtime_name(compiled) == "compile"
    with torch.inference_mode():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)
    assert candidates("auto", "fp32", torch.device("cuda")) == ["torch", "compile"]
    auto = forward_module(model, [x[:1]], RuntimeSpec("auto"))
    assert runtime_name(auto) in ("torch", "compile")


def test_a_search_on_cuda_finds_what_the_cpu_finds(tmp_path):
    def run(device: str):
        return synthesize(_model(), "features", _images(16), metric="deletion", metric_options={"steps": 4},
                          budget=Budget(candidates=40), device=device,
                          data=DataOptions(use_cache=False, runtime="torch"),
                          search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4, test_split=0.25),
                          output=OutputOptions(report_metrics=[], progress=False, report_images=0),
                          out_dir=tmp_path / device)

    run("cpu")
    run("cuda")
    cpu, gpu = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("cpu", "cuda"))
    assert gpu["expression"] == cpu["expression"]
    assert [h["expression"] for h in gpu["history"]] == [h["expression"] for h in cpu["history"]]


def test_a_vision_transformer_and_other_targets_on_cuda_match_the_cpu():
    """The reshape of token layers, a ``classes:`` target and a segmentation target over given masks
    (kept on the CPU: the engine moves them) on ``cuda`` equal the CPU's terminals."""
    from sycam_dsl.models.targets import SegmentationTarget, parse_target
    from tests.test_targets import SegNet, _setup
    from tests.test_transformers import VIT_LAYER, small_vit

    x = _images(4)
    names = ["grads", "cic", "abl"]
    cpu, _ = compute_terminals(small_vit(), VIT_LAYER, x, parse_target("classes:1,3"), names, progress=False)
    gpu, info = compute_terminals(small_vit(), VIT_LAYER, x, parse_target("classes:1,3"), names, device="cuda",
                                  progress=False)
    assert info.acts.device.type == "cuda" and info.acts.shape[1:] == (32, 4, 4)
    for name in names:
        assert torch.allclose(gpu[name].cpu(), cpu[name], atol=1e-4, rtol=1e-3), name
    model = _setup(SegNet(), n=4, size=32, dtype=torch.float32)[0]
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 4:28] = True
    target = SegmentationTarget(1).with_masks(masks)
    cpu, _ = compute_terminals(model, "block", x, target, names, progress=False)
    gpu, _ = compute_terminals(model, "block", x, target, names, device="cuda", progress=False)
    for name in names:
        assert torch.allclose(gpu[name].cpu(), cpu[name], atol=1e-4, rtol=1e-3), name
