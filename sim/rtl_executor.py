"""The RTL executor: run an integer graph on the generated hardware in simulation.

:func:`prepare` generates the units the graph needs (:func:`sim.rtl_top.unit_components`),
the accelerator top around them (:func:`sim.rtl_top.top_verilog`) and builds it once per
configuration (Verilator by default, Icarus on request; cached under ``sim_build/``).
:func:`run_rtl` runs images on it: the images are split into shards, one simulator process
per worker (:mod:`sim.tb_rtl_executor` inside), each appending one JSON line per image to
its own results file under ``build/rtl_runs/<key>/``.  Those files are also the resume
state: an image already there (for the same graph and hardware) is not run again, so a long
run can be stopped and continued, or split with ``start``/``count`` across machines.

When an op of the RTL differs from the golden executor, its worker stops at once and
reports the op, tile, element, expected and got values; :func:`run_rtl` then replays that op
alone in a fresh simulation with tracing on and returns the waveform's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from golden.errors import UserError

from .rtl_top import TOP, Plan, plan_graph, top_verilog, unit_components, unit_verilog

__all__ = ["RtlModel", "prepare", "run_rtl", "graph_fingerprint", "RUNS", "RunInterrupted", "run_in_threads"]

REPO = Path(__file__).resolve().parent.parent
RUNS = Path(os.environ.get("RTL_RUNS_DIR", REPO / "build" / "rtl_runs"))
TB = "sim.tb_rtl_executor"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_rtl`: the simulators are stopped; every image finished so far
    stays in the run folder (``kept`` says how many and where) and the next run reuses them."""

    def __init__(self, run_dir: Path, finished: int, requested: int):
        self.run_dir, self.finished, self.requested = run_dir, finished, requested
        self.kept = (f"kept {finished} of {requested} finished RTL images in {run_dir} "
                     f"(the same command continues from there)")
        super().__init__(self.kept)


@dataclass
class RtlModel:
    graph: object
    plan: Plan
    build: object
    key: str
    hw: object

    @property
    def run_dir(self) -> Path:
        return RUNS / self.key


