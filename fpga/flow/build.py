"""Bitstreams: the board top through its family's tools (yosys -> nextpnr -> the packer, YoWASP
tools from PyPI).

`build(...)` elaborates `BoardTop` for a board, runs the platform's Amaranth flow in
build/<board>/ with the family's synthesis and place-and-route options (iCE40: `synth_ice40
-dsp -spram`, `nextpnr-ice40 --report`), and writes build/<board>/report.json (docs/formats.md
section 5) from nextpnr's own report as the family reads it (`parse_report`): utilisation of
logic cells, DSPs, block RAMs and SPRAM, the clock the design runs at (the PLL output) and the
fmax nextpnr found for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from compress.atomic import write_bytes_atomic
from compress.progress import step
from images import engine_of
from images.eie import issue_width as _issue_width
from images.lockstep import layer1_under_drain
from images.params import EngineParams

from ..boards import BOARDS, DEFAULT_BOARD, engine_params, get_board
from ..gateware.top import BoardTop
from ..gateware.uart import MIN_DIVISOR, baud_divisor

# The board's PLL clock when `fpga build` is not told otherwise. With the front end's read
# address from flip-flops (hw/frontend.py), the pointer stage's enables without the column-empty
# compare and PRELOAD's start test in a flip-flop (hw/lockstep.py), the 8-PE lockstep board
# meets 33 MHz at seeds 1, 2 and 3 (33.88 / 34.06 / 33.59 MHz, NEXTPNR_OPTS); 36 MHz misses by
# 2.3-2.4 ns (docs/fpga.md section 0). 3 Mbaud is an exact divisor at 33 MHz (11). `fpga run --sim`
# reports throughput at this clock.
DEFAULT_CLOCK_MHZ = 33.0
# nextpnr's fmax for that board at DEFAULT_CLOCK_MHZ, seeds 1-3 (the comment above): what
# `fpga build --help` quotes.
DEFAULT_CLOCK_FMAX_MHZ = (33.59, 34.06)


def default_clock_mhz(board: str = DEFAULT_BOARD) -> float:
    """The PLL clock `fpga build` targets on `board` when not told (its record's, else
    DEFAULT_CLOCK_MHZ)."""
    return get_board(board).clock_mhz or DEFAULT_CLOCK_MHZ


def default_clock_for(board: str, engine: str, qnet) -> float:
    """`default_clock_mhz`, except for a network with conv layers on an engine for which the
    board's family sets its own (iCE40: `CONV_CLOCK_MHZ`, the lockstep engine's one-map layout
    of a CNN, which routes slower than the MLP board)."""
    if qnet is not None and any(getattr(ly, "is_conv", False) for ly in qnet.layers):
        mhz = getattr(get_board(board).fam, "CONV_CLOCK_MHZ", {}).get(engine)
        if mhz:
            return mhz
    return default_clock_mhz(board)


def pll_range_mhz(board: str = DEFAULT_BOARD) -> tuple[float, float]:
    """The lowest and highest clocks the board's PLL makes from its clock pin (MHz)."""
    b = get_board(board)
    lo, hi = b.fam.pll_range(b.clock_hz)
    return lo / 1e6, hi / 1e6


def clock_help() -> str:
    """`--clock-mhz`'s help, from the constants and the PLL model (no figure typed twice)."""
    lo, hi = pll_range_mhz()
    f0, f1 = DEFAULT_CLOCK_FMAX_MHZ
    return (f"PLL clock target, {lo:g}..{hi:g} MHz (default {DEFAULT_CLOCK_MHZ:g}: the 8-PE "
            f"lockstep board routes at {f0:g}-{f1:g} MHz, so one run meets it; a miss is "
            f"rebuilt once 3%% under the fmax found, at a clock where the baud divisor is exact "
            f"if one is there, else within 2%%; other boards: their own default, "
            + ", ".join(f"{b.name} {b.clock_mhz:g}" for b in BOARDS.values() if b.clock_mhz)
            + "; a network with conv layers on the icebreaker's lockstep engine "
            + f"{ice40_conv_clock():g})")


def ice40_conv_clock() -> float:
    from ..boards import ice40

    return ice40.CONV_CLOCK_MHZ["lockstep"]


def board_platform(board: str):
    """A new platform object for `board` (InputError for a board there is no record of)."""
    return get_board(board).make_platform()


def _baud_ok(clock_hz: float, baud: int) -> bool:
    try:
        baud_divisor(clock_hz, baud)
    except ValueError:
        return False
    return True


