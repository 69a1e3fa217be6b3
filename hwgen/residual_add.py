"""Residual add: the hardware of :func:`golden.executor.run_add`, with the layer's constants
loaded at run time.

``out = clamp(requant(a, m_a, e_a) + requant(b, m_b, e_b))`` with each requant clamped to
the residual range first (DESIGN.md, "Residual add"), exactly as the golden op.  The unit is
generated for capabilities (residual width, multiplier width, lanes); each add layer's
``m_a``, ``e_a``, ``m_b``, ``e_b`` arrive as one ``c`` beat before its data
(:meth:`ResidualAdd.const_beats`), so one instance serves every add of a model.

=====  =====================================================================================
stage  operation (per lane, both branches side by side)
=====  =====================================================================================
1-4    ``a m_a``, ``b m_b``: LUT carry-save trees (two 3:2 levels between registers), then
       the carry-propagate sums (:func:`hwgen.pipeline.multiply_stages`)
5-7    ``rshift_round(., e)``: the barrel shifter in two stages (3 bits of e each), then the
       rounding increment (:func:`hwgen.pipeline.rshift_round_stages`)
8-9    clamp to residual_bits: the in-range test (no carry chain), then the mux
10     ``ra + rb``
11     clamp the sum (its two top bits differ exactly when it overflows)
=====  =====================================================================================

The datapath runs without an enable; an output queue with credits
(:func:`hwgen.pipeline.credited_output`) absorbs back-pressure (see :mod:`hwgen.gelu`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.dyadic import MAX_SHIFT, MULT_BITS
from golden.errors import UserError

from .config import check_range
from .pipeline import (Stager, credited_output, lane_constants, lane_layout, multiply_stages, rshift_round_stages,
                       saturate_stages, valid_chain)

__all__ = ["ResidualAdd", "E_BITS", "QUEUE_LATENCY"]

E_BITS = MAX_SHIFT.bit_length()   # e_a, e_b: rounding shifts 0..63 (golden.dyadic.MAX_SHIFT = 62)
QUEUE_LATENCY = 2                 # cycles the output queue adds
QUEUE_SLACK = 3                   # queue beats beyond the pipeline depth: one beat a cycle
LEVELS_PER_STAGE = 2              # 3:2 compressor levels between registers in a multiplier (3 missed
                                  # 150 MHz at 4 lanes: the partial products add a LUT level)


class ResidualAdd(wiring.Component):
    """Streaming residual add of two joined streams, ``lanes`` elements per beat, the layer's
    requantizers loaded at run time.

    Parameters (capabilities)
    -------------------------
    bits : int
        Signed width of both inputs and of the output (HwConfig ``residual_bits``, 16 by
        default).  A narrower branch (an 8-bit activation) is sign-extended by the host.
    lanes : int
        Elements per beat (HwConfig ``lanes``).
    mult_bits : int
        Width of the unsigned multipliers ``m_a``, ``m_b`` (HwConfig ``mult_bits``; golden
        ``MULT_BITS`` = 16).

    Members
    -------
    c : In(stream.Signature(StructLayout({"m_a": unsigned(mult_bits), "e_a": unsigned(6),
                                          "m_b": unsigned(mult_bits), "e_b": unsigned(6)})))
        The layer's requantizers (the golden op's attrs, :meth:`const_beats`), one beat per
        layer; ``e`` is :data:`E_BITS` = 6 bits (golden ``MAX_SHIFT`` = 62).  Accepted only
        while the unit is idle (nothing in the pipeline or the output queue); while
        ``c.valid`` is high, and for ``lanes - 1`` cycles after the beat, no data is accepted.  The constants persist until the next load;
        before the first load the output is unspecified.
    a, b : In(stream.Signature(ArrayLayout(signed(bits), lanes)))
        The two branches; a beat is taken only when both are valid (a join).
    o : Out(stream.Signature(ArrayLayout(signed(bits), lanes)))

    Latency and throughput
    ----------------------
    ``latency`` cycles (13 at 16 bits, mult_bits 16: the 11 stages above and the output
    queue's 2) from the input handshake to the output's valid, measured by
    tests/test_hw_elementwise.py; one beat (``lanes`` elements) per cycle while both inputs
    are valid and ``o.ready`` is high.  Under back-pressure the pipeline runs on into its
    output queue (``depth + 3`` beats); the inputs' ready drops when its credits are spent.
    Loading a layer's constants takes one cycle (the ``c`` handshake) once the unit is idle,
    then ``lanes - 1`` cycles while they reach every lane's copy
    (:func:`hwgen.pipeline.lane_constants`) before data are accepted.

    The signature depends on the parameters, so it is passed to ``Component.__init__``
    instead of being written as class annotations.
    """

    def __init__(self, *, bits: int = 16, lanes: int = 1, mult_bits: int = MULT_BITS):
        self.bits = check_range("residual_bits", bits, 4, 32)
        self.lanes = check_range("lanes", lanes, 1, 64)
        self.mult_bits = check_range("mult_bits", mult_bits, 2, 32)
        self.c_layout = data.StructLayout({"m_a": unsigned(mult_bits), "e_a": unsigned(E_BITS),
                                           "m_b": unsigned(mult_bits), "e_b": unsigned(E_BITS)})
        self.depth = self._pipeline_depth()
        self.latency = self.depth + QUEUE_LATENCY
        super().__init__({
            "c": In(stream.Signature(self.c_layout)),
            "a": In(stream.Signature(lane_layout(signed(bits), lanes))),
            "b": In(stream.Signature(lane_layout(signed(bits), lanes))),
            "o": Out(stream.Signature(lane_layout(signed(bits), lanes))),
        })

    @classmethod
    def from_config(cls, hw) -> "ResidualAdd":
        """The unit for ``hw`` (HwConfig ``residual_bits``, ``lanes``, ``mult_bits``)."""
        return cls(bits=hw.residual_bits, lanes=hw.lanes, mult_bits=hw.mult_bits)

    def const_beats(self, attrs: dict, consts: dict | None = None) -> list[dict[str, int]]:
        """The one ``c`` beat of an add layer (golden ``attrs``: ``m_a``, ``e_a``, ``m_b``,
        ``e_b``, ``out_bits``), after checking that it fits the unit; a layer that does not is
        refused with one line naming the field, the need and the limit."""
        ob = attrs.get("out_bits")
        if ob != self.bits:
            raise UserError(f"add out_bits = {ob} does not fit the unit: the unit has residual_bits {self.bits}")
        beat = {}
        for k, bits, why in (("m_a", self.mult_bits, f"mult_bits {self.mult_bits}"),
                             ("e_a", E_BITS, f"golden MAX_SHIFT {MAX_SHIFT}"),
                             ("m_b", self.mult_bits, f"mult_bits {self.mult_bits}"),
                             ("e_b", E_BITS, f"golden MAX_SHIFT {MAX_SHIFT}")):
            v = attrs.get(k)
            if isinstance(v, bool) or not isinstance(v, int):
                raise UserError(f"add {k} = {v!r} does not fit the unit: an integer is needed")
            if v < 0:
                raise UserError(f"add {k} = {v} does not fit the unit: needs >= 0")
            if v >> bits:
                raise UserError(f"add {k} = {v} does not fit the unit: needs {v.bit_length()} bits, the unit has "
                                f"{bits} ({why})")
            beat[k] = v
        return [beat]

    def _branch(self, st: Stager, x, m, e):
        p, _ = multiply_stages(st, x, m, name="p", levels_per_stage=LEVELS_PER_STAGE)
        r, _ = rshift_round_stages(st, p, e, name="r")
        out, _ = saturate_stages(st, r, self.bits, name="c")
        return out

    def _lane(self, m: Module, k, a, b, prefix: str = ""):
        """One lane: returns the registered output and the stage count."""
        sa, sb = Stager(m, Const(1), prefix=f"{prefix}a_"), Stager(m, Const(1), prefix=f"{prefix}b_")
        ra = self._branch(sa, a, k.m_a, k.e_a)
        rb = self._branch(sb, b, k.m_b, k.e_b)
        assert sa.depth == sb.depth
        st = Stager(m, Const(1), prefix=f"{prefix}s_")
        s = st.stage(sum=ra + rb)                                     # bits + 1
        lo, hi = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        over = s.sum[-1] ^ s.sum[-2]
        out = Mux(over, Mux(s.sum[-1], Const(lo, signed(self.bits)), Const(hi, signed(self.bits))),
                  s.sum[:self.bits].as_signed())
        o = st.stage(o=out).o
        return o, sa.depth + st.depth

    def _pipeline_depth(self) -> int:
        m = Module()
        m._MustUse__silence = True
        _, depth = self._lane(m, Signal(self.c_layout), Signal(signed(self.bits)), Signal(signed(self.bits)))
        return depth

    def elaborate(self, platform):
        m = Module()
        c, a, b, o = self.c, self.a, self.b, self.o
        c_fire = c.valid & c.ready
        go = Signal()
        fire = a.valid & b.valid & go
        outs = []
        copies, settled = lane_constants(m, c.payload, c_fire, self.c_layout, self.lanes)
        for k in range(self.lanes):
            out, depth = self._lane(m, copies[k], a.payload[k], b.payload[k], prefix=f"l{k}")
            assert depth == self.depth
            outs.append(out)
        valid = valid_chain(m, self.depth, fire)
        room, idle = credited_output(m, o, Cat(*outs), valid, fire, self.depth + QUEUE_SLACK)
        m.d.comb += [go.eq(room & ~c.valid & settled), a.ready.eq(go & b.valid), b.ready.eq(go & a.valid), c.ready.eq(idle)]
        return m
