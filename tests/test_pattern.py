"""The board's pruning pattern (compress.pattern) and what the lockstep image makes of it."""

import itertools

import numpy as np
import pytest
import torch

from compress.errors import InputError
from compress.pattern import BOARDS, _Blocks, board_pattern, lockstep_mask
from images.balance import at_bound, holds, layer_slots
from images.csc import encode_csc


def _weights(out, cols, seed):
    rng = np.random.default_rng(seed)
    # columns of very different importance, as a trained first layer has
    return rng.standard_normal((out, cols)) * (rng.random(cols) ** 2)[None, :]


def _per_pe(mask, pes):
    return np.stack([mask[k::pes].sum(axis=0) for k in range(pes)])  # [pes, cols]


@pytest.mark.parametrize("out,cols,density,pes", [
    (150, 240, 0.042, 8), (100, 300, 0.0525, 8), (10, 100, 0.182, 8), (37, 50, 0.3, 8),
    (45, 60, 0.1, 4), (5, 40, 0.5, 8), (64, 20, 0.02, 16)])
def test_every_column_even_over_the_pes(out, cols, density, pes):
    w = _weights(out, cols, out + cols)
    keep = int(round(density * w.size))
    m = lockstep_mask(w, np.ones_like(w, dtype=bool), keep, pes=pes)
    assert abs(int(m.sum()) - keep) <= pes  # the nearest whole step
    have = np.array([len(range(k, out, pes)) for k in range(pes)])
    counts = _per_pe(m, pes)
    top = counts.max(axis=0)
    # every PE holds the column's count, or all of its rows when it has fewer
    assert np.array_equal(counts, np.minimum(top[None, :], have[:, None]))
    s = layer_slots(m.astype(np.uint8), pes, rel_bits=4)
    assert s["fillers"] == 0 and s["slots"] == s["bound"]
    assert at_bound(m.astype(np.uint8), pes, rel_bits=4)


def test_without_the_gap_bound_fillers_appear_and_the_bound_removes_them():
    w = _weights(200, 300, 1)
    keep = int(0.042 * w.size)
    free = lockstep_mask(w, np.ones_like(w, dtype=bool), keep, bound_gaps=False)
    bound = lockstep_mask(w, np.ones_like(w, dtype=bool), keep)
    a = layer_slots(free.astype(np.uint8), 8, rel_bits=4)
    b = layer_slots(bound.astype(np.uint8), 8, rel_bits=4)
    assert a["fillers"] > 0 and b["fillers"] == 0
    # without the bound the counts are still even: only the fillers cost
    assert np.ptp(_per_pe(free, 8), axis=0).max() == 0
    assert a["slots"] > a["bound"]
    # the bound costs magnitude, never more weights
    assert np.abs(w)[bound].sum() <= np.abs(w)[free].sum()


def test_one_pe_without_bound_is_magnitude_pruning():
    w = _weights(40, 30, 2)
    keep = 150
    m = lockstep_mask(w, np.ones_like(w, dtype=bool), keep, pes=1, bound_gaps=False)
    assert m.sum() == keep
    assert np.abs(w)[m].min() >= np.abs(w)[~m].max()


def test_a_subset_of_the_alive_mask_and_deterministic():
    w = _weights(60, 50, 3)
    alive = np.random.default_rng(4).random(w.shape) < 0.4
    m = lockstep_mask(w, alive, 300)
    assert not (m & ~alive).any()
    assert np.array_equal(m, lockstep_mask(w, alive, 300))
    assert np.array_equal(lockstep_mask(w, alive, 10**6), alive)
    assert not lockstep_mask(w, alive, 0).any()


