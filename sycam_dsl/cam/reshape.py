"""Target layers whose output is not channel maps: token ``[N, T, C]`` and channels-last ``[N, h, w, C]``
activations (vision transformers) read as ``[N, C, h, w]`` (docs/cam-engine.md, "Vision transformers").

A reshape is given as ``auto`` (recognise the layouts below), ``none`` (the output must be ``[N, K, h,
w]``) or a callable like pytorch-grad-cam's ``reshape_transform(tensor) -> [N, C, h, w]``. Resolved on a
layer's output it becomes a ``TokenMap``: where each element of the maps sits in one image's
flattened output. So the maps are a gather of the output and the inverse (``layout``: ablated maps
back into the layer's layout, prefix tokens kept) a scatter into a copy of it; gradients through
the scatter are the gathered gradients, as grad-cam's reshaped gradients are.

``auto``'s rule, from the output's rank and the layer:

- 3-D ``[N, T, C]``: tokens, ``T = P + s * s`` with ``s * s`` the largest square ``<= T`` and at most
  ``MAX_PREFIX`` prefix tokens ``P`` (class, distillation and register tokens) before the ``s x s`` grid;
- 4-D ``[N, h, w, C]`` channels-last when the layer acts on the last dimension: a ``LayerNorm`` or
  ``Linear`` whose feature size is the last dimension and not the second (so ``LayerNorm2d``
  on ``[N, C, h, w]`` stays), or a module whose class name has ``Swin`` in it (Swin blocks and stages);
- anything else is left as it is (every convolutional layer: ``[N, K, h, w]`` as before).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.errors import LayerError
from ..models.layers import kind
from ..util.imports import import_attr
from ..util.text import first_line

#: The reshapes given by name; a callable is the third kind.
RESHAPES = ("auto", "none")
#: A reshape as given: ``auto``, ``none`` or ``fn(tensor [N, ...]) -> [N, C, h, w]``.
Reshape = str | Callable[[torch.Tensor], torch.Tensor]
#: The most prefix tokens ``auto`` drops before the square grid of a token output.
MAX_PREFIX = 8


class ReshapeError(LayerError):
    """A target layer's output that the reshape cannot turn into channel maps ``[N, C, h, w]``."""


def check_reshape(reshape: object) -> Reshape:
    """``reshape`` when it is ``auto``, ``none`` or a callable; else ``ReshapeError``."""
    if (isinstance(reshape, str) and reshape in RESHAPES) or (callable(reshape) and not isinstance(reshape, str)):
        return reshape
    raise ReshapeError(f"reshape must be 'auto', 'none' or a callable tensor -> [N, C, h, w], got {reshape!r}")


