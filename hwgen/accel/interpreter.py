"""A functional interpreter of a compiled program: the check of the compile step before any RTL
runs (FINN / TVM VTA's functional simulator).

It reads only the external-memory image (header, program, weights, constant beats, the input
written into it) and models the accelerator of a :class:`~hwgen.config.HwConfig`: an
activation buffer of :attr:`AccelConfig.act_buffer_elems` elements, the GEMM array, and one
unit per op type (GELU: per variant) whose per-layer constants are the beats the instruction
points at, decoded with the unit's own ``c`` layout.  Data move only through the loop nests
the instructions describe (:mod:`hwgen.accel.isa`); the arithmetic of each op is the golden
executor's per-op function (:mod:`golden.executor`), never re-implemented here:

* ``LINEAR``/``MATMUL``: :func:`golden.executor.run_linear` on the weights and parameter
  beats read back from the image (a matmul is a linear with ``W = y^T`` and bias 0, which is
  what the GEMM unit computes);
* ``SOFTMAX``, ``GELU``, ``LAYERNORM``, ``ADD``: ``run_softmax``, ``run_gelu``,
  ``run_layernorm``, ``run_add`` with the attributes the unit holds (its generated widths and
  variant) and the constants its beats carry; the same functions where a GEMM streams its
  operand A (``PRE_UNIT``) or its results (``POST_*``) through a unit.

Values are truncated to the width of the wires they cross (a buffer element, a GEMM operand
lane, a unit's input lane), as the hardware would; a compiled graph never needs it, a damaged
image shows it.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from golden.errors import UserError
from golden.executor import run_add, run_gelu, run_layernorm, run_linear, run_softmax
from golden.graph import Op

from ..capabilities import unit_for
from ..config import HwConfig
from .compiler import HEADER_BYTES, HEADER_FIELDS, MAGIC, AccelConfig, Program, c_layout, p_layout, post_consts, w_layout
from .isa import (POST_ADD, POST_GELU, POST_NONE, PRE_UNIT, FLAG_A_SIGNED, FLAG_EXT_SIGNED, FLAG_PER_IMAGE, FLAG_W_EXT, INSTR_BYTES, LEVELS, MOVE_OPS, Instr, Opcode, Port,
                  beat_bytes, decode, unpack_beats)

__all__ = ["Machine", "run", "interpret", "header", "batch_image", "write_input", "read_logits", "RunStats", "unit_model"]


@dataclass
class RunStats:
    """What a run did: instructions executed per opcode, and bytes read from / written to
    external memory (program fetch included)."""

    instrs: dict[str, int] = field(default_factory=dict)
    ext_read: int = 0
    ext_written: int = 0


def header(image) -> dict[str, int]:
    """The image's header fields; a foreign image is refused in one line."""
    if len(image) < HEADER_BYTES:
        raise UserError(f"accel image: {len(image)} bytes, shorter than its {HEADER_BYTES}-byte header")
    vals = struct.unpack_from(f"<{len(HEADER_FIELDS)}I", bytes(image[:HEADER_BYTES]))
    h = dict(zip(HEADER_FIELDS, vals))
    if h["magic"] != MAGIC:
        raise UserError(f"accel image: magic 0x{h['magic']:08x} is not 0x{MAGIC:08x}; not a compiled program")
    return h


def batch_image(image: bytes, count: int) -> bytearray:
    """The memory image with room for ``count`` images per start (header ``image_stride``)."""
    h = header(image)
    out = bytearray(image)
    out += bytes(max(0, h["image_bytes"] + (count - 1) * h["image_stride"] - len(out)))
    return out


