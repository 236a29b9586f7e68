"""The classic CAM methods as expressions of the weight language (docs/language.md#the-classic-methods-as-expressions).

Each baseline is parsed with ``parse_expr`` over all terminals and evaluated by the same engine as
any synthesized candidate (``evaluate`` then ``template.heatmaps``), so there is no separate code path
to drift from the search's:

==============  =============================================================================  ======
name            expression                                                                     weight
==============  =============================================================================  ======
GradCAM         ``grads``                                                                      Vec
GradCAM++       ``(gap (* (relu G) (/ (sq G) (+ (+ (* 2.0 (sq G)) (* (gsum A) (pow G 3))) 1e-06))))``  Vec
GradCAM++pos    ``pgrads``                                                                     Vec
ScoreCAM        ``cic``                                                                        Vec
AblationCAM     ``abl``                                                                        Vec
XGradCAM        ``(/ (gap (* A G)) (gap A))``                                                  Vec
HiResCAM        ``G``                                                                          Map
LayerCAM        ``(relu G)``                                                                   Map
==============  =============================================================================  ======

GradCAM++ is the alpha-weighted form of the GradCAM++ paper (eq. 19 with its exponential-output
simplification), as the pytorch-grad-cam package computes it:
``w_k = sum_ij ReLU(G_kij) * alpha_kij``, ``alpha = G^2 / (2 G^2 + sum_ij(A_k) G^3 + 1e-6)``; the
expression averages instead of summing over ``i, j``, a positive factor that min-max normalization
ignores. The positive-gradient mean ``pgrads`` (docs/language.md#terminals: "GradCAM++ as Grad-CAM
with positive gradients") is kept as the baseline ``GradCAM++pos``. The baseline named GradCAM++ is
the alpha form, so that it agrees with pytorch-grad-cam's GradCAM++
(docs/language.md#the-classic-methods-as-expressions).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from .errors import SycamError
from .evaluate import Terminals, evaluate
from .lang.ast import Node
from .lang.sexpr import parse_expr
from .lang.terminals import terminal_types
from .template.heatmaps import heatmaps, layer_saliency

#: name -> expression text, in the order tables list them.
BASELINE_EXPRESSIONS: dict[str, str] = {
    "GradCAM": "grads",
    "GradCAM++": "(gap (* (relu G) (/ (sq G) (+ (+ (* 2.0 (sq G)) (* (gsum A) (pow G 3))) 1e-06))))",
    "GradCAM++pos": "pgrads",  # the positive-gradient form (docs/language.md#the-classic-methods-as-expressions)
    "ScoreCAM": "cic",
    "AblationCAM": "abl",
    "XGradCAM": "(/ (gap (* A G)) (gap A))",
    "HiResCAM": "G",
    "LayerCAM": "(relu G)",
    "ScoreCAM-softmax": "(softmax mlogits)",  # grad-cam's ScoreCAM variant
}

#: The baselines a search reports (docs/search.md#the-final-check-against-the-baselines) beside a search's result.
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


@cache
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
