"""Shift-based exponential: the hardware of :func:`golden.softmax.shift_exp`, with the scale
exponent ``f`` a run-time value.

For an integer ``x <= 0`` at scale 2^-f it computes e^(x 2^-f) at scale 2^-C bit for bit as
the golden function does (DESIGN.md, "Shift-based exponential").  ``f`` (1..``max_f``) is a
run-time input, so every rounding shift by ``f`` of the golden function is rewritten as a
shift by the constant ``S = max_f``: with ``r' = r 2^(S-f)`` (``r = n mod 2^f`` moved to the
top of an S-bit word),

    rshift_round(K2 r, f) + K1 = (K2 r' + K1 2^S + 2^(S-1)) >> S
    rshift_round(h r, f) + K0  = (h r' + K0 2^S + 2^(S-1)) >> S

(multiply numerator and divisor of the floor by 2^(S-f)), so ONE barrel shifter,
``n 2^(S-f) = (n 2^S) >> f``, gives both ``q = n >> f`` (its bits above S) and ``r'`` (its
low S bits), and every later shift is a constant one.  The final rounding shift by q folds
its half, 2^(q-1), into the carry-save sum of ``g`` (``g + 2^(q-1)`` comes out of the
adder), leaving a pure barrel shift.

=====  ==========================================================================================
stage  operation (each stage ends in a register; :data:`SHIFT_EXP_LATENCY` = 8 stages)
=====  ==========================================================================================
1      ``n = -(x + (x >> 1) - (x >> 4)) = ~x + ~(x >> 1) + (x >> 4) + 2`` (carry-save, one adder)
2      ``t = (n << S) >> f`` (barrel shifter; the only use of ``f``)
3      ``q = min(t >> S, C + 2)``, ``r' = t mod 2^S``; the terms of ``K2 r' + K1 2^S + 2^(S-1)``
       (K2 a constant: one shifted r' per set bit) compressed to two
4      ``h`` = bits [S, S + hbits) of their sum; ``qh = 2^(q-1)`` (0 for q = 0)
5      the partial products of ``h r'`` (LUTs, no DSP block) with ``K0 2^S + 2^(S-1)`` and
       ``qh 2^S``: two carry-save levels
6      the carry-save levels but the last (three for S = 17)
7      the last carry-save level; ``g' = g + 2^(q-1)``: bits [S, S + C + 2) of the sum
8      ``exp = g' >> q`` (barrel shifter) = rshift_round(g, q)
=====  ==========================================================================================

(K2, K1, K0) = :func:`golden.softmax.exp_coefficients` of the variant (a capability: fixed
in the RTL); for ``linear`` K2 is 0 and stages 3-4 carry a constant.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserError
from golden.softmax import EXP_FRAC_BITS, EXP_VARIANTS, exp_coefficients

from .config import check_choice, check_range
from .pipeline import (Stager, compress, compress_levels, credited_output, lane_layout, partial_products, sum_pair,
                       valid_chain)

__all__ = ["ShiftExp", "shift_exp_stages", "SHIFT_EXP_LATENCY", "shift_exp_f_bits", "shift_exp_const_layout"]

SHIFT_EXP_LATENCY = 8     # stages of shift_exp_stages, for every variant and every width
_OUT_QUEUE = 16           # ShiftExp's output queue (>= its latency + 3: one beat a cycle)


def shift_exp_f_bits(max_f: int) -> int:
    """Width of the run-time ``f`` (1..max_f) a unit built for ``max_f`` takes."""
    return max(1, max_f.bit_length())


def shift_exp_const_layout(max_f: int) -> data.StructLayout:
    """The ``c`` beat of :class:`ShiftExp`: ``{"f": unsigned(shift_exp_f_bits(max_f))}``."""
    return data.StructLayout({"f": unsigned(shift_exp_f_bits(max_f))})


def _signed_width(lo: int, hi: int) -> int:
    """The narrowest two's-complement width holding every value in [lo, hi]."""
    return max((v if v >= 0 else -v - 1).bit_length() + 1 for v in (lo, hi))


def _bounds(variant: str, frac_bits: int) -> tuple[int, int, int, int, int, int]:
    """(K2, K1, K0, hbits, hmin, hmax): h in [hmin, hmax], the signed width that holds it."""
    k2, k1, k0 = exp_coefficients(variant, frac_bits)
    hmin, hmax = k1 + min(k2, 0), k1 + max(k2, 0)
    return k2, k1, k0, _signed_width(hmin, hmax), hmin, hmax


