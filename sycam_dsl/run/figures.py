"""The two pictures of a synthesis report, as pure functions over plain data.

* :func:`save_heatmap_grid`: a grid of images (rows) by CAM methods (columns), each heatmap blended
  over its image with the jet colormap of :mod:`sycam_dsl.cam.overlay`. Drawn with PIL only, so the
  output does not depend on whether matplotlib is installed.
* :func:`save_score_plot`: the incumbent's score over time as a step function, with the baselines'
  scores as dashed lines. Drawn with matplotlib when installed (its Agg canvas, without pyplot), else
  with PIL.
* :func:`save_front_plot`: the Pareto front of a multi-objective search over two metrics as a scatter
  plot (members joined in order, baselines as hollow markers, the knee highlighted), over more metrics
  as a matrix of pairwise scatter plots. Drawn with matplotlib when installed, else with PIL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..cam.overlay import ALPHA, jet

MIN_CELL = 128  # small images are upscaled (nearest neighbour) to at least this many pixels a side
PAD = 6
FONT_SIZE = 14
MAX_HEADER_LINES = 3
MAX_LABEL_WIDTH = 220


# --------------------------------------------------------------------------------------------------
# text helpers (PIL)

def _font(size: int = FONT_SIZE):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 (a scalable font)
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    if hasattr(font, "getbbox"):
        left, top, right, bottom = font.getbbox(text or " ")
        return right - min(left, 0), bottom
    return font.getsize(text or " ")  # pragma: no cover - Pillow < 8


def _line_height(font) -> int:
    return _text_size(font, "Hg(|)")[1] + 3


def _wrap(font, text: str, width: int, max_lines: int = MAX_HEADER_LINES) -> list[str]:
    """``text`` broken into lines no wider than ``width`` (at spaces when possible, else anywhere);
    at most ``max_lines``, the last one cut with ``...`` if the text does not fit."""
    lines: list[str] = []
    rest = text
    while rest and len(lines) < max_lines:
        if _text_size(font, rest)[0] <= width:
            lines.append(rest)
            rest = ""
            break
        n = 1  # longest prefix that fits (at least one character)
        while n < len(rest) and _text_size(font, rest[: n + 1])[0] <= width:
            n += 1
        cut = rest.rfind(" ", 0, n + 1)
        if cut > 0:
            n = cut
        lines.append(rest[:n].rstrip())
        rest = rest[n:].lstrip()
    if rest and lines:
        last = lines[-1]
        while last and _text_size(font, last + "...")[0] > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines or [""]


# --------------------------------------------------------------------------------------------------
# the heatmap grid

def _to_uint8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def _check_shapes(images: torch.Tensor, columns: Mapping[str, torch.Tensor],
                  row_labels: Sequence[str] | None) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"images must be a tensor [R, 3, H, W], got {shape}")
    r, _, h, w = images.shape
    if r == 0 or h == 0 or w == 0:
        raise ValueError(f"images must not be empty, got {tuple(images.shape)}")
    for name, maps in columns.items():
        shape = tuple(maps.shape) if hasattr(maps, "shape") else type(maps).__name__
        if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (r, h, w):
            raise ValueError(f"column {name!r}: heatmaps of shape {shape}, expected {(r, h, w)} "
                             f"(one [H, W] heatmap per image)")
    if row_labels is not None and len(row_labels) != r:
        raise ValueError(f"{len(row_labels)} row labels for {r} images")


def save_heatmap_grid(images: torch.Tensor, columns: Mapping[str, torch.Tensor], path: str | Path,
                      row_labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Write a PNG grid to ``path``: one row per image of ``images`` ``[R, 3, H, W]`` (pixels in
    ``[0, 1]``, already de-normalized); the first column the plain image, then one column per entry
    of ``columns`` (method name -> heatmaps ``[R, H, W]`` in ``[0, 1]``, in the mapping's order) with
    the heatmap blended over the image (jet, ``overlay.ALPHA``). Column headers name the methods;
    ``row_labels`` (one per image) go on the left and ``title`` on top. Images smaller than
    ``MIN_CELL`` pixels are upscaled with nearest neighbour. Raises ``ValueError`` on bad shapes."""
    from PIL import Image, ImageDraw

    _check_shapes(images, columns, row_labels)
    imgs = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    imgs = np.clip(np.nan_to_num(imgs, nan=0.0), 0, 1)
    n_rows, h, w = imgs.shape[:3]
    scale = max(1, math.ceil(MIN_CELL / min(h, w)))
    cell_w, cell_h = w * scale, h * scale

    cells: list[list[np.ndarray]] = []
    for i in range(n_rows):
        row = [imgs[i]]
        for maps in columns.values():
            heat = np.nan_to_num(maps[i].detach().float().cpu().numpy(), nan=0.0, posinf=1.0, neginf=0.0)
            row.append((1 - ALPHA) * imgs[i] + ALPHA * jet(np.clip(heat, 0, 1)))
        cells.append(row)

    font = _font()
    title_font = _font(FONT_SIZE + 4)
    line_h = _line_height(font)
    headers = [_wrap(font, str(name), cell_w) for name in ["image", *columns]]
    header_h = max(len(lines) for lines in headers) * line_h + PAD
    labels = [_wrap(font, str(label), MAX_LABEL_WIDTH, max_lines=max(1, cell_h // line_h))
              for label in row_labels] if row_labels is not None else None
    label_w = (max(_text_size(font, line)[0] for lines in labels for line in lines) + 2 * PAD
               if labels else 0)
    n_cols = 1 + len(columns)
    grid_w = label_w + PAD + n_cols * (cell_w + PAD)
    title_lines = _wrap(title_font, title, grid_w - 2 * PAD, max_lines=2) if title else []
    title_h = len(title_lines) * _line_height(title_font) + PAD if title_lines else 0
    top = PAD + title_h + header_h
    grid_h = top + n_rows * (cell_h + PAD)

    canvas = Image.new("RGB", (grid_w, grid_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title_lines):
        tw = _text_size(title_font, line)[0]
        draw.text(((grid_w - tw) // 2, PAD + k * _line_height(title_font)), line, fill="black", font=title_font)
    for j, lines in enumerate(headers):
        x0 = label_w + PAD + j * (cell_w + PAD)
        y0 = PAD + title_h + header_h - PAD - len(lines) * line_h  # headers sit right on their column
        for k, line in enumerate(lines):
            tw = _text_size(font, line)[0]
            draw.text((x0 + (cell_w - tw) // 2, y0 + k * line_h), line, fill="black", font=font)
    for i, row in enumerate(cells):
        y0 = top + i * (cell_h + PAD)
        for j, cell in enumerate(row):
            x0 = label_w + PAD + j * (cell_w + PAD)
            picture = Image.fromarray(_to_uint8(cell))
            if scale > 1:
                picture = picture.resize((cell_w, cell_h), Image.NEAREST)  # type: ignore[attr-defined]  # Pillow 9 has no Image.Resampling
            canvas.paste(picture, (x0, y0))
        if labels:
            lines = labels[i]
            ly = y0 + (cell_h - len(lines) * line_h) // 2
            for k, line in enumerate(lines):
                tw = _text_size(font, line)[0]
                draw.text((label_w - PAD - tw, ly + k * line_h), line, fill="black", font=font)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


# --------------------------------------------------------------------------------------------------
# the score plot

def _title(metric: str, higher_is_better: bool) -> str:
    return f"{metric} of the incumbent ({'higher' if higher_is_better else 'lower'} is better)"


def _clean_history(history: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    points = [(float(t), float(s)) for t, s in history]
    points = [(t, s) for t, s in points if math.isfinite(t) and math.isfinite(s)]
    return sorted(points, key=lambda p: p[0])  # stable: equal times keep their order


def _step_points(points: list[tuple[float, float]], end: float | None) -> tuple[list[float], list[float]]:
    """``x``, ``y`` of the post-step line through ``points``, extended to ``end``."""
    xs = [t for t, _ in points]
    ys = [s for _, s in points]
    if points:
        last = max(xs[-1], end) if end is not None and math.isfinite(end) else xs[-1]
        xs.append(last)
        ys.append(ys[-1])
    return xs, ys


def _ranges(xs: list[float], ys: list[float], baselines: Mapping[str, float], end: float | None):
    x_lo = min([0.0, *xs])
    x_hi = max([*xs, end if end is not None and math.isfinite(end) else x_lo])
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    return (x_lo, x_hi), _value_range(ys + [v for v in baselines.values() if math.isfinite(v)])


def _value_range(values: list[float]) -> tuple[float, float]:
    """An axis range holding the finite ``values`` with a margin; a lone value gets a span around it."""
    values = [v for v in values if math.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(values), max(values)
    span = hi - lo
    if span <= 0:
        span = abs(hi) * 0.1 or 1.0
        lo, hi = lo - span / 2, hi + span / 2
    margin = 0.08 * (hi - lo)
    return lo - margin, hi + margin


def _backend(backend: str | None) -> str:
    """``"matplotlib"`` or ``"pil"``: the one asked for, or (None) matplotlib when installed, else PIL."""
    if backend not in (None, "matplotlib", "pil"):
        raise ValueError(f"unknown backend {backend!r}: use 'matplotlib', 'pil' or None")
    if backend != "pil":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            if backend == "matplotlib":
                raise
            return "pil"
    return "matplotlib" if backend is None else backend


def save_score_plot(history: Sequence[tuple[float, float]], path: str | Path, metric: str,
                    higher_is_better: bool, baselines: Mapping[str, float] | None = None,
                    x_label: str = "seconds", end: float | None = None,
                    backend: str | None = None) -> Path:
    """Write a PNG plot of the incumbent's score over time to ``path``.

    ``history`` lists ``(time, score)`` each time a new incumbent was found; it is drawn as a step
    function, extended to ``end`` when given (e.g. the time the search stopped). ``baselines``
    (name -> score) are dashed horizontal lines with their names. An empty history still gives a plot
    (baselines and the note "no candidate scored"). ``backend``: ``"matplotlib"``, ``"pil"`` or
    ``None`` (matplotlib when installed, else PIL)."""
    backend = _backend(backend)
    points = _clean_history(history)
    baselines = {str(k): float(v) for k, v in (baselines or {}).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if backend == "pil":
        _score_plot_pil(points, path, metric, higher_is_better, baselines, x_label, end)
    else:
        _score_plot_matplotlib(points, path, metric, higher_is_better, baselines, x_label, end)
    return path


def _score_plot_matplotlib(points, path: Path, metric: str, higher_is_better: bool,
                           baselines: dict[str, float], x_label: str, end: float | None) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas for PNG

    xs, ys = _step_points(points, end)
    (x_lo, x_hi), (y_lo, y_hi) = _ranges(xs, ys, baselines, end)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    if points:
        ax.step(xs, ys, where="post", color="tab:blue", linewidth=2, label="incumbent")
        ax.plot([t for t, _ in points], [s for _, s in points], "o", color="tab:blue", markersize=4)
    else:
        ax.text(0.5, 0.75, "no candidate scored", transform=ax.transAxes, ha="center", va="center",
                fontsize=12, color="dimgray", zorder=5,
                bbox={"facecolor": "white", "edgecolor": "dimgray", "boxstyle": "round"})
    colors = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
              "tab:cyan", "tab:gray"]
    for k, (name, value) in enumerate(baselines.items()):
        if math.isfinite(value):
            ax.axhline(value, linestyle="--", linewidth=1.2, color=colors[k % len(colors)],
                       label=f"{name} ({value:.4g})")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.set_title(_title(metric, higher_is_better))
    ax.grid(True, alpha=0.3)
    if points or baselines:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")


def _nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) within ``[lo, hi]``."""
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + 1e-9 * step:
        ticks.append(first + k * step)
        k += 1
    return ticks, step


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step)))
    if abs(value) >= 1e6 or (value != 0 and abs(value) < 1e-4):
        return f"{value:.3g}"
    text = f"{value:.{decimals}f}"
    return "0" if text.lstrip("-") == f"{0:.{decimals}f}" else text


def _dashed(draw, x0: float, x1: float, y: float, fill, dash: int = 7, gap: int = 5, width: int = 2) -> None:
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + dash, x1), y)], fill=fill, width=width)
        x += dash + gap


def _score_plot_pil(points, path: Path, metric: str, higher_is_better: bool,
                    baselines: dict[str, float], x_label: str, end: float | None) -> None:
    from PIL import Image, ImageDraw

    font = _font()
    title_font = _font(FONT_SIZE + 2)
    line_h = _line_height(font)
    xs, ys = _step_points(points, end)
    (x_lo, x_hi), (y_lo, y_hi) = _ranges(xs, ys, baselines, end)
    finite = {name: v for name, v in baselines.items() if math.isfinite(v)}
    colors = [(230, 120, 20), (40, 150, 60), (200, 40, 40), (140, 80, 180), (140, 90, 60),
              (220, 100, 180), (150, 150, 40), (30, 170, 190), (120, 120, 120)]

    y_ticks, y_step = _nice_ticks(y_lo, y_hi)
    x_ticks, x_step = _nice_ticks(x_lo, x_hi)
    y_tick_labels = [_tick_label(v, y_step) for v in y_ticks]
    legend = [("incumbent", (31, 119, 180), False)] if points else []
    legend += [(f"{name} ({v:.4g})", colors[k % len(colors)], True) for k, (name, v) in enumerate(finite.items())]
    legend_lines = [(_wrap(font, text, MAX_LABEL_WIDTH, max_lines=1)[0], color, dashed)
                    for text, color, dashed in legend]

    plot_w, plot_h = 520, 320
    left = PAD + line_h + PAD + max([_text_size(font, t)[0] for t in y_tick_labels] or [0]) + 2 * PAD
    right = (2 * PAD + 28 + max(_text_size(font, t)[0] for t, _, _ in legend_lines) + PAD) if legend_lines else 3 * PAD
    top = PAD + _line_height(title_font) + 2 * PAD
    bottom = PAD + 2 * line_h + 2 * PAD
    width, height = left + plot_w + right, top + plot_h + bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    # grid, ticks and their labels
    for v, label in zip(y_ticks, y_tick_labels):
        y = py(v)
        draw.line([(left, y), (left + plot_w, y)], fill=(230, 230, 230))
        draw.line([(left - 4, y), (left, y)], fill="black")
        tw, th = _text_size(font, label)
        draw.text((left - 6 - tw, y - th // 2 - 1), label, fill="black", font=font)
    for v in x_ticks:
        x = px(v)
        label = _tick_label(v, x_step)
        draw.line([(x, top), (x, top + plot_h)], fill=(230, 230, 230))
        draw.line([(x, top + plot_h), (x, top + plot_h + 4)], fill="black")
        tw = _text_size(font, label)[0]
        draw.text((x - tw // 2, top + plot_h + 6), label, fill="black", font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    # baselines, then the incumbent on top
    for k, value in enumerate(finite.values()):
        _dashed(draw, left + 1, left + plot_w - 1, py(value), colors[k % len(colors)])
    if points:
        line = [(px(xs[0]), py(ys[0]))]
        for k in range(1, len(xs)):
            line.append((px(xs[k]), py(ys[k - 1])))
            line.append((px(xs[k]), py(ys[k])))
        draw.line(line, fill=(31, 119, 180), width=2)
        for t, s in points:
            x, y = px(t), py(s)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(31, 119, 180))
    else:
        note = "no candidate scored"
        tw, th = _text_size(title_font, note)
        nx, ny = left + (plot_w - tw) // 2, top + plot_h // 4 - th // 2  # a boxed note, above a lone baseline
        draw.rectangle([nx - PAD, ny - PAD, nx + tw + PAD, ny + th + PAD], fill="white", outline=(105, 105, 105))
        draw.text((nx, ny), note, fill=(105, 105, 105), font=title_font)
    # legend on the right
    ly = top + PAD
    for text, color, dashed in legend_lines:
        x0 = left + plot_w + 2 * PAD
        y = ly + line_h // 2
        if dashed:
            _dashed(draw, x0, x0 + 24, y, color, dash=5, gap=3)
        else:
            draw.line([(x0, y), (x0 + 24, y)], fill=color, width=2)
        draw.text((x0 + 28, ly), text, fill="black", font=font)
        ly += line_h
    # title and axis labels
    title = _wrap(title_font, _title(metric, higher_is_better), width - 2 * PAD, max_lines=1)[0]
    tw = _text_size(title_font, title)[0]
    draw.text(((width - tw) // 2, PAD), title, fill="black", font=title_font)
    tw = _text_size(font, x_label)[0]
    draw.text((left + (plot_w - tw) // 2, top + plot_h + 6 + line_h + PAD), x_label, fill="black", font=font)
    _vertical_text(canvas, font, metric, PAD, top, plot_h)
    canvas.save(path, format="PNG")


def _vertical_text(canvas, font, text: str, x: int, top: int, height: int) -> None:
    """``text`` (cut to ``height``) rotated a quarter turn, centred on ``[top, top + height]`` at ``x``."""
    from PIL import Image, ImageDraw

    line = _wrap(font, text, height, max_lines=1)[0]
    tw, th = _text_size(font, line)
    strip = Image.new("RGB", (tw + 2, th + 2), "white")
    ImageDraw.Draw(strip).text((1, 0), line, fill="black", font=font)
    strip = strip.rotate(90, expand=True)
    canvas.paste(strip, (x, top + (height - strip.height) // 2))


# --------------------------------------------------------------------------------------------------
# the Pareto front

FRONT_COLOUR = (31, 119, 180)  # the members' filled markers (matplotlib's tab:blue)
FRONT_LINE = (158, 190, 218)  # the line joining them: lighter, so a marker's colour is the members' own
KNEE_COLOUR = (214, 39, 40)  # tab:red
BASELINE_COLOURS = [(255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194),
                    (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # tab: colours without blue and red
BASELINE_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h"]  # matplotlib's; PIL draws the first four
FRONT_PANEL = (520, 400)  # PIL plot area (pixels) for two metrics
MATRIX_PANEL = (240, 190)  # PIL plot area of one pairwise panel for more metrics


def _axis_label(name: str, higher_is_better: bool) -> str:
    return f"{name} ({'higher' if higher_is_better else 'lower'} is better)"


def _front_data(front: Sequence[tuple[str, Sequence[float]]], metrics: Sequence[tuple[str, bool]],
                baselines: Mapping[str, Sequence[float]] | None, knee: int | None):
    """The checked inputs as plain lists: ``(labels, values, baselines)``, values as floats."""
    n = len(metrics)
    if n < 2:
        raise ValueError(f"a front plot needs at least two metrics, got {n}")
    labels, values = [], []
    for i, (label, point) in enumerate(front):
        if len(point) != n:
            raise ValueError(f"front member {i} ({label!r}) has {len(point)} values, expected {n} (one per metric)")
        labels.append(str(label))
        values.append([float(v) for v in point])
    base: dict[str, list[float]] = {}
    for name, point in (baselines or {}).items():
        if len(point) != n:
            raise ValueError(f"baseline {name!r} has {len(point)} values, expected {n} (one per metric)")
        base[str(name)] = [float(v) for v in point]
    if knee is not None and not 0 <= knee < len(values):
        raise ValueError(f"knee {knee} is not the index of a front member (there are {len(values)})")
    return labels, values, base


def save_front_plot(front: Sequence[tuple[str, Sequence[float]]], metrics: Sequence[tuple[str, bool]],
                    path: str | Path, baselines: Mapping[str, Sequence[float]] | None = None,
                    knee: int | None = None, backend: str | None = None) -> Path:
    """Write a PNG plot of a Pareto front to ``path``.

    ``front`` lists ``(label, values)`` per member, one value per metric (callers pass short labels,
    e.g. ``"#0"``); ``metrics`` lists ``(name, higher_is_better)``. With two metrics, one scatter plot
    (x the first metric, y the second): the members as filled markers joined in order of x, each with
    its label; ``baselines`` (name -> one value per metric) as hollow markers with their names; the
    member at index ``knee`` highlighted (legend entry "knee"). With more metrics, a matrix of pairwise
    scatter plots (row ``i``, column ``j``: x metric ``j``, y metric ``i``; the diagonal names the
    metric). Non-finite values are not drawn. An empty front still gives a plot (baselines and the note
    "empty front"). ``backend``: ``"matplotlib"``, ``"pil"`` or ``None`` (matplotlib when installed,
    else PIL). Raises ``ValueError`` for fewer than two metrics, a point without one value per
    metric, or a ``knee`` that is not a member's index."""
    backend = _backend(backend)
    labels, values, base = _front_data(front, metrics, baselines, knee)
    metrics = [(str(name), bool(high)) for name, high in metrics]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if backend == "pil":
        _front_plot_pil(labels, values, metrics, base, knee, path)
    else:
        _front_plot_matplotlib(labels, values, metrics, base, knee, path)
    return path


def _finite_pair(point: list[float], x: int, y: int) -> bool:
    return math.isfinite(point[x]) and math.isfinite(point[y])


def _front_order(values: list[list[float]], x: int, y: int) -> list[int]:
    """The members drawable on the panel (x metric ``x``, y metric ``y``), in order of their x value."""
    return sorted((i for i, p in enumerate(values) if _finite_pair(p, x, y)), key=lambda i: values[i][x])


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _front_panel_matplotlib(ax, labels: list[str], values: list[list[float]], base: dict[str, list[float]],
                            knee: int | None, x: int, y: int, font_size: float) -> None:
    order = _front_order(values, x, y)
    if order:
        ax.plot([values[i][x] for i in order], [values[i][y] for i in order], "-", color=_hex(FRONT_LINE),
                linewidth=1.5, zorder=2)
        ax.plot([values[i][x] for i in order], [values[i][y] for i in order], "o", color=_hex(FRONT_COLOUR),
                markersize=7, zorder=3, label="front")
        for i in order:
            ax.annotate(labels[i], (values[i][x], values[i][y]), textcoords="offset points", xytext=(5, 5),
                        fontsize=font_size)
    if not values:
        ax.text(0.5, 0.75, "empty front", transform=ax.transAxes, ha="center", va="center",
                fontsize=font_size + 3, color="dimgray", zorder=5,
                bbox={"facecolor": "white", "edgecolor": "dimgray", "boxstyle": "round"})
    if knee is not None and _finite_pair(values[knee], x, y):
        ax.plot([values[knee][x]], [values[knee][y]], "*", color=_hex(KNEE_COLOUR), markersize=18, zorder=4,
                label="knee")
    for k, (name, point) in enumerate(base.items()):
        if _finite_pair(point, x, y):
            colour = _hex(BASELINE_COLOURS[k % len(BASELINE_COLOURS)])
            ax.plot([point[x]], [point[y]], BASELINE_MARKERS[k % len(BASELINE_MARKERS)], markersize=9,
                    markerfacecolor="none", markeredgecolor=colour, markeredgewidth=2, zorder=3, label=name)
            ax.annotate(name, (point[x], point[y]), textcoords="offset points", xytext=(6, -10),
                        fontsize=font_size, color=colour)
    ax.set_xlim(*_value_range([p[x] for p in [*values, *base.values()]]))
    ax.set_ylim(*_value_range([p[y] for p in [*values, *base.values()]]))
    ax.grid(True, alpha=0.3)


def _front_plot_matplotlib(labels: list[str], values: list[list[float]], metrics: list[tuple[str, bool]],
                           base: dict[str, list[float]], knee: int | None, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas for PNG

    n = len(metrics)
    title = f"Pareto front ({len(values)} member{'' if len(values) == 1 else 's'})"
    if n == 2:
        fig = Figure(figsize=(7, 5))
        ax = fig.add_subplot(1, 1, 1)
        _front_panel_matplotlib(ax, labels, values, base, knee, 0, 1, font_size=8)
        ax.set_xlabel(_axis_label(*metrics[0]))
        ax.set_ylabel(_axis_label(*metrics[1]))
        ax.set_title(title)
        if values or base:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
        return
    fig = Figure(figsize=(2.6 * n, 2.4 * n))
    handles: dict = {}
    for i in range(n):
        for j in range(n):
            ax = fig.add_subplot(n, n, i * n + j + 1)
            if i == j:
                ax.text(0.5, 0.5, _axis_label(*metrics[i]).replace(" (", "\n("), transform=ax.transAxes,
                        ha="center", va="center", fontsize=10, wrap=True)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            _front_panel_matplotlib(ax, labels, values, base, knee, j, i, font_size=6)
            ax.tick_params(labelsize=7)
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)  # one legend for the figure
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=8, frameon=False)
    fig.suptitle(title + ": row metric (y) against column metric (x)")
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")


def _marker(draw, x: float, y: float, shape: str, r: float, fill=None, outline=None, width: int = 1) -> None:
    """A PIL marker centred on ``(x, y)``: a circle, square, triangle or diamond of radius ``r``."""
    if shape == "s":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill, outline=outline, width=width)
    elif shape == "^":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill, outline=outline, width=width)
    elif shape == "D":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill, outline=outline, width=width)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=outline, width=width)


def _baseline_style(k: int) -> tuple[tuple[int, int, int], str]:
    return BASELINE_COLOURS[k % len(BASELINE_COLOURS)], "osD^"[k % 4]


def _axis_ticks(values: list[list[float]], base: dict[str, list[float]], m: int,
                length: int, spacing: int) -> tuple[tuple[float, float], list[float], float]:
    """Metric ``m``'s axis over ``length`` pixels: its range, and ticks about ``spacing`` pixels apart."""
    lo, hi = _value_range([p[m] for p in [*values, *base.values()]])
    ticks, step = _nice_ticks(lo, hi, count=max(3, length // spacing))
    return (lo, hi), ticks, step


def _front_panel_pil(draw, font, labels: list[str], values: list[list[float]], base: dict[str, list[float]],
                     knee: int | None, x: int, y: int, box: tuple[int, int, int, int]) -> None:
    """One scatter panel (x metric ``x``, y metric ``y``) with its ticks, in the plot area ``box``
    (left, top, width, height); tick labels go left of and below it."""
    left, top, plot_w, plot_h = box
    (x_lo, x_hi), x_ticks, x_step = _axis_ticks(values, base, x, plot_w, 100)
    (y_lo, y_hi), y_ticks, y_step = _axis_ticks(values, base, y, plot_h, 80)

    def px(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * plot_w

    def py(v: float) -> float:
        return top + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h

    for v in y_ticks:
        label = _tick_label(v, y_step)
        draw.line([(left, py(v)), (left + plot_w, py(v))], fill=(230, 230, 230))
        draw.line([(left - 4, py(v)), (left, py(v))], fill="black")
        tw, th = _text_size(font, label)
        draw.text((left - 6 - tw, py(v) - th // 2 - 1), label, fill="black", font=font)
    for v in x_ticks:
        label = _tick_label(v, x_step)
        draw.line([(px(v), top), (px(v), top + plot_h)], fill=(230, 230, 230))
        draw.line([(px(v), top + plot_h), (px(v), top + plot_h + 4)], fill="black")
        draw.text((px(v) - _text_size(font, label)[0] // 2, top + plot_h + 6), label, fill="black", font=font)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for k, (name, point) in enumerate(base.items()):
        if _finite_pair(point, x, y):
            colour, shape = _baseline_style(k)
            bx, by = px(point[x]), py(point[y])
            _marker(draw, bx, by, shape, 6, outline=colour, width=2)
            draw.text((bx + 8, by + 2), name, fill=colour, font=font)
    order = _front_order(values, x, y)
    if len(order) > 1:
        draw.line([(px(values[i][x]), py(values[i][y])) for i in order], fill=FRONT_LINE, width=2)
    for i in order:
        mx, my = px(values[i][x]), py(values[i][y])
        if i == knee:
            _marker(draw, mx, my, "o", 8, fill=KNEE_COLOUR)
        else:
            _marker(draw, mx, my, "o", 5, fill=FRONT_COLOUR)
        draw.text((mx + 7, my - _line_height(font) - 1), labels[i], fill="black", font=font)
    if not values:
        note = "empty front"
        tw, th = _text_size(font, note)
        nx, ny = left + (plot_w - tw) // 2, top + plot_h // 4 - th // 2
        draw.rectangle([nx - PAD, ny - PAD, nx + tw + PAD, ny + th + PAD], fill="white", outline=(105, 105, 105))
        draw.text((nx, ny), note, fill=(105, 105, 105), font=font)


def _front_plot_pil(labels: list[str], values: list[list[float]], metrics: list[tuple[str, bool]],
                    base: dict[str, list[float]], knee: int | None, path: Path) -> None:
    from PIL import Image, ImageDraw

    font = _font()
    title_font = _font(FONT_SIZE + 2)
    line_h = _line_height(font)
    n = len(metrics)
    legend: list[tuple[str, tuple[int, int, int], str, bool]] = []  # text, colour, shape, filled
    if values:
        legend.append(("front", FRONT_COLOUR, "o", True))
    if knee is not None:
        legend.append(("knee", KNEE_COLOUR, "o", True))
    legend += [(_wrap(font, name, MAX_LABEL_WIDTH, max_lines=1)[0], *_baseline_style(k), False)
               for k, name in enumerate(base)]
    legend_w = (2 * PAD + 20 + max(_text_size(font, t)[0] for t, _, _, _ in legend) + PAD) if legend else PAD
    plot_w, plot_h = FRONT_PANEL if n == 2 else MATRIX_PANEL
    tick_w = 2 * PAD + max(_text_size(font, _tick_label(v, step))[0]  # room for any panel's y tick labels
                           for m in range(n) for _, ticks, step in [_axis_ticks(values, base, m, plot_h, 80)]
                           for v in ticks)
    cell_w, cell_h = tick_w + plot_w + PAD, plot_h + line_h + 3 * PAD  # a panel with its tick labels
    label_w = line_h + PAD if n == 2 else 0  # the rotated y axis label
    top = PAD + _line_height(title_font) + 2 * PAD
    bottom = line_h + 2 * PAD if n == 2 else PAD
    cols = 1 if n == 2 else n
    width = PAD + label_w + cols * cell_w + legend_w
    height = top + cols * cell_h + bottom

    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if n == 2:
        left = PAD + label_w + tick_w
        _front_panel_pil(draw, font, labels, values, base, knee, 0, 1, (left, top, plot_w, plot_h))
        x_label = _wrap(font, _axis_label(*metrics[0]), plot_w, max_lines=1)[0]
        draw.text((left + (plot_w - _text_size(font, x_label)[0]) // 2, top + plot_h + line_h + 2 * PAD),
                  x_label, fill="black", font=font)
        _vertical_text(canvas, font, _axis_label(*metrics[1]), PAD, top, plot_h)
    else:
        for i in range(n):
            for j in range(n):
                left, cell_top = PAD + j * cell_w + tick_w, top + i * cell_h
                if i == j:  # the diagonal names the metric
                    draw.rectangle([left, cell_top, left + plot_w, cell_top + plot_h], outline=(180, 180, 180))
                    lines = [*_wrap(font, metrics[i][0], plot_w - 2 * PAD, max_lines=2),
                             f"({'higher' if metrics[i][1] else 'lower'} is better)"]
                    ly = cell_top + (plot_h - len(lines) * line_h) // 2
                    for k, line in enumerate(lines):
                        draw.text((left + (plot_w - _text_size(font, line)[0]) // 2, ly + k * line_h), line,
                                  fill="black", font=font)
                else:
                    _front_panel_pil(draw, font, labels, values, base, knee, j, i, (left, cell_top, plot_w, plot_h))
    ly = top + PAD
    x0 = width - legend_w + 2 * PAD
    for text, colour, shape, filled in legend:
        y = ly + line_h // 2
        if filled:
            _marker(draw, x0 + 8, y, shape, 5, fill=colour)
        else:
            _marker(draw, x0 + 8, y, shape, 5, outline=colour, width=2)
        draw.text((x0 + 20, ly), text, fill="black", font=font)
        ly += line_h + 2
    title = f"Pareto front ({len(values)} member{'' if len(values) == 1 else 's'})"
    title = _wrap(title_font, title, width - 2 * PAD, max_lines=1)[0]
    draw.text(((width - _text_size(title_font, title)[0]) // 2, PAD), title, fill="black", font=title_font)
    canvas.save(path, format="PNG")
