"""Simulation host for :class:`hwgen.gemm.Gemm`: jobs, the test host, and the utilization figure.

A Python per-cycle driver tops out near 85k cycles/s, and a DeiT-Tiny projection is 345k
cycles, so the GEMM is not driven from Python beat by beat.  Instead each GEMM under test sits
in a small Verilog *test host* (written here, testbench code, not a generated unit) that plays
the host's DMA:

* four memories: A in k-slices per row tile (``A[mt rows .. +rows, k]``, one word per
  (mt, k)), W in k-slices per column tile, one parameter word per column tile (bias, m, e,
  out_bits: the Gemm's ``p`` payload), and the output rows as they arrive;
* a sequencer that replays ``for mt: for nt: for k:`` from those memories into the Gemm's
  ``a``/``w`` streams (``last`` at k = K-1) and the parameter words into ``p``, each through
  a 4-deep FIFO, so the sources sustain one beat per cycle;
* random gaps in each input's valid and random back-pressure on the output from xorshift32
  generators (probabilities gap/256, seeded per job; valid, once up, stays up until taken);
* counters: the cycle of the first and last input handshake, of the first tile's last input
  beat, of the first and last output handshake, and how many beats crossed each port.

The cocotb testbench (:mod:`sim.tb_gemm`) writes the memories through a load port (one word
per cycle), pulses ``start``, sleeps until ``done`` (the simulator runs free), reads the
output memory back and scores it against the golden values.  Every host in one build shares
one top (``gemm_tb_top``, ports ``<system>_<port>``), so one Verilator build serves several
array configurations.

:func:`measure_gemm_utilization` runs a whole M x K x N product on it and reports MACs /
(cycles x rows x cols) with cycles from the first input beat to the last output beat.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from golden.errors import UserError
from golden.executor import run_linear, run_matmul
from golden.graph import Op
from hwgen.config import GEMM_MULTIPLIERS, HwConfig

__all__ = ["GemmSystem", "STANDARD_SYSTEMS", "build_bench", "linear_job", "matmul_job", "run_jobs",
           "measure_gemm_utilization", "host_verilog", "TB"]

TB = "sim.tb_gemm"
TOP = "gemm_tb_top"
FIFO_DEPTH = 4


@dataclass(frozen=True)
class GemmSystem:
    """One Gemm configuration in a test host, with the capacities of the host's memories
    (words: A k-slices, W k-slices, parameter words, output rows)."""

    name: str
    rows: int = 8
    cols: int = 8
    a_bits: int = 8
    w_bits: int = 8
    a_signed: bool = True
    acc_bits: int = 32
    mult_bits: int = 16
    a_depth: int = 1024
    w_depth: int = 1024
    p_depth: int = 64
    o_depth: int = 1024
    mult: str = HwConfig.gemm_mult

    def gemm(self):
        from hwgen.gemm import Gemm

        return Gemm(self.rows, self.cols, a_bits=self.a_bits, w_bits=self.w_bits, acc_bits=self.acc_bits,
                    mult_bits=self.mult_bits, a_signed=self.a_signed, mult=self.mult)

    def p_fields(self) -> list[tuple[str, int, int, int]]:
        """(field, offset, lane bits, lanes) of the parameter word, from the Gemm's layout."""
        from amaranth.lib import data

        from hwgen.requant import requant_param_fields

        lay = data.StructLayout(requant_param_fields(self.cols, self.acc_bits, self.mult_bits))
        out = []
        for name, field in lay:
            shape = field.shape
            if isinstance(shape, data.ArrayLayout):
                out.append((name, field.offset, shape.elem_shape.width, shape.length))
            else:
                out.append((name, field.offset, shape.width, 1))
        return out

    @property
    def p_bits(self) -> int:
        return max(off + bits * n for _, off, bits, n in self.p_fields())

    @property
    def a_word_bits(self) -> int:
        return self.rows * self.a_bits

    @property
    def w_word_bits(self) -> int:
        return self.cols * self.w_bits

    @property
    def o_word_bits(self) -> int:
        return self.cols * self.acc_bits


