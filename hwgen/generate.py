"""Verilog generation: a configuration file -> one Verilog file per unit + manifest.json.

The configuration file (JSON) holds the :class:`~hwgen.config.HwConfig` parameters under
``"hw"`` and, under ``"layer"``, the integer constants of one model layer that the units
with baked-in constants (Softmax f, GELU, LayerNorm, residual add) are generated for, as
the golden model computed them.  ``configs/default.json`` is made from the digits ViT at
W8A8 by ``hwgen config`` and committed, so ``make verilog`` depends on no float
computation and reproduces ``rtl/`` exactly on any machine.

Every unit is elaborated and converted before any file is written; the files are then
written atomically.  A bad configuration raises :class:`golden.errors.UserError`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from golden.atomic import write_json, write_text
from golden.errors import UserError

from .config import HwConfig
from .verilog import emit_verilog, source_hash

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "default.json"
CONFIG_FORMAT = "iptq-vit-hwgen-config/1"
# Sources whose change can change the generated Verilog (the manifest hashes them).
GENERATOR_SOURCES = sorted([p for p in (REPO / "hwgen").glob("*.py") if p.name not in ("cli.py", "report.py")]
                           + [REPO / "golden" / f for f in ("intops.py", "softmax.py", "gelu.py", "layernorm.py")])


@dataclass
class UnitSpec:
    """One generated unit: the component and what the manifest says about it."""
    name: str
    component: object
    params: dict
    latency: str
    throughput: str
    verilog: str = ""
    ports: list = field(default_factory=list)


@dataclass
class GenConfig:
    hw: HwConfig
    layer: dict
    source: dict

    @classmethod
    def load(cls, path: str | Path) -> "GenConfig":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"configuration file not found: {path}")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"configuration {path} is not valid JSON: {exc}") from None
        return cls.from_dict(d, str(path))

    @classmethod
    def from_dict(cls, d, where: str = "configuration") -> "GenConfig":
        if not isinstance(d, dict) or d.get("format") != CONFIG_FORMAT:
            raise UserError(f"{where}: expected a JSON object with \"format\": \"{CONFIG_FORMAT}\"")
        unknown = set(d) - {"format", "hw", "layer", "source"}
        if unknown:
            raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r}; accepted: format, hw, layer, source")
        hw = d.get("hw", {})
        if not isinstance(hw, dict):
            raise UserError(f"{where}: \"hw\" must be an object of generator parameters")
        try:
            cfg = HwConfig().replace(**hw)
        except TypeError as exc:
            raise UserError(f"{where}: {exc}") from None
        layer = d.get("layer")
        if not isinstance(layer, dict) or not {"softmax", "gelu", "layernorm", "add"} <= set(layer):
            raise UserError(f"{where}: \"layer\" must hold the softmax, gelu, layernorm and add constants "
                            f"(make one with: hwgen config --model digits --out FILE)")
        return cls(cfg, layer, d.get("source", {}))

    def to_dict(self) -> dict:
        return {"format": CONFIG_FORMAT, "source": self.source, "hw": self.hw.as_dict(), "layer": self.layer}


def config_from_graph(graph, block: int = 0, hw: HwConfig | None = None) -> GenConfig:
    """The generator configuration for block ``block`` of a quantized integer graph."""
    hw = hw or HwConfig()
    p = f"blocks.{block}"
    try:
        sm, gl = graph.op(f"{p}.softmax"), graph.op(f"{p}.gelu")
        ln, add = graph.op(f"{p}.norm1"), graph.op(f"{p}.res2")
    except KeyError:
        raise UserError(f"block {block} not in the model (depth {graph.meta['spec']['depth']})") from None
    as_lists = lambda consts: {k: [int(v) for v in t.flatten().tolist()] for k, t in consts.items()}  # noqa: E731
    add_attrs = dict(add.attrs, a_bits=graph.tensors[add.inputs[0]]["bits"], b_bits=graph.tensors[add.inputs[1]]["bits"])
    layer = {"softmax": {"name": sm.name, "attrs": dict(sm.attrs)},
             "gelu": {"name": gl.name, "attrs": dict(gl.attrs), "consts": as_lists(gl.consts)},
             "layernorm": {"name": ln.name, "attrs": dict(ln.attrs), "consts": as_lists(ln.consts)},
             "add": {"name": add.name, "attrs": add_attrs}}
    hw = hw.replace(w_bits=graph.meta["w_bits"], a_bits=graph.meta["a_bits"], gelu_variant=gl.attrs["variant"],
                    exp_variant=sm.attrs["variant"])
    source = {"model": graph.meta["model"], "bits": graph.meta["bits"], "block": block,
              "calib_images": graph.meta["calib_images"], "seed": graph.meta["seed"]}
    return GenConfig(hw, layer, source)


# --- units ---------------------------------------------------------------------------------

def _gelu(cfg: GenConfig) -> UnitSpec:
    from .gelu import Gelu
    g = cfg.layer["gelu"]
    unit = Gelu(g["attrs"], g["consts"], lanes=cfg.hw.lanes)
    return UnitSpec("gelu", unit, {**g["attrs"], "lanes": cfg.hw.lanes, "layer": g["name"]},
                    f"{unit.latency} cycles", f"{cfg.hw.lanes} element(s) per cycle")


def _shift_exp(cfg: GenConfig) -> UnitSpec:
    from .shift_exp import ShiftExp
    a = cfg.layer["softmax"]["attrs"]
    unit = ShiftExp(a["f"], a["variant"], in_bits=cfg.hw.exp_in_bits, frac_bits=cfg.hw.exp_frac_bits,
                    lanes=cfg.hw.lanes)
    return UnitSpec("shift_exp", unit, {"f": a["f"], "variant": a["variant"], "in_bits": cfg.hw.exp_in_bits,
                                        "frac_bits": cfg.hw.exp_frac_bits, "lanes": cfg.hw.lanes},
                    f"{unit.latency} cycles", f"{cfg.hw.lanes} element(s) per cycle")


def _residual_add(cfg: GenConfig) -> UnitSpec:
    from .residual_add import ResidualAdd
    a = cfg.layer["add"]["attrs"]
    unit = ResidualAdd(a["m_a"], a["e_a"], a["m_b"], a["e_b"], a_bits=a["a_bits"], b_bits=a["b_bits"],
                       out_bits=a["out_bits"], lanes=cfg.hw.lanes, mult_bits=cfg.hw.mult_bits)
    return UnitSpec("residual_add", unit, {**a, "lanes": cfg.hw.lanes, "layer": cfg.layer["add"]["name"]},
                    f"{unit.latency} cycles", f"{cfg.hw.lanes} element(s) per cycle")


def _softmax(cfg: GenConfig) -> UnitSpec:
    from .softmax import Softmax
    a = cfg.layer["softmax"]["attrs"]
    unit = Softmax.from_config(cfg.hw, a["f"], a["variant"])
    length = a.get("row_len", cfg.hw.softmax_max_row)
    return UnitSpec("softmax", unit, {"f": a["f"], "variant": a["variant"], "max_row": cfg.hw.softmax_max_row,
                                      "in_bits": cfg.hw.softmax_in_bits, "out_bits": cfg.hw.softmax_out_bits,
                                      "recip_bits": cfg.hw.recip_bits, "frac_bits": cfg.hw.exp_frac_bits,
                                      "layer": cfg.layer["softmax"]["name"]},
                    f"{unit.first_output_latency(length)} cycles from a {length}-element row's last input "
                    f"to its first output", f"{unit.cycles_per_row(length)} cycles per {length}-element row")


def _layernorm(cfg: GenConfig) -> UnitSpec:
    from .layernorm import LayerNorm, layernorm_timing
    ln = cfg.layer["layernorm"]
    unit = LayerNorm(ln["attrs"], ln["consts"], in_bits=cfg.hw.residual_bits, mult_bits=cfg.hw.mult_bits,
                     row_slots=cfg.hw.layernorm_row_slots)
    c = ln["attrs"]["channels"]
    t = layernorm_timing(c, cfg.hw.residual_bits)
    return UnitSpec("layernorm", unit, {**ln["attrs"], "in_bits": cfg.hw.residual_bits,
                                        "row_slots": cfg.hw.layernorm_row_slots, "layer": ln["name"]},
                    f"{t['latency']} cycles from a row's last input to its first output",
                    f"{t['cycles_per_row']} cycles per {c}-channel row")


def _gemm(cfg: GenConfig) -> UnitSpec:
    from .gemm import Gemm, gemm_latency, gemm_min_tile_period
    hw = cfg.hw
    unit = Gemm.from_config(hw, hw.gemm_rows, hw.gemm_cols)
    return UnitSpec("gemm", unit, {"rows": hw.gemm_rows, "cols": hw.gemm_cols, "a_bits": hw.a_bits,
                                   "w_bits": hw.w_bits, "acc_bits": hw.acc_bits, "mult_bits": hw.mult_bits,
                                   "e_bits": hw.gemm_e_bits, "max_k": hw.gemm_max_k, "mult": hw.gemm_mult},
                    f"{unit.latency} cycles from a tile's last operand beat to its first output row",
                    f"one operand beat ({hw.gemm_rows}x{hw.gemm_cols} MACs) per cycle once K >= "
                    f"{unit.min_tile_period}")


UNIT_BUILDERS = {"gemm": _gemm, "softmax": _softmax, "gelu": _gelu, "layernorm": _layernorm, "residual_add": _residual_add,
                 "shift_exp": _shift_exp}

_PORT = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:signed\s+)?(?:\[(\d+):(\d+)\]\s+)?(\\?[\w$]+)\s*;", re.M)


def _ports(verilog: str, top: str) -> list[dict]:
    body = verilog[verilog.index(f"module {top}("):]
    body = body[:body.index("endmodule")]
    return [{"name": name, "direction": d, "width": (int(hi) - int(lo) + 1) if hi else 1}
            for d, hi, lo, name in _PORT.findall(body)]


def generator_hash() -> str:
    h = hashlib.sha256()
    for path in GENERATOR_SOURCES:
        h.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def elaborate(cfg: GenConfig) -> list[UnitSpec]:
    """Build and convert every unit (nothing is written)."""
    units = []
    for name, builder in UNIT_BUILDERS.items():
        spec = builder(cfg)
        spec.verilog = emit_verilog(spec.component, name)
        spec.ports = _ports(spec.verilog, name)
        units.append(spec)
    return units


def generate(cfg: GenConfig, out_dir: str | Path) -> dict:
    """Write ``<unit>.v`` for every unit and ``manifest.json`` into ``out_dir``."""
    units = elaborate(cfg)
    out_dir = Path(out_dir)
    manifest = {"generator_sha256": generator_hash(), "config": cfg.to_dict()["hw"], "source": cfg.source,
                "units": {}}
    for u in units:
        write_text(str(out_dir / f"{u.name}.v"), u.verilog)
        manifest["units"][u.name] = {"file": f"{u.name}.v", "top": u.name, "params": u.params,
                                     "latency": u.latency, "throughput": u.throughput, "ports": u.ports,
                                     "verilog_sha256": source_hash(u.verilog)}
    write_json(str(out_dir / "manifest.json"), manifest)
    return manifest
