"""The compiler: an :class:`~golden.graph.IntegerGraph` and a :class:`~hwgen.config.HwConfig` to a
:class:`Program`, i.e. the instruction list and ONE external-memory image.

What the compiler decides, and nothing else does:

* where every activation tensor lives in the on-chip activation buffer (an element-addressed
  scratchpad of :attr:`AccelConfig.act_buffer_elems` elements; first fit, freed after the last
  use), and the strided loop nest that moves or computes each op (:mod:`hwgen.accel.isa`);
* which data moves need no instruction at all: a head split (Q, K^T, V out of the QKV tensor)
  whose outputs only feed MATMULs, and a head merge whose input only comes from a MATMUL, are
  *views*: the MATMULs walk the QKV tensor, and write the merged tensor, with the strides of
  the split or merge (``fold_views``; off, they are ``SPLIT_HEADS``/``TRANSPOSE``/``MERGE_HEADS``
  copies);
* which GELU and residual adds stream beside the GEMM: a linear layer whose only consumer is a
  GELU (an MLP's fc1) or a residual add (the attention projection, fc2) streams its results
  through that unit on their way into the buffer (the instruction's ``post``), so the GELU and
  the add cost no pass of their own; and which Softmax and LayerNorm stream in front of it: a
  Softmax whose only consumer is a MATMUL's first operand (attention's probabilities times V)
  and a LayerNorm whose only consumer is the input of a linear layer without a post unit
  (norm1 before qkv, the final norm before the head) run on the GEMM's operand A as it is
  loaded (``post = PRE_UNIT``): their output is never written to the buffer and they cost no
  pass of their own (``fuse``; off, each is its own instruction);
* what external memory holds, and where (:attr:`Program.memory_map`):

  ==================  ====================================================================
  ``header``          64 bytes at 0: :data:`HEADER_FIELDS`, u32 little-endian each
  ``program``         the instructions, 64 bytes each, ending with ``END``
  ``<op>.weights``    a linear layer's weights in the GEMM's tile format: for each column
                      tile nt, for each k, one beat of ``cols`` lanes of ``w_bits``
                      (``W[nt cols + j, k]`` in lane j, zero padded), each beat
                      :func:`~hwgen.accel.isa.beat_bytes` long
  ``<op>.params``     a GEMM op's parameter beats, one per column tile (bias, m, e per lane,
                      out_bits), in the GEMM's ``p`` layout (:attr:`hwgen.gemm.Gemm.p_layout`)
  ``<op>.consts``     a Softmax/GELU/LayerNorm/add op's constant beats, in its unit's ``c``
                      layout (the unit's own ``const_beats``, via hwgen.capabilities)
  ``const.<name>``    a graph constant (class token, position embedding), one element per
                      2^esize bytes
  ``input``           the integer input image [C, H, W], written by the host
  ``logits``          the logits, written by the program

  The input and the logits regions come last; for a start of several images (the
  accelerator's IMAGES register) image k's input and logits sit ``image_stride`` x k bytes
  further on (header field ``image_stride``: the two regions' aligned sizes), so the images
  of a batch are laid out as [input 0, logits 0, input 1, logits 1, ...].
  ==================  ====================================================================

  Every region starts on a 64-byte boundary (a whole AXI burst on any bus up to 512 bits).

A graph that needs an op the accelerator lacks, or does not fit its buffers or widths, is refused
with one :class:`~golden.errors.UserError` line naming the op, the need and the limit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import numpy as np
import torch
from amaranth.hdl import signed
from amaranth.lib import data

from golden.errors import UserError
from golden.gelu import GELU_VARIANTS
from golden.graph import tensor_shapes

from ..capabilities import check_fits, const_beats, unit_key
from ..config import GEMM_MULTIPLIERS, HwConfig
from ..requant import requant_param_fields
from .isa import (POST_ADD, POST_GELU, POST_NONE, PRE_UNIT, beat_bytes, ADDR_BITS, STRIDE_BITS, FLAG_A_SIGNED, FLAG_EXT_SIGNED, FLAG_PER_IMAGE, FLAG_W_EXT, INSTR_BYTES, LEVELS, Instr, Opcode, Port,
                  encode_program, pack_beats)

__all__ = ["AccelConfig", "Program", "compile", "HEADER_FIELDS", "MAGIC", "ALIGN", "w_layout", "p_layout",
           "c_layout", "post_consts", "tensor_shapes"]

MAGIC = 0x54495649          # "IVIT", little-endian
VERSION = 2
ALIGN = 64
HEADER_FIELDS = ("magic", "version", "instr_bytes", "program", "n_instr", "input", "input_bytes", "input_esize",
                 "logits", "logits_bytes", "logits_esize", "logits_count", "image_bytes", "image_stride")
HEADER_BYTES = 64


@dataclass(frozen=True)
class AccelConfig:
    """The accelerator's own sizes, beside the datapath capabilities of :class:`HwConfig`
    (kept here until the RTL step moves them into HwConfig).

    Parameters
    ----------
    act_buffer_elems : int
        Elements of the on-chip activation buffer (every live tensor of the graph at once).
        Default 16384: the digits ViT needs 10,880 at its peak (first fit); 16384 x 16 bits
        takes 15 of the 208 EBR (18 Kbit) of an LFE5U-85F.
    act_elem_bits : int
        Width of a buffer element: the widest tensor (the residual stream and the attention
        scores at 16 bits; a graph with a raw GEMM accumulator needs acc_bits).
    weight_buffer_words : int
        GEMM weight buffer, in beats of ``cols`` weights: holds two column tiles of K beats
        each (one in use, the next one loading), so K <= weight_buffer_words / 2.
    w_cache_elems : int
        A MATMUL's second operand is read once per batch (head) into ``cols`` lane memories of
        two halves of this many elements: a batch's column tiles times K must fit a half (the
        compiler splits a MATMUL into column groups that do); at least ``gemm_max_k``.
    gelu_variants : tuple of str, or None
        The GELU units the accelerator has (instruction field ``unit`` = index); None: only
        ``hw.gelu_variant``.
    ext_word_bytes : int
        Width of the external memory (AXI) data bus in bytes: 4..64, a power of two.
    gemm_mult : str
        The multipliers of the accelerator's GEMM array: ``"dsp"`` (default: ``*``, DSP blocks)
        or ``"lut"`` (carry-save LUT trees, :class:`hwgen.gemm.Gemm`).  The standalone GEMM unit
        of ``rtl/gemm.v`` follows ``HwConfig.gemm_mult`` (LUT: it closes at 160 MHz alone).  In
        the accelerator each product is a DSP leaf (:mod:`hwgen.dsp`) whose operand and
        product registers are the ECP5 DSP block's own, so the routes into and out of the DSP
        columns each have a cycle (Fmax: ``reports/hw.json``, README); the LUT trees bought
        nothing there (80.53 and 64.28 MHz on two seeds, README) and cost a third of its
        LUT4 (9 x 8: 36k against 12k for the array) and a third of its simulation time; the
        9 x 8 DSP array alone takes 88 of the LFE5U-85F's 156 MULT18 and places at 69 to 110
        MHz depending on the seed (README, "No DSP blocks").
    """

    act_buffer_elems: int = 16384
    act_elem_bits: int = 16
    weight_buffer_words: int = 1536
    w_cache_elems: int = 256
    gelu_variants: tuple[str, ...] | None = None
    ext_word_bytes: int = 8
    gemm_mult: str = "dsp"

    def __post_init__(self):
        if not 1 <= self.act_buffer_elems <= 1 << ADDR_BITS:
            raise UserError(f"accel config: act_buffer_elems = {self.act_buffer_elems} is out of range; "
                            f"accepted 1..{1 << ADDR_BITS}")
        if not 2 <= self.act_elem_bits <= 64:
            raise UserError(f"accel config: act_elem_bits = {self.act_elem_bits} is out of range; accepted 2..64")
        if self.w_cache_elems < 1:
            raise UserError(f"accel config: w_cache_elems = {self.w_cache_elems} is out of range; accepted 1 or more")
        if self.weight_buffer_words < 2:
            raise UserError(f"accel config: weight_buffer_words = {self.weight_buffer_words} is out of range; "
                            f"accepted 2 or more")
        for v in self.gelu_variants or ():
            if v not in GELU_VARIANTS:
                raise UserError(f"accel config: gelu variant {v!r} is not accepted; accepted {', '.join(GELU_VARIANTS)}")
        if self.ext_word_bytes not in (4, 8, 16, 32, 64):
            raise UserError(f"accel config: ext_word_bytes = {self.ext_word_bytes} is not accepted; "
                            f"accepted 4, 8, 16, 32, 64")
        if self.gemm_mult not in GEMM_MULTIPLIERS:
            raise UserError(f"accel config: gemm_mult = {self.gemm_mult!r} is not accepted; "
                            f"accepted {', '.join(GEMM_MULTIPLIERS)}")
        if self.gelu_variants is not None and not 1 <= len(self.gelu_variants) <= 4:
            raise UserError(f"accel config: {len(self.gelu_variants)} GELU units; accepted 1..4 (2-bit unit field)")

    def gelus(self, hw: HwConfig) -> tuple[str, ...]:
        return tuple(self.gelu_variants) if self.gelu_variants else (hw.gelu_variant,)


@dataclass
class Program:
    """A compiled graph.

    Members
    -------
    instrs : list of Instr
        The program (also encoded in ``image`` at ``memory_map["program"]``).
    image : bytes
        The external-memory image; the host writes the input region and reads the logits.
    memory_map : dict
        Region name -> (byte address, bytes).
    hw, accel : HwConfig, AccelConfig
        The hardware it was compiled for (the interpreter models the units of ``hw``).
    input_shape, logits_count, input_esize, logits_esize :
        The input tensor's shape at batch 1, the number of logits, and their element sizes
        (log2 bytes) in external memory (also in the header).
    buffer_peak : int
        Elements of the activation buffer in use at the worst point.
    source : dict or None
        What it was compiled from (model, bits), for manifests.
    """

    instrs: list[Instr]
    image: bytes
    memory_map: dict[str, tuple[int, int]]
    hw: HwConfig
    accel: AccelConfig
    input_shape: list[int]
    logits_count: int
    input_esize: int
    logits_esize: int
    buffer_peak: int
    source: dict | None = None      # what it was compiled from (model, bits), for manifests

    def listing(self) -> str:
        """One line per instruction (opcode, graph op, loop counts, addresses)."""
        return "\n".join(f"{i:4d} {ins.op.name:<11} {ins.note:<24} n={ins.n} dst={ins.dst.base} "
                         f"src0={ins.src0.base} src1={ins.src1.base} ext0=0x{ins.ext0:x} ext1=0x{ins.ext1:x} cnt={ins.cnt}"
                         for i, ins in enumerate(self.instrs))


# --- layouts of the units' beats in external memory --------------------------------------------

def w_layout(w_bits: int, cols: int) -> data.ArrayLayout:
    """A weight beat as stored: ``cols`` lanes of the layer's ``w_bits`` (the loader sign-extends
    them into the array's lanes, so W4 layers take half the memory and bandwidth of W8)."""
    return data.ArrayLayout(signed(w_bits), cols)


