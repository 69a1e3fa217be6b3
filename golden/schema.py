"""Schemas of the files hwgen reads: generator configurations (JSON) and integer graphs.

A file is checked completely before anything uses it, and every problem found is reported,
one line each (:class:`SchemaError`, a :class:`golden.errors.UserError`; the command line
prints each of its ``problems`` as ``hwgen: error: ...``): wrong types, ``null``, values out
of range, required keys missing, unknown keys.

* Generator configurations: the top-level sections are the fields of
  :class:`hwgen.generate.GenConfig` plus ``"format"`` (so a section added to or removed from
  ``GenConfig`` changes the accepted keys by itself; :data:`CONFIG_SECTIONS` says how each
  known section is checked and whether it is required).  ``"hw"`` is checked against
  :class:`hwgen.config.HwConfig`'s dataclass fields, ``hwgen.config._RANGES`` and ``_CHOICES``,
  so a new generator parameter is covered with no change here; the relations between
  parameters are then checked by ``HwConfig`` itself.
* Integer graphs (:func:`check_graph_dict`): the file's fields, every op's type, arity,
  attributes (:data:`OP_ATTRS`) and integer constants, the tensor table, and that every op
  reads only tensors defined before it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from .errors import UserError

__all__ = ["SchemaError", "load_json", "check_config_dict", "check_graph_dict", "MAX_PROBLEMS"]

MAX_PROBLEMS = 8            # lines printed for one file; the rest are counted
MAX_JSON_BYTES = 64 << 20


class SchemaError(UserError):
    """A file that does not match its schema; ``problems`` holds one line per problem."""

    def __init__(self, problems, where: str = ""):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = [f"{where}: {p}" if where else p for p in problems]
        super().__init__("; ".join(self.problems))


# --- a small schema language ------------------------------------------------------------------

def _show(v) -> str:
    """A value as it appears in JSON, short."""
    try:
        text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
    except (TypeError, ValueError):
        text = f"<{type(v).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _join(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    k = key if isinstance(key, str) and key.isidentifier() else json.dumps(key)
    return f"{path}.{k}" if path else k


class Spec:
    what = "a value"

    def check(self, v, path: str, out: list[str]) -> None:
        raise NotImplementedError


class Int(Spec):
    def __init__(self, lo: int | None = None, hi: int | None = None):
        self.lo, self.hi = lo, hi

    @property
    def accepted(self) -> str:
        lo = "" if self.lo is None else str(self.lo)
        hi = "" if self.hi is None else str(self.hi)
        return f"{lo}..{hi}" if (lo or hi) else "any integer"

    @property
    def what(self):
        return f"an integer ({self.accepted})"

    def check(self, v, path, out):
        if isinstance(v, bool) or not isinstance(v, int):
            out.append(f"{path} = {_show(v)} must be an integer; accepted {self.accepted}")
        elif (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            out.append(f"{path} = {_show(v)} is out of range; accepted {self.accepted}")


class Num(Spec):
    what = "a finite number"

    def __init__(self, positive: bool = False):
        self.positive = positive

    def check(self, v, path, out):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            out.append(f"{path} = {_show(v)} must be a number")
        elif not math.isfinite(v) or (self.positive and not v > 0):
            out.append(f"{path} = {_show(v)} is out of range; accepted a finite number"
                       + (" > 0" if self.positive else ""))


class Str(Spec):
    def __init__(self, choices=None):
        self.choices = tuple(choices) if choices is not None else None

    @property
    def what(self):
        return "one of " + ", ".join(self.choices) if self.choices else "a string"

    def check(self, v, path, out):
        if not isinstance(v, str):
            out.append(f"{path} = {_show(v)} must be a string" + (f"; accepted {', '.join(self.choices)}"
                                                                  if self.choices else ""))
        elif self.choices is not None and v not in self.choices:
            out.append(f"{path} = {_show(v)} is not accepted; accepted {', '.join(self.choices)}")


class Const(Spec):
    def __init__(self, value):
        self.value = value
        self.what = _show(value)

    def check(self, v, path, out):
        if v != self.value or type(v) is not type(self.value):
            out.append(f"{path} = {_show(v)} is not accepted; expected {_show(self.value)}")


class Bool(Spec):
    what = "true or false"

    def check(self, v, path, out):
        if not isinstance(v, bool):
            out.append(f"{path} = {_show(v)} must be true or false")


class Scalar(Spec):
    what = "a string, number, true/false or null"

    def check(self, v, path, out):
        if v is not None and not isinstance(v, (str, int, float, bool)):
            out.append(f"{path} = {_show(v)} must be a string, a number, true/false or null")
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(f"{path} = {_show(v)} must be finite")


class AnyOf(Spec):
    def __init__(self, *specs, what: str):
        self.specs, self.what = specs, what

    def check(self, v, path, out):
        for s in self.specs:
            mine: list[str] = []
            s.check(v, path, mine)
            if not mine:
                return
        out.append(f"{path} = {_show(v)} must be {self.what}")


class ListOf(Spec):
    def __init__(self, item: Spec, min_len: int = 0):
        self.item, self.min_len = item, min_len
        self.what = f"a list of {item.what}"

    def check(self, v, path, out):
        if not isinstance(v, list):
            out.append(f"{path} = {_show(v)} must be {self.what}")
            return
        if len(v) < self.min_len:
            out.append(f"{path} must hold at least {self.min_len} item(s)")
        for i, x in enumerate(v):
            self.item.check(x, _join(path, i), out)
            if len(out) > MAX_PROBLEMS:
                return


class DictOf(Spec):
    def __init__(self, value: Spec):
        self.value = value
        self.what = f"an object of {value.what}"

    def check(self, v, path, out):
        if not isinstance(v, dict):
            out.append(f"{path} = {_show(v)} must be {self.what}")
            return
        for k, x in v.items():
            if not isinstance(k, str) or not k:
                out.append(f"{path}: key {_show(k)} must be a non-empty string")
                continue
            self.value.check(x, _join(path, k), out)
            if len(out) > MAX_PROBLEMS:
                return


@dataclasses.dataclass
class Field:
    spec: Spec
    required: bool = True


class Obj(Spec):
    """An object with known keys; ``extra`` checks other keys' values (None: refused)."""

    def __init__(self, fields: dict[str, Field | Spec], extra: Spec | None = None, noun: str = "key"):
        self.fields = {k: f if isinstance(f, Field) else Field(f) for k, f in fields.items()}
        self.extra, self.noun = extra, noun
        self.what = "an object"

    def check(self, v, path, out):
        if not isinstance(v, dict):
            keys = ", ".join(self.fields)
            out.append(f"{path or 'the file'} = {_show(v)} must be an object" + (f" with {keys}" if keys else ""))
            return
        for k, f in self.fields.items():
            if k not in v:
                if f.required:
                    out.append(f"{_join(path, k)}: required {self.noun} missing ({f.spec.what})")
            else:
                f.spec.check(v[k], _join(path, k), out)
        unknown = []
        for k in v:
            if k in self.fields:
                continue
            if self.extra is None:
                unknown.append(k)
            else:
                self.extra.check(v[k], _join(path, k), out)
        if unknown:
            names = ", ".join(_show(k) for k in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
            out.append(f"{path or 'top level'}: unknown {self.noun}{'s' if len(unknown) > 1 else ''} {names}; "
                       f"accepted {', '.join(self.fields) or 'none'}")


def _raise(problems: list[str], where: str, error=SchemaError) -> None:
    if problems:
        if len(problems) > MAX_PROBLEMS:
            problems = problems[:MAX_PROBLEMS - 1] + [f"... and {len(problems) - MAX_PROBLEMS + 1} more problems"]
        raise error(problems, where)


# --- JSON files ---------------------------------------------------------------------------------

def load_json(path: str | os.PathLike, what: str = "configuration") -> object:
    """Read a JSON file strictly: no NaN/Infinity, no duplicate keys; one line on any failure."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder, not a file")
    if not os.path.isfile(path):
        raise UserError(f"{what} file not found: {path}")
    try:
        if os.path.getsize(path) > MAX_JSON_BYTES:
            raise UserError(f"{what} {path} is larger than {MAX_JSON_BYTES >> 20} MiB")
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    dup: list[str] = []

    def pairs(items):
        d = {}
        for k, v in items:
            if k in d:
                dup.append(k)
            d[k] = v
        return d

    def constant(name):
        raise ValueError(f"{name} is not valid JSON")

    try:
        text = raw.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not valid JSON: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise UserError(f"{what} {path} is not valid JSON: nested too deeply") from None
    except ValueError as exc:          # JSONDecodeError, NaN, an integer too long to convert
        raise UserError(f"{what} {path} is not valid JSON: {str(exc).splitlines()[0]}") from None
    if dup:
        raise UserError(f"{what} {path}: key {_show(dup[0])} given twice")
    return obj


# --- generator configurations ---------------------------------------------------------------

def _hw_schema() -> Obj:
    """HwConfig's fields, each with its range or choices (new fields are covered as added)."""
    from hwgen import config as hc

    fields: dict[str, Field] = {}
    for f in dataclasses.fields(hc.HwConfig):
        if f.name in hc._RANGES:
            spec: Spec = Int(*hc._RANGES[f.name])
        elif f.name in hc._CHOICES:
            spec = Str(hc._CHOICES[f.name])
        elif isinstance(f.default, bool):
            spec = Bool()
        elif isinstance(f.default, int):
            spec = Int()
        elif isinstance(f.default, float):
            spec = Num()
        elif isinstance(f.default, str):
            spec = Str()
        else:
            spec = Scalar()
        fields[f.name] = Field(spec, required=False)      # a missing parameter takes its default
    return Obj(fields, noun="parameter")


def _source_schema() -> Obj:
    """Where a configuration came from: metadata.  Known keys are typed; other keys may hold
    a scalar or a list of scalars (``hwgen config`` records models and bits there)."""
    return Obj({"calib_images": Field(Int(1), False), "seed": Field(Int(0, (1 << 64) - 1), False),
                "block": Field(Int(0), False)},
               extra=AnyOf(Scalar(), ListOf(Scalar()), what="a string, number, true/false, null or a list of them"))


# How each known top-level section of a generator configuration is checked (a schema maker)
# and whether it must be present.  The accepted sections are "format" + GenConfig's fields;
# a GenConfig field not listed here must be an object of scalars.
CONFIG_SECTIONS: dict[str, tuple] = {
    "hw": (_hw_schema, True),
    "source": (_source_schema, False),
}


def config_sections() -> list[str]:
    from hwgen.generate import GenConfig

    return [f.name for f in dataclasses.fields(GenConfig)]


def check_config_dict(d, where: str = "configuration") -> None:
    """Raise :class:`SchemaError` (every problem, one line each) unless ``d`` is a valid
    generator configuration; the relations between hw parameters are HwConfig's to check."""
    from hwgen import generate as gen

    fmt = gen.CONFIG_FORMAT
    if not isinstance(d, dict):
        raise SchemaError(f"expected a JSON object with \"format\": \"{fmt}\"", where)
    if "format" not in d:
        raise SchemaError(f"required key \"format\" missing (expected \"{fmt}\")", where)
    if d["format"] in getattr(gen, "OLD_FORMATS", ()):
        gen.GenConfig.from_dict(d, where)          # raises its explanation of the old format
    if d["format"] != fmt:
        raise SchemaError(f"format = {_show(d['format'])} is not accepted; expected \"{fmt}\"", where)
    fields: dict[str, Field] = {"format": Field(Const(fmt))}
    for name in config_sections():
        make, required = CONFIG_SECTIONS.get(name, (lambda: DictOf(Scalar()), False))
        fields[name] = Field(make(), required)
    out: list[str] = []
    Obj(fields).check(d, "", out)
    _raise(out, where)


# --- integer graphs ---------------------------------------------------------------------------

_SHIFT = Int(0, 62)


# Accepted attributes of each op type: name -> (spec, required).  A new attribute of an op
# goes here (the round-trip test of a freshly quantized graph shows one that is missing).
def _op_attrs() -> dict[str, dict[str, Field]]:
    from .gelu import GELU_VARIANTS
    from .softmax import EXP_VARIANTS

    b64 = Int(1, 64)
    sign = Field(Bool(), False)
    gelu_opt = {k: Field(s, False) for k, s in (("degree", Int(1, 8)), ("qb", Int(1, 1 << 32)), ("qc", Int(0, 1 << 62)),
                                               ("sh", _SHIFT), ("m", Int(0, 1 << 62)), ("e", _SHIFT),
                                               ("fy", Int(1, 30)), ("m_y", Int(0, 1 << 62)), ("e_y", _SHIFT),
                                               ("exp_variant", Str(EXP_VARIANTS)))}
    return {
        "linear": {"a_bits": Field(b64), "a_signed": sign, "w_bits": Field(b64), "acc_bits": Field(b64, False),
                   "out_bits": Field(Int(0, 64)), "out_signed": sign, "in_features": Field(Int(1, 1 << 24), False),
                   "out_features": Field(Int(1, 1 << 24), False)},
        "matmul": {"a_bits": Field(b64), "a_signed": sign, "b_bits": Field(b64), "b_signed": sign,
                   "acc_bits": Field(b64, False), "out_bits": Field(b64), "out_signed": sign,
                   "m": Field(Int(0, 1 << 62)), "e": Field(_SHIFT)},
        "softmax": {"f": Field(Int(0, 30)), "variant": Field(Str(EXP_VARIANTS)), "out_bits": Field(Int(1, 32)),
                    "recip_bits": Field(Int(2, 62)), "row_len": Field(Int(1, 1 << 24), False)},
        "gelu": {"variant": Field(Str(GELU_VARIANTS)), "in_bits": Field(Int(2, 16)), "out_bits": Field(Int(2, 32)),
                 **gelu_opt},
        "layernorm": {"out_bits": Field(b64), "e": Field(_SHIFT), "channels": Field(Int(1, 1 << 24))},
        "add": {"out_bits": Field(b64), "m_a": Field(Int(0, 1 << 62)), "e_a": Field(_SHIFT),
                "m_b": Field(Int(0, 1 << 62)), "e_b": Field(_SHIFT)},
        "im2col": {"patch": Field(Int(1, 1 << 12))},
        "concat": {},
        "split_heads": {"heads": Field(Int(1, 1 << 12))},
        "merge_heads": {},
        "select_token": {"index": Field(Int(0, 1 << 24))},
    }


# op type -> (inputs, outputs, required integer constants)
OP_ARITY: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "linear": (1, 1, ("weight", "bias")), "matmul": (2, 1, ()), "softmax": (1, 1, ()), "gelu": (1, 1, ()),
    "layernorm": (1, 1, ("m", "b")), "add": (2, 1, ()), "im2col": (1, 1, ()), "concat": (2, 1, ()),
    "split_heads": (1, 3, ()), "merge_heads": (1, 1, ()), "select_token": (1, 1, ()),
}


