"""The four types of the weight language and how they combine.

Values of each type, as stored by the evaluator (leading dimensions are free, e.g. a batch of
candidates ``C``):

* ``Vec``  ``[..., N, K]``        one weight per image and channel
* ``Map``  ``[..., N, K, h, w]``  one weight per image, channel and position
* ``Real`` ``[..., 1, 1]``        a constant, broadcast everywhere
* ``Int``  a Python ``int``       only as the parameter of ``topk`` / ``pow`` (or as a Real)
"""

from __future__ import annotations

import enum


class Type(enum.Enum):
    INT = "Int"
    REAL = "Real"
    VEC = "Vec"
    MAP = "Map"

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        """Broadcast rank: Int and Real < Vec < Map."""
        return _RANK[self]

    @property
    def is_scalar(self) -> bool:
        return self in (Type.INT, Type.REAL)

    @property
    def is_tensor(self) -> bool:
        return self in (Type.VEC, Type.MAP)


_RANK = {Type.INT: 0, Type.REAL: 0, Type.VEC: 1, Type.MAP: 2}

TYPE_NAMES = {t.value: t for t in Type}


def broadcast(*types: Type) -> Type:
    """Result type of an element-wise operator: the widest operand, scalars giving Real."""
    widest = max(types, key=lambda t: t.rank)
    return Type.REAL if widest.is_scalar else widest


def parse_type(name: str) -> Type | None:
    return TYPE_NAMES.get(name)
