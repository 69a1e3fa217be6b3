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


class HostArithmetic(RuntimeError):
    pass


# aten ops that only move, copy, reinterpret or create data (no value is computed from another):
# views and reshapes, transposes and flips, slicing and concatenation, padding with a constant,
# dtype casts (a lane's bits into a wider or narrower slot) and constant fills.
DATA_MOVEMENT_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "view_as", "permute", "transpose", "t", "expand", "flip",
    "squeeze", "unsqueeze", "select", "slice", "narrow", "unbind", "split", "split_with_sizes",
    "cat", "stack", "constant_pad_nd", "clone", "contiguous", "copy_", "_to_copy", "alias", "detach",
    "lift_fresh", "empty", "empty_like", "new_empty", "zeros", "zeros_like", "new_zeros", "full", "full_like",
    "new_full", "fill_", "fill", "_reshape_alias", "as_strided", "index", "unfold",
})


class DataMovementGuard(TorchDispatchMode):
    """Raises :class:`HostArithmetic` on the first torch operation that is not data movement
    (:data:`DATA_MOVEMENT_OPS`), or that touches a floating-point tensor; counts the ops seen.

    The RTL executor's host (:func:`sim.rtl_executor.run_rtl`) writes the accelerator's input
    images under it: every add, multiply, shift, compare or divide of an inference must happen
    in the simulated hardware."""

    def __init__(self):
        super().__init__()
        self.ops_seen = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in DATA_MOVEMENT_OPS:
            raise HostArithmetic(f"the RTL host computed with {func} (not data movement)")
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                raise HostArithmetic(f"floating-point tensor ({t.dtype}) in {func} in the RTL host")
        self.ops_seen += 1
        return out
