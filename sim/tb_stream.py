"""cocotb testbench for streaming element-wise units (GELU, shift exponential, residual add).

The pytest side (tests/test_hw_elementwise.py) computes the expected outputs with the golden
functions and passes everything in a JSON file named by ``SIM_DATA``::

    {"seed": 1, "clock_ns": 10, "timeout_cycles": N,
     "units": [{"name": "gelu_ibert_a", "prefix": "gelu_ibert_a__", "lanes": 4, "latency": 6,
                "inputs": [{"port": "i", "bits": 8, "signed": true, "values": [...]}],
                "output": {"port": "o", "bits": 8, "signed": true}, "expected": [...],
                "gap_prob": 0.2, "stall_prob": 0.3, "clean_beats": 32}]}

Every unit of the top (one build may hold several: :class:`hwgen.verilog.Harness`) runs at
once.  Per input stream a :class:`Driver` presents beats (``lanes`` elements packed, lane k
at bits [k w, (k+1) w)), with random gaps in valid after the first ``clean_beats`` beats; a
:class:`Monitor` takes output beats, dropping ready at random after ``clean_beats`` beats;
the :class:`Scoreboard` compares every element with the golden value and names the first
mismatch (unit, index, input, expected, got).  During the clean prefix the testbench
measures latency (input handshake to output handshake, cycles) and throughput (beats per
cycle).  All of it is written to ``SIM_RESULT`` (JSON) for the pytest side.

Units with run-time constants (issue 9) add ``"const"`` and ``"phase_beats"``::

    "const": {"port": "c", "phases": [[beat, ...], ...], "gap_prob": 0.2,
              "corrupt": {"beat": 3, "bit": 5}},          # optional: flip one bit of one beat
    "phase_beats": [64, 64, ...]                          # data beats of each phase

Phase p is a layer: its constant beats (packed payload words of the ``c`` stream, in order)
then its data beats.  A :class:`ConstDriver` presents phase p's constants once every data
beat of the earlier phases has been accepted; the data drivers may present phase p's beats
from the cycle its first constant beat is presented (the unit must take the constants
first).  Expected values run over all phases in order.  The corrupted beat (if any) is
driven with one bit flipped, and the scoreboard must then report a mismatch.

One coroutine steps every driver and monitor once per clock (wake at the rising edge to
drive, at ReadOnly to sample), so the simulator wakes Python twice a cycle however many
units run side by side.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


def pack(values: list[int], bits: int) -> int:
    mask = (1 << bits) - 1
    word = 0
    for k, v in enumerate(values):
        word |= (v & mask) << (k * bits)
    return word


def unpack(word: int, bits: int, lanes: int, signed: bool) -> list[int]:
    mask = (1 << bits) - 1
    out = []
    for k in range(lanes):
        v = (word >> (k * bits)) & mask
        if signed and v >> (bits - 1):
            v -= 1 << bits
        out.append(v)
    return out


def _bit(handle) -> bool:
    return str(handle.value) == "1"


class Driver:
    """Presents the beats of one input stream; holds valid and payload until the handshake."""

    def __init__(self, dut, prefix: str, port: dict, lanes: int, rng: random.Random, gap_prob: float,
                 clean_beats: int, gate=None):
        self.gate = gate            # gate(idx) -> may beat idx be presented now (None: always)
        self.valid = getattr(dut, f"{prefix}{port['port']}__valid")
        self.ready = getattr(dut, f"{prefix}{port['port']}__ready")
        self.payload = getattr(dut, f"{prefix}{port['port']}__payload")
        vals = port["values"]
        self.beats = [pack(vals[i:i + lanes], port["bits"]) for i in range(0, len(vals), lanes)]
        self.rng, self.gap_prob, self.clean_beats = rng, gap_prob, clean_beats
        self.idx = 0
        self.holding = False        # valid is high, waiting for ready
        self.fired = False
        self.accept_cycle: list[int] = []
        self._valid_now = False
        self.valid.value = 0

    @property
    def done(self) -> bool:
        return self.idx >= len(self.beats)

    def drive(self) -> None:        # just after a rising edge
        if self.fired:
            self.idx += 1
            self.holding = False
            self.fired = False
        want = False
        if not self.done:
            if self.holding:
                want = True
            elif self.gate is not None and not self.gate(self.idx):
                pass
            elif self.idx < self.clean_beats or self.rng.random() >= self.gap_prob:
                self.payload.value = self.beats[self.idx]
                self.holding = want = True
        if want != self._valid_now:
            self.valid.value = int(want)
            self._valid_now = want

    def sample(self, cycle: int) -> None:   # ReadOnly: does the handshake happen at the next edge?
        if self._valid_now and _bit(self.ready):
            self.fired = True
            self.accept_cycle.append(cycle)


class ConstDriver:
    """Presents a unit's constant beats phase by phase (``may_start(p)``: may phase p begin),
    optionally with one bit of one beat flipped; records when each beat was accepted."""

    def __init__(self, dut, prefix: str, const: dict, rng: random.Random, may_start):
        self.valid = getattr(dut, f"{prefix}{const.get('port', 'c')}__valid")
        self.ready = getattr(dut, f"{prefix}{const.get('port', 'c')}__ready")
        self.payload = getattr(dut, f"{prefix}{const.get('port', 'c')}__payload")
        self.beats = [b for ph in const["phases"] for b in ph]
        self.phase_of = [p for p, ph in enumerate(const["phases"]) for _ in ph]
        self.first_of = {}
        for i, p in enumerate(self.phase_of):
            self.first_of.setdefault(p, i)
        corrupt = const.get("corrupt")
        if corrupt:
            self.beats[corrupt["beat"]] ^= 1 << corrupt["bit"]
        self.rng, self.gap_prob, self.may_start = rng, const.get("gap_prob", 0.0), may_start
        self.idx = 0
        self.started = -1           # the latest phase whose first beat has been presented
        self.holding = self.fired = self._valid_now = False
        self.present_cycle: dict[int, int] = {}
        self.accept_cycle: list[int] = []
        self.cycle = 0
        self.valid.value = 0

    @property
    def done(self) -> bool:
        return self.idx >= len(self.beats)

    def drive(self) -> None:
        if self.fired:
            self.idx += 1
            self.holding = self.fired = False
        want = False
        if not self.done:
            p = self.phase_of[self.idx]
            if self.holding:
                want = True
            elif self.may_start(p) and (self.idx == self.first_of[p] or self.rng.random() >= self.gap_prob):
                self.payload.value = self.beats[self.idx]
                self.holding = want = True
                if self.idx == self.first_of[p]:
                    self.started = p
                    self.present_cycle[p] = self.cycle
        if want != self._valid_now:
            self.valid.value = int(want)
            self._valid_now = want

    def sample(self, cycle: int) -> None:
        self.cycle = cycle + 1
        if self._valid_now and _bit(self.ready):
            self.fired = True
            self.accept_cycle.append(cycle)

    def load_cycles(self) -> list[int]:
        """Per phase: cycles from its first constant beat presented to its last accepted."""
        out = []
        for p, first in sorted(self.first_of.items()):
            last = first + self.phase_of.count(p) - 1
            if last < len(self.accept_cycle) and p in self.present_cycle:
                out.append(self.accept_cycle[last] - self.present_cycle[p] + 1)
        return out


class Monitor:
    """Takes output beats; ready drops at random once the clean prefix has passed."""

    def __init__(self, dut, prefix: str, port: dict, rng: random.Random, stall_prob: float, clean_beats: int):
        self.valid = getattr(dut, f"{prefix}{port['port']}__valid")
        self.ready = getattr(dut, f"{prefix}{port['port']}__ready")
        self.payload = getattr(dut, f"{prefix}{port['port']}__payload")
        self.rng, self.stall_prob, self.clean_beats = rng, stall_prob, clean_beats
        self.beats: list[int] = []
        self.cycles: list[int] = []
        self._ready_now = True
        self.ready.value = 1

    def drive(self) -> None:
        want = len(self.beats) < self.clean_beats or self.rng.random() >= self.stall_prob
        if want != self._ready_now:
            self.ready.value = int(want)
            self._ready_now = want

    def sample(self, cycle: int) -> None:
        if self._ready_now and _bit(self.valid):
            self.beats.append(self.payload.value.to_unsigned())
            self.cycles.append(cycle)


class Scoreboard:
    """Compares output elements with golden values; keeps the first mismatch."""

    def __init__(self, unit: dict):
        self.unit = unit
        self.name = unit["name"]
        self.expected = unit["expected"]
        self.checked = 0
        self.mismatches = 0
        self.first: dict | None = None

    def check(self, beat_index: int, word: int) -> None:
        u = self.unit
        lanes = u["lanes"]
        got = unpack(word, u["output"]["bits"], lanes, u["output"]["signed"])
        for lane, g in enumerate(got):
            i = beat_index * lanes + lane
            if i >= len(self.expected):
                break
            self.checked += 1
            if g != self.expected[i]:
                self.mismatches += 1
                if self.first is None:
                    self.first = {"unit": self.name, "index": i,
                                  "input": [p["values"][i] for p in u["inputs"]],
                                  "expected": self.expected[i], "got": g}

    def message(self) -> str:
        f = self.first
        return (f"{self.name}: {self.mismatches} mismatches of {self.checked}; first at index {f['index']}: "
                f"input {f['input'][0] if len(f['input']) == 1 else f['input']}, expected {f['expected']}, "
                f"got {f['got']}") if f else f"{self.name}: {self.checked} checked, no mismatch"


class UnitBench:
    def __init__(self, dut, unit: dict, seed: int):
        rng = random.Random(f"{seed}-{unit['name']}")
        clean = unit.get("clean_beats", 1 << 30)
        self.unit = unit
        self.const = None
        gate = None
        if unit.get("const"):
            starts, at = [], 0
            for n in unit["phase_beats"]:
                starts.append(at)
                at += n
            self.phase_start = starts
            self.const = ConstDriver(dut, unit["prefix"], unit["const"], rng,
                                     lambda p: all(d.idx + d.fired >= self.phase_start[p] for d in self.drivers))
            bounds = [(starts[p], starts[p] + n) for p, n in enumerate(unit["phase_beats"])]

            def gate(idx):
                p = next(k for k, (lo, hi) in enumerate(bounds) if lo <= idx < hi)
                return self.const.started >= p
        self.drivers = [Driver(dut, unit["prefix"], p, unit["lanes"], rng, unit.get("gap_prob", 0.0), clean, gate)
                        for p in unit["inputs"]]
        self.monitor = Monitor(dut, unit["prefix"], unit["output"], rng, unit.get("stall_prob", 0.0), clean)
        self.board = Scoreboard(unit)
        self.n_beats = len(self.drivers[0].beats)
        self.clean = min(clean, self.n_beats)
        self.checked_beats = 0

    @property
    def done(self) -> bool:
        return len(self.monitor.beats) >= self.n_beats

    def drive(self) -> None:
        if self.const is not None:
            self.const.drive()
        for d in self.drivers:
            d.drive()
        self.monitor.drive()

    def sample(self, cycle: int) -> None:
        if self.const is not None:
            self.const.sample(cycle)
        for d in self.drivers:
            d.sample(cycle)
        self.monitor.sample(cycle)
        while self.checked_beats < len(self.monitor.beats):
            self.board.check(self.checked_beats, self.monitor.beats[self.checked_beats])
            self.checked_beats += 1

    def report(self) -> dict:
        acc = [max(c) for c in zip(*(d.accept_cycle for d in self.drivers))]
        out = self.monitor.cycles
        n = min(len(acc), len(out))
        lat = [out[k] - acc[k] for k in range(n)]
        clean = min(self.clean, n)
        res = {"name": self.unit["name"], "lanes": self.unit["lanes"], "beats": self.n_beats,
               "received_beats": len(out), "checked": self.board.checked,
               "mismatches": self.board.mismatches, "first_mismatch": self.board.first,
               "message": self.board.message(), "documented_latency": self.unit.get("latency")}
        if clean:
            res["latency"] = min(lat[:clean])
            res["latency_max_clean"] = max(lat[:clean])
            span = out[clean - 1] - out[0] + 1
            res["throughput_beats_per_cycle"] = round(clean / span, 4)
            res["throughput_elements_per_cycle"] = round(clean * self.unit["lanes"] / span, 4)
        if n:
            res["latency_max"] = max(lat)
            res["cycles_total"] = out[n - 1] - acc[0] + 1
        if self.const is not None:
            res["const_beats"] = len(self.const.beats)
            res["const_accepted"] = len(self.const.accept_cycle)
            res["const_load_cycles"] = self.const.load_cycles()
            # per phase: cycles from its last constant beat accepted to its first data beat accepted
            gaps = []
            for p, start in enumerate(self.phase_start):
                last = self.const.first_of[p] + self.const.phase_of.count(p) - 1
                if last < len(self.const.accept_cycle) and start < len(acc):
                    gaps.append(acc[start] - self.const.accept_cycle[last])
            res["const_to_data_cycles"] = gaps
            if self.const.accept_cycle:
                res["cycles_total"] = (out[n - 1] if n else 0) - min(self.const.accept_cycle[0], acc[0] if acc else 0) + 1
        return res


async def start_sim(dut, make_benches) -> tuple[dict, list]:
    """Read SIM_DATA, start the clock, make the benches (``make_benches(cfg, seed)``) while
    reset is held for two cycles; returns the data and the benches."""
    with open(os.environ["SIM_DATA"]) as fh:
        cfg = json.load(fh)
    Clock(dut.clk, cfg.get("clock_ns", 10), unit="ns").start()
    dut.rst.value = 1
    benches = make_benches(cfg, cfg.get("seed", 1))
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    return cfg, benches


async def run_benches(dut, benches: list, timeout: int) -> int:
    """Drive and sample every bench once per cycle until all are done or ``timeout``
    cycles pass; returns the cycle count."""
    cycle = 0
    active = list(benches)
    while active and cycle < timeout:
        for b in active:
            b.drive()
        await ReadOnly()
        for b in active:
            b.sample(cycle)
        active = [b for b in active if not b.done]
        await RisingEdge(dut.clk)
        cycle += 1
    return cycle


def finish_sim(dut, cycle: int, reports: list[dict], log, more_failures: list[str] = ()) -> None:
    """Write SIM_RESULT, log each unit, and fail on any mismatch, missing beat or
    ``more_failures`` (e.g. beats beyond those sent)."""
    with open(os.environ["SIM_RESULT"], "w") as fh:
        json.dump({"cycles": cycle, "units": reports}, fh, indent=1)
    for r in reports:
        dut._log.info("%s: %s", r["name"], log(r))
    bad = [r["message"] for r in reports if r["mismatches"]]
    short = [f"{r['name']}: {r['received_beats']} of {r['beats']} beats after {cycle} cycles"
             for r in reports if r["received_beats"] < r["beats"]]
    assert not bad and not short and not more_failures, "; ".join(bad + short + list(more_failures))


@cocotb.test()
async def stream_units(dut):
    """Drive every unit of SIM_DATA, score against the golden outputs, measure timing."""
    cfg, benches = await start_sim(dut, lambda cfg, seed: [UnitBench(dut, u, seed) for u in cfg["units"]])
    timeout = cfg.get("timeout_cycles") or 100 + 20 * max(b.n_beats + (len(b.const.beats) if b.const else 0)
                                                           for b in benches)
    cycle = await run_benches(dut, benches, timeout)
    finish_sim(dut, cycle, [b.report() for b in benches],
               lambda r: f"latency {r.get('latency')}, throughput {r.get('throughput_elements_per_cycle')} "
                         f"elem/cycle, {r['message']}")
