"""The integer primitives against Python's own big-integer arithmetic."""
import math
import random
from fractions import Fraction

import pytest
import torch

from golden.intops import div_round, exact_matmul, in_exact_matmul, isqrt, requant, rshift_round


def test_rshift_round_matches_definition():
    rng = random.Random(1)
    vals = [rng.randint(-2**40, 2**40) for _ in range(2000)] + [0, -1, 1, -2**40, 2**40]
    t = torch.tensor(vals)
    for e in (0, 1, 2, 7, 15, 31):
        want = [v if e == 0 else (v + (1 << (e - 1))) >> e for v in vals]
        assert rshift_round(t, e).tolist() == want


def test_rshift_round_per_channel_shift():
    v = torch.tensor([[5, -5, 1000, -7]])
    e = torch.tensor([0, 1, 3, 2])
    assert rshift_round(v, e).tolist() == [[5, (-5 + 1) >> 1, (1000 + 4) >> 3, (-7 + 2) >> 2]]


def test_requant_saturates_never_wraps():
    acc = torch.tensor([2**30, -2**30, 100])
    assert requant(acc, 3, 2, -128, 127).tolist() == [127, -128, 75]


def test_div_round_is_round_half_up():
    rng = random.Random(2)
    for _ in range(500):
        a, b = rng.randint(-10**9, 10**9), rng.randint(1, 1000)
        assert int(div_round(torch.tensor(a), b)) == math.floor(Fraction(a, b) + Fraction(1, 2))


def test_isqrt_exact_on_random_and_edges():
    rng = random.Random(3)
    vals = [0, 1, 2, 3, 4, 15, 16, 17, 2**62 - 1, 2**44, 2**44 - 1] + [rng.randint(0, 2**62 - 1) for _ in range(3000)]
    vals += [k * k for k in (rng.randint(0, 2**31) for _ in range(200))] + [k * k - 1 for k in range(1, 200)]
    got = isqrt(torch.tensor(vals)).tolist()
    assert got == [math.isqrt(v) for v in vals]


def test_isqrt_refuses_negative():
    with pytest.raises(ValueError):
        isqrt(torch.tensor([-1]))


@pytest.mark.parametrize("a_max,b_max,k", [(128, 128, 64), (128, 128, 3072), (2**20, 2**20, 64)])
def test_exact_matmul_equals_int64(a_max, b_max, k):
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-a_max, a_max, (5, 7, k), generator=g)
    b = torch.randint(-b_max, b_max, (k, 9), generator=g)
    a[0, 0, :] = -a_max
    b[:, 0] = -b_max
    assert torch.equal(exact_matmul(a, b, a_max, b_max), a @ b)
    assert not in_exact_matmul()


def test_exact_matmul_refuses_float():
    with pytest.raises(TypeError):
        exact_matmul(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.int64), 1, 1)
