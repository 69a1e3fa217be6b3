"""Integer GEMM: an output-stationary systolic array of ``rows x cols`` MACs with the bias add
and the per-output-channel requantizer on the way out.

The hardware of :func:`golden.executor.run_linear` (``x @ W^T + bias``, then
``requant(acc, m, e, lo, hi)`` per output channel, or the raw accumulator when ``out_bits`` is
0) and of :func:`golden.executor.run_matmul` (``x @ y``: feed ``W = y^T``, bias 0, one m and e
for every channel), one output tile of ``rows x cols`` at a time.

Dataflow
--------
The host cuts ``C[M, N] = A[M, K] @ W[N, K]^T`` into tiles ``C[m0:m0+rows, n0:n0+cols]`` and
streams, per tile, its K operand beats: beat k carries the column ``A[m0:m0+rows, k]`` on
``a`` and ``W[n0:n0+cols, k]`` on ``w`` (lanes beyond M or N padded with zeros), the last
beat of the tile flagged ``a.payload.last``.  One parameter beat per tile on ``p`` gives the
bias, ``m`` and ``e`` of its cols output channels and ``out_bits``.  The tile's results leave
on ``o`` as ``rows`` beats, row ``r`` of the tile per beat (``C[m0 + r, n0:n0+cols]``), in tile
order.

Inside, a joined (a, w) beat is registered, then enters the array skewed: row ``i`` of ``a``
is delayed ``i`` cycles and moves right one PE per cycle, lane ``j`` of ``w`` is delayed
``j`` cycles and moves down one PE per cycle, so PE(i, j) sees ``A[i, k]`` and ``W[j, k]``
together, ``i + j`` cycles after the beat entered; valid/first/last bits travel with ``a``.
PE(i, j) registers the product (a DSP block's registered operands and product,
:mod:`hwgen.dsp`, then a fabric register; or, with ``mult="lut"``, half a carry-save tree of
LUTs and then the rest: :func:`pe_depth` registers) and keeps
``acc = sum_k A[i, k] W[j, k]`` (``acc_bits``, restarted by the tile's first beat), so the
next tile's beats follow the previous tile's without a gap.  On the tile's last beat the
finished sum drops into its column's *result chain* at row i: the chains move up one row
per cycle, unconditionally (no enable fans out to thousands of registers), so row i leaves
column j's chain ``2 i + j`` cycles after the wavefront started; per-column delays align the
columns, and the rows (one every other cycle) go through the requantizer
(:func:`hwgen.requant.requant_stages`, inlined so that the unit is one module), which never
stalls either, into an output queue of ``2 rows`` rows (distributed memory read
asynchronously: ``o.payload`` comes from it, ``o.valid`` from its level) that ``o`` reads.
The array, the chains and the requantizer run free, and so does the input register (every
beat taken enters the array on the next cycle); the only gate is a tile's
*last* beat, which is not taken (``a.ready``/``w.ready`` low while it is presented) until
the tile's ``p`` beat is there, the tile period since the previous last beat has passed
(:func:`gemm_min_tile_period`, so that the held parameters and the chains are free) and the
queue has room for the tile's rows (credits, returned as ``o`` takes rows): one register
(``last_ok``) says so.  Gaps in the input become bubbles in the skew.  No enable and no reset
fans out to the datapath (see the class's "Reset"), so that the unit closes timing at 150 MHz
on ECP5 (``hwgen report``).

Worst case of the accumulator: ``|A| |W| K + |bias| < 2^(acc_bits-1)`` must hold (checked when
the graph is built: :meth:`hwgen.config.HwConfig.check_gemm`); then nothing wraps.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, ResetSignal, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import GEMM_MULTIPLIERS, check_choice, check_range
from .dsp import DSP_LATENCY, dsp_mult
from .pipeline import compress, compress_levels, fit, lane_layout, data_register, partial_products, product_shape, sum_pair
from .requant import E_BITS, requant_decode_stages, requant_decoded_fields, requant_latency, requant_param_fields, requant_stages

__all__ = ["Gemm", "gemm_flush_cycles", "gemm_latency", "gemm_min_tile_period", "pe_depth"]


def pe_depth(mult: str = "dsp") -> int:
    """Registers from a PE's operands to its result chain: the product (DSP: the block's
    operand and product registers, :data:`hwgen.dsp.DSP_LATENCY`, then a fabric register, so
    that the route out of the DSP column is a cycle of its own; LUT: half a carry-save tree,
    the other half, then the product), the accumulator."""
    return 4 if mult == "lut" else DSP_LATENCY + 2


def gemm_latency(rows: int, cols: int, mult: str = "dsp", mult_bits: int = 16) -> int:
    """Cycles from the handshake of a tile's last operand beat to its first output beat:
    1 into the input register, ``cols + pe_depth`` until row 0's sums, aligned, are at the
    requantizer's input, the requantizer, 1 into the output queue (read asynchronously)."""
    return cols + pe_depth(mult) + requant_latency(mult, mult_bits) + 2


