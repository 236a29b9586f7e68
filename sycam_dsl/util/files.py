"""File utilities. Atomic file writes: the data goes to a temporary file next to the target, which
then replaces it (``os.replace``), so an interrupt or a concurrent reader never sees half a file.
Folders: ``writable_folder`` (create and check one) and ``folder_lock`` (one process at a time)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

if sys.platform != "win32":
    import fcntl

LOCK_NAME = ".lock"


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Create ``path``'s folder, call ``write(tmp)`` on a temporary file in it, then move that file
    to ``path``; the temporary file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON (one-space indent) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=1))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def writable_folder(path: str | Path) -> Path:
    """Create folder ``path`` (with its parents) if needed and check that files can be created in
    it; raises ``NotADirectoryError`` for a file (or a path through one), ``OSError`` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:  # a parent is a file
        raise NotADirectoryError(f"{path} is not a folder: {e.strerror} ({e.filename})") from e
    # creating a file is the only test that holds for root, ACLs and read-only mounts alike
    with tempfile.TemporaryFile(dir=path):
        pass
    return path


class FolderLocked(Exception):
    """Another process holds the lock of ``folder`` (``pid``: its process id, None if unknown)."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        super().__init__(f"{folder} is locked by process {pid if pid is not None else '(unknown)'}")
        self.folder, self.pid = folder, pid


_held: dict[str, tuple[int, int]] = {}  # real path of a held lock file -> (file descriptor, depth)


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on the existing ``folder`` (``flock`` on its ``.lock`` file, which
    records the holder's pid) for the ``with`` block, or raise ``FolderLocked`` at once if another
    process holds it. The lock is released when the block ends, however it ends, and by the system
    when the process dies; the same process may take it again inside the block (it is released at
    the outermost end). The file stays: removing it would let two processes lock two different
    files. No-op on Windows."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    if sys.platform == "win32":
        yield path
        return
    key = os.path.realpath(path)
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield path
        finally:
            _held[key] = (fd, depth)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise FolderLocked(folder, int(text) if text.isdigit() else None) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = (fd, 1)
        yield path
    finally:
        _held.pop(key, None)
        try:
            os.ftruncate(fd, 0)  # before unlocking: the next holder writes its own pid
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
