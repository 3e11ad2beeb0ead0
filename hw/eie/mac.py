"""Zero-skipping multiply-accumulate of a PE (`m_`, `w_`, `x_` stages).

Input `i` (the `e_` stage): an accumulator row and an activation; the accumulator memory is
read at that row in the same cycle (`acc_rd`, 1-cycle synchronous read, not transparent) and
the weight arrives a cycle later (`weight`, from the codebook decoder):

    m_  weight x activation (16 x 16 -> 32 bit); the accumulator value read is replaced by the
        value `w_` is writing (same row, one hit before) or the one `x_` wrote last cycle
        (same row, two hits before): the read-modify-write hazard of back-to-back hits on one
        row, as the read does not see a write of the same or the previous cycle. With
        `sparse`, a zero weight stops here and never reaches the accumulator.
    w_  acc + product, truncated to acc_bits (the wrap of docs/formats.md section 3), written back
    x_  the word written last cycle, kept for the bypass

So one hit per cycle with no stall, whatever the row sequence.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out


def hit_layout(row_bits: int) -> data.StructLayout:
    return data.StructLayout({"row": row_bits, "value": signed(16)})


class Mac(wiring.Component):
    """The `m_`, `w_`, `x_` stages of a PE (module docstring).

    Ports: `i` (in: (row, value) hits, one per cycle, no back-pressure), `weight` (in: the
    weight of the previous cycle's hit), `acc_rd`/`acc_wr` (the accumulator memory's read and
    write port, driven from here), `busy` (out: a hit not yet written), `pending` (out: a hit
    in `m_`, whose write is a cycle away).
    Parameters: row_bits (accumulator address width), acc_bits (17..64), sparse (drop zero
    weights).
    """

    def __init__(self, *, row_bits: int, acc_bits: int = 32, sparse: bool = True):
        if not isinstance(row_bits, int) or row_bits < 1:
            raise ValueError(f"row_bits must be a positive integer, not {row_bits!r}")
        if not isinstance(acc_bits, int) or not 17 <= acc_bits <= 64:
            raise ValueError(f"acc_bits must be an integer 17..64, not {acc_bits!r}")
        self.row_bits = row_bits
        self.acc_bits = acc_bits
        self.sparse = sparse
        super().__init__({
            # no back-pressure: the MAC takes one hit per cycle
            "i": In(stream.Signature(hit_layout(row_bits), always_ready=True)),
            "weight": In(signed(16)),  # the weight of the hit of the previous cycle
            "acc_rd": In(memory.ReadPort.Signature(addr_width=row_bits, shape=acc_bits)),
            "acc_wr": In(memory.WritePort.Signature(addr_width=row_bits, shape=acc_bits)),
            "busy": Out(1),  # a hit is in m_ or w_ (not yet written)
            # a hit in m_: its write is still to come (one in w_ is written this cycle, so a
            # layer may end with it: the next reads of this memory come a cycle later)
            "pending": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        ab = self.acc_bits
        m.d.comb += self.acc_rd.addr.eq(self.i.payload.row)

        # ---- m_: multiply, bypass ---------------------------------------------------------
        m_valid = Signal()
        m_row = Signal(self.row_bits)
        m_value = Signal(signed(16))
        m.d.sync += [m_valid.eq(self.i.valid), m_row.eq(self.i.payload.row),
                     m_value.eq(self.i.payload.value)]
        w_valid = Signal()
        w_row = Signal(self.row_bits)
        w_acc = Signal(signed(ab))
        w_prod = Signal(signed(32))
        w_new = Signal(signed(ab))
        x_valid = Signal()
        x_row = Signal(self.row_bits)
        x_val = Signal(signed(ab))
        m_acc = Signal(signed(ab))
        with m.If(w_valid & (w_row == m_row)):
            m.d.comb += m_acc.eq(w_new)
        with m.Elif(x_valid & (x_row == m_row)):
            m.d.comb += m_acc.eq(x_val)
        with m.Else():
            m.d.comb += m_acc.eq(self.acc_rd.data.as_signed())
        m_hit = m_valid & ((self.weight != 0) if self.sparse else 1)
        m.d.sync += [w_valid.eq(m_hit), w_row.eq(m_row), w_acc.eq(m_acc),
                     w_prod.eq(self.weight * m_value)]

        # ---- w_: accumulate and write back; x_: last write for the bypass -----------------
        m.d.comb += w_new.eq(w_acc + w_prod)  # truncated to acc_bits: the wrap
        m.d.sync += [x_valid.eq(w_valid), x_row.eq(w_row), x_val.eq(w_new)]
        m.d.comb += [
            self.acc_wr.addr.eq(w_row),
            self.acc_wr.data.eq(w_new),
            self.acc_wr.en.eq(w_valid),
            self.busy.eq(m_valid | w_valid),
            self.pending.eq(m_valid),
        ]
        return m
