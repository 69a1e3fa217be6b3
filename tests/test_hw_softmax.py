"""Bit-exactness of the row Softmax unit (hwgen.softmax.Softmax) against the golden
:func:`golden.softmax.shift_softmax`, on RTL (cocotb, Verilator), with ``f`` loaded at run time.

* ONE build holds the configuration's unit (``Softmax.from_config(HwConfig())``), the other
  two exponential variants with the same capabilities, a second configuration (12-bit
  scores, max_row 200, C = 12, R = 30, 12-bit outputs, f up to 20: beyond in_bits + 1), the unit for the digits model's
  rows (max_row 17) and a deliberately broken unit;
* ONE simulation runs, per unit, layer after layer with the constants switched on the
  ``c`` stream (beats from the unit's own ``const_beats``, each presented together with the
  next layer's first score: the unit must take the constants first): every Softmax layer
  of the digits model at W8A8 and W4A8 (its ``f``, rows of its length 17), then ``f`` at the
  unit's limits (1 and ``in_bits + 1``); rows random, all-equal, one-hot, extremes mixed,
  the most negative value, length 1, the longest (``max_row``), every length 1..max_row
  once, and a row longer than max_row (closed by the unit); random gaps in valid and random
  back-pressure (single cycles and long bursts that fill the buffers and stall the input)
  on all but the first two rows;
* the constants are taken exactly one cycle after the previous layer's last output (the
  unit is idle then, not before); the first row's latency is the documented formula;
* a corrupted constant beat (one bit of ``f`` flipped by the testbench) and a broken unit
  (reciprocal numerator 3% low) are caught: the scoreboard reports the mismatch;
* cycles per row of back-to-back rows (197 tokens, the digits' 17, 1) measured equal to the
  documented formula; Verilator -Wall lint; ``const_beats`` refusals; ``from_config``.

Expected rows always come from golden.softmax.shift_softmax; the testbench only compares.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from golden.errors import UserError
from golden.softmax import EXP_VARIANTS
from hwgen.config import HwConfig
from hwgen.softmax import Softmax
from hwgen.verilog import Harness, emit_verilog, lint
from sim import runner
from sim.tb_softmax import const_unit_data, measure_softmax_cycles_per_row, softmax_segment

TB = "sim.tb_softmax"
ALT = dict(variant="ibert", max_row=200, in_bits=12, out_bits=12, recip_bits=30, frac_bits=12, max_f=20)
TRAFFIC = dict(gap_prob=0.2, stall_prob=0.3, burst_prob=0.004, burst_max=400, clean_rows=2, with_data=True)


def _lim(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _random_row(rng: random.Random, length: int, bits: int) -> list[int]:
    """Scores around a random centre with a random spread 2^k, saturated."""
    lo, hi = _lim(bits)
    c = rng.randint(lo, hi)
    s = 1 << rng.randint(0, bits)
    return [min(hi, max(lo, c + rng.randint(-s, s))) for _ in range(length)]


def _special_rows(rng: random.Random, n: int, max_row: int, bits: int) -> list[list[int]]:
    """All-equal, one-hot, extremes mixed, most negative with one above; lengths 1, 2, n, max_row."""
    lo, hi = _lim(bits)
    extremes = (lo, lo + 1, -1, 0, 1, hi - 1, hi)
    rows = [[v] * k for k in sorted({1, 2, n}) for v in (0, lo, hi, 1234 % hi)]
    for hot, rest in ((hi, lo), (0, -1), (5, 4), (lo + 1, lo)):
        for at in (0, n // 2, n - 1):
            row = [rest] * n
            row[at] = hot
            rows.append(row)
    rows += [[rng.choice(extremes) for _ in range(n)], [rng.choice((lo, hi)) for _ in range(n)]]
    rows += [[lo] * (max_row - 1) + [lo + 1], [hi] + [lo] * (max_row - 1), _random_row(rng, max_row, bits)]
    rows += [[v] for v in (lo, 0, hi)]
    return rows


def _layer_rows(rng: random.Random, n: int, max_row: int, bits: int, randoms: int = 12) -> list[list[int]]:
    rows = [_random_row(rng, n, bits) for _ in range(2)]                  # clean rows first
    rows += _special_rows(rng, n, max_row, bits)
    rows += [_random_row(rng, n, bits) for _ in range(randoms)]
    rows += [_random_row(rng, rng.randint(1, 3), bits) for _ in range(6)]  # short rows back to back
    return rows


def _softmax_layers(*quantized) -> list[tuple[str, dict]]:
    return [(f"{q.graph.meta.get('bits', k)}:{op.name}", dict(op.attrs))
            for k, q in enumerate(quantized) for op in q.graph.ops if op.type == "softmax"]


def _units() -> dict:
    cfg = HwConfig()
    units = {f"sm_{v}": Softmax.from_config(cfg, v) for v in EXP_VARIANTS}
    units["sm_alt"] = Softmax(**ALT)
    units["sm_row17"] = Softmax.from_config(cfg.replace(softmax_max_row=17))     # the digits model's rows
    bad = Softmax("shiftfit", max_row=16)
    bad.recip_numerator = (1 << bad.recip_bits) - 1 - (1 << (bad.recip_bits - 5))   # 3% low: broken
    units["sm_bad"] = bad
    return units


@pytest.fixture(scope="module")
def sm_build():
    units = _units()
    b = runner.build(Harness(units), "softmax_harness", {"alt": ALT, "bad_numerator": units["sm_bad"].recip_numerator})
    return units, b


def _attrs(unit, f: int, row_len: int | None = None) -> dict:
    a = {"f": f, "variant": unit.variant, "out_bits": unit.out_bits, "recip_bits": unit.recip_bits}
    if row_len is not None:
        a["row_len"] = row_len
    return a


@pytest.fixture(scope="module")
def main_run(sm_build, digits_w8a8, digits_w4a8):
    units, b = sm_build
    layers = _softmax_layers(digits_w8a8, digits_w4a8)
    data = {"seed": 5, "units": []}
    for k, v in enumerate(EXP_VARIANTS):
        u = units[f"sm_{v}"]
        rng = random.Random(100 + k)
        segs = []
        for name, attrs in layers:
            attrs = dict(attrs, variant=v)          # the same layer with this unit's approximation
            segs.append(softmax_segment(u, attrs, _layer_rows(rng, attrs["row_len"], u.max_row, u.in_bits,
                                                              12 if v == "shiftfit" else 4)))
        for f in (1, u.max_f):                      # f at the unit's limits
            segs.append(softmax_segment(u, _attrs(u, f), _layer_rows(rng, 197, u.max_row, u.in_bits, 4)))
        if v == "shiftfit":                          # every length 1..max_row once
            lengths = list(range(1, u.max_row + 1))
            rng.shuffle(lengths)
            segs.append(softmax_segment(u, _attrs(u, 10), [_random_row(rng, n, u.in_bits) for n in lengths]))
        data["units"].append(const_unit_data(f"sm_{v}", u, segs, **TRAFFIC))
    # the second configuration: f = 1, 5, max; a row 3 longer than max_row without its last
    # flag (the unit closes it at max_row), rows of every length 1..max_row in the middle layer
    alt = units["sm_alt"]
    rng = random.Random(201)
    segs = []
    for f in (1, 5, alt.max_f):
        rows = _layer_rows(rng, 50, alt.max_row, alt.in_bits, 4)
        if f == 5:
            lengths = list(range(1, alt.max_row + 1))
            rng.shuffle(lengths)
            rows += [_random_row(rng, n, alt.in_bits) for n in lengths]
        long_row = _random_row(rng, alt.max_row + 3, alt.in_bits)
        rows_in = rows + [long_row[:alt.max_row], long_row[alt.max_row:]] + rows[2:8]
        send_last = [True] * len(rows) + [False, True] + [True] * 6
        segs.append(softmax_segment(alt, _attrs(alt, f), rows_in, send_last))
    data["units"].append(const_unit_data("sm_alt", alt, segs, **TRAFFIC))
    # the digits model's row length as the longest row: every layer, rows of 1..17 and a row
    # of 20 without its last flag (closed at 17)
    u17 = units["sm_row17"]
    rng = random.Random(301)
    segs = []
    for name, attrs in layers:
        rows = _layer_rows(rng, 17, 17, u17.in_bits, 4) + [_random_row(rng, n, u17.in_bits) for n in range(1, 18)]
        long_row = _random_row(rng, 20, u17.in_bits)
        rows_in = rows + [long_row[:17], long_row[17:]] + rows[2:6]
        segs.append(softmax_segment(u17, attrs, rows_in, [True] * len(rows) + [False, True] + [True] * 4))
    data["units"].append(const_unit_data("sm_row17", u17, segs, **TRAFFIC))
    res = runner.run(b, TB, data, "layers")
    return res, units, b, data, layers


def _by_name(res: dict) -> dict:
    return {u["name"]: u for u in res.get("units", [])}


def _assert_clean(r: dict, ud: dict) -> None:
    assert r["mismatches"] == 0, r["message"]
    n = sum(len(row) for s in ud["segments"] for row in s["expected"])
    assert r["checked"] == n and r["received_beats"] == n and r["sent_beats"] == n, r["message"]
    assert r["data_taken_with_c_valid"] == 0
    # back-pressure reached the output and, through full buffers, the input
    assert r["output_held_cycles"] > 0 and r["input_stall_cycles"] > 0, r["message"]
    # each layer's constants were taken one cycle after the previous layer's last output
    c, rows = r["c_accept"], r["per_row"]
    assert c[0] == [0] and all(len(x) == 1 for x in c)
    for s in range(1, len(c)):
        last_out = max(p["out_last"] for p in rows if p["segment"] == s - 1)
        assert c[s][0] == last_out + 1, (s, c[s], last_out)


@pytest.mark.parametrize("variant", EXP_VARIANTS)
def test_softmax_layers(main_run, variant):
    res, units, b, data, layers = main_run
    name = f"sm_{variant}"
    u = units[name]
    r = _by_name(res)[name]
    ud = next(x for x in data["units"] if x["name"] == name)
    fs = [s["const"][0]["f"] for s in ud["segments"]]
    assert len(layers) == 8 and {a["f"] for _, a in layers} >= {9, 10, 12}
    assert fs[:len(layers)] == [a["f"] for _, a in layers] and {1, u.max_f} <= set(fs)
    _assert_clean(r, ud)
    lengths = {len(row) for s in ud["segments"] for row in s["rows"]}
    assert {1, 17, 197, u.max_row} <= lengths
    if variant == "shiftfit":
        assert lengths >= set(range(1, u.max_row + 1))
    L0 = len(ud["segments"][0]["rows"][0])
    assert r["latency_first_row"] == u.first_output_latency(L0), r["latency_first_row"]
    print(f"{name}: {len(fs)} layers (f {fs}), {r['rows']} rows ({r['checked']} elements) bit-exact under gaps "
          f"and back-pressure; first-row latency {r['latency_first_row']} cycles (L={L0}); constants taken one "
          f"cycle after each layer's last output; input stalled {r['input_stall_cycles']} cycles, output held "
          f"{r['output_held_cycles']} cycles; build {b.seconds:.1f}s, run {res['seconds']}s, {res.get('cycles')} cycles")
    assert res["failed"] == 0


def test_softmax_alt_config_and_long_row(main_run):
    res, units, b, data, _ = main_run
    r = _by_name(res)["sm_alt"]
    ud = next(x for x in data["units"] if x["name"] == "sm_alt")
    _assert_clean(r, ud)
    print(f"sm_alt {ALT}: f {[s['const'][0]['f'] for s in ud['segments']]}, {r['rows']} rows ({r['checked']} "
          f"elements) bit-exact, including a {ALT['max_row'] + 3}-element row closed at max_row")
    assert res["failed"] == 0


def test_softmax_rows_of_17(main_run):
    """The unit for the digits model's capabilities (rows of at most 17): every digits layer."""
    res, units, b, data, layers = main_run
    r = _by_name(res)["sm_row17"]
    ud = next(x for x in data["units"] if x["name"] == "sm_row17")
    _assert_clean(r, ud)
    assert len(ud["segments"]) == len(layers) == 8
    print(f"sm_row17: {len(layers)} digits layers, {r['rows']} rows ({r['checked']} elements) bit-exact, including "
          f"20-element rows closed at max_row 17")
    assert res["failed"] == 0


