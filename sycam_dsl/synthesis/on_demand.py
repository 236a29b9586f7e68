"""Terminals computed on demand: a search reads a terminal for the images of a level only when a
candidate that reads it is scored there.

The terminals of the expensive passes (``lang.terminals``: ``cic`` and ``mlogits`` from ScoreCAM's
masked images, ``abl`` from AblationCAM's ablated activations) cost ``K`` forward passes per image,
against one forward and backward pass for every other terminal. So the gradient pass runs for every
image up front (it gives the activations, the targets and the gradient terminals), and the
expensive terminals are computed per image when first read: the equivalence subset's when the
enumerator starts, ``I3``'s when the first candidate that reads them is scored on ``I3``, ``I2``'s
when one reaches ``I2``, and so on; what the final tables need comes last. Each value is computed
once, whichever view (level block, chunk, class, test split) asks.

``TerminalSource`` holds the values of all ``N`` images and what is computed; ``OnDemandTerminals``
is a ``Terminals`` view of some of its images that fills them in when read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ShapeError
from ..evaluate.terminal_values import Terminals, map_hw
from ..lang.terminals import expensive_groups, expensive_terminals

#: Terminals that cost ``K`` forward passes per image, computed on demand; the rest come with the
#: gradient pass, up front.
EXPENSIVE = expensive_terminals()

#: ``(names, index [m] long) -> name -> values [m, ...]`` for the images at ``index`` (positions in
#: the source's ``N`` images); may give more names than asked (a pass's terminals come together).
ComputeFn = Callable[[list[str], torch.Tensor], Mapping[str, torch.Tensor]]
#: ``(names, index [m] long) -> how many of those images a ``ComputeFn`` will read from the terminal
#: store rather than compute`` (for the status line).
StoredFn = Callable[[list[str], torch.Tensor], int]


@dataclass
class TerminalWork:
    """What a source has computed on demand: per terminal, images done and seconds spent."""

    images: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, names: Sequence[str], images: int, seconds: float) -> None:
        key = "+".join(names)
        self.images[key] = self.images.get(key, 0) + images
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


class TerminalSource:
    """The values of terminals ``names`` for ``n`` images: ``known`` (name -> ``[n, ...]``) from the
    start, the others from ``compute`` as they are read. ``groups`` lists terminals computed
    together (asking for one computes all of its group; default: each expensive pass's terminals,
    ``lang.terminals.expensive_groups``); ``busy`` is called with a short text while
    a computation runs (``computing cic of 10 image(s)``, or ``reading ... from the store`` when
    ``stored`` says that the images' values are in the terminal store) and with None after it (for a
    status line)."""

    def __init__(self, names: Sequence[str], known: Mapping[str, torch.Tensor], compute: ComputeFn,
                 groups: Sequence[Sequence[str]] | None = None, busy: Callable[[str | None], None] | None = None,
                 stored: StoredFn | None = None) -> None:
        if not known:
            raise ShapeError("an on-demand terminal source needs at least one terminal computed up front")
        self.names = list(dict.fromkeys(names))
        self.on_demand = [n for n in self.names if n not in known]
        self.values: dict[str, torch.Tensor] = dict(known)
        ref = next(iter(known.values()))
        self.n, self.k = int(ref.shape[0]), int(ref.shape[1])
        self.device, self.dtype = ref.device, ref.dtype
        self.have: dict[str, torch.Tensor] = {name: torch.ones(self.n, dtype=torch.bool) for name in known}
        self._compute = compute
        self._groups = {name: list(g) for g in (expensive_groups() if groups is None else groups) for name in g}
        self.busy = busy
        self.stored = stored
        self.work = TerminalWork()

    def compute_with(self, compute: ComputeFn) -> None:
        """Compute what is still missing with ``compute`` from now on (e.g. a ``distributed`` pool's)."""
        self._compute = compute

    def group(self, name: str) -> list[str]:
        """The terminals computed with ``name`` (those of them this source serves)."""
        return [g for g in self._groups.get(name, [name]) if g in self.names] or [name]

    def missing(self, name: str, index: torch.Tensor | None = None) -> torch.Tensor:
        """The positions among ``index`` (default: all) whose ``name`` is not computed yet, ``[m]`` long."""
        index = torch.arange(self.n) if index is None else index.detach().cpu().long()
        have = self.have.get(name)
        return index if have is None else index[~have[index]]

    def ensure(self, name: str, index: torch.Tensor) -> None:
        """Compute ``name`` (with its group) for the images at ``index`` that lack it."""
        if name not in self.names:
            raise ShapeError(f"terminal {name!r} is needed but was not asked for (have: {' '.join(self.names)})")
        missing = torch.unique(self.missing(name, index))
        if missing.numel() == 0:
            return
        names = self.group(name)
        if self.busy is not None:
            self.busy(self._busy_text(names, missing))
        t0 = time.perf_counter()
        try:
            got = self._compute(names, missing)
        finally:
            if self.busy is not None:
                self.busy(None)
        self.work.add(names, int(missing.numel()), time.perf_counter() - t0)
        for g, v in got.items():
            if g not in self.names:
                continue
            if g not in self.values:
                self.values[g] = torch.zeros((self.n, *v.shape[1:]), dtype=v.dtype, device=v.device)
                self.have[g] = torch.zeros(self.n, dtype=torch.bool)
            self.values[g][missing.to(v.device)] = v
            self.have[g][missing] = True
        if not bool(self.have.get(name, torch.zeros(1, dtype=torch.bool))[missing].all()):
            raise ShapeError(f"computing terminal {name!r} on demand gave no values for it")

    def _busy_text(self, names: list[str], missing: torch.Tensor) -> str:
        """What ``ensure`` does now: computing, or reading from the store, the values of ``missing``."""
        what, m = "+".join(names), int(missing.numel())
        stored = min(self.stored(names, missing), m) if self.stored is not None else 0
        if stored == m:
            return f"reading {what} of {m} image(s) from the store"
        return f"computing {what} of {m - stored} image(s)" + (f", reading {stored} from the store" if stored else "")

    def seconds_per_image(self, name: str) -> float | None:
        """Measured seconds per image of ``name``'s group (None before its first computation)."""
        key = "+".join(self.group(name))
        done = self.work.images.get(key, 0)
        return self.work.seconds[key] / done if done else None

    def remaining_seconds(self, names: Sequence[str], index: torch.Tensor | None = None) -> float:
        """An estimate of the seconds left to compute ``names`` for the images at ``index`` (default:
        all), at the rates measured so far (a group not computed yet counts 0)."""
        total, seen = 0.0, set()
        for name in names:
            key = "+".join(self.group(name))
            if name not in self.names or key in seen:
                continue
            seen.add(key)
            rate = self.seconds_per_image(name)
            total += (rate or 0.0) * int(self.missing(name, index).numel())
        return total

    def status(self) -> str:
        """E.g. ``cic 50/200`` per terminal computed on demand (images done of all), for the status
        line ('' when every terminal was computed up front)."""
        parts, seen = [], set()
        for name in self.on_demand:
            key = "+".join(self.group(name))
            if key not in seen:
                seen.add(key)
                parts.append(f"{self.group(name)[0]} {self.n - int(self.missing(name).numel())}/{self.n}")
        return ", ".join(parts)


class OnDemandTerminals(Terminals):
    """The terminals of the source's images at ``index`` (``[n]`` long), computed when first read.

    A ``Terminals`` in every use the search makes of it (reading, ``subset``, ``n``, ``k``...); a
    value read once is kept, since a view's images never change."""

    def __init__(self, source: TerminalSource, index: torch.Tensor | None = None) -> None:
        # no Terminals.__init__: the values are not there yet; they are checked as they come
        self._source = source
        self._index = torch.arange(source.n) if index is None else index.detach().cpu().long()
        self._values = {}

    @property
    def source(self) -> TerminalSource:
        return self._source

    def __getitem__(self, name: str) -> torch.Tensor:
        v = self._values.get(name)
        if v is None:
            self._source.ensure(name, self._index)
            full = self._source.values[name]
            v = full.index_select(0, self._index.to(full.device))
            self._values[name] = v
        return v

    def __iter__(self) -> Iterator[str]:
        return iter(self._source.names)

    def __len__(self) -> int:
        return len(self._source.names)

    def __contains__(self, name: object) -> bool:
        return name in self._source.names

    @property
    def n(self) -> int:
        return int(self._index.numel())

    @property
    def k(self) -> int:
        return self._source.k

    @property
    def hw(self) -> tuple[int, int] | None:
        return map_hw(self._source.values.values())

    @property
    def device(self) -> torch.device:
        return self._source.device

    @property
    def dtype(self) -> torch.dtype:
        return self._source.dtype

    def subset(self, index: Sequence[int] | torch.Tensor) -> OnDemandTerminals:
        idx = torch.as_tensor(index, dtype=torch.long).detach().cpu()
        return OnDemandTerminals(self._source, self._index[idx])

    def to(self, device: str | torch.device) -> Terminals:
        return Terminals({n: self[n].to(device) for n in self})

    def check_finite(self) -> None:
        Terminals({n: self[n] for n in self}).check_finite()

    def remaining_seconds(self, names: Sequence[str]) -> float:
        """The source's estimate of the seconds left to compute ``names`` for this view's images."""
        return self._source.remaining_seconds(names, self._index)


def terminal_status(terminals: Terminals) -> str:
    """The on-demand work of ``terminals``'s source for a status line ('' for terminals computed up front)."""
    return terminals.source.status() if isinstance(terminals, OnDemandTerminals) else ""
