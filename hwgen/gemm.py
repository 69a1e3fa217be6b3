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
PE(i, j) keeps ``acc = sum_k A[i, k] W[j, k]`` (``acc_bits``, restarted by the tile's first
beat) and on the tile's last beat copies the finished sum into its result register, so the
next tile's beats follow the previous tile's without a gap (no fill or drain bubble between
tiles).  When the last beat has reached PE(rows-1, cols-1) the result bank holds the whole
tile; it is shifted out row by row (upwards, row 0 first) into the requantizer stages
(:func:`hwgen.requant.requant_stages`, the pipeline of :class:`~hwgen.requant.Requant`, inlined so
the unit is one Verilog module), which add the bias and requantize.  The next tile's *last* beat waits in the input
register until the bank is empty (``busy``); all other beats flow on.  The array itself never
stalls: gaps in the input become bubbles (valid = 0) in the skew.

Worst case of the accumulator: ``|A| |W| K + |bias| < 2^(acc_bits-1)`` must hold (checked when
the graph is built: :meth:`hwgen.config.HwConfig.check_gemm`); then nothing wraps.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import check_range
from .pipeline import lane_layout, stream_pipeline
from .requant import E_BITS, REQUANT_LATENCY, requant_param_fields, requant_stages

__all__ = ["Gemm", "gemm_latency", "gemm_min_tile_period"]


def gemm_latency(rows: int, cols: int) -> int:
    """Cycles from the handshake of a tile's last operand beat to its first output beat."""
    return rows + cols + REQUANT_LATENCY


