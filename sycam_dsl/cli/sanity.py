"""``sycam-dsl sanity``: the model-parameter randomization check of a search's result.

Reads ``RESULT_DIR/result.json`` (its expression and settings: model, weights, layer, size, images),
re-initializes the model's layers from the target layer to the output (``cam.sanity``) and prints,
for the result's expression and the baselines, the mean Spearman rank correlation and SSIM between
the heatmaps before and after. ``--data-randomized MODEL_FILE`` adds the data-randomization test
(``cam.datarand``): the same figures between the result's model and MODEL_FILE, the same model
trained on permuted labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..baselines import SEARCH_BASELINES
from ..cam.sanity import DEFAULT_SANITY_IMAGES, REFERENCE, SPEARMAN_MARGIN
from ..errors import SycamError
from ..util.files import atomic_write_json
from .options import (
    DEFAULT_DEVICE,
    add_chunk_size,
    add_precision,
    add_quiet,
    add_reshape,
    chunk_size_from,
    nonnegative_int,
    output_file,
    positive_int,
    reshape_from,
    runtime_from,
    warn,
)

SYCAM = "SyCAM"


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Model-parameter randomization check (Adebayo et al. 2018, Quantus's MPRT) of a search's result: "
        "re-initialize the model's layers from the target layer to the output (modules in forward order; "
        "reset_parameters(), BatchNorm statistics reset too) and compare the heatmaps of the result's "
        "expression and of GradCAM, GradCAM++, ScoreCAM and AblationCAM before and after, per image: mean "
        "Spearman rank correlation and mean SSIM (lower = more dependent on the learned parameters). An "
        f"expression whose Spearman is more than {SPEARMAN_MARGIN} above {REFERENCE}'s gets a warning: it may score "
        "well on a metric while explaining the input rather than the model. The check shows dependence on "
        "learned parameters; it does not show faithfulness, and methods that mostly follow the activations' "
        "layout (edge-detector-like maps) pass it poorly. The classes explained are the original model's "
        "predictions.")
    p.add_argument("result", metavar="RESULT_DIR", help="output folder of sycam-dsl synth (holding result.json), "
                                                        "or the result.json file")
    p.add_argument("--images", type=positive_int, default=DEFAULT_SANITY_IMAGES, metavar="N",
                   help=f"how many of the result's test-split images to check (all its images when it has no test "
                        f"split), spread evenly over them (default {DEFAULT_SANITY_IMAGES})")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the re-initialization (default 0)")
    p.add_argument("--start", metavar="PATH",
                   help="randomize from this module (dotted path) to the output instead of from the target layer")
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"torch device (default {DEFAULT_DEVICE})")
    p.add_argument("--json", metavar="FILE", help="also write the figures (per image too) as JSON")
    p.add_argument("--data-randomized", metavar="MODEL_FILE",
                   help="also run the data-randomization test: compare the heatmaps under the result's model and "
                        "under MODEL_FILE, a state-dict file for the same model trained on permuted labels "
                        "(sycam-dsl train-bundled --permute-labels SEED --out MODEL_FILE), loaded like --weights; "
                        "the original model's predicted classes are explained under both")
    add_reshape(p)
    add_chunk_size(p)
    add_precision(p)
    add_quiet(p)
    p.set_defaults(handler=run)


def read_result(path: str) -> tuple[Path, dict[str, Any]]:
    """(the result.json file, its content) of a search's output folder or of the file itself."""
    p = Path(path)
    f = p / "result.json" if p.is_dir() else p
    if not f.is_file():
        raise SycamError(f"no result.json in {path!r}; give the output folder of a sycam-dsl synth run")
    try:
        data = json.loads(f.read_text())
    except ValueError as e:
        raise SycamError(f"{f} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise SycamError(f"{f} has no 'settings' object; is it the result.json of a sycam-dsl synth run?")
    return f, data


def _needed(data: dict[str, Any], key: str, f: Path) -> Any:
    value = data["settings"].get(key)
    if value is None:
        raise SycamError(f"{f}: settings.{key} is missing, so the search cannot be reproduced")
    return value


def _model(data: dict[str, Any], f: Path, device: str, weights: str | None = None) -> Any:
    """The result's model, from ``weights`` instead of the result's weights when given."""
    from ..bundled import load_bundled_model
    from ..models import load_model

    s = data["settings"]
    weights = s.get("weights") if weights is None else weights
    if s.get("bundled_benchmark") or s.get("model_source") == "bundled":
        return load_bundled_model(device, weights)
    if s.get("model_source") == "torchscript":
        raise SycamError(f"{f}: settings.model names the TorchScript file only by its stem ({s.get('model')!r}), "
                         f"and TorchScript runs no hooks to find the layers to randomize")
    return load_model(str(_needed(data, "model", f)), weights, device)


def _image_folder(data: dict[str, Any], f: Path) -> Path:
    """The result's image folder: a relative ``settings.images`` is taken from the folder the search
    ran in (``settings.working_dir``), not from this one; the current folder only for results that
    do not record it (``_check_files`` then catches other images)."""
    given = str(_needed(data, "images", f))
    recorded = data["settings"].get("working_dir")
    folder = Path(recorded) / given if isinstance(recorded, str) else Path(given)
    if not folder.is_dir():
        where = f" (from {recorded})" if isinstance(recorded, str) and not Path(given).is_absolute() else ""
        raise SycamError(f"{f}: the result's image folder {given!r}{where} does not exist here")
    return folder


def _check_files(data: dict[str, Any], f: Path, folder: Path, files: list[str]) -> None:
    """Refuse an image folder whose images are not the result's: another number of images, or
    other test-split files at the test split's positions."""
    total = (data.get("images") or {}).get("total")
    if isinstance(total, int) and total != len(files):
        raise SycamError(f"{f}: the image folder {str(folder)!r} holds {len(files)} images, the result's search "
                         f"read {total}; give sanity the result of a search on these images")
    split = data.get("test_split") or {}
    indices, names = split.get("indices") or [], split.get("files")
    if not isinstance(names, list) or len(names) != len(indices) or not all(
            isinstance(i, int) and 0 <= i < len(files) for i in indices):
        return  # an older result without the names; the indices are checked by the caller
    for i, name in zip(indices, names):
        if files[i] != name:
            raise SycamError(f"{f}: the image folder {str(folder)!r} is not the one the search read: its image {i} "
                             f"is {files[i]!r}, the result's test split has {name!r} there")


def _images(data: dict[str, Any], f: Path, model: Any, n: int) -> Any:
    """At most ``n`` of the result's test-split images ``[n, 3, H, W]`` (all its images when the
    split is off), spread evenly over them."""
    from ..bundled import bundled_images
    from ..cam.images import load_images
    from ..cam.sanity import spread

    s = data["settings"]
    if s.get("bundled_benchmark"):
        total = (data.get("images") or {}).get("total")
        if not isinstance(total, int) or total < 1:
            raise SycamError(f"{f}: images.total is missing, so the bundled images cannot be reproduced")
        images = bundled_images(total).images
    else:
        folder = _image_folder(data, f)
        size = _needed(data, "size", f)
        if not isinstance(size, int) or size < 1:
            raise SycamError(f"{f}: settings.size must be a positive integer, got {size!r}")
        loaded = load_images(folder, size=size, normalize=model.normalize)
        _check_files(data, f, folder, loaded.files)
        images = loaded.images
    held_out = (data.get("test_split") or {}).get("indices") or []
    if held_out:
        if not all(isinstance(i, int) and 0 <= i < images.shape[0] for i in held_out):
            raise SycamError(f"{f}: test_split.indices do not fit the {images.shape[0]} images found; the image "
                             f"folder changed since the search")
        images = images[held_out]
    return images[spread(images.shape[0], n)]


def _data_check(args: argparse.Namespace, model: Any, randomized: Any, layer: str, images: Any,
                methods: dict[str, Any], texts: dict[str, str], runtime: Any, reshape: Any) -> dict | None:
    """The data-randomization check against ``--data-randomized``'s model (None without it)."""
    from ..cam.datarand import data_randomization_check

    if randomized is None:
        return None
    return data_randomization_check(model, randomized, layer, images, methods, texts, SYCAM,
                                    source=str(args.data_randomized), device=args.device,
                                    chunk_size=chunk_size_from(args), progress=not args.quiet, runtime=runtime,
                                    reshape=reshape)


def run(args: argparse.Namespace) -> int:
    """Run the check and print the table; a warning line when the expression is flagged."""
    from ..baselines import baseline
    from ..cam.datarand import data_check_lines
    from ..cam.sanity import check_lines, check_result, check_warnings
    from ..lang.sexpr import parse_expr
    from ..lang.terminals import terminal_types

    f, data = read_result(args.result)
    out = output_file(args.json, (".json",)) if args.json else None
    expression = data.get("expression")
    if not isinstance(expression, str):
        raise SycamError(f"{f} holds no expression (its search scored no candidate)")
    if data.get("per_class"):
        warn(["a per-class result: checking its fallback expression only"])
    node = parse_expr(expression, terminal_types(), source=str(f))
    layer = _needed(data, "layer", f)
    reshape = reshape_from(args, (f, data["settings"]))
    model = _model(data, f, args.device)
    # a bad file stops the command before any heatmap is computed
    randomized = _model(data, f, args.device, args.data_randomized) if args.data_randomized else None
    images = _images(data, f, model, args.images)
    methods = {SYCAM: node, **{b: baseline(b).node for b in SEARCH_BASELINES}}
    texts = {SYCAM: expression, **{b: baseline(b).expression for b in SEARCH_BASELINES}}
    # converted in memory only: the randomized model's file would never be read again
    runtime = replace(runtime_from(args), cache_dir=None)
    check = check_result(model, layer, images, methods, texts, SYCAM, seed=args.seed, start=args.start,
                         device=args.device, chunk_size=chunk_size_from(args), progress=not args.quiet,
                         runtime=runtime, reshape=reshape)
    data_check = _data_check(args, model, randomized, layer, images, methods, texts, runtime, reshape)
    print("\n".join(check_lines(check)))
    warn(check_warnings(check))
    if data_check is not None:
        print("\n".join(data_check_lines(data_check)))
        warn(check_warnings(data_check, "the training labels"))
    if out is not None:
        extra = {"data_randomization": data_check} if data_check is not None else {}
        atomic_write_json(out, {"result": str(f), "expression": expression, **check, **extra})
        print(f"wrote {out}", file=sys.stderr)
    return 0
