"""Bit-exactness of the LayerNorm unit against golden.layernorm.layernorm_int, on RTL (cocotb),
with every layer's constants loaded at run time into ONE unit (``LayerNorm.from_config(HwConfig())``).

One simulation run switches the unit's constants layer after layer (segments):

* every LayerNorm layer of the digits model at W8A8 and at W4A8 (C = 64);
* synthetic layers (build_layernorm, gamma with negative entries) at C = 192, at the unit's
  most channels (C = 256, the longest rows) and at the fewest (C = 2);
* constants at the unit's limits: largest |m| (+32767 and -32768) with largest |b|
  (+-(2^47 - 1), -2^47), e = 0, e = 1, e = 47, e = 63, and random full-range m and b;
* per layer, rows of every category: zero variance (all equal, including all -32768 and
  all 32767), extreme (alternating -32768/32767, a lone outlier), rows whose mean is a
  rounding half (positive and negative sums), random rows (full range, realistic spreads,
  tiny spreads, spikes);
* random gaps in ``i.valid`` and ``c.valid`` and random back-pressure on ``o``; constants
  presented together with the data (the unit must take every constant first, also across
  gaps in ``c.valid``) or before it;
* three clean segments first (C = 192, 64 and 72, no gaps, no back-pressure: input-, CALC-
  and row-slot-bound) on which latency, cycles per row and the loading cycles are measured
  and compared with the documented formulas.

A second run checks that the scoreboard catches a deliberately broken unit (``ln_bad``: the
mean rounded down) and a corrupted constant (one bit flipped in one ``c`` beat); in both
cases the outputs equal the golden model of the fault, so the fault is what was caught.
Expected values come only from golden.layernorm.layernorm_int (sim/perf_layernorm.py);
sim/tb_layernorm.py only compares.  Both runs share one cached Verilator build.
"""

from __future__ import annotations

import random

import pytest
import torch

from golden.errors import UserError
from golden.intops import rshift_round, signed_range
from golden.layernorm import FACTOR_BITS, layernorm_int
from hwgen.config import HwConfig
from hwgen.layernorm import LayerNorm, layernorm_timing
from hwgen.verilog import emit_verilog, lint
from sim import runner
from sim.perf_layernorm import (TB, measure_layernorm_cycles_per_row, random_rows, segment, standard_harness,
                                synthetic_layer, unit_data)

LO, HI = -(1 << 15), (1 << 15) - 1
CATEGORIES = ("zero_variance", "extreme", "rounding", "random")
GAP, STALL = 0.3, 0.3


