"""ONNX import: torch export -> load_onnx gives the same outputs; everything else refused."""

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compress.errors import InputError
from compress.onnx_import import load_onnx


def export(model, example, path, dynamic=False):
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated; the dynamo one needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), example, str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}} if dynamic else None)
    return path


class MyMLP(nn.Module):
    """The common case: a class of one's own, flattening [N, 8, 8] inputs in forward."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(64, 24)
        self.out = nn.Linear(24, 10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return self.out(torch.relu(self.hidden(x)))


class MatMulNet(nn.Module):
    """Exports as MatMul + Add (no Gemm)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 7))
        self.b = nn.Parameter(torch.randn(7))

    def forward(self, x):
        return torch.relu(x.flatten(1) @ self.w + self.b)


def _nets():
    torch.manual_seed(0)
    return {
        "sequential": (nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                                     nn.Linear(8, 3)), (20,)),
        "custom": (MyMLP(), (8, 8)),
        "matmul": (MatMulNet(), (8, 8)),
        "conv": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(4, 6, 3, stride=2), nn.ReLU(), nn.Flatten(),
                               nn.Linear(6, 5)), (1, 8, 8)),
    }


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed-batch", "dynamic-batch"])
@pytest.mark.parametrize("name", list(_nets()))
def test_round_trip(tmp_path, name, dynamic):
    model, shape = _nets()[name]
    path = export(model, torch.randn(2, *shape), tmp_path / f"{name}.onnx", dynamic)
    imported = load_onnx(path)
    assert isinstance(imported, nn.Sequential)
    assert imported.input_shape == shape
    x = torch.randn(5, *shape)
    with torch.no_grad():
        assert torch.allclose(imported(x), model(x), atol=1e-5)
    kinds = {type(m) for m in imported}
    assert kinds <= {nn.Linear, nn.ReLU, nn.Flatten, nn.Conv2d, nn.MaxPool2d}
    if name != "conv":
        assert nn.Conv2d not in kinds
    # Layers keep the names of the user's modules (from the exporter's initializer names).
    want = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    got = {n for n, m in imported.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert got == (want if name != "matmul" else {"linear1"})


def _graph_model(nodes, inits, in_shape=(None, 4), out="y", opset=17, inputs=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *in_shape[1:]])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", inputs or [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _save(m, path):
    path.write_bytes(m.SerializeToString())
    return path


def test_gemm_alpha_beta_transb0_and_matmul_add(tmp_path):
    rng = np.random.default_rng(0)
    b0 = rng.normal(size=(4, 3)).astype(np.float32)  # [in, out]: transB = 0
    c0 = rng.normal(size=(1, 3)).astype(np.float32)
    w1 = rng.normal(size=(3, 2)).astype(np.float32)
    c1 = rng.normal(size=(2,)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "B0", "C0"], ["h"], name="g0", alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W1"], ["m"], name="mm"),
        helper.make_node("Add", ["C1", "m"], ["y"], name="bias"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((b0, "B0"), (c0, "C0"), (w1, "W1"), (c1, "C1"))]
    model = load_onnx(_save(_graph_model(nodes, inits), tmp_path / "m.onnx"))
    x = rng.normal(size=(6, 4)).astype(np.float32)
    want = np.maximum(0.5 * x @ b0 + 2.0 * c0, 0) @ w1 + c1
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    assert model.input_shape == (4,)


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_refused_op_names_the_node(tmp_path):
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], name="fc", transB=1),
             helper.make_node("Sigmoid", ["h"], ["y"], name="squash")]
    path = _save(_graph_model(nodes, [w]), tmp_path / "sig.onnx")
    with pytest.raises(InputError) as e:
        load_onnx(path)
    msg = _one_line(e)
    assert "'squash'" in msg and "Sigmoid" in msg and str(path) in msg


