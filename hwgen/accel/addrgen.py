"""The address generator of one buffer port: the five-level loop nest of an instruction
(:mod:`hwgen.accel.isa`), walked one point per ``next``, with no multiplier.

:class:`AddrWalk` steps the nest; :class:`AddrGen` runs it ahead into a two-entry queue of
points, so that a consumer's ``next`` (a handshake, combinational from ``valid`` through the
op's data path) only pops a register and never reaches the walk's adders and priority logic
(``valid -> next -> start[d]`` was the accelerator's critical path).

The address of nest point ``(i0..i4)`` is ``base + sum(i_d s_d)``.  The generator keeps, per
level d, the address ``start[d]`` where level d's current iteration began; stepping the
innermost level that has not reached its last index, d, sets ``start[d..4] = start[d] + s_d``
(the inner levels restart there), so every step is one adder and a register load.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .isa import ADDR_BITS, COUNT_BITS, LEVELS, STRIDE_BITS

__all__ = ["AddrGen", "AddrWalk"]


def _walk_members() -> dict:
    """The members a walk and its queued form share (see :class:`AddrWalk`)."""
    return {
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
    }


class AddrWalk(wiring.Component):
    """One port's walk over an instruction's loop nest, one point per ``next``.

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
        super().__init__(_walk_members())

    def elaborate(self, platform):
        m = Module()
        # The walk keeps n_d - 2 and n_d == 1 rather than n_d, so that each level's "at its last
        # index" flag is a register: no subtractor or comparator sits between the walk and the
        # handshakes that read ``last`` and ``final`` (they were on the critical path).  Only
        # ``valid`` has a reset: the rest is loaded by ``load`` before ``valid`` rises (the reset
        # net's fanout is timed, and these were 900 of its 3,400 loads in the accelerator).
        nm2 = [Signal(unsigned(COUNT_BITS), name=f"nm2_{d}", reset_less=True) for d in range(LEVELS)]
        one = [Signal(name=f"one{d}", reset_less=True) for d in range(LEVELS)]
        s = [Signal(signed(STRIDE_BITS), name=f"s{d}", reset_less=True) for d in range(LEVELS)]
        i = [Signal(unsigned(COUNT_BITS), name=f"i{d}", reset_less=True) for d in range(LEVELS)]
        last = [Signal(name=f"last{d}", reset_less=True) for d in range(LEVELS)]
        start = [Signal(signed(ADDR_BITS + 2), name=f"start{d}", reset_less=True) for d in range(LEVELS)]
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


class AddrGen(wiring.Component):
    """An :class:`AddrWalk` run ahead into a two-entry queue of points: the walk steps whenever
    the queue is not full (a register), the consumer pops the queue's head.

    A queue of two keeps one point a cycle: in the steady state one entry is held, and the
    walk refills it in the cycle it is popped.  The first point is presented two cycles after
    ``load`` (one more than the bare walk); ``busy`` says the walk has points left.

    Members
    -------
    load, n, base, strides : In
        As :class:`AddrWalk`'s (``load`` also empties the queue).
    next : In(1)
        Pop the head (ignored unless ``valid``).
    valid : Out(1)
        The head is a point of the walk.
    addr, last, final, index : Out
        The head's, as :class:`AddrWalk`'s.
    busy : Out(1)
        Points are left (in the queue or still to walk): the op's walk has not ended.

    Parameters
    ----------
    with_index : bool
        Queue the points' indices too (``index`` stays 0 otherwise: a walk whose consumer
        needs only addresses and level ends saves 2 x 80 flip-flops).
    """

    def __init__(self, with_index: bool = True):
        self.with_index = with_index
        super().__init__({**_walk_members(), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.walk = walk = AddrWalk()
        m.d.comb += [walk.load.eq(self.load), walk.base.eq(self.base)]
        for d in range(LEVELS):
            m.d.comb += [walk.n[d].eq(self.n[d]), walk.strides[d].eq(self.strides[d])]

        def point(prefix):      # (reset-less: the flags below say which entries hold points)
            return SimpleNamespace(addr=Signal(signed(ADDR_BITS + 2), name=f"{prefix}_addr", reset_less=True),
                                   last=[Signal(name=f"{prefix}_last{d}", reset_less=True) for d in range(LEVELS)],
                                   final=Signal(name=f"{prefix}_final", reset_less=True),
                                   index=[Signal(unsigned(COUNT_BITS), name=f"{prefix}_i{d}", reset_less=True) for d in range(LEVELS)])

        def fields(p):
            return [p.addr, *p.last, p.final, *(p.index if self.with_index else [])]

        # Two entries that do not shift: the walk fills the entry ``wp`` names, the consumer reads
        # the one ``rp`` names.  A pop (``next``, a handshake of the op's data path) then toggles
        # one flip-flop and the fill flags, not the enable of a head register of 40 to 110 bits
        # (dst's step into the head's enable was the accelerator's critical path on one seed,
        # 11.39 ns); the cost is one multiplexer level on the head's outputs.
        entries = [point("e0"), point("e1")]
        walked = SimpleNamespace(addr=walk.addr, last=list(walk.last), final=walk.final, index=list(walk.index))
        # the queue's fill as flags (no comparator between them and the walk's step)
        has1, has2 = Signal(), Signal()     # at least one entry; two entries
        rp, wp = Signal(), Signal()         # the head's entry; the entry the walk fills next
        push = Signal()
        pop = Signal()
        m.d.comb += [push.eq(walk.valid & ~has2), walk.next.eq(push), pop.eq(self.next & has1),
                     self.valid.eq(has1), self.busy.eq(has1 | walk.valid)]
        outs = [self.addr, *self.last, self.final, *(self.index if self.with_index else [])]
        m.d.comb += [o.eq(Mux(rp, b, a)) for o, a, b in zip(outs, fields(entries[0]), fields(entries[1]))]

        # Entry ``wp`` is empty whenever the queue is not full: it loads from the walk then,
        # whether or not the walk has a point (a load into an entry that stays empty is harmless:
        # the flags say which entries hold points).
        for k, e in enumerate(entries):
            with m.If(~has2 & (wp == k)):
                m.d.sync += [a.eq(b) for a, b in zip(fields(e), fields(walked))]
        with m.If(self.load):
            m.d.sync += [has1.eq(0), has2.eq(0), rp.eq(0), wp.eq(0)]
        with m.Else():
            # entries after this cycle: has1 + has2 + push - pop
            m.d.sync += [has1.eq(has2 | push | (has1 & ~pop)), has2.eq(Mux(pop, 0, has2 | (has1 & push))),
                         rp.eq(rp ^ pop), wp.eq(wp ^ push)]
        return m
