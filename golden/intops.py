"""Integer primitives of the integer contract (DESIGN.md, "The integer contract").

Every op of the golden model is written with these and nothing else.  All tensors are
torch integer tensors (int64 unless said otherwise); no function here creates a float
tensor except :func:`exact_matmul`, which checks its own exactness bound and is the one
place the integer-only guard allows floating point.
"""

from __future__ import annotations

import contextlib
import threading

import torch

__all__ = [
    "rshift_round", "clamp", "requant", "div_round", "div_floor", "isqrt",
    "signed_range", "unsigned_range", "rounding_half", "requant_", "exact_matmul", "in_exact_matmul",
]


def signed_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def unsigned_range(bits: int) -> tuple[int, int]:
    return 0, (1 << bits) - 1


def rshift_round(v: torch.Tensor, e) -> torch.Tensor:
    """``(v + 2^(e-1)) >> e`` for e >= 1 (arithmetic shift), ``v`` for e = 0.

    ``e`` is an int or an integer tensor broadcastable to ``v`` (per-channel shifts).
    """
    if isinstance(e, int):
        if e < 0:
            raise ValueError(f"rshift_round: shift {e} < 0")
        if e == 0:
            return v
        return (v + (1 << (e - 1))) >> e
    e = e.to(torch.int64)
    return (v + rounding_half(e)) >> e


def rounding_half(e: torch.Tensor) -> torch.Tensor:
    """``2^(e-1)`` where e >= 1, 0 where e = 0: the rounding offset of :func:`rshift_round`."""
    if bool((e < 0).any()):
        raise ValueError("rshift_round: negative shift")
    return torch.where(e > 0, torch.ones_like(e) << (e - 1).clamp(min=0), torch.zeros_like(e))


def clamp(v: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return v.clamp(min=lo, max=hi)


def requant(acc: torch.Tensor, m, e, lo: int, hi: int) -> torch.Tensor:
    """Dyadic requantization ``clamp(rshift_round(acc * m, e), lo, hi)``.

    ``m`` (unsigned, ``mult_bits`` wide) and ``e`` are ints or tensors broadcastable
    along the last axis (per output channel).
    """
    return clamp(rshift_round(acc * m, e), lo, hi)


def requant_(acc: torch.Tensor, m, e, lo: int, hi: int, offset=0) -> torch.Tensor:
    """In-place ``clamp((acc * m + offset + 2^(e-1)) >> e, lo, hi)``: :func:`requant` of
    ``acc + offset / m`` when ``offset`` is a multiple of m (a bias folded as bias * m).

    Same bits as :func:`requant`; in place to spare the golden executor copies of large
    tensors, so ``acc`` must be a fresh int64 tensor nobody else holds.
    """
    half = rounding_half(e) if isinstance(e, torch.Tensor) else ((1 << (e - 1)) if e > 0 else 0)
    if not (isinstance(m, int) and m == 1):
        acc.mul_(m)
    return acc.add_(offset + half).bitwise_right_shift_(e).clamp_(lo, hi)


def div_floor(a: torch.Tensor, b) -> torch.Tensor:
    """Floor division of integers (``b`` > 0)."""
    return torch.div(a, b, rounding_mode="floor")


def div_round(a: torch.Tensor, b) -> torch.Tensor:
    """Round-half-up division ``floor((2a + b) / 2b)`` of integers (``b`` > 0)."""
    return torch.div(2 * a + b, 2 * b, rounding_mode="floor")


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """Exact floor square root of non-negative int64 values (< 2^62).

    Digit-by-digit (two bits a step), the same algorithm the hardware unit uses, so the
    golden model and the RTL agree by construction of the definition, not by luck.
    """
    if bool((v < 0).any()):
        raise ValueError("isqrt of a negative value")
    rem = v.clone()
    root = torch.zeros_like(v)
    bit = 1 << 62
    while bit > 0:
        trial = root + bit
        take = rem >= trial
        rem = torch.where(take, rem - trial, rem)
        root = torch.where(take, (root >> 1) + bit, root >> 1)
        bit >>= 2
    return root


# --- exact matrix products through floating-point BLAS -----------------------------------

_scope = threading.local()


def in_exact_matmul() -> bool:
    """True while :func:`exact_matmul` runs (the integer-only guard allows floats there)."""
    return getattr(_scope, "depth", 0) > 0


@contextlib.contextmanager
def _exact_scope():
    _scope.depth = getattr(_scope, "depth", 0) + 1
    try:
        yield
    finally:
        _scope.depth -= 1


# float32 represents every integer of magnitude <= 2^24 exactly, float64 every one <= 2^53.
# If |a| <= A, |b| <= B and the reduction length is K, every partial sum of a row-by-column
# product is an integer of magnitude <= A*B*K; while that bound holds every intermediate
# (product, FMA, partial sum in any order BLAS chooses) is exact.
_F32_EXACT = 1 << 24
_F64_EXACT = 1 << 53


def exact_matmul(a: torch.Tensor, b: torch.Tensor, a_max: int, b_max: int) -> torch.Tensor:
    """Integer ``a @ b`` (int64 result), computed with float BLAS where that is exact.

    ``a_max`` and ``b_max`` bound the magnitudes of the operands (from their declared
    bit widths, not from the data).  The bound ``a_max * b_max * K`` decides between
    float32 (< 2^24), float64 (< 2^53) and a plain int64 product otherwise.
    """
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        raise TypeError("exact_matmul takes integer tensors")
    k = a.shape[-1]
    bound = a_max * b_max * k
    if bound >= _F64_EXACT:
        return torch.matmul(a.to(torch.int64), b.to(torch.int64))
    # No int64 round trip: integer -> float conversion is exact below these bounds.
    if torch.get_float32_matmul_precision() != "highest":
        raise RuntimeError("exact_matmul needs float32 matmul precision 'highest'")
    dtype = torch.float32 if bound < _F32_EXACT else torch.float64
    with _exact_scope():
        return torch.matmul(a.to(dtype), b.to(dtype)).to(torch.int64)
