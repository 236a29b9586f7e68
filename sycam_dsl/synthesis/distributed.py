"""Image-sharded work on a Ray cluster: the terminals and the scoring of candidates on workers, the
oracle in the driver.

The ``N`` images are split into ``W`` contiguous shards. Worker ``w`` (a Ray actor, ``ShardWorker``)
loads the model once and holds its shard's images, targets and masks, its terminals (computed on
demand, through the terminal store, when first read: ``build_problem``) and its Deletion /
Insertion memo; it scores candidates, sent as s-expressions, on positions of its shard.

In the driver, ``ShardPool`` maps each image to its worker and position and asks the workers in
parallel; ``RayScorer`` (a ``LocalScorer`` whose ``score`` goes to the pool) splits each level
chunk by shard and puts the per-image scores back in chunk order, so the oracle, early stopping
included, sees what it would see in one process; the driver's own terminal source asks the pool
for the values it reads itself (the equivalence subset, the final tables). Each value is computed
once, by the worker that holds the image.

Ray is an optional dependency (``pip install 'sycam-dsl[distributed]'``), imported when a pool starts.

A local Ray cluster started for the run is shut down when the run ends, also on Ctrl-C, SIGTERM and
SIGHUP (the command line turns both into an interrupt). ``kill -9`` of the driver cannot be caught:
Ray's own helper processes (``DashboardAgent``, ``RuntimeEnvAgent``, raylet) then outlive it until
Ray notices the driver is gone; ``ray stop`` ends them at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..allocator import keep_freed_memory
from ..cam.compute import TerminalInfo
from ..errors import SycamError
from ..evaluate.terminal_values import Terminals
from ..lang.ast import Node, to_sexpr
from ..lang.sexpr import parse_expr
from ..lang.terminals import terminal_types
from ..lang.types import Type
from ..metrics.objectives import Objective
from ..models.loaded import LoadedModel
from ..models.targets import Target
from ..util.progress import progress as progress_bar
from .on_demand import TerminalSource
from .problem import Data, Problem
from .scorer import LocalScorer, score_part
from .subsets import Subsets

INSTALL = "pip install 'sycam-dsl[distributed]'"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterOptions:
    """Where the heavy work runs. ``workers``: Ray actors, each holding a shard of the images (0: this
    process only); ``address``: an existing Ray cluster (``ray start --head`` gives it; None: a local
    one started for the run, unless this process already joined one); ``worker_cpus`` /
    ``worker_gpus``: each worker's Ray resource request (``--worker-cpus``, ``--worker-gpus``)."""

    workers: int = 0
    address: str | None = None
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise SycamError(f"workers must be 0 or more, got {self.workers}")
        if self.worker_cpus <= 0 or self.worker_gpus < 0:
            raise SycamError("worker_cpus must be positive and worker_gpus 0 or more")
        if self.address is not None and not self.on:
            raise SycamError(f"a Ray address ({self.address}) without workers would be ignored: give the number of "
                             f"workers to run there (--workers N), or drop the address")

    @property
    def on(self) -> bool:
        return self.workers > 0


