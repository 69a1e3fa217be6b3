"""Bit-exactness of the GELU and residual-add units against the golden functions, on RTL
(cocotb), with every layer's constants loaded at run time on the units' ``c`` streams.

* GELU, all four variants, at lanes 1 and 4, one Verilator build for all eight units: every
  int8 input for each constant set, loaded one after the other into the same instance: every
  GELU layer of the digits ViT at W8A8 and W4A8 (the model's iptq constants, and for the
  other variants the constants golden.gelu.build_gelu makes at that layer's scales), two
  synthetic scale pairs, and constants at the unit's limits;
* residual add at lanes 1 and 4 (one build): random values and the extremes of both inputs
  for every add layer of the digits ViT at W8A8 and W4A8, and limit constants;
* random gaps on every input (constants included) and random back-pressure; latency and
  throughput measured against the documented figures;
* a deliberately broken GELU, and a bit flipped in one constant beat (GELU and add), are
  reported by the scoreboard;
* the same testbench on Icarus (skipped only when iverilog is not installed);
* Verilator -Wall lint of the emitted Verilog; the units' fit checks (``const_beats``) and
  the configuration checks.

Expected values always come from the golden functions (golden.gelu.gelu_int,
golden.executor.run_add); the testbench (sim/tb_stream.py) only compares.  Builds are cached
under sim_build/ by a hash of their Verilog.  (The shift exponential's tests are in
tests/test_hw_shift_exp.py.)
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
from hwgen.config import HwConfig
from hwgen.gelu import E_BITS, FY_MAX, QC_BITS, T_BITS, Gelu
from hwgen.pipeline import Stager, multiply_stages, rshift_round_stages, saturate_stages
from hwgen.residual_add import ResidualAdd
from hwgen.verilog import Harness, emit_verilog, lint
from sim import runner

TB = "sim.tb_stream"
LANES = (1, 4)
# two synthetic (s_in, s_out, calib_absmax) of a ViT MLP: FC1 output -> GELU output
GELU_SCALES = {"a": (0.05, 0.02, 5.0), "b": (0.1, 0.05, 9.0)}
Q8 = list(range(-128, 128))


def _pack(layout, beat: dict) -> int:
    """A ``c`` beat (field -> int) as the payload word of ``layout`` (a StructLayout)."""
    word = 0
    for name, field in layout:
        w = field.shape.width
        word |= (int(beat[name]) & ((1 << w) - 1)) << field.offset
    return word


def _unit(name, lanes, latency, inputs, out_bits, expected, *, gap=0.0, stall=0.0, clean=None,
          const=None, phase_beats=None):
    u = {"name": name, "prefix": f"{name}__", "lanes": lanes, "latency": latency,
         "inputs": inputs, "output": {"port": "o", "bits": out_bits, "signed": True},
         "expected": expected, "gap_prob": gap, "stall_prob": stall,
         "clean_beats": clean if clean is not None else 1 << 30}
    if const is not None:
        u["const"], u["phase_beats"] = const, phase_beats
    return u


def _phased(unit, sets: list[tuple[str, dict, dict]], data_fn, lanes: int):
    """Inputs, expected values, constant phases and data beats per phase of ``unit`` for the
    constant sets ``sets`` (name, attrs, consts); ``data_fn(attrs, consts)`` gives one
    phase's input columns (lists, a multiple of ``lanes`` long) and expected values."""
    cols, expected, phases, beats = None, [], [], []
    for _, attrs, consts in sets:
        phases.append([_pack(unit.c_layout, b) for b in unit.const_beats(attrs, consts)])
        ins, exp = data_fn(attrs, consts)
        assert all(len(c) % lanes == 0 for c in ins)
        cols = [list(c) for c in ins] if cols is None else [a + list(c) for a, c in zip(cols, ins)]
        expected += exp
        beats.append(len(ins[0]) // lanes)
    return cols, expected, phases, beats


def _by_name(result: dict) -> dict:
    return {u["name"]: u for u in result.get("units", [])}


def _assert_timing(r: dict, latency: int, lanes: int) -> None:
    assert r["latency"] == latency, f"{r['name']}: measured latency {r['latency']}, documented {latency}"
    assert r["throughput_beats_per_cycle"] == 1.0, r
    assert r["throughput_elements_per_cycle"] == lanes, r


# --- GELU constant sets --------------------------------------------------------------------

def _digits_gelu_layers(graphs) -> list[tuple[str, dict]]:
    """(name, op) of every GELU layer of ``graphs`` (bits tag -> graph), identical constant
    sets once (W8A8 and W4A8 share them: the GELU's scales come from the activations)."""
    found: dict = {}
    for tag, g in graphs.items():
        for op in g.ops_of("gelu"):
            key = (repr(sorted(op.attrs.items())), tuple(op.consts.get("table", torch.zeros(0)).tolist()),
                   op.meta["s_in"], op.meta["s_out"])
            found.setdefault(key, ([], op))[0].append(tag)
    return [(f"{'+'.join(tags)}:{op.name}", op) for tags, op in found.values()]


def _limit_sets(unit: Gelu) -> list[tuple[str, dict, dict]]:
    """Constants at the unit's limits (widest fields, extreme shifts, saturating outputs)."""
    ib, ob = unit.in_bits, unit.out_bits
    mmax, emax = (1 << unit.mult_bits) - 1, (1 << E_BITS) - 1
    base = {"variant": unit.variant, "in_bits": ib, "out_bits": ob}
    if unit.variant in ("ibert", "iptq"):
        d = unit.degree
        qbmax = (1 << unit.qb_bits) - 1
        def min_sh(qb):     # the smallest sh with rshift_round(qb^d, sh) < 2^T_BITS
            return next(s for s in range(64) if ((qb ** d + (1 << (s - 1))) >> s if s else qb ** d) >> T_BITS == 0)
        sh = min_sh(qbmax)
        qcmax = (1 << QC_BITS) - 1
        sets = {"lim_wide": dict(qb=qbmax, qc=qcmax, sh=sh, m=mmax, e=33),
                "lim_e0": dict(qb=qbmax, qc=qcmax, sh=sh, m=mmax, e=0),
                "lim_emax": dict(qb=qbmax, qc=qcmax, sh=sh, m=mmax, e=emax),
                "lim_narrow": dict(qb=1, qc=1, sh=(1 << unit.sh_bits) - 1, m=1, e=0),
                "lim_mid": dict(qb=qbmax // 3, qc=qcmax // 2, sh=min_sh(qbmax // 3), m=mmax // 3, e=30)}
        return [(n, dict(base, degree=d, **a), {}) for n, a in sets.items()]
    if unit.variant == "ishift":
        ev = unit.exp_variant
        sets = {"lim_wide": dict(fy=FY_MAX, m_y=mmax, e_y=12, m=mmax, e=31),
                "lim_fy1": dict(fy=1, m_y=mmax, e_y=0, m=mmax, e=0),
                "lim_sat_y": dict(fy=FY_MAX, m_y=mmax, e_y=0, m=mmax, e=30),
                "lim_y0": dict(fy=7, m_y=1, e_y=emax, m=1, e=emax),
                "lim_small": dict(fy=3, m_y=12345, e_y=11, m=40000, e=29)}
        return [(n, dict(base, exp_variant=ev, **a), {}) for n, a in sets.items()]
    lo, hi = -(1 << (ob - 1)), (1 << (ob - 1)) - 1
    n = 1 << ib
    rng = random.Random(9)
    tables = {"lim_alt": [lo if i % 2 else hi for i in range(n)],
              "lim_ramp": [lo + (i * (hi - lo)) // (n - 1) for i in range(n)],
              "lim_random": [rng.randint(lo, hi) for _ in range(n)]}
    return [(k, dict(base), {"table": torch.tensor(t)}) for k, t in tables.items()]


def _gelu_sets(unit: Gelu, layers) -> list[tuple[str, dict, dict]]:
    """Every constant set a GELU unit of ``unit.variant`` runs in the exhaustive test."""
    v = unit.variant
    sets = []
    for name, op in layers:
        if op.attrs["variant"] == v:
            sets.append((name, op.attrs, op.consts))
        else:
            built = build_gelu(v, op.meta["s_in"], op.meta["s_out"], op.attrs["in_bits"], op.attrs["out_bits"])
            sets.append((name, built["attrs"], built["consts"]))
    for tag, (s_in, s_out, absmax) in GELU_SCALES.items():
        built = build_gelu(v, s_in, s_out, 8, 8, calib_absmax=absmax)
        sets.append((f"synthetic_{tag}", built["attrs"], built["consts"]))
    return sets + _limit_sets(unit)


@pytest.fixture(scope="module")
def digits_graphs(digits_w8a8, digits_w4a8):
    return {"w8a8": digits_w8a8.graph, "w4a8": digits_w4a8.graph}


@pytest.fixture(scope="module")
def gelu_run(digits_graphs):
    layers = _digits_gelu_layers(digits_graphs)
    units = {f"gelu_{v}_l{n}": Gelu(v, lanes=n) for v in GELU_VARIANTS for n in LANES}
    b = runner.build(Harness(units), "gelu_harness", {}, ports_only=True)
    data = {"seed": 7, "units": []}
    sets_of = {}
    for name, unit in units.items():
        sets = _gelu_sets(unit, layers)
        sets_of[name] = sets

        def one(attrs, consts):
            return [Q8], gelu_int(torch.tensor(Q8), attrs, consts).tolist()
        cols, expected, phases, beats = _phased(unit, sets, one, unit.lanes)
        data["units"].append(_unit(name, unit.lanes, unit.latency, [{"port": "i", "bits": 8, "signed": True,
                                                                      "values": cols[0]}], 8, expected,
                                   gap=0.2, stall=0.3, clean=40, phase_beats=beats,
                                   const={"port": "c", "phases": phases, "gap_prob": 0.2}))
    res = runner.run(b, TB, data, "exhaustive")
    return res, units, sets_of, b, layers


@pytest.mark.parametrize("variant", GELU_VARIANTS)
def test_gelu_exhaustive(gelu_run, variant):
    res, units, sets_of, b, layers = gelu_run
    by = _by_name(res)
    assert len(layers) >= 4 and all(op.type == "gelu" for _, op in layers)
    for lanes in LANES:
        name = f"gelu_{variant}_l{lanes}"
        r, sets = by[name], sets_of[name]
        assert r["mismatches"] == 0, r["message"]
        assert r["checked"] == 256 * len(sets), r
        assert r["const_accepted"] == r["const_beats"], r
        _assert_timing(r, units[name].latency, lanes)
        # data enter the cycle after the constants (lut: after the table's last entry), plus
        # lanes - 1 cycles while the per-lane copies fill (hwgen.pipeline.lane_constants)
        settle = 0 if variant == "lut" else lanes - 1
        assert min(r["const_to_data_cycles"]) == 1 + settle, r["const_to_data_cycles"]
        print(f"{name}: {len(sets)} constant sets ({', '.join(n for n, _, _ in sets)}) x 256 int8 inputs "
              f"bit-exact; latency {r['latency']} cycles, {r['throughput_elements_per_cycle']} elements/cycle, "
              f"constant load {r['const_load_cycles'][0]} cycles ({r['const_beats'] // len(sets)} beat(s) a layer), "
              f"data {min(r['const_to_data_cycles'])} cycle(s) after the last constant beat; "
              f"{r['cycles_total']} cycles in all with gaps and back-pressure; "
              f"build {b.seconds:.1f}s, run {res['seconds']}s")
    assert res["failed"] == 0


# --- residual add --------------------------------------------------------------------------

def _add_sets(graphs, unit: ResidualAdd) -> list[tuple[str, dict, tuple[int, int]]]:
    """(name, attrs, (a_bits, b_bits)) of every add layer of the digits graphs (distinct
    constants and widths once), then constants at the unit's limits."""
    found: dict = {}
    for tag, g in graphs.items():
        for op in g.ops_of("add"):
            widths = tuple(g.tensors[n]["bits"] for n in op.inputs)
            key = (repr(sorted(op.attrs.items())), widths)
            found.setdefault(key, ([], op, widths))[0].append(tag)
    out = [(f"{'+'.join(tags)}:{op.name}", dict(op.attrs), widths) for tags, op, widths in found.values()]
    mmax, emax, bits = (1 << unit.mult_bits) - 1, (1 << E_BITS) - 1, unit.bits
    for name, (ma, ea, mb, eb) in {"lim_sat": (mmax, 0, mmax, 0), "lim_zero": (mmax, emax, mmax, emax),
                                   "lim_identity": (1, 0, 1, 0), "lim_mixed": (mmax, 16, 1, 1),
                                   "lim_one_branch": (0, 0, mmax, 17)}.items():
        out.append((name, {"out_bits": bits, "m_a": ma, "e_a": ea, "m_b": mb, "e_b": eb}, (bits, bits)))
    return out


def _add_data(rng: random.Random, a_bits: int, b_bits: int, lanes: int, n_random: int):
    a_lo, a_hi = -(1 << (a_bits - 1)), (1 << (a_bits - 1)) - 1
    b_lo, b_hi = -(1 << (b_bits - 1)), (1 << (b_bits - 1)) - 1
    ext_a = [a_lo, a_lo + 1, -1, 0, 1, a_hi - 1, a_hi]
    ext_b = [b_lo, b_lo + 1, -1, 0, 1, b_hi - 1, b_hi]
    a = [x for x in ext_a for _ in ext_b] + [rng.randint(a_lo, a_hi) for _ in range(n_random)]
    b = [y for _ in ext_a for y in ext_b] + [rng.randint(b_lo, b_hi) for _ in range(n_random)]
    while len(a) % lanes:
        a.append(rng.randint(a_lo, a_hi))
        b.append(rng.randint(b_lo, b_hi))
    return a, b


def _add_unit_data(name: str, unit: ResidualAdd, sets, seed: int, n_random: int, *, corrupt=None):
    rng = random.Random(seed)
    lanes, bits = unit.lanes, unit.bits
    phases, beats, a_all, b_all, expected = [], [], [], [], []
    for set_name, attrs, (a_bits, b_bits) in sets:
        phases.append([_pack(unit.c_layout, x) for x in unit.const_beats(attrs, {})])
        a, b = _add_data(rng, a_bits, b_bits, lanes, n_random)
        expected += run_add(Op("add", set_name, ["a", "b"], ["o"], attrs), torch.tensor(a), torch.tensor(b)).tolist()
        a_all += a
        b_all += b
        beats.append(len(a) // lanes)
    const = {"port": "c", "phases": phases, "gap_prob": 0.2}
    if corrupt:
        const["corrupt"] = corrupt
    return _unit(name, lanes, unit.latency, [{"port": "a", "bits": bits, "signed": True, "values": a_all},
                                             {"port": "b", "bits": bits, "signed": True, "values": b_all}],
                 bits, expected, gap=0.2, stall=0.3, clean=40, const=const, phase_beats=beats)


def test_residual_add(digits_graphs):
    units = {f"add_l{n}": ResidualAdd(lanes=n) for n in LANES}
    b = runner.build(Harness(units), "residual_add_harness", {}, ports_only=True)
    data = {"seed": 3, "units": []}
    sets = _add_sets(digits_graphs, units["add_l1"])
    assert sum(1 for n, _, _ in sets if not n.startswith("lim_")) >= 9
    for name, unit in units.items():
        data["units"].append(_add_unit_data(name, unit, sets, 5, 200))
    n_expected = {u["name"]: len(u["expected"]) for u in data["units"]}
    res = runner.run(b, TB, data, "random_extremes")
    for name, unit in units.items():
        r = _by_name(res)[name]
        assert r["mismatches"] == 0, r["message"]
        assert r["checked"] == n_expected[name] and r["const_accepted"] == len(sets), r
        _assert_timing(r, unit.latency, unit.lanes)
        assert min(r["const_to_data_cycles"]) == unit.lanes, r["const_to_data_cycles"]
        print(f"{name}: {len(sets)} constant sets ({', '.join(n for n, _, _ in sets)}), {r['checked']} "
              f"random+extreme pairs bit-exact; latency {r['latency']} cycles, "
              f"{r['throughput_elements_per_cycle']} elements/cycle, constant load {r['const_load_cycles'][0]} "
              f"cycle(s), data {min(r['const_to_data_cycles'])} cycle(s) after it; build {b.seconds:.1f}s, "
              f"run {res['seconds']}s")
    assert res["failed"] == 0


# --- the testbench can fail ----------------------------------------------------------------

class BrokenGelu(Gelu):
    """A GELU whose output rounding shift truncates instead of rounding (a plausible bug)."""

    def _requant_out(self, st, v, m, e):
        w, _ = multiply_stages(st, v, m, name="w")
        o, _ = saturate_stages(st, st.stage(t=w >> e).t, self.out_bits, name="o")
        return o


def test_broken_unit_and_corrupted_constant_are_caught():
    """A broken GELU, and a correct GELU and add (2 lanes) that each get one constant beat with
    one bit flipped, must all be reported by the scoreboard, naming the first mismatch."""
    layer = build_gelu("ibert", 0.05, 0.02, 8, 8)
    layer2 = build_gelu("ibert", 0.1, 0.05, 8, 8)
    units = {"broken": BrokenGelu("ibert"), "gelu_corrupt": Gelu("ibert"), "add_corrupt": ResidualAdd(lanes=2)}
    # the corrupted bit: bit 13 of the second layer's m (golden-checked to change outputs)
    g = units["gelu_corrupt"]
    m_field = dict(g.c_layout)["m"]
    bad_attrs = dict(layer2["attrs"], m=layer2["attrs"]["m"] ^ (1 << 13))
    q = torch.tensor(Q8)
    assert not torch.equal(gelu_int(q, bad_attrs, {}), gelu_int(q, layer2["attrs"], {}))
    sets = [("first", layer["attrs"], {}), ("second", layer2["attrs"], {})]

    def one(attrs, consts):
        return [Q8], gelu_int(q, attrs, consts).tolist()
    data = {"seed": 1, "units": []}
    for name in ("broken", "gelu_corrupt"):
        cols, expected, phases, beats = _phased(units[name], sets, one, 1)
        const = {"port": "c", "phases": phases}
        if name == "gelu_corrupt":
            const["corrupt"] = {"beat": 1, "bit": m_field.offset + 13}
        data["units"].append(_unit(name, 1, units[name].latency, [{"port": "i", "bits": 8, "signed": True,
                                                                    "values": cols[0]}], 8, expected,
                                   const=const, phase_beats=beats))
    add = units["add_corrupt"]
    add_sets = [("x", {"out_bits": 16, "m_a": 59135, "e_a": 16, "m_b": 40609, "e_b": 9}, (16, 8))]
    data["units"].append(_add_unit_data("add_corrupt", add, add_sets, 2, 100,
                                        corrupt={"beat": 0, "bit": dict(add.c_layout)["e_b"].offset + 1}))
    b = runner.build(Harness(units), "elementwise_faults", {}, ports_only=True)
    res = runner.run(b, TB, data, "faults")
    assert res["failed"] == 1
    by = _by_name(res)
    for name in units:
        r = by[name]
        first = r["first_mismatch"]
        assert r["mismatches"] > 0 and first["unit"] == name, r
        assert set(first) == {"unit", "index", "input", "expected", "got"}
        assert first["expected"] != first["got"]
        print(f"caught: {r['message']}")
    # the corrupted GELU beat is the second layer's: the first layer's 256 outputs are right
    assert by["gelu_corrupt"]["first_mismatch"]["index"] >= 256
    assert "waveform" in res and Path(res["waveform"]).stat().st_size > 0


# --- Icarus ------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog (Icarus Verilog) is not on PATH")
def test_icarus_smoke():
    units = {"gelu": Gelu("iptq", lanes=2), "add": ResidualAdd(lanes=2)}
    b = runner.build(Harness(units), "icarus_smoke", {}, simulator="icarus")
    sets = [(t, build_gelu("iptq", s_in, s_out, 8, 8, calib_absmax=a)["attrs"], {})
            for t, (s_in, s_out, a) in GELU_SCALES.items()]

    def one(attrs, consts):
        return [Q8], gelu_int(torch.tensor(Q8), attrs, consts).tolist()
    cols, expected, phases, beats = _phased(units["gelu"], sets, one, 2)
    add_sets = [("x", {"out_bits": 16, "m_a": 59135, "e_a": 16, "m_b": 40609, "e_b": 9}, (16, 8)),
                ("y", {"out_bits": 16, "m_a": 65535, "e_a": 0, "m_b": 1, "e_b": 0}, (16, 16))]
    data = {"seed": 2, "units": [
        _unit("gelu", 2, units["gelu"].latency, [{"port": "i", "bits": 8, "signed": True, "values": cols[0]}], 8,
              expected, gap=0.2, stall=0.3, clean=20, const={"port": "c", "phases": phases, "gap_prob": 0.2},
              phase_beats=beats),
        _add_unit_data("add", units["add"], add_sets, 4, 60)]}
    res = runner.run(b, TB, data, "smoke")
    for name, u in units.items():
        r = _by_name(res)[name]
        assert r["mismatches"] == 0, r["message"]
        _assert_timing(r, u.latency, 2)
    assert res["failed"] == 0


# --- lint, fit checks and configuration --------------------------------------------------------

def test_verilator_lint(tmp_path):
    """verilator --lint-only -Wall is clean on every unit (four Amaranth-style rules waived)."""
    tops = {f"gelu_{v}": Gelu(v, lanes=1 if v == "ishift" else 2) for v in GELU_VARIANTS}   # ishift: the largest
    tops["residual_add"] = ResidualAdd(lanes=2)
    for name, top in tops.items():
        path = tmp_path / f"{name}.v"
        text = emit_verilog(top, name)
        assert "/work/" not in text and "/home/" not in text   # emit_src=False: no absolute paths
        path.write_text(text)
        rc, out = lint(path)
        assert rc == 0 and "%Warning" not in out and "%Error" not in out, f"{name}:\n{out}"


def _quiet(*units):
    """Units made only to check their parameters or constants, never elaborated."""
    for u in units:
        u._MustUse__silence = True
    return units[0]


def _refused(unit, attrs, consts=None) -> str:
    with pytest.raises(UserError) as exc:
        unit.const_beats(attrs, consts or {})
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_const_beats_fit_checks():
    """A layer that needs more than the unit has is refused in one line naming the field, the
    need and the limit; a fitting layer gives its beats."""
    iptq = build_gelu("iptq", 0.05, 0.02, 8, 8, calib_absmax=5.0)["attrs"]
    g = _quiet(Gelu("iptq"))
    assert g.const_beats(iptq, {}) == [{k: iptq[k] for k in ("qb", "qc", "sh", "m", "e")}]
    assert _refused(g, dict(iptq, qb=70000)) == ("gelu qb = 70000 does not fit the unit: needs 17 bits, the unit "
                                                 "has 10 (gelu qb_bits 10)")
    assert "gelu m = 65536 does not fit the unit: needs 17 bits, the unit has 16 (mult_bits 16)" == \
        _refused(g, dict(iptq, m=65536))
    assert "needs 6 bits, the unit has 6" not in _refused(g, dict(iptq, e=64))
    assert "gelu e = 64 does not fit the unit: needs 7 bits, the unit has 6" in _refused(g, dict(iptq, e=64))
    assert "gelu t = rshift_round(qb^4, sh)" in _refused(g, dict(iptq, qb=1000, sh=0))
    assert _refused(g, dict(iptq, degree=2)).startswith("gelu degree = 2 does not fit the unit")
    assert _refused(g, dict(iptq, out_bits=16)) == "gelu out_bits = 16 does not fit the unit: the unit has gelu_out_bits 8"
    assert _refused(g, dict(iptq, in_bits=12)) == "gelu in_bits = 12 does not fit the unit: needs at most gelu_in_bits 8"
    assert _refused(_quiet(Gelu("ibert")), iptq) == "gelu variant = 'iptq' does not fit the unit: the unit is 'ibert'"
    assert len(g.const_beats(dict(iptq, in_bits=6), {})) == 1                 # narrower input: sign-extended
    ish = build_gelu("ishift", 0.05, 0.02, 8, 8)["attrs"]
    gi = _quiet(Gelu("ishift"))
    assert gi.const_beats(ish, {})[0]["fy"] == ish["fy"]
    assert _refused(gi, dict(ish, fy=15)) == "gelu fy = 15 does not fit the unit: accepted 1..14 (golden ISHIFT_Y_BITS 16 - 2)"
    assert "the unit has 'linear'" in _refused(gi, dict(ish, exp_variant="shiftfit"))
    lut = build_gelu("lut", 0.05, 0.02, 8, 8)
    gl = _quiet(Gelu("lut"))
    assert [b["table"] for b in gl.const_beats(lut["attrs"], lut["consts"])] == lut["consts"]["table"].tolist()
    assert _refused(gl, lut["attrs"], {"table": torch.zeros(128)}) == ("gelu table of 128 entries does not fit the "
                                                                      "unit: needs 2^gelu_in_bits = 256")
    assert _refused(gl, lut["attrs"], {"table": torch.full((256,), 300)}) == (
        "gelu table[0] = 300 does not fit the unit: needs 10 bits, the unit has 8 (gelu_out_bits 8)")
    add = _quiet(ResidualAdd())
    attrs = {"out_bits": 16, "m_a": 59135, "e_a": 16, "m_b": 40609, "e_b": 9}
    assert add.const_beats(attrs, {}) == [{k: attrs[k] for k in ("m_a", "e_a", "m_b", "e_b")}]
    assert _refused(add, dict(attrs, m_b=1 << 16)) == ("add m_b = 65536 does not fit the unit: needs 17 bits, the "
                                                      "unit has 16 (mult_bits 16)")
    assert _refused(add, dict(attrs, e_a=64)) == ("add e_a = 64 does not fit the unit: needs 7 bits, the unit has 6 "
                                                 "(golden MAX_SHIFT 62)")
    assert _refused(add, dict(attrs, out_bits=8)) == "add out_bits = 8 does not fit the unit: the unit has residual_bits 16"


def test_rshift_round_stages_width_cut():
    """rshift_round_stages keeps width + 2 bits before the increment (a signed result that
    fits ``width`` bits can come from 2v >> e = -2^width - 1)."""
    from amaranth.hdl import Const, Module, Signal, signed
    m = _quiet(Module())
    st = Stager(m, Const(1))
    r, _ = rshift_round_stages(st, Signal(signed(20)), Signal(4), width=8)
    assert r.shape() == signed(8) and st.depth == 3


@pytest.mark.parametrize("field,value,needle", [
    ("lanes", 0, "lanes = 0 is out of range; accepted 1..64"),
    ("a_bits", 1, "a_bits = 1 is out of range; accepted 2..16"),
    ("gelu_variant", "cubic", "gelu_variant = 'cubic' is not accepted; accepted ibert, iptq, ishift, lut"),
    ("residual_bits", 40, "residual_bits = 40 is out of range; accepted 4..32"),
    ("acc_bits", 12, "acc_bits = 12 is out of range; accepted 16..64"),
])
def test_config_rejects(field, value, needle):
    with pytest.raises(UserError) as exc:
        HwConfig(**{field: value})
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg


def test_from_config():
    cfg = HwConfig().replace(lanes=2, gelu_variant="ibert", residual_bits=20, mult_bits=12)
    g = _quiet(Gelu.from_config(cfg))
    assert (g.variant, g.in_bits, g.out_bits, g.lanes, g.mult_bits) == ("ibert", 8, 8, 2, 12)
    assert _quiet(Gelu.from_config(cfg, variant="ishift")).exp_variant == "linear"
    a = _quiet(ResidualAdd.from_config(cfg))
    assert (a.bits, a.lanes, a.mult_bits) == (20, 2, 12)
    assert dict(a.c_layout)["m_a"].shape.width == 12
