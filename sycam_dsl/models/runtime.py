"""Forward-only passes on an inference runtime: ``--runtime auto|torch|onnxruntime|openvino``.

``cic``, ``abl`` and the perturbation metrics only read a model's outputs, and on the CPU an
inference runtime runs those passes several times faster than eager PyTorch. ``forward_module``
gives what runs them: the torch module itself, or a ``RuntimeModule`` that runs the module converted
to ONNX (``models.onnx_export``: traced, else through ``torch.export``; a dynamic batch) on ONNX Runtime
or OpenVINO. The gradient pass always stays in torch.

- **Convert once.** The ONNX file is kept in ``<cache dir>/runtime/`` under a digest of the model
  (architecture and weights), the part converted (the whole model, or the layers after a target
  layer), the input shapes without the batch, the opset and torch's version; the conversion time is
  printed once. The precision is not part of the file: bf16 is OpenVINO's compile-time hint.
- **Checked.** A trace that would bake in a decision on tensor values (``TracerWarning``) fails the
  tracer (the dynamo exporter then tries), and a converted model whose fp32 logits differ from torch's on the example
  beyond float rounding (checked at another batch size than the export's, so a baked batch shows).
- **Its own batch.** Each converted model's best batch size is timed once (a sweep of sizes, kept
  beside the converted files: ``runtime_choice.best_batch``); a larger batch runs as batches of that
  size, and a loop's ``auto`` batch size is that size (``measured_batch``).
- **``auto``** picks, once per model, part, input shape, precision, thread count and CPU, the fastest
  of torch (timed on a few batches) and each installed runtime that converts the model (at its best
  batch); the choice is kept beside the converted files. A conversion that fails under ``auto`` is one
  warning line and torch runs; under an explicit runtime it is a ``ConversionError``.
- **Precision.** ``fp32`` everywhere; ``bf16`` in torch (autocast) or OpenVINO on a CPU that has bf16
  instructions (its inference-precision hint); ``fp16`` in torch only. A runtime that cannot run the
  precision asked for is refused in one line (explicit) or not considered (``auto``): nothing runs in
  a precision the user did not ask for.
- Runtimes run on the CPU with torch's thread count (``torch.get_num_threads()``). On CUDA ``auto``
  chooses between torch and ``compile`` (``torch.compile`` of the module, under autocast like torch),
  by the same timing; ``--runtime compile`` also works on the CPU.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from weakref import WeakKeyDictionary

import numpy as np
import torch
from torch import nn

from ..util.digests import json_digest
from ..util.modes import eval_mode
from ..util.progress import note
from ..util.text import first_line
from .digest import model_digest
from .errors import ConversionError, ModelError
from .onnx_export import ONNX_OPSET, export_onnx
from .precision import DEFAULT_PRECISION, check_precision, forward_precision
from .runtime_choice import BATCH_FILE, CHOICE_FILE, best_batch, choose, rows
from .targets import model_output
from .threads import runtime_threads, torch_single_threaded

log = logging.getLogger(__name__)

#: ``--runtime`` values; ``auto`` is the default.
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino", "compile")
DEFAULT_RUNTIME = "auto"
#: The runtimes that run a converted model, with the extra that installs each.
EXTRAS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
#: The folder under the cache dir that holds the converted models and ``auto``'s choices; the names
#: of its files (what ``cache clear`` may delete there).
FOLDER = "runtime"
ONNX_FILE = r"[0-9a-f]{40}\.onnx"
FILE_NAMES = re.compile(f"{ONNX_FILE}|{CHOICE_FILE}|{BATCH_FILE}")
#: How far a converted model's fp32 logits may lie from torch's: ``FP32_TOLERANCE * max(1, |logits|)``.
FP32_TOLERANCE = 1e-3


class RuntimeUnavailable(ModelError):
    """A runtime that is not installed, or cannot run here (device, precision)."""


def check_runtime(name: str) -> str:
    """``name`` when it is one of ``RUNTIMES``; else a one-line ``ModelError``."""
    if name not in RUNTIMES:
        raise ModelError(f"unknown runtime {name!r}; use {', '.join(RUNTIMES)}")
    return name


def is_installed(name: str) -> bool:
    """Whether runtime ``name`` can be imported, with ``onnx`` (which ``torch.onnx.export`` writes with);
    torch (and its ``torch.compile``) always can."""
    if name in ("torch", "compile"):
        return True
    return all(importlib.util.find_spec(m) is not None for m in (EXTRAS[name], "onnx"))


def _openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 here (the CPU has bf16 instructions: AMX or AVX512-BF16)."""
    return "BF16" in _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def unsupported(runtime: str, precision: str, device: torch.device) -> str | None:
    """Why ``runtime`` cannot run ``precision`` on ``device`` (one phrase), or None when it can."""
    if runtime == "torch":
        return None
    if runtime == "compile":
        return None if hasattr(torch, "compile") else "this torch has no torch.compile; use --runtime torch"
    if device.type != "cpu":
        return f"runtime {runtime} runs on the CPU, not on {device.type}; use --runtime torch or auto"
    if not is_installed(runtime):
        return f"runtime {runtime} is not installed: pip install 'sycam-dsl[{EXTRAS[runtime]}]'"
    if precision == "fp16":
        return f"runtime {runtime} does not run fp16 on the CPU; use --precision fp32 or bf16, or --runtime torch"
    if precision == "bf16" and runtime == "onnxruntime":
        return "runtime onnxruntime runs fp32 only on the CPU; for bf16 use --runtime openvino or torch"
    if precision == "bf16" and not _openvino_bf16():
        return ("OpenVINO runs bf16 only on a CPU with bf16 instructions (AMX or AVX512-BF16), which this one "
                "lacks; use --precision fp32, or --runtime torch for bf16 through autocast")
    return None


