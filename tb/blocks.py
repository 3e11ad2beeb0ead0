"""cocotb benches of single engine blocks: harnesses, build and run (the tests are in
tests/test_tb_blocks.py, the coroutines in tb/cocotb_blocks.py).

A block is named by `block` and built from `params` (JSON-able): `HARNESSES[block](params)`
returns the Amaranth top, which is the block itself where its ports suffice (queue, PE) or the
block with the memories it reads in the engine (front end, pointer read, codebook decoder,
MAC), those memories made by `hw.memory.MemoryFactory` as in the PE but writable from the
bench, so one build serves many random pointer arrays, codebooks and accumulator contents.

Builds are cached like the engine's (`tb.sim`): build/tb-blocks/<key>/ with key = sha256 of
the block, its parameters and the source of the blocks and of this file, made under a file
lock (pytest-xdist workers): top.v from `verilog.convert(top, name="top", emit_src=False)` with
`tb.sim.icarus_fixup`, and layouts.json (the fields of its struct ports). Each run gets its
own directory (runs/<n>/) holding params.json, data.json (stimuli and expected values computed
by the caller, e.g. from the golden model) and the bench's summary.json (what it checked); it
is removed after a good run and kept after a failed one. Waveforms only with WAVES=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amaranth.hdl import Module, Mux, Shape, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.data import StructLayout
from amaranth.lib.wiring import In, Out

from compress.atomic import check_build_dir, file_lock
from hw.blocks import post_process
from hw.eie.codebook import CodebookDecoder
from hw.eie.mac import Mac, hit_layout
from hw.eie.pe import PE, PEImage
from hw.eie.pointer import PointerRead, column_layout
from hw.frontend import FrontEnd, bcast_layout
from hw.memory import MemoryFactory, MemorySpec
from hw.queue import ActQueue
from tb.sim import REPO, icarus_fixup, waves_enabled

TOPLEVEL = "top"
TEST_MODULE = "tb.cocotb_blocks"


def build_root() -> Path:
    return Path(os.environ.get("TB_BLOCKS_BUILD_DIR") or REPO / "build" / "tb-blocks")


def _ram(m: Module, name: str, width: int, depth: int):
    """A memory as the engine makes it (1-cycle synchronous read), plus a bench write port."""
    ports = MemoryFactory()(m, MemorySpec(name, "ram", width, depth, (), read_ports=1,
                                          write_ports=1))
    return ports.read[0], ports.write[0]


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


# ---- harnesses -------------------------------------------------------------------------------

class FrontEndHarness(wiring.Component):
    """The front end reading `pes` activation banks of `words` words (the PEs' buffers)."""

    def __init__(self, *, pes: int, words: int, sparse: bool):
        self.pes = pes
        self.words = words
        self.col_bits = _bits(pes * words)
        self.group_bits = _bits(words)
        self.fe = FrontEnd(pes=pes, col_bits=self.col_bits, group_bits=self.group_bits,
                           sparse=sparse)
        super().__init__({
            "start": In(1),
            "in_features": In(self.col_bits + 1),
            "groups": In(self.group_bits + 1),
            "avail": In(self.group_bits + 2),
            "o": Out(stream.Signature(bcast_layout(self.col_bits + 1))),
            "busy": Out(1),
            "done": Out(1),
            # bench write port: word wr_addr of bank wr_bank (column wr_addr * pes + wr_bank)
            "wr_en": In(1),
            "wr_bank": In(range(pes)),
            "wr_addr": In(range(words)),
            "wr_data": In(signed(16)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fe = fe = self.fe
        for k in range(self.pes):
            rd, wr = _ram(m, f"act{k}", 16, self.words)
            m.d.comb += [rd.addr.eq(fe.rd_addr), fe.rd_data[k].eq(rd.data),
                         wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data),
                         wr.en.eq(self.wr_en & (self.wr_bank == k))]
        wiring.connect(m, fe.o, wiring.flipped(self.o))
        m.d.comb += [fe.start.eq(self.start), fe.in_features.eq(self.in_features),
                     fe.groups.eq(self.groups), fe.avail.eq(self.avail),
                     self.busy.eq(fe.busy), self.done.eq(fe.done)]
        return m


class PointerHarness(wiring.Component):
    """Pointer read with its even and odd banks of `words` words each."""

    def __init__(self, *, col_bits: int, ptr_bits: int, words: int):
        self.words = words
        ab = _bits(words - 1)
        self.pr = PointerRead(col_bits=col_bits, base_bits=_bits(2 * words), ptr_bits=ptr_bits,
                              even_addr_bits=ab, odd_addr_bits=ab)
        self.ptr_bits = ptr_bits
        super().__init__({
            "base": In(_bits(2 * words)),
            "i": In(stream.Signature(bcast_layout(col_bits))),
            "credit": In(1),
            # `o` of the block (always ready: no ready port)
            "o_valid": Out(1),
            "o_payload": Out(column_layout(ptr_bits)),
            "busy": Out(1),
            # bench write port: ptr[2 * wr_addr + wr_odd]
            "wr_en": In(1),
            "wr_odd": In(1),
            "wr_addr": In(range(words)),
            "wr_data": In(ptr_bits),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.pr = pr = self.pr
        for odd, port in ((0, pr.even), (1, pr.odd)):
            rd, wr = _ram(m, "ptr_odd" if odd else "ptr_even", self.ptr_bits, self.words)
            m.d.comb += [rd.addr.eq(port.addr), port.data.eq(rd.data),
                         wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data),
                         wr.en.eq(self.wr_en & (self.wr_odd == odd))]
        wiring.connect(m, wiring.flipped(self.i), pr.i)
        m.d.comb += [pr.base.eq(self.base), pr.credit.eq(self.credit), self.busy.eq(pr.busy),
                     self.o_valid.eq(pr.o.valid), self.o_payload.eq(pr.o.payload)]
        return m


class CodebookHarness(wiring.Component):
    """Codebook decoder with the codebook memory of `layers` layers."""

    def __init__(self, *, index_bits: int, layers: int):
        self.depth = layers << index_bits
        self.dec = CodebookDecoder(index_bits=index_bits, layers=layers,
                                   addr_bits=_bits(self.depth - 1))
        super().__init__({
            "layer": In(range(max(layers, 2))),
            "v": In(index_bits),
            "weight": Out(signed(16)),
            "wr_en": In(1),
            "wr_addr": In(range(self.depth)),
            "wr_data": In(16),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dec = dec = self.dec
        rd, wr = _ram(m, "codebook", 16, self.depth)
        m.d.comb += [rd.addr.eq(dec.mem.addr), dec.mem.data.eq(rd.data),
                     wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data), wr.en.eq(self.wr_en),
                     dec.layer.eq(self.layer), dec.v.eq(self.v), self.weight.eq(dec.weight)]
        return m


class MacHarness(wiring.Component):
    """The MAC with an accumulator memory of `rows` words; the weight is presented with its
    hit and delayed a cycle here, as the codebook decoder delivers it. The host port reads
    (data a cycle later) and writes the accumulators while the MAC is idle."""

    def __init__(self, *, rows: int, acc_bits: int, sparse: bool):
        self.rows = rows
        row_bits = _bits(rows - 1)
        self.acc_bits = acc_bits
        self.mac = Mac(row_bits=row_bits, acc_bits=acc_bits, sparse=sparse)
        super().__init__({
            # `i` of the MAC (always ready: no ready port)
            "i_valid": In(1),
            "i_payload": In(hit_layout(row_bits)),
            "weight": In(signed(16)),
            "busy": Out(1),
            "acc_we": Out(1),  # the MAC writes an accumulator (counts the hits that got there)
            "host_rd": In(1),
            "host_we": In(1),
            "host_addr": In(row_bits),
            "host_wdata": In(acc_bits),
            "host_rdata": Out(acc_bits),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mac = mac = self.mac
        rd, wr = _ram(m, "acc", self.acc_bits, self.rows)
        w_weight = Signal(signed(16))
        m.d.sync += w_weight.eq(self.weight)
        m.d.comb += [
            mac.i.valid.eq(self.i_valid), mac.i.payload.eq(self.i_payload),
            mac.weight.eq(w_weight),
            rd.addr.eq(Mux(self.host_rd, self.host_addr, mac.acc_rd.addr)),
            mac.acc_rd.data.eq(rd.data), self.host_rdata.eq(rd.data),
            wr.addr.eq(Mux(self.host_we, self.host_addr, mac.acc_wr.addr)),
            wr.data.eq(Mux(self.host_we, self.host_wdata, mac.acc_wr.data)),
            wr.en.eq(self.host_we | mac.acc_wr.en),
            self.acc_we.eq(mac.acc_wr.en),
            self.busy.eq(mac.busy),
        ]
        return m


class OutputStageHarness(wiring.Component):
    """`hw.blocks.post_process` for every shift in `shifts`, without and with ReLU (combinational):
    y{k} and y{k}_relu for shift shifts[k]."""

    def __init__(self, *, acc_bits: int, shifts: list[int]):
        self.acc_bits = acc_bits
        self.shifts = list(shifts)
        ports = {"acc": In(signed(acc_bits))}
        for k in range(len(self.shifts)):
            ports[f"y{k}"] = Out(signed(16))
            ports[f"y{k}_relu"] = Out(signed(16))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for k, s in enumerate(self.shifts):
            m.d.comb += [getattr(self, f"y{k}").eq(post_process(self.acc, s, False)),
                         getattr(self, f"y{k}_relu").eq(post_process(self.acc, s, True))]
        return m


def pe_params(img: PEImage, *, col_bits: int, row_bits: int, queue_depth: int = 8,
              acc_bits: int = 32, sparse: bool = True) -> dict:
    """JSON-able parameters of a PE build (the image itself: its words are part of the key)."""
    return {
        "image": {
            "pe": img.pe, "index_bits": img.index_bits, "rel_bits": img.rel_bits,
            "entries": [int(v) for v in img.entries], "ptr": [int(v) for v in img.ptr],
            "bias": [int(v) for v in img.bias], "codebook": [int(v) for v in img.codebook],
            "ptr_base": [int(v) for v in img.ptr_base], "rows": [int(v) for v in img.rows],
            "bias_base": [int(v) for v in img.bias_base], "shift": [int(v) for v in img.shift],
            "relu": [bool(v) for v in img.relu],
        },
        "col_bits": col_bits, "row_bits": row_bits, "queue_depth": queue_depth,
        "acc_bits": acc_bits, "sparse": sparse,
    }


def _pe(p: dict) -> PE:
    i = p["image"]
    img = PEImage(
        pe=i["pe"], index_bits=i["index_bits"], rel_bits=i["rel_bits"],
        entries=np.array(i["entries"], np.uint32), ptr=np.array(i["ptr"], np.int64),
        bias=np.array(i["bias"], np.int32), codebook=np.array(i["codebook"], np.int16),
        ptr_base=i["ptr_base"], rows=i["rows"], bias_base=i["bias_base"], shift=i["shift"],
        relu=i["relu"])
    return PE(img, col_bits=p["col_bits"], row_bits=p["row_bits"],
              queue_depth=p["queue_depth"], acc_bits=p["acc_bits"], sparse=p["sparse"])


HARNESSES = {
    "queue": lambda p: ActQueue(16, depth=p["depth"]),
    "frontend": lambda p: FrontEndHarness(pes=p["pes"], words=p["words"], sparse=p["sparse"]),
    "pointer": lambda p: PointerHarness(col_bits=p["col_bits"], ptr_bits=p["ptr_bits"],
                                        words=p["words"]),
    "codebook": lambda p: CodebookHarness(index_bits=p["index_bits"], layers=p["layers"]),
    "mac": lambda p: MacHarness(rows=p["rows"], acc_bits=p["acc_bits"], sparse=p["sparse"]),
    "pe": _pe,
    "output": lambda p: OutputStageHarness(acc_bits=p["acc_bits"], shifts=p["shifts"]),
}


# ---- build and run ---------------------------------------------------------------------------

# what a block build is made from (not the engines: a change there rebuilds no block)
_SOURCES = ("hw/blocks.py", "hw/eie/codebook.py", "hw/eie/mac.py", "hw/eie/pe.py",
            "hw/eie/pointer.py", "hw/frontend.py", "hw/memory.py", "hw/queue.py", "tb/blocks.py")


def _source_hash() -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode())
        h.update((REPO / name).read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class BlockBuild:
    block: str
    params: dict
    dir: Path
    waves: bool
    layouts: dict  # Verilog port name -> [[field, offset, width, signed], ...] of struct ports


def port_layouts(top: wiring.Component) -> dict:
    """The field layout of every struct-typed port, so the bench packs and unpacks the words
    without importing Amaranth (which is slow in the simulator's embedded Python)."""
    out = {}
    for path, member in top.signature.members.flatten():
        if member.is_port and isinstance(member.shape, StructLayout):
            out["__".join(path)] = [[name, f.offset, f.width, Shape.cast(f.shape).signed]
                                    for name, f in member.shape]
    return out


def build_block(block: str, params: dict, *, waves: bool | None = None) -> BlockBuild:
    """Generate the block's Verilog and compile it with Icarus (cached by key)."""
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    if block not in HARNESSES:
        raise ValueError(f"no bench for block {block!r}; one of {sorted(HARNESSES)}")
    waves = waves_enabled() if waves is None else waves
    key_src = json.dumps({"block": block, "params": params, "waves": waves,
                          "src": _source_hash()}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    root = build_root()
    check_build_dir(root, "TB_BLOCKS_BUILD_DIR")
    d = root / key
    with file_lock(root / f"{key}.lock"):
        stamp = d / "sim_build" / ".built"
        if not stamp.exists():
            d.mkdir(parents=True, exist_ok=True)
            top = HARNESSES[block](params)
            (d / "layouts.json").write_text(json.dumps(port_layouts(top)))
            text = icarus_fixup(verilog.convert(top, name=TOPLEVEL, emit_src=False))
            tmpv = d / ".top.v.tmp"
            tmpv.write_text(text)
            os.replace(tmpv, d / "top.v")
            get_runner("icarus").build(
                sources=[d / "top.v"], hdl_toplevel=TOPLEVEL, build_dir=d / "sim_build",
                timescale=("1ns", "1ps"), waves=waves, always=True, log_file=d / "build.log")
            stamp.write_text(key + "\n")
    layouts = json.loads((d / "layouts.json").read_text())
    return BlockBuild(block=block, params=params, dir=d, waves=waves, layouts=layouts)


def _failure(run_dir: Path) -> str:
    """The bench's traceback from sim.log (the simulator's own lines left out)."""
    log = run_dir / "sim.log"
    if not log.exists():
        return "(no sim.log)"
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if " gpi " not in ln and not ln.lstrip().startswith("-.--ns")]
    return "\n".join(lines[-40:])


def run_block(b: BlockBuild, *, seed: int, data: dict[str, np.ndarray] | None = None,
              **options) -> dict:
    """Run the block's bench (`<block>_bench` in tb/cocotb_blocks.py); returns its summary.

    `options` (JSON-able) reach the bench beside the build parameters and the port layouts in
    params.json; `data` (integer arrays) as lists in data.json."""
    from cocotb_tools.runner import get_results, get_runner

    runs = b.dir / "runs"
    runs.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    (run_dir / "params.json").write_text(json.dumps(
        {"block": b.block, "params": b.params, "layouts": b.layouts, "seed": seed, **options}))
    (run_dir / "data.json").write_text(json.dumps(
        {k: np.asarray(v).tolist() for k, v in (data or {}).items()}))
    env = {
        "TB_IO": str(run_dir),
        "PYTHONPATH": os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
    }
    results = run_dir / "results.xml"
    try:
        get_runner("icarus").test(
            test_module=TEST_MODULE, hdl_toplevel=TOPLEVEL, hdl_toplevel_lang="verilog",
            build_dir=b.dir / "sim_build", test_dir=run_dir, extra_env=env,
            results_xml=str(results), waves=b.waves, seed=seed,
            test_filter=rf"(^|\.){b.block}_bench$", log_file=run_dir / "sim.log")
        tests, failed = get_results(results)
    except SystemExit:  # the runner exits when a test failed
        tests, failed = 0, 1
    summary = run_dir / "summary.json"
    if tests != 1 or failed or not summary.exists():
        raise AssertionError(f"{b.block} bench failed in {run_dir}:\n{_failure(run_dir)}")
    out = json.loads(summary.read_text())
    if not b.waves:
        shutil.rmtree(run_dir, ignore_errors=True)
    return out

