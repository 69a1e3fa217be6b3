"""The hwgen command: results files with stable keys, and one clear line for bad input."""
import json
import subprocess
import sys

import pytest
import torch

from hwgen.cli import main


def _fails_with(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hwgen: error:"), err
    for n in needles:
        assert n in err, err
    return err


def test_unknown_model(capsys):
    _fails_with(capsys, ["accuracy", "--model", "no_such_model_xyz"], "unknown model", "no_such_model_xyz")


def test_resnet_refused_naming_module(capsys):
    _fails_with(capsys, ["accuracy", "--model", "resnet18"], "not supported", "ResNet", "VisionTransformer")


def test_distilled_deit_refused(capsys):
    _fails_with(capsys, ["accuracy", "--model", "deit_tiny_distilled_patch16_224"], "not supported", "dist_token")


def test_swin_refused(capsys):
    _fails_with(capsys, ["accuracy", "--model", "swin_tiny_patch4_window7_224"], "not supported", "SwinTransformer")


@pytest.mark.parametrize("bits", ["w9a8", "w1a8", "w8a4", "int8", "w8a16"])
def test_bits_out_of_range(capsys, bits):
    _fails_with(capsys, ["accuracy", "--bits", bits], "bits", "accepted")


def test_missing_checkpoint(capsys, tmp_path):
    _fails_with(capsys, ["accuracy", "--checkpoint", str(tmp_path / "nope.pth")], "checkpoint not found")


def test_corrupt_checkpoint(capsys, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    _fails_with(capsys, ["accuracy", "--checkpoint", str(bad)], "not a readable torch checkpoint")


def test_checkpoint_of_another_model(capsys, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    _fails_with(capsys, ["accuracy", "--checkpoint", str(other)], "does not fit model digits")


def test_unknown_variant_and_backend(capsys):
    _fails_with(capsys, ["accuracy", "--gelu", "tanh"], "GELU variant", "iptq")
    _fails_with(capsys, ["accuracy", "--backend", "fpga"], "backend", "golden")


def test_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hwgen.cli", "accuracy", "--model", "resnet18"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_accuracy_report_keys(tmp_path, capsys):
    report = tmp_path / "acc.json"
    graph = tmp_path / "g.pt"
    assert main(["accuracy", "--model", "digits", "--bits", "w4a8", "--images", "40",
                 "--report", str(report), "--save-graph", str(graph)]) == 0
    res = json.loads(report.read_text())
    assert res["model"] == "digits" and res["bits"] == "w4a8" and res["images"] == 40
    assert set(res["top1"]) == {"fp32", "fake_quant", "integer"}
    assert all(0.0 <= v <= 1.0 for v in res["top1"].values())
    assert 0.0 <= res["agreement_with_fp32"] <= 1.0 and -1.0 <= res["logits_cosine"] <= 1.0
    assert graph.exists() and (tmp_path / "acc.md").exists()
    assert "integer-only top-1" in capsys.readouterr().out


def test_image_folder_dataset(tmp_path):
    """A tiny ImageNet-style folder (two classes) through deit_tiny with random weights."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls in ("n01440764", "n01443537"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            px = torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(px).save(tmp_path / "data" / cls / f"img{i}.png")
    report = tmp_path / "folder.json"
    assert main(["accuracy", "--model", "deit_tiny_patch16_224", "--data", str(tmp_path / "data"),
                 "--calib", "2", "--report", str(report)]) == 0
    res = json.loads(report.read_text())
    assert res["images"] == 4 and res["model"] == "deit_tiny_patch16_224"


def test_timm_model_without_data(capsys):
    _fails_with(capsys, ["accuracy", "--model", "deit_tiny_patch16_224"], "needs --data")


def test_missing_image_folder(capsys, tmp_path):
    _fails_with(capsys, ["accuracy", "--data", str(tmp_path / "none")], "image folder not found")


@pytest.mark.parametrize("argv, needles", [
    (["--simulator", "modelsim"], ("--simulator 'modelsim'", "accepted: verilator")),
    (["--simulator", "icarus"], ("--simulator 'icarus'", "accepted: verilator")),
    (["--start", "-1"], ("--start",)),
    (["--workers", "0"], ("--workers",)),
    (["--start", "5000"], ("--start 5000", "360 images")),
])
def test_rtl_backend_bad_options(capsys, argv, needles):
    _fails_with(capsys, ["accuracy", "--backend", "rtl", *argv], *needles)


@pytest.mark.parametrize("backend", ["fpga", "accel"])
def test_unknown_backend(capsys, backend):
    _fails_with(capsys, ["accuracy", "--backend", backend], "backend", "golden, rtl")
