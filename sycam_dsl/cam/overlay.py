"""Drawing a heatmap over its image, with a colour bar and a caption (``sycam-dsl explain``).

matplotlib is used when installed (``jet`` colormap, colour bar); otherwise PIL, which torchvision
already requires, draws the same overlay with a built-in jet colormap and a caption strip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ALPHA = 0.5
MIN_WIDTH = 320


def jet(h: np.ndarray) -> np.ndarray:
    """The jet colormap of ``[H, W]`` values in ``[0, 1]``: ``[H, W, 3]`` in ``[0, 1]``."""
    def ramp(x: float) -> np.ndarray:
        return np.clip(1.5 - np.abs(4 * h - x), 0, 1)
    return np.stack([ramp(3), ramp(2), ramp(1)], axis=-1)


_jet = jet  # the former private name


def save_overlay(image: torch.Tensor, heatmap: torch.Tensor, caption: list[str], out: str | Path) -> str:
    """Write ``image`` ``[3, H, W]`` (pixels in ``[0, 1]``) with ``heatmap`` ``[H, W]`` (in ``[0, 1]``)
    blended over it and ``caption`` lines under it. Returns the backend used."""
    img = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    h = heatmap.detach().float().clamp(0, 1).cpu().numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
    except ImportError:
        _save_pil(img, h, caption, out)
        return "pil"
    matplotlib.use("Agg")  # no display needed, whatever the user's default backend
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5.6))
    try:
        ax.imshow(img)
        shown = ax.imshow(h, cmap="jet", alpha=ALPHA, vmin=0, vmax=1)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="heatmap H")
        ax.set_title("\n".join(caption), fontsize=8, loc="left")
        fig.savefig(out, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "matplotlib"


def _save_pil(img: np.ndarray, h: np.ndarray, caption: list[str], out: Path) -> None:
    from PIL import Image, ImageDraw

    blend = (1 - ALPHA) * img + ALPHA * _jet(h)
    picture = Image.fromarray((blend * 255).round().astype(np.uint8))
    if picture.width < MIN_WIDTH:  # small inputs (e.g. 32 px) would leave no room for the caption
        f = -(-MIN_WIDTH // picture.width)
        # Pillow sets Image.NEAREST at import, unseen by its type hints; Image.Resampling needs Pillow >= 9.1.
        picture = picture.resize((picture.width * f, picture.height * f), Image.NEAREST)  # type: ignore[attr-defined]
    bar_h = 12
    ramp = _jet(np.linspace(0, 1, picture.width)[None].repeat(bar_h, 0))
    bar = Image.fromarray((ramp * 255).round().astype(np.uint8))
    line_h = 14
    canvas = Image.new("RGB", (picture.width, picture.height + bar_h + 4 + line_h * (len(caption) + 1)), "white")
    canvas.paste(picture, (0, 0))
    canvas.paste(bar, (0, picture.height + 2))
    draw = ImageDraw.Draw(canvas)
    y = picture.height + bar_h + 4
    draw.text((2, y), "H: 0 (blue) .. 1 (red)", fill="black")
    for i, line in enumerate(caption):
        draw.text((2, y + line_h * (i + 1)), line, fill="black")
    canvas.save(out)
