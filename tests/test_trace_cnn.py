"""CNNs through the front door (compress.trace): the chains the engine takes, BatchNorm folded
(equal in float), Dropout passed over, a final Softmax dropped, and every other layer refused
with one line naming it and why."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.errors import InputError
from compress.golden import golden
from compress.trace import (drop_softmax, fold_batchnorm, input_shape, linear_chain,
                            network_chain, run_chain)


def _trained_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give every BatchNorm running statistics and affine values far from the defaults."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.1)
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(torch.randn(n, generator=g))  # negative scales too
                    m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


class Functional(nn.Module):
    """A user's class: functional ReLU, pooling and log_softmax, a view to flatten."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 5, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(5)
        self.c2 = nn.Conv2d(5, 7, (2, 3), stride=(1, 2))
        self.b2 = nn.BatchNorm2d(7, affine=False)
        self.fc = nn.Linear(7 * 3 * 2, 6)
        self.b3 = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.b1(self.c1(x)), 2))  # pool before the ReLU
        x = F.dropout(F.relu(self.b2(self.c2(x))), 0.3, self.training)
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.out(F.relu(self.b3(self.fc(x)))), dim=1)


def _seq():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Dropout2d(0.1), nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
                         nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 3),
                         nn.Softmax(dim=1))


def test_chains_of_a_sequential_and_a_functional_class():
    c = network_chain(_seq())
    assert [(x.name, x.kind, x.relu, x.pool, x.bn) for x in c] == [
        ("0", "conv", True, (2, 2), "1"), ("6", "fc", True, (1, 1), "7"),
        ("10", "fc", False, (1, 1), None)]
    assert c.softmax_module == "11" and not c.softmax_log
    c = network_chain(Functional())
    assert [(x.name, x.relu, x.pool, x.bn) for x in c] == [
        ("c1", True, (2, 2), "b1"), ("c2", True, (1, 1), "b2"), ("fc", True, (1, 1), "b3"),
        ("out", False, (1, 1), None)]
    assert c.softmax is not None and c.softmax_module is None and c.softmax_log


@pytest.mark.parametrize("make, shape", [(_seq, (1, 8, 8)), (Functional, (2, 8, 10))])
def test_batchnorm_fold_is_equal_in_float(make, shape):
    torch.manual_seed(0)
    x = torch.randn(32, *shape)
    model = _trained_bn(make(), x).double()
    ref = model(x.double())
    work = copy.deepcopy(model)
    chain = fold_batchnorm(work, network_chain(work))
    assert all(c.bn is None for c in chain)
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in work.modules())
    assert torch.allclose(work(x.double()), ref, rtol=1e-12, atol=1e-12)  # the same network
    plain = drop_softmax(work, chain)
    logits = run_chain(chain, x.double(), input_shape(chain, plain, x.double()))
    assert torch.allclose(plain(x.double()), logits, rtol=1e-12, atol=1e-12)
    back = torch.log_softmax(logits, 1) if chain.softmax_log else torch.softmax(logits, 1)
    assert torch.allclose(back, ref, rtol=1e-12, atol=1e-12)
    # the user's model is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):
        return self.fc((self.c(x) + x).flatten(1))


class BnAfterRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.bn(torch.relu(self.c(x))).flatten(1))


class SoftmaxInTheMiddle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.softmax(self.a(x), dim=1))


