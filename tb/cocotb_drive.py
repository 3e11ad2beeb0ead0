"""The one way the cocotb benches drive an engine's streams (tb/cocotb_engine.py, the engine;
fpga/flow/cocotb_gate.py, the board's engine as synthesised): import-light (cocotb only), never run
by pytest.

Both streams are driven on the falling clock edge, when every signal is stable: a coroutine
samples ready/valid, decides the transfer that the next rising edge makes and sets the next
word. `send` offers words on `i_act` until every one is taken; `receive` takes `n` words from
`o_act`, and while nothing comes (the engine computes) it sleeps until `o_act.valid` rises, so
the Python work is a few operations per streamed word, not per compute cycle. Run one beside
the other (`cocotb.start_soon(send(...))`, then `await receive(...)`) for an inference, or
`send` every input at once for inputs back to back. Each takes its own random generator for
its stalls (`stall_in`, `stall_out`: the probability that valid / ready is held low in a
cycle), so the stalls do not depend on how the two coroutines interleave.
"""

from __future__ import annotations

from cocotb.triggers import FallingEdge, RisingEdge, with_timeout


async def send(dut, words, *, stall_in: float = 0.0, rng=None) -> None:
    """Offer `words` on `i_act` one by one until each is taken; `i_act.valid` low at the end.

    ready is a function of registers, so its value at a falling edge is its value at the next
    rising edge: a word presented with ready high is taken there. Once raised, valid stays high
    until its word is taken.
    """
    words = [int(w) for w in words]
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


async def receive(dut, n: int, *, stall_out: float = 0.0, rng=None, max_cycles: int,
                  period_ns: int = 10, what: str = "the result") -> list[int]:
    """Take `n` words from `o_act` (signed); `o_act.ready` low at the end. AssertionError if
    they take more than `max_cycles` cycles (a hang guard)."""
    got: list[int] = []
    budget = max_cycles
    while len(got) < n:
        budget -= 1
        if budget < 0:
            raise AssertionError(f"{what}: no result within {max_cycles} cycles")
        if not got and not dut.o_act__valid.value:
            # computing: sleep until the first output word appears
            await with_timeout(RisingEdge(dut.o_act__valid), max_cycles * period_ns, "ns")
            await FallingEdge(dut.clk)
        ready = int(stall_out == 0 or rng.random() >= stall_out)
        dut.o_act__ready.value = ready
        if ready and dut.o_act__valid.value:
            got.append(dut.o_act__payload.value.to_signed())
        await FallingEdge(dut.clk)
    dut.o_act__ready.value = 0
    return got


def layer_cycles(dut, layers: int) -> list[int]:
    """The engine's per-layer cycle counters, from its `layer_cycles` port (32 bits each)."""
    word = dut.layer_cycles.value.to_unsigned()
    return [(word >> (32 * i)) & 0xFFFFFFFF for i in range(layers)]