def _brute(val, live, window, t):
    """Best (value, live count) over t picks with bounded gaps, by enumeration."""
    best = (-np.inf, 0)
    for rows in itertools.combinations(range(len(val)), t):
        gaps = np.diff((-1,) + rows)
        if (gaps > window).any() or not np.isfinite(val[list(rows)]).all():
            continue
        v = val[list(rows)].sum()
        if v > best[0]:
            best = (v, int(live[list(rows)].sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_dynamic_program_equals_enumeration(seed):
    rng = np.random.default_rng(seed)
    R, window = 9, int(rng.integers(1, 4))
    live = rng.random((5, R)) < 0.7
    val = np.where(live, rng.random((5, R)), -np.inf)
    val[:, R - 1 - seed % 3:] = np.where(rng.random((5, 1 + seed % 3)) < 0.3, -np.inf,
                                         val[:, R - 1 - seed % 3:])
    b = _Blocks(val, live, window, R)
    for t in range(1, R + 1):
        for i in range(5):
            want = _brute(val[i], live[i], window, t)
            assert b.best[i, t] == pytest.approx(want[0]) or (want[0] == -np.inf
                                                              and b.best[i, t] == -np.inf)
            if np.isfinite(want[0]):
                assert b.count[i, t] == want[1]
        picks = b.picks(np.full(5, t))
        for i in range(5):
            if np.isfinite(b.best[i, t]):
                assert picks[i].sum() == t
                assert val[i][picks[i]].sum() == pytest.approx(b.best[i, t])
                assert (np.diff(np.r_[-1, np.flatnonzero(picks[i])]) <= window).all()


def test_rel_bits_sets_the_gap():
    w = _weights(96, 40, 5)
    for rb in (1, 2, 3):
        m = lockstep_mask(w, np.ones_like(w, dtype=bool), 200, pes=4, rel_bits=rb)
        for k in range(4):
            _, _, ptr = encode_csc(m[k::4].astype(np.uint8), rel_bits=rb)
            assert ptr[-1] == m[k::4].sum()  # no fillers


def test_bad_settings_refused():
    w = np.ones((4, 4))
    with pytest.raises(InputError, match="pattern PEs"):
        lockstep_mask(w, w > 0, 3, pes=0)
    with pytest.raises(InputError, match="rel_bits"):
        lockstep_mask(w, w > 0, 3, rel_bits=13)
    with pytest.raises(InputError, match="2-D"):
        lockstep_mask(np.ones(4), np.ones(4, dtype=bool), 3)
    with pytest.raises(InputError, match="unknown board"):
        board_pattern("ulx3s")


def test_the_board_pattern_is_what_the_board_builds():
    from fpga.boards import engine_params as board_params
    from compress.synthetic import random_qnet
    from images import build_image

    from fpga.boards import get_board
    from images import get

    b = board_pattern("icebreaker")
    assert b == BOARDS["icebreaker"] and b["pattern"] == "lockstep"
    board = get_board("icebreaker")  # the board's own engine and PE count
    assert board.engine == b["pattern"]
    assert get(board.engine).defaults_for(board.name, board.family).pes == b["pes"]
    img = build_image(random_qnet((64, 16, 10), seed=0), "lockstep", b["pes"])
    assert img.rel_bits == b["rel_bits"] and img.entry_bits * 2 == 16
    assert board_params(img).drain_share >= 1


def test_prune_config_applies_the_pattern_every_step():
    from torch import nn

    from compress.prune import PruneConfig, prune
    from compress.train import TrainConfig
    from tests.conftest import striped_digits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 40),
                          nn.ReLU(), nn.Linear(40, 10))
    levels = {"1": 0.05, "3": 0.1, "5": 0.2}
    cfg = PruneConfig(levels=levels, steps=2, pattern="lockstep", pattern_drop_dead=True,
                      retrain=TrainConfig(epochs=1, batch_size=64, lr=1e-2, progress=False))
    masks = prune(model, striped_digits(256), cfg, log=lambda s: None)
    for name, layer in (("1", model[1]), ("3", model[3]), ("5", model[5])):
        m = masks[name].numpy()
        want = round(levels[name] * m.size)
        # the count the threshold keeps, to a step; less where units died (below) after their
        # inputs were chosen, or a PE could not keep its count under the hazard window
        assert 0.8 * want <= m.sum() <= want + 8
        idx = m.astype(np.uint8)
        assert at_bound(idx, 8, rel_bits=4) and layer_slots(idx, 8)["fillers"] == 0
        assert torch.equal(layer.weight.detach() != 0, masks[name] & (layer.weight != 0))
    # no unit keeps incoming weights once the next layer no longer reads it, and its bias is
    # 0: its output is 0 (the engine skips it) where it was unused
    for a, b in (("1", "3"), ("3", "5")):
        unread = ~masks[b].any(dim=0)
        assert unread.any() and not masks[a][unread].any()
        assert not model[int(a)].bias[unread].any()
    # unstructured for one layer: the threshold's own mask there
    cfg2 = PruneConfig(levels=levels, steps=1, pattern="lockstep", patterns={"5": "unstructured"},
                       retrain=TrainConfig(epochs=0.1, batch_size=64, lr=1e-2, progress=False))
    torch.manual_seed(0)
    m2 = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 40),
                       nn.ReLU(), nn.Linear(40, 10))
    w5 = m2[5].weight.detach().clone()
    got = prune(m2, striped_digits(64), cfg2, log=lambda s: None)["5"]
    assert int(got.sum()) == round(0.2 * 400)
    assert w5.abs()[got].min() >= w5.abs()[~got].max()
    with pytest.raises(InputError, match="pattern"):
        PruneConfig(pattern="banked").validate(["1"])
    with pytest.raises(InputError, match="unknown layer"):
        PruneConfig(patterns={"fc9": "lockstep"}).validate(["1"])
    with pytest.raises(InputError, match="split_ends"):
        PruneConfig(pattern_split_ends="maybe").validate(["1"])