def shift_exp_stages(st: Stager, x: Value, f, variant: str, frac_bits: int = EXP_FRAC_BITS,
                     carry: dict | None = None, *, max_f: int | None = None) -> tuple[Value, SimpleNamespace]:
    """Add the :data:`SHIFT_EXP_LATENCY` (8) exponential stages to ``st`` for a signed
    ``x <= 0`` at scale 2^-f.

    ``f`` is a run-time unsigned Value (an ``int`` is taken as a constant) in ``1..max_f``
    (``max_f`` defaults to ``len(x)``: then ``f`` covers every split of the whole input
    range); the result for other ``f`` is unspecified (:meth:`ShiftExp.const_beats` refuses
    them).  ``f`` is used in stage 2 only, combinationally, so it must hold its value from
    the cycle in which the first ``x`` is registered by stage 1 until the last ``x`` has
    left stage 2; in a unit that loads ``f`` only while idle this always holds.

    Returns the registered unsigned ``frac_bits + 1``-bit result (``e^(x 2^-f)`` at scale
    2^-frac_bits, in [0, 2^frac_bits]) and the namespace of the last stage (``carry``
    values ride along under their names, which must not start with ``exp``).  GELU
    'ishift' reuses this.
    """
    m = st.m
    carry = dict(carry or {})
    x = Value.cast(x).as_signed()
    b = len(x)
    S = b if max_f is None else max_f
    if S < 1:
        raise ValueError(f"shift_exp_stages: max_f = {S} must be >= 1")
    C = frac_bits
    k2, k1, k0, hbits, hmin, hmax = _bounds(variant, C)
    gmin, gmax = k0 + min(hmin, 0), k0 + max(hmax, 0)        # g = rshift_round(h r, f) + K0
    qmax = C + 2
    gq_bits = (gmax + (1 << (qmax - 1))).bit_length()          # g + 2^(q-1)
    if gmin < 0 or gmax >= 1 << (C + 1):
        raise ValueError(f"shift_exp_stages: variant {variant!r} gives g outside [0, 2^(C+1))")
    f = Value.cast(f).as_unsigned() if isinstance(f, Value) else Const(f, unsigned(max(1, int(f).bit_length())))
    p = st.prefix
    d0 = st.depth

    def nxt(ns):
        return {k: getattr(ns, k) for k in carry}

    # 1: n = -(x + (x >> 1) - (x >> 4)) in [0, 2^b) for x <= 0 (two's complement: ~v + 1 = -v)
    t = compress(m, [~x, ~(x >> 1), x >> 4, Const(2, 3)], b + 1, name=f"{p}exp_n")
    s1 = st.stage(exp_n=sum_pair(t)[:b], **carry)
    # 2: n 2^(S-f) = (n 2^S) >> f: q in its bits above S, r' = (n mod 2^f) 2^(S-f) below
    s2 = st.stage(exp_t=(Cat(Const(0, S), s1.exp_n) >> f)[:b + S], **nxt(s1))
    q_raw = s2.exp_t[S:]
    qbits = qmax.bit_length()
    big = Const(0, 1) if len(q_raw) <= qbits else q_raw[qbits:].any()
    q = Mux(big | (q_raw[:qbits] > qmax), qmax, q_raw[:qbits])
    r = s2.exp_t[:S]
    # 3: K2 r' + K1 2^S + 2^(S-1), carry-save; h is its bits [S, S + hbits) (exact mod 2^W1)
    W1 = S + hbits
    terms1 = [r << j for j in range(k2.bit_length()) if k2 >> j & 1] if k2 > 0 else []
    if k2 < 0:
        raise ValueError(f"shift_exp_stages: variant {variant!r} has K2 < 0")
    terms1.append(Const(((k1 << S) + (1 << (S - 1))) % (1 << W1), W1))
    c1 = compress(m, terms1, W1, name=f"{p}exp_h")
    s3 = st.stage(exp_q=q, exp_r=r, **{f"exp_h{i}": v for i, v in enumerate(c1)}, **nxt(s2))
    # 4: h; the rounding half of the final shift by q, 2^(q-1) (0 for q = 0)
    h_sum = sum_pair([getattr(s3, f"exp_h{i}") for i in range(len(c1))])
    qh = (Const(1, qmax + 1) << s3.exp_q)[1:]
    s4 = st.stage(exp_q=s3.exp_q, exp_r=s3.exp_r, exp_hv=h_sum[S:W1].as_signed(), exp_qh=qh, **nxt(s3))
    # 5, 6: h r' + K0 2^S + 2^(S-1) + 2^(q-1) 2^S, carry-save (LUT partial products): two
    #       levels in stage 5 (the first with the partial products' AND), then all but one
    W2 = S + gq_bits
    terms2 = partial_products(s4.exp_hv, s4.exp_r)
    terms2.append(Const(((k0 << S) + (1 << (S - 1))) % (1 << W2), W2))
    terms2.append(Cat(Const(0, S), s4.exp_qh))
    c2 = compress(m, terms2, W2, levels=2, name=f"{p}exp_ga")
    s5 = st.stage(exp_q=s4.exp_q, **{f"exp_g{i}": v for i, v in enumerate(c2)}, **nxt(s4))
    c3 = compress(m, [getattr(s5, f"exp_g{i}") for i in range(len(c2))], W2,
                  levels=max(compress_levels(len(c2)) - 1, 0), name=f"{p}exp_gb")
    s6 = st.stage(exp_q=s5.exp_q, **{f"exp_g{i}": v for i, v in enumerate(c3)}, **nxt(s5))
    # 7: the last carry-save level; g + 2^(q-1) = bits [S, S + gq_bits) of the sum (>= 0, < 2^W2)
    c4 = compress(m, [getattr(s6, f"exp_g{i}") for i in range(len(c3))], W2, name=f"{p}exp_gc")
    g_sum = sum_pair(c4)
    s7 = st.stage(exp_q=s6.exp_q, exp_gq=g_sum[S:W2], **nxt(s6))
    # 8: rshift_round(g, q) = (g + 2^(q-1)) >> q
    s8 = st.stage(exp=(s7.exp_gq >> s7.exp_q)[:C + 1], **nxt(s7))    # 0 <= exp <= 2^C
    assert st.depth - d0 == SHIFT_EXP_LATENCY
    return s8.exp, s8


