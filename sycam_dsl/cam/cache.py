"""An on-disk cache of computed terminals, so a second run on the same inputs loads them.

The key hashes everything the values depend on: the model's architecture and weights (every
state-dict tensor's bytes), the layer path, the input size, the image tensor's bytes, the targets,
the terminal names and the sycam-dsl version. The key cannot see the model's code (its ``forward``, or
a factory swapped for another with the same weights), so a hit is used only when a fresh forward pass
of the images reproduces the logits stored with it; otherwise it is recomputed with one warning line.
Files live in ``cache_dir`` (default
``$SYCAM_DSL_CACHE`` or ``~/.cache/sycam-dsl``) as ``terminals-<key>.pt``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..evaluate.terminals import Terminals
from ..models.devices import resolve_device
from ..models.layers import kind
from ..models.loaded import LoadedModel
from ..util.digests import update_digest
from ..util.files import atomic_torch_save
from ..util.modes import eval_mode
from ..version import __version__
from .layer_split import LayerAccess
from .terminals import DEFAULT_CHUNK_SIZE, TerminalInfo, check_names, compute_terminals, prepare_model

log = logging.getLogger(__name__)

_FORMAT = 1
_INFO_TENSORS = ("acts", "logits", "targets", "z_c", "y_c", "masked_logits", "ablated_logits")


def default_cache_dir() -> Path:
    """``$SYCAM_DSL_CACHE``, else ``~/.cache/sycam-dsl``."""
    env = os.environ.get("SYCAM_DSL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sycam-dsl"


def model_digest(module: nn.Module) -> str:
    """A hash of ``module``'s architecture (class and repr) and of every state-dict tensor's bytes."""
    h = hashlib.sha256()
    h.update(f"{kind(module)}\n{module!r}\n".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            update_digest(h, t)
    return h.hexdigest()


def terminals_key(module: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor | None,
                  names: Sequence[str]) -> str:
    """The cache key of ``compute_terminals`` on these inputs (``layer``: the canonical layer path)."""
    h = hashlib.sha256()
    h.update(f"sycam-dsl {__version__} format {_FORMAT}\n".encode())
    h.update(model_digest(module).encode())
    h.update(f"\nlayer {layer}\nsize {tuple(images.shape[2:])}\nnames {','.join(sorted(names))}\n".encode())
    update_digest(h, images)
    if targets is None:
        h.update(b"targets predicted")
    else:
        update_digest(h, torch.as_tensor(targets).long())
    return h.hexdigest()[:40]


def _save(path: Path, key: str, terminals: Terminals, info: TerminalInfo) -> None:
    payload = {
        "format": _FORMAT, "key": key, "version": __version__,
        "terminals": {n: v.detach().cpu() for n, v in terminals.items()},
        "info": {"layer": info.layer, "abl_method": info.abl_method,
                 **{f: (None if getattr(info, f) is None else getattr(info, f).detach().cpu()) for f in _INFO_TENSORS}},
    }
    atomic_torch_save(payload, path)  # a concurrent reader never sees half a file


def _load(path: Path, key: str, names: list[str], device: torch.device) -> tuple[Terminals, TerminalInfo] | None:
    try:
        data = torch.load(path, map_location=device, weights_only=True)
        if data.get("format") != _FORMAT or data.get("key") != key or set(data["terminals"]) != set(names):
            return None
        terms = Terminals({n: data["terminals"][n] for n in names})
        info = TerminalInfo(data["info"]["layer"], **{f: data["info"][f] for f in _INFO_TENSORS},
                            abl_method=data["info"]["abl_method"], from_cache=True)
        return terms, info
    except Exception as e:  # a corrupt or foreign file: recompute and overwrite it
        log.warning("ignoring unreadable terminal cache file %s (%s)", path, e)
        return None


@torch.no_grad()
def _logits_differ(access: LayerAccess, x: torch.Tensor, stored: torch.Tensor, chunk: int) -> float | None:
    """None when the model's logits for ``x`` match ``stored`` (the cache entry's), else the largest
    difference (inf for another shape, NaN values or an output that is not logits)."""
    parts = []
    with eval_mode(access.model):
        for s in range(0, x.shape[0], chunk):
            parts.append(access.model(x[s:s + chunk]))
    if not all(isinstance(p, torch.Tensor) for p in parts):
        return float("inf")
    fresh = torch.cat(parts)
    if fresh.shape != stored.shape or not bool(torch.isfinite(fresh).all()):
        return float("inf")
    stored = stored.to(fresh.device, fresh.dtype)
    tol = 1e-4 * max(1.0, float(stored.abs().max()))
    return None if torch.allclose(fresh, stored, rtol=1e-3, atol=tol) else float((fresh - stored).abs().max())


def compute_terminals_cached(model: nn.Module | LoadedModel, layer: str | None, images: torch.Tensor,
                             targets: torch.Tensor | None, names: Sequence[str], device: str | torch.device = "cpu",
                             chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = True, ablation: str = "auto",
                             cache_dir: str | Path | None = None,
                             refresh: bool = False) -> tuple[Terminals, TerminalInfo]:
    """``compute_terminals`` through the on-disk cache: a hit loads the values (``info.from_cache`` is
    True) after one forward pass of the images checks that the model still gives the stored logits
    (a model whose code changed is recomputed, with a warning); ``refresh`` recomputes and overwrites.
    A cache folder that cannot be written only logs a warning."""
    names = check_names(names)
    dev = resolve_device(device)
    module, access, x = prepare_model(model, layer, images, names, dev)
    key = terminals_key(module, access.name, images, targets, names)
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"terminals-{key}.pt"
    if not refresh and path.is_file():
        hit = _load(path, key, names, dev)
        if hit is not None:
            diff = _logits_differ(access, x, hit[1].logits, chunk_size)
            if diff is None:
                log.info("terminals loaded from cache %s", path)
                return hit
            log.warning("the terminal cache entry %s does not match the model's logits now (max difference "
                        "%.3g): the model's code changed since it was written; recomputing", path, diff)
    terms, info = compute_terminals(module, access.name, images, targets, names, dev, chunk_size, progress,
                                    ablation)
    try:
        _save(path, key, terms, info)
    except OSError as e:
        log.warning("could not write the terminal cache %s (%s); set SYCAM_DSL_CACHE to a writable folder", path, e)
    return terms, info
