"""Integer GELU unit: the hardware of :func:`golden.gelu.gelu_int`, all four variants, with the
layer's constants loaded at run time.

A unit is generated for *capabilities* (variant, input and output widths, multiplier width,
lanes); every layer's integer constants (the golden op's ``attrs``, and the 'lut' table in its
``consts``) arrive on the ``c`` stream before the layer's data (:meth:`Gelu.const_beats`), so
one instance serves every GELU layer of a model that uses its variant.

Datapath (per lane; every multiplier is a LUT carry-save tree split over registers,
:func:`hwgen.pipeline.multiply_stages`, every run-time shift a barrel shifter split over
registers, :func:`hwgen.pipeline.rshift_round_stages`):

``ibert`` / ``iptq`` (degree d, even: 2 for ibert, 4 for iptq)
    1. ``u = max(qb - |q|, 0)`` (= ``Qb - min(|q|, Qb)``, one carry chain and two muxes)
    2. ``P = u^d`` (repeated squaring when d is a power of two, else a multiply chain;
       ``u^d = (min(|q|, qb) - qb)^d`` for even d)
    3. ``t = rshift_round(P, sh)``, cut to :data:`T_BITS` bits (``const_beats`` checks
       ``rshift_round(qb^d, sh) < 2^T_BITS``)
    4. ``s = q > 0 ? 2 qc - t : t`` (= ``qc + erf_int``; q = 0 makes the product 0 anyway)
    5. ``v = q s``;  6. ``w = v m``;  7. ``rshift_round(w, e)``;  8. clamp to out_bits
``ishift``
    1. ``q m_y``;  2. ``rshift_round(., e_y)``;  3. clamp to :data:`~golden.gelu.ISHIFT_Y_BITS`
    (= y);  4. ``-|y|``;  5. the shift exponential at scale 2^-fy with the run-time ``fy``
    (:func:`hwgen.shift_exp.shift_exp_stages`);  6. ``sig = ((y >= 0 ? 2^C : E) << 15) //
    (2^C + E)`` by restoring division, one quotient bit per stage, each a carry chain of 18
    bits (the remainder's bits below the trial bit are passed on untouched);  7. ``q sig``;
    8. ``. m``;  9. ``rshift_round(., e)``;  10. clamp
``lut``
    Per lane: the address ``q + 2^(in_bits-1)`` in a register; the table in banks of 16
    entries (LUT RAM, written from ``c``, read asynchronously by the address's low 4 bits),
    every bank's entry registered; the bank chosen by the high bits, registered.  (One RAM
    read through a 256-way mux in one cycle missed 150 MHz at 4 lanes.)

The datapath runs without an enable: an output queue with credits
(:func:`hwgen.pipeline.credited_output`) takes every result, and ``i`` is accepted only while
the queue has room for everything in flight, so back-pressure never stalls the pipeline and
no enable fans out to its registers (which have no reset either: a valid chain qualifies them).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.dyadic import MAX_SHIFT, MULT_BITS
from golden.errors import UserError
from golden.gelu import ERF_BITS, GELU_VARIANTS, IPTQ_DEGREE, ISHIFT_Y_BITS, LUT_MAX_IN_BITS, QB_EXTRA_BITS, SIG_BITS
from golden.softmax import EXP_FRAC_BITS, EXP_VARIANTS

from .config import check_choice, check_range
from .pipeline import (Stager, credited_output, lane_constants, lane_layout, multiply_stages, rshift_round_stages,
                       saturate_stages, valid_chain)
from .shift_exp import shift_exp_stages

__all__ = ["Gelu", "GELU_EXP_VARIANT", "E_BITS", "QC_BITS", "T_BITS", "FY_MAX", "QUEUE_LATENCY"]

# Widths of the run-time constants, from the golden model's limits.
E_BITS = MAX_SHIFT.bit_length()   # e, e_y: rounding shifts 0..63 (golden.dyadic.MAX_SHIFT = 62)
QC_BITS = ERF_BITS + 1            # qc <= 2^ERF_BITS (build_gelu rounds 2^13..2^14 to an integer)
T_BITS = ERF_BITS + 1             # t = rshift_round(P, sh) < 2^T_BITS (checked per layer)
FY_MAX = ISHIFT_Y_BITS - 2        # build_gelu's fy is 1..ISHIFT_Y_BITS - 2 (14): 4 bits
GELU_EXP_VARIANT = "linear"       # build_gelu's default exponential, the one golden.quantize uses
QUEUE_LATENCY = 2                 # cycles the output queue adds (written, then read out)
QUEUE_SLACK = 3                   # queue beats beyond the pipeline depth: one beat a cycle
TABLE_BANK_BITS = 4               # lut: LUT RAM banks of 16 entries (an ECP5 DPR16X4 is 16 x 4)
LEVELS_PER_STAGE = 2              # 3:2 compressor levels between registers in a multiplier (3 missed
                                  # 150 MHz at 4 lanes: the partial products add a LUT level)


def _srange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _power_plan(d: int) -> list[str]:
    """Multiplies that raise u to the d-th power: 'sq' (p*p) when d is a power of two,
    otherwise 'mul' (p*u) d-1 times."""
    if d & (d - 1) == 0:
        return ["sq"] * (d.bit_length() - 1)
    return ["mul"] * (d - 1)


def _signed_need(v: int) -> int:
    """Bits of the narrowest two's-complement width holding v."""
    return (v.bit_length() if v >= 0 else (-v - 1).bit_length()) + 1


