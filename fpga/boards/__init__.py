"""The boards: one record per board, their FPGA families, and the engine parameters a board's
engine gets.

A `Board` names its amaranth-boards platform, its FPGA family (which owns the memories, the
PLL, the tools and their reports: `fpga.ice40`, see its docstring for what a family module
holds), its device and that device's budget, the clock pin and its frequency, the UART resource
and the engine it runs when not told. A board of a known family is one record here; a board of
a new family is a record plus the family's module, named in `FAMILIES`.

`engine_params(img, board)` are the parameters of the engine of `img` on `board`: the engine's
defaults for the board (`images.engines`: by board name, else family) fitted to the image's PEs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from types import ModuleType

from compress.errors import InputError
from images import engine_of
from images.params import EngineParams

from . import ecp5, ice40

# family name -> its module (memories, PLL, tools, reports, budget: fpga/boards/ice40.py's names)
FAMILIES: dict[str, ModuleType] = {ice40.NAME: ice40, ecp5.NAME: ecp5}


@dataclass(frozen=True)
class Budget:
    """What the device has: logic cells, block RAMs (and their bits), single-port RAMs (and
    their bits), multipliers."""

    lc: int
    ebr: int
    ebr_bits: int
    spram: int
    spram_bits: int
    dsp: int


UP5K = Budget(lc=5280, ebr=30, ebr_bits=4096, spram=4, spram_bits=16384 * 16, dsp=8)
# ECP5 (LFE5U, datasheet FPGA-DS-02012 table 1.1; LUT4s as nextpnr-ecp5 reports them): block
# RAMs are DP16KD of 18 Kbit, multipliers MULT18X18D, no SPRAM. The 12F is the 25F's die with
# nextpnr's 12k budget.
ECP5_12F = Budget(lc=12096, ebr=32, ebr_bits=18432, spram=0, spram_bits=0, dsp=28)
ECP5_25F = Budget(lc=24288, ebr=56, ebr_bits=18432, spram=0, spram_bits=0, dsp=28)
ECP5_45F = Budget(lc=43848, ebr=108, ebr_bits=18432, spram=0, spram_bits=0, dsp=72)
ECP5_85F = Budget(lc=83640, ebr=208, ebr_bits=18432, spram=0, spram_bits=0, dsp=156)


@dataclass(frozen=True)
class Board:
    name: str
    platform: str  # "module:Class" of its amaranth-boards platform
    family: str  # its FPGA family's name (fpga.ice40: "ice40")
    device: str
    budget: Budget
    clock: str  # the platform's resource of the clock pin
    clock_hz: float  # its frequency
    uart: str = "uart"  # the platform's resource of the UART (its rx and tx pins)
    engine: str = "lockstep"  # the engine the board runs when not told
    clock_mhz: float | None = None  # its default PLL clock (None: fpga.flow.build's default)
    baud: int = 3_000_000  # its default UART rate (the clock must give it, fpga.gateware.uart)
    # LEDs (platform resource, number): a frame is being handled, the last reply was an error;
    # and the last predicted digit in binary, bit 0 first (empty: the iCEBreaker's break-off
    # PMOD when the platform has one)
    status_leds: tuple = (("led_g", 0), ("led_r", 0))
    digit_leds: tuple = ()

    def make_platform(self):
        """A new platform object (one takes one design only)."""
        module, _, cls = self.platform.partition(":")
        return getattr(importlib.import_module(module), cls)()

    @property
    def fam(self) -> ModuleType:
        """The family's module."""
        return FAMILIES[self.family]


# The ULX3S's default clock and baud rate: the 16-PE EIE engine with its pipelined front end
# (the `ecp5` defaults, docs/fpga.md section 7) at the PLL's 25 x 2 = 50 MHz, with 2 Mbaud
# (25 clocks a bit, exact), which the FT231X makes exactly (3 MHz / 1.5; 3 Mbaud would need a
# multiple of 3 MHz: 45, 60 or 75 MHz from 25 MHz).
ULX3S_CLOCK_MHZ = 50.0
ULX3S_BAUD = 2_000_000

BOARDS = {b.name: b for b in (
    # UART through the FTDI on rx 6 / tx 9, the 12 MHz oscillator on pin 35
    Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", "iCE40UP5K",
          UP5K, clock="clk12", clock_hz=12e6),
    # iCESugar (UP5K): the same 12 MHz pin 35, a UART and red/green LEDs; elaborated in the
    # tests, never built or run on a board here.
    Board("icesugar", "amaranth_boards.icesugar:ICESugarPlatform", "ice40", "iCE40UP5K", UP5K,
          clock="clk12", clock_hz=12e6),
    # ULX3S (ECP5, BG381): the 25 MHz oscillator on G2, the FT231X's UART on M1 (rx) / L4
    # (tx); the EIE engine, its weights initialised in the bitstream. `ulx3s` is the 85F, the
    # other sizes carry theirs in the name.
    *(Board(name, f"amaranth_boards.ulx3s:ULX3S_{size}_Platform", "ecp5", f"LFE5U-{size}",
            budget, clock="clk25", clock_hz=25e6, engine="eie", clock_mhz=ULX3S_CLOCK_MHZ,
            baud=ULX3S_BAUD,
            status_leds=(("led", 0), ("led", 1)),
            digit_leds=tuple(("led", 4 + bit) for bit in range(4)))
      for name, size, budget in (("ulx3s", "85F", ECP5_85F), ("ulx3s-45f", "45F", ECP5_45F),
                                 ("ulx3s-25f", "25F", ECP5_25F),
                                 ("ulx3s-12f", "12F", ECP5_12F))),
)}
DEFAULT_BOARD = "icebreaker"


def get_board(name: str) -> Board:
    if name not in BOARDS:
        raise InputError(f"unknown board {name!r}: supported boards are {', '.join(BOARDS)}")
    return BOARDS[name]


def family_of(board: str = DEFAULT_BOARD) -> ModuleType:
    """The family module of `board`."""
    return get_board(board).fam


def engine_params(img, board: str = DEFAULT_BOARD, **values) -> EngineParams:
    """The parameters of the engine of `img` on `board`: its defaults there with `values` for
    the fields it has, fitted to the image's PEs. A board default of four columns a cycle (the
    ULX3S's four-wide option, `fpga.boards.ecp5.FOUR_WIDE`, made the default) is two for a
    network with conv layers (four take fully connected ones only) and for one
    whose pointer banks, read on four ports (two copies of each), would not fit the device's
    block RAMs where two ports do (the 784-1024-512-10 MLP at 16 PEs: 240 DP16KD against 176,
    of 208)."""
    b = get_board(board)
    rec = engine_of(img)
    conv = any(getattr(rl, "kind", "fc") != "fc" for rl in getattr(img, "layers", ()))
    if conv:
        # a conv network: the family's own values for it (iCE40: the EIE engine's queue depth
        # 1, the logic cells bind), under the ones given
        values = {**getattr(b.fam, "CONV_VALUES", {}).get(rec.name, {}), **values}
    p = rec.params_for(b.name, b.family, **values).fitted(img.pes)
    if getattr(p, "issue_width", None) == 4 and "issue_width" not in values and (
            conv or _blocks(img, p, b) > b.budget.ebr >= _blocks(img, replace(p, issue_width=2),
                                                                  b)):
        p = replace(p, issue_width=2)
    return p


def _blocks(img, params, b: "Board") -> int:
    """The block RAMs the engine's memories take on board `b` (its family's rule)."""
    from images import memory_specs

    return sum(b.fam.block_rams(s) for s in memory_specs(img, params) if s.kind != "table")
