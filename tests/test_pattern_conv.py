"""The board's pruning pattern on conv layers (compress.pattern, `for_board` on a CNN).

A conv layer is pruned as the engine's [out_ch, in_ch * kh * kw] matrix: every column (one
kernel position of one input channel) keeps the same count in every PE's rows (output channel
p in PE p % 8), no gap needs a filler at the one-map layout's 2-bit relative rows, and the
columns' slots never fall more than the walker's queue behind its reads (`walk_ahead`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import compress
from compress.errors import InputError
from compress.pattern import (BOARDS, HAZARD_WINDOW, as_matrix, board_pattern, column_slots,
                              lockstep_mask, prune_settings, walk_backlog)
from compress.prune import PruneConfig, full_masks, update_masks
from images.placement import layer_slots

PES = 8
REL = BOARDS["icebreaker"]["conv_rel_bits"]


def _blocks_even(m: np.ndarray, pes: int = PES) -> bool:
    """Every column: each PE keeps the column's count, or all its rows when it has fewer."""
    rows = np.array([len(range(k, m.shape[0], pes)) for k in range(pes)])
    cnt = np.stack([m[k::pes].sum(axis=0) for k in range(pes)])  # [pes, cols]
    top = cnt.max(axis=0)
    return bool(np.all((cnt == top[None, :]) | (cnt == rows[:, None])))


def _walk_loop(lc, subs=1) -> int:
    """walk_backlog by its definition: the slots' lag behind one read a cycle, each column read
    subs times in a row, over one pass."""
    b = most = 0
    for v in lc:
        for _ in range(subs):
            b = max(0, b + int(v) - 1)
            most = max(most, b)
    return most


@pytest.mark.parametrize("seed", range(6))
def test_walk_backlog_is_its_definition(seed):
    rng = np.random.default_rng(seed)
    lc = rng.integers(0, 4, rng.integers(1, 60)) * (rng.random(1) < 0.9)
    for subs in (1, 2, 4):
        assert walk_backlog(lc, subs) == _walk_loop(lc, subs)
    assert walk_backlog(np.zeros(5, int)) == 0 and walk_backlog(np.ones(7, int), 4) == 0
    assert walk_backlog([2, 0, 2, 0]) == 1 and walk_backlog([3, 3, 0]) == 4  # 2, 4, 3
    # sub-positions innermost: a column's slots come subs times in a row, so one column of
    # two slots is subs reads behind, whatever empty columns follow
    assert walk_backlog([2, 0, 0, 0], 4) == 4 and walk_backlog([1, 0, 1, 1], 4) == 0


def test_column_slots():
    m = np.zeros((10, 3), bool)
    m[[0, 8], 0] = True  # PE 0 twice
    m[[1, 2, 3], 1] = True  # PEs 1-3 once
    assert list(column_slots(m, 8)) == [2, 1, 0]


@pytest.mark.parametrize("out, c, k, density, ahead, subs", [
    (50, 20, 5, 0.12, 2, 4), (50, 20, 5, 0.12, 2, 1), (50, 20, 5, 0.12, 1, 4),
    (20, 1, 5, 0.75, 2, 4), (16, 6, 3, 0.2, 2, 4), (12, 3, 3, 0.3, 0, 1), (10, 4, 1, 0.5, 2, 2)])
def test_conv_kernel_pattern(out, c, k, density, ahead, subs):
    """The conv kernel's matrix: even blocks, no fillers at 2 bits, the count kept, and the
    walker's queue bound wherever the count allows it (with sub-positions: one slot a column
    at most, as `walk_backlog` allows nothing more there)."""
    rng = np.random.default_rng(out * c + k)
    w = rng.normal(size=(out, c, k, k))
    mat = as_matrix(w)
    keep = int(round(density * mat.size))
    m = lockstep_mask(mat, np.ones_like(mat, bool), keep, rel_bits=REL, walk_ahead=ahead,
                      walk_subs=subs)
    assert m.shape == mat.shape and _blocks_even(m)
    s = layer_slots(m.astype(np.uint8), PES, rel_bits=REL)
    assert s["fillers"] == 0 and s["slots"] == s["bound"]
    assert abs(int(m.sum()) - keep) <= 2 * PES  # the nearest whole step
    lc = column_slots(m, PES)
    if keep <= mat.shape[1] * PES * 0.75:  # room for one slot a column, with empty ones
        assert walk_backlog(lc, subs) <= ahead
        if subs > ahead:
            assert lc.max() <= 1
    # the rule costs magnitude (against the same layer without it: with sub-positions no
    # hazard window, and without split ends where the rule leaves them out)
    free = lockstep_mask(mat, np.ones_like(mat, bool), keep, rel_bits=REL,
                         hazard_window=0 if subs > 1 else HAZARD_WINDOW,
                         split_ends=False if subs > ahead else "auto")
    assert np.abs(mat[free]).sum() >= np.abs(mat[m]).sum() - 1e-9


