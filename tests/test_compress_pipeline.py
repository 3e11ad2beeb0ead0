"""Smoke runs of the whole pipeline and of each stage alone via the CLI (a few hundred steps)."""

import json

import numpy as np
import pytest

from compress.cli import main
from compress.dcz import read_dcz
from compress.shipped import SHIPPED_QNET
from compress.pipeline import RECIPES, make_config
from compress.qnet import load_qnet
from compress.train import load_checkpoint

FAST = ["--max-steps", "60", "--val-size", "1000", "--no-progress", "--seed", "3",
        "--set", "fixedpoint.calib_images=2000", "--set", "fixedpoint.verify_golden=false"]


def test_pipeline_smoke(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    rc = main(["pipeline", "--data", str(mnist_dir), "--out", str(out), *FAST,
               "--set", "prune.steps=2", "--ship", str(tmp_path / "ship")])
    assert rc == 0
    for f in ("dense.npz", "pruned.npz", "quantized.npz", "model.qnet.npz", "model.dcz",
              "report.txt", "weights.png", "summary.json"):
        assert (out / f).stat().st_size > 0, f
    qnet = load_qnet(out / "model.qnet.npz")  # 4-bit indices: runs on the engine
    assert read_dcz(out / "model.dcz").equals(qnet)
    shipped = load_qnet(tmp_path / "ship" / SHIPPED_QNET.name)
    assert shipped.equals(qnet)
    assert (tmp_path / "ship" / "mnist-test-100.npz").exists()
    s = json.loads((out / "summary.json").read_text())
    assert set(s["errors"]) == {"dense", "pruned", "quantized", "integer"}
    assert s["errors"]["integer"]["test"] < 30  # 300 steps in all: learning, not converged
    assert s["max_acc_log2"] < 31
    lv = make_config("lenet-300-100").prune.level_for  # the recipe's levels times its scale
    assert RECIPES["lenet-300-100"]["prune"]["levels"]["fc1"] * 0.7 == pytest.approx(lv("fc1"))
    assert s["density"][-1]["kept_pct"] == pytest.approx(
        100 * (lv("fc1") * 235200 + lv("fc2") * 30000 + lv("fc3") * 1000) / 266200, abs=0.01)
    # The table states the size of the file actually on disk.
    assert f"{(out / 'model.dcz').stat().st_size:,} bytes" in (out / "report.txt").read_text()
    text = capsys.readouterr().out
    assert "integer (golden" in text and "shipped" in text

    # Same seed, same command -> same bytes.
    out2 = tmp_path / "run2"
    assert main(["pipeline", "--data", str(mnist_dir), "--out", str(out2), *FAST,
                 "--set", "prune.steps=2", "--stages", "train,prune"]) == 0
    a, b = load_checkpoint(out / "pruned.npz"), load_checkpoint(out2 / "pruned.npz")
    assert all(np.array_equal(a.state[k], b.state[k]) for k in a.state)

    # The report command reads the .dcz back.
    assert main(["report", "--model", str(out / "model.dcz"), "--dense", str(out / "dense.npz"),
                 "--pruned", str(out / "pruned.npz"), "--quantized", str(out / "quantized.npz"),
                 "--png", str(tmp_path / "w.png")]) == 0
    assert (tmp_path / "w.png").exists()


def test_stages_alone(tmp_path, mnist_dir):
    d = ["--data", str(mnist_dir), *FAST]
    assert main(["train", *d, "--out", str(tmp_path / "dense.npz")]) == 0
    assert main(["prune", *d, "--checkpoint", str(tmp_path / "dense.npz"), "--method", "std",
                 "--level", "1.0", "--steps", "2", "--out", str(tmp_path / "pruned.npz")]) == 0
    ck = load_checkpoint(tmp_path / "pruned.npz")
    assert ck.stage == "pruned" and set(ck.masks) == {"fc1", "fc2", "fc3"}
    assert main(["quantize", *d, "--checkpoint", str(tmp_path / "pruned.npz"), "--bits", "3",
                 "--out", str(tmp_path / "q.npz"), "--qnet", str(tmp_path / "q.qnet.npz"),
                 "--dcz", str(tmp_path / "q.dcz")]) == 0
    q = load_checkpoint(tmp_path / "q.npz")
    assert all(len(cb) == 8 for cb in q.codebooks.values())
    for name, mask in ck.masks.items():
        assert np.all(q.indices[name][~mask.numpy()] == 0)
    assert read_dcz(tmp_path / "q.dcz").equals(load_qnet(tmp_path / "q.qnet.npz"))


@pytest.mark.parametrize("argv, msg", [
    (["pipeline", "--data", "/nonexistent/mnist"], "does not exist"),
    (["pipeline", "--set", "prune.method=bogus"], "pruning method"),
    (["pipeline", "--set", "train.nope=1"], "unknown setting"),
    (["pipeline", "--arch", "vgg"], "unknown model"),
    (["prune", "--checkpoint", "/nonexistent.npz", "--out", "x.npz"], "no such file"),
])
def test_bad_input_exit_2(tmp_path, monkeypatch, mnist_dir, capsys, argv, msg):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    assert main([*argv, "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("build/compress/*.npz"))


def test_lenet5_writes_a_version_2_qnet_and_its_dcz(tmp_path, small_mnist_dir):
    """LeNet-5 is an integer network: a version 2 qnet (conv layers with their pooling), the
    .dcz it unpacks from (version 3), and its integer error by the golden model."""
    from compress.dcz import unpack
    from compress.qnet import load_qnet

    out = tmp_path / "l5"
    assert main(["pipeline", "--arch", "lenet-5", "--data", str(small_mnist_dir), "--out", str(out),
                 "--max-steps", "20", "--val-size", "500", "--no-progress", "--seed", "3",
                 "--set", "prune.steps=1", "--set", "fixedpoint.calib_images=500"]) == 0
    data = (out / "model.dcz").read_bytes()
    s = json.loads((out / "summary.json").read_text())
    assert s["dcz_bytes"] == len(data) and data[4] == 3
    assert s["ratio"] == pytest.approx(4 * 431080 / len(data))
    qnet = load_qnet(out / "model.qnet.npz", index_bits=8)
    assert unpack(data).equals(qnet) and qnet.version == 2
    assert qnet.input_shape == (1, 28, 28)
    assert [(ly.kind, ly.relu, ly.pool) for ly in qnet.layers] == [
        ("conv", False, (2, 2)), ("conv", False, (2, 2)), ("fc", True, (1, 1)),
        ("fc", False, (1, 1))]
    assert [ly.index.shape for ly in qnet.layers] == [(20, 25), (50, 500), (500, 800), (10, 500)]
    assert {"dense", "pruned", "quantized", "integer"} <= set(s["errors"])
    assert len(s["bias_round"]) == 4