"""Rank the register-to-register paths of the accelerator (or any generated unit) in minutes,
not the 50 of place and route: yosys maps it for ECP5 exactly as ``hwgen report`` does (the
same flow and Fmax wrapper), and a unit-delay model walks the mapped netlist.

    python scripts/rank_paths.py                       # rtl/accelerator.v (about 15 min of yosys)
    python scripts/rank_paths.py --netlist wrap.json   # an ECP5 netlist already mapped
    python scripts/rank_paths.py --show 3 --groups 40  # paths printed in full, groups listed

The model: a LUT4 0.45 ns, a PFUMX/L6MUX21 0.25 ns, a carry cell 0.5 ns in and 0.08 ns along
the chain, a distributed RAM read 1 ns, a flip-flop 0.5 ns clock to Q, an unregistered
MULT18X18D 3.93 ns operand to product (a registered one, :mod:`hwgen.dsp`'s, is a register: its
operands end paths, its product starts them), and per net 0.55 ns of
routing plus 0.3 ns x log2(its sinks) (none along a carry chain).  It knows nothing of
placement or congestion, so its nanoseconds are not a clock: it ranks paths (which register
feeds which through how many levels and how wide a net), so that the next fix is chosen
before a place and route, which then measures it.  Calibration, one point: on the RTL of
commit 1be0bbe nextpnr's critical path was is_softmax -> the reader's 512-bit beat register's
clock enable, 17.4 ns; the model put that group third (19.7 ns), behind two address-step
paths (21.4, 20.4 ns), which nextpnr did not find the worst.  Paths are grouped by (start register,
end register) and the worst of each group shown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from golden.errors import UserError  # noqa: E402

ROUTE = 0.55
FANOUT = 0.3              # routing grows with a net's fanout: + FANOUT x log2(sinks) ns
SOURCES = {"TRELLIS_FF": 0.5, "DP16KD": 2.5, "MULT18X18D": 2.0}      # clock to output (a registered DSP's)
OUTREG_DP16KD = 0.5       # a DP16KD read through its output register (hwgen.bram's leaves: nextpnr's 0.96 ns
                          # against 5.83 without, scripts/probe_ebr_regmode.py)
DSP_PRODUCT = 3.93        # an unregistered MULT18X18D, operand to product (nextpnr's figure)
CLOCKS = ("CLK", "WCK", "CLKA", "CLKB", "CLK0", "CLK1", "CLK2", "CLK3")


def arcs(cell: dict) -> list[tuple[str, str, float]]:
    """(input port, output port, delay) of a mapped ECP5 cell's combinational arcs."""
    t, conn = cell["type"], cell["connections"]
    if t == "LUT4":
        return [(p, "Z", 0.45) for p in "ABCD"]
    if t == "PFUMX":
        return [("ALUT", "Z", 0.25), ("BLUT", "Z", 0.25), ("C0", "Z", 0.35)]
    if t == "L6MUX21":
        return [("D0", "Z", 0.25), ("D1", "Z", 0.25), ("SD", "Z", 0.35)]
    if t == "CCU2C":
        out = [(p + i, o, d) for i in "01" for p in "ABCD" for o, d in (("S0", 0.5), ("S1", 0.6), ("COUT", 0.5))]
        out += [("CIN", "S0", 0.25), ("CIN", "S1", 0.3), ("CIN", "COUT", 0.08)]
        return [(i, o, d) for i, o, d in out if i in conn and o in conn]
    if t == "TRELLIS_DPR16X4":
        return [("RAD", "DO", 1.0)]
    if t == "MULT18X18D" and not _dsp_registered(cell):
        return [(i, o, DSP_PRODUCT) for i in conn if i[0] in "AB" and i[1:].isdigit()
                for o in conn if o[0] == "P" and o[1:].isdigit()]
    return []


def _dsp_registered(cell: dict) -> bool:
    """A MULT18X18D with its operand and output registers on (hwgen.dsp's leaves); yosys's own
    mapping leaves them off, and the product is then a combinational arc."""
    params = cell.get("parameters", {})
    return all(str(params.get(f"REG_{r}_CLK", "NONE")).strip() != "NONE" for r in ("INPUTA", "INPUTB", "OUTPUT"))


