"""The protocol engine (fpga/gateware/link.py) against the host codec (fpga/protocol.py).

Amaranth simulator, byte streams on the UART side, and on the engine side a behavioural model
in the bench (outputs a known function of the inputs, sets the cycle counters), so every reply
can be checked exactly. Frames here are short: in_features = 5. Every PACKED format is expanded
by the link into the engine's words (`test_packed_formats`).
"""

import random
import struct

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpga import protocol as P
from fpga.gateware.link import Link

N_IN, N_OUT, N_L, TIMEOUT = 5, 3, 2, 60


def model(x):
    """The bench's stand-in network: y_k = wrap16(sum(x) * (k + 1) - k)."""
    s = int(np.sum(x.astype(np.int64)))
    return np.array([((s * (k + 1) - k + 32768) % 65536) - 32768 for k in range(N_OUT)], np.int16)


def run_link(script, *, seed=0, loads=0, writes=None):
    """Run `script(host)`; host.send(bytes), host.replies(n) -> frames; returns engine log.

    With `loads`, every load-port write is appended to `writes` as (mem, addr, data).
    """
    dut = Link(in_features=N_IN, out_features=N_OUT, num_layers=N_L, pes=8,
               clock_hz=12_000_000, timeout=TIMEOUT, loads=loads)
    rng = random.Random(seed)
    tx_bytes = bytearray()
    engine_runs = []

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
                # back-pressure now and then
                ctx.set(dut.act_out.ready, rng.random() < 0.7)
            ctx.set(dut.act_out.ready, 0)
            await ctx.tick().repeat(7)
            count += 1
            y = model(np.array(x, np.int16))
            engine_runs.append(list(x))
            for v in y:
                ctx.set(dut.act_in.valid, 1)
                ctx.set(dut.act_in.payload, int(v))
                await ctx.tick().until(dut.act_in.ready)
            ctx.set(dut.act_in.valid, 0)
            ctx.set(dut.cycles, 1000 + count)
            for i in range(N_L):
                ctx.set(dut.layer_cycles[i], 100 * (i + 1) + count)
            await ctx.tick().repeat(2)

    async def uart_tx(ctx):
        while True:
            ctx.set(dut.tx.ready, 0)
            for _ in range(rng.randrange(1, 4)):
                await ctx.tick()
            ctx.set(dut.tx.ready, 1)
            _, _, valid, payload = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
            if valid:
                tx_bytes.append(payload)

    class Host:
        def __init__(self, ctx):
            self.ctx = ctx
            self.dut = dut
            self.dec = P.FrameDecoder()

        async def send(self, data, gap=0):
            for b in data:
                self.ctx.set(dut.rx.valid, 1)
                self.ctx.set(dut.rx.payload, b)
                await self.ctx.tick().until(dut.rx.ready)
                self.ctx.set(dut.rx.valid, 0)
                if gap:
                    await self.ctx.tick().repeat(gap)

        async def quiet(self, cycles=400):
            await self.ctx.tick().repeat(cycles)

        async def replies(self, n, limit=5000):
            frames = []
            for _ in range(limit):
                frames += self.dec.feed(bytes(tx_bytes))
                tx_bytes.clear()
                if len(frames) >= n:
                    return frames
                await self.ctx.tick()
            raise AssertionError(f"got {len(frames)} of {n} replies")

    async def host(ctx):
        await script(Host(ctx))

    async def load_port(ctx):
        async for _clk, _rst, we, mem, addr, data in ctx.tick().sample(
                dut.load_we, dut.load_mem, dut.load_addr, dut.load_data):
            if we:
                writes.append((mem, addr, data))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(engine, background=True)
    if writes is not None:
        sim.add_testbench(load_port, background=True)
    sim.add_testbench(uart_tx, background=True)
    sim.add_testbench(host)
    sim.run()
    return engine_runs, dut


def infer_ok(frame, x):
    r = P.decode_infer(frame, out_features=N_OUT, num_layers=N_L)
    np.testing.assert_array_equal(r.y, model(np.asarray(x, np.int16)))
    assert r.layer_cycles[0] - 100 == r.cycles - 1000
    return r


