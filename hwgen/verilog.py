"""Verilog emission of the generated units (no absolute paths: ``emit_src=False``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Elaboratable
from amaranth.lib import wiring

__all__ = ["emit_verilog", "write_verilog", "source_hash", "Harness", "LINT_WAIVERS", "lint"]

# Verilator -Wall on Amaranth's Verilog: the only warnings are these rules, each a
# property of how Amaranth writes Verilog, not of the design.  Every other rule stays on.
LINT_WAIVERS = """`verilator_config
// WIDTHEXPAND: Amaranth sizes every intermediate exactly and relies on Verilog's context
// widening of the narrower operand (a 17-bit term in a 19-bit sum, a 6-bit constant in an
// 8-bit compare); widening is lossless and intended.  WIDTHTRUNC stays enabled.
lint_off -rule WIDTHEXPAND
// PROCASSINIT: Amaranth declares each register with its reset value as initializer
// (reg x = 1'h0;) and assigns it in an always block; the initializer is the power-on value.
lint_off -rule PROCASSINIT
// UNUSEDSIGNAL: Amaranth names intermediate wires (and per-lane views of packed payloads)
// of which only a slice is used, e.g. the kept bits of a rounding shift.
lint_off -rule UNUSEDSIGNAL
// DECLFILENAME: Amaranth writes a unit's library submodules (the GEMM's output queue, an
// amaranth.lib.fifo.SyncFIFOBuffered) into the unit's file as modules named <unit>.<sub>.
lint_off -rule DECLFILENAME
// CASEINCOMPLETE: Amaranth writes each signal assigned under a Switch, an FSM state or an
// Array index as its own always @* block that first assigns the signal's default and then
// has a casez over the cases that change it; the cases it leaves out keep the default, so
// no latch is inferred (e.g. `req__valid = 1'h0; casez (seq_state) ...`).
lint_off -rule CASEINCOMPLETE
"""


def emit_verilog(top: Elaboratable, name: str) -> str:
    """Verilog text of ``top`` as module ``name`` (ports from its signature), followed by the
    behavioural definitions of the leaf modules it instantiates (:mod:`hwgen.dsp`,
    :mod:`hwgen.bram`)."""
    from . import bram, dsp

    text = verilog.convert(top, name=name, emit_src=False)
    return text + dsp.leaf_definitions(text) + bram.leaf_definitions(text)


def ecp5_leaf_definitions(text: str) -> str:
    """The ECP5 definitions of the leaf modules that ``text`` uses (the DSP multipliers on
    ``MULT18X18D``, the block RAMs on ``DP16KD`` with the output register on), for an ECP5 flow
    to read after ``text`` with ``read_verilog -overwrite`` ("" if none)."""
    from . import bram, dsp

    return dsp.ecp5_definitions(text) + bram.ecp5_definitions(text)


def write_verilog(top: Elaboratable, name: str, path: str | Path) -> tuple[Path, str]:
    """Write ``name.v`` (or ``path`` if it ends in .v); return the path and the text's hash."""
    path = Path(path)
    if path.suffix != ".v":
        path = path / f"{name}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = emit_verilog(top, name)
    if not path.exists() or path.read_text() != text:      # keep the file time when unchanged
        path.write_text(text)
    return path, source_hash(text)


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Harness(wiring.Component):
    """Several units side by side in one top module, for one simulator build.

    Each unit ``u`` of ``units`` (name -> component) appears as members ``<name>__<port>``
    (e.g. ``ibert_a__i__valid``): one Verilator build verifies many configurations at once.
    """

    def __init__(self, units: dict[str, wiring.Component]):
        self._units = dict(units)
        super().__init__({name: wiring.Out(u.signature) for name, u in self._units.items()})

    def elaborate(self, platform):
        from amaranth.hdl import Module

        m = Module()
        for name, u in self._units.items():
            m.submodules[name] = u
            wiring.connect(m, wiring.flipped(getattr(self, name)), u)
        return m


def lint(verilog_path: str | Path) -> tuple[int, str]:
    """``verilator --lint-only -Wall`` with :data:`LINT_WAIVERS`; returns (status, output)."""
    import subprocess

    from sim.runner import tool_env

    tool_env()
    verilog_path = Path(verilog_path)
    vlt = verilog_path.with_suffix(".vlt")
    vlt.write_text(LINT_WAIVERS)
    proc = subprocess.run(["verilator", "--lint-only", "-Wall", str(vlt), str(verilog_path)],
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr
