"""The classic CAM methods as expressions of the weight language (SPEC section 3).

Each baseline is parsed with ``parse_expr`` over all terminals and evaluated by the same engine as
any synthesized candidate (``evaluate`` then ``cam.heatmaps``), so there is no separate code path
to drift from the search's:

=============  ==============================  ======
name           expression                      weight
=============  ==============================  ======
GradCAM        ``grads``                       Vec
GradCAM++      ``pgrads``                      Vec   (positive-gradient form, SPEC section 2)
ScoreCAM       ``cic``                         Vec
AblationCAM    ``abl``                         Vec
XGradCAM       ``(/ (gap (* A G)) (gap A))``   Vec
HiResCAM       ``G``                           Map
LayerCAM       ``(relu G)``                    Map
=============  ==============================  ======

GradCAM++ here is SPEC's positive-gradient form ``mean_ij ReLU(dz_c/dA_k[i,j])``, not the
alpha-weighted form of the GradCAM++ paper (eq. 19) that grad-cam implements; the latter is
``gradcampp_alpha_expression`` below, a Map expression that depends on the layer's ``h * w``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .cam.heatmaps import heatmaps, layer_saliency
from .errors import SycamError
from .evaluate import Terminals, evaluate
from .lang.ast import Node
from .lang.sexpr import parse_expr
from .lang.terminals import terminal_types

#: name -> expression text, in the order tables list them.
BASELINE_EXPRESSIONS: dict[str, str] = {
    "GradCAM": "grads",
    "GradCAM++": "pgrads",
    "ScoreCAM": "cic",
    "AblationCAM": "abl",
    "XGradCAM": "(/ (gap (* A G)) (gap A))",
    "HiResCAM": "G",
    "LayerCAM": "(relu G)",
    "ScoreCAM-softmax": "(softmax mlogits)",  # grad-cam's ScoreCAM variant
}

#: The baselines SPEC section 7 reports beside a search's result.
SEARCH_BASELINES = ("GradCAM", "GradCAM++", "ScoreCAM", "AblationCAM")


@dataclass(frozen=True)
class Baseline:
    """A named CAM method and its weight expression (a typed AST)."""

    name: str
    expression: str
    node: Node

    @property
    def terminals(self) -> tuple[str, ...]:
        """The terminals the expression reads (what ``compute_terminals`` must provide)."""
        return tuple(self.node.terminals())

    def weights(self, terminals: Terminals) -> torch.Tensor:
        """``W``: ``[N, K]`` (Vec) or ``[N, K, h, w]`` (Map)."""
        return evaluate(self.node, terminals)

    def saliency(self, terminals: Terminals, acts: torch.Tensor) -> torch.Tensor:
        """``S`` at layer resolution ``[N, h, w]`` for activations ``[N, K, h, w]``."""
        return layer_saliency(self.weights(terminals), acts, self.node.type)

    def heatmaps(self, terminals: Terminals, acts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``H`` ``[N, H, W]`` in ``[0, 1]`` for activations ``[N, K, h, w]`` and input size ``(H, W)``."""
        return heatmaps(self.weights(terminals), acts, self.node.type, size)


@lru_cache(maxsize=None)
def baseline(name: str) -> Baseline:
    """The baseline called ``name`` (case-insensitive, e.g. ``gradcam++``)."""
    by_key = {k.lower(): k for k in BASELINE_EXPRESSIONS}
    key = by_key.get(name.strip().lower())
    if key is None:
        raise SycamError(f"unknown baseline {name!r} (known: {', '.join(BASELINE_EXPRESSIONS)})")
    text = BASELINE_EXPRESSIONS[key]
    return Baseline(key, text, parse_expr(text, terminal_types(), source=f"<baseline {key}>"))


def baselines(names: tuple[str, ...] | list[str] | None = None) -> list[Baseline]:
    """The named baselines (all of them by default), in table order."""
    return [baseline(n) for n in (names if names is not None else BASELINE_EXPRESSIONS)]


def gradcampp_alpha_expression(layer_hw: tuple[int, int], eps: float = 1e-6) -> str:
    """GradCAM++ as grad-cam computes it (paper eq. 19 with the exponential-output simplification):

    ``w_k = sum_ij ReLU(G_kij) * alpha_kij``,
    ``alpha = G^2 / (2 G^2 + sum_ij(A_k) * G^3 + eps)``.

    As a Vec expression: ``gap`` is a mean, so ``sum_ij A_k = h*w * gap(A)``; the outer sum's factor
    ``h*w`` is positive and dropped, which min-max normalization ignores. ``eps`` is grad-cam's."""
    hw = float(layer_hw[0] * layer_hw[1])
    return (f"(gap (* (relu G) (/ (sq G) (+ (+ (* 2.0 (sq G)) (* (* {hw!r} (gap A)) (pow G 3))) "
            f"{float(eps)!r}))))")