def check_support(runtime: str, precision: str, device: str | torch.device) -> None:
    """A one-line ``RuntimeUnavailable`` when an explicitly asked ``runtime`` cannot run ``precision``
    on ``device`` (``auto`` always can: it only considers the runtimes that can)."""
    check_runtime(runtime)
    check_precision(precision)
    if runtime != "auto":
        why = unsupported(runtime, precision, torch.device(device))
        if why is not None:
            raise RuntimeUnavailable(why)


def candidates(runtime: str, precision: str, device: torch.device) -> list[str]:
    """The runtimes ``runtime`` may pick for ``precision`` on ``device``: itself, or for ``auto`` torch
    and every installed runtime that can run the precision there."""
    if runtime != "auto":
        check_support(runtime, precision, device)
        return [runtime]
    if device.type == "cuda":  # torch.compile's kernels (its compile time pays off on a GPU's long runs)
        return ["torch", "compile"]
    return ["torch"] + [r for r in EXTRAS if unsupported(r, precision, device) is None]


@dataclass(frozen=True)
class RuntimeSpec:
    """How forward-only passes run: ``name`` (one of ``RUNTIMES``), ``precision`` and the cache dir whose
    ``runtime/`` folder keeps converted models (None: converted anew in each process, in memory)."""

    name: str = DEFAULT_RUNTIME
    precision: str = DEFAULT_PRECISION
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        check_runtime(self.name)
        check_precision(self.precision)

    @property
    def folder(self) -> Path | None:
        return None if self.cache_dir is None else Path(self.cache_dir) / FOLDER


class RuntimeModule(nn.Module):
    """A converted model run by ``runtime``: ``forward(*inputs)`` takes torch tensors (any layout; on
    the CPU) and returns the output ``[B, ...]`` as a float32 torch tensor. ``torch_reference`` is the
    torch module it was converted from (not a submodule: this module has no parameters and no hooks,
    so layout decisions look at the reference). ``batch``: the runtime's best batch size
    (``runtime_choice.best_batch``; None until measured): a larger batch runs as batches of that size,
    and the loops' ``auto`` batch sizes take it (``measured_batch``)."""

    def __init__(self, runtime: str, precision: str, run: Callable[[list[np.ndarray]], np.ndarray],
                 reference: nn.Module, seconds: float) -> None:
        super().__init__()
        self.runtime, self.precision, self.seconds = runtime, precision, seconds
        self.batch: int | None = None
        self.rows_per_second: float | None = None
        self._run = run
        self.__dict__["torch_reference"] = reference

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        arrays = [np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()) for x in inputs]
        n, step = arrays[0].shape[0], self.batch
        if step is None or n <= step:
            return torch.from_numpy(self._run(arrays))
        # rows split along the batch axis stay contiguous: no copy on the way in
        return torch.from_numpy(np.concatenate([self._run([a[i:i + step] for a in arrays])
                                                for i in range(0, n, step)]))

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, precision={self.precision}"


def runtime_loop(forward: object) -> AbstractContextManager[None]:
    """Around a loop whose forward passes ``forward`` runs: torch's own operations (building the batches)
    on one thread when ``forward`` is a ``RuntimeModule``, so that no idle torch thread spins on the
    cores the runtime runs on (``models.threads``)."""
    return torch_single_threaded(isinstance(forward, RuntimeModule))


def measured_batch(forward: object) -> int | None:
    """The best batch size measured for ``forward`` (a ``RuntimeModule``'s), None for torch: what a loop's
    ``auto`` batch size is when a runtime runs its forward passes."""
    return forward.batch if isinstance(forward, RuntimeModule) else None


