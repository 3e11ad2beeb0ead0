"""The host's protocol client (fpga.host.Board) against a fake board that misbehaves.

The fake transport answers requests like the board's link (fpga/gateware/link.py): PING, INFER, COUNT,
LOAD in order with the load cursor, COMMIT. Hooks inject what a noisy line or a confused board
can produce: extra replies, replies to other commands, noise, garbled or lost replies. The host
must give each request its own reply and never fall one reply behind.
"""

import struct
import time

import numpy as np
import pytest

from fpga import protocol as P
from fpga.host.client import Board
from images.memmap import MemorySpec

N_IN, N_OUT, N_L = 3, 2, 1


def reply(cmd, payload=b""):
    return P.encode_frame(cmd, payload, sync=P.SYNC_REP)


def error(code, cmd):
    return reply(P.CMD_ERROR, bytes([code, cmd]))


class FakeBoard:
    """A transport whose far end is a model of the board; `hooks[i](frame, answer)` -> bytes
    replaces the bytes sent back for the i-th request (default: the answer)."""

    def __init__(self, depths=(), hooks=None, corrupt=(), window=1):
        self.depths = list(depths)
        self.window = window
        self.burst = self.max_burst = 0  # requests written between two reads
        self.hooks = hooks or {}
        self.corrupt = set(corrupt)  # requests that arrive damaged: ERR_CRC, no effect
        self.dec = P.FrameDecoder(sync=P.SYNC_REQ)
        self.out = bytearray()
        self.n = 0  # requests seen
        self.loaded = not self.depths
        self.cursor = (0, 0)
        self.mem = [[None] * d for d in self.depths]
        self.inferences = 0

    # transport interface
    def write(self, data):
        for f in self.dec.feed(data):
            ans = error(P.ERR_CRC, f.cmd) if self.n in self.corrupt else self.answer(f)
            hook = self.hooks.get(self.n)
            self.n += 1
            self.out += hook(f, ans) if hook else ans
            self.burst += 1
            self.max_burst = max(self.max_burst, self.burst)

    def read(self, n, timeout):
        if not self.out:
            time.sleep(min(timeout, 0.005))
            return b""
        self.burst = 0
        data = bytes(self.out[:n])
        del self.out[:n]
        return data

    # the board
    def answer(self, f):
        if f.cmd == P.CMD_PING:
            flags = int(self.loaded) | (self.window - 1) << 2
            return reply(P.CMD_PING, struct.pack("<BBBHHIB", P.VERSION, 8, N_L, N_IN, N_OUT,
                                                  12_000_000, flags))
        if f.cmd == P.CMD_INFER:
            if not self.loaded:
                return error(P.ERR_NOT_LOADED, f.cmd)
            x = np.frombuffer(f.payload, "<i2").astype(np.int64)
            self.inferences += 1
            y = np.array([x.sum() + k for k in range(N_OUT)], "<i2")
            return reply(P.CMD_INFER, y.tobytes() + struct.pack("<2I", 100, 90))
        if f.cmd == P.CMD_PACKED:
            if not self.loaded:
                return error(P.ERR_NOT_LOADED, f.cmd)
            x, err = P.unpack_inputs(f.payload, N_IN)
            if err:
                return error(err, f.cmd)
            self.inferences += 1
            y = np.array([sum(x) + k for k in range(N_OUT)], "<i2")
            return reply(P.CMD_PACKED, f.payload[:1] + y.tobytes() + struct.pack("<2I", 100, 90))
        if f.cmd == P.CMD_LOAD:
            mem, addr = struct.unpack_from("<BH", f.payload)
            words = np.frombuffer(f.payload[3:], "<u2")
            if (mem, addr) not in (self.cursor, (0, 0)) or mem >= len(self.depths) or \
                    addr + len(words) > self.depths[mem]:
                return error(P.ERR_ADDRESS, f.cmd)
            self.loaded = False
            self.mem[mem][addr:addr + len(words)] = [int(w) for w in words]
            end = addr + len(words)
            self.cursor = (mem + 1, 0) if end == self.depths[mem] else (mem, end)
            return reply(P.CMD_LOAD)
        if f.cmd == P.CMD_COMMIT:
            if self.cursor != (len(self.depths), 0):
                return error(P.ERR_NOT_LOADED, f.cmd)
            self.loaded = True
            return reply(P.CMD_COMMIT)
        return error(P.ERR_COMMAND, f.cmd)


