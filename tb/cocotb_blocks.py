"""cocotb benches of single engine blocks (run by `tb.blocks.run_block`, never imported by pytest).

Each `<block>_bench` drives the harness of `tb.blocks` (Verilog top "top") against a Python
reference model and writes summary.json (what it checked) into TB_IO, beside params.json (the
build parameters, the field layouts of the struct ports, the seed and the run options) and
data.json (stimuli and expected values the caller computed, e.g. from the golden model).
Standard library only: numpy and Amaranth take seconds to import in the simulator's embedded
Python, more than most benches run.

Timing convention: inputs are set just after the falling clock edge, then the bench waits for
ReadOnly and samples the outputs: what it sees is what the next rising edge acts on, so a
transfer is `valid & ready` sampled there, and a registered output seen at ReadOnly of cycle
t+1 is the block's answer to the inputs of cycle t.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, deque
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, Timer


def _setup():
    io = Path(os.environ["TB_IO"])
    p = json.loads((io / "params.json").read_text())
    return io, p, p["params"], random.Random(p["seed"])


def _data(io: Path) -> dict:
    return json.loads((io / "data.json").read_text())


def _finish(io: Path, summary: dict) -> None:
    tmp = io / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, sort_keys=True))
    os.replace(tmp, io / "summary.json")


async def _start(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


def _pack(layout, **fields) -> int:
    """A struct port word from its fields; layout as in params.json (`tb.blocks.port_layouts`)."""
    word = 0
    for name, offset, width, _signed in layout:
        word |= (int(fields[name]) & ((1 << width) - 1)) << offset
    return word


def _unpack(layout, word) -> dict[str, int]:
    out = {}
    for name, offset, width, is_signed in layout:
        v = (int(word) >> offset) & ((1 << width) - 1)
        if is_signed and v >> (width - 1):
            v -= 1 << width
        out[name] = v
    return out


def _s16(rng: random.Random) -> int:
    """A random int16 that is an extreme one time in five."""
    if rng.random() < 0.2:
        return rng.choice([-32768, 32767, -1, 1])
    return rng.randint(-32768, 32767)


def _wrap(v: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return ((v + half) & ((1 << bits) - 1)) - half


# ---- queue -------------------------------------------------------------------------------------

@cocotb.test()
async def queue_bench(dut):
    """Random push/pop against a FIFO model; level, ready, valid and head checked every cycle."""
    io, opt, p, rng = _setup()
    depth = p["depth"]
    dut.i__valid.value = dut.o__ready.value = 0
    await _start(dut)
    model: deque[int] = deque()
    st = Counter()
    for t in range(opt["cycles"]):
        # phases that fill, drain and mix, so full and empty are reached at every depth
        pp, pr = ((0.9, 0.2), (0.2, 0.9), (0.5, 0.5))[(t // 48) % 3]
        push, pop = rng.random() < pp, rng.random() < pr
        word = rng.randrange(1 << 16)
        dut.i__valid.value = int(push)
        dut.i__payload.value = word
        dut.o__ready.value = int(pop)
        await ReadOnly()
        level = int(dut.level.value)
        i_ready, o_valid = bool(dut.i__ready.value), bool(dut.o__valid.value)
        assert level == len(model), (t, level, len(model))
        assert i_ready == (len(model) < depth), t
        assert o_valid == (len(model) > 0), t
        if o_valid:
            assert int(dut.o__payload.value) == model[0], t
        popped, pushed = o_valid and pop, push and i_ready
        if popped:
            model.popleft()
        if pushed:
            model.append(word)
        st["pushes"] += pushed
        st["pops"] += popped
        st["full"] += level == depth
        st["empty"] += level == 0
        st["push_and_pop"] += pushed and popped
        st["refused"] += push and not i_ready
        await FallingEdge(dut.clk)
    st["cycles"] = opt["cycles"]
    _finish(io, dict(st))


# ---- front end ---------------------------------------------------------------------------------

@cocotb.test()
async def frontend_bench(dut):
    """Random activation vectors (all-zero groups and columns, widths not a multiple of N,
    stale non-zero words past the width); groups made available one at a time as the bench
    writes them (the drain's role) or all at once; random back-pressure. Reference: the list of
    (value, col) of the non-zeros (every column when dense) in column order."""
    io, opt, p, rng = _setup()
    pes, words, sparse = p["pes"], p["words"], p["sparse"]
    lay = opt["layouts"]["o__payload"]
    dut.start.value = dut.wr_en.value = dut.o__ready.value = 0
    await _start(dut)
    st = Counter()
    for n in range(opt["vectors"]):
        width = rng.randint(1, pes * words)
        groups = -(-width // pes)
        density = rng.choice([0.0, 0.05, 0.3, 0.7, 1.0])
        acts = [(_s16(rng) or 1) if rng.random() < density else 0 for _ in range(width)]
        for g in range(groups):
            if rng.random() < 0.25:  # all-zero groups
                acts[g * pes:(g + 1) * pes] = [0] * len(acts[g * pes:(g + 1) * pes])
        # the words past `width` in the last group hold stale non-zeros the mask must hide
        image = acts + [rng.randint(1, 999) for _ in range(groups * pes - width)]
        gated = rng.random() < 0.5
        stall = rng.choice([0.0, 0.0, 0.3, 0.7])
        want = [(v, c) for c, v in enumerate(acts) if v != 0 or not sparse]
        dut.in_features.value = width
        dut.groups.value = groups
        dut.o__ready.value = 0
        written = 0  # words of `image` written
        if not gated:  # everything written first, all groups available from the start
            for c, v in enumerate(image):
                dut.wr_en.value, dut.wr_bank.value, dut.wr_addr.value = 1, c % pes, c // pes
                dut.wr_data.value = v & 0xFFFF
                await FallingEdge(dut.clk)
            written = len(image)
        dut.wr_en.value = 0
        got = []
        t = 0
        while True:
            # a group counts as available once its last word was written at an earlier edge
            avail = written // pes
            dut.avail.value = avail
            if written < len(image) and rng.random() < 0.7:
                c = written
                dut.wr_en.value, dut.wr_bank.value, dut.wr_addr.value = 1, c % pes, c // pes
                dut.wr_data.value = image[c] & 0xFFFF
                written += 1
            else:
                dut.wr_en.value = 0
            ready = stall == 0 or rng.random() >= stall
            dut.o__ready.value = int(ready)
            dut.start.value = int(t == 0)
            await ReadOnly()
            if t > 0:
                assert dut.busy.value, (n, t)
            if dut.o__valid.value and ready:
                f = _unpack(lay, dut.o__payload.value)
                assert f["col"] // pes < avail, (n, t, f, avail)  # never an unwritten group
                got.append((f["value"], f["col"]))
            done = bool(dut.done.value)
            await FallingEdge(dut.clk)
            t += 1
            if done:
                break
            assert t < 20 * (width + groups + 10), f"vector {n}: no done after {t} cycles"
        dut.wr_en.value = 0
        await ReadOnly()
        assert not dut.busy.value and not dut.done.value, n
        await FallingEdge(dut.clk)
        assert got == want, (n, width, got[:8], want[:8])
        if not gated and stall == 0:  # one word per cycle plus one cycle per all-zero group
            assert t <= len(want) + groups + 2, (n, t, len(want), groups)
            st["rate_checked"] += 1
        st["vectors"] += 1
        st["words"] += len(got)
        st["gated"] += gated
        st["stalled"] += stall > 0
        st["zero_groups"] += sum(not any(acts[g * pes:(g + 1) * pes]) for g in range(groups))
        st["partial_last_group"] += width % pes != 0
    _finish(io, dict(st))


# ---- pointer read ------------------------------------------------------------------------------

def _random_pointers(rng: random.Random, n_max: int, ptr_max: int):
    """Absolute pointers of a few layers (in_l + 1 each, as in the ROM), many empty columns."""
    ptr: list[int] = []
    layers = []  # (base, in_l)
    while True:
        in_l = rng.randint(1, 12)
        if len(ptr) + in_l + 1 > n_max:
            break
        start = ptr[-1] if ptr else rng.randint(0, 10)
        vals = [start]
        for _ in range(in_l):
            step = 0 if rng.random() < 0.4 else rng.randint(1, 5)
            vals.append(min(vals[-1] + step, ptr_max))
        layers.append((len(ptr), in_l))
        ptr += vals
    return ptr, layers


@cocotb.test()
async def pointer_bench(dut):
    """Random pointer arrays in the even/odd banks; random (layer, col) broadcasts with random
    valid and credit; a cycle after each taken column: (value, ptr[p], ptr[p+1]) out, or
    nothing when the column has no entry."""
    io, opt, p, rng = _setup()
    words, ptr_bits = p["words"], p["ptr_bits"]
    in_lay, out_lay = opt["layouts"]["i__payload"], opt["layouts"]["o_payload"]
    dut.i__valid.value = dut.credit.value = dut.wr_en.value = 0
    await _start(dut)
    st = Counter()
    for _ in range(opt["arrays"]):
        ptr, layers = _random_pointers(rng, 2 * words, (1 << ptr_bits) - 1)
        for i, v in enumerate(ptr):
            dut.wr_en.value, dut.wr_odd.value, dut.wr_addr.value = 1, i & 1, i >> 1
            dut.wr_data.value = v
            await FallingEdge(dut.clk)
        dut.wr_en.value = 0
        pend = None  # (value, p) taken in the previous cycle
        pv, pc = rng.choice([(0.9, 0.9), (0.6, 0.5), (1.0, 1.0)])
        for t in range(opt["cycles"]):
            base, in_l = rng.choice(layers)
            col, value = rng.randrange(in_l), _s16(rng)
            valid, credit = rng.random() < pv, rng.random() < pc
            dut.base.value = base
            dut.i__payload.value = _pack(in_lay, value=value, col=col)
            dut.i__valid.value = int(valid)
            dut.credit.value = int(credit)
            await ReadOnly()
            assert bool(dut.i__ready.value) == credit, t
            assert bool(dut.busy.value) == (pend is not None), t
            if pend is None:
                assert not dut.o_valid.value, t
            else:
                v, q = pend
                start, end = ptr[q], ptr[q + 1]
                assert bool(dut.o_valid.value) == (start != end), (t, q, start, end)
                if start != end:
                    got = _unpack(out_lay, dut.o_payload.value)
                    assert got == {"value": v, "start": start, "end": end}, (t, q, got)
                    st["columns"] += 1
                else:
                    st["dropped"] += 1
            pend = (value, base + col) if valid and credit else None
            st["refused"] += valid and not credit
            st["odd_p"] += pend is not None and pend[1] % 2 == 1
            await FallingEdge(dut.clk)
        dut.i__valid.value = 0
        await FallingEdge(dut.clk)
        st["arrays"] += 1
    _finish(io, dict(st))


# ---- codebook decoder ------------------------------------------------------------------------

@cocotb.test()
async def codebook_bench(dut):
    """Random codebooks; every (layer, v) back to back in random order and a random stream with
    repeats: the weight a cycle later is the codebook entry."""
    io, opt, p, rng = _setup()
    ib, layers = p["index_bits"], p["layers"]
    k = 1 << ib
    dut.wr_en.value = 0
    await _start(dut)
    st = Counter()
    for _ in range(opt["codebooks"]):
        cb = [_s16(rng) for _ in range(layers * k)]
        for i, w in enumerate(cb):
            dut.wr_en.value, dut.wr_addr.value, dut.wr_data.value = 1, i, w & 0xFFFF
            await FallingEdge(dut.clk)
        dut.wr_en.value = 0
        every = [(la, v) for la in range(layers) for v in range(k)]
        rng.shuffle(every)
        order = every + [(rng.randrange(layers), rng.randrange(k)) for _ in range(len(every))]
        pend = None
        for item in order + [None]:
            la, v = item if item else (rng.randrange(layers), rng.randrange(k))
            dut.layer.value, dut.v.value = la, v
            await ReadOnly()
            if pend is not None:
                assert dut.weight.value.to_signed() == cb[pend], (pend, cb[pend])
                st["lookups"] += 1
            pend = la * k + v if item else None
            await FallingEdge(dut.clk)
        st["codebooks"] += 1
        st["entries"] += len(cb)
    _finish(io, dict(st))


# ---- MAC -----------------------------------------------------------------------------------

def _hits(rng: random.Random, rows: int, n: int):
    """Hits (row, value, weight) or None (a gap): runs on one row, A-B-A-B alternation (the
    bypass from w_ and x_), random rows; zero weights one in four."""
    out = []
    while len(out) < n:
        mode = rng.choice(["run", "alt", "random", "gaps"])
        a, b = rng.randrange(rows), rng.randrange(rows)
        for i in range(rng.randint(2, 8)):
            if mode == "gaps" and rng.random() < 0.5:
                out.append(None)
                continue
            row = {"run": a, "alt": (a, b)[i % 2]}.get(mode, rng.randrange(rows))
            w = 0 if rng.random() < 0.25 else _s16(rng)
            out.append((row, _s16(rng) if rng.random() < 0.95 else 0, w))
    return out


@cocotb.test()
async def mac_bench(dut):
    """Random accumulator contents and hit streams against acc = wrap(acc + w * v, acc_bits);
    with `sparse`, zero weights must not write (count of accumulator writes)."""
    io, opt, p, rng = _setup()
    rows, acc_bits, sparse = p["rows"], p["acc_bits"], p["sparse"]
    lay = opt["layouts"]["i_payload"]
    mask = (1 << acc_bits) - 1
    dut.host_rd.value = dut.host_we.value = dut.i_valid.value = 0
    await _start(dut)
    st = Counter()
    for _ in range(opt["rounds"]):
        acc = [_wrap(rng.getrandbits(acc_bits), acc_bits) for _ in range(rows)]
        for r, a in enumerate(acc):
            dut.host_we.value, dut.host_addr.value, dut.host_wdata.value = 1, r, a & mask
            await FallingEdge(dut.clk)
        dut.host_we.value = 0
        hits = _hits(rng, rows, opt["hits"])
        want_writes = writes = 0
        for h in hits + [None] * 3:
            if h is None:  # a gap: junk on the payload and the weight
                dut.i_valid.value = 0
                dut.i_payload.value = _pack(lay, row=rng.randrange(rows), value=_s16(rng))
                dut.weight.value = _s16(rng) & 0xFFFF
            else:
                row, v, w = h
                dut.i_valid.value = 1
                dut.i_payload.value = _pack(lay, row=row, value=v)
                dut.weight.value = w & 0xFFFF
                if w != 0 or not sparse:
                    acc[row] = _wrap(acc[row] + w * v, acc_bits)
                    want_writes += 1
                st["hits"] += 1
                st["zero_weight"] += w == 0
            await ReadOnly()
            writes += int(dut.acc_we.value)
            await FallingEdge(dut.clk)
        await ReadOnly()
        assert not dut.busy.value
        assert writes == want_writes, (writes, want_writes)
        await FallingEdge(dut.clk)
        for r in range(rows + 1):  # read back: data a cycle after the address
            dut.host_rd.value, dut.host_addr.value = int(r < rows), min(r, rows - 1)
            await ReadOnly()
            if r > 0:
                got = _wrap(int(dut.host_rdata.value), acc_bits)
                assert got == acc[r - 1], (r - 1, got, acc[r - 1])
            await FallingEdge(dut.clk)
        dut.host_rd.value = 0
        st["rounds"] += 1
        st["back_to_back_same_row"] += sum(
            1 for x, y in zip(hits, hits[1:]) if x and y and x[0] == y[0])
        st["same_row_two_apart"] += sum(
            1 for x, y in zip(hits, hits[2:]) if x and y and x[0] == y[0])
    _finish(io, dict(st))


# ---- PE --------------------------------------------------------------------------------------

@cocotb.test()
async def pe_bench(dut):
    """One PE over two layers per vector, as the engine runs it: banks preloaded with the
    biases, layer 0's non-zero columns broadcast (random gaps, credit respected), then layer 1's
    broadcast while layer 0 is drained (and its bank preloaded again), then layer 1 drained.
    data.json: in0, in1 (each layer's input), want0, want1 (this PE's rows of each output)."""
    io, opt, p, rng = _setup()
    d = _data(io)
    sparse, stall = p["sparse"], opt["stall"]
    rows = [len(d["want0"][0]), len(d["want1"][0])]
    lay = opt["layouts"]["bc__payload"]
    dut.bc__valid.value = dut.drain_valid.value = dut.preload_valid.value = 0
    dut.layer.value = dut.drain_layer.value = dut.preload_layer.value = dut.drain_row.value = 0
    dut.bank.value = dut.drain_bank.value = 0  # a layer's accumulator bank: its parity
    await _start(dut)
    st = Counter()

    async def run(cols, drain):
        """Broadcast `cols` while draining layer `drain` (None: no drain); wait for idle.
        Returns the drained (row, y)."""
        i = dr = 0
        nrows = rows[drain] if drain is not None else 0
        got = []
        prev = False  # a row was presented for the drain in the previous cycle
        for t in range(100000):
            send = i < len(cols) and (stall == 0 or rng.random() >= stall)
            dut.bc__valid.value = int(send)
            v, c = cols[i] if i < len(cols) else (0, 0)
            dut.bc__payload.value = _pack(lay, value=v, col=c)
            on = dr < nrows
            dut.drain_valid.value = dut.preload_valid.value = int(on)
            if drain is not None:
                dut.drain_layer.value = dut.preload_layer.value = drain
                dut.drain_bank.value = drain % 2
            dut.drain_row.value = min(dr, max(nrows - 1, 0))
            await ReadOnly()
            assert bool(dut.y_valid.value) == prev, t
            if prev:
                got.append((int(dut.y_row.value), dut.y.value.to_signed()))
            if send and dut.bc__ready.value:
                i += 1
            finished = i == len(cols) and not on and not prev and not send
            idle = bool(dut.idle.value)
            prev = on
            dr += on
            await FallingEdge(dut.clk)
            if finished and idle:
                return got, t
        raise AssertionError("PE not idle after 100000 cycles")

    for n in range(len(d["in0"])):
        if n == 0:  # after reset: preload bank l with the biases of layer l
            for la in (0, 1):
                for r in range(rows[la]):
                    dut.preload_valid.value, dut.drain_row.value = 1, r
                    dut.drain_layer.value = dut.preload_layer.value = la
                    dut.drain_bank.value = la % 2
                    await FallingEdge(dut.clk)
            dut.preload_valid.value = 0
            await FallingEdge(dut.clk)
        ys = []
        for la in (0, 1):
            x = d[f"in{la}"][n]
            cols = [(int(v), c) for c, v in enumerate(x) if v != 0 or not sparse]
            dut.layer.value = la
            dut.bank.value = la % 2
            got, t = await run(cols, 0 if la == 1 else None)
            if la == 1:
                ys.append(got)
            st["columns"] += len(cols)
            st["cycles"] += t
        got, t = await run([], 1)
        ys.append(got)
        for la in (0, 1):
            want = [(r, int(y)) for r, y in enumerate(d[f"want{la}"][n])]
            assert ys[la] == want, (n, la, ys[la][:6], want[:6])
            st["rows"] += len(want)
        st["vectors"] += 1
    _finish(io, dict(st))


# ---- output stage ----------------------------------------------------------------------------

@cocotb.test()
async def output_bench(dut):
    """Combinational: every accumulator value of data.json `acc` through every shift, without
    and with ReLU, against `want` [value, shift, relu] from the golden model."""
    io, opt, p, rng = _setup()
    d = _data(io)
    acc, want = d["acc"], d["want"]
    mask = (1 << p["acc_bits"]) - 1
    st = Counter()
    for i, a in enumerate(acc):
        dut.acc.value = int(a) & mask
        await Timer(1, unit="ns")
        for k in range(len(p["shifts"])):
            for relu, name in ((0, f"y{k}"), (1, f"y{k}_relu")):
                got = getattr(dut, name).value.to_signed()
                assert got == want[i][k][relu], (a, p["shifts"][k], relu, got)
                st["checks"] += 1
        st["values"] += 1
    _finish(io, dict(st))
