"""cocotb testbench for the LayerNorm unit (hwgen.layernorm.LayerNorm): layers of constants
loaded at run time on ``c``, then rows on ``i``, scored on ``o``.

The pytest side (tests/test_hw_layernorm.py, sim/perf_layernorm.py) computes the expected
outputs with :func:`golden.layernorm.layernorm_int` and passes everything in the JSON file
named by ``SIM_DATA``::

    {"seed": 1, "drain_cycles": 200, "units": [{"name": "ln", "prefix": "ln__",
        "in_bits": 16, "out_bits": 8,
        "segments": [{"name": "w8a8 blocks.0.norm1", "channels": 64,
                      "beats": [word, ...],      # c payload words (LayerNorm.pack_beat)
                      "values": [...], "expected": [...],   # rows flattened, row r channel c at r C + c
                      "gap_prob": 0.3, "stall_prob": 0.3, "c_gap_prob": 0.0, "overlap": true,
                      "record": false}, ...]}]}

A segment is one layer: its ``c`` beats, then its rows.  The host streams a segment's
beats as soon as the previous segment's last element has been accepted (the unit takes
them once it is idle), with random gaps in ``c.valid`` after the first beat
(``c_gap_prob``).  With ``overlap`` the segment's data is presented from the cycle the
first beat is (the unit must take every constant first, gaps or not); without it the data
waits until the last beat is taken.  The data driver leaves random gaps in ``i.valid``
(``gap_prob``), the monitor drops ``o.ready`` at random (``stall_prob`` of the segment
whose output is due).  The scoreboard compares every output element with the expected one
in order and names the first mismatch by unit, segment, row and channel.  After every
unit has its outputs the bench keeps ready high for ``drain_cycles`` more cycles and
counts any further output.  Per segment it reports each row's latency (last input
handshake to first output handshake), the periods between the rows' last outputs, and the
loading (cycles from the first beat presented to the last one taken, and the taking
itself), the channels that had a mismatch, and with ``record`` the outputs themselves.
Everything goes to ``SIM_RESULT``.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb_stream import _bit, finish_sim, start_sim


def _signed(word: int, bits: int) -> int:
    word &= (1 << bits) - 1
    return word - (1 << bits) if word >> (bits - 1) else word


class LayerBench:
    """Host (constants and data drivers), monitor and scoreboard of one LayerNorm unit."""

    def __init__(self, dut, unit: dict, seed: int):
        p = unit["prefix"]
        self.unit = unit
        self.name = unit["name"]
        self.rng = random.Random(f"{seed}-{unit['name']}")
        self.c_valid, self.c_ready, self.c_payload = (getattr(dut, f"{p}c__{s}") for s in ("valid", "ready", "payload"))
        self.i_valid, self.i_ready, self.i_payload = (getattr(dut, f"{p}i__{s}") for s in ("valid", "ready", "payload"))
        self.o_valid, self.o_ready, self.o_payload = (getattr(dut, f"{p}o__{s}") for s in ("valid", "ready", "payload"))
        self.in_bits, self.out_bits = unit["in_bits"], unit["out_bits"]
        self.segs = unit["segments"]
        # flattened expectations: output element n -> (segment, index in segment)
        self.out_map = [(s, k) for s, seg in enumerate(self.segs) for k in range(len(seg["expected"]))]
        self.n_out = len(self.out_map)
        # host state
        self.c_seg = 0            # segment whose beats the constants driver is on
        self.c_idx = 0
        self.c_started = [None] * len(self.segs)   # cycle the first beat was presented
        self.c_taken: list[list[int]] = [[] for _ in self.segs]
        self.d_seg = 0            # segment whose data the data driver is on
        self.d_idx = 0
        self.d_accept: list[list[int]] = [[] for _ in self.segs]
        self.c_on = self.i_on = False
        self.c_fire = self.i_fire = False
        self.o_ready_now = True
        self.out_words: list[int] = []
        self.out_cycles: list[int] = []
        self.checked = self.mismatches = 0
        self.first: dict | None = None
        self.bad: list[tuple[int, int]] = []       # (segment, row) with a mismatch
        self.bad_channels: dict[int, list[int]] = {}
        self.extra = 0
        self.c_valid.value = 0
        self.i_valid.value = 0
        self.o_ready.value = 1

    @property
    def done(self) -> bool:
        return len(self.out_words) >= self.n_out

    # -- host ------------------------------------------------------------------------------
    def _c_may_start(self, s: int) -> bool:
        """Segment s's beats go out once segment s-1's data is all accepted."""
        return s == 0 or (self.d_seg >= s)

    def _d_may_start(self, s: int) -> bool:
        seg = self.segs[s]
        if seg.get("overlap"):
            return self.c_started[s] is not None
        return self.c_seg > s           # all beats of s taken

    def drive(self, cycle: int) -> None:   # just after a rising edge
        if self.c_fire:
            self.c_fire = False
            self.c_idx += 1
            if self.c_idx >= len(self.segs[self.c_seg]["beats"]):
                self.c_seg += 1
                self.c_idx = 0
            self.c_on = False
        if self.i_fire:
            self.i_fire = False
            self.d_idx += 1
            if self.d_idx >= len(self.segs[self.d_seg]["values"]):
                self.d_seg += 1
                self.d_idx = 0
            self.i_on = False
        # constants
        want_c = False
        if self.c_seg < len(self.segs) and self._c_may_start(self.c_seg):
            seg = self.segs[self.c_seg]
            if self.c_on:
                want_c = True
            elif self.c_idx == 0 or self.rng.random() >= seg.get("c_gap_prob", 0.0):
                self.c_payload.value = seg["beats"][self.c_idx]
                want_c = True
                if self.c_started[self.c_seg] is None:
                    self.c_started[self.c_seg] = cycle
        self.c_valid.value = int(want_c)
        self.c_on = want_c
        # data
        want_i = False
        if self.d_seg < len(self.segs) and self._d_may_start(self.d_seg):
            seg = self.segs[self.d_seg]
            if self.i_on:
                want_i = True
            elif self.rng.random() >= seg.get("gap_prob", 0.0):
                self.i_payload.value = seg["values"][self.d_idx] & ((1 << self.in_bits) - 1)
                want_i = True
        self.i_valid.value = int(want_i)
        self.i_on = want_i
        # output ready: the stall probability of the segment whose output is due
        if not self.done:
            s = self.out_map[len(self.out_words)][0]
            want_o = self.rng.random() >= self.segs[s].get("stall_prob", 0.0)
        else:
            want_o = True
        if want_o != self.o_ready_now:
            self.o_ready.value = int(want_o)
            self.o_ready_now = want_o

    def sample(self, cycle: int) -> None:   # ReadOnly
        if self.c_on and _bit(self.c_ready):
            self.c_fire = True
            self.c_taken[self.c_seg].append(cycle)
        if self.i_on and _bit(self.i_ready):
            self.i_fire = True
            self.d_accept[self.d_seg].append(cycle)
        if self.o_ready_now and _bit(self.o_valid):
            if self.done:
                self.extra += 1
                return
            word = self.o_payload.value.to_unsigned()
            self.out_words.append(word)
            self.out_cycles.append(cycle)
            self._check(len(self.out_words) - 1, _signed(word, self.out_bits))

    def drain_sample(self) -> None:
        if _bit(self.o_valid):
            self.extra += 1

    # -- scoreboard ------------------------------------------------------------------------
    def _check(self, n: int, got: int) -> None:
        s, k = self.out_map[n]
        seg = self.segs[s]
        exp = seg["expected"][k]
        self.checked += 1
        if got != exp:
            self.mismatches += 1
            row, ch = divmod(k, seg["channels"])
            if not self.bad or self.bad[-1] != (s, row):
                self.bad.append((s, row))
            chans = self.bad_channels.setdefault(s, [])
            if ch not in chans and len(chans) < 64:
                chans.append(ch)
            if self.first is None:
                self.first = {"unit": self.name, "segment": seg["name"], "segment_index": s, "row": row,
                              "channel": ch, "input": seg["values"][k], "expected": exp, "got": got}

    def message(self) -> str:
        f = self.first
        if not f:
            return f"{self.name}: {self.checked} checked, no mismatch"
        return (f"{self.name}: {self.mismatches} mismatches of {self.checked} in {len(self.bad)} rows; "
                f"first in segment '{f['segment']}' row {f['row']}, channel {f['channel']}: input {f['input']}, "
                f"expected {f['expected']}, got {f['got']}")

    def report(self) -> dict:
        segs = []
        base = 0
        for s, seg in enumerate(self.segs):
            c = seg["channels"]
            n = len(seg["expected"])
            acc = self.d_accept[s]
            out = self.out_cycles[base:base + n]
            rows = min(len(acc), len(out)) // c
            lat = [out[r * c] - acc[(r + 1) * c - 1] for r in range(rows)]
            last_out = [out[(r + 1) * c - 1] for r in range(rows)]
            taken = self.c_taken[s]
            rep = {"name": seg["name"], "channels": c, "rows": rows, "row_latency": lat,
                   "row_periods": [last_out[r] - last_out[r - 1] for r in range(1, rows)],
                   "bad_rows": [r for (ss, r) in self.bad if ss == s][:50],
                   "bad_channels": sorted(self.bad_channels.get(s, [])), "beats_taken": len(taken)}
            if seg.get("record"):
                rep["got"] = [_signed(w, self.out_bits) for w in self.out_words[base:base + n]]
            if taken:
                rep["load_cycles"] = taken[-1] - taken[0] + 1
                rep["load_wait"] = taken[0] - self.c_started[s]
                if acc:
                    rep["first_input_after_load"] = acc[0] - taken[-1]
            if s > 0 and taken and base > 0 and self.out_cycles[base - 1:base]:
                rep["prev_last_output_to_first_beat"] = taken[0] - self.out_cycles[base - 1]
            segs.append(rep)
            base += n
        return {"name": self.name, "beats": self.n_out, "received_beats": len(self.out_words),
                "checked": self.checked, "mismatches": self.mismatches, "first_mismatch": self.first,
                "message": self.message(), "extra_beats": self.extra, "segments": segs}


@cocotb.test()
async def layernorm_layers(dut):
    """Drive every unit of SIM_DATA layer by layer, score against golden, measure timing."""
    cfg, benches = await start_sim(dut, lambda cfg, seed: [LayerBench(dut, u, seed) for u in cfg["units"]])
    total = sum(b.n_out + sum(len(s["beats"]) for s in b.segs) for b in benches)
    timeout = cfg.get("timeout_cycles") or 2000 + 20 * total
    cycle = 0
    active = list(benches)
    finished: list[LayerBench] = []
    while active and cycle < timeout:
        for b in active:
            b.drive(cycle)
        await ReadOnly()
        for b in active:
            b.sample(cycle)
        for b in finished:          # a finished unit may not output anything more
            b.drain_sample()
        done = [b for b in active if b.done]
        active = [b for b in active if not b.done]
        await RisingEdge(dut.clk)
        for b in done:
            b.o_ready.value = 1
            b.c_valid.value = 0
            b.i_valid.value = 0
            finished.append(b)
        cycle += 1
    for b in benches:
        b.o_ready.value = 1
        b.c_valid.value = 0
        b.i_valid.value = 0
    for _ in range(cfg.get("drain_cycles", 200)):
        await ReadOnly()
        for b in benches:
            b.drain_sample()
        await RisingEdge(dut.clk)
    reports = [b.report() for b in benches]
    finish_sim(dut, cycle, reports, lambda r: r["message"],
               [f"{r['name']}: {r['extra_beats']} elements more than sent" for r in reports if r["extra_beats"]])
