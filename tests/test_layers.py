"""The house's layers: the import graph (bench/imports.py, from the source) has no arrow from a
stage to a later one and no circle, and no code outside the engine registry compares engine
names."""

from __future__ import annotations

import re

from bench.imports import REPO, report
from images import names

PRODUCT = ("compress", "images", "hw", "tb", "fpga", "bench", "examples")


def test_no_back_arrows_and_no_circles():
    r = report()
    assert r["back_arrows"] == [] and r["circles"] == []
    assert r["modules"] > 50 and r["imports"] > 300  # it read the packages


def test_no_engine_name_comparisons_outside_the_registry():
    """`x == "eie"`, `"lockstep" != y`, `engine in ("eie", ...)`: only images/engines.py asks
    what an engine is by its name."""
    quoted = "|".join(re.escape(n) for n in names())
    pat = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*['"]({quoted})['"]|['"]({quoted})['"]\s*(==|!=)""")
    found = []
    for pkg in PRODUCT:
        for f in sorted((REPO / pkg).rglob("*.py")):
            if f == REPO / "images" / "engines.py":
                continue
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if pat.search(line.split("#", 1)[0]):
                    found.append(f"{f.relative_to(REPO)}:{i}: {line.strip()}")
    assert found == []
