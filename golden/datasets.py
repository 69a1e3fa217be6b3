"""Calibration and evaluation images: the digits split, or an image folder.

An image folder is laid out as torchvision's ``ImageFolder`` (one sub-folder per class,
sorted names give class indices, as ImageNet's synset folders do); images go through the
model's own timm preprocessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import digits
from .errors import UserError


@dataclass
class ImageSet:
    calib: torch.Tensor          # float images for calibration
    images: torch.Tensor         # float images to evaluate
    labels: torch.Tensor         # int64 labels
    name: str


def _seeded_pick(n_total: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=gen)[:n]


def digits_set(calib: int, images: int | None, seed: int, start: int = 0) -> ImageSet:
    x_tr, _, x_te, y_te = digits.load_split()
    end = len(y_te) if images is None else min(len(y_te), start + images)
    return ImageSet(x_tr[_seeded_pick(len(x_tr), calib, seed)], x_te[start:end], y_te[start:end], "digits test split")


def folder_set(path: str, model, calib: int, images: int | None, seed: int) -> ImageSet:
    if not os.path.isdir(path):
        raise UserError(f"image folder not found: {path}")
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    transform = create_transform(**resolve_data_config({}, model=model))
    try:
        ds = ImageFolder(path, transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"{path} is not an image folder (one sub-folder of images per class): {exc}") from None
    n = len(ds) if images is None else min(len(ds), images)
    xs, ys = zip(*(ds[i] for i in range(n)))
    cal_idx = _seeded_pick(len(ds), min(calib, len(ds)), seed).tolist()
    cal = torch.stack([ds[i][0] for i in cal_idx])
    return ImageSet(cal, torch.stack(xs), torch.tensor(ys, dtype=torch.int64), f"image folder {path}")


def random_images(spec, n: int, seed: int) -> torch.Tensor:
    """Seeded normal images in the model's input shape (structure and scale checks only)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, spec.in_chans, spec.img_size, spec.img_size, generator=gen)
