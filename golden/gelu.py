"""Integer GELU variants (DESIGN.md, "GELU").

GELU(x) = x/2 * (1 + erf(x / sqrt 2)).  Input q is signed ``in_bits`` at scale S_in,
output signed ``out_bits`` at scale S_out.  Each variant has a compile-time builder
(floats allowed: it turns scales into integer constants) and one integer function.

``ibert`` / ``iptq`` (polynomial erf, degree d even)
    erf(t) ~ sgn(t) [a (min(|t|, -b) + b)^d + 1] with t = q S_t, S_t = S_in / sqrt 2.
    With ``Qb = round(-b / S_t)`` and ``P = (min(|q|, Qb) - Qb)^d`` (>= 0), and a < 0:
    ``erf_int = sgn(q) (Qc - rshift_round(P, sh))`` at scale |a| S_t^d 2^sh, where
    ``Qc = round(1 / (|a| S_t^d 2^sh))`` and ``sh`` keeps Qc within :data:`ERF_BITS` bits.
    Then ``gelu = requant(q (Qc + erf_int), m, e)``.
    ``ibert``: d = 2, a = -0.2888, b = -1.769: I-BERT's i-GELU (erf by
    ``sgn(q) [(min(|q|, -b/S) + b/S)^2 + 1/(a S^2)]`` at scale a S^2, then
    ``q (erf + 1/S_erf)``).  How it differs from I-BERT's integer form: the constants b/S
    and 1/(a S^2) are rounded here (I-BERT floors them), the square is right-shifted by
    ``sh`` so that ``Qc`` fits :data:`ERF_BITS` bits (I-BERT keeps the full square), and the
    output is requantized to ``out_bits`` by a dyadic multiplier.
    ``iptq``: d = 4, a and b fitted per layer by weighted least squares to that layer's
    calibration data (IPTQ-ViT's "polynomial GELU optimized for vision data"; the paper's
    exact objective and degree are not public: ours minimizes the squared GELU output error
    over the calibration inputs, see :func:`calib_fit_points`).
``ishift``
    I-ViT ShiftGELU, x sigma(1.702 x).  How it differs from I-ViT: I-ViT forms 1.702 x by
    the shift-add x + x>>1 + x>>3 + x>>4 (1.6875), subtracts the row maximum, evaluates
    e^(y - max) and e^(-max) with its ShiftExp and divides with its IntDiv (2^M // sum, then
    a multiply and shift).  Here 1.702 is a dyadic requant, sigma is taken as
    1/(1 + e^-|y|) (or its complement for y < 0: the same function, one exponential of
    -|y| <= 0 and no row maximum), the exponential is this library's shift exponential
    (``exp_variant``; ``linear`` is I-ViT's 1 + r/2), and the division is an exact floor
    division.  ``y = requant(q, m_y, e_y)`` is 1.702 x at scale
    2^-fy (16 bits); ``E = shift_exp(-|y|, fy)`` = e^-|1.702x| at scale 2^-C;
    ``sig = ((y >= 0 ? 2^C : E) << SIG_BITS) // (2^C + E)``; ``gelu = requant(q sig, m, e)``.
``lut``
    An exact table over the whole input domain (``in_bits`` <= 10): entry i is
    round(GELU((i - 2^(in_bits-1)) S_in) / S_out), clamped.
"""

from __future__ import annotations

import math

import torch

from .dyadic import RangeError, to_dyadic
from .intops import requant, rshift_round, signed_range
from .softmax import EXP_FRAC_BITS, shift_exp

GELU_VARIANTS = ("ibert", "iptq", "ishift", "lut")
ERF_BITS = 14          # Qc < 2^ERF_BITS: keeps q * (Qc + erf) inside 8 + 15 + 1 bits
SIG_BITS = 15          # sigma at scale 2^-SIG_BITS
ISHIFT_Y_BITS = 16
LUT_MAX_IN_BITS = 10
IBERT_A, IBERT_B = -0.2888, -1.769
IPTQ_DEGREE = 4
QB_EXTRA_BITS = 2      # qb < 2^(in_bits + QB_EXTRA_BITS): the clip point's integer field (hwgen.gelu)


