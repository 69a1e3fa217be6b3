"""Python side of accelerator simulations: build :class:`hwgen.accel.memory_model.AccelSimTop`
once per configuration (Verilator, cached by its Verilog), run cases through
:mod:`sim.tb_accel`, and make the cases that check one instruction at a time against the
interpreter.

An *instruction case* runs one instruction of a compiled program on the RTL from the very
buffer state the interpreter had before it: the memory image is the program's own (so the
instruction's weights and constants are where it expects them), plus a snapshot of the
interpreter's buffer and a four-instruction program, ``LOAD`` snapshot -> buffer, the
instruction, ``STORE`` buffer -> an output region, ``END``.  What the RTL stored must equal
the interpreter's buffer after the instruction, element for element.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from golden.errors import UserError
from hwgen.accel.compiler import ALIGN, AccelConfig, c_layout, post_consts
from hwgen.accel.interpreter import Machine, header, unit_model
from hwgen.accel.isa import (FLAG_EXT_SIGNED, INSTR_BYTES, Instr, Opcode, Port, beat_bytes, decode, encode_program,
                             pack_beats, unpack_beats)
from hwgen.accel.memory_model import WORDS_VERILOG, AccelSimTop
from hwgen.config import HwConfig
from hwgen.verilog import emit_verilog
from sim import runner

__all__ = ["build", "run_cases", "Case", "trace", "snapshot_program", "instruction_cases", "elements", "TOP"]

TOP = "accel_sim"
ACC_MODULE = "accelerator"      # the accelerator's module in the simulated Verilog (rtl/accelerator.v's)
RTL = Path(__file__).resolve().parent.parent / "rtl"
TB = "sim.tb_accel"


_BUILDS: dict = {}
# 1 MiB of simulated external memory: 20 digits images a start (sim.rtl_executor) or a snapshot
# program; one size for the tests and the accuracy runs, so that they share one build
WORDS = 1 << 17


def build(hw: HwConfig, accel: AccelConfig | None = None, words: int = WORDS, latency: int = 4,
          fast: bool = True, read_during_write: str = "old"):
    """The AXI accelerator with the memory model beside it (one build for both memories).

    Elaborating the design to its Verilog takes about a minute, so the Verilog is kept under
    ``sim_build/_accel/``, keyed by the parameters and :func:`hwgen.generate.generator_hash`
    (any change to a generator source makes a new one); the Verilator build is cached by the
    Verilog as every build is.  ``fast``: no trace support, -O2 (:func:`sim.runner.build`);
    whole-model runs are 2^17 cycles an image.  ``read_during_write="new"``: the accelerator's
    verification build (:class:`hwgen.accel.core.AccelCore`), elaborated here."""
    from hwgen.generate import generator_hash

    accel = accel or AccelConfig()
    key = (hw, replace(accel, gelu_variants=accel.gelus(hw)), words, latency, fast, read_during_write)
    if key not in _BUILDS or not (_BUILDS[key].build_dir / ".built").exists():
        desc = json.dumps([hw.as_dict(), asdict(key[1]), words, latency, generator_hash(), read_during_write],
                          sort_keys=True, default=str)
        vcache = runner.SIM_BUILD / "_accel" / f"{hashlib.sha256(desc.encode()).hexdigest()[:16]}.v"
        if vcache.exists():
            text = vcache.read_text()
        else:
            text = (emit_verilog(AccelSimTop(hw, accel, words=words, latency=latency, acc_module=ACC_MODULE), TOP)
                    + accelerator_verilog(hw, accel, read_during_write) + WORDS_VERILOG)
            vcache.parent.mkdir(parents=True, exist_ok=True)
            tmp = vcache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            tmp.rename(vcache)
        _BUILDS[key] = runner.build(None, TOP, params={"words": words, "latency": latency}, verilog_text=text,
                                    ports_only=True, fast=fast)
    return _BUILDS[key]


def accelerator_verilog(hw: HwConfig, accel: AccelConfig, read_during_write: str = "old") -> str:
    """The Verilog of the accelerator (module ``accelerator``) for ``hw`` and ``accel``: the
    committed ``rtl/accelerator.v`` when ``rtl/manifest.json`` says it was generated from
    these generator sources, this configuration and these buffers, and the file is unedited;
    otherwise (and for ``read_during_write="new"``) elaborated here."""
    from hwgen import generate

    assert ACC_MODULE == generate.ACCEL_TOP
    manifest = generate.verified_manifest(RTL)
    if read_during_write == "old" and manifest is not None and manifest.get("config") == hw.as_dict():
        try:
            committed = AccelConfig(**manifest["accelerator"]["accel_config"])
        except (KeyError, TypeError, UserError):
            committed = None
        if committed is not None and (replace(committed, gelu_variants=committed.gelus(hw))
                                      == replace(accel, gelu_variants=accel.gelus(hw))):
            return (RTL / manifest["accelerator"]["file"]).read_text()
    return generate.elaborate_accelerator(hw, accel, read_during_write)["verilog"]


@dataclass
class Case:
    """One run: a memory image, where its program starts, what to read back."""
    name: str
    image: bytes
    prog: int
    read: list[tuple[int, int]]
    stall: int = 0
    err: tuple[int, int] | None = None
    start_again_after: int | None = None
    max_cycles: int = 2_000_000
    images: int = 1
    image_stride: int = 0
    tag: object = None          # passed through to the result (e.g. the images' indices)


def run_cases(b, cases: list[Case], name: str, memory: str = "model", word_bytes: int = 8,
              memory_bytes: int = 1 << 20, lines: Path | None = None) -> list[dict]:
    """Run ``cases`` in one simulation, with the memory model (``"model"``) or cocotbext-axi's
    AxiRam (``"axi"``) as external memory; the testbench's result per case, ``read`` as bytes.
    ``lines``: also append each case's result there (JSON lines, ``read`` as hex) as it ends."""
    # The images go to the testbench as files, in a folder that goes when the run ends (up to 10
    # MB a run: 523 of them, left behind by earlier runs, had gathered in /tmp)
    with tempfile.TemporaryDirectory(prefix="accel_cases_") as folder:
        items = []
        for k, c in enumerate(cases):
            path = Path(folder) / f"{k}.bin"
            path.write_bytes(c.image)
            items.append({"name": c.name, "image": str(path), "prog": c.prog, "stall": c.stall, "err": c.err,
                          "start_again_after": c.start_again_after, "max_cycles": c.max_cycles,
                          "images": c.images, "image_stride": c.image_stride, "tag": c.tag,
                          "read": [list(r) for r in c.read]})
        res = runner.run(b, TB, {"memory": memory, "word_bytes": word_bytes, "memory_bytes": memory_bytes,
                                 "cases": items, "lines": str(lines) if lines else None}, name)
    out = res.get("cases", [])
    if res.get("failed") or len(out) != len(cases):
        raise RuntimeError(f"accelerator simulation {name} did not finish its cases (see {res.get('run_dir')})")
    for r in out:
        r["read"] = [bytes.fromhex(h) for h in r["read"]]
    return out


