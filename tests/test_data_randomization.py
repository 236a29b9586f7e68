"""The data-randomization test: training on permuted labels, comparing two models' heatmaps, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from sycam_dsl.baselines import baseline
from sycam_dsl.bundled import bundled_images, load_bundled_model
from sycam_dsl.bundled import train as train_mod
from sycam_dsl.bundled.shapes import render
from sycam_dsl.bundled.train import TRAIN_SEED, accuracy, permuted_labels, train
from sycam_dsl.cam.datarand import compare_models
from sycam_dsl.cli.main import main as cli_main
from sycam_dsl.models.small_cnn import CLASSES, SmallCNN

METHODS = ["SyCAM", "GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM"]


@pytest.fixture
def torch_state():
    """Give back the process-wide torch state that training and the CLI set."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_permuted_labels_are_a_seeded_permutation():
    labels = torch.from_numpy(render(600, TRAIN_SEED, 64)[2])
    a, b = permuted_labels(labels, 0), permuted_labels(labels, 0)
    assert torch.equal(a, b)  # deterministic for a seed
    assert torch.equal(a.sort().values, labels.sort().values)  # the same multiset
    assert float((a != labels).float().mean()) > 0.5  # most samples get another label
    assert not torch.equal(permuted_labels(labels, 1), a)
    assert permuted_labels(labels, None) is labels


def test_training_uses_the_permuted_labels(monkeypatch):
    seen: list[torch.Tensor] = []
    cross_entropy = train_mod.F.cross_entropy

    class Spy:
        def __getattr__(self, name):
            return getattr(train_mod.F, name)

    spy = Spy()
    spy.cross_entropy = lambda logits, y: seen.append(y.clone()) or cross_entropy(logits, y)
    monkeypatch.setattr(train_mod, "F", spy)
    train(epochs=1, train_size=64, permute_labels=3, log=False)
    labels = torch.from_numpy(render(64, TRAIN_SEED, 64)[2])
    order = torch.randperm(64, generator=torch.Generator().manual_seed(TRAIN_SEED))  # the first draw of train's
    assert torch.equal(torch.cat(seen), permuted_labels(labels, 3)[order])
    assert not torch.equal(torch.cat(seen), labels[order])


@pytest.fixture(scope="module")
def randomized_file(tmp_path_factory):
    """A SmallCNN trained briefly on labels permuted with seed 0 (about 8 s on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = train(epochs=6, train_size=768, permute_labels=0, log=False)
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("rand") / "rand.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_model_trained_on_permuted_labels_is_near_chance(randomized_file):
    _, model = randomized_file
    images, _, labels = render(400, 2000, 64)
    acc = accuracy(model, train_mod._to_input(images), torch.from_numpy(labels))
    assert abs(acc - 1 / len(CLASSES)) < 0.1, acc


def test_a_model_compared_with_itself_gives_one():
    model, images = load_bundled_model(), bundled_images(8).images
    methods = {n: baseline(n).node for n in ("GradCAM", "GradCAM++")}
    sims, targets, layer = compare_models(model, model, None, images, methods)
    assert layer == "features.14" and targets.shape == (8,)
    for sim in sims.values():
        assert sim.mean_spearman == pytest.approx(1, abs=1e-9) and sim.mean_ssim == pytest.approx(1, abs=1e-9)


def test_compare_models_detects_another_model(randomized_file):
    _, other = randomized_file
    sims, _, _ = compare_models(load_bundled_model(), other, None, bundled_images(8).images,
                                {"GradCAM": baseline("GradCAM").node})
    assert sims["GradCAM"].mean_ssim < 0.9


def _synth(folder) -> None:
    assert cli_main(["synth", "--bundled-images", "16", "--candidates", "10", "-o", str(folder), "--quiet"]) == 0


def test_cli_data_randomized_end_to_end(tmp_path, capsys, randomized_file, torch_state):
    path, _ = randomized_file
    _synth(tmp_path / "run")
    out = tmp_path / "s.json"
    capsys.readouterr()
    assert cli_main(["sanity", str(tmp_path / "run"), "--quiet", "--data-randomized", str(path),
                     "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("data randomization:"))
    assert lines[at + 1].split()[:3] == ["method", "Spearman", "SSIM"]
    rows = [line.split() for line in lines[at + 2:at + 2 + len(METHODS)]]
    assert [r[0] for r in rows] == METHODS
    data = json.loads(out.read_text())["data_randomization"]
    assert [m["name"] for m in data["methods"]] == METHODS and data["randomized_model"] == str(path)
    assert 0 <= data["agreement"] <= 1 and len(data["targets"]) == data["images"] > 0
    for m in data["methods"]:
        assert m["mean_spearman"] is None or -1 <= m["mean_spearman"] <= 1
        assert -1 <= m["mean_ssim"] <= 1 and len(m["ssim"]) == data["images"]
    # bad files: missing, and a state dict of another shape
    wrong = tmp_path / "wrong.pt"
    torch.save(SmallCNN(num_classes=3).state_dict(), wrong)
    for bad in (tmp_path / "missing.pt", wrong):
        capsys.readouterr()
        assert cli_main(["sanity", str(tmp_path / "run"), "--quiet", "--data-randomized", str(bad)]) == 2
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and str(bad) in captured.err and captured.out == ""


def test_train_cli_permute_labels_needs_out(capsys, torch_state):
    assert cli_main(["train-bundled", "--permute-labels", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--permute-labels needs --out" in err


def test_train_cli_permute_labels_reports_chance(tmp_path, capsys, torch_state):
    out = tmp_path / "r.pt"
    assert cli_main(["train-bundled", "--permute-labels", "0", "-o", str(out), "--epochs", "1",
                     "--train-size", "64"]) == 0
    assert "labels permuted with seed 0, chance is 0.2500" in capsys.readouterr().out
    assert load_bundled_model(weights=out).details["weights"] == str(out)
