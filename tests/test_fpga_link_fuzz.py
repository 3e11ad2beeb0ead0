"""Fuzzing the link (fpga/gateware/link.py) in the Amaranth simulator against a reference model.

Hypothesis builds byte streams of garbage (SYNC bytes in it), good frames (PING, COUNT, INFER,
PACKED in every format, LOAD in and out of order, COMMIT), PACKED frames of any content, refused
frames that carry COMMIT and PING frames in their payload, and good frames with a byte changed
or cut short, with or without a quiet line (longer than the link's timeout) after each piece.
`LinkModel` says, byte by byte, what the link must do: the exact reply frame each frame must
get, in order, every load-port write, every engine run. The bench sends the bytes back to back
without waiting for replies (they queue up in the link, a window of 2, while the next frames
arrive) and after every quiet line checks that every reply due came out, exactly. So the test
asserts that the link never locks up (every reply comes in bounded time, a PING after every
quiet line is answered), never runs a request it refused (no write, no engine run, no flag
changed that the model does not make: a COMMIT inside a payload never commits) and answers
every good frame right.

The normal run takes a few examples (a few seconds); LONG=1 runs many more.
"""

import random
import struct

import numpy as np
from amaranth.sim import Simulator
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fpga import protocol as P
from fpga.gateware.link import Link

from .conftest import long_tests

N_IN, N_OUT, N_L, TIMEOUT = 11, 2, 2, 24  # 11 inputs: a whole mask group and a part
WINDOW = 2
DEPTHS = [4, 3]
REPLY_CYCLES = 400  # a reply must be out within this many cycles of its cause


def engine_out(x):
    """The bench's engine: y_k = wrap16(sum(x) * (k + 1) - k)."""
    s = sum(int(v) for v in x)
    return [((s * (k + 1) - k + 32768) % 65536) - 32768 for k in range(N_OUT)]


def rep(cmd, payload=b""):
    return P.encode_frame(cmd, payload, sync=P.SYNC_REP)


