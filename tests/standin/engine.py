"""The stand-in engine's component: one multiply-accumulate over every weight of a row.

LOAD (the input into bank 0) -> per layer and row: ROW (bias read), FIRST (the bias into the
accumulator, the row's first weight and activation read), MAC (one product a cycle), WRITE (the
output rule, into the other bank) -> OUTPUT. LOAD, OUTPUT and the counters are `hw.blocks.ActIO`,
as the EIE engine has them.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring

from hw.blocks import ActIO, EngineSignature, bits, check_fits, check_queue_depth, post_process
from hw.memory import MemoryFactory

from .image import DenseImage, DenseParams, act_words, memory_map


class DenseEngine(wiring.Component):
    image_type = DenseImage

    @classmethod
    def check(cls, img, *, queue_depth=8, acc_bits=32, max_width=None) -> None:
        check_queue_depth(queue_depth)
        check_fits(img, acc_bits=acc_bits, max_width=max_width)

    def __init__(self, img: DenseImage, *, queue_depth=8, acc_bits=32, max_width=None,
                 memories: MemoryFactory | None = None):
        self.check(img, queue_depth=queue_depth, acc_bits=acc_bits, max_width=max_width)
        self.img = img
        self.acc_bits = acc_bits
        self.memories = memories or MemoryFactory()
        self.specs = memory_map(img, DenseParams(acc_bits=acc_bits))
        self.pes = 1
        self.num_layers = img.num_layers
        self.in_features = img.layers[0].in_features
        self.out_features = img.layers[-1].out_features
        self.act_words = act_words(img)
        super().__init__(EngineSignature(img.num_layers))

    @property
    def memory_specs(self):
        return list(self.specs)

    def elaborate(self, platform):
        m = Module()
        img, L, aw = self.img, self.num_layers, self.act_words
        ports = {s.name: self.memories(m, s) for s in self.specs}
        w_r, b_r = ports["weights"].read[0], ports["bias"].read[0]
        act_r, act_w = ports["act"].read[0], ports["act"].write[0]
        cyc = Signal(32)
        lc = Signal(data.ArrayLayout(32, L))
        io = ActIO(m, self, act_r=[act_r], act_w=[act_w], cyc=cyc, lc=lc, cnt_limit=aw)
        layer = Signal(range(max(L, 2)))
        row = Signal(range(aw + 1))
        col = Signal(range(aw + 1))
        acc = Signal(signed(self.acc_bits))

        def table(values):
            return Array(Const(int(v), unsigned(bits(max(values)))) for v in values)

        ins, outs = table([ll.in_features for ll in img.layers]), table(
            [ll.out_features for ll in img.layers])
        wbase, bbase = table([ll.weight_base for ll in img.layers]), table(
            [ll.bias_base for ll in img.layers])
        src = layer[0] * aw  # layer i reads bank i % 2, writes the other
        dst = (~layer[0]) * aw

        def loaded():
            m.d.sync += [layer.eq(0), row.eq(0), io.cnt.eq(0)]
            m.next = "ROW"

        def delivered():
            m.d.sync += [self.cycles.eq(cyc + 1), self.layer_cycles.eq(lc), io.sel.eq(0),
                         io.word.eq(0)]
            m.next = "LOAD"

        with m.FSM(name="seq"):
            with m.State("LOAD"):
                io.load(lambda word: word, loaded)
            with m.State("ROW"):
                io.count_layer(layer)
                m.d.comb += b_r.addr.eq(bbase[layer] + row)
                m.next = "FIRST"
            with m.State("FIRST"):
                io.count_layer(layer)
                m.d.sync += [acc.eq(b_r.data.as_signed()), col.eq(0)]
                m.d.comb += [w_r.addr.eq(wbase[layer] + row * ins[layer]),
                             act_r.addr.eq(src)]
                m.next = "MAC"
            with m.State("MAC"):
                io.count_layer(layer)
                m.d.sync += acc.eq(acc + w_r.data.as_signed() * act_r.data.as_signed())
                m.d.comb += [w_r.addr.eq(wbase[layer] + row * ins[layer] + col + 1),
                             act_r.addr.eq(src + col + 1)]
                m.d.sync += col.eq(col + 1)
                with m.If(col == ins[layer] - 1):
                    m.next = "WRITE"
            with m.State("WRITE"):
                io.count_layer(layer)
                with m.Switch(layer):
                    for i, ll in enumerate(img.layers):
                        with m.Case(i):
                            m.d.comb += act_w.data.eq(post_process(acc, ll.shift, ll.relu))
                m.d.comb += [act_w.addr.eq(dst + row), act_w.en.eq(1)]
                m.d.sync += row.eq(row + 1)
                with m.If(row == outs[layer] - 1):
                    m.d.sync += [row.eq(0), layer.eq(layer + 1)]
                    with m.If(layer == L - 1):
                        m.d.sync += [io.sel.eq(0), io.word.eq(0), io.o_valid.eq(0),
                                     io.cnt.eq(0)]
                        m.next = "OUTPUT"
                    with m.Else():
                        m.next = "ROW"
                with m.Else():
                    m.next = "ROW"
            with m.State("OUTPUT"):
                io.output(lambda word: (L % 2) * aw + word, delivered)
        return m