def import_ray() -> Any:
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SycamError(f"--workers needs Ray, which is not installed: {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs besides its images: the model, the target layer, the terminals the
    search and the baselines read, the metric and the start symbol's type, and ``build_problem``'s
    settings."""

    model: LoadedModel
    layer: str | None
    names: tuple[str, ...]
    metric: Objective
    start: Type
    settings: Mapping[str, Any]


class ShardWorker:
    """One shard's images, terminals and memo (run as a Ray actor; a plain object in tests).

    ``images`` ``[n, 3, H, W]``, ``targets`` ``[n]`` or a ``Target`` of these images, ``masks`` ``[n, H, W]``
    or None."""

    def __init__(self, spec: WorkerSpec, images: torch.Tensor, targets: torch.Tensor | Target | None,
                 masks: torch.Tensor | None, threads: int | None = None) -> None:
        from .build import build_problem  # the same path as one process

        keep_freed_memory()  # a process of its own: as the CLI does (see allocator)
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        data = Data(images, [str(i) for i in range(images.shape[0])], masks=masks)
        device = str(spec.model.device)
        self.problem, self.info = build_problem(spec.model, spec.layer, data, list(spec.names), targets, device,
                                                progress=False, on_demand=True, **spec.settings)
        self._parts: dict[tuple[int, ...], Problem] = {}

    def up_front(self, names: Sequence[str]) -> tuple[dict[str, torch.Tensor], TerminalInfo]:
        """The shard's terminals ``names`` computed up front (the gradient pass's) and its
        ``TerminalInfo``, on the CPU."""
        info = self.info
        cpu = {f: getattr(info, f).cpu() for f in ("acts", "logits", "targets", "z_c", "y_c")}
        return {n: self.problem.terminals[n].cpu() for n in names}, replace(info, **cpu)

    def part(self, positions: Sequence[int]) -> Problem:
        """The problem of the shard's images at ``positions`` (kept: the search asks for the same chunks)."""
        key = tuple(positions)
        if key not in self._parts:
            self._parts[key] = self.problem.subset(torch.as_tensor(key, dtype=torch.long))
        return self._parts[key]

    def terminals(self, names: Sequence[str], positions: Sequence[int]) -> dict[str, torch.Tensor]:
        """Terminals ``names`` of the images at ``positions`` (computed here when first read), on the CPU."""
        part = self.part(positions)
        return {n: part.terminals[n].cpu() for n in names}

    def score(self, expressions: Sequence[str], positions: Sequence[int]) -> list[torch.Tensor | None]:
        """``score_part`` of the candidates (s-expressions) on the images at ``positions``."""
        types = terminal_types()  # candidates and baselines come as s-expressions over any terminal
        nodes = [parse_expr(e, types, source="<candidate>") for e in expressions]
        return score_part(self.part(positions), nodes, self.spec.metric, self.spec.start)

    def ping(self) -> int:
        return self.problem.n


