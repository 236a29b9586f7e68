"""Vision transformers through the reshape of token and channels-last activations (``cam.reshape``;
docs/cam-engine.md, "Vision transformers"): every terminal, agreement with pytorch-grad-cam's
``reshape_transform``, ``abl`` against a brute-force reference, default layers and the ``SyCAM`` API.
Small seeded random-weight models built here; nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models.swin_transformer import SwinTransformer

from sycam_dsl import SyCAM
from sycam_dsl.baselines import baseline
from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.cam.reshape import MAX_PREFIX, ReshapeError, check_reshape, token_map
from sycam_dsl.cam.store import TerminalStore, compute_terminals_stored
from sycam_dsl.deploy.sycam import method_heatmaps
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import terminal_types
from sycam_dsl.models.layers import default_layer, resolve_layer
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.synthesis import Budget, SearchOptions

from .cam_reference import _capture
from .test_baselines import gradcam_heatmaps, pearson

ALL = ["grads", "pgrads", "G", "A", "acts", "cic", "mlogits", "abl"]
MIN_PEARSON = 0.999
VIT_LAYER = "encoder.layers.encoder_layer_1.ln_1"
SWIN_LAYER = "features.3.1.norm1"


def small_vit(seed: int = 0) -> VisionTransformer:
    """torchvision's ViT at 32 px: a class token and a 4 x 4 grid of 32-channel tokens. The head is
    drawn at random (torchvision starts it at zero, which makes every logit 0)."""
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    nn.init.normal_(model.class_token, std=0.5)
    return model.eval()


def small_swin(seed: int = 0) -> SwinTransformer:
    """torchvision's Swin at 32 px: the last stage is a channels-last 4 x 4 grid of 32 channels."""
    torch.manual_seed(seed)
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=5).eval()


def vit_reshape(t: torch.Tensor) -> torch.Tensor:
    """grad-cam's ``reshape_transform`` for the small ViT (its tutorial's, at a 4 x 4 grid)."""
    return t[:, 1:, :].reshape(t.size(0), 4, 4, t.size(2)).transpose(2, 3).transpose(1, 2)


def swin_reshape(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def vit():
    model = small_vit()
    torch.manual_seed(1)
    return model, torch.randn(3, 3, 32, 32)


@pytest.fixture(scope="module")
def swin():
    model = small_swin()
    torch.manual_seed(1)
    return model, torch.randn(2, 3, 32, 32)


def _one_line(e: pytest.ExceptionInfo, *words: str) -> None:
    text = str(e.value)
    assert "\n" not in text and all(w in text for w in words), text


# ---- the reshape ----------------------------------------------------------------------------------------

def test_tokens_with_a_class_token_become_channel_maps():
    torch.manual_seed(0)
    out = torch.randn(2, 17, 6)
    tokens = token_map("auto", "blk", nn.LayerNorm(6), out)
    assert tokens is not None and tokens.shape == (6, 4, 4) and tokens.what == "tokens-1"
    maps = tokens.maps(out)
    torch.testing.assert_close(maps, out[:, 1:].reshape(2, 4, 4, 6).permute(0, 3, 1, 2), rtol=0, atol=0)
    assert torch.equal(tokens.layout(maps, out), out)
    ablated = maps.clone()
    ablated[:, 2] = 0
    back = tokens.layout(ablated, out)
    assert torch.equal(back[:, 0], out[:, 0])                      # the class token is kept
    assert bool((back[:, 1:, 2] == 0).all()) and torch.equal(back[:, 1:, 3], out[:, 1:, 3])
    # several prefix tokens (a distillation token, registers) before the grid
    assert token_map("auto", "blk", nn.Identity(), torch.randn(1, 16 + 5, 3)).what == "tokens-5"


def test_channels_last_and_conv_layouts():
    torch.manual_seed(0)
    out = torch.randn(2, 4, 3, 6)                                  # [N, h, w, C] from a LayerNorm(C)
    tokens = token_map("auto", "norm", nn.LayerNorm(6), out)
    assert tokens is not None and tokens.what == "channels-last"
    assert torch.equal(tokens.maps(out), out.permute(0, 3, 1, 2))
    assert token_map("auto", "norm", nn.Linear(3, 6), out) is not None
    # channels-first outputs stay as they are: a convolution, a LayerNorm2d-style norm over dim 1
    assert token_map("auto", "conv", nn.Conv2d(3, 6, 1), torch.randn(2, 6, 4, 4)) is None
    assert token_map("auto", "ln2d", nn.LayerNorm(6), torch.randn(2, 6, 4, 6)) is None
    assert token_map("none", "blk", nn.LayerNorm(6), torch.randn(2, 17, 6)) is None


def test_a_token_count_that_is_no_grid_is_one_line():
    bad = 7 * 7 + MAX_PREFIX + 1
    with pytest.raises(ReshapeError) as e:
        token_map("auto", "blocks.1.norm1", nn.LayerNorm(6), torch.randn(2, bad, 6))
    _one_line(e, "'blocks.1.norm1'", f"[2, {bad}, 6]", "reshape=")


def test_reshape_callables_must_only_move_elements():
    torch.manual_seed(0)
    out = torch.randn(2, 17, 6)
    custom = token_map(lambda t: t[:, 1:].reshape(t.size(0), 4, 4, t.size(2)).permute(0, 3, 1, 2), "b",
                       nn.Identity(), out)
    auto = token_map("auto", "b", nn.Identity(), out)
    assert custom is not None and auto is not None and torch.equal(custom.index, auto.index)
    with pytest.raises(ReshapeError) as e:
        token_map(lambda t: 2 * t[:, 1:].reshape(t.size(0), 4, 4, 6).permute(0, 3, 1, 2), "b", nn.Identity(), out)
    _one_line(e, "'b'", "only select and move")
    with pytest.raises(ReshapeError) as e:
        token_map(lambda t: t[:, 1:], "b", nn.Identity(), out)
    _one_line(e, "[N, C, h, w]")
    with pytest.raises(ReshapeError) as e:
        check_reshape("tokens")
    _one_line(e, "'auto', 'none' or a callable")


# ---- every terminal on reshaped activations ---------------------------------------------------------------

def _reference(model: nn.Module, layer: str, x: torch.Tensor, reshape, targets: torch.Tensor):
    """Reshaped activations and gradients of the target logits, with grad-cam's method: a hook keeps
    the layer's output, autograd gives its gradient, both reshaped afterwards."""
    logits, out = _capture(model, resolve_layer(model, layer)[1], x)
    (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), out)
    return reshape(out.detach()), reshape(g), logits.detach()