class IntTensor(Spec):
    what = "an integer tensor"

    def check(self, v, path, out):
        import torch

        if not isinstance(v, torch.Tensor):
            out.append(f"{path} = {_show(v)} must be an integer tensor")
        elif v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
            out.append(f"{path} is a {str(v.dtype).replace('torch.', '')} tensor; constants must be integers")


_TENSOR_SPEC = Obj({"bits": Field(Int(1, 64)), "signed": Field(Bool()),
                    "scale": Field(AnyOf(Num(positive=True), ListOf(Num(positive=True), 1),
                                         what="a positive number or a list of them"))})
_SPEC_KEYS = ("img_size", "patch", "in_chans", "dim", "depth", "heads", "num_classes")
_META_FIELDS = {"model": Field(Str()), "bits": Field(Str()), "w_bits": Field(Int(2, 16)), "a_bits": Field(Int(2, 16)),
                "gelu": Field(Str()), "softmax": Field(Str()), "overrides": Field(DictOf(Str()), False),
                "calib_images": Field(Int(1, 1 << 40)), "seed": Field(Int(0, (1 << 64) - 1)),
                "spec": Field(Obj({k: Field(Int(1, 1 << 24)) for k in _SPEC_KEYS}))}


class AnyValue(Spec):
    what = "any value"

    def check(self, v, path, out):
        return


