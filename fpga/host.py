"""The host side of the UART link: transports and the protocol client.

`Board` speaks the protocol (fpga/protocol.py) over any transport with `write(bytes)` and
`read(max_bytes, timeout) -> bytes`: `SerialTransport` (pyserial, a real iCEBreaker) or
`SocketTransport` (the simulated board of fpga/bench.py). fpga/runner.py streams inputs through
a `Board` and checks the answers.
"""

from __future__ import annotations

import time

import numpy as np

from compress.errors import InputError

from . import protocol as P


class SerialTransport:
    def __init__(self, port: str, baud: int):
        import serial  # pyserial

        try:
            self.ser = serial.Serial(port, baudrate=baud, timeout=0.05)
        except (serial.SerialException, OSError) as e:
            raise InputError(f"cannot open serial port {port}: {e}") from None

    def write(self, data: bytes) -> None:
        self.ser.write(data)
        self.ser.flush()

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


class Board:
    """Request/reply over a transport; `timeout` is seconds of silence before giving up.

    Each request is matched with its reply: frames that arrived before the request was sent
    are dropped, and so is any reply that cannot answer it (another command, or an ERROR
    about another command: protocol version 2 echoes the refused command). `stale` counts the
    frames dropped, so a stray extra reply never leaves the host one reply behind.
    """

    def __init__(self, transport, *, timeout: float = 5.0):
        self.t = transport
        self.timeout = timeout
        self.dec = P.FrameDecoder()
        self.pending: list[P.Frame] = []
        self.info: P.Info | None = None
        self.stale = 0

    def _reply(self) -> P.Frame:
        deadline = time.monotonic() + self.timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self.pending += self.dec.resync()  # a false frame in noise may hide one
                if self.pending:
                    break
                raise TimeoutError(f"no reply from the board within {self.timeout:g} s")
            data = self.t.read(4096, min(left, 0.2))
            if data:
                self.pending += self.dec.feed(data)
                deadline = time.monotonic() + self.timeout
        return self.pending.pop(0)

    def _flush(self) -> None:
        """Drop what arrived unasked (whole frames and a partial one) before a request."""
        n = len(self.pending)
        self.pending.clear()
        while data := self.t.read(4096, 0.0):
            n += len(self.dec.feed(data))
        self.dec = P.FrameDecoder()
        self.stale += n

    def request(self, frame: bytes) -> P.Frame:
        """Send one request frame; its reply (an ERROR reply included)."""
        cmd = P.request_cmd(frame)
        self._flush()
        self.t.write(frame)
        for _ in range(MAX_STALE_REPLIES):
            reply = self._reply()
            if P.answers(reply, cmd):
                return reply
            self.stale += 1
        raise P.ProtocolError(f"{MAX_STALE_REPLIES} replies that do not answer command "
                              f"{cmd:#04x}")

    def drain(self, quiet: float = 0.3) -> list[P.Frame]:
        """Collect whatever arrives until `quiet` seconds pass with nothing (after garbage)."""
        while True:
            data = self.t.read(4096, quiet)
            if not data:
                break
            self.pending += self.dec.feed(data)
        frames, self.pending = self.pending, []
        return frames

    def ping(self) -> P.Info:
        info = P.decode_ping(self.request(P.ping_request()))
        if info.version != P.VERSION:
            raise P.ProtocolError(f"the board speaks protocol version {info.version}, this host "
                                  f"{P.VERSION}: build the bitstream from this version")
        self.info = info
        return info

    def infer(self, x: np.ndarray) -> P.Result:
        info = self.info or self.ping()
        return P.decode_infer(self.request(P.infer_request(x)), out_features=info.out_features,
                              num_layers=info.num_layers)

    def load(self, img, *, progress: bool = False, retries: int = 3) -> int:
        """Write the SPRAM-resident ROMs of `img` (the board's plan) and COMMIT; returns words.

        The board takes LOADs in order only and counts a memory loaded when all its words are
        written, so every memory is sent to its full depth. A frame refused for its CRC, its
        length or a timeout, or whose reply does not come, is sent again; any other refusal
        (a resent frame that had landed is out of order) or a refused COMMIT starts the whole
        load over (memory 0, address 0), at most `retries` times.
        """
        from .memories import load_words, spram_plan_for

        plan = spram_plan_for(img)
        frames = [f for i, spec in enumerate(plan)
                  for f in P.load_requests(i, load_words(spec), depth=spec.depth)]
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
        it = frames
        if progress:
            from tqdm import tqdm

            it = tqdm(frames, desc="loading weights", unit="frame", disable=None)  # not into logs
        again = (P.ERR_CRC, P.ERR_LENGTH, P.ERR_TIMEOUT)  # the frame was damaged on the way
        for f in it:
            for attempt in range(retries):
                try:
                    reply = self.request(f)
                except TimeoutError:  # the frame or its reply was lost: send it again
                    if attempt == retries - 1:
                        raise
                    continue
                if reply.cmd != P.CMD_ERROR or P.decode_error(reply) not in again:
                    break
            P.decode_empty(reply, P.CMD_LOAD)  # raises with the board's error
        P.decode_empty(self.request(P.commit_request()), P.CMD_COMMIT)

    def counters(self) -> P.Counters:
        info = self.info or self.ping()
        return P.decode_count(self.request(P.count_request()), num_layers=info.num_layers)
