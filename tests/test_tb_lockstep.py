"""The lockstep engine's generated Verilog in cocotb + Icarus, bit-exact against the golden model.

Same bench as tests/test_tb_engine.py (tb.sim with a lockstep image): PEs 1..16 (of 1..MAX_PES),
1 to 3 layers, weight densities 0.03 to 1, gaps of 16 and more (fillers), rows fewer than PEs,
accumulator wrap and saturation, random stalls on both streams, a reset in the middle of an
inference, and the shipped LeNet-300-100 with the board's 8 PEs on real digits.
"""

from __future__ import annotations


import numpy as np
import pytest

from compress.golden import golden, mnist_to_input, run_layers
from compress.qnet import load_qnet
from compress.shipped import SAMPLE_DIGITS, SHIPPED_QNET
from compress.synthetic import random_qnet
from images import build_image
from images.lockstep import build_lockstep, lockstep_cycles
from images import get
from images.lockstep import LockstepParams
from tb.sim import build, simulate
from tests.test_tb_engine import _inputs


# id, sizes, pes, weight density, qnet kwargs, rom kwargs, engine params, run kwargs, vectors
CASES = [
    ("1pe-stalls", (24, 10), 1, 0.5, {"shift": 6}, {}, {},
     {"stall_in": 0.3, "stall_out": 0.3}, 30),
    ("2pe-gaps-16-and-more", (16, 90, 8), 2, 0.03, {"shift": [9, 2]}, {}, {}, {}, 40),
    ("3pe-dense-weights-3layers-reset-mid", (20, 14, 9, 6), 3, 1.0, {"shift": [10, 10, 4]},
     {}, {"queue_depth": 1}, {"reset_mid": True, "stall_out": 0.3}, 30),
    ("8pe-rows-fewer-than-pes-saturate", (40, 6, 3), 8, 0.6,
     {"weight_scale": 32767, "shift": [0, 0]}, {}, {"queue_depth": 2, "drain_share": 8}, {}, 30),
    ("16pe-acc-wrap-rel2", (48, 33, 20), 16, 0.3,
     {"weight_scale": 32767, "bias_scale": 1 << 30, "shift": [3, 62]}, {"rel_bits": 2},
     {"acc_bits": 20}, {"stall_in": 0.1, "stall_out": 0.1}, 30),
    # the board's drain_share 2: layer 0's next biases during its DRAIN (8 rows, later layers
    # 2), a reset in the middle of an inference (its rows are then preloaded in full again)
    ("4pe-share2-l0-biases-in-drain-reset-mid", (40, 30, 6), 4, 0.4, {"shift": [6, 4]}, {},
     {"queue_depth": 2, "drain_share": 2}, {"reset_mid": True, "stall_out": 0.3}, 20),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_lockstep_bit_exact_cocotb(case):
    _id, sizes, pes, density, qkw, rkw, pkw, runkw, n = case
    seed = pes + len(sizes)
    qnet = random_qnet(sizes, seed=seed, density=density, **qkw)
    x = _inputs(n, sizes[0], seed)
    params = get("lockstep").params_for(**pkw)  # the RTL benches' defaults (queue 8)
    b = build(build_image(qnet, "lockstep", pes, **rkw), params)
    r = simulate(b, x, seed=seed, **runkw)
    want = golden(qnet, x, acc_bits=params.acc_bits)
    bad = np.flatnonzero(np.any(r.outputs != want, axis=1))
    assert len(bad) == 0, f"{len(bad)}/{n} vectors differ, first {bad[:5]}"
    assert np.all(r.cycles >= r.layer_cycles.sum(axis=1) + sizes[0] + sizes[-1] - 1)


def test_lockstep_shipped_model_8_pes():
    """The board's configuration: LeNet-300-100, 8 PEs, real digits; cycles vs the slot model."""
    qnet = load_qnet(SHIPPED_QNET)
    d = np.load(SAMPLE_DIGITS, allow_pickle=False)
    x = mnist_to_input(d["images"][:4], qnet.input_frac)
    img = build_lockstep(qnet, 8)
    r = simulate(build(img, LockstepParams(queue_depth=2, drain_share=4)), x)
    np.testing.assert_array_equal(r.outputs, golden(qnet, x))
    slots = lockstep_cycles(img, [x] + run_layers(qnet, x)[:-1])
    # every layer costs its slots plus a bounded overhead (preload, pipeline, drain)
    over = r.layer_cycles - slots
    assert np.all(over >= 0) and np.all(over <= 38 + 4 * 38 + 40), over


def test_lockstep_shipped_model_back_to_back_board_params():
    """The board's parameters, inputs back to back: bit-exact, and the interval between results
    is the compute plus layer 0's start and the output words (the drain starts with the last
    write, PRELOAD with the last drained word, layer 0's biases go in during OUTPUT, and a
    column of one slot a cycle comes through the pointer stage): 1,272 cycles before that."""
    qnet = load_qnet(SHIPPED_QNET)
    d = np.load(SAMPLE_DIGITS, allow_pickle=False)
    x = mnist_to_input(d["images"][:4], qnet.input_frac)
    img = build_lockstep(qnet, 8)
    r = simulate(build(img, LockstepParams(queue_depth=2, drain_share=4)), x, back_to_back=True)
    np.testing.assert_array_equal(r.outputs, golden(qnet, x))
    gap = r.cycles[1:] - r.layer_cycles[1:].sum(axis=1)
    # the output words, the rest of layer 0's biases (38 rows, 12 of them during OUTPUT) and
    # the uncounted first cycle of layer 0: 39 (56.6 before the overlaps). Digit 3 waits 31
    # more for its input: digit 2 computes in 899 cycles, in which the loader finds fewer than
    # 784 cycles without a drain write
    assert np.all(gap >= 10) and np.all(gap <= 80) and np.median(gap) <= 40, gap
    slots = lockstep_cycles(img, [x] + run_layers(qnet, x)[:-1])
    over = r.layer_cycles - slots
    # per layer: DRAIN (rows x 4), PRELOAD (rows, not layer 0's), holds and bubbles
    assert np.all(over[:, 0] <= 38 * 4 + 45) and np.all(over[:, 1] <= 13 * 5 + 60), over
    assert np.all(over[:, 2] <= 2 * 5 + 40), over


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_lockstep_back_to_back_cocotb(stall):
    """Inputs back to back through the Verilog: bit-exact, the latched layer counts equal a
    one-at-a-time run's, and free-flowing, an inference costs less than load + compute."""
    qnet = random_qnet((36, 20, 7), seed=11, density=0.4, shift=[7, 4])
    x = _inputs(8, 36, 11)
    b = build(build_image(qnet, "lockstep", 4), LockstepParams(queue_depth=2, drain_share=2))
    one = simulate(b, x)
    r = simulate(b, x, back_to_back=True, stall_in=stall, stall_out=stall, seed=5)
    np.testing.assert_array_equal(r.outputs, golden(qnet, x))
    np.testing.assert_array_equal(r.layer_cycles, one.layer_cycles)
    if stall == 0.0:
        # the first costs its load as before; the others overlap their 36-word load
        assert r.cycles[0] == one.cycles[0]
        assert np.all(r.cycles[1:] < one.cycles[1:])
        assert np.all(r.cycles[1:] <= one.cycles[1:] - 36 + 8)


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_lockstep_dead_units_back_to_back_board_params(stall):
    """Dead hidden units left out of the rows (images.lockstep trim), layer outputs top down
    with the loader refilling the input's words under the later layers, layer 0's biases in
    its DRAIN: the Verilog bit-exact back to back at the board's parameters, with stalls."""
    from tests.test_lockstep_trim import with_dead

    qnet = with_dead(random_qnet((48, 40, 24, 6), seed=4, density=0.4, shift=[6, 5, 4]),
                     [0.6, 0.5], seed=4)
    img = build_lockstep(qnet, 4)
    assert img.layers[0].rows_per_pe < 10
    x = _inputs(10, 48, 4)
    x[3] = 0
    b = build(img, LockstepParams(queue_depth=2, drain_share=2))
    one = simulate(b, x)
    r = simulate(b, x, back_to_back=True, stall_in=stall, stall_out=stall, seed=4)
    np.testing.assert_array_equal(r.outputs, golden(qnet, x))
    np.testing.assert_array_equal(one.outputs, r.outputs)
    np.testing.assert_array_equal(r.layer_cycles, one.layer_cycles)
