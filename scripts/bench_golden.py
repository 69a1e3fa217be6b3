"""Benchmark: golden integer inference of deit_tiny_patch16_224 (random weights, 224x224,
batch 8) against timm's FP32 forward, in one run, as a ratio.  Writes reports/bench_golden.*"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from golden import datasets, models, vit_float  # noqa: E402
from golden.atomic import write_json, write_text  # noqa: E402
from golden.executor import run_graph  # noqa: E402
from golden.quantize import QuantConfig, quantize_model  # noqa: E402

NAME, BATCH, REPEATS = "deit_tiny_patch16_224", 8, 5


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    model = models.load_model(NAME)
    spec, _ = vit_float.extract(model)
    images = datasets.random_images(spec, BATCH, seed=0)
    q = quantize_model(model, NAME, images, QuantConfig(w_bits=8, calib_images=BATCH))
    x = q.quantize_input(images)
    with torch.no_grad():
        fp = timed(lambda: model(images), REPEATS)
        it = timed(lambda: run_graph(q.graph, x), REPEATS)
    fp_s, int_s = statistics.median(fp), statistics.median(it)
    res = {"model": NAME, "batch": BATCH, "image_size": spec.img_size, "repeats": REPEATS,
           "fp32_seconds": fp_s, "integer_seconds": int_s, "ratio_integer_over_fp32": int_s / fp_s,
           "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "cpus": os.cpu_count()}
    write_json("reports/bench_golden.json", res)
    write_text("reports/bench_golden.md",
               f"| model | batch | FP32 s (median of {REPEATS}) | integer s | integer / FP32 |\n"
               f"| --- | ---: | ---: | ---: | ---: |\n"
               f"| {NAME} | {BATCH} | {fp_s:.3f} | {int_s:.3f} | {int_s / fp_s:.2f}x |\n")
    table = Table(title=f"golden integer vs timm FP32, {NAME}, batch {BATCH}, {torch.get_num_threads()} threads")
    for col in ("FP32 s", "integer s", "integer / FP32"):
        table.add_column(col, justify="right")
    table.add_row(f"{fp_s:.3f}", f"{int_s:.3f}", f"{int_s / fp_s:.2f}x")
    Console().print(table)
    print("wrote reports/bench_golden.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
