"""Fuzz (hypothesis): many generated bad inputs to the hwgen command line and to the
generator-configuration and integer-graph loaders.

Every generated input is bad by construction.  Each must end in exit 2 with at most a few
lines, every one ``hwgen: error: ...``, no traceback, refused before any work starts (the
work is replaced by a tripwire), and must leave every existing output byte-identical.
"""
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import re
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from golden.graph import GraphFileError, IntegerGraph
from hwgen import config as hw_config
from golden.schema import MAX_PROBLEMS
from hwgen.cli import build_parser, main

FUZZ = settings(max_examples=int(os.environ.get("HWGEN_FUZZ_EXAMPLES", "150")), deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Existing outputs that no refused input may touch, and hostile things to point at."""
    import golden.quantize
    import hwgen.generate
    import hwgen.report
    from golden import models
    from hwgen.config import HwConfig
    from hwgen.generate import GenConfig

    w = tmp_path_factory.mktemp("fuzz")
    (w / "reports").mkdir()
    (w / "reports" / "acc.json").write_text('{"old": 1}\n')
    (w / "reports" / "acc.md").write_text("old report\n")
    (w / "rtl").mkdir()
    (w / "rtl" / "gemm.v").write_text("module gemm; endmodule\n")
    (w / "rtl" / "manifest.json").write_text(json.dumps({"units": {"gemm": {"file": "gemm.v", "top": "gemm",
                                                                           "ports": []}}}))
    (w / "a_file").write_text("x")
    (w / "a_dir").mkdir()
    (w / "nortl").mkdir()
    (w / "badrtl").mkdir()
    (w / "badrtl" / "manifest.json").write_text('{"units": [1, 2]}')
    (w / "garbage.json").write_bytes(b"\x00\x01{{{")
    (w / "garbage.pth").write_bytes(b"\x00garbage" * 50)
    state = models.load_model("digits").state_dict()
    nan = {k: v.clone() for k, v in state.items()}
    nan["blocks.0.mlp.fc2.weight"][3, 3] = float("nan")
    torch.save(nan, w / "nan.pth")
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, w / "zero.pth")
    (w / "data" / "c0").mkdir(parents=True)
    (w / "data" / "c0" / "a.jpg").write_text("not a jpeg")
    (w / "data" / "c0" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    config = GenConfig(HwConfig(), {"models": ["digits"], "bits": ["w8a8"]}).to_dict()
    (w / "hw.json").write_text(json.dumps(config))
    mp = pytest.MonkeyPatch()

    def started(*a, **k):
        raise AssertionError("the work started before the input was refused")

    for mod, name in ((golden.quantize, "quantize_model"), (hwgen.generate, "elaborate"),
                      (hwgen.report, "hardware_report")):
        mp.setattr(mod, name, started)
    yield w, config, _snapshot(w)
    mp.undo()


def _refused(world, argv) -> None:
    w, _, before = world
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    text = err.getvalue()
    lines = text.strip().splitlines()
    assert rc == 2, (argv, rc, text)
    # stderr is what the user reads: not bounded by the schema's problem list (a warning, a
    # progress bar or a silent exit would show here)
    assert lines and len(lines) <= MAX_PROBLEMS, (argv, text)
    assert all(line.startswith("hwgen: error: ") for line in lines), (argv, text)
    assert "Traceback" not in text, (argv, text)
    assert _snapshot(w) == before, argv


# --- the command line ----------------------------------------------------------------------------

_TEXT = st.text(alphabet=string.printable + "éß\u2603\0", max_size=12)


_HW_RANGED = sorted(hw_config._RANGES.items())
_HW_NAMES = {f.name for f in dataclasses.fields(hw_config.HwConfig)}


def _bad_bits(text: str) -> bool:
    from golden.errors import UserError
    from golden.quantize import parse_bits

    try:
        parse_bits(text)
    except UserError:
        return True
    return False


def _options(command: str) -> set[str]:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {s for a in sub._actions for s in a.option_strings}


def _cli_cases(w: Path):
    rep = ["--report", str(w / "new" / "r.json")]
    out_file = ["--out", str(w / "new" / "o.pt")]
    bad_int = st.one_of(st.integers(max_value=0).map(str), _TEXT.filter(lambda t: not re.fullmatch(r"\s*[+-]?\d+\s*", t)))
    hostile_file = st.sampled_from([str(w / "a_file" / "x.json"), str(w / "a_dir"), "/proc/hwgen/x.json",
                                    "/proc/x.json", "", str(w / "new") + "/"])
    known = _options("accuracy") | {"-h", "--help"}
    flags = ["--start", "--count", "--workers", "--simulator", "--fresh"]
    return st.one_of(
        # bad values of the model options
        _TEXT.filter(_bad_bits).map(lambda t: ["accuracy", "--bits", t, *rep]),
        st.tuples(st.sampled_from(["--calib", "--images"]), bad_int).map(lambda o: ["accuracy", o[0], o[1], *rep]),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=1 << 64)).map(
            lambda s: ["accuracy", "--seed", str(s), *rep]),
        _TEXT.map(lambda t: ["accuracy", "--model", "zz_" + t, *rep]),
        st.tuples(st.sampled_from(["--gelu", "--softmax"]), _TEXT.filter(
            lambda t: t not in ("ibert", "iptq", "ishift", "lut", "linear", "shiftfit"))).map(
            lambda o: ["quantize", o[0], o[1], *out_file]),
        st.one_of(_TEXT.filter(lambda t: not re.fullmatch(r"blocks\.\d+\.(gelu|softmax)=.*", t)),
                  st.integers(min_value=4, max_value=10 ** 30).map(lambda i: f"blocks.{i}.gelu=lut")).map(
            lambda o: ["accuracy", "--override", o, *rep]),
        # options the chosen backend does not use, and bad rtl options
        st.lists(st.sampled_from(flags), min_size=1, max_size=3, unique=True).map(
            lambda fs: ["accuracy", *[x for f in fs for x in ([f] if f == "--fresh" else [f, "1"])], *rep]),
        st.one_of(st.tuples(st.just("--start"), st.integers(max_value=-1).map(str)),
                  st.tuples(st.sampled_from(["--workers", "--count"]), st.integers(max_value=0).map(str)),
                  st.tuples(st.just("--simulator"), _TEXT.filter(lambda t: t != "verilator"))).map(
            lambda o: ["accuracy", "--backend", "rtl", o[0], o[1], *rep]),
        _TEXT.filter(lambda t: t not in ("golden", "rtl")).map(lambda b: ["accuracy", "--backend", b, *rep]),
        # options that do not exist, commands that do not exist, bare junk
        _TEXT.map(lambda t: "--" + t).filter(lambda o: o.split("=", 1)[0] not in known).map(
            lambda o: ["accuracy", o, *rep]),
        st.lists(_TEXT, max_size=4).filter(lambda a: not a or a[0] not in ("accuracy", "quantize", "approx-report",
                                                                            "config", "generate", "report", "plan")).filter(
            lambda a: not any(x == "--help" or (x.startswith("-") and not x.startswith("--") and "h" in x)
                              for x in a)),
        # outputs that cannot be written, or are not what the option wants
        st.tuples(st.sampled_from([("accuracy", "--report"), ("accuracy", "--save-graph"), ("quantize", "--out"),
                                   ("approx-report", "--report"), ("config", "--out")]), hostile_file).map(
            lambda o: [o[0][0], o[0][1], o[1]] + (rep if o[0][1] == "--save-graph" else [])),
        st.tuples(st.sampled_from(["accuracy", "approx-report"]),
                  _TEXT.filter(lambda t: not t.lower().endswith(".json"))).map(
            lambda o: [o[0], "--report", str(w / "new" / ("r" + o[1].replace("/", "_").replace("\0", "")))]),
        st.sampled_from([str(w / "a_file"), "/", "/proc/hwgen/rtl", str(w / "a_dir" / "..")]).map(
            lambda o: ["generate", "--config", str(w / "hw.json"), "--out", o]),
        st.sampled_from([str(w / "a_file"), str(w / "reports")]).map(
            lambda o: ["generate", "--config", str(w / "hw.json"), "--out", o]),
        # generator settings of hwgen config: no FIELD=VALUE, an unknown field, a value out of range
        st.one_of(_TEXT.filter(lambda t: "=" not in t),
                  _TEXT.filter(lambda t: t.strip() not in _HW_NAMES and "=" not in t).map(lambda t: f"{t}=1"),
                  st.sampled_from(_HW_RANGED).flatmap(lambda f: st.one_of(
                      st.integers(max_value=f[1][0] - 1), st.integers(min_value=f[1][1] + 1)).map(
                      lambda v: f"{f[0]}={v}"))).map(
            lambda s: ["config", "--out", str(w / "new" / "c.json"), "--set", s]),
        # inputs that cannot be read
        st.sampled_from([str(w / "nope"), str(w / "a_file"), str(w / "data"), str(w / "a_dir")]).map(
            lambda d: ["accuracy", "--data", d, "--calib", "1", *rep]),
        st.sampled_from([str(w / "nope.pth"), str(w / "garbage.pth"), str(w / "nan.pth"), str(w / "zero.pth"),
                         str(w / "a_dir")]).map(lambda c: ["accuracy", "--checkpoint", c, *rep]),
        st.sampled_from([str(w / "nope.json"), str(w / "garbage.json"), str(w / "a_dir"), str(w / "nan.pth")]).map(
            lambda c: ["generate", "--config", c, "--out", str(w / "rtl")]),
        st.sampled_from([str(w / "nope"), str(w / "a_file"), str(w / "nortl"), str(w / "badrtl")]).map(
            lambda r: ["report", "--rtl", r, "--reports", str(w / "reports")]),
    )


@pytest.fixture(scope="module")
def cli_cases(world):
    return _cli_cases(world[0])


def test_fuzz_command_line(world, cli_cases):
    @FUZZ
    @given(cli_cases)
    def check(argv):
        _refused(world, argv)

    check()


# --- generator configurations --------------------------------------------------------------------

def _hw_fields():
    hc = hw_config
    return [(f.name, hc._RANGES.get(f.name), hc._CHOICES.get(f.name)) for f in dataclasses.fields(hc.HwConfig)]


_WRONG_TYPE = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()))


def _valid_hw(name, rng, choices, v) -> bool:
    """Whether ``v`` is an accepted value of HwConfig field ``name`` on its own."""
    if rng is not None:
        return isinstance(v, int) and not isinstance(v, bool) and rng[0] <= v <= rng[1]
    if choices is not None:
        return v in choices
    default = {f.name: f.default for f in dataclasses.fields(hw_config.HwConfig)}[name]
    return type(v) is type(default)


@st.composite
def _config_mutation(draw, base: dict):
    d = copy.deepcopy(base)
    kind = draw(st.sampled_from(["hw_type", "hw_range", "hw_unknown", "top_missing", "top_unknown", "top_type",
                                 "format", "hw_not_object", "source"]))
    fields = _hw_fields()
    if kind == "hw_type":
        name, rng, choices = draw(st.sampled_from(fields))
        d["hw"][name] = draw(st.one_of(_WRONG_TYPE, st.text(max_size=8)).filter(
            lambda v: not _valid_hw(name, rng, choices, v)))
    elif kind == "hw_range":
        name, (lo, hi), _ = draw(st.sampled_from([f for f in fields if f[1] is not None]))
        d["hw"][name] = draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1)))
    elif kind == "hw_unknown":
        known = {f[0] for f in fields}
        d["hw"][draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in known))] = draw(st.integers())
    elif kind == "top_missing":
        del d[draw(st.sampled_from(["format", "hw"]))]
    elif kind == "top_unknown":
        d[draw(st.text(max_size=10).filter(lambda k: k not in base))] = draw(_WRONG_TYPE)
    elif kind == "top_type":
        d = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3)))
    elif kind == "format":
        d["format"] = draw(st.one_of(_WRONG_TYPE, st.text(max_size=30)).filter(lambda v: v != base["format"]))
    elif kind == "hw_not_object":
        d["hw"] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3)))
    else:
        d["source"] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                     st.fixed_dictionaries({"seed": st.integers(max_value=-1)}),
                                     st.fixed_dictionaries({"x": st.dictionaries(st.text(max_size=2), st.integers(),
                                                                                   min_size=1, max_size=2)})))
    return d


@pytest.fixture(scope="module")
def config_cases(world):
    base = world[1]
    as_text = st.builds(lambda d: json.dumps(d).encode(), st.lists(_config_mutation(base), min_size=1, max_size=1)
                        .map(lambda ds: ds[0]))
    text = json.dumps(base).encode()
    cut = st.integers(min_value=0, max_value=len(text) - 1).map(lambda k: text[:k])      # every prefix is broken
    return st.one_of(as_text, as_text, as_text, cut, st.binary(max_size=40).filter(lambda b: not _is_json(b)))


def _is_json(b: bytes) -> bool:
    try:
        json.loads(b)
        return True
    except (ValueError, RecursionError):
        return False


def test_fuzz_generator_config(world, config_cases, tmp_path):
    path = tmp_path / "config.json"

    @FUZZ
    @given(config_cases)
    def check(raw):
        path.write_bytes(raw)
        _refused(world, ["generate", "--config", str(path), "--out", str(world[0] / "rtl")])

    check()


# --- integer graphs ------------------------------------------------------------------------------

_REQUIRED_ATTRS = {"linear": ("a_bits", "w_bits", "out_bits"), "matmul": ("a_bits", "b_bits", "out_bits", "m", "e"),
                   "softmax": ("f", "variant", "out_bits", "recip_bits"), "gelu": ("variant", "in_bits", "out_bits"),
                   "layernorm": ("out_bits", "e", "channels"), "add": ("out_bits", "m_a", "e_a", "m_b", "e_b"),
                   "im2col": ("patch",), "split_heads": ("heads",), "select_token": ("index",)}
_NOT_INT = st.one_of(st.none(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
                     st.floats(allow_nan=True).filter(lambda f: not (math.isfinite(f) and f.is_integer())))


@st.composite
def _graph_mutation(draw, base: dict):
    d = copy.deepcopy(base)
    ops = d["ops"]
    kind = draw(st.sampled_from(["top_missing", "top_type", "op_missing", "op_type", "attr_missing", "attr_bad",
                                 "attr_range", "attr_unknown", "const_bad", "input_undefined", "tensor_bad",
                                 "meta_bad", "op_kind"]))
    i = draw(st.integers(min_value=0, max_value=len(ops) - 1))
    op = ops[i]
    if kind == "top_missing":
        del d[draw(st.sampled_from(["format", "ops", "input", "output", "constants", "tensors", "meta"]))]
    elif kind == "top_type":
        d[draw(st.sampled_from(["ops", "constants", "tensors", "meta"]))] = draw(st.one_of(st.none(), st.integers(),
                                                                                         st.text(max_size=3)))
    elif kind == "op_missing":
        del op[draw(st.sampled_from(["type", "name", "inputs", "outputs", "attrs", "consts"]))]
    elif kind == "op_type":
        op[draw(st.sampled_from(["name", "inputs", "outputs", "attrs", "consts"]))] = draw(st.one_of(st.none(),
                                                                                                 st.integers()))
    elif kind == "op_kind":
        op["type"] = draw(st.text(max_size=8).filter(lambda t: t not in _REQUIRED_ATTRS and t not in (
            "concat", "merge_heads")))
    elif kind in ("attr_missing", "attr_bad", "attr_range"):
        candidates = [(j, o) for j, o in enumerate(ops) if _REQUIRED_ATTRS.get(o["type"])]
        j, o = draw(st.sampled_from(candidates))
        key = draw(st.sampled_from(_REQUIRED_ATTRS[o["type"]]))
        if kind == "attr_missing":
            del o["attrs"][key]
        elif kind == "attr_bad" or key == "variant":
            o["attrs"][key] = draw(_NOT_INT) if key != "variant" else draw(st.text(max_size=6).filter(
                lambda t: t not in ("ibert", "iptq", "ishift", "lut", "linear", "shiftfit")))
        else:
            o["attrs"][key] = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=1 << 63)))
    elif kind == "attr_unknown":
        op["attrs"][draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in op["attrs"] and k not in (
            "a_signed", "b_signed", "out_signed", "acc_bits", "in_features", "out_features", "row_len", "degree",
            "qb", "qc", "sh", "m", "e", "fy", "m_y", "e_y", "exp_variant")))] = 1
    elif kind == "const_bad":
        cands = [o for o in ops if o["consts"]] + [None]
        o = draw(st.sampled_from(cands))
        table = d["constants"] if o is None else o["consts"]
        key = draw(st.sampled_from(sorted(table)))
        table[key] = draw(st.one_of(st.just(torch.zeros(2)), st.just(torch.zeros(2, dtype=torch.bool)),
                                    st.lists(st.integers(), max_size=3), st.none()))
    elif kind == "input_undefined":
        if op["inputs"]:
            defined = {*d["tensors"], *d["constants"], d["input"], *(x for o in ops for x in o["outputs"])}
            op["inputs"][0] = draw(st.text(max_size=8).filter(lambda t: t not in defined))
        else:
            d["output"] = "no such tensor"
    elif kind == "tensor_bad":
        name = draw(st.sampled_from(sorted(d["tensors"])))
        field = draw(st.sampled_from(["bits", "signed", "scale"]))
        if draw(st.booleans()):
            del d["tensors"][name][field]
        else:
            d["tensors"][name][field] = {"bits": draw(st.one_of(st.integers(max_value=0), _NOT_INT)),
                                         "signed": draw(st.one_of(st.integers(), st.none(), st.text(max_size=2))),
                                         "scale": draw(st.one_of(st.floats(max_value=0), st.just(float("nan")),
                                                                 st.text(max_size=3), st.none()))}[field]
    else:
        key = draw(st.sampled_from(["model", "bits", "w_bits", "a_bits", "calib_images", "seed", "spec"]))
        if draw(st.booleans()):
            del d["meta"][key]
        else:
            d["meta"][key] = draw(st.one_of(st.none(), st.lists(st.integers(), max_size=2)))
    return d


def test_fuzz_graph_loader(digits_w8a8, tmp_path):
    base = digits_w8a8.graph.to_dict()
    path = tmp_path / "g.pt"

    @FUZZ
    @given(_graph_mutation(base), st.booleans())
    def check(d, through_file):
        with pytest.raises(GraphFileError) as info:
            if through_file:
                torch.save(d, path)
                IntegerGraph.load(path)
            else:
                IntegerGraph.from_dict(d)
        problems = info.value.problems
        # (one to MAX_PROBLEMS problems by construction, golden.schema._raise): each a non-empty line
        assert all(p.strip() and "\n" not in p for p in problems), problems

    check()
