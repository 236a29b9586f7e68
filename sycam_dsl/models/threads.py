"""Torch's CPU threads while an inference runtime runs a loop's forward passes.

A forward-only loop builds each batch in torch (masks, masked or perturbed images) and hands it to the
runtime. After a parallel torch operation, torch's OpenMP threads busy-wait for the next one, on the
cores the runtime's own threads need: measured on the bundled CNN (2 cores), ONNX Runtime ran 1.4x
slower between torch operations than without them. Inside ``torch_single_threaded`` torch's
operations run on the calling thread (building a batch is a few elementwise passes, cheap beside the
model), so no torch thread spins while the runtime runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: torch's thread count outside ``torch_single_threaded`` while inside it (None when not inside).
_OUTER: int | None = None


def runtime_threads() -> int:
    """The threads an inference runtime runs with: torch's thread count (the one outside
    ``torch_single_threaded``, when inside)."""
    return _OUTER if _OUTER is not None else torch.get_num_threads()


@contextmanager
def torch_single_threaded(active: bool = True) -> Iterator[None]:
    """Torch's CPU operations on one thread inside (when ``active``); its thread count comes back after."""
    global _OUTER
    threads = torch.get_num_threads()
    if not active or threads == 1 or _OUTER is not None:
        yield
        return
    _OUTER = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _OUTER = None
