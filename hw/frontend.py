"""The front ends: the layer's non-zero activations, read group by group from the PEs' buffers.

The source activations of a layer live in the PEs' activation buffers, column c in PE c % N at
word c // N, so one read of every PE's buffer at word g returns the N consecutive columns
g*N .. g*N+N-1 (a "group"). A front end keeps the current group in registers with a mask of
its non-zero columns (`sparse=True`; every column below in_features when dense) and sends the
lowest set columns as (value, col), clearing them. The next group is prefetched: its word is on
`rd_data` while the current one is being sent, so groups follow each other with no bubble.
Both front ends share these ports (`start`, `in_features`, `groups`, `avail`, `rd_addr`,
`rd_data`, `busy`, `done`) and differ in how many columns they send a cycle:

* `FrontEnd`: one column a cycle, a stream `o`; ready (from the PEs' credit check) is the only
  stall; an all-zero group costs one cycle. The lockstep engine's, and the EIE engine's at
  issue width 1.
* `WideFrontEnd`: up to two columns a cycle (the EIE engine's at issue width 2), below; the
  pipelined one also with four (`width=4`, the EIE engine's at issue width 4: `_lanes_n`).

Both read the activations of a fully connected layer (kind "fc"): a layer reads its whole
input vector. `front_end(kind, width)` is what an engine asks for the front end of a layer's
kind (`FRONT_ENDS`); `hw.convfe` adds the conv layers' (a pass's patches). Every front end class
is made by `make(**context)` from what an engine knows (`pes`, `col_bits`, `group_bits`,
`addr_bits`, `sparse`, `geoms`), taking the names it needs, and wires its own kind's inputs with
`wire(m, ctx)` (`ctx`: the engine's `layer`, `first` pass flag, source bank `base`, per-layer
`in_t` / `grp_t` tables and `avail`); `absolute` says whether its `rd_addr` is a word of the
whole memory (conv) or a group of the source bank (fc).

Timing of `FrontEnd`: the read address goes to every PE's activation RAM, across the chip, so it
is chosen from flip-flops with little logic: "the group runs out this cycle" is (mask empty) or
(one column left and ready), both read off the mask's flip-flops, and the address is `grp` or a
registered `grp + 1` (with `grp < groups` registered too). That was the 8-PE board's critical
path through take -> mask update -> compare -> adder (10 LUT levels); it is now 4 and the
behaviour is the same cycle for cycle.

`WideFrontEnd`: each cycle it sends the two lowest non-zero columns of the current group's
remaining mask followed by the prefetched group's mask: a group with one non-zero left pairs
with the first non-zero of the next group, and a group is loaded (its sent columns cleared) in
the cycle the current one runs out. The read port gives one group a cycle, so a run of k all-zero
groups still costs about k cycles. At a layer's start the groups come from the previous layer's
drain, one a cycle; `fwd` says the group being read arrives on `rd_data` straight from the
drain's output stage (the engine muxes it in), so the front end need not wait the two cycles of
the write and the read. Flow control is by credit: `room` (0, 1 or 2) is how many columns every
PE can take this cycle (`hw.eie.pe.PE.room`); `o_valid[j]` says column j of `o` is sent in this
cycle (lane 1 only with lane 0). Nothing waits on the PEs: what is sent is taken.

Timing of `WideFrontEnd`: as in `FrontEnd`, the read address is `grp` or a registered `grp + 1`,
chosen by "the current group runs out this cycle" read off the mask's flip-flops and `room`
(empty, or its one or two columns all go now), not through rd_data -> lanes -> sent -> remaining
mask; `grp < groups` is registered. Same behaviour cycle for cycle. In the pipelined EIE engine
(`hw.eie.Engine`, `pipelined`) `room` comes from registers too, so no path runs from the
activation RAMs' outputs or the PEs to their read address in one cycle.
"""

from __future__ import annotations

import operator
from functools import reduce

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from images.engines import MAX_PES

