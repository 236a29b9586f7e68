"""Evaluating a typed AST with the operator table's implementations.

Values follow ``lang.types``: Vec ``[..., N, K]``, Map ``[..., N, K, h, w]`` (``bcast`` gives
``[..., N, K, 1, 1]``), Real ``[..., 1, 1]``; Int operands of ``topk`` / ``pow`` are Python ints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import cast

import torch

from ..lang.ast import CONST, HOLE, OP, VAR, Node
from ..lang.operators import OPERATORS, python_impl
from ..lang.types import Type
from .terminal_values import Terminals

Value = torch.Tensor | int


def _const_tensor(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A ``[1, 1]`` constant; shared between calls, so nothing may modify it in place."""
    # The sign goes into the key because 0.0 == -0.0 would otherwise share one entry.
    return _cached_const(float(value), math.copysign(1.0, value), dtype, device)


@lru_cache(maxsize=4096)
def _cached_const(value: float, sign: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full((1, 1), value, dtype=dtype, device=device)


def evaluate_with(node: Node, leaf: Callable[[Node], Value], dtype: torch.dtype,
                  device: torch.device) -> Value:
    """Evaluate ``node``; ``leaf`` gives the value of each terminal and hole."""
    if node.kind == OP:
        op = OPERATORS[cast(str, node.head)]  # an operator node's head is the operator's name
        args = []
        for i, a in enumerate(node.args):
            if i in op.int_params:
                args.append(a.head if a.kind == CONST else leaf(a))
            else:
                args.append(evaluate_with(a, leaf, dtype, device))
        return python_impl(op, node.type, tuple(a.type for a in node.args))(*args)
    if node.kind == CONST:
        return _const_tensor(cast(float, node.head), dtype, device)  # a literal's head is its int or float
    if node.kind in (VAR, HOLE):
        v = leaf(node)
        if isinstance(v, int) and node.type != Type.INT:
            raise TypeError(f"{node.head} gave an int for a {node.type}")
        return _const_tensor(v, dtype, device) if isinstance(v, int) else v
    raise ValueError(f"unknown node kind {node.kind!r}")


def evaluate(node: Node, terminals: Terminals) -> torch.Tensor:
    """The value of ``node`` on ``terminals``: ``[N, K]`` for a Vec, ``[N, K, h, w]`` (or
    ``[N, K, 1, 1]`` when constant over positions) for a Map."""
    if node.holes():
        raise ValueError(f"cannot evaluate a production template with holes: {node}")
    # Without holes every leaf is a terminal (named by its head), whose value is a tensor; so is the result.
    return cast(torch.Tensor, evaluate_with(node, lambda n: terminals[cast(str, n.head)], terminals.dtype,
                                            terminals.device))
