"""The RTL executor's resume state (issue 12): a run killed outright and started again loses no
finished image and gives the same report as an uninterrupted run.

* ``test_resume_state_after_a_kill``: no simulator needed.  The results files of a run killed
  mid-line (two finished images and half a line) plus those of the run that finished it give
  the same records and the same report as one uninterrupted run's file, and nothing that
  was finished is simulated again.
* ``test_sigkill_then_rerun``: the real thing on Verilator, two digits images, one worker: the
  ``hwgen accuracy --backend rtl`` process group is SIGKILLed as soon as the first image is
  finished; the same command then reuses it, and its report equals an uninterrupted run's
  (all but the timing and how-it-ran fields).  The accelerator build is shared with
  tests/test_rtl_executor.py (same graph: digits W4A8, 64 calibration images, seed 0).
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

from golden.executor import run_graph
from hwgen.cli import main
from sim import rtl_executor

REPO = Path(__file__).resolve().parent.parent
# fields of an RTL report that depend on timing or on how the run was made, not on its results
HOW = {"wall_seconds", "wall_seconds_total", "sim_cycles_per_second", "free_running_cycles_per_second",
       "ratio_to_free_running", "aggregate_cycles_per_second", "build_seconds", "ran", "reused", "workers"}


def _same(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in HOW}


def _records(q, xq, indices):
    gold = run_graph(q.graph, xq[indices])
    return [{"index": i, "logits": gold[k].tolist(), "cycles": {"linear": 1000 + i, "softmax": 70 + i},
             "sim_cycles": 1200 + i, "seconds": 0.25 + i, "free_cycles": 900, "free_seconds": 0.01}
            for k, i in enumerate(indices)]


def _write(path: Path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_resume_state_after_a_kill(monkeypatch, tmp_path, digits_model, digits_w8a8, digits_images):
    q, images, labels = digits_w8a8, digits_images.images, digits_images.labels
    indices = [0, 1, 2]
    xq = q.quantize_input(images)
    recs = _records(q, xq, indices)
    cut = json.dumps(recs[2])[:25]                        # the line the SIGKILL cut short
    killed, whole = tmp_path / "runs_killed" / "k", tmp_path / "runs_whole" / "k"
    killed.mkdir(parents=True)
    whole.mkdir(parents=True)
    _write(killed / "results-100-1-w0.jsonl", recs[:2], tail=cut)
    (killed / "images-999999999.pt").write_bytes(b"left by the killed run")
    assert set(rtl_executor._read_results(killed)) == {0, 1}       # the cut line is no image
    _write(killed / "results-200-2-w0.jsonl", recs[2:])           # the rerun finished the last one
    _write(whole / "results-300-3-w0.jsonl", recs)

    def no_simulator(*a, **k):
        raise AssertionError("a finished image was simulated again")

    monkeypatch.setattr("sim.runner.run", no_simulator)

    class Graph:
        def save(self, path):
            Path(path).write_bytes(b"graph")

    reports = {}
    for name, run_dir in (("killed", killed), ("whole", whole)):
        model = rtl_executor.RtlModel(Graph(), SimpleNamespace(engines=[]),
                                      SimpleNamespace(seconds=0.0, simulator="verilator"), "k", None)
        monkeypatch.setattr(rtl_executor, "RUNS", run_dir.parent)
        monkeypatch.setattr(rtl_executor, "prepare", lambda *a, **k: model)
        reports[name] = rtl_executor.evaluate_rtl(digits_model, q, images, labels, indices, progress=False)
        assert reports[name]["reused"] == 3 and reports[name]["ran"] == 0
    assert not (killed / "images-999999999.pt").exists()          # a dead run's leftovers are removed
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


RUN = ["accuracy", "--backend", "rtl", "--bits", "w4a8", "--images", "2", "--workers", "1"]
BUILD_LIMIT_S = 1800     # a cold accelerator build (when test_rtl_executor.py has not made it) is slow


@pytest.mark.skipif(not rtl_executor.verilator_available(), reason="verilator not installed")
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
            assert proc.poll() is None, f"the run ended before its first image:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, "no image finished in time"
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)             # hwgen and its simulator, outright
        except ProcessLookupError:
            pass
        proc.wait()
    assert not killed_report.exists()
    kept = set(rtl_executor._read_results(next(runs.iterdir())))
    assert kept and kept <= {0, 1}

    monkeypatch.setattr(rtl_executor, "RUNS", runs)         # the same command again
    assert main([*RUN, "--report", str(tmp_path / "resumed.json")]) == 0
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    keys = sorted(p.name for p in runs.iterdir())
    assert len(keys) == 1, f"the hardware changed between the two runs (sources edited meanwhile?): {keys}"
    assert resumed["reused"] >= len(kept) and resumed["reused"] + resumed["ran"] == 2

    monkeypatch.setattr(rtl_executor, "RUNS", tmp_path / "runs_whole")     # an uninterrupted run
    assert main([*RUN, "--report", str(tmp_path / "whole.json")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["reused"] == 0 and whole["ran"] == 2
    assert resumed["bit_exact_images"] == 2 and resumed["failure"] is None
    assert _same(resumed) == _same(whole)
    md = lambda p: [ln for ln in p.read_text().splitlines()  # noqa: E731
                    if ("cycles" in ln or "top-1" in ln) and "per second" not in ln]
    assert md(tmp_path / "resumed.md") == md(tmp_path / "whole.md")
