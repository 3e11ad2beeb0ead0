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
        except TimeoutError:
            return b""

    def close(self):
        self.sock.close()


class Board:
    """Request/reply over a transport; `timeout` is seconds of silence before giving up."""

    def __init__(self, transport, *, timeout: float = 5.0):
        self.t = transport
        self.timeout = timeout
        self.dec = P.FrameDecoder()
        self.pending: list[P.Frame] = []
        self.info: P.Info | None = None

    def _reply(self) -> P.Frame:
        deadline = time.monotonic() + self.timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from the board within {self.timeout:g} s")
            data = self.t.read(4096, min(left, 0.2))
            if data:
                self.pending += self.dec.feed(data)
                deadline = time.monotonic() + self.timeout
        return self.pending.pop(0)

    def request(self, frame: bytes) -> P.Frame:
        self.t.write(frame)
        return self._reply()

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
        self.info = P.decode_ping(self.request(P.ping_request()))
        return self.info

    def infer(self, x: np.ndarray) -> P.Result:
        info = self.info or self.ping()
        return P.decode_infer(self.request(P.infer_request(x)), out_features=info.out_features,
                              num_layers=info.num_layers)

    def load(self, img, *, progress: bool = False, retries: int = 3) -> int:
        """Write the SPRAM-resident ROMs of `img` (the board's plan) and COMMIT; returns words."""
        from .top import spram_plan_for

        plan = spram_plan_for(img)
        frames = [f for i, spec in enumerate(plan)
                  for f in P.load_requests(i, [int(v) & 0xFFFF for v in spec.init])]
        it = frames
        if progress:
            from tqdm import tqdm

            it = tqdm(frames, desc="loading weights", unit="frame")
        for f in it:
            for attempt in range(retries):
                reply = self.request(f)
                if reply.cmd != P.CMD_ERROR:
                    break
                if attempt == retries - 1:
                    P.decode_empty(reply, P.CMD_LOAD)  # raises with the board's error
            P.decode_empty(reply, P.CMD_LOAD)
        P.decode_empty(self.request(P.commit_request()), P.CMD_COMMIT)
        self.info = None
        return sum(len(s.init) for s in plan)

    def counters(self) -> P.Counters:
        info = self.info or self.ping()
        return P.decode_count(self.request(P.count_request()), num_layers=info.num_layers)
