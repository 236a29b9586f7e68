"""How many images (or rows) go through the model per forward pass: ``--batch-size auto``.

``auto_batch_size(run, sample, device)`` picks a batch size for a function that runs one batch
(``run(batch)``, e.g. the model under ``forward_precision``), given one input ``sample`` ``[1, ...]``:

* on CUDA, the largest batch that fits: a probe at two batch sizes measures the peak memory per item
  and the fixed cost (``torch.cuda.max_memory_allocated``), and ``batch_from_memory`` divides the
  free memory (``torch.cuda.mem_get_info`` plus what torch's allocator holds unused) by it, with
  headroom; the chosen size is run once, halved while it runs out of memory;
* on the CPU (and MPS), where throughput peaks long before memory runs out, a cache heuristic from
  hooks on one pass of one item (``footprint``): the largest batch whose largest layer (its input
  and output) fits in half the last-level cache (``host_batch_bytes``; at least ``MIN_HOST_BATCH``),
  with a backward pass the batch whose outputs, all kept, fill ``HOST_BACKWARD_BYTES``; and never
  more than a quarter of the available memory holds. It is deterministic, so a rerun picks the same
  size and gives the same bits (a throughput probe on a shared machine would not).

Either way the result is at most ``cap`` (the rows there are to run, say) and at least 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError

log = logging.getLogger(__name__)

#: ``batch_size`` / ``chunk_size`` value that asks for ``auto_batch_size``.
AUTO = "auto"
#: The largest batch ``auto`` picks.
MAX_AUTO_BATCH = 4096
#: Share of the free accelerator memory a batch may use; the rest covers fragmentation and what the
#: probe does not see (masks built beside the batch, the allocator's rounding).
MEMORY_HEADROOM = 0.8
#: The last-level cache assumed where the system does not say (Linux sysfs does).
DEFAULT_CACHE_BYTES = 32 * 2**20
#: The smallest batch ``auto`` picks on the CPU when memory allows: below it, weights are read more
#: often than activations for large models.
MIN_HOST_BATCH = 4
#: What a CPU batch with a backward pass may keep for it (every layer's output).
HOST_BACKWARD_BYTES = 256 * 2**20
#: Share of the host's available memory the activations of a CPU batch may use at most.
HOST_MEMORY_SHARE = 0.25
#: Bytes per item, in inputs, assumed for a module whose activations cannot be counted.
FALLBACK_FACTOR = 32

BatchSize = int | str


def check_batch_size(value: object, what: str = "batch_size") -> BatchSize:
    """``value`` when it is a positive int or ``"auto"``; else a one-line ``ModelError``."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} must be a positive integer or 'auto', got {value!r}")
    return value


