"""``hwgen accuracy --backend accel`` underneath (sim/accel_executor.py): images in batches, one
start per batch (the IMAGES register), logits read back and compared with the golden
executor per image, finished batches kept as the resume state.  Shares the Verilator build of
tests/test_accel_rtl.py (the committed configuration, 2^16 words of memory)."""

from __future__ import annotations

import pytest
import torch

from golden.executor import run_graph
from sim import accel_executor, runner

pytestmark = pytest.mark.skipif(not runner.have_simulator("verilator"), reason="verilator is not installed")


@pytest.fixture(scope="module")
def model(digits_w8a8):
    return accel_executor.prepare(digits_w8a8.graph, progress=False)


def test_batches_equal_golden_and_a_second_run_reuses_them(tmp_path, monkeypatch, model, digits_w8a8, digits_images):
    monkeypatch.setattr(accel_executor, "RUNS", tmp_path)
    xq = digits_w8a8.quantize_input(digits_images.images[:5])
    golden = run_graph(digits_w8a8.graph, xq)
    indices = [4, 0, 2]                         # two starts: 2 images, then 1
    res = accel_executor.run_accel(model, xq, indices, batch=2, progress=False)
    assert res["ran"] == 3 and res["reused"] == 0 and res["problem"] is None
    for i in indices:
        r = res["records"][i]
        assert r["error"] == 0 and r["logits"] == golden[i].tolist(), i
        assert r["sim_cycles"] > 0 and sum(r["cycles"].values()) <= r["sim_cycles"]
    again = accel_executor.run_accel(model, xq, indices + [1], batch=2, progress=False)
    assert again["ran"] == 1 and again["reused"] == 3
    assert {i: r["logits"] for i, r in again["records"].items()} == {i: golden[i].tolist() for i in indices + [1]}


def test_first_difference_finds_no_instruction_on_a_good_image(model, digits_w8a8, digits_images):
    """The first 12 instructions of an image (up to the first Softmax and MATMULs), each alone
    on the RTL, equal the interpreter: the search a mismatch starts, which names the first
    instruction that does not."""
    assert accel_executor.first_difference(model, digits_w8a8.quantize_input(digits_images.images[7:8])[0],
                                           upto=12) is None


def test_accuracy_command_on_the_accelerator(tmp_path, monkeypatch):
    """``hwgen accuracy --backend accel``: the report names the backend and counts the images
    whose accelerator logits equal the golden executor's."""
    import json

    from hwgen.cli import main

    monkeypatch.setattr(accel_executor, "RUNS", tmp_path / "runs")
    report = tmp_path / "acc.json"
    assert main(["accuracy", "--backend", "accel", "--model", "digits", "--bits", "w8a8", "--start", "10",
                 "--count", "3", "--workers", "1", "--report", str(report)]) == 0
    res = json.loads(report.read_text())
    assert res["backend"] == "accel" and res["requested_images"] == 3 and res["bit_exact_images"] == 3
    assert res["failure"] is None and res["cycles_per_image"] > 0
    assert "compiled program on the AXI accelerator" in (tmp_path / "acc.md").read_text()
