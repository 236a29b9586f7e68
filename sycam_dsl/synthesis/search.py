"""The oracle-guided search (docs/search.md#the-oracle) over one problem.

The enumerator streams candidates (already canonicalized and merged by observational equivalence on
the equivalence subset). Each candidate is then checked against the heatmaps already seen, and
scored level by level (``I3``, then the images ``I2`` adds, then those ``I1`` adds): a level's
scores are reused by the next, so no image is scored twice for a candidate. Failing a level ends
the candidate; passing ``I1`` hands it to the keeper (``keepers``): it becomes the incumbent, or
over several metrics enters the front.

When the search stops (but for Ctrl-C), the baselines are scored on ``I1`` and offered to the
keeper, so that the result is never worse on ``I1`` than a method the grammar contains
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
on the same folder resumes once the checkpoint is checked (``state``, ``resume_check``): the enumerator
replays the candidates already processed (checking their heatmaps, not scoring them) and carries
on from the first unprocessed one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..baselines import baseline
from ..equivalence.heatmaps import HeatmapIndex
from ..errors import SycamError
from ..lang.ast import Node, to_sexpr
from ..lang.sexpr import parse_expr
from ..metrics.objectives import metric_list
from ..parse.grammar import Grammar
from ..util.progress import StatusLine
from . import resume_check
from .candidates import CandidateStream
from .config import SearchConfig
from .front import Member
from .guide import Guide
from .interrupts import Interrupts, Reached, Stop
from .keepers import FrontKeeper, Hooks, Keeper, level_blocks, make_keeper, score_baseline
from .on_demand import OnDemandTerminals, terminal_status
from .outcome import SearchOutcome
from .problem import Problem
from .resume_check import grammar_digest, short
from .scorer import LocalScorer, Scorer, ScorerFactory
from .state import CHECKPOINT_NAME, Expected, Incumbent, SearchState, load_checkpoint, save_checkpoint
from .subsets import make_subsets

__all__ = ["Search", "SearchOutcome", "grammar_digest"]

#: A batch of candidates is sized so that scoring it on one image chunk takes about this share of the
#: time budget (at the cost per candidate measured so far), within ``BATCH_SECONDS``: the deadline is
#: checked between chunks, so this bounds the overshoot on a slow model.
BATCH_SHARE = 0.02
BATCH_SECONDS = (2.0, 10.0)

#: Seconds to the second checkpoint; the interval then doubles up to ``checkpoint_seconds``, so a
#: search killed early loses little while a long one writes rarely.
FIRST_CHECKPOINT_SECONDS = 1.0


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
        #: over several metrics the search keeps a front (``FrontKeeper``) and ``until`` has one threshold
        #: each, else an incumbent (``IncumbentKeeper``); the keeper is picked here, once
        self.keeper: Keeper = make_keeper(config, grammar, Hooks(
            elapsed=lambda state: self._elapsed(state), deferred=lambda: self._interrupts.deferred(),
            score_baseline=lambda name, state: score_baseline(name, state, self.scorer, self.problem.terminals),
            level_blocks=lambda scores: level_blocks(scores, self.subsets.level_sizes)))
        self.objectives = config.metric if isinstance(self.keeper, FrontKeeper) else None
        self.higher, self.untils, self.until = self.keeper.higher, self.keeper.untils, self.keeper.until
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.subsets = make_subsets(problem.n, config.level_sizes, config.seed, problem.classes,
                                    config.equivalence_size)
        self.level_names = self.subsets.names
        self.scorer: Scorer = (scorer or LocalScorer)(problem, self.subsets, self.metric, grammar.start.type,
                                                      config.image_chunk)
        self.guide = Guide(grammar) if config.strategy == "guided" else None
        self._restarts = 0  # of the guided enumerator, in the runs before this one
        self._candidates: CandidateStream | None = None  # this run's
        self.label = label
        self._status = StatusLine(progress)
        self._resumed: SearchState | None = None
        self._resumed_loaded = False
        self._interrupts = Interrupts()  # entered by run
        self._fingerprint: dict[str, Any] | None = None
        self._busy_text: str | None = None
        self._state: SearchState | None = None
        self._image_seconds: float | None = None  # the last scoring's seconds per candidate and image
        self._limit: float | None = None  # the search seconds (over every run) at which time is up
        self._verify_seconds = 0.0  # spent scoring the checkpoint's scores again (a whole-run budget's)
        self._terminal_work0 = 0.0  # the terminal source's on-demand seconds when this run started

    # -- the search -------------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (budgets may change between runs); computed
        once, since the problem's digest hashes every terminal and image."""
        if self._fingerprint is None:
            self._fingerprint = resume_check.fingerprint(self.problem, self.grammar, self.config, self.subsets)
        return self._fingerprint

    def expected(self) -> Expected:
        """What a checkpoint of this search must fit (see ``load_checkpoint``)."""
        return resume_check.expected(self.problem, self.grammar, self.config, self.subsets, len(self.higher))

    @property
    def restarts(self) -> int:
        """How many times the guided enumerator started again, over every run."""
        return self._restarts + (self._candidates.restarts if self._candidates is not None else 0)

    def resumed_state(self) -> SearchState | None:
        """The checkpoint's state in the output folder, checked (None without one); loaded once, so
        a caller can check every checkpoint before any search starts."""
        if self.out_dir is not None and not self._resumed_loaded:
            self._resumed = load_checkpoint(self.out_dir, self.fingerprint(), self.expected())
            if self._resumed is not None:
                t = time.perf_counter()
                resume_check.verify(self._resumed, self.out_dir / CHECKPOINT_NAME, self.scorer, self.grammar,
                                    self.subsets.level_sizes)
                self._verify_seconds = time.perf_counter() - t
            self._resumed_loaded = True
        return self._resumed

    def run(self, resume: bool = True) -> SearchOutcome:
        """Search until the budget, the grammar's end, Ctrl-C or SIGTERM; returns the incumbent."""
        fingerprint = self.fingerprint() if self.out_dir is not None else {}  # only checkpoints use it
        state = self._start(resume)
        with Interrupts() as interrupts:
            self._interrupts = interrupts
            source = self.problem.terminals.source if isinstance(self.problem.terminals, OnDemandTerminals) else None
            if source is not None:
                source.busy = self._busy
            stopped_by = self._search(state, fingerprint)
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
        return self._outcome(state, stopped_by, total)

    def _start(self, resume: bool) -> SearchState:
        """The state to start from (the checkpoint's with ``resume``), with the clock, the time limit
        and the checkpoint timing set for this run."""
        state = (self.resumed_state() if resume else None) or SearchState()
        if self.guide is not None and state.next_candidate > 0:
            raise SycamError("resuming a guided search is not supported yet: run it again with another "
                             "output folder, or search with --strategy size")
        self._state = self.keeper.state = state
        self._resumed, self._resumed_loaded = None, False  # a second run reads the checkpoint afresh
        for name in self.level_names:
            state.counts.scored.setdefault(name, 0)
            state.counts.rejected.setdefault(name, 0)
        t0 = time.perf_counter()
        self._clock = (state.seconds, t0, state.next_candidate)
        self._terminal_work0 = self._terminal_work()
        seconds = self.config.budget.seconds
        # a whole-run budget bounds this run: a resumed search's earlier runs do not count
        if seconds is not None and self.config.budget.whole_run:  # the checks of the checkpoint were part of the run
            seconds = max(seconds - self._verify_seconds, 1e-3) + state.seconds
        self._limit = seconds
        self._checkpoint_interval = min(FIRST_CHECKPOINT_SECONDS, self.config.checkpoint_seconds)
        self._next_checkpoint = time.monotonic()
        self._restarts, self._candidates = self.restarts, None
        return state

    def _search(self, state: SearchState, fingerprint: dict[str, Any]) -> str:
        """Judge the candidates until something stops the search; returns what did (``stopped_by``)."""
        try:
            self._checkpoint(state, fingerprint, force=True)
            self._check_threshold(state)
            return self._loop(state, fingerprint)
        except Stop:
            return "time"
        except Reached:
            return "threshold"
        except KeyboardInterrupt:
            return "interrupted"

    def _loop(self, state: SearchState, fingerprint: dict[str, Any]) -> str:
        """Enumerate and judge candidates in batches until the grammar ends (``exhausted``) or the
        candidate budget does (``candidates``); raises ``Stop`` when time is up."""
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
                raise Stop

        self._candidates = CandidateStream(self.grammar, eq_terms, self.config.max_size, self.guide, out_of_time)
        stopped_by = "exhausted"
        for term, value, at in self._candidates:
            if budget.candidates is not None and at >= budget.candidates:
                stopped_by = "candidates"
                break
            if self._out_of_time(state):
                self._process(pending, state, fingerprint)  # records those judged without scoring
                raise Stop
            earlier = index.check(value, term)
            if at < state.next_candidate:
                continue  # processed before the checkpoint: replayed for the heatmap index only
            pending.append((term, at, earlier))
            if len(pending) >= batch:
                self._process(pending, state, fingerprint)
                pending = []
                batch = min(2 * batch, self._batch_cap())
        self._process(pending, state, fingerprint)
        return stopped_by

    def _outcome(self, state: SearchState, stopped_by: str, total: float) -> SearchOutcome:
        """The ``SearchOutcome`` of a finished run: the keeper's result and the enumeration's counts."""
        best = None
        chosen, knee_at = self.keeper.chosen(state)
        if chosen is not None:
            best = parse_expr(chosen.expression, self.grammar.inputs, source="<incumbent>")
        stats = self._candidates.stats() if self._candidates is not None else {}
        if self.guide is not None:
            stats.update(restarts=self.restarts, partial_solutions=self.guide.partial_solutions)
        return SearchOutcome(best, state, self.subsets, stopped_by, stats, total, self.level_names,
                             self.keeper.threshold, self.config.baseline_check, self.config.small_level, knee_at,
                             metric_list(self.metric))

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
            best = f"{short(inc.expression)} {self.metric.name} {inc.mean:.4f}"
        elif state.front:
            best = f"a front of {len(state.front)}, newest {short(state.front[-1].expression, 32)}"
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
        """Whether the budget, less the terminal work the end still needs, has run out. A budget that
        does not set that work aside (``Budget.sets_aside`` off) counts the search's own seconds: the
        terminals it computed on demand since it started do not count (they are measured, and the
        baselines' check and the final tables would need most of them anyway)."""
        limit = self._limit
        if limit is None:
            return False
        if not self.config.budget.sets_aside:
            return self._elapsed(state) - (self._terminal_work() - self._terminal_work0) >= limit
        return self._elapsed(state) + self._reserve() >= limit

    def _terminal_work(self) -> float:
        """Seconds the problem's terminal source has spent computing on demand (0 without one)."""
        terms = self.problem.terminals
        return terms.source.work.total_seconds if isinstance(terms, OnDemandTerminals) else 0.0

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
        """``scorer.score``, unless the time budget has ended (``Stop``): every image chunk the search
        scores goes through here, so it overshoots the budget by at most one chunk."""
        if self._out_of_time(state):
            raise Stop
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
        members = self.keeper.members(state)
        for c in range(self.scorer.chunks(0)):
            if not alive:
                break
            scores: list[torch.Tensor | None] = []
            try:
                # in groups of what the cost allows, the deadline checked before each group
                while len(scores) < len(alive):
                    group = alive[len(scores):len(scores) + self._batch_cap()]
                    scores += self._score([nodes[k] for k in group], 0, c, state)
            except Stop:
                alive = alive[:len(scores)]  # keep what is scored: _consider judges those it suffices for
            still = []
            for k, s in zip(alive, scores):
                out[k].append(s)
                if s is not None and not self._hopeless(torch.cat([p for p in out[k] if p is not None]), members,
                                                        0, c):
                    still.append(k)
            alive = still
        return out

    def _hopeless(self, scored: torch.Tensor, members: list[Incumbent | Member], j: int, c: int) -> bool:
        """After chunk ``c`` of block ``j``: can the candidate, with level-``j`` scores ``scored`` so far
        (``[s]``, ``[s, M]`` over several metrics), no longer pass level ``j`` against some member?"""
        if not members or not self.config.early_stop or c == self.scorer.chunks(j) - 1:
            return False
        rest = self.scorer.best_rest(j, c)
        return any(self.keeper.hopeless(scored, inc, j, rest) for inc in members)

    def _final_check(self, state: SearchState) -> None:
        """Score the baselines on ``I1`` and (``baseline_check``) offer the ones the grammar expresses to
        the keeper (``Keeper.final_check``)."""
        self.keeper.final_check(state)

    def _check_threshold(self, state: SearchState) -> None:
        """Raise ``Reached`` when the incumbent's ``I1`` mean beats the ``until`` threshold (over several
        metrics: when one member's means beat every threshold)."""
        if self.keeper.reached(state):
            raise Reached

    def _consider(self, node: Node, state: SearchState,
                  prefetched: list[torch.Tensor | None] | None = None) -> tuple[str, int, list[torch.Tensor]]:
        """Score one candidate level by level (chunk by chunk, stopping once it cannot pass); returns
        its outcome (``accepted``, ``rejected`` or ``invalid``), how many levels it was scored on and
        its level blocks. Raises ``Stop`` when it needs a chunk after the deadline: ``state`` is
        changed only by ``_record``, so a candidate cut short leaves no trace and is redone on resume."""
        members = self.keeper.members(state)
        blocks: list[torch.Tensor] = []
        outcome, levels_scored = "accepted", 0
        self._fit = 0.0
        for j in range(len(self.level_names)):
            levels_scored = j + 1
            before = torch.cat(blocks) if blocks else torch.zeros((0, *self.keeper.columns), dtype=torch.float64)
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
                        self._fit = self.keeper.wins(torch.cat([before, *chunks]), members, j)
                    outcome = "rejected"
                    break
            if outcome != "accepted":
                break
            blocks.append(torch.cat(chunks))
            if not members:
                continue
            passed, self._fit = self.keeper.passes(torch.cat(blocks), members, j, self.guide is not None)
            if not passed:
                outcome = "rejected"
                break
        return outcome, levels_scored, blocks

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
                self.keeper.accept(state, text, blocks, seconds, index)