def rank(netlist: dict, top: str | None = None) -> list[dict]:
    """Every endpoint's worst arrival and path, worst first."""
    mod = netlist["modules"][top] if top else max(netlist["modules"].values(), key=lambda m: len(m["cells"]))
    names: dict[int, str] = {}
    for n, d in mod["netnames"].items():        # the most readable name of each bit
        for b in d["bits"]:
            if isinstance(b, int):
                old = names.get(b)
                if old is None or (old.count("$"), len(old)) > (n.count("$"), len(n)):
                    names[b] = n
    arrival: dict[int, float] = defaultdict(float)
    pred: dict[int, int] = {}
    edges: dict[int, list] = defaultdict(list)
    indeg: dict[int, int] = defaultdict(int)
    endpoints = []
    sinks: dict[int, int] = defaultdict(int)
    for cname, c in mod["cells"].items():
        t, conn, dirs = c["type"], c["connections"], c.get("port_directions", {})
        if (t in SOURCES and (t != "MULT18X18D" or _dsp_registered(c))) or t == "TRELLIS_DPR16X4":
            for p, bits in conn.items():
                for b in bits:
                    if not isinstance(b, int):
                        continue
                    if dirs.get(p) == "output" and t in SOURCES:
                        outreg = t == "DP16KD" and c.get("parameters", {}).get(f"REGMODE_{p[2:3]}") == "OUTREG"
                        arrival[b] = max(arrival[b], OUTREG_DP16KD if outreg else SOURCES[t])
                    elif dirs.get(p) == "input" and p not in CLOCKS and p != "RAD":
                        endpoints.append((b, cname, p))
        for i, o, d in arcs(c):
            for x in conn.get(i, []):
                for y in conn.get(o, []):
                    if isinstance(x, int) and isinstance(y, int):
                        edges[x].append((y, d, i == "CIN"))
                        indeg[y] += 1
        for p, bits in conn.items():
            if dirs.get(p) == "input":
                for b in bits:
                    if isinstance(b, int):
                        sinks[b] += 1

    def route(bit: int) -> float:
        return ROUTE + FANOUT * math.log2(max(1, sinks[bit]))

    nodes = set(edges) | {y for v in edges.values() for y, _, _ in v}
    ready = [n for n in nodes if indeg[n] == 0]
    while ready:                                # longest path in topological order
        n = ready.pop()
        for y, d, carry in edges.get(n, []):
            t = arrival[n] + d + (0.0 if carry else route(n))
            if t > arrival[y]:
                arrival[y], pred[y] = t, n
            indeg[y] -= 1
            if indeg[y] == 0:
                ready.append(y)
    out = []
    for b, cname, port in endpoints:
        path = [b]
        while path[-1] in pred:
            path.append(pred[path[-1]])
        path.reverse()
        out.append({"ns": round(arrival[b] + route(b), 2), "levels": len(path) - 1, "start": names.get(path[0], str(path[0])),
                    "end": f"{cname}.{port}", "path": [(round(arrival[x], 2), names.get(x, str(x))) for x in path]})
    return sorted(out, key=lambda r: -r["ns"])


def group_key(r: dict) -> tuple[str, str]:
    def base(name: str) -> str:
        return re.sub(r"_TRELLIS.*|\[.*|\$.*|\.storage.*", "", name)
    return base(r["start"]), base(r["end"])


def map_ecp5(verilog: Path, top: str, ports: list[dict]) -> dict:
    """``hwgen report``'s ECP5 mapping of ``top`` inside its Fmax wrapper."""
    from hwgen.report import fmax_netlist

    with tempfile.TemporaryDirectory(prefix="rank-paths-") as tmp:
        wd = Path(tmp)
        try:
            fmax_netlist(verilog.read_text(), top, ports, wd)
        except RuntimeError as exc:
            raise UserError(f"yosys failed on {verilog}: {exc}") from None
        return json.loads((wd / "wrap.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtl", default="rtl", help="folder with manifest.json (default rtl/)")
    ap.add_argument("--unit", default="accelerator", help="'accelerator' or a unit of the manifest")
    ap.add_argument("--netlist", help="an ECP5 yosys JSON netlist (skips the mapping)")
    ap.add_argument("--groups", type=int, default=30, help="(start, end) register groups listed")
    ap.add_argument("--show", type=int, default=3, help="of those, how many printed cell by cell")
    args = ap.parse_args(argv)
    try:
        if args.netlist:
            try:
                netlist = json.loads(Path(args.netlist).read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"--netlist {args.netlist}: not a readable yosys JSON netlist ({exc})") from None
        else:
            from hwgen.report import read_manifest
            manifest = read_manifest(args.rtl)
            entry = manifest["accelerator"] if args.unit == "accelerator" else manifest["units"].get(args.unit)
            if entry is None:
                raise UserError(f"--unit {args.unit}: not in the manifest; accepted: accelerator, "
                                f"{', '.join(manifest['units'])}")
            print(f"mapping {entry['file']} for ECP5 with yosys (the hwgen report flow) ...", file=sys.stderr, flush=True)
            netlist = map_ecp5(Path(args.rtl) / entry["file"], entry["top"], entry["ports"])
    except UserError as exc:
        print(f"rank_paths: error: {exc}", file=sys.stderr)
        return 2
    seen, shown = set(), 0
    for r in rank(netlist):
        key = group_key(r)
        if key in seen:
            continue
        seen.add(key)
        print(f"{r['ns']:6.2f} ns (model)  {r['levels']:3d} arcs  {r['start']} -> {r['end']}")
        if shown < args.show:
            for t, name in r["path"]:
                print(f"        {t:6.2f}  {name[:100]}")
        shown += 1
        if shown >= args.groups:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