@pytest.mark.parametrize("model, needle", [
    (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2)),
     "Conv2d '0' at node '_0' has groups=2"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, dilation=2), nn.Flatten(), nn.Linear(4, 2)),
     "has dilation=(2, 2)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(),
                   nn.Linear(4, 2)), "pads with 'reflect'"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 2)),
     "module '1' (AvgPool2d) at node '_1' is not a layer the engine runs (average pooling"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(3, stride=2), nn.Flatten(), nn.Linear(4, 2)),
     "MaxPool2d at node '_1': stride (2, 2) differs from the window (3, 3)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, padding=1), nn.Flatten(),
                   nn.Linear(4, 2)), "padding (1, 1)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
                   nn.Linear(4, 2)), "ceil_mode"),
    (BnAfterRelu(), "BatchNorm 'bn' at node 'bn' follows a ReLU"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.Flatten(),
                   nn.Linear(4, 2)), "BatchNorm '2' at node '_2' follows a MaxPool2d"),
    (nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)),
     "BatchNorm '0' at node '_0' comes before any Linear/Conv2d layer"),
    (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm2d(3)), "is a BatchNorm2d after a Linear"),
    (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False)),
     "keeps no running statistics"),
    (Residual(), "combines two tensors (a residual add?)"),
    (nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Unflatten(1, (2, 2, 2)),
                   nn.Conv2d(2, 2, 1)), "module '2' (Unflatten)"),
    (nn.Sequential(nn.Linear(4, 4), nn.MaxPool2d(2)), "MaxPool2d at node '_1' does not follow "
                                                       "a Conv2d"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(4, 2)), "Linear '1' at node '_1' takes a conv "
                                                        "map; flatten it first"),
    (SoftmaxInTheMiddle(), "follows the Softmax at node 'softmax'"),
    (nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=0)), "module '1' (Softmax)"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.MaxPool2d(1), nn.Flatten(),
                   nn.Linear(2, 2)), "a second MaxPool2d"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid()), "module '1' (Sigmoid)"),
])
def test_refused_with_one_line_naming_the_layer(model, needle):
    with pytest.raises(InputError) as e:
        network_chain(model)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("model: "), msg


def test_fc_only_walk_still_refuses_conv():
    with pytest.raises(InputError, match=r"module '0' \(Conv2d\).*is not Linear/ReLU/Flatten"):
        linear_chain(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)))


def test_compress_model_refuses_before_any_work():
    x = np.zeros((8, 1, 6, 6), np.float32)
    with pytest.raises(InputError, match="groups=2"):
        compress.compress_model(nn.Sequential(nn.Conv2d(1, 2, 3, groups=1), nn.Conv2d(
            2, 2, 3, groups=2), nn.Flatten(), nn.Linear(8, 2)), train=(x, np.zeros(8, int)),
            progress=False)


def _cnn_data(n, seed):
    """Three classes of 1x8x8 patterns (a vertical bar, a horizontal bar, a ring) in noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.6, (n, 1, 8, 8)).astype(np.float32)
    off = rng.integers(0, 3, (n, 2))
    for i in range(n):
        r, c = off[i]
        if y[i] == 0:
            x[i, 0, r:r + 5, c + 2] += 2.0
        elif y[i] == 1:
            x[i, 0, r + 2, c:c + 5] += 2.0
        else:
            x[i, 0, r:r + 4, c:c + 4] += 1.0
            x[i, 0, r + 1:r + 3, c + 1:c + 3] -= 1.0
    return x, y


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return torch.log_softmax(self.fc(x.flatten(1)), 1)


def test_compress_model_gives_a_version_2_qnet_for_a_cnn_with_batchnorm(tmp_path):
    from compress import dcz
    from compress.qnet import load_qnet

    x, y = _cnn_data(600, 0)
    torch.manual_seed(0)
    m = TinyCNN()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(80):
        b = torch.randint(0, 600, (64,))
        opt.zero_grad()
        F.nll_loss(m(torch.from_numpy(x[b])), torch.from_numpy(y[b])).backward()
        opt.step()
    m.eval()
    before = copy.deepcopy(m.state_dict())
    result = compress.compress_model(m, train=(x, y), seed=0, max_drop=10, progress=False,
                                     prune_rounds=1,
                                     round_steps=(30, 60), attempts=1, densities={"conv": 0.7,
                                                                                  "fc": 0.5})
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # untouched
    q = result.qnet
    assert q.version == 2 and q.input_shape == (1, 8, 8)
    assert [(ly.kind, ly.relu, ly.pool, ly.padding) for ly in q.layers] == [
        ("conv", True, (2, 2), (1, 1)), ("fc", False, (1, 1), (0, 0))]
    s = result.summary
    assert s["input_shape"] == [1, 8, 8] and s["kinds"] == ["conv", "fc"] and not s["engine"]
    assert {"dense", "pruned", "quantized", "integer"} <= set(s["accuracy"])
    # the integer network tracks the float one, and golden agrees with the API's own figure
    xi = compress.encode_inputs(x[-60:], q)
    acc = 100 * np.mean(golden(q, xi).argmax(1) == y[-60:])
    assert abs(s["accuracy"]["integer"]["val"] - s["accuracy"]["quantized"]["val"]) <= 5
    assert acc >= 60
    result.save(tmp_path)
    assert load_qnet(tmp_path / "model.qnet.npz", index_bits=8).equals(q)
    assert dcz.unpack((tmp_path / "model.dcz").read_bytes()).equals(q)
