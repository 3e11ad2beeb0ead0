"""Degenerate sizes on both engines: one input, one output, fewer rows than PEs, empty layers.

A PE with no rows (or a layer with one column) has one-word memories; they must elaborate and run
bit-exact, the idle PEs doing nothing. The matrix runs in the Amaranth simulator (seconds); the
issue's own case, a 1x1 network on 8 PEs, also goes through `python -m tb run` (cocotb + Icarus)
on both engines, and a network the engine cannot take is refused in one line with no warnings.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module

from compress.golden import golden
from compress.qnet import save_qnet
from compress.synthetic import random_inputs, random_qnet
from hw import make_engine
from hw.memory import MemoryFactory, MemorySpec
from images import build_image
from tb.pysim import run_engine

from .conftest import REPO

CASES = [  # (layer sizes, PEs, density)
    ((1, 1), 8, 1.0),  # 1x1 on 8 PEs: 7 PEs without a row, one input
    ((1, 6), 8, 0.8),  # 1xN: one column, fewer rows than PEs (6 of 8 PEs hold a row)
    ((6, 1), 8, 0.8),  # Nx1: one row
    ((1, 1, 1), 3, 1.0),  # two 1x1 layers
    ((4, 3, 2), 16, 0.0),  # every weight pruned: biases only
]


def _engine(kind, qnet, pes):
    return make_engine(build_image(qnet, kind, pes))  # the engine's own default parameters


@pytest.mark.parametrize("kind", ["eie", "lockstep"])
@pytest.mark.parametrize("sizes, pes, density", CASES, ids=lambda v: str(v))
def test_degenerate_sizes_bit_exact(kind, sizes, pes, density):
    qnet = random_qnet(sizes, seed=3, density=density, shift=4)
    x = random_inputs(3, sizes[0], seed=4, density=0.8)
    x[0] = 0  # an all-zero input too
    y, cycles, layer_cycles = run_engine(_engine(kind, qnet, pes), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert (cycles > 0).all() and layer_cycles.shape == (3, len(sizes) - 1)
    assert (layer_cycles > 0).all()


def test_one_word_memory_has_an_address_bit():
    """The engine drives spec.addr_width (>= 1) address bits, also for a one-word memory."""
    spec = MemorySpec("m.one", "rom", 8, 1, (5,))
    m = Module()
    ports = MemoryFactory()(m, spec)
    assert spec.addr_width == 1 and len(ports.read[0].addr) == 1
    Fragment.get(m, None)  # elaborates (so nothing is left unused)


def _tb(*args):
    return subprocess.run([sys.executable, "-m", "tb", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["eie", "lockstep"])
def test_tb_run_1x1_on_8_pes(kind, tmp_path):
    """The issue's case through the command line: exit 0, bit-exact, not a single warning."""
    qnet = random_qnet((1, 1), seed=5, density=1.0, shift=3)
    save_qnet(qnet, tmp_path / "q.npz")
    x = np.array([[0], [7], [-300]], np.int16)
    np.save(tmp_path / "x.npy", x)
    p = _tb("run", "--engine", kind, "--pes", 8, "--model", tmp_path / "q.npz",
            "--inputs", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert p.returncode == 0, p.stderr
    assert "Warning" not in p.stderr and "Elaboratable" not in p.stderr, p.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), golden(qnet, x))


def test_what_cannot_run_is_one_line(tmp_path):
    """A network wider than the activation buffers: exit 2, one line, no warnings, no output."""
    save_qnet(random_qnet((9, 1), seed=6, density=1.0), tmp_path / "q.npz")
    np.save(tmp_path / "x.npy", np.ones((1, 9), np.int16))
    p = _tb("run", "--engine", "lockstep", "--max-width", 8, "--model", tmp_path / "q.npz",
            "--inputs", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "9 inputs exceed the activation buffers of 8 words" in lines[0]
    assert not (tmp_path / "y.npy").exists()
