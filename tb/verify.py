"""`python -m tb verify-mnist` (`make verify-mnist`): every MNIST test digit through the RTL.

    python -m tb verify-mnist --data DIR [--pes 8] [--engine NAME] [--model Q]
                              [--count N] [--out DIR] [--jobs J] [--one-map]

The 10,000 test digits (IDX files in DIR, or $MNIST_DIR) become int16 input vectors by the
input rule x = (pixel * 2**input_frac + 127) // 255 and run through each engine's RTL (default:
every engine of the registry, `images.engines`, that runs the network's layer kinds; the others
are named as left out, and --engine NAME of one that does not run them is refused) in the
Verilator testbench of `tb.fastbench` (no Python in the loop). Every output word is compared
with the golden model (`compress.golden`). Printed per engine: `bit-exact: N/M`, the accuracy
the hardware measured, the cycles per digit (min / mean / p50 / p99 / max; a PNG histogram in
--out, default build/verify-mnist/cycles-<engine>.png), the mean cycles per layer, the MAC
utilisation (useful MACs over PEs x compute cycles, per layer, in all, and over the conv
layers), the build and simulation wall times and the simulated cycles per second. --one-map
runs the lockstep engine as the iCE40 board builds it for a CNN (the one-map layout and the
board's parameters) instead of the engines' RTL-bench designs. --out also
gets summary.json; nothing else in --out is touched, and an --out that cannot take these files
is refused before the run.

The engines build side by side (the compilers share --jobs, default 2), then simulate their
digits in chunks through one pool of --jobs simulator processes (with two engines, 4 chunks a
process each, so the engine that finishes first leaves its process to the other's chunks). Builds
are cached (`tb.fastbench`): a second run only simulates.

Exit status: 0 when every output of every engine is bit-exact, 1 on any difference (the first
differing digits are named) or failure, 2 with one line on stderr for bad input (a missing data
directory, a bad model, a network the engine cannot take).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from compress import data
from compress.atomic import atomic_path, check_build_dir, check_output
from compress.errors import InputError, OneLineParser, run_main
from compress.shipped import load_model
from images import MAX_PES, build_image, check_pes, get, names

from . import fastbench
from . import verilator as vl
from .sim import REPO, default_params, sim_pool

DEFAULT_OUT = REPO / "build" / "verify-mnist"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m tb verify-mnist",
                      description="every MNIST test digit through the RTL engine, bit-exact "
                                  "against the golden model")
    p.add_argument("--data", help="directory of the MNIST IDX files (default: $MNIST_DIR)")
    p.add_argument("--pes", type=int, default=8, help=f"processing elements 1..{MAX_PES} (8)")
    p.add_argument("--engine", choices=names(),
                   help="one engine (default: every one that runs the network's layer kinds)")
    p.add_argument("--model", help="qnet .npz (default: the shipped LeNet-300-100)")
    p.add_argument("--count", type=int, help="only the first N test digits (default: all)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="directory for the histograms and summary.json (build/verify-mnist)")
    p.add_argument("--jobs", type=int, default=None,
                   help="simulator processes at once (default: $TB_JOBS, else 2)")
    p.add_argument("--one-map", action="store_true",
                   help="lockstep engine, a network with conv layers: the iCE40 board's design "
                        "(the one-map layout, the board's queue depth 2 and drain_share 2)")
    return p


def _inputs(args):
    """(qnet, model name, x int16[n, 784], labels int64[n])."""
    from compress.golden import mnist_to_input
    check_pes(args.pes)
    if args.count is not None and args.count < 1:
        raise InputError(f"--count must be >= 1, not {args.count}")
    if args.jobs is None:
        jobs = os.environ.get("TB_JOBS", "2")
        if not jobs.isdigit():
            raise InputError(f"TB_JOBS must be a number 1..64, not {jobs!r}")
        args.jobs = int(jobs)
    if not 1 <= args.jobs <= 64:
        raise InputError(f"--jobs must be 1..64, not {args.jobs!r}")
    qnet, name = load_model(args.model)
    if qnet.in_features != 784:
        raise InputError(f"the model takes {qnet.in_features} inputs, an MNIST digit has 784")
    test = data.load_split("test", args.data)
    n = len(test) if args.count is None else min(args.count, len(test))
    x = mnist_to_input(test.images[:n], qnet.input_frac)
    return qnet, name, x, test.labels[:n].astype(np.int64)


# the iCE40 board's engine parameters (`images.engines`), what --one-map runs
BOARD_FAMILY = "ice40"


def _image(qnet, engine, pes, one_map=False):
    from hw import EngineConfigError, check_fits
    opts = get(engine).board_options(qnet, pes) if one_map else {}
    img = build_image(qnet, engine, pes, **opts)
    try:
        check_fits(img)
    except EngineConfigError as e:
        raise InputError(str(e)) from None
    return img


_convert_lock = threading.Lock()  # Amaranth's conversion: one at a time in this process


def _run_engine(engine, img, x, chunks, slots, build_jobs, workdir: Path):
    """Build (cached) and simulate `x` in `chunks` simulator runs, each holding one of the
    shared `slots` while it runs, after a build in `build_jobs` compiler processes;
    (FastResult parts, build s, binary, simulation wall s)."""
    params = (get(engine).params_for(family=BOARD_FAMILY) if getattr(img, "one_map", False)
              else default_params(img))
    t0 = time.monotonic()
    with _convert_lock:
        # the key lookup and the conversion; the compiler runs outside the lock below
        key_hit = fastbench.lookup(img, params)
        template = None if key_hit else fastbench.template_of(img, params)[0]
    fb = key_hit or fastbench.compile_template(template, img, jobs=build_jobs,
                                                  opt=fastbench.LONG_RUN_OPT)
    if template is not None:
        fastbench.remember(img, params, fb)
    build_s = time.monotonic() - t0 if template is not None else 0.0
    mems = workdir / f"mems-{engine}"
    fastbench.write_mems(fb, img, params, mems)
    parts = [p for p in np.array_split(np.arange(len(x)), chunks) if len(p)]

    def one(ip):
        with slots:
            return fastbench.run(fb, mems, x[ip[1]], workdir=workdir / f"{engine}-{ip[0]}")

    t1 = time.monotonic()
    with sim_pool(len(parts)) as ex:
        res = list(ex.map(one, enumerate(parts)))
    return res, build_s, fb, time.monotonic() - t1


def _stats(c: np.ndarray) -> dict:
    return {"min": int(c.min()), "mean": float(c.mean()), "p50": float(np.percentile(c, 50)),
            "p99": float(np.percentile(c, 99)), "max": int(c.max())}


def _histogram(cycles: np.ndarray, engine: str, pes: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(cycles, bins=60, color="#4472c4")
    ax.set_xlabel("cycles per digit (first input word -> last output word)")
    ax.set_ylabel("digits")
    ax.set_title(f"{engine} engine, {pes} PEs: {len(cycles)} MNIST test digits")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _mac_utilisation(qnet, x, layer_cycles, pes: int, chunk: int = 500) -> dict:
    """Useful MACs (non-zero weight x non-zero activation, a conv layer's at every computed
    position: `tb.analysis.useful_macs`) over PEs x the layer's cycles, per layer and in all."""
    from .analysis import useful_macs

    useful = np.zeros(qnet.num_layers, dtype=np.float64)
    for i in range(0, len(x), chunk):
        useful += [float(u.sum()) for u in useful_macs(qnet, x[i:i + chunk])]
    cyc = np.asarray(layer_cycles, dtype=np.float64).sum(axis=0)
    conv = np.array([getattr(ly, "kind", "fc") == "conv" for ly in qnet.layers])

    def ratio(u, c):
        return float(u / (pes * c)) if c else 0.0

    out = {"layers": [ratio(u, c) for u, c in zip(useful, cyc)],
           "all": ratio(useful.sum(), cyc.sum()),
           "useful_macs_mean": (useful / len(x)).tolist()}
    if conv.any():
        out["conv"] = ratio(useful[conv].sum(), cyc[conv].sum())
    return out


