"""A float forward of a timm ViT written in the integer graph's own structure.

It serves calibration (every quantization point is a named *tap*), the fake-quant
reference (the tap quantizes and dequantizes), and the approximation-error report.  A test
checks that with identity taps it equals timm's own forward.

Tap names, with ``p = blocks.{i}``: ``input``, ``patch_embed``, ``embed``, ``p.norm1``,
``p.q``, ``p.k``, ``p.v``, ``p.scores``, ``p.attn``, ``p.ctx``, ``p.proj``, ``p.res1``,
``p.norm2``, ``p.fc1``, ``p.gelu``, ``p.fc2``, ``p.res2``, ``norm``, ``logits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Tap = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass
class ViTSpec:
    img_size: int
    patch: int
    in_chans: int
    dim: int
    depth: int
    heads: int
    num_classes: int
    eps: float

    @property
    def tokens(self) -> int:
        return (self.img_size // self.patch) ** 2 + 1


def extract(model: nn.Module) -> tuple[ViTSpec, dict[str, torch.Tensor]]:
    """The spec and float parameters of a supported timm ViT (LayerScale folded in)."""
    pe = model.patch_embed.proj
    p = pe.kernel_size[0]
    img = model.patch_embed.img_size
    spec = ViTSpec(img_size=img[0] if isinstance(img, (tuple, list)) else img, patch=p,
                   in_chans=pe.in_channels, dim=model.embed_dim, depth=len(model.blocks),
                   heads=model.blocks[0].attn.num_heads, num_classes=model.head.out_features,
                   eps=model.norm.eps)
    g = lambda t: t.detach().double().clone()  # noqa: E731
    prm = {"patch_embed.weight": g(pe.weight).reshape(pe.out_channels, -1),
           "patch_embed.bias": g(pe.bias) if pe.bias is not None else torch.zeros(pe.out_channels, dtype=torch.float64),
           "cls_token": g(model.cls_token), "pos_embed": g(model.pos_embed),
           "norm.weight": g(model.norm.weight), "norm.bias": g(model.norm.bias),
           "head.weight": g(model.head.weight), "head.bias": g(model.head.bias)}
    for i, blk in enumerate(model.blocks):
        b = f"blocks.{i}"
        for sub in ("norm1", "norm2"):
            prm[f"{b}.{sub}.weight"] = g(getattr(blk, sub).weight)
            prm[f"{b}.{sub}.bias"] = g(getattr(blk, sub).bias)
        for key, lin, ls in (("qkv", blk.attn.qkv, None), ("proj", blk.attn.proj, blk.ls1),
                             ("fc1", blk.mlp.fc1, None), ("fc2", blk.mlp.fc2, blk.ls2)):
            w = g(lin.weight)
            bias = g(lin.bias) if lin.bias is not None else torch.zeros(lin.out_features, dtype=torch.float64)
            if ls is not None and hasattr(ls, "gamma"):
                gamma = g(ls.gamma)
                w, bias = w * gamma[:, None], bias * gamma
            prm[f"{b}.{key}.weight"], prm[f"{b}.{key}.bias"] = w, bias
    return spec, prm


def im2col(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, patches, C*p*p], patches row-major, matching the conv weight's
    [out, C, p, p] flattening (any dtype: the integer executor uses it too)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def _identity(name: str, t: torch.Tensor) -> torch.Tensor:
    return t


def forward(spec: ViTSpec, prm: dict[str, torch.Tensor], x: torch.Tensor, tap: Tap = _identity) -> torch.Tensor:
    """Logits of the float model (float64), calling ``tap`` at every quantization point."""
    x = tap("input", x.double())
    t = im2col(x, spec.patch) @ prm["patch_embed.weight"].t() + prm["patch_embed.bias"]
    t = tap("patch_embed", t)
    t = torch.cat([prm["cls_token"].expand(t.shape[0], -1, -1), t], dim=1) + prm["pos_embed"]
    x = tap("embed", t)
    b, n, d = x.shape
    h, hd = spec.heads, d // spec.heads
    for i in range(spec.depth):
        p = f"blocks.{i}"
        y = tap(f"{p}.norm1", F.layer_norm(x, (d,), prm[f"{p}.norm1.weight"], prm[f"{p}.norm1.bias"], spec.eps))
        qkv = (y @ prm[f"{p}.qkv.weight"].t() + prm[f"{p}.qkv.bias"]).reshape(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)
        q, k, v = tap(f"{p}.q", qkv[0]), tap(f"{p}.k", qkv[1]), tap(f"{p}.v", qkv[2])
        s = tap(f"{p}.scores", (q @ k.transpose(-2, -1)) * hd ** -0.5)
        a = tap(f"{p}.attn", s.softmax(dim=-1))
        o = tap(f"{p}.ctx", a @ v).transpose(1, 2).reshape(b, n, d)
        o = tap(f"{p}.proj", o @ prm[f"{p}.proj.weight"].t() + prm[f"{p}.proj.bias"])
        x = tap(f"{p}.res1", x + o)
        y = tap(f"{p}.norm2", F.layer_norm(x, (d,), prm[f"{p}.norm2.weight"], prm[f"{p}.norm2.bias"], spec.eps))
        y = tap(f"{p}.fc1", y @ prm[f"{p}.fc1.weight"].t() + prm[f"{p}.fc1.bias"])
        y = tap(f"{p}.gelu", F.gelu(y))
        y = tap(f"{p}.fc2", y @ prm[f"{p}.fc2.weight"].t() + prm[f"{p}.fc2.bias"])
        x = tap(f"{p}.res2", x + y)
    c = tap("norm", F.layer_norm(x[:, 0], (d,), prm["norm.weight"], prm["norm.bias"], spec.eps))
    return tap("logits", c @ prm["head.weight"].t() + prm["head.bias"])
