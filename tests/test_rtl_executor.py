"""``hwgen accuracy --backend rtl`` underneath (sim/rtl_executor.py): the graph compiled and run
on the AXI accelerator, images in batches, one start per batch (the IMAGES register), logits
read back and compared with the golden executor per image, finished batches kept as the
resume state.  Shares the Verilator build of tests/test_accel_rtl.py (the committed
configuration, 2^16 words of memory).  The 360-image runs are `make demo` and the README's
table, not tests."""

from __future__ import annotations

import pytest
import torch

from golden.errors import UserError
from golden.executor import run_graph
from golden.guard import DataMovementGuard, HostArithmetic
from golden.quantize import QuantConfig, quantize_model
from hwgen.accel.compiler import AccelConfig, compile
from sim import rtl_executor, runner

needs_verilator = pytest.mark.skipif(not runner.have_simulator("verilator"), reason="verilator is not installed")


@pytest.fixture(scope="module")
def model(digits_w8a8):
    return rtl_executor.prepare(digits_w8a8.graph, progress=False)


@needs_verilator
def test_batches_equal_golden_and_a_second_run_reuses_them(tmp_path, monkeypatch, model, digits_w8a8, digits_images):
    monkeypatch.setattr(rtl_executor, "RUNS", tmp_path)
    xq = digits_w8a8.quantize_input(digits_images.images[:5])
    golden = run_graph(digits_w8a8.graph, xq)
    indices = [4, 0, 2]                         # two starts: 2 images, then 1
    res = rtl_executor.run_rtl(model, xq, indices, batch=2, progress=False)
    assert res["ran"] == 3 and res["reused"] == 0 and res["problem"] is None and res["batch"] == 2
    for i in indices:
        r = res["records"][i]
        assert r["error"] == 0 and r["logits"] == golden[i].tolist(), i
        assert r["sim_cycles"] > 0 and sum(r["cycles"].values()) <= r["sim_cycles"]
    again = rtl_executor.run_rtl(model, xq, indices + [1], batch=2, progress=False)
    assert again["ran"] == 1 and again["reused"] == 3
    assert {i: r["logits"] for i, r in again["records"].items()} == {i: golden[i].tolist() for i in indices + [1]}


@needs_verilator
def test_first_difference_finds_no_instruction_on_a_good_image(model, digits_w8a8, digits_images):
    """The first 12 instructions of an image (up to the first Softmax and MATMULs), each alone
    on the RTL, equal the interpreter: the search a mismatch starts, which names the first
    instruction that does not."""
    assert rtl_executor.first_difference(model, digits_w8a8.quantize_input(digits_images.images[7:8])[0],
                                         upto=12) is None


@needs_verilator
def test_accuracy_command_on_the_accelerator(tmp_path, monkeypatch):
    """``hwgen accuracy --backend rtl``: the report names the backend and counts the images
    whose accelerator logits equal the golden executor's; two workers share the images."""
    import json

    from hwgen.cli import main

    monkeypatch.setattr(rtl_executor, "RUNS", tmp_path / "runs")
    report = tmp_path / "acc.json"
    assert main(["accuracy", "--backend", "rtl", "--model", "digits", "--bits", "w8a8", "--start", "10",
                 "--count", "3", "--workers", "2", "--report", str(report)]) == 0
    res = json.loads(report.read_text())
    assert res["backend"] == "rtl" and res["requested_images"] == 3 and res["bit_exact_images"] == 3
    assert res["failure"] is None and res["cycles_per_image"] > 0
    assert res["workers"] == 2 and res["images_per_start"] == 2
    assert "compiled program on the AXI accelerator" in (tmp_path / "acc.md").read_text()


def test_layer_beyond_the_units_is_refused(digits_w8a8):
    """A graph whose layer needs more than the units offer: one line naming layer, field, need, limit."""
    hw = rtl_executor.hw_for_graph(digits_w8a8.graph).replace(layernorm_max_channels=32)
    with pytest.raises(UserError) as exc:
        compile(digits_w8a8.graph, hw, AccelConfig())
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("blocks.0.norm1"), msg
    assert "64" in msg and "32" in msg, msg


def test_the_accelerator_does_not_depend_on_depth(digits_model, digits_w8a8, digits_images):
    """The digits ViT at depth 8 (same widths) runs on the same accelerator as at depth 4: the
    capabilities it needs are the same; only the program and the weights in memory grow."""
    import timm.models.vision_transformer as vt

    from golden.digits import MODEL_KWARGS

    # depth 8: the trained digits blocks 0-3, then the same four again (realistic scales)
    deep = vt.VisionTransformer(**{**MODEL_KWARGS, "depth": 8}).eval()
    state = digits_model.state_dict()
    state.update({k.replace(f"blocks.{i}.", f"blocks.{i + 4}.", 1): v for k, v in digits_model.state_dict().items()
                  for i in range(4) if k.startswith(f"blocks.{i}.")})
    deep.load_state_dict(state)
    g8 = quantize_model(deep, "digits", digits_images.calib[:16], QuantConfig(w_bits=8, calib_images=16)).graph
    g4 = digits_w8a8.graph
    hw = rtl_executor.hw_for_graph(g4)
    assert rtl_executor.hw_for_graph(g8) == hw
    p4, p8 = compile(g4, hw, AccelConfig()), compile(g8, hw, AccelConfig())
    assert p4.buffer_peak == p8.buffer_peak
    blocks = lambda p: len(p.instrs) - len([i for i in p.instrs if "blocks." not in (i.note or "")])  # noqa: E731
    assert blocks(p8) == 2 * blocks(p4) and len(p8.image) > len(p4.image)


def test_guard_allows_movement_and_refuses_arithmetic():
    x = torch.arange(12).reshape(3, 4)
    with DataMovementGuard() as g:
        y = torch.cat([x.t().reshape(-1), x.flip(0)[1]]).to(torch.int8)
    assert g.ops_seen > 0 and y.dtype == torch.int8
    for fn in (lambda: x + 1, lambda: x * 2, lambda: x >> 1, lambda: x.max(), lambda: x == 3, lambda: x.float()):
        with pytest.raises(HostArithmetic):
            with DataMovementGuard():
                fn()


def test_a_host_that_computes_is_stopped(tmp_path, monkeypatch, digits_w8a8, digits_images):
    """The host writes the images into the memory image under the data-movement guard: one that
    adds (here, to the input before writing it) is stopped before any simulator starts."""
    from types import SimpleNamespace

    from hwgen.accel import interpreter

    real = interpreter.write_input
    monkeypatch.setattr(rtl_executor, "write_input", lambda image, x, index=0: real(image, x + 1, index))
    monkeypatch.setattr(rtl_executor, "RUNS", tmp_path)
    monkeypatch.setattr("sim.runner.run", lambda *a, **k: pytest.fail("a simulator was started"))
    hw = rtl_executor.hw_for_graph(digits_w8a8.graph)
    model = rtl_executor.RtlModel(digits_w8a8.graph, hw, AccelConfig(), compile(digits_w8a8.graph, hw, AccelConfig()),
                                  SimpleNamespace(seconds=0.0), "k")
    with pytest.raises(HostArithmetic, match="add"):
        rtl_executor.run_rtl(model, digits_w8a8.quantize_input(digits_images.images[:2]), [0, 1], progress=False)
