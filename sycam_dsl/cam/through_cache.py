"""Terminals through the disk cache when it can hold them, computed directly when it cannot.

``cache.compute_terminals_cached`` keys its entries without the precision and runs every loop at one
numeric ``chunk_size``, so here: terminals at bf16 / fp16 skip the cache (a float32 run must never
load them, nor they a float32 entry), and ``chunk_size="auto"`` with the cache becomes one number, the
gradient pass's ``auto_batch_size`` (the loop that needs the most memory per image), for the cache's
check pass and every loop. Without the cache, ``"auto"`` lets each loop pick its own size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..evaluate.terminals import Terminals
from ..models.batching import BatchSize
from ..models.devices import resolve_device
from ..models.loaded import LoadedModel
from ..models.precision import DEFAULT_PRECISION, check_precision
from ..util.modes import eval_mode
from .cache import compute_terminals_cached
from .terminals import DEFAULT_CHUNK_SIZE, TerminalInfo, check_names, compute_terminals, gradient_chunk, prepare_model

log = logging.getLogger(__name__)


def terminals_through_cache(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                            targets: torch.Tensor | None, names: Sequence[str], *, device: str | torch.device = "cpu",
                            chunk_size: BatchSize = DEFAULT_CHUNK_SIZE, progress: bool = True,
                            ablation: str = "auto", precision: str = DEFAULT_PRECISION,
                            cache_dir: str | Path | None = None,
                            use_cache: bool = True) -> tuple[Terminals, TerminalInfo]:
    """``compute_terminals`` (arguments as there), through the disk cache in ``cache_dir`` when
    ``use_cache`` and the precision is fp32 (see the module doc)."""
    check_precision(precision)
    if not use_cache or precision != DEFAULT_PRECISION:
        if use_cache:
            log.info("terminals at %s are not cached (the cache holds float32 terminals only)", precision)
        return compute_terminals(model, layer, images, targets, names, device=device, chunk_size=chunk_size,
                                 progress=progress, ablation=ablation, precision=precision)
    if isinstance(chunk_size, int):
        return compute_terminals_cached(model, layer, images, targets, names, device=device, chunk_size=chunk_size,
                                        progress=progress, ablation=ablation, cache_dir=cache_dir)
    checked = check_names(names)
    dev = resolve_device(device)
    module, access, x = prepare_model(model, layer, images, checked, dev)
    with eval_mode(module):
        chunk = gradient_chunk(access, x, checked)
    terms, info = compute_terminals_cached(module, access.name, images, targets, checked, device=dev,
                                           chunk_size=chunk, progress=progress, ablation=ablation,
                                           cache_dir=cache_dir)
    if not info.batch_sizes:
        info.batch_sizes = {"terminals": chunk}
    return terms, info
