"""cocotb side of accelerator runs (:class:`hwgen.accel.memory_model.AccelSimTop`): a host
driver's steps, on the AXI4-Lite registers through cocotbext-axi's ``AxiLiteMaster``: write
the memory image, write PROG, enable the interrupt, start, sleep until ``irq`` (the
simulator runs free), read STATUS, PC and the cycle counters, clear the interrupt, read
regions back.  The memory is the model inside the design (``"memory": "model"``, loaded
through its host port) or cocotbext-axi's ``AxiRam`` on the AXI4 master (``"axi"``: Python on
every beat).  It only drives and reads; the tests compare.

``SIM_DATA`` (JSON)::

    {"memory": "model" | "axi", "word_bytes": 8, "memory_bytes": N,
     "cases": [{"name", "image": PATH (raw bytes), "prog": byte address, "stall": 0..255,
                "err": [lo, hi] (word addresses answering with an error) or null,
                "start_again_after": cycles or null (a second start while busy),
                "images": images per start, "image_stride": bytes,
                "max_cycles", "read": [[byte address, bytes], ...], "tag": anything}, ...],
     "lines": PATH or null}

``stall`` and ``err`` act on the model only.  ``SIM_RESULT``: ``{"cases": [{"name", "done",
"busy", "error", "irq", "pc", "cycles", "op_cycles", "id", "unmapped_resp",
"irq_after_clear", "wall_s", "case_s", "tag", "read": [hex, ...]}]}``; with ``lines``, each case's
result is also appended there as one JSON line as soon as the case ends (progress, and what
a stopped run keeps).  ``wall_s``: from start to done (the simulator running free);
``case_s``: the whole case, memory writes and reads included.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import First, ReadOnly, RisingEdge, Timer
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from hwgen.accel.axi import REGS

CLOCK_NS = 10
UNMAPPED = 0x3C


class ModelMemory:
    """The memory model's host port (used while the accelerator is idle).

    Writing an image writes only the words that differ from what the memory holds: the
    words the host wrote last (the memory starts at 0), except those the accelerator may have
    written since, which are the regions a case reads back (:meth:`forget`).  Consecutive
    cases on one program image (instruction cases, batches) then cost a few words each."""

    def __init__(self, dut, word_bytes: int):
        self.dut, self.wb = dut, word_bytes
        self.held: dict[int, int] = {}       # word -> value, where known and nonzero
        self.unknown: set[int] = set()

    def forget(self, addr: int, nbytes: int) -> None:
        self.unknown.update(range(addr // self.wb, -(-(addr + nbytes) // self.wb)))

    async def write(self, image: bytes) -> None:
        d, wb = self.dut, self.wb
        n = -(-len(image) // wb)
        stale = {w for w in self.held if w >= n} | {w for w in self.unknown if w >= n}
        d.host_we.value = 1
        for w in list(range(n)) + sorted(stale):
            word = int.from_bytes(image[w * wb:(w + 1) * wb], "little") if w < n else 0
            if word == self.held.get(w, 0) and w not in self.unknown:
                continue
            if word:
                self.held[w] = word
            else:
                self.held.pop(w, None)
            d.host_addr.value = w
            d.host_wdata.value = word
            await RisingEdge(d.clk)
        d.host_we.value = 0
        self.unknown.clear()

    async def read(self, addr: int, nbytes: int) -> bytes:
        d, wb = self.dut, self.wb
        out = bytearray()
        for w in range(addr // wb, -(-(addr + nbytes) // wb)):
            d.host_addr.value = w
            await RisingEdge(d.clk)             # the top registers the address,
            await RisingEdge(d.clk)             # the words' read port answers a cycle later
            await ReadOnly()
            out += int(d.host_rdata.value).to_bytes(wb, "little")
            await RisingEdge(d.clk)
        skip = addr % wb
        return bytes(out[skip:skip + nbytes])


class RamMemory:
    """cocotbext-axi's AxiRam on the accelerator's AXI4 master."""

    def __init__(self, dut, size: int):
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=size)

    async def write(self, image: bytes) -> None:
        self.ram.write(0, image)

    async def read(self, addr: int, nbytes: int) -> bytes:
        return self.ram.read(addr, nbytes)


@cocotb.test()
async def accel_cases(dut):
    data = json.loads(Path(os.environ["SIM_DATA"]).read_text())
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    model = data["memory"] == "model"
    for port in ("stall", "err_lo", "err_hi", "host_we", "host_addr", "host_wdata"):
        getattr(dut, port).value = 0
    dut.use_model.value = int(model)
    mem = ModelMemory(dut, data["word_bytes"]) if model else RamMemory(dut, data["memory_bytes"])
    lite = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
    dut.rst.value = 1
    for _ in range(4):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    results = []
    lines = data.get("lines")
    for case in data["cases"]:
        t_case = time.time()
        await mem.write(Path(case["image"]).read_bytes())
        lo, hi = case.get("err") or (0, 0)
        dut.err_lo.value, dut.err_hi.value = lo, hi
        dut.stall.value = case.get("stall", 0)
        await lite.write_dword(REGS["PROG"], case["prog"])
        await lite.write_dword(REGS["IMAGES"], case.get("images", 1))
        await lite.write_dword(REGS["IMAGE_STRIDE"], case.get("image_stride", 0))
        await lite.write_dword(REGS["IRQ"], 3)                  # enable, clear a pending one
        t0 = time.time()
        await lite.write_dword(REGS["CTRL"], 1)
        again = case.get("start_again_after")
        if again:
            await Timer(again * CLOCK_NS, unit="ns")
            await lite.write_dword(REGS["CTRL"], 1)
        if not int(dut.irq.value):
            await First(RisingEdge(dut.irq), Timer(case["max_cycles"] * CLOCK_NS, unit="ns"))
        wall = time.time() - t0
        dut.err_lo.value, dut.err_hi.value, dut.stall.value = 0, 0, 0
        status = await lite.read_dword(REGS["STATUS"])
        res = {"name": case["name"], "irq": int(dut.irq.value), "done": (status >> 1) & 1, "busy": status & 1,
               "error": (status >> 4) & 15, "pc": await lite.read_dword(REGS["PC"]),
               "cycles": await lite.read_qword(REGS["CYCLES"]),
               "op_cycles": [await lite.read_qword(REGS["OP_CYCLES"] + 8 * k) for k in range(16)],
               "id": await lite.read_dword(REGS["ID"]),
               "unmapped_resp": int((await lite.read(UNMAPPED, 4)).resp), "wall_s": round(wall, 3)}
        await lite.write_dword(REGS["IRQ"], 3)
        res["irq_after_clear"] = int(dut.irq.value)
        res["read"] = [(await mem.read(a, n)).hex() for a, n in case.get("read", [])]
        if model:
            for a, n in case.get("read", []):
                mem.forget(a, n)
        res["case_s"], res["tag"] = round(time.time() - t_case, 3), case.get("tag")
        results.append(res)
        if lines:
            with open(lines, "a") as f:
                f.write(json.dumps(res) + "\n")
    Path(os.environ["SIM_RESULT"]).write_text(json.dumps({"cases": results}))
