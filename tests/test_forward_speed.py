"""Forward passes at the hardware's limit (the speed issue): ``--batch-size auto``, ``--precision``,
the batched loops of ``cic``, ``abl`` and the perturbation metrics.

fp32 at a fixed batch size must give bit-identical results to the loops before the issue: the
``_before_*`` functions below are those loops (the same operations in the same order), and the
tests compare with ``torch.equal``. CPU only; CUDA's batch-size arithmetic runs on mocked
``torch.cuda`` functions.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sycam_dsl.bundled import bundled_images, load_bundled_model
from sycam_dsl.cam import ablation_pass as AP
from sycam_dsl.cam import scorecam_pass as SP
from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.cam.errors import TerminalError
from sycam_dsl.cam.layer_split import layer_access, tail_runner
from sycam_dsl.cam.sanity import spearman
from sycam_dsl.cli import main
from sycam_dsl.errors import SycamError
from sycam_dsl.lang.types import Type
from sycam_dsl.metrics import get_metric
from sycam_dsl.metrics.errors import MetricError
from sycam_dsl.metrics.memo import ScoreCache, memoized_curve
from sycam_dsl.metrics.perturbation import (
    blurred,
    cell_ranks,
    deletion,
    perturbation_curve,
    perturbed_builder,
    pixel_cells,
)
from sycam_dsl.metrics.registry import MetricInputs
from sycam_dsl.metrics.scoring import class_scores, plan_forward
from sycam_dsl.models import ModelError
from sycam_dsl.models import batching as B
from sycam_dsl.models.precision import check_precision, forward_precision
from sycam_dsl.run import DataOptions
from sycam_dsl.template.heatmaps import heatmaps

# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def bundled():
    """The bundled CNN (trained weights) on 4 generated images, with its activations and targets."""
    m = load_bundled_model().module.eval()
    x = bundled_images(4).images
    access = layer_access(m, "features.14")
    with torch.no_grad():
        acts, logits = access.forward(x)
    return m, access, x, acts.detach(), logits.detach(), logits.argmax(1)


class Recorder:
    """Forward pre-hooks that record, per call, the batch size, the input dtype and the autocast
    dtype (None when autocast is off) of a module."""

    def __init__(self, *modules: nn.Module) -> None:
        self.calls: list[tuple[int, torch.dtype, torch.dtype | None]] = []
        self.handles = [m.register_forward_pre_hook(self.hook) for m in modules]

    def hook(self, module: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        auto = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        self.calls.append((x.shape[0], x.dtype, auto))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# ---------------------------------------------------------------------------------------------
# the loops before the issue, for bit-identity


@torch.no_grad()
def _before_cic(model, x, acts, targets, chunk):
    n, k = acts.shape[:2]
    size = (x.shape[2], x.shape[3])
    base_logits = model(torch.zeros_like(x[:1]))
    base_z, base_y = SP.target_scores(base_logits.expand(n, -1), targets)
    masked_z, masked_y = base_z[:, None].repeat(1, k), base_y[:, None].repeat(1, k)
    flat = acts.flatten(2)
    live = (flat.amax(dim=2) > flat.amin(dim=2)).nonzero()
    for start in range(0, live.shape[0], chunk):
        img, ch = live[start:start + chunk].unbind(1)
        masked = x[img].mul_(SP.channel_masks(acts[img, ch], size)[:, None])
        out = model(masked.contiguous(memory_format=torch.channels_last))
        z, y = SP.target_scores(out, targets[img])
        masked_z[img, ch], masked_y[img, ch] = z, y
    return masked_y - base_y[:, None], masked_z


@torch.no_grad()
def _before_abl(runner, x, acts, logits, targets, chunk):
    n, k = acts.shape[:2]
    group = max(1, chunk // k)
    z_c = logits.gather(1, targets[:, None])[:, 0]
    ablated = torch.empty(n, k, dtype=x.dtype)
    for s in range(0, n, group):
        xs, a_s, ts = x[s:s + group], acts[s:s + group], targets[s:s + group]
        carried = runner.carry(xs)
        total = xs.shape[0] * k
        for r0 in range(0, total, chunk):
            r = torch.arange(r0, min(r0 + chunk, total))
            img, ch = r // k, r % k
            a = a_s[img]
            a[torch.arange(img.shape[0]), ch] = 0
            out = runner(a, [c[img] for c in carried])
            ablated[s + img, ch] = out.gather(1, ts[img][:, None])[:, 0]
    return (z_c[:, None] - ablated) / z_c[:, None], ablated


@torch.inference_mode()
def _before_curve(model, x, targets, saliency, steps, insert, batch):
    n, _, H, W = x.shape
    blur = blurred(x)
    start, paste = (blur, x) if insert else (x, blur)
    ranks = cell_ranks(saliency).reshape(-1, *saliency.shape[-2:])
    flat = ranks.reshape(ranks.shape[0], -1)
    cells = pixel_cells(tuple(ranks.shape[-2:]), (H, W)).flatten()
    rows_targets = targets.repeat_interleave(steps).repeat(ranks.shape[0] // n)
    out = []
    for i in range(0, rows_targets.shape[0], batch):
        idx = torch.arange(i, min(i + batch, rows_targets.shape[0]))
        r, p = idx // steps, idx % steps + 1
        img = r % n
        mask = (flat[r] < p[:, None]).gather(1, cells.expand(len(idx), -1)).view(-1, 1, H, W)
        logits = model(torch.where(mask, paste[img], start[img]))
        out.append(torch.softmax(logits.float(), dim=1).gather(1, rows_targets[idx][:, None]).squeeze(1))
    return torch.cat(out).reshape(*saliency.shape[:-2], steps)


# ---------------------------------------------------------------------------------------------
# fp32 is bit-identical to before


@pytest.mark.parametrize("chunk", [9, 32, 100])
def test_fp32_cic_is_bit_identical_and_abl_equal_to_the_loops_before(bundled, chunk):
    m, access, x, acts, logits, t = bundled
    cic, mz = SP.scorecam_pass(m, x, acts, t, chunk, False)
    ref_cic, ref_mz = _before_cic(m, x, acts, t, chunk)
    assert torch.equal(cic, ref_cic) and torch.equal(mz, ref_mz)
    kept = acts.clone()
    abl, ablated, method = AP.ablation_pass(access, x, acts, logits, t, chunk, "auto", False)
    assert torch.equal(acts, kept)  # ablation works on copies, even of a single row
    ref_abl, ref_ablated = _before_abl(tail_runner(access, method), x, acts, logits, t, chunk)
    # abl's batches now hold one channel of several images: a row's place in the batch can change
    # the tail's rounding (1 ulp at chunk 9), so equal to float rounding, not bit for bit
    torch.testing.assert_close(ablated, ref_ablated, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(abl, ref_abl, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n, k, chunk", [(4, 64, 9), (4, 64, 100), (1, 512, 82), (20, 512, 82), (32, 64, 508),
                                         (3, 5, 1), (3, 5, 1000)])
def test_ablation_layout_fills_batches_and_spreads_channels(n, k, chunk):
    b, c = AP.ablation_layout(n, k, chunk)
    assert 1 <= b <= n and 1 <= c <= k and (b * c <= chunk or b == c == 1)
    batches = -(-k // c)
    assert (batches - 1) * c < k <= batches * c and k - (batches - 1) * c >= c - batches  # spread evenly
    assert b == min(n, chunk)  # as many images per block as fit: the block's full copy is c / k of the rows


class InPlaceTail(nn.Module):
    """A model whose layers after ``features`` write into their input (``relu_``, ``mul_``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        a.mul_(2.0).relu_()  # in place on the (ablated) activations the ablation loop hands in
        return self.fc(a.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["fx", "hook"])
def test_abl_is_right_when_the_tail_writes_into_its_input(method):
    torch.manual_seed(0)
    m = InPlaceTail().eval()
    x = torch.randn(5, 3, 8, 8)
    access = layer_access(m, "features")
    with torch.no_grad():
        acts, logits = access.forward(x)
        t = logits.argmax(1)
        want = torch.empty(5, 6)
        for i in range(5):  # one ablated copy at a time, through the whole model
            for ch in range(6):
                a = acts[i:i + 1].clone()
                a[:, ch] = 0
                want[i, ch] = m.fc(a.mul(2.0).relu().mean(dim=(2, 3)))[0, t[i]]
    for chunk in (4, 7, 30):
        _, ablated, used = AP.ablation_pass(access, x, acts.clone(), logits, t, chunk, method, False)
        assert used == method
        torch.testing.assert_close(ablated, want, rtol=1e-5, atol=1e-6)


def test_fp32_cic_with_many_images_per_batch_is_bit_identical(bundled):
    """One live channel per image: a batch spans many images, built by one gather instead of runs."""
    m, _, x, acts, _, t = bundled
    x8, a8, t8 = torch.cat([x, x.flip(0)]), torch.cat([acts, acts.flip(0)])[:, 5:7], torch.cat([t, t.flip(0)])
    for chunk in (16, 3):
        got = SP.scorecam_pass(m, x8, a8, t8, chunk, False)
        want = _before_cic(m, x8, a8, t8, chunk)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("insert", [False, True])
@pytest.mark.parametrize("batch", [13, 64])
def test_fp32_perturbation_curves_are_bit_identical_to_the_loop_before(bundled, insert, batch):
    m, _, x, acts, _, t = bundled
    sal = torch.rand(2, x.shape[0], *acts.shape[2:], generator=torch.Generator().manual_seed(0))
    got = perturbation_curve(m, x, t, sal, 10, insert, batch_size=batch)
    assert torch.equal(got, _before_curve(m, x, t, sal, 10, insert, batch))
    memo = memoized_curve(m, x, t, sal, 10, insert, blurred(x), torch.arange(x.shape[0]), ScoreCache(8), "k",
                          batch_size=batch)
    assert torch.equal(memo, got)


def test_mask_blocks_do_not_change_values(bundled, monkeypatch):
    """Masks are built for several batches at once; blocks of any size give the same bits."""
    import sycam_dsl.metrics.perturbation as P

    m, access, x, acts, logits, t = bundled
    sal = torch.rand(2, x.shape[0], 8, 8, generator=torch.Generator().manual_seed(5))
    want_cic = SP.scorecam_pass(m, x, acts, t, 7, False)
    want_curve = perturbation_curve(m, x, t, sal, 6, False, batch_size=7, channels_last=True)
    monkeypatch.setattr(SP, "MASK_BLOCK_BYTES", 3 * 7 * 64 * 64 * 4)   # 3 batches a block
    monkeypatch.setattr(P, "MASK_BLOCK_BYTES", 5 * 64 * 64 * 4)       # 5 rows a block, less than a batch
    got_cic = SP.scorecam_pass(m, x, acts, t, 7, False)
    assert torch.equal(got_cic[0], want_cic[0]) and torch.equal(got_cic[1], want_cic[1])
    assert torch.equal(perturbation_curve(m, x, t, sal, 6, False, batch_size=7, channels_last=True), want_curve)


def test_perturbed_rows_by_range_equal_rows_by_index_in_both_layouts(bundled):
    _, _, x, acts, _, _ = bundled
    ranks = cell_ranks(torch.rand(2 * x.shape[0], 8, 8, generator=torch.Generator().manual_seed(1))).view(-1, 8, 8)
    rows = torch.tensor([0, 0, 1, 5, 5, 5, 6, 7, 2, 2])
    step = torch.tensor([1, 3, 2, 1, 2, 9, 4, 4, 7, 8])
    for kw in ({}, {"rows": rows, "step": step}):
        build = perturbed_builder(x, blurred(x), ranks, 9, False, **kw)
        total = 10 if kw else 2 * x.shape[0] * 9
        for begin, end in ((0, total), (1, 4), (3, 9)):
            want = build(torch.arange(begin, end))
            for fmt in (torch.contiguous_format, torch.channels_last):
                got = build.build_range(begin, end, fmt)
                assert got.is_contiguous(memory_format=fmt)
                assert torch.equal(got, want)


def test_fast_masks_equal_channel_masks_bit_for_bit():
    gen = torch.Generator().manual_seed(4)
    acts = torch.rand(12, 7, 7, generator=gen) * 5 - 1
    acts[3] = 0.0  # a constant map (zeros upsample exactly): an all-zero mask
    acts[5, 2, 2] = -0.0
    for size in ((224, 224), (64, 64), (33, 50)):
        want = SP.channel_masks(acts, size)
        got = SP._masks_fast(acts, size)
        assert torch.equal(got, want) and torch.equal(got.view(torch.int32), want.view(torch.int32))
        assert not got[3].any()


def test_image_runs():
    offsets = [0, 2, 5, 5, 6]  # rows of images 0..3: [0, 0, 1, 1, 1, 3]; image 2 has none
    assert SP._image_runs(offsets, 1, 6) == [(0, 0, 1), (1, 1, 4), (3, 4, 5)]
    assert SP._image_runs(offsets, 0, 6) == [(0, 0, 2), (1, 2, 5), (3, 5, 6)]
    assert SP._image_runs(offsets, 2, 5) == [(1, 0, 3)]
    assert SP._image_runs(offsets, 4, 6) == [(1, 0, 1), (3, 1, 2)]
    assert SP._image_runs([0, 0, 3], 0, 3) == [(1, 0, 3)]


# ---------------------------------------------------------------------------------------------
# precision


def test_precision_reaches_the_forward_passes_and_gradients_stay_float32(bundled):
    m = bundled[0]
    x = bundled[2][:2]
    first, last = m.features[0], m.classifier  # before the target layer, and in the tail after it
    rec_first, rec_last = Recorder(first), Recorder(last)
    try:
        compute_terminals(m, "features.14", x, None, ["grads", "cic", "abl"], chunk_size=64, progress=False,
                          precision="bf16")
    finally:
        rec_first.close()
        rec_last.close()
    # the probe (1 image) and the gradient pass (2 images): no autocast, float32 all the way
    assert rec_first.calls[:2] == [(1, torch.float32, None), (2, torch.float32, None)]
    cic_calls = rec_first.calls[2:]  # the shared baseline, then the masked batches
    assert cic_calls and all(c[2] == torch.bfloat16 for c in cic_calls)
    # the tail: once per gradient pass and probe (float32), then abl's check (float32), then bf16
    tail_auto = [c[2] for c in rec_last.calls]
    assert tail_auto[:2] == [None, None] and torch.bfloat16 in tail_auto
    assert tail_auto.count(None) + tail_auto.count(torch.bfloat16) == len(tail_auto)

    rec = Recorder(first)
    try:
        for precision, want in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            rec.calls.clear()
            class_scores(m, x, torch.zeros(2, dtype=torch.long), precision=precision)
            assert rec.calls and all(c[2] == want for c in rec.calls), precision
            inputs = MetricInputs(x, torch.zeros(2, dtype=torch.long), saliency=torch.rand(2, 8, 8), model=m,
                                  precision=precision)
            rec.calls.clear()
            get_metric("deletion", steps=3)(inputs)
            assert rec.calls and all(c[2] == want for c in rec.calls), precision
    finally:
        rec.close()


def test_fp32_precision_is_the_default_and_bit_identical(bundled):
    m, _, x, _, _, _ = bundled
    a, ia = compute_terminals(m, "features.14", x[:3], None, ["cic", "abl", "grads"], progress=False)
    b, ib = compute_terminals(m, "features.14", x[:3], None, ["cic", "abl", "grads"], progress=False,
                              precision="fp32")
    for n in a:
        assert torch.equal(a[n], b[n])
    assert torch.equal(ia.ablated_logits, ib.ablated_logits)
    assert ia.batch_sizes == {"gradients": 32, "cic": 32, "abl": 32}


#: bf16 keeps 8 bits of mantissa: the bundled CNN's cic (softmax score differences in [-1, 1]) and abl
#: (relative logit drops) stay within these of fp32, and their heatmaps correlate above 0.99.
BF16_TOLERANCE = {"cic": 0.03, "abl": 0.03}


def test_bf16_terminals_and_scores_are_close_to_fp32(bundled):
    m, _, x, _, _, _ = bundled
    ref, info = compute_terminals(m, "features.14", x, None, ["cic", "abl"], progress=False)
    low, _ = compute_terminals(m, "features.14", x, None, ["cic", "abl"], progress=False, precision="bf16")
    for name, tol in BF16_TOLERANCE.items():
        diff = float((ref[name] - low[name]).abs().max())
        assert 0 < diff < tol, (name, diff)  # 0 would mean bf16 never ran
        ha = heatmaps(ref[name], info.acts, Type.VEC, (64, 64))
        hb = heatmaps(low[name], info.acts, Type.VEC, (64, 64))
        assert float(spearman(ha, hb).nanmean()) > 0.99, name
    sal = torch.rand(x.shape[0], 8, 8, generator=torch.Generator().manual_seed(2))
    d32 = deletion(m, x, info.targets, sal, 10)
    d16 = deletion(m, x, info.targets, sal, 10, precision="bf16")
    assert 0 < float((d32 - d16).abs().max()) < 0.03


def test_targets_are_checked_once_for_every_batch(bundled):
    m, _, x, _, _, _ = bundled
    with pytest.raises(TerminalError, match="target class 7 of image 2 is out of range: the model has 4 classes"):
        compute_terminals(m, "features.14", x[:3], torch.tensor([0, 1, 7]), ["grads"], chunk_size=1, progress=False)


def test_bad_precisions_are_refused_with_one_line(bundled):
    m, _, x, _, _, t = bundled
    with pytest.raises(ModelError, match=r"unknown precision 'fp64'; use fp32, bf16, fp16"):
        check_precision("fp64")
    with pytest.raises(TerminalError, match="unknown precision 'half'"):
        compute_terminals(m, None, x[:1], None, ["cic"], precision="half", progress=False)
    with pytest.raises(MetricError, match="unknown precision 'half'"):
        class_scores(m, x, t, precision="half")
    with pytest.raises(SycamError, match="unknown precision"):
        DataOptions(precision="bfloat16")
    with forward_precision("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


# ---------------------------------------------------------------------------------------------
# batch sizes


def test_batch_from_memory_arithmetic():
    gib = 2**30
    # 80% of 10 GiB, less 1 GiB fixed, over 100 MiB per item
    assert B.batch_from_memory(10 * gib, gib, 100 * 2**20) == (8 * gib - gib) // (100 * 2**20) == 71
    assert B.batch_from_memory(10 * gib, gib, 100 * 2**20, cap=16) == 16
    assert B.batch_from_memory(gib, 2 * gib, 2**20) == 1        # nothing fits: 1, the forward pass will say so
    assert B.batch_from_memory(gib, 0, 0, cap=9) == 9
    assert B.batch_from_memory(gib, 0, 2**20, headroom=0.5) == 512


class _FakeCuda:
    """``torch.cuda``'s memory functions for a device with ``free`` bytes where a batch of ``b``
    items peaks at ``fixed + b * per_item``; batches above ``oom_above`` run out of memory."""

    def __init__(self, free: int, fixed: int, per_item: int, oom_above: int | None = None) -> None:
        self.free, self.fixed, self.per_item, self.oom_above = free, fixed, per_item, oom_above
        self.peak = 0
        self.sizes: list[int] = []

    def run(self, batch: torch.Tensor) -> None:
        b = batch.shape[0]
        self.sizes.append(b)
        if self.oom_above is not None and b > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        self.peak = self.fixed + b * self.per_item

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: setattr(self, "peak", 0))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (self.free, 2 * self.free))
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)