class LinkModel:
    """The link's receiver, byte by byte (docs/fpga.md, "What the link refuses").

    `byte(b)` and `gap()` return the reply the frame they end must get (None if none): the
    link sends the replies in that order, whatever else arrives meanwhile.
    """

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
        if self.ran:
            self._run()
        self.errors += 1
        self.state = "IDLE"
        return rep(P.CMD_ERROR, bytes([code, self.cmd]))

    def _run(self):
        """The frame's inputs (completed with zeros) went into the engine."""
        x = self.words + [0] * (N_IN - len(self.words))
        self.runs += 1
        self.engine_inputs.append(list(x))
        self.ran = False
        return engine_out(x)

    def _counters(self):
        c = 1000 + self.runs if self.runs else 0
        lc = [100 * (i + 1) + self.runs if self.runs else 0 for i in range(N_L)]
        return struct.pack(f"<{1 + N_L}I", c, *lc)

    def _good(self):
        self.state = "IDLE"
        if self.cmd == P.CMD_PING:
            return rep(P.CMD_PING, struct.pack("<BBBHHIB", P.VERSION, 8, N_L, N_IN, N_OUT,
                                               12_000_000,
                                               int(self.loaded) | (WINDOW - 1) << 2))
        if self.cmd == P.CMD_COUNT:
            return rep(P.CMD_COUNT, struct.pack("<2I", self.inferences, self.errors)
                       + self._counters())
        if self.cmd in (P.CMD_INFER, P.CMD_PACKED):
            y = self._run()
            self.inferences += 1
            tag = bytes([self.tag]) if self.cmd == P.CMD_PACKED else b""
            return rep(self.cmd, tag + struct.pack(f"<{N_OUT}h", *y) + self._counters())
        return rep(self.cmd)  # LOAD, COMMIT

    def _refuse(self, code, left):
        self.state, self.err, self.left = "SKIP", code, left
        return None

    def _inputs(self, fmt, base=0):
        self.state, self.ran = "INPUTS", True
        self.mask_on, self.wide, self.base = bool(fmt & P.FMT_MASK), bool(fmt & P.FMT_WIDE), base
        self.mneed, self.mask = True, 0
        return self._advance()

    def _advance(self):
        """What the link does without a byte: zero inputs of a mask, the end of the inputs."""
        while len(self.words) < N_IN:
            i = len(self.words) % 8
            if self.mask_on and i == 0 and self.mneed:
                break
            if self.mask_on and not self.mask >> i & 1:
                self.words.append(0)
                self.mneed = i == 7
                continue
            break
        if len(self.words) == N_IN:
            if self.left:
                return self._refuse(P.ERR_LENGTH, self.left)
            self.state = "CRC"
        elif self.left == 0:
            return self._refuse(P.ERR_LENGTH, 0)  # the inputs padded, then its CRC dropped
        return None

    def _input_byte(self, b):
        i = len(self.words) % 8
        if self.mask_on and i == 0 and self.mneed:
            self.mask, self.mneed = b, False
        elif self.wide and self.have is None:
            self.have = b
        else:
            v = struct.unpack("<h", bytes([self.have, b]))[0] if self.wide else \
                ((b + self.base + 32768) & 0xFFFF) - 32768
            self.words.append(v)
            self.have = None
            self.mneed = i == 7
        return self._advance()

    def byte(self, b):
        """One byte taken by the link; the reply frame it must then send, or None."""
        st_ = self.state
        if st_ == "IDLE":
            if b == P.SYNC_REQ:
                self.state, self.crc, self.cmd, self.ran = "CMD", 0xFF, 0, False
            return None
        if st_ == "SKIP":
            if self.left == 0:
                return self._error(self.err)
            self.left -= 1
            return None
        if st_ == "CRC":
            ok = b == self.crc
            if not ok:
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
            self.words, self.have, self.left = [], None, n
            if self.cmd in (P.CMD_PING, P.CMD_COUNT, P.CMD_COMMIT):
                if n:
                    return self._refuse(P.ERR_LENGTH, n)
                self.state = "CRC"
            elif self.cmd == P.CMD_INFER:
                if n != 2 * N_IN:
                    return self._refuse(P.ERR_LENGTH, n)
                if not self.loaded:
                    return self._refuse(P.ERR_NOT_LOADED, n)
                return self._inputs(P.FMT_WIDE)
            elif self.cmd == P.CMD_PACKED:
                if n < 2:
                    return self._refuse(P.ERR_LENGTH, n)
                if not self.loaded:
                    return self._refuse(P.ERR_NOT_LOADED, n)
                self.state, self.head = "PACKED", []
            elif self.cmd == P.CMD_LOAD:
                if not (n & 1 and 5 <= n <= 3 + 2 * P.MAX_LOAD_WORDS):
                    return self._refuse(P.ERR_LENGTH, n)
                self.state, self.head = "LOAD", []
            else:
                return self._refuse(P.ERR_COMMAND, n)
        elif st_ == "PACKED":
            self.left -= 1
            self.head.append(b)
            if len(self.head) == 1:
                self.tag = b
            elif len(self.head) == 2 and b & ~P.FMT_BITS:
                return self._refuse(P.ERR_FORMAT, self.left)
            elif len(self.head) == 2 and b & P.FMT_WIDE:
                return self._inputs(b)
            elif len(self.head) == 4:
                return self._inputs(self.head[1], struct.unpack("<h", bytes(self.head[2:]))[0])
            if self.left == 0:
                return self._refuse(P.ERR_LENGTH, 0)
        elif st_ == "INPUTS":
            self.left -= 1
            return self._input_byte(b)
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
        return self._error(P.ERR_TIMEOUT)


