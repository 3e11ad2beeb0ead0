"""The host against a board that keeps talking: endless random bytes, endless SYNC bytes, one
byte every 4 s, a good PING then endless COUNT frames or PACKED replies with an unknown tag, a
flood of false SYNCs, a PING claiming a clock of 0 Hz or 255 PEs. Each must end with one line
(exit status 1 from the command line) after bounded CPU time: the reply deadline is fixed when
the host starts waiting, stale and unknown frames are capped, and the decoder's cost per byte
is bounded.

The unit tests run the host on a simulated clock (the transport advances it), so "one byte
every 4 s" takes no real time; a guard in the transport fails a test that would otherwise run
for ever. The command-line tests run `python -m fpga run --port PTY` against a pty.
"""

import os
import pty
import random
import re
import resource
import select
import struct
import subprocess
import sys
import threading
import time
import tty

import numpy as np
import pytest

from compress.qnet import save_qnet
from compress.synthetic import random_inputs, random_qnet
from fpga.host import client as H
from fpga import protocol as P
from fpga.host.client import Board

BoardError = getattr(H, "BoardError", P.ProtocolError)

from .conftest import REPO

N_IN, N_OUT, N_L = 4, 3, 2


def reply(cmd, payload=b""):
    return P.encode_frame(cmd, payload, sync=P.SYNC_REP)


def ping_reply(pes=2, clock=25_000_000, loaded=True):
    return reply(P.CMD_PING, struct.pack("<BBBHHIB", P.VERSION, pes, N_L, N_IN, N_OUT, clock,
                                         int(loaded)))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Talker:
    """A transport on a simulated clock: after the host's first write it answers PING with
    `first` (if any), then sends what `stream(k)` gives for the k-th chunk, one chunk every
    `every` seconds of simulated time. More than `guard` reads fail the test (the host would
    otherwise never stop)."""

    def __init__(self, clock, stream, *, first=b"", every=0.0, guard=200_000):
        self.clock, self.stream, self.every, self.guard = clock, stream, every, guard
        self.first = first
        self.out = bytearray()
        self.k = self.reads = 0
        self.next_at = None
        self.written = 0

    def write(self, data):
        self.written += len(data)
        if self.first:
            self.out += self.first
            self.first = b""

    def read(self, n, timeout):
        self.reads += 1
        assert self.reads < self.guard, "the host never stops reading"
        if not self.written:  # quiet until the host says something
            self.clock.now += timeout
            return b""
        if self.out:
            data = bytes(self.out[:n])
            del self.out[:n]
            return data
        if self.next_at is None:
            self.next_at = self.clock.now
        wait = max(0.0, self.next_at - self.clock.now)
        if wait > timeout:
            self.clock.now += timeout
            return b""
        self.clock.now += wait
        self.next_at = self.clock.now + self.every
        chunk = self.stream(self.k)
        self.k += 1
        self.out += chunk[n:]
        return chunk[:n]

    def close(self):
        pass


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(H.time, "monotonic", c)
    return c


def _random(k):
    return random.Random(k).randbytes(4096)


def _sync(k):
    return bytes([P.SYNC_REP]) * 4096


def _count(k):
    return reply(P.CMD_COUNT, bytes(12 + 4 * N_L)) * 8


def _unknown_tag(k):
    return reply(P.CMD_PACKED, bytes([200]) + bytes(2 * N_OUT + 4 + 4 * N_L)) * 8


XS = np.arange(3 * N_IN).reshape(3, N_IN) % 5


def _run(board, what):
    t = time.process_time()
    if what == "ping":
        board.ping()
    else:
        board.infer_many(XS)
    return time.process_time() - t


@pytest.mark.parametrize("stream,first,every,what,err", [
    (_random, b"", 0.0, "ping", BoardError),
    (_sync, b"", 0.0, "ping", BoardError),
    (_random, ping_reply(), 0.0, "infer", BoardError),
    (_sync, ping_reply(), 0.0, "infer", BoardError),
    (lambda k: b"\x42", b"", 4.0, "ping", TimeoutError),  # one byte every 4 s
    (lambda k: b"\x42", ping_reply(), 4.0, "infer", P.ProtocolError),
    (_count, ping_reply(), 0.0, "infer", BoardError),
    (_unknown_tag, ping_reply(), 0.0, "infer", BoardError),
], ids=["random", "sync", "random-after-ping", "sync-after-ping", "drip", "drip-after-ping",
        "endless-count", "unknown-tags"])
