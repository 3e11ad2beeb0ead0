"""The EIE engine: a whole quantized network, sparse weights and sparse activations skipped.

Architecture (after EIE, Han et al. ISCA 2016; see docs/engine.md):

* N PEs (`hw.eie.pe.PE`), rows interleaved: PE k holds rows r with r % N == k as local rows r // N,
  with its own entries, even/odd pointer banks, biases, codebook copy and accumulators.
* Activations live in per-PE buffers, column c of a layer's input in PE c % N at word c // N,
  two banks that swap every layer (source/destination), so a whole network runs with no host
  between layers. A layer's output row r is drained from PE r % N into its own buffer at word
  r // N: exactly where the next layer's front end reads column r. All PEs drain in parallel.
* The front end (`hw.frontend.FrontEnd`) reads one word of every PE buffer per cycle (N
  consecutive columns), detects the non-zeros and broadcasts (value, column) to every PE.
* Sequencing per inference: PRELOAD (layer 0 biases into the accumulators) -> LOAD (in_0 words
  from `i_act` into bank 0) -> per layer COMPUTE (front end + PEs until all idle) and DRAIN
  (output stage into the other bank, next layer's biases into the accumulators) -> OUTPUT
  (out_{L-1} words to `o_act`, row order, valid/ready).
* `cycles`: first input word accepted -> last output word delivered, inclusive.
  `layer_cycles[i]`: the COMPUTE + DRAIN cycles of layer i. Both hold the last inference.

`sparse=False` is the dense baseline: the same PEs and datapath fed with a dense image (every
weight, zeros included, as an entry with z = 0) and a front end that broadcasts every column.

Conv layers (`images.conv`, docs/engine.md "Convolution"): a conv layer is a sequence of
*steps*, one per pass (a pooled output position), each computed like a layer: its front end
(`hw.convfe`, one per layer kind in the network, `hw.frontend.FRONT_ENDS`) gathers the pass's
patches from the source bank, the PEs accumulate into the step's accumulator bank (banks
alternate per step; a fully connected layer is one step), and the step's drain (its rows, a
pooled row's sub-positions maximised) writes the output map (CHAN layout) into the other
activation bank while the next step computes. A layer's first pass waits for the previous
layer's drain; an fc layer after a conv one reads nothing before that drain is done.

The pipelined front end (`pipelined=True`, issue width 2; the ECP5 boards' engine,
docs/fpga.md section 7) takes the cycle-long paths across every PE apart for a fast clock: the
front end's two lanes go into a register (`bc_r`) the PEs read a cycle later; the credit is
registered too ("every PE has k free slots" for k = 1..4, `room_ge`, taken a cycle late minus
what the register holds, so each PE's `room` counts the columns in that register and its queue
has `hw.eie.pe.EXTRA_SLOTS` more); the drain's forwarded word is registered beside each PE
(`y_r`: a group is forwarded a cycle later); and the front end's read address is chosen from
its flip-flops and that credit (`hw.frontend.WideFrontEnd`). About 2 cycles a layer more
(`images.eie.simulate_wide`); the plain engine stays the default. With `issue_width=4`
(pipelined only, fully connected layers only: the ULX3S's default,
`fpga.boards.ecp5.FOUR_WIDE`) the front end sends four columns a cycle, the credit counts up
to 8 ("every PE has k free" for k = 1..8; with queues of 16 or more it assumes the last cycle
sent four, `images.eie.full_credit`, so it comes from registers alone) and each PE reads its
pointer banks on four ports into a four-lane queue (`hw.eie.pe`, `hw.queue.LaneQueue`).

A loadable engine (`loadable=True`, `images.eie.EieParams`) has memories of given sizes and
reads every per-network constant (each layer's in_features, groups, drain and preload rows,
out_features here; each PE's rows, bases, shift and ReLU) from table memories loaded with the
weights, so its logic depends on its shape alone and every network that fits runs on one
Verilog. It runs fully connected networks only: it refuses an image with conv layers (their
constants are not in its tables yet). `io_lanes` words move a beat on i_act and o_act (LOAD
and OUTPUT take in_0 / lanes and out / lanes cycles; one word a beat with conv layers).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring

from images.conv import acc_rows
from images.eie import (ISSUE_WIDTHS, PIPELINED_WIDTHS, EieParams,
                        EieSizes, RomImage, act_words, engine_pe_images, full_credit,
                        engine_table_fields, has_conv, image_sizes, memory_map, rom_geoms,
                        sizes_of)
from images.eie import io_lanes as _io_lanes
from images.eie import issue_width as _issue_width

from ..blocks import (ActIO, EngineConfigError, EngineSignature, bits, ceil_div, check_fits,
                      check_queue_depth)
from ..frontend import front_end
from ..memory import MemoryFactory, MemorySpec
from ..queue import MAX_DEPTH
from .pe import EXTRA_SLOTS, PE

__all__ = ["Engine"]


def _sizes(sizes):
    """`sizes` as EieSizes (`EieParams.as_dict` gives a dict)."""
    return EieSizes(**sizes) if isinstance(sizes, dict) else sizes


class _Lookup:
    """A per-layer constant read from a loadable engine's table, indexed like an `Array`."""

    def __init__(self, read):
        self.read = read

    def __getitem__(self, i):
        return self.read(i)


