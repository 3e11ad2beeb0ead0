"""Every Makefile variable a recipe passes on reaches the command as one word, exactly as given:
a path with a space, a '$' and a ';' (item 8: `make sim MODEL="/tmp/a b.npz"` split the path,
`MODEL='x; touch F; false'` ran the touch, a '$' was eaten). Checked on the commands
`make -n` prints, read as bash reads them, and once for real."""

import os
import shlex
import subprocess

import pytest

from .conftest import REPO

NASTY = "/tmp/a b$x;c'd.npz"


def _words(line: str) -> list[str]:
    """A command line as bash splits it into words (';' outside quotes is its own token)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    return list(lex)


def _command(target: str, **variables) -> list[str]:
    argv = ["make", "-n", target] + [f"{k}={v}" for k, v in variables.items()]
    env = {k: v for k, v in os.environ.items() if k not in variables}
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout.replace("\\\n", " ")  # a recipe line continued with a backslash
    lines = [ln for ln in out.splitlines() if " -m " in ln and ln.startswith(".venv")]
    return _words(lines[0 if target in ("models", "compress-full") else -1])


def _after(words, flag):
    return words[words.index(flag) + 1]


@pytest.mark.parametrize("target,variable,flag", [
    ("sim", "MODEL", "--model"), ("sim", "INPUTS", "--inputs"), ("sim", "LABELS", "--labels"),
    ("sim", "COUNT", "--count"), ("sim", "ENGINE", "--engine"), ("sim", "PES", "--pes"),
    ("sim", "SIM", "--sim"),
    ("verify-mnist", "MNIST_DIR", "--data"), ("verify-mnist", "MODEL", "--model"),
    ("verify-mnist", "ENGINE", "--engine"), ("verify-mnist", "PES", "--pes"),
    ("sim-sweep", "MODEL", "--model"), ("sim-sweep", "INPUTS", "--inputs"),
    ("bitstream", "BOARD", "--board"), ("bitstream", "MODEL", "--model"),
    ("bitstream", "PES", "--pes"), ("bitstream", "ENGINE", "--engine"),
    ("bitstream", "BUILD_DIR", "--build-dir"), ("bitstream", "ISSUE_WIDTH", "--issue-width"),
    ("models", "MNIST_DIR", "--data"), ("compress-full", "MNIST_DIR", "--data"),
    ("test", "JOBS", "-n"),
])
def test_variable_reaches_the_command_as_one_word(target, variable, flag):
    words = _command(target, **{variable: NASTY})
    assert _after(words, flag) == NASTY, words
    assert ";" not in words  # nothing of the value became a second command


def test_defaults_unchanged():
    words = _command("sim")
    assert "--model" not in words and _after(words, "--pes") == "8"
    words = _command("verify-mnist", MNIST_DIR="/data/mnist")
    assert _after(words, "--data") == "/data/mnist" and "--one-map" not in words
    assert "--one-map" in _command("verify-mnist", ONE_MAP="1")
    assert "--build-dir" not in _command("bitstream")


def test_an_injected_command_does_not_run(tmp_path):
    flag = tmp_path / "F"
    p = subprocess.run(["make", "sim", f"MODEL=x; touch {flag}; false"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    assert not flag.exists()
    assert f"x; touch {flag}; false: no such file" in p.stderr, p.stderr[-500:]
