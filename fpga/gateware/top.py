"""Board tops: the engine behind a UART, with the board's PLL and LEDs.

`BoardCore` is everything that is not board-specific: UART rx/tx on two pins, the protocol link
(fpga/gateware/link.py) and the engine the image is for (the registry's, `images.engines`: the
lockstep engine hw/lockstep.py, or the queue-based EIE engine hw/eie/), with the parameters it
has on the board (`fpga.boards.engine_params`), plus two status outputs for LEDs. It is what the
cocotb and gate-level benches simulate, driven only through `rx` and `tx`. With `spram=True`
the engine's four largest ROMs live in SPRAM (the family's, fpga/boards/ice40.py) and are
written through the protocol's LOAD frames after configuration.

`BoardTop` puts a `BoardCore` on a board's platform: on a platform of the board's family the
sync clock comes from the family's PLL on the board's clock pin (`clock_domain`: for iCE40 an
SB_PLL40_PAD on the 12 MHz pin, the power-on reset held while the PLL locks and for the EBR
start-up time), anywhere else (simulation) from the platform's default clock; the UART goes on
the board's UART resource. The memories are the family's (`Memories`). LEDs (the board record's): on
the iCEBreaker the main green LED lights while a frame is handled, the red one when the last
reply was an error, and the four green LEDs of the break-off PMOD show the last predicted digit
in binary (led_g 1 = bit 0); on the ULX3S LEDs 0 and 1 are the two states and LEDs 4-7 the
digit.
"""

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from hw import make_engine
from images import engine_of
from images.params import EngineParams

from ..boards import DEFAULT_BOARD, engine_params, get_board
from .link import Link
from .uart import DEFAULT_BAUD, UARTRx, UARTTx, baud_divisor


STREAM_WINDOW = 4  # requests in flight when the engine takes inputs while it computes


def default_window(img) -> int:
    """How many requests the host may stream to a board with the engine of `img`.

    An engine that takes the next input while it computes (`overlap` in its record; the
    lockstep engine has two input banks, `hw.blocks.BankedIO`) lets the host keep STREAM_WINDOW
    requests in flight; the link then never waits on the engine for longer than it can hold a
    byte. Without it the engine takes no input for its whole compute and output (about 30 byte
    times at 3 Mbaud), so the host sends one request at a time (window 1).
    """
    return STREAM_WINDOW if engine_of(img).overlap else 1