class Engine(wiring.Component):
    """The EIE engine of a `RomImage`.

    Ports (`hw.blocks.EngineSignature`): `i_act` (in: input words, valid/ready), `o_act` (out:
    output words), `cycles`, `layer_cycles` (copied to the ports at the last output word: they
    hold the last inference while the next one runs), `busy`.

    Parameters: rom, the EIE image (N = rom.pes PEs); queue_depth, columns per PE queue
    (1..64); acc_bits, accumulator width (17..64); sparse, False for the dense baseline (every
    weight an entry, every column broadcast); memories, the `MemoryFactory` that makes every
    memory (`memory_specs`); max_width, the largest layer width the activation buffers must
    hold, checked up front; issue_width (1 or 2 columns a cycle); loadable, sizes (per-layer
    constants in table memories, memories of `sizes`: module docstring; fully connected
    networks only); io_lanes (words a beat on i_act and o_act, a divisor of the PEs; None: one
    per PE; 1 with conv layers); pipelined (the pipelined two-wide front end: module docstring).
    """

    image_type = RomImage

    @classmethod
    def check(cls, rom: RomImage, *, queue_depth=8, acc_bits=32, sparse=True,
              max_width: int | None = None, issue_width: int | None = None,
              loadable: bool = False, sizes: EieSizes | None = None,
              io_lanes: int | None = 1, pipelined: bool = False) -> None:
        """EngineConfigError naming what does not fit, before anything is made."""
        if not isinstance(rom, RomImage):
            raise TypeError(f"the EIE engine is built from a RomImage, not "
                            f"{type(rom).__name__}")
        check_queue_depth(queue_depth)
        check_fits(rom, acc_bits=acc_bits, max_width=max_width)
        if issue_width not in (None, *ISSUE_WIDTHS):
            raise EngineConfigError(f"issue width must be 1, 2 or 4, not {issue_width!r}")
        if not isinstance(pipelined, bool):
            raise EngineConfigError(f"pipelined must be True or False, not {pipelined!r}")
        width = _issue_width(rom, EieParams(issue_width=issue_width))
        if pipelined and width not in PIPELINED_WIDTHS:
            raise EngineConfigError(f"the pipelined front end is the two-wide or four-wide one: "
                                    f"issue width 2 or 4, not {width}")
        if width == 4 and not pipelined:
            raise EngineConfigError("four columns a cycle is the pipelined front end's only "
                                    "(pipelined=True)")
        if width == 4 and has_conv(rom):
            raise EngineConfigError("four columns a cycle takes fully connected layers only: "
                                    "this network has conv layers (issue width 2)")
        if pipelined and queue_depth + EXTRA_SLOTS > MAX_DEPTH:
            raise EngineConfigError(f"a pipelined engine's queues have {EXTRA_SLOTS} slot(s) "
                                    f"more: queue depth at most {MAX_DEPTH - EXTRA_SLOTS}, not "
                                    f"{queue_depth}")
        if io_lanes is not None and (isinstance(io_lanes, bool) or not isinstance(io_lanes, int)
                                     or io_lanes < 1 or rom.pes % io_lanes):
            raise EngineConfigError(f"io_lanes must divide the {rom.pes} PEs, not {io_lanes!r}")
        conv = has_conv(rom)
        if conv and loadable:
            raise EngineConfigError("the loadable EIE engine runs fully connected networks only: "
                                    "this one has conv layers (use the fixed engine, "
                                    "loadable=False)")
        lanes = rom.pes if io_lanes is None else io_lanes
        if conv and lanes != 1:
            raise EngineConfigError(f"a network with conv layers moves one word a beat on "
                                    f"i_act and o_act, not io_lanes={lanes}")
        sizes = _sizes(sizes)
        if sizes is not None:
            if not loadable:
                raise EngineConfigError("memory sizes are for a loadable engine (loadable=True)")
            need = image_sizes(rom, sparse=sparse)
            for name, v in need.as_dict().items():
                if v > getattr(sizes, name):
                    raise EngineConfigError(
                        f"the network needs {v:,} {name.replace('_', ' ')} a PE, more than the "
                        f"engine's {getattr(sizes, name):,}")

    def __init__(self, rom: RomImage, *, queue_depth=8, acc_bits=32, sparse=True,
                 memories: "MemoryFactory | None" = None, max_width: int | None = None,
                 issue_width: int | None = None, loadable: bool = False,
                 sizes: EieSizes | None = None, io_lanes: int | None = 1,
                 pipelined: bool = False):
        sizes = _sizes(sizes)
        self.check(rom, queue_depth=queue_depth, acc_bits=acc_bits, sparse=sparse,
                   max_width=max_width, issue_width=issue_width, loadable=loadable,
                   sizes=sizes, io_lanes=io_lanes, pipelined=pipelined)
        params = EieParams(queue_depth=queue_depth, acc_bits=acc_bits, sparse=sparse,
                           max_width=max_width, issue_width=issue_width, loadable=loadable,
                           sizes=sizes, io_lanes=io_lanes, pipelined=pipelined)
        self.pipelined = pipelined
        self.issue_width = _issue_width(rom, params)
        self.lanes = _io_lanes(rom, params)
        self.sizes = sizes_of(rom, params)
        self.rom = rom
        self.queue_depth = queue_depth
        self.acc_bits = acc_bits
        self.sparse = sparse
        self.memories = memories or MemoryFactory()
        n = rom.pes
        self.pes = n
        self.num_layers = L = rom.num_layers
        self.in_features = rom.in_features
        self.out_features = rom.out_features
        self.geoms = rom_geoms(rom)
        self.has_conv = any(g is not None for g in self.geoms)
        # the layer kinds in this network, each with its front end (`hw.frontend.FRONT_ENDS`)
        self.kinds = sorted({rl.kind for rl in rom.layers})
        if self.sizes is None:
            widths = [rom.layers[0].in_features] + [rl.out_features for rl in rom.layers]
            self.max_width = max(widths + [rl.in_features for rl in rom.layers])
            self.act_words = act_words(rom)  # per PE per bank
            # accumulator rows of a step (every PE's most): a conv layer's sub-position blocks
            self.acc_rows = [max(acc_rows(g, rl.rows[k], n) for k in range(n))
                             for g, rl in zip(self.geoms, rom.layers)]
        else:  # a loadable engine (fc only): what its memories hold, whatever the network
            self.act_words = self.sizes.act_words
            self.max_width = n * self.act_words
            self.acc_rows = [self.sizes.rows] * L  # the most (a layer's are in its table)
        self.col_bits = max(1, self.max_width.bit_length())
        self.row_bits = max(1, max([self.act_words] + self.acc_rows).bit_length())
        self.sub_bits = max([g.sub_bits for g in self.geoms if g is not None], default=0)
        # the memory map is the image's (images.eie.memory_map), so the host and the board read
        # the same one without making an engine
        self._specs = memory_map(rom, params)
        self.images = engine_pe_images(rom, params)
        self.act_specs = [s for s in self._specs if s.name.endswith(".act")]
        self.table_spec = next((s for s in self._specs if s.name == "layers"), None)
        super().__init__(EngineSignature(L, self.lanes))

    def _make_pe(self, img, memories):
        """The PE of `img` (its memories made by `memories`)."""
        return PE(img, col_bits=self.col_bits, row_bits=self.row_bits,
                  queue_depth=self.queue_depth, acc_bits=self.acc_bits, sparse=self.sparse,
                  memories=memories, issue_width=self.issue_width, sizes=self.sizes,
                  sub_bits=self.sub_bits, pipelined=self.pipelined,
                  specs=[s for s in self._specs if s.name.split(".")[0] == f"pe{img.pe}"
                         and not s.name.endswith(".act")])

    @property
    def memory_specs(self) -> list[MemorySpec]:
        """Every memory the engine creates (name, kind, width, depth, init, ports)."""
        return list(self._specs)

    def elaborate(self, platform):
        m = Module()
        c = SimpleNamespace()  # what the stages share
        # a PE is a block the factory may make once and repeat (hw.memory.MemoryFactory.block);
        # the engine uses only its ports
        self.pe_blocks = [self.memories.block(m, f"pe{img.pe}",
                                              lambda mem, img=img: self._make_pe(img, mem))
                          for img in self.images]
        acts = [self.memories(m, s) for s in self.act_specs]
        self._layer_table(m, c)
        c.act_r = [a.read[0] for a in acts]
        c.act_w = [a.write[0] for a in acts]
        self._front_end(m, c)
        self._sequencer(m, c)
        self._drain(m, c)
        return m

    def _layer_table(self, m, c):
        """A loadable engine's per-layer constants, words of its table memory: `c.in_t`,
        `c.grp_t` (indexed by a layer), `c.drain_of(i)` (drain rows of layer i: its own and
        layer i + 2's preload), `c.pre_rows` (PRELOAD0/1) and the input and output words
        `c.in_n`, `c.out_n` (read ports 0..4 look up layer, the drained layer, 0, 1 and L - 1).
        A fixed engine's are constants in the logic (`_tables`)."""
        c.loadable = self.table_spec is not None
        if not c.loadable:
            return
        L = self.num_layers
        table = self.memories(m, self.table_spec)
        layout = data.StructLayout(dict(engine_table_fields(self.sizes, self.pes)))
        views = []
        for j, rp in enumerate(table.read):
            v = Signal(layout, name=f"ltbl{j}")
            m.d.comb += v.as_value().eq(rp.data)
            views.append((rp, v))

        def look(port, i):
            rp, v = views[port]
            m.d.comb += rp.addr.eq(i)
            return v

        c.in_t = _Lookup(lambda i: look(0, i)["in"])
        c.grp_t = _Lookup(lambda i: look(0, i).groups)
        c.drain_of = lambda i: look(1, i).drain
        c.pre_rows = [look(2 + b, b).pre for b in range(2)]
        c.in_n = look(2, 0)["in"]
        c.out_n = look(4, L - 1).out

    def _act_addr(self, bank_bit, word):
        return bank_bit * self.act_words + word

    def _tables(self, c):
        """Per-layer constants (two entries past the last layer: the steps beyond the end)."""
        rom, n = self.rom, self.pes

        def table(vals, width, past=0):
            vals = [int(v) for v in vals] + [past] * 2  # the two steps' layers past the end
            return Array(Const(v, unsigned(width)) for v in vals)

        passes = [g.passes if g is not None else 1 for g in self.geoms]
        c.passes_t = table(passes, bits(max(passes) + 1), past=1)
        c.is_conv = table([g is not None for g in self.geoms], 1)
        c.acc_rows_t = table(self.acc_rows, self.row_bits + 1)
        c.sub_t = table([(1 << g.sub_bits) - 1 if g is not None else 0 for g in self.geoms],
                        max(1, self.sub_bits))
        c.kind_t = table([self.kinds.index(rl.kind) for rl in rom.layers],
                         bits(len(self.kinds)))
        if c.loadable:  # in_t, grp_t from the table memory (`_layer_table`)
            return
        c.in_t = Array(Const(rl.in_features, unsigned(self.col_bits + 1)) for rl in rom.layers)
        c.grp_t = Array(Const(ceil_div(rl.in_features, n), unsigned(self.row_bits + 1))
                        for rl in rom.layers)

    def _front_end(self, m, c):
        """The front ends (one per layer kind) and their broadcast to every PE, with credit:
        every PE must have room."""
        n, pes = self.pes, self.pe_blocks
        c.layer = layer = Signal(range(max(self.num_layers, 2)), name="layer")
        c.bank = Signal(name="bank")  # the step's accumulator bank
        c.first = Signal(name="first")  # the step is its layer's first pass
        self._tables(c)
        # the drain runs beside the FSM: step d's rows out, overlapping the next step
        c.d_active = Signal(name="d_active")
        c.d_layer = Signal.like(layer, name="d_layer")
        c.d_bank = Signal(name="d_bank")
        c.d_cnt = Signal(self.row_bits + 2, name="d_cnt")
        c.d_pl = Signal(range(self.num_layers + 2), name="d_pl")  # the preloaded step's layer
        c.d_rows = Signal(self.row_bits + 1, name="d_rows")
        c.d_word = Signal(self.row_bits + 2, name="d_word")  # a conv drain's output word
        c.d_s = Signal(max(1, self.sub_bits), name="d_s")
        c.d_word_r = Signal.like(c.d_word, name="d_word_r")
        c.d_layer_r = Signal.like(c.d_layer, name="d_layer_r")
        c.d_conv_r = Signal(name="d_conv_r")
        ctx = SimpleNamespace(layer=layer, first=c.first, in_t=c.in_t, grp_t=c.grp_t,
                              base=Signal(self.row_bits + 2, name="src_base"),
                              avail=Signal(self.row_bits + 3, name="avail"))
        m.d.comb += ctx.base.eq(self._act_addr(layer[0], 0))
        fes = []
        for kind in self.kinds:
            extra = {"width": self.issue_width} if self.issue_width > 2 else {}
            fe = front_end(kind, self.issue_width).make(
                pes=n, col_bits=self.col_bits, group_bits=self.row_bits, sparse=self.sparse,
                addr_bits=self.row_bits + 2, geoms=self.geoms, pipelined=self.pipelined,
                **extra)
            m.submodules[f"fe_{kind}" if self.has_conv else "fe"] = fe
            fe.wire(m, ctx)
            fes.append(fe)
        c.fes = fes
        kidx = c.kind_t[layer]
        c.fe_start = Signal(name="fe_start")
        c.fe_done = Signal(name="fe_done_pulse")
        c.fe_last = Signal(name="fe_last")  # with fe_done: the layer's last step
        done = last = 0
        for i, fe in enumerate(fes):
            m.d.comb += fe.start.eq(c.fe_start & (kidx == i))
            done = done | fe.done
            last = last | (fe.done & (fe.last if fe.absolute else 1))
        m.d.comb += [c.fe_done.eq(done), c.fe_last.eq(last)]

        def active(attr):
            """The active front end's member `attr` (a multiplexer by the layer's kind)."""
            if len(fes) == 1:
                return getattr(fes[0], attr)
            sig = Signal.like(getattr(fes[0], attr), name=f"fe_{attr}")
            with m.Switch(kidx):
                for i, fe in enumerate(fes):
                    with m.Case(i):
                        m.d.comb += sig.eq(getattr(fe, attr))
            return sig

        def payload_to(dst, src):
            m.d.comb += [dst.value.eq(src.value), dst.col.eq(src.col)]
            if self.sub_bits:
                m.d.comb += dst.sub.eq(src.sub if hasattr(src, "sub") else 0)

        if self.issue_width == 1:
            all_ready = Signal(name="all_ready")
            r = pes[0].bc.ready
            for pe in pes[1:]:
                r = r & pe.bc.ready
            m.d.comb += all_ready.eq(r)
            for fe in fes:
                m.d.comb += fe.o.ready.eq(all_ready)
            valid = active("o").valid if len(fes) == 1 else None
            if valid is None:
                valid = Signal(name="fe_o_valid")
                with m.Switch(kidx):
                    for i, fe in enumerate(fes):
                        with m.Case(i):
                            m.d.comb += valid.eq(fe.o.valid)
            for pe in pes:
                m.d.comb += pe.bc.valid.eq(valid & all_ready)
                with m.Switch(kidx):
                    for i, fe in enumerate(fes):
                        with m.Case(i):
                            payload_to(pe.bc.payload, fe.o.payload)
        elif not self.pipelined:
            # the room of the fullest PE: columns go to every PE, each takes what it needs
            room = Signal(range(3), name="room")
            one = two = 1
            for pe in pes:
                one, two = one & (pe.room >= 1), two & (pe.room >= 2)
            m.d.comb += room.eq(Mux(two, 2, Mux(one, 1, 0)))
            for fe in fes:
                m.d.comb += fe.room.eq(room)
            for pe in pes:
                with m.Switch(kidx):
                    for i, fe in enumerate(fes):
                        with m.Case(i):
                            for j in range(2):
                                payload_to(pe.bcw[j], fe.o[j])
                            m.d.comb += pe.bcw_valid.eq(fe.o_valid)
        else:
            self._pipelined_broadcast(m, fes, kidx, payload_to)
        fwd_r = Signal(name="fwd_r")
        fc_fes = [fe for fe in fes if not fe.absolute]
        ys = [pe.y for pe in pes]
        if self.issue_width >= 2 and fc_fes:
            # the group the front end reads is the row the drain presents now: next cycle take
            # it from the output stage (y of every PE) instead of the buffer written a cycle late
            # (a fully connected layer's drain only: a conv drain writes a map). Pipelined: the
            # output stage's word registered (y_r, beside each PE), so a cycle later, the row
            # the drain presented a cycle before
            fe = fc_fes[0]
            fwd = Signal(name="fwd")
            if self.pipelined:
                ys = [Signal.like(pe.y, name=f"y_r{k}") for k, pe in enumerate(pes)]
                m.d.sync += [y.eq(pe.y) for y, pe in zip(ys, pes)]
                cond = c.d_active & (c.d_cnt == fe.rd_addr + 1)
            else:
                cond = c.d_active & (c.d_cnt == fe.rd_addr)
            if self.has_conv:
                cond = cond & ~c.is_conv[c.d_layer]
            m.d.comb += [fwd.eq(cond), fe.fwd.eq(fwd)]
            m.d.sync += fwd_r.eq(fwd)
        for k, pe in enumerate(pes):
            m.d.comb += [pe.layer.eq(layer), pe.bank.eq(c.bank)]
            for fe in fes:
                m.d.comb += fe.rd_data[k].eq(Mux(fwd_r, ys[k], c.act_r[k].data.as_signed()))
        c.all_idle = Signal(name="all_idle")
        idle = pes[0].idle
        for pe in pes[1:]:
            idle = idle & pe.idle
        m.d.comb += c.all_idle.eq(idle)
        # default: the active front end reads the source bank (layer % 2)
        rd = Signal(self.row_bits + 2, name="fe_rd")
        if len(fes) == 1:
            fe = fes[0]
            m.d.comb += rd.eq(fe.rd_addr if fe.absolute else self._act_addr(layer[0], fe.rd_addr))
        else:
            with m.Switch(kidx):
                for i, fe in enumerate(fes):
                    with m.Case(i):
                        m.d.comb += rd.eq(fe.rd_addr if fe.absolute
                                          else self._act_addr(layer[0], fe.rd_addr))
        for k in range(n):
            m.d.comb += [c.act_r[k].en.eq(1), c.act_r[k].addr.eq(rd)]
        # groups of the source bank written so far by the drain of the previous layer (a conv
        # layer's drain writes a map, not groups in order: none until it is done)
        big = (1 << len(ctx.avail)) - 1
        with m.If(c.d_active):
            avail = Mux(c.d_cnt > 0, c.d_cnt - 1, 0)
            if self.has_conv:
                avail = Mux(c.is_conv[c.d_layer], 0, avail)
            m.d.comb += ctx.avail.eq(avail)
        with m.Else():
            m.d.comb += ctx.avail.eq(big)

    def _pipelined_broadcast(self, m, fes, kidx, payload_to):
        """The pipelined engine's broadcast: the front end's lanes into a register (the PEs take
        them a cycle later) and the credit from registers. Each PE's `room` (free slots, up to
        twice the lanes) counts the columns in that register; the engine keeps, for 1..2W (W
        the lanes), "every PE has that many" a cycle late, and takes off it what the front end
        sent in that cycle (the register now): free slots only grow otherwise, so what is sent
        always finds its slot. Four lanes into queues of 16 or more (`full_credit`) take off
        four whatever was sent: the credit is then the registers' alone."""
        pes = self.pe_blocks
        w = self.issue_width
        n_ge = 2 * w  # room up to the lanes plus what the last cycle may have sent
        ge = Signal(n_ge, name="room_ge")  # bit k-1: every PE had room >= k last cycle
        for k in range(1, n_ge + 1):
            all_k = 1
            for pe in pes:
                all_k = all_k & (pe.room >= k)
            m.d.sync += ge[k - 1].eq(all_k)
        lanes = Signal.like(pes[0].bcw, name="bc_r")
        valid = Signal(w, name="bc_valid_r")
        lane_d = Signal.like(lanes, name="bc_d")
        valid_d = Signal(w, name="bc_valid_d")
        with m.Switch(kidx):
            for i, fe in enumerate(fes):
                with m.Case(i):
                    for j in range(w):
                        payload_to(lane_d[j], fe.o[j])
                    m.d.comb += valid_d.eq(fe.o_valid)
        m.d.sync += [lanes.eq(lane_d), valid.eq(valid_d)]
        room = Signal(range(w + 1), name="room")
        if full_credit(w, self.queue_depth):
            # four lanes into deep queues: the credit from the registers alone, as though the
            # last cycle sent all four ("every PE had room >= 4 + r"), not what it did send:
            # the count of the last cycle's lanes and the choice by it were the first half of
            # the routed four-wide design's critical loop (lanes -> count -> room -> the front
            # end's masks, 20.4 ns across the chip). It holds a column back only when a PE is
            # within four slots of full (`images.eie.full_credit`)
            r = Const(0, range(w + 1))
            for k in range(1, w + 1):
                r = Mux(ge[w + k - 1], k, r)
            m.d.comb += room.eq(r)
        else:
            sent = Signal(range(w + 1), name="bc_sent")  # columns sent last cycle (the register)
            total = valid[0]
            for j in range(1, w):
                total = total + valid[j]
            m.d.comb += sent.eq(total)
            with m.Switch(sent):
                for s_ in range(w + 1):
                    with m.Case(s_):
                        # the most r <= w with every PE's room >= sent + r a cycle ago
                        r = Mux(ge[s_], 1, 0)
                        for k in range(2, w + 1):
                            r = Mux(ge[s_ + k - 1], k, r)
                        m.d.comb += room.eq(r)
        for fe in fes:
            m.d.comb += fe.room.eq(room)
        for pe in pes:
            for j in range(w):
                payload_to(pe.bcw[j], lanes[j])
            m.d.comb += pe.bcw_valid.eq(valid)

    def _step_after(self, c, layer, p):
        """(layer, pass) of the step after (layer, pass p)."""
        more = p + 1 < c.passes_t[layer]
        return Mux(more, layer, layer + 1), Mux(more, p + 1, 0)

    def _sequencer(self, m, c):
        """PRELOAD0 -> PRELOAD1 -> LOAD -> (START -> COMPUTE) per step -> LASTDRAIN -> OUTPUT."""
        n, L, layer, pes = self.pes, self.num_layers, c.layer, self.pe_blocks
        # the layer of steps 0 and 1 (bank 0 and bank 1 preloaded before an inference)
        first_layers = [0, 0 if (self.geoms[0] is not None and self.geoms[0].passes > 1) else 1]
        if c.loadable:
            pre_rows, cnt_limit = c.pre_rows, self.act_words
            sizes = dict(in_n=c.in_n, out_n=c.out_n, max_words=self.max_width)
        else:
            pre_rows = [max(1, (self.acc_rows + [0, 0])[first_layers[b]]) for b in range(2)]
            cnt_limit, sizes = max(self.act_words, max(pre_rows)), {}
        cyc = Signal(32, name="cyc")
        lc = Signal(data.ArrayLayout(32, L), name="lc")
        last = self.geoms[-1]
        io = ActIO(m, self, act_r=c.act_r, act_w=c.act_w, cyc=cyc, lc=lc,
                   cnt_limit=cnt_limit, lanes=self.lanes, **sizes,
                   out_block=last.passes if last is not None else 0)
        cnt, sel, word = io.cnt, io.sel, io.word
        fe_done = Signal(name="fe_done")
        c.pcnt = pcnt = Signal(range(max(g.passes if g else 1 for g in self.geoms) + 2),
                               name="pass")
        c.step_last = Signal(name="step_last")  # the layer's last step

        def loaded():
            m.d.sync += [layer.eq(0), cnt.eq(0), fe_done.eq(0), pcnt.eq(0), c.first.eq(1),
                         c.bank.eq(0)]
            m.next = "START"

        def delivered():
            m.d.sync += [self.cycles.eq(cyc + 1), self.layer_cycles.eq(lc)]
            m.next = "PRELOAD0"

        with m.FSM(name="seq"):
            for b in range(2):
                with m.State(f"PRELOAD{b}"):
                    # after reset / between inferences: bank b gets the biases of step b
                    for pe in pes:
                        m.d.comb += [pe.preload_valid.eq(cnt < pre_rows[b]), pe.drain_row.eq(cnt),
                                     pe.drain_layer.eq(b), pe.drain_bank.eq(b),
                                     pe.preload_layer.eq(first_layers[b])]
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == pre_rows[b]):  # the last write lands this cycle
                        m.d.sync += [cnt.eq(0), sel.eq(0), word.eq(0)]
                        m.next = "PRELOAD1" if b == 0 else "LOAD"
            with m.State("LOAD"):
                io.load(lambda w: self._act_addr(0, w), loaded)
            with m.State("START"):
                io.count_layer(layer)
                wait = Const(0, 1)
                if self.has_conv:
                    # a conv layer's first pass reads the map the previous drain still writes
                    wait = c.is_conv[layer] & c.first & c.d_active
                with m.If(~wait):
                    m.d.comb += c.fe_start.eq(1)
                    m.next = "COMPUTE"
            with m.State("COMPUTE"):
                io.count_layer(layer)
                with m.If(c.fe_done):
                    m.d.sync += [fe_done.eq(1), c.step_last.eq(c.fe_last)]
                with m.If(fe_done & c.all_idle & ~c.d_active):
                    # step done: drain it while the next step computes in the other bank
                    self._drain_start(m, c)
                    m.d.sync += [fe_done.eq(0), c.bank.eq(~c.bank)]
                    with m.If(~c.step_last):
                        m.d.sync += [pcnt.eq(pcnt + 1), c.first.eq(0)]
                        m.next = "START"
                    with m.Elif(layer == L - 1):
                        m.next = "LASTDRAIN"
                    with m.Else():
                        m.d.sync += [layer.eq(layer + 1), pcnt.eq(0), c.first.eq(1)]
                        m.next = "START"
            with m.State("LASTDRAIN"):
                io.count_layer(layer)
                with m.If(~c.d_active):
                    m.d.sync += [sel.eq(0), word.eq(0), io.o_valid.eq(0), cnt.eq(0),
                                 *io.reset_out()]
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                io.output(lambda w: self._act_addr(L % 2, w), delivered)

    def _drain_start(self, m, c):
        """Drain the step just computed: its layer, bank and pass; the step two ahead (which
        computes in the same bank) preloaded meanwhile."""
        layer, p = c.layer, c.pcnt
        l1, p1 = self._step_after(c, layer, p)
        l2 = Mux(p1 + 1 < c.passes_t[l1], l1, l1 + 1)  # the layer of the step after that
        rows = Signal(self.row_bits + 1, name="d_rows_next")
        if c.loadable:  # fc only: l2 = layer + 2, the max of the two in the table
            m.d.comb += rows.eq(c.drain_of(layer))
        else:
            r_a, r_b = c.acc_rows_t[layer], c.acc_rows_t[l2]
            m.d.comb += rows.eq(Mux(r_a > r_b, r_a, r_b))
        m.d.sync += [c.d_active.eq(1), c.d_layer.eq(layer), c.d_bank.eq(c.bank), c.d_cnt.eq(0),
                     c.d_pl.eq(l2), c.d_rows.eq(rows), c.d_word.eq(p), c.d_s.eq(0)]

    def _drain(self, m, c):
        """One accumulator row of every PE per cycle into the destination bank of d_layer: a
        fully connected layer's row r at word r, a conv layer's output row r of pass p at
        word r * passes + p (CHAN), with its sub-positions' maximum."""
        n, L = self.pes, self.num_layers
        d_cnt, d_layer = c.d_cnt, c.d_layer
        with m.If(c.d_active):
            rows = c.d_rows
            for k, pe in enumerate(self.pe_blocks):
                m.d.comb += [pe.drain_valid.eq(d_cnt < rows), pe.preload_valid.eq(d_cnt < rows),
                             pe.drain_row.eq(d_cnt), pe.drain_layer.eq(d_layer),
                             pe.drain_bank.eq(c.d_bank), pe.preload_layer.eq(c.d_pl),
                             c.act_w[k].data.eq(pe.y), c.act_w[k].en.eq(pe.y_valid)]
                fc_addr = self._act_addr(~d_layer[0], pe.y_row)
                if self.has_conv:
                    m.d.comb += c.act_w[k].addr.eq(
                        Mux(c.d_conv_r, self._act_addr(~c.d_layer_r[0], c.d_word_r), fc_addr))
                else:
                    m.d.comb += c.act_w[k].addr.eq(fc_addr)
            m.d.sync += d_cnt.eq(d_cnt + 1)
            with m.If(d_cnt == rows):  # the last row's output and preload land this cycle
                m.d.sync += c.d_active.eq(0)
            # a conv layer's output word: r * passes + p, the next r after the sub-positions
            with m.If(c.d_s == c.sub_t[d_layer]):
                m.d.sync += [c.d_s.eq(0), c.d_word.eq(c.d_word + c.passes_t[d_layer])]
            with m.Else():
                m.d.sync += c.d_s.eq(c.d_s + 1)
        # aligned with the PEs' output (a cycle after the read)
        m.d.sync += [c.d_word_r.eq(c.d_word), c.d_layer_r.eq(d_layer),
                     c.d_conv_r.eq(c.is_conv[d_layer])]