@pytest.mark.parametrize("which", ["vit", "swin"])
def test_every_terminal_runs_on_reshaped_activations(which, vit, swin):
    model, x = vit if which == "vit" else swin
    layer, reshape = (VIT_LAYER, vit_reshape) if which == "vit" else (SWIN_LAYER, swin_reshape)
    terms, info = compute_terminals(model, layer, x, None, ALL, progress=False)
    n = x.shape[0]
    assert tuple(info.acts.shape) == (n, 32, 4, 4) and info.abl_method == "fx"
    for name in ALL:
        want = (n, 32, 4, 4) if name in ("G", "A") else (n, 32)
        assert tuple(terms[name].shape) == want, name
        assert bool(torch.isfinite(terms[name]).all()), name
    acts, grads, logits = _reference(model, layer, x, reshape, info.targets)
    torch.testing.assert_close(info.acts, acts, rtol=0, atol=0)
    torch.testing.assert_close(info.logits, logits)
    torch.testing.assert_close(terms["G"], grads)
    torch.testing.assert_close(terms["grads"], grads.mean(dim=(2, 3)))
    torch.testing.assert_close(terms["pgrads"], grads.relu().mean(dim=(2, 3)))
    torch.testing.assert_close(terms["acts"], acts.mean(dim=(2, 3)))
    # the hook fallback reruns the whole model: the same abl as the fx tail
    hooked, info_h = compute_terminals(model, layer, x, None, ["abl"], progress=False, ablation="hook")
    assert info_h.abl_method == "hook"
    torch.testing.assert_close(hooked["abl"], terms["abl"], rtol=1e-4, atol=1e-5)


