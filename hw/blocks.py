"""What both engines share: ports, limits, the output rule, LOAD/OUTPUT and counters, slots.

Both engines (`hw.eie.Engine`, queue per PE; `hw.lockstep.LockstepEngine`, the board's) keep a
layer's activations in N per-PE RAMs, column c in PE c % N at word c // N, take the input
vector on `i_act` and give the output vector on `o_act` in that order, count cycles the same
way and turn an accumulator into an int16 output by the same rule. These pieces live here once:

* `EngineSignature`: the ports of every engine.
* `EngineConfigError`, `check_fits`, `check_queue_depth`: the limits (the PE limit is the
  registry's, `images.engines.MAX_PES`, as are `bits` and `ceil_div`, `images.memmap`'s).
* `round_shift`, `saturate`, `post_process`: the output rule in Amaranth (docs/formats.md
  section 3). `compress.golden` keeps the numpy/torch form of the same rule: it is the
  reference the benches check this one against, so the two stay apart on purpose.
* `ActIO`: the LOAD and OUTPUT states (word/PE stepping, valid/ready) and the counters
  `cycles` / `layer_cycles` (the EIE engine: one input at a time).
* `BankedIO`: two input banks, a loader beside the engine's FSM, OUTPUT and the latched
  counters (the lockstep engine: the next input loads while the current one computes). Both
  send their outputs the same way (`_StreamOut`).
* `slot_sequencer`: one entry address per cycle over a queued column's range start..end-1.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from images.conv import FLAT, ConvGeom
from images.engines import MAX_PES, engine_of
from images.memmap import bits, ceil_div  # noqa: F401 (the engines' integer helpers)

from .queue import MAX_DEPTH


class EngineConfigError(ValueError):
    """The network does not fit the engine's parameters; the message names layer and limit."""


def check_fits(img, *, acc_bits: int = 32, max_width: int | None = None) -> None:
    """Raise EngineConfigError naming the layer and the limit if the network does not fit.

    img: an image of a registered engine (`images.engines`): pes, index_bits, layers with
    kind, codebook_size, in_features, out_features.
    """
    if not 1 <= img.pes <= MAX_PES:
        raise EngineConfigError(f"pes must be 1..{MAX_PES}, not {img.pes!r}")
    if not 17 <= acc_bits <= 64:
        raise EngineConfigError(f"acc_bits must be 17..64, not {acc_bits!r}")
    rec = engine_of(img)
    k = 1 << img.index_bits
    geoms = [ConvGeom(*rl.geom) if getattr(rl, "geom", ()) else None for rl in img.layers]
    for i, rl in enumerate(img.layers):
        if rl.kind not in rec.layer_kinds:
            raise EngineConfigError(f"l{i}: the {rec.name} engine runs "
                                    f"{', '.join(rec.layer_kinds)} layers, not {rl.kind!r}")
        if rl.codebook_size > k:
            raise EngineConfigError(
                f"l{i}: {rl.codebook_size} codebook entries exceed 2**index_bits = {k}")
        g = geoms[i]
        if g is not None and g.src == FLAT and img.pes & (img.pes - 1):
            raise EngineConfigError(f"l{i}: a conv layer reading the input map needs a "
                                    f"power-of-two PE count, not {img.pes}")
        if max_width is not None:
            # the maps the activation buffers hold: a layer's input and output values
            if g is not None:
                sizes = (g.c * g.h * g.w, g.out_ch * g.hp * g.wp)
            elif i and geoms[i - 1] is not None:
                sizes = (geoms[i - 1].out_ch * geoms[i - 1].hp * geoms[i - 1].wp,
                         rl.out_features)
            else:
                sizes = (rl.in_features, rl.out_features)
            for what, w in zip(("inputs", "outputs"), sizes):
                if w > max_width:
                    raise EngineConfigError(
                        f"l{i}: {w} {what} exceed the activation buffers of {max_width} words")


def check_queue_depth(queue_depth) -> None:
    if not isinstance(queue_depth, int) or not 1 <= queue_depth <= MAX_DEPTH:
        raise EngineConfigError(
            f"queue_depth must be an integer 1..{MAX_DEPTH}, not {queue_depth!r}")


def io_shape(lanes: int = 1):
    """The payload of i_act and o_act: an int16 word, or `lanes` of them a beat (lane j is
    word j of the beat: a vector's words in order, the last beat padded)."""
    return signed(16) if lanes == 1 else data.ArrayLayout(signed(16), lanes)


