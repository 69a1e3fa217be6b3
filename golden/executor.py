"""The golden executor: runs an :class:`IntegerGraph` with integer tensors only.

Each op type has exactly one integer semantics, here (arithmetic ops delegate to the
approximation library: :mod:`golden.softmax`, :mod:`golden.gelu`, :mod:`golden.layernorm`).
The hardware units and the RTL executor must reproduce these functions bit for bit.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from .gelu import gelu_int
from .graph import IntegerGraph, Op
from .intops import exact_matmul, requant_, rounding_half, signed_range, unsigned_range
from .layernorm import layernorm_int
from .softmax import shift_softmax
from .vit_float import im2col


def operand_max(bits: int, signed: bool = True) -> int:
    """Largest magnitude of a ``bits``-wide operand."""
    return (1 << (bits - 1)) if signed else (1 << bits) - 1


def out_range(attrs: dict) -> tuple[int, int]:
    bits = attrs["out_bits"]
    return signed_range(bits) if attrs.get("out_signed", True) else unsigned_range(bits)


# --- arithmetic ----------------------------------------------------------------------------

def run_linear(op: Op, x: torch.Tensor) -> torch.Tensor:
    a = op.attrs
    acc = exact_matmul(x, op.consts["weight"].t(), operand_max(a["a_bits"], a.get("a_signed", True)),
                       operand_max(a["w_bits"]))
    bias = op.consts["bias"]
    if not a.get("out_bits"):
        return acc.add_(bias)
    # requant(acc + bias, m, e) == requant_(acc, m, e, offset=bias*m): an integer identity
    # that folds the bias into the rounding offset (one pass fewer, in place).
    m, e, offset = _fold_shift(op)   # per call: N-sized work, and consts may change
    return requant_(acc, m, e, *out_range(a), offset=offset)


def _fold_shift(op: Op) -> tuple:
    """(m, e, offset) for :func:`requant_`, with one scalar shift where that is exact."""
    a, m, e, bias = op.attrs, op.consts["m"], op.consts["e"], op.consts["bias"]
    offset = bias * m + rounding_half(e)
    big_e = int(e.max())
    d = big_e - e
    # floor(v / 2^e) == floor(v * 2^d / 2^(e+d)): scaling by 2^d per channel turns the
    # per-channel shift into one scalar shift (torch's broadcast shift is slow), provided
    # the scaled worst case stays inside int64.
    acc_max = operand_max(a["a_bits"], a.get("a_signed", True)) * operand_max(a["w_bits"]) * op.consts["weight"].shape[1]
    base = acc_max * m + offset.abs()                       # < 2^48: no overflow here
    limit = torch.where(d < 62, torch.ones_like(d) << (62 - d).clamp(min=0), torch.zeros_like(d))
    if bool((base < limit).all()):                          # base << d < 2^62 per channel
        return m << d, big_e, (offset << d) - (1 << (big_e - 1) if big_e > 0 else 0)
    return m, e, bias * m


def run_matmul(op: Op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a = op.attrs
    acc = exact_matmul(x, y,
                       operand_max(a["a_bits"], a.get("a_signed", True)),
                       operand_max(a["b_bits"], a.get("b_signed", True)))
    return requant_(acc, a["m"], a["e"], *out_range(a))


def run_softmax(op: Op, s: torch.Tensor) -> torch.Tensor:
    a = op.attrs
    return shift_softmax(s, a["f"], a["variant"], a["out_bits"], a["recip_bits"])


@functools.lru_cache(maxsize=256)
def _gelu_domain_table(attrs_key: tuple) -> torch.Tensor:
    attrs = dict(attrs_key)
    lo, hi = signed_range(attrs["in_bits"])
    return gelu_int(torch.arange(lo, hi + 1, dtype=torch.int64), attrs, {})


def run_gelu(op: Op, x: torch.Tensor) -> torch.Tensor:
    """GELU is elementwise on an in_bits-wide input: evaluate gelu_int once on the whole
    domain and gather (same bits, much faster; the lut variant already is a table)."""
    a = op.attrs
    if a["variant"] == "lut":
        return gelu_int(x, a, op.consts)
    table = _gelu_domain_table(tuple(sorted(a.items())))
    return table[x.to(torch.int64) - signed_range(a["in_bits"])[0]]


def run_layernorm(op: Op, x: torch.Tensor) -> torch.Tensor:
    return layernorm_int(x, op.attrs, op.consts)


def run_add(op: Op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Residual add: requantize each branch to the residual scale, add, clamp."""
    a = op.attrs
    lo, hi = signed_range(a["out_bits"])
    xa = requant_(x.to(torch.int64, copy=True), a["m_a"], a["e_a"], lo, hi)
    return xa.add_(requant_(y.to(torch.int64, copy=True), a["m_b"], a["e_b"], lo, hi)).clamp_(lo, hi)


# --- data movement (the host's job in RTL mode) ------------------------------------------

def run_im2col(op: Op, x: torch.Tensor) -> torch.Tensor:
    return im2col(x, op.attrs["patch"])


def run_concat(op: Op, tok: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([tok.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)


def run_split_heads(op: Op, qkv: torch.Tensor):
    h = op.attrs["heads"]
    b, n, c3 = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, h, c3 // (3 * h)).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k.transpose(-2, -1), v


def run_merge_heads(op: Op, x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def run_select_token(op: Op, x: torch.Tensor) -> torch.Tensor:
    return x[:, op.attrs["index"]]


OP_IMPLS: dict[str, Callable] = {
    "linear": run_linear, "matmul": run_matmul, "softmax": run_softmax, "gelu": run_gelu,
    "layernorm": run_layernorm, "add": run_add, "im2col": run_im2col, "concat": run_concat,
    "split_heads": run_split_heads, "merge_heads": run_merge_heads,
    "select_token": run_select_token,
}


def run_graph(graph: IntegerGraph, x: torch.Tensor, keep: bool = False,
              on_op: Callable[[Op, tuple], None] | None = None):
    """Run the graph on an integer input; return the output (and every tensor if ``keep``)."""
    if x.dtype.is_floating_point:
        raise TypeError("the integer graph takes an integer input; quantize images first")
    env: dict[str, torch.Tensor] = dict(graph.constants)
    env[graph.input] = x.to(torch.int64)
    for op in graph.ops:
        outs = OP_IMPLS[op.type](op, *[env[name] for name in op.inputs])
        if not isinstance(outs, tuple):
            outs = (outs,)
        for name, t in zip(op.outputs, outs):
            env[name] = t
        if on_op is not None:
            on_op(op, outs)
    return (env[graph.output], env) if keep else env[graph.output]
