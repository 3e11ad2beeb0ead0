"""Conv layers on the lockstep engine end to end: its generated Verilog in cocotb + Icarus,
bit-exact against the golden model (the Amaranth-simulator cases are
tests/test_hw_lockstep_conv.py).

Two small CNNs in `make test` (padding, stride 2, pooling 2x2 and 1x2, a 1x1 map, a kernel
larger than the padded map's remainder, an all-pruned output channel, an all-zero input, a
conv last layer, stalls on both sides, a reset in the middle, inputs back to back, output
stages shared by 2 PEs); `make test-long` (LONG=1) adds random conv networks (kernel 1-5,
stride 1-2, padding 0-2, pooling 1-2, channels 1-20, maps down to 1x1, 1-8 PEs, queue depth
1-8, drain_share 1-4) and the shipped LeNet-5 on sample digits.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden
from compress.synthetic import random_cnn
from images.lockstep import LockstepParams, build_lockstep
from tb.sim import build, simulate
from tests.conftest import long_tests
from tests.test_tb_conv import _inputs, _random_cnn


def _check(qnet, pes, x, params=None, **runkw):
    params = params or LockstepParams()
    r = simulate(build(build_lockstep(qnet, pes), params), x, **runkw)
    want = golden(qnet, x, acc_bits=params.acc_bits)
    bad = np.flatnonzero(np.any(r.outputs != want, axis=1))
    assert len(bad) == 0, f"{len(bad)}/{len(x)} vectors differ, first {bad[:5]}"
    assert np.all(r.layer_cycles > 0)
    return r


def test_small_cnn_stalls_reset_pruned_channel():
    qnet = random_cnn((1, 8, 8), [(4, 3, 1, 1, 2), (6, 3, 2, 1, 1)], [5], seed=1,
                      density=0.5, shift=9)
    qnet.layers[0].index[2, :] = 0  # an all-pruned output channel
    x = _inputs(10, 64, seed=1)
    r = _check(qnet, 4, x, LockstepParams(drain_share=2), stall_in=0.2, stall_out=0.3,
               seed=1, reset_mid=True)
    assert r.layer_cycles[0, 0] < r.layer_cycles[1:, 0].min()  # the all-zero map: fastest


def test_conv_last_1x1_map_back_to_back():
    """A kernel covering the padded map's remainder, pooling 1x2, a conv last layer with a
    1x1 map, queues of 1, inputs back to back."""
    qnet = random_cnn((2, 5, 5), [(3, 4, 2, 2, (1, 2)), (5, (3, 1), 1, 0, 1)], [], seed=2,
                      density=0.6, shift=9, relu_last=True)
    assert qnet.layer_shapes()[1][1] == (5, 1, 1)
    _check(qnet, 2, _inputs(8, 50, seed=2), LockstepParams(queue_depth=1), back_to_back=True)


@pytest.mark.skipif(not long_tests(), reason="long sweep: make test-long")
@pytest.mark.parametrize("seed", range(10))
def test_random_cnn_sweep_long(seed):
    qnet = _random_cnn(seed)
    rng = np.random.default_rng(100 + seed)
    pes = int(rng.choice([1, 2, 4, 8]))
    params = LockstepParams(queue_depth=int(rng.choice([1, 2, 8])),
                            drain_share=int(rng.choice([s for s in (1, 2, 4) if s <= pes])))
    _check(qnet, pes, _inputs(8, qnet.in_features, seed), params,
           stall_out=float(rng.choice([0, 0.3])), seed=seed,
           back_to_back=bool(rng.integers(2)))


@pytest.mark.skipif(not long_tests(), reason="LeNet-5 on 8 PEs in Icarus: make test-long")
def test_shipped_lenet5_sample_digits_long():
    from tb.cli import load_model_and_inputs

    qnet, x, _labels, _notes, _mnist = load_model_and_inputs(
        "compress/models/lenet-5.qnet.npz", None, 4)
    _check(qnet, 8, x[:2], LockstepParams(drain_share=2, queue_depth=2))
