"""The package layout: setuptools installs it without a warning."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_editable_install_has_no_layout_warning(tmp_path):
    """`pip install -e .` (what make setup runs) builds the editable wheel through
    setuptools' PEP 660 hook: with the packages at the top of the repository declared as such
    (package-dir "" = "."), a plain .pth file serves them, and setuptools no longer warns on
    every install about folders that may shadow the packages."""
    code = ("import setuptools.build_meta as b, sys; "
            f"print(b.build_editable({str(tmp_path)!r}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout + r.stderr
    assert "Please be careful with folders" not in text
    assert "meta path finder" not in text
    assert r.stdout.strip().splitlines()[-1].endswith(".whl")
