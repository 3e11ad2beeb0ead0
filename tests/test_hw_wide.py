# amaranth: UnusedElaboratable=no
"""The EIE engine at issue width 2: the two-wide front end, the queue written with two columns
a cycle, the whole engine at both widths against the golden model, and the cycle model."""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from compress.golden import golden
from compress.synthetic import random_qnet
from hw import EngineConfigError
from hw.eie import Engine
from hw.frontend import WideFrontEnd
from hw.queue import PairQueue
from images import memory_specs
from images.eie import build_rom, default_issue_width, model_cycles, pe_images
from tb.pysim import run_engine

from .conftest import elaborate
from .test_hw_engine import _inputs


def _sim(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


class _Harness(wiring.Component):
    """The front end reading N per-PE activation memories (1-cycle read latency)."""

    def __init__(self, acts: np.ndarray, pes: int, sparse: bool, pipelined: bool = False,
                 width: int = 2):
        self.acts = acts
        self.pes = pes
        self.words = -(-len(acts) // pes)
        self.fe = WideFrontEnd(pes=pes, col_bits=max(1, len(acts).bit_length()),
                               group_bits=max(1, self.words.bit_length()), sparse=sparse,
                               pipelined=pipelined, width=width)
        self.avail = Signal(16)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fe = fe = self.fe
        n = self.pes
        for k in range(n):
            # a stale non-zero word past the last group: it must never be sent
            init = [int(v) for v in self.acts[k::n]] + [1234]
            mem = Memory(shape=signed(16), depth=self.words + 2, init=init)
            m.submodules[f"mem{k}"] = mem
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(fe.rd_addr), fe.rd_data[k].eq(rp.data)]
        m.d.comb += [fe.in_features.eq(len(self.acts)), fe.groups.eq(self.words),
                     fe.avail.eq(self.avail)]
        return m


def _reference(acts, pes, sparse, rooms, width=2):
    """What the two-wide front end sends each cycle (its documented rule, written out): the
    lowest remaining columns of the current group, then of the prefetched one, at most
    min(2, room); a group is loaded (one read a cycle) in the cycle the current one runs out.
    Returns the columns sent per cycle, up to the cycle `done` pulses (included)."""
    n = len(acts)
    groups = -(-n // pes)
    cols = [[c for c in range(g * pes, min(n, g * pes + pes)) if acts[c] != 0 or not sparse]
            for g in range(groups)]
    cur, grp, sent = [], 0, []
    for room in rooms:
        nxt = list(cols[grp]) if grp < groups else []
        k = min(width, room, len(cur) + len(nxt))
        take = (cur + nxt)[:k]
        sent.append(take)
        cur = [c for c in cur if c not in take]
        if not cur:
            if grp == groups:
                return sent
            cur = [c for c in nxt if c not in take]
            grp += 1
    raise AssertionError("the reference did not finish")


def _acts(kind, width, pes, rng):
    if kind == "one-per-group":  # every group exactly one non-zero: pairs across groups
        a = np.zeros(width, np.int64)
        for g in range(0, width, pes):
            a[g + int(rng.integers(0, min(pes, width - g)))] = int(rng.integers(1, 900))
        return a
    if kind == "odd":  # groups with 1, 3, 0, 1 (odd totals), 2, ... non-zeros
        a = np.zeros(width, np.int64)
        counts = [1, 3, 0, 1, 0, 0, 2, 5, 1]
        for g, cnt in zip(range(0, width, pes), counts * width):
            span = min(pes, width - g)
            idx = rng.choice(span, size=min(cnt, span), replace=False)
            a[g + idx] = rng.integers(-900, 900, len(idx)) | 1
        return a
    density = {"zero": 0.0, "dense": 1.0}.get(kind, 0.35)
    return np.where(rng.random(width) < density, rng.integers(-3000, 3000, width) | 1, 0)


@pytest.mark.parametrize("pes,width,kind,sparse", [
    (4, 37, "one-per-group", True), (4, 45, "odd", True), (8, 61, "odd", True),
    (3, 20, "random", True), (8, 40, "dense", True), (4, 33, "zero", True),
    (1, 9, "random", True), (16, 70, "random", True), (5, 23, "random", False),
])
@pytest.mark.parametrize("rooms", ["full", "random"])
def test_wide_front_end_sends_what_the_rule_says(pes, width, kind, sparse, rooms):
    """Every cycle's columns against `_reference`: order, pairing across groups, all-zero
    groups, the credit (room 0, 1 or 2: with room 1 only one of two columns goes)."""
    rng = np.random.default_rng(pes * 1000 + width)
    acts = _acts(kind, width, pes, rng)
    h = _Harness(acts, pes, sparse)
    fe = h.fe
    prng = random.Random(width)
    room_seq = [2 if rooms == "full" else prng.choice([0, 1, 1, 2, 2]) for _ in range(4 * width + 40)]
    want = _reference(acts, pes, sparse, room_seq)
    got = []

    async def bench(ctx):
        ctx.set(h.avail, h.words)
        ctx.set(fe.start, 1)
        await ctx.tick()
        ctx.set(fe.start, 0)
        for room in room_seq:
            ctx.set(fe.room, room)
            _, _, vld, o, done = await ctx.tick().sample(fe.o_valid, fe.o, fe.done)
            assert vld in (0, 1, 3)  # lane 1 only with lane 0
            got.append([int(o[j]["col"]) for j in range(2) if vld >> j & 1])
            for j in range(2):
                if vld >> j & 1:
                    assert int(o[j]["value"]) == acts[int(o[j]["col"])]
            if done:
                break

    _sim(h, bench)
    assert got == want
    flat = [c for cyc in got for c in cyc]
    assert flat == [c for c in range(width) if acts[c] != 0 or not sparse]
    if rooms == "random":  # the corner: two could go but only one fits
        pairs = [(r, len(cyc)) for r, cyc in zip(room_seq, got)]
        assert (1, 1) in pairs or len(flat) < 2


@pytest.mark.parametrize("pes,width,kind,sparse", [
    (4, 37, "one-per-group", True), (4, 45, "odd", True), (8, 61, "odd", True),
    (3, 20, "random", True), (8, 40, "dense", True), (4, 33, "zero", True),
    (1, 9, "random", True), (16, 70, "random", True), (5, 23, "random", False),
    (4, 3, "random", True),
])
@pytest.mark.parametrize("rooms", ["full", "random"])
def test_pipelined_front_end_sends_what_the_rule_says(pes, width, kind, sparse, rooms):
    """The pipelined (staged) front end: the same columns in the same order and pairing as the
    rule, never more than `room` a cycle, all-zero groups and layers, its values; with full
    credit one cycle behind the plain front end at most (the groups read a cycle ahead)."""
    rng = np.random.default_rng(pes * 1000 + width)
    acts = _acts(kind, width, pes, rng)
    h = _Harness(acts, pes, sparse, pipelined=True)
    fe = h.fe
    prng = random.Random(width)
    room_seq = [2 if rooms == "full" else prng.choice([0, 1, 1, 2, 2])
                for _ in range(4 * width + 40)]
    got = []

    async def bench(ctx):
        ctx.set(h.avail, h.words)
        ctx.set(fe.start, 1)
        await ctx.tick()
        ctx.set(fe.start, 0)
        for room in room_seq:
            ctx.set(fe.room, room)
            _, _, vld, o, done = await ctx.tick().sample(fe.o_valid, fe.o, fe.done)
            assert vld in (0, 1, 3)  # lane 1 only with lane 0
            assert bin(vld).count("1") <= room
            got.append([int(o[j]["col"]) for j in range(2) if vld >> j & 1])
            for j in range(2):
                if vld >> j & 1:
                    assert int(o[j]["value"]) == acts[int(o[j]["col"])]
            if done:
                break

    _sim(h, bench)
    flat = [c for cyc in got for c in cyc]
    assert flat == [c for c in range(width) if acts[c] != 0 or not sparse]
    if rooms == "full":
        want = _reference(acts, pes, sparse, room_seq)
        assert [c for c in got if c] == [c for c in want if c]  # the same pairs
        assert len(want) <= len(got) <= len(want) + 1


@pytest.mark.parametrize("pes,width,kind", [
    (4, 37, "one-per-group"), (4, 45, "odd"), (8, 61, "odd"), (3, 20, "random"),
    (8, 40, "dense"), (4, 33, "zero"), (1, 9, "random"), (16, 70, "random"), (4, 3, "random"),
])
@pytest.mark.parametrize("rooms", ["full", "random"])
def test_four_wide_front_end_sends_what_the_rule_says(pes, width, kind, rooms):
    """The pipelined front end with four lanes: the lowest remaining columns of the current
    group then the next one's, lanes filled from 0 up, never more than `room` (0..4) a cycle,
    its values; with full credit the rule's columns cycle for cycle, a cycle behind at most."""
    rng = np.random.default_rng(pes * 1000 + width)
    acts = _acts(kind, width, pes, rng)
    h = _Harness(acts, pes, True, pipelined=True, width=4)
    fe = h.fe
    prng = random.Random(width)
    room_seq = [4 if rooms == "full" else prng.choice([0, 1, 2, 3, 4, 4])
                for _ in range(4 * width + 40)]
    got = []

    async def bench(ctx):
        ctx.set(h.avail, h.words)
        ctx.set(fe.start, 1)
        await ctx.tick()
        ctx.set(fe.start, 0)
        for room in room_seq:
            ctx.set(fe.room, room)
            _, _, vld, o, done = await ctx.tick().sample(fe.o_valid, fe.o, fe.done)
            mask, cnt = (ctx.get(s) for s in fe.count_regs)
            assert cnt == bin(mask).count("1")  # the count register follows the mask
            assert vld in (0, 1, 3, 7, 15)  # lanes filled from 0 up
            assert bin(vld).count("1") <= room
            got.append([int(o[j]["col"]) for j in range(4) if vld >> j & 1])
            for j in range(4):
                if vld >> j & 1:
                    assert int(o[j]["value"]) == acts[int(o[j]["col"])]
            if done:
                break

    _sim(h, bench)
    flat = [c for cyc in got for c in cyc]
    assert flat == [c for c in range(width) if acts[c] != 0]
    if rooms == "full":
        want = _reference(acts, pes, True, room_seq, width=4)
        assert [c for c in got if c] == [c for c in want if c]
        assert len(want) <= len(got) <= len(want) + 1
    with pytest.raises(ValueError, match="pipelined"):
        WideFrontEnd(pes=4, col_bits=6, group_bits=4, width=4)


@pytest.mark.parametrize("pipelined", [False, True])
def test_wide_front_end_waits_for_unwritten_groups(pipelined):
    """Groups readable one at a time (the previous layer's drain): none sent early."""
    pes, width = 4, 30
    rng = np.random.default_rng(3)
    acts = np.where(rng.random(width) < 0.5, rng.integers(1, 100, width), 0)
    h = _Harness(acts, pes, True, pipelined=pipelined)
    fe = h.fe
    got = []

    async def bench(ctx):
        ctx.set(fe.start, 1)
        await ctx.tick()
        ctx.set(fe.start, 0)
        ctx.set(fe.room, 2)
        for cycle in range(400):
            ctx.set(h.avail, cycle // 3)
            _, _, vld, o, done = await ctx.tick().sample(fe.o_valid, fe.o, fe.done)
            for j in range(2):
                if vld >> j & 1:
                    assert int(o[j]["col"]) < (cycle // 3) * pes  # its group was written
                    got.append(int(o[j]["col"]))
            if done:
                break

    _sim(h, bench)
    assert got == [c for c in range(width) if acts[c] != 0]


@pytest.mark.parametrize("depth", [1, 2, 3, 8])
def test_pair_queue_against_a_deque(depth):
    q = PairQueue(16, depth=depth)
    rng = random.Random(depth)
    model = deque()
    seen = {"full": 0, "empty": 0, "two": 0}

    async def bench(ctx):
        nxt = 1
        for cycle in range(600):
            phase = (cycle // 100) % 3  # fill, drain, mix
            free = depth - len(model)
            k = min(free, rng.choice([0, 1, 2, 2] if phase == 0 else [0, 0, 1] if phase == 1
                                     else [0, 1, 2]))
            lanes = [0, 1] if k == 2 else rng.sample([[0], [1]], 1)[0] if k == 1 else []
            vals = [nxt + j for j in range(len(lanes))]
            nxt += len(lanes)
            for j in range(2):
                ctx.set(q.i[j].valid, j in lanes)
            for lane, v in zip(lanes, vals):
                ctx.set(q.i[lane].payload, v)
            pop = rng.random() < (0.3 if phase == 0 else 0.9 if phase == 1 else 0.5)
            ctx.set(q.o.ready, pop)
            _, _, lvl, ov, op = await ctx.tick().sample(q.level, q.o.valid, q.o.payload)
            assert lvl == len(model) and ov == (len(model) > 0)
            if model:
                assert op == model[0]
            seen["full"] += len(model) == depth
            seen["empty"] += not model
            seen["two"] += len(lanes) == 2
            if pop and model:
                model.popleft()
            model.extend(vals)

    _sim(q, bench)
    assert seen["full"] and seen["empty"] and (seen["two"] or depth == 1)


CASES = [
    # id, sizes, pes, density, qnet kwargs, engine kwargs, stall; each at widths 1 and 2
    ("1pe", (9, 5), 1, 0.5, {}, {}, 0.0),
    ("3pe-stalls", (20, 13, 7), 3, 0.3, {"shift": 8}, {}, 0.4),
    ("4pe-depth3-heavy", (16, 40, 6), 4, 0.8, {"shift": [9, 0]}, {"queue_depth": 3}, 0.0),
    ("8pe-sparse-rows-fewer", (33, 6, 5), 8, 0.2, {"shift": [7, 0]}, {"queue_depth": 2}, 0.2),
    ("4pe-depth1", (14, 9, 5), 4, 0.5, {"shift": 6}, {"queue_depth": 1}, 0.0),
    ("4pe-dense", (11, 9, 5), 4, 0.5, {"shift": 6}, {"sparse": False}, 0.0),
]


@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_engine_bit_exact_at_both_widths(case, width):
    _id, sizes, pes, density, qkw, ekw, stall = case
    qnet = random_qnet(sizes, seed=pes + 7, density=density, **qkw)
    x = _inputs(5, sizes[0], seed=pes)
    eng = Engine(build_rom(qnet, pes=pes), issue_width=width, **ekw)
    assert eng.issue_width == width
    y, cycles, lcs = run_engine(eng, x, stall_in=stall, stall_out=stall, seed=pes)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert np.all(lcs > 0) and np.all(cycles > lcs.sum(axis=1))


def test_width_two_is_faster_and_the_model_follows():
    """Sparse layers with ~1 entry per PE and column: width 2 saves front-end cycles, and the
    cycle model tracks the engine at both widths."""
    qnet = random_qnet((64, 32, 10), seed=11, density=0.12, shift=[8, 0])
    x = _inputs(4, 64, seed=11)[1:]
    rom = build_rom(qnet, pes=8)
    lc = {}
    for w in (1, 2):
        y, _, lcs = run_engine(Engine(rom, issue_width=w), x)
        np.testing.assert_array_equal(y, golden(qnet, x))
        lc[w] = lcs
        mc = model_cycles(rom, x, issue_width=w)
        assert abs(int(mc.sum()) - int(lcs.sum())) <= 0.03 * lcs.sum()
    assert lc[2].sum() < 0.9 * lc[1].sum()


def test_default_width_and_refusals():
    rom = build_rom(random_qnet((9, 5), seed=0, density=0.5), pes=4)
    eng = Engine(rom)
    elaborate(eng)  # made for its parameters
    assert eng.issue_width == 2 == default_issue_width(4)
    assert default_issue_width(2) == 1 and default_issue_width(16) == 2
    specs = {s.name: s for s in eng.memory_specs}
    assert [s for s in memory_specs(rom) if s.name in specs] == list(specs.values())
    assert specs["pe0.ptr_even"].read_ports == 2 and specs["pe0.ptr_odd"].read_ports == 2
    assert specs["pe0.entries"].read_ports == 1
    with pytest.raises(EngineConfigError, match="issue width"):
        Engine(rom, issue_width=3)
    with pytest.raises(ValueError, match="issue_width"):
        from hw.eie.pe import PE

        PE(pe_images(rom)[0], col_bits=4, row_bits=2, issue_width=0)


def test_analysis_front_end_bound_follows_the_rule():
    """tb.analysis.frontend_cycles at widths 2 and 4: the cycle `_reference` finishes in, on
    random masks; width 1: one cycle per non-zero and per all-zero group."""
    from tb.analysis import frontend_cycles

    rng = np.random.default_rng(0)
    for _ in range(200):
        pes, width, d = int(rng.integers(1, 9)), int(rng.integers(1, 40)), rng.random()
        a = (rng.random(width) < d).astype(int)
        assert frontend_cycles(a[None] != 0, pes, 2)[0] == len(_reference(a, pes, True,
                                                                        [2] * 200)) - 1
        assert frontend_cycles(a[None] != 0, pes, 4)[0] == len(
            _reference(a, pes, True, [4] * 200, width=4)) - 1
        groups = a.reshape(-1) if pes == 1 else np.pad(a, (0, -width % pes)).reshape(-1, pes)
        want1 = int(np.maximum(groups.reshape(len(groups), -1).sum(axis=1), 1).sum())
        assert frontend_cycles(a[None] != 0, pes, 1)[0] == want1
