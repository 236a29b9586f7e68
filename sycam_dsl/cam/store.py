"""The terminal store: computed terminal values on disk, one file per image and record, so that later
runs load them instead of computing them again.

An image's values come in one record per pass that computes them (``cam.compute``; the passes, their
record kinds ``base``, ``cic`` and ``abl`` and the fields each record must hold come from
``lang.terminals``' table: ``record_fields``). An entry's key (``RecordKey``) holds everything its
values depend on that sycam-dsl can see: the store format, the model (architecture and every
state-dict tensor's bytes, ``model_digest``), the canonical layer path, the image tensor's bytes (so
its size and normalization), the target class (or ``predicted``), the record kind and the settings
that change its values (``record_settings``). So a new image folder
reuses every image already computed, and names that read only ``grads`` never compute ``cic``.

``compute_terminals_stored`` loads what is stored, computes only the missing (image, record) pairs,
``chunk_size`` images at a time, and writes each chunk's entries as soon as it completes: a killed
run loses at most the chunk in flight. Entries are written atomically (a temporary file renamed over
the entry), so readers never see half a file and two processes writing the same entry leave one
whole file. The key cannot see the model's code (an edited ``forward``), so the stored logits of the
first chunk of stored images are checked against a fresh forward pass; on a mismatch one warning
line says so and everything is computed again and overwritten. Unreadable or foreign files are
ignored with one warning line and computed again.

What is checked on reuse: only the weights (``model_digest``) and the logits. A model whose code
changes its gradients but not its logits (a custom backward, a hook) gets the stored gradient
terminals of the old code: clear the store (``sycam-dsl cache clear``) or pass ``--no-cache``.

Layout: ``<folder>/terminal-store/<2 hex>/<40 hex>.pt`` where ``folder`` is the cache folder
(``$SYCAM_DSL_CACHE``, default ``~/.cache/sycam-dsl``). The store is bounded (``max_bytes``, default
``$SYCAM_DSL_CACHE_SIZE`` or 2 GB): reading an entry marks it as used (its modification time), and when
writes take the store over its bound the least recently used entries are removed until it is under
90% of it. Counting, the bound and ``clear`` touch only the files ``cache_files.OWNED`` describes
(their folders, names and format), never through a symbolic link: other files in the cache folder are
left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..evaluate.terminal_values import Terminals
from ..lang.terminals import pass_of_record, record_fields
from ..models.batching import BatchSize
from ..models.digest import model_digest
from ..models.loaded import LoadedModel
from ..models.precision import DEFAULT_PRECISION
from ..models.runtime import FOLDER as RUNTIME_FOLDER
from ..models.runtime import RuntimeSpec
from ..models.targets import Target, model_output
from ..util.digests import update_digest
from ..util.files import atomic_torch_save
from ..util.modes import eval_mode
from ..util.sizes import format_size, parse_size
from ..util.text import first_line
from .cache_files import STORE_DIR, CacheFile, converted_share, owned_files, remove_file, remove_temporaries_and_folders
from .compute import (
    ABL,
    BASE,
    CIC,
    DEFAULT_CHUNK_SIZE,
    Record,
    TerminalInfo,
    TerminalRun,
    assemble,
    compute_records,
    prepare_run,
)
from .errors import StoreError
from .reshape import Reshape

log = logging.getLogger(__name__)

#: Part of every key: a change to what the records hold or mean bumps it (old entries then age out).
STORE_FORMAT = 1
DEFAULT_MAX_BYTES = 2 * 2**30
#: Writes that take the store over its bound evict down to this share of it (not after every write).
EVICT_TO = 0.9



def reuse_line(stored: int, total: int) -> str:
    """``6 of 12 images from the store`` and, when any came from it, what was checked (module docstring)."""
    checked = (" (only the weights and the logits are checked: --no-cache after a change to the model's code that "
               "keeps its logits but changes its gradients)") if stored else ""
    return f"{stored} of {total} images from the store{checked}"


def default_cache_dir() -> Path:
    """``$SYCAM_DSL_CACHE``, else ``~/.cache/sycam-dsl``."""
    env = os.environ.get("SYCAM_DSL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sycam-dsl"


def default_max_bytes() -> int:
    """``$SYCAM_DSL_CACHE_SIZE`` (such as ``500MB``), else 2 GB."""
    env = os.environ.get("SYCAM_DSL_CACHE_SIZE")
    if not env:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(env)
    except ValueError as e:
        raise StoreError(f"SYCAM_DSL_CACHE_SIZE: {e}") from None


def image_digests(images: torch.Tensor) -> list[str]:
    """One hash per image of ``images`` ``[N, ...]``: its shape, dtype and bytes."""
    out = []
    for image in images.detach().cpu():
        h = hashlib.sha256()
        update_digest(h, image)
        out.append(h.hexdigest()[:40])
    return out


@dataclass(frozen=True)
class RecordKey:
    """What one entry's values depend on. A new component is one more field (and where it is set)."""

    model: str
    layer: str
    image: str
    target: str
    kind: str
    settings: str
    format: int = STORE_FORMAT

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:40]


