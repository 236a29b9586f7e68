"""The search's resumable state and its checkpoint file.

Everything the search decided so far is in ``SearchState``: how many enumerated candidates were
processed, the incumbent with its per-image scores, the history and the counts. Per-image scores are
stored as JSON floats (a float32 converts to a float64 and back exactly), so a resumed search
compares candidates against bit-identical incumbent scores and scores nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SycamError
from ..util.files import atomic_write_json as write_json

CHECKPOINT_NAME = "checkpoint.json"
_FORMAT = "sycam-dsl/checkpoint/1"


@dataclass
class Incumbent:
    """The best candidate so far: its expression and per-image scores, one list per level block."""

    expression: str
    blocks: list[list[float]]
    seconds: float
    candidate: int


@dataclass
class Counts:
    """What happened to the candidates (``levels`` lists the level names, ``I3`` first)."""

    considered: int = 0             # complete candidates the enumerator yielded and the search looked at
    heatmap_equivalent: int = 0     # same normalized heatmaps as an earlier candidate: not scored
    invalid: int = 0                # NaN or Inf in the heatmap: not scored
    scored: dict[str, int] = field(default_factory=dict)    # per level: candidates scored there
    rejected: dict[str, int] = field(default_factory=dict)  # per level: candidates that failed there
    accepted: int = 0               # became the incumbent


@dataclass
class SearchState:
    """A search's progress; ``next_candidate`` enumerated candidates have been processed."""

    next_candidate: int = 0
    seconds: float = 0.0                      # search time spent before this run (resumes add up)
    scoring_seconds: float = 0.0
    incumbent: Incumbent | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    baselines: dict[str, list[float]] = field(default_factory=dict)  # name -> per-image scores on I1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SearchState:
        inc = d.get("incumbent")
        return SearchState(next_candidate=int(d["next_candidate"]), seconds=float(d["seconds"]),
                           scoring_seconds=float(d.get("scoring_seconds", 0.0)),
                           incumbent=Incumbent(**inc) if inc else None, history=list(d["history"]),
                           counts=Counts(**d["counts"]), baselines=dict(d["baselines"]))


def save_checkpoint(folder: Path, fingerprint: dict[str, Any], state: SearchState) -> Path:
    """``folder/checkpoint.json`` with the settings fingerprint and the state."""
    path = folder / CHECKPOINT_NAME
    write_json(path, {"format": _FORMAT, "fingerprint": fingerprint, "state": state.to_dict()})
    return path


def load_checkpoint(folder: Path, fingerprint: dict[str, Any]) -> SearchState | None:
    """The state saved in ``folder`` (None when there is no checkpoint). A checkpoint of another
    problem or other settings is an error naming what differs, never silently mixed in."""
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != _FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {_FORMAT!r}")
        saved = data["fingerprint"]
        state = SearchState.from_dict(data["state"])
    except (ValueError, KeyError, TypeError) as e:
        raise SycamError(f"cannot resume from {path}: the file is not a sycam-dsl checkpoint ({e})") from e
    differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differ:
        raise SycamError(f"cannot resume from {path}: it was written with different {', '.join(differ)}; "
                         f"use the same settings, or another output folder for a new search")
    return state
