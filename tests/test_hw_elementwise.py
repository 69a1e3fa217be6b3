"""Bit-exactness of the element-wise units against the golden functions, on RTL (cocotb).

* GELU, all four variants, every int8 input, for two realistic scale pairs;
* shift exponential, all three variants, every x in [-65536, 0] (17-bit signed input), f = 10;
* residual add: random values plus the extremes of both inputs;
* a deliberately wrong constant is caught (and leaves a waveform);
* the same testbench on Icarus (skipped only when iverilog is not installed);
* Verilator -Wall lint of the emitted Verilog, and the configuration checks.

Expected values always come from the golden functions (golden.gelu.gelu_int,
golden.softmax.shift_exp, golden.executor.run_add); the testbench (sim/tb_stream.py) only
compares.  Several configurations share one simulator build (hwgen.verilog.Harness), and
builds are cached under sim_build/ by a hash of their Verilog.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from golden.errors import UserError
from golden.executor import run_add
from golden.gelu import GELU_VARIANTS, build_gelu, gelu_int
from golden.graph import Op
from golden.softmax import EXP_VARIANTS, shift_exp
from hwgen.config import HwConfig
from hwgen.gelu import Gelu
from hwgen.residual_add import ResidualAdd
from hwgen.shift_exp import ShiftExp
from hwgen.verilog import Harness, emit_verilog, lint
from sim import runner

TB = "sim.tb_stream"
GELU_LANES = 4
EXP_LANES = 16
EXP_F = 10
EXP_DOMAIN = (-(1 << 16), 0)        # 17-bit signed input, x <= 0: 65,537 values
# two realistic (s_in, s_out, calib_absmax) of a ViT MLP: FC1 output -> GELU output
GELU_SCALES = {"a": (0.05, 0.02, 5.0), "b": (0.1, 0.05, 9.0)}
GELU_EXP_VARIANT = {"a": "linear", "b": "shiftfit"}     # ishift's exponential


def _pad(values: list[int], lanes: int) -> list[int]:
    """Pad to whole beats by repeating values from the start (still inside the domain)."""
    out = list(values)
    k = 0
    while len(out) % lanes:
        out.append(values[k])
        k += 1
    return out


def _unit(name, lanes, latency, inputs, out_bits, out_signed, expected, *, gap=0.0, stall=0.0, clean=None):
    return {"name": name, "prefix": f"{name}__", "lanes": lanes, "latency": latency,
            "inputs": inputs, "output": {"port": "o", "bits": out_bits, "signed": out_signed},
            "expected": expected, "gap_prob": gap, "stall_prob": stall,
            "clean_beats": clean if clean is not None else 1 << 30}


def _by_name(result: dict) -> dict:
    return {u["name"]: u for u in result.get("units", [])}


def _assert_timing(r: dict, latency: int, lanes: int) -> None:
    assert r["latency"] == latency, f"{r['name']}: measured latency {r['latency']}, documented {latency}"
    assert r["throughput_beats_per_cycle"] == 1.0, r
    assert r["throughput_elements_per_cycle"] == lanes, r


# --- GELU --------------------------------------------------------------------------------

def _gelu_layers():
    layers = {}
    for variant in GELU_VARIANTS:
        for tag, (s_in, s_out, absmax) in GELU_SCALES.items():
            layers[f"gelu_{variant}_{tag}"] = build_gelu(variant, s_in, s_out, 8, 8, calib_absmax=absmax,
                                                         exp_variant=GELU_EXP_VARIANT[tag])
    return layers


@pytest.fixture(scope="module")
def gelu_run():
    layers = _gelu_layers()
    units = {n: Gelu(l["attrs"], l["consts"], lanes=GELU_LANES) for n, l in layers.items()}
    b = runner.build(Harness(units), "gelu_harness", {"lanes": GELU_LANES})
    q = list(range(-128, 128))
    data = {"seed": 7, "units": []}
    for name, layer in layers.items():
        expected = gelu_int(torch.tensor(q), layer["attrs"], layer["consts"]).tolist()
        data["units"].append(_unit(name, GELU_LANES, units[name].latency,
                                   [{"port": "i", "bits": 8, "signed": True, "values": q}], 8, True, expected,
                                   gap=0.25, stall=0.3, clean=24))
    res = runner.run(b, TB, data, "exhaustive")
    return res, units, b


@pytest.mark.parametrize("variant", GELU_VARIANTS)
def test_gelu_exhaustive(gelu_run, variant):
    res, units, b = gelu_run
    by = _by_name(res)
    for tag in GELU_SCALES:
        name = f"gelu_{variant}_{tag}"
        r = by[name]
        assert r["mismatches"] == 0, r["message"]
        assert r["checked"] == 256, r
        _assert_timing(r, units[name].latency, GELU_LANES)
        print(f"{name}: {r['checked']} int8 inputs bit-exact; latency {r['latency']} cycles, "
              f"{r['throughput_elements_per_cycle']} elements/cycle ({GELU_LANES} lanes); "
              f"build {b.seconds:.1f}s, run {res['seconds']}s")
    assert res["failed"] == 0


# --- shift exponential -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exp_run():
    units = {f"exp_{v}": ShiftExp(EXP_F, v, in_bits=17, lanes=EXP_LANES) for v in EXP_VARIANTS}
    b = runner.build(Harness(units), "shift_exp_harness", {"lanes": EXP_LANES, "f": EXP_F})
    xs = _pad(list(range(EXP_DOMAIN[0], EXP_DOMAIN[1] + 1)), EXP_LANES)
    data = {"seed": 11, "units": []}
    for v in EXP_VARIANTS:
        expected = shift_exp(torch.tensor(xs), EXP_F, v).tolist()
        # back-pressure and gaps on the last ~1,100 beats only: the rest runs at full rate
        data["units"].append(_unit(f"exp_{v}", EXP_LANES, units[f"exp_{v}"].latency,
                                   [{"port": "i", "bits": 17, "signed": True, "values": xs}], 16, False, expected,
                                   gap=0.1, stall=0.2, clean=3000))
    res = runner.run(b, TB, data, "exhaustive")
    return res, units, b


@pytest.mark.parametrize("variant", EXP_VARIANTS)
def test_shift_exp_exhaustive(exp_run, variant):
    res, units, b = exp_run
    r = _by_name(res)[f"exp_{variant}"]
    assert r["mismatches"] == 0, r["message"]
    domain = EXP_DOMAIN[1] - EXP_DOMAIN[0] + 1
    assert r["checked"] >= domain
    _assert_timing(r, units[f"exp_{variant}"].latency, EXP_LANES)
    print(f"shift_exp {variant} f={EXP_F}: all {domain} inputs x in [{EXP_DOMAIN[0]}, 0] bit-exact "
          f"({r['checked']} elements with padding); latency {r['latency']} cycles, "
          f"{r['throughput_elements_per_cycle']} elements/cycle; build {b.seconds:.1f}s, run {res['seconds']}s")
    assert res["failed"] == 0


# --- residual add ------------------------------------------------------------------------

ADD_CONFIGS = {  # name: (a_bits, b_bits, out_bits, scale ratio a, scale ratio b)
    "add_16_8": (16, 8, 16, 0.8137, 3.21),
    "add_16_16": (16, 16, 16, 1.0, 0.4719),
}


def _add_attrs(ra: float, rb: float, out_bits: int) -> dict:
    from golden.dyadic import to_dyadic

    m_a, e_a = to_dyadic(ra)
    m_b, e_b = to_dyadic(rb)
    return {"out_bits": out_bits, "m_a": int(m_a[0]), "e_a": int(e_a[0]), "m_b": int(m_b[0]), "e_b": int(e_b[0])}


def test_residual_add():
    rng = random.Random(5)
    lanes = 2
    units, data = {}, {"seed": 3, "units": []}
    for name, (a_bits, b_bits, out_bits, ra, rb) in ADD_CONFIGS.items():
        attrs = _add_attrs(ra, rb, out_bits)
        units[name] = ResidualAdd.from_attrs(attrs, a_bits=a_bits, b_bits=b_bits, lanes=lanes)
        a_lo, a_hi = -(1 << (a_bits - 1)), (1 << (a_bits - 1)) - 1
        b_lo, b_hi = -(1 << (b_bits - 1)), (1 << (b_bits - 1)) - 1
        ext_a = [a_lo, a_lo + 1, -1, 0, 1, a_hi - 1, a_hi]
        ext_b = [b_lo, b_lo + 1, -1, 0, 1, b_hi - 1, b_hi]
        a = [x for x in ext_a for _ in ext_b] + [rng.randint(a_lo, a_hi) for _ in range(1500)]
        b = [y for _ in ext_a for y in ext_b] + [rng.randint(b_lo, b_hi) for _ in range(1500)]
        a, b = _pad(a, lanes), _pad(b, lanes)
        op = Op("add", name, ["a", "b"], ["o"], attrs)
        expected = run_add(op, torch.tensor(a), torch.tensor(b)).tolist()
        data["units"].append(_unit(name, lanes, units[name].latency,
                                   [{"port": "a", "bits": a_bits, "signed": True, "values": a},
                                    {"port": "b", "bits": b_bits, "signed": True, "values": b}],
                                   out_bits, True, expected, gap=0.2, stall=0.3, clean=200))
    b_ = runner.build(Harness(units), "residual_add_harness", {"lanes": lanes})
    res = runner.run(b_, TB, data, "random_extremes")
    for name in ADD_CONFIGS:
        r = _by_name(res)[name]
        assert r["mismatches"] == 0, r["message"]
        _assert_timing(r, units[name].latency, lanes)
        print(f"{name}: {r['checked']} random+extreme pairs bit-exact; latency {r['latency']} cycles, "
              f"{r['throughput_elements_per_cycle']} elements/cycle")
    assert res["failed"] == 0


# --- the testbench can fail ----------------------------------------------------------------

def test_wrong_constant_is_caught():
    """A GELU whose output multiplier is 1/16 too large must be reported, naming the first
    mismatch.  (m + 1 alone changes no int8 output of this layer: golden-checked below.)"""
    layer = build_gelu("ibert", 0.05, 0.02, 8, 8)
    wrong = dict(layer["attrs"], m=layer["attrs"]["m"] + layer["attrs"]["m"] // 16)
    assert not torch.equal(gelu_int(torch.arange(-128, 128), wrong, {}),
                           gelu_int(torch.arange(-128, 128), layer["attrs"], {}))
    dut = Gelu(wrong, layer["consts"], lanes=1)
    b = runner.build(Harness({"bad": dut}), "gelu_wrong_const", {})
    q = list(range(-128, 128))
    expected = gelu_int(torch.tensor(q), layer["attrs"], layer["consts"]).tolist()   # the right constants
    data = {"seed": 1, "units": [_unit("bad", 1, dut.latency, [{"port": "i", "bits": 8, "signed": True, "values": q}],
                                       8, True, expected)]}
    res = runner.run(b, TB, data, "wrong_constant")
    assert res["failed"] == 1
    r = _by_name(res)["bad"]
    first = r["first_mismatch"]
    assert r["mismatches"] > 0 and first["unit"] == "bad"
    assert set(first) == {"unit", "index", "input", "expected", "got"}
    assert first["expected"] != first["got"] and first["input"] == [q[first["index"]]]
    assert "waveform" in res and Path(res["waveform"]).stat().st_size > 0
    print(f"caught: {r['message']}; waveform {res['waveform']}")


# --- Icarus ------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog (Icarus Verilog) is not on PATH")
def test_icarus_smoke():
    layer = build_gelu("iptq", 0.05, 0.02, 8, 8, calib_absmax=5.0)
    units = {"gelu": Gelu(layer["attrs"], layer["consts"], lanes=2),
             "exp": ShiftExp(EXP_F, "shiftfit", lanes=2)}
    b = runner.build(Harness(units), "icarus_smoke", {}, simulator="icarus")
    q = list(range(-128, 128))
    xs = list(range(-3000, 1, 7))
    xs = _pad(xs, 2)
    data = {"seed": 2, "units": [
        _unit("gelu", 2, units["gelu"].latency, [{"port": "i", "bits": 8, "signed": True, "values": q}], 8, True,
              gelu_int(torch.tensor(q), layer["attrs"], layer["consts"]).tolist(), gap=0.2, stall=0.3, clean=20),
        _unit("exp", 2, units["exp"].latency, [{"port": "i", "bits": 17, "signed": True, "values": xs}], 16, False,
              shift_exp(torch.tensor(xs), EXP_F, "shiftfit").tolist(), gap=0.2, stall=0.3, clean=20)]}
    res = runner.run(b, TB, data, "smoke")
    for name, u in units.items():
        r = _by_name(res)[name]
        assert r["mismatches"] == 0, r["message"]
        _assert_timing(r, u.latency, 2)
    assert res["failed"] == 0


# --- lint and configuration --------------------------------------------------------------

def test_verilator_lint(tmp_path):
    """verilator --lint-only -Wall is clean on every unit (three Amaranth-style rules waived)."""
    layers = _gelu_layers()
    tops = {f"gelu_{v}": Gelu(layers[f"gelu_{v}_a"]["attrs"], layers[f"gelu_{v}_a"]["consts"], lanes=2)
            for v in GELU_VARIANTS}
    tops.update({f"shift_exp_{v}": ShiftExp(EXP_F, v, lanes=2) for v in EXP_VARIANTS})
    tops["residual_add"] = ResidualAdd.from_attrs(_add_attrs(0.8137, 3.21, 16), a_bits=16, b_bits=8, lanes=2)
    for name, top in tops.items():
        path = tmp_path / f"{name}.v"
        text = emit_verilog(top, name)
        assert "/work/" not in text and "/home/" not in text   # emit_src=False: no absolute paths
        path.write_text(text)
        rc, out = lint(path)
        assert rc == 0 and "%Warning" not in out and "%Error" not in out, f"{name}:\n{out}"


@pytest.mark.parametrize("field,value,needle", [
    ("lanes", 0, "lanes = 0 is out of range; accepted 1..64"),
    ("a_bits", 1, "a_bits = 1 is out of range; accepted 2..16"),
    ("softmax_max_row", 10000, "softmax_max_row = 10000 is out of range; accepted 2..4096"),
    ("exp_variant", "cubic", "exp_variant = 'cubic' is not accepted; accepted linear, ibert, shiftfit"),
    ("acc_bits", 12, "acc_bits = 12 is out of range; accepted 16..64"),
])
def test_config_rejects(field, value, needle):
    with pytest.raises(UserError) as exc:
        HwConfig(**{field: value})
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg


def test_config_defaults_and_derived():
    cfg = HwConfig()
    assert cfg.softmax_max_row == 256 and cfg.exp_frac_bits == 15 and cfg.lanes == 1
    assert cfg.exp_out_bits == 16
    assert cfg.max_k == ((1 << 31) - 1) // (1 << 14)
    cfg.check_gemm(192)
    with pytest.raises(UserError, match="does not fit acc_bits"):
        cfg.check_gemm(1 << 20)
    assert cfg.replace(lanes=8).lanes == 8
    with pytest.raises(UserError, match="unknown parameter"):
        cfg.replace(lane=8)
    se = ShiftExp.from_config(cfg.replace(lanes=2), f=EXP_F)
    assert se.lanes == 2 and se.variant == "shiftfit"
    se._MustUse__silence = True      # made only to check its parameters, never elaborated
