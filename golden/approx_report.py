"""Error of every approximation variant against its float function, on the activations
that calibration saw (max absolute error and MSE, in output units, i.e. output LSBs).

The integer inputs come from running the integer graph on the calibration images; each
variant is built for each layer's own scales and compared with the float function of the
same dequantized input.  ``iptq`` is fitted to each layer's calibration data, as the
integer graph builds it.
"""

from __future__ import annotations

import math

import torch

from .executor import run_graph
from .gelu import GELU_VARIANTS, build_gelu, gelu_int, gelu_reference
from .intops import signed_range, unsigned_range
from .layernorm import layernorm_int, layernorm_reference
from .quantize import Quantized
from .softmax import EXP_VARIANTS, float_softmax, shift_softmax


def _err(got: torch.Tensor, ref: torch.Tensor, lo: int, hi: int) -> tuple[float, float]:
    """Error against the float function clamped to the output range (saturation is the
    quantizer's, not the approximation's)."""
    d = got.double() - ref.clamp(lo, hi)
    return float(d.abs().max()), float((d * d).mean())


def _accumulate(rows: dict, key: tuple, layer: str, got, ref, lo: int, hi: int) -> None:
    mx, mse = _err(got, ref, lo, hi)
    row = rows.setdefault(key, {"op": key[0], "variant": key[1], "max_abs_err": 0.0, "mse": 0.0,
                                "values": 0, "layers": {}})
    n = got.numel()
    row["mse"] = (row["mse"] * row["values"] + mse * n) / (row["values"] + n)
    row["values"] += n
    row["max_abs_err"] = max(row["max_abs_err"], mx)
    row["layers"][layer] = {"max_abs_err": mx, "mse": mse}


def variant_outputs(q: Quantized, calib: torch.Tensor, layernorm: bool = True):
    """Every variant of every GELU and Softmax layer (and each LayerNorm) on the activations
    the calibration images produce: yields ``(op_type, layer, variant, got, ref, lo, hi)``,
    ``got`` the integer output, ``ref`` the float function of the same dequantized input in
    output units, ``lo..hi`` the output range."""
    g = q.graph
    _, env = run_graph(g, q.quantize_input(calib), keep=True)
    for op in g.ops_of("gelu"):
        x = env[op.inputs[0]]
        s_in, s_out = op.meta["s_in"], op.meta["s_out"]
        ref = gelu_reference(x, s_in, s_out)
        for variant in GELU_VARIANTS:
            tap = q.tq.get(op.inputs[0])
            built = build_gelu(variant, s_in, s_out, op.attrs["in_bits"], op.attrs["out_bits"],
                               calib_counts=tap.counts if tap is not None else None)
            yield ("gelu", op.name, variant, gelu_int(x, built["attrs"], built["consts"]), ref,
                   *signed_range(op.attrs["out_bits"]))
    for op in g.ops_of("softmax"):
        s = env[op.inputs[0]]
        ref = float_softmax(s, op.attrs["f"], op.attrs["out_bits"])
        for variant in EXP_VARIANTS:
            got = shift_softmax(s, op.attrs["f"], variant, op.attrs["out_bits"], op.attrs["recip_bits"])
            yield ("softmax", op.name, variant, got, ref, *unsigned_range(op.attrs["out_bits"]))
    if not layernorm:
        return
    prm = q.prm
    for op in g.ops_of("layernorm"):
        x = env[op.inputs[0]]
        ref = layernorm_reference(x, op.meta["s_in"], prm[f"{op.name}.weight"], prm[f"{op.name}.bias"],
                                  op.meta["s_out"], q.spec.eps)
        yield ("layernorm", op.name, "isqrt", layernorm_int(x, op.attrs, op.consts), ref,
               *signed_range(op.attrs["out_bits"]))


def sqnr_db(got: torch.Tensor, ref: torch.Tensor, lo: int, hi: int) -> float:
    """10 log10(signal power / error power) of ``got`` against ``ref`` clamped to lo..hi
    (saturation is the quantizer's, not the approximation's); inf when they are equal."""
    ref = ref.clamp(lo, hi)
    noise = float(((got.double() - ref) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0.0:
        return float("inf")
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def approximation_errors(q: Quantized, calib: torch.Tensor) -> list[dict]:
    rows: dict = {}
    for kind, layer, variant, got, ref, lo, hi in variant_outputs(q, calib):
        _accumulate(rows, (kind, variant), layer, got, ref, lo, hi)
    return list(rows.values())


def to_markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| op | variant | max abs error (LSB) | MSE (LSB²) | values |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['variant']} | {r['max_abs_err']:.3f} | {r['mse']:.4f} | {r['values']:,} |")
    return "\n".join(lines) + "\n"
