"""Run the engine in the Amaranth simulator (fast unit tests; the cocotb bench is `tb.sim`)."""

from __future__ import annotations

import random

import numpy as np
from amaranth.sim import Simulator

from hw.eie import Engine


def run_engine(engine: Engine, x: np.ndarray, *, stall_in: float = 0.0, stall_out: float = 0.0,
               seed: int = 0, max_cycles: int = 200_000):
    """(outputs int16[batch, out], cycles int64[batch], layer_cycles int64[batch, L]).

    An engine of `lanes` > 1 (`io_lanes`) takes and gives that many words a beat (an input's
    last beat padded with zeros, the words of an output's last beat past its end dropped)."""
    x = np.asarray(x, dtype=np.int16)
    rng = random.Random(seed)
    n_out = engine.out_features
    L = engine.num_layers
    ys = np.zeros((len(x), n_out), dtype=np.int16)
    cycles = np.zeros(len(x), dtype=np.int64)
    lcs = np.zeros((len(x), L), dtype=np.int64)
    lanes = getattr(engine, "lanes", 1)

    async def bench(ctx):
        for n, vec in enumerate(x):
            words = [int(w) for w in vec]
            if lanes > 1:
                words += [0] * (-len(words) % lanes)
                words = [words[j:j + lanes] for j in range(0, len(words), lanes)]
            i = 0
            got = []
            for _ in range(max_cycles):
                if i < len(words):
                    present = stall_in == 0 or rng.random() >= stall_in
                    ctx.set(engine.i_act.valid, int(present))
                    ctx.set(engine.i_act.payload, words[i])
                else:
                    present = False
                    ctx.set(engine.i_act.valid, 0)
                ready = int(stall_out == 0 or rng.random() >= stall_out)
                ctx.set(engine.o_act.ready, ready)
                _, _, i_rdy, o_vld, o_pl = await ctx.tick().sample(
                    engine.i_act.ready, engine.o_act.valid, engine.o_act.payload)
                if present and i_rdy:
                    i += 1
                if ready and o_vld:
                    got.extend([o_pl] if lanes == 1 else [o_pl[j] for j in range(lanes)])
                if len(got) >= n_out:
                    break
            else:
                raise AssertionError(f"vector {n}: no result within {max_cycles} cycles")
            ctx.set(engine.o_act.ready, 0)
            ctx.set(engine.i_act.valid, 0)
            await ctx.tick()
            ys[n] = got[:n_out]
            cycles[n] = ctx.get(engine.cycles)
            lcs[n] = [ctx.get(engine.layer_cycles[i]) for i in range(L)]
            assert not ctx.get(engine.busy)

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return ys, cycles, lcs
