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


def test_shipped_lenet5_dcz_and_its_record():
    """compress/models/lenet-5.dcz: LeNet-5's layers as matrices; lenet-5.json its figures."""
    import hashlib
    import json

    path = DCZ.parent / "lenet-5.dcz"
    blob = path.read_bytes()
    ls = dcz.unpack_layers(blob)
    assert [tuple(s) for s in ls.shapes] == [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]
    assert [ly.index.shape for ly in ls.layers] == [(20, 25), (50, 500), (500, 800), (10, 500)]
    rec = json.loads((DCZ.parent / "lenet-5.json").read_text())
    assert rec["dcz_bytes"] == len(blob)
    assert rec["dcz_sha256"] == hashlib.sha256(blob).hexdigest()
    assert rec["ratio"] == pytest.approx(1_724_320 / len(blob), abs=0.01)
    kept = sum(int((ly.index != 0).sum()) for ly in ls.layers)
    assert kept == rec["density"][-1]["kept"]
    assert {"dense", "quantized", "stored"} <= set(rec["errors_percent"])