# --- the testbench can fail ----------------------------------------------------------------

def test_corrupted_constant_and_broken_unit_are_caught(sm_build):
    """One bit of one ``c`` beat flipped (the second layer's f = 10 sent as 11), and a unit whose
    reciprocal numerator is 2^R - 1 - 2^(R-5): both reported, naming the first mismatch."""
    units, b = sm_build
    good, bad = units["sm_shiftfit"], units["sm_bad"]
    rng = random.Random(7)
    rows = [_random_row(rng, 17, 16) for _ in range(6)] + [[0, -5000, -6000], [7] * 4]
    segs = [softmax_segment(good, _attrs(good, 12), rows), softmax_segment(good, _attrs(good, 10), rows)]
    d_good = const_unit_data("sm_shiftfit", good, segs, corrupt={"segment": 1, "beat": 0, "bit": 0})
    bad_rows = [[0, -5000, -6000], [7, 7, 7, 7], [32767] + [-32768] * 15]
    d_bad = const_unit_data("sm_bad", bad, [softmax_segment(bad, _attrs(bad, 10), bad_rows)])   # golden: 2^R - 1
    res = runner.run(b, TB, {"seed": 1, "units": [d_good, d_bad]}, "caught")
    assert res["failed"] == 1
    rg, rb = _by_name(res)["sm_shiftfit"], _by_name(res)["sm_bad"]
    first = rg["first_mismatch"]
    assert rg["mismatches"] > 0 and first["segment"] == 1, rg["message"]
    assert first["expected"] == segs[1]["expected"][first["row"]][first["index"]] != first["got"]
    first = rb["first_mismatch"]
    assert rb["mismatches"] > 0 and first["unit"] == "sm_bad"
    assert {"unit", "segment", "row", "index", "expected", "got"} <= set(first)
    assert first["expected"] == d_bad["segments"][0]["expected"][first["row"]][first["index"]] != first["got"]
    assert "waveform" in res and Path(res["waveform"]).stat().st_size > 0
    print(f"caught: {rg['message']}; {rb['message']}; waveform {res['waveform']}")