def test_ping_infer_count():
    xs = [np.array([1, -2, 300, 32767, -32768], np.int16), np.array([7, 7, 7, 7, 7], np.int16),
          np.array([-1, -1, -1, -1, -1], np.int16)]  # the last: output 0 is the largest

    async def script(h):
        await h.send(P.ping_request())
        (f,) = await h.replies(1)
        info = P.decode_ping(f)
        assert (info.version, info.pes, info.num_layers) == (P.VERSION, 8, N_L)
        assert (info.in_features, info.out_features, info.clock_hz) == (N_IN, N_OUT, 12_000_000)
        assert info.loaded
        for i, x in enumerate(xs):
            await h.send(P.infer_request(x))
            (f,) = await h.replies(1)
            assert infer_ok(f, x).cycles == 1001 + i
            # the LEDs: the first maximum of the outputs
            assert h.ctx.get(h.dut.digit) == int(np.argmax(model(x)))
        await h.send(P.count_request())
        (f,) = await h.replies(1)
        c = P.decode_count(f, num_layers=N_L)
        assert (c.inferences, c.errors, c.cycles, c.layer_cycles) == (3, 0, 1003, [103, 203])

    runs, _ = run_link(script)
    assert runs == [list(x) for x in xs]


@pytest.mark.parametrize(
    "frame, code",
    [
        (P.encode_frame(0x42), P.ERR_COMMAND),
        (P.encode_frame(P.CMD_PING, b"\x00"), P.ERR_LENGTH),
        (P.encode_frame(P.CMD_INFER, bytes(2 * N_IN + 2)), P.ERR_LENGTH),
        (P.encode_frame(P.CMD_PING)[:-1] + b"\x00", P.ERR_CRC),
        (P.encode_frame(P.CMD_PING)[:3], P.ERR_TIMEOUT),  # stops inside the length
        (P.infer_request(np.arange(N_IN))[:-1] + b"\x13", P.ERR_CRC),
        (P.infer_request(np.arange(N_IN))[:7], P.ERR_TIMEOUT),  # stops inside the payload
        (P.infer_request(np.arange(N_IN))[:-1], P.ERR_TIMEOUT),  # the CRC never comes
    ],
)
def test_malformed_then_good(frame, code):
    x = np.array([5, -1, 2, 9, 1000], np.int16)

    async def script(h):
        await h.send(frame)
        (f,) = await h.replies(1)
        assert P.decode_error(f) == code
        await h.quiet()
        await h.send(P.infer_request(x))
        (f,) = await h.replies(1)
        infer_ok(f, x)
        await h.send(P.count_request())
        (f,) = await h.replies(1)
        c = P.decode_count(f, num_layers=N_L)
        assert (c.inferences, c.errors) == (1, 1)

    run_link(script)


def test_garbage_then_good():
    """Random bytes (with SYNC bytes among them), then a good frame: the right answer."""
    rng = np.random.default_rng(5)
    garbage = rng.integers(0, 256, 200, dtype=np.uint8)
    garbage[::17] = P.SYNC_REQ
    x = np.array([3, 1, 4, 1, 5], np.int16)

    async def script(h):
        await h.send(bytes(garbage))
        await h.quiet(3 * TIMEOUT + 2000)  # every false frame ends by error or timeout
        await h.send(P.infer_request(x))
        frames = await h.replies(1, limit=20000)
        while frames[-1].cmd == P.CMD_ERROR:
            frames += await h.replies(1, limit=20000)
        infer_ok(frames[-1], x)

    run_link(script)


def test_codec():
    f = P.encode_frame(P.CMD_INFER, b"\x01\x02")
    assert f[:4] == bytes([P.SYNC_REQ, P.CMD_INFER, 2, 0]) and P.crc8(f[1:-1]) == f[-1]
    assert P.crc8(b"123456789", 0x00) == 0xF4  # CRC-8/SMBUS check value
    d = P.FrameDecoder(sync=P.SYNC_REQ)
    noise = bytes([P.SYNC_REQ, 0x09, 0xFF, 0x00])  # a false SYNC with a long bogus length
    frames = d.feed(noise + f[:3]) + d.feed(f[3:] + P.ping_request())
    # the bogus frame needs 255 more bytes; the decoder resyncs only on a CRC failure
    assert frames == []
    frames = d.feed(bytes(300))
    assert [fr.cmd for fr in frames] == [P.CMD_INFER, P.CMD_PING]
    with pytest.raises(P.ProtocolError, match="checksum"):
        P.decode_infer(P.Frame(P.CMD_ERROR, bytes([P.ERR_CRC])), out_features=1, num_layers=1)
    with pytest.raises(ValueError, match="int16"):
        P.infer_request(np.array([40000]))


