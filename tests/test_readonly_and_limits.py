"""Item 10, the smaller ones: a read-only checkout runs a fully cached simulation, and a build
it cannot write is refused in one line naming the variable that moves the build directory;
DEEPCOMP_LIMITS takes ASCII digits only and refuses a name given twice. (A board claiming an
absurd PE count: tests/test_fpga_lying_board.py.)"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from compress import limits
from compress.atomic import check_build_dir
from compress.cli import main
from compress.errors import InputError
from compress.qnet import save_qnet
from compress.synthetic import random_inputs, random_qnet

from .conftest import REPO


def _can_mount_read_only() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                       capture_output=True)
    return p.returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="needs a private mount namespace (root)")
def test_read_only_checkout_runs_a_cached_simulation(tmp_path):
    """The checkout and its build directory mounted read-only (a private mount namespace):
    `tb run` of a cached build works (it failed: OSError on the build's lock file, exit 1);
    one that needs a build says which variable moves the build directory (exit 2)."""
    build = tmp_path / "build"
    save_qnet(random_qnet((10, 6, 3), seed=7, density=0.6), tmp_path / "q.npz")
    np.save(tmp_path / "x.npy", random_inputs(3, 10))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, TB_BUILD_DIR=str(build))
    run = [sys.executable, "-m", "tb", "run", "--model", str(tmp_path / "q.npz"),
           "--inputs", str(tmp_path / "x.npy")]
    p = subprocess.run(run + ["--out", str(out / "y1.npy"), "--pes", "2"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    script = (f"mount --bind {REPO} {REPO} && mount -o remount,ro,bind {REPO} && "
              f"mount --bind {build} {build} && mount -o remount,ro,bind {build} && "
              f"touch {build}/probe 2>/dev/null && exit 9; "  # really read-only
              f"{' '.join(run)} --out {out / 'y2.npy'} --pes 2 || exit 3; "
              f"{' '.join(run)} --out {out / 'y3.npy'} --pes 3")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert np.array_equal(np.load(out / "y1.npy"), np.load(out / "y2.npy"))
    err = p.stderr.strip().splitlines()
    assert err[-1].startswith(f"error: build directory {build} is not writable") and \
        "TB_BUILD_DIR" in err[-1], err
    assert not (out / "y3.npy").exists()


def test_unwritable_build_dir_names_its_variable(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a directory")
    with pytest.raises(InputError, match=r"build directory .*file/b is not writable .*"
                                         r"set FPGA_BUILD_DIR to a writable directory"):
        check_build_dir(f / "b", "FPGA_BUILD_DIR")
    assert check_build_dir(tmp_path / "new" / "b", "X") == tmp_path / "new" / "b"
    assert list((tmp_path / "new" / "b").iterdir()) == []  # the probe is gone


@pytest.mark.parametrize("spec,words", [
    ("max_dim=１２３", "ASCII digits"),  # full-width digits: int() takes them
    ("max_dim=１e９", "ASCII digits"),
    ("max_dim=2**１０", "ASCII digits"),
    ("max_dim=٣", "ASCII digits"),
    ("max_dim=5,max_dim=7", "max_dim is given twice"),
    ("max_weights=1e9; max_weights=2e9", "max_weights is given twice"),
])
def test_deepcomp_limits_ascii_and_once(spec, words, monkeypatch, capsys):
    with pytest.raises(InputError, match=words):
        limits.parse(spec)
    monkeypatch.setenv("DEEPCOMP_LIMITS", spec)
    capsys.readouterr()
    assert main(["unpack", "x.dcz", "--out", "y.npz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert limits.parse("max_dim=123, max_weights=2**30") == {"max_dim": 123,
                                                              "max_weights": 1 << 30}
