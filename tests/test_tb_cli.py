"""`python -m tb run`: outputs and stats of the RTL engine, and refusals with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compress.golden import golden
from compress.qnet import save_qnet
from compress.synthetic import random_inputs, random_qnet

REPO = Path(__file__).resolve().parents[1]


def _tb(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "tb", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def small(tmp_path):
    qnet = random_qnet((20, 11, 6), seed=7, density=0.3, shift=[8, 5])
    save_qnet(qnet, tmp_path / "q.npz")
    x = random_inputs(12, 20, seed=8, density=0.4)
    np.save(tmp_path / "x.npy", x)
    return qnet, x, tmp_path


def test_run_writes_outputs_and_stats(small):
    qnet, x, d = small
    p = _tb("run", "--model", d / "q.npz", "--inputs", d / "x.npy", "--out", d / "y.npy",
            "--pes", 3, "--stats", d / "s.json")
    assert p.returncode == 0, p.stderr
    y = np.load(d / "y.npy", allow_pickle=False)
    np.testing.assert_array_equal(y, golden(qnet, x))
    s = json.loads((d / "s.json").read_text())
    assert s["pes"] == 3
    assert len(s["cycles"]) == 12 and len(s["layer_cycles"]) == 12
    assert all(len(lc) == 2 and c > sum(lc) for c, lc in zip(s["cycles"], s["layer_cycles"]))
    assert not [f for f in d.iterdir() if f.name.startswith(".")]  # no temporaries left


def test_run_lockstep_engine(small):
    qnet, x, d = small
    p = _tb("run", "--model", d / "q.npz", "--inputs", d / "x.npy", "--out", d / "y.npy",
            "--pes", 4, "--engine", "lockstep", "--drain-share", 2, "--stats", d / "s.json")
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(np.load(d / "y.npy", allow_pickle=False), golden(qnet, x))
    assert json.loads((d / "s.json").read_text())["design"] == "lockstep"


@pytest.mark.parametrize("extra,expect", [
    (["--engine", "lockstep", "--drain-share", "3"], "--drain-share must be 1, 2, 4, 8 or 16"),
    (["--engine", "lockstep", "--dense"], "--dense is the EIE engine's baseline"),
    (["--max-width", "16"], "l0: 20 inputs exceed the activation buffers of 16 words"),
    (["--index-bits", "2"], "l0.codebook: 16 entries exceed 2**index_bits = 4"),
    (["--pes", "17"], "--pes must be 1..16"),
    (["--acc-bits", "8"], "acc_bits must be 17..64"),
    (["--queue-depth", "0"], "--queue-depth must be 1..64"),
])
def test_run_refuses_what_does_not_fit(small, extra, expect):
    _qnet, _x, d = small
    p = _tb("run", "--model", d / "q.npz", "--inputs", d / "x.npy", "--out", d / "y.npy",
            "--stats", d / "s.json", *extra)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], p.stderr
    assert not (d / "y.npy").exists() and not (d / "s.json").exists()


def test_run_refuses_bad_inputs(small, tmp_path):
    _qnet, _x, d = small
    np.save(d / "bad.npy", np.zeros((3, 19), np.int16))
    p = _tb("run", "--model", d / "q.npz", "--inputs", d / "bad.npy", "--out", d / "y.npy")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = _tb("run", "--model", d / "missing.npz", "--inputs", d / "x.npy", "--out", d / "y.npy")
    assert p.returncode == 2 and "missing.npz" in p.stderr, p.stderr
    assert not (d / "y.npy").exists()
