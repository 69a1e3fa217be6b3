"""The accelerator's program side: the ISA round-trips, the compiler's image run by the
interpreter reproduces the golden logits bit for bit, and what the compiler or the interpreter
refuses is refused in one line."""

import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from golden.errors import UserError
from golden.executor import run_graph
from hwgen.accel.compiler import AccelConfig, compile
from hwgen.accel.interpreter import Machine, header, interpret, read_logits, run, write_input
from hwgen.accel.isa import (FIELDS, INSTR_BYTES, LAYOUT, LEVELS, MOVE_OPS, POST_ADD, POST_GELU, PRE_UNIT, Instr, Opcode, Port,
                             decode, encode)
from hwgen.config import HwConfig
from sim.accel_run import flag_layernorm_last

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 3


@pytest.fixture(scope="module")
def hw():
    """The committed configuration (digits W8A8 and W4A8 in one set of units)."""
    return HwConfig(**json.loads((REPO / "configs" / "default.json").read_text())["hw"])


@pytest.fixture(scope="module")
def programs(hw, digits_w8a8, digits_w4a8):
    return {"w8a8": (digits_w8a8, compile(digits_w8a8.graph, hw)), "w4a8": (digits_w4a8, compile(digits_w4a8.graph, hw))}


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# --- the ISA -----------------------------------------------------------------------------------

def _field(width: int, sgn: bool):
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if sgn else (0, (1 << width) - 1)
    return st.one_of(st.sampled_from([lo, hi, 0]), st.integers(lo, hi))


_W = {name: _field(width, sgn) for name, width, sgn in FIELDS}


def _port(name):
    return st.builds(Port, _W[name], st.tuples(*[_W[f"{name}_s{d}"] for d in range(LEVELS)]))


# every field at any value that fits (its extremes included), for every opcode
instrs = st.builds(Instr, st.sampled_from(list(Opcode)), st.tuples(*[_W[f"n{d}"] for d in range(LEVELS)]),
                   _port("dst"), _port("src0"), _port("src1"), _W["unit"], _W["flags"], _W["a_bits"],
                   _W["w_bits"], _W["esize"], _W["ext0"], _W["ext1"], _W["cnt"])


@settings(max_examples=300, deadline=None, database=None)
@given(instrs)
def test_encode_decode_round_trip(ins):
    raw = encode(ins)
    assert len(raw) == INSTR_BYTES == 64
    assert decode(raw) == ins


@pytest.mark.parametrize("op", list(Opcode))
def test_every_opcode_round_trips(op):
    ins = Instr(op, (1, 2, 3, 4, 5), Port(7, (1, -1, 2, -2, 3)), unit=1, cnt=9, ext0=64)
    assert decode(encode(ins)) == ins


def test_layout_is_the_field_table():
    """The Amaranth layout that will drive the RTL decoder has the table's fields, in order."""
    at = 0
    for name, width, sgn in FIELDS:
        f = LAYOUT[name]
        assert (f.offset, f.shape.width, f.shape.signed) == (at, width, sgn)
        at += width
    assert LAYOUT.size == at == 512


def test_field_that_does_not_fit_is_refused():
    with pytest.raises(UserError) as exc:
        encode(Instr(Opcode.LINEAR, (1, 1 << 16, 1, 1, 1), note="blocks.0.fc1"))
    msg = _one_line(exc)
    assert "n1" in msg and "65536" in msg and "blocks.0.fc1" in msg
    with pytest.raises(UserError) as exc:
        encode(Instr(Opcode.IM2COL, dst=Port(0, (0, 0, 0, 0, -(1 << 17) - 1))))
    assert "dst_s4" in _one_line(exc)


def test_unknown_opcode_is_refused():
    raw = bytearray(encode(Instr(Opcode.END)))
    raw[0] = (raw[0] & ~0x3F) | 63
    with pytest.raises(UserError) as exc:
        decode(bytes(raw), " at 0x40")
    assert "unknown opcode 63 at 0x40" in _one_line(exc)


# --- compile + interpret = golden ---------------------------------------------------------------

@pytest.mark.parametrize("bits", ["w8a8", "w4a8"])
def test_interpreter_equals_golden(programs, digits_images, bits):
    quant, program = programs[bits]
    x = quant.quantize_input(digits_images.images[:N_IMAGES])
    golden = run_graph(quant.graph, x)
    assert torch.equal(interpret(program, x), golden)


