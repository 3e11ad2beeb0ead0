"""Progress on stderr that reaches a log file as well as a terminal (docs/your-network.md).

Two kinds, both on stderr and never on stdout (so outputs and tables stay clean):

* `step(what)`: a step of unknown length (placing rows, generating Verilog, a simulator build).
  Nothing for a step that ends within `after` seconds (DEEPCOMP_PROGRESS_AFTER, default 3);
  a longer one gets a line when it passes that mark, one every EVERY_S seconds while it runs,
  and one with its time when it ends.
* `bar(total, desc)`: a tqdm bar. On a terminal the usual redrawn bar; anywhere else (a log,
  a pipe) tqdm would write carriage returns, so its updates become whole lines instead: none
  for a bar done within `after` seconds (tqdm's delay), then one at most every LOG_EVERY_S
  seconds and one with the last state when it closes.

Set DEEPCOMP_PROGRESS_AFTER=0 to see every step, or a large number for silence.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

AFTER_S = 3.0  # a step quiet for longer than this gets a line
EVERY_S = 30.0  # then one line every this many seconds
LOG_EVERY_S = 30.0  # a bar writing to a log: one line at most this often
ENV = "DEEPCOMP_PROGRESS_AFTER"


def after_s() -> float:
    """Seconds a step may run before it is announced ($DEEPCOMP_PROGRESS_AFTER, else 3)."""
    text = os.environ.get(ENV, "")
    try:
        v = float(text) if text else AFTER_S
    except ValueError:
        return AFTER_S
    return v if v >= 0 else AFTER_S


def _say(line: str, file) -> None:
    try:
        print(line, file=file, flush=True)
    except (OSError, ValueError):  # a closed or broken stderr must not stop the work
        pass


@contextmanager
def step(what: str, *, file=None, after: float | None = None, every: float = EVERY_S):
    """Run the body as a step named `what` (e.g. "placing rows over 8 PEs"); see the module."""
    out = file if file is not None else sys.stderr
    wait = after_s() if after is None else after
    t0 = time.monotonic()
    stop = threading.Event()
    shown = threading.Event()

    def beat():
        if stop.wait(wait):
            return
        shown.set()
        _say(f"{what} ...", out)
        while not stop.wait(every):
            _say(f"{what}: {time.monotonic() - t0:.0f} s so far", out)

    t = threading.Thread(target=beat, name="progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        if shown.is_set():
            _say(f"{what}: done in {time.monotonic() - t0:.1f} s", out)


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines, at most one
    every `every` seconds (the first and a forced one, the bar's last, always)."""

    def __init__(self, f, every: float):
        self.f = f
        self.every = every
        self.last = None
        self.force = False

    def write(self, s: str) -> None:
        text = s.replace("\r", "").strip()
        if not text:
            return
        now = time.monotonic()
        if self.force or self.last is None or now - self.last >= self.every:
            _say(text, self.f)
            self.last = now
            self.force = False

    def flush(self) -> None:
        try:
            self.f.flush()
        except (OSError, ValueError):
            pass


def bar(total=None, desc: str = "", unit: str = "it", *, enabled: bool = True,
        leave: bool = False, file=None):
    """A tqdm bar on stderr (see the module): redrawn on a terminal; elsewhere nothing for a
    bar done within `after_s()` seconds, then whole lines, at most one every LOG_EVERY_S
    seconds, and the last state when it closes."""
    from tqdm import tqdm

    out = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        return tqdm(total=total, desc=desc, unit=unit, file=out, leave=leave,
                    dynamic_ncols=True)
    lines = _Lines(out, LOG_EVERY_S)

    class _LogBar(tqdm):
        def close(self):
            lines.force = True  # the last state, whatever the interval
            super().close()

    return _LogBar(total=total, desc=desc, unit=unit, file=lines, leave=True, ascii=True,
                   ncols=80, delay=after_s(), mininterval=1.0)
