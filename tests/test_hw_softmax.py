"""Bit-exactness of the row Softmax unit (hwgen.softmax.Softmax) against the golden
:func:`golden.softmax.shift_softmax`, on RTL (cocotb).

* every exponential variant at f = 10, rows of every length 1..256 (the maximum), all-equal
  rows, one-hot rows, the most negative value (-32768) and extremes mixed, random rows;
  random gaps in valid and random back-pressure (single cycles and long bursts that fill the
  buffers and stall the input) on all but the first two rows;
* a second configuration (f = 5, max_row = 200, C = 12, R = 30, 12-bit outputs) including a
  row longer than max_row (closed by the unit at max_row elements);
* a deliberately wrong constant is caught, naming the first mismatch and leaving a waveform;
* the same testbench on Icarus (skipped only when iverilog is missing);
* Verilator -Wall lint of the emitted Verilog; the configuration checks;
* cycles per row of a 197-token row (measured, printed, and compared with the documented
  formula, not with a speed target).

Expected rows always come from golden.softmax.shift_softmax (sim/tb_softmax.py fills them
in); the testbench only compares.  The four units of the main run share one Verilator build
(hwgen.verilog.Harness), cached under sim_build/ by a hash of the Verilog.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from golden.errors import UserError
from golden.softmax import EXP_VARIANTS
from hwgen.config import HwConfig
from hwgen.softmax import Softmax
from hwgen.verilog import Harness, emit_verilog, lint
from sim import runner
from sim.tb_softmax import measure_softmax_cycles_per_row, softmax_unit_data

TB = "sim.tb_softmax"
F = 10
MAX_ROW = 256
LO, HI = -(1 << 15), (1 << 15) - 1
EXTREMES = (LO, LO + 1, -1, 0, 1, HI - 1, HI)
ALT = dict(f=5, variant="ibert", max_row=200, out_bits=12, recip_bits=30, frac_bits=12)
TRAFFIC = dict(gap_prob=0.2, stall_prob=0.3, burst_prob=0.004, burst_max=400, clean_rows=2)


def _random_row(rng: random.Random, length: int) -> list[int]:
    """Scores around a random centre with a random spread 2^k (k = 0..16), saturated."""
    c = rng.randint(LO, HI)
    s = 1 << rng.randint(0, 16)
    return [min(HI, max(LO, c + rng.randint(-s, s))) for _ in range(length)]


def _special_rows(rng: random.Random, max_row: int) -> list[list[int]]:
    rows = []
    for n in sorted({1, 2, 3, 197 if max_row >= 197 else max_row - 1, max_row}):
        for v in (0, LO, HI, 1234):
            rows.append([v] * n)                                      # all equal
    n = min(197, max_row)
    for hot, rest in ((HI, LO), (0, -1), (5, 4), (LO + 1, LO), (HI, HI - 2048)):
        for at in (0, n // 2, n - 1):
            row = [rest] * n
            row[at] = hot
            rows.append(row)                                          # one-hot
    for n in (2, 7, 50, min(197, max_row), max_row):
        rows.append([rng.choice(EXTREMES) for _ in range(n)])        # extremes mixed
        rows.append([rng.choice((LO, HI)) for _ in range(n)])         # two-valued, far apart
    rows.append([LO] * (max_row - 1) + [LO + 1])                      # most negative, one above
    rows.append([HI] + [LO] * (max_row - 1))
    return rows


def _rows_for(max_row: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = list(range(1, max_row + 1))
    rng.shuffle(lengths)
    rows = [_random_row(rng, 197 if max_row >= 197 else max_row)] * 2    # clean rows first
    rows += [_random_row(rng, n) for n in lengths]                     # every length 1..max_row
    rows += _special_rows(rng, max_row)
    rows += [_random_row(rng, rng.randint(1, 3)) for _ in range(40)]     # short rows back to back
    rows += [_random_row(rng, rng.randint(1, max_row)) for _ in range(30)]
    return rows


def _variant_unit(v: str) -> Softmax:
    return Softmax(F, v, max_row=MAX_ROW)


@pytest.fixture(scope="module")
def main_run():
    units = {f"sm_{v}": _variant_unit(v) for v in EXP_VARIANTS}
    units["sm_alt"] = Softmax(**ALT)
    b = runner.build(Harness(units), "softmax_harness", {"f": F, "max_row": MAX_ROW, "alt": ALT})
    data = {"seed": 5, "units": []}
    for k, v in enumerate(EXP_VARIANTS):
        data["units"].append(softmax_unit_data(f"sm_{v}", units[f"sm_{v}"], _rows_for(MAX_ROW, 100 + k), **TRAFFIC))
    # alt: also a row 3 longer than max_row without its last flag: the unit closes it at max_row
    alt = units["sm_alt"]
    rows = _rows_for(ALT["max_row"], 200)
    rng = random.Random(201)
    long_row = _random_row(rng, ALT["max_row"] + 3)
    rows_in = rows + [long_row[:ALT["max_row"]], long_row[ALT["max_row"]:]] + rows[2:12]
    send_last = [True] * len(rows) + [False, True] + [True] * 10
    data["units"].append(softmax_unit_data("sm_alt", alt, rows_in, send_last, **TRAFFIC))
    res = runner.run(b, TB, data, "rows")
    return res, units, b, data


def _by_name(res: dict) -> dict:
    return {u["name"]: u for u in res.get("units", [])}


def _assert_clean(r: dict, unit_data: dict) -> None:
    assert r["mismatches"] == 0, r["message"]
    n = sum(len(row) for row in unit_data["expected"])
    assert r["checked"] == n and r["received_beats"] == n and r["sent_beats"] == n, r["message"]
    if unit_data.get("stall_prob"):      # back-pressure reached the output and, through full buffers, the input
        assert r["output_held_cycles"] > 0 and r["input_stall_cycles"] > 0, r["message"]


@pytest.mark.parametrize("variant", EXP_VARIANTS)
def test_softmax_rows(main_run, variant):
    res, units, b, data = main_run
    name = f"sm_{variant}"
    r = _by_name(res)[name]
    ud = next(u for u in data["units"] if u["name"] == name)
    _assert_clean(r, ud)
    lengths = {len(row) for row in ud["rows"]}
    assert lengths >= set(range(1, MAX_ROW + 1))
    assert r["latency_first_row"] == units[name].first_output_latency(197), r["latency_first_row"]
    print(f"{name} f={F}: {r['rows']} rows ({r['checked']} elements, lengths 1..{MAX_ROW}) bit-exact under "
          f"gaps and back-pressure; first-row latency {r['latency_first_row']} cycles (L=197); "
          f"input stalled {r['input_stall_cycles']} cycles, output held {r['output_held_cycles']} cycles; "
          f"build {b.seconds:.1f}s, run {res['seconds']}s, {res.get('cycles')} cycles")
    assert res["failed"] == 0


def test_softmax_alt_config_and_long_row(main_run):
    res, units, b, data = main_run
    r = _by_name(res)["sm_alt"]
    ud = next(u for u in data["units"] if u["name"] == "sm_alt")
    _assert_clean(r, ud)
    print(f"sm_alt {ALT}: {r['rows']} rows ({r['checked']} elements) bit-exact, including a "
          f"{ALT['max_row'] + 3}-element row closed at max_row")
    assert res["failed"] == 0


# --- the testbench can fail ----------------------------------------------------------------

def test_wrong_constant_is_caught():
    """A unit whose reciprocal numerator is 2^R - 1 - 2^(R-5) (about 3% low) must be reported,
    naming the first mismatch (unit, row, index, expected, got), and leave a waveform."""
    dut = Softmax(F, "shiftfit", max_row=16)
    dut.recip_numerator = (1 << dut.recip_bits) - 1 - (1 << (dut.recip_bits - 5))
    b = runner.build(Harness({"bad": dut}), "softmax_wrong_const", {"numerator": dut.recip_numerator})
    rows = [[0, -5000, -6000], [7, 7, 7, 7], [HI] + [LO] * 15]
    data = {"seed": 1, "units": [softmax_unit_data("bad", dut, rows)]}     # golden: the right 2^R - 1
    res = runner.run(b, TB, data, "wrong_constant")
    assert res["failed"] == 1
    r = _by_name(res)["bad"]
    first = r["first_mismatch"]
    assert r["mismatches"] > 0 and first["unit"] == "bad"
    assert {"unit", "row", "index", "expected", "got"} <= set(first)
    assert first["expected"] != first["got"]
    assert first["expected"] == data["units"][0]["expected"][first["row"]][first["index"]]
    assert "waveform" in res and Path(res["waveform"]).stat().st_size > 0
    print(f"caught: {r['message']}; waveform {res['waveform']}")


# --- Icarus ------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog (Icarus Verilog) is not on PATH")
def test_icarus_smoke():
    unit = Softmax(F, "linear", max_row=32)
    b = runner.build(Harness({"sm": unit}), "softmax_icarus_smoke", {}, simulator="icarus")
    rng = random.Random(9)
    rows = [_random_row(rng, n) for n in (1, 32, 5, 17, 32, 2)] + [[LO] * 32, [HI] + [LO] * 31]
    data = {"seed": 4, "units": [softmax_unit_data("sm", unit, rows, **TRAFFIC)]}
    res = runner.run(b, TB, data, "smoke")
    r = _by_name(res)["sm"]
    _assert_clean(r, data["units"][0])
    assert res["failed"] == 0


# --- lint, configuration, cycles -----------------------------------------------------------

def test_verilator_lint(tmp_path):
    """verilator --lint-only -Wall is clean on every variant (three Amaranth-style rules waived)."""
    tops = {f"softmax_{v}": Softmax(F, v) for v in EXP_VARIANTS}
    tops["softmax_alt"] = Softmax(**ALT)
    for name, top in tops.items():
        path = tmp_path / f"{name}.v"
        text = emit_verilog(top, name)
        assert "/work/" not in text and "/home/" not in text
        path.write_text(text)
        rc, out = lint(path)
        assert rc == 0 and "%Warning" not in out and "%Error" not in out, f"{name}:\n{out}"


@pytest.mark.parametrize("kwargs,needle", [
    (dict(f=0), "softmax f = 0 is out of range; accepted 1..30"),
    (dict(f=10, variant="cubic"), "exp_variant = 'cubic' is not accepted"),
    (dict(f=10, max_row=1), "softmax_max_row = 1 is out of range; accepted 2..4096"),
    (dict(f=10, recip_bits=16), "recip_bits = 16 is out of range; accepted 17..48"),
    (dict(f=10, out_bits=20), "softmax_out_bits = 20 is out of range"),
])
def test_config_rejects(kwargs, needle):
    with pytest.raises(UserError) as exc:
        Softmax(**kwargs)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_from_config():
    sm = Softmax.from_config(HwConfig(softmax_max_row=197), f=8)
    assert (sm.max_row, sm.variant, sm.out_bits, sm.recip_bits, sm.frac_bits) == (197, "shiftfit", 8, 32, 15)
    assert sm.cycles_per_row(197) == 197 + 8 and sm.cycles_per_row(1) == 32 - 15 + 1
    assert sm.first_output_latency(197) == 197 + 29
    sm._MustUse__silence = True


@pytest.mark.parametrize("length", [197, 10])
def test_cycles_per_row(length):
    m = measure_softmax_cycles_per_row(length)
    assert m["length"] == length and isinstance(m["cycles"], int)
    assert m["bit_exact"]
    assert length <= m["cycles"] < 10 * length + 100     # sane, not a speed target
    assert m["cycles"] == m["documented_cycles"], m      # the docstring formula must say what the RTL does
    print(f"softmax {length}-token rows: {m['cycles']} cycles per row ({m['elements_per_cycle']} elements/cycle), "
          f"first-row latency {m['latency_first_row']} cycles after the last input")