def _graph_schema(fmt: str) -> Obj:
    op = Obj({"type": Field(Str(tuple(OP_ARITY))), "name": Field(Str()), "inputs": Field(ListOf(Str())),
              "outputs": Field(ListOf(Str(), 1)), "attrs": Field(DictOf(AnyValue())),
              "consts": Field(DictOf(IntTensor())), "meta": Field(DictOf(AnyValue()), False)})
    meta = Obj(_META_FIELDS, extra=AnyValue())       # metadata: other keys are kept
    return Obj({"format": Field(Const(fmt)), "ops": Field(ListOf(op, 1)), "input": Field(Str()),
                "output": Field(Str()), "constants": Field(DictOf(IntTensor())),
                "tensors": Field(DictOf(_TENSOR_SPEC)), "meta": Field(meta)})


def _check_ops(d: dict, out: list[str]) -> None:
    attrs_of = _op_attrs()
    defined = {d["input"], *d["constants"]}
    names: set[str] = set()
    for i, op in enumerate(d["ops"]):
        where = f"ops[{i}] ({op['name']})"
        t = op["type"]
        if op["name"] in names:
            out.append(f"{where}: name given to an earlier op too")
        names.add(op["name"])
        n_in, n_out, consts = OP_ARITY[t]
        if len(op["inputs"]) != n_in or len(op["outputs"]) != n_out:
            out.append(f"{where}: a {t} op takes {n_in} input(s) and gives {n_out} output(s); "
                       f"got {len(op['inputs'])} and {len(op['outputs'])}")
        Obj(attrs_of[t]).check(op["attrs"], f"ops[{i}].attrs", out)
        for k in consts + (("m", "e") if t == "linear" and op["attrs"].get("out_bits") else ()):
            if k not in op["consts"]:
                out.append(f"ops[{i}].consts: required constant {_show(k)} missing for a {t} op")
        for name in op["inputs"]:
            if name not in defined:
                out.append(f"{where}: input {_show(name)} is not defined before this op")
        defined.update(op["outputs"])
        if len(out) > MAX_PROBLEMS:
            return
        if not out:
            _check_shapes(op, where, out)
    if d["output"] not in defined:
        out.append(f"output {_show(d['output'])} is not produced by any op")
    if d["input"] not in d["tensors"]:
        out.append(f"tensors: no entry for the input {_show(d['input'])}")


