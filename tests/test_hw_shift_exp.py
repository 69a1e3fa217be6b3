"""Bit-exactness of the shift exponential unit (hwgen.shift_exp.ShiftExp) against the golden
:func:`golden.softmax.shift_exp`, on RTL (cocotb, Verilator), with ``f`` loaded at run time.

* ONE build holds every variant at the configuration's lanes (HwConfig().lanes) and a
  4-lane unit; each unit runs, in ONE simulation, every ``f`` the digits model uses (every
  Softmax layer's ``f`` at W8A8 and W4A8, and GELU 'ishift' ``fy`` where a layer has one)
  and ``f`` at the unit's limits (1 and ``max_f``), each over the WHOLE 17-bit input domain
  x in [-65536, 0]; the constants switch between layers on the ``c`` stream (beats from the
  unit's own ``const_beats``), each presented together with the next layer's first data
  beat (the unit must take the constants first);
* random gaps in valid and random back-pressure after the first layer; latency and
  throughput measured on the first layer and compared with the documented figures, and the
  constant-loading time (drain, then one cycle);
* a corrupted constant beat (one bit of ``f`` flipped by the testbench) and a deliberately
  broken unit (one output value off by one) are caught: the scoreboard reports the
  mismatch;
* Verilator -Wall lint; ``const_beats`` refusals; ``from_config``.

Expected values always come from golden.softmax.shift_exp; the testbench only compares.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from amaranth.hdl import Module
from amaranth.lib import wiring

from golden.errors import UserError
from golden.softmax import EXP_VARIANTS, shift_exp
from hwgen.config import HwConfig
from hwgen.shift_exp import SHIFT_EXP_LATENCY, ShiftExp
from hwgen.verilog import Harness, emit_verilog, lint
from sim import runner
from sim.tb_softmax import const_unit_data

TB = "sim.tb_softmax"
DOMAIN = (-(1 << 16), 0)            # 17-bit signed input, x <= 0: 65,537 values
CHUNK = 4096                        # elements per "row" of the testbench (timing records)
WIDE_LANES = 4
TRAFFIC = dict(gap_prob=0.1, stall_prob=0.15, burst_prob=0.0005, burst_max=60, with_data=True)


class BrokenShiftExp(wiring.Component):
    """A ShiftExp whose output is off by one for exactly one output value (a deliberate bug)."""

    def __init__(self, bad_value: int, **kwargs):
        self.inner = ShiftExp(**kwargs)
        self.bad_value = bad_value
        for k in ("variant", "in_bits", "frac_bits", "lanes", "max_f", "latency"):
            setattr(self, k, getattr(self.inner, k))
        super().__init__(self.inner.signature)

    def const_beats(self, attrs, consts=None):
        return self.inner.const_beats(attrs, consts)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = u = self.inner
        wiring.connect(m, wiring.flipped(self.c), u.c)
        wiring.connect(m, wiring.flipped(self.i), u.i)
        m.d.comb += [self.o.valid.eq(u.o.valid), u.o.ready.eq(self.o.ready)]
        for k in range(self.lanes):
            v = u.o.payload[k]
            m.d.comb += self.o.payload[k].eq(v ^ (v == self.bad_value))
        return m


def _model_fs(*quantized) -> list[int]:
    """Every f of the models' Softmax layers and fy of their GELU 'ishift' layers."""
    fs = set()
    for q in quantized:
        for op in q.graph.ops:
            if op.type == "softmax":
                fs.add(op.attrs["f"])
            elif op.type == "gelu" and op.attrs.get("variant") == "ishift":
                fs.add(op.attrs["fy"])
    return sorted(fs)


def _domain(lanes: int) -> list[int]:
    xs = list(range(DOMAIN[1], DOMAIN[0] - 1, -1))
    while len(xs) % lanes:
        xs.append(xs[len(xs) % lanes])       # pad to whole beats, inside the domain
    return xs


def _segments(unit, fs: list[int], xs: list[int]) -> list[dict]:
    segs = []
    for f in fs:
        expected = shift_exp(torch.tensor(xs), f, unit.variant, unit.frac_bits).tolist()
        rows = [xs[k:k + CHUNK] for k in range(0, len(xs), CHUNK)]
        exp_rows = [expected[k:k + CHUNK] for k in range(0, len(xs), CHUNK)]
        segs.append({"const": unit.const_beats({"f": f, "variant": unit.variant}, {}), "rows": rows,
                     "expected": exp_rows, "f": f})
    return segs


