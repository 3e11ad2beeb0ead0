# amaranth: UnusedElaboratable=no
"""A CNN on the board's lockstep engine: the one-map layout (docs/lockstep.md, "On the board").

Three depths: the image, the board's memory plan and the one-value walk against their
definitions (construction); the engine with its map in a simulated single-port SPRAM (a read
the engine used in a cycle a write took the port would come back poisoned) and codebooks in
ROMs, in the Amaranth simulator against the golden model, on small CNNs with the corners
(padding, stride 2, pooling 2x2 and 1x2, maps down to 1x1, an all-pruned channel, an all-zero
input, a conv last layer); the generated Verilog in cocotb + Icarus, and the board core driven
through its UART pins with the weights loaded over it (tests/test_fpga_conv.py has the EIE
engine's). The netlist: `python -m fpga.flow.gate --model compress/models/lenet-5.qnet.npz`
(Verilator; the 8-PE board core's netlist in Icarus took over 20 minutes for one digit).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from compress.golden import golden
from compress.shipped import load_model
from compress.synthetic import random_cnn, random_inputs, random_qnet
from fpga.boards import ice40
from fpga.flow.resources import analyse, board_image, fit_bound, fits
from hw.lockstep import LockstepEngine
from hw.memory import MemorySpec
from images import conv
from images.lockstep import (LockstepParams, board_options, build_lockstep, decode_lockstep,
                             memory_map, packed_lanes)
from tb.pysim import run_engine

from .conftest import long_tests
from .test_hw_conv import _inputs, _prune
from .test_hw_lockstep_conv import CASES


def _same_qnet(a, b):
    assert a.input_shape == b.input_shape and len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert x.kind == y.kind and x.shift == y.shift and x.relu == y.relu
        np.testing.assert_array_equal(x.index, y.index)
        np.testing.assert_array_equal(x.bias, y.bias)
        np.testing.assert_array_equal(x.codebook, y.codebook)


def _case_net(case):
    _id, shape, convs, fc, pes, prune, ekw, rkw = case
    qnet = random_cnn(shape, convs, fc, seed=pes, density=0.5, shift=9)
    if prune:
        _prune(qnet, **prune)
    return qnet


# ---- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_one_map_image_decodes_exactly(case):
    qnet, pes = _case_net(case), case[4]
    img = build_lockstep(qnet, pes, one_map=True, rel_bits=3)
    _same_qnet(decode_lockstep(img), qnet)
    # the lanes hold the slot word PE after PE, 16 bits a lane word
    e, words = img.entry_bits, img.lanes()
    assert len(words) == -(-pes * e // 16)
    whole = sum(w.astype(object) << (16 * j) for j, w in enumerate(words))
    for k in range(pes):
        np.testing.assert_array_equal([(int(v) >> (k * e)) & ((1 << e) - 1) for v in whole],
                                      img.slots[:, k])
    specs = {s.name: s for s in memory_map(img)}
    assert not any(n.endswith(".act") for n in specs) and specs["map"].kind == "ram"
    assert all(specs[f"lane{j}"].width <= 16 for j in range(len(words)))


def test_packed_lanes_cut_across_words():
    slots = np.array([[0b101010, 0b010101, 0b111111], [1, 2, 3]], dtype=np.uint32)
    lo, hi = packed_lanes(slots, 6)
    assert int(lo[0]) == (0b101010 | 0b010101 << 6 | (0b111111 & 0xF) << 12)
    assert int(hi[0]) == 0b11 and int(hi[1]) == 0  # the last entry's top 2 bits
    assert int(lo[1]) == (1 | 2 << 6 | 3 << 12)


def test_one_map_only_for_cnns_and_board_options():
    mlp = random_qnet((20, 12, 10), density=[0.5, 0.5], seed=1)
    with pytest.raises(Exception, match="one_map"):
        build_lockstep(mlp, 4, one_map=True)
    assert board_options(mlp, 8) == {}  # an MLP's board image is what it was
    cnn = _case_net(CASES[0])
    assert board_options(cnn, 8) == {"one_map": True, "rel_bits": 2}  # 8 x 6 bits: 3 lanes
    assert board_options(cnn, 4) == {"one_map": True, "rel_bits": 4}
    # not a power of two: the one-value walk takes any PE count
    img = build_lockstep(cnn, 3, one_map=True)
    _same_qnet(decode_lockstep(img), cnn)


def test_lenet5_board_plan():
    """LeNet-5 on the UP5K at 8 PEs: the slot word in 3 SPRAMs (6-bit entries), every map in
    the fourth, column pointers 8 EBR, accumulators 16, 6 codebook ROMs: 30 of 30."""
    q, _ = load_model("compress/models/lenet-5.qnet.npz")
    assert fits(fit_bound(q, "lockstep", 8))
    img = board_image(q, "lockstep", 8)
    assert img.one_map and img.rel_bits == 2 and img.codebook_roms == 6
    _same_qnet(decode_lockstep(img), q)
    plan = ice40.load_plan_for(img)
    assert [s.name for s in plan] == ["lane0", "lane1", "lane2"]
    assert plan.acts == {"map": ice40.WHOLE}
    a = analyse(img, spram=True)
    assert fits(a) and a["total_ebr"] == 30 and a["spram_used"] == 4
    assert {g: a["groups"][g]["ebr"] for g in ("colptr_even", "colptr_odd", "acc", "codebook",
                                               "map")} == {"colptr_even": 4, "colptr_odd": 4,
                                                           "acc": 16, "codebook": 6, "map": 0}


@pytest.mark.parametrize("geom", [
    (1, 6, 6, 3, 3, 1, 1, 1, 1, 2, 2, 3), (2, 7, 7, 4, 3, 2, 2, 1, 1, 1, 2, 5),
    (3, 4, 4, 1, 1, 2, 2, 0, 0, 1, 1, 2), (2, 5, 5, 4, 4, 2, 2, 2, 2, 1, 1, 1),
])
def test_one_map_walk(geom):
    """Every pass's walk reads, for each sub-position, exactly the kernel's positions inside
    the map (at their (C, H, W) words, columns (c, dy, dx)), and the walker's steps
    (`one_map_steps`) lead from each position to the next, across passes too."""
    g = conv.ConvGeom(*geom)
    steps = conv.one_map_steps(g)
    prev = None
    for p in range(g.passes):
        walk = conv.one_map_walk(g, p)
        assert len(walk) == g.subs * g.c * g.kh * g.kw
        py, px = divmod(p, g.wp)
        for s in range(g.subs):
            a, b = divmod(s, g.qw)
            y0, x0 = (py * g.qh + a) * g.sh - g.ph, (px * g.qw + b) * g.sw - g.pw
            want = {(c * g.h * g.w + y * g.w + x, (c * g.kh + y - y0) * g.kw + x - x0)
                    for c in range(g.c) for y in range(max(y0, 0), min(y0 + g.kh, g.h))
                    for x in range(max(x0, 0), min(x0 + g.kw, g.w))}
            assert {(w, col) for w, col, ss, ok in walk if ss == s and ok} == want
        for i, (w, col, s, ok) in enumerate(walk):
            c, rest = divmod(col, g.kh * g.kw)
            a, b = divmod(s, g.qw)
            y = (py * g.qh + a) * g.sh - g.ph + rest // g.kw
            x = (px * g.qw + b) * g.sw - g.pw + rest % g.kw
            if prev is not None:  # the step from the previous position
                lv = prev[3]
                assert (w - prev[0], y - prev[1], x - prev[2]) == tuple(
                    steps[k][lv] for k in ("word", "y", "x"))
            dx, dy, cc = rest % g.kw, rest // g.kw, c
            ends = [b == g.qw - 1, a == g.qh - 1, dx == g.kw - 1, dy == g.kh - 1,
                    cc == g.c - 1, px == g.wp - 1]
            lv = next((k for k, e in enumerate(ends) if not e), len(ends))
            prev = (w, y, x, lv)
        # a skipped pass: its first position to the next pass's first (`one_map_pass_steps`);
        # every position it reads inside the map is in its pass column's columns
        # (`one_map_pass_cols`)
        if p + 1 < g.passes:
            nxt = conv.one_map_walk(g, p + 1)[0][0]
            r = int(px == g.wp - 1)
            first_y = py * g.qh * g.sh - g.ph
            first_x = px * g.qw * g.sw - g.pw
            assert nxt - walk[0][0] == conv.one_map_pass_steps(g)["word"][r]
            assert (first_y + conv.one_map_pass_steps(g)["y"][r],
                    first_x + conv.one_map_pass_steps(g)["x"][r]) == (
                ((p + 1) // g.wp) * g.qh * g.sh - g.ph, ((p + 1) % g.wp) * g.qw * g.sw - g.pw)
        xlo, xhi = conv.one_map_pass_cols(g)[px]
        seen = {w % g.w for w, _, _, ok in walk if ok}
        assert seen == set(range(xlo, xhi)) or not seen


@pytest.mark.parametrize("rel_bits", [1, 2, 4])
def test_long_fillers_round_trip(rel_bits):
    """Long fillers (`images.csc`): random sparse columns with gaps far longer than
    2**rel_bits - 1 (and none) decode exactly; each filler stands for 1 + z << rel_bits rows,
    a weight's z is below 2**rel_bits, and no more fillers than the short kind need."""
    from images.csc import decode_csc, encode_csc

    rng = np.random.default_rng(rel_bits)
    for density in (0.0, 0.02, 0.1, 0.6):
        mat = ((rng.random((97, 40)) < density) * rng.integers(1, 16, (97, 40))).astype(np.uint8)
        mat[:, 0] = 0
        mat[96, 1] = 3  # a gap of 96 rows
        v, z, ptr = encode_csc(mat, rel_bits=rel_bits, long_fillers=True)
        assert np.all(z < (1 << rel_bits))
        np.testing.assert_array_equal(
            decode_csc(v, z, ptr, 97, rel_bits=rel_bits, long_fillers=True), mat)
        short = encode_csc(mat, rel_bits=rel_bits)[0]
        assert np.count_nonzero(v == 0) <= np.count_nonzero(short == 0)
        if density < 0.1:
            assert np.count_nonzero(v == 0) < np.count_nonzero(short == 0)
        if np.any((v == 0) & (z > 0)):  # read as short fillers they mean something else
            try:
                assert not np.array_equal(decode_csc(v, z, ptr, 97), mat)
            except ValueError:
                pass


