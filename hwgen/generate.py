"""Verilog generation: a configuration file -> one Verilog file per unit + manifest.json.

The configuration file (JSON, ``"format": "iptq-vit-hwgen-config/2"``) holds the
:class:`~hwgen.config.HwConfig` capabilities under ``"hw"`` and, under ``"source"``, the
models and bits they were derived from (``hwgen config``, :func:`hwgen.capabilities.derive_hw`).
It holds no layer's constants: every unit takes its layer's constants at run time on its
``c`` stream, so one set of units serves every layer of every model the capabilities cover.
``configs/default.json`` covers the digits ViT at W8A8 and W4A8 and is committed, so ``make
verilog`` depends on no float computation and reproduces ``rtl/`` exactly on any machine.

Every unit is elaborated and converted before any file is written; the files are then
written atomically.  A bad configuration raises :class:`golden.errors.UserError`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from golden.atomic import replace_dir, write_file, write_json, write_text
from golden.errors import UserError

from .config import HwConfig
from .verilog import ecp5_leaf_definitions, emit_verilog, source_hash

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "default.json"
CONFIG_FORMAT = "iptq-vit-hwgen-config/2"
OLD_FORMATS = ("iptq-vit-hwgen-config/1",)
# Sources whose change can change the generated Verilog (the manifest hashes them).
GENERATOR_SOURCES = sorted([p for p in (REPO / "hwgen").glob("*.py") if p.name not in ("cli.py", "report.py", "unit_cost.py")]
                           + sorted((REPO / "hwgen" / "accel").glob("*.py"))
                           + [REPO / "golden" / f for f in ("intops.py", "softmax.py", "gelu.py", "layernorm.py")])
ACCEL_TOP = "accelerator"


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
    """A generator configuration: the capabilities ``hw`` and where they came from."""

    hw: HwConfig
    source: dict = field(default_factory=dict)

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
        if isinstance(d, dict) and d.get("format") in OLD_FORMATS:
            raise UserError(f"{where}: format {d['format']!r} bakes one layer's constants into the units; "
                            f"units now take them at run time: make a new configuration with "
                            f"hwgen config --model MODEL --bits BITS --out FILE")
        if not isinstance(d, dict) or d.get("format") != CONFIG_FORMAT:
            raise UserError(f"{where}: expected a JSON object with \"format\": \"{CONFIG_FORMAT}\"")
        unknown = set(d) - {"format", "hw", "source"}
        if unknown:
            raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r}; accepted: format, hw, source")
        hw = d.get("hw", {})
        if not isinstance(hw, dict):
            raise UserError(f"{where}: \"hw\" must be an object of generator parameters")
        try:
            cfg = HwConfig().replace(**hw)
        except TypeError as exc:
            raise UserError(f"{where}: {exc}") from None
        source = d.get("source", {})
        if not isinstance(source, dict):
            raise UserError(f"{where}: \"source\" must be an object")
        return cls(cfg, source)

    def to_dict(self) -> dict:
        return {"format": CONFIG_FORMAT, "source": self.source, "hw": self.hw.as_dict()}


def config_from_graphs(graphs, hw: HwConfig | None = None) -> GenConfig:
    """The configuration whose units run every layer of ``graphs`` (one or more integer graphs,
    e.g. a model at W8A8 and W4A8): capabilities from :func:`hwgen.capabilities.derive_hw`,
    checked against every layer."""
    from .capabilities import check_fits, derive_hw

    hw = derive_hw(graphs, hw)
    for g in graphs:
        check_fits(g, hw)
    source = {"models": sorted({g.meta["model"] for g in graphs}), "bits": [g.meta["bits"] for g in graphs],
              "calib_images": graphs[0].meta["calib_images"], "seed": graphs[0].meta["seed"]}
    return GenConfig(hw, source)


# --- units ---------------------------------------------------------------------------------

def _lanes_unit(name: str, unit, hw: HwConfig, params: dict) -> UnitSpec:
    return UnitSpec(name, unit, {**params, "lanes": hw.lanes}, f"{unit.latency} cycles",
                    f"{hw.lanes} element(s) per cycle")


def _gelu(hw: HwConfig) -> UnitSpec:
    from .gelu import Gelu
    return _lanes_unit("gelu", Gelu.from_config(hw), hw, {"variant": hw.gelu_variant, "in_bits": hw.gelu_in_bits,
                                                         "out_bits": hw.gelu_out_bits})


def _shift_exp(hw: HwConfig) -> UnitSpec:
    from .shift_exp import ShiftExp
    return _lanes_unit("shift_exp", ShiftExp.from_config(hw), hw, {"variant": hw.exp_variant, "in_bits": hw.exp_in_bits,
                                                                  "frac_bits": hw.exp_frac_bits})


def _residual_add(hw: HwConfig) -> UnitSpec:
    from .residual_add import ResidualAdd
    return _lanes_unit("residual_add", ResidualAdd.from_config(hw), hw, {"bits": hw.residual_bits,
                                                                        "mult_bits": hw.mult_bits})


def _softmax(hw: HwConfig) -> UnitSpec:
    from .softmax import Softmax
    unit = Softmax.from_config(hw)
    length = hw.softmax_max_row
    return UnitSpec("softmax", unit, {"variant": hw.exp_variant, "max_row": hw.softmax_max_row,
                                      "in_bits": hw.softmax_in_bits, "max_f": hw.softmax_max_f,
                                      "out_bits": hw.softmax_out_bits,
                                      "recip_bits": hw.recip_bits, "frac_bits": hw.exp_frac_bits},
                    f"{unit.first_output_latency(length)} cycles from a {length}-element row's last input "
                    f"to its first output", f"{unit.cycles_per_row(length)} cycles per {length}-element row")


def _layernorm(hw: HwConfig) -> UnitSpec:
    from .layernorm import LayerNorm, layernorm_timing
    unit = LayerNorm.from_config(hw)
    c = hw.layernorm_max_channels
    t = layernorm_timing(c, hw.residual_bits)
    return UnitSpec("layernorm", unit, {"in_bits": hw.residual_bits, "max_channels": c, "b_bits": hw.layernorm_b_bits,
                                        "mult_bits": hw.mult_bits, "row_slots": hw.layernorm_row_slots},
                    f"{t['latency']} cycles from a {c}-channel row's last input to its first output",
                    f"{t['cycles_per_row']} cycles per {c}-channel row")


def _gemm(hw: HwConfig) -> UnitSpec:
    from .gemm import Gemm
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
        spec = builder(cfg.hw)
        spec.verilog = emit_verilog(spec.component, name)
        spec.ports = _ports(spec.verilog, name)
        units.append(spec)
    return units


def generate(cfg: GenConfig, out_dir: str | Path, program=None) -> dict:
    """Write ``<unit>.v`` for every unit, ``accelerator.v`` (the units in one AXI accelerator)
    (and ``accelerator_ecp5.v``, its DSP and block RAM leaves for ECP5: :mod:`hwgen.dsp`,
    :mod:`hwgen.bram`) and ``manifest.json``
    into ``out_dir``; with ``program`` (a compiled
    :class:`hwgen.accel.compiler.Program`), also ``program.bin`` (its external-memory image,
    input region zero: the host writes the images there) and ``program.lst`` (its listing)."""
    units = elaborate(cfg)
    acc = elaborate_accelerator(cfg.hw, program.accel if program is not None else None)
    out_dir = Path(out_dir)
    manifest = {"generator_sha256": generator_hash(), "config": cfg.to_dict()["hw"], "source": cfg.source,
                "units": {}}
    with replace_dir(out_dir) as tmp:     # built beside out_dir, swapped in whole at the end
        for u in units:
            write_text(str(tmp / f"{u.name}.v"), u.verilog)
            manifest["units"][u.name] = {"file": f"{u.name}.v", "top": u.name, "params": u.params,
                                         "latency": u.latency, "throughput": u.throughput, "ports": u.ports,
                                         "verilog_sha256": source_hash(u.verilog)}
        write_text(str(tmp / f"{ACCEL_TOP}.v"), acc.pop("verilog"))
        ecp5 = acc.pop("ecp5_verilog", "")
        if ecp5:
            write_text(str(tmp / acc["ecp5_file"]), ecp5)
        manifest["accelerator"] = acc
        if program is not None:
            write_file(str(tmp / "program.bin"), lambda p: Path(p).write_bytes(program.image))
            write_text(str(tmp / "program.lst"), program.listing() + "\n")
            hdr = program.memory_map
            manifest["program"] = {"file": "program.bin", "listing": "program.lst",
                                   **(program.source or {}), "instructions": len(program.instrs),
                                   "image_bytes": len(program.image), "image_sha256": hashlib.sha256(program.image).hexdigest(),
                                   "memory_map": {k: list(v) for k, v in hdr.items() if "." not in k},
                                   "buffer_peak_elems": program.buffer_peak}
        write_json(str(tmp / "manifest.json"), manifest)
    return manifest


def manifest_files(manifest: dict) -> list[dict]:
    """The Verilog files a manifest lists (``file`` and ``verilog_sha256`` each): the units, the
    accelerator and, if it has DSP leaves, their ECP5 definitions."""
    acc = manifest["accelerator"]
    ecp5 = [{"file": acc["ecp5_file"], "verilog_sha256": acc["ecp5_sha256"]}] if "ecp5_file" in acc else []
    return [*manifest["units"].values(), acc, *ecp5]


def verified_manifest(folder: str | Path) -> dict | None:
    """The manifest of a folder ``generate`` wrote, when it still describes what the generator
    writes now: the same generator sources (hash), and every Verilog file it lists there and
    unedited (its hash).  None otherwise (no manifest, unreadable, stale or edited).  Callers
    add their own comparisons (configuration, buffers, stray files)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("generator_sha256") != generator_hash():
            return None
        if all(source_hash((folder / f["file"]).read_text()) == f["verilog_sha256"] for f in manifest_files(manifest)):
            return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        pass
    return None


