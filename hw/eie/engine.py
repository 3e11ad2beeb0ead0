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

A loadable engine (`loadable=True`, `images.eie.EieParams`) has memories of given sizes and
reads every per-network constant (each layer's in_features, groups, drain and preload rows,
out_features here; each PE's rows, bases, shift and ReLU) from table memories loaded with the
weights, so its logic depends on its shape alone and every network that fits runs on one
Verilog. `io_lanes` words move a beat on i_act and o_act (LOAD and OUTPUT take in_0 / lanes and
out / lanes cycles).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring

from images.eie import (EieParams, EieSizes, RomImage, engine_pe_images, engine_table_fields,
                        image_sizes, memory_map, sizes_of)
from images.eie import io_lanes as _io_lanes
from images.eie import issue_width as _issue_width

from ..blocks import (ActIO, EngineConfigError, EngineSignature, ceil_div, check_fits,
                      check_queue_depth)
from ..frontend import front_end
from ..memory import MemoryFactory, MemorySpec
from .pe import PE

__all__ = ["Engine"]


def _sizes(sizes):
    """`sizes` as EieSizes (`EieParams.as_dict` gives a dict)."""
    return EieSizes(**sizes) if isinstance(sizes, dict) else sizes


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
    constants in table memories, memories of `sizes`: module docstring); io_lanes (words a
    beat on i_act and o_act, a divisor of the PEs; None: one per PE).
    """

    image_type = RomImage

    @classmethod
    def check(cls, rom: RomImage, *, queue_depth=8, acc_bits=32, sparse=True,
              max_width: int | None = None, issue_width: int | None = None,
              loadable: bool = False, sizes: EieSizes | None = None,
              io_lanes: int | None = 1) -> None:
        """EngineConfigError naming what does not fit, before anything is made."""
        if not isinstance(rom, RomImage):
            raise TypeError(f"the EIE engine is built from a RomImage, not "
                            f"{type(rom).__name__}")
        check_queue_depth(queue_depth)
        check_fits(rom, acc_bits=acc_bits, max_width=max_width)
        if issue_width not in (None, 1, 2):
            raise EngineConfigError(f"issue width must be 1 or 2, not {issue_width!r}")
        if io_lanes is not None and (isinstance(io_lanes, bool) or not isinstance(io_lanes, int)
                                     or io_lanes < 1 or rom.pes % io_lanes):
            raise EngineConfigError(f"io_lanes must divide the {rom.pes} PEs, not {io_lanes!r}")
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
                 sizes: EieSizes | None = None, io_lanes: int | None = 1):
        sizes = _sizes(sizes)
        self.check(rom, queue_depth=queue_depth, acc_bits=acc_bits, sparse=sparse,
                   max_width=max_width, issue_width=issue_width, loadable=loadable,
                   sizes=sizes, io_lanes=io_lanes)
        params = EieParams(queue_depth=queue_depth, acc_bits=acc_bits, sparse=sparse,
                           max_width=max_width, issue_width=issue_width, loadable=loadable,
                           sizes=sizes, io_lanes=io_lanes)
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
        self.in_features = rom.layers[0].in_features
        self.out_features = rom.layers[-1].out_features
        if self.sizes is None:
            widths = [rom.layers[0].in_features] + [rl.out_features for rl in rom.layers]
            self.act_words = max(ceil_div(w, n) for w in widths)  # per PE per bank
            self.max_width = max(widths)
        else:  # a loadable engine: what its memories hold, whatever the network
            self.act_words = self.sizes.act_words
            self.max_width = n * self.act_words
        self.col_bits = max(1, self.max_width.bit_length())
        self.row_bits = max(1, self.act_words.bit_length())
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
        """The engine's per-layer constants as functions of a layer index (`c.in_of`,
        `c.groups_of`, `c.drain_of`, `c.pre_of`) and the input and output words (`c.in_n`,
        `c.out_n`): constants in the logic, or the words of the table memory of a loadable
        engine (read ports 0..4 look up layer, the drained layer, 0, 1 and L - 1)."""
        rom, n, L = self.rom, self.pes, self.num_layers
        if self.table_spec is None:
            outs = [rl.out_features for rl in rom.layers] + [0, 0]
            in_t = Array(Const(rl.in_features, unsigned(self.col_bits + 1)) for rl in rom.layers)
            grp_t = Array(Const(ceil_div(rl.in_features, n), unsigned(self.row_bits + 1))
                          for rl in rom.layers)
            drain_t = Array(
                Const(max(ceil_div(outs[i], n), ceil_div(outs[i + 2], n)),
                      unsigned(self.row_bits + 1))
                for i in range(L))
            pre = [max(1, ceil_div(outs[b], n)) for b in range(2)]
            c.in_of, c.groups_of, c.drain_of = (lambda i: in_t[i]), (lambda i: grp_t[i]), \
                (lambda i: drain_t[i])
            c.pre_of = lambda b: pre[b]
            c.in_n, c.out_n = self.in_features, self.out_features
            return
        table = self.memories(m, self.table_spec)
        layout = data.StructLayout(dict(engine_table_fields(self.sizes, n)))
        views = []
        for j, rp in enumerate(table.read):
            v = Signal(layout, name=f"ltbl{j}")
            m.d.comb += v.as_value().eq(rp.data)
            views.append((rp, v))

        def look(port, i):
            rp, v = views[port]
            m.d.comb += rp.addr.eq(i)
            return v

        c.in_of = lambda i: look(0, i)["in"]
        c.groups_of = lambda i: look(0, i).groups
        c.drain_of = lambda i: look(1, i).drain
        c.pre_of = lambda b: look(2 + b, b).pre
        c.in_n = look(2, 0)["in"]
        c.out_n = look(4, L - 1).out

    def _act_addr(self, bank_bit, word):
        return bank_bit * self.act_words + word

    def _front_end(self, m, c):
        """Front end and its broadcast to every PE, with credit: every PE must have room."""
        rom, n, pes = self.rom, self.pes, self.pe_blocks
        # every layer is of a kind the engine runs (check_fits): fc, whose front end this is
        fe_cls = front_end(rom.layers[0].kind, self.issue_width)
        m.submodules.fe = c.fe = fe = fe_cls(pes=n, col_bits=self.col_bits,
                                              group_bits=self.row_bits, sparse=self.sparse)
        c.layer = layer = Signal(range(max(self.num_layers, 2)), name="layer")
        m.d.comb += [fe.in_features.eq(c.in_of(layer)), fe.groups.eq(c.groups_of(layer))]
        if self.issue_width == 1:
            all_ready = Signal(name="all_ready")
            r = pes[0].bc.ready
            for pe in pes[1:]:
                r = r & pe.bc.ready
            m.d.comb += all_ready.eq(r)
            m.d.comb += fe.o.ready.eq(all_ready)
            for pe in pes:
                m.d.comb += [pe.bc.valid.eq(fe.o.valid & all_ready),
                             pe.bc.payload.eq(fe.o.payload)]
        else:
            # the room of the fullest PE: columns go to every PE, each takes what it needs
            room = Signal(range(3), name="room")
            one = two = 1
            for pe in pes:
                one, two = one & (pe.room >= 1), two & (pe.room >= 2)
            m.d.comb += [room.eq(Mux(two, 2, Mux(one, 1, 0))), fe.room.eq(room)]
            for pe in pes:
                m.d.comb += [pe.bcw.eq(fe.o), pe.bcw_valid.eq(fe.o_valid)]
        # the drain runs beside the FSM: layer d_layer's rows out, overlapping d_layer + 1
        c.d_active = Signal(name="d_active")
        c.d_layer = Signal.like(layer, name="d_layer")
        c.d_cnt = Signal(self.row_bits + 2, name="d_cnt")
        fwd_r = Signal(name="fwd_r")
        if self.issue_width == 2:
            # the group the front end reads is the row the drain presents now: next cycle take
            # it from the output stage (y of every PE) instead of the buffer written a cycle late
            fwd = Signal(name="fwd")
            m.d.comb += [fwd.eq(c.d_active & (c.d_cnt == fe.rd_addr)), fe.fwd.eq(fwd)]
            m.d.sync += fwd_r.eq(fwd)
        for k, pe in enumerate(pes):
            m.d.comb += [
                pe.layer.eq(layer),
                fe.rd_data[k].eq(Mux(fwd_r, pe.y, c.act_r[k].data.as_signed())),
            ]
        c.all_idle = Signal(name="all_idle")
        idle = pes[0].idle
        for pe in pes[1:]:
            idle = idle & pe.idle
        m.d.comb += c.all_idle.eq(idle)
        for k in range(n):  # default: the front end reads the source bank (layer % 2)
            m.d.comb += [c.act_r[k].en.eq(1),
                         c.act_r[k].addr.eq(self._act_addr(layer[0], fe.rd_addr))]
        # groups of the source bank written so far by the drain of the previous layer
        big = (1 << len(fe.avail)) - 1
        with m.If(c.d_active):
            m.d.comb += fe.avail.eq(Mux(c.d_cnt > 0, c.d_cnt - 1, 0))
        with m.Else():
            m.d.comb += fe.avail.eq(big)

    def _sequencer(self, m, c):
        """PRELOAD0 -> PRELOAD1 -> LOAD -> (START -> COMPUTE) per layer -> LASTDRAIN -> OUTPUT."""
        L, layer, fe, pes = self.num_layers, c.layer, c.fe, self.pe_blocks
        pre_rows = [c.pre_of(b) for b in range(2)]
        cyc = Signal(32, name="cyc")
        lc = Signal(data.ArrayLayout(32, L), name="lc")
        io = ActIO(m, self, act_r=c.act_r, act_w=c.act_w, cyc=cyc, lc=lc,
                   cnt_limit=self.act_words, lanes=self.lanes, in_n=c.in_n, out_n=c.out_n,
                   max_words=self.max_width)
        cnt, sel, word = io.cnt, io.sel, io.word
        fe_done = Signal(name="fe_done")

        def loaded():
            m.d.sync += [layer.eq(0), cnt.eq(0), fe_done.eq(0)]
            m.next = "START"

        def delivered():
            m.d.sync += [self.cycles.eq(cyc + 1), self.layer_cycles.eq(lc)]
            m.next = "PRELOAD0"

        with m.FSM(name="seq"):
            for b in range(2):
                with m.State(f"PRELOAD{b}"):
                    # after reset / between inferences: bank b gets the biases of layer b
                    for pe in pes:
                        m.d.comb += [pe.preload_valid.eq(cnt < pre_rows[b]), pe.drain_row.eq(cnt),
                                     pe.drain_layer.eq(b), pe.preload_layer.eq(b)]
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == pre_rows[b]):  # the last write lands this cycle
                        m.d.sync += [cnt.eq(0), sel.eq(0), word.eq(0)]
                        m.next = "PRELOAD1" if b == 0 else "LOAD"
            with m.State("LOAD"):
                io.load(lambda w: self._act_addr(0, w), loaded)
            with m.State("START"):
                m.d.comb += fe.start.eq(1)
                io.count_layer(layer)
                m.next = "COMPUTE"
            with m.State("COMPUTE"):
                io.count_layer(layer)
                with m.If(fe.done):
                    m.d.sync += fe_done.eq(1)
                with m.If(fe_done & c.all_idle & ~c.d_active):
                    # layer done: drain it while the next layer computes in the other bank
                    m.d.sync += [fe_done.eq(0), c.d_active.eq(1), c.d_layer.eq(layer),
                                 c.d_cnt.eq(0)]
                    with m.If(layer == L - 1):
                        m.next = "LASTDRAIN"
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        m.next = "START"
            with m.State("LASTDRAIN"):
                io.count_layer(layer)
                with m.If(~c.d_active):
                    m.d.sync += [sel.eq(0), word.eq(0), io.o_valid.eq(0), cnt.eq(0)]
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                io.output(lambda w: self._act_addr(L % 2, w), delivered)

    def _drain(self, m, c):
        """One row of every PE per cycle into the destination bank of d_layer."""
        # drain of layer i: its rows out, the rows of layer i + 2 preloaded (same bank)
        d_cnt, d_layer = c.d_cnt, c.d_layer
        with m.If(c.d_active):
            rows = c.drain_of(d_layer)
            for k, pe in enumerate(self.pe_blocks):
                m.d.comb += [pe.drain_valid.eq(d_cnt < rows), pe.preload_valid.eq(d_cnt < rows),
                             pe.drain_row.eq(d_cnt), pe.drain_layer.eq(d_layer),
                             pe.preload_layer.eq(d_layer + 2),
                             c.act_w[k].addr.eq(self._act_addr(~d_layer[0], pe.y_row)),
                             c.act_w[k].data.eq(pe.y), c.act_w[k].en.eq(pe.y_valid)]
            m.d.sync += d_cnt.eq(d_cnt + 1)
            with m.If(d_cnt == rows):  # the last row's output and preload land this cycle
                m.d.sync += c.d_active.eq(0)
