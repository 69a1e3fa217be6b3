"""The address generator's queue on its own (Amaranth's simulator): every point of random
loop nests, in order, with its level ends, final flag and indices, under random pops (the
consumer's ``next``), and a load in the middle of a walk starting the new walk cleanly.  The
accelerator's tests cover it only through whole programs."""

from __future__ import annotations

import itertools
import random

from amaranth.sim import Simulator

from hwgen.accel.addrgen import AddrGen
from hwgen.accel.isa import LEVELS


def _points(n, base, strides):
    """The nest's points in walk order: (addr, last per level, final, indices)."""
    out = []
    for idx in itertools.product(*[range(c) for c in n]):
        last = tuple(int(i == c - 1) for i, c in zip(idx, n))
        out.append((base + sum(i * s for i, s in zip(idx, strides)), last, int(all(last)), idx))
    return out


def _walks(seed, count):
    rng = random.Random(seed)
    walks = []
    for _ in range(count):
        n = [rng.choice([1, 1, 2, 3, 4]) for _ in range(LEVELS)]
        strides = [rng.randint(-300, 300) for _ in range(LEVELS)]
        walks.append((n, rng.randint(0, 5000), strides))
    return walks


async def _load(ctx, dut, n, base, strides):
    """Load a walk (one cycle of ``load``)."""
    ctx.set(dut.base, base)
    for d in range(LEVELS):
        ctx.set(dut.n[d], n[d])
        ctx.set(dut.strides[d], strides[d])
    ctx.set(dut.load, 1)
    await ctx.tick()
    ctx.set(dut.load, 0)


def test_points_in_order_under_random_pops():
    dut = AddrGen(with_index=True)
    walks = _walks(1, 25)
    rng = random.Random(2)
    bad, seen = [], 0

    async def bench(ctx):
        nonlocal seen
        for k, (n, base, strides) in enumerate(walks):
            want = _points(n, base, strides)
            await _load(ctx, dut, n, base, strides)
            if k % 5 == 4:      # a walk abandoned after a few pops: the next load restarts cleanly
                want = want[:2]
            got = []
            for _ in range(20 * len(want) + 20):
                if len(got) == len(want):
                    break
                pop = rng.random() < 0.6
                ctx.set(dut.next, pop)
                if pop and ctx.get(dut.valid):
                    got.append((ctx.get(dut.addr), tuple(ctx.get(dut.last[d]) for d in range(LEVELS)),
                                ctx.get(dut.final), tuple(ctx.get(dut.index[d]) for d in range(LEVELS))))
                await ctx.tick()
            ctx.set(dut.next, 0)
            seen += len(got)
            if got != want and len(bad) < 3:
                bad.append((n, base, strides, got[:4], want[:4]))
            if k % 5 != 4:
                assert not ctx.get(dut.valid) and not ctx.get(dut.busy), f"walk {k} left points over"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, f"first mismatches (n, base, strides, got, want): {bad}"
    assert seen == sum(len(_points(*w)) if k % 5 != 4 else 2 for k, w in enumerate(walks))


def test_one_point_a_cycle_when_popped_every_cycle():
    """Popped whenever valid, the queue gives a point every cycle after the first (the walk
    refills the entry popped in the same cycle)."""
    dut = AddrGen(with_index=False)
    n, base, strides = [1, 1, 2, 3, 5], 7, [0, 0, 100, 10, 1]
    want = [p[0] for p in _points(n, base, strides)]
    got, cycles = [], []

    async def bench(ctx):
        await _load(ctx, dut, n, base, strides)
        ctx.set(dut.next, 1)
        for c in range(len(want) + 10):
            if ctx.get(dut.valid):
                got.append(ctx.get(dut.addr))
                cycles.append(c)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
    assert cycles == list(range(cycles[0], cycles[0] + len(want))), "a gap between points"
