"""The terminals a grammar may use (docs/language.md, "Terminals"), in one table: each terminal's
type and meaning, the pass of the CAM engine that computes it and whether it needs a backward pass.

Every consumer derives its sets from this table: the engine's passes and record kinds
(``cam.compute``), the terminal store's record fields (``cam.store``), the terminals computed on
demand and their groups (``synthesis.on_demand``), and the explainer file's inputs
(``deploy.explainer``). ``tests/test_terminal_table.py`` checks that each one does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .types import Type


@dataclass(frozen=True)
class TerminalPass:
    """One way the engine computes terminals (``cam.gradient_pass``, ``cam.scorecam_pass``,
    ``cam.ablation_pass``). ``record``: the record kind its values are stored as (part of every
    terminal store key: renaming one orphans the stored entries); ``expensive``: it costs ``K``
    forward passes per image (one per channel), so a search computes it on demand; ``byproducts``:
    the values besides terminals that each of its records holds; ``per_live_channel``: an expensive
    pass that skips the channels whose activation map is constant (``cam.scorecam_pass.live_channels``),
    so an image's cost is proportional to its live channels, not ``K``."""

    name: str
    record: str
    expensive: bool
    byproducts: tuple[str, ...]
    what: str
    per_live_channel: bool = False


#: One forward pass, and a backward pass when a gradient terminal is asked for, per image batch.
GRADIENT = TerminalPass("gradient", "base", False, ("logits", "targets"),
                        "one forward (and backward) pass per image batch")
#: ScoreCAM: the model on each image masked by each channel's upsampled activation map.
SCORECAM = TerminalPass("scorecam", "cic", True, (), "one forward pass per masked image, K per image",
                        per_live_channel=True)
#: AblationCAM: the layers after the target layer on the activations with one channel zeroed.
ABLATION = TerminalPass("ablation", "abl", True, ("ablated_logits", "abl_method"),
                        "the layers after the target layer once per zeroed channel, K per image")
#: The passes in the order they run: the others read the gradient pass's activations and targets.
PASSES: tuple[TerminalPass, ...] = (GRADIENT, SCORECAM, ABLATION)


@dataclass(frozen=True)
class Terminal:
    """One terminal: its ``type``, what it ``means``, the pass that computes it (``computed_by``),
    whether it needs the backward pass (``backward``: computed only when asked for) and, for one
    that is not stored but computed from another terminal, that terminal (``derived_from``)."""

    type: Type
    meaning: str
    computed_by: TerminalPass
    backward: bool = False
    derived_from: str | None = None


#: name -> terminal, in the order weights modules take them. Gradients are of the logit z_c; "score"
#: is the softmax probability.
TABLE: dict[str, Terminal] = {
    "grads": Terminal(Type.VEC, "mean over h,w of dz_c/dA_k (GradCAM)", GRADIENT, backward=True),
    "pgrads": Terminal(Type.VEC, "mean over h,w of ReLU(dz_c/dA_k) (GradCAM++, positive-gradient form)", GRADIENT,
                       backward=True),
    "cic": Terminal(Type.VEC, "ScoreCAM channel-wise increase of confidence", SCORECAM),
    "abl": Terminal(Type.VEC, "AblationCAM score (z_c - z_c^(k)) / z_c", ABLATION),
    "mlogits": Terminal(Type.VEC, "z_c(x * M_k), the target logit of each ScoreCAM-masked image "
                                  "(grad-cam's ScoreCAM weights are (softmax mlogits))", SCORECAM),
    "acts": Terminal(Type.VEC, "mean over h,w of A_k", GRADIENT, derived_from="A"),
    "G": Terminal(Type.MAP, "gradient maps dz_c/dA [K, h, w]", GRADIENT, backward=True),
    "A": Terminal(Type.MAP, "activations A [K, h, w]", GRADIENT),
}

#: name -> (type, what it is): the table's language-facing columns.
TERMINALS: dict[str, tuple[Type, str]] = {name: (t.type, t.meaning) for name, t in TABLE.items()}


def terminal_types() -> dict[str, Type]:
    """name -> type of every terminal."""
    return {name: t.type for name, t in TABLE.items()}


def pass_of(name: str) -> TerminalPass:
    """The pass that computes terminal ``name``."""
    return TABLE[name].computed_by


def terminals_of_pass(p: TerminalPass) -> tuple[str, ...]:
    """The terminals pass ``p`` computes, in table order (asking for one of an expensive pass's
    terminals computes all of them: ``cic`` gives ``mlogits``)."""
    return tuple(name for name, t in TABLE.items() if t.computed_by == p)


def pass_of_record(record: str) -> TerminalPass:
    """The pass whose values are stored as record kind ``record``."""
    return next(p for p in PASSES if p.record == record)


def record_fields(p: TerminalPass) -> tuple[str, ...]:
    """What every record of pass ``p`` holds: its terminals that are stored whenever it runs (not
    derived, not backward-only), then its by-products (``base``: ``A``, the logits, the targets)."""
    always = tuple(name for name in terminals_of_pass(p)
                   if not TABLE[name].backward and TABLE[name].derived_from is None)
    return always + p.byproducts


def passes_for(names: Iterable[str]) -> tuple[TerminalPass, ...]:
    """The passes terminals ``names`` need, in running order: the gradient pass always (it gives the
    activations and targets the others read), each other pass when one of its terminals is asked."""
    wanted = {pass_of(n) for n in names}
    return tuple(p for p in PASSES if p == GRADIENT or p in wanted)


def expensive_terminals() -> frozenset[str]:
    """The terminals of the expensive passes (``K`` forward passes per image)."""
    return frozenset(name for name, t in TABLE.items() if t.computed_by.expensive)


def expensive_groups() -> list[tuple[str, ...]]:
    """The terminals of each expensive pass, one group each: what one on-demand computation gives."""
    return [terminals_of_pass(p) for p in PASSES if p.expensive]


def backward_terminals() -> frozenset[str]:
    """The terminals that need the backward pass."""
    return frozenset(name for name, t in TABLE.items() if t.backward)


def needs_backward(names: Iterable[str]) -> bool:
    """Whether any of terminals ``names`` needs the backward pass."""
    return any(TABLE[n].backward for n in names if n in TABLE)
