# amaranth: UnusedElaboratable=no
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


@pytest.mark.parametrize("write_ahead", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3, 8])
def test_queue_matches_fifo_model(depth, write_ahead):
    # write_ahead writes the free entry whenever there is room: a payload offered without
    # valid (garbage here) must never reach a held entry
    q = ActQueue(16, depth=depth, write_ahead=write_ahead)
    rng = random.Random(depth)
    model = deque()
    popped, pushed = [], []

    async def bench(ctx):
        nxt = 0
        for _ in range(400):
            pv = rng.random() < 0.6
            rd = rng.random() < 0.5
            ctx.set(q.i.valid, pv)
            ctx.set(q.i.payload, nxt if pv else 0xF000 | rng.randrange(0x1000))
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
        self.in_features = self.groups = None  # a Signal each to drive them from a bench
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
        nf = len(self.acts) if self.in_features is None else self.in_features
        m.d.comb += [fe.in_features.eq(nf),
                     fe.groups.eq(self.words if self.groups is None else self.groups),
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


class _FrontEndModel:
    """The front end cycle by cycle, in Python: what each cycle presents and emits."""

    def __init__(self, acts, pes, sparse):
        self.acts, self.n, self.sparse = [int(v) for v in acts], pes, sparse
        self.busy, self.grp, self.ok, self.mask, self.base, self.nxt_base = False, 0, False, 0, 0, 0
        self.vals = [0] * pes
        self.rd = [0] * pes  # the words read at the address of the last cycle

    def step(self, start, ready, avail, in_features, groups):
        """One clock: (valid, value, col, done, rd_addr); value/col only when valid, the
        address only while busy or starting (idle, nothing reads it)."""
        n, mask, shown = self.n, self.mask, self.busy or start
        low = (mask & -mask).bit_length() - 1
        valid = self.busy and mask != 0
        out = (valid, self.vals[low] if valid else 0, self.base + low if valid else 0)
        rem = mask & ~(1 << low) if valid and ready else mask
        addr, done = self.grp, False
        nxt = dict(mask=rem)
        if start and not self.busy:
            addr = 0
            nxt = dict(busy=True, grp=0, nxt_base=0, mask=0)
        elif self.busy and rem == 0:
            if self.grp < groups and not self.ok:
                nxt = dict(mask=0)
            elif self.grp < groups:
                bits = sum(1 << k for k in range(n) if (self.rd[k] != 0 or not self.sparse)
                           and self.nxt_base + k < in_features)
                addr = self.grp + 1
                nxt = dict(vals=list(self.rd), mask=bits, base=self.nxt_base,
                           nxt_base=self.nxt_base + n, grp=self.grp + 1)
            else:
                done = True
                nxt = dict(busy=False, mask=0)
        self.ok = addr < avail
        for k, v in nxt.items():
            setattr(self, k, v)
        self.rd = [self.acts[addr * n + k] if addr * n + k < len(self.acts) else 0
                   for k in range(n)]
        return out + (done, addr if shown else None)


@pytest.mark.parametrize("pes,width,sparse", [(1, 13, True), (3, 20, True), (8, 40, True),
                                              (8, 29, False), (5, 23, True)])
def test_front_end_matches_cycle_model(pes, width, sparse):
    """Every cycle as the model (emission, done, the read address), with stalls, groups
    gated by avail, and layers of different sizes back to back: the read address is chosen
    from flip-flops (a timing fix) and must not move a cycle."""
    rng = np.random.default_rng(pes * 31 + width)
    acts = np.where(rng.random(width) < 0.45, rng.integers(-3000, 3000, width), 0)
    words = -(-width // pes)
    h = _FrontEndHarness(acts, pes, sparse)
    nf, ng, av = Signal(16), Signal(16), Signal(16)
    h.in_features, h.groups, h.avail = nf, ng, av
    fe, model = h.fe, _FrontEndModel(acts, pes, sparse)
    prng = random.Random(width)
    seen = {"cycles": 0, "emitted": 0, "layers": 0}

    async def bench(ctx):
        for _ in range(4):
            features = prng.randint(0, width)
            groups = -(-features // pes)
            ctx.set(nf, features)
            ctx.set(ng, groups)
            for cycle in range(40 * words + 20):
                start = cycle == prng.randint(0, 2) or prng.random() < 0.1
                ready = prng.random() < 0.7
                avail = prng.choice([0xFFFF, cycle // 2, cycle // 3])
                ctx.set(fe.start, start)
                ctx.set(fe.o.ready, ready)
                ctx.set(av, avail)
                _, _, *got = await ctx.tick().sample(fe.o.valid, fe.o.payload.value,
                                                      fe.o.payload.col, fe.done, fe.rd_addr)
                want = model.step(start, ready, avail, features, groups)
                if not got[0]:
                    got[1] = got[2] = 0
                if want[4] is None:
                    got[4] = None
                assert tuple(got) == want, (cycle, got, want)
                seen["cycles"] += 1
                seen["emitted"] += bool(got[0] and ready)
                if got[3]:
                    seen["layers"] += 1
                    break

    _sim(h, bench)
    assert seen["layers"] == 4 and seen["emitted"] > 0

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
