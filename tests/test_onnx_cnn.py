"""ONNX CNNs (docs/formats.md section 7): BatchNormalization, Dropout, Softmax and LogSoftmax
import, and a CNN with BatchNorm goes through the pipeline to a version 2 qnet; what the
integer network cannot hold is refused with one line naming the node or layer."""

import json

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from compress.cli import main
from compress.errors import InputError
from compress.onnx_import import load_onnx

from . import onnx_cases as C
from .test_onnx_import import export


def test_bn_dropout_logsoftmax_import_and_agree_with_numpy(tmp_path):
    path = tmp_path / "cnn.onnx"
    path.write_bytes(C.small_cnn_bn())
    seq = load_onnx(path)
    kinds = [type(m).__name__ for m in seq]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Flatten", "Linear",
                     "BatchNorm1d", "ReLU", "Linear", "LogSoftmax"]
    assert list(seq._modules)[1] == "bn1"  # the exporter's names (here the scale's)
    # BatchNormalization as ONNX defines it, in numpy, on the conv output
    import onnx

    g = onnx.load(path).graph
    t = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    x = np.random.default_rng(0).normal(size=(3, 1, 6, 6)).astype(np.float32)
    with torch.no_grad():
        c = seq[0](torch.from_numpy(x)).numpy()
        got = seq[1](torch.from_numpy(c)).numpy()
    sh = (1, 3, 1, 1)
    want = (c - t["m1"].reshape(sh)) / np.sqrt(t["v1"].reshape(sh) + 1e-3) * \
        t["s1"].reshape(sh) + t["b1"].reshape(sh)
    assert np.allclose(got, want, atol=1e-5)


def _one(nodes, inits, shape=("n", 2, 4, 4)):
    x = helper.make_tensor_value_info("x", 1, list(shape))
    y = helper.make_tensor_value_info("y", 1, None)
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _bn(name, inp, out, n, **kw):
    ps = [numpy_helper.from_array(v, f"{name}.{k}") for k, v in (
        ("scale", np.ones(n, np.float32)), ("b", np.zeros(n, np.float32)),
        ("mean", np.zeros(n, np.float32)), ("var", np.ones(n, np.float32)))]
    return helper.make_node("BatchNormalization", [inp, *[p.name for p in ps]], [out],
                            name=name, **kw), ps


@pytest.mark.parametrize("case, needle", [
    ("training", "node 'bn' (BatchNormalization): training_mode=1"),
    ("mask", "node 'drop' (Dropout): only one output is supported"),
    ("axis", "node 'sm' (Softmax): over an input of shape [2, 4, 4]"),
    ("inputs", "node 'bn' (BatchNormalization): expected the inputs X, scale, B, mean and var"),
])
def test_refused_ops_name_the_node(tmp_path, case, needle):
    bn, ps = _bn("bn", "x", "y", 2, **({"training_mode": 1} if case == "training" else {}))
    if case == "mask":
        nodes, ps = [helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop")], []
    elif case == "axis":
        nodes, ps = [helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)], []
    elif case == "inputs":
        bn = helper.make_node("BatchNormalization", ["x", ps[0].name, ps[1].name], ["y"],
                              name="bn")
        nodes = [bn]
    else:
        nodes = [bn]
    path = tmp_path / "m.onnx"
    path.write_bytes(_one(nodes, ps))
    with pytest.raises(InputError) as e:
        load_onnx(path)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg


class UserCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 8)
        self.bn1 = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        x = self.drop(torch.relu(self.bn1(self.fc(x.flatten(1)))))
        return torch.softmax(self.out(x), dim=1)


def test_pipeline_model_onnx_cnn_to_a_version_2_qnet(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(0, 0.3, (300, 1, 6, 6)).astype(np.float32)
    x[y == 0, 0, :, 2] += 2
    x[y == 1, 0, 2, :] += 2
    x[y == 2, 0, 1:4, 1:4] += 1
    torch.manual_seed(0)
    m = UserCNN()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(60):
        b = torch.from_numpy(rng.integers(0, 240, 32))
        opt.zero_grad()
        nn.functional.nll_loss(torch.log(m(torch.from_numpy(x[b]))),
                               torch.from_numpy(y[b])).backward()
        opt.step()
    m.eval()
    onnx_path = export(m, torch.zeros(1, 1, 6, 6), tmp_path / "user.onnx", dynamic=True)
    np.savez(tmp_path / "d.npz", x_train=x[:240], y_train=y[:240], x_test=x[240:],
             y_test=y[240:])
    out = tmp_path / "out"
    assert main(["pipeline", "--model", str(onnx_path), "--data", str(tmp_path / "d.npz"),
                 "--out", str(out), "--no-progress", "--max-steps", "20", "--attempts", "1",
                 "--prune-rounds", "1", "--max-drop", "20"]) == 0
    from compress.qnet import load_qnet

    q = load_qnet(out / "model.qnet.npz", index_bits=8)
    assert q.version == 2 and q.input_shape == (1, 6, 6)
    assert [(ly.kind, ly.relu, ly.pool) for ly in q.layers] == [
        ("conv", True, (2, 2)), ("fc", True, (1, 1)), ("fc", False, (1, 1))]
    s = json.loads((out / "summary.json").read_text())
    assert "integer" in s["accuracy"] and (out / "sensitivity.json").is_file()
    assert main(["sensitivity", "--model", str(onnx_path), "--data", str(tmp_path / "d.npz"),
                 "--out", str(tmp_path / "sens"), "--no-progress", "--densities",
                 "1,0.5,0.2"]) == 0
    sens = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert len(json.dumps(sens)) > 0 and "conv" in json.dumps(sens)
    # encode-inputs and golden take the version 2 qnet
    np.save(tmp_path / "xt.npy", x[240:])
    assert main(["encode-inputs", "--model", str(out / "model.qnet.npz"), "--inputs",
                 str(tmp_path / "xt.npy"), "--out", str(tmp_path / "xi.npy")]) == 0
    assert np.load(tmp_path / "xi.npy").shape == (60, 36)
    assert main(["golden", "--model", str(out / "model.qnet.npz"), "--index-bits", "8",
                 "--inputs", str(tmp_path / "xi.npy"), "--out", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (60, 3)


def test_pipeline_model_refuses_an_onnx_cnn_the_engine_cannot_hold(tmp_path, capsys):
    m = nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), nn.ReLU(), nn.Flatten(),
                      nn.Linear(2 * 2 * 2, 2)).eval()
    onnx_path = export(m, torch.zeros(1, 1, 6, 6), tmp_path / "dil.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.normal(size=(20, 1, 6, 6)).astype(np.float32),
             y_train=rng.integers(0, 2, 20), x_test=rng.normal(size=(5, 1, 6, 6)).astype(
                 np.float32), y_test=rng.integers(0, 2, 5))
    assert main(["pipeline", "--model", str(onnx_path), "--data", str(tmp_path / "d.npz"),
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Conv2d '0'" in err and "dilation=(2, 2)" in err and "\n" not in err
    assert not (tmp_path / "o" / "model.qnet.npz").exists()
