"""``Terminals``: the named tensors (gradients, CIC scores, ...) expressions are evaluated on."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch

from ..errors import ShapeError
from ..lang.terminals import TERMINALS
from ..lang.types import Type

_RANKS = {Type.VEC: 2, Type.MAP: 4}
_SHAPES = {Type.VEC: "[N, K]", Type.MAP: "[N, K, h, w]"}


def map_hw(values: Iterable[torch.Tensor]) -> tuple[int, int] | None:
    """``(h, w)`` of the first Map value (``[N, K, h, w]``) among ``values``, None when there is none."""
    for v in values:
        if v.dim() == 4:
            return (v.shape[2], v.shape[3])
    return None


class Terminals(Mapping[str, torch.Tensor]):
    """Terminal name -> tensor, all for the same ``N`` images and ``K`` channels.

    Vec terminals are ``[N, K]``, Map terminals ``[N, K, h, w]``; every tensor is floating point
    and on one device. A tensor that does not fit raises ``ShapeError`` naming the terminal."""

    def __init__(self, values: Mapping[str, torch.Tensor]) -> None:
        if not values:
            raise ShapeError("no terminal values given")
        self._values: dict[str, torch.Tensor] = {}
        ref: tuple[str, torch.Tensor] | None = None
        for name, v in values.items():
            if name not in TERMINALS:
                raise ShapeError(f"unknown terminal {name!r} (known: {' '.join(TERMINALS)})")
            t = TERMINALS[name][0]
            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                raise ShapeError(f"terminal {name!r} must be a floating-point tensor, got {type(v).__name__}"
                                 + (f" of {v.dtype}" if isinstance(v, torch.Tensor) else ""))
            if v.dim() != _RANKS[t]:
                raise ShapeError(f"terminal {name!r} is a {t} and must be {_SHAPES[t]}, got shape {list(v.shape)}")
            if ref is not None:
                rname, r = ref
                if v.shape[:2] != r.shape[:2]:
                    raise ShapeError(f"terminal {name!r} has N, K = {tuple(v.shape[:2])} but {rname!r} has "
                                     f"{tuple(r.shape[:2])}")
                if v.device != r.device:
                    raise ShapeError(f"terminal {name!r} is on {v.device} but {rname!r} is on {r.device}")
                if v.dtype != r.dtype:
                    raise ShapeError(f"terminal {name!r} is {v.dtype} but {rname!r} is {r.dtype}")
            ref = ref or (name, v)
            self._values[name] = v
        maps = [(n, v) for n, v in self._values.items() if v.dim() == 4]
        for n, v in maps[1:]:
            if v.shape[2:] != maps[0][1].shape[2:]:
                raise ShapeError(f"terminal {n!r} has h, w = {tuple(v.shape[2:])} but {maps[0][0]!r} has "
                                 f"{tuple(maps[0][1].shape[2:])}")

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._values[name]
        except KeyError:
            raise ShapeError(f"terminal {name!r} is needed but was not computed (have: "
                             f"{' '.join(self._values)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def _ref(self) -> torch.Tensor:
        return next(iter(self._values.values()))

    @property
    def n(self) -> int:
        return self._ref.shape[0]

    @property
    def k(self) -> int:
        return self._ref.shape[1]

    @property
    def hw(self) -> tuple[int, int] | None:
        """Spatial size of the Map terminals, or None when there are none."""
        return map_hw(self._values.values())

    @property
    def device(self) -> torch.device:
        return self._ref.device

    @property
    def dtype(self) -> torch.dtype:
        return self._ref.dtype

    def subset(self, index: Sequence[int] | torch.Tensor) -> Terminals:
        """The same terminals for the images at ``index``."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return Terminals({n: v.index_select(0, idx) for n, v in self._values.items()})

    def to(self, device: str | torch.device) -> Terminals:
        return Terminals({n: v.to(device) for n, v in self._values.items()})

    def check_finite(self) -> None:
        """Raise ``ShapeError`` naming the terminal and image of the first NaN or Inf."""
        for n, v in self._values.items():
            bad = ~torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ShapeError(f"terminal {n!r} has NaN or Inf values for image {i}")

    @staticmethod
    def random(names: Sequence[str], n: int = 10, k: int = 64, hw: tuple[int, int] = (7, 7), seed: int = 0,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Terminals:
        """Seeded stand-in values for ``names``: standard normal, shaped by each terminal's type.

        Each terminal draws from its own generator (seed and name), so adding a terminal does not
        change the others' values."""
        out = {}
        for name in names:
            if name not in TERMINALS:
                raise ShapeError(f"unknown terminal {name!r} (known: {' '.join(TERMINALS)})")
            shape = [n, k] if TERMINALS[name][0] == Type.VEC else [n, k, *hw]
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            out[name] = torch.randn(shape, generator=g, dtype=dtype).to(device)
        return Terminals(out)
