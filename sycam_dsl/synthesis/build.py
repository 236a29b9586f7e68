"""Building a search's ``Problem`` from a model and images: the terminals (through the terminal
store; ``cic`` and ``abl`` up front or on demand, computed here or by a ``distributed`` pool's
workers) and the metrics' inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..cam.compute import DEFAULT_CHUNK_SIZE, TerminalInfo
from ..cam.reshape import Reshape
from ..evaluate.terminal_values import Terminals
from ..metrics.memo import DEFAULT_MAX_MB, ScoreCache
from ..metrics.registry import MetricInputs
from ..metrics.scoring import DEFAULT_BATCH_SIZE
from ..models import LoadedModel
from ..models.precision import DEFAULT_PRECISION
from ..models.runtime import RuntimeSpec
from ..models.targets import Target
from .on_demand import EXPENSIVE, OnDemandTerminals, TerminalSource
from .problem import Data, Problem

#: ``names -> (terminals, info)`` of every image: the terminals computed up front, computed elsewhere.
UpFrontFn = Callable[[list[str]], "tuple[Terminals, TerminalInfo]"]


@dataclass(frozen=True)
class ProblemOptions:
    """How ``build_problem`` computes the terminals and the metrics' inputs: through the terminal
    store in ``cache_dir`` (bounded to ``cache_size`` bytes) unless not ``use_cache``; ``batch_size`` /
    ``chunk_size`` per forward pass of the metrics / terminals, or ``"auto"``; ``memo_mb`` the size of
    the cache of Deletion / Insertion forward passes shared by every subset (0: none); ``precision``
    of the forward passes of ``cic``, ``abl`` and the metrics; ``runtime`` where the forward-only passes
    run (None: torch); ``on_demand``: only the gradient pass runs now, ``cic`` and ``abl`` are computed
    per image when first read (``on_demand.py``); ``progress`` bars on stderr; ``reshape``: how the
    target layer's output is read as channel maps (``cam.reshape``)."""

    batch_size: int | str = DEFAULT_BATCH_SIZE
    chunk_size: int | str = DEFAULT_CHUNK_SIZE
    cache_dir: str | Path | None = None
    use_cache: bool = True
    progress: bool = True
    memo_mb: float = DEFAULT_MAX_MB
    cache_size: int | None = None
    on_demand: bool = False
    precision: str = DEFAULT_PRECISION
    runtime: RuntimeSpec | None = None
    reshape: Reshape = "auto"


def _given(targets: torch.Tensor | Target | None, fixed: torch.Tensor, index: torch.Tensor) -> Any:
    """What the terminals of the images at ``index`` are computed for later (on demand): ``targets``' part
    for them, or the classes ``fixed`` up front (None when the predicted classes were asked)."""
    if isinstance(targets, Target):
        return targets.select(index.tolist())
    return None if targets is None else fixed[index]


def build_problem(model: LoadedModel, layer: str | None, data: Data, names: Sequence[str],
                  targets: torch.Tensor | Target | None = None, device: str = "cpu", *,
                  options: ProblemOptions | None = None, up_front: UpFrontFn | None = None,
                  **settings: Any) -> tuple[Problem, TerminalInfo]:
    """Compute the terminals ``names`` of ``data``'s images for ``targets`` (None: the predicted classes; a
    ``models.targets.Target``: what it scores) on ``device`` and wrap everything a search scores on into a
    ``Problem``; returns it with the ``TerminalInfo`` (the target layer's name, ``stored``: the images that came
    from the store). How: ``options`` (``ProblemOptions``), with ``settings``, its fields as keywords, over them
    (``use_cache=False``). With ``on_demand`` the ``cic`` and ``abl`` computed later are for the images they are
    read on, with the targets of the gradient pass (through the store too). ``up_front``: computes the terminals
    computed up front (given their names) instead of this process (a ``distributed`` pool's workers, for their
    shards)."""
    from functools import partial

    from ..cam.compute import compute_terminals
    from ..cam.store import model_digest

    o = replace(options or ProblemOptions(), **settings)
    if isinstance(targets, Target) and targets.is_class:  # the default: the predicted classes
        targets = None
    chunk_size, progress, precision, runtime, reshape = o.chunk_size, o.progress, o.precision, o.runtime, o.reshape
    names = list(dict.fromkeys(names))
    store = None
    if o.use_cache:
        from ..cam.store import TerminalStore, compute_terminals_stored
        store = TerminalStore(o.cache_dir, o.cache_size)
        runtime = store.runtime_spec(runtime)  # converted models beside the store, for the metrics too
        compute = partial(compute_terminals_stored, store=store)
    else:
        compute = compute_terminals  # type: ignore[assignment]
    now = [n for n in names if n not in EXPENSIVE] if o.on_demand else names
    if up_front is not None:
        terms, info = up_front(now or ["acts"])
    else:
        terms, info = compute(model, layer, data.images, targets, now or ["acts"], device=device,
                              chunk_size=chunk_size, progress=progress, precision=precision, runtime=runtime,
                              reshape=reshape)
    dev = terms.device
    key = f"{model_digest(model.module)[:16]} {info.layer}"
    if o.on_demand and len(now) < len(names):
        fixed = info.targets.detach().cpu()  # [N]: each image is explained for the class found up front

        def values(asked: list[str], index: torch.Tensor) -> dict[str, torch.Tensor]:
            # a bar of its own outside a search (the final tables); in one, the status line says it
            show = progress and source.busy is None
            # the targets asked for, as up front (the disk cache keys on them), unless a near tie
            # makes the predicted class of an image differ: then those of the gradient pass
            given = _given(targets, fixed, index)
            got, got_info = compute(model, info.layer, data.images[index], given, asked, device=device,
                                    chunk_size=chunk_size, progress=show, precision=precision, runtime=runtime,
                                    reshape=reshape)
            if targets is None and not torch.equal(got_info.targets.detach().cpu(), fixed[index]):
                got, _ = compute(model, info.layer, data.images[index], fixed[index], asked, device=device,
                                 chunk_size=chunk_size, progress=show, precision=precision, runtime=runtime,
                                 reshape=reshape)
            return dict(got)

        def stored(asked: list[str], index: torch.Tensor) -> int:
            from ..cam.store import stored_images

            assert store is not None
            given = _given(targets, fixed, index)
            return stored_images(model, info.layer, data.images[index], given,
                                 asked, device=device, precision=precision, store=store, runtime=runtime,
                                 reshape=reshape)

        known = {n: terms[n] for n in now} if now else {"acts": terms["acts"]}
        source = TerminalSource(names, known, values, stored=stored if store is not None else None)
        terms = OnDemandTerminals(source)
    inputs = MetricInputs(data.images.to(dev), info.targets.to(dev),
                          masks=None if data.masks is None else data.masks.to(dev), model=model.module,
                          device=dev, batch_size=o.batch_size, memo=ScoreCache(o.memo_mb) if o.memo_mb > 0 else None,
                          precision=precision, runtime=runtime, progress=progress, target=info.target)
    # a target of another kind than the class has no classes to stratify by: one stratum
    fallback = info.targets if info.target is None else torch.zeros_like(info.targets)
    classes = data.labels if data.labels is not None else fallback
    problem = Problem(terms, info.acts.to(dev), inputs, classes.detach().cpu().long(),
                      torch.arange(data.images.shape[0]), terminal_key=key,
                      terminal_batch_sizes=dict(info.batch_sizes))
    return problem, info