# The systems of the test build: W8A8 8x8 (memories sized for DeiT-Tiny's QKV projection,
# M=197, K=192, N=576), W4A8 8x8, and a non-square 3x5 array with unsigned activations (the
# attention-probability x V product), all with the default multipliers; and W8A8 8x8 with
# the other kind (HwConfig.gemm_mult).
STANDARD_SYSTEMS = (
    GemmSystem("s8", a_depth=8192, w_depth=16384, p_depth=128, o_depth=16384),
    GemmSystem("s4", w_bits=4, a_depth=2048, w_depth=2048, p_depth=64, o_depth=2048),
    GemmSystem("u35", rows=3, cols=5, a_signed=False, a_depth=2048, w_depth=2048, p_depth=64, o_depth=2048),
    GemmSystem("x8", a_depth=2048, w_depth=2048, p_depth=64, o_depth=2048,
               mult=next(m for m in GEMM_MULTIPLIERS if m != HwConfig.gemm_mult)),
)


def _clog2(n: int) -> int:
    return max(1, (n - 1).bit_length())


_FIFO_V = """
module gemm_tb_fifo #(parameter W = 8) (
  input clk, input rst, input w_en, input [W-1:0] w_data, input r_en,
  output [W-1:0] r_data, output r_rdy, output [2:0] count);
  reg [W-1:0] mem [0:3];
  reg [1:0] wp, rp;
  reg [2:0] n;
  assign r_data = mem[rp];
  assign r_rdy = n != 3'd0;
  assign count = n;
  always @(posedge clk) begin
    if (w_en) mem[wp] <= w_data;
    if (rst) begin
      wp <= 2'd0; rp <= 2'd0; n <= 3'd0;
    end else begin
      if (w_en) wp <= wp + 2'd1;
      if (r_en) rp <= rp + 2'd1;
      n <= n + {2'd0, w_en} - {2'd0, r_en};
    end
  end
endmodule
"""

_HOST_PORTS = [  # (direction, width or None for the system-specific ones, name)
    ("input", 2, "ld_sel"), ("input", 24, "ld_addr"), ("input", "LDW", "ld_data"), ("input", 1, "ld_en"),
    ("input", 24, "rd_addr"), ("output", "OW", "rd_data"),
    ("input", 16, "in_mt"), ("input", 16, "in_nt"), ("input", 16, "in_k"), ("input", 32, "in_out"),
    ("input", 1, "in_start"), ("input", 32, "in_seed"),
    ("input", 8, "in_gap_a"), ("input", 8, "in_gap_w"), ("input", 8, "in_gap_p"), ("input", 8, "in_stall_o"),
    ("output", 1, "done"),
    ("output", 32, "first_in"), ("output", 32, "first_last_in"), ("output", 32, "last_in"),
    ("output", 32, "first_out"), ("output", 32, "last_out"),
    ("output", 32, "a_count"), ("output", 32, "w_count"), ("output", 32, "p_count"), ("output", 32, "out_count"),
]
STAT_PORTS = ("first_in", "first_last_in", "last_in", "first_out", "last_out", "a_count", "w_count", "p_count",
              "out_count")


def _port_width(s: GemmSystem, w) -> int:
    if w == "LDW":
        return max(s.a_word_bits, s.w_word_bits, s.p_bits)
    if w == "OW":
        return s.o_word_bits
    return w


