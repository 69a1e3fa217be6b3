"""The approximation library: exactness properties and error bounds against float."""
import math

import pytest
import torch

from golden.dyadic import RangeError
from golden.gelu import GELU_VARIANTS, build_gelu, fit_erf_poly, gelu_int, gelu_reference
from golden.layernorm import build_layernorm, layernorm_int, layernorm_reference
from golden.softmax import EXP_FRAC_BITS, EXP_VARIANTS, exp_coefficients, float_exp, float_softmax, shift_exp, shift_softmax

ALL_X16 = torch.arange(-65535, 1)
# max |error| / 2^C over the whole 16-bit domain at f = 10 (measured: 0.0443, 0.0029, 0.0029)
EXP_BOUND = {"linear": 0.046, "ibert": 0.004, "shiftfit": 0.004}


@pytest.mark.parametrize("variant", EXP_VARIANTS)
def test_shift_exp_whole_domain(variant):
    e = shift_exp(ALL_X16, 10, variant)
    assert int(e[-1]) == 1 << EXP_FRAC_BITS                  # e^0 = 1 exactly
    assert bool((e[1:] >= e[:-1]).all())                       # monotonic in x
    err = (e - float_exp(ALL_X16, 10)).abs().max() / 2 ** EXP_FRAC_BITS
    assert err < EXP_BOUND[variant]


def test_shiftfit_better_than_linear_and_shift_friendly():
    lin = (shift_exp(ALL_X16, 10, "linear") - float_exp(ALL_X16, 10)).abs().max()
    fit = (shift_exp(ALL_X16, 10, "shiftfit") - float_exp(ALL_X16, 10)).abs().max()
    assert fit < lin / 10
    k2, k1, k0 = exp_coefficients("shiftfit", 6)
    assert (k2, k1, k0) == (11, -43, 64) and k2 + k1 + k0 == 32    # exact at t = 1: 2^-1


def test_softmax_rows():
    f = 8
    ones = torch.zeros(1, 197, dtype=torch.int64)
    out = shift_softmax(ones, f, "shiftfit")
    assert len(set(out.flatten().tolist())) == 1                  # all-equal row -> uniform
    hot = torch.full((1, 5), -32768, dtype=torch.int64)
    hot[0, 2] = 32767
    assert shift_softmax(hot, f, "shiftfit")[0].tolist() == [0, 0, 255, 0, 0]
    single = shift_softmax(torch.tensor([[123]]), f, "linear")
    assert single.tolist() == [[255]]


@pytest.mark.parametrize("variant", EXP_VARIANTS)
def test_softmax_close_to_float(variant):
    g = torch.Generator().manual_seed(5)
    s = torch.randint(-3000, 3000, (64, 197), generator=g)
    got = shift_softmax(s, 10, variant)
    ref = float_softmax(s, 10)
    assert float((got - ref).abs().max()) < (6 if variant == "linear" else 1.5)
    assert int(got.min()) >= 0 and int(got.max()) <= 255


@pytest.mark.parametrize("variant", GELU_VARIANTS)
@pytest.mark.parametrize("s_in,s_out", [(0.05, 0.04), (0.02, 0.012)])
def test_gelu_whole_int8_domain(variant, s_in, s_out):
    built = build_gelu(variant, s_in, s_out, 8, 8)
    q = torch.arange(-128, 128)
    got = gelu_int(q, built["attrs"], built["consts"])
    ref = gelu_reference(q, s_in, s_out).clamp(-128, 127)
    err = float((got - ref).abs().max())
    bound = {"lut": 0.5, "iptq": 2.0, "ibert": 3.0, "ishift": 4.0}[variant]
    assert err <= bound, f"{variant}: {err}"


def test_iptq_fit_beats_ibert_on_erf():
    t = torch.linspace(0, 4.0, 2001, dtype=torch.float64)

    def poly(a, b, d):
        return a * (torch.clamp(t, max=-b) + b) ** d + 1

    a, b = fit_erf_poly(4.0, 4)
    err_iptq = float(((poly(a, b, 4) - torch.erf(t)) ** 2).mean())
    err_ibert = float(((poly(-0.2888, -1.769, 2) - torch.erf(t)) ** 2).mean())
    assert err_iptq < err_ibert / 4


def test_lut_refuses_wide_input():
    with pytest.raises(RangeError, match="at most 10"):
        build_gelu("lut", 0.01, 0.01, 12, 8)


def test_layernorm_zero_variance_and_extremes():
    g = torch.Generator().manual_seed(7)
    gamma = torch.rand(192, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(192, generator=g, dtype=torch.float64)
    built = build_layernorm(gamma, beta, 0.03, 8)
    flat = torch.full((3, 192), 1234, dtype=torch.int64)
    flat[1] = -32768
    flat[2] = 32767
    out = layernorm_int(flat, built["attrs"], built["consts"])
    want = torch.round(beta / 0.03).clamp(-128, 127)
    assert (out - want).abs().max() <= 1          # beta alone, no division by zero
    alt = torch.tensor([[32767, -32768] * 96])      # largest variance at 16 bits
    out = layernorm_int(alt, built["attrs"], built["consts"])
    ref = layernorm_reference(alt, 1.0, gamma, beta, 0.03).clamp(-128, 127)
    assert float((out - ref).abs().max()) <= 1.0


def test_layernorm_random_rows_close_to_float():
    g = torch.Generator().manual_seed(8)
    for c in (64, 192):
        gamma = torch.randn(c, generator=g, dtype=torch.float64)
        beta = torch.randn(c, generator=g, dtype=torch.float64) * 0.1
        x = torch.randint(-20000, 20000, (50, c), generator=g)
        built = build_layernorm(gamma, beta, 0.05, 8)
        out = layernorm_int(x, built["attrs"], built["consts"])
        ref = layernorm_reference(x, 1e-3, gamma, beta, 0.05).clamp(-128, 127)
        assert float((out - ref).abs().max()) <= 1.0
        assert math.isfinite(float(ref.sum()))


def test_iptq_fit_keeps_the_clip_point_inside_its_integer_field():
    """A narrow calibration range can favour a clip point far outside the inputs; the fit is
    held to qb < 2^(in_bits + QB_EXTRA_BITS), the GELU unit's field (a random-weight ViT hit
    qb = 1042 against 10 bits before)."""
    from golden.gelu import QB_EXTRA_BITS, build_gelu, fit_erf_poly

    free_a, free_b = fit_erf_poly(0.05 / 2 ** 0.5)
    built = build_gelu("iptq", 0.001, 0.001, 8, 8, calib_absmax=0.05)
    assert -free_b / (0.001 / 2 ** 0.5) >= 1 << (8 + QB_EXTRA_BITS)      # unconstrained: it would not fit
    assert built["attrs"]["qb"] < 1 << (8 + QB_EXTRA_BITS)
