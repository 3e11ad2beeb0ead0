"""The lockstep engine's layer starts and input banks (hw/lockstep.py), Amaranth simulator.

* A layer's front end starts under the output stages still writing the previous layer's last
  rows: it reads a group once the drain has written it (`avail`), where it used to wait for
  the output stages to empty.
* The last layer's outputs go after the input's words in their bank (`images.lockstep.out_base`)
  and the bank is freed for the loader once the last layer has read its inputs, not with the
  last output word: input k + 2 starts loading before inference k's last output word.

Bit-exact against the golden model with stalls on both streams, the counters as one at a time.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from compress.golden import golden
from compress.synthetic import random_qnet
from hw.lockstep import LockstepEngine
from images.lockstep import act_bank_bits, build_lockstep, out_base
from tb.pysim import run_engine
from tests.test_hw_engine import _inputs
from tests.test_hw_lockstep import _run_back_to_back


def _start_under_writes(engine, x):
    """Layer starts (front end `start`, layer > 0) in a cycle where an output stage still
    writes an activation (`d3_valid`) or has one on the way, over a run of x one at a time."""
    c = None
    seen = []

    async def bench(ctx):
        for vec in x:
            got = 0
            ctx.set(engine.o_act.ready, 1)
            for w in (int(v) for v in vec):
                ctx.set(engine.i_act.valid, 1)
                ctx.set(engine.i_act.payload, w)
                while True:
                    _, _, rdy, ov = await ctx.tick().sample(engine.i_act.ready,
                                                            engine.o_act.valid)
                    got += ov
                    if rdy:
                        break
            ctx.set(engine.i_act.valid, 0)
            while got < engine.out_features:
                _, _, ov = await ctx.tick().sample(engine.o_act.valid)
                got += ov
            await ctx.tick()

    async def probe(ctx):
        nonlocal c
        c = engine.probe
        async for _, _, start, layer, busy in ctx.tick().sample(
                c.fe.start, c.layer, c.y_valid | c.d2_valid | c.d3_valid):
            if start and layer > 0:
                seen.append(bool(busy))

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_process(probe)
    sim.run_until(1e-8 * 20_000)
    return seen


@pytest.mark.parametrize("share", [1, 2, 4])
def test_front_end_starts_under_the_last_writes(share):
    qnet = random_qnet((40, 12, 10, 5), seed=share, density=0.4, shift=[6, 5, 4])
    x = _inputs(4, 40, seed=share)
    x[1] = 0
    img = build_lockstep(qnet, 4)
    y, _, _ = run_engine(LockstepEngine(img, drain_share=share), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    starts = _start_under_writes(LockstepEngine(img, drain_share=share), x)
    assert len(starts) == 4 * 2  # every later layer of every input started
    assert any(starts), starts  # some start under the previous layer's output stages


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_bank_refilled_before_the_last_output_word(stall):
    # 56 inputs on 4 PEs: 14 words a bank of 16, the 2 output rows after them
    qnet = random_qnet((56, 16, 12, 6), seed=5, density=0.4, shift=[6, 5, 4])
    x = _inputs(7, 56, seed=5)
    x[2] = 0
    img = build_lockstep(qnet, 4)
    assert out_base(img) == 14 and 1 << act_bank_bits(img) == 16
    _, _, lc1 = run_engine(LockstepEngine(img, drain_share=2), x)
    y, cyc, lcs, first_in, last_out = _run_back_to_back(
        LockstepEngine(img, drain_share=2), x, stall_in=stall, stall_out=stall, seed=2)
    np.testing.assert_array_equal(y, golden(qnet, x))
    np.testing.assert_array_equal(lcs, lc1)
    np.testing.assert_array_equal(cyc[1:], np.diff(last_out))
    if stall == 0.0:
        # input k + 2 goes into inference k's bank while k's outputs are still going out
        assert np.any(first_in[2:] < last_out[:-2]), (first_in, last_out)


def test_outputs_at_word_0_when_they_do_not_fit_after_the_input():
    # 64 inputs on 4 PEs fill a bank of 16 words: the outputs overwrite the input (word 0)
    qnet = random_qnet((64, 16, 6), seed=6, density=0.4, shift=[6, 4])
    x = _inputs(5, 64, seed=6)
    img = build_lockstep(qnet, 4)
    assert out_base(img) == 0
    y, _, lcs, first_in, last_out = _run_back_to_back(LockstepEngine(img, drain_share=2), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert np.all(first_in[2:] > last_out[:-2])  # the bank is freed by the last output word
