"""One PE in the Amaranth simulator: pointer read, sparse-matrix read, codebook decode, MAC with
its bypass, and the output stage, against the golden model's rows of that PE."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from compress.golden import run_layers
from images.eie import build_rom, pe_images
from compress.synthetic import random_inputs, random_qnet
from hw.eie.pe import PE


async def _preload(ctx, dut, nrows: int) -> None:
    """Bank 0 preloaded with layer 0's biases, one row a cycle."""
    ctx.set(dut.layer, 0)
    for r in range(nrows + 1):
        ctx.set(dut.preload_valid, r < nrows)
        ctx.set(dut.drain_layer, 0)
        ctx.set(dut.preload_layer, 0)
        ctx.set(dut.drain_row, min(r, nrows - 1))
        await ctx.tick()
    ctx.set(dut.preload_valid, 0)


async def _drain(ctx, dut, nrows: int) -> list[int]:
    """Once the PE is idle, its rows out: y one cycle after the row is presented."""
    await ctx.tick().until(dut.idle)
    got = []
    for r in range(nrows + 1):
        ctx.set(dut.drain_valid, r < nrows)
        ctx.set(dut.drain_row, min(r, nrows - 1))
        _, _, yv, y = await ctx.tick().sample(dut.y_valid, dut.y)
        if r > 0:
            assert yv
            got.append(y)
    ctx.set(dut.drain_valid, 0)
    return got


def _run(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("rows,pes,pe,density,rel_bits,depth,sparse,stall", [
    (1, 1, 0, 0.9, 4, 8, True, 0.0),     # every entry hits row 0: the bypass on every cycle
    (3, 1, 0, 0.8, 4, 2, True, 0.3),     # back-to-back hits across column boundaries
    (70, 2, 1, 0.05, 4, 8, True, 0.0),   # gaps of 16 and more: filler entries
    (40, 3, 2, 0.3, 2, 1, True, 0.5),    # rel_bits 2, queue depth 1, stalled broadcasts
    (12, 4, 3, 0.5, 4, 4, False, 0.0),   # the dense datapath
])
def test_pe_layer_matches_golden(rows, pes, pe, density, rel_bits, depth, sparse, stall):
    qnet = random_qnet((24, rows), seed=rows, density=density, shift=6, relu_last=False)
    x = random_inputs(1, 24, seed=rows + 1, density=0.7)[0]
    want = run_layers(qnet, x[None])[0][0][pe::pes]
    rom = build_rom(qnet, pes=pes, rel_bits=rel_bits)
    img = pe_images(rom, sparse=sparse)[pe]
    nrows = img.rows[0]
    dut = PE(img, col_bits=5, row_bits=max(1, nrows.bit_length()), queue_depth=depth,
             sparse=sparse)
    cols = [(int(v), c) for c, v in enumerate(x) if v != 0 or not sparse]
    rng = random.Random(rows)
    got = []

    async def bench(ctx):
        await _preload(ctx, dut, nrows)
        i = 0
        for _ in range(5000):  # broadcast with credit, random gaps
            if i == len(cols):
                break
            send = stall == 0 or rng.random() >= stall
            ctx.set(dut.bc.valid, send)
            ctx.set(dut.bc.payload.value, cols[i][0])
            ctx.set(dut.bc.payload.col, cols[i][1])
            _, _, rdy = await ctx.tick().sample(dut.bc.ready)
            if send and rdy:
                i += 1
        ctx.set(dut.bc.valid, 0)
        got.extend(await _drain(ctx, dut, nrows))

    _run(dut, bench)
    np.testing.assert_array_equal(np.array(got, dtype=np.int16), want)


@pytest.mark.parametrize("rows,pes,pe,density,depth,stall", [
    (1, 1, 0, 0.9, 8, 0.0),     # every entry on row 0: bypass of the accumulator every cycle
    (40, 3, 2, 0.3, 1, 0.5),    # depth 1: room never 2, one column a cycle
    (30, 4, 1, 0.2, 3, 0.3),    # room 1 often: pairs split; empty columns on either lane
    (6, 8, 5, 0.5, 2, 0.0),     # about one entry per column: the queue bypass most cycles
])
def test_pe_issue_width_2_matches_golden(rows, pes, pe, density, depth, stall):
    """Two columns a cycle on `bcw`, as many as `room` allows (random gaps), against the
    golden model's rows of that PE."""
    qnet = random_qnet((24, rows), seed=rows + 5, density=density, shift=6, relu_last=False)
    x = random_inputs(1, 24, seed=rows + 2, density=0.7)[0]
    want = run_layers(qnet, x[None])[0][0][pe::pes]
    rom = build_rom(qnet, pes=pes)
    img = pe_images(rom)[pe]
    nrows = img.rows[0]
    dut = PE(img, col_bits=5, row_bits=max(1, nrows.bit_length()), queue_depth=depth,
             issue_width=2)
    cols = [(int(v), c) for c, v in enumerate(x) if v != 0]
    rng = random.Random(rows)
    got = []
    seen = {"pairs": 0}

    async def bench(ctx):
        await _preload(ctx, dut, nrows)
        i = 0
        for _ in range(5000):
            if i == len(cols):
                break
            room = ctx.get(dut.room)
            k = 0 if stall and rng.random() < stall else min(room, 2, len(cols) - i)
            assert room <= depth
            for j in range(2):
                v, c = cols[i + j] if j < k else (0, 0)
                ctx.set(dut.bcw[j].value, v)
                ctx.set(dut.bcw[j].col, c)
            ctx.set(dut.bcw_valid, (1 << k) - 1)
            seen["pairs"] += k == 2
            i += k
            await ctx.tick()
        ctx.set(dut.bcw_valid, 0)
        got.extend(await _drain(ctx, dut, nrows))

    _run(dut, bench)
    np.testing.assert_array_equal(np.array(got, dtype=np.int16), want)
    assert seen["pairs"] > 0 or depth == 1
