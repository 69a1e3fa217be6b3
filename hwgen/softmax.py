"""Row-wise shift Softmax: the hardware of :func:`golden.softmax.shift_softmax`, bit for bit,
with the layer's scale exponent ``f`` loaded at run time (one ``c`` beat per layer).

Four row-level stages run concurrently, each on a different row, handing rows over through
banked buffers (a macro pipeline):

=========  ===================================================================================
stage      operation
=========  ===================================================================================
load       an input register, then the score into score bank ``lw`` (2 banks) and the
           running maximum (an unsigned compare of offset-binary scores: a bare carry chain);
           ``last`` (or the ``max_row``-th element) closes the row; the row's maximum goes
           to its bank a cycle later
exp        reads the row back (a two-cycle LUT-RAM read), ``x = s - max`` (one register), the
           :data:`~hwgen.shift_exp.SHIFT_EXP_LATENCY` stages of
           :func:`hwgen.shift_exp.shift_exp_stages` (every variant of
           ``golden.softmax.EXP_VARIANTS``; ``f`` from the ``c`` stream), writes each exp into
           exp bank ``ew`` (3 banks) and adds it to the row sum
divide     ONE reciprocal per row, ``recip = floor((2^R - 1) / sum)``, by a sequential long
           division (one quotient bit per cycle, ``R - C`` cycles: the row maximum
           contributes exactly 2^C, so ``sum >= 2^C`` and ``recip < 2^(R-C)``; the partial
           remainder stays below ``sum``, so each step is one subtraction of ``sum_bits + 1``
           bits); it runs while the exp stage already works on the next row
out        sets a row up (its length and reciprocal into registers, one cycle), then issues
           one element a cycle while the output queue has room for it (credits): a two-cycle
           LUT-RAM read, the partial products of ``exp * recip`` (LUTs, no DSP block) in three
           carry-save stages, the sum with the rounding and the clamp
           ``clamp(rshift_round(exp * recip, R - out_bits), 0, 2^out_bits - 1)``, a 16-entry
           output queue; the pipeline has no enable, so back-pressure on ``o`` never reaches
           its registers
=========  ===================================================================================

A bank is handed to the next stage when it is full (row loaded; or exps and reciprocal
ready) and handed back as soon as its last element has been read, so the load of row n+3,
the exponentials of row n+2, the division of row n+1 and the output of row n overlap.

Timing (150 MHz on ECP5): the buffers live in distributed RAM (LUT RAM,
:class:`hwgen.pipeline.PipelinedLutRam`), because yosys maps an ECP5 block RAM without its
output register (5.8 ns clock-to-output in nextpnr's model); the control decisions (start
of a pass, hand-over to the divider, end of the division, a row's last element) drive only
a few state flags, and the registers they would load are loaded all the time while their
stage waits; ``c.ready`` is a count of the elements inside being 0.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.errors import UserError
from golden.softmax import EXP_FRAC_BITS, EXP_VARIANTS, RECIP_BITS

from .config import check_choice, check_range
from .pipeline import PipelinedLutRam, Stager, compress, partial_products, sum_pair
from .shift_exp import SHIFT_EXP_LATENCY, check_exp_attrs, shift_exp_f_bits, shift_exp_stages

__all__ = ["Softmax", "softmax_in_layout", "softmax_out_layout", "softmax_const_layout", "SOFTMAX_OUT_LATENCY"]

# output pipeline, from the cycle an element is issued to the cycle it is valid on ``o``: the
# RAM read (2), three carry-save stages, sum + clamp, the output queue (its register)
SOFTMAX_OUT_LATENCY = 8
_OUT_CSA_STAGES = 3             # exp * recip: 2 + 2 carry-save levels, then the rest (2 for 16 bits)
_EXP_PASS_DEPTH = 3 + SHIFT_EXP_LATENCY   # LUT-RAM read (2), x = s - max, the exponential
_EXP_BANKS = 3                  # exp buffer banks: being written, being divided, being read out
_OUT_QUEUE = 16                 # output queue entries (>= SOFTMAX_OUT_LATENCY + 3: full rate)


def softmax_in_layout(in_bits: int) -> data.StructLayout:
    """Input beat: a signed score (bits [0, in_bits)) and the end-of-row flag (bit in_bits)."""
    return data.StructLayout({"data": signed(in_bits), "last": unsigned(1)})


def softmax_out_layout(out_bits: int) -> data.StructLayout:
    """Output beat: an unsigned probability (bits [0, out_bits)) and the end-of-row flag."""
    return data.StructLayout({"data": unsigned(out_bits), "last": unsigned(1)})


def softmax_const_layout(max_f: int) -> data.StructLayout:
    """The ``c`` beat: ``{"f": unsigned(shift_exp_f_bits(max_f))}`` (f in 1..max_f)."""
    return data.StructLayout({"f": unsigned(shift_exp_f_bits(max_f))})


class Softmax(wiring.Component):
    """Streaming row Softmax with the shift exponential, one element per cycle per stage.

    Bit-exact to :func:`golden.softmax.shift_softmax` (rows of ``in_bits`` scores at scale
    2^-f, output unsigned ``out_bits`` at scale 2^-out_bits).  ``f`` arrives at run time on
    ``c``; everything else is a capability fixed in the RTL.

    Parameters (capabilities)
    -------------------------
    variant : str
        2^-t approximation of the exponential: 'linear', 'ibert' or 'shiftfit'.
    max_row : int
        Longest row (2..4096; default 256, enough for DeiT's 197 tokens).  Each of the five
        buffer banks (2 score banks of in_bits, 3 exp banks of C + 1 bits, LUT RAM) has
        ``2^ceil(log2(max_row))`` entries.
    in_bits : int
        Signed score width (2..23, default 16).
    max_f : int or None
        Largest scale exponent ``f`` the unit takes (1..31; default ``in_bits + 1``, every
        split of the exponential's input ``x = s - max``, which has in_bits + 1 bits).  Small
        scores (a layer whose scores span well under one unit) have a larger ``f``; the
        exponential's one barrel shifter is ``max_f`` bits wider per step above it
        (:func:`hwgen.shift_exp.shift_exp_stages`).
    out_bits : int
        Unsigned output width (2..recip_bits, default 8): the result is at scale 2^-out_bits.
    recip_bits : int
        R of ``recip = floor((2^R - 1) / sum)`` (frac_bits + 2..48, default 32).
    frac_bits : int
        C: exponentials at scale 2^-C (4..24, default 15).

    Members
    -------
    c : In(stream.Signature(StructLayout({"f": unsigned(f_bits)})))
        The layer's scale exponent ``f`` (golden attrs ``f``), one beat per layer
        (:meth:`const_beats`); ``f_bits = shift_exp_f_bits(max_f)`` (5 by default).
        Accepted only while the unit is idle: no element of a row in any bank or stage, the
        last output of the previous layer taken.  While ``c.valid`` is high ``i`` accepts
        nothing.  ``f`` persists until the next load; before the first load the output is
        unspecified.
    i : In(stream.Signature(StructLayout({"data": signed(in_bits), "last": 1})))
        Scores, row after row, in order; ``last`` is high on the final element of a row.
        Protocol: a row is every element up to and including the one with ``last``; a row
        reaching ``max_row`` elements without ``last`` is closed there (the next element
        starts a new row), so the unit never overflows.  Rows of length 1 are legal.
    o : Out(stream.Signature(StructLayout({"data": unsigned(out_bits), "last": 1})))
        ``shift_softmax`` of each row, element for element in input order, ``last`` high on
        the final element of each row.  Back-pressure (``o.ready`` low) holds the output
        queue; once the buffers are full it stalls ``i`` too.  No value is lost,
        duplicated or reordered.

    Latency and throughput
    ----------------------
    Loading ``f`` takes one cycle (the ``c`` handshake) once the unit is idle.  For a row of
    L elements reaching an idle unit, the first output is valid
    ``L + (R - C) + 25`` cycles after the handshake of its last input element
    (:meth:`first_output_latency`; L + 42 with the defaults), and the row's last output
    ``L - 1`` cycles later when ``o.ready`` stays high.

    Rows flow through four concurrent stages.  Per row, the load stage takes L cycles, the
    exp stage ``L + 13`` (start 1, read pass L, pipeline drain 11, hand-over 1), the
    divider ``R - C + 1`` (18 by default) and the output stage ``L + 1`` (set-up 1), so a
    steady stream of rows of length L without back-pressure runs at one row per
    ``max(L + 13, R - C + 1)`` cycles (:meth:`cycles_per_row`; 210 cycles for 197 tokens,
    0.94 elements per cycle; 30 for the digits model's 17; the testbench measures it,
    :func:`sim.tb_softmax.measure_softmax_cycles_per_row`).  A layer's cycles are its
    rows' plus, between layers, the drain of the last row (its latency) and the one-cycle
    ``c`` load.

    The signature depends on the parameters, so it is passed to ``Component.__init__``
    instead of being written as class annotations.
    """

    def __init__(self, variant: str = "shiftfit", *, max_row: int = 256, in_bits: int = 16,
                 out_bits: int = 8, recip_bits: int = RECIP_BITS, frac_bits: int = EXP_FRAC_BITS,
                 max_f: int | None = None):
        try:
            self._check(variant, max_row, in_bits, out_bits, recip_bits, frac_bits)
            self.max_f = check_range("softmax_max_f", self.in_bits + 1 if max_f is None else max_f, 1, 31)
        except UserError:
            self._MustUse__silence = True       # refused: never elaborated, no warning about it
            raise
        self.f_bits = shift_exp_f_bits(self.max_f)
        self.idx_bits = max(1, (self.max_row - 1).bit_length())     # element index in a bank
        self.sum_bits = (self.max_row << self.frac_bits).bit_length()
        self.quot_bits = self.recip_bits - self.frac_bits           # recip < 2^(R - C)
        self.recip_numerator = (1 << self.recip_bits) - 1
        self.out_latency = SOFTMAX_OUT_LATENCY   # the row latency depends on L: first_output_latency()
        super().__init__({
            "c": In(stream.Signature(softmax_const_layout(self.max_f))),
            "i": In(stream.Signature(softmax_in_layout(self.in_bits))),
            "o": Out(stream.Signature(softmax_out_layout(self.out_bits))),
        })

    def _check(self, variant, max_row, in_bits, out_bits, recip_bits, frac_bits) -> None:
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
    def from_config(cls, hw, variant: str | None = None) -> "Softmax":
        """The unit for ``hw``: exp_variant (or ``variant``), softmax_max_row, softmax_in_bits,
        softmax_max_f, softmax_out_bits, recip_bits, exp_frac_bits."""
        return cls(variant or hw.exp_variant, max_row=hw.softmax_max_row, in_bits=hw.softmax_in_bits,
                   out_bits=hw.softmax_out_bits, recip_bits=hw.recip_bits, frac_bits=hw.exp_frac_bits,
                   max_f=hw.softmax_max_f)

    def const_beats(self, attrs: dict, consts: dict | None = None) -> list[dict[str, int]]:
        """The ``c`` beat of a Softmax layer (golden attrs ``f``, ``variant``, ``out_bits``,
        ``recip_bits``, ``row_len``): ``[{"f": f}]``, after checking that the layer fits the
        unit (f in 1..max_f; out_bits, recip_bits and the variant equal to the unit's;
        row_len <= max_row), or a one-line :class:`UserError` naming the field, the need
        and the limit."""
        for field, mine, cap in (("out_bits", self.out_bits, "softmax_out_bits"),
                                 ("recip_bits", self.recip_bits, "recip_bits")):
            if field in attrs and int(attrs[field]) != mine:
                raise UserError(f"softmax {field} = {attrs[field]} does not fit the unit: needs {field} "
                                f"{attrs[field]}, the unit has {mine} ({cap} {mine})")
        if "row_len" in attrs and not 1 <= int(attrs["row_len"]) <= self.max_row:
            raise UserError(f"softmax row_len = {attrs['row_len']} does not fit the unit: needs rows of "
                            f"{attrs['row_len']}, the unit holds {self.max_row} (softmax_max_row {self.max_row})")
        f = check_exp_attrs("softmax", attrs, self.variant, self.max_f, f"softmax_max_f {self.max_f}")
        return [{"f": int(f)}]

    def cycles_per_row(self, length: int) -> int:
        """Documented steady-state cycles per row of ``length`` elements (no back-pressure):
        the exp stage (start, pass, drain, hand-over) or the divider, whichever is slower."""
        return max(length + 1 + _EXP_PASS_DEPTH + 1, self.quot_bits + 1)

    def first_output_latency(self, length: int) -> int:
        """Documented cycles from the last input handshake of a row (idle unit) to its first output."""
        return length + 4 + _EXP_PASS_DEPTH + self.quot_bits + 1 + SOFTMAX_OUT_LATENCY + 1

    def elaborate(self, platform):
        m = Module()
        ib, ob_w, C, R = self.in_bits, self.out_bits, self.frac_bits, self.recip_bits
        qb, sb = self.quot_bits, self.sum_bits
        sdepth = 2 << self.idx_bits             # score banks 0, 1 at Cat(index, bank)
        edepth = _EXP_BANKS << self.idx_bits    # exp banks 0, 1, 2 at Cat(index, bank)

        smem = PipelinedLutRam(m, "score_mem", signed(ib), sdepth)
        emem = PipelinedLutRam(m, "exp_mem", unsigned(C + 1), edepth)

        # --- run-time constant and idle tracking ---------------------------------------------
        f = Signal(self.f_bits)
        inside = Signal(range(sdepth + edepth + _OUT_QUEUE + 2 * SOFTMAX_OUT_LATENCY + 8))   # elements in the unit
        idle = Signal()
        with m.If(self.c.valid & idle):
            m.d.sync += f.eq(self.c.payload.f)

        # --- per-bank hand-over registers ----------------------------------------------------
        s_full = [Signal(name=f"sbank{b}_full") for b in range(2)]
        s_lenm1 = [Signal(self.idx_bits, name=f"sbank{b}_lenm1") for b in range(2)]   # length - 1
        s_max = [Signal(signed(ib), name=f"sbank{b}_max") for b in range(2)]
        # exp bank b: busy from the start of its exp pass until its last element is issued to the
        # output; full once its reciprocal is known (ready for the output stage)
        e_busy = [Signal(name=f"ebank{b}_busy") for b in range(_EXP_BANKS)]
        e_full = [Signal(name=f"ebank{b}_full") for b in range(_EXP_BANKS)]
        e_lenm1 = [Signal(self.idx_bits, name=f"ebank{b}_lenm1") for b in range(_EXP_BANKS)]
        e_recip = [Signal(qb, name=f"ebank{b}_recip") for b in range(_EXP_BANKS)]

        # --- load stage: an input register, then the bank write and the running maximum ---------
        lw = Signal()                           # score bank being filled
        lcnt = Signal(self.idx_bits)            # index of the element in in_d within its row
        run_max = Signal(signed(ib))
        row_first = Signal(init=1)              # in_d starts a row
        end_q = Signal()                        # a row ended last cycle: its maximum is in run_max
        bank_q = Signal()                       # ... in bank bank_q
        in_v = Signal()                         # in_d, in_last: the element taken in the previous cycle
        in_d = Signal(signed(ib), reset_less=True)
        in_last = Signal(reset_less=True)
        lcnt_top = Signal()                     # lcnt == max_row - 1 (the row is closed here)
        take = Signal()
        row_end = in_v & (in_last | lcnt_top)
        # the element taken now is written next cycle, into the other bank if in_d closes a row
        m.d.comb += [self.i.ready.eq(~Mux(lw ^ row_end, s_full[1], s_full[0]) & ~self.c.valid),
                     take.eq(self.i.valid & self.i.ready)]
        m.d.sync += in_v.eq(take)
        with m.If(take):
            m.d.sync += [in_d.eq(self.i.payload.data), in_last.eq(self.i.payload.last)]
        m.d.comb += [smem.waddr.eq(Cat(lcnt, lw)), smem.wdata.eq(in_d), smem.we.eq(in_v)]
        # offset binary makes the comparison unsigned: a bare carry chain, its carry (with
        # row_first) the select of one LUT a bit; the row's maximum goes to its bank a cycle later
        flip = 1 << (ib - 1)
        greater = (in_d.as_unsigned() ^ flip) > (run_max.as_unsigned() ^ flip)
        m.d.sync += [end_q.eq(row_end), bank_q.eq(lw)]
        with m.If(end_q):
            for b in range(2):
                with m.If(bank_q == b):
                    m.d.sync += s_max[b].eq(run_max)
        with m.If(in_v):
            m.d.sync += [run_max.eq(Mux(row_first | greater, in_d, run_max)), row_first.eq(row_end)]
            with m.If(row_end):
                m.d.sync += [lcnt.eq(0), lcnt_top.eq(0), lw.eq(~lw)]      # max_row >= 2
                for b in range(2):
                    with m.If(lw == b):
                        m.d.sync += s_lenm1[b].eq(lcnt)
            with m.Else():
                m.d.sync += [lcnt.eq(lcnt + 1),
                             lcnt_top.eq(lcnt == self.max_row - 2 if self.max_row > 2 else ~lcnt.any())]

        # --- exp stage: read pass, exponentials, row sum ------------------------------------------
        # Exp-bank pointers are one-hot rings (bank b <=> bit b): selecting with them needs no
        # comparison with 0 and no case statement, which keeps Verilator -Wall quiet.
        er = Signal()                           # score bank being read
        ew = Signal(_EXP_BANKS, init=1)         # exp bank being written (one-hot)
        ridx = Signal(self.idx_bits)
        rlenm1 = Signal(self.idx_bits)
        rmax = Signal(signed(ib))
        total = Signal(sb)
        m.d.comb += smem.raddr.eq(Cat(ridx, er))
        valid = [Signal(name=f"exp_v{k}") for k in range(_EXP_PASS_DEPTH)]
        st_idle = Signal(init=1, name="exp_idle")   # one-hot state flags, each tested by its own If
        st_pass = Signal(name="exp_pass")
        st_drain = Signal(name="exp_drain")
        m.d.sync += valid[0].eq(st_pass)
        for k in range(1, _EXP_PASS_DEPTH):
            m.d.sync += valid[k].eq(valid[k - 1])
        raddr = [Signal(self.idx_bits, name=f"exp_ra{k}") for k in range(smem.READ_LATENCY)]
        m.d.sync += [raddr[0].eq(ridx)] + [raddr[k].eq(raddr[k - 1]) for k in range(1, len(raddr))]
        st = Stager(m, Const(1), prefix="ex_")
        s0 = st.stage(x=smem.rdata - rmax, a=raddr[-1])                     # x <= 0, in_bits + 1 bits
        exp, s_e = shift_exp_stages(st, s0.x, f, self.variant, C, carry={"a": s0.a}, max_f=self.max_f)
        assert st.depth + smem.READ_LATENCY == _EXP_PASS_DEPTH
        exp_valid = valid[-1]
        m.d.comb += [emem.waddr.eq(Cat(s_e.a, _bank_index(ew))), emem.wdata.eq(exp), emem.we.eq(exp_valid)]
        with m.If(exp_valid):
            m.d.sync += total.eq(total + exp)

        # --- reciprocal: long division, one quotient bit per cycle -------------------------------
        # partial remainder prem < sum; each step brings down the next bit of the numerator
        d_busy = Signal()
        dbank = Signal(_EXP_BANKS)              # the exp bank whose reciprocal is computed (one-hot)
        dlenm1 = Signal(self.idx_bits)
        den = Signal(sb)
        prem = Signal(sb)
        nbits = Signal(qb)                      # numerator bits still to bring down, MSB first
        quo = Signal(qb)
        dcnt = Signal(range(qb))
        p2 = Cat(nbits[-1], prem)               # 2 prem + bit, < 2 sum
        diff = p2 - den
        d_take = ~diff[-1]
        new_quo = Cat(d_take, quo)[:qb]

        # Control decisions (start, pass end, hand-over, division end) drive only a few state
        # flags; the registers they would load are loaded all the time while their stage waits
        # (idle: the next row's length and maximum; divider free: the row sum), so no decision
        # fans out to a wide register.
        r_last = Signal()                       # ridx is the row's last index
        rlenm2 = Signal(self.idx_bits + 1)      # the row's length - 2 (compared with ridx)
        d_last = Signal()                       # the divider computes its last quotient bit
        # (not while a bank's maximum is written: the idle loads below take it a cycle later)
        start = st_idle & Mux(er, s_full[1], s_full[0]) & ~_pick(ew, e_busy) & ~(end_q & (bank_q == er))
        pass_end = st_pass & r_last
        handoff = st_drain & ~Cat(*valid).any() & ~d_busy   # the row sum is final, divider free
        div_end = d_busy & d_last
        with m.If(st_idle):
            lenm1 = Mux(er, s_lenm1[1], s_lenm1[0])
            m.d.sync += [ridx.eq(0), total.eq(0), rlenm1.eq(lenm1), r_last.eq(~lenm1.any()),
                         rlenm2.eq(lenm1 - 1), rmax.eq(Mux(er, s_max[1], s_max[0]))]
        with m.If(start):
            m.d.sync += [st_idle.eq(0), st_pass.eq(1)]
        with m.If(st_pass):
            m.d.sync += [ridx.eq(ridx + 1), r_last.eq(ridx == rlenm2)]
        with m.If(pass_end):
            m.d.sync += [st_pass.eq(0), st_drain.eq(1), er.eq(~er)]
        with m.If(handoff):
            m.d.sync += [st_drain.eq(0), st_idle.eq(1), ew.eq(ew.rotate_left(1)), d_busy.eq(1)]
        with m.If(~d_busy):
            m.d.sync += [dbank.eq(ew), dlenm1.eq(rlenm1), den.eq(total), quo.eq(0), dcnt.eq(0),
                         d_last.eq(qb == 1),
                         prem.eq(self.recip_numerator >> qb), nbits.eq(self.recip_numerator & ((1 << qb) - 1))]
        with m.Else():
            m.d.sync += [prem.eq(Mux(d_take, diff[:sb], p2[:sb])), quo.eq(new_quo),
                         nbits.eq(nbits << 1), dcnt.eq(dcnt + 1), d_last.eq(dcnt == qb - 2)]
        with m.If(div_end):
            m.d.sync += d_busy.eq(0)
            for b in range(_EXP_BANKS):
                with m.If(dbank[b]):
                    m.d.sync += [e_recip[b].eq(new_quo), e_lenm1[b].eq(dlenm1)]

        # --- output stage: issue against credits, a pipeline without enable, output queue -------
        # A bank's row is set up in one cycle (its length and reciprocal into registers), then
        # issued one element per cycle while the queue has room (credits).
        orb = Signal(_EXP_BANKS, init=1)        # exp bank being read out (one-hot)
        o_run = Signal()                        # issuing bank orb
        oidx = Signal(self.idx_bits)
        o_last = Signal()                       # oidx is the row's last element
        o_lenm2 = Signal(self.idx_bits + 1)     # the row's length - 2 (compared with oidx)
        o_recip = Signal(qb)
        credits = Signal(range(_OUT_QUEUE + 1), init=_OUT_QUEUE)   # queue entries not yet promised
        credit_ok = Signal()                    # credits >= 2 last cycle, so >= 1 now: a register
        m.d.sync += credit_ok.eq(credits >= 2)
        issue = o_run & credit_ok
        e_clear = Signal()
        m.d.comb += emem.raddr.eq(Cat(oidx, _bank_index(orb)))
        with m.If(~o_run & _pick(orb, e_full)):
            lenm1 = _pick(orb, e_lenm1)
            m.d.sync += [o_run.eq(1), oidx.eq(0), o_last.eq(~lenm1.any()), o_lenm2.eq(lenm1 - 1),
                         o_recip.eq(_pick(orb, e_recip))]
        with m.If(issue):
            with m.If(o_last):
                m.d.comb += e_clear.eq(1)
                m.d.sync += [o_run.eq(0), orb.eq(orb.rotate_left(1))]
            with m.Else():
                m.d.sync += [oidx.eq(oidx + 1), o_last.eq(oidx == o_lenm2)]
        o_fire = Signal()
        m.d.sync += credits.eq(credits - issue + o_fire)
        m.d.sync += inside.eq(inside + in_v - o_fire)
        m.d.comb += [idle.eq(~inside.any() & ~in_v), self.c.ready.eq(idle)]

        ost = Stager(m, Const(1), prefix="out_")
        ov = [Signal(name=f"out_v{k}") for k in range(SOFTMAX_OUT_LATENCY - 2)]
        m.d.sync += [ov[0].eq(issue)] + [ov[k].eq(ov[k - 1]) for k in range(1, len(ov))]
        o0 = ost.stage(recip=o_recip, last=o_last)                      # with the RAM read
        o1 = ost.stage(recip=o0.recip, last=o0.last)                    # with emem.rdata
        assert ost.depth == emem.READ_LATENCY
        # exp * recip + 2^(R - out_bits - 1): partial products, carry-save (LUTs, no DSP block),
        # two levels a stage, then the sum with the clamp
        W = R + 1                               # the product < 2^R, so rounded <= 2^out_bits
        terms = partial_products(o1.recip, emem.rdata)
        if R > ob_w:
            terms.append(Const(1 << (R - ob_w - 1), W))
        ns = o1
        for k in range(_OUT_CSA_STAGES):
            terms = compress(m, terms, W, levels=None if k == _OUT_CSA_STAGES - 1 else 2, name=f"out_csa{k}")
            ns = ost.stage(last=ns.last, **{f"t{i}": v for i, v in enumerate(terms)})
            terms = [getattr(ns, f"t{i}") for i in range(len(terms))]
        rounded = sum_pair(terms)[R - ob_w:R + 1]
        o_end = ost.stage(p=Mux(rounded[ob_w], (1 << ob_w) - 1, rounded[:ob_w]), last=ns.last)
        assert ost.depth == len(ov)
        _out_queue(m, self.o, Cat(o_end.p, o_end.last), ov[-1], o_fire, _OUT_QUEUE)

        # --- bank flags: set and cleared by different stages, never the same bank in one cycle --
        for b in range(2):
            with m.If(pass_end & (er == b)):
                m.d.sync += s_full[b].eq(0)
            with m.If(row_end & (lw == b)):
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


def _out_queue(m, o, data, valid, fire, depth: int) -> None:
    """The output queue: ``valid`` / ``data`` (never more than ``depth`` beats in flight and
    queued: the caller's credits) into distributed RAM, then an output register that drives
    ``o``; ``fire`` is driven with the handshake on ``o``.  A beat written in cycle k is on
    ``o`` in cycle k + 2 at the earliest (the RAM, then the register); every decision depends
    on registers and ``o.ready`` alone."""
    abits = max(1, (depth - 1).bit_length())
    mem = Memory(shape=len(data), depth=1 << abits, init=[], attrs={"ram_style": "distributed"})
    m.submodules.out_queue = mem
    wp, rp = mem.write_port(), mem.read_port(domain="comb")
    wptr = Signal(abits, name="oq_wptr")
    rptr = Signal(abits, name="oq_rptr")
    count = Signal(abits + 1, name="oq_count")          # beats in the RAM, but the one written last cycle
    nonempty = Signal(name="oq_nonempty")               # count != 0
    wb = Signal(name="oq_written")                       # a beat was written last cycle (readable now)
    ov = Signal(name="oq_valid")
    od = Signal(len(data), name="oq_data", reset_less=True)
    pop = (~ov | o.ready) & (nonempty | wb)
    m.d.comb += [wp.addr.eq(wptr), wp.data.eq(data), wp.en.eq(valid), rp.addr.eq(rptr),
                 o.valid.eq(ov), o.payload.eq(od), fire.eq(ov & o.ready)]
    m.d.sync += wb.eq(valid)
    with m.If(valid):
        m.d.sync += wptr.eq(wptr + 1)
    with m.If(pop):
        m.d.sync += [od.eq(rp.data), ov.eq(1), rptr.eq(rptr + 1)]
    with m.Elif(o.ready):
        m.d.sync += ov.eq(0)
    m.d.sync += [count.eq(count + wb - pop),
                 nonempty.eq(Mux(wb, Mux(pop, nonempty, 1), Mux(pop, count != 1, nonempty)))]
