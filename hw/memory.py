"""The one place where the engine's memories are made.

Every memory of the engine (per-PE entries, even/odd pointer banks, biases, codebook,
accumulators, activation buffers) is described by a `MemorySpec` (name, width, depth, init,
port needs) and built by a `MemoryFactory`. The default factory uses
`amaranth.lib.memory.Memory` with the ROM image as init and synchronous read ports of 1-cycle
latency (non-transparent: the engine forwards its own writes, so a single-port or
non-transparent primitive behaves the same). A board top can pass its own factory that puts
the large ROMs in iCE40 SPRAM and the rest in EBR, keyed on `spec.name` / `spec.kind`.

Port contract (what the engine drives and expects):

* read ports: `addr` (unsigned), `en` (1 = sample `addr` at this clock edge; 0 = hold `data`),
  `data` valid in the cycle after the edge that sampled `addr`;
* write ports: `addr`, `data`, `en` (write at the clock edge).

`kind` is ``"rom"`` (init only, never written: entries, pointers, bias, codebook), ``"ram"``
(written by the engine: accumulators, activation buffers) or ``"table"`` (a loadable engine's
per-layer constants: never written, read asynchronously, `data` valid in the same cycle as
`addr`; no `en`). A ``"ram"`` with one read and one
write port is read and written in the same cycle (at different addresses, except where the
engine forwards), so it needs a simple dual-port primitive (EBR), not a single-port SPRAM.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib.memory import Memory

from images.memmap import MemorySpec  # the memory map is computed from the image alone

__all__ = ["MemorySpec", "MemoryPorts", "MemoryFactory", "no_rw_check_ram"]


@dataclass
class MemoryPorts:
    read: list  # objects with .addr, .en, .data
    write: list  # objects with .addr, .en, .data


class MemoryFactory:
    """Default: `amaranth.lib.memory.Memory`, one per spec, added to the module under its name.

    `block(m, name, make)` adds a block an engine repeats (the EIE engine's PEs): the default
    makes each one (`make(self)`, its memories made by this factory) and adds it as a submodule;
    a factory for the simulators may make one Verilog module and instantiate it for every copy
    (`hw.simmem`). The engine uses only the ports of what it gets back.
    """

    def block(self, m: Module, name: str, make):
        blk = make(self)
        m.submodules[name] = blk
        return blk

    def __call__(self, m: Module, spec: MemorySpec) -> MemoryPorts:
        # A depth-1 Memory has 0-bit addresses; the engine drives `spec.addr_width` (>= 1) bits,
        # so a one-word memory (a PE with one row, a one-column layer) gets a second, unused word.
        mem = Memory(shape=unsigned(spec.width), depth=max(2, spec.depth), init=list(spec.init))
        m.submodules[spec.name.replace(".", "_")] = mem
        domain = "comb" if spec.kind == "table" else "sync"
        read = [mem.read_port(domain=domain) for _ in range(spec.read_ports)]
        write = [mem.write_port() for _ in range(spec.write_ports)]
        return MemoryPorts(read=read, write=write)


@dataclass
class _ReadPort:
    addr: Signal
    en: Signal
    data: Signal


def no_rw_check_ram(m: Module, spec: MemorySpec) -> MemoryPorts:
    """A RAM whose read-during-write result is never used, marked with yosys' `no_rw_check`
    attribute (a board family's factory uses it for an engine whose record says so).

    The read ports are asynchronous reads into a register with enable: the same behaviour as a
    synchronous read port (read before write), but it leaves yosys' memory_dff to fold the
    register into the port, which is where `no_rw_check` lets it drop the collision logic (a
    synchronous port from Amaranth arrives with read-before-write already fixed).
    """
    key = spec.name.replace(".", "_")
    mem = Memory(shape=unsigned(spec.width), depth=spec.depth, init=list(spec.init),
                 attrs={"no_rw_check": 1})
    m.submodules[key] = mem
    reads = []
    for i in range(spec.read_ports):
        rp = mem.read_port(domain="comb")
        # reset_less: a block RAM's output has no reset, a reset would be emulated in logic
        port = _ReadPort(addr=Signal(spec.addr_width, name=f"{key}_r{i}_addr"),
                         en=Signal(init=1, name=f"{key}_r{i}_en"),
                         data=Signal(spec.width, name=f"{key}_r{i}_data", reset_less=True))
        m.d.comb += rp.addr.eq(port.addr)
        with m.If(port.en):
            m.d.sync += port.data.eq(rp.data)
        reads.append(port)
    return MemoryPorts(read=reads, write=[mem.write_port() for _ in range(spec.write_ports)])
