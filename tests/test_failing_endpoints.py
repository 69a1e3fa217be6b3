"""scripts/failing_endpoints.py: late register inputs read from nextpnr's detailed timing report."""
import importlib.util
import json
from pathlib import Path

import pytest

from golden.errors import UserError
from hwgen.residual_add import ResidualAdd
from hwgen.verilog import emit_verilog

spec = importlib.util.spec_from_file_location("failing_endpoints", Path(__file__).resolve().parents[1] / "scripts" / "failing_endpoints.py")
failing_endpoints = importlib.util.module_from_spec(spec)
spec.loader.exec_module(failing_endpoints)


def _report(arrivals: dict) -> dict:
    """A nextpnr report with one net per (cell, port) -> arrival, as --detailed-timing-report writes it."""
    return {"fmax": {"clk": {"achieved": 1000.0 / max(arrivals.values()), "constraint": 150.0}},
            "detailed_net_timings": [{"driver": "d", "port": "F", "net": f"n{i}", "event": "posedge clk",
                                      "endpoints": [{"cell": c, "port": p, "event": "posedge clk", "delay": [0.1, a]}]}
                                     for i, ((c, p), a) in enumerate(arrivals.items())]}


ARRIVALS = {("u.core.gen_src0.walk.i0_FF", "DI"): 7.0,      # late at 150 only (6.67 ns)
            ("u.core.gen_src0.walk.i1_FF", "CE"): 8.0,      # late at 150, 140 and 130 (7.69 ns)
            ("u.core.feed.q_FF", "LSR"): 9.0,               # late at every target
            ("u.core.flag_FF", "DI"): 5.0,                  # on time
            ("u.core.lane.ram", "WAD0"): 6.9}               # a RAM's write address, late at 150


def test_late_inputs_by_target_pin_and_module():
    res = failing_endpoints.late(failing_endpoints.arrivals(_report(ARRIVALS)), depth=3)
    assert res["inputs"] == 5 and res["worst_ns"] == 9.0
    t = res["targets"]
    assert [t[m]["late_inputs"] for m in ("150", "140", "130", "120")] == [4, 2, 2, 1]
    assert t["150"]["by_pin"] == {"data": 1, "enable": 1, "reset": 1, "ram/dsp": 1}
    assert t["150"]["by_module"] == {"u.core.gen_src0": 2, "u.core.feed": 1, "u.core.lane": 1}
    assert t["120"]["by_module"] == {"u.core.feed": 1}


def test_late_nets_rank_the_nets_by_their_late_register_inputs():
    """A net's register inputs counted late against the period, nets with none left out, the
    net reaching the most late inputs first, paths from a pin not counted."""
    def ep(cell, delay, event="posedge clk"):
        return {"cell": cell, "port": "CE", "event": event, "delay": [0.1, delay]}
    rep = {"detailed_net_timings": [
        {"net": "en_wide", "event": "posedge clk", "endpoints": [ep(f"r{i}", 7.0 if i < 3 else 6.0) for i in range(40)]},
        {"net": "en_deep", "event": "posedge clk", "endpoints": [ep("s0", 9.5), ep("s1", 8.0)]},
        {"net": "on_time", "event": "posedge clk", "endpoints": [ep("t0", 5.0)]},
        {"net": "from_pin", "event": "<async>", "endpoints": [ep("u0", 9.9)]},
        {"net": "to_pin", "event": "posedge clk", "endpoints": [ep("v0", 9.9, "<async>"), ep("v1", 6.0)]}]}
    nets = failing_endpoints.late_nets(rep, (150, 120))
    assert nets["150"] == [
        {"net": "en_wide", "register_inputs": 40, "late": 3, "worst_ns": 7.0},
        {"net": "en_deep", "register_inputs": 2, "late": 2, "worst_ns": 9.5}]
    assert nets["120"] == [{"net": "en_deep", "register_inputs": 2, "late": 1, "worst_ns": 9.5}]
    assert [r["net"] for r in failing_endpoints.late_nets(rep, (150,), top=1)["150"]] == ["en_wide"]


def test_one_input_on_two_nets_keeps_its_latest_arrival():
    rep = _report({("a.b_FF", "DI"): 5.0})
    rep["detailed_net_timings"].append({"driver": "e", "port": "F", "net": "m", "event": "posedge clk",
                                        "endpoints": [{"cell": "a.b_FF", "port": "DI", "event": "posedge clk", "delay": [0.2, 7.5]}]})
    assert failing_endpoints.arrivals(rep) == {("a.b_FF", "DI"): 7.5}


