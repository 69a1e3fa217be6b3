"""Verilog generation: rtl/ is reproducible, lint clean, and bad configurations are refused."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwgen.cli import main
from hwgen.generate import DEFAULT_CONFIG, GenConfig
from hwgen.verilog import lint

RTL = Path(__file__).resolve().parent.parent / "rtl"


def test_committed_rtl_is_fresh(tmp_path):
    """`make verilog` on a clean clone reproduces the committed rtl/ exactly: `hwgen generate` in
    a process of its own (as a user runs it; elaborating the accelerator takes about a minute,
    so this one run serves both checks)."""
    proc = subprocess.run([sys.executable, "-m", "hwgen.cli", "generate", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    fresh = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in RTL.iterdir())
    assert fresh == committed, "rtl/ is stale: run `make verilog` and commit"
    for name in fresh:
        assert (tmp_path / name).read_text() == (RTL / name).read_text(), f"rtl/{name} is stale: run `make verilog`"
    _check_up_to_date_skip(tmp_path)


def _check_up_to_date_skip(out: Path):
    """A second `hwgen generate` on its own fresh output writes nothing; an edited file, a file
    that is not the generator's or another configuration each make it write."""
    from dataclasses import replace

    from hwgen.cli import _generated_up_to_date

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = subprocess.run([sys.executable, "-m", "hwgen.cli", "generate", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "up to date" in proc.stdout, proc.stdout + proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    cfg = GenConfig.load(DEFAULT_CONFIG)
    assert _generated_up_to_date(cfg, str(out))
    other = GenConfig.load(DEFAULT_CONFIG)
    other.hw = replace(other.hw, lanes=other.hw.lanes * 2)
    assert not _generated_up_to_date(other, str(out))
    (out / "notes.txt").write_text("mine\n")
    assert not _generated_up_to_date(cfg, str(out))
    (out / "notes.txt").unlink()
    with open(out / "gemm.v", "a") as f:
        f.write("// an edit\n")
    assert not _generated_up_to_date(cfg, str(out))


def test_manifest_describes_every_unit():
    manifest = json.loads((RTL / "manifest.json").read_text())
    files = {p.name for p in RTL.glob("*.v")}
    acc = manifest["accelerator"]
    assert {u["file"] for u in manifest["units"].values()} | {acc["file"], acc["ecp5_file"]} == files
    names = {p["name"] for p in acc["ports"]}
    assert {"clk", "rst", "irq", "m_axi_araddr", "m_axi_rdata", "s_axil_awaddr", "s_axil_rdata"} <= names
    assert len(acc["verilog_sha256"]) == 64 and acc["accel_config"]["act_buffer_elems"] >= 1
    for name, u in manifest["units"].items():
        names = {p["name"] for p in u["ports"]}
        assert {"clk", "rst"} <= names, name
        assert all(p["width"] >= 1 for p in u["ports"])
        assert u["latency"] and u["throughput"] and len(u["verilog_sha256"]) == 64
    assert len(manifest["generator_sha256"]) == 64


def test_no_absolute_paths_in_rtl():
    for v in RTL.glob("*.v"):
        text = v.read_text()
        for root in ("/tmp/", "/root/", "/home/", "/work/", "/usr/"):
            assert root not in text, f"{v.name} holds an absolute path"


# (accelerator_ecp5.v instantiates the ECP5 primitive MULT18X18D, of which no model is at
# hand: tests/test_hw_dsp.py checks it)
@pytest.mark.parametrize("verilog", sorted(p.name for p in RTL.glob("*.v") if not p.name.endswith("_ecp5.v")))
def test_rtl_lint_clean(tmp_path, verilog):
    shutil.copy(RTL / verilog, tmp_path / verilog)
    status, out = lint(tmp_path / verilog)
    assert status == 0 and "%Warning" not in out and "%Error" not in out, out


def _bad_config(tmp_path, capsys, mutate, *needles):
    cfg = json.loads(DEFAULT_CONFIG.read_text())
    mutate(cfg)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["generate", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hwgen: error:"), err
    for n in needles:
        assert n in err, err
    assert not out.exists(), "nothing may be written for a refused configuration"


def test_bits_out_of_range_refused(tmp_path, capsys):
    _bad_config(tmp_path, capsys, lambda c: c["hw"].update(a_bits=40), "a_bits", "accepted")


def test_accumulator_narrower_than_product_refused(tmp_path, capsys):
    _bad_config(tmp_path, capsys, lambda c: c["hw"].update(acc_bits=12), "acc_bits", "accepted")


def test_zero_rows_refused(tmp_path, capsys):
    _bad_config(tmp_path, capsys, lambda c: c["hw"].update(gemm_rows=0), "gemm_rows", "accepted")


def test_accumulator_too_narrow_for_k_refused(tmp_path, capsys):
    _bad_config(tmp_path, capsys, lambda c: c["hw"].update(acc_bits=24, gemm_max_k=768), "gemm_max_k", "K(768)")


def test_zero_lanes_refused(tmp_path, capsys):
    _bad_config(tmp_path, capsys, lambda c: c["hw"].update(lanes=0), "lanes", "accepted")


def test_unknown_parameter_refused(tmp_path, capsys):
    _bad_config(tmp_path, capsys, lambda c: c["hw"].update(colums=8), "unknown parameter", "colums")


def test_malformed_json_refused(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    assert main(["generate", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and err.count("\n") == 1


def test_missing_config_refused(tmp_path, capsys):
    assert main(["generate", "--config", str(tmp_path / "none.json")]) == 2
    assert "configuration file not found" in capsys.readouterr().err


def test_old_per_layer_format_refused(tmp_path, capsys):
    """A format-1 file baked one layer's constants into the units: refused with what to do instead."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "iptq-vit-hwgen-config/1", "hw": {}, "layer": {}}))
    assert main(["generate", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run time" in err and "hwgen config" in err, err


def test_default_config_covers_digits_w8a8_and_w4a8(tmp_path):
    """configs/default.json is what `hwgen config` derives for the digits ViT at W8A8 and W4A8: one
    set of units for every layer of both (the array's 9 rows hold its 17 tokens in 2 blocks)."""
    out = tmp_path / "cfg.json"
    assert main(["config", "--model", "digits", "--bits", "w8a8,w4a8", "--set", "lanes=4", "--set", "gemm_rows=9",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["hw"] == json.loads(DEFAULT_CONFIG.read_text())["hw"]


def test_w4a8_alone_keeps_8_bit_matmul_operands(digits_w4a8):
    """The one GEMM of a configuration also runs Q Kt and P V, whose second operands (K, V) are
    8-bit at W4A8: the derived w_bits is theirs, not the 4-bit weights'."""
    from hwgen.capabilities import derive_hw

    widths = {op.attrs["w_bits"] for op in digits_w4a8.graph.ops if op.type == "linear"}
    operands = {op.attrs["b_bits"] for op in digits_w4a8.graph.ops if op.type == "matmul"}
    assert widths == {4} and operands == {8}
    assert derive_hw([digits_w4a8.graph]).w_bits == 8


def test_generate_with_a_model_writes_its_program(tmp_path, digits_w8a8, capsys):
    """`hwgen generate --model digits --bits w8a8` adds the compiled program and its memory
    image, byte for byte the compiler's, and the interpreter runs it to the golden logits."""
    from golden.executor import run_graph
    from hwgen.accel.compiler import compile
    from hwgen.accel.interpreter import read_logits, run, write_input

    out = tmp_path / "acc"
    assert main(["generate", "--model", "digits", "--bits", "w8a8", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    image = (out / "program.bin").read_bytes()
    hw = GenConfig.load(DEFAULT_CONFIG).hw
    assert image == compile(digits_w8a8.graph, hw).image
    assert manifest["program"]["model"] == "digits" and manifest["program"]["image_bytes"] == len(image)
    assert (out / "accelerator.v").exists() and "program.bin" in capsys.readouterr().out
    x = digits_w8a8.quantize_input(torch.zeros(1, 1, 16, 16))
    mem = bytearray(image)
    write_input(mem, x[0])
    run(mem, hw)
    assert torch.equal(read_logits(mem), run_graph(digits_w8a8.graph, x))
