"""Exact 1-D k-means (Lloyd) for weight sharing, fast enough for a 103M-weight layer.

In one dimension the nearest-centroid cells are intervals: with the centroids sorted, the
boundary between cluster j and j+1 is the midpoint of their centroids. So a Lloyd iteration on
the *sorted* values is k-1 binary searches for the boundaries plus k segment sums read off a
prefix sum (cumsum): O(k log n) per iteration after one O(n log n) sort, instead of O(n k).
The result is exactly what Lloyd's algorithm on the raw points gives for the same start.

For inputs too large to sort comfortably there is a histogram mode: the values are binned into
a fine uniform histogram (count and exact sum per bin) and Lloyd runs on the bins, each bin
assigned as a whole by its mean. The boundaries then have the bin width as resolution, which for
2**20 bins is far below any useful centroid spacing; the final labels are always computed from
the exact values against the midpoint boundaries.

Conventions, so that results are reproducible and usable as a codebook:
- centroids are returned sorted ascending (float64[k]); labels index into them (int64[n]);
- a value exactly on a boundary goes to the lower cluster;
- a cluster that becomes empty keeps its previous centroid (it can win points back later);
- when the data has d <= k distinct values the centroids are those values (exact, zero error),
  and the k-d surplus centroids repeat the largest value and stay empty;
- random init draws its k starting points with the given seed; linear and density inits are
  deterministic by construction.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np

from .errors import InputError

__all__ = [
    "CentroidInit",
    "make_init",
    "kmeans_1d",
    "assign_1d",
    "boundaries",
    "inertia_1d",
]

# Above this many values method="auto" uses the histogram (sorting 100M values costs seconds
# and 2-3 GB of scratch; the histogram needs one pass and a few MB).
AUTO_HISTOGRAM_ABOVE = 1 << 25
DEFAULT_BINS = 1 << 20


class CentroidInit(str, enum.Enum):
    """How the k starting centroids are placed (Han et al. 2016, section 3.2)."""

    LINEAR = "linear"  # evenly between min and max: keeps the rare large weights represented
    DENSITY = "density"  # evenly spaced on the CDF's y axis: quantiles of the data
    RANDOM = "random"  # k values drawn from the data (Forgy), seeded


def _init_linear(lo: float, hi: float, k: int, quantile: Callable, rng) -> np.ndarray:
    return np.linspace(lo, hi, k)


def _init_density(lo: float, hi: float, k: int, quantile: Callable, rng) -> np.ndarray:
    return quantile((np.arange(k) + 0.5) / k)


def _init_random(lo: float, hi: float, k: int, quantile: Callable, rng) -> np.ndarray:
    # Uniform positions on the CDF are exactly a sample of data points (with replacement over
    # positions, so repeated values are possible when the data has them).
    return np.sort(quantile(rng.random(k), exact_point=True))


_INITS = {
    CentroidInit.LINEAR: _init_linear,
    CentroidInit.DENSITY: _init_density,
    CentroidInit.RANDOM: _init_random,
}


def make_init(init: str | CentroidInit) -> Callable:
    """The init strategy for a name: f(lo, hi, k, quantile, rng) -> float64[k] (sorted)."""
    try:
        return _INITS[CentroidInit(init)]
    except ValueError:
        names = ", ".join(m.value for m in CentroidInit)
        raise InputError(f"k-means init must be one of {names}, not {init!r}") from None


def boundaries(centroids: np.ndarray) -> np.ndarray:
    """Decision boundaries (midpoints) of sorted centroids: float64[k-1]."""
    c = np.asarray(centroids, dtype=np.float64)
    return c[:-1] + (c[1:] - c[:-1]) * 0.5


def assign_1d(values: np.ndarray, centroids: np.ndarray, *, chunk: int = 1 << 22) -> np.ndarray:
    """Nearest-centroid label (int64[n]) of each value for sorted centroids; ties go lower.

    Large inputs use a lookup table over 2**16 uniform bins: a value whose bin (widened by one
    bin on each side, far above float rounding) holds no boundary takes the bin's label; only
    values in the few bins a boundary crosses need a binary search. Works in chunks.
    """
    x = np.asarray(values).reshape(-1)
    b = boundaries(centroids)
    out = np.empty(x.shape[0], dtype=np.int64)
    if b.size == 0 or x.shape[0] == 0:
        out[:] = 0
        return out
    if x.shape[0] < 1 << 16:
        return np.searchsorted(b, x, side="left").astype(np.int64)
    lo, hi = float(x.min()), float(x.max())
    nb = 1 << 16
    if not hi > lo:
        out[:] = np.searchsorted(b, lo, side="left")
        return out
    width = (hi - lo) / nb
    edges = lo + np.arange(nb + 1) * width
    lab_lo = np.searchsorted(b, edges[:-1] - width, side="left")
    lab_hi = np.searchsorted(b, edges[1:] + width, side="left")
    lut = lab_lo.astype(np.int64)
    sure = lab_lo == lab_hi
    scale = 1.0 / width
    for s in range(0, x.shape[0], chunk):
        xc = x[s : s + chunk]
        i = _bin_index(xc, lo, scale, nb)
        lab = lut[i]
        unsure = np.flatnonzero(~sure[i])
        lab[unsure] = np.searchsorted(b, xc[unsure], side="left")
        out[s : s + chunk] = lab
    return out


def _bin_index(xc: np.ndarray, lo: float, scale: float, nb: int) -> np.ndarray:
    """Uniform bin of each value (int32). float32 data is binned in float32: its rounding error
    is ~1e-7 of the range, far below one of at most 2**20 bins; callers allow for a bin's slack."""
    if xc.dtype == np.float32:
        i = ((xc - np.float32(lo)) * np.float32(scale)).astype(np.int32)
    else:
        i = ((xc.astype(np.float64) - lo) * scale).astype(np.int32)
    np.clip(i, 0, nb - 1, out=i)
    return i


