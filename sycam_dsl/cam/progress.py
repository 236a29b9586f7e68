"""Progress reporting: tqdm when it is installed, else a plain stderr line (no hard dependency)."""

from __future__ import annotations

import sys
import time
from typing import Protocol


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _Line:
    """``desc: done/total`` rewritten in place on stderr, at most a few times a second."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.start = self.last = time.monotonic()
        self._write()

    def _write(self) -> None:
        elapsed = time.monotonic() - self.start
        sys.stderr.write(f"\r{self.desc}: {self.done}/{self.total} ({elapsed:.1f} s)")
        sys.stderr.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 0.25 or self.done >= self.total:
            self.last = now
            self._write()

    def close(self) -> None:
        self._write()
        sys.stderr.write("\n")
        sys.stderr.flush()


def progress(total: int, desc: str, enabled: bool = True) -> Progress:
    """A progress bar over ``total`` units; a no-op when not ``enabled``."""
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Line(total, desc)
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