def board(fake):
    return Board(fake, timeout=0.1)


def test_extra_replies_do_not_shift():
    """An extra frame after a reply, and a frame for another command before one: skipped."""
    hooks = {
        0: lambda f, a: a + error(P.ERR_CRC, P.CMD_INFER) + reply(P.CMD_PING, bytes(12)),
        1: lambda f, a: reply(P.CMD_COUNT, bytes(16)) + error(P.ERR_LENGTH, P.CMD_PING) + a,
        2: lambda f, a: a + a,  # the same reply twice
    }
    fake = FakeBoard(hooks=hooks)
    b = board(fake)
    assert b.ping().in_features == N_IN
    for i in range(4):
        x = np.array([i, 2, 3])
        r = b.infer_dense(x)
        np.testing.assert_array_equal(r.y, [x.sum(), x.sum() + 1])
    assert b.stale == 5
    assert fake.inferences == 4


def test_noise_and_garbled_replies():
    """Noise with SYNC bytes around a reply, a reply with a bad CRC: the host still matches."""
    noise = bytes([P.SYNC_REP, 0x01, 0x40, 0x00, 0x55, P.SYNC_REP, P.SYNC_REP, 0xEE])
    bad = bytearray(reply(P.CMD_PING, bytes(12)))
    bad[-1] ^= 1

    def garbled(f, a):
        return noise + bytes(bad) + a + noise[:3]

    fake = FakeBoard(hooks={1: garbled, 2: garbled})
    b = board(fake)
    b.ping()
    np.testing.assert_array_equal(b.infer_dense(np.array([1, 1, 1])).y, [3, 4])
    np.testing.assert_array_equal(b.infer_dense(np.array([5, 1, 1])).y, [7, 8])


def test_lost_reply_times_out_then_recovers():
    fake = FakeBoard(hooks={1: lambda f, a: b"", 3: lambda f, a: b""})
    b = board(fake)
    b.ping()
    with pytest.raises(TimeoutError):
        b.infer_dense(np.array([1, 2, 3]))
    np.testing.assert_array_equal(b.infer_dense(np.array([1, 2, 3])).y, [6, 7])
    # a PACKED request whose reply is lost is sent again after the silence
    np.testing.assert_array_equal(b.infer(np.array([1, 2, 3])).y, [6, 7])
    assert fake.n == 5


def test_error_for_corrupted_command_is_the_answer():
    """An ERROR naming a command that does not exist: the request's own, garbled on the way."""
    fake = FakeBoard(hooks={0: lambda f, a: error(P.ERR_COMMAND, 0x41)})
    with pytest.raises(P.ProtocolError, match="unknown command"):
        board(fake).ping()


def test_other_protocol_version_refused():
    def v1(f, a):
        return reply(P.CMD_PING, struct.pack("<BBBHHIB", 1, 8, N_L, N_IN, N_OUT, 12_000_000, 1))

    with pytest.raises(P.ProtocolError, match="version 1"):
        board(FakeBoard(hooks={0: v1})).ping()


def test_endless_wrong_replies_give_up():
    fake = FakeBoard(hooks={0: lambda f, a: reply(P.CMD_COUNT, bytes(16)) * 100})
    with pytest.raises(P.ProtocolError, match="do not answer"):
        board(fake).ping()


@pytest.fixture
def plan(monkeypatch):
    specs = [MemorySpec("a", "rom", 16, 300, init=tuple(range(1, 301))),
             MemorySpec("b", "rom", 8, 5, init=(7, 8, 9))]  # shorter than its depth
    monkeypatch.setattr("fpga.boards.ice40.load_plan_for", lambda img: specs)
    return specs


