"""The accelerator's RTL (hwgen.accel.axi.Accelerator: the core behind an AXI4 master and
AXI4-Lite registers, in hwgen.accel.memory_model.AccelSimTop) on Verilator, driven through its
registers by cocotbext-axi's AxiLiteMaster, against the interpreter and the golden executor:

* every instruction of the digits programs (W8A8 and W4A8), each run alone from the
  interpreter's buffer state before it: the buffer after it equals the interpreter's, element
  for element (sim/accel_run.py, "instruction case");
* whole programs: the logits equal the golden executor's, with and without random
  back-pressure on every handshake of the memory;
* the same program with cocotbext-axi's AxiRam as the memory on the AXI4 master gives the same
  logits as the memory model inside the design; the registers answer as documented (ID, an
  unmapped address answers SLVERR, the interrupt clears);
* faults end in an error code and a clean stop, never a hang: an unknown opcode, a loop count
  of 0, a buffer address outside the buffer, an error response on a read (data and fetch) and
  on a write, a start while busy; after each, a good program runs correctly on the same core.

One Verilator build serves every test (cached under sim_build/ by its Verilog).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from golden.errors import UserError
from golden.executor import run_graph
from hwgen.accel.compiler import MAGIC, AccelConfig, compile
from hwgen.accel.core import AccelCore, Error
from hwgen.accel.interpreter import Machine, batch_image, header, write_input
from hwgen.accel.isa import (COUNT_BITS, POST_ADD, POST_GELU, PRE_UNIT, FLAG_EXT_SIGNED, FLAG_W_EXT, GEMM_OPS, INSTR_BYTES,
                             Instr, Opcode, Port, encode_program)
from hwgen.config import HwConfig
from sim import accel_run, runner

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not runner.have_simulator("verilator"), reason="verilator is not installed")


@pytest.fixture(scope="module")
def hw():
    return HwConfig(**json.loads((REPO / "configs" / "default.json").read_text())["hw"])


@pytest.fixture(scope="module")
def sim(hw):
    return accel_run.build(hw)          # the build sim/rtl_executor.py uses for digits


@pytest.fixture(scope="module")
def programs(hw, digits_w8a8, digits_w4a8):
    # W4A8 compiled for a W cache of 32 elements a lane: every MATMUL in two column groups (the
    # hardware's larger cache runs them as they are)
    return {"w8a8": (digits_w8a8, compile(digits_w8a8.graph, hw)),
            "w4a8": (digits_w4a8, compile(digits_w4a8.graph, hw, AccelConfig(w_cache_elems=32))),
            # every head split and merge copied, every GELU and add on its own: the opcodes the
            # default program folds away still run on the RTL
            "w8a8_plain": (digits_w8a8, compile(digits_w8a8.graph, hw, fold_views=False, fuse=False))}


def _image_with_input(program, quant, x) -> bytes:
    image = bytearray(program.image)
    write_input(image, x)
    return bytes(image)


UNFUSED = (Opcode.SPLIT_HEADS, Opcode.TRANSPOSE, Opcode.MERGE_HEADS, Opcode.GELU, Opcode.SOFTMAX)


@pytest.mark.parametrize("bits,ops", [("w8a8", None), ("w4a8", GEMM_OPS), ("w8a8_plain", UNFUSED)])
def test_every_instruction_equals_the_interpreter(sim, hw, programs, digits_images, bits, ops):
    """Every instruction at W8A8 (GELUs and adds streaming beside the GEMM); at W4A8 the GEMM
    ones (the rest are the same units on the same widths; the whole W4A8 program runs below);
    of the program with nothing folded or fused, the first instruction of each opcode the
    default program does not have."""
    quant, program = programs[bits]
    image = _image_with_input(program, quant, quant.quantize_input(digits_images.images[:1])[0])
    seen = set()

    def keep(k, ins):
        if ops is not None and (ins.op not in ops or (bits == "w8a8_plain" and ins.op in seen)):
            return False
        seen.add(ins.op)
        return True

    found = accel_run.instruction_cases(program, image, hw, keep=keep)
    cases, wants = [c for _, c, _ in found], [w for _, _, w in found]
    kinds = {Opcode[c.name.split(":")[1]] for c in cases}
    assert kinds == set(ops) if ops else set(Opcode) - {Opcode.END} - set(UNFUSED) <= kinds
    if bits == "w8a8":         # every unit beside the GEMM: after it, and before it on both GEMMs
        assert {POST_GELU, POST_ADD, PRE_UNIT} <= {i.post for i in program.instrs}
        assert {i.op for i in program.instrs if i.post == PRE_UNIT} == set(GEMM_OPS)
    results = accel_run.run_cases(sim, cases, f"instructions_{bits}")
    bad = []
    for c, want, r in zip(cases, wants, results):
        got = accel_run.elements(r["read"][0])
        if not (r["done"] and r["error"] == 0 and torch.equal(got, want)):
            diff = (got != want).nonzero().flatten()
            bad.append(f"{c.name}: error {r['error']}, {len(diff)} elements differ"
                       + (f" (first at {int(diff[0])}: {int(got[diff[0]])} != {int(want[diff[0]])})" if len(diff) else ""))
    assert not bad, "\n".join(bad)


def _short_rows(image: bytes, ins: Instr, k: int, hw: HwConfig) -> tuple[bytes, Instr]:
    """``ins`` (a GEMM) with its loop count K set to ``k``; a LayerNorm before the array then
    takes ``k`` constant beats, the last flag on beat k - 1 (the unit reads a layer's channel
    count from that flag), written into a copy of ``image``."""
    one = replace(ins, n=(*ins.n[:3], k, *ins.n[4:]))
    if not (ins.op == Opcode.LINEAR and ins.post == PRE_UNIT):
        return image, one
    image, _ = accel_run.flag_layernorm_last(image, ins, hw, k, k - 1)
    return image, replace(one, cnt=k)


def test_gemms_of_the_shortest_rows_equal_the_interpreter(sim, hw, programs, digits_images):
    """The shortest operand rows the GEMM walks, on each of the digits program's GEMM shapes (a
    LINEAR with W from memory, a MATMUL with W from the buffer; the LayerNorm or the Softmax
    before the array; the GELU or the add after it): the first instruction of each shape, from
    the interpreter's buffer before it, with K = 1 (A's lane memories and the W cache hold one
    element a lane; the Softmax normalizes rows of one element), and with K = 2 for the
    LayerNorm, whose rows have 2 channels or more."""
    quant, program = programs["w8a8"]
    image = _image_with_input(program, quant, quant.quantize_input(digits_images.images[:1])[0])
    elems = program.buffer_peak
    shapes, cases, wants = set(), [], []
    for k, ins, before, _ in accel_run.trace(image, hw):
        shape = (ins.op, ins.post, bool(ins.flags & FLAG_W_EXT))
        if ins.op not in GEMM_OPS or shape in shapes:
            continue
        shapes.add(shape)
        img, one = _short_rows(image, ins, 2 if ins.op == Opcode.LINEAR and ins.post == PRE_UNIT else 1, hw)
        case, want = _changed_instruction_case(img, one, before, elems, hw, f"{k}:{ins.op.name}:post {ins.post}:K={one.n[3]}")
        cases.append(case)
        wants.append(want)
    assert {(Opcode.LINEAR, PRE_UNIT), (Opcode.MATMUL, PRE_UNIT), (Opcode.LINEAR, POST_GELU),
            (Opcode.LINEAR, POST_ADD)} <= {(op, post) for op, post, _ in shapes}
    assert {w_ext for *_, w_ext in shapes} == {True, False}
    _assert_buffers_equal(cases, wants, accel_run.run_cases(sim, cases, "gemm_short_rows"))


def test_matmuls_of_other_row_block_counts_back_to_back_equal_the_interpreter(sim, hw, programs, digits_images):
    """The digits program's first MATMUL, then the same MATMUL with one row block (its M cut to
    one row), then the first again, each a start of its own on one core: W's feeder starts each
    instruction afresh (its batch-end flag once ran on from the instruction before: on that
    RTL the second and third gave 51 and 865 wrong elements, done and no error)."""
    quant, program = programs["w8a8"]
    image = _image_with_input(program, quant, quant.quantize_input(digits_images.images[:1])[0])
    elems = program.buffer_peak
    k, ins, before, _ = next(t for t in accel_run.trace(image, hw) if t[1].op == Opcode.MATMUL)
    assert ins.n[1] > hw.gemm_rows, "the MATMUL has one row block: the test would not change its count"
    cases, wants = [], []
    for variant in (ins, replace(ins, n=(ins.n[0], 1, *ins.n[2:])), ins):
        case, want = _changed_instruction_case(image, variant, before, elems, hw, f"{k}:MATMUL:M={variant.n[1]}:{len(cases)}",
                                               max_cycles=200_000)
        cases.append(case)
        wants.append(want)
    _assert_buffers_equal(cases, wants, accel_run.run_cases(sim, cases, "matmul_row_blocks"))


def _changed_instruction_case(image: bytes, ins: Instr, before: torch.Tensor, elems: int, hw: HwConfig, name: str,
                              **case) -> tuple[accel_run.Case, torch.Tensor]:
    """A :class:`accel_run.Case` that runs ``ins`` (an instruction changed from the program's)
    alone from buffer state ``before``, and the interpreter's buffer after it."""
    mach = Machine(bytearray(image), hw, AccelConfig())
    mach.buf = before.clone()
    mach.step(ins)
    img, prog, read = accel_run.snapshot_program(image, ins, before, elems)
    return accel_run.Case(name, img, prog, [read], **case), mach.buf[:elems]


def _assert_buffers_equal(cases, wants, results):
    """Each case done without an error, the buffer it read back equal to the interpreter's."""
    bad = [f"{c.name}: done {r['done']}, error {r['error']}, "
           f"{int((accel_run.elements(r['read'][0]) != want).sum())} elements differ"
           for c, want, r in zip(cases, wants, results)
           if not (r["done"] and r["error"] == 0 and torch.equal(accel_run.elements(r["read"][0]), want))]
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def sim_new_reads(hw):
    # the verification build: a block RAM read returns the data written in that cycle, where the
    # generated design's returns the old data (hwgen.accel.core.AccelCore's read_during_write)
    return accel_run.build(hw, read_during_write="new")


@pytest.mark.parametrize("bits,index,stall,images", [("w8a8", 0, 0, 3), ("w4a8", 3, 96, 1)])
def test_whole_program_logits_equal_golden(sim, programs, digits_images, bits, index, stall, images):
    """``stall`` / 256: probability that the memory model holds each of its readies and valids
    low.  ``images`` per start (the IMAGES register): each image's logits at its own place."""
    _check_whole_program(sim, "program", programs, digits_images, bits, index, stall, images)


@pytest.mark.parametrize("bits,index,stall", [("w8a8", 1, 0), ("w4a8", 4, 96), ("w8a8_plain", 5, 0)])
def test_no_block_ram_read_in_the_cycle_of_its_write_reaches_a_result(sim_new_reads, programs, digits_images,
                                                                      bits, index, stall):
    """The block RAMs carry ``no_rw_check`` (``hwgen.bram.NO_COLLISION``): synthesis builds
    nothing for a read of an address in the cycle it is written, so what that read returns is
    the block RAM's to choose.  On the verification build such reads return the data written
    (the generated design's: the old data), and the whole digits programs (W8A8; W4A8 with its
    MATMULs in two W cache groups and the memory's stalls; every copy and unit op on its own)
    still give the golden logits: no such read of the buffer, operand A's lane memories or the
    W cache reaches a result.  (The next test shows this build sees one that does.)"""
    _check_whole_program(sim_new_reads, "new_reads", programs, digits_images, bits, index, stall, 1)


def test_the_verification_build_sees_a_read_in_the_cycle_of_its_write(sim, sim_new_reads, programs, hw):
    """A copy written a few elements above its own source (an instruction the interpreter
    refuses) reads, at some distance, the element that its own write stores in that cycle: the
    two builds then leave different buffers, so the test above can fail."""
    _, program = programs["w8a8"]
    elems, unit, cases = program.buffer_peak, (0, 0, 0, 0, 1), []
    before = torch.randint(-1 << 15, 1 << 15, (elems,), generator=torch.Generator().manual_seed(0))
    for d in range(1, 17):
        over = Instr(Opcode.CONCAT, (1, 1, 1, 1, 256), dst=Port(d, unit), src0=Port(0, unit))
        with pytest.raises(UserError, match="dst apart from its sources"):
            Machine(bytearray(program.image), hw, AccelConfig()).step(over)
        img, prog, read = accel_run.snapshot_program(program.image, over, before, elems)
        cases.append(accel_run.Case(f"copy to src0 + {d}", img, prog, [read]))
    runs = [accel_run.run_cases(b, cases, name) for b, name in ((sim, "overlap_old"), (sim_new_reads, "overlap_new"))]
    assert all(r["done"] and r["error"] == 0 for rs in runs for r in rs)
    differ = [c.name for c, old, new in zip(cases, *runs) if old["read"] != new["read"]]
    assert differ, "no distance made a read meet its own write"


def _check_whole_program(sim, prefix, programs, digits_images, bits, index, stall, images):
    quant, program = programs[bits]
    x = quant.quantize_input(digits_images.images[index:index + images])
    golden = run_graph(quant.graph, x)
    h = header(program.image)
    image = batch_image(program.image, images)
    for k in range(images):
        write_input(image, x[k], k)
    nbytes = h["logits_count"] << h["logits_esize"]
    case = accel_run.Case(f"{bits}_{index}", bytes(image), h["program"],
                          [(h["logits"] + k * h["image_stride"], nbytes) for k in range(images)], stall=stall,
                          images=images, image_stride=h["image_stride"])
    r = accel_run.run_cases(sim, [case], f"{prefix}_{bits}_{index}_{stall}_{images}")[0]
    assert r["done"] and r["error"] == 0, r
    for k in range(images):
        assert torch.equal(accel_run.elements(r["read"][k], 1 << h["logits_esize"]), golden[k]), f"image {k}"
    # the per-op counters cover the run but for instruction fetch and decode (77 instructions)
    extra = r["cycles"] - sum(r["op_cycles"])
    assert 0 < extra < 0.05 * r["cycles"], r


def test_axi_ram_and_the_memory_model_give_the_same_logits(sim, programs, digits_images):
    quant, program = programs["w8a8"]
    x = quant.quantize_input(digits_images.images[2:3])
    golden = run_graph(quant.graph, x)[0]
    h = header(program.image)
    case = accel_run.Case("axi", _image_with_input(program, quant, x[0]), h["program"],
                          [(h["logits"], h["logits_count"] << h["logits_esize"])])
    runs = {mem: accel_run.run_cases(sim, [case], f"memory_{mem}", memory=mem)[0] for mem in ("axi", "model")}
    for mem, r in runs.items():
        assert r["done"] and r["error"] == 0 and not r["busy"], (mem, r)
        assert torch.equal(accel_run.elements(r["read"][0], 1 << h["logits_esize"]), golden), mem
        assert r["id"] == MAGIC and r["unmapped_resp"] == 2, r        # ID register; SLVERR
        assert r["irq"] == 1 and r["irq_after_clear"] == 0, r
    assert runs["axi"]["read"] == runs["model"]["read"]


# --- faults ------------------------------------------------------------------------------------

DATA = 4096          # byte address of the good program's data in the small images
OUT = 8192


def _small_image(code: list[Instr], data: bytes = b"") -> bytes:
    img = bytearray(OUT + 4096)
    prog = encode_program(code)
    img[:len(prog)] = prog
    img[DATA:DATA + len(data)] = data
    return bytes(img)


def _good_case(name: str) -> tuple[accel_run.Case, bytes]:
    """LOAD 64 int16 values, copy them reversed, STORE them: proves the core runs after a fault."""
    vals = torch.arange(-32, 32, dtype=torch.int16) * 997
    unit = (0, 0, 0, 0, 1)
    walk = (1, 1, 1, 1, 64)
    code = [Instr(Opcode.LOAD, walk, Port(100, unit), Port(0, unit), flags=FLAG_EXT_SIGNED, esize=1, ext0=DATA),
            Instr(Opcode.CONCAT, walk, Port(1000, unit), Port(100 + 63, (0, 0, 0, 0, -1))),
            Instr(Opcode.STORE, walk, Port(0, unit), Port(1000, unit), esize=1, ext0=OUT),
            Instr(Opcode.END)]
    want = vals.flip(0).numpy().astype("<i2").tobytes()
    return accel_run.Case(name, _small_image(code, vals.numpy().astype("<i2").tobytes()), 0, [(OUT, 128)]), want


def test_a_run_leaves_no_files_behind(sim, monkeypatch, tmp_path):
    """``run_cases`` hands the testbench its images as files: the folder goes when the run ends
    (it was left in /tmp, up to 10 MB a run)."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    case, want = _good_case("copy")
    result, = accel_run.run_cases(sim, [case], "leaves_no_files")
    assert result["error"] == 0 and result["read"][0] == want
    assert not list(tmp_path.glob("accel_cases_*")), "the images' folder was left behind"


def test_faults_end_in_an_error_code_and_a_clean_stop(sim, hw, programs, digits_images):
    unit = (0, 0, 0, 0, 1)
    load = Instr(Opcode.LOAD, (1, 1, 1, 1, 64), Port(0, unit), Port(0, unit), flags=FLAG_EXT_SIGNED, esize=1,
                 ext0=DATA)
    bad_opcode = bytearray(_small_image([load, Instr(Opcode.END)]))
    bad_opcode[INSTR_BYTES] = 63                                 # opcode field: 6 bits at bit 0
    depth = AccelConfig().act_buffer_elems
    faults = {
        "opcode": (bytes(bad_opcode), {}, Error.OPCODE, INSTR_BYTES),
        "count": (_small_image([load, Instr(Opcode.IM2COL, (1, 0, 1, 1, 4), Port(0, unit), Port(0, unit))]), {},
                  Error.COUNT, INSTR_BYTES),
        "address": (_small_image([load, Instr(Opcode.IM2COL, (1, 1, 1, 1, 4), Port(depth - 2, unit), Port(0, unit)),
                                  Instr(Opcode.END)]), {}, Error.ADDRESS, INSTR_BYTES),
        "read_data": (_small_image([load, Instr(Opcode.END)]), {"err": (DATA // 8 + 3, DATA // 8 + 4)},
                      Error.READ, 0),
        "read_fetch": (_small_image([load, Instr(Opcode.END)]), {"err": (INSTR_BYTES // 8, INSTR_BYTES // 8 + 1)},
                       Error.READ, INSTR_BYTES),
        "write": (_small_image([load, Instr(Opcode.STORE, (1, 1, 1, 1, 64), Port(0, unit), Port(0, unit), esize=1,
                                            ext0=OUT), Instr(Opcode.END)]),
                  {"err": (OUT // 8 + 5, OUT // 8 + 6)}, Error.WRITE, INSTR_BYTES),
    }
    quant, program = programs["w8a8"]
    busy_image = _image_with_input(program, quant, quant.quantize_input(digits_images.images[:1])[0])
    cases, checks = [], []
    for name, (image, kw, code, pc) in faults.items():
        cases.append(accel_run.Case(name, image, 0, [], max_cycles=100_000, **kw))
        checks.append((name, code, pc))
        good, want = _good_case(f"after_{name}")
        cases.append(good)
        checks.append((good.name, want, None))
    # a LayerNorm's constants with the last flag one beat early (the interpreter refuses such a
    # program; the core must stop on it, not wait for ever)
    at, ln = next((k, i) for k, i in enumerate(program.instrs) if i.op == Opcode.LINEAR and i.post == PRE_UNIT)
    flag_early, _ = accel_run.flag_layernorm_last(busy_image, ln, hw, ln.cnt, ln.cnt - 2)
    prog = header(busy_image)["program"]
    cases.append(accel_run.Case("layernorm_last", flag_early, prog, [], max_cycles=200_000))
    checks.append(("layernorm_last", Error.CONST, prog + at * INSTR_BYTES))
    good, want = _good_case("after_layernorm_last")
    cases.append(good)
    checks.append((good.name, want, None))
    cases.append(accel_run.Case("busy", busy_image, header(busy_image)["program"], [], start_again_after=5000))
    checks.append(("busy", Error.BUSY, None))
    good, want = _good_case("after_busy")
    cases.append(good)
    checks.append((good.name, want, None))

    results = accel_run.run_cases(sim, cases, "faults")
    for (name, expect, pc), r in zip(checks, results):
        assert r["done"] == 1, f"{name}: no done within {r['cycles']} cycles (a hang)"
        if isinstance(expect, bytes):
            assert r["error"] == 0 and r["read"][0] == expect, f"{name}: the core does not run correctly after the fault"
        else:
            assert r["error"] == expect, f"{name}: error {r['error']}, expected {int(expect)} ({expect.name})"
            if pc is not None:
                assert r["pc"] == pc, f"{name}: stopped at 0x{r['pc']:x}, expected the faulty instruction at 0x{pc:x}"


def test_the_simulated_accelerator_is_the_committed_rtl(hw, monkeypatch, tmp_path):
    """Accelerator simulations of the default configuration run rtl/accelerator.v itself (the file
    of record, not a second elaboration); another configuration, or an edited file, is
    elaborated instead."""
    from hwgen import generate
    monkeypatch.setattr(generate, "elaborate_accelerator",
                        lambda hw, accel=None, read_during_write="old": {"verilog": "// elaborated accelerator\n"})
    committed = (REPO / "rtl" / "accelerator.v").read_text()
    assert accel_run.accelerator_verilog(hw, AccelConfig()) == committed
    assert accel_run.accelerator_verilog(hw, AccelConfig(gelu_variants=(hw.gelu_variant,))) == committed
    assert accel_run.accelerator_verilog(hw, AccelConfig(w_cache_elems=32)) == "// elaborated accelerator\n"
    assert accel_run.accelerator_verilog(hw, AccelConfig(), "new") == "// elaborated accelerator\n"
    edited = tmp_path / "rtl"
    shutil.copytree(REPO / "rtl", edited)
    monkeypatch.setattr(accel_run, "RTL", edited)
    assert accel_run.accelerator_verilog(hw, AccelConfig()) == committed      # the copy, unedited
    (edited / "accelerator.v").write_text(committed + "// an edit\n")
    assert accel_run.accelerator_verilog(hw, AccelConfig()) == "// elaborated accelerator\n"


def test_only_the_top_ports_are_public_and_a_register_resets_the_design(sim):
    """Verilator re-evaluates, at every eval (twice a clock period), all logic that reads a
    public signal or a top-level input.  The build makes the top's ports alone public, and the
    accelerator and the memory model are reset by a registered copy of rst, so that their
    logic stays out of that region (with every signal of the top public, or the rst port
    wired in, it was the whole accelerator: 15% of the run time)."""
    vlt = (sim.build_dir / "waivers.vlt").read_text()
    public = re.findall(r'public_flat_rw -module "([^"]+)" -var "([^"]+)"', vlt)
    text = sim.verilog.read_text()
    ports = runner._port_names(text, accel_run.TOP)
    assert {"clk", "rst", "use_model", "host_we", "irq", "s_axil_awvalid", "m_axi_rdata"} <= set(ports)
    assert sorted(public) == sorted((accel_run.TOP, p) for p in ports)
    top = text[text.index(f"module {accel_run.TOP}("):]
    top = top[:top.index("endmodule")]
    assert re.search(r"\.rst\(rst_q\)", top) and not re.search(r"\.\w*rst\(rst\)", top)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 9, 12, 17, 24])
def test_tile_counts_are_exact_for_any_array_size(size):
    """ceil(n / size) of every 16-bit count, as the core's decode builds it (its numerator
    register ``n + size - 1``, then the expression of ``AccelCore._tiles_of`` evaluated on
    integers): a shift for a power of two, a product with a reciprocal otherwise (an array of 9
    rows holds 17 tokens in 2 blocks)."""
    n = np.arange(1 << COUNT_BITS, dtype=np.int64)
    assert np.array_equal(AccelCore._tiles_of(n + size - 1, size), -(-n // size))


def test_the_accelerator_has_no_divider():
    """yosys builds a division as a chain of subtractors, a path of hundreds of LUTs: the
    committed accelerator (9 rows, so its tile counts are not shifts) has no ``/`` or ``%``."""
    text = (REPO / "rtl" / "accelerator.v").read_text()
    assert not re.search(r"[^/*]\s/\s|\s%\s", text)