def test_split_ends_per_layer_override_the_layers_setting():
    from torch import nn

    from compress.prune import PruneConfig, full_masks, update_masks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 40),
                          nn.ReLU(), nn.Linear(40, 10))
    w = {k: model[int(k)].weight.detach().numpy().copy() for k in ("1", "3")}
    levels = {"1": 0.1, "3": 0.15, "5": 1.0}

    def masks(**kw):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 40),
                          nn.ReLU(), nn.Linear(40, 10))
        cfg = PruneConfig(levels=levels, pattern="lockstep", pattern_drop_dead=False,
                          pattern_split_ends=True, **kw)
        return {k: v.numpy() for k, v in update_masks(m, full_masks(m), cfg, 1, 1).items()}

    same = masks()
    mixed = masks(pattern_split_ends_layers={"3": False})
    np.testing.assert_array_equal(mixed["1"], same["1"])  # the other layers keep the setting
    for name, split in (("1", True), ("3", False)):
        want = lockstep_mask(w[name], np.ones(w[name].shape, dtype=bool),
                             round(levels[name] * w[name].size), split_ends=split)
        np.testing.assert_array_equal(mixed[name], want)
    # with split ends a PE keeps 0 or >= 2 weights of a column; without, some keep one
    per_pe = lambda m: np.stack([m[k::8].sum(axis=0) for k in range(8)])  # noqa: E731
    assert not (per_pe(same["3"]) == 1).any() and (per_pe(mixed["3"]) == 1).any()
    with pytest.raises(InputError, match="split_ends"):
        PruneConfig(pattern_split_ends_layers={"1": "maybe"}).validate(["1"])
    with pytest.raises(InputError, match="unknown layer"):
        PruneConfig(pattern_split_ends_layers={"fc9": False}).validate(["1"])


