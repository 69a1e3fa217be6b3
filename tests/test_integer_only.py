"""No floating-point tensor touches integer inference (the guard intercepts every op)."""
import pytest
import torch

from golden import datasets, executor, models, vit_float
from golden.executor import run_graph
from golden.guard import FloatInIntegerInference, IntegerOnlyGuard
from golden.quantize import QuantConfig, quantize_model


def test_digits_graph_is_integer_only(digits_w8a8, digits_images):
    x = digits_w8a8.quantize_input(digits_images.images[:8])
    with IntegerOnlyGuard() as guard:
        out = run_graph(digits_w8a8.graph, x)
    assert out.dtype == torch.int64
    assert guard.ops_seen > 1000 and guard.exact_matmul_ops > 0


def test_guard_catches_a_float_op(digits_w8a8, digits_images, monkeypatch):
    """A deliberately float GELU must be caught: the guard can fail."""
    def float_gelu(op, x):
        return (torch.nn.functional.gelu(x.double() * 0.05) / 0.05).round().to(torch.int64)
    monkeypatch.setitem(executor.OP_IMPLS, "gelu", float_gelu)
    x = digits_w8a8.quantize_input(digits_images.images[:2])
    with pytest.raises(FloatInIntegerInference, match="float"):
        with IntegerOnlyGuard():
            run_graph(digits_w8a8.graph, x)


def test_executor_refuses_float_input(digits_w8a8, digits_images):
    with pytest.raises(TypeError, match="integer input"):
        run_graph(digits_w8a8.graph, digits_images.images[:1])


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_base_patch16_224"])
def test_timm_models_import_quantize_and_run_integer_only(name):
    model = models.load_model(name)
    spec, _ = vit_float.extract(model)
    images = datasets.random_images(spec, 2, seed=0)
    q = quantize_model(model, name, images, QuantConfig(w_bits=8, calib_images=2))
    x = q.quantize_input(images)
    with IntegerOnlyGuard() as guard:
        logits = run_graph(q.graph, x)
    assert logits.shape == (2, 1000) and guard.exact_matmul_ops > 0
    with torch.no_grad():
        fp = model(images).double()
    cos = torch.nn.functional.cosine_similarity(fp, logits.double() * q.graph.tensors["logits"]["scale"])
    assert float(cos.min()) > 0.95      # random weights: structure and scale, not accuracy