def write_input(image: bytearray, x: torch.Tensor, index: int = 0) -> None:
    """Write one integer input image ([C, H, W] or [1, C, H, W]) into the input region of
    image ``index`` of a start (:func:`batch_image` makes the room)."""
    h = header(image)
    at = h["input"] + index * h["image_stride"]
    es = 1 << h["input_esize"]
    v = x.to(torch.int64).reshape(-1).numpy()
    if v.size * es != h["input_bytes"]:
        raise UserError(f"accel input: {v.size} elements; the program takes {h['input_bytes'] // es}")
    lo, hi = -(1 << (8 * es - 1)), (1 << (8 * es - 1)) - 1
    if v.size and (int(v.min()) < lo or int(v.max()) > hi):
        raise UserError(f"accel input: values {int(v.min())}..{int(v.max())} do not fit {es}-byte elements")
    if at + h["input_bytes"] > len(image):
        raise UserError(f"accel input: image {index} does not fit the {len(image)}-byte memory image")
    image[at:at + h["input_bytes"]] = v.astype(f"<i{es}").tobytes()


def read_logits(image, index: int = 0) -> torch.Tensor:
    """The logits region of image ``index`` of a start as int64 [1, classes]."""
    h = header(image)
    es = 1 << h["logits_esize"]
    at = h["logits"] + index * h["image_stride"]
    raw = bytes(image[at:at + h["logits_count"] * es])
    return torch.from_numpy(np.frombuffer(raw, dtype=f"<i{es}").astype(np.int64)).reshape(1, -1)


@functools.lru_cache(maxsize=32)
def unit_model(hw: HwConfig, kind: str, variant: str | None):
    """The unit of ``kind`` for ``hw`` (built once per configuration: only its attributes and
    ``c`` layout are read)."""
    unit = unit_for(hw, kind, variant)
    unit._MustUse__silence = True        # read, never elaborated: no "never used" warning
    return unit


def _wrap(v: torch.Tensor, bits: int, sgn: bool = True) -> torch.Tensor:
    """The low ``bits`` bits of each value, sign- or zero-extended (what a narrower wire keeps)."""
    if bits >= 64 or not v.numel():
        return v
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if sgn else (0, (1 << bits) - 1)
    vmin, vmax = torch.aminmax(v)
    if int(vmin) >= lo and int(vmax) <= hi:           # the usual case: nothing to cut
        return v
    v = v & ((1 << bits) - 1)
    if sgn:
        v = torch.where(v >= (1 << (bits - 1)), v - (1 << bits), v)
    return v