def fit_erf_poly(t_max: float, degree: int = IPTQ_DEGREE, t: torch.Tensor | None = None,
                 weight: torch.Tensor | None = None, c_max: float | None = None) -> tuple[float, float]:
    """Least-squares (a, b) of ``a (min(t, -b) + b)^d + 1 ~ erf(t)`` for t >= 0.

    Without ``t``: unweighted, on a uniform grid of t in [0, t_max].  With ``t`` (points,
    t >= 0) and ``weight`` (one non-negative weight per point): the weighted least squares
    on those points, which is how a layer's calibration data is fitted (see
    :func:`calib_fit_points`).  For each clip point c = -b on a grid, a has a closed form;
    the best pair wins.  ``c_max``: the largest clip point the integer format holds; when the
    best grid point lies beyond it, the best of the grid points up to it and ``c_max`` itself
    wins (a narrow calibration range can favour a clip far outside the input range).
    """
    t_max = max(float(t_max), 0.5)
    if t is None:
        t = torch.linspace(0.0, t_max, 4001, dtype=torch.float64)
        weight = torch.ones_like(t)
    else:
        t = t.to(torch.float64).abs()
        weight = torch.ones_like(t) if weight is None else weight.to(torch.float64)
        if float(weight.sum()) <= 0:
            raise ValueError("fit_erf_poly: the weights sum to zero")
    target = torch.erf(t) - 1.0
    grid = torch.linspace(0.25, max(4.0, t_max), 800, dtype=torch.float64)
    a, b = _best_clip(grid, t, weight, target, degree)
    if c_max is not None and -b > c_max:
        grid = torch.cat([grid[grid <= c_max], torch.tensor([float(c_max)], dtype=torch.float64)])
        a, b = _best_clip(grid, t, weight, target, degree)
    return a, b


