"""Per-class weights compiled into one TorchScript module (docs/search.md#per-class-search).

Class-based decomposition runs one search per predicted class; its result is a weight expression
per class plus a fallback for classes without their own. ``compile_dispatch`` turns that into one
``ScriptModule`` that picks, for each image, the expression of the model's predicted class:

* ``forward(self, classes, <terminals>) -> Tensor``: ``classes`` is ``[N]`` (integers, normally
  int64: the predicted class of each image); row ``i`` of ``W`` is the expression of class
  ``classes[i]``, or the fallback's when that class has none (negative classes included).
* ``saliency(self, activations, classes, <terminals>) -> Tensor``: ``relu(sum_k W_k * A_k)``,
  ``[N, h, w]``.

Design:

* Every expression is the same type, all Vec (``W`` is ``[N, K]``) or all Map; mixing them is a
  ``CompileError``. Shape rule for Map: ``W`` is ``[N, K, h, w]`` as soon as one expression gives a
  full map for these inputs, and each constant-over-positions (``[n, K, 1, 1]``) result is then
  expanded over ``h, w``; only when every expression is constant over positions is ``W``
  ``[N, K, 1, 1]``. The shape depends on the expressions and the inputs' shapes, never on which
  classes occur in the batch (an expression without rows still reports its shape).
* Each distinct expression (structural equality; classes that share one, the fallback included,
  share it) is one generated method ``_exprI`` whose body is the same code ``compile_torchscript``
  generates, over the terminals it uses. ``forward`` runs it once per call, on the rows that need
  it only (``index_select`` on its rows, then ``index_copy_`` into ``W``), which is exact because
  every operator works per image (no reduction crosses images). The rows of a class expression are
  ``isin(classes, its classes)``; the fallback takes every other row, so the rows are partitioned.
* ``inputs`` defaults to the union of the terminals the expressions use, in the order of
  ``TERMINALS``; ``classes`` is moved to the device of the first input.
"""

from __future__ import annotations

import json
import operator
import os
import re
import textwrap
from collections.abc import Mapping, Sequence

import torch

from ..lang.ast import Node
from ..lang.operators import HELPERS_SRC, lift_source
from ..lang.terminals import TERMINALS
from ..lang.types import Type
from ..util.warnings import quiet_deprecations
from .codegen import SHAPES, Codegen, CompileError, class_ids, expression_text, input_checks, signature

__all__ = ["compile_dispatch", "generate_dispatch_source", "save_dispatch"]

# Locals of the generated forward; a terminal parameter must not shadow them.
_DISPATCH_RESERVED = {"classes", "weights", "height", "width"}
_DISPATCH_LOCAL = re.compile(r"(rows|w)\d+")
_LIST_WIDTH = 100


class _Plan:
    """The validated dispatch: distinct expressions, who serves which class, and the signature."""

    def __init__(self, per_class: Mapping[int, Node], fallback: Node, inputs: Sequence[str] | None) -> None:
        if not isinstance(per_class, Mapping):
            raise CompileError(f"per_class must map class indices to expressions, got {type(per_class).__name__}")
        classes: dict[int, Node] = {}
        for key, node in per_class.items():
            c = _class_index(key)
            if c in classes:
                raise CompileError(f"class {c} is given twice")
            classes[c] = _expression(node, f"class {c}")
        self.classes = dict(sorted(classes.items()))
        self.fallback = _expression(fallback, "the fallback")

        # Distinct expressions in order of their first class, the fallback's last when it is new.
        self.exprs: list[Node] = []
        for node in [*self.classes.values(), self.fallback]:
            if node not in self.exprs:
                self.exprs.append(node)
        self.index = {node: i for i, node in enumerate(self.exprs)}
        self.fallback_index = self.index[self.fallback]
        self.served: list[list[int]] = [[] for _ in self.exprs]
        for c, node in self.classes.items():
            self.served[self.index[node]].append(c)

        types = {node.type for node in self.exprs}
        for node in self.exprs:  # holes, non-weight types: the single-expression checks and messages
            signature(node)
        if len(types) > 1:
            by_type: dict[Type, list[str]] = {}
            for c, node in self.classes.items():
                by_type.setdefault(node.type, []).append(f"class {c}")
            by_type.setdefault(self.fallback.type, []).append("the fallback")
            groups = "; ".join(f"{t}: {', '.join(who)}" for t, who in by_type.items())
            raise CompileError(f"all expressions of a dispatch must have the same type (all Vec or all Map), "
                               f"got {groups}")
        self.type = self.fallback.type

        if inputs is None:
            used = {name for node in self.exprs for name in node.terminals()}
            order = list(TERMINALS)
            names = sorted(used, key=lambda n: (order.index(n), "") if n in TERMINALS else (len(order), n))
        else:
            names = list(inputs)
        types_of: dict[str, Type] = {}
        for node in self.exprs:
            used_here = set(node.terminals())
            for name, t in signature(node, names):  # checks inputs against each expression
                if name in used_here:
                    types_of[name] = t
                else:
                    types_of.setdefault(name, t)
        for name in names:
            if name in _DISPATCH_RESERVED or _DISPATCH_LOCAL.fullmatch(name):
                raise CompileError(f"terminal name {name!r} cannot be a parameter of the generated dispatch code")
        self.params = [(name, types_of[name]) for name in names]

    def branch_params(self, node: Node) -> list[tuple[str, Type]]:
        """The parameters of an expression's method: the inputs it uses, in the inputs' order."""
        used = set(node.terminals())
        return signature(node, [name for name, _ in self.params if name in used])

    def manifest(self) -> dict:
        return {"classes": {str(c): expression_text(node) for c, node in self.classes.items()},
                "fallback": expression_text(self.fallback),
                "inputs": [name for name, _ in self.params]}


