"""cocotb bench of the gate-level `GateCore` netlist (run by fpga/flow/gate.py, never by pytest).

From the environment: GATE_IO, a directory holding load.npy (int32[n, 3]: memory, address,
word) and inputs.npy (int16[vectors, in]); GATE_OUT_FEATURES, GATE_LAYERS; GATE_MAX_CYCLES
(per vector, a hang guard). Writes outputs.npy, cycles.npy, layer_cycles.npy and stats.json
(cycles simulated) into GATE_IO.

Sequence: reset; `loaded` must be low and an offered input word refused; one load-port write
per cycle (the link's port: load_mem, load_addr, load_data, load_we); `loaded` still low;
`commit` for a cycle, `loaded` high; then every vector: its words into `i_act`, the outputs from
`o_act`, as every bench drives them (tb/cocotb_drive.py). Signals change on the falling clock
edge, when the netlist is stable. Only top-level ports are touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge
from cocotb.utils import get_sim_time

from tb.cocotb_drive import layer_cycles, receive, send

PERIOD_NS = 10


async def _load(dut, plan: np.ndarray) -> None:
    await FallingEdge(dut.clk)
    for mem, addr, word in plan.tolist():
        dut.load_mem.value = mem
        dut.load_addr.value = addr
        dut.load_data.value = word
        dut.load_we.value = 1
        await FallingEdge(dut.clk)
    dut.load_we.value = 0
    await FallingEdge(dut.clk)
    assert not dut.loaded.value, "loaded before the commit"
    dut.commit.value = 1
    await FallingEdge(dut.clk)
    dut.commit.value = 0
    assert dut.loaded.value, "commit did not set loaded"


async def _vector(dut, words: list[int], out_features: int, max_cycles: int) -> list[int]:
    driver = cocotb.start_soon(send(dut, words))
    got = await receive(dut, out_features, max_cycles=max_cycles, period_ns=PERIOD_NS)
    await driver
    await FallingEdge(dut.clk)  # the counters latch with the last transfer
    return got


@cocotb.test()
async def gate_vectors(dut):
    io = Path(os.environ["GATE_IO"])
    x = np.load(io / "inputs.npy", allow_pickle=False)
    plan = np.load(io / "load.npy", allow_pickle=False)
    out_features = int(os.environ["GATE_OUT_FEATURES"])
    layers = int(os.environ["GATE_LAYERS"])
    max_cycles = int(os.environ.get("GATE_MAX_CYCLES", "1000000"))

    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    for name in ("i_act__valid", "i_act__payload", "o_act__ready", "load_mem", "load_addr",
                 "load_data", "load_we", "commit"):
        getattr(dut, name).value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    # not loaded: an offered input word is refused
    dut.i_act__valid.value = 1
    dut.i_act__payload.value = 1
    for _ in range(3):
        await FallingEdge(dut.clk)
        assert not dut.loaded.value and not dut.i_act__ready.value, "input taken before load"
    dut.i_act__valid.value = 0
    t_load = get_sim_time("ns")
    await _load(dut, plan)
    load_cycles = int((get_sim_time("ns") - t_load) // PERIOD_NS)

    ys = np.zeros((len(x), out_features), dtype=np.int16)
    cycles = np.zeros(len(x), dtype=np.int64)
    lcycles = np.zeros((len(x), layers), dtype=np.int64)
    for n, vec in enumerate(x):
        ys[n] = await _vector(dut, [int(w) for w in vec], out_features, max_cycles)
        cycles[n] = dut.cycles.value.to_unsigned()
        lcycles[n] = layer_cycles(dut, layers)
        assert not dut.busy.value, f"vector {n}: busy after the last output word"

    stats = {"sim_cycles": int(get_sim_time("ns") // PERIOD_NS), "load_cycles": load_cycles}
    for name, arr in (("outputs", ys), ("cycles", cycles), ("layer_cycles", lcycles)):
        tmp = io / f".{name}.tmp.npy"
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, io / f"{name}.npy")
    (io / "stats.json").write_text(json.dumps(stats))