def test_views_and_fused_units_change_the_program_not_the_logits(hw, programs, digits_w8a8, digits_images):
    """Folded head splits/merges, GELU/adds streamed after the GEMM and Softmax/LayerNorms
    before it: fewer instructions, fewer buffer elements, the same logits as every op on its
    own."""
    _, program = programs["w8a8"]
    plain = compile(digits_w8a8.graph, hw, fold_views=False, fuse=False)
    ops = lambda p: [i.op for i in p.instrs]  # noqa: E731
    blocks = sum(1 for op in digits_w8a8.graph.ops if op.type == "split_heads")
    for gone in (Opcode.SPLIT_HEADS, Opcode.TRANSPOSE, Opcode.MERGE_HEADS, Opcode.GELU):
        assert gone in ops(plain) and gone not in ops(program)
    assert ops(plain).count(Opcode.ADD) - ops(program).count(Opcode.ADD) == 2 * blocks
    assert sum(i.post == POST_GELU for i in program.instrs) == blocks
    assert sum(i.post == POST_ADD for i in program.instrs) == 2 * blocks
    # every Softmax before its MATMUL (attention x V); norm1 before qkv and the final norm before
    # the head (norm2 stays: fc1 streams its results through the GELU)
    assert Opcode.SOFTMAX in ops(plain) and Opcode.SOFTMAX not in ops(program)
    assert sum(i.post == PRE_UNIT and i.op == Opcode.MATMUL for i in program.instrs) == blocks
    assert sum(i.post == PRE_UNIT and i.op == Opcode.LINEAR for i in program.instrs) == blocks + 1
    assert ops(plain).count(Opcode.LAYERNORM) - ops(program).count(Opcode.LAYERNORM) == blocks + 1
    assert program.buffer_peak < plain.buffer_peak
    x = digits_w8a8.quantize_input(digits_images.images[:N_IMAGES])
    assert torch.equal(interpret(program, x), interpret(plain, x))


def test_matmul_split_into_column_groups_that_fit_the_w_cache(hw, programs, digits_w8a8, digits_images):
    """A W cache of 32 elements a lane holds two column tiles of K = 16: every MATMUL becomes
    two instructions (the second at a column offset), with the same logits; a K above the
    cache is refused in one line."""
    _, program = programs["w8a8"]
    small = compile(digits_w8a8.graph, hw, AccelConfig(w_cache_elems=32))
    count = lambda p: sum(i.op == Opcode.MATMUL for i in p.instrs)  # noqa: E731
    assert count(small) == 2 * count(program)
    assert all(i.n[2] * i.n[3] <= 32 * hw.gemm_cols for i in small.instrs if i.op == Opcode.MATMUL)
    x = digits_w8a8.quantize_input(digits_images.images[:N_IMAGES])
    assert torch.equal(interpret(small, x), interpret(program, x))
    with pytest.raises(UserError) as exc:
        compile(digits_w8a8.graph, hw, AccelConfig(w_cache_elems=16))
    assert "K = 17" in _one_line(exc) and "w_cache_elems = 16" in str(exc.value)


def test_memory_map_and_header(programs):
    _, program = programs["w8a8"]
    h = header(program.image)
    mm = program.memory_map
    assert h["program"] == mm["program"][0] and h["n_instr"] == len(program.instrs)
    assert h["input"] == mm["input"][0] and h["logits"] == mm["logits"][0]
    assert h["image_bytes"] == len(program.image)
    spans = sorted(mm.values())
    for (a, n), (b, _) in zip(spans, spans[1:]):        # regions aligned and disjoint
        assert a % 64 == 0 and a + n <= b
    assert program.instrs[-1].op == Opcode.END
    assert program.buffer_peak <= program.accel.act_buffer_elems


def test_unknown_opcode_in_the_image_stops_in_one_line(programs, digits_images, digits_w8a8):
    _, program = programs["w8a8"]
    image = bytearray(program.image)
    at = header(image)["program"] + 5 * INSTR_BYTES
    image[at] = (image[at] & ~0x3F) | 0                     # opcode 0 is illegal
    write_input(image, digits_w8a8.quantize_input(digits_images.images[:1])[0])
    with pytest.raises(UserError) as exc:
        run(image, program.hw, program.accel)
    msg = _one_line(exc)
    assert "unknown opcode 0" in msg and "instruction 5" in msg


