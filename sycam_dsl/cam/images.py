"""Loading an image folder (flat, or one subfolder per class) and its optional ground-truth masks.

Each image is resized so its shorter side is ``size`` (bilinear, antialiased) and center-cropped to
``size x size``; a mask gets the same geometry with nearest-neighbour resizing, so pixels stay aligned.
Order is deterministic: sorted by relative path (class folder, then file name).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..models.loaded import IMAGENET, Normalization
from .errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError)
#: PIL modes of 8-bit channels, which ``convert("RGB")`` maps exactly.
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                              "LAB", "HSV"})
#: 16-bit integer modes (PNG and TIFF grayscale).
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: Float pixels up to this share above a range's top still mean that range (rounding, a resampled
#: overshoot): a [0, 1] image with one pixel at 1.0005 is not a nearly black [0, 255] one.
_FLOAT_TOLERANCE = 0.01
#: A float image whose brightest pixel is between the [0, 1] range (with its tolerance) and this is
#: read as [0, 255] with a warning: it could also be a [0, 1] image that overshoots.
_FLOAT_AMBIGUOUS_BELOW = 2.0
log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """``images`` ``[N, 3, size, size]`` (normalized), ``files`` relative paths in the same order,
    ``labels`` ``[N]`` indices into ``classes`` when the folder has one subfolder per class,
    ``masks`` ``[N, size, size]`` bool when a masks folder was given."""

    images: torch.Tensor
    files: list[str]
    root: Path
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.files)


def _listing(folder: Path) -> tuple[list[Path], list[str] | None, list[int] | None]:
    """(image paths, class names or None, labels or None), sorted."""
    if not folder.is_dir():
        raise ImageError(f"image folder {str(folder)!r} does not exist or is not a folder")
    entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    dirs = [p for p in entries if p.is_dir()]
    if files and dirs:
        raise ImageError(f"{str(folder)!r} has both image files ({files[0].name}, ...) and subfolders ({dirs[0].name}, "
                         f"...); put every image in a class subfolder, or none")
    if not dirs:
        if not files:
            raise ImageError(f"no images in {str(folder)!r} (looked for {', '.join(IMAGE_SUFFIXES)})")
        return files, None, None
    paths, labels = [], []
    for label, d in enumerate(dirs):
        found = sorted((p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)
        if not found:
            raise ImageError(f"class folder {str(d)!r} has no images (looked for {', '.join(IMAGE_SUFFIXES)})")
        paths += found
        labels += [label] * len(found)
    return paths, [d.name for d in dirs], labels


def _open(path: Path, what: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except _READ_ERRORS as e:
        raise ImageError(f"cannot read {what} {str(path)!r}: {e}") from None


def _float_scale(lo: float, hi: float, path: Path) -> float:
    """The range a float image's values ``[lo, hi]`` are in: 1, 255 or 65535, each with a small tolerance
    above its top; one warning line when the values could mean two ranges."""
    scale = next((s for s in (1.0, 255.0, 65535.0) if lo >= 0 and hi <= s * (1 + _FLOAT_TOLERANCE)), None)
    if scale is None:
        raise ImageError(f"image {str(path)!r} (float) has values in [{lo:g}, {hi:g}]; scale it to [0, 1] "
                         f"or save it as an 8- or 16-bit image")
    if scale == 255.0 and hi < _FLOAT_AMBIGUOUS_BELOW:
        log.warning("image %s (float) has values up to %.4g: read as 0..255 (nearly black); scale it to [0, 1] "
                    "if that is its range", path, hi)
    return scale


def _pixels(im: Image.Image, path: Path) -> torch.Tensor:
    """``[3, H, W]`` pixels in ``[0, 1]`` (float32) of an image of any supported mode.

    8-bit modes go through ``convert("RGB")``; 16-bit grayscale is scaled by 65535. Float grayscale
    (``F``, e.g. TIFF) is taken as ``[0, 1]``, ``[0, 255]`` or ``[0, 65535]`` by its range, and 32-bit
    integer grayscale (``I``) as 8-bit when its values fit 0..255 (one warning line: the file does not
    say its depth), else as 16-bit (``convert("RGB")`` would clip them to white or black). Anything
    else is refused."""
    if im.mode in _EIGHT_BIT_MODES:
        return TF.pil_to_tensor(im.convert("RGB"))
    arr = np.asarray(im)
    if im.mode in _SIXTEEN_BIT_MODES or im.mode == "I":
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError(f"image {str(path)!r} ({im.mode}) has values outside 0..65535; save it as an 8- or "
                             f"16-bit image")
        scale = 65535.0
        if im.mode == "I" and arr.size and int(arr.max()) <= 255:
            scale = 255.0
            log.warning("image %s is a 32-bit integer image with values in 0..%d: read as 8-bit (0..255), not "
                        "16-bit; save it as an 8- or 16-bit image to say which", path, int(arr.max()))
        gray: np.ndarray = arr.astype(np.float32) / scale
    elif im.mode == "F":
        if not np.isfinite(arr).all():
            raise ImageError(f"image {str(path)!r} (float) has NaN or infinite pixels")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        gray = arr.astype(np.float32) / _float_scale(lo, hi, path)
    else:
        raise ImageError(f"image {str(path)!r} has PIL mode {im.mode!r}, which sycam-dsl does not read; save it "
                         f"as an 8-bit RGB or grayscale image")
    return torch.from_numpy(np.ascontiguousarray(gray))[None].expand(3, -1, -1).clone()


def _as_unit(t: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` or float ``[0, 1]`` pixels as float32 ``[0, 1]``."""
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


