"""The oracle-guided search (README, "The search") over one problem.

The enumerator streams candidates (already canonicalized and merged by observational equivalence on
the equivalence subset). Each candidate is then checked against the heatmaps already seen, and
scored level by level (``I3``, then the images ``I2`` adds, then those ``I1`` adds): a level's
scores are reused by the next, so no image is scored twice for a candidate. Failing a level ends
the candidate; passing ``I1`` makes it the incumbent.

When the search stops (but for Ctrl-C), the baselines are scored on ``I1`` and the best one the
grammar expresses (see ``incumbent``) replaces the incumbent if its ``I1`` mean is better: it is
recorded in the history with ``candidate`` None and its ``baseline`` name, so the result is never
worse on ``I1`` than a method the grammar contains, whatever the small first levels said about it
(``baseline_check=False``: the plain oracle). The check comes last, not first, so that the search
starts at once: scoring ScoreCAM or AblationCAM on ``I1`` needs ``cic`` or ``abl`` for every image,
which terminals computed on demand (``on_demand.py``) would otherwise compute before the first
candidate.

The search stops when the grammar is exhausted, the time or candidate budget ends, the incumbent's
``I1`` mean beats the ``until`` threshold (``threshold``), or on Ctrl-C or SIGTERM; it then returns
the incumbent. The time budget bounds the whole search, terminals computed on demand included:
the deadline is checked before every image chunk scored, so the search ends at most one chunk's
scoring after it; with terminals on demand it comes earlier by the estimated time the terminals
still missing for the baselines and the final tables will take (at the rates measured so far).
Candidates fully judged by then count (a batch cut short keeps those finished, in stream order);
one cut short leaves no trace. Batches grow 1, 2, 4, ... up to ``candidate_batch``, but no further
than a batch's scoring on one image chunk taking about ``BATCH_SHARE`` of the budget at the cost
per candidate measured so far, and a chunk is scored in groups of that size with the deadline
checked before each: on a slow model a batch cannot overshoot by minutes. A whole-run budget
(``Budget.whole_run``) counts this run only; ``synthesize`` has already set aside the work after
the search (``budget.py``). Once the deadline passes the search stops even without an
incumbent; the final check may then still give one (``stopped_by`` ``time``).

With an output folder it writes ``checkpoint.json`` there when it starts,
then after 1, 2, 4, ... s up to every ``checkpoint_seconds``, and when it stops; a search started
on the same folder resumes: the checkpoint is checked field by field first, and what it says was
scored (the incumbent or the front's members, the baselines, each history entry's score) is scored
again and compared (a forged score would keep out every better candidate and reach the report;
the held-out images' digests are in the fingerprint too), then the enumerator
replays the candidates already processed (checking their heatmaps, not scoring them) and carries
on from the first unprocessed one.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from ..baselines import baseline
from ..enumerate import Enumerator
from ..equivalence.heatmaps import HeatmapIndex
from ..errors import SycamError
from ..evaluate.terminal_values import Terminals
from ..lang.ast import Node, to_sexpr
from ..lang.sexpr import parse_expr
from ..metrics.objectives import Objectives, metric_list
from ..metrics.registry import Metric
from ..models.precision import DEFAULT_PRECISION
from ..parse.grammar import Grammar
from ..util.progress import StatusLine
from .config import SearchConfig
from .front import Member, cannot_pass, column_means, covers, passes_against, reached
from .guide import Guide
from .incumbent import best_baseline, better, grammar_baselines, parse_untils
from .on_demand import OnDemandTerminals, terminal_status
from .oracle import SMALL_LEVEL, SMALL_LEVEL_MARGIN, hopeless, judge
from .pareto import knee
from .problem import Problem
from .scorer import LocalScorer, Scorer, ScorerFactory, score_levels
from .state import CHECKPOINT_NAME, Expected, Incumbent, SearchState, load_checkpoint, save_checkpoint
from .subsets import Subsets, make_subsets


@dataclass
class SearchOutcome:
    """What one search returns: the incumbent (None if nothing could be scored) and how it got there.

    ``baselines``: name -> per-image scores on ``I1`` in ``subsets`` order; ``enumeration``: the
    enumerator's counts; ``stopped_by``: ``exhausted``, ``time``, ``candidates``, ``threshold`` or
    ``interrupted``; ``threshold``: the ``until`` threshold's value (None: none, or not reached the
    baselines; one per metric over several); ``baseline_check``: whether the best baseline the grammar
    expresses was checked against the result at the end; ``small_level``: the oracle's small-level size;
    over several metrics ``best`` is the front's knee member, at ``knee`` in ``front`` (``pareto.knee``);
    ``metrics``: the metrics optimized, in the order of the scores' columns."""

    best: Node | None
    state: SearchState
    subsets: Subsets
    stopped_by: str
    enumeration: dict[str, Any]
    seconds: float
    level_names: list[str] = field(default_factory=list)
    threshold: float | list[float] | None = None
    baseline_check: bool = True
    small_level: int = SMALL_LEVEL
    knee: int | None = None
    metrics: list[Metric] = field(default_factory=list)

    @property
    def front(self) -> list[Member]:
        """A search over several metrics: the front's members, in the order they entered (``best`` is
        the one at ``knee``); empty for one metric."""
        return self.state.front

    @property
    def level_means(self) -> dict[str, float]:
        """The incumbent's mean score on each level (empty for a front)."""
        if self.state.incumbent is None:
            return {}
        out, flat = {}, []
        for name, block in zip(self.level_names, self.state.incumbent.blocks):
            flat += block
            out[name] = sum(flat) / len(flat)
        return out


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _numbers(t: torch.Tensor) -> str:
    """Scores (one, or one per metric) as text."""
    return ", ".join(f"{float(x):.6g}" for x in t.reshape(-1))


