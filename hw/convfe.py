"""The conv front ends: a pass's patches, gathered word by word from the feature map.

A conv layer runs pass after pass (`images.conv`: one pooled output position a pass, its
pooling window's sub-positions one after another). For one pass the front end reads, for every
sub-position, the input rows its kernel covers, clipped to the map (zero padding is never read:
it costs nothing), word by word from the PEs' activation memories, and sends the non-zero
values of each word's lanes inside the kernel's window as (value, column, sub-position), the
column in the image's physical order (lane k of a word is column base + k). Two parts:

* `PassWalker`: the descriptors of a pass, one a cycle (word address, column base, first lane,
  end lane, sub-position), exactly `images.conv.walk`. Everything is affine in the loop indices
  with per-layer constants (`images.conv.walker_constants`), so it only adds: the pass origin
  and each sub-position's origin are kept as (y, x) and their multiples of the lane and column
  strides, so clipping is a sign test (max(y * ly, 0) is the first row's lane offset,
  max(-y * cy, 0) the first kernel row's column offset). A sub-position costs one cycle of
  set-up, a pass one more at its end; a pass wholly in the padding costs its set-up only.
* the senders, the fully connected front ends' group logic (`hw.frontend`) fed with
  descriptors instead of a group counter: `ConvFrontEnd` sends one column a cycle (stream
  `o`), `WideConvFrontEnd` up to two (`o`, `o_valid`, credit `room`), across words. The next
  word is read while the current one is sent, so words follow each other with no bubble; a
  word with no non-zero in its window costs a cycle.

Ports (both): `layer` (the current layer: the tables), `start` (pulse: walk the next pass),
`first` (with `start`: the layer's first pass), `base` (the map's first word), `rd_addr` /
`rd_data` (one word of every PE's memory, read latency one cycle), `busy`, `done` (pulse: the
pass is sent), `last` (valid with `done`: it was the layer's last pass). The map is not written
while a pass is walked (the engines' drains write the other bank, or nothing).
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from images.conv import walker_constants
from images.engines import MAX_PES

from .frontend import FRONT_ENDS, WIDTH, _exactly_one, _lowest


def conv_bcast_layout(col_bits: int, sub_bits: int) -> data.StructLayout:
    """A broadcast column of a conv layer: value, column and sub-position."""
    return data.StructLayout({"value": signed(16), "col": col_bits,
                              "sub": max(1, sub_bits)})


def desc_layout(addr_bits: int, col_bits: int, pes: int, sub_bits: int) -> data.StructLayout:
    """A word to read: its address, the column of lane 0 (negative where the window starts
    inside the word), the lanes [lo, hi) in the window, the sub-position."""
    lane = range(pes + 1)
    return data.StructLayout({"addr": addr_bits, "colbase": signed(col_bits + 2),
                              "lo": lane, "hi": lane, "sub": max(1, sub_bits)})


def _signed_bits(*values) -> int:
    return max(abs(int(v)) for v in values).bit_length() + 2


class PassWalker(wiring.Component):
    """The descriptors of one pass of a conv layer, one a cycle (module docstring).

    geoms: each layer's `images.conv.ConvGeom` (None for a layer the walker never walks);
    pes: N (a power of two when a layer reads a FLAT map); addr_bits: word address width;
    col_bits: column width.
    Ports: `layer`, `start`, `first`, `base` (in), `o` (out: descriptor stream), `busy`,
    `done` (pulse after the pass's last descriptor is taken), `last` (with done).
    """

    def __init__(self, *, geoms, pes: int, addr_bits: int, col_bits: int):
        if not isinstance(pes, int) or not 1 <= pes <= MAX_PES:
            raise ValueError(f"pes must be an integer 1..{MAX_PES}, not {pes!r}")
        if any(g is not None and g.src == "flat" for g in geoms) and pes & (pes - 1):
            raise ValueError(f"a conv layer reading a flat map needs a power-of-two PE count, "
                             f"not {pes}")
        if not any(g is not None for g in geoms):
            raise ValueError("no conv layer to walk")
        self.geoms = list(geoms)
        self.pes = pes
        self.addr_bits = addr_bits
        self.col_bits = col_bits
        self.sub_bits = max(g.sub_bits for g in geoms if g is not None)
        self.layer_bits = max(1, (len(geoms) - 1).bit_length())
        super().__init__({
            "layer": In(range(max(len(geoms), 2))),
            "start": In(1),
            "first": In(1),
            "base": In(addr_bits),
            "o": Out(stream.Signature(desc_layout(addr_bits, col_bits, pes, self.sub_bits))),
            "busy": Out(1),
            "done": Out(1),
            "last": Out(1),
        })

    def _tables(self):
        """Per-layer constants (zeros for layers that are not walked)."""
        n = self.pes
        rows = []
        for g in self.geoms:
            if g is None:
                rows.append(None)
                continue
            k = walker_constants(g, n)
            lxs = 0 if k.lx == 1 else n.bit_length() - 1  # lanes per x step: 1 or N
            rows.append(dict(
                groups=k.groups, lc=k.lc, ly=k.ly, lxs=lxs, cc=k.cc, cy=k.cy,
                kh=g.kh, kw=g.kw, h=g.h, w=g.w, qw=g.qw, subs=g.subs, wp=g.wp,
                passes=g.passes,
                y0=-g.ph, y0l=-g.ph * k.ly, y0c=-g.ph * k.cy,
                x0=-g.pw, x0l=-g.pw * k.lx, x0c=-g.pw * k.cx,
                dyp=g.qh * g.sh, dypl=g.qh * g.sh * k.ly, dypc=g.qh * g.sh * k.cy,
                dxp=g.qw * g.sw, dxpl=g.qw * g.sw * k.lx, dxpc=g.qw * g.sw * k.cx,
                sh=g.sh, shl=g.sh * k.ly, shc=g.sh * k.cy,
                sw=g.sw, swl=g.sw * k.lx, swc=g.sw * k.cx))
        keys = [k for k in rows if k is not None][0].keys()
        tabs = {}
        for key in keys:
            vals = [(r[key] if r is not None else 0) for r in rows]
            vals += [0] * (max(len(vals), 2) - len(vals))
            width = _signed_bits(*vals)
            tabs[key] = Array(Const(v, signed(width)) for v in vals)
        return tabs

    def elaborate(self, platform):
        m = Module()
        n = self.pes
        nb = n.bit_length() - 1  # log2 N (only used where N is a power of two)
        t = {k: v[self.layer] for k, v in self._tables().items()}
        lane_mask = n - 1
        # lane addresses are word << nb (+ lane): wide enough for every map and its offsets
        lw = self.addr_bits + nb + 3
        cw = self.col_bits + 3
        gs = [g for g in self.geoms if g is not None]
        # input coordinates: -padding .. the map's size plus a pass's reach
        yb = _signed_bits(*[max(g.h, g.w) + g.qh * g.sh + g.qw * g.sw + g.kh + g.kw
                            + g.ph + g.pw for g in gs])

        def sreg(name, width=lw):
            return Signal(signed(width), name=name)

        # the pass origin (input coordinates of sub-position 0) and its lane/column multiples
        Y0, Y0L, Y0C = sreg("y0", yb), sreg("y0l"), sreg("y0c", cw)
        X0, X0L, X0C = sreg("x0", yb), sreg("x0l"), sreg("x0c", cw)
        pxc = Signal(range(max(max((g.wp for g in self.geoms if g), default=1), 2)), name="pxc")
        pcnt = Signal(range(max(max((g.passes for g in self.geoms if g), default=1), 2) + 1),
                      name="pcnt")
        # the sub-position's origin and multiples
        ys, ysL, ysC = sreg("ys", yb), sreg("ysl"), sreg("ysc", cw)
        xs, xsL, xsC = sreg("xs", yb), sreg("xsl"), sreg("xsc", cw)
        bc = Signal(range(max(max((g.qw for g in self.geoms if g), default=1), 2)), name="bc")
        sc = Signal(max(1, self.sub_bits + 1), name="sc")  # sub-position index
        # the rows: count and channel iterations left, lane address and column of the row start
        rlen = Signal(lw, name="rlen")  # lanes of a row
        nrows = Signal(yb, name="nrows")
        chc = Signal(range(max(max((walker_constants(g, n).groups for g in self.geoms if g),
                                   default=1), 2) + 1), name="chc")
        dyc = Signal(yb, name="dyc")
        Lch, Lrow = Signal(lw, name="lch"), Signal(lw, name="lrow")
        colch, colrow = sreg("colch", cw), sreg("colrow", cw)
        # the word being presented
        w = Signal(self.addr_bits + 1, name="w")
        wl = Signal(self.addr_bits + 1, name="wl")  # the row's last word
        wfirst = Signal(name="wfirst")
        lo0 = Signal(range(n + 1), name="lo0")
        hil = Signal(range(n + 1), name="hil")
        cb = sreg("cb", cw)

        m.d.comb += [self.o.payload.addr.eq(w), self.o.payload.colbase.eq(cb),
                     self.o.payload.lo.eq(Mux(wfirst, lo0, 0)),
                     self.o.payload.hi.eq(Mux(w == wl, hil, n)),
                     self.o.payload.sub.eq(sc)]

        def enter_row(lrow, colr, length=rlen):
            """Registers of the row starting at lane address `lrow`, column `colr`, of `length`
            lanes."""
            lend = Signal(lw, name="lend")
            m.d.comb += lend.eq(lrow + length - 1)
            m.d.sync += [Lrow.eq(lrow), colrow.eq(colr),
                         w.eq(lrow >> nb if nb else lrow), wl.eq(lend >> nb if nb else lend),
                         wfirst.eq(1),
                         lo0.eq(lrow & lane_mask if nb else 0),
                         hil.eq((lend & lane_mask if nb else 0) + 1),
                         cb.eq(colr - (lrow & lane_mask if nb else 0))]

        def set_sub(y, yl, yc, x, xl, xc):
            m.d.sync += [ys.eq(y), ysL.eq(yl), ysC.eq(yc), xs.eq(x), xsL.eq(xl), xsC.eq(xc)]

        def next_sub():
            """The next sub-position's origin (or the pass is done)."""
            with m.If(sc == t["subs"] - 1):
                m.next = "DONE"
            with m.Else():
                m.d.sync += sc.eq(sc + 1)
                with m.If(bc == t["qw"] - 1):
                    m.d.sync += [bc.eq(0), ys.eq(ys + t["sh"]), ysL.eq(ysL + t["shl"]),
                                 ysC.eq(ysC + t["shc"]), xs.eq(X0), xsL.eq(X0L), xsC.eq(X0C)]
                with m.Else():
                    m.d.sync += [bc.eq(bc + 1), xs.eq(xs + t["sw"]), xsL.eq(xsL + t["swl"]),
                                 xsC.eq(xsC + t["swc"])]
                m.next = "SUB"

        with m.FSM(name="walk"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [sc.eq(0), bc.eq(0), self.busy.eq(1)]
                    with m.If(self.first):
                        m.d.sync += [Y0.eq(t["y0"]), Y0L.eq(t["y0l"]), Y0C.eq(t["y0c"]),
                                     X0.eq(t["x0"]), X0L.eq(t["x0l"]), X0C.eq(t["x0c"]),
                                     pxc.eq(0), pcnt.eq(0)]
                        set_sub(t["y0"], t["y0l"], t["y0c"], t["x0"], t["x0l"], t["x0c"])
                    with m.Else():
                        set_sub(Y0, Y0L, Y0C, X0, X0L, X0C)
                    m.next = "SUB"
            with m.State("SUB"):
                # the rows of this sub-position's patch inside the map
                dyl = Signal(signed(yb), name="dyl")
                dyh = Signal(signed(yb), name="dyh")
                dxl = Signal(signed(yb), name="dxl")
                dxh = Signal(signed(yb), name="dxh")
                m.d.comb += [dyl.eq(Mux(ys < 0, -ys, 0)),
                             dyh.eq(Mux(t["h"] - ys < t["kh"], t["h"] - ys, t["kh"])),
                             dxl.eq(Mux(xs < 0, -xs, 0)),
                             dxh.eq(Mux(t["w"] - xs < t["kw"], t["w"] - xs, t["kw"]))]
                with m.If((dyl >= dyh) | (dxl >= dxh)):
                    next_sub()  # wholly in the padding: nothing to read
                with m.Else():
                    lsub = Signal(lw, name="lsub")
                    csub = Signal(signed(cw), name="csub")
                    cnt = Signal(yb, name="cntx")
                    length = Signal(lw, name="length")
                    m.d.comb += [
                        lsub.eq((self.base << nb) + Mux(ysL < 0, 0, ysL)
                                + Mux(xsL < 0, 0, xsL)),
                        csub.eq(Mux(ysC < 0, -ysC, 0) + Mux(xsC < 0, -xsC, 0)),
                        cnt.eq(dxh - dxl),
                        length.eq(Mux(t["lxs"] != 0, cnt << nb, cnt)),
                    ]
                    m.d.sync += [Lch.eq(lsub), colch.eq(csub), nrows.eq(dyh - dyl),
                                 dyc.eq(dyh - dyl - 1), chc.eq(t["groups"] - 1),
                                 rlen.eq(length)]
                    enter_row(lsub, csub, length)
                    m.next = "ROWS"
            with m.State("ROWS"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    with m.If(w != wl):
                        m.d.sync += [w.eq(w + 1), wfirst.eq(0), cb.eq(cb + n)]
                    with m.Elif(dyc != 0):
                        m.d.sync += dyc.eq(dyc - 1)
                        enter_row(Lrow + t["ly"], colrow + t["cy"])
                    with m.Elif(chc != 0):
                        m.d.sync += [chc.eq(chc - 1), dyc.eq(nrows - 1),
                                     Lch.eq(Lch + t["lc"]), colch.eq(colch + t["cc"])]
                        enter_row(Lch + t["lc"], colch + t["cc"])
                    with m.Else():
                        next_sub()
            with m.State("DONE"):
                # the pass is walked: the next pass's origin
                m.d.comb += [self.done.eq(1), self.last.eq(pcnt == t["passes"] - 1)]
                m.d.sync += [self.busy.eq(0), pcnt.eq(pcnt + 1)]
                with m.If(pxc == t["wp"] - 1):
                    m.d.sync += [pxc.eq(0), X0.eq(t["x0"]), X0L.eq(t["x0l"]),
                                 X0C.eq(t["x0c"]), Y0.eq(Y0 + t["dyp"]),
                                 Y0L.eq(Y0L + t["dypl"]), Y0C.eq(Y0C + t["dypc"])]
                with m.Else():
                    m.d.sync += [pxc.eq(pxc + 1), X0.eq(X0 + t["dxp"]),
                                 X0L.eq(X0L + t["dxpl"]), X0C.eq(X0C + t["dxpc"])]
                m.next = "IDLE"
        return m


class _ConvReader(wiring.Component):
    """What both conv front ends are: the walker and the ports (module docstring);
    `outputs`: each sender's own members."""

    absolute = True  # rd_addr is a word of the whole memory (base included)

    @classmethod
    def make(cls, *, pes, col_bits, addr_bits, geoms, sparse=True, **_context):
        return cls(geoms=geoms, pes=pes, addr_bits=addr_bits, col_bits=col_bits, sparse=sparse)

    def wire(self, m, ctx) -> None:
        """The layer (its tables), the first-pass flag and the source map's first word."""
        m.d.comb += [self.layer.eq(ctx.layer), self.first.eq(ctx.first),
                     self.base.eq(ctx.base)]

    def __init__(self, *, geoms, pes: int, addr_bits: int, col_bits: int, outputs: dict,
                 sparse: bool = True):
        self.walker = PassWalker(geoms=geoms, pes=pes, addr_bits=addr_bits, col_bits=col_bits)
        self.pes = pes
        self.sparse = sparse  # False: every lane in the window is sent (the dense baseline)
        self.col_bits = col_bits
        self.sub_bits = self.walker.sub_bits
        super().__init__({
            "layer": In(range(max(len(geoms), 2))),
            "start": In(1),
            "first": In(1),
            "base": In(addr_bits),
            "rd_addr": Out(addr_bits),
            "rd_data": In(data.ArrayLayout(signed(16), pes)),
            **outputs,
            "busy": Out(1),
            "done": Out(1),
            "last": Out(1),
        })

    def _words(self, m):
        """The walker and D0, the descriptor of the word on rd_data (valid: v0). Returns
        (walker, d0, v0, nxt_mask): nxt_mask is D0's lanes to send (non-zero, in its window)."""
        n = self.pes
        m.submodules.walker = wk = self.walker
        m.d.comb += [wk.layer.eq(self.layer), wk.start.eq(self.start), wk.first.eq(self.first),
                     wk.base.eq(self.base)]
        d0 = Signal.like(wk.o.payload, name="d0")
        v0 = Signal(name="v0")
        nxt_mask = Signal(n, name="nxt_mask")
        for k in range(n):
            nz = (self.rd_data[k] != 0) if self.sparse else 1
            m.d.comb += nxt_mask[k].eq(nz & (d0.lo <= k) & (k < d0.hi))
        return wk, d0, v0, nxt_mask

    def _end(self, m, wk, v0, empty):
        """busy from start to done; done when the walker is done and nothing is left."""
        walked = Signal(name="walked")  # the walker finished this pass
        last = Signal(name="last_r")
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), walked.eq(0)]
        with m.If(wk.done):
            m.d.sync += [walked.eq(1), last.eq(wk.last)]
        with m.If(self.busy & walked & ~v0 & empty & ~self.start):
            m.d.comb += [self.done.eq(1), self.last.eq(last)]
            m.d.sync += [self.busy.eq(0), walked.eq(0)]


class ConvFrontEnd(_ConvReader):
    """One column a cycle: `o`, a stream of (value, col, sub)."""

    def __init__(self, *, geoms, pes: int, addr_bits: int, col_bits: int, sparse: bool = True):
        sub_bits = max(g.sub_bits for g in geoms if g is not None)
        super().__init__(geoms=geoms, pes=pes, addr_bits=addr_bits, col_bits=col_bits,
                         sparse=sparse, outputs={"o": Out(stream.Signature(
                             conv_bcast_layout(col_bits + 1, sub_bits)))})

    def elaborate(self, platform):
        m = Module()
        n = self.pes
        wk, d0, v0, nxt_mask = self._words(m)
        cur_vals = Signal(data.ArrayLayout(signed(16), n), name="cur_vals")
        cur_mask = Signal(n, name="cur_mask")
        cur_cb = Signal.like(d0.colbase, name="cur_cb")
        cur_sub = Signal.like(d0.sub, name="cur_sub")
        sel = Signal(range(max(n, 2)), name="sel")
        for k in reversed(range(n)):
            with m.If(cur_mask[k]):
                m.d.comb += sel.eq(k)
        low = Signal(n, name="low")
        m.d.comb += low.eq(cur_mask & (~cur_mask + 1))
        empty = Signal(name="empty")
        single = Signal(name="single")
        m.d.comb += [empty.eq(cur_mask == 0), single.eq(_exactly_one(cur_mask))]
        m.d.comb += [self.o.valid.eq(~empty), self.o.payload.value.eq(cur_vals[sel]),
                     self.o.payload.col.eq(cur_cb + sel), self.o.payload.sub.eq(cur_sub)]
        out = Signal(name="out")  # the current word runs out this cycle
        m.d.comb += out.eq(empty | (single & self.o.ready))
        adv = Signal(name="adv")  # load the word on rd_data, present the one after it
        m.d.comb += adv.eq(out & v0)
        take = Signal(name="take")  # D0 <- the walker's descriptor this cycle
        m.d.comb += [take.eq(adv | ~v0), wk.o.ready.eq(take)]
        m.d.comb += self.rd_addr.eq(Mux(take, wk.o.payload.addr, d0.addr))
        with m.If(take):
            m.d.sync += [d0.eq(wk.o.payload), v0.eq(wk.o.valid)]
        with m.If(adv):
            m.d.sync += [cur_vals.eq(self.rd_data), cur_mask.eq(nxt_mask),
                         cur_cb.eq(d0.colbase), cur_sub.eq(d0.sub)]
        with m.Elif(~empty):
            m.d.sync += cur_mask.eq(Mux(self.o.ready, cur_mask & ~low, cur_mask))
        self._end(m, wk, v0, empty | (single & self.o.ready))
        return m


class WideConvFrontEnd(_ConvReader):
    """Up to two columns a cycle: `o` (WIDTH (value, col, sub) lanes), `o_valid` (lanes sent
    this cycle), the credit input `room` (0..WIDTH columns every PE can take). Lane 0 is the
    lowest remaining column of the current word, else the next word's lowest; lane 1 the next
    one in that order, as `hw.frontend.WideFrontEnd`."""

    def __init__(self, *, geoms, pes: int, addr_bits: int, col_bits: int, sparse: bool = True):
        sub_bits = max(g.sub_bits for g in geoms if g is not None)
        super().__init__(geoms=geoms, pes=pes, addr_bits=addr_bits, col_bits=col_bits,
                         sparse=sparse, outputs={
                             "room": In(range(WIDTH + 1)),
                             "o": Out(data.ArrayLayout(conv_bcast_layout(col_bits + 1, sub_bits),
                                                       WIDTH)),
                             "o_valid": Out(WIDTH),
                         })

    def elaborate(self, platform):
        m = Module()
        n = self.pes
        wk, d0, v0, nxt_mask = self._words(m)
        cur_vals = Signal(data.ArrayLayout(signed(16), n), name="cur_vals")
        cur_mask = Signal(n, name="cur_mask")
        cur_cb = Signal.like(d0.colbase, name="cur_cb")
        cur_sub = Signal.like(d0.sub, name="cur_sub")
        cur = cur_mask
        nxt = Signal(n, name="nxt")
        m.d.comb += nxt.eq(Mux(v0, nxt_mask, 0))
        c_low = Signal(n)
        n_low = Signal(n)
        m.d.comb += [c_low.eq(cur & (~cur + 1)), n_low.eq(nxt & (~nxt + 1))]
        c_rest = Signal(n)
        n_rest = Signal(n)
        m.d.comb += [c_rest.eq(cur & ~c_low), n_rest.eq(nxt & ~n_low)]
        c_two = Signal(n)
        n_two = Signal(n)
        m.d.comb += [c_two.eq(c_low | (c_rest & (~c_rest + 1))),
                     n_two.eq(n_low | (n_rest & (~n_rest + 1)))]
        c_any0, c_i0 = _lowest(m, cur, n, "c0")
        c_any1, c_i1 = _lowest(m, c_rest, n, "c1")
        n_any0, n_i0 = _lowest(m, nxt, n, "n0")
        n_any1, n_i1 = _lowest(m, n_rest, n, "n1")

        def lane(j, src, i):
            vals, cbase, sub = ((cur_vals, cur_cb, cur_sub) if src == "c"
                                else (self.rd_data, d0.colbase, d0.sub))
            return [self.o[j].value.eq(vals[i]), self.o[j].col.eq(cbase + i),
                    self.o[j].sub.eq(sub)]

        with m.If(c_any0):
            m.d.comb += lane(0, "c", c_i0)
        with m.Else():
            m.d.comb += lane(0, "n", n_i0)
        with m.If(c_any1):
            m.d.comb += lane(1, "c", c_i1)
        with m.Elif(c_any0):
            m.d.comb += lane(1, "n", n_i0)
        with m.Else():
            m.d.comb += lane(1, "n", n_i1)
        have = Signal(range(3), name="have")
        m.d.comb += have.eq(Mux(c_any1, 2, Mux(c_any0, Mux(n_any0, 2, 1),
                                             Mux(n_any1, 2, Mux(n_any0, 1, 0)))))
        m.d.comb += [self.o_valid[0].eq((have >= 1) & (self.room >= 1)),
                     self.o_valid[1].eq((have >= 2) & (self.room >= 2))]
        sent = Signal(range(3), name="sent")
        m.d.comb += sent.eq(self.o_valid[0] + self.o_valid[1])
        rem_cur = Signal(n, name="rem_cur")
        rem_nxt = Signal(n, name="rem_nxt")
        with m.Switch(sent):
            with m.Case(0):
                m.d.comb += [rem_cur.eq(cur), rem_nxt.eq(nxt_mask)]
            with m.Case(1):
                m.d.comb += [rem_cur.eq(cur & ~c_low),
                             rem_nxt.eq(Mux(c_any0, nxt_mask, nxt_mask & ~n_low))]
            with m.Case(2):
                m.d.comb += [rem_cur.eq(cur & ~c_two),
                             rem_nxt.eq(Mux(c_any1, nxt_mask,
                                            Mux(c_any0, nxt_mask & ~n_low, nxt_mask & ~n_two)))]
        adv = Signal(name="adv")
        m.d.comb += adv.eq((rem_cur == 0) & v0)
        take = Signal(name="take")
        m.d.comb += [take.eq(adv | ~v0), wk.o.ready.eq(take)]
        m.d.comb += self.rd_addr.eq(Mux(take, wk.o.payload.addr, d0.addr))
        with m.If(take):
            m.d.sync += [d0.eq(wk.o.payload), v0.eq(wk.o.valid)]
        with m.If(adv):
            m.d.sync += [cur_vals.eq(self.rd_data), cur_mask.eq(rem_nxt),
                         cur_cb.eq(d0.colbase), cur_sub.eq(d0.sub)]
        with m.Else():
            m.d.sync += cur_mask.eq(rem_cur)
        self._end(m, wk, v0, rem_cur == 0)
        return m


class OneMapConvFrontEnd(wiring.Component):
    """A pass's patches from a map of one value a word (the lockstep engine's one-map layout on
    the board, `images.lockstep`: plain (C, H, W) order), one kernel position a cycle.

    Where `PassWalker` clips each sub-position's kernel rows to the map and reads N lanes a
    word (about 1,000 logic cells on the iCE40), this walks every kernel position of every
    sub-position in order (the pooling window's sub-positions innermost, then dx, dy, channel:
    `images.conv.one_map_walk`) with one word, row and column register each stepped by a
    per-layer constant chosen by the innermost counter that does not wrap
    (`images.conv.one_map_steps`; that level and every counter's end are flip-flops set a
    cycle ahead, so only a table and the adders stand before the read address); a position in the
    padding is read but not sent, so zero padding costs a cycle a position here. The column is
    a counter (the physical column of a one-value map is (c * kh + dy) * kw + dx).

    Two stages: W (the position whose word is read this cycle) and D (its value on `rd_data`,
    sent when non-zero). While D holds a position and `o.ready` is low nothing moves and D's
    word is read again (the map is not written during a pass), so `rd_addr` is a multiplexer
    of two registers under a flip-flop's control.

    Ports: `layer`, `start`, `first` (with start: the layer's first pass), `base` (the map's
    first word), `rd_addr`, `rd_data`, `o` (value, col, sub), `busy`.
    """

    def __init__(self, *, geoms, addr_bits: int, col_bits: int, lists=None,
                 table=None):
        if not any(g is not None for g in geoms):
            raise ValueError("no conv layer to walk")
        self.geoms = list(geoms)
        self.addr_bits = addr_bits
        self.col_bits = col_bits
        self.sub_bits = max(g.sub_bits for g in geoms if g is not None)
        # column lists (`images.lockstep.col_table`): per layer None or (K, first table word);
        # table: (depth, y/x bits) of the column table read through `t_addr` / `t_data`
        self.lists = list(lists) if lists is not None else [None] * len(self.geoms)
        if any(li is not None for li in self.lists) != (table is not None):
            raise ValueError("column lists need their table, and a table its lists")
        if any(li is not None and (g is None or li[0] < 2)
               for li, g in zip(self.lists, self.geoms)):
            raise ValueError("a column list is a conv layer's, of two columns at least")
        self.table = table
        # some layer has padding: the walker keeps each position's (y, x) to test it
        self.clip = any(g.ph or g.pw for g in self.geoms if g is not None)
        if table is not None and self.clip != (table[1] > 0):
            raise ValueError("the column table has y and x steps exactly when a layer is "
                             "padded")
        tports = {}
        if table is not None:
            depth, yb = table
            tports = {"t_addr": Out(range(max(depth, 2))),
                      "t_data": In(addr_bits + 2 * yb)}
        super().__init__({
            **tports,
            "layer": In(range(max(len(geoms), 2))),
            "start": In(1),
            "first": In(1),
            "base": In(addr_bits),
            "rd_addr": Out(addr_bits),
            "rd_data": In(data.ArrayLayout(signed(16), 1)),
            "o": Out(stream.Signature(conv_bcast_layout(col_bits + 1, self.sub_bits))),
            "busy": Out(1),
            "zero": In(1),
            "px": Out(range(max(max(g.wp for g in geoms if g is not None), 2))),
        })

    def elaborate(self, platform):
        from images.conv import ONE_MAP_LEVELS, one_map_pass_steps, one_map_steps

        m = Module()
        gs = self.geoms
        none = {"x": [0] * ONE_MAP_LEVELS, "y": [0] * ONE_MAP_LEVELS,
                "word": [0] * ONE_MAP_LEVELS}
        steps = [one_map_steps(g) if g is not None else none for g in gs]

        def table(vals):
            vals = [int(v) for v in vals] + [0] * (max(len(vals), 2) - len(vals))
            return Array(Const(v, signed(_signed_bits(*vals))) for v in vals)

        def per_layer(f):
            return table([f(g) if g is not None else 0 for g in gs])[self.layer]

        def step(key):  # [level][layer]
            return Array(table([st[key][lv] for st in steps])
                         for lv in range(ONE_MAP_LEVELS))

        psteps = [one_map_pass_steps(g) if g is not None else none for g in gs]

        def pstep(key):  # [row of passes][layer]: a skipped pass's
            return Array(table([st[key][r] for st in psteps]) for r in range(2))

        live = [g for g in gs if g is not None]
        yb = _signed_bits(*[max(g.h, g.w) + g.qh * g.sh * g.hp + g.qw * g.sw * g.wp + g.kh
                            + g.kw + g.ph + g.pw for g in live])
        addr = Signal(self.addr_bits, name="w_word")
        # the position's (y, x) in the map, for the padding test: only when some layer has
        # padding (without, every position a pass reads lies in the map: no registers)
        clip = self.clip
        yy, xx = Signal(signed(yb), name="w_y"), Signal(signed(yb), name="w_x")

        def yx(y, x):  # the (y, x) registers' assignments, where there are any
            return [yy.eq(y), xx.eq(x)] if clip else []

        def counter(name, most):
            return Signal(range(max(most, 2)), name=name)

        # the counters, innermost first (`one_map_steps`), and each one's per-layer size; a
        # listed layer's columns are one counter (dx's, its list's length K; dy and c of one
        # value), its steps from the column table
        lists = self.lists
        sizes = [lambda g: g.qw, lambda g: g.qh, lambda g: g.kw, lambda g: g.kh,
                 lambda g: g.c, lambda g: g.wp]
        lsize = {2: lambda li: li[0], 3: lambda li: 1, 4: lambda li: 1}
        size_of = [[(lsize[lv](li) if li is not None and lv in lsize else f(g))
                    if g is not None else None for g, li in zip(gs, lists)]
                   for lv, f in enumerate(sizes)]
        cnts = [counter(f"w_{nm}", max(v for v in vals if v is not None))
                for nm, vals in zip(("b", "a", "dx", "dy", "c", "px"), size_of)]
        m.d.comb += self.px.eq(cnts[5])  # the pass column (for `zero`)
        sc = Signal(max(1, self.sub_bits), name="w_sub")
        col = Signal(self.col_bits + 1, name="w_col")
        active = Signal(name="w_active")  # W holds a position of the pass
        skip = Signal(name="w_skip")  # the pass reads only zeros: W steps to the next one
        # end[l]: counter l is at its last value, a flip-flop set a cycle ahead (the counter
        # steps: its next value's compare; it wraps: its size is 1), and w_level, the step's
        # level (the innermost counter not at its end), a flip-flop from the next ends: the
        # compares and the priority were the board's critical path in front of the adders
        ends = [Signal(name=f"w_end_{lv}") for lv in range(len(cnts))]
        lvl = Signal(range(ONE_MAP_LEVELS), name="w_level")

        def level_of(flags):  # the innermost level whose counter is not at its end
            v = Const(ONE_MAP_LEVELS - 1, len(lvl))
            for lv in reversed(range(len(flags))):
                v = Mux(flags[lv], v, lv)
            return v

        def flag_of(vals):  # a per-layer flag, one bit (1 for a layer never walked)
            vals = [int(v) if v is not None else 1 for v in vals]
            return Array(Const(v, 1) for v in vals + [1] * (max(len(vals), 2) - len(vals))
                         )[self.layer]

        def table_of(vals):
            return table([v if v is not None else 0 for v in vals])[self.layer]

        ones = [flag_of([v == 1 if v is not None else None for v in vals])
                for vals in size_of]  # a counter of one value
        pens = [cnt == table_of([max(v - 2, 0) if v is not None else None for v in vals])
                for cnt, vals in zip(cnts, size_of)]  # one before the end
        nxt_ends = [Mux(lvl > lv, ones[lv], Mux(lvl == lv, pens[lv], ends[lv]))
                    for lv in range(len(cnts))]
        inside = Signal(name="w_inside")
        if clip:
            m.d.comb += inside.eq((yy >= 0) & (yy < per_layer(lambda g: g.h))
                                  & (xx >= 0) & (xx < per_layer(lambda g: g.w)))
        else:
            m.d.comb += inside.eq(1)
        # D: the position whose word is on rd_data
        d_ok = Signal(name="d_ok")  # a position in the map, its value on rd_data
        d_col = Signal.like(col, name="d_col")
        d_sub = Signal.like(sc, name="d_sub")
        d_addr = Signal.like(addr, name="d_word")
        hold = Signal(name="d_hold")
        busy = active | d_ok | skip
        dword = step("word")[lvl][self.layer]
        dyy, dxx = step("y")[lvl][self.layer], step("x")[lvl][self.layer]
        init = None
        if self.table is not None:
            # a listed layer (`images.conv.one_map_list_entries`): its steps beyond the
            # sub-positions (to the next listed column; at a pass's end to the next pass's
            # first position, W5 or W6 by the pass row's end) are the table's word T on
            # `t_data`, read a cycle ahead (`t_addr` is the next value of `ti`: T is word ti)
            _, tyb = self.table
            aw = self.addr_bits
            t_w = self.t_data[:aw]
            if clip:
                t_y = self.t_data[aw: aw + tyb].as_signed()
                t_x = self.t_data[aw + tyb:].as_signed()
            lmode = flag_of([li is not None if g is not None else None
                             for g, li in zip(gs, lists)])

            def at(off):  # a listed layer's table word `off`
                return table_of([li[1] + off if li is not None else None for li in lists])

            ti = Signal(range(max(self.table[0], 2)), name="t_index")
            ti_next = Signal.like(ti, name="t_index_next")
            init = Signal(name="w_init")  # a listed layer's first pass: entry I first
            zinit = Signal(name="w_init_zero")  # ... and then the pass is skipped (`zero`)
            tsel = Signal(name="w_tsel")  # this step is the table's
            m.d.comb += [tsel.eq(lmode & ((lvl >= 2) | init)), self.t_addr.eq(ti_next),
                         ti_next.eq(ti)]
            m.d.sync += ti.eq(ti_next)
            dword = Mux(tsel, t_w, dword)
            if clip:
                dyy, dxx = Mux(tsel, t_y, dyy), Mux(tsel, t_x, dxx)
            busy = busy | init
            with m.If(init):
                m.d.sync += [init.eq(0), active.eq(~zinit), skip.eq(zinit)]
                m.d.comb += ti_next.eq(at(3))  # column 1's step
            with m.Elif(active & ~hold & tsel):  # into column k + 1 (k + 1 = K - 1: on to W)
                m.d.comb += ti_next.eq(Mux(lvl >= 5, at(3), Mux(pens[2],
                                                                  Mux(ends[5], at(2), at(1)),
                                                                  ti + 1)))
        # the step's sums (one adder each, for the walk and a listed layer's entry I)
        s_addr = Signal.like(addr, name="w_word_next")
        s_y, s_x = Signal.like(yy, name="w_y_next"), Signal.like(xx, name="w_x_next")
        m.d.comb += [s_addr.eq(addr + dword)]
        if clip:
            m.d.comb += [s_y.eq(yy + dyy), s_x.eq(xx + dxx)]
        if init is not None:
            with m.If(init):
                m.d.sync += [addr.eq(s_addr), *yx(s_y, s_x)]
        m.d.comb += [hold.eq(d_ok & ~self.o.ready),
                     self.rd_addr.eq(Mux(hold, d_addr, addr)),
                     self.o.valid.eq(d_ok & (self.rd_data[0] != 0)),
                     self.o.payload.value.eq(self.rd_data[0]),
                     self.o.payload.col.eq(d_col), self.o.payload.sub.eq(d_sub),
                     self.busy.eq(busy)]
        with m.If(~hold):
            m.d.sync += [d_ok.eq(active & inside), d_col.eq(col), d_sub.eq(sc),
                         d_addr.eq(addr)]
            with m.If(active):
                m.d.sync += [addr.eq(s_addr), *yx(s_y, s_x), lvl.eq(level_of(nxt_ends))]
                m.d.sync += [e.eq(n) for e, n in zip(ends, nxt_ends)]
                for lv, cnt in enumerate(cnts):  # inner ones wrap, level lvl's steps
                    with m.If(lvl == lv):
                        m.d.sync += cnt.eq(cnt + 1)
                    with m.Elif(lvl > lv):
                        m.d.sync += cnt.eq(0)
                # the sub-position a * qw + b steps with b and a; the column (c, dy, dx)
                # with dx, dy and the channel
                with m.If(lvl < 2):
                    m.d.sync += sc.eq(sc + 1)
                with m.Else():
                    m.d.sync += sc.eq(0)
                with m.If((lvl >= 2) & (lvl < 5)):
                    m.d.sync += col.eq(col + 1)
                with m.Elif(lvl >= 5):  # the pass is walked: W holds the next pass's first
                    m.d.sync += [col.eq(0), active.eq(0)]
        # a skipped pass (`zero` with start): from its first position to the next pass's, as
        # its last step would (every counter but px at its start, so every end but px's at
        # its size-1 value already)
        row = ends[5]
        with m.If(skip):
            m.d.sync += [skip.eq(0), addr.eq(addr + pstep("word")[row][self.layer]),
                         *yx(yy + pstep("y")[row][self.layer],
                             xx + pstep("x")[row][self.layer]),
                         ends[5].eq(Mux(row, ones[5], pens[5])),
                         lvl.eq(level_of(ends[:5] + [Mux(row, ones[5], pens[5])]))]
            with m.If(row):
                m.d.sync += cnts[5].eq(0)
            with m.Else():
                m.d.sync += cnts[5].eq(cnts[5] + 1)
        with m.If(self.start):
            m.d.sync += [active.eq(~self.zero), skip.eq(self.zero)]
            if self.table is not None:
                with m.If(self.first):
                    m.d.comb += ti_next.eq(at(0))
                    with m.If(lmode):  # entry I before the first read (`init`)
                        m.d.sync += [active.eq(0), skip.eq(0), init.eq(1),
                                     zinit.eq(self.zero)]
            with m.If(self.first):
                m.d.sync += [addr.eq(self.base + per_layer(lambda g: -g.ph * g.w - g.pw)),
                             *yx(per_layer(lambda g: -g.ph), per_layer(lambda g: -g.pw)),
                             sc.eq(0), col.eq(0), lvl.eq(level_of(ones))]
                m.d.sync += [cnt.eq(0) for cnt in cnts]
                m.d.sync += [e.eq(o) for e, o in zip(ends, ones)]
        return m


FRONT_ENDS["conv"] = (ConvFrontEnd, WideConvFrontEnd)
