"""Dead units left out of the lockstep engine's rows (`images.lockstep`, trim).

A hidden unit with no weight in, no bias and no weight out is always 0 and read by nobody. The
image puts such units after the others in their PE and the engine preloads, computes and drains
only the rows some PE still has (`rows_per_pe`), and the next layer's front end reads only those
columns (`engine_in`). Checked here: the image (round trip, rows, the PE of every row kept), the
engine in the Amaranth simulator bit-exact against the golden model (fewer rows than PEs, a
hidden layer with every unit dead, one PE, back to back with stalls) and fewer cycles than the
same network untrimmed; the board network's second layer.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden, mnist_to_input, run_layers
from compress.qnet import Layer, QNet, load_qnet
from compress.synthetic import random_qnet
from hw.lockstep import LockstepEngine
from images.balance import holds
from images.lockstep import build_lockstep, decode_lockstep, dead_units
from tb.pysim import run_engine
from tests.test_hw_engine import _inputs
from tests.test_hw_lockstep import _run_back_to_back


def with_dead(qnet: QNet, fractions, seed: int) -> QNet:
    """`qnet` with a fraction of each hidden layer's units dead (no weight in or out, bias 0);
    a fraction of 1 kills every unit of that layer."""
    rng = np.random.default_rng(seed)
    layers = [Layer(codebook=ll.codebook.copy(), index=ll.index.copy(), bias=ll.bias.copy(),
                    shift=ll.shift, relu=ll.relu) for ll in qnet.layers]
    for i, frac in enumerate(fractions):
        dead = rng.random(layers[i].out_features) < frac
        layers[i].index[dead] = 0
        layers[i].bias[dead] = 0
        layers[i + 1].index[:, dead] = 0
    return QNet(layers=layers, input_frac=qnet.input_frac)


def test_dead_units_are_those_nobody_reads():
    q = random_qnet((12, 10, 6, 3), seed=1, density=0.6, shift=4)
    q = with_dead(q, [0.5, 0.0], seed=1)
    dead = dead_units(q)
    assert len(dead) == 2 and dead[0].any() and not dead[1].any()
    assert not (q.layers[0].index[dead[0]]).any() and not q.layers[1].index[:, dead[0]].any()
    # a unit with a bias is not dead (its output is a constant the next layer reads)
    q.layers[0].bias[np.flatnonzero(dead[0])[0]] = 5
    assert dead_units(q)[0].sum() == dead[0].sum() - 1


@pytest.mark.parametrize("pes", [1, 3, 8])
def test_trimmed_image_round_trip_and_rows(pes):
    q = with_dead(random_qnet((30, 40, 24, 6), seed=pes, density=0.4, shift=[5, 4, 3]),
                  [0.6, 0.5], seed=pes)
    full = build_lockstep(q, pes, trim=False)
    img = build_lockstep(q, pes)
    assert decode_lockstep(img).equals(q) and decode_lockstep(full).equals(q)
    dead = dead_units(q)
    for i, (ll, lf) in enumerate(zip(img.layers, full.layers)):
        assert lf.rows_per_pe == -(-lf.out_features // pes)
        assert ll.rows_per_pe <= lf.rows_per_pe
        if i < len(dead):
            # the physical rows after rows_per_pe * N are dead; every row keeps its PE
            assert dead[i][ll.perm[ll.rows_per_pe * pes:]].all()
            for k in range(pes):
                assert set(ll.perm[k::pes]) == set(lf.perm[k::pes])
        if i > 0:
            assert ll.engine_in == min(ll.in_features, img.layers[i - 1].rows_per_pe * pes)
    assert sum(ll.rows_per_pe for ll in img.layers) < sum(lf.rows_per_pe for lf in full.layers)
    # the slots the engine pays are those of the untrimmed image or fewer (fillers)
    assert img.num_slots <= full.num_slots + pes


CASES = [
    # id, sizes, pes, dead fractions, engine kwargs, stall
    ("8pe-fewer-rows-than-pes", (20, 30, 12, 5), 8, [0.7, 0.5], {"drain_share": 2}, 0.0),
    ("4pe-every-unit-dead", (16, 12, 9, 4), 4, [1.0, 0.3], {"drain_share": 2}, 0.0),
    ("1pe-share1", (10, 14, 6), 1, [0.5], {}, 0.3),
    ("3pe-depth1-stalls", (18, 25, 11, 7), 3, [0.4, 0.6], {"queue_depth": 1}, 0.4),
    ("8pe-1-3-1", (1, 3, 1), 8, [0.5], {"drain_share": 4}, 0.0),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trimmed_engine_bit_exact_and_faster(case):
    _id, sizes, pes, fracs, ekw, stall = case
    q = with_dead(random_qnet(sizes, seed=pes + len(sizes), density=0.5, shift=4), fracs,
                  seed=pes)
    x = _inputs(6, sizes[0], seed=pes)
    x[1] = 0  # no work: the outputs are the biases through the layers
    img, full = build_lockstep(q, pes), build_lockstep(q, pes, trim=False)
    y, cyc, lcs = run_engine(LockstepEngine(img, **ekw), x, stall_in=stall, stall_out=stall,
                             seed=pes)
    np.testing.assert_array_equal(y, golden(q, x))
    y0, cyc0, lcs0 = run_engine(LockstepEngine(full, **ekw), x, stall_in=stall,
                                stall_out=stall, seed=pes)
    np.testing.assert_array_equal(y0, y)
    trimmed = [i for i, (a, b) in enumerate(zip(img.layers, full.layers))
               if a.rows_per_pe < b.rows_per_pe]
    assert trimmed or sizes == (1, 3, 1)  # one row a PE already: nothing to trim
    if trimmed:
        # a trimmed layer drains fewer rows, the next one preloads fewer and reads fewer
        # columns: never more cycles, and fewer over the batch
        assert np.all(lcs.sum(axis=1) <= lcs0.sum(axis=1)), (lcs, lcs0)
        assert lcs.sum() < lcs0.sum()


def test_trimmed_back_to_back_with_stalls():
    q = with_dead(random_qnet((40, 32, 9, 5), seed=7, density=0.3, shift=[7, 5, 3]),
                  [0.6, 0.4], seed=7)
    x = _inputs(6, 40, seed=7)
    img = build_lockstep(q, 4)
    assert img.layers[0].rows_per_pe < 8
    _, _, lc1 = run_engine(LockstepEngine(img, drain_share=2), x)
    y, _, lcs, _, _ = _run_back_to_back(LockstepEngine(img, drain_share=2), x, stall_in=0.3,
                                        stall_out=0.3, seed=3)
    np.testing.assert_array_equal(y, golden(q, x))
    np.testing.assert_array_equal(lcs, lc1)


BOARD = "compress/models/lenet-300-100-board.qnet.npz"


def test_board_network_second_layer_trimmed_without_holds():
    """The board network (pruned for the board: 40 of l1's 100 units live, 5 in a PE): l1
    computes 5 rows a PE, not 13, l2 reads 40 columns, not 100. Its l0 keeps 38 rows:
    trimming its 47 dead units would put l1's columns in another order, where two columns
    that hit the same row in some PE come next to each other (the pattern avoids that in the
    logical order), costing more holds than the 2 rows save."""
    from compress.shipped import SAMPLE_DIGITS

    q = load_qnet(BOARD)
    img, full = build_lockstep(q, 8), build_lockstep(q, 8, trim=False)
    assert [ll.rows_per_pe for ll in img.layers] == [38, 5, 2]
    assert [ll.engine_in for ll in img.layers] == [784, 300, 40]
    d = np.load(SAMPLE_DIGITS, allow_pickle=False)
    x = mnist_to_input(d["images"][:50], q.input_frac)
    acts = [x] + run_layers(q, x)[:-1]
    np.testing.assert_array_equal(holds(img, acts), holds(full, acts))
    assert decode_lockstep(img).equals(q)
