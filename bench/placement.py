"""Placement benchmark (not a test): the CPU time of building each engine's image against the
network's size, and of the check made before any placement.

    python -m bench.placement [--out docs/images/placement.png] [--sizes 128,256,...]

Networks: `random_qnet((784, H, H, 10))` at 10 % density in the hidden layers (26 % in the
last), seed 0, for each H, and the 784-1024-1024-10 MLP at 4.2 % (the 72x network of
docs/fpga.md). For each: the weights, the non-zeros, the CPU seconds (`time.process_time`, one
core) of `images.build_image` for the EIE engine at 8 PEs (balanced rows, filler order and the
relative index width search) and for the lockstep engine at 8 PEs (the slot search), and of
`fpga.flow.resources.fit_bound`. Prints a table and writes a PNG of time against non-zeros.
"""

from __future__ import annotations

import time

import numpy as np

from compress.errors import InputError, OneLineParser, run_main


def networks(sizes: list[int]):
    from compress.synthetic import random_qnet

    for h in sizes:
        yield f"784-{h}-{h}-10 at 10 %", random_qnet((784, h, h, 10), density=[0.1, 0.1, 0.26])
    yield "784-1024-1024-10 at 4.2 %", random_qnet((784, 1024, 1024, 10),
                                                   density=[0.042, 0.042, 0.26])


def cpu(fn):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def measure(sizes: list[int]) -> list[dict]:
    from fpga.flow.resources import fit_bound
    from images import build_image

    rows = []
    for name, q in networks(sizes):
        weights = sum(layer.index.size for layer in q.layers)
        nnz = sum(int(np.count_nonzero(layer.index)) for layer in q.layers)
        t_bound, _ = cpu(lambda: fit_bound(q, "lockstep", 8))
        t_eie, rom = cpu(lambda: build_image(q, "eie", 8))
        t_lock, _ = cpu(lambda: build_image(q, "lockstep", 8))
        rows.append({"network": name, "weights": weights, "nonzeros": nnz,
                     "bound_s": t_bound, "eie_s": t_eie, "eie_rel_bits": rom.rel_bits,
                     "lockstep_s": t_lock})
        r = rows[-1]
        print(f"{name:28s} {weights:>10,} {nnz:>8,}  {t_bound:6.3f}  {t_eie:7.1f} "
              f"(rel_bits {rom.rel_bits})  {t_lock:7.1f}", flush=True)
    return rows


def plot(rows: list[dict], out: str) -> None:
    """Time against non-zeros: the 784-H-H-10 curve as lines, other networks as open marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compress.atomic import atomic_path

    curve = [r for r in rows if r["network"].endswith("at 10 %")]
    other = [r for r in rows if r not in curve]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for key, mark, label in (("eie_s", "o", "EIE image, 8 PEs"),
                             ("lockstep_s", "s", "lockstep image, 8 PEs"),
                             ("bound_s", "^", "fit check before placement")):
        line, = ax.plot([r["nonzeros"] / 1000 for r in curve], [r[key] for r in curve],
                        mark + "-", label=label + " (784-H-H-10, 10 %)")
        ax.plot([r["nonzeros"] / 1000 for r in other], [r[key] for r in other], mark,
                color=line.get_color(), markerfacecolor="none", markersize=9)
    for r in other:
        ax.annotate(r["network"], (r["nonzeros"] / 1000, r["eie_s"]), fontsize=7,
                    xytext=(5, -3), textcoords="offset points")
    ax.set_xlabel("non-zero weights (thousands)")
    ax.set_ylabel("CPU seconds (one core)")
    ax.set_title("Image building against network size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    def body():
        p = OneLineParser(prog="python -m bench.placement", description=__doc__.split("\n")[0])
        p.add_argument("--sizes", default="128,256,384,512,640,768",
                       help="hidden widths H of 784-H-H-10 (default 128,...,768)")
        p.add_argument("--out", default="build/placement.png", help="the PNG")
        args = p.parse_args(argv)
        try:
            sizes = [int(v) for v in args.sizes.split(",")]
        except ValueError:
            sizes = []
        if not sizes or min(sizes) < 1 or max(sizes) > 4096:
            raise InputError(f"--sizes: comma-separated widths 1..4096, not {args.sizes!r}")
        print(f"{'network':28s} {'weights':>10s} {'non-zeros':>8s}  {'bound':>6s}  "
              f"{'EIE s':>7s}               {'lockstep s':>7s}")
        rows = measure(sizes)
        plot(rows, args.out)
        print(f"wrote {args.out}")

    return run_main(body, debug_env="BENCH_DEBUG")


if __name__ == "__main__":
    raise SystemExit(main())
