"""python -m bench: measure everything and write docs/RESULTS.md, docs/results/*.png and .json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

from compress.atomic import atomic_path

from . import sections
from .util import REPO, machine

ORDER = ("compression", "engine", "fpga", "tooling", "simulation")


def _sections_of(page: Path) -> dict[int, str]:
    """The numbered `## N. ...` sections of an existing results page, by number."""
    if not page.exists():
        return {}
    found: dict[int, str] = {}
    for chunk in re.split(r"(?m)^(?=## \d+\. )", page.read_text())[1:]:
        found[int(chunk[3:chunk.index(".")])] = chunk.rstrip("\n")
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--data", default=os.environ.get("MNIST_DIR"), help="MNIST IDX directory")
    p.add_argument("--only", default=",".join(ORDER), help="comma-separated sections")
    p.add_argument("--out", default=str(REPO / "docs"), help="where RESULTS.md goes")
    args = p.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    bad = [s for s in only if s not in ORDER] or ([] if only else [args.only])
    if bad:
        print(f"error: --only: unknown section {bad[0]!r} (the sections: {', '.join(ORDER)})",
              file=sys.stderr)
        return 2
    if {"compression", "fpga"} & set(only) and not args.data:
        print("error: --data (or MNIST_DIR) must name the MNIST IDX directory", file=sys.stderr)
        return 2
    if args.data and not Path(args.data).is_dir():
        print(f"error: --data {args.data}: MNIST directory does not exist", file=sys.stderr)
        return 2
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"error: --out {args.out}: not a directory (RESULTS.md and results/ go in it)",
              file=sys.stderr)
        return 2
    if args.data:  # the sections' own commands (`fpga run --sim`) read it from there
        os.environ["MNIST_DIR"] = args.data
    out = Path(args.out)
    plots = out / "results"
    plots.mkdir(parents=True, exist_ok=True)
    work = REPO / "build" / "bench"
    frags = work / "sections"
    frags.mkdir(parents=True, exist_ok=True)
    m = machine()

    def measure(name, fn):
        t = time.time()
        sec = fn()
        with atomic_path(frags / f"{name}.json") as tmp:
            tmp.write_text(json.dumps({"title": sec.title, "markdown": sec.markdown,
                                       "data": sec.data, "minutes": (time.time() - t) / 60,
                                       "date": str(datetime.date.today()), "machine": m},
                                      indent=1, default=float) + "\n")

    def data(name):
        f = frags / f"{name}.json"
        return json.loads(f.read_text())["data"] if f.exists() else None

    if "compression" in only:
        measure("compression", lambda: sections.compression(work, args.data, plots))
    if "engine" in only:
        measure("engine", lambda: sections.engine(plots))
    eng = data("engine")
    if "fpga" in only:
        measure("fpga", lambda: sections.fpga(eng["pes"] if eng else None))
    if "tooling" in only:
        measure("tooling", sections.tooling)
    if "simulation" in only:
        measure("simulation", lambda: sections.simulation(
            eng["sim_cycles_per_second"] if eng else None))
    # The page is made of the latest measurement of every section (`make bench` runs them all);
    # a section with no measurement in build/ (a fresh clone, `--only`) keeps its text from the
    # page as committed, so measuring one section never drops the others.
    done = {n: json.loads((frags / f"{n}.json").read_text()) for n in ORDER
            if (frags / f"{n}.json").exists()}
    kept = _sections_of(out / "RESULTS.md")
    total = sum(d["minutes"] for d in done.values())
    head = (f"# Results\n\nWritten by `make bench` (`python -m bench`; a section it did not "
            f"measure keeps its text, which names the commands that measured it) on {m['cpu']}, "
            f"{m['cores']} cores, {m['memory_gb']} GB, {m['os']}; Python {m['python']}, torch "
            f"{m['torch']}, numpy {m['numpy']}. Each section says its date and how long it took "
            f"({total:.0f} minutes for the sections measured here since build/ was made).\n")
    parts = []
    for i, n in enumerate(ORDER, 1):
        if n in done:
            d = done[n]
            parts.append(f"## {d['title']}\n\n{d['markdown']}\n\n*Measured {d['date']} in "
                         f"{d['minutes']:.1f} minutes.*")
        elif i in kept:
            parts.append(kept[i])
    # sections past these, measured by their own commands (6: `python -m bench.eie`), kept
    parts += [kept[i] for i in sorted(kept) if i > len(ORDER)]
    body = "\n\n".join(parts)
    with atomic_path(out / "RESULTS.md") as tmp:
        tmp.write_text(head + "\n" + body + "\n")
    old = plots / "results.json"
    figures = json.loads(old.read_text()) if old.exists() else {}
    figures.update({"machine": m, **{k: d["data"] for k, d in done.items()}})
    with atomic_path(old) as tmp:
        tmp.write_text(json.dumps(figures,
                                  indent=1, default=float) + "\n")
    print(f"wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
