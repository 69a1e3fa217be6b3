"""The ``hwgen`` command line.

User mistakes (an unknown model, a bad bit width, a missing checkpoint, ...) print one
line ``hwgen: error: ...`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time

from golden.errors import UserError

DEFAULT_REPORTS = "reports"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UserError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="digits", help="'digits' (built in) or a timm model name")
    p.add_argument("--bits", default="w8a8", help="wNa8, N in 2..8 (w8a8, w4a8)")
    p.add_argument("--checkpoint", help="weights file (state dict) for the model")
    p.add_argument("--pretrained", action="store_true", help="timm pretrained weights (must be cached)")
    p.add_argument("--data", help="image folder (one sub-folder per class) instead of the built-in digits")
    p.add_argument("--calib", type=int, default=64, help="calibration images (default 64)")
    p.add_argument("--images", type=int, default=None, help="evaluate the first N images (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gelu", default="iptq", help="GELU variant: ibert, iptq, ishift, lut")
    p.add_argument("--softmax", default="shiftfit", help="Softmax exponential: linear, ibert, shiftfit")
    p.add_argument("--override", action="append", default=[], metavar="LAYER=VARIANT",
                   help="per-layer variant, e.g. blocks.0.gelu=lut (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="hwgen", description="Integer-only ViT: quantize, evaluate, generate hardware.")
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)
    acc = sub.add_parser("accuracy", help="FP32 vs fake-quant vs integer-only top-1")
    _common(acc)
    acc.add_argument("--backend", default="golden",
                     help="golden (the PyTorch integer executor) or rtl (the generated hardware in simulation)")
    acc.add_argument("--start", type=int, default=0, help="rtl: first image index (shard or resume a run)")
    acc.add_argument("--count", type=int, help="rtl: number of images from --start (default: --images, else all)")
    acc.add_argument("--workers", type=int, help="rtl: simulator processes in parallel (default: CPU cores)")
    acc.add_argument("--simulator", default="verilator", help="rtl: verilator (default) or icarus")
    acc.add_argument("--fresh", action="store_true", help="rtl: run every image again (default: reuse finished ones)")
    acc.add_argument("--report", help="JSON report path (default reports/accuracy_<backend>.json)")
    acc.add_argument("--save-graph", help="also write the integer graph artifact here")
    qz = sub.add_parser("quantize", help="quantize a model and write its integer graph artifact")
    _common(qz)
    qz.add_argument("--out", required=True, help="artifact path (.pt)")
    ap_rep = sub.add_parser("approx-report", help="error of every GELU/Softmax/LayerNorm variant")
    _common(ap_rep)
    ap_rep.add_argument("--report", default=f"{DEFAULT_REPORTS}/approx_errors.json")
    cf = sub.add_parser("config", help="write a generator configuration from a quantized model's layer")
    _common(cf)
    cf.add_argument("--block", type=int, default=0, help="transformer block whose constants the units take")
    cf.add_argument("--out", required=True, help="configuration file (.json)")
    gen = sub.add_parser("generate", help="write one Verilog file per unit and manifest.json")
    gen.add_argument("--config", help="configuration file (default: configs/default.json)")
    gen.add_argument("--out", default="rtl", help="output folder (default rtl/)")
    rep = sub.add_parser("report", help="synthesize and place-and-route every unit: reports/hw.{json,md}")
    rep.add_argument("--rtl", default="rtl", help="folder with the generated Verilog and manifest.json")
    rep.add_argument("--reports", default=DEFAULT_REPORTS)
    return ap


def _positive(name: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise UserError(f"--{name} must be a positive integer, got {v}")


def _quantize(args):
    """Load the model, pick images, quantize; returns (model, Quantized, ImageSet)."""
    from golden import datasets, models
    from golden.quantize import QuantConfig, parse_bits, quantize_model

    w_bits, a_bits = parse_bits(args.bits)
    _positive("calib", args.calib)
    _positive("images", args.images)
    overrides = {}
    for item in args.override:
        if "=" not in item:
            raise UserError(f"--override {item!r}: expected LAYER=VARIANT, e.g. blocks.0.gelu=lut")
        layer, variant = item.split("=", 1)
        overrides[layer] = variant
    cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits, gelu=args.gelu, softmax=args.softmax,
                      overrides=overrides, calib_images=args.calib, seed=args.seed)
    model = models.load_model(args.model, args.checkpoint, args.pretrained)
    if args.data:
        images = datasets.folder_set(args.data, model, args.calib, args.images, args.seed)
    elif args.model == "digits":
        images = datasets.digits_set(args.calib, args.images, args.seed)
    else:
        raise UserError(f"model {args.model} needs --data PATH (an image folder); only 'digits' has built-in images")
    for name, (layer_variant) in overrides.items():
        from golden.gelu import GELU_VARIANTS
        from golden.softmax import EXP_VARIANTS
        ok = GELU_VARIANTS if name.endswith(".gelu") else EXP_VARIANTS
        if layer_variant not in ok:
            raise UserError(f"--override {name}={layer_variant}: accepted variants {', '.join(ok)}")
    q = quantize_model(model, args.model, images.calib, cfg)
    return model, q, images


def cmd_accuracy(args) -> int:
    from golden.atomic import write_json, write_text
    from golden.evaluate import evaluate_golden

    if args.backend == "rtl":
        return _accuracy_rtl(args)
    if args.backend != "golden":
        raise UserError(f"backend {args.backend!r} is not available; accepted: golden, rtl")
    t0 = time.time()
    model, q, images = _quantize(args)
    if args.save_graph:
        q.graph.save(args.save_graph)
    res = evaluate_golden(model, q, images.images, images.labels)
    res["data"] = images.name
    res["wall_seconds"] = round(time.time() - t0, 1)
    report = args.report or f"{DEFAULT_REPORTS}/accuracy_{args.backend}.json"
    write_json(report, res)
    md = _accuracy_markdown(res)
    write_text(report.rsplit(".", 1)[0] + ".md", md)
    _print_accuracy(res)
    print(f"wrote {report}")
    return 0


def _accuracy_rtl(args) -> int:
    from golden.atomic import write_json, write_text
    from sim.rtl_executor import cpu_workers, evaluate_rtl

    if args.simulator not in ("verilator", "icarus"):
        raise UserError(f"--simulator {args.simulator!r} is not accepted; accepted: verilator, icarus")
    if args.start < 0:
        raise UserError(f"--start must be 0 or more, got {args.start}")
    _positive("count", args.count)
    _positive("workers", args.workers)
    count = args.count or args.images
    args.images = None                    # quantize on the calibration images, select below
    t0 = time.time()
    model, q, images = _quantize(args)
    n = len(images.labels)
    if args.start >= n:
        raise UserError(f"--start {args.start} is past the last image ({n} images)")
    end = n if count is None else min(n, args.start + count)
    indices = list(range(args.start, end))
    res = evaluate_rtl(model, q, images.images, images.labels, indices, workers=args.workers or cpu_workers(),
                       simulator=args.simulator, resume=not args.fresh)
    res["data"] = images.name
    res["wall_seconds_total"] = round(time.time() - t0, 1)
    report = args.report or f"{DEFAULT_REPORTS}/accuracy_rtl.json"
    write_json(report, res)
    write_text(report.rsplit(".", 1)[0] + ".md", _rtl_markdown(res))
    _print_rtl(res)
    print(f"wrote {report}")
    f = res["failure"]
    if f:
        where = ", ".join(f"{k} {f[k]}" for k in ("image", "op", "type", "tile", "element", "expected", "got", "problem")
                          if k in f)
        print(f"hwgen: RTL differs from the golden model: {where}"
              + (f"; waveform of that op: {res['waveform']}" if res.get("waveform") else ""), file=sys.stderr)
        return 1
    return 0


def _rtl_rows(res: dict) -> list[tuple[str, str]]:
    t = res["top1"]
    rows = [("FP32 top-1", f"{t['fp32'] * 100:.2f}%"), ("golden integer top-1", f"{t['integer'] * 100:.2f}%"),
            ("RTL top-1", f"{t['rtl'] * 100:.2f}%"),
            ("images with RTL logits = golden logits", f"{res['bit_exact_images']} / {res['requested_images']}"),
            ("cycles, total", f"{res['cycles']['total']:,}"), ("cycles per image", f"{res['cycles_per_image']:,}")]
    rows += [(f"  cycles in {op}", f"{c:,}") for op, c in res["cycles"]["per_op"].items()]
    ratio = res["ratio_to_free_running"]
    rows += [("simulated cycles per second", f"{res['sim_cycles_per_second']:,.0f}"),
             ("free-running Verilator cycles per second" if res["simulator"] == "verilator"
              else "free-running cycles per second", f"{res['free_running_cycles_per_second']:,.0f}"),
             ("ratio", f"{ratio:.2f}" if ratio is not None else "n/a"),
             ("workers, wall seconds", f"{res['workers']}, {res['wall_seconds']:.0f} s"
              + (f" ({res['reused']} images reused)" if res["reused"] else ""))]
    return rows


def metrics_markdown(head: str, rows: list[tuple[str, str]]) -> str:
    """A one-paragraph head and a two-column Markdown table of (metric, value) rows."""
    return head + "\n\n| metric | value |\n| --- | ---: |\n" + "".join(f"| {k.strip()} | {v} |\n" for k, v in rows)


def print_metrics(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def _rtl_markdown(res: dict) -> str:
    head = (f"{res['model']} at {res['bits']} on simulated hardware ({res['simulator']}): images "
            f"{res['first_index']}..{res['first_index'] + res['requested_images'] - 1} of {res['data']}; "
            f"GELU {res['gelu']}, Softmax {res['softmax']}, {res['calib_images']} calibration images, "
            f"seed {res['seed']}; {res['units']} units.")
    return metrics_markdown(head, _rtl_rows(res))


def _print_rtl(res: dict) -> None:
    print_metrics(f"{res['model']} {res['bits']}, {res['requested_images']} images on simulated hardware", _rtl_rows(res))


def _accuracy_rows(res: dict) -> list[tuple[str, str]]:
    t = res["top1"]
    return [("FP32 top-1", f"{t['fp32'] * 100:.2f}%"), ("fake-quant top-1", f"{t['fake_quant'] * 100:.2f}%"),
            ("integer-only top-1", f"{t['integer'] * 100:.2f}%"),
            ("top-1 agreement with FP32", f"{res['agreement_with_fp32'] * 100:.2f}%"),
            ("logits cosine (mean)", f"{res['logits_cosine']:.5f}")]


def _accuracy_markdown(res: dict) -> str:
    head = (f"Accuracy of {res['model']} at {res['bits']} on {res['images']} images ({res['data']}); "
            f"GELU {res['gelu']}, Softmax {res['softmax']}, {res['calib_images']} calibration images, seed {res['seed']}.")
    return metrics_markdown(head, _accuracy_rows(res))


def _print_accuracy(res: dict) -> None:
    print_metrics(f"{res['model']} {res['bits']}, {res['images']} images (golden)", _accuracy_rows(res))


def cmd_quantize(args) -> int:
    _, q, _ = _quantize(args)
    q.graph.save(args.out)
    print(f"wrote {args.out}: {len(q.graph.ops)} ops, {q.graph.meta['bits']}")
    return 0


def cmd_approx_report(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from golden.approx_report import approximation_errors, to_markdown
    from golden.atomic import write_json, write_text

    _, q, images = _quantize(args)
    rows = approximation_errors(q, images.calib)
    title = (f"Approximation error on {args.model} {q.graph.meta['bits']} calibration activations "
             f"({len(images.calib)} images), in output LSBs")
    write_json(args.report, {"model": args.model, "bits": q.graph.meta["bits"], "calib_images": len(images.calib),
                             "rows": rows})
    write_text(args.report.rsplit(".", 1)[0] + ".md", to_markdown(rows, title))
    table = Table(title=title)
    for col in ("op", "variant", "max abs err", "MSE", "values"):
        table.add_column(col, justify="left" if col in ("op", "variant") else "right")
    for r in rows:
        table.add_row(r["op"], r["variant"], f"{r['max_abs_err']:.3f}", f"{r['mse']:.4f}", f"{r['values']:,}")
    Console().print(table)
    print(f"wrote {args.report}")
    return 0


def cmd_config(args) -> int:
    from golden.atomic import write_json
    from hwgen.generate import config_from_graph

    _, q, _ = _quantize(args)
    cfg = config_from_graph(q.graph, args.block)
    write_json(args.out, cfg.to_dict())
    print(f"wrote {args.out} ({args.model} {q.graph.meta['bits']}, block {args.block})")
    return 0


def cmd_generate(args) -> int:
    from hwgen.generate import DEFAULT_CONFIG, GenConfig, generate

    cfg = GenConfig.load(args.config or DEFAULT_CONFIG)
    manifest = generate(cfg, args.out)
    for name, u in manifest["units"].items():
        print(f"{args.out}/{u['file']}: {name}, latency {u['latency']}, {len(u['ports'])} ports")
    print(f"wrote {args.out}/manifest.json")
    return 0


def cmd_report(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from hwgen.report import hardware_report

    rep = hardware_report(args.rtl, args.reports)
    table = Table(title=f"generated units on ECP5 {rep['device']['device']} and Xilinx 7-series")
    for col in ("unit", "LUT4", "FF", "MULT18", "Fmax MHz", "LUT6", "FF (xc7)", "DSP48"):
        table.add_column(col, justify="left" if col == "unit" else "right")
    for name, u in rep["units"].items():
        e, x = u["ecp5"], u["xilinx"]
        table.add_row(name, str(e["lut4"]), str(e["ff"]), str(e["mult18"]), str(e["fmax_mhz"]),
                      str(x["lut6"]), str(x["ff"]), str(x["dsp48"]))
    Console().print(table)
    print(f"wrote {args.reports}/hw.json and {args.reports}/hw.md")
    return 0


COMMANDS = {"accuracy": cmd_accuracy, "quantize": cmd_quantize, "approx-report": cmd_approx_report,
            "config": cmd_config, "generate": cmd_generate, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UserError("a command is needed; accepted: " + ", ".join(COMMANDS))
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"hwgen: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
