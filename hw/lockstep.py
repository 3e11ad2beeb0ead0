"""The lockstep engine: N PEs on one column at a time, so every memory has one address.

This is the engine the iCE40UP5K board uses for 8 PEs (see docs/lockstep.md).
The queue-based EIE engine (`hw.engine`) lets every PE run on its own, which needs a memory port
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
  after them) and one activation RAM (`pe{k}.act`, one bank: a layer's outputs overwrite its
  inputs, the drain runs after the layer's compute has finished). Codebooks are constants in
  logic.

Per inference: LOAD (in_0 words from `i_act`) -> per layer PRELOAD (biases copied into the
accumulator rows through the MAC pipeline, product forced to 0; layer 0's before LOAD) ->
COMPUTE (front end -> pointer stage -> queue -> slot sequencer -> PEs) -> DRAIN (one output
stage per `drain_share` PEs, pipelined, into the activation RAMs) -> OUTPUT (out_{L-1} words
to `o_act` in row order, valid/ready).

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

Ports and counters are those of `hw.engine.Engine` (`i_act`, `o_act`, `cycles`,
`layer_cycles`, `busy`); `layer_cycles[i]` counts layer i's PRELOAD (not layer 0's), COMPUTE
and DRAIN cycles.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring

from images.lockstep import LockstepImage

from .engine import EngineConfigError, check_fits, engine_ports
from .frontend import FrontEnd
from .memory import MemoryFactory, MemorySpec
from .queue import ActQueue


def _bits(n: int) -> int:
    """Bits of an unsigned counter that holds 0..n."""
    return max(1, int(n).bit_length())


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def output_stage(acc, shift: int, acc_bits: int):
    """docs/formats.md section 3 pieces for one layer: (q17, r, fits).

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


