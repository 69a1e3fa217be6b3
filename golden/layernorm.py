"""Integer LayerNorm (DESIGN.md, "LayerNorm").

For a row x of C integers (the residual stream):

* ``mean = round(sum(x) / C)`` (round half up), ``y = x - mean``
* ``var = sum(y^2)``, ``std = isqrt(var)`` (exact floor square root)
* ``factor = floor((2^31 - 1) / max(std, 1))``: a zero-variance row has y = 0 and gets
  beta alone, without a division by zero
* ``z = y * factor``; since every y_i^2 <= var, |y_i| <= std and |z| < 2^31
* ``out = clamp(rshift_round(z * M_c + B_c, e), lo, hi)``: M_c (signed, gamma folded in
  with sqrt(C)) and B_c (beta) per channel, one shift e per layer.

z sqrt(C) / 2^31 is (x - mean) / sigma, so M_c / 2^e = gamma_c sqrt(C) / (2^31 S_out) and
B_c / 2^e = beta_c / S_out.  LayerNorm's epsilon (1e-6 in real units) is below one unit
of var for every calibrated scale we produce, and is left out.
"""

from __future__ import annotations

import math

import torch

from .dyadic import MULT_BITS, to_dyadic_shared
from .intops import div_round, isqrt, rshift_round, signed_range

FACTOR_BITS = 31


def build_layernorm(gamma: torch.Tensor, beta: torch.Tensor, s_out: float, out_bits: int,
                    mult_bits: int = MULT_BITS, name: str = "layernorm") -> dict:
    c = gamma.numel()
    real_m = gamma.double().numpy() * math.sqrt(c) / (2.0 ** FACTOR_BITS * s_out)
    m, e = to_dyadic_shared(real_m, mult_bits, signed=True, what=name)
    b = torch.round(beta.double() / s_out * 2.0 ** e).to(torch.int64)
    return {"attrs": {"out_bits": out_bits, "e": e, "channels": c},
            "consts": {"m": m, "b": b}, "meta": {"s_out": s_out}}


def layernorm_int(x: torch.Tensor, attrs: dict, consts: dict) -> torch.Tensor:
    x = x.to(torch.int64)
    c = x.shape[-1]
    mean = div_round(x.sum(dim=-1, keepdim=True), c)
    y = x - mean
    var = (y * y).sum(dim=-1, keepdim=True)
    std = isqrt(var).clamp(min=1)
    factor = ((1 << FACTOR_BITS) - 1) // std
    z = y * factor
    return rshift_round(z * consts["m"] + consts["b"], attrs["e"]).clamp(*signed_range(attrs["out_bits"]))


def layernorm_reference(x: torch.Tensor, s_in: float, gamma, beta, s_out: float, eps: float = 1e-6):
    """Float LayerNorm of the dequantized input, in output units (for error reports only)."""
    return torch.nn.functional.layer_norm(x.double() * s_in, (x.shape[-1],), gamma.double(),
                                          beta.double(), eps) / s_out
