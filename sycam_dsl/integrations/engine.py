"""What the adapters share: the weight expression (``deploy.method``), and the expression's
weights for a batch of images, computed with the project's own terminal engine (``cam.compute``:
gradients, ScoreCAM masked passes, ablations through the tail of the network) and evaluator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..cam.compute import DEFAULT_CHUNK_SIZE, compute_terminals
from ..cam.reshape import Reshape
from ..deploy.method import load_method
from ..deploy.sycam import checked_weights
from ..lang.ast import Node
from ..models.batching import BatchSize
from ..models.precision import DEFAULT_PRECISION
from ..models.targets import Target
from .errors import IntegrationError


def weight_expression(expression: str | Node) -> Node:
    """The typed AST of one weight expression (a Vec or a Map): s-expression text, a file or a result
    folder holding one (``deploy.method.load_method``), or a parsed ``Node``; a per-class result is refused."""
    method = load_method(expression)
    if not isinstance(method, Node):
        raise IntegrationError(f"{expression} is a per-class result; the adapters take one expression (export it "
                               f"with sycam-dsl export, or use sycam_dsl.SyCAM)")
    return method


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def expression_weights(model: nn.Module, layer: str, node: Node, images: torch.Tensor,
                       classes: Sequence[int] | torch.Tensor | Target, chunk_size: BatchSize = DEFAULT_CHUNK_SIZE,
                       ablation: str = "auto", precision: str = DEFAULT_PRECISION,
                       reshape: Reshape = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, A)``: the expression's weights for ``images`` ``[N, 3, H, W]`` and target ``classes`` ``[N]`` (or a
    ``models.targets`` target), ``[N, K]`` for a Vec or ``[N, K, h, w]`` (``[N, K, 1, 1]`` when constant over
    positions) for a Map, and the layer's activations ``A`` ``[N, K, h, w]`` (read through ``reshape``:
    ``cam.reshape``); on the model's device, without autograd history. Images whose weights are NaN or Inf
    (an expression that overflows) get zero weights, with the API's warning."""
    targets = classes if isinstance(classes, Target) else torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    terms, info = compute_terminals(model, layer, images.detach(), targets, sorted(node.terminals()),
                                    device=model_device(model), chunk_size=chunk_size, progress=False,
                                    ablation=ablation, precision=precision, reshape=reshape)
    weights = checked_weights(node, terms).detach()
    # NaN or Inf weights give blank maps, as in the engine's template (grad-cam's weighted sum would be all NaN)
    bad = ~torch.isfinite(weights.reshape(weights.shape[0], -1)).all(dim=1)
    weights = weights.masked_fill(bad.reshape(-1, *[1] * (weights.dim() - 1)), 0.0)  # not in place: may be a terminal
    return weights, info.acts.detach()
