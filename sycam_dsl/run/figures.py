"""The pictures of a synthesis report, as pure functions over plain data.

* :func:`save_heatmap_grid`: a grid of images (rows) by CAM methods (columns), each heatmap blended
  over its image with the jet colormap of :mod:`sycam_dsl.cam.overlay`. It is a composition of
  images, not a plot, so PIL pastes the pixels as they are (no resampling by a plotting library).
* :func:`save_score_plot`: the incumbent's score over time as a step function, with the baselines'
  scores as dashed lines.
* :func:`save_generalization_plot`: each incumbent's mean on the searched images and on the test
  split against search time, one panel per metric (the generalization curve).
* :func:`save_front_plot`: the Pareto front of a multi-objective search over two metrics as a scatter
  plot (members joined in order, baselines as hollow markers, the knee highlighted), over more metrics
  as a matrix of pairwise scatter plots.

The plots are drawn with matplotlib alone, on its Agg canvas without pyplot (headless, no global
state); matplotlib is imported on the first plot so that importing this module stays light.
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


def save_score_plot(history: Sequence[tuple[float, float]], path: str | Path, metric: str,
                    higher_is_better: bool, baselines: Mapping[str, float] | None = None,
                    x_label: str = "seconds", end: float | None = None) -> Path:
    """Write a PNG plot of the incumbent's score over time to ``path``.

    ``history`` lists ``(time, score)`` each time a new incumbent was found; it is drawn as a step
    function, extended to ``end`` when given (e.g. the time the search stopped). ``baselines``
    (name -> score) are dashed horizontal lines with their names. An empty history still gives a plot
    (baselines and the note "no candidate scored")."""
    points = _clean_history(history)
    baselines = {str(k): float(v) for k, v in (baselines or {}).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def save_generalization_plot(seconds: Sequence[float], searched: Mapping[str, Sequence[float]],
                             test: Mapping[str, Sequence[float]], higher: Mapping[str, bool], path: str | Path,
                             chosen: int | None = None, best: Mapping[str, int] | None = None,
                             end: float | None = None) -> Path:
    """Write a PNG of the generalization curve to ``path``: per metric (a panel each), the incumbents'
    means on the searched images and on the test split (``searched``/``test``: metric -> one value per
    incumbent) against their ``seconds``, as step functions extended to ``end``; the ``chosen``
    incumbent circled and each metric's ``best`` one on the test split starred."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas for PNG

    names = list(searched)
    fig = Figure(figsize=(7, 3.2 * len(names) + 0.6))
    for row, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, row + 1)
        values = []
        for label, ys, colour in (("searched images", searched[name], "tab:blue"),
                                  ("test split", test[name], "tab:orange")):
            xs, steps = _step_points(list(zip(map(float, seconds), map(float, ys))), end)
            ax.step(xs, steps, where="post", color=colour, linewidth=2, label=label)
            ax.plot(seconds, ys, "o", color=colour, markersize=4)
            values += [float(v) for v in ys]
        if chosen is not None:
            ax.plot([seconds[chosen]], [test[name][chosen]], "o", markersize=12, markerfacecolor="none",
                    markeredgecolor="tab:red", markeredgewidth=2, label="chosen (test)")
        if best is not None and name in best:
            k = best[name]
            ax.plot([seconds[k]], [test[name][k]], "*", markersize=14, color="tab:green",
                    label="best on the test split")
        ax.set_ylim(*_value_range(values))
        ax.set_xlabel("seconds of search")
        ax.set_ylabel(name)
        ax.set_title(f"{name} of each incumbent ({'higher' if higher[name] else 'lower'} is better)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


FRONT_COLOUR = (31, 119, 180)  # the members' filled markers (matplotlib's tab:blue)
FRONT_LINE = (158, 190, 218)  # the line joining them: lighter, so a marker's colour is the members' own
KNEE_COLOUR = (214, 39, 40)  # tab:red
BASELINE_COLOURS = [(255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194),
                    (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # tab: colours without blue and red
BASELINE_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h"]


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
                    knee: int | None = None) -> Path:
    """Write a PNG plot of a Pareto front to ``path``.

    ``front`` lists ``(label, values)`` per member, one value per metric (callers pass short labels,
    e.g. ``"#0"``); ``metrics`` lists ``(name, higher_is_better)``. With two metrics, one scatter plot
    (x the first metric, y the second): the members as filled markers joined in order of x, each with
    its label; ``baselines`` (name -> one value per metric) as hollow markers with their names; the
    member at index ``knee`` highlighted (legend entry "knee"). With more metrics, a matrix of pairwise
    scatter plots (row ``i``, column ``j``: x metric ``j``, y metric ``i``; the diagonal names the
    metric). Non-finite values are not drawn. An empty front still gives a plot (baselines and the note
    "empty front"). Raises ``ValueError`` for fewer than two metrics, a point without one value per
    metric, or a ``knee`` that is not a member's index."""
    labels, values, base = _front_data(front, metrics, baselines, knee)
    metrics = [(str(name), bool(high)) for name, high in metrics]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
