"""Which registers miss the clock after place and route, and where they are: every register input
of the accelerator that nextpnr-ecp5 times later than a clock period, counted at 150, 140, 130
and 120 MHz and grouped by the module that holds it and by the net into it (the nets that reach
the most late inputs: the wide-fanout controls a cut should aim at).  Writes
reports/accel_endpoints.{json,md}.

    python scripts/failing_endpoints.py                        # rtl/accelerator.v, the accelerator's seeds
    python scripts/failing_endpoints.py --seeds 2              # one seed (about 22 min: 3 of synthesis, 19 of place and route)
    python scripts/failing_endpoints.py --pnr-report build/endpoints/pnr*.json   # reports already written

The netlist is the one `hwgen report` places (the same ECP5 flow, Fmax wrapper and nextpnr
arguments); nextpnr's `--detailed-timing-report` gives, for every net, each register input it
reaches with its latest arrival, so an input misses a clock of period T when that arrival is
above T (the setup time of an ECP5 flip-flop's data input is 0 in nextpnr's model).  The worst
arrival is the critical path of `hwgen report` (1000 / Fmax).  One seed's worst path moves by
placement noise (4% between seeds); the number of late inputs says how far a clock is.

Without ``--pnr-report`` the run is ``hwgen report``'s own synthesis and place and route of the
accelerator (``hwgen.report.synthesize``, the report flag on): it fills ``hwgen report``'s
cache, so ``hwgen report`` after it on the same RTL places nothing again (the three seeds:
about 48 min on 2 cores, for both).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from golden.atomic import write_json, write_text  # noqa: E402
from golden.errors import UserError  # noqa: E402

TARGETS_MHZ = (150, 140, 130, 120)
NETS_SHOWN = 10            # nets a target's by-net list keeps, per seed
KEEP = Path(__file__).resolve().parent.parent / "build" / "endpoints"
ASYNC = "<async>"          # nextpnr's event of a path from or to a pin
PIN_KINDS = {"DI": "data", "M": "data", "CE": "enable", "LSR": "reset"}    # anything else: a RAM or DSP input


def arrivals(pnr: dict) -> dict[tuple[str, str], float]:
    """(cell, port) -> latest arrival (ns) of every register input in a nextpnr report written
    with ``--detailed-timing-report``, clock to clock (paths from or to the wrapper's pins are
    left out: they are not the design's)."""
    nets = pnr.get("detailed_net_timings")
    if nets is None:
        raise UserError("the nextpnr report has no detailed_net_timings; write it with nextpnr's "
                        "--detailed-timing-report (this script does, without --pnr-report)")
    out: dict[tuple[str, str], float] = {}
    for net in nets:
        if net.get("event") == ASYNC:
            continue
        for e in net["endpoints"]:
            if e.get("event") == ASYNC:       # the wrapper's pins (sin, sout), not a clocked path
                continue
            key = (e["cell"], e["port"])
            out[key] = max(out.get(key, 0.0), float(e["delay"][1]))
    return out


def late_nets(pnr: dict, targets=TARGETS_MHZ, top: int = NETS_SHOWN) -> dict[str, list[dict]]:
    """Per target clock, the nets whose register inputs are latest: for each net, its register
    inputs (clock to clock), how many of them arrive later than the period and the latest
    arrival; the ``top`` nets with the most late inputs, most first (one pass over the nets for
    every target).  A net that reaches many late inputs is a control signal with a wide fanout
    (an enable of a wide register, a state transition): one cut there moves them all, where the
    by-module count cannot say which."""
    nets = []
    for net in pnr.get("detailed_net_timings") or []:
        if net.get("event") == ASYNC:
            continue
        delays = [float(e["delay"][1]) for e in net["endpoints"] if e.get("event") != ASYNC]
        if delays:
            nets.append((net["net"], delays, round(max(delays), 3)))
    out = {}
    for mhz in targets:
        period = 1000.0 / mhz
        rows = [{"net": name, "register_inputs": len(delays), "late": n_late, "worst_ns": worst}
                for name, delays, worst in nets if (n_late := sum(d > period for d in delays))]
        rows.sort(key=lambda r: (-r["late"], -r["worst_ns"], r["net"]))
        out[str(mhz)] = rows[:top]
    return out


def module_of(cell: str, depth: int) -> str:
    """The cell's hierarchy, its first ``depth`` names (``u.core.gen_src0`` for depth 3)."""
    parts = cell.split(".")
    return ".".join(parts[:min(depth, len(parts) - 1)]) or cell


def late(arr: dict, depth: int, targets=TARGETS_MHZ) -> dict:
    """Per target clock: the register inputs later than its period, by pin kind and by module."""
    out = {"inputs": len(arr), "worst_ns": round(max(arr.values()), 3) if arr else None, "targets": {}}
    for mhz in targets:
        period = 1000.0 / mhz
        miss = [k for k, a in arr.items() if a > period]
        by_module = Counter(module_of(c, depth) for c, _ in miss)
        out["targets"][str(mhz)] = {
            "late_inputs": len(miss), "late_cells": len({c for c, _ in miss}),
            "by_pin": dict(Counter(PIN_KINDS.get(p, "ram/dsp") for _, p in miss)),
            "by_module": dict(by_module.most_common())}
    return out


def place(rtl: Path, seeds: list[int], speed: int) -> dict[str, dict]:
    """The accelerator of ``rtl`` through ``hwgen report``'s own synthesis and place and route
    (:func:`hwgen.report.synthesize`, its seeds' arguments), with nextpnr's detailed timing
    reports kept in ``build/endpoints``: seed -> report.  The run also fills ``hwgen report``'s
    cache, so a ``hwgen report`` after it places nothing again."""
    from hwgen import report

    acc = report.read_manifest(rtl).get("accelerator")
    if not acc:
        raise UserError(f"{rtl}/manifest.json names no accelerator; generate one with 'hwgen generate'")
    t = time.time()
    print(f"synthesizing {acc['file']} (yosys ECP5 and Xilinx, a few minutes), then placing and routing seeds "
          f"{', '.join(map(str, seeds))} (nextpnr-ecp5, about 20 min a seed, one per core) ...", flush=True)
    res = report.synthesize((rtl / acc["file"]).read_text(), acc["top"], acc["ports"], use_cache=False,
                            seeds=tuple(seeds), pnr_args=report.accel_pnr_args(speed), keep_pnr=KEEP)
    print(f"  {time.time() - t:.0f} s; Fmax by seed {res['ecp5']['fmax_by_seed']}", flush=True)
    out = {}
    for s in seeds:
        # nextpnr's own report is kept (tens of MB: build/, not reports/), for --pnr-report
        kept = KEEP / f"pnr{s}.json"
        out[str(s)] = json.loads(kept.read_text())
        print(f"  kept nextpnr's report of seed {s}: {kept}")
    return out


def markdown(out: dict, command: str) -> str:
    seeds = list(out["seeds"])
    grade = out.get("speed_grade")
    lines = [f"# Register inputs later than the clock: {out['design']}"
             + (f", speed grade {grade}" if grade is not None else ""), "",
             " ".join(__doc__.split("\n\n")[2].split()), "", f"Command: `{command}`.", "",
             "| seed | Fmax (MHz) | worst arrival (ns) | register inputs | "
             + " | ".join(f"late at {m} MHz" for m in TARGETS_MHZ) + " |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in TARGETS_MHZ) + " |"]
    for s in seeds:
        r = out["seeds"][s]
        lines.append(f"| {s} | {r['fmax_mhz']} | {r['worst_ns']} | {r['inputs']:,} | "
                     + " | ".join(f"{r['targets'][str(m)]['late_inputs']:,}" for m in TARGETS_MHZ) + " |")
    top = str(TARGETS_MHZ[0])
    modules = Counter()
    for s in seeds:
        modules.update(out["seeds"][s]["targets"][top]["by_module"])
    lines += ["", f"Late at {top} MHz, by module (the modules late on any seed, most first):", "",
              "| module | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "| --- | " + " | ".join("---:" for _ in seeds) + " |"]
    for mod, _ in modules.most_common(30):
        lines.append(f"| `{mod}` | " + " | ".join(str(out["seeds"][s]["targets"][top]["by_module"].get(mod, 0))
                                                   for s in seeds) + " |")
    # the nets into them (one netlist for every seed, so a net has one name on all of them)
    nets: dict[str, dict] = {}
    for s in seeds:
        for row in out["seeds"][s]["targets"][top].get("by_net", []):
            nets.setdefault(row["net"], {"register_inputs": row["register_inputs"], "late": {}})["late"][s] = row
    if nets:
        order = sorted(nets, key=lambda n: (-sum(r["late"] for r in nets[n]["late"].values()), n))
        lines += ["", f"Late at {top} MHz, by the net into them (each seed's {NETS_SHOWN} "
                  "nets with the most; late inputs and the latest arrival in ns, a dash where the net is not "
                  "among a seed's):", "",
                  "| net | register inputs | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in seeds) + " |"]
        for n in order:
            cells = [f"{r['late']} ({r['worst_ns']:.2f})" if (r := nets[n]["late"].get(s)) else "-" for s in seeds]
            lines.append(f"| `{n}` | {nets[n]['register_inputs']} | " + " | ".join(cells) + " |")
    # each seed's worst path, step by step, as hw.md has it: where a cut would go
    from hwgen.report import critical_paths_markdown
    paths = critical_paths_markdown({s: out["seeds"][s].get("critical_path") for s in seeds})
    if paths:
        lines += ["", "Each seed's critical path (nextpnr's, the worst arrival above):", "", *paths]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    try:
        return run(argv)
    except UserError as exc:
        print(f"failing_endpoints: error: {exc}", file=sys.stderr)
        return 2


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtl", default="rtl", help="a folder 'hwgen generate' wrote (default: rtl)")
    ap.add_argument("--seeds", default=None, help="nextpnr seeds, comma-separated (default: hwgen report's)")
    ap.add_argument("--pnr-report", nargs="+", default=None,
                    help="nextpnr reports already written with --detailed-timing-report (nothing is placed)")
    ap.add_argument("--depth", type=int, default=3, help="hierarchy names a module keeps (default 3: u.core.<unit>)")
    ap.add_argument("--speed", type=int, default=None,
                    help="speed grade of the LFE5U-85F to place on: 6 (default: hwgen report's), 7, 8")
    ap.add_argument("--out", default=None, help="path of the .json / .md, less the suffix "
                                                "(default reports/accel_endpoints, _speed<N> after it on another grade)")
    args = ap.parse_args(argv)
    from hwgen.report import DEFAULT_SPEED, grade_suffix
    speed = DEFAULT_SPEED if args.speed is None else args.speed
    suffix = grade_suffix(speed)     # a grade the part lacks is refused before anything is placed
    if args.out is None:
        args.out = os.path.join("reports", "accel_endpoints" + suffix)
    if args.depth < 1:
        raise UserError(f"--depth {args.depth}: expected 1 or more")
    if args.pnr_report:
        reports = {}
        for f in args.pnr_report:
            try:
                reports[Path(f).stem.removeprefix("pnr")] = json.loads(Path(f).read_text())   # pnr2.json: seed 2
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read the nextpnr report {f}: {e.__class__.__name__}; expected nextpnr's --report JSON")
        design = ", ".join(args.pnr_report)
    else:
        from hwgen.report import ACCEL_SEEDS
        try:
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(ACCEL_SEEDS)
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r}: expected integers separated by commas, such as 1,2,3")
        reports = place(Path(args.rtl), seeds, speed)
        design = f"{args.rtl}/accelerator.v"
    # (the grade of reports given with --pnr-report is what --speed says of them, else unknown)
    grade = args.speed if args.pnr_report else speed
    out = {"design": design, "speed_grade": grade, "depth": args.depth, "seeds": {}}
    from hwgen.report import critical_path, report_fmax
    for name, pnr in reports.items():
        out["seeds"][name] = {"fmax_mhz": report_fmax(pnr), **late(arrivals(pnr), args.depth),
                              "critical_path": critical_path(pnr)}
        for mhz, rows in late_nets(pnr).items():
            out["seeds"][name]["targets"][mhz]["by_net"] = rows

    from rich.console import Console
    from rich.table import Table
    table = Table(title="register inputs later than the clock (nextpnr-ecp5, LFE5U-85F"
                        + (f", speed grade {grade})" if grade is not None else ")"))
    for c in ("seed", "Fmax MHz", "inputs", *(f"late @{m}" for m in TARGETS_MHZ)):
        table.add_column(c, justify="right")
    for name, r in out["seeds"].items():
        table.add_row(name, str(r["fmax_mhz"]), f"{r['inputs']:,}",
                      *(f"{r['targets'][str(m)]['late_inputs']:,}" for m in TARGETS_MHZ))
    Console().print(table)
    md = markdown(out, "python scripts/failing_endpoints.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    at = md.index("Late at ")                        # the by-module table, its first rows
    print("\n".join(md[at:].splitlines()[:18]))
    for name, r in out["seeds"].items():
        if cp := r["critical_path"]:
            print(f"seed {name}'s critical path: {cp['delay_ns']} ns ({cp['routing_ns']} routing, {cp['steps']} steps), "
                  f"{cp['from']} -> {cp['to']}")
    write_json(args.out + ".json", out)
    write_text(args.out + ".md", md)
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
