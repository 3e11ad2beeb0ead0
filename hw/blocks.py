"""What both engines share: ports, limits, the output rule, LOAD/OUTPUT and counters, slots.

Both engines (`hw.eie.Engine`, queue per PE; `hw.lockstep.LockstepEngine`, the board's) keep a
layer's activations in N per-PE RAMs, column c in PE c % N at word c // N, take the input
vector on `i_act` and give the output vector on `o_act` in that order, count cycles the same
way and turn an accumulator into an int16 output by the same rule. These pieces live here once:

* `EngineSignature`: the ports of every engine.
* `MAX_PES`, `EngineConfigError`, `check_fits`, `check_queue_depth`: the limits.
* `round_shift`, `saturate`, `post_process`: the output rule in Amaranth (docs/formats.md
  section 3). `compress.golden` keeps the numpy/torch form of the same rule: it is the
  reference the benches check this one against, so the two stay apart on purpose.
* `ActIO`: the LOAD and OUTPUT states (word/PE stepping, valid/ready) and the counters
  `cycles` / `layer_cycles`.
* `slot_sequencer`: one entry address per cycle over a queued column's range start..end-1.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

MAX_PES = 16


class EngineConfigError(ValueError):
    """The network does not fit the engine's parameters; the message names layer and limit."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def bits(n: int) -> int:
    """Bits of an unsigned counter that holds 0..n."""
    return max(1, int(n).bit_length())


def check_fits(img, *, acc_bits: int = 32, max_width: int | None = None) -> None:
    """Raise EngineConfigError naming the layer and the limit if the network does not fit.

    img: an EIE image (`RomImage`) or a lockstep image (`LockstepImage`): pes, index_bits,
    layers with codebook_size, in_features, out_features.
    """
    if not 1 <= img.pes <= MAX_PES:
        raise EngineConfigError(f"pes must be 1..{MAX_PES}, not {img.pes!r}")
    if not 17 <= acc_bits <= 64:
        raise EngineConfigError(f"acc_bits must be 17..64, not {acc_bits!r}")
    k = 1 << img.index_bits
    for i, rl in enumerate(img.layers):
        if rl.codebook_size > k:
            raise EngineConfigError(
                f"l{i}: {rl.codebook_size} codebook entries exceed 2**index_bits = {k}")
        if max_width is not None:
            for what, w in (("inputs", rl.in_features), ("outputs", rl.out_features)):
                if w > max_width:
                    raise EngineConfigError(
                        f"l{i}: {w} {what} exceed the activation buffers of {max_width} words")


@contextmanager
def refusing(component):
    """Around a component's parameter checks: a component refused with EngineConfigError is
    not reported by Amaranth as an elaboratable made and never used."""
    try:
        yield
    except EngineConfigError:
        component._MustUse__silence = True
        raise


def check_queue_depth(queue_depth) -> None:
    if not isinstance(queue_depth, int) or not 1 <= queue_depth <= 64:
        raise EngineConfigError(f"queue_depth must be an integer 1..64, not {queue_depth!r}")


class EngineSignature(wiring.Signature):
    """The ports of every engine, seen from the engine.

    i_act: input activations, in_0 int16 words in column order (valid/ready).
    o_act: output activations, out_{L-1} int16 words in row order (valid/ready).
    cycles: first input word accepted -> last output word delivered, inclusive.
    layer_cycles: per layer, the cycles the engine spent on it (each engine says which).
    busy: between the first input word and the last output word.
    """

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        super().__init__({
            "i_act": In(stream.Signature(signed(16))),
            "o_act": Out(stream.Signature(signed(16))),
            "cycles": Out(32),
            "layer_cycles": Out(data.ArrayLayout(32, num_layers)),
            "busy": Out(1),
        })

    def __eq__(self, other):
        return type(other) is type(self) and other.num_layers == self.num_layers

    def __hash__(self):
        return hash((type(self), self.num_layers))

    def __repr__(self):
        return f"EngineSignature({self.num_layers})"


