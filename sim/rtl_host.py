"""The RTL executor's host: data movement only, between the integer graph and the memories of
the simulated accelerator (:mod:`sim.rtl_top`).

For each arithmetic op the host cuts its operands into the beat order of the op's unit
(tiling, padding, transposing, flattening rows), packs the beats into memory words, and,
when the unit is done, unpacks the sink's words back into a tensor.  Packing is a dtype cast
of each lane into its byte slot (a value that fits its field keeps its bits), byte
concatenation and a reversal (the hex file holds each word most significant byte first);
unpacking is the reverse.  Every torch operation here is data movement: the executor runs the
host under :class:`golden.guard.DataMovementGuard`, which fails on anything else.

Jobs (:class:`Job`) are plain data: the words for each source memory, the engine and the
configuration words, and how to turn the sink's words into the op's output.  Each unit's
constant memory is filled once (:func:`static_loads`) with every op's constant beats, which
the compile step (:func:`sim.rtl_top.plan_graph`) took from the units' ``const_beats``; a
job only names its op's slice (base and count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .rtl_top import CONST_PORT, GROUP_TYPES, Field, Mem, Plan

__all__ = ["DumpError", "Job", "op_job", "static_loads", "pack_words", "unpack_words", "SLOT_DTYPES"]

class DumpError(RuntimeError):
    """A sink held fewer words than the job expects."""


SLOT_DTYPES = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _slot_dtype(f: Field, output: bool) -> torch.dtype:
    if output and not f.signed and f.nbytes == 1:
        return torch.uint8
    return SLOT_DTYPES[f.nbytes]


def pack_words(mem: Mem, values: dict[str, torch.Tensor], address: int | None = None) -> str:
    """Hex text ($readmemh) of the words made of ``values`` (field name -> [beats, lanes])."""
    cols = []
    beats = None
    for f in mem.fields:
        t = values[f.name]
        beats = t.shape[0]
        t = t.reshape(beats, f.lanes).to(SLOT_DTYPES[f.nbytes]).contiguous()   # low bits kept
        cols.append(t.view(torch.uint8).reshape(beats, f.lanes * f.nbytes))
    words = torch.cat(cols, 1).flip(1).contiguous()          # most significant byte first
    text = words.numpy().tobytes().hex("\n", mem.nbytes) + "\n"
    return (f"@{address:x}\n" if address else "") + text


def unpack_words(mem: Mem, text: str, beats: int) -> dict[str, torch.Tensor]:
    """The fields of the first ``beats`` words of a $writememh dump (Icarus adds // lines)."""
    hexdigits = "".join(line for line in text.splitlines() if line and not line.startswith("//"))
    raw = bytearray(bytes.fromhex(hexdigits))
    if len(raw) < beats * mem.nbytes:
        raise DumpError(f"{mem.name}: {len(raw) // mem.nbytes} words dumped, {beats} expected")
    words = torch.frombuffer(raw, dtype=torch.uint8)[:beats * mem.nbytes].reshape(beats, mem.nbytes).flip(1)
    out, at = {}, 0
    for f in mem.fields:
        cols = words[:, at:at + f.lanes * f.nbytes].contiguous()
        out[f.name] = cols.view(_slot_dtype(f, True)).reshape(beats, f.lanes)
        at += f.lanes * f.nbytes
    return out


@dataclass
class Job:
    """One op on one engine: source words, configuration, and the unpacking of the result."""

    op: str
    engine: int
    cfg: list[int]
    loads: dict[str, str]                     # memory name -> hex text
    sink: str                                 # sink memory name
    beats: int                                # words the sink must hold when done
    budget: int = 0                           # cycles after which a missing done is an error
    finish: Callable[[dict[str, torch.Tensor]], torch.Tensor] = field(repr=False, default=None)
    tiles: Callable[[tuple], dict] = field(repr=False, default=None)   # element index -> tile coordinates


# --- GEMM tiling -------------------------------------------------------------------------------

def _rows_to_tiles(x: torch.Tensor, lanes: int) -> torch.Tensor:
    """[B, M, K] -> [B * ceil(M/lanes) * K, lanes]: per tile, its K k-slices (padding rows zero)."""
    b, m, k = x.shape
    mt = -(-m // lanes)
    x = F.pad(x, (0, 0, 0, mt * lanes - m))
    return x.reshape(b, mt, lanes, k).permute(0, 1, 3, 2).reshape(b * mt * k, lanes)


def _tiles_to_rows(y: torch.Tensor, b: int, m: int, n: int, rows: int, cols: int) -> torch.Tensor:
    """Output rows in tile order [B MT NT rows, cols] -> [B, M, N]."""
    mt, nt = -(-m // rows), -(-n // cols)
    y = y.reshape(b, mt, nt, rows, cols).permute(0, 1, 3, 2, 4).reshape(b, mt * rows, nt * cols)
    return y[:, :m, :n]


def _p_words(cols: int, bias, m, e, out_bits: int, n: int) -> str:
    nt = -(-n // cols)
    pad = nt * cols - n
    return {"bias": F.pad(bias, (0, pad)).reshape(nt, cols), "m": F.pad(m, (0, pad)).reshape(nt, cols),
            "e": F.pad(e, (0, pad)).reshape(nt, cols), "out_bits": torch.full((nt, 1), out_bits, dtype=torch.int64)}


def static_loads(plan: Plan, graph) -> dict[str, str]:
    """Static memory contents (``<mem>.static.hex``): every linear layer's weight k-slices,
    every GEMM op's parameter words and every other op's constant beats, at the addresses of
    the plan."""
    out = {}
    for e in plan.engines:
        if e.kind != "gemm":
            words = plan.consts.get(e.name)
            if words:
                mem = e.mems[CONST_PORT]
                out[mem.name] = pack_words(mem, {k: torch.tensor(v, dtype=torch.int64).reshape(-1, 1)
                                                 for k, v in words.items()})
            continue
        cols = e.params["cols"]
        w_parts, p_parts = [], {k: [] for k in ("bias", "m", "e", "out_bits")}
        for name in e.instances:
            op = graph.op(name)
            if op.type == "linear":
                w = op.consts["weight"]
                w_parts.append(_rows_to_tiles(w.reshape(1, *w.shape), cols))
                n = w.shape[0]
                ob = int(op.attrs.get("out_bits") or 0)
                zeros = torch.zeros(n, dtype=torch.int64)
                p = _p_words(cols, op.consts["bias"], op.consts["m"] if ob else zeros,
                             op.consts["e"] if ob else zeros, ob, n)
            else:
                n = plan.static[name]["n"]
                a = op.attrs
                p = _p_words(cols, torch.zeros(n, dtype=torch.int64), torch.full((n,), a["m"]),
                             torch.full((n,), a["e"]), int(a["out_bits"]), n)
            for k in p_parts:
                p_parts[k].append(p[k])
        if e.mems["w"].static:
            out[e.mems["w"].name] = pack_words(e.mems["w"], {"data": torch.cat(w_parts)})
        out[e.mems["p"].name] = pack_words(e.mems["p"], {k: torch.cat(v) for k, v in p_parts.items()})
    return out


def gemm_job(plan: Plan, op, x: torch.Tensor, y: torch.Tensor | None = None) -> Job:
    e = plan.engine_of(op.name)
    R, C = e.params["rows"], e.params["cols"]
    st = plan.static[op.name]
    loads = {}
    k, lead, n = x.shape[-1], x.shape[:-1], st["n"]
    if op.type == "linear":
        a3 = x.reshape(1, -1, k)                                 # every row of every token: one batch
    else:
        a3 = x.reshape(-1, x.shape[-2], k)
        w3 = y.reshape(-1, k, n).transpose(1, 2)                 # W = y^T per batch: [B, N, K]
        loads[e.mems["w"].name] = pack_words(e.mems["w"], {"data": _rows_to_tiles(w3, C)}, address=st["w_base"])
    b, m = a3.shape[0], a3.shape[1]
    mt, nt = -(-m // R), -(-n // C)
    loads[e.mems["a"].name] = pack_words(e.mems["a"], {"data": _rows_to_tiles(a3, R)})
    beats = b * mt * nt * R

    def finish(fields):
        return _tiles_to_rows(fields["data"], b, m, n, R, C).reshape(*lead, n).to(torch.int64)

    def tiles(index):                       # element (.., row, col) of the output -> its tile
        *bi, row, col = index
        return {"batch": list(bi), "row_tile": row // R, "col_tile": col // C}

    cfg = [b, mt, nt, k, st["w_base"], st["w_stride"], st["p_base"], beats]
    budget = 4 * b * mt * nt * max(k, 2 * R + C) + 10_000        # four times the documented rate
    return Job(op.name, e.index, cfg, loads, e.mems["o"].name, beats, budget, finish, tiles)


# --- Softmax, GELU, LayerNorm, add -------------------------------------------------------------

def stream_job(plan: Plan, op, inputs: list[torch.Tensor]) -> Job:
    """A Softmax, GELU, LayerNorm or add op: its elements in order, ``lanes`` per word (the last
    word padded with zeros, whose results are dropped); the constants are the op's slice of
    the unit's constant memory."""
    e = plan.engine_of(op.name)
    shape = inputs[0].shape
    n = inputs[0].numel()
    lanes = e.mems["o"].fields[0].lanes
    beats = -(-n // lanes)
    loads = {}
    ports = GROUP_TYPES[op.type]
    for port, t in zip(ports, inputs):
        mem = e.mems[port]
        vals = {"data": F.pad(t.reshape(n), (0, beats * lanes - n)).reshape(beats, lanes)}
        if op.type == "softmax":                 # rows of the last dimension, last flag on each row's end
            last = torch.zeros(t.shape, dtype=torch.int8)
            last[..., -1] = 1
            vals["last"] = last.reshape(n, 1)
        loads[mem.name] = pack_words(mem, vals)
    st = plan.static[op.name]
    cfg = [beats, beats if len(ports) > 1 else 0, st["c_base"], st["c_count"], 0, 0, 0, beats]

    def finish(fields):
        return fields["data"].reshape(beats * lanes)[:n].reshape(shape).to(torch.int64)

    def tiles(index):
        return {"row": list(index[:-1]), "element": int(index[-1])}

    budget = 64 * (beats + st["c_count"]) + 10_000    # every unit here takes about one beat per cycle
    return Job(op.name, e.index, cfg, loads, e.mems["o"].name, beats, budget, finish, tiles)


def op_job(plan: Plan, op, inputs: list[torch.Tensor]) -> Job:
    if op.type in ("linear", "matmul"):
        return gemm_job(plan, op, *inputs)
    return stream_job(plan, op, inputs)