class LockstepEngine(wiring.Component):
    def __init__(self, img: LockstepImage, *, acc_bits: int = 32, queue_depth: int = 2,
                 drain_share: int = 1, memories: MemoryFactory | None = None,
                 max_width: int | None = None):
        try:
            if drain_share not in (1, 2, 4, 8, 16):
                raise EngineConfigError(
                    f"drain_share must be 1, 2, 4, 8 or 16, not {drain_share!r}")
            if not isinstance(queue_depth, int) or not 1 <= queue_depth <= 64:
                raise EngineConfigError(
                    f"queue_depth must be an integer 1..64, not {queue_depth!r}")
            check_fits(img, acc_bits=acc_bits, max_width=max_width)  # same limits as the EIE's
        except EngineConfigError:
            self._MustUse__silence = True  # refused: not an unused elaboratable
            raise
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
        self.max_width = max(widths)
        self.act_words = max(_ceil_div(w, n) for w in widths)
        self.max_rows = max(ll.rows_per_pe for ll in img.layers)
        self.col_bits = _bits(self.max_width)
        self.row_bits = _bits(self.act_words)
        self.ptr_bits = _bits(img.num_slots)

        e = img.entry_bits
        S = max(1, img.num_slots)
        self.lane_specs = []
        for j, words in enumerate(img.lanes()):
            width = e * min(2, n - 2 * j)
            init = tuple(int(w) for w in words) or (0,)
            self.lane_specs.append(MemorySpec(f"lane{j}", "rom", width, S, init))
        ptr = [int(p) for p in img.col_ptr]
        self.ptr_specs = [
            MemorySpec("colptr_even", "rom", self.ptr_bits, max(1, len(ptr[0::2])),
                       tuple(ptr[0::2])),
            MemorySpec("colptr_odd", "rom", self.ptr_bits, max(1, len(ptr[1::2])),
                       tuple(ptr[1::2]) or (0,)),
        ]
        mask = (1 << acc_bits) - 1
        R = self.max_rows
        self.acc_specs = [
            MemorySpec(f"pe{k}.acc", "ram", acc_bits, R + img.bias.shape[1],
                       tuple([0] * R + [int(b) & mask for b in img.bias[k]]),
                       read_ports=1, write_ports=1)
            for k in range(n)
        ]
        self.act_specs = [
            MemorySpec(f"pe{k}.act", "ram", 16, self.act_words, (), read_ports=1, write_ports=1)
            for k in range(n)
        ]
        super().__init__(engine_ports(L))

    @property
    def memory_specs(self) -> list[MemorySpec]:
        return self.lane_specs + self.ptr_specs + self.acc_specs + self.act_specs

    def elaborate(self, platform):
        m = Module()
        img = self.img
        n = self.pes
        L = self.num_layers
        A = self.acc_bits
        R = self.max_rows
        ib = img.index_bits
        e_bits = img.entry_bits
        pb = self.ptr_bits
        in0 = self.in_features
        outL = self.out_features

        lanes = [self.memories(m, s).read[0] for s in self.lane_specs]
        pev, pod = (self.memories(m, s).read[0] for s in self.ptr_specs)
        accs = [self.memories(m, s) for s in self.acc_specs]
        acc_r = [a.read[0] for a in accs]
        acc_w = [a.write[0] for a in accs]
        acts = [self.memories(m, s) for s in self.act_specs]
        act_r = [a.read[0] for a in acts]
        act_w = [a.write[0] for a in acts]

        layer = Signal(range(max(L, 2)))

        def table(values, width):
            vals = [int(v) for v in values]
            return Array(Const(v, unsigned(width)) for v in vals + [0] * (max(L, 2) - len(vals)))

        in_t = table([ll.in_features for ll in img.layers], self.col_bits)
        grp_t = table([_ceil_div(ll.in_features, n) for ll in img.layers], self.row_bits + 1)
        rows_t = table([ll.rows_per_pe for ll in img.layers], self.row_bits + 1)
        col_base_t = table([ll.col_base for ll in img.layers], _bits(len(img.col_ptr)))
        bias_t = table([R + ll.bias_base for ll in img.layers], _bits(R + img.bias.shape[1]))

        # ---- front end: non-zero activations of the layer, one per cycle ------------------
        m.submodules.fe = fe = FrontEnd(pes=n, col_bits=self.col_bits,
                                        group_bits=self.row_bits, sparse=True)
        m.d.comb += [fe.in_features.eq(in_t[layer]), fe.groups.eq(grp_t[layer]),
                     fe.avail.eq((1 << len(fe.avail)) - 1)]
        for k in range(n):
            m.d.comb += fe.rd_data[k].eq(act_r[k].data.as_signed())

        # ---- pointer stage: ptr[g], ptr[g + 1] of global column g; empty columns dropped ----
        depth = self.queue_depth
        m.submodules.queue = queue = ActQueue(
            data.StructLayout({"value": signed(16), "start": pb, "end": pb}), depth=depth)
        p_valid = Signal()
        p_odd = Signal()
        p_value = Signal(signed(16))
        # credit: the column in the pointer stage always finds a queue slot
        m.d.comb += fe.o.ready.eq(queue.level + p_valid < depth)
        p_g = Signal(_bits(len(img.col_ptr)) + 1)
        m.d.comb += [p_g.eq(col_base_t[layer] + fe.o.payload.col),
                     pev.addr.eq((p_g + 1) >> 1), pod.addr.eq(p_g >> 1)]
        m.d.sync += [p_valid.eq(fe.o.valid & fe.o.ready), p_odd.eq(p_g[0]),
                     p_value.eq(fe.o.payload.value)]
        p_start = Mux(p_odd, pod.data, pev.data)
        p_end = Mux(p_odd, pev.data, pod.data)
        m.d.comb += [queue.i.valid.eq(p_valid & (p_start != p_end)),
                     queue.i.payload.value.eq(p_value),
                     queue.i.payload.start.eq(p_start), queue.i.payload.end.eq(p_end)]

        # ---- s_: slot sequencer, one slot per cycle, next column popped on the last slot ----
        s_valid = Signal()
        s_first = Signal()
        s_value = Signal(signed(16))
        s_addr = Signal(pb)
        s_end = Signal(pb)
        s_last = Signal()
        # hold: in the last cycle some PE's e_ slot read the accumulator row its m_ slot wrote
        # at the same clock edge (the read missed that write: back-to-back hits on one row,
        # which happen only across a column boundary). That slot is now in m_ with a stale
        # word: for one cycle nothing moves and nothing is written, its row is read again, and
        # the next cycle it goes on with the right word. `hold` is a register (the hazard is
        # found the cycle before), so what it stops (every slot register, the queue, the four
        # SPRAMs' chip selects) is driven from a flip-flop, not from the lane data.
        hz = Signal()  # the hazard, this cycle
        hold = Signal()
        m.d.sync += hold.eq(hz & ~hold)
        m.d.comb += s_last.eq(s_valid & (s_addr + 1 == s_end))
        m.d.comb += queue.o.ready.eq((~s_valid | s_last) & ~hold)
        with m.If(hold):
            pass
        with m.Elif(queue.o.valid & queue.o.ready):
            m.d.sync += [s_valid.eq(1), s_first.eq(1), s_value.eq(queue.o.payload.value),
                         s_addr.eq(queue.o.payload.start), s_end.eq(queue.o.payload.end)]
        with m.Elif(s_last):
            m.d.sync += s_valid.eq(0)
        with m.Elif(s_valid):
            m.d.sync += [s_addr.eq(s_addr + 1), s_first.eq(0)]
        for lp in lanes:
            m.d.comb += [lp.addr.eq(s_addr), lp.en.eq(~hold)]

        # ---- shared control of the e_ and m_ stages ----------------------------------------
        e_valid = Signal()  # a slot's entries are on the lane outputs
        e_first = Signal()
        e_value = Signal(signed(16))
        with m.If(~hold):
            m.d.sync += [e_valid.eq(s_valid), e_first.eq(s_first), e_value.eq(s_value)]
        pre_valid = Signal()  # PRELOAD: copy bias row pre_row into accumulator row pre_row
        pre_row = Signal(self.row_bits + 1)
        drn_valid = Signal()  # DRAIN: read accumulator row drn_row
        drn_row = Signal(self.row_bits + 1)
        m_value = Signal(signed(16))
        with m.If(~hold):
            m.d.sync += m_value.eq(e_value)
        drn_t = Signal(range(max(self.drain_share, 2)))  # member of the output stage's group
        y_valid = Signal()  # member y_t's output is on y, to be written at word y_row
        y_row = Signal.like(drn_row)
        y_t = Signal.like(drn_t)
        y_en = [Signal(name=f"y_en{k}") for k in range(n)]
        m.d.sync += [y_valid.eq(drn_valid), y_row.eq(drn_row), y_t.eq(drn_t)]
        # the output stage is pipelined (d2_: the member's accumulator word registered, d3_:
        # its output registered), so the accumulator read, the output stage and the activation
        # write are three short paths, not one (the board's critical path: 46 ns)
        d2_valid, d3_valid = Signal(), Signal()
        d2_row, d3_row = Signal.like(drn_row), Signal.like(drn_row)
        d2_t, d3_t = Signal.like(drn_t), Signal.like(drn_t)
        m.d.sync += [d2_valid.eq(y_valid), d2_row.eq(y_row), d2_t.eq(y_t),
                     d3_valid.eq(d2_valid), d3_row.eq(d2_row), d3_t.eq(d2_t)]
        m_any = Signal()  # some PE has a write in the m_ stage (for the idle check)

        # codebook: weight = codebook[layer][v] as logic (constants of the network), indexed by
        # Cat(v, layer) (no adder in front of the table: about 10 fewer LUTs per PE)
        K = 1 << ib
        cb_vals = [int(ll.codebook[v]) for ll in img.layers for v in range(K)]
        cb_consts = Array(Const(c, signed(16))
                          for c in cb_vals + [0] * (K * (1 << len(layer)) - len(cb_vals)))
        # the accumulator address of PRELOAD and DRAIN is the same in every PE
        ctl_valid = Signal()
        ctl_addr = Signal(_bits(R + img.bias.shape[1]))
        m.d.comb += [ctl_valid.eq(drn_valid | pre_valid),
                     ctl_addr.eq(Mux(drn_valid, drn_row, bias_t[layer] + pre_row))]

        # the output stage's per-layer pieces are selected by the layer register
        ys = [Signal(signed(16), name=f"y{k}") for k in range(n)]
        row_w = _bits(R + (1 << img.rel_bits))
        m_hits = []
        hazards = []
        for k in range(n):
            lane = lanes[k // 2].data
            ent = lane[(k % 2) * e_bits: (k % 2 + 1) * e_bits]
            e_v = Signal(ib, name=f"e_v{k}")
            m.d.comb += e_v.eq(Mux(e_valid, ent[:ib], 0))  # v = 0 outside COMPUTE: weight 0
            e_z = ent[ib:]
            e_row = Signal(row_w, name=f"e_row{k}")
            row_reg = Signal(row_w, name=f"row{k}")
            m.d.comb += e_row.eq(Mux(e_first, 0, row_reg + 1) + e_z)
            with m.If(e_valid & ~hold):
                m.d.sync += row_reg.eq(e_row)
            e_hit = e_valid & (e_v != 0)
            m_hit = Signal(name=f"m_hit{k}")
            m_row = Signal(row_w, name=f"m_row{k}")
            m_w = Signal(signed(16), name=f"m_w{k}")
            # accumulator read: compute row (the m_ slot's again during a hold), bias row
            # (PRELOAD) or drained row (DRAIN)
            m.d.comb += acc_r[k].addr.eq(Mux(ctl_valid, ctl_addr, Mux(hold, m_row, e_row)))
            # DRAIN reads a row once; the read port holds it while the group's members go out
            m.d.comb += acc_r[k].en.eq(~drn_valid | (drn_t == 0))

            with m.If(~hold):
                m.d.sync += [m_hit.eq(e_hit | pre_valid),
                             m_row.eq(Mux(pre_valid, pre_row, e_row)),
                             m_w.eq(cb_consts[Cat(e_v, layer)])]
            m_hits.append(m_hit)
            # The hazard e_hit & m_hit & (e_row == m_row), without the row adder: m_row is
            # row_reg when m_hit during COMPUTE, and inside a column a hit's row is above its
            # predecessor's, so only the first slot of a column, whose row is its z, can hit
            # the row being written. Not during a hold (nothing is written then).
            hazards.append(e_valid & e_first & (ent[:ib] != 0) & m_hit & (row_reg == e_z))
            m_new = Signal(signed(A), name=f"m_new{k}")
            m.d.comb += m_new.eq(acc_r[k].data.as_signed() + m_w * m_value)  # wraps at acc_bits
            m.d.comb += [acc_w[k].addr.eq(m_row), acc_w[k].data.eq(m_new),
                         acc_w[k].en.eq(m_hit & ~hold)]

        m.d.comb += [m_any.eq(Cat(*m_hits).any()), hz.eq(Cat(*hazards).any())]

        # ---- output stages: one per `drain_share` PEs, member y_t of the group this cycle ----
        share = self.drain_share
        relu_t = Array(Const(int(ll.relu), 1) for ll in img.layers + [img.layers[-1]])
        for g in range(_ceil_div(n, share)):
            members = list(range(g * share, min(n, (g + 1) * share)))
            acc_sel = Signal(signed(A), name=f"o_sel{g}")
            with m.Switch(y_t):
                for t, k in enumerate(members):
                    with m.Case(t):
                        m.d.comb += acc_sel.eq(acc_r[k].data.as_signed())
            acc = Signal(signed(A), name=f"o_acc{g}")
            m.d.sync += acc.eq(acc_sel)
            q17 = Signal(signed(17), name=f"q{g}")
            rnd = Signal(name=f"rnd{g}")
            fits = Signal(name=f"fits{g}")
            with m.Switch(layer):
                for i, ll in enumerate(img.layers):
                    with m.Case(i):
                        q, r, f = output_stage(acc, ll.shift, A)
                        m.d.comb += [q17.eq(q), rnd.eq(r), fits.eq(f)]
            y18 = Signal(signed(18), name=f"y18_{g}")
            m.d.comb += y18.eq(q17 + rnd)
            neg = Mux(fits, y18[17], acc[-1])
            inrange = fits & ((y18[15:18] == 0) | (y18[15:18] == 0b111))
            y = Signal(signed(16), name=f"y{g}")
            with m.If(relu_t[layer] & neg):
                m.d.comb += y.eq(0)
            with m.Elif(inrange):
                m.d.comb += y.eq(y18[:16])
            with m.Elif(neg):
                m.d.comb += y.eq(-32768)
            with m.Else():
                m.d.comb += y.eq(32767)
            y_reg = Signal(signed(16), name=f"y_reg{g}")
            m.d.sync += y_reg.eq(y)
            for t, k in enumerate(members):
                m.d.comb += ys[k].eq(y_reg)
                m.d.comb += y_en[k].eq(d3_valid & (d3_t == t))

        # ---- sequencing --------------------------------------------------------------------
        run = Signal()
        # the counters count in place (no second copy): they hold the last inference from its
        # last output word until the first input word of the next
        cyc = self.cycles
        lc = self.layer_cycles
        cnt = Signal(range(max(in0, outL, R * self.drain_share + 2, 2) + 2))
        sel = Signal(range(max(n, 2)))
        word = Signal(range(max(self.act_words, 2) + 1))
        o_valid = Signal()
        o_sel = Signal.like(sel)
        fe_done = Signal()
        with m.If(run):
            m.d.sync += cyc.eq(cyc + 1)

        def count_layer():
            m.d.sync += lc[layer].eq(lc[layer] + 1)

        def next_word():
            with m.If(sel == n - 1):
                m.d.sync += [sel.eq(0), word.eq(word + 1)]
            with m.Else():
                m.d.sync += sel.eq(sel + 1)

        for k in range(n):  # default: the front end reads the activations
            m.d.comb += [act_r[k].addr.eq(fe.rd_addr), act_r[k].en.eq(1)]
        idle = (~fe.busy & (queue.level == 0) & ~p_valid & ~s_valid & ~e_valid & ~m_any)

        def preload(then):
            # rows 0..rows-1 of the layer; each copy is written the cycle after its read
            m.d.comb += [pre_valid.eq(cnt < rows_t[layer]), pre_row.eq(cnt)]
            m.d.sync += cnt.eq(cnt + 1)
            with m.If(cnt == rows_t[layer]):
                m.d.sync += cnt.eq(0)
                m.next = then

        with m.FSM(name="seq"):
            with m.State("PRE0"):
                m.d.comb += [pre_valid.eq(cnt < rows_t[0]), pre_row.eq(cnt)]
                m.d.sync += [cnt.eq(cnt + 1), layer.eq(0)]
                with m.If(cnt == rows_t[0]):
                    m.d.sync += [cnt.eq(0), sel.eq(0), word.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.i_act.ready.eq(1)
                for k in range(n):
                    m.d.comb += [act_w[k].addr.eq(word), act_w[k].data.eq(self.i_act.payload),
                                 act_w[k].en.eq(self.i_act.valid & (sel == k))]
                with m.If(self.i_act.valid):
                    with m.If(cnt == 0):
                        m.d.sync += [run.eq(1), cyc.eq(1), self.busy.eq(1)]
                        for i in range(L):
                            m.d.sync += lc[i].eq(0)
                    m.d.sync += cnt.eq(cnt + 1)
                    next_word()
                    with m.If(cnt == in0 - 1):
                        m.d.sync += cnt.eq(0)
                        m.next = "START"
            with m.State("PRELOAD"):
                count_layer()
                preload("START")
            with m.State("START"):
                count_layer()
                m.d.comb += fe.start.eq(1)
                m.d.sync += fe_done.eq(0)
                m.next = "COMPUTE"
            with m.State("COMPUTE"):
                count_layer()
                with m.If(idle):
                    m.d.sync += cnt.eq(0)
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                count_layer()
                # cnt = row * share + member; the last member of the last row is written when
                # cnt == rows * share + 2 (two cycles of output-stage pipeline)
                sh = (self.drain_share - 1).bit_length()
                m.d.comb += [drn_valid.eq((cnt >> sh) < rows_t[layer]), drn_row.eq(cnt >> sh),
                             drn_t.eq(cnt[:sh] if sh else 0)]
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt == (rows_t[layer] << sh) + 2):
                    m.d.sync += cnt.eq(0)
                    with m.If(layer == L - 1):
                        m.d.sync += [sel.eq(0), word.eq(0), o_valid.eq(0)]
                        m.next = "OUTPUT"
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        m.next = "PRELOAD"
            with m.State("OUTPUT"):
                fetch = ~o_valid | self.o_act.ready
                for k in range(n):
                    m.d.comb += [act_r[k].en.eq(fetch), act_r[k].addr.eq(word)]
                with m.If(fetch):
                    with m.If(cnt < outL):
                        m.d.sync += [o_valid.eq(1), o_sel.eq(sel), cnt.eq(cnt + 1)]
                        next_word()
                    with m.Else():
                        m.d.sync += o_valid.eq(0)
                m.d.comb += self.o_act.valid.eq(o_valid)
                with m.Switch(o_sel):
                    for k in range(n):
                        with m.Case(k):
                            m.d.comb += self.o_act.payload.eq(act_r[k].data.as_signed())
                with m.If(o_valid & self.o_act.ready & (cnt == outL)):
                    m.d.sync += [run.eq(0), self.busy.eq(0), cnt.eq(0), o_valid.eq(0),
                                 layer.eq(0)]
                    m.next = "PRE0"

        # drain writes: PE k's row j is column k + N*j of the next layer: its own RAM, word j
        with m.If(d3_valid):
            for k in range(n):
                m.d.comb += [act_w[k].addr.eq(d3_row), act_w[k].data.eq(ys[k]),
                             act_w[k].en.eq(y_en[k])]
        return m