def graph_fingerprint(graph) -> str:
    """A hash of everything that defines the graph's integer semantics."""
    h = hashlib.sha256()
    h.update(json.dumps({"ops": [[o.type, o.name, o.inputs, o.outputs, o.attrs] for o in graph.ops],
                         "meta": graph.meta.get("spec")}, sort_keys=True, default=str).encode())
    for o in graph.ops:
        for k in sorted(o.consts):
            h.update(k.encode() + o.consts[k].to(torch.int64).numpy().tobytes())
    for k in sorted(graph.constants):
        h.update(k.encode() + graph.constants[k].to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def hw_for_graph(graph):
    """The capabilities ``graph`` needs (:func:`hwgen.capabilities.derive_hw`): its widths,
    longest rows and most channels; the parameters no layer decides (lanes, the GEMM array's
    shape and multipliers) are those of ``configs/default.json``, the accelerator that
    ``make verilog`` writes to rtl/ (the digits ViT at W8A8 needs exactly its units)."""
    from hwgen.capabilities import derive_hw
    from hwgen.generate import DEFAULT_CONFIG, GenConfig

    return derive_hw([graph], base=GenConfig.load(DEFAULT_CONFIG).hw)


def prepare(graph, simulator: str = "verilator", hw=None, progress: bool = True, unit_graph=None) -> RtlModel:
    """Units, plan and the simulator build of the accelerator for ``graph`` (cached).

    The units are generated for the capabilities ``graph`` needs (``hw``, default
    :func:`hw_for_graph`), one per op type and operand format (per GELU variant in use).
    ``unit_graph`` (tests only): load the units' run-time constants from this graph instead,
    e.g. a copy with one constant changed, to show that a corrupted constant word is caught."""
    from hwgen.generate import generator_hash

    from . import runner

    if simulator not in runner.SIMULATORS:
        raise UserError(f"simulator {simulator!r} is not accepted; accepted: {', '.join(runner.SIMULATORS)}")
    if not runner.have_simulator(simulator):
        raise UserError(f"simulator {simulator} is not installed (Icarus: apt-get install iverilog)")
    hw = hw or hw_for_graph(graph)
    comps = unit_components(graph, hw)
    plan = plan_graph(graph, hw, comps, const_graph=unit_graph)
    top_src = (Path(__file__).parent / "rtl_top.py").read_bytes()
    # The hardware (Verilog and its build) depends on the plan's engines and memories, never on
    # the constants the memories are loaded with; the run (resume state) depends on both.
    layout = json.loads(plan.to_json())
    layout.pop("consts")
    hw_key = hashlib.sha256(f"{json.dumps(layout, sort_keys=True)}|{json.dumps(hw.as_dict(), sort_keys=True)}|"
                            f"{generator_hash()}|".encode() + top_src).hexdigest()[:16]
    units_fp = graph_fingerprint(unit_graph) if unit_graph is not None else ""
    key = hashlib.sha256(f"{hw_key}|{graph_fingerprint(graph)}|{units_fp}".encode()).hexdigest()[:16]
    vcache = runner.SIM_BUILD / "_rtl_top" / f"{hw_key}.v"
    if vcache.exists():
        text = vcache.read_text()
        for c in comps.values():                     # only their signatures were needed
            c._MustUse__silence = True
    else:
        if progress:
            print(f"generating the accelerator: {len(comps)} units", file=sys.stderr, flush=True)
        text = top_verilog(plan, comps, unit_verilog(comps))
        vcache.parent.mkdir(parents=True, exist_ok=True)
        tmp = vcache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.rename(vcache)
    if progress:
        print(f"building the {simulator} model of the accelerator (cached after the first time)",
              file=sys.stderr, flush=True)
    b = runner.build(None, TOP, {"rtl_executor": hw_key}, simulator=simulator, verilog_text=text, ports_only=True)
    return RtlModel(graph, plan, b, key, hw)


def _shards(indices: list[int], workers: int) -> list[list[int]]:
    workers = max(1, min(workers, len(indices)))
    return [indices[k::workers] for k in range(workers)]


def _read_results(run_dir: Path) -> dict[int, dict]:
    """Finished images of every earlier run in ``run_dir``: one JSON line per image; a line cut
    short by a killed worker (SIGKILL, a full disk) is not an image and is skipped."""
    done = {}
    for path in sorted(run_dir.glob("results-*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:          # a line cut short by a killed worker
                continue
            if isinstance(rec, dict) and "logits" in rec and isinstance(rec.get("index"), int):
                done[rec["index"]] = rec
    return done


def _child_pids() -> list[int]:
    """This process's child processes (the simulators the worker threads started)."""
    pids: list[int] = []
    try:
        for task in Path("/proc/self/task").iterdir():
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return pids


def _stop_simulators(threads, timeout: float = 10.0) -> None:
    """Ctrl-C reaches the simulators too when it comes from a terminal; when only this process
    was interrupted, stop them here so that none keeps running (and writing) behind us."""
    import signal

    for pid in _child_pids():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    end = time.time() + timeout
    for t in threads:
        t.join(max(0.0, end - time.time()))


def _remove_stale_images(run_dir: Path) -> None:
    """``images-<pid>.pt`` left by a run that was killed outright."""
    for p in run_dir.glob("images-*.pt"):
        try:
            pid = int(p.stem.split("-", 1)[1])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except OSError:
            continue


def run_rtl(model: RtlModel, images_q: torch.Tensor, indices: list[int], workers: int = 1,
            progress: bool = True, resume: bool = True, probe: str | None = None) -> dict:
    """Run ``images_q[i]`` (integer images, the graph's input) for ``i`` in ``indices``.

    Returns ``{"records": {index: record}, "failure": None | {...}, "workers": [...],
    "waveform": path | None}``; a record has the RTL logits, cycles per op type and the
    simulated cycles and wall seconds of the image.
    """
    from . import runner

    run_dir = model.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_images(run_dir)
    done = _read_results(run_dir) if resume else {}
    if not resume:
        for p in run_dir.glob("results-*.jsonl"):
            p.unlink()
    todo = [i for i in indices if i not in done]
    graph_path = run_dir / "graph.pt"
    if not graph_path.exists():
        model.graph.save(str(graph_path))
    images_path = run_dir / f"images-{os.getpid()}.pt"
    torch.save(images_q, images_path)
    shards = _shards(todo, workers) if todo else []     # everything finished before: no simulator
    stamp = f"{int(time.time())}-{os.getpid()}"
    jobs = []
    for k, shard in enumerate(shards):
        res_path = run_dir / f"results-{stamp}-w{k}.jsonl"
        data = {"plan": json.loads(model.plan.to_json()), "graph": str(graph_path), "images": str(images_path),
                "indices": shard, "results": str(res_path), "probe": probe}
        jobs.append((f"w{k}-{stamp}", data, res_path))
    outs: list[dict] = [None] * len(jobs)

    def work(k, stopping):
        name, data, _ = jobs[k]
        try:
            outs[k] = runner.run(model.build, TB, data, name, waves_on_fail=False)
        except BaseException:
            if not stopping.is_set():
                raise

    def interrupted():
        images_path.unlink(missing_ok=True)
        return RunInterrupted(run_dir, len(set(_read_results(run_dir)) & set(indices)), len(indices))

    paths = [j[2] for j in jobs]
    t0 = time.time()
    run_in_threads(work, len(jobs), lambda: sum(p.read_text().count("\n") for p in paths if p.exists()),
                   len(todo), progress, "images on simulated hardware", interrupted)
    wall = time.time() - t0
    images_path.unlink(missing_ok=True)
    records = {i: r for i, r in _read_results(run_dir).items() if i in set(indices)}
    failure, waveform = None, None
    for o in outs:
        if o and o.get("failure"):
            failure = o["failure"]
            break
    if failure is None and any(o is None or o.get("failed") for o in outs):
        bad = next(o for o in outs if o is None or o.get("failed"))
        failure = {"problem": "the simulation stopped without a result", "log": (bad or {}).get("run_dir")}
    if failure and failure.get("job"):
        waveform = _replay(model, failure, next(o["run_dir"] for o in outs if o and o.get("failure")))
    ran_cycles = sum(r["sim_cycles"] for i, r in records.items() if i in set(todo))
    return {"records": records, "failure": failure, "waveform": waveform, "workers": outs, "wall_seconds": wall,
            "sim_cycles_ran": ran_cycles,
            "ran": len(todo), "reused": len(set(indices) & set(done))}


def run_in_threads(work, n: int, count, total: int, progress: bool, desc: str, interrupted) -> None:
    """Run ``work(k, stopping)`` for k < n, one thread each (each starts a simulator), with a
    progress bar of ``count()`` out of ``total`` until all have finished.  Ctrl-C sets
    ``stopping`` (a worker whose simulator was stopped stays quiet), stops the simulators and
    raises ``interrupted()``."""
    from tqdm import tqdm

    stopping = threading.Event()
    threads = [threading.Thread(target=work, args=(k, stopping), daemon=True) for k in range(n)]
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress or total == 0)
    seen = 0
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            c = count()
            if c > seen:
                bar.update(c - seen)
                seen = c
        for t in threads:
            t.join()
        bar.update(max(0, count() - seen))
    except KeyboardInterrupt:
        bar.close()             # before any message about the interrupt, not after it
        stopping.set()
        _stop_simulators(threads)
        raise interrupted() from None
    finally:
        bar.close()


def _replay(model: RtlModel, failure: dict, failed_run_dir: str) -> str | None:
    """Re-run the failed op alone with tracing on; return the waveform's path."""
    from . import runner

    name = f"replay-{failure['op'].replace('.', '_')}"
    src = Path(failed_run_dir)
    data = {"plan": json.loads(model.plan.to_json()), "graph": str(model.run_dir / "graph.pt"),
            "replay": failure["job"]}
    # the replay needs the failing op's input files: copy them into its run directory
    stage = model.run_dir / name
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for mem in failure["job"]["loads"]:
        shutil.copy(src / f"{mem}.hex", stage / f"{mem}.hex")
    data["replay"]["stage"] = str(stage)
    res = runner.run(model.build, TB, data, name, waves_on_fail=False, waves=True)
    wave = Path(res["run_dir"]) / "dump.vcd" if model.build.simulator == "verilator" else \
        model.build.build_dir / f"{TOP}.fst"
    if not wave.exists():
        return None
    dest = model.run_dir / f"{name}.{wave.suffix.lstrip('.')}"
    shutil.copy(wave, dest)
    return str(dest)


def cpu_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def verilator_available() -> bool:
    return runner_has("verilator")


# --- accuracy on simulated hardware --------------------------------------------------------------

def evaluate_rtl(float_model, q, images: torch.Tensor, labels: torch.Tensor, indices: list[int], workers: int = 1,
                 simulator: str = "verilator", progress: bool = True, resume: bool = True,
                 unit_graph=None) -> dict:
    """FP32, golden integer and RTL top-1 on ``images[indices]``, with cycles and speed.

    The RTL logits of each image are compared with the golden executor's (run here, in
    batches, independently of the per-op checks inside the simulation)."""
    from golden.evaluate import integer_logits, top1

    sel = torch.tensor(indices, dtype=torch.int64)
    imgs, labs = images[sel], labels[sel]
    with torch.no_grad():
        fp = torch.cat([float_model(imgs[i:i + 64]) for i in range(0, len(imgs), 64)]) if len(imgs) else torch.zeros(0)
    gold = integer_logits(q, imgs, progress=False)
    model = prepare(q.graph, simulator, progress=progress, unit_graph=unit_graph)
    xq = q.quantize_input(images)
    res = run_rtl(model, xq, indices, workers=workers, progress=progress, resume=resume)
    recs = res["records"]
    rtl = torch.tensor([recs[i]["logits"] for i in indices if i in recs], dtype=torch.int64)
    have = torch.tensor([i in recs for i in indices], dtype=torch.bool)
    exact = int((rtl == gold[have]).all(-1).sum()) if len(rtl) else 0
    per_op, sim_cycles, seconds, free_c, free_s = sum_records(recs, indices)
    free = free_c / free_s if free_s else 0.0
    rate = sim_cycles / seconds if seconds else 0.0
    n_done = int(have.sum())
    report = {
        "model": q.graph.meta["model"], "bits": q.graph.meta["bits"], "images": n_done,
        "top1": {"fp32": top1(fp, labs), "integer": top1(gold, labs),
                 "rtl": top1(rtl, labs[have]) if n_done else 0.0},
        "bit_exact_images": exact,
        "cycles": {"total": sum(per_op.values()), "per_op": dict(sorted(per_op.items()))},
        "sim_cycles_per_second": round(rate, 1),
        "free_running_cycles_per_second": round(free, 1),
        "ratio_to_free_running": round(rate / free, 3) if free else None,
        "requested_images": len(indices), "first_index": indices[0] if indices else None,
        "simulator": simulator, "workers": len(res["workers"]), "ran": res["ran"], "reused": res["reused"],
        "wall_seconds": round(res["wall_seconds"], 1),
        "aggregate_cycles_per_second": round(res["sim_cycles_ran"] / res["wall_seconds"], 1)
        if res["ran"] and res["wall_seconds"] else None,
        "cycles_per_image": round(sum(per_op.values()) / n_done) if n_done else 0,
        "build_seconds": round(model.build.seconds, 1), "units": len(model.plan.engines),
        "failure": res["failure"], "waveform": res["waveform"],
        "gelu": q.graph.meta["gelu"], "softmax": q.graph.meta["softmax"],
        "calib_images": q.graph.meta["calib_images"], "seed": q.graph.meta["seed"],
    }
    return report


def sum_records(recs: dict[int, dict], indices: list[int]):
    """Over the finished images among ``indices``: cycles per op type, simulated cycles and
    seconds, and the free-running share of both."""
    per_op: dict[str, float] = {}
    sim_cycles = seconds = free_c = free_s = 0
    for i in indices:
        r = recs.get(i)
        if r is None:
            continue
        for k, v in r["cycles"].items():
            per_op[k] = per_op.get(k, 0) + v
        sim_cycles += r["sim_cycles"]
        seconds += r["seconds"]
        free_c += r["free_cycles"]
        free_s += r["free_seconds"]
    return per_op, sim_cycles, seconds, free_c, free_s


def runner_has(simulator: str) -> bool:
    from . import runner
    return runner.have_simulator(simulator)
