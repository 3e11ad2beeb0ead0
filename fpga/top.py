"""Board tops: the engine behind a UART, with a PLL and LEDs on iCE40 boards.

`BoardCore` is everything that is not board-specific: UART rx/tx on two pins, the protocol link
(fpga/link.py) and the engine the image is for (the registry's, `images.engines`: the lockstep
engine hw/lockstep.py, or the queue-based EIE engine hw/eie/), with the parameters it has on the
board (`fpga.boards.engine_params`), plus two status outputs for LEDs. It is
what the cocotb and gate-level benches simulate, driven only through `rx` and `tx`. With
`spram=True` the engine's four largest ROMs live in SPRAM (fpga/memories.py) and are written
through the protocol's LOAD frames after configuration.

`BoardTop` puts a `BoardCore` on a platform: on an iCE40 platform the sync clock comes from an
SB_PLL40_PAD on the 12 MHz pin (power-on reset held while the PLL locks and for the EBR start-up
time), anywhere else (simulation) from the platform's default clock; the UART goes on the board's
`uart` resource. LEDs: the main green LED lights while a frame is handled, the red one when the
last reply was an error; the four green LEDs of the iCEBreaker's break-off PMOD show the last
predicted digit in binary (led_g 1 = bit 0).
"""


from dataclasses import dataclass

from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from hw import make_engine
from images import engine_of
from images.params import EngineParams

from .boards import DEFAULT_BOARD, engine_params, get_board
from .link import Link
from .memories import ICE40Memories, spram_plan_for
from .uart import DEFAULT_BAUD, UARTRx, UARTTx, baud_divisor


@dataclass(frozen=True)
class PllConfig:
    divr: int
    divf: int
    divq: int
    filter_range: int
    fout: float


def pll_config(fin: float, fout: float) -> PllConfig:
    """The SB_PLL40 settings whose output is closest to `fout` (icepll's search, SIMPLE mode).

    Constraints (iCE40 sysCLOCK PLL guide): PFD fin/(DIVR+1) in 10..133 MHz, VCO
    PFD*(DIVF+1) in 533..1066 MHz, fout = VCO / 2**DIVQ with DIVQ 1..6, fout 16..275 MHz.
    """
    best = None
    for divr in range(16):
        pfd = fin / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533e6 <= vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f = vco / (1 << divq)
                if not 16e6 <= f <= 275e6:
                    continue
                if best is None or abs(f - fout) < abs(best.fout - fout):
                    fr = next(i for i, lim in enumerate((17e6, 26e6, 44e6, 66e6, 101e6), 1)
                              if pfd < lim) if pfd < 101e6 else 6
                    best = PllConfig(divr, divf, divq, fr, f)
    if best is None:
        raise ValueError(f"no PLL setting makes {fout / 1e6:g} MHz from {fin / 1e6:g} MHz")
    return best


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
    inter-byte timeout; params, the engine's parameters (default: the board's,
    `fpga.boards.engine_params`); spram, the largest ROMs in SPRAM, written by LOAD frames;
    window, the requests the host may stream (default: `default_window(img)`).
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    digit: Out(4)
    status: Out(2)  # bit 0: a frame is being handled; bit 1: the last reply was an error

    def __init__(self, img, *, clock_hz: float, baud: int = DEFAULT_BAUD,
                 divisor: int | None = None, timeout_s: float = 0.05,
                 timeout_cycles: int | None = None, params: EngineParams | None = None,
                 spram: bool = False, window: int | None = None):
        self.clock_hz = int(round(clock_hz))
        self.divisor = divisor if divisor is not None else baud_divisor(clock_hz, baud)
        self.timeout = timeout_cycles if timeout_cycles is not None else int(timeout_s * clock_hz)
        rec = engine_of(img)
        self.params = engine_params(img) if params is None else params
        # spram=True: the largest ROMs go to SPRAM (fpga/memories.py) and are loaded over the
        # UART; `memories.primitive` is set by the board top on an iCE40 platform. An engine
        # that never uses a read of the address written in the same cycle (`no_rw_check`)
        # needs no read-before-write logic around the EBRs (fpga/memories.py).
        self.spram = spram
        self.memories = ICE40Memories(spram_plan_for(img) if spram else [],
                                      no_rw_check=rec.no_rw_check)
        self.engine = make_engine(img, self.params, memories=self.memories)
        self.link = Link(in_features=self.engine.in_features,
                         out_features=self.engine.out_features,
                         num_layers=self.engine.num_layers, pes=self.engine.pes,
                         clock_hz=self.clock_hz, timeout=self.timeout,
                         loads=[lp.spec.depth for lp in self.memories.loads],
                         engine_id=rec.protocol_id,
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


def _is_ice40(platform) -> bool:
    try:
        from amaranth.vendor import SiliconBluePlatform
    except ImportError:  # pragma: no cover
        return False
    return isinstance(platform, SiliconBluePlatform)


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
        self.pll = pll_config(self.fin, clock_hz)
        self.clock_hz = self.pll.fout
        self.core = BoardCore(img, clock_hz=self.clock_hz, baud=baud,
                              params=engine_params(img, board) if params is None else params,
                              **core_kw)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        if _is_ice40(platform):
            self._ice40_clock(m, platform)
            if core.memories is not None:
                core.memories.primitive = True  # SB_SPRAM256KA; elaborated after this
        uart = platform.request(self.board.uart, 0, dir={"rx": "-", "tx": "-"})
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [core.rx.eq(rx_buf.i), tx_buf.o.eq(core.tx)]
        leds = [("led_g", 0, core.status[0]), ("led_r", 0, core.status[1])]
        if hasattr(platform, "break_off_pmod"):
            platform.add_resources(platform.break_off_pmod)
            leds += [("led_g", bit + 1, core.digit[bit]) for bit in range(4)]
        for name, number, value in leds:
            buf = io.Buffer("o", platform.request(name, number, dir="-"))
            m.submodules[f"{name}_{number}"] = buf
            m.d.comb += buf.o.eq(value)
        return m

    def _ice40_clock(self, m, platform):
        clk_io = platform.request(self.board.clock, dir="-")
        pll_clk = Signal()
        locked = Signal()
        p = self.pll
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE",
            p_DIVR=p.divr, p_DIVF=p.divf, p_DIVQ=p.divq, p_FILTER_RANGE=p.filter_range,
            i_PACKAGEPIN=clk_io.io,
            i_RESETB=Const(1), i_BYPASS=Const(0),
            o_PLLOUTGLOBAL=pll_clk, o_LOCK=locked,
        )
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(pll_clk)
        # Reset until the PLL is locked, then 15 us more (EBRs read as zero for ~3 us after
        # configuration; the same margin as amaranth's own iCE40 reset).
        m.domains.por = ClockDomain("por", reset_less=True)
        m.d.comb += ClockSignal("por").eq(pll_clk)
        delay = int(15e-6 * self.clock_hz)
        timer = Signal(range(delay + 1))
        ready = Signal()
        with m.If(~locked):
            m.d.por += [timer.eq(0), ready.eq(0)]
        with m.Elif(timer == delay):
            m.d.por += ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)
        m.submodules.reset_sync = ResetSynchronizer(~ready, domain="sync")
        platform.add_clock_constraint(pll_clk, self.clock_hz)
