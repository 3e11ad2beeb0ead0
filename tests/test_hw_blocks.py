"""Amaranth-simulator unit tests of the engine's blocks: queue, front end, output stage."""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest
import torch
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from compress.golden import layer_output, wrap
from compress.qnet import Layer
from hw.frontend import FrontEnd
from hw.blocks import post_process
from hw.queue import ActQueue


def _sim(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("depth", [1, 2, 3, 8])
def test_queue_matches_fifo_model(depth):
    q = ActQueue(16, depth=depth)
    rng = random.Random(depth)
    model = deque()
    popped, pushed = [], []

    async def bench(ctx):
        nxt = 0
        for _ in range(400):
            pv = rng.random() < 0.6
            rd = rng.random() < 0.5
            ctx.set(q.i.valid, pv)
            ctx.set(q.i.payload, nxt)
            ctx.set(q.o.ready, rd)
            _, _, i_rdy, o_vld, o_pl, level = await ctx.tick().sample(
                q.i.ready, q.o.valid, q.o.payload, q.level)
            assert level == len(model)
            assert i_rdy == (len(model) < depth)
            assert o_vld == (len(model) > 0)
            if o_vld and rd:
                assert o_pl == model.popleft()
                popped.append(o_pl)
            if pv and i_rdy:
                model.append(nxt)
                pushed.append(nxt)
                nxt += 1

    _sim(q, bench)
    assert popped == pushed[: len(popped)] and len(popped) > 50


def test_queue_rejects_bad_depth():
    with pytest.raises(ValueError, match="not 0"):
        ActQueue(8, depth=0)


class _FrontEndHarness(wiring.Component):
    """The front end reading N per-PE activation memories (1-cycle read latency)."""

    def __init__(self, acts: np.ndarray, pes: int, sparse: bool, avail=None):
        self.acts = acts
        self.avail = avail
        self.pes = pes
        self.words = -(-len(acts) // pes)
        col_bits = max(1, len(acts).bit_length())
        self.fe = FrontEnd(pes=pes, col_bits=col_bits, group_bits=max(1, self.words.bit_length()),
                           sparse=sparse)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fe = fe = self.fe
        n = self.pes
        for k in range(n):
            init = [int(v) & 0xFFFF for v in self.acts[k::n]] or [0]
            mem = Memory(shape=signed(16), depth=self.words + 2,
                         init=[v - (1 << 16) if v >= 1 << 15 else v for v in init])
            m.submodules[f"mem{k}"] = mem
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(fe.rd_addr), fe.rd_data[k].eq(rp.data)]
        m.d.comb += [fe.in_features.eq(len(self.acts)), fe.groups.eq(self.words),
                     fe.avail.eq(self.avail if self.avail is not None else self.words)]
        return m


@pytest.mark.parametrize("pes,width,density,sparse,stall", [
    (1, 17, 0.5, True, 0.0), (3, 20, 0.3, True, 0.5), (4, 33, 0.0, True, 0.0),
    (8, 40, 1.0, True, 0.3), (5, 23, 0.4, False, 0.2), (16, 9, 0.6, True, 0.0),
])
@pytest.mark.parametrize("gated", [False, True])
def test_front_end_broadcasts_non_zeros_in_order(pes, width, density, sparse, stall, gated):
    avail = None
    rng = np.random.default_rng(pes * 100 + width)
    acts = np.where(rng.random(width) < density, rng.integers(-3000, 3000, width), 0)
    h = _FrontEndHarness(acts, pes, sparse, avail=avail)
    fe = h.fe
    want = [(int(v), c) for c, v in enumerate(acts) if v != 0 or not sparse]
    got = []
    prng = random.Random(width)

    if gated:  # groups become readable one at a time, as the drain writes them
        avail = Signal(16)
        h.avail = avail

    async def bench(ctx):
        ctx.set(fe.start, 1)
        await ctx.tick()
        ctx.set(fe.start, 0)
        for cycle in range(2000):
            rdy = stall == 0 or prng.random() >= stall
            ctx.set(fe.o.ready, rdy)
            if gated:
                ctx.set(avail, cycle // 3)  # one group every third cycle
                if cycle // 3 < h.words:  # a group not yet written must not be broadcast
                    assert all(c < (cycle // 3) * pes for _, c in got)
            _, _, vld, val, col, done = await ctx.tick().sample(
                fe.o.valid, fe.o.payload.value, fe.o.payload.col, fe.done)
            if vld and rdy:
                got.append((val, col))
            if done:
                break
        # ideal rate when never stalled: one word per cycle plus one per all-zero group
        if stall == 0 and not gated:
            groups = -(-width // pes)
            assert cycle <= len(want) + groups + 2

    _sim(h, bench)
    assert got == want


@pytest.mark.parametrize("acc_bits", [17, 24, 32, 40])
def test_output_stage_matches_contract(acc_bits):
    rng = np.random.default_rng(acc_bits)
    shifts = [0, 1, 2, 7, 12, 15, 16, 20, acc_bits - 1, acc_bits, acc_bits + 1, 40, 62]
    acc = Signal(signed(acc_bits))
    ys = {}
    m = Module()
    for s in shifts:
        for relu in (False, True):
            y = Signal(signed(16), name=f"y_{s}_{int(relu)}")
            m.d.comb += y.eq(post_process(acc, s, relu))
            ys[s, relu] = y
    half = 1 << (acc_bits - 1)
    vals = np.concatenate([
        rng.integers(-half, half, 300, dtype=np.int64),
        [-half, half - 1, 0, -1, 1, 32767, 32768, -32768, -32769],
    ])
    vals = wrap(torch.from_numpy(vals), acc_bits).numpy()

    async def bench(ctx):
        for v in vals:
            ctx.set(acc, int(v))
            for (s, relu), y in ys.items():
                layer = Layer(codebook=np.zeros(1, np.int16), index=np.zeros((1, 1), np.uint8),
                              bias=np.zeros(1, np.int32), shift=s, relu=relu)
                want = int(layer_output(layer, torch.tensor([int(v)])).item())
                assert ctx.get(y) == want, (int(v), s, relu)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_pe_stage_components_refuse_bad_parameters():
    from hw.eie.codebook import CodebookDecoder
    from hw.eie.mac import Mac
    from hw.eie.pointer import PointerRead

    with pytest.raises(ValueError, match="acc_bits must be an integer 17..64, not 16"):
        Mac(row_bits=4, acc_bits=16)
    with pytest.raises(ValueError, match="row_bits must be a positive integer, not 0"):
        Mac(row_bits=0)
    with pytest.raises(ValueError, match="index_bits must be an integer 1..16, not 0"):
        CodebookDecoder(index_bits=0, layers=2, addr_bits=4)
    with pytest.raises(ValueError, match="layers must be a positive integer, not 0"):
        CodebookDecoder(index_bits=4, layers=0, addr_bits=4)
    with pytest.raises(ValueError, match="ptr_bits must be a positive integer, not 0"):
        PointerRead(col_bits=4, base_bits=4, ptr_bits=0, even_addr_bits=2, odd_addr_bits=2)
