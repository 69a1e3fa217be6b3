"""The integer graph artifact: one file, bit-exact round trip, deterministic builds."""
import pytest
import torch

from golden.executor import run_graph
from golden.graph import GraphFileError, IntegerGraph
from golden.quantize import QuantConfig, quantize_model


def _same_graph(a: IntegerGraph, b: IntegerGraph) -> None:
    assert [(o.type, o.name, o.inputs, o.outputs, o.attrs) for o in a.ops] == \
           [(o.type, o.name, o.inputs, o.outputs, o.attrs) for o in b.ops]
    for oa, ob in zip(a.ops, b.ops):
        assert oa.consts.keys() == ob.consts.keys()
        for k in oa.consts:
            assert oa.consts[k].dtype == ob.consts[k].dtype and torch.equal(oa.consts[k], ob.consts[k])
    for k in a.constants:
        assert torch.equal(a.constants[k], b.constants[k])
    assert a.tensors == b.tensors and a.meta == b.meta


def test_save_load_round_trip_bit_exact(tmp_path, digits_w8a8, digits_images):
    path = tmp_path / "graph.pt"
    digits_w8a8.graph.save(path)
    loaded = IntegerGraph.load(path)
    _same_graph(digits_w8a8.graph, loaded)
    x = digits_w8a8.quantize_input(digits_images.images[:16])
    assert torch.equal(run_graph(digits_w8a8.graph, x), run_graph(loaded, x))
    assert not list(tmp_path.glob("*.tmp"))


def test_all_constants_are_integers(digits_w8a8):
    g = digits_w8a8.graph
    tensors = [t for op in g.ops for t in op.consts.values()] + list(g.constants.values())
    assert tensors and all(not t.dtype.is_floating_point for t in tensors)
    for op in g.ops:
        assert all(isinstance(v, (int, str, bool)) for v in op.attrs.values()), op.name


def test_quantization_is_deterministic(digits_model, digits_images, digits_w8a8):
    again = quantize_model(digits_model, "digits", digits_images.calib, QuantConfig(w_bits=8))
    _same_graph(digits_w8a8.graph, again.graph)


def test_per_layer_variant_choice(digits_model, digits_images):
    cfg = QuantConfig(w_bits=8, overrides={"blocks.0.gelu": "lut", "blocks.1.softmax": "linear"})
    q = quantize_model(digits_model, "digits", digits_images.calib, cfg)
    assert q.graph.op("blocks.0.gelu").attrs["variant"] == "lut"
    assert q.graph.op("blocks.1.gelu").attrs["variant"] == "iptq"
    assert q.graph.op("blocks.1.softmax").attrs["variant"] == "linear"
    assert q.graph.op("blocks.0.softmax").attrs["variant"] == "shiftfit"


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", None])
def test_corrupt_or_foreign_graph_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"format": "something else"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(GraphFileError):
        IntegerGraph.load(path)
