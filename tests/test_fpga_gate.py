"""The gate level on the chip's memory map (fpga/flow/gate.py): the board's engine and memories as
`synth_ice40 -dsp -spram` makes them, the SPRAMs (SB_SPRAM256KA cells, empty at start) written
through the load port, bit-exact against the golden model."""

import subprocess
import sys

import numpy as np
import pytest

from compress.golden import golden
from compress.synthetic import random_inputs, random_qnet
from fpga.flow import gate
from fpga.boards.ice40 import load_plan_for as spram_plan_for
from fpga.boards.ice40 import load_words
from images.lockstep import build_lockstep

from .conftest import REPO, long_tests

QNET = random_qnet((12, 16, 10), density=[0.5, 0.5], seed=2)
IMG = build_lockstep(QNET, 2)


def test_load_plan_is_the_hosts_load():
    """Memory by memory in load-id order, each to its full depth, the words the host sends."""
    plan = gate.load_plan(IMG)
    specs = spram_plan_for(IMG)
    assert len(plan) == sum(s.depth for s in specs)
    at = 0
    for i, s in enumerate(specs):
        rows = plan[at: at + s.depth]
        assert (rows[:, 0] == i).all()
        assert rows[:, 1].tolist() == list(range(s.depth))
        assert rows[:, 2].tolist() == load_words(s)
        at += s.depth


def test_gate_small_network_spram():
    """A small network on 2 PEs, Icarus (a Verilator build costs more than this whole run):
    the netlist has one SB_SPRAM256KA per planned ROM, the bench checks that no input is taken
    before the commit, and the answers after the load are the golden model's."""
    b = gate.build(IMG, sim="icarus")
    assert b.cells.get("SB_SPRAM256KA") == len(spram_plan_for(IMG)) == 3
    assert b.cells.get("SB_MAC16") == 2
    text = (b.dir / "gate_gl.v").read_text()
    assert "SB_SPRAM256KA" in text and "SB_LUT4" in text  # a netlist of cells, not RTL
    x = random_inputs(3, QNET.in_features, seed=2, density=0.5)
    x[0, :5] = [-32768, 32767, -1, 0, 1]  # extremes as input words
    r = gate.run(b, x)
    np.testing.assert_array_equal(r.outputs, golden(QNET, x))
    # one word a cycle; around them a cycle to start, one with the port idle, the commit
    assert r.load_cycles == len(gate.load_plan(IMG)) + 3
    assert (r.cycles > r.layer_cycles.sum(axis=1)).all() and (r.layer_cycles > 0).all()
    assert r.sim_cycles > r.load_cycles + r.cycles.sum()


@pytest.mark.skipif(not long_tests(), reason="LONG=1: the EIE engine's netlist as well")
def test_gate_small_network_eie():
    """The queue-based engine through the same path: its four largest ROMs in SPRAM."""
    from images.eie import build_rom

    img = build_rom(QNET, pes=2)
    b = gate.build(img, sim="icarus")
    assert b.cells.get("SB_SPRAM256KA") == len(spram_plan_for(img)) == 4
    x = random_inputs(3, QNET.in_features, seed=3, density=0.5)
    np.testing.assert_array_equal(gate.run(b, x).outputs, golden(QNET, x))


def test_gate_cli_bad_count():
    res = subprocess.run([sys.executable, "-m", "fpga.flow.gate", "--count", "0", "--data", "/none"],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "--count must be at least 1" in res.stderr


@pytest.mark.skipif(not long_tests(), reason="LONG=1: LeNet-300-100 digits through the netlist")
def test_gate_lenet_digits(mnist_dir):
    """The shipped LeNet-300-100 on the 8-PE lockstep engine as the bitstream has it (lanes in
    the four SPRAMs, loaded through the load port): 20 MNIST test digits bit-exact.
    Verilator (docs/gate-level.md: faster than Icarus on this netlist)."""
    from compress.data import load_split
    from compress.golden import mnist_to_input
    from compress.shipped import load_model
    from images import build_image
    from tb import verilator

    qnet, _ = load_model(None)
    test = load_split("test", mnist_dir)
    x = mnist_to_input(test.images[:20], qnet.input_frac)
    img = build_image(qnet, "lockstep", 8)
    b = gate.build(img, sim="verilator" if verilator.available() else "icarus")
    assert b.cells.get("SB_SPRAM256KA") == 4
    r = gate.run(b, x)
    np.testing.assert_array_equal(r.outputs, golden(qnet, x))
    assert (r.outputs.argmax(axis=1) == test.labels[:20]).sum() >= 19