def test_a_board_that_keeps_talking_is_left(clock, stream, first, every, what, err):
    """Item 5: each ran until killed."""
    t = Talker(clock, stream, first=first, every=every)
    b = Board(t, timeout=5.0)
    if what == "infer":
        b.ping()
    start = clock.now
    with pytest.raises(err) as e:
        _run(b, what)
    assert "\n" not in str(e.value)
    # simulated seconds: a deadline per reply, and 1 + 3 resends of each input at most
    assert clock.now - start <= 4 * 5.0 + 1
    assert t.reads < 20_000


def test_decoder_cost_per_byte_is_bounded():
    """A flood of false SYNCs cost ~5 ms of CPU per byte (a CRC over up to 64 KB for each):
    the host's decoder skips a header no reply has at once, and any decoder stops checking
    CRCs that keep failing (ProtocolError) after 8 bytes of CRC per byte fed."""
    flood = bytes([P.SYNC_REP]) * (1 << 18)
    lies = b"".join(bytes([P.SYNC_REP, P.CMD_INFER, 0xFF, 0xFF]) for _ in range(1 << 16))
    b = Board(Talker(Clock(), _sync), timeout=5.0)
    b.info = P.decode_ping(P.FrameDecoder().feed(ping_reply())[0])
    for data in (flood, lies):
        dec = b._decoder()
        t = time.process_time()
        for i in range(0, len(data), 4096):
            assert dec.feed(data[i:i + 4096]) == []
            assert time.process_time() - t < 2.0  # CPU, with headroom: ~0.1 s measured
    plain = P.FrameDecoder()  # no knowledge of the replies: the CRC budget ends it
    t = time.process_time()
    with pytest.raises(P.ProtocolError, match="checksum fails"):
        for i in range(0, len(lies), 4096):
            plain.feed(lies[i:i + 4096])
            assert time.process_time() - t < 5.0
    # A good frame right after the noise is found at once (a decoder that does not know the
    # reply lengths waits for the false frames' declared lengths, or a quiet line).
    good = ping_reply()
    assert [f.cmd for f in b._decoder().feed(flood[:300] + lies[:64] + good)] == [P.CMD_PING]


@pytest.mark.parametrize("payload,words", [
    (dict(clock=0), "clock of 0 Hz"),
    (dict(pes=255), "255 PEs"),
    (dict(pes=0), "0 PEs"),
])
def test_impossible_ping_refused(clock, payload, words):
    t = Talker(clock, lambda k: b"", first=ping_reply(**payload))
    with pytest.raises(BoardError, match=words):
        Board(t, timeout=5.0).ping()


# -- the command line against a pty ------------------------------------------------------------


def _pty_board(master, stop, first, stream):
    """The far end of the pty: every PING is answered with `first` (if any); after the first
    other request (or any request, without `first`), `stream` chunks go out as fast as the line
    takes them."""
    k, started = 0, False
    dec = P.FrameDecoder(sync=P.SYNC_REQ)
    while not stop.is_set():
        r, w, _ = select.select([master], [master] if started else [], [], 0.05)
        try:
            if r:
                for f in dec.feed(os.read(master, 4096)):
                    if f.cmd == P.CMD_PING and first:
                        os.write(master, first)
                    else:
                        started = True
                started = started or not first
            if w:
                os.write(master, stream(k))
                k += 1
        except OSError:  # the host closed the port
            time.sleep(0.01)


@pytest.fixture(scope="module")
def qnet_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lying")
    save_qnet(random_qnet((N_IN, 5, N_OUT), seed=3, density=0.7), d / "q.npz")
    np.save(d / "x.npy", random_inputs(4, N_IN))
    return d


@pytest.mark.parametrize("first,stream,words", [
    (b"", _random, "without one frame"),
    (ping_reply(), _unknown_tag, "do not answer a PACKED request"),
    (ping_reply(), _count, "do not answer a PACKED request"),
    (ping_reply(pes=255, loaded=False), lambda k: b"", "255 PEs"),
], ids=["random", "unknown-tags", "endless-count", "255-pes"])
def test_fpga_run_against_a_lying_pty(qnet_files, first, stream, words):
    master, slave = pty.openpty()
    tty.setraw(slave)
    stop = threading.Event()
    th = threading.Thread(target=_pty_board, args=(master, stop, first, stream), daemon=True)
    th.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run([sys.executable, "-m", "fpga", "run", "--port", os.ttyname(slave),
                            "--model", qnet_files / "q.npz", "--inputs", qnet_files / "x.npy",
                            "--timeout", "2"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)  # a guard against a hang, not a bound on time
    finally:
        stop.set()
        th.join(5)
        os.close(master)
        os.close(slave)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert p.returncode == 1, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert re.search(words, p.stderr), p.stderr
    assert cpu < 30, cpu  # the interpreter and numpy; the exchange itself is milliseconds