def elaborate_accelerator(hw: HwConfig, accel=None, read_during_write: str = "old") -> dict:
    """The AXI accelerator (:class:`hwgen.accel.axi.Accelerator`: the shared units, the GEMM,
    the sequencer and the buffers of :class:`hwgen.accel.compiler.AccelConfig`, default or
    ``accel``) for ``hw``: its Verilog and what the manifest says about it.
    ``read_during_write="new"``: the verification build of :class:`~hwgen.accel.core.AccelCore`."""
    from dataclasses import asdict

    from .accel.axi import REGS, Accelerator
    from .accel.compiler import AccelConfig

    accel = accel or AccelConfig()
    verilog = emit_verilog(Accelerator(hw, accel, read_during_write), ACCEL_TOP)
    ecp5 = ecp5_leaf_definitions(verilog)
    return {"file": f"{ACCEL_TOP}.v", "top": ACCEL_TOP, "accel_config": asdict(accel),
            "registers": {k: f"0x{v:02x}" for k, v in REGS.items()}, "ports": _ports(verilog, ACCEL_TOP),
            "verilog_sha256": source_hash(verilog), "verilog": verilog,
            # an ECP5 flow reads it after the design (read_verilog -overwrite): hwgen.dsp
            **({"ecp5_file": f"{ACCEL_TOP}_ecp5.v", "ecp5_sha256": source_hash(ecp5)} if ecp5 else {}),
            "ecp5_verilog": ecp5}
