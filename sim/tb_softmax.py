"""cocotb testbench of the row Softmax unit (hwgen.softmax.Softmax), and its cycle measurement.

The pytest side (tests/test_hw_softmax.py) computes the expected rows with
:func:`golden.softmax.shift_softmax` and passes everything in a JSON file named by
``SIM_DATA``::

    {"seed": 1, "timeout_cycles": N,
     "units": [{"name": "sm_linear", "prefix": "sm_linear__", "in_bits": 16, "out_bits": 8,
                "rows": [[...], ...], "send_last": [true, ...], "expected": [[...], ...],
                "gap_prob": 0.2, "stall_prob": 0.3, "burst_prob": 0.01, "burst_max": 300,
                "clean_rows": 2}]}

Every unit of the top (one build may hold several: :class:`hwgen.verilog.Harness`) runs at
once.  Input beats are ``data | last << in_bits``; ``send_last[r]`` false sends row r without
its ``last`` flag (the unit closes a row of ``max_row`` elements by itself; ``expected``
then lists the rows as the unit must close them).  A :class:`RowDriver` presents the beats
with random gaps in valid, a :class:`RowMonitor` drops ready at random (and, with
``burst_prob`` per cycle, for bursts of up to ``burst_max`` cycles, which fills the buffers
and stalls the input), both only after the first ``clean_rows`` rows.  The
:class:`RowScoreboard` checks every output value and its ``last`` flag, in order, and names
the first mismatch (unit, row, index, expected, got).  Per row it records the cycles of the
first and last input handshake and of the first and last output handshake, from which the
report gives the first-row latency and the cycles per row.  All of it goes to
``SIM_RESULT`` (JSON).

:func:`measure_softmax_cycles_per_row` (pytest side, no cocotb needed to call it) builds the
default unit, streams rows of one length back to back without gaps or back-pressure and
returns the steady-state cycles per row.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb_stream import finish_sim, run_benches, start_sim

__all__ = ["measure_softmax_cycles_per_row", "softmax_unit_data"]


def _bit(handle) -> bool:
    return str(handle.value) == "1"


class RowDriver:
    """Presents ``(value, last)`` beats; holds valid and payload until the handshake."""

    def __init__(self, dut, prefix: str, unit: dict, rng: random.Random):
        self.valid = getattr(dut, f"{prefix}i__valid")
        self.ready = getattr(dut, f"{prefix}i__ready")
        self.payload = getattr(dut, f"{prefix}i__payload")
        bits = unit["in_bits"]
        mask = (1 << bits) - 1
        send_last = unit.get("send_last") or [True] * len(unit["rows"])
        self.beats, self.row_of = [], []
        for r, (row, sl) in enumerate(zip(unit["rows"], send_last)):
            for k, v in enumerate(row):
                last = int(sl and k == len(row) - 1)
                self.beats.append((v & mask) | (last << bits))
                self.row_of.append(r)
        self.rng, self.gap_prob, self.clean_rows = rng, unit.get("gap_prob", 0.0), unit.get("clean_rows", 1 << 30)
        self.idx = 0
        self.holding = False
        self.fired = False
        self._valid_now = False
        self.accept: list[int] = []
        self.refused = 0                # cycles with valid high and ready low (input stalled)
        self.valid.value = 0

    @property
    def done(self) -> bool:
        return self.idx >= len(self.beats)

    def drive(self) -> None:
        if self.fired:
            self.idx += 1
            self.holding = False
            self.fired = False
        want = False
        if not self.done:
            if self.holding:
                want = True
            elif self.row_of[self.idx] < self.clean_rows or self.rng.random() >= self.gap_prob:
                self.payload.value = self.beats[self.idx]
                self.holding = True
                want = True
        if want != self._valid_now:
            self.valid.value = int(want)
            self._valid_now = want

    def sample(self, cycle: int) -> None:
        if self._valid_now:
            if _bit(self.ready):
                self.fired = True
                self.accept.append(cycle)
            else:
                self.refused += 1


class RowMonitor:
    """Takes output beats; ready drops at random (and in bursts) after the clean rows."""

    def __init__(self, dut, prefix: str, unit: dict, rng: random.Random, clean_beats: int):
        self.valid = getattr(dut, f"{prefix}o__valid")
        self.ready = getattr(dut, f"{prefix}o__ready")
        self.payload = getattr(dut, f"{prefix}o__payload")
        self.rng = rng
        self.stall_prob = unit.get("stall_prob", 0.0)
        self.burst_prob = unit.get("burst_prob", 0.0)
        self.burst_max = unit.get("burst_max", 0)
        self.clean_beats = clean_beats
        self.burst = 0
        self.held = 0                   # cycles with ready low while valid was high
        self.beats: list[int] = []
        self.cycles: list[int] = []
        self._ready_now = True
        self.ready.value = 1

    def drive(self) -> None:
        if len(self.beats) < self.clean_beats:
            want = True
        elif self.burst > 0:
            self.burst -= 1
            want = False
        elif self.burst_max and self.rng.random() < self.burst_prob:
            self.burst = self.rng.randint(1, self.burst_max)
            want = False
        else:
            want = self.rng.random() >= self.stall_prob
        if want != self._ready_now:
            self.ready.value = int(want)
            self._ready_now = want

    def sample(self, cycle: int) -> None:
        if _bit(self.valid):
            if self._ready_now:
                self.beats.append(self.payload.value.to_unsigned())
                self.cycles.append(cycle)
            else:
                self.held += 1


class RowScoreboard:
    """Checks each output value and its ``last`` flag against the golden rows, in order."""

    def __init__(self, unit: dict):
        self.name = unit["name"]
        self.bits = unit["out_bits"]
        self.flat = [(r, k, v, k == len(row) - 1) for r, row in enumerate(unit["expected"]) for k, v in enumerate(row)]
        self.checked = 0
        self.mismatches = 0
        self.first: dict | None = None

    def check(self, n: int, word: int) -> None:
        if n >= len(self.flat):
            self._miss({"unit": self.name, "row": None, "index": n, "field": "extra beat",
                        "expected": None, "got": word})
            return
        r, k, exp, exp_last = self.flat[n]
        got, got_last = word & ((1 << self.bits) - 1), bool(word >> self.bits)
        self.checked += 1
        if got != exp:
            self._miss({"unit": self.name, "row": r, "index": k, "field": "data", "expected": exp, "got": got})
        elif got_last != exp_last:
            self._miss({"unit": self.name, "row": r, "index": k, "field": "last",
                        "expected": int(exp_last), "got": int(got_last)})

    def _miss(self, info: dict) -> None:
        self.mismatches += 1
        if self.first is None:
            self.first = info

    def message(self) -> str:
        f = self.first
        if not f:
            return f"{self.name}: {self.checked} checked, no mismatch"
        return (f"{self.name}: {self.mismatches} mismatches of {self.checked}; first at row {f['row']}, "
                f"index {f['index']} ({f['field']}): expected {f['expected']}, got {f['got']}")


class RowBench:
    def __init__(self, dut, unit: dict, seed: int):
        rng = random.Random(f"{seed}-{unit['name']}")
        self.unit = unit
        self.driver = RowDriver(dut, unit["prefix"], unit, rng)
        clean_rows = unit.get("clean_rows", 1 << 30)
        clean_beats = sum(len(r) for r in unit["expected"][:clean_rows])
        self.monitor = RowMonitor(dut, unit["prefix"], unit, rng, clean_beats)
        self.board = RowScoreboard(unit)
        self.n_beats = len(self.board.flat)
        self.checked = 0

    @property
    def done(self) -> bool:
        return len(self.monitor.beats) >= self.n_beats

    def drive(self) -> None:
        self.driver.drive()
        self.monitor.drive()

    def sample(self, cycle: int) -> None:
        self.driver.sample(cycle)
        self.monitor.sample(cycle)
        while self.checked < len(self.monitor.beats):
            self.board.check(self.checked, self.monitor.beats[self.checked])
            self.checked += 1

    def report(self) -> dict:
        rows = self.unit["expected"]
        starts, k = [], 0
        for row in rows:
            starts.append(k)
            k += len(row)
        acc, out = self.driver.accept, self.monitor.cycles
        per_row = []
        for r, row in enumerate(rows):
            a, b = starts[r], starts[r] + len(row) - 1
            per_row.append({"len": len(row),
                            "in_first": acc[a] if a < len(acc) else None,
                            "in_last": acc[b] if b < len(acc) else None,
                            "out_first": out[a] if a < len(out) else None,
                            "out_last": out[b] if b < len(out) else None})
        res = {"name": self.unit["name"], "rows": len(rows), "beats": self.n_beats,
               "sent_beats": len(acc), "received_beats": len(out), "checked": self.board.checked,
               "mismatches": self.board.mismatches, "first_mismatch": self.board.first,
               "message": self.board.message(), "per_row": per_row,
               "input_stall_cycles": self.driver.refused, "output_held_cycles": self.monitor.held}
        r0 = per_row[0] if per_row else {}
        if r0.get("out_first") is not None:
            res["latency_first_row"] = r0["out_first"] - r0["in_last"]   # last input -> first output
        return res


@cocotb.test()
async def softmax_rows(dut):
    """Drive every unit of SIM_DATA row by row, score against the golden rows, record timing."""
    cfg, benches = await start_sim(dut, lambda cfg, seed: [RowBench(dut, u, seed) for u in cfg["units"]])
    timeout = cfg.get("timeout_cycles") or 1000 + 30 * max(b.n_beats for b in benches)
    cycle = await run_benches(dut, benches, timeout)
    # a few more cycles with ready high: an extra (duplicated) beat would show up here
    for b in benches:
        b.monitor.stall_prob = b.monitor.burst_prob = 0.0
        b.monitor.burst = 0
    for _ in range(64):
        for b in benches:
            b.drive()
        await ReadOnly()
        for b in benches:
            b.sample(cycle)
        await RisingEdge(dut.clk)
        cycle += 1
    finish_sim(dut, cycle, [b.report() for b in benches],
               lambda r: f"first-row latency {r.get('latency_first_row')}, {r['message']}")


# --- pytest side ---------------------------------------------------------------------------------

def softmax_unit_data(name: str, unit, rows: list[list[int]], send_last: list[bool] | None = None,
                      expected_rows: list[list[int]] | None = None, **traffic) -> dict:
    """The SIM_DATA entry of one Softmax unit ``unit`` (a hwgen.softmax.Softmax) placed in a
    Harness under ``name``; ``expected_rows`` default to golden ``shift_softmax`` of ``rows``."""
    import torch

    from golden.softmax import shift_softmax

    if expected_rows is None:
        expected_rows = [shift_softmax(torch.tensor(r, dtype=torch.int64), unit.f, unit.variant, unit.out_bits,
                                       unit.recip_bits, unit.frac_bits).tolist() for r in rows]
    d = {"name": name, "prefix": f"{name}__", "in_bits": unit.in_bits, "out_bits": unit.out_bits,
         "rows": [list(map(int, r)) for r in rows], "expected": expected_rows}
    if send_last is not None:
        d["send_last"] = list(send_last)
    d.update(traffic)
    return d


def measure_softmax_cycles_per_row(length: int = 197, *, f: int = 10, variant: str = "shiftfit",
                                   max_row: int = 256, rows: int = 5, simulator: str = "verilator",
                                   seed: int = 0) -> dict:
    """Cycles per row of the Softmax unit for back-to-back rows of ``length`` elements, with no
    gaps in valid and no back-pressure: the steady-state interval between the last outputs
    of consecutive rows (after the first two rows).  Also checks the outputs bit for bit.

    Returns ``{"length", "cycles", "latency_first_row", "elements_per_cycle", "bit_exact",
    "documented_cycles", "simulator"}``.
    """
    import random as _random

    from hwgen.softmax import Softmax
    from hwgen.verilog import Harness
    from sim import runner

    if not 1 <= length <= max_row:
        raise ValueError(f"length {length} must be in 1..max_row ({max_row})")
    rows = max(rows, 3)
    unit = Softmax(f, variant, max_row=max_row)
    b = runner.build(Harness({"sm": unit}), "softmax_perf", {"f": f, "variant": variant, "max_row": max_row},
                     simulator=simulator)
    rng = _random.Random(seed)
    data_rows = [[rng.randint(-3000, 3000) for _ in range(length)] for _ in range(rows)]
    data = {"seed": seed, "units": [softmax_unit_data("sm", unit, data_rows)]}
    res = runner.run(b, "sim.tb_softmax", data, f"perf_{variant}_{length}", waves_on_fail=False)
    (u,) = res["units"]
    ends = [r["out_last"] for r in u["per_row"]]
    steady = [ends[k] - ends[k - 1] for k in range(2, len(ends))]
    cycles = max(steady)
    return {"length": length, "cycles": cycles, "latency_first_row": u.get("latency_first_row"),
            "elements_per_cycle": round(length / cycles, 4), "bit_exact": u["mismatches"] == 0 and res["failed"] == 0,
            "documented_cycles": unit.cycles_per_row(length), "simulator": simulator}
