# amaranth: UnusedElaboratable=no
"""Column lists: the board's one-map walker reads only a conv layer's columns with a weight
(docs/lockstep.md, "Column lists").

Three depths: the image's lists, compact pointers and column table against their definitions
and the walk they stand for (construction and validation); the walker alone
(`hw.convfe.OneMapConvFrontEnd`) in the Amaranth simulator against `one_map_list_walk`, and
the engine as the board makes it against the golden model, with the corners (every column of
a layer empty, the first and the last column empty, a single column, 1x1 kernels, padding and
stride, a layer without a list beside one with); the generated Verilog in cocotb + Icarus.
LeNet-5 through Verilator: `python -m tb sim --engine lockstep --one-map --model
compress/models/lenet-5-board.qnet.npz --count 100 --sim verilator --queue-depth 2
--drain-share 2 --dense-count 0` (docs/lanes.md section 9).
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from amaranth.hdl import Module, signed, unsigned
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from compress.errors import InputError
from compress.golden import golden
from compress.synthetic import random_cnn
from hw.convfe import OneMapConvFrontEnd
from images import conv
from images.lockstep import (COL_LIST_MIN_EMPTY, build_lockstep, choose_col_lists, col_table,
                             decode_lockstep, engine_col_ptr, memory_map, pack_col_table)
from tb.pysim import run_engine

from .conftest import REPO, long_tests
from .test_hw_conv import _inputs
from .test_lockstep_board_conv import _board_engine, _same_qnet

G = conv.ConvGeom


def _cnn_with_empty_columns(shape, convs, fc, seed, empty):
    """A random CNN whose conv layer i has no weight in the columns empty[i] (a list of
    physical = logical (c, dy, dx) columns of layer 0; "all" for every column)."""
    q = random_cnn(shape, convs, fc, seed=seed, density=0.5, shift=9)
    for i, cols in empty.items():
        idx = q.layers[i].index.reshape(q.layers[i].index.shape[0], -1)
        if cols == "all":
            idx[:] = 0
        else:
            idx[:, cols] = 0
    return q


# ---- construction ----------------------------------------------------------------------------


def test_lists_auto_true_false_and_the_pointers():
    q = _cnn_with_empty_columns((2, 8, 8), [(4, 3, 1, 1, 2), (6, 3, 1, 0, 1)], [5], 1,
                                {0: [0, 5, 17], 1: list(range(0, 36, 2))})
    n0 = q.layers[0].index.shape[1] if q.layers[0].index.ndim == 2 else 18
    auto = build_lockstep(q, 2, one_map=True, rel_bits=4)
    # layer 0: 3 of 18 empty (>= 1/8); layer 1: 18 of 36 (physical order: its own test below)
    assert 3 >= COL_LIST_MIN_EMPTY * 18
    assert auto.col_lists[0] == tuple(c for c in range(18) if c not in (0, 5, 17))
    assert auto.col_lists[2] is None  # fc: never
    every = build_lockstep(q, 2, one_map=True, rel_bits=4, col_lists=True)
    none = build_lockstep(q, 2, one_map=True, rel_bits=4, col_lists=False)
    assert none.col_lists is None and not none.listed and n0
    assert "coltab" not in [s.name for s in memory_map(none)]
    for img in (auto, every):
        _same_qnet(decode_lockstep(img), q)
        ptrs, bases = engine_col_ptr(img)
        # each listed column keeps its slots; the empty ones are gone
        for i, ll in enumerate(img.layers):
            cols = (np.arange(ll.in_features) if img.col_lists[i] is None
                    else np.asarray(img.col_lists[i]))
            n = len(cols)
            np.testing.assert_array_equal(ptrs[bases[i]: bases[i] + n],
                                          img.col_ptr[ll.col_base + cols])
            lc_all = np.diff(img.col_ptr[ll.col_base: ll.col_base + ll.in_features + 1])
            assert lc_all[np.setdiff1d(np.arange(ll.in_features), cols)].sum() == 0
        assert ptrs[-1] == img.num_slots
        specs = {s.name: s for s in memory_map(img)}
        words, firsts, aw, yb = col_table(img)
        assert specs["coltab"].init == tuple(words) and specs["coltab"].width == aw + 2 * yb
        assert specs["colptr_even"].depth + specs["colptr_odd"].depth == len(ptrs)
    # without a list the image is what it was
    np.testing.assert_array_equal(engine_col_ptr(none)[0], none.col_ptr)


def test_a_layer_with_no_weight_walks_one_column():
    q = _cnn_with_empty_columns((1, 6, 6), [(3, 3, 1, 1, 2)], [4], 2, {0: "all"})
    img = build_lockstep(q, 2, one_map=True)
    assert img.col_lists[0] == (0, 1)  # the walker's least: two columns
    _same_qnet(decode_lockstep(img), q)


def test_bad_lists_are_refused():
    q = _cnn_with_empty_columns((1, 6, 6), [(3, 3, 1, 1, 2), (4, 3, 1, 0, 1)], [4], 3,
                                {0: [1, 4]})
    img = build_lockstep(q, 2, one_map=True, col_lists=True)
    full = img.col_lists[0]
    bad = {
        "one entry per layer": (full,),
        "strictly increasing": (full[::-1],) + img.col_lists[1:],
        "2..": ((full[0],),) + img.col_lists[1:],
        "slots is not in": (full[1:],) + img.col_lists[1:],
        "conv layers only": img.col_lists[:2] + ((0, 1),),
    }
    for msg, lists in bad.items():
        with pytest.raises(InputError, match=re.escape(msg)):
            replace(img, col_lists=lists)
    with pytest.raises(InputError, match="one-map"):
        replace(build_lockstep(q, 2), col_lists=img.col_lists)
    with pytest.raises(InputError, match="strictly increasing"):
        replace(img, col_lists=((0, 0),) + img.col_lists[1:])


GEOMS = [
    G(3, 8, 8, 5, 5, 1, 1, 0, 0, 2, 2, 4),  # LeNet-5's conv2 in small
    G(2, 7, 7, 4, 3, 2, 2, 1, 1, 1, 2, 5),  # padding, stride 2, pooling 1x2
    G(6, 3, 3, 1, 1, 1, 1, 0, 0, 1, 1, 4),  # 1x1 kernel, no pooling: a column a cycle
    G(4, 4, 4, 1, 1, 1, 1, 0, 0, 2, 2, 4),  # 1x1 kernel, pooling 2x2
]


def _lists_of(g, rng):
    n = g.c * g.kh * g.kw
    some = np.flatnonzero(rng.random(n) < 0.5)
    return [tuple(range(n)), (0, 1), (n - 2, n - 1), (0, n - 1), (n // 2 - 1, n // 2),
            tuple(range(1, n - 1)), tuple(int(v) for v in some) if len(some) > 1 else (0, 2)]


def _replay(g, cols, entries):
    """The walker's arithmetic (`hw.convfe`) in Python: from the pass origin, entry I, the
    sub-position steps (`one_map_steps` levels 0 and 1), the table's column steps, at a
    pass's end entry W5 or W6 (the pass row's end): the (word, y, x) read, pass by pass."""
    steps = conv.one_map_steps(g)
    word, y, x = -g.ph * g.w - g.pw, -g.ph, -g.pw
    word, y, x = word + entries[0][0], y + entries[0][1], x + entries[0][2]
    out = []
    for p in range(g.passes):
        seq = []
        for k in range(len(cols)):
            for s in range(g.subs):
                seq.append((word, y, x))
                if s < g.subs - 1:  # b steps (level 0) unless b wraps (level 1)
                    lv = 0 if (s + 1) % g.qw else 1
                    word, y, x = word + steps["word"][lv], y + steps["y"][lv], x + steps["x"][lv]
            e = (entries[3 + k] if k < len(cols) - 1
                 else entries[2 if p % g.wp == g.wp - 1 else 1])
            word, y, x = word + e[0], y + e[1], x + e[2]
        out.append(seq)
    return out


@pytest.mark.parametrize("g", GEOMS, ids=range(len(GEOMS)))
def test_the_table_steps_walk_the_listed_columns(g):
    """Entry I, the column steps and entry W, with the sub-position and pass steps, read
    exactly the positions `one_map_list_walk` lists: `one_map_walk`'s own, for the listed
    columns only (the corners: every column, the first, the last, one, all but the ends)."""
    for cols in _lists_of(g, np.random.default_rng(g.c)):
        ents = conv.one_map_list_entries(g, cols)
        assert len(ents) == len(cols) + 2
        got = _replay(g, cols, ents)
        for p in range(g.passes):
            ref = conv.one_map_list_walk(g, p, cols)
            full = [w for w in conv.one_map_walk(g, p) if w[1] in cols]
            assert [(w, s, ok) for w, _, s, ok in ref] == [(w, s, ok) for w, _, s, ok in full]
            assert [k for _, k, _, _ in ref] == [cols.index(c) for _, c, _, _ in full]
            for (w, y, x), (wr, _, _, ok) in zip(got[p], ref):
                assert (0 <= y < g.h and 0 <= x < g.w) == ok
                if ok:
                    assert w == wr


# ---- the walker alone, Amaranth simulator ----------------------------------------------------


def _walker_run(geoms, lists, map_vals, seed, ready_p=0.7):
    """Every pass of every layer through the walker (layer i's maps at base 16 * i), with
    `o.ready` low at random: the (value, column, sub-position) it sends, pass by pass."""
    aw = 10
    ents = [conv.one_map_list_entries(g, c) if c is not None else None
            for g, c in zip(geoms, lists)]
    words, firsts, yb = pack_col_table(ents, aw, yx=any(g.ph or g.pw for g in geoms))
    has = any(c is not None for c in lists)
    dut = OneMapConvFrontEnd(
        geoms=geoms, addr_bits=aw, col_bits=9,
        lists=[(len(c), f) if c is not None else None for c, f in zip(lists, firsts)]
        if has else None, table=(len(words), yb) if has else None)
    m = Module()
    m.submodules.dut = dut
    m.submodules.map = mem = Memory(shape=signed(16), depth=1 << aw, init=map_vals)
    rp = mem.read_port()
    m.d.comb += [rp.addr.eq(dut.rd_addr), dut.rd_data[0].eq(rp.data)]
    if has:
        m.submodules.tab = tab = Memory(shape=unsigned(aw + 2 * yb), depth=max(2, len(words)),
                                        init=words)
        tp = tab.read_port()
        m.d.comb += [tp.addr.eq(dut.t_addr), dut.t_data.eq(tp.data)]
    rng = np.random.default_rng(seed)
    got = []

    async def bench(ctx):
        for i, g in enumerate(geoms):
            ctx.set(dut.layer, i)
            ctx.set(dut.base, 16 * i)
            for p in range(g.passes):
                sent = []
                ctx.set(dut.start, 1)
                ctx.set(dut.first, p == 0)
                await ctx.tick()
                ctx.set(dut.start, 0)
                for _ in range(20_000):  # hang guard
                    r = int(rng.random() < ready_p)
                    ctx.set(dut.o.ready, r)
                    if r and ctx.get(dut.o.valid):
                        pl = ctx.get(dut.o.payload)
                        sent.append((int(pl.value), int(pl.col), int(pl.sub)))
                    if not ctx.get(dut.busy):
                        break
                    await ctx.tick()
                else:
                    raise AssertionError("hang guard: the walker never finished a pass")
                for _ in range(int(rng.integers(0, 3))):  # the engine's cycles between passes
                    await ctx.tick()
                got.append(sent)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


def _walker_want(geoms, lists, map_vals):
    out = []
    for i, (g, cols) in enumerate(zip(geoms, lists)):
        for p in range(g.passes):
            walk = (conv.one_map_list_walk(g, p, cols) if cols is not None
                    else conv.one_map_walk(g, p))
            vals = [(map_vals[16 * i + w] if ok else 0, k, s) for w, k, s, ok in walk]
            out.append([v for v in vals if v[0] != 0])
    return out


WALKER_CASES = [  # (geometries, each layer's list: None, "some", "first-last", "two", "none")
    ("lenet-like", [GEOMS[0], GEOMS[1]], ["some", None]),
    ("first-last-empty", [GEOMS[1], GEOMS[0]], ["first-last", "first-last"]),
    ("two-columns", [GEOMS[0], GEOMS[3]], ["two", "two"]),
    ("all-empty", [GEOMS[1], GEOMS[0]], ["none", "some"]),
    ("1x1-no-pool", [GEOMS[2], GEOMS[3]], ["some", "some"]),
]


@pytest.mark.parametrize("case", WALKER_CASES, ids=[c[0] for c in WALKER_CASES])
def test_walker_reads_only_the_listed_columns(case):
    _id, geoms, kinds = case
    rng = np.random.default_rng(len(_id))
    lists = []
    for g, kind in zip(geoms, kinds):
        n = g.c * g.kh * g.kw
        if kind is None:
            lists.append(None)
        elif kind == "some":
            some = tuple(int(v) for v in np.flatnonzero(rng.random(n) < 0.4))
            lists.append(some if len(some) > 1 else (0, n - 1))
        elif kind == "first-last":
            lists.append(tuple(range(1, n - 1)))
        elif kind == "two":  # the least: two columns apart
            a = int(rng.integers(n - 1))
            lists.append((a, int(rng.integers(a + 1, n))))
        else:  # a layer with no weight: its list is columns 0 and 1 (`choose_col_lists`)
            lists.append((0, 1))
    vals = rng.integers(-500, 500, 1 << 10) * (rng.random(1 << 10) < 0.6)
    map_vals = [int(v) for v in vals]
    got = _walker_run(geoms, lists, map_vals, seed=len(_id))
    assert got == _walker_want(geoms, lists, map_vals)


def test_walker_without_lists_is_unchanged():
    geoms = [GEOMS[0], GEOMS[1]]
    rng = np.random.default_rng(5)
    map_vals = [int(v) for v in rng.integers(-9, 9, 1 << 10)]
    assert _walker_run(geoms, [None, None], map_vals, seed=5) == _walker_want(
        geoms, [None, None], map_vals)


# ---- the engine as the board makes it, Amaranth simulator -------------------------------------


ENGINE_CASES = [
    # id, input shape, convs, fc, pes, {layer: empty columns}, engine kwargs, run kwargs
    ("2pe-1x1-all-empty", (3, 4, 4), [(4, 1, 1, 0, 2), (5, 1, 1, 0, 1)], [3], 2,
     {0: [1], 1: "all"}, {"queue_depth": 2, "drain_share": 2}, {}),
    ("2pe-pad-first-last-empty", (1, 6, 6), [(3, 3, 1, 1, 2), (4, 3, 1, 0, 1)], [5], 2,
     {0: [0, 8], 1: [0, 26]}, {}, {}),
    ("4pe-stride2-one-column", (2, 7, 7), [(5, (4, 3), 2, 1, (1, 2)), (6, 2, 1, 0, 1)], [3], 4,
     {0: list(range(1, 24))}, {"drain_share": 2}, {"stall_in": 0.2, "stall_out": 0.3}),
]
if not long_tests():  # the fast case; LONG=1 all, each against the walk without lists
    ENGINE_CASES = ENGINE_CASES[:1]
else:
    ENGINE_CASES += [
        ("8pe-lenet-like", (1, 16, 16), [(6, 5, 1, 0, 2), (12, 3, 1, 1, 2)], [10], 8,
         {1: list(range(0, 54, 3))}, {"drain_share": 2, "queue_depth": 2}, {}),
    ]


@pytest.mark.parametrize("case", ENGINE_CASES, ids=[c[0] for c in ENGINE_CASES])
def test_engine_with_lists_bit_exact(case):
    _id, shape, convs, fc, pes, empty, ekw, rkw = case
    q = _cnn_with_empty_columns(shape, convs, fc, pes, empty)
    x = _inputs(4, int(np.prod(shape)), seed=pes)
    rb = 2 if pes == 8 else 4
    img = build_lockstep(q, pes, one_map=True, rel_bits=rb, col_lists=True)
    y, cycles, lcs = run_engine(_board_engine(img, **ekw), x, seed=pes, max_cycles=200_000,
                                **rkw)
    np.testing.assert_array_equal(y, golden(q, x))
    if not long_tests():
        return
    plain = build_lockstep(q, pes, one_map=True, rel_bits=rb, col_lists=False)
    y0, _, lcs0 = run_engine(_board_engine(plain, **ekw), x, seed=pes, max_cycles=200_000,
                             **rkw)
    np.testing.assert_array_equal(y0, y)
    # a layer with empty columns walks fewer positions (every pass, every sub-position); the
    # all-zero input (every pass of layer 0 skipped) pays the layer's one set-up cycle
    for i, cols in empty.items():
        g = conv.ConvGeom(*img.layers[i].geom)
        skipped = g.passes * g.subs * (len(cols) if cols != "all" else g.c * g.kh * g.kw - 1)
        if skipped > 4 * g.passes and not rkw:
            assert np.all(lcs[1:, i] < lcs0[1:, i]), (i, lcs[:, i], lcs0[:, i])
        assert np.all(lcs[:, i] <= lcs0[:, i] + 1), (i, lcs[:, i], lcs0[:, i])


# ---- cocotb + Icarus -------------------------------------------------------------------------


@pytest.mark.skipif(not long_tests(), reason="LONG=1: Icarus, about 10 s (the default run's "
                    "test_one_map_verilog_icarus walks a listed layer already)")
def test_lists_verilog_icarus():
    from images.lockstep import LockstepParams
    from tb.sim import build, simulate

    # stride 2, padding, pooling 1x2; layer 0's first and last column empty, every 4th of
    # layer 1's
    shape, pes = (2, 7, 7), 4
    q = _cnn_with_empty_columns(shape, [(5, (4, 3), 2, 1, (1, 2)), (6, 2, 1, 0, 1)], [3], pes,
                                {0: [0, 5, 23], 1: list(range(0, 20, 4))})
    img = build_lockstep(q, pes, one_map=True)
    assert img.listed
    x = _inputs(5, int(np.prod(shape)), seed=7)
    r = simulate(build(img, LockstepParams(drain_share=2, queue_depth=2)), x, stall_in=0.2,
                 stall_out=0.3, seed=7, back_to_back=True)
    np.testing.assert_array_equal(r.outputs, golden(q, x))


def test_auto_lists_only_where_they_keep_the_codebooks_in_block_ram():
    """Auto lists (`build_lockstep(col_lists=None)`, what the board takes) are dropped where
    their table and pointers would push PE codebooks out of the UP5K's 30 block RAMs: the
    board-pruned LeNet-5 (375 listed conv2 columns: a table of 2 blocks, the pointers 8 either
    way) walks without them and fits; asked for (True) it is listed and leaves 4 codebooks; a
    small CNN with empty columns keeps its lists (block RAMs to spare)."""
    from compress.qnet import load_qnet
    from fpga.flow.resources import analyse, board_image
    from images.lockstep import board_options, lists_keep_codebooks

    shipped = load_qnet(REPO / "compress/models/lenet-5-board.qnet.npz")
    img = board_image(shipped, "lockstep", 8)
    assert not img.listed and img.codebook_roms == 6
    assert analyse(img, spram=True)["total_ebr"] <= 30
    forced = replace(img, col_lists=choose_col_lists(
        shipped.layers, [ly.index for ly in shipped.layers], True))
    assert forced.listed and not lists_keep_codebooks(forced)

    q = random_cnn((1, 14, 14), [(20, 5, 1, 0, 2), (8, 5, 1, 0, 1)], [10], seed=5,
                   density=0.5, shift=9)
    q.layers[1].index[:, 100:] = 0
    small = build_lockstep(q, 8, **board_options(q, 8))
    assert small.listed and lists_keep_codebooks(small)
