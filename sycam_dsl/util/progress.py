"""Progress on stderr: a progress bar over a known number of units (tqdm when it is installed, else a
plain line; no hard dependency) and a status line rewritten in place (the search's)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

_label: ContextVar[str] = ContextVar("progress_label", default="")


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def _write(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _is_tty() -> bool:
    return sys.stderr.isatty()


class _Throttle:
    """Lets an update through at most once every ``seconds`` (always when forced)."""

    def __init__(self, seconds: float, last: float) -> None:
        self.seconds, self.last = seconds, last

    def ready(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self.last < self.seconds:
            return False
        self.last = now
        return True


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _Line:
    """``desc: done/total`` rewritten in place on stderr, at most a few times a second."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.start = time.monotonic()
        self.throttle = _Throttle(0.25, self.start)
        self._write()

    def _write(self) -> None:
        elapsed = time.monotonic() - self.start
        _write(f"\r{self.desc}: {self.done}/{self.total} ({elapsed:.1f} s)")

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.throttle.ready(force=self.done >= self.total):
            self._write()

    def close(self) -> None:
        self._write()
        _write("\n")


@contextmanager
def progress_label(text: str) -> Iterator[None]:
    """Bars opened inside the block show ``text`` after their description (such as
    `` (chunk 2 of 5)`` when a task runs in parts)."""
    token = _label.set(text)
    try:
        yield
    finally:
        _label.reset(token)


def progress(total: int, desc: str, enabled: bool = True) -> Progress:
    """A progress bar over ``total`` units; a no-op when not ``enabled``."""
    if not enabled:
        return _Silent()
    desc += _label.get()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Line(total, desc)
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def note(text: str, enabled: bool = True) -> None:
    """One line on stderr among the progress output (when ``enabled``)."""
    if enabled:
        _write(f"{text}\n")


class StatusLine:
    """One status line on stderr, rewritten at most four times a second on a terminal; in a log
    (stderr not a terminal) a new line every ``LOG_SECONDS``. A no-op when not ``enabled``."""

    LOG_SECONDS = 15.0

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = _is_tty()
        # on a terminal the first line shows at once; in a log only after LOG_SECONDS
        self.throttle = _Throttle(0.25, 0.0) if self.tty else _Throttle(self.LOG_SECONDS, time.monotonic())

    def show(self, render: Callable[[], str], force: bool = False) -> None:
        """Write the line ``render()`` gives (only called when the line is due, or ``force``)."""
        if not self.enabled or not self.throttle.ready(force):
            return
        line = render()
        _write(f"\r\033[K{line}" if self.tty else f"{line}\n")

    def close(self) -> None:
        """End the line on a terminal."""
        if self.enabled and self.tty:
            _write("\n")