def p_layout(hw: HwConfig) -> data.StructLayout:
    """The GEMM's ``p`` beat (:func:`hwgen.requant.requant_param_fields`, as hwgen.gemm.Gemm)."""
    return data.StructLayout(requant_param_fields(hw.gemm_cols, hw.acc_bits, hw.mult_bits, hw.gemm_e_bits))


def post_consts(ext1: int, nt: int, hw: HwConfig) -> int:
    """Where a LINEAR's ``post`` unit constants sit: after its ``nt`` parameter beats at ``ext1``,
    rounded up to 64 bytes (the RTL adds the same)."""
    return ext1 + -(-(nt * beat_bytes(p_layout(hw))) // ALIGN) * ALIGN


def c_layout(unit):
    """A unit's ``c`` payload layout (the same object the unit's port has)."""
    return unit.signature.members["c"].signature.members["payload"].shape


# --- shapes -------------------------------------------------------------------------------------

def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _contig(shape: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Counts and row-major strides of a tensor as a 5-level nest (leading levels of 1)."""
    shape = [s for s in shape]
    while len(shape) > LEVELS:                 # merge the outermost dimensions
        shape = [shape[0] * shape[1]] + shape[2:]
    shape = [1] * (LEVELS - len(shape)) + shape
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc if s > 1 else 0)
        acc *= s
    return tuple(shape), tuple(reversed(strides))


def _pad5(values: list[int], fill: int) -> tuple[int, ...]:
    return tuple([fill] * (LEVELS - len(values)) + list(values))


def _esize(bits: int) -> int:
    """log2 of the bytes of an external element of ``bits`` bits."""
    nbytes = -(-bits // 8)
    return max(0, (nbytes - 1).bit_length())


# --- the buffer allocator ---------------------------------------------------------------------

class _Buffer:
    """First fit over the element addresses; the peak is what the graph needs."""

    def __init__(self):
        self.blocks: dict[str, tuple[int, int]] = {}
        self.peak = 0
        self.peak_at = ""

    def alloc(self, name: str, size: int, at: str) -> int:
        addr = 0
        for a, s in sorted(self.blocks.values()):
            if a - addr >= size:
                break
            addr = max(addr, a + s)
        self.blocks[name] = (addr, size)
        if addr + size > self.peak:
            self.peak, self.peak_at = addr + size, at
        return addr

    def free(self, name: str) -> None:
        self.blocks.pop(name, None)

    def __getitem__(self, name: str) -> int:
        return self.blocks[name][0]


# --- the compiler ---------------------------------------------------------------------------------

SUPPORTED = ("im2col", "concat", "split_heads", "merge_heads", "select_token",
             "linear", "matmul", "softmax", "gelu", "layernorm", "add")


def _fits(op_name: str, what: str, values, bits: int, sgn: bool, cap: str) -> None:
    v = np.asarray(values, dtype=np.int64)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if sgn else (0, (1 << bits) - 1)
    if v.size and (int(v.min()) < lo or int(v.max()) > hi):
        bad = int(v.max()) if int(v.max()) > hi else int(v.min())
        raise UserError(f"accel compile: {op_name}: {what} = {bad} does not fit {bits} "
                        f"{'signed ' if sgn else ''}bits ({cap})")


class _Compiler:
    def __init__(self, graph, hw: HwConfig, accel: AccelConfig, fold_views: bool = True, fuse: bool = True):
        self.g, self.hw, self.accel = graph, hw, accel
        self.shapes = tensor_shapes(graph)
        self.consumers: dict[str, list] = {}                          # tensor -> the ops that read it
        for op in graph.ops:
            for n in op.inputs:
                self.consumers.setdefault(n, []).append(op)
        self.buf = _Buffer()
        self.code: list[tuple[Instr, object, object]] = []   # instr, ext0 and ext1: region or (region, offset)
        self.blobs: list[tuple[str, bytes]] = []                      # const regions in order
        # tensor -> (root tensor, element offset, stride per dimension): where a view lives
        self.views: dict[str, tuple[str, int, tuple[int, ...]]] = {}
        self.folded: set[str] = set()                                 # ops that are views (no instruction)
        if fold_views:
            self._fold_views()
        self.posts: dict[str, object] = {}                            # linear op -> the GELU/add it streams through
        self.pres: dict[str, object] = {}                             # GEMM op -> the Softmax/LayerNorm before it
        if fuse:
            self._fuse_posts()
            self._fuse_pres()

    def _fuse_posts(self) -> None:
        """A linear layer whose output feeds only a GELU, or only one side of a residual add,
        streams through that unit (the unit takes ``lanes`` results a beat: the array's columns
        must be a multiple)."""
        g, hw = self.g, self.hw
        if hw.gemm_cols % hw.lanes:
            return
        for op in g.ops:
            if op.type != "linear":
                continue
            t = op.outputs[0]
            users = self.consumers.get(t, [])
            if t == g.output or t in self.views or len(users) != 1:
                continue
            post = users[0]
            if post.type == "gelu" or (post.type == "add" and post.inputs.count(t) == 1
                                       and not any(n in self.views for n in post.inputs)
                                       and self.shapes[post.inputs[0]] == self.shapes[post.inputs[1]]):
                self.posts[op.name] = post
                self.folded.add(post.name)

    def _fuse_pres(self) -> None:
        """A Softmax whose output is only a MATMUL's A (in one instruction: every column tile
        in the W cache), and a LayerNorm whose output is only the A of a linear layer without
        a post unit, stream that A through their unit as the GEMM loads it."""
        g = self.g
        for op in g.ops:
            if op.type not in ("softmax", "layernorm"):
                continue
            t = op.outputs[0]
            users = self.consumers.get(t, [])
            if t == g.output or t in self.views or op.inputs[0] in self.views or len(users) != 1:
                continue
            gemm = users[0]
            if gemm.inputs[0] != t or t in gemm.inputs[1:]:
                continue
            if op.type == "softmax" and gemm.type == "matmul":
                k, n = self.shapes[t][-1], self.shapes[gemm.inputs[1]][-1]
                if self.accel.w_cache_elems // k * self.hw.gemm_cols < n:
                    continue
            elif not (op.type == "layernorm" and gemm.type == "linear" and gemm.name not in self.posts):
                continue
            self.pres[gemm.name] = op
            self.folded.add(op.name)

    def _reads(self, op) -> list[str]:
        """The tensors an op's instruction reads: a GEMM with a unit before it reads that
        unit's input, not its (never written) output."""
        pre = self.pres.get(op.name)
        return op.inputs + (pre.inputs if pre is not None else [])

    # --- views ----------------------------------------------------------------------------------
    def _fold_views(self) -> None:
        """Head splits whose outputs only feed MATMULs and head merges whose input only comes
        from a MATMUL become views (the GEMM walks any strides; see the module docstring)."""
        g = self.g
        producer = {n: op for op in g.ops for n in op.outputs}
        only_matmul = lambda n: n != g.output and all(c.type == "matmul" for c in self.consumers.get(n, [None]))  # noqa: E731
        for op in g.ops:
            if op.type == "split_heads" and all(only_matmul(o) for o in op.outputs) \
                    and op.inputs[0] not in self.views:
                _, n, c3 = self.shapes[op.inputs[0]]
                h = op.attrs["heads"]
                d = c3 // (3 * h)
                q, kt, v = op.outputs
                src = op.inputs[0]
                self.views[q] = (src, 0, (0, d, c3, 1))
                self.views[kt] = (src, h * d, (0, d, 1, c3))
                self.views[v] = (src, 2 * h * d, (0, d, c3, 1))
                self.folded.add(op.name)
            elif op.type == "merge_heads":
                x = op.inputs[0]
                p = producer.get(x)
                if p is None or p.type != "matmul" or len(self.consumers.get(x, [])) != 1 or x == g.output:
                    continue
                _, h, n, d = self.shapes[x]
                self.views[x] = (op.outputs[0], 0, (0, d, h * d, 1))
                self.folded.add(op.name)

    def root(self, name: str) -> str:
        return self.views[name][0] if name in self.views else name

    def addr(self, name: str) -> int:
        """The buffer address of a tensor's first element (a view's: its root's plus offset)."""
        return self.buf[self.root(name)] + (self.views[name][1] if name in self.views else 0)

    def strides(self, name: str) -> tuple[int, ...]:
        """A tensor's stride per dimension (row-major unless it is a view)."""
        if name in self.views:
            return self.views[name][2]
        shape, acc, out = self.shapes[name], 1, []
        for s in reversed(shape):
            out.append(acc)
            acc *= s
        return tuple(reversed(out))

    def batch_stride(self, name: str) -> int:
        """The stride of a tensor's leading (batch) dimensions taken as one: they must merge."""
        shape, st = self.shapes[name][:-2], self.strides(name)[:-2]
        dims = [(s, t) for s, t in zip(shape, st) if s > 1]
        for (s0, t0), (s1, t1) in zip(dims, dims[1:]):
            if t0 != t1 * s1:
                raise UserError(f"accel compile: tensor {name}: its batch dimensions (shape {self.shapes[name]}, "
                                f"strides {self.strides(name)}) do not merge into one loop")
        return dims[-1][1] if dims else 0

    # --- checks -----------------------------------------------------------------------------
    def check(self) -> dict:
        g, hw, accel = self.g, self.hw, self.accel
        gelus = accel.gelus(hw)
        for op in g.ops:
            if op.type not in SUPPORTED:
                raise UserError(f"accel compile: {op.name}: op type {op.type!r} has no unit in the accelerator; "
                                f"accepted {', '.join(SUPPORTED)}")
            if op.type == "gelu" and op.attrs.get("variant") not in gelus:
                raise UserError(f"accel compile: {op.name}: GELU variant {op.attrs.get('variant')!r} has no unit in "
                                f"the accelerator; it has {', '.join(gelus)}")
            if op.type in ("linear", "matmul"):
                self._check_gemm(op)
        for name, info in g.tensors.items():
            if name in self.shapes and info["bits"] > accel.act_elem_bits:
                raise UserError(f"accel compile: tensor {name} of {info['bits']} bits does not fit a buffer element; "
                                f"act_elem_bits = {accel.act_elem_bits}")
        return check_fits(g, hw)

    def _check_gemm(self, op) -> None:
        a, hw = op.attrs, self.hw
        wb = a["w_bits"] if op.type == "linear" else a["b_bits"]
        if op.type == "matmul" and not a.get("b_signed", True):
            raise UserError(f"accel compile: {op.name}: an unsigned second operand has no GEMM lane format")
        if not a.get("out_signed", True):
            raise UserError(f"accel compile: {op.name}: an unsigned GEMM output has no GEMM lane format")
        for what, need, cap, have in (("operand A", a["a_bits"], "a_bits", hw.a_bits),
                                      ("operand W", wb, "w_bits", hw.w_bits),
                                      ("accumulator", a["acc_bits"], "acc_bits", hw.acc_bits)):
            if need > have:
                raise UserError(f"accel compile: {op.name}: {what} of {need} bits does not fit the GEMM; "
                                f"{cap} = {have} (short by {need - have} bits)")
        k = op.consts["weight"].shape[1] if op.type == "linear" else self.shapes[op.inputs[0]][-1]
        if k > hw.gemm_max_k:
            raise UserError(f"accel compile: {op.name}: reduction K = {k} exceeds gemm_max_k = {hw.gemm_max_k}")
        if op.type == "matmul" and k > self.accel.w_cache_elems:
            raise UserError(f"accel compile: {op.name}: one column tile of the second operand needs K = {k} elements "
                            f"a lane; w_cache_elems = {self.accel.w_cache_elems} (short by {k - self.accel.w_cache_elems})")
        if op.type == "linear" and 2 * k > self.accel.weight_buffer_words:
            raise UserError(f"accel compile: {op.name}: two column tiles of weights need 2 x K = {2 * k} beats; "
                            f"weight_buffer_words = {self.accel.weight_buffer_words} "
                            f"(short by {2 * k - self.accel.weight_buffer_words})")
        bias = int(op.consts["bias"].abs().max()) if op.type == "linear" else 0
        a_max = (1 << (a["a_bits"] - 1)) if a.get("a_signed", True) else (1 << a["a_bits"]) - 1
        worst = a_max * (1 << (wb - 1)) * k + bias
        if worst >= 1 << (hw.acc_bits - 1):
            raise UserError(f"accel compile: {op.name}: worst case |A| |W| K + |bias| = {worst} does not fit "
                            f"acc_bits = {hw.acc_bits}")

    # --- emission ------------------------------------------------------------------------------
    def emit(self, ins: Instr, ext0=None, ext1=None) -> None:
        if ins.op in (Opcode.LINEAR, Opcode.MATMUL):
            self._check_gemm_walks(ins)
        self.code.append((ins, ext0, ext1))

    def _check_gemm_walks(self, ins: Instr) -> None:
        """The RTL walks a GEMM by tiles (hwgen.accel.core): a row stride times the array's rows
        and a column stride times its columns are strides too, and must fit their field."""
        rows, cols = self.hw.gemm_rows, self.hw.gemm_cols
        lim = 1 << (STRIDE_BITS - 1)
        for what, stride, times in (("src0 row", ins.src0.strides[1], rows), ("src1 column", ins.src1.strides[2], cols),
                                    ("dst row", ins.dst.strides[1], rows), ("dst column", ins.dst.strides[2], cols)):
            if not -lim <= stride * times < lim:
                raise UserError(f"accel compile: {ins.note}: {what} stride {stride} x {times} (a tile) does not fit "
                                f"the {STRIDE_BITS}-bit stride field")

    def blob(self, name: str, raw: bytes) -> str:
        self.blobs.append((name, raw))
        return name

    def run(self, units: dict) -> Program:
        g, accel = self.g, self.accel
        last_use: dict[str, int] = {}          # per root: a view keeps its root alive
        for i, op in enumerate(g.ops):
            reads = self._reads(op)
            for n in reads + op.outputs:
                last_use[self.root(n)] = max(last_use.get(self.root(n), -1), i if n in reads else -1)
        last_use[g.output] = len(g.ops)
        pre_outs = {pre.outputs[0] for pre in self.pres.values()}       # never written: no room
        loaded = set()
        for i, op in enumerate(g.ops):
            for n in op.inputs:                 # graph input and constants: loaded before first use
                if n not in loaded and (n == g.input or n in g.constants):
                    loaded.add(n)
                    self._load(n, op.name)
            post = self.posts.get(op.name)
            for n in (post.outputs if post else op.outputs):   # a view's root: with its first part
                r = self.root(n)
                if r not in self.buf.blocks and n not in pre_outs:
                    self.buf.alloc(r, _numel(self.shapes[r]), op.name)
            if op.name not in self.folded:
                getattr(self, f"_op_{op.type}")(op, units)
            for n in self._reads(op) + op.outputs:
                if last_use.get(self.root(n), -1) <= i:
                    self.buf.free(self.root(n))
        self._store_logits()
        self.emit(Instr(Opcode.END, note="end"))
        if self.buf.peak > accel.act_buffer_elems:
            raise UserError(f"accel compile: the activations need {self.buf.peak} buffer elements (at "
                            f"{self.buf.peak_at}); act_buffer_elems = {accel.act_buffer_elems} "
                            f"(short by {self.buf.peak - accel.act_buffer_elems})")
        return self._link()

    def _load(self, name: str, at: str) -> None:
        shape = self.shapes[name]
        self.buf.alloc(name, _numel(shape), at)
        info = self.g.tensors[name]
        es = _esize(info["bits"])
        n, st = _contig(shape)
        region = "input" if name == self.g.input else f"const.{name}"
        if name != self.g.input:
            t = self.g.constants[name].to(torch.int64).reshape(-1).numpy()
            _fits(at, f"constant {name}", t, 8 << es, True, f"{1 << es}-byte elements")
            self.blob(region, t.astype(f"<i{1 << es}").tobytes())
        flags = (FLAG_EXT_SIGNED if info.get("signed", True) else 0) | (FLAG_PER_IMAGE if name == self.g.input else 0)
        self.emit(Instr(Opcode.LOAD, n, Port(self.buf[name], st), Port(0, st), flags=flags, esize=es,
                        note=f"load {name}"), ext0=region)

    def _store_logits(self) -> None:
        name = self.g.output
        es = _esize(self.g.tensors[name]["bits"])
        n, st = _contig(self.shapes[name])
        self.emit(Instr(Opcode.STORE, n, Port(0, st), Port(self.buf[name], st), flags=FLAG_PER_IMAGE, esize=es,
                        note=f"store {name}"),
                  ext0="logits")

    def _copy(self, opc: Opcode, op, n, dst: Port, src: Port) -> None:
        self.emit(Instr(opc, _pad5(list(n), 1), Port(dst.base, _pad5(list(dst.strides), 0)),
                        Port(src.base, _pad5(list(src.strides), 0)), note=op.name))

    # --- data movement ----------------------------------------------------------------------
    def _op_im2col(self, op, units) -> None:
        b, c, h, w = self.shapes[op.inputs[0]]
        p = op.attrs["patch"]
        ph, pw = h // p, w // p
        self._copy(Opcode.IM2COL, op, (ph, pw, c, p, p),
                   Port(self.buf[op.outputs[0]], (pw * c * p * p, c * p * p, p * p, p, 1)),
                   Port(self.buf[op.inputs[0]], (p * w, p, h * w, w, 1)))

    def _op_concat(self, op, units) -> None:
        tok, x = op.inputs
        out = self.buf[op.outputs[0]]
        n0, st0 = _contig(self.shapes[tok])
        self._copy(Opcode.CONCAT, op, n0, Port(out, st0), Port(self.buf[tok], st0))
        n1, st1 = _contig(self.shapes[x])
        self._copy(Opcode.CONCAT, op, n1, Port(out + _numel(self.shapes[tok]), st1), Port(self.buf[x], st1))

    def _op_split_heads(self, op, units) -> None:
        _, n, c3 = self.shapes[op.inputs[0]]
        h = op.attrs["heads"]
        d = c3 // (3 * h)
        src = self.buf[op.inputs[0]]
        q, kt, v = (self.buf[o] for o in op.outputs)
        self._copy(Opcode.SPLIT_HEADS, op, (h, n, d), Port(q, (n * d, d, 1)), Port(src, (d, c3, 1)))
        # K transposed: the nest walks the destination [h, d, n] in order, the source by column
        self._copy(Opcode.TRANSPOSE, op, (h, d, n), Port(kt, (d * n, n, 1)), Port(src + h * d, (d, 1, c3)))
        self._copy(Opcode.SPLIT_HEADS, op, (h, n, d), Port(v, (n * d, d, 1)), Port(src + 2 * h * d, (d, c3, 1)))

    def _op_merge_heads(self, op, units) -> None:
        _, h, n, d = self.shapes[op.inputs[0]]
        self._copy(Opcode.MERGE_HEADS, op, (n, h, d), Port(self.buf[op.outputs[0]], (h * d, d, 1)),
                   Port(self.buf[op.inputs[0]], (d, n * d, 1)))

    def _op_select_token(self, op, units) -> None:
        _, t, c = self.shapes[op.inputs[0]]
        idx = op.attrs["index"]
        self._copy(Opcode.SELECT, op, (c,), Port(self.buf[op.outputs[0]], (1,)),
                   Port(self.buf[op.inputs[0]] + idx * c, (1,)))

    # --- GEMM -------------------------------------------------------------------------------
    def _params(self, op, bias, m, e, out_bits: int, n: int, after: bytes = b"") -> str:
        """The parameter beats of a GEMM op, then (``after``, 64-byte aligned: :func:`post_consts`)
        the constant beats of the unit its results stream through."""
        hw = self.hw
        cols = hw.gemm_cols
        nt = -(-n // cols)
        pad = nt * cols - n
        _fits(op.name, "bias", bias, hw.acc_bits, True, f"acc_bits {hw.acc_bits}")
        _fits(op.name, "requant multiplier m", m, hw.mult_bits, False, f"mult_bits {hw.mult_bits}")
        _fits(op.name, "requant shift e", e, hw.gemm_e_bits, False, f"gemm_e_bits {hw.gemm_e_bits}")
        vals = {k: np.pad(np.asarray(v, dtype=np.int64), (0, pad)).reshape(nt, cols)
                for k, v in (("bias", bias), ("m", m), ("e", e))}
        vals["out_bits"] = np.full((nt, 1), out_bits, dtype=np.int64)
        raw = pack_beats(p_layout(hw), vals)
        if after:
            raw += bytes(post_consts(0, nt, hw) - len(raw)) + after
        return self.blob(f"{op.name}.params", raw)

    def _consts(self, unit, op) -> tuple[bytes, int]:
        """The ``c`` beats of ``op``'s constants for ``unit``: bytes and count."""
        beats = const_beats(unit, op)
        vals = {k: np.array([b[k] for b in beats], dtype=np.int64) for k in beats[0]}
        return pack_beats(c_layout(unit), vals), len(beats)

    def _op_linear(self, op, units) -> None:
        a, cols = op.attrs, self.hw.gemm_cols
        w = op.consts["weight"].to(torch.int64).numpy()
        n, k = w.shape
        x_shape = self.shapes[op.inputs[0]]
        rows = _numel(x_shape) // k
        nt = -(-n // cols)
        wp = np.zeros((nt * cols, k), dtype=np.int64)
        wp[:n] = w
        tiles = wp.reshape(nt, cols, k).transpose(0, 2, 1).reshape(nt * k, cols)    # beat (nt, k), lane j
        _fits(op.name, "weight", w, a["w_bits"], True, f"w_bits {a['w_bits']}")
        wreg = self.blob(f"{op.name}.weights", pack_beats(w_layout(a["w_bits"], cols), {"data": tiles}))
        # the unit the results stream through, if any: its constants follow the parameter beats
        post, out, src1, unit = self.posts.get(op.name), op.outputs[0], Port(), 0
        pre, x, kind, after, cnt = self._pre(op, units)
        if post is not None:
            out = post.outputs[0]
            if post.type == "gelu":
                kind, unit = POST_GELU, self.accel.gelus(self.hw).index(post.attrs["variant"])
                after, cnt = self._consts(units[unit_key(post)], post)
            else:                                   # the GEMM's results are the add's first operand
                kind = POST_ADD
                res = post.inputs[1] if post.inputs[0] == op.outputs[0] else post.inputs[0]
                pa = dict(post.attrs)
                if post.inputs[0] != op.outputs[0]:
                    pa.update(m_a=post.attrs["m_b"], e_a=post.attrs["e_b"], m_b=post.attrs["m_a"], e_b=post.attrs["e_a"])
                after, cnt = self._consts(units[unit_key(post)], replace(post, attrs=pa))
                src1 = Port(self.buf[res], (0, n, 1, 0, 0))
        ob = int(a.get("out_bits") or 0)
        zeros = np.zeros(n, dtype=np.int64)
        preg = self._params(op, op.consts["bias"].numpy(), op.consts["m"].numpy() if ob else zeros,
                            op.consts["e"].numpy() if ob else zeros, ob, n, after)
        flags = FLAG_W_EXT | (FLAG_A_SIGNED if a.get("a_signed", True) else 0)
        self.emit(Instr(Opcode.LINEAR, (1, rows, n, k, 1), Port(self.buf[out], (0, n, 1, 0, 0)),
                        Port(self.buf[x], (0, k, 0, 1, 0)), src1, flags=flags, a_bits=a["a_bits"],
                        w_bits=a["w_bits"], unit=unit, cnt=cnt, post=kind, note=self._note(op, pre, post)),
                  ext0=wreg, ext1=preg)

    def _pre(self, op, units):
        """(the Softmax/LayerNorm in front of a GEMM or None, the tensor its A walk reads, its
        ``post`` value, the unit's constant bytes and beat count): without one, the op's input,
        ``POST_NONE`` and no constants."""
        pre = self.pres.get(op.name)
        if pre is None:
            return None, op.inputs[0], POST_NONE, b"", 0
        return (pre, pre.inputs[0], PRE_UNIT) + self._consts(units[unit_key(pre)], pre)

    @staticmethod
    def _note(op, pre, post) -> str:
        """A GEMM's listing name: ``norm+linear``, ``linear+gelu``."""
        return (f"{pre.name}+" if pre is not None else "") + op.name + (f"+{post.type}" if post is not None else "")

    def _op_matmul(self, op, units) -> None:
        a = op.attrs
        xs, ys = self.shapes[op.inputs[0]], self.shapes[op.inputs[1]]
        m, k = xs[-2], xs[-1]
        n = ys[-1]
        b = _numel(xs[:-2])
        if _numel(ys[:-2]) != b or ys[-2] != k:
            raise UserError(f"accel compile: {op.name}: operand shapes {xs} and {ys} do not multiply")
        y, out = op.inputs[1], op.outputs[0]
        pre, x, kind, after, cnt = self._pre(op, units)
        preg = self._params(op, np.zeros(n, dtype=np.int64), np.full(n, a["m"]), np.full(n, a["e"]),
                            int(a["out_bits"]), n, after)
        flags = FLAG_A_SIGNED if a.get("a_signed", True) else 0
        xs_, ys_, os_ = self.strides(x), self.strides(y), self.strides(out)
        # W[b, n, k] = y[b, k, n]: the transpose the GEMM wants is a choice of strides (and so are
        # the head split and merge of a folded view).  A batch's W is read once into the W cache:
        # one instruction per group of column tiles that fits it
        cols = self.hw.gemm_cols
        group = self.accel.w_cache_elems // k * cols
        p_bytes = beat_bytes(p_layout(self.hw))
        for n0 in range(0, n, group):
            nn = min(group, n - n0)
            self.emit(Instr(Opcode.MATMUL, (b, m, nn, k, 1),
                            Port(self.addr(out) + n0 * os_[-1], (self.batch_stride(out), os_[-2], os_[-1], 0, 0)),
                            Port(self.addr(x), (self.batch_stride(x), xs_[-2], 0, xs_[-1], 0)),
                            Port(self.addr(y) + n0 * ys_[-1], (self.batch_stride(y), 0, ys_[-1], ys_[-2], 0)), flags=flags,
                            a_bits=a["a_bits"], w_bits=a["b_bits"], cnt=cnt, post=kind,
                            note=self._note(op, pre, None) + ("" if nn == n else f"[{n0}:{n0 + nn}]")),
                      ext1=(preg, n0 // cols * p_bytes))

    # --- Softmax, GELU, LayerNorm, add --------------------------------------------------------
    def _unit_op(self, opc: Opcode, op, units, unit_index: int = 0) -> None:
        raw, cnt = self._consts(units[unit_key(op)], op)
        creg = self.blob(f"{op.name}.consts", raw)
        n, st = _contig(self.shapes[op.inputs[0]])
        src1 = Port(self.buf[op.inputs[1]], st) if len(op.inputs) > 1 else Port()
        self.emit(Instr(opc, n, Port(self.buf[op.outputs[0]], st), Port(self.buf[op.inputs[0]], st), src1,
                        unit=unit_index, cnt=cnt, note=op.name), ext0=creg)

    def _op_softmax(self, op, units) -> None:
        self._unit_op(Opcode.SOFTMAX, op, units)

    def _op_gelu(self, op, units) -> None:
        self._unit_op(Opcode.GELU, op, units, self.accel.gelus(self.hw).index(op.attrs["variant"]))

    def _op_layernorm(self, op, units) -> None:
        self._unit_op(Opcode.LAYERNORM, op, units)

    def _op_add(self, op, units) -> None:
        if self.shapes[op.inputs[0]] != self.shapes[op.inputs[1]]:
            raise UserError(f"accel compile: {op.name}: add of shapes {self.shapes[op.inputs[0]]} and "
                            f"{self.shapes[op.inputs[1]]} (no broadcast in the add unit)")
        self._unit_op(Opcode.ADD, op, units)

    # --- the image ------------------------------------------------------------------------------
    def _link(self) -> Program:
        g = self.g
        mm: dict[str, tuple[int, int]] = {}
        at = 0

        def place(name: str, nbytes: int) -> None:
            nonlocal at
            mm[name] = (at, nbytes)
            at += -(-nbytes // ALIGN) * ALIGN

        place("header", HEADER_BYTES)
        place("program", len(self.code) * INSTR_BYTES)
        for name, raw in self.blobs:
            place(name, len(raw))
        in_shape = self.shapes[g.input]
        in_es = _esize(g.tensors[g.input]["bits"])
        out_es = _esize(g.tensors[g.output]["bits"])
        n_logits = _numel(self.shapes[g.output])
        place("input", _numel(in_shape) << in_es)
        place("logits", n_logits << out_es)
        def at_(ref, default):           # a region's address, or (region, byte offset) into it
            if not ref:
                return default
            name, off = (ref, 0) if isinstance(ref, str) else ref
            return mm[name][0] + off

        instrs = [replace(ins, ext0=at_(r0, ins.ext0), ext1=at_(r1, ins.ext1)) for ins, r0, r1 in self.code]
        image = bytearray(at)
        hdr = {"magic": MAGIC, "version": VERSION, "instr_bytes": INSTR_BYTES, "program": mm["program"][0],
               "n_instr": len(instrs), "input": mm["input"][0], "input_bytes": mm["input"][1], "input_esize": in_es,
               "logits": mm["logits"][0], "logits_bytes": mm["logits"][1], "logits_esize": out_es,
               "logits_count": n_logits, "image_bytes": at, "image_stride": at - mm["input"][0]}
        image[0:4 * len(HEADER_FIELDS)] = struct.pack(f"<{len(HEADER_FIELDS)}I", *(hdr[k] for k in HEADER_FIELDS))
        prog = encode_program(instrs)
        image[mm["program"][0]:mm["program"][0] + len(prog)] = prog
        for name, raw in self.blobs:
            image[mm[name][0]:mm[name][0] + len(raw)] = raw
        return Program(instrs, bytes(image), mm, self.hw, self.accel, in_shape, n_logits, in_es, out_es,
                       self.buf.peak)


def compile(graph, hw: HwConfig, accel: AccelConfig | None = None, fold_views: bool = True,  # noqa: A001
            fuse: bool = True) -> Program:
    """The program and memory image of ``graph`` on the accelerator of ``hw`` (and ``accel``);
    a graph the accelerator cannot run is refused in one line (:class:`UserError`).
    ``fold_views=False`` copies every head split and merge (SPLIT_HEADS, TRANSPOSE, MERGE_HEADS)
    instead of folding it into the MATMULs' strides; ``fuse=False`` runs every GELU and residual
    add as its own instruction instead of streaming a linear layer's results through it."""
    accel = accel or AccelConfig()
    c = _Compiler(graph, hw, accel, fold_views, fuse)
    units = c.check()
    for u in units.values():          # read for their constants' layouts, never elaborated here
        u._MustUse__silence = True
    return c.run(units)