class EngineSignature(wiring.Signature):
    """The ports of every engine, seen from the engine.

    i_act: input activations, in_0 int16 words in column order (valid/ready), `lanes` words a
    beat (`io_shape`).
    o_act: output activations, out_{L-1} int16 words in row order (valid/ready), likewise.
    cycles: first input word accepted -> last output word delivered, inclusive.
    layer_cycles: per layer, the cycles the engine spent on it (each engine says which).
    busy: between the first input word and the last output word.
    """

    def __init__(self, num_layers: int, lanes: int = 1):
        self.num_layers = num_layers
        self.lanes = lanes
        super().__init__({
            "i_act": In(stream.Signature(io_shape(lanes))),
            "o_act": Out(stream.Signature(io_shape(lanes))),
            "cycles": Out(32),
            "layer_cycles": Out(data.ArrayLayout(32, num_layers)),
            "busy": Out(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and other.num_layers == self.num_layers
                and other.lanes == self.lanes)

    def __hash__(self):
        return hash((type(self), self.num_layers, self.lanes))

    def __repr__(self):
        return (f"EngineSignature({self.num_layers})" if self.lanes == 1
                else f"EngineSignature({self.num_layers}, lanes={self.lanes})")


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


def post_process_var(acc, shift, relu):
    """The output rule with the shift and ReLU known only at run time (a loadable engine's
    layer table): `shift` an unsigned value 0..62, `relu` one bit; an int16 expression. The
    pieces of `round_shift` from an arithmetic shift: acc >> shift cut to 17 bits, the rounding
    bit acc[shift - 1] (acc's sign past its top bit; none for shift 0), and whether acc >> shift
    fits 17 bits (its bits from 16 up all equal)."""
    acc_s = acc.as_signed()
    shift = shift.as_unsigned()
    sh = acc_s >> shift
    top = sh >> 16
    fits = (top == 0) | (top == -1)
    r = Mux(shift == 0, 0, (acc_s >> (shift - 1).as_unsigned())[0])
    return saturate(sh[:17], r, fits, acc_s[-1], relu)


# ---- input/output of the activation RAMs and the counters -------------------------------------


class _StreamOut:
    """What `ActIO` and `BankedIO` share: the PE and word of the current row (`sel`, `word`,
    stepped by `next_word`) and the body of the OUTPUT state (`_send`). Built into the engine's
    module `m`; `act_r` are the PEs' activation read ports, `cnt` counts output words.

    With `lanes` words a beat (a divisor of the PEs) a beat is the rows sel .. sel + lanes - 1
    of word `word`: one read of each of those PEs' RAMs, and `sel` steps by `lanes`."""

    lanes = 1
    out_n = None  # the output words (default: the engine's out_features)

    out_block = 0  # > 0: outputs in CHAN order, `out_block` words a channel (a conv layer's)

    def next_word(self, out: bool = False) -> None:
        """The next input word, or output word (`out`): PE by PE then word (FLAT), or for a
        conv last layer word by word in a channel's block, then PE, then channel group (one
        word a beat: the engine refuses lanes > 1 with a conv last layer)."""
        m, w = self.m, self.lanes
        if out and self.out_block:
            assert w == 1, "CHAN output order is one word a beat"
            blk = self.out_block
            with m.If(self._o_s == blk - 1):
                m.d.sync += self._o_s.eq(0)
                with m.If(self.sel == self.eng.pes - 1):
                    m.d.sync += [self.sel.eq(0), self._o_cg.eq(self._o_cg + blk),
                                 self.word.eq(self._o_cg + blk)]
                with m.Else():
                    m.d.sync += [self.sel.eq(self.sel + 1), self.word.eq(self._o_cg)]
            with m.Else():
                m.d.sync += [self._o_s.eq(self._o_s + 1), self.word.eq(self.word + 1)]
            return
        with m.If(self.sel == self.eng.pes - w):
            m.d.sync += [self.sel.eq(0), self.word.eq(self.word + 1)]
        with m.Else():
            m.d.sync += self.sel.eq(self.sel + w)

    def _out_order(self, out_block: int) -> None:
        """Counters of the CHAN output order (`next_word`), for a conv last layer."""
        self.out_block = out_block
        if out_block:
            self._o_s = Signal(range(max(out_block, 2)), name="o_s")
            self._o_cg = Signal.like(self.word, name="o_cg")

    def reset_out(self) -> list:
        """What restarts the output order (with sel and word set to 0)."""
        if self.out_block:
            return [self._o_s.eq(0), self._o_cg.eq(0)]
        return []

    def _send(self, addr):
        """Row `cnt` from PE `sel` at `addr()` to `o_act`; reads run a word ahead of `o_act`
        (the RAMs' read latency). Returns "the last output word is taken this cycle"."""
        m, eng, cnt, w = self.m, self.eng, self.cnt, self.lanes
        n = eng.pes
        out_n = eng.out_features if self.out_n is None else self.out_n
        fetch = ~self.o_valid | eng.o_act.ready
        for k in range(n):
            m.d.comb += [self.act_r[k].en.eq(fetch), self.act_r[k].addr.eq(addr())]
        with m.If(fetch):
            with m.If(cnt < out_n):
                m.d.sync += [self.o_valid.eq(1), self.o_sel.eq(self.sel), cnt.eq(cnt + w)]
                self.next_word(out=True)
            with m.Else():
                m.d.sync += self.o_valid.eq(0)
        m.d.comb += eng.o_act.valid.eq(self.o_valid)
        with m.Switch(self.o_sel):
            for k in range(0, n, w):
                with m.Case(k):
                    if w == 1:
                        m.d.comb += eng.o_act.payload.eq(self.act_r[k].data.as_signed())
                    else:
                        m.d.comb += [eng.o_act.payload[j].eq(self.act_r[k + j].data.as_signed())
                                     for j in range(w)]
        # the last word is delivered when cnt has reached out_n and it is taken (several words a
        # beat can step past it; one a beat keeps the equality the bitstreams were built with)
        return self.o_valid & eng.o_act.ready & ((cnt == out_n) if w == 1 else (cnt >= out_n))


class ActIO(_StreamOut):
    """LOAD, OUTPUT and the counters of an engine, built into its module `m`.

    eng: the engine (its `i_act`, `o_act`, `busy`, `pes`, `act_words`, `in_features`,
    `out_features`); act_r/act_w: the read/write port of every PE's activation RAM; cyc, lc:
    where `cycles` and `layer_cycles` count (the ports themselves, or copies the engine moves
    to the ports at the end); cnt_limit: the largest count the engine's own states need;
    out_block: the words of one channel of a conv last layer's output (its outputs are then
    read in CHAN order, `images.conv`), 0 for fc.

    `run` is set from the first input word to the last output word; `cnt` counts words, `sel`
    and `word` are the PE and word of the current column or row.

    lanes: words a beat on i_act and o_act (a divisor of the PEs; `EngineSignature`);
    in_n, out_n: the input and output words, when the engine knows them only at run time (a
    loadable engine's layer table; default: its in_features and out_features); max_words:
    the most either can be.
    """

    def __init__(self, m, eng, *, act_r, act_w, cyc, lc, cnt_limit: int, lanes: int = 1,
                 in_n=None, out_n=None, max_words: int | None = None, out_block: int = 0):
        self.m = m
        self.eng = eng
        self.act_r = act_r
        self.act_w = act_w
        self.cyc = cyc
        self.lc = lc
        self.lanes = lanes
        self.in_n = eng.in_features if in_n is None else in_n
        self.out_n = eng.out_features if out_n is None else out_n
        n = eng.pes
        top = max(eng.in_features, eng.out_features) if max_words is None else max_words
        self.run = Signal()
        self.cnt = Signal(range(max(top + lanes, cnt_limit, 2) + 2))
        self.sel = Signal(range(max(n, 2)))  # PE of the current word
        self.word = Signal(range(max(eng.act_words, 2) + 1))  # word within the PE
        self.o_valid = Signal()
        self.o_sel = Signal.like(self.sel)
        self._out_order(out_block)
        with m.If(self.run):
            m.d.sync += cyc.eq(cyc + 1)

    def count_layer(self, layer) -> None:
        self.m.d.sync += self.lc[layer].eq(self.lc[layer] + 1)

    def load(self, addr, last) -> None:
        """The body of the LOAD state: word `cnt` of `i_act` into PE `sel` at `addr(word)`.

        `last()` runs in the cycle the last input word is taken.
        """
        m, eng, cnt, w = self.m, self.eng, self.cnt, self.lanes
        m.d.comb += eng.i_act.ready.eq(1)
        for k in range(eng.pes):
            word = eng.i_act.payload if w == 1 else eng.i_act.payload[k % w]
            mine = (self.sel == k) if w == 1 else (self.sel == k - k % w)
            m.d.comb += [self.act_w[k].addr.eq(addr(self.word)),
                         self.act_w[k].data.eq(word),
                         self.act_w[k].en.eq(eng.i_act.valid & mine)]
        with m.If(eng.i_act.valid):
            with m.If(cnt == 0):
                m.d.sync += [self.run.eq(1), self.cyc.eq(1), eng.busy.eq(1)]
                for i in range(eng.num_layers):
                    m.d.sync += self.lc[i].eq(0)
            m.d.sync += cnt.eq(cnt + w)
            self.next_word()
            with m.If(cnt + w >= self.in_n):
                last()

    def output(self, addr, last) -> None:
        """The body of the OUTPUT state: row `cnt` from PE `sel` at `addr(word)` to `o_act`.

        `last()` runs in the cycle the last output word is taken, after `run`, `busy`, `cnt`
        and `o_valid` are cleared.
        """
        m, eng = self.m, self.eng
        with m.If(self._send(lambda: addr(self.word))):
            m.d.sync += [self.run.eq(0), eng.busy.eq(0), self.cnt.eq(0), self.o_valid.eq(0)]
            last()


class BankedIO(_StreamOut):
    """Two input banks: the next input loads while the current one computes (lockstep engine).

    Built into the engine's module `m`. Every PE's activation RAM holds two banks, bank b at
    word b << `bank_bits` (`images.lockstep.act_depth`). A loader that runs beside the
    engine's FSM takes `i_act` words into bank `lb` whenever that bank is free (`full[lb]` low)
    and the write port of the PE its next word goes to is not taken by the engine (`wfree`,
    a bit per PE, which the engine drives one cycle ahead: a drain that writes some PEs leaves
    the others' ports to the loader); the last word marks the bank full and moves to the
    other bank. The
    engine computes in bank `cb` (`cb_full` says it may start), reads its outputs from it
    (`output`) and frees it with the last output word.

    Counters, latched at the last output word of inference k and valid from the next cycle
    until the last output word of inference k + 1:

    * `cycles`: from the later of k's first input word accepted and the cycle after k - 1's last
      output word, to k's last output word, inclusive. One at a time (the next input sent
      after the last output) that is first input word -> last output word; back to back it is
      the interval between two results, so a stream's cycles add up to its length.
    * `layer_cycles[i]`: the engine's own count of layer i (narrow counters of `lc_bits`,
      reset when inference k starts computing).
    * `busy`: from a first input word until the last output word of the last inference in
      flight.

    act_r/act_w: each PE's activation read/write port; bank_bits: word bits of a bank;
    lc_bits: width of the per-layer counters (enough for the engine's longest layer);
    cnt_limit: the largest count the engine's own states need from `cnt`; out_base: the
    output map's first word in the bank; out_block: the words of one channel of a conv last
    layer's output (read in CHAN order), 0 for fc; nz_groups: the loader also keeps, per bank,
    the first word (group) with a non-zero input and one past the last (`nz_first`,
    `nz_end`: word 0 and 1 for an all-zero input), so layer 0's front end reads only those.
    """

    def __init__(self, m, eng, *, act_r, act_w, bank_bits: int, lc_bits: int, cnt_limit: int,
                 out_base: int = 0, out_block: int = 0, low_words: int | None = None,
                 nz_groups: bool = False):
        self.m = m
        self.eng = eng
        self.act_r = act_r
        self.act_w = act_w
        self.bank_bits = bank_bits
        self.out_base = out_base
        # not None: the engine writes layer outputs top down (row r at the bank's word
        # 2**bank_bits - 1 - r; `output` reads them so) and, once layer 0 has read the input,
        # gives the loader the bank's words below `low_words` (`free_low`); the rest with the
        # last output word
        self.low_words = low_words
        n, L = eng.pes, eng.num_layers
        self.cnt = Signal(range(max(eng.out_features, cnt_limit, 2) + 2), name="io_cnt")
        self.sel = Signal(range(max(n, 2)), name="io_sel")  # PE of the output word
        self.word = Signal(range(max(eng.act_words, 2) + 1), name="io_word")
        self.o_valid = Signal(name="io_o_valid")
        self.o_sel = Signal.like(self.sel, name="io_o_sel")
        self._out_order(out_block)
        self.cb = Signal(name="cb")  # the bank the engine computes in
        self.lb = Signal(name="lb")  # the bank the loader fills
        self.full = Signal(2, name="full")
        # bank b's words from low_words up are still the engine's (its input freed early)
        self.part = Signal(2, name="part")
        self.cb_full = Signal(name="cb_full")
        m.d.comb += self.cb_full.eq(self.full.bit_select(self.cb, 1))
        # PE k's write port is the loader's this cycle (bit k)
        self.wfree = Signal(n, init=(1 << n) - 1, name="wfree")
        self.run = Signal(name="run")
        self.cyc = Signal(32, name="cyc")
        self.lcn = [Signal(lc_bits, name=f"lcn{i}") for i in range(L)]
        m.d.comb += eng.busy.eq(self.run)
        with m.If(self.run):
            m.d.sync += self.cyc.eq(self.cyc + 1)
        self.nz_groups = nz_groups
        self._loader()

    def addr(self, bank, word):
        return Cat(word[: self.bank_bits], bank)

    def _loader(self) -> None:
        m, eng, n = self.m, self.eng, self.eng.pes
        lcnt = Signal(range(max(eng.in_features, 2)), name="l_cnt")
        lsel = Signal(range(max(n, 2)), name="l_sel")
        lword = Signal.like(self.word, name="l_word")
        # lword < low_words, a flip-flop set where lword changes (not a compare on `ready`)
        low_ok = Signal(init=1, name="l_low_ok")
        lw = self.low_words if self.low_words is not None else 1 << len(lword)
        m.d.comb += eng.i_act.ready.eq(~self.full.bit_select(self.lb, 1)
                                       & self.wfree.bit_select(lsel, 1)
                                       & (~self.part.bit_select(self.lb, 1) | low_ok))
        take = eng.i_act.valid & eng.i_act.ready
        self.take, self.lcnt = take, lcnt  # (the engine's: a take that fills the bank)
        for k in range(n):  # default use of the write ports (the engine's drain overrides)
            m.d.comb += [self.act_w[k].addr.eq(self.addr(self.lb, lword)),
                         self.act_w[k].data.eq(eng.i_act.payload),
                         self.act_w[k].en.eq(take & (lsel == k))]
        self.first = first = Signal(name="l_first")  # the first word of an input, this cycle
        m.d.comb += first.eq(take & (lcnt == 0))
        self.loading = lcnt != 0
        with m.If(first & ~self.run):
            m.d.sync += [self.run.eq(1), self.cyc.eq(1)]
        if self.nz_groups:
            self._nz_groups(take, first, lword)
        with m.If(take):
            m.d.sync += lcnt.eq(lcnt + 1)
            with m.If(lsel == n - 1):
                m.d.sync += [lsel.eq(0), lword.eq(lword + 1), low_ok.eq(lword + 1 < lw)]
            with m.Else():
                m.d.sync += lsel.eq(lsel + 1)
            with m.If(lcnt == eng.in_features - 1):
                m.d.sync += [lcnt.eq(0), lsel.eq(0), lword.eq(0), self.lb.eq(~self.lb),
                             low_ok.eq(lw > 0)]
                with m.If(self.lb):
                    m.d.sync += self.full[1].eq(1)
                with m.Else():
                    m.d.sync += self.full[0].eq(1)

    def _nz_groups(self, take, first, lword) -> None:
        """Per bank: the first word with a non-zero input word and one past the last, kept as
        the loader writes them (the words of bank `cb`: `nz_first`, `nz_end`)."""
        m, eng = self.m, self.eng
        f = [Signal.like(lword, name=f"nz_first{b}") for b in range(2)]
        e = [Signal.like(lword, name=f"nz_end{b}") for b in range(2)]
        seen = [Signal(name=f"nz_seen{b}") for b in range(2)]
        nz = eng.i_act.payload != 0
        for b in range(2):
            with m.If(take & (self.lb == b)):
                with m.If(first):  # word 0: the first group until a non-zero one comes
                    m.d.sync += [seen[b].eq(nz), f[b].eq(0), e[b].eq(1)]
                with m.Elif(nz):
                    m.d.sync += e[b].eq(lword + 1)
                    with m.If(~seen[b]):
                        m.d.sync += [seen[b].eq(1), f[b].eq(lword)]
        self.nz_first = Mux(self.cb, f[1], f[0])
        self.nz_end = Mux(self.cb, e[1], e[0])

    def start(self) -> None:
        """In the cycle the engine starts computing bank `cb` (its layer counters restart)."""
        self.m.d.sync += [c.eq(0) for c in self.lcn]

    def free_low(self) -> None:
        """With `low_words`: layer 0 has read bank `cb`'s input: the loader may refill the
        words below `low_words` (the later layers' outputs are above them)."""
        assert self.low_words is not None
        with self.m.If(self.cb):
            self.m.d.sync += [self.full[1].eq(0), self.part[1].eq(1)]
        with self.m.Else():
            self.m.d.sync += [self.full[0].eq(0), self.part[0].eq(1)]

    def out_addr(self):
        """The activation address of output word `word` (rows top down with `low_words`)."""
        if self.low_words is None:
            return self.addr(self.cb, self.word)
        return Cat(~self.word[: self.bank_bits], self.cb)

    def count_layer(self, layer) -> None:
        lcn = Array(self.lcn)
        self.m.d.sync += lcn[layer].eq(lcn[layer] + 1)

    def output(self, last) -> None:
        """The body of the OUTPUT state: row `cnt` of bank `cb` from PE `sel` to `o_act`.

        `last()` runs in the cycle the last output word is taken: bank `cb` is freed, the
        counters latched.
        """
        m, eng, cnt = self.m, self.eng, self.cnt
        base = self.out_base
        with m.If(self._send(self.out_addr if self.low_words is not None else
                             lambda: self.addr(self.cb, self.word + base if base
                                               else self.word))):
            m.d.sync += [cnt.eq(0), self.o_valid.eq(0), self.sel.eq(0), self.word.eq(0),
                         self.cb.eq(~self.cb), eng.cycles.eq(self.cyc + 1)]
            m.d.sync += self.reset_out()
            m.d.sync += [eng.layer_cycles[i].eq(c) for i, c in enumerate(self.lcn)]
            # the bank is the loader's (with low_words: its input words are already)
            clear = self.full if self.low_words is None else self.part
            with m.If(self.cb):
                m.d.sync += clear[1].eq(0)
            with m.Else():
                m.d.sync += clear[0].eq(0)
            # another input already (partly) in: its count starts with the next cycle
            other = self.full.bit_select(~self.cb, 1)
            with m.If(other | self.loading | self.first):
                m.d.sync += self.cyc.eq(0)
            with m.Else():
                m.d.sync += self.run.eq(0)
            last()


# ---- slot sequencer ------------------------------------------------------------------------


def slot_sequencer(m, queue, addr_bits: int, *, hold=None, sub_bits: int = 0,
                   last_reg: bool = False) -> SimpleNamespace:
    """s_ stage: one entry address per cycle over the queue head's range start..end-1.

    The next column is popped in the cycle the current one issues its last slot (no bubble).
    hold: while set nothing moves (the lockstep engine's hazard stall). Returns the stage's
    registers valid, first (first slot of its column), value, addr, end and `last` (and sub,
    the column's sub-position, with `sub_bits`: conv layers, `images.conv`). last_reg: `last`
    from a flip-flop set a cycle ahead (start + 1 == end when a column is taken, addr + 2 ==
    end when it steps), not the carry chain of addr + 1 == end in front of the pop (the
    lockstep board's critical path at 92 % of its logic cells); the same cycle for cycle.
    """
    s = SimpleNamespace(valid=Signal(name="s_valid"), first=Signal(name="s_first"),
                        value=Signal(signed(16), name="s_value"),
                        addr=Signal(addr_bits, name="s_addr"),
                        end=Signal(addr_bits, name="s_end"), last=Signal(name="s_last"),
                        sub=Signal(max(1, sub_bits), name="s_sub"))
    if last_reg:
        last_r = Signal(name="s_last_r")  # == valid & (addr + 1 == end), kept so below
        m.d.comb += s.last.eq(last_r)
    else:
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
        if sub_bits:
            m.d.sync += s.sub.eq(queue.o.payload.sub)
        if last_reg:
            m.d.sync += last_r.eq(queue.o.payload.start + 1 == queue.o.payload.end)
    with m.Elif(s.last):
        m.d.sync += s.valid.eq(0)
        if last_reg:
            m.d.sync += last_r.eq(0)
    with m.Elif(s.valid):
        m.d.sync += [s.addr.eq(s.addr + 1), s.first.eq(0)]
        if last_reg:
            m.d.sync += last_r.eq(s.addr + 2 == s.end)
    return s
