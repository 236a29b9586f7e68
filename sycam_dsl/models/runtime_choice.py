"""A converted model's best batch, and ``--runtime auto``'s choice, both timed once and kept beside the
converted models (``models.runtime``).

- ``best_batch``: the batch size at which a runtime runs the most rows per second, from a sweep of
  batch sizes, once per model, part, input shape, runtime, precision, thread count and CPU (a
  ``batch-<key>.json`` file). A ``RuntimeModule`` splits larger batches into batches of that size, and
  the loops' ``auto`` batch sizes take it, so that each loop runs at the runtime's best batch whatever
  the sizes chosen for torch are (a runtime's rate depends on the batch in its own way, per model and
  CPU).
- ``choose``: ``auto``'s pick, the fastest of torch (timed on a few batches) and each runtime that
  converted the model (at its best batch), once per model, part, input shape, precision, thread count
  and CPU (a ``choice-<key>.json`` file). ``module`` is always the torch module itself; the others run
  it converted."""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..util.digests import json_digest
from ..util.files import atomic_write_text
from ..util.modes import eval_mode
from ..util.progress import note
from .precision import forward_precision
from .threads import runtime_threads

log = logging.getLogger(__name__)

CHOICE_FILE = r"choice-[0-9a-f]{40}\.json"
BATCH_FILE = r"batch-[0-9a-f]{40}\.json"
#: ``auto`` times torch on the best of ``TIMING_ROUNDS`` batches of ``TIMING_ROWS`` rows, after a warm-up
TIMING_ROWS = 8
TIMING_ROUNDS = 3

#: ``best_batch``'s sweep: batch sizes from 1, doubling up to ``SWEEP_MAX_ROWS`` rows and
#: ``SWEEP_MAX_BYTES`` of input per batch; a batch that takes longer than ``SWEEP_SECONDS``, or
#: two sizes in a row below ``SWEEP_FALLING`` of the best rate so far, end it (larger batches only take
#: longer for a rate that has levelled off or fallen); each size is timed on ``TIMING_ROUNDS`` rounds.
SWEEP_MAX_ROWS = 256
SWEEP_MAX_BYTES = 64 * 2**20
SWEEP_SECONDS = 0.5
SWEEP_FALLING = 0.9
#: Rates within this share of the best count as the best: the largest such size is kept (the timing's
#: noise on a shared machine is about that large, and a loop makes fewer calls, each with its own
#: overhead, at a larger batch).
SWEEP_TIE = 0.9

