"""The worked example (examples/own_network.py) end to end: a user's 4-layer network on data
that is not MNIST, through compress_model -> save -> golden -> tb run -> the simulated board."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_own_network_example_end_to_end(tmp_path):
    out = tmp_path / "example"
    r = subprocess.run([sys.executable, str(REPO / "examples" / "own_network.py"),
                        "--out", str(out), "--count", "40", "--board-count", "3",
                        # The UART weight load is covered by tests/test_fpga_board.py; here
                        # it would double the run time (about 40 s of simulated UART).
                        "--board-preloaded"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "RTL engine: bit-exact 40/40" in r.stdout
    assert "example: OK" in r.stdout
    for name in ("model.dcz", "model.qnet.npz", "report.txt", "summary.json", "xi.npy",
                 "y_golden.npy", "y_rtl.npy", "stats.json"):
        assert (out / name).is_file(), name
    # What the RTL engine produced is what the golden model produced, bit for bit.
    assert np.array_equal(np.load(out / "y_golden.npy"), np.load(out / "y_rtl.npy"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pes"] == 8 and len(stats["cycles"]) == 40
    assert len(stats["layer_cycles"][0]) == 4
    # The simulated board agreed with the golden model on every input it was sent.
    assert "3/3 output vectors bit-exact" in r.stdout


def test_own_cnn_example_python_and_onnx(tmp_path):
    """examples/own_cnn.py: a user's CNN with BatchNorm on generated stroke images, through
    compress_model and through ONNX, to version 2 qnets whose golden outputs agree."""
    from compress.qnet import load_qnet

    out = tmp_path / "cnn"
    r = subprocess.run([sys.executable, str(REPO / "examples" / "own_cnn.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "example: OK" in r.stdout
    assert "golden command line = golden in Python, bit for bit: True" in r.stdout
    for sub in ("python", "onnx"):
        q = load_qnet(out / sub / "model.qnet.npz", index_bits=8)
        assert q.version == 2 and q.input_shape == (1, 12, 12)
        assert [ly.kind for ly in q.layers] == ["conv", "conv", "fc", "fc"]
        assert [ly.pool for ly in q.layers[:2]] == [(2, 2), (2, 2)]
        s = json.loads((out / sub / "summary.json").read_text())
        acc = s["accuracy"]
        assert abs(acc["integer"]["test"] - acc["quantized"]["test"]) <= 0.3
