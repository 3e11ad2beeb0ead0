"""The EIE engine: a whole quantized network, sparse weights and sparse activations skipped.

Architecture (after EIE, Han et al. ISCA 2016; see docs/engine.md):

* N PEs (`hw.pe.PE`), rows interleaved: PE k holds rows r with r % N == k as local rows r // N,
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
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from images.eie import RomImage, physical_qnet

from .frontend import FrontEnd
from .memory import MemoryFactory, MemorySpec
from .pe import PE, PEImage

MAX_PES = 16


class EngineConfigError(ValueError):
    """The network does not fit the engine's parameters; the message names layer and limit."""


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pe_images(rom: RomImage, *, sparse: bool = True) -> list[PEImage]:
    """Per-PE images: the ROM's own (sparse), or every weight as an entry (dense baseline)."""
    n = rom.pes
    L = rom.num_layers
    shifts = [rl.shift for rl in rom.layers]
    relus = [rl.relu for rl in rom.layers]
    if sparse:
        return [
            PEImage(pe=k, index_bits=rom.index_bits, rel_bits=rom.rel_bits,
                    entries=rom.entries[k], ptr=rom.ptr[k], bias=rom.bias[k],
                    codebook=rom.codebook,
                    ptr_base=[rl.ptr_base[k] for rl in rom.layers],
                    rows=[rl.rows[k] for rl in rom.layers],
                    bias_base=[rl.bias_base[k] for rl in rom.layers],
                    shift=shifts, relu=relus)
            for k in range(n)
        ]
    qnet = physical_qnet(rom)  # rows as placed (a balanced ROM permutes them)
    imgs = []
    for k in range(n):
        ents, ptrs, ptr_base = [], [], []
        base = pbase = 0
        for layer in qnet.layers:
            sub = layer.index[k::n, :]  # [rows, in]
            rows, cols = sub.shape
            ents.append(sub.T.reshape(-1).astype(np.uint32))  # column-major, z = 0
            ptrs.append(base + rows * np.arange(cols + 1, dtype=np.int64))
            ptr_base.append(pbase)
            base += rows * cols
            pbase += cols + 1
        imgs.append(PEImage(
            pe=k, index_bits=rom.index_bits, rel_bits=rom.rel_bits,
            entries=np.concatenate(ents), ptr=np.concatenate(ptrs), bias=rom.bias[k],
            codebook=rom.codebook, ptr_base=ptr_base,
            rows=[rl.rows[k] for rl in rom.layers],
            bias_base=[rl.bias_base[k] for rl in rom.layers],
            shift=shifts, relu=relus))
    assert all(len(i.ptr_base) == L for i in imgs)
    return imgs


def check_fits(rom, *, acc_bits: int = 32, max_width: int | None = None) -> None:
    """Raise EngineConfigError naming the layer and the limit if the network does not fit.

    rom: a `images.eie.RomImage` or a `images.lockstep.LockstepImage` (pes, index_bits,
    layers with codebook_size, in_features, out_features).
    """
    if not 1 <= rom.pes <= MAX_PES:
        raise EngineConfigError(f"pes must be 1..{MAX_PES}, not {rom.pes!r}")
    if not 17 <= acc_bits <= 64:
        raise EngineConfigError(f"acc_bits must be 17..64, not {acc_bits!r}")
    k = 1 << rom.index_bits
    for i, rl in enumerate(rom.layers):
        if rl.codebook_size > k:
            raise EngineConfigError(
                f"l{i}: {rl.codebook_size} codebook entries exceed 2**index_bits = {k}")
        if max_width is not None:
            for what, w in (("inputs", rl.in_features), ("outputs", rl.out_features)):
                if w > max_width:
                    raise EngineConfigError(
                        f"l{i}: {w} {what} exceed the activation buffers of {max_width} words")


def engine_ports(num_layers: int) -> dict:
    """The ports every engine has (this one and `hw.lockstep.LockstepEngine`)."""
    return {
        "i_act": In(stream.Signature(signed(16))),
        "o_act": Out(stream.Signature(signed(16))),
        "cycles": Out(32),
        "layer_cycles": Out(data.ArrayLayout(32, num_layers)),
        "busy": Out(1),
    }


