"""Shift-based exponential: the hardware of :func:`golden.softmax.shift_exp`.

For an integer ``x <= 0`` at scale 2^-f it computes e^(x 2^-f) at scale 2^-C bit for bit as
the golden function does (DESIGN.md, "Shift-based exponential"):

=====  ======================================================================
stage  operation
=====  ======================================================================
1      ``n = -(x + (x >> 1) - (x >> 4))``; ``q = min(n >> f, C + 2)``; ``r = n mod 2^f``
2      ``h = rshift_round(K2 r, f) + K1``
3      ``g = rshift_round(h r, f) + K0``
4      ``exp = rshift_round(g, q)`` (a barrel shifter: ``((2g >> q) + 1) >> 1``)
=====  ======================================================================

(K2, K1, K0) = :func:`golden.softmax.exp_coefficients` of the variant; for ``linear`` K2 is 0
and stage 2 is only a register.  The multipliers are constant multipliers.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from golden.softmax import EXP_FRAC_BITS, EXP_VARIANTS, exp_coefficients

from .config import check_choice, check_range
from .pipeline import Stager, lane_layout, rshift_round_const, rshift_round_var, stream_pipeline

__all__ = ["ShiftExp", "shift_exp_stages", "SHIFT_EXP_LATENCY"]

SHIFT_EXP_LATENCY = 4


def shift_exp_stages(st: Stager, x: Value, f: int, variant: str, frac_bits: int = EXP_FRAC_BITS,
                     carry: dict | None = None) -> tuple[Value, SimpleNamespace]:
    """Add the four exponential stages to ``st`` for a signed ``x`` (<= 0).

    Returns the registered unsigned ``frac_bits + 1``-bit result and the namespace of the
    last stage (``carry`` values ride along under their names, which must not start with ``exp``).  GELU 'ishift' reuses this.
    """
    carry = dict(carry or {})
    k2, k1, k0 = exp_coefficients(variant, frac_bits)
    x = Value.cast(x).as_signed()
    p = x + (x >> 1) - (x >> 4)
    n = (-p).as_unsigned()[:len(x) + 1]                # 0 <= n < 1.4375 * 2^(in_bits-1) + 1
    qmax = frac_bits + 2
    q_raw = n >> f
    q_sat = Mux(q_raw > qmax, qmax, q_raw)[:qmax.bit_length()]
    r = n[:f]                                           # n mod 2^f (all of n when f >= its width)
    s1 = st.stage(exp_q=q_sat, exp_r=r, **carry)
    carry = {k: getattr(s1, k) for k in carry}
    h = rshift_round_const(k2 * s1.exp_r, f) + k1 if k2 else Const(k1, signed(k1.bit_length() + 1))
    s2 = st.stage(exp_q=s1.exp_q, exp_r=s1.exp_r, exp_h=h, **carry)
    carry = {k: getattr(s2, k) for k in carry}
    g = rshift_round_const(s2.exp_h * s2.exp_r, f) + k0
    s3 = st.stage(exp_q=s2.exp_q, exp_g=g, **carry)
    carry = {k: getattr(s3, k) for k in carry}
    e = rshift_round_var(s3.exp_g, s3.exp_q)
    s4 = st.stage(exp=e[:frac_bits + 1], **carry)      # 0 <= exp <= 2^C (x = 0 gives K0 = 2^C)
    return s4.exp, s4


class ShiftExp(wiring.Component):
    """Streaming shift-based exponential, ``lanes`` elements per beat.

    Parameters
    ----------
    f : int
        Input scale 2^-f (f >= 1, like :func:`golden.softmax.shift_exp`).
    variant : str
        2^-t approximation: 'linear', 'ibert' or 'shiftfit'.
    in_bits : int
        Signed input width (default 17: every x in [-65536, 0], i.e. all 16-bit magnitudes
        and -2^16).  Inputs must be <= 0; the output for x > 0 is unspecified (the golden
        function refuses such x too).
    frac_bits : int
        C: the output is at scale 2^-C (default golden EXP_FRAC_BITS = 15).
    lanes : int
        Elements per beat.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(signed(in_bits), lanes)))
        Inputs; lane k in bits [k in_bits, (k+1) in_bits) of ``i__payload``.
    o : Out(stream.Signature(ArrayLayout(unsigned(frac_bits + 1), lanes)))
        e^(x 2^-f) at scale 2^-C, in [0, 2^C].

    Latency and throughput
    ----------------------
    Latency 4 cycles (input accepted at edge t, result valid after edge t + 4); throughput
    one beat (``lanes`` elements) per cycle while ``o.ready`` is high.  The pipeline stalls
    as a whole when ``o.ready`` is low; ``i.ready = ~o.valid | o.ready``.

    The signature depends on the parameters, so it is passed to ``Component.__init__``
    instead of being written as class annotations.
    """

    def __init__(self, f: int, variant: str = "shiftfit", *, in_bits: int = 17,
                 frac_bits: int = EXP_FRAC_BITS, lanes: int = 1):
        self.f = check_range("shift_exp f", f, 1, 30)
        self.variant = check_choice("exp_variant", variant, EXP_VARIANTS)
        self.in_bits = check_range("exp_in_bits", in_bits, 2, 24)
        self.frac_bits = check_range("exp_frac_bits", frac_bits, 4, 24)
        self.lanes = check_range("lanes", lanes, 1, 64)
        self.latency = SHIFT_EXP_LATENCY
        super().__init__({
            "i": In(stream.Signature(lane_layout(signed(in_bits), lanes))),
            "o": Out(stream.Signature(lane_layout(unsigned(frac_bits + 1), lanes))),
        })

    @classmethod
    def from_config(cls, cfg, f: int, variant: str | None = None) -> "ShiftExp":
        return cls(f, variant or cfg.exp_variant, in_bits=cfg.exp_in_bits,
                   frac_bits=cfg.exp_frac_bits, lanes=cfg.lanes)

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        depth = None
        for k in range(self.lanes):
            st = Stager(m, en, prefix=f"l{k}_")
            exp, _ = shift_exp_stages(st, self.i.payload[k], self.f, self.variant, self.frac_bits)
            m.d.comb += self.o.payload[k].eq(exp)
            depth = st.depth
        assert depth == self.latency
        m.d.comb += self.i.ready.eq(en)
        m.d.comb += self.o.valid.eq(stream_pipeline(m, depth, self.i.valid, self.o.ready, en))
        return m

