"""The commands for your own network: pipeline --model, encode-inputs, sensitivity.

Bad input: exit status 2, one line on stderr, nothing written. And a tiny end-to-end run:
an ONNX network of a user's own class on 8x8 inputs (values 0..16, not MNIST) through
`pipeline --model`, `encode-inputs` and the golden model.
"""

import json
import warnings

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compress.cli import main


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(64, 24)
        self.out = nn.Linear(24, 4)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def _make(n, seed):
    """4 classes of 8x8 'images' with values 0..16: a bright band of rows per class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 7, (n, 8, 8)).astype(np.float32)
    for c in range(4):
        x[y == c, 2 * c:2 * c + 2, :] += 10
    return x, y


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    (xtr, ytr), (xv, yv), (xte, yte) = _make(400, 0), _make(150, 1), _make(150, 2)
    np.savez(d / "tiny.npz", x_train=xtr, y_train=ytr, x_val=xv, y_val=yv, x_test=xte,
             y_test=yte)
    torch.manual_seed(0)
    model = SmallNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model.eval(), torch.zeros(1, 8, 8), str(d / "tiny.onnx"), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    np.save(d / "x.npy", xte)
    # A network with an op the importer refuses.
    w = numpy_helper.from_array(np.ones((4, 64), np.float32), "W")
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "W"], ["h"], name="fc", transB=1),
         helper.make_node("Sigmoid", ["h"], ["y"], name="squash")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    (d / "sigmoid.onnx").write_bytes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return d


def _listing(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


def refused(capsys, argv, *words, root=None):
    """Run a command that must fail on bad input: exit 2, one line naming the problem, and
    no file added under `root`."""
    before = _listing(root) if root else None
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")
    for w in words:
        assert w in err, err
    if root:
        assert _listing(root) == before
    return err


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_pipeline_model_bad_input(files, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["pipeline", "--data", files / "tiny.npz", "--out", out, "--no-progress"]
    x, y = _make(20, 5)

    def run(argv, *words):
        refused(capsys, argv, *words, root=tmp_path)
        assert not out.exists()

    run(["pipeline", "--model", tmp_path / "none.onnx", "--data", files / "tiny.npz",
         "--out", out], "none.onnx", "no such file")
    run(base + ["--model", files / "sigmoid.onnx"], "'squash'", "Sigmoid")
    run(base + ["--model", files / "tiny.onnx", "--arch", "lenet-300-100"], "--arch", "--model")
    run(base + ["--model", files / "x.npy"], "x.npy", "ONNX")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07\xff\xff not onnx")
    run(base + ["--model", garbage], "garbage.onnx", "not a valid ONNX file")
    before = _listing(tmp_path)
    refused(capsys, ["pipeline", "--model", files / "tiny.onnx", "--out", out], "--data")
    assert _listing(tmp_path) == before

    def data(name, **arrays):
        return ["pipeline", "--model", files / "tiny.onnx", "--out", out, "--data",
                _npz(tmp_path / name, **arrays)]

    full = dict(x_train=x, y_train=y, x_test=x, y_test=y)
    run(data("m.npz", x_train=x, y_train=y, x_test=x), "m.npz", "missing key 'y_test'")
    run(data("e.npz", **full, x_valid=x), "e.npz", "unexpected key 'x_valid'")
    run(data("v.npz", **full, x_val=x), "v.npz", "x_val without y_val")
    run(data("l.npz", **{**full, "y_train": y[:-1]}), "x_train has 20", "y_train has 19")
    run(data("w.npz", **{**full, "x_train": np.zeros((20, 65), np.float32)}),
        "x_train", "65 values", "[8, 8]")
    run(data("f.npz", **{**full, "y_test": y.astype(np.float32)}), "y_test", "integer")
    run(data("s.npz", **{**full, "x_test": np.array([["a"] * 64] * 20)}), "x_test", "numbers")
    nan = x.copy()
    nan[3, 2, 1] = np.nan
    run(data("n.npz", **{**full, "x_train": nan}), "x_train", "NaN")
    not_npz = tmp_path / "nz.npz"
    not_npz.write_text("hello")
    run(["pipeline", "--model", files / "tiny.onnx", "--data", not_npz, "--out", out],
        "nz.npz")
    # --out names an existing file: refused, and the file is untouched.
    f = tmp_path / "file"
    f.write_text("keep")
    refused(capsys, ["pipeline", "--model", files / "tiny.onnx", "--data", files / "tiny.npz",
                     "--out", f], "not a directory", root=tmp_path)
    assert f.read_text() == "keep"
    # Flags of the recipes do not go with --model, and the reverse.
    run(base + ["--model", files / "tiny.onnx", "--ship", tmp_path / "ship"], "--ship")
    run(["pipeline", "--arch", "lenet-300-100", "--max-drop", "1", "--out", out], "--max-drop")


def test_encode_inputs_bad_input(files, tmp_path, capsys, qnet_path):
    out = tmp_path / "xi.npy"

    def run(inputs, *words, model=qnet_path, out=out):
        refused(capsys, ["encode-inputs", "--model", model, "--inputs", inputs, "--out", out],
                *words, root=tmp_path)

    run(tmp_path / "none.npy", "none.npy", "no such file")
    np.save(tmp_path / "w.npy", np.zeros((3, 65), np.float32))
    run(tmp_path / "w.npy", "w.npy", "65 values", "takes 64")
    np.save(tmp_path / "w2.npy", np.zeros((3, 7, 8), np.float32))
    run(tmp_path / "w2.npy", "w2.npy", "56 values")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    run(tmp_path / "o.npy", "o.npy")
    np.save(tmp_path / "s.npy", np.array([["x"] * 64] * 2))
    run(tmp_path / "s.npy", "s.npy", "numbers")
    np.save(tmp_path / "c.npy", np.zeros((2, 64), np.complex64))
    run(tmp_path / "c.npy", "c.npy", "numbers")
    nan = np.zeros((2, 64), np.float32)
    nan[1, 5] = np.inf
    np.save(tmp_path / "nan.npy", nan)
    run(tmp_path / "nan.npy", "nan.npy", "infinite")
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    run(tmp_path / "garbage.npy", "garbage.npy")
    (tmp_path / "bad.npz").write_bytes(b"not a qnet")
    run(files / "x.npy", "bad.npz", model=tmp_path / "bad.npz")
    # The output may not overwrite an input.
    np.save(tmp_path / "keep.npy", np.zeros((2, 64), np.float32))
    run(tmp_path / "keep.npy", "same file", out=tmp_path / "keep.npy")
    assert np.load(tmp_path / "keep.npy").dtype == np.float32


def test_sensitivity_bad_input(files, tmp_path, capsys):
    out = tmp_path / "sens"

    def run(argv, *words):
        refused(capsys, ["sensitivity", "--out", out, "--no-progress", *argv], *words,
                root=tmp_path)
        assert not out.exists()

    run(["--model", files / "sigmoid.onnx", "--data", files / "tiny.npz"], "Sigmoid")
    run(["--model", files / "tiny.onnx", "--data", tmp_path / "none.npz"], "none.npz")
    run(["--model", files / "tiny.onnx"], "--data")
    run([], "--model", "--arch")
    run(["--model", files / "tiny.onnx", "--arch", "lenet-5", "--data", files / "tiny.npz"],
        "--model", "--arch")
    run(["--model", files / "tiny.onnx", "--data", files / "tiny.npz", "--densities", "1,x"],
        "--densities")
    run(["--model", files / "tiny.onnx", "--data", files / "tiny.npz", "--densities", "1,0"],
        "densities")
    run(["--arch", "lenet-300-100"], "--checkpoint")
    x, y = _make(10, 3)
    bad = _npz(tmp_path / "b.npz", x_train=x, y_train=y, x_test=x, y_test=y + 4)
    run(["--model", files / "tiny.onnx", "--data", bad], "output", "labels up to 7")


def test_sensitivity_command(files, tmp_path, capsys):
    out = tmp_path / "sens"
    assert main(["sensitivity", "--model", str(files / "tiny.onnx"), "--data",
                 str(files / "tiny.npz"), "--out", str(out), "--no-progress",
                 "--densities", "1,0.5,0.2,0.05"]) == 0
    text = capsys.readouterr().out
    assert "val split" in text and "hidden" in text and "out" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "sensitivity.json", "sensitivity.png", "sensitivity.txt"]
    table = (out / "sensitivity.txt").read_text()
    assert table in text + "\n"
    s = json.loads((out / "sensitivity.json").read_text())
    assert s["densities"] == [1.0, 0.5, 0.2, 0.05] and set(s["acc"]) == {"hidden", "out"}


@pytest.fixture(scope="module")
def pipeline_run(files):
    """pipeline --model on the tiny network with short retraining; (exit status, out dir)."""
    out = files / "run"
    argv = ["pipeline", "--model", files / "tiny.onnx", "--data", files / "tiny.npz",
            "--out", out, "--max-steps", "15", "--prune-rounds", "1", "--attempts", "1",
            "--seed", "3", "--max-drop", "2", "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a max_drop miss is reported, not an error here
        status = main([str(a) for a in argv])
    return status, out


@pytest.fixture
def qnet_path(pipeline_run):
    status, out = pipeline_run
    assert status == 0
    return out / "model.qnet.npz"


def test_pipeline_model_end_to_end(files, pipeline_run, tmp_path, capsys):
    from compress.golden import golden, predict
    from compress.qnet import load_qnet

    status, out = pipeline_run
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "model.dcz", "model.qnet.npz", "report.txt", "sensitivity.json", "sensitivity.png",
        "sensitivity.txt", "summary.json"]
    s = json.loads((out / "summary.json").read_text())
    assert s["seed"] == 3 and s["max_drop"] == 2
    assert s["layers"] == ["hidden", "out"] and s["shape"] == [64, 24, 4]
    assert s["ratio"] == pytest.approx(s["uncompressed_bytes"] / (out / "model.dcz").stat().st_size)
    # The engine's inputs from the command line, then the golden model: the same integer
    # test accuracy the pipeline reported.
    xi = tmp_path / "xi.npy"
    capsys.readouterr()
    assert main(["encode-inputs", "--model", str(out / "model.qnet.npz"), "--inputs",
                 str(files / "x.npy"), "--out", str(xi)]) == 0
    assert "int16[150, 64]" in capsys.readouterr().out
    qnet = load_qnet(out / "model.qnet.npz", index_bits=8)
    x = np.load(files / "x.npy")
    enc = np.load(xi)
    assert enc.dtype == np.int16 and enc.shape == (150, 64)
    want = np.clip(np.floor(x.reshape(150, -1).astype(np.float64) * 2.0 ** qnet.input_frac
                            + 0.5), -32768, 32767)
    assert np.array_equal(enc, want)
    y = np.load(files / "tiny.npz")["y_test"]
    acc = 100.0 * float(np.mean(predict(golden(qnet, enc)) == y))
    assert acc == pytest.approx(s["accuracy"]["integer"]["test"])
    # The .dcz gives the same inputs.
    xi2 = tmp_path / "xi2.npy"
    assert main(["encode-inputs", "--model", str(out / "model.dcz"), "--inputs",
                 str(files / "x.npy"), "--out", str(xi2)]) == 0
    assert xi.read_bytes() == xi2.read_bytes()


def test_pipeline_model_conv_compresses_to_a_version_2_qnet(files, tmp_path, capsys):
    """Conv/MaxPool networks compress to a version 2 qnet and its .dcz (the golden model runs
    it; the engines do not run conv layers yet: summary "engine" is false)."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(48, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(conv.eval(), torch.zeros(1, 1, 8, 8), str(tmp_path / "conv.onnx"),
                          dynamo=False)
    out = tmp_path / "out"
    # The data are [n, 8, 8]; the network takes [n, 1, 8, 8]: same values per example.
    assert main(["pipeline", "--model", str(tmp_path / "conv.onnx"), "--data",
                 str(files / "tiny.npz"), "--out", str(out), "--max-steps", "5",
                 "--prune-rounds", "1", "--attempts", "1", "--max-drop", "100",
                 "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "no qnet" not in cap.out and "model.qnet.npz" in cap.out
    assert all(line.startswith("warning: ") for line in cap.err.splitlines())
    assert sorted(p.name for p in out.iterdir()) == [
        "model.dcz", "model.qnet.npz", "report.txt", "sensitivity.json", "sensitivity.png",
        "sensitivity.txt", "summary.json"]
    s = json.loads((out / "summary.json").read_text())
    assert s["engine"] is False and s["kinds"] == ["conv", "fc"]
    from compress.qnet import load_qnet

    q = load_qnet(out / "model.qnet.npz", index_bits=8)
    assert q.version == 2 and q.input_shape == (1, 8, 8) and q.layers[0].pool == (2, 2)


def test_encode_inputs_takes_an_array_of_an_npz(files, qnet_path, tmp_path, capsys):
    """encode-inputs --inputs D.npz:x_test (or --inputs D.npz --key x_test): the array of the
    data set .npz that pipeline took, encoded exactly as the same array in an .npy; an .npz
    without a key, or with one it lacks, is refused naming the arrays it holds."""
    x = np.load(files / "x.npy")
    d = tmp_path / "D.npz"
    np.savez(d, x_train=x[:10], y_train=np.zeros(10, np.int64), x_test=x)
    outs = []
    for n, argv in enumerate(([f"{d}:x_test"], [str(d), "--key", "x_test"],
                              [str(files / "x.npy")])):
        out = tmp_path / f"xi{n}.npy"
        assert main(["encode-inputs", "--model", str(qnet_path), "--inputs", *argv,
                     "--out", str(out)]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    capsys.readouterr()
    refused(capsys, ["encode-inputs", "--model", qnet_path, "--inputs", d, "--out",
                     tmp_path / "o.npy"], "is an .npz", "x_train, y_train, x_test", root=tmp_path)
    refused(capsys, ["encode-inputs", "--model", qnet_path, "--inputs", f"{d}:x_val", "--out",
                     tmp_path / "o.npy"], "no array 'x_val'", root=tmp_path)
    refused(capsys, ["encode-inputs", "--model", qnet_path, "--inputs", files / "x.npy",
                     "--key", "x_test", "--out", tmp_path / "o.npy"], "one array",
            root=tmp_path)


def test_pipeline_says_when_it_holds_out_a_validation_split(files, tmp_path, capsys):
    """A data set without x_val/y_val: the pipeline says on stderr that it held a tenth of
    x_train out (at the start in the stage lines, or at the end with --no-progress), and the
    report names the examples; the result line gives the drop with the split's resolution and
    never below zero."""
    d = np.load(files / "tiny.npz")
    data = tmp_path / "noval.npz"
    np.savez(data, **{k: d[k] for k in ("x_train", "y_train", "x_test", "y_test")})
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["pipeline", "--model", str(files / "tiny.onnx"), "--data", str(data),
                     "--out", str(out), "--max-steps", "5", "--prune-rounds", "1",
                     "--attempts", "1", "--max-drop", "50", "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "has no x_val/y_val: 40 examples of x_train were held out" in cap.err
    assert "40 examples held out of train" in (out / "report.txt").read_text()
    line = next(ln for ln in cap.out.splitlines() if "validation drop" in ln)
    assert "on 40 examples, 2.50 points each" in line and "drop -" not in line
