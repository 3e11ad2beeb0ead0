"""cocotb bench of the generated engine (run by `tb.sim.simulate`, never imported by pytest).

Parameters come from the environment: TB_IO (directory holding inputs.npy; the bench writes
outputs.npy, cycles.npy, layer_cycles.npy there), TB_STALL_IN / TB_STALL_OUT (probability that
the driver holds i_act.valid low / the monitor holds o_act.ready low in a cycle), TB_SEED,
TB_RESET (1: start an inference, reset the engine in its middle, then run the vectors cleanly),
TB_MAX_CYCLES (per vector, a hang guard), TB_BACK_TO_BACK (1: inputs back to back, below).

The streams are driven as every bench drives them (tb/cocotb_drive.py: `send` beside
`receive`, on the falling clock edge, sleeping while the engine computes), one input at a time.

Back to back (TB_BACK_TO_BACK=1, for an engine that loads the next input while it computes):
`send` pushes input k + 1 as soon as i_act is ready, and `receive` takes the outputs
concurrently, each inference's latched counters read right after its last output word.
`cycles` then holds the interval between results (the first one's from its first input word),
so the stream's length is their sum and sum / N is the cycles per inference.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

from tb.cocotb_drive import layer_cycles, receive, send


def _env_float(name: str, default: float = 0.0) -> float:
    return float(os.environ.get(name, default))


async def _reset(dut, cycles: int = 2):
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def engine_vectors(dut):
    io = Path(os.environ["TB_IO"])
    x = np.load(io / "inputs.npy", allow_pickle=False)
    out_features = int(os.environ["TB_OUT_FEATURES"])
    layers = int(os.environ["TB_LAYERS"])
    stall_in = _env_float("TB_STALL_IN")
    stall_out = _env_float("TB_STALL_OUT")
    rng = random.Random(int(os.environ.get("TB_SEED", "0")))
    # the driver draws its stalls from its own generator (tb/cocotb_drive.py)
    rng_in = random.Random(rng.random())
    max_cycles = int(os.environ.get("TB_MAX_CYCLES", "2000000"))

    Clock(dut.clk, 10, unit="ns").start()
    dut.i_act__valid.value = 0
    dut.i_act__payload.value = 0
    dut.o_act__ready.value = 0
    await _reset(dut)

    if os.environ.get("TB_RESET", "0") == "1" and len(x):
        # an inference cut short by a reset: all of vector 0 in, a few compute cycles, reset
        await send(dut, x[0])
        await ClockCycles(dut.clk, 3 + rng.randrange(40))
        await _reset(dut, 3)

    if os.environ.get("TB_BACK_TO_BACK", "0") == "1":
        ys, cycles, lcycles = await _back_to_back(dut, x, out_features, layers, stall_in,
                                                  stall_out, rng, rng_in, max_cycles)
        _save(io, ys, cycles, lcycles)
        return
    ys = np.zeros((len(x), out_features), dtype=np.int16)
    cycles = np.zeros(len(x), dtype=np.int64)
    lcycles = np.zeros((len(x), layers), dtype=np.int64)
    for n, vec in enumerate(x):
        driver = cocotb.start_soon(send(dut, vec, stall_in=stall_in, rng=rng_in))
        ys[n] = await receive(dut, out_features, stall_out=stall_out, rng=rng,
                              max_cycles=max_cycles, what=f"vector {n}")
        await driver
        # the counters latch with the last transfer; they are stable one edge later
        await FallingEdge(dut.clk)
        cycles[n] = dut.cycles.value.to_unsigned()
        lcycles[n] = layer_cycles(dut, layers)
        if dut.busy.value:
            raise AssertionError(f"vector {n}: busy after the last output word")

    _save(io, ys, cycles, lcycles)


def _save(io: Path, ys, cycles, lcycles) -> None:
    for name, arr in (("outputs", ys), ("cycles", cycles), ("layer_cycles", lcycles)):
        tmp = io / f".{name}.tmp.npy"
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, io / f"{name}.npy")


async def _back_to_back(dut, x, out_features, layers, stall_in, stall_out, rng, rng_in,
                        max_cycles):
    ys = np.zeros((len(x), out_features), dtype=np.int16)
    cycles = np.zeros(len(x), dtype=np.int64)
    lcycles = np.zeros((len(x), layers), dtype=np.int64)
    # every input word as soon as i_act takes it, input after input
    driver = cocotb.start_soon(send(dut, x.reshape(-1), stall_in=stall_in, rng=rng_in))
    await FallingEdge(dut.clk)
    for n in range(len(x)):
        ys[n] = await receive(dut, out_features, stall_out=stall_out, rng=rng,
                              max_cycles=max_cycles, what=f"vector {n}")
        # latched with the last transfer (at the rising edge just passed): stable now, and
        # until the next inference's last output word
        cycles[n] = dut.cycles.value.to_unsigned()
        lcycles[n] = layer_cycles(dut, layers)
    await driver
    await FallingEdge(dut.clk)
    if dut.busy.value:
        raise AssertionError("busy after the last output word of the stream")
    return ys, cycles, lcycles
