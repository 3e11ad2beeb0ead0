"""The qnet file: writer/loader round trip, and every bad-input case of docs/formats.md
section 2 and docs/limits.md on both `golden` and `export-rom` (exit 2, one line on stderr,
nothing written)."""

import subprocess
import sys

import numpy as np
import pytest

from compress.cli import main
from compress.errors import InputError
from compress.qnet import load_qnet, save_qnet
from compress.synthetic import random_inputs, random_qnet

from .conftest import REPO


def _small():
    return random_qnet((12, 7, 5, 3), seed=3, density=0.5)


def test_round_trip_is_exact_and_deterministic(tmp_path):
    q = _small()
    save_qnet(q, tmp_path / "a.npz")
    save_qnet(q, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert load_qnet(tmp_path / "a.npz").equals(q)


def test_checksum_detects_corruption(tmp_path):
    q = _small()
    save_qnet(q, tmp_path / "q.npz")
    arrays = dict(np.load(tmp_path / "q.npz"))
    arrays["l1.bias"] = arrays["l1.bias"] + 1
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match="meta.sha256"):
        load_qnet(tmp_path / "bad.npz")


def test_plain_user_qnet_without_checksum_loads(tmp_path):
    q = _small()
    np.savez(tmp_path / "user.npz", **q.to_arrays())
    assert load_qnet(tmp_path / "user.npz").equals(q)


def _mutations():
    """(name, expected words in the message, function arrays -> arrays)."""

    def drop(key):
        return lambda a: {k: v for k, v in a.items() if k != key}

    def setv(key, value):
        return lambda a: {**a, key: value}

    def cb(fn):
        def m(a):
            c = a["l1.codebook"].copy()
            return {**a, "l1.codebook": fn(c)}

        return m

    return [
        ("missing version", "version", drop("version")),
        ("missing num_layers", "num_layers", drop("num_layers")),
        ("missing codebook", "l1.codebook", drop("l1.codebook")),
        ("missing index", "l2.index", drop("l2.index")),
        ("missing bias", "l0.bias", drop("l0.bias")),
        ("missing shift", "l0.shift", drop("l0.shift")),
        ("missing relu", "l2.relu", drop("l2.relu")),
        ("bad version", "version", setv("version", np.array(3))),
        ("codebook dtype", "l1.codebook", lambda a: {**a, "l1.codebook": a["l1.codebook"].astype(np.int32)}),
        ("index dtype", "l0.index", lambda a: {**a, "l0.index": a["l0.index"].astype(np.int16)}),
        ("bias dtype", "l2.bias", lambda a: {**a, "l2.bias": a["l2.bias"].astype(np.int64)}),
        ("index shape", "l1.index", lambda a: {**a, "l1.index": a["l1.index"].ravel()}),
        ("bias shape", "l1.bias", lambda a: {**a, "l1.bias": a["l1.bias"][:-1]}),
        ("codebook[0] != 0", "l1.codebook", cb(lambda c: np.where(np.arange(len(c)) == 0, 5, c).astype(np.int16))),
        ("index >= K", "l1.index", cb(lambda c: c[:3])),
        ("K > 2**index_bits", "l1.codebook", cb(lambda c: np.concatenate([c, np.ones(3, np.int16)]))),
        ("mismatched sizes", "l1", lambda a: {**a, "l1.index": a["l1.index"][:, :-1]}),
        ("negative shift", "l0.shift", setv("l0.shift", np.array(-1))),
        ("shift not an int", "l0.shift", setv("l0.shift", np.array(1.5))),
        ("relu not a bool", "l1.relu", setv("l1.relu", np.array(3))),
        ("unexpected layer", "l3.index", setv("l3.index", np.zeros((2, 2), np.uint8))),
    ]


def _write_bad(tmp_path, mutate):
    arrays = _small().to_arrays()
    path = tmp_path / "bad.npz"
    np.savez(path, **mutate(arrays))
    return path


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("name,words,mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_qnet_refused_by_golden_and_export_rom(tmp_path, capsys, name, words, mutate):
    bad = _write_bad(tmp_path, mutate)
    x = tmp_path / "x.npy"
    np.save(x, random_inputs(2, 12))
    for argv, out in (
        (["golden", "--model", bad, "--inputs", x, "--out", tmp_path / "y.npy"], tmp_path / "y.npy"),
        (["export-rom", "--model", bad, "--pes", 2, "--out", tmp_path / "rom"], tmp_path / "rom"),
    ):
        rc, err = _run(argv, capsys)
        assert rc == 2, (name, argv[0], err)
        assert err.count("\n") == 1 and words in err, err
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "x.npy"]


@pytest.mark.parametrize(
    "make_x,words",
    [
        (lambda: random_inputs(2, 11), "l0 takes 12"),
        (lambda: random_inputs(2, 13), "l0 takes 12"),
        (lambda: np.zeros((2, 12), np.float32), "dtype"),
        (lambda: np.full((2, 12), 40000, np.int32), "int16"),
        (lambda: np.zeros((2, 3, 12), np.int16), "shape"),
    ],
)
def test_bad_inputs_refused(tmp_path, capsys, make_x, words):
    save_qnet(_small(), tmp_path / "q.npz")
    np.save(tmp_path / "x.npy", make_x())
    rc, err = _run(["golden", "--model", tmp_path / "q.npz", "--inputs", tmp_path / "x.npy",
                    "--out", tmp_path / "y.npy"], capsys)
    assert rc == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize(
    "argv,words",
    [
        (["golden", "--model", "nope.npz", "--inputs", "x.npy", "--out", "y.npy"], "no such file"),
        (["export-rom", "--model", "q.npz", "--pes", "0", "--out", "rom"], "--pes"),
        (["export-rom", "--model", "q.npz", "--pes", "two", "--out", "rom"], "--pes"),
        (["export-rom", "--model", "q.npz", "--pes", "2", "--out", "rom", "--index-bits", "3"], "2**index_bits"),
        (["golden", "--model", "x.npy", "--inputs", "x.npy", "--out", "y.npy"], "not a valid .npz"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_invocations(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    save_qnet(_small(), "q.npz")
    np.save("x.npy", random_inputs(1, 12))
    rc, err = _run(argv, capsys)
    assert rc == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "y.npy").exists() and not (tmp_path / "rom").exists()


def test_cli_process_exit_status(tmp_path):
    """The real process: exit 2, one line, no traceback; and success writes the output."""
    save_qnet(_small(), tmp_path / "q.npz")
    np.save(tmp_path / "x.npy", random_inputs(4, 12))
    bad = subprocess.run(
        [sys.executable, "-m", "compress", "golden", "--model", tmp_path / "q.npz",
         "--inputs", tmp_path / "q.npz", "--out", tmp_path / "y.npy"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "compress", "golden", "--model", tmp_path / "q.npz",
         "--inputs", tmp_path / "x.npy", "--out", tmp_path / "y.npy"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.int16 and y.shape == (4, 3)


def test_outputs_get_the_usual_file_mode(tmp_path):
    import os

    save_qnet(_small(), tmp_path / "q.npz")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "q.npz").stat().st_mode & 0o777 == 0o666 & ~mask


def test_dcz_given_as_qnet_says_to_unpack(tmp_path):
    from compress.dcz import MAGIC
    from compress.errors import InputError
    from compress.qnet import load_qnet

    assert MAGIC == b"\x89DCZ"  # the loader recognises the .dcz by these bytes
    p = tmp_path / "m.dcz"
    p.write_bytes((REPO / "compress" / "models" / "lenet-300-100.dcz").read_bytes())
    with pytest.raises(InputError, match="unpack"):
        load_qnet(p)
