"""Icarus and Verilator run the same cocotb bench on the same Verilog: same outputs, same cycles.

For each engine (EIE and lockstep) one network whose build covers the corners (three layers,
gaps of 16 and more with 2-bit relative indices, a layer with fewer rows than PEs, accumulator
wrap at 20 bits, saturation, queue depth 1 or 2) is built once per simulator; both simulators
then run the same batches (an all-zero vector, densities 0..1, random stalls on both streams, a
reset in the middle of an inference). Outputs, cycles per inference and per layer must agree
between the simulators and with the golden model. One Verilator build per engine (30-70 s on
an idle core, cached in build/tb/ like Icarus'); `make test-long` (LONG=1) runs every case of
tests/test_tb_engine.py and tests/test_tb_lockstep.py on both simulators.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compress.golden import golden
from compress.qnet import save_qnet
from compress.synthetic import random_qnet
from images import build_image, get
from tb.sim import build, simulate
from tests.conftest import long_tests
from tests.test_tb_engine import _inputs

REPO = Path(__file__).resolve().parents[1]
SIZES = (40, 33, 9, 3)
QKW = {"weight_scale": 32767, "bias_scale": 1 << 18, "shift": [3, 9, 0]}
# engine -> (PEs, image kwargs, engine parameters); `tb run` builds the same images from these
# flags, so the CLI test below reuses the build
ENGINES = {
    "eie": (4, {"rel_bits": 2}, {"acc_bits": 20, "queue_depth": 2, "max_width": 4096}),
    "lockstep": (4, {"rel_bits": 2}, {"acc_bits": 20, "queue_depth": 1, "drain_share": 2}),
}
RUNS = [  # (simulate kwargs, vectors)
    ({"stall_in": 0.3, "stall_out": 0.3, "seed": 5}, 30),
    ({"reset_mid": True, "stall_in": 0.2, "seed": 6}, 8),
    ({}, 12),
]


def _qnet():
    return random_qnet(SIZES, seed=11, density=[0.06, 0.5, 0.9], **QKW)


def _agree(a, b, want):
    for field in ("outputs", "cycles", "layer_cycles"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    bad = np.flatnonzero(np.any(a.outputs != want, axis=1))
    assert len(bad) == 0, f"{len(bad)}/{len(want)} vectors differ from the golden model"


@pytest.mark.parametrize("engine", ENGINES)
def test_simulators_agree_bit_and_cycle(engine):
    pes, ikw, pkw = ENGINES[engine]
    qnet = _qnet()
    img = build_image(qnet, engine, pes, **ikw)
    # the corners this network is meant to reach: fillers (gaps beyond 2-bit relative
    # indices) in the sparse first layer, a last layer with fewer rows than PEs
    eie = build_image(qnet, "eie", pes, **ikw)
    assert sum(eie.layers[0].fillers) > 0 and SIZES[-1] < pes
    params = get(engine).params(**pkw)
    builds = {sim: build(img, params, sim=sim) for sim in ("icarus", "verilator")}
    assert {b.sim for b in builds.values()} == {"icarus", "verilator"}
    assert builds["icarus"].dir != builds["verilator"].dir
    assert "initial #0" in (builds["icarus"].dir / "engine.v").read_text()
    assert "initial #0" not in (builds["verilator"].dir / "engine.v").read_text()
    wants = []
    for i, (kw, n) in enumerate(RUNS):
        x = _inputs(n, SIZES[0], seed=20 + i)
        wants.append(golden(qnet, x, acc_bits=params.acc_bits))
        # the 20-bit accumulators wrap: a 32-bit engine would give other outputs
        assert np.any(wants[-1] != golden(qnet, x, acc_bits=32))
        ri, rv = (simulate(builds[s], x, **kw) for s in ("icarus", "verilator"))
        _agree(ri, rv, wants[-1])
    # saturation reached: some outputs at the int16 limits
    assert any(np.any((w == 32767) | (w == -32768)) for w in wants)


def test_tb_run_with_verilator(tmp_path):
    """`tb run --sim verilator` writes the golden outputs and names its simulator in --stats."""
    import json

    pes, ikw, pkw = ENGINES["eie"]
    qnet = _qnet()
    save_qnet(qnet, tmp_path / "q.npz")
    x = _inputs(6, SIZES[0], seed=30)
    np.save(tmp_path / "x.npy", x)
    p = subprocess.run(
        [sys.executable, "-m", "tb", "run", "--model", tmp_path / "q.npz", "--inputs",
         tmp_path / "x.npy", "--out", tmp_path / "y.npy", "--stats", tmp_path / "s.json",
         "--pes", str(pes), "--rel-bits", str(ikw["rel_bits"]), "--acc-bits",
         str(pkw["acc_bits"]), "--queue-depth", str(pkw["queue_depth"]), "--sim", "verilator"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "Verilator" in p.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy", allow_pickle=False),
                                  golden(qnet, x, acc_bits=pkw["acc_bits"]))
    assert json.loads((tmp_path / "s.json").read_text())["simulator"] == "verilator"


def test_icarus_stays_the_default(monkeypatch):
    monkeypatch.delenv("TB_SIM", raising=False)
    img = build_image(random_qnet((6, 3), seed=1, density=0.5, shift=6), "eie", 1)
    assert build(img).sim == "icarus"


@pytest.mark.parametrize("argv, expect", [
    (["--sim", "modelsim"], "argument --sim: invalid choice: 'modelsim'"),
    (["--sim", ""], "argument --sim: invalid choice: ''"),
])
def test_bad_sim_is_one_line(tmp_path, capsys, argv, expect):
    from tb.cli import main

    status = main(["run", "--model", "q", "--inputs", "x", "--out", str(tmp_path / "y.npy"),
                   *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and expect in lines[0], lines


def test_bad_tb_sim_and_missing_verilator_are_one_line(tmp_path, capsys, monkeypatch):
    """$TB_SIM with a wrong name, and Verilator asked for but not installed: exit 2, one line
    (the second names `make verilator`), before anything is built or written."""
    import tb.verilator
    from tb.cli import main

    qnet = random_qnet((6, 3), seed=1, density=0.5, shift=6)
    save_qnet(qnet, tmp_path / "q.npz")
    np.save(tmp_path / "x.npy", np.zeros((2, 6), np.int16))
    run = ["run", "--model", str(tmp_path / "q.npz"), "--inputs", str(tmp_path / "x.npy"),
           "--out", str(tmp_path / "y.npy")]
    monkeypatch.setenv("TB_SIM", "xsim")
    assert main(run) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "TB_SIM must be icarus or verilator, not 'xsim'" in lines[0]
    monkeypatch.delenv("TB_SIM")
    monkeypatch.setattr(tb.verilator, "bin_dir", lambda: None)
    for cmd in (run + ["--sim", "verilator"], ["speed", "--count", "2"],
                ["sim", "--sim", "verilator", "--count", "1"]):
        assert main(cmd) == 2, cmd
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "make verilator" in lines[0], (cmd, lines)
    with pytest.raises(Exception, match="make verilator"):
        build(build_image(qnet, "eie", 1), sim="verilator")
    assert not (tmp_path / "y.npy").exists()


def _long_cases():
    from tests import test_tb_engine, test_tb_lockstep

    return ([("eie",) + c for c in test_tb_engine.CASES]
            + [("lockstep",) + c for c in test_tb_lockstep.CASES])


@pytest.mark.skipif(not long_tests(), reason="every cocotb case on both simulators: LONG=1")
@pytest.mark.parametrize("case", _long_cases(), ids=[f"{c[0]}-{c[1]}" for c in _long_cases()])
def test_every_case_on_both_simulators_long(case):
    engine, _id, sizes, pes, density, qkw, rkw, pkw, runkw, n = case
    seed = pes + len(sizes)
    qnet = random_qnet(sizes, seed=seed, density=density, **qkw)
    x = _inputs(n, sizes[0], seed)
    params = get(engine).params_for(**pkw)  # the RTL benches' defaults, as the cases had them
    img = build_image(qnet, engine, pes, **rkw)
    ri, rv = (simulate(build(img, params, sim=s), x, seed=seed, **runkw)
              for s in ("icarus", "verilator"))
    _agree(ri, rv, golden(qnet, x, acc_bits=params.acc_bits))
