"""The report's pictures: the heatmap grid (PIL) and the score plot (matplotlib)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sycam_dsl.cam.overlay import ALPHA, jet
from sycam_dsl.run import figures
from sycam_dsl.run.figures import MIN_CELL, save_heatmap_grid, save_score_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def _size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _grid(tmp_path, rows: int, cols: int, side: int = 16, name: str = "g.png", **kw):
    images = torch.full((rows, 3, side, side), 0.5)
    columns = {f"method {j}": torch.rand(rows, side, side) for j in range(cols)}
    return save_heatmap_grid(images, columns, tmp_path / name, **kw)


def _blend_u8(pixel: np.ndarray, heat: float) -> np.ndarray:
    """The grid's colour for an image ``pixel`` (in [0, 1]) under the heat value ``heat``."""
    colour = (1 - ALPHA) * pixel + ALPHA * jet(np.array([[heat]]))[0, 0]
    return (np.clip(colour, 0, 1) * 255).round().astype(int)


# --------------------------------------------------------------------------------------------------
# heatmap grid

def test_grid_size_grows_with_columns_and_rows(tmp_path):
    w1, h1 = _size(_grid(tmp_path, rows=1, cols=1, name="a.png"))
    w3, h3 = _size(_grid(tmp_path, rows=1, cols=3, name="b.png"))
    w3r, h3r = _size(_grid(tmp_path, rows=3, cols=3, name="c.png"))
    assert w3 >= w1 + 2 * MIN_CELL and h3 == h1  # two more columns, each at least one cell wide
    assert h3r >= h3 + 2 * MIN_CELL and w3r == w3  # two more rows
    assert w1 >= 2 * MIN_CELL and h1 >= MIN_CELL  # the image column and one method column


def test_grid_labels_and_title_take_room(tmp_path):
    w, h = _size(_grid(tmp_path, 2, 2, name="plain.png"))
    wl, hl = _size(_grid(tmp_path, 2, 2, name="labels.png", row_labels=["circle (class 0)", "square (class 1)"]))
    wt, ht = _size(_grid(tmp_path, 2, 2, name="title.png", title="Heatmaps of the incumbent"))
    assert wl > w and hl == h
    assert ht > h and wt == w


