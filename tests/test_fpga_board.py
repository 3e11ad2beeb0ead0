"""The board core in cocotb + Icarus, driven only through its UART pins (bytes in, bytes out).

RTL and gate-level (yosys synth_ice40 netlist with the iCE40 cell models), every answer compared
bit for bit with the golden model. The host side is fpga/host/client.py's `Board`, as with a real board.
Both engines: the lockstep engine (the board's default) and the queue-based EIE engine.
"""


import numpy as np
import pytest

from compress.errors import InputError
from compress.golden import golden
from images.lockstep import build_lockstep
from images.eie import build_rom
from compress.synthetic import random_inputs, random_qnet
from fpga import protocol as P
from fpga.flow.bench import SIM_DIVISOR, simulated_board
from fpga.host.client import Board
from fpga.host.runner import run_digits

from .conftest import long_tests

# A small network with the LeNet shape of things (hidden ReLU layer, 10 outputs), 4 PEs.
QNET = random_qnet((40, 24, 10), density=[0.3, 0.5], seed=1)
ROM = build_rom(QNET, pes=4)
LS = build_lockstep(QNET, 4)
IMAGES = {"lockstep": LS, "eie": ROM}
# Gate level simulates every LUT: a still smaller input (the UART time dominates), 2 PEs.
QNET_GL = random_qnet((12, 16, 10), density=[0.5, 0.5], seed=2)
ROM_GL = build_rom(QNET_GL, pes=2)
LS_GL = build_lockstep(QNET_GL, 2)
IMAGES_GL = {"lockstep": LS_GL, "eie": ROM_GL}


def check(board, x, qnet=QNET):
    want = golden(qnet, x)
    for i in range(len(x)):
        r = board.infer(x[i])
        np.testing.assert_array_equal(r.y, want[i])
        assert r.cycles > sum(r.layer_cycles) > 0


@pytest.mark.parametrize("engine, gate_level", [("lockstep", False), ("eie", False),
                                                ("lockstep", True), ("eie", True)],
                         ids=["rtl-lockstep", "rtl-eie", "gate-lockstep", "gate-eie"])
def test_board_vectors(engine, gate_level):
    """Gate level is the netlist as the bitstream has it: SB_SPRAM256KA cells, loaded first."""
    if gate_level:
        qnet, rom = QNET_GL, IMAGES_GL[engine]
    else:
        qnet, rom = QNET, IMAGES[engine]
    x = random_inputs(2 if gate_level else 3, qnet.in_features, seed=2, density=0.5)
    x[0, :5] = [-32768, 32767, -1, 0, 1]  # extremes as input words
    with simulated_board(rom, gate_level=gate_level, spram=gate_level) as t:
        board = Board(t, timeout=120)
        info = board.ping()
        assert (info.version, info.pes, info.num_layers) == (P.VERSION, rom.pes, 2)
        assert info.engine == engine
        assert (info.in_features, info.out_features) == (qnet.in_features, 10)
        assert info.loaded is not gate_level
        if gate_level:
            assert board.load(rom) > 0 and board.ping().loaded
        check(board, x, qnet)
        c = board.counters()
        assert (c.inferences, c.errors) == (len(x), 0)


def resync(board, tries=20):
    """PING until a PING reply comes back; returns the ERROR frames that arrived before it.

    A PING sent while the board is inside a false frame (begun by a SYNC in the garbage) is
    eaten by that frame, which then ends in an ERROR; the next PING gets through.
    """
    errors = []
    for _ in range(tries):
        board.t.write(P.ping_request())
        while True:
            try:
                f = board._reply()
            except TimeoutError:
                break
            if f.cmd == P.CMD_PING:
                return errors
            errors.append(P.decode_error(f))
    raise AssertionError("the board never answered PING again")


def test_board_garbage_then_good():
    """Garbage (with SYNC bytes in it), a truncated frame, a bad CRC: then the right answer.

    The lockstep board (the default); the link is the same for both engines.
    """
    rng = np.random.default_rng(7)
    garbage = rng.integers(0, 256, 120, dtype=np.uint8)
    garbage[::13] = P.SYNC_REQ
    x = random_inputs(2, 40, seed=3, density=0.5)
    bad_crc = bytearray(P.infer_request(x[0]))
    bad_crc[-1] ^= 0x5A
    with simulated_board(LS) as t:
        board = Board(t, timeout=20)
        board.ping()
        t.write(bytes(garbage))
        errs = resync(board)
        t.write(P.infer_request(x[0])[:50])  # stops in the payload: the board times out
        assert P.decode_error(board._reply()) == P.ERR_TIMEOUT
        assert P.decode_error(board.request(bytes(bad_crc))) == P.ERR_CRC
        check(board, x)
        c = board.counters()
        assert c.inferences == len(x) and c.errors == len(errs) + 2


def test_run_digits_sim():
    """The host runner's loop against the simulated board: agreement and cycle counters."""
    x = random_inputs(2, 40, seed=4, density=0.5)
    labels = np.array([0, 1])
    with simulated_board(LS) as t:
        stats = run_digits(Board(t, timeout=60), QNET, x, labels, progress=False)
    assert stats.n == 2 and stats.exact == 2 and stats.agree == 2
    assert len(stats.cycles) == 2 and all(len(lc) == 2 for lc in stats.layer_cycles)


