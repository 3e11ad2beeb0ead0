"""compress_model / encode_inputs: tracing, input calibration, a tiny network end to end."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

import compress
from compress import dcz
from compress.api import calibrate_input_frac, materialise
from compress.errors import InputError
from compress.golden import golden, predict
from compress.qnet import Layer, QNet, load_qnet
from compress.trace import linear_chain

from .conftest import long_tests


# ---------------------------------------------------------------------------------------------
# Tracing


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(),
                                  nn.Linear(20, 10), nn.ReLU())
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        return self.head(self.body(x))


class Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.sigmoid(self.fc1(x)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + x


def _layers(model):
    return [(c.name, c.relu) for c in linear_chain(model)]


def test_trace_sequential_custom_and_nested():
    seq = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    assert _layers(seq) == [("1", True), ("3", False)]
    assert _layers(Custom()) == [("fc1", True), ("fc2", False)]
    assert _layers(Nested()) == [("body.1", True), ("body.3", True), ("head", False)]


@pytest.mark.parametrize("model, needle", [
    (Sigmoid(), "op 'sigmoid' at node 'sigmoid'"),
    (Residual(), "op 'add'"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)),
     "module '0' (Conv2d)"),
    (nn.Sequential(nn.Linear(4, 4), nn.Tanh()), "module '1' (Tanh)"),
])
def test_trace_refuses_with_one_line_naming_the_op(model, needle):
    with pytest.raises(InputError) as e:
        linear_chain(model)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("model: ")


def test_compress_model_refuses_an_untraceable_op_before_any_work():
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(InputError, match="sigmoid"):
        compress.compress_model(Sigmoid(), train=(x, np.zeros(10, int)), progress=False)


# ---------------------------------------------------------------------------------------------
# Input calibration and encoding


@pytest.mark.parametrize("lo, hi, frac", [(0, 1, 14), (0, 16, 10), (-100, 100, 8)])
def test_input_frac_fits_int16_with_the_most_bits(lo, hi, frac):
    rng = np.random.default_rng(0)
    x = rng.uniform(lo, hi, (200, 8)).astype(np.float32)
    x[0, 0] = hi if abs(hi) >= abs(lo) else lo  # the range's extreme is present
    got, notes = calibrate_input_frac(x)
    assert got == frac and notes == []
    peak = np.abs(x).max()
    assert peak * 2**got <= 32767 < peak * 2 ** (got + 1)


def test_input_frac_all_zero_feature_is_fine_all_zero_inputs_warn():
    x = np.random.default_rng(0).uniform(0, 16, (100, 5)).astype(np.float32)
    x[:, 2] = 0  # a feature that is always 0
    assert calibrate_input_frac(x) == (int(np.floor(np.log2(32767 / x.max()))), [])
    frac, notes = calibrate_input_frac(np.zeros((10, 3)))
    assert len(notes) == 1 and "all zero" in notes[0]
    frac, notes = calibrate_input_frac(np.full((4, 2), 1e6))
    assert frac == 0 and len(notes) == 1 and "saturate" in notes[0]
    frac, notes = calibrate_input_frac(np.full((4, 2), 1e-7))
    assert frac == 15 and "round to 0" in notes[0]


def test_encode_inputs_numerics():
    qnet = QNet([Layer(codebook=np.array([0, 1], np.int16), index=np.ones((1, 6), np.uint8),
                       bias=np.zeros(1, np.int32), shift=0, relu=False)], input_frac=2)
    x = np.array([[[0.125, -0.125, 0.375], [1e9, -1e9, -0.1]]])  # shape [1, 2, 3]
    got = compress.encode_inputs(x, qnet)
    # floor(x * 4 + 0.5): 0.5 -> 1, -0.5 -> 0, 1.5 -> 2, saturation, -0.4 + 0.5 -> 0
    assert got.dtype == np.int16 and got.tolist() == [[1, 0, 2, 32767, -32768, 0]]
    assert np.array_equal(compress.encode_inputs(torch.tensor(x), qnet), got)
    with pytest.raises(InputError, match="5 values per example.*takes 6"):
        compress.encode_inputs(np.zeros((2, 5)), qnet)
    with pytest.raises(InputError, match="NaN"):
        compress.encode_inputs(np.full((1, 6), np.nan), qnet)


# ---------------------------------------------------------------------------------------------
# Data


def test_materialise_arrays_tensors_datasets_and_loaders():
    from torch.utils.data import DataLoader, TensorDataset

    x = np.random.default_rng(0).normal(size=(30, 2, 3)).astype(np.float32)
    y = np.arange(30) % 3
    ref_x, ref_y = materialise((x, y), "train")
    assert ref_x.shape == (30, 2, 3) and ref_y.dtype == np.int64
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    for data in (ds, DataLoader(ds, batch_size=7), (torch.from_numpy(x), torch.from_numpy(y))):
        gx, gy = materialise(data, "train")
        assert torch.equal(gx, ref_x) and np.array_equal(gy, ref_y)
    with pytest.raises(InputError, match="exceed"):
        materialise(ds, "train", max_values=100)
    with pytest.raises(InputError, match="more than 100"):
        materialise(DataLoader(ds, batch_size=7), "train", max_values=100)


@pytest.mark.parametrize("train, needle", [
    ((np.zeros((5, 3)), np.zeros(4, int)), "5 inputs but 4 labels"),
    ((np.zeros((5, 3)), np.full(5, 0.5)), "labels must be integers"),
    ((np.zeros((5, 3)), np.zeros((5, 3))), "1-D array of class indices"),
    ((np.array([[np.nan, 0, 0]] * 5), np.zeros(5, int)), "NaN or infinite value in example 0"),
    ((np.zeros((5, 3)), np.full(5, -1)), "negative label"),
    ("data.npz", "expected (x, y)"),
])
def test_bad_data_is_refused_with_one_line(train, needle):
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(InputError) as e:
        compress.compress_model(model, train=train, progress=False)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_model_data_fit_and_options_are_refused():
    model = nn.Sequential(nn.Linear(3, 2))
    x, y = np.zeros((20, 3), np.float32), np.zeros(20, int)
    with pytest.raises(InputError, match="label 5 but the model has 2 outputs"):
        compress.compress_model(model, train=(x, np.full(20, 5)), progress=False)
    with pytest.raises(InputError, match="4 values per example"):
        compress.compress_model(model, train=(np.zeros((20, 4)), y), progress=False)
    with pytest.raises(InputError, match="unknown option 'epoch'"):
        compress.compress_model(model, train=(x, y), epoch=3)
    with pytest.raises(InputError, match="max_bits"):
        compress.compress_model(model, train=(x, y), max_bits=9)
    for bad in (-1, float("nan"), "0.5"):
        with pytest.raises(InputError, match="max_drop must be >= 0"):
            compress.compress_model(model, train=(x, y), max_drop=bad)


# ---------------------------------------------------------------------------------------------
# End to end on a tiny network

FAST = {"progress": False, "prune_rounds": 2, "round_steps": (40, 100)}  # short retraining


def blobs(n: int, seed: int, dim: int = 12):
    """Three Gaussian blobs in `dim`-D, inputs roughly in -10..16 (not MNIST units)."""
    centers = np.random.default_rng(123).normal(0, 1.2, (3, dim))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = centers[y] + rng.normal(0, 1.0, (n, dim))
    return (x * 4 + 3).astype(np.float32), y


class TinyMLP(nn.Module):
    """A user's class taking [n, 3, 4] "images": flatten, 12-16-3."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(12, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(torch.flatten(x, 1))))


