"""The hardware report runs real yosys (ECP5, Xilinx) and nextpnr-ecp5 on a generated unit."""
import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golden.atomic import write_json
from golden.errors import UserError
from hwgen.report import (DEFAULT_SPEED, LFE5U_85F, _run, _tool_timeout, accelerator_entry, accelerator_markdown, fmax_netlist,
                          fmax_wrapper, measure_component, place_and_route, report_name, speed_args)
from hwgen.residual_add import ResidualAdd


def test_synthesize_residual_add():
    """A one-lane residual add (the committed unit has 4 lanes: minutes of place and route), one seed."""
    res = measure_component(ResidualAdd(bits=16, lanes=1), "residual_add", seeds=(1,), use_cache=False)
    e, x = res["ecp5"], res["xilinx"]
    assert list(e["fmax_by_seed"]) == ["1"] and e["critical_path"]["delay_ns"] > 0
    # the path is kept step by step (nextpnr's report is gone with the temporary folder)
    cp = e["critical_path"]
    assert e["critical_path_by_seed"] == {"1": cp} and len(cp["path"]) == cp["steps"]
    assert abs(sum(step[2] for step in cp["path"]) - cp["delay_ns"]) < 0.01 and 0 <= cp["routing_ns"] <= cp["delay_ns"]
    assert cp["path"][0][0] == "clk-to-q" and cp["path"][-1][1] == cp["to"]
    assert e["lut4"] > 0 and e["ff"] > 0 and e["fmax_mhz"] > 10
    assert x["lut6"] > 0 and x["ff"] > 0
    # its multipliers are LUT carry-save trees (hwgen/residual_add.py), not DSP blocks
    assert e["mult18"] == 0 and x["dsp48"] == 0


def test_a_faster_speed_grade_reaches_nextpnr(tmp_path):
    """One netlist, one seed: placed on speed grade 8 it closes faster than on the default grade 6
    (``hwgen report --speed``), so the grade reaches nextpnr's timing model."""
    from hwgen.generate import _ports
    from hwgen.verilog import emit_verilog

    text = emit_verilog(ResidualAdd(bits=8, lanes=1), "residual_add")   # (the smallest: two placements)
    fmax_netlist(text, "residual_add", _ports(text, "residual_add"), tmp_path)
    slow = place_and_route(tmp_path, "wrap.json", "residual_add", seeds=(1,), pnr_args=speed_args(DEFAULT_SPEED))
    fast = place_and_route(tmp_path, "wrap.json", "residual_add", seeds=(1,), pnr_args=speed_args(8))
    assert fast["fmax_mhz"] > slow["fmax_mhz"] > 10


def test_speed_grades_outside_the_part_are_refused():
    # the default grade adds no argument: the results cached before the option keep their keys
    assert speed_args(DEFAULT_SPEED) == () and speed_args(7) == ("--speed", "7")
    # another grade's report goes beside the default's, never over it
    assert report_name(DEFAULT_SPEED) == "hw" and report_name(8) == "hw_speed8"
    for bad in (5, 9, "8"):
        with pytest.raises(UserError, match="accepted 6, 7, 8"):
            speed_args(bad)
        with pytest.raises(UserError, match="accepted 6, 7, 8"):
            report_name(bad)


def test_fmax_wrapper_covers_every_port_bit():
    ports = [{"name": "clk", "direction": "input", "width": 1}, {"name": "rst", "direction": "input", "width": 1},
             {"name": "a", "direction": "input", "width": 5}, {"name": "b", "direction": "input", "width": 3},
             {"name": "y", "direction": "output", "width": 7}]
    text = fmax_wrapper("u", ports)
    assert "reg [7:0] ish" in text and "reg [6:0] osh" in text
    assert ".a(ish[4:0])" in text and ".b(ish[7:5])" in text and ".y(outs[6:0])" in text


def _synth_result(lut4: int, fmax: float) -> dict:
    return {"ecp5": {"lut4": lut4, "ff": 40000, "ebr": 40, "mult18": 3, "fmax_mhz": fmax, "fmax_median_mhz": fmax,
                     "fmax_by_seed": {"1": fmax}, "critical_path": {"from": "a", "to": "b", "delay_ns": 20.0, "steps": 9},
                     "critical_path_by_seed": {"1": {"from": "a", "to": "b", "delay_ns": 1.5, "routing_ns": 1.0, "steps": 2,
                                                     "path": [["clk-to-q", "a", 0.5, [3, 4]], ["routing", "b", 1.0, [9, 4]]]}},
                     "flow": "abc -lut 4"},
            "xilinx": {"lut6": 60000, "ff": 40000, "bram36": 20.0, "dsp48": 0, "flow": "abc -luts"}}