def test_auto_batch_size_on_cuda_divides_the_free_memory(monkeypatch):
    gib, mib = 2**30, 2**20
    sample = torch.zeros(1, 3, 8, 8)  # 768 bytes: the extra input copy is negligible
    fake = _FakeCuda(free=10 * gib, fixed=gib, per_item=100 * mib)
    fake.install(monkeypatch)
    size = B.auto_batch_size(fake.run, sample, "cuda")
    want = int((0.8 * 10 * gib - gib) // (100 * mib + 768))
    assert size == want == 71
    assert fake.sizes == [1, 4, 71]  # the two probes, then the chosen size runs once
    assert B.auto_batch_size(fake.run, sample, "cuda", cap=20) == 20
    fake = _FakeCuda(free=10 * gib, fixed=gib, per_item=100 * mib, oom_above=30)  # fragmentation, say
    fake.install(monkeypatch)
    assert B.auto_batch_size(fake.run, sample, "cuda") == 17  # 71 -> 35 -> 17, the first that runs


def test_auto_batch_size_on_the_cpu_is_a_positive_int_that_fits(bundled, monkeypatch):
    m, _, x, _, _, _ = bundled

    def run(batch):
        with torch.inference_mode():
            return m(batch)

    fp = B.footprint(m, run, x[:1])
    # the largest layer is the first BatchNorm (or ReLU): 16 x 64 x 64 floats in and out, plus the input
    assert fp.largest == 2 * 16 * 64 * 64 * 4 + 3 * 64 * 64 * 4
    assert fp.total > 3 * 16 * 64 * 64 * 4  # conv, BN and ReLU of the first block at least
    monkeypatch.setattr(B, "cache_bytes", lambda: 32 * 2**20)
    size = B.auto_batch_size(run, x[:1], "cpu", module=m)
    assert isinstance(size, int) and size == 16 * 2**20 // fp.largest == 29
    assert size == B.auto_batch_size(run, x[:1], "cpu", module=m)  # deterministic
    monkeypatch.setattr(B, "cache_bytes", lambda: 2**20)
    assert B.auto_batch_size(run, x[:1], "cpu", module=m) == B.MIN_HOST_BATCH  # a tiny cache: the floor
    assert B.cache_bytes() > 0
    assert B.auto_batch_size(run, x[:1], "cpu", module=m, backward=True) == B.HOST_BACKWARD_BYTES // fp.total
    assert B.auto_batch_size(run, x[:1], "cpu", cap=3, module=m) == 3
    with torch.inference_mode():
        m(x[:1].expand(size, -1, -1, -1).clone())  # it runs
    # memory decides: room for every output of 5 images in a quarter of the available memory
    monkeypatch.setattr(B, "cache_bytes", lambda: 32 * 2**20)
    monkeypatch.setattr(B, "available_host_memory", lambda: 4 * 5 * fp.total + 3)
    assert B.auto_batch_size(run, x[:1], "cpu", module=m) == 5
    monkeypatch.setattr(B, "available_host_memory", lambda: 1)
    assert B.auto_batch_size(run, x[:1], "cpu", module=m) == 1
    with pytest.raises(ModelError, match="one sample"):
        B.auto_batch_size(run, x[:2], "cpu")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "big", None])
