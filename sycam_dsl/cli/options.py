"""Options and argument types shared by the ``sycam-dsl`` commands, and what they turn into.

Each option is defined once here (its flag, default and help text); a command adds the groups it
takes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cam.compute import DEFAULT_CHUNK_SIZE
from ..errors import SycamError
from ..metrics.perturbation import DEFAULT_BLUR_SIGMA
from ..metrics.scoring import DEFAULT_BATCH_SIZE
from ..models.batching import AUTO
from ..models.precision import DEFAULT_PRECISION, PRECISIONS
from ..models.runtime import DEFAULT_RUNTIME, RUNTIMES

if TYPE_CHECKING:
    import torch

    from ..cam.store import TerminalStore
    from ..lang.ast import Node
    from ..models.runtime import RuntimeSpec

#: Defaults shared by several commands.
DEFAULT_DEVICE = "cpu"

MODEL_HELP = ("a torchvision classifier or segmentation name (resnet50, vit_b_16, swin_t, deeplabv3_resnet50, ...), "
              "efficientnet_lite0, bundled "
              "(the small CNN of the built-in benchmark), timm:NAME[,key=value...] (a timm model, pretrained=False, "
              "with --weights FILE or random:SEED; pip install \"sycam-dsl[timm]\"), a TorchScript file, or a "
              "factory package.module:function returning an nn.Module")
WEIGHTS_HELP = ("state-dict file (torch.save(model.state_dict(), FILE)); random:SEED for seeded random weights "
                "(demos and tests)")
IMAGES_HELP = "folder of images, or of one subfolder of images per class"
MASKS_HELP = "folder of binary PNG masks, one per image (gt_overlap, sch; the pixels of a segmentation:C target)"
CACHE_HELP = ("folder of the terminal store, which keeps computed terminals per image (default $SYCAM_DSL_CACHE "
              "or ~/.cache/sycam-dsl)")
CACHE_SIZE_HELP = ("size bound of the terminal store, such as 500MB or 4GB; the least recently used entries go "
                   "first (default $SYCAM_DSL_CACHE_SIZE or 2GB)")


# -- argument types ---------------------------------------------------------------------------------

def _number(convert: Callable[[str], Any], accept: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts a number and refuses, in one line, what ``accept`` does not."""
    def parse(text: str) -> Any:
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not accept(v):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return v
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
#: what torch's generators take (a larger seed overflowed deep inside torch)
MAX_SEED = 2**63 - 1
seed_int = _number(int, lambda v: abs(v) <= MAX_SEED, f"an integer seed of at most {MAX_SEED}")
_positive_int_or_auto = _number(int, lambda v: v >= 1, "a positive integer or auto")


def check_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse, in one line and before allocating, what needs more than the memory available now
    (``what`` needs about ``nbytes``; ``fix`` says what to change)."""
    from ..models.batching import available_host_memory
    from ..util.sizes import format_size

    available = available_host_memory()
    if available is not None and nbytes > available:
        raise SycamError(f"{what} needs at least {format_size(nbytes)} of memory, more than the "
                         f"{format_size(available)} available; {fix}")


def image_size(text: str) -> int:
    """``--size``: a positive integer whose images fit in memory (one image as float32, and its decoded
    copy, at the least)."""
    px = positive_int(text)
    try:
        check_memory(2 * 3 * 4 * px * px, f"one {px}x{px} image", "use a smaller --size")
    except SycamError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return px


def terminal_values_memory(names: Sequence[str], n: int, k: int, hw: tuple[int, int], copies: int = 1) -> int:
    """Bytes of ``copies`` sets of float32 stand-in values of terminals ``names`` (``Terminals.random``)."""
    from ..lang.terminals import TERMINALS
    from ..lang.types import Type

    per = sum(n * k * (1 if TERMINALS[t][0] == Type.VEC else hw[0] * hw[1]) for t in names if t in TERMINALS)
    return 4 * per * copies


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type=`` for a whole number from ``low`` to ``high``."""
    return _number(int, lambda v: low <= v <= high, f"a whole number from {low} to {high}")


