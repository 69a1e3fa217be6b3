"""cocotb testbench of the units that take run-time constants on a ``c`` stream and data on
``i``: the row Softmax (hwgen.softmax.Softmax, rows with a ``last`` flag) and the shift
exponential (hwgen.shift_exp.ShiftExp, ``lanes`` elements per beat); and the Softmax cycle
measurement.

The pytest side (tests/test_hw_softmax.py, tests/test_hw_shift_exp.py) computes the
expected outputs with the golden functions (:func:`golden.softmax.shift_softmax`,
:func:`golden.softmax.shift_exp`) and the ``c`` beats with the unit's own ``const_beats``,
and passes everything in a JSON file named by ``SIM_DATA``::

    {"seed": 1, "timeout_cycles": N,
     "units": [{"name": "sm", "prefix": "sm__", "kind": "rows", "in_bits": 16, "out_bits": 8,
                "c_fields": [["f", 5]],
                "segments": [{"const": [{"f": 12}], "rows": [[...], ...], "send_last": [...],
                              "expected": [[...], ...]}, ...],
                "corrupt": {"segment": 1, "beat": 0, "bit": 0},
                "gap_prob": 0.2, "stall_prob": 0.3, "burst_prob": 0.01, "burst_max": 300,
                "clean_rows": 2, "with_data": true}]}

A *segment* is one layer: its ``c`` beats, then its data.  ``kind`` "rows": a row is a list
of scores sent as ``data | last << in_bits`` (``send_last[r]`` false sends row r without its
``last``; the unit closes a row of ``max_row`` elements by itself, and ``expected`` lists the
rows as the unit must close them); outputs are ``data | last << out_bits``.  ``kind``
"lanes": a row is a list of elements sent ``lanes`` per beat (lane k at bits
[k in_bits, (k+1) in_bits), the list a whole number of beats), and outputs are ``lanes``
unsigned ``out_bits`` values per beat.

A :class:`SegmentDriver` presents, per segment, the ``c`` beats (packed by ``c_fields``,
field 0 in the low bits) and, once they are taken, the data beats, with random gaps after
the first ``clean_rows`` rows; the next segment's ``c`` beats follow the last data beat at
once (the unit must wait until it is idle before it takes them).  With ``with_data`` the
first data beat of a segment is presented together with its ``c`` beat: the unit must take
the constants first (a data beat taken while ``c.valid`` is high is reported).
``corrupt`` flips one bit of one ``c`` beat (the expected values stay golden): the
scoreboard must report the mismatch.  A :class:`RowMonitor` drops ready at random (and,
with ``burst_prob`` per cycle, for bursts of up to ``burst_max`` cycles, which fill the
buffers and stall the input), after the first ``clean_rows`` rows.  The
:class:`Scoreboard` checks every output value (and ``last`` flag), in order, and names the
first mismatch (unit, segment, row, index, lane, expected, got).  Per segment it records
the cycle of each ``c`` handshake, per row the cycles of the first and last input and
output handshakes; from them the report gives the first-row latency, and for "lanes" the
per-beat latency and the throughput of the clean prefix.  All of it goes to
``SIM_RESULT`` (JSON).

:func:`measure_softmax_cycles_per_row` (pytest side, no cocotb needed to call it) builds the
default unit, streams rows of one length back to back without gaps or back-pressure and
returns the steady-state cycles per row.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb_stream import finish_sim, start_sim

__all__ = ["measure_softmax_cycles_per_row", "softmax_unit_data", "const_unit_data"]


def _bit(handle) -> bool:
    return str(handle.value) == "1"


def _pack(values, bits: int) -> int:
    mask = (1 << bits) - 1
    word = 0
    for k, v in enumerate(values):
        word |= (int(v) & mask) << (k * bits)
    return word


def pack_const(beat: dict, fields: list) -> int:
    """A ``c`` beat as an integer: the fields in layout order, the first in the low bits."""
    word, at = 0, 0
    for name, width in fields:
        word |= (int(beat[name]) & ((1 << width) - 1)) << at
        at += width
    return word


class SegmentDriver:
    """Per segment: the ``c`` beats, then the data beats; holds valid and payload until each
    handshake."""

    def __init__(self, dut, prefix: str, unit: dict, rng: random.Random):
        self.valid = getattr(dut, f"{prefix}i__valid")
        self.ready = getattr(dut, f"{prefix}i__ready")
        self.payload = getattr(dut, f"{prefix}i__payload")
        self.c_valid = getattr(dut, f"{prefix}c__valid")
        self.c_ready = getattr(dut, f"{prefix}c__ready")
        self.c_payload = getattr(dut, f"{prefix}c__payload")
        bits = unit["in_bits"]
        rows_kind = unit.get("kind", "rows") == "rows"
        lanes = unit.get("lanes", 1)
        corrupt = unit.get("corrupt")
        # program: per segment, ("c", word) beats then ("d", word, global row) beats
        self.program: list[tuple] = []
        row = 0
        self.seg_rows: list[int] = []            # first global row of each segment
        for s, seg in enumerate(unit["segments"]):
            for j, beat in enumerate(seg["const"]):
                w = pack_const(beat, unit["c_fields"])
                if corrupt and corrupt["segment"] == s and corrupt["beat"] == j:
                    w ^= 1 << corrupt["bit"]
                self.program.append(("c", w, s))
            self.seg_rows.append(row)
            send_last = seg.get("send_last") or [True] * len(seg["rows"])
            for r, sl in zip(seg["rows"], send_last):
                if rows_kind:
                    for k, v in enumerate(r):
                        last = int(sl and k == len(r) - 1)
                        self.program.append(("d", (int(v) & ((1 << bits) - 1)) | (last << bits), row))
                else:
                    for k in range(0, len(r), lanes):
                        self.program.append(("d", _pack(r[k:k + lanes], bits), row))
                row += 1
        self.rng, self.gap_prob = rng, unit.get("gap_prob", 0.0)
        self.clean_rows = unit.get("clean_rows", 1 << 30)
        self.with_data = bool(unit.get("with_data"))
        self.idx = 0
        self.d_pos = None                # program index of the data beat on i while c is presented
        self.holding = False
        self._valid_now = self._c_valid_now = False
        self.accept: list[int] = []      # cycle of each data handshake, in order
        self.c_accept: list[list[int]] = [[] for _ in unit["segments"]]
        self.refused = 0                 # cycles with i.valid high and i.ready low
        self.early = 0                   # data beats taken while c.valid was high
        self.valid.value = 0
        self.c_valid.value = 0

    @property
    def done(self) -> bool:
        return self.idx >= len(self.program)

    def _set(self, sig, attr, want):
        if want != getattr(self, attr):
            sig.value = int(want)
            setattr(self, attr, want)

    def drive(self) -> None:
        want_c = want_d = False
        if not self.done:
            kind = self.program[self.idx][0]
            if kind == "c":
                if not self.holding:
                    self.c_payload.value = self.program[self.idx][1]
                    self.holding = True
                want_c = True
                nxt = self.idx + 1
                if self.with_data and nxt < len(self.program) and self.program[nxt][0] == "d":
                    if self.d_pos != nxt:
                        self.payload.value = self.program[nxt][1]
                        self.d_pos = nxt
                    want_d = True
            else:
                if self.holding:
                    want_d = True
                elif self.program[self.idx][2] < self.clean_rows or self.rng.random() >= self.gap_prob:
                    if self.d_pos != self.idx:
                        self.payload.value = self.program[self.idx][1]
                        self.d_pos = self.idx
                    self.holding = want_d = True
        self._set(self.c_valid, "_c_valid_now", want_c)
        self._set(self.valid, "_valid_now", want_d)

    def sample(self, cycle: int) -> None:
        if self._c_valid_now:
            if self._valid_now and _bit(self.ready):
                self.early += 1          # the unit took data while the constants were presented
            if _bit(self.c_ready):
                self.c_accept[self.program[self.idx][2]].append(cycle)
                self.idx += 1
                self.holding = self.d_pos == self.idx and self._valid_now    # keep the data beat up
        elif self._valid_now:
            if _bit(self.ready):
                self.accept.append(cycle)
                self.idx += 1
                self.holding = False
            else:
                self.refused += 1


class RowMonitor:
    """Takes output beats; ready drops at random (and in bursts) after the clean beats."""

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


class Scoreboard:
    """Checks each output beat against the golden values, in order; keeps the first mismatch."""

    def __init__(self, unit: dict):
        self.name = unit["name"]
        self.bits = unit["out_bits"]
        self.rows_kind = unit.get("kind", "rows") == "rows"
        self.lanes = unit.get("lanes", 1)
        self.flat = []                   # per output beat: (segment, row in segment, index, values, last)
        for s, seg in enumerate(unit["segments"]):
            for r, row in enumerate(seg["expected"]):
                if self.rows_kind:
                    self.flat += [(s, r, k, [v], k == len(row) - 1) for k, v in enumerate(row)]
                else:
                    self.flat += [(s, r, k, row[k:k + self.lanes], None) for k in range(0, len(row), self.lanes)]
        self.checked = 0
        self.mismatches = 0
        self.first: dict | None = None

    def check(self, n: int, word: int) -> None:
        if n >= len(self.flat):
            self._miss({"unit": self.name, "segment": None, "row": None, "index": n, "lane": None,
                        "field": "extra beat", "expected": None, "got": word})
            return
        s, r, k, exp, exp_last = self.flat[n]
        mask = (1 << self.bits) - 1
        for lane, e in enumerate(exp):
            got = (word >> (lane * self.bits)) & mask
            self.checked += 1
            if got != e:
                self._miss({"unit": self.name, "segment": s, "row": r, "index": k + lane, "lane": lane,
                            "field": "data", "expected": e, "got": got})
                return
        if self.rows_kind and bool(word >> self.bits) != exp_last:
            self._miss({"unit": self.name, "segment": s, "row": r, "index": k, "lane": 0, "field": "last",
                        "expected": int(exp_last), "got": int(not exp_last)})

    def _miss(self, info: dict) -> None:
        self.mismatches += 1
        if self.first is None:
            self.first = info

    def message(self) -> str:
        f = self.first
        if not f:
            return f"{self.name}: {self.checked} checked, no mismatch"
        return (f"{self.name}: {self.mismatches} mismatches of {self.checked}; first in segment {f['segment']}, "
                f"row {f['row']}, index {f['index']} ({f['field']}): expected {f['expected']}, got {f['got']}")


class SegmentBench:
    def __init__(self, dut, unit: dict, seed: int):
        rng = random.Random(f"{seed}-{unit['name']}")
        self.unit = unit
        self.driver = SegmentDriver(dut, unit["prefix"], unit, rng)
        self.board = Scoreboard(unit)
        clean_rows = unit.get("clean_rows", 1 << 30)
        self.rows = [(s, row) for s, seg in enumerate(unit["segments"]) for row in seg["expected"]]
        per = (lambda row: len(row)) if self.board.rows_kind else (lambda row: len(row) // self.board.lanes)
        self.row_beats = [per(row) for _, row in self.rows]
        clean_beats = sum(self.row_beats[:clean_rows])
        self.monitor = RowMonitor(dut, unit["prefix"], unit, rng, clean_beats)
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
        acc, out = self.driver.accept, self.monitor.cycles
        per_row, k = [], 0
        for (s, row), nb in zip(self.rows, self.row_beats):
            a, b = k, k + nb - 1
            per_row.append({"segment": s, "len": len(row),
                            "in_first": acc[a] if a < len(acc) else None,
                            "in_last": acc[b] if b < len(acc) else None,
                            "out_first": out[a] if a < len(out) else None,
                            "out_last": out[b] if b < len(out) else None})
            k += nb
        res = {"name": self.unit["name"], "rows": len(self.rows), "beats": self.n_beats,
               "sent_beats": len(acc), "received_beats": len(out), "checked": self.board.checked,
               "mismatches": self.board.mismatches, "first_mismatch": self.board.first,
               "message": self.board.message(), "per_row": per_row, "c_accept": self.driver.c_accept,
               "data_taken_with_c_valid": self.driver.early,
               "input_stall_cycles": self.driver.refused, "output_held_cycles": self.monitor.held}
        r0 = per_row[0] if per_row else {}
        if r0.get("out_first") is not None:
            res["latency_first_row"] = r0["out_first"] - r0["in_last"]   # last input -> first output
        if not self.board.rows_kind and per_row:
            clean = min(sum(self.row_beats[:self.unit.get("clean_rows", 1 << 30)]), len(acc), len(out))
            if clean:
                lat = [out[i] - acc[i] for i in range(clean)]
                res["latency"], res["latency_max_clean"] = min(lat), max(lat)
                span = out[clean - 1] - out[0] + 1
                res["throughput_beats_per_cycle"] = round(clean / span, 4)
                res["throughput_elements_per_cycle"] = round(clean * self.board.lanes / span, 4)
        return res


@cocotb.test()
async def const_units(dut):
    """Drive every unit of SIM_DATA segment by segment (constants, then data), score against
    the golden values, record timing."""
    cfg, benches = await start_sim(dut, lambda cfg, seed: [SegmentBench(dut, u, seed) for u in cfg["units"]])
    timeout = cfg.get("timeout_cycles") or 1000 + 30 * max(b.n_beats for b in benches)
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
    reports = [b.report() for b in benches]
    early = [f"{r['name']}: {r['data_taken_with_c_valid']} data beats taken while c.valid was high"
             for r in reports if r["data_taken_with_c_valid"]]
    finish_sim(dut, cycle, reports,
               lambda r: f"first-row latency {r.get('latency_first_row')}, {r['message']}", early)


# --- pytest side ---------------------------------------------------------------------------------

def const_unit_data(name: str, unit, segments: list[dict], **traffic) -> dict:
    """The SIM_DATA entry of a unit with a ``c`` port (``unit.c`` fields in layout order)
    placed in a Harness under ``name``; ``segments``: ``{"const": [...], "rows": [...],
    "expected": [...]}`` (and ``send_last`` for rows)."""
    fields = [[n, f.width] for n, f in unit.c.payload.shape()]
    kind = "lanes" if hasattr(unit, "lanes") else "rows"
    d = {"name": name, "prefix": f"{name}__", "kind": kind, "c_fields": fields, "segments": segments}
    if kind == "lanes":
        d.update(in_bits=unit.in_bits, out_bits=unit.frac_bits + 1, lanes=unit.lanes)
    else:
        d.update(in_bits=unit.in_bits, out_bits=unit.out_bits)
    d.update(traffic)
    return d


def softmax_segment(unit, attrs: dict, rows: list[list[int]], send_last: list[bool] | None = None,
                    expected_rows: list[list[int]] | None = None, f: int | None = None) -> dict:
    """One layer of a Softmax unit: ``c`` beats from ``unit.const_beats(attrs)`` and the
    golden ``shift_softmax`` of ``rows`` at the layer's f (``expected_rows`` as the unit must
    close them, if given).  ``f`` overrides the beat (the expected stays at attrs' f)."""
    import torch

    from golden.softmax import shift_softmax

    beats = unit.const_beats(attrs, {})
    if f is not None:
        beats = [dict(b, f=f) for b in beats]
    ref = expected_rows if expected_rows is not None else rows
    expected = [shift_softmax(torch.tensor(r, dtype=torch.int64), attrs["f"], unit.variant, unit.out_bits,
                              unit.recip_bits, unit.frac_bits).tolist() for r in ref]
    seg = {"const": beats, "rows": [list(map(int, r)) for r in rows], "expected": expected}
    if send_last is not None:
        seg["send_last"] = list(send_last)
    return seg


def softmax_unit_data(name: str, unit, rows: list[list[int]], f: int, **traffic) -> dict:
    """A Softmax unit fed one layer at scale 2^-f (a shorthand of :func:`const_unit_data`)."""
    attrs = {"f": f, "variant": unit.variant, "out_bits": unit.out_bits, "recip_bits": unit.recip_bits}
    return const_unit_data(name, unit, [softmax_segment(unit, attrs, rows)], **traffic)


def measure_softmax_cycles_per_row(length: int = 197, *, f: int = 10, variant: str = "shiftfit",
                                   max_row: int = 256, rows: int = 5, simulator: str = "verilator",
                                   seed: int = 0, build=None, unit=None, name: str = "sm") -> dict:
    """Cycles per row of the Softmax unit for back-to-back rows of ``length`` elements, with no
    gaps in valid and no back-pressure: the steady-state interval between the last outputs
    of consecutive rows (after the first two rows).  Also checks the outputs bit for bit.

    Returns ``{"length", "cycles", "latency_first_row", "elements_per_cycle", "bit_exact",
    "documented_cycles", "documented_latency", "const_load_cycles", "simulator"}``
    (``const_load_cycles``: from the first cycle ``c`` is presented to an idle unit to its
    handshake, inclusive).  ``build``, ``unit``, ``name``: measure unit ``name`` of an existing
    Harness build instead of building the default unit alone.
    """
    import random as _random

    from hwgen.softmax import Softmax
    from hwgen.verilog import Harness
    from sim import runner

    if build is None:
        unit = Softmax(variant, max_row=max_row)
        build = runner.build(Harness({name: unit}), "softmax_perf", {"variant": variant, "max_row": max_row},
                             simulator=simulator)
    if not 1 <= length <= unit.max_row:
        raise ValueError(f"length {length} must be in 1..max_row ({unit.max_row})")
    rows = max(rows, 3)
    rng = _random.Random(seed)
    data_rows = [[rng.randint(-3000, 3000) for _ in range(length)] for _ in range(rows)]
    data = {"seed": seed, "units": [softmax_unit_data(name, unit, data_rows, f)]}
    res = runner.run(build, "sim.tb_softmax", data, f"perf_{unit.variant}_{length}", waves_on_fail=False)
    (u,) = res["units"]
    ends = [r["out_last"] for r in u["per_row"]]
    steady = [ends[k] - ends[k - 1] for k in range(2, len(ends))]
    cycles = max(steady)
    return {"length": length, "cycles": cycles, "latency_first_row": u.get("latency_first_row"),
            "elements_per_cycle": round(length / cycles, 4), "bit_exact": u["mismatches"] == 0 and res["failed"] == 0,
            "documented_cycles": unit.cycles_per_row(length),
            "documented_latency": unit.first_output_latency(length),
            "const_load_cycles": u["c_accept"][0][0] + 1, "simulator": build.simulator}
