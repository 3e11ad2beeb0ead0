"""The lockstep engine's overlapped phases (hw/lockstep.py), in the Amaranth simulator.

The drain starts with the layer's last accumulator write, the next layer's PRELOAD with the
last drained word, the front end three cycles before PRELOAD's last bias row, layer 0's biases
of the next inference during OUTPUT, OUTPUT as soon as its words are written. These are the
corners where one phase could read what the other has not written yet: all-zero inputs (a
layer with no work: its outputs are its biases), layers of one row per PE after each other,
a hazard hold on a layer's last slot (one PE), back to back with stalls on both streams.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden
from compress.synthetic import random_qnet
from hw.lockstep import LockstepEngine
from images.lockstep import build_lockstep
from tb.pysim import run_engine
from tests.test_hw_engine import _inputs

CASES = [
    # id, sizes, pes, density, engine kwargs, stall
    ("1pe-hold-on-last-slot", (9, 6, 4), 1, 0.7, {}, 0.0),
    ("8pe-one-row-layers", (20, 7, 5, 3), 8, 0.5, {"drain_share": 4}, 0.0),
    ("4pe-share2-stalls", (24, 17, 9), 4, 0.4, {"drain_share": 2}, 0.4),
    ("3pe-depth1-share1", (15, 12, 8), 3, 0.3, {"queue_depth": 1}, 0.2),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_overlapped_phases_bit_exact(case):
    _id, sizes, pes, density, ekw, stall = case
    qnet = random_qnet(sizes, seed=len(sizes) + pes, density=density, shift=4)
    x = _inputs(5, sizes[0], seed=pes)
    x[1] = 0  # no work in any layer: the outputs are the biases through the layers
    x[3, : sizes[0] // 2] = 0
    img = build_lockstep(qnet, pes)
    y, cycles, lcs = run_engine(LockstepEngine(img, **ekw), x, stall_in=stall,
                                stall_out=stall, seed=pes)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert np.all(lcs > 0) and np.all(cycles > lcs.sum(axis=1))


def test_no_work_costs_the_fixed_phases_only():
    """An all-zero input: layer 0 is the front end's pass over the groups and the DRAIN, with
    nothing in between waiting for more than the pipeline (later layers get the biases)."""
    qnet = random_qnet((16, 24, 8), seed=3, density=0.5, shift=4)
    img = build_lockstep(qnet, 4)
    x = np.zeros((2, 16), dtype=np.int16)
    y, cycles, lcs = run_engine(LockstepEngine(img, drain_share=2), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    rows, groups = img.layers[0].rows_per_pe, 4  # 6 rows, 16 columns in groups of 4
    # the front end: a cycle to load group 0, one per group; then 2 per row (drain_share 2)
    assert lcs[0, 0] <= 1 + groups + 3 + rows * 2, lcs
