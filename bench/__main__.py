"""python -m bench: measure everything and write docs/RESULTS.md, docs/results/*.png and .json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

from compress.atomic import atomic_path

from . import sections
from .util import REPO, machine

ORDER = ("compression", "engine", "fpga", "tooling", "simulation")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--data", default=os.environ.get("MNIST_DIR"), help="MNIST IDX directory")
    p.add_argument("--only", default=",".join(ORDER), help="comma-separated sections")
    p.add_argument("--out", default=str(REPO / "docs"), help="where RESULTS.md goes")
    args = p.parse_args(argv)
    only = args.only.split(",")
    if "compression" in only and not args.data:
        print("error: --data (or MNIST_DIR) must name the MNIST IDX directory", file=sys.stderr)
        return 2
    out = Path(args.out)
    plots = out / "results"
    plots.mkdir(parents=True, exist_ok=True)
    work = REPO / "build" / "bench"
    t0 = time.time()
    done = {}
    if "compression" in only:
        done["compression"] = sections.compression(work, args.data, plots)
    if "engine" in only:
        done["engine"] = sections.engine(plots)
    cycles8 = done["engine"].data["pes"][8]["cycles"] if "engine" in done else None
    if "fpga" in only:
        done["fpga"] = sections.fpga(cycles8)
    if "tooling" in only:
        done["tooling"] = sections.tooling()
    if "simulation" in only:
        rate = done["engine"].data["sim_cycles_per_second"] if "engine" in done else None
        done["simulation"] = sections.simulation(rate)
    m = machine()
    head = (f"# Results\n\nWritten by `make bench` on {datetime.date.today()} in "
            f"{(time.time() - t0) / 60:.0f} minutes; every figure below is measured in that run. "
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}; Python "
            f"{m['python']}, torch {m['torch']}, numpy {m['numpy']}.\n")
    body = "\n\n".join(f"## {s.title}\n\n{s.markdown}" for s in done.values())
    with atomic_path(out / "RESULTS.md") as tmp:
        tmp.write_text(head + "\n" + body + "\n")
    with atomic_path(plots / "results.json") as tmp:
        tmp.write_text(json.dumps({"machine": m, **{k: s.data for k, s in done.items()}},
                                  indent=1, default=float) + "\n")
    print(f"wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