class Engine(wiring.Component):
    def __init__(self, rom: RomImage, *, queue_depth=8, acc_bits=32, sparse=True,
                 memories: "MemoryFactory | None" = None, max_width: int | None = None):
        try:
            if not isinstance(queue_depth, int) or not 1 <= queue_depth <= 64:
                raise EngineConfigError(
                    f"queue_depth must be an integer 1..64, not {queue_depth!r}")
            check_fits(rom, acc_bits=acc_bits, max_width=max_width)
        except EngineConfigError:
            self._MustUse__silence = True  # refused: not an unused elaboratable
            raise
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
        widths = [rom.layers[0].in_features] + [rl.out_features for rl in rom.layers]
        self.max_width = max(widths)
        self.act_words = max(_ceil_div(w, n) for w in widths)  # per PE per bank
        self.col_bits = max(1, self.max_width.bit_length())
        self.row_bits = max(1, self.act_words.bit_length())
        self.images = pe_images(rom, sparse=sparse)
        self.pe_blocks = [
            PE(img, col_bits=self.col_bits, row_bits=self.row_bits, queue_depth=queue_depth,
               acc_bits=acc_bits, sparse=sparse, memories=self.memories)
            for img in self.images
        ]
        self.act_specs = [
            MemorySpec(f"pe{k}.act", "ram", 16, 2 * self.act_words, (), read_ports=1,
                       write_ports=1)
            for k in range(n)
        ]
        super().__init__(engine_ports(L))

    @property
    def memory_specs(self) -> list[MemorySpec]:
        """Every memory the engine creates (name, kind, width, depth, init, ports)."""
        return [s for pe in self.pe_blocks for s in pe.specs] + self.act_specs

    def elaborate(self, platform):
        m = Module()
        rom = self.rom
        n = self.pes
        L = self.num_layers
        aw = self.act_words
        in0 = self.in_features
        outL = self.out_features

        pes = self.pe_blocks
        for k, pe in enumerate(pes):
            m.submodules[f"pe{k}"] = pe
        acts = [self.memories(m, s) for s in self.act_specs]
        act_r = [a.read[0] for a in acts]
        act_w = [a.write[0] for a in acts]

        m.submodules.fe = fe = FrontEnd(pes=n, col_bits=self.col_bits,
                                        group_bits=self.row_bits, sparse=self.sparse)

        layer = Signal(range(max(L, 2)))
        in_t = Array(Const(rl.in_features, unsigned(self.col_bits + 1)) for rl in rom.layers)
        grp_t = Array(Const(_ceil_div(rl.in_features, n), unsigned(self.row_bits + 1))
                      for rl in rom.layers)
        outs = [rl.out_features for rl in rom.layers] + [0, 0]
        # drain of layer i: its rows out, the rows of layer i + 2 preloaded (same bank)
        drain_t = Array(
            Const(max(_ceil_div(outs[i], n), _ceil_div(outs[i + 2], n)),
                  unsigned(self.row_bits + 1))
            for i in range(L))
        pre_rows = [max(1, _ceil_div(outs[b], n)) for b in range(2)]
        m.d.comb += [fe.in_features.eq(in_t[layer]), fe.groups.eq(grp_t[layer])]

        # broadcast with credit: every PE must have room
        all_ready = Signal()
        r = pes[0].bc.ready
        for pe in pes[1:]:
            r = r & pe.bc.ready
        m.d.comb += all_ready.eq(r)
        m.d.comb += fe.o.ready.eq(all_ready)
        for k, pe in enumerate(pes):
            m.d.comb += [
                pe.layer.eq(layer),
                pe.bc.valid.eq(fe.o.valid & all_ready),
                pe.bc.payload.eq(fe.o.payload),
                fe.rd_data[k].eq(act_r[k].data.as_signed()),
            ]
        all_idle = Signal()
        idle = pes[0].idle
        for pe in pes[1:]:
            idle = idle & pe.idle
        m.d.comb += all_idle.eq(idle)

        def act_addr(bank_bit, word):
            return bank_bit * aw + word

        # counters
        run = Signal()  # between the first input word and the last output word
        cyc = Signal(32)
        lc = Signal(data.ArrayLayout(32, L))
        fe_done = Signal()
        cnt = Signal(range(max(in0, outL, aw, 2) + 2))  # words / rows
        sel = Signal(range(max(n, 2)))  # PE of the current word
        word = Signal(range(max(aw, 2) + 1))  # word within the PE
        o_valid = Signal()
        o_sel = Signal.like(sel)
        # the drain runs beside the FSM: layer d_layer's rows out, overlapping layer d_layer + 1
        d_active = Signal()
        d_layer = Signal.like(layer)
        d_cnt = Signal(self.row_bits + 2)

        with m.If(run):
            m.d.sync += cyc.eq(cyc + 1)

        def next_word():
            with m.If(sel == n - 1):
                m.d.sync += [sel.eq(0), word.eq(word + 1)]
            with m.Else():
                m.d.sync += sel.eq(sel + 1)

        for k in range(n):  # default: the front end reads the source bank (layer % 2)
            m.d.comb += [act_r[k].en.eq(1), act_r[k].addr.eq(act_addr(layer[0], fe.rd_addr))]
        # groups of the source bank written so far by the drain of the previous layer
        big = (1 << len(fe.avail)) - 1
        with m.If(d_active):
            m.d.comb += fe.avail.eq(Mux(d_cnt > 0, d_cnt - 1, 0))
        with m.Else():
            m.d.comb += fe.avail.eq(big)

        def count_layer():
            m.d.sync += lc[layer].eq(lc[layer] + 1)

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
                m.d.comb += self.i_act.ready.eq(1)
                for k in range(n):
                    m.d.comb += [act_w[k].addr.eq(act_addr(0, word)), act_w[k].data.eq(
                        self.i_act.payload), act_w[k].en.eq(self.i_act.valid & (sel == k))]
                with m.If(self.i_act.valid):
                    with m.If(cnt == 0):
                        m.d.sync += [run.eq(1), cyc.eq(1), self.busy.eq(1)]
                        for i in range(L):
                            m.d.sync += lc[i].eq(0)
                    m.d.sync += cnt.eq(cnt + 1)
                    next_word()
                    with m.If(cnt == in0 - 1):
                        m.d.sync += [layer.eq(0), cnt.eq(0), fe_done.eq(0)]
                        m.next = "START"
            with m.State("START"):
                m.d.comb += fe.start.eq(1)
                count_layer()
                m.next = "COMPUTE"
            with m.State("COMPUTE"):
                count_layer()
                with m.If(fe.done):
                    m.d.sync += fe_done.eq(1)
                with m.If(fe_done & all_idle & ~d_active):
                    # layer done: drain it while the next layer computes in the other bank
                    m.d.sync += [fe_done.eq(0), d_active.eq(1), d_layer.eq(layer), d_cnt.eq(0)]
                    with m.If(layer == L - 1):
                        m.next = "LASTDRAIN"
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        m.next = "START"
            with m.State("LASTDRAIN"):
                count_layer()
                with m.If(~d_active):
                    m.d.sync += [sel.eq(0), word.eq(0), o_valid.eq(0), cnt.eq(0)]
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                fetch = ~o_valid | self.o_act.ready
                for k in range(n):
                    m.d.comb += [act_r[k].en.eq(fetch), act_r[k].addr.eq(act_addr(L % 2, word))]
                with m.If(fetch):
                    with m.If(cnt < outL):
                        m.d.sync += [o_valid.eq(1), o_sel.eq(sel), cnt.eq(cnt + 1)]
                        next_word()
                    with m.Else():
                        m.d.sync += o_valid.eq(0)
                m.d.comb += [self.o_act.valid.eq(o_valid)]
                with m.Switch(o_sel):
                    for k in range(n):
                        with m.Case(k):
                            m.d.comb += self.o_act.payload.eq(act_r[k].data.as_signed())
                # the last word is delivered when cnt == outL and it is taken
                with m.If(o_valid & self.o_act.ready & (cnt == outL)):
                    m.d.sync += [run.eq(0), self.busy.eq(0), self.cycles.eq(cyc + 1),
                                 self.layer_cycles.eq(lc), cnt.eq(0), o_valid.eq(0)]
                    m.next = "PRELOAD0"

        # the drain: one row of every PE per cycle into the destination bank of d_layer
        with m.If(d_active):
            rows = drain_t[d_layer]
            for k, pe in enumerate(pes):
                m.d.comb += [pe.drain_valid.eq(d_cnt < rows), pe.preload_valid.eq(d_cnt < rows),
                             pe.drain_row.eq(d_cnt), pe.drain_layer.eq(d_layer),
                             pe.preload_layer.eq(d_layer + 2),
                             act_w[k].addr.eq(act_addr(~d_layer[0], pe.y_row)),
                             act_w[k].data.eq(pe.y), act_w[k].en.eq(pe.y_valid)]
            m.d.sync += d_cnt.eq(d_cnt + 1)
            with m.If(d_cnt == rows):  # the last row's output and preload land this cycle
                m.d.sync += d_active.eq(0)
        return m
