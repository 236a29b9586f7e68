"""What the adapters share: the weight expression, the target layer's name, and the expression's
weights for a batch of images, computed with the project's own terminal engine (``cam.terminals``:
gradients, ScoreCAM masked passes, ablations through the tail of the network) and evaluator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..cam.terminals import DEFAULT_CHUNK_SIZE, compute_terminals
from ..evaluate import evaluate
from ..lang.ast import Node
from ..lang.sexpr import parse_expr
from ..lang.terminals import terminal_types
from ..models.batching import BatchSize
from ..models.precision import DEFAULT_PRECISION
from .errors import IntegrationError


def weight_expression(expression: str | Node) -> Node:
    """The typed AST of a weight expression given as s-expression text (or already parsed); it must be a
    Vec (one weight per channel) or a Map (one per channel and position)."""
    node = parse_expr(expression, terminal_types()) if isinstance(expression, str) else expression
    if not isinstance(node, Node) or not node.type.is_tensor:
        raise IntegrationError(f"{expression} is not a weight expression (a Vec or a Map over the terminals)")
    return node


def layer_name(model: nn.Module, layer: nn.Module | str) -> str:
    """The dotted path of ``layer`` (a submodule of ``model``, or its path) inside ``model``."""
    if isinstance(layer, str):
        return layer
    for name, module in model.named_modules():
        if module is layer and name:
            return name
    raise IntegrationError(f"target layer {type(layer).__name__} is not a submodule of the model; pass one of "
                           f"model.named_modules()")


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def expression_weights(model: nn.Module, layer: str, node: Node, images: torch.Tensor,
                       classes: Sequence[int] | torch.Tensor, chunk_size: BatchSize = DEFAULT_CHUNK_SIZE,
                       ablation: str = "auto", precision: str = DEFAULT_PRECISION) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, A)``: the expression's weights for ``images`` ``[N, 3, H, W]`` and target ``classes`` ``[N]``,
    ``[N, K]`` for a Vec or ``[N, K, h, w]`` (``[N, K, 1, 1]`` when constant over positions) for a Map, and
    the layer's activations ``A`` ``[N, K, h, w]``; on the model's device, without autograd history."""
    targets = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    terms, info = compute_terminals(model, layer, images.detach(), targets, sorted(node.terminals()),
                                    device=model_device(model), chunk_size=chunk_size, progress=False,
                                    ablation=ablation, precision=precision)
    return evaluate(node, terms).detach(), info.acts.detach()