def trace(image: bytes, hw: HwConfig, accel: AccelConfig | None = None):
    """The interpreter's run of ``image``, one step at a time: yields (index, instruction,
    buffer before it, buffer after it) for every instruction before ``END``."""
    accel = accel or AccelConfig()
    img = bytearray(image)
    mach = Machine(img, hw, accel)
    pc = header(img)["program"]
    k = 0
    while True:
        ins = decode(bytes(img[pc:pc + INSTR_BYTES]))
        if ins.op == Opcode.END:
            return
        before = mach.buf.clone()
        mach.step(ins)
        yield k, ins, before, mach.buf.clone()
        pc += INSTR_BYTES
        k += 1


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def flag_layernorm_last(image: bytes, ins: Instr, hw: HwConfig, beats: int, last: int) -> tuple[bytes, list[int]]:
    """``image`` with the ``last`` flags of the first ``beats`` constant beats of ``ins``'s
    LayerNorm (a LINEAR's, before the array) set on beat ``last`` alone; returns the new image
    and the flags it had."""
    lay = c_layout(unit_model(hw, "layernorm", None))
    at, nb = post_consts(ins.ext1, -(-ins.n[2] // hw.gemm_cols), hw), beat_bytes(lay)
    consts = unpack_beats(lay, image[at:at + beats * nb])
    old = consts["last"][:, 0].tolist()
    consts["last"][:] = 0
    consts["last"][last] = 1
    img = bytearray(image)
    img[at:at + beats * nb] = pack_beats(lay, consts)
    return bytes(img), old


def snapshot_program(image: bytes, ins: Instr, before: torch.Tensor, elems: int, ebytes: int = 2):
    """An image that runs ``ins`` from buffer state ``before`` (its first ``elems`` elements);
    returns (image, program address, (output address, bytes))."""
    img = bytearray(image)
    snap = _align(len(img))
    out = _align(snap + elems * ebytes)
    prog = _align(out + elems * ebytes)
    v = before[:elems].to(torch.int64).numpy()
    img += bytes(prog - len(img))
    img[snap:snap + elems * ebytes] = v.astype(f"<i{ebytes}").tobytes()
    es = (ebytes - 1).bit_length()
    walk = (1, 1, 1, 1, elems)
    unit = (0, 0, 0, 0, 1)
    code = [Instr(Opcode.LOAD, walk, Port(0, unit), Port(0, unit), flags=FLAG_EXT_SIGNED, esize=es, ext0=snap),
            ins,
            Instr(Opcode.STORE, walk, Port(0, unit), Port(0, unit), esize=es, ext0=out),
            Instr(Opcode.END)]
    img += encode_program(code)
    return bytes(img), prog, (out, elems * ebytes)


def instruction_cases(program, image: bytes, hw: HwConfig, accel: AccelConfig | None = None, keep=None,
                      upto: int | None = None, **case) -> list[tuple[Instr, Case, torch.Tensor]]:
    """The instruction cases of ``program`` (a compiled :class:`hwgen.accel.compiler.Program`)
    run on ``image`` (its memory image with an input written): for every instruction before
    ``END`` that ``keep(index, instr)`` accepts (all when None), the instruction, its
    :class:`Case` (named ``index:OPCODE:layer``, tagged ``[index, OPCODE, layer]``: the encoded
    program has no layer names, the compiled one does) and the interpreter's buffer after it,
    ``program.buffer_peak`` elements; ``upto``: stop interpreting at that index.  ``case``: more
    :class:`Case` fields."""
    elems = program.buffer_peak
    out = []
    for k, ins, before, after in trace(image, hw, accel):
        if upto is not None and k >= upto:
            break
        if keep is not None and not keep(k, ins):
            continue
        note = program.instrs[k].note
        img, prog, read = snapshot_program(image, ins, before, elems)
        out.append((ins, Case(f"{k}:{ins.op.name}:{note}", img, prog, [read], tag=[k, ins.op.name, note], **case),
                    after[:elems]))
    return out


def elements(raw: bytes, ebytes: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw, dtype=f"<i{ebytes}").astype(np.int64))
