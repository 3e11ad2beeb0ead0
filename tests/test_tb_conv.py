"""Conv layers end to end: the generated Verilog of the EIE engine in cocotb + Icarus,
bit-exact against the golden model (the Amaranth-simulator cases are tests/test_hw_conv.py).

Two small CNNs in `make test` (padding, stride 2, pooling, a 1x1 map, an all-pruned output
channel, an all-zero input, stalls on both sides, a reset in the middle); `make test-long`
(LONG=1) adds random conv networks (kernel 1-5, stride 1-2, padding 0-2, pooling 1-2,
channels 1-20, maps down to 1x1) and the shipped LeNet-5 on sample digits.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden
from compress.synthetic import random_cnn, random_inputs
from images.eie import EieParams, build_rom
from tb.sim import build, simulate
from tests.conftest import long_tests


def _inputs(n, width, seed):
    rng = np.random.default_rng(seed)
    xs = [np.zeros((1, width), np.int16)]
    for d in rng.uniform(0, 1, n - 1):
        xs.append(random_inputs(1, width, seed=int(rng.integers(1 << 30)), density=float(d),
                                scale=int(rng.choice([256, 4096, 32767]))))
    return np.concatenate(xs)


def _check(qnet, pes, x, params=None, **runkw):
    params = params or EieParams()
    r = simulate(build(build_rom(qnet, pes=pes), params), x, **runkw)
    want = golden(qnet, x, acc_bits=params.acc_bits)
    bad = np.flatnonzero(np.any(r.outputs != want, axis=1))
    assert len(bad) == 0, f"{len(bad)}/{len(x)} vectors differ, first {bad[:5]}"
    assert np.all(r.layer_cycles > 0)
    return r


def test_small_cnn_stalls_and_pruned_channel():
    qnet = random_cnn((1, 8, 8), [(4, 3, 1, 1, 2), (6, 3, 2, 1, 1)], [5], seed=1,
                      density=0.5, shift=9)
    qnet.layers[0].index[2, :] = 0  # an all-pruned output channel
    x = _inputs(12, 64, seed=1)
    r = _check(qnet, 4, x, stall_in=0.2, stall_out=0.3, seed=1, reset_mid=True)
    assert r.layer_cycles[0, 0] < r.layer_cycles[1:, 0].min()  # the all-zero map: fastest


def test_conv_to_1x1_map_wide_issue():
    """Two PEs with issue width 2, a kernel covering the padded map's remainder, a 1x1 map."""
    qnet = random_cnn((2, 5, 5), [(3, 4, 2, 2, 1), (5, 3, 1, 0, 1)], [3], seed=2,
                      density=0.6, shift=9)
    assert qnet.layer_shapes()[1][1] == (5, 1, 1)
    _check(qnet, 2, _inputs(10, 50, seed=2), EieParams(issue_width=2))


def test_conv_pipelined_front_end_stalls():
    """The pipelined engine (the ECP5 boards') with conv layers: the conv front end's lanes and
    credit through the broadcast register, queues of 2, stalls."""
    qnet = random_cnn((2, 7, 7), [(5, 3, 1, 1, 2), (6, 2, 1, 0, 1)], [4], seed=3,
                      density=0.5, shift=9)
    _check(qnet, 4, _inputs(8, 98, seed=3), EieParams(issue_width=2, pipelined=True,
                                                      queue_depth=2),
           stall_in=0.2, stall_out=0.3, seed=3)


def _random_cnn(seed):
    """A random conv network in the issue's ranges whose maps stay at least 1x1."""
    rng = np.random.default_rng(2000 + seed)
    c, h = int(rng.integers(1, 4)), int(rng.integers(3, 13))
    shape, convs = (c, h, h), []
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(1, 6))
        s, p, q = int(rng.integers(1, 3)), int(rng.integers(0, 3)), int(rng.integers(1, 3))
        p = min(p, k - 1)
        ho = (h + 2 * p - k) // s + 1
        if ho < 1:
            break
        q = min(q, ho)
        convs.append((int(rng.integers(1, 21)), k, s, p, q))
        h = ho // q
    if not convs:
        convs.append((int(rng.integers(1, 21)), 1, 1, 0, 1))
    fc = [int(v) for v in rng.integers(1, 16, int(rng.integers(0, 2)))]
    return random_cnn(shape, convs, fc, seed=seed, density=float(rng.choice([0.1, 0.4, 0.9])),
                      shift=int(rng.integers(6, 12)))


@pytest.mark.skipif(not long_tests(), reason="long sweep: make test-long")
@pytest.mark.parametrize("seed", range(10))
def test_random_cnn_sweep_long(seed):
    qnet = _random_cnn(seed)
    rng = np.random.default_rng(seed)
    pes = int(rng.choice([1, 2, 4, 8]))
    params = EieParams(issue_width=int(rng.choice([1, 2])) if pes >= 2 else 1,
                       queue_depth=int(rng.choice([1, 4, 8])))
    _check(qnet, pes, _inputs(10, qnet.in_features, seed), params,
           stall_out=float(rng.choice([0, 0.3])), seed=seed)


@pytest.mark.skipif(not long_tests(), reason="LeNet-5 on 8 PEs in Icarus: make test-long")
def test_shipped_lenet5_sample_digits_long():
    from tb.cli import load_model_and_inputs

    qnet, x, _labels, _notes, _mnist = load_model_and_inputs(
        "compress/models/lenet-5.qnet.npz", None, 4)
    _check(qnet, 8, x[:3])