def test_load_commit():
    """SPRAM boards: INFER refused until LOAD ... COMMIT; words land at mem/addr in order."""
    words0 = list(range(1000, 1300))  # two frames (256 + 44 words)
    words1 = [0xFFFF, 0, 0x1234]
    x = np.array([1, 2, 3, 4, 5], np.int16)
    writes = []

    async def script(h):
        await h.send(P.ping_request())
        assert not P.decode_ping((await h.replies(1))[0]).loaded
        await h.send(P.infer_request(x))
        assert P.decode_error((await h.replies(1))[0]) == P.ERR_NOT_LOADED
        for f in P.load_requests(0, words0) + P.load_requests(1, words1):
            await h.send(f)
            P.decode_empty((await h.replies(1))[0], P.CMD_LOAD)
        bad_mem = P.load_requests(2, [7])[0]
        await h.send(bad_mem)
        assert P.decode_error((await h.replies(1))[0]) == P.ERR_ADDRESS
        await h.send(P.encode_frame(P.CMD_LOAD, bytes(4)))  # no whole word
        assert P.decode_error((await h.replies(1))[0]) == P.ERR_LENGTH
        await h.send(P.commit_request())
        P.decode_empty((await h.replies(1))[0], P.CMD_COMMIT)
        await h.send(P.ping_request())
        assert P.decode_ping((await h.replies(1))[0]).loaded
        await h.send(P.infer_request(x))
        infer_ok((await h.replies(1))[0], x)
        await h.send(P.load_requests(0, [5])[0])  # a new load (memory 0, address 0)
        P.decode_empty((await h.replies(1))[0], P.CMD_LOAD)
        await h.send(P.ping_request())
        assert not P.decode_ping((await h.replies(1))[0]).loaded  # ... clears the flag

    run_link(script, loads=[len(words0), len(words1)], writes=writes)
    want = [(0, a, w) for a, w in enumerate(words0)] + [(1, a, w) for a, w in enumerate(words1)]
    want += [(0, 0, 5)]
    assert writes == want  # the bad-mem frame wrote nothing


def load_frame(mem, addr, words):
    return P.encode_frame(P.CMD_LOAD, struct.pack(f"<BH{len(words)}H", mem, addr, *words))


async def all_replies(h, cycles=600):
    """Every reply frame that comes out within `cycles` (the board must be quiet after)."""
    await h.quiet(cycles)
    return await h.replies(0)


@pytest.mark.parametrize("loaded", [False, True])
def test_commit_in_refused_payload(loaded):
    """A COMMIT frame inside the payload of refused frames: never run, one ERROR per frame."""
    depths = [4]
    commit = P.commit_request()
    refused = [
        (P.encode_frame(P.CMD_INFER, commit + bytes(2 * N_IN)), P.ERR_LENGTH),
        (P.encode_frame(0x42, commit * 3), P.ERR_COMMAND),
        (P.encode_frame(P.CMD_PING, commit), P.ERR_LENGTH),
        (load_frame(1, 0, list(np.frombuffer(commit + b"\0", "<u2"))), P.ERR_ADDRESS),
        (load_frame(0, 2, [1, 2, 3]), P.ERR_ADDRESS),  # past the memory's end
    ]
    if not loaded:
        # not loaded yet: a well-formed INFER is refused whole, its payload a COMMIT
        refused.append((P.encode_frame(P.CMD_INFER, (commit * 2)[:2 * N_IN]), P.ERR_NOT_LOADED))
    writes = []

    async def script(h):
        if loaded:
            await h.send(load_frame(0, 0, [9, 8, 7, 6]))
            await h.replies(1)
        for frame, code in refused:
            await h.send(frame, gap=20)  # bytes as slow as the reply's, as on the UART
            frames = await all_replies(h)
            assert [P.decode_error(f) for f in frames] == [code]
            assert P.error_cmd(frames[0]) == frame[1]
        await h.send(P.ping_request())
        assert not P.decode_ping((await h.replies(1))[0]).loaded

    run_link(script, loads=depths, writes=writes)
    assert writes == ([(0, a, v) for a, v in enumerate([9, 8, 7, 6])] if loaded else [])


def test_sync_in_refused_payload():
    """SYNC bytes and whole PING frames in a refused frame's payload give no extra replies."""
    ping = P.ping_request()
    frame = P.encode_frame(P.CMD_INFER, ping * 4)  # wrong length, 4 PINGs inside

    async def script(h):
        await h.send(frame, gap=20)  # bytes as slow as the reply's, as on the UART
        frames = await all_replies(h)
        assert [P.decode_error(f) for f in frames] == [P.ERR_LENGTH]
        await h.send(ping)  # at once: the board is hunting again
        assert P.decode_ping((await all_replies(h))[0]).version == P.VERSION

    run_link(script)


def test_refused_length_then_quiet():
    """A refused frame that declares more than comes: discarded until the line goes quiet."""
    frame = P.encode_frame(0x42, bytes(600))[:40]  # declares 600 bytes, 40 come

    async def script(h):
        await h.send(frame)
        (f,) = await h.replies(1, limit=3 * TIMEOUT + 200)
        assert P.decode_error(f) == P.ERR_COMMAND
        await h.send(P.ping_request())
        P.decode_ping((await h.replies(1))[0])

    run_link(script)