def test_one_map_long_fillers_in_the_engine():
    """An fc layer of 30 rows a PE at rel_bits 1 and 2 (most gaps need fillers): the one-map
    image uses long fillers, decodes exactly and the engine is bit-exact."""
    qnet = random_cnn((1, 6, 6), [(4, 3, 1, 1, 2)], [60, 5], seed=3, density=0.08, shift=9)
    x = _inputs(3, 36, seed=3)
    for rel_bits in (1, 2):
        img = build_lockstep(qnet, 2, one_map=True, rel_bits=rel_bits)
        assert img.long_fillers
        ent = img.slots.astype(np.int64)
        v, z = ent & ((1 << img.index_bits) - 1), ent >> img.index_bits
        assert np.any((v == 0) & (z > 0))  # long fillers there
        _same_qnet(decode_lockstep(img), qnet)
        y, _, _ = run_engine(_board_engine(img), x, seed=3, max_cycles=200_000)
        np.testing.assert_array_equal(y, golden(qnet, x))


def test_whole_map_ram_in_spram():
    """The map wholly in a (simulated) SPRAM: a read returns the word written before, holds
    with en low, and in a cycle a write takes the port comes back poisoned (0x5A5A)."""
    spec = MemorySpec("map", "ram", 16, 50, (), read_ports=1, write_ports=1)
    assert ice40.act_plan([spec], ["conv", "fc"]) == {"map": ice40.WHOLE}
    assert ice40.act_plan([spec], ["fc", "fc"]) == {}
    mem = ice40.Memories([], acts={"map": ice40.WHOLE})
    m = Module()
    ports = mem(m, spec)
    r, w = ports.read[0], ports.write[0]
    tick = Signal()
    m.d.sync += tick.eq(~tick)
    rng = np.random.default_rng(5)
    ops = [tuple(int(v) for v in (rng.integers(2), rng.integers(50), rng.integers(2),
                                  rng.integers(50), rng.integers(1 << 16))) for _ in range(500)]
    seen = []

    async def bench(ctx):
        ref, want = [None] * 50, None
        for ren, raddr, wen, waddr, wdata in ops:
            for sig, v in ((r.en, ren), (r.addr, raddr), (w.en, wen), (w.addr, waddr),
                           (w.data, wdata)):
                ctx.set(sig, v)
            if ren:
                want = 0x5A5A if wen else ref[raddr]
            await ctx.tick()
            if wen:
                ref[waddr] = wdata
            if want is not None:
                assert ctx.get(r.data) == want
                seen.append(want)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert 0x5A5A in seen and len(seen) > 100


