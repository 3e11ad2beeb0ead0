"""An iCE40 `MemoryFactory`: the largest engine ROMs in SPRAM, loaded over the UART.

SPRAM (SB_SPRAM256KA, 16K x 16) has no initial contents and one port. A ROM placed there is
written after configuration through a load port (`LoadPort`: addr, data, we), which the board
core drives from the protocol's LOAD frames; while `we` is high the port's address is the load
address, otherwise the engine's read address. The engine only reads while it computes and the
link only loads while the engine is idle, so the one port is never wanted twice.

`spram_plan(specs)` picks up to four ROMs for SPRAM (`spram_plan_for(img)`: from the image's
memory map, `images.memory_specs`, no engine made): the largest by bits among those with one
read port, width <= 16 and depth <= 16K. Everything else goes through the default factory
(Amaranth `Memory` with init -> EBR or logic).

`primitive=True` (only on an iCE40 platform) instantiates SB_SPRAM256KA; otherwise (simulation)
the same single-port behaviour is an Amaranth `Memory` without init, so the simulated board also
starts empty and needs the load, exactly as the chip does.

`no_rw_check=True` marks every RAM (kind "ram": one read and one write port) with yosys'
`no_rw_check` attribute: the engine never uses the data of a read at the address written in the
same cycle. Without it yosys keeps Amaranth's read-before-write semantics on the iCE40 EBR, whose
own result is undefined for that case, with a register of the write data and address and a
comparison per RAM: about 60 logic cells for each 32-bit accumulator RAM, 500 for the lockstep
engine's 8 PEs. Only for an engine that ignores such reads (the lockstep engine: its accumulator
stalls a slot that would read the row being written, and its activations are never read for use
while written).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import ClockSignal, Instance, Module, Mux, Signal, unsigned
from amaranth.lib.memory import Memory

from hw.memory import MemoryFactory, MemoryPorts, MemorySpec
from images import memory_specs

SPRAM_COUNT = 4
SPRAM_DEPTH = 16384
SPRAM_WIDTH = 16


def spram_ok(spec: MemorySpec) -> bool:
    return (spec.kind == "rom" and spec.read_ports == 1 and spec.write_ports == 0
            and spec.width <= SPRAM_WIDTH and spec.depth <= SPRAM_DEPTH)


def spram_plan(specs, *, count: int = SPRAM_COUNT) -> list[MemorySpec]:
    """The ROMs to put in SPRAM, in load-id order (largest first, ties by name)."""
    cands = sorted((s for s in specs if spram_ok(s)), key=lambda s: (-s.bits, s.name))
    return cands[:count]


def spram_plan_for(img) -> list[MemorySpec]:
    """The engine memories of `img` that go to SPRAM, in load-id order: read from the image's
    memory map (ROMs only, which no engine parameter changes), no engine is made."""
    return spram_plan(memory_specs(img))


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


class ICE40Memories(MemoryFactory):
    """The board's memory factory: the memories named in `spram` as SPRAM ROMs, the rest EBR.

    Not a component: the engine calls it for each `MemorySpec`. Parameters: spram, the specs
    to put in SPRAM (at most four, see `spram_plan`), each with a `LoadPort` in `loads` through
    which the link writes it after configuration; primitive, instantiate `SB_SPRAM256KA` (set
    by the board top on an iCE40 platform; otherwise a behavioural model); no_rw_check, RAMs
    without read-before-write logic (the lockstep engine never reads a word written in the same
    cycle).
    """

    def __init__(self, spram: list[MemorySpec], *, primitive: bool = False,
                 no_rw_check: bool = False):
        if len(spram) > SPRAM_COUNT:
            raise ValueError(f"at most {SPRAM_COUNT} SPRAM memories, not {len(spram)}")
        for s in spram:
            if not spram_ok(s):
                raise ValueError(f"memory {s.name} ({s.width} x {s.depth}, {s.kind}) cannot be "
                                 f"an SPRAM ROM")
        self.primitive = primitive
        self.no_rw_check = no_rw_check
        self.loads = [
            LoadPort(spec=s, addr=Signal(14, name=f"load{i}_addr"),
                     data=Signal(16, name=f"load{i}_data"), we=Signal(name=f"load{i}_we"))
            for i, s in enumerate(spram)
        ]
        self._by_name = {lp.spec.name: lp for lp in self.loads}

    def __call__(self, m: Module, spec: MemorySpec) -> MemoryPorts:
        lp = self._by_name.get(spec.name)
        if lp is None and self.no_rw_check and spec.kind == "ram":
            return self._no_rw_check_ram(m, spec)
        if lp is None:
            return super().__call__(m, spec)
        if lp.spec != spec:
            raise ValueError(f"memory {spec.name} differs from the one planned for SPRAM")
        rp = _ReadPort(addr=Signal(spec.addr_width, name=f"{spec.name}_raddr".replace(".", "_")),
                       en=Signal(init=1, name=f"{spec.name}_ren".replace(".", "_")),
                       data=Signal(spec.width, name=f"{spec.name}_rdata".replace(".", "_")))
        addr = Signal(14, name=f"{spec.name}_addr".replace(".", "_"))
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


    @staticmethod
    def _no_rw_check_ram(m: Module, spec: MemorySpec) -> MemoryPorts:
        """A RAM whose read-during-write result is never used (see the module docstring).

        The read ports are asynchronous reads into a register with enable: the same behaviour
        as a synchronous read port (read before write), but it leaves yosys' memory_dff to fold
        the register into the port, which is where `no_rw_check` lets it drop the collision
        logic (a synchronous port from Amaranth arrives with read-before-write already fixed).
        """
        key = spec.name.replace(".", "_")
        mem = Memory(shape=unsigned(spec.width), depth=spec.depth, init=list(spec.init),
                     attrs={"no_rw_check": 1})
        m.submodules[key] = mem
        reads = []
        for i in range(spec.read_ports):
            rp = mem.read_port(domain="comb")
            # reset_less: an EBR output has no reset, a reset would be emulated in logic
            port = _ReadPort(addr=Signal(spec.addr_width, name=f"{key}_r{i}_addr"),
                             en=Signal(init=1, name=f"{key}_r{i}_en"),
                             data=Signal(spec.width, name=f"{key}_r{i}_data", reset_less=True))
            m.d.comb += rp.addr.eq(port.addr)
            with m.If(port.en):
                m.d.sync += port.data.eq(rp.data)
            reads.append(port)
        return MemoryPorts(read=reads, write=[mem.write_port() for _ in range(spec.write_ports)])


def load_words(spec: MemorySpec) -> list[int]:
    """The words a host writes into an SPRAM ROM (its init, as unsigned 16-bit words)."""
    return [int(v) & 0xFFFF for v in spec.init]