def _geometry(t: torch.Tensor, size: int, interpolation: InterpolationMode) -> torch.Tensor:
    """Shorter side to ``size``, then a centered ``size x size`` crop; ``t`` ``[C, H, W]``."""
    t = TF.resize(t, [size], interpolation=interpolation, antialias=interpolation != InterpolationMode.NEAREST_EXACT)
    return TF.center_crop(t, [size, size])


def _mask_path(masks: Path, rel: Path) -> Path | None:
    for candidate in (masks / rel.with_suffix(".png"), masks / (rel.stem + ".png")):
        if candidate.is_file():
            return candidate
    return None


def _binary(im: Image.Image) -> np.ndarray:
    """A pixel is in the mask when its value is at least half the mask's maximum (so 0/1 and
    0/255 masks both work, and an anti-aliased edge splits at the middle)."""
    arr = np.asarray(im if im.mode in ("1", "L", "P", "I", "I;16") else im.convert("L"))
    if arr.dtype == bool:
        return arr
    return arr >= max(1, int(arr.max())) / 2


def load_images(folder: str | Path, size: int = 224, normalize: Normalization | Sequence | None = IMAGENET,
                masks: str | Path | None = None) -> ImageSet:
    """Load every image of ``folder`` as ``[N, 3, size, size]``, normalized with ``normalize``
    (a ``Normalization``, a ``(mean, std)`` pair, or None for ``[0, 1]`` pixels).

    ``masks``: a folder with one binary PNG per image, same stem (``masks/<class>/<stem>.png`` or
    ``masks/<stem>.png``), of the image's size."""
    if size < 1:
        raise ImageError(f"image size must be a positive integer, got {size}")
    if normalize is not None and not isinstance(normalize, Normalization):
        mean, std = normalize
        normalize = Normalization(tuple(mean), tuple(std))
    root = Path(folder)
    paths, classes, labels = _listing(root)
    mask_root = Path(masks) if masks is not None else None
    if mask_root is not None and not mask_root.is_dir():
        raise ImageError(f"mask folder {str(mask_root)!r} does not exist or is not a folder")
    images, mask_list = [], []
    for path in paths:
        im = _open(path, "image")
        t = _geometry(_pixels(im, path), size, InterpolationMode.BILINEAR)
        images.append(_as_unit(t).clamp(0, 1) if t.is_floating_point() else _as_unit(t))
        if images[-1].numel() and float(images[-1].amax()) == float(images[-1].amin()):
            log.warning("image %s is constant (every pixel %.4g): its heatmaps will be blank", path,
                        float(images[-1].amax()))
        if mask_root is None:
            continue
        rel = path.relative_to(root)
        mpath = _mask_path(mask_root, rel)
        if mpath is None:
            candidates = (mask_root / rel.with_suffix(".png"), mask_root / (rel.stem + ".png"))
            expected = dict.fromkeys(str(c) for c in candidates)  # one name when there is no class folder
            raise ImageError(f"no mask for image {str(path)!r}: expected {' or '.join(repr(e) for e in expected)}")
        m = _open(mpath, "mask")
        if m.size != im.size:
            raise ImageError(f"mask {str(mpath)!r} is {m.size[0]}x{m.size[1]} but image {str(path)!r} is "
                             f"{im.size[0]}x{im.size[1]} (width x height); they must match")
        binary = _binary(m)
        if not binary.any():
            raise ImageError(f"mask {str(mpath)!r} is empty (no object pixel): ground-truth metrics are undefined "
                             f"for image {str(path)!r}; fix the mask or leave the image out")
        mt = torch.from_numpy(binary.astype(np.uint8))[None]
        mask_list.append(_geometry(mt, size, InterpolationMode.NEAREST_EXACT)[0].bool())
        if not bool(mask_list[-1].any()):
            raise ImageError(f"mask {str(mpath)!r} has no object pixel left at {size}x{size} (its object is too "
                             f"small or outside the center crop); use a larger --size or leave the image out")
    x = torch.stack(images)
    if normalize is not None:
        x = normalize(x)
    return ImageSet(
        images=x,
        files=[p.relative_to(root).as_posix() for p in paths],
        root=root,
        labels=torch.tensor(labels, dtype=torch.long) if labels is not None else None,
        classes=classes,
        masks=torch.stack(mask_list) if mask_list else None,
    )