def test_walk_rule_over_pruning_rounds():
    """LeNet-5's conv2 shape pruned in rounds (the cubic ramp's 49 -> 23 -> 13 -> 12 %), each
    within the last one's mask, at the board's walk (4 sub-positions, queue 2): the early rounds
    cannot walk (2-5 slots a column), the last two can, with the layer's count kept (no hazard
    window with sub-positions innermost: it would leave a PE's one weight nowhere to go)."""
    w = np.random.default_rng(7).normal(size=(50, 500))
    alive = np.ones_like(w, bool)
    for dens in (0.491, 0.23, 0.1337, 0.12):
        keep = int(dens * w.size)
        alive = lockstep_mask(w, alive, keep, rel_bits=REL, walk_ahead=2, walk_subs=4)
        assert abs(int(alive.sum()) - keep) <= 2 * PES and _blocks_even(alive)
    lc = column_slots(alive, PES)
    assert walk_backlog(lc, 4) <= 2 and lc.max() == 1 and lc.sum() == 375


def test_walk_ahead_cannot_lower_the_count():
    """Every column needs two slots (15 of 20 weights): the queue bound cannot hold; the count
    is still the layer's, the steps the bound left out taken after the others."""
    w = np.random.default_rng(1).normal(size=(20, 25))
    m = lockstep_mask(w, np.ones_like(w, bool), 375, rel_bits=REL, walk_ahead=2)
    assert abs(int(m.sum()) - 375) <= 2 * PES and _blocks_even(m)
    assert np.array_equal(m, lockstep_mask(w, np.ones_like(w, bool), 375, rel_bits=REL,
                                           walk_ahead=2))  # deterministic


def test_refusals():
    with pytest.raises(InputError, match="Conv2d"):
        as_matrix(np.ones((2, 3, 4)))
    with pytest.raises(InputError, match="pattern_walk_ahead"):
        PruneConfig(pattern_walk_ahead=-1).validate([])
    with pytest.raises(InputError, match="rel_bits"):
        PruneConfig(pattern="lockstep", pattern_conv_rel_bits=0).validate([])
    with pytest.raises(InputError, match="unknown board"):
        prune_settings("ulx3s")


def test_the_cnn_settings_are_the_boards_one_map_layout():
    """conv_rel_bits is the relative row of the one-map layout at the board's PE count, and
    walk_ahead the board's queue depth."""
    from compress.synthetic import random_cnn
    from fpga.boards import engine_params, get_board
    from images import get
    from images.lockstep import board_options, build_lockstep

    b = board_pattern("icebreaker")
    board = get_board("icebreaker")
    pes = get(board.engine).defaults_for(board.name, board.family).pes
    q = random_cnn(seed=0)
    img = build_lockstep(q, pes, **board_options(q, pes))
    assert img.one_map and img.rel_bits == b["conv_rel_bits"]
    assert engine_params(img, "icebreaker").queue_depth == b["walk_ahead"]


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 12, 3, padding=1)
        self.c2 = nn.Conv2d(12, 20, 3)
        self.fc = nn.Linear(20 * 2 * 2, 3)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.c1(x), 2)
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def test_prune_config_patterns_conv_layers_every_step():
    torch.manual_seed(0)
    model = SmallCNN()
    cfg = PruneConfig(levels={"c1": 0.6, "c2": 0.15, "fc": 0.5},
                      **prune_settings("icebreaker")).validate(["c1", "c2", "fc"])
    masks = full_masks(model)
    for s in range(1, 4):
        old = masks
        masks = update_masks(model, masks, cfg, s, 3)
        for k in masks:
            assert not (masks[k] & ~old[k]).any()  # a subset of the previous mask
    for k in ("c1", "c2"):
        m = masks[k].numpy().reshape(masks[k].shape[0], -1)
        assert _blocks_even(m), k
        s = layer_slots(m.astype(np.uint8), PES, rel_bits=REL)
        assert s["fillers"] == 0 and s["slots"] == s["bound"], k
    # the fc layer of a CNN: unstructured (the board's cnn_fc_pattern), the threshold's count
    assert int(masks["fc"].sum()) == round(0.5 * masks["fc"].numel())
    # c2's walk: each column read 4 times in a row (its 2x2 pooling, read from the model):
    # one slot a column at most, split ends (two from none) left out where "auto" had them
    w2 = masks["c2"].numpy().reshape(20, -1)
    assert walk_backlog(column_slots(w2, PES), 4) <= BOARDS["icebreaker"]["walk_ahead"]
    assert column_slots(w2, PES).max() == 1
    # the weights pruned stay 0 in the model
    assert (model.c2.weight.detach()[~masks["c2"]] == 0).all()


