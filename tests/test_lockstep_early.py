"""The lockstep engine's layer starts and input banks (hw/lockstep.py), Amaranth simulator.

* A layer's front end starts under the output stages still writing the previous layer's last
  rows: it reads a group once the drain has written it (`avail`), where it used to wait for
  the output stages to empty.
* Layer outputs go top down in their bank (row r at word 2**bank_bits - 1 - r), the input
  bottom up, and the bank's words below every layer's outputs (`images.lockstep.low_words`)
  go back to the loader once layer 0 has read the input, not with the last output word: input
  k + 2 starts loading while inference k's later layers run; the loader waits at low_words
  for the rest until k's last output word.
* Layer 0 reads its input from the first group with a non-zero word to the last.
* With drain_share 2 the output stage holds its second member's word, so the accumulator's
  read port is free every other DRAIN cycle: without the overlap of layer 1 under layer 0's
  DRAIN (which takes those cycles, tests/test_lockstep_bg_drain.py) or in a one-layer
  network, layer 0's DRAIN copies the next inference's biases into its rows that no later
  layer uses, and OUTPUT and PRE0 preload only the others.

Bit-exact against the golden model with stalls on both streams, the counters as one at a time.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from compress.golden import golden, run_layers
from compress.synthetic import random_qnet
from hw.lockstep import LockstepEngine
from images.lockstep import act_bank_bits, build_lockstep, lockstep_cycles, low_words
from tb.pysim import run_engine
from tests.test_hw_engine import _inputs
from tests.test_hw_lockstep import _run_back_to_back


def NoOverlap(img, **kw):
    """The engine without layer 1 under layer 0's DRAIN (tests/test_lockstep_bg_drain.py)."""
    return LockstepEngine(img, overlap=False, **kw)


def one_at_a_time(engine, x):
    """An Amaranth-simulator testbench: the vectors of x into `engine` one at a time, each
    after the previous one's last output word (outputs always taken)."""

    async def bench(ctx):
        ctx.set(engine.o_act.ready, 1)
        for vec in x:
            got = 0
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

    return bench


def _start_under_writes(engine, x):
    """Layer starts (front end `start`, layer > 0) in a cycle where an output stage still
    writes an activation (`d3_valid`) or has one on the way, over a run of x one at a time."""
    c = None
    seen = []

    bench = one_at_a_time(engine, x)

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
def test_bank_refilled_under_the_later_layers(stall):
    # 56 inputs on 4 PEs: 14 words of a 16-word bank; the layers' outputs (4, 3, 2 rows) at
    # its top: the loader may refill words 0..11 after layer 0, 12 and 13 after OUTPUT
    qnet = random_qnet((56, 16, 12, 6), seed=5, density=0.4, shift=[6, 5, 4])
    x = _inputs(7, 56, seed=5)
    x[2] = 0
    img = build_lockstep(qnet, 4)
    assert low_words(img) == 12 and 1 << act_bank_bits(img) == 16
    _, _, lc1 = run_engine(LockstepEngine(img, drain_share=2), x)
    y, cyc, lcs, first_in, last_out = _run_back_to_back(
        LockstepEngine(img, drain_share=2), x, stall_in=stall, stall_out=stall, seed=2)
    np.testing.assert_array_equal(y, golden(qnet, x))
    np.testing.assert_array_equal(lcs, lc1)
    np.testing.assert_array_equal(cyc[1:], np.diff(last_out))
    if stall == 0.0:
        # input k + 2 goes into inference k's bank while k's later layers run
        assert np.any(first_in[2:] < last_out[:-2]), (first_in, last_out)


@pytest.mark.parametrize("sizes,pes,low", [((64, 16, 6), 4, 12), ((8, 20, 3), 2, 6),
                                           ((4, 8, 1), 4, 0)])