# --- cycles, lint, constants, configuration ------------------------------------------------

@pytest.mark.parametrize("length", [197, 17, 1])
def test_cycles_per_row(sm_build, length):
    units, b = sm_build
    m = measure_softmax_cycles_per_row(length, build=b, unit=units["sm_shiftfit"], name="sm_shiftfit")
    assert m["bit_exact"]
    assert m["cycles"] == m["documented_cycles"], m      # the docstring formula must say what the RTL does
    assert m["latency_first_row"] == m["documented_latency"], m
    assert m["const_load_cycles"] == 1, m
    print(f"softmax {length}-token rows: {m['cycles']} cycles per row ({m['elements_per_cycle']} elements/cycle), "
          f"first-row latency {m['latency_first_row']} cycles after the last input, constants loaded in "
          f"{m['const_load_cycles']} cycle")


def test_verilator_lint(tmp_path):
    """verilator --lint-only -Wall is clean on every variant (the Amaranth-style rules waived)."""
    tops = {f"softmax_{v}": Softmax(v) for v in EXP_VARIANTS}
    tops["softmax_alt"] = Softmax(**ALT)
    for name, top in tops.items():
        path = tmp_path / f"{name}.v"
        text = emit_verilog(top, name)
        assert "/work/" not in text and "/home/" not in text
        path.write_text(text)
        rc, out = lint(path)
        assert rc == 0 and "%Warning" not in out and "%Error" not in out, f"{name}:\n{out}"