def shards(n: int, workers: int) -> list[range]:
    """``workers`` contiguous shards of ``n`` images, sizes differing by at most one (none empty)."""
    w = max(1, min(workers, n))
    bounds = [n * i // w for i in range(w + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(w)]


#: Images per worker in one round of a terminal request (the progress moves after each round).
ROUND_IMAGES = 16

#: Times one call may find its worker dead (and start a new one) before the run fails.
MAX_RESTARTS_PER_CALL = 3


class ShardPool:
    """The workers of one run and where each image lives: ``owner[i] = (worker, position)``.

    ``workers`` are Ray actor handles (or, in tests, plain ``ShardWorker`` objects, called directly).
    ``restart(w)`` starts a new worker for shard ``w``: a call that finds its worker dead (killed, out
    of memory) starts one and sends the call again; the new worker computes what it needs again
    (from the terminal store when it has it). ``restarts`` counts them."""

    def __init__(self, workers: list[Any], parts: list[range], remote: bool = True,
                 restart: Callable[[int], Any] | None = None, target: Target | None = None) -> None:
        self.workers, self.parts, self.remote, self.restart = workers, parts, remote, restart
        self.target = target  # a target of another kind than the class: bound again here, over all images
        self.owner = [(w, i - part.start) for w, part in enumerate(parts) for i in part]
        self.restarts = 0

    @property
    def n(self) -> int:
        return len(self.owner)

    def _split(self, index: torch.Tensor) -> dict[int, tuple[list[int], list[int]]]:
        """worker -> (places in ``index``, positions in its shard) of the images at ``index``."""
        out: dict[int, tuple[list[int], list[int]]] = {}
        for place, i in enumerate(index.tolist()):
            w, pos = self.owner[i]
            places, positions = out.setdefault(w, ([], []))
            places.append(place)
            positions.append(pos)
        return out

    def _call(self, method: str, calls: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        """``method(*args)`` on each worker in ``calls``, in parallel on Ray; worker -> its answer."""
        if not self.remote:
            return {w: getattr(self.workers[w], method)(*args) for w, args in calls.items()}
        ray = import_ray()
        refs = {w: getattr(self.workers[w], method).remote(*args) for w, args in calls.items()}
        out = {}
        for w, ref in refs.items():  # all are running; wait for each in turn
            for attempt in range(MAX_RESTARTS_PER_CALL + 1):
                try:
                    out[w] = ray.get(ref)
                    break
                except ray.exceptions.RayActorError as e:
                    if self.restart is None or attempt == MAX_RESTARTS_PER_CALL:
                        raise SycamError(f"Ray worker {w} (images {self.parts[w].start}-{self.parts[w].stop - 1}) "
                                         f"died and could not be replaced: {str(e).splitlines()[0]}") from e
                    log.warning("Ray worker %d died; starting a new one for its images", w)
                    self.workers[w] = self.restart(w)
                    self.restarts += 1
                    ref = getattr(self.workers[w], method).remote(*calls[w])
        return out

    def ping(self) -> None:
        """Wait until every worker is up (has its shard's gradient pass)."""
        self._call("ping", {w: () for w in range(len(self.workers))})

    def up_front(self, names: list[str], device: str | torch.device = "cpu") -> tuple[Terminals, TerminalInfo]:
        """The terminals ``names`` the workers computed up front, and their ``TerminalInfo``, for all
        ``N`` images (shards are contiguous: concatenated in order), on ``device``."""
        got = self._call("up_front", {w: (names,) for w in range(len(self.workers))})
        parts = [got[w] for w in range(len(self.workers))]
        infos = [info for _, info in parts]

        def cat(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(tensors).to(device)

        terms = Terminals({n: cat([t[n] for t, _ in parts]) for n in names})
        info = replace(infos[0], **{f: cat([getattr(i, f) for i in infos])
                                    for f in ("acts", "logits", "targets", "z_c", "y_c")},
                       masked_logits=None, ablated_logits=None, stored=sum(i.stored for i in infos))
        if self.target is not None and not self.target.is_class:
            # each worker's ids index its shard's state (a segmentation mask, say): the driver's, all images'
            bound, ids = self.target.bind(info.logits)
            info = replace(info, target=bound, targets=ids)
        return terms, info

    def terminals(self, names: list[str], index: torch.Tensor,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
        """Terminals ``names`` of the images at ``index`` (``[m]``, positions among all ``N``), each
        from its worker: name -> ``[m, ...]``. Asked in rounds of ``ROUND_IMAGES`` images per worker,
        all workers at once, so that ``progress(done, m)`` follows the work after each round."""
        split = self._split(index)
        out: dict[str, torch.Tensor] = {}
        done, rounds = 0, max(-(-len(positions) // ROUND_IMAGES) for _, positions in split.values())
        for r in range(rounds):
            part = {w: (places[r * ROUND_IMAGES:(r + 1) * ROUND_IMAGES],
                        positions[r * ROUND_IMAGES:(r + 1) * ROUND_IMAGES]) for w, (places, positions) in split.items()}
            part = {w: pp for w, pp in part.items() if pp[0]}
            got = self._call("terminals", {w: (names, positions) for w, (_, positions) in part.items()})
            for w, (places, _) in part.items():
                for name, v in got[w].items():
                    if name not in out:
                        out[name] = torch.empty((len(index), *v.shape[1:]), dtype=v.dtype)
                    out[name][torch.as_tensor(places)] = v
                done += len(places)
            if progress is not None:
                progress(done, len(index))
        return out

    def score(self, expressions: list[str], index: torch.Tensor) -> list[torch.Tensor | None]:
        """Per-image scores ``[m]`` (``[m, M]`` for ``Objectives``; float64) of each candidate on the images
        at ``index``, in that order; None where a worker found its saliency not finite."""
        split = self._split(index)
        got = self._call("score", {w: (expressions, positions) for w, (_, positions) in split.items()})
        out: list[torch.Tensor | None] = []
        for c in range(len(expressions)):
            if any(got[w][c] is None for w in split):
                out.append(None)
                continue
            shape = next(got[w][c].shape[1:] for w in split)  # [M] for Objectives
            scores = torch.empty((len(index), *shape), dtype=torch.float64)
            for w, (places, _) in split.items():
                scores[torch.as_tensor(places)] = got[w][c]
            out.append(scores)
        return out


class RayScorer(LocalScorer):
    """A ``LocalScorer`` (its chunks and bounds are the driver's) whose candidates are scored by the
    pool's workers, each on its images of the chunk."""

    def __init__(self, pool: ShardPool, problem: Problem, subsets: Subsets, metric: Objective, start: Type,
                 image_chunk: int | None) -> None:
        super().__init__(problem, subsets, metric, start, image_chunk)
        self.pool = pool

    @classmethod
    def factory(cls, pool: ShardPool):  # -> ScorerFactory
        """A ``ScorerFactory`` for ``Search``: scorers on ``pool``."""
        def make(problem: Problem, subsets: Subsets, metric: Objective, start: Type,
                 image_chunk: int | None) -> RayScorer:
            return cls(pool, problem, subsets, metric, start, image_chunk)
        return make

    def score(self, nodes: list[Node], level: int, chunk: int) -> list[torch.Tensor | None]:
        part = self.part(level, chunk)
        return self.pool.score([to_sexpr(n) for n in nodes], part.index)


#: Seconds to wait for a Ray cluster's address to accept a connection (Ray itself retries for minutes).
CONNECT_TIMEOUT_S = 5.0


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line and within ``timeout`` seconds, a ``host:port`` (or ``ray://host:port``)
    Ray address that accepts no connection; ``auto`` and ``local`` are left to Ray."""
    import socket

    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise SycamError(f"no Ray cluster answers at {address} within {timeout:g} s ({e.strerror or e}); start one "
                         f"there with ray start --head, or leave the address out for a local one") from None


def check_resources(cluster: ClusterOptions, resources: Mapping[str, float], where: str = "the Ray cluster") -> None:
    """Refuse, in one line, workers the cluster can never place (Ray would wait for them forever)."""
    for name, option, each in (("GPU", "--worker-gpus", cluster.worker_gpus),
                               ("CPU", "--worker-cpus", cluster.worker_cpus)):
        have, need = float(resources.get(name, 0.0)), cluster.workers * each
        if need > have:
            raise SycamError(f"{cluster.workers} worker(s) x {each:g} {name}(s) ({option}) need {need:g} {name}(s) "
                             f"but {where} has {have:g}; lower {option}"
                             + (" (0: no GPU)" if name == "GPU" else "") + ", --workers, or add resources")


def shard_targets(targets: torch.Tensor | Target | None, part: range) -> torch.Tensor | Target | None:
    """What shard ``part`` explains: its rows of class indices ``[N]``, or the target for its images."""
    if isinstance(targets, Target):
        return targets.select(part).cpu()
    return None if targets is None else targets.cpu()[part.start:part.stop]


@contextmanager
def shard_pool(cluster: ClusterOptions, spec: WorkerSpec, images: torch.Tensor,
               targets: torch.Tensor | Target | None, masks: torch.Tensor | None) -> Iterator[ShardPool]:
    """Start ``cluster.workers`` workers on Ray, each with its shard of ``images`` ``[N, 3, H, W]``
    (``targets`` ``[N]`` or a ``models.targets.Target``, None: the predicted classes; ``masks``
    ``[N, H, W]``), wait until all are up (each has run its shard's gradient pass), and stop them on exit
    (and Ray too, when this started it)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if cluster.address is not None:
            check_reachable(cluster.address)
            kwargs["address"] = cluster.address
        else:
            kwargs["num_cpus"] = max(1, int(cluster.workers * cluster.worker_cpus + 0.999))
        ray.init(**kwargs)
        started = True
    try:
        check_resources(cluster, ray.cluster_resources())
    except SycamError:
        if started:
            ray.shutdown()
        raise
    actor = ray.remote(num_cpus=cluster.worker_cpus, num_gpus=cluster.worker_gpus)(ShardWorker)
    parts = shards(images.shape[0], cluster.workers)
    cpu, spec_ref = images.cpu(), ray.put(spec)

    def start(w: int) -> Any:
        p = parts[w]
        return actor.remote(spec_ref, cpu[p.start:p.stop], shard_targets(targets, p),
                            None if masks is None else masks.cpu()[p.start:p.stop], max(1, int(cluster.worker_cpus)))

    pool = ShardPool([start(w) for w in range(len(parts))], parts, restart=start,
                     target=targets if isinstance(targets, Target) else None)
    try:
        pool.ping()
        yield pool
    finally:
        for w in pool.workers:
            ray.kill(w)
        if started:
            ray.shutdown()


def use_pool(source: TerminalSource, pool: ShardPool, eager: bool, show: bool) -> None:
    """Let ``source`` compute what it lacks on ``pool``'s workers, its progress on the search's status
    line (``source.busy``); ``eager``: every missing terminal of every image now, with a progress bar."""
    def compute(names: list[str], index: torch.Tensor) -> Mapping[str, torch.Tensor]:
        def progress(done: int, total: int) -> None:
            if source.busy is not None:
                source.busy(f"computing {'+'.join(names)} on {len(pool.workers)} workers: {done}/{total} image(s)")
            if bar is not None:
                bar.update(done - seen[0])
                seen[0] = done

        seen = [0]
        bar = progress_bar(len(index), f"terminals: {'+'.join(names)} on {len(pool.workers)} workers",
                           show) if source.busy is None else None
        try:
            return pool.terminals(names, index, progress)
        finally:
            if bar is not None:
                bar.close()

    source.compute_with(compute)
    if eager:
        for name in source.on_demand:
            source.ensure(name, torch.arange(source.n))
