"""Row-wise shift Softmax: the hardware of :func:`golden.softmax.shift_softmax`, bit for bit.

Four row-level stages run concurrently, each on a different row, handing rows over through
banked buffers (a macro pipeline):

=========  ===================================================================================
stage      operation
=========  ===================================================================================
load       takes the scores of a row into score bank ``lw`` (2 banks, one element per
           cycle) and keeps the running maximum; ``last`` (or the ``max_row``-th element)
           closes the row
exp        reads the row back, ``x = s - max`` (one register), the four shift-exponential
           stages of :func:`hwgen.shift_exp.shift_exp_stages` (every variant of
           ``golden.softmax.EXP_VARIANTS``), writes each exp into exp bank ``ew`` (3 banks)
           and adds it to the row sum
divide     ONE reciprocal per row, ``recip = floor((2^R - 1) / sum)``, by a sequential
           restoring divider (one quotient bit per cycle, ``R - C`` cycles: the row maximum
           contributes exactly 2^C, so ``sum >= 2^C`` and ``recip < 2^(R-C)``); it runs while
           the exp stage already works on the next row
out        reads the exps back and streams
           ``clamp(rshift_round(exp * recip, R - out_bits), 0, 2^out_bits - 1)`` through a
           3-stage stall-together pipeline (read, product, round and clamp) that honours
           ``o.ready``
=========  ===================================================================================

A bank is handed to the next stage when it is full (row loaded; or exps and reciprocal
ready) and handed back as soon as its last element has been read, so the load of row n+3,
the exponentials of row n+2, the division of row n+1 and the output of row n overlap.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.errors import UserError
from golden.softmax import EXP_FRAC_BITS, EXP_VARIANTS, RECIP_BITS

from .config import check_choice, check_range
from .pipeline import Stager, rshift_round_const, stream_pipeline
from .shift_exp import SHIFT_EXP_LATENCY, shift_exp_stages

__all__ = ["Softmax", "softmax_in_layout", "softmax_out_layout", "SOFTMAX_OUT_LATENCY"]

SOFTMAX_OUT_LATENCY = 3         # output pipeline: exp read, product, round + clamp
_EXP_PASS_DEPTH = 2 + SHIFT_EXP_LATENCY   # score read, x = s - max, four exponential stages
_EXP_BANKS = 3                  # exp buffer banks: being written, being divided, being read out


def softmax_in_layout(in_bits: int) -> data.StructLayout:
    """Input beat: a signed score (bits [0, in_bits)) and the end-of-row flag (bit in_bits)."""
    return data.StructLayout({"data": signed(in_bits), "last": unsigned(1)})


def softmax_out_layout(out_bits: int) -> data.StructLayout:
    """Output beat: an unsigned probability (bits [0, out_bits)) and the end-of-row flag."""
    return data.StructLayout({"data": unsigned(out_bits), "last": unsigned(1)})


class Softmax(wiring.Component):
    """Streaming row Softmax with the shift exponential, one element per cycle per stage.

    Bit-exact to :func:`golden.softmax.shift_softmax` (rows of ``in_bits`` scores at scale
    2^-f, output unsigned ``out_bits`` at scale 2^-out_bits).

    Parameters
    ----------
    f : int
        Scores are at scale 2^-f (1..30), as ``f`` of :func:`golden.softmax.shift_softmax`.
    variant : str
        2^-t approximation of the exponential: 'linear', 'ibert' or 'shiftfit'.
    max_row : int
        Longest row (2..4096; default 256, enough for DeiT's 197 tokens).  Each of the five
        buffer banks (2 score banks of in_bits, 3 exp banks of C + 1 bits) has
        ``2^ceil(log2(max_row))`` entries.
    in_bits : int
        Signed score width (2..23, default 16).
    out_bits : int
        Unsigned output width (2..recip_bits, default 8): the result is at scale 2^-out_bits.
    recip_bits : int
        R of ``recip = floor((2^R - 1) / sum)`` (frac_bits + 2..48, default 32).
    frac_bits : int
        C: exponentials at scale 2^-C (4..24, default 15).

    Members
    -------
    i : In(stream.Signature(StructLayout({"data": signed(in_bits), "last": 1})))
        Scores, row after row, in order; ``last`` is high on the final element of a row.
        Protocol: a row is every element up to and including the one with ``last``; a row
        reaching ``max_row`` elements without ``last`` is closed there (the next element
        starts a new row), so the unit never overflows.  Rows of length 1 are legal.
    o : Out(stream.Signature(StructLayout({"data": unsigned(out_bits), "last": 1})))
        ``shift_softmax`` of each row, element for element in input order, ``last`` high on
        the final element of each row.  Back-pressure (``o.ready`` low) stalls the output
        pipeline; once the buffers are full it stalls ``i`` too.  No value is lost,
        duplicated or reordered.

    Latency and throughput
    ----------------------
    For a row of L elements reaching an idle unit, the first output is valid
    ``L + 8 + (R - C) + 4`` cycles after the handshake of its last input element
    (L + 29 with the defaults; the testbench measures it), and the row's last output
    ``L - 1`` cycles later when ``o.ready`` stays high.

    Rows flow through four concurrent stages.  Per row, the load stage takes L cycles, the
    exp stage ``L + 8`` (start 1, read pass L, pipeline drain 7), the divider
    ``R - C + 1`` (18 by default) and the output stage L, so a steady stream of rows of
    length L without back-pressure runs at one row per ``max(L + 8, R - C + 1)`` cycles
    (:meth:`cycles_per_row`; 205 cycles for 197 tokens, 0.96 elements per cycle; the
    testbench measures it, :func:`sim.tb_softmax.measure_softmax_cycles_per_row`).

    The signature depends on the parameters, so it is passed to ``Component.__init__``
    instead of being written as class annotations.
    """

    def __init__(self, f: int, variant: str = "shiftfit", *, max_row: int = 256, in_bits: int = 16,
                 out_bits: int = 8, recip_bits: int = RECIP_BITS, frac_bits: int = EXP_FRAC_BITS):
        try:
            self._check(f, variant, max_row, in_bits, out_bits, recip_bits, frac_bits)
        except UserError:
            self._MustUse__silence = True       # refused: never elaborated, no warning about it
            raise
        self.idx_bits = max(1, (self.max_row - 1).bit_length())     # element index in a bank
        self.len_bits = self.max_row.bit_length()                   # row length 1..max_row
        self.sum_bits = (self.max_row << self.frac_bits).bit_length()
        self.quot_bits = self.recip_bits - self.frac_bits           # recip < 2^(R - C)
        self.recip_numerator = (1 << self.recip_bits) - 1
        self.out_latency = SOFTMAX_OUT_LATENCY   # the row latency depends on L: first_output_latency()
        super().__init__({
            "i": In(stream.Signature(softmax_in_layout(self.in_bits))),
            "o": Out(stream.Signature(softmax_out_layout(self.out_bits))),
        })

    def _check(self, f, variant, max_row, in_bits, out_bits, recip_bits, frac_bits) -> None:
        self.f = check_range("softmax f", f, 1, 30)
        self.variant = check_choice("exp_variant", variant, EXP_VARIANTS)
        self.max_row = check_range("softmax_max_row", max_row, 2, 4096)
        self.in_bits = check_range("softmax_in_bits", in_bits, 2, 23)
        self.frac_bits = check_range("exp_frac_bits", frac_bits, 4, 24)
        self.recip_bits = check_range("recip_bits", recip_bits, 8, 48)
        if self.recip_bits < self.frac_bits + 2:
            raise UserError(f"hwgen config: recip_bits = {recip_bits} is out of range; accepted "
                            f"{frac_bits + 2}..48 (exp_frac_bits + 2 or more)")
        self.out_bits = check_range("softmax_out_bits", out_bits, 2, 16)
        if self.out_bits > self.recip_bits:
            raise UserError(f"hwgen config: softmax_out_bits = {out_bits} is out of range; "
                            f"accepted 2..recip_bits ({recip_bits})")

    @classmethod
    def from_config(cls, cfg, f: int, variant: str | None = None) -> "Softmax":
        return cls(f, variant or cfg.exp_variant, max_row=cfg.softmax_max_row,
                   in_bits=getattr(cfg, "softmax_in_bits", 16), out_bits=cfg.softmax_out_bits,
                   recip_bits=cfg.recip_bits, frac_bits=cfg.exp_frac_bits)

    def cycles_per_row(self, length: int) -> int:
        """Documented steady-state cycles per row of ``length`` elements (no back-pressure):
        the exp stage (start, pass, drain) or the divider, whichever is slower."""
        return max(length + 1 + _EXP_PASS_DEPTH + 1, self.quot_bits + 1)

    def first_output_latency(self, length: int) -> int:
        """Documented cycles from the last input handshake of a row (idle unit) to its first output."""
        return length + 1 + (_EXP_PASS_DEPTH + 1) + self.quot_bits + SOFTMAX_OUT_LATENCY + 1

    def elaborate(self, platform):
        m = Module()
        ib, ob_w, C, R = self.in_bits, self.out_bits, self.frac_bits, self.recip_bits
        sdepth = 2 << self.idx_bits             # score banks 0, 1 at Cat(index, bank)
        edepth = _EXP_BANKS << self.idx_bits    # exp banks 0, 1, 2 at Cat(index, bank)

        m.submodules.score_mem = smem = Memory(shape=signed(ib), depth=sdepth, init=[])
        m.submodules.exp_mem = emem = Memory(shape=unsigned(C + 1), depth=edepth, init=[])

        # --- per-bank hand-over registers ----------------------------------------------------
        s_full = [Signal(name=f"sbank{b}_full") for b in range(2)]
        s_len = [Signal(self.len_bits, name=f"sbank{b}_len") for b in range(2)]
        s_max = [Signal(signed(ib), name=f"sbank{b}_max") for b in range(2)]
        # exp bank b: busy from the start of its exp pass until its last element is read out;
        # full once its reciprocal is known (ready for the output stage)
        e_busy = [Signal(name=f"ebank{b}_busy") for b in range(_EXP_BANKS)]
        e_full = [Signal(name=f"ebank{b}_full") for b in range(_EXP_BANKS)]
        e_len = [Signal(self.len_bits, name=f"ebank{b}_len") for b in range(_EXP_BANKS)]
        e_recip = [Signal(self.quot_bits, name=f"ebank{b}_recip") for b in range(_EXP_BANKS)]

        # --- load stage --------------------------------------------------------------------------
        lw = Signal()                           # score bank being filled
        lcnt = Signal(self.idx_bits)            # index of the next element in the row
        run_max = Signal(signed(ib))
        row_first = Signal(init=1)              # the next element starts a row (lcnt == 0)
        s_in = self.i.payload.data
        take = Signal()
        m.d.comb += [self.i.ready.eq(~Mux(lw, s_full[1], s_full[0])),
                     take.eq(self.i.valid & self.i.ready)]
        wp = smem.write_port()
        m.d.comb += [wp.addr.eq(Cat(lcnt, lw)), wp.data.eq(s_in), wp.en.eq(take)]
        new_max = Mux(row_first | (s_in > run_max), s_in, run_max)
        row_end = self.i.payload.last | (lcnt == self.max_row - 1)
        with m.If(take):
            m.d.sync += [run_max.eq(new_max), row_first.eq(row_end)]
            with m.If(row_end):
                m.d.sync += [lcnt.eq(0), lw.eq(~lw)]
                for b in range(2):
                    with m.If(lw == b):
                        m.d.sync += [s_len[b].eq(lcnt + 1), s_max[b].eq(new_max)]
            with m.Else():
                m.d.sync += lcnt.eq(lcnt + 1)

        # --- exp stage: read pass, exponentials, row sum ------------------------------------------
        # Exp-bank pointers are one-hot rings (bank b <=> bit b): selecting with them needs no
        # comparison with 0 and no case statement, which keeps Verilator -Wall quiet.
        er = Signal()                           # score bank being read
        ew = Signal(_EXP_BANKS, init=1)         # exp bank being written (one-hot)
        ridx = Signal(self.idx_bits)
        rlen = Signal(self.len_bits)
        rmax = Signal(signed(ib))
        total = Signal(self.sum_bits)
        rp = smem.read_port(domain="sync")
        m.d.comb += [rp.addr.eq(Cat(ridx, er)), rp.en.eq(1)]
        valid = [Signal(name=f"exp_v{k}") for k in range(_EXP_PASS_DEPTH)]
        st_idle = Signal(init=1, name="exp_idle")   # one-hot state flags, each tested by its own If
        st_pass = Signal(name="exp_pass")
        st_drain = Signal(name="exp_drain")
        m.d.sync += valid[0].eq(st_pass)
        for k in range(1, _EXP_PASS_DEPTH):
            m.d.sync += valid[k].eq(valid[k - 1])
        raddr = Signal(self.idx_bits)           # index of the score in rp.data
        m.d.sync += raddr.eq(ridx)
        st = Stager(m, Const(1), prefix="ex_")
        s0 = st.stage(x=rp.data.as_signed() - rmax, a=raddr)          # x <= 0, in_bits + 1 bits
        exp, s4 = shift_exp_stages(st, s0.x, self.f, self.variant, C, carry={"a": s0.a})
        assert st.depth + 1 == _EXP_PASS_DEPTH
        exp_valid = valid[-1]
        ewp = emem.write_port()
        m.d.comb += [ewp.addr.eq(Cat(s4.a, _bank_index(ew))), ewp.data.eq(exp), ewp.en.eq(exp_valid)]
        with m.If(exp_valid):
            m.d.sync += total.eq(total + exp)

        # --- reciprocal: a sequential restoring divider, one quotient bit per cycle ------------------
        d_busy = Signal()
        dbank = Signal(_EXP_BANKS)              # the exp bank whose reciprocal is computed (one-hot)
        dlen = Signal(self.len_bits)
        rem = Signal(R)
        dsh = Signal(self.sum_bits + self.quot_bits - 1)
        quo = Signal(self.quot_bits)
        dcnt = Signal(range(self.quot_bits))
        d_take = rem >= dsh
        new_quo = Cat(d_take, quo)[:self.quot_bits]

        start = st_idle & Mux(er, s_full[1], s_full[0]) & ~_pick(ew, e_busy)
        pass_end = st_pass & (ridx == rlen - 1)
        handoff = st_drain & ~Cat(*valid).any() & ~d_busy   # the row sum is final, divider free
        div_end = d_busy & (dcnt == self.quot_bits - 1)      # a constant >= 1: no "== 0" in the Verilog
        with m.If(start):
            m.d.sync += [st_idle.eq(0), st_pass.eq(1), ridx.eq(0), total.eq(0),
                         rlen.eq(Mux(er, s_len[1], s_len[0])), rmax.eq(Mux(er, s_max[1], s_max[0]))]
        with m.If(st_pass):
            m.d.sync += ridx.eq(ridx + 1)
        with m.If(pass_end):
            m.d.sync += [st_pass.eq(0), st_drain.eq(1), er.eq(~er)]
        with m.If(handoff):
            m.d.sync += [st_drain.eq(0), st_idle.eq(1), ew.eq(ew.rotate_left(1)),
                         d_busy.eq(1), dbank.eq(ew), dlen.eq(rlen),
                         rem.eq(self.recip_numerator), quo.eq(0), dcnt.eq(0),
                         dsh.eq(total << (self.quot_bits - 1))]
        with m.If(d_busy):
            m.d.sync += [rem.eq(Mux(d_take, rem - dsh, rem)), quo.eq(new_quo), dsh.eq(dsh >> 1),
                         dcnt.eq(dcnt + 1)]
        with m.If(div_end):
            m.d.sync += d_busy.eq(0)
            for b in range(_EXP_BANKS):
                with m.If(dbank[b]):
                    m.d.sync += [e_recip[b].eq(new_quo), e_len[b].eq(dlen)]

        # --- output stage: stall-together pipeline ------------------------------------------------
        orb = Signal(_EXP_BANKS, init=1)        # exp bank being read out (one-hot)
        oidx = Signal(self.idx_bits)
        en = Signal()
        o_avail = _pick(orb, e_full)
        o_last = oidx == _pick(orb, e_len) - 1
        o_issue = en & o_avail
        e_clear = Signal()
        orp = emem.read_port(domain="sync")
        m.d.comb += [orp.addr.eq(Cat(oidx, _bank_index(orb))), orp.en.eq(en)]
        with m.If(o_issue):
            with m.If(o_last):
                m.d.comb += e_clear.eq(1)
                m.d.sync += [oidx.eq(0), orb.eq(orb.rotate_left(1))]
            with m.Else():
                m.d.sync += oidx.eq(oidx + 1)
        ost = Stager(m, en, prefix="out_")
        o1 = ost.stage(recip=_pick(orb, e_recip), last=o_last)          # with orp.data
        o2 = ost.stage(prod=orp.data * o1.recip, last=o1.last)
        rounded = rshift_round_const(o2.prod, R - ob_w)                  # unsigned: only the top clamps
        o3 = ost.stage(p=Mux(rounded > (1 << ob_w) - 1, (1 << ob_w) - 1, rounded[:ob_w]), last=o2.last)
        assert ost.depth == SOFTMAX_OUT_LATENCY
        m.d.comb += [self.o.payload.data.eq(o3.p), self.o.payload.last.eq(o3.last)]
        m.d.comb += self.o.valid.eq(stream_pipeline(m, SOFTMAX_OUT_LATENCY, o_avail, self.o.ready, en))

        # --- bank flags: set and cleared by different stages, never the same bank in one cycle --
        for b in range(2):
            with m.If(pass_end & (er == b)):
                m.d.sync += s_full[b].eq(0)
            with m.If(take & row_end & (lw == b)):
                m.d.sync += s_full[b].eq(1)
        for b in range(_EXP_BANKS):
            with m.If(e_clear & orb[b]):        # busy and full: never the bank started or divided now
                m.d.sync += [e_busy[b].eq(0), e_full[b].eq(0)]
            with m.If(start & ew[b]):
                m.d.sync += e_busy[b].eq(1)
            with m.If(div_end & dbank[b]):
                m.d.sync += e_full[b].eq(1)
        return m


def _pick(onehot, items):
    """``items[b]`` for the set bit b of a one-hot selector (a Mux chain, no comparisons)."""
    v = items[-1]
    for b in reversed(range(len(items) - 1)):
        v = Mux(onehot[b], items[b], v)
    return v


def _bank_index(onehot):
    """Binary index of a 3-bank one-hot pointer: bit 0 = bank 1, bit 1 = bank 2."""
    return Cat(onehot[1], onehot[2])
