"""cocotb side of the RTL executor: the host loop that runs an integer graph on the simulated
accelerator (:mod:`sim.rtl_top`), op by op, and scores every op against the golden executor.

``SIM_DATA`` (JSON, written by :mod:`sim.rtl_executor`)::

    {"plan": {...}, "graph": PATH, "images": PATH (int8 tensor [N, C, H, W]),
     "indices": [...], "results": PATH (JSON lines, one per image),
     "probe": "module:function" or null, "replay": null or a failed job to re-run alone}

Per image: the golden executor runs first (outside the host); then for each op the host
moves data (data-movement ops with the golden implementations of :mod:`golden.executor`,
which only reshape and index; arithmetic ops through :func:`sim.rtl_host.op_job`), loads the
unit's memories, starts the engine and sleeps until ``done`` (the simulator runs free), reads
the sink back and compares the result with the golden tensor.  The first difference stops the
run and is reported (op, tile, element, expected, got) with the job, so the driver can replay
that op alone with a waveform.  All host code runs under
:class:`golden.guard.DataMovementGuard`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import time
from pathlib import Path

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer
from cocotb.utils import get_sim_time

from golden.executor import OP_IMPLS, run_graph
from golden.graph import IntegerGraph
from golden.guard import DataMovementGuard
from sim.rtl_host import DumpError, op_job, static_loads, unpack_words
from sim.rtl_top import MOVE_OPS, Plan

CLOCK_NS = 10


class Accelerator:
    """The top's control ports: load memories, run an engine, dump a sink."""

    def __init__(self, dut, plan: Plan):
        self.dut = dut
        self.plan = plan
        self.mems = {m.name: m for e in plan.engines for m in e.mems.values()}
        self.free_cycles = 0          # cycles and wall seconds spent waiting for done: the
        self.free_seconds = 0.0       # simulator running free, with no Python wake-up

    async def reset(self):
        d = self.dut
        for port, v in (("load", 0), ("dump", 0), ("load_static", 0), ("go", 0), ("engine", 0)):
            getattr(d, port).value = v
        for i in range(8):
            getattr(d, f"cfg{i}").value = 0
        d.rst.value = 1
        await RisingEdge(d.clk)
        await RisingEdge(d.clk)
        d.rst.value = 0

    async def load_static(self, texts: dict[str, str]):
        for name, text in texts.items():
            Path(self.mems[name].static_file).write_text(text)
        self.dut.load_static.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.load_static.value = 0

    async def run(self, job, timeout_cycles: int) -> tuple[int, bool]:
        """Load the job's sources, start, wait for done; returns (cycles, finished)."""
        d = self.dut
        mask = 0
        for name, text in job.loads.items():
            Path(self.mems[name].file).write_text(text)
            mask |= 1 << self.mems[name].bit
        d.load.value = mask
        d.engine.value = job.engine
        for i, v in enumerate(job.cfg):
            getattr(d, f"cfg{i}").value = v
        d.go.value = 1
        await RisingEdge(d.clk)                 # memories load and the configuration is latched
        d.load.value = 0
        d.go.value = 0
        t0 = time.perf_counter()
        await First(RisingEdge(d.done), Timer(timeout_cycles * CLOCK_NS, unit="ns"))
        self.free_seconds += time.perf_counter() - t0
        finished = str(d.done.value) == "1"
        n = int(d.cycles.value)
        self.free_cycles += n
        return n, finished

    async def dump(self, name: str) -> str:
        mem = self.mems[name]
        path = Path(mem.file)
        path.unlink(missing_ok=True)
        self.dut.dump.value = 1 << mem.bit
        await RisingEdge(self.dut.clk)
        self.dut.dump.value = 0
        await FallingEdge(self.dut.clk)          # the $writememh of that edge has run
        return path.read_text() if path.exists() else ""


def _first_difference(got: torch.Tensor, want: torch.Tensor):
    if got.shape != want.shape:
        return None, f"shape {list(got.shape)} instead of {list(want.shape)}"
    idx = tuple(int(i) for i in (got != want).nonzero()[0])
    return idx, None


async def run_image(acc: Accelerator, graph: IntegerGraph, x: torch.Tensor, golden_env: dict, guard, probe,
                    cycles: dict) -> dict | None:
    """Run one image op by op; return None, or the first difference."""
    env = dict(graph.constants)
    env[graph.input] = x
    for op in graph.ops:
        ins = [env[n] for n in op.inputs]
        if op.type in MOVE_OPS:
            with guard:
                outs = OP_IMPLS[op.type](op, *ins)
            outs = outs if isinstance(outs, tuple) else (outs,)
        else:
            with guard:
                if probe is not None:
                    probe(op, ins)
                job = op_job(acc.plan, op, ins)
            n, finished = await acc.run(job, job.budget)
            cycles[op.type] = cycles.get(op.type, 0) + n
            if not finished:
                return {"op": op.name, "type": op.type, "problem": f"no done after {job.budget} cycles",
                        "job": _job_record(job)}
            text = await acc.dump(job.sink)
            try:
                with guard:
                    outs = (job.finish(unpack_words(acc.mems[job.sink], text, job.beats)),)
            except DumpError as exc:
                return {"op": op.name, "type": op.type, "problem": str(exc), "job": _job_record(job)}
            want = golden_env[op.outputs[0]]
            if not torch.equal(outs[0], want):
                idx, problem = _first_difference(outs[0], want)
                rec = {"op": op.name, "type": op.type, "job": _job_record(job)}
                if idx is None:
                    rec["problem"] = problem
                else:
                    rec.update(element=list(idx), tile=job.tiles(idx), expected=int(want[idx]), got=int(outs[0][idx]))
                return rec
        for name, t in zip(op.outputs, outs):
            env[name] = t
    return None


