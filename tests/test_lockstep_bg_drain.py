# amaranth: UnusedElaboratable=no
"""Layer 1 under layer 0's DRAIN (hw/lockstep.py `bg_drain`, drain_share 2), Amaranth simulator.

With drain_share 2 the output stage holds its second member's word, so layer 0's DRAIN reads
the accumulators every other cycle. Layer 1's PRELOAD puts its bias of row r in the cycle
after layer 0's row r was read, its front end reads each group once the drain has written it,
and its slots take the read port in the cycles between; in a drain read ("steal") the slots
before the m_ stage wait a cycle. Corners: layers with one row a PE (holds everywhere when
alone, none under the drain), steals with no slot waiting, layer 1 with as many rows as layer
0 (its last bias row right behind the last drain read), all-zero inputs, stalls on both
streams back to back.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from compress.golden import golden
from compress.synthetic import random_qnet
from hw.lockstep import LockstepEngine
from images.lockstep import build_lockstep
from tb.pysim import run_engine
from tests.test_hw_engine import _inputs
from tests.test_hw_lockstep import _run_back_to_back
from tests.test_lockstep_early import NoOverlap, one_at_a_time


def _watch(engine, x):
    """Cycles with a steal, with a steal and a hold, with a steal and a slot waiting in s_,
    over x one at a time (outputs always taken)."""
    counts = {"steal": 0, "steal+hold": 0, "steal+slot": 0}

    bench = one_at_a_time(engine, x)

    async def probe(ctx):
        c = engine.probe
        async for _, _, st, hold, sv in ctx.tick().sample(c.steal, c.hold, c.s.valid):
            counts["steal"] += st
            counts["steal+hold"] += st & hold
            counts["steal+slot"] += st & sv

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_process(probe)
    sim.run_until(1e-8 * 40_000)
    return counts


CASES = [
    # id, sizes, pes, density, seed
    ("2pe-20-3-rows", (8, 40, 5), 2, 0.5, 3),
    ("2pe-one-row-pes-holds", (12, 16, 4, 3), 2, 0.8, 4),
    ("4pe-equal-rows", (20, 16, 13, 6), 4, 0.4, 5),
    ("8pe-three-layers", (48, 64, 24, 10), 8, 0.3, 6),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("stall", [0.0, 0.35])
def test_layer1_under_layer0_drain_bit_exact_and_shorter(case, stall):
    _id, sizes, pes, density, seed = case
    qnet = random_qnet(sizes, seed=seed, density=density, shift=[6, 5, 4][: len(sizes) - 1])
    x = _inputs(6, sizes[0], seed=seed)
    x[2] = 0  # no work: layer 1's outputs are its biases
    x[4, : sizes[0] // 2] = 0
    img = build_lockstep(qnet, pes)
    rows = [ll.rows_per_pe for ll in img.layers]
    on = LockstepEngine(img, drain_share=2)
    assert on.bg_drain and not on.early0
    y, cyc, lcs, _, last_out = _run_back_to_back(on, x, stall_in=stall, stall_out=stall,
                                                 seed=seed)
    np.testing.assert_array_equal(y, golden(qnet, x))
    np.testing.assert_array_equal(cyc[1:], np.diff(last_out))
    # one at a time: the same outputs and layer counts as back to back, but for layer 0 of
    # an input with less work than the rest of layer 0's bias rows (at most 3: back to back
    # layer 0 starts before its last bias rows are in, one at a time they are in)
    y1, _, lc1 = run_engine(LockstepEngine(img, drain_share=2), x)
    np.testing.assert_array_equal(y1, y)
    np.testing.assert_array_equal(lc1[:, 1:], lcs[:, 1:])
    assert np.all((lcs[:, 0] >= lc1[:, 0]) & (lcs[:, 0] <= lc1[:, 0] + 3)), (lc1, lcs)
    off = NoOverlap(img, drain_share=2)
    _, _, lc0 = run_engine(off, x)
    # layer 0's DRAIN took 2 cycles a row and layer 1's PRELOAD its rows after it; now the
    # drain's reads (one a row after layer 1's bias rows) are the most layer 1 waits for
    saved = lc0.sum(axis=1) - lcs.sum(axis=1)
    assert np.all(saved >= 2 * rows[0] - 2 * rows[1] - (rows[0] - rows[1]) - 4), (saved, rows)
    if rows[1] < rows[0]:
        assert saved.sum() > 0


def test_no_hazard_under_the_drain_and_steals_without_a_slot():
    """Layer 1 with one or two rows a PE (a hazard hold on most column changes when it runs
    alone) under a long layer-0 drain: the steals come every other cycle, so the m_ stage
    holds a bubble in each cycle after one and no hazard is seen while they last (never a
    hold in a steal cycle); some steals find no slot waiting (the front end waits for the
    drain's groups). Bit-exact."""
    for sizes, seed in (((12, 40, 2, 3), 4), ((16, 48, 3, 2), 6)):
        qnet = random_qnet(sizes, seed=seed, density=0.9, shift=[6, 5, 4])
        x = _inputs(6, sizes[0], seed=seed)
        img = build_lockstep(qnet, 2)
        counts = _watch(LockstepEngine(img, drain_share=2), x)
        y, _, _ = run_engine(LockstepEngine(img, drain_share=2), x)
        np.testing.assert_array_equal(y, golden(qnet, x))
        assert counts["steal+hold"] == 0, counts
        assert counts["steal"] > counts["steal+slot"] > 0, counts


def test_bg_drain_only_where_it_can_be():
    qnet = random_qnet((8, 8, 40, 5), seed=2, density=0.5, shift=4)  # layer 1 wider than 0
    img = build_lockstep(qnet, 2)
    assert not LockstepEngine(img, drain_share=2).bg_drain
    for share in (1, 4):
        assert not LockstepEngine(img, drain_share=share).bg_drain
    one = build_lockstep(random_qnet((8, 12), seed=2, density=0.5, shift=4), 2)
    eng = LockstepEngine(one, drain_share=2)
    assert not eng.bg_drain and eng.early0  # one layer: its biases in its own DRAIN


def test_overlap_is_a_parameter():
    """`LockstepParams.overlap` (the board build's --no-overlap) reaches the engine through
    `hw.make_engine`: False builds the engine without layer 1 under layer 0's DRAIN (layer 0's
    biases then go in under its own DRAIN instead); it is part of the engine's digest, and
    anything but a bool is refused before anything is made."""
    from hw import make_engine
    from hw.blocks import EngineConfigError
    from images import image_digest
    from images.lockstep import LockstepParams

    img = build_lockstep(random_qnet((12, 40, 8, 3), seed=3, density=0.5, shift=[6, 5, 4]), 2)
    on = make_engine(img, LockstepParams(drain_share=2))
    off = make_engine(img, LockstepParams(drain_share=2, overlap=False))
    assert on.bg_drain and not on.early0
    assert not off.bg_drain and off.early0 and not off.overlap
    assert image_digest(img, LockstepParams(drain_share=2)) != image_digest(
        img, LockstepParams(drain_share=2, overlap=False))
    with pytest.raises(EngineConfigError, match="overlap"):
        make_engine(img, LockstepParams(drain_share=2, overlap=1))