def inertia_1d(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of the values to their assigned centroids."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(np.sum((x - np.asarray(centroids, dtype=np.float64)[labels]) ** 2))


class _Sorted:
    """Lloyd statistics from sorted values: segment counts and sums via a prefix sum."""

    def __init__(self, x: np.ndarray):
        self.xs = x.astype(np.float64, copy=True)  # a copy sorted in place: no third array
        self.xs.sort()
        self.cs = np.empty(self.xs.shape[0] + 1, dtype=np.float64)
        self.cs[0] = 0.0
        np.cumsum(self.xs, out=self.cs[1:])

    def quantile(self, q: np.ndarray, exact_point: bool = False) -> np.ndarray:
        n = self.xs.shape[0]
        if exact_point:
            return self.xs[np.minimum((np.asarray(q) * n).astype(np.int64), n - 1)]
        return np.quantile(self.xs, q)

    def stats(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.xs.shape[0]
        edges = np.concatenate(([0], np.searchsorted(self.xs, b, side="right"), [n]))
        return np.diff(edges).astype(np.float64), np.diff(self.cs[edges])


class _Histogram:
    """Lloyd statistics from a fine uniform histogram (count and exact sum per bin)."""

    def __init__(self, x: np.ndarray, lo: float, hi: float, bins: int, chunk: int = 1 << 22):
        self.lo, self.width = lo, (hi - lo) / bins
        self.bins = bins
        counts = np.zeros(bins, dtype=np.int64)
        sums = np.zeros(bins, dtype=np.float64)
        scale = bins / (hi - lo)
        for s in range(0, x.shape[0], chunk):
            xc = x[s : s + chunk]
            i = _bin_index(xc, lo, scale, bins)
            counts += np.bincount(i, minlength=bins)
            sums += np.bincount(i, weights=xc, minlength=bins)
        self.ccount = np.concatenate(([0], np.cumsum(counts)))
        self.csum = np.concatenate(([0.0], np.cumsum(sums)))
        # Each bin is represented by the mean of its values (its centre when empty).
        centre = lo + (np.arange(bins) + 0.5) * self.width
        self.rep = np.where(counts > 0, sums / np.maximum(counts, 1), centre)

    def quantile(self, q: np.ndarray, exact_point: bool = False) -> np.ndarray:
        n = self.ccount[-1]
        pos = np.minimum((np.asarray(q) * n).astype(np.int64), n - 1)
        return self.rep[np.searchsorted(self.ccount, pos, side="right") - 1]

    def stats(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The bins whose mean is <= b go to the lower cluster (the means are increasing).
        cut = np.searchsorted(self.rep, b, side="right")
        edges = np.concatenate(([0], cut, [self.bins]))
        return np.diff(self.ccount[edges]).astype(np.float64), np.diff(self.csum[edges])


def kmeans_1d(
    values,
    k: int,
    *,
    init: str | CentroidInit = "linear",
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-9,
    method: str = "auto",
    bins: int = DEFAULT_BINS,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D `values` into `k` clusters with Lloyd's algorithm.

    Returns (centroids float64[k] sorted ascending, labels int64[n]). Iteration stops when no
    boundary moves a point (exact fixed point), when no centroid moves by more than
    tol * (max - min), or after `max_iter` iterations. `method` is "sorted" (exact), "histogram"
    (`bins` uniform bins) or "auto" (histogram above 2**25 values). See the module docstring.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k-means: k must be an integer >= 1, not {k!r}")
    if max_iter < 0:
        raise InputError(f"k-means: max_iter must be >= 0, not {max_iter!r}")
    if method not in ("auto", "sorted", "histogram"):
        raise InputError(f"k-means: method must be auto, sorted or histogram, not {method!r}")
    if bins < 1:
        raise InputError(f"k-means: bins must be >= 1, not {bins!r}")
    initf = make_init(init)
    x = np.asarray(values)
    if x.dtype.kind not in "fiub":
        raise InputError(f"k-means: values must be numeric, not {x.dtype}")
    x = x.reshape(-1)
    n = x.shape[0]
    if n == 0:
        raise InputError("k-means: no values to cluster")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InputError("k-means: values contain NaN or infinity")
    k = int(k)
    lo, hi = float(x.min()), float(x.max())

    if lo == hi:
        return np.full(k, lo, dtype=np.float64), np.zeros(n, dtype=np.int64)

    if method == "auto":
        method = "histogram" if n > AUTO_HISTOGRAM_ABOVE else "sorted"

    if method == "sorted":
        st = _Sorted(x)
        # Few distinct values: every value is its own centroid, which is optimal.
        d = 1 + int(np.count_nonzero(st.xs[1:] != st.xs[:-1]))
        if d <= k:
            distinct = np.unique(st.xs)
            c = np.concatenate((distinct, np.full(k - d, distinct[-1])))
            return c, np.searchsorted(distinct, x.astype(np.float64), side="left").astype(np.int64)
    else:
        st = _Histogram(x, lo, hi, bins)

    rng = np.random.default_rng(seed)
    c = np.sort(np.asarray(initf(lo, hi, k, st.quantile, rng), dtype=np.float64))
    if c.shape != (k,):
        raise AssertionError("init strategy returned the wrong shape")
    span = hi - lo
    prev_b = None
    for _ in range(max_iter):
        b = boundaries(c)
        counts, sums = st.stats(b)
        new = np.where(counts > 0, sums / np.maximum(counts, 1.0), c)
        new = np.sort(new)
        moved = float(np.max(np.abs(new - c))) if k else 0.0
        c = new
        if prev_b is not None and np.array_equal(counts, prev_b):
            # Same partition as last time: the centroids are the same means, a fixed point.
            break
        prev_b = counts
        if moved <= tol * span:
            break
    # a mean from prefix-sum differences can round an ulp past the values' range
    c = np.clip(c, lo, hi)
    return c, assign_1d(x, c)

