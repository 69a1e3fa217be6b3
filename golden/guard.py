"""The integer-only guard: proves that no floating-point tensor touches integer inference.

Inside :class:`IntegerOnlyGuard` every torch operation is intercepted (a
``TorchDispatchMode``); any floating-point tensor among its inputs or outputs raises
:class:`FloatInIntegerInference`, except inside :func:`golden.intops.exact_matmul`, which
checks its own exactness bound.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .intops import in_exact_matmul


class FloatInIntegerInference(RuntimeError):
    pass


class IntegerOnlyGuard(TorchDispatchMode):
    """Counts the ops it saw; raises on the first floating-point tensor outside exact_matmul."""

    def __init__(self):
        super().__init__()
        self.ops_seen = 0
        self.exact_matmul_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops_seen += 1
        if in_exact_matmul():
            self.exact_matmul_ops += 1
            return out
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                raise FloatInIntegerInference(f"floating-point tensor ({t.dtype}) in {func} during integer inference")
        return out