def _units() -> dict:
    cfg = HwConfig()
    units = {f"exp_{v}": ShiftExp.from_config(cfg, v) for v in EXP_VARIANTS}
    units["exp_wide"] = ShiftExp("shiftfit", lanes=WIDE_LANES)
    units["exp_bad"] = BrokenShiftExp(_bad_value(), variant="shiftfit")
    return units


def _bad_value() -> int:
    """An output value that occurs for few inputs at f = 10 (the broken unit gets it wrong)."""
    return int(shift_exp(torch.tensor([-3000]), 10, "shiftfit")[0])


@pytest.fixture(scope="module")
def exp_build():
    units = _units()
    b = runner.build(Harness(units), "shift_exp_harness", {"lanes": [u.lanes for u in units.values()]})
    return units, b


@pytest.fixture(scope="module")
def main_run(exp_build, digits_w8a8, digits_w4a8):
    units, b = exp_build
    fs_model = _model_fs(digits_w8a8, digits_w4a8)
    data = {"seed": 11, "units": []}
    for name in [f"exp_{v}" for v in EXP_VARIANTS] + ["exp_wide"]:
        u = units[name]
        fs = fs_model + [1, u.max_f]
        segs = _segments(u, fs, _domain(u.lanes))
        data["units"].append(const_unit_data(name, u, segs, clean_rows=len(segs[0]["rows"]), **TRAFFIC))
    res = runner.run(b, TB, data, "exhaustive")
    return res, units, b, data, fs_model


def _by_name(res: dict) -> dict:
    return {u["name"]: u for u in res.get("units", [])}


@pytest.mark.parametrize("name", [f"exp_{v}" for v in EXP_VARIANTS] + ["exp_wide"])
def test_shift_exp_exhaustive(main_run, name):
    res, units, b, data, fs_model = main_run
    u = units[name]
    ud = next(x for x in data["units"] if x["name"] == name)
    r = _by_name(res)[name]
    # (the segments are f = 1, max_f and every f the model uses, by construction in main_run;
    # what can change is the model's f values, checked here, and what the bench compared, below)
    assert fs_model and set(fs_model) >= {9, 10, 12}
    fs = [s["f"] for s in ud["segments"]]
    assert r["mismatches"] == 0, r["message"]
    n = sum(len(row) for s in ud["segments"] for row in s["expected"])
    assert r["checked"] == n and r["received_beats"] == r["beats"] == r["sent_beats"], r["message"]
    domain = DOMAIN[1] - DOMAIN[0] + 1
    assert n >= domain * len(fs)
    assert r["output_held_cycles"] > 0 and r["input_stall_cycles"] > 0     # back-pressure reached the input
    assert r["data_taken_with_c_valid"] == 0
    # latency and throughput on the clean first layer: as documented
    assert r["latency"] == r["latency_max_clean"] == u.latency == SHIFT_EXP_LATENCY + 2, r
    assert r["throughput_beats_per_cycle"] == 1.0 and r["throughput_elements_per_cycle"] == u.lanes, r
    # constants: the first load takes one cycle; the second waits until the first layer has
    # drained (its last output is taken `latency` cycles after its last input), then one cycle
    c = r["c_accept"]
    assert c[0] == [0] and all(len(x) == 1 for x in c)
    last_in_0 = r["per_row"][len(ud["segments"][0]["rows"]) - 1]["in_last"]
    assert c[1][0] - last_in_0 == u.latency + 1, (c[1], last_in_0)
    print(f"{name} ({u.lanes} lane(s), {u.variant}): f in {fs}, all {domain} inputs x in [{DOMAIN[0]}, 0] each "
          f"({r['checked']} elements) bit-exact under gaps and back-pressure; latency {r['latency']} cycles, "
          f"{r['throughput_elements_per_cycle']} elements/cycle; f switched in {c[1][0] - last_in_0} cycles after "
          f"the last input; build {b.seconds:.1f}s, run {res['seconds']}s, {res.get('cycles')} cycles")
    assert res["failed"] == 0


