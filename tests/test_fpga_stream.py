"""Requests streamed back to back through the link (fpga/gateware/link.py), the host keeping a window.

Amaranth simulator. The host side behaves like a UART: a byte arrives every `BYTE` cycles
whether or not the link is ready, and one that is not taken before the next arrives is lost
(the receiver holds one byte), which the tests count. The engine side is a behavioural engine
that computes for a UART-like time; with `overlap` it takes the next input while it computes
and outputs (a second input bank, with a few cycles of `ready` low now and then), without it
it takes no input from its last input word to its last output word. Its counters change when
its last output word is taken, as the board's engines latch them.

What the window gives (docs/fpga.md section 2): with overlap, 4 requests in flight, no byte is
lost and replies come in order; without it, 1 request at a time is safe and 4 lose bytes.
"""

import random

import numpy as np
from amaranth.sim import Simulator

from fpga import protocol as P
from fpga.gateware.link import Link
from fpga.gateware.top import STREAM_WINDOW

N_IN, N_OUT, N_L, TIMEOUT = 32, 3, 2, 400
BYTE = 40  # cycles a byte on the line (divisor 4)
COMPUTE = 12 * BYTE  # the engine's compute: about 12 byte times, as LeNet's at 3 Mbaud


def model(x):
    s = int(np.sum(np.asarray(x, np.int64) * np.arange(1, len(x) + 1)))
    return [((s * (k + 1) - k + 32768) % 65536) - 32768 for k in range(N_OUT)]


def stream(xs, *, window, overlap, seed=0, dense=False):
    """Send every input of xs (PACKED, or dense INFER), at most `window` replies outstanding.

    Returns (reply frames, engine runs, bytes lost)."""
    dut = Link(in_features=N_IN, out_features=N_OUT, num_layers=N_L, pes=4,
               clock_hz=12_000_000, timeout=TIMEOUT, window=window)
    rng = random.Random(seed)
    frames = [P.infer_request(x) if dense else P.packed_request(x, i & 0xFF)
              for i, x in enumerate(xs)]
    tx = bytearray()
    runs, lost = [], []
    dec = P.FrameDecoder()
    replies = []
    pending = []  # inputs taken, waiting to be computed (overlap: one may wait)

    async def inputs(ctx):
        """i_act: takes words into a bank; with overlap a second bank fills while the first
        computes and outputs."""
        while True:
            x = []
            while len(x) < N_IN:
                free = len(pending) < (2 if overlap else 1)
                ctx.set(dut.act_out.ready, free and rng.random() < 0.9)  # drain writes
                _, _, valid, ready, payload = await ctx.tick().sample(
                    dut.act_out.valid, dut.act_out.ready, dut.act_out.payload)
                if valid and ready:
                    x.append(payload)
            ctx.set(dut.act_out.ready, 0)
            pending.append(x)

    async def compute(ctx):
        count = 0
        while True:
            while not pending:
                await ctx.tick()
            for _ in range(COMPUTE):
                await ctx.tick()
            x = pending[0]
            runs.append(x)
            count += 1
            for v in model(x):
                ctx.set(dut.act_in.valid, 1)
                ctx.set(dut.act_in.payload, v)
                await ctx.tick().until(dut.act_in.ready)
            ctx.set(dut.act_in.valid, 0)
            ctx.set(dut.cycles, 1000 + count)
            for i in range(N_L):
                ctx.set(dut.layer_cycles[i], 100 * (i + 1) + count)
            pending.pop(0)  # the bank is free once its outputs are out

    async def uart_tx(ctx):
        # the board's transmitter: a byte every BYTE cycles
        while True:
            ctx.set(dut.tx.ready, 1)
            _, _, valid, payload = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
            if valid:
                tx.append(payload)
                ctx.set(dut.tx.ready, 0)
                for _ in range(BYTE - 1):  # (not .repeat: the bench may end meanwhile)
                    await ctx.tick()

    async def host(ctx):
        line = bytearray()
        sent = 0
        next_at = 0  # the cycle the next byte on the line arrives
        holding = False  # the receiver holds a byte the link has not taken
        for cycle in range(len(frames) * 80 * BYTE + 20 * TIMEOUT):
            replies.extend(dec.feed(bytes(tx)))
            tx.clear()
            if len(replies) == len(frames):
                break
            short = sent < len(frames) and not P.streamable(len(frames[sent]), N_OUT, N_L)
            if not line and sent < len(frames) and sent - len(replies) < (
                    1 if short else window):
                line += frames[sent]
                sent += 1
                next_at = max(next_at, cycle)
            if line and cycle >= next_at:
                if holding:
                    lost.append(sent - 1)  # overrun: the byte held is overwritten
                ctx.set(dut.rx.valid, 1)
                ctx.set(dut.rx.payload, line.pop(0))
                holding = True
                next_at = cycle + BYTE
            _, _, ready = await ctx.tick().sample(dut.rx.ready)
            if holding and ready:
                ctx.set(dut.rx.valid, 0)
                holding = False
        await ctx.tick().repeat(10)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(inputs, background=True)
    sim.add_testbench(compute, background=True)
    sim.add_testbench(uart_tx, background=True)
    sim.add_testbench(host)
    sim.run()
    return replies, runs, lost


