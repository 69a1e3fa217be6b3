"""Per-layer approximation choice (issue 11): the per-layer iptq fit, the Omega score and
its plan, and plan files on the command line."""
import json
import math

import pytest
import torch

from golden.executor import run_graph
from golden.gelu import build_gelu, calib_fit_points, gelu_float, gelu_int, gelu_reference


# --- the iptq GELU fitted per layer ----------------------------------------------------------

def _poly_gelu_sq_error(a: float, b: float, d: int, counts: torch.Tensor, s_in: float) -> float:
    """Float squared GELU error of the erf polynomial (a, b, d), summed over the levels the
    calibration saw (each weighed by how often it was seen)."""
    half = len(counts) // 2
    x = (torch.arange(len(counts), dtype=torch.float64) - half) * s_in
    t = x.abs() / math.sqrt(2.0)
    erf = torch.sign(x) * (a * (torch.clamp(t, max=-b) + b) ** d + 1)
    err = 0.5 * x * (1 + erf) - gelu_float(x)
    return float((counts.double() * err ** 2).sum())


def test_iptq_fit_is_per_layer_and_fits_calibration_better(digits_w8a8, digits_images):
    q = digits_w8a8
    gelus = q.graph.ops_of("gelu")
    assert len(gelus) >= 2 and all(op.attrs["variant"] == "iptq" for op in gelus)
    # each layer's (a, b) and integer constants are its own
    fits = {(round(op.meta["a"], 9), round(op.meta["b"], 9)) for op in gelus}
    assert len(fits) == len(gelus)
    assert len({(op.attrs["qb"], op.attrs["qc"], op.attrs["sh"]) for op in gelus}) == len(gelus)
    _, env = run_graph(q.graph, q.quantize_input(digits_images.calib), keep=True)
    total_layer = total_full = 0.0
    for op in gelus:
        counts = q.tq[op.inputs[0]].counts
        assert op.meta["fit"] == "calibration data"
        s_in, s_out = op.meta["s_in"], op.meta["s_out"]
        full = build_gelu("iptq", s_in, s_out, op.attrs["in_bits"], op.attrs["out_bits"])
        assert full["meta"]["fit"] == "representable range"
        d = op.attrs["degree"]
        # the float polynomial: the layer's fit is the better one on the layer's calibration data
        err_layer = _poly_gelu_sq_error(op.meta["a"], op.meta["b"], d, counts, s_in)
        err_full = _poly_gelu_sq_error(full["meta"]["a"], full["meta"]["b"], d, counts, s_in)
        assert err_layer < err_full, (op.name, err_layer, err_full)
        # the integer unit, on the activations the calibration images produce
        x = env[op.inputs[0]]
        ref = gelu_reference(x, s_in, s_out).clamp(-128, 127)
        total_layer += float(((gelu_int(x, op.attrs, op.consts) - ref) ** 2).sum())
        total_full += float(((gelu_int(x, full["attrs"], full["consts"]) - ref) ** 2).sum())
    assert total_layer < total_full


def test_calib_fit_points_weigh_by_output_error():
    counts = torch.zeros(256, dtype=torch.int64)
    counts[128 + 10] = 3
    counts[128 - 20] = 1
    t, w, t_max = calib_fit_points(counts, 0.1)
    assert sorted(t.tolist()) == pytest.approx(sorted([1.0 / math.sqrt(2), 2.0 / math.sqrt(2)]))
    assert t_max == pytest.approx(2.0 / math.sqrt(2))
    assert sorted(w.tolist()) == pytest.approx(sorted([3 * 0.5, 1 * 2.0]))


# --- Omega and the plan on a synthetic table ---------------------------------------------------

from golden.errors import UserError  # noqa: E402
from golden.plan import DEFAULT_WEIGHTS, check_plan, choose_plan, omega, parse_weights, plan_cost  # noqa: E402


def _omega_by_hand(cands, w):
    """The docstring's formula, written out again."""
    mq = max(c["q_db"] for c in cands.values())
    mm = max(c["p_mse"] for c in cands.values())
    mk = max(c["p_kl"] for c in cands.values())
    mc = max(c["cost"] for c in cands.values())
    return {v: w["q"] * c["q_db"] / mq - w["p"] * (c["p_mse"] / mm + c["p_kl"] / mk) / 2 - w["c"] * c["cost"] / mc
            for v, c in cands.items()}