def test_corrupted_constant_and_broken_unit_are_caught(exp_build):
    """One bit of one ``c`` beat flipped (f = 10 sent as 11 in the second layer) and a unit
    that gets one output value wrong: the scoreboard must report both, naming the first
    mismatch."""
    units, b = exp_build
    xs = list(range(0, -50001, -1))
    good = units["exp_shiftfit"]
    segs = _segments(good, [12, 10], xs)
    d_good = const_unit_data("exp_shiftfit", good, segs, corrupt={"segment": 1, "beat": 0, "bit": 0})
    bad = units["exp_bad"]
    d_bad = const_unit_data("exp_bad", bad, _segments(bad, [10], xs))
    res = runner.run(b, TB, {"seed": 3, "units": [d_good, d_bad]}, "caught")
    assert res["failed"] == 1
    rg, rb = _by_name(res)["exp_shiftfit"], _by_name(res)["exp_bad"]
    # the corrupted constant: layer 0 is clean, layer 1 (f 10 -> 11) mismatches
    assert rg["mismatches"] > 0 and rg["first_mismatch"]["segment"] == 1, rg["message"]
    first = rg["first_mismatch"]
    assert first["expected"] == segs[1]["expected"][first["row"]][first["index"]] != first["got"]
    # the broken unit: exactly the inputs whose output is the bad value
    exp = torch.tensor(d_bad["segments"][0]["expected"][0] if len(d_bad["segments"][0]["expected"]) == 1
                       else sum(d_bad["segments"][0]["expected"], []))
    n_bad = int((exp == bad.bad_value).sum())
    assert n_bad > 0 and rb["mismatches"] == n_bad, rb["message"]
    assert rb["first_mismatch"]["expected"] == bad.bad_value and rb["first_mismatch"]["got"] == bad.bad_value ^ 1
    assert "waveform" in res and Path(res["waveform"]).stat().st_size > 0
    print(f"caught: {rg['message']}; {rb['message']}")


# --- lint, constants, configuration --------------------------------------------------------------

def test_verilator_lint(tmp_path):
    """verilator --lint-only -Wall is clean (the Amaranth-style rules waived)."""
    tops = {f"shift_exp_{v}": ShiftExp(v, lanes=2) for v in EXP_VARIANTS}
    tops["shift_exp_narrow"] = ShiftExp("ibert", in_bits=12, frac_bits=10, max_f=6)
    for name, top in tops.items():
        path = tmp_path / f"{name}.v"
        text = emit_verilog(top, name)
        assert "/work/" not in text and "/home/" not in text
        path.write_text(text)
        rc, out = lint(path)
        assert rc == 0 and "%Warning" not in out and "%Error" not in out, f"{name}:\n{out}"


@pytest.mark.parametrize("attrs,needle", [
    ({"f": 0}, "shift_exp f = 0 does not fit the unit: needs 0 in 1..17, the unit takes f up to 17 (exp_in_bits 17)"),
    ({"f": 18}, "shift_exp f = 18 does not fit the unit"),
    ({"f": 10, "variant": "ibert"}, "shift_exp variant = 'ibert' does not fit the unit: needs 'ibert', the unit has "
                                    "'shiftfit'"),
    ({}, "shift_exp: the layer has no f"),
])
def test_const_beats_refuses(attrs, needle):
    u = ShiftExp("shiftfit")
    with pytest.raises(UserError) as exc:
        u.const_beats(attrs, {})
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    u._MustUse__silence = True


def test_const_beats_and_from_config():
    u = ShiftExp.from_config(HwConfig(lanes=2, exp_variant="ibert", exp_frac_bits=12, exp_in_bits=20))
    assert (u.lanes, u.variant, u.frac_bits, u.in_bits, u.max_f, u.f_bits) == (2, "ibert", 12, 20, 20, 5)
    assert u.const_beats({"f": 20}, {}) == [{"f": 20}] and u.const_beats({"f": 1}, {}) == [{"f": 1}]
    assert [n for n, _ in u.c.payload.shape()] == ["f"]
    assert u.latency == SHIFT_EXP_LATENCY + 2 == 10
    u._MustUse__silence = True
