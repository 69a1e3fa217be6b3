"""What a model needs of the units, and whether a set of units fits a model.

A unit is generated for *capabilities* (an :class:`~hwgen.config.HwConfig`: widths, variant,
longest row, most channels, lanes), never for a layer: every layer's constants reach it at
run time on its ``c`` stream (one beat of scalars, or one beat per table entry), so one
Softmax, one GELU per variant in use, one LayerNorm and one residual add serve a whole
model, whatever its depth.

* :func:`derive_hw` reads the capabilities that every layer of one or more integer graphs
  needs (``hwgen config``; ``configs/default.json`` covers the digits ViT at W8A8 and W4A8
  in one set of units);
* :func:`unit_for` builds the unit of an op type (and GELU variant) for capabilities;
* :func:`check_fits` refuses, in one line naming the layer, the field, the need and the
  limit, a graph with a layer that needs more than the units were generated for;
* :func:`const_beats` is a layer's constant beats, as its unit takes them (the unit's own
  ``const_beats``, the one source of truth for tests, the executor and the check).
"""

from __future__ import annotations

from golden.errors import UserError

from .config import HwConfig

__all__ = ["NONLINEAR_UNITS", "derive_hw", "unit_for", "unit_key", "check_fits", "const_beats"]

# op type -> unit (hwgen.generate.UNIT_BUILDERS name)
NONLINEAR_UNITS = {"softmax": "softmax", "gelu": "gelu", "layernorm": "layernorm", "add": "residual_add"}


def _signed_bits(lo: int, hi: int) -> int:
    """Narrowest two's-complement width holding lo..hi."""
    return max(int(hi).bit_length(), (-int(lo) - 1).bit_length() if lo < 0 else 0) + 1


def derive_hw(graphs, base: HwConfig | None = None) -> HwConfig:
    """The capabilities every layer of ``graphs`` needs, on top of ``base`` (widths grow to
    the widest layer; array shape, lanes and multiplier kind stay ``base``'s).

    One GELU variant per configuration: the variant of the graphs' GELU layers (the RTL
    executor builds one GELU unit per variant in use when a plan mixes them).
    """
    base = base or HwConfig()
    need: dict[str, int] = {}
    choice: dict[str, str] = {}

    def grow(field: str, value: int) -> None:
        need[field] = max(need.get(field, 0), int(value))

    for g in graphs:
        grow("a_bits", g.meta["a_bits"])
        grow("w_bits", g.meta["w_bits"])
        for op in g.ops:
            a = op.attrs
            in_bits = [g.tensors[n]["bits"] for n in op.inputs if n in g.tensors]
            if op.type == "linear":          # a matmul's K (head dim, tokens) is below fc2's here
                grow("gemm_max_k", op.consts["weight"].shape[1])
                grow("acc_bits", a["acc_bits"])
            elif op.type == "matmul":        # the same array multiplies Q Kt and P V: at W4A8 its
                grow("w_bits", a["b_bits"])  # second operand (8-bit K, V) is wider than the weights
                grow("acc_bits", a["acc_bits"])
            elif op.type == "softmax":
                grow("softmax_max_row", a.get("row_len", 2))
                grow("softmax_in_bits", in_bits[0])
                grow("softmax_max_f", a["f"])
                grow("softmax_out_bits", a["out_bits"])
                grow("recip_bits", a["recip_bits"])
                choice.setdefault("exp_variant", a["variant"])
            elif op.type == "gelu":
                grow("gelu_in_bits", a["in_bits"])
                grow("gelu_out_bits", a["out_bits"])
                choice.setdefault("gelu_variant", a["variant"])
            elif op.type == "layernorm":
                grow("layernorm_max_channels", a["channels"])
                grow("residual_bits", in_bits[0])
                b = op.consts["b"]
                grow("layernorm_b_bits", _signed_bits(int(b.min()), int(b.max())))
            elif op.type == "add":
                grow("residual_bits", max([a["out_bits"], *in_bits]))
    changes = {k: max(v, 2) for k, v in need.items() if k != "gemm_max_k"}
    k = need.get("gemm_max_k", 0)
    if k:
        changes["gemm_max_k"] = k
    if "softmax_max_f" in changes:        # every split of x = s - max, and every layer's f
        changes["softmax_max_f"] = max(changes["softmax_max_f"], changes["softmax_in_bits"] + 1)
    changes.update(choice)
    return base.replace(**changes)


def unit_key(op) -> str:
    """The unit instance an op runs on: its type's unit, per GELU variant."""
    unit = NONLINEAR_UNITS[op.type]
    return f"{unit}_{op.attrs['variant']}" if op.type == "gelu" else unit


def unit_for(hw: HwConfig, op_type: str, variant: str | None = None):
    """The Amaranth unit of ``op_type`` ('softmax', 'gelu', 'layernorm', 'add') for ``hw``."""
    from .generate import UNIT_BUILDERS

    if op_type == "gelu" and variant:
        hw = hw.replace(gelu_variant=variant)
    return UNIT_BUILDERS[NONLINEAR_UNITS[op_type]](hw).component


def const_beats(unit, op) -> list[dict[str, int]]:
    """The ``c`` beats of ``op``'s constants for ``unit``; a layer that does not fit is refused
    in one line that starts with the layer's name."""
    try:
        return unit.const_beats(op.attrs, op.consts)
    except UserError as exc:
        raise UserError(f"{op.name}: {exc}") from None


def _check_width(op, what: str, need: int, field: str, limit: int) -> None:
    if need > limit:
        raise UserError(f"{op.name}: {what} of {need} bits does not fit the unit; {field} = {limit}")


def check_fits(graph, hw: HwConfig, units: dict | None = None) -> dict:
    """Refuse ``graph`` if a layer needs more than the units for ``hw`` offer; return the units
    it needs (``unit_key`` -> component), built once each."""
    units = {} if units is None else units
    for op in graph.ops:
        ins = [graph.tensors[n]["bits"] for n in op.inputs if n in graph.tensors]
        if op.type in ("linear", "matmul"):
            k = op.consts["weight"].shape[1] if op.type == "linear" else None
            if k is not None and k > hw.gemm_max_k:
                raise UserError(f"{op.name}: reduction K = {k} exceeds the GEMM's gemm_max_k = {hw.gemm_max_k}")
            continue
        if op.type not in NONLINEAR_UNITS:
            continue
        if op.type == "softmax":
            _check_width(op, "a score input", ins[0], "softmax_in_bits", hw.softmax_in_bits)
        elif op.type == "gelu":
            _check_width(op, "an input", ins[0], "gelu_in_bits", hw.gelu_in_bits)
        else:
            for b in ins:
                _check_width(op, "an input", b, "residual_bits", hw.residual_bits)
        key = unit_key(op)
        if key not in units:
            units[key] = unit_for(hw, op.type, op.attrs.get("variant") if op.type == "gelu" else None)
            # built for its constants only, never elaborated: no UnusedElaboratable warning
            units[key]._MustUse__silence = True
        const_beats(units[key], op)
    return units
