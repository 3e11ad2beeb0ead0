"""Pointer read (`p_` stage of a PE): the start and end of a column in one cycle.

A layer's column pointers are ptr[base .. base + in_features] (in_features + 1 words, absolute
entry addresses). Column `col` spans entries ptr[p] .. ptr[p+1]-1 with p = base + col. The
pointers are split over two banks, ptr[2k] in the even bank and ptr[2k+1] in the odd bank at
word k, so ptr[p] and ptr[p+1] are always in different banks: the even bank is read at
(p+1) >> 1 and the odd bank at p >> 1, and a cycle later (start, end) is (odd, even) for odd p
and (even, odd) for even p. A column with start == end (no entry in this PE) is dropped here:
it never takes a queue slot or a sequencer cycle.

Flow control is by credit, not back-pressure: `i.ready` is the `credit` input (the consumer has
room for one more column beyond the one in this stage, see `busy`), so a column taken here is
always taken by the consumer a cycle later and `o` is `always_ready`. `i.ready` never depends on
`i.valid`.

`registered` (the pipelined engine's PEs, `hw.eie.pe`): a second cycle, (value, start, end) and
"the column has entries" into registers, so `o` comes from flip-flops and the block RAMs'
outputs (their clock-to-out is most of an ECP5 cycle) go no further than those registers; the
column in that register is `held` (the consumer's credit counts it too). Empty columns are
dropped on the way into it, as before.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..convfe import conv_bcast_layout
from ..frontend import bcast_layout


def column_layout(ptr_bits: int, sub_bits: int = 0) -> data.StructLayout:
    """A column as queued for the sequencer: its activation and its entry range (and, with
    conv layers, its sub-position: which block of accumulator rows, `images.conv`)."""
    fields = {"value": signed(16), "start": ptr_bits, "end": ptr_bits}
    if sub_bits:
        fields["sub"] = sub_bits
    return data.StructLayout(fields)


class PointerRead(wiring.Component):
    """(value, col) in; a cycle later (value, start, end) out for columns with entries.

    `even`/`odd` are read ports of the two pointer banks (1-cycle synchronous read, as
    `hw.memory` makes them); `base` is the first pointer of the current layer.
    """

    def __init__(self, *, col_bits: int, base_bits: int, ptr_bits: int, even_addr_bits: int,
                 odd_addr_bits: int, sub_bits: int = 0, registered: bool = False):
        for name, v in (("col_bits", col_bits), ("base_bits", base_bits),
                        ("ptr_bits", ptr_bits), ("even_addr_bits", even_addr_bits),
                        ("odd_addr_bits", odd_addr_bits)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        self.base_bits = base_bits
        self.sub_bits = sub_bits
        self.registered = registered
        layout = conv_bcast_layout(col_bits, sub_bits) if sub_bits else bcast_layout(col_bits)
        super().__init__({
            "base": In(base_bits),
            "i": In(stream.Signature(layout)),
            "credit": In(1),
            "even": In(memory.ReadPort.Signature(addr_width=even_addr_bits, shape=ptr_bits)),
            "odd": In(memory.ReadPort.Signature(addr_width=odd_addr_bits, shape=ptr_bits)),
            "o": Out(stream.Signature(column_layout(ptr_bits, sub_bits), always_ready=True)),
            "busy": Out(1),  # a column is in this stage (the consumer's credit counts it)
            # registered: a column (with entries) is in the second register, on `o`
            **({"held": Out(1)} if registered else {}),
        })

    def elaborate(self, platform):
        m = Module()
        p_odd = Signal()
        p_value = Signal(signed(16))
        p_addr = Signal(self.base_bits + 1)
        m.d.comb += [
            self.i.ready.eq(self.credit),
            p_addr.eq(self.base + self.i.payload.col),
            self.even.addr.eq((p_addr + 1) >> 1),
            self.odd.addr.eq(p_addr >> 1),
        ]
        m.d.sync += [self.busy.eq(self.i.valid & self.i.ready), p_odd.eq(p_addr[0]),
                     p_value.eq(self.i.payload.value)]
        if self.sub_bits:
            p_sub = Signal(self.sub_bits)
            m.d.sync += p_sub.eq(self.i.payload.sub)
            if not self.registered:
                m.d.comb += self.o.payload.sub.eq(p_sub)
        p_start = Mux(p_odd, self.odd.data, self.even.data)
        p_end = Mux(p_odd, self.even.data, self.odd.data)
        if self.registered:
            r_value = Signal(signed(16), name="r_value")
            r_start = Signal.like(self.o.payload.start, name="r_start")
            r_end = Signal.like(self.o.payload.end, name="r_end")
            m.d.sync += [self.held.eq(self.busy & (p_start != p_end)), r_value.eq(p_value),
                         r_start.eq(p_start), r_end.eq(p_end)]
            if self.sub_bits:
                r_sub = Signal(self.sub_bits, name="r_sub")
                m.d.sync += r_sub.eq(p_sub)
                m.d.comb += self.o.payload.sub.eq(r_sub)
            m.d.comb += [self.o.valid.eq(self.held), self.o.payload.value.eq(r_value),
                         self.o.payload.start.eq(r_start), self.o.payload.end.eq(r_end)]
            return m
        m.d.comb += [
            self.o.valid.eq(self.busy & (p_start != p_end)),
            self.o.payload.value.eq(p_value),
            self.o.payload.start.eq(p_start),
            self.o.payload.end.eq(p_end),
        ]
        return m