def host_verilog(s: GemmSystem) -> str:
    """The test host module ``<name>_host`` around the Gemm module ``<name>_gemm``."""
    AWW, WWW, PW, OW = s.a_word_bits, s.w_word_bits, s.p_bits, s.o_word_bits
    ADB, WDB, PDB, ODB = (_clog2(d) for d in (s.a_depth, s.w_depth, s.p_depth, s.o_depth))
    ports = ",\n  ".join(f"{d} {'reg ' if d == 'output' and n not in ('done',) else ''}"
                         f"[{_port_width(s, w) - 1}:0] {n}" for d, w, n in _HOST_PORTS)
    return f"""
module {s.name}_host (
  input clk, input rst,
  {ports}
);
  function [31:0] xs32;
    input [31:0] x;
    reg [31:0] y;
    begin
      y = x ^ (x << 13); y = y ^ (y >> 17); xs32 = y ^ (y << 5);
    end
  endfunction

  reg [{AWW - 1}:0] amem [0:{s.a_depth - 1}];
  reg [{WWW - 1}:0] wmem [0:{s.w_depth - 1}];
  reg [{PW - 1}:0] pmem [0:{s.p_depth - 1}];
  reg [{OW - 1}:0] omem [0:{s.o_depth - 1}];

  // ---- configuration: every input is registered (no combinational path from the top's
  // inputs, which Verilator would re-evaluate whenever the testbench writes one)
  reg [15:0] cfg_mt, cfg_nt, cfg_k;
  reg [31:0] cfg_out, seed;
  reg [7:0] gap_a, gap_w, gap_p, stall_o;
  reg start;
  always @(posedge clk) begin
    cfg_mt <= in_mt; cfg_nt <= in_nt; cfg_k <= in_k; cfg_out <= in_out; seed <= in_seed;
    gap_a <= in_gap_a; gap_w <= in_gap_w; gap_p <= in_gap_p; stall_o <= in_stall_o;
    start <= in_start;
  end

  // ---- load and read-back ports
  always @(posedge clk) begin
    if (ld_en && ld_sel == 2'd0) amem[ld_addr[{ADB - 1}:0]] <= ld_data[{AWW - 1}:0];
    if (ld_en && ld_sel == 2'd1) wmem[ld_addr[{WDB - 1}:0]] <= ld_data[{WWW - 1}:0];
    if (ld_en && ld_sel == 2'd2) pmem[ld_addr[{PDB - 1}:0]] <= ld_data[{PW - 1}:0];
    rd_data <= omem[rd_addr[{ODB - 1}:0]];
  end

  // ---- streams between host and Gemm
  wire a_valid, a_ready, w_valid, w_ready, p_valid, p_ready, o_valid, o_ready;
  wire [{OW - 1}:0] o_payload;
  wire fa_rdy, fw_rdy, fp_rdy;
  wire [2:0] fa_n, fw_n, fp_n;
  wire [{AWW}:0] fa_q;
  wire [{WWW - 1}:0] fw_q;
  wire [{PW - 1}:0] fp_q;
  wire a_fire = a_valid && a_ready;
  wire w_fire = w_valid && w_ready;
  wire p_fire = p_valid && p_ready;
  wire o_fire = o_valid && o_ready;

  // ---- operand sequencer: for mt, for nt, for k (A word mt*K + k, W word nt*K + k)
  reg op_active, op_pend, op_last_q;
  reg [15:0] k, nt, mt;
  reg [23:0] a_base, a_addr, w_addr;
  reg [{AWW - 1}:0] a_q;
  reg [{WWW - 1}:0] w_q;
  wire issue_op = op_active && ({{1'b0, fa_n}} + {{3'd0, op_pend}} < 4'd{FIFO_DEPTH})
                            && ({{1'b0, fw_n}} + {{3'd0, op_pend}} < 4'd{FIFO_DEPTH});
  wire k_end = k == cfg_k - 16'd1;
  always @(posedge clk) begin
    if (issue_op) begin
      a_q <= amem[a_addr[{ADB - 1}:0]];
      w_q <= wmem[w_addr[{WDB - 1}:0]];
      op_last_q <= k_end;
    end
    op_pend <= rst ? 1'b0 : issue_op;
    if (rst) begin
      op_active <= 1'b0;
    end else if (start) begin
      op_active <= 1'b1; k <= 16'd0; nt <= 16'd0; mt <= 16'd0;
      a_base <= 24'd0; a_addr <= 24'd0; w_addr <= 24'd0;
    end else if (issue_op) begin
      if (k_end) begin
        k <= 16'd0;
        if (nt == cfg_nt - 16'd1) begin
          nt <= 16'd0; w_addr <= 24'd0;
          a_base <= a_base + {{8'd0, cfg_k}}; a_addr <= a_base + {{8'd0, cfg_k}};
          mt <= mt + 16'd1;
          if (mt == cfg_mt - 16'd1) op_active <= 1'b0;
        end else begin
          nt <= nt + 16'd1; w_addr <= w_addr + 24'd1; a_addr <= a_base;
        end
      end else begin
        k <= k + 16'd1; a_addr <= a_addr + 24'd1; w_addr <= w_addr + 24'd1;
      end
    end
  end

  // ---- parameter sequencer: one word per tile, word nt
  reg p_active, p_pend;
  reg [15:0] p_nt;
  reg [31:0] p_left;
  reg [{PW - 1}:0] p_q;
  wire issue_p = p_active && ({{1'b0, fp_n}} + {{3'd0, p_pend}} < 4'd{FIFO_DEPTH});
  always @(posedge clk) begin
    if (issue_p) p_q <= pmem[p_nt[{PDB - 1}:0]];
    p_pend <= rst ? 1'b0 : issue_p;
    if (rst) begin
      p_active <= 1'b0;
    end else if (start) begin
      p_active <= 1'b1; p_nt <= 16'd0; p_left <= cfg_mt * cfg_nt;
    end else if (issue_p) begin
      p_nt <= (p_nt == cfg_nt - 16'd1) ? 16'd0 : p_nt + 16'd1;
      p_left <= p_left - 32'd1;
      if (p_left == 32'd1) p_active <= 1'b0;
    end
  end

  gemm_tb_fifo #(.W({AWW + 1})) fa (.clk(clk), .rst(rst), .w_en(op_pend), .w_data({{op_last_q, a_q}}),
    .r_en(a_fire), .r_data(fa_q), .r_rdy(fa_rdy), .count(fa_n));
  gemm_tb_fifo #(.W({WWW})) fw (.clk(clk), .rst(rst), .w_en(op_pend), .w_data(w_q),
    .r_en(w_fire), .r_data(fw_q), .r_rdy(fw_rdy), .count(fw_n));
  gemm_tb_fifo #(.W({PW})) fp (.clk(clk), .rst(rst), .w_en(p_pend), .w_data(p_q),
    .r_en(p_fire), .r_data(fp_q), .r_rdy(fp_rdy), .count(fp_n));

  // ---- random gaps in valid (held once raised) and random back-pressure
  reg [31:0] la, lw, lp, lo;
  reg ha, hw, hp;
  assign a_valid = fa_rdy && (ha || !(la[7:0] < gap_a));
  assign w_valid = fw_rdy && (hw || !(lw[7:0] < gap_w));
  assign p_valid = fp_rdy && (hp || !(lp[7:0] < gap_p));
  assign o_ready = !(lo[7:0] < stall_o);
  always @(posedge clk) begin
    if (rst) begin
      ha <= 1'b0; hw <= 1'b0; hp <= 1'b0;
    end else begin
      ha <= a_valid && !a_ready; hw <= w_valid && !w_ready; hp <= p_valid && !p_ready;
    end
    if (rst || start) begin
      la <= seed ^ 32'h9e3779b9; lw <= seed ^ 32'h7f4a7c15; lp <= seed ^ 32'h85ebca6b; lo <= seed ^ 32'hc2b2ae35;
    end else begin
      la <= xs32(la); lw <= xs32(lw); lp <= xs32(lp); lo <= xs32(lo);
    end
  end

  // ---- output capture and counters
  reg started;
  reg [31:0] cycle;
  assign done = started && (out_count == cfg_out);
  always @(posedge clk) begin
    if (o_fire && !rst && !start) omem[out_count[{ODB - 1}:0]] <= o_payload;
    if (rst || start) begin
      started <= start && !rst;
      cycle <= 32'd0; a_count <= 32'd0; w_count <= 32'd0; p_count <= 32'd0; out_count <= 32'd0;
      first_in <= 32'd0; first_last_in <= 32'hffffffff; last_in <= 32'd0; first_out <= 32'd0; last_out <= 32'd0;
    end else begin
      cycle <= cycle + 32'd1;
      if (a_fire) begin
        if (a_count == 32'd0) first_in <= cycle;
        if (fa_q[{AWW}] && first_last_in == 32'hffffffff) first_last_in <= cycle;
        last_in <= cycle;
        a_count <= a_count + 32'd1;
      end
      if (w_fire) w_count <= w_count + 32'd1;
      if (p_fire) p_count <= p_count + 32'd1;
      if (o_fire) begin
        if (out_count == 32'd0) first_out <= cycle;
        last_out <= cycle;
        out_count <= out_count + 32'd1;
      end
    end
  end

  {s.name}_gemm dut (.clk(clk), .rst(rst),
    .a__payload(fa_q), .a__valid(a_valid), .a__ready(a_ready),
    .w__payload(fw_q), .w__valid(w_valid), .w__ready(w_ready),
    .p__payload(fp_q), .p__valid(p_valid), .p__ready(p_ready),
    .o__payload(o_payload), .o__valid(o_valid), .o__ready(o_ready));
endmodule
"""


