"""Post-training quantization: calibration, scales, and the integer graph builder.

* Weights: symmetric, per output channel, ``w_bits`` wide; the clipping ratio of each
  channel is searched on a grid to minimize the squared error (matters at 4 bits).
* Activations: per tensor, 8 bits; the clipping range minimizes the squared quantization
  error over the calibration samples (better than min-max, which one outlier ruins).
* The residual stream is 16 bits (absmax with 2x headroom); attention scores are requantized
  to 16 bits at a power-of-two scale 2^-f for the shift Softmax; post-Softmax activations
  are unsigned 8 bits at scale 2^-8; logits are 16 bits at one common scale.
Deterministic for a given seed: calibration samples are drawn by a seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import vit_float
from .dyadic import RangeError, to_dyadic
from .errors import UserError
from .gelu import GELU_VARIANTS, build_gelu
from .graph import IntegerGraph, Op
from .intops import signed_range, unsigned_range
from .layernorm import build_layernorm
from .softmax import EXP_VARIANTS, RECIP_BITS

ACT_BITS = 8
RESIDUAL_BITS = 16
SCORE_BITS = 16
LOGIT_BITS = 16
ACC_BITS = 32
SAMPLES_PER_TAP = 1 << 18
RESIDUAL_TAPS = ("patch_embed", "embed", "res1", "res2")


@dataclass
class QuantConfig:
    """Every knob of post-training quantization, checked on construction."""
    w_bits: int = 8
    a_bits: int = ACT_BITS
    gelu: str = "iptq"
    softmax: str = "shiftfit"
    overrides: dict[str, str] = field(default_factory=dict)   # op name -> variant
    calib_images: int = 64
    seed: int = 0
    acc_bits: int = ACC_BITS

    def __post_init__(self):
        if not 2 <= self.w_bits <= 8:
            raise UserError(f"weight bits {self.w_bits} out of range; accepted: 2..8")
        if self.a_bits != 8:
            raise UserError(f"activation bits {self.a_bits} not supported; accepted: 8")
        if self.gelu not in GELU_VARIANTS:
            raise UserError(f"unknown GELU variant {self.gelu!r}; accepted: {', '.join(GELU_VARIANTS)}")
        if self.softmax not in EXP_VARIANTS:
            raise UserError(f"unknown Softmax variant {self.softmax!r}; accepted: {', '.join(EXP_VARIANTS)}")
        if not 16 <= self.acc_bits <= 48:
            raise UserError(f"accumulator bits {self.acc_bits} out of range; accepted: 16..48")

    @property
    def bits_name(self) -> str:
        return f"w{self.w_bits}a{self.a_bits}"


def parse_bits(text: str) -> tuple[int, int]:
    """'w8a8' -> (8, 8); one clear error for anything else."""
    import re
    m = re.fullmatch(r"w(\d+)a(\d+)", text.strip().lower())
    if not m:
        raise UserError(f"bits {text!r} not understood; accepted: wNa8 with N in 2..8, e.g. w8a8 or w4a8")
    w, a = int(m.group(1)), int(m.group(2))
    if not 2 <= w <= 8 or a != 8:
        raise UserError(f"bits {text!r} out of range; accepted: wNa8 with N in 2..8, e.g. w8a8 or w4a8")
    return w, a


# --- weights -------------------------------------------------------------------------------

def quantize_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric quantization with an MSE clipping search; returns (int, scale).

    The search runs in float32 (it only ranks candidates); the result is float64-exact.
    """
    w64 = w.double()
    w = w64.float()
    qmax = (1 << (bits - 1)) - 1
    absmax = w.abs().amax(dim=1).clamp(min=1e-12)
    best_err = torch.full_like(absmax, float("inf"))
    best_ratio = torch.ones_like(absmax)
    for ratio in torch.linspace(1.0, 0.35, 27).tolist():
        scale = (absmax * ratio / qmax)[:, None]
        err = ((torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale - w) ** 2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    scale = w64.abs().amax(dim=1).clamp(min=1e-12) * best_ratio.double() / qmax
    q = torch.clamp(torch.round(w64 / scale[:, None]), -qmax - 1, qmax).to(torch.int64)
    return q, scale


# --- activations -------------------------------------------------------------------------

class Observer:
    """Per-tap exact absmax and a bounded random sample of values (seeded)."""

    def __init__(self, seed: int):
        self.absmax: dict[str, float] = {}
        self.samples: dict[str, list[torch.Tensor]] = {}
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, name: str, t: torch.Tensor) -> torch.Tensor:
        flat = t.detach().reshape(-1)
        self.absmax[name] = max(self.absmax.get(name, 0.0), float(flat.abs().max()))
        if flat.numel() > SAMPLES_PER_TAP // 8:
            flat = flat[torch.randint(0, flat.numel(), (SAMPLES_PER_TAP // 8,), generator=self.gen)]
        self.samples.setdefault(name, []).append(flat.clone())
        return t


def mse_scale(samples: torch.Tensor, absmax: float, bits: int) -> float:
    """Symmetric scale whose clipping range minimizes the squared quantization error."""
    qmax = (1 << (bits - 1)) - 1
    absmax = max(absmax, 1e-8)
    best = (float("inf"), absmax / qmax)
    for ratio in torch.linspace(1.0, 0.2, 81, dtype=torch.float64):
        scale = absmax * float(ratio) / qmax
        err = float(((torch.clamp(torch.round(samples / scale), -qmax - 1, qmax) * scale - samples) ** 2).sum())
        if err < best[0]:
            best = (err, scale)
    return best[1]


@dataclass
class TensorQuant:
    bits: int
    signed: bool
    scale: float
    # how often calibration saw each level (index = level - lo), for 8-bit activation taps:
    # the per-layer ``iptq`` GELU fit reads its input's counts (compile time only)
    counts: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def _levels(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = signed_range(self.bits) if self.signed else unsigned_range(self.bits)
        return torch.clamp(torch.round(t / self.scale), lo, hi)

    def fake(self, t: torch.Tensor) -> torch.Tensor:
        return self._levels(t) * self.scale

    def quantize(self, t: torch.Tensor) -> torch.Tensor:
        return self._levels(t).to(torch.int64)


def assign_scales(obs: Observer, spec: vit_float.ViTSpec) -> dict[str, TensorQuant]:
    """The quantizer of every tap, from the calibration statistics."""
    q: dict[str, TensorQuant] = {}
    res_max = max(obs.absmax["patch_embed"], obs.absmax["embed"])
    q["embed"] = q["patch_embed"] = TensorQuant(RESIDUAL_BITS, True, 2 * res_max / ((1 << 15) - 1))
    for name in obs.absmax:
        kind = name.rsplit(".", 1)[-1]
        if name in q:
            continue
        if kind in ("res1", "res2"):
            q[name] = TensorQuant(RESIDUAL_BITS, True, 2 * obs.absmax[name] / ((1 << 15) - 1))
        elif kind == "scores":
            f = (SCORE_BITS - 1) - math.ceil(math.log2(1.25 * max(obs.absmax[name], 1e-6)))
            q[name] = TensorQuant(SCORE_BITS, True, 2.0 ** -max(1, min(20, f)))
        elif kind == "attn":
            q[name] = TensorQuant(ACT_BITS, False, 2.0 ** -ACT_BITS)
        elif kind == "logits":
            q[name] = TensorQuant(LOGIT_BITS, True, 4 * obs.absmax[name] / ((1 << 15) - 1))
        else:
            samples = torch.cat(obs.samples[name])
            tq = TensorQuant(ACT_BITS, True, mse_scale(samples, obs.absmax[name], ACT_BITS))
            tq.counts = torch.bincount(tq.quantize(samples) + (1 << (ACT_BITS - 1)), minlength=1 << ACT_BITS)
            q[name] = tq
    return q


def calibrate(spec, prm, images: torch.Tensor, seed: int, batch: int = 32) -> dict[str, TensorQuant]:
    obs = Observer(seed)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            vit_float.forward(spec, prm, images[i:i + batch], obs)
    return assign_scales(obs, spec)


# --- the integer graph ---------------------------------------------------------------------

def _check_acc(name: str, a_max: int, b_max: int, k: int, bias_max: int, acc_bits: int) -> None:
    bound = a_max * b_max * k + bias_max
    if bound >= 1 << (acc_bits - 1):
        raise RangeError(f"{name}: accumulator of {acc_bits} bits too narrow: "
                         f"{a_max}*{b_max}*K({k}) + max|bias|({bias_max}) = {bound} >= 2^{acc_bits - 1}")


def _dyadic1(real: float, what: str) -> tuple[int, int]:
    m, e = to_dyadic(real, what=what)
    return int(m[0]), int(e[0])


class GraphBuilder:
    """Turns float parameters and tap quantizers into integer ops, one method per op kind."""

    def __init__(self, spec, prm, tq: dict[str, TensorQuant], cfg: QuantConfig, weight_cache: dict | None = None):
        self.weight_cache = weight_cache    # (layer, w_bits) -> quantize_weight's result, shared by rebuilds
        self.spec, self.prm, self.tq, self.cfg = spec, prm, tq, cfg
        self.ops: list[Op] = []
        self.tensors: dict[str, dict] = {}
        self.weight_scales: dict[str, torch.Tensor] = {}

    def tensor(self, name: str, bits: int, signed: bool, scale) -> str:
        self.tensors[name] = {"bits": bits, "signed": signed,
                              "scale": scale if isinstance(scale, float) else [float(s) for s in scale]}
        return name

    def linear(self, name: str, x: str, out: str, out_q: list[TensorQuant] | TensorQuant | None,
               a_bits: int = ACT_BITS) -> str:
        key = (name, self.cfg.w_bits)
        if self.weight_cache is not None and key in self.weight_cache:
            w_int, s_w = self.weight_cache[key]
        else:
            w_int, s_w = quantize_weight(self.prm[f"{name}.weight"], self.cfg.w_bits)
            if self.weight_cache is not None:
                self.weight_cache[key] = (w_int, s_w)
        self.weight_scales[name] = s_w
        s_x = self.tensors[x]["scale"]
        s_acc = s_w * s_x
        bias = torch.round(self.prm[f"{name}.bias"] / s_acc).to(torch.int64)
        n, k = w_int.shape
        _check_acc(name, 1 << (a_bits - 1), 1 << (self.cfg.w_bits - 1), k, int(bias.abs().max()), self.cfg.acc_bits)
        attrs = {"a_bits": a_bits, "a_signed": True, "w_bits": self.cfg.w_bits, "acc_bits": self.cfg.acc_bits,
                 "out_bits": 0, "in_features": k, "out_features": n}
        consts = {"weight": w_int.to(torch.int8), "bias": bias}
        if out_q is None:
            self.tensor(out, self.cfg.acc_bits, True, s_acc.tolist())
        else:
            outs = out_q if isinstance(out_q, list) else [out_q]
            s_out = torch.cat([torch.full((n // len(outs),), o.scale, dtype=torch.float64) for o in outs])
            m, e = to_dyadic((s_acc / s_out).numpy(), what=name)
            consts.update(m=m, e=e)
            attrs.update(out_bits=outs[0].bits, out_signed=True)
            self.tensor(out, outs[0].bits, True, s_out.tolist() if len(outs) > 1 else outs[0].scale)
        self.ops.append(Op("linear", name, [x], [out], attrs, consts, {"weight_scale": s_w.tolist()}))
        return out

    def matmul(self, name: str, a: str, b: str, out: str, out_q: TensorQuant, extra: float = 1.0) -> str:
        ta, tb = self.tensors[a], self.tensors[b]
        k = self.spec.dim // self.spec.heads if name.endswith("scores") else self.spec.tokens
        amax = (1 << (ta["bits"] - 1)) if ta["signed"] else (1 << ta["bits"]) - 1
        _check_acc(name, amax, 1 << (tb["bits"] - 1), k, 0, self.cfg.acc_bits)
        m, e = _dyadic1(ta["scale"] * tb["scale"] * extra / out_q.scale, name)
        attrs = {"a_bits": ta["bits"], "a_signed": ta["signed"], "b_bits": tb["bits"], "b_signed": tb["signed"],
                 "acc_bits": self.cfg.acc_bits, "out_bits": out_q.bits, "out_signed": True, "m": m, "e": e}
        self.ops.append(Op("matmul", name, [a, b], [out], attrs))
        return self.tensor(out, out_q.bits, True, out_q.scale)

    def layernorm(self, name: str, x: str, out: str) -> str:
        q = self.tq[out]
        built = build_layernorm(self.prm[f"{name}.weight"], self.prm[f"{name}.bias"], q.scale, q.bits, name=name)
        self.ops.append(Op("layernorm", name, [x], [out], built["attrs"], built["consts"],
                           {**built["meta"], "s_in": self.tensors[x]["scale"]}))
        return self.tensor(out, q.bits, True, q.scale)

    def add(self, name: str, a: str, b: str, out: str) -> str:
        q = self.tq[out]
        m_a, e_a = _dyadic1(self.tensors[a]["scale"] / q.scale, f"{name} (branch a)")
        m_b, e_b = _dyadic1(self.tensors[b]["scale"] / q.scale, f"{name} (branch b)")
        self.ops.append(Op("add", name, [a, b], [out],
                           {"out_bits": q.bits, "m_a": m_a, "e_a": e_a, "m_b": m_b, "e_b": e_b}))
        return self.tensor(out, q.bits, True, q.scale)

    def variant(self, name: str, default: str) -> str:
        return self.cfg.overrides.get(name, default)

    def build(self, model_name: str) -> IntegerGraph:
        spec, prm, tq, cfg = self.spec, self.prm, self.tq, self.cfg
        constants: dict[str, torch.Tensor] = {}
        self.tensor("input", tq["input"].bits, True, tq["input"].scale)
        self.ops.append(Op("im2col", "im2col", ["input"], ["patches"], {"patch": spec.patch}))
        self.tensor("patches", tq["input"].bits, True, tq["input"].scale)
        x = self.linear("patch_embed", "patches", "patch_embed", tq["patch_embed"])
        emb = tq["embed"]
        constants["cls_token"] = emb.quantize(prm["cls_token"])
        constants["pos_embed"] = emb.quantize(prm["pos_embed"])
        self.tensor("cls_token", emb.bits, True, emb.scale)
        self.tensor("pos_embed", emb.bits, True, emb.scale)
        self.ops.append(Op("concat", "concat_cls", ["cls_token", x], ["tokens"]))
        self.tensor("tokens", emb.bits, True, emb.scale)
        x = self.add("pos_embed_add", "tokens", "pos_embed", "embed")
        hd = spec.dim // spec.heads
        for i in range(spec.depth):
            p = f"blocks.{i}"
            y = self.layernorm(f"{p}.norm1", x, f"{p}.norm1")
            qkv = self.linear(f"{p}.qkv", y, f"{p}.qkv", [tq[f"{p}.q"], tq[f"{p}.k"], tq[f"{p}.v"]])
            self.ops.append(Op("split_heads", f"{p}.split_heads", [qkv], [f"{p}.q", f"{p}.kt", f"{p}.v"],
                               {"heads": spec.heads}))
            for t in ("q", "v"):
                self.tensor(f"{p}.{t}", ACT_BITS, True, tq[f"{p}.{t}"].scale)
            self.tensor(f"{p}.kt", ACT_BITS, True, tq[f"{p}.k"].scale)
            s = self.matmul(f"{p}.scores", f"{p}.q", f"{p}.kt", f"{p}.scores", tq[f"{p}.scores"], hd ** -0.5)
            f = -int(round(math.log2(tq[f"{p}.scores"].scale)))
            self.ops.append(Op("softmax", f"{p}.softmax", [s], [f"{p}.attn"],
                               {"f": f, "variant": self.variant(f"{p}.softmax", cfg.softmax),
                                "out_bits": ACT_BITS, "recip_bits": RECIP_BITS, "row_len": spec.tokens}))
            self.tensor(f"{p}.attn", ACT_BITS, False, 2.0 ** -ACT_BITS)
            self.matmul(f"{p}.ctx", f"{p}.attn", f"{p}.v", f"{p}.ctx_heads", tq[f"{p}.ctx"])
            self.ops.append(Op("merge_heads", f"{p}.merge_heads", [f"{p}.ctx_heads"], [f"{p}.ctx"]))
            self.tensor(f"{p}.ctx", ACT_BITS, True, tq[f"{p}.ctx"].scale)
            o = self.linear(f"{p}.proj", f"{p}.ctx", f"{p}.proj", tq[f"{p}.proj"])
            x = self.add(f"{p}.res1", x, o, f"{p}.res1")
            y = self.layernorm(f"{p}.norm2", x, f"{p}.norm2")
            y = self.linear(f"{p}.fc1", y, f"{p}.fc1", tq[f"{p}.fc1"])
            gq, iq = tq[f"{p}.gelu"], tq[f"{p}.fc1"]
            variant = self.variant(f"{p}.gelu", cfg.gelu)
            built = build_gelu(variant, iq.scale, gq.scale, iq.bits, gq.bits, calib_counts=iq.counts)
            self.ops.append(Op("gelu", f"{p}.gelu", [y], [f"{p}.gelu"], built["attrs"], built["consts"], built["meta"]))
            self.tensor(f"{p}.gelu", gq.bits, True, gq.scale)
            y = self.linear(f"{p}.fc2", f"{p}.gelu", f"{p}.fc2", tq[f"{p}.fc2"])
            x = self.add(f"{p}.res2", x, y, f"{p}.res2")
        self.ops.append(Op("select_token", "select_cls", [x], ["cls"], {"index": 0}))
        self.tensor("cls", self.tensors[x]["bits"], True, self.tensors[x]["scale"])
        self.layernorm("norm", "cls", "norm")
        self.linear("head", "norm", "logits", tq["logits"])
        meta = {"model": model_name, "bits": cfg.bits_name, "w_bits": cfg.w_bits, "a_bits": cfg.a_bits,
                "gelu": cfg.gelu, "softmax": cfg.softmax, "overrides": dict(cfg.overrides),
                "calib_images": cfg.calib_images, "seed": cfg.seed,
                "spec": {k: getattr(spec, k) for k in ("img_size", "patch", "in_chans", "dim", "depth",
                                                       "heads", "num_classes")}}
        return IntegerGraph(self.ops, "input", "logits", constants, self.tensors, meta)


@dataclass
class Quantized:
    """Everything a quantization produced: the graph and the float reference for fake-quant."""
    graph: IntegerGraph
    spec: vit_float.ViTSpec
    prm: dict[str, torch.Tensor]
    tq: dict[str, TensorQuant]
    fq_prm: dict[str, torch.Tensor]

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """The sensor boundary: float images to the graph's integer input (outside the graph)."""
        return self.tq["input"].quantize(images.double())

    def fake_quant_logits(self, images: torch.Tensor) -> torch.Tensor:
        tap = lambda name, t: self.tq[name].fake(t)  # noqa: E731
        with torch.no_grad():
            return vit_float.forward(self.spec, self.fq_prm, images, tap)

    def float_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vit_float.forward(self.spec, self.prm, images)


def quantize_model(model, model_name: str, calib: torch.Tensor, cfg: QuantConfig, reuse: dict | None = None) -> Quantized:
    """Calibrate and build the integer graph.  ``reuse``: a dict kept by a caller that
    quantizes the same model on the same calibration images and seed several times with
    other variants (``hwgen plan``): the calibration and the weight quantization, which the
    variants do not change, are done once and kept in it (the results are the same)."""
    spec, prm = vit_float.extract(model)
    for name in cfg.overrides:
        kind = name.rsplit(".", 1)[-1]
        if kind not in ("gelu", "softmax"):
            raise UserError(f"variant override {name!r}: only '<block>.gelu' and '<block>.softmax' layers take variants")
    if reuse is not None and "tq" in reuse:
        tq = reuse["tq"]
    else:
        tq = calibrate(spec, prm, calib, cfg.seed)
        if reuse is not None:
            reuse["tq"] = tq
    builder = GraphBuilder(spec, prm, tq, cfg, None if reuse is None else reuse.setdefault("weights", {}))
    graph = builder.build(model_name)
    fq_prm = dict(prm)
    for op in graph.ops_of("linear"):
        s_w = builder.weight_scales[op.name]
        fq_prm[f"{op.name}.weight"] = op.consts["weight"].double() * s_w[:, None]
    return Quantized(graph, spec, prm, tq, fq_prm)
