"""Compile-time conversion of real multipliers into dyadic integers ``m / 2^e``.

This runs when a graph is built (floats allowed), never at inference.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import UserError

MULT_BITS = 16    # unsigned requantization multipliers are mult_bits wide
MAX_SHIFT = 62


class RangeError(UserError):
    """A constant or width does not fit: the message names the op and the bound."""


def to_dyadic(real, mult_bits: int = MULT_BITS, what: str = "requant") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element ``m, e`` with ``m / 2^e ~ real``, ``0 <= m < 2^mult_bits``, ``0 <= e <= 62``.

    ``e`` is as large as the multiplier width allows (most precision).
    """
    r = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise RangeError(f"{what}: multiplier must be finite and >= 0")
    limit = (1 << mult_bits) - 1
    if np.any(r > limit):
        raise RangeError(f"{what}: multiplier {r.max():.4g} exceeds the {mult_bits}-bit range (< 2^{mult_bits})")
    m = np.zeros(r.shape, dtype=np.int64)
    e = np.zeros(r.shape, dtype=np.int64)
    for i, v in np.ndenumerate(r):
        if v == 0:
            continue
        ei = min(MAX_SHIFT, int(math.floor(math.log2(limit / v))))
        mi = int(round(v * 2.0 ** ei))
        while mi > limit:
            ei -= 1
            mi = int(round(v * 2.0 ** ei))
        if ei < 0:
            raise RangeError(f"{what}: multiplier {v:.4g} needs a negative shift")
        m[i], e[i] = mi, ei
    return torch.from_numpy(m), torch.from_numpy(e)


def to_dyadic_shared(real, mult_bits: int = MULT_BITS, signed: bool = False,
                     what: str = "requant") -> tuple[torch.Tensor, int]:
    """Multipliers sharing one shift ``e``: ``m_i / 2^e ~ real_i`` (m signed if ``signed``)."""
    r = np.atleast_1d(np.asarray(real, dtype=np.float64))
    limit = (1 << (mult_bits - 1 if signed else mult_bits)) - 1
    peak = float(np.abs(r).max())
    if not signed and np.any(r < 0):
        raise RangeError(f"{what}: negative multiplier in an unsigned requantizer")
    if peak == 0:
        return torch.zeros(r.shape, dtype=torch.int64), 0
    e = min(MAX_SHIFT, int(math.floor(math.log2(limit / peak))))
    while np.abs(np.round(r * 2.0 ** e)).max() > limit:
        e -= 1
    if e < 0:
        raise RangeError(f"{what}: multiplier {peak:.4g} exceeds the {mult_bits}-bit range")
    return torch.from_numpy(np.round(r * 2.0 ** e).astype(np.int64)), e