@pytest.mark.parametrize("kwargs,needle", [
    (dict(variant="cubic"), "exp_variant = 'cubic' is not accepted"),
    (dict(max_row=1), "softmax_max_row = 1 is out of range; accepted 2..4096"),
    (dict(recip_bits=16), "recip_bits = 16 is out of range; accepted 17..48"),
    (dict(out_bits=20), "softmax_out_bits = 20 is out of range"),
])
def test_config_rejects(kwargs, needle):
    with pytest.raises(UserError) as exc:
        Softmax(**kwargs)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("change,needle", [
    (dict(f=18), "softmax f = 18 does not fit the unit: needs 18 in 1..17, the unit takes f up to 17 "
                 "(softmax_max_f 17)"),
    (dict(f=0), "softmax f = 0 does not fit the unit"),
    (dict(out_bits=7), "softmax out_bits = 7 does not fit the unit: needs out_bits 7, the unit has 8 "
                       "(softmax_out_bits 8)"),
    (dict(recip_bits=31), "softmax recip_bits = 31 does not fit the unit"),
    (dict(row_len=300), "softmax row_len = 300 does not fit the unit: needs rows of 300, the unit holds 256 "
                        "(softmax_max_row 256)"),
    (dict(variant="linear"), "softmax variant = 'linear' does not fit the unit"),
])
def test_const_beats_refuses(change, needle):
    u = Softmax()
    attrs = dict({"f": 10, "variant": "shiftfit", "out_bits": 8, "recip_bits": 32, "row_len": 197}, **change)
    with pytest.raises(UserError) as exc:
        u.const_beats(attrs, {})
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    u._MustUse__silence = True


def test_from_config_and_const_beats(digits_w8a8):
    sm = Softmax.from_config(HwConfig(softmax_max_row=197))
    assert (sm.max_row, sm.variant, sm.out_bits, sm.recip_bits, sm.frac_bits, sm.in_bits) == (197, "shiftfit", 8, 32, 15, 16)
    assert (sm.max_f, sm.f_bits) == (17, 5) and [n for n, _ in sm.c.payload.shape()] == ["f"]
    wide = Softmax.from_config(HwConfig(softmax_max_f=20))                   # small scores: f beyond in_bits + 1
    assert (wide.max_f, wide.f_bits) == (20, 5) and wide.const_beats({"f": 20}) == [{"f": 20}]
    wide._MustUse__silence = True
    assert sm.cycles_per_row(197) == 197 + 13 and sm.cycles_per_row(1) == 32 - 15 + 1
    assert sm.first_output_latency(197) == 197 + 42
    for op in digits_w8a8.graph.ops:
        if op.type == "softmax":
            assert sm.const_beats(op.attrs, op.consts) == [{"f": op.attrs["f"]}]
    sm._MustUse__silence = True