def test_accelerator_entry_images_per_second_and_fit(tmp_path):
    """images/s = Fmax / cycles per image of the run that measured them; a cycle count measured on
    another AccelConfig is marked; a part too small is said."""
    accel = {"act_buffer_elems": 16384, "ext_word_bytes": 8}
    manifest = {"accelerator": {"accel_config": accel, "verilog_sha256": "x"}, "config": {"hw": {"lanes": 4}},
                "generator_sha256": "g1"}
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    small.write_text(json.dumps({"generator_sha256": "g1", "cycles_per_image": 125_000, "gemm_bound_cycles": 50_000, "accel": accel,
                                 "ext_bytes_read_per_image": 200_000}))
    big.write_text(json.dumps({"generator_sha256": "g0", "cycles_per_image": 25_000_000, "accel": {**accel, "act_buffer_elems": 1 << 19},
                               "ext_bytes_read_per_image": 6_000_000}))
    entry = accelerator_entry(_synth_result(70_000, 50.0), manifest, {"digits": small, "deit": big,
                                                                      "absent": tmp_path / "none.json"})
    d, t = entry["throughput"]["digits"], entry["throughput"]["deit"]
    assert d["images_per_second"] == 400.0 and d["ext_read_mb_per_s"] == 80.0 and d["same_accel_config"]
    assert t["images_per_second"] == 2.0 and not t["same_accel_config"] and "AccelConfig" in t["note"]
    assert "absent" not in entry["throughput"]
    assert "stale" not in d and "g0" in t["stale"]       # measured on other generator sources
    assert entry["fits_lfe5u_85f"] and "400.0 MB/s" in entry["bandwidth_assumed"]
    md = "\n".join(accelerator_markdown(entry))
    assert "| digits | 125,000 | 50,000 | 400.0 | 80.0 |" in md and "a larger AccelConfig" in md
    assert "Seed 1: 1.5 ns, 1.0 of it routing, 2 steps" in md and "| routing | `b` | (9, 4) | 1.0 |" in md
    over = accelerator_entry(_synth_result(LFE5U_85F["lut4"] + 1, 50.0), manifest, {})
    assert not over["fits_lfe5u_85f"] and "NO" in "\n".join(accelerator_markdown(over))


def test_a_tool_past_its_time_bound_is_stopped_and_said(tmp_path, monkeypatch):
    monkeypatch.setenv("HWGEN_TOOL_TIMEOUT_S", "0.5")
    err = _run([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, "out.json")
    assert err == "stopped after 0.5 s (HWGEN_TOOL_TIMEOUT_S sets the bound)"
    # a tool within the bound that writes its output is a success
    assert _run([sys.executable, "-c", "open('out.json', 'w').write('{}')"], tmp_path, "out.json") is None


@pytest.mark.parametrize("bad", ["soon", "0", "-5", "nan", "inf"])
def test_a_malformed_time_bound_is_refused(monkeypatch, bad):
    monkeypatch.setenv("HWGEN_TOOL_TIMEOUT_S", bad)
    with pytest.raises(UserError, match="HWGEN_TOOL_TIMEOUT_S"):
        _tool_timeout()


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                            lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
                            max_leaves=30)


@given(_json_values)
@settings(max_examples=300, deadline=None)
def test_reports_json_reads_back_as_written(tmp_path_factory, value):
    """``write_json`` puts short lists on one line; what it writes still reads back the same."""
    path = tmp_path_factory.mktemp("json") / "r.json"
    write_json(path, value)
    assert json.loads(path.read_text()) == value


def test_reports_json_puts_a_path_step_on_one_line(tmp_path):
    step = ["routing", "u.core.a_issue_LUT4_Z", 1.877, [73, 7]]
    write_json(tmp_path / "hw.json", {"critical_path": {"path": [step, step]}})
    lines = (tmp_path / "hw.json").read_text().splitlines()
    assert lines.count("      " + json.dumps(step) + ",") == 1 and lines.count("      " + json.dumps(step)) == 1


def test_report_of_another_grade_says_where_it_went(capsys, tmp_path, monkeypatch):
    """``hwgen report --speed 8`` names the files it wrote (hw_speed8.*), not a unit's name."""
    import hwgen.report
    from hwgen.cli import main

    rtl = tmp_path / "rtl"
    rtl.mkdir()
    (rtl / "u.v").write_text("module u; endmodule\n")
    (rtl / "manifest.json").write_text(json.dumps({"units": {"u": {"file": "u.v", "top": "u", "ports": []}}}))
    unit = {"ecp5": {"lut4": 1, "ff": 1, "mult18": 0, "fmax_mhz": 200.0}, "xilinx": {"lut6": 1, "ff": 1, "dsp48": 0}}

    def placed(rtl_dir, reports_dir, progress=True, speed=DEFAULT_SPEED):
        assert speed == 8
        return {"device": {"device": "LFE5U-85F", "speed_grade": speed}, "units": {"u": unit}}

    monkeypatch.setattr(hwgen.report, "hardware_report", placed)
    out = tmp_path / "r"
    assert main(["report", "--rtl", str(rtl), "--reports", str(out), "--speed", "8"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {out}/hw_speed8.json and {out}/hw_speed8.md"
