"""Fuzzing the link (fpga/link.py) in the Amaranth simulator against a reference model.

Hypothesis builds byte streams of garbage (SYNC bytes in it), good frames (PING, COUNT, INFER,
LOAD in and out of order, COMMIT), refused frames that carry COMMIT and PING frames in their
payload, and good frames with a byte changed or cut short, with or without a quiet line
(longer than the link's timeout) after each piece. `LinkModel` says, byte by byte, what the
link must do: the exact reply frame it must send and when, every load-port write, every engine
run. The bench feeds the bytes and, whenever the model expects a reply, waits a bounded number
of cycles for exactly that frame before sending more. So the test asserts that the link never
locks up (every expected reply comes in time, a PING after every quiet line is answered), never
runs a request it refused (no write, no engine run, no flag changed that the model does not
make: a COMMIT inside a payload never commits) and answers every good frame right.

The normal run takes a few examples (a few seconds); LONG=1 runs many more.
"""

import random
import struct

import numpy as np
from amaranth.sim import Simulator
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fpga import protocol as P
from fpga.link import Link

from .conftest import long_tests

N_IN, N_OUT, N_L, TIMEOUT = 3, 2, 2, 24
DEPTHS = [4, 3]
REPLY_CYCLES = 400  # a reply must be out within this many cycles of its cause


def engine_out(x):
    """The bench's engine: y_k = wrap16(sum(x) * (k + 1) - k)."""
    s = sum(int(v) for v in x)
    return [((s * (k + 1) - k + 32768) % 65536) - 32768 for k in range(N_OUT)]


def rep(cmd, payload=b""):
    return P.encode_frame(cmd, payload, sync=P.SYNC_REP)


class LinkModel:
    """The link's receiver, byte by byte (docs/fpga.md, "What the link refuses")."""

    def __init__(self):
        self.state = "IDLE"
        self.cmd = 0
        self.loaded = False
        self.cursor = (0, 0)
        self.runs = 0  # engine runs
        self.inferences = 0
        self.errors = 0
        self.writes = []  # (mem, addr, word) in order
        self.engine_inputs = []

    # what the link sends
    def _error(self, code):
        self.errors += 1
        self.state = "IDLE"
        return rep(P.CMD_ERROR, bytes([code, self.cmd]))

    def _run(self, x):
        self.runs += 1
        self.engine_inputs.append(list(x))
        return engine_out(x)

    def _counters(self):
        c = 1000 + self.runs if self.runs else 0
        lc = [100 * (i + 1) + self.runs if self.runs else 0 for i in range(N_L)]
        return struct.pack(f"<{1 + N_L}I", c, *lc)

    def _good(self):
        self.state = "IDLE"
        if self.cmd == P.CMD_PING:
            return rep(P.CMD_PING, struct.pack("<BBBHHIB", P.VERSION, 8, N_L, N_IN, N_OUT,
                                               12_000_000, int(self.loaded)))
        if self.cmd == P.CMD_COUNT:
            return rep(P.CMD_COUNT, struct.pack("<2I", self.inferences, self.errors)
                       + self._counters())
        if self.cmd == P.CMD_INFER:
            y = self._run(self.words)
            self.inferences += 1
            return rep(P.CMD_INFER, struct.pack(f"<{N_OUT}h", *y) + self._counters())
        return rep(self.cmd)  # LOAD, COMMIT

    def _refuse(self, code, left):
        self.state, self.err, self.left = "SKIP", code, left
        return None

    def byte(self, b):
        """One byte taken by the link; the reply frame it must then send, or None."""
        st_ = self.state
        if st_ == "IDLE":
            if b == P.SYNC_REQ:
                self.state, self.crc, self.cmd = "CMD", 0xFF, 0
            return None
        if st_ == "SKIP":
            if self.left == 0:
                return self._error(self.err)
            self.left -= 1
            return None
        if st_ == "CRC":
            ok = b == self.crc
            if not ok:
                if self.cmd == P.CMD_INFER:
                    self._run(self.words)
                return self._error(P.ERR_CRC)
            if self.cmd == P.CMD_LOAD:
                self.cursor = (self.mem + 1, 0) if self.last else (self.mem, self.addr)
            if self.cmd == P.CMD_COMMIT:
                if self.cursor != (len(DEPTHS), 0):
                    return self._error(P.ERR_NOT_LOADED)
                self.loaded = True
            return self._good()
        self.crc = P.crc8(bytes([b]), self.crc)
        if st_ == "CMD":
            self.cmd, self.state = b, "LEN0"
        elif st_ == "LEN0":
            self.lo, self.state = b, "LEN1"
        elif st_ == "LEN1":
            n = self.lo | b << 8
            self.words, self.have = [], None
            if self.cmd in (P.CMD_PING, P.CMD_COUNT, P.CMD_COMMIT):
                if n:
                    return self._refuse(P.ERR_LENGTH, n)
                self.state = "CRC"
            elif self.cmd == P.CMD_INFER:
                if n != 2 * N_IN:
                    return self._refuse(P.ERR_LENGTH, n)
                if not self.loaded:
                    return self._refuse(P.ERR_NOT_LOADED, n)
                self.state = "INFER"
            elif self.cmd == P.CMD_LOAD:
                if not (n & 1 and 5 <= n <= 3 + 2 * P.MAX_LOAD_WORDS):
                    return self._refuse(P.ERR_LENGTH, n)
                self.state, self.left, self.head = "LOAD", n, []
            else:
                return self._refuse(P.ERR_COMMAND, n)
        elif st_ == "INFER":
            if self.have is None:
                self.have = b
            else:
                self.words.append(struct.unpack("<h", bytes([self.have, b]))[0])
                self.have = None
                if len(self.words) == N_IN:
                    self.state = "CRC"
        elif st_ == "LOAD":
            self.left -= 1
            if len(self.head) < 3:
                self.head.append(b)
                if len(self.head) == 3:
                    return self._load_header()
            elif self.have is None:
                self.have = b
            else:
                self.writes.append((self.mem, self.addr, self.have | b << 8))
                self.addr += 1
                self.have = None
            if self.left == 0:
                self.state = "CRC"
        return None

    def _load_header(self):
        mem, addr = self.head[0], self.head[1] | self.head[2] << 8
        end = addr + self.left // 2
        ok = (mem < len(DEPTHS) and addr < 1 << 14 and (mem, addr) in (self.cursor, (0, 0))
              and end <= DEPTHS[mem])
        if not ok:
            return self._refuse(P.ERR_ADDRESS, self.left)
        self.loaded = False
        self.cursor = (mem, addr)
        self.mem, self.addr, self.last = mem, addr, end == DEPTHS[mem]
        return None

    def gap(self):
        """The line is quiet for longer than the timeout; the reply it causes, or None."""
        st_ = self.state
        if st_ == "IDLE":
            return None
        if st_ == "SKIP":
            return self._error(self.err)
        if st_ == "INFER" or (st_ == "CRC" and self.cmd == P.CMD_INFER):
            self._run(self.words + [0] * (N_IN - len(self.words)))
        return self._error(P.ERR_TIMEOUT)


