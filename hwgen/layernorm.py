"""Integer LayerNorm unit: the hardware of :func:`golden.layernorm.layernorm_int`.

One instance serves every LayerNorm layer of a model: the unit is generated for
*capabilities* (input width, multiplier and offset widths, output width, most channels,
row slots) and a layer's constants arrive at run time on the ``c`` stream, one beat per
channel ``{m, b, e, last}`` (``m`` = M_c, ``b`` = B_c as the graph holds them, ``e`` the
layer's shift, repeated in every beat, ``last`` = 1 on channel C-1).  The number of beats
is the layer's channel count C (2..``max_channels``); M_c and B_c go into RAMs, e and C
into registers.  ``c`` is taken only while the unit is idle (no element or row inside it,
the previous layer's last output gone); while ``c.valid`` is high, and from a layer's
first beat to its last, no data is accepted.

Per row of C signed ``in_bits`` values x (the residual stream):

=========  ==============================================================================
part       operation
=========  ==============================================================================
IN         stores x_c in a row slot of the buffer; accumulates ``S = sum x`` and
           ``Q = sum x^2`` (one element per cycle).  x^2 comes from a LUT squarer
           (``a = |x| - [x < 0]``, ``x^2 = a^2 + [x < 0] (2a + 1)``, the symmetric
           partial products of a^2) in carry-save form, and Q stays in carry-save form
           (two registers): no multiplier, no wide carry chain per element
CALC       sequential, one row at a time: ``N = 2S + C + C 2^in_bits`` (a cycle);
           ``mean = div_round(S, C) = floor(N / 2C) - 2^(in_bits-1)``, restoring
           division by the run-time 2C, one quotient bit q_k per cycle on an 11-bit
           remainder (``max_channels`` 256), the bit the sign of one subtraction;
           alongside, one cycle behind, Horner recurrences on the quotient bits
           (carry-save, one 3:2 level a cycle) build ``Z = q S``, ``Y = C q^2`` and
           ``XC = 4 C q + C`` (q = mean + 2^(in_bits-1)), so that
           ``var = Q - 2Z + Y + 2^in_bits S - 2^(in_bits-2) (XC - C) + C 2^(2 in_bits - 2)``
           (= ``sum (x - mean)^2`` exactly, modulo 2^var_bits, which holds it) is a
           9-term carry-save sum (two cycles) and one carry-propagate add;
           ``std = isqrt(var)`` digit by digit, two bits of var a cycle, on a
           (root_bits + 3)-bit remainder; ``factor = floor((2^31 - 1) / max(std, 1))``,
           restoring division, one quotient bit a cycle (std = 0 needs no max: a
           division by 0 takes every bit, 2^31 - 1, as a division by 1 does)
OUT        per channel c: ``y = x_c - mean``; ``z = y factor`` (17 x 31 bits, LUT
           partial products, three carry-save stages and a 32-bit add; exact in 32
           bits since |y| <= std); ``v = z M_c + B_c`` (the partial products of z M_c
           and B_c in one carry-save tree, three stages, one add); then
           ``u = (2v) >> e`` (barrel shifter, two levels), saturated to out_bits + 2
           bits, ``r = (u + 1) >> 1`` and the clamp (``r <= lo`` iff ``u <= 2 lo``,
           ``r >= hi`` iff ``u >= 2 hi - 1``, signs of differences): that is
           ``clamp(rshift_round(v, e), lo, hi)``, the rounding half 2^(e-1) added by
           the unit (``rshift_round_var``'s identity), for every e in 0..63
=========  ==============================================================================

The three parts work on different rows at once: the buffer has ``row_slots`` row slots
of ``2^ceil(log2 max_channels)`` entries used round robin.  OUT is a free-running pipeline
(no enable, no reset on its data registers) that writes into an output queue
(``amaranth.lib.fifo.SyncFIFOBuffered``); an element enters the pipeline only with a
credit (a queue entry not yet promised), so back-pressure never has to stop it.  The row
buffer and the M_c, B_c memories are RAMs of LUTs read in two registered steps
(:class:`_LutRam`): on ECP5 a block RAM's read (yosys leaves its output register unused)
takes 5.8 ns from the clock alone, which caps any design that reads one near 135 MHz.
Every control decision on a path of its own is a register (``in_last``, ``out_last``,
``room``, ``has_credit``, ``c.ready``, CALC's one-hot state).

``var`` is computed from the two sums instead of a second pass over the buffered row: the
identity ``sum (x - mean)^2 = sum x^2 - 2 mean sum x + C mean^2`` is exact in integers,
so the result is the same integer the golden model computes (the tests check it bit for
bit).  Widths (exact, nothing wraps): ``|y_c| <= std`` (since ``y_c^2 <= var``), hence
``|z| <= 2^31 - 1``; ``var <= C ((2^in_bits - 1)^2 + 1) / 4`` (Popoviciu's bound plus the
rounding of the mean) sets ``var_bits`` (38 for 256 channels of 16 bits) and the root
width ``root_bits = ceil(var_bits / 2)`` (19).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.errors import UserError
from golden.layernorm import FACTOR_BITS

from .config import check_range
from .pipeline import compress, credit_counter, data_register, partial_products

__all__ = ["LayerNorm", "layernorm_timing", "layernorm_widths", "out_pipe_depth", "IN_PIPE_DEPTH", "E_BITS"]

E_BITS = 6              # the shift e: 0..63 (golden.dyadic.MAX_SHIFT is 62)
CSA_LEVELS = 2          # 3:2 levels (one LUT each) between registers
# the OUT products' stages: one level where the partial products enter (each selector
# bit drives a whole row: long wires, and an AND in front of every gate), then two, then
# three (the last stage has no partial products and no carry chain after it)
PRODUCT_LEVELS = (1, 2, 3)
RAM_BANK = 64           # entries of a LUT RAM bank (_LutRam)
RAM_SELECT = 6          # most banks selected in one step (_LutRam)
# IN: input register; |x|; square (3 carry-save stages); accumulate
IN_PIPE_DEPTH = 6
QUEUE_SLACK = 4         # output queue entries beyond the pipeline depth (full rate)
FAULTS = ("mean_floor",)


def _signed_bits(*values: int) -> int:
    """Narrowest signed width holding every value of ``values``."""
    return max((int(v) if v >= 0 else -int(v) - 1).bit_length() + 1 for v in values)


def _var_max(channels: int, in_bits: int) -> int:
    return channels * ((2 ** in_bits - 1) ** 2 + 1) // 4


def layernorm_widths(in_bits: int = 16, max_channels: int = 256) -> dict:
    """Internal widths of a unit: ``var_bits`` (var < 2^var_bits for any C <= max_channels)
    and ``root_bits`` (std < 2^root_bits)."""
    vb = _var_max(max_channels, in_bits).bit_length()
    return {"var_bits": vb, "root_bits": (vb + 1) // 2}


def _ram_latency(depth: int) -> int:
    """Read latency of a :class:`_LutRam` of ``depth`` entries."""
    return 2 if -(-depth // RAM_BANK) <= RAM_SELECT else 3


def out_pipe_depth(max_channels: int = 256, row_slots: int = 3) -> int:
    """Stages of OUT: the buffer read (2, or 3 past RAM_SELECT banks), y, z (three
    carry-save stages and the add), v (three and the add), two shift levels, saturation,
    rounding and the clamp's signs, the clamp."""
    addr_bits = max(1, (max_channels - 1).bit_length())
    return _ram_latency(row_slots << addr_bits) + 14