def test_cic_uses_masks_from_the_reshaped_maps(vit):
    model, x = vit
    terms, info = compute_terminals(model, VIT_LAYER, x[:1], None, ["cic", "mlogits"], progress=False)
    c = int(info.targets[0])
    up = F.interpolate(info.acts[0][:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.flatten(1).amin(1)[:, None, None], up.flatten(1).amax(1)[:, None, None]
    masks = torch.where(hi > lo, (up - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(up))
    with torch.no_grad():
        z = model(x[:1] * masks[:, None])
        base = torch.softmax(model(torch.zeros_like(x[:1])), 1)[0, c]
    torch.testing.assert_close(terms["mlogits"][0], z[:, c], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms["cic"][0], torch.softmax(z, 1)[:, c] - base, rtol=1e-4, atol=1e-5)


def test_abl_equals_a_brute_force_reference(vit):
    """Channel k of the grid zeroed over all tokens (the class token kept), the rest of the model run
    by a forward hook: ``(z_c - z_c^(k)) / z_c`` for one image."""
    model, x = vit
    terms, info = compute_terminals(model, VIT_LAYER, x[:1], None, ["abl"], progress=False)
    c = int(info.targets[0])
    module = resolve_layer(model, VIT_LAYER)[1]
    want = []
    with torch.no_grad():
        z_c = model(x[:1])[0, c]
        for k in range(32):
            def zero(m, i, out, k=k):
                out = out.clone()
                out[:, 1:, k] = 0
                return out
            handle = module.register_forward_hook(zero)
            try:
                want.append((z_c - model(x[:1])[0, c]) / z_c)
            finally:
                handle.remove()
    torch.testing.assert_close(terms["abl"][0], torch.stack(want), rtol=1e-4, atol=1e-5)


# ---- agreement with pytorch-grad-cam -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GradCAM", "GradCAM++", "LayerCAM", "HiResCAM"])
def test_vit_heatmaps_agree_with_gradcam(method, vit):
    model, x = vit
    terms, info = compute_terminals(model, VIT_LAYER, x, None, ["grads", "pgrads", "G", "A"], progress=False)
    ours = baseline(method).heatmaps(terms, info.acts, (32, 32))
    ref = gradcam_heatmaps(method, model, resolve_layer(model, VIT_LAYER)[1], x, info.targets,
                           reshape_transform=vit_reshape)
    r = pearson(ours, ref)
    assert bool((r >= MIN_PEARSON).all()), f"{method}: per-image Pearson {r.tolist()}"


@pytest.mark.parametrize("method", ["GradCAM", "HiResCAM"])
def test_swin_heatmaps_agree_with_gradcam(method, swin):
    model, x = swin
    terms, info = compute_terminals(model, SWIN_LAYER, x, None, ["grads", "G", "A"], progress=False)
    ours = baseline(method).heatmaps(terms, info.acts, (32, 32))
    ref = gradcam_heatmaps(method, model, resolve_layer(model, SWIN_LAYER)[1], x, info.targets,
                           reshape_transform=swin_reshape)
    r = pearson(ours, ref)
    assert bool((r >= MIN_PEARSON).all()), f"{method}: per-image Pearson {r.tolist()}"


# ---- the API, the store and the default layers ------------------------------------------------------------

def test_sycam_on_a_vit_equals_the_engine(vit):
    model, x = vit
    expr = baseline("GradCAM++").expression
    node = parse_expr(expr, terminal_types())
    terms, info = compute_terminals(model, VIT_LAYER, x, None, sorted(node.terminals()), progress=False)
    want = method_heatmaps(node, terms, info.acts, info.targets, (32, 32))
    for reshape in ("auto", vit_reshape):
        with SyCAM(model, model.encoder.layers[-1].ln_1, expr, runtime="torch", reshape_transform=reshape) as cam:
            torch.testing.assert_close(cam(x), want, rtol=0, atol=0)
    with SyCAM(model, None, expr, runtime="torch") as cam:       # the default layer
        torch.testing.assert_close(cam(x), want, rtol=0, atol=0)
    with SyCAM(model, VIT_LAYER, expr, runtime="torch", reshape_transform="none") as cam:
        with pytest.raises(Exception, match="not activations"):
            cam(x)


def test_the_store_keys_the_reshape_of_token_layers_only(vit, tmp_path):
    model, x = vit
    store = TerminalStore(tmp_path)
    first, _ = compute_terminals_stored(model, VIT_LAYER, x, None, ["grads", "A"], progress=False, store=store)
    again, info = compute_terminals_stored(model, VIT_LAYER, x, None, ["grads", "A"], progress=False, store=store)
    assert info.stored == x.shape[0] and torch.equal(first["A"], again["A"])
    keys = [torch.load(p, weights_only=False)["key"]["settings"] for p in tmp_path.rglob("*.pt")]
    assert keys and all(k.startswith("reshape=tokens-1/17x32/") for k in keys), keys


def test_default_layers_of_torchvision_transformers():
    assert default_layer(small_vit()) == VIT_LAYER
    assert default_layer(small_swin()) == SWIN_LAYER
    for model in (small_vit(), small_swin()):
        assert isinstance(resolve_layer(model, None)[1], nn.LayerNorm)


def _timm_models():
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'sycam-dsl[timm]')")
    torch.manual_seed(0)
    small = {"img_size": 32, "num_classes": 5}
    return {
        "vit": timm.create_model("vit_tiny_patch16_224", pretrained=False, patch_size=8, depth=2, **small),
        "deit": timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, patch_size=8, depth=2,
                                  **small),
        "swin": timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, window_size=4, embed_dim=16,
                                  depths=(2, 2), num_heads=(2, 2), **small),
    }