WIDTH = 2  # columns the wide front end sends per cycle
WIDTH_PIPELINED = 4  # the pipelined one's other width (`WideFrontEnd.width`)


def bcast_layout(col_bits: int) -> data.StructLayout:
    return data.StructLayout({"value": signed(16), "col": col_bits})


class _GroupReader(wiring.Component):
    """What both front ends are: the ports that read a layer's groups (module docstring) and
    `outputs`, the members that send its columns (each front end's own)."""

    absolute = False  # rd_addr is a group of the source bank

    @classmethod
    def make(cls, *, pes, col_bits, group_bits, sparse=True, **_context):
        return cls(pes=pes, col_bits=col_bits, group_bits=group_bits, sparse=sparse)

    def wire(self, m, ctx) -> None:
        """The layer's width and groups from the engine's tables, and what is readable."""
        m.d.comb += [self.in_features.eq(ctx.in_t[ctx.layer]),
                     self.groups.eq(ctx.grp_t[ctx.layer]), self.avail.eq(ctx.avail)]

    def __init__(self, *, pes: int, col_bits: int, group_bits: int, sparse: bool, outputs: dict):
        if not isinstance(pes, int) or not 1 <= pes <= MAX_PES:
            raise ValueError(f"pes must be an integer 1..{MAX_PES}, not {pes!r}")
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
            **outputs,
            "busy": Out(1),
            "done": Out(1),
        })

    def _groups(self):
        """(cur_vals, cur_mask, cur_base, nxt_base, grp): the current group's values, mask of
        columns to send and first column; the first column and index of the group on rd_data
        (the prefetched one)."""
        n = self.pes
        cur_vals = Signal(data.ArrayLayout(signed(16), n), name="cur_vals")
        cur_mask = Signal(n, name="cur_mask")
        cur_base = Signal(self.col_bits + 1 + n.bit_length(), name="cur_base")
        return (cur_vals, cur_mask, cur_base, Signal.like(cur_base, name="nxt_base"),
                Signal.like(self.groups, name="grp"))

    def _next_mask(self, m, nxt_base):
        """The columns to send of the group on rd_data: non-zero (or all, dense), in range."""
        nxt_mask = Signal(self.pes, name="nxt_mask")
        for k in range(self.pes):
            nz = (self.rd_data[k] != 0) if self.sparse else 1
            m.d.comb += nxt_mask[k].eq(nz & (nxt_base + k < self.in_features))
        return nxt_mask


class FrontEnd(_GroupReader):
    """One column a cycle: `o` is a stream of (value, col).

    start: pulse with in_features/groups stable for the whole layer; done: pulse at the end.
    first_group: an input `first`, the group to start at (the groups below it are all zero;
    the lockstep engine's loader finds it for layer 0's input), followed while idle, so the
    group presented at `start` is the one it held the cycle before (any group up to the first
    non-zero one is right).
    """

    def __init__(self, *, pes: int, col_bits: int, group_bits: int, sparse: bool = True,
                 first_group: bool = False):
        self.first_group = first_group
        outputs = {"o": Out(stream.Signature(bcast_layout(col_bits + 1)))}
        if first_group:
            outputs["first"] = In(group_bits + 1)
        super().__init__(pes=pes, col_bits=col_bits, group_bits=group_bits, sparse=sparse,
                         outputs=outputs)

    def elaborate(self, platform):
        m = Module()
        n = self.pes
        cur_vals, cur_mask, cur_base, nxt_base, grp = self._groups()
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

        nxt_mask = self._next_mask(m, nxt_base)

        # grp is 0 (or `first`, followed) whenever the front end is idle, so the address
        # presented at start is that group
        m.d.comb += self.rd_addr.eq(Mux(adv, grp_p1, grp))
        m.d.sync += ok.eq(Mux(adv, grp_p1 < self.avail, grp < self.avail))
        with m.If(self.start & ~self.busy):
            # present group grp now; it is loaded in the next cycle (cur_mask is empty)
            if self.first_group:
                m.d.sync += [self.busy.eq(1), cur_mask.eq(0), in_range.eq(self.groups != 0),
                             nxt_base.eq(grp * n)]
            else:
                m.d.sync += [self.busy.eq(1), grp.eq(0), grp_p1.eq(1), nxt_base.eq(0),
                             cur_mask.eq(0), in_range.eq(self.groups != 0)]
        if self.first_group:
            with m.Elif(~self.busy):
                m.d.sync += [grp.eq(self.first), grp_p1.eq(self.first + 1)]
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


