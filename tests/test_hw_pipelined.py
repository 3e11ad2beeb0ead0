# amaranth: UnusedElaboratable=no
"""The EIE engine's pipelined front end (`EieParams.pipelined`, the ECP5 boards' engine): its
parameters and refusals, a PE's credit counting the broadcast register, the whole engine in the
Amaranth simulator against the golden model on the corners (queues of 1 and 2 slots full and
throttling, fewer rows than PEs, all-zero columns and inputs, stalls, the dense baseline, a
loadable engine) and the cycle model beside it. The cocotb bench on the generated Verilog is in
tests/test_tb_engine.py (the `pipelined` cases) and tests/test_tb_conv.py."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from compress.golden import golden
from compress.synthetic import random_qnet
from hw import EngineConfigError
from hw.eie import Engine
from hw.eie.pe import EXTRA_SLOTS, PE
from hw.eie.pointer import PointerRead
from images import memory_specs
from images.eie import EieParams, build_rom, model_cycles, pe_images
from images.engines import EIE
from tb.pysim import run_engine

from .conftest import elaborate, long_tests
from .test_hw_engine import _inputs


def test_parameters_and_refusals():
    rom = build_rom(random_qnet((20, 9, 5), seed=0, density=0.5), pes=4)
    eng = Engine(rom, pipelined=True)
    elaborate(eng)
    assert eng.pipelined and eng.issue_width == 2
    # no memory more: the registers are logic
    assert Engine(rom).memory_specs == eng.memory_specs
    assert memory_specs(rom, EieParams(pipelined=True)) == memory_specs(rom)
    with pytest.raises(EngineConfigError, match="two-wide"):
        Engine(rom, pipelined=True, issue_width=1)
    with pytest.raises(EngineConfigError, match="two-wide"):  # 2 PEs: width 1 by default
        Engine(build_rom(random_qnet((9, 5), seed=0, density=0.5), pes=2), pipelined=True)
    with pytest.raises(EngineConfigError, match="True or False"):
        Engine(rom, pipelined=1)
    with pytest.raises(EngineConfigError, match="queue depth at most"):
        Engine(rom, pipelined=True, queue_depth=64)
    Engine(rom, pipelined=True, queue_depth=64 - EXTRA_SLOTS)
    with pytest.raises(ValueError, match="issue_width 2"):
        PE(pe_images(rom)[0], col_bits=5, row_bits=3, pipelined=True)
    # the ECP5 boards' default, dropped where the default width is 1
    p = EIE.params_for("ulx3s", "ecp5")
    assert p.pipelined and p.fitted(16).pipelined and p.fitted(4).pipelined
    assert not p.fitted(2).pipelined and not p.fitted(1).pipelined
    assert EieParams(pipelined=True, issue_width=2).fitted(2).pipelined  # asked for: kept
    assert not EIE.params_for("icebreaker", "ice40").pipelined
    assert not EIE.params().pipelined  # the benches' engine is the plain one
    with pytest.raises(Exception, match="two-wide"):
        model_cycles(rom, np.zeros((1, 20), np.int16), issue_width=1, pipelined=True)


def test_four_wide_parameters_and_refusals():
    """Four columns a cycle: the pipelined engine's only (four read ports on each pointer bank,
    no other memory), fully connected layers only; the ULX3S's default (queues of 20),
    dropped with `pipelined` where the default width is 1."""
    rom = build_rom(random_qnet((20, 9, 5), seed=0, density=0.5), pes=4)
    eng = Engine(rom, pipelined=True, issue_width=4)
    elaborate(eng)
    assert eng.issue_width == 4 and len(eng.pe_blocks[0].bcw) == 4
    specs = {s.name: s for s in eng.memory_specs}
    two = {s.name: s for s in Engine(rom, pipelined=True).memory_specs}
    assert specs["pe0.ptr_even"].read_ports == 4 and specs["pe0.ptr_odd"].read_ports == 4
    assert {k: (v.width, v.depth, v.init) for k, v in specs.items()} == \
        {k: (v.width, v.depth, v.init) for k, v in two.items()}
    with pytest.raises(EngineConfigError, match="pipelined"):
        Engine(rom, issue_width=4)
    with pytest.raises(EngineConfigError, match="1, 2 or 4"):
        Engine(rom, pipelined=True, issue_width=3)
    with pytest.raises(ValueError, match="pipelined"):
        PE(pe_images(rom)[0], col_bits=5, row_bits=3, issue_width=4)
    with pytest.raises(Exception, match="pipelined"):
        model_cycles(rom, np.zeros((1, 20), np.int16), issue_width=4)
    from fpga.boards.ecp5 import FOUR_WIDE

    p = EieParams(**FOUR_WIDE["params"])  # the ULX3S's default (four-wide)
    assert (p.issue_width, p.queue_depth, p.pipelined) == (4, 20, True)
    assert p.fitted(16) == p and p.fitted(4) == p
    assert p.fitted(2).issue_width is None and not p.fitted(2).pipelined


def test_conv_network_refuses_four_wide():
    """A network with conv layers keeps two columns a cycle: four are refused up front."""
    from compress.synthetic import random_cnn

    qnet = random_cnn((1, 6, 6), [(3, 3, 1, 1, 2)], [5], seed=1, density=0.5, shift=9)
    rom = build_rom(qnet, pes=4)
    with pytest.raises(EngineConfigError, match="conv"):
        Engine(rom, pipelined=True, issue_width=4)


def test_registered_pointer_read_construction():
    """`registered` adds the second register (`held`) and nothing else; the plain one has no
    `held` and elaborates as before."""
    kw = dict(col_bits=5, base_bits=6, ptr_bits=7, even_addr_bits=5, odd_addr_bits=5)
    plain, reg = PointerRead(**kw), PointerRead(**kw, registered=True)
    assert not plain.registered and reg.registered
    assert "held" in reg.signature.members and "held" not in plain.signature.members
    assert plain.signature.members.keys() | {"held"} == reg.signature.members.keys()
    elaborate(reg)
    elaborate(PointerRead(**kw, sub_bits=2, registered=True))
    with pytest.raises(ValueError, match="ptr_bits"):
        PointerRead(**{**kw, "ptr_bits": 0}, registered=True)


@pytest.mark.parametrize("sub_bits", [0, 2])
def test_registered_pointer_read_two_cycles(sub_bits):
    """A column taken in cycle t: its pointers are read (busy) in t + 1 and it is on `o`
    (held) in t + 2, from registers, with (value, start, end, sub); a column with no entries
    is dropped on the way (never held); back-to-back columns keep their order."""
    ptr = [0, 3, 3, 5, 9, 9, 12, 15]  # column c spans ptr[c] .. ptr[c+1]-1 (base 0)
    even = [ptr[k] for k in range(0, len(ptr), 2)]
    odd = [ptr[k] for k in range(1, len(ptr), 2)]
    pr = PointerRead(col_bits=4, base_bits=4, ptr_bits=5, even_addr_bits=3, odd_addr_bits=3,
                     sub_bits=sub_bits, registered=True)
    cols = [0, 1, 2, 3, 4, 6]  # 1 and 4 are empty
    got = []

    async def bench(ctx):
        ctx.set(pr.base, 0)
        ctx.set(pr.credit, 1)
        seq = [(c, 10 * c - 7, c % 4) for c in cols] + [None] * 4
        for item in seq:
            if item is None:
                ctx.set(pr.i.valid, 0)
            else:
                c, v, sub = item
                ctx.set(pr.i.valid, 1)
                ctx.set(pr.i.payload.col, c)
                ctx.set(pr.i.payload.value, v)
                if sub_bits:
                    ctx.set(pr.i.payload.sub, sub)
            assert ctx.get(pr.i.ready)  # the credit, whatever valid is
            await ctx.tick()
            # the RAMs: 1-cycle synchronous reads of the address presented before the edge
            ctx.set(pr.even.data, even[min(ctx.get(ea), len(even) - 1)])
            ctx.set(pr.odd.data, odd[min(ctx.get(oa), len(odd) - 1)])
            assert ctx.get(pr.o.valid) == ctx.get(pr.held)
            if ctx.get(pr.o.valid):
                o = ctx.get(pr.o.payload)
                got.append((ctx.get(pr.busy), int(o.value), int(o.start), int(o.end),
                            int(o.sub) if sub_bits else 0))

    ea, oa = Signal(3), Signal(3)
    m = Module()
    m.submodules.pr = pr
    m.d.sync += [ea.eq(pr.even.addr), oa.eq(pr.odd.addr)]
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = [(10 * c - 7, ptr[c], ptr[c + 1], c % 4 if sub_bits else 0) for c in cols
            if ptr[c] != ptr[c + 1]]
    assert [g[1:] for g in got] == want
    assert got[0][0] == 1  # the next column is in the first stage meanwhile


def test_lane_queue_against_a_reference():
    """`LaneQueue`: random writes on up to four lanes a cycle (within the room `level` leaves)
    and random reads come out in lane order, nothing lost; `level` counts them."""
    from collections import deque

    from hw.queue import LaneQueue

    depth = 5
    q = LaneQueue(8, depth=depth, lanes=4)
    rng = np.random.default_rng(7)
    ref = deque()
    nxt = [1]

    async def bench(ctx):
        for _ in range(300):
            level = ctx.get(q.level)
            assert level == len(ref)
            room = depth - level
            valid = [bool(rng.random() < 0.5) for _ in range(4)]
            while sum(valid) > room:
                valid[valid.index(True)] = False
            pop = bool(rng.random() < 0.6) and level > 0
            if level:
                assert ctx.get(q.o.valid) and ctx.get(q.o.payload) == ref[0]
            ctx.set(q.o.ready, pop)
            for j in range(4):
                ctx.set(q.i[j].valid, valid[j])
                ctx.set(q.i[j].payload, nxt[0] % 256)
                if valid[j]:
                    ref.append(nxt[0] % 256)
                nxt[0] += 1
            if pop:
                ref.popleft()
            await ctx.tick()

    sim = Simulator(q)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    with pytest.raises(ValueError, match="lanes"):
        LaneQueue(8, depth=4, lanes=0)


def test_pe_credit_counts_the_broadcast_register():
    """A pipelined PE's `room` is its free slots (up to 4) after the columns on `bcw` now: those
    are in the engine's register and hold their slots, as they do in both pointer registers
    until the sequencer or the queue takes them; idle is low while one is there."""
    rom = build_rom(random_qnet((16, 8), seed=2, density=1.0), pes=4)
    depth = 3
    pe = PE(pe_images(rom)[0], col_bits=5, row_bits=3, queue_depth=depth, issue_width=2,
            pipelined=True)
    seen = []

    async def bench(ctx):
        ctx.set(pe.layer, 0)
        await ctx.tick()
        assert ctx.get(pe.room) == depth + EXTRA_SLOTS and ctx.get(pe.idle)
        ctx.set(pe.bcw_valid, 0b11)
        ctx.set(pe.bcw[0].value, 5)
        ctx.set(pe.bcw[0].col, 0)
        ctx.set(pe.bcw[1].value, 7)
        ctx.set(pe.bcw[1].col, 4)  # column 4 is PE 0's too (dense weights: every column)
        seen.append((ctx.get(pe.room), ctx.get(pe.idle)))
        await ctx.tick()
        ctx.set(pe.bcw_valid, 0)
        # the two are in the pointer stage now
        seen.append((ctx.get(pe.room), ctx.get(pe.idle)))
        await ctx.tick()
        # and in its second register (`PointerRead.held`): still counted
        seen.append((ctx.get(pe.room), ctx.get(pe.idle)))
        await ctx.tick()
        # the first went on to the sequencer (its bypass), the second is queued
        seen.append((ctx.get(pe.room), ctx.get(pe.idle)))

    sim = Simulator(pe)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    free = depth + EXTRA_SLOTS - 2
    assert seen == [(free, 0), (free, 0), (free, 0), (free + 1, 0)]


# id, sizes, pes, weight density, qnet kwargs, engine kwargs, stall
CASES = [
    ("4pe-depth1-heavy", (16, 40, 6), 4, 0.8, {"shift": [9, 0]}, {"queue_depth": 1}, 0.0),
    ("8pe-rows-fewer-than-pes-depth2", (33, 6, 5), 8, 0.2, {"shift": [7, 0]},
     {"queue_depth": 2}, 0.2),
    ("4pe-stalls", (20, 13, 7), 4, 0.3, {"shift": 8}, {}, 0.4),
    ("16pe-sparse", (50, 24, 10), 16, 0.15, {"shift": [8, 0]}, {}, 0.0),
    ("4pe-dense-baseline", (11, 9, 5), 4, 0.5, {"shift": 6}, {"sparse": False}, 0.0),
    ("4pe-loadable", (14, 9, 5), 4, 0.5, {"shift": 6}, {"loadable": True}, 0.0),
    # four columns a cycle (the ECP5 boards' default): a queue of 2 slots against four lanes,
    # stalls, the dense baseline (every column sent), a loadable engine, 16 PEs
    ("4pe-4wide-depth1-heavy", (16, 40, 6), 4, 0.8, {"shift": [9, 0]},
     {"queue_depth": 1, "issue_width": 4}, 0.0),
    ("8pe-4wide-stalls", (33, 13, 5), 8, 0.3, {"shift": [8, 0]}, {"issue_width": 4}, 0.3),
    ("4pe-4wide-dense-baseline", (11, 9, 5), 4, 0.5, {"shift": 6},
     {"sparse": False, "issue_width": 4}, 0.0),
    ("4pe-4wide-loadable", (14, 9, 5), 4, 0.5, {"shift": 6},
     {"loadable": True, "issue_width": 4}, 0.0),
    ("16pe-4wide-depth20", (70, 40, 10), 16, 0.25, {"shift": [9, 0]},
     {"queue_depth": 20, "issue_width": 4}, 0.0),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pipelined_engine_bit_exact(case):
    """Bit-exact against the golden model, an all-zero input and inputs with all-zero groups
    among them; at most a few cycles a layer slower than the plain engine, never faster than
    the plain one with queues of 8."""
    _id, sizes, pes, density, qkw, ekw, stall = case
    qnet = random_qnet(sizes, seed=pes + 3, density=density, **qkw)
    x = _inputs(5, sizes[0], seed=pes)
    x[2, : 2 * pes] = 0  # two all-zero groups first
    rom = build_rom(qnet, pes=pes)
    y, cycles, lcs = run_engine(Engine(rom, pipelined=True, **ekw), x, stall_in=stall,
                                stall_out=stall, seed=pes)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert np.all(lcs > 0) and np.all(cycles > lcs.sum(axis=1))
    if stall == 0 and not ekw.get("loadable"):
        if ekw.get("issue_width", 2) == 2:
            _, _, plain = run_engine(Engine(rom, **ekw), x)
            # the broadcast register and the pointer stage's second register (+2 a layer with
            # columns), the forwarding later (after the first), the credit a cycle old (a
            # small queue waits on it; its extra slot may also win a cycle back)
            if ekw.get("queue_depth", 8) >= 8:
                assert np.all(lcs >= plain) and np.all(lcs <= plain + 5)
        if ekw.get("sparse", True):  # the cycle model is exact at both widths
            np.testing.assert_array_equal(
                model_cycles(rom, x, pipelined=True, queue_depth=ekw.get("queue_depth", 8),
                             issue_width=ekw.get("issue_width", 2)), lcs)


def test_small_queues_throttle_and_stay_exact():
    """Heavy columns into queues of 1 slot: the credit holds the front end back (the engine
    is slower than with 8 slots) and nothing is lost or reordered (bit-exact)."""
    qnet = random_qnet((24, 30, 6), seed=5, density=0.9, shift=[9, 0])
    x = _inputs(4, 24, seed=5)
    rom = build_rom(qnet, pes=4)
    lc = {}
    for depth in (1, 8):
        y, _, lcs = run_engine(Engine(rom, pipelined=True, queue_depth=depth), x)
        np.testing.assert_array_equal(y, golden(qnet, x))
        lc[depth] = lcs
    assert lc[1].sum() > lc[8].sum()


def test_the_cycle_model_follows_the_pipelined_engine():
    """The cycle model with `pipelined` gives the engine's cycles exactly, every layer of every
    input (an all-zero one too), and puts the pipelined engine a few cycles a layer behind the
    plain one."""
    qnet = random_qnet((64, 32, 10), seed=11, density=0.12, shift=[8, 0])
    x = _inputs(4, 64, seed=11)
    rom = build_rom(qnet, pes=8)
    _, _, lcs = run_engine(Engine(rom, pipelined=True), x)
    mc = model_cycles(rom, x, pipelined=True)
    np.testing.assert_array_equal(mc, lcs)
    plain = model_cycles(rom, x)
    # (the all-zero input is quicker: the staged front end reads its groups ahead)
    assert np.all(mc[1:] >= plain[1:]) and np.all(mc <= plain + 6)


@pytest.mark.parametrize("seed", range(24 if long_tests() else 3))
def test_the_cycle_model_is_exact_on_random_networks(seed):
    """Random shapes, 4-16 PEs, weight densities 5-90 %, queues of 1-16 columns, an all-zero
    input first: `model_cycles(pipelined=True)` gives every layer's cycles of the engine
    exactly."""
    rng = np.random.default_rng(100 + seed)
    layers = int(rng.integers(1, 4))
    sizes = tuple(int(v) for v in rng.integers(3, 60, layers + 1))
    pes = int(rng.choice([4, 8, 16]))
    density = float(rng.choice([0.05, 0.15, 0.4, 0.9]))
    depth = int(rng.choice([1, 2, 4, 8, 16]))
    qnet = random_qnet(sizes, seed=seed, density=density, shift=[8] * layers)
    x = _inputs(4, sizes[0], seed=seed)
    rom = build_rom(qnet, pes=pes)
    y, _, lcs = run_engine(Engine(rom, pipelined=True, queue_depth=depth), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    np.testing.assert_array_equal(model_cycles(rom, x, pipelined=True, queue_depth=depth), lcs)


@pytest.mark.parametrize("seed", range(24 if long_tests() else 4))
def test_the_four_wide_cycle_model_is_exact_on_random_networks(seed):
    """As above with four columns a cycle (queues of 1-20): bit-exact, and the cycle model
    with `issue_width=4` gives every layer's cycles exactly; never slower than two a cycle
    by the model."""
    rng = np.random.default_rng(100 + seed)
    layers = int(rng.integers(1, 4))
    sizes = tuple(int(v) for v in rng.integers(3, 60, layers + 1))
    pes = int(rng.choice([4, 8, 16]))
    density = float(rng.choice([0.05, 0.15, 0.4, 0.9]))
    depth = int(rng.choice([1, 2, 4, 8, 20]))
    qnet = random_qnet(sizes, seed=seed, density=density, shift=[8] * layers)
    x = _inputs(4, sizes[0], seed=seed)
    rom = build_rom(qnet, pes=pes)
    y, _, lcs = run_engine(Engine(rom, pipelined=True, queue_depth=depth, issue_width=4), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    mc = model_cycles(rom, x, pipelined=True, queue_depth=depth, issue_width=4)
    np.testing.assert_array_equal(mc, lcs)
    two = model_cycles(rom, x, pipelined=True, queue_depth=depth)
    assert mc.sum() <= two.sum()


def test_four_lanes_into_deep_queues_take_the_credit_from_registers(monkeypatch):
    """Four lanes into queues of 16 or more: the credit counts the last cycle as four columns
    whatever it sent (`images.eie.full_credit`). On a long sparse layer with uneven PEs that
    holds columns back (a few cycles more by the model than with the credit of what was sent),
    and the engine takes exactly the model's cycles, bit-exact; at queues of 8 the credit of
    what was sent stays."""
    import images.eie as eie_model

    assert eie_model.full_credit(4, 16) and eie_model.full_credit(4, 20)
    assert not eie_model.full_credit(4, 8) and not eie_model.full_credit(2, 20)
    rng = np.random.default_rng(12)
    qnet = random_qnet((346, 37), seed=12, density=0.1, shift=[8])
    x = (rng.integers(-60, 60, (3, 346)) * (rng.random((3, 346)) < 0.6)).astype(np.int16)
    rom = build_rom(qnet, pes=4)
    y, _, lcs = run_engine(Engine(rom, pipelined=True, queue_depth=16, issue_width=4), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    mc = model_cycles(rom, x, pipelined=True, queue_depth=16, issue_width=4)
    np.testing.assert_array_equal(mc, lcs)
    monkeypatch.setattr(eie_model, "full_credit", lambda width, depth: False)
    sent_only = model_cycles(rom, x, pipelined=True, queue_depth=16, issue_width=4)
    assert mc.sum() > sent_only.sum()


def test_the_cycle_model_corners():
    """The corners of the model: queues of one column (two slots) throttling dense columns
    (one every 2.5 cycles in both), a layer whose only column has no entries in any PE (the
    PEs are idle once it has passed the pointer read), an input with only its first column
    and the rest all-zero groups (the front end's reading binds)."""
    cases = [((32, 4), 1.0, 4, 1, np.full((1, 32), 3, np.int16)),
             ((17, 9, 20), 0.15, 16, 1, None),
             ((30, 3, 5), 0.1, 4, 8, None),
             ((64, 8, 4), 0.5, 4, 8, np.eye(1, 64, 0, dtype=np.int16) * 5)]
    for i, (sizes, density, pes, depth, x) in enumerate(cases):
        qnet = random_qnet(sizes, seed=i, density=density, shift=[8] * (len(sizes) - 1))
        x = _inputs(12, sizes[0], seed=i) if x is None else x
        rom = build_rom(qnet, pes=pes)
        for width in (2, 4):
            _, _, lcs = run_engine(Engine(rom, pipelined=True, queue_depth=depth,
                                          issue_width=width), x)
            np.testing.assert_array_equal(
                model_cycles(rom, x, pipelined=True, queue_depth=depth, issue_width=width),
                lcs, err_msg=f"{sizes} width {width}")
