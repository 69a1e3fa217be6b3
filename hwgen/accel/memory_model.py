"""External memory for simulation: the accelerator core and a word memory behind its ports in
one design, so that a whole-model run needs no Python on the bus (cocotbext-axi's ``AxiRam``
wakes Python on every beat).  This is a test fixture in hardware form, not part of the
accelerator.

:class:`MemoryModel` serves the core's read and write ports (:mod:`hwgen.accel.extmem`) with a
fixed read latency, random back-pressure from an LFSR (probability ``stall / 256`` on every
ready and valid it drives), and an error response for every access to words
``err_lo <= addr < err_hi`` (AXI SLVERR).  A host port loads and reads the memory words while
the core is idle.  :class:`AccelSimTop` is the AXI accelerator plus the model.

The model's words are a Verilog module of its own (:data:`WORDS_VERILOG`, instantiated by
name; :func:`sim.accel_run.build` appends it), not an ``amaranth.lib.memory.Memory``:
Amaranth writes a memory's initial contents one bit at a time, and for the 2^20 words of 64
bits a DeiT-Tiny image needs that took minutes (2^17 x 16 bits: 9 s).  Verilator starts
every word at zero, as the Memory's ``init=[]`` did.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, ClockDomain, ClockSignal, DomainRenamer, Instance, Module, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .extmem import LEN_BITS, read_port, write_port
from .isa import EXT_BITS

__all__ = ["MemoryModel", "AccelSimTop", "WORDS_VERILOG"]

WORDS_MODULE = "accel_sim_words"
# Two reads (the model's, the host's) and one byte-enabled write per cycle; reads return the
# word before this cycle's write, one cycle after the address (a non-transparent read port).
WORDS_VERILOG = f"""
module {WORDS_MODULE} #(parameter WIDTH = 64, parameter DEPTH = 1024, parameter ABITS = 10) (
  input clk,
  input [ABITS-1:0] raddr, output reg [WIDTH-1:0] rdata,
  input [ABITS-1:0] haddr, output reg [WIDTH-1:0] hdata,
  input [ABITS-1:0] waddr, input [WIDTH-1:0] wdata, input [WIDTH/8-1:0] wen
);
  reg [WIDTH-1:0] mem [0:DEPTH-1];
  integer i;
  always @(posedge clk) begin
    rdata <= mem[raddr];
    hdata <= mem[haddr];
    for (i = 0; i < WIDTH / 8; i = i + 1)
      if (wen[i]) mem[waddr][i * 8 +: 8] <= wdata[i * 8 +: 8];
  end