class Gelu(wiring.Component):
    """Streaming integer GELU, ``lanes`` elements per beat, bit-exact to ``gelu_int``, with the
    layer's constants loaded at run time.

    Parameters (capabilities)
    -------------------------
    variant : str
        'ibert', 'iptq', 'ishift' or 'lut' (fixed in the RTL: one unit per variant in use).
    in_bits, out_bits : int
        Signed input and output widths (HwConfig ``gelu_in_bits``, ``gelu_out_bits``).  A
        layer with a narrower input runs on the unit (the host sign-extends its data), except
        'lut', whose table has exactly ``2^in_bits`` entries; ``out_bits`` must be the layer's.
    lanes : int
        Elements per beat (HwConfig ``lanes``).
    mult_bits : int
        Width of the unsigned multipliers ``m``, ``m_y`` (HwConfig ``mult_bits``; golden
        ``MULT_BITS`` = 16).
    degree : int
        ibert/iptq: the erf polynomial's degree d (default 2 for ibert, golden
        ``IPTQ_DEGREE`` = 4 for iptq); a layer of another degree is refused.
    qb_bits : int
        ibert/iptq: width of the clip point ``qb`` (default ``in_bits + 2``: qb <= 1023 at 8
        bits, i.e. an input scale down to ~2.5e-3 for ibert's b = -1.769; the digits ViT
        needs 65..214).
    exp_variant : str
        ishift: the shift exponential's 2^-t approximation (fixed in the RTL; default
        'linear', :func:`golden.gelu.build_gelu`'s default, which ``golden.quantize`` uses).

    Members
    -------
    c : In(stream.Signature(StructLayout))
        The layer's constants, named as in the golden op's attrs / consts (:meth:`const_beats`):

        ========  =========  ================================================================
        variant   field      width
        ========  =========  ================================================================
        ibert,    ``qb``     unsigned ``qb_bits`` (1 .. 2^qb_bits - 1)
        iptq      ``qc``     unsigned :data:`QC_BITS` = ERF_BITS + 1 (15)
                  ``sh``     unsigned ``(d qb_bits).bit_length()`` (a shift of P = u^d)
                  ``m``      unsigned ``mult_bits``
                  ``e``      unsigned :data:`E_BITS` (6)
        ishift    ``fy``     unsigned 4 (1 .. :data:`FY_MAX` = ISHIFT_Y_BITS - 2 = 14)
                  ``m_y``    unsigned ``mult_bits``;  ``e_y`` unsigned :data:`E_BITS`
                  ``m``      unsigned ``mult_bits``;  ``e``   unsigned :data:`E_BITS`
        lut       ``table``  signed ``out_bits``: ``2^in_bits`` beats, beat i = table[i]
        ========  =========  ================================================================

        One beat per layer ('lut': one per table entry).  Accepted only while the unit is
        idle (nothing in the pipeline or the output queue); while ``c.valid`` is high (and,
        for 'lut', until the table's last entry is in; otherwise for ``lanes - 1`` cycles
        after the beat) ``i`` is not accepted.  Constants
        persist until the next load; before the first load the output is unspecified.
    i : In(stream.Signature(ArrayLayout(signed(in_bits), lanes)))
        Input q at the layer's input scale; lane k in bits [k in_bits, (k+1) in_bits).
    o : Out(stream.Signature(ArrayLayout(signed(out_bits), lanes)))
        GELU at the output scale, saturated to out_bits.

    Latency and throughput
    ----------------------
    ``latency`` cycles from an input handshake to its output's valid: the pipeline's depth
    plus :data:`QUEUE_LATENCY` (8-bit, mult_bits 16: ibert 24, iptq 29, ishift 49, lut 5;
    measured by tests/test_hw_elementwise.py).  One beat (``lanes`` elements) per cycle while
    ``o.ready`` is high; under back-pressure the pipeline keeps running into its output
    queue (``depth + 3`` beats) and ``i.ready`` drops when the queue's credits are spent.
    Loading constants: one cycle per ``c`` beat (1, or ``2^in_bits`` for 'lut') once the unit
    is idle, i.e. ``latency`` cycles after the previous layer's last input if its outputs
    are taken; then, except for 'lut', ``lanes - 1`` cycles while the constants reach every
    lane's copy (:func:`hwgen.pipeline.lane_constants`) before data are accepted.

    The signature depends on the parameters, so it is passed to ``Component.__init__``
    instead of being written as class annotations.
    """

    def __init__(self, variant: str = "iptq", *, in_bits: int = 8, out_bits: int = 8, lanes: int = 1,
                 mult_bits: int = MULT_BITS, degree: int | None = None, qb_bits: int | None = None,
                 exp_variant: str = GELU_EXP_VARIANT):
        self.variant = check_choice("gelu_variant", variant, GELU_VARIANTS)
        self.in_bits = check_range("gelu_in_bits", in_bits, 2, LUT_MAX_IN_BITS if variant == "lut" else 16)
        self.out_bits = check_range("gelu_out_bits", out_bits, 2, 16)
        self.lanes = check_range("lanes", lanes, 1, 64)
        self.mult_bits = check_range("mult_bits", mult_bits, 2, 32)
        fields: dict = {}
        if variant in ("ibert", "iptq"):
            d = (2 if variant == "ibert" else IPTQ_DEGREE) if degree is None else degree
            self.degree = check_range("gelu degree", d, 2, 16)
            if d % 2:
                raise UserError(f"hwgen config: gelu degree = {d} is not accepted; accepted even values 2..16")
            self.qb_bits = check_range("gelu qb_bits", in_bits + QB_EXTRA_BITS if qb_bits is None else qb_bits, 2, 16)
            self.sh_bits = (self.degree * self.qb_bits).bit_length()
            fields = {"qb": unsigned(self.qb_bits), "qc": unsigned(QC_BITS), "sh": unsigned(self.sh_bits),
                      "m": unsigned(mult_bits), "e": unsigned(E_BITS)}
        elif variant == "ishift":
            self.exp_variant = check_choice("gelu exp_variant", exp_variant, EXP_VARIANTS)
            fields = {"fy": unsigned(FY_MAX.bit_length()), "m_y": unsigned(mult_bits), "e_y": unsigned(E_BITS),
                      "m": unsigned(mult_bits), "e": unsigned(E_BITS)}
        else:
            fields = {"table": signed(out_bits)}
        self.c_layout = data.StructLayout(fields)
        self.depth = 3 if variant == "lut" else self._pipeline_depth()
        self.latency = self.depth + QUEUE_LATENCY
        super().__init__({
            "c": In(stream.Signature(self.c_layout)),
            "i": In(stream.Signature(lane_layout(signed(in_bits), lanes))),
            "o": Out(stream.Signature(lane_layout(signed(out_bits), lanes))),
        })

    @classmethod
    def from_config(cls, hw, variant: str | None = None, exp_variant: str | None = None) -> "Gelu":
        """The unit for ``hw`` (HwConfig ``gelu_variant`` or ``variant``, ``gelu_in_bits``,
        ``gelu_out_bits``, ``lanes``, ``mult_bits``).  The ishift exponential is
        ``exp_variant`` or :data:`GELU_EXP_VARIANT` (the golden graph's; HwConfig's
        ``exp_variant`` is the Softmax's), and its output scale is golden's
        ``EXP_FRAC_BITS`` whatever ``hw.exp_frac_bits`` says (``gelu_int`` fixes it)."""
        return cls(variant or hw.gelu_variant, in_bits=hw.gelu_in_bits, out_bits=hw.gelu_out_bits, lanes=hw.lanes,
                   mult_bits=hw.mult_bits, exp_variant=exp_variant or GELU_EXP_VARIANT)

    # --- constants ------------------------------------------------------------------------

    def _refuse(self, field: str, value, need: int, have: int, why: str) -> None:
        raise UserError(f"gelu {field} = {value} does not fit the unit: needs {need} bits, the unit has {have} ({why})")

    def _unsigned(self, attrs: dict, field: str, bits: int, why: str, lo: int = 0) -> int:
        v = attrs.get(field)
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"gelu {field} = {v!r} does not fit the unit: an integer is needed")
        if v < lo:
            raise UserError(f"gelu {field} = {v} does not fit the unit: needs >= {lo}")
        if v >> bits:
            self._refuse(field, v, v.bit_length(), bits, why)
        return v

    def const_beats(self, attrs: dict, consts: dict | None = None) -> list[dict[str, int]]:
        """The ``c`` beats of a GELU layer (golden ``attrs`` / ``consts``), after checking that
        the layer fits the unit; a layer that does not is refused with one line naming the
        field, the need and the limit (:class:`golden.errors.UserError`)."""
        consts = consts or {}
        v = attrs.get("variant")
        if v != self.variant:
            raise UserError(f"gelu variant = {v!r} does not fit the unit: the unit is {self.variant!r}")
        ib, ob = attrs.get("in_bits"), attrs.get("out_bits")
        if ob != self.out_bits:
            raise UserError(f"gelu out_bits = {ob} does not fit the unit: the unit has gelu_out_bits {self.out_bits}")
        if not isinstance(ib, int) or ib < 2 or ib > self.in_bits or (v == "lut" and ib != self.in_bits):
            need = "exactly" if v == "lut" else "at most"
            raise UserError(f"gelu in_bits = {ib} does not fit the unit: needs {need} gelu_in_bits {self.in_bits}")
        mb = f"mult_bits {self.mult_bits}"
        if v in ("ibert", "iptq"):
            if attrs.get("degree") != self.degree:
                raise UserError(f"gelu degree = {attrs.get('degree')} does not fit the unit: the unit has degree "
                                f"{self.degree}")
            qb = self._unsigned(attrs, "qb", self.qb_bits, f"gelu qb_bits {self.qb_bits}", lo=1)
            qc = self._unsigned(attrs, "qc", QC_BITS, f"golden ERF_BITS {ERF_BITS} + 1")
            sh = self._unsigned(attrs, "sh", self.sh_bits, f"degree {self.degree} x qb_bits {self.qb_bits}")
            m = self._unsigned(attrs, "m", self.mult_bits, mb)
            e = self._unsigned(attrs, "e", E_BITS, f"golden MAX_SHIFT {MAX_SHIFT}")
            p = qb ** self.degree
            t = (p + (1 << (sh - 1))) >> sh if sh else p
            if t >> T_BITS:
                self._refuse(f"t = rshift_round(qb^{self.degree}, sh) (qb {qb}, sh {sh})", t, t.bit_length(), T_BITS,
                             f"golden ERF_BITS {ERF_BITS} + 1")
            return [{"qb": qb, "qc": qc, "sh": sh, "m": m, "e": e}]
        if v == "ishift":
            if attrs.get("exp_variant") != self.exp_variant:
                raise UserError(f"gelu exp_variant = {attrs.get('exp_variant')!r} does not fit the unit: the unit "
                                f"has {self.exp_variant!r}")
            fy = attrs.get("fy")
            if isinstance(fy, bool) or not isinstance(fy, int) or not 1 <= fy <= FY_MAX:
                raise UserError(f"gelu fy = {fy!r} does not fit the unit: accepted 1..{FY_MAX} "
                                f"(golden ISHIFT_Y_BITS {ISHIFT_Y_BITS} - 2)")
            out = {"fy": fy}
            for k in ("m_y", "m"):
                out[k] = self._unsigned(attrs, k, self.mult_bits, mb)
            for k in ("e_y", "e"):
                out[k] = self._unsigned(attrs, k, E_BITS, f"golden MAX_SHIFT {MAX_SHIFT}")
            return [out]
        table = consts.get("table")
        n = 1 << self.in_bits
        if table is None or len(table) != n:
            raise UserError(f"gelu table of {0 if table is None else len(table)} entries does not fit the unit: "
                            f"needs 2^gelu_in_bits = {n}")
        lo, hi = _srange(self.out_bits)
        beats = []
        for i, x in enumerate(table):
            x = int(x)
            if not lo <= x <= hi:
                self._refuse(f"table[{i}]", x, _signed_need(x), self.out_bits, f"gelu_out_bits {self.out_bits}")
            beats.append({"table": x})
        return beats

    # --- one lane --------------------------------------------------------------------------

    def _requant_out(self, st: Stager, v: Value, m: Value, e: Value) -> Value:
        """``clamp(rshift_round(v m, e))`` to out_bits: the product, the shift, the clamp."""
        w, _ = multiply_stages(st, v, m, name="w", levels_per_stage=LEVELS_PER_STAGE)
        r, _ = rshift_round_stages(st, w, e, name="r")
        o, _ = saturate_stages(st, r, self.out_bits, name="o")
        return o

    def _poly(self, st: Stager, k, q: Value) -> Value:
        qb = k.qb
        dd = Mux(q < 0, qb + q, qb - q)                              # qb - |q|
        s = st.stage(q=q, u=Mux(dd < 0, 0, dd)[:self.qb_bits])
        u, q = s.u, s.q
        p = u
        for kind in _power_plan(self.degree):
            p, ns = multiply_stages(st, p, p if kind == "sq" else u, carry={"q": q, "u": u}, name="p",
                                    levels_per_stage=LEVELS_PER_STAGE)
            q, u = ns.q, ns.u
        t, ns = rshift_round_stages(st, p, k.sh, carry={"q": q}, name="t", width=T_BITS)
        q = ns.q
        s = st.stage(q=q, s=Mux(q > 0, (k.qc << 1) - t, t))
        v, _ = multiply_stages(st, s.s, s.q, name="v", levels_per_stage=LEVELS_PER_STAGE)
        return self._requant_out(st, v, k.m, k.e)

    def _ishift(self, st: Stager, k, q: Value) -> Value:
        one = 1 << EXP_FRAC_BITS
        y, ns = multiply_stages(st, k.m_y, q, carry={"q": q}, name="y0", levels_per_stage=LEVELS_PER_STAGE)
        y, ns = rshift_round_stages(st, y, k.e_y, carry={"q": ns.q}, name="y1")
        y, ns = saturate_stages(st, y, ISHIFT_Y_BITS, carry={"q": ns.q}, name="y")
        s = st.stage(q=ns.q, pos=~y[-1], x=Mux(y[-1], y, -y))        # -|y| in [-2^15, 0]
        big, s = shift_exp_stages(st, s.x, k.fy, self.exp_variant, EXP_FRAC_BITS, carry={"q": s.q, "pos": s.pos},
                                  max_f=FY_MAX)
        num = Mux(s.pos, Const(one, unsigned(EXP_FRAC_BITS + 1)), big)   # <= 2^C = den's minimum
        den = big + one                                                   # in [2^C, 2^(C+1)]
        sig, s = self._divide(st, num, den, carry={"q": s.q})
        v, _ = multiply_stages(st, sig, s.q, name="v", levels_per_stage=LEVELS_PER_STAGE)
        return self._requant_out(st, v, k.m, k.e)

    def _divide(self, st: Stager, num: Value, den: Value, carry: dict):
        """``sig = (num << SIG_BITS) // den`` for ``num <= den``: restoring division, one quotient
        bit a stage (SIG_BITS + 1 stages, the quotient is at most 2^SIG_BITS).  For quotient bit
        j the remainder is below ``den 2^(j+1)``, and ``den 2^j`` has j zero bits: only the
        remainder's bits from j up (``len(den) + 1`` of them) take part in the subtraction."""
        nb = len(den)
        rem = Cat(Const(0, SIG_BITS), num, Const(0, nb + 1 - len(num)))   # num 2^SIG_BITS < den 2^(SIG_BITS+1)
        quo = []
        ns = None
        for j in range(SIG_BITS, -1, -1):
            hi = rem[j:j + nb + 1]                                   # < 2 den: nb + 1 bits
            diff = hi - den                                          # signed nb + 2 bits
            take = ~diff[-1]
            new_hi = Mux(take, diff[:nb], hi[:nb])                   # < den: nb bits
            rem = Cat(rem[:j], new_hi)
            quo = [take] + quo
            ns = st.stage(rem=rem, quo=Cat(*quo), den=den, **carry)
            rem, den = ns.rem, ns.den
            quo = [ns.quo[i] for i in range(len(quo))]
            carry = {name: getattr(ns, name) for name in carry}
        return ns.quo, ns

    def _lane(self, m: Module, st: Stager, k, q: Value) -> Value:
        if self.variant in ("ibert", "iptq"):
            return self._poly(st, k, q)
        return self._ishift(st, k, q)

    def _pipeline_depth(self) -> int:
        m = Module()
        st = Stager(m, Const(1))
        k = Signal(self.c_layout)
        self._lane(m, st, k, Signal(signed(self.in_bits)))
        m._MustUse__silence = True
        return st.depth

    def elaborate(self, platform):
        m = Module()
        c, i, o = self.c, self.i, self.o
        c_fire = c.valid & c.ready
        go = Signal()                      # an input beat may be accepted
        fire = i.valid & go
        outs = []
        if self.variant == "lut":
            n = 1 << self.in_bits
            waddr = Signal(self.in_bits)   # the next table entry; 0 once the table is whole
            with m.If(c_fire):
                m.d.sync += waddr.eq(waddr + 1)
            bank_bits = min(TABLE_BANK_BITS, self.in_bits)
            banks = 1 << (self.in_bits - bank_bits)
            for k in range(self.lanes):
                st = Stager(m, Const(1), prefix=f"l{k}_")
                addr = st.stage(addr=i.payload[k].as_unsigned() ^ (1 << (self.in_bits - 1))).addr
                reads = {}
                for j in range(banks):
                    mem = Memory(shape=signed(self.out_bits), depth=1 << bank_bits, init=[],
                                 attrs={"ram_style": "distributed"})
                    m.submodules[f"l{k}_table{j}"] = mem
                    wp, rp = mem.write_port(), mem.read_port(domain="comb")
                    bank = waddr[bank_bits:]
                    hit = c_fire if banks == 1 else c_fire & (~bank.any() if j == 0 else bank == j)
                    m.d.comb += [wp.addr.eq(waddr[:bank_bits]), wp.data.eq(c.payload.table), wp.en.eq(hit),
                                 rp.addr.eq(addr[:bank_bits])]
                    reads[f"bank{j}"] = rp.data
                s2 = st.stage(**reads, **({"hi": addr[bank_bits:]} if banks > 1 else {}))
                entries = [getattr(s2, f"bank{j}") for j in range(banks)]
                outs.append(st.stage(o=Array(entries)[s2.hi] if banks > 1 else entries[0]).o)
                assert st.depth == self.depth
            data_ok = ~waddr.any()                                    # the table is whole
        else:
            copies, data_ok = lane_constants(m, c.payload, c_fire, self.c_layout, self.lanes)
            for k in range(self.lanes):
                st = Stager(m, Const(1), prefix=f"l{k}_")
                outs.append(self._lane(m, st, copies[k], i.payload[k]))
                assert st.depth == self.depth, (st.depth, self.depth)
        valid = valid_chain(m, self.depth, fire)
        room, idle = credited_output(m, o, Cat(*outs), valid, fire, self.depth + QUEUE_SLACK)
        m.d.comb += [go.eq(room & ~c.valid & data_ok), i.ready.eq(go), c.ready.eq(idle)]
        return m
