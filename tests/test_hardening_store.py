"""Hardening II (issue 23): the terminal store deletes only its own files and never follows a link
(S1), says what it checks on reuse (S7); float and 32-bit integer TIFFs get their scale from their
values (S3, S4); ``sanity`` checks the images of its result (S5); the status line says when values
come from the store.

CLI cases run ``sycam-dsl`` in a subprocess, as in ``test_bad_inputs.py``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sycam_dsl.cam.images import load_images
from sycam_dsl.cam.store import TerminalStore, compute_terminals_stored
from tests.cam_reference import TinyCNN

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "tests.cam_reference:TinyCNN", "--weights", "random:0", "--layer", "features.4", "--size", "32"]


def _cli(*args: str, cwd: Path | None = None) -> tuple[int, list[str], str]:
    """``sycam-dsl ARGS`` in a subprocess: (exit code, stderr lines, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "sycam_dsl.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=600, env=env)
    return proc.returncode, proc.stderr.strip().splitlines(), proc.stdout


def _photos(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


# -- S1: the store deletes only its own files, never through a link ---------------------------------

def _fill(cache: Path, n: int = 3) -> list[Path]:
    """Store entries of ``n`` images in ``cache``; returns their files."""
    torch.manual_seed(0)
    x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    compute_terminals_stored(TinyCNN().eval(), "features.3", x, None, ["grads"], progress=False,
                             store=TerminalStore(cache))
    own = sorted((cache / "terminal-store").glob("*/*.pt"))
    assert len(own) == n
    return own


def _hostile(tmp_path: Path, cache: Path) -> dict[str, Path]:
    """Links (to a folder of files, to a file) and foreign files inside the store; returns every
    file that must survive."""
    keep = tmp_path / "keep"
    keep.mkdir()
    files = {f"keep/{name}": keep / name for name in ("p.pt", f"{'ab' * 20}.pt", "q.pt")}
    for p in files.values():
        torch.save({"precious": torch.ones(2000)}, p)  # a torch file, as the store's own are
    store = cache / "terminal-store"
    store.mkdir(parents=True, exist_ok=True)
    (store / "ln").symlink_to(keep)  # the reproduction
    (store / "cd").symlink_to(keep)  # a link with a shard's name
    (store / "ab").mkdir(exist_ok=True)
    (store / "ab" / f"{'ab' * 20}.pt").symlink_to(files[f"keep/{'ab' * 20}.pt"])  # a link with an entry's name
    foreign = {"important": store / "ab" / "important.pt",  # not an entry's name
               "own-name": store / "ab" / f"{'ab' * 19}ac.pt",  # an entry's name, not its format
               "own-tmp-name": store / "ab" / f"{'ab' * 19}ad.ptxyz12345.tmp"}
    foreign["important"].write_bytes(b"user data" * 1000)
    foreign["own-name"].write_bytes(b"not a torch file" * 1000)
    foreign["own-tmp-name"].write_bytes(b"not a torch file" * 1000)
    os.utime(foreign["own-tmp-name"], (0, 0))  # stale, as a killed writer's would be
    return {**files, **foreign}


def _survive(survivors: dict[str, Path], cache: Path) -> None:
    for name, p in survivors.items():
        assert p.is_file(), f"{name} ({p}) was deleted"
    assert (cache / "terminal-store" / "ln").is_symlink() and (cache / "terminal-store" / "cd").is_symlink()


def test_cache_clear_deletes_only_the_stores_own_files(tmp_path):
    cache = tmp_path / "S"
    own = _fill(cache)
    survivors = _hostile(tmp_path, cache)
    code, err, out = _cli("cache", "clear", "--cache-dir", str(cache))
    assert code == 0, err
    assert out.startswith("removed 3 entries"), out
    assert not any(p.exists() for p in own)
    _survive(survivors, cache)


def test_a_linked_store_folder_is_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _fill(elsewhere)  # files of the store's own names and format, in a folder the link points to
    files = sorted(elsewhere.rglob("*.pt"))
    (tmp_path / "S").mkdir()
    (tmp_path / "S" / "terminal-store").symlink_to(elsewhere / "terminal-store")
    code, err, out = _cli("cache", "clear", "--cache-dir", str(tmp_path / "S"))
    assert code == 0 and out.startswith("removed 0 entries"), (err, out)
    assert all(p.is_file() for p in files)


def test_cache_info_does_not_count_through_links(tmp_path):
    cache = tmp_path / "S"
    _fill(cache)
    _hostile(tmp_path, cache)
    code, err, out = _cli("cache", "info", "--cache-dir", str(cache))
    assert code == 0, err
    assert ": 3 entries, " in out, out  # the linked folder's and the linked entry's files are not counted


def test_the_size_bound_deletes_only_the_stores_own_files(tmp_path):
    cache = tmp_path / "S"
    own = _fill(cache)
    survivors = _hostile(tmp_path, cache)
    removed = TerminalStore(cache, max_bytes=1).evict()
    assert removed == 3 and not any(p.exists() for p in own)
    _survive(survivors, cache)


def test_the_cache_size_option_deletes_only_the_stores_own_files(tmp_path):
    cache = tmp_path / "S"
    own = _fill(cache)
    survivors = _hostile(tmp_path, cache)
    code, err, _ = _cli("terminals", *MODEL, "--quiet", "--images", str(_photos(tmp_path / "im", 6)),
                        "--names", "grads,cic", "--cache-dir", str(cache), "--cache-size", "0.05MB",
                        "-o", str(tmp_path / "t.pt"))
    assert code == 0, err
    _survive(survivors, cache)
    assert not any(p.exists() for p in own)  # the least recently used went first
    assert TerminalStore(cache).info().bytes <= 0.05e6


# -- S7: what the store checks on reuse is said ------------------------------------------------------

def test_the_store_says_that_only_the_weights_and_logits_are_checked(tmp_path):
    import sycam_dsl.cam.store as store_mod

    assert "only the weights" in (store_mod.__doc__ or "") and "logits" in (store_mod.__doc__ or "")
    images = _photos(tmp_path / "im", 2)
    args = ["terminals", *MODEL, "--quiet", "--images", str(images), "--names", "grads", "--cache-dir",
            str(tmp_path / "c"), "-o", str(tmp_path / "t.pt")]
    code, _, out = _cli(*args)
    assert code == 0 and "0 of 2 images from the store" in out and "checked" not in out, out
    code, _, out = _cli(*args)
    assert code == 0 and "2 of 2 images from the store (only the weights and the logits are checked" in out, out


# -- S3, S4: a float or 32-bit integer TIFF's scale comes from its values ------------------------------

def _ramp(dtype, top: float) -> np.ndarray:
    return (np.linspace(0, 1, 32 * 32).reshape(32, 32) * top).astype(dtype)


def test_a_unit_float_image_with_a_slight_overshoot_stays_in_0_1(tmp_path, caplog):
    array = _ramp(np.float32, 1.0)
    array[0, 0] = 1.0005  # a resampled overshoot
    Image.fromarray(array).save(tmp_path / "f.tif")
    x = load_images(tmp_path, size=32, normalize=None).images
    assert float(x.amax()) == pytest.approx(1.0, abs=0.01) and float(x.mean()) > 0.4, "read as nearly black"
    assert not caplog.records


def test_a_float_image_just_over_1_is_read_as_0_255_with_a_warning(tmp_path, caplog):
    array = _ramp(np.float32, 1.0)
    array[0, 0] = 1.5
    Image.fromarray(array).save(tmp_path / "f.tif")
    x = load_images(tmp_path, size=32, normalize=None).images
    assert float(x.amax()) < 0.01
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "f.tif (float) has values up to 1.5: read as 0..255" in lines[0], lines


def test_a_float_image_in_0_255_is_divided_by_255(tmp_path, caplog):
    Image.fromarray(_ramp(np.float32, 255.0)).save(tmp_path / "f.tif")
    assert float(load_images(tmp_path, size=32, normalize=None).images.amax()) == pytest.approx(1.0, rel=0.02)
    assert not caplog.records


def test_a_32_bit_integer_image_in_0_255_is_read_as_8_bit_with_one_warning(tmp_path, caplog):
    Image.fromarray(_ramp(np.int32, 255)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    x = load_images(tmp_path, size=32, normalize=None).images
    assert float(x.amax()) == pytest.approx(1.0, rel=0.02)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "i.tif is a 32-bit integer image with values in 0..255: read as 8-bit" in lines[0]


def test_a_32_bit_integer_image_over_255_is_still_16_bit(tmp_path, caplog):
    Image.fromarray(_ramp(np.int32, 4095)).save(tmp_path / "i.tif")
    x = load_images(tmp_path, size=32, normalize=None).images
    assert float(x.amax()) == pytest.approx(4095 / 65535, rel=0.02)
    assert not caplog.records


# -- S5: sanity checks the images its result's search read ---------------------------------------------

@pytest.fixture(scope="module")
def relative_result(tmp_path_factory):
    """A search run in ``work/`` on ``--images photos`` (a relative path), its result in ``work/run``."""
    work = tmp_path_factory.mktemp("work")
    _photos(work / "photos", 10)
    code, err, _ = _cli("synth", *MODEL, "--quiet", "--images", "photos", "--metric", "deletion", "--steps", "3",
                        "--candidates", "3", "--report-images", "0", "--no-cache", "-o", "run",
                        cwd=work)
    assert code == 0, err
    return work


def _sanity(result: Path, cwd: Path, out: Path) -> tuple[int, list[str]]:
    code, err, _ = _cli("sanity", str(result), "--images", "2", "--quiet", "--json", str(out), cwd=cwd)
    return code, err


def test_sanity_reads_a_relative_image_folder_from_where_the_search_ran(relative_result, tmp_path):
    other = tmp_path / "elsewhere" / "photos"
    _photos(other, 10, seed=5)  # same names and count: before, sanity checked these without a word
    (other / "im0.png").write_bytes(b"not the search's images")  # so that reading them shows
    for cwd in (relative_result, other.parent):
        code, err = _sanity(relative_result / "run", cwd, tmp_path / "s.json")
        assert code == 0, err
        assert json.loads((tmp_path / "s.json").read_text())["images"] == 2


@pytest.mark.parametrize("change, pattern", [
    ("rename", r"is not the one the search read: its image \d+ is 'im\d+x?\.png', the result's test split has"),
    ("add", "holds 11 images, the result's search read 10"),
])
def test_sanity_refuses_images_that_are_not_the_results(relative_result, tmp_path, change, pattern):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(relative_result / "photos", copy / "photos")
    shutil.copytree(relative_result / "run", copy / "run")
    data = json.loads((copy / "run" / "result.json").read_text())
    data["settings"]["working_dir"] = str(copy)
    (copy / "run" / "result.json").write_text(json.dumps(data))
    held_out = data["test_split"]["files"]
    assert held_out
    if change == "rename":
        (copy / "photos" / held_out[0]).rename(copy / "photos" / held_out[0].replace(".png", "x.png"))
    else:
        shutil.copy(copy / "photos" / held_out[0], copy / "photos" / "zz.png")
    code, err = _sanity(copy / "run", copy, tmp_path / "s.json")
    assert code == 2 and len(err) == 1, err
    assert re.search(pattern, err[0]), err[0]


# -- progress: the status line says when the values come from the store -------------------------------

def test_terminals_on_demand_say_when_they_come_from_the_store(tmp_path):
    from sycam_dsl.models import load_model
    from sycam_dsl.synthesis.build import build_problem
    from sycam_dsl.synthesis.problem import Data

    model = load_model("tests.cam_reference:TinyCNN", "random:0", "cpu")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def busy_texts(n: int) -> list[str]:
        problem, _ = build_problem(model, "features.4", Data(x[:n], [str(i) for i in range(n)]), ["acts", "cic"],
                                   cache_dir=tmp_path, on_demand=True, progress=False)
        texts: list[str] = []
        problem.terminals.source.busy = lambda text: texts.append(text) if text else None
        problem.terminals.subset(torch.arange(3))["cic"]
        problem.terminals["cic"]
        return texts

    assert busy_texts(6) == ["computing cic of 3 image(s)", "computing cic of 3 image(s)"]
    assert busy_texts(6) == ["reading cic of 3 image(s) from the store"] * 2
    assert busy_texts(8) == ["reading cic of 3 image(s) from the store",
                             "computing cic of 2 image(s), reading 3 from the store"]


def test_the_search_status_line_says_reading_from_the_store(tmp_path):
    images = _photos(tmp_path / "im", 6)
    # --search-time: no whole-run estimate computing cic before the search (the line is the search's)
    args = ["synth", *MODEL, "--images", str(images), "--metric", "deletion", "--steps", "3", "--candidates", "3",
            "--report-images", "0", "--cache-dir", str(tmp_path / "c"), "--search-time", "600"]
    code, first, _ = _cli(*args, "-o", str(tmp_path / "r1"))
    assert code == 0, first
    assert any("| computing cic of" in line for line in first), first
    code, second, _ = _cli(*args, "-o", str(tmp_path / "r2"))
    assert code == 0, second
    assert any("| reading cic of" in line and "from the store" in line for line in second), second
    assert not any("computing cic" in line for line in second), second