def test_paths_from_or_to_a_pin_are_left_out():
    rep = _report({("a.b_FF", "DI"): 5.0})
    rep["detailed_net_timings"] += [
        {"driver": "sout_FF", "port": "Q", "net": "sout", "event": "posedge clk",
         "endpoints": [{"cell": "sout$tr_io", "port": "I", "event": "<async>", "delay": [0.2, 8.0]}]},
        {"driver": "sin_LUT", "port": "F", "net": "sin", "event": "<async>",
         "endpoints": [{"cell": "ish_FF", "port": "DI", "event": "posedge clk", "delay": [0.2, 8.0]}]}]
    assert failing_endpoints.arrivals(rep) == {("a.b_FF", "DI"): 5.0}


def test_a_report_without_detailed_timing_is_refused():
    with pytest.raises(UserError, match="--detailed-timing-report"):
        failing_endpoints.arrivals({"fmax": {}, "critical_paths": []})


def test_command_line_reads_reports_and_refuses_bad_input(tmp_path, capsys):
    f = tmp_path / "pnr2.json"
    f.write_text(json.dumps(_report(ARRIVALS)))
    out = tmp_path / "ep"
    assert failing_endpoints.main(["--pnr-report", str(f), "--out", str(out)]) == 0
    written = json.loads((tmp_path / "ep.json").read_text())
    assert written["seeds"]["2"]["targets"]["150"]["late_inputs"] == 4
    md = (tmp_path / "ep.md").read_text()
    assert "| 2 | 111.11 | 9.0 | 5 | 4 | 2 | 2 | 1 |" in md
    # the by-net table: n2 (the LSR at 9.0 ns) first, n3 (on time) absent
    assert written["seeds"]["2"]["targets"]["150"]["by_net"][0] == {"net": "n2", "register_inputs": 1, "late": 1,
                                                                    "worst_ns": 9.0}
    assert "| `n2` | 1 | 1 (9.00) |" in md and "`n3`" not in md
    assert "Each seed's critical path" not in md    # the report has none
    # a report with nextpnr's critical path: the path, step by step, in the JSON and the Markdown
    steps = [{"type": "clk-to-q", "from": {"cell": "a_FF"}, "to": {"cell": "a_FF", "loc": [3, 4]}, "delay": 0.4},
             {"type": "routing", "from": {"cell": "a_FF"}, "to": {"cell": "u.core.feed.q_FF", "loc": [9, 9]}, "delay": 8.6}]
    f.write_text(json.dumps({**_report(ARRIVALS), "critical_paths": [{"path": steps}]}))
    assert failing_endpoints.main(["--pnr-report", str(f), "--out", str(out)]) == 0
    cp = json.loads((tmp_path / "ep.json").read_text())["seeds"]["2"]["critical_path"]
    assert (cp["from"], cp["to"], cp["delay_ns"], cp["routing_ns"], cp["steps"]) == ("a_FF", "u.core.feed.q_FF", 9.0, 8.6, 2)
    md = (tmp_path / "ep.md").read_text()
    assert "Seed 2: 9.0 ns, 8.6 of it routing, 2 steps:" in md and "| routing | `u.core.feed.q_FF` | (9, 9) | 8.6 |" in md
    assert "seed 2's critical path: 9.0 ns (8.6 routing, 2 steps), a_FF -> u.core.feed.q_FF" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{not json")
    assert failing_endpoints.main(["--pnr-report", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    assert failing_endpoints.main(["--seeds", "1,x", "--out", str(out)]) == 2
    assert failing_endpoints.main(["--rtl", str(tmp_path), "--out", str(out)]) == 2      # no manifest
    assert failing_endpoints.main(["--speed", "9", "--rtl", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("failing_endpoints: error: ") for line in err)
    assert "speed grade 9" in err[3] and "accepted 6, 7, 8" in err[3]


def test_worst_input_is_nextpnrs_critical_path(tmp_path):
    """On a real place and route (a one-lane residual add, one seed, through ``hwgen report``'s
    ``synthesize`` keeping nextpnr's reports) the latest register input is the critical path
    nextpnr reports: the two views of one timing analysis agree; the result ``hwgen report``
    caches names no report."""
    from hwgen.generate import _ports
    from hwgen.report import synthesize
    verilog = emit_verilog(ResidualAdd(bits=16, lanes=1), "residual_add")
    out = synthesize(verilog, "residual_add", _ports(verilog, "residual_add"), use_cache=False, seeds=(1,),
                     keep_pnr=tmp_path)
    res = out["ecp5"]
    assert "reports_by_seed" not in res
    pnr = json.loads((tmp_path / "pnr1.json").read_text())
    late = failing_endpoints.late(failing_endpoints.arrivals(pnr), depth=2)
    assert late["inputs"] > 16
    assert abs(late["worst_ns"] - res["critical_path"]["delay_ns"]) < 0.01
    assert abs(1000 / late["worst_ns"] - res["fmax_mhz"]) < 0.1