def test_layernorm_constants_without_their_last_flag_stop_in_one_line(programs, digits_images, digits_w8a8):
    """The LayerNorm unit counts a layer's channels up to the constant beat flagged last; a
    program whose flag sits elsewhere (here one beat early) would leave it waiting on the
    hardware, so the interpreter, the check of a program, refuses it."""
    _, program = programs["w8a8"]
    hw = program.hw
    ins = next(i for i in program.instrs if i.op == Opcode.LINEAR and i.post == PRE_UNIT)
    moved, compiled = flag_layernorm_last(program.image, ins, hw, ins.cnt, ins.cnt - 2)
    assert compiled == [0] * (ins.cnt - 1) + [1]
    image = bytearray(moved)
    write_input(image, digits_w8a8.quantize_input(digits_images.images[:1])[0])
    with pytest.raises(UserError) as exc:
        run(image, hw, program.accel)
    msg = _one_line(exc)
    assert f"flag beats [{ins.cnt - 2}] as the last" in msg and f"beat {ins.cnt - 1} alone" in msg


def test_an_instruction_that_writes_where_it_reads_is_refused(programs):
    """The accelerator's block RAMs are built for no read of an address in the cycle it is
    written (hwgen.bram.NO_COLLISION), so an instruction's dst may not overlap what it
    reads: a data move written over its own source, and an add over its second operand, are
    refused in one line; the compiled programs have none."""
    _, program = programs["w8a8"]
    move = next(i for i in program.instrs if i.op in MOVE_OPS)
    add = next(i for i in program.instrs if i.op == Opcode.LINEAR and i.post == POST_ADD)
    for ins, src in ((replace(move, dst=move.src0), "src0"), (replace(add, dst=Port(add.src1.base, add.dst.strides)), "src1")):
        mach = Machine(bytearray(program.image), program.hw, program.accel)
        with pytest.raises(UserError) as exc:
            mach.step(ins)
        msg = _one_line(exc)
        assert f"that {src} reads in the same instruction" in msg and "dst apart from its sources" in msg


def test_corrupted_weight_changes_the_logits(programs, digits_images, digits_w8a8):
    """One flipped bit in one weight beat of the head is seen: the image is what runs."""
    _, program = programs["w8a8"]
    x = digits_w8a8.quantize_input(digits_images.images[:1])
    good = interpret(program, x)
    addr, _ = program.memory_map["head.weights"]
    image = bytearray(program.image)
    image[addr + 8 * 3] ^= 0x40                             # beat (nt 0, k 3), lane 0: W[0, 3] += or -= 64
    write_input(image, x[0])
    run(image, program.hw, program.accel)
    assert not torch.equal(read_logits(image), good)


def test_graph_too_big_for_the_buffer_is_refused(hw, digits_w8a8):
    with pytest.raises(UserError) as exc:
        compile(digits_w8a8.graph, hw, AccelConfig(act_buffer_elems=4096))
    msg = _one_line(exc)
    assert "act_buffer_elems = 4096" in msg and "short by" in msg


def test_weight_buffer_and_missing_unit_are_refused(hw, digits_w8a8):
    with pytest.raises(UserError) as exc:
        compile(digits_w8a8.graph, hw, AccelConfig(weight_buffer_words=256))
    assert "blocks.0.fc2" in _one_line(exc) and "weight_buffer_words = 256" in str(exc.value)
    with pytest.raises(UserError) as exc:
        compile(digits_w8a8.graph, hw, AccelConfig(gelu_variants=("lut",)))
    assert "GELU variant 'iptq' has no unit" in _one_line(exc)


def test_unknown_gemm_multiplier_is_refused():
    with pytest.raises(UserError) as exc:
        AccelConfig(gemm_mult="dsp48")
    assert _one_line(exc) == "accel config: gemm_mult = 'dsp48' is not accepted; accepted lut, dsp"


def test_foreign_image_is_refused():
    with pytest.raises(UserError) as exc:
        header(bytearray(struct.pack("<16I", *range(16))))
    assert "not a compiled program" in _one_line(exc)