def batch_from_memory(free_bytes: int, fixed_bytes: int, per_item_bytes: int, *,
                      headroom: float = MEMORY_HEADROOM, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch ``b`` with ``fixed_bytes + b * per_item_bytes <= headroom * free_bytes``,
    within ``[1, cap]`` (1 when not even one item fits: the forward pass will say so)."""
    budget = headroom * free_bytes - fixed_bytes
    if per_item_bytes <= 0:
        return max(1, cap)
    return max(1, min(cap, math.floor(budget / per_item_bytes)))


def _batch_of(sample: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` copies of ``sample`` ``[1, ...]``, in its memory format."""
    return sample.expand(size, *sample.shape[1:]).clone()


def _cuda_auto(run: Callable[[torch.Tensor], object], sample: torch.Tensor, device: torch.device, cap: int,
               extra_inputs: int) -> int:
    def peak(size: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run(_batch_of(sample, size))
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    small, large = 1, min(cap, 4)
    p_small = peak(small)
    p_large = peak(large) if large > small else p_small
    per_item = max(1, (p_large - p_small) // max(1, large - small)) if large > small else max(1, p_small)
    fixed = max(0, p_small - small * per_item)
    per_item += extra_inputs * sample.numel() * sample.element_size()  # built beside the batch (masks, copies)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached, reusable
    size = batch_from_memory(free, fixed, per_item, cap=cap)
    while True:
        try:
            run(_batch_of(sample, size))
            torch.cuda.synchronize(device)
            return size
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            torch.cuda.empty_cache()


def available_host_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _tensors(value: object) -> list[torch.Tensor]:
    items = value if isinstance(value, (tuple, list)) else [value]
    return [t for t in items if isinstance(t, torch.Tensor)]


@dataclass(frozen=True)
class Footprint:
    """Memory per item of one pass, from the tensors the leaf modules take and give: ``largest`` the
    largest input plus output of one module (what an inference pass holds at once, about), ``total``
    every output (what autograd keeps for a backward pass; an upper bound for any pass)."""

    largest: int
    total: int


def footprint(module: nn.Module, run: Callable[[torch.Tensor], object], sample: torch.Tensor) -> Footprint:
    """The ``Footprint`` of ``run(sample)`` for one item, counted by forward hooks on the leaf modules of
    ``module`` (the model ``run`` runs); ``FALLBACK_FACTOR`` times the input for a module that takes no
    hooks (TorchScript) or has none."""
    largest, total = 0, 0

    def count(m: nn.Module, inputs: object, out: object) -> None:
        nonlocal largest, total
        given = sum(_nbytes(t) for t in _tensors(out))
        taken = sum(_nbytes(t) for t in _tensors(inputs))
        largest, total = max(largest, taken + given), total + given

    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    handles = []
    try:
        for m in leaves:
            handles.append(m.register_forward_hook(count))
        run(sample)
    except (RuntimeError, AttributeError) as e:  # a ScriptModule runs no Python hooks
        if handles and not isinstance(e, AttributeError) and "hook" not in str(e):
            raise
        largest = total = 0
    finally:
        for h in handles:
            h.remove()
    base = _nbytes(sample)
    if total == 0:
        return Footprint(FALLBACK_FACTOR * base, FALLBACK_FACTOR * base)
    return Footprint(largest + base, total + base)


def cache_bytes() -> int:
    """The CPU's last-level cache in bytes (Linux sysfs), ``DEFAULT_CACHE_BYTES`` when unknown."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = int(text[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[text[-1]] if text[-1] in "KMG" else int(text)
        except (OSError, ValueError, KeyError, IndexError):
            continue
        if kind != "Instruction" and level >= 2:
            best = max(best, size)
    return best or DEFAULT_CACHE_BYTES


def host_batch_bytes() -> int:
    """What one CPU batch's largest layer (its input and output) may take: half the last-level cache.
    Measured here (32 MB L3): the bundled CNN runs 4,300 images/s at 29 images (16 MB) and 1,800 at 42
    (24 MB), when the layers stop fitting; larger batches only leave the cache."""
    return cache_bytes() // 2


def _host_auto(run: Callable[[torch.Tensor], object], sample: torch.Tensor, cap: int, module: nn.Module | None,
               backward: bool) -> int:
    if module is not None:
        fp = footprint(module, run, sample)
    else:
        fp = Footprint(FALLBACK_FACTOR * _nbytes(sample), FALLBACK_FACTOR * _nbytes(sample))
    if backward:
        size = batch_from_memory(HOST_BACKWARD_BYTES, 0, fp.total, headroom=1.0, cap=cap)
    else:
        size = max(min(MIN_HOST_BATCH, cap), batch_from_memory(host_batch_bytes(), 0, fp.largest, headroom=1.0,
                                                                cap=cap))
    avail = available_host_memory()
    if avail is not None:
        size = min(size, batch_from_memory(avail, 0, fp.total, headroom=HOST_MEMORY_SHARE, cap=cap))
    return size


def auto_batch_size(run: Callable[[torch.Tensor], object], sample: torch.Tensor, device: str | torch.device, *,
                    cap: int = MAX_AUTO_BATCH, module: nn.Module | None = None, extra_inputs: int = 1,
                    backward: bool = False, what: str = "forward passes") -> int:
    """A batch size for ``run`` (see the module doc): the largest that fits on CUDA; on the CPU (and
    MPS) the largest whose largest layer fits in half the cache; at most ``cap``. ``sample`` is one input
    ``[1, ...]`` on ``device``; ``module`` the model that ``run`` runs (for the CPU's estimate of the
    activations); ``extra_inputs``: copies of the input the caller holds beside each batch (CUDA's
    arithmetic); ``backward``: ``run`` also runs a backward pass (the CPU's estimate counts every
    layer's output); ``what`` names the loop in the log line."""
    if sample.shape[0] != 1:
        raise ModelError(f"auto_batch_size needs one sample [1, ...], got shape {list(sample.shape)}")
    cap = max(1, min(cap, MAX_AUTO_BATCH))
    dev = torch.device(device)
    if dev.type == "cuda":
        size = _cuda_auto(run, sample, dev, cap, extra_inputs)
    else:
        size = _host_auto(run, sample, cap, module, backward)
    log.info("%s: batch size %d (auto, %s)", what, size, dev)
    return size


def layout_error(e: Exception) -> bool:
    """Whether ``e`` is a model's complaint about its input's memory layout (a ``.view()`` of it, say)."""
    return isinstance(e, RuntimeError) and any(w in str(e) for w in ("stride", "contiguous", "view"))


def has_convolutions(module: nn.Module) -> bool:
    """Whether ``module`` has 2-d convolutions, whose kernels run faster on channels-last input (oneDNN
    on the CPU: about 1.4-2x here; tensor cores on CUDA)."""
    return any(getattr(m, "original_name", type(m).__name__) == "Conv2d" or isinstance(m, nn.Conv2d)
               for m in module.modules())


def takes_channels_last(run: Callable[[torch.Tensor], object], sample: torch.Tensor) -> bool:
    """Whether ``run`` accepts ``sample`` ``[1, C, H, W]`` in channels-last memory (a model that calls
    ``.view()`` on its input does not)."""
    if sample.dim() != 4:
        return False
    try:
        run(sample.contiguous(memory_format=torch.channels_last))
    except RuntimeError as e:
        if layout_error(e):
            return False
        raise
    return True
