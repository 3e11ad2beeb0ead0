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
    (["--pes", "65"], "--pes must be 1..64"),
    (["--acc-bits", "8"], "acc_bits must be 17..64"),
    (["--queue-depth", "0"], "--queue-depth must be 1..64"),
    (["--issue-width", "3"], "--issue-width must be 1, 2 or 4"),
    (["--issue-width", "4"], "--issue-width 4 --pipelined"),
    (["--issue-width", "1", "--pipelined"], "--issue-width 4 --pipelined"),
    (["--engine", "lockstep", "--pipelined"], "the EIE engine's, not the lockstep"),
    (["--engine", "eie", "--no-overlap"], "--no-overlap: the eie engine has no overlap"),
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


def test_run_refuses_output_equal_to_an_input(small):
    """An output equal to an input, or one that cannot be written: exit 2 before simulating."""
    _qnet, _x, d = small
    before = (d / "x.npy").read_bytes()
    for extra, expect in ((["--out", d / "x.npy"], "--out"),
                          (["--out", d / "y.npy", "--stats", d / "q.npz"], "--stats"),
                          (["--out", d / "y.npy", "--stats", d / "y.npy"], "same file"),
                          (["--out", d], "is a directory"),
                          (["--out", d / "x.npy" / "y.npy"], "is not a directory")):
        p = _tb("run", "--model", d / "q.npz", "--inputs", d / "x.npy", *extra)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and expect in lines[0], p.stderr
    assert (d / "x.npy").read_bytes() == before and not (d / "y.npy").exists()


