"""Hostile input and interruptions (issue 12): one clear line, nothing lost, nothing half-written.

One test (or a parametrized group) per class of bad input: each ends in exit 2 and one line
``hwgen: error: ...`` (a file with several schema problems: one line per problem), refused
before any work starts, with every existing output left byte-identical.  Most run
``hwgen.cli.main`` in-process; the few that need a real process (a traceback, warnings at
exit, Ctrl-C) start one.  The SIGKILL-and-resume test of the RTL executor is
tests/test_rtl_resume.py; the fuzz test is tests/test_fuzz_cli.py.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from golden import atomic, models
from golden.graph import GraphFileError, IntegerGraph
from hwgen import cli
from hwgen.cli import main

REPO = Path(__file__).resolve().parent.parent


# --- helpers -------------------------------------------------------------------------------------

def fails(capsys, argv, *needles, lines: int = 1) -> str:
    """``main(argv)`` exits 2 with ``lines`` lines, each ``hwgen: error: ...``, naming ``needles``."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    got = err.splitlines()
    assert len(got) == lines and all(g.startswith("hwgen: error: ") for g in got), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def snapshot(root: Path) -> dict:
    """Every file under ``root``: bytes and mode."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def no_work(monkeypatch):
    """Refusals must come before the work: calibration, elaboration, synthesis fail the test."""
    import golden.quantize
    import hwgen.generate
    import hwgen.report

    def started(*a, **k):
        raise AssertionError("the work started before the input was refused")

    monkeypatch.setattr(golden.quantize, "quantize_model", started)
    monkeypatch.setattr(hwgen.generate, "elaborate", started)
    monkeypatch.setattr(hwgen.report, "hardware_report", started)


@pytest.fixture
def v2_config(tmp_path) -> Path:
    """A valid generator configuration of the current format (HwConfig defaults)."""
    from hwgen.config import HwConfig
    from hwgen.generate import GenConfig

    path = tmp_path / "hw.json"
    path.write_text(json.dumps(GenConfig(HwConfig(), {"models": ["digits"], "bits": ["w8a8"]}).to_dict()))
    return path


def _images(root: Path, n: int = 2, size=(20, 24)) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in ("c0", "c1"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = torch.randint(0, 256, (*size, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(px).save(root / cls / f"img{i}.png")
    return root


# --- unreadable inputs ---------------------------------------------------------------------------

def test_image_folder_with_a_jpg_that_is_no_image(capsys, tmp_path, no_work):
    data = _images(tmp_path / "data")
    (data / "c0" / ".jpg").write_text("not an image")
    fails(capsys, ["accuracy", "--data", str(data), "--calib", "2", "--report", str(tmp_path / "r.json")],
          "cannot be read", ".jpg")


def test_image_folder_with_a_truncated_png(capsys, tmp_path, no_work):
    data = _images(tmp_path / "data")
    png = data / "c0" / "img0.png"
    png.write_bytes(png.read_bytes()[:200])
    fails(capsys, ["accuracy", "--data", str(data), "--calib", "2", "--report", str(tmp_path / "r.json")],
          "cannot be read", "img0.png")


def test_image_folder_that_is_a_file_or_empty(capsys, tmp_path, no_work):
    (tmp_path / "f.png").write_bytes(b"x")
    fails(capsys, ["accuracy", "--data", str(tmp_path / "f.png")], "is a file")
    (tmp_path / "empty" / "c0").mkdir(parents=True)
    fails(capsys, ["accuracy", "--data", str(tmp_path / "empty"), "--calib", "1"], "not an image folder")


# --- outputs checked before the work -------------------------------------------------------------

def _hostile_outputs(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "dir.json").mkdir()
    if os.geteuid() == 0:                  # root writes through any mode: a read-only file system
        readonly = "/proc/hwgen-test/out"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        readonly = str(ro / "out")
    return {"below_file": str(tmp_path / "a_file" / "out"), "folder": str(tmp_path / "dir.json"),
            "readonly": readonly}


@pytest.mark.parametrize("kind", ["below_file", "folder", "readonly"])
@pytest.mark.parametrize("command", ["accuracy --report", "accuracy --save-graph", "quantize --out",
                                     "approx-report --report", "config --out", "generate --out", "report --reports"])
def test_outputs_checked_first(capsys, tmp_path, no_work, v2_config, command, kind):
    target = _hostile_outputs(tmp_path)[kind]
    cmd, opt = command.split()
    if opt in ("--report",) and kind != "folder":
        target += ".json"
    if cmd == "generate" and kind == "folder":
        target = str(tmp_path / "a_file")              # a file where the folder should go
    argv = [cmd, opt, target]
    if command == "accuracy --save-graph":
        argv += ["--report", str(tmp_path / "ok.json")]
    if cmd == "generate":
        argv += ["--config", str(v2_config)]
    if cmd == "report":
        rtl = tmp_path / "rtl"
        rtl.mkdir()
        (rtl / "u.v").write_text("module u; endmodule\n")
        (rtl / "manifest.json").write_text(json.dumps({"units": {"u": {"file": "u.v", "top": "u", "ports": []}}}))
        argv += ["--rtl", str(rtl)]
        if kind == "folder":
            (tmp_path / "dir.json" / "hw.json").mkdir()
            argv[2] = str(tmp_path / "dir.json")
    before = snapshot(tmp_path)
    fails(capsys, argv)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("speed", ["9", "5", "fast"])
def test_report_speed_grade_the_part_lacks_is_refused(capsys, no_work, speed):
    fails(capsys, ["report", "--speed", speed], "--speed")


def test_two_outputs_at_one_path(capsys, tmp_path, no_work):
    out = str(tmp_path / "r.json")
    fails(capsys, ["accuracy", "--report", out, "--save-graph", out], "same path")


def test_output_path_with_odd_characters(capsys, tmp_path, no_work):
    fails(capsys, ["quantize", "--out", ""], "empty path")
    fails(capsys, ["quantize", "--out", str(tmp_path / "a\0b.pt")], "NUL")
    fails(capsys, ["quantize", "--out", str(tmp_path) + "/"], "folder")


# --- reports: paths from the file name only ------------------------------------------------------

@pytest.mark.parametrize("report", ["r.md", "r", "r.json.md", ".json", "out.d/report"])
def test_report_suffix_other_than_json_refused(capsys, tmp_path, no_work, report):
    fails(capsys, ["accuracy", "--report", str(tmp_path / report)], ".json")
    fails(capsys, ["approx-report", "--report", str(tmp_path / report)], ".json")
    assert list(tmp_path.iterdir()) == []


def test_digits_on_an_image_folder_report_in_a_dotted_folder(tmp_path, capsys):
    """Colour images of any size through the digits preprocessing (one grey channel, 16x16);
    the Markdown path comes from the file name: results.v1/acc.json -> results.v1/acc.md;
    every artifact has a normal mode (not mkstemp's 0600)."""
    data = _images(tmp_path / "data", size=(31, 17))
    folder = tmp_path / "results.v1"
    report = folder / "acc.json"
    assert main(["accuracy", "--data", str(data), "--calib", "2", "--report", str(report),
                 "--save-graph", str(folder / "g.pt")]) == 0
    assert json.loads(report.read_text())["images"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "results.v1"]
    assert sorted(p.name for p in folder.iterdir()) == ["acc.json", "acc.md", "g.pt"]
    for p in folder.iterdir():
        assert p.stat().st_mode & 0o777 == atomic.default_mode(), p
    assert folder.stat().st_mode & 0o777 == atomic.default_mode(directory=True)


def test_report_paths_unit():
    out = cli._Outputs()
    assert out.report("a.b/c.JSON", "--report") == ("a.b/c.JSON", "a.b/c.md")
    with pytest.raises(cli.UserError):
        cli._Outputs().report("a.b/c", "--report")


# --- hwgen generate replaces its folder as a whole ------------------------------------------------

def _fake_units(monkeypatch, text="new"):
    """Elaboration replaced by two tiny units (the swap is what is tested here)."""
    import hwgen.generate as gen

    def elaborate(cfg):
        return [gen.UnitSpec(n, None, {}, "1 cycle", "1 per cycle", verilog=f"module {n}; // {text}\nendmodule\n",
                             ports=[]) for n in ("alpha", "beta")]

    monkeypatch.setattr(gen, "elaborate", elaborate)
    monkeypatch.setattr(gen, "elaborate_accelerator",
                        lambda cfg, accel=None: {"file": "accelerator.v", "ports": [], "verilog": f"module accelerator; // {text}\nendmodule\n"})


def _old_rtl(path: Path) -> Path:
    path.mkdir()
    (path / "gemm.v").write_text("module gemm; // old\nendmodule\n")
    (path / "stale.v").write_text("module stale; endmodule\n")
    (path / "manifest.json").write_text('{"units": {}}\n')
    return path


def test_generate_replaces_the_folder_as_a_whole(monkeypatch, tmp_path, capsys, v2_config):
    _fake_units(monkeypatch)
    out = _old_rtl(tmp_path / "rtl")
    out.chmod(0o750)
    assert main(["generate", "--config", str(v2_config), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accelerator.v", "alpha.v", "beta.v", "manifest.json"]
    assert out.stat().st_mode & 0o777 == 0o750                  # the folder keeps its mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hw.json", "rtl"]   # no temporary folder left


def test_generate_failing_while_writing_leaves_the_old_folder(monkeypatch, tmp_path, capsys, v2_config):
    import hwgen.generate as gen

    _fake_units(monkeypatch)
    out = _old_rtl(tmp_path / "rtl")
    before = snapshot(out)
    calls = []

    def full_disk(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        atomic.write_text(path, text)

    monkeypatch.setattr(gen, "write_text", full_disk)
    fails(capsys, ["generate", "--config", str(v2_config), "--out", str(out)], "No space left")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hw.json", "rtl"]


def test_generate_refuses_a_folder_it_did_not_make(monkeypatch, tmp_path, capsys, v2_config, no_work):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    fails(capsys, ["generate", "--config", str(v2_config), "--out", str(out)], "did not make", "notes.txt")
    fails(capsys, ["generate", "--config", str(v2_config), "--out", "/"], "root folder")
    assert (out / "notes.txt").read_text() == "keep me"


def test_replace_dir_interrupted_and_stale_leftovers(tmp_path):
    out = _old_rtl(tmp_path / "rtl")
    before = snapshot(out)
    stale = tmp_path / ".rtl.new-999999999-x"          # a killed earlier run's temporary folder
    stale.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with atomic.replace_dir(out) as tmp:
            (tmp / "half.v").write_text("half")
            raise KeyboardInterrupt
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rtl"]
    with atomic.replace_dir(tmp_path / "new" / "rtl") as tmp:       # a folder that does not exist yet
        (tmp / "a.v").write_text("a")
    assert (tmp_path / "new" / "rtl" / "a.v").read_text() == "a"


# --- options validated against what is used ----------------------------------------------------

@pytest.mark.parametrize("flag", [["--start", "0"], ["--count", "2"], ["--workers", "1"], ["--simulator", "icarus"],
                                  ["--fresh"]])
def test_rtl_only_flags_refused_by_golden(capsys, no_work, flag):
    fails(capsys, ["accuracy", *flag], flag[0], "--backend rtl only")


@pytest.mark.parametrize("argv, needles", [
    (["--override", "blocks.9.gelu=lut"], ("blocks.9.gelu", "no such layer", "0..3")),
    (["--override", "blocks.0.norm1=lut"], ("blocks.<N>.gelu",)),
    (["--override", "blocks.0.gelu=lut", "--override", "blocks.0.gelu=ibert"], ("given twice",)),
    (["--override", "blocks.0.softmax=lut"], ("accepted variants",)),
    (["--pretrained"], ("digits model has no timm weights",)),
    (["--pretrained", "--checkpoint", "x.pth"], ("give one",)),
    (["--backend", "rtl", "--count", "2", "--images", "3"], ("give one",)),
    (["--calib", "100000"], ("--calib 100000", "1437")),
])
def test_options_the_run_would_ignore(capsys, no_work, argv, needles):
    fails(capsys, ["accuracy", *argv], *needles)


@pytest.mark.parametrize("command", [["quantize", "--out", "g.pt"], ["config", "--out", "c.json"],
                                     ["approx-report"]])
def test_images_refused_where_nothing_is_evaluated(capsys, no_work, command):
    fails(capsys, [*command, "--images", "2"], "--images", "evaluates no images")


# --- odd values ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [str(1 << 64), str(1 << 70), "-1", "0x10", "1.5"])
def test_seed_out_of_range(capsys, no_work, seed):
    fails(capsys, ["accuracy", "--seed", seed], "seed")


def test_newline_in_a_name_stays_one_line(capsys, no_work):
    fails(capsys, ["accuracy", "--model", "deit\nnope", "--data", "."], "unknown model")


@pytest.mark.parametrize("mutate, lines, needles", [
    (lambda d: d["hw"].update(lanes=None), 1, ("hw.lanes = null", "1..64")),
    (lambda d: d.pop("hw"), 1, ("hw: required",)),
    (lambda d: d["hw"].update(lanes="2", gemm_rows=0, colums=8), 3, ("hw.lanes", "hw.gemm_rows", "colums")),
    (lambda d: d["hw"].update(gemm_mult=["lut"]), 1, ("gemm_mult", "lut, dsp")),
    (lambda d: d["hw"].update(a_bits=8.0), 1, ("a_bits = 8.0", "integer")),
    (lambda d: d["hw"].update(a_bits=True), 1, ("a_bits = true", "integer")),
    (lambda d: d.update(source=3), 1, ("source = 3",)),
    (lambda d: d.update(layer={}), 1, ("unknown key", "layer")),
    (lambda d: d.update(format="iptq-vit-hwgen-config/99"), 1, ("format",)),
    (lambda d: d["hw"].update({f"x{i}": i for i in range(50)}), 1, ("unknown parameters", "and 47 more")),
    (lambda d: [d["hw"].update({k: -5}) for k in list(d["hw"])], 8, ("more problems",)),
])
def test_config_schema(capsys, tmp_path, no_work, v2_config, mutate, lines, needles):
    d = json.loads(v2_config.read_text())
    mutate(d)
    v2_config.write_text(json.dumps(d))
    fails(capsys, ["generate", "--config", str(v2_config), "--out", str(tmp_path / "o")], *needles, lines=lines)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("raw, needle", [
    (b'{"format": "iptq-vit-hwgen-config/2", "hw": {"lanes": NaN}}', "NaN"),
    (b'{"format": "iptq-vit-hwgen-config/2", "hw": {"lanes": 1, "lanes": 2}}', "given twice"),
    (b"[" * 100000, "nested too deeply"),
    (b"\xff\xfe{}", "UTF-8"),
    (b"", "not valid JSON"),
    (b'{"hw": {"lanes": 1' + b"0" * 5000 + b"}}", "not valid JSON"),
])
def test_config_file_not_json(capsys, tmp_path, no_work, raw, needle):
    path = tmp_path / "c.json"
    path.write_bytes(raw)
    fails(capsys, ["generate", "--config", str(path), "--out", str(tmp_path / "o")], needle)


def test_config_that_is_a_folder(capsys, tmp_path, no_work):
    fails(capsys, ["generate", "--config", str(tmp_path), "--out", str(tmp_path / "o")], "is a folder")


# --- graph files: the schema -----------------------------------------------------------------

def _graph_dict(q):
    import copy
    return copy.deepcopy(q.graph.to_dict())


@pytest.mark.parametrize("mutate, needles", [
    (lambda d: d.pop("ops"), ("ops: required",)),
    (lambda d: d["ops"][0].update(type="conv"), ("ops[0].type", "conv")),
    (lambda d: d["ops"][1]["attrs"].pop("w_bits"), ("ops[1].attrs.w_bits: required",)),
    (lambda d: d["ops"][1]["attrs"].update(out_bits=None), ("ops[1].attrs.out_bits = null",)),
    (lambda d: d["ops"][1]["attrs"].update(surprise=1), ("unknown key", "surprise")),
    (lambda d: d["ops"][1]["consts"].update(weight=torch.zeros(2, 2)), ("float32", "integers")),
    (lambda d: d["ops"][3].update(inputs=["nowhere", "x"]), ("nowhere", "not defined")),
    (lambda d: d["tensors"]["input"].update(bits=-3), ("tensors.input.bits = -3",)),
    (lambda d: d["meta"].update(seed="zero"), ("meta.seed",)),
    (lambda d: d.update(output="nothing"), ("output", "not produced")),
    (lambda d: d["ops"][1]["consts"].update(bias=torch.zeros(3, dtype=torch.int64)), ("consts.bias", "shape")),
])
def test_graph_schema(digits_w8a8, tmp_path, mutate, needles):
    d = _graph_dict(digits_w8a8)
    mutate(d)
    with pytest.raises(GraphFileError) as info:
        IntegerGraph.from_dict(d)
    text = "\n".join(info.value.problems)
    # (one to MAX_PROBLEMS problems by construction, golden.schema._raise): each a non-empty line
    assert all(p.strip() and "\n" not in p for p in info.value.problems), info.value.problems
    for n in needles:
        assert n in text, text
    path = tmp_path / "g.pt"                  # the same through a file
    torch.save(d, path)
    with pytest.raises(GraphFileError):
        IntegerGraph.load(path)


def test_fresh_graph_passes_its_schema(digits_w8a8):
    IntegerGraph.from_dict(_graph_dict(digits_w8a8))


# --- checkpoints and pretrained weights ------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_state():
    return models.load_model("digits").state_dict()


@pytest.mark.parametrize("damage, needles", [
    (lambda s: s["blocks.0.attn.qkv.weight"].__setitem__((0, 0), float("nan")), ("not finite", "qkv.weight")),
    (lambda s: s["head.bias"].__setitem__(0, float("inf")), ("not finite", "head.bias")),
    (lambda s: s["blocks.1.mlp.fc1.weight"].zero_(), ("all-zero", "fc1.weight")),
    (lambda s: [t.zero_() for t in s.values()], ("all-zero",)),
    (lambda s: s.update({"head.weight": s["head.weight"].to(torch.int64)}), ("int64",)),
])
def test_bad_weights_refused_with_the_reason(capsys, tmp_path, no_work, digits_state, damage, needles):
    state = {k: v.clone() for k, v in digits_state.items()}
    damage(state)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    err = fails(capsys, ["accuracy", "--checkpoint", str(path)], *needles)
    assert "accumulator" not in err


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty caches, and any network connection fails the test."""
    import socket

    def no_network(*a, **k):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(models, "_hf_cache_dir", lambda: str(tmp_path / "hf"))
    monkeypatch.setattr(models, "_torch_hub_dir", lambda: str(tmp_path / "torch"))
    return tmp_path


def test_pretrained_not_cached_fails_at_once(capsys, offline, no_work):
    data = _images(offline / "data")
    t0 = time.time()
    fails(capsys, ["accuracy", "--model", "deit_tiny_patch16_224", "--pretrained", "--data", str(data)],
          "not in the local cache", "--checkpoint")
    assert time.time() - t0 < 20


def test_pretrained_from_the_local_cache(offline):
    """A cached hub file is used as it is, without the network."""
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("deit_tiny_patch16_224").state_dict()
    snap = offline / "hf" / "models--timm--deit_tiny_patch16_224.fb_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in ref.items()}, str(snap / "model.safetensors"))
    model = models.load_model("deit_tiny_patch16_224", pretrained=True)
    got = model.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


# --- warnings, tracebacks, Ctrl-C: in a real process ------------------------------------------------

def _hwgen(args, **kw):
    return subprocess.run([sys.executable, "-m", "hwgen.cli", *args], capture_output=True, text=True, cwd=REPO, **kw)


def test_no_warnings_around_the_line_when_elaboration_fails(tmp_path, v2_config):
    """Units made and then dropped by a failure would print Amaranth warnings at exit."""
    code = ("import sys, hwgen.generate as g\n"
            "def boom(*a, **k): raise ValueError('emit failed')\n"
            "g.emit_verilog = boom\n"
            "from hwgen.cli import main\n"
            f"sys.exit(main(['generate', '--config', {str(v2_config)!r}, '--out', {str(tmp_path / 'o')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("hwgen: error:"), proc.stderr
    assert not (tmp_path / "o").exists()


def test_ctrl_c_in_a_real_process(tmp_path):
    """A real SIGINT while the golden evaluation runs: one line, exit 130, the report untouched.
    The evaluation is made to wait (after saying so on stderr), so the signal always lands
    mid-work however fast the machine is."""
    report = tmp_path / "r.json"
    report.write_text('{"old": true}\n')
    (tmp_path / "r.md").write_text("old\n")
    code = ("import sys, time, golden.evaluate as ev\n"
            "def slow(*a, **k):\n"
            "    print('EVALUATING', file=sys.stderr, flush=True)\n"
            "    time.sleep(120)\n"
            "ev.evaluate_golden = slow\n"
            "from hwgen.cli import main\n"
            f"sys.exit(main(['accuracy', '--report', {str(report)!r}]))\n")
    # the child gets SIGINT's default action as a user's terminal gives it: a background job of a
    # non-interactive shell (`make test &`) ignores SIGINT, and Popen's children inherit that
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "EVALUATING" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("hwgen: interrupted:") and "left as they were" in last, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert report.read_text() == '{"old": true}\n'


def test_ctrl_c_says_what_was_kept(monkeypatch, capsys, tmp_path):
    """Golden: the report left as it was.  RTL: the finished images kept in the run folder."""
    import golden.quantize
    from sim import rtl_executor

    report = tmp_path / "r.json"
    report.write_text("{}\n")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(golden.quantize, "quantize_model", interrupted)
    assert main(["accuracy", "--report", str(report)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hwgen: interrupted: {report} left as it was; {tmp_path / 'r.md'} not written"]

    class Q:
        graph = None

    def rtl_interrupted(*a, **k):
        raise rtl_executor.RunInterrupted(Path("build/rtl_runs/k"), 3, 5)

    images = SimpleNamespace(images=None, labels=[0] * 5, name="five images")
    monkeypatch.setattr(cli, "_quantize", lambda args, check_images=None: (None, Q, images))
    monkeypatch.setattr(rtl_executor, "evaluate_rtl", rtl_interrupted)
    monkeypatch.setattr("sim.runner.have_simulator", lambda s: True)
    assert main(["accuracy", "--backend", "rtl", "--report", str(report)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kept 3 of 5 finished RTL images in build/rtl_runs/k" in err[0], err
    assert f"{report} left as it was" in err[0]


# --- make: the simulators ------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_simulators_one_line_when_icarus_cannot_be_installed(tmp_path):
    """No iverilog on PATH and apt-get failing: one line, and make goes on (CI: REQUIRE_ICARUS=1 fails)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 100\n")
    (bin_dir / "apt-get").chmod(0o755)
    os.symlink(shutil.which("id"), bin_dir / "id")
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    make = shutil.which("make")
    proc = subprocess.run([make, "-s", "-C", str(REPO), "simulators"], capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stderr
    assert lines[-1].startswith("make: ") and "Icarus tests will be skipped" in lines[-1], proc.stdout
    assert len(lines) <= 2
    proc = subprocess.run([make, "-s", "-C", str(REPO), "simulators", "REQUIRE_ICARUS=1"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode != 0
