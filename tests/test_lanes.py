"""The lanes cycle model (images/lanes.py): lane costs per pointer option, the queue/front-end
simulation, pointer EBR, calibration against the lockstep engine in the Amaranth simulator,
and the command's exit status."""

from __future__ import annotations

import numpy as np
import pytest

from compress.errors import InputError
from compress.golden import run_layers
from compress.synthetic import random_qnet
from images.lanes import (OPTIONS, ebr_blocks, lane_costs, lane_of, main, model, pe_counts,
                          pointer_ebr, pointer_memories, simulate_layer, useful_macs,
                          work_bound)
from images.lockstep import build_lockstep
from images import memory_specs


def _counts(seed=0, pes=8, cols=40, rows=48, density=0.15):
    q = random_qnet((cols, rows), seed=seed, density=density)
    return pe_counts(q.layers, [np.arange(rows)], pes)[0]


def test_lanes_are_pairs_k_and_k_plus_half():
    assert lane_of(8).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_lane_costs_order_between_options():
    c = _counts(seed=1)
    full = c.max(axis=0)
    exact = lane_costs(c, "exact")
    assert exact.shape == (4, c.shape[1])
    assert np.array_equal(exact, np.maximum(c[:4], c[4:]))
    assert np.array_equal(lane_costs(c, "lockstep"), full[None, :])
    for opt in ("esc3", "esc1", "zerostop"):
        u = lane_costs(c, opt)
        assert np.all(u >= exact) and np.all(u <= full[None, :]), opt
    esc1 = lane_costs(c, "esc1")
    assert np.all((esc1 == 0) | (esc1 == full[None, :]))  # empty or the whole column
    assert np.all(lane_costs(c, "desc") == (exact + 1) * (full > 0))
    assert np.array_equal(lane_costs(c, "pe8"), c)
    two = lane_costs(c, "2x4")
    assert two.shape == (2, c.shape[1]) and np.all(two >= exact[:2]) and np.all(two <= full)


def test_lane_costs_refuses_bad_options():
    c = _counts()
    with pytest.raises(InputError, match="unknown option"):
        lane_costs(c, "nope")
    with pytest.raises(InputError, match="even number"):
        lane_costs(c[:3], "exact")
    with pytest.raises(InputError, match="rel_bits 3"):
        lane_costs(c, "marks3")


def test_pe_counts_sum_to_the_lockstep_slots():
    q = random_qnet((40, 37, 21, 5), seed=4, density=[0.1, 0.3, 0.8])
    img = build_lockstep(q, 8, placement="lpt")
    counts = pe_counts(q.layers, [ll.perm for ll in img.layers], 8)
    assert sum(int(c.max(axis=0).sum()) for c in counts) == img.num_slots


def test_single_column_costs_its_slots_plus_fixed_overhead():
    nz = np.zeros((1, 8), dtype=bool)
    nz[0, 3] = True
    base = simulate_layer(np.zeros((4, 8), dtype=np.int64) + 1, nz, pes=8, rows=2)
    for u in (2, 5, 9):
        cost = np.ones((4, 8), dtype=np.int64)
        cost[2, 3] = u
        assert simulate_layer(cost, nz, pes=8, rows=2)[0] == base[0] + u - 1
    # the drain is rows x drain_share, PRELOAD rows
    assert simulate_layer(cost, nz, pes=8, rows=2, drain_share=4)[0] == \
        simulate_layer(cost, nz, pes=8, rows=2)[0] + 6
    assert simulate_layer(cost, nz, pes=8, rows=2, preload=False)[0] == \
        simulate_layer(cost, nz, pes=8, rows=2)[0] - 2


def test_all_zero_input_costs_one_cycle_per_group():
    nz = np.zeros((1, 64), dtype=bool)
    a = simulate_layer(np.ones((4, 64), dtype=np.int64), nz, pes=8)
    b = simulate_layer(np.ones((4, 128), dtype=np.int64), np.zeros((1, 128), dtype=bool), pes=8)
    assert b[0] - a[0] == 8


def test_lanes_balance_over_columns_where_lockstep_cannot():
    # lane 0 heavy on even columns, lane 1 on odd ones: lockstep pays 6 every column, lanes
    # pay the heavy lane's total, about half
    cols = 32
    cost = np.ones((4, cols), dtype=np.int64)
    cost[0, 0::2] = 6
    cost[1, 1::2] = 6
    nz = np.ones((1, cols), dtype=bool)
    lock = simulate_layer(cost.max(axis=0)[None, :], nz, pes=8, depth=8)[0]
    lanes = simulate_layer(cost, nz, pes=8, depth=8)[0]
    assert lock - lanes > 0.4 * 6 * cols
    # a queue of one column cannot absorb the alternation: deeper queues help
    shallow = simulate_layer(cost, nz, pes=8, depth=1)[0]
    assert shallow > lanes


def test_cheaper_lanes_never_cost_more_cycles():
    rng = np.random.default_rng(7)
    for _ in range(20):
        cols = int(rng.integers(8, 60))
        hi = rng.integers(0, 7, (4, cols))
        lo = np.minimum(hi, rng.integers(0, 7, (4, cols)))
        nz = rng.random((16, cols)) < 0.4
        for depth in (1, 2, 5):
            a = simulate_layer(lo, nz, pes=8, depth=depth)
            b = simulate_layer(hi, nz, pes=8, depth=depth)
            assert np.all(a <= b)


