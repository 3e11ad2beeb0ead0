"""A PE's column queue written with up to two columns a cycle (the two-wide front end's).

Registers, like `hw.queue.ActQueue` (which the one-wide PE and the lockstep engine keep), but
two write lanes: lane 0 goes first, lane 1 after it, either may be empty. There is no
back-pressure on the writes: the front end sends only what every PE has room for (the credit
check on `level` in `hw.eie.pe`), so a write never finds the queue full.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


def _next(ptr, depth):
    return Mux(ptr == depth - 1, 0, ptr + 1)


class PairQueue(wiring.Component):
    """A FIFO of `depth` entries of `shape` in registers, up to two writes and one read a cycle.

    Ports: `i` (in: two lanes of `shape`), `i_valid` (in: which lanes write this cycle; the
    writer guarantees the room), `o` (out: stream, the head), `level` (out: entries held).
    Parameters: shape (the payload), depth (1..64).
    """

    def __init__(self, shape, *, depth: int):
        if not isinstance(depth, int) or not 1 <= depth <= 64:
            self._MustUse__silence = True  # refused: not an unused elaboratable
            raise ValueError(f"queue depth must be an integer 1..64, not {depth!r}")
        self._shape = shape
        self.depth = depth
        super().__init__({
            "i": In(data.ArrayLayout(shape, 2)),
            "i_valid": In(2),
            "o": Out(stream.Signature(shape)),
            "level": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.depth
        store = Array(Signal(self._shape, name=f"q{k}") for k in range(d))
        rd = Signal(range(d))
        wr = Signal(range(d))
        wr1 = Signal(range(d))
        m.d.comb += wr1.eq(_next(wr, d))
        pop = Signal()
        pushes = Signal(range(3))
        m.d.comb += [
            self.o.valid.eq(self.level != 0),
            self.o.payload.eq(store[rd]),
            pop.eq(self.o.valid & self.o.ready),
            pushes.eq(self.i_valid[0] + self.i_valid[1]),
        ]
        with m.If(self.i_valid[0]):
            m.d.sync += store[wr].eq(self.i[0])
            with m.If(self.i_valid[1]):
                m.d.sync += [store[wr1].eq(self.i[1]), wr.eq(_next(wr1, d))]
            with m.Else():
                m.d.sync += wr.eq(wr1)
        with m.Elif(self.i_valid[1]):
            m.d.sync += [store[wr].eq(self.i[1]), wr.eq(wr1)]
        with m.If(pop):
            m.d.sync += rd.eq(_next(rd, d))
        m.d.sync += self.level.eq(self.level + pushes - pop)
        return m
