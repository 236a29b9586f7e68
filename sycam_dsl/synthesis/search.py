"""The oracle-guided search (SPEC section 7) over one problem.

The enumerator streams candidates (already canonicalized and merged by observational equivalence on
the equivalence subset). Each candidate is then checked against the heatmaps already seen, and
scored level by level (``I3``, then the images ``I2`` adds, then those ``I1`` adds): a level's
scores are reused by the next, so no image is scored twice for a candidate. Failing a level ends
the candidate; passing ``I1`` makes it the incumbent.

The search stops when the grammar is exhausted, the time or candidate budget ends, or on Ctrl-C;
it then returns the incumbent. Time is checked between candidates and between levels, and only once
there is an incumbent, so even a tiny time budget returns a scored expression. With an output folder it writes ``checkpoint.json`` there every
``checkpoint_seconds`` and when it stops; a search started on the same folder resumes: the
enumerator replays the candidates already processed (checking their heatmaps, not scoring them)
and carries on from the first unprocessed one.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..baselines import SEARCH_BASELINES, baseline
from ..enumerate import Enumerator
from ..equivalence.heatmaps import HeatmapIndex
from ..errors import SycamError
from ..lang.ast import Node
from ..lang.sexpr import parse_expr, to_sexpr
from ..metrics.expression import expression_inputs
from ..metrics.registry import Metric
from ..parse.grammar import Grammar
from .oracle import judge
from .problem import Problem
from .state import Incumbent, SearchState, load_checkpoint, save_checkpoint
from .subsets import DEFAULT_EQUIVALENCE_SIZE, DEFAULT_LEVEL_SIZES, Subsets, make_subsets

DEFAULT_MAX_SIZE = 12
DEFAULT_CHECKPOINT_SECONDS = 30.0


@dataclass(frozen=True)
class Budget:
    """When to stop: after ``seconds`` of search time and/or ``candidates`` enumerated candidates
    (None: no bound). The grammar's end (up to ``max_size``) always stops the search."""

    seconds: float | None = None
    candidates: int | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and self.seconds <= 0:
            raise SycamError(f"a time budget must be positive, got {self.seconds} s")
        if self.candidates is not None and self.candidates < 1:
            raise SycamError(f"a candidate budget must be at least 1, got {self.candidates}")


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search; ``metric`` carries its options (e.g. ``steps``)."""

    metric: Metric
    budget: Budget = Budget(seconds=600.0)
    level_sizes: tuple[int | None, ...] = DEFAULT_LEVEL_SIZES
    equivalence_size: int = DEFAULT_EQUIVALENCE_SIZE
    seed: int = 0
    max_size: int = DEFAULT_MAX_SIZE
    baselines: tuple[str, ...] = SEARCH_BASELINES
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS


@dataclass
class SearchOutcome:
    """What one search returns: the incumbent (None if nothing could be scored) and how it got there.

    ``baselines``: name -> per-image scores on ``I1`` in ``subsets`` order; ``enumeration``: the
    enumerator's counts; ``stopped_by``: ``exhausted``, ``time``, ``candidates`` or ``interrupted``."""

    best: Node | None
    state: SearchState
    subsets: Subsets
    stopped_by: str
    enumeration: dict[str, Any]
    seconds: float
    level_names: list[str] = field(default_factory=list)

    @property
    def level_means(self) -> dict[str, float]:
        """The incumbent's mean score on each level."""
        if self.state.incumbent is None:
            return {}
        out, flat = {}, []
        for name, block in zip(self.level_names, self.state.incumbent.blocks):
            flat += block
            out[name] = sum(flat) / len(flat)
        return out


class _OutOfTime(Exception):
    pass