#: choice key -> ``auto``'s pick in this process (so that every pass of a run uses one runtime).
_CHOSEN: dict[str, str] = {}
#: batch key -> (best batch, rows per second) in this process.
_BATCHES: dict[str, tuple[int, float]] = {}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rows(example: Sequence[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """``example`` with ``rows`` rows each (its rows repeated)."""
    out = []
    for t in example:
        reps = -(-rows // t.shape[0])
        out.append(t.repeat(reps, *([1] * (t.dim() - 1)))[:rows].contiguous())
    return out


def _once(run: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds of one call of ``run`` (on CUDA, up to the device's end of the work)."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _time(run: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds per batch of ``run``: the best of ``TIMING_ROUNDS``, after one warm-up."""
    run()
    return min(_once(run, device) for _ in range(TIMING_ROUNDS))


def _torch_run(module: nn.Module, batch: list[torch.Tensor], precision: str,
               convolutional: bool) -> Callable[[], object]:
    channels_last = convolutional and len(batch) == 1 and batch[0].dim() == 4
    if channels_last:  # torch's best layout on the CPU (oneDNN), as the loops feed it
        batch = [batch[0].contiguous(memory_format=torch.channels_last)]

    def run() -> object:
        with torch.inference_mode(), forward_precision(precision, batch[0].device):
            return module(*batch)

    return run


def _kept(path: Path | None) -> dict | None:
    """The JSON object kept in ``path`` (a regular file), None when there is none or it is unreadable."""
    if path is None or not path.is_file() or path.is_symlink():
        return None
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return kept if isinstance(kept, dict) else None


def _keep(path: Path | None, value: dict) -> None:
    if path is not None:
        try:
            atomic_write_text(path, json.dumps(value))
        except OSError as e:
            log.warning("runtime: could not keep %s (%s)", path, e)


def sweep_sizes(example: Sequence[torch.Tensor]) -> list[int]:
    """The batch sizes ``best_batch`` may time for inputs like ``example`` (rows ``[1, ...]`` or more)."""
    row_bytes = sum(t[:1].numel() * t.element_size() for t in example)
    largest = max(1, min(SWEEP_MAX_ROWS, SWEEP_MAX_BYTES // max(1, row_bytes)))
    return [1 << i for i in range(largest.bit_length()) if 1 << i <= largest]


def best_batch(run: Callable[..., object], example: Sequence[torch.Tensor], key: str, runtime: str,
               precision: str, folder: Path | None, what: str, show: bool) -> tuple[int, float]:
    """(batch size, rows per second) at which ``run`` (a converted model on torch tensors) runs the most
    rows per second, over ``sweep_sizes``: the one kept for this model, part, input shape, runtime,
    precision, thread count and CPU, else timed now (then kept)."""
    batch_key = json_digest([key, runtime, precision, runtime_threads(), cpu_name()])
    if batch_key in _BATCHES:
        return _BATCHES[batch_key]
    path = None if folder is None else folder / f"batch-{batch_key}.json"
    kept = _kept(path)
    if kept is not None and isinstance(kept.get("batch"), int) and kept["batch"] >= 1 \
            and isinstance(kept.get("rows_per_second"), (int, float)):
        _BATCHES[batch_key] = (kept["batch"], float(kept["rows_per_second"]))
        return _BATCHES[batch_key]
    batches: dict[int, list[torch.Tensor]] = {}
    fastest: dict[int, float] = {}
    falling = 0
    for size in sweep_sizes(example):  # a warm-up (a new shape's first run plans its memory), a first round
        batches[size] = rows(example, size)
        run(*batches[size])
        fastest[size] = _once(partial(run, *batches[size]))
        rates = {b: b / max(t, 1e-9) for b, t in fastest.items()}
        falling = falling + 1 if rates[size] < SWEEP_FALLING * max(rates.values()) else 0
        if fastest[size] > SWEEP_SECONDS or falling == 2:
            break
    for _ in range(TIMING_ROUNDS - 1):  # the other rounds over every size: a drifting machine slows them alike
        for size, batch in batches.items():
            fastest[size] = min(fastest[size], _once(partial(run, *batch)))
    rates = {size: size / max(seconds, 1e-9) for size, seconds in fastest.items()}
    # the largest size within the timing's noise of the best rate: a loop then makes fewer calls
    best = max(size for size, rate in rates.items() if rate >= SWEEP_TIE * max(rates.values()))
    _BATCHES[batch_key] = (best, rates[best])
    note(f"runtime: {what}: batch {best} is best on {runtime} ({rates[best]:,.0f} rows/s; timed at "
         f"{', '.join(map(str, rates))})", show)
    _keep(path, {"batch": best, "rows_per_second": rates[best], "rates": {str(b): r for b, r in rates.items()},
                 "runtime": runtime, "what": what})
    return _BATCHES[batch_key]


def choose(built: dict[str, nn.Module], module: nn.Module, example: Sequence[torch.Tensor], key: str,
           precision: str, folder: Path | None, what: str, show: bool,
           measured: dict[str, float] | None = None) -> str:
    """``auto``'s pick among ``built`` (torch included): the one kept for this model, part, shape,
    precision, thread count and CPU, else the fastest (then kept): a converted model at the rows per
    second ``measured`` at its best batch (``best_batch``), the others timed on a few batches."""
    measured = measured or {}
    choice_key = json_digest([key, precision, runtime_threads(), cpu_name(), sorted(built)])
    if choice_key in _CHOSEN and _CHOSEN[choice_key] in built:
        return _CHOSEN[choice_key]
    path = None if folder is None else folder / f"choice-{choice_key}.json"
    kept = (_kept(path) or {}).get("runtime")
    if isinstance(kept, str) and kept in built:
        _CHOSEN[choice_key] = str(kept)
        return str(kept)
    batch = rows(example, TIMING_ROWS)
    rates: dict[str, float] = {}
    convolutional = any(isinstance(m, nn.Conv2d) for m in module.modules())
    with eval_mode(module):
        for name, m in built.items():
            if name in measured:
                rates[name] = measured[name]
                continue
            torch_like = name in ("torch", "compile")  # run under autocast, in torch's best layout
            seconds = _time(_torch_run(m, batch, precision, convolutional) if torch_like else partial(m, *batch),
                            batch[0].device)
            rates[name] = TIMING_ROWS / max(seconds, 1e-9)
    best = max(rates, key=lambda n: rates[n])
    listed = ", ".join(f"{n} {r:,.0f}/s" for n, r in sorted(rates.items(), key=lambda kv: -kv[1]))
    _CHOSEN[choice_key] = best
    note(f"runtime: {what}: fastest on {best} ({precision}; {listed})", show)
    _keep(path, {"runtime": best, "rows_per_second": rates, "what": what})
    return best
