"""What the search checks its result against and when it may stop early: the baselines the grammar
can express (the best of them replaces a worse result at the end), the ``until`` threshold, and why
a method that beats the result in the final table was not chosen.

A baseline is in the grammar's language when its expression parses over the grammar's inputs and
is derivable from the start non-terminal (``parse.grammar.derivable``, at any size: the search's
``max_size`` bounds what it enumerates, not what it may return). Ending with the best such baseline
when its ``I1`` mean is better means the result is never worse on ``I1`` than a method the grammar
contains, whatever the small first levels said about it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..baselines import BASELINE_EXPRESSIONS, baseline
from ..errors import SycamError
from ..lang.ast import Node
from ..lang.sexpr import parse_expr
from ..parse.grammar import Grammar, derivable
from .oracle import SMALL_LEVEL, judge


def in_grammar(grammar: Grammar, name: str) -> Node | None:
    """Baseline ``name``'s expression over ``grammar``'s inputs when the grammar derives it, else None."""
    try:
        node = parse_expr(baseline(name).expression, grammar.inputs, source=f"<baseline {name}>")
    except SycamError:
        return None  # uses a terminal the grammar lacks
    return node if derivable(grammar, grammar.start.name, node) else None


def grammar_baselines(grammar: Grammar, names: Sequence[str]) -> dict[str, Node]:
    """The baselines among ``names`` that ``grammar`` can express, in ``names`` order."""
    out = {}
    for name in names:
        node = in_grammar(grammar, name)
        if node is not None:
            out[name] = node
    return out


def better(a: float, b: float, higher_is_better: bool) -> bool:
    """Whether mean ``a`` is strictly better than ``b``."""
    return a > b if higher_is_better else a < b


def best_baseline(grammar: Grammar, scores: Mapping[str, Sequence[float]],
                  higher_is_better: bool) -> tuple[str, Node] | None:
    """The scored baseline the grammar expresses with the best mean (ties: the first), or None."""
    best: tuple[str, Node, float] | None = None
    for name, node in grammar_baselines(grammar, list(scores)).items():
        mean = sum(scores[name]) / len(scores[name])
        if best is None or better(mean, best[2], higher_is_better):
            best = (name, node, mean)
    return None if best is None else (best[0], best[1])


# -- the threshold (``until``) -------------------------------------------------------------------

#: What a baseline name looks like (for "unknown baseline" rather than "not a threshold").
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*\s*(\+.*)?$")


@dataclass(frozen=True)
class Until:
    """Stop at the first incumbent whose ``I1`` mean is strictly better than the threshold: ``value``,
    or baseline ``baseline``'s ``I1`` mean moved by ``margin`` in the metric's better direction
    (``ScoreCAM+0.005`` for a lower-is-better metric: more than 0.005 below ScoreCAM's mean)."""

    value: float | None = None
    baseline: str | None = None
    margin: float = 0.0

    def __str__(self) -> str:
        if self.baseline is None:
            return f"{self.value:g}"
        return self.baseline + (f"+{self.margin:g}" if self.margin else "")

    def threshold(self, baselines: Mapping[str, Sequence[float]], higher_is_better: bool) -> float:
        """The threshold's value, given the baselines' per-image ``I1`` scores."""
        if self.baseline is None:
            assert self.value is not None
            return self.value
        if self.baseline not in baselines:
            raise SycamError(f"until {self}: the search does not score baseline {self.baseline} "
                             f"(it scores {', '.join(baselines) or 'none'})")
        scores = baselines[self.baseline]
        mean = sum(scores) / len(scores)
        return mean + self.margin if higher_is_better else mean - self.margin


def parse_until(value: float | int | str | Until | None) -> Until | None:
    """``until`` as an ``Until``: a number, or a baseline name with an optional ``+margin``
    (``ScoreCAM``, ``"ScoreCAM+0.005"``, ``0.40``); a one-line ``SycamError`` otherwise."""
    if value is None or isinstance(value, Until):
        return value
    if isinstance(value, bool):
        raise SycamError(f"until must be a number or a baseline name, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise SycamError(f"until must be a finite number, got {value!r}")
        return Until(value=float(value))
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        return parse_until(number)
    # the longest baseline name the text starts with ("GradCAM++" before "GradCAM"), then "+margin"
    names = sorted(BASELINE_EXPRESSIONS, key=len, reverse=True)
    name = next((n for n in names if text.lower().startswith(n.lower())), None)
    rest = text[len(name):].strip() if name is not None else ""
    if name is None and _NAME.match(text):
        raise SycamError(f"until {text!r}: unknown baseline {text.split('+')[0].strip()!r} "
                         f"(known: {', '.join(BASELINE_EXPRESSIONS)})")
    if name is None or (rest and not rest.startswith("+")):
        raise SycamError(f"until {text!r}: expected a number or a baseline name with an optional margin, "
                         f"e.g. 0.40, ScoreCAM or ScoreCAM+0.005")
    margin = 0.0
    if rest:
        try:
            margin = float(rest[1:])
        except ValueError:
            raise SycamError(f"until {text!r}: expected a number or a baseline name with an optional margin "
                             f"(the margin {rest[1:].strip()!r} is not a number)") from None
        if not math.isfinite(margin) or margin < 0:
            raise SycamError(f"until {text!r}: the margin must be a finite non-negative number")
    return Until(baseline=name, margin=margin)


# -- why a better method was not chosen ----------------------------------------------------------

def not_chosen_reason(name: str, grammar: Grammar, level_names: Sequence[str], baseline_scores: Sequence[float] | None,
                      result_blocks: Sequence[Sequence[float]] | None, higher_is_better: bool,
                      baseline_check: bool, small_level: int = SMALL_LEVEL) -> str:
    """Why baseline ``name``, better on average than the result in the final table, is not the result.

    ``baseline_scores``: its per-image ``I1`` scores in the search (None: not scored);
    ``result_blocks``: the result's per-level-block scores (None: no result or a per-class one)."""
    node = in_grammar(grammar, name)
    if node is None:
        return f"not in the grammar {grammar.source} (the search cannot derive `{baseline(name).expression}`)"
    if baseline_scores is None:
        return "in the grammar, but the search was interrupted before scoring it"
    if result_blocks is None:
        return "in the grammar; each per-class search checked the baselines on its own class's images"
    flat = [x for b in result_blocks for x in b]
    ours, theirs = sum(flat) / len(flat), sum(baseline_scores) / len(baseline_scores)
    if baseline_check:
        return (f"in the grammar; on the searched images (I1) its mean {theirs:.4f} is not better than the "
                f"result's {ours:.4f}, so it is better on the test split only")
    flat = []
    for level, block in zip(level_names, result_blocks):
        flat += block
        v = judge(torch.tensor(baseline_scores[:len(flat)], dtype=torch.float64),
                  torch.tensor(flat, dtype=torch.float64), higher_is_better, small_level)
        if not v.passed:
            rule = ("its mean did not beat the result's by the small-level margin" if v.small else
                    f"it beat the result on {v.wins} of {v.n} images, fewer than half" if 2 * v.wins < v.n else
                    "its mean was not better than the result's")
            return f"in the grammar, but it loses the oracle's test against the result on level {level} ({rule})"
    return ("in the grammar; the search did not check the baselines at the end (baseline_check off) and judged it "
            "against an earlier incumbent")


def parse_untils(value: float | int | str | Until | Sequence[Any] | None,
                 count: int | None = None) -> list[Until] | None:
    """``until`` for a search over ``count`` metrics (None: any number): one threshold per metric,
    comma-separated (``"0.1,ScoreCAM"``) or a list, each as ``parse_until`` takes it; a one-line
    ``SycamError`` when the count differs."""
    if value is None:
        return None
    parts: list[Any] = list(value) if isinstance(value, (list, tuple)) else (
        value.split(",") if isinstance(value, str) else [value])
    if count is not None and len(parts) != count:
        what = "one threshold" if count == 1 else f"one threshold per metric ({count}), separated by commas"
        raise SycamError(f"until {value!r}: give {what}, got {len(parts)}")
    untils = [parse_until(p) for p in parts]  # each a number, a text or an Until
    return [u for u in untils if u is not None]


def until_text(untils: Sequence[Until] | None) -> str | None:
    """``until`` as ``--until`` takes it (None: none)."""
    return None if untils is None else ",".join(map(str, untils))
