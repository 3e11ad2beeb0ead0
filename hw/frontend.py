"""Activation front end: leading non-zero detection over groups of N activations.

The source activations of a layer live in the PEs' activation buffers, column c in PE c % N at
word c // N, so one read of every PE's buffer at word g returns the N consecutive columns
g*N .. g*N+N-1 (a "group"). The front end keeps the current group in registers with a mask of
its non-zero columns (`sparse=True`; every column below in_features when dense), emits the
lowest set column per cycle as (value, col) and clears it. The next group is prefetched: the
read address presented in a cycle is the group that will be loaded next, so a group is loaded
in the same cycle the previous one runs out and groups follow each other with no bubble; an
all-zero group costs one cycle. Emission is a stream: valid never waits on ready, and ready
(from the PEs' credit check) is the only stall.

Timing: the read address goes to every PE's activation RAM, across the chip, so it is chosen
from flip-flops with little logic: "the group runs out this cycle" is (mask empty) or (one
column left and ready), both read off the mask's flip-flops, and the address is `grp` or a
registered `grp + 1` (with `grp < groups` registered too). That was the 8-PE board's critical
path through take -> mask update -> compare -> adder (10 LUT levels); it is now 4 and the
behaviour is the same cycle for cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


def bcast_layout(col_bits: int) -> data.StructLayout:
    return data.StructLayout({"value": signed(16), "col": col_bits})


class FrontEnd(wiring.Component):
    """start: pulse with in_features/groups stable for the whole layer; done: pulse at the end."""

    def __init__(self, *, pes: int, col_bits: int, group_bits: int, sparse: bool = True):
        if not isinstance(pes, int) or not 1 <= pes <= 64:
            raise ValueError(f"pes must be an integer 1..64, not {pes!r}")
        self.pes = pes
        self.sparse = sparse
        self.col_bits = col_bits
        super().__init__({
            "start": In(1),
            "in_features": In(col_bits + 1),
            "groups": In(group_bits + 1),
            # groups readable now: group g may be read once g < avail (the drain of the previous
            # layer writes them one per cycle while this layer already runs)
            "avail": In(group_bits + 2),
            "rd_addr": Out(group_bits + 1),
            "rd_data": In(data.ArrayLayout(signed(16), pes)),
            "o": Out(stream.Signature(bcast_layout(col_bits + 1))),
            "busy": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.pes
        cur_vals = Signal(data.ArrayLayout(signed(16), n))
        cur_mask = Signal(n)
        cur_base = Signal(self.col_bits + 1 + n.bit_length())  # column of element 0
        nxt_base = Signal.like(cur_base)  # column of element 0 of the group on rd_data
        grp = Signal.like(self.groups)  # index of the group on rd_data (the next to load)
        # grp + 1 and grp < groups kept in flip-flops beside grp: the read address chosen in a
        # cycle is then a multiplexer of two registers, with no adder or compare in front of it
        grp_p1 = Signal.like(self.groups, init=1)
        in_range = Signal()  # grp < groups
        ok = Signal()  # rd_data holds group grp, read when it was available

        # lowest set bit of the current mask
        sel = Signal(range(max(n, 2)))
        for k in reversed(range(n)):
            with m.If(cur_mask[k]):
                m.d.comb += sel.eq(k)
        low = Signal(n)
        m.d.comb += low.eq(cur_mask & (~cur_mask + 1))

        # "the group runs out this cycle" straight from the mask's flip-flops (empty, or one
        # column left and it is taken), not through take -> cur_mask & ~low -> rem == 0: this
        # decides the activation RAMs' read address, the engine's longest path
        empty = Signal()
        single = Signal()
        m.d.comb += [empty.eq(cur_mask == 0), single.eq(_exactly_one(cur_mask))]

        m.d.comb += [
            self.o.valid.eq(self.busy & ~empty),
            self.o.payload.value.eq(cur_vals[sel]),
            self.o.payload.col.eq(cur_base + sel),
        ]
        out = Signal()  # the current group runs out this cycle (rem == 0)
        m.d.comb += out.eq(empty | (single & self.o.ready))
        adv = Signal()  # load the group on rd_data now, present the one after it
        m.d.comb += adv.eq(self.busy & out & in_range & ok)

        nxt_mask = Signal(n)
        for k in range(n):
            nz = (self.rd_data[k] != 0) if self.sparse else 1
            m.d.comb += nxt_mask[k].eq(nz & (nxt_base + k < self.in_features))

        # grp is 0 whenever the front end is idle, so the address presented at start is group 0
        m.d.comb += self.rd_addr.eq(Mux(adv, grp_p1, grp))
        m.d.sync += ok.eq(Mux(adv, grp_p1 < self.avail, grp < self.avail))
        with m.If(self.start & ~self.busy):
            # present group 0 now; it is loaded in the next cycle (cur_mask is empty)
            m.d.sync += [self.busy.eq(1), grp.eq(0), grp_p1.eq(1), nxt_base.eq(0),
                         cur_mask.eq(0), in_range.eq(self.groups != 0)]
        with m.Elif(self.busy):
            with m.If(out):
                with m.If(in_range & ~ok):
                    m.d.sync += cur_mask.eq(0)  # wait for the drain to write group grp
                with m.Elif(in_range):
                    m.d.sync += [
                        cur_vals.eq(self.rd_data),
                        cur_mask.eq(nxt_mask),
                        cur_base.eq(nxt_base),
                        nxt_base.eq(nxt_base + n),
                        grp.eq(grp_p1),
                        grp_p1.eq(grp_p1 + 1),
                        in_range.eq(grp_p1 < self.groups),
                    ]
                with m.Else():
                    m.d.sync += [self.busy.eq(0), cur_mask.eq(0), grp.eq(0), grp_p1.eq(1)]
                    m.d.comb += self.done.eq(1)
            with m.Else():
                m.d.sync += cur_mask.eq(Mux(self.o.ready, cur_mask & ~low, cur_mask))
        return m


def _exactly_one(bits):
    """1 when exactly one bit of `bits` is set: a tree of (none set, one set) pairs."""
    pairs = [(~bits[k], bits[k]) for k in range(len(bits))]
    while len(pairs) > 1:
        nxt = []
        for i in range(0, len(pairs) - 1, 2):
            (z0, o0), (z1, o1) = pairs[i], pairs[i + 1]
            nxt.append((z0 & z1, (o0 & z1) | (z0 & o1)))
        if len(pairs) % 2:
            nxt.append(pairs[-1])
        pairs = nxt
    return pairs[0][1]
