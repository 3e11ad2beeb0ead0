"""UART rx/tx in the Amaranth simulator: bytes at the pins against bytes on the streams."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from fpga.gateware.simuart import recv_byte, send_byte, send_bytes
from fpga.gateware.uart import DEFAULT_BAUD, UARTRx, UARTTx, _check_divisor, baud_divisor


def test_baud_divisor():
    assert baud_divisor(12e6, 115200) == 104
    assert baud_divisor(36e6, 1_000_000) == 36
    # 3 Mbaud (the default) is exact at every multiple of 3 MHz
    assert [baud_divisor(f * 1e6, DEFAULT_BAUD) for f in (24, 27, 30, 33, 36)] == [
        8, 9, 10, 11, 12]
    assert baud_divisor(30.5e6, 3_000_000) == 10  # 1.7% fast: inside the rule
    with pytest.raises(ValueError, match="at least 8 clock cycles"):
        baud_divisor(20e6, 3_000_000)  # 6.7 cycles a bit
    with pytest.raises(ValueError, match="at least 8 clock cycles"):
        baud_divisor(36e6, 6_000_000)
    with pytest.raises(ValueError, match=r"% off at 31\.5 MHz"):
        baud_divisor(31.5e6, 3_000_000)  # 10.5 cycles a bit: 5% off either way
    with pytest.raises(ValueError, match="positive integer"):
        baud_divisor(36e6, 0)
    with pytest.raises(ValueError, match="not 3"):
        _check_divisor(3)  # what UARTRx(divisor=3) raises, without an unused Elaboratable


@pytest.mark.parametrize("divisor", [9, 12])
@pytest.mark.parametrize("error", [-0.02, 0.0, 0.02])
def test_rx_baud_error(divisor, error):
    """At the board's divisors (3 Mbaud at 27 and 36 MHz) the receiver takes a sender up to 2%
    fast or slow, bytes back to back (no idle time to resynchronise on)."""
    dut = UARTRx(divisor=divisor)
    rng = random.Random(divisor)
    data = bytes([0x00, 0xFF, 0x55, 0xAA, 0x80, 0x01, 0x7F, 0xFE]
                 + [rng.randrange(256) for _ in range(40)])
    got, errors = [], []

    async def drive(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 + divisor % 5)
        await send_bytes(ctx, dut.rx, data, divisor, bit_cycles=divisor * (1 - error))
        await ctx.tick().repeat(2 * divisor)

    async def collect(ctx):
        ctx.set(dut.o.ready, 1)
        async for _clk, _rst, valid, payload, ferr, ovr in ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.frame_error, dut.overrun):
            if valid:
                got.append(payload)
            if ferr or ovr:
                errors.append(len(got))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(collect, background=True)
    sim.run()
    assert bytes(got) == data and errors == []


def test_rx_refuses_past_its_margin():
    """A sender 8% slow at divisor 9 is past what the receiver can take: bytes come wrong (the
    2% rule has room, this is where it ends)."""
    dut = UARTRx(divisor=9)
    data = bytes([0x00, 0xFF] * 8)
    got = []

    async def drive(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(4)
        await send_bytes(ctx, dut.rx, data, 9, bit_cycles=9 * 1.08)
        await ctx.tick().repeat(40)

    async def collect(ctx):
        ctx.set(dut.o.ready, 1)
        async for _clk, _rst, valid, payload in ctx.tick().sample(dut.o.valid, dut.o.payload):
            if valid:
                got.append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(collect, background=True)
    sim.run()
    assert bytes(got) != data


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_rx(divisor):
    dut = UARTRx(divisor=divisor)
    rng = random.Random(divisor)
    data = [rng.randrange(256) for _ in range(24)] + [0x00, 0xFF, 0xA5]
    got, errors = [], []

    async def drive(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(5)
        for i, b in enumerate(data):
            # Back to back, or with a gap as from a real host.
            await send_byte(ctx, dut.rx, b, divisor)
            if i % 3:
                await ctx.tick().repeat(i % 3)
        # A glitch shorter than half a bit is not a start bit.
        ctx.set(dut.rx, 0)
        await ctx.tick()
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * divisor)
        # A byte with a low stop bit is a framing error and is dropped.
        await send_byte(ctx, dut.rx, 0x55, divisor, stop_ok=False)
        await ctx.tick().repeat(2 * divisor)
        await send_byte(ctx, dut.rx, 0x3C, divisor)
        await ctx.tick().repeat(2 * divisor)

    async def collect(ctx):
        ctx.set(dut.o.ready, 1)
        async for _clk, _rst, valid, payload, ferr in ctx.tick().sample(
            dut.o.valid, dut.o.payload, dut.frame_error
        ):
            if valid:
                got.append(payload)
            if ferr:
                errors.append(len(got))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(collect, background=True)
    sim.run()
    assert got == data + [0x3C]
    assert errors == [len(data)]


@pytest.mark.parametrize("divisor", [4, 9])
def test_tx(divisor):
    dut = UARTTx(divisor=divisor)
    data = bytes(random.Random(divisor).randrange(256) for _ in range(20)) + b"\x00\xff"
    got = []

    async def feed(ctx):
        for b in data:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, b)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def watch(ctx):
        while len(got) < len(data):
            b = await recv_byte(ctx, dut.tx, divisor, timeout=20 * divisor)
            assert b is not None, "transmitter went quiet"
            got.append(b)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(watch)
    sim.run()
    assert bytes(got) == data


def test_loopback():
    """tx pin wired to rx pin: what goes in comes out."""
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor=5)
    m.submodules.rx = rx = UARTRx(divisor=5)
    m.d.comb += rx.rx.eq(tx.tx)
    data = bytes(range(0, 256, 7))
    got = []

    async def feed(ctx):
        for b in data:
            ctx.set(tx.i.valid, 1)
            ctx.set(tx.i.payload, b)
            await ctx.tick().until(tx.i.ready)
        ctx.set(tx.i.valid, 0)

    async def collect(ctx):
        ctx.set(rx.o.ready, 1)
        while len(got) < len(data):
            await ctx.tick().until(rx.o.valid)
            got.append(ctx.get(rx.o.payload))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(collect)
    sim.run()
    assert bytes(got) == data