class _Display:
    """One status line on stderr, rewritten at most four times a second."""

    def __init__(self, enabled: bool, label: str, metric: str) -> None:
        self.enabled, self.label, self.metric = enabled, label, metric
        self.last = 0.0

    def show(self, state: SearchState, elapsed: float, rate: float, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.25):
            return
        self.last = now
        inc = state.incumbent
        best = "none yet" if inc is None else \
            f"{_short(inc.expression)} {self.metric} {sum(sum(b) for b in inc.blocks) / sum(map(len, inc.blocks)):.4f}"
        sys.stderr.write(f"\r\033[Ksearch{self.label}: {elapsed:6.1f} s | {state.next_candidate} candidates "
                         f"({rate:.1f}/s) | best: {best}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def grammar_digest(grammar: Grammar) -> str:
    """A hash of the grammar's rules (not of its file name)."""
    return hashlib.sha256("\n".join(grammar.summary().splitlines()[1:]).encode()).hexdigest()[:16]


class Search:
    """One oracle-guided search of ``grammar`` on ``problem`` (see the module docstring)."""

    def __init__(self, problem: Problem, grammar: Grammar, config: SearchConfig, out_dir: str | Path | None = None,
                 progress: bool = True, label: str = "") -> None:
        if grammar.start.type not in (grammar.start.type.VEC, grammar.start.type.MAP):
            raise SycamError(f"{grammar.source}: the start symbol must be a Vec or a Map weight, "
                             f"got {grammar.start.type}")
        missing = [n for n in grammar.inputs if n not in problem.terminals]
        if missing:
            raise SycamError(f"the problem has no values for terminal(s) {', '.join(missing)} of {grammar.source}")
        self.problem, self.grammar, self.config = problem, grammar, config
        self.metric = config.metric
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.subsets = make_subsets(problem.n, config.level_sizes, config.seed, problem.classes,
                                    config.equivalence_size)
        self.level_names = self.subsets.names
        self._blocks = [problem.subset(self.subsets.block(j)) for j in range(len(self.subsets.level_sizes))]
        self._display = _Display(progress, label, self.metric.name)

    # -- scoring ----------------------------------------------------------------------------------

    def score_block(self, node: Node, j: int) -> torch.Tensor | None:
        """Per-image scores ``[n_j]`` (CPU float64) of ``node`` on level block ``j``; None when its
        heatmaps have NaN or Inf values."""
        b = self._blocks[j]
        candidate = expression_inputs(node, b.inputs, b.terminals, b.acts)
        if not bool(torch.isfinite(candidate.saliency).all()):
            return None
        return self.metric(candidate).per_image.detach().to("cpu", torch.float64)

    def score_all(self, node: Node) -> torch.Tensor | None:
        """Per-image scores on ``I1`` (all blocks, in ``subsets`` order)."""
        parts = [self.score_block(node, j) for j in range(len(self._blocks))]
        return None if any(p is None for p in parts) else torch.cat(parts)

    # -- the search -------------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (budgets may change between runs)."""
        c = self.config
        return {"problem": self.problem.digest(), "grammar": grammar_digest(self.grammar),
                "metric": self.metric.name, "metric_options": {k: v for k, v in sorted(self.metric.options.items())},
                "level_sizes": list(self.subsets.level_sizes), "equivalence_size": self.subsets.equivalence_size,
                "seed": c.seed, "max_size": c.max_size, "baselines": list(c.baselines)}

    def run(self, resume: bool = True) -> SearchOutcome:
        """Search until the budget, the grammar's end or Ctrl-C; returns the incumbent."""
        fingerprint = self.fingerprint()
        state = None
        if resume and self.out_dir is not None:
            state = load_checkpoint(self.out_dir, fingerprint)
        state = state or SearchState()
        for name in self.level_names:
            state.counts.scored.setdefault(name, 0)
            state.counts.rejected.setdefault(name, 0)
        t0 = time.perf_counter()
        elapsed = lambda: state.seconds + (time.perf_counter() - t0)  # noqa: E731
        last_checkpoint = time.monotonic()
        start_index = state.next_candidate
        stopped_by = "exhausted"
        enum = None
        try:
            self._score_baselines(state)
            eq = self.subsets.equivalence
            enum = Enumerator(self.grammar, self.problem.terminals.subset(eq), self.config.max_size)
            index = HeatmapIndex(self.problem.acts.index_select(0, eq.to(self.problem.acts.device)),
                                 self.grammar.start.type)
            budget = self.config.budget
            for cand in enum.candidates():
                if budget.candidates is not None and cand.index >= budget.candidates:
                    stopped_by = "candidates"
                    break
                # the first incumbent is always found, however small the time budget
                if budget.seconds is not None and state.incumbent is not None and elapsed() >= budget.seconds:
                    stopped_by = "time"
                    break
                earlier = index.check(cand.value, cand.term)
                if cand.index < state.next_candidate:
                    continue  # processed before the checkpoint: replayed for the heatmap index only
                self._consider(cand.term, cand.index, earlier, state, elapsed)
                state.next_candidate = cand.index + 1
                run_seconds = time.perf_counter() - t0
                self._display.show(state, elapsed(), (state.next_candidate - start_index) / max(run_seconds, 1e-9))
                if self.out_dir is not None and time.monotonic() - last_checkpoint >= self.config.checkpoint_seconds:
                    self._checkpoint(fingerprint, state, elapsed())
                    last_checkpoint = time.monotonic()
        except _OutOfTime:
            stopped_by = "time"
        except KeyboardInterrupt:
            stopped_by = "interrupted"
        total = elapsed()
        self._display.show(state, total, (state.next_candidate - start_index) / max(time.perf_counter() - t0, 1e-9),
                           force=True)
        self._display.close()
        state.seconds = total
        if self.out_dir is not None:
            self._checkpoint(fingerprint, state, total)
        best = None
        if state.incumbent is not None:
            best = parse_expr(state.incumbent.expression, self.grammar.inputs, source="<incumbent>")
        return SearchOutcome(best, state, self.subsets, stopped_by,
                             enum.stats.as_dict() if enum is not None else {}, total, self.level_names)

    def _checkpoint(self, fingerprint: dict[str, Any], state: SearchState, seconds: float) -> None:
        saved = state.seconds
        state.seconds = seconds
        try:
            save_checkpoint(self.out_dir, fingerprint, state)
        finally:
            state.seconds = saved

    def _score_baselines(self, state: SearchState) -> None:
        for name in self.config.baselines:
            if name in state.baselines:
                continue
            b = baseline(name)
            missing = [t for t in b.terminals if t not in self.problem.terminals]
            if missing:
                raise SycamError(f"baseline {name} needs terminal(s) {', '.join(missing)}, which the problem lacks")
            scores = self.score_all(b.node)
            if scores is None:
                raise SycamError(f"baseline {name} ({b.expression}) gives NaN or Inf heatmaps on these images")
            state.baselines[name] = scores.tolist()

    def _consider(self, node: Node, index: int, earlier: object, state: SearchState, elapsed) -> None:
        """Score one candidate level by level and update ``state``. Counts change only once the
        candidate is done, so one cut short (time, Ctrl-C) leaves no trace and is redone on resume."""
        counts = state.counts
        if earlier is not None:
            counts.considered += 1
            counts.heatmap_equivalent += 1
            return
        inc = state.incumbent
        blocks: list[torch.Tensor] = []
        t_score = time.perf_counter()
        outcome = "accepted"
        try:
            for j, name in enumerate(self.level_names):
                budget = self.config.budget.seconds
                if j and inc is not None and budget is not None and elapsed() >= budget:
                    raise _OutOfTime
                scores = self.score_block(node, j)
                if scores is None:
                    outcome = "invalid"
                    break
                blocks.append(scores)
                if inc is None:
                    continue
                verdict = judge(torch.cat(blocks), torch.tensor(sum(inc.blocks[:j + 1], []), dtype=torch.float64),
                                self.metric.higher_is_better)
                if not verdict.passed:
                    outcome = "rejected"
                    break
        finally:
            state.scoring_seconds += time.perf_counter() - t_score
        counts.considered += 1
        for name in self.level_names[:len(blocks)]:
            counts.scored[name] += 1
        if outcome == "invalid":
            counts.invalid += 1
        elif outcome == "rejected":
            counts.rejected[self.level_names[len(blocks) - 1]] += 1
        else:
            text = to_sexpr(node)
            state.incumbent = Incumbent(text, [b.tolist() for b in blocks], elapsed(), index)
            counts.accepted += 1
            state.history.append({"expression": text, "score": float(torch.cat(blocks).mean()),
                                  "seconds": elapsed(), "candidate": index})