def _check_shapes(op: dict, where: str, out: list[str]) -> None:
    c, a = op["consts"], op["attrs"]
    if op["type"] == "linear":
        w = c["weight"]
        if w.dim() != 2:
            out.append(f"{where}: consts.weight must be 2-D, got shape {list(w.shape)}")
            return
        for k in ("bias", "m", "e"):
            if k in c and tuple(c[k].shape) != (w.shape[0],):
                out.append(f"{where}: consts.{k} has shape {list(c[k].shape)}; expected [{w.shape[0]}]")
    elif op["type"] == "layernorm":
        for k in ("m", "b"):
            if tuple(c[k].shape) != (a["channels"],):
                out.append(f"{where}: consts.{k} has shape {list(c[k].shape)}; expected [{a['channels']}] (channels)")
    elif op["type"] == "gelu" and a["variant"] == "lut":
        n = 1 << a["in_bits"]
        if "table" not in c or tuple(c["table"].shape) != (n,):
            out.append(f"{where}: consts.table must hold {n} values (2^in_bits) for variant \"lut\"")
    elif op["type"] == "gelu":
        need = ("degree", "qb", "qc", "sh", "m", "e") if a["variant"] in ("ibert", "iptq") else \
            ("fy", "m_y", "e_y", "m", "e", "exp_variant")
        for k in need:
            if k not in a:
                out.append(f"{where}: attrs: required key {_show(k)} missing for variant {_show(a['variant'])}")


def check_graph_dict(d, fmt: str, where: str = "integer graph", error=SchemaError) -> None:
    """Raise ``error`` (one line per problem) unless ``d`` is a valid integer graph."""
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise error(f"not an integer graph (expected format {fmt!r})", where)
    out: list[str] = []
    _graph_schema(fmt).check(d, "", out)
    if not out:
        _check_ops(d, out)
    _raise(out, where, error)