def test_bytes_during_reply_read():
    """Requests that arrive while a reply goes out are read and answered in order."""
    async def script(h):
        # PING, 200 bytes of noise with no pause (the reply goes out meanwhile), PING, COUNT
        await h.send(P.ping_request() + bytes(200) + P.ping_request() + P.count_request())
        frames = await all_replies(h)
        assert [f.cmd for f in frames] == [P.CMD_PING, P.CMD_PING, P.CMD_COUNT]

    run_link(script)


def test_load_checked_before_write():
    """LOAD: range and order refused before any write; a bad CRC leaves it unloaded."""
    writes = []
    good = [load_frame(0, 0, [1, 2, 3]), load_frame(0, 3, [4]), load_frame(1, 0, [5, 6])]
    bad_crc = bytearray(good[1])
    bad_crc[-2] ^= 0xFF  # the word, so the CRC fails
    x = np.array([1, 2, 3, 4, 5], np.int16)

    async def script(h):
        async def expect(frame, code):
            await h.send(frame)
            (f,) = await all_replies(h)
            if code:
                assert P.decode_error(f) == code
            else:
                P.decode_empty(f, frame[1])

        await expect(load_frame(0, 0xC000, [1]), P.ERR_ADDRESS)  # address past 14 bits
        await expect(load_frame(0, 3, [1, 2]), P.ERR_ADDRESS)  # past the end (depth 4)
        await expect(load_frame(2, 0, [1]), P.ERR_ADDRESS)  # no such memory
        await expect(load_frame(0, 1, [1]), P.ERR_ADDRESS)  # not at the cursor
        await expect(good[0], 0)
        await expect(load_frame(1, 0, [1]), P.ERR_ADDRESS)  # memory 0 not finished
        await expect(bytes(bad_crc), P.ERR_CRC)
        await expect(P.commit_request(), P.ERR_NOT_LOADED)  # the bad LOAD must be sent again
        await expect(good[1], 0)
        await expect(P.commit_request(), P.ERR_NOT_LOADED)  # memory 1 not loaded
        await expect(good[2], 0)
        await expect(P.commit_request(), 0)
        await h.send(P.infer_request(x))
        infer_ok((await h.replies(1))[0], x)
        # a new load that fails its CRC: not loaded until it is all done again
        bad0 = bytearray(good[0])
        bad0[-1] ^= 1
        await expect(bytes(bad0), P.ERR_CRC)
        await expect(P.commit_request(), P.ERR_NOT_LOADED)
        await expect(P.infer_request(x), P.ERR_NOT_LOADED)

    run_link(script, loads=[4, 2], writes=writes)
    # only accepted LOADs wrote; the bad-CRC ones wrote where a good LOAD must write again
    assert writes == [(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 4 ^ 0xFF00), (0, 3, 4),
                      (1, 0, 5), (1, 1, 6), (0, 0, 1), (0, 1, 2), (0, 2, 3)]


# one vector for each PACKED format (N_IN = 5), as pack_inputs chooses it
FORMATS = [
    (np.array([0, 1, 0, 256, 0]), P.FMT_MASK),  # sparse, values in 1..256: one byte + base 1
    (np.array([3, 1, 7, 256, 9]), 0),  # every input non-zero, in one byte's range
    (np.array([0, -32768, 0, 0, 32767]), P.FMT_MASK | P.FMT_WIDE),  # sparse, int16
    (np.array([-30000, 5, -1, 30000, 2]), P.FMT_WIDE),  # dense int16
    (np.zeros(5, int), P.FMT_MASK | P.FMT_WIDE),  # all zero: one mask byte, no base
]


def test_packed_formats():
    """pack_inputs picks the smallest format; the link expands each into the engine's words."""
    for x, fmt in FORMATS:
        f, body = P.pack_inputs(x)
        assert f == fmt, (x, f)
        assert P.unpack_inputs(bytes([0, f]) + body, len(x)) == (list(x), 0)

    async def script(h):
        for tag, (x, _) in enumerate(FORMATS):
            await h.send(P.packed_request(x, 100 + tag))
        frames = await h.replies(len(FORMATS), limit=20000)
        for tag, ((x, _), f) in enumerate(zip(FORMATS, frames)):
            r = P.decode_packed(f, out_features=N_OUT, num_layers=N_L)
            assert r.tag == 100 + tag
            np.testing.assert_array_equal(r.y, model(x.astype(np.int16)))

    runs, _ = run_link(script)
    assert runs == [list(x) for x, _ in FORMATS]
