"""cocotb testbench of :class:`hwgen.gemm.Gemm` in its test host (:mod:`sim.perf_gemm`).

``SIM_DATA`` (JSON) holds a list of jobs, made on the pytest side by
:func:`sim.perf_gemm.linear_job` / :func:`sim.perf_gemm.matmul_job`::

    {"jobs": [{"name": ..., "system": "s8", "rows": 8, "cols": 8, "acc_bits": 32,
               "M": .., "K": .., "N": .., "MT": .., "NT": .., "out_bits": 8,
               "a_words": [...], "w_words": [...], "p_words": [...],
               "expected": [[...], ...],          # M x N, from the golden executor
               "gap": 0..255, "stall": 0..255, "seed": 1}]}

Per job: reset, write the host's memories through its load port (one word per clock),
configure, pulse ``start`` (and, for each ``[after, length]`` of the job's ``resets``, wait
``after`` cycles, hold ``rst`` for ``length`` cycles and pulse ``start`` again at once: the
job restarts from scratch while the aborted run's beats are still in the unit) and sleep until ``done`` (no Python wake-up per cycle: the
simulator runs free), wait 64 more cycles so that a surplus output beat would be counted,
then read the output rows back and score them.  The scoreboard maps output beat ``b`` to
tile (mt, nt) and row r, compares every element inside M x N with the golden value and names
the first mismatch (unit, row, col, expected, got); it also checks that exactly
MT NT K operand beats, MT NT parameter beats and MT NT rows output beats crossed the ports
(no value lost or duplicated; reordering shows up as mismatches).

Timing comes from the host's hardware counters: ``cycles`` from the first input handshake to
the last output handshake, ``latency`` from the first tile's last input beat to the first
output beat, ``utilization`` = M K N / (cycles rows cols).
"""

from __future__ import annotations

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer

CLOCK_NS = 10


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def score(job: dict, words: list[int]) -> dict:
    R, C, bits = job["rows"], job["cols"], job["acc_bits"]
    M, N, NT = job["M"], job["N"], job["NT"]
    exp = job["expected"]
    mask = (1 << bits) - 1
    checked = mismatches = 0
    first = None
    for b, word in enumerate(words):
        mt, nt, r = b // (NT * R), (b // R) % NT, b % R
        row = mt * R + r
        if row >= M:
            continue
        for j in range(C):
            col = nt * C + j
            if col >= N:
                break
            got = _signed((word >> (j * bits)) & mask, bits)
            checked += 1
            if got != exp[row][col]:
                mismatches += 1
                if first is None:
                    first = {"unit": job["name"], "row": row, "col": col, "expected": exp[row][col], "got": got}
    return {"checked": checked, "mismatches": mismatches, "first_mismatch": first}


