"""One processing element (PE) of the EIE engine.

Pipeline (stage prefixes as in the signal names):

    bc  --(credit)-->  p_  pointer read (`PointerRead`, hw/eie/pointer.py): p = ptr_base + col;
                           even bank at (p+1)>>1, odd bank at p>>1 give ptr[p] and ptr[p+1] in
                           one cycle. Columns with no entry in this PE are dropped here and never
                           take a queue slot or a cycle.
                  -->  queue (value, start, end), depth `queue_depth`, registers (`ActQueue`)
                  -->  s_  sequencer: one entry address per cycle, start..end-1; the next column is
                           popped in the cycle the current one issues its last entry (no bubble)
                  -->  e_  entry (v, z): row = (first ? 0 : row + 1) + z (running sum of z);
                           fillers and pruned weights (v == 0) stop here in the sparse engine;
                           codebook read at layer * 2**index_bits + v (`CodebookDecoder`,
                           hw/eie/codebook.py), accumulator read at row
                  -->  m_  weight x activation (16 x 16 -> 32 bit); the accumulator value read
                           is bypassed from w_ or x_ when they hold the same row
                           (read-modify-write hazard of back-to-back hits on one row); zero
                           weights stop here. m_, w_ and x_ are the `Mac` (hw/eie/mac.py)
                  -->  w_  acc + product, wrapped to acc_bits, written back
                  -->  x_  the word written last cycle (for the bypass: reads are not transparent)

Credit: the front end may broadcast only while level + p_valid < queue_depth (p_valid is
`PointerRead.busy`), so the column in the pointer stage always finds a free slot: `bc.ready`
never depends on `bc.valid`.

Per-layer constants (the PE's rows, first pointer and first bias of each layer, its shift and
ReLU) are constants in the logic, or, in a loadable engine (`sizes` given), words of the table
memory `pe{k}.layers` read asynchronously (`images.eie.pe_table_fields`), with the output rule
for a shift known only at run time (`hw.blocks.post_process_var`): the PE's logic then depends
on the engine's sizes alone, the same for every PE and every network of that shape.

Accumulators: two banks; layer i accumulates into bank i % 2, preloaded with its biases. The
drain of layer i (driven by the engine, one row per cycle, overlapping the compute of layer i+1
in the other bank) reads acc[row]; a cycle later `y` is the row's output (rounding shift, int16
saturation, ReLU of docs/formats.md section 3: `hw.blocks.post_process`) and the row is
preloaded with the bias of layer i+2, which uses the same bank. After reset the engine
preloads bank 0 and bank 1 with the biases of layers 0 and 1.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from images.eie import PIPELINED_EXTRA_SLOTS, EieSizes, PEImage, pe_memory_map, pe_table_fields

from ..blocks import bits, post_process, post_process_var, slot_sequencer
from ..convfe import conv_bcast_layout
from ..frontend import bcast_layout
from ..memory import MemoryFactory, MemorySpec
from ..queue import ActQueue, LaneQueue, PairQueue
from .codebook import CodebookDecoder
from .mac import Mac
from .pointer import PointerRead, column_layout

__all__ = ["PE", "PEImage"]

# queue slots a pipelined PE has beyond the engine's queue_depth (`_pointer_stage2`; the cycle
# model's)
EXTRA_SLOTS = PIPELINED_EXTRA_SLOTS


class PE(wiring.Component):
    """One PE of the EIE engine, built from its `PEImage`.

    Ports: `layer` (in: the layer being computed), `bc` (in: broadcast (value, col) stream of
    the front end; `ready` is the credit check), `idle` (out: nothing in flight), the drain
    (`drain_valid`, `drain_row`, `drain_layer`) and preload (`preload_valid`,
    `preload_layer`) controls from the engine, and the output row `y`, `y_valid`, `y_row`.

    Parameters: img; col_bits, row_bits (column and local-row widths of the engine);
    queue_depth (column queue, 1..64); acc_bits; sparse (False: the dense baseline, no zero
    skipping); memories (the engine's `MemoryFactory`); issue_width (columns broadcast a
    cycle); specs (its memories, default `images.eie.pe_memory_map`); sizes (a loadable
    engine's memory sizes, `img` padded to them: per-layer constants from the table memory).
    """

    def __init__(self, img: PEImage, *, col_bits: int, row_bits: int, queue_depth: int = 8,
                 acc_bits: int = 32, sparse: bool = True, memories: MemoryFactory | None = None,
                 issue_width: int = 1, specs: list[MemorySpec] | None = None,
                 sizes: EieSizes | None = None, sub_bits: int = 0, pipelined: bool = False):
        if issue_width not in (1, 2, 4):
            raise ValueError(f"issue_width must be 1, 2 or 4, not {issue_width!r}")
        if pipelined and issue_width not in (2, 4):
            raise ValueError("a pipelined PE takes two or four columns a cycle (issue_width 2 "
                             "or 4)")
        if issue_width == 4 and not pipelined:
            raise ValueError("four columns a cycle is the pipelined PE's only")
        self.pipelined = pipelined
        self.issue_width = issue_width
        self.img = img
        self.queue_depth = queue_depth
        self.acc_bits = acc_bits
        self.sparse = sparse
        self.memories = memories or MemoryFactory()
        self.num_layers = len(img.rows)
        self.row_bits = row_bits
        self.ptr_bits = img.ptr_bits
        self.sizes = sizes
        self.sub_bits = sub_bits  # > 0 with conv layers: the sub-position of a column
        L = self.num_layers
        # the PE's memories (`images.eie.pe_memory_map`; the engine passes its part of the
        # engine's map)
        self.specs = specs if specs is not None else pe_memory_map(
            img, acc_bits=acc_bits, issue_width=issue_width, sizes=sizes)
        layout = (conv_bcast_layout(col_bits + 1, sub_bits) if sub_bits
                  else bcast_layout(col_bits + 1))
        if issue_width == 1:
            bcast = {"bc": In(stream.Signature(layout))}
        else:  # up to two (four) columns a cycle, sent only within `room` (no back-pressure)
            # pipelined: `room` counts up to twice the lanes' free slots (the engine registers
            # the credit and takes a cycle's columns off it: `hw.eie.engine`)
            w = issue_width
            bcast = {"bcw": In(data.ArrayLayout(layout, w)),
                     "bcw_valid": In(w), "room": Out(range(2 * w + 1 if pipelined else 3))}
        super().__init__({
            "layer": In(range(max(L, 2))),
            "bank": In(1),  # the accumulator bank computed into (the step's parity)
            **bcast,
            "idle": Out(1),
            # drain: read row drain_row of layer drain_layer from bank drain_layer % 2, output it
            "drain_valid": In(1),
            "drain_row": In(row_bits),
            "drain_layer": In(range(max(L, 2))),
            "drain_bank": In(1),  # the bank drained (and preloaded)
            # preload: a cycle later write bias[preload_layer][row] into the same row of bank
            # drain_bank (the engine preloads the step two ahead; row: drain_row, or for a conv
            # layer its output row drain_row >> sub_bits, 0 for a channel it does not have)
            "preload_valid": In(1),
            "preload_layer": In(range(L + 2)),
            "y": Out(signed(16)),
            "y_valid": Out(1),
            "y_row": Out(row_bits),
        })

    def elaborate(self, platform):
        m = Module()
        c = SimpleNamespace()  # what the stages share
        ports = {s.name.split(".", 1)[1]: self.memories(m, s) for s in self.specs}
        c.ent = ports["entries"].read[0]
        c.banks = [ports["acc0"], ports["acc1"]]
        # compute-side accumulator port view (muxed onto the bank of the current layer)
        c.acc_r_addr = Signal(self.row_bits, name="acc_r_addr")
        c.acc_r_data = Signal(self.acc_bits, name="acc_r_data")
        c.acc_w_addr = Signal(self.row_bits, name="acc_w_addr")
        c.acc_w_data = Signal(self.acc_bits, name="acc_w_data")
        c.acc_w_en = Signal(name="acc_w_en")
        self._layer_constants(m, c, ports.get("layers"))
        if self.issue_width == 1:
            self._pointer_stage(m, c, ports["ptr_even"].read[0], ports["ptr_odd"].read[0])
        else:
            self._pointer_stage2(m, c, ports["ptr_even"].read, ports["ptr_odd"].read)
        # ---- s_: sequencer (hw/blocks.py) ----------------------------------------------------
        c.s = slot_sequencer(m, c.seq_src, self.ptr_bits, sub_bits=self.sub_bits)
        m.d.comb += c.ent.addr.eq(c.s.addr)
        self._entry_and_mac(m, c, ports["codebook"].read[0])
        self._drain(m, c, ports["bias"].read[0])
        self._banks(m, c)
        # idle while the last hit is written: the accumulator is next read (drain) or written
        # (other bank) a cycle later
        idle = (c.queue.level == 0) & ~c.pr_busy & ~c.s.valid & ~c.e_valid & ~c.mac.pending
        if self.pipelined:  # and no column on its way in from the broadcast register
            idle = idle & ~self.bcw_valid.any()
        m.d.comb += self.idle.eq(idle)
        return m

    def _layer_constants(self, m, c, table):
        """The per-layer constants as functions of a layer index: `c.rows_of(i)` (the PE's rows
        of layer i, 0 past the last), `c.ptr_base_of`, `c.bias_base_of`, and
        `c.out_rule(acc, i)` (the output rule of layer i). Constants in the logic, or a table
        memory's words (a loadable engine: read ports 0..3 look up drain_layer, the drained
        row's preload layer, layer and preload_layer)."""
        img, L = self.img, self.num_layers
        if table is None:
            rows_t = Array(Const(int(v), unsigned(self.row_bits + 1))
                           for v in list(img.rows) + [0, 0, 0])  # layers L, L+1: no rows
            ptr_t = Array(Const(int(v), unsigned(bits(len(img.ptr) + 1)))
                          for v in (list(img.ptr_base) + [0] * 2)[:max(L, 2)])
            bias_t = Array(Const(int(v), unsigned(bits(len(img.bias) + 1)))
                           for v in list(img.bias_base) + [0, 0, 0])
            c.rows_of = lambda port, i: rows_t[i]
            c.ptr_base_of = lambda i: ptr_t[i]
            c.bias_base_of = lambda i: bias_t[i]

            def out_rule(acc, i):
                y = Signal(signed(16), name="y_rule")
                with m.Switch(i):
                    for j in range(L):
                        with m.Case(j):
                            m.d.comb += y.eq(post_process(acc, img.shift[j], img.relu[j]))
                return y
            c.out_rule = out_rule
            return
        layout = data.StructLayout(dict(pe_table_fields(self.sizes)))
        views = []
        for j, rp in enumerate(table.read):
            v = Signal(layout, name=f"tbl{j}")
            m.d.comb += v.as_value().eq(rp.data)
            views.append((rp, v))

        def look(port, i):
            rp, v = views[port]
            m.d.comb += rp.addr.eq(i)
            return v

        c.rows_of = lambda port, i: look(port, i).rows
        c.ptr_base_of = lambda i: look(2, i).ptr_base
        c.bias_base_of = lambda i: look(3, i).bias_base
        c.out_rule = lambda acc, i: post_process_var(acc, look(0, i).shift, look(0, i).relu)

    def _pointer_stage2(self, m, c, pevs, pods):
        """p_ at issue width 2 (4): a `PointerRead` per broadcast lane, each on its own read
        port of the two pointer banks, into a queue written with up to two (four) columns."""
        if self.issue_width == 4:
            return self._pointer_stage4(m, c, pevs, pods)
        img, base = self.img, c.ptr_base_of(self.layer)
        # pipelined: EXTRA_SLOTS more, for the columns in the broadcast register and the credit
        # known a cycle late
        depth = self.queue_depth + (EXTRA_SLOTS if self.pipelined else 0)
        m.submodules.queue = c.queue = queue = PairQueue(column_layout(self.ptr_bits, self.sub_bits),
                                                         depth=depth)
        prs = []
        for j in range(2):
            pev, pod = pevs[j], pods[j]
            pr = PointerRead(
                col_bits=len(self.bcw[j].col), base_bits=bits(len(img.ptr) + 1),
                ptr_bits=self.ptr_bits, even_addr_bits=len(pev.addr),
                odd_addr_bits=len(pod.addr), sub_bits=self.sub_bits,
                registered=self.pipelined)
            m.submodules[f"pointer{j}"] = pr
            m.d.comb += [
                pr.i.valid.eq(self.bcw_valid[j]),
                pr.i.payload.eq(self.bcw[j]),
                pr.base.eq(base),
                pr.credit.eq(1),  # `room` below is the credit, checked by the front end
                pev.addr.eq(pr.even.addr), pr.even.data.eq(pev.data),
                pod.addr.eq(pr.odd.addr), pr.odd.data.eq(pod.data),
                queue.i[j].payload.eq(pr.o.payload),
            ]
            prs.append(pr)
        c.pr_busy = prs[0].busy | prs[1].busy
        if self.pipelined:  # and the columns in the pointer stage's second register
            c.pr_busy = c.pr_busy | prs[0].held | prs[1].held
        # bypass: into an empty queue, the first column out of p_ goes straight to the
        # sequencer when it can take it (a cycle earlier); the other one is queued
        src = SimpleNamespace(o=SimpleNamespace(
            valid=Signal(name="src_valid"), ready=Signal(name="src_ready"),
            payload=Signal(column_layout(self.ptr_bits, self.sub_bits), name="src_payload")))
        c.seq_src = src
        empty = queue.level == 0
        lane0 = prs[0].o.valid
        by = Signal(2, name="bypass")  # the lane that goes to the sequencer directly
        m.d.comb += by.eq(Mux(empty & src.o.ready, Mux(lane0, 0b01, prs[1].o.valid << 1), 0))
        with m.If(empty):
            m.d.comb += [src.o.valid.eq(lane0 | prs[1].o.valid),
                         src.o.payload.eq(Mux(lane0, prs[0].o.payload, prs[1].o.payload)),
                         queue.o.ready.eq(0)]
        with m.Else():
            m.d.comb += [src.o.valid.eq(queue.o.valid), src.o.payload.eq(queue.o.payload),
                         queue.o.ready.eq(src.o.ready)]
        m.d.comb += [queue.i[j].valid.eq(prs[j].o.valid & ~by[j]) for j in range(2)]
        # free slots once the columns in the pointer stage are queued: every one sent now
        # finds its slot a cycle later whatever the sequencer does
        free = Signal(range(-6 if self.pipelined else -4, depth + 1), name="free")
        if self.pipelined:
            # the columns in the broadcast register (on bcw now) hold their slots too
            # and the columns in the pointer stage's second register (`PointerRead.held`)
            m.d.comb += free.eq(depth - queue.level - prs[0].busy - prs[1].busy
                                - prs[0].held - prs[1].held
                                - self.bcw_valid[0] - self.bcw_valid[1])
            m.d.comb += self.room.eq(Mux(free >= 4, 4, Mux(free >= 0, free, 0)))
        else:
            m.d.comb += free.eq(depth - queue.level - prs[0].busy - prs[1].busy)
            m.d.comb += self.room.eq(Mux(free >= 2, 2, Mux(free >= 1, 1, 0)))

    def _pointer_stage4(self, m, c, pevs, pods):
        """p_ of the four-wide pipelined PE: as `_pointer_stage2`'s pipelined one with four
        lanes (`LaneQueue`): a registered `PointerRead` per lane; into an empty queue the lowest
        lane out of p_ goes straight to the sequencer when it can take it, the others are
        queued in lane order; `room` is the free slots, up to 8."""
        img, base = self.img, c.ptr_base_of(self.layer)
        w = self.issue_width
        depth = self.queue_depth + EXTRA_SLOTS
        layout = column_layout(self.ptr_bits, self.sub_bits)
        m.submodules.queue = c.queue = queue = LaneQueue(layout, depth=depth, lanes=w)
        prs = []
        for j in range(w):
            pev, pod = pevs[j], pods[j]
            pr = PointerRead(
                col_bits=len(self.bcw[j].col), base_bits=bits(len(img.ptr) + 1),
                ptr_bits=self.ptr_bits, even_addr_bits=len(pev.addr),
                odd_addr_bits=len(pod.addr), sub_bits=self.sub_bits, registered=True)
            m.submodules[f"pointer{j}"] = pr
            m.d.comb += [
                pr.i.valid.eq(self.bcw_valid[j]),
                pr.i.payload.eq(self.bcw[j]),
                pr.base.eq(base),
                pr.credit.eq(1),  # `room` below is the credit, checked by the front end
                pev.addr.eq(pr.even.addr), pr.even.data.eq(pev.data),
                pod.addr.eq(pr.odd.addr), pr.odd.data.eq(pod.data),
                queue.i[j].payload.eq(pr.o.payload),
            ]
            prs.append(pr)
        busy = 0
        for pr in prs:
            busy = busy | pr.busy | pr.held
        c.pr_busy = busy
        src = SimpleNamespace(o=SimpleNamespace(
            valid=Signal(name="src_valid"), ready=Signal(name="src_ready"),
            payload=Signal(layout, name="src_payload")))
        c.seq_src = src
        empty = queue.level == 0
        # the lowest lane with a column out of p_ (first: its one-hot)
        first = Signal(w, name="first_lane")
        seen = 0
        for j in range(w):
            m.d.comb += first[j].eq(prs[j].o.valid & ~seen)
            seen = seen | prs[j].o.valid
        head = Signal(layout, name="p_head")
        with m.Switch(first):
            for j in range(w):
                with m.Case(1 << j):
                    m.d.comb += head.eq(prs[j].o.payload)
        by = Signal(w, name="bypass")  # the lane that goes to the sequencer directly
        m.d.comb += by.eq(Mux(empty & src.o.ready, first, 0))
        with m.If(empty):
            m.d.comb += [src.o.valid.eq(seen), src.o.payload.eq(head), queue.o.ready.eq(0)]
        with m.Else():
            m.d.comb += [src.o.valid.eq(queue.o.valid), src.o.payload.eq(queue.o.payload),
                         queue.o.ready.eq(src.o.ready)]
        m.d.comb += [queue.i[j].valid.eq(prs[j].o.valid & ~by[j]) for j in range(w)]
        # free slots once the columns in the broadcast register and both pointer registers are
        # queued (`_pointer_stage2`)
        free = Signal(range(-3 * w, depth + 1), name="free")
        taken = 0
        for j, pr in enumerate(prs):
            taken = taken + pr.busy + pr.held + self.bcw_valid[j]
        m.d.comb += free.eq(depth - queue.level - taken)
        m.d.comb += self.room.eq(Mux(free >= 2 * w, 2 * w, Mux(free >= 0, free, 0)))

    def _pointer_stage(self, m, c, pev, pod):
        """p_: pointer read (hw/eie/pointer.py) into the column queue."""
        img = self.img
        depth = self.queue_depth
        m.submodules.queue = c.queue = queue = ActQueue(column_layout(self.ptr_bits, self.sub_bits),
                                                        depth=depth)
        m.submodules.pointer = c.pr = pr = PointerRead(
            col_bits=len(self.bc.payload.col), base_bits=bits(len(img.ptr) + 1),
            ptr_bits=self.ptr_bits, even_addr_bits=len(pev.addr), odd_addr_bits=len(pod.addr),
            sub_bits=self.sub_bits)
        wiring.connect(m, wiring.flipped(self.bc), pr.i)
        c.pr_busy = pr.busy
        c.seq_src = queue
        m.d.comb += [
            pr.base.eq(c.ptr_base_of(self.layer)),
            # credit: the column in the pointer stage always finds a free queue slot
            pr.credit.eq(queue.level + pr.busy < depth),
            pev.addr.eq(pr.even.addr), pr.even.data.eq(pev.data),
            pod.addr.eq(pr.odd.addr), pr.odd.data.eq(pod.data),
            queue.i.valid.eq(pr.o.valid),
            queue.i.payload.eq(pr.o.payload),
        ]

    def _entry_and_mac(self, m, c, cb):
        """e_: entry decode, codebook (hw/eie/codebook.py); m_, w_, x_: the MAC (hw/eie/mac.py)."""
        img, ib, ent, s = self.img, self.img.index_bits, c.ent, c.s
        c.e_valid = e_valid = Signal(name="e_valid")
        e_first = Signal(name="e_first")
        e_value = Signal(signed(16), name="e_value")
        m.d.sync += [e_valid.eq(s.valid), e_first.eq(s.first), e_value.eq(s.value)]
        e_v = ent.data[:ib]
        e_z = ent.data[ib:]
        e_row = Signal(self.row_bits + img.rel_bits + 1, name="e_row")
        row_reg = Signal.like(e_row, name="row_reg")
        m.d.comb += e_row.eq(Mux(e_first, 0, row_reg + 1) + e_z)
        with m.If(e_valid):
            m.d.sync += row_reg.eq(e_row)
        e_hit = e_valid & ((e_v != 0) if self.sparse else 1)
        # the accumulator address: the row, and for a conv layer the column's sub-position in
        # the low bits (row << sub_bits | sub: every sub-position its own block of rows)
        e_addr = Signal(self.row_bits, name="e_addr")
        sbs = self._sub_bits_table()
        if self.sub_bits:
            e_sub = Signal(self.sub_bits, name="e_sub")
            m.d.sync += e_sub.eq(s.sub)
            with m.Switch(sbs[self.layer]):
                for sb in sorted(set(self._layer_sub_bits())):
                    with m.Case(sb):
                        m.d.comb += e_addr.eq((e_row << sb) | (e_sub[:sb] if sb else 0))
        else:
            m.d.comb += e_addr.eq(e_row)
        m.submodules.codebook = dec = CodebookDecoder(index_bits=ib, layers=self.num_layers,
                                                      addr_bits=len(cb.addr))
        m.d.comb += [dec.layer.eq(self.layer), dec.v.eq(e_v),
                     cb.addr.eq(dec.mem.addr), dec.mem.data.eq(cb.data)]
        # zero-skipping MAC with its bypass
        m.submodules.mac = c.mac = mac = Mac(row_bits=self.row_bits, acc_bits=self.acc_bits,
                                             sparse=self.sparse)
        m.d.comb += [
            mac.i.valid.eq(e_hit),
            mac.i.payload.row.eq(e_addr),  # the accumulator address: truncated
            mac.i.payload.value.eq(e_value),
            mac.weight.eq(dec.weight),
            c.acc_r_addr.eq(mac.acc_rd.addr),
            mac.acc_rd.data.eq(c.acc_r_data),
            c.acc_w_addr.eq(mac.acc_wr.addr),
            c.acc_w_data.eq(mac.acc_wr.data),
            c.acc_w_en.eq(mac.acc_wr.en),
        ]

    def _layer_sub_bits(self) -> list[int]:
        """Each layer's sub-position bits (0 for fc)."""
        from images.conv import ConvGeom

        return [ConvGeom(*g).sub_bits if g else 0 for g in (self.img.geoms or
                                                              [()] * self.num_layers)]

    def _sub_bits_table(self):
        sbs = self._layer_sub_bits() + [0, 0, 0]
        return Array(Const(v, range(max(sbs) + 1)) for v in sbs)

    def _drain(self, m, c, bias):
        """Output stage (hw/blocks.py `post_process`); preload of the drained row, step + 2.

        A conv layer's rows are drained in address order, row r's sub-positions one after
        another (r << sub_bits | s): their maximum is kept (the pooling) and the output comes
        with the last one; its channels this PE does not have are drained too, as zeros (the
        preload writes 0 there), so every word of the map is written. (Conv layers only in a
        fixed engine: a loadable one refuses them, so its constants are all fc ones.)"""
        from images.conv import ConvGeom

        img, L, banks = self.img, self.num_layers, c.banks
        geoms = [ConvGeom(*g) if g else None for g in (img.geoms or [()] * L)]
        pool = any(g is not None and g.subs > 1 for g in geoms)
        conv = any(g is not None for g in geoms)
        d_valid = Signal(name="d_valid")
        c.d_pre = d_pre = Signal(name="d_pre")
        c.d_row = d_row = Signal(self.row_bits, name="d_row")
        d_layer = Signal.like(self.drain_layer, name="d_layer")
        d_pl_layer = Signal.like(self.preload_layer, name="d_pl_layer")
        c.d_bank_r = Signal(name="d_bank_r")
        sbs = self._sub_bits_table()
        if conv:
            # the bias of the preloaded layer's row: row >> sub_bits for a conv layer
            pl_row = Signal(self.row_bits, name="pl_row")
            with m.Switch(sbs[self.preload_layer]):
                for sb in sorted(set(self._layer_sub_bits())):
                    with m.Case(sb):
                        m.d.comb += pl_row.eq(self.drain_row >> sb)
            m.d.comb += bias.addr.eq(c.bias_base_of(self.preload_layer) + pl_row)
        else:
            m.d.comb += bias.addr.eq(c.bias_base_of(self.preload_layer) + self.drain_row)
        m.d.sync += [d_valid.eq(self.drain_valid), d_pre.eq(self.preload_valid),
                     d_row.eq(self.drain_row), d_layer.eq(self.drain_layer),
                     d_pl_layer.eq(self.preload_layer), c.d_bank_r.eq(self.drain_bank)]
        d_acc = Signal(signed(self.acc_bits), name="d_acc")
        m.d.comb += d_acc.eq(Mux(c.d_bank_r, banks[1].read[0].data, banks[0].read[0].data))
        out_acc = d_acc
        y_ok = d_valid & (d_row < c.rows_of(0, d_layer))
        if conv:
            out_rows = Array(Const(int(v), unsigned(self.row_bits + 1))
                             for v in list(img.out_rows) + [0, 0, 0])
            subs_t = Array(Const(g.subs if g else 1, range(max((g.subs for g in geoms if g),
                                                               default=1) + 1))
                           for g in geoms + [None, None])
            is_conv = Array(Const(int(g is not None), 1) for g in geoms + [None, None])
            # the drained row's output row and sub-position
            d_r = Signal(self.row_bits, name="d_r")
            d_s = Signal(max(1, self.sub_bits), name="d_s")
            with m.Switch(sbs[d_layer]):
                for sb in sorted(set(self._layer_sub_bits())):
                    with m.Case(sb):
                        m.d.comb += [d_r.eq(d_row >> sb), d_s.eq(d_row[:sb] if sb else 0)]
            if pool:
                # the running maximum over a row's sub-positions (the golden model's pooling
                # of the wrapped accumulators)
                d_max = Signal(signed(self.acc_bits), name="d_max")
                out_acc = Signal(signed(self.acc_bits), name="d_pooled")
                m.d.comb += out_acc.eq(Mux((d_s == 0) | (d_acc > d_max), d_acc, d_max))
                with m.If(d_valid):
                    m.d.sync += d_max.eq(out_acc)
            y_conv = d_valid & (d_s == subs_t[d_layer] - 1) & (d_r < out_rows[d_layer])
            y_ok = Mux(is_conv[d_layer], y_conv, y_ok)
        m.d.comb += self.y.eq(c.out_rule(out_acc, d_layer))
        m.d.comb += [
            self.y_valid.eq(y_ok),
            self.y_row.eq(d_row),
        ]
        c.d_bias = Signal(self.acc_bits, name="d_bias")
        # only rows the preloaded layer has (the bank may be shallower)
        c.d_pl_en = Signal(name="d_pl_en")
        if conv:
            # a conv layer's rows of channels this PE does not have get 0 (drained as zeros)
            pl_r = Signal(self.row_bits, name="pl_r")
            with m.Switch(sbs[d_pl_layer]):
                for sb in sorted(set(self._layer_sub_bits())):
                    with m.Case(sb):
                        m.d.comb += pl_r.eq(d_row >> sb)
            own = pl_r < c.rows_of(1, d_pl_layer)
            m.d.comb += [c.d_bias.eq(Mux(own, bias.data.as_signed(), 0)),
                         c.d_pl_en.eq(Mux(is_conv[d_pl_layer], pl_r < out_rows[d_pl_layer],
                                          d_row < c.rows_of(1, d_pl_layer)))]
        else:
            m.d.comb += [c.d_bias.eq(bias.data.as_signed()),
                         c.d_pl_en.eq(d_row < c.rows_of(1, d_pl_layer))]

    def _banks(self, m, c):
        """Bank muxing: the engine never computes into the bank being drained."""
        c_bank = self.bank  # compute bank
        d_bank = self.drain_bank  # drain bank (the other one while both are active)
        banks = c.banks
        for b, bank in enumerate(banks):
            rp, wp = bank.read[0], bank.write[0]
            with m.If(self.drain_valid & (d_bank == b)):
                m.d.comb += rp.addr.eq(self.drain_row)
            with m.Else():
                m.d.comb += rp.addr.eq(c.acc_r_addr)
            with m.If(c.d_pre & (c.d_bank_r == b)):
                m.d.comb += [wp.addr.eq(c.d_row), wp.data.eq(c.d_bias), wp.en.eq(c.d_pl_en)]
            with m.Elif(c_bank == b):
                m.d.comb += [wp.addr.eq(c.acc_w_addr), wp.data.eq(c.acc_w_data),
                             wp.en.eq(c.acc_w_en)]
        m.d.comb += c.acc_r_data.eq(Mux(c_bank, banks[1].read[0].data, banks[0].read[0].data))
