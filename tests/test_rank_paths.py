"""scripts/rank_paths.py: the path model on a netlist small enough to check by hand."""
import importlib.util
import math
from pathlib import Path

spec = importlib.util.spec_from_file_location("rank_paths", Path(__file__).resolve().parents[1] / "scripts" / "rank_paths.py")
rank_paths = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rank_paths)


def _ff(d, q):
    return {"type": "TRELLIS_FF", "port_directions": {"CLK": "input", "DI": "input", "Q": "output"},
            "connections": {"CLK": [1], "DI": [d], "Q": [q]}}


def _lut(ins, z):
    return {"type": "LUT4", "port_directions": {**{p: "input" for p in "ABCD"}, "Z": "output"},
            "connections": {**{p: [b] for p, b in zip("ABCD", ins)}, "Z": [z]}}


def test_the_deeper_path_ranks_first_with_its_delay():
    # a -> LUT -> LUT -> b (two levels), a -> LUT -> c (one level); carry chains and the
    # clock net play no part
    cells = {"a": _ff(20, 10), "l1": _lut([10], 11), "l2": _lut([11, 10], 12), "b": _ff(12, 21),
             "l3": _lut([10], 13), "c": _ff(13, 22)}
    netlist = {"modules": {"top": {"cells": cells, "netnames": {"a_q": {"bits": [10]}, "b_d": {"bits": [12]},
                                                                   "c_d": {"bits": [13]}}}}}
    ranked = rank_paths.rank(netlist)
    assert [r["end"] for r in ranked[:2]] == ["b.DI", "c.DI"]
    # a's Q drives three LUTs (its routing grows with log2 of them); the other nets drive one
    wide = rank_paths.ROUTE + rank_paths.FANOUT * math.log2(3)
    expected = 0.5 + (wide + 0.45) + (rank_paths.ROUTE + 0.45) + rank_paths.ROUTE
    assert ranked[0]["levels"] == 2 and abs(ranked[0]["ns"] - expected) < 0.011
    assert ranked[0]["start"] == "a_q" and ranked[1]["levels"] == 1
