"""Helpers for the Amaranth simulator: drive and watch an 8N1 line bit by bit.

Used by the unit tests of the UART and the link; the cocotb board bench has its own
(fpga/flow/cocotb_board.py).
"""

from __future__ import annotations


async def send_byte(ctx, pin, byte: int, divisor: int, *, stop_ok: bool = True):
    """Drive one 8N1 byte on `pin` (start, 8 data LSB first, stop), `divisor` clocks a bit."""
    bits = [0] + [(byte >> i) & 1 for i in range(8)] + [1 if stop_ok else 0]
    for b in bits:
        ctx.set(pin, b)
        await ctx.tick().repeat(divisor)
    ctx.set(pin, 1)


async def send_bytes(ctx, pin, data: bytes, divisor: int, *, gap: int = 0,
                     bit_cycles: float | None = None):
    """Bytes one after the other; with `bit_cycles`, a sender whose bit lasts that many clocks
    (a baud rate off the receiver's: the edges fall on the nearest clock, no error builds up)."""
    if bit_cycles is None:
        for b in data:
            await send_byte(ctx, pin, b, divisor)
            if gap:
                await ctx.tick().repeat(gap)
        return
    t = 0.0
    for b in data:
        for bit in [0] + [(b >> i) & 1 for i in range(8)] + [1]:
            ctx.set(pin, bit)
            n = round(t + bit_cycles) - round(t)
            t += bit_cycles
            await ctx.tick().repeat(n)
        if gap:
            await ctx.tick().repeat(gap)


async def recv_byte(ctx, pin, divisor: int, *, timeout: int) -> int | None:
    """Wait up to `timeout` clocks for a start bit on `pin`, then sample the byte mid-bit."""
    for _ in range(timeout):
        await ctx.tick()
        if ctx.get(pin) == 0:
            break
    else:
        return None
    await ctx.tick().repeat(divisor // 2)
    value = 0
    for i in range(8):
        await ctx.tick().repeat(divisor)
        value |= ctx.get(pin) << i
    await ctx.tick().repeat(divisor)
    if ctx.get(pin) != 1:
        raise AssertionError("stop bit low on the transmitted line")
    return value
