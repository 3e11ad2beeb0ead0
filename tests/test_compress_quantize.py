"""Trained quantization: zero reserved, pruned weights stay zero, centroids move by summed grads."""

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import striped_digits
from compress.data import to_float
from compress.models import LeNet300100, compressible_layers
from compress.prune import PruneConfig, prune
from compress.quantize import QuantConfig, SharedWeights, cluster, cluster_layer, quantize
from compress.train import TrainConfig


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_cluster_layer_reserves_zero(init):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 50)).astype(np.float32)
    mask = np.abs(w) > 1.0
    cb, idx = cluster_layer(w, mask, 4, init=init, seed=1)
    assert cb.shape == (16,) and cb[0] == 0
    assert np.all(idx[~mask] == 0) and np.all(idx[mask] >= 1)
    # Every surviving weight is at its nearest centroid (k-means fixed point).
    err = np.abs(w[mask] - cb[idx[mask]])
    nearest = np.min(np.abs(w[mask][:, None] - cb[None, 1:]), axis=1)
    assert np.allclose(err, nearest, atol=1e-6)


def test_fewer_survivors_than_centroids():
    w = np.zeros((4, 4), dtype=np.float32)
    w[0, 0], w[1, 1] = 0.5, -0.25
    cb, idx = cluster_layer(w, w != 0, 4)
    assert cb[0] == 0 and sorted(cb[idx[w != 0]]) == [-0.25, 0.5]


def test_centroid_gradient_is_sum_of_weight_gradients():
    torch.manual_seed(0)
    model = LeNet300100()
    data = striped_digits(64)
    cbs, idx = cluster(model, None, QuantConfig(bits=3))
    wrapped = SharedWeights(model, cbs, idx)
    x, y = to_float(data.images), torch.from_numpy(data.labels.astype(np.int64))
    nn.functional.cross_entropy(wrapped(x), y).backward()
    # Reference: a plain model holding the same shared weights, its dense weight gradients.
    ref = LeNet300100()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, w in wrapped.weights().items():
            ref.get_parameter(name).copy_(w)
    nn.functional.cross_entropy(ref(x), y).backward()
    for name in cbs:
        g = ref.get_parameter(f"{name}.weight").grad.numpy().reshape(-1)
        summed = np.bincount(idx[name].reshape(-1), weights=g, minlength=len(cbs[name]))[1:]
        got = wrapped.centroids[name].grad.numpy()
        assert np.allclose(got, summed, rtol=1e-4, atol=1e-6), name


def test_sgd_step_moves_centroids_by_summed_gradient():
    torch.manual_seed(1)
    model = LeNet300100()
    data = striped_digits(128)
    cbs, idx = cluster(model, None, QuantConfig(bits=2))
    wrapped = SharedWeights(model, cbs, idx, train_bias=False)
    x, y = to_float(data.images), torch.from_numpy(data.labels.astype(np.int64))
    nn.functional.cross_entropy(wrapped(x), y).backward()
    grads = {n: wrapped.centroids[n].grad.clone() for n in cbs}
    lr = 0.01
    opt = torch.optim.SGD([wrapped.centroids[n] for n in cbs], lr=lr)
    opt.step()
    new_cbs, new_idx = wrapped.export()
    for n in cbs:
        assert np.allclose(new_cbs[n][1:], cbs[n][1:] - lr * grads[n].numpy(), atol=1e-6)
        assert new_cbs[n][0] == 0 and np.array_equal(new_idx[n], idx[n])


def test_pruned_weights_stay_zero_after_quantization_and_finetuning():
    torch.manual_seed(2)
    model = LeNet300100()
    data = striped_digits()
    masks = prune(model, data, PruneConfig(schedule="oneshot", level=0.1,
                                            retrain=TrainConfig(max_steps=10, progress=False)),
                  log=lambda s: None)
    cfg = QuantConfig(bits=4, finetune=TrainConfig(epochs=2, batch_size=32, lr=1e-2,
                                                   progress=False))
    cbs, idx = quantize(model, masks, data, cfg)
    for name, m in compressible_layers(model).items():
        w = m.weight.detach().numpy()
        mask = masks[name].numpy()
        assert np.all(w[~mask] == 0) and np.all(idx[name][~mask] == 0)
        assert np.all(idx[name][mask] > 0) and cbs[name][0] == 0 and len(cbs[name]) == 16
        # The model's weights are exactly the codebook values.
        assert np.array_equal(w, cbs[name][idx[name]])
        assert m.weight.requires_grad
