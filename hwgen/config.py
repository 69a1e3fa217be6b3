"""One configuration object for every hardware generator (Gemmini style).

:class:`HwConfig` holds every generator parameter of the datapaths, checks each against its
accepted range when it is made, and derives the rest (ranges, accumulator bound, widths).
A bad value raises :class:`golden.errors.UserError` with one line that names the parameter
and the accepted range, e.g. ``hwgen config: lanes = 0 is out of range; accepted 1..64``.

Extending it: add a field with its default, add one row to :data:`_RANGES` (or a choice set
to :data:`_CHOICES`), and, where the new field bounds another, a check in
:meth:`HwConfig._check_relations`.  Derived values are properties, never stored fields, so
they cannot disagree with the parameters they come from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from golden.errors import UserError
from golden.gelu import GELU_VARIANTS, ISHIFT_Y_BITS, LUT_MAX_IN_BITS, SIG_BITS
from golden.softmax import EXP_FRAC_BITS, EXP_VARIANTS, RECIP_BITS

__all__ = ["HwConfig", "check_range", "check_choice"]


def check_range(name: str, value, lo: int, hi: int) -> int:
    """``value`` as an int in ``lo..hi``, or a one-line UserError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"hwgen config: {name} = {value!r} must be an integer; accepted {lo}..{hi}")
    if not lo <= value <= hi:
        raise UserError(f"hwgen config: {name} = {value} is out of range; accepted {lo}..{hi}")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise UserError(f"hwgen config: {name} = {value!r} is not accepted; accepted {', '.join(choices)}")
    return value


# field -> (lo, hi): inclusive accepted range
_RANGES: dict[str, tuple[int, int]] = {
    "a_bits": (2, 16),            # signed activations
    "w_bits": (2, 16),            # signed weights (per output channel scale)
    "acc_bits": (8, 64),          # signed GEMM accumulator
    "mult_bits": (2, 32),         # unsigned requantization multiplier
    "residual_bits": (4, 32),     # signed residual stream
    "lanes": (1, 64),             # elements per cycle of a streaming unit
    "gemm_rows": (1, 64),         # systolic array rows (output rows per tile)
    "gemm_cols": (1, 64),         # systolic array columns (output channels per tile)
    "gemm_max_k": (1, 1 << 16),   # longest reduction the accumulator must hold (checked)
    "gemm_e_bits": (1, 6),        # width of the per-channel requantization shift
    "softmax_max_row": (2, 4096), # longest Softmax row the row buffer holds
    "exp_frac_bits": (4, 24),     # C: exponential output at scale 2^-C
    "exp_in_bits": (2, 24),       # signed input width of the shift exponential (x <= 0)
    "recip_bits": (8, 48),        # R: Softmax reciprocal floor((2^R - 1) / sum)
    "softmax_out_bits": (2, 16),  # unsigned Softmax output
    "softmax_in_bits": (2, 23),   # signed Softmax scores (at scale 2^-f)
    "softmax_max_f": (1, 31),     # largest Softmax scale exponent f (run-time constant)
    "layernorm_row_slots": (2, 4),  # LayerNorm row buffers (3: in, arithmetic, out overlap)
    "layernorm_max_channels": (2, 4096),  # most channels of a LayerNorm row (buffer and constant memories)
    "layernorm_b_bits": (2, 64),  # signed width of the LayerNorm offsets B_c (run-time constants)
    "gelu_in_bits": (2, 16),      # signed GELU input
    "gelu_out_bits": (2, 16),     # signed GELU output
}

GEMM_MULTIPLIERS = ("lut", "dsp")   # hwgen.gemm.Gemm's mult

_CHOICES: dict[str, tuple[str, ...]] = {
    "gemm_mult": GEMM_MULTIPLIERS,
    "gelu_variant": GELU_VARIANTS,
    "exp_variant": EXP_VARIANTS,
}


