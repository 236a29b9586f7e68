"""Code generation shared by the compiled backends (docs/deploy.md#compiled-weight-files): the signature of a weight
expression, the input checks and one local per distinct subexpression.

``torchscript`` builds a single expression's module from these pieces, ``dispatch`` one module that
picks a per-class expression; both emit the same code for the same expression.
"""

from __future__ import annotations

import itertools
import keyword
import math
from collections.abc import Sequence

import torch

from ..errors import SycamError
from ..evaluate.evaluator import evaluate_with
from ..lang.ast import CONST, HOLE, OP, VAR, Node, to_sexpr
from ..lang.operators import OPERATORS, lift_source
from ..lang.terminals import TERMINALS
from ..lang.types import Type

__all__ = ["SHAPES", "CompileError", "Codegen", "class_ids", "expression_text", "input_checks", "signature"]

#: The shape of each weight type's value, as shown in generated comments and messages.
SHAPES = {Type.VEC: "[N, K]", Type.MAP: "[N, K, h, w]"}
_RANKS = {Type.VEC: 2, Type.MAP: 4}
# Names the generated code uses itself; a terminal parameter must not shadow them.
_RESERVED = {"self", "torch", "Tensor", "activations", "weights", "float"}
_COMMENT_WIDTH = 72
#: Numbers for the generated module classes (each compiled module gets its own class).
class_ids = itertools.count()


class CompileError(SycamError, ValueError):
    """An expression that cannot be compiled (holes, a missing input, a non-tensor result)."""


def signature(node: Node, inputs: Sequence[str] | None = None) -> list[tuple[str, Type]]:
    """The compiled function's parameters, ``(terminal name, type)``, in order.

    ``inputs`` defaults to ``node.terminals()``; when given, it must name every terminal the
    expression uses and may name more (they become unused parameters, for a fixed signature)."""
    if node.holes():
        raise CompileError(f"cannot compile a production template with holes: {expression_text(node)}")
    if node.type not in SHAPES:
        raise CompileError(f"a weight expression must be a Vec or a Map, got a {node.type}: {expression_text(node)}")
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
        if t not in SHAPES:
            raise CompileError(f"terminal {name!r} is a {t}; only Vec and Map terminals can be inputs")
        if not name.isidentifier() or keyword.iskeyword(name) or name in _RESERVED:
            raise CompileError(f"terminal name {name!r} cannot be a parameter of the generated code")
        out.append((name, t))
    return out


def input_checks(params: Sequence[tuple[str, Type]]) -> list[str]:
    """Source lines (indented for a method body) asserting the inputs' ranks and shared sizes."""
    ref = params[0][0]
    checks = [f'    assert {name}.dim() == {_RANKS[t]}, '
              f'"{name} must be a {t} {SHAPES[t]}"' for name, t in params]
    for name, _ in params[1:]:
        checks.append(f"    assert {name}.shape[0] == {ref}.shape[0] and {name}.shape[1] == {ref}.shape[1], "
                      f'"{name} and {ref} must have the same N and K"')
    maps = [name for name, t in params if t == Type.MAP]
    for name in maps[1:]:
        checks.append(f"    assert {name}.shape[2] == {maps[0]}.shape[2] and {name}.shape[3] == {maps[0]}.shape[3], "
                      f'"{name} and {maps[0]} must have the same h and w"')
    return checks


class Codegen:
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
                comment = expression_text(node)
        elif node.kind == OP:
            rhs = self._apply(node)
            comment = expression_text(node)
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
                    raise CompileError(f"operand {i + 1} of {op.name!r} must be an Int literal, "
                                       f"got {expression_text(a)}")
                operands.append(str(int(a.head)))
            else:
                src = self.value(a)
                # Lift exactly as python_impl does, so broadcasting matches the evaluator.
                operands.append(lift_source(src, a.type, node.type) if op.elementwise else src)
        return op.template(node.type).format(*operands)


def _fold(node: Node) -> float:
    """The value of a constant (terminal-free) subexpression, computed by the evaluator."""
    def leaf(n: Node) -> torch.Tensor:
        raise CompileError(f"a {node.type} subexpression uses {n.head}: {expression_text(node)}")

    v = evaluate_with(node, leaf, torch.float32, torch.device("cpu"))
    return float(v) if isinstance(v, int) else float(v.reshape(-1)[0])


def _float_literal(v: float) -> str:
    """Source text that reads back as exactly ``v`` in Python and TorchScript."""
    if math.isnan(v):
        return "float('nan')"
    if math.isinf(v):
        return "float('inf')" if v > 0 else "-float('inf')"
    return repr(v)


def expression_text(node: Node) -> str:
    """``node`` as s-expression text for comments and messages (a placeholder for non-finite literals)."""
    try:
        return to_sexpr(node)
    except ValueError:  # a non-finite literal, only possible in a programmatically built node
        return repr(node.head) if not node.args else f"({node.head} ...)"
