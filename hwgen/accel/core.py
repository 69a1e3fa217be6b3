"""The accelerator core: the sequencer that fetches and runs a compiled program
(:mod:`hwgen.accel.compiler`), the on-chip activation buffer, the address generators and the
shared units, behind a word-wide external-memory port (:mod:`hwgen.accel.extmem`) and a few
control and status signals (the AXI4 master and the AXI4-Lite registers wrap them).

Execution (one instruction at a time; :mod:`hwgen.accel.interpreter` is the reference):

* fetch: the 64-byte instruction at ``pc`` is read and held in ``ins``, a view of
  :data:`hwgen.accel.isa.LAYOUT`;
* moves (``IM2COL`` .. ``SELECT``): buffer -> buffer, one element per cycle, on the ``src0``
  and ``dst`` address generators;
* ``LOAD``: the element at byte ``ext0 + 2^esize src0`` of external memory to ``dst``
  (sign- or zero-extended); ``STORE``: ``src0`` to byte ``ext0 + 2^esize dst`` (the ``dst``
  generator walks the external index);
* ``SOFTMAX``, ``GELU``, ``LAYERNORM``, ``ADD``: first the op's ``cnt`` constant beats from
  ``ext0`` into the unit's ``c`` stream, then the elements of ``src0`` (and ``src1``) through
  the unit into ``dst``; the GELU and add units take ``lanes`` elements a beat, packed here
  (a short last beat is padded; its extra results are dropped);
* ``LINEAR`` with a ``post`` unit: its constant beats first (after the parameter beats), then
  the GEMM, whose result rows go element by element through the same packer into the GELU or
  add unit (the add's second operand from ``src1``, walked like ``dst``) and on into ``dst``;
* ``LINEAR`` / ``MATMUL`` with ``PRE_UNIT``: the LayerNorm's / Softmax's constant beats first
  (where a post unit's would be), then the GEMM, with ``src0`` walked row by row through that
  unit and its output loaded as operand A (a block's first column tile waits for the whole
  block: the rows come out whole);
* ``END``: done.

A fault never hangs the core: an unknown opcode, a loop count of 0, a buffer address outside
the buffer, an error response on a read or a write, and a ``start`` while busy each stop it
with a code in ``error`` (:class:`Error`), after the reads and writes in flight have come
back; the units are reset on the way.
"""

from __future__ import annotations

import enum
import operator
from functools import reduce
from types import SimpleNamespace

import numpy as np

from amaranth.hdl import (Array, Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Module, Mux, ResetInserter,
                          ResetSignal, Signal, signed, unsigned)
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..capabilities import unit_for
from ..config import HwConfig
from ..bram import block_ram
from ..dsp import dsp_mult
from ..gemm import Gemm
from ..pipeline import credit_counter, credited_output, eq_const, register_slice
from .addrgen import AddrGen
from .compiler import AccelConfig, c_layout
from .extmem import ExtReader, ExtWriter, read_port, write_port
from .compiler import p_layout, w_layout
from .isa import (ADDR_BITS, COUNT_BITS, POST_ADD, POST_GELU, PRE_UNIT, EXT_BITS, FLAG_A_SIGNED, FLAG_EXT_SIGNED, FLAG_PER_IMAGE, FLAG_W_EXT, GEMM_OPS, INSTR_BYTES, LAYOUT, LEVELS,
                  MOVE_OPS, Opcode, beat_bytes)

__all__ = ["AccelCore", "Error", "CYCLE_BITS"]

CYCLE_BITS = 48
# the operand feed's queue: the read pipeline's three cycles (issue -> read -> data -> held) + 3
# keep one beat a cycle (:func:`~hwgen.pipeline.credited_output`)
FEED_QUEUE = 6
DECODE_STAGES = 8         # the decode pipeline's depth (the stages: AccelCore.elaborate): DECODE waits this many cycles
# The block RAMs (hwgen.bram, with its NO_COLLISION) are never read at the address being
# written in the same cycle (the buffer: an instruction's dst never overlaps its sources, which
# the interpreter checks, and instructions do not overlap in time; the lane memories and the W
# cache: reads and writes in different halves), so they need no collision logic (yosys's
# emulation of amaranth's "old data": the write delayed a register stage and a 2:1 mux after
# every block RAM output, a LUT on each read's path).
READ_DURING_WRITE = ("old", "new")      # AccelCore's read_during_write


class _State(enum.IntEnum):
    IDLE = 0
    FETCH = 1
    DECODE = 2
    CONST = 3
    STREAM = 4
    STOP = 5


class Error(enum.IntEnum):
    """The core's ``error`` codes."""
    NONE = 0
    OPCODE = 1        # an opcode the core does not execute
    COUNT = 2         # a loop count of 0
    ADDRESS = 3       # a buffer address outside the buffer
    READ = 4          # an error response (SLVERR/DECERR) on a read
    WRITE = 5         # an error response on a write
    BUSY = 6          # start while busy
    CONST = 7         # LayerNorm constant beats whose last flag is not on their last beat alone


def _lb(nbytes: int) -> int:
    return (nbytes - 1).bit_length()


