"""Bad inputs end in one clear line, never a traceback or a silently wrong value (the hardening issue).

Library-level cases call the function and check the exception; CLI cases run ``sycam-dsl`` in a
subprocess and check exit code 2 and exactly one line on stderr."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sycam_dsl.cam.errors import ImageError
from sycam_dsl.cam.images import load_images


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
