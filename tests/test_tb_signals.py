"""SIGTERM and SIGINT during `tb run`, `tb sim`, `fpga run --sim`: simulators end with the command.

The command is started on a small network with enough inputs to keep its `vvp` simulators busy;
once one is running, the command gets the signal. Within a few seconds the command has exited
(143 for SIGTERM, 130 for SIGINT), none of its simulators is left running (they run in their own
process group, so the signal never reaches them: the command must end them), and it leaves no
run directory and no partial --out / --stats file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from compress.qnet import save_qnet
from compress.synthetic import random_inputs, random_qnet

from .conftest import REPO


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("signals")
    save_qnet(random_qnet((64, 16, 10), seed=1, density=0.5, shift=6), d / "q.npz")
    # ~200 cycles each: many minutes of simulation, far longer than the test waits (4,000 were
    # once simulated to the end before the signal came, on a fast machine)
    np.save(d / "x.npy", random_inputs(20000, 64, seed=2, density=0.5))
    return d


def _children(pid: int, name: str) -> list[int]:
    """Processes called `name` whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if comm == name and ppid == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("cmd, sig, status", [
    ("tb run", signal.SIGTERM, 143),
    ("tb run", signal.SIGINT, 130),
    ("tb sim", signal.SIGTERM, 143),
    ("fpga run", signal.SIGTERM, 143),
])
def test_signal_ends_simulators_and_leaves_nothing(work, tmp_path, cmd, sig, status):
    build = work / "build"  # shared by the cases: the engine is compiled once
    out, stats = tmp_path / "y.npy", tmp_path / "s.json"
    args = ["--model", work / "q.npz", "--inputs", work / "x.npy", "--pes", 4]
    if cmd == "tb run":
        args += ["--out", out, "--stats", stats]
    if cmd == "fpga run":
        args += ["--sim", "--out", out]
    env = dict(os.environ, TB_BUILD_DIR=str(build), FPGA_BUILD_DIR=str(build), TB_JOBS="2")
    # SIGINT as an interactive shell leaves it: a command started from a background job (a CI
    # wrapper's `cmd &`, an xdist worker under one) inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler, so the signal would rightly do nothing
    p = subprocess.Popen([sys.executable, "-m", *cmd.split(), *map(str, args)], cwd=REPO,
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # A guard against a hang, not a bound on time: the first case compiles the engine, and
        # a loaded machine may take many minutes for it.
        deadline = time.monotonic() + 1800
        while not _children(p.pid, "vvp"):
            assert p.poll() is None, f"tb {cmd} ended early: {p.stderr.read()}"
            assert time.monotonic() < deadline, "no simulator started (hang guard)"
            time.sleep(0.05)
        time.sleep(0.5)  # both simulators of tb run, when it starts two
        sims = _children(p.pid, "vvp")
        assert list(build.glob("*/runs/run-*"))
        p.send_signal(sig)
        # read stderr while waiting: the simulators write to the same pipe, and a full pipe
        # would block the command's last line (hang guard: slow to wind down)
        _, text = p.communicate(timeout=300)
        assert p.returncode == status, text
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = [ln for ln in text.strip().splitlines() if "it/s]" not in ln]
    assert err[-1:] == ["error: terminated" if sig == signal.SIGTERM else "error: interrupted"], err
    deadline = time.monotonic() + 60  # they were signalled: a loaded machine reaps slowly
    while any(_running(s) for s in sims) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [s for s in sims if _running(s)], "simulators left running"
    assert not list(build.glob("*/runs/run-*")), "run directories left behind"
    assert not list(build.glob("*/.rom-*"))
    assert sorted(f.name for f in tmp_path.iterdir()) == [], "partial outputs left behind"
