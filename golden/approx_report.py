"""Error of every approximation variant against its float function, on the activations
that calibration saw (max absolute error and MSE, in output units, i.e. output LSBs).

The integer inputs come from running the integer graph on the calibration images; each
variant is built for each layer's own scales and compared with the float function of the
same dequantized input.
"""

from __future__ import annotations

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


def _accumulate(rows: dict, key: tuple, layer: str, got, ref, out_bits: int, signed: bool = True) -> None:
    lo, hi = signed_range(out_bits) if signed else unsigned_range(out_bits)
    mx, mse = _err(got, ref, lo, hi)
    row = rows.setdefault(key, {"op": key[0], "variant": key[1], "max_abs_err": 0.0, "mse": 0.0,
                                "values": 0, "layers": {}})
    n = got.numel()
    row["mse"] = (row["mse"] * row["values"] + mse * n) / (row["values"] + n)
    row["values"] += n
    row["max_abs_err"] = max(row["max_abs_err"], mx)
    row["layers"][layer] = {"max_abs_err": mx, "mse": mse}


def approximation_errors(q: Quantized, calib: torch.Tensor) -> list[dict]:
    g = q.graph
    _, env = run_graph(g, q.quantize_input(calib), keep=True)
    rows: dict = {}
    for op in g.ops_of("gelu"):
        x = env[op.inputs[0]]
        s_in, s_out = op.meta["s_in"], op.meta["s_out"]
        ref = gelu_reference(x, s_in, s_out)
        for variant in GELU_VARIANTS:
            built = build_gelu(variant, s_in, s_out, op.attrs["in_bits"], op.attrs["out_bits"])
            _accumulate(rows, ("gelu", variant), op.name, gelu_int(x, built["attrs"], built["consts"]), ref,
                        op.attrs["out_bits"])
    for op in g.ops_of("softmax"):
        s = env[op.inputs[0]]
        ref = float_softmax(s, op.attrs["f"], op.attrs["out_bits"])
        for variant in EXP_VARIANTS:
            got = shift_softmax(s, op.attrs["f"], variant, op.attrs["out_bits"], op.attrs["recip_bits"])
            _accumulate(rows, ("softmax", variant), op.name, got, ref, op.attrs["out_bits"], signed=False)
    prm = q.prm
    for op in g.ops_of("layernorm"):
        x = env[op.inputs[0]]
        ref = layernorm_reference(x, op.meta["s_in"], prm[f"{op.name}.weight"], prm[f"{op.name}.bias"],
                                  op.meta["s_out"], q.spec.eps)
        _accumulate(rows, ("layernorm", "isqrt"), op.name, layernorm_int(x, op.attrs, op.consts), ref,
                    op.attrs["out_bits"])
    return list(rows.values())


def to_markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| op | variant | max abs error (LSB) | MSE (LSB²) | values |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['variant']} | {r['max_abs_err']:.3f} | {r['mse']:.4f} | {r['values']:,} |")
    return "\n".join(lines) + "\n"
