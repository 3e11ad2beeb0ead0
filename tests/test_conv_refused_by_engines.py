"""A version 2 qnet with conv layers runs on both engines (tests/test_tb_conv.py,
tests/test_tb_lockstep_conv.py), in the golden model and on the board's engines
(tests/test_fpga_conv.py, tests/test_lockstep_board_conv.py); the one command that would build
an image for what does not take conv layers (the ROM export) refuses it with exit 2 and one
line, before any work, and writes nothing."""

import numpy as np
import pytest

from compress.qnet import save_qnet
from compress.synthetic import random_cnn


@pytest.fixture(scope="module")
def conv_qnet(tmp_path_factory):
    d = tmp_path_factory.mktemp("conv")
    q = random_cnn((1, 8, 8), [(3, 3, 1, 1, 2)], [4], seed=0, density=0.5)
    save_qnet(q, d / "cnn.npz", index_bits=4)
    np.save(d / "xi.npy", np.zeros((2, 64), np.int16))
    return d


def _cases(d):
    from compress.cli import main as compress_main

    q = str(d / "cnn.npz")
    return [
        ("export-rom", compress_main, ["export-rom", "--model", q, "--pes", "2", "--out",
                                       str(d / "rom")]),
    ]


@pytest.mark.parametrize("i", range(1))
def test_engine_commands_refuse_conv_layers(conv_qnet, capsys, i):
    name, main, argv = _cases(conv_qnet)[i]
    assert main(argv) == 2, name
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "l0:" in err and "conv" in err, err
    assert not any((conv_qnet / n).exists() for n in ("y.npy", "b", "rom"))


def test_the_eie_engine_runs_it(conv_qnet, capsys):
    from compress.golden import golden
    from compress.qnet import load_qnet
    from tb.cli import main

    d = conv_qnet
    x = np.arange(128, dtype=np.int16).reshape(2, 64) * 37 % 301
    np.save(d / "xr.npy", x)
    assert main(["run", "--model", str(d / "cnn.npz"), "--inputs", str(d / "xr.npy"),
                 "--out", str(d / "ye.npy"), "--pes", "2"]) == 0
    np.testing.assert_array_equal(np.load(d / "ye.npy"), golden(load_qnet(d / "cnn.npz"), x))


def test_the_lockstep_engine_runs_it(conv_qnet, capsys):
    from compress.golden import golden
    from compress.qnet import load_qnet
    from tb.cli import main

    d = conv_qnet
    x = np.arange(128, dtype=np.int16).reshape(2, 64) * 41 % 293
    np.save(d / "xl.npy", x)
    assert main(["run", "--model", str(d / "cnn.npz"), "--inputs", str(d / "xl.npy"),
                 "--out", str(d / "yl.npy"), "--pes", "2", "--engine", "lockstep"]) == 0
    np.testing.assert_array_equal(np.load(d / "yl.npy"), golden(load_qnet(d / "cnn.npz"), x))


def test_the_golden_model_runs_it(conv_qnet, capsys):
    from compress.cli import main

    assert main(["golden", "--model", str(conv_qnet / "cnn.npz"), "--inputs",
                 str(conv_qnet / "xi.npy"), "--out", str(conv_qnet / "g.npy")]) == 0
    assert np.load(conv_qnet / "g.npy").shape == (2, 4)