class WideFrontEnd(_GroupReader):
    """Up to two columns a cycle: `o` (WIDTH (value, col) lanes), `o_valid` (lanes sent this
    cycle), the credit input `room` (0..WIDTH columns every PE can take) and `fwd` (the group
    read now comes forwarded from the drain next cycle: readable whatever `avail` says).

    start: pulse with in_features/groups stable for the whole layer; done: pulse at the end.
    """

    @classmethod
    def make(cls, *, pes, col_bits, group_bits, sparse=True, pipelined=False, width=WIDTH,
             **_context):
        return cls(pes=pes, col_bits=col_bits, group_bits=group_bits, sparse=sparse,
                   pipelined=pipelined, width=width)

    def __init__(self, *, pes: int, col_bits: int, group_bits: int, sparse: bool = True,
                 pipelined: bool = False, width: int = WIDTH):
        if width not in (WIDTH, WIDTH_PIPELINED):
            raise ValueError(f"width must be {WIDTH} or {WIDTH_PIPELINED}, not {width!r}")
        if width != WIDTH and not pipelined:
            raise ValueError(f"{width} columns a cycle is the pipelined front end's only")
        self.pipelined = pipelined
        self.width = width
        super().__init__(pes=pes, col_bits=col_bits, group_bits=group_bits, sparse=sparse,
                         outputs={
                             "room": In(range(width + 1)),
                             # the word of group rd_addr comes on rd_data next cycle from the
                             # previous layer's output stage (forwarded), written or not
                             "fwd": In(1),
                             "o": Out(data.ArrayLayout(bcast_layout(col_bits + 1), width)),
                             "o_valid": Out(width),
                         })

    def elaborate(self, platform):
        if self.pipelined:
            return self._elaborate_staged()
        m = Module()
        n = self.pes
        cur_vals, cur_mask, cur_base, nxt_base, grp = self._groups()
        ok = Signal()  # rd_data holds group grp, read when it was available
        # grp + 1 and grp < groups in flip-flops beside grp, as in `FrontEnd`: the read address
        # is then a multiplexer of two registers chosen by logic of flip-flops only
        grp_p1 = Signal.like(self.groups, init=1, name="grp_p1")
        in_range = Signal(name="in_range")  # grp < groups
        more = Signal()  # group grp exists and is on rd_data now
        m.d.comb += more.eq(self.busy & ok & in_range)

        nxt_mask = self._next_mask(m, nxt_base)

        # lane 0 is the lowest remaining column of the current group, else the prefetched
        # group's lowest; lane 1 the next one in that order: the two lowest of each group
        cur = Signal(n)
        nxt = Signal(n)
        m.d.comb += [cur.eq(Mux(self.busy, cur_mask, 0)), nxt.eq(Mux(more, nxt_mask, 0))]
        rem_cur, rem_nxt = self._lanes(m, cur, cur_vals, cur_base, nxt, nxt_mask,
                                       self.rd_data, nxt_base)

        # "the current group runs out this cycle" (rem_cur == 0) from the mask's flip-flops and
        # the credit alone: empty, or its one or two columns all go now. The same as rem_cur ==
        # 0, which goes through rd_data (the lanes, `have`, `sent`); this decides the
        # activation RAMs' read address, across every PE
        c_none, c_one, c_two_only = _count_upto_two(cur_mask)
        out = Signal(name="out")
        m.d.comb += out.eq(~self.busy | c_none | (c_one & (self.room >= 1))
                           | (c_two_only & (self.room >= 2)))
        adv = Signal(name="adv")  # load the prefetched group now, present the one after it
        m.d.comb += adv.eq(out & more)
        # grp is 0 whenever the front end is idle, so the address presented at start is group 0
        m.d.comb += self.rd_addr.eq(Mux(adv, grp_p1, grp))
        m.d.sync += ok.eq((self.rd_addr < self.avail) | self.fwd)
        with m.If(self.start & ~self.busy):
            # group 0 is presented now; it is on rd_data in the next cycle (cur_mask is empty)
            m.d.sync += [self.busy.eq(1), grp.eq(0), grp_p1.eq(1), nxt_base.eq(0),
                         cur_mask.eq(0), in_range.eq(self.groups != 0)]
        with m.Elif(self.busy):
            with m.If(out):
                with m.If(more):
                    # load the prefetched group without what was sent from it this cycle
                    m.d.sync += [
                        cur_vals.eq(self.rd_data),
                        cur_mask.eq(rem_nxt),
                        cur_base.eq(nxt_base),
                        nxt_base.eq(nxt_base + n),
                        grp.eq(grp_p1),
                        grp_p1.eq(grp_p1 + 1),
                        in_range.eq(grp_p1 < self.groups),
                    ]
                with m.Elif(in_range):
                    m.d.sync += cur_mask.eq(0)  # wait for the drain to write group grp
                with m.Else():
                    m.d.sync += [self.busy.eq(0), cur_mask.eq(0), grp.eq(0), grp_p1.eq(1)]
                    m.d.comb += self.done.eq(1)
            with m.Else():
                m.d.sync += cur_mask.eq(rem_cur)
        return m

    def _lanes(self, m, cur, cur_vals, cur_base, nxt, nxt_mask, nxt_vals, nxt_base):
        """The two lanes from the current group's remaining mask `cur` and the next group's
        `nxt` (its mask `nxt_mask` when it is there, else 0): `o`, `o_valid` within `room`;
        returns (rem_cur, rem_nxt), what is left of each after this cycle."""
        n = self.pes
        c_low = Signal(n)
        n_low = Signal(n)
        m.d.comb += [c_low.eq(cur & (~cur + 1)), n_low.eq(nxt & (~nxt + 1))]
        c_rest = Signal(n)
        n_rest = Signal(n)
        m.d.comb += [c_rest.eq(cur & ~c_low), n_rest.eq(nxt & ~n_low)]
        c_two = Signal(n)
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
            m.d.comb += [c_val[j].eq(cur_vals[ci]), n_val[j].eq(nxt_vals[ni])]
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
        have = Signal(range(3))
        m.d.comb += have.eq(Mux(c_any1, 2, Mux(c_any0, Mux(n_any0, 2, 1),
                                             Mux(n_any1, 2, Mux(n_any0, 1, 0)))))
        m.d.comb += [self.o_valid[0].eq((have >= 1) & (self.room >= 1)),
                     self.o_valid[1].eq((have >= 2) & (self.room >= 2))]
        sent = Signal(range(3))
        m.d.comb += sent.eq(self.o_valid[0] + self.o_valid[1])
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
        return rem_cur, rem_nxt

    def _lanes_n(self, m, cur, cur_vals, cur_base, nxt, have_nxt, nxt_vals, nxt_base, cur_cnt):
        """`width` lanes (the four-wide pipelined front end): lane j is the j-th lowest of the
        current group's remaining columns `cur` followed by the next group's `nxt` (its mask,
        there when `have_nxt`), sent within `room`; returns (rem_cur, rem_nxt) as `_lanes`.

        The lanes are found at once, not one after the other: each group's mask gives every
        column its rank (how many set columns lie below it, counted up to `width` by a tree,
        `_ranks`), the k-th lowest is the set column of rank k (a one-hot), and lane j is the
        current group's j-th when it has more than j columns, else the next group's (j - c)-th,
        c the current group's count. A column stays when its rank (in the next group: plus c)
        is at least `room`. Same lanes and masks as finding the lowest four times over (four
        carry chains in series, 34.7 MHz on the ULX3S). `cur_cnt` is the current group's count
        (a register kept beside its mask): which lanes it fills comes from it, not from its
        mask's count tree."""
        n, w = self.pes, self.width
        c_hot, _, c_rank = _ranks(m, cur, w, "c")
        c_ge = [cur_cnt >= e for e in range(1, w + 1)]
        n_hot, n_ge, n_rank = _ranks(m, nxt, w, "n")
        n_ge = [g & have_nxt for g in n_ge]
        one = Const(1, 1)
        c_eq = [(one if e == 0 else c_ge[e - 1]) & ~c_ge[e] for e in range(w)]  # exactly e
        tot = _therm_add(c_ge, n_ge, w)  # columns there, counted up to w
        room_ge = [self.room >= r for r in range(1, w + 1)]

        def at_least(ge, k):
            """the thermometer `ge` (count >= 1..w) is at least `k` (0..w)"""
            terms = [k == 0] + [(k == r) & ge[r - 1] for r in range(1, w + 1)]
            return Cat(*terms).any()

        # what room leaves for the next group once the current group's columns go: from
        # registers only, beside the next group's rank tree (not a sum after it)
        n_room = Signal(range(w + 1), name="n_room")
        m.d.comb += n_room.eq(Mux(cur_cnt >= self.room, 0, self.room - cur_cnt))
        rem_cur = Signal(n, name="rem_cur")
        rem_nxt = Signal(n, name="rem_nxt")
        for i in range(n):
            m.d.comb += [rem_cur[i].eq(cur[i] & at_least(c_rank[i], self.room)),
                         rem_nxt[i].eq(nxt[i] & at_least(n_rank[i], n_room))]

        def pick(hot, vals, name):
            """(value, index) of the one-hot `hot`'s column (0 when none): AND-OR, OR trees"""
            val = Signal(signed(16), name=f"{name}_val")
            m.d.comb += val.eq(_and_or([(hot[i], vals[i]) for i in range(n)]))
            k = Signal(range(max(n, 2)), name=f"{name}_k")
            for b in range(len(k)):
                terms = [hot[i] for i in range(n) if (i >> b) & 1]
                m.d.comb += k[b].eq(Cat(*terms).any() if terms else 0)
            return val, k

        c_pick = [pick(c_hot[j], cur_vals, f"c{j}") for j in range(w)]
        n_pick = [pick(n_hot[k], nxt_vals, f"n{k}") for k in range(w)]
        shift = (n & (n - 1)) == 0 and n > 1  # a group's first column is a multiple of n
        lo = (n - 1).bit_length()

        def column(base, k):
            return Cat(k, base[lo:]) if shift else base + k

        for j in range(w):
            # the next group's (j - e)-th when the current group has exactly e (e <= j)
            nv = _and_or([(c_eq[e], n_pick[j - e][0]) for e in range(j + 1)])
            nk = _and_or([(c_eq[e], n_pick[j - e][1]) for e in range(j + 1)])
            from_cur = c_ge[j]
            m.d.comb += [
                self.o[j].value.eq(Mux(from_cur, c_pick[j][0], nv)),
                self.o[j].col.eq(Mux(from_cur, column(cur_base, c_pick[j][1]),
                                     column(nxt_base, nk))),
                self.o_valid[j].eq(tot[j] & room_ge[j]),
            ]
        return rem_cur, rem_nxt

    def _elaborate_staged(self):
        """The pipelined front end: the groups read ahead into a two-entry queue of (values,
        mask, first column) registers, so the lanes come from flip-flops only and the
        activation RAMs' outputs go no further than that queue's mask in their cycle.

        Reading: the address is always `fgrp` (a register); the read counts ("issue") when
        group fgrp exists and is readable, and the queue will have a free entry when its word
        arrives, two cycles on: queued + in flight - taken this cycle <= 1 (one group a cycle
        when each is used up in a cycle). Sending: as the plain front end, the current group
        `cur` and the queue's head as the next group. A group comes a cycle later than in the
        plain front end (at a layer's start and behind the drain); then one a cycle as there."""
        m = Module()
        n = self.pes
        vals_t = data.ArrayLayout(signed(16), n)
        base_w = self.col_bits + 1 + n.bit_length()
        cur_vals = Signal(vals_t, name="cur_vals")
        cur_mask = Signal(n, name="cur_mask")
        cur_base = Signal(base_w, name="cur_base")
        q_vals = [Signal(vals_t, name=f"q{i}_vals") for i in range(2)]
        q_mask = [Signal(n, name=f"q{i}_mask") for i in range(2)]
        q_base = [Signal(base_w, name=f"q{i}_base") for i in range(2)]
        occ = Signal(range(3), name="occ")  # groups queued
        fgrp = Signal.like(self.groups, name="fgrp")  # the next group to read
        f_range = Signal(name="f_range")  # fgrp < groups
        f_base = Signal(base_w, name="f_base")  # its first column
        inflight = Signal(name="inflight")  # a group read last cycle: its word is on rd_data
        i_base = Signal(base_w, name="i_base")  # and its first column

        # the group on rd_data: its columns to send (non-zero or all, in range)
        rd_mask = Signal(n, name="rd_mask")
        for k in range(n):
            nz = (self.rd_data[k] != 0) if self.sparse else 1
            m.d.comb += rd_mask[k].eq(nz & (i_base + k < self.in_features))

        have_nxt = Signal(name="have_nxt")
        m.d.comb += have_nxt.eq(self.busy & (occ != 0))
        nxt = Signal(n, name="nxt")
        m.d.comb += nxt.eq(Mux(have_nxt, q_mask[0], 0))
        cur = Signal(n, name="cur")
        m.d.comb += cur.eq(Mux(self.busy, cur_mask, 0))
        if self.width == WIDTH:
            rem_cur, rem_nxt = self._lanes(m, cur, cur_vals, cur_base, nxt, q_mask[0],
                                           q_vals[0], q_base[0])
            c_none, c_one, c_two_only = _count_upto_two(cur_mask)
            out = Signal(name="out")  # the current group runs out this cycle (rem_cur == 0)
            m.d.comb += out.eq(~self.busy | c_none | (c_one & (self.room >= 1))
                               | (c_two_only & (self.room >= 2)))
        else:
            # cur_mask itself: it is 0 whenever the front end is idle (cleared at start and
            # done), so no gate on `busy` (the front end's widest fan-out) before the ranks.
            # Its count is kept in a register beside it (`cur_cnt`): "runs out this cycle" and
            # so the queue's pop come from that register and the credit alone, not from a
            # count tree over the mask (the routed design's critical path ran mask -> count ->
            # pop / done -> the mask's reset, 22.9 ns)
            cur_cnt = Signal(range(n + 1), name="cur_cnt")
            self.count_regs = (cur_mask, cur_cnt)  # for the tests: the count is the mask's
            rem_cur, rem_nxt = self._lanes_n(m, cur_mask, cur_vals, cur_base, q_mask[0],
                                             have_nxt, q_vals[0], q_base[0], cur_cnt)
            out = Signal(name="out")
            runs_out = cur_cnt == 0
            for k in range(1, self.width + 1):
                runs_out = runs_out | ((cur_cnt == k) & (self.room >= k))
            m.d.comb += out.eq(~self.busy | runs_out)
        pop = Signal(name="pop")  # the queue's head becomes the current group
        m.d.comb += pop.eq(self.busy & out & (occ != 0))
        running = Signal(name="running")
        m.d.comb += running.eq(self.busy | self.start)
        issue = Signal(name="issue")
        m.d.comb += self.rd_addr.eq(fgrp)
        # fgrp is 0 while idle, so group 0 may be read in the start cycle itself (the range
        # flag then from `groups`)
        f_ok = Signal(name="f_ok")
        m.d.comb += f_ok.eq(Mux(self.busy, f_range, self.groups != 0))
        m.d.comb += issue.eq(running & f_ok & ((fgrp < self.avail) | self.fwd)
                             & (occ + inflight - pop <= 1))

        # the queue: push the word on rd_data when it was read, pop into cur
        push = inflight
        new_vals, new_mask, new_base = self.rd_data, rd_mask, i_base
        with m.If(pop):
            m.d.sync += [cur_vals.eq(q_vals[0]), cur_mask.eq(rem_nxt), cur_base.eq(q_base[0])]
        with m.Elif(self.busy):
            # four-wide: rem_cur is 0 when the group runs out, so no multiplexer on `out`
            m.d.sync += cur_mask.eq(Mux(out, 0, rem_cur) if self.width == WIDTH else rem_cur)
        if self.width != WIDTH:
            # the count of the mask written above: the head's columns less those sent from it
            # (room less the current group's, which all go when it pops), or the current
            # group's less room
            head = Signal(range(n + 1), name="q0_cnt")
            m.d.comb += head.eq(_popcount(q_mask[0]))
            take = Signal(range(2 * n + 2), name="pop_cnt")
            m.d.comb += take.eq(head + cur_cnt)
            with m.If(pop):
                m.d.sync += cur_cnt.eq(Mux(take > self.room, take - self.room, 0))
            with m.Elif(self.busy):
                m.d.sync += cur_cnt.eq(Mux(out, 0, cur_cnt - self.room))
        with m.Switch(Cat(push, pop)):
            with m.Case(0b01):  # push only
                with m.If(occ == 0):
                    m.d.sync += [q_vals[0].eq(new_vals), q_mask[0].eq(new_mask),
                                 q_base[0].eq(new_base)]
                with m.Else():
                    m.d.sync += [q_vals[1].eq(new_vals), q_mask[1].eq(new_mask),
                                 q_base[1].eq(new_base)]
                m.d.sync += occ.eq(occ + 1)
            with m.Case(0b10):  # pop only
                m.d.sync += [q_vals[0].eq(q_vals[1]), q_mask[0].eq(q_mask[1]),
                             q_base[0].eq(q_base[1]), occ.eq(occ - 1)]
            with m.Case(0b11):  # both: the new word behind the one left, if any
                with m.If(occ == 2):
                    m.d.sync += [q_vals[0].eq(q_vals[1]), q_mask[0].eq(q_mask[1]),
                                 q_base[0].eq(q_base[1]),
                                 q_vals[1].eq(new_vals), q_mask[1].eq(new_mask),
                                 q_base[1].eq(new_base)]
                with m.Else():
                    m.d.sync += [q_vals[0].eq(new_vals), q_mask[0].eq(new_mask),
                                 q_base[0].eq(new_base)]
        m.d.sync += inflight.eq(issue)
        with m.If(issue):
            m.d.sync += [fgrp.eq(fgrp + 1), f_base.eq(f_base + n), i_base.eq(f_base),
                         f_range.eq(fgrp + 1 < self.groups)]
        # four-wide: cur_mask (and cur_cnt) are 0 already at start and at done (the group
        # runs out then, its rem_cur is 0): no reset of them (the mask's reset from `done` was
        # on the routed design's critical path)
        clear = [cur_mask.eq(0)] if self.width == WIDTH else []
        with m.If(self.start & ~self.busy):
            m.d.sync += [self.busy.eq(1), *clear]
            with m.If(~issue):
                m.d.sync += f_range.eq(self.groups != 0)
        with m.Elif(self.busy & out & (occ == 0) & ~inflight & ~f_range):
            # nothing left to send, queued, on its way or to read
            m.d.sync += [self.busy.eq(0), *clear, fgrp.eq(0), f_base.eq(0), f_range.eq(0)]
            m.d.comb += self.done.eq(1)
        return m