def _body(argv):
    from compress.golden import golden, predict

    args = build_parser().parse_args(argv)
    t_start = time.monotonic()
    qnet, name, x, labels = _inputs(args)
    if args.one_map:
        if args.engine not in (None, "lockstep"):
            raise InputError("--one-map is the lockstep engine's board layout (--engine "
                             "lockstep)")
        if not any(getattr(ly, "kind", "fc") == "conv" for ly in qnet.layers):
            raise InputError("--one-map is the lockstep engine's layout of a network with conv "
                             "layers")
        args.engine = "lockstep"
    engines = [args.engine] if args.engine else list(names())
    left_out = []
    if not args.engine:  # every engine that runs the network's layer kinds (--engine: refused)
        kinds = {getattr(ly, "kind", "fc") for ly in qnet.layers}
        left_out = [e for e in engines if not kinds <= set(get(e).layer_kinds)]
        engines = [e for e in engines if e not in left_out]
        if not engines:
            raise InputError(f"no engine runs {', '.join(sorted(kinds))} layers")
    # the outputs (only these files in --out are replaced), checked before the long run
    out_dir = Path(args.out)
    for f in ["summary.json", *(f"cycles-{e}.png" for e in engines)]:
        check_output(out_dir / f, what="--out")
    imgs = {e: _image(qnet, e, args.pes, args.one_map) for e in engines}
    vl.require()
    want = golden(qnet, x)
    gold_acc = float((predict(want) == labels).mean())
    print(f"verify-mnist: {len(x)} MNIST test digits, model {name}, {args.pes} PEs, "
          f"engines {', '.join(engines)}"
          f"{' (the iCE40 board design: one map)' if args.one_map else ''} "
          f"(Verilator testbench)", flush=True)
    for e in left_out:
        print(f"{e}: left out, it runs {', '.join(get(e).layer_kinds)} layers only "
              f"(--engine {e} says which layer it refuses)", flush=True)

    # Every engine's digits in chunks through one pool of --jobs simulator slots: an engine
    # that finishes first leaves its slot to the other's chunks (4 chunks a slot: the last
    # chunk to finish is short).
    slots = threading.Semaphore(args.jobs)
    chunks = 4 * args.jobs if len(engines) > 1 else args.jobs
    results, errors = {}, {}
    build_root_runs = Path(os.environ.get("FASTBENCH_BUILD_DIR") or REPO / "build" / "fastbench")
    check_build_dir(build_root_runs, "FASTBENCH_BUILD_DIR")
    with tempfile.TemporaryDirectory(prefix="verify-", dir=build_root_runs) as td:
        def work(e):
            try:
                results[e] = _run_engine(e, imgs[e], x, chunks, slots,
                                         max(1, args.jobs // len(engines)), Path(td))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors[e] = exc

        threads = [threading.Thread(target=work, args=(e,), daemon=True) for e in engines]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except BaseException:
            from .sim import stop_simulators

            stop_simulators()
            raise
        for e in engines:
            if e in errors:
                raise errors[e]

    ok = True
    summary = {"digits": len(x), "model": name, "pes": args.pes, "golden_accuracy": gold_acc,
               "engines": {}, "left_out": left_out, "one_map": bool(args.one_map)}
    for e in engines:
        parts, build_s, fb, sim_s = results[e]
        y = np.concatenate([p.outputs for p in parts])
        cycles = np.concatenate([p.cycles for p in parts])
        layer_cycles = np.concatenate([p.layer_cycles for p in parts])
        sim_cycles = sum(p.sim_cycles for p in parts)
        cpu_s = sum(p.cpu_seconds for p in parts)
        cps = sim_cycles / cpu_s if cpu_s > 0 else 0.0
        bad = np.flatnonzero(np.any(y != want, axis=1))
        exact = len(x) - len(bad)
        acc = float((predict(y) == labels).mean())
        st = _stats(cycles)
        png = out_dir / f"cycles-{e}.png"
        _histogram(cycles, e, args.pes, png)
        print(f"{e}:")
        print(f"  bit-exact: {exact}/{len(x)}")
        if len(bad):
            ok = False
            print(f"  DIFFERENT: digits {', '.join(map(str, bad[:10].tolist()))}"
                  f"{' ...' if len(bad) > 10 else ''}")
        print(f"  accuracy (hardware): {100 * acc:.2f}%   golden model: {100 * gold_acc:.2f}%")
        print(f"  cycles per digit: min {st['min']}  mean {st['mean']:.1f}  p50 {st['p50']:.0f}"
              f"  p99 {st['p99']:.0f}  max {st['max']}   histogram: {png}")
        per_layer = layer_cycles.mean(axis=0)
        util = _mac_utilisation(qnet, x, layer_cycles, imgs[e].pes)
        print("  cycles per layer (mean): " + ", ".join(
            f"l{i} {c:.1f}" for i, c in enumerate(per_layer)))
        print(f"  MAC utilisation: {100 * util['all']:.1f}% of {imgs[e].pes} PEs x compute "
              f"cycles (" + ", ".join(f"l{i} {100 * u:.1f}%" for i, u in
                                      enumerate(util["layers"])) + ")"
              + (f"; conv layers {100 * util['conv']:.1f}%" if "conv" in util else ""))
        print(f"  wall time: build {build_s:.1f} s{' (cached)' if build_s == 0 else ''}, "
              f"simulation {sim_s:.1f} s ({len(parts)} run{'s' if len(parts) > 1 else ''} "
              f"in {min(args.jobs, len(parts))} slot{'s' if min(args.jobs, len(parts)) > 1 else ''}"
              f"; {sim_cycles} cycles in {cpu_s:.1f} CPU s: {cps / 1e6:.2f} M cycles/s)")
        summary["engines"][e] = {
            "bit_exact": exact, "different": bad[:100].tolist(), "accuracy": acc,
            "cycles": st, "layer_cycles_mean": per_layer.tolist(),
            "mac_utilisation": util, "build_seconds": build_s, "sim_seconds": sim_s,
            "sim_processes": len(parts), "sim_cycles": sim_cycles, "sim_cpu_seconds": cpu_s,
            "cycles_per_second": cps, "histogram": str(png), "binary": str(fb.binary)}
    wall = time.monotonic() - t_start
    summary["wall_seconds"] = wall
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wall time: {wall:.1f} s in all; {'every output bit-exact' if ok else 'DIFFERENCES'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: _body(argv), debug_env="TB_DEBUG")


if __name__ == "__main__":
    raise SystemExit(main())
