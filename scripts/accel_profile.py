"""Cycles of every instruction of a compiled program on the RTL accelerator, against its GEMM
bound: where a model's cycles go, layer by layer.  Writes reports/profile_<model>_<bits>.{json,md}.

    python scripts/accel_profile.py [--model digits] [--bits w8a8|w4a8]

Each instruction runs on its own, from the buffer state the interpreter had before it (the
instruction cases of tests/test_accel_rtl.py: LOAD snapshot -> buffer, the instruction, STORE
buffer -> memory, END), in one simulation; its output must equal the interpreter's.  Its cycles
are the accelerator's counter for its op type (OP_CYCLES); for a LOAD or STORE the snapshot's
own LOAD and STORE are taken off (their fewest cycles in the cases of other op types; the
JSON records how much those vary).
The instructions of one program run back to back, so the sum is the whole run less instruction
fetch and decode (scripts/accel_model.py measures the whole run).  A snapshot holds the
program's whole buffer, so DeiT-Tiny (460k elements an instruction) takes hours: digits only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from accel_model import prepare  # noqa: E402
from golden.atomic import write_json, write_text  # noqa: E402
from hwgen.accel.interpreter import write_input  # noqa: E402
from hwgen.accel.isa import GEMM_OPS, Opcode  # noqa: E402
from hwgen.generate import generator_hash  # noqa: E402
from sim import accel_run  # noqa: E402

COLUMNS = ("#", "op", "layer", "shape n", "cycles", "GEMM bound", "ratio")
NUMERIC = {"#", "cycles", "GEMM bound", "ratio"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits", choices=["digits"])
    ap.add_argument("--bits", default="w8a8", choices=["w8a8", "w4a8"])
    args = ap.parse_args()
    t0 = time.time()
    q, program, hw, accel, images = prepare(args.model, args.bits, 1)
    image = bytearray(program.image)
    write_input(image, q.quantize_input(images[:1])[0])
    found = accel_run.instruction_cases(program, bytes(image), hw, accel)
    instrs, cases, wants = ([f[i] for f in found] for i in range(3))
    b = accel_run.build(hw, accel)
    results = accel_run.run_cases(b, cases, f"profile_{args.model}_{args.bits}")
    others = [r for ins, r in zip(instrs, results) if ins.op not in (Opcode.LOAD, Opcode.STORE)]
    seen = {op: {r["op_cycles"][int(op)] for r in others} for op in (Opcode.LOAD, Opcode.STORE)}
    snapshot = {op: min(c) for op, c in seen.items()}
    rows, equal = [], 0
    for k, (ins, want, r) in enumerate(zip(instrs, wants, results)):
        ok = bool(r["done"] and r["error"] == 0 and torch.equal(accel_run.elements(r["read"][0]), want))
        equal += ok
        cycles = r["op_cycles"][int(ins.op)] - snapshot.get(ins.op, 0)
        macs = ins.n[0] * ins.n[1] * ins.n[2] * ins.n[3] if ins.op in GEMM_OPS else 0
        bound = -(-macs // (hw.gemm_rows * hw.gemm_cols))
        rows.append({"index": k, "op": ins.op.name, "layer": cases[k].tag[2], "n": list(ins.n), "cycles": cycles,
                     "gemm_bound": bound or None, "ratio": round(cycles / bound, 2) if bound else None,
                     "equals_interpreter": ok})
    total = sum(r["cycles"] for r in rows)
    gemm = [r for r in rows if r["gemm_bound"]]
    out = {"model": args.model, "bits": args.bits, "generator_sha256": generator_hash(),
           "instructions": len(rows), "outputs_equal_interpreter": equal, "cycles_sum": total,
           "gemm_cycles": sum(r["cycles"] for r in gemm), "gemm_bound_cycles": sum(r["gemm_bound"] for r in gemm),
           "snapshot_cycles_taken_off": {op.name: c for op, c in snapshot.items()},
           "snapshot_cycles_spread": {op.name: max(c) - min(c) for op, c in seen.items()},
           "rows": rows, "seconds": round(time.time() - t0, 1)}

    def cells(r):
        return (str(r["index"]), r["op"], r["layer"], "x".join(map(str, r["n"])), f"{r['cycles']:,}",
                f"{r['gemm_bound']:,}" if r["gemm_bound"] else "", f"{r['ratio']}" if r["ratio"] else "")

    from rich.console import Console
    from rich.table import Table
    title = f"{args.model} {args.bits}: cycles per instruction on the RTL accelerator"
    table = Table(title=title)
    for c in COLUMNS:
        table.add_column(c, justify="right" if c in NUMERIC else "left")
    for r in rows:
        table.add_row(*cells(r))
    Console().print(table)
    summary = (f"{equal}/{len(rows)} instruction outputs = interpreter; sum {total:,} cycles; GEMM instructions "
               f"{out['gemm_cycles']:,} cycles against a bound of {out['gemm_bound_cycles']:,} "
               f"({out['gemm_cycles'] / max(1, out['gemm_bound_cycles']):.2f}x)")
    print(summary)
    method = " ".join(__doc__.split("\n\n")[2].split())     # the docstring's paragraph on the method
    base = os.path.join("reports", f"profile_{args.model}_{args.bits}")
    write_json(base + ".json", out)
    write_text(base + ".md", (
        f"# {title}\n\n{method}  GEMM bound: the "
        f"instruction's MACs / ({hw.gemm_rows} x {hw.gemm_cols}).  Command: "
        f"`python scripts/accel_profile.py --model {args.model} --bits {args.bits}`.\n\n{summary}.\n\n"
        f"| {' | '.join(COLUMNS)} |\n| {' | '.join('---:' if c in NUMERIC else '---' for c in COLUMNS)} |\n"
        + "".join(f"| {' | '.join(cells(r))} |\n" for r in rows)))
    return 0 if equal == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
