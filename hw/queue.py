"""Per-PE activation queue: a small FIFO in registers (EIE found depth 8 enough).

Registers, not a memory: the queue is written and read every cycle, its head feeds the
sparse-matrix sequencer combinationally, and at depth <= 64 a register file is cheaper than a
block RAM. `level` is exported because the front end's credit check needs it (see `hw.eie.pe`).
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


class ActQueue(wiring.Component):
    """A FIFO of `depth` entries of `shape` in registers.

    Ports: `i` (in: stream, ready while not full), `o` (out: stream, the head), `level` (out:
    entries held, for the credit checks of the PE and the lockstep engine).
    Parameters: shape (the payload), depth (1..64), write_ahead (write the free entry at `wr`
    whenever there is room, not only on a push: `i.valid` then drives only `wr` and `level`,
    not the entries' write enables; the entry is not yet held, so the FIFO behaves the same).
    """

    def __init__(self, shape, *, depth: int, write_ahead: bool = False):
        if not isinstance(depth, int) or not 1 <= depth <= 64:
            self._MustUse__silence = True  # refused: not an unused elaboratable
            raise ValueError(f"queue depth must be an integer 1..64, not {depth!r}")
        self._shape = shape
        self.depth = depth
        self.write_ahead = write_ahead
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
            "level": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.depth
        store = Array(Signal(self._shape, name=f"q{k}") for k in range(d))
        rd = Signal(range(d))
        wr = Signal(range(d))
        push = Signal()
        pop = Signal()
        m.d.comb += [
            self.i.ready.eq(self.level != d),
            self.o.valid.eq(self.level != 0),
            self.o.payload.eq(store[rd]),
            push.eq(self.i.valid & self.i.ready),
            pop.eq(self.o.valid & self.o.ready),
        ]
        with m.If(self.i.ready if self.write_ahead else push):
            m.d.sync += store[wr].eq(self.i.payload)
        with m.If(push):
            m.d.sync += wr.eq(Mux_wrap(wr, d))
        with m.If(pop):
            m.d.sync += rd.eq(Mux_wrap(rd, d))
        with m.If(push & ~pop):
            m.d.sync += self.level.eq(self.level + 1)
        with m.Elif(pop & ~push):
            m.d.sync += self.level.eq(self.level - 1)
        return m


def Mux_wrap(ptr, depth):  # noqa: N802 - reads like the Mux it is
    """ptr + 1 modulo depth."""
    from amaranth.hdl import Mux

    return Mux(ptr == depth - 1, 0, ptr + 1)
