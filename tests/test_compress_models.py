"""The shipped default: compress/models/lenet-300-100.{dcz,qnet.npz} and the sample digits."""


import numpy as np
import pytest

from compress import dcz
from compress.data import load_sample
from compress.golden import golden, mnist_to_input, predict, run_layers
from compress.qnet import load_qnet
from compress.shipped import SHIPPED_DCZ, SHIPPED_QNET

DCZ, QNET = SHIPPED_DCZ, SHIPPED_QNET

pytestmark = pytest.mark.skipif(not DCZ.exists(), reason="the default model is not shipped yet")


def test_dcz_unpacks_to_the_shipped_qnet():
    qnet = load_qnet(QNET, index_bits=4)  # 15 shared values + zero in every layer
    assert dcz.unpack(DCZ.read_bytes()).equals(qnet)
    assert [l.index.shape for l in qnet.layers] == [(300, 784), (100, 300), (10, 100)]
    assert 1_066_440 / DCZ.stat().st_size >= 40


def test_sample_digits_run_in_32_bit_accumulators():
    qnet = load_qnet(QNET)
    s = load_sample()
    x = mnist_to_input(s.images, qnet.input_frac)
    wide = run_layers(qnet, x, acc_bits=64)
    narrow = run_layers(qnet, x, acc_bits=32)
    assert all(np.array_equal(a, b) for a, b in zip(wide, narrow))  # no wrap-around
    assert np.mean(predict(golden(qnet, x)) == s.labels) >= 0.95