def _top_verilog(systems) -> str:
    ports, insts = [], []
    for s in systems:
        conns = []
        for d, w, n in _HOST_PORTS:
            ports.append(f"{d} [{_port_width(s, w) - 1}:0] {s.name}_{n}")
            conns.append(f".{n}({s.name}_{n})")
        insts.append(f"  {s.name}_host u_{s.name} (.clk(clk), .rst(rst), {', '.join(conns)});")
    body = ",\n  ".join(["input clk", "input rst", *ports])
    return f"module {TOP} (\n  {body}\n);\n" + "\n".join(insts) + "\nendmodule\n"


_SOURCES = ("hwgen/gemm.py", "hwgen/requant.py", "hwgen/pipeline.py")


def _gemm_verilog(s: GemmSystem) -> str:
    """The Gemm's Verilog, cached on disk by its parameters and the generator sources (an 8x8
    array takes a few seconds to emit)."""
    import amaranth

    from hwgen.verilog import emit_verilog
    from sim.runner import REPO, SIM_BUILD

    h = hashlib.sha256(json.dumps([asdict(s), amaranth.__version__]).encode())
    for src in _SOURCES:
        h.update((REPO / src).read_bytes())
    path = SIM_BUILD / "_gemm_verilog" / f"{s.name}-{h.hexdigest()[:16]}.v"
    if path.exists():
        return path.read_text()
    text = emit_verilog(s.gemm(), f"{s.name}_gemm")
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f"{s.name}-*.v"):      # keep one cached text per system name
        old.unlink(missing_ok=True)
    tmp = path.with_suffix(f".tmp{id(text)}")
    tmp.write_text(text)
    tmp.rename(path)
    return text


