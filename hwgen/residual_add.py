"""Residual add: the hardware of :func:`golden.executor.run_add`.

``out = clamp(requant(a, m_a, e_a) + requant(b, m_b, e_b))`` with each requant clamped to
the ``out_bits`` range first (DESIGN.md, "Residual add"), exactly as the golden op.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .config import check_range
from .pipeline import Stager, clamp, lane_layout, rshift_round_const, stream_pipeline

__all__ = ["ResidualAdd", "RESIDUAL_ADD_LATENCY"]

RESIDUAL_ADD_LATENCY = 3


class ResidualAdd(wiring.Component):
    """Streaming residual add of two joined streams, ``lanes`` elements per beat.

    Parameters
    ----------
    m_a, e_a, m_b, e_b : int
        Dyadic requantizers of the two branches (the op's attrs: unsigned ``m`` of at most
        ``mult_bits`` bits, 0 <= e <= 62).
    a_bits, b_bits : int
        Signed widths of the two inputs.
    out_bits : int
        Signed width of the residual stream (the op's ``out_bits``, 16 by default).
    lanes : int
        Elements per beat.

    Members
    -------
    a : In(stream.Signature(ArrayLayout(signed(a_bits), lanes)))
    b : In(stream.Signature(ArrayLayout(signed(b_bits), lanes)))
        The two branches; a beat is taken only when both are valid (a join:
        ``a.ready = en & b.valid``, ``b.ready = en & a.valid``).
    o : Out(stream.Signature(ArrayLayout(signed(out_bits), lanes)))

    Latency and throughput
    ----------------------
    Latency 3 cycles (products; rounding shifts and clamps; sum and clamp); throughput one
    beat (``lanes`` elements) per cycle while both inputs are valid and ``o.ready`` is high.

    The signature depends on the parameters, so it is passed to ``Component.__init__``
    instead of being written as class annotations.
    """

    def __init__(self, m_a: int, e_a: int, m_b: int, e_b: int, *, a_bits: int = 16, b_bits: int = 16,
                 out_bits: int = 16, lanes: int = 1, mult_bits: int = 16):
        check_range("mult_bits", mult_bits, 2, 32)
        self.m_a = check_range("add m_a", int(m_a), 0, (1 << mult_bits) - 1)
        self.m_b = check_range("add m_b", int(m_b), 0, (1 << mult_bits) - 1)
        self.e_a = check_range("add e_a", int(e_a), 0, 62)
        self.e_b = check_range("add e_b", int(e_b), 0, 62)
        self.a_bits = check_range("add a_bits", a_bits, 2, 32)
        self.b_bits = check_range("add b_bits", b_bits, 2, 32)
        self.out_bits = check_range("residual_bits", out_bits, 4, 32)
        self.lanes = check_range("lanes", lanes, 1, 64)
        self.latency = RESIDUAL_ADD_LATENCY
        super().__init__({
            "a": In(stream.Signature(lane_layout(signed(a_bits), lanes))),
            "b": In(stream.Signature(lane_layout(signed(b_bits), lanes))),
            "o": Out(stream.Signature(lane_layout(signed(out_bits), lanes))),
        })

    @classmethod
    def from_attrs(cls, attrs: dict, *, a_bits: int, b_bits: int, lanes: int = 1) -> "ResidualAdd":
        """From the attrs of a golden 'add' op (m_a, e_a, m_b, e_b, out_bits)."""
        return cls(attrs["m_a"], attrs["e_a"], attrs["m_b"], attrs["e_b"], a_bits=a_bits, b_bits=b_bits,
                   out_bits=attrs["out_bits"], lanes=lanes)

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        lo, hi = -(1 << (self.out_bits - 1)), (1 << (self.out_bits - 1)) - 1
        for k in range(self.lanes):
            st = Stager(m, en, prefix=f"l{k}_")
            s = st.stage(pa=self.a.payload[k] * self.m_a, pb=self.b.payload[k] * self.m_b)
            s = st.stage(ra=clamp(rshift_round_const(s.pa, self.e_a), lo, hi),
                         rb=clamp(rshift_round_const(s.pb, self.e_b), lo, hi))
            s = st.stage(o=clamp(s.ra + s.rb, lo, hi))
            m.d.comb += self.o.payload[k].eq(s.o)
            assert st.depth == self.latency
        both = self.a.valid & self.b.valid
        m.d.comb += [self.a.ready.eq(en & self.b.valid), self.b.ready.eq(en & self.a.valid)]
        m.d.comb += self.o.valid.eq(stream_pipeline(m, self.latency, both, self.o.ready, en))
        return m
