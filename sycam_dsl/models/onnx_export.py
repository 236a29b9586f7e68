"""A module as an ONNX model with a dynamic batch, for the inference runtimes (``models.runtime``).

Two exporters, tried in turn:

1. **The TorchScript tracer** (``torch.onnx.export(dynamo=False)``): fast, and what every CNN converts
   with. A trace that records a Python decision on tensor values (``TracerWarning``) is refused: it
   would fix that decision to the example.
2. **The dynamo exporter** (``torch.onnx.export(dynamo=True)``, over ``torch.export``; it needs the
   ``onnxscript`` package): when the tracer fails. ``torch.export`` keeps shape checks symbolic and
   refuses data-dependent control flow, so it converts models the tracer cannot take safely, e.g. the
   vision transformers (their shape asserts; torchvision's fused attention under ``no_grad``).

When both fail the ``ConversionError`` names the tracer's reason, and the dynamo exporter's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..util.files import atomic_write
from ..util.modes import eval_mode
from ..util.sizes import format_size
from ..util.text import first_line
from .errors import ConversionError

ONNX_OPSET = 17
#: The dynamo exporter's opset (its lowest supported one).
DYNAMO_OPSET = 18
#: The weights one ONNX file can hold: a protobuf message is at most 2 GB (larger models would need
#: external data files beside it, which the cache folder does not keep).
MAX_BYTES = 2**31 - 2**24


#: One redirection of file descriptor 1 at a time (it is the process's, not the thread's).
_STDOUT_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """File descriptor 1 to /dev/null inside the block: the tracer prints the whole graph from C++
    (``std::cout``, out of ``sys.stdout``'s reach) when an operator has no ONNX form. Nothing is
    redirected when there is no descriptor 1 (a closed stdout)."""
    with _STDOUT_LOCK:
        saved: int | None = None
        with contextlib.suppress(OSError, ValueError):  # no fd 1, or a closed sys.stdout: nothing to keep quiet
            if sys.stdout is not None:
                sys.stdout.flush()
            saved = os.dup(1)
        if saved is None:
            yield
            return
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                yield
        finally:
            if sys.stdout is not None:
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _traced(module: nn.Module, example: Sequence[torch.Tensor], what: str) -> bytes:
    """``module`` traced to ONNX (opset ``ONNX_OPSET``), or ``ConversionError``."""
    names = [f"input{i}" for i in range(len(example))]
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in (*names, "output")}
    buffer = io.BytesIO()
    try:
        with eval_mode(module), torch.no_grad(), warnings.catch_warnings(record=True) as seen, _quiet_stdout():
            warnings.simplefilter("always")  # recorded, not shown: the exporter's deprecation notes among them
            torch.onnx.export(module, tuple(example), cast(Any, buffer), dynamo=False, input_names=names,
                              output_names=["output"], dynamic_axes=axes, opset_version=ONNX_OPSET)
    except Exception as e:  # the exporter raises many types (RuntimeError, SymbolicValueError, ...)
        raise ConversionError(f"{what} cannot be converted to ONNX ({first_line(e, with_type=True)})") from None
    traced = [w for w in seen if issubclass(w.category, torch.jit.TracerWarning)]
    if traced:  # raised here, after the export: raised inside the trace it surfaces as a SystemError
        raise ConversionError(f"{what} cannot be converted to ONNX: its forward makes a Python decision on "
                              f"tensor values, which a trace would fix to this input "
                              f"({str(traced[0].message).strip().splitlines()[0]})")
    return buffer.getvalue()


def dynamo_available() -> bool:
    """Whether the dynamo exporter can run (it writes through ``onnxscript``)."""
    return importlib.util.find_spec("onnxscript") is not None


def _dynamic_shapes(module: nn.Module, n: int) -> tuple[Any, ...]:
    """``torch.export``'s spec of ``n`` inputs whose first dimension is the batch, shaped as ``module``'s
    ``forward`` takes them (``forward(*inputs)``: one tuple)."""
    batch = torch.export.Dim("batch")
    each = tuple({0: batch} for _ in range(n))
    params = inspect.signature(module.forward).parameters.values()
    return (each,) if any(p.kind == p.VAR_POSITIONAL for p in params) else each


def _dynamo(module: nn.Module, example: Sequence[torch.Tensor]) -> bytes:
    """``module`` exported through ``torch.export`` to ONNX, every input's first dimension dynamic."""
    with eval_mode(module), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes on its own passes
        program = torch.onnx.export(module, tuple(example), dynamo=True, opset_version=DYNAMO_OPSET,
                                    dynamic_shapes=_dynamic_shapes(module, len(example)), verbose=False,
                                    report=False, optimize=True)
    assert program is not None  # with no file given, the exporter returns the program
    return program.model_proto.SerializeToString()


def export_onnx(module: nn.Module, example: Sequence[torch.Tensor], path: str | Path | None, what: str) -> bytes | Path:
    """``module`` as ONNX (every input's and the output's first dimension dynamic) into ``path`` (written
    atomically), or its bytes when ``path`` is None: traced, else through the dynamo exporter (see the
    module's docstring). ``ConversionError`` naming ``what`` when neither converts it, or when its
    weights pass the 2 GB that one ONNX file (a protobuf) can hold."""
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    if size >= MAX_BYTES:
        raise ConversionError(f"{what} holds {format_size(size)} of weights, more than one ONNX file holds "
                              f"(2 GB)")
    try:
        data = _traced(module, example, what)
    except ConversionError as traced:
        if not dynamo_available():
            raise
        try:
            data = _dynamo(module, example)
        except Exception as e:  # torch.export and the ONNX translation raise many types
            why = first_line(e, with_type=True)
            raise ConversionError(f"{traced}; the dynamo exporter fails too ({why})") from None
    if path is None:
        return data
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)

