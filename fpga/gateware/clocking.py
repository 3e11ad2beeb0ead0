"""What every family's clock does once its PLL runs: the design's `sync` domain on the PLL's
output, held in reset until the PLL has been locked for 15 us (a `por` domain counts), then
released through a reset synchroniser. Each family module makes its own PLL and calls this."""

from __future__ import annotations

from amaranth.hdl import ClockDomain, ClockSignal, Signal
from amaranth.lib.cdc import ResetSynchronizer


def sync_from_pll(m, platform, pll_clk: Signal, locked: Signal, clock_hz: float) -> None:
    m.domains.sync = ClockDomain("sync")
    m.d.comb += ClockSignal("sync").eq(pll_clk)
    m.domains.por = ClockDomain("por", reset_less=True)
    m.d.comb += ClockSignal("por").eq(pll_clk)
    delay = int(15e-6 * clock_hz)
    timer = Signal(range(delay + 1))
    ready = Signal()
    with m.If(~locked):
        m.d.por += [timer.eq(0), ready.eq(0)]
    with m.Elif(timer == delay):
        m.d.por += ready.eq(1)
    with m.Else():
        m.d.por += timer.eq(timer + 1)
    m.submodules.reset_sync = ResetSynchronizer(~ready, domain="sync")
    platform.add_clock_constraint(pll_clk, clock_hz)
