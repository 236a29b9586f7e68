"""Compile a weight expression into one generated TorchScript function (SPEC section 8).

The source is generated from the operator table (``Operator.template``), the same templates the
evaluator runs, so the compiled module and ``sycam_dsl.evaluate.evaluate`` cannot drift apart.
Each distinct subexpression becomes one local variable (``t0 = ...``), so repeated structure is
computed once and the generated code reads like the expression.

The module has two methods, both batched over ``N`` images (any ``N``, ``K``, ``h``, ``w``):

* ``forward(self, <terminals>) -> Tensor``: the weights ``W``, ``[N, K]`` for a Vec expression,
  ``[N, K, h, w]`` for a Map one (``[N, K, 1, 1]`` when it is constant over positions).
* ``saliency(self, activations, <terminals>) -> Tensor``: ``S = relu(sum_k W_k * A_k)``,
  ``[N, h, w]``, for activations ``A`` of shape ``[N, K, h, w]``.

Constants: literals and constant subexpressions are created with ``ref.new_full([1, 1], v)``
where ``ref`` is the first terminal argument, so they take the inputs' dtype and device as the
evaluator's constants do. Constant subexpressions are folded at compile time with the evaluator in
float32, so for float32 inputs the values are identical; for other dtypes a folded constant is the
float32 value converted (literals themselves are exact).
"""

from __future__ import annotations

import contextlib
import itertools
import keyword
import math
import os
import warnings
from typing import Iterator, Sequence

import torch

from ..errors import SycamError
from ..evaluate.evaluator import evaluate_with
from ..lang.ast import CONST, HOLE, OP, VAR, Node
from ..lang.operators import HELPERS_SRC, OPERATORS, lift_source
from ..lang.sexpr import to_sexpr
from ..lang.terminals import TERMINALS
from ..lang.types import Type

__all__ = ["CompileError", "compile_torchscript", "generate_source", "quiet_deprecations",
           "save_torchscript", "signature"]

_SHAPES = {Type.VEC: "[N, K]", Type.MAP: "[N, K, h, w]"}
_RANKS = {Type.VEC: 2, Type.MAP: 4}
# Names the generated code uses itself; a terminal parameter must not shadow them.
_RESERVED = {"self", "torch", "Tensor", "activations", "weights", "float"}
_COMMENT_WIDTH = 72
_class_ids = itertools.count()


class CompileError(SycamError, ValueError):
    """An expression that cannot be compiled (holes, a missing input, a non-tensor result)."""


@contextlib.contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Silence PyTorch's deprecation notices for TorchScript / torch.export inside the block.

    PyTorch deprecates TorchScript; the notices are about PyTorch's plans, not about anything a
    sycam-dsl user did, so our own calls should not print them. Other warnings pass through."""
    pattern = r"(?s).*(torch\.jit|torchscript|torch\.export)"
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message=pattern, category=category)
        yield


def signature(node: Node, inputs: Sequence[str] | None = None) -> list[tuple[str, Type]]:
    """The compiled function's parameters, ``(terminal name, type)``, in order.

    ``inputs`` defaults to ``node.terminals()``; when given, it must name every terminal the
    expression uses and may name more (they become unused parameters, for a fixed signature)."""
    if node.holes():
        raise CompileError(f"cannot compile a production template with holes: {_text(node)}")
    if node.type not in _SHAPES:
        raise CompileError(f"a weight expression must be a Vec or a Map, got a {node.type}: {_text(node)}")
    used: dict[str, Type] = {}
    for n in node.walk():
        if n.kind == VAR:
            used.setdefault(str(n.head), n.type)
    names = list(used) if inputs is None else list(inputs)
    if len(set(names)) != len(names):
        raise CompileError(f"inputs name a terminal twice: {' '.join(names)}")
    missing = [n for n in used if n not in names]
    if missing:
        raise CompileError(f"the expression uses {' '.join(missing)}, missing from inputs {' '.join(names)}")
    out = []
    for name in names:
        t = used.get(name) or (TERMINALS[name][0] if name in TERMINALS else None)
        if t is None:
            raise CompileError(f"unknown terminal {name!r} (known: {' '.join(TERMINALS)})")
        if t not in _SHAPES:
            raise CompileError(f"terminal {name!r} is a {t}; only Vec and Map terminals can be inputs")
        if not name.isidentifier() or keyword.iskeyword(name) or name in _RESERVED:
            raise CompileError(f"terminal name {name!r} cannot be a parameter of the generated code")
        out.append((name, t))
    return out


def generate_source(node: Node, inputs: Sequence[str] | None = None) -> str:
    """TorchScript source of ``forward`` and ``saliency`` for ``node``.

    The methods call the helpers of ``HELPERS_SRC`` on ``self``; compile ``HELPERS_SRC + source``
    (``compile_torchscript`` does). The source is also plain Python."""
    params = signature(node, inputs)
    ref = params[0][0]
    gen = _Codegen(ref)
    result = gen.value(node)
    args = ", ".join(f"{name}: Tensor" for name, _ in params)
    call = ", ".join(name for name, _ in params)

    checks = _input_checks(params)

    header = [
        "# Generated by sycam-dsl from the weight expression",
        f"#   W = {_text(node)}",
        f"# W is a {node.type} {_SHAPES[node.type]}"
        + (" ([N, K, 1, 1] when constant over positions)." if node.type == Type.MAP else "."),
        "# Inputs, batched over N images and K channels:",
        *[f"#   {name}: {t} {_SHAPES[t]}" for name, t in params],
        "# saliency(activations [N, K, h, w], ...) returns relu(sum_k W_k * A_k) as [N, h, w].",
        f"# Constants take the dtype and device of {ref!r}; constant subexpressions are folded in float32.",
    ]
    lifted = lift_source("weights", node.type, Type.MAP)
    return "\n".join([
        *header,
        "",
        f"def forward(self, {args}) -> Tensor:",
        *checks,
        *gen.lines,
        f"    return {result}",
        "",
        f"def saliency(self, activations: Tensor, {args}) -> Tensor:",
        '    assert activations.dim() == 4, "activations must be [N, K, h, w]"',
        f"    weights = self.forward({call})",
        f"    return torch.relu(({lifted} * activations).sum(dim=-3))",
        "",
    ])


def compile_torchscript(node: Node, inputs: Sequence[str] | None = None) -> torch.jit.ScriptModule:
    """A ``ScriptModule`` with ``forward`` (W) and ``saliency`` (S) for ``node``."""
    source = generate_source(node, inputs)
    # Methods are defined on the module's class, and every plain ScriptModule() shares one class,
    # so a second define() would clash ("Can't redefine method"): give each module its own class.
    cls = type(f"SycamWeights{next(_class_ids)}", (torch.jit.ScriptModule,), {"__module__": "sycam_dsl_generated"})
    with quiet_deprecations():
        module = cls()
        # define() resolves free names (torch) from this frame, so it must be called here.
        module.define(HELPERS_SRC + source)
    return module


def save_torchscript(node: Node, path: str | os.PathLike[str],
                     inputs: Sequence[str] | None = None) -> torch.jit.ScriptModule:
    """Compile ``node`` and save it to ``path`` (a ``.pt`` file for ``torch.jit.load``).

    The archive also carries the generated source as the extra file ``sycam_dsl/source.py``."""
    source = generate_source(node, inputs)
    module = compile_torchscript(node, inputs)
    with quiet_deprecations():
        torch.jit.save(module, os.fspath(path), _extra_files={"sycam_dsl/source.py": HELPERS_SRC + source})
    return module


def _input_checks(params: Sequence[tuple[str, Type]]) -> list[str]:
    """Source lines (indented for a method body) asserting the inputs' ranks and shared sizes."""
    ref = params[0][0]
    checks = [f'    assert {name}.dim() == {_RANKS[t]}, '
              f'"{name} must be a {t} {_SHAPES[t]}"' for name, t in params]
    for name, _ in params[1:]:
        checks.append(f"    assert {name}.shape[0] == {ref}.shape[0] and {name}.shape[1] == {ref}.shape[1], "
                      f'"{name} and {ref} must have the same N and K"')
    maps = [name for name, t in params if t == Type.MAP]
    for name in maps[1:]:
        checks.append(f"    assert {name}.shape[2] == {maps[0]}.shape[2] and {name}.shape[3] == {maps[0]}.shape[3], "
                      f'"{name} and {maps[0]} must have the same h and w"')
    return checks