class BoardCore(wiring.Component):
    """UART pins <-> protocol link <-> engine. See the module docstring.

    Ports: `rx` (in: UART line from the host, idle high), `tx` (out: UART line to the host),
    `digit` (out: the predicted digit of the last inference, for LEDs), `status` (out: bit 0 a
    frame is being handled, bit 1 the last reply was an error).

    Parameters: img, the image (its type decides the engine); clock_hz, the sync clock;
    baud or divisor (clock cycles per bit); timeout_s or timeout_cycles, the receiver's
    inter-byte timeout; board, whose family makes the memories; params, the engine's
    parameters (default: the board's, `fpga.boards.engine_params`); spram, the largest ROMs in
    the family's loadable memories (SPRAM), written by LOAD frames; window, the requests the
    host may stream (default: `default_window(img)`).
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    digit: Out(4)
    status: Out(2)  # bit 0: a frame is being handled; bit 1: the last reply was an error

    def __init__(self, img, *, clock_hz: float, baud: int = DEFAULT_BAUD,
                 divisor: int | None = None, timeout_s: float = 0.05,
                 timeout_cycles: int | None = None, board: str = DEFAULT_BOARD,
                 params: EngineParams | None = None, spram: bool = False,
                 window: int | None = None):
        self.clock_hz = int(round(clock_hz))
        self.divisor = divisor if divisor is not None else baud_divisor(clock_hz, baud)
        self.timeout = timeout_cycles if timeout_cycles is not None else int(timeout_s * clock_hz)
        rec = engine_of(img)
        fam = get_board(board).fam
        self.params = engine_params(img, board) if params is None else params
        # spram=True: the largest ROMs go to SPRAM (the family's `load_plan`) and are loaded
        # over the UART; `memories.primitive` is set by the board top on a platform of the
        # family. An engine that never uses a read of the address written in the same cycle
        # (`no_rw_check`) needs no read-before-write logic around the block RAMs.
        self.spram = spram
        self.memories = fam.Memories(fam.load_plan_for(img) if spram else [],
                                     no_rw_check=rec.no_rw_check)
        self.engine = make_engine(img, self.params, memories=self.memories)
        self.link = Link(in_features=self.engine.in_features,
                         out_features=self.engine.out_features,
                         num_layers=self.engine.num_layers, pes=self.engine.pes,
                         clock_hz=self.clock_hz, timeout=self.timeout,
                         loads=[lp.spec.depth for lp in self.memories.loads],
                         load_addr_bits=fam.LOAD_ADDR_BITS, engine_id=rec.protocol_id,
                         window=window or default_window(img))
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.urx = urx = UARTRx(divisor=self.divisor)
        m.submodules.utx = utx = UARTTx(divisor=self.divisor)
        m.submodules.link = link = self.link
        m.submodules.engine = eng = self.engine
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        wiring.connect(m, urx.o, link.rx)
        wiring.connect(m, link.tx, utx.i)
        wiring.connect(m, link.act_out, eng.i_act)
        wiring.connect(m, eng.o_act, link.act_in)
        m.d.comb += [
            link.cycles.eq(eng.cycles),
            link.layer_cycles.eq(eng.layer_cycles),
            self.digit.eq(link.digit),
            self.status.eq(link.active | (link.error_flag << 1)),
        ]
        if self.memories is not None:
            for i, lp in enumerate(self.memories.loads):
                m.d.comb += [lp.addr.eq(link.load_addr), lp.data.eq(link.load_data),
                             lp.we.eq(link.load_we & (link.load_mem == i))]
        return m


class BoardTop(Elaboratable):
    """A `BoardCore` on a board: clock (PLL on iCE40), reset, UART pins and LEDs.

    No ports of its own (an `Elaboratable`: it requests the platform's UART, clock and LED
    resources). Parameters: img, board (its record names the clock pin, its frequency and the
    UART), clock_hz (the PLL's nearest achievable clock is used: `clock_hz` attribute), baud,
    params (default: the board's, `fpga.boards.engine_params`), and every other `BoardCore`
    parameter (core_kw).
    """

    def __init__(self, img, *, clock_hz: float, baud: int = DEFAULT_BAUD,
                 board: str = DEFAULT_BOARD, params: EngineParams | None = None, **core_kw):
        self.board = get_board(board)
        self.fin = self.board.clock_hz
        self.pll = self.board.fam.pll_config(self.fin, clock_hz)
        self.clock_hz = self.pll.fout
        self.core = BoardCore(img, clock_hz=self.clock_hz, baud=baud, board=board,
                              params=engine_params(img, board) if params is None else params,
                              **core_kw)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        fam = self.board.fam
        if fam.is_platform(platform):
            fam.clock_domain(m, platform, self.board, self.pll, self.clock_hz)
            core.memories.primitive = True  # the family's primitives; elaborated after this
        # every pin of the resource raw (the ULX3S's also has rts and dtr, left unused)
        pins = {sub.name: "-" for sub in platform.lookup(self.board.uart, 0).ios}
        uart = platform.request(self.board.uart, 0, dir=pins)
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [core.rx.eq(rx_buf.i), tx_buf.o.eq(core.tx)]
        b = self.board
        leds = [(name, number, core.status[bit])
                for bit, (name, number) in enumerate(b.status_leds)]
        leds += [(name, number, core.digit[bit])
                 for bit, (name, number) in enumerate(b.digit_leds)]
        if not b.digit_leds and hasattr(platform, "break_off_pmod"):
            platform.add_resources(platform.break_off_pmod)
            leds += [("led_g", bit + 1, core.digit[bit]) for bit in range(4)]
        for name, number, value in leds:
            buf = io.Buffer("o", platform.request(name, number, dir="-"))
            m.submodules[f"{name}_{number}"] = buf
            m.d.comb += buf.o.eq(value)
        return m
