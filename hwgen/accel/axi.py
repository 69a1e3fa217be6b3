"""The accelerator with standard interfaces: an AXI4 master to external memory, an AXI4-Lite
slave of control and status registers, and an interrupt line.

Ports are flat and named as AXI names them (``m_axi_araddr``, ``s_axil_wdata``, ...), so a
system integrator (or cocotbext-axi's ``AxiBus.from_prefix``) finds them by name.

Registers (32 bits, byte addresses on the AXI4-Lite slave; an unmapped address answers SLVERR):

========  ======  ===================================================================
``0x00``  W       CTRL: bit 0 = 1 starts the program at PROG (a start while busy stops
                  the run with error BUSY)
``0x04``  R       STATUS: bit 0 busy, bit 1 done, bits 7..4 the error code
                  (:class:`hwgen.accel.core.Error`)
``0x08``  RW      PROG: byte address of the program's first instruction
``0x0C``  RW      IRQ: bit 0 enable; bit 1 pending (set when a run ends; write 1 to clear).
                  The ``irq`` line is enable AND pending.
``0x10``  R       PC: the instruction being run (after a fault: the faulty one)
``0x14``  R       CYCLES, low word (cycles of the last run)
``0x18``  R       CYCLES, high word
``0x1C``  R       ID: 0x54495649 ("IVIT" little-endian, the program image's magic)
``0x20``  RW      IMAGES: images per start (0 counts as 1); image k's input and logits
                  sit k x IMAGE_STRIDE bytes on
``0x24``  RW      IMAGE_STRIDE: the program header's ``image_stride``
``0x40``  R       OP_CYCLES: cycles per opcode k at ``0x40 + 8 k`` (low) and ``+ 4`` (high),
                  k = 0..15 (:class:`hwgen.accel.isa.Opcode`)
========  ======  ===================================================================
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .compiler import MAGIC
from .core import CYCLE_BITS, AccelCore
from .extmem import LEN_BITS
from .isa import EXT_BITS
from ..pipeline import register_slice

__all__ = ["Accelerator", "REGS"]

REGS = {"CTRL": 0x00, "STATUS": 0x04, "PROG": 0x08, "IRQ": 0x0C, "PC": 0x10, "CYCLES": 0x14, "ID": 0x1C,
        "IMAGES": 0x20, "IMAGE_STRIDE": 0x24, "OP_CYCLES": 0x40}
LITE_ADDR_BITS = 8
ID_BITS = 1               # every transaction has ID 0: responses come back in order
RESP_OKAY, RESP_SLVERR = 0, 2


def _axi4_master(word_lb: int) -> dict:
    wb = 8 << word_lb
    return {
        "m_axi_awid": Out(ID_BITS), "m_axi_awaddr": Out(EXT_BITS), "m_axi_awlen": Out(LEN_BITS), "m_axi_awsize": Out(3), "m_axi_awburst": Out(2),
        "m_axi_awvalid": Out(1), "m_axi_awready": In(1),
        "m_axi_wdata": Out(wb), "m_axi_wstrb": Out(wb // 8), "m_axi_wlast": Out(1), "m_axi_wvalid": Out(1),
        "m_axi_wready": In(1),
        "m_axi_bid": In(ID_BITS), "m_axi_bresp": In(2), "m_axi_bvalid": In(1), "m_axi_bready": Out(1),
        "m_axi_arid": Out(ID_BITS), "m_axi_araddr": Out(EXT_BITS), "m_axi_arlen": Out(LEN_BITS), "m_axi_arsize": Out(3), "m_axi_arburst": Out(2),
        "m_axi_arvalid": Out(1), "m_axi_arready": In(1),
        "m_axi_rid": In(ID_BITS), "m_axi_rdata": In(wb), "m_axi_rresp": In(2), "m_axi_rlast": In(1), "m_axi_rvalid": In(1), "m_axi_rready": Out(1),
    }


def _axi4_lite_slave() -> dict:
    return {
        "s_axil_awaddr": In(LITE_ADDR_BITS), "s_axil_awvalid": In(1), "s_axil_awready": Out(1),
        "s_axil_wdata": In(32), "s_axil_wstrb": In(4), "s_axil_wvalid": In(1), "s_axil_wready": Out(1),
        "s_axil_bresp": Out(2), "s_axil_bvalid": Out(1), "s_axil_bready": In(1),
        "s_axil_araddr": In(LITE_ADDR_BITS), "s_axil_arvalid": In(1), "s_axil_arready": Out(1),
        "s_axil_rdata": Out(32), "s_axil_rresp": Out(2), "s_axil_rvalid": Out(1), "s_axil_rready": In(1),
    }


def accelerator_signature(word_lb: int) -> dict:
    """The :class:`Accelerator`'s ports for a data bus of 2^``word_lb`` bytes (what a design
    that instances its Verilog connects)."""
    return {**_axi4_master(word_lb), **_axi4_lite_slave(), "irq": Out(1)}


class Accelerator(wiring.Component):
    """:class:`~hwgen.accel.core.AccelCore` behind an AXI4 master, an AXI4-Lite register slave
    (module docstring) and an interrupt.

    Parameters
    ----------
    hw, accel : HwConfig, AccelConfig
        As for the core; ``accel.ext_word_bytes`` is the AXI4 data width in bytes.
    read_during_write : str
        As for the core (``"new"``: a verification build).

    Members
    -------
    m_axi_* : the AXI4 master (INCR bursts for reads; single-beat writes; every ID 0)
    s_axil_* : the AXI4-Lite slave
    irq : Out(1)
    """

    def __init__(self, hw, accel=None, read_during_write: str = "old"):
        self.core = AccelCore(hw, accel, read_during_write)
        self.word_lb = self.core.word_lb
        super().__init__(accelerator_signature(self.word_lb))

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        self._master(m, core)
        self._registers(m, core)
        return m

    def _master(self, m, core) -> None:
        """The core's word ports on AXI4: a read request is one INCR burst; a write is one
        AW beat and one W beat (each handshakes on its own) per word.  Every channel passes a
        register slice (:func:`hwgen.pipeline.register_slice`), so the bus's valid, ready and payload signals are
        flip-flops on this side: no path runs from the bus through the core's handshakes."""
        wlb = self.word_lb
        ar, ar_out = register_slice(m, "ar", core.ar.valid, core.ar.payload, core.ar.ready)
        m.d.comb += [
            self.m_axi_araddr.eq(ar_out.addr << wlb), self.m_axi_arlen.eq(ar_out.len),
            self.m_axi_arsize.eq(wlb), self.m_axi_arburst.eq(1), self.m_axi_arvalid.eq(ar.r_rdy),
            ar.r_en.eq(self.m_axi_arready),
        ]
        r, _ = register_slice(m, "r", self.m_axi_rvalid, Cat(self.m_axi_rdata, self.m_axi_rresp[1]), self.m_axi_rready)
        m.d.comb += [core.r.valid.eq(r.r_rdy), core.r.payload.as_value().eq(r.r_data), r.r_en.eq(core.r.ready)]
        b, _ = register_slice(m, "b", self.m_axi_bvalid, self.m_axi_bresp[1], self.m_axi_bready)
        m.d.comb += [core.b.valid.eq(b.r_rdy), core.b.payload.err.eq(b.r_data), b.r_en.eq(core.b.ready)]

        aw, aw_out = register_slice(m, "aw", core.aw.valid, core.aw.payload, core.aw.ready)
        aw_sent, w_sent = Signal(), Signal()
        aw_ok = self.m_axi_awready | aw_sent
        w_ok = self.m_axi_wready | w_sent
        m.d.comb += [
            self.m_axi_awaddr.eq(aw_out.addr << wlb), self.m_axi_awlen.eq(0), self.m_axi_awsize.eq(wlb),
            self.m_axi_awburst.eq(1), self.m_axi_awvalid.eq(aw.r_rdy & ~aw_sent),
            self.m_axi_wdata.eq(aw_out.data), self.m_axi_wstrb.eq(aw_out.strb),
            self.m_axi_wlast.eq(1), self.m_axi_wvalid.eq(aw.r_rdy & ~w_sent),
            aw.r_en.eq(aw_ok & w_ok),
        ]
        with m.If(aw.r_rdy & aw_ok & w_ok):
            m.d.sync += [aw_sent.eq(0), w_sent.eq(0)]
        with m.Else():
            with m.If(self.m_axi_awvalid & self.m_axi_awready):
                m.d.sync += aw_sent.eq(1)
            with m.If(self.m_axi_wvalid & self.m_axi_wready):
                m.d.sync += w_sent.eq(1)

    def _registers(self, m, core) -> None:
        prog = Signal(EXT_BITS)
        images, image_stride = Signal(16, init=1), Signal(EXT_BITS)
        m.d.comb += [core.images.eq(images), core.image_stride.eq(image_stride)]
        irq_en, pending = Signal(), Signal()
        done_d = Signal()
        m.d.sync += done_d.eq(core.done)
        # the start, a register (one cycle after CTRL's write): the core's run set-up (the program
        # counter, the counters' clear) then starts at a flip-flop, not at the write's address decode
        start = Signal(name="start")
        m.d.sync += start.eq(0)
        m.d.comb += core.start.eq(start)
        m.d.comb += [core.prog.eq(prog), self.irq.eq(irq_en & pending)]

        # --- writes: address and data taken in either order, then one response ------------
        aw_held, w_held = Signal(), Signal()
        waddr, wdata = Signal(LITE_ADDR_BITS), Signal(32)
        bvalid, bresp = Signal(), Signal(2)
        m.d.comb += [self.s_axil_awready.eq(~aw_held & ~bvalid), self.s_axil_wready.eq(~w_held & ~bvalid),
                     self.s_axil_bvalid.eq(bvalid), self.s_axil_bresp.eq(bresp)]
        with m.If(self.s_axil_awvalid & self.s_axil_awready):
            m.d.sync += [aw_held.eq(1), waddr.eq(self.s_axil_awaddr)]
        with m.If(self.s_axil_wvalid & self.s_axil_wready):
            m.d.sync += [w_held.eq(1), wdata.eq(self.s_axil_wdata)]
        with m.If(bvalid & self.s_axil_bready):
            m.d.sync += bvalid.eq(0)
        with m.If(core.done & ~done_d):       # a run ended
            m.d.sync += pending.eq(1)
        with m.If(aw_held & w_held):
            m.d.sync += [aw_held.eq(0), w_held.eq(0), bvalid.eq(1), bresp.eq(RESP_OKAY)]
            with m.Switch(waddr[2:]):
                with m.Case(REGS["CTRL"] >> 2):
                    m.d.sync += start.eq(wdata[0])
                with m.Case(REGS["PROG"] >> 2):
                    m.d.sync += prog.eq(wdata)
                with m.Case(REGS["IMAGES"] >> 2):
                    m.d.sync += images.eq(wdata)
                with m.Case(REGS["IMAGE_STRIDE"] >> 2):
                    m.d.sync += image_stride.eq(wdata)
                with m.Case(REGS["IRQ"] >> 2):
                    m.d.sync += irq_en.eq(wdata[0])
                    with m.If(wdata[1]):
                        m.d.sync += pending.eq(0)
                with m.Default():
                    m.d.sync += bresp.eq(RESP_SLVERR)

        # --- reads ------------------------------------------------------------------------------
        rvalid, rdata, rresp = Signal(), Signal(32), Signal(2)
        m.d.comb += [self.s_axil_arready.eq(~rvalid), self.s_axil_rvalid.eq(rvalid), self.s_axil_rdata.eq(rdata),
                     self.s_axil_rresp.eq(rresp)]
        with m.If(rvalid & self.s_axil_rready):
            m.d.sync += rvalid.eq(0)
        regs = {REGS["STATUS"]: Const(0, 32) | core.busy | (core.done << 1) | (core.error << 4),
                REGS["PROG"]: prog, REGS["IRQ"]: irq_en | (pending << 1), REGS["PC"]: core.pc,
                REGS["CYCLES"]: core.cycles[:32], REGS["CYCLES"] + 4: core.cycles[32:],
                REGS["ID"]: Const(MAGIC, 32), REGS["IMAGES"]: images, REGS["IMAGE_STRIDE"]: image_stride}
        for k in range(16):
            regs[REGS["OP_CYCLES"] + 8 * k] = core.op_cycles[k][:32]
            regs[REGS["OP_CYCLES"] + 8 * k + 4] = core.op_cycles[k][32:CYCLE_BITS]
        with m.If(self.s_axil_arvalid & self.s_axil_arready):
            m.d.sync += [rvalid.eq(1), rresp.eq(RESP_SLVERR), rdata.eq(0)]
            with m.Switch(self.s_axil_araddr[2:]):
                for addr, value in regs.items():
                    with m.Case(addr >> 2):
                        m.d.sync += [rdata.eq(value), rresp.eq(RESP_OKAY)]
