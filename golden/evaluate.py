"""Accuracy of FP32, fake-quant and integer-only inference on the same images."""

from __future__ import annotations

import torch

from .executor import run_graph
from .quantize import Quantized


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean()) if len(labels) else 0.0


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())


def integer_logits(q: Quantized, images: torch.Tensor, batch: int = 64, progress: bool = True) -> torch.Tensor:
    """Integer logits of the golden executor, batch by batch, with a progress bar."""
    from tqdm import tqdm

    outs = []
    for i in tqdm(range(0, len(images), batch), desc="integer inference", unit="batch",
                  disable=not progress, leave=False):
        outs.append(run_graph(q.graph, q.quantize_input(images[i:i + batch])))
    return torch.cat(outs)


def float_logits(model, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The FP32 model's logits, ``batch`` images at a time (an empty tensor for no image)."""
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)]) if len(images) \
            else torch.zeros(0)


def evaluate_golden(model, q: Quantized, images: torch.Tensor, labels: torch.Tensor,
                    batch: int = 64, progress: bool = True) -> dict:
    fp = float_logits(model, images, batch)
    fq = torch.cat([q.fake_quant_logits(images[i:i + batch]) for i in range(0, len(images), batch)])
    il = integer_logits(q, images, batch, progress)
    s_logits = q.graph.tensors[q.graph.output]["scale"]
    return {
        "model": q.graph.meta["model"], "bits": q.graph.meta["bits"], "images": len(labels),
        "top1": {"fp32": top1(fp, labels), "fake_quant": top1(fq, labels), "integer": top1(il, labels)},
        "agreement_with_fp32": float((il.argmax(-1) == fp.argmax(-1)).double().mean()),
        "logits_cosine": mean_cosine(fp, il.double() * s_logits),
        "gelu": q.graph.meta["gelu"], "softmax": q.graph.meta["softmax"],
        "calib_images": q.graph.meta["calib_images"], "seed": q.graph.meta["seed"],
    }