def _job_record(job) -> dict:
    return {"op": job.op, "engine": job.engine, "cfg": job.cfg, "loads": sorted(job.loads),
            "sink": job.sink, "beats": job.beats, "budget": job.budget}


def _load_probe(spec):
    """``path/to/file.py:function`` or ``module:function``, called with (op, inputs) inside the
    guarded host code before each arithmetic op (instrumentation; the guard test uses it)."""
    if not spec:
        return None
    where, fn = spec.rsplit(":", 1)
    if where.endswith(".py"):
        loc = importlib.util.spec_from_file_location("rtl_probe", where)
        mod = importlib.util.module_from_spec(loc)
        loc.loader.exec_module(mod)
    else:
        mod = importlib.import_module(where)
    return getattr(mod, fn)


@cocotb.test()
async def rtl_executor(dut):
    """Run the images of SIM_DATA through the accelerator; one JSON line per image."""
    with open(os.environ["SIM_DATA"]) as fh:
        cfg = json.load(fh)
    tstart = time.perf_counter()
    plan = Plan.from_dict(cfg["plan"])
    Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start()   # toggled in C++: no Python wake-up per cycle
    acc = Accelerator(dut, plan)
    await acc.reset()
    graph = IntegerGraph.load(cfg["graph"])
    guard = DataMovementGuard()
    probe = _load_probe(cfg.get("probe"))
    dut._log.info("set up after %.2f s", time.perf_counter() - tstart)
    with guard:
        statics = static_loads(plan, graph)
    dut._log.info("static words packed after %.2f s", time.perf_counter() - tstart)
    await acc.load_static(statics)
    dut._log.info("static memories loaded after %.2f s", time.perf_counter() - tstart)
    result = {"images": 0, "failure": None}
    if cfg.get("replay"):
        result.update(await _replay(acc, cfg["replay"]))
        Path(os.environ["SIM_RESULT"]).write_text(json.dumps(result))
        return
    images = torch.load(cfg["images"])
    out = open(cfg["results"], "a")
    t_rtl = 0.0
    c0 = get_sim_time("ns") / CLOCK_NS
    for i in cfg["indices"]:
        x = images[i:i + 1].to(torch.int64)
        logits, genv = run_graph(graph, x, keep=True)
        cycles: dict[str, int] = {}
        t0 = time.perf_counter()
        s0 = get_sim_time("ns") / CLOCK_NS
        f0 = (acc.free_cycles, acc.free_seconds)
        diff = await run_image(acc, graph, x, genv, guard, probe, cycles)
        dt = time.perf_counter() - t0
        t_rtl += dt
        dut._log.info("image %d: %.3f s", i, dt)
        rec = {"index": i, "cycles": cycles, "sim_cycles": int(get_sim_time("ns") / CLOCK_NS - s0),
               "seconds": round(dt, 4), "free_cycles": acc.free_cycles - f0[0],
               "free_seconds": round(acc.free_seconds - f0[1], 4)}
        if diff is not None:
            diff["image"] = i
            result["failure"] = diff
            rec["failure"] = diff
            out.write(json.dumps(rec) + "\n")
            out.flush()
            break
        rec["logits"] = [int(v) for v in logits[0].tolist()]
        out.write(json.dumps(rec) + "\n")
        out.flush()
        result["images"] += 1
    out.close()
    result["sim_cycles"] = int(get_sim_time("ns") / CLOCK_NS - c0)
    result["rtl_seconds"] = round(t_rtl, 3)
    result["host_ops_checked"] = guard.ops_seen
    Path(os.environ["SIM_RESULT"]).write_text(json.dumps(result))
    assert result["failure"] is None, f"RTL differs from golden: {result['failure']}"


async def _replay(acc: Accelerator, rec: dict) -> dict:
    """Re-run one failed job alone (its input files are in this run directory)."""
    from sim.rtl_host import Job

    stage = Path(rec["stage"])
    job = Job(rec["op"], rec["engine"], rec["cfg"], {n: (stage / acc.mems[n].file).read_text() for n in rec["loads"]},
              rec["sink"], rec["beats"], rec["budget"])
    n, finished = await acc.run(job, job.budget)
    return {"replayed": rec["op"], "cycles": n, "finished": finished}
