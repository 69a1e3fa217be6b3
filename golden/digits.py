"""The digits ViT: a small timm VisionTransformer on scikit-learn's bundled digits.

The 8x8 images (pixel values 0..16) are upsampled to 16x16 by pixel repetition and scaled
to [0, 1]; the split is fixed and stratified: 1437 training and 360 test images.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMG_SIZE = 16
NUM_CLASSES = 10
TEST_IMAGES = 360
SPLIT_SEED = 0
CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "digits_vit.pth"

# timm VisionTransformer arguments of the digits model (DESIGN.md, "Models and data").
MODEL_KWARGS = dict(img_size=IMG_SIZE, patch_size=4, in_chans=1, num_classes=NUM_CLASSES,
                    embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0)


def create_model():
    import timm.models.vision_transformer as vt
    return vt.VisionTransformer(**MODEL_KWARGS)


def load_split():
    """Return ``(x_train, y_train, x_test, y_test)``; images float32 [N, 1, 16, 16] in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    x = x.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        range(len(y)), test_size=TEST_IMAGES, stratify=digits.target, random_state=SPLIT_SEED)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]