class ShiftExp(wiring.Component):
    """Streaming shift-based exponential, ``lanes`` elements per beat, ``f`` loaded at run time.

    Parameters (capabilities)
    -------------------------
    variant : str
        2^-t approximation: 'linear', 'ibert' or 'shiftfit' (fixed in the RTL).
    in_bits : int
        Signed input width (default 17: every x in [-65536, 0], i.e. all 16-bit magnitudes
        and -2^16).  Inputs must be <= 0; the output for x > 0 is unspecified (the golden
        function refuses such x too).
    frac_bits : int
        C: the output is at scale 2^-C (default golden EXP_FRAC_BITS = 15).
    lanes : int
        Elements per beat.
    max_f : int
        Largest accepted ``f`` (default ``in_bits``, beyond which ``q`` is 0 for every
        input); ``f`` is ``shift_exp_f_bits(max_f)`` bits wide (5 for the default).

    Members
    -------
    c : In(stream.Signature(StructLayout({"f": unsigned(f_bits)})))
        The layer's scale exponent ``f`` (golden ``shift_exp(x, f, ...)``), one beat per
        layer (:meth:`const_beats`).  Accepted only while the unit is idle (no element in
        the pipeline, the last output taken); while ``c.valid`` is high ``i`` is not
        accepted.  ``f`` persists until the next load; before the first load the output
        is unspecified.
    i : In(stream.Signature(ArrayLayout(signed(in_bits), lanes)))
        Inputs; lane k in bits [k in_bits, (k+1) in_bits) of ``i__payload``.
    o : Out(stream.Signature(ArrayLayout(unsigned(frac_bits + 1), lanes)))
        e^(x 2^-f) at scale 2^-C, in [0, 2^C].

    Latency and throughput
    ----------------------
    Latency ``SHIFT_EXP_LATENCY + 2`` = 10 cycles (input handshake in cycle t, the result
    valid on ``o`` in cycle t + 10): the eight stages of :func:`shift_exp_stages`, then a
    16-beat output queue (``hwgen.pipeline.credited_output``, two cycles).  Throughput one
    beat (``lanes`` elements) per cycle while ``o.ready`` is high.  The datapath never
    stalls (no enable fans out to its registers): ``i.ready`` is high while the queue has
    room for every beat in flight (a credit count, a register) and ``c.valid`` is low.
    Loading ``f`` takes one cycle (the ``c`` handshake) once the unit is idle (the count is
    0: the cycle after the last output was taken); the next cycle accepts data.

    The signature depends on the parameters, so it is passed to ``Component.__init__``
    instead of being written as class annotations.
    """

    def __init__(self, variant: str = "shiftfit", *, in_bits: int = 17, frac_bits: int = EXP_FRAC_BITS,
                 lanes: int = 1, max_f: int | None = None):
        self.variant = check_choice("exp_variant", variant, EXP_VARIANTS)
        self.in_bits = check_range("exp_in_bits", in_bits, 2, 24)
        self.frac_bits = check_range("exp_frac_bits", frac_bits, 4, 24)
        self.lanes = check_range("lanes", lanes, 1, 64)
        self.max_f = check_range("shift_exp max_f", in_bits if max_f is None else max_f, 1, 31)
        self.f_bits = shift_exp_f_bits(self.max_f)
        self.latency = SHIFT_EXP_LATENCY + 2     # the stages, then the output queue
        super().__init__({
            "c": In(stream.Signature(shift_exp_const_layout(self.max_f))),
            "i": In(stream.Signature(lane_layout(signed(in_bits), lanes))),
            "o": Out(stream.Signature(lane_layout(unsigned(frac_bits + 1), lanes))),
        })

    @classmethod
    def from_config(cls, hw, variant: str | None = None) -> "ShiftExp":
        """The unit for ``hw``: exp_variant (or ``variant``), exp_in_bits, exp_frac_bits, lanes."""
        return cls(variant or hw.exp_variant, in_bits=hw.exp_in_bits, frac_bits=hw.exp_frac_bits, lanes=hw.lanes)

    def const_beats(self, attrs: dict, consts: dict | None = None) -> list[dict[str, int]]:
        """The ``c`` beat of a layer: ``[{"f": attrs["f"]}]``, after checking that ``f`` is in
        1..max_f (and, where ``attrs`` names one, that the variant is the unit's)."""
        check_exp_attrs("shift_exp", attrs, self.variant, self.max_f, f"exp_in_bits {self.in_bits}")
        return [{"f": int(attrs["f"])}]

    def elaborate(self, platform):
        m = Module()
        f = Signal(self.f_bits)
        fire = Signal()
        exps = []
        for k in range(self.lanes):
            st = Stager(m, Const(1), prefix=f"l{k}_")        # free-running: no enable to fan out
            exp, _ = shift_exp_stages(st, self.i.payload[k], f, self.variant, self.frac_bits, max_f=self.max_f)
            exps.append(exp)
        valid = valid_chain(m, SHIFT_EXP_LATENCY, fire)
        room, idle = credited_output(m, self.o, Cat(*exps), valid, fire, _OUT_QUEUE)
        m.d.comb += [self.i.ready.eq(room & ~self.c.valid), fire.eq(self.i.valid & self.i.ready),
                     self.c.ready.eq(idle)]
        with m.If(self.c.valid & self.c.ready):
            m.d.sync += f.eq(self.c.payload.f)
        return m


def check_exp_attrs(unit: str, attrs: dict, variant: str, max_f: int, limit_note: str) -> int:
    """``attrs["f"]`` checked against 1..max_f (and ``attrs["variant"]``, if any, against the
    unit's): a one-line :class:`UserError` naming the field, the need and the limit."""
    if "f" not in attrs:
        raise UserError(f"{unit}: the layer has no f (scale exponent) attribute")
    f = attrs["f"]
    if isinstance(f, bool) or not isinstance(f, int):
        raise UserError(f"{unit} f = {f!r} does not fit the unit: needs an integer in 1..{max_f}")
    if not 1 <= f <= max_f:
        raise UserError(f"{unit} f = {f} does not fit the unit: needs {f} in 1..{max_f}, the unit takes "
                        f"f up to {max_f} ({limit_note})")
    v = attrs.get("variant", attrs.get("exp_variant"))
    if v is not None and v != variant:
        raise UserError(f"{unit} variant = {v!r} does not fit the unit: needs {v!r}, the unit has {variant!r} "
                        f"(exp_variant)")
    return f