# ---- the engine in the Amaranth simulator ----------------------------------------------------


def _board_engine(img, cls=LockstepEngine, **kw):
    """The engine as the board makes it: the map in a simulated SPRAM, codebooks in ROMs."""
    img = replace(img, codebook_roms=max(1, img.pes - 2))
    return cls(img, memories=ice40.Memories([], acts={"map": ice40.WHOLE}), **kw)


SIM_CASES = CASES[:3] if not long_tests() else CASES


@pytest.mark.parametrize("case", SIM_CASES, ids=[c[0] for c in SIM_CASES])
def test_one_map_engine_bit_exact(case):
    _id, shape, convs, fc, pes, prune, ekw, rkw = case
    qnet = _case_net(case)
    x = _inputs(4, int(np.prod(shape)), seed=pes)
    img = build_lockstep(qnet, pes, one_map=True, rel_bits=2 if pes == 8 else 4)
    y, cycles, lcs = run_engine(_board_engine(img, **ekw), x, seed=pes, max_cycles=200_000,
                                **rkw)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert np.all(lcs > 0) and np.all(cycles > lcs.sum(axis=1))
    assert np.all(lcs[0, 0] < lcs[1:, 0])  # the all-zero input: its conv1 the fastest


class _NoZeroSkip(LockstepEngine):
    """Layer 0's all-zero passes walked in full (the skip left out, to compare)."""

    def _zero_passes(self, m, c, cfe, g):
        pass