def _synthetic():
    gen = torch.Generator().manual_seed(11)
    gelu_cost = {"ibert": 100.0, "iptq": 140.0, "ishift": 180.0, "lut": 20.0}
    soft_cost = {"linear": 25.0, "ibert": 34.0, "shiftfit": 33.0}
    layers = {}
    for i in range(3):
        for kind, costs in (("softmax", soft_cost), ("gelu", gelu_cost)):
            cands = {v: {"q_db": 20 + 20 * float(torch.rand(1, generator=gen)),
                         "p_mse": float(torch.rand(1, generator=gen)) + 0.01,
                         "p_kl": float(torch.rand(1, generator=gen)) + 0.01, "cost": c}
                     for v, c in costs.items()}
            layers[f"blocks.{i}.{kind}"] = {"op": kind, "candidates": cands}
    units = {**{f"gelu:{v}": c for v, c in gelu_cost.items()}, **{f"softmax:{v}": c for v, c in soft_cost.items()}}
    return layers, units


@pytest.mark.parametrize("weights", [None, "q=1,p=1,c=0", "q=0,p=1,c=0", "q=1,p=0.2,c=2"])
def test_omega_plan_is_the_argmax(weights):
    w = parse_weights(weights)
    layers, units = _synthetic()
    for layer in layers.values():
        by_hand = _omega_by_hand(layer["candidates"], w)
        got = omega(layer["candidates"], w)
        assert got == pytest.approx(by_hand)
        for v, o in got.items():
            layer["candidates"][v]["omega"] = o
    plan, cost = choose_plan(layers, units)
    for name, layer in layers.items():
        c = layer["candidates"]
        if layer["op"] == "gelu":
            assert c[plan[name]]["omega"] == max(x["omega"] for x in c.values())
    softs = [n for n in layers if layers[n]["op"] == "softmax"]
    sums = {v: sum(layers[n]["candidates"][v]["omega"] for n in softs) for v in ("linear", "ibert", "shiftfit")}
    assert {plan[n] for n in softs} == {max(sums, key=sums.get)}
    op_of = {n: layers[n]["op"] for n in layers}
    used = {f"{op_of[n]}:{v}" for n, v in plan.items()}
    assert cost == pytest.approx(sum(units[u] for u in used)) == pytest.approx(plan_cost(plan, op_of, units))


def test_budget_keeps_the_best_plan_that_fits():
    w = dict(DEFAULT_WEIGHTS, c=0.0)
    layers, units = _synthetic()
    for layer in layers.values():
        for v, o in omega(layer["candidates"], w).items():
            layer["candidates"][v]["omega"] = o
    free, free_cost = choose_plan(layers, units)
    budget = free_cost - 1
    plan, cost = choose_plan(layers, units, budget)
    assert cost <= budget
    op_of = {n: layers[n]["op"] for n in layers}
    total = lambda p: sum(layers[n]["candidates"][v]["omega"] for n, v in p.items())  # noqa: E731
    # no plan within the budget scores higher: check every assignment of the GELU layers
    import itertools
    gelus = [n for n in layers if op_of[n] == "gelu"]
    softs = [n for n in layers if op_of[n] == "softmax"]
    best = max(total(p) for p in (
        {**dict(zip(gelus, combo)), **{n: s for n in softs}}
        for combo in itertools.product(["ibert", "iptq", "ishift", "lut"], repeat=len(gelus))
        for s in ("linear", "ibert", "shiftfit"))
        if plan_cost(p, op_of, units) <= budget)
    assert total(plan) == pytest.approx(best)
    with pytest.raises(UserError, match="no plan fits"):
        choose_plan(layers, units, 1.0)


def test_weights_refused_in_one_line():
    for bad in ("q=x", "z=1", "q=-1", "q=inf", "q"):
        with pytest.raises(UserError):
            parse_weights(bad)


# --- plan files on the command line --------------------------------------------------------

from hwgen.cli import main  # noqa: E402
from tests.test_cli import _fails_with  # noqa: E402  (one checker of one-line refusals)




@pytest.mark.parametrize("content, needle", [
    ({"blocks.0.mlp": "lut"}, "unknown layer"),
    ({"blocks.0.gelu": "tanh"}, "unknown variant"),
    ({"blocks.0.softmax": "lut"}, "unknown variant"),
    ({"blocks.9.gelu": "lut"}, "no such layer"),
    ([1, 2], "expected a JSON object"),
    ("not json", "not valid JSON"),
])
def test_bad_plan_file_refused(tmp_path, capsys, content, needle):
    p = tmp_path / "plan.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "g.pt"
    _fails_with(capsys, ["quantize", "--plan", str(p), "--out", str(out)], needle, str(p))
    assert not out.exists()


