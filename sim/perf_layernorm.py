"""Host side of the LayerNorm testbench: layers, the shared harness, test rows, and the
cycles-per-row measurement a benchmark script can call.

* :func:`standard_layers`: the layers the tests use (C = 64 and 192, gamma with negative
  entries, beta, built by :func:`golden.layernorm.build_layernorm`), plus a copy of the
  C = 64 layer with one deliberately wrong multiplier;
* :func:`standard_harness`: one simulator build holding all three units side by side
  (``ln64``, ``ln192``, ``ln64_bad``), cached under sim_build/;
* :func:`layernorm_unit_data`: the SIM_DATA entry of a unit (expected from ``layernorm_int``);
* :func:`measure_layernorm_cycles_per_row`: steady-state cycles per row without
  back-pressure, ``{"channels": C, "cycles": N}``.
"""

from __future__ import annotations

import torch

from golden.layernorm import build_layernorm, layernorm_int
from hwgen.layernorm import LayerNorm
from hwgen.verilog import Harness
from sim import runner

__all__ = ["TB", "IN_BITS", "OUT_BITS", "standard_layers", "standard_harness", "layernorm_unit_data",
           "measure_layernorm_timing", "measure_layernorm_cycles_per_row", "wrong_layer"]

TB = "sim.tb_layernorm"
IN_BITS = 16
OUT_BITS = 8
S_OUT = 0.04            # output scale: |(x - mean) / sigma| * gamma / S_OUT spans and clamps int8
WRONG_CHANNEL = 17


def _layer(channels: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    gamma = 1.0 + 0.6 * torch.randn(channels, generator=g, dtype=torch.float64)
    gamma[::7] = -gamma[::7].abs()                          # negative gammas for sure
    beta = 0.5 * torch.randn(channels, generator=g, dtype=torch.float64)
    return build_layernorm(gamma, beta, S_OUT, OUT_BITS, name=f"layernorm{channels}")


def wrong_layer(layer: dict, channel: int = WRONG_CHANNEL) -> dict:
    """``layer`` with the multiplier of one channel negated (a deliberately wrong constant)."""
    m = layer["consts"]["m"].clone()
    m[channel] = -m[channel]
    return {"attrs": dict(layer["attrs"]), "consts": {"m": m, "b": layer["consts"]["b"].clone()}}


def standard_layers() -> dict[str, dict]:
    l64 = _layer(64, 64)
    return {"ln64": l64, "ln192": _layer(192, 192), "ln64_bad": wrong_layer(l64)}


def standard_harness(simulator: str = "verilator"):
    """``(build, units, layers)``: the three standard units in one cached build."""
    layers = standard_layers()
    units = {n: LayerNorm(l["attrs"], l["consts"], in_bits=IN_BITS) for n, l in layers.items()}
    b = runner.build(Harness(units), "layernorm_harness", {"in_bits": IN_BITS, "out_bits": OUT_BITS},
                     simulator=simulator)
    return b, units, layers


def layernorm_unit_data(name: str, unit: LayerNorm, layer: dict, rows: torch.Tensor, *, gap: float = 0.0,
                        stall: float = 0.0, clean_rows: int | None = None) -> dict:
    """SIM_DATA entry of one unit: ``rows`` (R x C int) in, ``layernorm_int(rows)`` expected."""
    c = unit.channels
    assert rows.shape[-1] == c
    expected = layernorm_int(rows, layer["attrs"], layer["consts"])
    return {"name": name, "prefix": f"{name}__", "channels": c, "lanes": 1, "latency": unit.latency,
            "inputs": [{"port": "i", "bits": unit.in_bits, "signed": True, "values": rows.flatten().tolist()}],
            "output": {"port": "o", "bits": unit.out_bits, "signed": True},
            "expected": expected.flatten().tolist(), "gap_prob": gap, "stall_prob": stall,
            "clean_beats": (clean_rows if clean_rows is not None else rows.shape[0]) * c}


def measure_layernorm_timing(channels: int = 192, rows: int = 10, seed: int = 3) -> dict:
    """Run ``rows`` random rows through a ``channels``-channel unit, no gaps, no back-pressure;
    return the bench's report (latency, cycles_per_row, row_periods, ...) and the unit's
    documented figures."""
    if channels in (64, 192):
        b, units, layers = standard_harness()
        name = f"ln{channels}"
        unit, layer = units[name], layers[name]
    else:
        layer = _layer(channels, channels)
        unit = LayerNorm(layer["attrs"], layer["consts"], in_bits=IN_BITS)
        name = "ln"
        b = runner.build(Harness({name: unit}), f"layernorm_c{channels}", {"in_bits": IN_BITS})
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-(1 << (IN_BITS - 1)), 1 << (IN_BITS - 1), (rows, channels), generator=g)
    data = {"seed": seed, "units": [layernorm_unit_data(name, unit, layer, x)]}
    res = runner.run(b, TB, data, f"perf_c{channels}")
    rep = next(u for u in res.get("units", []) if u["name"] == name)
    if res["failed"] or rep["mismatches"]:
        raise RuntimeError(f"layernorm timing run failed: {rep.get('message')} (run dir {res['run_dir']})")
    rep.update(documented_latency=unit.latency, documented_cycles_per_row=unit.cycles_per_row,
               build_seconds=round(b.seconds, 1), run_seconds=res["seconds"])
    return rep


def measure_layernorm_cycles_per_row(channels: int = 192) -> dict:
    """Steady-state cycles per row of the LayerNorm unit without back-pressure (RTL, cocotb)."""
    rep = measure_layernorm_timing(channels)
    return {"channels": channels, "cycles": int(round(rep["cycles_per_row"]))}


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    c = int(sys.argv[1]) if len(sys.argv) > 1 else 192
    print(json.dumps(measure_layernorm_cycles_per_row(c)))