def test_bad_batch_sizes_are_refused(bad):
    with pytest.raises(ModelError, match="must be a positive integer or 'auto'"):
        B.check_batch_size(bad)
    with pytest.raises(SycamError):
        DataOptions(batch_size=bad)


def test_auto_batch_size_through_terminals_and_metrics(bundled):
    m, _, x, _, _, t = bundled
    terms, info = compute_terminals(m, "features.14", x[:2], None, ["grads", "cic", "abl"], chunk_size="auto",
                                    progress=False)
    assert set(info.batch_sizes) == {"gradients", "cic", "abl"}
    assert all(isinstance(v, int) and v >= 1 for v in info.batch_sizes.values())
    assert info.batch_sizes["gradients"] <= 2 and info.batch_sizes["abl"] <= 2 * 64
    ref, _ = compute_terminals(m, "features.14", x[:2], None, ["grads", "cic", "abl"], progress=False)
    for n in ref:  # another batch size may round differently, never more
        torch.testing.assert_close(terms[n], ref[n], rtol=1e-4, atol=1e-5)
    size, channels_last = plan_forward(m, x, "cpu", "auto")
    assert isinstance(size, int) and size >= 1 and isinstance(channels_last, bool)
    assert plan_forward(m, x, "cpu", 17) == (17, False)
    assert plan_forward(m, x, "cpu", 17, "bf16") == (17, True)  # bits differ anyway: the faster layout
    assert plan_forward(_FlattensItsInput(m), x, "cpu", 17, "bf16") == (17, False)
    low = MetricInputs(x, t, model=m, precision="bf16")
    assert low.channels_last is True and low.batch_size == 64
    assert MetricInputs(x, t, model=m, precision="bf16", channels_last=False).channels_last is False
    assert MetricInputs(x, t, model=m).channels_last is False
    rec = Recorder(m.features[0])
    try:  # decided once: copies run nothing
        low.with_heatmaps(None, torch.rand(x.shape[0], 8, 8))
        low.subset(torch.tensor([0, 1]))
        assert rec.calls == []
    finally:
        rec.close()
    inputs = MetricInputs(x, t, saliency=torch.rand(x.shape[0], 8, 8), model=m, batch_size="auto")
    assert isinstance(inputs.batch_size, int) and inputs.batch_size >= 1
    fixed = MetricInputs(x, t, saliency=inputs.saliency, model=m)
    torch.testing.assert_close(get_metric("deletion", steps=5)(inputs).per_image,
                               get_metric("deletion", steps=5)(fixed).per_image, rtol=1e-4, atol=1e-5)


