"""Vision transformers from the command line (docs/cam-engine.md, "Vision transformers"): ``--reshape``
on the commands that read a layer, timm models by name (``timm:NAME``), the one-line errors of a
reshape that does not fit, and a short ``synth`` on a small ViT followed by ``sanity`` and ``export``.
Small seeded random-weight models; nothing is downloaded."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.cam.reshape import ReshapeError, parse_reshape, reshape_text
from sycam_dsl.cli.main import main
from sycam_dsl.deploy.sycam import method_heatmaps
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import terminal_types
from sycam_dsl.models import LayerError, ModelError, load_model, resolve_layer

from .test_baselines import pearson
from .test_transformers import VIT_LAYER, small_vit, vit_reshape

VIT = "tests.test_transformers:small_vit"
VIT_RESHAPE = "tests.test_transformers:vit_reshape"
#: timm models by name, small: 32 px, 2 blocks (``timm:NAME,key=value,...``), and their default layers.
TIMM = {
    "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2,num_classes=5": "blocks.1.norm1",
    "timm:deit_tiny_distilled_patch16_224,img_size=32,patch_size=8,depth=2,num_classes=5": "blocks.1.norm1",
    "timm:swin_tiny_patch4_window7_224,img_size=32,window_size=4,embed_dim=16,depths=(2, 2),num_heads=(2, 2),"
    "num_classes=5": "layers.1.blocks.1.norm1",
}


class OddTokens(nn.Module):
    """A 4 x 4 grid of tokens after 19 learned ones: 35 tokens, no square grid after at most 8 prefix tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.memory = nn.Parameter(torch.randn(1, 19, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.memory.expand(x.shape[0], -1, -1), grid], dim=1)
        return self.head(self.norm(tokens).mean(1))


def odd_tokens() -> OddTokens:
    torch.manual_seed(0)
    return OddTokens().eval()


def flat_reshape(t: torch.Tensor) -> torch.Tensor:
    """A reshape that forgets the grid: tokens ``[N, T - 1, C]``, not maps."""
    return t[:, 1:]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _fails_in_one_line(argv: list[str], capsys, *words: str) -> None:
    capsys.readouterr()                                          # what earlier commands wrote
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sycam-dsl: error: ") and "\n" not in err, err
    assert all(w in err for w in words), err


# ---- --reshape module:fn -----------------------------------------------------------------------------

def test_reshape_specs_parse_and_name_themselves():
    assert parse_reshape("auto") == "auto" and parse_reshape(" None ") == "none"
    assert parse_reshape(VIT_RESHAPE) is vit_reshape
    assert reshape_text(vit_reshape) == VIT_RESHAPE and reshape_text("none") == "none"
    for bad, words in (("tokens", "auto, none or a Python callable"), ("tests.no_such_module:fn", "cannot import"),
                       ("tests.test_transformers:no_such_fn", "no_such_fn"),
                       ("tests.test_transformers:VIT_LAYER", "not a callable")):
        with pytest.raises(ReshapeError) as e:
            parse_reshape(bad)
        assert "\n" not in str(e.value) and words in str(e.value), str(e.value)


def test_model_factories_import_as_before():                      # util.imports.import_attr, shared
    with pytest.raises(ModelError, match="cannot import 'tests.no_such_module' for model factory .*PYTHONPATH"):
        load_model("tests.no_such_module:fn")
    with pytest.raises(ModelError, match="module 'tests.test_transformers' has no 'nothing' for model factory"):
        load_model("tests.test_transformers:nothing")
    assert load_model(VIT).target_layer == VIT_LAYER


def test_the_terminals_command_reads_a_vit_through_reshape_specs(images, tmp_path, capsys):
    got = {}
    for reshape in ("auto", VIT_RESHAPE):
        out = tmp_path / f"{reshape.replace(':', '_')}.pt"
        assert main(["terminals", "--model", VIT, "--images", str(images), "--size", "32", "--names", "grads",
                     "--reshape", reshape, "--no-cache", "--quiet", "-o", str(out)]) == 0, capsys.readouterr().err
        got[reshape] = torch.load(out, weights_only=False)
    assert got["auto"]["meta"]["layer"] == VIT_LAYER
    assert got["auto"]["acts"].shape == (8, 32, 4, 4)
    torch.testing.assert_close(got["auto"]["terminals"]["grads"], got[VIT_RESHAPE]["terminals"]["grads"], rtol=0,
                               atol=0)


def test_the_eval_command_scores_a_vit_through_a_reshape_spec(images, tmp_path, capsys):
    scores = {}
    for reshape in ("auto", VIT_RESHAPE):
        out = tmp_path / "scores.json"
        assert main(["eval", "(* grads acts)", "--model", VIT, "--images", str(images), "--size", "32",
                     "--reshape", reshape, "--metric", "deletion", "--steps", "4", "--runtime", "torch", "--no-cache",
                     "--quiet", "--json", str(out)]) == 0, capsys.readouterr().err
        scores[reshape] = json.loads(out.read_text())
    assert scores["auto"]["layer"] == VIT_LAYER and scores["auto"] == scores[VIT_RESHAPE]


@pytest.mark.parametrize("reshape, words", [
    ("tests.no_such_module:fn", ["cannot import the reshape", "PYTHONPATH"]),
    ("tests.test_transformers_cli:flat_reshape", ["not channel maps [N, C, h, w]"]),
    ("none", ["not activations"]),
])
def test_a_reshape_that_does_not_fit_is_one_line(reshape, words, images, tmp_path, capsys):
    _fails_in_one_line(["terminals", "--model", VIT, "--images", str(images), "--size", "32", "--names", "grads",
                        "--reshape", reshape, "--no-cache", "--quiet", "-o", str(tmp_path / "t.pt")], capsys, *words)


