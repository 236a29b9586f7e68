"""The CAM engine: models, layers, images/masks, terminals (against direct autograd and per-channel
loops written here from docs/language.md#terminals), the fx split and its hook fallback and the CLI (the terminal store: test_terminal_store.py).

CPU only, nothing downloaded: a tiny CNN defined here (float64, so comparisons are tight) and
torchvision's resnet18 with seeded random weights on 64 x 64 images.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.cam.errors import ImageError, TerminalError
from sycam_dsl.cam.images import load_images
from sycam_dsl.cam.layer_split import HookAccess, split_model, tail_runner
from sycam_dsl.cli import build_parser
from sycam_dsl.errors import SycamError
from sycam_dsl.models import (
    EFFICIENTNET_LITE,
    IMAGENET,
    LayerError,
    ModelError,
    default_layer,
    load_model,
    resolve_layer,
)

ALL = ["grads", "pgrads", "cic", "abl", "acts", "G", "A"]


# ---------------------------------------------------------------------------------------------
# models used by the tests


class TinyNet(nn.Module):
    """conv -> ReLU -> ``block`` (conv, ReLU; the target layer) -> pool -> fc, with BatchNorm so eval
    mode matters."""

    def __init__(self, k: int = 5, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, k, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(k, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


class SkipNet(TinyNet):
    """A connection around the target layer: the fx split carries the stem's output to the tail."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        a = self.block(s)
        return self.fc(torch.flatten(self.pool(a) + self.pool(s)[:, :a.shape[1]], 1))


class ShapeNet(TinyNet):
    """An int computed before the layer and read after it: it cannot follow the ablation rows, so
    abl falls back to the hook."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        c = s.shape[1]
        a = self.block(s[:, :c])
        return self.fc(torch.flatten(self.pool(a), 1)) * (c / 6)


class BatchSizeNet(TinyNet):
    """EfficientNet's layout: the tail reads the batch size from the input (the fx split carries it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = x.size(0)
        return self.fc(self.pool(self.block(self.stem(x))).view(bs, -1))


class DynamicNet(TinyNet):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.block(self.stem(x))
        if a.sum() > -1:
            a = a * 1.0
        return self.fc(torch.flatten(self.pool(a), 1))


class ScriptableNet(TinyNet):
    """timm's layout, for TorchScript: forward = forward_head(forward_features(x))."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(a), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def tiny_net(cls: type = TinyNet) -> nn.Module:
    """Also the CLI's ``module:function`` factory."""
    return _init(cls()).double()


def tiny_net_float() -> nn.Module:
    return _init(TinyNet())


def not_a_module() -> int:
    return 3


def broken_factory() -> nn.Module:
    raise ValueError("bad config")


