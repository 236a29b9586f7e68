"""The settings of one search: its budget (``Budget``), its configuration (``SearchConfig``) and the
search options of ``synthesize`` (``SearchOptions``) with their defaults. The run's data and output
options are in ``run.options``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..baselines import SEARCH_BASELINES
from ..errors import SycamError
from ..metrics.memo import DEFAULT_MAX_MB
from ..metrics.objectives import Objective
from .guide import STRATEGIES
from .incumbent import parse_untils
from .oracle import SMALL_LEVEL
from .split import DEFAULT_TEST_SPLIT, check_fraction
from .subsets import DEFAULT_EQUIVALENCE_SIZE, DEFAULT_LEVEL_SIZES

DEFAULT_MAX_SIZE = 12
#: The time budget when none is given: ``SearchConfig``'s, ``synthesize``'s and ``synth --time``'s.
DEFAULT_SECONDS = 600.0
DEFAULT_CHECKPOINT_SECONDS = 30.0
DEFAULT_BATCH = 32
DEFAULT_IMAGE_CHUNK = 25
#: A class needs this many images to get a search of its own (one image cannot show "half the images").
DEFAULT_MIN_CLASS_IMAGES = 2


@dataclass(frozen=True)
class Budget:
    """When to stop: after ``seconds`` of search time (baselines included, over every run of a
    resumed search; the search ends at most one image chunk's scoring later, even with no
    candidate scored) and/or ``candidates`` enumerated candidates (None: no bound). The grammar's
    end (up to ``max_size``) always stops the search.

    ``whole_run``: ``seconds`` bound this run as a whole (``synth --time``): ``synthesize`` gives the
    search what is left once the time already spent and the estimated cost of what comes after it
    (the baselines' check, the final tables, the sanity check, the files) are set aside; a resumed
    search then counts this run's time only.

    ``sets_aside``: whether the search ends early by the estimated time of the terminals on demand that
    the baselines' check will need (``Search._reserve``); ``synthesize`` turns it off when it gives the
    search the floor of a budget too small for the work after it. The floor is then the search's own:
    no estimate eats or extends it, and the terminals the search computes on demand do not count
    against it (their measured seconds come on top; the check and the tables need most of them)."""

    seconds: float | None = None
    candidates: int | None = None
    whole_run: bool = False
    sets_aside: bool = True

    def __post_init__(self) -> None:
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise SycamError(f"a time budget must be a finite positive number of seconds, got {self.seconds}")
        if self.candidates is not None and self.candidates < 1:
            raise SycamError(f"a candidate budget must be at least 1, got {self.candidates}")


#: How ``synthesize`` computes the expensive terminals (``SearchOptions.terminals``).
TERMINAL_MODES = ("on-demand", "eager")


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """How ``synthesize`` searches: the oracle's image subsets (``seed``, ``level_sizes`` smallest
    first with None for all, ``equivalence_size``), the largest expression ``max_size``, with
    ``per_class`` the fewest images a class needs for a search of its own (``min_class_images``), and
    ``until``: stop at the first incumbent whose ``I1`` mean beats a threshold, a number or a baseline
    name with an optional margin in the metric's better direction (``0.40``, ``"ScoreCAM"``,
    ``"ScoreCAM+0.005"``; see ``incumbent.Until``; None: search the whole budget); over several metrics one
    threshold per metric, comma-separated (``"0.1,ScoreCAM"``): stop once one member of the front beats
    every threshold.
    ``test_split``: the share of the images held out before any search and scored only in the final
    tables (seeded, stratified by class; 0: off; see ``split.py``). ``terminals``: ``on-demand``
    computes ``cic`` and ``abl`` per image when the search first reads them (``on_demand.py``),
    ``eager`` all terminals before the search (same result, later first candidate). ``strategy``:
    ``size`` enumerates smallest first; ``guided`` learns production costs from partial solutions while
    it searches (``guide.py``; no resume yet).

    The evaluation engine (none of it changes the result): ``memo_mb`` MB of memoized Deletion /
    Insertion forward passes (0: off), ``candidate_batch`` candidates scored together on ``I3``,
    levels scored ``image_chunk`` images at a time with ``early_stop`` of hopeless candidates."""

    seed: int = 0
    level_sizes: Sequence[int | None] = DEFAULT_LEVEL_SIZES
    equivalence_size: int = DEFAULT_EQUIVALENCE_SIZE
    max_size: int = DEFAULT_MAX_SIZE
    min_class_images: int = DEFAULT_MIN_CLASS_IMAGES
    memo_mb: float = DEFAULT_MAX_MB
    candidate_batch: int = DEFAULT_BATCH
    image_chunk: int | None = DEFAULT_IMAGE_CHUNK
    early_stop: bool = True
    until: float | str | None = None
    test_split: float = DEFAULT_TEST_SPLIT
    terminals: str = "on-demand"
    strategy: str = "size"

    def __post_init__(self) -> None:
        # bad values are refused before any work (terminals can take minutes)
        parse_untils(self.until)
        check_fraction(self.test_split)
        if self.terminals not in TERMINAL_MODES:
            raise SycamError(f"terminals must be one of {', '.join(TERMINAL_MODES)}, got {self.terminals!r}")
        if self.strategy not in STRATEGIES:
            raise SycamError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


@dataclass(frozen=True)
class SearchConfig(SearchOptions):
    """Settings of one search: the ``SearchOptions`` (keywords) and the ``metric`` to optimize, which
    carries its options (e.g. ``steps``; ``Objectives``: several metrics, whose Pareto front the search
    keeps, see ``front``), the ``budget``, the ``baselines`` scored at the end and how
    often a checkpoint is written. ``baseline_check``: at the end, the best scored baseline the
    grammar expresses replaces a result with a worse ``I1`` mean (see ``incumbent``); ``small_level``:
    levels with fewer images are judged by the mean with a margin (see ``oracle``; 0: always the
    half-the-images rule); ``held_out``: the test split's image digests, for the checkpoint.

    None of the engine's settings change which candidate wins (``candidate_batch=1,
    early_stop=False`` is the plain oracle)."""

    metric: Objective
    budget: Budget = Budget(seconds=DEFAULT_SECONDS)
    baselines: tuple[str, ...] = SEARCH_BASELINES
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS
    baseline_check: bool = True
    small_level: int = SMALL_LEVEL
    #: digests (``cam.store.image_digests``) of the test split's images, which the search never sees:
    #: a checkpoint records them, so that a resume with other held-out images is refused
    held_out: tuple[str, ...] = ()
