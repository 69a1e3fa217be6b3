"""A small image folder of seeded random images, for `hwgen plan` on a model with random
weights (deit_tiny_patch16_224 here: no real data on these machines; fidelity only).

    .venv/bin/python scripts/plan_random_folder.py build/plan_deit_data
    .venv/bin/hwgen plan --model deit_tiny_patch16_224 --bits w8a8 --data build/plan_deit_data --calib 4 --images 8

Two classes of four 256x256 RGB images each: 14x14 uniform random pixels upsampled bicubically
(smooth, so that preprocessing keeps some structure), numpy seed 0.
"""
import os
import sys

import numpy as np
from PIL import Image


def main(root: str) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(4):
            small = rng.integers(0, 256, size=(14, 14, 3), dtype=np.uint8)
            Image.fromarray(small).resize((256, 256), Image.BICUBIC).save(os.path.join(root, c, f"{i}.png"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/plan_deit_data")