class Machine:
    """The program's machine: the external memory ``img`` (a bytearray, written by STORE), the
    activation buffer ``buf`` and the counts ``stats``.  :meth:`step` runs one instruction
    (a :class:`UserError` for one the hardware would not run); ``read`` then lists the buffer
    addresses it read, by source.  :func:`run` steps a whole program; tests and the RTL runner
    step single instructions (a fault's instruction, one refused by the interpreter)."""

    def __init__(self, image: bytearray, hw: HwConfig, accel: AccelConfig):
        self.img, self.hw, self.accel = image, hw, accel
        self.buf = torch.zeros(accel.act_buffer_elems, dtype=torch.int64)
        self.stats = RunStats()
        self.where = ""
        self.read: list[tuple[str, torch.Tensor]] = []

    # --- memory ---------------------------------------------------------------------------------
    def ext(self, addr: int, nbytes: int) -> bytes:
        if addr < 0 or addr + nbytes > len(self.img):
            raise UserError(f"accel program: reads bytes 0x{addr:x}..0x{addr + nbytes:x} beyond the "
                            f"{len(self.img)}-byte image{self.where}")
        self.stats.ext_read += nbytes
        return bytes(self.img[addr:addr + nbytes])

    def index(self, port: Port, n, dims) -> torch.Tensor:
        """Element addresses of ``port`` over the loop levels ``dims`` (the others held at 0)."""
        idx = torch.tensor(port.base, dtype=torch.int64).reshape([1] * len(dims))
        for j, d in enumerate(dims):             # broadcast: full size only at the last level
            shape = [1] * len(dims)
            shape[j] = n[d]
            idx = idx + torch.arange(n[d], dtype=torch.int64).reshape(shape) * port.strides[d]
        return idx.expand([n[d] for d in dims])

    def check(self, idx: torch.Tensor, what: str) -> torch.Tensor:
        lo, hi = torch.aminmax(idx) if idx.numel() else (0, 0)
        if int(lo) < 0 or int(hi) >= self.buf.numel():
            raise UserError(f"accel program: {what} addresses {int(lo)}..{int(hi)} leave the "
                            f"{self.buf.numel()}-element buffer{self.where}")
        return idx

    def gather(self, port: Port, n, dims, what: str) -> torch.Tensor:
        idx = self.check(self.index(port, n, dims), what)
        self.read.append((what, idx))
        return self.buf[idx]

    def scatter(self, port: Port, n, dims, values: torch.Tensor) -> None:
        idx = self.check(self.index(port, n, dims), "dst")
        # the block RAMs are built without yosys's emulation of a read and a write of one
        # address in one cycle (hwgen.bram.NO_COLLISION): an instruction may not write
        # where it reads
        flat = idx.reshape(-1)
        lo, hi = (int(v) for v in torch.aminmax(flat))
        for what, src in self.read:
            s_lo, s_hi = (int(v) for v in torch.aminmax(src))
            if s_lo <= hi and lo <= s_hi:
                both = int(torch.isin(flat, src.reshape(-1)).sum())
                if both:
                    raise UserError(f"accel program: dst writes {both} elements that {what} reads in the same "
                                    f"instruction; accepted: dst apart from its sources{self.where}")
        self.buf[flat] = _wrap(values.reshape(-1).to(torch.int64), self.accel.act_elem_bits)

    # --- units ------------------------------------------------------------------------------------
    def unit(self, kind: str, index: int = 0):
        variant = None
        if kind == "gelu":
            gelus = self.accel.gelus(self.hw)
            if index >= len(gelus):
                raise UserError(f"accel program: GELU unit {index} does not exist (the accelerator has "
                                f"{len(gelus)}){self.where}")
            variant = gelus[index]
        return unit_model(self.hw, kind, variant)

    def beats(self, layout, addr: int, count: int) -> dict[str, np.ndarray]:
        return unpack_beats(layout, self.ext(addr, count * beat_bytes(layout)))

    # --- execution --------------------------------------------------------------------------------
    def step(self, ins: Instr) -> None:
        op = ins.op
        self.read = []                # (source, its addresses) read by this instruction
        if any(c < 1 for c in ins.n):
            raise UserError(f"accel program: {op.name} with a loop count of 0 {ins.n}{self.where}")
        all_dims = tuple(range(LEVELS))
        if op in MOVE_OPS:
            self.scatter(ins.dst, ins.n, all_dims, self.gather(ins.src0, ins.n, all_dims, "src0"))
        elif op == Opcode.LOAD:
            es = 1 << ins.esize
            idx = self.index(ins.src0, ins.n, all_dims)
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0:
                raise UserError(f"accel program: LOAD with a negative element offset{self.where}")
            raw = self.ext(ins.ext0, (hi + 1) * es)
            kind = "i" if ins.flags & FLAG_EXT_SIGNED else "u"
            vals = torch.from_numpy(np.frombuffer(raw, dtype=f"<{kind}{es}").astype(np.int64))
            self.scatter(ins.dst, ins.n, all_dims, vals[idx])
        elif op == Opcode.STORE:
            es = 1 << ins.esize
            vals = self.gather(ins.src0, ins.n, all_dims, "src0").reshape(-1).numpy()
            idx = self.index(ins.dst, ins.n, all_dims).reshape(-1).numpy()
            if idx.size and (int(idx.min()) < 0 or ins.ext0 + (int(idx.max()) + 1) * es > len(self.img)):
                raise UserError(f"accel program: STORE beyond the {len(self.img)}-byte image{self.where}")
            view = np.frombuffer(self.img, dtype=f"<i{es}", count=int(idx.max()) + 1, offset=ins.ext0)
            view[idx] = vals.astype(f"<i{es}")                  # low bytes kept, as the bus would
            self.stats.ext_written += idx.size * es
        elif op in (Opcode.LINEAR, Opcode.MATMUL):
            self.gemm(ins)
        elif op == Opcode.SOFTMAX:
            x = self.gather(ins.src0, ins.n, all_dims, "src0")
            self.scatter(ins.dst, ins.n, all_dims, self.softmax_values(ins.ext0, ins.cnt, x))
        elif op == Opcode.GELU:
            self.gelu(ins)
        elif op == Opcode.LAYERNORM:
            x = self.gather(ins.src0, ins.n, all_dims, "src0")
            self.scatter(ins.dst, ins.n, all_dims, self.layernorm_values(ins.ext0, ins.cnt, x))
        elif op == Opcode.ADD:
            x = self.gather(ins.src0, ins.n, all_dims, "src0")
            y = self.gather(ins.src1, ins.n, all_dims, "src1")
            self.scatter(ins.dst, ins.n, all_dims, self.add_values(ins.ext0, ins.cnt, x, y))
        else:                                                   # END is handled by the caller
            raise UserError(f"accel program: opcode {op.name} cannot execute here{self.where}")

    def gelu(self, ins: Instr) -> None:
        u = self.unit("gelu", ins.unit)
        dims = tuple(range(LEVELS))
        x = self.gather(ins.src0, ins.n, dims, "src0")
        self.scatter(ins.dst, ins.n, dims, self.gelu_values(ins.unit, ins.ext0, ins.cnt, x))

    def gelu_values(self, index: int, ext: int, cnt: int, x: torch.Tensor) -> torch.Tensor:
        """GELU unit ``index`` on ``x``, its ``cnt`` constant beats at ``ext``."""
        u = self.unit("gelu", index)
        x = _wrap(x, u.in_bits)
        c = self.beats(c_layout(u), ext, cnt)
        attrs = {"variant": u.variant, "in_bits": u.in_bits, "out_bits": u.out_bits}
        consts = {}
        if u.variant in ("ibert", "iptq"):
            attrs.update(degree=u.degree, **{k: int(c[k][0, 0]) for k in ("qb", "qc", "sh", "m", "e")})
        elif u.variant == "ishift":
            attrs.update(exp_variant=u.exp_variant, **{k: int(c[k][0, 0]) for k in ("fy", "m_y", "e_y", "m", "e")})
        else:
            if cnt != 1 << u.in_bits:
                raise UserError(f"accel program: GELU table of {cnt} beats; the unit takes "
                                f"{1 << u.in_bits}{self.where}")
            consts["table"] = torch.from_numpy(c["table"][:, 0])
        return run_gelu(Op("gelu", "", [], [], attrs, consts), x)

    def softmax_values(self, ext: int, cnt: int, x: torch.Tensor) -> torch.Tensor:
        """The Softmax unit on the rows (last dimension) of ``x``, its constant beats at ``ext``."""
        u = self.unit("softmax")
        f = int(self.beats(c_layout(u), ext, cnt)["f"][0, 0])
        return run_softmax(Op("softmax", "", [], [], {"f": f, "variant": u.variant, "out_bits": u.out_bits,
                                                       "recip_bits": u.recip_bits}), _wrap(x, u.in_bits))

    def layernorm_values(self, ext: int, cnt: int, x: torch.Tensor) -> torch.Tensor:
        """The LayerNorm unit on the rows of ``x``: one constant beat per channel at ``ext``."""
        u = self.unit("layernorm")
        if x.shape[-1] != cnt:
            raise UserError(f"accel program: LayerNorm rows of {x.shape[-1]} channels with {cnt} "
                            f"constant beats{self.where}")
        if not 2 <= cnt <= u.max_channels:
            raise UserError(f"accel program: LayerNorm rows of {cnt} channels; the unit takes 2..{u.max_channels}"
                            f"{self.where}")
        c = self.beats(c_layout(u), ext, cnt)
        # the unit counts a layer's channels up to the beat flagged last: a flag elsewhere would
        # leave it waiting for beats that never come
        last = np.flatnonzero(c["last"][:, 0])
        if last.tolist() != [cnt - 1]:
            raise UserError(f"accel program: LayerNorm constant beats at 0x{ext:x} flag beats {last.tolist()} as "
                            f"the last; accepted: beat {cnt - 1} alone (the last of {cnt}){self.where}")
        attrs = {"out_bits": u.out_bits, "e": int(c["e"][0, 0]), "channels": cnt}
        consts = {"m": torch.from_numpy(c["m"][:, 0]), "b": torch.from_numpy(c["b"][:, 0])}
        return run_layernorm(Op("layernorm", "", [], [], attrs, consts), _wrap(x, u.in_bits))

    def add_values(self, ext: int, cnt: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The residual add unit on ``x`` and ``y``, its ``cnt`` constant beats at ``ext``."""
        u = self.unit("add")
        c = self.beats(c_layout(u), ext, cnt)
        attrs = {"out_bits": u.bits, **{k: int(c[k][0, 0]) for k in ("m_a", "e_a", "m_b", "e_b")}}
        return run_add(Op("add", "", [], [], attrs), _wrap(x, u.bits), _wrap(y, u.bits))

    def gemm(self, ins: Instr) -> None:
        hw = self.hw
        cols = hw.gemm_cols
        b, m, n, k, rest = ins.n
        if rest != 1:
            raise UserError(f"accel program: {ins.op.name} uses 4 loop levels; n4 = {rest}{self.where}")
        a_signed = bool(ins.flags & FLAG_A_SIGNED)
        if ins.op != Opcode.LINEAR and ins.post not in (POST_NONE, PRE_UNIT):
            raise UserError(f"accel program: {ins.op.name} with post {ins.post}; only LINEAR streams its results "
                            f"through a unit (accepted {POST_NONE}, or {PRE_UNIT}: Softmax before){self.where}")
        if not 2 <= ins.a_bits <= hw.a_bits or not 2 <= ins.w_bits <= hw.w_bits:
            raise UserError(f"accel program: {ins.op.name} operands of {ins.a_bits} x {ins.w_bits} bits; the "
                            f"GEMM takes 2..{hw.a_bits} x 2..{hw.w_bits}{self.where}")
        nt = -(-n // cols)
        consts = post_consts(ins.ext1, nt, hw)       # a post or pre unit's constant beats
        a = self.gather(ins.src0, ins.n, (0, 1, 3), "src0")                                   # [B, M, K]
        if ins.post == PRE_UNIT:       # through the unit on its way into the array (a buffer element wide)
            pre = self.layernorm_values if ins.op == Opcode.LINEAR else self.softmax_values
            a = _wrap(pre(consts, ins.cnt, a), self.accel.act_elem_bits)
        a = _wrap(a, ins.a_bits, a_signed)
        if ins.flags & FLAG_W_EXT:
            lay = w_layout(ins.w_bits, cols)
            tiles = self.beats(lay, ins.ext0, nt * k)["data"]                                 # [NT K, cols]
            w = torch.from_numpy(tiles).reshape(nt, k, cols).permute(0, 2, 1).reshape(1, nt * cols, k)
            w = w.expand(b, -1, -1)
        else:
            if nt * k > self.accel.w_cache_elems:
                raise UserError(f"accel program: MATMUL with {nt} column tiles of K = {k}: {nt * k} elements a lane; "
                                f"the W cache holds {self.accel.w_cache_elems}{self.where}")
            w = _wrap(self.gather(ins.src1, ins.n, (0, 2, 3), "src1"), ins.w_bits)             # [B, N, K]
            w = torch.nn.functional.pad(w, (0, 0, 0, nt * cols - n))
        p = self.beats(p_layout(hw), ins.ext1, nt)
        bias, mm, ee = (torch.from_numpy(p[f]).reshape(-1) for f in ("bias", "m", "e"))
        obits = p["out_bits"][:, 0]
        attrs = {"a_bits": ins.a_bits, "a_signed": a_signed, "w_bits": ins.w_bits, "acc_bits": hw.acc_bits,
                 "out_signed": True}
        # one run of the golden linear per group of column tiles that share out_bits (every
        # tile, in a compiled program): the output channels are independent
        out = torch.empty(b, m, nt * cols, dtype=torch.int64)
        groups: dict[int, list[int]] = {}
        for t, ob in enumerate(obits.tolist()):
            groups.setdefault(int(ob), []).append(t)
        for ob, ts in groups.items():
            ch = torch.cat([torch.arange(t * cols, (t + 1) * cols) for t in ts])
            for bi in range(b):
                op = Op("linear", "", [], [], {**attrs, "out_bits": ob},
                        {"weight": w[bi, ch], "bias": bias[ch], "m": mm[ch], "e": ee[ch]})
                out[bi][:, ch] = run_linear(op, a[bi])
        out = _wrap(out[:, :, :n], hw.acc_bits)
        if ins.post == POST_GELU:
            out = self.gelu_values(ins.unit, consts, ins.cnt, _wrap(out, self.accel.act_elem_bits))
        elif ins.post == POST_ADD:
            r = self.gather(ins.src1, ins.n, (0, 1, 2), "src1")
            out = self.add_values(consts, ins.cnt, _wrap(out, self.accel.act_elem_bits), r)
        elif ins.post not in (POST_NONE, PRE_UNIT):
            raise UserError(f"accel program: LINEAR post {ins.post} is not accepted; accepted {POST_NONE} (none), "
                            f"{POST_GELU} (GELU), {POST_ADD} (add), {PRE_UNIT} (LayerNorm before){self.where}")
        self.scatter(ins.dst, ins.n, (0, 1, 2), out)


def run(image: bytearray, hw: HwConfig, accel: AccelConfig | None = None, max_instrs: int = 1 << 20,
        images: int = 1) -> RunStats:
    """Execute the program in ``image`` (a bytearray: the logits are written into it) from its
    header's program address until ``END``, ``images`` times (image k's input and logits
    ``k image_stride`` bytes on, as the accelerator's IMAGES register does).  An unknown
    opcode, an address outside the buffer or the image, or a program that runs past its end
    is refused in one line."""
    accel = accel or AccelConfig()
    h = header(image)
    mach = Machine(image, hw, accel)
    for k in range(images):
        _run_once(mach, image, h, k * h["image_stride"], max_instrs)
    return mach.stats


def _run_once(mach: Machine, image, h: dict, offset: int, max_instrs: int) -> None:
    pc = h["program"]
    for i in range(max_instrs):
        mach.where = f" (instruction {i} at 0x{pc:x})"
        raw = mach.ext(pc, INSTR_BYTES) if pc + INSTR_BYTES <= len(image) else None
        if raw is None:
            raise UserError(f"accel program: ran past the end of the image without END{mach.where}")
        ins = decode(raw, mach.where)
        mach.stats.instrs[ins.op.name] = mach.stats.instrs.get(ins.op.name, 0) + 1
        if ins.op == Opcode.END:
            return
        if ins.flags & FLAG_PER_IMAGE and ins.op in (Opcode.LOAD, Opcode.STORE):
            ins = replace(ins, ext0=ins.ext0 + offset)
        mach.step(ins)
        pc += INSTR_BYTES
    raise UserError(f"accel program: no END after {max_instrs} instructions")


def interpret(program: Program, x: torch.Tensor) -> torch.Tensor:
    """Logits [B, classes] of integer inputs ``x`` [B, C, H, W]: one start of B images."""
    image = batch_image(program.image, x.shape[0])
    for i in range(x.shape[0]):
        write_input(image, x[i], i)
    run(image, program.hw, program.accel, images=x.shape[0])
    return torch.cat([read_logits(image, i) for i in range(x.shape[0])])
