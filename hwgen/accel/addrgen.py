"""The address generator of one buffer port: the five-level loop nest of an instruction
(:mod:`hwgen.accel.isa`), walked one point per ``next``, with no multiplier.

The address of nest point ``(i0..i4)`` is ``base + sum(i_d s_d)``.  The generator keeps, per
level d, the address ``start[d]`` where level d's current iteration began; stepping the
innermost level that has not reached its last index, d, sets ``start[d..4] = start[d] + s_d``
(the inner levels restart there), so every step is one adder and a register load.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .isa import ADDR_BITS, COUNT_BITS, LEVELS, STRIDE_BITS

__all__ = ["AddrGen"]


class AddrGen(wiring.Component):
    """One port's walk over an instruction's loop nest.

    Members
    -------
    load : In(1)
        Start a walk (one cycle): ``n``, ``base`` and ``strides`` are taken; the first point is
        presented on the next cycle.
    n : In(ArrayLayout(unsigned(COUNT_BITS), LEVELS))
        Loop counts, outer to inner (each >= 1).
    base : In(unsigned(ADDR_BITS))
    strides : In(ArrayLayout(signed(STRIDE_BITS), LEVELS))
    next : In(1)
        Advance to the next point (ignored unless ``valid``).
    valid : Out(1)
        ``addr`` is a point of the walk (low after the last point was stepped past).
    addr : Out(signed(ADDR_BITS + 2))
        The element address (negative or beyond the buffer only in a faulty program).
    last : Out(ArrayLayout(1, LEVELS))
        ``last[d]``: level d is at its last index.
    final : Out(1)
        The current point is the walk's last one.
    index : Out(ArrayLayout(unsigned(COUNT_BITS), LEVELS))
        The current point's indices ``i_d``.
    """

    def __init__(self):
        super().__init__({
            "load": In(1),
            "n": In(unsigned(COUNT_BITS)).array(LEVELS),
            "base": In(unsigned(ADDR_BITS)),
            "strides": In(signed(STRIDE_BITS)).array(LEVELS),
            "next": In(1),
            "valid": Out(1),
            "addr": Out(signed(ADDR_BITS + 2)),
            "last": Out(1).array(LEVELS),
            "final": Out(1),
            "index": Out(unsigned(COUNT_BITS)).array(LEVELS),
        })

    def elaborate(self, platform):
        m = Module()
        # The walk keeps n_d - 2 and n_d == 1 rather than n_d, so that each level's "at its last
        # index" flag is a register: no subtractor or comparator sits between the walk and the
        # handshakes that read ``last`` and ``final`` (they were on the critical path).
        nm2 = [Signal(unsigned(COUNT_BITS), name=f"nm2_{d}") for d in range(LEVELS)]
        one = [Signal(name=f"one{d}") for d in range(LEVELS)]
        s = [Signal(signed(STRIDE_BITS), name=f"s{d}") for d in range(LEVELS)]
        i = [Signal(unsigned(COUNT_BITS), name=f"i{d}") for d in range(LEVELS)]
        last = [Signal(name=f"last{d}") for d in range(LEVELS)]
        start = [Signal(signed(ADDR_BITS + 2), name=f"start{d}") for d in range(LEVELS)]
        valid = Signal()

        for d in range(LEVELS):
            m.d.comb += [self.last[d].eq(last[d]), self.index[d].eq(i[d])]
        final = Signal()
        m.d.comb += [
            final.eq(last[0] & last[1] & last[2] & last[3] & last[4]),
            self.final.eq(final),
            self.valid.eq(valid),
            self.addr.eq(start[LEVELS - 1]),
        ]

        with m.If(self.load):
            m.d.sync += valid.eq(1)
            for d in range(LEVELS):
                m.d.sync += [
                    nm2[d].eq(self.n[d] - 2), one[d].eq(self.n[d] == 1), last[d].eq(self.n[d] == 1),
                    s[d].eq(self.strides[d]), i[d].eq(0), start[d].eq(self.base),
                ]
        with m.Elif(self.next & valid):
            with m.If(final):
                m.d.sync += valid.eq(0)
            # the innermost level not at its last index steps; the levels inside it restart
            with m.If(~last[4]):
                m.d.sync += [i[4].eq(i[4] + 1), start[4].eq(start[4] + s[4]), last[4].eq(i[4] == nm2[4])]
            for d in range(LEVELS - 2, -1, -1):
                inner_done = last[d + 1]
                for e in range(d + 2, LEVELS):
                    inner_done = inner_done & last[e]
                with m.Elif(~last[d] & inner_done):
                    nxt = start[d] + s[d]
                    m.d.sync += [i[d].eq(i[d] + 1), start[d].eq(nxt), last[d].eq(i[d] == nm2[d])]
                    for e in range(d + 1, LEVELS):
                        m.d.sync += [i[e].eq(0), start[e].eq(nxt), last[e].eq(one[e])]
        return m
