"""The search's resumable state and its checkpoint file.

Everything the search decided so far is in ``SearchState``: how many enumerated candidates were
processed, the incumbent (over several metrics: the front's members) with its per-image scores, the
history and the counts. Per-image scores are
stored as JSON floats (a float32 converts to a float64 and back exactly), so a resumed search
compares candidates against bit-identical incumbent scores and scores nothing twice. A checkpoint
is read back only once every field is checked (``load_checkpoint``), since a resumed search trusts
it: a NaN ``seconds`` would disable the budget, a forged score would keep out better candidates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SycamError
from ..util.files import atomic_write_json as write_json
from .front import Member

CHECKPOINT_NAME = "checkpoint.json"
_FORMAT = "sycam-dsl/checkpoint/1"


@dataclass
class Incumbent:
    """The best candidate so far: its expression and per-image scores, one list per level block;
    ``candidate`` its enumeration index, None for a baseline (the search's final check)."""

    expression: str
    blocks: list[list[float]]
    seconds: float
    candidate: int | None

    @property
    def mean(self) -> float:
        """The mean score on ``I1`` (every block), summed in ``I1`` order like a baseline's scores."""
        flat = [x for b in self.blocks for x in b]
        return sum(flat) / len(flat)


@dataclass
class Counts:
    """What happened to the candidates (``levels`` lists the level names, ``I3`` first)."""

    considered: int = 0             # complete candidates the enumerator yielded and the search looked at
    heatmap_equivalent: int = 0     # same normalized heatmaps as an earlier candidate: not scored
    invalid: int = 0                # NaN or Inf in the heatmap: not scored
    scored: dict[str, int] = field(default_factory=dict)    # per level: candidates scored there
    rejected: dict[str, int] = field(default_factory=dict)  # per level: candidates that failed there
    accepted: int = 0               # became the incumbent (the baseline start is not a candidate)


@dataclass
class SearchState:
    """A search's progress; ``next_candidate`` enumerated candidates have been processed."""

    next_candidate: int = 0
    seconds: float = 0.0                      # search time spent before this run (resumes add up)
    scoring_seconds: float = 0.0
    incumbent: Incumbent | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    baselines: dict[str, list[Any]] = field(default_factory=dict)  # name -> per-image scores on I1 ([M] each)
    first_scored: float | None = None         # search seconds when the first candidate was scored
    front: list[Member] = field(default_factory=list)  # a search over several metrics: its Pareto front

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.front:  # a single-metric checkpoint keeps its format
            del d["front"]
        return d



def save_checkpoint(folder: Path, fingerprint: dict[str, Any], state: SearchState) -> Path:
    """``folder/checkpoint.json`` with the settings fingerprint and the state."""
    path = folder / CHECKPOINT_NAME
    write_json(path, {"format": _FORMAT, "fingerprint": fingerprint, "state": state.to_dict()})
    return path


@dataclass(frozen=True)
class Expected:
    """What a checkpoint's state must fit to be resumed by a search: its level names and block sizes
    (``I3`` first), the baselines it may hold, ``expression_error(text)`` (why an incumbent
    expression does not fit the grammar, or None), ``bounds()`` (the lowest and highest score
    each image of ``I1`` can get, in ``Subsets`` order, or None when the metric has no bounds;
    called only when there are scores to check) and ``metrics``: how many metrics the search
    optimizes (more than one: each image's score is a list of one score per metric, and the state
    holds a front instead of an incumbent)."""

    level_names: Sequence[str]
    block_sizes: Sequence[int]
    baselines: Sequence[str]
    expression_error: Callable[[str], str | None]
    bounds: Callable[[], tuple[Sequence[Any], Sequence[Any]] | None]
    metrics: int = 1


class _Bad(Exception):
    """A field of the checkpoint (``field``: its path, e.g. ``state.counts.invalid``) is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict):
        raise _Bad(where, f"must be an object, got {type(d).__name__}")
    if key not in d:
        raise _Bad(f"{where}.{key}" if where else key, "is missing")
    return d[key]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Bad(where, f"must be a non-negative integer, got {v!r}")
    return v


def _seconds(v: Any, where: str) -> float:
    if not _is_number(v) or v < 0:
        raise _Bad(where, f"must be a finite non-negative number, got {v!r}")
    return float(v)


class _Checker:
    """Reads and checks the ``state`` part of a checkpoint against ``Expected``."""

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self._bounds: tuple[Sequence[float], Sequence[float]] | None = None
        self._bounds_done = False

    def scores(self, v: Any, where: str, start: int, n: int) -> list[Any]:
        """``n`` finite scores of the images ``start:start + n`` of ``I1`` (over several metrics, one
        list of a score per metric each), within the metric's bounds."""
        if not isinstance(v, list):
            raise _Bad(where, f"must be a list of scores, got {type(v).__name__}")
        if len(v) != n:
            raise _Bad(where, f"has {len(v)} scores, expected {n}")
        k = self.expected.metrics
        for i, x in enumerate(v):
            row = x if k > 1 else [x]
            if k > 1 and (not isinstance(x, list) or len(x) != k):
                raise _Bad(f"{where}[{i}]", f"must be a list of {k} scores (one per metric), got {x!r:.60}")
            for m, y in enumerate(row):
                if not _is_number(y):
                    raise _Bad(f"{where}[{i}]", f"must be a finite number, got {y!r}" if k == 1
                               else f"has a score that is not a finite number, {y!r}, for metric {m}")
        if not self._bounds_done:
            self._bounds, self._bounds_done = self.expected.bounds(), True
        if self._bounds is not None:
            low, high = self._bounds
            for i, x in enumerate(v):
                lo: Any = low[start + i] if k > 1 else [low[start + i]]  # [M] bounds, or one
                hi: Any = high[start + i] if k > 1 else [high[start + i]]
                for m, y in enumerate(x if k > 1 else [x]):
                    if not lo[m] <= y <= hi[m]:
                        raise _Bad(f"{where}[{i}]", f"is {y!r}, outside the metric's bounds "
                                                    f"[{lo[m]:.6g}, {hi[m]:.6g}]" + (f" (metric {m})" if k > 1 else ""))
        return [[float(y) for y in x] if k > 1 else float(x) for x in v]

    def expression(self, v: Any, where: str) -> str:
        if not isinstance(v, str):
            raise _Bad(where, f"must be a string, got {type(v).__name__}")
        error = self.expected.expression_error(v)
        if error is not None:
            raise _Bad(where, f"{v!r} {error}")
        return v

    def per_level(self, v: Any, where: str) -> dict[str, int]:
        if not isinstance(v, dict):
            raise _Bad(where, f"must be an object, got {type(v).__name__}")
        unknown = sorted(set(v) - set(self.expected.level_names))
        if unknown:
            raise _Bad(where, f"has unknown level(s) {', '.join(map(str, unknown))}")
        return {k: _count(x, f"{where}.{k}") for k, x in v.items()}

    def state(self, d: Any) -> SearchState:
        exp = self.expected
        next_candidate = _count(_get(d, "next_candidate", "state"), "state.next_candidate")
        seconds = _seconds(_get(d, "seconds", "state"), "state.seconds")
        scoring = _seconds(d.get("scoring_seconds", 0.0), "state.scoring_seconds")
        c = _get(d, "counts", "state")
        counts = Counts(**{k: _count(_get(c, k, "state.counts"), f"state.counts.{k}")
                           for k in ("considered", "heatmap_equivalent", "invalid", "accepted")},
                        scored=self.per_level(_get(c, "scored", "state.counts"), "state.counts.scored"),
                        rejected=self.per_level(_get(c, "rejected", "state.counts"), "state.counts.rejected"))
        if counts.considered != next_candidate:
            raise _Bad("state.counts.considered", f"is {counts.considered}, but state.next_candidate is "
                                                  f"{next_candidate} (every processed candidate is considered)")
        history = _get(d, "history", "state")
        if not isinstance(history, list):
            raise _Bad("state.history", f"must be a list, got {type(history).__name__}")
        for i, h in enumerate(history):
            where = f"state.history[{i}]"
            self.expression(_get(h, "expression", where), f"{where}.expression")
            if exp.metrics == 1 and not _is_number(_get(h, "score", where)):
                raise _Bad(f"{where}.score", f"must be a finite number, got {h['score']!r}")
            if exp.metrics > 1:
                got = _get(h, "scores", where)
                if not isinstance(got, list) or len(got) != exp.metrics or not all(map(_is_number, got)):
                    raise _Bad(f"{where}.scores", f"must be a list of {exp.metrics} finite numbers, got {got!r:.60}")
            _seconds(_get(h, "seconds", where), f"{where}.seconds")
            if _get(h, "candidate", where) is None:  # the final check's baseline: a known one
                if h.get("baseline") not in exp.baselines:
                    raise _Bad(f"{where}.candidate", "is null, but the entry is not from a baseline the search "
                                                     "scores (its baseline field)")
            elif _count(h["candidate"], f"{where}.candidate") >= next_candidate:
                raise _Bad(f"{where}.candidate", f"is {h['candidate']}, not below state.next_candidate")
        accepted = sum(h["candidate"] is not None for h in history)
        if counts.accepted != accepted:
            raise _Bad("state.counts.accepted", f"is {counts.accepted}, but the history has {accepted} accepted "
                                                f"candidates")
        inc = _get(d, "incumbent", "state")
        incumbent = None
        front = self.front(d.get("front", []), history, next_candidate) if exp.metrics > 1 else []
        if inc is not None and exp.metrics > 1:
            raise _Bad("state.incumbent", "must be null: a search over several metrics keeps a front")
        if inc is not None:
            where = "state.incumbent"
            blocks = _get(inc, "blocks", where)
            if not isinstance(blocks, list) or len(blocks) != len(exp.block_sizes):
                raise _Bad(f"{where}.blocks", f"must be a list of {len(exp.block_sizes)} score lists "
                                              f"(one per level), got {blocks!r:.60}")
            starts = [sum(exp.block_sizes[:j]) for j in range(len(exp.block_sizes))]
            incumbent = Incumbent(self.expression(_get(inc, "expression", where), f"{where}.expression"),
                                  [self.scores(b, f"{where}.blocks[{j}]", s, n)
                                   for j, (b, s, n) in enumerate(zip(blocks, starts, exp.block_sizes))],
                                  _seconds(_get(inc, "seconds", where), f"{where}.seconds"),
                                  None if _get(inc, "candidate", where) is None
                                  else _count(inc["candidate"], f"{where}.candidate"))
            if not history or (history[-1]["expression"], history[-1]["candidate"]) != (
                    incumbent.expression, incumbent.candidate):
                raise _Bad(where, "is not the last entry of state.history")
        elif history and exp.metrics == 1:
            raise _Bad("state.incumbent", "is missing, but the history has entries")
        baselines = _get(d, "baselines", "state")
        if not isinstance(baselines, dict):
            raise _Bad("state.baselines", f"must be an object, got {type(baselines).__name__}")
        unknown = sorted(set(baselines) - set(exp.baselines))
        if unknown:
            raise _Bad("state.baselines", f"has unknown baseline(s) {', '.join(unknown)}")
        n = sum(exp.block_sizes)
        scored = {k: self.scores(v, f"state.baselines.{k}", 0, n) for k, v in baselines.items()}
        if incumbent is not None and incumbent.candidate is None:
            name = history[-1]["baseline"]
            if [x for b in incumbent.blocks for x in b] != scored.get(name):
                raise _Bad("state.incumbent.blocks", f"are not the scores of baseline {name}, which it is")
        first = d.get("first_scored")
        for j, m in enumerate(front):
            if m.candidate is None and [x for b in m.blocks for x in b] != scored.get(m.baseline or ""):
                raise _Bad(f"state.front[{j}].blocks", f"are not the scores of baseline {m.baseline}, which it is")
        return SearchState(next_candidate, seconds, scoring, incumbent, [dict(h) for h in history], counts, scored,
                           None if first is None else _seconds(first, "state.first_scored"), front)

    def front(self, v: Any, history: list[Any], next_candidate: int) -> list[Member]:
        """The members of a front: each a known expression with scores that fit, entered as the
        history says (a candidate below ``next_candidate``, or a baseline the search scores)."""
        exp = self.expected
        if not isinstance(v, list):
            raise _Bad("state.front", f"must be a list, got {type(v).__name__}")
        starts = [sum(exp.block_sizes[:j]) for j in range(len(exp.block_sizes))]
        entered = {(h.get("expression"), h.get("candidate")) for h in history if isinstance(h, dict)}
        out = []
        for k, d in enumerate(v):
            where = f"state.front[{k}]"
            blocks = _get(d, "blocks", where)
            if not isinstance(blocks, list) or len(blocks) != len(exp.block_sizes):
                raise _Bad(f"{where}.blocks", f"must be a list of {len(exp.block_sizes)} score lists "
                                              f"(one per level), got {blocks!r:.60}")
            candidate = _get(d, "candidate", where)
            baseline = d.get("baseline")
            if candidate is None:
                if baseline not in exp.baselines:
                    raise _Bad(f"{where}.candidate", "is null, but the member is not a baseline the search scores")
            elif _count(candidate, f"{where}.candidate") >= next_candidate:
                raise _Bad(f"{where}.candidate", f"is {candidate}, not below state.next_candidate")
            evicted = d.get("evicted", [])
            if not isinstance(evicted, list) or not all(isinstance(e, str) for e in evicted):
                raise _Bad(f"{where}.evicted", "must be a list of expressions")
            member = Member(self.expression(_get(d, "expression", where), f"{where}.expression"),
                            [self.scores(b, f"{where}.blocks[{j}]", s, n)
                             for j, (b, s, n) in enumerate(zip(blocks, starts, exp.block_sizes))],
                            _seconds(_get(d, "seconds", where), f"{where}.seconds"), candidate, baseline, list(evicted))
            if (member.expression, member.candidate) not in entered:
                raise _Bad(where, "did not enter the front: state.history has no such entry")
            out.append(member)
        return out


def _held_out_change(saved: Any, now: Any) -> str:
    """What changed in the test split's images (digests ``saved`` in the checkpoint, ``now`` here)."""
    saved = saved if isinstance(saved, list) else []
    now = now if isinstance(now, list) else []
    if len(saved) != len(now):
        return f"the test split now holds {len(now)} image(s), the checkpoint's {len(saved)}"
    changed = [i for i, (a, b) in enumerate(zip(saved, now)) if a != b]
    return (f"{len(changed)} of the {len(now)} test-split image(s) changed since it was written "
            f"(the first at position {changed[0]} of the split)")


def load_checkpoint(folder: Path, fingerprint: dict[str, Any], expected: Expected) -> SearchState | None:
    """The state saved in ``folder`` (None when there is no checkpoint). A checkpoint of another
    problem or other settings is an error naming what differs, never silently mixed in; so is one
    whose state does not fit ``expected`` (wrong types, negative or non-finite numbers, score lists
    of the wrong length or outside the metric's bounds, an incumbent that is not an expression of
    the grammar): one line naming the file and the field."""
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SycamError(f"cannot resume from {path}: the file is not a sycam-dsl checkpoint ({e})") from e
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise SycamError(f"cannot resume from {path}: the file is not a sycam-dsl checkpoint "
                         f"(format {found!r}, expected {_FORMAT!r})")
    saved = data.get("fingerprint")
    if not isinstance(saved, dict):
        raise SycamError(f"cannot resume from {path}: fingerprint is missing or not an object")
    differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differ == ["test_images"]:  # the searched images, settings and model are the same
        change = _held_out_change(saved.get("test_images"), fingerprint.get("test_images"))
        raise SycamError(f"cannot resume from {path}: {change}; resume with the same images, or use another output "
                         f"folder for a new search")
    if differ:
        raise SycamError(f"cannot resume from {path}: it was written with different {', '.join(differ)}; "
                         f"use the same settings, or another output folder for a new search")
    try:
        return _Checker(expected).state(_get(data, "state", ""))
    except _Bad as e:
        raise SycamError(f"cannot resume from {path}: {e}") from None
