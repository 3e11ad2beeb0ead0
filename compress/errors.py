"""Errors and the exit-status contract shared by every command line of the project.

Exit status 0 on success, 2 with one line on stderr for a bad invocation or bad input
(`InputError`), 1 with one line for anything else (set the command's debug variable to see the
traceback), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable


class InputError(ValueError):
    """Bad invocation or bad input: the message names the key, layer or file at fault."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad invocation as one line (argparse prints usage too)."""

    def error(self, message):
        raise InputError(f"{self.prog}: {message}")


def run_main(body: Callable[[], int | None], *, debug_env: str) -> int:
    """Run a command's body under the exit-status contract; return the exit status."""
    try:
        return int(body() or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line unless debugging
        if os.environ.get(debug_env):
            raise
        text = str(e).strip()
        msg = text.splitlines()[0] if text else ""
        print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
