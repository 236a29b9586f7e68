"""Weights for a model: state-dict files (checkpoints unwrapped) and ``random:SEED`` specs.

Nothing is downloaded at run time: weights come from a local state-dict file, or are seeded random
values for tests and demos.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..util.text import first_line
from .errors import ModelError

_RANDOM = re.compile(r"random:(-?\d+)")
#: the largest seed torch's generators take
_MAX_SEED = 2**63 - 1


def random_seed(weights: str | None) -> int | None:
    """The seed of a ``random:SEED`` weights spec, else None; a malformed or too large seed is a
    ``ModelError`` (not a weights file that does not exist)."""
    if not weights or not weights.strip().lower().startswith("random:"):
        return None
    m = _RANDOM.fullmatch(weights.strip())
    if m is None or abs(int(m.group(1))) > _MAX_SEED:
        raise ModelError(f"--weights {weights.strip()!r}: expected random:SEED with an integer SEED of at most "
                         f"{_MAX_SEED}, e.g. random:0")
    return int(m.group(1))


def no_weights_error(name: str) -> ModelError:
    """The error for a model ``name`` that needs weights and got none."""
    return ModelError(
        f"model {name!r} needs weights, and sycam-dsl downloads nothing at run time: pass --weights FILE "
        f"with a local state dict (saved with torch.save(model.state_dict(), FILE), e.g. the file torchvision "
        f"caches under ~/.cache/torch/hub/checkpoints), or --weights random:SEED for seeded random weights "
        f"(tests and demos only)")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``path``; unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and
    DataParallel's ``module.`` prefixes."""
    p = Path(path)
    if p.is_dir():
        raise ModelError(f"weights {str(p)!r} is a folder; give the state-dict file (torch.save of "
                         f"model.state_dict()) itself")
    if not p.is_file():
        raise ModelError(f"weights file {str(p)!r} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or corrupt files
        first = first_line(e)
        raise ModelError(f"cannot read weights file {str(p)!r} as a state dict ({first}); save it with "
                         f"torch.save(model.state_dict(), FILE)") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file {str(p)!r} holds a {type(obj).__name__}, not a state dict of tensors; "
                         f"save it with torch.save(model.state_dict(), FILE)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def apply_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; a mismatch raises ``ModelError`` listing missing, unexpected and
    misshapen keys (``source`` names the weights in the message)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        groups = (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes))
        for label, items in groups:
            if items:
                parts.append(f"{len(items)} {label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
        raise ModelError(f"weights {source} do not fit the model: {'; '.join(parts)}")
    module.load_state_dict(state)


def build_with_weights(make: Callable[[int | None], nn.Module], weights: str | None, name: str,
                       classifier_key: Callable[[nn.Module], str | None]) -> tuple[nn.Module, dict[str, Any]]:
    """A model from ``make(num_classes)`` (None: its default) with ``weights``: ``random:SEED`` (built
    under that seed), else a state-dict file; a fine-tuned checkpoint whose ``classifier_key(model)``
    weight ``[classes, features]`` has another number of rows is rebuilt with its number of classes
    instead of failing on the shape. Returns the model and what the run records of its weights."""
    seed = random_seed(weights)
    if weights is None:
        raise no_weights_error(name)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make(None), {"weights": f"random:{seed}"}
    state = read_state_dict(weights)
    model = make(None)
    key = classifier_key(model)
    own = model.state_dict().get(key) if key else None
    if key and own is not None and key in state and state[key].dim() == 2 and state[key].shape[0] != own.shape[0]:
        model = make(int(state[key].shape[0]))
    apply_state_dict(model, state, repr(str(weights)))
    return model, {"weights": str(weights)}