def record_settings(kind: str, run: TerminalRun) -> str:
    """The settings that change ``kind``'s values besides the model, layer, image and target, as
    ``name=value`` pairs; another one (the precision, say) is one more entry of ``settings``."""
    settings = {"ablation": run.ablation} if kind == ABL else {}
    if run.access.tokens is not None:  # keys of layers read as they are stay as they were
        settings["reshape"] = run.access.tokens.key()
    if kind in (CIC, ABL) and run.precision != DEFAULT_PRECISION:  # fp32 keys stay as they were
        settings["precision"] = run.precision
    if kind in (CIC, ABL) and run.runtime_of(kind) != "torch":  # torch keys stay as they were
        settings["runtime"] = run.runtime_of(kind)
    return ",".join(f"{k}={v}" for k, v in sorted(settings.items()))


def record_keys(run: TerminalRun, images: torch.Tensor) -> dict[str, list[RecordKey]]:
    """``{kind: [key of each image]}`` for the record kinds ``run`` needs."""
    model = model_digest(run.module)
    if run.target is not None:  # another kind than the class: its name (class keys stay as they were)
        targets = [run.target.name] * run.n
    else:
        targets = ["predicted"] * run.n if run.targets is None else [str(t) for t in run.targets.tolist()]
    digests = image_digests(images)
    settings = {kind: record_settings(kind, run) for kind in run.kinds}  # once per kind: a reshape's key hashes
    return {kind: [RecordKey(model, run.access.name, d, t, kind, settings[kind])
                   for d, t in zip(digests, targets)] for kind in run.kinds}


class BadEntry(Exception):
    """A store file that cannot be read, or that holds something else than its key says."""


@dataclass(frozen=True)
class StoreInfo:
    """The store's folder, its number of entries, their bytes and the bound; ``converted``: how many
    of the entries (and their bytes) are the inference runtimes' files (``models.runtime``)."""

    folder: Path
    entries: int
    bytes: int
    max_bytes: int
    converted: tuple[int, int] = (0, 0)

    def line(self) -> str:
        files, size = self.converted
        runtime = (f", of which {files:,} converted model file(s) and runtime choices in "
                   f"{self.folder.parent / RUNTIME_FOLDER} ({format_size(size)})") if files else ""
        return (f"terminal store {self.folder}: {self.entries:,} entries, {format_size(self.bytes)} of "
                f"{format_size(self.max_bytes)}{runtime}")