def test_pointer_ebr_of_lockstep_matches_its_memory_map():
    q = random_qnet((64, 48, 24, 10), seed=2, density=[0.1, 0.2, 0.5])
    img = build_lockstep(q, 8, placement="lpt")
    counts = pe_counts(q.layers, [ll.perm for ll in img.layers], 8)
    specs = [s for s in memory_specs(img) if s.name.startswith("colptr")]
    assert pointer_memories("lockstep", counts, img.num_slots) == \
        [(s.width, s.depth) for s in specs]
    assert pointer_ebr("lockstep", counts, img.num_slots) == \
        sum(ebr_blocks(s.width, s.depth) for s in specs)
    assert ebr_blocks(12, 593) == 3 and ebr_blocks(32, 91) == 2 and ebr_blocks(16, 1187) == 5
    for opt in OPTIONS:
        assert pointer_ebr(opt, counts, img.num_slots) >= 1


def test_model_matches_the_lockstep_engine_cycles():
    """Option "lockstep" against the engine itself (Amaranth simulator), layer by layer."""
    from hw.lockstep import LockstepEngine
    from tb.pysim import run_engine

    q = random_qnet((64, 48, 24, 10), seed=5, density=[0.15, 0.2, 0.5], shift=[6, 6, 6])
    img = build_lockstep(q, 8, placement="lpt")
    rng = np.random.default_rng(3)
    x = np.where(rng.random((3, 64)) < 0.4, rng.integers(1, 200, (3, 64)), 0).astype(np.int16)
    _, _, lc = run_engine(LockstepEngine(img, queue_depth=2, drain_share=1), x)
    acts = [x] + run_layers(q, x)[:-1]
    cyc = model(q.layers, [ll.perm for ll in img.layers], acts, "lockstep", depth=2)
    assert cyc.shape == lc.shape
    assert np.all(np.abs(cyc - lc) <= np.maximum(8, 0.1 * lc)), (cyc, lc)
    u = useful_macs(q.layers, acts)
    assert u.shape == lc.shape and np.all(u >= 0)


def test_command_bad_option_is_one_line_exit_2(capsys):
    assert main(["--options", "lockstep,bogus", "--count", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus" in err[0]


def test_command_prints_every_option(capsys):
    assert main(["--model", "synthetic", "--count", "3", "--options", "lockstep,exact",
                 "--placement", "lpt"]) == 0
    out = capsys.readouterr().out
    assert "lockstep" in out and "exact" in out and "%" in out
    assert "ceiling" not in out
    assert main(["--model", "synthetic", "--count", "3", "--options", "pe8",
                 "--placement", "lpt", "--bound"]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("pe8")][0]
    assert row.count("%") == 2  # MAC utilisation and its ceiling


def test_merged_lane_issues_two_of_its_entries_per_cycle():
    """One column, 4 weights all in PE 0's rows 0, 8, 16, 24: lockstep pays 4 slots; a merged
    lane (rows p % 4 == 0: its local rows 0, 2, 4, 6) pays 2, and drains 8 rows, not 4."""
    from compress.qnet import Layer

    index = np.zeros((32, 8), dtype=np.uint8)
    index[[0, 8, 16, 24], 0] = 1
    layer = Layer(codebook=np.array([0, 5], dtype=np.int16), index=index,
                  bias=np.zeros(32, dtype=np.int32), shift=0, relu=False)
    x = np.zeros((1, 8), dtype=np.int16)
    x[0, 0] = 3
    perms = [np.arange(32)]
    lock = model([layer], perms, [x], "lockstep")[0, 0]
    merged = model([layer], perms, [x], "merged")[0, 0]
    # lockstep: 4 slots + drain 4 rows; merged: 2 cycles + drain 8 rows
    assert lock - merged == (4 + 4) - (2 + 8)
    assert model([layer], perms, [x], "merged_exact")[0, 0] == merged
    with pytest.raises(InputError, match="use `model`"):
        lane_costs(np.zeros((8, 8), dtype=np.int64), "merged")


def test_work_bound_is_the_busiest_lane_and_under_every_model_run():
    """The ceiling: per layer and input, the busiest lane's work over the non-zero columns;
    the modelled engine (any queue depth) never beats it, and pe8's is the busiest PE's work."""
    q = random_qnet((64, 48, 24, 10), seed=4, density=[0.15, 0.2, 0.5], shift=[6, 6, 6])
    img = build_lockstep(q, 8, placement="lpt")
    perms = [ll.perm for ll in img.layers]
    rng = np.random.default_rng(11)
    x = np.where(rng.random((5, 64)) < 0.4, rng.integers(1, 200, (5, 64)), 0).astype(np.int16)
    acts = [x] + run_layers(q, x)[:-1]
    counts = pe_counts(q.layers, perms, 8)
    pe8 = work_bound(q.layers, perms, acts, "pe8")
    for i, k in enumerate(counts):
        phys = acts[i] if i == 0 else acts[i][:, np.asarray(perms[i - 1])]
        want = np.array([max(int(k[p][phys[b] != 0].sum()) for p in range(8))
                         for b in range(len(x))])
        assert np.array_equal(pe8[:, i], want)
    for opt in OPTIONS:
        bound = work_bound(q.layers, perms, acts, opt)
        assert bound.shape == (len(x), 3) and np.all(bound >= pe8 // 2)
        for depth in (1, 64):
            assert np.all(bound < model(q.layers, perms, acts, opt, depth=depth)), opt
    # lockstep's ceiling is its slot cycles: one slot per PE-max entry of every non-zero column
    lock = work_bound(q.layers, perms, acts, "lockstep")
    assert np.all(lock >= pe8) and np.all(work_bound(q.layers, perms, acts, "exact") <= lock)
