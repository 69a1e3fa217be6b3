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

from amaranth.hdl import Cat, Const, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory

__all__ = ["Stager", "stream_pipeline", "rshift_round_const", "rshift_round_var", "clamp", "partial_products", "compress", "compress_levels", "sum_pair", "product_shape", "fit",
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


def partial_products(a: Value, b: Value) -> list[Value]:
    """The partial products of ``a * b`` (``b`` signed or not): signed or unsigned values
    whose sum, each sign- or zero-extended to any width that holds the product, is ``a * b``
    modulo that width (as :func:`compress` takes them).

    ``b_k a 2^k`` for each bit k of ``b``; for a signed ``b`` the top one is subtracted as
    its complement plus a constant 1, so that no negation (a carry chain) precedes the
    adder tree.  Written without ``*`` so that synthesis builds the product from LUTs:
    yosys maps every ``*`` to a DSP block, and on ECP5 it never packs registers into
    MULT18X18D, whose combinational delay plus the routing to and from the DSP column
    limits the clock (``hwgen report``).
    """
    a, b = Value.cast(a), Value.cast(b)
    n = len(b)
    terms = [Mux(b[k], a, 0) << k for k in range(n)]
    if b.shape().signed:
        top = terms[-1]
        # the complement of the extended term: extend as a signed value, then invert
        terms[-1] = ~(top if top.shape().signed else Cat(top, Const(0, 1)).as_signed())
        terms.append(Const(1, 1))
    return terms


def compress(m, terms: list[Value], width: int, levels: int | None = None, name: str = "csa") -> list[Value]:
    """Carry-save 3:2 compression of ``width``-bit terms (sums modulo ``2^width``), level by
    level until two terms are left (or after ``levels`` levels): each level is one LUT deep,
    no carry chain, so a whole adder tree fits in a clock period and only the final
    two-term sum needs a carry chain.  Every level's terms are named wires of ``m``
    (``<name>_l<level>_<i>``): each term feeds two gates of the next level, and Amaranth
    would otherwise write the expression tree out in full at every use."""
    def wires(vals, level):
        out = []
        for i, v in enumerate(vals):
            s = Signal(width, name=f"{name}_l{level}_{i}")
            m.d.comb += s.eq(v)
            out.append(s)
        return out

    terms = wires(terms, 0)          # sign- or zero-extended by the assignment
    done = 0
    while len(terms) > 2 and (levels is None or done < levels):
        nxt = []
        for g in range(0, len(terms) - 2, 3):
            x, y, z = terms[g:g + 3]
            nxt.append(x ^ y ^ z)
            nxt.append(Cat(Const(0, 1), ((x & y) | (x & z) | (y & z))[:width - 1]))
        nxt.extend(terms[len(terms) - len(terms) % 3:])
        done += 1
        terms = wires(nxt, done)
    return terms


def compress_levels(n: int) -> int:
    """The 3:2 levels :func:`compress` takes to bring n terms down to two."""
    levels = 0
    while n > 2:
        n = 2 * (n // 3) + n % 3
        levels += 1
    return levels


def sum_pair(terms: list[Value]) -> Value:
    """The carry-propagate sum of what :func:`compress` left (one or two terms)."""
    return terms[0] + terms[1] if len(terms) > 1 else terms[0]


def product_shape(a: Value, b: Value) -> Shape:
    return (Value.cast(a) * Value.cast(b)).shape()


def fit(v: Value, shape: Shape) -> Value:
    """``v`` cut to ``shape``: exact when the value fits (a sum of partial products does)."""
    v = Value.cast(v)[:shape.width]
    return v.as_signed() if shape.signed else v


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