def run(pieces, seed):
    """Feed the pieces (bytes, quiet_after) to the link; check every reply and write."""
    dut = Link(in_features=N_IN, out_features=N_OUT, num_layers=N_L, pes=8,
               clock_hz=12_000_000, timeout=TIMEOUT, loads=DEPTHS)
    rng = random.Random(seed)
    model = LinkModel()
    tx, writes, runs = bytearray(), [], []

    async def engine(ctx):
        count = 0
        while True:
            x = []
            ctx.set(dut.act_out.ready, 1)
            while len(x) < N_IN:
                _, _, valid, ready, payload = await ctx.tick().sample(
                    dut.act_out.valid, dut.act_out.ready, dut.act_out.payload)
                if valid and ready:
                    x.append(payload)
                ctx.set(dut.act_out.ready, rng.random() < 0.8)
            ctx.set(dut.act_out.ready, 0)
            ctx.set(dut.busy, 1)
            await ctx.tick().repeat(3)
            count += 1
            runs.append(x)
            for v in engine_out(x):
                ctx.set(dut.act_in.valid, 1)
                ctx.set(dut.act_in.payload, v)
                await ctx.tick().until(dut.act_in.ready)
            ctx.set(dut.act_in.valid, 0)
            ctx.set(dut.cycles, 1000 + count)
            for i in range(N_L):
                ctx.set(dut.layer_cycles[i], 100 * (i + 1) + count)
            await ctx.tick()
            ctx.set(dut.busy, 0)

    async def monitor(ctx):
        ctx.set(dut.tx.ready, 1)
        async for _clk, _rst, tv, tp, we, mem, addr, data in ctx.tick().sample(
                dut.tx.valid, dut.tx.payload, dut.load_we, dut.load_mem, dut.load_addr,
                dut.load_data):
            if tv:
                tx.append(tp)
            if we:
                writes.append((mem, addr, data))

    async def expect(ctx, want, what):
        """Exactly `want` (a frame, or nothing) comes out within REPLY_CYCLES."""
        n = len(want) if want else 0
        for _ in range(REPLY_CYCLES):
            if len(tx) >= n and (n or _ >= 2 * TIMEOUT):
                break
            await ctx.tick()
        got, want = bytes(tx), want or b""
        tx.clear()
        assert got == want, f"{what}: link sent {got.hex()}, expected {want.hex()}"

    async def host(ctx):
        for i, (data, quiet) in enumerate(pieces):
            for j, b in enumerate(data):
                ctx.set(dut.rx.valid, 1)
                ctx.set(dut.rx.payload, b)
                await ctx.tick().until(dut.rx.ready)
                ctx.set(dut.rx.valid, 0)
                want = model.byte(b)
                if want is not None:
                    await expect(ctx, want, f"piece {i} byte {j}")
            if quiet:
                await ctx.tick().repeat(TIMEOUT + 4)
                await expect(ctx, model.gap(), f"quiet after piece {i}")
                # liveness: a good PING is answered after any quiet line
                ping = P.ping_request()
                for b in ping:
                    ctx.set(dut.rx.valid, 1)
                    ctx.set(dut.rx.payload, b)
                    await ctx.tick().until(dut.rx.ready)
                    ctx.set(dut.rx.valid, 0)
                    want = model.byte(b)
                assert want is not None and want[1] == P.CMD_PING
                await expect(ctx, want, f"PING after piece {i}")
        await ctx.tick().repeat(TIMEOUT + 4)
        await expect(ctx, model.gap(), "end")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(engine, background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(host)
    sim.run()
    assert writes == model.writes  # no write the model does not make (refused LOADs: none)
    assert runs == model.engine_inputs  # no engine run for a refused INFER
    return model


# -- pieces of a stream ----------------------------------------------------------------------

def load_frame(mem, addr, words):
    return P.encode_frame(P.CMD_LOAD, struct.pack(f"<BH{len(words)}H", mem, addr, *words))


GOOD_LOADS = [load_frame(0, 0, [1, 2]), load_frame(0, 2, [3, 4]), load_frame(1, 0, [5, 6, 7])]
COMMIT = P.commit_request()
words16 = st.integers(0, 0xFFFF)
good_frame = st.one_of(
    st.just(P.ping_request()),
    st.just(P.count_request()),
    st.just(COMMIT),
    st.sampled_from(GOOD_LOADS),
    st.builds(lambda x: P.infer_request(np.array(x)),
              st.lists(st.integers(-32768, 32767), min_size=N_IN, max_size=N_IN)),
    st.builds(load_frame, st.integers(0, 2), st.sampled_from([0, 1, 2, 3, 0xC000]),
              st.lists(words16, min_size=1, max_size=4)),
)
# refused frames whose payload holds whole COMMIT and PING frames
carrier = st.builds(
    lambda cmd, inner, extra: P.encode_frame(cmd, inner + bytes(extra)),
    st.sampled_from([P.CMD_INFER, P.CMD_PING, P.CMD_COMMIT, 0x42, P.CMD_LOAD]),
    st.sampled_from([COMMIT, COMMIT * 2, P.ping_request() + COMMIT,
                     bytes([1, 0, 0]) + COMMIT, bytes([0, 9, 0]) + COMMIT]),
    st.integers(0, 3),
)
garbage = st.one_of(
    st.binary(max_size=24),
    st.lists(st.sampled_from([P.SYNC_REQ, P.CMD_COMMIT, 0, 1, 0xFF]), max_size=16).map(bytes),
)


@st.composite
def damaged(draw):
    f = bytearray(draw(good_frame))
    if draw(st.booleans()):
        i = draw(st.integers(1, len(f) - 1))
        f[i] ^= draw(st.integers(1, 255))
        return bytes(f)
    return bytes(f[: draw(st.integers(1, len(f) - 1))])


# LOADs that are refused only because of where the load cursor stands: past the end of a
# memory from the cursor, out of order, a restart
TRICKY_LOADS = [load_frame(0, 2, [9, 9, 9]), load_frame(1, 0, [9, 9, 9, 9]),
                load_frame(1, 2, [9]), load_frame(0, 1, [9]), load_frame(0, 0, [8, 8, 8, 8]),
                load_frame(1, 0, [8])]
# a load under way (the first k good LOADs, maybe COMMIT), then anything: the states where
# order, range and COMMIT checks matter
session = st.builds(lambda k, commit, then: b"".join(GOOD_LOADS[:k]) + COMMIT * commit + then,
                    st.integers(0, 3), st.booleans(),
                    st.one_of(st.sampled_from(TRICKY_LOADS), good_frame, damaged(), carrier))
piece = st.tuples(st.one_of(good_frame, session, carrier, garbage, damaged()), st.booleans())
stream = st.lists(piece, min_size=1, max_size=8)

EXAMPLES = 300 if long_tests() else 12
# The normal run reports a failure as found (shrinking it can take minutes); LONG=1 shrinks.
PHASES = list(Phase) if long_tests() else [Phase.explicit, Phase.reuse, Phase.generate]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream, st.integers(0, 2**16))
def test_link_fuzz(pieces, seed):
    run(pieces, seed)


def test_model_load_sequence():
    """The fuzzing's reference itself: a full load commits; COMMIT bytes in payloads do not."""
    pieces = [(P.encode_frame(P.CMD_INFER, COMMIT + bytes(1)), False)]
    pieces += [(f, False) for f in GOOD_LOADS] + [(COMMIT, True)]
    pieces += [(P.infer_request(np.array([1, 2, 3])), False), (P.count_request(), True)]
    m = run(pieces, 1)
    assert m.loaded and m.inferences == 1 and m.errors == 1
    assert [w[2] for w in m.writes] == [1, 2, 3, 4, 5, 6, 7]


def test_every_cursor_case():
    """Each tricky LOAD after each prefix of a good load, then COMMIT: one stream, in order."""
    pieces = [(b"".join(GOOD_LOADS[:k]) + t, False) for k in range(4) for t in TRICKY_LOADS]
    pieces = [p for pair in zip(pieces, [(COMMIT, True)] * len(pieces)) for p in pair]
    m = run(pieces, 2)
    assert m.errors > 0 and len(m.writes) > 0
