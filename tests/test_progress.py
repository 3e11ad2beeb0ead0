"""Progress on stderr for long steps, in a terminal or a log file (compress.progress)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

from compress import progress

from .conftest import REPO


def test_a_step_is_announced_only_past_its_mark():
    out = io.StringIO()
    with progress.step("placing", file=out, after=10.0):
        pass
    assert out.getvalue() == ""  # a quick step says nothing
    out = io.StringIO()
    with progress.step("placing", file=out, after=0.05, every=0.1):
        time.sleep(0.35)
    lines = out.getvalue().splitlines()
    assert lines[0] == "placing ..." and lines[-1].startswith("placing: done in ")
    assert any(ln.endswith("s so far") for ln in lines[1:-1])  # and while it runs


def test_the_mark_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")
    assert progress.after_s() == 0.0
    for bad in ("x", "-1"):
        monkeypatch.setenv(progress.ENV, bad)
        assert progress.after_s() == progress.AFTER_S


def test_a_bar_in_a_log_writes_whole_lines(monkeypatch):
    """Not a terminal: tqdm's carriage-return redraws become lines: none for a bar done within
    the mark (a quick failure stays one line), else the first, one at most every LOG_EVERY_S
    seconds, and the last state when it closes."""
    def run(n, pause):
        out = io.StringIO()  # isatty() is False, as for a file
        bar = progress.bar(total=n, desc="training", unit="step", file=out)
        for _ in range(n):
            time.sleep(pause)
            bar.update(1)
        bar.close()
        return out.getvalue()

    monkeypatch.setenv(progress.ENV, "10")
    assert run(5, 0.0) == ""  # done within 10 s: nothing
    monkeypatch.setenv(progress.ENV, "0")
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.5)
    text = run(12, 0.15)
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[-1].startswith("training: 100%") and len(lines) >= 2
    assert len(lines) <= 6  # 1.8 s: a line every 0.5 s at most, and the last
    assert progress.bar(total=3, enabled=False).disable


def test_compress_model_progress_reaches_a_log_file(tmp_path):
    """compress_model(progress=True) with stderr a file, not a terminal: the stage lines and
    a line from each training bar are there (tqdm alone writes nothing to a non-terminal)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import warnings\n"
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from tests.test_api import trained_tiny, image_blobs, FAST\n"
        "import compress\n"
        "warnings.simplefilter('ignore')\n"
        "compress.compress_model(trained_tiny(), train=image_blobs(300, 0),\n"
        "    val=image_blobs(100, 1), seed=0, attempts=1, **{**FAST, 'progress': True})\n")
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, str(script)], cwd=REPO, stderr=f,
                           stdout=subprocess.DEVNULL, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                progress.ENV: "0"})
    assert r.returncode == 0
    text = log.read_text()
    assert "\r" not in text
    for want in ("dense: val accuracy", "sensitivity: 100%", "attempt 1 of 1: pruning",
                 "prune 1/2:", "retrain: 100%", "centroids: 100%", "done in "):
        assert want in text, text


def test_fpga_resources_says_what_it_is_doing_when_it_takes_a_while():
    """DEEPCOMP_PROGRESS_AFTER=0: every step is announced, here the placement (stderr)."""
    r = subprocess.run([sys.executable, "-m", "fpga", "resources", "--model",
                        "synthetic:64-32-10"], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**os.environ, progress.ENV: "0"})
    assert r.returncode == 0, r.stderr
    assert "placing the rows of synthetic 64-32-10" in r.stderr
    assert ": done in " in r.stderr and "placing" not in r.stdout