def generate_dispatch_source(per_class: Mapping[int, Node], fallback: Node,
                             inputs: Sequence[str] | None = None) -> str:
    """TorchScript source of the dispatch module's methods for ``per_class`` and ``fallback``.

    Like ``generate_source``, the methods call the helpers of ``HELPERS_SRC`` on ``self``; compile
    ``HELPERS_SRC + source`` (``compile_dispatch`` does)."""
    return _source(_Plan(per_class, fallback, inputs))


def compile_dispatch(per_class: Mapping[int, Node], fallback: Node,
                     inputs: Sequence[str] | None = None) -> torch.jit.ScriptModule:
    """A ``ScriptModule`` whose ``forward(classes, ...)`` / ``saliency(activations, classes, ...)``
    use, for each image, the expression of its predicted class (or the fallback)."""
    return _compile(_source(_Plan(per_class, fallback, inputs)))


def save_dispatch(per_class: Mapping[int, Node], fallback: Node, path: str | os.PathLike[str],
                  inputs: Sequence[str] | None = None) -> torch.jit.ScriptModule:
    """Compile the dispatch and save it to ``path`` (a ``.pt`` file for ``torch.jit.load``).

    Extra files in the archive: ``sycam_dsl/source.py``, the generated source, and
    ``sycam_dsl/dispatch.json``, ``{"classes": {"3": "(sexpr)", ...}, "fallback": "(sexpr)",
    "inputs": [...]}``, which says which expression serves which class."""
    plan = _Plan(per_class, fallback, inputs)
    source = _source(plan)
    module = _compile(source)
    extra = {"sycam_dsl/source.py": HELPERS_SRC + source,
             "sycam_dsl/dispatch.json": json.dumps(plan.manifest(), indent=2) + "\n"}
    with quiet_deprecations():
        torch.jit.save(module, os.fspath(path), _extra_files=extra)
    return module


def _compile(source: str) -> torch.jit.ScriptModule:
    # One class per module, as in compile_torchscript (define() cannot redefine a class's methods).
    cls = type(f"SycamDispatch{next(class_ids)}", (torch.jit.ScriptModule,), {"__module__": "sycam_dsl_generated"})
    with quiet_deprecations():
        module = cls()
        module.define(HELPERS_SRC + source)
    return module


def _header(plan: _Plan) -> list[str]:
    """The generated file's comment: which class runs which expression, the shapes of ``W`` and the inputs."""
    params = plan.params
    fb = plan.fallback_index
    header = [
        "# Generated by sycam-dsl: CAM weights that dispatch on the model's predicted class.",
        "# class -> expression (method):",
        *[f"#   {c} -> _expr{plan.index[node]}: {expression_text(node)}" for c, node in plan.classes.items()],
        f"#   any other class (fallback) -> _expr{fb}: {expression_text(plan.fallback)}",
        f"# W is a {plan.type} {SHAPES[plan.type]}"
        + ("; it is [N, K, 1, 1] only when every expression is constant over positions,"
           if plan.type == Type.MAP else "."),
    ]
    if plan.type == Type.MAP:
        header.append("# otherwise constant-over-positions results are expanded over h, w.")
    header += [
        "# Inputs, batched over N images and K channels:",
        "#   classes: [N] integers, the model's predicted class of each image",
        *[f"#   {name}: {t} {SHAPES[t]}" for name, t in params],
        "# Each expression runs once per call, on the rows (images) of its classes only.",
        "# saliency(activations [N, K, h, w], classes, ...) returns relu(sum_k W_k * A_k) as [N, h, w].",
        "# Constants take the dtype and device of each method's first input; constant subexpressions "
        "are folded in float32.",
    ]
    return header