class _FlattensItsInput(nn.Module):
    """Calls .view() on its input, which a channels-last batch cannot take."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.view(x.shape[0], -1)
        return self.inner(x)


def test_channels_last_metrics_fall_back_for_models_that_need_contiguous_input(bundled):
    m, _, x, _, _, t = bundled
    model = _FlattensItsInput(m)
    sal = torch.rand(x.shape[0], 8, 8, generator=torch.Generator().manual_seed(3))
    got = perturbation_curve(model, x, t, sal, 4, False, batch_size=8, channels_last=True)
    assert torch.equal(got, perturbation_curve(m, x, t, sal, 4, False, batch_size=8))
    assert plan_forward(model, x, "cpu", "auto")[1] is False


# ---------------------------------------------------------------------------------------------
# the command line


def _exit_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("argv, pattern", [
    (["eval", "--batch-size", "0"], r"argument --batch-size: expected a positive integer or auto, got 0"),
    (["eval", "--batch-size", "lots"], r"argument --batch-size: expected a positive integer or auto, got 'lots'"),
    (["synth", "--chunk-size", "-2"], r"argument --chunk-size: expected a positive integer or auto"),
    (["explain", "--precision", "fp64"], r"argument --precision: invalid choice: 'fp64'"),
    (["terminals", "--precision", "half"], r"argument --precision: invalid choice: 'half'"),
    (["synth", "--precision", "bf32"], r"argument --precision: invalid choice"),
])
def test_cli_refuses_bad_batch_sizes_and_precisions_with_one_line(argv, pattern, capsys):
    assert re.search(pattern, _exit_line(argv, capsys))


def test_cli_parses_auto_and_precision():
    from sycam_dsl.cli import build_parser
    from sycam_dsl.cli.options import chunk_size_from

    for cmd in ("eval", "explain", "synth"):
        extra = {"eval": ["--model", "m", "--images", "d"], "explain": ["(relu grads)", "--model", "m", "--image",
                                                                      "i.png", "-o", "o.png"], "synth": []}[cmd]
        args = build_parser([cmd]).parse_args([cmd, *extra, "--batch-size", "auto", "--precision", "bf16"])
        assert args.batch_size == "auto" and args.precision == "bf16" and chunk_size_from(args) == "auto"
        args = build_parser([cmd]).parse_args([cmd, *extra, "--batch-size", "AUTO", "--chunk-size", "8"])
        assert args.batch_size == "auto" and chunk_size_from(args) == 8 and args.precision == "fp32"
        args = build_parser([cmd]).parse_args([cmd, *extra])
        assert args.batch_size == 64 and chunk_size_from(args) == 32 and args.precision == "fp32"
    args = build_parser(["terminals"]).parse_args(["terminals", "--model", "m", "--images", "d", "-o", "o.pt",
                                                   "--chunk-size", "auto", "--precision", "fp16"])
    assert chunk_size_from(args) == "auto" and args.precision == "fp16"


def test_cli_eval_with_auto_batches_and_bf16_runs_and_reports_the_sizes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    main(["eval", "--model", "tests.cam_reference:TinyCNN", "--weights", "random:0", "--layer", "features",
          "--size", "32", "--quiet", "--images", str(tmp_path), "--baselines", "ScoreCAM,AblationCAM",
          "--metric", "deletion", "--steps", "4", "--batch-size", "auto", "--precision", "bf16",
          "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert "ScoreCAM" in out.out and "AblationCAM" in out.out
    assert re.search(r"terminals: batch sizes gradients \d+, cic \d+, abl \d+ \(auto\)", out.err), out.err
    assert re.search(r"metrics: batch size \d+ \(auto", out.err), out.err
    assert any((tmp_path / "cache").rglob("*.pt"))  # bf16 records are stored, under keys with the precision


def test_auto_chunks_and_precisions_through_the_store(tmp_path, bundled):
    from sycam_dsl.cam.store import TerminalStore, compute_terminals_stored

    m, _, x, _, _, _ = bundled

    def run(**kw):
        return compute_terminals_stored(m, "features.14", x[:2], None, ["cic", "abl"], progress=False,
                                        store=TerminalStore(tmp_path), **kw)

    terms, info = run(chunk_size="auto")
    assert info.stored == 0 and set(info.batch_sizes) == {"gradients", "cic", "abl"}
    again, info2 = run(chunk_size="auto")
    assert info2.stored == 2 and torch.equal(again["cic"], terms["cic"]) and torch.equal(again["abl"], terms["abl"])
    low, info3 = run(precision="bf16")  # other keys: computed, not the float32 values
    assert info3.stored == 0 and not torch.equal(low["cic"], terms["cic"])
    assert run(precision="bf16")[1].stored == 2 and run()[1].stored == 2  # each precision has its own


def test_masks_and_scores_do_not_depend_on_how_rows_are_grouped(bundled):
    """Broadcasting one image over its run of masks equals gathering a copy per row."""
    m, _, x, acts, _, t = bundled
    few = SP.scorecam_pass(m, x[:2], acts[:2], t[:2], 5, False)[0]     # many batches spanning image boundaries
    whole = SP.scorecam_pass(m, x[:2], acts[:2], t[:2], 1000, False)[0]
    torch.testing.assert_close(few, whole, rtol=1e-4, atol=1e-5)
