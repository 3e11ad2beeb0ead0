"""The EIE engine's two-wide front end: up to two non-zero activations sent per cycle.

Same groups as `hw.frontend.FrontEnd` (one read of every PE's activation buffer at word g gives
the N columns g*N .. g*N+N-1; the next group is prefetched, so its word is on `rd_data` while
the current group is being sent), but each cycle sends the two lowest non-zero columns of the
current group's remaining mask followed by the prefetched group's mask: a group with one
non-zero left pairs with the first non-zero of the next group, and a group is loaded (its
sent columns cleared) in the cycle the current one runs out. The read port gives one group a
cycle, so a run of k all-zero groups still costs about k cycles.

At a layer's start the groups come from the previous layer's drain, one a cycle; `fwd` says
the group being read arrives on `rd_data` straight from the drain's output stage (the engine
muxes it in), so the front end need not wait the two cycles of the write and the read.

Flow control is by credit: `room` (0, 1 or 2) is how many columns every PE can take this cycle
(`hw.eie.pe.PE.room`); `o_valid[j]` says column j of `o` is sent in this cycle (lane 1 only
with lane 0). Nothing waits on the PEs: what is sent is taken.

`hw.frontend.FrontEnd` stays the one-wide front end (the lockstep engine's, and the EIE engine's
at issue width 1).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..frontend import bcast_layout

WIDTH = 2  # columns sent per cycle


def _lowest(m, bits, n, name):
    """(any, index) of the lowest set bit of the n-bit signal `bits`, combinational."""
    idx = Signal(range(max(n, 2)), name=f"{name}_idx")
    for k in reversed(range(n)):
        with m.If(bits[k]):
            m.d.comb += idx.eq(k)
    return bits != 0, idx


class WideFrontEnd(wiring.Component):
    """start: pulse with in_features/groups stable for the whole layer; done: pulse at the end.

    Ports as `hw.frontend.FrontEnd` (start, in_features, groups, avail, rd_addr, rd_data, busy,
    done) but the output: `o` (WIDTH (value, col) lanes), `o_valid` (lanes sent this cycle),
    the credit input `room` (0..WIDTH columns every PE can take) and `fwd` (the group read now
    comes forwarded from the drain next cycle: readable whatever `avail` says).
    """

    def __init__(self, *, pes: int, col_bits: int, group_bits: int, sparse: bool = True):
        if not isinstance(pes, int) or not 1 <= pes <= 64:
            self._MustUse__silence = True  # refused: not an unused elaboratable
            raise ValueError(f"pes must be an integer 1..64, not {pes!r}")
        self.pes = pes
        self.sparse = sparse
        self.col_bits = col_bits
        super().__init__({
            "start": In(1),
            "in_features": In(col_bits + 1),
            "groups": In(group_bits + 1),
            "avail": In(group_bits + 2),
            "rd_addr": Out(group_bits + 1),
            "rd_data": In(data.ArrayLayout(signed(16), pes)),
            "room": In(range(WIDTH + 1)),
            # the word of group rd_addr comes on rd_data next cycle from the previous layer's
            # output stage (forwarded), whether or not it is written yet
            "fwd": In(1),
            "o": Out(data.ArrayLayout(bcast_layout(col_bits + 1), WIDTH)),
            "o_valid": Out(WIDTH),
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
        ok = Signal()  # rd_data holds group grp, read when it was available
        more = Signal()  # group grp exists and is on rd_data now
        m.d.comb += more.eq(self.busy & ok & (grp < self.groups))

        nxt_mask = Signal(n)
        for k in range(n):
            nz = (self.rd_data[k] != 0) if self.sparse else 1
            m.d.comb += nxt_mask[k].eq(nz & (nxt_base + k < self.in_features))

        # lane 0 is the lowest remaining column of the current group, else the prefetched
        # group's lowest; lane 1 the next one in that order: the two lowest of each group
        cur = Signal(n)
        nxt = Signal(n)
        m.d.comb += [cur.eq(Mux(self.busy, cur_mask, 0)), nxt.eq(Mux(more, nxt_mask, 0))]
        c_low = Signal(n)
        n_low = Signal(n)
        m.d.comb += [c_low.eq(cur & (~cur + 1)), n_low.eq(nxt & (~nxt + 1))]
        c_rest = Signal(n)
        n_rest = Signal(n)
        m.d.comb += [c_rest.eq(cur & ~c_low), n_rest.eq(nxt & ~n_low)]
        c_two = Signal(n)  # the two lowest columns of each
        n_two = Signal(n)
        m.d.comb += [c_two.eq(c_low | (c_rest & (~c_rest + 1))),
                     n_two.eq(n_low | (n_rest & (~n_rest + 1)))]
        c_any0, c_i0 = _lowest(m, cur, n, "c0")
        c_any1, c_i1 = _lowest(m, c_rest, n, "c1")
        n_any0, n_i0 = _lowest(m, nxt, n, "n0")
        n_any1, n_i1 = _lowest(m, n_rest, n, "n1")
        c_val = [Signal(signed(16), name=f"c_val{j}") for j in range(2)]
        n_val = [Signal(signed(16), name=f"n_val{j}") for j in range(2)]
        for j, (ci, ni) in enumerate(((c_i0, n_i0), (c_i1, n_i1))):
            m.d.comb += [c_val[j].eq(cur_vals[ci]), n_val[j].eq(self.rd_data[ni])]
        c_col = [cur_base + c_i0, cur_base + c_i1]
        n_col = [nxt_base + n_i0, nxt_base + n_i1]
        # lane sources: 0 from cur (or nxt when cur is empty); 1 from cur's second, nxt's first
        # (cur has one) or nxt's second (cur is empty)
        with m.If(c_any0):
            m.d.comb += [self.o[0].value.eq(c_val[0]), self.o[0].col.eq(c_col[0])]
        with m.Else():
            m.d.comb += [self.o[0].value.eq(n_val[0]), self.o[0].col.eq(n_col[0])]
        with m.If(c_any1):
            m.d.comb += [self.o[1].value.eq(c_val[1]), self.o[1].col.eq(c_col[1])]
        with m.Elif(c_any0):
            m.d.comb += [self.o[1].value.eq(n_val[0]), self.o[1].col.eq(n_col[0])]
        with m.Else():
            m.d.comb += [self.o[1].value.eq(n_val[1]), self.o[1].col.eq(n_col[1])]
        have = Signal(range(3))  # columns that could go now (capped at 2)
        m.d.comb += have.eq(Mux(c_any1, 2, Mux(c_any0, Mux(n_any0, 2, 1),
                                             Mux(n_any1, 2, Mux(n_any0, 1, 0)))))
        m.d.comb += [self.o_valid[0].eq((have >= 1) & (self.room >= 1)),
                     self.o_valid[1].eq((have >= 2) & (self.room >= 2))]
        sent = Signal(range(3))
        m.d.comb += sent.eq(self.o_valid[0] + self.o_valid[1])
        # what is left: cur loses its lowest `sent` columns, nxt what cur could not give
        rem_cur = Signal(n)
        rem_nxt = Signal(n)
        with m.Switch(sent):
            with m.Case(0):
                m.d.comb += [rem_cur.eq(cur), rem_nxt.eq(nxt_mask)]
            with m.Case(1):
                m.d.comb += [rem_cur.eq(cur & ~c_low),
                             rem_nxt.eq(Mux(c_any0, nxt_mask, nxt_mask & ~n_low))]
            with m.Case(2):
                m.d.comb += [rem_cur.eq(cur & ~c_two),
                             rem_nxt.eq(Mux(c_any1, nxt_mask,
                                            Mux(c_any0, nxt_mask & ~n_low, nxt_mask & ~n_two)))]

        m.d.comb += self.rd_addr.eq(grp)
        m.d.sync += ok.eq((self.rd_addr < self.avail) | self.fwd)
        with m.If(self.start & ~self.busy):
            # present group 0 now; it is on rd_data in the next cycle (cur_mask is empty)
            m.d.sync += [self.busy.eq(1), grp.eq(0), nxt_base.eq(0), cur_mask.eq(0)]
            m.d.comb += self.rd_addr.eq(0)
        with m.Elif(self.busy):
            with m.If(rem_cur == 0):
                with m.If(more):
                    # load the prefetched group without what was sent from it this cycle
                    m.d.sync += [
                        cur_vals.eq(self.rd_data),
                        cur_mask.eq(rem_nxt),
                        cur_base.eq(nxt_base),
                        nxt_base.eq(nxt_base + n),
                        grp.eq(grp + 1),
                    ]
                    m.d.comb += self.rd_addr.eq(grp + 1)
                with m.Elif(grp < self.groups):
                    m.d.sync += cur_mask.eq(0)  # wait for the drain to write group grp
                with m.Else():
                    m.d.sync += [self.busy.eq(0), cur_mask.eq(0)]
                    m.d.comb += self.done.eq(1)
            with m.Else():
                m.d.sync += cur_mask.eq(rem_cur)
        return m


__all__ = ["WIDTH", "WideFrontEnd"]