def test_input_fills_the_bank_or_layers_reach_the_bottom(sizes, pes, low):
    """An input as wide as the bank (the loader waits at low_words for the rest), a hidden
    layer wider than the input (its outputs over the whole input), a layer whose rows fill
    the bank (nothing refilled early): bit-exact back to back, with output back pressure."""
    qnet = random_qnet(sizes, seed=6, density=0.5, shift=4)
    x = _inputs(5, sizes[0], seed=6)
    img = build_lockstep(qnet, pes)
    assert low_words(img) == low
    y, _, lcs, first_in, last_out = _run_back_to_back(LockstepEngine(img, drain_share=2), x,
                                                       stall_out=0.5, seed=1)
    np.testing.assert_array_equal(y, golden(qnet, x))
    if low == 0:
        assert np.all(first_in[2:] > last_out[:-2])  # the bank is freed by the last word


def test_layer0_biases_go_in_during_its_drain():
    """8 inputs (a short load), l0 of 20 rows a PE, l1 of 3: back to back the interval between
    results is the compute, the output words and a few cycles with drain_share 2 (the next
    inference's l0 biases in rows 3..19 went in during l0's DRAIN); with 1 and 4 (no free read
    cycle) the 17 rows left after OUTPUT still cost their cycles. Bit-exact in all three."""
    qnet = random_qnet((8, 40, 5), seed=3, density=0.5, shift=[6, 4])
    x = _inputs(6, 8, seed=3)
    x[2] = 0
    img = build_lockstep(qnet, 2)
    assert [ll.rows_per_pe for ll in img.layers] == [20, 3]
    gaps = {}
    for share in (1, 2, 4):
        # (layer 1 under layer 0's DRAIN off: it takes the same free read cycles,
        # tests/test_lockstep_bg_drain.py)
        eng = NoOverlap(img, drain_share=share)
        assert eng.early0 == (share == 2) and eng.keep0 == 3
        y, cyc, lcs, _, _ = _run_back_to_back(eng, x)
        np.testing.assert_array_equal(y, golden(qnet, x))
        gaps[share] = cyc[1:] - lcs[1:].sum(axis=1)
    assert np.all(gaps[2] <= 5 + 3), gaps  # 5 output words
    assert np.all(gaps[1] >= 5 + 20 - 5 - 3) and np.all(gaps[4] == gaps[1]), gaps


def test_layer0_reads_from_the_first_to_the_last_non_zero_group():
    """The loader keeps, per bank, the first and last word with a non-zero input, and layer 0's
    front end reads only the groups between (a digit's blank rows cost nothing): one non-zero
    column costs layer 0 the same wherever it is, from group 0 to the last of 8 (it cost a
    cycle more per group before it). Inputs whose ends move from one to the next (a bank's
    values from two inputs ago), an all-zero input and one non-zero last word, back to back
    with stalls and one at a time: bit-exact."""
    qnet = random_qnet((32, 12, 5), seed=8, density=0.9, shift=[6, 4])
    img = build_lockstep(qnet, 4)  # layer 0: 8 groups of 4 columns
    x = np.zeros((8, 32), dtype=np.int16)
    for k, col in enumerate([0, 6, 13, 31]):  # groups 0, 1, 3, 7
        x[k, col] = 100 + k
    x[4, 0] = x[4, 31] = 50
    x[6, 31] = 7
    x[7] = _inputs(1, 32, seed=8)[0]
    y1, _, lc1 = run_engine(LockstepEngine(img, drain_share=2), x)
    np.testing.assert_array_equal(y1, golden(qnet, x))
    for share, stall in ((2, 0.3), (1, 0.0)):
        y, _, _, _, _ = _run_back_to_back(LockstepEngine(img, drain_share=share), x,
                                          stall_in=stall, stall_out=stall, seed=3)
        np.testing.assert_array_equal(y, golden(qnet, x))
    slots = lockstep_cycles(img, [x] + run_layers(qnet, x)[:-1])[:, 0]
    fixed = lc1[:4, 0] - slots[:4]
    assert np.all(fixed == fixed[0]), (lc1[:4, 0], slots[:4])
    assert lc1[5, 0] <= fixed[0] and lc1[6, 0] - slots[6] == fixed[0]
