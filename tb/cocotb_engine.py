"""cocotb bench of the generated engine (run by `tb.sim.simulate`, never imported by pytest).

Parameters come from the environment: TB_IO (directory holding inputs.npy; the bench writes
outputs.npy, cycles.npy, layer_cycles.npy there), TB_STALL_IN / TB_STALL_OUT (probability that
the driver holds i_act.valid low / the monitor holds o_act.ready low in a cycle), TB_SEED,
TB_RESET (1: start an inference, reset the engine in its middle, then run the vectors cleanly),
TB_MAX_CYCLES (per vector, a hang guard), TB_BACK_TO_BACK (1: inputs back to back, below).

One coroutine drives both streams on the falling clock edge, when every signal is stable: it
samples ready/valid, decides the transfer that the next rising edge makes and sets the next
word. While the engine computes (nothing to send, no word on o_act) it sleeps until o_act.valid
rises, so the Python work is a few operations per streamed word, not per compute cycle.

Back to back (TB_BACK_TO_BACK=1, for an engine that loads the next input while it computes):
a driver coroutine pushes input k + 1 as soon as i_act is ready, and the monitor takes the
outputs concurrently, reading each inference's latched counters the cycle after its last output
word. `cycles` then holds the interval between results (the first one's from its first input
word), so the stream's length is their sum and sum / N is the cycles per inference.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge, with_timeout


def _env_float(name: str, default: float = 0.0) -> float:
    return float(os.environ.get(name, default))


async def _reset(dut, cycles: int = 2):
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


def _layer_cycles(dut, layers: int) -> list[int]:
    word = dut.layer_cycles.value.to_unsigned()
    return [(word >> (32 * i)) & 0xFFFFFFFF for i in range(layers)]


@cocotb.test()
async def engine_vectors(dut):
    io = Path(os.environ["TB_IO"])
    x = np.load(io / "inputs.npy", allow_pickle=False)
    out_features = int(os.environ["TB_OUT_FEATURES"])
    layers = int(os.environ["TB_LAYERS"])
    stall_in = _env_float("TB_STALL_IN")
    stall_out = _env_float("TB_STALL_OUT")
    rng = random.Random(int(os.environ.get("TB_SEED", "0")))
    max_cycles = int(os.environ.get("TB_MAX_CYCLES", "2000000"))

    Clock(dut.clk, 10, unit="ns").start()
    dut.i_act__valid.value = 0
    dut.i_act__payload.value = 0
    dut.o_act__ready.value = 0
    await _reset(dut)

    if os.environ.get("TB_RESET", "0") == "1" and len(x):
        # an inference cut short by a reset: all of vector 0 in, a few compute cycles, reset
        await FallingEdge(dut.clk)
        for w in x[0]:
            dut.i_act__valid.value = 1
            dut.i_act__payload.value = int(w)
            await FallingEdge(dut.clk)
            while not dut.i_act__ready.value:
                await FallingEdge(dut.clk)
        dut.i_act__valid.value = 0
        await ClockCycles(dut.clk, 3 + rng.randrange(40))
        await _reset(dut, 3)

    if os.environ.get("TB_BACK_TO_BACK", "0") == "1":
        ys, cycles, lcycles = await _back_to_back(dut, x, out_features, layers, stall_in,
                                                  stall_out, rng, max_cycles)
        _save(io, ys, cycles, lcycles)
        return
    ys = np.zeros((len(x), out_features), dtype=np.int16)
    cycles = np.zeros(len(x), dtype=np.int64)
    lcycles = np.zeros((len(x), layers), dtype=np.int64)
    for n, vec in enumerate(x):
        words = [int(w) for w in vec]
        i = 0  # next input word
        got = []
        presenting = False
        budget = max_cycles
        await FallingEdge(dut.clk)
        while len(got) < out_features:
            budget -= 1
            if budget < 0:
                raise AssertionError(f"vector {n}: no result within {max_cycles} cycles")
            if i >= len(words) and not got and not dut.o_act__valid.value:
                # all words in (the last one at an earlier edge), computing: sleep until the
                # first output word appears
                dut.i_act__valid.value = 0
                await with_timeout(RisingEdge(dut.o_act__valid), max_cycles * 10, "ns")
                await FallingEdge(dut.clk)
            # input side: keep valid once raised until the word is taken
            if i < len(words):
                if not presenting and (stall_in == 0 or rng.random() >= stall_in):
                    presenting = True
                    dut.i_act__payload.value = words[i]
                dut.i_act__valid.value = int(presenting)
                if presenting and dut.i_act__ready.value:
                    i += 1
                    presenting = False
            else:
                dut.i_act__valid.value = 0
            # output side
            ready = int(stall_out == 0 or rng.random() >= stall_out)
            dut.o_act__ready.value = ready
            if ready and dut.o_act__valid.value:
                got.append(dut.o_act__payload.value.to_signed())
            await FallingEdge(dut.clk)
        dut.o_act__ready.value = 0
        # the counters latch with the last transfer; they are stable one edge later
        await FallingEdge(dut.clk)
        ys[n] = got
        cycles[n] = dut.cycles.value.to_unsigned()
        lcycles[n] = _layer_cycles(dut, layers)
        if dut.busy.value:
            raise AssertionError(f"vector {n}: busy after the last output word")

    _save(io, ys, cycles, lcycles)


def _save(io: Path, ys, cycles, lcycles) -> None:
    for name, arr in (("outputs", ys), ("cycles", cycles), ("layer_cycles", lcycles)):
        tmp = io / f".{name}.tmp.npy"
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, io / f"{name}.npy")


async def _drive(dut, x, stall_in: float, rng) -> None:
    """Every input word as soon as i_act takes it, input after input (falling edges: ready is
    a function of registers, so its value now is its value at the next rising edge)."""
    words = [int(w) for vec in x for w in vec]
    i = 0
    presenting = False
    await FallingEdge(dut.clk)
    while i < len(words):
        if not presenting and (stall_in == 0 or rng.random() >= stall_in):
            presenting = True
            dut.i_act__payload.value = words[i]
        dut.i_act__valid.value = int(presenting)
        if presenting and dut.i_act__ready.value:
            i += 1
            presenting = False
        await FallingEdge(dut.clk)
    dut.i_act__valid.value = 0


async def _back_to_back(dut, x, out_features, layers, stall_in, stall_out, rng, max_cycles):
    ys = np.zeros((len(x), out_features), dtype=np.int16)
    cycles = np.zeros(len(x), dtype=np.int64)
    lcycles = np.zeros((len(x), layers), dtype=np.int64)
    # the driver draws its stalls from its own generator: the monitor's draws do not depend
    # on how the two coroutines interleave
    driver = cocotb.start_soon(_drive(dut, x, stall_in, random.Random(rng.random())))
    await FallingEdge(dut.clk)
    for n in range(len(x)):
        got = []
        budget = max_cycles
        while len(got) < out_features:
            budget -= 1
            if budget < 0:
                raise AssertionError(f"vector {n}: no result within {max_cycles} cycles")
            if not got and not dut.o_act__valid.value:
                dut.o_act__ready.value = 0
                await with_timeout(RisingEdge(dut.o_act__valid), max_cycles * 10, "ns")
                await FallingEdge(dut.clk)
            ready = int(stall_out == 0 or rng.random() >= stall_out)
            dut.o_act__ready.value = ready
            if ready and dut.o_act__valid.value:
                got.append(dut.o_act__payload.value.to_signed())
            await FallingEdge(dut.clk)
        dut.o_act__ready.value = 0
        # latched with the last transfer (at the rising edge just passed): stable now, and
        # until the next inference's last output word
        ys[n] = got
        cycles[n] = dut.cycles.value.to_unsigned()
        lcycles[n] = _layer_cycles(dut, layers)
    await driver
    await FallingEdge(dut.clk)
    if dut.busy.value:
        raise AssertionError("busy after the last output word of the stream")
    return ys, cycles, lcycles
