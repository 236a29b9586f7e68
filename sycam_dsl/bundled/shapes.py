"""Synthetic shapes on cluttered backgrounds, with exact ground-truth masks.

Each image holds one object of class ``labels[i] = i % len(CLASSES)`` (random position, area,
rotation and colour) on a smooth random background with small distractor lines and elongated
blobs that belong to no class. The mask is rasterized first and the image painted through it, so
mask and image agree pixel for pixel: the object's colour occurs exactly on the mask's pixels
(colours are drawn from disjoint ranges, and distractors keep a 2-pixel gap to the object).

Bit-for-bit deterministic across runs and platforms: image ``i`` uses its own generator
``default_rng([seed, i])`` (so ``render(m, s)`` is a prefix of ``render(n, s)`` for ``m <= n``),
draws only integers and ``random()`` doubles, and is rasterized with ``+ - * /`` and ``sqrt``
ufuncs only (IEEE correctly rounded; no ``sin``/``cos``, no reductions whose order could vary).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..models.small_cnn import CLASSES

_AREA = (0.10, 0.24)             # object area as a share of the image
_CROSS_WIDTH = 0.36              # a cross arm's half-width over its half-length
_BG = (80, 175)                  # background channel range; object channels lie 30+ levels outside
_DARK, _BRIGHT = (0, 45), (210, 255)
_DISTRACTORS = (4, 8)            # distractors per image, [low, high)
_GAP = 2                         # pixels of background kept between distractors and the object
_SQRT3 = float(np.sqrt(3.0))


@dataclass
class _Params:
    """Everything drawn for one image; lengths and positions in pixels, directions as (cos, sin)."""

    label: int
    rot: tuple[float, float]
    extent: float                                  # radius / half-side / half-length / circumradius
    center: tuple[float, float]
    colour: np.ndarray                             # [3] uint8
    background: np.ndarray                         # [size, size, 3] uint8
    distractors: list[tuple] = field(default_factory=list)


def _direction(rng: np.random.Generator) -> tuple[float, float]:
    """A random direction as an exact (cos, sin) pair from an integer vector in an annulus."""
    for _ in range(64):
        a, b = (int(v) for v in rng.integers(-1024, 1025, size=2))
        r2 = a * a + b * b
        if 512 * 512 <= r2 <= 1024 * 1024:
            norm = float(np.sqrt(np.float64(r2)))
            return a / norm, b / norm
    return 1.0, 0.0


def _vertices(label: int, extent: float) -> np.ndarray:
    """The shape's extreme points in its own frame ``[V, 2]`` (a circle: its axis points)."""
    e, w = extent, extent * _CROSS_WIDTH
    name = CLASSES[label]
    if name == "circle":
        return np.array([[e, 0], [-e, 0], [0, e], [0, -e]], dtype=np.float64)
    if name == "square":
        return np.array([[e, e], [e, -e], [-e, e], [-e, -e]], dtype=np.float64)
    if name == "cross":
        return np.array([[e, w], [e, -w], [-e, w], [-e, -w], [w, e], [-w, e], [w, -e], [-w, -e]], dtype=np.float64)
    h = extent * _SQRT3 / 2
    return np.array([[0.0, -extent], [h, extent / 2], [-h, extent / 2]], dtype=np.float64)


def _extent(label: int, area: float) -> float:
    """The size parameter that gives ``area`` pixels."""
    name = CLASSES[label]
    if name == "circle":
        return float(np.sqrt(area / np.pi))
    if name == "square":
        return float(np.sqrt(area / 4))
    if name == "cross":
        return float(np.sqrt(area / (8 * _CROSS_WIDTH - 4 * _CROSS_WIDTH * _CROSS_WIDTH)))
    return float(np.sqrt(area / (3 * _SQRT3 / 4)))  # circumradius of an equilateral triangle


