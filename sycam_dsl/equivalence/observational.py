"""Observational equivalence: terms whose values agree after rounding are the same term.

Tolerance: every float32 value is truncated to its ``mantissa_bits`` leading significant bits
(default 16: values within a relative ~2**-16 = 1.5e-5 of each other mostly agree), and two terms
are equivalent when their truncated values agree at every position of every image. Values that
straddle a truncation boundary, and ``0.0`` against ``-0.0``, fail to merge; that costs pruning,
never correctness, because only terms with equal truncated values are ever merged.

Values are compared through fingerprints: two 64-bit hashes of the truncated bit patterns, one
over all positions and one over a fixed random sample of them, computed for a whole batch with
integer tensor arithmetic (exact, so equal values always give equal fingerprints; two different
values share both hashes with probability about 2**-64 per pair). Truncation is a bit mask on
the float's bits, applied to pairs of float32 viewed as one int64, which is the cheapest exact
rounding torch offers on the CPU.
"""

from __future__ import annotations

from functools import lru_cache

import torch

DEFAULT_MANTISSA_BITS = 16
_SAMPLE = 256


@lru_cache(maxsize=16)
def _multipliers(length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0x5CA7)
    full = torch.randint(-(2 ** 62), 2 ** 62, (length,), generator=g, dtype=torch.int64) | 1
    sample = torch.randperm(length, generator=g)[:_SAMPLE]
    second = torch.randint(-(2 ** 62), 2 ** 62, (len(sample),), generator=g, dtype=torch.int64) | 1
    return full.to(device), sample.to(device), second.to(device)


@lru_cache(maxsize=8)
def _mask(mantissa_bits: int) -> int:
    """An int64 mask that keeps sign, exponent and leading mantissa bits of two packed float32."""
    if not 1 <= mantissa_bits <= 23:
        raise ValueError("mantissa_bits must be between 1 and 23")
    half = (0xFFFFFFFF << (23 - mantissa_bits)) & 0xFFFFFFFF
    m = half | (half << 32)
    return m - (1 << 64) if m >= 1 << 63 else m


def truncated_bits(values: torch.Tensor, mantissa_bits: int = DEFAULT_MANTISSA_BITS) -> torch.Tensor:
    """``[B, ...]`` values as ``[B, D]`` int64 codes of truncated float32 pairs (D = ceil(size / 2))."""
    flat = values.reshape(values.shape[0], -1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    if flat.shape[1] % 2:
        flat = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1)
    return flat.contiguous().view(torch.int64) & _mask(mantissa_bits)


def fingerprints(values: torch.Tensor, mantissa_bits: int = DEFAULT_MANTISSA_BITS) -> list[tuple[int, int]]:
    """One fingerprint per row of ``values`` ``[B, ...]``: equal truncated values, equal fingerprints."""
    q = truncated_bits(values, mantissa_bits)
    full, sample, second = _multipliers(q.shape[1], q.device)
    h2 = (q.index_select(1, sample) * second).sum(dim=1)
    h1 = q.mul_(full).sum(dim=1)  # in place: q is ours, and one allocation less per batch
    return list(zip(h1.tolist(), h2.tolist()))


class ValueIndex:
    """The fingerprints seen so far, each with the first (smallest) term that had it."""

    def __init__(self, mantissa_bits: int = DEFAULT_MANTISSA_BITS) -> None:
        self.mantissa_bits = mantissa_bits
        self._seen: dict[tuple[int, int], object] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: tuple[int, int], term: object) -> object | None:
        """Record ``term`` under ``key`` unless taken; returns the earlier term if there was one."""
        prev = self._seen.get(key)
        if prev is None:
            self._seen[key] = term
        return prev
