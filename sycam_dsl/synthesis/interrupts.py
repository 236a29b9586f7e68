"""What stops a search early: Ctrl-C and SIGTERM, held while its bookkeeping is half done
(``Interrupts``), the end of its time budget (``Stop``) and a reached ``until`` threshold
(``Reached``). The search loop (``search``) catches each and names it in ``stopped_by``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class Stop(Exception):
    """The time budget ended before the next image chunk."""


class Reached(Exception):
    """The incumbent (or a member of the front) beats the ``until`` threshold."""


class Interrupts:
    """While entered (in the main thread only; signals cannot be handled elsewhere), SIGTERM raises
    ``KeyboardInterrupt`` like Ctrl-C, and both wait while ``deferred`` is active, so that a
    candidate's bookkeeping is never half done when the search stops. The previous handlers come
    back on exit. A SIGINT handler other than Python's own, and an ignored signal, are left alone."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._depth = 0
        self._pending = False
        self._raised = False

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])):
                prev = signal.getsignal(sig)
                if prev is signal.SIG_IGN or (sig == signal.SIGINT and prev is not signal.default_int_handler):
                    continue
                self._previous[sig] = prev
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous, self._depth = {}, 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._depth:
            self._pending = True
            return
        self._raised = True
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold Ctrl-C and SIGTERM until the block ends, then raise ``KeyboardInterrupt``. A signal whose
        ``KeyboardInterrupt`` was swallowed (raised inside a weakref callback or a finalizer, where
        Python prints it and goes on) is raised again here, so that it still stops the search."""
        if self._raised and not self._depth:
            raise KeyboardInterrupt
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending:
            self._pending = False
            raise KeyboardInterrupt

    def hold(self) -> None:
        """Hold Ctrl-C and SIGTERM from now until exit (for the last bookkeeping); ``pending`` then
        says whether one came."""
        self._depth += 1

    @property
    def pending(self) -> bool:
        """Whether a held Ctrl-C or SIGTERM has not been raised."""
        return self._pending