def _margin_inputs(shape, seed):
    """Digit-like inputs: non-zero values inside a box, zero margins of random widths (one
    all zero, one with a single non-zero value in a corner)."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    xs = [np.zeros(shape, np.int16), np.zeros(shape, np.int16)]
    xs[1][-1, -1, -1] = 77
    for _ in range(3):
        x = np.zeros(shape, np.int16)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        x[:, y0:y1, x0:x1] = rng.integers(-300, 300, (c, y1 - y0, x1 - x0)) * (
            rng.random((c, y1 - y0, x1 - x0)) < 0.5)
        xs.append(x)
    return np.stack(xs).reshape(len(xs), -1)


@pytest.mark.parametrize("case", [
    ("8pe-pad2-pool2", (1, 12, 12), [(6, 5, 1, 2, 2)], [4], 8, None, {"drain_share": 2}, {}),
    ("2pe-stride2-pool1x2", (2, 11, 9), [(3, (3, 2), 2, 1, (1, 2)), (4, 2, 1, 0, 1)], [3], 2,
     None, {}, {"stall_out": 0.3}),
], ids=lambda c: c[0])
def test_one_map_zero_passes_skipped(case):
    """Layer 0's passes whose map columns hold only zeros (margins, an all-zero map, a lone
    value in a corner) are skipped: bit-exact, and layer 0 takes fewer cycles than walking them, the
    same where no pass is all zero."""
    _id, shape, convs, fc, pes, prune, ekw, rkw = case
    qnet = random_cnn(shape, convs, fc, seed=pes, density=0.5, shift=9)
    x = _margin_inputs(shape, seed=pes)
    img = build_lockstep(qnet, pes, one_map=True, rel_bits=2 if pes == 8 else 4)
    want = golden(qnet, x)
    y, _, lcs = run_engine(_board_engine(img, **ekw), x, seed=pes, max_cycles=200_000, **rkw)
    np.testing.assert_array_equal(y, want)
    y0, _, lcs0 = run_engine(_board_engine(img, _NoZeroSkip, **ekw), x, seed=pes,
                             max_cycles=200_000, **rkw)
    np.testing.assert_array_equal(y0, want)
    assert np.all(lcs[:, 0] <= lcs0[:, 0]) and lcs[0, 0] < lcs0[0, 0] and lcs[1, 0] < lcs0[1, 0]
    np.testing.assert_array_equal(lcs[:, 1:], lcs0[:, 1:])  # later layers as they were
    g = conv.ConvGeom(*img.layers[0].geom)
    assert lcs[0, 0] < lcs0[0, 0] - g.passes * g.subs  # every pass of the zero map skipped


class _LoaderAnytime(LockstepEngine):
    """The map's port given to the loader in every cycle (the rule broken on purpose)."""

    def _sequencer(self, m, c):
        super()._sequencer(m, c)
        m.d.sync += c.io.wfree.eq(1)


