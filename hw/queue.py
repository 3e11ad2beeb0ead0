"""The engines' FIFOs: one family of small register FIFOs (EIE found depth 8 enough).

Registers, not a memory: a queue is written and read every cycle, its head feeds a sequencer
combinationally, and at depth <= 64 a register file is cheaper than a block RAM. Every member
has the same read side: `o`, a stream whose payload is the head (valid while `level` != 0), and
`level`, the entries held, which the writers' credit checks read. They differ in how they are
written:

* `ActQueue`: one write lane `i`, a stream with back-pressure (ready while not full); the
  lockstep engine's column queue and the one-wide EIE PE's.
* `PairQueue`: two write lanes `i[0]`, `i[1]`, streams without back-pressure (the writer sends
  only what `level` leaves room for); lane 0 goes first. The two-wide EIE PE's column queue.
* `LaneQueue`: `lanes` such write lanes (the four-wide pipelined EIE PE's column queue): each
  valid lane's entry goes to `wr` plus the valid lanes before it.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

MAX_DEPTH = 64


def _next(ptr, depth):
    """ptr + 1 modulo depth."""
    return Mux(ptr == depth - 1, 0, ptr + 1)


class RegisterFIFO(wiring.Component):
    """What every queue of the family has: `depth` entries of `shape` in registers, the read
    stream `o` and `level`; `writes` are the members of the write side (a subclass's)."""

    def __init__(self, shape, *, depth: int, writes: dict):
        if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"queue depth must be an integer 1..{MAX_DEPTH}, not {depth!r}")
        self._shape = shape
        self.depth = depth
        super().__init__({
            **writes,
            "o": Out(stream.Signature(shape)),
            "level": Out(range(depth + 1)),
        })

    def _storage(self):
        """The entries and the read and write pointers."""
        d = self.depth
        store = Array(Signal(self._shape, name=f"q{k}") for k in range(d))
        return store, Signal(range(d), name="rd"), Signal(range(d), name="wr")


class ActQueue(RegisterFIFO):
    """A FIFO of `depth` entries of `shape` written through one stream `i` (ready while not
    full).

    Parameters: shape (the payload), depth (1..64), write_ahead (write the free entry at `wr`
    whenever there is room, not only on a push: `i.valid` then drives only `wr` and `level`,
    not the entries' write enables; the entry is not yet held, so the FIFO behaves the same).
    """

    def __init__(self, shape, *, depth: int, write_ahead: bool = False):
        self.write_ahead = write_ahead
        super().__init__(shape, depth=depth, writes={"i": In(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        d = self.depth
        store, rd, wr = self._storage()
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
            m.d.sync += wr.eq(_next(wr, d))
        with m.If(pop):
            m.d.sync += rd.eq(_next(rd, d))
        with m.If(push & ~pop):
            m.d.sync += self.level.eq(self.level + 1)
        with m.Elif(pop & ~push):
            m.d.sync += self.level.eq(self.level - 1)
        return m


class PairQueue(RegisterFIFO):
    """A FIFO of `depth` entries of `shape`, up to two writes and one read a cycle.

    `i[0]`, `i[1]`: the write lanes, streams without back-pressure (the writer guarantees the
    room, by credit on `level`); lane 0 goes first, lane 1 after it, either may be empty.
    Parameters: shape (the payload), depth (1..64).
    """

    def __init__(self, shape, *, depth: int):
        lane = stream.Signature(shape, always_ready=True)
        super().__init__(shape, depth=depth, writes={"i": In(lane).array(2)})

    def elaborate(self, platform):
        m = Module()
        d = self.depth
        store, rd, wr = self._storage()
        wr1 = Signal(range(d))
        m.d.comb += wr1.eq(_next(wr, d))
        pop = Signal()
        pushes = Signal(range(3))
        v0, v1 = self.i[0].valid, self.i[1].valid
        m.d.comb += [
            self.o.valid.eq(self.level != 0),
            self.o.payload.eq(store[rd]),
            pop.eq(self.o.valid & self.o.ready),
            pushes.eq(v0 + v1),
        ]
        with m.If(v0):
            m.d.sync += store[wr].eq(self.i[0].payload)
            with m.If(v1):
                m.d.sync += [store[wr1].eq(self.i[1].payload), wr.eq(_next(wr1, d))]
            with m.Else():
                m.d.sync += wr.eq(wr1)
        with m.Elif(v1):
            m.d.sync += [store[wr].eq(self.i[1].payload), wr.eq(wr1)]
        with m.If(pop):
            m.d.sync += rd.eq(_next(rd, d))
        m.d.sync += self.level.eq(self.level + pushes - pop)
        return m


class LaneQueue(RegisterFIFO):
    """A FIFO of `depth` entries of `shape`, up to `lanes` writes and one read a cycle.

    `i[0]` .. `i[lanes-1]`: write lanes as `PairQueue`'s (no back-pressure, lower lanes first,
    any may be empty): lane j's entry goes to `wr` + the number of valid lanes below j.
    Parameters: shape, depth (1..64), lanes (>= 1).

    The entries are `lanes` memories written asynchronously-read (LUT RAM on an FPGA, not
    flip-flops: a register file written from four lanes costs a 4-way multiplexer on every bit
    of every entry), entry k in bank k % lanes at row k // lanes: the lanes' entries of a cycle
    are consecutive, so each bank takes at most one of them. The ring holds `depth` rounded up
    to a multiple of `lanes` (the writer's credit still counts `depth`).
    """

    def __init__(self, shape, *, depth: int, lanes: int):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        self.lanes = lanes
        lane = stream.Signature(shape, always_ready=True)
        super().__init__(shape, depth=depth, writes={"i": In(lane).array(lanes)})

    def elaborate(self, platform):
        from amaranth.lib.memory import Memory

        m = Module()
        w = self.lanes
        rows = -(-self.depth // w)
        ring = rows * w
        rd = Signal(range(ring), name="rd")
        wr = Signal(range(ring), name="wr")
        pop = Signal()
        m.d.comb += [self.o.valid.eq(self.level != 0), pop.eq(self.o.valid & self.o.ready)]
        # the valid lanes below each lane
        before = [Signal(range(w + 1), name=f"before{j}") for j in range(w + 1)]
        m.d.comb += before[0].eq(0)
        for j in range(w):
            m.d.comb += before[j + 1].eq(before[j] + self.i[j].valid)
        reads = []
        for b in range(w):
            mem = Memory(shape=self._shape, depth=rows, init=[])
            m.submodules[f"bank{b}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(domain="comb")
            # this bank's entry of the cycle: position wr + t with (wr + t) % w == b
            t = Signal(range(w), name=f"t{b}")
            m.d.comb += t.eq((b - wr) % w)
            pos = Signal(range(ring + w), name=f"pos{b}")
            m.d.comb += pos.eq(wr + t)
            m.d.comb += wp.addr.eq(Mux(pos >= ring, pos - ring, pos) // w)
            for j in range(w):
                with m.If(self.i[j].valid & (before[j] == t)):
                    m.d.comb += [wp.data.eq(self.i[j].payload), wp.en.eq(1)]
            m.d.comb += rp.addr.eq(rd // w)
            reads.append(rp.data)
        with m.Switch(rd % w):
            for b in range(w):
                with m.Case(b):
                    m.d.comb += self.o.payload.eq(reads[b])
        nwr = wr + before[w]
        m.d.sync += wr.eq(Mux(nwr >= ring, nwr - ring, nwr))
        with m.If(pop):
            m.d.sync += rd.eq(Mux(rd == ring - 1, 0, rd + 1))
        m.d.sync += self.level.eq(self.level + before[w] - pop)
        return m