def batch_size_arg(text: str) -> int | str:
    """A positive integer, or ``auto`` (the batch size is picked for the device)."""
    return AUTO if text.strip().lower() == AUTO else _positive_int_or_auto(text)
nonnegative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
#: inf and nan are refused here rather than deep in a metric
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite positive number")
nonnegative_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def size_bytes(text: str) -> int:
    """A size such as ``500MB`` or ``2GB`` in bytes."""
    from ..util.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def height_width(text: str) -> tuple[int, int]:
    try:
        h, w = (int(p) for p in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 7x7, got {text!r}") from None
    return h, w


# -- option groups ----------------------------------------------------------------------------------

def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model``, ``--weights``, ``--layer``, ``--size``, ``--device``."""
    p.add_argument("--model", required=required, metavar="NAME|FILE|module:fn", help=MODEL_HELP)
    p.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP)
    p.add_argument("--layer", metavar="PATH", help="target layer's dotted module path (default: the model's "
                                                   "default, e.g. layer4 for ResNets); PATH@last, PATH@first or "
                                                   "PATH@N (0-based, negative from the end) reads one call of a "
                                                   "module that runs more than once per forward pass, e.g. "
                                                   "_swish@last, efficientnet_lite0's default")
    add_reshape(p)
    p.add_argument("--size", type=image_size, metavar="PX",
                   help="images are resized (shorter side) and center-cropped to PX x PX (default: the model's "
                        "input size, 224 for most)")
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"torch device (default {DEFAULT_DEVICE})")


def add_reshape(p: argparse.ArgumentParser) -> None:
    """``--reshape``: how a layer with token or channels-last output is read as channel maps."""
    p.add_argument("--reshape", metavar="auto|none|module:fn",
                   help="how a target layer with token [N, T, C] or channels-last [N, h, w, C] output (vision "
                        "transformers) is read as [N, C, h, w]: auto recognises ViT/DeiT tokens (a square grid after "
                        "at most 8 prefix tokens) and Swin's channels-last maps, none takes the output as it is, "
                        "module:fn imports a callable like grad-cam's reshape_transform (it may only select and "
                        "move elements) (default auto; sanity, and export of a synth result folder: the search's "
                        "own, settings.reshape in result.json)")


def reshape_from(args: argparse.Namespace, result: tuple[Path, dict[str, Any]] | None = None) -> Any:
    """The ``cam.reshape`` reshape of ``--reshape`` (a ``module:fn`` callable imported now); without it,
    the one the search of ``result`` (its result.json, its settings) recorded, else ``auto``."""
    from ..cam.reshape import ReshapeError, parse_reshape

    recorded = result[1].get("reshape") if result is not None else None
    if args.reshape is not None or result is None or not isinstance(recorded, str):
        return parse_reshape(args.reshape or "auto")
    try:
        return parse_reshape(recorded)
    except ReshapeError as e:
        raise SycamError(f"{result[0]}: the search's reshape cannot be used here ({e}); pass --reshape "
                         f"auto|none|module:fn") from None


def add_chunk_size(p: argparse.ArgumentParser, follows_batch_size: bool = False) -> None:
    default = f"auto with --batch-size auto, else {DEFAULT_CHUNK_SIZE}" if follows_batch_size else DEFAULT_CHUNK_SIZE
    p.add_argument("--chunk-size", type=batch_size_arg, default=None, metavar="N|auto",
                   help=f"images / masked images / ablated copies per forward pass when computing terminals; "
                        f"auto: each loop picks the largest batch that fits on CUDA, on the CPU the largest whose "
                        f"largest layer fits in half the cache (default {default})")


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--runtime``: how the forward-only passes run."""
    p.add_argument("--precision", choices=tuple(PRECISIONS), default=DEFAULT_PRECISION,
                   help=f"precision of the forward passes of cic, abl and the metrics (gradients stay float32; "
                        f"default {DEFAULT_PRECISION}); bf16 runs on torch (autocast) or on OpenVINO with a CPU that "
                        f"has bf16 instructions, fp16 on torch")
    p.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
                   help="where the forward passes of cic, abl and the metrics run: auto (default) picks the fastest "
                        "of torch and the installed runtimes that convert the model, timed once per model; "
                        "onnxruntime and openvino run the model converted to ONNX (kept in the cache folder) on the "
                        "CPU; the gradient pass stays in torch")