@dataclass
class TokenMap:
    """Where each element of the channel maps ``[C, h, w]`` (``index``, long) sits in one image's
    flattened layer output of shape ``raw``; ``what`` says which layout it reads."""

    raw: tuple[int, ...]
    index: torch.Tensor
    what: str
    _on: dict[torch.device, torch.Tensor] = field(default_factory=dict, repr=False)

    def _flat(self, device: torch.device) -> torch.Tensor:
        if device not in self._on:
            self._on[device] = self.index.flatten().to(device)
        return self._on[device]

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, h, w)``: one image's maps."""
        return tuple(self.index.shape)

    def maps(self, out: torch.Tensor) -> torch.Tensor:
        """The layer's output ``[N, *raw]`` as channel maps ``[N, C, h, w]`` (a new tensor)."""
        return gather_maps(out, self._flat(out.device), list(self.shape))

    def layout(self, maps: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` ``[N, *raw]`` with ``maps`` ``[N, C, h, w]`` written back where they came from (the
        rest, such as prefix tokens, kept); out of place, so differentiable in ``maps``."""
        return scatter_maps(maps, out, self._flat(maps.device))

    def key(self) -> str:
        """A short text that names this map, for the terminal store's keys."""
        digest = hashlib.sha256(self.index.cpu().numpy().tobytes()).hexdigest()[:12]
        return f"{self.what}/{'x'.join(map(str, self.raw))}/{digest}"


def parse_reshape(text: str) -> Reshape:
    """A reshape given as text: ``auto``, ``none`` or ``package.module:function`` (a callable like
    grad-cam's ``reshape_transform``, imported here); ``ReshapeError`` when it cannot be imported."""
    text = text.strip()
    if text.lower() in RESHAPES:
        return text.lower()
    if ":" not in text:
        raise ReshapeError(f"reshape {text!r}: give auto, none or a Python callable package.module:function")
    try:
        fn = import_attr(text)
    except ImportError as e:
        raise ReshapeError(f"cannot import the reshape {text!r} ({e}); is its module on PYTHONPATH?") from None
    except (AttributeError, ValueError) as e:
        raise ReshapeError(f"cannot import the reshape {text!r}: {e}") from None
    except Exception as e:  # the module's own code fails on import (SyntaxError, NameError, ...)
        raise ReshapeError(f"the module of the reshape {text!r} fails on import "
                           f"({first_line(e, with_type=True)})") from None
    if not callable(fn):
        raise ReshapeError(f"the reshape {text!r} is a {type(fn).__name__}, not a callable tensor -> [N, C, h, w]")
    return fn


def reshape_text(reshape: Reshape) -> str:
    """``reshape`` as text ``parse_reshape`` reads back: its name, or ``module:qualname`` of a
    callable (``<lambda>`` and other local callables in it cannot be imported again)."""
    if isinstance(reshape, str):
        return reshape
    return f"{getattr(reshape, '__module__', '?')}:{getattr(reshape, '__qualname__', type(reshape).__name__)}"


def gather_maps(out: torch.Tensor, index: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """``out`` ``[N, ...]`` as maps ``[N, *shape]``: the elements of each image's flattened output at
    ``index`` ``[C * h * w]`` (TorchScript compiles it: the explainer file's halves call it too)."""
    return out.flatten(1).index_select(1, index).view([out.shape[0]] + shape)


def scatter_maps(maps: torch.Tensor, out: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out`` ``[N, ...]`` with ``maps`` ``[N, C, h, w]`` written at ``index`` (``gather_maps``' inverse)."""
    return torch.index_copy(out.flatten(1), 1, index, maps.flatten(1)).view(out.shape)


def _positions(raw: tuple[int, ...]) -> torch.Tensor:
    """One image's element positions ``[1, *raw]`` (float64: exact integers)."""
    return torch.arange(math.prod(raw), dtype=torch.float64).view(1, *raw)


def _tokens(layer: str, out: torch.Tensor) -> TokenMap:
    n, t, c = out.shape
    side = math.isqrt(t)
    prefix = t - side * side
    if side == 0 or prefix > MAX_PREFIX:
        raise ReshapeError(f"layer {layer!r} outputs tokens {[n, t, c]}: {t} tokens are not a square grid after at "
                           f"most {MAX_PREFIX} prefix tokens; give a reshape callable that returns [N, C, h, w] "
                           f"(--reshape module:fn, reshape=fn)")
    grid = _positions((t, c))[:, prefix:].reshape(1, side, side, c).permute(0, 3, 1, 2)
    return TokenMap((t, c), grid[0].long(), f"tokens-{prefix}")


def _channels_last(module: nn.Module, out: torch.Tensor) -> bool:
    """Whether a 4-D output of ``module`` is ``[N, h, w, C]`` by ``auto``'s rule (module docstring)."""
    if "Swin" in kind(module):
        return True
    size = None
    if isinstance(module, nn.LayerNorm) and module.normalized_shape:
        size = module.normalized_shape[-1]
    elif isinstance(module, nn.Linear):
        size = module.out_features
    return size is not None and out.shape[3] == size and out.shape[1] != size


def _custom(fn: Callable[[torch.Tensor], torch.Tensor], layer: str, out: torch.Tensor) -> TokenMap:
    """The map of a reshape callable, which must only select and move elements (slicing, ``reshape``,
    ``permute``, ``transpose``: grad-cam's ``reshape_transform`` for ViT and Swin)."""
    raw = tuple(out.shape[1:])
    only = "a reshape callable must only select and move elements (slicing, reshape, permute)"
    try:
        got = fn(_positions(raw))
        same = fn(out.detach())
    except Exception as e:  # the user's code: any error on the layer's output
        first = first_line(e)
        raise ReshapeError(f"the reshape of layer {layer!r} fails on its output {list(out.shape)}: {first}") from None
    if not isinstance(got, torch.Tensor) or got.dim() != 4 or got.shape[0] != 1:
        what = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise ReshapeError(f"the reshape of layer {layer!r} turns its output {list(out.shape)} into {what}, not "
                           f"channel maps [N, C, h, w]")
    index = got[0].long()
    if (not torch.equal(index.to(got.dtype), got[0]) or index.unique().numel() != index.numel()
            or int(index.min()) < 0 or int(index.max()) >= math.prod(raw)):
        raise ReshapeError(f"the reshape of layer {layer!r} computes new values; {only}")
    tokens = TokenMap(raw, index, "custom")
    if not isinstance(same, torch.Tensor) or not torch.equal(same, tokens.maps(out.detach())):
        raise ReshapeError(f"the reshape of layer {layer!r} depends on the values of its output; {only}")
    return tokens


def token_map(reshape: Reshape, layer: str, module: nn.Module, out: object) -> TokenMap | None:
    """How ``reshape`` reads the output ``out`` of ``layer`` (``module``) as channel maps, or None when
    the output is used as it is (``none``; ``auto`` on anything but tokens or channels-last)."""
    if reshape == "none" or not isinstance(out, torch.Tensor):
        return None
    if callable(reshape):
        return _custom(reshape, layer, out)
    if out.dim() == 3:
        return _tokens(layer, out)
    if out.dim() == 4 and _channels_last(module, out):
        raw = tuple(out.shape[1:])
        return TokenMap(raw, _positions(raw).permute(0, 3, 1, 2)[0].long(), "channels-last")
    return None
