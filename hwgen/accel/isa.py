"""The accelerator's instruction set: one fixed-width 512-bit instruction per op, fields in one
table (:data:`FIELDS`), and the bit-packing of beats that the compiler, the interpreter and later
the RTL share.

Every instruction has the same flat layout (:data:`LAYOUT`, an :class:`amaranth.lib.data.StructLayout`
built from :data:`FIELDS`, field 0 at bit 0), so the RTL decoder is a view of the fetched word and
needs no per-opcode format.  Instruction ``i`` of a program sits at byte
``program + 64 i`` of external memory, little-endian (byte 0 holds bits 0..7).

Loop nest
---------
An instruction describes a loop nest of five levels, ``for i0 < n0: ... for i4 < n4`` (outer to
inner), and, for each of its three buffer ports (``dst``, ``src0``, ``src1``), a base element
address and one signed stride per level: the element of the nest point ``(i0..i4)`` is at
``base + sum(i_d * s_d)``.  Unused levels have ``n = 1``.  That is all an address generator
needs (five counters, three accumulating adders); there is no per-element work outside it.

Opcodes (semantics in :mod:`hwgen.accel.interpreter`):

=================  ======================================================================
``END``            stop; the sequencer raises done
``LOAD``           external memory -> buffer: the element at byte
                   ``ext0 + 2^esize (sum i_d src0_s_d)`` to ``dst`` (``FLAG_EXT_SIGNED``:
                   sign-extended)
``STORE``          buffer -> external memory: ``src0`` to the element at byte
                   ``ext0 + 2^esize (sum i_d dst_s_d)`` (its low bytes).  With
                   ``FLAG_PER_IMAGE`` (the input's LOAD, the logits' STORE), image k of a
                   start adds ``k`` times the image stride to ``ext0``
``LINEAR``         GEMM over levels (b, m, n, k) = (n0, n1, n2, n3): ``A[b, m, k]`` at
                   ``src0`` (``a_bits``, ``FLAG_A_SIGNED``), ``W[n, k]`` from external
                   memory in tile format at ``ext0`` (``w_bits`` lanes, ``FLAG_W_EXT``), one
                   parameter beat per column tile at ``ext1``, ``C[b, m, n]`` to ``dst``.
                   ``post`` streams the results through a unit on their way to ``dst``
                   (``POST_GELU``: GELU unit ``unit``; ``POST_ADD``: the residual add, with
                   ``R[b, m, n]`` at ``src1`` (strides of levels 0..2) as its second operand);
                   its ``cnt`` constant beats follow the parameter beats, at ``ext1`` plus
                   the parameter beats' bytes rounded up to 64.  ``post = PRE_UNIT``
                   instead streams A through the LayerNorm unit on its way into the array
                   (``src0`` then holds the LayerNorm's input, rows of ``k`` channels; its
                   ``cnt`` beats sit where a post unit's would)
``MATMUL``         the same GEMM with ``W[b, n, k]`` from the buffer at ``src1`` (the
                   graph's ``y^T``: a choice of strides), parameter beats at ``ext1``;
                   ``post = PRE_UNIT``: A streams through the Softmax unit (rows of ``k``
                   scores at ``src0``), its constant beats as a LINEAR's post unit's
``SOFTMAX``        rows of ``n4`` elements, ``src0`` -> ``dst``; ``cnt`` constant beats at
                   ``ext0`` in the unit's ``c`` layout
``GELU``           element-wise, on GELU unit number ``unit``; constant beats as above
``LAYERNORM``      rows of ``n4`` channels; one constant beat per channel
``ADD``            element-wise ``src0 + src1`` (residual add); one constant beat
``IM2COL``         strided copy ``src0`` -> ``dst``.  Every data-movement op is this one
``CONCAT``         copy on the same address generator; the opcode says which graph op it
``SPLIT_HEADS``    serves (per-op cycle counters, listings): the patch gather, class
``MERGE_HEADS``    token insertion, head split and merge, K's transpose and the class
``TRANSPOSE``      token's selection
``SELECT``
=================  ======================================================================

Opcode 0 is illegal on purpose: a jump into zeroed memory stops with an error, not quietly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data

from golden.errors import UserError

__all__ = ["Opcode", "FIELDS", "LAYOUT", "INSTR_BITS", "INSTR_BYTES", "LEVELS", "Port", "Instr", "encode",
           "decode", "encode_program", "leaves", "beat_bytes", "pack_beats", "unpack_beats",
           "FLAG_A_SIGNED", "FLAG_W_EXT", "FLAG_EXT_SIGNED", "FLAG_PER_IMAGE", "POST_NONE", "POST_GELU", "POST_ADD", "PRE_UNIT", "MOVE_OPS", "UNIT_OPS", "GEMM_OPS"]


class Opcode(enum.IntEnum):
    END = 1
    LOAD = 2
    STORE = 3
    LINEAR = 4
    MATMUL = 5
    SOFTMAX = 6
    GELU = 7
    LAYERNORM = 8
    ADD = 9
    IM2COL = 10
    CONCAT = 11
    SPLIT_HEADS = 12
    MERGE_HEADS = 13
    TRANSPOSE = 14
    SELECT = 15


GEMM_OPS = (Opcode.LINEAR, Opcode.MATMUL)
UNIT_OPS = (Opcode.SOFTMAX, Opcode.GELU, Opcode.LAYERNORM, Opcode.ADD)
MOVE_OPS = (Opcode.IM2COL, Opcode.CONCAT, Opcode.SPLIT_HEADS, Opcode.MERGE_HEADS, Opcode.TRANSPOSE,
            Opcode.SELECT)

FLAG_A_SIGNED = 1      # GEMM: operand A is signed (unsigned: Softmax probabilities)
FLAG_W_EXT = 2         # GEMM: W comes from external memory in tile format (LINEAR)
FLAG_EXT_SIGNED = 4    # LOAD: sign-extend the external elements
FLAG_PER_IMAGE = 8     # LOAD/STORE: ext0 moves on by the image stride for each image of a start

POST_NONE = 0          # LINEAR: results straight into the buffer
POST_GELU = 1          # LINEAR: results through GELU unit ``unit`` (the fc1 + GELU of an MLP)
POST_ADD = 2           # LINEAR: results through the residual add with ``src1`` (the add's first operand)
PRE_UNIT = 3           # A through a unit before the array: LINEAR the LayerNorm, MATMUL the Softmax

LEVELS = 5
COUNT_BITS = 16
ADDR_BITS = 20         # buffer element address: 1 Mi elements
STRIDE_BITS = 18       # signed element stride
EXT_BITS = 32          # external byte address
CNT_BITS = 12          # constant beats of one op (a 2^10 GELU table, 4095 LayerNorm channels)


def _port_fields(name: str) -> list[tuple[str, int, bool]]:
    return [(name, ADDR_BITS, False)] + [(f"{name}_s{d}", STRIDE_BITS, True) for d in range(LEVELS)]


# (name, width, signed), from bit 0 up.  The one table of the encoding.
FIELDS: list[tuple[str, int, bool]] = [
    ("opcode", 6, False),
    ("unit", 2, False),          # which unit of the op type (GELU variant number)
    ("flags", 4, False),         # FLAG_*
    ("a_bits", 5, False),        # GEMM operand widths (the array's lanes hold them sign-extended)
    ("w_bits", 5, False),
    ("esize", 2, False),         # LOAD/STORE: log2 bytes of an external element
    *[(f"n{d}", COUNT_BITS, False) for d in range(LEVELS)],
    *_port_fields("dst"),
    *_port_fields("src0"),
    *_port_fields("src1"),
    ("ext0", EXT_BITS, False),   # weights / constant beats / external tensor
    ("ext1", EXT_BITS, False),   # GEMM parameter beats
    ("cnt", CNT_BITS, False),    # constant beats
    ("post", 2, False),          # GEMM: the unit beside the array (POST_*, PRE_UNIT)
]

INSTR_BITS = sum(w for _, w, _ in FIELDS)
INSTR_BYTES = INSTR_BITS // 8
assert INSTR_BITS == 512, INSTR_BITS

LAYOUT = data.StructLayout({n: (signed(w) if s else unsigned(w)) for n, w, s in FIELDS})
_OFFSETS = {n: LAYOUT[n].offset for n, _, _ in FIELDS}


@dataclass(frozen=True)
class Port:
    """A buffer port of an instruction: base element address and one stride per loop level."""

    base: int = 0
    strides: tuple[int, ...] = (0,) * LEVELS


@dataclass(frozen=True)
class Instr:
    """One instruction (see the module docstring for the fields' meaning).

    Members
    -------
    op : Opcode
    unit, flags, a_bits, w_bits, esize, ext0, ext1, cnt : int
    n : tuple of LEVELS ints
        Loop counts, outer to inner.
    dst, src0, src1 : Port
    note : str
        Which graph op it comes from; not encoded (a listing aid only).
    """

    op: Opcode
    n: tuple[int, ...] = (1,) * LEVELS
    dst: Port = Port()
    src0: Port = Port()
    src1: Port = Port()
    unit: int = 0
    flags: int = 0
    a_bits: int = 0
    w_bits: int = 0
    esize: int = 0
    ext0: int = 0
    ext1: int = 0
    cnt: int = 0
    post: int = 0
    note: str = field(default="", compare=False)

    def fields(self) -> dict[str, int]:
        out = {"opcode": int(self.op), "unit": self.unit, "flags": self.flags, "a_bits": self.a_bits,
               "w_bits": self.w_bits, "esize": self.esize, "ext0": self.ext0, "ext1": self.ext1, "cnt": self.cnt,
               "post": self.post}
        for d in range(LEVELS):
            out[f"n{d}"] = self.n[d]
        for name in ("dst", "src0", "src1"):
            p = getattr(self, name)
            out[name] = p.base
            for d in range(LEVELS):
                out[f"{name}_s{d}"] = p.strides[d]
        return out


def encode(ins: Instr) -> bytes:
    """The 64 bytes of an instruction; a field that does not fit its bits is refused in one line."""
    vals = ins.fields()
    word = 0
    for name, width, sgn in FIELDS:
        v = vals[name]
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if sgn else (0, (1 << width) - 1)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
            raise UserError(f"accel isa: {ins.op.name} field {name} = {v!r} does not fit its "
                            f"{width} {'signed ' if sgn else ''}bits ({lo}..{hi}){_where(ins)}")
        word |= (int(v) & ((1 << width) - 1)) << _OFFSETS[name]
    return word.to_bytes(INSTR_BYTES, "little")


def _where(ins: Instr) -> str:
    return f" in {ins.note}" if ins.note else ""


def decode(raw: bytes, where: str = "") -> Instr:
    """The instruction of 64 bytes; an unknown opcode is refused in one line (``where`` says
    which instruction, e.g. its address)."""
    if len(raw) != INSTR_BYTES:
        raise UserError(f"accel isa: an instruction is {INSTR_BYTES} bytes, got {len(raw)}{where}")
    word = int.from_bytes(raw, "little")
    vals = {}
    for name, width, sgn in FIELDS:
        v = (word >> _OFFSETS[name]) & ((1 << width) - 1)
        if sgn and v >> (width - 1):
            v -= 1 << width
        vals[name] = v
    try:
        op = Opcode(vals["opcode"])
    except ValueError:
        raise UserError(f"accel program: unknown opcode {vals['opcode']}{where}; accepted "
                        f"{', '.join(f'{o.value} ({o.name})' for o in Opcode)}") from None
    ports = {name: Port(vals[name], tuple(vals[f"{name}_s{d}"] for d in range(LEVELS)))
             for name in ("dst", "src0", "src1")}
    return Instr(op, tuple(vals[f"n{d}"] for d in range(LEVELS)), ports["dst"], ports["src0"], ports["src1"],
                 vals["unit"], vals["flags"], vals["a_bits"], vals["w_bits"], vals["esize"], vals["ext0"],
                 vals["ext1"], vals["cnt"], vals["post"])


def encode_program(instrs: list[Instr]) -> bytes:
    return b"".join(encode(i) for i in instrs)


# --- beats of a unit's payload layout, packed into bytes ------------------------------------------
#
# A stream payload (the GEMM's w and p beats, a unit's c beats) is stored in external memory one
# beat per ``beat_bytes(layout)`` bytes (its bits rounded up to a power-of-two number of bytes,
# so that a beat never straddles an AXI word on a bus of at least that width), bit 0 of the
# payload at bit 0 of the first byte: the loader hands the low bits to the unit unchanged.

def leaves(layout) -> list[tuple[str, int, int, bool, int]]:
    """(name, bit offset, lane width, signed, lanes) of every scalar field of a payload layout
    (a Shape, an ArrayLayout of scalars, or a StructLayout of those)."""
    if isinstance(layout, data.StructLayout):
        out = []
        for name, f in layout:
            for sub, off, w, s, lanes in leaves(f.shape):
                out.append((name if sub == "data" else f"{name}.{sub}", f.offset + off, w, s, lanes))
        return out
    if isinstance(layout, data.ArrayLayout):
        el = Shape.cast(layout.elem_shape)
        return [("data", 0, el.width, el.signed, layout.length)]
    s = Shape.cast(layout)
    return [("data", 0, s.width, s.signed, 1)]


def _layout_bits(layout) -> int:
    return layout.size if isinstance(layout, data.Layout) else Shape.cast(layout).width


def beat_bytes(layout) -> int:
    n = -(-_layout_bits(layout) // 8)
    return 1 << (n - 1).bit_length()


def pack_beats(layout, values: dict[str, np.ndarray]) -> bytes:
    """Bytes of ``beats`` payloads: ``values[name]`` is ``[beats, lanes]`` (or ``[beats]``) of
    integers that fit their fields (the low bits of each are taken, as the wires would)."""
    fl = leaves(layout)
    nb = beat_bytes(layout)
    beats = len(np.asarray(values[fl[0][0]]))
    out = np.zeros((beats, nb), dtype=np.uint8)
    for name, off, w, _, lanes in fl:
        v = np.asarray(values[name], dtype=np.int64).reshape(beats, lanes)
        for k in range(lanes):
            lane = v[:, k]
            for b in range(w):
                bit = off + k * w + b
                out[:, bit // 8] |= (((lane >> b) & 1).astype(np.uint8) << (bit % 8))
    return out.tobytes()


def unpack_beats(layout, raw: bytes) -> dict[str, np.ndarray]:
    """The fields of the beats in ``raw`` (``[beats, lanes]`` int64, sign-extended where signed)."""
    nb = beat_bytes(layout)
    b = np.frombuffer(bytes(raw), dtype=np.uint8).reshape(-1, nb).astype(np.int64)
    out = {}
    for name, off, w, sgn, lanes in leaves(layout):
        v = np.zeros((b.shape[0], lanes), dtype=np.int64)
        for k in range(lanes):
            for i in range(w):
                bit = off + k * w + i
                v[:, k] |= ((b[:, bit // 8] >> (bit % 8)) & 1) << i
        if sgn:
            v = np.where(v >> (w - 1) & 1, v - (1 << w), v)
        out[name] = v
    return out