def test_the_image_keeps_the_logical_order_and_decodes_exactly():
    from compress.qnet import Layer, QNet
    from images.lockstep import build_lockstep, decode_lockstep, lockstep_cycles

    rng = np.random.default_rng(7)
    sizes = (120, 50, 30, 10)
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        m = lockstep_mask(_weights(b, a, i), np.ones((b, a), dtype=bool), int(0.15 * a * b),
                          split_ends=True)
        idx = np.where(m, rng.integers(1, 16, m.shape), 0).astype(np.uint8)
        cb = np.r_[0, rng.integers(-300, 300, 15)].astype(np.int16)
        layers.append(Layer(codebook=cb, index=idx, bias=rng.integers(-99, 99, b).astype(np.int32),
                            shift=6, relu=i < 2))
    q = QNet(layers=layers)
    img = build_lockstep(q, 8)
    for ll in img.layers:
        assert np.array_equal(ll.perm, np.arange(ll.out_features))
    assert decode_lockstep(img).equals(q)
    for i, layer in enumerate(q.layers):
        s = layer_slots(layer.index, 8)
        lc = np.diff(img.col_ptr[img.layers[i].col_base:
                                 img.layers[i].col_base + layer.in_features + 1])
        assert lc.sum() == s["bound"]
    x = rng.integers(0, 3, (4, sizes[0])).astype(np.int16)
    acts = [x] + [rng.integers(0, 2, (4, n)).astype(np.int16) for n in sizes[1:-1]]
    assert lockstep_cycles(img, acts).shape == (4, 3)
    # split ends: no PE's first row of a column is any column's last row, so no input can
    # make a hold in the layers where every PE has two rows (not the 10-row last layer)
    dense = [np.ones((1, n), dtype=np.int16) for n in sizes[:-1]]
    many = [rng.integers(0, 2, (50, n)).astype(np.int16) for n in sizes[:-1]]
    for a in (dense, many):
        assert not holds(img, a)[:, :2].any()
    free = [lockstep_mask(_weights(b, a, 9), np.ones((b, a), dtype=bool), int(0.15 * a * b),
                          split_ends=False) for a, b in zip(sizes[:2], sizes[1:3])]
    q2 = QNet(layers=[Layer(codebook=q.layers[i].codebook, index=free[i].astype(np.uint8),
                            bias=q.layers[i].bias, shift=6, relu=True) for i in range(2)])
    assert holds(build_lockstep(q2, 8), dense[:2])[0].sum() > 0


def test_holds_counts_a_first_weight_on_the_row_just_written():
    from compress.qnet import Layer, QNet
    from images.lockstep import build_lockstep

    idx = np.zeros((8, 3), dtype=np.uint8)
    idx[0, 0] = idx[0, 1] = 1  # PE 0: column 0 ends on row 0, column 1 starts there
    idx[1, 2] = 1  # column 2: PE 1 only
    for k in range(8):
        idx[k, 0] = idx[k, 1] = 1
    q = QNet(layers=[Layer(codebook=np.array([0, 5], dtype=np.int16), index=idx,
                           bias=np.zeros(8, dtype=np.int32), shift=0, relu=False)])
    img = build_lockstep(q, 8)
    x = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 1]], dtype=np.int16)
    # 0 -> 1: every PE's row 0 again (a hold); 1 -> 2 and 0 -> 2: PE 1's row 0 again
    assert holds(img, [x])[:, 0].tolist() == [2, 1, 1]


def _reuses(m, window):
    """(PE, earlier column, column) where a PE's first row in a column is its last row in one
    of the window - 1 columns with weights before it."""
    live = np.flatnonzero(m.any(axis=0))
    out = []
    for k in range(8):
        blk = m[k::8]
        for i, c in enumerate(live):
            rows = np.flatnonzero(blk[:, c])
            for a in live[max(0, i - window + 1): i]:
                prev = np.flatnonzero(blk[:, a])
                if len(rows) and len(prev) and rows[0] == prev[-1]:
                    out.append((k, a, c))
    return out


@pytest.mark.parametrize("window", [2, 3, 5])
def test_hazard_window_spaces_a_pes_row_reuse(window):
    w = _weights(100, 300, 11)
    m = lockstep_mask(w, np.ones_like(w, dtype=bool), 1575, split_ends=False,
                      hazard_window=window)
    s = layer_slots(m.astype(np.uint8), 8)
    assert s["slots"] == s["bound"] and s["fillers"] == 0
    assert not _reuses(m, window)
    # without the window the same layer reuses a row in the next column
    m0 = lockstep_mask(w, np.ones_like(w, dtype=bool), 1575, split_ends=False, hazard_window=0)
    assert _reuses(m0, 2)


def test_for_board_is_checked_before_any_work():
    import subprocess
    import sys

    from torch import nn

    import compress

    m = nn.Sequential(nn.Linear(4, 3))
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    with pytest.raises(InputError, match="unknown board 'ulx3s'"):
        compress.compress_model(m, train=(x, y), for_board="ulx3s")
    r = subprocess.run([sys.executable, "-m", "compress", "pipeline", "--arch", "lenet-300-100",
                        "--for-board", "ulx3s", "--out", "build/never"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown board" in r.stderr
    r = subprocess.run([sys.executable, "-m", "compress", "pipeline", "--arch", "lenet-300-100",
                        "--ship-name", "x", "--out", "build/never"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--ship-name" in r.stderr
