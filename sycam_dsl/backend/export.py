"""Save a weight expression as a ``torch.export`` program (``.pt2``).

The program runs the same generated computation as the TorchScript backend: the generated source
(plain Python as well as TorchScript) is executed as the methods of a small ``nn.Module`` and
exported. Load it with ``torch.export.load(path).module()``; sycam-dsl is not needed.

Shapes: every dimension is exported as ``Dim.AUTO``, and no operator fixes one, so ``N``, ``K``,
``h`` and ``w`` are all dynamic in the saved program (sizes 0 and 1 work too). The tracing inputs
have every size at least 2 because export specializes a dimension of size 0 or 1 to that size.
Should an operator added later need a fixed size, that one dimension is specialized to the
example's size instead of failing, which is why an ``example`` with the real ``K, h, w`` is the
safe choice. Dtype and device are not baked in either: constants are made with ``new_full``
from the first input.
"""

from __future__ import annotations

import itertools
import linecache
import os
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from ..lang.ast import Node
from ..lang.operators import HELPERS_SRC
from ..lang.types import Type
from ..util.warnings import quiet_deprecations
from .codegen import signature
from .torchscript import generate_source

__all__ = ["export_program", "python_module", "save_export"]

Entry = Literal["forward", "saliency"]
_module_ids = itertools.count()


def python_module(node: Node, inputs: Sequence[str] | None = None) -> nn.Module:
    """The generated ``forward`` (W) and ``saliency`` (S) as an eager ``nn.Module``."""
    namespace: dict[str, object] = {"torch": torch, "Tensor": torch.Tensor}
    source = HELPERS_SRC + generate_source(node, inputs)
    filename = f"<sycam-dsl generated {next(_module_ids)}>"
    # Registered so that tracebacks through the generated code show its lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)
    methods = {k: v for k, v in namespace.items() if callable(v) and k not in ("torch", "Tensor")}
    return type("SycamWeights", (nn.Module,), methods)()


def _saliency_module(weights: nn.Module, names: list[str]) -> nn.Module:
    """A module whose ``forward`` is ``weights.saliency``, with named parameters (export needs a
    fixed signature, so no ``*args``)."""
    args = ", ".join(names)
    namespace: dict[str, object] = {"Tensor": torch.Tensor}
    exec(f"def forward(self, activations: Tensor, {args}) -> Tensor:\n"
         f"    return self.weights.saliency(activations, {args})\n", namespace)
    module = type("SycamSaliency", (nn.Module,), {"forward": namespace["forward"]})()
    module.weights = weights
    return module


def export_program(node: Node, example: Mapping[str, torch.Tensor] | None = None,
                   inputs: Sequence[str] | None = None,
                   entry: Entry = "forward") -> torch.export.ExportedProgram:
    """The ``torch.export`` program of ``node``'s ``forward`` (or ``saliency``).

    ``example`` (e.g. ``Terminals``) gives dtype, device and sizes of the tracing inputs; without
    one, float32 CPU stand-ins are used. Values never matter: the computation has no
    data-dependent control flow."""
    params = signature(node, inputs)
    module = python_module(node, inputs)
    args = _trace_inputs(params, example)
    if entry == "saliency":
        k = args[0].shape[1]
        hw = next((a.shape[2:] for a in args if a.dim() == 4), (3, 3))
        args = [torch.randn(args[0].shape[0], k, *hw, dtype=args[0].dtype, device=args[0].device), *args]
        module = _saliency_module(module, [name for name, _ in params])
    elif entry != "forward":
        raise ValueError(f"entry must be 'forward' or 'saliency', got {entry!r}")
    dynamic = tuple({d: torch.export.Dim.AUTO for d in range(a.dim())} for a in args)
    with quiet_deprecations():
        return torch.export.export(module, tuple(args), dynamic_shapes=dynamic, strict=False)


def save_export(node: Node, path: str | os.PathLike[str], example: Mapping[str, torch.Tensor] | None = None,
                inputs: Sequence[str] | None = None, entry: Entry = "forward") -> torch.export.ExportedProgram:
    """Export ``node`` (see ``export_program``) and save it to ``path`` (``.pt2``).

    The program's inputs are the terminals in the order of ``inputs`` (default
    ``node.terminals()``), preceded by the activations ``[N, K, h, w]`` for ``entry="saliency"``."""
    program = export_program(node, example, inputs, entry)
    with quiet_deprecations():
        torch.export.save(program, os.fspath(path))
    return program


def _trace_inputs(params: list[tuple[str, Type]],
                  example: Mapping[str, torch.Tensor] | None) -> list[torch.Tensor]:
    """Tracing tensors: the example's, unless a size below 2 would get specialized."""
    if example is not None:
        tensors = [example[name] for name, _ in params]
        if all(d >= 2 for t in tensors for d in t.shape):
            return tensors
        ref = tensors[0]
        n, k = ref.shape[0], ref.shape[1]
        hw = next((tuple(t.shape[2:]) for t in tensors if t.dim() == 4), (3, 3))
        dtype, device = ref.dtype, ref.device
    else:
        n, k, hw, dtype, device = 2, 4, (3, 3), torch.float32, torch.device("cpu")
    n, k = max(n, 2), max(k, 2)
    hw = tuple(max(d, 2) for d in hw)
    gen = torch.Generator().manual_seed(0)
    return [torch.randn([n, k] if t == Type.VEC else [n, k, *hw], generator=gen, dtype=dtype).to(device)
            for _, t in params]
