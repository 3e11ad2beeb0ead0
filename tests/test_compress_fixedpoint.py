"""Fixed point: calibrated qnet agrees with the shared-weight float network."""

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import InputError
from compress.fixedpoint import (FixedPointConfig, fc_chain, max_accumulator_log2, run_integer,
                                 to_qnet)
from compress.golden import run_layers
from compress.synthetic import random_inputs, random_qnet
from compress.golden import golden, mnist_to_input, predict
from compress.models import LeNet5, LeNet300100
from compress.quantize import QuantConfig, quantize


def test_qnet_matches_float_shared_weights():
    torch.manual_seed(0)
    model = LeNet300100()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 28, 28)).astype(np.uint8)
    images[images < 128] = 0
    cbs, idx = quantize(model, None, None, QuantConfig(bits=4))
    qnet, cal = to_qnet(model, cbs, idx, images, FixedPointConfig(input_frac=8))
    qnet.validate(index_bits=4)
    assert qnet.input_frac == 8 and [l.relu for l in qnet.layers] == [True, True, False]
    assert all(s >= 0 for s in cal.shifts)
    assert all(np.array_equal(l.index, idx[n]) for l, n in zip(qnet.layers, ["fc1", "fc2", "fc3"]))
    # Integer logits track the float logits of the shared-weight network.
    y_int = golden(qnet, mnist_to_input(images, 8)).astype(np.float64) / 2.0 ** cal.act_frac[-1]
    with torch.no_grad():
        x = torch.from_numpy(mnist_to_input(images, 8).astype(np.float32) / 256)
        x = x.reshape(-1, 1, 28, 28)
        y_float = model(x).numpy()
    assert np.max(np.abs(y_int - y_float)) < 0.02 * np.abs(y_float).max()
    assert np.mean(predict(y_int) == y_float.argmax(1)) > 0.97
    assert max_accumulator_log2(qnet, images) < 31


def test_small_accumulators_lower_the_codebook_bits():
    torch.manual_seed(1)
    model = LeNet300100()
    images = np.random.default_rng(1).integers(0, 256, (100, 28, 28)).astype(np.uint8)
    cbs, idx = quantize(model, None, None, QuantConfig(bits=4))
    _, wide = to_qnet(model, cbs, idx, images, FixedPointConfig(acc_bits=32))
    qnet, narrow = to_qnet(model, cbs, idx, images, FixedPointConfig(acc_bits=24))
    assert narrow.weight_frac[0] < wide.weight_frac[0]
    assert max_accumulator_log2(qnet, images) < 23


def test_conv_networks_are_refused():
    with pytest.raises(InputError, match="module 'conv1' \\(Conv2d\\)"):
        fc_chain(LeNet5())
    with pytest.raises(InputError, match="Conv2d"):
        fc_chain(nn.Sequential(nn.Conv2d(1, 2, 3)))
    chain = fc_chain(nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10)))
    assert [r for _, r in chain] == [True, False]


@pytest.mark.parametrize("acc_bits", [32, 20])
def test_fast_integer_path_is_the_golden_model(acc_bits):
    torch.manual_seed(3)
    model = LeNet300100()
    images = np.random.default_rng(3).integers(0, 256, (64, 28, 28)).astype(np.uint8)
    cbs, idx = quantize(model, None, None, QuantConfig(bits=4))
    qnet, _ = to_qnet(model, cbs, idx, images)
    x = mnist_to_input(images, qnet.input_frac)
    assert np.array_equal(run_integer(qnet, x, acc_bits=acc_bits)[0],
                          run_layers(qnet, x, acc_bits=acc_bits)[-1])


def test_fast_integer_path_on_random_qnets():
    for seed in range(4):
        q = random_qnet([50, 40, 30, 10], seed=seed)
        x = random_inputs(16, 50, seed=seed, density=0.7, scale=32767)
        for acc_bits in (32, 16):
            assert np.array_equal(run_integer(q, x, acc_bits=acc_bits)[0],
                                  run_layers(q, x, acc_bits=acc_bits)[-1])


def test_user_modules_through_every_stage():
    """Any nn.Module of Linear/Conv2d layers prunes and quantizes; a Linear/ReLU chain -> qnet."""
    from compress.data import Split
    from compress.prune import PruneConfig, prune
    from compress.train import TrainConfig

    rng = np.random.default_rng(5)
    data = Split(rng.integers(0, 256, (128, 28, 28)).astype(np.uint8),
                 rng.integers(0, 10, 128).astype(np.uint8))
    quick = TrainConfig(max_steps=5, batch_size=32, progress=False)
    torch.manual_seed(5)
    conv = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 24 * 24, 10))
    masks = prune(conv, data, PruneConfig(schedule="oneshot", level=0.3, retrain=quick),
                  log=lambda s: None)
    cbs, idx = quantize(conv, masks, data, QuantConfig(bits=3, finetune=quick))
    assert set(cbs) == {"0", "3"} and idx["0"].shape == (4, 1, 5, 5)
    assert np.all(idx["0"][~masks["0"].numpy()] == 0)

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    masks = prune(mlp, data, PruneConfig(schedule="oneshot", level=0.2, retrain=quick),
                  log=lambda s: None)
    cbs, idx = quantize(mlp, masks, data, QuantConfig(finetune=quick))
    qnet, _ = to_qnet(mlp, cbs, idx, data.images)
    assert [l.relu for l in qnet.layers] == [True, False] and qnet.in_features == 784
    assert golden(qnet, mnist_to_input(data.images, 8)).shape == (128, 10)
