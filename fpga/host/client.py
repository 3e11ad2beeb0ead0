"""The host side of the UART link: transports and the protocol client.

`Board` speaks the protocol (fpga/protocol.py) over any transport with `write(bytes)` and
`read(max_bytes, timeout) -> bytes`: `SerialTransport` (pyserial, a real iCEBreaker) or
`SocketTransport` (the simulated board of fpga/flow/bench.py). fpga/host/runner.py streams
inputs through a `Board` and checks the answers.

Inputs and weights are streamed: up to the board's `window` (PING) requests are in flight, the
next one written as soon as a reply comes, so the line from the host never waits for a round
trip. PACKED requests carry a tag that their reply echoes, so a lost or refused request is
found and sent again without taking another request's reply for its own.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from compress.errors import InputError
from images.engines import MAX_PES

from .. import protocol as P


class SerialTransport:
    def __init__(self, port: str, baud: int):
        import serial  # pyserial

        try:
            self.ser = serial.Serial(port, baudrate=baud, timeout=0.05)
        except (serial.SerialException, OSError) as e:
            raise InputError(f"cannot open serial port {port}: {e}") from None

        try:  # the FTDI's latency timer to 1 ms: replies come back without a 16 ms wait
            self.ser.set_low_latency_mode(True)
        except (AttributeError, NotImplementedError, ValueError, OSError):
            pass

    def write(self, data: bytes) -> None:
        self.ser.write(data)  # no flush: the next request may follow while this one goes out

    def read(self, n: int, timeout: float) -> bytes:
        self.ser.timeout = timeout
        return self.ser.read(max(1, min(n, self.ser.in_waiting or 1)))

    def close(self):
        self.ser.close()


class SocketTransport:
    def __init__(self, sock):
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, n: int, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(n)
        except (TimeoutError, BlockingIOError):  # timeout 0: nothing waiting
            return b""

    def close(self):
        self.sock.close()


# A board that keeps sending frames that answer nothing is broken, not slow.
MAX_STALE_REPLIES = 64
# Bytes the board may send without one whole frame, in frames of the longest reply it can
# send (noise on a line costs a few bytes; a board sending nothing but noise is not a board).
JUNK_FRAMES = 4
# What a board this host works with reports in PING: `fpga build` makes 1..MAX_PES PEs (the one
# PE limit, images.engines), and a clock below 1 kHz (or 0) cannot be one (the throughput
# figures divide by it).
MAX_BOARD_PES = MAX_PES
MIN_CLOCK_HZ = 1000


class BoardError(P.ProtocolError):
    """The board talks nonsense: bytes without frames, frames that answer nothing, an
    impossible PING. One line; the command exits with status 1."""


class Board:
    """Request/reply over a transport; `timeout` is the seconds a reply may take, counted from
    the moment the host starts waiting for it: bytes that arrive meanwhile (noise, frames that
    answer nothing) never move that deadline.

    Each request is matched with its reply: frames that arrived before the request was sent
    are dropped, and so is any reply that cannot answer it (another command, or an ERROR
    about another command: protocol version 2 echoes the refused command). `stale` counts the
    frames dropped, so a stray extra reply never leaves the host one reply behind; more than
    MAX_STALE_REPLIES of them in a row, or JUNK_FRAMES frames' worth of bytes without a frame,
    end the run with `BoardError`. The decoder knows the length of every reply (from PING), so
    a false SYNC in noise costs no more than the byte it is.
    """

    def __init__(self, transport, *, timeout: float = 5.0):
        self.t = transport
        self.timeout = timeout
        self.pending: list[P.Frame] = []
        self.info: P.Info | None = None
        self.dec = self._decoder()
        self.stale = 0
        self.junk = 0  # bytes read since the last whole frame
        self._tag = 0  # the next PACKED request's tag
        self.bytes_out = 0  # bytes written to the board
        self.bytes_in = 0  # bytes read from it

    def _decoder(self) -> P.FrameDecoder:
        self.junk = 0
        return P.FrameDecoder(expect=self._plausible)

    def _reply_lengths(self) -> dict[int, int | None]:
        """Payload length of every reply (None: any, until PING says the network's shape)."""
        fixed: dict[int, int | None] = {P.CMD_ERROR: 2, P.CMD_PING: 12, P.CMD_LOAD: 0,
                                        P.CMD_COMMIT: 0}
        if self.info is None:
            return {**fixed, P.CMD_INFER: None, P.CMD_PACKED: None, P.CMD_COUNT: None}
        o, n_l = self.info.out_features, self.info.num_layers
        return {**fixed, P.CMD_INFER: 2 * o + 4 + 4 * n_l, P.CMD_PACKED: 1 + 2 * o + 4 + 4 * n_l,
                P.CMD_COUNT: 12 + 4 * n_l}

    def _plausible(self, cmd: int, n: int) -> bool:
        lengths = self._reply_lengths()
        return cmd in lengths and lengths[cmd] in (None, n)

    def _max_junk(self) -> int:
        longest = max((n if n is not None else P.MAX_PAYLOAD)
                      for n in self._reply_lengths().values())
        return JUNK_FRAMES * (5 + longest) + 4096

    def _write(self, frame: bytes) -> None:
        self.t.write(frame)
        self.bytes_out += len(frame)

    def _take(self, data: bytes) -> None:
        """Decode what was read; BoardError when the board sends bytes but no frames."""
        self.bytes_in += len(data)
        frames = self.dec.feed(data)
        self.junk = 0 if frames else self.junk + len(data)
        if self.junk > self._max_junk():
            raise BoardError(f"the board sent {self.junk:,} bytes without one frame of this "
                             f"protocol: not a board running this bitstream, or the wrong "
                             f"port or baud rate")
        self.pending += frames

    def _reply(self, deadline: float | None = None) -> P.Frame:
        """The next frame, by `deadline` (time.monotonic(); default: `timeout` from now)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self.pending += self.dec.resync()  # a false frame in noise may hide one
                if self.pending:
                    break
                raise TimeoutError(f"no reply from the board within {self.timeout:g} s")
            self._take(self.t.read(4096, min(left, 0.2)))
        return self.pending.pop(0)

    def _stale(self, run: int, what: str) -> int:
        """Count a frame that answers nothing; BoardError after MAX_STALE_REPLIES in a row."""
        self.stale += 1
        if run + 1 >= MAX_STALE_REPLIES:
            raise BoardError(f"{MAX_STALE_REPLIES} replies in a row that do not answer {what}")
        return run + 1

    def _flush(self) -> None:
        """Drop what arrived unasked (whole frames and a partial one) before a request; a board
        that does not stop sending is refused."""
        n = len(self.pending)
        self.pending.clear()
        got, cap = 0, self._max_junk()
        while data := self.t.read(4096, 0.0):
            got += len(data)
            self.bytes_in += len(data)
            n += len(self.dec.feed(data))
            if got > cap:
                raise BoardError(f"the board keeps sending ({got:,} bytes nobody asked for)")
        self.dec = self._decoder()
        self.stale += n

    def request(self, frame: bytes) -> P.Frame:
        """Send one request frame; its reply (an ERROR reply included)."""
        cmd = P.request_cmd(frame)
        self._flush()
        self._write(frame)
        deadline = time.monotonic() + self.timeout
        run = 0
        while True:
            reply = self._reply(deadline)
            if P.answers(reply, cmd):
                return reply
            run = self._stale(run, f"command {cmd:#04x}")

    def drain(self, quiet: float = 0.3) -> list[P.Frame]:
        """Collect whatever arrives until `quiet` seconds pass with nothing (after garbage), for
        at most `timeout` seconds and JUNK_FRAMES frames' worth of bytes without a frame."""
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            data = self.t.read(4096, min(quiet, left))
            if not data:
                break
            self._take(data)
        frames, self.pending = self.pending, []
        return frames

    def ping(self) -> P.Info:
        info = P.decode_ping(self.request(P.ping_request()))
        if info.version != P.VERSION:
            raise P.ProtocolError(f"the board speaks protocol version {info.version}, this host "
                                  f"{P.VERSION}: build the bitstream from this version")
        # Checked before anything is built for it (a 255-PE image takes minutes).
        if not 1 <= info.pes <= MAX_BOARD_PES:
            raise BoardError(f"the board reports {info.pes} PEs; boards this host works with "
                             f"have 1..{MAX_BOARD_PES}")
        if info.clock_hz < MIN_CLOCK_HZ:
            raise BoardError(f"the board reports a clock of {info.clock_hz} Hz")
        if min(info.num_layers, info.in_features, info.out_features) < 1:
            raise BoardError(f"the board reports a network of {info.num_layers} layers, "
                             f"{info.in_features} inputs and {info.out_features} outputs")
        self.info = info
        self.dec = self._decoder()  # the reply lengths are known now
        return info

    def infer(self, x: np.ndarray) -> P.Result:
        """One input through the board (a PACKED request)."""
        return self.infer_many(np.asarray(x)[None])[0]

    def infer_dense(self, x: np.ndarray) -> P.Result:
        """One input as a dense INFER request (int16 words, no tag)."""
        info = self.info or self.ping()
        return P.decode_infer(self.request(P.infer_request(x)), out_features=info.out_features,
                              num_layers=info.num_layers)

    def infer_many(self, xs, *, window: int | None = None, retries: int = 3,
                   progress=None) -> list[P.Result]:
        """Stream every input vector of `xs` as PACKED requests; the results in input order.

        Up to `window` requests (at most the board's) are in flight. A reply names its
        request by tag; the requests before it whose replies never came, one answered with
        ERROR, and all of them after a silence of `timeout`, are sent again (at most `retries`
        times each). `progress(k)` is called with the number of results as they come.
        """
        info = self.info or self.ping()
        w = max(1, min(window or info.window, info.window))
        results: list[P.Result | None] = [None] * len(xs)
        todo = deque(range(len(xs)))
        flight: deque[tuple[int, int]] = deque()  # (tag, index), in the order sent
        tries = [0] * len(xs)
        done = 0

        def again(i, why):
            tries[i] += 1
            if tries[i] > retries:
                raise P.ProtocolError(f"input {i}: no good reply after {retries} resends ({why})")
            todo.appendleft(i)

        self._flush()
        # The next reply is due `timeout` after the host starts waiting for it; frames that
        # answer nothing in flight neither move that deadline nor go on without end.
        deadline, run = None, 0
        while todo or flight:
            while todo and len(flight) < w:
                tag = self._tag
                frame = P.packed_request(xs[todo[0]], tag)
                if flight and not P.streamable(len(frame), info.out_features, info.num_layers):
                    break  # a short frame waits for an empty window (P.streamable)
                self._tag = (tag + 1) & 0xFF
                self._write(frame)
                flight.append((tag, todo.popleft()))
            if deadline is None:
                deadline = time.monotonic() + self.timeout
            try:
                reply = self._reply(deadline)
            except TimeoutError:
                for _, i in reversed(flight):  # nothing came: all of them again
                    again(i, "timed out")
                flight.clear()
                self._flush()
                deadline = None
                continue
            if reply.cmd == P.CMD_PACKED:
                r = P.decode_packed(reply, out_features=info.out_features,
                                    num_layers=info.num_layers)
                pos = next((k for k, (t, _) in enumerate(flight) if t == r.tag), None)
                if pos is None:
                    run = self._stale(run, "a PACKED request in flight")
                    continue
                for _ in range(pos):  # replies in order: theirs were lost on the way
                    again(flight.popleft()[1], "reply lost")
                results[flight.popleft()[1]] = r
                done += 1
                deadline, run = None, 0
                if progress:
                    progress(done)
            elif flight and P.answers(reply, P.CMD_PACKED):
                # the oldest request in flight was refused (or its reply lost as well)
                code = reply.payload[0] if reply.payload else -1
                again(flight.popleft()[1], P.ERROR_NAMES.get(code, f"error {code}"))
                deadline, run = None, 0
            else:
                run = self._stale(run, "a PACKED request in flight")
        return results

    def load(self, img, *, progress: bool = False, retries: int = 3,
             board: str | None = None) -> int:
        """Write the SPRAM-resident ROMs of `img` (the load plan of `board`'s family; None: the
        default board's) and COMMIT; returns words.

        The board takes LOADs in order only and counts a memory loaded when all its words are
        written, so every memory is sent to its full depth. A frame refused for its CRC, its
        length or a timeout, or whose reply does not come, is sent again; any other refusal
        (a resent frame that had landed is out of order) or a refused COMMIT starts the whole
        load over (memory 0, address 0), at most `retries` times.
        """
        from ..boards import DEFAULT_BOARD, family_of  # Amaranth: only when loading

        fam = family_of(board or DEFAULT_BOARD)
        plan = fam.load_plan_for(img)
        frames = [f for i, spec in enumerate(plan)
                  for f in P.load_requests(i, fam.load_words(spec), depth=spec.depth)]
        for attempt in range(retries):
            try:
                self._load_once(frames, progress=progress, retries=retries)
                break
            except (P.ProtocolError, TimeoutError):
                if attempt == retries - 1:
                    raise
        self.info = None
        return sum(s.depth for s in plan)

    def _load_once(self, frames, *, progress: bool, retries: int) -> None:
        """The LOAD frames streamed (a window in flight), then COMMIT.

        The board takes LOADs in order: when one is refused for damage on the way (CRC,
        length, timeout) or its reply does not come, the frames after it are refused as out
        of order; their replies are collected and the stream goes on from the damaged one.
        Any other refusal raises (the caller starts the load over)."""
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(frames), desc="loading weights", unit="frame", disable=None)
        info = self.info or self.ping()
        w = info.window
        again = (P.ERR_CRC, P.ERR_LENGTH, P.ERR_TIMEOUT)  # the frame was damaged on the way
        sent = acked = failures = 0
        deadline, run = None, 0  # as in infer_many: stale frames do not move the deadline
        self._flush()
        try:
            while acked < len(frames):
                while sent < len(frames) and sent - acked < w:
                    self._write(frames[sent])
                    sent += 1
                if deadline is None:
                    deadline = time.monotonic() + self.timeout
                try:
                    reply = self._reply(deadline)
                except TimeoutError:
                    reply = None
                if reply is not None and not P.answers(reply, P.CMD_LOAD):
                    run = self._stale(run, "a LOAD in flight")
                    continue
                deadline, run = None, 0
                if reply is not None and reply.cmd == P.CMD_LOAD:
                    P.decode_empty(reply, P.CMD_LOAD)
                    acked += 1
                    failures = 0
                    if bar is not None:
                        bar.update(1)
                    continue
                if reply is not None and P.decode_error(reply) not in again:
                    P.decode_empty(reply, P.CMD_LOAD)  # raises with the board's error
                failures += 1
                if failures > retries and reply is None:
                    raise TimeoutError(f"no reply to LOAD frame {acked}, {failures} times")
                if failures > retries:
                    raise P.ProtocolError(f"LOAD frame {acked} refused {failures} times")
                # the frames after the damaged one were refused: their replies, then resend
                for _ in range(sent - acked - 1 if reply is not None else 0):
                    try:
                        self._reply()
                    except TimeoutError:
                        break
                self._flush()
                sent = acked
        finally:
            if bar is not None:
                bar.close()
        P.decode_empty(self.request(P.commit_request()), P.CMD_COMMIT)

    def counters(self) -> P.Counters:
        info = self.info or self.ping()
        return P.decode_count(self.request(P.count_request()), num_layers=info.num_layers)