def _back_to_back(engine, x, max_cycles=100_000):
    """Every input word offered as soon as the engine takes it (the next input while the
    current one computes); the outputs in order."""
    words = [int(v) for v in np.asarray(x).reshape(-1)]
    n_out = engine.out_features * len(x)
    got = []

    async def bench(ctx):
        i = 0
        ctx.set(engine.o_act.ready, 1)
        for _ in range(max_cycles):
            ctx.set(engine.i_act.valid, int(i < len(words)))
            ctx.set(engine.i_act.payload, words[min(i, len(words) - 1)])
            _, _, rdy, vld, pl = await ctx.tick().sample(engine.i_act.ready, engine.o_act.valid,
                                                         engine.o_act.payload)
            i += int(i < len(words) and rdy)
            if vld:
                got.append(pl)
            if len(got) >= n_out:
                return
        raise AssertionError("no result")

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got, dtype=np.int16).reshape(len(x), -1)


class _LoadWhenIdle(LockstepEngine):
    """The loader given the map's port only while the engine waits in PRE0 (as before)."""

    def _load_under_compute(self, m, c, io):
        pass


def _stream_periods(engine, x, max_cycles=200_000):
    """Inputs offered back to back (the next as soon as the engine takes it): (outputs, the
    cycle of each result's last word, each result's layer_cycles)."""
    words = [int(v) for v in np.asarray(x).reshape(-1)]
    n_out, L = engine.out_features, engine.num_layers
    got, stamps, lcs = [], [], []

    async def bench(ctx):
        i = 0
        ctx.set(engine.o_act.ready, 1)
        for t in range(max_cycles):
            ctx.set(engine.i_act.valid, int(i < len(words)))
            ctx.set(engine.i_act.payload, words[min(i, len(words) - 1)])
            _, _, rdy, vld, pl = await ctx.tick().sample(engine.i_act.ready, engine.o_act.valid,
                                                         engine.o_act.payload)
            i += int(i < len(words) and rdy)
            if vld:
                got.append(pl)
                if len(got) % n_out == 0:
                    stamps.append(t)
                    await ctx.tick()
                    lcs.append([ctx.get(engine.layer_cycles[k]) for k in range(L)])
            if len(got) >= n_out * len(x):
                return
        raise AssertionError("no result")

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return (np.array(got, dtype=np.int16).reshape(len(x), -1), np.array(stamps),
            np.array(lcs))


def test_one_map_next_input_loads_under_layers_1_on():
    """Inputs back to back: the next input is loaded while layers 1.. compute (the map's port
    free: walker idle, no drain write), so a result follows the previous one by about the
    compute alone, not compute + the input's words (and bit-exact: the poison shows any read
    the loader spoils; test_the_port_rule_is_what_keeps_it_exact)."""
    qnet = random_cnn((1, 8, 8), [(4, 3, 1, 1, 1), (4, 3, 1, 1, 2)], [5], seed=4, density=0.5,
                      shift=9)
    x = _margin_inputs((1, 8, 8), seed=4)
    img = build_lockstep(qnet, 4, one_map=True)
    want = golden(qnet, x)
    y, stamps, lcs = _stream_periods(_board_engine(img, drain_share=2), x)
    np.testing.assert_array_equal(y, want)
    y0, stamps0, lcs0 = _stream_periods(_board_engine(img, _LoadWhenIdle, drain_share=2), x)
    np.testing.assert_array_equal(y0, want)
    np.testing.assert_array_equal(lcs, lcs0)  # the compute is the same
    # each result sooner by the input's 64 words and PRE0's cycle after the take that fills
    # the bank (the bank is full before PRE0 now)
    saved = np.diff(stamps0) - np.diff(stamps)
    np.testing.assert_array_equal(saved, 65)


