"""What resuming a search from its checkpoint checks beyond the file's fields (``state``): the
settings' fingerprint the checkpoint must match (the held-out images' digests included), what its
state must fit, and its scores scored again: what it says was scored (the incumbent or the front's
members, the baselines, each history entry's score) is scored again and compared, since a forged
score would keep out every better candidate and reach the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..baselines import baseline
from ..errors import SycamError
from ..lang.ast import Node, to_sexpr
from ..lang.sexpr import parse_expr
from ..models.precision import DEFAULT_PRECISION
from ..parse.grammar import Grammar
from .config import SearchConfig
from .oracle import SMALL_LEVEL_MARGIN
from .problem import Problem
from .scorer import Scorer, score_levels
from .state import Expected, SearchState
from .subsets import Subsets

#: How far a score read from a checkpoint may be from the same expression scored again (relative,
#: absolute): rounding only, since scores are stored exactly and computed the same way.
SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-6


def short(text: str, width: int = 48) -> str:
    """``text`` cut to ``width`` characters for one line (an expression in a message or the status line)."""
    return text if len(text) <= width else text[:width - 3] + "..."


def numbers(t: torch.Tensor) -> str:
    """Scores (one, or one per metric) as text."""
    return ", ".join(f"{float(x):.6g}" for x in t.reshape(-1))


def grammar_digest(grammar: Grammar) -> str:
    """A hash of the grammar's rules (not of its file name)."""
    return hashlib.sha256("\n".join(grammar.summary().splitlines()[1:]).encode()).hexdigest()[:16]


def fingerprint(problem: Problem, grammar: Grammar, config: SearchConfig, subsets: Subsets) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (budgets may change between runs)."""
    c, metric = config, config.metric
    return {"problem": problem.digest(), "grammar": grammar_digest(grammar),
            "metric": metric.name, "metric_options": {k: v for k, v in sorted(metric.options.items())},
            "level_sizes": list(subsets.level_sizes), "equivalence_size": subsets.equivalence_size,
            "seed": c.seed, "max_size": c.max_size, "baselines": list(c.baselines),
            "oracle": {"baseline_check": c.baseline_check, "small_level": c.small_level,
                       "small_level_margin": SMALL_LEVEL_MARGIN},
            **({"test_split": c.test_split} if c.test_split else {}),
            # the problem's digest covers the searched images only; the held-out ones are in the tables
            **({"test_images": list(c.held_out)} if c.held_out else {}),
            **({"strategy": c.strategy} if c.strategy != "size" else {}),
            # scores at another precision differ; fp32 stays out so older checkpoints still match
            **({"precision": problem.inputs.precision}
               if problem.inputs.precision != DEFAULT_PRECISION else {})}


def expected(problem: Problem, grammar: Grammar, config: SearchConfig, subsets: Subsets, metrics: int) -> Expected:
    """What a checkpoint of a search over ``metrics`` metrics must fit (see ``load_checkpoint``)."""
    def bounds() -> tuple[list[float], list[float]] | None:
        part = problem.subset(subsets.level(len(subsets.level_sizes) - 1))
        b = config.metric.score_bounds(part.inputs)
        return None if b is None else (b[0].double().tolist(), b[1].double().tolist())

    def expression_error(text: str) -> str | None:
        try:
            node = parse_expr(text, grammar.inputs, source="<incumbent>")
        except SycamError as e:
            return f"is not an expression over the terminals of {grammar.source} ({e})"
        if node.type != grammar.start.type:
            return f"is a {node.type}, not a {grammar.start.type} like the start symbol of {grammar.source}"
        return None

    sizes = list(subsets.level_sizes)
    return Expected(subsets.names, [b - a for a, b in zip([0] + sizes, sizes)], config.baselines,
                    expression_error, bounds, metrics)


def verify(state: SearchState, path: Path, scorer: Scorer, grammar: Grammar, level_sizes: Sequence[int]) -> None:
    """Score again what the checkpoint says was scored (the incumbent or the front's members, the
    baselines, every history entry: one expression each, on ``I1``) and refuse it in one line naming
    the first field whose scores differ beyond float tolerance: a forged score would otherwise
    keep out every better candidate and reach the report. The checkpoint's own values are kept
    (equal up to rounding), so a resumed search still compares against the same numbers."""
    got: dict[str, torch.Tensor | None] = {}

    def check(where: Callable[[int], str], node: Node, saved: list[Any], mean: bool = False) -> None:
        text = to_sexpr(node)
        if text not in got:
            s = score_levels(scorer, node)
            got[text] = None if s is None else s.detach().to("cpu", torch.float64)
        now = got[text]
        if now is None:
            raise SycamError(f"cannot resume from {path}: {where(0)}: {short(text)} now gives NaN or Inf "
                             f"heatmaps; the checkpoint does not come from these images and model")
        now = now.mean(dim=0) if mean else now
        want = torch.tensor(saved, dtype=torch.float64).reshape(now.shape)
        bad = (~torch.isclose(want, now, rtol=SCORE_RTOL, atol=SCORE_ATOL)).reshape(len(saved), -1).any(dim=1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            row = (lambda t: t) if mean else (lambda t: t[i])  # noqa: E731
            raise SycamError(f"cannot resume from {path}: {where(i)} is {numbers(row(want))}, but {short(text)} "
                             f"scores {numbers(row(now))} there; the checkpoint was changed, or does not come "
                             f"from these images and model")

    def in_blocks(field: str) -> Callable[[int], str]:
        starts = [sum(level_sizes[:j]) for j in range(len(level_sizes))]

        def name(i: int) -> str:
            j = max(j for j, a in enumerate(starts) if a <= i)
            return f"{field}[{j}][{i - starts[j]}]"
        return name

    flat = lambda blocks: [x for b in blocks for x in b]  # noqa: E731
    parse = lambda text: parse_expr(text, grammar.inputs, source="<checkpoint>")  # noqa: E731
    if state.incumbent is not None:
        check(in_blocks("state.incumbent.blocks"), parse(state.incumbent.expression), flat(state.incumbent.blocks))
    for k, m in enumerate(state.front):
        check(in_blocks(f"state.front[{k}].blocks"), parse(m.expression), flat(m.blocks))

    def indexed(field: str) -> Callable[[int], str]:
        return lambda i: f"{field}[{i}]"

    def whole(field: str) -> Callable[[int], str]:
        return lambda i: field

    for b, saved in state.baselines.items():
        check(indexed(f"state.baselines.{b}"), baseline(b).node, saved)
    for k, h in enumerate(state.history):
        key = "scores" if "scores" in h else "score"
        check(whole(f"state.history[{k}].{key}"), parse(h["expression"]), h[key] if key == "scores" else [h[key]],
              mean=True)
