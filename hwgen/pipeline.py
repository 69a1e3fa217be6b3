"""Building blocks shared by the streaming element-wise units.

* :class:`Stager`: writes a fixed-depth datapath stage by stage; every stage register is
  enabled by one pipeline enable, so the whole pipeline stalls together.
* :func:`stream_pipeline`: the handshake of such a pipeline (a valid bit per stage,
  ``en = ~valid_last | o.ready``, ``i.ready = en``): one beat per cycle while the output is
  taken, no beat lost or duplicated under back-pressure; the latency is the stage count.
* :func:`rshift_round_const`, :func:`rshift_round_var`, :func:`clamp`: the integer contract
  (DESIGN.md) on Amaranth values; widths follow Amaranth's exact shape rules, so nothing
  wraps before the explicit clamp.
* :func:`divide_stages`: restoring division, one quotient bit per stage.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Const, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory

__all__ = ["Stager", "stream_pipeline", "rshift_round_const", "rshift_round_var", "clamp",
           "divide_stages", "lane_layout"]


def lane_layout(shape: Shape, lanes: int) -> data.ArrayLayout:
    """Payload layout of a multi-lane stream: lane k sits at bits [k w, (k+1) w)."""
    return data.ArrayLayout(shape, lanes)


def rshift_round_const(v: Value, e: int) -> Value:
    """``(v + 2^(e-1)) >> e`` (arithmetic) for e >= 1, ``v`` for e = 0."""
    if e < 0:
        raise ValueError(f"rshift_round: shift {e} < 0")
    if e == 0:
        return v
    v = Value.cast(v)
    return (v + (1 << (e - 1))) >> e


def rshift_round_var(v: Value, e: Value) -> Value:
    """Rounding right shift by a run-time amount ``e`` (unsigned value).

    ``((2v >> e) + 1) >> 1`` equals ``(v + 2^(e-1)) >> e`` for e >= 1 (nested floors) and
    ``v`` for e = 0, so one barrel shifter and one incrementer serve every e.
    """
    v = Value.cast(v)
    return (((v << 1) >> e) + 1) >> 1


def clamp(v: Value, lo: int, hi: int) -> Value:
    """Saturate ``v`` to [lo, hi]; the result has the narrowest shape holding both bounds."""
    v = Value.cast(v)
    shape = signed(max(lo.bit_length(), hi.bit_length()) + 1) if lo < 0 else unsigned(max(hi.bit_length(), 1))
    if len(v) <= shape.width:
        inner = v                       # already narrow: Mux widens it exactly
    else:                               # in range after the checks, so truncation is exact
        inner = v[:shape.width].as_signed() if shape.signed else v[:shape.width]
    return Mux(v < lo, Const(lo, shape), Mux(v > hi, Const(hi, shape), inner))


class Stager:
    """Registers a datapath stage by stage under one enable ``en``.

    ``stage(name=expr, ...)`` registers each expression into a new signal (no reset: data
    registers are qualified by the valid chain) and returns them as attributes.  ``depth``
    counts the stages, i.e. the latency in cycles.
    """

    def __init__(self, m, en: Value, prefix: str = ""):
        self.m = m
        self.en = en
        self.prefix = prefix
        self.depth = 0

    def stage(self, **exprs) -> SimpleNamespace:
        self.depth += 1
        out = {}
        for name, e in exprs.items():
            v = Value.cast(e)
            s = Signal(v.shape(), name=f"{self.prefix}s{self.depth}_{name}", reset_less=True)
            with self.m.If(self.en):
                self.m.d.sync += s.eq(v)
            out[name] = s
        return SimpleNamespace(**out)

    def rom_stage(self, name: str, table: list[int], shape: Shape, addr: Value) -> Value:
        """A synchronous-read ROM as one stage: the entry at ``addr``, one cycle later."""
        self.depth += 1
        mem = Memory(shape=shape, depth=len(table), init=table)
        self.m.submodules[f"{self.prefix}{name}"] = mem
        port = mem.read_port(domain="sync")
        self.m.d.comb += [port.addr.eq(addr), port.en.eq(self.en)]
        return port.data


def stream_pipeline(m, depth: int, in_valid: Value, out_ready: Value, en: Signal) -> Value:
    """Drive ``en`` and return the output valid of a ``depth``-stage stall-together pipeline.

    The caller ties its input ready(s) to ``en`` (qualified by the other inputs' valid for a
    join).  ``en`` depends on ``out_ready`` combinationally (allowed by the stream rules:
    ready may depend on ready and valid, valid never depends on ready).
    """
    valids = [Signal(name=f"valid_s{k + 1}") for k in range(depth)]
    m.d.comb += en.eq(~valids[-1] | out_ready)
    with m.If(en):
        m.d.sync += valids[0].eq(in_valid)
        for k in range(1, depth):
            m.d.sync += valids[k].eq(valids[k - 1])
    return valids[-1]


def divide_stages(st: Stager, num: Value, den: Value, q_bits: int, carry: dict | None = None,
                  name: str = "div") -> tuple[Value, SimpleNamespace]:
    """``floor(num / den)`` for unsigned num, den > 0, with ``num < den * 2^q_bits``.

    Restoring division, one quotient bit per stage (``q_bits`` stages): stage i tries
    ``rem >= den << (q_bits-1-i)``.  ``carry`` values ride along; the last stage's
    namespace (quotient in ``q``, carried values by name) is returned.
    """
    carry = dict(carry or {})
    num = Value.cast(num)
    den = Value.cast(den)
    rem_w = max(len(num), len(den) + q_bits)
    rem = num.as_unsigned()
    q = Const(0, unsigned(q_bits))
    ns = None
    for i in range(q_bits):
        bit = q_bits - 1 - i
        trial = den.as_unsigned() << bit
        take = rem >= trial
        new_rem = Mux(take, rem - trial, rem)[:rem_w]
        new_q = (q | (take << bit))[:q_bits]
        ns = st.stage(**{f"{name}_rem": new_rem, f"{name}_q": new_q, f"{name}_den": den}, **carry)
        rem, q, den = getattr(ns, f"{name}_rem"), getattr(ns, f"{name}_q"), getattr(ns, f"{name}_den")
        carry = {k: getattr(ns, k) for k in carry}
    return q, ns
