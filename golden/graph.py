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
import tempfile
from dataclasses import dataclass, field

import torch

from .errors import UserError

FORMAT = "iptq-vit-integer-graph/1"
DATA_MOVEMENT_OPS = ("im2col", "concat", "split_heads", "merge_heads", "select_token")
ARITHMETIC_OPS = ("linear", "matmul", "softmax", "gelu", "layernorm", "add")


class GraphFileError(UserError):
    """An artifact file that cannot be read as an integer graph."""


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
    def from_dict(cls, d: dict) -> "IntegerGraph":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise GraphFileError(f"not an integer graph (expected format {FORMAT!r})")
        return cls(ops=[Op(**o) for o in d["ops"]], input=d["input"], output=d["output"],
                   constants=d["constants"], tensors=d["tensors"], meta=d["meta"])

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a temporary file in the same folder, then a rename."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(self.to_dict(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IntegerGraph":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise GraphFileError(f"integer graph file not found: {path}")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise GraphFileError(f"{path} is not a readable integer graph ({type(exc).__name__})") from None
        return cls.from_dict(d)
