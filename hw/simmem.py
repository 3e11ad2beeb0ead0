"""Memories for the simulators: every memory an instance of a small Verilog module that loads
its words at time zero (`$readmemh`), so the engine's Verilog carries no contents.

`SimMemories` is a `hw.memory.MemoryFactory`: each memory becomes an `Instance` of
`simmem_r{R}w{W}` (R read ports, W write ports; `simmem_t{R}` for a table, read without a
clock) with parameters WIDTH, DEPTH, ABITS and NAME (the memory's Verilog name, "pe3_entries").
`verilog_modules()` gives the Verilog of the modules it used: each loads
`<dir>/<NAME>.hex` (one hex word a line, DEPTH of them), `<dir>` from the plusarg `+mems=DIR`
(default "."). The engine's Verilog (plus these modules) then depends only on the memories'
widths and depths and on the engine's logic, never on the words: a loadable EIE engine
(`images.eie.EieParams(loadable=True)`) converted with this factory is one Verilog for every
network of its shape, and its conversion takes seconds where contents make it minutes.

Port behaviour is that of `hw.memory` (`amaranth.lib.memory.Memory`): a read port samples
`addr` at the clock edge when `en` (initially 1) is high, `data` valid the cycle after, not
transparent (a read of the address being written gives the old word); write ports write at the
edge; table read ports are combinational. A memory of one word gets a second (as
`hw.memory.MemoryFactory` does), so the written files always hold max(2, depth) words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from amaranth.hdl import ClockSignal, Instance, Module, Signal

from .memory import MemoryFactory, MemoryPorts, MemorySpec

__all__ = ["SimMemories", "share_pe_modules", "verilog_name"]


def verilog_name(spec: MemorySpec) -> str:
    """The memory's name in the Verilog and its file's stem ("pe3.entries" -> "pe3_entries")."""
    return spec.name.replace(".", "_")


@dataclass
class _Read:
    addr: Signal
    data: Signal
    en: Signal


@dataclass
class _Write:
    addr: Signal
    data: Signal
    en: Signal


class SimMemories(MemoryFactory):
    """The simulators' memory factory (module docstring). `mems` records every memory made:
    {verilog name: {"width", "depth"}} (depth as the files hold it)."""

    def __init__(self):
        self.mems: dict[str, dict] = {}
        self._modules: set[tuple[str, int, int]] = set()

    def __call__(self, m: Module, spec: MemorySpec) -> MemoryPorts:
        name = verilog_name(spec)
        if name in self.mems:
            raise ValueError(f"memory {spec.name} made twice")
        depth = max(2, spec.depth)
        abits = max(1, (depth - 1).bit_length())
        kind = "t" if spec.kind == "table" else "r"
        nr, nw = spec.read_ports, (0 if spec.kind == "table" else spec.write_ports)
        self._modules.add((kind, nr, nw))
        self.mems[name] = {"width": spec.width, "depth": depth}
        ports: dict = {"i_clk": ClockSignal()}
        read, write = [], []
        for j in range(nr):
            rp = _Read(addr=Signal(abits, name=f"{name}_r{j}_addr"),
                       data=Signal(spec.width, name=f"{name}_r{j}_data"),
                       en=Signal(init=1, name=f"{name}_r{j}_en"))
            ports[f"i_r{j}_addr"] = rp.addr
            ports[f"o_r{j}_data"] = rp.data
            if kind == "r":
                ports[f"i_r{j}_en"] = rp.en
            read.append(rp)
        for j in range(nw):
            wp = _Write(addr=Signal(abits, name=f"{name}_w{j}_addr"),
                        data=Signal(spec.width, name=f"{name}_w{j}_data"),
                        en=Signal(name=f"{name}_w{j}_en"))
            ports.update({f"i_w{j}_addr": wp.addr, f"i_w{j}_data": wp.data,
                          f"i_w{j}_en": wp.en})
            write.append(wp)
        if kind == "t":
            del ports["i_clk"]
        m.submodules[name] = Instance(
            f"simmem_{kind}{nr}" + (f"w{nw}" if kind == "r" else ""),
            p_WIDTH=spec.width, p_DEPTH=depth, p_ABITS=abits, p_NAME=name, **ports)
        return MemoryPorts(read=read, write=write)

    def verilog_modules(self) -> str:
        """The Verilog of every memory module this factory has instantiated."""
        return "".join(_module(k, r, w) for k, r, w in sorted(self._modules))


def _module(kind: str, nr: int, nw: int) -> str:
    name = f"simmem_{kind}{nr}" + (f"w{nw}" if kind == "r" else "")
    ports = [] if kind == "t" else ["input wire clk"]
    body = []
    for j in range(nr):
        ports += [f"input wire [ABITS-1:0] r{j}_addr", f"output {'wire' if kind == 't' else 'reg'}"
                  f" [WIDTH-1:0] r{j}_data"]
        if kind == "t":
            body.append(f"  assign r{j}_data = mem[r{j}_addr];\n")
        else:
            ports.append(f"input wire r{j}_en")
            # non-blocking: a read of the address written at the same edge gets the old word
            body.append(f"  always @(posedge clk) if (r{j}_en) r{j}_data <= mem[r{j}_addr];\n")
    for j in range(nw):
        ports += [f"input wire [ABITS-1:0] w{j}_addr", f"input wire [WIDTH-1:0] w{j}_data",
                  f"input wire w{j}_en"]
        body.append(f"  always @(posedge clk) if (w{j}_en) mem[w{j}_addr] <= w{j}_data;\n")
    return (f"module {name} #(parameter int WIDTH = 1, parameter int DEPTH = 2, "
            f"parameter int ABITS = 1, parameter NAME = \"mem\") (\n    "
            + ",\n    ".join(ports) + ");\n"
            "  reg [WIDTH-1:0] mem [0:DEPTH-1];\n"
            "  initial begin : load\n"
            "    string d, f, n;\n"
            "    if (!$value$plusargs(\"mems=%s\", d)) d = \".\";\n"
            "    n = NAME;\n"
            # a memory of a shared PE module (`share_pe_modules`): "pe*_x" is pe<k>_x, k from
            # the PE instance ".pe<k>." in this instance's hierarchical name
            "    if (n.len() > 3 && n.substr(0, 2) == \"pe*\")\n"
            "      n = $sformatf(\"pe%0d%0s\", pe_number($sformatf(\"%m\")), "
            "n.substr(3, n.len() - 1));\n"
            # $sformatf, not a concatenation: Icarus 11 cannot concatenate a string variable
            "    f = $sformatf(\"%0s/%0s.hex\", d, n);\n"
            "    $readmemh(f, mem, 0, DEPTH - 1);\n"
            + "".join(f"    r{j}_data = '0;\n" for j in range(nr) if kind == "r")
            + "  end\n"
            + _PE_NUMBER
            + "".join(body) + "endmodule\n")


# the number k of the last ".pe<k>." in a hierarchical name (-1: none)
_PE_NUMBER = """  function automatic int pe_number(string path);
    int k = -1;
    for (int i = 0; i + 4 < path.len(); i++)
      if (path.substr(i, i + 2) == ".pe" && path[i + 3] >= "0" && path[i + 3] <= "9") begin
        int v = 0, j = i + 3;
        while (j < path.len() && path[j] >= "0" && path[j] <= "9") begin
          v = v * 10 + (path[j] - "0");
          j++;
        end
        if (j < path.len() && path[j] == ".") k = v;
      end
    return k;
  endfunction
