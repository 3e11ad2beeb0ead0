"""Errors and the exit-status contract shared by every command line of the project.

Exit status 0 on success, 2 with one line on stderr for a bad invocation or bad input
(`InputError`), 1 with one line for anything else (set the command's debug variable to see the
traceback), 130 when interrupted by SIGINT, 143 by SIGTERM. Both signals raise an exception in
the main thread, so every `finally` and `atomic_path` cleanup runs and no partial output is left.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable


class InputError(ValueError):
    """Bad invocation or bad input: the message names the key, layer or file at fault."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like SIGINT's KeyboardInterrupt so the same cleanup runs."""


def _raise_terminated(signum, frame):
    # A second SIGTERM during cleanup must not interrupt the cleanup itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad invocation as one line (argparse prints usage too)."""

    def error(self, message):
        raise InputError(f"{self.prog}: {message}")


def run_main(body: Callable[[], int | None], *, debug_env: str) -> int:
    """Run a command's body under the exit-status contract; return the exit status.

    SIGTERM is turned into `Terminated` (a KeyboardInterrupt) while the body runs.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(body() or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 143
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