def gemm_min_tile_period(rows: int, cols: int, mult: str = "dsp") -> int:
    """Fewest cycles between the last beats of two consecutive tiles: the tile's parameters
    are held until its last row (at ``2 (rows - 1) + cols + 1`` cycles) has entered the
    requantizer; this also keeps a finished sum from landing on a moving one in the result
    chains (which needs ``2 rows - 1``)."""
    return 2 * rows + cols + pe_depth(mult) - 2


def gemm_flush_cycles(rows: int, cols: int, mult: str = "dsp", mult_bits: int = 16) -> int:
    """Cycles after a tile's last beat enters the array until all its rows are past the
    output queue's write mask, with margin: ``latency + 2 rows``.  After a reset that comes
    sooner, the rows still in flight are dropped and no tile's last beat enters until then."""
    return gemm_latency(rows, cols, mult, mult_bits) + 2 * rows


class Gemm(wiring.Component):
    """Output-stationary systolic GEMM with bias and per-output-channel requantization.

    Parameters
    ----------
    rows, cols : int
        Array size: a tile is ``rows`` rows of A (output rows) by ``cols`` rows of W (output
        channels).  Default 8 x 8.
    a_bits, a_signed : int, bool
        Activation width and signedness (unsigned for post-Softmax probabilities).
    w_bits : int
        Signed weight width (8 or 4 for the W8A8 / W4A8 graphs).
    acc_bits : int
        Signed accumulator width (32); also the width of the output lanes.
    mult_bits : int
        Width of the unsigned requantization multipliers (16).
    e_bits : int
        Width of the per-channel shifts (6: 0..63).
    mult : str
        ``"dsp"``: every multiplication is ``*`` (DSP blocks after synthesis); ``"lut"``:
        carry-save trees of LUTs (:func:`hwgen.pipeline.compress`), which on ECP5 clock
        faster than yosys's DSP mapping (``hwgen report``).

    Members
    -------
    a : In(stream.Signature(StructLayout({"data": ArrayLayout(a_shape, rows), "last": 1})))
        Operand beat k of a tile: ``A[m0 + i, k]`` in lane i; ``last`` on the tile's k = K-1.
    w : In(stream.Signature(ArrayLayout(signed(w_bits), cols)))
        ``W[n0 + j, k]`` in lane j.  ``a`` and ``w`` are joined: a beat is taken when both
        are valid (``a.ready`` depends on ``w.valid`` and vice versa, as in a join; both
        also depend on ``a.payload.last``: a tile's last beat may have to wait).
    p : In(stream.Signature(StructLayout(bias, m, e, out_bits)))
        One beat per tile, in tile order: ``bias`` (signed acc_bits), ``m`` (unsigned
        mult_bits), ``e`` (unsigned e_bits) per output channel j, and ``out_bits`` (0: raw
        ``acc + bias``; 2..acc_bits: requantize and clamp to that signed width).  It is
        taken into a holding register as soon as the previous one is in use, and the tile's
        last operand beat waits for it.
    o : Out(stream.Signature(ArrayLayout(signed(acc_bits), cols)))
        ``rows`` beats per tile, row r = ``C[m0 + r, n0:n0+cols]`` (requantized values are
        sign-extended).  Rows or lanes beyond M or N carry the padding's results (bias
        included); the host drops them.

    Protocol
    --------
    Tiles of any K >= 1 follow each other back to back on (a, w); the tile boundary is only
    the ``last`` flag, so M, N and K are the host's business (any K while the accumulator
    bound holds: K <= 768 at 8-bit operands and 32-bit accumulators with room for a bias).
    Output back-pressure fills the output queue; a tile's last beat then waits until the
    queue has room for its rows, and the input waits behind it; nothing is dropped or
    reordered.

    Reset
    -----
    ``rst`` (synchronous) resets, on the clock edge where it is high, what the ports see:
    the input register and the held ``p`` beat are emptied, the next operand beat starts a
    tile, the output queue is emptied and its credits restored.  Nothing else has a reset
    (a few dozen flip-flops do, so the reset net's fan-out is small: ``hwgen report`` times
    it): beats already in the array drain on their own (the array, the result chains and the
    requantizer have no enable) and their rows are dropped before the queue.  Until they are
    gone, at most :func:`gemm_flush_cycles` (40 on 8 x 8 with LUT products) after the last
    tile's last beat entered, a tile's last beat waits; a reset with no rows in flight costs
    nothing.

    Latency and throughput
    ----------------------
    Latency :func:`gemm_latency` = ``cols + pe_depth + requant_latency + 2`` cycles from the
    handshake of a tile's last operand beat to its first output row (20 on 8 x 8 with DSP
    products, 24 with LUT products); the other rows follow every other cycle.  Throughput
    one operand beat (``rows x cols`` MACs) per cycle while tiles have ``K >=``
    :func:`gemm_min_tile_period` (24 or 26 on 8 x 8) and ``o`` is ready; a shorter tile
    still takes that long.  A product of T tiles of depth K thus takes about
    ``T K + latency + 2 rows`` cycles from first input beat to last output beat (DeiT-Tiny's
    QKV projection, 197 x 192 x 576 on 8 x 8: 1800 tiles; ``reports/perf_units.json``).
    """

    def __init__(self, rows: int = 8, cols: int = 8, *, a_bits: int = 8, w_bits: int = 8, acc_bits: int = 32,
                 mult_bits: int = 16, a_signed: bool = True, e_bits: int = E_BITS,
                 mult: str = "dsp"):
        try:
            self._check(rows, cols, a_bits, w_bits, acc_bits, mult_bits, a_signed, e_bits, mult)
        except Exception:
            self._MustUse__silence = True    # refused parameters: no "never used" warning
            raise
        self.a_shape = signed(a_bits) if self.a_signed else unsigned(a_bits)
        self.latency = gemm_latency(rows, cols, mult, mult_bits)
        self.min_tile_period = gemm_min_tile_period(rows, cols, mult)
        self.flush_cycles = gemm_flush_cycles(rows, cols, mult, mult_bits)
        self.out_depth = 2 * rows           # output queue: two tiles of rows
        self.a_layout = data.StructLayout({"data": lane_layout(self.a_shape, rows), "last": 1})
        self.w_layout = lane_layout(signed(w_bits), cols)
        self.p_layout = data.StructLayout(requant_param_fields(cols, acc_bits, mult_bits, e_bits))
        self.o_layout = lane_layout(signed(acc_bits), cols)
        super().__init__({
            "a": In(stream.Signature(self.a_layout)),
            "w": In(stream.Signature(self.w_layout)),
            "p": In(stream.Signature(self.p_layout)),
            "o": Out(stream.Signature(self.o_layout)),
        })

    def _check(self, rows, cols, a_bits, w_bits, acc_bits, mult_bits, a_signed, e_bits, mult) -> None:
        self.rows = check_range("gemm rows", rows, 1, 64)
        self.cols = check_range("gemm cols", cols, 1, 64)
        self.a_bits = check_range("a_bits", a_bits, 2, 16)
        self.w_bits = check_range("w_bits", w_bits, 2, 16)
        self.acc_bits = check_range("acc_bits", acc_bits, 8, 64)
        self.mult_bits = check_range("mult_bits", mult_bits, 2, 32)
        self.e_bits = check_range("gemm e_bits", e_bits, 1, 7)
        self.a_signed = bool(a_signed)
        self.mult = check_choice("gemm_mult", mult, GEMM_MULTIPLIERS)
        need = self.a_bits + self.w_bits + (0 if self.a_signed else 1)
        check_range("acc_bits", acc_bits, need, 64)

    @classmethod
    def from_config(cls, cfg, rows: int = 8, cols: int = 8, a_signed: bool = True) -> "Gemm":
        """From a :class:`hwgen.config.HwConfig` (a_bits, w_bits, acc_bits, mult_bits,
        gemm_e_bits, gemm_mult)."""
        return cls(rows, cols, a_bits=cfg.a_bits, w_bits=cfg.w_bits, acc_bits=cfg.acc_bits,
                   mult_bits=cfg.mult_bits, a_signed=a_signed, e_bits=cfg.gemm_e_bits, mult=cfg.gemm_mult)

    def elaborate(self, platform):
        m = Module()
        R, C, A = self.rows, self.cols, self.acc_bits
        P, D, F = self.min_tile_period, self.out_depth, self.flush_cycles

        # --- input register: join of a and w.  Every beat taken enters the array on the next
        #     cycle, so the input register loads on every cycle (no enable fans out to it).
        #     A tile's last beat is taken only when last_ok (a register) says that its p beat
        #     is there, the tile period since the previous last beat has passed (holdoff: the
        #     held parameters and the chains are free: gemm_min_tile_period) and the output
        #     queue has room for the tile's rows (credits, returned as o takes rows).
        #     Only the state that the ports see is reset (valid bits of the input and p
        #     registers, the tile start flag, the credits, the queue); the array, the result
        #     chains and the requantizer run on unreset valid bits, so beats in flight at a
        #     reset drain on their own and their rows are dropped before the queue (stale)
        rst = ResetSignal()
        r_valid = Signal()                           # the registered beat enters the array
        r_last = Signal(reset_less=True)
        r_a = Signal(lane_layout(self.a_shape, R), reset_less=True)
        r_w = Signal(self.w_layout, reset_less=True)
        hold_en = Signal()                           # ... and it is a tile's last beat
        first = Signal(init=1)                       # the next beat to enter starts a tile
        last_ok = Signal()                           # a last beat may be taken this cycle
        # the p beat waits in p_in (loaded on every cycle while empty: no wide enable from a
        # handshake); the tile's parameters are then held in p_hold until its last row has
        # passed requantizer stage 1
        p_in = Signal(self.p_layout, reset_less=True)
        p_in_valid = Signal()
        p_hold = Signal(self.p_layout, reset_less=True)
        holdoff = Signal(range(P), reset_less=True)  # cycles until another last beat may be taken
        credits = Signal(range(D + 1), init=D)       # output queue rows not yet promised
        # pending: cycles until the rows of the last tile that entered the array are past the
        # queue's write mask; stale: a reset came while they were not, so they are dropped
        pending = Signal(range(F + 1), reset_less=True)
        stale = Signal(reset_less=True)
        may = Signal()                               # the join may take a beat
        pop = Signal()                               # o hands a row over
        take = Signal()
        take_last = Signal()
        m.d.comb += [may.eq(~self.a.payload.last | last_ok),
                     take.eq(self.a.valid & self.w.valid & may),
                     take_last.eq(self.a.valid & self.w.valid & self.a.payload.last & last_ok),
                     self.a.ready.eq(self.w.valid & may),
                     self.w.ready.eq(self.a.valid & may),
                     self.p.ready.eq(~p_in_valid)]
        m.d.sync += [r_valid.eq(take), hold_en.eq(take_last), r_last.eq(self.a.payload.last),
                     r_a.eq(self.a.payload.data), r_w.eq(self.w.payload)]
        with m.If(r_valid):
            m.d.sync += first.eq(r_last)
        # the raw flag (out_bits == 0) rides along in registers of its own: decoded from
        # p_hold it fanned out to every lane's selects after two LUT levels
        raw_in = Signal(reset_less=True)
        raw_hold = Signal(reset_less=True)
        with m.If(~p_in_valid):
            m.d.sync += [p_in.eq(self.p.payload), p_in_valid.eq(self.p.valid),
                         raw_in.eq(~self.p.payload.out_bits.any())]
        with m.If(hold_en):
            m.d.sync += [p_hold.eq(p_in), p_in_valid.eq(0), raw_hold.eq(raw_in)]
        # last_ok for the next cycle: not right after a last beat (holdoff, loaded when one is
        # taken: P cycles between them), a p beat held or arriving, room for R rows (credits
        # count a tile's rows when its last beat enters the array, holdoff covers the lag), no
        # stale rows.  After a reset with rows in flight, no last beat enters until they are
        # gone (F >= P: the holdoff has then run out too)
        busy_next = Signal()
        m.d.comb += busy_next.eq(hold_en | (pending > 1))
        m.d.sync += [holdoff.eq(Mux(take_last, P - 1, Mux(holdoff.any(), holdoff - 1, 0))),
                     pending.eq(Mux(hold_en, F, Mux(pending.any(), pending - 1, 0))),
                     stale.eq((rst | stale) & busy_next),
                     credits.eq(credits - Mux(hold_en, R, 0) + pop),
                     last_ok.eq(~take_last & (holdoff <= 1) & (p_in_valid | self.p.valid) & (credits >= R) & ~stale)]

        # --- skew: row i of a (with its valid/first/last) delayed i, lane j of w delayed j
        ctl = data.StructLayout({"valid": 1, "first": 1, "last": 1})

        def delayed(value, n, shape, name, reset_less=True):
            for d in range(n):
                s = Signal(shape, name=f"{name}_d{d + 1}", reset_less=reset_less)
                m.d.sync += s.eq(value)
                value = s
            return value

        c0 = Signal(ctl)
        m.d.comb += [c0.valid.eq(r_valid), c0.first.eq(first), c0.last.eq(r_last)]
        row_ctl = [c0]
        for i in range(1, R):
            s = Signal(ctl, name=f"ctl_row{i}", reset_less=True)
            m.d.sync += s.eq(row_ctl[-1])
            row_ctl.append(s)
        row_a = [delayed(r_a[i], i, self.a_shape, f"a_skew{i}") for i in range(R)]
        col_w = [delayed(r_w[j], j, signed(self.w_bits), f"w_skew{j}") for j in range(C)]

        def registered(value, name):
            s = data_register(value.shape(), name, value)
            m.d.sync += s.eq(value)
            return s

        # --- the PEs: the registered product (a DSP's; or, from LUTs, half a carry-save tree,
        #     the other half, then the sum), then accumulate; a finished sum drops into its column's result
        #     chain at its row
        chain = [[Signal(signed(A), name=f"res_{i}_{j}", reset_less=True) for j in range(C)] for i in range(R)]
        chain_valid = [Signal(name=f"res_valid_{i}", reset_less=True) for i in range(R)]     # column C-1's rows
        w_in = list(col_w)
        for i in range(R):
            a, c = row_a[i], row_ctl[i]
            for j in range(C):
                w = w_in[j]
                prod = Signal(product_shape(a, w), name=f"prod_{i}_{j}", reset_less=True)
                if self.mult == "lut":      # half the carry-save tree; the other half; the sum
                    W = prod.shape().width
                    pps = partial_products(a, w)
                    half = compress(m, pps, W, max(1, compress_levels(len(pps)) // 2), f"pe_{i}_{j}_a")
                    half = [registered(v, f"csa_{i}_{j}_{t}") for t, v in enumerate(half)]
                    pair = [registered(v, f"csb_{i}_{j}_{t}") for t, v in enumerate(compress(m, half, W, name=f"pe_{i}_{j}_b"))]
                    m.d.sync += prod.eq(fit(sum_pair(pair), prod.shape()))
                else:               # the DSP's registered operands and product, then ours
                    m.d.sync += prod.eq(dsp_mult(m, a, w, f"dsp_{i}_{j}"))
                c_r = Signal(ctl, name=f"c_{i}_{j}", reset_less=True)        # the beat's control, one cycle on
                c_p = c_r
                for d in range(pe_depth(self.mult) - 2):     # ... and on, with the product
                    c_p = registered(c_p, f"cp{d}_{i}_{j}")
                acc = Signal(signed(A), name=f"acc_{i}_{j}", reset_less=True)
                nxt = Signal(signed(A), name=f"sum_{i}_{j}")
                fin = Signal(name=f"fin_{i}_{j}")
                m.d.sync += c_r.eq(c)
                m.d.comb += [nxt.eq(Mux(c_p.first, prod, acc + prod)), fin.eq(c_p.valid & c_p.last)]
                with m.If(c_p.valid):
                    m.d.sync += acc.eq(nxt)
                # one cycle after the last beat acc holds the finished sum (still, while the
                # next tile's first beat overwrites it) and drops it into the chain, which
                # moves up one row per cycle; tiles are far enough apart (min_tile_period)
                # that a finished sum never lands on a moving one
                done = Signal(name=f"done_{i}_{j}", reset_less=True)
                m.d.sync += done.eq(fin)
                with m.If(done):
                    m.d.sync += chain[i][j].eq(acc)
                if i < R - 1:
                    with m.Else():
                        m.d.sync += chain[i][j].eq(chain[i + 1][j])
                if j == C - 1:
                    m.d.sync += chain_valid[i].eq(done | (chain_valid[i + 1] if i < R - 1 else 0))
                if j < C - 1:                               # pass a and its control to the right
                    a_r = Signal(self.a_shape, name=f"a_{i}_{j}", reset_less=True)
                    m.d.sync += a_r.eq(a)
                    a, c = a_r, c_r
                if i < R - 1:                               # pass w down
                    w_r = Signal(signed(self.w_bits), name=f"w_{i}_{j}", reset_less=True)
                    m.d.sync += w_r.eq(w)
                    w_in[j] = w_r

        # --- deskew the chains' top row (column j is C-1-j cycles ahead of column C-1)
        #     and the held parameters, decoded in two register stages of their own (right two
        #     cycles after p_hold changed: in time for the tile's first row, which reaches the
        #     requantizer cols + pe_depth cycles after the tile's last beat entered the array,
        #     and not before the previous tile's last row has passed requantizer stage 1:
        #     gemm_min_tile_period), so that no wide fan-out is in front of the requantizer
        fields = requant_decoded_fields(C, A, self.mult_bits, self.e_bits)
        p_dec = requant_decode_stages(m, p_hold, A, name="p_dec", raw=raw_hold)
        rq_in = Signal(data.StructLayout({"acc": lane_layout(signed(A), C), **fields}))
        for j in range(C):
            m.d.comb += rq_in.acc[j].eq(delayed(chain[0][j], C - 1 - j, signed(A), f"deskew{j}"))
        m.d.comb += [rq_in[name].eq(p_dec[name]) for name in fields]

        # --- requantizer (never stalls: the credits keep room for its rows in the queue)
        outs = requant_stages(m, Const(1), rq_in, A, mult=self.mult, decoded=True)
        assert len(outs) == C
        # the rows' valid bits, beside the requantizer; the last stage drops stale rows (and,
        # reset, the row it would take at the reset edge itself)
        L = requant_latency(self.mult, self.mult_bits)
        rq_valid = chain_valid[0]
        for k in range(L):
            v = Signal(name=f"rq_valid{k + 1}", reset_less=k < L - 1)
            m.d.sync += v.eq(rq_valid & ~stale if k == L - 1 else rq_valid)
            rq_valid = v
        # --- output queue: D rows in distributed memory, read asynchronously, so that o.ready
        #     drives no wide enable (an output register would need one); the credits keep room
        #     for every row written, so a write needs no check either
        queue = m.submodules.out_queue = Memory(shape=unsigned(C * A), depth=D, init=[])
        wp = queue.write_port()
        rp = queue.read_port(domain="comb")
        produce = Signal(range(D))
        consume = Signal(range(D))
        level = Signal(range(D + 1))
        m.d.comb += [wp.addr.eq(produce), wp.data.eq(Cat(*outs)), wp.en.eq(rq_valid), rp.addr.eq(consume),
                     pop.eq(self.o.valid & self.o.ready),
                     self.o.valid.eq(level.any()), self.o.payload.eq(rp.data)]
        with m.If(rq_valid):
            m.d.sync += produce.eq(Mux(produce == D - 1, 0, produce + 1))
        with m.If(pop):
            m.d.sync += consume.eq(Mux(consume == D - 1, 0, consume + 1))
        m.d.sync += level.eq(level + rq_valid - pop)
        return m