@pytest.mark.parametrize("labels, expect", [
    (np.zeros((1, 12), np.int64), "expected 12 labels"),
    (np.zeros(11, np.int64), "expected 12 labels"),
    (np.zeros(12, np.float32), "expected integer class labels"),
    (np.full(12, -1), "negative class label"),
    (b"not an npy file", "not a valid .npy"),
    (None, "no such file"),
])
def test_sim_refuses_bad_labels(small, labels, expect, capsys):
    """A bad --labels file: exit 2 and one line naming it, before anything is built."""
    from tb.cli import main

    _qnet, _x, d = small
    path = d / "labels.npy"
    if isinstance(labels, bytes):
        path.write_bytes(labels)
    elif labels is not None:
        np.save(path, labels)
    status = main(["sim", "--model", str(d / "q.npz"), "--inputs", str(d / "x.npy"),
                   "--labels", str(path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert "--labels" in lines[0] and expect in lines[0], lines


def test_sim_user_network_with_labels(tmp_path):
    """tb sim (make sim MODEL= INPUTS= LABELS=) on a 12-20-8-3 network: generic wording."""
    qnet = random_qnet((12, 20, 8, 3), seed=2, density=0.5, shift=[6, 5, 4])
    save_qnet(qnet, tmp_path / "q.npz")
    x = random_inputs(4, 12, seed=3, density=0.7)
    np.save(tmp_path / "x.npy", x)
    labels = golden(qnet, x).argmax(axis=1)
    labels[0] = (labels[0] + 1) % 3  # one wrong label: 3/4
    np.save(tmp_path / "y.npy", labels)
    p = _tb("sim", "--model", tmp_path / "q.npz", "--inputs", tmp_path / "x.npy",
            "--labels", tmp_path / "y.npy", "--pes", 4, "--count", 3)
    assert p.returncode == 0, p.stderr
    assert "input  label  predicted  golden  cycles" in p.stdout
    assert "digit" not in p.stdout and "sample" not in p.stdout
    assert "bit-exact: 3/3" in p.stdout
    assert "accuracy on these inputs: 2/3" in p.stdout
    assert "golden model on all 4 inputs: 75.0%" in p.stdout


def test_verify_mnist_dispatches_every_argument(monkeypatch):
    """`tb verify-mnist ...` hands everything after the word to tb.verify.main, unparsed."""
    import types

    from tb.cli import main

    seen = []
    fake = types.ModuleType("tb.verify")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "tb.verify", fake)
    argv = ["verify-mnist", "--data", "d", "--pes", "8", "--engine", "eie", "-h", "--sim", "x"]
    assert main(argv) == 7
    assert seen == [argv[1:]]


def test_speed_reports_each_engine_and_checks_them(small, capsys):
    """`tb speed` (Icarus only here: the Verilator side is tests/test_tb_verilator.py's): a row
    per engine and simulator with its cycles/s, every run bit-exact."""
    _qnet, _x, d = small
    p = _tb("speed", "--model", d / "q.npz", "--inputs", d / "x.npy", "--count", 3,
            "--pes", 2, "--sims", "icarus", "--out", d / "speed.json")
    assert p.returncode == 0, p.stderr
    s = json.loads((d / "speed.json").read_text())
    assert [(r["engine"], r["simulator"]) for r in s["rows"]] == [("eie", "icarus"),
                                                                  ("lockstep", "icarus")]
    for r in s["rows"]:
        assert r["bit_exact"] == r["inputs"] == 3 and r["same_as_first"]
        assert r["cycles"] > 0 and r["cycles_per_s"] == pytest.approx(r["cycles"] / r["run_s"])
    assert "eie       icarus" in p.stdout
    from tb.cli import main

    for bad, expect in ((["--sims", "icarus,icarus"], "--sims must be distinct names"),
                        (["--sims", "ghdl"], "not 'ghdl'"), (["--engines", "tpu"], "--engines"),
                        (["--count", "1"], "--count must be >= 2")):
        assert main(["speed", "--model", str(d / "q.npz"), "--inputs", str(d / "x.npy"),
                     *bad]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0], (bad, lines)


@pytest.mark.parametrize("cmd", ["sim", "run"])
def test_lockstep_commands_do_not_place_an_eie_image(cmd, tmp_path, monkeypatch):
    """tb sim/run --engine lockstep build only the lockstep image: the EIE engine's placement
    (which ran for minutes on a 1.9 M-weight network) is never called. The simulator build is
    stopped by a stand-in once the images exist."""
    import images.eie
    import tb.sim
    from tb.cli import main

    class Built(Exception):
        pass

    def no_placement(*a, **k):
        raise AssertionError("the EIE placement ran for the lockstep engine")

    def stop(img, *a, **k):
        raise Built(type(img).__name__)

    monkeypatch.setattr(images.eie, "place_balanced", no_placement)
    monkeypatch.setattr(tb.sim, "build", stop)
    q = random_qnet((30, 16, 5), seed=1, density=0.3)
    save_qnet(q, tmp_path / "q.npz")
    np.save(tmp_path / "x.npy", random_inputs(3, 30, seed=2))
    args = ["--model", tmp_path / "q.npz", "--inputs", tmp_path / "x.npy", "--engine",
            "lockstep", "--pes", "4"]
    if cmd == "run":
        args += ["--out", tmp_path / "y.npy"]
    monkeypatch.setenv("TB_DEBUG", "1")  # let the stand-in's exception through
    with pytest.raises(Built, match="LockstepImage"):
        main([cmd, *map(str, args)])


@pytest.mark.parametrize("cnn", [False, True])
def test_run_picks_loadable_engine_for_fc_only(cnn, tmp_path, monkeypatch):
    """tb run builds the loadable EIE engine for a fully connected network and the fixed one
    for a CNN (the loadable engine has no conv layers yet). The simulator build is stopped by
    a stand-in that records the parameters."""
    import tb.sim
    from compress.synthetic import random_cnn
    from tb.cli import main

    class Built(Exception):
        pass

    def stop(img, params, *a, **k):
        raise Built(f"loadable={params.loadable}")

    monkeypatch.setattr(tb.sim, "build", stop)
    q = (random_cnn((1, 6, 6), [(3, 3, 1, 1, 2)], [4], seed=2, density=0.5, shift=9) if cnn
         else random_qnet((30, 16, 5), seed=1, density=0.3))
    save_qnet(q, tmp_path / "q.npz")
    np.save(tmp_path / "x.npy", random_inputs(3, q.in_features, seed=2))
    monkeypatch.setenv("TB_DEBUG", "1")  # let the stand-in's exception through
    with pytest.raises(Built, match=f"loadable={not cnn}"):
        main(["run", *map(str, ["--model", tmp_path / "q.npz", "--inputs", tmp_path / "x.npy",
                                "--pes", "2", "--out", tmp_path / "y.npy"])])
