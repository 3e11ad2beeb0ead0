"""An 8N1 UART as two `wiring.Component`s with byte streams.

The receiver samples the (synchronised) line on every clock: a falling edge starts a byte, the
start bit is confirmed half a bit later (a shorter glitch is ignored), and every data bit and the
stop bit are taken as the majority of three samples around the middle of the bit. A byte whose
stop bit is low is dropped and pulses `frame_error`; a byte that arrives while the previous one
is still waiting on `o.ready` replaces it and pulses `overrun` (the stream keeps its rule: valid
never waits on ready, the payload holds until the transfer).

The transmitter takes a byte from `i` when idle and shifts out start, 8 data bits LSB first and
one stop bit.

`divisor` is clock cycles per bit (clk_hz / baud, rounded): at least 4 so the majority
samples fit in a bit (the simulated board uses 4 for speed). A board's baud rate must come
within 2% of the line's and give at least 8 clocks a bit (`baud_divisor`): the three samples
then sit within one clock of the bit's middle, and the receiver takes a sender up to 2% fast
or slow over a whole byte (10 bits: 20% of a bit of drift, against about 35% of margin).
Any multiple of 3 MHz gives 3 Mbaud exactly (9 at 27 MHz, 12 at 36 MHz).
"""


from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


DEFAULT_BAUD = 3_000_000  # the iCEBreaker's FT2232H runs 3 Mbaud reliably
MIN_DIVISOR = 8  # clock cycles per bit a board's baud rate must give
MAX_BAUD_ERROR = 0.02


def baud_divisor(clk_hz: float, baud: int) -> int:
    """Clock cycles per bit; ValueError (one line) if the clock cannot make this baud rate:
    fewer than MIN_DIVISOR cycles a bit, or more than 2% off."""
    if not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud rate must be a positive integer, not {baud!r}")
    div = round(clk_hz / baud)
    if div < MIN_DIVISOR:
        raise ValueError(f"{baud} baud needs at least {MIN_DIVISOR} clock cycles a bit: a "
                         f"{clk_hz / 1e6:g} MHz clock gives {clk_hz / baud:.1f}")
    err = abs(clk_hz / div - baud) / baud
    if err > MAX_BAUD_ERROR:
        raise ValueError(f"{baud} baud is {err:.1%} off at {clk_hz / 1e6:g} MHz (divisor {div}, "
                         f"{clk_hz / div:.0f} baud); the limit is 2%")
    return div


def _check_divisor(divisor):
    if not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"divisor must be an integer >= 4 clock cycles per bit, not {divisor!r}")


class UARTRx(wiring.Component):
    """The 8N1 receiver.

    Ports: `rx` (in: the serial line, idle high; synchronised here), `o` (out: received bytes,
    valid/ready), `frame_error` (out: one-cycle pulse, a byte with a low stop bit was dropped),
    `overrun` (out: one-cycle pulse, a byte not yet taken on `o` was replaced).
    Parameters: divisor, clock cycles per bit (an integer >= 4, see `baud_divisor`).
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)

    def __init__(self, *, divisor: int):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(div + 1))
        bit = Signal(range(10))  # 0 = start, 1..8 data, 9 stop
        shreg = Signal(8)
        votes = Signal(2)  # samples seen high among the three taken so far
        # Three samples at the middle of the bit: timer == mid + 1, mid, mid - 1 (counting down).
        mid = div // 2
        last = Signal()  # this cycle takes the third sample

        m.d.comb += last.eq(timer == mid - 1)
        m.d.sync += [self.frame_error.eq(0), self.overrun.eq(0)]

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    # The falling edge: count down to the middle of the start bit.
                    m.d.sync += [timer.eq(div - 1), bit.eq(0), votes.eq(0)]
                    m.next = "BIT"
            with m.State("BIT"):
                m.d.sync += timer.eq(timer - 1)
                with m.If((timer <= mid + 1) & (timer >= mid - 1) & line):
                    m.d.sync += votes.eq(votes + 1)
                high = Signal()
                m.d.comb += high.eq((votes + line) >= 2)
                with m.If(last):
                    with m.If(bit == 0):
                        with m.If(high):
                            m.next = "IDLE"  # a glitch, not a start bit
                    with m.Elif(bit == 9):
                        with m.If(high):
                            m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                            # o.valid still high and not taken this cycle: the old byte is lost
                            m.d.sync += self.overrun.eq(self.o.valid & ~self.o.ready)
                            m.next = "IDLE"
                        with m.Else():
                            m.d.sync += self.frame_error.eq(1)
                            m.next = "BREAK"
                    with m.Else():
                        m.d.sync += shreg.eq(Cat(shreg[1:], high))
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(div - 1), bit.eq(bit + 1), votes.eq(0)]
            with m.State("BREAK"):
                # After a framing error wait for the line to go idle (high) again.
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """The 8N1 transmitter.

    Ports: `i` (in: bytes to send, taken while the line is idle), `tx` (out: the serial line,
    idle high).
    Parameters: divisor, clock cycles per bit (an integer >= 4, see `baud_divisor`).
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, *, divisor: int):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        timer = Signal(range(div))
        shreg = Signal(10, init=0x3FF)  # stop, data[7:0], start: shifted out LSB first
        bits = Signal(range(11))

        m.d.comb += self.i.ready.eq(bits == 0)
        m.d.comb += self.tx.eq(shreg[0])
        with m.If(bits == 0):
            with m.If(self.i.valid):
                m.d.sync += [
                    shreg.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))),
                    bits.eq(10),
                    timer.eq(div - 1),
                ]
        with m.Else():
            with m.If(timer == 0):
                m.d.sync += [timer.eq(div - 1), bits.eq(bits - 1), shreg.eq(Cat(shreg[1:], 1))]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m