def test_load_in_order_to_full_depth(plan):
    fake = FakeBoard(depths=[s.depth for s in plan])
    b = board(fake)
    assert not b.ping().loaded
    assert b.load(object()) == 305
    assert b.ping().loaded
    assert fake.mem == [list(range(1, 301)), [7, 8, 9, 0, 0]]


def test_load_retries_and_restarts(plan):
    """A LOAD refused for its CRC is sent again; a lost reply, then an out-of-order refusal of
    the resend (the first one had landed), starts the load over."""
    fake = FakeBoard(depths=[s.depth for s in plan], hooks={3: lambda f, a: b""},
                     corrupt={2})
    b = board(fake)
    b.ping()
    b.load(object())
    assert b.ping().loaded and fake.mem[1] == [7, 8, 9, 0, 0]
    # PING; LOAD a[0:256]; LOAD a[256:300] damaged, sent again: lands, its reply lost; sent
    # again: out of order (ERR_ADDRESS); the load over: 2 + 1 LOADs, COMMIT; PING
    assert fake.n == 1 + 1 + 3 + 3 + 1 + 1


def want(x):
    return [int(np.sum(x)) + k for k in range(N_OUT)]


XS = np.array([[i, 0, -i] if i % 3 else [i, 256, 1] for i in range(40)])


def test_infer_many_streams_in_order(monkeypatch):
    """A window of 4 PACKED requests in flight; the results in input order. Frames shorter
    than twice their reply (these: 3 inputs) go one at a time unless told they may stream."""
    fake = FakeBoard(window=4)
    b = board(fake)
    assert b.ping().window == 4
    rs = b.infer_many(XS)
    assert [list(r.y) for r in rs] == [want(x) for x in XS]
    assert fake.max_burst == 1 and fake.n == 1 + len(XS)
    monkeypatch.setattr(P, "streamable", lambda *a: True)
    rs = b.infer_many(XS)
    assert [list(r.y) for r in rs] == [want(x) for x in XS]
    assert fake.max_burst == 4 and fake.n == 1 + 2 * len(XS)
    assert b.infer(XS[5]).y.tolist() == want(XS[5])


def test_infer_many_lost_and_refused_sent_again(monkeypatch):
    """A lost reply, a request that arrives damaged and a stray reply: each input still gets
    its own result; the lost and refused ones are sent again."""
    monkeypatch.setattr(P, "streamable", lambda *a: True)
    stray = reply(P.CMD_PACKED, bytes([200]) + bytes(2 * N_OUT + 8))  # a tag not in flight
    fake = FakeBoard(window=3, hooks={5: lambda f, a: b"", 9: lambda f, a: stray + a},
                     corrupt={12})
    b = board(fake)
    b.ping()
    rs = b.infer_many(XS[:20])
    assert [list(r.y) for r in rs] == [want(x) for x in XS[:20]]
    assert fake.n == 1 + 20 + 2 and b.stale >= 1


def test_infer_many_gives_up():
    """A board that refuses every PACKED request: ProtocolError naming the error."""
    fake = FakeBoard(depths=[4], window=2)  # not loaded: every INFER refused
    b = board(fake)
    b.ping()
    with pytest.raises(P.ProtocolError, match="weights not loaded"):
        b.infer_many(XS[:3], retries=2)


def test_load_streamed_goes_back(plan):
    """LOADs streamed 4 at a time; a damaged one makes the board refuse the frames behind it
    (out of order): the host collects those replies and goes on from the damaged frame."""
    depths = [s.depth for s in plan]
    fake = FakeBoard(depths=depths, window=4, corrupt={2})
    b = board(fake)
    b.ping()
    b.load(object())
    assert b.ping().loaded and fake.mem == [list(range(1, 301)), [7, 8, 9, 0, 0]]
    # PING; LOADs 0, 1 (damaged), 2 in flight (refused, out of order); 1, 2 again; COMMIT; PING
    assert fake.n == 1 + 3 + 2 + 1 + 1
    assert fake.max_burst == 3
