"""Shift-based exponential and Softmax (DESIGN.md, "Shift-based exponential").

Scores arrive at a power-of-two scale 2^-f.  For x = s - max(s) <= 0:

* ``p = x + (x >> 1) - (x >> 4)``   x * 1.4375, an approximation of x * log2(e)
* ``n = -p``; ``q = n >> f``; ``r = n & (2^f - 1)``  so that e^x ~ 2^-q * 2^(-r / 2^f)
* ``g = 2^(-t)`` for t = r / 2^f in [0, 1) by a polynomial of degree <= 2, evaluated in
  Horner form on integers with coefficients at scale 2^-C (C = :data:`EXP_FRAC_BITS`):
  ``h = rshift_round(K2 * r, f) + K1``; ``g = rshift_round(h * r, f) + K0``
* ``exp = rshift_round(g, q)``  (q is clamped to C + 2, beyond which the result is 0)

The variants differ only in (K2, K1, K0):

``linear``
    I-ViT Shiftmax: 2^-t ~ 1 - t/2 (max error 0.0430), on I-ViT's own 1.4375 shift-add.
``ibert``
    I-BERT's second-order polynomial, e^p ~ 0.35815147 p^2 + 0.96963238 p + 1 on
    p in (-ln 2, 0] (I-BERT's i-exp publishes it as 0.3585 (p + 1.353)^2 + 0.344, the same
    curve within 3e-4 on that interval), rewritten in t (max error 0.0019).  How it
    differs from I-BERT: I-BERT splits x = -z ln 2 + p with z = floor(-x / ln 2), computed as an integer
    division by floor(ln 2 / S), and evaluates ``(q_p + floor(b/S))^2 + floor(c/(a S^2))``
    at the input scale before shifting by z.  Here the split is the base-2 one above:
    q = floor(-x log2 e) and t = frac(-x log2 e), which is the same split (q = z and
    p = -t ln 2) except that log2 e is the shift-add 1.4375 (0.36% low in the exponent;
    I-BERT's floor(ln 2 / S) has a rounding error of its own, below 1 / (2^f ln 2) relative),
    and the polynomial is evaluated in t in Horner form with its coefficients rounded to
    2^-C.  Same polynomial, same split up to that constant; not I-BERT's integer steps.
``shiftfit``
    Ours: 2^-t ~ 1 - (43/64) t + (11/64) t^2, the least-squares quadratic constrained to
    be exact at t = 0 and t = 1 (so the exponential is continuous and monotonic across
    integer steps of q), with both coefficients rounded to 6 fractional bits: the constant
    multipliers are 43 = 32+8+2+1 and 11 = 8+2+1, three adders each (max error 0.0021).

Softmax then takes one reciprocal per row, ``recip = floor((2^R - 1) / sum(exp))``, and
``out = clamp(rshift_round(exp * recip, R - out_bits), 0, 2^out_bits - 1)``, unsigned at
scale 2^-out_bits.
"""

from __future__ import annotations

import functools
import math

import torch

from .intops import requant_, rshift_round

EXP_VARIANTS = ("linear", "ibert", "shiftfit")
EXP_FRAC_BITS = 15        # C: exp values are at scale 2^-C, the row maximum maps to 2^C
RECIP_BITS = 32           # R: recip = floor((2^R - 1) / sum)

_LN2 = math.log(2.0)
_EXP_POLY = {  # 2^-t ~ c2 t^2 + c1 t + c0 on t in [0, 1)
    "linear": (0.0, -0.5, 1.0),
    "ibert": (0.35815147 * _LN2 * _LN2, -0.96963238 * _LN2, 1.0),
    "shiftfit": (11 / 64, -43 / 64, 1.0),
}


def exp_coefficients(variant: str, frac_bits: int = EXP_FRAC_BITS) -> tuple[int, int, int]:
    """Integer (K2, K1, K0) of a variant at scale 2^-frac_bits."""
    if variant not in _EXP_POLY:
        raise ValueError(f"unknown exponential variant {variant!r}; accepted: {', '.join(EXP_VARIANTS)}")
    return tuple(int(round(c * (1 << frac_bits))) for c in _EXP_POLY[variant])


def shift_exp(x: torch.Tensor, f: int, variant: str, frac_bits: int = EXP_FRAC_BITS) -> torch.Tensor:
    """e^(x * 2^-f) for integer x <= 0, as an integer at scale 2^-frac_bits."""
    if f < 1:
        raise ValueError(f"shift_exp needs f >= 1, got {f}")
    k2, k1, k0 = exp_coefficients(variant, frac_bits)
    x = x.to(torch.int64)
    p = x + (x >> 1) - (x >> 4)
    n = -p
    q = (n >> f).clamp(max=frac_bits + 2)
    r = n & ((1 << f) - 1)
    h = rshift_round(k2 * r, f) + k1
    g = rshift_round(h * r, f) + k0
    return rshift_round(g, q)


EXP_TABLE_SPAN = 1 << 17   # x in [-(2^17 - 1), 0] covers 16-bit scores minus their maximum


@functools.lru_cache(maxsize=64)
def _exp_table(f: int, variant: str, frac_bits: int) -> torch.Tensor:
    """shift_exp over its whole 17-bit domain, indexed by -x (a speed-up of the golden
    executor only: the entries are shift_exp's own outputs, so the bits are the same)."""
    return shift_exp(-torch.arange(EXP_TABLE_SPAN, dtype=torch.int64), f, variant, frac_bits)


def shift_softmax(s: torch.Tensor, f: int, variant: str, out_bits: int = 8,
                  recip_bits: int = RECIP_BITS, frac_bits: int = EXP_FRAC_BITS) -> torch.Tensor:
    """Softmax over the last axis of integer scores at scale 2^-f; unsigned out_bits result."""
    s = s.to(torch.int64)
    x = s - s.amax(dim=-1, keepdim=True)
    if x.numel() and int(x.min()) > -EXP_TABLE_SPAN:
        e = _exp_table(f, variant, frac_bits)[-x]
    else:
        e = shift_exp(x, f, variant, frac_bits)
    total = e.sum(dim=-1, keepdim=True)          # >= 2^frac_bits: the maximum gives K0
    recip = ((1 << recip_bits) - 1) // total
    return requant_(e * recip, 1, recip_bits - out_bits, 0, (1 << out_bits) - 1)


def float_exp(x: torch.Tensor, f: int, frac_bits: int = EXP_FRAC_BITS) -> torch.Tensor:
    """Reference: e^(x 2^-f) in units of 2^-frac_bits (float, for error reports only)."""
    return torch.exp(x.double() * 2.0 ** -f) * 2.0 ** frac_bits


def float_softmax(s: torch.Tensor, f: int, out_bits: int = 8) -> torch.Tensor:
    """Reference: softmax(s 2^-f) in units of 2^-out_bits (float, for error reports only)."""
    return torch.softmax(s.double() * 2.0 ** -f, dim=-1) * 2.0 ** out_bits