@dataclass(frozen=True)
class HwConfig:
    """Every generator parameter, checked.  Defaults: the W8A8 configuration of ``rtl/``.

    Parameters
    ----------
    a_bits, w_bits, acc_bits:
        GEMM operand and accumulator widths (signed).
    mult_bits:
        Width of the unsigned dyadic requantization multipliers (golden.dyadic.MULT_BITS).
    residual_bits:
        Width of the residual stream (the residual add clamps to it).
    lanes:
        Elements per cycle of each streaming element-wise unit.
    gemm_rows, gemm_cols, gemm_max_k, gemm_e_bits:
        Systolic array shape, the longest reduction K whose worst case the accumulator must
        hold (refused otherwise), and the width of the per-channel shift.
    gemm_mult:
        How the GEMM multiplies: ``"lut"`` (carry-save trees of LUTs, the faster clock on
        ECP5) or ``"dsp"`` (``*``, mapped to DSP blocks).
    softmax_max_row:
        Longest Softmax row (tokens) the Softmax row buffer holds; 256 covers 197 tokens.
    exp_frac_bits, exp_in_bits, exp_variant:
        Shift exponential: output scale 2^-C, signed input width, 2^-t approximation.
    recip_bits, softmax_out_bits, softmax_in_bits:
        Softmax reciprocal width R, unsigned output width, signed score width.
    softmax_max_f:
        Largest Softmax scale exponent ``f`` (scores at scale 2^-f, a run-time constant);
        ``hwgen config`` derives ``max(softmax_in_bits + 1, every layer's f)``.
    layernorm_row_slots:
        LayerNorm row buffers: 3 lets input, per-row arithmetic and output overlap.
    layernorm_max_channels, layernorm_b_bits:
        Most channels of a row the LayerNorm unit holds, and the width of its offsets B_c
        (per-layer constants arrive at run time; a layer that needs more is refused).
    gelu_in_bits, gelu_out_bits, gelu_variant:
        GELU unit widths and default variant.
    """

    a_bits: int = 8
    w_bits: int = 8
    acc_bits: int = 32
    mult_bits: int = 16
    residual_bits: int = 16
    lanes: int = 1
    gemm_rows: int = 8
    gemm_cols: int = 8
    gemm_max_k: int = 768
    gemm_e_bits: int = 6
    gemm_mult: str = "lut"
    softmax_max_row: int = 256
    exp_frac_bits: int = EXP_FRAC_BITS
    exp_in_bits: int = 17
    exp_variant: str = "shiftfit"
    recip_bits: int = RECIP_BITS
    softmax_out_bits: int = 8
    softmax_in_bits: int = 16
    softmax_max_f: int = 17
    layernorm_row_slots: int = 3
    layernorm_max_channels: int = 256
    layernorm_b_bits: int = 48
    gelu_in_bits: int = 8
    gelu_out_bits: int = 8
    gelu_variant: str = "iptq"

    def __post_init__(self):
        for name, (lo, hi) in _RANGES.items():
            check_range(name, getattr(self, name), lo, hi)
        for name, choices in _CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        self._check_relations()

    def _check_relations(self) -> None:
        # the accumulator must at least hold one product plus its sign
        need = self.a_bits + self.w_bits
        if self.acc_bits < need:
            raise UserError(f"hwgen config: acc_bits = {self.acc_bits} is out of range; accepted "
                            f"{need}..64 (a_bits + w_bits = {need})")
        self.check_gemm(self.gemm_max_k, op="hwgen config: gemm_max_k")
        if self.gelu_variant == "lut" and self.gelu_in_bits > LUT_MAX_IN_BITS:
            raise UserError(f"hwgen config: gelu_in_bits = {self.gelu_in_bits} is out of range for "
                            f"gelu_variant 'lut'; accepted 2..{LUT_MAX_IN_BITS}")
        if self.recip_bits < self.exp_frac_bits + 2:
            raise UserError(f"hwgen config: recip_bits = {self.recip_bits} is out of range; accepted "
                            f"{self.exp_frac_bits + 2}..48 (exp_frac_bits + 2: the reciprocal needs 2 bits)")
        if self.softmax_out_bits > self.recip_bits:
            raise UserError(f"hwgen config: softmax_out_bits = {self.softmax_out_bits} is out of range; "
                            f"accepted 2..recip_bits ({self.recip_bits})")

    # --- derived -------------------------------------------------------------------------

    def replace(self, **changes) -> "HwConfig":
        """A copy with some parameters changed (checked again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"hwgen config: unknown parameter {sorted(unknown)[0]!r}; accepted "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    @property
    def a_range(self) -> tuple[int, int]:
        return -(1 << (self.a_bits - 1)), (1 << (self.a_bits - 1)) - 1

    @property
    def residual_range(self) -> tuple[int, int]:
        return -(1 << (self.residual_bits - 1)), (1 << (self.residual_bits - 1)) - 1

    @property
    def exp_out_bits(self) -> int:
        """Unsigned width of the exponential: its maximum is exactly 2^C (at x = 0)."""
        return self.exp_frac_bits + 1

    @property
    def max_k(self) -> int:
        """Longest GEMM reduction the accumulator holds without a bias:
        ``2^(a-1) 2^(w-1) K < 2^(acc-1)``."""
        return max(0, ((1 << (self.acc_bits - 1)) - 1) // (1 << (self.a_bits + self.w_bits - 2)))

    @property
    def softmax_sum_bits(self) -> int:
        """Unsigned width of a row sum of exponentials (each <= 2^C)."""
        return (self.softmax_max_row << self.exp_frac_bits).bit_length()

    @property
    def ishift_y_bits(self) -> int:
        return ISHIFT_Y_BITS

    @property
    def sig_bits(self) -> int:
        return SIG_BITS

    def check_gemm(self, k: int, bias_max: int = 0, op: str = "gemm") -> None:
        """Refuse a GEMM whose worst case overflows the accumulator (DESIGN.md bound)."""
        worst = (1 << (self.a_bits - 1)) * (1 << (self.w_bits - 1)) * k + bias_max
        if worst >= 1 << (self.acc_bits - 1):
            raise UserError(f"{op}: 2^{self.a_bits - 1} * 2^{self.w_bits - 1} * K({k}) + |bias|({bias_max}) "
                            f"= {worst} does not fit acc_bits = {self.acc_bits} (needs < 2^{self.acc_bits - 1})")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