def gemm_min_tile_period(rows: int, cols: int) -> int:
    """Fewest cycles between the last beats of two consecutive tiles: wavefront to the far
    corner (rows + cols - 1), then rows drain beats."""
    return 2 * rows + cols - 1


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

    Members
    -------
    a : In(stream.Signature(StructLayout({"data": ArrayLayout(a_shape, rows), "last": 1})))
        Operand beat k of a tile: ``A[m0 + i, k]`` in lane i; ``last`` on the tile's k = K-1.
    w : In(stream.Signature(ArrayLayout(signed(w_bits), cols)))
        ``W[n0 + j, k]`` in lane j.  ``a`` and ``w`` are joined: a beat is taken when both
        are valid (``a.ready`` depends on ``w.valid`` and vice versa, as in a join).
    p : In(stream.Signature(StructLayout(bias, m, e, out_bits)))
        One beat per tile, in tile order: ``bias`` (signed acc_bits), ``m`` (unsigned
        mult_bits), ``e`` (unsigned e_bits) per output channel j, and ``out_bits`` (0: raw
        ``acc + bias``; 2..acc_bits: requantize and clamp to that signed width).  It is taken
        with the tile's last output row, so it may arrive any time before the tile drains.
    o : Out(stream.Signature(ArrayLayout(signed(acc_bits), cols)))
        ``rows`` beats per tile, row r = ``C[m0 + r, n0:n0+cols]`` (requantized values are
        sign-extended).  Rows or lanes beyond M or N carry the padding's results (bias
        included); the host drops them.

    Protocol
    --------
    Tiles of any K >= 1 follow each other back to back on (a, w); the tile boundary is only
    the ``last`` flag, so M, N and K are the host's business (any K while the accumulator
    bound holds: K <= 768 at 8-bit operands and 32-bit accumulators with room for a bias).
    Output back-pressure stalls the requantizer, then the drain, and finally the input
    (at the next tile's last beat); nothing is dropped or reordered.

    Latency and throughput
    ----------------------
    Latency :func:`gemm_latency` = ``rows + cols + 4`` cycles from the handshake of a tile's
    last operand beat to its first output row (1 input register, ``rows + cols - 2`` through
    the skewed array, 1 into the result bank, 4 in the requantizer); the other rows follow one
    per cycle.  Throughput one operand beat (``rows x cols`` MACs) per cycle while tiles have
    ``K >= 2 rows + cols - 1`` (:func:`gemm_min_tile_period`; 23 on 8 x 8) and ``o`` is ready;
    a shorter tile still takes that long.  A product of T tiles of depth K thus takes about
    ``T K + rows + cols + 4 + rows - 1`` cycles from first input beat to last output beat
    (DeiT-Tiny's QKV projection, 197 x 192 x 576 on 8 x 8: 1800 tiles, 345,627 cycles measured).
    """

    def __init__(self, rows: int = 8, cols: int = 8, *, a_bits: int = 8, w_bits: int = 8, acc_bits: int = 32,
                 mult_bits: int = 16, a_signed: bool = True, e_bits: int = E_BITS):
        try:
            self._check(rows, cols, a_bits, w_bits, acc_bits, mult_bits, a_signed, e_bits)
        except Exception:
            self._MustUse__silence = True    # refused parameters: no "never used" warning
            raise
        self.a_shape = signed(a_bits) if self.a_signed else unsigned(a_bits)
        self.latency = gemm_latency(rows, cols)
        self.min_tile_period = gemm_min_tile_period(rows, cols)
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

    def _check(self, rows, cols, a_bits, w_bits, acc_bits, mult_bits, a_signed, e_bits) -> None:
        self.rows = check_range("gemm rows", rows, 1, 64)
        self.cols = check_range("gemm cols", cols, 1, 64)
        self.a_bits = check_range("a_bits", a_bits, 2, 16)
        self.w_bits = check_range("w_bits", w_bits, 2, 16)
        self.acc_bits = check_range("acc_bits", acc_bits, 8, 64)
        self.mult_bits = check_range("mult_bits", mult_bits, 2, 32)
        self.e_bits = check_range("gemm e_bits", e_bits, 1, 7)
        self.a_signed = bool(a_signed)
        need = self.a_bits + self.w_bits + (0 if self.a_signed else 1)
        check_range("acc_bits", acc_bits, need, 64)

    @classmethod
    def from_config(cls, cfg, rows: int = 8, cols: int = 8, a_signed: bool = True) -> "Gemm":
        """From a :class:`hwgen.config.HwConfig` (a_bits, w_bits, acc_bits, mult_bits)."""
        return cls(rows, cols, a_bits=cfg.a_bits, w_bits=cfg.w_bits, acc_bits=cfg.acc_bits,
                   mult_bits=cfg.mult_bits, a_signed=a_signed)

    def elaborate(self, platform):
        m = Module()
        R, C, A = self.rows, self.cols, self.acc_bits

        # --- input register: join of a and w -------------------------------------------
        r_valid = Signal()
        r_last = Signal()
        r_a = Signal(lane_layout(self.a_shape, R), reset_less=True)
        r_w = Signal(self.w_layout, reset_less=True)
        busy = Signal()           # a tile's last beat is in the array or its results not drained
        first = Signal(init=1)    # the next beat to enter starts a tile
        fire = Signal()           # the registered beat enters the array this cycle
        take = Signal()           # the input register takes a new beat this cycle
        m.d.comb += [fire.eq(r_valid & ~(r_last & busy)),
                     take.eq(~r_valid | fire),
                     self.a.ready.eq(take & self.w.valid),
                     self.w.ready.eq(take & self.a.valid)]
        with m.If(take):
            m.d.sync += [r_valid.eq(self.a.valid & self.w.valid), r_last.eq(self.a.payload.last),
                         r_a.eq(self.a.payload.data), r_w.eq(self.w.payload)]
        with m.If(fire):
            m.d.sync += first.eq(r_last)

        # --- skew: row i of a (with its valid/first/last) delayed i, lane j of w delayed j
        ctl = data.StructLayout({"valid": 1, "first": 1, "last": 1})

        def delayed(value, n, shape, name, reset_less=True):
            for d in range(n):
                s = Signal(shape, name=f"{name}_d{d + 1}", reset_less=reset_less)
                m.d.sync += s.eq(value)
                value = s
            return value

        c0 = Signal(ctl)
        m.d.comb += [c0.valid.eq(fire), c0.first.eq(first), c0.last.eq(r_last)]
        row_ctl = [c0]
        for i in range(1, R):
            s = Signal(ctl, name=f"ctl_row{i}")
            m.d.sync += s.eq(row_ctl[-1])
            row_ctl.append(s)
        row_a = [delayed(r_a[i], i, self.a_shape, f"a_skew{i}") for i in range(R)]
        col_w = [delayed(r_w[j], j, signed(self.w_bits), f"w_skew{j}") for j in range(C)]

        # --- the PEs --------------------------------------------------------------------
        acc = [[Signal(signed(A), name=f"acc_{i}_{j}", reset_less=True) for j in range(C)] for i in range(R)]
        res = [[Signal(signed(A), name=f"res_{i}_{j}", reset_less=True) for j in range(C)] for i in range(R)]
        bank_full = Signal()      # res holds a whole tile, not yet drained
        drain_row = Signal(range(R))
        drain_fire = Signal()

        # drain: shift the bank up one row per output beat (row 0 leaves first)
        with m.If(drain_fire):
            for i in range(R - 1):
                for j in range(C):
                    m.d.sync += res[i][j].eq(res[i + 1][j])

        a_in = list(row_a)
        c_in = list(row_ctl)
        w_in = list(col_w)
        for i in range(R):
            for j in range(C):
                a, w, c = a_in[i], w_in[j], c_in[i]
                prod = a * w
                nxt = Signal(signed(A), name=f"sum_{i}_{j}")
                m.d.comb += nxt.eq(Mux(c.first, prod, acc[i][j] + prod))
                with m.If(c.valid):
                    m.d.sync += acc[i][j].eq(nxt)
                    with m.If(c.last):             # never while draining: busy holds the last beat back
                        m.d.sync += res[i][j].eq(nxt)
                if j < C - 1:                      # pass a and its control to the right
                    a_r = Signal(self.a_shape, name=f"a_{i}_{j}", reset_less=True)
                    c_r = Signal(ctl, name=f"c_{i}_{j}")
                    m.d.sync += [a_r.eq(a), c_r.eq(c)]
                    a_in[i], c_in[i] = a_r, c_r
                if i < R - 1:                      # pass w down
                    w_r = Signal(signed(self.w_bits), name=f"w_{i}_{j}", reset_less=True)
                    m.d.sync += w_r.eq(w)
                    w_in[j] = w_r
            # the far corner: the tile is complete once its last beat is computed there
        corner = c_in[R - 1]
        with m.If(corner.valid & corner.last):
            m.d.sync += bank_full.eq(1)

        # --- input gate bookkeeping ---------------------------------------------------------
        with m.If(fire & r_last):
            m.d.sync += busy.eq(1)

        # --- drain into the requantizer (inline stages: one module) -----------------------
        rq_en = Signal()          # requantizer pipeline enable (= its input ready)
        rq_in = Signal(data.StructLayout({"acc": lane_layout(signed(A), C),
                                          **requant_param_fields(C, A, self.mult_bits, self.e_bits)}))
        rq_valid_in = Signal()
        last_row = Signal()
        m.d.comb += [last_row.eq(drain_row == R - 1),
                     rq_valid_in.eq(bank_full & self.p.valid),
                     drain_fire.eq(rq_valid_in & rq_en),
                     self.p.ready.eq(bank_full & rq_en & last_row),
                     rq_in.bias.eq(self.p.payload.bias), rq_in.m.eq(self.p.payload.m),
                     rq_in.e.eq(self.p.payload.e), rq_in.out_bits.eq(self.p.payload.out_bits)]
        for j in range(C):
            m.d.comb += rq_in.acc[j].eq(res[0][j])
        with m.If(drain_fire):
            m.d.sync += drain_row.eq(drain_row + 1)
            with m.If(last_row):
                m.d.sync += [drain_row.eq(0), bank_full.eq(0), busy.eq(0)]
        outs = requant_stages(m, rq_en, rq_in, A)
        for j in range(C):
            m.d.comb += self.o.payload[j].eq(outs[j])
        m.d.comb += self.o.valid.eq(stream_pipeline(m, REQUANT_LATENCY, rq_valid_in, self.o.ready, rq_en))
        return m
