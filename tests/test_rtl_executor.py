"""The RTL executor: the digits ViT on the generated hardware in simulation, bit for bit.

Each test builds (once, cached in sim_build/) the accelerator for a quantized graph and runs
a few images through it; every op's RTL output is compared with the golden executor inside
the simulation, and the logits here once more.  The 360-image runs are `make demo` and the
README's table, not tests.
"""
import copy

import pytest
import torch

from golden import executor
from golden.guard import DataMovementGuard, HostArithmetic
from golden.quantize import QuantConfig, quantize_model
from sim import rtl_executor
from sim.rtl_host import pack_words, unpack_words
from golden.errors import UserError
from sim.rtl_top import Field, Mem, plan_graph, tensor_shapes, unit_components

pytestmark = pytest.mark.skipif(not rtl_executor.verilator_available(), reason="verilator not installed")


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(rtl_executor, "RUNS", tmp_path / "rtl_runs")


def _golden_logits(q, xq, indices):
    return executor.run_graph(q.graph, xq[indices])


def _run(q, images, indices, **kw):
    model = rtl_executor.prepare(q.graph, progress=False, **{k: v for k, v in kw.items() if k == "unit_graph"})
    xq = q.quantize_input(images)
    res = rtl_executor.run_rtl(model, xq, indices, progress=False, resume=False,
                               **{k: v for k, v in kw.items() if k != "unit_graph"})
    return model, xq, res


@pytest.mark.parametrize("bits", ["w8a8", "w4a8"])
def test_digits_logits_equal_golden(bits, digits_w8a8, digits_w4a8, digits_images):
    q = {"w8a8": digits_w8a8, "w4a8": digits_w4a8}[bits]
    indices = [0, 179, 359]                  # first, middle, last test image
    _, xq, res = _run(q, digits_images.images, indices, workers=2 if bits == "w8a8" else 1)
    assert res["failure"] is None, res["failure"]
    got = torch.tensor([res["records"][i]["logits"] for i in indices])
    want = _golden_logits(q, xq, indices)
    assert torch.equal(got, want), (got, want)
    rec = res["records"][0]
    # every arithmetic op type ran on its unit and took cycles
    assert set(rec["cycles"]) == {"linear", "matmul", "softmax", "gelu", "layernorm", "add"}
    assert all(c > 0 for c in rec["cycles"].values())
    assert rec["sim_cycles"] >= sum(rec["cycles"].values())


def test_host_arithmetic_is_caught(digits_w8a8, digits_images):
    """The host runs under the data-movement guard: a host that adds is stopped, naming the op."""
    probe = f"{__file__.rsplit('/', 1)[0]}/rtl_probes.py:add_in_host"
    _, _, res = _run(digits_w8a8, digits_images.images, [0], probe=probe)
    assert res["failure"] is not None
    assert res["workers"][0]["failed"]
    log = (rtl_executor.Path(res["workers"][0]["run_dir"]) / "sim.log").read_text()
    assert "HostArithmetic" in log and "aten.add" in log


def test_corrupted_constant_is_caught(digits_w8a8, digits_images):
    """The LayerNorm unit's constant memory loaded with one multiplier's sign flipped: the run stops
    at that op, names it with the element, expected and got values, and leaves a waveform of that op."""
    bad = copy.deepcopy(digits_w8a8.graph)
    m = bad.op("blocks.1.norm2").consts["m"]
    m[5] = -m[5]                             # the sign of channel 5's gamma flipped
    _, _, res = _run(digits_w8a8, digits_images.images, [0, 1], unit_graph=bad)
    f = res["failure"]
    assert f is not None and f["op"] == "blocks.1.norm2" and f["image"] == 0, f
    assert f["element"][-1] == 5 and f["expected"] != f["got"], f
    assert res["waveform"] and rtl_executor.Path(res["waveform"]).stat().st_size > 0
    assert not res["records"]                # nothing was reported as a finished image


@pytest.mark.parametrize("bits, gemms", [("w8a8", 2), ("w4a8", 3)])
def test_one_unit_per_op_type(bits, gemms, digits_w8a8, digits_w4a8):
    """One Softmax, one GELU, one LayerNorm and one add unit serve every layer (they were 28 per-layer
    units); a GEMM per operand format; each op's constants sit in its unit's constant memory."""
    q = {"w8a8": digits_w8a8, "w4a8": digits_w4a8}[bits]
    hw = rtl_executor.hw_for_graph(q.graph)
    comps = unit_components(q.graph, hw)
    plan = plan_graph(q.graph, hw, comps)
    kinds = sorted(e.kind for e in plan.engines)
    assert kinds == sorted(["gemm"] * gemms + ["softmax", "gelu", "layernorm", "add"]), kinds
    for op in q.graph.ops:
        if op.type in ("softmax", "gelu", "layernorm", "add"):
            st = plan.static[op.name]
            assert st["c_count"] == (op.attrs["channels"] if op.type == "layernorm" else 1), op.name
    counts = {e.name: len(e.instances) for e in plan.engines if e.kind != "gemm"}
    assert counts == {"softmax": 4, "gelu_iptq": 4, "layernorm": 9, "residual_add": 9}, counts