def test_softmax_only_as_the_last_op(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    path = export(model, torch.randn(2, 4), tmp_path / "sm.onnx")
    seq = load_onnx(path)
    assert isinstance(seq[-1], nn.Softmax)
    model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1), nn.Linear(3, 2))
    path = export(model, torch.randn(2, 4), tmp_path / "sm2.onnx")
    with pytest.raises(InputError, match="follows the .*Softmax.*only dropped as the last op"):
        load_onnx(path)


@pytest.mark.parametrize("case", ["garbage", "truncated", "empty", "missing", "directory"])
def test_refused_bad_files(tmp_path, case):
    path = tmp_path / "bad.onnx"
    if case == "garbage":
        path.write_bytes(b"\xff\xfe not a protobuf \x00\x01" * 20)
    elif case in ("truncated", "empty"):
        good = export(nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 2)),
                      torch.randn(1, 30), tmp_path / "good.onnx").read_bytes()
        path.write_bytes(good[: len(good) // 2] if case == "truncated" else b"")
    elif case == "directory":
        path.mkdir()
    with pytest.raises(InputError) as e:
        load_onnx(path)
    assert str(path) in _one_line(e)


def test_refused_sizes_and_external_data(tmp_path):
    def gemm_with(t):
        return _graph_model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], [t])

    # A few bytes declaring a huge tensor: refused before anything is allocated.
    huge = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    with pytest.raises(InputError, match="exceed the limit"):
        load_onnx(_save(gemm_with(huge), tmp_path / "huge.onnx"))
    short = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[3, 4], raw_data=b"\0" * 8)
    with pytest.raises(InputError, match=r"declares \[3, 4\] but holds 8 bytes"):
        load_onnx(_save(gemm_with(short), tmp_path / "short.onnx"))
    ext = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[3, 4],
                      data_location=TensorProto.EXTERNAL)
    ext.external_data.add(key="location", value="/etc/passwd")
    with pytest.raises(InputError, match="external data"):
        load_onnx(_save(gemm_with(ext), tmp_path / "ext.onnx"))
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    with pytest.raises(InputError, match="max_weights=10 "):
        load_onnx(_save(gemm_with(w), tmp_path / "ok.onnx"), max_elements=10)


def test_refused_graph_shapes(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    # A residual connection is not a chain.
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "x"], ["y"], name="skip")]
    with pytest.raises(InputError, match="'skip'.*constant bias"):
        load_onnx(_save(_graph_model(nodes, [w]), tmp_path / "res.onnx"))
    # A reshape that is not a flatten.
    shape = numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "S")
    nodes = [helper.make_node("Reshape", ["x", "S"], ["y"], name="rs")]
    with pytest.raises(InputError, match="'rs'.*only a flatten"):
        load_onnx(_save(_graph_model(nodes, [shape]), tmp_path / "rs.onnx"))
    # Weights fed as a second graph input rather than a constant.
    wi = helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 4])
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    with pytest.raises(InputError, match="2 inputs"):
        load_onnx(_save(_graph_model(nodes, [], inputs=[xi, wi]), tmp_path / "in.onnx"))
    # Width mismatch between the input and the first weight.
    nodes = [helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1)]
    with pytest.raises(InputError, match="'fc'.*takes 4 inputs.*gives 5"):
        load_onnx(_save(_graph_model(nodes, [w], in_shape=(None, 5)), tmp_path / "w.onnx"))
    # An op from another domain.
    nodes = [helper.make_node("FusedGemm", ["x", "W"], ["y"], name="f", domain="com.microsoft")]
    with pytest.raises(InputError, match="com.microsoft.FusedGemm"):
        load_onnx(_save(_graph_model(nodes, [w]), tmp_path / "d.onnx"))


def test_parse_only_checks_the_model_is_valid_onnx(tmp_path):
    """What the importer accepts is well-formed ONNX (the checker agrees)."""
    model, shape = _nets()["custom"]
    path = export(model, torch.randn(2, *shape), tmp_path / "c.onnx", dynamic=True)
    onnx.checker.check_model(onnx.load(str(path), load_external_data=False))
    assert load_onnx(path).input_shape == (8, 8)