# layer kind -> the front ends that send its activations, one and two columns a cycle
FRONT_ENDS = {"fc": (FrontEnd, WideFrontEnd)}


def front_end(kind: str, width: int = 1) -> type:
    """The front end class for layers of `kind` (`images.layers`), `width` columns a cycle
    (the wide one's class for 2 and 4: `make(width=...)` sets its lanes)."""
    return FRONT_ENDS[kind][min(width, 2) - 1]


def _lowest(m, bits, n, name):
    """(any, index) of the lowest set bit of the n-bit signal `bits` (index 0 when none),
    combinational: the lowest bit alone (bits & -bits, a carry chain), each index bit the OR of
    the positions that have it: log depth, not a chain of n priority multiplexers."""
    low = Signal(n, name=f"{name}_low")
    m.d.comb += low.eq(bits & (~bits + 1))
    idx = Signal(range(max(n, 2)), name=f"{name}_idx")
    for b in range(len(idx)):
        terms = [low[k] for k in range(n) if (k >> b) & 1]
        m.d.comb += idx[b].eq(Cat(*terms).any() if terms else 0)
    return bits != 0, idx


def _therm_add(a, b, w):
    """The sum of two counts, each a thermometer (index c-1: count >= c, c = 1..w), as one,
    counted up to w."""
    one = Const(1, 1)
    ge = [one] + list(a), [one] + list(b)
    return [Cat(*[ge[0][x] & ge[1][c - x] for x in range(c + 1)]).any() for c in range(1, w + 1)]