def grammar_digest(grammar: Grammar) -> str:
    """A hash of the grammar's rules (not of its file name)."""
    return hashlib.sha256("\n".join(grammar.summary().splitlines()[1:]).encode()).hexdigest()[:16]


#: How far a score read from a checkpoint may be from the same expression scored again (relative,
#: absolute): rounding only, since scores are stored exactly and computed the same way.
SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-6

#: A batch of candidates is sized so that scoring it on one image chunk takes about this share of the
#: time budget (at the cost per candidate measured so far), within ``BATCH_SECONDS``: the deadline is
#: checked between chunks, so this bounds the overshoot on a slow model.
BATCH_SHARE = 0.02
BATCH_SECONDS = (2.0, 10.0)

#: Seconds to the second checkpoint; the interval then doubles up to ``checkpoint_seconds``, so a
#: search killed early loses little while a long one writes rarely.
FIRST_CHECKPOINT_SECONDS = 1.0


class _Stop(Exception):
    """The time budget ended before the next image chunk."""


class _Reached(Exception):
    """The incumbent beats the ``until`` threshold."""


class _Interrupts:
    """While entered (in the main thread only; signals cannot be handled elsewhere), SIGTERM raises
    ``KeyboardInterrupt`` like Ctrl-C, and both wait while ``deferred`` is active, so that a
    candidate's bookkeeping is never half done when the search stops. The previous handlers come
    back on exit. A SIGINT handler other than Python's own, and an ignored signal, are left alone."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._depth = 0
        self._pending = False

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])):
                prev = signal.getsignal(sig)
                if prev is signal.SIG_IGN or (sig == signal.SIGINT and prev is not signal.default_int_handler):
                    continue
                self._previous[sig] = prev
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous, self._depth = {}, 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold Ctrl-C and SIGTERM until the block ends, then raise ``KeyboardInterrupt``."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending:
            self._pending = False
            raise KeyboardInterrupt

    def hold(self) -> None:
        """Hold Ctrl-C and SIGTERM from now until exit (for the last bookkeeping); ``pending`` then
        says whether one came."""
        self._depth += 1

    @property
    def pending(self) -> bool:
        """Whether a held Ctrl-C or SIGTERM has not been raised."""
        return self._pending


class Search:
    """One oracle-guided search of ``grammar`` on ``problem`` (see the module docstring).

    ``scorer`` makes what scores candidates on the chunks of the level blocks of ``self.subsets``
    (the subsets ``make_subsets`` gives for ``problem`` and ``config``; default: a ``LocalScorer`` on
    ``problem``; ``distributed.RayScorer.factory``: on Ray workers); ``label`` names the search on the
    status line."""

    def __init__(self, problem: Problem, grammar: Grammar, config: SearchConfig, out_dir: str | Path | None = None,
                 progress: bool = True, label: str = "", scorer: ScorerFactory | None = None) -> None:
        if grammar.start.type not in (grammar.start.type.VEC, grammar.start.type.MAP):
            raise SycamError(f"{grammar.source}: the start symbol must be a Vec or a Map weight, "
                             f"got {grammar.start.type}")
        missing = [n for n in grammar.inputs if n not in problem.terminals]
        if missing:
            raise SycamError(f"the problem has no values for terminal(s) {', '.join(missing)} of {grammar.source}")
        if config.candidate_batch < 1 or (config.image_chunk is not None and config.image_chunk < 1):
            raise SycamError("batch and image_chunk must be positive")
        self.problem, self.grammar, self.config = problem, grammar, config
        self.metric = config.metric
        #: over several metrics the search keeps a front (``front.py``) and ``until`` has one threshold each
        self.objectives = config.metric if isinstance(config.metric, Objectives) else None
        self.higher = config.metric.higher if isinstance(config.metric, Objectives) else [
            config.metric.higher_is_better]
        self._columns: tuple[int, ...] = () if self.objectives is None else (len(self.higher),)
        self.untils = parse_untils(config.until, len(self.higher))
        self.until = self.untils[0] if self.untils is not None and self.objectives is None else None
        for u in self.untils or []:
            if u.baseline is not None and u.baseline not in config.baselines:
                raise SycamError(f"until {u}: the search does not score baseline {u.baseline} "
                                 f"(it scores {', '.join(config.baselines) or 'none'})")
        self._threshold: float | None = None
        self._thresholds: list[float] | None = None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.subsets = make_subsets(problem.n, config.level_sizes, config.seed, problem.classes,
                                    config.equivalence_size)
        self.level_names = self.subsets.names
        self.scorer: Scorer = (scorer or LocalScorer)(problem, self.subsets, self.metric, grammar.start.type,
                                                      config.image_chunk)
        self.guide = Guide(grammar) if config.strategy == "guided" else None
        self.restarts = 0  # of the guided enumerator
        self._earlier: list[dict[str, Any]] = []  # the stats of the enumerators it restarted
        self._levels: dict[tuple[int, int], tuple[Incumbent | Member, torch.Tensor, Any]] = {}
        self.label = label
        self._status = StatusLine(progress)
        self._resumed: SearchState | None = None
        self._resumed_loaded = False
        self._interrupts = _Interrupts()  # entered by run
        self._fingerprint: dict[str, Any] | None = None
        self._busy_text: str | None = None
        self._state: SearchState | None = None
        self._image_seconds: float | None = None  # the last scoring's seconds per candidate and image
        self._limit: float | None = None  # the search seconds (over every run) at which time is up
        self._verify_seconds = 0.0  # spent scoring the checkpoint's scores again (a whole-run budget's)

    # -- the search -------------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (budgets may change between runs); computed
        once, since the problem's digest hashes every terminal and image."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {"problem": self.problem.digest(), "grammar": grammar_digest(self.grammar),
                "metric": self.metric.name, "metric_options": {k: v for k, v in sorted(self.metric.options.items())},
                "level_sizes": list(self.subsets.level_sizes), "equivalence_size": self.subsets.equivalence_size,
                "seed": c.seed, "max_size": c.max_size, "baselines": list(c.baselines),
                "oracle": {"baseline_check": c.baseline_check, "small_level": c.small_level,
                           "small_level_margin": SMALL_LEVEL_MARGIN},
                **({"test_split": c.test_split} if c.test_split else {}),
                # the problem's digest covers the searched images only; the held-out ones are in the tables
                **({"test_images": list(c.held_out)} if c.held_out else {}),
                **({"strategy": c.strategy} if c.strategy != "size" else {}),
                # scores at another precision differ; fp32 stays out so older checkpoints still match
                **({"precision": self.problem.inputs.precision}
                   if self.problem.inputs.precision != DEFAULT_PRECISION else {})}

    def expected(self) -> Expected:
        """What a checkpoint of this search must fit (see ``load_checkpoint``)."""
        def bounds() -> tuple[list[float], list[float]] | None:
            part = self.problem.subset(self.subsets.level(len(self.subsets.level_sizes) - 1))
            b = self.metric.score_bounds(part.inputs)
            return None if b is None else (b[0].double().tolist(), b[1].double().tolist())

        sizes = list(self.subsets.level_sizes)
        return Expected(self.level_names, [b - a for a, b in zip([0] + sizes, sizes)], self.config.baselines,
                        self._expression_error, bounds, len(self.higher))

    def _expression_error(self, text: str) -> str | None:
        try:
            node = parse_expr(text, self.grammar.inputs, source="<incumbent>")
        except SycamError as e:
            return f"is not an expression over the terminals of {self.grammar.source} ({e})"
        if node.type != self.grammar.start.type:
            return f"is a {node.type}, not a {self.grammar.start.type} like the start symbol of {self.grammar.source}"
        return None

    def resumed_state(self) -> SearchState | None:
        """The checkpoint's state in the output folder, checked (None without one); loaded once, so
        a caller can check every checkpoint before any search starts."""
        if self.out_dir is not None and not self._resumed_loaded:
            self._resumed = load_checkpoint(self.out_dir, self.fingerprint(), self.expected())
            if self._resumed is not None:
                t = time.perf_counter()
                self._verify(self._resumed, self.out_dir / CHECKPOINT_NAME)
                self._verify_seconds = time.perf_counter() - t
            self._resumed_loaded = True
        return self._resumed

    def _verify(self, state: SearchState, path: Path) -> None:
        """Score again what the checkpoint says was scored (the incumbent or the front's members, the
        baselines, every history entry: one expression each, on ``I1``) and refuse it in one line naming
        the first field whose scores differ beyond float tolerance: a forged score would otherwise
        keep out every better candidate and reach the report. The checkpoint's own values are kept
        (equal up to rounding), so a resumed search still compares against the same numbers."""
        got: dict[str, torch.Tensor | None] = {}

        def check(where: Callable[[int], str], node: Node, saved: list[Any], mean: bool = False) -> None:
            text = to_sexpr(node)
            if text not in got:
                s = score_levels(self.scorer, node)
                got[text] = None if s is None else s.detach().to("cpu", torch.float64)
            now = got[text]
            if now is None:
                raise SycamError(f"cannot resume from {path}: {where(0)}: {_short(text)} now gives NaN or Inf "
                                 f"heatmaps; the checkpoint does not come from these images and model")
            now = now.mean(dim=0) if mean else now
            want = torch.tensor(saved, dtype=torch.float64).reshape(now.shape)
            bad = (~torch.isclose(want, now, rtol=SCORE_RTOL, atol=SCORE_ATOL)).reshape(len(saved), -1).any(dim=1)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                row = (lambda t: t) if mean else (lambda t: t[i])  # noqa: E731
                raise SycamError(f"cannot resume from {path}: {where(i)} is {_numbers(row(want))}, but {_short(text)} "
                                 f"scores {_numbers(row(now))} there; the checkpoint was changed, or does not come "
                                 f"from these images and model")

        def in_blocks(field: str) -> Callable[[int], str]:
            starts = [sum(self.subsets.level_sizes[:j]) for j in range(len(self.subsets.level_sizes))]

            def name(i: int) -> str:
                j = max(j for j, a in enumerate(starts) if a <= i)
                return f"{field}[{j}][{i - starts[j]}]"
            return name

        flat = lambda blocks: [x for b in blocks for x in b]  # noqa: E731
        parse = lambda text: parse_expr(text, self.grammar.inputs, source="<checkpoint>")  # noqa: E731
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

    def run(self, resume: bool = True) -> SearchOutcome:
        """Search until the budget, the grammar's end, Ctrl-C or SIGTERM; returns the incumbent."""
        fingerprint = self.fingerprint() if self.out_dir is not None else {}  # only checkpoints use it
        state = (self.resumed_state() if resume else None) or SearchState()
        if self.guide is not None and state.next_candidate > 0:
            raise SycamError("resuming a guided search is not supported yet: run it again with another "
                             "output folder, or search with --strategy size")
        self._state = state
        self._resumed, self._resumed_loaded = None, False  # a second run reads the checkpoint afresh
        for name in self.level_names:
            state.counts.scored.setdefault(name, 0)
            state.counts.rejected.setdefault(name, 0)
        t0 = time.perf_counter()
        self._clock = (state.seconds, t0, state.next_candidate)
        seconds = self.config.budget.seconds
        # a whole-run budget bounds this run: a resumed search's earlier runs do not count
        if seconds is not None and self.config.budget.whole_run:  # the checks of the checkpoint were part of the run
            seconds = max(seconds - self._verify_seconds, 1e-3) + state.seconds
        self._limit = seconds
        self._checkpoint_interval = min(FIRST_CHECKPOINT_SECONDS, self.config.checkpoint_seconds)
        self._next_checkpoint = time.monotonic()
        stopped_by = "exhausted"
        self._enum: Enumerator | None = None
        self._interrupt: Callable[[], None] | None = None
        with _Interrupts() as interrupts:
            self._interrupts = interrupts
            source = self.problem.terminals.source if isinstance(self.problem.terminals, OnDemandTerminals) else None
            if source is not None:
                source.busy = self._busy
            try:
                self._checkpoint(state, fingerprint, force=True)
                self._check_threshold(state)
                eq = self.subsets.equivalence
                eq_terms = self.problem.terminals.subset(eq)
                index = HeatmapIndex(self.problem.acts.index_select(0, eq.to(self.problem.acts.device)),
                                     self.grammar.start.type)
                budget = self.config.budget
                pending: list[tuple[Node, int, object]] = []
                # The first batches are small (1, 2, 4, ... candidates): the first candidates are
                # scored at once, before the enumerator reads terminals later ones need.
                batch = 1

                def out_of_time() -> None:  # also while the enumerator grows sizes that yield nothing
                    if self._out_of_time(state):
                        raise _Stop

                self._interrupt = out_of_time
                for term, value, at in self._stream(eq_terms):
                    if budget.candidates is not None and at >= budget.candidates:
                        stopped_by = "candidates"
                        break
                    if self._out_of_time(state):
                        self._process(pending, state, fingerprint)  # records those judged without scoring
                        raise _Stop
                    earlier = index.check(value, term)
                    if at < state.next_candidate:
                        continue  # processed before the checkpoint: replayed for the heatmap index only
                    pending.append((term, at, earlier))
                    if len(pending) >= batch:
                        self._process(pending, state, fingerprint)
                        pending = []
                        batch = min(2 * batch, self._batch_cap())
                self._process(pending, state, fingerprint)
            except _Stop:
                stopped_by = "time"
            except _Reached:
                stopped_by = "threshold"
            except KeyboardInterrupt:
                stopped_by = "interrupted"
            if stopped_by != "interrupted":
                try:
                    self._final_check(state)
                except KeyboardInterrupt:
                    stopped_by = "interrupted"
            if source is not None:
                source.busy = None
            interrupts.hold()
            total = self._elapsed(state)
            self._show(state, force=True)
            self._status.close()
            state.seconds = total
            if self.out_dir is not None:
                save_checkpoint(self.out_dir, fingerprint, state)
        if interrupts.pending:  # came during the last save: nothing more to stop, but say so
            stopped_by = "interrupted"
        best, knee_at = None, None
        if state.front:
            means = [column_means(v) for v in state.baselines.values()]
            knee_at = knee([f.means for f in state.front], means, self.higher)
        chosen = state.incumbent if state.incumbent is not None else (
            state.front[knee_at] if knee_at is not None else None)
        if chosen is not None:
            best = parse_expr(chosen.expression, self.grammar.inputs, source="<incumbent>")
        enum = self._enum
        stats: dict[str, Any] = enum.stats.as_dict() if enum is not None else {}
        if self.guide is not None:  # the work of every enumerator it started, the last one's sizes
            for earlier in self._earlier:
                for key, v in earlier["total"].items():
                    stats["total"][key] = stats["total"].get(key, 0) + v
                stats["seconds"] += earlier["seconds"]
            stats.update(restarts=self.restarts, partial_solutions=self.guide.partial_solutions)
        return SearchOutcome(best, state, self.subsets, stopped_by, stats, total, self.level_names,
                             self._threshold if self.objectives is None else self._thresholds,
                             self.config.baseline_check, self.config.small_level, knee_at, metric_list(self.metric))

    def _stream(self, eq_terms: Terminals) -> Iterator[tuple[Node, torch.Tensor, int]]:
        """The candidates ``(term, value on the equivalence subset, index)``: the enumerator's, by size;
        with a guide, by its costs, the enumerator started again whenever they change (after the batch
        that changed them), the candidates already yielded skipped, so that indices count distinct
        candidates and none is judged twice."""
        guide = self.guide
        if guide is None:
            self._enum = Enumerator(self.grammar, eq_terms, self.config.max_size, interrupt=self._interrupt)
            for cand in self._enum.candidates():
                yield cand.term, cand.value, cand.index
            return
        seen: set[str] = set()
        self._earlier = []
        while True:
            version = guide.version
            self._enum = Enumerator(self.grammar, eq_terms, guide.max_cost(self.config.max_size),
                                    costs=guide.costs(), interrupt=self._interrupt)
            for cand in self._enum.candidates():
                if guide.version != version:
                    break
                key = to_sexpr(cand.term)
                if key in seen:
                    continue
                seen.add(key)
                yield cand.term, cand.value, len(seen) - 1
            else:
                return
            self.restarts += 1
            self._earlier.append(self._enum.stats.as_dict())

    def _checkpoint(self, state: SearchState, fingerprint: dict[str, Any], force: bool = False) -> None:
        """Write the checkpoint when it is due (or ``force``); the interval doubles up to
        ``checkpoint_seconds``."""
        now = time.monotonic()
        if self.out_dir is None or (not force and now < self._next_checkpoint):
            return
        with self._interrupts.deferred():
            save_checkpoint(self.out_dir, fingerprint, replace(state, seconds=self._elapsed(state)))
        self._next_checkpoint = time.monotonic() + self._checkpoint_interval
        self._checkpoint_interval = min(2 * self._checkpoint_interval, self.config.checkpoint_seconds)

    def _elapsed(self, state: SearchState) -> float:
        before, t0, _ = self._clock
        return before + (time.perf_counter() - t0)

    def _show(self, state: SearchState, force: bool = False) -> None:
        before, t0, start_index = self._clock
        run_seconds = max(time.perf_counter() - t0, 1e-9)
        rate = (state.next_candidate - start_index) / run_seconds
        self._status.show(lambda: self._status_text(state, rate), force)

    def _status_text(self, state: SearchState, rate: float) -> str:
        inc = state.incumbent
        best = "none yet"
        if inc is not None:
            best = f"{_short(inc.expression)} {self.metric.name} {inc.mean:.4f}"
        elif state.front:
            best = f"a front of {len(state.front)}, newest {_short(state.front[-1].expression, 32)}"
        terms = terminal_status(self.problem.terminals)
        work = f" | {self._busy_text}" if self._busy_text else (f" | terminals: {terms}" if terms else "")
        return (f"search{self.label}: {self._elapsed(state):6.1f} s | {state.next_candidate} candidates "
                f"({rate:.1f}/s) | best: {best}{work}")

    def _busy(self, text: str | None) -> None:
        """Terminal work on demand starts (``text``: what) or ends (None): shown on the status line."""
        self._busy_text = text
        if text is not None and self._state is not None:
            self._show(self._state, force=True)

    def _out_of_time(self, state: SearchState) -> bool:
        """Whether the budget, less the terminal work the end still needs, has run out."""
        limit = self._limit
        return limit is not None and self._elapsed(state) + self._reserve() >= limit

    def _batch_cap(self) -> int:
        """The most candidates to score together: ``candidate_batch``, fewer when one candidate's
        scoring on an ``I3`` chunk is slow (about ``BATCH_SHARE`` of the budget per batch and chunk)."""
        cap = self.config.candidate_batch
        if self._image_seconds is None or self._limit is None:
            return cap
        low, high = BATCH_SECONDS
        target = min(high, max(low, BATCH_SHARE * self.config.budget.seconds)) if self.config.budget.seconds else low
        per_candidate = self._image_seconds * self.scorer.chunk_size(0, 0)
        return max(1, min(cap, int(target / max(per_candidate, 1e-9))))

    def _reserve(self) -> float:
        """Seconds of on-demand terminal work the baselines' check and the final tables will still
        need on this search's images (at the rates measured so far; 0 with every terminal computed
        up front). The test split's (a fifth by default) comes after the budget: reserving it here
        would make each per-class search reserve every class's."""
        terms = self.problem.terminals
        if not isinstance(terms, OnDemandTerminals):
            return 0.0
        names = set(self.grammar.inputs) | {t for b in self.config.baselines for t in baseline(b).terminals}
        return terms.remaining_seconds(sorted(names))

    def _score(self, nodes: list[Node], level: int, chunk: int, state: SearchState) -> list[torch.Tensor | None]:
        """``scorer.score``, unless the time budget has ended (``_Stop``): every image chunk the search
        scores goes through here, so it overshoots the budget by at most one chunk."""
        if self._out_of_time(state):
            raise _Stop
        t = time.perf_counter()
        try:
            return self.scorer.score(nodes, level, chunk)
        finally:
            spent = time.perf_counter() - t
            state.scoring_seconds += spent
            self._image_seconds = spent / max(1, len(nodes) * self.scorer.chunk_size(level, chunk))

    def _process(self, pending: list[tuple[Node, int, object]], state: SearchState,
                 fingerprint: dict[str, Any]) -> None:
        """Judge a batch of candidates in stream order; their ``I3`` scores are computed together. When
        time runs out, the candidates the scores at hand judge are still recorded, up to the first
        that needs another chunk."""
        if not pending:
            return
        prefetched = self._prefetch([node for node, _, earlier in pending if earlier is None], state)
        for node, index, earlier in pending:
            verdict = None if earlier is not None else self._consider(node, state, prefetched.pop(0))
            self._record(state, node, index, verdict)
            self._show(state)
            self._checkpoint(state, fingerprint)
            if verdict is not None and verdict[0] == "accepted":
                self._check_threshold(state)  # candidates after it in the batch leave no trace

    def _prefetch(self, nodes: list[Node], state: SearchState) -> list[list[torch.Tensor | None]]:
        """Each candidate's scores on the chunks of ``I3``, computed a chunk at a time for all the
        candidates still in the running against the current incumbent (a chunk list stops early
        for a hopeless candidate, or for all when time runs out; ``_consider`` redoes the check and
        goes on if the incumbent changed)."""
        out: list[list[torch.Tensor | None]] = [[] for _ in nodes]
        if len(nodes) <= 1:
            return out
        alive = list(range(len(nodes)))
        members = self._members(state)
        for c in range(self.scorer.chunks(0)):
            if not alive:
                break
            scores: list[torch.Tensor | None] = []
            try:
                # in groups of what the cost allows, the deadline checked before each group
                while len(scores) < len(alive):
                    group = alive[len(scores):len(scores) + self._batch_cap()]
                    scores += self._score([nodes[k] for k in group], 0, c, state)
            except _Stop:
                alive = alive[:len(scores)]  # keep what is scored: _consider judges those it suffices for
            still = []
            for k, s in zip(alive, scores):
                out[k].append(s)
                if s is not None and not self._hopeless(torch.cat([p for p in out[k] if p is not None]), members,
                                                        0, c):
                    still.append(k)
            alive = still
        return out

    def _members(self, state: SearchState) -> list[Incumbent | Member]:
        """What a candidate must pass against: the incumbent (none yet: nothing), or the front's members."""
        if self.objectives is not None:
            return list(state.front)
        return [] if state.incumbent is None else [state.incumbent]

    def _hopeless(self, scored: torch.Tensor, members: list[Incumbent | Member], j: int, c: int) -> bool:
        """After chunk ``c`` of block ``j``: can the candidate, with level-``j`` scores ``scored`` so far
        (``[s]``, ``[s, M]`` over several metrics), no longer pass level ``j`` against some member?"""
        if not members or not self.config.early_stop or c == self.scorer.chunks(j) - 1:
            return False
        rest = self.scorer.best_rest(j, c)
        for inc in members:
            level, mean = self._incumbent_level(inc, j)
            if self.objectives is None:
                assert rest is None or isinstance(rest, float)
                if hopeless(scored, level[:len(scored)], len(level), mean, self.higher[0], rest,
                            self.config.small_level):
                    return True
            else:
                assert rest is None or isinstance(rest, torch.Tensor)
                if cannot_pass(scored, level[:len(scored)], len(level), mean, self.higher, rest,
                               self.config.small_level):
                    return True
        return False

    def _incumbent_level(self, inc: Incumbent | Member, j: int) -> tuple[torch.Tensor, Any]:
        """A member's per-image scores on level ``j`` ``[n_j]`` (``[n_j, M]``; float64) and their mean
        (a list over several metrics), built once per member rather than once per check."""
        got = self._levels.get((id(inc), j))
        if got is None or got[0] is not inc:  # a new member may reuse an evicted one's id
            if len(self._levels) > 4 * len(self.level_names) * (len(self._state.front) + 1 if self._state else 1):
                self._levels = {}  # drop those of replaced incumbents and evicted members
            level = torch.tensor(sum(inc.blocks[:j + 1], []), dtype=torch.float64)
            mean = float(level.mean()) if self.objectives is None else level.mean(dim=0).tolist()
            got = self._levels[(id(inc), j)] = (inc, level, mean)
        return got[1], got[2]

    def _passes(self, blocks: torch.Tensor, members: list[Incumbent | Member], j: int) -> tuple[bool, float]:
        """Whether a candidate with scores ``blocks`` on levels ``0..j`` passes level ``j`` against every
        member, and its fit for the guide (its weakest share of images won against a member)."""
        passed, fit = True, 1.0
        for inc in members:
            level = self._incumbent_level(inc, j)[0]
            if self.objectives is None:
                v = judge(blocks, level, self.higher[0], self.config.small_level)
                ok, share = v.passed, v.wins / max(1, v.n)
            else:
                ok, share = passes_against(blocks, level, self.higher, self.config.small_level)
            passed, fit = passed and ok, min(fit, share)
            if not passed and self.guide is None:  # the fit is only the guide's
                break
        return passed, fit

    def _score_baseline(self, name: str, state: SearchState) -> list[float]:
        """Baseline ``name``'s per-image ``I1`` scores (scored once, whatever the time budget: the
        final tables need them anyway)."""
        if name not in state.baselines:
            b = baseline(name)
            missing = [t for t in b.terminals if t not in self.problem.terminals]
            if missing:
                raise SycamError(f"baseline {name} needs terminal(s) {', '.join(missing)}, which the problem lacks")
            scores = score_levels(self.scorer, b.node)
            if scores is None:
                raise SycamError(f"baseline {name} ({b.expression}) gives NaN or Inf heatmaps on these images")
            state.baselines[name] = scores.tolist()
        return state.baselines[name]

    def _final_check(self, state: SearchState) -> None:
        """Score the baselines on ``I1`` and (``baseline_check``) make the best one the grammar
        expresses the incumbent when its mean is better than the incumbent's (its candidate index is
        None: it was not enumerated)."""
        for name in self.config.baselines:
            self._score_baseline(name, state)
        if not self.config.baseline_check:
            return
        if self.objectives is not None:
            self._offer_baselines(state)
            return
        best = best_baseline(self.grammar, state.baselines, self.higher[0])
        if best is None:
            return
        name, node = best
        scores = state.baselines[name]
        mean = sum(scores) / len(scores)
        if state.incumbent is not None and not better(mean, state.incumbent.mean, self.higher[0]):
            return
        blocks = self._level_blocks(scores)
        text = to_sexpr(node)
        with self._interrupts.deferred():
            seconds = self._elapsed(state)
            state.incumbent = Incumbent(text, blocks, seconds, None)
            state.history.append({"expression": text, "score": mean, "seconds": seconds, "candidate": None,
                                  "baseline": name})

    def _level_blocks(self, scores: list[Any]) -> list[list[Any]]:
        """Per-image ``I1`` scores (in ``Subsets`` order) cut into the level blocks."""
        sizes = list(self.subsets.level_sizes)
        return [scores[a:b] for a, b in zip([0] + sizes, sizes)]

    def _offer_baselines(self, state: SearchState) -> None:
        """The final check over several metrics: each scored baseline the grammar expresses, in the
        order of ``baselines``, enters the front when no member's ``I1`` means are at least as good on
        every metric (``front``)."""
        scored = [b for b in self.config.baselines if b in state.baselines]
        for name, node in grammar_baselines(self.grammar, scored).items():
            member = Member(to_sexpr(node), self._level_blocks(state.baselines[name]), self._elapsed(state), None, name)
            if any(covers(f.means, member.means, self.higher) for f in state.front):
                continue
            with self._interrupts.deferred():
                self._enter(state, member, by_means=True)

    def _check_threshold(self, state: SearchState) -> None:
        """Raise ``_Reached`` when the incumbent's ``I1`` mean beats the ``until`` threshold (over several
        metrics: when one member's means beat every threshold)."""
        if self.objectives is not None:
            self._check_thresholds(state)
            return
        if self.until is None or state.incumbent is None:
            return
        if self._threshold is None:
            if self.until.baseline is not None:  # its I1 scores, now (with their terminals, on demand)
                self._score_baseline(self.until.baseline, state)
            self._threshold = self.until.threshold(state.baselines, self.higher[0])
        if better(state.incumbent.mean, self._threshold, self.higher[0]):
            raise _Reached

    def _check_thresholds(self, state: SearchState) -> None:
        if self.untils is None or not state.front:
            return
        if self._thresholds is None:
            for u in self.untils:
                if u.baseline is not None:
                    self._score_baseline(u.baseline, state)
            self._thresholds = [u.threshold({b: [row[m] for row in v] for b, v in state.baselines.items()}, h)
                                for m, (u, h) in enumerate(zip(self.untils, self.higher))]
        if any(reached(f.means, self._thresholds, self.higher) for f in state.front):
            raise _Reached

    def _consider(self, node: Node, state: SearchState,
                  prefetched: list[torch.Tensor | None] | None = None) -> tuple[str, int, list[torch.Tensor]]:
        """Score one candidate level by level (chunk by chunk, stopping once it cannot pass); returns
        its outcome (``accepted``, ``rejected`` or ``invalid``), how many levels it was scored on and
        its level blocks. Raises ``_Stop`` when it needs a chunk after the deadline: ``state`` is
        changed only by ``_record``, so a candidate cut short leaves no trace and is redone on resume."""
        members = self._members(state)
        blocks: list[torch.Tensor] = []
        outcome, levels_scored = "accepted", 0
        self._fit = 0.0
        for j in range(len(self.level_names)):
            levels_scored = j + 1
            before = torch.cat(blocks) if blocks else torch.zeros((0, *self._columns), dtype=torch.float64)
            chunks: list[torch.Tensor] = []
            for c in range(self.scorer.chunks(j)):
                if j == 0 and prefetched and c < len(prefetched):
                    s = prefetched[c]
                else:
                    s = self._score([node], j, c, state)[0]
                if s is None:
                    outcome = "invalid"
                    break
                chunks.append(s)
                if self._hopeless(torch.cat([before, *chunks]), members, j, c):
                    if self.guide is not None:  # only a guided search learns from the share of wins
                        self._fit = self._wins(torch.cat([before, *chunks]), members, j)
                    outcome = "rejected"
                    break
            if outcome != "accepted":
                break
            blocks.append(torch.cat(chunks))
            if not members:
                continue
            passed, self._fit = self._passes(torch.cat(blocks), members, j)
            if not passed:
                outcome = "rejected"
                break
        return outcome, levels_scored, blocks

    def _wins(self, scored: torch.Tensor, members: list[Incumbent | Member], j: int) -> float:
        """The share of the images scored so far on level ``j`` (``scored`` ``[s]``, ``[s, M]``) where the
        candidate beats a member (its weakest against any member; over several metrics, on its best metric)."""
        if not len(scored):
            return 0.0
        higher = torch.tensor(self.higher if self.objectives is not None else self.higher[0])  # [M] or []
        shares = []
        for inc in members:
            level = self._incumbent_level(inc, j)[0][:len(scored)]
            better = torch.where(higher, scored > level, scored < level)
            shares.append(float(better.double().mean(dim=0).max()))
        return min(shares)

    def _record(self, state: SearchState, node: Node, index: int,
                verdict: tuple[str, int, list[torch.Tensor]] | None) -> None:
        """Count candidate ``index`` as processed with ``_consider``'s verdict (None: heatmap-equivalent
        to an earlier one), all at once: an interrupt waits until the state is consistent again."""
        counts = state.counts
        with self._interrupts.deferred():
            counts.considered += 1
            state.next_candidate = index + 1
            if verdict is None:
                counts.heatmap_equivalent += 1
                return
            outcome, levels_scored, blocks = verdict
            if self.guide is not None and outcome != "invalid":
                self.guide.observe(node, self._fit)
            if state.first_scored is None:
                state.first_scored = self._elapsed(state)
            for name in self.level_names[:levels_scored]:
                counts.scored[name] += 1
            if outcome == "invalid":
                counts.invalid += 1
            elif outcome == "rejected":
                counts.rejected[self.level_names[levels_scored - 1]] += 1
            else:
                text, seconds = to_sexpr(node), self._elapsed(state)
                counts.accepted += 1
                if self.objectives is not None:
                    self._enter(state, Member(text, [b.tolist() for b in blocks], seconds, index))
                    return
                state.incumbent = Incumbent(text, [b.tolist() for b in blocks], seconds, index)
                state.history.append({"expression": text, "score": float(torch.cat(blocks).mean()),
                                      "seconds": seconds, "candidate": index})

    def _enter(self, state: SearchState, member: Member, by_means: bool = False) -> None:
        """``member`` (it passed ``I1`` against every member) enters the front, and the members that do
        not pass against it on ``I1`` leave; ``by_means``: a baseline, judged on the means alone (see
        ``front``). Recorded in the history with what it evicted."""
        last = len(self.level_names) - 1
        mine = torch.tensor(sum(member.blocks, []), dtype=torch.float64)
        stay: list[Member] = []
        for f in state.front:
            if by_means:
                dominated = covers(member.means, f.means, self.higher)
            else:
                dominated = not passes_against(self._incumbent_level(f, last)[0], mine, self.higher,
                                               self.config.small_level)[0]
            if dominated:
                member.evicted.append(f.expression)
            else:
                stay.append(f)
        state.front = [*stay, member]
        state.history.append({"expression": member.expression, "scores": member.means, "seconds": member.seconds,
                              "candidate": member.candidate, "evicted": list(member.evicted),
                              **({"baseline": member.baseline} if member.baseline is not None else {})})