@pytest.mark.parametrize("engine, window", [("lockstep", 4), ("eie", 1)])
def test_board_stream(engine, window):
    """Inputs streamed through the UART pins, the board's window of requests in flight (the
    lockstep engine takes the next input while it computes; the EIE engine one at a time):
    every answer bit-exact and in order, nothing refused, the line from the host kept busy."""
    x = np.random.default_rng(11).integers(-3000, 3000, (6, QNET.in_features)).astype(np.int16)
    frames = [P.packed_request(v) for v in x]
    assert all(P.streamable(len(f), 10, 2) for f in frames)  # int16 values: long frames
    with simulated_board(IMAGES[engine]) as t:
        board = Board(t, timeout=60)
        assert board.ping().window == window
        out0 = board.bytes_out
        rs = board.infer_many(x)
        want = golden(QNET, x)
        for r, w in zip(rs, want):
            np.testing.assert_array_equal(r.y, w)
        c = board.counters()
        assert (c.inferences, c.errors) == (len(x), 0)
    starts = t.times["rx_start"][out0:out0 + sum(map(len, frames))]
    busy = len(starts) * 10 * SIM_DIVISOR / (starts[-1] - starts[0])
    if window > 1:
        assert busy > 0.9  # back to back, bar a few idle polls of the bench
    else:
        assert busy < 0.9  # request, compute, reply, one after the other


@pytest.mark.parametrize("engine", ["lockstep", "eie"])
def test_board_spram_load(engine):
    """SPRAM ROMs start empty: INFER refused, then the host loads them and gets exact answers."""
    x = random_inputs(2, 40, seed=5, density=0.5)
    img = IMAGES[engine]
    with simulated_board(img, spram=True) as t:
        board = Board(t, timeout=60)
        assert not board.ping().loaded
        assert P.decode_error(board.request(P.infer_request(x[0]))) == P.ERR_NOT_LOADED
        resync(board)  # the rest of that INFER frame is dropped (or starts a false frame)
        with pytest.raises(InputError, match="engine"):  # a ROM image for the other engine
            other = next(img for name, img in IMAGES.items() if name != engine)
            run_digits(board, QNET, x, None, progress=False, rom=other)
        assert board.load(img) > 0
        assert board.ping().loaded
        check(board, x)


@pytest.mark.skipif(not long_tests(), reason="LONG=1: gate level, more vectors, 4 PEs")
@pytest.mark.parametrize("engine", ["lockstep", "eie"])
def test_board_gate_level_long(engine):
    x = random_inputs(6, QNET.in_features, seed=9, density=0.5)
    with simulated_board(IMAGES[engine], gate_level=True) as t:
        check(Board(t, timeout=300), x)


@pytest.mark.skipif(not long_tests(), reason="LONG=1: LeNet-300-100 digits through the board")
@pytest.mark.parametrize("engine", ["lockstep", "eie"])
def test_board_lenet_digits(engine, mnist_dir):
    from compress.data import load_split
    from compress.golden import mnist_to_input

    from compress.shipped import load_model
    from images import build_image

    qnet, _ = load_model(None)
    test = load_split("test", mnist_dir)
    x = mnist_to_input(test.images[:2], qnet.input_frac)
    rom = build_image(qnet, engine, 8)
    # Memories initialised (no SPRAM): a LOAD of LeNet's SPRAM ROMs is ~10^6 simulated UART
    # cycles; the load path is covered by test_board_spram_load.
    with simulated_board(rom) as t:
        stats = run_digits(Board(t, timeout=600), qnet, x, test.labels[:2], progress=False,
                           rom=rom)
    assert stats.exact == 2


@pytest.mark.skipif(not long_tests(), reason="LONG=1: LeNet-300-100 digits through the netlist")
def test_board_gate_level_lenet_digits(mnist_dir):
    """The board core as synthesised (synth_ice40 -dsp -spram -> write_verilog, iCE40 cell
    models): the shipped LeNet-300-100 on the 8-PE lockstep engine, 2 MNIST digits through the
    UART pins, bit-exact. The lane ROMs are initialised memories here (EBR cells in the netlist)
    instead of the chip's loaded SPRAMs: a LOAD of them is ~10^6 gate-level cycles; the SPRAM
    load path is covered at gate level by test_board_vectors[gate-*]. About 8 minutes."""
    from compress.data import load_split
    from compress.golden import mnist_to_input

    from compress.shipped import load_model
    from images import build_image

    qnet, _ = load_model(None)
    test = load_split("test", mnist_dir)
    x = mnist_to_input(test.images[:2], qnet.input_frac)
    rom = build_image(qnet, "lockstep", 8)
    with simulated_board(rom, gate_level=True) as t:
        stats = run_digits(Board(t, timeout=3600), qnet, x, test.labels[:2], progress=False,
                           rom=rom)
    assert stats.exact == 2
