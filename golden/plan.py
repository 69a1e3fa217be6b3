"""Per-layer choice of the non-linear approximations by one score, Omega (IPTQ-ViT's
"unified metric"), with the cost taken from the generated hardware.

For every GELU and Softmax layer and every candidate variant (GELU ``ibert``, ``iptq``,
``ishift``, and ``lut`` where the input has at most 10 bits; Softmax ``linear``, ``ibert``,
``shiftfit``):

* **Q**, quantization sensitivity: the SQNR in dB of the layer's integer output against the
  float function of the same dequantized input (clamped to the output range), on the
  activations the calibration images produce (:func:`golden.approx_report.variant_outputs`;
  capped at :data:`Q_CAP_DB` for an error-free output);
* **P**, perturbation: the model quantized with only that layer overridden to the candidate
  (``QuantConfig.overrides``), its final logits (dequantized) against the FP32 model's on
  the evaluation images: mean squared error ``p_mse`` and mean KL divergence
  ``p_kl = KL(softmax(fp32) || softmax(integer))``;
* **C**, cost: the candidate's hardware unit from real synthesis (``cost``, see
  :mod:`hwgen.unit_cost`: golden does not import hwgen, the caller passes the costs) and its
  cycles per image for that layer (``cycles``).

Omega of candidate v of a layer, every term normalized by the largest value among that
layer's candidates (so each lies in [0, 1] and no unit of measure leaks into the weights)::

    Omega(v) = wq * Q(v)/max Q  -  wp * (MSE(v)/max MSE + KL(v)/max KL) / 2
               -  wc * C(v)/max C  -  wt * T(v)/max T

with weights ``q``, ``p``, ``c``, ``t`` (default :data:`DEFAULT_WEIGHTS`: 1, 1, 0.5, 0; T is
the layer's cycles per image).  A term whose maximum is 0 counts 0.

The plan: every GELU layer takes its own variant; all Softmax layers take one variant, the one
with the largest Omega summed over them (the accelerator has one Softmax unit; it has up to
four GELU units, one per variant in use).  A plan's hardware cost is the cost of the units it
needs: each GELU variant in use once, plus the Softmax unit.  Without a budget, each GELU
layer takes its argmax of Omega.  With ``budget``, the plan maximizes the summed Omega over
all plans whose hardware cost is at most the budget (exhaustively: over the sets of GELU
units to build and the Softmax variant, each layer taking its best variant among the units
built); ties go to the cheaper plan.
"""

from __future__ import annotations

import itertools
import json
import math
import re

import torch

from .errors import UserError
from .gelu import GELU_VARIANTS, LUT_MAX_IN_BITS
from .softmax import EXP_VARIANTS

DEFAULT_WEIGHTS = {"q": 1.0, "p": 1.0, "c": 0.5, "t": 0.0}
Q_CAP_DB = 200.0
LAYER = re.compile(r"blocks\.(\d+)\.(gelu|softmax)")
OP_VARIANTS = {"gelu": GELU_VARIANTS, "softmax": EXP_VARIANTS}


# --- plan files and options --------------------------------------------------------------------

def parse_weights(text: str | None) -> dict[str, float]:
    """``q=1,p=1,c=0.5`` (any subset; the rest default) -> weights; one clear error otherwise."""
    w = dict(DEFAULT_WEIGHTS)
    if text is None:
        return w
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in w:
            raise UserError(f"--weights {text!r}: expected KEY=NUMBER items, KEY one of q, p, c, t (e.g. q=1,p=1,c=0.5)")
        try:
            v = float(value)
        except ValueError:
            raise UserError(f"--weights {key}={value.strip()!r}: not a number") from None
        if not math.isfinite(v) or v < 0:
            raise UserError(f"--weights {key}={value.strip()}: a weight is a finite number >= 0")
        w[key] = v
    return w