def xs_for(n, seed=1):
    """Inputs for every PACKED format: sparse 1..256 (MNIST-like), all zero, all non-zero
    narrow, values needing int16."""
    rng = np.random.default_rng(seed)
    xs = []
    for i in range(n):
        k = i % 4
        if k == 0:
            x = rng.integers(1, 257, N_IN) * (rng.random(N_IN) < 0.2)
        elif k == 1:
            x = np.zeros(N_IN, int)
        elif k == 2:
            x = rng.integers(-100, 100, N_IN)
        else:
            x = rng.integers(-32768, 32768, N_IN) * (rng.random(N_IN) < 0.5)
        xs.append(x.astype(np.int16))
    return xs


def check(replies, runs, xs, packed=True):
    assert [list(r) for r in runs] == [list(x) for x in xs]  # every input, in order
    for i, (f, x) in enumerate(zip(replies, xs)):
        if packed:
            r = P.decode_packed(f, out_features=N_OUT, num_layers=N_L)
            assert r.tag == i
        else:
            r = P.decode_infer(f, out_features=N_OUT, num_layers=N_L)
        assert list(r.y) == model(x)
        # that inference's own counters, though the next one had started
        assert (r.cycles, r.layer_cycles) == (1001 + i, [101 + i, 201 + i])


def test_stream_overlap_window():
    """An engine with a second input bank, 4 requests in flight: nothing lost, in order."""
    xs = xs_for(10)
    replies, runs, lost = stream(xs, window=STREAM_WINDOW, overlap=True)
    assert lost == []
    check(replies, runs, xs)


def test_stream_one_at_a_time_without_overlap():
    """An engine that takes no input while it computes: a window of 1 loses nothing."""
    xs = xs_for(6, seed=2)
    replies, runs, lost = stream(xs, window=1, overlap=False)
    assert lost == []
    check(replies, runs, xs)


def test_stream_too_wide_without_overlap_loses_bytes():
    """... and 4 in flight would lose bytes: why such a board reports a window of 1."""
    xs = [np.arange(1, N_IN + 1, dtype=np.int16) * 50] * 4  # int16 values: long frames
    assert P.streamable(len(P.packed_request(xs[0])), N_OUT, N_L)
    _, _, lost = stream(xs, window=4, overlap=False)
    assert lost


def test_stream_dense_infer():
    """The dense INFER frame (no tag) streams the same way."""
    xs = xs_for(4, seed=3)
    replies, runs, lost = stream(xs, window=STREAM_WINDOW, overlap=True, dense=True)
    assert lost == []
    check(replies, runs, xs, packed=False)