endmodule
"""


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
        Cycles from a read word's issue to its data (>= 2); a burst's words issue one a cycle
        after its request is dequeued.

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
        abits = max(1, (self.words - 1).bit_length())
        rd = SimpleNamespace(addr=Signal(abits, name="rd_addr"), data=Signal(wb, name="rd_data"))
        wr = SimpleNamespace(addr=Signal(abits, name="wr_addr"), data=Signal(wb, name="wr_data"),
                             en=Signal(wb // 8, name="wr_en"))
        host_addr = Signal(abits)
        m.submodules.words = Instance(WORDS_MODULE, p_WIDTH=wb, p_DEPTH=self.words, p_ABITS=abits,
                                      i_clk=ClockSignal(), i_raddr=rd.addr, o_rdata=rd.data,
                                      i_haddr=host_addr, o_hdata=self.host_rdata,
                                      i_waddr=wr.addr, i_wdata=wr.data, i_wen=wr.en)
        m.d.comb += host_addr.eq(self.host_addr)

        lfsr_ar, lfsr_r, lfsr_aw = _lfsr(m, "lfsr_ar", 0xACE1), _lfsr(m, "lfsr_r", 0x1D2B), _lfsr(m, "lfsr_aw", 0x7F31)

        def go(r):
            return r[:8] >= self.stall

        def bad(addr):
            return (addr >= self.err_lo) & (addr < self.err_hi)

        # --- reads: bursts queued, their words issued one a cycle into a delay line of lat - 1
        #     stages, the read port, a response queue ---------------------------------------------
        depth = lat + 4
        aw = EXT_BITS - self.word_lb
        m.submodules.arq = arq = SyncFIFO(width=aw + LEN_BITS, depth=4)
        m.submodules.rq = rq = SyncFIFO(width=wb + 1, depth=depth)
        m.d.comb += [self.ar.ready.eq(go(lfsr_ar) & arq.w_rdy), arq.w_en.eq(self.ar.valid & self.ar.ready),
                     arq.w_data.eq(Cat(self.ar.payload.addr, self.ar.payload.len))]
        valid = [Signal(name=f"rv{k}") for k in range(lat)]
        addr = [Signal(EXT_BITS, name=f"ra{k}") for k in range(lat)]
        in_flight = Signal(range(depth + 1))
        m.d.comb += in_flight.eq(sum(valid, rq.level))
        cur, left = Signal(EXT_BITS), Signal(LEN_BITS + 1)
        word = left.any() & (in_flight < depth)
        m.d.comb += arq.r_en.eq(arq.r_rdy & (~left.any() | ((left == 1) & word)))   # bursts back to back
        with m.If(arq.r_en):
            m.d.sync += [cur.eq(arq.r_data[:aw]), left.eq(arq.r_data[aw:] + 1)]
        with m.Elif(word):
            m.d.sync += [cur.eq(cur + 1), left.eq(left - 1)]
        m.d.sync += [valid[0].eq(word), addr[0].eq(cur)]
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
    """The AXI accelerator (:class:`hwgen.accel.axi.Accelerator`) with a :class:`MemoryModel` of
    ``words`` words behind an AXI4 slave bridge inside the design: the design every
    accelerator simulation builds (one Verilator build serves both memories).

    The accelerator is an instance of the module ``acc_module`` (its ports are the
    :class:`~hwgen.accel.axi.Accelerator`'s, with ``clk`` and ``rst``), whose Verilog the
    builder supplies (:func:`sim.accel_run.build`: the committed ``rtl/accelerator.v`` when it
    is this very design, so the simulation runs the file of record, and elaborating the
    accelerator, most of a minute, is skipped).

    ``use_model`` high: the accelerator's AXI4 master talks to the model (the simulator runs
    free); low: to the top's ``m_axi_*`` ports, where cocotbext-axi's ``AxiRam`` answers.
    The bridge takes single-beat writes only (the accelerator writes no bursts).

    Members
    -------
    m_axi_*, s_axil_*, irq : the accelerator's
    use_model : In(1)
    stall, err_lo, err_hi, host_* : the memory model's, each registered first (host_rdata two
        cycles after host_addr)
    """

    def __init__(self, hw, accel=None, words: int = 1 << 16, latency: int = 4, acc_module: str = "accelerator"):
        from .axi import accelerator_signature
        from .compiler import AccelConfig
        from .core import _lb

        self.word_lb = _lb((accel or AccelConfig()).ext_word_bytes)
        self.acc_ports = accelerator_signature(self.word_lb)
        self.acc_module = acc_module
        self.model = MemoryModel(words, self.word_lb, latency)
        wb = 8 << self.word_lb
        super().__init__({
            **self.acc_ports,
            "use_model": In(1), "stall": In(8), "err_lo": In(EXT_BITS), "err_hi": In(EXT_BITS),
            "host_addr": In(EXT_BITS), "host_wdata": In(wb), "host_we": In(1), "host_rdata": Out(wb),
        })

    def elaborate(self, platform):
        m = Module()
        # Verilator evaluates everything that depends combinationally on a top-level input at
        # every eval, twice a clock period (cocotb toggles the clock).  Amaranth's synchronous
        # reset puts rst into every register's next-state logic, which made that the whole
        # accelerator: so the design runs in domain "core", reset by a registered copy of rst,
        # and the quasi-static inputs are registered too (one cycle later; the testbench sets
        # them long before they matter and reads the host port two cycles after the address).
        m.domains.core = ClockDomain("core", local=True)
        rst_q = Signal(init=1, reset_less=True, name="rst_q")
        m.d.sync += rst_q.eq(ResetSignal())
        m.d.comb += [ClockSignal("core").eq(ClockSignal()), ResetSignal("core").eq(rst_q)]
        quasi_static = ("use_model", "stall", "err_lo", "err_hi", "host_addr", "host_wdata", "host_we")
        q = {}
        for name in quasi_static:
            port = getattr(self, name)
            q[name] = Signal(len(port), reset_less=True, name=f"{name}_q")
            m.d.sync += q[name].eq(port)

        acc = SimpleNamespace(**{name: Signal(member.shape, name=f"acc_{name}")
                                 for name, member in self.acc_ports.items()})
        m.submodules.acc = Instance(
            self.acc_module, i_clk=ClockSignal(), i_rst=rst_q,
            **{("o_" if member.flow == Out else "i_") + name: getattr(acc, name)
               for name, member in self.acc_ports.items()})
        model = self.model
        m.submodules.model = DomainRenamer("core")(model)
        wlb = self.word_lb
        use = q["use_model"]
        for name, member in self.signature.members.items():
            if not name.startswith(("s_axil_", "irq", "m_axi_")):
                continue
            if member.flow == Out:          # an output of the accelerator
                value = getattr(acc, name)
                if name.startswith("m_axi_") and name.endswith(("valid", "ready")):
                    value = value & ~use    # the outside memory sees nothing while the model serves
                m.d.comb += getattr(self, name).eq(value)
            elif not name.startswith("m_axi_"):
                m.d.comb += getattr(acc, name).eq(getattr(self, name))
        # the accelerator's AXI inputs: from the outside, or from the bridge to the model
        lens = SyncFIFO(width=LEN_BITS, depth=8)
        m.submodules.lens = DomainRenamer("core")(lens)
        beat = Signal(LEN_BITS)
        with m.If(~use):
            for name in ("awready", "wready", "bid", "bresp", "bvalid", "arready", "rid", "rdata", "rresp",
                         "rlast", "rvalid"):
                m.d.comb += getattr(acc, f"m_axi_{name}").eq(getattr(self, f"m_axi_{name}"))
        with m.Else():
            ar_ok = model.ar.ready & lens.w_rdy
            m.d.comb += [
                model.ar.valid.eq(acc.m_axi_arvalid & lens.w_rdy), model.ar.payload.addr.eq(acc.m_axi_araddr >> wlb),
                model.ar.payload.len.eq(acc.m_axi_arlen), acc.m_axi_arready.eq(ar_ok),
                lens.w_en.eq(acc.m_axi_arvalid & ar_ok), lens.w_data.eq(acc.m_axi_arlen),
                acc.m_axi_rvalid.eq(model.r.valid), acc.m_axi_rdata.eq(model.r.payload.data),
                acc.m_axi_rresp.eq(model.r.payload.err << 1), acc.m_axi_rlast.eq(beat == lens.r_data),
                model.r.ready.eq(acc.m_axi_rready),
                model.aw.valid.eq(acc.m_axi_awvalid & acc.m_axi_wvalid),
                model.aw.payload.addr.eq(acc.m_axi_awaddr >> wlb), model.aw.payload.data.eq(acc.m_axi_wdata),
                model.aw.payload.strb.eq(acc.m_axi_wstrb),
                acc.m_axi_awready.eq(model.aw.ready & acc.m_axi_wvalid),
                acc.m_axi_wready.eq(model.aw.ready & acc.m_axi_awvalid),
                acc.m_axi_bvalid.eq(model.b.valid), acc.m_axi_bresp.eq(model.b.payload.err << 1),
                model.b.ready.eq(acc.m_axi_bready),
            ]
            with m.If(model.r.valid & model.r.ready):
                with m.If(beat == lens.r_data):
                    m.d.comb += lens.r_en.eq(1)
                    m.d.core += beat.eq(0)
                with m.Else():
                    m.d.core += beat.eq(beat + 1)
        for name in quasi_static[1:]:
            m.d.comb += getattr(model, name).eq(q[name])
        m.d.comb += self.host_rdata.eq(model.host_rdata)
        return m