def bench_verilog(systems) -> str:
    parts = [_FIFO_V]
    for s in systems:
        parts.append(_gemm_verilog(s))
        parts.append(host_verilog(s))
    parts.append(_top_verilog(systems))
    return "\n".join(parts)


def build_bench(systems=STANDARD_SYSTEMS, simulator: str = "verilator"):
    """One cached simulator build of the test hosts of ``systems`` (top ``gemm_tb_top``)."""
    from sim import runner

    systems = tuple(systems)
    if len({s.name for s in systems}) != len(systems):
        raise ValueError("system names must be unique")
    return runner.build(None, TOP, {"systems": [asdict(s) for s in systems]}, simulator=simulator,
                        verilog_text=bench_verilog(systems))


# --- jobs: the host's data movement (tiling, padding, packing) -------------------------------

def _pack(values, bits: int) -> int:
    mask = (1 << bits) - 1
    word = 0
    for k, v in enumerate(values):
        word |= (int(v) & mask) << (k * bits)
    return word


def _tiles(t: torch.Tensor, lanes: int) -> tuple[int, list[list[int]]]:
    """Rows of ``t`` (R x K) padded to whole tiles of ``lanes``; k-slice words per tile."""
    n, k = t.shape
    nt = -(-n // lanes)
    pad = torch.zeros(nt * lanes, k, dtype=torch.int64)
    pad[:n] = t.to(torch.int64)
    return nt, pad.view(nt, lanes, k).permute(0, 2, 1).reshape(nt * k, lanes).tolist()


def _job(s: GemmSystem, name: str, x: torch.Tensor, w: torch.Tensor, bias, m, e, out_bits: int,
         expected: torch.Tensor, *, gap: float = 0.0, stall: float = 0.0, seed: int = 1,
         wrong: dict | None = None, resets: list | None = None) -> dict:
    M, K = x.shape
    N = w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"{name}: K of x ({K}) and W ({w.shape[1]}) differ")
    if K < 1 or K > 0xFFFF:
        raise UserError(f"{name}: K = {K} out of range; accepted 1..65535")
    a_lo, a_hi = ((-(1 << (s.a_bits - 1)), (1 << (s.a_bits - 1)) - 1) if s.a_signed else (0, (1 << s.a_bits) - 1))
    w_lo, w_hi = -(1 << (s.w_bits - 1)), (1 << (s.w_bits - 1)) - 1
    if x.numel() and (int(x.min()) < a_lo or int(x.max()) > a_hi):
        raise UserError(f"{name}: activations outside the {s.a_bits}-bit range of system {s.name}")
    if w.numel() and (int(w.min()) < w_lo or int(w.max()) > w_hi):
        raise UserError(f"{name}: weights outside the signed {s.w_bits}-bit range of system {s.name}")
    bias = torch.as_tensor(bias, dtype=torch.int64).expand(N).clone()
    m = torch.as_tensor(m, dtype=torch.int64).expand(N).clone()
    e = torch.as_tensor(e, dtype=torch.int64).expand(N).clone()
    worst = max(abs(a_lo), a_hi) * (1 << (s.w_bits - 1)) * K + (int(bias.abs().max()) if N else 0)
    if worst >= 1 << (s.acc_bits - 1):
        raise UserError(f"{name}: |a| |w| K + |bias| = {worst} does not fit acc_bits = {s.acc_bits}")
    if out_bits and not 2 <= out_bits <= s.acc_bits:
        raise UserError(f"{name}: out_bits = {out_bits} out of range; accepted 0 (raw) or 2..{s.acc_bits}")
    if int(m.min()) < 0 or int(m.max()) >= 1 << s.mult_bits or int(e.min()) < 0 or int(e.max()) > 62:
        raise UserError(f"{name}: m must fit {s.mult_bits} unsigned bits and e 0..62")
    if wrong:   # a deliberately wrong constant handed to the hardware (the expected values stay right)
        bias, m, e = bias.clone(), m.clone(), e.clone()
        {"bias": bias, "m": m, "e": e}[wrong["const"]][wrong["channel"]] += wrong["delta"]
    MT, a_words = _tiles(x, s.rows)
    NT, w_words = _tiles(w, s.cols)
    fields = {n: (off, bits) for n, off, bits, _ in s.p_fields()}
    p_words = []
    for nt in range(NT):
        sl = slice(nt * s.cols, (nt + 1) * s.cols)
        word = 0
        for fname, vec in (("bias", bias), ("m", m), ("e", e)):
            lanes = vec[sl].tolist() + [0] * (s.cols - len(vec[sl]))
            off, bits = fields[fname]
            word |= _pack(lanes, bits) << off
        word |= out_bits << fields["out_bits"][0]
        p_words.append(word)
    need = {"A": (len(a_words), s.a_depth), "W": (len(w_words), s.w_depth), "P": (NT, s.p_depth),
            "out": (MT * NT * s.rows, s.o_depth)}
    for what, (n, cap) in need.items():
        if n > cap:
            raise UserError(f"{name}: needs {n} {what} words; system {s.name} holds {cap}")
    return {"name": name, "system": s.name, "rows": s.rows, "cols": s.cols, "acc_bits": s.acc_bits,
            "M": M, "K": K, "N": N, "MT": MT, "NT": NT, "out_bits": out_bits,
            "a_words": [_pack(v, s.a_bits) for v in a_words], "w_words": [_pack(v, s.w_bits) for v in w_words],
            "p_words": p_words, "expected": expected.to(torch.int64).tolist(),
            "gap": round(gap * 256), "stall": round(stall * 256), "seed": seed, "wrong": wrong,
            "resets": [[int(a), int(n)] for a, n in (resets or ())]}