@pytest.mark.skipif(not long_tests(), reason="LONG=1: LeNet-5 back to back (about 150 CPU s)")
def test_lenet5_back_to_back_period():
    """LeNet-5 on the board's engine, the first 3 sample digits offered back to back: bit-exact,
    and a result follows the previous one by its compute and under 200 cycles (the input's 784
    words loaded under layers 1..; docs/conv.md: 183)."""
    from compress.data import load_sample
    from compress.golden import mnist_to_input
    from fpga.flow.resources import board_image

    from compress.qnet import load_qnet
    from compress.shipped import SHIPPED_DIR

    qnet = load_qnet(SHIPPED_DIR / "lenet-5.qnet.npz")
    img = board_image(qnet, "lockstep", 8)
    x = mnist_to_input(load_sample().images[:3], qnet.input_frac).reshape(3, -1)
    y, stamps, lcs = _stream_periods(_board_engine(img, drain_share=2, queue_depth=2), x,
                                     max_cycles=400_000)
    np.testing.assert_array_equal(y, golden(qnet, x))
    extra = np.diff(stamps) - lcs.sum(axis=1)[1:]
    assert np.all(extra < 200), extra


def test_the_port_rule_is_what_keeps_it_exact():
    """Inputs back to back: exact as the engine is; with the loader writing the next input
    while a layer reads the map, the simulated SPRAM poisons reads and the results go wrong
    (the engine's rule is what the tests see)."""
    case = CASES[0]
    qnet = _case_net(case)
    x = _inputs(4, int(np.prod(case[1])), seed=2)
    img = build_lockstep(qnet, case[4], one_map=True)
    want = golden(qnet, x)
    np.testing.assert_array_equal(_back_to_back(_board_engine(img), x), want)
    assert np.any(_back_to_back(_board_engine(img, _LoaderAnytime), x) != want)


# ---- cocotb + Icarus -------------------------------------------------------------------------


def test_one_map_verilog_icarus():
    from tb.sim import build, simulate

    case = CASES[1]  # stride 2, padding, pooling 1x2, an all-pruned input channel
    qnet = _case_net(case)
    x = _inputs(5, int(np.prod(case[1])), seed=7)
    params = LockstepParams(drain_share=2, queue_depth=2)
    r = simulate(build(build_lockstep(qnet, case[4], one_map=True), params), x, stall_in=0.2,
                 stall_out=0.3, seed=7, back_to_back=True)
    np.testing.assert_array_equal(r.outputs, golden(qnet, x))
    assert np.all(r.layer_cycles > 0)


# conv (pool 2) -> conv -> fc -> fc: LeNet-5's kinds on a small map
BOARD_CNN = random_cnn((1, 8, 8), [(5, 3, 1, 1, 2), (10, 3, 1, 1, 1)], [12, 10], seed=3,
                       density=0.5)


def _board_cnn_lockstep(pes, count=2):
    from fpga.flow.bench import simulated_board
    from fpga.host.client import Board

    img = board_image(BOARD_CNN, "lockstep", pes)
    assert img.one_map and ice40.load_plan_for(img).acts == {"map": ice40.WHOLE}
    x = random_inputs(count, BOARD_CNN.in_features, seed=6, density=0.5)
    x[0, :3] = [32767, -32768, -1]
    want = golden(BOARD_CNN, x)
    with simulated_board(img, spram=True) as t:
        board = Board(t, timeout=600)
        info = board.ping()
        assert not info.loaded and (info.pes, info.num_layers) == (pes, 4)
        assert info.engine == "lockstep"
        assert board.load(img) > 0 and board.ping().loaded
        for i in range(len(x)):
            res = board.infer(x[i])
            np.testing.assert_array_equal(res.y, want[i])
            assert res.cycles > sum(res.layer_cycles) > 0
        c = board.counters()
        assert (c.inferences, c.errors) == (len(x), 0)


