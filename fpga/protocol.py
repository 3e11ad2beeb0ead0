"""The framed UART protocol between a host and the board: a pure-Python codec.

Shared by the gateware (constants), the host runner and the tests. Documented in docs/fpga.md.

Every frame, in both directions::

    SYNC  CMD  LEN_LO LEN_HI  PAYLOAD[LEN]  CRC

* SYNC is 0xA5 for a request (host -> board) and 0x5A for a reply (board -> host).
* LEN is the payload length in bytes, little-endian.
* CRC is CRC-8 (polynomial 0x07, initial value 0xFF, no reflection) over CMD, LEN and PAYLOAD.
* All multi-byte numbers are little-endian; activations are int16, counters uint32.

Requests and their replies (the reply carries the request's command byte):

=========  ====================================  =================================================
command    request payload                        reply payload
=========  ====================================  =================================================
PING 0x01  none                                   version u8, pes u8, layers u8, in u16, out u16,
                                                  clock_hz u32, flags u8 (bit 0: weights loaded,
                                                  bit 1: the engine id's low bit, bits 2-4:
                                                  window - 1, bits 5-7: its high bits)
INFER 0x02 in_0 x int16                           out x int16, cycles u32, layer_cycles L x u32
PACKED 06  tag u8, format u8, [base i16], groups  tag u8, out x int16, cycles u32,
                                                  layer_cycles L x u32
COUNT 0x03 none                                   inferences u32, errors u32, cycles u32,
                                                  layer_cycles L x u32 (of the last inference)
LOAD 0x04  mem u8, addr u16, 1..256 x u16 words   none (the words are written at addr, addr+1 ..)
COMMIT 05  none                                   none (marks the weights loaded)
=========  ====================================  =================================================

LOAD and COMMIT exist on boards whose weights live in SPRAM (no initial contents): such a board
answers INFER with ERR_NOT_LOADED until the host has written every SPRAM memory and sent COMMIT.
LOADs go in order: memory by memory in load-id order, each from address 0 to its full depth
(a LOAD must start where the last good one ended, or at memory 0 address 0 to start over),
otherwise ERR_ADDRESS; COMMIT before the last word of the last memory is ERR_NOT_LOADED; any
accepted LOAD clears the loaded flag.

A malformed request gets an ERROR reply (command 0xEE, payload: the error code and the command
byte of the refused frame, 0 if it was cut before its command). A frame refused from its header
is first discarded to its declared end (LEN payload bytes and the CRC), or until the line goes
quiet, so payload bytes are never read as requests; a refused request has no effect. Bytes
outside a frame are dropped silently. A frame that stops arriving for `timeout` clock cycles
between two bytes is abandoned with ERR_TIMEOUT, so a partial frame never locks the design up.
An INFER whose CRC turns out wrong after its payload has already been streamed into the engine
still runs to completion inside the board, but its result is dropped and the reply is ERR_CRC.
The outputs of a good INFER go from the engine straight into the reply as it is sent (no output
buffer on the board), so its `cycles` include that transfer.

PACKED carries only what an input needs (`pack_inputs`): with FMT_MASK the inputs go in groups
of 8, each a mask byte (bit i: input 8g + i is non-zero) followed by the values of its set bits;
without it every input has a value. Values are int16 with FMT_WIDE, else one byte each, the
input being byte + base (base int16, sent after the format byte, wrapping at 16 bits). The board
expands the frame into the engine's dense input stream (zeros included) as it arrives.

The board receives the next request while it answers the previous ones; replies go out in
the order of the requests. The host may have up to `window` requests (PING flags) whose reply
has not come yet; the board holds that many replies to send and never drops a byte of a
request while the host keeps that limit.

The engine id says which engine the board runs, so which image its weights are cut for: the
engine's `protocol_id` in the registry (`images.engines`: 0 the EIE engine, 1 the lockstep
engine).

The table of what the board refuses is in docs/fpga.md ("What the link refuses").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from images.engines import by_protocol_id

VERSION = 3  # 3: PACKED inputs, requests streamed (window in PING); 2: ERROR names the command
SYNC_REQ = 0xA5
SYNC_REP = 0x5A

CMD_PING = 0x01
CMD_INFER = 0x02
CMD_COUNT = 0x03
CMD_LOAD = 0x04
CMD_COMMIT = 0x05
CMD_PACKED = 0x06
CMD_ERROR = 0xEE
REQUESTS = (CMD_PING, CMD_INFER, CMD_COUNT, CMD_LOAD, CMD_COMMIT, CMD_PACKED)

FMT_MASK = 0x01  # PACKED: groups of 8 inputs, a mask byte each, values of the non-zero only
FMT_WIDE = 0x02  # PACKED: int16 values (else one byte each, the input = byte + base)
FMT_BITS = FMT_MASK | FMT_WIDE

ERR_CRC = 1
ERR_COMMAND = 2
ERR_LENGTH = 3
ERR_TIMEOUT = 4
ERR_NOT_LOADED = 5
ERR_ADDRESS = 6
ERR_FORMAT = 7

ERROR_NAMES = {
    ERR_CRC: "checksum mismatch",
    ERR_COMMAND: "unknown command",
    ERR_LENGTH: "wrong payload length",
    ERR_TIMEOUT: "frame timed out",
    ERR_NOT_LOADED: "weights not loaded (LOAD every memory in order, then COMMIT)",
    ERR_ADDRESS: "no such memory, address out of range, or LOAD out of order",
    ERR_FORMAT: "unknown PACKED format",
}

MAX_ENGINE_ID = 15  # 4 bits of the PING flags
MAX_PAYLOAD = 0xFFFF
MAX_LOAD_WORDS = 256


def _crc8_table() -> list[int]:
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_CRC8 = _crc8_table()


def crc8(data: bytes, crc: int = 0xFF) -> int:
    """CRC-8, polynomial x^8 + x^2 + x + 1, initial value 0xFF, MSB first."""
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc


def encode_frame(cmd: int, payload: bytes = b"", *, sync: int = SYNC_REQ) -> bytes:
    """One frame: sync, command, length, payload, CRC."""
    if not 0 <= cmd <= 0xFF:
        raise ValueError(f"command must be a byte, not {cmd!r}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes([cmd]) + struct.pack("<H", len(payload)) + bytes(payload)
    return bytes([sync]) + body + bytes([crc8(body)])


class ProtocolError(Exception):
    """The board replied with an error frame, or a reply did not decode."""


@dataclass
class Frame:
    cmd: int
    payload: bytes


class FrameDecoder:
    """Incremental frame parser: feed bytes, collect complete frames with a good CRC.

    Bytes before a SYNC are skipped; a frame with a bad CRC is skipped and parsing resumes one
    byte after its SYNC, so a stray SYNC inside garbage never hides a good frame behind it.

    `expect(cmd, length) -> bool`, when given, says which headers can start a frame (the host
    knows every reply's command and length): any other SYNC is skipped at once, without
    waiting for its payload or checking a CRC over it. The CRC work is bounded too: checking
    more than `WORK_PER_BYTE` bytes of CRC per byte fed (plus `WORK_FREE`) means the stream is
    crafted or noise, and raises ProtocolError, so the cost per byte fed stays bounded.
    """

    WORK_PER_BYTE = 8
    WORK_FREE = 1 << 17

    def __init__(self, *, sync: int = SYNC_REP, expect=None):
        self.sync = sync
        self.expect = expect
        self.buf = bytearray()
        self.skipped = 0  # bytes dropped while hunting for frames
        self.fed = 0  # bytes fed in all
        self.work = 0  # bytes of CRC checked in all

    def _checked(self, n: int) -> None:
        self.work += n
        if self.work > self.WORK_PER_BYTE * self.fed + self.WORK_FREE:
            raise ProtocolError(f"{self.fed:,} bytes in which every SYNC starts a frame whose "
                                f"checksum fails: not a board speaking this protocol")

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        self.fed += len(data)
        frames = []
        while True:
            start = self.buf.find(bytes([self.sync]))
            if start < 0:
                self.skipped += len(self.buf)
                self.buf.clear()
                return frames
            if start:
                self.skipped += start
                del self.buf[:start]
            if len(self.buf) < 4:
                return frames
            (n,) = struct.unpack_from("<H", self.buf, 2)
            if self.expect is not None and not self.expect(self.buf[1], n):
                self.skipped += 1  # no reply has this header: not a frame
                del self.buf[:1]
                continue
            if len(self.buf) < 5 + n:
                return frames
            body = bytes(self.buf[1 : 4 + n])
            self._checked(len(body))
            if crc8(body) == self.buf[4 + n]:
                frames.append(Frame(cmd=body[0], payload=body[3:]))
                del self.buf[: 5 + n]
            else:
                self.skipped += 1
                del self.buf[:1]

    def resync(self) -> list[Frame]:
        """The line went quiet inside a frame: drop its SYNC, look for frames in the rest.

        A false SYNC in noise whose bogus length runs past the end of what came would
        otherwise hide every frame behind it until that many more bytes arrive.
        """
        frames: list[Frame] = []
        while self.buf and not frames:
            self.skipped += 1
            del self.buf[:1]
            frames = self.feed(b"")
        return frames


# ---------------------------------------------------------------------------------------------
# Requests and replies


def ping_request() -> bytes:
    return encode_frame(CMD_PING)


def count_request() -> bytes:
    return encode_frame(CMD_COUNT)


def load_requests(mem: int, words, depth: int | None = None) -> list[bytes]:
    """LOAD frames writing `words` (unsigned 16-bit) from address 0 of SPRAM memory `mem`.

    With `depth`, the words are padded with zeros to the memory's depth: the board counts a
    memory loaded only when every word of it was written.
    """
    words = [int(w) for w in words]
    if depth is not None:
        if len(words) > depth:
            raise ValueError(f"{len(words)} words do not fit a memory of {depth}")
        words += [0] * (depth - len(words))
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise ValueError("LOAD words must be unsigned 16-bit")
    frames = []
    for a in range(0, len(words), MAX_LOAD_WORDS):
        chunk = words[a : a + MAX_LOAD_WORDS]
        payload = struct.pack("<BH", mem, a) + struct.pack(f"<{len(chunk)}H", *chunk)
        frames.append(encode_frame(CMD_LOAD, payload))
    return frames


def commit_request() -> bytes:
    return encode_frame(CMD_COMMIT)


def decode_empty(frame: Frame, cmd: int) -> None:
    p = _check(frame, cmd)
    if p:
        raise ProtocolError(f"expected an empty reply to {cmd:#04x}, got {len(p)} bytes")


def infer_request(x: np.ndarray) -> bytes:
    """An INFER frame for one int16 input vector."""
    x = np.asarray(x)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"an input vector must be a 1-D integer array, not {x.dtype}{x.shape}")
    if x.min(initial=0) < -32768 or x.max(initial=0) > 32767:
        raise ValueError("input vector values do not fit int16")
    return encode_frame(CMD_INFER, x.astype("<i2").tobytes())


def _pack_body(x: np.ndarray, fmt: int, base: int) -> bytes:
    """The PACKED body (after tag and format) of int64 vector `x` in format `fmt`."""
    head = b"" if fmt & FMT_WIDE else struct.pack("<h", base)
    vals = x[x != 0] if fmt & FMT_MASK else x
    if fmt & FMT_WIDE:
        vb = vals.astype("<i2").tobytes()
        width = 2
    else:
        vb = ((vals - base) & 0xFF).astype(np.uint8).tobytes()
        width = 1
    if not fmt & FMT_MASK:
        return head + vb
    n = len(x)
    nz = np.zeros(-(-n // 8) * 8, bool)
    nz[:n] = x != 0
    masks = np.packbits(nz.reshape(-1, 8), axis=1, bitorder="little")[:, 0]
    counts = nz.reshape(-1, 8).sum(axis=1)
    out = bytearray(head)
    k = 0
    for m, c in zip(masks.tolist(), counts.tolist()):
        out.append(m)
        out += vb[k * width:(k + c) * width]
        k += c
    return bytes(out)


def pack_inputs(x) -> tuple[int, bytes]:
    """(format, body) of the smallest PACKED encoding of one int16 input vector.

    One-byte values need every value the format sends (the non-zero ones with a mask, all
    without) inside base .. base + 255; otherwise the values are int16.
    """
    x = np.asarray(x)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.integer) or not len(x):
        raise ValueError(f"an input vector must be a 1-D integer array, not {x.dtype}{x.shape}")
    if x.min() < -32768 or x.max() > 32767:
        raise ValueError("input vector values do not fit int16")
    x = x.astype(np.int64)
    best = None
    for fmt in (FMT_MASK, 0, FMT_MASK | FMT_WIDE, FMT_WIDE):
        vals = x[x != 0] if fmt & FMT_MASK else x
        base = int(vals.min()) if len(vals) else 0
        if not fmt & FMT_WIDE and len(vals) and int(vals.max()) - base > 255:
            continue
        body = _pack_body(x, fmt, base)
        if best is None or len(body) < len(best[1]):
            best = (fmt, body)
    return best


def packed_request(x, tag: int = 0) -> bytes:
    """A PACKED INFER frame for one int16 input vector, in its smallest format."""
    if not 0 <= tag <= 0xFF:
        raise ValueError(f"tag must be a byte, not {tag!r}")
    fmt, body = pack_inputs(x)
    return encode_frame(CMD_PACKED, bytes([tag, fmt]) + body)


def packed_reply_len(out_features: int, num_layers: int) -> int:
    """Bytes of the reply to a PACKED request (the whole frame)."""
    return 5 + 1 + 2 * out_features + 4 + 4 * num_layers


def streamable(frame_len: int, out_features: int, num_layers: int) -> bool:
    """Whether an input frame may be sent while other requests are in flight.

    The board takes the next input while it computes the current one, but it must have
    delivered an inference's outputs before the input after the next can go in; a frame that
    lasts on the line at least twice its reply leaves the engine that time (compute plus
    outputs sent). A shorter frame (a nearly empty input of a small network) is sent when no
    reply is outstanding, so no byte ever waits on the engine longer than the UART holds it.
    """
    return frame_len >= 2 * packed_reply_len(out_features, num_layers)


def unpack_inputs(payload: bytes, n_in: int) -> tuple[list[int], int]:
    """The board's reading of a PACKED payload: (the n_in engine inputs, error code or 0).

    What the link does byte by byte (docs/fpga.md section 2): on ERR_LENGTH the inputs read so
    far are completed with zeros (the engine still runs); on ERR_FORMAT or a payload too short
    for its header, no input is read ([]).
    """
    if len(payload) < 2 or payload[1] & ~FMT_BITS & 0xFF:
        return [], ERR_LENGTH if len(payload) < 2 else ERR_FORMAT
    fmt, pos = payload[1], 2
    wide, has_mask = fmt & FMT_WIDE, fmt & FMT_MASK
    base = 0
    if not wide:
        if len(payload) < 4:
            return [], ERR_LENGTH
        (base,) = struct.unpack_from("<h", payload, 2)
        pos = 4
    words: list[int] = []
    mask = 0
    while len(words) < n_in:
        if has_mask and len(words) % 8 == 0:
            if pos >= len(payload):
                break
            mask, pos = payload[pos], pos + 1
        if has_mask and not mask >> (len(words) % 8) & 1:
            words.append(0)
            continue
        if pos + (2 if wide else 1) > len(payload):
            break
        if wide:
            (v,) = struct.unpack_from("<h", payload, pos)
            pos += 2
        else:
            v = ((payload[pos] + base + 32768) & 0xFFFF) - 32768
            pos += 1
        words.append(v)
    if len(words) < n_in or pos != len(payload):
        return words + [0] * (n_in - len(words)), ERR_LENGTH
    return words, 0


@dataclass
class Info:
    version: int
    pes: int
    num_layers: int
    in_features: int
    out_features: int
    clock_hz: int
    loaded: bool
    engine: str = "eie"  # the engine the board runs: which image its weights are cut for
    window: int = 1  # requests the host may have in flight (replies not yet received)


@dataclass
class Result:
    y: np.ndarray  # int16[out]
    cycles: int
    layer_cycles: list[int]
    tag: int | None = None  # PACKED replies: the request's tag


@dataclass
class Counters:
    inferences: int
    errors: int
    cycles: int
    layer_cycles: list[int]


def request_cmd(frame: bytes) -> int:
    """The command byte of an encoded request frame."""
    return frame[1]


def error_cmd(frame: Frame) -> int:
    """The command an ERROR reply refuses (0: the frame was cut before its command)."""
    return frame.payload[1] if len(frame.payload) > 1 else 0


def answers(frame: Frame, cmd: int) -> bool:
    """Whether reply `frame` can be the answer to a request with command `cmd`."""
    if frame.cmd == CMD_ERROR:
        # 0: cut before its command; an unknown command: this request's, corrupted on the way
        return error_cmd(frame) in (cmd, 0) or error_cmd(frame) not in REQUESTS
    return frame.cmd == cmd


def _check(frame: Frame, cmd: int) -> bytes:
    if frame.cmd == CMD_ERROR:
        code = frame.payload[0] if frame.payload else -1
        raise ProtocolError(f"board error {code}: {ERROR_NAMES.get(code, 'unknown error')}")
    if frame.cmd != cmd:
        raise ProtocolError(f"expected a reply to command {cmd:#04x}, got {frame.cmd:#04x}")
    return frame.payload


def decode_ping(frame: Frame) -> Info:
    p = _check(frame, CMD_PING)
    if len(p) != 12:
        raise ProtocolError(f"PING reply of {len(p)} bytes, expected 12")
    version, pes, layers, n_in, n_out, clk, flags = struct.unpack("<BBBHHIB", p)
    engine_id = (flags >> 1) & 1 | (flags >> 5) << 1
    try:
        engine = by_protocol_id(engine_id).name
    except KeyError:
        raise ProtocolError(f"PING reply names engine {engine_id}, which this host does not "
                            f"know") from None
    return Info(version, pes, layers, n_in, n_out, clk, bool(flags & 1), engine,
                ((flags >> 2) & 7) + 1)


def decode_infer(frame: Frame, *, out_features: int, num_layers: int) -> Result:
    p = _check(frame, CMD_INFER)
    want = 2 * out_features + 4 + 4 * num_layers
    if len(p) != want:
        raise ProtocolError(f"INFER reply of {len(p)} bytes, expected {want}")
    y = np.frombuffer(p[: 2 * out_features], dtype="<i2").astype(np.int16)
    c = struct.unpack_from(f"<{1 + num_layers}I", p, 2 * out_features)
    return Result(y=y, cycles=c[0], layer_cycles=list(c[1:]))


def decode_packed(frame: Frame, *, out_features: int, num_layers: int) -> Result:
    """The reply to a PACKED request: its tag, then what an INFER reply carries."""
    p = _check(frame, CMD_PACKED)
    if len(p) != 1 + 2 * out_features + 4 + 4 * num_layers:
        raise ProtocolError(f"PACKED reply of {len(p)} bytes, expected "
                            f"{1 + 2 * out_features + 4 + 4 * num_layers}")
    r = decode_infer(Frame(CMD_INFER, p[1:]), out_features=out_features, num_layers=num_layers)
    r.tag = p[0]
    return r


def decode_count(frame: Frame, *, num_layers: int) -> Counters:
    p = _check(frame, CMD_COUNT)
    want = 12 + 4 * num_layers
    if len(p) != want:
        raise ProtocolError(f"COUNT reply of {len(p)} bytes, expected {want}")
    c = struct.unpack(f"<{3 + num_layers}I", p)
    return Counters(inferences=c[0], errors=c[1], cycles=c[2], layer_cycles=list(c[3:]))


def decode_error(frame: Frame) -> int:
    """The error code of an ERROR reply (ProtocolError for anything else)."""
    if frame.cmd != CMD_ERROR or len(frame.payload) != 2:
        raise ProtocolError(f"expected an error reply, got command {frame.cmd:#04x}")
    return frame.payload[0]