def image_blobs(n: int, seed: int):
    x, y = blobs(n, seed)
    return x.reshape(n, 3, 4), y


def trained_tiny():
    x, y = image_blobs(400, 0)
    torch.manual_seed(0)
    m = TinyMLP()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xt), yt).backward()
        opt.step()
    return m


@pytest.fixture(scope="module")
def tiny():
    model = trained_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, val, test = image_blobs(400, 0), image_blobs(200, 1), image_blobs(300, 2)
    result = compress.compress_model(model, train=train, val=val, seed=0, test=test,
                                     progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "compress_model changed the user's model"
    return model, result, train, val, test


def test_tiny_integer_accuracy_within_a_point_of_dense(tiny):
    _, result, *_ = tiny
    s = result.summary
    acc = s["accuracy"]
    assert set(acc) == {"dense", "pruned", "quantized", "integer"}
    for split in ("val", "test"):
        assert acc["integer"][split] >= acc["dense"][split] - 1.0, acc
    assert s["met_max_drop"] and s["drop"] <= 0.5
    assert s["engine"] and s["shape"] == [12, 16, 3]
    assert set(s["density"]) == set(s["index_bits"]) == {"hidden", "out"}
    assert all(2 <= b <= 4 for b in s["index_bits"].values())
    assert s["density"]["hidden"] < 1.0  # the sensitivity curves allowed pruning
    assert s["ratio"] == pytest.approx(4 * (12 * 16 + 16 + 16 * 3 + 3) / s["dcz_bytes"])
    assert s["input_frac"] == int(np.floor(np.log2(32767 / np.abs(tiny[2][0]).max())))
    for k in ("sensitivity", "prune", "quantize", "fixedpoint", "total"):
        assert s["seconds"][k] >= 0


def test_tiny_qnet_matches_golden_and_dcz(tiny, tmp_path):
    _, result, _, val, _ = tiny
    qnet = result.qnet
    assert dcz.unpack(result.dcz).equals(qnet)
    xi = compress.encode_inputs(val[0], qnet)
    acc = 100 * np.mean(predict(golden(qnet, xi)) == val[1])
    assert acc == pytest.approx(result.summary["accuracy"]["integer"]["val"])
    (tmp_path / "keep.txt").write_text("mine")
    result.save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["keep.txt", "model.dcz", "model.qnet.npz", "report.txt", "summary.json"]
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert (tmp_path / "model.dcz").read_bytes() == result.dcz
    assert dcz.read_dcz(tmp_path / "model.dcz").equals(load_qnet(tmp_path / "model.qnet.npz"))
    assert load_qnet(tmp_path / "model.qnet.npz").equals(qnet)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dcz_bytes"] == len(result.dcz)
    assert "ratio" in (tmp_path / "report.txt").read_text()


def test_same_seed_same_bytes_and_dataloader_input(tiny, tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    model, result, train, val, _ = tiny
    ds = TensorDataset(torch.from_numpy(train[0]), torch.from_numpy(train[1]))
    again = compress.compress_model(model, train=DataLoader(ds, batch_size=64), val=val,
                                    seed=0, progress=False)
    result.save(tmp_path / "a")
    again.save(tmp_path / "b")
    for f in ("model.dcz", "model.qnet.npz"):
        a, b = ((tmp_path / d / f).read_bytes() for d in ("a", "b"))
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), f


def test_dropout_trains_from_the_seed_not_torch_global_state():
    """A user's Dropout is active while compress_model retrains: it draws from a generator
    seeded by `seed` (two runs gave different files before), and the caller's global torch
    state is left as it was."""
    torch.manual_seed(5)
    model = Custom()
    train, val = blobs(300, 0), blobs(100, 1)
    outs = []
    for glob in (1, 2):
        torch.manual_seed(glob)
        state = torch.random.get_rng_state()
        r = compress.compress_model(model, train=train, val=val, seed=3, **FAST, max_bits=3,
                                    densities={"fc1": 0.5, "fc2": 0.8}, attempts=1)
        assert torch.equal(torch.random.get_rng_state(), state)
        outs.append(r.dcz)
    assert outs[0] == outs[1]


def test_val_held_out_when_not_given():
    model = trained_tiny()
    result = compress.compress_model(model, train=image_blobs(400, 0), seed=1, **FAST,
                                     max_bits=3, densities={"hidden": 0.5, "out": 0.8},
                                     attempts=1)
    s = result.summary
    assert s["examples"] == {"train": 360, "val": 40}
    assert s["density"] == pytest.approx({"hidden": 0.5, "out": 38 / 48})
    assert all(b <= 3 for b in s["index_bits"].values())


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_conv_network_compresses_to_a_version_2_qnet(tmp_path):
    x, y = blobs(240, 3, dim=36)
    x = x.reshape(-1, 1, 6, 6)
    torch.manual_seed(0)
    m = TinyConv()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(m(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    result = compress.compress_model(m, train=(x, y), seed=0, **FAST, attempts=1)
    q = result.qnet
    assert q.version == 2 and q.input_shape == (1, 6, 6) and not result.summary["engine"]
    assert [ly.kind for ly in q.layers] == ["conv", "fc"] and q.layers[0].relu
    assert "integer" in result.summary["accuracy"]
    assert dcz.unpack(result.dcz).equals(q) and result.dcz[4] == 3
    ls = dcz.unpack_layers(result.dcz)  # the matrices: conv as [out_ch, in_ch * kh * kw]
    assert [tuple(s) for s in ls.shapes] == [(4, 9), (3, 64)]
    result.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dcz", "model.qnet.npz",
                                                          "report.txt", "summary.json"]


@pytest.mark.skipif(not long_tests(), reason="LeNet-300-100-sized run on MNIST: LONG=1")
def test_lenet_300_100_sized_user_model_on_mnist(mnist_dir, monkeypatch):
    """A user's 784-300-100-10 class on MNIST pixels / 255: the targets of the issue."""
    import time

    from compress.data import load_split

    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    tr, te = load_split("train"), load_split("test")
    x, y = tr.images.astype(np.float32) / 255, tr.labels.astype(np.int64)

    class MyMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
                                     nn.ReLU())
            self.out = nn.Linear(100, 10)

        def forward(self, x):
            return self.out(self.net(torch.flatten(x, 1)))

    torch.manual_seed(0)
    m = MyMLP()
    opt = torch.optim.Adam(m.parameters(), 1e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(m(xt[idx]), yt[idx]).backward()
            opt.step()
    t = time.process_time()
    result = compress.compress_model(m, train=(x, y), seed=0, progress=False,
                                     test=(te.images.astype(np.float32) / 255,
                                           te.labels.astype(np.int64)))
    cpu = time.process_time() - t  # CPU time (all threads), never wall time
    s = result.summary
    assert cpu < 900, cpu
    assert s["accuracy"]["integer"]["test"] >= s["accuracy"]["dense"]["test"] - 1.0
    assert s["met_max_drop"] and s["ratio"] > 30
