"""The lockstep engine: N PEs on one column at a time, so every memory has one address.

This is the engine the iCE40UP5K board uses for 8 PEs (see docs/lockstep.md).
The queue-based EIE engine (`hw.eie`) lets every PE run on its own, which needs a memory port
per PE for entries, pointers, biases, codebook, accumulators and activations: 131 block RAMs and
~8,200 logic cells for 8 PEs, against 30 and 5,280 on the UP5K. Here:

* All PEs work on the same column at the same time. The image (`images.lockstep`) gives every
  column L(c) = max over PEs of its entry count "slots" and pads the others, so one slot address
  serves every PE: the entries of PEs 2j and 2j+1 share the 16-bit words of `lane{j}` (on the
  board: the four SPRAMs). Padding, fillers and pruned weights (v = 0) never reach an
  accumulator; they cost their slot cycle, which is the price of lockstep.
* One pointer pair per column (`colptr_even`, `colptr_odd`: ptr[g] and ptr[g + 1] in one cycle),
  shared by all PEs; empty columns (L = 0) are dropped at the pointer stage.
* Zero activations are skipped by the EIE front end (`hw.frontend.FrontEnd`, groups of N
  columns read from the PEs' activation RAMs, one non-zero broadcast per cycle).
* Per PE one accumulator RAM (`pe{k}.acc`: rows 0..R-1 accumulate, the biases of every layer
  after them) and one activation RAM (`pe{k}.act`, two banks: in each the input bottom up,
  every layer's outputs top down over it, the drain runs after the layer's compute has
  finished). Codebooks are constants in logic.

Per inference: LOAD (in_0 words from `i_act` into the free one of two input banks, beside
the rest: input k + 1 loads while inference k computes) -> per layer PRELOAD (biases copied
into the accumulator rows through the MAC pipeline, product 0; layer 0's during the previous
inference's OUTPUT and after it) -> COMPUTE (front end -> pointer stage -> queue -> slot
sequencer -> PEs) -> DRAIN (one output stage per `drain_share` PEs, pipelined, into the
activation RAMs) -> OUTPUT (out_{L-1} words to `o_act` in row order, valid/ready). The phases
overlap where the accumulator's one read port allows (docs/lockstep.md, "Phases"): the drain
reads its first row in the cycle after the layer's last write, the next PRELOAD reads its first
bias right after the last drained word (the output stages finish meanwhile, with the drained
layer's rule), the front end starts three cycles before PRELOAD's last bias row and reads each
group once the drain has written it, OUTPUT as soon as its first words are written; with
drain_share 2 layer 1's PRELOAD and COMPUTE run under layer 0's DRAIN (`_bg_drain`; in a
one-layer network its DRAIN puts the next inference's biases into the rows instead). The
loader refills a bank's input words below the layers' outputs once layer 0 has read them, and
keeps the first and last group with a non-zero input word, between which layer 0 reads.

Pipeline per slot (stage prefixes as in the signal names):

    s_  sequencer: slot address start..end-1 to every lane RAM, first-of-column flag
    e_  entry (v, z) of each PE from its lane: row = (first ? 0 : row + 1) + z; weight =
        codebook[layer][v] (logic); accumulator read at row
    m_  product weight x activation (16 x 16 -> 32 bits, the DSP); acc + product wrapped to
        acc_bits, written back when v != 0. When a PE's e_ slot hits the row its m_ slot
        writes in the same cycle (the read misses that write; rows rise inside a column, so
        only across a column boundary), the next cycle is a hold: nothing moves, nothing is
        written, the m_ slot's row is read again. One cycle per such hit instead of a 32-bit
        bypass register and multiplexer per PE (about 75 logic cells each on the iCE40)

Conv layers (qnet version 2, docs/lockstep.md "Conv layers"): the conv front end
(`hw.convfe.ConvFrontEnd`) beside the fc one, the sub-position of the pooling window in the low
bits of the accumulator address, per pass PRELOAD -> COMPUTE -> a drain that keeps the maximum
of a row's sub-positions (max pooling) and writes the pooled word into the map region the layer
does not read, and a bypass instead of the hold. None of it is made for a network without conv
layers (its RTLIL is what it was).

Ports and counters are those of every engine (`hw.blocks.EngineSignature`: `i_act`, `o_act`,
`cycles`, `layer_cycles`, `busy`); `layer_cycles[i]` counts layer i's PRELOAD (not layer 0's),
COMPUTE and DRAIN cycles.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring

from images.conv import ConvGeom
from images.lockstep import (DRAIN_SHARES, LockstepImage, LockstepParams, act_bank_bits,
                             act_words, col_table, engine_col_ptr, layer1_under_drain,
                             low_words, map_bases, memory_map)

from .blocks import (BankedIO, EngineConfigError, EngineSignature, bits, ceil_div, check_fits,
                     check_queue_depth, round_shift, saturate, slot_sequencer)
from .convfe import OneMapConvFrontEnd
from .frontend import front_end
from .memory import MemoryFactory, MemorySpec
from .queue import ActQueue


# the most pass-column flags the loader keeps for skipping layer 0's all-zero
# passes (`_zero_passes`; a larger first layer is walked in full)
MAX_PASS_FLAGS = 32


class _OneLane:
    """The engine as `hw.blocks.BankedIO` sees it with `one_map`: one activation RAM, one
    value a word (the input loaded and the outputs read in order)."""

    pes = 1

    def __init__(self, eng):
        self._eng = eng

    def __getattr__(self, name):
        return getattr(self._eng, name)


class LockstepEngine(wiring.Component):
    """The lockstep engine of a `LockstepImage`.

    Ports (`hw.blocks.EngineSignature`): `i_act` (in: input words, valid/ready; the next input
    loads while the current one computes), `o_act` (out: output words), `cycles`,
    `layer_cycles` (latched with an inference's last output word, valid until the next one's:
    `hw.blocks.BankedIO`), `busy`.

    Parameters: img, the lockstep image (N = img.pes PEs); acc_bits, accumulator width
    (17..64); queue_depth, columns queued between the pointer stage and the slot sequencer
    (1..64); drain_share, PEs per output stage (1, 2, 4, 8 or 16: fewer stages, longer drain);
    memories, the `MemoryFactory` that makes every memory (`memory_specs`); max_width, the
    largest layer width the activation RAMs must hold, checked up front; overlap, layer 1's
    PRELOAD and COMPUTE under layer 0's DRAIN where the network allows it (`bg_drain`).
    """

    image_type = LockstepImage

    @classmethod
    def check(cls, img: LockstepImage, *, acc_bits: int = 32, queue_depth: int = 2,
              drain_share: int = 1, max_width: int | None = None, overlap: bool = True) -> None:
        """EngineConfigError naming what does not fit, before anything is made."""
        if not isinstance(img, LockstepImage):
            raise TypeError(f"the lockstep engine is built from a LockstepImage, not "
                            f"{type(img).__name__}")
        if drain_share not in DRAIN_SHARES:
            raise EngineConfigError(
                f"drain_share must be 1, 2, 4, 8 or 16, not {drain_share!r}")
        check_queue_depth(queue_depth)
        if not isinstance(overlap, bool):
            raise EngineConfigError(f"overlap must be True or False, not {overlap!r}")
        check_fits(img, acc_bits=acc_bits, max_width=max_width)  # same limits as the EIE's

    def __init__(self, img: LockstepImage, *, acc_bits: int = 32, queue_depth: int = 2,
                 drain_share: int = 1, memories: MemoryFactory | None = None,
                 max_width: int | None = None, overlap: bool = True):
        self.check(img, acc_bits=acc_bits, queue_depth=queue_depth, drain_share=drain_share,
                   max_width=max_width, overlap=overlap)
        self.img = img
        self.acc_bits = acc_bits
        self.queue_depth = queue_depth
        self.drain_share = drain_share  # PEs per output stage: fewer stages, longer drain
        self.memories = memories or MemoryFactory()
        n = self.pes = img.pes
        self.num_layers = L = img.num_layers
        self.in_features = img.in_features
        self.out_features = img.out_features
        widths = [img.in_features] + [ll.out_features for ll in img.layers]
        # conv layers (docs/lockstep.md, "Conv layers"): the conv front end, sub-positions in
        # the accumulator address, the pooling drain and two map regions; none of it is made
        # for a network without conv layers
        self.has_conv = img.has_conv
        # the board's layout of a CNN (`images.lockstep`, docs/lockstep.md "On the board"):
        # every map in one RAM, one value a word, the drain's words written one a cycle
        self.one_map = img.one_map
        self.lanes_per_word = img.map_lanes  # values one map read gives the front ends
        self.geoms = [ll.conv_geom for ll in img.layers]
        self.sub_bits = img.sub_bits
        if self.has_conv:
            widths += [ll.in_features for ll in img.layers]  # physical columns
        self.max_width = max(widths)
        self.act_words = act_words(img) if self.has_conv else max(ceil_div(w, n) for w in widths)
        self.max_rows = max(img.acc_rows(ll) for ll in img.layers)
        self.col_bits = bits(self.max_width)
        self.row_bits = bits(max(self.act_words, self.max_rows) if self.has_conv
                             else self.act_words)
        self.ptr_bits = bits(img.num_slots)
        # layer 0's accumulator rows from keep0 up are no later layer's: with drain_share 2
        # the next inference's biases go into them during layer 0's DRAIN, in the read port's
        # cycles the second member of each output stage leaves free (`_output_stages`), so
        # OUTPUT and PRE0 preload only rows 0..keep0-1
        self.keep0 = max([1] + [ll.rows_per_pe for ll in img.layers[1:]])
        # with drain_share 2 and fc layers only, layer 1 computes under layer 0's DRAIN
        # instead (`_bg_drain`): the drain reads a row every other cycle and layer 1's
        # PRELOAD and COMPUTE take the read port in the cycles between (where layer 1 has no
        # more rows than layer 0: its rows are drained before its biases go in)
        # (`overlap` False: never, the engine as it was before, about 100 logic cells fewer)
        self.overlap = overlap
        self.bg_drain = layer1_under_drain(img, drain_share, overlap)
        self.early0 = (not img.has_conv and drain_share == 2 and not self.bg_drain
                       and self.keep0 < img.layers[0].rows_per_pe)
        self._make_specs()
        super().__init__(EngineSignature(L))

    def _make_specs(self):
        # the memory map is the image's (images.lockstep.memory_map), so the host and the
        # board's SPRAM plan read the same one without making an engine
        specs = memory_map(self.img, LockstepParams(acc_bits=self.acc_bits))
        self.lane_specs = [s for s in specs if s.name.startswith("lane")]
        self.ptr_specs = [s for s in specs if s.name.startswith("colptr_")]
        self.acc_specs = [s for s in specs if s.name.endswith(".acc")]
        self.act_specs = [s for s in specs if s.name.endswith(".act") or s.name == "map"]
        self.cb_specs = [s for s in specs if s.name.endswith(".codebook")]  # (one_map)
        self.ct_specs = [s for s in specs if s.name == "coltab"]  # (one_map, column lists)
        assert len(specs) == sum(map(len, (self.lane_specs, self.ptr_specs, self.acc_specs,
                                           self.act_specs, self.cb_specs, self.ct_specs)))
        assert [s.name for s in self.ptr_specs] == ["colptr_even", "colptr_odd"]

    @property
    def memory_specs(self) -> list[MemorySpec]:
        return (self.lane_specs + self.ptr_specs + self.acc_specs + self.act_specs
                + self.cb_specs + self.ct_specs)

    def elaborate(self, platform):
        m = Module()
        c = self.probe = SimpleNamespace()  # what the stages share (and `bench` probes)
        self._memories(m, c)
        self._tables(c)
        self._io(m, c)
        self._front_end(m, c)
        self._pointer_stage(m, c)
        self._slot_stage(m, c)
        self._control(m, c)
        self._pes(m, c)
        self._output_stages(m, c)
        self._sequencer(m, c)
        # drain writes: PE k's row j is column k + N*j of the next layer: its own RAM, word j
        # of the bank being computed (the loader has PE k's write port the other cycles)
        w_addr = c.d3_w if self.has_conv else c.d3_word  # fc: outputs top down
        if self.one_map:  # one word a cycle (`_word_writer`)
            with m.If(c.w_en):
                m.d.comb += [c.act_w[0].addr.eq(c.io.addr(c.io.cb, c.w_word)),
                             c.act_w[0].data.eq(c.w_data), c.act_w[0].en.eq(1)]
            return m
        for k in range(self.pes):
            with m.If(c.y_en[k]):
                m.d.comb += [c.act_w[k].addr.eq(c.io.addr(c.io.cb, w_addr)),
                             c.act_w[k].data.eq(c.ys[k]), c.act_w[k].en.eq(1)]
        return m

    def _memories(self, m, c):
        c.lanes = [self.memories(m, s).read[0] for s in self.lane_specs]
        c.pev, c.pod = (self.memories(m, s).read[0] for s in self.ptr_specs)
        accs = [self.memories(m, s) for s in self.acc_specs]
        c.acc_r = [a.read[0] for a in accs]
        c.acc_w = [a.write[0] for a in accs]
        acts = [self.memories(m, s) for s in self.act_specs]
        c.act_r = [a.read[0] for a in acts]
        c.act_w = [a.write[0] for a in acts]
        c.cb_r = [self.memories(m, s).read[0] for s in self.cb_specs]
        c.ct = [self.memories(m, s).read[0] for s in self.ct_specs]
        c.ct = c.ct[0] if c.ct else None

    def _tables(self, c):
        img, n, L, R = self.img, self.pes, self.num_layers, self.max_rows
        c.layer = Signal(range(max(L, 2)), name="layer")

        def table(values, width):
            vals = [int(v) for v in values]
            return Array(Const(v, unsigned(width)) for v in vals + [0] * (max(L, 2) - len(vals)))

        # the columns the front end reads: after a layer with dead units trimmed
        # (`images.lockstep`), only its computed rows
        c.in_t = table([ll.engine_in for ll in img.layers], self.col_bits)
        c.grp_t = table([ceil_div(ll.engine_in, self.lanes_per_word) for ll in img.layers],
                        self.row_bits + 1)
        # the accumulator rows PRELOAD fills (a conv layer's: every sub-position's block)
        c.rows_t = table([img.acc_rows(ll) for ll in img.layers], self.row_bits + 1)
        # (a listed layer's columns are its list's: `images.lockstep.engine_col_ptr`)
        ptrs, bases = engine_col_ptr(img)
        c.col_base_t = table(bases, bits(len(ptrs)))
        c.bias_t = table([R + ll.bias_base for ll in img.layers], bits(R + img.bias.shape[1]))
        # the DRAIN count (cnt = row * share + member, controls set a cycle ahead; member j's
        # word is taken from the accumulator read port when cnt == j + 2 and written to the
        # activation RAM when cnt == j + 4) at which the drain ends. Into PRELOAD: with the
        # last member's controls (cnt == rows * share - 1; the count starts at 1, the first
        # controls come from COMPUTE's last cycle), so PRELOAD's first read comes right after
        # the last drained word; the output stages finish the last rows meanwhile. Into
        # OUTPUT, which reads the activation RAMs a word a cycle in order (word w, of PE
        # w % N, at the earliest in cycle end + 1 + w): once every word is written before it
        # is read, and the last controls are out
        share = self.drain_share
        ends = [max(ll.rows_per_pe * share - 1, 1) for ll in img.layers[:-1]]
        last = img.layers[-1]
        ends.append(max([last.rows_per_pe * share - 1, 1]
                        + [(w // n) * share + (w % n) % share + 4 - w
                           for w in range(last.out_features)]))
        c.drain_end_t = table(ends, bits(max(ends)))
        # DRAIN reads rows while cnt < rows * share (row = cnt // share < rows)
        c.drain_rows_t = table([ll.rows_per_pe * share for ll in img.layers],
                               bits(max(ll.rows_per_pe * share for ll in img.layers)))
        # the PRELOAD count at which the layer's front end may start: its first accumulator
        # read comes at least six cycles later, so three before the last bias row's controls
        # (layer 1 under layer 0's drain, `bg_drain`: a bias row every other cycle, so two
        # before the last; its first slot's read still comes after the last bias write)
        self.early = [max(img.acc_rows(ll) - 3, 0) for ll in img.layers]
        if self.bg_drain:
            self.early[1] = max(img.layers[1].rows_per_pe - 2, 0)
        c.early_t = table(self.early, self.row_bits + 1)
        c.o_layer = Signal(range(max(L, 2)), name="o_layer")
        if self.has_conv:
            self._conv_tables(c, table)

    def _conv_tables(self, c, table):
        """Per-layer constants of conv layers (`images.conv.ConvGeom`; 0 or 1 for fc)."""
        img, aw = self.img, bits(self.act_words)
        gs = self.geoms
        c.is_conv = table([g is not None for g in gs], 1)
        bases = map_bases(img)
        c.src_t = table([b[0] for b in bases], aw)
        c.dst_t = table([b[1] for b in bases], aw)
        c.passes_t = table([g.passes if g else 1 for g in gs], bits(max(g.passes if g else 1
                                                                          for g in gs)))
        c.subs_t = table([g.subs if g else 1 for g in gs], bits(max(g.subs if g else 1
                                                                      for g in gs)))
        # the output map's words a channel group (a conv drain's row step)
        c.hw_t = table([g.hp * g.wp if g else 0 for g in gs], aw)
        c.drows_t = table([ll.rows_per_pe for ll in img.layers], self.row_bits + 1)
        if self.one_map:
            # the drain of every layer, one map word a cycle (`_one_map_drain_state`): a
            # channel's words apart (step: the output map's words a channel, 1 for fc), the
            # next member's word one channel on, the next row's N - share + 1, the next output
            # stage's share; a member takes max(sub-positions, output stages) cycles, so each
            # output stage's word is written before its next one is ready
            n, share = self.pes, self.drain_share
            stages = ceil_div(n, share)
            steps = [g.hp * g.wp if g else 1 for g in gs]
            c.step_t = table(steps, aw)
            c.rstep_t = table([st * (n - share + 1) for st in steps], aw)
            c.gstep_t = table([st * share for st in steps], aw)
            pers = [max(g.subs if g else 1, stages) for g in gs]
            c.per_t = table(pers, bits(max(pers)))
        c.conv_l = Signal(name="conv_l")  # the current layer is a conv layer
        c.pas = Signal(range(max(max(g.passes if g else 1 for g in gs), 2)), name="pass")

    def _layer_cycle_bits(self) -> int:
        # the most cycles a layer can take: PRELOAD, every non-zero column once through the
        # front end and the pointer stage, every slot twice (a hold), DRAIN, pipeline
        img, share = self.img, self.drain_share
        most = 0
        for ll in img.layers:
            slots = int(img.col_ptr[ll.col_base + ll.in_features] - img.col_ptr[ll.col_base])
            g = ll.conv_geom
            if g is None:
                most = max(most, 2 * (ll.in_features + slots) + ll.rows_per_pe * (share + 2)
                           + 64)
            else:  # per pass: every sub-position's patch (a word per column at most), PRELOAD
                # and the pooling drain
                per = (g.subs * (4 * ll.in_features + 2 * slots + 8)
                       + img.acc_rows(ll) * (share * g.subs + 2) + 64)
                most = max(most, g.passes * per)
            if self.one_map:  # a drain of a word a cycle (`_one_map_drain_state`)
                most += (g.passes if g else 1) * ll.rows_per_pe * self.pes * (
                    max(g.subs if g else 1, self.pes) + 4)
        return bits(most)

    def _io(self, m, c):
        """Two input banks and the loader (`hw.blocks.BankedIO`); latched counters."""
        last = self.geoms[-1]
        c.io = BankedIO(m, _OneLane(self) if self.one_map else self, act_r=c.act_r,
                        act_w=c.act_w, bank_bits=act_bank_bits(self.img),
                        lc_bits=self._layer_cycle_bits(),
                        cnt_limit=(self.max_rows << self.drain_share.bit_length()) + 4,
                        out_base=map_bases(self.img)[-1][1],
                        out_block=(last.hp * last.wp if last is not None and not self.one_map
                                   else 0),
                        low_words=low_words(self.img), nz_groups=not self.has_conv)

    def _front_end(self, m, c):
        """Non-zero activations of the layer, one per cycle."""
        if self.has_conv:
            self._conv_front_ends(m, c)
            return
        # a network without conv layers: fc layers only, whose front end this is
        fe_cls = front_end(self.img.layers[0].kind)
        m.submodules.fe = c.fe = fe = fe_cls(pes=self.pes, col_bits=self.col_bits,
                                             group_bits=self.row_bits, sparse=True,
                                             first_group=True)
        # groups the front end may read: every one in layer 0 (the loaded input), else the
        # rows the drain has written so far (`_output_stages`), so a layer's front end starts
        # while the output stages still write the previous layer's last rows
        c.avail = Signal(len(fe.avail), init=(1 << len(fe.avail)) - 1, name="fe_avail")
        # layer 0 reads its input from the first group with a non-zero word to the last (the
        # loader found them: `BankedIO.nz_first`, `nz_end`), not the all-zero groups around
        # them (a digit's blank top and bottom rows: 30 of MNIST's 98 groups of 8 pixels; the
        # group to start at, `fe.first`: `_sequencer`)
        grp_t = Array([c.io.nz_end] + list(c.grp_t)[1:])
        m.d.comb += [fe.in_features.eq(c.in_t[c.layer]), fe.groups.eq(grp_t[c.layer]),
                     fe.avail.eq(c.avail)]
        for k in range(self.pes):
            m.d.comb += fe.rd_data[k].eq(c.act_r[k].data.as_signed())

    def _conv_front_ends(self, m, c):
        """A network with conv layers: the fc front end (its groups read from the layer's
        source region) and the conv front end (`hw.convfe.ConvFrontEnd`: a pass's patches),
        the current layer's kind choosing; `c.fe` looks like one front end to the rest."""
        n, layer = self.lanes_per_word, c.layer  # (one lane with one_map)
        m.d.comb += c.conv_l.eq(c.is_conv[layer])
        addr_bits = bits(self.act_words)
        if self.one_map:
            self._one_map_front_end(m, c, addr_bits)
            return
        m.submodules.fe_fc = ffe = front_end("fc")(pes=n, col_bits=self.col_bits,
                                                   group_bits=self.row_bits, sparse=True)
        m.submodules.fe_conv = cfe = front_end("conv").make(
            pes=n, col_bits=self.col_bits, addr_bits=addr_bits, geoms=self.geoms)
        m.d.comb += [ffe.in_features.eq(c.in_t[layer]), ffe.groups.eq(c.grp_t[layer]),
                     ffe.avail.eq((1 << len(ffe.avail)) - 1),
                     cfe.layer.eq(layer), cfe.first.eq(c.pas == 0), cfe.base.eq(c.src_t[layer])]
        for k in range(n):
            m.d.comb += [ffe.rd_data[k].eq(c.act_r[k].data.as_signed()),
                         cfe.rd_data[k].eq(c.act_r[k].data.as_signed())]
        sb = max(1, self.sub_bits)
        fe = c.fe = SimpleNamespace(
            start=Signal(name="fe_start"), busy=Signal(name="fe_busy"),
            rd_addr=Signal(addr_bits + 1, name="fe_rd_addr"),
            o=SimpleNamespace(valid=Signal(name="fe_valid"), ready=Signal(name="fe_o_ready"),
                              payload=SimpleNamespace(value=Signal(signed(16), name="fe_value"),
                                                      col=Signal(self.col_bits + 1,
                                                                 name="fe_col"),
                                                      sub=Signal(sb, name="fe_sub"))))
        conv = c.conv_l
        m.d.comb += [ffe.start.eq(fe.start & ~conv), cfe.start.eq(fe.start & conv),
                     fe.busy.eq(ffe.busy | cfe.busy),
                     fe.rd_addr.eq(Mux(conv, cfe.rd_addr, ffe.rd_addr + c.src_t[layer])),
                     ffe.o.ready.eq(fe.o.ready), cfe.o.ready.eq(fe.o.ready),
                     fe.o.valid.eq(Mux(conv, cfe.o.valid, ffe.o.valid)),
                     fe.o.payload.value.eq(Mux(conv, cfe.o.payload.value, ffe.o.payload.value)),
                     fe.o.payload.col.eq(Mux(conv, cfe.o.payload.col, ffe.o.payload.col)),
                     fe.o.payload.sub.eq(Mux(conv, cfe.o.payload.sub, 0))]

    def _one_map_front_end(self, m, c, addr_bits):
        """`one_map`: every layer's columns through the one-map walk (`hw.convfe`); an fc
        layer walks as a 1x1 kernel over a 1x1 map of its input columns as channels (column
        c at word c, one pass, one sub-position): no fc front end beside it."""
        geoms = [g if g is not None else
                 ConvGeom(c=ll.engine_in, h=1, w=1, kh=1, kw=1, sh=1, sw=1, ph=0, pw=0, qh=1,
                          qw=1, out_ch=ll.out_features)
                 for g, ll in zip(self.geoms, self.img.layers)]
        lists = table = None
        if self.img.listed:  # the walker reads only the listed columns (`coltab`)
            words, firsts, _, yb = col_table(self.img)
            lists = [(len(cols), f) if cols is not None else None
                     for cols, f in zip(self.img.col_lists, firsts)]
            table = (len(words), yb)
        m.submodules.fe_conv = cfe = OneMapConvFrontEnd(geoms=geoms, addr_bits=addr_bits,
                                                        col_bits=self.col_bits, lists=lists,
                                                        table=table)
        if table is not None:
            m.d.comb += [c.ct.addr.eq(cfe.t_addr), c.ct.en.eq(1), cfe.t_data.eq(c.ct.data)]
        m.d.comb += [cfe.layer.eq(c.layer), cfe.first.eq(c.pas == 0),
                     cfe.base.eq(c.src_t[c.layer]),
                     cfe.rd_data[0].eq(c.act_r[0].data.as_signed())]
        c.fe = SimpleNamespace(start=cfe.start, busy=cfe.busy, rd_addr=cfe.rd_addr, o=cfe.o)
        g0 = self.geoms[0]
        if g0 is not None and g0.wp <= MAX_PASS_FLAGS:
            self._zero_passes(m, c, cfe, g0)

    def _zero_passes(self, m, c, cfe, g):
        """`one_map`, a conv first layer: the loader notes, per column of passes, whether the
        map columns its passes read hold a non-zero input value (any row, any channel); a
        pass of layer 0 in a column that holds only zeros is skipped by the walker (`zero`:
        a cycle, its accumulators keep the biases). Columns only: MNIST's digits are narrower
        than tall (of LeNet-5's 144 conv1 passes, about 25 a digit have all-zero columns, 5
        all-zero rows, 29 either), and the board has few logic cells left for row flags."""
        from images.conv import one_map_pass_cols

        io = c.io
        x = Signal(range(max(g.w, 2)), name="l_x")  # the loaded word's map column
        with m.If(io.take):
            m.d.sync += x.eq(Mux(x == g.w - 1, 0, x + 1))
        nz = self.i_act.payload != 0
        pcol = Signal(g.wp, name="l_nz_pcol")  # pass column px reads a non-zero value
        fresh = io.lcnt == 0  # an input's first word: the flags start again
        with m.If(io.take):
            for i, (lo, hi) in enumerate(one_map_pass_cols(g)):
                m.d.sync += pcol[i].eq((pcol[i] & ~fresh) | (nz & (x >= lo) & (x < hi)))
        zcol = Array(~pcol[i] for i in range(g.wp))
        m.d.comb += cfe.zero.eq((c.layer == 0) & Mux(c.pas == 0, ~pcol[0], zcol[cfe.px]))

    def _pointer_stage(self, m, c):
        """ptr[g], ptr[g + 1] of global column g into the queue; empty columns dropped."""
        pb, depth, fe = self.ptr_bits, self.queue_depth, c.fe
        fields = {"value": signed(16), "start": pb, "end": pb}
        if self.sub_bits:
            fields["sub"] = self.sub_bits  # a conv column's sub-position
        layout = data.StructLayout(fields)
        m.submodules.queue = c.queue = queue = ActQueue(layout, depth=depth,
                                                            write_ahead=True)
        c.p_valid = p_valid = Signal(name="p_valid")
        p_odd = Signal(name="p_odd")
        p_value = Signal(signed(16), name="p_value")
        # credit: the pointer stage is a place too: a column waits there (the pointer RAMs'
        # read enables low hold its pointers) while the queue is full, so the front end may
        # take while queue.level + p_valid < depth + 1. A credit comes back when the slot
        # sequencer pops, three cycles after the front end spent it, so the depth + 1 credits
        # of depth 2 keep up with columns of one slot (one per cycle), where depth credits
        # gave two columns in three cycles. Kept as a count of free places and a ready
        # flip-flop set a cycle ahead: the front end's take -> next group -> activation read
        # address was the engine's critical path (31 ns) with the compare in front of it
        credits = Signal(range(depth + 2), init=depth + 1, name="credits")
        ready = Signal(init=1, name="fe_ready")
        take = fe.o.valid & ready
        pop = queue.o.valid & queue.o.ready
        drop = Signal(name="p_drop")  # an empty column leaves the pointer stage
        nxt = Signal.like(credits, name="credits_next")
        m.d.comb += [fe.o.ready.eq(ready), nxt.eq(credits + pop + drop - take)]
        m.d.sync += [credits.eq(nxt), ready.eq(nxt != 0)]
        p_g = Signal(bits(len(engine_col_ptr(self.img)[0])) + 1, name="p_g")
        # the layer's first global column, a register (the layer changes at least two cycles
        # before its front end starts): the table is not on the path to the pointer RAMs
        col_base = Signal.like(c.col_base_t[0], name="col_base")
        m.d.sync += col_base.eq(c.col_base_t[c.layer])
        m.d.comb += [p_g.eq(col_base + fe.o.payload.col),
                     c.pev.addr.eq((p_g + 1) >> 1), c.pod.addr.eq(p_g >> 1)]
        p_start = Mux(p_odd, c.pod.data, c.pev.data)
        p_end = Mux(p_odd, c.pev.data, c.pod.data)
        p_wait = Signal(name="p_wait")  # a column in the pointer stage, the queue full
        # the enables leave the compare out: with the queue full and a column here there is
        # no credit, so no take; an empty column is dropped all the same (p_valid <= 0 below)
        # and the pointers and p_odd/p_value it holds are never read (p_valid low). Only
        # p_valid's next value needs `p_start != p_end` (the 33 MHz critical path was
        # RAM data -> compare -> these enables)
        p_full = Signal(name="p_full")  # a column here, the queue full
        m.d.comb += [p_full.eq(p_valid & ~queue.i.ready),
                     p_wait.eq(p_full & (p_start != p_end)),
                     c.pev.en.eq(~p_full), c.pod.en.eq(~p_full)]
        m.d.sync += p_valid.eq(take | p_wait)  # (no take while it waits: no credit left)
        with m.If(~p_full):
            m.d.sync += [p_odd.eq(p_g[0]), p_value.eq(fe.o.payload.value)]
        if self.sub_bits:
            p_sub = Signal(self.sub_bits, name="p_sub")
            with m.If(~p_full):
                m.d.sync += p_sub.eq(fe.o.payload.sub)
            m.d.comb += queue.i.payload.sub.eq(p_sub)
        m.d.comb += [drop.eq(p_valid & (p_start == p_end)),
                     queue.i.valid.eq(p_valid & (p_start != p_end)),
                     queue.i.payload.value.eq(p_value),
                     queue.i.payload.start.eq(p_start), queue.i.payload.end.eq(p_end)]

    def _slot_stage(self, m, c):
        """s_: one slot per cycle to every lane, next column popped on the last slot."""
        # hold: in the last cycle some PE's e_ slot read the accumulator row its m_ slot wrote
        # at the same clock edge (the read missed that write: back-to-back hits on one row,
        # which happen only across a column boundary). That slot is now in m_ with a stale
        # word: for one cycle nothing moves and nothing is written, its row is read again, and
        # the next cycle it goes on with the right word. `hold` is a register (the hazard is
        # found the cycle before), so what it stops (every slot register, the queue, the four
        # SPRAMs' chip selects) is driven from a flip-flop, not from the lane data.
        c.hz = Signal(name="hz")  # the hazard, this cycle
        c.hold = hold = Signal(name="hold")
        # steal (with `bg_drain`): layer 0's drain reads the accumulators this cycle, under
        # layer 1's COMPUTE (`_bg_drain`, a register). The slots before the m_ stage stay
        # where they are (the e_ slot reads its row again in the next cycle) and the m_ slot
        # writes as usual, a bubble behind it: its write is then seen by the e_ slot's read,
        # so no hazard needs a hold. A hold in a steal cycle (its read again taken by the
        # drain) goes on for a cycle more
        if self.bg_drain:
            c.steal = steal = Signal(name="steal")
            c.frz = frz = Signal(name="frz")  # the slots before the m_ stage stay
            m.d.sync += [hold.eq((c.hz & ~hold & ~steal) | (hold & steal)), steal.eq(0)]
            m.d.comb += frz.eq(hold | steal)
        else:
            c.frz = frz = hold
            m.d.sync += hold.eq(c.hz & ~hold)
        c.s = s = slot_sequencer(m, c.queue, self.ptr_bits, hold=frz, sub_bits=self.sub_bits,
                                 last_reg=True)
        for lp in c.lanes:
            m.d.comb += [lp.addr.eq(s.addr), lp.en.eq(~frz)]

    def _control(self, m, c):
        """The e_/m_ control shared by every PE, PRELOAD/DRAIN addresses, drain pipeline."""
        hold, s = c.hold, c.s
        c.e_valid = Signal(name="e_valid")  # a slot's entries are on the lane outputs
        c.e_first = Signal(name="e_first")
        e_value = Signal(signed(16), name="e_value")
        with m.If(~c.frz):
            m.d.sync += [c.e_valid.eq(s.valid), c.e_first.eq(s.first), e_value.eq(s.value)]
            # the activation is 0 outside a slot, so the product is 0 whatever the lane data
            # (PRELOAD's weight): a synchronous reset, not a gate on every PE's entry
            with m.If(~s.valid):
                m.d.sync += e_value.eq(0)
        if self.sub_bits:
            c.e_sub = Signal(self.sub_bits, name="e_sub")  # the slot's sub-position
            with m.If(~hold):
                m.d.sync += c.e_sub.eq(s.sub)
        # PRELOAD: copy bias row pre_row into accumulator row pre_row. These and the DRAIN
        # controls are registers the FSM sets a cycle ahead: the accumulator read address is
        # then a multiplexer from flip-flops, not the layer table and a compare (the board's
        # critical path at 28 MHz)
        c.pre_valid = Signal(name="pre_valid")
        c.pre_row = Signal(self.row_bits + 1, name="pre_row")
        c.drn_valid = Signal(name="drn_valid")  # DRAIN: read accumulator row drn_row
        c.drn_row = drn_row = Signal(self.row_bits + 1, name="drn_row")
        c.drn_more = Signal(name="drn_more")  # DRAIN: cnt < rows * share (`_drain_state`)
        c.drn_last = Signal(name="drn_last")  # DRAIN: cnt == the drain's end
        m.d.sync += [c.pre_valid.eq(0), c.drn_valid.eq(0)]  # unless the FSM sets them
        c.m_value = Signal(signed(16), name="m_value")
        with m.If(~hold):
            m.d.sync += c.m_value.eq(e_value)
        # member of the output stage's group
        c.drn_t = drn_t = Signal(range(max(self.drain_share, 2)), name="drn_t")
        # member y_t's output is on y, to be written at word y_row
        c.y_valid = y_valid = Signal(name="y_valid")
        y_row = Signal.like(drn_row, name="y_row")
        c.y_t = y_t = Signal.like(drn_t, name="y_t")
        c.y_en = [Signal(name=f"y_en{k}") for k in range(self.pes)]
        m.d.sync += [y_valid.eq(c.drn_valid), y_row.eq(drn_row), y_t.eq(drn_t)]
        if self.has_conv:
            # with conv layers every drained word also carries: the first and last of the
            # sub-positions pooled into it (an fc layer's: both), and the word it is written to
            aw = bits(self.act_words)
            c.drn_first, c.drn_lsub = Signal(name="drn_first"), Signal(name="drn_lsub")
            c.drn_pool = Signal(name="drn_pool")  # a conv drain: the read port reads each cycle
            c.drn_w = Signal(aw, name="drn_w")
            c.y_first, c.y_lsub = Signal(name="y_first"), Signal(name="y_lsub")
            y_w, d2_w, c.d3_w = (Signal(aw, name=f"{p}_w") for p in ("y", "d2", "d3"))
            m.d.sync += [c.y_first.eq(c.drn_first), c.y_lsub.eq(c.drn_lsub), y_w.eq(c.drn_w),
                         d2_w.eq(y_w), c.d3_w.eq(d2_w), c.drn_pool.eq(0)]
        if self.one_map:
            # y1_: the member's accumulator word registered before the pooling compare (the
            # read -> member multiplexer -> 32-bit compare was the board's critical path, 37 ns
            # at 24 MHz); the words after it a cycle later
            c.y1_valid, c.y1_first = Signal(name="y1_valid"), Signal(name="y1_first")
            y1_lsub, y1_w = Signal(name="y1_lsub"), Signal(aw, name="y1_w")
            y1_row, y1_t = Signal.like(drn_row, name="y1_row"), Signal.like(drn_t, name="y1_t")
            m.d.sync += [c.y1_valid.eq(y_valid), c.y1_first.eq(c.y_first), y1_lsub.eq(c.y_lsub),
                         y1_w.eq(y_w), y1_row.eq(y_row), y1_t.eq(y_t), d2_w.eq(y1_w)]
        # the output stage is pipelined (d2_: the member's accumulator word registered, d3_:
        # its output registered), so the accumulator read, the output stage and the activation
        # write are three short paths, not one (the board's critical path: 46 ns)
        c.d2_valid = d2_valid = Signal(name="d2_valid")
        c.d3_valid = Signal(name="d3_valid")
        d2_row, c.d3_row = Signal.like(drn_row, name="d2_row"), Signal.like(drn_row, name="d3_row")
        d2_t, c.d3_t = Signal.like(drn_t, name="d2_t"), Signal.like(drn_t, name="d3_t")
        # (a pooled word goes on after its last sub-position)
        if self.one_map:
            m.d.sync += [d2_valid.eq(c.y1_valid & y1_lsub), d2_row.eq(y1_row), d2_t.eq(y1_t)]
        else:
            m.d.sync += [d2_valid.eq(y_valid & c.y_lsub if self.has_conv else y_valid),
                         d2_row.eq(y_row), d2_t.eq(y_t)]
        m.d.sync += [c.d3_valid.eq(d2_valid), c.d3_row.eq(d2_row), c.d3_t.eq(d2_t)]
        # the activation word of row d3_row: layer outputs top down in the bank
        # (`images.lockstep.low_words`: the loader refills the words below them early)
        c.d3_word = Signal(c.io.bank_bits, name="d3_word")
        m.d.comb += c.d3_word.eq(~c.d3_row[: c.io.bank_bits])
        # PE k's write port is the loader's unless the drain writes PE k the next cycle (the
        # members of an output stage's group go out one a cycle: with drain_share 2 the
        # loader goes on in the drain, at most a cycle lost when it meets the member written)
        share = self.drain_share
        if not self.one_map:  # (one_map: the sequencer's)
            m.d.sync += c.io.wfree.eq(Cat(*(~(d2_valid & (d2_t == k % share))
                                            for k in range(self.pes))))
        # the accumulator address of PRELOAD and DRAIN is the same in every PE (registers)
        c.ctl_valid = Signal(name="ctl_valid")
        c.ctl_addr = Signal(bits(self.max_rows + self.img.bias.shape[1]), name="ctl_addr")
        m.d.sync += c.ctl_valid.eq(0)

    def _pes(self, m, c):
        """Per PE: e_ entry decode and accumulator read, m_ multiply-accumulate and write."""
        img, A, ib, e_bits = self.img, self.acc_bits, self.img.index_bits, self.img.entry_bits
        hold, layer, s = c.hold, c.layer, c.s
        # codebook: weight = codebook[layer][v] as logic (constants of the network), indexed by
        # Cat(v, layer) (no adder in front of the table: about 10 fewer LUTs per PE)
        K = 1 << ib
        cb_vals = [int(ll.codebook[v]) for ll in img.layers for v in range(K)]
        cb_consts = Array(Const(v, signed(16))
                          for v in cb_vals + [0] * (K * (1 << len(layer)) - len(cb_vals)))
        row_w = bits(self.max_rows + (1 << img.rel_bits))
        m_hits = []
        hazards = []
        self.bypass_flags, self.hold_flag = [], hold
        for k in range(self.pes):
            acc_r, acc_w = c.acc_r[k], c.acc_w[k]
            if self.one_map:  # the slot word packed PE after PE over the lanes
                ent = Cat(*(lp.data for lp in c.lanes))[k * e_bits: (k + 1) * e_bits]
            else:
                lane = c.lanes[k // 2].data
                ent = lane[(k % 2) * e_bits: (k % 2 + 1) * e_bits]
            e_v = ent[:ib]  # any value outside a slot: the activation is 0 there
            e_z = ent[ib:]
            e_row = Signal(row_w, name=f"e_row{k}")
            # the accumulator address: the row, and in a conv layer the sub-position in the
            # low bits (`images.lockstep`: (row << sub_bits) | sub)
            e_addr, e_addr0 = e_row, e_z  # e_addr0: a column's first slot's (row = z)
            if self.sub_bits:
                e_addr = Signal(row_w + self.sub_bits, name=f"e_addr{k}")
                e_addr0 = Signal(row_w + self.sub_bits, name=f"e_addr0_{k}")
                m.d.comb += [e_addr.eq(Mux(c.conv_l, Cat(c.e_sub, e_row), e_row)),
                             e_addr0.eq(Mux(c.conv_l, Cat(c.e_sub, e_z), e_z))]
            # the previous slot's row + 1, registered (one adder after the lane data, not
            # two), or 0 when the next slot is a column's first (a synchronous reset: no gate
            # after the register; a column's slots follow each other without a gap)
            row_next = Signal(row_w, name=f"row_next{k}")
            m.d.comb += e_row.eq(row_next + e_z)
            with m.If(~c.frz):
                with m.If(s.first):
                    m.d.sync += row_next.eq(0)
                if img.long_fillers:
                    # a long filler (`images.csc`, the one-map layout): 1 + z << rel_bits rows
                    with m.Elif(e_v == 0):
                        m.d.sync += row_next.eq(row_next + Cat(Const(1, img.rel_bits), e_z))
                with m.Else():
                    m.d.sync += row_next.eq(e_row + 1)
            e_hit = c.e_valid & (e_v != 0)
            m_hit = Signal(name=f"m_hit{k}")
            m_row = Signal(len(e_addr), name=f"m_row{k}")
            m_w = Signal(signed(16), name=f"m_w{k}")
            # accumulator read: compute row (the m_ slot's again during a hold), bias row
            # (PRELOAD) or drained row (DRAIN)
            m.d.comb += acc_r.addr.eq(Mux(c.ctl_valid, c.ctl_addr, Mux(hold, m_row, e_addr)))
            # DRAIN reads a row once; the read port holds it while the group's members go out
            if self.early0 or self.bg_drain:  # the second member's word is held in the
                m.d.comb += acc_r.en.eq(1)  # output stage
            # (a conv drain reads a row's sub-positions for each member)
            elif self.has_conv:
                m.d.comb += acc_r.en.eq(~c.drn_valid | (c.drn_t == 0) | c.drn_pool)
            else:
                m.d.comb += acc_r.en.eq(~c.drn_valid | (c.drn_t == 0))
            rom_cb = k < len(c.cb_r)
            with m.If(~hold):
                # (in a steal the e_ slot stays: a bubble into m_)
                e_go = e_hit & ~c.steal if self.bg_drain else e_hit
                m.d.sync += [m_hit.eq(e_go | c.pre_valid),
                             m_row.eq(Mux(c.pre_valid, c.pre_row, e_addr))]
                if not rom_cb:
                    m.d.sync += m_w.eq(cb_consts[Cat(e_v, layer)])
                    # and the weight 0 outside a slot (a synchronous reset, as the
                    # activation's): the lane word there may be one never loaded, and a
                    # simulation's unknown weight times 0 is unknown, not 0 (the gate-level
                    # bench)
                    with m.If(~c.e_valid):
                        m.d.sync += m_w.eq(0)
            if rom_cb:
                # the codebook from a block RAM (`images.lockstep.codebook_roms`): read with
                # the entry, its word the m_ stage's weight (held in a hold). Outside a slot the
                # activation is 0, so the product is 0 whatever the word
                cb = c.cb_r[k]
                m.d.comb += [cb.addr.eq(Cat(e_v, layer)), cb.en.eq(~hold)]
                m_w = cb.data.as_signed()
            m_hits.append(m_hit)
            # The hazard e_hit & m_hit & (e_row == m_row), without the row adder: inside a
            # column a hit's row is above its predecessor's, so only the first slot of a
            # column, whose row is its z, can hit the row being written. Not during a hold
            # (nothing is written then).
            hazard = c.e_valid & c.e_first & (ent[:ib] != 0) & m_hit & (m_row == e_addr0)
            m_new = Signal(signed(A), name=f"m_new{k}")
            acc_in = acc_r.data.as_signed()
            if self.has_conv and not self.one_map:
                # with conv layers a bypass instead of the hold (not in the board's one-map
                # layout: 8 x 77 logic cells the UP5K does not have): a conv layer's columns are
                # short (about one slot each) and hit the same few rows again and again, so a
                # hold would cost about a cycle a column (8,000 a LeNet-5 digit). The m_ slot
                # whose row the previous m_ slot wrote takes that slot's sum, not the read
                fwd = Signal(name=f"fwd{k}")
                prev = Signal(signed(A), name=f"m_prev{k}")
                m.d.sync += [fwd.eq(hazard), prev.eq(m_new)]
                self.bypass_flags.append(fwd)  # (the tests watch them)
                acc_in = Mux(fwd, prev, acc_in)
            else:
                hazards.append(hazard)
            m.d.comb += m_new.eq(acc_in + m_w * c.m_value)  # wraps at acc_bits
            m.d.comb += [acc_w.addr.eq(m_row), acc_w.data.eq(m_new), acc_w.en.eq(m_hit & ~hold)]
        c.m_any = Signal(name="m_any")  # some PE has a write in the m_ stage (for the idle check)
        m.d.comb += [c.m_any.eq(Cat(*m_hits).any()), c.hz.eq(Cat(*hazards).any() if hazards
                                                             else 0)]

    def _output_stages(self, m, c):
        """One output stage per `drain_share` PEs, member y_t of the group this cycle."""
        img, n, A, share = self.img, self.pes, self.acc_bits, self.drain_share
        # the layer being drained: kept while the last rows go through the output stages,
        # so the next layer's PRELOAD (which changes `layer`) can start under them
        layer = c.o_layer
        c.ys = [Signal(signed(16), name=f"y{k}") for k in range(n)]
        relu_t = Array(Const(int(ll.relu), 1) for ll in img.layers + [img.layers[-1]])
        y_regs = []
        for g in range(ceil_div(n, share)):
            members = list(range(g * share, min(n, (g + 1) * share)))
            acc_sel = Signal(signed(A), name=f"o_sel{g}")
            with m.Switch(c.y_t):
                for t, k in enumerate(members):
                    with m.Case(t):
                        m.d.comb += acc_sel.eq(c.acc_r[k].data.as_signed())
            if (self.early0 or self.bg_drain) and len(members) == 2:
                # member 1's word, taken with member 0's: the read port reads a bias the
                # cycle after (`_drain_ctl`), so it is gone from acc_r when member 1 goes out
                held = Signal(signed(A), name=f"o_held{g}")
                with m.If(c.y_valid & (c.y_t == 0)):
                    m.d.sync += held.eq(c.acc_r[members[1]].data.as_signed())
                with m.If(c.y_t == 1):
                    m.d.comb += acc_sel.eq(held)
            acc = Signal(signed(A), name=f"o_acc{g}")
            if self.one_map:  # (kept through the pad cycles: the read port reads others)
                sel_r = Signal(signed(A), name=f"o_sel_r{g}")  # (`_control`: y1_)
                m.d.sync += sel_r.eq(acc_sel)
                with m.If(c.y1_valid & (c.y1_first | (sel_r > acc))):
                    m.d.sync += acc.eq(sel_r)
            elif self.has_conv:
                # max pooling: the maximum of a word's sub-positions (the wrapped
                # accumulators; the output rule never decreases, so this is the rule's max)
                with m.If(c.y_first | (acc_sel > acc)):
                    m.d.sync += acc.eq(acc_sel)
            else:
                m.d.sync += acc.eq(acc_sel)
            # the per-layer pieces of the output rule are selected by the layer register
            q17 = Signal(signed(17), name=f"q{g}")
            rnd = Signal(name=f"rnd{g}")
            fits = Signal(name=f"fits{g}")
            with m.Switch(layer):
                for i, ll in enumerate(img.layers):
                    with m.Case(i):
                        q, r, f = round_shift(acc, ll.shift, A)
                        m.d.comb += [q17.eq(q), rnd.eq(r), fits.eq(f)]
            y = Signal(signed(16), name=f"y{g}")
            m.d.comb += y.eq(saturate(q17, rnd, fits, acc[-1], relu_t[layer]))
            y_reg = Signal(signed(16), name=f"y_reg{g}")
            m.d.sync += y_reg.eq(y)
            y_regs.append(y_reg)
            for t, k in enumerate(members):
                m.d.comb += c.ys[k].eq(y_reg)
                m.d.comb += c.y_en[k].eq(c.d3_valid & (c.d3_t == t))
        if self.one_map:
            self._word_writer(m, c, y_regs)
        # the group (row) d3_row is written with its last member: readable from the next cycle
        if not self.has_conv:
            with m.If(c.d3_valid & (c.d3_t == share - 1)):
                m.d.sync += c.avail.eq(c.d3_row + 1)

    def _word_writer(self, m, c, y_regs):
        """`one_map`: the output stages' words of a member go to the map one a cycle: stage
        0's with d3_valid (at d3_w), the others' from a shift register in the cycles after
        (stage g's at d3_w + g * gstep); a member takes at least as many cycles as there are
        stages (`per_t`), so the register is empty when the next member's words come."""
        G = len(y_regs)
        c.w_cnt = Signal(range(max(G, 2)), name="w_cnt")
        c.w_buf = [Signal(signed(16), name=f"w_buf{g}") for g in range(G - 1)]
        c.w_addr = Signal(bits(self.act_words), name="w_addr")
        gstep = Signal.like(c.w_addr, name="w_gstep")  # the layer drained, a register
        m.d.sync += gstep.eq(c.gstep_t[c.o_layer])
        with m.If(c.d3_valid):
            if G > 1:
                m.d.sync += [c.w_cnt.eq(G - 1), c.w_addr.eq(c.d3_w + gstep)]
                m.d.sync += [b.eq(y) for b, y in zip(c.w_buf, y_regs[1:])]
        with m.Elif(c.w_cnt != 0):
            m.d.sync += [c.w_cnt.eq(c.w_cnt - 1), c.w_addr.eq(c.w_addr + gstep)]
            m.d.sync += [b.eq(nb) for b, nb in zip(c.w_buf, c.w_buf[1:])]
        c.w_data = Mux(c.d3_valid, y_regs[0], c.w_buf[0] if G > 1 else y_regs[0])
        c.w_word = Mux(c.d3_valid, c.d3_w, c.w_addr)
        c.w_en = c.d3_valid | (c.w_cnt != 0)

    def _sequencer(self, m, c):
        """The states PRE0 -> (wait for a full bank) COMPUTE -> DRAIN (-> PRELOAD -> COMPUTE
        ...) -> OUTPUT -> PRE0; the loader fills the other bank meanwhile, and layer 0's
        biases of the next inference go in during OUTPUT. No START state: the front end
        starts in PRE0's or PRELOAD's last cycle."""
        n, layer, rows_t = self.pes, c.layer, c.rows_t
        io = c.io
        cnt = io.cnt
        # default: the front end reads the activations of bank cb: layer 0's input bottom up,
        # the later layers' top down (`d3_word`); `rev` (layer != 0) is a flip-flop, so the
        # inversion is in the LUT that chooses the address, not a level after it
        # (with conv layers: as given, `map_bases`)
        c.rev = Signal(name="fe_rev")
        bb = io.bank_bits
        fe_word = c.fe.rd_addr if self.has_conv else c.fe.rd_addr[:bb] ^ c.rev.replicate(bb)
        for k in range(len(c.act_r)):
            m.d.comb += [c.act_r[k].addr.eq(io.addr(io.cb, fe_word)), c.act_r[k].en.eq(1)]
        s = c.s
        c.pcnt = Signal(range(self.max_rows + 1), name="pre_cnt")
        # pcnt >= early_t[layer] kept in a flip-flop beside pcnt, set wherever pcnt or layer
        # changes: the compare (layer -> table -> carry chain) was in front of the front end's
        # start and its mask enables, the 33 MHz critical path
        c.pre_go = Signal(name="pre_go")
        # pcnt == the rows of the PRELOAD under way, a flip-flop set wherever pcnt changes:
        # the end of COMPUTE (`last_writes`) and PRELOAD's step read it, not layer -> table ->
        # compare (in front of the drain's first controls, the 30 MHz build's critical path)
        c.pre_done = Signal(name="pre_done")
        assert all(ll.rows_per_pe >= 1 for ll in self.img.layers)  # pcnt = 0: not done
        # nothing left before the m_ stage and no hold (in a hold the m_ slot writes in the
        # next cycle): the last write (if any) is at this clock edge, so the drain's first
        # accumulator read may come in the next cycle
        last_writes = (~c.fe.busy & (c.queue.level == 0) & ~c.p_valid & ~s.valid & ~c.e_valid
                       & ~c.hold)
        # ... and the layer's PRELOAD, which goes on under the front end's start, is done
        # (its last bias write is in the m_ stage at the latest)
        last_writes &= c.pre_done & ~c.pre_valid
        # the drain's activation writes are still in the output stages
        out_busy = c.drn_valid | c.y_valid | c.d2_valid | c.d3_valid
        if self.one_map:
            out_busy |= c.y1_valid | (c.w_cnt != 0)  # the output stages' words still to write
            # the map's one port (an SPRAM on the board) is the loader's while the engine
            # waits in PRE0 for a bank that is not full yet, but not in the cycle after the take
            # that fills it (the front end may start then and read), and, once layer 0 is done
            # (the loader's pass flags are the input's until then: `_zero_passes`), in any
            # cycle of a layer where neither the walker reads nor the drain writes (below): the
            # reads the engine uses and the writes never meet (a flip-flop, set a cycle ahead)
            m.d.sync += io.wfree.eq(0)

        # PRELOAD: bias row pcnt -> accumulator row pcnt, controls registered (read a cycle
        # later, written two cycles later: the writes end before the layer's first compute
        # read). Layer 0's for the next inference go in during OUTPUT (the accumulators are
        # free then) and PRE0
        pcnt = c.pcnt

        sb = self.sub_bits

        def preload(rows, bias_base, conv=False):
            # a conv layer's accumulator row a takes the bias of its output row a >> sub_bits
            brow = Mux(conv, pcnt >> sb, pcnt) if self.has_conv and sb else pcnt
            with m.If(~c.pre_done):
                m.d.sync += [c.pre_valid.eq(1), c.pre_row.eq(pcnt), c.ctl_valid.eq(1),
                             c.ctl_addr.eq(bias_base + brow), pcnt.eq(pcnt + 1),
                             c.pre_go.eq(pcnt + 1 >= c.early_t[layer]),
                             c.pre_done.eq(pcnt + 1 == rows)]

        rows0 = rows0_all = self.img.acc_rows(self.img.layers[0])
        bias0 = self.max_rows + self.img.layers[0].bias_base
        conv0 = self.geoms[0] is not None
        conv = c.conv_l if self.has_conv else False
        # layer 0's rows from keep0 up hold the biases (its last DRAIN put them there; not
        # after a reset): OUTPUT and PRE0 then preload rows 0..keep0-1 only
        c.l0_ready = Signal(name="l0_ready")
        if self.early0:
            rows0 = Mux(c.l0_ready, self.keep0, rows0)
        # the front end may only read the layer's inputs once the drain wrote them: fc-only
        # networks read each group once it is written (`avail`), so the front end starts
        # under the output stages' last rows; with conv layers once the output stages are
        # empty, and a conv layer's later passes read the region its drain does not write
        if self.one_map:  # the drain's writes take the map's port
            fe_may = ~out_busy
        elif self.has_conv:
            fe_may = ~out_busy | (c.conv_l & (c.pas != 0))
        else:
            fe_may = Const(1)

        def start_layer():
            # the front end starts three cycles before the last bias row's controls (the
            # PRELOAD goes on in COMPUTE): from the start, a slot reads the accumulators six
            # cycles later at the earliest (group loaded, take, pointer stage, queue, s_, e_),
            # after the last bias write
            m.d.comb += c.fe.start.eq(1)
            m.next = "COMPUTE"

        if not self.has_conv:
            c.fe_synced = Signal(name="fe_synced")
            m.d.sync += c.fe_synced.eq(0)
        with m.FSM(name="seq") as c.fsm:
            with m.State("PRE0"):
                # waits for a full bank (and most of layer 0's biases)
                preload(rows0, bias0, conv0)
                if self.one_map:
                    fills = io.take & (io.lcnt == self.in_features - 1)
                    m.d.sync += io.wfree.eq(~io.cb_full & ~fills)
                go0 = pcnt >= max(rows0_all - 3, 0)
                if self.early0:
                    go0 = go0 | c.pre_done  # fewer rows than rows0_all - 3, all in
                if not self.has_conv:
                    # the front end has followed the full bank's first group for a cycle
                    # (`fe.first`): the bank was full in the last cycle of PRE0 already
                    m.d.sync += c.fe_synced.eq(io.cb_full)
                    go0 = go0 & c.fe_synced
                with m.If(go0 & io.cb_full):
                    io.start()
                    m.d.sync += c.l0_ready.eq(0)  # its rows are about to be summed into
                    if not self.has_conv:  # layer 0 reads the loaded input: all of it
                        m.d.sync += c.avail.eq(-1)
                    start_layer()
            with m.State("PRELOAD"):
                io.count_layer(layer)
                self._bg_drain(m, c, io, lambda: preload(rows_t[layer], c.bias_t[layer], conv))
                with m.If(c.pre_go & fe_may):
                    start_layer()
            with m.State("COMPUTE"):
                io.count_layer(layer)
                if not self.has_conv:
                    # the front end's next start is a later layer's (top down, from group 0:
                    # `fe.first`); it has read the last group of this one
                    with m.If(c.fe.done):
                        m.d.sync += c.rev.eq(1)
                # (the last rows' controls)
                self._bg_drain(m, c, io, lambda: preload(rows_t[layer], c.bias_t[layer], conv))
                with m.If(last_writes):
                    if self.one_map:
                        self._conv_drain_start(m, c)
                    elif self.has_conv:
                        with m.If(c.conv_l):
                            self._conv_drain_start(m, c)
                        with m.Else():
                            self._fc_drain_start(m, c, cnt)
                    else:
                        self._fc_drain_start(m, c, cnt)
                        m.d.sync += c.avail.eq(0)  # the next layer's groups: none written yet
                        # layer 0 has read the input: the loader may refill the words below
                        # the layers' outputs
                        with m.If(layer == 0):
                            io.free_low()
                    if self.bg_drain:
                        # layer 0's DRAIN goes on under layer 1's PRELOAD and COMPUTE
                        with m.If(layer == 0):
                            m.d.sync += [layer.eq(1), c.rev.eq(1), c.pcnt.eq(0),
                                         c.pre_done.eq(0), c.pre_go.eq(self.early[1] == 0)]
                            m.next = "PRELOAD"
                        with m.Else():
                            m.next = "DRAIN"
                    else:
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                io.count_layer(layer)
                if self.one_map:
                    self._one_map_drain_state(m, c)
                elif self.has_conv:
                    with m.If(c.conv_l):
                        self._conv_drain_state(m, c, io)
                    with m.Else():
                        self._drain_state(m, c, io)
                else:
                    self._drain_state(m, c, io)
            if self.geoms[-1] is not None or self.one_map:
                with m.State("FLUSH"):
                    # a conv last layer: OUTPUT once its last words are written
                    io.count_layer(layer)
                    with m.If(~out_busy):
                        m.d.sync += [io.sel.eq(0), io.word.eq(0), io.o_valid.eq(0)]
                        m.next = "OUTPUT"
            with m.State("OUTPUT"):
                preload(rows0, bias0, conv0)

                def delivered():
                    m.d.sync += [cnt.eq(0), layer.eq(0), c.rev.eq(0)]
                    if not self.has_conv:
                        # layer 0 reads the loaded input: all of it, from the group it starts
                        # at (its front end checks that a cycle ahead)
                        m.d.sync += c.avail.eq(-1)
                    m.next = "PRE0"

                io.output(delivered)
        if not self.has_conv:
            # layer 0's front end starts at the input's first group with a non-zero word;
            # every other layer's at group 0 (the front end follows this while idle, so it
            # holds the full bank's first group once PRE0 has seen the bank full: `fe_synced`).
            # `rev` is 0 from the last output word until layer 0's front end is done (its
            # pipeline takes a few cycles more before the next front end can start)
            m.d.comb += c.fe.first.eq(Mux(c.rev, 0, io.nz_first))
        if self.one_map:
            self._load_under_compute(m, c, io)

    def _load_under_compute(self, m, c, io):
        """`one_map`: the next input loads under the compute of layers 1.. (into the other
        bank): the map's port is the loader's in the next cycle when the walker is idle and
        does not start now, and no drain word is written then (d3_ and the writer's last word
        are this cycle's)."""
        fsm, layer = c.fsm, c.layer
        with m.If((layer != 0) & (fsm.ongoing("PRELOAD") | fsm.ongoing("COMPUTE")
                                  | fsm.ongoing("DRAIN"))
                  & ~c.fe.busy & ~c.fe.start & ~c.d2_valid & ~c.d3_valid & (c.w_cnt <= 1)):
            m.d.sync += io.wfree.eq(1)

    def _bg_drain(self, m, c, io, step_preload):
        """With `bg_drain`: layer 0's DRAIN under layer 1's PRELOAD and COMPUTE (its first
        controls came from layer 0's last COMPUTE cycle, `_fc_drain_start`; `drn_more` is high
        until its last). cnt = row * 2 + member: member 0 reads the row (a steal: the slots
        before the m_ stage wait a cycle), member 1 goes out from the output stage's held word,
        leaving the read port to layer 1. The output stages apply layer 0's rule (`o_layer`,
        set with the first controls). `step_preload()` (the PRELOAD's next bias row) runs
        where layer 1's PRELOAD may read the port: a member-1 cycle (row cnt >> 1 is then
        drained, so its bias may go in) or no drain; without `bg_drain`, always."""
        if not self.bg_drain:
            step_preload()
            return
        cnt = io.cnt
        row = cnt >> 1
        with m.If(c.drn_more):
            m.d.sync += [c.drn_valid.eq(1), c.drn_row.eq(row), c.drn_t.eq(cnt[0]),
                         cnt.eq(cnt + 1),
                         c.drn_more.eq(cnt + 1 < 2 * self.img.layers[0].rows_per_pe)]
            with m.If(~cnt[0]):
                m.d.sync += [c.ctl_valid.eq(1), c.ctl_addr.eq(row), c.steal.eq(1)]
        with m.If(~c.drn_more | cnt[0]):
            step_preload()

    def _fc_drain_start(self, m, c, cnt):
        # COMPUTE's last cycle: the first drain controls (row 0)
        self._drain_ctl(m, c, 0)
        m.d.sync += [cnt.eq(1), c.drn_more.eq(c.drain_rows_t[c.layer] > 1),
                     c.drn_last.eq(c.drain_end_t[c.layer] == 1)]

    def _conv_drain_start(self, m, c):
        # the pass's output words: channel group r of output (py, px) at word
        # dst + r * hp * wp + pass (CHAN, `images.conv`)
        c.cd_r = Signal(self.row_bits + 1, name="cd_row")
        c.cd_t = Signal(range(max(self.drain_share, 2)), name="cd_member")
        most = max(g.subs for g in self.geoms if g)
        if self.one_map:
            most = max(most, ceil_div(self.pes, self.drain_share))  # (pad cycles)
        c.cd_s = Signal(range(max(most, 2)), name="cd_sub")
        c.cd_w = Signal(bits(self.act_words), name="cd_word")
        m.d.sync += [c.cd_r.eq(0), c.cd_t.eq(0), c.cd_s.eq(0),
                     c.cd_w.eq(c.dst_t[c.layer] + c.pas)]

    def _conv_drain_state(self, m, c, io):
        """DRAIN of a conv pass: per output row, per member of its output stage's group, the
        row's sub-positions read one a cycle (their maximum kept in the output stage: the
        pooling), the pooled word written at cd_w. The last controls hand over to the next
        pass's PRELOAD (or the next layer's, or FLUSH before OUTPUT)."""
        layer, sb, share = c.layer, self.sub_bits, self.drain_share
        r, t, s_, w = c.cd_r, c.cd_t, c.cd_s, c.cd_w
        last_s = s_ == c.subs_t[layer] - 1
        last_t = (t == share - 1) if share > 1 else Const(1)
        m.d.sync += [c.drn_valid.eq(1), c.drn_pool.eq(1), c.ctl_valid.eq(1),
                     c.ctl_addr.eq(Cat(s_[:sb], r) if sb else r), c.drn_row.eq(r),
                     c.drn_t.eq(t if share > 1 else 0), c.drn_first.eq(s_ == 0),
                     c.drn_lsub.eq(last_s), c.drn_w.eq(w), c.o_layer.eq(layer)]
        with m.If(~last_s):
            m.d.sync += s_.eq(s_ + 1)
        with m.Else():
            m.d.sync += s_.eq(0)
            with m.If(~last_t):
                m.d.sync += t.eq(t + 1)
            with m.Else():
                m.d.sync += [t.eq(0), r.eq(r + 1), w.eq(w + c.hw_t[layer])]
        with m.If(last_s & last_t & (r == c.drows_t[layer] - 1)):
            m.d.sync += [c.pcnt.eq(0), c.pre_done.eq(0)]
            with m.If(c.pas != c.passes_t[layer] - 1):
                m.d.sync += [c.pas.eq(c.pas + 1), c.pre_go.eq(c.early_t[layer] == 0)]
                m.next = "PRELOAD"
            with m.Else():
                m.d.sync += c.pas.eq(0)
                with m.If(layer == self.num_layers - 1):
                    if self.geoms[-1] is not None:
                        m.next = "FLUSH"
                with m.Else():
                    m.d.sync += [layer.eq(layer + 1), c.pre_go.eq(c.early_t[layer + 1] == 0)]
                    m.next = "PRELOAD"

    def _one_map_drain_state(self, m, c):
        """DRAIN with `one_map`, every layer's (an fc layer: one sub-position, one pass): per
        output row, per member of the output stages' groups, the row's sub-positions read one
        a cycle (their maximum kept in each output stage), then pad cycles up to `per_t`; the
        output stages' words go to the map one a cycle (`_output_stages`): member t of row r
        in output stage g is channel r * N + g * share + t, word dst + pass + channel * step."""
        layer, sb, share = c.layer, self.sub_bits, self.drain_share
        r, t, s_, w = c.cd_r, c.cd_t, c.cd_s, c.cd_w
        reads = s_ < c.subs_t[layer]
        last_s = s_ == c.per_t[layer] - 1
        last_t = (t == share - 1) if share > 1 else Const(1)
        addr = Mux(c.conv_l, Cat(s_[:sb], r), r) if sb else r
        with m.If(reads):
            m.d.sync += [c.drn_valid.eq(1), c.drn_pool.eq(1), c.ctl_valid.eq(1),
                         c.ctl_addr.eq(addr), c.drn_row.eq(r),
                         c.drn_t.eq(t if share > 1 else 0), c.drn_first.eq(s_ == 0),
                         c.drn_lsub.eq(s_ == c.subs_t[layer] - 1), c.drn_w.eq(w),
                         c.o_layer.eq(layer)]
        with m.If(~last_s):
            m.d.sync += s_.eq(s_ + 1)
        with m.Else():
            m.d.sync += s_.eq(0)
            with m.If(~last_t):
                m.d.sync += [t.eq(t + 1), w.eq(w + c.step_t[layer])]
            with m.Else():
                m.d.sync += [t.eq(0), r.eq(r + 1), w.eq(w + c.rstep_t[layer])]
        with m.If(last_s & last_t & (r == c.drows_t[layer] - 1)):
            m.d.sync += [c.pcnt.eq(0), c.pre_done.eq(0)]
            with m.If(c.pas != c.passes_t[layer] - 1):
                m.d.sync += [c.pas.eq(c.pas + 1), c.pre_go.eq(c.early_t[layer] == 0)]
                m.next = "PRELOAD"
            with m.Else():
                m.d.sync += c.pas.eq(0)
                with m.If(layer == self.num_layers - 1):
                    m.next = "FLUSH"
                with m.Else():
                    m.d.sync += [layer.eq(layer + 1), c.pre_go.eq(c.early_t[layer + 1] == 0)]
                    m.next = "PRELOAD"

    def _drain_ctl(self, m, c, cnt):
        # cnt = row * share + member, the controls registered (read in the next cycle);
        # o_layer: the layer the output stages apply, set with the controls
        sh = (self.drain_share - 1).bit_length()
        first = isinstance(cnt, int)  # COMPUTE's last cycle: row 0 (every layer has one)
        cnt = Const(cnt, len(c.io.cnt)) if first else cnt
        row = cnt >> sh if sh else cnt
        with m.If(Const(1) if first else c.drn_more):
            m.d.sync += [c.drn_valid.eq(1), c.drn_row.eq(row), c.ctl_valid.eq(1),
                         c.ctl_addr.eq(row), c.drn_t.eq(cnt[:sh] if sh else 0),
                         c.o_layer.eq(c.layer)]
            if self.early0 and not first:
                # layer 0, member 1 of a row from keep0 up: the read port is free, the row
                # read: copy the next inference's bias into it (through the m_ stage, which
                # is idle in a DRAIN)
                bias0 = self.max_rows + self.img.layers[0].bias_base
                with m.If(cnt[0] & (c.layer == 0) & (row >= self.keep0)):
                    m.d.sync += [c.pre_valid.eq(1), c.pre_row.eq(row),
                                 c.ctl_addr.eq(bias0 + row)]
            if self.has_conv:  # one word a row, written at the layer's destination + row
                m.d.sync += [c.drn_first.eq(1), c.drn_lsub.eq(1),
                             c.drn_w.eq(c.dst_t[c.layer] + row)]

    def _drain_state(self, m, c, io):
        cnt, layer = io.cnt, c.layer
        self._drain_ctl(m, c, cnt)
        # drn_more (cnt < rows * share) and drn_last (cnt == the drain's end) are flip-flops
        # set a cycle ahead: the layer's tables and their compares sit before a register, not
        # before the drain's controls and the state change
        m.d.sync += [cnt.eq(cnt + 1), c.drn_more.eq(cnt + 1 < c.drain_rows_t[layer]),
                     c.drn_last.eq(cnt + 1 == c.drain_end_t[layer])]
        with m.If(c.drn_last):
            # the next PRELOAD (or layer 0's in OUTPUT) starts from row 0: not done
            m.d.sync += [cnt.eq(0), c.pcnt.eq(0), c.pre_done.eq(0)]
            if self.early0:
                with m.If(layer == 0):  # its rows from keep0 up have the next biases
                    m.d.sync += c.l0_ready.eq(1)
            with m.If(layer == self.num_layers - 1):
                m.d.sync += [io.sel.eq(0), io.word.eq(0), io.o_valid.eq(0)]
                m.next = "OUTPUT"
            with m.Else():
                m.d.sync += [layer.eq(layer + 1), c.pre_go.eq(c.early_t[layer + 1] == 0),
                             c.rev.eq(1)]
                m.next = "PRELOAD"
