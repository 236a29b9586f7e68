"""A digest of a model: its architecture and weights, the key of everything cached for it (the
terminal store's records, the inference runtimes' converted models)."""

from __future__ import annotations

import hashlib
from weakref import WeakKeyDictionary

import torch
from torch import nn

from ..util.digests import update_digest
from .layers import kind as module_kind

#: module -> (stamp, digest) of its last ``model_digest``: the bytes are hashed again only when the
#: stamp changes (terminals on demand ask for the digest at every computation).
_DIGESTS: WeakKeyDictionary[nn.Module, tuple[tuple, str]] = WeakKeyDictionary()


def _stamp(header: str, state: dict[str, object]) -> tuple:
    """What changes whenever a hash of ``state`` could: the architecture text, and each tensor's name,
    storage, version counter (bumped by every in-place change), dtype, shape and device."""
    return (header, *((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape), t.device)
                      if isinstance(t, torch.Tensor) else (name, repr(t)) for name, t in state.items()))


def model_digest(module: nn.Module) -> str:
    """A hash of ``module``'s architecture (class and repr) and of every state-dict tensor's bytes."""
    header = f"{module_kind(module)}\n{module!r}\n"
    state = module.state_dict()
    stamp = _stamp(header, state)
    cached = _DIGESTS.get(module)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256()
    h.update(header.encode())
    for name, t in state.items():
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            update_digest(h, t)
    _DIGESTS[module] = (stamp, h.hexdigest())
    return h.hexdigest()