def linear_job(s: GemmSystem, name: str, op: Op, x: torch.Tensor, **kw) -> dict:
    """A job for a golden 'linear' op: ``x`` (M, K) times the op's weight (N, K), its bias and
    per-channel m, e (or the raw accumulator when ``out_bits`` is 0); expected values from
    :func:`golden.executor.run_linear`."""
    a = op.attrs
    if not a.get("out_signed", True):
        raise UserError(f"{name}: unsigned outputs are not supported by the GEMM unit")
    if a.get("a_signed", True) != s.a_signed:
        raise UserError(f"{name}: activation signedness differs from system {s.name}")
    n = op.consts["weight"].shape[0]
    out_bits = int(a.get("out_bits") or 0)
    m = op.consts["m"] if out_bits else torch.zeros(n, dtype=torch.int64)
    e = op.consts["e"] if out_bits else torch.zeros(n, dtype=torch.int64)
    expected = run_linear(op, x)
    return _job(s, name, x, op.consts["weight"], op.consts["bias"], m, e, out_bits, expected, **kw)


def matmul_job(s: GemmSystem, name: str, op: Op, x: torch.Tensor, y: torch.Tensor, **kw) -> dict:
    """A job for a golden 'matmul' op ``x @ y`` (W = y^T, bias 0, the op's m and e on every
    channel); expected values from :func:`golden.executor.run_matmul`."""
    a = op.attrs
    if not a.get("out_signed", True) or not a.get("b_signed", True):
        raise UserError(f"{name}: unsigned outputs or second operands are not supported by the GEMM unit")
    if a.get("a_signed", True) != s.a_signed:
        raise UserError(f"{name}: activation signedness differs from system {s.name}")
    expected = run_matmul(op, x, y)
    return _job(s, name, x, y.t(), 0, int(a["m"]), int(a["e"]), int(a["out_bits"]), expected, **kw)