def _reciprocal(size: int) -> tuple[int, int]:
    """(shift, mult) with ``(x * mult) >> shift == x // size`` for every ``x`` below
    ``2^COUNT_BITS + size`` (a tile count's numerator), checked here over all of them: the
    smallest shift that is exact, so that the product fits one 18 x 18 multiplier (for 9 rows,
    shift 19 and a 16-bit ``mult``; shift 21 took two MULT18s and an adder, 12.6 ns)."""
    top = (1 << COUNT_BITS) + size
    x = np.arange(top, dtype=np.int64)
    for shift in range(size.bit_length(), top.bit_length() + size.bit_length() + 1):
        mult = -(-(1 << shift) // size)
        if np.array_equal((x * mult) >> shift, x // size):
            return shift, mult
    raise AssertionError(f"no exact reciprocal of {size} for {COUNT_BITS}-bit counts")


def _times(x, k: int):
    """``x * k`` for a constant ``k`` >= 1 as a sum of shifts: yosys maps a product by a
    constant to a MULT18X18D, which on a walk's stride (``src0_s1 * 9``) was a critical path
    (12.95 ns: the routes into and out of the DSP column)."""
    return reduce(operator.add, [x << s for s in range(k.bit_length()) if k >> s & 1])


def _one_hot(pairs):
    """The value of the set flag among ``(flag, value)`` pairs (one flag at most is set): a
    flat OR, not a chain of selects."""
    return reduce(operator.or_, [Mux(flag, value, 0) for flag, value in pairs])


def _flagged_slice(m, name, sources, reset):
    """The results of the units in use (``(flag, unit, payload)``, one flag at most set)
    through one register slice (:func:`hwgen.pipeline.register_slice`): each unit's output
    ready is its flag and the slice's room (a level register), so no sink's handshake reaches
    back into a unit.  Returns the slice (the caller drives ``r_en``) and its payload."""
    q, data = register_slice(m, name, Cat(*[flag & u.o.valid for flag, u, _ in sources]).any(),
                             _one_hot((flag, payload) for flag, _, payload in sources), None, reset=reset)
    m.d.comb += [u.o.ready.eq(flag & q.w_rdy) for flag, u, _ in sources]
    return q, data


class AccelCore(wiring.Component):
    """Sequencer, activation buffer, address generators and units.

    Parameters
    ----------
    hw : HwConfig
        The units' capabilities.
    accel : AccelConfig
        Buffer sizes, external word width, GELU units.
    read_during_write : str
        What a block RAM read returns in the cycle its address is written: ``"old"`` (the
        memory's data before the write: amaranth's read ports, the design that is generated) or
        ``"new"`` (the data written: transparent read ports, a build for verification only).
        The block RAMs carry :data:`~hwgen.bram.NO_COLLISION`, so synthesis builds neither: such a read
        must never reach a result, and a program that gives the same results on both builds
        has none that does (``tests/test_accel_rtl.py``).

    Members
    -------
    start : In(1)
        Run the program at byte address ``prog`` (one cycle).
    prog : In(EXT_BITS)
    images, image_stride : In(16), In(EXT_BITS)
        Run the program ``images`` times (0 counts as 1); run k adds ``k image_stride`` to the
        external address of every LOAD and STORE flagged ``FLAG_PER_IMAGE`` (the input, the
        logits).
    busy, done : Out(1)
        ``done`` rises when the program ends or stops on a fault and stays until ``start``.
    error : Out(4)
        :class:`Error` of the last run.
    pc : Out(EXT_BITS)
        The instruction being run (on a fault: the faulty one).
    cycles : Out(CYCLE_BITS)
        Cycles of the last run, and ``op_cycles[opcode]`` those spent on each opcode.
    ar, r, aw, b : external memory (:func:`~hwgen.accel.extmem.read_port`, ``write_port``)
    """

    def __init__(self, hw: HwConfig, accel: AccelConfig | None = None, read_during_write: str = "old"):
        if read_during_write not in READ_DURING_WRITE:
            raise ValueError(f"read_during_write {read_during_write!r}: accepted {', '.join(READ_DURING_WRITE)}")
        self.hw, self.accel = hw, accel or AccelConfig()
        self.new_reads = read_during_write == "new"
        self.word_lb = _lb(self.accel.ext_word_bytes)
        self.softmax = unit_for(hw, "softmax")
        self.gelus = [unit_for(hw, "gelu", v) for v in self.accel.gelus(hw)]
        self.layernorm = unit_for(hw, "layernorm")
        self.add = unit_for(hw, "add")
        # one GEMM for every operand format: signed lanes one bit wider than a_bits hold the
        # unsigned Softmax probabilities too (the compiler checks the accumulator bound)
        self.gemm = Gemm(hw.gemm_rows, hw.gemm_cols, a_bits=hw.a_bits + 1, w_bits=hw.w_bits, acc_bits=hw.acc_bits,
                         mult_bits=hw.mult_bits, a_signed=True, e_bits=hw.gemm_e_bits,
                         mult=self.accel.gemm_mult)
        super().__init__({
            "start": In(1),
            "prog": In(EXT_BITS),
            "images": In(16),
            "image_stride": In(EXT_BITS),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(4),
            "pc": Out(EXT_BITS),
            "cycles": Out(CYCLE_BITS),
            "op_cycles": Out(unsigned(CYCLE_BITS)).array(16),
            **read_port(self.word_lb),
            **write_port(self.word_lb),
        })

    def elaborate(self, platform):
        m = Module()
        hw, accel = self.hw, self.accel
        ab = accel.act_elem_bits
        depth = accel.act_buffer_elems
        lanes = hw.lanes

        # --- parts -------------------------------------------------------------------------------
        m.submodules.reader = reader = ExtReader(self.word_lb)
        m.submodules.writer = writer = ExtWriter(self.word_lb)
        wiring.connect(m, wiring.flipped(self.ar), reader.ar)
        wiring.connect(m, wiring.flipped(self.r), reader.r)
        wiring.connect(m, wiring.flipped(self.aw), writer.aw)
        wiring.connect(m, wiring.flipped(self.b), writer.b)

        # the buffer: one block RAM leaf (hwgen.bram: the read register inside the block) per read
        # port, both written alike (yosys made two copies of one memory with two read ports too)
        (wr_port, rd0), (wr_port1, rd1) = (block_ram(m, f"buffer{k}", depth, ab, self.new_reads) for k in range(2))
        # the buffer's writes a cycle after dst's step: the port's address, data and enable come
        # from registers (the result lane's select by dst's index and its route to the buffer's
        # block RAMs across the die was a critical path, 11.15 ns).  Nothing reads an element in
        # the cycle after its write: an op reads only its sources, and the next op's reads wait
        # for its fetch and decode
        wr = SimpleNamespace(addr=Signal.like(wr_port.addr, name="wr_addr"), data=Signal(ab, name="wr_data"),
                             en=Signal(name="wr_en"))
        wr_q = SimpleNamespace(addr=Signal.like(wr_port.addr, name="wr_addr_q"), data=Signal(ab, name="wr_data_q"),
                               en=Signal(name="wr_en_q"))
        m.d.sync += [wr_q.addr.eq(wr.addr), wr_q.data.eq(wr.data), wr_q.en.eq(wr.en)]
        for port in (wr_port, wr_port1):
            m.d.comb += [port.addr.eq(wr_q.addr), port.data.eq(wr_q.data), port.en.eq(wr_q.en)]

        gens = {}
        for name in ("dst", "src0", "src1"):
            gens[name] = m.submodules[f"gen_{name}"] = AddrGen(with_index=name == "dst")
        unit_rst = Signal(name="unit_rst")    # in STOP: a flag set with the state (:func:`goto`)
        units = {"gemm": self.gemm, "softmax": self.softmax, "layernorm": self.layernorm, "add": self.add,
                 **{f"gelu{k}": g for k, g in enumerate(self.gelus)}}
        for name, u in units.items():
            # each unit runs in a domain of its own whose reset is one register, set from the
            # core's reset or STOP: a ResetInserter's OR of the two is one LUT feeding the unit's
            # thousands of flip-flops, and its two hops across the die were a seed's critical
            # path (11.97 ns).  The unit resets a cycle after STOP (nothing streams in IDLE or
            # FETCH) and a cycle after the core's reset (it is held longer than that).
            u_rst = Signal(init=1, reset_less=True, name=f"{name}_rst")
            m.d.sync += u_rst.eq(ResetSignal() | unit_rst)
            m.domains += (cd := ClockDomain(f"{name}_d", local=True))
            m.d.comb += [cd.clk.eq(ClockSignal()), cd.rst.eq(u_rst)]
            m.submodules[name] = DomainRenamer(f"{name}_d")(u)

        # the instruction and the decode are reset-less: FETCH loads them before anything reads
        # them, and their reset made 511 + 300 loads on the reset net
        ins = Signal(LAYOUT, reset_less=True)
        pc = Signal(EXT_BITS)
        m.d.comb += self.pc.eq(pc)
        op = ins.opcode

        # --- loading the address generators from the instruction --------------------------------
        # the generators load in DECODE's last cycle, whatever the instruction (a register set in
        # the cycle before): the decode pipeline has settled their fields by then, and an
        # instruction that does not stream never reads them (the decision through the decode
        # into the walks' 1000 flip-flops' load was among the timing model's worst paths)
        load_gens = Signal()
        m.d.sync += load_gens.eq(0)
        for name, g in gens.items():
            m.d.comb += [g.load.eq(load_gens), g.base.eq(ins[name])]
            for d in range(LEVELS):
                m.d.comb += [g.n[d].eq(ins[f"n{d}"]), g.strides[d].eq(ins[f"{name}_s{d}"])]

        # The op's selects are registered from ``ins`` (DECODE waits while they settle): they fan
        # out to every data path's multiplexers, and a comparator of the opcode in front of
        # those was on the critical path.
        def registered(expr, name):
            sig = Signal(name=name)
            m.d.sync += sig.eq(expr)
            return sig

        is_op = {o: registered(op == int(o), f"is_{o.name.lower()}") for o in Opcode}
        op_onehot = Signal(16)      # the op's cycle counter (indexed by the opcode's low 4 bits)
        m.d.sync += op_onehot.eq(Const(1, 16) << op[:4])
        is_gemm = registered((op == int(Opcode.LINEAR)) | (op == int(Opcode.MATMUL)), "is_gemm")
        post_gelu = registered((op == int(Opcode.LINEAR)) & eq_const(ins.post, POST_GELU), "post_gelu")
        post_add = registered((op == int(Opcode.LINEAR)) & eq_const(ins.post, POST_ADD), "post_add")
        # operand A through a unit before the array: a LINEAR's through the LayerNorm, a MATMUL's
        # through the Softmax
        pre_ln = registered((op == int(Opcode.LINEAR)) & eq_const(ins.post, PRE_UNIT), "pre_ln")
        pre_sm = registered((op == int(Opcode.MATMUL)) & eq_const(ins.post, PRE_UNIT), "pre_sm")
        post_bad = Signal()         # a post value this op does not take
        m.d.comb += post_bad.eq(is_gemm & ins.post.any() & ~post_gelu & ~post_add & ~pre_ln & ~pre_sm)

        # --- buffer sources: src0, src1 -> small queues of (element, row end, k end, final) ------
        # An element read is registered once more before its queue, by the block RAM's output
        # register (hwgen.bram): from a block's 5.8 ns clock-to-out without it, a route across the
        # die into the queue's LUT-RAM was two seeds' critical path (10.7 ns).  With two reads in
        # flight the queue takes 5 entries to keep one element a cycle.
        def source(name, port, run):
            g = gens[name]
            fifo = SyncFIFO(width=ab + 3, depth=5)
            m.submodules[f"q_{name}"] = ResetInserter(unit_rst)(fifo)
            inflight = Signal(name=f"{name}_inflight")          # the port reads this cycle
            held = Signal(name=f"{name}_held")                  # the element register holds one
            meta = Signal(3, name=f"{name}_meta")
            held_meta = Signal(3, name=f"{name}_held_meta")
            elem = port.data                                    # (BRAM_LATENCY after the issue)
            issue = Signal(name=f"{name}_issue")
            # the queue's room counts the reads in flight, as a register (the sum of the level
            # and the two stages' flags, compared, in front of the issue was a seed's critical
            # path, 9.93 ns)
            cm = Module()
            room, _ = credit_counter(cm, issue, fifo.r_en & fifo.r_rdy, fifo.depth, f"{name}_credit")
            m.submodules[f"{name}_credit"] = ResetInserter(unit_rst)(cm)
            m.d.comb += [issue.eq(run & g.valid & room),
                         port.addr.eq(g.addr), port.en.eq(issue), g.next.eq(issue),
                         fifo.w_en.eq(held), fifo.w_data.eq(Cat(elem, held_meta))]
            m.d.sync += [inflight.eq(issue & ~unit_rst), held.eq(inflight & ~unit_rst),
                         held_meta.eq(meta),
                         meta.eq(Cat(g.last[LEVELS - 1], g.final, g.last[LEVELS - 2] & g.last[LEVELS - 1]))]
            return fifo

        # src0 / src1 read the buffer: flags set with STREAM (:func:`goto`), from the op
        run0, run1 = Signal(name="run0"), Signal(name="run1")
        q0, q1 = source("src0", rd0, run0), source("src1", rd1, run1)
        s0_data, s0_final = q0.r_data[:ab], q0.r_data[ab + 1]   # the row end (bit ab): _src0_into
        s1_data = q1.r_data[:ab]

        # --- the sink: elements into the buffer at dst ---------------------------------------------
        dst = gens["dst"]
        sink_ready = dst.valid
        m.d.comb += wr.addr.eq(dst.addr)
        # dst's step and the write enable are set once, below the sequencer (``dst_step``), from
        # one-hot flags of the op's sink: a flat OR, not a chain of the ops' selects
        dst_step = Signal(name="dst_step")
        dst_keep = Signal(init=1, name="dst_keep")       # a GEMM's padding rows and columns: 0
        gemm_res_valid = Signal(name="gemm_res_valid")   # a result row of the array at the sink

        # --- per-op selections ----------------------------------------------------------------------
        is_move = registered(Cat(*[op == int(o) for o in MOVE_OPS]).any(), "is_move")
        # the packer's unit, each a register of ``ins`` (a gate after the op selects was a level
        # of the ready chains into the units' queues and the dst walk)
        gelu_op = (op == int(Opcode.GELU)) | ((op == int(Opcode.LINEAR)) & eq_const(ins.post, POST_GELU))
        gelu_sel = [registered(eq_const(ins.unit, k) & gelu_op, f"gelu_sel{k}") for k in range(len(self.gelus))]
        add_sel = registered((op == int(Opcode.ADD)) | ((op == int(Opcode.LINEAR)) & eq_const(ins.post, POST_ADD)),
                             "add_sel")
        c_targets = [(is_op[Opcode.SOFTMAX] | pre_sm, self.softmax), (is_op[Opcode.LAYERNORM] | pre_ln, self.layernorm),
                     (add_sel, self.add), *zip(gelu_sel, self.gelus)]
        c_lb = Signal(3)
        for sel, u in c_targets:
            with m.If(sel):
                m.d.comb += c_lb.eq(_lb(beat_bytes(c_layout(u))))
        unit_known = Signal()
        m.d.comb += unit_known.eq(Cat(*[sel for sel, _ in c_targets]).any())
        # --- decode: what the instruction implies, registered in a short pipeline (two products and
        #     a few additions would otherwise lie on every cycle's paths); DECODE waits for it -----
        # (reset-less, as ``ins``: data that DECODE always reloads; a reset would only load the
        # reset net, whose fanout is timed)
        widths = {"n1p": COUNT_BITS + 1, "n2p": COUNT_BITS + 1, "mt": COUNT_BITS, "nt": COUNT_BITS,
                  "mt_last": COUNT_BITS, "nt_last": COUNT_BITS, "k_last": COUNT_BITS, "blocks": 32,
                  "tiles": 32, "c_base": EXT_BITS, "c_lb": 3, "ext_base": EXT_BITS, "rows_last": COUNT_BITS,
                  "cols_last": COUNT_BITS}
        dec = self.decoded = SimpleNamespace(**{k: Signal(w, name=f"dec_{k}", reset_less=True)
                                                for k, w in widths.items()})
        prog, stride, offset = Signal(EXT_BITS), Signal(EXT_BITS), Signal(EXT_BITS)   # of this start
        # a post unit's constant beats follow the parameter beats, 64-byte aligned (compiler.post_consts)
        p_bytes = dec.nt << _lb(beat_bytes(p_layout(hw)))
        # The products (tile counts, blocks, tiles) are DSP leaves with their operands and product
        # registered (:mod:`hwgen.dsp`): as fabric-registered MULT18X18Ds the routes into and out of
        # the DSP column and the multiplier fell into one cycle (blocks[:16] x nt, 10.36 ns, a
        # seed's critical path).  The stages, counted from ``ins`` (s1: registered from it):
        #   s1  n1p, n2p (the tile counts' numerators: the adder apart from the product, once one
        #       12.6 ns path), k_last, ext_base, c_lb
        #   s3  mt, nt on the product registers (a shift where the size is a power of two: s1)
        #   s4  mt, nt registered; s5 mt_last, nt_last, c_base; s6 rows_last, cols_last
        #   s5  blocks = n0 x mt on its product register; s6 registered
        #   s7  blocks x nt as two 16-bit products; s8 their sum, tiles
        m.d.sync += [dec.n1p.eq(ins.n1 + (hw.gemm_rows - 1)), dec.n2p.eq(ins.n2 + (hw.gemm_cols - 1)),
                     dec.k_last.eq(ins.n3 - 1), dec.c_lb.eq(c_lb),
                     # a LOAD's or STORE's ext0, moved on for image k of a start
                     dec.ext_base.eq(ins.ext0 + Mux((ins.flags & FLAG_PER_IMAGE).any(), offset, 0))]
        def on_dsp(name):       # a product by a constant on a DSP leaf
            return lambda x, k: dsp_mult(m, x, Const(k, k.bit_length()), name)
        mt = self._tiles_of(dec.n1p, hw.gemm_rows, on_dsp("dec_mt_p"))[:COUNT_BITS]
        nt = self._tiles_of(dec.n2p, hw.gemm_cols, on_dsp("dec_nt_p"))[:COUNT_BITS]
        blocks = dsp_mult(m, ins.n0, mt, "dec_blocks_p")
        tiles_lo = dsp_mult(m, blocks[:16], nt, "dec_tiles_lo")
        tiles_hi = dsp_mult(m, blocks[16:32], nt, "dec_tiles_hi")
        m.d.sync += [dec.mt.eq(mt), dec.nt.eq(nt), dec.mt_last.eq(dec.mt - 1), dec.nt_last.eq(dec.nt - 1),
                     dec.blocks.eq(blocks), dec.tiles.eq(tiles_lo + (tiles_hi << 16)),
                     dec.c_base.eq(Mux(is_gemm, ins.ext1 + ((p_bytes + 63) & ((1 << EXT_BITS) - 64)), ins.ext0)),
                     # the rows of the last block of R that are the tensor's (the others are padding)
                     dec.rows_last.eq(ins.n1 - _times(dec.mt_last, hw.gemm_rows)),
                     dec.cols_last.eq(ins.n2 - _times(dec.nt_last, hw.gemm_cols))]     # and columns
        decode_wait = Signal(range(DECODE_STAGES + 1))
        with m.If(is_gemm):        # (after ``dec``: the walks take its tile counts)
            self._gemm_walks(m, ins, gens, post_add, pre_ln | pre_sm)

        # --- the sequencer --------------------------------------------------------------------------
        error = Signal(4)
        done = Signal()
        busy = Signal()
        m.d.comb += [self.error.eq(error), self.done.eq(done), self.busy.eq(busy)]
        c_addr = Signal(EXT_BITS)  # the next constant beat's byte address
        c_step = Signal(8)         # its step, 2^c_lb (a register: the adder starts at flip-flops)
        c_ask = Signal(16)       # constant beats still to request
        c_due = Signal(16)       # constant beats still to come
        c_last = Signal()        # c_due == 1, a flag (no comparator in CONST's transition)
        # in CONST, the unit that takes the beats: one-hot flags set with the state (:func:`goto`)
        const_to = [Signal(name=f"const_to{k}") for k in range(len(c_targets))]
        # a constant beat waits in a register (``c_data``; ``c_full``: one is there) before its
        # unit takes it, and each unit's ``c.valid`` is a flip-flop of its own (``c_valid``, set
        # with ``c_full`` for the unit of ``const_to``): every unit's input ready is
        # ``~c.valid & ...``, so a ``c.valid`` from the reader's beat put the reader's handshake
        # on a path into every unit's input and back to the packer (across the part twice: 12.1
        # ns, 10 of them routing), and ``c_full & const_to`` was the next one (12.4 ns).  One
        # beat at a time, so CONST takes a beat every other cycle (its ready is ``~c_full``, not
        # the unit's take: that would put the unit's ready back on the reader's path); DeiT-Tiny
        # pays 0.02% of its cycles for it.
        # (``c_full`` is the OR of ``c_valid``, kept as a register of its own: the OR would be a
        # LUT level in the reader's beat ready)
        c_full = Signal(name="c_full")
        c_data = Signal(max(len(u.c.payload.as_value()) for _, u in c_targets), name="c_data", reset_less=True)
        c_valid = [Signal(name=f"c_valid{k}") for k in range(len(c_targets))]
        # a LayerNorm loads constants up to the beat flagged last: a flag elsewhere would leave it
        # (and the op) waiting for ever, so each arriving beat's flag is checked against
        # ``c_last`` (a register: CONST stops the cycle after, and STOP resets the unit).  A beat
        # arrives only while ``c_full`` is 0 and a take needs it, so at an arrival the beats still
        # to take (``c_due``) are the beats still to arrive: no count of arrivals of its own
        c_flag_bad = Signal(name="c_flag_bad")
        # the last beat taken, a cycle ago: CONST ends on this register (from the units' constant
        # ready through the take into the state's thirty flags was on every seed's late paths)
        c_end = Signal(name="c_end")
        m.d.sync += c_end.eq(0)
        m.d.sync += c_flag_bad.eq(0)                 # (set by CONST's arrivals below)
        ln_k = [u for _, u in c_targets].index(self.layernorm)
        ln_last_bit = c_layout(self.layernorm)["last"].offset
        c_fire = Signal(name="c_fire")        # the unit takes the held beat
        m.d.comb += c_fire.eq(Cat(*[v & u.c.ready for v, (_, u) in zip(c_valid, c_targets)]).any())
        for v, (_, u) in zip(c_valid, c_targets):
            m.d.comb += [u.c.payload.as_value().eq(c_data), u.c.valid.eq(v)]
        fetch_sent = Signal()
        read_err = Signal(name="read_err")   # FETCH's or CONST's beat came with a read error
        fault = Signal(4)        # a fault seen this cycle (0: none)
        addr_fault = Signal()    # a buffer address outside the buffer in the previous cycle of STREAM
        m.d.sync += addr_fault.eq(0)         # (STREAM sets it below)
        # The op's end and its faults are registered: the state's transitions then start at
        # flip-flops, not at every op's handshakes (one more cycle an instruction).  The end is
        # final (the walk, the external requests and the writes are over), and a fault seen in
        # the cycle before stops the op instead.
        op_done = Signal(name="op_done")
        fault_q = Signal(4, name="fault_q")
        # one-hot flags of the state, registers set with it (:func:`goto`): the wide data paths
        # below are enabled by a flip-flop, not by a decode of ``seq_state``
        streaming = Signal(name="in_stream")    # in STREAM: the data paths below run
        # a fault that needs no state: each port's head outside the buffer, registered (in STREAM
        # only: a walk loaded for the next op, or left over from the last, is not checked early)
        out_of = {name: Signal(name=f"{name}_outside") for name in gens}

        def outside(addr):
            # a buffer of 2^n elements: any bit from n up, the sign's too, is set (an OR of LUTs;
            # yosys made the two compares carry chains, a seed's critical path, 10.76 ns)
            if depth & (depth - 1) == 0:
                return addr[depth.bit_length() - 1:].any()
            return (addr < 0) | (addr >= depth)
        for name, g in gens.items():
            m.d.sync += out_of[name].eq(streaming & g.valid & outside(g.addr))
        gemm_active = Signal(name="gemm_active")   # in STREAM, a LINEAR or MATMUL
        # in STREAM, where dst's elements come from (one flag at most): src0 (a move), the reader
        # (LOAD), src0 into external memory (STORE), the Softmax or LayerNorm op, the add or a
        # GELU (through the packer), the array's result rows (a GEMM without a post unit)
        sink_from = {k: Signal(name=f"sink_from_{k}") for k in ("move", "load", "store", "softmax", "layernorm",
                                                                 "add", *[f"gelu{k}" for k in range(len(self.gelus))],
                                                                 "gemm")}
        a_from = {k: Signal(name=f"a_from_{k}") for k in ("softmax", "layernorm", "src0")}
        q0_to_pack = Signal(name="q0_to_pack")    # in STREAM, a GELU or ADD op: src0 into the packer
        res_to_pack = Signal(name="res_to_pack")  # in STREAM, a GEMM with a post unit: results into it
        a_in_take = Signal(name="a_in_take")      # a GEMM's operand A element taken (_gemm_feed)
        pack_active = Signal(name="pack_active")   # in STREAM, the GELU / add packer in use
        in_decode = Signal(name="in_decode")
        in_fetch, in_const = Signal(name="in_fetch"), Signal(name="in_const")
        in_op = Signal(name="in_op")            # in CONST or STREAM: the op's cycles count
        # a LOAD's or STORE's external request, registered between its address generator and the
        # reader or writer (the address arithmetic ends here, not in the request slice)
        ext_req = SimpleNamespace(valid=Signal(name="ext_req_valid"), addr=Signal(EXT_BITS, name="ext_req_addr"),
                                  data=Signal(ab, name="ext_req_data"))
        # a LOAD's or STORE's element offset (src0's or dst's external index times the element
        # size; a STORE's element beside it), a stage of its own in front of ``ext_req``: the
        # queue head's select, the shift and the 32-bit add were one path (LOAD: 10.31 ns, STORE:
        # 9.33 ns, each a seed's critical path)
        ext_off = SimpleNamespace(valid=Signal(name="ext_off_valid"), addr=Signal(signed(ADDR_BITS + 5), name="ext_off"),
                                  data=Signal(ab, name="ext_off_data"))
        with m.If(in_decode):
            m.d.sync += [ext_req.valid.eq(0), ext_off.valid.eq(0)]

        count_zero = Cat(*[~ins[f"n{d}"].any() for d in range(LEVELS)]).any()
        images_left = Signal(16)
        cycles = Signal(CYCLE_BITS)
        op_cycles = [Signal(CYCLE_BITS, name=f"op_cycles{k}") for k in range(16)]
        m.d.comb += self.cycles.eq(cycles)
        for k in range(16):
            m.d.comb += self.op_cycles[k].eq(op_cycles[k])
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
            for k in range(16):
                with m.If(in_op & op_onehot[k]):
                    m.d.sync += op_cycles[k].eq(op_cycles[k] + 1)

        # DECODE's outcome, registered while it waits for the decode pipeline (the selects are
        # registered from ``ins``, these from them): a decision through every select into the
        # address generators' load was the critical path
        with_const = post_gelu | post_add | pre_ln | pre_sm
        plain_stream = is_move | is_op[Opcode.LOAD] | is_op[Opcode.STORE] | is_gemm
        d_end_more = registered(is_op[Opcode.END] & (images_left > 1), "d_end_more")
        d_end = registered(is_op[Opcode.END], "d_end")
        d_count_zero = registered(count_zero, "d_count_zero")
        d_const = registered(~post_bad & unit_known & (with_const | ~plain_stream), "d_const")
        d_stream = registered(~post_bad & ~with_const & plain_stream, "d_stream")
        state = Signal(_State, name="seq_state")
        uses_packer = is_op[Opcode.GELU] | is_op[Opcode.ADD] | post_gelu | post_add
        # in STREAM, a GEMM's operand A from: the Softmax, the LayerNorm (a pre unit), or src0
        a_cond = {"softmax": is_gemm & pre_sm, "layernorm": is_gemm & pre_ln, "src0": is_gemm & ~pre_sm & ~pre_ln}
        sink_cond = {"move": is_move, "load": is_op[Opcode.LOAD], "store": is_op[Opcode.STORE],
                     "softmax": is_op[Opcode.SOFTMAX], "layernorm": is_op[Opcode.LAYERNORM],
                     "add": uses_packer & add_sel, **{f"gelu{k}": uses_packer & sel for k, sel in enumerate(gelu_sel)},
                     "gemm": is_gemm & ~post_gelu & ~post_add}

        def goto(to):
            # (the op selects are stable from DECODE to the op's end: ``ins`` changes in FETCH)
            m.d.sync += [state.eq(to), streaming.eq(to == _State.STREAM), in_decode.eq(to == _State.DECODE),
                         in_op.eq(to in (_State.CONST, _State.STREAM)), unit_rst.eq(to == _State.STOP),
                         gemm_active.eq(is_gemm if to == _State.STREAM else 0),
                         pack_active.eq(uses_packer if to == _State.STREAM else 0)]
            for k, cond in sink_cond.items():
                m.d.sync += sink_from[k].eq(cond if to == _State.STREAM else 0)
            for k, cond in a_cond.items():
                m.d.sync += a_from[k].eq(cond if to == _State.STREAM else 0)
            for flag, (sel, _) in zip(const_to, c_targets):
                m.d.sync += flag.eq(sel if to == _State.CONST else 0)
            m.d.sync += [in_fetch.eq(to == _State.FETCH), in_const.eq(to == _State.CONST),
                         run0.eq(~is_op[Opcode.LOAD] if to == _State.STREAM else 0),
                         run1.eq(add_sel | (is_gemm & ~is_op[Opcode.LINEAR]) if to == _State.STREAM else 0)]
            m.d.sync += [q0_to_pack.eq(is_op[Opcode.GELU] | is_op[Opcode.ADD] if to == _State.STREAM else 0),
                         res_to_pack.eq(is_gemm & (post_gelu | post_add) if to == _State.STREAM else 0)]

        def stop(code):
            m.d.sync += error.eq(code)
            goto(_State.STOP)

        # the reader's users, each under a flag of the state (one set at a time): its request and
        # its beats' ready are a flat AND-OR of them (a mux on the state and the op's selects
        # lay on the timing model's worst paths through the reader's handshakes)
        reader_users = []

        def reader_user(flag, valid, addr, lb, ready):
            reader_users.append(SimpleNamespace(flag=flag, valid=valid, addr=addr, lb=lb, ready=ready))

        reader_user(in_fetch, ~fetch_sent, pc, _lb(INSTR_BYTES), 1)
        reader_user(in_const, c_ask.any(), c_addr, dec.c_lb, ~c_full)
        reader_user(sink_from["load"], ext_req.valid, ext_req.addr, ins.esize, sink_ready)
        reader_user(unit_rst, 0, 0, 0, 1)          # STOP: beats in flight are dropped

        # the registers that three transitions load, each under a flat condition of flags (IDLE is
        # ``~busy``), outside the state's Switch: their enables were a decode of the state and
        # every transition's priority (``seq_state -> pc``)
        with m.If(~busy & self.start):                                    # IDLE -> FETCH: a run
            m.d.sync += [pc.eq(self.prog), busy.eq(1), done.eq(0), error.eq(0), cycles.eq(0),
                         fetch_sent.eq(0), prog.eq(self.prog), stride.eq(self.image_stride),
                         images_left.eq(Mux(self.images.any(), self.images, 1)), offset.eq(0)]
            m.d.sync += [op_cycles[k].eq(0) for k in range(16)]
        with m.If(in_decode & ~decode_wait.any() & d_end_more):           # DECODE -> FETCH: an image
            m.d.sync += [images_left.eq(images_left - 1), offset.eq(offset + stride), pc.eq(prog)]
        with m.If(streaming & op_done & ~fault_q.any() & ~addr_fault):    # STREAM -> FETCH: the op ends
            m.d.sync += pc.eq(pc + INSTR_BYTES)

        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.start):
                    goto(_State.FETCH)

            with m.Case(_State.FETCH):
                with m.If(reader.req.ready & ~fetch_sent):
                    m.d.sync += fetch_sent.eq(1)
                # (a read error goes to DECODE too, in a register: DECODE stops on it.  From the
                # beat's error bit into every transition it was a seed's critical path, 9.90 ns)
                with m.If(reader.beat.valid):
                    m.d.sync += [ins.as_value().eq(reader.beat.payload.data[:INSTR_BYTES * 8]), fetch_sent.eq(0),
                                 decode_wait.eq(DECODE_STAGES), read_err.eq(reader.beat.payload.err)]
                    goto(_State.DECODE)

                with m.If(self.start):      # a start while busy stops the run
                    stop(Error.BUSY)

            with m.Case(_State.DECODE):
                m.d.sync += [c_addr.eq(dec.c_base), c_step.eq(Const(1, 8) << dec.c_lb), c_ask.eq(ins.cnt),
                             c_due.eq(ins.cnt), c_last.eq(ins.cnt == 1)]
                with m.If(decode_wait.any()):                         # the decode pipeline fills
                    m.d.sync += [decode_wait.eq(decode_wait - 1), load_gens.eq(decode_wait == 1)]
                with m.Elif(d_end_more):                              # the next image of the start
                    goto(_State.FETCH)
                with m.Elif(d_end):
                    m.d.sync += [busy.eq(0), done.eq(1)]
                    goto(_State.IDLE)
                with m.Elif(d_count_zero):
                    stop(Error.COUNT)
                with m.Elif(d_const):
                    goto(_State.CONST)
                with m.Elif(d_stream):
                    goto(_State.STREAM)
                with m.Else():
                    stop(Error.OPCODE)
                with m.If(read_err):        # the instruction's read failed
                    stop(Error.READ)

                with m.If(self.start):      # a start while busy stops the run
                    stop(Error.BUSY)

            with m.Case(_State.CONST):          # the op's constant beats into its unit's c stream
                with m.If(c_ask.any() & reader.req.ready):
                    m.d.sync += [c_ask.eq(c_ask - 1), c_addr.eq(c_addr + c_step)]
                # (the beat's handshake from the flags, not from ``reader.beat.ready``, which
                # every state drives): the reader's beat into ``c_data``, from there to the unit
                # (a read error in a register, as FETCH's: the unit never sees the beat, and CONST
                # stops the cycle after)
                with m.If(reader.beat.valid & ~c_full):
                    m.d.sync += [c_data.eq(reader.beat.payload.data), c_full.eq(~reader.beat.payload.err),
                                 read_err.eq(reader.beat.payload.err),
                                 c_flag_bad.eq(const_to[ln_k] & (reader.beat.payload.data[ln_last_bit] != c_last))]
                    m.d.sync += [v.eq(flag & ~reader.beat.payload.err) for v, flag in zip(c_valid, const_to)]
                with m.If(c_fire):
                    m.d.sync += [c_full.eq(0), c_due.eq(c_due - 1), c_last.eq(c_due == 2), c_end.eq(c_last)]
                    m.d.sync += [v.eq(0) for v in c_valid]
                with m.If(c_end):
                    goto(_State.STREAM)
                with m.If(~ins.cnt.any()):
                    goto(_State.STREAM)
                with m.If(c_flag_bad):
                    stop(Error.CONST)
                with m.If(read_err):
                    stop(Error.READ)

                with m.If(self.start):      # a start while busy stops the run
                    stop(Error.BUSY)

            with m.Case(_State.STREAM):         # elements from src0 (src1, external memory) to dst
                with m.If(op_done & ~fault_q.any() & ~addr_fault):
                    goto(_State.FETCH)
                # (a GEMM's padding rows and columns may read beyond a tensor: their results are
                # dropped.)  The check takes two registers (each port's comparator, then the op's
                # mask: from dst's address through both in one cycle was a seed's critical path,
                # 10.86 ns): the fault stops the run two cycles after the address, no later than
                # the op's registered end can (dst is busy while it presents the address).
                m.d.sync += addr_fault.eq((out_of["src0"] & ~is_op[Opcode.LOAD] & ~is_gemm)
                                          | (out_of["src1"] & is_op[Opcode.ADD])
                                          | (out_of["dst"] & ~is_op[Opcode.STORE] & ~is_gemm))
                with m.If(addr_fault):
                    stop(Error.ADDRESS)
                with m.If(fault_q.any()):
                    stop(fault_q)

                with m.If(self.start):      # a start while busy stops the run
                    stop(Error.BUSY)

            with m.Case(_State.STOP):           # let reads and writes in flight come back, then halt
                with m.If(reader.idle & writer.idle):
                    m.d.sync += [busy.eq(0), done.eq(1)]
                    goto(_State.IDLE)

            with m.Default():               # (unreachable) back to idle
                goto(_State.IDLE)

        # --- the data paths of STREAM -------------------------------------------------------------
        # elements on their way into the GELU / add packer: from src0 (GELU, ADD) or from the
        # GEMM's result rows (a LINEAR's post unit)
        elems = SimpleNamespace(valid=Signal(name="elem_valid"), data=Signal(ab, name="elem_data"),
                                final=Signal(name="elem_final"), take=Signal(name="elem_take"))
        self.packer = packer = SimpleNamespace(full=Signal(name="pack_full"), j=Signal(range(lanes + 1), name="pack_j"),
                                               jo=Signal(range(lanes + 1), name="pack_jo"),
                                               a=Array(Signal(ab, name=f"pack_a{k}") for k in range(lanes)),
                                               b=Array(Signal(ab, name=f"pack_b{k}") for k in range(lanes)))
        # the packed beat's register slice (:meth:`_lanes`); its payload goes to every unit it may
        # feed, ungated (their valid selects): a gate on the data was a LUT level in front of the
        # units' first stages
        # (its payload from flip-flops: the units' first stages start at their inputs, and the
        # slice's LUT-RAM read, its address fanned out to every lane, in front of the GELU's
        # first adder was a seed's critical path, 9.47 ns)
        packer.slice, beat = register_slice(m, "pack", packer.full, Cat(*packer.a, *packer.b), None, reset=unit_rst,
                                            registered_out=True)
        for u in (self.add, *self.gelus):
            ins_ = (u.a.payload, u.b.payload) if u is self.add else (u.i.payload,)
            for half, port in enumerate(ins_):
                m.d.comb += [port[k].eq(beat[(half * lanes + k) * ab:][:ab]) for k in range(lanes)]
        # the selected unit's result beats wait in a register slice of their own before the
        # unpacker: the unit's output ready is then the slice's room (its level), not the sink's
        # handshake, which ran from one unit's output queue through dst's step and back into
        # another's (13.1 ns, 11 of them routing).  One-hot flags: a flat OR of the results
        packed_units = {"add": self.add, **{f"gelu{k}": g for k, g in enumerate(self.gelus)}}
        packer.targets = [(sink_from[name], u) for name, u in packed_units.items()]
        results = []
        for name, u in packed_units.items():    # each unit's result lanes, an element wide each
            res = [Signal(ab, name=f"{name}_res{k}") for k in range(lanes)]
            m.d.comb += [r.eq(u.o.payload[k]) for k, r in enumerate(res)]
            results.append((sink_from[name], u, Cat(*res)))
        packer.res, packer.res_beat = _flagged_slice(m, "unpack", results, unit_rst)
        unpack_elem = Signal(ab, name="unpack_elem")        # the result lane going to dst (_lanes)
        m.d.comb += unpack_elem.eq(Array(packer.res_beat[k * ab:][:ab] for k in range(lanes))[packer.jo])
        norm = self._norm_out(m, sink_from, a_from, unit_rst)
        store_advance = ~ext_req.valid | writer.req.ready     # a STORE's request register moves on
        store_off_advance = ~ext_off.valid | store_advance   # ... and its offset register
        with m.If(streaming):
            with m.If(is_move):
                pass                                 # (dst_step and the element: below)
            with m.Elif(is_op[Opcode.LOAD]):         # src0 walks the external index
                src = gens["src0"]
                advance = ~ext_req.valid | reader.req.ready
                off_advance = ~ext_off.valid | advance
                m.d.comb += src.next.eq(src.valid & off_advance)
                with m.If(off_advance):
                    m.d.sync += [ext_off.valid.eq(src.valid), ext_off.addr.eq(src.addr << ins.esize)]
                with m.If(advance):
                    m.d.sync += [ext_req.valid.eq(ext_off.valid), ext_req.addr.eq(dec.ext_base + ext_off.addr)]
                with m.If(reader.beat.valid & reader.beat.payload.err):
                    m.d.comb += fault.eq(Error.READ)
            with m.Elif(is_op[Opcode.STORE]):        # dst walks the external index: below
                pass
            with m.Elif(is_gemm):
                pass                                 # below: _gemm_feed
            with m.Elif(is_op[Opcode.SOFTMAX] | is_op[Opcode.LAYERNORM]):
                pass                                 # (dst_step and the element: below)
            with m.Else():                           # GELU, ADD: src0's elements into the packer
                m.d.comb += [elems.data.eq(s0_data), elems.final.eq(s0_final)]
        # a STORE's requests to the writer, under its one-hot flag of STREAM rather than the ops'
        # select chain above (from the chain's first select through the writer's word and
        # strobes into its request slice was a seed's critical path, 9.21 ns)
        m.d.comb += [writer.req.valid.eq(sink_from["store"] & ext_req.valid), writer.req.payload.addr.eq(ext_req.addr),
                     writer.req.payload.data.eq(ext_req.data), writer.req.payload.lb.eq(ins.esize)]
        with m.If(sink_from["store"] & store_off_advance):   # (dst_step: src0's element, dst, the room)
            m.d.sync += [ext_off.valid.eq(dst_step), ext_off.addr.eq(dst.addr << ins.esize), ext_off.data.eq(s0_data)]
        with m.If(sink_from["store"] & store_advance):
            m.d.sync += [ext_req.valid.eq(ext_off.valid), ext_req.addr.eq(dec.ext_base + ext_off.addr),
                         ext_req.data.eq(ext_off.data)]
        with m.If(pack_active):
            self._lanes(m, add_sel, elems, q1, s1_data, sink_ready, dst)
        # the packer's elements: src0's (a GELU or ADD op) or the array's results (a post unit),
        # from one-hot flags of STREAM
        m.d.comb += elems.valid.eq((q0_to_pack & q0.r_rdy) | (res_to_pack & gemm_res_valid))
        with m.If(unit_rst):
            m.d.sync += [packer.full.eq(0), packer.j.eq(0), packer.jo.eq(0), c_full.eq(0), *[v.eq(0) for v in c_valid]]
        # the sequencer's signals that the GEMM's feed shares with the ops above
        seq = SimpleNamespace(ins=ins, is_linear=is_op[Opcode.LINEAR], reader=reader, gens=gens, q0=q0, q1=q1,
                              run0=run0, run1=run1, wr=wr, active=gemm_active, restart=in_decode,
                              post=post_gelu | post_add, elems=elems, pre_ln=pre_ln,
                              pre_sm=pre_sm, unit_rst=unit_rst, dst_step=dst_step, dst_keep=dst_keep,
                              gemm_res_valid=gemm_res_valid, a_from=a_from, a_in_take=a_in_take,
                              sink_from=sink_from, res_to_pack=res_to_pack, reader_user=reader_user, norm=norm)
        self._gemm_feed(m, seq)
        # dst's element from its source, a flat OR under the one-hot flags ``sink_from`` (as a
        # chain of the ops' selects, from the reader's beat to the write register, it was a
        # seed's critical path, 10.08 ns); a LOAD's from the reader's beat, at its element size
        load_elem = Signal(ab, name="load_elem")
        ext_signed = (ins.flags & FLAG_EXT_SIGNED).any()
        with m.Switch(ins.esize):
            for k in range(min(4, self.word_lb + 1)):
                with m.Case(k):
                    v = reader.beat.payload.data[:8 << k]
                    m.d.comb += load_elem.eq(Mux(ext_signed, v.as_signed(), v))
        m.d.comb += wr.data.eq(_one_hot([
            (sink_from["move"], s0_data), (sink_from["load"], load_elem),
            (sink_from["softmax"] | sink_from["layernorm"], norm.data),
            (Cat(*[sink_from[k] for k in packed_units]).any(), unpack_elem), (sink_from["gemm"], seq.gemm_elem)]))

        def one_hot(field):      # the flagged user's field
            return _one_hot((u.flag, getattr(u, field)) for u in reader_users)

        m.d.comb += [reader.req.valid.eq(Cat(*[u.flag & u.valid for u in reader_users]).any()),
                     reader.req.payload.addr.eq(one_hot("addr")), reader.req.payload.lb.eq(one_hot("lb")),
                     reader.beat.ready.eq(Cat(*[u.flag & u.ready for u in reader_users]).any())]

        m.d.sync += [op_done.eq(streaming & ~dst.busy & ~ext_off.valid & ~ext_req.valid & writer.idle),
                     fault_q.eq(fault)]

        # --- dst's step: the sink's element is there and dst has its address -------------------------
        sink_has = {"move": q0.r_rdy, "load": reader.beat.valid, "store": q0.r_rdy & store_off_advance,
                    "softmax": norm.q.r_rdy, "layernorm": norm.q.r_rdy,
                    **{k: packer.res.r_rdy for k in ("add", *[f"gelu{k}" for k in range(len(self.gelus))])},
                    "gemm": gemm_res_valid}
        m.d.comb += [dst_step.eq(dst.valid & Cat(*[sink_from[k] & v for k, v in sink_has.items()]).any()),
                     dst.next.eq(dst_step), wr.en.eq(dst_step & ~sink_from["store"] & dst_keep)]
        norm_in_pop = self._src0_into(m, q0, sink_from, a_from, unit_rst)
        # the Softmax's and LayerNorm's results go to dst (their own op) or to operand A (a pre unit)
        norm_to_dst = sink_from["softmax"] | sink_from["layernorm"]
        norm_to_a = a_from["softmax"] | a_from["layernorm"]
        m.d.comb += norm.q.r_en.eq((norm_to_dst & dst.valid) | (norm_to_a & a_in_take))
        # q0's pop: one OR of its consumers (one flag of each is set in STREAM)
        q0_pop = [sink_from["move"] & dst.valid, sink_from["store"] & dst.valid & store_off_advance,
                  norm_in_pop, q0_to_pack & elems.take, a_from["src0"] & a_in_take]
        m.d.comb += q0.r_en.eq(q0.r_rdy & Cat(*q0_pop).any())
        with m.If(streaming & writer.err):
            m.d.comb += fault.eq(Error.WRITE)
        m.d.comb += writer.clear.eq(self.start & ~busy)
        return m

    def _norm_out(self, m, sink_from, a_from, reset):
        """The Softmax's and LayerNorm's result elements (one unit at most is in use, flagged by
        its own op, ``sink_from``, or a GEMM it feeds, ``a_from``) through one register slice:
        the unit's output ready is then the slice's room, not the handshake of dst's walk or of
        operand A's loader, which ran from the loader's flags into the Softmax's row counter
        (11.15 ns, seed 3's critical path).  Returns the slice (the caller drives ``r_en``) and
        its element, a buffer element wide."""
        ab = self.accel.act_elem_bits
        units = [(sink_from[n] | a_from[n], u, Signal(ab, name=f"{n}_elem"))
                 for n, u in (("softmax", self.softmax), ("layernorm", self.layernorm))]
        for _, u, elem in units:         # (the LayerNorm's signed, the Softmax's unsigned)
            m.d.comb += elem.eq(u.o.payload.data if u is self.softmax else u.o.payload)
        q, data = _flagged_slice(m, "norm_out", units, reset)
        return SimpleNamespace(q=q, data=data)

    def _src0_into(self, m, q0, sink_from, a_from, reset):
        """src0's elements (``q0``'s entries: element, row end, ...) into the Softmax (with their
        row ends) and the LayerNorm through one register slice, its payload to both ungated;
        each unit's valid from the one-hot flags of its op of its own (``sink_from``) or of a
        GEMM it feeds (``a_from``).  The slice's room, a level register, is what pops ``q0``:
        the units' input ready (the Softmax's from its row counter) ran through q0's pop into
        src0's credit counter (9.77 ns, a seed's critical path).  Returns q0's pop."""
        ab = self.accel.act_elem_bits
        sm, ln = self.softmax, self.layernorm
        flags = [(sink_from[name] | a_from[name], unit) for name, unit in (("softmax", sm), ("layernorm", ln))]
        in_use = Cat(*[flag for flag, _ in flags]).any()
        q, data = register_slice(m, "norm_in", in_use & q0.r_rdy, q0.r_data[:ab + 1], None, reset=reset)
        m.d.comb += [sm.i.payload.data.eq(data[:ab]), sm.i.payload.last.eq(data[ab]), ln.i.payload.eq(data[:ab]),
                     q.r_en.eq(Cat(*[flag & unit.i.ready for flag, unit in flags]).any())]
        for flag, unit in flags:
            m.d.comb += unit.i.valid.eq(flag & q.r_rdy)
        return in_use & q.w_rdy

    def _lanes(self, m, two, elems, q1, s1_data, sink_ready, dst):
        """The GELU and add units take ``lanes`` elements a beat: pack ``elems`` (and, for the
        add, src1's elements) into a beat (a short last beat padded), pass it through a
        register slice to the unit, and its result beat through another; unpack the results
        into dst (the padding's results dropped when the dst walk ends)."""
        ab, lanes = self.accel.act_elem_bits, self.hw.lanes
        full, j, jo = self.packer.full, self.packer.j, self.packer.jo
        a, b = self.packer.a, self.packer.b
        # the unit, its valid and ready from the one-hot flags of STREAM (a register each; a flat
        # OR, not the selects through the priority of ``m.If``)
        targets = self.packer.targets
        in_ready = Signal()      # the selected unit takes the beat
        m.d.comb += in_ready.eq(Cat(*[flag & (u.a.ready & u.b.ready if u is self.add else u.i.ready)
                                      for flag, u in targets]).any())
        # the packed beat waits in a register slice (two beats) for the unit: the units' input
        # ready then moves the slice's level and read pointer only, not the packer's enables
        # (that path ran from a unit's ``go`` across the part into ``pack_j`` and the 2 x lanes
        # element registers: 12.1 ns, 10 of them routing).  (The slice is built in
        # :meth:`elaborate`, outside this op's ``m.If``: its payload goes to the units ungated.)
        beat_q = self.packer.slice
        m.d.comb += beat_q.r_en.eq(in_ready)
        # a beat is refilled in the cycle it moves into the slice
        take = (~full | beat_q.w_rdy) & elems.valid & (q1.r_rdy | ~two)
        m.d.comb += [elems.take.eq(take), q1.r_en.eq(take & two)]
        with m.If(full & beat_q.w_rdy):
            m.d.sync += full.eq(0)
        # lane j loads whenever the beat has room, taken or not: it is the lane the next element
        # fills, so a load without a take is overwritten before the beat is full.  (Under ``take``
        # its enables were the end of a path from src0's queue level through the take, 10.74 ns.)
        with m.If(~full | beat_q.w_rdy):
            m.d.sync += [a[j].eq(elems.data), b[j].eq(s1_data)]
        with m.If(take):
            with m.If(eq_const(j, lanes - 1) | elems.final):
                m.d.sync += [full.eq(1), j.eq(0)]
            with m.Else():
                m.d.sync += j.eq(j + 1)
        for flag, u in targets:
            if u is self.add:
                m.d.comb += [u.a.valid.eq(flag & beat_q.r_rdy), u.b.valid.eq(flag & beat_q.r_rdy)]
            else:
                m.d.comb += u.i.valid.eq(flag & beat_q.r_rdy)
        # the result beat from its register slice (built in :meth:`elaborate`), lane by lane into dst
        res_q = self.packer.res
        out_valid, out_ready = res_q.r_rdy, res_q.r_en      # (the element: unpack_elem, elaborate)
        with m.If(out_valid & sink_ready):
            with m.If(eq_const(jo, lanes - 1) | dst.final):
                m.d.comb += out_ready.eq(1)
                m.d.sync += jo.eq(0)
            with m.Else():
                m.d.sync += jo.eq(jo + 1)

    # --- GEMM ------------------------------------------------------------------------------------
    @staticmethod
    def _tiles_of(numerator, size, times=operator.mul):
        """``numerator // size`` for a constant size, where the decode's numerator register holds
        ``v + size - 1`` of a ``COUNT_BITS`` count (so the quotient is ceil(v / size)): a shift,
        or (an array whose rows or columns are not a power of two, e.g. 9 rows for 17 tokens) a
        product ``times(numerator, mult)`` with a reciprocal (the core's: a DSP leaf), never a
        divider (yosys builds ``//`` as a long chain of subtractors)."""
        if size & (size - 1) == 0:
            return numerator >> (size.bit_length() - 1)
        shift, mult = _reciprocal(size)
        return times(numerator, mult) >> shift

    @staticmethod
    def _registered_writes(m, name, ports, addr, data, enables):
        """Drive the write ports ``ports`` (one memory each, one address and element for all)
        from registers of ``addr``, ``data`` and each port's enable: the write a cycle after the
        caller's take, its route into the block RAMs starting at flip-flops."""
        addr_q = Signal(len(addr), name=f"{name}_addr", reset_less=True)
        data_q = Signal(data.shape(), name=f"{name}_data", reset_less=True)
        m.d.sync += [addr_q.eq(addr), data_q.eq(data)]
        for k, (port, en) in enumerate(zip(ports, enables)):
            en_q = Signal(name=f"{name}_en{k}")
            m.d.sync += en_q.eq(en)
            m.d.comb += [port.addr.eq(addr_q), port.data.eq(data_q), port.en.eq(en_q)]

    def _feed_queue(self, m, issue, reset):
        """The operand beats' read pipeline: a beat issued in cycle t is read from the lane
        memories in t + 1 (``read``, ``a_addr``, ``w_addr``: registers the caller sets with the
        issue), is in their output registers in t + 3 (:data:`~hwgen.bram.BRAM_LATENCY`; its last
        flag beside them in ``held_last``: the caller's ``data``) and enters a queue of :data:`FEED_QUEUE` beats
        (:func:`~hwgen.pipeline.credited_output`) whose output ``o`` is the GEMM's operand
        beat; ``room`` (a register) gates the issue.  ``reset`` empties it all (STOP)."""
        hw, R, C = self.hw, self.hw.gemm_rows, self.hw.gemm_cols
        kmax, wh = hw.gemm_max_k, self.accel.w_cache_elems
        width = 1 + R * (hw.a_bits + 1) + C * hw.w_bits
        f = SimpleNamespace(read=Signal(name="a_read"), last=Signal(name="a_read_last"),
                            got_last=Signal(name="feed_got_last"), held_last=Signal(name="feed_held_last"),
                            a_addr=Signal(range(2 * kmax), name="a_read_addr"), a_half=Signal(name="a_read_half"),
                            a_free=Signal(name="a_read_free"), w_addr=Signal(range(2 * wh), name="w_read_addr"),
                            w_half=Signal(name="w_read_half"), w_free=Signal(name="w_read_free"),
                            data=Signal(width, name="feed_data"),
                            o=SimpleNamespace(valid=Signal(name="feed_valid"), payload=Signal(width, name="feed_beat"),
                                              ready=Signal(name="feed_ready")))
        fm = Module()
        got = Signal(name="feed_got")                  # the read's data is in the memories' first stage
        # ... and in their output registers a cycle later, before the queue: without those (yosys
        # maps a block RAM with none on ECP5: hwgen.bram), a block's 5.8 ns clock to out and its
        # route into the queue's LUT-RAM or into a fabric register were critical paths (10.28 and
        # 9.35 ns)
        held = Signal(name="feed_held")
        fm.d.sync += [f.read.eq(issue), got.eq(f.read), f.got_last.eq(f.last), held.eq(got),
                      f.held_last.eq(f.got_last)]
        f.room, _ = credited_output(fm, f.o, f.data, held, issue, FEED_QUEUE, name="feed_queue")
        m.submodules.feed = ResetInserter(reset)(fm)
        return f

    def _gemm_walks(self, m, ins, gens, post_add, pre):
        """A LINEAR/MATMUL instruction's levels are (b, m, n, k); the walks the array needs are
        A by block of R rows (b, mt, k, row), read once per block into the lane memories (k by k,
        so that the block's first column tile can start before the block is in; with a ``pre``
        unit row by row, (b, mt, row, k), the unit's rows); W (from
        the buffer) once per batch (b, nt, k, col) into the W cache; the results by (b, mt, nt, row, col).  Padding rows and columns walk on past the tensors'
        edges (their reads are harmless, their results are dropped)."""
        R, C = self.hw.gemm_rows, self.hw.gemm_cols
        b, kk = ins.n0, ins.n3
        mt, nt = self.decoded.mt, self.decoded.nt       # (registered: DECODE waits for them)
        def by_tile(p):          # (b, mt, nt, row, col): the order result rows leave the array
            return ((b, mt, nt, R, C), (ins[f"{p}_s0"], _times(ins[f"{p}_s1"], R), _times(ins[f"{p}_s2"], C),
                                        ins[f"{p}_s1"], ins[f"{p}_s2"]))

        a_rows = ((1, b, mt, R, kk), (0, ins.src0_s0, _times(ins.src0_s1, R), ins.src0_s1, ins.src0_s3))
        walks = {"src0": ((b, mt, kk, R, 1), (ins.src0_s0, _times(ins.src0_s1, R), ins.src0_s3, ins.src0_s1, 0)),
                 "src1": ((b, 1, nt, kk, C), (ins.src1_s0, 0, _times(ins.src1_s2, C), ins.src1_s3, ins.src1_s2)),
                 "dst": by_tile("dst")}
        for name, (counts, strides) in walks.items():
            if name == "src1":           # a post add's second operand goes with the results
                counts = [Mux(post_add, x, y) for x, y in zip(by_tile("src1")[0], counts)]
                strides = [Mux(post_add, x, y) for x, y in zip(by_tile("src1")[1], strides)]
            if name == "src0":           # rows for a unit before the array (its row end: level 4's)
                counts = [Mux(pre, x, y) for x, y in zip(a_rows[0], counts)]
                strides = [Mux(pre, x, y) for x, y in zip(a_rows[1], strides)]
            g = gens[name]
            for d in range(LEVELS):
                m.d.comb += [g.n[d].eq(counts[d]), g.strides[d].eq(strides[d])]

    def _gemm_feed(self, m, seq):
        """Operand beats into the GEMM, parameter and weight beats from external memory, result
        rows into the buffer (or, with a ``post`` unit, element by element into the packer).
        With a ``pre`` unit (``pre_ln``: the LayerNorm, ``pre_sm``: the Softmax), src0's rows
        stream through it and its output is operand A.  ``seq`` holds the sequencer's signals
        (see :meth:`elaborate`)."""
        ins, is_linear, reader, gens, wr = seq.ins, seq.is_linear, seq.reader, seq.gens, seq.wr
        q0, q1, run0, run1, elems = seq.q0, seq.q1, seq.run0, seq.run1, seq.elems
        active, restart, unit_rst = seq.active, seq.restart, seq.unit_rst
        post, pre_ln, pre_sm = seq.post, seq.pre_ln, seq.pre_sm
        hw, accel, gemm = self.hw, self.accel, self.gemm
        ab = accel.act_elem_bits
        R, C = hw.gemm_rows, hw.gemm_cols
        a_signed = (ins.flags & FLAG_A_SIGNED).any()
        p_lb = _lb(beat_bytes(p_layout(hw)))

        # --- requests: per tile (b, mt, nt) one parameter beat, then (LINEAR) its K weight beats
        dec = self.decoded
        tiles = Signal(32)           # tiles left to request
        nt = Signal(16)
        k = Signal(16)
        w_addr = Signal(EXT_BITS)    # the next weight beat's byte address: a tile's K beats follow the
                                     # previous tile's, so it only steps on (and returns at a new block)
        p_addr = Signal(EXT_BITS)    # the next parameter beat's byte address (likewise)
        want_w = Signal()            # the next request is a weight beat
        w_lb = Signal(3)
        w_step = Signal(8)           # 2^w_lb, a register (the adder starts at flip-flops)
        with m.Switch(ins.w_bits):
            for wb in range(2, hw.w_bits + 1):
                with m.Case(wb):
                    m.d.comb += w_lb.eq(_lb(beat_bytes(w_layout(wb, C))))
        # flags kept beside the counters, so that no comparator sits between the reader's ready
        # and the counters' updates: tiles != 0, k == K - 1, nt == the last column tile
        tiles_left, k_hit, nt_hit = Signal(), Signal(), Signal()
        with m.If(restart):
            m.d.sync += [tiles.eq(dec.tiles), nt.eq(0), k.eq(0), w_addr.eq(ins.ext0), p_addr.eq(ins.ext1),
                         want_w.eq(0), w_step.eq(Const(1, 8) << w_lb), tiles_left.eq(dec.tiles.any()),
                         k_hit.eq(~dec.k_last.any()),
                         nt_hit.eq(~dec.nt_last.any())]
        with m.If(active):
            # (each request source handshakes on its own valid and the reader's ready, never on
            # the multiplexed ``reader.req.valid``: that mux was on the critical path)
            with m.If(tiles_left & reader.req.ready):
                last_beat = ~is_linear | (want_w & k_hit)
                with m.If(~want_w & is_linear):
                    m.d.sync += want_w.eq(1)
                with m.Elif(want_w & ~last_beat):
                    m.d.sync += [k.eq(k + 1), k_hit.eq(k + 1 == dec.k_last)]
                with m.If(want_w):
                    m.d.sync += w_addr.eq(w_addr + w_step)
                with m.If(last_beat):         # next tile
                    m.d.sync += [tiles.eq(tiles - 1), tiles_left.eq(tiles != 1), want_w.eq(0), k.eq(0),
                                 k_hit.eq(~dec.k_last.any())]
                    with m.If(nt_hit):
                        m.d.sync += [nt.eq(0), nt_hit.eq(~dec.nt_last.any()), w_addr.eq(ins.ext0),
                                     p_addr.eq(ins.ext1)]
                    with m.Else():
                        m.d.sync += [nt.eq(nt + 1), nt_hit.eq(nt + 1 == dec.nt_last),
                                     p_addr.eq(p_addr + (1 << p_lb))]

        # --- beats back, in request order: P, then (LINEAR) K weight beats ------------------------
        rk = Signal(16)              # beats of the current tile received
        rk_zero = Signal()           # rk == 0, kept as a flag (it gates the reader's beat ready)
        is_p = ~is_linear | rk_zero
        # the beat's C weights, unpacked by the op's w_bits (a data mux: the lanes' enables do not
        # decode ``ins``)
        w_beat = [Signal(signed(hw.w_bits), name=f"w_beat{j}") for j in range(C)]
        with m.Switch(ins.w_bits):
            for wb in range(2, hw.w_bits + 1):
                with m.Case(wb):
                    m.d.comb += [w_beat[j].eq(reader.beat.payload.data[j * wb:(j + 1) * wb].as_signed())
                                 for j in range(C)]
        with m.If(restart):
            m.d.sync += [rk.eq(0), rk_zero.eq(1)]
        m.d.comb += gemm.p.payload.as_value().eq(reader.beat.payload.data)
        # a LINEAR's weight beats wait in a register slice: the reader's beat ready is then its
        # room (a level register), not the GEMM's take, which ran through the ready into the
        # beat register's and the lanes' enables
        w_in = Signal(name="w_in_valid")
        w_q, w_lanes = register_slice(m, "w_beat", w_in, Cat(*w_beat), None, reset=restart | unit_rst)
        with m.If(active):
            # (the handshake from this op's own ready, not from ``reader.beat.ready``, which every
            # state drives)
            beat_ready = Mux(is_p, gemm.p.ready, w_q.w_rdy)
            seq.reader_user(active, tiles_left, Mux(want_w, w_addr, p_addr), Mux(want_w, w_lb, p_lb), beat_ready)
            m.d.comb += [gemm.p.valid.eq(is_p & reader.beat.valid), w_in.eq(reader.beat.valid & ~is_p)]
            with m.If(reader.beat.valid & beat_ready & is_linear):
                m.d.sync += [rk.eq(Mux(rk == ins.n3, 0, rk + 1)), rk_zero.eq(rk == ins.n3)]

        # --- A: each block of R rows (b, mt) is read from the buffer once, one element a cycle, into
        #     R lane memories (two halves: the next block loads while the column tiles use this one);
        #     operand beats then read all R lanes at once, for every column tile
        def wrap(x, bits_field, sgn, max_bits, target):
            with m.Switch(bits_field):
                for nb in range(2, max_bits + 1):
                    with m.Case(nb):
                        m.d.sync += target.eq(Mux(sgn, x[:nb].as_signed(), x[:nb]))

        kmax = hw.gemm_max_k
        lane_mems = []
        for i in range(R):
            lane_mems.append(block_ram(m, f"a_cache{i}", 2 * kmax, hw.a_bits + 1, self.new_reads))
        w_mems = []
        for j in range(C):
            w_mems.append(block_ram(m, f"w_cache{j}", 2 * accel.w_cache_elems, hw.w_bits, self.new_reads))
        wfilled = Array(Signal(name=f"w_filled{h}") for h in range(2))
        fw = Signal(name="w_feed_half")
        filled = Array(Signal(name=f"a_filled{h}") for h in range(2))
        lh, li, lk = Signal(), Signal(range(R + 1)), Signal(16)           # loader: half, row, k
        fh, fk, fnt = Signal(), Signal(16), Signal(16)                    # feeder: half, k, column tile
        feed_blocks = Signal(32)
        # flags kept beside the loader's and feeder's counters (as the requests' above): lk and fk
        # at K - 1, fnt at the last column tile, blocks left; no comparator in the lane memories'
        # enables (``feed_blocks.any()`` there was seed 2's critical path)
        lk_hit, fk_hit, fnt_hit, blocks_left = (Signal(name="a_load_k_hit"), Signal(name="a_feed_k_hit"),
                                                Signal(name="a_feed_nt_hit"), Signal(name="a_blocks_left"))
        k_one, nt_one = ~dec.k_last.any(), ~dec.nt_last.any()            # K = 1, one column tile
        # "the next issue ends a block" (fk and fnt at their last) as a register of its own, its
        # next value from the flags' next values: the issue then enables the block's counters
        # through one gate, not through the AND of the flags (from the issue through that AND
        # into the feeder's row-block counter was a seed's critical path, 9.51 ns)
        blk_end = Signal(name="a_feed_block_end")
        fk_hit_next = Mux(fk_hit, k_one, fk + 1 == dec.k_last)
        fnt_hit_next = Mux(fk_hit, Mux(fnt_hit, nt_one, fnt + 1 == dec.nt_last), fnt_hit)
        elem = Signal(signed(hw.a_bits + 1))
        # "the loader is past the feeder's k" as a register, set when the loader is two k ahead:
        # the feeder steps at most once a cycle, so one ahead still holds a cycle later, and a
        # half changing hands or a restart clears it.  The 16-bit comparator in front of the
        # issue and its fanout was a seed's critical path (10.38 ns); a block's last k waits for
        # its ``filled`` flag instead
        ahead = Signal(name="a_loader_ahead")
        m.d.sync += ahead.eq((lh == fh) & (lk > fk + 1) & ~(pre_ln | pre_sm) & ~restart)
        with m.If(restart):
            m.d.sync += [filled[0].eq(0), filled[1].eq(0), lh.eq(0), li.eq(0), lk.eq(0), fh.eq(0), fk.eq(0),
                         fnt.eq(0), feed_blocks.eq(dec.blocks), lk_hit.eq(k_one), fk_hit.eq(k_one),
                         fnt_hit.eq(nt_one), blk_end.eq(k_one & nt_one), blocks_left.eq(dec.blocks.any())]
        # the operand beats' reads, a cycle after their issue: the lane memories' enables and
        # addresses come straight from registers (the issue's four LUT levels and their route to
        # nine DP16KDs across the die were seeds 1 and 2's critical paths), and the beats wait in a
        # credited queue, so that the GEMM's ready reaches no memory enable (``feed``)
        issue = Signal(name="a_issue")
        feed = self._feed_queue(m, issue, unit_rst)
        # operand A's elements: src0's, or (a pre unit) the unit's output, a buffer element wide
        pre = pre_ln | pre_sm
        a_in, a_in_valid, a_in_take = Signal(ab, name="a_in"), Signal(name="a_in_valid"), seq.a_in_take
        m.d.comb += a_in.eq(Mux(pre, seq.norm.data, q0.r_data[:ab]))
        # (one-hot flags of STREAM: a flat OR rather than the selects' priority chain)
        a_from = seq.a_from
        m.d.comb += a_in_valid.eq(((a_from["softmax"] | a_from["layernorm"]) & seq.norm.q.r_rdy)
                                  | (a_from["src0"] & q0.r_rdy))
        with m.Switch(ins.a_bits):        # the element wrapped to the op's a_bits (signed or not)
            for nb in range(2, hw.a_bits + 1):
                with m.Case(nb):
                    x = a_in[:nb]
                    m.d.comb += elem.eq(Mux(a_signed, x.as_signed(), x))
        load = a_in_valid & ~filled[lh]
        # the lane memories' writes a register stage behind the loader's take: from src0's queue
        # (a LUT-RAM read) through the width select into a block RAM's write data was two seeds'
        # critical path (9.75 and 9.99 ns).  A write then lands a cycle later; the feeder reads
        # an element no earlier than two cycles after its take (``filled`` and ``ahead`` are
        # registers, and the read is a cycle after the issue), so it still reads what was written
        self._registered_writes(m, "a_write", [wp for wp, _ in lane_mems], lh * kmax + lk, elem,
                                [active & load & eq_const(li, i) for i in range(R)])
        with m.If(active):
            m.d.comb += a_in_take.eq(load)
            with m.If(load & pre):        # row by row: a row's K elements, then the next row
                with m.If(lk_hit):
                    m.d.sync += [lk.eq(0), lk_hit.eq(k_one)]
                    with m.If(eq_const(li, R - 1)):
                        m.d.sync += [li.eq(0), filled[lh].eq(1), lh.eq(~lh)]
                    with m.Else():
                        m.d.sync += li.eq(li + 1)
                with m.Else():
                    m.d.sync += [lk.eq(lk + 1), lk_hit.eq(lk + 1 == dec.k_last)]
            with m.Elif(load):            # k by k, the R rows of each k (the walk's order)
                with m.If(eq_const(li, R - 1)):
                    m.d.sync += [li.eq(0), lk.eq(lk + 1), lk_hit.eq(lk + 1 == dec.k_last)]
                    with m.If(lk_hit):
                        m.d.sync += [lk.eq(0), lk_hit.eq(k_one), filled[lh].eq(1), lh.eq(~lh)]
                with m.Else():
                    m.d.sync += li.eq(li + 1)

            # a block's first column tile follows its loading: beat k goes once all R rows of k
            # are in (the loader on this half, past k); after a pre unit, once the block is in.
            # "Past k" is a register (``ahead``, above)
            ready_k = filled[fh] | ahead
            m.d.comb += issue.eq(ready_k & (is_linear | wfilled[fw]) & feed.room & blocks_left)
            m.d.sync += [feed.last.eq(fk_hit), feed.a_addr.eq(fh * kmax + fk), feed.a_half.eq(fh),
                         feed.a_free.eq(issue & blk_end)]
            for wp, rp in lane_mems:
                m.d.comb += [rp.addr.eq(feed.a_addr), rp.en.eq(feed.read)]
            # a block's half is free once its last beat is read (not at the issue: the loader's
            # first write into it could otherwise meet that read at one address when K = 1)
            with m.If(feed.read & feed.a_free):
                m.d.sync += filled[feed.a_half].eq(0)
            with m.If(issue):
                m.d.sync += [fk_hit.eq(fk_hit_next), fnt_hit.eq(fnt_hit_next), blk_end.eq(fk_hit_next & fnt_hit_next)]
                with m.If(fk_hit):
                    m.d.sync += fk.eq(0)
                    with m.If(fnt_hit):
                        m.d.sync += fnt.eq(0)
                    with m.Else():
                        m.d.sync += fnt.eq(fnt + 1)
                with m.Else():
                    m.d.sync += fk.eq(fk + 1)
                with m.If(blk_end):          # the block's last beat
                    m.d.sync += [fh.eq(~fh), feed_blocks.eq(feed_blocks - 1), blocks_left.eq(feed_blocks != 1)]

            # MATMUL's W from the buffer: each batch's W (every column tile, K beats of C lanes) is
            # read once, one element a cycle, into C lane memories (two halves: the next batch
            # loads while this one is used), then read a whole beat at a time beside A's
            wh = accel.w_cache_elems
            lw, lwj, lwk, lwnt, lwa = (Signal(name="w_load_half"), Signal(range(C + 1), name="w_load_lane"),
                                      Signal(16, name="w_load_k"), Signal(16, name="w_load_nt"),
                                      Signal(range(2 * wh + 1), name="w_load_addr"))
            fmt, fntk = Signal(16, name="feed_mt"), Signal(32, name="feed_ntk")
            # fmt at the last row block, a flag beside it (its 16-bit compare behind the issue, into
            # ``w_free``, was a seed's critical path, 9.32 ns)
            fmt_hit, mt_one = Signal(name="feed_mt_hit"), ~dec.mt_last.any()
            welem = Signal(signed(hw.w_bits))
            with m.Switch(ins.w_bits):
                for nb in range(2, hw.w_bits + 1):
                    with m.Case(nb):
                        m.d.comb += welem.eq(q1.r_data[:nb].as_signed())
            w_load = q1.r_rdy & ~wfilled[lw] & ~is_linear
            with m.If(~is_linear):
                m.d.comb += q1.r_en.eq(w_load)
            with m.If(w_load):            # lane by lane, k by k, column tile by column tile
                with m.If(eq_const(lwj, C - 1)):
                    m.d.sync += [lwj.eq(0), lwk.eq(lwk + 1), lwa.eq(lwa + 1)]
                    with m.If(lwk == dec.k_last):
                        m.d.sync += [lwk.eq(0), lwnt.eq(lwnt + 1)]
                        with m.If(lwnt == dec.nt_last):
                            m.d.sync += [lwnt.eq(0), lwa.eq(0), wfilled[lw].eq(1), lw.eq(~lw)]
                with m.Else():
                    m.d.sync += lwj.eq(lwj + 1)
            # (the batch's end: ``blk_end & fmt_hit``, one gate behind the issue.  A register of
            # its own, its next value from the three flags' next values, put fmt's increment and
            # compare and the other two in front of it: 9.64 ns, a seed's critical path)
            m.d.sync += [feed.w_addr.eq(fw * wh + fntk + fk), feed.w_half.eq(fw),
                         feed.w_free.eq(issue & ~is_linear & blk_end & fmt_hit)]
            with m.If(issue & ~is_linear):
                with m.If(fk_hit):
                    with m.If(fnt_hit):
                        m.d.sync += fntk.eq(0)
                    with m.Else():
                        m.d.sync += fntk.eq(fntk + ins.n3)
                with m.If(blk_end):
                    with m.If(fmt_hit):      # the batch's last beat
                        m.d.sync += [fmt.eq(0), fmt_hit.eq(mt_one), fw.eq(~fw)]
                    with m.Else():
                        m.d.sync += [fmt.eq(fmt + 1), fmt_hit.eq(fmt + 1 == dec.mt_last)]
            with m.If(feed.read & feed.w_free):     # (read: the batch's W half is free)
                m.d.sync += wfilled[feed.w_half].eq(0)
            for wp, rp in w_mems:
                m.d.comb += [rp.addr.eq(feed.w_addr), rp.en.eq(feed.read)]
            # the read beat into the queue: its last flag, R lanes of A, C lanes of W
            m.d.comb += feed.data.eq(Cat(feed.held_last, *[rp.data for _, rp in lane_mems],
                                         *[rp.data for _, rp in w_mems]))
            ab1, out = hw.a_bits + 1, feed.o.payload
            m.d.comb += [gemm.a.valid.eq(feed.o.valid), gemm.a.payload.last.eq(out[0]),
                         gemm.w.valid.eq(Mux(is_linear, w_q.r_rdy, feed.o.valid)),
                         feed.o.ready.eq(gemm.a.ready),         # (a join: w goes with a)
                         w_q.r_en.eq(is_linear & gemm.w.ready)]
            m.d.comb += [gemm.a.payload.data[i].eq(out[1 + i * ab1:][:ab1]) for i in range(R)]
            m.d.comb += [gemm.w.payload[j].eq(Mux(is_linear, w_lanes[j * hw.w_bits:][:hw.w_bits],
                                                  out[1 + R * ab1 + j * hw.w_bits:][:hw.w_bits]))
                         for j in range(C)]
        # (W's loader and feeder start afresh at each instruction, as A's: inside ``active``, which
        # is 0 in DECODE, this never ran, and a MATMUL after one of another row-block count
        # started from the last one's batch-end flag: wrong results, no error)
        with m.If(restart):
            m.d.sync += [lw.eq(0), lwj.eq(0), lwk.eq(0), lwnt.eq(0), lwa.eq(0), wfilled[0].eq(0), wfilled[1].eq(0),
                         fw.eq(0), fmt.eq(0), fmt_hit.eq(mt_one), fntk.eq(0)]
        # W's writes a register stage behind its take, as operand A's (outside ``active``: the
        # enables' registers must fall with it; ``wfilled`` is a register and the read a cycle
        # after the issue, so a read still finds what was written)
        self._registered_writes(m, "w_write", [wp for wp, _ in w_mems], lw * wh + lwa, welem,
                                [active & w_load & eq_const(lwj, j) for j in range(C)])

        # --- result rows into the buffer, one element a cycle; padding dropped ----------------------
        # the rows leave the array through a register slice: the array's pop and its credit and
        # level counters then start from the slice's room register, not from the ready chain
        # through the dst walk and the post unit's packer (once the critical path)
        res_q, res = register_slice(m, "gemm_out", gemm.o.valid, gemm.o.payload, gemm.o.ready, reset=unit_rst)
        res_valid, res_lanes = res_q.r_rdy, Array(res[j] for j in range(C))
        dst = gens["dst"]
        # a padding row: in the last block, past its rows; a padding column: in the last column
        # tile, past its columns (no product of the tile index by R or C, and no comparator as
        # wide as a count, on the write's enable: the column's sum and compare were a seed's
        # critical path, 10.98 ns); row and column in a tile compared on their own few bits
        dec, rb, cb = self.decoded, R.bit_length(), C.bit_length()
        keep = (((dst.index[1] != dec.mt_last) | (dst.index[3][:rb] < dec.rows_last[:rb]))
                & ((dst.index[2] != dec.nt_last) | (dst.index[4][:cb] < dec.cols_last[:cb])))
        # the row's element going to dst: a column counter of its own that steps with dst's walk
        # (level 4, C columns: the walk's index[4] at every point), not the walk's queued index,
        # whose head select and the C-way select were a seed's critical path (9.58 ns)
        dst_col = Signal(range(C), name="dst_col")
        with m.If(restart):
            m.d.sync += dst_col.eq(0)
        with m.Elif(seq.dst_step):
            m.d.sync += dst_col.eq(Mux(dst.last[LEVELS - 1], 0, dst_col + 1))
        lane = res_lanes[dst_col]
        jc = Signal(range(C), name="post_col")       # the result row's element going to the packer
        with m.If(restart):
            m.d.sync += jc.eq(0)
        m.d.comb += seq.gemm_res_valid.eq(res_valid)
        # a result row leaves when its last element is written (no post unit) or taken by the
        # packer (one-hot flags of STREAM: a flat OR)
        m.d.comb += res_q.r_en.eq((seq.sink_from["gemm"] & seq.dst_step & dst.last[LEVELS - 1])
                                  | (seq.res_to_pack & elems.take & eq_const(jc, C - 1)))
        with m.If(active):
            m.d.comb += seq.dst_keep.eq(keep)
        seq.gemm_elem = lane                      # (dst's element: elaborate, after this)
        with m.If(active & post):
            # every element of every row, padding too, goes through the unit (the packer's beats
            # stay whole); the dst walk drops the padding's results as they come out
            m.d.comb += elems.data.eq(res_lanes[jc])
            with m.If(elems.take):
                m.d.sync += jc.eq(Mux(eq_const(jc, C - 1), 0, jc + 1))