def test_layer_beyond_the_units_is_refused(digits_w8a8):
    """A graph whose layer needs more than the units offer: one line naming layer, field, need, limit."""
    hw = rtl_executor.hw_for_graph(digits_w8a8.graph).replace(layernorm_max_channels=32)
    with pytest.raises(UserError) as exc:
        unit_components(digits_w8a8.graph, hw)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("blocks.0.norm1"), msg
    assert "64" in msg and "32" in msg, msg


def test_units_do_not_depend_on_depth(digits_model, digits_w8a8, digits_images):
    """The digits ViT at depth 8 (same widths) runs on the same units as at depth 4: the same
    instances with the same Verilog, so the same area; only the constant memories grow."""
    import timm.models.vision_transformer as vt

    from golden.digits import MODEL_KWARGS
    from hwgen.capabilities import derive_hw
    from hwgen.verilog import emit_verilog

    # depth 8: the trained digits blocks 0-3, then the same four again (realistic scales)
    deep = vt.VisionTransformer(**{**MODEL_KWARGS, "depth": 8}).eval()
    state = digits_model.state_dict()
    state.update({k.replace(f"blocks.{i}.", f"blocks.{i + 4}.", 1): v for k, v in digits_model.state_dict().items()
                  for i in range(4) if k.startswith(f"blocks.{i}.")})
    deep.load_state_dict(state)
    g8 = quantize_model(deep, "digits", digits_images.calib[:16], QuantConfig(w_bits=8, calib_images=16)).graph
    g4 = digits_w8a8.graph
    hw = derive_hw([g4, g8])
    u4, u8 = unit_components(g4, hw), unit_components(g8, hw)
    assert sorted(u4) == sorted(u8)
    for name in u4:
        assert emit_verilog(u4[name], name) == emit_verilog(u8[name], name), name
    p4, p8 = plan_graph(g4, hw, u4), plan_graph(g8, hw, u8)
    assert len(p4.engines) == len(p8.engines)
    assert p8.engines[[e.name for e in p8.engines].index("layernorm")].mems["c"].depth == 17 * 64
    assert p4.engines[[e.name for e in p4.engines].index("layernorm")].mems["c"].depth == 9 * 64


@pytest.mark.skipif(not rtl_executor.runner_has("icarus"), reason="iverilog not installed")
def test_icarus_smoke(digits_images):
    """The whole accelerator on Icarus, one image, logits equal golden.  Icarus simulates a few
    hundred cycles a second here, so the model is a small ViT of the digits family (8x8 images:
    5 tokens, one block, random weights): every op type, about a tenth of a digits image's cycles."""
    import timm.models.vision_transformer as vt

    from golden.digits import MODEL_KWARGS

    torch.manual_seed(0)
    small = vt.VisionTransformer(**{**MODEL_KWARGS, "img_size": 8, "depth": 1}).eval()
    images = digits_images.images[:, :, 4:12, 4:12].contiguous()
    q = quantize_model(small, "digits", digits_images.calib[:16, :, 4:12, 4:12].contiguous(),
                       QuantConfig(w_bits=8, calib_images=16))
    model = rtl_executor.prepare(q.graph, "icarus", progress=False)
    xq = q.quantize_input(images)
    res = rtl_executor.run_rtl(model, xq, [7], progress=False, resume=False)
    assert res["failure"] is None, res["failure"]
    assert res["records"][7]["logits"] == _golden_logits(q, xq, [7])[0].tolist()
    assert set(res["records"][7]["cycles"]) == {"linear", "matmul", "softmax", "gelu", "layernorm", "add"}


# --- the host's pieces, without a simulator ------------------------------------------------------

def test_word_packing_round_trip():
    mem = Mem("m", "o", "sink", 0, 16, [Field("data", 0, 12, True, 3, 2), Field("last", 36, 1, False, 1, 1),
                                         Field("u", 37, 8, False, 2, 1)])
    g = torch.Generator().manual_seed(1)
    vals = {"data": torch.randint(-2048, 2048, (5, 3), generator=g), "last": torch.randint(0, 2, (5, 1), generator=g),
            "u": torch.randint(0, 256, (5, 2), generator=g)}
    text = pack_words(mem, vals)
    assert len(text.splitlines()) == 5 and all(len(line) == 2 * mem.nbytes for line in text.splitlines())
    back = unpack_words(mem, "// a comment line, as Icarus writes\n" + text, 5)
    for k, v in vals.items():
        assert torch.equal(back[k].to(torch.int64), v), k


def test_guard_allows_movement_and_refuses_arithmetic():
    x = torch.arange(12).reshape(3, 4)
    with DataMovementGuard() as g:
        y = torch.cat([x.t().reshape(-1), x.flip(0)[1]]).to(torch.int8)
    assert g.ops_seen > 0 and y.dtype == torch.int8
    for fn in (lambda: x + 1, lambda: x * 2, lambda: x >> 1, lambda: x.max(), lambda: x == 3, lambda: x.float()):
        with pytest.raises(HostArithmetic):
            with DataMovementGuard():
                fn()


def test_tensor_shapes_match_golden_run(digits_w8a8, digits_images):
    q = digits_w8a8
    _, env = executor.run_graph(q.graph, q.quantize_input(digits_images.images[:1]), keep=True)
    shapes = tensor_shapes(q.graph)
    for name, t in env.items():
        assert list(t.shape) == shapes[name], name
