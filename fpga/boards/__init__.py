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
from dataclasses import dataclass
from types import ModuleType

from compress.errors import InputError
from images import engine_of
from images.params import EngineParams

from . import ice40

# family name -> its module (memories, PLL, tools, reports, budget: fpga/boards/ice40.py's names)
FAMILIES: dict[str, ModuleType] = {ice40.NAME: ice40}


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

    def make_platform(self):
        """A new platform object (one takes one design only)."""
        module, _, cls = self.platform.partition(":")
        return getattr(importlib.import_module(module), cls)()

    @property
    def fam(self) -> ModuleType:
        """The family's module."""
        return FAMILIES[self.family]


BOARDS = {b.name: b for b in (
    # UART through the FTDI on rx 6 / tx 9, the 12 MHz oscillator on pin 35
    Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", "iCE40UP5K",
          UP5K, clock="clk12", clock_hz=12e6),
    # iCESugar (UP5K): the same 12 MHz pin 35, a UART and red/green LEDs; elaborated in the
    # tests, never built or run on a board here.
    Board("icesugar", "amaranth_boards.icesugar:ICESugarPlatform", "ice40", "iCE40UP5K", UP5K,
          clock="clk12", clock_hz=12e6),
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
    the fields it has, fitted to the image's PEs."""
    b = get_board(board)
    return engine_of(img).params_for(b.name, b.family, **values).fitted(img.pes)