# ---- the output rule: acc -> int16 (rounding shift, saturation, ReLU) -------------------------


def round_shift(acc, shift: int, acc_bits: int):
    """The per-layer pieces of the output rule for `acc` (acc_bits wide): (q17, r, fits).

    floor((acc + 2**(s-1)) / 2**s) == (acc >> s) + acc[s-1], so no wide add is needed: q17 is
    acc >> s cut to 17 bits, r the rounding bit, and fits says acc >> s really fits in 17 bits
    (otherwise the result saturates by the sign of acc).
    """
    def bit(i):
        return acc[min(i, acc_bits - 1)]

    q17 = Cat(*(bit(shift + t) for t in range(17)))
    r = bit(shift - 1) if shift > 0 else Const(0, 1)
    top = [bit(i) for i in range(shift + 16, acc_bits)]
    if top:
        t = Cat(*top)
        fits = (t == 0) | (t == (1 << len(top)) - 1)
    else:
        fits = Const(1, 1)
    return q17, r, fits


def saturate(q17, r, fits, sign, relu):
    """int16 from the pieces of `round_shift`: q17 + r saturated to int16, 0 if negative and relu.

    sign: the accumulator's sign bit (decides the saturation when not `fits`); relu: a bool or
    a 1-bit value. The add q17 + r is 18 bits wide, so it is exact.
    """
    y18 = q17.as_signed() + r
    neg = Mux(fits, y18[17], sign)
    inrange = fits & ((y18[15:18] == 0) | (y18[15:18] == 0b111))
    y = Mux(inrange, y18[:16], Mux(neg, -32768, 32767))
    if relu is True:
        y = Mux(neg, 0, y)
    elif relu is not False:
        y = Mux(relu & neg, 0, y)
    return y[:16].as_signed()


def post_process(acc, shift: int, relu: bool):
    """The output rule on a signed accumulator value: an int16 expression."""
    q17, r, fits = round_shift(acc, shift, len(acc))
    return saturate(q17, r, fits, acc[-1], relu)


# ---- input/output of the activation RAMs and the counters -------------------------------------