def check_plan(d, where: str) -> dict[str, str]:
    """A plan (layer name -> variant), checked: one :class:`UserError` line for the first
    problem (a name that is no GELU or Softmax layer, a variant that layer cannot use)."""
    if isinstance(d, dict) and isinstance(d.get("layers"), dict):     # a plan report: its choices
        d = {name: (v.get("choice") if isinstance(v, dict) else v) for name, v in d["layers"].items()}
    if not isinstance(d, dict) or not d:
        raise UserError(f"--plan {where}: expected a JSON object of layer names to variants, "
                        f"e.g. {{\"blocks.0.gelu\": \"lut\"}}")
    out: dict[str, str] = {}
    for layer, variant in d.items():
        m = LAYER.fullmatch(str(layer))
        if not m:
            raise UserError(f"--plan {where}: unknown layer {layer!r}; layers are blocks.<N>.gelu and blocks.<N>.softmax")
        ok = OP_VARIANTS[m.group(2)]
        if not isinstance(variant, str) or variant not in ok:
            raise UserError(f"--plan {where}: {layer}: unknown variant {variant!r}; accepted {', '.join(ok)}")
        out[layer] = variant
    return out


def load_plan(path: str) -> dict[str, str]:
    """Read a plan file: a JSON object layer -> variant, or a ``hwgen plan`` report (its
    ``layers.*.choice``)."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise UserError(f"--plan {path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"--plan {path} is a folder; give the plan file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--plan {path}: not valid JSON ({exc})") from None
    return check_plan(d, path)


def candidates_of(op) -> tuple[str, ...]:
    """The variants a layer can use (``lut`` only for GELU inputs of at most 10 bits)."""
    if op.type == "gelu":
        return tuple(v for v in GELU_VARIANTS if v != "lut" or op.attrs["in_bits"] <= LUT_MAX_IN_BITS)
    return EXP_VARIANTS


# --- Q, P ----------------------------------------------------------------------------------

def measure_q(q, calib: torch.Tensor) -> dict[str, dict[str, float]]:
    """SQNR (dB) of every candidate of every GELU and Softmax layer on the calibration
    activations: ``{layer: {variant: q_db}}``."""
    from .approx_report import sqnr_db, variant_outputs

    allowed = {op.name: candidates_of(op) for op in q.graph.ops if op.type in OP_VARIANTS}
    out: dict[str, dict[str, float]] = {}
    for kind, layer, variant, got, ref, lo, hi in variant_outputs(q, calib, layernorm=False):
        if variant in allowed[layer]:
            out.setdefault(layer, {})[variant] = min(Q_CAP_DB, sqnr_db(got, ref, lo, hi))
    return out


def logits_metrics(fp: torch.Tensor, il: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """``il`` (dequantized integer logits) against the FP32 logits ``fp``: mse, kl (mean of
    KL(softmax(fp) || softmax(il))), cosine (mean), agreement of the top-1 (and top1 on
    ``labels``)."""
    from .evaluate import mean_cosine, top1

    fp, il = fp.double(), il.double()
    logp, logq = torch.log_softmax(fp, -1), torch.log_softmax(il, -1)
    kl = float((logp.exp() * (logp - logq)).sum(-1).clamp(min=0).mean())
    out = {"mse": float(((fp - il) ** 2).mean()), "kl": kl, "cosine": mean_cosine(fp, il),
           "agreement": float((fp.argmax(-1) == il.argmax(-1)).double().mean())}
    if labels is not None:
        out["top1"] = top1(il, labels)
    return out


def dequantized_logits(q, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    from .evaluate import integer_logits

    s = q.graph.tensors[q.graph.output]["scale"]
    return integer_logits(q, images, batch, progress=False).double() * torch.as_tensor(s, dtype=torch.float64)


# --- Omega and the plan ----------------------------------------------------------------------

def _ratio(v: float, mx: float) -> float:
    return v / mx if mx > 0 else 0.0


def omega(cands: dict[str, dict], weights: dict[str, float]) -> dict[str, float]:
    """Omega of each candidate of one layer (the module docstring's formula): ``cands`` maps
    variant -> {"q_db", "p_mse", "p_kl", "cost"[, "cycles"]}."""
    w = {**DEFAULT_WEIGHTS, **weights}
    mx = {k: max(max(float(c.get(k, 0.0)), 0.0) for c in cands.values())
          for k in ("q_db", "p_mse", "p_kl", "cost", "cycles")}
    out = {}
    for v, c in cands.items():
        qn = _ratio(max(float(c["q_db"]), 0.0), mx["q_db"])
        pn = (_ratio(c["p_mse"], mx["p_mse"]) + _ratio(c["p_kl"], mx["p_kl"])) / 2
        out[v] = (w["q"] * qn - w["p"] * pn - w["c"] * _ratio(c["cost"], mx["cost"])
                  - w["t"] * _ratio(c.get("cycles", 0.0), mx["cycles"]))
    return out


def plan_cost(plan: dict[str, str], op_of: dict[str, str], unit_costs: dict[str, float]) -> float:
    """Hardware cost of a plan: each (op type, variant) unit it uses, once."""
    return float(sum(unit_costs[u] for u in {f"{op_of[layer]}:{v}" for layer, v in plan.items()}))


def choose_plan(layers: dict[str, dict], unit_costs: dict[str, float],
                budget: float | None = None) -> tuple[dict[str, str], float]:
    """The plan (module docstring) from ``layers``: name -> {"op", "candidates": {variant:
    {..., "omega"}}}; ``unit_costs``: "op:variant" -> cost.  Returns (plan, its cost)."""
    gelus = [n for n, l in layers.items() if l["op"] == "gelu"]
    softs = [n for n, l in layers.items() if l["op"] == "softmax"]
    op_of = {n: l["op"] for n, l in layers.items()}
    g_all = [v for v in GELU_VARIANTS if any(v in layers[n]["candidates"] for n in gelus)]
    s_all = [v for v in EXP_VARIANTS if all(v in layers[n]["candidates"] for n in softs)] if softs else [None]
    best = None
    subsets = [s for r in range(1, len(g_all) + 1) for s in itertools.combinations(g_all, r)] if gelus else [()]
    for units in subsets:
        plan, total, ok = {}, 0.0, True
        for n in gelus:
            c = layers[n]["candidates"]
            options = [v for v in units if v in c]
            if not options:
                ok = False
                break
            pick = max(options, key=lambda v: (c[v]["omega"], -unit_costs[f"gelu:{v}"]))
            plan[n] = pick
            total += c[pick]["omega"]
        if not ok:
            continue
        for s in s_all:
            p = dict(plan)
            t = total
            for n in softs:
                p[n] = s
                t += layers[n]["candidates"][s]["omega"]
            cost = plan_cost(p, op_of, unit_costs)
            if budget is not None and cost > budget:
                continue
            key = (round(t, 12), -cost)
            if best is None or key > best[0]:
                best = (key, p, cost)
    if best is None:
        cheapest = min(plan_cost({**{n: v for n in gelus}, **{n: s for n in softs}}, op_of, unit_costs)
                       for v in g_all for s in s_all) if gelus else 0.0
        raise UserError(f"--budget {budget:g}: no plan fits; the cheapest plan costs {cheapest:g}")
    return best[1], best[2]


# --- the sweep -----------------------------------------------------------------------------

def sweep(make_q, calib: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, fp_logits: torch.Tensor,
          cost_of, weights: dict[str, float], budget: float | None = None, progress: bool = True) -> dict:
    """Measure Q, P, C of every candidate of every layer, score, choose, and compare.

    ``make_q(overrides)`` quantizes the model with those per-layer overrides (the command's
    own options otherwise); ``cost_of(op_type, variant, shape)`` returns {"cost", "cycles",
    ...} of the candidate's unit for a layer whose per-image input has ``shape``."""
    from tqdm import tqdm

    base = make_q({})
    layers_ops = [op for op in base.graph.ops if op.type in OP_VARIANTS]
    qdb = measure_q(base, calib)
    shapes = _input_shapes(base, calib[:1])
    units: dict[str, dict] = {}
    layers: dict[str, dict] = {}
    todo = [(op, v) for op in layers_ops for v in candidates_of(op)]
    bar = tqdm(todo, desc="plan: P per layer and candidate", unit="run", disable=not progress, leave=False)
    for op, v in bar:
        bar.set_postfix_str(f"{op.name}={v}")
        key = f"{op.type}:{v}"
        c = cost_of(op.type, v, shapes[op.name])
        units.setdefault(key, {k: val for k, val in c.items() if k != "cycles"})
        m = logits_metrics(fp_logits, dequantized_logits(make_q({op.name: v}), images))
        entry = layers.setdefault(op.name, {"op": op.type, "choice": None, "candidates": {}})
        entry["candidates"][v] = {"q_db": qdb[op.name][v], "p_mse": m["mse"], "p_kl": m["kl"],
                                  "cost": float(c["cost"]), "cycles": int(c["cycles"])}
    for entry in layers.values():
        for v, o in omega(entry["candidates"], weights).items():
            entry["candidates"][v]["omega"] = o
    unit_costs = {k: float(u["cost"]) for k, u in units.items()}
    plan, cost = choose_plan(layers, unit_costs, budget)
    for n, v in plan.items():
        layers[n]["choice"] = v
    op_of = {n: l["op"] for n, l in layers.items()}
    comparison = []
    uniform = [(f"all {v} GELU", {n: v for n in layers if op_of[n] == "gelu"}) for v in GELU_VARIANTS
               if all(v in layers[n]["candidates"] for n in layers if op_of[n] == "gelu")]
    uniform += [(f"all {v} Softmax", {n: v for n in layers if op_of[n] == "softmax"}) for v in EXP_VARIANTS]
    rows = uniform + [("Omega plan", plan)]
    if weights.get("c", 0) or weights.get("t", 0):     # what the same measurements pick when cost is free
        free = {**weights, "c": 0.0, "t": 0.0}
        scored = {n: {**l, "candidates": {v: {**c, "omega": o} for (v, c), o in
                                          zip(l["candidates"].items(), omega(l["candidates"], free).values())}}
                  for n, l in layers.items()}
        rows.append(("Omega plan, c=0", choose_plan(scored, unit_costs)[0]))
    for name, overrides in tqdm(rows, desc="plan: comparison", disable=not progress, leave=False):
        q = make_q(overrides)
        m = logits_metrics(fp_logits, dequantized_logits(q, images), labels)
        full = {op.name: op.attrs["variant"] for op in q.graph.ops if op.type in OP_VARIANTS}
        comparison.append({"plan": name, "top1": m["top1"], "agreement": m["agreement"], "kl": m["kl"],
                           "cosine": m["cosine"], "mse": m["mse"], "cost": plan_cost(full, op_of, unit_costs),
                           "variants": _summary(full, op_of), "layers": full})
    return {"weights": dict(weights), "budget": budget, "layers": layers, "units": units,
            "plan": plan, "plan_cost": cost, "comparison": comparison,
            "fp32_top1": float((fp_logits.argmax(-1) == labels).double().mean()) if len(labels) else 0.0}


def _summary(full: dict[str, str], op_of: dict[str, str]) -> str:
    """'gelu ibert x2, lut x2; softmax shiftfit'"""
    parts = []
    for kind in ("gelu", "softmax"):
        vs = [full[n] for n in full if op_of.get(n) == kind]
        counts = {v: vs.count(v) for v in dict.fromkeys(vs)}
        parts.append(f"{kind} " + ", ".join(f"{v}" + (f" x{k}" if len(counts) > 1 else "") for v, k in counts.items()))
    return "; ".join(parts)


def _input_shapes(q, one_image: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per-image input shape of every GELU and Softmax layer."""
    from .executor import run_graph

    _, env = run_graph(q.graph, q.quantize_input(one_image), keep=True)
    return {op.name: tuple(env[op.inputs[0]].shape[1:]) for op in q.graph.ops if op.type in OP_VARIANTS}


# --- report ----------------------------------------------------------------------------------

def best_uniform(report: dict) -> dict:
    """The most faithful uniform row (lowest logits KL; ties: cheaper)."""
    rows = [r for r in report["comparison"] if not r["plan"].startswith("Omega plan")]
    return min(rows, key=lambda r: (r["kl"], r["cost"]))


def verdict(report: dict) -> str:
    """Is the Omega plan at least as faithful as the best uniform choice at no more cost?"""
    om = next(r for r in report["comparison"] if r["plan"] == "Omega plan")
    bu = best_uniform(report)
    faithful = om["kl"] <= bu["kl"] and om["top1"] >= bu["top1"]
    cheaper = om["cost"] <= bu["cost"]
    if faithful and cheaper:
        return (f"The Omega plan is at least as faithful as the most faithful uniform choice ({bu['plan']}: "
                f"KL {bu['kl']:.3g}, top-1 {bu['top1'] * 100:.2f}%) at no more hardware cost "
                f"({om['cost']:,.0f} against {bu['cost']:,.0f}).")
    why = []
    if not faithful:
        why.append(f"it is less faithful (KL {om['kl']:.3g} against {bu['kl']:.3g}, top-1 {om['top1'] * 100:.2f}% "
                   f"against {bu['top1'] * 100:.2f}%)")
    if not cheaper:
        why.append(f"it costs more ({om['cost']:,.0f} against {bu['cost']:,.0f})")
    traded, unseen = [], []
    if not faithful:
        full = _variants_of(bu, report)
        for n, layer in report["layers"].items():
            v, alt = layer["choice"], full.get(n)
            if alt is None or alt == v or alt not in layer["candidates"]:
                continue
            c, a = layer["candidates"][v], layer["candidates"][alt]
            worse = ([f"P KL {c['p_kl']:.4g} against {a['p_kl']:.4g}"] if c["p_kl"] > a["p_kl"] else []) + \
                    ([f"Q {c['q_db']:.2f} dB against {a['q_db']:.2f}"] if c["q_db"] < a["q_db"] else [])
            if worse:
                traded.append(f"{n}: {v} for {alt}, {', '.join(worse)}, cost {c['cost']:,.0f} against {a['cost']:,.0f}")
            else:
                unseen.append(f"{n}: {v} for {alt}")
    def some(items: list[str]) -> str:
        return "; ".join(items[:6]) + (f"; and {len(items) - 6} more layers" if len(items) > 6 else "")

    reasons = []
    if traded:
        reasons.append(f"where Omega chose a variant that measured worse on its own ({some(traded)}), it paid "
                       f"that fidelity for a lower unit cost, as its weights ask (q={report['weights']['q']:g}, "
                       f"p={report['weights']['p']:g}, c={report['weights']['c']:g})")
    if unseen:
        reasons.append(f"where the chosen variant measured as good or better one layer at a time "
                       f"({some(unseen)}), the loss comes from the layers' errors adding up, which per-layer P "
                       f"does not see")
    return (f"The Omega plan is not at least as faithful as the most faithful uniform choice ({bu['plan']}) at no "
            f"more cost: {' and '.join(why)}" + (f". Why: {'; '.join(reasons)}." if reasons else "."))


def _variants_of(row: dict, report: dict) -> dict[str, str]:
    """Layer -> variant of a comparison row (from its per-layer record)."""
    return dict(row.get("layers", {}))


def to_markdown(report: dict) -> str:
    w = report["weights"]
    lines = [f"# Approximation plan: {report['model']} {report['bits']}", "",
             f"{report['images']} evaluation images ({report['data']}), {report['calib_images']} calibration images, "
             f"seed {report['seed']}. Weights q={w['q']:g}, p={w['p']:g}, c={w['c']:g}, t={w['t']:g}"
             + (f"; budget {report['budget']:g}" if report.get("budget") is not None else "; no budget") + "."
             + (f" {report['note']}" if report.get("note") else ""),
             "", f"Cost: {report['cost_method']}. {report['cost_note']}", "",
             "Omega = wq Q/maxQ - wp (MSE/maxMSE + KL/maxKL)/2 - wc C/maxC - wt T/maxT, maxima over the layer's "
             "candidates (golden/plan.py). Q: SQNR of the layer's output on the calibration activations; P: logits "
             "MSE and KL against FP32 with only that layer changed; C: the unit's synthesized cost; T: cycles per image.",
             "", "## Comparison", "",
             "| plan | variants | top-1 | agreement with FP32 | logits KL | logits cosine | hardware cost |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["comparison"]:
        lines.append(f"| {r['plan']} | {r['variants']} | {r['top1'] * 100:.2f}% | {r['agreement'] * 100:.2f}% | "
                     f"{r['kl']:.3g} | {r['cosine']:.5f} | {r['cost']:,.0f} |")
    lines += ["", f"FP32 top-1: {report['fp32_top1'] * 100:.2f}%. \"Omega plan, c=0\": the plan the same "
              f"measurements give when cost is free (weights c and t set to 0).", "", verdict(report), "",
              "## Units (real synthesis)", "",
              "| unit | LUT4 | FF | DPR16X4 | MULT18 | EBR | cost |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k, u in report["units"].items():
        lines.append(f"| {k.replace(':', ' ')} | {u['lut4']} | {u['ff']} | {u.get('dpr16x4', 0)} | {u['mult18']} | "
                     f"{u['ebr']} | {u['cost']:,.0f} |")
    lines += ["", "## Per layer", "",
              "| layer | variant | Q (dB) | P MSE | P KL | cost | cycles/image | Omega | chosen |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for n, l in report["layers"].items():
        for v, c in l["candidates"].items():
            lines.append(f"| {n} | {v} | {c['q_db']:.2f} | {c['p_mse']:.4g} | {c['p_kl']:.3g} | {c['cost']:,.0f} | "
                         f"{c['cycles']:,} | {c['omega']:.3f} | {'x' if v == l['choice'] else ''} |")
    return "\n".join(lines) + "\n"


def pareto_png(report: dict, path: str) -> None:
    """Fidelity (logits KL against FP32, log scale) against hardware cost, one point per plan
    of the comparison; the Pareto front drawn through the non-dominated ones."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["comparison"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    floor = min([r["kl"] for r in rows if r["kl"] > 0] or [1e-12]) / 10
    points: dict[tuple, list[str]] = {}
    for r in rows:
        om = r["plan"].startswith("Omega plan")
        ax.scatter(r["cost"], max(r["kl"], floor), s=90 if om else 35, marker="*" if om else "o",
                   color="tab:red" if om else ("tab:blue" if "GELU" in r["plan"] else "tab:green"),
                   zorder=4 if om else 3)
        points.setdefault((round(r["cost"], 3), float(f"{max(r['kl'], floor):.6g}")), []).append(r["plan"])
    # plans at the same point share one label; labels of nearby points are moved apart
    xs = [x for x, _ in points]
    ys = [math.log10(y) for _, y in points]
    x0, xw = min(xs), (max(xs) - min(xs)) or 1.0
    y0, yw = min(ys), (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for (x, y), names in sorted(points.items(), key=lambda kv: kv[0][1]):
        xn, yn = (x - x0) / xw, (math.log10(y) - y0) / yw
        ly = yn
        for px, py in placed:
            if abs(px - xn) < 0.3 and ly < py + 0.07 * len(names):
                ly = py + 0.07 * len(names)
        placed.append((xn, ly))
        ty = 10 ** (y0 + ly * yw)
        ax.annotate("\n".join(names), (x, y), xytext=(x + 0.02 * xw, ty), fontsize=7, va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if ly != yn else None)
    front, best = [], float("inf")
    for r in sorted(rows, key=lambda r: (r["cost"], r["kl"])):
        if r["kl"] < best:
            front.append(r)
            best = r["kl"]
    ax.step([r["cost"] for r in front], [max(r["kl"], floor) for r in front], where="post", color="grey",
            lw=0.8, zorder=1, label="Pareto front")
    ax.set_yscale("log")
    ax.margins(x=0.22, y=0.12)
    ax.set_xlabel("hardware cost of the plan's GELU + Softmax units (weighted ECP5 cells)")
    ax.set_ylabel("logits KL against FP32 (lower is better)")
    ax.set_title(f"{report['model']} {report['bits']}: fidelity against cost")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    from .atomic import write_file
    try:
        write_file(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
