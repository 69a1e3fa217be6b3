"""The integer graph: ops, integer constants, bit widths, variant choices, and one file.

An :class:`IntegerGraph` is a list of :class:`Op` in execution order over named tensors.
Every op carries integer constants (``consts``, integer tensors) and integer or string
attributes (``attrs``); float scales live only in ``meta`` and ``tensors`` as metadata and
are never read at inference.

Op types (their integer semantics live in :mod:`golden.executor`):

====================  ========================================================================
data movement         ``im2col``, ``concat``, ``split_heads``, ``merge_heads``, ``select_token``
arithmetic            ``linear``, ``matmul``, ``softmax``, ``gelu``, ``layernorm``, ``add``
====================  ========================================================================
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from .schema import SchemaError, check_graph_dict

FORMAT = "iptq-vit-integer-graph/1"
DATA_MOVEMENT_OPS = ("im2col", "concat", "split_heads", "merge_heads", "select_token")
ARITHMETIC_OPS = ("linear", "matmul", "softmax", "gelu", "layernorm", "add")


class GraphFileError(SchemaError):
    """An artifact file that cannot be read as an integer graph (``problems``: one line each)."""


@dataclass
class Op:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    consts: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


@dataclass
class IntegerGraph:
    ops: list[Op]
    input: str
    output: str
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    tensors: dict[str, dict] = field(default_factory=dict)   # name -> bits, signed, scale
    meta: dict = field(default_factory=dict)

    # --- queries --------------------------------------------------------------------
    def op(self, name: str) -> Op:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    def ops_of(self, op_type: str) -> list[Op]:
        return [op for op in self.ops if op.type == op_type]

    def input_spec(self) -> dict:
        return self.tensors[self.input]

    # --- one file ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "ops": [dataclasses.asdict(op) for op in self.ops],
                "input": self.input, "output": self.output, "constants": self.constants,
                "tensors": self.tensors, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "IntegerGraph":
        """Check ``d`` against the graph schema (:func:`golden.schema.check_graph_dict`: every
        problem, one line each), then build the graph."""
        check_graph_dict(d, FORMAT, where, error=GraphFileError)
        return cls(ops=[Op(**o) for o in d["ops"]], input=d["input"], output=d["output"],
                   constants=d["constants"], tensors=d["tensors"], meta=d["meta"])

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a temporary file in the same folder, then a rename."""
        from .atomic import write_file

        d = self.to_dict()
        write_file(path, lambda tmp: torch.save(d, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IntegerGraph":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise GraphFileError(f"integer graph file not found: {path}")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise GraphFileError(f"{path} is not a readable integer graph ({type(exc).__name__})") from None
        return cls.from_dict(d, path)


def gelu_variants(graph) -> tuple[str, ...]:
    """The GELU variants ``graph``'s layers use, sorted (a per-layer plan may mix them; the
    accelerator has one GELU unit per variant)."""
    return tuple(sorted({op.attrs["variant"] for op in graph.ops if op.type == "gelu"}))


def tensor_shapes(graph) -> dict[str, list[int]]:
    """The shape of every tensor of ``graph`` at batch size 1, propagated op by op from the
    input's and the constants' shapes (no data): the plans of the RTL executor and of the
    accelerator's compiler both lay out their buffers from it."""
    spec = graph.meta["spec"]
    shapes: dict[str, list[int]] = {graph.input: [1, spec["in_chans"], spec["img_size"], spec["img_size"]]}
    for name, t in graph.constants.items():
        shapes[name] = list(t.shape)
    for op in graph.ops:
        ins = [shapes[n] for n in op.inputs]
        a = op.attrs
        if op.type == "im2col":
            b, c, h, w = ins[0]
            p = a["patch"]
            outs = [[b, (h // p) * (w // p), c * p * p]]
        elif op.type == "linear":
            outs = [ins[0][:-1] + [op.consts["weight"].shape[0]]]
        elif op.type == "matmul":
            outs = [ins[0][:-1] + [ins[1][-1]]]
        elif op.type == "concat":
            b, n, c = ins[1]
            outs = [[b, n + ins[0][-2], c]]
        elif op.type == "split_heads":
            b, n, c3 = ins[0]
            h = a["heads"]
            d = c3 // (3 * h)
            outs = [[b, h, n, d], [b, h, d, n], [b, h, n, d]]
        elif op.type == "merge_heads":
            b, h, n, d = ins[0]
            outs = [[b, n, h * d]]
        elif op.type == "select_token":
            outs = [[ins[0][0], ins[0][2]]]
        else:                                   # elementwise / row-wise: shape kept
            outs = [list(ins[0])]
        for n, s in zip(op.outputs, outs):
            shapes[n] = s
    return shapes
