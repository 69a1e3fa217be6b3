"""Calibration and evaluation images: the digits split, or an image folder.

An image folder is laid out as torchvision's ``ImageFolder`` (one sub-folder per class,
sorted names give class indices, as ImageNet's synset folders do); images go through the
model's own timm preprocessing.
"""

from __future__ import annotations

import os
import warnings
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
    if calib > len(x_tr):
        raise UserError(f"--calib {calib}: the digits training split holds {len(x_tr)} images; give {len(x_tr)} or fewer")
    end = len(y_te) if images is None else min(len(y_te), start + images)
    return ImageSet(x_tr[_seeded_pick(len(x_tr), calib, seed)], x_te[start:end], y_te[start:end], "digits test split")


def _transform(model, name: str | None):
    """The model's own preprocessing: timm's for timm models; for the digits ViT the digits
    preprocessing (one grey channel in [0, 1], 16x16)."""
    if name == "digits":
        from torchvision import transforms as T
        return T.Compose([T.Grayscale(1), T.Resize((digits.IMG_SIZE, digits.IMG_SIZE)), T.ToTensor()])
    from timm.data import create_transform, resolve_data_config
    return create_transform(**resolve_data_config({}, model=model))


def _expected_shape(model) -> tuple[int, int, int] | None:
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    chans = getattr(getattr(pe, "proj", None), "in_channels", None)
    if size is None or chans is None:
        return None
    return (chans, *tuple(size))


def folder_set(path: str, model, calib: int, images: int | None, seed: int, name: str | None = None) -> ImageSet:
    """Images of an ImageFolder tree through the model's preprocessing; an image that cannot
    be read (not an image, truncated, ...) is refused in one line that names it."""
    if not os.path.isdir(path):
        raise UserError(f"image folder not found: {path}" if not os.path.exists(path)
                        else f"--data {path} is a file; give a folder (one sub-folder of images per class)")
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder

    transform = _transform(model, name)
    try:
        ds = ImageFolder(path, transform=transform)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        msg = " ".join(str(exc).split())
        raise UserError(f"{path} is not an image folder (one sub-folder of images per class): {msg[:300]}") from None
    want = _expected_shape(model)

    def load(i: int):
        file = ds.samples[i][0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")                    # PIL's notes on odd but readable files
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                x, y = ds[i]
        except Exception as exc:  # PIL raises many types for a damaged or foreign file
            why = "not an image file PIL can identify" if isinstance(exc, UnidentifiedImageError) else \
                (str(exc).splitlines() or [""])[0][:200]
            raise UserError(f"image {file} cannot be read ({type(exc).__name__}: {why})") from None
        if want is not None and tuple(x.shape) != want:
            raise UserError(f"image {file} gives shape {list(x.shape)} after the model's preprocessing; "
                            f"the model takes {list(want)}")
        return x, y

    if calib > len(ds):
        raise UserError(f"--calib {calib}: image folder {path} holds {len(ds)} images; give {len(ds)} or fewer")
    n = len(ds) if images is None else min(len(ds), images)
    xs, ys = zip(*(load(i) for i in range(n)))
    cal_idx = _seeded_pick(len(ds), calib, seed).tolist()
    cal = torch.stack([load(i)[0] for i in cal_idx])
    return ImageSet(cal, torch.stack(xs), torch.tensor(ys, dtype=torch.int64), f"image folder {path}")


def random_images(spec, n: int, seed: int) -> torch.Tensor:
    """Seeded normal images in the model's input shape (structure and scale checks only)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, spec.in_chans, spec.img_size, spec.img_size, generator=gen)
