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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..baselines import SEARCH_BASELINES, baseline
from ..enumerate import Enumerator
from ..template.heatmaps import layer_saliency, normalize_upsampled
from ..equivalence.heatmaps import HeatmapIndex
from ..evaluate import evaluate
from ..errors import SycamError
from ..lang.ast import Node, to_sexpr
from ..lang.sexpr import parse_expr
from ..metrics.registry import Metric
from ..parse.grammar import Grammar
from .oracle import hopeless, judge
from .problem import Problem
from .state import Incumbent, SearchState, load_checkpoint, save_checkpoint
from .subsets import DEFAULT_EQUIVALENCE_SIZE, DEFAULT_LEVEL_SIZES, Subsets, make_subsets

DEFAULT_MAX_SIZE = 12
DEFAULT_CHECKPOINT_SECONDS = 30.0
DEFAULT_BATCH = 32
DEFAULT_IMAGE_CHUNK = 25
#: Bound on the elements of one batched heatmap tensor ``[C, n, H, W]`` (256 MiB in float32).
MAX_HEATMAP_ELEMENTS = 1 << 26


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
    """Settings of one search; ``metric`` carries its options (e.g. ``steps``).

    The evaluation engine: ``batch`` candidates are scored together on ``I3`` (one metric call on
    ``[C, n, H, W]`` heatmaps); levels are scored ``image_chunk`` images at a time and, with
    ``early_stop``, a candidate stops being scored as soon as it cannot pass the level. None of
    these change which candidate wins (``batch=1, early_stop=False`` is the plain oracle)."""

    metric: Metric
    budget: Budget = Budget(seconds=600.0)
    level_sizes: tuple[int | None, ...] = DEFAULT_LEVEL_SIZES
    equivalence_size: int = DEFAULT_EQUIVALENCE_SIZE
    seed: int = 0
    max_size: int = DEFAULT_MAX_SIZE
    baselines: tuple[str, ...] = SEARCH_BASELINES
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS
    batch: int = DEFAULT_BATCH
    image_chunk: int | None = DEFAULT_IMAGE_CHUNK
    early_stop: bool = True


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