class ActIO:
    """LOAD, OUTPUT and the counters of an engine, built into its module `m`.

    eng: the engine (its `i_act`, `o_act`, `busy`, `pes`, `act_words`, `in_features`,
    `out_features`); act_r/act_w: the read/write port of every PE's activation RAM; cyc, lc:
    where `cycles` and `layer_cycles` count (the ports themselves, or copies the engine moves
    to the ports at the end); cnt_limit: the largest count the engine's own states need.

    `run` is set from the first input word to the last output word; `cnt` counts words, `sel`
    and `word` are the PE and word of the current column or row.
    """

    def __init__(self, m, eng, *, act_r, act_w, cyc, lc, cnt_limit: int):
        self.m = m
        self.eng = eng
        self.act_r = act_r
        self.act_w = act_w
        self.cyc = cyc
        self.lc = lc
        n = eng.pes
        self.run = Signal()
        self.cnt = Signal(range(max(eng.in_features, eng.out_features, cnt_limit, 2) + 2))
        self.sel = Signal(range(max(n, 2)))  # PE of the current word
        self.word = Signal(range(max(eng.act_words, 2) + 1))  # word within the PE
        self.o_valid = Signal()
        self.o_sel = Signal.like(self.sel)
        with m.If(self.run):
            m.d.sync += cyc.eq(cyc + 1)

    def count_layer(self, layer) -> None:
        self.m.d.sync += self.lc[layer].eq(self.lc[layer] + 1)

    def next_word(self) -> None:
        m = self.m
        with m.If(self.sel == self.eng.pes - 1):
            m.d.sync += [self.sel.eq(0), self.word.eq(self.word + 1)]
        with m.Else():
            m.d.sync += self.sel.eq(self.sel + 1)

    def load(self, addr, last) -> None:
        """The body of the LOAD state: word `cnt` of `i_act` into PE `sel` at `addr(word)`.

        `last()` runs in the cycle the last input word is taken.
        """
        m, eng, cnt = self.m, self.eng, self.cnt
        m.d.comb += eng.i_act.ready.eq(1)
        for k in range(eng.pes):
            m.d.comb += [self.act_w[k].addr.eq(addr(self.word)),
                         self.act_w[k].data.eq(eng.i_act.payload),
                         self.act_w[k].en.eq(eng.i_act.valid & (self.sel == k))]
        with m.If(eng.i_act.valid):
            with m.If(cnt == 0):
                m.d.sync += [self.run.eq(1), self.cyc.eq(1), eng.busy.eq(1)]
                for i in range(eng.num_layers):
                    m.d.sync += self.lc[i].eq(0)
            m.d.sync += cnt.eq(cnt + 1)
            self.next_word()
            with m.If(cnt == eng.in_features - 1):
                last()

    def output(self, addr, last) -> None:
        """The body of the OUTPUT state: row `cnt` from PE `sel` at `addr(word)` to `o_act`.

        Reads run a word ahead of `o_act` (the RAMs' read latency); `last()` runs in the cycle
        the last output word is taken, after `run`, `busy`, `cnt` and `o_valid` are cleared.
        """
        m, eng, cnt = self.m, self.eng, self.cnt
        n, out_n = eng.pes, eng.out_features
        fetch = ~self.o_valid | eng.o_act.ready
        for k in range(n):
            m.d.comb += [self.act_r[k].en.eq(fetch), self.act_r[k].addr.eq(addr(self.word))]
        with m.If(fetch):
            with m.If(cnt < out_n):
                m.d.sync += [self.o_valid.eq(1), self.o_sel.eq(self.sel), cnt.eq(cnt + 1)]
                self.next_word()
            with m.Else():
                m.d.sync += self.o_valid.eq(0)
        m.d.comb += eng.o_act.valid.eq(self.o_valid)
        with m.Switch(self.o_sel):
            for k in range(n):
                with m.Case(k):
                    m.d.comb += eng.o_act.payload.eq(self.act_r[k].data.as_signed())
        # the last word is delivered when cnt == out_n and it is taken
        with m.If(self.o_valid & eng.o_act.ready & (cnt == out_n)):
            m.d.sync += [self.run.eq(0), eng.busy.eq(0), cnt.eq(0), self.o_valid.eq(0)]
            last()


# ---- slot sequencer ------------------------------------------------------------------------


def slot_sequencer(m, queue, addr_bits: int, *, hold=None) -> SimpleNamespace:
    """s_ stage: one entry address per cycle over the queue head's range start..end-1.

    The next column is popped in the cycle the current one issues its last slot (no bubble).
    hold: while set nothing moves (the lockstep engine's hazard stall). Returns the stage's
    registers valid, first (first slot of its column), value, addr, end and `last`.
    """
    s = SimpleNamespace(valid=Signal(name="s_valid"), first=Signal(name="s_first"),
                        value=Signal(signed(16), name="s_value"),
                        addr=Signal(addr_bits, name="s_addr"),
                        end=Signal(addr_bits, name="s_end"), last=Signal(name="s_last"))
    m.d.comb += s.last.eq(s.valid & (s.addr + 1 == s.end))
    ready = ~s.valid | s.last
    m.d.comb += queue.o.ready.eq(ready if hold is None else ready & ~hold)
    take = queue.o.valid & queue.o.ready
    if hold is None:
        first_case = m.If(take)
    else:
        with m.If(hold):
            pass
        first_case = m.Elif(take)
    with first_case:
        m.d.sync += [s.valid.eq(1), s.first.eq(1), s.value.eq(queue.o.payload.value),
                     s.addr.eq(queue.o.payload.start), s.end.eq(queue.o.payload.end)]
    with m.Elif(s.last):
        m.d.sync += s.valid.eq(0)
    with m.Elif(s.valid):
        m.d.sync += [s.addr.eq(s.addr + 1), s.first.eq(0)]
    return s
