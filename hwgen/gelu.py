"""Integer GELU unit: the hardware of :func:`golden.gelu.gelu_int`, all four variants.

The generator takes the ``attrs`` and ``consts`` dicts that :func:`golden.gelu.build_gelu`
returns for a layer; every constant of the hardware comes from them.

``ibert`` / ``iptq`` (degree d, even)
    1. ``a = min(|q|, Qb) - Qb`` (<= 0)
    2. ``P = a^d`` by repeated squaring (d a power of two) or a multiply chain, one multiply
       per stage (d = 2: 1 stage, d = 4: 2 stages)
    3. ``t = rshift_round(P, sh)``; ``s = q > 0 ? 2 Qc - t : t`` (= Qc + erf_int; q = 0
       makes the product 0 either way)
    4. ``v = q s``;  5. ``v m``;  6. ``clamp(rshift_round(v m, e))``
``ishift``
    1. ``q m_y``;  2. ``y = clamp16(rshift_round(q m_y, e_y))``;  3-6. the four stages of
    the shift exponential (:func:`hwgen.shift_exp.shift_exp_stages`) on ``-|y|`` at scale
    2^-fy;  7-22. ``sig = ((y >= 0 ? 2^C : E) << 15) // (2^C + E)`` by restoring division,
    one quotient bit per stage (16 bits: sig <= 2^15);  23. ``q sig``;  24. ``q sig m``;
    25. ``clamp(rshift_round(., e))``
``lut``
    A synchronous ROM of the ``2^in_bits`` table entries, addressed by ``q + 2^(in_bits-1)``.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, Value, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserError
from golden.gelu import GELU_VARIANTS, ISHIFT_Y_BITS, LUT_MAX_IN_BITS, SIG_BITS
from golden.softmax import EXP_FRAC_BITS, EXP_VARIANTS

from .config import check_choice, check_range
from .pipeline import Stager, clamp, divide_stages, lane_layout, rshift_round_const, stream_pipeline
from .shift_exp import shift_exp_stages

__all__ = ["Gelu", "gelu_latency"]


def _srange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _power_stages(d: int) -> list[str]:
    """Multiplies that raise a to the d-th power: 'sq' (p*p) when d is a power of two,
    otherwise 'mul' (p*a) d-1 times."""
    if d & (d - 1) == 0:
        return ["sq"] * (d.bit_length() - 1)
    return ["mul"] * (d - 1)


def gelu_latency(attrs: dict) -> int:
    """Pipeline depth (cycles) of a GELU unit built from ``attrs``."""
    v = attrs["variant"]
    if v in ("ibert", "iptq"):
        return 1 + len(_power_stages(attrs["degree"])) + 4
    if v == "ishift":
        return 2 + 4 + (SIG_BITS + 1) + 3
    return 1


def _check_attrs(attrs: dict, consts: dict) -> None:
    v = check_choice("gelu variant", attrs.get("variant"), GELU_VARIANTS)
    check_range("gelu in_bits", attrs.get("in_bits"), 2, 16)
    check_range("gelu out_bits", attrs.get("out_bits"), 2, 32)
    if v in ("ibert", "iptq"):
        d = check_range("gelu degree", attrs.get("degree"), 2, 16)
        if d % 2:
            raise UserError(f"hwgen config: gelu degree = {d} is not accepted; accepted even values 2..16")
        check_range("gelu qb", attrs.get("qb"), 1, 1 << 16)
        check_range("gelu qc", attrs.get("qc"), 0, 1 << 32)
        check_range("gelu sh", attrs.get("sh"), 0, 62)
        check_range("gelu m", attrs.get("m"), 0, (1 << 32) - 1)
        check_range("gelu e", attrs.get("e"), 0, 62)
    elif v == "ishift":
        check_range("gelu fy", attrs.get("fy"), 1, ISHIFT_Y_BITS)
        for k in ("m_y", "m"):
            check_range(f"gelu {k}", attrs.get(k), 0, (1 << 32) - 1)
        for k in ("e_y", "e"):
            check_range(f"gelu {k}", attrs.get(k), 0, 62)
        check_choice("gelu exp_variant", attrs.get("exp_variant"), EXP_VARIANTS)
    else:
        check_range("gelu in_bits", attrs["in_bits"], 2, LUT_MAX_IN_BITS)
        table = consts.get("table")
        if table is None or len(table) != 1 << attrs["in_bits"]:
            raise UserError(f"hwgen config: gelu lut table must have 2^in_bits = {1 << attrs['in_bits']} entries")
        lo, hi = _srange(attrs["out_bits"])
        if int(min(table)) < lo or int(max(table)) > hi:
            raise UserError(f"hwgen config: gelu lut table entries out of range; accepted {lo}..{hi}")


class Gelu(wiring.Component):
    """Streaming integer GELU, ``lanes`` elements per beat, bit-exact to ``gelu_int``.

    Parameters
    ----------
    attrs, consts : dict
        What :func:`golden.gelu.build_gelu` returns under "attrs" and "consts" (the variant,
        ``in_bits``, ``out_bits`` and the integer constants; the 'lut' table in consts).
    lanes : int
        Elements per beat (1..64).

    Members
    -------
    i : In(stream.Signature(ArrayLayout(signed(in_bits), lanes)))
        Input q at the layer's input scale; lane k in bits [k in_bits, (k+1) in_bits).
    o : Out(stream.Signature(ArrayLayout(signed(out_bits), lanes)))
        GELU at the output scale, saturated to out_bits.

    Latency and throughput
    ----------------------
    Latency (cycles from the input handshake to the output valid): ibert 6, iptq (d = 4) 7,
    ishift 25, lut 1 (:func:`gelu_latency`).  Throughput one beat (``lanes`` elements) per
    cycle for every variant while ``o.ready`` is high; the pipeline stalls as a whole when
    it is low (``i.ready = ~o.valid | o.ready``).

    The signature depends on the parameters, so it is passed to ``Component.__init__``
    instead of being written as class annotations.
    """

    def __init__(self, attrs: dict, consts: dict | None = None, lanes: int = 1):
        consts = dict(consts or {})
        if "table" in consts:
            consts["table"] = [int(v) for v in consts["table"]]
        _check_attrs(attrs, consts)
        self.attrs = dict(attrs)
        self.consts = consts
        self.variant = attrs["variant"]
        self.in_bits = attrs["in_bits"]
        self.out_bits = attrs["out_bits"]
        self.lanes = check_range("lanes", lanes, 1, 64)
        self.latency = gelu_latency(attrs)
        super().__init__({
            "i": In(stream.Signature(lane_layout(signed(self.in_bits), lanes))),
            "o": Out(stream.Signature(lane_layout(signed(self.out_bits), lanes))),
        })

    # --- one lane ----------------------------------------------------------------------------

    def _poly(self, st: Stager, q: Value) -> Value:
        a = self.attrs
        qb, qc = a["qb"], a["qc"]
        aq = abs(q)
        s = st.stage(q=q, a=Mux(aq > qb, qb, aq) - qb)
        base, p, q = s.a, s.a, s.q
        for kind in _power_stages(a["degree"]):
            s = st.stage(q=q, a=base, p=p * p if kind == "sq" else p * base)
            base, p, q = s.a, s.p, s.q
        t = rshift_round_const(p, a["sh"])
        s = st.stage(q=q, s=Mux(q > 0, 2 * qc - t, t))
        s = st.stage(v=s.q * s.s)
        s = st.stage(v=s.v * a["m"])
        s = st.stage(o=clamp(rshift_round_const(s.v, a["e"]), *_srange(self.out_bits)))
        return s.o

    def _ishift(self, st: Stager, q: Value) -> Value:
        a = self.attrs
        one = 1 << EXP_FRAC_BITS
        s = st.stage(q=q, v=q * a["m_y"])
        s = st.stage(q=s.q, y=clamp(rshift_round_const(s.v, a["e_y"]), *_srange(ISHIFT_Y_BITS)))
        y = s.y
        neg_abs = Mux(y < 0, y, -y)                     # -|y| in [-2^15, 0]
        big, s = shift_exp_stages(st, neg_abs, a["fy"], a["exp_variant"], EXP_FRAC_BITS,
                                  carry={"q": s.q, "pos": y >= 0})
        num = Mux(s.pos, Const(one), big) << SIG_BITS  # <= 2^30 < den 2^16
        den = big + one                                 # in [2^C, 2^(C+1)]
        sig, s = divide_stages(st, num, den, SIG_BITS + 1, carry={"q": s.q}, name="sig")
        s = st.stage(v=s.q * sig)
        s = st.stage(v=s.v * a["m"])
        s = st.stage(o=clamp(rshift_round_const(s.v, a["e"]), *_srange(self.out_bits)))
        return s.o

    def _lut(self, st: Stager, q: Value) -> Value:
        addr = q.as_unsigned() ^ (1 << (self.in_bits - 1))   # q + 2^(in_bits-1)
        return st.rom_stage("table", self.consts["table"], signed(self.out_bits), addr)

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        build = {"ibert": self._poly, "iptq": self._poly, "ishift": self._ishift, "lut": self._lut}[self.variant]
        for k in range(self.lanes):
            st = Stager(m, en, prefix=f"l{k}_")
            m.d.comb += self.o.payload[k].eq(build(st, self.i.payload[k]))
            if st.depth != self.latency:
                raise AssertionError(f"gelu {self.variant}: {st.depth} stages, documented {self.latency}")
        m.d.comb += self.i.ready.eq(en)
        m.d.comb += self.o.valid.eq(stream_pipeline(m, self.latency, self.i.valid, self.o.ready, en))
        return m
