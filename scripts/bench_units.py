"""Benchmark the hardware units in simulation (Verilator) and write reports/perf_units.json:
GEMM utilization on DeiT-Tiny's QKV shape (197x192 by 192x576) on an 8x8 array, and cycles
per row of Softmax (197 tokens) and LayerNorm (192 channels).  Every measured run is also
checked bit for bit against the golden model."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from golden.atomic import write_json, write_text  # noqa: E402


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    from sim.perf_gemm import measure_gemm_utilization
    from sim.perf_layernorm import measure_layernorm_cycles_per_row
    from sim.tb_softmax import measure_softmax_cycles_per_row

    steps = [("gemm_utilization", lambda: measure_gemm_utilization(M=197, K=192, N=576, rows=8, cols=8)),
             ("softmax_cycles_per_row", lambda: measure_softmax_cycles_per_row(length=197)),
             ("layernorm_cycles_per_row", lambda: measure_layernorm_cycles_per_row(channels=192))]
    res = {}
    for key, fn in steps:
        print(f"measuring {key} ...", flush=True)
        res[key] = fn()
    g, s, ln = res["gemm_utilization"], res["softmax_cycles_per_row"], res["layernorm_cycles_per_row"]
    out = {"gemm_utilization": {k: g[k] for k in ("shape", "rows", "cols", "cycles", "utilization")},
           "softmax_cycles_per_row": {k: s[k] for k in ("length", "cycles")},
           "layernorm_cycles_per_row": {k: ln[k] for k in ("channels", "cycles")}}
    write_json("reports/perf_units.json", out)
    rows = [("GEMM utilization", f"{g['shape'][0]}x{g['shape'][1]} by {g['shape'][1]}x{g['shape'][2]} on "
             f"{g['rows']}x{g['cols']}", f"{g['cycles']:,} cycles, utilization {g['utilization']:.3f}"),
            ("Softmax", f"row of {s['length']}", f"{s['cycles']} cycles per row"),
            ("LayerNorm", f"row of {ln['channels']} channels", f"{ln['cycles']} cycles per row")]
    write_text("reports/perf_units.md", "| unit | shape | measured (Verilator) |\n| --- | --- | --- |\n"
               + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows))
    table = Table(title="hardware units measured in simulation")
    for col in ("unit", "shape", "measured"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    Console().print(table)
    print("wrote reports/perf_units.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
