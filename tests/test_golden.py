"""The golden model against an independent float64 numpy evaluation of docs/formats.md section 3."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.golden import golden, mnist_to_input, predict, run_layers
from compress.qnet import Layer, QNet
from compress.synthetic import random_inputs, random_qnet


def reference(qnet: QNet, x: np.ndarray, acc_bits: int) -> np.ndarray:
    """Section 3 in float64 (exact below 2**53), written independently of compress.golden."""
    a = x.astype(np.float64)
    for layer in qnet.layers:
        w = layer.codebook.astype(np.float64)[layer.index]
        acc = a @ w.T + layer.bias.astype(np.float64)
        m = 2.0**acc_bits
        acc = np.mod(acc + m / 2, m) - m / 2  # two's complement wrap
        if layer.shift > 0:
            y = np.floor((acc + 2.0 ** (layer.shift - 1)) / 2.0**layer.shift)
        else:
            y = acc
        y = np.clip(y, -32768, 32767)
        if layer.relu:
            y = np.maximum(y, 0)
        a = y
    return a.astype(np.int16)


@given(
    seed=st.integers(0, 10**6),
    sizes=st.lists(st.integers(1, 30), min_size=2, max_size=5),
    acc_bits=st.sampled_from([12, 16, 20, 24, 32, 40]),
    shift=st.integers(0, 20),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
)
@settings(max_examples=200, deadline=None)
def test_matches_float64_reference(seed, sizes, acc_bits, shift, density):
    q = random_qnet(sizes, seed=seed, density=density, shift=shift, weight_scale=30000,
                    bias_scale=1 << 20)
    x = random_inputs(5, sizes[0], seed=seed, density=0.7, scale=32767)
    x[0] = -x[0]  # negative inputs too
    assert np.array_equal(golden(q, x, acc_bits=acc_bits), reference(q, x, acc_bits))


def _one(codebook, index, bias, shift, relu):
    return QNet([Layer(np.array(codebook, np.int16), np.array(index, np.uint8),
                       np.array(bias, np.int32), shift, relu)])


def test_saturation_both_ways():
    q = _one([0, 32767, -32768], [[1, 1], [2, 2]], [0, 0], 0, False)
    y = golden(q, np.array([[32767, 32767]], np.int16))
    assert y.tolist() == [[32767, -32768]]


def test_shift_zero_and_rounding():
    # shift 0: no rounding term; shift 2: floor((acc + 2) / 4), ties go up (towards +inf)
    q0 = _one([0, 1], [[1]], [0], 0, False)
    assert golden(q0, np.array([[-7]], np.int16)).tolist() == [[-7]]
    q2 = _one([0, 1], [[1]], [0], 2, False)
    xs = np.array([[-7], [-6], [-5], [-2], [2], [5], [6]], np.int16)
    assert golden(q2, xs)[:, 0].tolist() == [-2, -1, -1, 0, 1, 1, 2]


def test_accumulator_wrap():
    # 2 * 32767 * 32767 + 2**31 - 1 wraps in 32 bits; exact with acc_bits 40
    q = _one([0, 32767], [[1, 1]], [2**31 - 1], 16, False)
    x = np.array([[32767, 32767]], np.int16)
    exact = 2 * 32767 * 32767 + 2**31 - 1
    wrapped = (exact + 2**31) % 2**32 - 2**31
    assert golden(q, x, acc_bits=32)[0, 0] == np.clip((wrapped + 2**15) >> 16, -32768, 32767)
    assert golden(q, x, acc_bits=40)[0, 0] == np.clip((exact + 2**15) >> 16, -32768, 32767)
    assert golden(q, x, acc_bits=32)[0, 0] != golden(q, x, acc_bits=40)[0, 0]


def test_relu_and_layers():
    q = random_qnet((20, 9, 4), seed=4, density=0.5)
    x = random_inputs(3, 20, seed=4)
    outs = run_layers(q, x)
    assert (outs[0] >= 0).all() and outs[0].shape == (3, 9) and outs[1].shape == (3, 4)
    assert np.array_equal(outs[-1], golden(q, x))


def test_predict_first_maximum():
    assert predict(np.array([[1, 5, 5, 2], [0, 0, 0, 0]])).tolist() == [1, 0]


def test_mnist_to_input():
    px = np.array([[0, 1, 128, 255]], np.uint8)
    assert mnist_to_input(px, 8).tolist() == [[0, 1, 129, 256]]
    assert mnist_to_input(px, 15)[0, -1] == 32767


@pytest.mark.parametrize("acc_bits", [1, 65])
def test_bad_acc_bits(acc_bits):
    from compress.errors import InputError

    with pytest.raises(InputError, match="acc_bits"):
        golden(random_qnet((3, 2)), np.zeros((1, 3), np.int16), acc_bits=acc_bits)