def test_grid_blends_jet_over_the_image_in_column_order(tmp_path):
    images = torch.zeros(2, 3, 16, 16)  # black
    columns = {"ones": torch.ones(2, 16, 16), "zeros": torch.zeros(2, 16, 16)}
    pixels = _read(save_heatmap_grid(images, columns, tmp_path / "g.png", row_labels=["a", "b"]))
    red = _blend_u8(np.zeros(3), 1.0)  # dark red (64, 0, 0)
    blue = _blend_u8(np.zeros(3), 0.0)  # dark blue (0, 0, 64)
    assert red[0] > 40 and red[1] == 0 and red[2] == 0
    is_red = (pixels == red).all(-1)
    is_blue = (pixels == blue).all(-1)
    cell = (16 * -(-MIN_CELL // 16)) ** 2
    assert is_red.sum() == 2 * cell and is_blue.sum() == 2 * cell  # one full cell per row
    red_x, blue_x = np.nonzero(is_red)[1], np.nonzero(is_blue)[1]
    assert red_x.max() < blue_x.min()  # "ones" is drawn left of "zeros"
    black_x = np.nonzero((pixels == 0).all(-1) & (np.arange(pixels.shape[0])[:, None] > 0))[1]
    assert np.median(black_x) < red_x.min()  # the plain (black) image comes first
    # the centre of the first red cell is red
    ys, xs = np.nonzero(is_red)
    top = ys.min()
    cy, cx = top + 64, (red_x.min() + red_x.max()) // 2
    assert (pixels[cy, cx] == red).all()


def _find_marker(pixels: np.ndarray, colour) -> tuple[int, int, int]:
    """Top-left corner and side of the first block of ``colour`` (a colour used only there)."""
    ys, xs = np.nonzero((pixels == np.array(colour)).all(-1))
    assert len(ys), f"no pixel of colour {colour}"
    y0, x0 = ys.min(), xs.min()
    side = int(((pixels[y0, x0:] == np.array(colour)).all(-1)).argmin())
    return int(y0), int(x0), side


@pytest.mark.parametrize("side", [16, 32, 160])
def test_first_column_is_the_raw_image_upscaled_by_nearest_neighbour(tmp_path, side):
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 4, (1, 3, side, side), generator=gen).float() / 4  # values 0 .. 0.75
    image[0, :, 0, 0] = torch.tensor([1.0, 0.0, 1.0])  # a magenta corner, found nowhere else
    pixels = _read(save_heatmap_grid(image, {"m": torch.rand(1, side, side, generator=gen)}, tmp_path / "g.png"))
    y0, x0, f = _find_marker(pixels, (255, 0, 255))
    assert f == max(1, -(-MIN_CELL // side))
    expected = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(int)
    expected = expected.repeat(f, axis=0).repeat(f, axis=1)
    shown = pixels[y0:y0 + side * f, x0:x0 + side * f]
    assert shown.shape == expected.shape
    assert (shown == expected).all()


def test_grid_heatmap_cell_matches_the_blend(tmp_path):
    image = torch.zeros(1, 3, 8, 8)
    image[0, :, 0, 0] = torch.tensor([1.0, 0.0, 1.0])
    heat = torch.linspace(0, 1, 64).reshape(1, 8, 8)
    pixels = _read(save_heatmap_grid(image, {"m": heat}, tmp_path / "g.png"))
    y0, x0, f = _find_marker(pixels, (255, 0, 255))
    # the method cell is the next one to the right; find it by its first pixel's colour
    first = _blend_u8(np.array([1.0, 0.0, 1.0]), 0.0)
    row = pixels[y0, x0 + 8 * f:]
    start = x0 + 8 * f + int(np.nonzero((row == first).all(-1))[0][0])
    img = image[0].permute(1, 2, 0).numpy()
    for i, j in [(0, 0), (3, 5), (7, 7)]:
        want = _blend_u8(img[i, j], float(heat[0, i, j]))
        assert (pixels[y0 + i * f + f // 2, start + j * f + f // 2] == want).all(), (i, j)


def test_grid_is_deterministic_and_creates_folders(tmp_path):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 16, 16)
    columns = {"a": torch.rand(2, 16, 16)}
    p1 = save_heatmap_grid(images, columns, tmp_path / "x" / "y" / "1.png", row_labels=["r0", "r1"], title="t")
    p2 = save_heatmap_grid(images, columns, tmp_path / "x" / "y" / "2.png", row_labels=["r0", "r1"], title="t")
    assert p1.exists() and p1.read_bytes()[:8] == PNG_MAGIC
    assert p1.read_bytes() == p2.read_bytes()


def test_grid_without_methods_and_out_of_range_values(tmp_path):
    images = torch.rand(1, 3, 16, 16) * 3 - 1  # clamped to [0, 1]
    path = save_heatmap_grid(images, {}, tmp_path / "g.png")
    assert _size(path)[0] >= MIN_CELL
    heat = torch.full((1, 16, 16), float("nan"))
    heat[0, 0, 0] = 7.0
    assert save_heatmap_grid(images.clamp(0, 1), {"nan": heat}, tmp_path / "h.png").exists()


@pytest.mark.parametrize("bad", [torch.zeros(2, 16, 8), torch.zeros(1, 16, 16), torch.zeros(2, 1, 16, 16)])
def test_grid_bad_heatmap_shape_names_the_column(tmp_path, bad):
    images = torch.zeros(2, 3, 16, 16)
    columns = {"good": torch.zeros(2, 16, 16), "Grad-CAM++": bad}
    with pytest.raises(ValueError, match=r"Grad-CAM\+\+") as info:
        save_heatmap_grid(images, columns, tmp_path / "g.png")
    assert str(tuple(bad.shape)) in str(info.value)
    assert not (tmp_path / "g.png").exists()


def test_grid_bad_images_or_labels(tmp_path):
    with pytest.raises(ValueError, match="images"):
        save_heatmap_grid(torch.zeros(2, 1, 16, 16), {}, tmp_path / "g.png")
    with pytest.raises(ValueError, match="images"):
        save_heatmap_grid(torch.zeros(3, 16, 16), {}, tmp_path / "g.png")
    with pytest.raises(ValueError, match="row labels"):
        save_heatmap_grid(torch.zeros(2, 3, 16, 16), {}, tmp_path / "g.png", row_labels=["only one"])


# --------------------------------------------------------------------------------------------------
# score plot

HISTORY = [(0.5, 0.30), (2.0, 0.45), (7.25, 0.61), (20.0, 0.62)]
BASELINES = {"gradcam": 0.55, "gradcam++": 0.58}
INCUMBENT = (31, 119, 180)
FIRST_BASELINE = (255, 127, 14)  # matplotlib's tab:orange


def _count(pixels: np.ndarray, colour) -> int:
    return int((pixels == np.array(colour)).all(-1).sum())


def test_score_plot_draws_the_incumbent_and_the_baselines(tmp_path):
    path = save_score_plot(HISTORY, tmp_path / "a" / "score.png", "insertion AUC", True, BASELINES, end=30.0)
    assert path == tmp_path / "a" / "score.png"
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC
    pixels = _read(path)
    assert _count(pixels, INCUMBENT) > 300  # the step line and its markers
    assert _count(pixels, FIRST_BASELINE) > 200  # the dashed baseline
    without = _read(save_score_plot(HISTORY, tmp_path / "b.png", "insertion AUC", True, end=30.0))
    assert _count(without, FIRST_BASELINE) == 0


def test_step_extends_to_end():
    xs, ys = figures._step_points([(0.0, 1.0), (2.0, 3.0)], end=5.0)
    assert (xs, ys) == ([0.0, 2.0, 5.0], [1.0, 3.0, 3.0])
    assert figures._step_points([(0.0, 1.0), (2.0, 3.0)], end=1.0) == ([0.0, 2.0, 2.0], [1.0, 3.0, 3.0])
    assert figures._step_points([(0.0, 1.0)], end=None) == ([0.0, 0.0], [1.0, 1.0])
    assert figures._step_points([], end=4.0) == ([], [])


def test_score_plot_empty_history(tmp_path):
    path = save_score_plot([], tmp_path / "e" / "score.png", "deletion AUC", False, {"gradcam": 0.2})
    assert path.exists() and path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_MAGIC
    pixels = _read(path)
    assert _count(pixels, INCUMBENT) == 0
    assert _count(pixels, FIRST_BASELINE) > 200
    assert save_score_plot([], tmp_path / "bare.png", "m", True).exists()  # no baselines either


def test_score_plot_odd_histories(tmp_path):
    for k, history in enumerate([[(0.0, 1.0)], [(3.0, 5.0), (1.0, 2.0)], [(0.0, float("nan")), (1.0, 2.0)],
                                 [(0.0, -1e-7), (1.0, 1e9)]]):
        path = save_score_plot(history, tmp_path / f"{k}.png", "m", True, {"b": 0.5})
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_title_text():
    assert figures._title("insertion AUC", True) == "insertion AUC of the incumbent (higher is better)"
    assert figures._title("deletion AUC", False) == "deletion AUC of the incumbent (lower is better)"
