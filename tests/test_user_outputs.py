"""`pipeline --model` and `sensitivity` follow export-rom's rule for their --out DIR: a new or
empty DIR, else refused unless --force, and with --force only the command's own files are
replaced; a directory in the way of an output, or an output that is an input, is refused. All
of it checked before the run (no training, no sensitivity sweep, nothing written)."""

import time

import numpy as np
import pytest

from compress.cli import main

from . import onnx_cases as C


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("net")
    (d / "m.onnx").write_bytes(C.small_valid())  # [n, 2, 3] -> 3 classes
    C.data_npz(d / "d.npz", None, shape=(2, 3), n=60, classes=3)
    return d


def _run(argv, capsys):
    capsys.readouterr()
    t = time.process_time()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err, time.process_time() - t


def _listing(d):
    return {p.name: (p.read_bytes() if p.is_file() else "dir") for p in d.iterdir()}


FAST = ["--max-steps", "2", "--prune-rounds", "1", "--attempts", "1", "--no-progress"]


@pytest.mark.parametrize("command", ["pipeline", "sensitivity"])
def test_users_files_in_out_are_never_replaced_without_force(net, tmp_path, capsys, command):
    """Item 6: the user's report.txt and summary.json (and sensitivity.*) were overwritten,
    exit 0; now refused before the run."""
    out = tmp_path / "out"
    out.mkdir()
    mine = {"report.txt": b"my report", "summary.json": b"{}", "sensitivity.txt": b"mine",
            "notes.txt": b"keep"}
    for k, v in mine.items():
        (out / k).write_bytes(v)
    argv = [command, "--model", net / "m.onnx", "--data", net / "d.npz", "--out", out]
    if command == "pipeline":
        argv += FAST
    else:
        argv += ["--densities", "1,0.5", "--no-progress"]
    rc, err, cpu = _run(argv, capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert "not empty" in err and "--force" in err, err
    assert _listing(out) == mine
    assert cpu < 1.0  # refused before the run: nothing trained or measured
    # --force: the command's files are written (its own names replaced), the rest untouched.
    rc, err, _ = _run(argv + ["--force"], capsys)
    assert rc == 0, err
    got = _listing(out)
    assert got["notes.txt"] == b"keep"
    if command == "pipeline":
        assert got["report.txt"] != b"my report" and got["summary.json"] != b"{}"
        assert {"model.dcz", "model.qnet.npz", "sensitivity.json"} <= set(got)
    else:
        assert got["report.txt"] == b"my report" and got["summary.json"] == b"{}"
        assert got["sensitivity.txt"] != b"mine" and "sensitivity.png" in got
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


@pytest.mark.parametrize("command", ["pipeline", "sensitivity"])
def test_a_directory_in_the_way_is_refused_before_the_run(net, tmp_path, capsys, command):
    """A directory named DIR/model.dcz gave exit 1 naming a temporary path, after the whole
    run: now exit 2 before it, naming the output, with or without --force."""
    out = tmp_path / "out"
    name = "model.dcz" if command == "pipeline" else "sensitivity.png"
    (out / name).mkdir(parents=True)
    for extra in ([], ["--force"]):
        argv = [command, "--model", net / "m.onnx", "--data", net / "d.npz", "--out", out,
                *extra, "--no-progress"]
        rc, err, cpu = _run(argv, capsys)
        assert rc == 2 and err.count("\n") == 1, err
        want = f"{name} is a directory" if extra else "not empty"
        assert want in err and ".tmp" not in err, err
        assert cpu < 1.0
    assert _listing(out) == {name: "dir"}


def test_an_input_inside_out_survives(net, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_bytes((net / "d.npz").read_bytes())
    rc, err, _ = _run(["pipeline", "--model", net / "m.onnx", "--data", out / "summary.json",
                       "--out", out, "--force", *FAST], capsys)
    assert rc == 2 and "same file as the input" in err, err
    assert (out / "summary.json").read_bytes() == (net / "d.npz").read_bytes()


def test_empty_or_new_out_needs_no_force(net, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new" / "deeper"):
        rc, err, _ = _run(["sensitivity", "--model", net / "m.onnx", "--data", net / "d.npz",
                           "--out", out, "--densities", "1,0.5", "--no-progress"], capsys)
        assert rc == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["sensitivity.json", "sensitivity.png",
                                                        "sensitivity.txt"]
    rc, err, _ = _run(["pipeline", "--arch", "lenet-300-100", "--out", tmp_path / "x",
                       "--force"], capsys)
    assert rc == 2 and "--force goes with --model" in err, err


def test_data_with_the_model(net):
    """The fixture's data fit the model (3 classes of [2, 3] inputs)."""
    d = np.load(net / "d.npz")
    assert d["x_train"].shape[1:] == (2, 3) and d["y_train"].max() < 3