def _methods(plan: _Plan) -> list[str]:
    """One method ``_exprI`` per distinct expression, over the terminals it uses."""
    fb = plan.fallback_index
    methods: list[str] = []
    for i, node in enumerate(plan.exprs):
        bparams = plan.branch_params(node)
        gen = Codegen(bparams[0][0])
        result = gen.value(node)
        serves = [str(c) for c in plan.served[i]] + (["any other class (fallback)"] if i == fb else [])
        methods += [
            f"def _expr{i}(self, {', '.join(f'{name}: Tensor' for name, _ in bparams)}) -> Tensor:",
            f"    # W = {expression_text(node)}",
            *textwrap.wrap(f"for classes: {', '.join(serves)}", _LIST_WIDTH,
                           initial_indent="    # ", subsequent_indent="    #   ", break_on_hyphens=False),
            *gen.lines,
            f"    return {result}",
            "",
        ]
    return methods


def _forward_body(plan: _Plan) -> list[str]:
    """``forward``'s body: the input checks, each expression on the rows of its classes, ``W`` put together."""
    params = plan.params
    ref = params[0][0]
    fb = plan.fallback_index
    body = [
        *input_checks(params),
        f'    assert classes.dim() == 1 and classes.shape[0] == {ref}.shape[0], '
        f'"classes must be [N], one predicted class per image of {ref}"',
        '    assert not classes.is_floating_point(), "classes must be integers"',
    ]
    if len(plan.exprs) == 1:
        # the expression's own inputs: ``inputs`` may name more (unused parameters, for a fixed signature)
        body.append(f"    return self._expr0({', '.join(name for name, _ in plan.branch_params(plan.exprs[0]))})")
    else:
        body.append(f"    classes = classes.to({ref}.device)")
        for i in range(len(plan.exprs)):
            if i == fb:
                others = sorted(c for j, cs in enumerate(plan.served) if j != fb for c in cs)
                body.append(f"    rows{i} = torch.isin(classes, {_long_list(others)}, invert=True)"
                            f".nonzero().flatten()  # fallback: every other class")
            else:
                body.append(f"    rows{i} = torch.isin(classes, {_long_list(plan.served[i])}).nonzero().flatten()")
        for i, node in enumerate(plan.exprs):
            sub = ", ".join(f"{name}.index_select(0, rows{i})" for name, _ in plan.branch_params(node))
            body.append(f"    w{i} = self._expr{i}({sub})")
        n = len(plan.exprs)
        if plan.type == Type.VEC:
            body.append(f"    weights = w0.new_zeros([{ref}.shape[0], w0.shape[1]])")
            body += [f"    weights.index_copy_(0, rows{i}, w{i})" for i in range(n)]
        else:
            body += [
                f"    height = max([{', '.join(f'w{i}.shape[2]' for i in range(n))}])",
                f"    width = max([{', '.join(f'w{i}.shape[3]' for i in range(n))}])",
                f"    weights = w0.new_zeros([{ref}.shape[0], w0.shape[1], height, width])",
            ]
            body += [f"    weights.index_copy_(0, rows{i}, w{i}.expand([-1, -1, height, width]))" for i in range(n)]
        body.append("    return weights")
    return body


def _source(plan: _Plan) -> str:
    params = plan.params
    args = ", ".join(f"{name}: Tensor" for name, _ in params)
    call = ", ".join(name for name, _ in params)
    lifted = lift_source("weights", plan.type, Type.MAP)
    return "\n".join([
        *_header(plan),
        "",
        *_methods(plan),
        f"def forward(self, classes: Tensor, {args}) -> Tensor:",
        *_forward_body(plan),
        "",
        f"def saliency(self, activations: Tensor, classes: Tensor, {args}) -> Tensor:",
        '    assert activations.dim() == 4, "activations must be [N, K, h, w]"',
        f"    weights = self.forward(classes, {call})",
        f"    return torch.relu(({lifted} * activations).sum(dim=-3))",
        "",
    ])


def _long_list(values: Sequence[int]) -> str:
    """``torch.tensor([...])`` of class indices in ``classes``' dtype and device, wrapped if long."""
    items = ", ".join(str(v) for v in values)
    if len(items) > _LIST_WIDTH:
        lines, line = [], ""
        for v in values:
            piece = f"{v}, "
            if line and len(line) + len(piece) > _LIST_WIDTH:
                lines.append(line.rstrip())
                line = ""
            line += piece
        lines.append(line.rstrip(", "))
        items = "\n        ".join(lines)
        items = "\n        " + items + "\n    "
    return f"torch.tensor([{items}], dtype=classes.dtype, device=classes.device)"


def _class_index(key: object) -> int:
    if isinstance(key, bool):
        raise CompileError(f"class keys must be non-negative integers, got {key!r}")
    try:
        c = operator.index(key)  # type: ignore[arg-type]  # any object: TypeError below says what is wrong
    except TypeError:
        raise CompileError(f"class keys must be non-negative integers, got {key!r}") from None
    if c < 0:
        raise CompileError(f"class keys must be non-negative integers, got {c}")
    return c


def _expression(node: object, who: str) -> Node:
    if not isinstance(node, Node):
        raise CompileError(f"{who} must be an expression (a Node), got {type(node).__name__}")
    return node
