"""``--runtime auto``'s choice: time torch and each runtime that converted the model on a few batches,
once per model, part, input shape, precision, thread count and CPU, and keep the fastest (in this
process and in a ``choice-<key>.json`` file beside the converted models). ``module`` is always the
torch module itself; the others run it converted (``models.runtime``)."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..util.files import atomic_write_text
from ..util.modes import eval_mode
from ..util.progress import note
from .precision import forward_precision
from .threads import runtime_threads

log = logging.getLogger(__name__)

CHOICE_FILE = r"choice-[0-9a-f]{40}\.json"
#: ``auto`` times each candidate on ``TIMING_ROUNDS`` rounds of ``TIMING_BATCHES`` batches of ``TIMING_ROWS``
TIMING_ROWS = 8
TIMING_BATCHES = 1
TIMING_ROUNDS = 3

#: choice key -> ``auto``'s pick in this process (so that every pass of a run uses one runtime).
_CHOSEN: dict[str, str] = {}


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


def _time(run: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds per batch of ``run``: the best of ``TIMING_ROUNDS`` rounds of ``TIMING_BATCHES``, after one
    warm-up (on CUDA, up to the device's end of the work)."""
    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    best = float("inf")
    for _ in range(TIMING_ROUNDS):
        sync()
        start = time.perf_counter()
        for _ in range(TIMING_BATCHES):
            run()
        sync()
        best = min(best, (time.perf_counter() - start) / TIMING_BATCHES)
    return best


def _torch_run(module: nn.Module, batch: list[torch.Tensor], precision: str,
               convolutional: bool) -> Callable[[], object]:
    channels_last = convolutional and len(batch) == 1 and batch[0].dim() == 4
    if channels_last:  # torch's best layout on the CPU (oneDNN), as the loops feed it
        batch = [batch[0].contiguous(memory_format=torch.channels_last)]

    def run() -> object:
        with torch.inference_mode(), forward_precision(precision, batch[0].device):
            return module(*batch)

    return run


def choose(built: dict[str, nn.Module], module: nn.Module, example: Sequence[torch.Tensor], key: str,
           precision: str, folder: Path | None, what: str, show: bool) -> str:
    """``auto``'s pick among ``built`` (torch included): the one kept for this model, part, shape,
    precision, thread count and CPU, else the fastest on a few batches (then kept)."""
    threads = runtime_threads()
    choice_key = hashlib.sha256(json.dumps([key, precision, threads, cpu_name(), sorted(built)])
                                .encode()).hexdigest()[:40]
    if choice_key in _CHOSEN and _CHOSEN[choice_key] in built:
        return _CHOSEN[choice_key]
    path = None if folder is None else folder / f"choice-{choice_key}.json"
    if path is not None and path.is_file() and not path.is_symlink():
        try:
            kept = json.loads(path.read_text()).get("runtime")
        except (OSError, ValueError, AttributeError):
            kept = None
        if kept in built:
            _CHOSEN[choice_key] = str(kept)
            return str(kept)
    batch = rows(example, TIMING_ROWS)
    seconds: dict[str, float] = {}
    convolutional = any(isinstance(m, nn.Conv2d) for m in module.modules())
    with eval_mode(module):
        for name, m in built.items():
            torch_like = name in ("torch", "compile")  # run under autocast, in torch's best layout
            seconds[name] = _time(_torch_run(m, batch, precision, convolutional) if torch_like else partial(m, *batch),
                                  batch[0].device)
    best = min(seconds, key=lambda n: seconds[n])
    rates = ", ".join(f"{n} {TIMING_ROWS / s:,.0f}/s" for n, s in sorted(seconds.items(), key=lambda kv: kv[1]))
    _CHOSEN[choice_key] = best
    note(f"runtime: {what} runs fastest on {best} ({precision}; {rates})", show)
    if path is not None:
        try:
            atomic_write_text(path, json.dumps({"runtime": best, "rows_per_second": {
                n: TIMING_ROWS / s for n, s in seconds.items()}, "what": what}))
        except OSError as e:
            log.warning("runtime: could not keep the choice in %s (%s)", path, e)
    return best
