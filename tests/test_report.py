"""The hardware report runs real yosys (ECP5, Xilinx) and nextpnr-ecp5 on a generated unit."""
from hwgen.report import fmax_wrapper, measure_component
from hwgen.residual_add import ResidualAdd


def test_synthesize_residual_add():
    """A one-lane residual add (the committed unit has 4 lanes: minutes of place and route), one seed."""
    res = measure_component(ResidualAdd(bits=16, lanes=1), "residual_add", seeds=(1,), use_cache=False)
    e, x = res["ecp5"], res["xilinx"]
    assert list(e["fmax_by_seed"]) == ["1"] and e["critical_path"]["delay_ns"] > 0
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