def test_timm_transformers_default_layers_and_terminals():
    models = _timm_models()
    want = {"vit": "blocks.1.norm1", "deit": "blocks.1.norm1", "swin": "layers.1.blocks.1.norm1"}
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    for name, model in models.items():
        model.eval()
        assert default_layer(model) == want[name], name
        terms, info = compute_terminals(model, None, x, None, ALL, progress=False)
        assert info.layer == want[name] and info.acts.dim() == 4 and info.acts.shape[2:] == (4, 4), name
        assert all(bool(torch.isfinite(terms[n]).all()) for n in ALL), name
        # timm's forward(x, attn_mask=None, ...) splits at the layer too (its other parameters at their
        # defaults), and the split's abl equals the hook fallback's
        assert info.abl_method == "fx", name
        hooked, _ = compute_terminals(model, None, x, None, ["abl"], progress=False, ablation="hook")
        torch.testing.assert_close(terms["abl"], hooked["abl"], rtol=1e-4, atol=1e-5)


def test_synthesize_on_a_vit_completes(tmp_path):
    """A small search on the ViT through the Python API: the baselines, the search and the report
    all run on the reshaped activations (the reshape as grad-cam's callable, through ``DataOptions``)."""
    torch.manual_seed(2)
    x = torch.randn(8, 3, 32, 32)
    result = synthesize(small_vit(), None, x, metric="deletion", metric_options={"steps": 4},
                        budget=Budget(candidates=8),
                        data=DataOptions(use_cache=False, runtime="torch", reshape=vit_reshape),
                        search=SearchOptions(level_sizes=(4, 8, None), equivalence_size=4),
                        output=OutputOptions(report_metrics=["insertion"], progress=False, report_images=0),
                        out_dir=tmp_path / "run")
    assert result.expression is not None
    assert json.loads((tmp_path / "run" / "result.json").read_text())["settings"]["layer"] == VIT_LAYER


@pytest.mark.parametrize("method", ["GradCAM", "HiResCAM"])
def test_the_gradcam_adapter_takes_gradcams_reshape_transform(method, vit):
    pytest.importorskip("pytorch_grad_cam", reason="grad-cam is not installed (pip install 'sycam-dsl[gradcam]')")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from sycam_dsl.integrations.gradcam import SyCAMGradCAM

    model, x = vit
    layer = resolve_layer(model, VIT_LAYER)[1]
    targets = model(x).argmax(1)
    ref = gradcam_heatmaps(method, model, layer, x, targets, reshape_transform=vit_reshape)
    for reshape in (vit_reshape, None):                          # None: the engine's auto reshape
        with SyCAMGradCAM(model, [layer], baseline(method).expression, reshape_transform=reshape) as cam:
            got = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(c)) for c in targets]))
        r = pearson(got, ref)
        assert bool((r >= MIN_PEARSON).all()), f"{method}: per-image Pearson {r.tolist()}"


@pytest.mark.parametrize("expr", ["(* grads acts)", "cic", "abl"])
def test_the_explainer_file_gives_the_engines_heatmaps_on_transformers(expr, vit, swin, tmp_path):
    from sycam_dsl.deploy.explainer import save_explainer

    node = parse_expr(expr, terminal_types())
    for name, (model, x), layer in (("vit", vit, VIT_LAYER), ("swin", swin, SWIN_LAYER)):
        terms, info = compute_terminals(model, layer, x, None, sorted(node.terminals()), progress=False)
        want = method_heatmaps(node, terms, info.acts, info.targets, (32, 32))
        save_explainer(model, layer, node, tmp_path / f"{name}.pt", x)
        got = torch.jit.load(str(tmp_path / f"{name}.pt"))(x, None)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("which", ["vit", "swin"])
def test_cic_and_abl_on_onnx_runtime_equal_torchs(which, vit, swin, tmp_path):
    """The transformers convert through the dynamo exporter: the whole model for ``cic``, the layers
    after the target layer for ``abl`` (docs/runtimes.md)."""
    pytest.importorskip("onnxruntime")
    from sycam_dsl.models.onnx_export import dynamo_available
    from sycam_dsl.models.runtime import RuntimeSpec

    if not dynamo_available():
        pytest.skip("the dynamo exporter needs onnxscript (pip install onnxscript)")
    model, x = vit if which == "vit" else swin
    layer = VIT_LAYER if which == "vit" else SWIN_LAYER
    want, _ = compute_terminals(model, layer, x, None, ["cic", "abl"], progress=False, runtime=RuntimeSpec("torch"))
    got, info = compute_terminals(model, layer, x, None, ["cic", "abl"], progress=False,
                                  runtime=RuntimeSpec("onnxruntime", cache_dir=tmp_path))
    assert info.abl_method == "fx" and len(list((tmp_path / "runtime").glob("*.onnx"))) == 2  # model and tail
    for name in ("cic", "abl"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