def test_tokens_that_are_no_grid_are_one_line(images, tmp_path, capsys):
    _fails_in_one_line(["terminals", "--model", "tests.test_transformers_cli:odd_tokens", "--layer", "norm",
                        "--images", str(images), "--size", "32", "--names", "grads", "--no-cache", "--quiet",
                        "-o", str(tmp_path / "t.pt")], capsys, "'norm'", "[1, 35, 8]", "not a square grid", "--reshape module:fn")


def test_a_model_without_a_default_layer_gets_candidates():
    with pytest.raises(LayerError) as e:
        resolve_layer(odd_tokens(), None)
    text = str(e.value)
    assert "\n" not in text and "no default target layer for OddTokens" in text, text
    assert "norm [1, 803, 8]" in text and "embed [1, 8, 28, 28]" in text, text   # at 224 px


# ---- timm by name --------------------------------------------------------------------------------------

def test_timm_models_by_name_with_random_or_file_weights(tmp_path):
    pytest.importorskip("timm", reason="timm is not installed (pip install 'sycam-dsl[timm]')")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for spec, layer in TIMM.items():
        loaded = load_model(spec, "random:0")
        assert loaded.target_layer == layer and loaded.input_size == 32 and loaded.source == "timm", spec
        assert torch.equal(loaded.module(x), load_model(spec, "random:0").module(x)), spec    # seeded
        torch.save(loaded.module.state_dict(), tmp_path / "w.pt")
        again = load_model(spec, str(tmp_path / "w.pt"))
        torch.testing.assert_close(again.module(x), loaded.module(x), rtol=0, atol=0)
    # a fine-tuned checkpoint's classes, when the spec does not fix them
    tuned = load_model("timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2,num_classes=7", "random:0")
    torch.save(tuned.module.state_dict(), tmp_path / "w7.pt")
    assert load_model("timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2",
                      str(tmp_path / "w7.pt")).module(x).shape == (2, 7)
    with pytest.raises(ModelError, match="did you mean") as e:
        load_model("timm:vit_tiny_patch16_22", "random:0")
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="needs weights"):
        load_model("timm:vit_tiny_patch16_224")


def test_timm_by_name_without_timm_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)              # import timm raises ImportError
    with pytest.raises(ModelError) as e:
        load_model("timm:vit_tiny_patch16_224", "random:0")
    assert str(e.value) == 'timm models need the optional package timm: pip install "sycam-dsl[timm]"'


def test_the_explain_command_on_a_timm_model_from_a_weights_file(images, tmp_path, capsys):
    pytest.importorskip("timm", reason="timm is not installed (pip install 'sycam-dsl[timm]')")
    spec = next(iter(TIMM))
    torch.save(load_model(spec, "random:3").module.state_dict(), tmp_path / "vit.pt")
    out = tmp_path / "heatmap.png"
    assert main(["explain", "(* grads acts)", "--model", spec, "--weights", str(tmp_path / "vit.pt"),
                 "--image", str(images / "0.png"), "--no-cache", "--quiet", "-o", str(out)]) == 0
    assert out.is_file() and "blocks.1.norm1" in capsys.readouterr().out


# ---- synth, sanity and export on a small ViT ----------------------------------------------------------

def test_synth_sanity_and_export_on_a_small_vit(images, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["synth", "--model", VIT, "--images", str(images), "--size", "32", "--reshape", VIT_RESHAPE,
                 "--metric", "deletion", "--steps", "4", "--candidates", "8", "--levels", "4,8,all",
                 "--equivalence-images", "4", "--report-images", "0", "--runtime", "torch", "--no-cache",
                 "--quiet", "--out", str(run)]) == 0, capsys.readouterr().err
    result = json.loads((run / "result.json").read_text())
    assert result["settings"]["reshape"] == VIT_RESHAPE and result["settings"]["layer"] == VIT_LAYER
    # sanity reads the search's reshape back from result.json
    assert main(["sanity", str(run), "--images", "4", "--runtime", "torch", "--quiet", "--json",
                 str(tmp_path / "s.json")]) == 0
    check = json.loads((tmp_path / "s.json").read_text())
    assert check["layer"] == VIT_LAYER and check["randomized"] and {m["name"] for m in check["methods"]} >= {"SyCAM"}
    # the exported explainer (the result's reshape too) reproduces the engine's heatmaps of its expression
    out = tmp_path / "vit.pt"
    assert main(["export", str(run), "--model", VIT, "--size", "32", "-o", str(out)]) == 0
    node = parse_expr(result["expression"], terminal_types())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    terms, info = compute_terminals(small_vit(), VIT_LAYER, x, None, sorted(node.terminals()), progress=False)
    want = method_heatmaps(node, terms, info.acts, info.targets, (32, 32))
    got = torch.jit.load(str(out))(x, None)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert bool((pearson(got, want) >= 0.9999).all())
    # a recorded reshape that cannot be imported again (a lambda's qualname): one line, before any work
    result["settings"]["reshape"] = "tests.test_transformers_cli:test_synth.<locals>.<lambda>"
    (run / "result.json").write_text(json.dumps(result))
    _fails_in_one_line(["sanity", str(run), "--quiet"], capsys, "the search's reshape", "--reshape auto|none")
