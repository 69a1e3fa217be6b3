"""Per-layer approximation choice (issue 11): the per-layer iptq fit, the Omega score and
its plan, and plan files on the command line."""
import json
import math

import pytest
import torch

from golden.executor import run_graph
from golden.gelu import build_gelu, calib_fit_points, gelu_float, gelu_int, gelu_reference


# --- the iptq GELU fitted per layer ----------------------------------------------------------

def _poly_gelu_sq_error(a: float, b: float, d: int, counts: torch.Tensor, s_in: float) -> float:
    """Float squared GELU error of the erf polynomial (a, b, d), summed over the levels the
    calibration saw (each weighed by how often it was seen)."""
    half = len(counts) // 2
    x = (torch.arange(len(counts), dtype=torch.float64) - half) * s_in
    t = x.abs() / math.sqrt(2.0)
    erf = torch.sign(x) * (a * (torch.clamp(t, max=-b) + b) ** d + 1)
    err = 0.5 * x * (1 + erf) - gelu_float(x)
    return float((counts.double() * err ** 2).sum())


def test_iptq_fit_is_per_layer_and_fits_calibration_better(digits_w8a8, digits_images):
    q = digits_w8a8
    gelus = q.graph.ops_of("gelu")
    assert len(gelus) >= 2 and all(op.attrs["variant"] == "iptq" for op in gelus)
    # each layer's (a, b) and integer constants are its own
    fits = {(round(op.meta["a"], 9), round(op.meta["b"], 9)) for op in gelus}
    assert len(fits) == len(gelus)
    assert len({(op.attrs["qb"], op.attrs["qc"], op.attrs["sh"]) for op in gelus}) == len(gelus)
    _, env = run_graph(q.graph, q.quantize_input(digits_images.calib), keep=True)
    total_layer = total_full = 0.0
    for op in gelus:
        counts = q.tq[op.inputs[0]].counts
        assert op.meta["fit"] == "calibration data"
        s_in, s_out = op.meta["s_in"], op.meta["s_out"]
        full = build_gelu("iptq", s_in, s_out, op.attrs["in_bits"], op.attrs["out_bits"])
        assert full["meta"]["fit"] == "representable range"
        d = op.attrs["degree"]
        # the float polynomial: the layer's fit is the better one on the layer's calibration data
        err_layer = _poly_gelu_sq_error(op.meta["a"], op.meta["b"], d, counts, s_in)
        err_full = _poly_gelu_sq_error(full["meta"]["a"], full["meta"]["b"], d, counts, s_in)
        assert err_layer < err_full, (op.name, err_layer, err_full)
        # the integer unit, on the activations the calibration images produce
        x = env[op.inputs[0]]
        ref = gelu_reference(x, s_in, s_out).clamp(-128, 127)
        total_layer += float(((gelu_int(x, op.attrs, op.consts) - ref) ** 2).sum())
        total_full += float(((gelu_int(x, full["attrs"], full["consts"]) - ref) ** 2).sum())
    assert total_layer < total_full


def test_calib_fit_points_weigh_by_output_error():
    counts = torch.zeros(256, dtype=torch.int64)
    counts[128 + 10] = 3
    counts[128 - 20] = 1
    t, w, t_max = calib_fit_points(counts, 0.1)
    assert sorted(t.tolist()) == pytest.approx(sorted([1.0 / math.sqrt(2), 2.0 / math.sqrt(2)]))
    assert t_max == pytest.approx(2.0 / math.sqrt(2))
    assert sorted(w.tolist()) == pytest.approx(sorted([3 * 0.5, 1 * 2.0]))
