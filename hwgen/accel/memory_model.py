"""External memory for simulation: the accelerator core and a word memory behind its ports in
one design, so that a whole-model run needs no Python on the bus (cocotbext-axi's ``AxiRam``
wakes Python on every beat).  This is a test fixture in hardware form, not part of the
accelerator.

:class:`MemoryModel` serves the core's read and write ports (:mod:`hwgen.accel.extmem`) with a
fixed read latency, random back-pressure from an LFSR (probability ``stall / 256`` on every
ready and valid it drives), and an error response for every access to words
``err_lo <= addr < err_hi`` (AXI SLVERR).  A host port loads and reads the memory words while
the core is idle.  :class:`AccelSimTop` is the core plus the model.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .core import CYCLE_BITS, AccelCore
from .extmem import read_port, write_port
from .isa import EXT_BITS

__all__ = ["MemoryModel", "AccelSimTop"]


def _lfsr(m: Module, name: str, seed: int) -> Signal:
    """A 16-bit Fibonacci LFSR (taps 16, 14, 13, 11), stepped every cycle."""
    r = Signal(16, init=seed, name=name)
    m.d.sync += r.eq(Cat(r[15] ^ r[13] ^ r[12] ^ r[10], r[:15]))
    return r


class MemoryModel(wiring.Component):
    """A word memory on the core's ports.

    Parameters
    ----------
    words : int
        Memory size in words.
    word_lb : int
        log2 of the bytes of a word.
    latency : int
        Cycles from a read request's handshake to its data (>= 2).

    Members
    -------
    ar, r, aw, b : the core's ports, flipped (this is the memory side)
    stall : In(8)
        Back-pressure: each ready or valid the model drives is low with probability stall/256.
    err_lo, err_hi : In(EXT_BITS)
        Word addresses in [err_lo, err_hi) answer with an error.
    host_addr, host_wdata, host_we, host_rdata : the host's port (host_rdata one cycle after host_addr)
    """

    def __init__(self, words: int, word_lb: int = 3, latency: int = 4):
        self.words, self.word_lb, self.latency = words, word_lb, max(2, latency)
        wb = 8 << word_lb
        super().__init__({
            **{k: v.flip() for k, v in read_port(word_lb).items()},
            **{k: v.flip() for k, v in write_port(word_lb).items()},
            "stall": In(8),
            "err_lo": In(EXT_BITS),
            "err_hi": In(EXT_BITS),
            "host_addr": In(EXT_BITS),
            "host_wdata": In(wb),
            "host_we": In(1),
            "host_rdata": Out(wb),
        })

    def elaborate(self, platform):
        m = Module()
        wb, lat = 8 << self.word_lb, self.latency
        m.submodules.mem = mem = Memory(shape=unsigned(wb), depth=self.words, init=[])
        rd, hrd = mem.read_port(), mem.read_port()
        wr = mem.write_port(granularity=8)
        m.d.comb += [hrd.addr.eq(self.host_addr), self.host_rdata.eq(hrd.data)]

        lfsr_ar, lfsr_r, lfsr_aw = _lfsr(m, "lfsr_ar", 0xACE1), _lfsr(m, "lfsr_r", 0x1D2B), _lfsr(m, "lfsr_aw", 0x7F31)

        def go(r):
            return r[:8] >= self.stall

        def bad(addr):
            return (addr >= self.err_lo) & (addr < self.err_hi)

        # --- reads: a delay line of lat - 1 stages, the read port, a response queue -----------
        depth = lat + 4
        m.submodules.rq = rq = SyncFIFO(width=wb + 1, depth=depth)
        valid = [Signal(name=f"rv{k}") for k in range(lat)]
        addr = [Signal(EXT_BITS, name=f"ra{k}") for k in range(lat)]
        in_flight = Signal(range(depth + 1))
        m.d.comb += in_flight.eq(sum(valid, rq.level))
        m.d.comb += self.ar.ready.eq(go(lfsr_ar) & (in_flight < depth))
        m.d.sync += [valid[0].eq(self.ar.valid & self.ar.ready), addr[0].eq(self.ar.payload.addr)]
        for k in range(1, lat):
            m.d.sync += [valid[k].eq(valid[k - 1]), addr[k].eq(addr[k - 1])]
        m.d.comb += rd.addr.eq(addr[lat - 2])           # data of stage lat - 2 appears at lat - 1
        m.d.comb += [rq.w_en.eq(valid[lat - 1]), rq.w_data.eq(Cat(rd.data, bad(addr[lat - 1])))]
        m.d.comb += [self.r.valid.eq(rq.r_rdy & go(lfsr_r)), self.r.payload.data.eq(rq.r_data[:wb]),
                     self.r.payload.err.eq(rq.r_data[wb]), rq.r_en.eq(self.r.valid & self.r.ready)]

        # --- writes: taken at once (unless the host writes), answered through a queue ----------
        m.submodules.bq = bq = SyncFIFO(width=1, depth=8)
        take = self.aw.valid & self.aw.ready
        m.d.comb += self.aw.ready.eq(go(lfsr_aw) & bq.w_rdy & ~self.host_we)
        with m.If(self.host_we):
            m.d.comb += [wr.addr.eq(self.host_addr), wr.data.eq(self.host_wdata), wr.en.eq(-1)]
        with m.Else():
            m.d.comb += [wr.addr.eq(self.aw.payload.addr), wr.data.eq(self.aw.payload.data),
                         wr.en.eq(self.aw.payload.strb & take.replicate(1 << self.word_lb)
                                  & (~bad(self.aw.payload.addr)).replicate(1 << self.word_lb))]
        m.d.comb += [bq.w_en.eq(take), bq.w_data.eq(bad(self.aw.payload.addr)),
                     self.b.valid.eq(bq.r_rdy), self.b.payload.err.eq(bq.r_data), bq.r_en.eq(self.b.valid & self.b.ready)]
        return m


class AccelSimTop(wiring.Component):
    """:class:`~hwgen.accel.core.AccelCore` and a :class:`MemoryModel` of ``words`` words: the
    design the cocotb tests and the RTL backend simulate.

    Members
    -------
    start, prog, busy, done, error, pc, cycles, op_cycles : the core's
    stall, err_lo, err_hi, host_* : the memory model's
    """

    def __init__(self, hw, accel=None, words: int = 1 << 16, latency: int = 4):
        self.core = AccelCore(hw, accel)
        self.model = MemoryModel(words, self.core.word_lb, latency)
        wb = 8 << self.core.word_lb
        super().__init__({
            "start": In(1), "prog": In(EXT_BITS), "busy": Out(1), "done": Out(1), "error": Out(4),
            "pc": Out(EXT_BITS), "cycles": Out(CYCLE_BITS), "op_cycles": Out(unsigned(CYCLE_BITS)).array(16),
            "stall": In(8), "err_lo": In(EXT_BITS), "err_hi": In(EXT_BITS),
            "host_addr": In(EXT_BITS), "host_wdata": In(wb), "host_we": In(1), "host_rdata": Out(wb),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.model = model = self.model
        for port in ("ar", "r", "aw", "b"):
            wiring.connect(m, getattr(core, port), getattr(model, port))
        m.d.comb += [core.start.eq(self.start), core.prog.eq(self.prog), self.busy.eq(core.busy),
                     self.done.eq(core.done), self.error.eq(core.error), self.pc.eq(core.pc),
                     self.cycles.eq(core.cycles)]
        m.d.comb += [self.op_cycles[k].eq(core.op_cycles[k]) for k in range(16)]
        for name in ("stall", "err_lo", "err_hi", "host_addr", "host_wdata", "host_we"):
            m.d.comb += getattr(model, name).eq(getattr(self, name))
        m.d.comb += self.host_rdata.eq(model.host_rdata)
        return m
