"""The RTL executor's resume state (issue 12): a run killed outright and started again loses no
finished image and gives the same report as an uninterrupted run.

* ``test_resume_state_after_a_kill``: no simulator needed.  The results files of a run killed
  mid-line (one finished batch and half a line) plus those of the run that finished it give
  the same records and the same report as one uninterrupted run's file, and nothing that
  was finished is simulated again.
* ``test_sigkill_then_rerun``: the real thing on Verilator, three digits images, two workers
  (batches of 2 and 1 images): the ``hwgen accuracy --backend rtl`` process group is
  SIGKILLed as soon as the first batch is finished; the same command then reuses it, and its
  report equals an uninterrupted run's (all but the timing and how-it-ran fields).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from golden.executor import run_graph
from hwgen.accel.compiler import AccelConfig, compile
from hwgen.accel.interpreter import header
from hwgen.cli import main
from sim import rtl_executor, runner

REPO = Path(__file__).resolve().parent.parent
# fields of an RTL report that depend on timing or on how the run was made, not on its results
HOW = {"wall_seconds", "wall_seconds_total", "sim_cycles_per_second", "free_running_cycles_per_second",
       "ratio_to_free_running", "aggregate_cycles_per_second", "build_seconds", "ran", "reused", "workers",
       "images_per_start"}


def _same(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in HOW}


def _batch_line(logits, indices, esize) -> dict:
    """A finished batch as sim/tb_accel.py writes it (the logits as the RTL stored them)."""
    return {"name": f"images{indices[0]}", "done": True, "error": 0, "cycles": 5000 * len(indices),
            "op_cycles": [0, 0, 0, 1000 * len(indices)], "case_s": 0.5, "wall_s": 0.4,
            "tag": {"indices": indices, "esize": esize},
            "read": [logits[i].to(torch.int64).numpy().astype(f"<i{1 << esize}").tobytes().hex() for i in indices]}


def _write(path: Path, lines, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + tail)


def test_resume_state_after_a_kill(monkeypatch, tmp_path, digits_model, digits_w8a8, digits_images):
    q, images, labels = digits_w8a8, digits_images.images, digits_images.labels
    indices = [0, 1, 2]
    xq = q.quantize_input(images)
    gold = dict(zip(indices, run_graph(q.graph, xq[indices])))
    hw = rtl_executor.hw_for_graph(q.graph)
    program = compile(q.graph, hw, AccelConfig())
    esize = header(program.image)["logits_esize"]
    first, second = _batch_line(gold, [0, 1], esize), _batch_line(gold, [2], esize)
    cut = json.dumps(second)[:25]                         # the line the SIGKILL cut short
    killed, whole = tmp_path / "runs_killed" / "k", tmp_path / "runs_whole" / "k"
    killed.mkdir(parents=True)
    whole.mkdir(parents=True)
    _write(killed / "results-100-1-w0.jsonl", [first], tail=cut)
    assert set(rtl_executor._read_results(killed)) == {0, 1}       # the cut line is no image
    _write(killed / "results-200-2-w0.jsonl", [second])           # the rerun finished the last one
    _write(whole / "results-300-3-w0.jsonl", [first, second])

    def no_simulator(*a, **k):
        raise AssertionError("a finished image was simulated again")

    monkeypatch.setattr("sim.runner.run", no_simulator)
    reports = {}
    for name, run_dir in (("killed", killed), ("whole", whole)):
        model = rtl_executor.RtlModel(q.graph, hw, AccelConfig(), program, SimpleNamespace(seconds=0.0), "k")
        monkeypatch.setattr(rtl_executor, "RUNS", run_dir.parent)
        monkeypatch.setattr(rtl_executor, "prepare", lambda *a, **k: model)
        reports[name] = rtl_executor.evaluate_rtl(digits_model, q, images, labels, indices, progress=False)
        assert reports[name]["reused"] == 3 and reports[name]["ran"] == 0
    assert reports["killed"]["bit_exact_images"] == 3
    assert _same(reports["killed"]) == _same(reports["whole"])


def _complete_lines(runs: Path) -> int:
    n = 0
    for p in runs.glob("*/results-*.jsonl"):
        try:
            n += p.read_text(errors="replace").count("\n")
        except OSError:
            pass
    return n


RUN = ["accuracy", "--backend", "rtl", "--bits", "w4a8", "--images", "3", "--workers", "2"]
BUILD_LIMIT_S = 1800     # a cold accelerator build (when no other test has made it) is slow


@pytest.mark.skipif(not runner.have_simulator("verilator"), reason="verilator not installed")
def test_sigkill_then_rerun(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    log = tmp_path / "killed.log"
    killed_report = tmp_path / "killed" / "r.json"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "hwgen.cli", *RUN, "--report", str(killed_report)],
                                env=dict(os.environ, RTL_RUNS_DIR=str(runs)), cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + BUILD_LIMIT_S
        while _complete_lines(runs) < 1:
            assert proc.poll() is None, f"the run ended before its first batch:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, "no batch finished in time"
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)             # hwgen and its simulator, outright
        except ProcessLookupError:
            pass
        proc.wait()
    assert not killed_report.exists()
    kept = set(rtl_executor._read_results(next(runs.iterdir())))
    assert kept in ({0, 1}, {2})                          # whole batches

    monkeypatch.setattr(rtl_executor, "RUNS", runs)         # the same command again
    assert main([*RUN, "--report", str(tmp_path / "resumed.json")]) == 0
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    keys = sorted(p.name for p in runs.iterdir())
    assert len(keys) == 1, f"the hardware changed between the two runs (sources edited meanwhile?): {keys}"
    assert resumed["reused"] >= len(kept) and resumed["reused"] + resumed["ran"] == 3

    monkeypatch.setattr(rtl_executor, "RUNS", tmp_path / "runs_whole")     # an uninterrupted run
    assert main([*RUN, "--report", str(tmp_path / "whole.json")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["reused"] == 0 and whole["ran"] == 3
    assert resumed["bit_exact_images"] == 3 and resumed["failure"] is None
    assert _same(resumed) == _same(whole)
    md = lambda p: [ln for ln in p.read_text().splitlines()  # noqa: E731
                    if ("cycles" in ln or "top-1" in ln) and "per second" not in ln]
    assert md(tmp_path / "resumed.md") == md(tmp_path / "whole.md")