def _between(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(rng.random())


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field (bilinear 4x4 grid plus a weaker 8x8 one) with fine grain, ``[size, size, 3]``."""
    field_ = _upsample(rng.integers(_BG[0], _BG[1] + 1, size=(4, 4, 3)).astype(np.float64), size)
    field_ = field_ + _upsample(rng.integers(-15, 16, size=(8, 8, 3)).astype(np.float64), size)
    grain = rng.integers(-6, 7, size=(size, size, 3))
    return np.clip(np.floor(field_) + grain, _BG[0], _BG[1]).astype(np.uint8)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear interpolation of ``[g, g, 3]`` at the pixel centres, two taps per axis (exact order)."""
    g = grid.shape[0]
    pos = (np.arange(size) + 0.5) * ((g - 1) / size)
    i0 = np.minimum(np.floor(pos).astype(int), g - 2)
    f = (pos - i0)[:, None, None]
    rows = grid[i0] * (1 - f) + grid[i0 + 1] * f                   # [size, g, 3]
    fx = f[None, :, :, 0]                                            # [1, size, 1]
    return rows[:, i0] * (1 - fx) + rows[:, i0 + 1] * fx


def _colour(rng: np.random.Generator, corner: int) -> np.ndarray:
    """A saturated colour near corner ``corner`` (3 bits: dark or bright per channel) of the RGB cube."""
    out = [rng.integers(*(_BRIGHT if corner >> c & 1 else _DARK), endpoint=True) for c in range(3)]
    return np.array(out, dtype=np.uint8)


def _params(seed: int, i: int, size: int) -> _Params:
    rng = np.random.default_rng([seed, i])
    label = i % len(CLASSES)
    rot = _direction(rng)
    extent = _extent(label, _between(rng, *_AREA) * size * size)
    c, s = rot
    local = _vertices(label, extent)
    xs, ys = c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1]
    if CLASSES[label] == "circle":  # its extent does not turn with it
        xs = ys = local[:, 0]
    center = (_between(rng, 1 - xs.min(), size - 1 - xs.max()), _between(rng, 1 - ys.min(), size - 1 - ys.max()))
    corner = int(rng.integers(0, 8))
    colour = _colour(rng, corner)
    background = _background(rng, size)
    distractors: list[tuple] = []
    for _ in range(int(rng.integers(*_DISTRACTORS))):
        d_colour = _colour(rng, (corner + int(rng.integers(1, 8))) % 8)
        p0 = (_between(rng, 0, size), _between(rng, 0, size))
        if rng.random() < 0.5:       # a thin line segment, 8-22 px long, 1-2 px thick
            dc, ds = _direction(rng)
            length = _between(rng, 8, 22)
            distractors.append(("line", d_colour, p0, (p0[0] + dc * length, p0[1] + ds * length),
                                _between(rng, 0.5, 1.0)))
        else:                        # an elongated ellipse (aspect >= 2), at most ~40 px
            distractors.append(("blob", d_colour, p0, _direction(rng), _between(rng, 3.5, 6), _between(rng, 1, 1.75)))
    return _Params(label, rot, extent, center, colour, background, distractors)


def _object_masks(params: list[_Params], size: int) -> np.ndarray:
    """``[n, size, size]`` bool: each image's object, tested at pixel centres, vectorized per class."""
    n = len(params)
    out = np.zeros((n, size, size), dtype=bool)
    grid = np.arange(size, dtype=np.float64) + 0.5
    for label, name in enumerate(CLASSES):
        idx = np.array([k for k, p in enumerate(params) if p.label == label], dtype=int)
        if idx.size == 0:
            continue
        c, s, cx, cy, e = (np.array(v, dtype=np.float64)[:, None, None]  # each [m, 1, 1]
                           for v in zip(*[(*params[k].rot, *params[k].center, params[k].extent) for k in idx]))
        dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy     # [m, 1, size], [m, size, 1]
        u, v = c * dx + s * dy, c * dy - s * dx                          # the shape's own frame
        if name == "circle":
            inside = u * u + v * v <= e * e
        elif name == "square":
            inside = (np.abs(u) <= e) & (np.abs(v) <= e)
        elif name == "cross":
            w = e * _CROSS_WIDTH
            au, av = np.abs(u), np.abs(v)
            inside = ((au <= e) & (av <= w)) | ((au <= w) & (av <= e))
        else:  # equilateral triangle, apex at -v: three half-planes at the inradius e / 2
            h = _SQRT3 / 2
            inside = (v <= e / 2) & (h * u - v / 2 <= e / 2) & (-h * u - v / 2 <= e / 2)
        out[idx] = inside
    return out


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``[n, H, W]`` bool grown by ``steps`` pixels (3x3 square neighbourhood per step)."""
    for _ in range(steps):
        p = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
        h, w = mask.shape[1:]
        mask = np.zeros_like(mask)
        for oy in range(3):
            for ox in range(3):
                mask |= p[:, oy:oy + h, ox:ox + w]
    return mask


def _distractor_mask(d: tuple, size: int) -> np.ndarray:
    """``[size, size]`` bool for one distractor."""
    x = np.arange(size, dtype=np.float64)[None, :] + 0.5
    y = np.arange(size, dtype=np.float64)[:, None] + 0.5
    if d[0] == "line":
        _, _, (x0, y0), (x1, y1), half = d
        ex, ey = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * ex + (y - y0) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        qx, qy = x - (x0 + t * ex), y - (y0 + t * ey)
        return qx * qx + qy * qy <= half * half
    _, _, (x0, y0), (c, s), a, b = d
    dx, dy = x - x0, y - y0
    u, v = (c * dx + s * dy) / a, (c * dy - s * dx) / b
    return u * u + v * v <= 1.0


def render(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images: ``(images [n, size, size, 3] uint8, masks [n, size, size] bool, labels [n] int64)``.

    ``labels[i] = i % len(CLASSES)`` indexes ``CLASSES``; ``masks[i]`` is exactly the pixels painted
    by image ``i``'s object (10-24 % of the image, never cut by the border)."""
    if n < 0:
        raise ValueError(f"render: n must be >= 0, got {n}")
    if size < 32:
        raise ValueError(f"render: size must be >= 32 so objects and clutter fit, got {size}")
    params = [_params(seed, i, size) for i in range(n)]
    masks = _object_masks(params, size)
    keep_out = _dilate(masks, _GAP)
    images = np.stack([p.background for p in params]) if params else np.zeros((0, size, size, 3), np.uint8)
    for k, p in enumerate(params):
        img = images[k]
        for d in p.distractors:
            img[_distractor_mask(d, size) & ~keep_out[k]] = d[1]
        img[masks[k]] = p.colour
    labels = np.array([p.label for p in params], dtype=np.int64)
    return images, masks, labels
