"""Host side of the LayerNorm testbench: the unit, layers, segments (a layer's constant
beats and rows), the shared harness, and the timing measurement a benchmark script calls.

* :func:`standard_unit`: the unit for the default capabilities (``HwConfig()``: 16-bit
  input, 16-bit M, 48-bit B, 8-bit output, up to 256 channels, 3 row slots);
* :func:`standard_harness`: one simulator build holding that unit (``ln``) and a copy with
  a deliberate fault (``ln_bad``, the mean rounded down instead of to nearest), cached
  under sim_build/;
* :func:`synthetic_layer`: a layer of any C through :func:`golden.layernorm.build_layernorm`
  (gamma with negative entries, beta);
* :func:`segment`: the SIM_DATA entry of one layer on a unit (beats from
  :meth:`LayerNorm.const_beats`, expected from ``layernorm_int``);
* :func:`measure_layernorm_timing`, :func:`measure_layernorm_cycles_per_row`: latency and
  steady-state cycles per row without back-pressure, measured on the RTL.
"""

from __future__ import annotations

import torch

from golden.layernorm import build_layernorm, layernorm_int
from hwgen.config import HwConfig
from hwgen.layernorm import LayerNorm
from hwgen.verilog import Harness
from sim import runner

__all__ = ["TB", "standard_unit", "standard_harness", "synthetic_layer", "segment", "unit_data", "random_rows",
           "measure_layernorm_timing", "measure_layernorm_cycles_per_row"]

TB = "sim.tb_layernorm"
S_OUT = 0.04            # output scale: |(x - mean) / sigma| * gamma / S_OUT spans and clamps int8


def standard_unit(**kw) -> LayerNorm:
    return LayerNorm.from_config(HwConfig(), **kw)


def standard_harness(simulator: str = "verilator"):
    """``(build, units)``: the standard unit and its faulty copy in one cached build."""
    units = {"ln": standard_unit(), "ln_bad": standard_unit(_fault="mean_floor")}
    b = runner.build(Harness(units), "layernorm_harness", {"unit": "layernorm-runtime-constants"},
                     simulator=simulator, ports_only=True)
    return b, units


def synthetic_layer(channels: int, seed: int, out_bits: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    gamma = 1.0 + 0.6 * torch.randn(channels, generator=g, dtype=torch.float64)
    gamma[::7] = -gamma[::7].abs()                          # negative gammas for sure
    beta = 0.5 * torch.randn(channels, generator=g, dtype=torch.float64)
    return build_layernorm(gamma, beta, S_OUT, out_bits, name=f"layernorm{channels}")


def segment(name: str, unit: LayerNorm, layer: dict, rows: torch.Tensor, *, gap: float = 0.0, stall: float = 0.0,
            c_gap: float = 0.0, overlap: bool = False, beats: list[dict] | None = None,
            expected_layer: dict | None = None, record: bool = False) -> dict:
    """One layer on ``unit``: its constant beats (``beats`` if given, else
    ``unit.const_beats``), ``rows`` (R x C) in, ``layernorm_int`` of ``expected_layer``
    (default ``layer``) expected."""
    c = layer["attrs"]["channels"]
    assert rows.dim() == 2 and rows.shape[1] == c
    beats = unit.const_beats(layer["attrs"], layer["consts"]) if beats is None else beats
    ref = expected_layer or layer
    expected = layernorm_int(rows, ref["attrs"], ref["consts"])
    return {"name": name, "channels": c, "beats": [unit.pack_beat(bt) for bt in beats],
            "values": rows.flatten().tolist(), "expected": expected.flatten().tolist(),
            "gap_prob": gap, "stall_prob": stall, "c_gap_prob": c_gap, "overlap": overlap,
            "record": record}


def unit_data(name: str, unit: LayerNorm, segments: list[dict]) -> dict:
    return {"name": name, "prefix": f"{name}__", "in_bits": unit.in_bits, "out_bits": unit.out_bits,
            "segments": segments}


def random_rows(rows: int, channels: int, seed: int, in_bits: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(1 << (in_bits - 1)), 1 << (in_bits - 1), (rows, channels), generator=g)


def measure_layernorm_timing(channels: int = 192, rows: int = 10, seed: int = 3) -> dict:
    """Load a ``channels``-channel layer and run ``rows`` random rows through the standard
    unit, no gaps, no back-pressure; return the segment's report (row_latency, row_periods,
    load_cycles, ...) with the steady-state ``cycles_per_row`` (the median of the last half
    of the row periods) and the unit's documented figures."""
    b, units = standard_harness()
    unit = units["ln"]
    layer = synthetic_layer(channels, channels)
    seg = segment(f"timing C={channels}", unit, layer, random_rows(rows, channels, seed))
    res = runner.run(b, TB, {"seed": seed, "units": [unit_data("ln", unit, [seg])]}, f"perf_c{channels}")
    rep = next(u for u in res.get("units", []) if u["name"] == "ln")
    if res["failed"] or rep["mismatches"]:
        raise RuntimeError(f"layernorm timing run failed: {rep.get('message')} (run dir {res['run_dir']})")
    s = rep["segments"][0]
    tail = sorted(s["row_periods"][len(s["row_periods"]) // 2:])
    t = unit.timing(channels)
    s.update(cycles_per_row=tail[len(tail) // 2], latency=s["row_latency"][0],
             documented_latency=t["latency"], documented_cycles_per_row=t["cycles_per_row"],
             build_seconds=round(b.seconds, 1), run_seconds=res["seconds"])
    return s


def measure_layernorm_cycles_per_row(channels: int = 192) -> dict:
    """Steady-state cycles per row of the LayerNorm unit without back-pressure (RTL, cocotb)."""
    rep = measure_layernorm_timing(channels)
    return {"channels": channels, "cycles": int(rep["cycles_per_row"])}


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    c = int(sys.argv[1]) if len(sys.argv) > 1 else 192
    print(json.dumps(measure_layernorm_timing(c)))
