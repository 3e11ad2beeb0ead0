"""The sparse column format every engine image is made of (docs/rom-format.md).

A PE's slice of a layer is encoded column by column: an entry is (v, z), v the codebook index
(0 = filler) and z the number of zero rows before it in its column; a gap longer than
2**rel_bits - 1 gets filler entries (v = 0, z = 2**rel_bits - 1). `ptr` holds cols + 1 column
pointers. Physical row p of a layer lives in PE p % N as local row p // N (`pe_rows`).

Long fillers (`long_fillers`, the lockstep engine's one-map layout on the board, where entries
are 6 bits and rel_bits 2): a filler (v = 0, z) stands for 1 + z * 2**rel_bits rows instead of
1 + z (1, 5, 9, 13 at rel_bits 2), so a long gap takes about a quarter of the fillers; a
(0, 0) entry is still one row. A weight's z is as always.
"""

from __future__ import annotations

import numpy as np

DEFAULT_REL_BITS = 4


def encode_csc(matrix: np.ndarray, *, rel_bits: int = DEFAULT_REL_BITS,
               long_fillers: bool = False):
    """Encode a [rows, cols] matrix of codebook indices column by column.

    Returns (v, z, ptr): entry indices, zero counts (with fillers where a gap exceeds
    2**rel_bits - 1; `long_fillers`: see the module docstring) and cols + 1 column pointers
    starting at 0.
    """
    matrix = np.asarray(matrix)
    rows, cols = matrix.shape
    zmax = (1 << rel_bits) - 1
    c, r = np.nonzero(matrix.T)  # column-major order: by column, then row
    vals = matrix[r, c]
    first = np.ones(len(c), dtype=bool)
    first[1:] = c[1:] != c[:-1]
    prev = np.empty(len(r), dtype=np.int64)
    prev[first] = -1
    prev[~first] = r[:-1][~first[1:]]
    gap = r - prev - 1
    if long_fillers:
        return _encode_long(vals, gap, c, cols, rel_bits)
    fill = gap // (zmax + 1)
    n = len(r) + int(fill.sum())
    pos = np.arange(len(r)) + np.cumsum(fill)
    v = np.zeros(n, dtype=np.uint8)
    z = np.full(n, zmax, dtype=np.uint8 if rel_bits <= 8 else np.uint16)
    v[pos] = vals
    z[pos] = gap - fill * (zmax + 1)
    per_col = np.bincount(c, weights=1 + fill, minlength=cols).astype(np.int64)
    ptr = np.zeros(cols + 1, dtype=np.int64)
    np.cumsum(per_col, out=ptr[1:])
    return v, z, ptr


def _encode_long(vals, gap, c, cols: int, rel_bits: int):
    """`encode_csc` with long fillers: before a weight whose gap g exceeds 2**rel_bits - 1,
    fillers of z = min(zmax, (g - 1) >> rel_bits) (each 1 + z << rel_bits rows) until it
    does not."""
    zmax = (1 << rel_bits) - 1
    v_out, z_out, per_col = [], [], np.zeros(cols, dtype=np.int64)
    for val, g, col in zip(vals.tolist(), gap.tolist(), c.tolist()):
        while g > zmax:
            zf = min(zmax, (g - 1) >> rel_bits)
            v_out.append(0)
            z_out.append(zf)
            g -= 1 + (zf << rel_bits)
            per_col[col] += 1
        v_out.append(val)
        z_out.append(g)
        per_col[col] += 1
    ptr = np.zeros(cols + 1, dtype=np.int64)
    np.cumsum(per_col, out=ptr[1:])
    return (np.array(v_out, dtype=np.uint8),
            np.array(z_out, dtype=np.uint8 if rel_bits <= 8 else np.uint16), ptr)


def entry_steps(v: np.ndarray, z: np.ndarray, rel_bits: int, long_fillers: bool) -> np.ndarray:
    """The rows each entry moves a column's row on (its own included): z + 1, or for a long
    filler 1 + z << rel_bits."""
    z = np.asarray(z).astype(np.int64)
    if not long_fillers:
        return z + 1
    return np.where(np.asarray(v) == 0, 1 + (z << rel_bits), z + 1)


def decode_csc(v: np.ndarray, z: np.ndarray, ptr: np.ndarray, rows: int, *,
               rel_bits: int = DEFAULT_REL_BITS, long_fillers: bool = False) -> np.ndarray:
    """Rebuild the [rows, cols] index matrix from (v, z, ptr); ValueError if it does not fit."""
    v = np.asarray(v)
    z = np.asarray(z).astype(np.int64)
    ptr = np.asarray(ptr).astype(np.int64)
    cols = len(ptr) - 1
    if cols < 0 or ptr[0] != 0 or np.any(np.diff(ptr) < 0) or ptr[-1] != len(v):
        raise ValueError("column pointers are not a non-decreasing 0..len(entries) sequence")
    out = np.zeros((rows, cols), dtype=np.uint8)
    if len(v) == 0:
        return out
    col = np.repeat(np.arange(cols), np.diff(ptr))
    steps = np.cumsum(entry_steps(v, z, rel_bits, long_fillers))
    start = np.concatenate(([0], steps))[ptr[:-1]]  # running sum at each column's start
    row = steps - 1 - np.repeat(start, np.diff(ptr))
    if row.max() >= rows:
        raise ValueError(f"an entry addresses row {int(row.max())} of only {rows}")
    real = v != 0
    out[row[real], col[real]] = v[real]
    return out


def pe_rows(out_features: int, pes: int, pe: int) -> int:
    """Rows of a layer that PE `pe` holds (physical rows pe, pe + N, ...)."""
    return len(range(pe, out_features, pes))