def runtime_from(args: argparse.Namespace) -> RuntimeSpec:
    """``--runtime`` at ``--precision``, converted models kept in the cache folder (unless
    ``--no-cache``); a runtime that cannot run here is one line before any work."""
    from ..models.devices import resolve_device
    from ..models.runtime import RuntimeSpec, check_support

    precision = getattr(args, "precision", DEFAULT_PRECISION)
    runtime = getattr(args, "runtime", DEFAULT_RUNTIME)
    check_support(runtime, precision, resolve_device(getattr(args, "device", "cpu")))
    cache = None
    if not getattr(args, "no_cache", False):
        from ..cam.store import TerminalStore

        cache = TerminalStore(getattr(args, "cache_dir", None), getattr(args, "cache_size", None)).folder
    return RuntimeSpec(runtime, precision, cache)


def chunk_size_from(args: argparse.Namespace) -> int | str:
    """``--chunk-size``, else ``auto`` when ``--batch-size auto``, else the default."""
    if args.chunk_size is not None:
        return args.chunk_size
    return AUTO if getattr(args, "batch_size", None) == AUTO else DEFAULT_CHUNK_SIZE


def add_store_location(p: argparse.ArgumentParser) -> None:
    """``--cache-dir``, ``--cache-size``."""
    p.add_argument("--cache-dir", metavar="DIR", help=CACHE_HELP)
    p.add_argument("--cache-size", type=size_bytes, metavar="SIZE", help=CACHE_SIZE_HELP)


def add_cache_options(p: argparse.ArgumentParser) -> None:
    """``--cache-dir``, ``--cache-size``, ``--no-cache``."""
    add_store_location(p)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the terminal store")


TARGET_HELP = ("what is explained and scored (docs/cam-engine.md#targets): class (default: the --targets class), "
               "CLASS (that class for every image), classes:3,7 (the sum of their logits: multi-label), output:I "
               "(regression output I), segmentation:C (class C's logits summed over its predicted pixels, or over "
               "--masks), or module:function (a callable from the model's output [B, ...] to [B] scores)")


def target_arg(text: str) -> Any:
    """A ``--target`` spec (``models.targets.parse_target``): a ``Target``, or a class index as a 0-d tensor."""
    from ..models.errors import TargetError
    from ..models.targets import parse_target

    try:
        return parse_target(text)
    except TargetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_targets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", choices=("predicted", "labels"), default="predicted",
                   help="target class: the model's prediction (default), or the class-folder index (when the "
                        "folder's classes are the model's class indices in order)")
    p.add_argument("--target", type=target_arg, metavar="TARGET", help=TARGET_HELP)


