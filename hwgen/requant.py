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
       ``|x @ W^T| + |bias| < 2^(acc_bits-1)``, DESIGN.md); clamp limits from out_bits
2      ``p = s * m`` (signed ``acc_bits`` x unsigned ``mult_bits``: exact)
3      ``r = rshift_round(p, e)`` (one barrel shifter: ``((2p >> e) + 1) >> 1``)
4      ``out = s`` if out_bits == 0 else ``clamp(r, lo, hi)``
=====  ===========================================================================
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import check_range
from .pipeline import Stager, lane_layout, rshift_round_var, stream_pipeline

__all__ = ["Requant", "REQUANT_LATENCY", "requant_param_fields", "requant_stages", "E_BITS"]

REQUANT_LATENCY = 4
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
    Latency 4 cycles (sum; product; rounding shift; clamp and select), throughput one beat
    (``lanes`` channels) per cycle while ``o.ready`` is high; all stages stall together
    under back-pressure (``i.ready = ~o.valid | o.ready``).
    """

    def __init__(self, lanes: int = 8, *, acc_bits: int = 32, mult_bits: int = 16, e_bits: int = E_BITS):
        self.lanes = check_range("requant lanes", lanes, 1, 256)
        self.acc_bits = check_range("acc_bits", acc_bits, 8, 64)
        self.mult_bits = check_range("mult_bits", mult_bits, 2, 32)
        self.e_bits = check_range("requant e_bits", e_bits, 1, 7)
        self.latency = REQUANT_LATENCY
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


def requant_stages(m: Module, en: Value, p, acc_bits: int, prefix: str = "rq_") -> list[Value]:
    """Add the four requantizer stages to ``m`` (all enabled by ``en``) for the payload view
    ``p`` (fields ``acc``, ``bias``, ``m``, ``e``, ``out_bits`` as in :class:`Requant`); return the
    registered output lanes.  Used inline by the GEMM (one module, no submodule)."""
    A = acc_bits
    lanes = len(p.acc)
    st = Stager(m, en, prefix=prefix)
    # stage 1: bias add, clamp limits of this beat (shared by every lane)
    ob = p.out_bits
    hi = (((Const(1, 1) << ob) >> 1) - 1)[:A].as_signed()   # out_bits in 2..A: 2^(ob-1) - 1
    s1 = st.stage(raw=~ob.any(), hi=hi, lo=(-1 - hi)[:A].as_signed(),
                  **{f"s{k}": (p.acc[k] + p.bias[k])[:A].as_signed() for k in range(lanes)},
                  **{f"m{k}": p.m[k] for k in range(lanes)},
                  **{f"e{k}": p.e[k] for k in range(lanes)})
    # stage 2: product (signed acc_bits x unsigned mult_bits, exact)
    s2 = st.stage(raw=s1.raw, hi=s1.hi, lo=s1.lo,
                  **{f"s{k}": getattr(s1, f"s{k}") for k in range(lanes)},
                  **{f"p{k}": getattr(s1, f"s{k}") * getattr(s1, f"m{k}") for k in range(lanes)},
                  **{f"e{k}": getattr(s1, f"e{k}") for k in range(lanes)})
    # stage 3: rounding shift
    s3 = st.stage(raw=s2.raw, hi=s2.hi, lo=s2.lo,
                  **{f"s{k}": getattr(s2, f"s{k}") for k in range(lanes)},
                  **{f"r{k}": rshift_round_var(getattr(s2, f"p{k}"), getattr(s2, f"e{k}"))
                     for k in range(lanes)})
    # stage 4: clamp to the run-time limits, or the raw sum
    outs = {}
    for k in range(lanes):
        r = getattr(s3, f"r{k}")
        clamped = Mux(r < s3.lo, s3.lo, Mux(r > s3.hi, s3.hi, r[:A].as_signed()))
        outs[f"o{k}"] = Mux(s3.raw, getattr(s3, f"s{k}"), clamped)[:A].as_signed()
    s4 = st.stage(**outs)
    assert st.depth == REQUANT_LATENCY
    return [getattr(s4, f"o{k}") for k in range(lanes)]