def _ranks(m, x, w, name):
    """(hot, ge, rank) of the mask `x`: hot[k] the one-hot of its k-th lowest set bit (k < w;
    0 when it has fewer), ge[c-1] its count >= c (c = 1..w), rank[i] the count of its set
    bits below bit i as such a thermometer. The counts (up to w) by a prefix tree (Sklansky:
    log2 of the width levels of `_therm_add`), so every rank is there at once."""
    n = len(x)
    zero = Const(0, 1)
    pre = [[x[i]] + [zero] * (w - 1) for i in range(n)]  # count of bits [start, i], up to w
    span, level = 1, 0
    while span < n:
        nxt = list(pre)
        for i in range(n):
            if (i // span) % 2:
                s = Signal(w, name=f"{name}_pre{level}_{i}")
                m.d.comb += s.eq(Cat(*_therm_add(pre[(i // span) * span - 1], pre[i], w)))
                nxt[i] = [s[c] for c in range(w)]
        pre, span, level = nxt, span * 2, level + 1
    rank = [[zero] * w] + pre[:-1]
    one = Const(1, 1)
    hot = []
    for k in range(w):
        h = Signal(n, name=f"{name}_hot{k}")
        for i in range(n):
            ge = [one] + list(rank[i])
            m.d.comb += h[i].eq(x[i] & ge[k] & ~ge[k + 1])
        hot.append(h)
    return hot, list(pre[-1]), rank


def _popcount(bits):
    """The number of set bits of `bits`: a tree of adders."""
    terms = [bits[i] for i in range(len(bits))]
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def _and_or(pairs):
    """The value of the pair whose select is set (selects one-hot or none: 0)."""
    return reduce(operator.or_, [Mux(sel, v, 0) for sel, v in pairs])



def _count_upto_two(bits):
    """(none, exactly one, exactly two) of the bits of `bits` set: a tree of such triples."""
    trip = [(~bits[k], bits[k], 0) for k in range(len(bits))]
    while len(trip) > 1:
        nxt = []
        for i in range(0, len(trip) - 1, 2):
            (z0, o0, t0), (z1, o1, t1) = trip[i], trip[i + 1]
            nxt.append((z0 & z1, (o0 & z1) | (z0 & o1), (t0 & z1) | (o0 & o1) | (z0 & t1)))
        if len(trip) % 2:
            nxt.append(trip[-1])
        trip = nxt
    return trip[0]


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
