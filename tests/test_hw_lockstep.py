# amaranth: UnusedElaboratable=no
"""The lockstep engine (hw/lockstep.py) and its image (images/lockstep.py).

Image: exact round trip, padding, slot counts, balance. Engine: the Amaranth simulator against
the golden model over the corners (fillers, empty columns, rows fewer than PEs, wrap,
saturation, shift 0 and 62, stalls); the cocotb bench on the Verilog is tests/test_tb_engine.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden, run_layers
from images.placement import place_longest_first
from images.lockstep import (build_lockstep, decode_lockstep, low_words,
                               lockstep_cycles)
from images.eie import encode_csc
from compress.synthetic import random_qnet
from hw import EngineConfigError
from hw.lockstep import LockstepEngine
from tb.pysim import run_engine
from tests.test_hw_engine import _inputs


@pytest.mark.parametrize("pes", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("placement", ["interleave", "lpt", "search"])
def test_image_round_trip(pes, placement):
    qnet = random_qnet((40, 37, 21, 5), seed=pes, density=[0.05, 0.4, 1.0], shift=[3, 0, 9])
    img = build_lockstep(qnet, pes, placement=placement)
    assert decode_lockstep(img).equals(qnet)
    assert img.slots.shape == (img.num_slots, pes)
    # every column has exactly max-over-PEs slots of its per-PE entry count
    for i, ll in enumerate(img.layers):
        lc = np.diff(img.col_ptr[ll.col_base: ll.col_base + ll.in_features + 1])
        assert lc.min() >= 0
    assert np.all(np.diff(img.col_ptr) >= 0) and img.col_ptr[-1] == img.num_slots
    if placement == "interleave":
        assert all(np.array_equal(ll.perm, np.arange(ll.out_features)) for ll in img.layers)
    assert np.array_equal(img.layers[-1].perm, np.arange(img.layers[-1].out_features))


def test_image_slots_are_the_per_column_maximum():
    qnet = random_qnet((30, 50), seed=3, density=0.2)
    img = build_lockstep(qnet, 4, placement="interleave")
    idx = qnet.layers[0].index
    counts = np.stack([np.diff(encode_csc(idx[k::4], rel_bits=4)[2]) for k in range(4)])
    assert np.array_equal(np.diff(img.col_ptr), counts.max(axis=0))
    # padding is (v = 0, z = 0) after the PE's own entries, or one (0, 0) before them where
    # the PE has two or more padding slots and its first entry is a weight on a row >= 1 (the
    # first entry's z one less)
    s = img.slots
    leads = 0
    for c in range(30):
        a, b = img.col_ptr[c], img.col_ptr[c + 1]
        for k in range(4):
            v, z, p = encode_csc(idx[k::4], rel_bits=4)
            want = (v[p[c]: p[c + 1]].astype(np.int64) | (z[p[c]: p[c + 1]].astype(np.int64) << 4))
            n = counts[k, c]
            lead = n >= 1 and n + 2 <= b - a and v[p[c]] != 0 and z[p[c]] >= 1
            if lead:
                want = want.copy()
                want[0] -= 1 << 4
                leads += 1
            got = s[a: b, k].astype(np.int64)
            assert np.array_equal(got[int(lead): int(lead) + n], want), (c, k)
            assert np.all(got[:int(lead)] == 0) and np.all(got[int(lead) + n:] == 0)
    assert leads > 0


def test_place_longest_first_evens_out_work():
    w = np.array([50, 49, 48, 47, 1, 1, 1, 1])  # interleaving over 2 PEs: 148 vs 50
    perm = place_longest_first(w, 2)
    assert sorted(perm.tolist()) == list(range(8))
    loads = [w[perm[k::2]].sum() for k in range(2)]
    assert max(loads) - min(loads) <= 2
    assert np.array_equal(place_longest_first(w, 2), perm)  # deterministic


def test_image_refuses_bad_placement():
    from compress.errors import InputError

    qnet = random_qnet((8, 6, 3), seed=0)
    with pytest.raises(InputError, match="placement"):
        build_lockstep(qnet, 2, placement="random")
    with pytest.raises(InputError, match="permutations"):
        build_lockstep(qnet, 2, perms=[np.zeros(6, dtype=np.int64)])
    perm = np.arange(6)[::-1]
    img = build_lockstep(qnet, 2, perms=[perm])
    assert np.array_equal(img.layers[0].perm, perm) and decode_lockstep(img).equals(qnet)


def test_cycle_model_counts_active_columns():
    qnet = random_qnet((20, 9, 4), seed=1, density=0.5)
    img = build_lockstep(qnet, 3)
    x = _inputs(4, 20, seed=1)
    acts = [x] + run_layers(qnet, x)[:-1]
    cyc = lockstep_cycles(img, acts)
    assert cyc.shape == (4, 2) and cyc[0, 0] == 0  # all-zero input: no work in layer 0


CASES = [
    # id, sizes, pes, density, qnet kwargs, engine kwargs, stall
    ("1pe-1layer", (9, 5), 1, 0.5, {}, {}, 0.0),
    ("3pe-2layers-stalls", (20, 13, 7), 3, 0.3, {"shift": 8}, {}, 0.4),
    ("4pe-gaps-fillers", (12, 70, 6), 4, 0.04, {"shift": [9, 0]}, {}, 0.0),
    ("16pe-rows-fewer-than-pes", (30, 9, 17, 4), 16, 0.4, {"shift": [8, 0, 40]},
     {"queue_depth": 1, "drain_share": 4}, 0.0),
    ("8pe-dense-weights-share8", (15, 11, 6), 8, 1.0, {"shift": 6}, {"drain_share": 8}, 0.2),
    ("3pe-share2-uneven-groups", (14, 11, 5), 3, 0.5, {"shift": 7}, {"drain_share": 2}, 0.1),
    ("5pe-wrap-saturation", (18, 10, 10, 7, 5), 5, 0.6,
     {"weight_scale": 32767, "bias_scale": 1 << 30, "shift": [0, 3, 62, 0]},
     {"acc_bits": 20}, 0.0),
    ("2pe-acc40", (18, 10, 5), 2, 0.6,
     {"weight_scale": 32767, "bias_scale": 1 << 30, "shift": [20, 1]}, {"acc_bits": 40}, 0.0),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_lockstep_engine_bit_exact(case):
    _id, sizes, pes, density, qkw, ekw, stall = case
    qnet = random_qnet(sizes, seed=pes, density=density, **qkw)
    x = _inputs(6, sizes[0], seed=pes)
    acc_bits = ekw.get("acc_bits", 32)
    img = build_lockstep(qnet, pes)
    y, cycles, lcs = run_engine(LockstepEngine(img, **ekw), x, stall_in=stall,
                                stall_out=stall, seed=pes)
    np.testing.assert_array_equal(y, golden(qnet, x, acc_bits=acc_bits))
    assert np.all(cycles > lcs.sum(axis=1)) and np.all(lcs > 0)
    # compute never beats the slot count of the active columns
    acts = [x] + run_layers(qnet, x, acc_bits=acc_bits)[:-1]
    assert np.all(lcs >= lockstep_cycles(img, acts))


def test_lockstep_refuses_what_does_not_fit():
    qnet = random_qnet((8, 6, 3), seed=0)
    img = build_lockstep(qnet, 2)
    with pytest.raises(EngineConfigError, match="acc_bits"):
        LockstepEngine(img, acc_bits=16)
    with pytest.raises(EngineConfigError, match=r"l0: 8 inputs exceed"):
        LockstepEngine(img, max_width=7)
    with pytest.raises(EngineConfigError, match="queue_depth"):
        LockstepEngine(img, queue_depth=0)
    with pytest.raises(EngineConfigError, match="drain_share"):
        LockstepEngine(img, drain_share=3)


def _run_back_to_back(engine, x, *, stall_in=0.0, stall_out=0.0, seed=0, max_cycles=200_000):
    """Inputs pushed as soon as i_act is ready, outputs taken concurrently (two testbenches).

    Returns outputs, the latched counters read after each inference's last output word, the
    cycle of every input's first word accepted and of every last output word, and the cycles
    from the first input word to the last output word of the stream (inclusive)."""
    import random

    from amaranth.sim import Simulator

    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)
    n_out, L = engine.out_features, engine.num_layers
    ys = np.zeros((len(x), n_out), np.int16)
    cycles = np.zeros(len(x), np.int64)
    lcs = np.zeros((len(x), L), np.int64)
    first_in, last_out = [], []
    clock = [0, 0]  # ticks seen by the driver, by the monitor (both tick once per step)

    async def driver(ctx):
        for vec in x:
            for i, w in enumerate(int(v) for v in vec):
                while True:
                    present = stall_in == 0 or rng_in.random() >= stall_in
                    ctx.set(engine.i_act.valid, int(present))
                    ctx.set(engine.i_act.payload, w)
                    _, _, rdy = await ctx.tick().sample(engine.i_act.ready)
                    clock[0] += 1
                    if present and rdy:
                        if i == 0:
                            first_in.append(clock[0])
                        break
                    assert clock[0] < max_cycles, "input not taken"
        ctx.set(engine.i_act.valid, 0)

    async def monitor(ctx):
        for n in range(len(x)):
            got = []
            while len(got) < n_out:
                ready = int(stall_out == 0 or rng_out.random() >= stall_out)
                ctx.set(engine.o_act.ready, ready)
                _, _, vld, pl = await ctx.tick().sample(engine.o_act.valid, engine.o_act.payload)
                clock[1] += 1
                if ready and vld:
                    got.append(pl)
                assert clock[1] < max_cycles, f"vector {n}: no result"
            last_out.append(clock[1])
            ctx.set(engine.o_act.ready, 0)
            await ctx.tick()  # the counters are latched with the last word
            clock[1] += 1
            ys[n] = got
            cycles[n] = ctx.get(engine.cycles)
            lcs[n] = [ctx.get(engine.layer_cycles[i]) for i in range(L)]
        await ctx.tick()
        assert not ctx.get(engine.busy)

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(monitor)
    sim.run()
    return ys, cycles, lcs, np.array(first_in), np.array(last_out)


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_lockstep_inputs_back_to_back(stall):
    """The next input loads while the current one computes: bit-exact, the counters of each
    inference latched (equal to a one-at-a-time run's layer counts), the stream's cycles add
    up, and with free-flowing streams an inference costs less than its input load + compute."""
    qnet = random_qnet((40, 23, 9, 5), seed=7, density=0.3, shift=[7, 5, 3])
    x = _inputs(6, 40, seed=7)
    img = build_lockstep(qnet, 4)
    eng_kw = {"drain_share": 2}
    y1, cyc1, lc1 = run_engine(LockstepEngine(img, **eng_kw), x)
    y, cyc, lcs, first_in, last_out = _run_back_to_back(
        LockstepEngine(img, **eng_kw), x, stall_in=stall, stall_out=stall, seed=3)
    np.testing.assert_array_equal(y, golden(qnet, x))
    np.testing.assert_array_equal(y1, y)
    np.testing.assert_array_equal(lcs, lc1)  # per inference, latched
    # inference k + 1's input starts before k's last output word: the loads overlap
    assert np.all(first_in[1:] < last_out[:-1])
    # cycles: k's first input word (or k - 1's last output + 1) -> k's last output word
    assert cyc[0] == last_out[0] - first_in[0] + 1
    np.testing.assert_array_equal(cyc[1:], np.diff(last_out))
    if stall == 0.0:
        # back to back an inference costs its compute, not compute + the input's 40 words
        assert np.all(cyc[1:] < cyc1[1:]) and cyc[1:].sum() < (cyc1[1:] - 40 + 50).sum()


@pytest.mark.parametrize("share", [2, 4])
def test_lockstep_loads_during_the_drain(share):
    """With drain_share > 1 the drain writes one member of each output stage's group a cycle,
    and the loader takes the other PEs' write ports meanwhile: an input-bound stream (192
    input words, most of them zero, so the compute is shorter than the load) gets a result
    every 192 cycles and a few, not 192 + the drain's cycles (rows x share per layer, 20-40
    here). Bit-exact, the counters as one at a time."""
    n_in = 192
    qnet = random_qnet((n_in, 16, 4), seed=13, density=0.2, shift=[7, 4])
    x = _inputs(5, n_in, seed=13)
    x[:, np.random.default_rng(13).random(n_in) < 0.85] = 0
    img = build_lockstep(qnet, 2)
    _, _, lc1 = run_engine(LockstepEngine(img, drain_share=share), x)
    y, cyc, lcs, _, _ = _run_back_to_back(LockstepEngine(img, drain_share=share), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    np.testing.assert_array_equal(lcs, lc1)
    drain = sum(ll.rows_per_pe for ll in img.layers) * share
    assert np.all(lc1.sum(axis=1) < n_in) and drain >= 20  # the load binds; long drains
    # (each interval is the load and the difference of two computes, which the mean over a
    # span divides by its length; input 0 is all zeros, a few cycles of compute since layer 0
    # skips the all-zero groups: result 1 waits for input 1's whole load)
    assert n_in - 6 <= cyc[2:].mean() <= n_in + 6, cyc


def test_lockstep_one_at_a_time_counters_hold():
    """One input at a time: cycles = first input word -> last output word, busy low after."""
    qnet = random_qnet((12, 8, 3), seed=2, density=0.5)
    x = _inputs(3, 12, seed=2)
    y, cyc, lcs = run_engine(LockstepEngine(build_lockstep(qnet, 2)), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    # at least the 12 input words, the compute and the 3 outputs
    assert np.all(cyc >= 12 + lcs.sum(axis=1) + 3 - 1)


def test_lockstep_output_back_pressure_while_next_loads():
    """o_act held back (ready 1 cycle in 10) while the next inputs arrive at full speed: input
    k + 1 fills the free bank, input k + 2 waits for k's bank, whose words below the layers'
    outputs (`low_words`) are the loader's once layer 0 has read the input, the rest with
    k's last output word: under the back pressure k + 2 starts loading while k's outputs go
    out. Results stay bit-exact and the counters per inference."""
    qnet = random_qnet((24, 13, 6), seed=5, density=0.5, shift=[6, 4])
    x = _inputs(5, 24, seed=5)
    img = build_lockstep(qnet, 2)
    _, _, lc1 = run_engine(LockstepEngine(img), x)
    y, cyc, lcs, first_in, last_out = _run_back_to_back(LockstepEngine(img), x, stall_out=0.9,
                                                       seed=9)
    np.testing.assert_array_equal(y, golden(qnet, x))
    np.testing.assert_array_equal(lcs, lc1)
    assert np.all(first_in[1:] < last_out[:-1])  # k + 1 loads during k
    assert low_words(img) == 9  # 24 inputs on 2 PEs: 12 words of 16, the 7 rows of l0 on top
    assert np.all(first_in[2:] < last_out[:-2])  # k + 2 starts loading during k
    np.testing.assert_array_equal(cyc[1:], np.diff(last_out))
