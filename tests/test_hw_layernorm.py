"""Bit-exactness of the LayerNorm unit against golden.layernorm.layernorm_int, on RTL (cocotb).

* zero-variance rows (all equal, including all -32768 and all 32767), extreme rows
  (alternating -32768/32767, a lone outlier), rows whose mean is a rounding half (positive
  and negative sums), random rows (full range, realistic spreads, tiny spreads) at
  C = 64 and C = 192, gamma (with negative entries) and beta through build_layernorm;
* random gaps in valid and random back-pressure after a clean prefix: every element
  arrives once, in order (the scoreboard compares in order; the bench counts extra outputs);
* a deliberately wrong multiplier is caught (unit, row, channel named; waveform left);
* latency as documented (measured on the clean prefix); cycles per row measured, not asserted;
* Verilator -Wall lint of the emitted Verilog, and the parameter checks.

Expected values come only from golden.layernorm.layernorm_int (sim/perf_layernorm.py);
sim/tb_layernorm.py only compares.  The three units share one cached Verilator build.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from golden.errors import UserError
from golden.layernorm import layernorm_int
from hwgen.layernorm import LayerNorm, layernorm_timing
from hwgen.verilog import emit_verilog, lint
from sim import runner
from sim.perf_layernorm import (TB, layernorm_unit_data, measure_layernorm_cycles_per_row,
                                measure_layernorm_timing, standard_harness, standard_layers)

LO, HI = -(1 << 15), (1 << 15) - 1
CLEAN_ROWS = 6
CATEGORIES = ("zero_variance", "extreme", "rounding", "random")


def _rows(c: int, n_random: int, seed: int) -> list[tuple[str, list[int]]]:
    """(category, row) pairs of the test set for C = c, in a shuffled order."""
    rng = random.Random(seed)
    rows = [("zero_variance", [v] * c) for v in (0, 1, -1, LO, HI, 12345, -777)]
    alt = [LO, HI] * (c // 2)
    rows += [("extreme", alt), ("extreme", alt[::-1]),
             ("extreme", [HI] + [LO] * (c - 1)), ("extreme", [LO] * (c - 1) + [HI]),
             ("extreme", [LO] + [HI] * (c - 1)), ("extreme", [LO] * (c // 2) + [HI] * (c // 2)),
             ("extreme", [LO, LO + 1] * (c // 2)), ("extreme", [HI - 1, HI] * (c // 2))]
    # sums of C k + C/2: the mean is k + 1/2 and rounds up (also for negative k)
    for k in (5, -5, 0, -1, 1000, -1000):
        row = [k] * c
        row[3] += c // 2
        rows.append(("rounding", row))
    for i in range(n_random):
        kind = i % 4
        if kind == 0:                                    # full range
            row = [rng.randint(LO, HI) for _ in range(c)]
        elif kind == 1:                                  # a realistic residual row
            mu, sd = rng.randint(-3000, 3000), rng.choice((30, 300, 3000))
            row = [max(LO, min(HI, round(rng.gauss(mu, sd)))) for _ in range(c)]
        elif kind == 2:                                  # tiny spread: std 0 or 1
            base = rng.randint(-20000, 20000)
            row = [base + rng.randint(0, 1) for _ in range(c)]
        else:                                            # spikes on a flat row
            row = [rng.randint(-50, 50) for _ in range(c)]
            for _ in range(3):
                row[rng.randrange(c)] = rng.choice((LO, HI))
        rows.append(("random", row))
    first = [r for r in rows if r[0] == "random"][:CLEAN_ROWS]      # clean prefix: timing
    rest = [r for r in rows if not any(r is f for f in first)]
    rng.shuffle(rest)
    return first + rest


@pytest.fixture(scope="module")
def main_run():
    b, units, layers = standard_harness()
    sets = {"ln64": _rows(64, 24, 1), "ln192": _rows(192, 16, 2)}
    data = {"seed": 5, "units": []}
    for name, rows in sets.items():
        x = torch.tensor([r for _, r in rows])
        data["units"].append(layernorm_unit_data(name, units[name], layers[name], x, gap=0.3, stall=0.3,
                                                 clean_rows=CLEAN_ROWS))
    res = runner.run(b, TB, data, "main")
    return res, units, sets, b


def _report(res: dict, name: str) -> dict:
    return next(u for u in res["units"] if u["name"] == name)


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("name", ["ln64", "ln192"])
def test_rows_bit_exact(main_run, name, category):
    res, units, sets, b = main_run
    r = _report(res, name)
    rows = sets[name]
    idx = [k for k, (cat, _) in enumerate(rows) if cat == category]
    assert idx
    bad = [k for k in idx if k in r["bad_rows"]]
    assert not bad, f"{category} rows {bad} differ: {r['message']}"
    assert r["rows"] == len(rows) and r["checked"] == len(rows) * units[name].channels, r["message"]
    print(f"{name} {category}: {len(idx)} rows x {units[name].channels} channels bit-exact "
          f"(build {b.seconds:.1f}s, run {res['seconds']}s)")


@pytest.mark.parametrize("name", ["ln64", "ln192"])
def test_stream_integrity_and_latency(main_run, name):
    """Under random gaps and back-pressure nothing is lost, duplicated or reordered (in-order
    comparison of every element, all received, none extra); the clean prefix shows the
    documented latency."""
    res, units, sets, b = main_run
    r = _report(res, name)
    assert res["failed"] == 0, r["message"]
    assert r["mismatches"] == 0 and r["received_beats"] == r["beats"] and r["extra_beats"] == 0, r
    u = units[name]
    assert r["latency"] == u.latency, r
    if u.channels >= u.calc_cycles:     # IN-bound: no row waits for CALC in the clean prefix
        assert r["latency_max_clean"] == u.latency, r
    print(f"{name}: {r['rows']} rows, latency (last input -> first output) {r['latency']} cycles, "
          f"clean-prefix cycles/row {r.get('cycles_per_row')} (documented {units[name].cycles_per_row}); "
          f"worst row latency under back-pressure {max(r['row_latency'])}")


def test_zero_variance_golden_is_beta():
    """The golden meaning of a zero-variance row: beta alone (z = 0), for the extremes too."""
    layer = standard_layers()["ln64"]
    x = torch.tensor([[LO] * 64, [HI] * 64, [0] * 64])
    e = layer["attrs"]["e"]
    beta_only = ((layer["consts"]["b"] + (1 << (e - 1))) >> e).clamp(-128, 127)
    assert torch.equal(layernorm_int(x, layer["attrs"], layer["consts"]), beta_only.expand(3, 64))


def test_wrong_constant_is_caught():
    """ln64_bad has the multiplier of channel 17 negated; with the right expected values the
    scoreboard must name unit, row and channel of the first mismatch, and a waveform is left."""
    b, units, layers = standard_harness()
    good = layers["ln64"]
    rng = random.Random(9)
    x = torch.tensor([[rng.randint(-2000, 2000) for _ in range(64)] for _ in range(3)])
    bad_out = layernorm_int(x, layers["ln64_bad"]["attrs"], layers["ln64_bad"]["consts"])
    good_out = layernorm_int(x, good["attrs"], good["consts"])
    assert not torch.equal(bad_out, good_out)
    first_row = int((bad_out != good_out).any(dim=1).nonzero()[0])
    unit = layernorm_unit_data("ln64_bad", units["ln64_bad"], good, x)      # the right expected values
    res = runner.run(b, TB, {"seed": 1, "units": [unit]}, "wrong_constant")
    assert res["failed"] == 1
    r = _report(res, "ln64_bad")
    first = r["first_mismatch"]
    assert set(first) == {"unit", "row", "channel", "input", "expected", "got"}
    assert first["unit"] == "ln64_bad" and first["row"] == first_row and first["channel"] == 17
    assert first["expected"] == int(good_out[first_row, 17]) and first["got"] == int(bad_out[first_row, 17])
    assert "row" in r["message"] and "channel 17" in r["message"]
    assert "waveform" in res and Path(res["waveform"]).stat().st_size > 0
    print(f"caught: {r['message']}; waveform {res['waveform']}")


def test_cycles_per_row_measured():
    """Cycles per row at C = 192 without back-pressure (reported, not asserted)."""
    rep = measure_layernorm_timing(192)
    out = measure_layernorm_cycles_per_row(192)     # the benchmark entry point (cached build)
    assert set(out) == {"channels", "cycles"} and out["channels"] == 192 and isinstance(out["cycles"], int)
    print(f"C=192: {out['cycles']} cycles/row measured (documented {rep['documented_cycles_per_row']}), "
          f"row periods {rep['row_periods']}, latency {rep['latency']} (documented {rep['documented_latency']})")


def test_verilator_lint(tmp_path):
    """verilator --lint-only -Wall is clean (the three Amaranth-style rules of hwgen.verilog waived)."""
    layers = standard_layers()
    for name in ("ln64", "ln192"):
        top = LayerNorm(layers[name]["attrs"], layers[name]["consts"])
        text = emit_verilog(top, name)
        assert "/work/" not in text and "/home/" not in text
        path = tmp_path / f"{name}.v"
        path.write_text(text)
        rc, out = lint(path)
        assert rc == 0 and "%Warning" not in out and "%Error" not in out, f"{name}:\n{out}"


def test_timing_formula():
    t64, t192 = layernorm_timing(64), layernorm_timing(192)
    assert (t64["root_bits"], t192["root_bits"]) == (18, 19)
    assert t192["calc"] == 16 + 19 + 35 and t192["latency"] == t192["calc"] + 9
    assert t192["cycles_per_row"] == 192


@pytest.mark.parametrize("change,needle", [
    (dict(attrs={"channels": 1}), "layernorm channels = 1 is out of range; accepted 2..4096"),
    (dict(attrs={"e": 70}), "layernorm e = 70 is out of range; accepted 0..62"),
    (dict(m_extra=1), "accepted 64 each (channels)"),
    (dict(m_big=True), "layernorm multiplier 40000 is out of range; accepted -32767..32767"),
    (dict(kw={"row_slots": 1}), "layernorm row_slots = 1 is out of range; accepted 2..4"),
])
def test_parameter_checks(change, needle):
    layer = standard_layers()["ln64"]
    attrs = dict(layer["attrs"], **change.get("attrs", {}))
    m = layer["consts"]["m"].tolist()
    if change.get("m_extra"):
        m = m + [0]
    if change.get("m_big"):
        m[0] = 40000
    with pytest.raises(UserError) as exc:
        LayerNorm(attrs, {"m": m, "b": layer["consts"]["b"]}, **change.get("kw", {}))
    assert needle in str(exc.value) and "\n" not in str(exc.value)