class TerminalStore:
    """The store in ``folder`` (default ``default_cache_dir()``; its entries are in ``folder/terminal-store``),
    bounded to ``max_bytes`` (default ``default_max_bytes()``). A folder that cannot be written only
    logs one warning: the values are then computed and not kept."""

    def __init__(self, folder: str | Path | None = None, max_bytes: int | None = None) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else default_cache_dir()
        if self.folder.exists() and not self.folder.is_dir():
            raise StoreError(f"the cache folder {self.folder} is a file, not a folder")
        self.root = self.folder / STORE_DIR
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes < 1:
            raise StoreError(f"the terminal store needs a positive size bound, got {self.max_bytes} bytes")
        self._bytes: int | None = None  # the store's size as this process knows it; None until scanned
        self._last_ns = 0
        self._cannot_write = False

    def runtime_spec(self, runtime: RuntimeSpec | None) -> RuntimeSpec | None:
        """``runtime`` with this store's cache dir for its converted models, unless it names one."""
        if runtime is None or runtime.cache_dir is not None:
            return runtime
        return replace(runtime, cache_dir=self.folder)

    # -- entries ------------------------------------------------------------------------------------

    def path(self, key: RecordKey) -> Path:
        d = key.digest()
        return self.root / d[:2] / f"{d}.pt"

    def _now_ns(self) -> int:
        """The time to mark an entry used with: wall-clock nanoseconds, increasing within a process
        (so that the order of uses survives a coarse clock)."""
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    def _touch(self, path: Path) -> None:
        now = self._now_ns()
        try:
            os.utime(path, ns=(now, now), follow_symlinks=False)
        except (OSError, NotImplementedError):  # a read-only store still serves its entries
            pass

    def load(self, key: RecordKey, device: torch.device | str = "cpu") -> Record | None:
        """The record stored under ``key`` on ``device`` (marked as used), None when there is none;
        raises ``BadEntry`` for a file that cannot be read or belongs to another key."""
        path = self.path(key)
        try:
            data = torch.load(path, map_location=device, weights_only=True)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except Exception as e:  # a truncated, corrupt or foreign file
            raise BadEntry(f"{path}: {first_line(e)}") \
                from None
        values = data.get("values") if isinstance(data, dict) else None
        if (not isinstance(values, dict) or data.get("format") != STORE_FORMAT or data.get("key") != asdict(key)
                or any(f not in values for f in record_fields(pass_of_record(key.kind)))):
            raise BadEntry(f"{path}: not the entry of its key")
        self._touch(path)
        return values

    def save(self, key: RecordKey, record: Record) -> None:
        """Write ``record`` under ``key`` (atomically), then evict if the store is over its bound."""
        if self._cannot_write:
            return
        values = {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in record.items()}
        path = self.path(key)
        try:
            atomic_torch_save({"format": STORE_FORMAT, "key": asdict(key), "values": values}, path)
        except OSError as e:
            self._cannot_write = True
            log.warning("could not write the terminal store %s (%s); the terminals are computed but not kept: "
                        "give --cache-dir (or SYCAM_DSL_CACHE) a writable folder", self.root, e.strerror or e)
            return
        self._touch(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # evicted by another process meanwhile
            size = 0
        if self._bytes is None:
            # by name only (files are not opened): what decides whether to evict, which checks more
            self._bytes = sum(e.size for e in self._entries(formats=False))  # the new entry included
        else:
            self._bytes += size
        if self._bytes > self.max_bytes:
            self.evict()

    # -- the folder as a whole (the owned files: ``cam.cache_files``) ------------------------------

    def _entries(self, formats: bool = True) -> Iterator[CacheFile]:
        return owned_files(self.folder, formats)


    def evict(self, goal: int | None = None) -> int:
        """Remove the least recently used entries: with no ``goal``, down to ``EVICT_TO`` of the bound
        when the store is over it; else down to ``goal`` bytes. Returns how many were removed."""
        entries = sorted(self._entries(), key=lambda e: e.used_ns)
        total = sum(e.size for e in entries)
        limit, target = (self.max_bytes, int(EVICT_TO * self.max_bytes)) if goal is None else (goal, goal)
        removed = 0
        if total > limit:
            for e in entries:
                if total <= target:
                    break
                removed += remove_file(e.path, e.kind.format)
                total -= e.size
        self._bytes = total
        return removed

    def info(self) -> StoreInfo:
        entries = list(self._entries())
        return StoreInfo(self.root, len(entries), sum(e.size for e in entries), self.max_bytes,
                         converted_share(entries))

    def clear(self) -> StoreInfo:
        """Remove every entry (and leftover temporary file) and the store's emptied folders; returns
        what was removed. Files that are not the store's, and links, stay."""
        entries = list(self._entries())
        gone = [e for e in entries if remove_file(e.path, e.kind.format)]
        remove_temporaries_and_folders(self.folder)
        self._bytes = None
        return StoreInfo(self.root, len(gone), sum(e.size for e in gone), self.max_bytes, converted_share(gone))


# -- computing through the store ----------------------------------------------------------------------

@torch.no_grad()
def _logits_differ(run: TerminalRun, index: list[int], stored: torch.Tensor) -> float | None:
    """None when the model's logits for the images ``index`` match ``stored``, else the largest
    difference (inf for another shape, NaN values or an output that is not logits)."""
    fresh = model_output(run.access.model(run.x.index_select(0, torch.tensor(index, device=run.x.device))))
    if not isinstance(fresh, torch.Tensor) or fresh.shape != stored.shape or not bool(torch.isfinite(fresh).all()):
        return float("inf")
    stored = stored.to(fresh.device, fresh.dtype)
    tol = 1e-4 * max(1.0, float(stored.abs().max()))
    return None if torch.allclose(fresh, stored, rtol=1e-3, atol=tol) else float((fresh - stored).abs().max())


def _load_all(store: TerminalStore, keys: dict[str, list[RecordKey]],
              device: torch.device) -> dict[str, list[Record | None]]:
    """Every stored record of ``keys``; one warning line for the files that cannot be used."""
    bad: list[str] = []
    records: dict[str, list[Record | None]] = {}
    for kind, kind_keys in keys.items():
        records[kind] = []
        for key in kind_keys:
            try:
                records[kind].append(store.load(key, device))
            except BadEntry as e:
                bad.append(str(e))
                records[kind].append(None)
    if bad:
        log.warning("ignoring %d unreadable terminal store file%s (%s); computing %s again", len(bad),
                    "" if len(bad) == 1 else "s", bad[0], "it" if len(bad) == 1 else "them")
    return records


def _finite(record: Record) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in record.values() if isinstance(v, torch.Tensor))