def test_plan_conflicting_with_override_refused(tmp_path, capsys):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"blocks.1.gelu": "lut"}))
    _fails_with(capsys, ["quantize", "--plan", str(p), "--override", "blocks.1.gelu=ibert", "--out",
                         str(tmp_path / "g.pt")], "blocks.1.gelu")
    _fails_with(capsys, ["plan", "--plan", str(p)], "--plan")


def test_plan_round_trips_through_quantize(tmp_path, capsys):
    from golden.graph import IntegerGraph

    plan = {"blocks.0.gelu": "lut", "blocks.2.gelu": "ibert", "blocks.1.softmax": "linear"}
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan))
    out = tmp_path / "g.pt"
    assert main(["quantize", "--plan", str(p), "--override", "blocks.3.gelu=ishift", "--calib", "8",
                 "--out", str(out)]) == 0
    g = IntegerGraph.load(out)
    got = {op.name: op.attrs["variant"] for op in g.ops if op.type in ("gelu", "softmax")}
    expect = {**{n: "iptq" for n in got if n.endswith("gelu")}, **{n: "shiftfit" for n in got if n.endswith("softmax")},
              **plan, "blocks.3.gelu": "ishift"}
    assert got == expect
    # a plan report (hwgen plan's JSON) is a plan file too: its layers' choices
    report = {"model": "digits", "layers": {n: {"choice": v, "candidates": {}} for n, v in plan.items()}}
    assert check_plan(report, "r.json") == plan


def test_sweep_report_keys_and_choice(digits_model, digits_images):
    """The sweep on the digits model (a stand-in cost, so no synthesis here): the report's
    stable keys, every candidate scored, each GELU layer's choice its argmax of Omega."""
    from golden.plan import sweep
    from golden.quantize import QuantConfig, quantize_model

    reuse: dict = {}

    def make_q(overrides):
        return quantize_model(digits_model, "digits", calib, QuantConfig(calib_images=len(calib), overrides=overrides),
                              reuse)

    cost = {"gelu:ibert": 10.0, "gelu:iptq": 14.0, "gelu:ishift": 18.0, "gelu:lut": 2.0,
            "softmax:linear": 2.5, "softmax:ibert": 3.4, "softmax:shiftfit": 3.3}
    calib = digits_images.calib[:16]
    images, labels = digits_images.images[:16], digits_images.labels[:16]
    with torch.no_grad():
        fp = digits_model(images)
    res = sweep(make_q, calib, images, labels, fp,
                lambda op, v, shape: {"cost": cost[f"{op}:{v}"], "cycles": math.prod(shape)}, DEFAULT_WEIGHTS,
                progress=False)
    json.dumps(res, allow_nan=False)
    assert set(res["layers"]) == {f"blocks.{i}.{k}" for i in range(4) for k in ("gelu", "softmax")}
    for name, layer in res["layers"].items():
        assert set(layer["candidates"]) == ({"ibert", "iptq", "ishift", "lut"} if name.endswith("gelu")
                                            else {"linear", "ibert", "shiftfit"})
        for c in layer["candidates"].values():
            assert {"q_db", "p_mse", "p_kl", "cost", "omega"} <= set(c)
        if name.endswith("gelu"):
            assert layer["choice"] == max(layer["candidates"], key=lambda v: layer["candidates"][v]["omega"])
    plans = [r["plan"] for r in res["comparison"]]
    assert plans[-2:] == ["Omega plan", "Omega plan, c=0"] and len(plans) == 4 + 3 + 2
    for r in res["comparison"]:
        assert {"plan", "top1", "agreement", "kl", "cosine", "cost"} <= set(r)
    # the Omega plan's row is the plan, run whole
    assert res["comparison"][-2]["layers"] == res["plan"]


def test_reused_calibration_and_weights_give_the_same_graph(digits_model, digits_images):
    from golden.quantize import QuantConfig, quantize_model

    calib = digits_images.calib[:8]
    reuse: dict = {}
    ov = {"blocks.1.gelu": "lut", "blocks.0.softmax": "linear"}
    quantize_model(digits_model, "digits", calib, QuantConfig(calib_images=8), reuse)
    again = quantize_model(digits_model, "digits", calib, QuantConfig(calib_images=8, overrides=ov), reuse)
    fresh = quantize_model(digits_model, "digits", calib, QuantConfig(calib_images=8, overrides=ov))
    assert [(o.name, o.attrs) for o in again.graph.ops] == [(o.name, o.attrs) for o in fresh.graph.ops]
    for a, b in zip(again.graph.ops, fresh.graph.ops):
        assert a.consts.keys() == b.consts.keys()
        assert all(torch.equal(a.consts[k], b.consts[k]) for k in a.consts)
