"""Train the digits ViT (``make train-digits``) and write checkpoints/digits_vit.pth.

About half a minute to a few minutes on two CPU cores.  Deterministic for a given seed
up to the nondeterminism of multithreaded CPU kernels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from golden import digits  # noqa: E402


def augment(x: torch.Tensor, gen: torch.Generator, shift: int) -> torch.Tensor:
    """Random shifts of up to ``shift`` pixels (digits are small; this is enough to generalize)."""
    if shift == 0:
        return x
    pad = F.pad(x, (shift,) * 4)
    dx, dy = torch.randint(0, 2 * shift + 1, (2,), generator=gen).tolist()
    return pad[..., dy:dy + digits.IMG_SIZE, dx:dx + digits.IMG_SIZE]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--shift", type=int, default=1, help="largest random shift in pixels (0: none)")
    ap.add_argument("--out", default=str(digits.CHECKPOINT))
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = digits.load_split()
    model = digits.create_model()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * ((len(y_tr) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    from tqdm import tqdm
    for epoch in tqdm(range(args.epochs), desc="train digits ViT"):
        model.train()
        perm = torch.randperm(len(y_tr), generator=gen)
        for i in range(0, len(perm), args.batch):
            b = perm[i:i + args.batch]
            loss = F.cross_entropy(model(augment(x_tr[b], gen, args.shift)), y_tr[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_te).argmax(-1) == y_te).float().mean().item()
    print(f"digits ViT test top-1: {acc * 100:.2f}% on {len(y_te)} images")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.out)), suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