def stored_images(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                  targets: torch.Tensor | Target | None, names: Sequence[str], device: str | torch.device = "cpu",
                  ablation: str = "auto", precision: str = DEFAULT_PRECISION, *, store: TerminalStore,
                  runtime: RuntimeSpec | None = None, reshape: Reshape = "auto") -> int:
    """How many of ``images`` have every record ``names`` need in ``store``, by their files (not read:
    a status line's guess of what ``compute_terminals_stored`` will read rather than compute)."""
    run = prepare_run(model, layer, images, targets, names, device, DEFAULT_CHUNK_SIZE, False, ablation, precision,
                      store.runtime_spec(runtime), reshape)
    keys = record_keys(run, images)
    return sum(all(store.path(keys[kind][i]).is_file() for kind in run.kinds) for i in range(run.n))


def compute_terminals_stored(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                             targets: torch.Tensor | Target | None, names: Sequence[str],
                             device: str | torch.device = "cpu", chunk_size: BatchSize = DEFAULT_CHUNK_SIZE,
                             progress: bool = True, ablation: str = "auto", precision: str = DEFAULT_PRECISION, *,
                             store: TerminalStore, runtime: RuntimeSpec | None = None,
                             reshape: Reshape = "auto") -> tuple[Terminals, TerminalInfo]:
    """``compute_terminals`` through ``store``: loads the stored records of these images, checks the
    stored logits of the first ``chunk_size`` of them against a fresh forward pass, computes only
    the missing records (``chunk_size`` images at a time) and writes each chunk's as it completes.
    ``info.stored`` is the number of images that came whole from the store. ``runtime``: as for
    ``compute_terminals`` (converted models go beside the store when its cache dir is not given), and
    ``reshape`` (part of the keys only when it changes the layer's output: ``record_settings``)."""
    run = prepare_run(model, layer, images, targets, names, device, chunk_size, progress, ablation, precision,
                      store.runtime_spec(runtime), reshape)
    keys = record_keys(run, images)
    if run.target is not None and not run.target.cacheable:  # a callable: its code is not in the keys
        records: dict[str, list[Record | None]] = {kind: [None] * run.n for kind in run.kinds}
        with eval_mode(run.module):
            compute_records(run, records)
        return assemble(run, records)
    records = _load_all(store, keys, run.x.device)
    with eval_mode(run.module):
        base = records[BASE]
        checked = [(i, r) for i, r in enumerate(base) if r is not None][:run.images_per_chunk]
        if checked:
            diff = _logits_differ(run, [i for i, _ in checked], torch.stack([r["logits"] for _, r in checked]))
            if diff is not None:
                log.warning("the terminal store's values for this model do not match its logits now (max difference "
                            "%.3g): its code changed since they were written; computing them again", diff)
                records = {kind: [None] * run.n for kind in run.kinds}
        # a base record computed for other names may lack the gradient terminals these need
        records[BASE] = [r if r is not None and run.base_covers(r) else None for r in records[BASE]]
        stored = sum(all(records[kind][i] is not None for kind in run.kinds) for i in range(run.n))

        def write(kind: str, index: list[int], done: list[Record]) -> None:
            for i, record in zip(index, done):
                if _finite(record):  # NaN values stop the run; they are not kept
                    store.save(keys[kind][i], record)

        compute_records(run, records, on_chunk=write)
    terms, info = assemble(run, records)
    info.stored = stored
    return terms, info