def layernorm_timing(channels: int | None = None, in_bits: int = 16, max_channels: int = 256,
                     row_slots: int = 3) -> dict:
    """Cycle counts of a :class:`LayerNorm` (see its docstring), for rows of ``channels``
    channels (default ``max_channels``).

    ``calc`` (T): cycles CALC spends per row, from taking a row's sums to handing its mean
    and factor over, the same for every C; ``latency``: from the handshake of a row's last
    input to the handshake of its first output when nothing waits; ``cycles_per_row``:
    steady state without back-pressure, ``max(C, T, ceil(slot_cycles / row_slots))``;
    ``slot_cycles`` (``2C + T + 7``): the cycles from a row slot freed to the same slot
    freed again when the input waits for it (a row holds its slot from its last input to
    the issue of its last element, and the next row in that slot comes in in C cycles);
    ``load``: cycles of a layer's constants (C beats, one a cycle, once the unit is idle).
    """
    c = max_channels if channels is None else channels
    r = layernorm_widths(in_bits, max_channels)["root_bits"]
    # take 1, mean division in_bits, Horner tail 1, var 3 (two carry-save, one add),
    # root R, factor 31, hand-over 1
    calc = 1 + in_bits + 1 + 3 + r + FACTOR_BITS + 1
    # last input -> sums (IN_PIPE_DEPTH), N = 2S + C + C 2^IB (1), T, OUT loads the row as
    # the hand-over lands and issues the next cycle, the OUT stages, the queue's write and
    # output register
    latency = IN_PIPE_DEPTH + 1 + calc + 1 + out_pipe_depth(max_channels, row_slots) + 2
    slot_cycles = 2 * c + calc + IN_PIPE_DEPTH + 1
    per_row = max(c, calc, -(-slot_cycles // row_slots))
    return {"root_bits": r, "calc": calc, "latency": latency, "cycles_per_row": per_row,
            "slot_cycles": slot_cycles, "load": c, "out_depth": out_pipe_depth(max_channels, row_slots)}


class _LutRam:
    """A RAM of LUTs (``ram_style`` "distributed": TRELLIS_DPR16X4 on ECP5) in banks of
    ``bank_depth`` entries, read in registered steps: ``rdata`` holds the entry at
    ``raddr`` ``latency`` cycles later (each bank's read registered, then the bank selected
    and registered: 2; with more than ``max_select`` banks, the banks selected in groups,
    then the group: 3).  One write port (``waddr``, ``wdata``, ``wen``), registered: the
    entry is written at the second clock edge.

    Why not block RAM: on ECP5 yosys maps a read port to a DP16KD without its output
    register (REGMODE NOREG), whose clock-to-output alone is 5.8 ns in nextpnr's timing
    model, so a block RAM read caps the clock near 135 MHz whatever follows it."""

    def __init__(self, m: Module, name: str, shape, depth: int, bank_depth: int, max_select: int):
        bank_depth = min(bank_depth, 1 << max(0, (depth - 1).bit_length()))
        self.bank_bits = (bank_depth - 1).bit_length()
        n_banks = -(-depth // bank_depth)
        self.waddr = Signal(range(depth), name=f"{name}_waddr")
        self.wdata = Signal(shape, name=f"{name}_wdata")
        self.wen = Signal(name=f"{name}_wen")
        self.raddr = Signal(range(depth), name=f"{name}_raddr")
        self.rdata = Signal(shape, name=f"{name}_rdata")
        bb = self.bank_bits
        # the write, registered (address, data, and one enable per bank: each bank's write
        # enable comes straight from a flip-flop)
        wa = Signal(bb, name=f"{name}_wa", reset_less=True)
        wd = Signal(shape, name=f"{name}_wd", reset_less=True)
        m.d.sync += [wa.eq(self.waddr[:bb]), wd.eq(self.wdata)]
        datas = []
        for k in range(n_banks):
            mem = Memory(shape=shape, depth=bank_depth, init=[], attrs={"ram_style": "distributed"})
            m.submodules[f"{name}_bank{k}"] = mem
            wp, rp = mem.write_port(), mem.read_port(domain="sync")
            hi = self.waddr[bb:]
            # (`x == 0` is written as a logical not that trips Verilator -Wall's WIDTHTRUNC)
            hit = Const(1, 1) if n_banks == 1 else (~hi.any() if k == 0 else hi == k)
            we = Signal(name=f"{name}_we{k}")
            m.d.sync += we.eq(self.wen & hit)
            m.d.comb += [wp.addr.eq(wa), wp.data.eq(wd), wp.en.eq(we), rp.addr.eq(self.raddr[:bb])]
            datas.append(rp.data)
        if n_banks > 1:
            # the bank select, one-hot and registered: AND-OR trees (two inputs a LUT, then
            # ORs), shallower than the mux chain a binary select maps to; more than
            # max_select banks are selected in groups, registered, then the group
            sel = Signal(n_banks, name=f"{name}_rsel", reset_less=True)
            m.d.sync += sel.eq(Const(1, n_banks) << self.raddr[bb:])
            width = Shape.cast(shape).width
            n_groups = -(-n_banks // max_select)
            per = -(-n_banks // n_groups)
            groups = []
            for g in range(n_groups):
                terms = [Value.cast(datas[k]).as_unsigned() & sel[k].replicate(width)
                         for k in range(g * per, min(n_banks, (g + 1) * per))]
                while len(terms) > 1:
                    terms = [terms[i] | terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
                gr = Signal(width, name=f"{name}_rgroup{g}", reset_less=True)
                m.d.sync += gr.eq(terms[0])
                groups.append(gr)
            if n_groups == 1:
                m.d.comb += self.rdata.eq(groups[0])
            else:
                bank = self.raddr[bb:]
                gsel = Signal(range(n_groups), name=f"{name}_rgsel", reset_less=True)
                gsel2 = Signal(range(n_groups), name=f"{name}_rgsel2", reset_less=True)
                rd = Signal(shape, name=f"{name}_rgroup", reset_less=True)
                m.d.sync += [gsel.eq(sum(bank >= per * g for g in range(1, n_groups))), gsel2.eq(gsel),
                             rd.eq(Array(groups)[gsel2])]
                m.d.comb += self.rdata.eq(rd)
        else:
            rd = Signal(shape, name=f"{name}_rbank", reset_less=True)
            m.d.sync += rd.eq(datas[0])
            m.d.comb += self.rdata.eq(rd)
        self.latency = 2 if n_banks <= max_select else 3


class LayerNorm(wiring.Component):
    """Streaming integer LayerNorm over rows of C channels, bit-exact to ``layernorm_int``,
    with the layer's constants loaded at run time.

    Parameters (capabilities)
    -------------------------
    in_bits : int
        Signed width of the input (the residual stream; HwConfig.residual_bits, 16).
    mult_bits : int
        Signed width of the multipliers M_c (HwConfig.mult_bits, 16).
    b_bits : int
        Signed width of the offsets B_c (HwConfig.layernorm_b_bits, 48).
    out_bits : int
        Signed output width (HwConfig.a_bits, 8); a layer with another out_bits is refused.
    max_channels : int
        Most channels of a row (HwConfig.layernorm_max_channels, 256): the row buffer, the
        constant RAMs and the widths of S, Q, var and the root.
    row_slots : int
        Rows the buffer holds (HwConfig.layernorm_row_slots, 2..4; 3 lets IN, CALC and OUT
        each work on a row).

    Members
    -------
    c : In(stream.Signature(StructLayout({m: signed(mult_bits), b: signed(b_bits),
        e: unsigned(6), last: unsigned(1)})))
        A layer's constants, one beat per channel (:meth:`const_beats`).
    i : In(stream.Signature(signed(in_bits)))
        Input elements, channel 0 to C-1 of a row, then the next row.
    o : Out(stream.Signature(signed(out_bits)))
        Output elements in the same order, saturated to out_bits.

    Latency and throughput
    ----------------------
    Let ``R = root_bits = ceil(bits(max_channels ((2^in_bits - 1)^2 + 1) / 4) / 2)`` (19 for
    256 channels of 16 bits) and ``T = in_bits + R + 37`` (CALC cycles per row: take 1,
    mean in_bits, Horner tail 1, var 3, root R, factor 31, hand-over 1; 72 at the defaults,
    for every C).  Latency from the handshake of a row's last element to the handshake of
    its first output when nothing waits: ``T + 10 + D`` cycles (IN 6, N 1, T, OUT load 1,
    the OUT pipeline's D stages, queue 2), D = 17 (:func:`out_pipe_depth`: 16 when the row
    buffer has at most 6 banks of 64 entries); 99 at the defaults.  Throughput without back-pressure, in
    steady state: ``max(C, T, ceil((2C + T + 7) / row_slots))`` cycles per row
    (:func:`layernorm_timing`): one element per cycle in and out when rows are long
    (C = 192: 192 cycles per row), T when they are short (C = 64: 72); in between the row
    slots bound it: ``row_slots`` rows every ``2C + T + 7`` cycles (C = 72: 72, 72, 79;
    the formula gives the average rounded up, 75).  All measured in
    tests/test_hw_layernorm.py.  Loading a layer's
    constants takes C cycles (one beat a cycle) once the unit is idle; the first beat is
    taken two cycles after the previous layer's last output handshake at the earliest.
    ``i.ready`` drops while ``c.valid`` is high or a layer's beats are under way (from its
    first beat to its last, gaps included), while every row slot is taken, and for a row's
    last element while the previous row's sums wait for CALC; ``o.ready`` low fills the output queue, and no
    element enters the OUT pipeline without a free queue entry (credits).

    The signature depends on the parameters, so it is passed to ``Component.__init__``
    instead of being written as class annotations.
    """

    def __init__(self, *, in_bits: int = 16, mult_bits: int = 16, b_bits: int = 48, out_bits: int = 8,
                 max_channels: int = 256, row_slots: int = 3, _fault: str | None = None):
        try:
            self.in_bits = check_range("residual_bits (layernorm in_bits)", in_bits, 4, 32)
            self.mult_bits = check_range("mult_bits", mult_bits, 2, 32)
            self.b_bits = check_range("layernorm_b_bits", b_bits, 2, 64)
            self.out_bits = check_range("layernorm out_bits", out_bits, 2, 32)
            self.max_channels = check_range("layernorm_max_channels", max_channels, 2, 4096)
            self.row_slots = check_range("layernorm_row_slots", row_slots, 2, 4)
        except UserError:
            self._MustUse__silence = True       # refused: never to be elaborated, no warning
            raise
        if _fault is not None and _fault not in FAULTS:
            raise ValueError(f"unknown fault {_fault!r}")
        self._fault = _fault
        w = layernorm_widths(in_bits, max_channels)
        self.var_bits, self.root_bits = w["var_bits"], w["root_bits"]
        self.addr_bits = max(1, (max_channels - 1).bit_length())
        t = layernorm_timing(None, in_bits, max_channels, row_slots)
        self.calc_cycles = t["calc"]
        self.latency = t["latency"]
        self.out_depth = t["out_depth"]
        self.queue_depth = self.out_depth + QUEUE_SLACK
        self.c_layout = data.StructLayout({"m": signed(mult_bits), "b": signed(b_bits),
                                           "e": unsigned(E_BITS), "last": unsigned(1)})
        super().__init__({
            "c": In(stream.Signature(self.c_layout)),
            "i": In(stream.Signature(signed(in_bits))),
            "o": Out(stream.Signature(signed(out_bits))),
        })

    @classmethod
    def from_config(cls, hw, **kw) -> "LayerNorm":
        """The unit for the capabilities in ``hw`` (a :class:`hwgen.config.HwConfig`):
        ``residual_bits`` (input), ``mult_bits``, ``layernorm_b_bits``, ``a_bits`` (output),
        ``layernorm_max_channels`` and ``layernorm_row_slots``."""
        return cls(in_bits=hw.residual_bits, mult_bits=hw.mult_bits, b_bits=hw.layernorm_b_bits,
                   out_bits=hw.a_bits, max_channels=hw.layernorm_max_channels,
                   row_slots=hw.layernorm_row_slots, **kw)

    # --- timing of a layer ------------------------------------------------------------------

    def timing(self, channels: int) -> dict:
        """:func:`layernorm_timing` for rows of ``channels`` channels on this unit."""
        return layernorm_timing(channels, self.in_bits, self.max_channels, self.row_slots)

    def cycles_per_row(self, channels: int) -> int:
        return self.timing(channels)["cycles_per_row"]

    # --- run-time constants -------------------------------------------------------------------

    def _refuse(self, field: str, value, need: str, have: str, cap: str) -> None:
        raise UserError(f"layernorm {field} = {value} does not fit the unit: needs {need}, "
                        f"the unit has {have} ({cap})")

    def const_beats(self, attrs: dict, consts: dict) -> list[dict[str, int]]:
        """The ``c`` beats of a layer (``attrs``/``consts`` of
        :func:`golden.layernorm.build_layernorm`): one per channel,
        ``{"m": M_c, "b": B_c, "e": e, "last": c == C - 1}``.  Refuses (UserError, one line
        naming the field, the need and the limit) a layer that does not fit the unit."""
        c = attrs.get("channels")
        if isinstance(c, bool) or not isinstance(c, int) or c < 2:
            raise UserError(f"layernorm channels = {c!r} is not accepted: needs an integer of at least 2")
        if c > self.max_channels:
            self._refuse("channels", c, f"{c} channels", f"{self.max_channels}",
                         f"layernorm_max_channels {self.max_channels}")
        ob = attrs.get("out_bits")
        if ob != self.out_bits:
            self._refuse("out_bits", ob, f"a {ob}-bit output", f"{self.out_bits} bits", f"a_bits {self.out_bits}")
        e = attrs.get("e")
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < (1 << E_BITS):
            self._refuse("e", e, f"a shift of {e}", f"0..{(1 << E_BITS) - 1}", f"e field of {E_BITS} bits")

        def ints(v):
            return [int(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]

        m, b = ints(consts["m"]), ints(consts["b"])
        for name, vals, bits, cap in (("m", m, self.mult_bits, "mult_bits"), ("b", b, self.b_bits, "layernorm_b_bits")):
            if len(vals) != c:
                raise UserError(f"layernorm {name} has {len(vals)} entries; needs {c} (channels)")
            for v in vals:
                if _signed_bits(v) > bits:
                    self._refuse(name, v, f"{_signed_bits(v)} bits", f"{bits}", f"{cap} {bits}")
        return [{"m": m[k], "b": b[k], "e": e, "last": int(k == c - 1)} for k in range(c)]

    def pack_beat(self, beat: dict) -> int:
        """The ``c`` payload word of a beat (as the testbench drives it)."""
        word = 0
        for name in ("m", "b", "e", "last"):
            f = self.c_layout[name]
            word |= (int(beat[name]) & ((1 << f.shape.width) - 1)) << f.offset
        return word

    # --- hardware -------------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        IB, MB, BB, OB = self.in_bits, self.mult_bits, self.b_bits, self.out_bits
        CM, AB, slots = self.max_channels, self.addr_bits, self.row_slots
        VB, RB = self.var_bits, self.root_bits
        F = FACTOR_BITS

        def reg(name, value, shape=None, reset=False):
            """A register loaded every cycle (no enable; no reset unless ``reset``)."""
            value = Value.cast(value)
            shape = shape if shape is not None else value.shape()
            s = Signal(shape, name=name) if reset else data_register(shape, name, value)
            m.d.sync += s.eq(value)
            return s

        def csa_stages(prefix, terms, width, carry=None, levels=()):
            """Carry-save compression of ``terms`` over registered stages until two terms
            are left: ``levels[n]`` 3:2 levels in stage n (default CSA_LEVELS); returns the
            two registered terms and the ``carry`` values delayed alongside (a dict by name
            per stage)."""
            carry = dict(carry or {})
            history = []
            n = 0
            while len(terms) > 2:
                terms = compress(m, terms, width, levels[n] if n < len(levels) else CSA_LEVELS, f"{prefix}{n}")
                terms = [reg(f"{prefix}{n}_t{k}", t) for k, t in enumerate(terms)]
                carry = {k: reg(f"{prefix}{n}_{k}", v, reset=k in ("v", "l")) for k, v in carry.items()}
                history.append(carry)
                n += 1
            return terms, history

        # --- constants: RAMs, shift, channel count ------------------------------------------
        m_ram = _LutRam(m, "m_ram", signed(MB), CM, RAM_BANK, RAM_SELECT)
        b_ram = _LutRam(m, "b_ram", signed(BB), CM, RAM_BANK, RAM_SELECT)
        e_r = Signal(E_BITS, reset_less=True)
        cm1 = Signal(AB, init=CM - 1)           # C - 1 of the loaded layer
        cm2 = Signal(AB, init=CM - 2)           # C - 2: "the next element is the last"
        ld = Signal(AB)                          # next constant index
        idle_r = Signal()
        c_take = Signal()
        cp = self.c.payload
        m.d.comb += [self.c.ready.eq(idle_r), c_take.eq(self.c.valid & idle_r)]
        m.d.comb += [m_ram.waddr.eq(ld), m_ram.wdata.eq(cp.m), b_ram.waddr.eq(ld), b_ram.wdata.eq(cp.b),
                     m_ram.wen.eq(c_take), b_ram.wen.eq(c_take)]
        with m.If(c_take):
            m.d.sync += e_r.eq(cp.e)
            with m.If(cp.last):
                m.d.sync += [cm1.eq(ld), cm2.eq(ld - 1), ld.eq(0)]
            with m.Else():
                m.d.sync += ld.eq(ld + 1)
        # derived from C (registered; stable long before a row needs them)
        c_now = reg("c_now", cm1 + 1, unsigned(AB + 1))
        c2 = reg("c2", c_now << 1)                                       # divisor 2C
        cn_val = (c_now << IB) if self._fault == "mean_floor" else (c_now << IB) + c_now
        cn = reg("cn", cn_val)                                           # C (2^IB + 1)

        # --- IN: buffer the row, S and Q -------------------------------------------------------
        stride = 1 << AB
        buf = _LutRam(m, "buf", signed(IB), slots * stride, RAM_BANK, RAM_SELECT)
        assert buf.latency == _ram_latency(slots * stride)
        cnt = Signal(AB)
        wslot = Signal(range(slots))
        in_last = Signal()                       # cnt == C - 1 (registered)
        accept = Signal()
        rows_held = Signal(range(slots + 1))    # rows fully in, last element not yet issued
        rows_next = Signal(range(slots + 1))
        room = Signal(init=1)                    # rows_held < slots, and no layer's beats under way
        last_busy = Signal()                     # a row's last element in IN, or its sums wait
        m.d.comb += [
            self.i.ready.eq(~self.c.valid & room & ~(in_last & last_busy)),
            accept.eq(self.i.valid & self.i.ready),
        ]
        with m.If(accept):
            m.d.sync += [cnt.eq(Mux(in_last, 0, cnt + 1)), in_last.eq(~in_last & (cnt == cm2))]
            with m.If(in_last):
                m.d.sync += wslot.eq(Mux(wslot == slots - 1, 0, wslot + 1))
        with m.If(c_take):                       # the unit is idle: cnt = 0, and C >= 2
            m.d.sync += in_last.eq(0)
        # room follows rows_held without the sum in its path: a row in and none out leaves
        # room iff rows_held < slots - 1 before; a row out and none in always leaves room.
        # From a layer's first beat to its last there is none (the unit is idle then, so
        # rows_held = 0 and the last beat gives the room back)
        inc, dec = Signal(), Signal()
        m.d.comb += inc.eq(accept & in_last)
        m.d.sync += [rows_held.eq(rows_next),
                     room.eq(Mux(c_take, cp.last, Mux(inc & ~dec, rows_held < slots - 1, Mux(dec & ~inc, 1, room))))]

        # stage 1: the element; stage 2: a = |x| - [x < 0] (ones' complement), s = [x < 0]
        x1 = reg("in1_x", self.i.payload)
        v1, l1 = reg("in1_v", accept, reset=True), reg("in1_l", accept & in_last, reset=True)
        m.d.comb += [buf.waddr.eq(Cat(cnt, wslot)), buf.wdata.eq(self.i.payload), buf.wen.eq(accept)]
        sgn = x1[-1]
        a2 = reg("in2_a", x1[:IB - 1] ^ sgn.replicate(IB - 1))
        s2, x2 = reg("in2_s", sgn), reg("in2_x", x1)
        v2, l2 = reg("in2_v", v1, reset=True), reg("in2_l", l1, reset=True)
        # x^2 = a^2 + s (2a + 1); a^2 = sum_i a_i (2^(2i) + sum_{j>i} a_j 2^(i+j+1))
        n = IB - 1
        sq_w = 2 * IB - 1
        sq_terms = [Mux(a2[i], Cat(Const(1, 1), Const(0, 1), a2[i + 1:]), 0) << (2 * i) for i in range(n)]
        sq_terms.append(Mux(s2, Cat(Const(1, 1), a2), 0))
        sq, hist = csa_stages("sq", sq_terms, sq_w, {"v": v2, "l": l2, "x": x2})
        assert 2 + len(hist) + 1 == IN_PIPE_DEPTH, len(hist)
        vl = hist[-1]
        # accumulate: S, and Q in carry-save form (every term non-negative, so exact)
        s_bits = _signed_bits(CM * -(1 << (IB - 1)), CM * ((1 << (IB - 1)) - 1))
        q_bits = (CM << (2 * IB - 2)).bit_length()
        s_acc = Signal(signed(s_bits))
        qs_acc = Signal(q_bits)
        qc_acc = Signal(q_bits)
        h1_valid = Signal()
        h1_s = Signal(signed(s_bits), reset_less=True)
        h1_qs = Signal(q_bits, reset_less=True)
        h1_qc = Signal(q_bits, reset_less=True)
        q_next = compress(m, [qs_acc, qc_acc, *sq], q_bits, None, "qacc")
        s_next = (s_acc + vl["x"])[:s_bits].as_signed()
        with m.If(vl["v"]):
            with m.If(vl["l"]):
                m.d.sync += [h1_s.eq(s_next), h1_qs.eq(q_next[0]), h1_qc.eq(q_next[1]), h1_valid.eq(1),
                             s_acc.eq(0), qs_acc.eq(0), qc_acc.eq(0)]
            with m.Else():
                m.d.sync += [s_acc.eq(s_next), qs_acc.eq(q_next[0]), qc_acc.eq(q_next[1])]
        # registered: a cycle late, which is safe since two last elements are >= 2 cycles apart
        m.d.sync += last_busy.eq(Cat(h1_valid, l1, l2, *[h["l"] for h in hist]).any())

        # --- CALC: mean, var, std, factor (one row at a time) ---------------------------------
        H = 1 << (IB - 1)
        n_bits = ((2 * CM) << IB).bit_length()          # N = 2S + C + C 2^IB < 2C 2^IB
        d_bits = (2 * CM - 1).bit_length()              # division remainder < 2C
        W = VB                                           # var and its terms, modulo 2^W
        k = Signal(range(max(IB, RB, F)))
        k_zero = ~k.any()
        s_c = Signal(signed(s_bits), reset_less=True)
        qs_c = Signal(q_bits, reset_less=True)
        qc_c = Signal(q_bits, reset_less=True)
        d_rem = Signal(d_bits, reset_less=True)
        nlo = Signal(IB, reset_less=True)               # N's low bits, then the quotient q
        qbit = Signal(reset_less=True)                  # the quotient bit of the previous cycle
        hb = Signal()                                    # qbit is a fresh quotient bit
        xc_bits = min(W, (4 * CM << IB).bit_length())    # XC = 4 C q + C < 4 C 2^IB: exact
        xc = Signal(xc_bits, reset_less=True)           # Horner: XC = 4 C q + C
        xc_add = Signal(xc_bits, reset_less=True)       # b ? 3C : -C for the next Horner step
        zs, zc = Signal(W, reset_less=True), Signal(W, reset_less=True)     # Z = q S
        ys, yc = Signal(W, reset_less=True), Signal(W, reset_less=True)     # Y = C q^2
        vsh = Signal(2 * RB, reset_less=True)           # var, shifted out two bits a cycle
        r_rem = Signal(RB + 1, reset_less=True)
        root = Signal(RB, reset_less=True)
        f_rem = Signal(RB, reset_less=True)
        f_q = Signal(F, reset_less=True)
        h2_valid = Signal()
        h2_mean = Signal(signed(IB), reset_less=True)
        h2_factor = Signal(F, reset_less=True)

        # CALC's state: one-hot flags (each state's logic reads one flip-flop; no m.FSM, whose
        # Verilog trips Verilator -Wall)
        names = ("idle", "div", "tail", "var1", "var2", "var3", "root", "fact", "push")
        st = {n: Signal(init=int(n == "idle"), name=f"calc_{n}") for n in names}

        def goto(frm, to):
            m.d.sync += [st[frm].eq(0), st[to].eq(1)]

        # Horner on the quotient bits, one cycle behind the division: q' = 2q + b,
        # Z' = 2Z + bS, Y' = 4Y + b XC, XC' = 4 C q' + C = 2 XC + (b ? 3C : -C)
        # (Z = q S, Y = C q^2, XC = 4 C q + C; everything modulo 2^W)
        c3 = reg("c3", (c_now << 1) + c_now, unsigned(xc_bits))       # 3C (no multiplier)
        cneg = reg("cneg", -c_now, unsigned(xc_bits))                  # -C, sign-extended
        m.d.sync += hb.eq(st["div"])
        with m.If(hb):
            b = qbit
            z_new = compress(m, [zs << 1, zc << 1, Mux(b, s_c, 0)], W, None, "hz")
            y_new = compress(m, [ys << 2, yc << 2, Mux(b, xc, 0)], W, None, "hy")
            m.d.sync += [xc.eq(((xc << 1) + xc_add)[:xc_bits]),
                         zs.eq(z_new[0]), zc.eq(z_new[1]), ys.eq(y_new[0]), yc.eq(y_new[1])]
        # var = Q - 2Z + Y + 2^IB S - 2^(IB-2) (XC - C) + C 2^(2IB-2) (mod 2^W); each negation
        # is ~v + 1, the three +1 ride in the constant term K.  Free-running registers: the
        # inputs are stable from VAR1 on.
        k_term = reg("var_k", (3 + (c_now << (IB - 2)) + (c_now << (2 * IB - 2)))[:W], unsigned(W))
        v_terms = [qs_c, qc_c, ~(zs << 1), ~(zc << 1), ys, yc, s_c << IB, ~(xc << (IB - 2)), k_term]
        va = [reg(f"var1_t{i}", t) for i, t in enumerate(compress(m, v_terms, W, CSA_LEVELS, "var1"))]
        vb = [reg(f"var2_t{i}", t) for i, t in enumerate(compress(m, va, W, CSA_LEVELS, "var2"))]
        assert len(va) == 4 and len(vb) == 2

        # N = 2S + C + C 2^IB, registered a cycle after the sums arrive (h1_n_ok)
        h1_n = reg("h1_n", ((h1_s << 1) + cn)[:n_bits])
        h1_n_ok = Signal()
        m.d.sync += h1_n_ok.eq(h1_valid & ~(st["idle"] & h1_n_ok))
        with m.If(st["idle"]):
            # loaded in every idle cycle (d_rem and nlo mean nothing before the division)
            m.d.sync += [d_rem.eq(h1_n[IB:]), nlo.eq(h1_n[:IB]), k.eq(IB - 1)]
            with m.If(h1_n_ok):
                m.d.sync += [s_c.eq(h1_s), qs_c.eq(h1_qs), qc_c.eq(h1_qc), h1_valid.eq(0),
                             xc.eq(c_now), zs.eq(0), zc.eq(0), ys.eq(0), yc.eq(0)]
                goto("idle", "div")
        with m.If(st["div"]):
            # restoring division by 2C: one quotient bit a cycle, N's bits shifted in; the
            # quotient bit is the sign of one subtraction
            t = Cat(nlo[-1], d_rem)
            diff = t - c2
            take = ~diff[-1]
            m.d.sync += [
                d_rem.eq(Mux(take, diff, t)[:d_bits]),
                nlo.eq(Cat(take, nlo[:-1])),
                qbit.eq(take),
                xc_add.eq(Mux(take, c3, cneg)),          # the operand ready with the bit
                k.eq(k - 1),
            ]
            with m.If(k_zero):
                goto("div", "tail")
        with m.If(st["tail"]):                           # Horner's last step
            goto("tail", "var1")
        with m.If(st["var1"]):                           # var1_* <= 9 -> 4 terms
            goto("var1", "var2")
        with m.If(st["var2"]):                           # var2_* <= 4 -> 2 terms
            goto("var2", "var3")
        with m.If(st["var3"]):
            m.d.sync += [vsh.eq((vb[0] + vb[1])[:W]), r_rem.eq(0), root.eq(0), f_rem.eq(0), k.eq(RB - 1)]
            goto("var3", "root")
        with m.If(st["root"]):
            # digit by digit: rem' = 4 rem + next two bits of var; take when rem' >= 4 root + 1
            t = Cat(vsh[-2:], r_rem)
            trial = Cat(Const(1, 2), root)
            diff = t - trial
            take = ~diff[-1]
            m.d.sync += [
                r_rem.eq(Mux(take, diff, t)[:RB + 1]),
                root.eq(Cat(take, root[:-1])),
                vsh.eq(vsh << 2),
                k.eq(k - 1),
            ]
            with m.If(k_zero):
                m.d.sync += k.eq(F - 1)
                goto("root", "fact")
        with m.If(st["fact"]):
            # floor((2^31 - 1) / std): the dividend is all ones, so the bit shifted in is 1.
            # std = 0 (var = 0) needs no max(std, 1): dividing by 0 takes every bit, which
            # is floor((2^31 - 1) / 1) too (and y = 0 on such a row anyway)
            f_shift = Cat(Const(1, 1), f_rem)
            diff = f_shift - root
            take = ~diff[-1]
            m.d.sync += [
                f_rem.eq(Mux(take, diff, f_shift)[:RB]),
                f_q.eq(Cat(take, f_q[:-1])),
                k.eq(k - 1),
            ]
            with m.If(k_zero):
                goto("fact", "push")
        with m.If(st["push"] & ~h2_valid):
            m.d.sync += [h2_mean.eq((nlo ^ H).as_signed()), h2_factor.eq(f_q), h2_valid.eq(1)]
            goto("push", "idle")

        # --- OUT: stream the row through the affine pipeline ---------------------------------
        QD = self.queue_depth
        has_credit = Signal()        # a queue entry not yet promised (a register: ``credit_counter``)
        active = Signal()
        ch = Signal(AB)
        rslot = Signal(range(slots))
        cur_mean = Signal(signed(IB), reset_less=True)
        cur_factor = Signal(F, reset_less=True)
        issue = Signal()
        out_last = Signal()                              # ch == C - 1 (registered)
        release = Signal()
        load = Signal()
        m.d.comb += [
            issue.eq(active & has_credit),
            release.eq(issue & out_last),
            load.eq(h2_valid & (~active | (has_credit & out_last))),     # ~active | release
            buf.raddr.eq(Cat(ch, rslot)),
        ]
        with m.If(issue):
            m.d.sync += [ch.eq(Mux(out_last, 0, ch + 1)), out_last.eq(~out_last & (ch == cm2))]
            with m.If(out_last):
                m.d.sync += [active.eq(0), rslot.eq(Mux(rslot == slots - 1, 0, rslot + 1))]
        with m.If(c_take):                               # idle: ch = 0, and C >= 2
            m.d.sync += out_last.eq(0)
        with m.If(load):
            m.d.sync += [cur_mean.eq(h2_mean), cur_factor.eq(h2_factor), h2_valid.eq(0), active.eq(1)]
        m.d.comb += [dec.eq(release), rows_next.eq(rows_held + inc - dec)]

        # stages 1, 2: the buffer read (banks, then the bank selected), row scalars alongside
        mean2, fac2, ch2 = cur_mean, cur_factor, ch
        for k in range(buf.latency):
            mean2, fac2, ch2 = reg(f"o{k + 1}_mean", mean2), reg(f"o{k + 1}_factor", fac2), reg(f"o{k + 1}_ch", ch2)
        # then: y = x - mean
        y3 = reg("oy_y", buf.rdata - mean2)
        fac3, ch3 = reg("oy_factor", fac2), reg("oy_ch", ch2)
        # stages 4-6: z = y factor, |z| <= 2^31 - 1: the partial products over y's bits in a
        # carry-save tree modulo 2^32 (exact), PRODUCT_LEVELS: 18 -> 12 -> 6 -> 2 terms;
        # stage 7: the add
        zt, zh = csa_stages("oz", partial_products(fac3, y3), F + 1, {"ch": ch3}, levels=PRODUCT_LEVELS)
        # M_c and B_c: addressed at stage 5, read at 6 and 7
        m.d.comb += [m_ram.raddr.eq(zh[1]["ch"]), b_ram.raddr.eq(zh[1]["ch"])]
        z7 = reg("o7_z", (zt[0] + zt[1])[:F + 1].as_signed())
        mc7, bc7 = m_ram.rdata, b_ram.rdata
        # stages 8-10: v = z M_c + B_c, one carry-save tree (exact modulo 2^WP), 18 -> 12 ->
        # 6 -> 2 terms; 11: the add
        wp_bits = _signed_bits(((1 << F) - 1) * (1 << (MB - 1)) + (1 << (BB - 1)),
                               -((1 << F) - 1) * (1 << (MB - 1)) - (1 << (BB - 1)))
        vt, vh = csa_stages("ov", [*partial_products(z7, mc7), bc7], wp_bits, levels=PRODUCT_LEVELS)
        v11 = reg("o11_v", (vt[0] + vt[1])[:wp_bits].as_signed())
        # 12, 13: u = (2v) >> e, a barrel shifter in two levels (e & ~7, then e & 7)
        t12 = reg("o12_t", Cat(Const(0, 1), v11).as_signed() >> Cat(Const(0, 3), e_r[3:]))
        u13 = reg("o13_u", t12 >> e_r[:3])
        # 14: saturate u to OB + 2 bits (its upper bits all equal, or the bound of its sign)
        nb = OB + 2
        upper = u13[nb - 1:]
        fits = upper.all() | ~upper.any()
        sat = Mux(u13[-1], Const(-(1 << (nb - 1)), signed(nb)), Const((1 << (nb - 1)) - 1, signed(nb)))
        n14 = reg("o14_u", Mux(fits, u13[:nb].as_signed(), sat), signed(nb))
        # 15: r = (u + 1) >> 1 = rshift_round(v, e) (where it fits), and the clamp as the
        # signs of two differences: r <= lo iff u <= 2 lo, r >= hi iff u >= 2 hi - 1;
        # 16: out = clamp(r, lo, hi)
        lo, hi = -(1 << (OB - 1)), (1 << (OB - 1)) - 1
        r15 = reg("o15_r", ((n14 + 1) >> 1)[:OB].as_signed(), signed(OB))
        lo15 = reg("o15_lo", (n14 - (2 * lo + 1))[-1])
        hi15 = reg("o15_hi", (Const(2 * hi - 2, signed(nb)) - n14)[-1])
        o16 = reg("o16_out", Mux(lo15, Const(lo, signed(OB)), Mux(hi15, Const(hi, signed(OB)), r15)), signed(OB))
        depth = buf.latency + 1 + len(zh) + 1 + len(vh) + 1 + 5
        assert depth == self.out_depth, depth
        valid = issue
        for s in range(depth):
            valid = reg(f"o_valid{s + 1}", valid, reset=True)

        queue = m.submodules.out_queue = SyncFIFOBuffered(width=OB, depth=QD)
        o_take = self.o.valid & self.o.ready
        m.d.comb += [queue.w_en.eq(valid), queue.w_data.eq(o16),
                     self.o.valid.eq(queue.r_rdy), self.o.payload.eq(queue.r_data), queue.r_en.eq(self.o.ready)]
        # the queue's credits: no adder between the take and the count (the consumer's ready
        # through the sum's carry chain into the count was a seed's critical path, 8.98 ns)
        room, out_empty = credit_counter(m, issue, o_take, QD, "out_credit")
        m.d.comb += has_credit.eq(room)

        # idle: no partial row, no row held, nothing in OUT or the queue; registered, and
        # conservative (an element taken this cycle makes it busy)
        m.d.sync += idle_r.eq(~cnt.any() & ~rows_held.any() & out_empty & ~accept)
        return m