def _rows(c: int, n_random: int, seed: int) -> list[tuple[str, list[int]]]:
    """(category, row) pairs of the test set for C = c, in a shuffled order."""
    rng = random.Random(seed)
    rows = [("zero_variance", [v] * c) for v in (0, 1, -1, LO, HI, 12345, -777)]
    alt = ([LO, HI] * c)[:c]
    rows += [("extreme", alt), ("extreme", alt[::-1]),
             ("extreme", [HI] + [LO] * (c - 1)), ("extreme", [LO] * (c - 1) + [HI]),
             ("extreme", [LO] + [HI] * (c - 1)), ("extreme", [LO] * (c // 2) + [HI] * (c - c // 2)),
             ("extreme", ([LO, LO + 1] * c)[:c]), ("extreme", ([HI - 1, HI] * c)[:c])]
    # sums of C k + C/2: the mean is k + 1/2 and rounds up (also for negative k)
    for k in (5, -5, 0, -1, 1000, -1000):
        row = [k] * c
        row[min(3, c - 1)] += c // 2
        if c % 2:                       # odd C: no half; a sum just below/above one
            row[0] += 1
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
    rng.shuffle(rows)
    return rows


def _limit_layers(unit: LayerNorm) -> dict[str, dict]:
    """Constants at the unit's limits (and random full-range ones), at several C."""
    mmax, mmin = (1 << (unit.mult_bits - 1)) - 1, -(1 << (unit.mult_bits - 1))
    bmax, bmin = (1 << (unit.b_bits - 1)) - 1, -(1 << (unit.b_bits - 1))
    rng = random.Random(11)

    def layer(c, m, b, e):
        return {"attrs": {"channels": c, "e": e, "out_bits": unit.out_bits},
                "consts": {"m": torch.tensor(m(c), dtype=torch.int64), "b": torch.tensor(b(c), dtype=torch.int64)}}

    def ext_m(c):
        return [(mmax, mmin, mmin, mmax)[k % 4] for k in range(c)]

    def ext_b(c):
        return [(bmax, bmin, bmin, bmax, 0, -1, 1)[k % 7] for k in range(c)]

    return {
        "limits |m| |b| max, e 47": layer(64, ext_m, ext_b, 47),
        "limits |m| max, b 0, e 46": layer(256, ext_m, lambda c: [0] * c, 46),
        "limits e 0, small m b": layer(96, lambda c: [(-1, 0, 1)[k % 3] for k in range(c)],
                                       lambda c: [rng.randint(-300, 300) for _ in range(c)], 0),
        "limits e 1": layer(32, lambda c: [rng.randint(-3, 3) for _ in range(c)],
                            lambda c: [rng.randint(-400, 400) for _ in range(c)], 1),
        "limits e 63, |m| |b| max": layer(128, ext_m, ext_b, 63),
        "limits random m b, e 40": layer(192, lambda c: [rng.randint(mmin, mmax) for _ in range(c)],
                                         lambda c: [rng.randint(bmin >> 7, bmax >> 7) for _ in range(c)], 40),
    }


def _unit(**kw) -> LayerNorm:
    """The standard unit, for its constants and checks only (never elaborated: no warning)."""
    u = LayerNorm.from_config(HwConfig().replace(**kw))
    u._MustUse__silence = True
    return u


def _ln_ops(q) -> list:
    return [op for op in q.graph.ops if op.type == "layernorm"]


@pytest.fixture(scope="module")
def main_run(digits_w8a8, digits_w4a8):
    b, units = standard_harness()
    unit = units["ln"]
    segs, info = [], []          # info: (group, rows with categories)

    def add(group, name, layer, rows, **kw):
        x = torch.tensor([r for _, r in rows])
        segs.append(segment(name, unit, layer, x, **kw))
        info.append((group, rows))

    n = 0
    # clean segments first: timing (the unit is idle at their start)
    add("timing", "timing C=192", synthetic_layer(192, 192), [("random", r) for r in random_rows(6, 192, 3).tolist()])
    add("timing", "timing C=64", synthetic_layer(64, 64), [("random", r) for r in random_rows(12, 64, 4).tolist()])
    add("timing", "timing C=72", synthetic_layer(72, 72), [("random", r) for r in random_rows(12, 72, 5).tolist()])
    layers = [("digits_w8a8", f"w8a8 {op.name}", {"attrs": op.attrs, "consts": op.consts}) for op in _ln_ops(digits_w8a8)]
    layers += [("digits_w4a8", f"w4a8 {op.name}", {"attrs": op.attrs, "consts": op.consts}) for op in _ln_ops(digits_w4a8)]
    assert len(layers) == 18
    # the synthetic and limit layers go between the digits ones, so that C changes often
    extra = [("c192", "synthetic C=192", synthetic_layer(192, 5)), ("c256", "synthetic C=256 (max)", synthetic_layer(256, 6)),
             ("c2", "synthetic C=2 (min)", synthetic_layer(2, 7))]
    extra += [("limits", name, layer) for name, layer in _limit_layers(unit).items()]
    order = []
    for k in range(max(len(layers), len(extra))):
        order += layers[k:k + 1] + extra[k:k + 1]
    for group, name, layer in order:
        c = layer["attrs"]["channels"]
        n_random = 24 if c == 2 else 4
        # constants back to back with the data presented at once, with gaps and the data
        # waiting, or with gaps and the data presented at once
        add(group, name, layer, _rows(c, n_random, 100 + n), gap=GAP, stall=STALL, c_gap=0.3 if n % 3 else 0.0,
            overlap=n % 3 != 1)
        n += 1
    res = runner.run(b, TB, {"seed": 5, "units": [unit_data("ln", unit, segs)]}, "main")
    rep = next(u for u in res["units"] if u["name"] == "ln")
    return res, rep, unit, info


def _bad(rep, info, group=None, category=None) -> list[str]:
    out = []
    for s, (g, rows) in zip(rep["segments"], info):
        if group is not None and g != group:
            continue
        for r in s["bad_rows"]:
            if category is None or rows[r][0] == category:
                out.append(f"{s['name']} row {r} ({rows[r][0]})")
    return out


@pytest.mark.parametrize("group", ["digits_w8a8", "digits_w4a8", "c192", "c256", "c2", "limits", "timing"])
def test_layers_bit_exact(main_run, group):
    """Every layer's rows equal layernorm_int, for every layer of the group."""
    res, rep, unit, info = main_run
    segs = [s for s, (g, _) in zip(rep["segments"], info) if g == group]
    assert segs
    bad = _bad(rep, info, group)
    assert not bad, f"{group}: {bad[:10]}; {rep['message']}"
    for s, (g, rows) in zip(rep["segments"], info):
        if g == group:
            assert s["rows"] == len(rows) and s["beats_taken"] == s["channels"], s["name"]
    print(f"{group}: {len(segs)} layers, {sum(s['rows'] for s in segs)} rows bit-exact "
          f"(run {res['seconds']}s)")


@pytest.mark.parametrize("category", CATEGORIES)
def test_row_categories_bit_exact(main_run, category):
    res, rep, unit, info = main_run
    n = sum(1 for _, rows in info for cat, _ in rows if cat == category)
    assert n
    bad = _bad(rep, info, category=category)
    assert not bad, f"{category}: {bad[:10]}; {rep['message']}"


def test_stream_integrity(main_run):
    """Under random gaps (data and constants) and back-pressure nothing is lost, duplicated or
    reordered (in-order comparison of every element, all received, none extra), and each
    layer's constants are taken only after the previous layer's last output left."""
    res, rep, unit, info = main_run
    assert res["failed"] == 0, rep["message"]
    assert rep["mismatches"] == 0 and rep["received_beats"] == rep["beats"] and rep["extra_beats"] == 0, rep["message"]
    chans = [s["channels"] for s in rep["segments"]]
    assert {64, 192, 256, 2} <= set(chans) and sum(a != b for a, b in zip(chans, chans[1:])) >= 12
    for s in rep["segments"][1:]:
        assert s["prev_last_output_to_first_beat"] >= 1, s


def test_latency_throughput_and_loading(main_run):
    """The clean segments: latency, cycles per row and loading as documented
    (layernorm_timing).  C = 192 is input-bound (every row: latency as documented, one row
    per 192 cycles); C = 64 is bound by CALC (one row per T cycles); C = 72 by the row
    slots (row_slots rows per 2C + T + 7 cycles).  Loading: C beats in C cycles."""
    res, rep, unit, info = main_run
    s192, s64, s72 = rep["segments"][:3]
    t192, t64, t72 = unit.timing(192), unit.timing(64), unit.timing(72)
    assert t72["cycles_per_row"] > max(72, t72["calc"])             # slot-bound
    steady = s72["row_periods"][3:]
    n = unit.row_slots
    assert [sum(steady[k:k + n]) for k in range(len(steady) - n + 1)] == [t72["slot_cycles"]] * (len(steady) - n + 1)
    assert s72["row_latency"][0] == t72["latency"]
    assert s192["row_latency"] == [t192["latency"]] * s192["rows"], s192
    assert s192["row_periods"] == [t192["cycles_per_row"]] * (s192["rows"] - 1) == [192] * (s192["rows"] - 1), s192
    assert s64["row_latency"][0] == t64["latency"], s64
    steady = s64["row_periods"][len(s64["row_periods"]) // 2:]
    assert steady == [t64["cycles_per_row"]] * len(steady), s64
    for s, c in ((s192, 192), (s64, 64), (s72, 72)):
        assert s["load_cycles"] == unit.timing(c)["load"] == c
    print(f"C=192: latency {s192['row_latency'][0]} (documented {t192['latency']}), cycles/row "
          f"{s192['row_periods'][-1]} (documented {t192['cycles_per_row']}); C=64: latency {s64['row_latency'][0]} "
          f"(documented {t64['latency']}), row periods {s64['row_periods']} (documented {t64['cycles_per_row']}); "
          f"C=72: row periods {s72['row_periods']} ({n} rows per {t72['slot_cycles']} cycles documented); "
          f"loading C beats in C cycles; worst row latency under back-pressure "
          f"{max(max(s['row_latency']) for s in rep['segments'])}")


def _layernorm_floor_mean(x, attrs, consts):
    """layernorm_int with the mean rounded down: the semantics of the faulty unit."""
    x = x.to(torch.int64)
    mean = torch.div(x.sum(dim=-1, keepdim=True), x.shape[-1], rounding_mode="floor")
    y = x - mean
    var = (y * y).sum(dim=-1, keepdim=True)
    from golden.intops import isqrt
    factor = ((1 << FACTOR_BITS) - 1) // isqrt(var).clamp(min=1)
    return rshift_round(y * factor * consts["m"] + consts["b"], attrs["e"]).clamp(*signed_range(attrs["out_bits"]))


def test_faults_are_caught(digits_w8a8):
    """A deliberately broken unit (ln_bad: the mean rounded down) and a corrupted constant
    (one bit flipped in one c beat of ln) are both reported by the scoreboard, with unit,
    layer, row and channel; the outputs equal the golden model of the fault."""
    b, units = standard_harness()
    op = _ln_ops(digits_w8a8)[0]
    layer = {"attrs": op.attrs, "consts": op.consts}
    x = random_rows(6, 64, 21)
    good = layernorm_int(x, op.attrs, op.consts)
    floor_out = _layernorm_floor_mean(x, op.attrs, op.consts)
    assert not torch.equal(good, floor_out)
    # the corrupted beat: channel 5's m with bit 13 flipped
    ch, bit = 5, 13
    beats = units["ln"].const_beats(op.attrs, op.consts)
    beats[ch] = dict(beats[ch], m=beats[ch]["m"] ^ (1 << bit))
    m_bad = op.consts["m"].clone()
    m_bad[ch] ^= 1 << bit
    corrupted = {"attrs": op.attrs, "consts": {"m": m_bad, "b": op.consts["b"]}}
    flipped_out = layernorm_int(x, corrupted["attrs"], corrupted["consts"])
    assert not torch.equal(good, flipped_out)
    data = {"seed": 2, "units": [
        unit_data("ln_bad", units["ln_bad"], [segment("w8a8 blocks.0.norm1", units["ln_bad"], layer, x, record=True)]),
        unit_data("ln", units["ln"], [segment("w8a8 blocks.0.norm1 (bit flipped)", units["ln"], layer, x, beats=beats,
                                              gap=GAP, stall=STALL, record=True)])]}
    res = runner.run(b, TB, data, "faults")
    assert res["failed"] == 1
    reps = {u["name"]: u for u in res["units"]}
    r_bad, r_flip = reps["ln_bad"], reps["ln"]
    for r, fault in ((r_bad, floor_out), (r_flip, flipped_out)):
        n_diff = int((fault != good).sum())
        assert r["mismatches"] == n_diff > 0, r["message"]
        first = r["first_mismatch"]
        assert set(first) == {"unit", "segment", "segment_index", "row", "channel", "input", "expected", "got"}
        idx = int((fault != good).flatten().nonzero()[0])
        assert (first["row"], first["channel"]) == divmod(idx, 64), first
        assert r["segments"][0]["got"] == fault.flatten().tolist()
        assert "row" in r["message"] and "channel" in r["message"]
    assert r_flip["segments"][0]["bad_channels"] == [ch]
    assert "waveform" in res
    print(f"caught: {r_bad['message']}; {r_flip['message']}")


def test_cycles_per_row_measured():
    """The benchmark entry point: C = 192 rows at one element per cycle."""
    out = measure_layernorm_cycles_per_row(192)
    assert out == {"channels": 192, "cycles": 192}


def test_verilator_lint(tmp_path):
    """verilator --lint-only -Wall is clean (the Amaranth-style rules of hwgen.verilog waived)."""
    text = emit_verilog(LayerNorm.from_config(HwConfig()), "layernorm")
    assert "/work/" not in text and "/home/" not in text
    path = tmp_path / "layernorm.v"
    path.write_text(text)
    rc, out = lint(path)
    assert rc == 0 and "%Warning" not in out and "%Error" not in out, out


def test_timing_formula():
    t = layernorm_timing(192)
    assert t["root_bits"] == 19 and t["calc"] == 16 + 19 + 37 == 72
    assert t["out_depth"] == 17 and layernorm_timing(64, max_channels=64)["out_depth"] == 16
    assert t["latency"] == t["calc"] + 27 == 99 and t["cycles_per_row"] == 192 and t["load"] == 192
    assert layernorm_timing(64)["cycles_per_row"] == 72                   # CALC-bound
    assert layernorm_timing(72)["cycles_per_row"] == -(-(2 * 72 + 72 + 7) // 3) == 75    # slots
    assert layernorm_timing(64, row_slots=2)["cycles_per_row"] == -(-(2 * 64 + 72 + 7) // 2)
    assert layernorm_timing(256, max_channels=256)["cycles_per_row"] == 256


def test_from_config_capabilities():
    u = _unit(layernorm_max_channels=512, layernorm_b_bits=40, residual_bits=12, a_bits=6)
    assert (u.max_channels, u.b_bits, u.in_bits, u.out_bits, u.mult_bits, u.row_slots) == (512, 40, 12, 6, 16, 3)
    assert u.c.payload.shape().size == 16 + 40 + 6 + 1


@pytest.mark.parametrize("change,needle", [
    (dict(attrs={"channels": 300}), "layernorm channels = 300 does not fit the unit: needs 300 channels, the unit has 256 "
                                    "(layernorm_max_channels 256)"),
    (dict(attrs={"channels": 1}), "layernorm channels = 1 is not accepted"),
    (dict(attrs={"out_bits": 4}), "layernorm out_bits = 4 does not fit the unit: needs a 4-bit output, the unit has 8 bits"),
    (dict(attrs={"e": 64}), "layernorm e = 64 does not fit the unit: needs a shift of 64, the unit has 0..63"),
    (dict(m={0: 40000}), "layernorm m = 40000 does not fit the unit: needs 17 bits, the unit has 16 (mult_bits 16)"),
    (dict(m={3: -32769}), "layernorm m = -32769 does not fit the unit: needs 17 bits, the unit has 16 (mult_bits 16)"),
    (dict(b={1: 1 << 47}), f"layernorm b = {1 << 47} does not fit the unit: needs 49 bits, the unit has 48 "
                           "(layernorm_b_bits 48)"),
    (dict(m_extra=True), "layernorm m has 65 entries; needs 64 (channels)"),
])
def test_const_beats_refusals(change, needle):
    unit = _unit()
    layer = synthetic_layer(64, 64)
    attrs = dict(layer["attrs"], **change.get("attrs", {}))
    if attrs["channels"] != 64:
        layer = synthetic_layer(attrs["channels"], 1) if attrs["channels"] >= 2 else layer
    m, b = layer["consts"]["m"].tolist(), layer["consts"]["b"].tolist()
    for k, v in change.get("m", {}).items():
        m[k] = v
    for k, v in change.get("b", {}).items():
        b[k] = v
    if change.get("m_extra"):
        m.append(0)
    with pytest.raises(UserError) as exc:
        unit.const_beats(attrs, {"m": m, "b": b})
    assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_const_beats_of_a_layer():
    """One beat per channel, e in every beat, last on the final one; the limits accepted."""
    unit = _unit()
    layer = _limit_layers(unit)["limits |m| |b| max, e 47"]
    assert layer["attrs"]["channels"] == 64
    beats = unit.const_beats(layer["attrs"], layer["consts"])
    assert len(beats) == 64 and [bt["last"] for bt in beats] == [0] * 63 + [1]
    assert {bt["e"] for bt in beats} == {47}
    assert [bt["m"] for bt in beats] == layer["consts"]["m"].tolist()
    assert [bt["b"] for bt in beats] == layer["consts"]["b"].tolist()
    w = unit.pack_beat({"m": -1, "b": 0, "e": 0, "last": 1})
    assert w == ((1 << 16) - 1) | (1 << (16 + 48 + 6))


def test_capability_checks():
    with pytest.raises(UserError, match="layernorm_row_slots = 1 is out of range; accepted 2..4"):
        LayerNorm(row_slots=1)
    with pytest.raises(UserError, match="layernorm_max_channels = 1 is out of range"):
        LayerNorm(max_channels=1)