def test_a_cnns_fc_layers_unstructured_unless_named():
    """cnn_fc_pattern keeps a CNN's fc layers unstructured; `patterns` names a layer's own; an
    MLP's fc layers take the pattern as before."""
    torch.manual_seed(1)
    model = SmallCNN()
    names = ["c1", "c2", "fc"]
    board = prune_settings("icebreaker")
    assert board["pattern_cnn_fc"] == "unstructured"
    ref = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def fc_mask(**kw):
        model.load_state_dict(ref)
        cfg = PruneConfig(levels={"c1": 0.6, "c2": 0.15, "fc": 0.3}, **{**board, **kw})
        masks = update_masks(model, full_masks(model), cfg.validate(names), 1, 1)
        return masks["fc"].numpy()

    w = np.abs(ref["fc.weight"].numpy())
    un = fc_mask()
    assert un.sum() == round(0.3 * w.size) and w[un].min() >= w[~un].max()  # magnitude
    pat = fc_mask(patterns={"fc": "lockstep"})
    assert _blocks_even(pat) and not np.array_equal(pat, un)
    assert np.array_equal(fc_mask(pattern_cnn_fc=None), pat)
    with pytest.raises(InputError, match="pruning pattern"):
        PruneConfig(pattern_cnn_fc="banded").validate(names)


def _images(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.random((n, 1, 12, 12)).astype(np.float32) * 0.3
    for c in range(3):
        x[y == c, 0, 4 * c: 4 * c + 3, :] += 1.0
    return x, y


@pytest.fixture(scope="module")
def board_cnn():
    x, y = _images(300, 0)
    val = _images(500, 1)
    torch.manual_seed(0)
    m = SmallCNN()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(m(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return compress.compress_model(
        m, train=(x, y), val=val, max_drop=2.0, seed=0, progress=False, prune_rounds=2,
        round_steps=(40, 100), attempts=1, densities={"c1": 0.6, "c2": 0.15, "fc": 0.5},
        for_board="icebreaker"), x


def test_for_board_cnn_end_to_end(board_cnn):
    """compress_model(for_board=...) on a CNN: the qnet's conv layers in the pattern, the
    board's image keeps their rows in logical order with no filler, and the board's engine
    (one-map layout, Amaranth simulator) computes it exactly."""
    from compress.golden import golden
    from images.lockstep import board_options, build_lockstep
    from tb.pysim import run_engine

    from .test_lockstep_board_conv import _board_engine

    result, x = board_cnn
    q = result.qnet
    assert [ly.kind for ly in q.layers] == ["conv", "conv", "fc"]
    for ly in q.layers[:2]:  # the conv layers (the fc layer unstructured)
        assert _blocks_even(np.asarray(ly.index) != 0)
    opts = board_options(q, PES)
    assert opts == {"one_map": True, "rel_bits": REL}
    img = build_lockstep(q, PES, **opts)
    for ll in img.layers[:2]:  # the pattern's placement kept: logical order
        assert np.array_equal(ll.perm, np.arange(len(ll.perm)))
    for ly in q.layers[:2]:
        s = layer_slots(np.asarray(ly.index), PES, rel_bits=REL)
        assert s["fillers"] == 0 and s["slots"] == s["bound"]
    xi = compress.api.encode_inputs(x[:2], q)
    y, cycles, lcs = run_engine(_board_engine(img), xi, seed=0, max_cycles=200_000)
    np.testing.assert_array_equal(y, golden(q, xi))
    assert np.all(lcs > 0)


def test_walk_cycles_and_conv_figures():
    """bench.board_pattern's conv measurement: the walker model's corners, and per conv layer
    reads = positions x columns and the slot cycles `lockstep_cycles` counts."""
    from bench.board_pattern import conv_figures, walk_cycles
    from compress.synthetic import random_cnn, random_inputs
    from images.lockstep import board_options, build_lockstep, lockstep_cycles

    # one read a cycle, the last slot 3 cycles after its read (pointer stage, queue, slot)
    assert walk_cycles([1] * 10) == 13 and walk_cycles([1] * 10, [False] * 10) == 10
    assert walk_cycles([0] * 7) == 8  # columns without weights: dropped in the pointer stage
    assert walk_cycles([2] * 10) == 23  # the slots bind
    assert walk_cycles([2, 0] * 5) == 13  # an empty column pays for a two-slot one
    # empty reads help only after the slots: the queue holds 2 columns (3 credits)
    assert (walk_cycles([2] * 4 + [0] * 6), walk_cycles([0] * 6 + [2] * 4)) == (13, 17)
    # depth 1: 2 credits, which come back 3 cycles after they are spent
    assert walk_cycles([1] * 10, depth=1) == 22
    # the model is the RTL's, cycle for cycle, against the Amaranth engine: see
    # tests/test_lockstep_board_conv.py
    q = random_cnn(seed=3)
    x = random_inputs(4, q.in_features, seed=0)
    rows = conv_figures(q, x)
    img = build_lockstep(q, PES, **board_options(q, PES))
    from compress.golden import run_layers

    slots = lockstep_cycles(img, [x] + run_layers(q, x)[:-1]).mean(axis=0)
    conv = [i for i, ly in enumerate(q.layers) if ly.is_conv]
    assert [r["layer"] for r in rows] == [f"l{i}" for i in conv]
    for r, i in zip(rows, conv):
        g = img.layers[i].conv_geom
        assert r["reads"] == g.passes * g.subs * img.layers[i].in_features
        assert r["slots"] == pytest.approx(slots[i])
        assert r["modelled"] >= r["reads"]  # every column read, one a cycle
        assert r["fillers"] >= 0 and 0 <= r["empty_columns"] <= r["columns"]
