"""Class-based decomposition's result (docs/search.md#per-class-search): one expression per predicted class, and a
fallback for the classes without their own."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lang.ast import Node, to_sexpr


@dataclass(frozen=True)
class Dispatch:
    """``per_class`` maps a class index to its expression; ``fallback`` serves every other class."""

    per_class: dict[int, Node]
    fallback: Node

    def expression_for(self, c: int) -> Node:
        return self.per_class.get(int(c), self.fallback)

    def groups(self, classes: torch.Tensor) -> dict[Node, torch.Tensor]:
        """Expression -> positions ``[m]`` of the images (by predicted class ``classes`` ``[N]``) it serves;
        classes that share an expression share a group."""
        classes = classes.detach().cpu()
        out: dict[Node, list[int]] = {}
        for i, c in enumerate(classes.tolist()):
            out.setdefault(self.expression_for(c), []).append(i)
        return {node: torch.tensor(idx, dtype=torch.long) for node, idx in out.items()}

    def describe(self) -> dict[str, str]:
        """``{"3": "(sexpr)", ..., "fallback": "(sexpr)"}`` for tables and JSON."""
        out = {str(c): to_sexpr(n) for c, n in sorted(self.per_class.items())}
        out["fallback"] = to_sexpr(self.fallback)
        return out
