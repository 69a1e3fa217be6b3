"""Bias add and per-output-channel dyadic requantization: the output stage of a GEMM.

The hardware of the last two lines of :func:`golden.executor.run_linear` (and of
:func:`golden.executor.run_matmul`, with a zero bias and one ``m``, ``e`` for every lane)::

    acc = x @ W^T + bias
    out = acc                                          if out_bits == 0 (raw accumulator)
    out = clamp(rshift_round(acc * m, e), lo, hi)      otherwise, [lo, hi] = signed out_bits

with ``m`` unsigned (``mult_bits``), ``0 <= e < 2^e_bits`` per lane, and ``out_bits`` per beat
(run time), so one unit serves 8-bit activations, 16-bit scores or logits and the raw
accumulator of the graph's linear ops alike.

=====  ===========================================================================
stage  operation (per lane)
=====  ===========================================================================
1      ``s = acc + bias`` (kept to ``acc_bits``: the graph's bound check guarantees
       ``|x @ W^T| + |bias| < 2^(acc_bits-1)``, DESIGN.md); clamp limits from out_bits;
       for out_bits = 0 (raw) m = 1 and e = 0, so the result below is s itself
       (:func:`requant_decode`; the GEMM decodes ahead, once per tile)
2..    ``p = s * m`` (:func:`product_stages` stages: 4 with DSPs, 5 with 16-bit LUT products): DSP partial products ``s_hi m``, ``s_lo m`` (``s = s_hi 2^17 + s_lo``;
       free-running, from DSP leaves, :mod:`hwgen.dsp`: the block's operand and product
       registers, then a fabric register), then their sum; or, with LUT products (``mult="lut"``), a carry-save tree
       (:func:`csa_stage_levels`: 1, 2, 2, 1 levels for 16-bit m), then the
       final sum (:func:`product_stages` in all)
+1     ``t = 2p >> (e & ~7)``, +2 ``u = t >> (e & 7)`` (the barrel shifter in two levels)
+3     ``r = (u + 1) >> 1`` (= ``rshift_round(p, e)``, :func:`~hwgen.pipeline.rshift_round_var`)
+4     ``r < lo``, ``r > hi``
+5     ``out = r`` if out_bits == 0 else ``clamp(r, lo, hi)``
=====  ===========================================================================

One carry chain, multiplier or shifter level per stage, so that the requantizer runs at
the MAC array's clock (``hwgen report``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import check_range
from .dsp import DSP_LATENCY, dsp_mult
from .pipeline import Stager, compress, compress_levels, fit, sum_pair, lane_layout, partial_products, product_shape, stream_pipeline

__all__ = ["Requant", "requant_latency", "product_stages", "csa_stage_levels", "requant_param_fields", "requant_decode",
           "requant_decode_stages", "requant_decoded_fields", "requant_stages", "E_BITS"]

CSA_LEVELS_PER_STAGE = 2   # 3:2 compressor levels (one LUT each) between registers
# ... but one in the first stage: its inputs are the partial products, each bit of s fanning out
# to every row of m, so its register's routes are the long ones (the GEMM unit's seed-1 path:
# 3.75 ns from an s register to the partial products, then two levels, 7.06 ns)
CSA_FIRST_LEVELS = 1
DSP_SPLIT_BITS = 17   # low part of a split product: unsigned 17 bits fit an 18 x 18 multiplier
E_BITS = 6            # per-lane shift e in 0..63 (golden.dyadic.MAX_SHIFT is 62)


def requant_param_fields(lanes: int, acc_bits: int, mult_bits: int, e_bits: int = E_BITS) -> dict:
    """The per-beat requantization fields (shared with the GEMM's parameter stream):
    ``bias``, ``m``, ``e`` per lane and ``out_bits`` (0 = raw accumulator) per beat."""
    return {"bias": lane_layout(signed(acc_bits), lanes),
            "m": lane_layout(unsigned(mult_bits), lanes),
            "e": lane_layout(unsigned(e_bits), lanes),
            "out_bits": unsigned(acc_bits.bit_length())}


class Requant(wiring.Component):
    """Streaming bias add and dyadic requantizer, ``lanes`` channels per beat.

    Parameters
    ----------
    lanes : int
        Channels per beat (a GEMM's ``cols``).
    acc_bits : int
        Signed accumulator width (input ``acc`` and ``bias``, and the output lanes).
    mult_bits : int
        Width of the unsigned multipliers ``m``.
    e_bits : int
        Width of the per-lane shifts ``e`` (6: 0..63).

    Members
    -------
    i : In(stream.Signature(StructLayout))
        ``acc``: ArrayLayout(signed(acc_bits), lanes), then the fields of
        :func:`requant_param_fields`: ``bias`` (signed acc_bits per lane), ``m`` (unsigned
        mult_bits per lane), ``e`` (unsigned e_bits per lane), ``out_bits`` (one per beat:
        0 = pass ``acc + bias`` through, 2..acc_bits = clamp to that signed width).
    o : Out(stream.Signature(ArrayLayout(signed(acc_bits), lanes)))
        The results; a requantized lane is the clamped value, sign-extended.

    Latency and throughput
    ----------------------
    Latency :func:`requant_latency` (10 cycles: the stages above, DSP products), throughput one beat
    (``lanes`` channels) per cycle while ``o.ready`` is high; all stages stall together
    under back-pressure (``i.ready = ~o.valid | o.ready``).
    """

    def __init__(self, lanes: int = 8, *, acc_bits: int = 32, mult_bits: int = 16, e_bits: int = E_BITS):
        self.lanes = check_range("requant lanes", lanes, 1, 256)
        self.acc_bits = check_range("acc_bits", acc_bits, 8, 64)
        self.mult_bits = check_range("mult_bits", mult_bits, 2, 32)
        self.e_bits = check_range("requant e_bits", e_bits, 1, 7)
        self.latency = requant_latency("dsp", mult_bits)
        fields = {"acc": lane_layout(signed(acc_bits), lanes)}
        fields.update(requant_param_fields(lanes, acc_bits, mult_bits, e_bits))
        self.in_layout = data.StructLayout(fields)
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(lane_layout(signed(acc_bits), lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        out = requant_stages(m, en, self.i.payload, self.acc_bits)
        for k in range(self.lanes):
            m.d.comb += self.o.payload[k].eq(out[k])
        m.d.comb += self.i.ready.eq(en)
        m.d.comb += self.o.valid.eq(stream_pipeline(m, self.latency, self.i.valid, self.o.ready, en))
        return m


def requant_decoded_fields(lanes: int, acc_bits: int, mult_bits: int, e_bits: int = E_BITS) -> dict:
    """The parameter fields after :func:`requant_decode`: ``bias``, ``m``, ``e`` per lane (m = 1
    and e = 0 for a raw beat), ``raw`` (out_bits = 0) and the clamp limits ``hi``, ``lo``."""
    return {"bias": lane_layout(signed(acc_bits), lanes),
            "m": lane_layout(unsigned(mult_bits), lanes),
            "e": lane_layout(unsigned(e_bits), lanes),
            "raw": 1, "hi": signed(acc_bits), "lo": signed(acc_bits)}


def requant_decode(p, acc_bits: int) -> dict:
    """Decode a parameter beat ``p`` (fields of :func:`requant_param_fields`) into the fields
    of :func:`requant_decoded_fields` (name -> value, or list of lane values).  The raw sum
    goes through the multiplier as s * 1 >> 0 (exact), so no copy of s rides along; the clamp
    limits of out_bits in 2..A are hi = 2^(ob-1) - 1 (the bits below ob-1 set: no carry chain)
    and lo = ~hi.  The GEMM registers this once per tile (its held parameters), so that the
    requantizer's first stage has no logic in front of it but the bias add."""
    lanes = len(p.m)
    ob = p.out_bits
    raw = ~ob.any()
    hi = Cat(*(ob > i + 1 for i in range(acc_bits))).as_signed()
    return {"bias": [p.bias[k] for k in range(lanes)],
            "m": [Mux(raw, 1, p.m[k]) for k in range(lanes)],
            "e": [Mux(raw, 0, p.e[k]) for k in range(lanes)],
            "raw": raw, "hi": hi, "lo": (~hi).as_signed()}


def requant_decode_stages(m: Module, p, acc_bits: int, name: str = "pdec", raw: Value | None = None):
    """:func:`requant_decode` of the parameter beat ``p`` in two register stages (no reset,
    loaded on every cycle), so that no net with a wide fan-out is driven by logic: stage 1
    registers, per lane, whether its m must read 1 (a raw beat, or m is 1 already) and whether
    its e must read 0 (raw, or e is 0 already), the raw flag and the clamp limits; stage 2
    applies the selects to ``p``'s m and e (one LUT per bit, each select a register of its
    own: a raw flag shared by every lane would fan out to every m and e bit).  The result (a
    view with the fields of :func:`requant_decoded_fields`) is right two cycles after ``p``
    changed, while ``p`` holds still.  ``raw``: the raw flag (``out_bits == 0``) from a
    register of the caller's, loaded with ``p`` (the GEMM does so: computed from ``p``'s
    out_bits here, it is two LUT levels whose output fans out to every lane's selects, the
    GEMM's critical path once placed)."""
    lanes = len(p.m)
    mb, eb = len(p.m[0]), len(p.e[0])
    ob = p.out_bits
    raw = ~ob.any() if raw is None else raw
    hi = Cat(*(ob > i + 1 for i in range(acc_bits))).as_signed()
    sel_m = Signal(lanes, name=f"{name}_sel_m", reset_less=True)
    sel_e = Signal(lanes, name=f"{name}_sel_e", reset_less=True)
    raw1 = Signal(name=f"{name}_raw", reset_less=True)
    hi1 = Signal(signed(acc_bits), name=f"{name}_hi", reset_less=True)
    m.d.sync += [sel_m.eq(Cat(*(raw | (p.m[k] == 1) for k in range(lanes)))),
                 sel_e.eq(Cat(*(raw | ~p.e[k].any() for k in range(lanes)))),
                 raw1.eq(raw), hi1.eq(hi)]
    out = Signal(data.StructLayout(requant_decoded_fields(lanes, acc_bits, mb, eb)), name=name, reset_less=True)
    m.d.sync += [out.raw.eq(raw1), out.hi.eq(hi1), out.lo.eq(~hi1)]
    for k in range(lanes):
        m.d.sync += [out.bias[k].eq(p.bias[k]), out.m[k].eq(Mux(sel_m[k], 1, p.m[k])),
                     out.e[k].eq(Mux(sel_e[k], 0, p.e[k]))]
    return out


def csa_stage_levels(mult_bits: int) -> list[int]:
    """The LUT product's 3:2 levels in each carry-save stage: :data:`CSA_FIRST_LEVELS`, then
    :data:`CSA_LEVELS_PER_STAGE` a stage (the last one what is left)."""
    total = compress_levels(mult_bits)
    if total <= CSA_FIRST_LEVELS:
        return [total] if total else []
    left = total - CSA_FIRST_LEVELS
    return [CSA_FIRST_LEVELS] + [min(CSA_LEVELS_PER_STAGE, left - i) for i in range(0, left, CSA_LEVELS_PER_STAGE)]


def product_stages(mult: str = "dsp", mult_bits: int = 16) -> int:
    """Stages of the requantizer's ``s * m``: the DSP partial products and their sum, or
    the carry-save tree (:func:`csa_stage_levels`) and the final sum."""
    if mult == "lut":
        return len(csa_stage_levels(mult_bits)) + 1
    return DSP_LATENCY + 2


def requant_latency(mult: str = "dsp", mult_bits: int = 16) -> int:
    """Stages of :func:`requant_stages`: the bias add, the product, two shift levels, the
    rounding, the comparison and the clamp."""
    return 1 + product_stages(mult, mult_bits) + 5


def requant_stages(m: Module, en: Value, p, acc_bits: int, prefix: str = "rq_", mult: str = "dsp",
                   decoded: bool = False) -> list[Value]:
    """Add the requantizer stages (:func:`requant_latency`, all enabled by ``en``) to ``m``
    for the payload view ``p`` (fields ``acc``, ``bias``, ``m``, ``e``, ``out_bits`` as in
    :class:`Requant`; or, with ``decoded``, ``acc`` and the fields of
    :func:`requant_decoded_fields`, decoded ahead by :func:`requant_decode`); return the
    registered output lanes.  Used inline by the GEMM (one module, no submodule).  ``mult``:
    ``"dsp"`` multiplies with ``*`` (DSP blocks), ``"lut"`` with a carry-save tree
    (:func:`hwgen.pipeline.compress`)."""
    A = acc_bits
    lanes = len(p.acc)
    st = Stager(m, en, prefix=prefix)
    if decoded:
        d = {"bias": [p.bias[k] for k in range(lanes)], "m": [p.m[k] for k in range(lanes)],
             "e": [p.e[k] for k in range(lanes)], "raw": p.raw, "hi": p.hi, "lo": p.lo}
    else:
        d = requant_decode(p, A)

    def lane(ns, name, k):
        return getattr(ns, f"{name}{k}")

    def carry(ns, *names):
        return {f"{n}{k}": lane(ns, n, k) for n in names for k in range(lanes)}

    # 1: bias add; the beat's clamp limits (shared by every lane), m and e (requant_decode)
    s1 = st.stage(raw=d["raw"], hi=d["hi"], lo=d["lo"],
                  **{f"s{k}": (p.acc[k] + d["bias"][k])[:A].as_signed() for k in range(lanes)},
                  **{f"m{k}": d["m"][k] for k in range(lanes)},
                  **{f"e{k}": d["e"][k] for k in range(lanes)})
    limits = ("raw", "hi", "lo")

    def keep(ns):
        return {n: getattr(ns, n) for n in limits}

    shape = product_shape(s1.s0, s1.m0)
    if mult == "lut":
        # the partial products through a carry-save tree (csa_stage_levels), then the final sum
        W = shape.width
        terms = {k: partial_products(lane(s1, "s", k), lane(s1, "m", k)) for k in range(lanes)}
        ns = s1
        for n, levels in enumerate(csa_stage_levels(len(s1.m0))):
            terms = {k: compress(m, v, W, levels, f"{prefix}csa{n}_{k}") for k, v in terms.items()}
            ns = st.stage(**keep(ns), **carry(ns, "e"),
                          **{f"c{k}_{t}": v for k in range(lanes) for t, v in enumerate(terms[k])})
            terms = {k: [getattr(ns, f"c{k}_{t}") for t in range(len(v))] for k, v in terms.items()}
        s4 = st.stage(**keep(ns), **carry(ns, "e"), **{f"p{k}": fit(sum_pair(terms[k]), shape) for k in range(lanes)})
    else:
        # the DSP partial products s = s_hi 2^L + s_lo (each fits one 18 x 18 multiplier), then p = s * m
        # (DSP_LATENCY + 1 stages: free-running (the GEMM's), the products come from DSP leaves,
        # whose operand and product registers are the block's own, then a fabric register, so
        # that the routes into and out of the DSP column each have a cycle; under an enable,
        # ``*`` in the first stage and the products carried through the others)
        L = DSP_SPLIT_BITS if A > DSP_SPLIT_BITS + 1 else A
        free = isinstance(en, Const) and en.value == 1
        operands = {}
        for k in range(lanes):
            s, mk = lane(s1, "s", k), lane(s1, "m", k)
            operands[f"pl{k}"] = (s[:L] if L < A else s, mk)
            if L < A:
                operands[f"ph{k}"] = (s[L:].as_signed(), mk)
        if free:
            parts = {n: dsp_mult(m, a, b, f"{prefix}{n}") for n, (a, b) in operands.items()}
            ns = s1
            for _ in range(DSP_LATENCY):
                ns = st.stage(**keep(ns), **carry(ns, "e"))
            s2 = st.stage(**keep(ns), **carry(ns, "e"), **parts)
        else:
            ns = st.stage(**keep(s1), **carry(s1, "e"), **{n: a * b for n, (a, b) in operands.items()})
            for _ in range(DSP_LATENCY):
                ns = st.stage(**keep(ns), **carry(ns, "e"), **{n: getattr(ns, n) for n in operands})
            s2 = ns

        def product(k):         # (one partial product when the accumulator fits one multiplier)
            pl = lane(s2, "pl", k)
            return (lane(s2, "ph", k) << L) + pl if L < A else pl
        s4 = st.stage(**keep(s2), **carry(s2, "e"), **{f"p{k}": product(k) for k in range(lanes)})
    # then: the barrel shift of 2p by e (rshift_round_var's first step), in two levels
    s5 = st.stage(**keep(s4), **carry(s4, "e"),
                  **{f"t{k}": (lane(s4, "p", k) << 1) >> Cat(Const(0, 3), lane(s4, "e", k)[3:])
                     for k in range(lanes)})
    s6 = st.stage(**keep(s5), **{f"u{k}": lane(s5, "t", k) >> lane(s5, "e", k)[:3] for k in range(lanes)})
    # rounding: ((2p >> e) + 1) >> 1
    s7 = st.stage(**keep(s6), **{f"r{k}": (lane(s6, "u", k) + 1) >> 1 for k in range(lanes)})
    # compare with the limits; then clamp, or the raw sum
    s8 = st.stage(**keep(s7),
                  **{f"lt{k}": (lane(s7, "r", k) - s7.lo)[-1] for k in range(lanes)},    # signs of exact
                  **{f"gt{k}": (s7.hi - lane(s7, "r", k))[-1] for k in range(lanes)},    # differences
                  **{f"r{k}": lane(s7, "r", k)[:A].as_signed() for k in range(lanes)})
    outs = {}
    for k in range(lanes):
        clamped = Mux(lane(s8, "lt", k), s8.lo, Mux(lane(s8, "gt", k), s8.hi, lane(s8, "r", k)))
        outs[f"o{k}"] = Mux(s8.raw, lane(s8, "r", k), clamped)[:A].as_signed()
    s9 = st.stage(**outs)
    assert st.depth == requant_latency(mult, len(s1.m0))
    return [getattr(s9, f"o{k}") for k in range(lanes)]

