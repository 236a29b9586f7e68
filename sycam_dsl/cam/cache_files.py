"""The files the cache folder owns (``OWNED``: the terminal store's entries, the old whole-set cache
files, the inference runtimes' converted models) and the folder-wide work on them: listing them
(never through a symbolic link, each checked by folder, name and first bytes), removing one, and
removing the temporary files killed writers left behind. ``cam.store`` bounds and clears the
folder with these; other files in the cache folder are left alone."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..models.runtime import BATCH_FILE, CHOICE_FILE, ONNX_FILE
from ..models.runtime import FOLDER as RUNTIME_FOLDER

#: The terminal store's folder in the cache folder.
STORE_DIR = "terminal-store"

_STALE_TMP_SECONDS = 3600
#: The first bytes of a zip archive, the format ``torch.save`` writes.
_ZIP_MAGIC = b"PK\x03\x04"


def _is_torch_file(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts a ``torch.save`` archive: a zip whose first
    member is ``<name>/data.pkl``."""
    if len(head) < 30 or not head.startswith(_ZIP_MAGIC):
        return False
    n = int.from_bytes(head[26:28], "little")
    return head[30:30 + n].endswith(b"/data.pkl")


def _is_partial_torch_file(head: bytes) -> bool:
    """A killed writer's temporary file: empty, or the start of a zip archive."""
    return not head or head.startswith(_ZIP_MAGIC[:len(head)])


@dataclass(frozen=True)
class Owned:
    """One kind of file the cache owns: those below the cache folder in the folders ``folders``
    (one pattern per level, each a real folder, never a link), whose names match ``name`` and
    whose first bytes pass ``format``. Their temporary files (``atomic_write``'s ``<name><random>.tmp``)
    are owned too, and removed once stale."""

    folders: tuple[str, ...]
    name: str
    format: Callable[[bytes], bool]

    def owns(self, file_name: str) -> bool:
        return re.fullmatch(self.name, file_name) is not None

    def owns_temporary(self, file_name: str) -> bool:
        return re.fullmatch(f"(?:{self.name})[a-z0-9_]+\\.tmp", file_name) is not None


#: Everything the cache owns, the one place that says it: ``info``, the size bound and ``clear`` count
#: and remove these files and nothing else. Another kind of cache file (an inference runtime's
#: converted models in ``<cache-dir>/runtime/``, say) is one more row here.
OWNED: tuple[Owned, ...] = (
    Owned((STORE_DIR, "[0-9a-f]{2}"), r"[0-9a-f]{40}\.pt", _is_torch_file),
    # the whole-set cache files sycam-dsl wrote before the store: counted, evicted and cleared with it
    Owned((), r"terminals-[0-9a-f]{40}\.pt", _is_torch_file),
    # the inference runtimes' converted models (an ONNX ModelProto opens with ir_version, field 1),
    # ``auto``'s kept choices and each converted model's best batch (models.runtime)
    Owned((RUNTIME_FOLDER,), ONNX_FILE, lambda head: head[:1] == b"\x08"),
    Owned((RUNTIME_FOLDER,), CHOICE_FILE, lambda head: head.lstrip()[:1] == b"{"),
    Owned((RUNTIME_FOLDER,), BATCH_FILE, lambda head: head.lstrip()[:1] == b"{"),
)
#: Bytes read to check a file's format (a zip header and its first member's name).
_HEAD_BYTES = 512


@dataclass(frozen=True)
class CacheFile:
    """One owned file: when it was last used, its bytes, where it is and its kind."""

    used_ns: int
    size: int
    path: Path
    kind: Owned


def converted_share(entries: Sequence[CacheFile]) -> tuple[int, int]:
    """(files, bytes) of ``entries`` in the runtimes' folder."""
    mine = [e for e in entries if e.kind.folders[:1] == (RUNTIME_FOLDER,)]
    return len(mine), sum(e.size for e in mine)


def _scan(folder: str | Path) -> list[os.DirEntry[str]]:
    """The files and folders in ``folder``; none when it does not exist (or is not a folder)."""
    try:
        return list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _folders(top: Path, patterns: tuple[str, ...]) -> list[Path]:
    """The real folders (not links) below ``top`` whose path matches ``patterns``, one per level."""
    found = [top]
    for pattern in patterns:
        found = [Path(e.path) for d in found for e in _scan(d)
                 if re.fullmatch(pattern, e.name) and e.is_dir(follow_symlinks=False)]
    return found


def _head(path: str | Path) -> bytes | None:
    """The first bytes of the regular file ``path``, opened without following a link; None for
    anything else (a link, a folder, a file that is gone or cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, _HEAD_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)


def remove_file(path: str | Path, format: Callable[[bytes], bool]) -> bool:
    """Remove ``path`` if it is a regular file (not a link) whose first bytes pass ``format``."""
    head = _head(path)
    if head is None or not format(head):
        return False
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def owned_files(folder: Path, formats: bool = True) -> Iterator[CacheFile]:
    """Every owned file below ``folder`` (``OWNED``: by folder, name and, unless not ``formats``,
    format), never through a link; removes the stale temporary files that killed writers left behind."""
    for kind in OWNED:
        for d in _folders(folder, kind.folders):
            for f in _scan(d):
                if kind.owns(f.name):
                    try:
                        if not f.is_file(follow_symlinks=False):
                            continue
                        st = f.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed by another process meanwhile
                        continue
                    head = _head(f.path) if formats else None  # None too for a file removed meanwhile
                    if not formats or (head is not None and kind.format(head)):
                        yield CacheFile(st.st_mtime_ns, st.st_size, Path(f.path), kind)
                elif kind.owns_temporary(f.name):
                    _remove_temporary(f, stale_only=True)


def _remove_temporary(f: os.DirEntry[str], stale_only: bool) -> None:
    try:
        st = f.stat(follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stale_only or time.time() - st.st_mtime > _STALE_TMP_SECONDS:
        remove_file(f.path, _is_partial_torch_file)


def remove_temporaries_and_folders(folder: Path) -> None:
    """Remove every owned temporary file below ``folder``, stale or not, and the owned folders left
    empty."""
    for kind in OWNED:
        for d in _folders(folder, kind.folders):
            for f in _scan(d):
                if kind.owns_temporary(f.name):
                    _remove_temporary(f, stale_only=False)
            if kind.folders:
                try:
                    os.rmdir(d)
                except OSError:  # not empty: another process wrote meanwhile, or files not the store's
                    pass
