"""The accelerator's side of external memory: a word-wide read port and write port (the AXI4
master, :mod:`hwgen.accel.axi`, carries them to the bus; the simulation memory model serves them
directly), and the reader and writer that turn beats of any power-of-two size into word
accesses.

Port protocol (word addresses; a word is ``word_bits`` = 8 x 2^``word_lb`` bits):

* ``ar``: a read burst, ``addr`` = byte address >> word_lb, ``len`` + 1 consecutive words
  (an AXI4 INCR burst); ``r``: the words, in request order, each with ``err`` (an AXI
  SLVERR/DECERR response);
* ``aw``: a write of one word, ``addr``, ``data`` and ``strb`` (one bit per byte); ``b``: one
  response per write, in order, with ``err``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..pipeline import register_slice
from .isa import EXT_BITS

__all__ = ["ExtReader", "ExtWriter", "MAX_BEAT_LB", "LEN_BITS", "read_port", "write_port"]

MAX_BEAT_LB = 6           # the widest beat is 64 bytes: an instruction


LEN_BITS = 8              # an AXI4 burst: up to 256 words


def read_port(word_lb: int) -> dict:
    """The (ar, r) members of a read port, master side."""
    return {"ar": Out(stream.Signature(data.StructLayout({"addr": unsigned(EXT_BITS - word_lb),
                                                          "len": unsigned(LEN_BITS)}))),
            "r": In(stream.Signature(data.StructLayout({"data": unsigned(8 << word_lb), "err": 1})))}


def write_port(word_lb: int) -> dict:
    """The (aw, b) members of a write port, master side."""
    return {"aw": Out(stream.Signature(data.StructLayout({"addr": unsigned(EXT_BITS - word_lb),
                                                          "data": unsigned(8 << word_lb),
                                                          "strb": unsigned(1 << word_lb)}))),
            "b": In(stream.Signature(data.StructLayout({"err": 1})))}


class ExtReader(wiring.Component):
    """Beats of ``2^lb`` bytes (lb <= 6) at byte addresses aligned to their size, read as words.

    A beat narrower than a word takes one word read and its bytes are shifted down; a wider
    one is one burst of ``2^(lb - word_lb)`` words, word j in bits ``j word_bits`` up.
    Requests are issued while a small queue of their shapes has room, so reads overlap.

    Parameters
    ----------
    word_lb : int
        log2 of the bytes of a memory word (3: 64-bit words).
    depth : int
        Beats in flight.  16 covers a read's round trip through the request slice, the AXI
        register slices and the memory's latency for one-word beats (8 did not once the slices
        were in: digits' LINEARs lost 18% to it).

    Members
    -------
    req : In(stream.Signature({"addr": EXT_BITS, "lb": 3}))
    beat : Out(stream.Signature({"data": 512, "err": 1}))
        The beat in the low ``8 2^lb`` bits (the bits above are not defined).
    ar, r : the read port (:func:`read_port`)
    idle : Out(1)
        No request is waiting, no beat is in flight or waiting on ``beat``.

    A request passes a register slice before it is issued (one cycle more per round trip, no
    combinational path from ``req`` to ``ar``), and a beat leaves from one (no path from
    ``beat.ready`` to the beat's storage or to ``r.ready``).
    """

    def __init__(self, word_lb: int = 3, depth: int = 16):
        self.word_lb, self.depth = word_lb, depth
        self.word_bits = 8 << word_lb
        self.slots = max(1, (8 << MAX_BEAT_LB) // self.word_bits)
        super().__init__({
            "req": In(stream.Signature(data.StructLayout({"addr": unsigned(EXT_BITS), "lb": unsigned(3)}))),
            "beat": Out(stream.Signature(data.StructLayout({"data": unsigned(8 << MAX_BEAT_LB), "err": 1}))),
            **read_port(word_lb),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        wlb, wb, slots = self.word_lb, self.word_bits, self.slots
        cnt_bits = max(1, slots.bit_length())

        def words(lb):      # words of a beat of 2^lb bytes
            return Mux(lb > wlb, Const(1, cnt_bits + 1) << (lb - wlb)[:3], 1)

        # the shape of every beat in flight, in order: byte offset in its word, word count - 1,
        # one word (the beat's last word is then its first: a flag, no compare).  Its
        # head is a register (``SyncFIFOBuffered``): the words' ready, the beat slice's write
        # and the assembly mux all start from it (from an unregistered head they were the
        # critical path); a shape is written long before its words come back
        m.submodules.shapes = shapes = SyncFIFOBuffered(width=max(1, wlb) + cnt_bits + 2, depth=self.depth)

        # --- issue: one burst a beat, from a register slice (the caller's address arithmetic
        #     ends at its flip-flops) -----------------------------------------------------------
        req_q, req = register_slice(m, "req", self.req.valid, self.req.payload, self.req.ready)
        n = words(req.lb)
        issue = req_q.r_rdy & self.ar.ready & shapes.w_rdy
        m.d.comb += [self.ar.valid.eq(req_q.r_rdy & shapes.w_rdy),
                     self.ar.payload.addr.eq(req.addr >> wlb), self.ar.payload.len.eq(n - 1),
                     req_q.r_en.eq(issue), shapes.w_en.eq(issue),
                     shapes.w_data.eq(Cat(req.addr[:max(1, wlb)], (n - 1)[:cnt_bits + 1], req.lb <= wlb))]

        # --- assemble: words into beats -----------------------------------------------------
        off = shapes.r_data[:max(1, wlb)]
        words_m1 = shapes.r_data[max(1, wlb):max(1, wlb) + cnt_bits + 1]
        one_word = shapes.r_data[-1]
        j = Signal(cnt_bits + 1)
        # "the next word ends the beat", a register: at a beat's first word (j = 0) the shape's
        # flag says it, after that ``ends`` (set from j and the count while the words arrive), so
        # that no comparator sits in the ready / write-enable path of the 512-bit beat slice
        first = Signal(init=1)
        ends = Signal()
        acc = [Signal(wb, name=f"acc{k}", reset_less=True) for k in range(slots)]     # data: no reset
        # word slot k takes the R channel's data whenever j = k, the handshake or not (a word not
        # yet accepted is presented again, and j moves only when it is), so the slots' 512
        # enables are flip-flops, not the R handshake (seed 1's path): ``j`` one-hot, a register
        # (slot 0's bit is j = 0, the inverse of the register ``multi``, j > 0: a register equal
        # to ``first`` would be merged with it and its fanout would load the handshake's net, and
        # a LUT of j's bits into the 512 selects was a seed's critical path, 9.86 ns)
        multi = Signal(name="multi")
        at_reg = Signal(max(1, slots - 1), name="at")
        at = Cat(~multi, at_reg)
        err = Signal()
        last_word = Mux(first, one_word, ends)
        # the assembled beat goes into a register slice, whose storage only the words write: the
        # consumer's ready moves the slice's level and read pointer, never the clock enables of
        # a 512-bit register (that ready chain was the critical path).  A word is taken only while
        # the slice has room for a beat, the word its last or not: ``r.ready`` then comes from
        # registers alone (from ``last_word`` it fed the slice's write and the shapes' pop through
        # one more level, seed 1's critical path), and a third entry gives back the beat that a
        # word held in the assembly used to buffer
        beat = Signal(data.StructLayout({"data": unsigned(8 << MAX_BEAT_LB), "err": 1}))
        assembled = Signal()
        out_q, out = register_slice(m, "beat", assembled, beat, None, depth=3)   # r.ready checks its room
        m.d.comb += [self.beat.valid.eq(out_q.r_rdy), self.beat.payload.eq(out), out_q.r_en.eq(self.beat.ready),
                     self.r.ready.eq(shapes.r_rdy & out_q.w_rdy)]
        # the beat's data, ungated (the slice stores it only when ``assembled``); a beat that ends
        # at its first word (j = 0) is a one-word beat: that select comes from ``multi``, not from
        # the shape's flag, which then fans out to the handshake alone
        single = (self.r.payload.data >> (off << 3))[:wb]
        whole = Cat(*[Mux(at[k], self.r.payload.data, acc[k]) for k in range(slots)])
        m.d.comb += [beat.data.eq(Mux(multi, whole, single)), beat.err.eq(err | self.r.payload.err)]
        for k in range(slots):
            with m.If(at[k]):
                m.d.sync += acc[k].eq(self.r.payload.data)
        with m.If(self.r.valid & self.r.ready):
            with m.If(last_word):
                m.d.comb += [shapes.r_en.eq(1), assembled.eq(1)]
                m.d.sync += [j.eq(0), at_reg.eq(0), err.eq(0), first.eq(1), multi.eq(0)]
            with m.Else():
                m.d.sync += [j.eq(j + 1), at_reg.eq(at[:-1]), err.eq(err | self.r.payload.err), first.eq(0), multi.eq(1),
                             ends.eq(j + 1 == words_m1)]
        m.d.comb += self.idle.eq(~req_q.r_rdy & ~shapes.r_rdy & ~out_q.r_rdy)
        return m


class ExtWriter(wiring.Component):
    """Elements of ``2^lb`` bytes (lb <= word_lb) written at byte addresses aligned to their
    size, one word write each (the other bytes' strobes low).

    Members
    -------
    req : In(stream.Signature({"addr": EXT_BITS, "data": word_bits, "lb": 3}))
        The element in the low bytes of ``data``.
    aw, b : the write port (:func:`write_port`)
    idle : Out(1)
        No write is waiting and every write issued has had its response (a request passes
        a register slice first, as in :class:`ExtReader`).
    err : Out(1)
        A response of an error came back since ``clear``.
    clear : In(1)
    """

    def __init__(self, word_lb: int = 3, max_pending: int = 64):
        self.word_lb, self.max_pending = word_lb, max_pending
        super().__init__({
            "req": In(stream.Signature(data.StructLayout({"addr": unsigned(EXT_BITS), "data": unsigned(8 << word_lb),
                                                          "lb": unsigned(3)}))),
            **write_port(word_lb),
            "idle": Out(1),
            "err": Out(1),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        wlb = self.word_lb
        pending = Signal(range(self.max_pending + 1))
        # the word write (address, data at its byte lanes, strobes) is formed in front of a
        # register slice, from the caller's request registers: behind the slice's LUT-RAM read,
        # the strobes' subtraction and the byte shift were a seed's critical path (10.05 ns)
        off = self.req.payload.addr[:wlb] if wlb else Const(0, 1)
        strb = Signal(1 << wlb)
        with m.Switch(self.req.payload.lb):      # 2^lb ones from byte ``off``: a table, no subtractor
            for lb in range(wlb + 1):
                with m.Case(lb):
                    m.d.comb += strb.eq(Const((1 << (1 << lb)) - 1, 1 << wlb) << off)
        word = Signal(data.StructLayout({"addr": unsigned(EXT_BITS - wlb), "data": unsigned(8 << wlb),
                                         "strb": unsigned(1 << wlb)}))
        m.d.comb += [word.addr.eq(self.req.payload.addr[wlb:]), word.data.eq(self.req.payload.data << (off << 3)),
                     word.strb.eq(strb)]
        req_q, req = register_slice(m, "req", self.req.valid, word, self.req.ready)
        room = pending < self.max_pending
        m.d.comb += [
            self.aw.valid.eq(req_q.r_rdy & room),
            self.aw.payload.addr.eq(req.addr),
            self.aw.payload.data.eq(req.data),
            self.aw.payload.strb.eq(req.strb),
            req_q.r_en.eq(self.aw.ready & room),
            self.b.ready.eq(1),
            self.idle.eq(~pending.any() & ~req_q.r_rdy),
        ]
        sent = self.aw.valid & self.aw.ready
        back = self.b.valid
        with m.If(sent & ~back):
            m.d.sync += pending.eq(pending + 1)
        with m.Elif(back & ~sent):
            m.d.sync += pending.eq(pending - 1)
        with m.If(self.clear):
            m.d.sync += self.err.eq(0)
        with m.Elif(back & self.b.payload.err):
            m.d.sync += self.err.eq(1)
        return m