class _Display:
    """One status line on stderr, rewritten at most four times a second on a terminal; in a log
    (stderr not a terminal) a new line every ``LOG_SECONDS``."""

    LOG_SECONDS = 15.0

    def __init__(self, enabled: bool, label: str, metric: str) -> None:
        self.enabled, self.label, self.metric = enabled, label, metric
        self.tty = sys.stderr.isatty()
        self.last = 0.0 if self.tty else time.monotonic()

    def show(self, state: SearchState, elapsed: float, rate: float, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < (0.25 if self.tty else self.LOG_SECONDS)):
            return
        self.last = now
        inc = state.incumbent
        best = "none yet" if inc is None else \
            f"{_short(inc.expression)} {self.metric} {sum(sum(b) for b in inc.blocks) / sum(map(len, inc.blocks)):.4f}"
        line = (f"search{self.label}: {elapsed:6.1f} s | {state.next_candidate} candidates ({rate:.1f}/s) | "
                f"best: {best}")
        sys.stderr.write(f"\r\033[K{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def grammar_digest(grammar: Grammar) -> str:
    """A hash of the grammar's rules (not of its file name)."""
    return hashlib.sha256("\n".join(grammar.summary().splitlines()[1:]).encode()).hexdigest()[:16]


class _Stop(Exception):
    """The time budget ended in the middle of a batch."""


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
        if config.batch < 1 or (config.image_chunk is not None and config.image_chunk < 1):
            raise SycamError("batch and image_chunk must be positive")
        self.problem, self.grammar, self.config = problem, grammar, config
        self.metric = config.metric
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.subsets = make_subsets(problem.n, config.level_sizes, config.seed, problem.classes,
                                    config.equivalence_size)
        self.level_names = self.subsets.names
        self._parts = [self._split(self.subsets.block(j)) for j in range(len(self.subsets.level_sizes))]
        self._best_bounds: list[list[float] | None] | None = None
        self._levels_of: Incumbent | None = None
        self._levels: dict[int, tuple[torch.Tensor, float]] = {}
        self._display = _Display(progress, label, self.metric.name)

    def _split(self, block: torch.Tensor) -> list[Problem]:
        """The block's images in chunks of ``image_chunk`` (one chunk when None)."""
        size = self.config.image_chunk or max(1, len(block))
        return [self.problem.subset(block[i:i + size]) for i in range(0, len(block), size)]

    # -- scoring ----------------------------------------------------------------------------------

    def score_part(self, nodes: list[Node], j: int, c: int) -> list[torch.Tensor | None]:
        """Per-image scores (CPU float64) of each candidate on chunk ``c`` of level block ``j``, None for
        a candidate whose heatmaps have NaN or Inf values. Candidates are scored together, in groups
        that keep the ``[C, n, H, W]`` heatmaps under ``MAX_HEATMAP_ELEMENTS``."""
        part = self._parts[j][c]
        size = tuple(part.inputs.images.shape[-2:])
        full = self.metric.needs_heatmaps  # else the metric works from S alone: no [C, n, H, W] tensor
        per = part.n * (size[0] * size[1] if full else part.acts.numel() // max(1, part.n))
        group = max(1, MAX_HEATMAP_ELEMENTS // max(1, per))
        out: list[torch.Tensor | None] = []
        for g in range(0, len(nodes), group):
            weights = torch.broadcast_tensors(*[evaluate(n, part.terminals) for n in nodes[g:g + group]])
            s = layer_saliency(torch.stack(weights), part.acts, self.grammar.start.type)
            finite = torch.isfinite(s).flatten(1).all(dim=1).tolist()
            ok = [k for k, f in enumerate(finite) if f]
            scores = iter(())
            if ok:
                s_ok = s[ok] if len(ok) < len(finite) else s
                candidate = part.inputs.with_heatmaps(normalize_upsampled(s_ok, size) if full else None, s_ok)
                scores = iter(self.metric(candidate).per_image.detach().to("cpu", torch.float64))
            out += [next(scores) if f else None for f in finite]
        return out

    def score_block(self, node: Node, j: int) -> torch.Tensor | None:
        """Per-image scores ``[n_j]`` of one candidate on level block ``j``; None if invalid."""
        parts = [self.score_part([node], j, c)[0] for c in range(len(self._parts[j]))]
        return None if any(p is None for p in parts) else torch.cat(parts)

    def score_all(self, node: Node) -> torch.Tensor | None:
        """Per-image scores on ``I1`` (all blocks, in ``subsets`` order)."""
        parts = [self.score_block(node, j) for j in range(len(self._parts))]
        return None if any(p is None for p in parts) else torch.cat(parts)

    def _best_rest(self, j: int, c: int) -> float | None:
        """The sum of the best scores the images after chunk ``c`` of block ``j`` could get (None when
        the metric has no bounds)."""
        if self._best_bounds is None:
            self._best_bounds = []
            for parts in self._parts:
                sums = []
                for part in parts:
                    b = self.metric.score_bounds(part.inputs)
                    if b is None:
                        sums = None
                        break
                    best = b[1] if self.metric.higher_is_better else b[0]
                    sums.append(float(best.double().sum()))
                self._best_bounds.append(sums)
        sums = self._best_bounds[j]
        return None if sums is None else sum(sums[c + 1:])

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
        self._clock = (state.seconds, t0, state.next_candidate)
        self._last_checkpoint = time.monotonic()
        stopped_by = "exhausted"
        enum = None
        try:
            self._score_baselines(state)
            eq = self.subsets.equivalence
            enum = Enumerator(self.grammar, self.problem.terminals.subset(eq), self.config.max_size)
            index = HeatmapIndex(self.problem.acts.index_select(0, eq.to(self.problem.acts.device)),
                                 self.grammar.start.type)
            budget = self.config.budget
            pending: list[tuple[Node, int, object]] = []
            for cand in enum.candidates():
                if budget.candidates is not None and cand.index >= budget.candidates:
                    stopped_by = "candidates"
                    break
                # the first incumbent is always found, however small the time budget
                if budget.seconds is not None and state.incumbent is not None and self._elapsed(state) >= budget.seconds:
                    stopped_by = "time"
                    pending = []
                    break
                earlier = index.check(cand.value, cand.term)
                if cand.index < state.next_candidate:
                    continue  # processed before the checkpoint: replayed for the heatmap index only
                pending.append((cand.term, cand.index, earlier))
                if len(pending) >= self.config.batch:
                    self._process(pending, state, fingerprint)
                    pending = []
            self._process(pending, state, fingerprint)
        except _Stop:
            stopped_by = "time"
        except KeyboardInterrupt:
            stopped_by = "interrupted"
        total = self._elapsed(state)
        self._show(state, force=True)
        self._display.close()
        state.seconds = total
        if self.out_dir is not None:
            save_checkpoint(self.out_dir, fingerprint, state)
        best = None
        if state.incumbent is not None:
            best = parse_expr(state.incumbent.expression, self.grammar.inputs, source="<incumbent>")
        return SearchOutcome(best, state, self.subsets, stopped_by,
                             enum.stats.as_dict() if enum is not None else {}, total, self.level_names)

    def _elapsed(self, state: SearchState) -> float:
        before, t0, _ = self._clock
        return before + (time.perf_counter() - t0)

    def _show(self, state: SearchState, force: bool = False) -> None:
        before, t0, start_index = self._clock
        run_seconds = max(time.perf_counter() - t0, 1e-9)
        self._display.show(state, self._elapsed(state), (state.next_candidate - start_index) / run_seconds, force)

    def _out_of_time(self, state: SearchState) -> bool:
        budget = self.config.budget.seconds
        return budget is not None and state.incumbent is not None and self._elapsed(state) >= budget

    def _process(self, pending: list[tuple[Node, int, object]], state: SearchState,
                 fingerprint: dict[str, Any]) -> None:
        """Judge a batch of candidates in stream order; their ``I3`` scores are computed together."""
        if not pending:
            return
        prefetched = self._prefetch([node for node, _, earlier in pending if earlier is None], state)
        for node, index, earlier in pending:
            if self._out_of_time(state):
                raise _Stop
            if earlier is not None:
                state.counts.considered += 1
                state.counts.heatmap_equivalent += 1
            else:
                self._consider(node, index, state, prefetched.pop(0))
            state.next_candidate = index + 1
            self._show(state)
            if self.out_dir is not None and time.monotonic() - self._last_checkpoint >= self.config.checkpoint_seconds:
                save_checkpoint(self.out_dir, fingerprint, replace(state, seconds=self._elapsed(state)))
                self._last_checkpoint = time.monotonic()

    def _prefetch(self, nodes: list[Node], state: SearchState) -> list[list[torch.Tensor | None]]:
        """Each candidate's scores on the chunks of ``I3``, computed a chunk at a time for all the
        candidates still in the running against the current incumbent (a chunk list stops early
        for a hopeless candidate; ``_consider`` redoes the check and goes on if the incumbent changed)."""
        out: list[list[torch.Tensor | None]] = [[] for _ in nodes]
        if len(nodes) <= 1:
            return out
        alive = list(range(len(nodes)))
        inc = state.incumbent
        for c in range(len(self._parts[0])):
            if not alive:
                break
            t = time.perf_counter()
            scores = self.score_part([nodes[k] for k in alive], 0, c)
            state.scoring_seconds += time.perf_counter() - t
            still = []
            for k, s in zip(alive, scores):
                out[k].append(s)
                if s is not None and not (inc is not None and self._hopeless(torch.cat(out[k]), inc, 0, c)):
                    still.append(k)
            alive = still
        return out

    def _hopeless(self, scored: torch.Tensor, inc: Incumbent, j: int, c: int) -> bool:
        """After chunk ``c`` of block ``j``: can the candidate, with level-``j`` scores ``scored`` so far,
        no longer pass level ``j`` against ``inc``?"""
        if not self.config.early_stop or c == len(self._parts[j]) - 1:
            return False
        level, mean = self._incumbent_level(inc, j)
        return hopeless(scored, level[:len(scored)], len(level), mean, self.metric.higher_is_better,
                        self._best_rest(j, c))

    def _incumbent_level(self, inc: Incumbent, j: int) -> tuple[torch.Tensor, float]:
        """The incumbent's per-image scores on level ``j`` ``[n_j]`` (float64) and their mean, built once
        per incumbent rather than once per check."""
        if self._levels_of is not inc:
            self._levels_of, self._levels = inc, {}
        if j not in self._levels:
            level = torch.tensor(sum(inc.blocks[:j + 1], []), dtype=torch.float64)
            self._levels[j] = (level, float(level.mean()))
        return self._levels[j]

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

    def _consider(self, node: Node, index: int, state: SearchState,
                  prefetched: list[torch.Tensor | None] | None = None) -> None:
        """Score one candidate level by level (chunk by chunk, stopping once it cannot pass) and update
        ``state``. Counts change only once the candidate is done, so one cut short (time, Ctrl-C)
        leaves no trace and is redone on resume."""
        counts = state.counts
        inc = state.incumbent
        blocks: list[torch.Tensor] = []
        t_score = time.perf_counter()
        outcome, levels_scored = "accepted", 0
        try:
            for j in range(len(self.level_names)):
                if j and self._out_of_time(state):
                    raise _Stop
                levels_scored = j + 1
                before = torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.float64)
                chunks: list[torch.Tensor] = []
                for c in range(len(self._parts[j])):
                    if j == 0 and prefetched and c < len(prefetched):
                        s = prefetched[c]
                    else:
                        s = self.score_part([node], j, c)[0]
                    if s is None:
                        outcome = "invalid"
                        break
                    chunks.append(s)
                    if inc is not None and self._hopeless(torch.cat([before, *chunks]), inc, j, c):
                        outcome = "rejected"
                        break
                if outcome != "accepted":
                    break
                blocks.append(torch.cat(chunks))
                if inc is None:
                    continue
                verdict = judge(torch.cat(blocks), self._incumbent_level(inc, j)[0], self.metric.higher_is_better)
                if not verdict.passed:
                    outcome = "rejected"
                    break
        finally:
            state.scoring_seconds += time.perf_counter() - t_score
        counts.considered += 1
        for name in self.level_names[:levels_scored]:
            counts.scored[name] += 1
        if outcome == "invalid":
            counts.invalid += 1
        elif outcome == "rejected":
            counts.rejected[self.level_names[levels_scored - 1]] += 1
        else:
            text = to_sexpr(node)
            state.incumbent = Incumbent(text, [b.tolist() for b in blocks], self._elapsed(state), index)
            counts.accepted += 1
            state.history.append({"expression": text, "score": float(torch.cat(blocks).mean()),
                                  "seconds": self._elapsed(state), "candidate": index})