def run(pieces, seed):
    """Feed the pieces (bytes, quiet_after) to the link; check every reply and write.

    The host does not wait for replies while it sends a piece (the replies come out as the
    link receives the next frames); after a quiet line every reply due must be out."""
    dut = Link(in_features=N_IN, out_features=N_OUT, num_layers=N_L, pes=8,
               clock_hz=12_000_000, timeout=TIMEOUT, loads=DEPTHS, window=WINDOW)
    rng = random.Random(seed)
    model = LinkModel()
    tx, writes, runs = bytearray(), [], []
    due = []  # the replies the model says are due, in order

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
            await ctx.tick().repeat(3)
            count += 1
            runs.append(x)
            for v in engine_out(x):
                ctx.set(dut.act_in.valid, 1)
                ctx.set(dut.act_in.payload, v)
                await ctx.tick().until(dut.act_in.ready)
            ctx.set(dut.act_in.valid, 0)
            # the counters of an inference change when its last output word is taken
            ctx.set(dut.cycles, 1000 + count)
            for i in range(N_L):
                ctx.set(dut.layer_cycles[i], 100 * (i + 1) + count)

    async def monitor(ctx):
        ctx.set(dut.tx.ready, 1)
        async for _clk, _rst, tv, tp, we, mem, addr, data in ctx.tick().sample(
                dut.tx.valid, dut.tx.payload, dut.load_we, dut.load_mem, dut.load_addr,
                dut.load_data):
            if tv:
                tx.append(tp)
            if we:
                writes.append((mem, addr, data))

    async def expect(ctx, what):
        """Every reply due comes out, exactly, within REPLY_CYCLES each; then nothing more."""
        want = b"".join(due)
        for i in range(REPLY_CYCLES * (len(due) + 1)):
            if len(tx) >= len(want) and i >= 2 * TIMEOUT:
                break
            await ctx.tick()
        got = bytes(tx)
        tx.clear()
        due.clear()
        assert got == want, f"{what}: link sent {got.hex()}, expected {want.hex()}"

    async def send(ctx, data):
        for b in data:
            ctx.set(dut.rx.valid, 1)
            ctx.set(dut.rx.payload, b)
            await ctx.tick().until(dut.rx.ready)
            ctx.set(dut.rx.valid, 0)
            if (want := model.byte(b)) is not None:
                due.append(want)

    async def host(ctx):
        for i, (data, quiet) in enumerate(pieces):
            await send(ctx, data)
            if quiet:
                await ctx.tick().repeat(TIMEOUT + 4)
                if (want := model.gap()) is not None:
                    due.append(want)
                await expect(ctx, f"quiet after piece {i}")
                # liveness: a good PING is answered after any quiet line
                await send(ctx, P.ping_request())
                assert due and due[-1][1] == P.CMD_PING
                await expect(ctx, f"PING after piece {i}")
        await ctx.tick().repeat(TIMEOUT + 4)
        if (want := model.gap()) is not None:
            due.append(want)
        await expect(ctx, "end")

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
    st.builds(lambda x, tag: P.packed_request(np.array(x), tag),
              st.lists(st.sampled_from([0, 0, 0, 1, 2, 256, -7, 1000, -32768, 32767]),
                       min_size=N_IN, max_size=N_IN), st.integers(0, 255)),
)
# PACKED frames of any content: a format, then bytes that may or may not fit it
raw_packed = st.builds(lambda tag, fmt, body: P.encode_frame(P.CMD_PACKED,
                                                             bytes([tag, fmt]) + body),
                       st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 4, 0x81]),
                       st.binary(max_size=26))
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
piece = st.tuples(st.one_of(good_frame, session, carrier, garbage, damaged(), raw_packed),
                  st.booleans())
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
    x = np.arange(1, N_IN + 1)
    pieces += [(P.infer_request(x), False), (P.count_request(), True)]
    m = run(pieces, 1)
    assert m.loaded and m.inferences == 1 and m.errors == 1
    assert m.engine_inputs == [list(x)]
    assert [w[2] for w in m.writes] == [1, 2, 3, 4, 5, 6, 7]


def test_packed_corner_cases():
    """PACKED frames streamed back to back: every format, lengths one byte off, bad formats."""
    xs = [np.zeros(N_IN, int), np.arange(1, N_IN + 1), np.array([0, 256] * 5 + [1]),
          np.array([-32768, 0, 32767] + [0] * 8), np.full(N_IN, -3)]
    good = [P.packed_request(x, t) for t, x in enumerate(xs)]
    dense_narrow = P.encode_frame(P.CMD_PACKED, bytes([9, 0]) + struct.pack("<h", -5)
                                  + bytes(range(N_IN)))
    short = bytearray(P.encode_frame(P.CMD_PACKED, bytes([1, 3, 0xFF]) + bytes(11)))
    pieces = [(b"".join(GOOD_LOADS) + COMMIT, True), (b"".join(good) + dense_narrow, True)]
    for f in good + [dense_narrow]:
        body = f[4:-1]
        pieces += [(P.encode_frame(P.CMD_PACKED, body[:-1]), False),  # one byte short
                   (P.encode_frame(P.CMD_PACKED, body + b"\x00"), False)]  # one byte long
    pieces += [(P.encode_frame(P.CMD_PACKED, bytes([1, 4]) + bytes(20)), False),
               (bytes(short[:9]), True), (P.count_request(), True)]
    m = run(pieces, 3)
    assert m.engine_inputs[:len(xs) + 1] == [list(x) for x in xs] + [
        [v - 5 for v in range(N_IN)]]
    assert m.inferences == len(xs) + 1 and m.errors == 2 * (len(good) + 1) + 2


def test_every_cursor_case():
    """Each tricky LOAD after each prefix of a good load, then COMMIT: one stream, in order."""
    pieces = [(b"".join(GOOD_LOADS[:k]) + t, False) for k in range(4) for t in TRICKY_LOADS]
    pieces = [p for pair in zip(pieces, [(COMMIT, True)] * len(pieces)) for p in pair]
    m = run(pieces, 2)
    assert m.errors > 0 and len(m.writes) > 0
