"""Scale benchmark (not a test): 1-D k-means, Huffman coding and .dcz export of a VGG-16
fc6-sized layer (25088 inputs x 4096 outputs = 102,760,448 weights) on this machine.

    python -m bench.scale [--density 0.04 | --dense] [--k 32] [--repeat 3]

The layer is synthetic and seeded: Laplace weights with log-normal per-row and per-column
scales (so rows and columns differ in density after pruning, as in a trained layer), pruned by
global magnitude to `--density` (fc6 keeps 4% in Deep Compression, Table 4), then quantized
with `kmeans_1d` (k - 1 shared values plus the pruned zero). Each stage prints its wall time
and CPU time (median of `--repeat` runs where cheap) and the process's peak resident memory
during it (sampled every 20 ms); the lifetime peak is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time

import numpy as np

from compress.errors import InputError

ROWS, COLS = 4096, 25088  # fc6: out x in


def make_layer(seed: int, density: float | None, chunk_rows: int = 256) -> np.ndarray:
    """float32[4096, 25088] weights; pruned to `density` by magnitude unless density is None."""
    rng = np.random.default_rng(seed)
    row_scale = rng.lognormal(0.0, 0.3, ROWS).astype(np.float32)
    col_scale = rng.lognormal(0.0, 0.3, COLS).astype(np.float32)
    w = np.empty((ROWS, COLS), dtype=np.float32)
    for r in range(0, ROWS, chunk_rows):
        block = rng.laplace(0.0, 0.01, (min(chunk_rows, ROWS - r), COLS)).astype(np.float32)
        w[r : r + chunk_rows] = block * row_scale[r : r + chunk_rows, None] * col_scale[None, :]
    if density is not None:
        mag = np.abs(w).reshape(-1)
        kth = int((1.0 - density) * mag.size)
        thresh = np.partition(mag, kth)[kth]
        del mag
        w[np.abs(w) < thresh] = 0.0
    return w


class _PeakRSS:
    """Samples the process's resident memory every 20 ms in a thread; `peak` is the largest.

    (tracemalloc would see numpy's allocations too, but slows Python loops by an order of
    magnitude, which would distort the timings.)"""

    def __init__(self):
        self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(label: str, fn, repeat: int = 1):
    """Run fn `repeat` times; print the median wall and CPU time and the peak resident memory.

    The CPU time (this process, all threads) is the steadier figure on a shared machine."""
    times, cpus, result = [], [], None
    with _PeakRSS() as mem:
        for _ in range(repeat):
            t, c = time.perf_counter(), time.process_time()
            result = fn()
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    runs = f" (median of {repeat})" if repeat > 1 else ""
    print(f"  {label:<46} {statistics.median(times):7.2f} s wall, "
          f"{statistics.median(cpus):7.2f} s CPU{runs:<15} peak RSS {mem.peak / 2**30:5.2f} GiB")
    sys.stdout.flush()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n")[0]
    )
    p.add_argument("--density", type=float, default=0.04, help="fraction of weights kept (0.04)")
    p.add_argument("--dense", action="store_true", help="do not prune: all 102.8M weights")
    p.add_argument("--k", type=int, default=32, help="codebook size incl. the zero (16 or 32)")
    p.add_argument("--repeat", type=int, default=3, help="runs of the cheap stages (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unpack", action="store_true", help="also time unpacking the .dcz")
    p.add_argument("--exact", action="store_true",
                   help="also time exact k-means on sorted values (the default above 2**25 "
                   "values is the 2**20-bin histogram)")
    p.add_argument("--out", help="also write the .dcz here")
    args = p.parse_args(argv)
    if args.repeat < 1:
        print(f"error: --repeat must be >= 1, not {args.repeat}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    from compress.dcz import best_gap_alphabet, gap_symbols, pack, unpack, write_dcz
    from compress.huffman import HuffmanCode
    from compress.kmeans import kmeans_1d
    from compress.qnet import Layer, QNet

    if not 2 <= args.k <= 256:
        raise InputError(f"--k must be 2..256, not {args.k}")
    density = None if args.dense else args.density
    if density is not None and not 0 < density <= 1:
        raise InputError(f"--density must be in (0, 1], not {density}")
    print(
        f"fc6-sized layer {COLS} x {ROWS} = {ROWS * COLS:,} weights, "
        f"{'dense' if density is None else f'pruned to {density:.0%}'}, k = {args.k}, "
        f"seed {args.seed}"
    )
    w = timed("make the layer (seeded, pruned)", lambda: make_layer(args.seed, density))
    mask = w != 0
    values = w[mask]
    nnz = values.size
    print(f"  {nnz:,} non-zero weights ({100 * nnz / w.size:.2f}%)")
    del w

    cents, labels = timed(
        f"k-means 1-D, k-1 = {args.k - 1} on {nnz:,} values",
        lambda: kmeans_1d(values, args.k - 1, init="linear"),
        args.repeat,
    )
    if args.exact:
        exact = timed(
            f"k-means 1-D exact (sorted), k-1 = {args.k - 1}",
            lambda: kmeans_1d(values, args.k - 1, init="linear", method="sorted"),
        )
        span = float(values.max() - values.min())
        print(f"    largest centroid difference to the default: "
              f"{np.max(np.abs(exact[0] - cents)) / span:.2e} of the range")
        del exact
    index = np.zeros((ROWS, COLS), dtype=np.uint8)
    index[mask] = (labels + 1).astype(np.uint8)
    del mask, labels, values

    flat = index.reshape(-1)
    nz = np.flatnonzero(flat)
    wsym = flat[nz].astype(np.int64) - 1

    def huff_weights():
        code = HuffmanCode.from_symbols(wsym, args.k - 1)
        return code.encode(wsym)

    _, wbits = timed("Huffman: weight indices (table + stream)", huff_weights, args.repeat)
    print(f"    {wbits / nnz:.3f} bits per non-zero, {wbits / 8 / 2**20:.2f} MiB")

    def huff_gaps():
        gaps = np.diff(nz, prepend=-1) - 1
        m = best_gap_alphabet(gaps)
        sym = gap_symbols(gaps, m)
        code = HuffmanCode.from_symbols(sym, m + 1)
        return code.encode(sym)

    _, gbits = timed("Huffman: relative indices (gaps, fillers)", huff_gaps, args.repeat)
    print(f"    {gbits / nnz:.3f} bits per non-zero, {gbits / 8 / 2**20:.2f} MiB")
    del nz, wsym, flat

    scale = 2 ** int(np.floor(np.log2(32767 / max(np.abs(cents).max(), 1e-30))))
    codebook = np.zeros(args.k, dtype=np.int16)
    codebook[1:] = np.round(cents * scale).astype(np.int16)
    bias = np.random.default_rng(args.seed + 1).integers(-(1 << 20), 1 << 20, ROWS, dtype=np.int32)
    qnet = QNet([Layer(codebook, index, bias, shift=12, relu=True)], input_frac=8)
    data = timed("export: pack the .dcz (all choices, checksums)", lambda: pack(qnet))
    dense_bytes = 4 * (index.size + bias.size)
    print(f"    .dcz {len(data):,} bytes = {len(data) / 2**20:.2f} MiB; float32 "
          f"{dense_bytes / 2**20:.1f} MiB; {dense_bytes / len(data):.1f}x")
    if args.out:
        write_dcz(qnet, args.out)
        print(f"    wrote {args.out}")
    if args.unpack:
        back = timed("unpack the .dcz (verify checksums, decode)", lambda: unpack(data))
        print(f"    exact round trip: {back.equals(qnet)}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  peak resident memory of the process: {peak:.2f} GiB; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