def exact_baud_clock(limit_hz: float, baud: int, board: str = DEFAULT_BOARD):
    """The fastest PLL setting at or below `limit_hz` that is a whole number of bit times
    (divisor >= 8, no baud error at all), or None: e.g. 27, 30, 33, 36 MHz for 3 Mbaud."""
    b = get_board(board)
    lowest = b.fam.pll_range(b.clock_hz)[0]
    for div in range(int(limit_hz // baud), MIN_DIVISOR - 1, -1):
        f = div * baud
        if f < lowest:  # the PLL's lowest output
            return None
        p = b.fam.pll_config(b.clock_hz, f)
        if abs(p.fout - f) < 1.0:
            return p
    return None


def retry_clock(fmax_hz: float, baud: int, board: str = DEFAULT_BOARD):
    """The PLL setting a missed build is rebuilt at, or None (nothing at or above the PLL's
    lowest output).

    3 % under the fmax found (nextpnr's fmax moves run to run), preferring a clock at which
    the baud rate is an exact divisor; else the fastest PLL output there whose divisor is
    within the baud rule (fpga.uart.baud_divisor)."""
    b = get_board(board)
    lowest = b.fam.pll_range(b.clock_hz)[0]
    limit = 0.97 * fmax_hz
    p = exact_baud_clock(limit, baud, board)
    if p is not None:
        return p
    lower = limit  # PLL steps are 0.1-1 MHz apart here
    while lower >= lowest:
        p = b.fam.pll_config(b.clock_hz, lower)
        if p.fout <= fmax_hz and p.fout >= lowest and _baud_ok(p.fout, baud):
            return p
        lower -= 0.25e6
    return None


# A missed build whose fmax is at least this fraction of the clock is placed once more at the
# next seed before the clock is lowered (retry_clock).
SEED_RETRY = 0.95
# Attempts stopped by the time budget that are placed again at the next seed before the build
# gives up.
MAX_TIMEOUTS = 2


class BuildError(RuntimeError):
    """A tool failed; the message carries the lines of its log that say why."""


class ToolTimeout(BuildError):
    """The tools ran past the build's time budget (and were stopped)."""

    def __init__(self, seconds: float):
        super().__init__(f"the tools did not finish within {seconds:.0f} s")
        self.seconds = seconds


def time_budget_s(board: str = DEFAULT_BOARD) -> float | None:
    """The wall-clock seconds one place-and-route attempt may take on `board` before it is
    stopped and the next seed tried (the family's TOOL_BUDGET_S; None: no limit). nextpnr's
    router can loop for over half an hour on a placement it cannot route at the clock asked
    (docs/fpga.md section 0)."""
    return getattr(get_board(board).fam, "TOOL_BUDGET_S", None)


def _run_tools(cmd: list[str], *, cwd: Path, env: dict, budget: float | None):
    """Run `cmd` in its own process group; (return code, stderr). Past `budget` seconds the
    whole group (the shell, yosys, nextpnr) is killed and ToolTimeout raised; so is it when
    the caller is interrupted."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _out, err = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise ToolTimeout(time.monotonic() - t0) from None
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, err


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _why(log: Path) -> str:
    if not log.exists():
        return "(no log)"
    lines = log.read_text(errors="replace").splitlines()
    keep = [ln for ln in lines if "ERROR" in ln or "Error" in ln or "uses" in ln]
    return "\n".join(keep[-8:]) or "\n".join(lines[-8:])


class _SynthAgain(Exception):
    """yosys stopped on a bug its board family knows a way round: `synth`, the platform's
    overrides for that synthesis, after `seconds`."""

    def __init__(self, synth: dict, seconds: float):
        super().__init__("synthesis again")
        self.synth, self.seconds = synth, seconds


def _flow(platform, top, out: Path, *, seed: int, name: str = "top",
          budget: float | None = None, synth: dict | None = None) -> tuple[dict, float]:
    """One run of the board family's tools in `out` (iCE40: yosys -> nextpnr -> icepack; ECP5:
    yosys -> nextpnr-ecp5 -> ecppack), stopped after `budget` seconds (ToolTimeout);
    (nextpnr report, seconds). `synth`: the platform's synthesis overrides (default the
    family's `SYNTH_OPTS`); _SynthAgain when yosys stopped where the family's
    `synth_fallback` knows other ones."""
    fam = top.board.fam
    env = {**os.environ, **fam.tool_env()}
    bitstream = f"{name}.{fam.BITSTREAM}"
    for stale in (bitstream, f"{name}.report.json", "report.json", f"{name}.rpt"):
        (out / stale).unlink(missing_ok=True)  # nothing old may look like this run's output
    t0 = time.monotonic()
    old_env = dict(os.environ)
    os.environ.update(env)
    try:
        plan = platform.prepare(top, name=name, **(synth or {"synth_opts": fam.SYNTH_OPTS}),
                                nextpnr_opts=fam.nextpnr_opts(seed, f"{name}.report.json"))
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    plan.extract(out)
    try:
        code, err = _run_tools(["sh", f"build_{name}.sh"], cwd=out, env=env, budget=budget)
    except BaseException:
        (out / bitstream).unlink(missing_ok=True)
        raise
    rpt = out / f"{name}.rpt"
    fallback = getattr(fam, "synth_fallback", None)
    if code != 0 and synth is None and fallback is not None and rpt.exists():
        again = fallback(name, rpt.read_text(errors="replace"))
        if again is not None:
            raise _SynthAgain(again, time.monotonic() - t0)
    secs = time.monotonic() - t0
    if code != 0:
        (out / bitstream).unlink(missing_ok=True)
        why = _why(out / f"{name}.tim") if (out / f"{name}.json").exists() else _why(
            out / f"{name}.rpt")
        raise BuildError(f"the build failed after {secs:.0f} s:\n{why}\n"
                         f"{err.strip()[-2000:]}")
    return json.loads((out / f"{name}.report.json").read_text()), secs


def _easier(img, params: EngineParams) -> EngineParams | None:
    """The engine's parameters a step easier to place and route, or None: the lockstep engine
    without layer 1 under layer 0's drain where it has it (a few % more cycles, the engine
    before that overlap; `images.lockstep.layer1_under_drain`)."""
    if getattr(params, "overlap", False) and layer1_under_drain(img, params.drain_share):
        return replace(params, overlap=False)
    return None


def build(img, *, board: str = DEFAULT_BOARD, clock_mhz: float | None = None,
          baud: int = 3_000_000, build_root: str | Path = "build", seed: int = 1,
          model: dict | None = None, spram: bool = True, retry: bool = True,
          params: EngineParams | None = None, log=print,
          time_budget: float | None = -1.0) -> dict:
    """Build the bitstream; returns the report dict (also written to build/<board>/report.json).

    params: the engine's parameters (default: the board's, `fpga.boards.engine_params`). With
    `retry`, a build that misses the clock is first rebuilt a design step easier to place when
    there is one (`_easier`: the lockstep engine without its overlap), then, when it falls short
    by less than 5 % (SEED_RETRY), placed again at the next seed, and one that still misses is
    built once more, at the first seed, with the PLL at the fastest setting at or below the
    last fmax found, so the bitstream meets timing when it can. time_budget: seconds an
    attempt's tools may run (default -1: the board's, `time_budget_s`; None: no limit); one
    that runs past it is stopped and, with `retry`, rebuilt the easier design or placed again
    at the next seed (at most MAX_TIMEOUTS times), else BuildError. report.json's `attempts`
    lists every attempt (with `overlap` for the lockstep engine, `timed_out` when stopped).
    """
    budget = time_budget_s(board) if time_budget == -1.0 else time_budget
    rec = engine_of(img)
    params = engine_params(img, board) if params is None else params
    what = f"{img.pes} PEs" + (f" (queue depth {params.queue_depth})"
                               if params.queue_depth != rec.params().queue_depth else "")
    platform = board_platform(board)
    out = Path(build_root) / board
    out.mkdir(parents=True, exist_ok=True)
    target = (clock_mhz or default_clock_mhz(board)) * 1e6
    attempts = []
    total = 0.0
    lowered = False
    first_seed, seed_moved = seed, False
    synth = None  # the family's synthesis; its fallback once yosys has stopped on a known bug
    while True:
        platform = board_platform(board)  # a platform object takes one design only
        top = BoardTop(img, clock_hz=target, baud=baud, board=board, spram=spram, params=params)
        log(f"building {board}: {rec.name} engine, {what}"
            f"{'' if getattr(params, 'overlap', True) else ' without the overlap'}, PLL "
            f"{top.clock_hz / 1e6:g} MHz, {baud} baud, in {out}/ ...")
        design = {"overlap": params.overlap} if "overlap" in params.names() else {}
        try:
            with step(f"{top.board.fam.TOOLS} for {board}"):
                npr, secs = _flow(platform, top, out, seed=seed, budget=budget, synth=synth)
        except _SynthAgain as e:
            total += e.seconds
            synth = e.synth
            log("yosys stopped in its abc9 LUT mapping (a yosys bug on this netlist): "
                "synthesising again with classic abc")
            continue
        except ToolTimeout as e:
            total += e.seconds
            attempts.append({"clock_mhz": round(top.clock_hz / 1e6, 3), "fmax_mhz": None,
                             "seed": seed, **design, "seconds": round(e.seconds, 1),
                             "timed_out": True})
            if not retry or sum(a.get("timed_out", False) for a in attempts) > MAX_TIMEOUTS:
                tried = ", ".join(str(a["seed"]) for a in attempts if a.get("timed_out"))
                raise BuildError(f"the tools did not finish within the time budget of "
                                 f"{budget:.0f} s (seed {tried}); --time-budget gives them "
                                 f"longer") from None
            easier = _easier(img, params)
            if easier is not None:
                params = easier
                log(f"stopped after {e.seconds:.0f} s (the time budget): rebuilding without "
                    f"layer 1 under layer 0's drain")
            else:
                seed += 1
                log(f"stopped after {e.seconds:.0f} s (the time budget): placing again with "
                    f"seed {seed}")
            continue
        total += secs
        fig = top.board.fam.parse_report(npr, clock_hz=top.clock_hz)
        met = fig["fmax_mhz"] is not None and fig["fmax_mhz"] >= fig["clock_mhz"]
        attempts.append({"clock_mhz": fig["clock_mhz"], "fmax_mhz": fig["fmax_mhz"],
                         "seed": seed, **design, "seconds": round(secs, 1)})
        if met or not retry or lowered or not fig["fmax_mhz"]:
            break
        easier = _easier(img, params)
        if easier is not None:
            # the design a step easier to place before any other seed or clock (the lockstep
            # board's unstructured LeNet-300-100: 32.58 MHz at seed 1 with it, 33.44 without)
            params = easier
            log(f"fmax {fig['fmax_mhz']} MHz < {fig['clock_mhz']:g} MHz: rebuilding without "
                f"layer 1 under layer 0's drain")
            continue
        if not seed_moved and fig["fmax_mhz"] >= SEED_RETRY * fig["clock_mhz"]:
            # within placement noise (a nearly full chip's fmax moves by a few % from seed to
            # seed): the same clock once more at the next seed before giving up any clock
            seed, seed_moved = seed + 1, True
            log(f"fmax {fig['fmax_mhz']} MHz < {fig['clock_mhz']:g} MHz: placing again with "
                f"seed {seed}")
            continue
        p = retry_clock(fig["fmax_mhz"] * 1e6, baud, board)
        if p is None:
            break
        log(f"fmax {fig['fmax_mhz']} MHz < {fig['clock_mhz']:g} MHz: rebuilding at "
            f"{p.fout / 1e6:g} MHz")
        target, seed, lowered = p.fout, first_seed, True
    report = {
        "board": board,
        "device": platform.device,
        "package": platform.package,
        "engine": rec.name,
        "pes": img.pes,
        "queue_depth": params.queue_depth,
        "params": params.as_dict(),
        # the EIE engine's front end: columns sent a cycle (the width the engine resolved)
        **({"issue_width": _issue_width(img, params)} if hasattr(params, "issue_width") else {}),
        # the network: its path as named (or the default's, relative to the repository) and
        # the sha256 of its bytes (compress.shipped.model_record)
        "model": (model or {}).get("model", ""),
        "model_sha256": (model or {}).get("model_sha256", ""),
        "baud": baud,
        "spram_roms": [lp.spec.name for lp in top.core.memories.loads] if spram else [],
        # a conv network's activation RAMs with one bank in SPRAM ({name: bank}) and the small
        # ROMs put in EBR instead of logic (fpga/boards/ice40.py, load_plan)
        # ("all": the whole RAM, the lockstep engine's one map of a CNN)
        "spram_maps": ({k: v if v >= 0 else "all"
                        for k, v in getattr(top.core.memories, "acts", {}).items()}
                       if spram else {}),
        "ebr_roms": sorted(getattr(top.core.memories, "blocks", ())) if spram else [],
        "layers": [getattr(rl, "kind", "fc") for rl in img.layers],
        "build_seconds": round(total, 1),
        "attempts": attempts,
        "bitstream": f"top.{get_board(board).fam.BITSTREAM}",
        "timing_met": met,
        **fig,
    }
    write_bytes_atomic(out / "report.json", (json.dumps(report, indent=1) + "\n").encode())
    return report


def table(report: dict) -> str:
    """The report's figures as `fpga build` prints them (the board's budget beside them)."""
    b = get_board(report["board"])
    rows = [
        ("logic cells", f"{report['lc_used']} / {report['lc_total']}"),
        *((label, f"{report[key]} / {getattr(b.budget, total)}")
          for label, key, total in b.fam.TABLE),
        ("clock", f"{report['clock_mhz']:g} MHz"),
        ("fmax (nextpnr)", f"{report['fmax_mhz']} MHz"
         + ("" if report["timing_met"] else "  TIMING NOT MET")),
        ("engine, PEs", f"{report.get('engine', 'eie')}, {report['pes']}"),
        ("build time", f"{report['build_seconds']} s"),
    ]
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)