def controls_arg(text: str) -> tuple[str, ...]:
    """``--controls``: all, none or a comma list of control maps (``metrics.controls``)."""
    from ..metrics.controls import parse_controls
    from ..metrics.errors import MetricError
    try:
        return parse_controls(text)
    except MetricError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_controls(p: argparse.ArgumentParser) -> None:
    from ..metrics.controls import CONTROLS
    p.add_argument("--controls", type=controls_arg, default="all", metavar="all|none|LIST",
                   help=f"control maps scored in the tables next to the methods, never candidates "
                        f"(default all: {','.join(CONTROLS)}; see docs/search.md#control-maps)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_scoring_options(p: argparse.ArgumentParser) -> None:
    """The model options and how terminals and metrics run (``eval``, ``explain`` and ``synth``)."""
    p.add_argument("--batch-size", type=batch_size_arg, default=DEFAULT_BATCH_SIZE, metavar="N|auto",
                   help=f"images per forward pass when scoring (default {DEFAULT_BATCH_SIZE}); auto: the largest "
                        f"batch that fits on CUDA, on the CPU the largest whose largest layer fits in half the cache; "
                        f"channels-last batches for convolutional models; and --chunk-size auto unless given")
    add_chunk_size(p, follows_batch_size=True)
    add_precision(p)
    p.add_argument("--steps", type=positive_int, metavar="P",
                   help="deletion / insertion steps, at most the layer's h*w cells (default: all cells)")
    p.add_argument("--blur-sigma", type=positive_float, default=DEFAULT_BLUR_SIGMA, metavar="PX",
                   help=f"deletion / insertion: Gaussian blur sigma of x~ in pixels (default {DEFAULT_BLUR_SIGMA:g})")
    p.add_argument("--metric-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the metrics that take it (NAME.KEY=VALUE: of metric NAME only), repeatable: "
                        "VALUE is JSON (4, 0.5, true, [10,50,90], "
                        "\"black\") or else a string; e.g. percentiles=[20,50,80] for road_morf, patch_size=8 for "
                        "quantus:RegionPerturbation")
    add_cache_options(p)
    add_quiet(p)


# -- what the options turn into ---------------------------------------------------------------------

def targets_from(args: argparse.Namespace, labels: torch.Tensor | None, n: int = 0,
                 masks: torch.Tensor | None = None) -> Any:
    """What to explain: None for the predictions, the folder labels for ``--targets labels``, or
    ``--target``'s ``Target`` or class (for each of the ``n`` images); a ``segmentation:C`` target
    over ``--masks`` (``masks`` ``[n, H, W]``) when they are given."""
    import torch

    from ..models.targets import SegmentationTarget

    target = getattr(args, "target", None)
    if target is not None:
        if getattr(args, "targets", "predicted") == "labels":
            raise SycamError("give --target or --targets labels, not both")
        if isinstance(target, SegmentationTarget) and masks is not None:
            return target.with_masks(masks)
        return target.expand(n).clone() if isinstance(target, torch.Tensor) else target
    if getattr(args, "targets", "predicted") != "labels":
        return None
    if labels is None:
        raise SycamError(f"--targets labels needs one subfolder per class in {args.images!r}")
    return labels


def store_from(args: argparse.Namespace) -> TerminalStore:
    """The terminal store of ``--cache-dir`` and ``--cache-size``."""
    from ..cam.store import TerminalStore

    return TerminalStore(args.cache_dir, args.cache_size)


def compute_terminals_from(args: argparse.Namespace, model: Any, images: torch.Tensor,
                           targets: torch.Tensor | None, names: list[str], **extra: Any) -> tuple[Any, Any]:
    """Terminals ``names`` of ``images`` ``[N, 3, H, W]`` through the terminal store unless
    ``--no-cache``; returns ``(Terminals, TerminalInfo)``. With an ``auto`` size, the batch sizes
    chosen go to stderr."""
    from ..cam.compute import compute_terminals
    from ..cam.store import compute_terminals_stored

    common = dict(device=args.device, chunk_size=chunk_size_from(args), progress=not args.quiet,
                  precision=getattr(args, "precision", DEFAULT_PRECISION), runtime=runtime_from(args),
                  reshape=reshape_from(args), **extra)
    if args.no_cache:
        terms, info = compute_terminals(model, args.layer, images, targets, names, **common)
    else:
        terms, info = compute_terminals_stored(model, args.layer, images, targets, names, store=store_from(args),
                                               **common)
    if info.batch_sizes and (AUTO in (args.chunk_size, getattr(args, "batch_size", None))):
        sizes = ", ".join(f"{k} {v}" for k, v in info.batch_sizes.items())
        print(f"sycam-dsl: terminals: batch sizes {sizes} (auto)", file=sys.stderr)
    return terms, info


def from_store(stored: int, total: int) -> str:
    """``6 of 12 images from the store``, with what the store checks (``cam.store.reuse_line``)."""
    from ..cam.store import reuse_line  # torch is loaded by then: the terminals were computed

    return reuse_line(stored, total)


def note_metric_batch(args: argparse.Namespace, inputs: Any) -> None:
    """With ``--batch-size auto``, the batch size (and layout) the metrics' forward passes got, on stderr."""
    if args.batch_size == AUTO:
        layout = ", channels-last" if inputs.channels_last else ""
        print(f"sycam-dsl: metrics: batch size {inputs.batch_size} (auto{layout})", file=sys.stderr)


def output_file(path: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """``path`` checked before any work: not a folder, a known suffix (when ``suffixes``), and a
    writable folder (created if missing)."""
    out = Path(path)
    if out.is_dir():
        example = out / ("out" + (suffixes[0] if suffixes else ""))
        raise SycamError(f"output {path!r} is a folder; give a file name such as {str(example)!r}")
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise SycamError(f"output {path!r} must end in {' or '.join(suffixes)}")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SycamError(f"cannot create the folder {str(parent)!r} for {path!r}: {e.strerror or e}") from None
    existed = out.exists()
    try:  # a real open, which also catches what permission bits do not (read-only mounts, /proc)
        with open(out, "ab"):
            pass
    except OSError as e:
        raise SycamError(f"cannot write {path!r}: {e.strerror or e}") from None
    if not existed:
        out.unlink()
    return out


def warn(lines: list[str]) -> None:
    """Each line on stderr as ``sycam-dsl: warning: ...``."""
    for line in lines:
        print(f"sycam-dsl: warning: {line}", file=sys.stderr)


def expression_source(text: str) -> str:
    """``text`` with a search's output folder replaced by its ``result.json``; what looks like a path
    (a ``/`` or a file suffix, no ``(``) but does not exist is refused here, not parsed as a terminal."""
    if text.lstrip().startswith("("):
        return text
    p = Path(text)
    if p.is_dir():
        if not (p / "result.json").is_file():
            raise SycamError(f"{text!r} is a folder without a result.json; give the output folder of a "
                             f"sycam-dsl synth run, or an expression such as '(relu grads)'")
        return str(p / "result.json")
    if not p.exists() and ("/" in text or "\\" in text or p.suffix.lower() in _EXPRESSION_FILES):
        raise SycamError(f"{text!r} does not exist; give an expression such as '(relu grads)', a file holding "
                         f"one, or the output folder of a sycam-dsl synth run (or its result.json)")
    return text


#: suffixes of files that hold an expression, and of the result files that hold one
_EXPRESSION_FILES = (".sexp", ".txt", ".json")


def read_expression(text: str) -> str:
    """The expression text itself, or the contents of a .sexp/.txt file or a result .json file (or folder)."""
    text = expression_source(text)
    p = Path(text)
    if not text.lstrip().startswith("(") and p.suffix in _EXPRESSION_FILES and p.is_file():
        try:
            content = p.read_text()
        except UnicodeDecodeError:
            raise SycamError(f"{p} is not a text file; give an expression such as '(relu grads)' or a file "
                             f"holding one") from None
        if p.suffix == ".json":
            try:
                expression = json.loads(content)["expression"]
            except (ValueError, KeyError, TypeError):
                raise SycamError(f"{p}: expected a JSON object with an 'expression' field") from None
            if not isinstance(expression, str):
                raise SycamError(f"{p} holds no expression (its search scored no candidate)")
            return expression
        return content
    return text


def weight_expression(text: str, types: dict | None = None) -> tuple[str, Node]:
    """``(source text, AST)`` of a weight expression given as text or a file; it must be a Vec or a Map."""
    from ..lang.sexpr import parse_expr
    from ..lang.terminals import terminal_types

    src = read_expression(text).strip()
    node = parse_expr(src, types if types is not None else terminal_types())
    if not node.type.is_tensor:
        raise SycamError(f"expression {src} is a {node.type}; a weight expression must be a Vec or a Map")
    return src, node