async def run_job(dut, job: dict) -> dict:
    sysname = job["system"]

    def port(n):
        return getattr(dut, f"{sysname}_{n}")

    t0 = time.time()
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    port("ld_en").value = 1
    for sel, key in ((0, "a_words"), (1, "w_words"), (2, "p_words")):
        port("ld_sel").value = sel
        for i, word in enumerate(job[key]):
            port("ld_addr").value = i
            port("ld_data").value = word
            await RisingEdge(dut.clk)
    port("ld_en").value = 0
    MT, NT, K, R = job["MT"], job["NT"], job["K"], job["rows"]
    n_out = MT * NT * R
    for n, v in (("in_mt", MT), ("in_nt", NT), ("in_k", K), ("in_out", n_out), ("in_seed", job["seed"] or 1),
                 ("in_gap_a", job["gap"]), ("in_gap_w", job["gap"]), ("in_gap_p", job["gap"]),
                 ("in_stall_o", job["stall"])):
        port(n).value = v
    await RisingEdge(dut.clk)
    port("in_start").value = 1                  # registered in the host: configuration is latched first
    await RisingEdge(dut.clk)
    port("in_start").value = 0
    for after, length in job.get("resets") or ():
        # a reset mid-run (host and unit), then the same job again from the start, at once
        await ClockCycles(dut.clk, after)
        dut.rst.value = 1
        await ClockCycles(dut.clk, length)
        dut.rst.value = 0
        port("in_start").value = 1
        await RisingEdge(dut.clk)
        port("in_start").value = 0
    t_load = time.time()
    # sleep until done (or a generous timeout); the simulator runs free meanwhile
    beats = MT * NT * max(K, 2 * R + job["cols"])
    slow = 1.0 / max(1e-3, (1 - job["gap"] / 256) * (1 - job["stall"] / 256))
    timeout_cycles = int(4 * beats * slow * slow) + 20 * n_out + 2000
    await First(RisingEdge(port("done")), Timer(timeout_cycles * CLOCK_NS, unit="ns"))
    await Timer(64 * CLOCK_NS, unit="ns")      # a surplus output beat would show in out_count
    await ReadOnly()
    stats = {n: port(n).value.to_unsigned() for n in ("first_in", "first_last_in", "last_in", "first_out", "last_out",
                                            "a_count", "w_count", "p_count", "out_count")}
    done = str(port("done").value) == "1"
    t_run = time.time()
    await RisingEdge(dut.clk)
    words = []
    n_read = min(stats["out_count"], n_out)
    port("rd_addr").value = 0
    for i in range(n_read):
        await RisingEdge(dut.clk)               # this edge samples address i
        port("rd_addr").value = i + 1
        await ReadOnly()
        words.append(port("rd_data").value.to_unsigned())
    await RisingEdge(dut.clk)
    t_read = time.time()

    rep = {"name": job["name"], "system": sysname, "shape": [job["M"], K, job["N"]], "tiles": MT * NT,
           "stats": stats, "done": done}
    rep.update(score(job, words))
    problems = []
    if stats["out_count"] != n_out:
        problems.append(f"{stats['out_count']} output rows, expected {n_out}")
    if stats["a_count"] != MT * NT * K or stats["w_count"] != MT * NT * K:
        problems.append(f"{stats['a_count']}/{stats['w_count']} a/w beats taken, expected {MT * NT * K}")
    if stats["p_count"] != MT * NT:
        problems.append(f"{stats['p_count']} parameter beats taken, expected {MT * NT}")
    if rep["checked"] != job["M"] * job["N"]:
        problems.append(f"{rep['checked']} of {job['M'] * job['N']} outputs checked")
    rep["problems"] = problems
    if stats["out_count"]:
        cycles = stats["last_out"] - stats["first_in"] + 1
        rep["cycles"] = cycles
        rep["macs"] = job["M"] * K * job["N"]
        rep["utilization"] = round(rep["macs"] / (cycles * R * job["cols"]), 6)
        rep["latency"] = stats["first_out"] - stats["first_last_in"]
        rep["input_beats_per_cycle"] = round(stats["a_count"] / (stats["last_in"] - stats["first_in"] + 1), 6)
    f = rep["first_mismatch"]
    if f:
        rep["message"] = (f"{job['name']}: {rep['mismatches']} mismatches of {rep['checked']}; first at "
                          f"row {f['row']}, col {f['col']}: expected {f['expected']}, got {f['got']}")
    else:
        rep["message"] = f"{job['name']}: {rep['checked']} checked, no mismatch"
    if problems:
        rep["message"] += "; " + "; ".join(problems)
    rep["host_seconds"] = {"load": round(t_load - t0, 2), "run": round(t_run - t_load, 2),
                           "read": round(t_read - t_run, 2)}
    return rep


@cocotb.test()
async def gemm_jobs(dut):
    """Run every job of SIM_DATA on its system; score against the golden values."""
    with open(os.environ["SIM_DATA"]) as fh:
        cfg = json.load(fh)
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    systems = {j["system"] for j in cfg["jobs"]}
    for s in systems:
        for n in ("ld_en", "in_start"):
            getattr(dut, f"{s}_{n}").value = 0
    reports = []
    for job in cfg["jobs"]:
        reports.append(await run_job(dut, job))
        dut._log.info("%s", reports[-1]["message"])
    with open(os.environ["SIM_RESULT"], "w") as fh:
        json.dump({"jobs": reports}, fh, indent=1)
    bad = [r["message"] for r in reports if r["mismatches"] or r["problems"]]
    assert not bad, "; ".join(bad)
