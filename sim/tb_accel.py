"""cocotb side of the accelerator runs (:class:`hwgen.accel.memory_model.AccelSimTop`): load a
memory image through the model's host port, start the program, sleep until ``done`` (the
simulator runs free: no Python on the bus), read regions back.  It only drives and reads;
the tests compare what it read with the interpreter (:mod:`hwgen.accel.interpreter`).

``SIM_DATA`` (JSON)::

    {"word_bytes": 8,
     "cases": [{"name", "image": PATH (raw bytes), "prog": byte address, "stall": 0..255,
                "err": [lo, hi] (word addresses answering with an error) or null,
                "start_again_after": cycles or null (a second start while busy),
                "max_cycles", "read": [[byte address, bytes], ...]}, ...]}

``SIM_RESULT``: ``{"cases": [{"name", "done", "error", "pc", "cycles", "op_cycles",
"wall_s", "read": [hex, ...]}]}``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import First, ReadOnly, RisingEdge, Timer

CLOCK_NS = 10


class Host:
    """The model's host port and the core's control signals."""

    def __init__(self, dut, word_bytes: int):
        self.dut, self.wb = dut, word_bytes
        self.nonzero: set[int] = set()       # words written nonzero so far (memory starts at 0)

    async def load(self, image: bytes) -> None:
        d, wb = self.dut, self.wb
        d.host_we.value = 1
        for w in range(-(-len(image) // wb)):
            word = int.from_bytes(image[w * wb:(w + 1) * wb], "little")
            if word == 0 and w not in self.nonzero:
                continue
            (self.nonzero.add if word else self.nonzero.discard)(w)
            d.host_addr.value = w
            d.host_wdata.value = word
            await RisingEdge(d.clk)
        d.host_we.value = 0

    async def read(self, addr: int, nbytes: int) -> bytes:
        d, wb = self.dut, self.wb
        out = bytearray()
        for w in range(addr // wb, -(-(addr + nbytes) // wb)):
            d.host_addr.value = w
            await RisingEdge(d.clk)
            await ReadOnly()
            out += int(d.host_rdata.value).to_bytes(wb, "little")
            await RisingEdge(d.clk)
        skip = addr % wb
        return bytes(out[skip:skip + nbytes])


async def _start(dut, prog: int) -> None:
    dut.prog.value = prog
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0


@cocotb.test()
async def accel_cases(dut):
    data = json.loads(Path(os.environ["SIM_DATA"]).read_text())
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    for port in ("start", "prog", "stall", "err_lo", "err_hi", "host_we", "host_addr", "host_wdata"):
        getattr(dut, port).value = 0
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    host = Host(dut, data["word_bytes"])
    results = []
    for case in data["cases"]:
        await host.load(Path(case["image"]).read_bytes())
        lo, hi = case.get("err") or (0, 0)
        dut.err_lo.value, dut.err_hi.value = lo, hi
        dut.stall.value = case.get("stall", 0)
        await RisingEdge(dut.clk)
        t0 = time.time()
        await _start(dut, case["prog"])
        again = case.get("start_again_after")
        if again:
            await Timer(again * CLOCK_NS, unit="ns")
            await _start(dut, case["prog"])
        # done fell at the start's edge (values read at that edge are still the old ones)
        await First(RisingEdge(dut.done), Timer(case["max_cycles"] * CLOCK_NS, unit="ns"))
        await ReadOnly()
        res = {"name": case["name"], "done": int(dut.done.value), "error": int(dut.error.value),
               "pc": int(dut.pc.value), "cycles": int(dut.cycles.value),
               "op_cycles": [int(getattr(dut, f"op_cycles__{k}").value) for k in range(16)],
               "wall_s": round(time.time() - t0, 3)}
        await RisingEdge(dut.clk)
        dut.err_lo.value, dut.err_hi.value, dut.stall.value = 0, 0, 0
        res["read"] = [(await host.read(a, n)).hex() for a, n in case.get("read", [])]
        results.append(res)
    Path(os.environ["SIM_RESULT"]).write_text(json.dumps({"cases": results}))