"""

# ---- one PE module for all PEs ----------------------------------------------------------------

_MODULE = re.compile(r"^module (\S+) \(.*?^endmodule\n", re.M | re.S)
_DUMP = re.compile(r"dump_module\$\d+")  # the backend's per-module dummy register


def share_pe_modules(text: str, top: str = "engine") -> str:
    """The Verilog `text` with its PEs as one module instantiated once per PE.

    Amaranth writes every PE as a module of its own (`\\engine.pe0` .. `\\engine.pe63` and
    their submodules), identical but for the PE's number in names; a C++ simulator compiles
    each, which at 64 PEs is most of a Verilator build. When every PE's modules equal PE 0's
    with the numbers renamed, every PE instantiates PE 0's modules (marked not to be inlined,
    which Verilator would otherwise do), with PE 0's port names. The memories inside load
    `pe<k>_<name>.hex` all the same: their NAME is "pe*_<name>", the * the number of their PE
    instance (`pe<k>`) in their hierarchical name (`%m`; a parameter would make Verilator
    compile a module per value). Otherwise `text` is returned unchanged."""
    blocks = {m.group(1): m.group(0) for m in _MODULE.finditer(text)}
    fam_re = re.compile(rf"^\\{re.escape(top)}\.pe(\d+)(?:\.|$)")
    fams: dict[int, list[str]] = {}
    for name in blocks:
        mt = fam_re.match(name)
        if mt:
            fams.setdefault(int(mt.group(1)), []).append(name)
    if len(fams) < 2 or sorted(fams) != list(range(len(fams))):
        return text

    def canon(k: int) -> str:
        pat = re.compile(rf"pe{k}(?![0-9])")
        names = sorted(fams[k], key=lambda n: pat.sub("pe0", n))
        return "".join(_DUMP.sub("dump_module$0", pat.sub("pe0", blocks[n])) for n in names)

    first = canon(0)
    if any(canon(k) != first for k in fams):
        return text
    head = f"\\{top}.pe0"
    for name in fams[0]:
        if name != head and '.NAME("' in blocks[name]:
            return text  # memories below the PE's own module: not handled
    shared = blocks[head].replace(");\n", ");\n  /*verilator no_inline_module*/\n", 1)
    shared = shared.replace('.NAME("pe0_', '.NAME("pe*_')
    drop = {name for k in fams if k for name in fams[k]}
    out = _MODULE.sub(lambda mt: "" if mt.group(1) in drop else
                      shared if mt.group(1) == head else mt.group(0), text)
    # each PE's instance in the parent: PE 0's module with this PE's number, PE 0's port names
    inst = re.compile(rf"^  \\{re.escape(top)}\.pe(\d+)  pe(\d+) \(\n(.*?)\n  \);\n",
                      re.M | re.S)
    seen = set()

    def one(mt):
        k = int(mt.group(1))
        if mt.group(2) != mt.group(1) or k not in fams:
            return mt.group(0)
        seen.add(k)
        ports = re.sub(rf"^(    \.)pe{k}_", r"\1pe0_", mt.group(3), flags=re.M)
        return f"  {head}  pe{k} (\n{ports}\n  );\n"

    out = inst.sub(one, out)
    return out if seen == set(fams) else text
