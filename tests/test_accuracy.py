"""Accuracy targets of the digits ViT (issue 2): FP32 >= 97%, W8A8 integer within 0.6
points of FP32, W4A8 within 2 points, on all 360 test images."""
import pytest

from golden.evaluate import evaluate_golden
from golden.quantize import QuantConfig, quantize_model


@pytest.mark.parametrize("w_bits,tolerance", [(8, 0.006), (4, 0.02)])
def test_digits_integer_accuracy(digits_model, digits_images, w_bits, tolerance):
    q = quantize_model(digits_model, "digits", digits_images.calib, QuantConfig(w_bits=w_bits))
    res = evaluate_golden(digits_model, q, digits_images.images, digits_images.labels, progress=False)
    assert res["images"] == 360
    assert res["top1"]["fp32"] >= 0.97
    assert res["top1"]["integer"] >= res["top1"]["fp32"] - tolerance
    assert res["logits_cosine"] > 0.99


def test_float_mirror_equals_timm(digits_model, digits_images):
    """The structured float forward used for calibration is timm's forward."""
    import torch

    from golden import vit_float
    spec, prm = vit_float.extract(digits_model)
    with torch.no_grad():
        ref = digits_model(digits_images.images[:32]).double()
    assert torch.allclose(vit_float.forward(spec, prm, digits_images.images[:32]), ref, atol=1e-4)
