"""The terminal store (``sycam_dsl.cam.store``): per-image entries that equal a fresh computation bit
for bit, resuming after a kill, reuse across image sets and terminal names, the size bound (LRU),
concurrent writers, unreadable files, a model whose code changed, and the ``cache`` command.

Forward passes are counted with a pre-hook on the model (hooks are not part of the model's digest):
``prepare_run``'s probe of one image is one call, a store hit's logits check another."""

from __future__ import annotations

import copy
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sycam_dsl.cam import store as store_mod
from sycam_dsl.cam.compute import compute_terminals
from sycam_dsl.cam.store import RecordKey, TerminalStore, compute_terminals_stored
from sycam_dsl.cli.main import main
from sycam_dsl.util.sizes import format_size, parse_size
from tests.cam_reference import TinyCNN

ALL = ["grads", "pgrads", "cic", "abl", "acts", "G", "A", "mlogits"]
INFO = ("acts", "logits", "targets", "z_c", "y_c", "masked_logits", "ablated_logits")
LAYER = "features.3"  # a convolution: every channel's map varies, so every (image, channel) row is a masked pass
K = 16


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyCNN().eval()


def images(n: int, seed: int = 1, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class Counter:
    """Counts the model's forward calls (``grad``: those with autograd on, the gradient pass and the
    probe) and raises KeyboardInterrupt at call ``fail_at``, as Ctrl-C would."""

    def __init__(self, model: nn.Module, fail_at: int | None = None) -> None:
        self.calls = self.grad = 0
        self.fail_at = fail_at
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        self.calls += 1
        self.grad += torch.is_grad_enabled()
        if self.calls == self.fail_at:
            raise KeyboardInterrupt

    def reset(self) -> None:
        self.calls = self.grad = 0


def stored(model, x, names, folder, **kw):
    kw.setdefault("progress", False)
    return compute_terminals_stored(model, LAYER, x, kw.pop("targets", None), names, store=TerminalStore(folder), **kw)


def assert_identical(a, b):
    (ta, ia), (tb, ib) = a, b
    assert list(ta) == list(tb)
    for n in ta:
        assert ta[n].dtype == tb[n].dtype and torch.equal(ta[n], tb[n]), n
    for f in INFO:
        va, vb = getattr(ia, f), getattr(ib, f)
        assert (va is None and vb is None) or torch.equal(va, vb), f
    assert (ia.layer, ia.abl_method) == (ib.layer, ib.abl_method)


# -- hits ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [32, 2])
def test_a_store_hit_equals_a_fresh_computation_bit_for_bit(tmp_path, chunk_size):
    model, x = tiny(), images(5)
    fresh = compute_terminals(model, LAYER, x, None, ALL, progress=False, chunk_size=chunk_size)
    count = Counter(model)
    first = stored(model, x, ALL, tmp_path, chunk_size=chunk_size)
    assert first[1].stored == 0 and count.calls > 2
    assert_identical(first, fresh)
    count.reset()
    second = stored(model, x, ALL, tmp_path, chunk_size=chunk_size)
    assert second[1].stored == 5 and count.calls == 2  # the probe and the logits check: no terminal work
    assert_identical(second, fresh)
    assert len(list((tmp_path / "terminal-store").glob("*/*.pt"))) == 3 * 5  # base, cic and abl per image


def test_targets_are_part_of_the_key(tmp_path):
    model, x = tiny(), images(3)
    predicted = stored(model, x, ["grads"], tmp_path)[1].targets
    count = Counter(model)
    other = (predicted + 1) % 5
    terms, info = stored(model, x, ["grads"], tmp_path, targets=other)
    assert info.stored == 0 and torch.equal(info.targets, other)
    assert torch.equal(terms["grads"], compute_terminals(model, LAYER, x, other, ["grads"], progress=False)[0]["grads"])
    count.reset()
    assert stored(model, x, ["grads"], tmp_path, targets=other)[1].stored == 3 and count.calls == 2


def test_every_input_of_the_values_is_in_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SYCAM_DSL_CACHE", str(tmp_path / "env"))
    model, x = tiny(), images(2)

    def hits(m=model, xs=x, names=("grads",), layer=LAYER, ablation="auto"):
        store = TerminalStore()  # the folder from the environment
        return compute_terminals_stored(m, layer, xs, None, names, progress=False, ablation=ablation,
                                        store=store)[1].stored

    assert hits() == 0 and hits() == 2
    assert list((tmp_path / "env" / "terminal-store").glob("*/*.pt"))
    assert hits(xs=x + 1e-3) == 0
    assert hits(xs=x.double(), m=tiny().double()) == 0  # the dtype: both the image bytes and the model
    assert hits(layer="features.0") == 0
    assert hits(names=("grads", "abl")) == 0 and hits(names=("grads", "abl")) == 2
    assert hits(names=("grads", "abl"), ablation="hook") == 0  # a setting that changes the values
    with torch.no_grad():
        model.fc.bias.add_(1e-6)
    assert hits() == 0 and hits() == 2


def test_model_digest_covers_every_weight():
    a, b = TinyCNN(), copy.deepcopy(TinyCNN())
    b.load_state_dict(a.state_dict())
    assert store_mod.model_digest(a) == store_mod.model_digest(b)
    with torch.no_grad():
        bias = b.features[0].bias
        bias[0] = torch.nextafter(bias[0], torch.tensor(float("inf")))  # the smallest change a float32 can take
    assert store_mod.model_digest(a) != store_mod.model_digest(b)


def test_model_digest_hashes_the_weights_again_only_after_they_change(monkeypatch):
    a = TinyCNN()
    first = store_mod.model_digest(a)
    hashed = []
    from sycam_dsl.models import digest as digest_mod  # model_digest's home

    real = digest_mod.update_digest
    monkeypatch.setattr(digest_mod, "update_digest", lambda h, t: (hashed.append(1), real(h, t)))
    assert store_mod.model_digest(a) == first and not hashed  # nothing changed: the bytes are not read
    with torch.no_grad():
        a.features[0].weight.mul_(2)  # in place: the version counter moves
    assert store_mod.model_digest(a) != first and hashed


# -- resuming, reuse, records ------------------------------------------------------------------------

def test_a_killed_run_resumes_with_only_the_missing_chunks(tmp_path):
    model, x = tiny(), images(8)
    names = ["grads", "cic"]
    cic_chunk = 1 + 4 * K // 4  # the baseline image, then 4 images x K channels, 4 rows per forward pass
    # the probe, two gradient chunks, the first cic chunk; the next forward pass is interrupted
    count = Counter(model, fail_at=1 + 2 + cic_chunk + 1)
    with pytest.raises(KeyboardInterrupt):
        stored(model, x, names, tmp_path, chunk_size=4)
    count.handle.remove()
    count = Counter(model)
    terms, info = stored(model, x, names, tmp_path, chunk_size=4)
    assert info.stored == 4  # the first chunk's images are whole
    assert count.calls == 1 + 1 + cic_chunk and count.grad == 1  # probe, logits check, the second cic chunk only
    assert_identical((terms, info), compute_terminals(model, LAYER, x, None, names, progress=False, chunk_size=4))


def test_a_run_killed_in_the_gradient_pass_keeps_its_finished_chunks(tmp_path):
    model, x = tiny(), images(8)
    count = Counter(model, fail_at=1 + 1 + 1)  # the probe, the first gradient chunk, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        stored(model, x, ["grads"], tmp_path, chunk_size=4)
    count.handle.remove()
    count = Counter(model)
    assert stored(model, x, ["grads"], tmp_path, chunk_size=4)[1].stored == 4
    assert count.calls == 1 + 1 + 1  # the probe, the logits check, the second gradient chunk


def test_a_subset_and_a_superset_reuse_the_stored_images(tmp_path):
    model, x = tiny(), images(8)
    stored(model, x, ["grads", "cic"], tmp_path, chunk_size=4)
    count = Counter(model)
    subset = stored(model, x[2:6], ["grads", "cic"], tmp_path, chunk_size=4)
    assert subset[1].stored == 4 and count.calls == 2
    count.reset()
    more = torch.cat([x[:3], images(4, seed=2), x[3:]])  # 4 new images, the others in another order
    terms, info = stored(model, more, ["grads", "cic"], tmp_path, chunk_size=4)
    assert info.stored == 8
    # the probe, the logits check, one gradient chunk and one cic chunk, for the 4 new images only
    assert count.calls == 1 + 1 + 1 + (1 + 4 * K // 4) and count.grad == 2
    fresh = compute_terminals(model, LAYER, more, None, ["grads", "cic"], progress=False)
    for n in terms:
        torch.testing.assert_close(terms[n], fresh[0][n], rtol=1e-5, atol=1e-6)  # other chunks: other rounding


def test_names_without_cic_never_run_a_masked_pass(tmp_path):
    model, x = tiny(), images(6)
    count = Counter(model)
    stored(model, x, ["grads", "pgrads"], tmp_path, chunk_size=4)
    assert count.calls == 1 + 2 == count.grad  # the probe and two gradient chunks: nothing else
    count.reset()
    stored(model, x, ["grads", "cic"], tmp_path, chunk_size=4)
    # the probe, the logits check, then the cic chunks of 4 and 2 images: the baseline and 4 rows a pass
    assert count.grad == 1 and count.calls == 1 + 1 + (1 + 4 * K // 4) + (1 + 2 * K // 4)
    count.reset()
    assert stored(model, x, ["grads", "cic"], tmp_path, chunk_size=4)[1].stored == 6 and count.calls == 2


def test_a_base_record_without_gradients_is_computed_again_with_them(tmp_path):
    model, x = tiny(), images(3)
    stored(model, x, ["cic"], tmp_path)  # no backward pass, so no gradient terminals in its base records
    count = Counter(model)
    terms, info = stored(model, x, ["grads", "cic"], tmp_path)
    assert info.stored == 0 and count.grad == 2 and count.calls == 3  # probe, logits check, gradient pass; no cic
    torch.testing.assert_close(terms["grads"], compute_terminals(model, LAYER, x, None, ["grads"],
                                                                 progress=False)[0]["grads"], rtol=0, atol=0)
    count.reset()
    assert stored(model, x, ["grads"], tmp_path)[1].stored == 3 and count.calls == 2
    assert stored(model, x, ["G"], tmp_path)[1].stored == 0  # G is kept only when asked for
    assert stored(model, x, ["G", "cic"], tmp_path)[1].stored == 3


# -- the files ---------------------------------------------------------------------------------------

def _key(i: int, kind: str = "cic") -> RecordKey:
    return RecordKey("model", "layer", f"image {i}", "predicted", kind, "")


def _record(i: int) -> dict:
    return {"cic": torch.full((256,), float(i)), "mlogits": torch.zeros(256)}


def test_the_size_bound_holds_and_evicts_the_least_recently_used(tmp_path):
    probe = TerminalStore(tmp_path / "probe")
    probe.save(_key(0), _record(0))
    size = probe.info().bytes
    store = TerminalStore(tmp_path / "s", max_bytes=int(5.5 * size))
    for i in range(40):
        if i > 0:
            assert torch.equal(store.load(_key(0))["cic"], _record(0)["cic"])  # read: now the most recent
        store.save(_key(i), _record(i))
        info = store.info()
        assert info.bytes <= store.max_bytes and info.entries <= 5
    assert store.load(_key(0)) is not None and store.load(_key(39)) is not None
    assert all(store.load(_key(i)) is None for i in range(1, 35))
    # a second process (another TerminalStore on the folder) sees the same bound
    other = TerminalStore(tmp_path / "s", max_bytes=int(2.5 * size))
    other.save(_key(40), _record(40))
    assert other.info().entries <= 2 and other.load(_key(40)) is not None


def test_concurrent_writers_leave_a_valid_store(tmp_path, caplog):
    store_dir = tmp_path / "store"
    x = images(6)
    results, errors = {}, []
    models = [tiny() for _ in range(3)]  # one each (a model's layer hooks are per run); built here, one at a time

    def compute(i: int) -> None:
        try:
            results[i] = stored(models[i], x, ["grads", "cic"], store_dir, chunk_size=2)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=compute, args=(i,)) for i in range(3)]
    with caplog.at_level(logging.WARNING):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        again = stored(tiny(), x, ["grads", "cic"], store_dir, chunk_size=2)
    assert again[1].stored == 6 and not caplog.records
    for n in again[0]:
        torch.testing.assert_close(again[0][n], results[0][0][n], rtol=0, atol=0)

    # one entry written over and over while others read it: every read is whole
    store, key = TerminalStore(store_dir), _key(7)
    bad = []

    def write() -> None:
        for _ in range(40):
            TerminalStore(store_dir).save(key, _record(7))

    def read() -> None:
        for _ in range(80):
            try:
                got = TerminalStore(store_dir).load(key)
                assert got is None or torch.equal(got["cic"], _record(7)["cic"])
            except Exception as e:
                bad.append(e)

    workers = [threading.Thread(target=f) for f in (write, write, read, read)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not bad and torch.equal(store.load(key)["cic"], _record(7)["cic"])
    assert not list((store_dir / "terminal-store").glob("*/*.tmp"))


def test_unreadable_and_foreign_files_are_computed_again_with_one_warning(tmp_path, caplog):
    model, x = tiny(), images(3)
    want = stored(model, x, ["grads"], tmp_path)
    files = sorted((tmp_path / "terminal-store").glob("*/*.pt"))
    files[0].write_bytes(b"not a torch file")
    shutil.copyfile(files[2], files[1])  # another image's entry under this key
    with caplog.at_level(logging.WARNING):
        got = stored(model, x, ["grads"], tmp_path)
    assert got[1].stored == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("ignoring 2 unreadable terminal store files")
    assert_identical((got[0], want[1]), want)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert stored(model, x, ["grads"], tmp_path)[1].stored == 3  # rewritten
    assert not caplog.records


def test_a_folder_that_cannot_be_written_warns_once(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    model, x = tiny(), images(4)
    with caplog.at_level(logging.WARNING):
        terms, info = stored(model, x, ["grads"], tmp_path / "file" / "below", chunk_size=2)
    assert info.stored == 0 and terms.n == 4
    assert [r.getMessage().startswith("could not write the terminal store") for r in caplog.records] == [True]


def test_progress_bars_name_the_chunk(monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    compute_terminals(tiny(), LAYER, images(3), None, ["grads"], chunk_size=2)
    err = capsys.readouterr().err
    assert "terminals: gradients (chunk 1 of 2): 2/2" in err and "terminals: gradients (chunk 2 of 2): 1/1" in err


def test_sizes():
    assert parse_size("2GB") == 2 * 2**30 and parse_size("500mb") == 500 * 2**20 and parse_size("1.5g") == 3 * 2**29
    assert parse_size("800") == 800 * 2**20 and parse_size("4096 B") == 4096
    for bad in ("", "0", "-1GB", "2 GiB", "lots", "0.1B"):
        with pytest.raises(ValueError, match="size such as 500MB"):
            parse_size(bad)
    assert format_size(512) == "512 B" and format_size(3 * 2**29) == "1.5 GB"


# -- the command line --------------------------------------------------------------------------------

def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((20, 20, 3)) * 255).astype(np.uint8)).save(path)


MODEL = ["--model", "tests.cam_reference:TinyCNN", "--weights", "random:0", "--layer", "features.4", "--size", "32",
         "--quiet"]


def test_the_commands_say_how_many_images_came_from_the_store(tmp_path, capsys):
    for i in range(12):
        _png(tmp_path / "twelve" / f"{i:02d}.png", i)
        if i < 6:
            _png(tmp_path / "six" / f"{i:02d}.png", i)
    primed = tmp_path / "primed"
    # G too: GradCAM++, a baseline of eval and synth, reads it, and it is kept only when asked for
    assert main(["terminals", *MODEL, "--images", str(tmp_path / "six"), "--cache-dir", str(primed),
                 "--names", "grads,pgrads,cic,abl,G", "-o", str(tmp_path / "t6.pt")]) == 0
    assert "0 of 6 images from the store" in capsys.readouterr().out

    def run(command: list[str]) -> str:
        folder = tmp_path / command[0]
        shutil.copytree(primed, folder)
        assert main([*command, *MODEL, "--images", str(tmp_path / "twelve"), "--cache-dir", str(folder)]) == 0
        captured = capsys.readouterr()
        return captured.out + captured.err

    assert "6 of 12 images from the store" in run(["terminals", "--names", "grads,cic", "-o", str(tmp_path / "t12.pt")])
    assert torch.load(tmp_path / "t12.pt", weights_only=True)["meta"]["images_from_store"] == 6
    assert "terminals: 6 of 12 images from the store" in run(["eval", "--metric", "average_drop"])
    out = run(["synth", "--metric", "deletion", "--steps", "3", "--levels", "4,8,all", "--equivalence-images", "4",
               "--candidates", "3", "--report-images", "0", "-o", str(tmp_path / "run")])
    assert "6 of 12 images from the store" in out
    import json
    assert json.loads((tmp_path / "run" / "result.json").read_text())["settings"]["images_from_store"] == 6
    # --no-cache: no store, no line
    assert main(["terminals", *MODEL, "--images", str(tmp_path / "twelve"), "--no-cache", "--cache-dir",
                 str(tmp_path / "unused"), "-o", str(tmp_path / "t.pt")]) == 0
    assert "from the store" not in capsys.readouterr().out and not (tmp_path / "unused").exists()


def test_cache_info_and_clear(tmp_path, capsys):
    folder = tmp_path / "c"
    assert main(["cache", "info", "--cache-dir", str(folder)]) == 0
    assert capsys.readouterr().out == f"terminal store {folder / 'terminal-store'}: 0 entries, 0 B of 2.0 GB\n"
    stored(tiny(), images(3), ["grads", "cic"], folder)
    legacy = folder / f"terminals-{'a' * 40}.pt"  # a file of the whole-set cache before the store
    torch.save({"terminals": {}}, legacy)
    (folder / "notes.txt").write_text("not ours")
    assert main(["cache", "info", "--cache-dir", str(folder), "--cache-size", "1MB"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and ": 7 entries, " in line and line.endswith(" of 1.0 MB\n")
    assert main(["cache", "clear", "--cache-dir", str(folder)]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith("removed 7 entries (")
    assert not legacy.exists() and (folder / "notes.txt").exists()
    assert main(["cache", "info", "--cache-dir", str(folder)]) == 0
    assert ": 0 entries, 0 B of " in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(folder)]) == 0  # nothing to clear is no error
    assert capsys.readouterr().out.startswith("removed 0 entries")


def test_cache_command_errors_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sycam-dsl: error: the cache folder") and "is a file" in err
    monkeypatch.setenv("SYCAM_DSL_CACHE_SIZE", "huge")
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("sycam-dsl: error: SYCAM_DSL_CACHE_SIZE: expected a size")
    monkeypatch.setenv("SYCAM_DSL_CACHE_SIZE", "300MB")
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith(" of 300.0 MB\n")
    for argv in (["cache", "info", "--cache-size", "0"], ["cache", "purge"], ["cache"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1
