"""A ViT on the RTL accelerator (hwgen.accel: one compiled program, the AXI accelerator with the
memory model inside the simulated design): logits against the golden executor, cycles per
image against the GEMM-bound minimum, the breakdown per op type, the external traffic, the
simulator's speed.  Writes reports/accel_<model>_<bits>.{json,md}.

    python scripts/accel_model.py [--model digits] [--bits w8a8|w4a8] [--images N]
    python scripts/accel_model.py --model deit_tiny_patch16_224      # one image, random weights

digits runs on the committed configuration (configs/default.json) and the default
AccelConfig.  deit_tiny_patch16_224 (timm's init, seed 0; a random 224x224 image, 2 random
calibration images) runs on the committed configuration's array and units, widened to what its
graph needs (hwgen.capabilities.derive_hw), and an AccelConfig sized for it (DEIT_ACCEL: its activations peak at about 460k elements, far
beyond an ECP5's block RAM: a size for a larger part, or for the simulation).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from golden import datasets, models  # noqa: E402
from golden.atomic import write_json, write_text  # noqa: E402
from golden.executor import run_graph  # noqa: E402
from golden.graph import tensor_shapes  # noqa: E402
from golden.quantize import QuantConfig, quantize_model  # noqa: E402
from golden import vit_float  # noqa: E402
from hwgen.accel.compiler import AccelConfig, compile  # noqa: E402
from hwgen.capabilities import derive_hw  # noqa: E402
from hwgen.accel.interpreter import header, run, write_input  # noqa: E402
from hwgen.accel.isa import Opcode  # noqa: E402
from hwgen.cli import metrics_markdown, print_metrics  # noqa: E402
from hwgen.generate import DEFAULT_CONFIG, GenConfig, generator_hash  # noqa: E402
from sim import accel_run  # noqa: E402


DEIT = "deit_tiny_patch16_224"
# 2^19 elements of activations (the graph peaks at 459,798), a W cache that holds a head's
# 25 column tiles x K = 64 of its attention scores
DEIT_ACCEL = AccelConfig(act_buffer_elems=1 << 19, w_cache_elems=2048)


def gemm_macs(graph) -> int:
    shapes = tensor_shapes(graph)
    macs = 0
    for op in graph.ops:
        if op.type == "linear":
            n, k = op.consts["weight"].shape
            rows = 1
            for s in shapes[op.inputs[0]][:-1]:
                rows *= s
            macs += rows * n * k
        elif op.type == "matmul":
            xs, ys = shapes[op.inputs[0]], shapes[op.inputs[1]]
            b = 1
            for s in xs[:-2]:
                b *= s
            macs += b * xs[-2] * xs[-1] * ys[-1]
    return macs


def prepare(model_name: str, bits: str, n_images: int):
    """(quantized model, compiled program, HwConfig, AccelConfig, float images) for a run."""
    w_bits = 4 if bits == "w4a8" else 8
    if model_name == "digits":
        hw, accel = GenConfig.load(DEFAULT_CONFIG).hw, AccelConfig()
        imgs = datasets.digits_set(calib=64, images=n_images, seed=0)
        q = quantize_model(models.load_model("digits"), "digits", imgs.calib, QuantConfig(w_bits=w_bits))
        images = imgs.images
    else:
        torch.manual_seed(0)
        model = models.load_model(DEIT)
        spec, _ = vit_float.extract(model)
        calib = datasets.random_images(spec, 2, seed=0)
        images = datasets.random_images(spec, 1, seed=1)
        q = quantize_model(model, DEIT, calib, QuantConfig(w_bits=w_bits, calib_images=2, seed=0))
        # the synthesized accelerator's array shape and multiplier kind, widths grown to the graph's
        hw, accel = derive_hw([q.graph], base=GenConfig.load(DEFAULT_CONFIG).hw), DEIT_ACCEL
    return q, compile(q.graph, hw, accel), hw, accel, images


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits", choices=["digits", DEIT])
    ap.add_argument("--bits", default="w8a8", choices=["w8a8", "w4a8"])
    ap.add_argument("--images", type=int, default=20, help="digits test images (deit: always 1)")
    args = ap.parse_args()
    t0 = time.time()
    q, program, hw, accel, images = prepare(args.model, args.bits, args.images)
    x = q.quantize_input(images)
    golden = run_graph(q.graph, x)
    h = header(program.image)
    nbytes = h["logits_count"] << h["logits_esize"]
    cases = []
    for i in range(len(x)):
        image = bytearray(program.image)
        write_input(image, x[i])
        cases.append(accel_run.Case(f"image{i}", bytes(image), h["program"], [(h["logits"], nbytes)],
                                    max_cycles=1 << 30))
    stats = run(bytearray(cases[0].image), hw, accel)   # the program's external traffic (interpreter)
    words = max(accel_run.WORDS, 1 << ((len(program.image) - 1) // 8).bit_length())
    b = accel_run.build(hw, accel, words=words)
    t1 = time.time()
    results = accel_run.run_cases(b, cases, f"accel_{args.model}_{args.bits}")
    t2 = time.time()
    equal = sum(torch.equal(accel_run.elements(r["read"][0], 1 << h["logits_esize"]), golden[i])
                for i, r in enumerate(results))
    cycles = [r["cycles"] for r in results]
    per_op = {}
    for r in results:
        for k, c in enumerate(r["op_cycles"]):
            if c:
                name = Opcode(k).name
                per_op[name] = per_op.get(name, 0) + c
    per_op = {k: round(v / len(results)) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}
    macs = gemm_macs(q.graph)
    bound = -(-macs // (hw.gemm_rows * hw.gemm_cols))
    mean = sum(cycles) / len(cycles)
    sim_s = sum(r["wall_s"] for r in results)
    out = {"model": args.model, "bits": args.bits, "generator_sha256": generator_hash(), "hw": dataclasses.asdict(hw),
           "accel": dataclasses.asdict(accel), "images": len(results), "logits_equal_golden": equal,
           "cycles_per_image": round(mean), "cycles_min": min(cycles), "cycles_max": max(cycles),
           "gemm_macs": macs, "gemm_bound_cycles": bound, "ratio_to_gemm_bound": round(mean / bound, 2),
           "per_op_cycles": per_op, "array": f"{hw.gemm_rows}x{hw.gemm_cols}",
           "ext_bytes_read_per_image": stats.ext_read, "ext_bytes_written_per_image": stats.ext_written,
           "ext_traffic_note": "bytes the program reads and writes (interpreter count, instruction fetch "
                               "included); the RTL fetches whole 8-byte words for narrower elements",
           "sim_cycles_per_second": round(sum(cycles) / sim_s), "sim_seconds": round(sim_s, 1),
           "build_seconds": round(b.seconds, 1), "run_seconds": round(t2 - t1, 1),
           "total_seconds": round(time.time() - t0, 1),
           "memory": "memory model inside the design (latency 4, no back-pressure), behind the AXI4 master"}
    rows = [("images, RTL logits = golden", f"{equal}/{len(results)}"),
            ("cycles per image", f"{out['cycles_per_image']:,}"),
            (f"GEMM-bound minimum (MACs / {out['array']})", f"{bound:,}"),
            ("ratio to the GEMM bound", f"{out['ratio_to_gemm_bound']}"),
            *[(f"  {k}", f"{v:,}") for k, v in per_op.items()],
            ("external bytes read / written per image", f"{stats.ext_read:,} / {stats.ext_written:,}"),
            ("simulated cycles per second", f"{out['sim_cycles_per_second']:,}"),
            ("simulation seconds (all images)", f"{out['sim_seconds']}")]
    title = f"{args.model} {args.bits} on the RTL accelerator ({len(results)} image{'s' if len(results) > 1 else ''})"
    print_metrics(title, rows)
    base = os.path.join("reports", f"accel_{args.model}_{args.bits}")
    write_json(base + ".json", out)
    write_text(base + ".md", metrics_markdown(
        f"# {title}\n\nOne compiled program (hwgen.accel.compiler) on the AXI accelerator "
        f"(hwgen.accel.axi), Verilator, memory: {out['memory']}.  Command: "
        f"`python scripts/accel_model.py --model {args.model} --bits {args.bits}"
        f"{f' --images {args.images}' if args.model == 'digits' else ''}`.  "
        f"External traffic: {out['ext_traffic_note']}.", rows))
    return 0 if equal == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