def test_board_cnn_lockstep_rtl():
    _board_cnn_lockstep(8)



def test_cycle_model_refuses_the_one_map_layout():
    from images.lanes import lockstep_cycle_model

    img = build_lockstep(_case_net(CASES[0]), 2, one_map=True)
    with pytest.raises(ValueError, match="one-map"):
        lockstep_cycle_model(img, np.zeros((1, 36), np.int16), LockstepParams())


def test_tb_run_one_map(tmp_path, capsys):
    """`python -m tb run --one-map` runs the board's layout in the RTL bench; an MLP or the EIE
    engine is refused with one line."""
    from compress.qnet import save_qnet
    from tb.cli import main

    save_qnet(BOARD_CNN, tmp_path / "cnn.npz", index_bits=4)
    mlp = random_qnet((64, 12, 10), density=[0.5, 0.5], seed=1)  # the CNN's input width
    save_qnet(mlp, tmp_path / "mlp.npz", index_bits=4)
    x = random_inputs(2, BOARD_CNN.in_features, seed=9, density=0.5)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", "--engine", "lockstep", "--one-map", "--pes", "8", "--model",
                 str(tmp_path / "cnn.npz"), "--inputs", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), golden(BOARD_CNN, x))
    for model, engine in (("mlp.npz", "lockstep"), ("cnn.npz", "eie")):
        capsys.readouterr()
        assert main(["run", "--engine", engine, "--one-map", "--pes", "2", "--model",
                     str(tmp_path / model), "--inputs", str(tmp_path / "x.npy"), "--out",
                     str(tmp_path / "z.npy")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--one-map" in err


@pytest.mark.skipif(not long_tests(), reason="LONG=1: two CNNs in the engine (about 100 CPU s)")
def test_walk_model_is_the_engines_conv_walk():
    """bench.board_pattern's walk model (the one the board pattern's walk rule is checked
    against) is the engine's walk cycle for cycle: on two networks of the same shapes, one
    with conv2's columns at one slot, one at up to four, conv2's cycles in the Amaranth
    engine less the model's are the same to a cycle a pass (PRELOAD and the drain, which the
    model leaves out, and the pass's end: LeNet-5's conv2, 16 passes, 84.8 cycles a pass on
    both shipped networks); and the one-slot columns walk at one read a cycle."""
    from bench.board_pattern import conv_figures

    x = None
    extra = []
    for dens in (0.12, 0.5):
        q = random_cnn((1, 12, 12), [(6, 3, 1, 0, 2), (16, 3, 1, 0, 2)], [4], seed=3,
                       density=0.5, shift=9)
        # conv2's map dense, as LeNet-5's (no holds to model)
        q = replace(q, layers=[replace(q.layers[0], relu=False), *q.layers[1:]])
        idx = q.layers[1].index
        rng = np.random.default_rng(0)
        keep = np.zeros(idx.shape, bool)
        if dens < 0.2:  # one weight a PE in every other column
            for c in range(0, idx.shape[1], 2):
                keep[rng.permutation(8) + 8 * rng.integers(0, 2, 8), c] = True
        else:
            keep = rng.random(idx.shape) < dens
        q.layers[1].index[:] = np.where(keep, np.maximum(idx, 1), 0)
        if x is None:
            x = _inputs(3, 144, seed=1)
        img = build_lockstep(q, 8, **board_options(q, 8))
        _y, _cycles, lcs = run_engine(_board_engine(img, drain_share=2), x, seed=0,
                                      max_cycles=200_000)
        model = conv_figures(q, x)[1]
        extra.append(lcs[:, 1].mean() - model["modelled"])
        if dens < 0.2:
            assert model["slots_dense_position"] == idx.shape[1] // 2
            assert model["modelled"] <= model["reads"] + 4 * img.layers[1].conv_geom.passes
    passes = img.layers[1].conv_geom.passes
    assert abs(extra[0] - extra[1]) <= passes and extra[0] > 0
