"""The real-size check: one deit_tiny_patch16_224 image (random weights, 224x224) through the
RTL executor, logits compared with the golden executor, cycles per op type.
Writes reports/rtl_deit_tiny.{json,md}; the figures of reports/rtl_deit_tiny_before.json (the
per-layer-unit accelerator of before issue 9, measured on a quiet machine) are shown beside them.  The first run generates and builds the accelerator
(one unit per op type; minutes), later runs reuse the build."""

from __future__ import annotations

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from golden import datasets, models, vit_float  # noqa: E402
from golden.atomic import write_json, write_text  # noqa: E402
from golden.executor import run_graph  # noqa: E402
from golden.quantize import QuantConfig, quantize_model  # noqa: E402
from hwgen.cli import metrics_markdown, print_metrics  # noqa: E402
from sim.rtl_executor import prepare, run_rtl  # noqa: E402

NAME, CALIB, SEED = "deit_tiny_patch16_224", 2, 0


def _before() -> dict | None:
    """The before-issue-9 figures, if kept (its "units" field counted ops, not units: 76 units)."""
    path = os.path.join("reports", "rtl_deit_tiny_before.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main() -> int:
    t0 = time.time()
    torch.manual_seed(SEED)
    model = models.load_model(NAME)
    spec, _ = vit_float.extract(model)
    calib = datasets.random_images(spec, CALIB, seed=SEED)
    image = datasets.random_images(spec, 1, seed=SEED + 1)
    q = quantize_model(model, NAME, calib, QuantConfig(w_bits=8, calib_images=CALIB, seed=SEED))
    xq = q.quantize_input(image)
    t1 = time.time()
    rtl = prepare(q.graph)
    t2 = time.time()
    res = run_rtl(rtl, xq, [0], workers=1, resume=False)
    t3 = time.time()
    golden = run_graph(q.graph, xq)[0].tolist()
    rec = res["records"].get(0)
    equal = rec is not None and rec["logits"] == golden
    per_op = dict(sorted(rec["cycles"].items())) if rec else {}
    out = {"model": NAME, "bits": q.graph.meta["bits"], "weights": "random (timm init, seed 0)",
           "image": "random normal 224x224 (seed 1)", "calib_images": CALIB, "logits_equal_golden": equal,
           "logits": len(golden), "cycles": {"total": sum(per_op.values()), "per_op": per_op},
           "sim_cycles": rec["sim_cycles"] if rec else None,
           "sim_cycles_per_second": round(rec["sim_cycles"] / rec["seconds"], 1) if rec else None,
           "free_running_cycles_per_second": round(rec["free_cycles"] / rec["free_seconds"], 1) if rec else None,
           "units": len(rtl.plan.engines), "build_seconds": round(rtl.build.seconds, 1),
           "generate_and_build_seconds": round(t2 - t1, 1), "run_seconds": round(t3 - t2, 1),
           "total_seconds": round(time.time() - t0, 1), "failure": res["failure"], "waveform": res["waveform"]}
    os.makedirs("reports", exist_ok=True)
    write_json("reports/rtl_deit_tiny.json", out)
    rows = [("logits equal golden", f"{equal} ({len(golden)} logits)"), ("cycles, total", f"{out['cycles']['total']:,}")]
    rows += [(f"cycles in {k}", f"{v:,}") for k, v in per_op.items()]
    rows += [("simulated cycles per second", f"{out['sim_cycles_per_second'] or 0:,.0f}"),
             ("free-running cycles per second", f"{out['free_running_cycles_per_second'] or 0:,.0f}"),
             ("generate + build, run", f"{out['generate_and_build_seconds']:.0f} s, {out['run_seconds']:.0f} s"),
             ("units (one per op type and operand format)", str(out["units"]))]
    before = _before()
    if before:
        out["before"] = before
        rows += [("before: units (one per layer, GEMMs shared)", "76"),
                 ("before: cycles, total", f"{before['cycles']['total']:,}"),
                 ("before: simulated cycles per second", f"{before['sim_cycles_per_second']:,.0f}"),
                 ("before: generate + build, run", f"{before['generate_and_build_seconds']:.0f} s, "
                                                   f"{before['run_seconds']:.0f} s")]
    write_text("reports/rtl_deit_tiny.md", metrics_markdown(
        f"{NAME} W8A8 (random weights), one random 224x224 image on simulated hardware (Verilator).", rows))
    print_metrics(f"{NAME} W8A8, one image on simulated hardware", rows)
    print("wrote reports/rtl_deit_tiny.json")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
