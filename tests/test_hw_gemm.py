"""Bit-exactness of the systolic GEMM (hwgen.gemm) against the golden executor, on RTL (cocotb).

Every expected value comes from golden.executor.run_linear / run_matmul (an Op with the attrs and
consts they read); the testbench (sim/tb_gemm.py) only moves data and compares.  The GEMM sits in
a Verilog test host (sim/perf_gemm.py) that replays the tiles from memories, so the simulator
runs free; one cached Verilator build holds three systems: W8A8 8x8 ("s8"), W4A8 8x8 ("s4") and
a non-square 3x5 array with unsigned activations ("u35").

* random tiles, per-channel requantization and the raw accumulator, with random gaps in every
  input's valid and random back-pressure on the output (counts checked: nothing lost or
  duplicated; order checked by position);
* every operand at its extreme (-128 x -128 and +127 across K = 768, with the largest bias the
  32-bit accumulator admits), requantized at the extremes of m and e;
* 4-bit weights; M, N, K that are not multiples of the array (K = 1 and K < the tile period);
* the measured latency and input throughput equal the documented ones;
* a deliberately wrong constant is caught, named (unit, row, col, expected, got), with a waveform;
* utilization is measured (small shape: a sanity check, not a speed assertion);
* Verilator -Wall lint of the emitted Verilog, and the parameter checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from golden.errors import UserError
from golden.graph import Op
from hwgen.gemm import Gemm, gemm_latency
from hwgen.pipeline import compress, fit, partial_products, product_shape, sum_pair
from hwgen.requant import Requant
from hwgen.verilog import emit_verilog, lint
from sim import perf_gemm as pg

S8, S4, U35, X8 = pg.STANDARD_SYSTEMS     # X8: the other multiplier kind (gemm_mult)
ACC = 32


@pytest.fixture(scope="module")
def bench():
    return pg.build_bench()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_op(w: torch.Tensor, bias, m=None, e=None, out_bits: int = 8, w_bits: int = 8) -> Op:
    n = w.shape[0]
    attrs = {"a_bits": 8, "a_signed": True, "w_bits": w_bits, "acc_bits": ACC, "out_bits": out_bits,
             "out_signed": True, "in_features": w.shape[1], "out_features": n}
    consts = {"weight": w, "bias": torch.as_tensor(bias, dtype=torch.int64).expand(n).clone()}
    if out_bits:
        consts["m"] = torch.as_tensor(m, dtype=torch.int64).expand(n).clone()
        consts["e"] = torch.as_tensor(e, dtype=torch.int64).expand(n).clone()
    return Op("linear", "gemm_test", ["x"], ["y"], attrs, consts)


def random_linear(seed: int, M: int, K: int, N: int, out_bits: int = 8, w_bits: int = 8):
    g = _gen(seed)
    wmax = 1 << (w_bits - 1)
    x = torch.randint(-128, 128, (M, K), generator=g)
    w = torch.randint(-wmax, wmax, (N, K), generator=g)
    bias = torch.randint(-(1 << 20), 1 << 20, (N,), generator=g)
    m = torch.randint(1 << 14, 1 << 16, (N,), generator=g)
    e = torch.randint(16 if out_bits == 8 else 8, 28, (N,), generator=g)
    if N > 2:                      # the ends of the shift range too
        e[0], e[1], m[1] = 0, 62, (1 << 16) - 1
    return x, linear_op(w, bias, m, e, out_bits, w_bits)


def _run(bench, jobs, name):
    res = pg.run_jobs(bench, jobs, name)
    for j in jobs:
        r = res["by_name"].get(j["name"])
        assert r is not None, f"{j['name']}: no report ({res})"
        assert r["mismatches"] == 0 and not r["problems"], r["message"]
        assert r["checked"] == j["M"] * j["N"]
        print(f"{r['message']}; shape {r['shape']}, {r['tiles']} tiles, {r['cycles']} cycles, "
              f"utilization {r['utilization']}, gaps {j['gap']}/256, stalls {j['stall']}/256")
    assert res["failed"] == 0
    return res


# --- random tiles --------------------------------------------------------------------------

def test_random_requant_and_raw(bench):
    jobs = []
    x, op = random_linear(1, 37, 100, 29, out_bits=8)
    jobs.append(pg.linear_job(S8, "rand_q8_clean", op, x))
    jobs.append(pg.linear_job(S8, "rand_q8_gaps", op, x, gap=0.25, stall=0.3, seed=3))
    x, op = random_linear(2, 20, 64, 19, out_bits=16)
    jobs.append(pg.linear_job(S8, "rand_q16_gaps", op, x, gap=0.3, stall=0.2, seed=4))
    x, op = random_linear(3, 21, 50, 17, out_bits=0)
    jobs.append(pg.linear_job(S8, "rand_raw_gaps", op, x, gap=0.2, stall=0.4, seed=5))
    x, op = random_linear(4, 37, 100, 29, out_bits=8)
    jobs.append(pg.linear_job(X8, "x_rand_q8_clean", op, x))
    jobs.append(pg.linear_job(X8, "x_rand_q8_gaps", op, x, gap=0.25, stall=0.3, seed=6))
    x, op = random_linear(5, 21, 50, 17, out_bits=0)
    jobs.append(pg.linear_job(X8, "x_rand_raw_gaps", op, x, gap=0.2, stall=0.4, seed=7))
    res = _run(bench, jobs, "random")
    # documented timing, measured: latency from a tile's last input beat to its first output
    # row, and one operand beat per cycle (K = 100 >= the minimum tile period)
    for s, name in ((S8, "rand_q8_clean"), (X8, "x_rand_q8_clean")):
        clean = res["by_name"][name]
        assert clean["latency"] == gemm_latency(8, 8, s.mult)
        assert clean["input_beats_per_cycle"] == 1.0
        print(f"{s.name} ({s.mult}) latency {clean['latency']} cycles, {clean['input_beats_per_cycle']} operand beats/cycle")


def test_backpressure_stress(bench):
    """Heavy random gaps on a, w, p and heavy back-pressure on o: nothing lost, duplicated or
    reordered (the host counts beats on every port; the scoreboard checks every position)."""
    x, op = random_linear(7, 24, 40, 24, out_bits=8)
    jobs = [pg.linear_job(S8, "stress_a", op, x, gap=0.6, stall=0.7, seed=11),
            pg.linear_job(S8, "stress_b", op, x, gap=0.05, stall=0.85, seed=12),
            pg.linear_job(S8, "stress_c", op, x, gap=0.85, stall=0.05, seed=13)]
    _run(bench, jobs, "stress")


# --- extremes -----------------------------------------------------------------------------

def _extreme_jobs(s: pg.GemmSystem, K: int, M: int = 9, N: int = 10) -> list[dict]:
    amin, amax = -128, 127
    wmin, wmax = -(1 << (s.w_bits - 1)), (1 << (s.w_bits - 1)) - 1
    big = (1 << (ACC - 1)) - 1 - 128 * (1 << (s.w_bits - 1)) * K     # the largest bias that fits
    full = lambda shape, v: torch.full(shape, v, dtype=torch.int64)  # noqa: E731
    e_spread = torch.linspace(0, 62, N).round().to(torch.int64)
    jobs = []
    # -128 x -128 over all K, + the largest bias: acc + bias = 2^31 - 1 exactly
    op = linear_op(full((N, K), wmin), big, out_bits=0, w_bits=s.w_bits)
    jobs.append(pg.linear_job(s, f"{s.name}_ext_nn_raw", op, full((M, K), amin), gap=0.2, stall=0.3, seed=21))
    # -128 x +max, - the largest bias
    op = linear_op(full((N, K), wmax), -big, out_bits=0, w_bits=s.w_bits)
    jobs.append(pg.linear_job(s, f"{s.name}_ext_np_raw", op, full((M, K), amin), seed=22))
    # +127 x +max, + the largest bias, requantized with m at its maximum and e over 0..62
    op = linear_op(full((N, K), wmax), big, (1 << 16) - 1, e_spread, out_bits=8, w_bits=s.w_bits)
    jobs.append(pg.linear_job(s, f"{s.name}_ext_pp_q8", op, full((M, K), amax), gap=0.3, stall=0.2, seed=23))
    # -128 x -128 requantized to 16 bits, bias alternating +-largest, e over 0..62
    signs = torch.tensor([1 if j % 2 else -1 for j in range(N)])
    op = linear_op(full((N, K), wmin), signs * big, (1 << 16) - 1, e_spread.flip(0), out_bits=16, w_bits=s.w_bits)
    jobs.append(pg.linear_job(s, f"{s.name}_ext_nn_q16", op, full((M, K), amin), seed=24))
    # checkerboards of the extremes (sums cancel and saturate in turn), 32-bit clamp
    xs = torch.where((torch.arange(M)[:, None] + torch.arange(K)[None]) % 2 == 0, amin, amax)
    ws = torch.where((torch.arange(N)[:, None] // 2 + torch.arange(K)[None]) % 3 == 0, wmin, wmax)
    op = linear_op(ws, signs * big, (1 << 16) - 1, e_spread, out_bits=32, w_bits=s.w_bits)
    jobs.append(pg.linear_job(s, f"{s.name}_ext_mix_q32", op, xs, gap=0.25, stall=0.25, seed=25))
    return jobs


def test_extremes_k768(bench):
    jobs = _extreme_jobs(S8, 768) + _extreme_jobs(X8, 768)
    res = _run(bench, jobs, "extremes_w8")
    # the raw -128 x -128 job really reaches the top of the accumulator
    assert jobs[0]["expected"][0][0] == (1 << 31) - 1
    assert jobs[1]["expected"][0][0] == -128 * 127 * 768 - ((1 << 31) - 1 - 128 * 128 * 768)
    assert res["failed"] == 0


def test_w4_weights(bench):
    """W4A8: 4-bit weights (random, and the extremes over K = 768)."""
    x, op = random_linear(8, 30, 120, 21, out_bits=8, w_bits=4)
    jobs = [pg.linear_job(S4, "w4_rand_q8", op, x, gap=0.2, stall=0.3, seed=31)]
    x, op = random_linear(9, 11, 33, 13, out_bits=0, w_bits=4)
    jobs.append(pg.linear_job(S4, "w4_rand_raw", op, x, seed=32))
    jobs += _extreme_jobs(S4, 768)
    res = _run(bench, jobs, "w4")
    assert jobs[2]["expected"][0][0] == (1 << 31) - 1
    assert res["by_name"]["w4_rand_raw"]["latency"] == gemm_latency(8, 8, S4.mult)


# --- shapes that do not fill the array ----------------------------------------------------------

def test_ragged_shapes(bench):
    """M, N, K not multiples of 8, K = 1 and K shorter than the tile period (the next tile's
    last beat waits for the drain), and the non-square 3x5 array with unsigned activations
    (the attention-probability x V matmul of golden.executor.run_matmul)."""
    jobs = []
    for i, (name, (M, K, N), ob) in enumerate((("rag_13x21x11", (13, 21, 11), 8), ("rag_k1", (10, 1, 9), 0),
                                               ("rag_k5", (17, 5, 3), 8), ("rag_k23", (9, 23, 15), 16))):
        x, op = random_linear(100 + i, M, K, N, out_bits=ob)
        jobs.append(pg.linear_job(S8, name, op, x, gap=0.15, stall=0.15, seed=len(jobs) + 40))
    g = _gen(50)
    p = torch.randint(0, 256, (11, 37), generator=g)               # unsigned 8-bit probabilities
    v = torch.randint(-128, 128, (37, 12), generator=g)
    mm = Op("matmul", "ctx", ["a", "b"], ["y"], {"a_bits": 8, "a_signed": False, "b_bits": 8, "b_signed": True,
                                                 "acc_bits": ACC, "out_bits": 8, "out_signed": True,
                                                 "m": 40503, "e": 23})
    jobs.append(pg.matmul_job(U35, "u35_ctx", mm, p, v, gap=0.2, stall=0.3, seed=51))
    p_ext = torch.full((7, 64), 255, dtype=torch.int64)
    v_ext = torch.full((64, 6), -128, dtype=torch.int64)
    mm_ext = Op("matmul", "ctx_ext", ["a", "b"], ["y"], dict(mm.attrs, out_bits=16, m=65535, e=10))
    jobs.append(pg.matmul_job(U35, "u35_ext", mm_ext, p_ext, v_ext, seed=52))
    res = _run(bench, jobs, "ragged")
    assert res["by_name"]["u35_ext"]["latency"] == gemm_latency(3, 5, U35.mult)     # no gaps, no stalls


# --- reset mid-run ----------------------------------------------------------------------------

def test_reset_mid_run(bench):
    """A reset at any point of a run (operands half taken; a tile's last beat in the array,
    the result chains or the requantizer; rows waiting in the output queue under back-pressure),
    then the same job restarted at once: every output is right and counted once.  Only the
    state the ports see has a reset; the aborted run's beats still in flight drain and their
    rows are dropped before the output queue (hwgen.gemm, "Reset")."""
    x, op = random_linear(80, 20, 20, 16, out_bits=8)      # 3 x 2 tiles, K = 20 < the tile period
    sweep = [[a, 1 + a % 2] for a in range(1, 90, 3)]        # one reset every phase, 1 or 2 cycles
    jobs = [pg.linear_job(S8, "reset_sweep", op, x, resets=sweep),
            pg.linear_job(S8, "reset_gaps", op, x, gap=0.2, stall=0.5, seed=81,
                          resets=[[a, 1] for a in (7, 23, 41, 60, 95, 140, 200)]),
            pg.linear_job(X8, "x_reset_sweep", op, x, resets=sweep),
            # one-cycle resets while a tile's rows are in the requantizer and the queue
            pg.linear_job(S8, "reset_rows", op, x, resets=[[a, 1] for a in range(30, 110, 4)])]
    x, op = random_linear(81, 7, 3, 9, out_bits=16)         # K = 3: tiles at the tile period
    jobs.append(pg.linear_job(S8, "reset_short_k", op, x, stall=0.3, seed=82,
                              resets=[[a, 1] for a in range(2, 60, 5)]))
    _run(bench, jobs, "reset")


# --- the testbench can fail ----------------------------------------------------------------------

def test_wrong_constant_is_caught(bench):
    """Channel 3's bias handed to the hardware is one too large (the golden values use the right
    one): the scoreboard must report it, naming the first wrong element, and leave a waveform."""
    x, op = random_linear(60, 10, 16, 12, out_bits=0)
    job = pg.linear_job(S8, "bad_bias", op, x, wrong={"const": "bias", "channel": 3, "delta": 1})
    res = pg.run_jobs(bench, [job], "wrong_constant")
    assert res["failed"] == 1
    r = res["by_name"]["bad_bias"]
    first = r["first_mismatch"]
    assert set(first) == {"unit", "row", "col", "expected", "got"}
    assert first["unit"] == "bad_bias" and first["col"] == 3 and first["row"] == 0
    assert first["got"] == first["expected"] + 1
    assert r["mismatches"] == 10                       # every row of channel 3, nothing else
    assert "waveform" in res and Path(res["waveform"]).stat().st_size > 0
    print(f"caught: {r['message']}; waveform {res['waveform']}")


# --- utilization (a sanity check that it is measured, not a speed assertion) --------------------------

def test_utilization_is_measured(bench):
    u = pg.measure_gemm_utilization(M=20, K=64, N=24)
    assert u["shape"] == [20, 64, 24] and u["rows"] == 8 and u["cols"] == 8
    assert u["checked"] == 20 * 24
    assert 0 < u["utilization"] <= 1
    assert u["cycles"] >= 3 * 3 * 64                   # 9 tiles of K = 64 operand beats
    print(f"utilization {u}")


# --- lint and parameters ----------------------------------------------------------------------

def test_verilator_lint(tmp_path):
    tops = {"gemm_8x8_w8_lut": Gemm(8, 8, mult="lut"), "gemm_8x8_w8_dsp": Gemm(8, 8, mult="dsp"),
            "gemm_8x8_w4_lut": Gemm(8, 8, w_bits=4, mult="lut"), "gemm_3x5_u8_lut": Gemm(3, 5, a_signed=False, mult="lut"),
            "gemm_3x5_u8_dsp": Gemm(3, 5, a_signed=False, mult="dsp"), "requant_8": Requant(8)}
    for name, top in tops.items():
        text = emit_verilog(top, name)
        assert "/work/" not in text and "/home/" not in text
        path = tmp_path / f"{name}.v"
        path.write_text(text)
        rc, out = lint(path)
        assert rc == 0 and "%Warning" not in out and "%Error" not in out, f"{name}:\n{out}"


def test_parameter_checks():
    with pytest.raises(UserError, match="gemm rows = 0 is out of range"):
        Gemm(0, 8)
    with pytest.raises(UserError, match="acc_bits = 12 is out of range"):
        Gemm(8, 8, acc_bits=12)
    with pytest.raises(UserError, match="gemm_mult = 'dsp48' is not accepted; accepted lut, dsp"):
        Gemm(8, 8, mult="dsp48")
    x, op = random_linear(70, 4, 8, 4)
    op.consts["bias"][0] = 1 << 31                     # breaks the accumulator bound
    with pytest.raises(UserError, match="does not fit acc_bits"):
        pg.linear_job(S8, "too_big", op, x)
    x, op = random_linear(71, 4, 8, 4, w_bits=8)
    with pytest.raises(UserError, match="weights outside"):
        pg.linear_job(S4, "w8_on_w4", op, x)


# --- the LUT multiplier, over its whole domain ---------------------------------------------------

@pytest.mark.parametrize("a_shape,b_shape", [(signed(8), signed(8)), (unsigned(8), signed(8)), (signed(8), signed(4)),
                                             (unsigned(8), signed(4))])
def test_lut_product_exhaustive(a_shape, b_shape):
    """The carry-save multiplier of mult="lut" (partial_products, compress, sum_pair) equals
    a * b for every operand pair of the GEMM's operand formats (Amaranth's simulator)."""
    a, b = Signal(a_shape), Signal(b_shape)
    shape = product_shape(a, b)
    m = Module()
    out = Signal(shape)
    m.d.comb += out.eq(fit(sum_pair(compress(m, partial_products(a, b), shape.width)), shape))
    a_vals = range(-(1 << 7), 1 << 7) if a_shape.signed else range(1 << 8)
    b_vals = range(-(1 << (b_shape.width - 1)), 1 << (b_shape.width - 1))
    bad = []

    async def bench(ctx):
        for x in a_vals:
            ctx.set(a, x)
            for y in b_vals:
                ctx.set(b, y)
                if ctx.get(out) != x * y and len(bad) < 3:
                    bad.append((x, y, ctx.get(out)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    print(f"{a_shape} x {b_shape}: {len(a_vals) * len(b_vals)} operand pairs checked")
    assert not bad, f"first mismatches (a, b, got): {bad}"


def test_lut_requant_stages_take_every_level():
    """The LUT requantizer's carry-save stages (csa_stage_levels) together take every 3:2 level
    of the tree (fewer would leave more than two terms for the final sum), the first stage
    CSA_FIRST_LEVELS (its inputs are the partial products' fan-out), no stage more than
    CSA_LEVELS_PER_STAGE; product_stages counts them and the final sum."""
    from hwgen.pipeline import compress_levels
    from hwgen.requant import CSA_FIRST_LEVELS, CSA_LEVELS_PER_STAGE, csa_stage_levels, product_stages
    for bits in range(1, 33):
        levels = csa_stage_levels(bits)
        assert sum(levels) == compress_levels(bits), bits
        assert all(1 <= n <= CSA_LEVELS_PER_STAGE for n in levels), (bits, levels)
        assert not levels or levels[0] == min(CSA_FIRST_LEVELS, compress_levels(bits)), (bits, levels)
        assert product_stages("lut", bits) == len(levels) + 1