def _images(n: int, size: int = 16, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _compute(model, x, names=ALL, layer="block", **kw):
    kw.setdefault("progress", False)
    return compute_terminals(model, layer, x, kw.pop("targets", None), names, **kw)


# ---------------------------------------------------------------------------------------------
# references, written from docs/language.md#terminals with one image (and one channel) at a time


def _layer_output(model: nn.Module, layer: nn.Module, x: torch.Tensor, change=None):
    """(logits, the layer's output A) for one forward pass; ``change(out)`` may replace the output."""
    store = {}

    def hook(m, i, out):
        if change is None:
            store["A"] = out.clone()
            return None
        store["A"] = change(out)
        return store["A"].clone()  # an in-place op downstream must not reach the stored tensor

    h = layer.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        h.remove()
    return logits, store["A"]


def ref_gradients(model, layer, x, targets):
    """(A, G, logits) image by image with ``backward``."""
    acts, grads, logits = [], [], []
    for i in range(x.shape[0]):
        out_logits, a = _layer_output(model, layer, x[i:i + 1], change=lambda o: o.clone())
        a.retain_grad()
        out_logits[0, targets[i]].backward()
        acts.append(a.detach()[0])
        grads.append(a.grad[0])
        logits.append(out_logits.detach()[0])
    return torch.stack(acts), torch.stack(grads), torch.stack(logits)


def ref_cic(model, layer, x, targets):
    with torch.no_grad():
        out = torch.zeros(x.shape[0], 0)
        rows = []
        base = torch.softmax(model(torch.zeros_like(x[:1])), 1)[0]
        for i in range(x.shape[0]):
            _, a = _layer_output(model, layer, x[i:i + 1])
            row = []
            for k in range(a.shape[1]):
                up = F.interpolate(a[:, k:k + 1], size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
                lo, hi = up.min(), up.max()
                m = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
                y = torch.softmax(model(x[i:i + 1] * m), 1)[0, targets[i]]
                row.append(y - base[targets[i]])
            rows.append(torch.stack(row))
        return torch.stack(rows) if rows else out


def ref_abl(model, layer, x, targets):
    """``(z_c - z_c^(k)) / z_c`` with channel ``k`` of the layer's output set to zero by a hook."""
    with torch.no_grad():
        rows = []
        for i in range(x.shape[0]):
            logits, a = _layer_output(model, layer, x[i:i + 1])
            z = logits[0, targets[i]]
            row = []
            for k in range(a.shape[1]):
                def zero(o, k=k):
                    o = o.clone()
                    o[:, k] = 0
                    return o
                zk, _ = _layer_output(model, layer, x[i:i + 1], change=zero)
                row.append((z - zk[0, targets[i]]) / z)
            rows.append(torch.stack(row))
        return torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# terminals against the references


@pytest.mark.parametrize("explicit_targets", [False, True])
def test_gradient_terminals_match_autograd(explicit_targets):
    model, x = tiny_net(), _images(4)
    targets = torch.tensor([3, 0, 1, 2]) if explicit_targets else None
    terms, info = _compute(model, x, targets=targets)
    want_t = targets if explicit_targets else model(x).argmax(1)
    a, g, logits = ref_gradients(model, model.block, x, want_t)
    assert torch.equal(info.targets, want_t)
    torch.testing.assert_close(info.logits, logits)
    torch.testing.assert_close(terms["A"], a)
    torch.testing.assert_close(terms["G"], g)
    torch.testing.assert_close(terms["grads"], g.mean(dim=(2, 3)))
    torch.testing.assert_close(terms["pgrads"], torch.relu(g).mean(dim=(2, 3)))
    torch.testing.assert_close(terms["acts"], a.mean(dim=(2, 3)))
    torch.testing.assert_close(info.z_c, logits.gather(1, want_t[:, None])[:, 0])
    torch.testing.assert_close(info.y_c, torch.softmax(logits, 1).gather(1, want_t[:, None])[:, 0])
    assert terms["G"].shape == (4, 5, 8, 8) and terms["grads"].shape == (4, 5)
    assert info.acts is terms["A"] or torch.equal(info.acts, terms["A"])


def test_gradients_at_a_layer_followed_by_an_in_place_op():
    model, x = tiny_net(), _images(2)
    terms, info = _compute(model, x, names=["G", "A"], layer="block.0")  # block.1 is ReLU(inplace=True)
    a, g, _ = ref_gradients(model, model.block[0], x, info.targets)
    assert (terms["A"] < 0).any()  # the conv output, not its ReLU
    torch.testing.assert_close(terms["A"], a)
    torch.testing.assert_close(terms["G"], g)


def test_gradient_terminals_resnet18(resnet):
    x = _images(2, 64, dtype=torch.float32)
    terms, info = _compute(resnet, x, names=["grads", "G", "A"], layer=None)
    assert info.layer == "layer4" and terms["A"].shape == (2, 512, 2, 2)
    a, g, _ = ref_gradients(resnet, resnet.layer4, x, info.targets)
    torch.testing.assert_close(terms["A"], a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms["G"], g, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["grads"], g.mean(dim=(2, 3)), rtol=1e-4, atol=1e-6)


def test_cic_matches_direct_loop():
    model, x = tiny_net(), _images(3)
    terms, info = _compute(model, x, names=["cic"], chunk_size=4)
    torch.testing.assert_close(terms["cic"], ref_cic(model, model.block, x, info.targets))
    # the masked logits kept for grad-cam style ScoreCAM are z_c(x * M_k)
    assert info.masked_logits.shape == (3, 5)


def test_cic_of_dead_channels_costs_no_forward_pass_and_stays_exact():
    model, x = tiny_net(), _images(3)
    with torch.no_grad():  # channels 1 and 3 of the target layer are dead: constant maps, all-zero masks
        conv = model.block[0]
        conv.weight[[1, 3]] = 0.0
        conv.bias[[1, 3]] = -1.0
    seen = []
    handle = model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
    try:
        terms, info = _compute(model, x, names=["cic", "mlogits"], chunk_size=4)
    finally:
        handle.remove()
    ref = ref_cic(model, model.block, x, info.targets)
    torch.testing.assert_close(terms["cic"], ref)
    assert torch.all(terms["cic"][:, [1, 3]] == 0)
    live = 3 * 5 - 3 * 2
    # the up-front check of one image, one gradient pass, one baseline pass, then only the live pairs
    assert sum(seen) == 1 + 3 + 1 + live
    torch.testing.assert_close(terms["mlogits"], info.masked_logits)


class _FlattensItsInput(nn.Module):
    """A model that calls .view() on its input, which channels-last input cannot take."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.view(x.shape[0], -1)  # raises for a channels-last batch
        return self.net(x)


def test_cic_falls_back_to_contiguous_input_for_models_that_need_it():
    model, x = _FlattensItsInput(), _images(2)
    terms, info = _compute(model, x, names=["cic"], layer="net.block", chunk_size=4)
    torch.testing.assert_close(terms["cic"], ref_cic(model, model.net.block, x, info.targets))


def test_cic_targets_change_the_scores():
    model, x = tiny_net(), _images(2)
    t = torch.tensor([1, 2])
    terms, _ = _compute(model, x, names=["cic"], targets=t)
    torch.testing.assert_close(terms["cic"], ref_cic(model, model.block, x, t))


@pytest.mark.parametrize("ablation", ["auto", "fx", "hook"])
def test_abl_matches_direct_hook_ablation(ablation):
    model, x = tiny_net(), _images(3)
    terms, info = _compute(model, x, names=["abl"], chunk_size=4, ablation=ablation)
    assert info.abl_method == ("hook" if ablation == "hook" else "fx")
    torch.testing.assert_close(terms["abl"], ref_abl(model, model.block, x, info.targets))
    # the least likely class has a negative logit: the sign of z_c matters
    low = model(x).argmin(1)
    assert (model(x).gather(1, low[:, None]) < 0).all()
    terms, info = _compute(model, x, names=["abl"], targets=low, ablation=ablation)
    torch.testing.assert_close(terms["abl"], ref_abl(model, model.block, x, low))
    torch.testing.assert_close(info.ablated_logits, info.z_c[:, None] * (1 - terms["abl"]))


def test_abl_resnet18_fx_split_and_hook_fallback_agree(resnet):
    x = _images(1, 64, dtype=torch.float32)
    fx_terms, fx_info = _compute(resnet, x, names=["abl"], layer="layer3", chunk_size=128, ablation="fx")
    hk_terms, hk_info = _compute(resnet, x, names=["abl"], layer="layer3", chunk_size=128, ablation="hook")
    assert (fx_info.abl_method, hk_info.abl_method) == ("fx", "hook")
    torch.testing.assert_close(fx_terms["abl"], hk_terms["abl"], rtol=1e-4, atol=1e-5)
    # a few channels against the definition, one forward each
    ref = ref_abl_channels(resnet, resnet.layer3, x, fx_info.targets, [0, 7, 255])
    torch.testing.assert_close(fx_terms["abl"][0, [0, 7, 255]], ref, rtol=1e-4, atol=1e-5)


def ref_abl_channels(model, layer, x, targets, channels):
    with torch.no_grad():
        logits, _ = _layer_output(model, layer, x)
        z = logits[0, targets[0]]
        out = []
        for k in channels:
            def zero(o, k=k):
                o = o.clone()
                o[:, k] = 0
                return o
            zk, _ = _layer_output(model, layer, x, change=zero)
            out.append((z - zk[0, targets[0]]) / z)
        return torch.stack(out)


def test_abl_fx_split_carries_skip_connections():
    model, x = tiny_net(SkipNet), _images(3)
    assert split_model(model, "block").carried == ("stem_2",)
    terms, info = _compute(model, x, names=["abl"], chunk_size=4, ablation="fx")
    assert info.abl_method == "fx"
    torch.testing.assert_close(terms["abl"], ref_abl(model, model.block, x, info.targets))


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_abl_does_not_rerun_the_head_when_the_tail_reads_only_the_input(runtime, tmp_path):
    """The input is all the tail carries (EfficientNet's batch size): the rows get the images themselves,
    and no forward pass up to the layer runs, on torch or on a runtime's converted tail."""
    if runtime != "torch":
        pytest.importorskip(runtime, reason=f"needs {runtime} (pip install 'sycam-dsl[{runtime}]')")
    from sycam_dsl.cam.ablation_pass import ablation_pass
    from sycam_dsl.cam.layer_split import layer_access
    from sycam_dsl.models.runtime import RuntimeSpec

    model, x = _init(BatchSizeNet()), _images(3, dtype=torch.float32)
    split = split_model(model, "block")
    assert split.carried == ("<input>",) and split.carried_of(x)[0] is x
    access = layer_access(model, "block")
    with torch.no_grad():
        acts, logits = access.forward(x)
    targets = logits.argmax(1)
    heads: list[int] = []
    model.stem[0].register_forward_hook(lambda *_: heads.append(1))  # the fx head calls the same modules
    spec = None if runtime == "torch" else RuntimeSpec(runtime, cache_dir=tmp_path)
    abl, _, method = ablation_pass(access, x, acts, logits, targets, 4, "fx", False, runtime=spec)
    assert method == "fx" and not heads
    torch.testing.assert_close(abl, ref_abl(model, model.block, x, targets), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls, reason", [(ShapeNet, "not a per-image tensor"), (DynamicNet, "cannot trace")])
def test_abl_falls_back_to_hook_with_a_log_line(cls, reason, caplog):
    model, x = tiny_net(cls), _images(2)
    with caplog.at_level(logging.WARNING):
        terms, info = _compute(model, x, names=["abl"])
    assert info.abl_method == "hook"
    assert any(reason in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(terms["abl"], ref_abl(model, model.block, x, info.targets))
    caplog.clear()  # the terminals of more images of the same model (on demand, say): no second line
    with caplog.at_level(logging.WARNING):
        _compute(model, _images(3), names=["abl"])
    assert not any("falling back" in r.getMessage() for r in caplog.records)
    with pytest.raises(LayerError, match=reason):
        _compute(model, x, names=["abl"], ablation="fx")


def test_fx_split_head_and_tail_reproduce_the_model(resnet):
    x = _images(2, 64, dtype=torch.float32)
    for layer in ("layer4", "layer2", "layer3.1.conv2"):
        split = split_model(resnet, layer)
        with torch.no_grad():
            logits, a = _layer_output(resnet, resnet.get_submodule(layer), x, change=lambda o: o.clone())
            head, carried = split.run_head(x)
            torch.testing.assert_close(head, a)
            torch.testing.assert_close(split.run_tail(head.clone(), carried), logits, rtol=1e-4, atol=1e-4)
    assert split_model(resnet, "layer4").carried == ()
    assert split_model(resnet, "layer3.1.conv2").carried == ("layer3_0_relu_1",)  # the block's identity path


@pytest.mark.parametrize("model_fn, layer, x", [
    (tiny_net, "block", _images(5)),
])
def test_terminals_same_in_one_batch_and_in_chunks(model_fn, layer, x):
    model = model_fn()
    one, info1 = _compute(model, x, chunk_size=1000, layer=layer)
    for chunk in (1, 3):
        many, info = _compute(model, x, chunk_size=chunk, layer=layer)
        assert torch.equal(info.targets, info1.targets)
        for n in ALL:
            torch.testing.assert_close(many[n], one[n], msg=f"{n} with chunk {chunk}")


def test_resnet18_terminals_same_in_chunks(resnet):
    x = _images(2, 32, dtype=torch.float32)
    one, _ = _compute(resnet, x, names=["grads", "abl", "A"], layer="layer3", chunk_size=512)
    many, _ = _compute(resnet, x, names=["grads", "abl", "A"], layer="layer3", chunk_size=7)
    for n in one:
        torch.testing.assert_close(many[n], one[n], rtol=1e-4, atol=1e-5)


def test_masked_batches_stay_within_chunk_size():
    model, x = tiny_net(), _images(3)
    sizes = []
    h = model.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    try:
        _compute(model, x, names=["cic"], chunk_size=4)
    finally:
        h.remove()
    # the up-front check (1 image), 1 gradient pass (3 images), the shared baseline (1), 15 masked rows by 4
    assert sizes == [1, 3, 1, 4, 4, 4, 3]


# ---------------------------------------------------------------------------------------------
# errors, hooks and modes


def test_nan_in_a_terminal_names_terminal_and_image():
    model, x = tiny_net(), _images(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.bias.zero_()
                m.running_mean.zero_()
    x[2] = 0  # every layer maps 0 to 0, so z_c = 0 and abl = 0 / 0
    with pytest.raises(TerminalError, match=r"terminal 'abl' has NaN or Inf values for image 2.*z_c is 0"):
        _compute(model, x, names=["grads", "abl"])
    _compute(model, x, names=["grads", "cic"])  # the other terminals are finite


def test_nan_logits_name_the_image():
    model, x = tiny_net(), _images(3)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(TerminalError, match="logits have NaN or Inf values for image 1"):
        _compute(model, x, names=["grads"])


class Bomb(nn.Module):
    """Raises on its ``at``-th call: an exception from inside a forward pass."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("boom")
        return x


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("at, names, ablation", [  # call 1 is the up-front check of one image
    (2, ["grads"], "auto"),      # during the gradient pass
    (4, ["grads", "cic"], "auto"),  # during the masked passes
    (4, ["abl"], "hook"),          # during the hook-replaced ablation passes
])
def test_hooks_removed_and_modes_restored_when_an_exception_escapes(at, names, ablation):
    model = tiny_net()
    model.fc = nn.Sequential(Bomb(at), model.fc)
    model.train()
    model.stem[1].eval()  # a mixed state, restored module by module
    before = {n: m.training for n, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="boom"):
        _compute(model, _images(2), names=names, ablation=ablation, chunk_size=2)
    assert _hooks(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == before


def test_modes_restored_after_success_and_eval_used_inside():
    model = tiny_net()
    model.train()
    x = _images(3)
    terms, info = _compute(model, x, names=["A"])
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    ref, ref_info = _compute(model, x, names=["A"])
    # BatchNorm (before the layer) ran with its running statistics
    torch.testing.assert_close(terms["A"], ref["A"])
    torch.testing.assert_close(info.logits, ref_info.logits)
    assert _hooks(model) == 0


def test_wrong_layer_path_lists_candidates(resnet):
    with pytest.raises(LayerError) as e:
        resolve_layer(resnet, "layer5")
    msg = str(e.value)
    assert "no layer 'layer5'" in msg and "layer4" in msg and "layer4.1.conv2" in msg
    with pytest.raises(LayerError, match="close names: .*layer4.1.conv1"):
        resolve_layer(resnet, "layer4.1.conv")
    with pytest.raises(LayerError, match="no layer"):
        _compute(resnet, _images(1, 32, dtype=torch.float32), names=["grads"], layer="layer4.9")


def test_layer_paths_and_defaults(resnet):
    assert resolve_layer(resnet, None) == ("layer4", resnet.layer4)
    assert resolve_layer(resnet, "layer4[-1].conv2")[0] == "layer4.1.conv2"
    assert resolve_layer(resnet, "model.layer3.0")[0] == "layer3.0"
    with torch.device("meta"):  # structure only: no weight initialization cost
        vgg16, vgg19 = torchvision.models.vgg16(), torchvision.models.vgg19()
        alexnet, densenet = torchvision.models.alexnet(), torchvision.models.densenet121()
    for vgg, want in ((vgg16, "features.29"), (vgg19, "features.35")):
        assert default_layer(vgg) == want
        assert isinstance(vgg.get_submodule(want), nn.ReLU)
        i = int(want.split(".")[1])
        assert isinstance(vgg.features[i + 1], nn.MaxPool2d) and i + 2 == len(vgg.features)
        assert vgg.features[i - 1].out_channels == 512
    assert default_layer(alexnet) == "features.11"
    assert default_layer(densenet) is None
    with pytest.raises(LayerError, match="no default target layer for DenseNet; name one with --layer"):
        resolve_layer(densenet, None)


def test_shared_module_and_non_tensor_layers_are_refused(resnet):
    x = _images(1, 32, dtype=torch.float32)
    with pytest.raises(LayerError, match="runs more than once"):
        _compute(resnet, x, names=["grads"], layer="layer4.1.relu")
    with pytest.raises(LayerError, match="not activations"):
        _compute(resnet, x, names=["grads"], layer="fc")


def test_bad_arguments():
    model, x = tiny_net(), _images(2)
    with pytest.raises(TerminalError, match="unknown terminal 'gradz'"):
        _compute(model, x, names=["gradz"])
    with pytest.raises(TerminalError, match="out of range: the model has 4 classes"):
        _compute(model, x, names=["grads"], targets=torch.tensor([0, 9]))
    with pytest.raises(TerminalError, match=r"targets must be class indices \[N\] = \[2\]"):
        _compute(model, x, names=["grads"], targets=torch.tensor([0]))
    with pytest.raises(TerminalError, match=r"images must be a tensor \[N, 3, H, W\]"):
        _compute(model, x[0], names=["grads"])
    if not torch.cuda.is_available():
        with pytest.raises(SycamError, match="CUDA is not available here; use --device cpu"):
            _compute(model, x, names=["grads"], device="cuda")
    with pytest.raises(TerminalError, match="chunk_size must be a positive integer"):
        _compute(model, x, names=["grads"], chunk_size=0)


# ---------------------------------------------------------------------------------------------
# load_model


def test_load_model_torchvision_needs_weights_and_downloads_nothing():
    with pytest.raises(ModelError, match=r"needs weights.*downloads nothing.*--weights FILE.*random:SEED"):
        load_model("resnet50")


def test_a_torchvision_segmentation_model_loads_by_name_with_no_pretrained_backbone():
    # weights_backbone=None: torchvision would otherwise fetch the ImageNet backbone (no network in CI)
    a, b = load_model("lraspp_mobilenet_v3_large", "random:0"), load_model("lraspp_mobilenet_v3_large", "random:0")
    assert type(a.module).__name__ == "LRASPP" and a.source == "torchvision"
    assert all(torch.equal(x, y) for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values()))
    with torch.no_grad():
        assert a.module(torch.randn(1, 3, 64, 64))["out"].shape == (1, 21, 64, 64)


def test_load_model_random_weights_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = load_model("resnet18", "random:0"), load_model("resnet18", "random:0"), load_model("resnet18", "random:1")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.module.conv1.weight, b.module.conv1.weight)
    assert not torch.equal(a.module.conv1.weight, c.module.conv1.weight)
    assert (a.name, a.target_layer, a.normalize, a.input_size, a.source) == ("resnet18", "layer4", IMAGENET, 224,
                                                                            "torchvision")
    assert not a.module.training


def test_load_model_from_a_state_dict_file(tmp_path, resnet):
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet.state_dict().items()}}, path)
    m = load_model("resnet18", str(path))
    for k, v in resnet.state_dict().items():
        assert torch.equal(m.module.state_dict()[k], v), k
    # a fine-tuned head: the class count comes from the file
    ten = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save(ten.state_dict(), tmp_path / "ten.pth")
    assert load_model("resnet18", str(tmp_path / "ten.pth")).module.fc.out_features == 10


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'resnet5'.*did you mean.*resnet50"):
        load_model("resnet5")
    with pytest.raises(ModelError, match="weights file '.*missing.pth' does not exist"):
        load_model("resnet18", str(tmp_path / "missing.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="holds a list, not a state dict"):
        load_model("resnet18", str(tmp_path / "list.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot read weights file"):
        load_model("resnet18", str(tmp_path / "junk.pth"))
    torch.save(tiny_net().state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ModelError, match=r"do not fit the model: \d+ missing: conv1.weight"):
        load_model("resnet18", str(tmp_path / "tiny.pth"))
    with pytest.raises(ModelError, match="cannot import 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:make")
    with pytest.raises(ModelError, match="has no 'nope'"):
        load_model(f"{__name__}:nope")
    with pytest.raises(ModelError, match="returned a int, not a torch.nn.Module"):
        load_model(f"{__name__}:not_a_module")
    with pytest.raises(ModelError, match="broken_factory' raised ValueError: bad config"):
        load_model(f"{__name__}:broken_factory")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "absent.pt"))
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot load .*bad.pt' as a TorchScript file"):
        load_model(str(tmp_path / "bad.pt"))
    with pytest.raises(ModelError, match="unknown device"):
        load_model("resnet18", "random:0", device="gpu7")


def test_load_model_factory_with_weights(tmp_path):
    ref = tiny_net()
    torch.save({k: v * 2 for k, v in ref.state_dict().items()}, tmp_path / "w.pth")
    m = load_model(f"{__name__}:tiny_net", str(tmp_path / "w.pth"))
    assert m.source == "factory" and m.target_layer is None
    # load_model runs float64 models in float32, the metrics' image type
    torch.testing.assert_close(m.module.fc.weight, (ref.fc.weight * 2).float())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_models(tmp_path):
    scripted = torch.jit.script(tiny_net(ScriptableNet))
    scripted.save(str(tmp_path / "net.pt"))
    m = load_model(str(tmp_path / "net.pt"))
    assert m.source == "torchscript" and m.target_layer == "forward_features"
    x = _images(3)
    terms, info = _compute(m, x, layer=None, names=["grads", "cic", "abl", "A"])
    # load_model ran the float64 script in float32, so the eager reference is a float32 copy
    eager, einfo = _compute(tiny_net(ScriptableNet).float(), x, names=["grads", "cic", "abl", "A"])
    assert info.abl_method == "script"
    for n in terms:
        torch.testing.assert_close(terms[n], eager[n])
    # without forward_features / forward_head there is no way into a TorchScript module
    torch.jit.script(tiny_net()).save(str(tmp_path / "plain.pt"))
    plain = load_model(str(tmp_path / "plain.pt"))
    with pytest.raises(LayerError, match="TorchScript runs no Python hooks.*forward_features"):
        _compute(plain, x, layer="block", names=["grads"])


def test_efficientnet_lite0_when_installed():
    pytest.importorskip("efficientnet_lite_pytorch")
    m = load_model("efficientnet_lite0", "random:0")
    assert (m.target_layer, m.normalize, m.source) == ("_swish@last", EFFICIENTNET_LITE, "efficientnet_lite")
    x = _images(1, 64, dtype=torch.float32)
    split = split_model(m.module, "_swish@last")  # the shared ReLU6's second call: the head's activation
    assert split.needs_input  # its forward reads the batch size from the input
    with torch.no_grad():
        acts, carried = split.run_head(x)
        torch.testing.assert_close(split.run_tail(acts, carried), m.module(x), rtol=1e-4, atol=1e-4)


def test_efficientnet_lite0_missing_package_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ModelError, match=r"pip install 'sycam-dsl\[efficientnet\]'"):
        load_model("efficientnet_lite0")


# ---------------------------------------------------------------------------------------------
# images and masks


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)


def _rgb(h, w, color):
    return np.broadcast_to(np.array(color, dtype=np.uint8), (h, w, 3))


def test_load_flat_folder_sorted_and_normalized(tmp_path):
    _png(tmp_path / "b.png", _rgb(10, 10, (255, 0, 0)))
    _png(tmp_path / "a.png", _rgb(20, 20, (0, 255, 128)))
    (tmp_path / "notes.txt").write_text("ignored")
    s = load_images(tmp_path, size=8)
    assert s.files == ["a.png", "b.png"] and s.labels is None and s.masks is None
    assert s.images.shape == (2, 3, 8, 8) and s.images.dtype == torch.float32
    want = (torch.tensor([0, 255, 128]) / 255 - torch.tensor(IMAGENET.mean)) / torch.tensor(IMAGENET.std)
    torch.testing.assert_close(s.images[0, :, 4, 4], want.float(), atol=1e-3, rtol=0)
    raw = load_images(tmp_path, size=8, normalize=None)
    torch.testing.assert_close(IMAGENET(raw.images), s.images)
    custom = load_images(tmp_path, size=8, normalize=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    torch.testing.assert_close(custom.images, raw.images * 2 - 1)


def test_load_class_folders_with_masks(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "masks"
    _png(img / "dog" / "d1.png", _rgb(16, 32, (10, 20, 30)))   # wide: shorter side 16 -> 8, crop center
    _png(img / "cat" / "c2.png", _rgb(16, 16, (0, 0, 0)))
    _png(img / "cat" / "c1.png", _rgb(16, 16, (0, 0, 0)))
    wide = np.zeros((16, 32), np.uint8)
    wide[:, 16:24] = 255  # the third quarter of the wide image
    _png(msk / "dog" / "d1.png", wide)
    left = np.zeros((16, 16), np.uint8)
    left[:, :8] = 1  # a 0/1 mask
    _png(msk / "c1.png", left)  # flat mask folder works too
    _png(msk / "cat" / "c2.png", np.full((16, 16), 200, np.uint8))
    s = load_images(img, size=8, masks=msk)
    assert s.files == ["cat/c1.png", "cat/c2.png", "dog/d1.png"] and s.classes == ["cat", "dog"]
    assert s.labels.tolist() == [0, 0, 1]
    assert s.masks.shape == (3, 8, 8) and s.masks.dtype == torch.bool
    assert s.masks[0, :, :4].all() and not s.masks[0, :, 4:].any()
    assert s.masks[1].all()
    # resized to 8x16 the mask is columns 8..11; the center crop keeps columns 4..11
    assert not s.masks[2, :, :4].any() and s.masks[2, :, 4:].all()


def test_image_errors(tmp_path):
    with pytest.raises(ImageError, match="does not exist or is not a folder"):
        load_images(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images in '.*empty'"):
        load_images(tmp_path / "empty")
    bad = tmp_path / "bad"
    _png(bad / "ok.png", _rgb(4, 4, (1, 2, 3)))
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match=r"cannot read image '.*broken\.jpg'"):
        load_images(bad)
    mixed = tmp_path / "mixed"
    _png(mixed / "x.png", _rgb(4, 4, (1, 2, 3)))
    (mixed / "cls").mkdir()
    with pytest.raises(ImageError, match="both image files .* and subfolders"):
        load_images(mixed)
    cls = tmp_path / "cls"
    _png(cls / "a" / "x.png", _rgb(4, 4, (1, 2, 3)))
    (cls / "b").mkdir()
    with pytest.raises(ImageError, match="class folder '.*b' has no images"):
        load_images(cls)


def test_mask_errors(tmp_path):
    img, msk = tmp_path / "img", tmp_path / "masks"
    _png(img / "a.png", _rgb(10, 12, (1, 2, 3)))
    with pytest.raises(ImageError, match="mask folder .* does not exist"):
        load_images(img, masks=msk)
    msk.mkdir()
    with pytest.raises(ImageError, match=r"no mask for image '.*a\.png': expected '.*masks/a\.png'"):
        load_images(img, masks=msk)
    _png(msk / "a.png", np.zeros((12, 10), np.uint8))
    with pytest.raises(ImageError, match=r"mask '.*masks/a\.png' is 10x12 but image '.*img/a\.png' is 12x10"):
        load_images(img, masks=msk)
    (msk / "a.png").write_bytes(b"garbage")
    with pytest.raises(ImageError, match=r"cannot read mask '.*masks/a\.png'"):
        load_images(img, masks=msk)


# ---------------------------------------------------------------------------------------------
# CLI and progress


def _cli(argv):
    args = build_parser().parse_args(argv)
    args.handler(args)


def test_cli_terminals_writes_a_pt_file_and_uses_the_store(tmp_path, capsys):
    for i, color in enumerate([(255, 0, 0), (0, 255, 0)]):
        _png(tmp_path / "img" / f"{i}.png", _rgb(20, 20, color))
    argv = ["terminals", "--model", f"{__name__}:tiny_net", "--layer", "block", "--images",
            str(tmp_path / "img"), "--size", "16", "--names", "grads,cic,abl", "--cache-dir",
            str(tmp_path / "cache"), "--quiet", "-o", str(tmp_path / "out" / "t.pt")]
    _cli(argv)
    first = capsys.readouterr().out
    assert "wrote" in first and "grads, cic, abl for 2 images x 5 channels at block (8x8)" in first
    assert "0 of 2 images from the store" in first
    data = torch.load(tmp_path / "out" / "t.pt", weights_only=True)
    assert set(data["terminals"]) == {"grads", "cic", "abl"} and data["terminals"]["cic"].shape == (2, 5)
    assert data["acts"].shape == (2, 5, 8, 8) and data["files"] == ["0.png", "1.png"]
    assert data["meta"]["layer"] == "block" and data["meta"]["abl_method"] == "fx"
    _cli(argv)
    assert "2 of 2 images from the store" in capsys.readouterr().out
    again = torch.load(tmp_path / "out" / "t.pt", weights_only=True)
    for n in data["terminals"]:
        assert torch.equal(again["terminals"][n], data["terminals"][n])


def test_cli_errors_are_sycam_errors(tmp_path):
    _png(tmp_path / "img" / "a.png", _rgb(8, 8, (1, 2, 3)))
    with pytest.raises(SycamError, match="needs weights"):
        _cli(["terminals", "--model", "resnet50", "--images", str(tmp_path / "img"), "-o", str(tmp_path / "o.pt")])
    with pytest.raises(SycamError, match="needs one subfolder per class"):
        _cli(["terminals", "--model", f"{__name__}:tiny_net", "--layer", "block", "--images", str(tmp_path / "img"),
              "--targets", "labels", "--no-cache", "--quiet", "-o", str(tmp_path / "o.pt")])
    with pytest.raises(SystemExit):
        _cli(["terminals", "--model", "x", "--images", "d", "--names", "grads,nope", "-o", "o.pt"])


def test_progress_without_tqdm_writes_a_stderr_line(monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    _compute(tiny_net(), _images(2), names=["grads"], progress=True)
    err = capsys.readouterr().err
    assert "terminals: gradients: 2/2" in err


def test_tail_runner_rejects_unknown_method():
    model = tiny_net()
    with pytest.raises(LayerError, match="unknown ablation method"):
        tail_runner(HookAccess(model, "block", model.block), "fast")
