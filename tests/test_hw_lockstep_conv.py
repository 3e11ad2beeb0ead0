# amaranth: UnusedElaboratable=no
"""Conv layers on the lockstep engine in the Amaranth simulator against the golden model.

Small random CNNs chosen for the corners: zero padding, stride 2, pooling 2x2 and 1x2, a kernel
larger than the padded map's remainder (rows the pooling drops), maps down to 1x1, more
channels than PEs, an all-pruned output and input channel, an all-zero input map, a conv last
layer, output stages shared by 2 and 4 PEs, queues of 1 and 2, stalls on both streams; the
bypass that replaces the hold with conv layers. The cocotb bench on the generated Verilog is
tests/test_tb_lockstep_conv.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from compress.golden import golden, run_layers
from compress.synthetic import random_cnn
from hw.lockstep import LockstepEngine
from images.lanes import lockstep_cycle_model
from images.lockstep import LockstepParams, build_lockstep, lockstep_cycles
from tb.pysim import run_engine

from .conftest import long_tests
from .test_hw_conv import _inputs, _prune  # the EIE engine's conv cases' helpers


# id, input shape, convs (out_ch, kernel, stride, padding, pool), fc sizes, pes, prune,
# engine kwargs, run kwargs
CASES = [
    ("2pe-pad-pool2-to-1x1", (1, 6, 6), [(3, 3, 1, 1, 2), (4, 3, 1, 0, 1)], [5], 2,
     {"layer": 0, "out_ch": 1}, {}, {}),
    ("4pe-stride2-remainder-share2", (2, 7, 7), [(5, (4, 3), 2, 1, (1, 2)), (6, 2, 1, 0, 1)],
     [3], 4, {"layer": 1, "in_ch": 2}, {"drain_share": 2}, {"stall_in": 0.2, "stall_out": 0.3}),
    ("8pe-groups-conv-last-share4-q2", (1, 7, 7), [(10, 5, 1, 2, 2), (3, 3, 2, 1, 1)], [], 8,
     {"layer": 1, "out_ch": 0}, {"drain_share": 4, "queue_depth": 2}, {}),
    ("1pe-q1-conv-fc-fc", (1, 5, 5), [(3, 2, 1, 1, 2)], [4, 3], 1, {"layer": 0, "out_ch": 2},
     {"queue_depth": 1}, {"stall_out": 0.3}),
]
if long_tests():
    CASES += [
        ("8pe-lenet-like", (1, 16, 16), [(6, 5, 1, 0, 2), (12, 3, 1, 1, 2)], [10], 8,
         {"layer": 1, "out_ch": 5}, {"drain_share": 2}, {}),
        ("1pe-k1-stride2", (3, 4, 4), [(4, 1, 2, 0, 1), (2, 2, 1, 1, 2)], [2], 1, {}, {}, {}),
    ]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_lockstep_conv_bit_exact(case):
    _id, shape, convs, fc, pes, prune, ekw, rkw = case
    qnet = random_cnn(shape, convs, fc, seed=pes, density=0.5, shift=9)
    if prune:
        _prune(qnet, **prune)
    x = _inputs(4, int(np.prod(shape)), seed=pes)
    img = build_lockstep(qnet, pes)
    y, cycles, lcs = run_engine(LockstepEngine(img, **ekw), x, seed=pes, max_cycles=200_000,
                                **rkw)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert np.all(lcs > 0) and np.all(cycles > lcs.sum(axis=1))
    # a layer costs its slots at least (one slot a cycle), and the all-zero map the least
    slots = lockstep_cycles(img, [x] + run_layers(qnet, x)[:-1])
    assert np.all(lcs >= slots)
    assert np.all(lcs[0, 0] < lcs[1:, 0])
    # the cycle model (`images.lanes.lockstep_cycle_model`) within 5 % (or 30 cycles, on the
    # tiniest networks) of the engine where it applies: no stalls, a queue that lets the front
    # end run ahead of the slots
    if not rkw and ekw.get("queue_depth", 8) >= 2:
        model = lockstep_cycle_model(img, x, LockstepParams(**ekw))
        np.testing.assert_allclose(model.sum(axis=1), lcs.sum(axis=1), rtol=0.05, atol=30)


def test_an_all_pruned_channel_comes_out_as_its_bias():
    qnet = _prune(random_cnn((1, 4, 4), [(2, 3, 1, 1, 1)], [], seed=3, density=0.6,
                             shift=0, relu_last=True), layer=0, out_ch=0)
    qnet.layers[0].bias[0] = 7
    x = _inputs(3, 16, seed=3)
    y, _, _ = run_engine(LockstepEngine(build_lockstep(qnet, 2)), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert np.all(y[:, :16] == 7)  # channel 0 of the [2, 4, 4] output map, every position


def _run_watching(eng, x, probes_of, n_out):
    """Outputs of `x` sent one after another, and how many cycles each probe (`probes_of(eng)`
    after elaboration) was high."""
    sim = Simulator(eng)  # elaborates the engine: its probes are this elaboration's
    probes = probes_of(eng)
    out, hits = [], [0] * len(probes)

    async def bench(ctx):
        ctx.set(eng.o_act.ready, 1)
        for v in x:
            for w in v:
                ctx.set(eng.i_act.valid, 1)
                ctx.set(eng.i_act.payload, int(w))
                await ctx.tick()
            ctx.set(eng.i_act.valid, 0)
            got = 0
            while got < n_out:
                sampled = await ctx.tick().sample(eng.o_act.valid, eng.o_act.payload, *probes)
                vld, pl, flags = sampled[2], sampled[3], sampled[4:]
                for j, f in enumerate(flags):
                    hits[j] += int(f)
                if vld:
                    out.append(pl)
                    got += 1

    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(out).reshape(len(x), n_out), hits


def test_the_bypass_is_exercised():
    """One output channel: the columns of a sub-position write the same accumulator row one
    after another, so a column's first slot needs the sum its predecessor has not yet written
    (the bypass, `fwd`); the results are right only through it, and no cycle is held."""
    qnet = random_cnn((1, 6, 6), [(1, 3, 1, 1, 2)], [], seed=1, density=1.0, shift=9,
                      relu_last=True)
    x = _inputs(3, 36, seed=1)
    eng = LockstepEngine(build_lockstep(qnet, 1))
    y, (fwd, hold) = _run_watching(eng, x, lambda e: [e.bypass_flags[0], e.hold_flag], 9)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert fwd > 20 and hold == 0


@pytest.mark.parametrize("share", [1, 2])
def test_back_to_back_conv_inputs(share):
    """Inputs sent without waiting for the results: the next loads into the other bank while
    the current one computes its passes."""
    qnet = random_cnn((2, 6, 6), [(5, 3, 1, 1, 2)], [4], seed=5, density=0.5, shift=9)
    x = _inputs(4, 72, seed=5)
    eng = LockstepEngine(build_lockstep(qnet, 2), drain_share=share)
    out = []

    async def bench(ctx):
        words = [int(w) for v in x for w in v]
        i = 0
        ctx.set(eng.o_act.ready, 1)
        for _ in range(40_000):
            if i < len(words):
                ctx.set(eng.i_act.valid, 1)
                ctx.set(eng.i_act.payload, words[i])
            else:
                ctx.set(eng.i_act.valid, 0)
            _, _, rdy, vld, pl = await ctx.tick().sample(eng.i_act.ready, eng.o_act.valid,
                                                         eng.o_act.payload)
            if i < len(words) and rdy:
                i += 1
            if vld:
                out.append(pl)
            if len(out) == x.shape[0] * 4:
                break

    sim = Simulator(eng)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    np.testing.assert_array_equal(np.array(out).reshape(-1, 4), golden(qnet, x))


def test_an_all_zero_intermediate_map():
    """conv1's biases so negative that its ReLU output is all zero for every input: conv2 walks
    an all-zero map (nothing sent, its outputs its biases), then the fc layer."""
    qnet = random_cnn((1, 6, 6), [(3, 3, 1, 1, 2), (4, 2, 1, 0, 1)], [3], seed=7, density=0.5,
                      shift=9)
    qnet.layers[0].bias[:] = -(1 << 30)
    x = _inputs(3, 36, seed=7)
    y, _, lcs = run_engine(LockstepEngine(build_lockstep(qnet, 2)), x)
    assert not np.any(run_layers(qnet, x)[0])
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert len(set(lcs[:, 1].tolist())) == 1  # conv2's work does not depend on the digit