def reference_of(model: nn.Module) -> nn.Module:
    """The torch module behind ``model`` (``model`` itself unless it is a ``RuntimeModule``)."""
    return getattr(model, "torch_reference", model)


def runtime_name(model: nn.Module | None) -> str:
    """The runtime that runs ``model``'s forward passes (torch for None)."""
    if isinstance(model, RuntimeModule):
        return model.runtime
    return "compile" if model is not None and "torch_reference" in model.__dict__ else "torch"


def _compiled(module: nn.Module, example: Sequence[torch.Tensor], spec: RuntimeSpec, what: str,
              show: bool) -> nn.Module:
    """``torch.compile(module)`` (a dynamic batch), compiled now on ``example`` and checked against
    ``module``; it runs under ``forward_precision`` like the module."""
    compiled = cast(nn.Module, torch.compile(module, dynamic=True))
    compiled.__dict__["torch_reference"] = module
    check = rows(example, 3)
    start = time.perf_counter()
    try:
        with eval_mode(module), torch.inference_mode(), forward_precision(spec.precision, check[0].device):
            got = compiled(*check).float()
            want = module(*check).float()
    except Exception as e:  # inductor's errors are of many types
        raise ConversionError(f"torch.compile fails on {what} ({first_line(e, with_type=True)})") from None
    note(f"runtime: compiled {what} with torch.compile in {time.perf_counter() - start:.1f} s", show)
    _check_outputs(got, want, "compile", spec.precision, what)
    return compiled


_CORE: Any = None


def _openvino_core() -> Any:
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def _session(runtime: str, onnx: bytes | Path, precision: str) -> Callable[[list[np.ndarray]], np.ndarray]:
    """A function running the ONNX model ``onnx`` (a file or its bytes) on ``runtime``: input arrays ->
    the first output as a float32 array of its own (not a view of the runtime's buffers)."""
    threads = runtime_threads()
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
        # no busy-waiting between runs: the loops build each batch in torch on the same cores, and
        # spinning threads would take them (measured here: cic 2.4x and Deletion 3x slower with spinning)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = str(onnx) if isinstance(onnx, Path) else onnx
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_ort(arrays: list[np.ndarray]) -> np.ndarray:
            out = session.run(None, dict(zip(names, arrays)))[0]
            return np.asarray(out, dtype=np.float32)

        return run_ort
    core = _openvino_core()
    model = core.read_model(str(onnx)) if isinstance(onnx, Path) else core.read_model(onnx, b"")
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def run_ov(arrays: list[np.ndarray]) -> np.ndarray:
        request.infer(arrays, share_inputs=True)
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)  # a copy: the buffer is reused

    return run_ov


def _key(module: nn.Module, part: str, example: Sequence[torch.Tensor]) -> str:
    shapes = [list(t.shape[1:]) for t in example]
    return json_digest([model_digest(module), part, shapes, ONNX_OPSET, torch.__version__])


#: (key, runtime, precision, threads) -> the built module: one session (or compilation) per process.
_BUILT: dict[tuple[str, str, str, int], nn.Module] = {}
#: key -> the ONNX model, when there is no cache dir.
_ONNX: dict[str, bytes | Path] = {}
#: The ``auto`` fallback warnings given in this process.
_WARNED: set[str] = set()
#: key -> why its conversion failed (tried once per process).
_FAILED: dict[str, ConversionError] = {}


def _onnx(module: nn.Module, example: Sequence[torch.Tensor], key: str, spec: RuntimeSpec, what: str,
          show: bool) -> tuple[bytes | Path, float]:
    """The ONNX model of ``module`` (converted once; kept in ``spec.folder``) and the seconds the
    conversion took here (0 when it was there already)."""
    folder = spec.folder
    path = None if folder is None else folder / f"{key}.onnx"
    if path is not None and path.is_file() and not path.is_symlink():
        return path, 0.0
    if path is None and key in _ONNX:
        return _ONNX[key], 0.0
    if key in _FAILED:
        raise _FAILED[key]
    start = time.perf_counter()
    try:
        onnx = export_onnx(module, example, path, what)
    except ConversionError as e:
        _FAILED[key] = e
        raise
    seconds = time.perf_counter() - start
    note(f"runtime: converted {what} to ONNX in {seconds:.1f} s" + (f" ({path})" if path else ""), show)
    if path is None:
        _ONNX[key] = onnx
    return onnx, seconds


