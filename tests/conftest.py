import pytest
import torch

from golden import datasets, models
from golden.quantize import QuantConfig, quantize_model


@pytest.fixture(scope="session")
def digits_model():
    return models.load_model("digits")


@pytest.fixture(scope="session")
def digits_images():
    return datasets.digits_set(calib=64, images=None, seed=0)


@pytest.fixture(scope="session")
def digits_w8a8(digits_model, digits_images):
    return quantize_model(digits_model, "digits", digits_images.calib, QuantConfig(w_bits=8))


@pytest.fixture(scope="session")
def digits_w4a8(digits_model, digits_images):
    return quantize_model(digits_model, "digits", digits_images.calib, QuantConfig(w_bits=4))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
