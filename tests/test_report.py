"""The hardware report runs real yosys (ECP5, Xilinx) and nextpnr-ecp5 on a generated unit."""
import json
from pathlib import Path

from hwgen.report import fmax_wrapper, synthesize

RTL = Path(__file__).resolve().parent.parent / "rtl"


def test_synthesize_residual_add():
    manifest = json.loads((RTL / "manifest.json").read_text())
    unit = manifest["units"]["residual_add"]
    res = synthesize((RTL / unit["file"]).read_text(), unit["top"], unit["ports"], use_cache=False)
    e, x = res["ecp5"], res["xilinx"]
    assert e["lut4"] > 0 and e["ff"] > 0 and e["fmax_mhz"] > 10
    assert x["lut6"] > 0 and x["ff"] > 0
    # its multipliers are LUT carry-save trees (hwgen/residual_add.py), not DSP blocks
    assert e["mult18"] == 0 and x["dsp48"] == 0


def test_fmax_wrapper_covers_every_port_bit():
    ports = [{"name": "clk", "direction": "input", "width": 1}, {"name": "rst", "direction": "input", "width": 1},
             {"name": "a", "direction": "input", "width": 5}, {"name": "b", "direction": "input", "width": 3},
             {"name": "y", "direction": "output", "width": 7}]
    text = fmax_wrapper("u", ports)
    assert "reg [7:0] ish" in text and "reg [6:0] osh" in text
    assert ".a(ish[4:0])" in text and ".b(ish[7:5])" in text and ".y(outs[6:0])" in text