def _best_clip(grid, t, weight, target, degree: int) -> tuple[float, float]:
    best = None
    for c in grid:
        g = (torch.clamp(t, max=c) - c) ** degree
        gw = g * weight
        den = float((gw * g).sum())
        if den <= 0:
            continue
        a = float((gw * target).sum() / den)
        err = float((weight * (a * g - target) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, a, -float(c))
    return best[1], best[2]


def calib_fit_points(counts: torch.Tensor, s_in: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The points and weights of a layer's ``iptq`` fit, from its calibration data.

    ``counts[i]`` is how often calibration saw the input level ``i - 2^(in_bits-1)``.  The
    fit minimizes the squared error of the GELU *output* over those inputs: GELU's error is
    ``x/2 * (erf error)``, so each level weighs ``count * t^2`` (t = x / sqrt 2).  Returns
    (t, weight, t_max), t_max the largest |t| calibration saw.
    """
    counts = counts.to(torch.float64)
    half = len(counts) // 2
    t = (torch.arange(len(counts), dtype=torch.float64) - half).abs() * s_in / math.sqrt(2.0)
    seen = counts > 0
    if not bool(seen.any()):
        raise ValueError("calib_fit_points: no calibration values")
    return t[seen], counts[seen] * t[seen] ** 2, float(t[seen].max())


def gelu_float(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def build_gelu(variant: str, s_in: float, s_out: float, in_bits: int, out_bits: int,
               calib_absmax: float | None = None, exp_variant: str = "linear",
               calib_counts: torch.Tensor | None = None) -> dict:
    """Integer constants of one GELU layer; returns the op's ``attrs`` and ``consts``.

    ``iptq`` is fitted to the layer's calibration data when ``calib_counts`` (how often each
    input level occurred in calibration, ``2^in_bits`` entries) is given (as
    :func:`golden.quantize.quantize_model` does), else over [0, calib_absmax], else over the
    whole representable input range.  The fitted (a, b) are compile-time floats; only the
    integer attrs they fold into (qb, qc, sh, m, e) reach the graph.
    """
    lo, hi = signed_range(out_bits)
    attrs = {"variant": variant, "in_bits": in_bits, "out_bits": out_bits}
    consts: dict[str, torch.Tensor] = {}
    meta = {"s_in": s_in, "s_out": s_out}
    if variant in ("ibert", "iptq"):
        if variant == "ibert":
            a, b, d = IBERT_A, IBERT_B, 2
        else:
            d = IPTQ_DEGREE
            if calib_counts is not None:
                if len(calib_counts) != 1 << in_bits:
                    raise ValueError(f"gelu iptq: calib_counts has {len(calib_counts)} entries, expected {1 << in_bits}")
                t, w, t_max = calib_fit_points(calib_counts, s_in)
                a, b = fit_erf_poly(t_max, d, t, w, c_max=((1 << (in_bits + QB_EXTRA_BITS)) - 1) * s_in / math.sqrt(2.0))
                meta["fit"] = "calibration data"
            else:
                t_max = (calib_absmax if calib_absmax is not None else s_in * 2 ** (in_bits - 1)) / math.sqrt(2.0)
                a, b = fit_erf_poly(t_max, d, c_max=((1 << (in_bits + QB_EXTRA_BITS)) - 1) * s_in / math.sqrt(2.0))
                meta["fit"] = "calibration range" if calib_absmax is not None else "representable range"
            meta["fit_t_max"] = t_max
        if a >= 0:
            raise RangeError(f"gelu {variant}: fitted a = {a:.4g} must be negative")
        s_t = s_in / math.sqrt(2.0)
        qb = max(1, int(round(-b / s_t)))
        unit = abs(a) * s_t ** d                       # scale of P
        sh = max(0, math.ceil(math.log2(1.0 / unit)) - ERF_BITS)
        qc = int(round(1.0 / (unit * 2 ** sh)))
        m, e = to_dyadic(s_in * unit * 2 ** sh / 2.0 / s_out, what=f"gelu {variant}")
        attrs.update(degree=d, qb=qb, qc=qc, sh=sh, m=int(m[0]), e=int(e[0]))
        meta.update(a=a, b=b)
    elif variant == "ishift":
        y_max = 1.702 * s_in * 2 ** (in_bits - 1)
        fy = max(1, min(ISHIFT_Y_BITS - 2, ISHIFT_Y_BITS - 1 - math.ceil(math.log2(y_max))))
        m_y, e_y = to_dyadic(1.702 * s_in * 2 ** fy, what="gelu ishift input")
        m, e = to_dyadic(s_in * 2.0 ** -SIG_BITS / s_out, what="gelu ishift output")
        attrs.update(fy=fy, m_y=int(m_y[0]), e_y=int(e_y[0]), m=int(m[0]), e=int(e[0]),
                     exp_variant=exp_variant)
    elif variant == "lut":
        if in_bits > LUT_MAX_IN_BITS:
            raise RangeError(f"gelu lut: input of {in_bits} bits; the table variant accepts at most {LUT_MAX_IN_BITS}")
        lo_in, hi_in = signed_range(in_bits)
        x = torch.arange(lo_in, hi_in + 1, dtype=torch.float64) * s_in
        consts["table"] = torch.round(gelu_float(x) / s_out).clamp(lo, hi).to(torch.int64)
    else:
        raise ValueError(f"unknown GELU variant {variant!r}; accepted: {', '.join(GELU_VARIANTS)}")
    return {"attrs": attrs, "consts": consts, "meta": meta}


def gelu_int(q: torch.Tensor, attrs: dict, consts: dict) -> torch.Tensor:
    """The integer GELU of a layer built by :func:`build_gelu`."""
    q = q.to(torch.int64)
    lo, hi = signed_range(attrs["out_bits"])
    variant = attrs["variant"]
    if variant in ("ibert", "iptq"):
        qb = attrs["qb"]
        p = (q.abs().clamp(max=qb) - qb) ** attrs["degree"]
        erf = torch.sign(q) * (attrs["qc"] - rshift_round(p, attrs["sh"]))
        return requant(q * (attrs["qc"] + erf), attrs["m"], attrs["e"], lo, hi)
    if variant == "ishift":
        y = requant(q, attrs["m_y"], attrs["e_y"], *signed_range(ISHIFT_Y_BITS))
        big = shift_exp(-y.abs(), attrs["fy"], attrs["exp_variant"])
        one = 1 << EXP_FRAC_BITS
        num = torch.where(y >= 0, torch.full_like(big, one), big)
        sig = (num << SIG_BITS) // (one + big)
        return requant(q * sig, attrs["m"], attrs["e"], lo, hi)
    if variant == "lut":
        return consts["table"][q + (1 << (attrs["in_bits"] - 1))]
    raise ValueError(f"unknown GELU variant {variant!r}")


def gelu_reference(q: torch.Tensor, s_in: float, s_out: float) -> torch.Tensor:
    """Float GELU of the dequantized input, in output units (for error reports only)."""
    return gelu_float(q.double() * s_in) / s_out


__all__ = ["GELU_VARIANTS", "build_gelu", "gelu_int", "gelu_reference", "fit_erf_poly", "calib_fit_points",
           "gelu_float"]