def run_jobs(build, jobs: list[dict], name: str, waves_on_fail: bool = True) -> dict:
    """Run ``jobs`` (in order) on a bench build; return the testbench's report by job name."""
    from sim import runner

    res = runner.run(build, TB, {"jobs": jobs}, name, waves_on_fail=waves_on_fail)
    res["by_name"] = {j["name"]: j for j in res.get("jobs", [])}
    return res


def measure_gemm_utilization(M: int = 197, K: int = 192, N: int = 576, rows: int = 8, cols: int = 8,
                             seed: int = 0, simulator: str = "verilator") -> dict:
    """Simulate one whole M x K x N product (random W8A8 operands, per-channel requantization
    to 8 bits) on a ``rows x cols`` Gemm fed at full rate, check every output against
    :func:`golden.executor.run_linear`, and return
    ``{"shape": [M, K, N], "rows", "cols", "cycles", "utilization", ...}`` with cycles from the
    first input beat to the last output beat and utilization = M K N / (cycles rows cols).

    Uses the test build's W8A8 8x8 system when it fits (no new simulator build), else builds
    a single-system bench sized for the shape.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (M, K), generator=g)
    w = torch.randint(-128, 128, (N, K), generator=g)
    bias = torch.randint(-(1 << 16), 1 << 16, (N,), generator=g)
    m = torch.randint(1 << 14, 1 << 16, (N,), generator=g)
    e = torch.randint(18, 26, (N,), generator=g)
    op = Op("linear", "perf", ["x"], ["y"], {"a_bits": 8, "w_bits": 8, "acc_bits": 32, "out_bits": 8, "out_signed": True},
            {"weight": w, "bias": bias, "m": m, "e": e})
    MT, NT = -(-M // rows), -(-N // cols)
    std = STANDARD_SYSTEMS[0]
    if (rows, cols) == (std.rows, std.cols) and MT * K <= std.a_depth and NT * K <= std.w_depth \
            and NT <= std.p_depth and MT * NT * rows <= std.o_depth:
        systems, s = STANDARD_SYSTEMS, std
    else:
        p2 = lambda n: 1 << _clog2(max(n, 2))   # noqa: E731
        s = GemmSystem(f"p{rows}x{cols}", rows=rows, cols=cols, a_depth=p2(MT * K), w_depth=p2(NT * K),
                       p_depth=p2(NT), o_depth=p2(MT * NT * rows))
        systems = (s,)
    b = build_bench(systems, simulator)
    job = linear_job(s, f"perf_{M}x{K}x{N}", op, x, seed=seed + 1)
    res = run_jobs(b, [job], f"perf_{M}x{K}x{N}_{rows}x{cols}", waves_on_fail=False)
    r = res["by_name"].get(job["name"])
    if r is None or res["failed"]:
        raise RuntimeError(f"gemm simulation failed: {r['message'] if r else res}")
    if r["mismatches"] or r["checked"] != M * N:
        raise RuntimeError(f"gemm result check failed: {r['message']}")
    return {"shape": [M, K, N], "rows": rows, "cols": cols, "cycles": r["cycles"],
            "utilization": r["utilization"], "macs": M * K * N, "tiles": MT * NT,
            "latency": r["latency"], "input_beats_per_cycle": r["input_beats_per_cycle"],
            "checked": r["checked"], "simulator": simulator, "build_seconds": round(b.seconds, 1),
            "sim_seconds": res["seconds"], "host_seconds": r.get("host_seconds")}


if __name__ == "__main__":  # pragma: no cover
    import sys

    args = [int(a) for a in sys.argv[1:]]
    print(json.dumps(measure_gemm_utilization(*args), indent=1))
