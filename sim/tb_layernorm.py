"""cocotb testbench for the LayerNorm unit (hwgen.layernorm.LayerNorm), row by row.

The pytest side (tests/test_hw_layernorm.py, sim/perf_layernorm.py) computes the expected
outputs with :func:`golden.layernorm.layernorm_int` and passes everything in the JSON file
named by ``SIM_DATA``::

    {"seed": 1, "units": [{"name": "ln64", "prefix": "ln64__", "channels": 64, "lanes": 1,
        "latency": 79, "inputs": [{"port": "i", "bits": 16, "signed": true, "values": [...]}],
        "output": {"port": "o", "bits": 8, "signed": true}, "expected": [...],
        "gap_prob": 0.3, "stall_prob": 0.3, "clean_beats": 384}]}

``values`` and ``expected`` are the rows flattened (row r, channel c at r C + c).  The
driver, monitor and scoreboard are those of :mod:`sim.tb_stream` (one element per beat;
random gaps in valid and random drops of ready after ``clean_beats`` elements); the
scoreboard here names the first mismatch by unit, row and channel and lists the rows that
had one.  After every unit has its outputs the bench keeps ready high for ``drain_cycles``
more cycles and counts any further output (a duplicated element).  Per unit it reports the
latency of each row (its last input handshake to its first output handshake) and the
steady-state cycles per row over the clean prefix.  Everything goes to ``SIM_RESULT``.
"""

from __future__ import annotations

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb_stream import Scoreboard, UnitBench, _bit, finish_sim, start_sim


class RowScoreboard(Scoreboard):
    """:class:`sim.tb_stream.Scoreboard` with row and channel in the first mismatch."""

    def __init__(self, unit: dict):
        super().__init__(unit)
        self.channels = unit["channels"]
        self.bad_rows: list[int] = []

    def check(self, beat_index: int, word: int) -> None:
        before = self.mismatches
        super().check(beat_index, word)
        if self.mismatches > before:
            row, ch = divmod(beat_index, self.channels)
            if not self.bad_rows or self.bad_rows[-1] != row:
                self.bad_rows.append(row)
            if before == 0:
                f = self.first
                self.first = {"unit": f["unit"], "row": row, "channel": ch, "input": f["input"][0],
                              "expected": f["expected"], "got": f["got"]}

    def message(self) -> str:
        f = self.first
        if not f:
            return f"{self.name}: {self.checked} checked, no mismatch"
        return (f"{self.name}: {self.mismatches} mismatches of {self.checked} in {len(self.bad_rows)} rows; "
                f"first at row {f['row']}, channel {f['channel']}: input {f['input']}, "
                f"expected {f['expected']}, got {f['got']}")


class RowBench(UnitBench):
    def __init__(self, dut, unit: dict, seed: int):
        super().__init__(dut, unit, seed)
        self.board = RowScoreboard(unit)
        self.extra_beats = 0

    def drain_sample(self) -> None:
        if _bit(self.monitor.valid):
            self.extra_beats += 1

    def report(self) -> dict:
        res = super().report()
        c = self.unit["channels"]
        acc = self.drivers[0].accept_cycle
        out = self.monitor.cycles
        rows = min(len(acc), len(out)) // c
        clean_rows = min(self.unit.get("clean_beats", 1 << 30) // c, rows)
        lat = [out[r * c] - acc[(r + 1) * c - 1] for r in range(rows)]
        last_out = [out[(r + 1) * c - 1] for r in range(rows)]
        res.update(channels=c, rows=rows, bad_rows=self.board.bad_rows[:50], extra_beats=self.extra_beats,
                   row_latency=lat)
        if clean_rows:
            res["latency"] = min(lat[:clean_rows])
            res["latency_max_clean"] = max(lat[:clean_rows])
        if clean_rows >= 4:          # skip the first row (pipeline filling) and the second
            span = last_out[clean_rows - 1] - last_out[1]
            res["cycles_per_row"] = round(span / (clean_rows - 2), 3)
            res["row_periods"] = [last_out[r] - last_out[r - 1] for r in range(2, clean_rows)]
        res["message"] = self.board.message()
        return res


@cocotb.test()
async def layernorm_rows(dut):
    """Drive every unit of SIM_DATA row by row, score against golden, measure timing."""
    cfg, benches = await start_sim(dut, lambda cfg, seed: [RowBench(dut, u, seed) for u in cfg["units"]])
    timeout = cfg.get("timeout_cycles") or 400 + 20 * max(b.n_beats for b in benches)
    cycle = 0
    active = list(benches)
    finished: list[RowBench] = []
    while active and cycle < timeout:
        for b in active:
            b.drive()
        await ReadOnly()
        for b in active:
            b.sample(cycle)
        for b in finished:          # a finished unit may not output anything more
            b.drain_sample()
        done = [b for b in active if b.done]
        active = [b for b in active if not b.done]
        await RisingEdge(dut.clk)
        for b in done:
            b.monitor.ready.value = 1
            finished.append(b)
        cycle += 1
    # drain: ready high, nothing more may come out
    for b in benches:
        b.monitor.ready.value = 1
        for d in b.drivers:
            d.valid.value = 0
    for _ in range(cfg.get("drain_cycles", 200)):
        await ReadOnly()
        for b in benches:
            b.drain_sample()
        await RisingEdge(dut.clk)
    reports = [b.report() for b in benches]
    finish_sim(dut, cycle, reports,
               lambda r: f"latency {r.get('latency')}, cycles/row {r.get('cycles_per_row')}, {r['message']}",
               [f"{r['name']}: {r['extra_beats']} elements more than sent" for r in reports if r["extra_beats"]])
