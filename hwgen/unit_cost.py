"""Cost of a candidate approximation unit, from real synthesis (for ``hwgen plan``).

A candidate (a GELU or Softmax variant) is costed as the generated unit that runs it, built
for the model's widths (:func:`hwgen.capabilities.derive_hw` of the model's integer graph,
lanes and the rest from ``configs/default.json``), converted to Verilog and synthesized by
yosys ``synth_ecp5`` for the Lattice ECP5 (the LUT mapping by classic ``abc -lut 4``, the
first flow of :data:`hwgen.report.ECP5_FLOWS`, with ``check -assert`` on the netlist).  No
place and route: the cell counts are all the cost needs.  The counts combine into one
figure by :data:`COST_WEIGHTS`::

    cost = LUT4 + 6 * DPR16X4 + FF / 2 + 100 * MULT18X18D + 50 * DP16KD

``LUT4`` counts two LUT4s per CCU2C carry cell (as :mod:`hwgen.report` does); a DPR16X4
(16x4 distributed RAM) occupies three slices, i.e. six LUT4 sites, on the ECP5; a flip-flop
is half a LUT4 (a slice holds two LUT4s and two FFs, and FFs are rarely what runs out); a
MULT18X18D DSP block and a DP16KD EBR (18 Kbit) are scarce hard blocks (156 and 208 on an
LFE5U-85F against 84k LUT4), priced at 100 and 50 LUT4s.

Cycles per image of an op come from the unit's own documented throughput: a GELU layer of
E elements takes ``ceil(E / lanes) + latency`` cycles; a Softmax layer of R rows of length
L takes ``R * cycles_per_row(L) + first_output_latency(L)``.

Results are cached under ``build/plan_cost/<hash>.json``, keyed by the Verilog text, the
flow and the tool versions.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path

from golden.atomic import write_json

from .config import HwConfig

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "plan_cost"
COST_WEIGHTS = {"lut4": 1.0, "dpr16x4": 6.0, "ff": 0.5, "mult18": 100.0, "ebr": 50.0}
COST_FORMULA = "LUT4 + 6*DPR16X4 + FF/2 + 100*MULT18 + 50*EBR (yosys synth_ecp5, abc -lut 4, counts only)"
_CACHE_VERSION = "1"


def unit_of(hw: HwConfig, op_type: str, variant: str):
    """The Amaranth unit that runs ``op_type`` ('gelu' or 'softmax') with ``variant``."""
    from .generate import UNIT_BUILDERS

    if op_type == "gelu":
        return UNIT_BUILDERS["gelu"](hw.replace(gelu_variant=variant)).component
    if op_type == "softmax":
        return UNIT_BUILDERS["softmax"](hw.replace(exp_variant=variant)).component
    raise ValueError(f"no candidate unit for op type {op_type!r}")


def synth_counts(verilog: str, top: str, use_cache: bool = True) -> dict:
    """ECP5 cell counts of one unit from yosys (cached by its Verilog text)."""
    from .report import ECP5_FLOWS, _cells, _synth, _tool_versions

    flows = ECP5_FLOWS[:1] + ECP5_FLOWS[1:]
    key = hashlib.sha256(f"{_CACHE_VERSION}\0{_tool_versions()}\0{flows}\0{top}\0{verilog}".encode()).hexdigest()[:24]
    cached = CACHE / f"{key}.json"
    if use_cache and cached.exists():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory(prefix=f"plancost-{top}-") as tmp:
        wd = Path(tmp)
        (wd / f"{top}.v").write_text(verilog)
        flow = _synth(flows, top, f"{top}.v", wd, "ecp5.json", "tee -q -o ecp5.json stat -json")
        cells = _cells(wd / "ecp5.json", top)
    res = {"lut4": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0), "ff": cells.get("TRELLIS_FF", 0),
           "mult18": cells.get("MULT18X18D", 0), "ebr": cells.get("DP16KD", 0),
           "dpr16x4": cells.get("TRELLIS_DPR16X4", 0), "flow": flow, "tools": _tool_versions(),
           "cells": {k: v for k, v in cells.items() if not k.startswith("$")}}
    CACHE.mkdir(parents=True, exist_ok=True)
    write_json(str(cached), res)
    return res


def weighted_cost(counts: dict) -> float:
    return float(sum(w * counts.get(k, 0) for k, w in COST_WEIGHTS.items()))


def unit_cost(hw: HwConfig, op_type: str, variant: str, use_cache: bool = True) -> dict:
    """Counts, weighted cost and timing figures of the unit for one candidate."""
    from .verilog import emit_verilog

    unit = unit_of(hw, op_type, variant)
    counts = synth_counts(emit_verilog(unit, op_type), op_type, use_cache)
    out = {k: counts[k] for k in ("lut4", "ff", "mult18", "ebr", "dpr16x4", "flow")}
    out["cost"] = weighted_cost(counts)
    out["lanes"] = hw.lanes
    if op_type == "gelu":
        out["latency"] = unit.latency
    return out


def op_cycles(hw: HwConfig, op_type: str, variant: str, shape: tuple[int, ...]) -> int:
    """Cycles per image of one layer of ``op_type`` whose input (one image) has ``shape``."""
    unit = unit_of(hw, op_type, variant)
    unit._MustUse__silence = True        # read for its timing only, never elaborated
    if op_type == "gelu":
        return math.ceil(math.prod(shape) / hw.lanes) + unit.latency
    rows, length = math.prod(shape[:-1]), shape[-1]
    return rows * unit.cycles_per_row(length) + unit.first_output_latency(length)


def model_hw(graph, base: HwConfig | None = None) -> HwConfig:
    """The capabilities the model's layers need (widths from the graph; lanes, array shape
    and the rest from ``base``, default ``configs/default.json``)."""
    from .capabilities import derive_hw
    from .generate import DEFAULT_CONFIG, GenConfig

    return derive_hw([graph], base or GenConfig.load(DEFAULT_CONFIG).hw)
