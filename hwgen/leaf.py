"""Leaf modules: components that the accelerator instantiates by name (an amaranth ``Instance``)
and whose definitions are emitted beside its Verilog, a behavioural one that every simulation
runs and a vendor one that an ECP5 flow reads over it (:mod:`hwgen.dsp`, :mod:`hwgen.bram`)."""

from __future__ import annotations

import re

from amaranth.hdl import ClockDomain, ClockSignal
from amaranth.lib import wiring

__all__ = ["Leaf", "convert", "defined"]


class Leaf(wiring.Component):
    """A leaf's component: ``name`` is its module name; its ``clk`` port drives a clock domain
    of its own (no reset port)."""

    name: str

    def _clock(self, m):
        m.domains.sync = ClockDomain(reset_less=True, local=True)
        m.d.comb += ClockSignal().eq(self.clk)


def convert(leaves) -> str:
    """The Verilog of ``leaves``, each as module ``leaf.name``."""
    from amaranth.back import verilog

    return "".join(verilog.convert(leaf, name=leaf.name, emit_src=False) for leaf in leaves)


def defined(text: str, prefix: str) -> set[str]:
    """The modules named ``prefix...`` that ``text`` defines."""
    return set(re.findall(rf"^module ({prefix}\w+)", text, re.M))