def _check_outputs(got: torch.Tensor, want: torch.Tensor, runtime: str, precision: str, what: str) -> None:
    if got.shape != want.shape:
        raise ConversionError(f"{what} on {runtime} gives outputs of shape {list(got.shape)}, torch "
                              f"{list(want.shape)}")
    if not bool(torch.isfinite(got).all()) and bool(torch.isfinite(want).all()):
        raise ConversionError(f"{what} on {runtime} gives NaN or Inf outputs where torch does not")
    if precision == "fp32":
        diff = float((got - want).abs().max()) if got.numel() else 0.0
        if diff > FP32_TOLERANCE * max(1.0, float(want.abs().max())):
            raise ConversionError(f"{what} on {runtime} does not reproduce torch's outputs (largest difference "
                                  f"{diff:.3g}); use --runtime torch")


def _build(runtime: str, module: nn.Module, example: Sequence[torch.Tensor], key: str, spec: RuntimeSpec,
           what: str, show: bool) -> nn.Module:
    threads = runtime_threads()
    memo = (key, runtime, spec.precision, threads)
    if memo in _BUILT:
        return _BUILT[memo]
    if runtime == "compile":
        _BUILT[memo] = _compiled(module, example, spec, what, show)
        return _BUILT[memo]
    onnx, seconds = _onnx(module, rows(example, 2), key, spec, what, show)
    try:
        run = _session(runtime, onnx, spec.precision)
        built = RuntimeModule(runtime, spec.precision, run, module, seconds)
        check = rows(example, 3)  # not the export's 2 rows, so a batch size fixed by the trace shows
        with eval_mode(module), torch.inference_mode():
            want = module(*check).float()
            got = built(*check)
    except ConversionError:
        raise
    except Exception as e:  # the runtime's own loader or kernels
        raise ConversionError(f"{what} does not run on {runtime} ({first_line(e, with_type=True)})") from None
    _check_outputs(got, want, runtime, spec.precision, what)
    built.batch, built.rows_per_second = best_batch(built, example, key, runtime, spec.precision, spec.folder,
                                                    what, show)
    _BUILT[memo] = built
    return built


class TensorOutput(nn.Module):
    """``module`` returning its output's tensor (a dict's ``'out'``, as torchvision's segmentation models
    return: ``targets.model_output``), which the ONNX exporter and the runtimes' checks need."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, model_output(self.module(*inputs)))


#: module -> whether its output is a dict: probed once per module (``forward_module`` runs for every
#: copy of a metric's inputs); a weak map of booleans, so that it keeps no module alive.
_DICT_OUTPUT: WeakKeyDictionary[nn.Module, bool] = WeakKeyDictionary()


def _tensor_output(module: nn.Module, example: Sequence[torch.Tensor]) -> nn.Module:
    """``module``, or ``TensorOutput(module)`` when its output on one row of ``example`` is a dict."""
    if isinstance(module, TensorOutput):
        return module
    if module not in _DICT_OUTPUT:
        with eval_mode(module), torch.inference_mode():
            _DICT_OUTPUT[module] = isinstance(module(*rows(example, 1)), dict)
    return TensorOutput(module) if _DICT_OUTPUT[module] else module


def forward_module(module: nn.Module, example: Sequence[torch.Tensor], spec: RuntimeSpec, *, part: str = "model",
                   what: str = "the model", show: bool = False) -> nn.Module:
    """What runs ``module``'s forward-only passes under ``spec``: ``module`` itself (torch; the caller
    keeps applying ``forward_precision``; under ``auto``, a model whose output is a dict comes back as its
    ``TensorOutput``, which returns the ``'out'`` tensor) or a ``RuntimeModule``. ``example``: the module's inputs, at
    least one row each, on the module's device; ``part`` names the part of the model converted (``model``,
    ``tail@LAYER``) in the cache key; ``what`` names it in messages; ``show``: print the conversion and
    the ``auto`` choice as lines on stderr.

    An explicit runtime that cannot convert ``module`` raises ``ConversionError`` (one line naming what
    failed); under ``auto`` a failed conversion is a warning and torch runs."""
    device = example[0].device
    names = candidates(spec.name, spec.precision, device)
    if names == ["torch"]:
        return module
    module = _tensor_output(module, example)
    # keyed by the model itself: a new TensorOutput each call, but one digest (cached per module)
    key = _key(module.module if isinstance(module, TensorOutput) else module, part, example)
    built: dict[str, nn.Module] = {"torch": module} if spec.name == "auto" else {}
    for name in names:
        if name == "torch":
            continue
        try:
            built[name] = _build(name, module, example, key, spec, what, show)
        except ConversionError as e:
            if spec.name != "auto":
                raise
            if str(e) not in _WARNED:  # once per process, not once per runtime and chunk
                _WARNED.add(str(e))
                log.warning("runtime auto: %s; running it in torch", e)
    if len(built) == 1:
        return next(iter(built.values()))
    measured = {n: m.rows_per_second for n, m in built.items()
                if isinstance(m, RuntimeModule) and m.rows_per_second is not None}
    return built[choose(built, module, example, key, spec.precision, spec.folder, what, show, measured)]

