"""`python -m bench.eie`: the nine benchmark layers of the EIE paper through the EIE engine's RTL.

    python -m bench.eie [--layers Alex-6,...] [--pes 8,16,64] [--count 4] [--seed 0]
                        [--io-lanes pes|N] [--out build/bench-eie] [--markdown FILE]

Each layer (sizes and densities of the EIE paper's benchmark table, `LAYERS`) is a one-layer
qnet made deterministically from the seed: weights kept with the layer's weight density at
random positions, 4-bit codebook indices, input vectors non-zero with its activation density.
Each (layer, PEs) runs in a child process (so its wall time and peak memory are its own): the
image (`images.eie.build_rom`, `REL_BITS`), a loadable engine (`EieParams(loadable=True)`:
its Verilog depends on its shape alone, memories filled at run time by `$readmemh`; `io_lanes`
words a beat on its input and output streams, by default one per PE), the
Verilator bench of `tb.fastbench` (built once per shape and cached), then the vectors. By
default the layers of one PE count share one engine, its memories sized for all of them
(`shape_sizes`): one Verilog and one compile per PE count, the first layer pays for it.

Per configuration: cycles per input (compute: the engine's layer cycles; total: first input
word to last output word; period: the cycles per input of a stream, the vectors offered back to
back, between one vector's last output word and the next one's, which is what an input costs
when inputs stream: preload, load, compute and output), MAC utilisation over compute and over
the period (useful MACs = non-zero weight x non-zero activation pairs, over PEs x cycles; the
period's over vectors 2..count, the first has no predecessor), the dense engine's compute
cycles (every weight, in x ceil(out / N)) and the speed-up over it, bit-exactness against the golden model, the cycle
model's compute cycles (`images.eie.cycle_model`) and period (`images.eie.io_cycles`), the
wall time and the peak resident memory
(of the child and, separately, of its compilers and simulator). Results go to
<out>/<layer>-<pes>.json and a Markdown table to stdout (and --markdown).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchLayer:
    name: str
    in_features: int
    out_features: int
    weight_density: float
    act_density: float


# The EIE paper's benchmark layers (Han et al., "EIE: Efficient Inference Engine on Compressed
# Deep Neural Network", ISCA 2016, Table III): sizes and the densities of weights and input
# activations of the compressed models.
LAYERS = (
    BenchLayer("Alex-6", 9216, 4096, 0.09, 0.351),
    BenchLayer("Alex-7", 4096, 4096, 0.09, 0.353),
    BenchLayer("Alex-8", 4096, 1000, 0.25, 0.375),
    BenchLayer("VGG-6", 25088, 4096, 0.04, 0.183),
    BenchLayer("VGG-7", 4096, 4096, 0.04, 0.375),
    BenchLayer("VGG-8", 4096, 1000, 0.23, 0.411),
    BenchLayer("NT-We", 4096, 600, 0.10, 1.0),
    BenchLayer("NT-Wd", 600, 8791, 0.11, 1.0),
    BenchLayer("NT-LSTM", 1201, 2400, 0.10, 1.0),
)
BY_NAME = {b.name: b for b in LAYERS}
PES = (8, 16, 64)
WEIGHT_SCALE = 2000  # codebook values in -2000..2000
ACT_MAX = 255  # input activations 1..255 where non-zero
# one relative-index width for every layer, so that the layers share one engine per PE count
# (uniform random sparsity at these densities and 8-64 PEs leaves gaps a 5-bit index reaches)
REL_BITS = 5


def make_qnet(b: BenchLayer, seed: int = 0):
    """The one-layer qnet of `b`, deterministic in `seed`, made a block of rows at a time (VGG-6
    has 103M weights: no float matrix of that size is ever made)."""
    from compress.qnet import Layer, QNet

    rng = np.random.default_rng([seed, b.in_features, b.out_features])
    k = 16
    codebook = np.zeros(k, np.int16)
    codebook[1:] = rng.integers(-WEIGHT_SCALE, WEIGHT_SCALE + 1, size=k - 1)
    index = np.zeros((b.out_features, b.in_features), np.uint8)
    block = max(1, 4_000_000 // b.in_features)
    for r in range(0, b.out_features, block):
        rows = min(block, b.out_features - r)
        keep = rng.random((rows, b.in_features), dtype=np.float32) < b.weight_density
        vals = rng.integers(1, k, size=(rows, b.in_features), dtype=np.uint8)
        index[r:r + rows] = np.where(keep, vals, 0)
    bias = rng.integers(-(1 << 16), (1 << 16) + 1, size=b.out_features).astype(np.int32)
    # outputs spread over int16: acc ~ sqrt(terms) * rms(weight) * rms(act), shifted to ~2**11
    terms = b.in_features * b.weight_density * b.act_density
    rms = math.sqrt(terms) * (WEIGHT_SCALE / math.sqrt(3)) * (ACT_MAX / math.sqrt(3))
    shift = max(0, round(math.log2(max(rms, 1.0))) - 11)
    layer = Layer(codebook=codebook, index=index, bias=bias, shift=int(shift), relu=False)
    return QNet(layers=[layer], input_frac=8)


def make_inputs(b: BenchLayer, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, b.in_features, 1])
    keep = rng.random((count, b.in_features)) < b.act_density
    vals = rng.integers(1, ACT_MAX + 1, size=(count, b.in_features))
    return np.where(keep, vals, 0).astype(np.int16)


def shape_sizes(pes: int, names: list[str], seed: int) -> dict:
    """The memory sizes of one engine of `pes` PEs that takes every layer of `names` (the most
    each needs, bucketed): one Verilog and one compiled bench for all of them."""
    from images.eie import EieSizes, bucketed, build_rom, image_sizes

    most: dict = {}
    for name in names:
        need = image_sizes(build_rom(make_qnet(BY_NAME[name], seed), pes=pes,
                                     rel_bits=REL_BITS)).as_dict()
        most = {k: max(v, most.get(k, 0)) for k, v in need.items()}
    return bucketed(EieSizes(**most)).as_dict()


def run_one(b: BenchLayer, pes: int, count: int, seed: int, sizes: dict | None = None,
            lanes: int | None = None) -> dict:
    """One configuration, in this process (the child's body); `sizes`: the engine's memory
    sizes (`shape_sizes`; None: this layer's own); `lanes`: words a beat on i_act and o_act
    (None: one per PE)."""
    from compress.golden import golden
    from images.eie import EieParams, EieSizes, build_rom, cycle_model, io_cycles
    from tb import fastbench

    t0 = time.monotonic()
    qnet = make_qnet(b, seed)
    x = make_inputs(b, count, seed)
    t_net = time.monotonic()
    rom = build_rom(qnet, pes=pes, rel_bits=REL_BITS)
    t_rom = time.monotonic()
    params = EieParams(loadable=True, sizes=EieSizes(**sizes) if sizes else None,
                       io_lanes=lanes)
    fb = fastbench.build(rom, params)
    t_build = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mems-", dir=fastbench._runs()) as td:
        fastbench.write_mems(fb, rom, params, Path(td))
        t_mems = time.monotonic()
        r = fastbench.run(fb, Path(td), x, max_cycles=50_000_000, out_features=b.out_features)
    t_sim = time.monotonic()
    want = golden(qnet, x)
    exact = int(np.sum(np.all(r.outputs == want, axis=1)))
    model = cycle_model(rom, x, params).sum(axis=1)
    model_period = io_cycles(rom, model, params)["period"][1:]
    layer = qnet.layers[0]
    nnz_col = np.count_nonzero(layer.index, axis=0).astype(np.int64)  # per input column
    useful = (x != 0).astype(np.int64) @ nnz_col
    compute = r.layer_cycles.sum(axis=1)
    total = r.cycles
    period = r.period  # vectors 2..count
    dense = b.in_features * -(-b.out_features // pes)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "layer": b.name, "in": b.in_features, "out": b.out_features,
        "weight_density": b.weight_density, "act_density": b.act_density, "pes": pes,
        "count": count, "seed": seed, "rel_bits": rom.rel_bits, "shift": layer.shift,
        "io_lanes": fb.lanes,
        "nonzero_weights": int(nnz_col.sum()),
        "entries_per_pe_max": int(max(len(e) for e in rom.entries)),
        "bit_exact": exact,
        "compute_cycles": compute.tolist(), "total_cycles": total.tolist(),
        "period_cycles": period.tolist(),
        "model_compute_cycles": model.tolist(), "model_period_cycles": model_period.tolist(),
        "model_error": float(np.mean(model) / np.mean(compute) - 1),
        "model_period_error": float(np.mean(model_period) / np.mean(period) - 1)
        if len(period) else None,
        "useful_macs": useful.tolist(),
        "util_compute": float(useful.sum() / (pes * compute.sum())),
        "util_total": float(useful.sum() / (pes * total.sum())),
        "util_period": float(useful[1:].sum() / (pes * period.sum())) if len(period) else None,
        "dense_cycles": dense, "speedup_over_dense": float(dense / np.mean(compute)),
        "build_seconds": round(fb.build_seconds, 1), "binary": fb.dir.name,
        "seconds": {"network": round(t_net - t0, 1), "image": round(t_rom - t_net, 1),
                    "build": round(t_build - t_rom, 1), "mems": round(t_mems - t_build, 1),
                    "simulate": round(t_sim - t_mems, 1), "total": round(t_sim - t0, 1)},
        "peak_rss_mb": round(self_rss), "peak_child_rss_mb": round(child_rss),
    }


def rel_bits_trade(names: list[str], pes_list: list[int], count: int, seed: int,
                   widths=(3, 4, 5, 6)) -> str:
    """Per layer and PE count, for each relative-index width: the entry memories' bits (what
    `--rel-bits auto` minimises) and the cycle model's compute cycles per input, beside what
    `--rel-bits fast` chooses; a Markdown table. The model agrees with the RTL (the main
    table)."""
    from images.eie import EieParams, build_rom, cycle_model, entries_bits

    def measure(rom, x):
        return entries_bits(rom), float(cycle_model(rom, x, EieParams()).sum(1).mean())

    head = ("| layer | PEs | " + " | ".join(f"rel {w}: Mbit / cycles" for w in widths)
            + " | auto (smallest) | fastest of these | fast: width, Mbit / cycles "
            "| fast: cycles saved, bits added |\n| --- | --- | "
            + " | ".join("---" for _ in widths) + " | --- | --- | --- | --- |\n")
    rows = []
    for pes in pes_list:
        for name in names:
            b = BY_NAME[name]
            qnet, x = make_qnet(b, seed), make_inputs(b, count, seed)
            got = {w: measure(build_rom(qnet, pes=pes, rel_bits=w), x) for w in widths}
            small = min(widths, key=lambda w: (got[w][0], w))
            fastest = min(widths, key=lambda w: (got[w][1], got[w][0]))
            rom = build_rom(qnet, pes=pes, rel_bits="fast")
            fb, fc = got.get(rom.rel_bits) or measure(rom, x)
            rows.append(f"| {name} | {pes} | "
                        + " | ".join(f"{got[w][0] / 1e6:.2f} / {got[w][1]:,.0f}" for w in widths)
                        + f" | {small} | {fastest} | {rom.rel_bits}, {fb / 1e6:.2f} / {fc:,.0f} "
                        f"| {100 * (1 - fc / got[small][1]):.1f}%, "
                        f"{100 * (fb / got[small][0] - 1):+.0f}% |")
            print(rows[-1], flush=True)
    return head + "\n".join(rows) + "\n"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table(results: list[dict]) -> str:
    head = ("| layer | PEs | rel bits | lanes | bit-exact | compute cycles/input | total cycles/input "
            "| period cycles/input | util. compute | util. total | util. period "
            "| model vs RTL: compute / period | dense cycles | speed-up | build s | wall s "
            "| peak MB (py / sim) |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
            "| --- | --- | --- | --- |\n")
    rows = []
    for r in results:
        mp = r.get("model_period_error")
        period = f"{np.mean(r['period_cycles']):,.0f}" if r.get("period_cycles") else "-"
        rows.append(
            f"| {r['layer']} | {r['pes']} | {r['rel_bits']} | {r.get('io_lanes', 1)} "
            f"| {r['bit_exact']}/{r['count']} "
            f"| {np.mean(r['compute_cycles']):,.0f} | {np.mean(r['total_cycles']):,.0f} "
            f"| {period} | {_pct(r['util_compute'])} | {_pct(r['util_total'])} "
            f"| {_pct(r.get('util_period'))} "
            f"| {100 * r['model_error']:+.1f}% / "
            f"{'-' if mp is None else f'{100 * mp:+.1f}%'} | {r['dense_cycles']:,} "
            f"| {r['speedup_over_dense']:.1f}x | {r['build_seconds']:.0f} "
            f"| {r['wall_seconds']:.0f} | {r['peak_rss_mb']:,} / {r['peak_child_rss_mb']:,} |")
    return head + "\n".join(rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eie", description=__doc__.split("\n")[0])
    p.add_argument("--layers", default=",".join(b.name for b in LAYERS))
    p.add_argument("--pes", default=",".join(map(str, PES)))
    p.add_argument("--count", type=int, default=4, help="input vectors per layer (4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--io-lanes", default="pes",
                   help="words a beat on the engine's input and output streams: a divisor of "
                        "the PEs, or 'pes' for one per PE (default)")
    p.add_argument("--out", default=str(REPO / "build" / "bench-eie"))
    p.add_argument("--markdown", default=None, help="also write the table here")
    p.add_argument("--rel-bits-trade", action="store_true",
                   help="instead: entry memory bits and modelled cycles per relative-index "
                        "width (no RTL)")
    p.add_argument("--own-sizes", action="store_true",
                   help="each layer on an engine of its own memory sizes (default: one engine "
                        "per PE count, sized for every layer asked for)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "layer,pes": one config
    p.add_argument("--sizes", default=None, help=argparse.SUPPRESS)  # JSON EieSizes
    p.add_argument("--sizes-of", default=None, help=argparse.SUPPRESS)  # "pes": print sizes
    args = p.parse_args(argv)
    lanes = None if args.io_lanes == "pes" else args.io_lanes
    if lanes is not None:
        try:
            lanes = int(lanes)
        except ValueError:
            lanes = 0
        if lanes < 1:
            print(f"python -m bench.eie: --io-lanes must be 'pes' or a number >= 1, not "
                  f"{args.io_lanes!r}", file=sys.stderr)
            return 2
    if args.child:
        name, pes = args.child.split(",")
        res = run_one(BY_NAME[name], int(pes), args.count, args.seed,
                      json.loads(args.sizes) if args.sizes else None, lanes)
        print(json.dumps(res))
        return 0
    if args.sizes_of:
        print(json.dumps(shape_sizes(int(args.sizes_of), args.layers.split(","), args.seed)))
        return 0
    names = [s for s in args.layers.split(",") if s]
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        print(f"python -m bench.eie: unknown layer {bad[0]!r} (one of "
              f"{', '.join(BY_NAME)})", file=sys.stderr)
        return 2
    try:
        pes_list = [int(s) for s in args.pes.split(",") if s]
    except ValueError:
        print(f"python -m bench.eie: --pes must be numbers, not {args.pes!r}", file=sys.stderr)
        return 2
    if lanes is not None and any(pes % lanes for pes in pes_list):
        print(f"python -m bench.eie: --io-lanes {lanes} must divide every PE count "
              f"({args.pes})", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.rel_bits_trade:
        md = rel_bits_trade(names, pes_list, args.count, args.seed)
        print(md)
        if args.markdown:
            Path(args.markdown).write_text(md)
        return 0
    results = []
    for pes in pes_list:
        sizes = None
        if not args.own_sizes:
            pr = subprocess.run([sys.executable, "-m", "bench.eie", "--sizes-of", str(pes),
                                 "--layers", ",".join(names), "--seed", str(args.seed)],
                                cwd=REPO, capture_output=True, text=True)
            if pr.returncode != 0:
                print(f"sizes at {pes} PEs failed:\n{pr.stderr[-2000:]}", file=sys.stderr)
                return 1
            sizes = pr.stdout.strip().splitlines()[-1]
            print(f"{pes} PEs: one engine, memories {sizes}", flush=True)
        for name in names:
            t0 = time.monotonic()
            cmd = [sys.executable, "-m", "bench.eie", "--child", f"{name},{pes}",
                   "--count", str(args.count), "--seed", str(args.seed),
                   "--io-lanes", args.io_lanes]
            if sizes:
                cmd += ["--sizes", sizes]
            pr = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            wall = time.monotonic() - t0
            if pr.returncode != 0:
                print(f"{name} at {pes} PEs failed:\n{pr.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(pr.stdout.strip().splitlines()[-1])
            res["wall_seconds"] = round(wall, 1)
            (out / f"{name}-{pes}.json").write_text(json.dumps(res, indent=1) + "\n")
            results.append(res)
            print(f"{name} {pes} PEs: {res['bit_exact']}/{res['count']} bit-exact, compute "
                  f"{np.mean(res['compute_cycles']):,.0f}, total "
                  f"{np.mean(res['total_cycles']):,.0f} cycles, util {res['util_compute']:.3f}"
                  f" / {res['util_total']:.3f} / period {_pct(res['util_period'])}, model "
                  f"{res['model_error']:+.3f}, {wall:.0f} s", flush=True)
    md = table(results)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0 if all(r["bit_exact"] == r["count"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