class _Codegen:
    """Emits one local per distinct subexpression, children first."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.lines: list[str] = []
        self.names: dict[Node, str] = {}

    def value(self, node: Node) -> str:
        """An identifier holding ``node``'s value (terminals are the parameters themselves)."""
        if node.kind == VAR:
            return str(node.head)
        name = self.names.get(node)
        if name is not None:
            return name
        if node.kind == HOLE:
            raise CompileError(f"cannot compile a hole ({node.head})")
        comment = ""
        if node.type.is_scalar:
            # Literal text is exact; an operator on constants is folded like the evaluator does it.
            v = float(node.head) if node.kind == CONST else _fold(node)
            rhs = f"{self.ref}.new_full([1, 1], {_float_literal(v)})"
            if node.kind == OP:
                comment = _text(node)
        elif node.kind == OP:
            rhs = self._apply(node)
            comment = _text(node)
        else:
            raise CompileError(f"cannot compile node {node!r}")
        name = f"t{len(self.names)}"
        if comment:
            if len(comment) > _COMMENT_WIDTH:
                comment = comment[:_COMMENT_WIDTH - 3] + "..."
            comment = f"  # {comment}"
        self.lines.append(f"    {name} = {rhs}{comment}")
        self.names[node] = name
        return name

    def _apply(self, node: Node) -> str:
        op = OPERATORS.get(str(node.head))
        if op is None:
            raise CompileError(f"unknown operator {node.head!r}")
        operands = []
        for i, a in enumerate(node.args):
            if i in op.int_params:
                if a.kind != CONST or not isinstance(a.head, int):
                    raise CompileError(f"operand {i + 1} of {op.name!r} must be an Int literal, got {_text(a)}")
                operands.append(str(int(a.head)))
            else:
                src = self.value(a)
                # Lift exactly as python_impl does, so broadcasting matches the evaluator.
                operands.append(lift_source(src, a.type, node.type) if op.elementwise else src)
        return op.template(node.type).format(*operands)


def _fold(node: Node) -> float:
    """The value of a constant (terminal-free) subexpression, computed by the evaluator."""
    def leaf(n: Node) -> torch.Tensor:
        raise CompileError(f"a {node.type} subexpression uses {n.head}: {_text(node)}")

    v = evaluate_with(node, leaf, torch.float32, torch.device("cpu"))
    return float(v) if isinstance(v, int) else float(v.reshape(-1)[0])


def _float_literal(v: float) -> str:
    """Source text that reads back as exactly ``v`` in Python and TorchScript."""
    if math.isnan(v):
        return "float('nan')"
    if math.isinf(v):
        return "float('inf')" if v > 0 else "-float('inf')"
    return repr(v)


def _text(node: Node) -> str:
    try:
        return to_sexpr(node)
    except ValueError:  # a non-finite literal, only possible in a programmatically built node
        return repr(node.head) if not node.args else f"({node.head} ...)"
