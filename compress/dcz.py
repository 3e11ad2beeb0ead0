"""The compressed model file (.dcz): a qnet stored as small as we honestly can.

Its size in bytes is the compressed size the project reports (docs/formats.md section 6).

Version 2 (written by default; version 1 files are read, and `pack(q, version=1)` writes
them) adds a second kind of layer section, tag b"A": the layer coded with an adaptive binary
arithmetic coder (`compress.entropy`) whose decisions use contexts: each position's
non-zero-or-not given its column's density so far and its left and up neighbours (a period
P gives "up" for image-like inputs), each weight index given its neighbours' indices, the
codebook as differences, the biases by whether their neuron has weights. The encoder codes
every layer both ways and keeps the smaller section. The exact layout of "A" sections is in
docs/dcz-format.md and at `_ac_encode`; what follows describes the Huffman section ("L"),
unchanged since version 1.

File layout (all integers in sections are bit-packed, MSB first; see `compress.huffman`)::

    magic    4 bytes  b"\\x89DCZ"
    version  1 byte   DCZ_VERSION
    section* tag (1 byte: b"H" header, b"L" layer), payload length (LEB128 varint),
             payload, crc32 of tag + length + payload (4 bytes, little endian)
    crc32 of every byte before it (4 bytes, little endian)

The header section holds input_frac (sint), the number of layers (eg) and one bit: 0 for a
qnet (a chain of fully connected layers, `pack` / `unpack`), 1 for a layer set (`pack_layers` /
`unpack_layers`: independent layers such as conv layers stored as [out, in*kh*kw] matrices),
followed for a layer set by each layer's original weight shape (eg ndim, eg dims). Then one
layer section per layer, in order. A layer section ("eg" = Exp-Golomb, "sint" = zigzag + eg)::

    eg out, eg in, eg shift, 1 bit relu, 1 bit scan (0: row-major index[out, in],
    1: column-major, i.e. input by input as the engine's CSC), eg K (codebook size)
    1 bit masked; if set, a row mask and a column mask of the live lines (see _write_mask):
                                 all-zero rows and columns (dead neurons, MNIST's border
                                 pixels) are cut out and the rest is coded as one matrix
    ints codebook[1:]            (see _write_ints: min, common trailing zeros, then fixed
                                 width or Rice, whichever is smaller)
    ints bias
    eg nnz                       non-zero (kept) weights
    eg M                         gap alphabet: symbols 0..M-1 are "this many zeros, then the
                                 next non-zero", symbol M is a filler: M zeros, keep going
    eg fillers                   number of filler symbols
    code lengths + stream        Huffman code of the nnz + fillers gap symbols, in scan order
    eg context map               how the weight tables are chosen (WEIGHT_CONTEXTS)
    per context: 1 bit used, code lengths if used (alphabet K-1)
    stream                       the nnz codebook indices minus one, each coded with the
                                 Huffman table of its context

The positions are the gaps between consecutive non-zeros of the whole matrix in scan order
(a gap runs on across the end of a column, so no column lengths are needed); zeros after the
last non-zero are implied by the shape. The encoder chooses the masks, the scan order, M and the
weight context map per layer by computing the exact size of every candidate and keeping the
smallest. A Huffman table is stored as its code lengths (see `compress.huffman.write_lengths`).

Integrity: every section has a crc32, the whole file a crc32; the decoder also checks every
count and range, so a truncated or corrupted file is refused with `InputError` naming the
problem (bad magic, unsupported version, truncated section, checksum mismatch in a section,
trailing bytes ...). `unpack(pack(q))` gives back exactly `q` (`QNet.equals`).

Bounds: the checksums only catch accidents, a crafted file carries valid ones. So every count
the decoder reads is checked against `compress.limits` and against the bits left before
anything of that size is allocated: layers, dimensions and total weights (max_layers, max_dim,
max_weights); the weights a file may declare for its size (dcz_free_weights +
dcz_weights_per_byte per byte: zeros and one-symbol codes cost no bits, so a few bytes could
otherwise declare gigabytes); code table sizes (max_code_table); a symbol count of a code with
two or more symbols is at most the bits left (each costs one bit or more); fillers stand for M
zeros each and must fit the matrix; context coding is refused above MAX_CONTEXT_NNZ non-zeros
as the encoder never uses it there.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import limits
from .atomic import write_bytes_atomic
from .entropy import INT_CONTEXTS, PROB_BITS, Decoder, Encoder, kt_bits, kt_counts
from .errors import InputError
from .huffman import (
    BitReader,
    BitWriter,
    HuffmanCode,
    _eg_bits,
    lengths_bits,
    read_lengths,
    write_lengths,
)
from .qnet import Layer, QNet, validate_layers

MAGIC = b"\x89DCZ"
DCZ_VERSION = 2  # written by default for fully connected qnets; versions 1 and 3 are read too
GEOMETRY_VERSION = 3  # written for a qnet that needs its conv geometry or [C, H, W] input
READ_VERSIONS = (1, 2, 3)
_TAG_HEADER = b"H"
_TAG_LAYER = b"L"  # Huffman-coded layer (versions 1 and 2)
_TAG_AC = b"A"  # arithmetic-coded layer (version 2)
_MAX_DIM = 1 << 28
_MAX_FIXED_INDEX_BITS = 16


# ---------------------------------------------------------------------------------------------
# Compact integer arrays


def _write_ints(w: BitWriter, a: np.ndarray) -> None:
    """Integers (codebook, biases) as d = (a - min) >> tz, tz their common trailing zero bits:
    sint min, eg tz, then 1 bit method and either 0: eg width, fixed-width fields; or
    1 (Rice, for bell-shaped values): eg median m, eg k, each zigzag(d - m) as unary quotient
    (q zeros, a one) and k low bits. The encoder writes whichever is smaller."""
    a = np.asarray(a, dtype=np.int64)
    if a.size == 0:
        return
    mn = int(a.min())
    d = (a - mn).astype(np.uint64)
    nz = d[d != 0]
    tz = int(_trailing_zeros(np.bitwise_or.reduce(nz))) if nz.size else 0
    d = (d >> np.uint64(tz)).astype(np.int64)
    w.write_sint(mn)
    w.write_eg(tz)
    width = int(d.max()).bit_length()
    fixed = _eg_bits(width) + width * d.size
    rice = _rice_plan(d)
    if rice is None or fixed <= rice[0]:
        w.write(0, 1)
        w.write_eg(width)
        if width <= 32:
            w.write_fields(d, width)
        else:  # not reachable for int16/int32 data, kept for completeness
            for v in d.tolist():
                w.write(int(v), width)
        return
    _, med, k, z = rice
    w.write(1, 1)
    w.write_eg(med)
    w.write_eg(k)
    q = z >> k
    # One field per value: q zeros, a one, then the k low bits (q + 1 + k <= 32 by _rice_plan).
    w._fields((np.uint64(1) << np.uint64(k)) | (z & ((1 << k) - 1)).astype(np.uint64), q + 1 + k)


def _rice_plan(d: np.ndarray):
    """(bits, median, k, zigzag values) of the cheapest Rice code, or None if none fits."""
    med = int(np.median(d))
    e = d - med
    z = np.where(e >= 0, 2 * e, -2 * e - 1)
    best = None
    for k in range(0, 32):
        q = z >> k
        if int(q.max()) + 1 + k > 32:
            continue
        bits = _eg_bits(med) + _eg_bits(k) + int((q + 1 + k).sum())
        if best is None or bits < best[0]:
            best = (bits, med, k, z)
    return best


def _trailing_zeros(v) -> int:
    v = int(v)
    return (v & -v).bit_length() - 1


def _read_ints(r: BitReader, n: int, lo: int, hi: int, what: str) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    mn = r.read_sint()
    tz = r.read_eg(limit=63)
    if not r.read(1):
        width = r.read_eg(limit=40)
        if n * width > len(r.bits) - r.pos:
            raise InputError(f"{r.what}: truncated {what} ({n} values of {width} bits)")
        if width <= 32:
            d = r.read_fields(n, width)
        else:
            d = np.array([r.read(width) for _ in range(n)], dtype=np.int64)
    else:
        med = r.read_eg(limit=1 << 40)
        k = r.read_eg(limit=31)
        if n * (k + 1) > len(r.bits) - r.pos:
            raise InputError(f"{r.what}: truncated {what} (Rice codes)")
        z = np.empty(n, dtype=np.int64)
        for i in range(n):
            start = r.pos
            try:
                one = r.bits.index(1, start, min(len(r.bits), start + 32))
            except ValueError:
                raise InputError(f"{r.what}: corrupt or truncated {what} (Rice code)") from None
            r.pos = one + 1
            z[i] = ((one - start) << k) | r.read(k)
        e = np.where(z & 1 == 0, z >> 1, -((z + 1) >> 1))
        d = e + med
        if d.size and int(d.min()) < 0:
            raise InputError(f"{r.what}: corrupt {what} (Rice values below the minimum)")
    if d.size and tz + max(int(d.max()).bit_length(), 1) > 40:
        raise InputError(f"{r.what}: corrupt {what} (values out of range)")
    a = mn + (d << tz)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise InputError(f"{r.what}: corrupt {what} (values outside {lo}..{hi})")
    return a


# ---------------------------------------------------------------------------------------------
# Positions: gaps between non-zeros with fillers


def gap_symbols(gaps: np.ndarray, m: int) -> np.ndarray:
    """Gap g -> g // m filler symbols (m) then g % m."""
    if gaps.size == 0 or int(gaps.max()) < m:
        return gaps  # no fillers: the gaps are the symbols
    q = gaps // m
    n_sym = q + 1
    ends = np.cumsum(n_sym) - 1
    syms = np.full(int(n_sym.sum()), m, dtype=np.int64)
    syms[ends] = gaps % m
    return syms


def _gap_cost(gaps: np.ndarray, m: int, hist: np.ndarray | None = None) -> tuple[int, HuffmanCode]:
    """Bits of the gap table and stream for literal alphabet m (from the gap histogram)."""
    if hist is None:
        hist = np.bincount(gaps)
    g = np.arange(hist.shape[0])
    counts = np.bincount(g % m, weights=hist, minlength=m).astype(np.int64)
    counts = np.append(counts, int(np.dot(hist, g // m)))
    code = HuffmanCode.from_counts(counts)
    return code.bits(counts) + lengths_bits(code.lengths), code


def best_gap_alphabet(gaps: np.ndarray) -> int:
    """The M (number of literal gap symbols) giving the fewest bits for table + stream."""
    if gaps.size == 0:
        return 1
    hist = np.bincount(gaps)
    top = hist.shape[0]  # M = max gap + 1 needs no fillers; larger M never pays

    def cost(m):
        return (_gap_cost(gaps, m, hist)[0], m)

    cand = set(range(1, min(top, 64) + 1))
    cand |= {int(round(x)) for x in np.geomspace(1, top, 48)}
    best = min(cost(m) for m in cand)[1]
    # Refine around the best coarse candidate.
    lo, hi = max(1, int(best * 0.85)), min(top, int(best * 1.15) + 1)
    return min(cost(m) for m in range(lo, hi + 1, max(1, (hi - lo) // 64)))[1]


def _runs(mask: np.ndarray) -> np.ndarray:
    change = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    return np.diff(np.concatenate(([0], change, [mask.shape[0]])))


def _mask_bits(mask: np.ndarray) -> int:
    w = BitWriter()
    _write_mask(w, mask)
    return w.nbits


def _write_mask(w: BitWriter, mask: np.ndarray) -> None:
    """1 bit all-live; else 1 bit method: 0 raw bits, 1 first bit + run lengths (eg r-1)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all():
        w.write(1, 1)
        return
    w.write(0, 1)
    runs = _runs(mask)
    run_bits = 1 + int((2 * np.floor(np.log2(runs)).astype(np.int64) + 1).sum())
    if mask.shape[0] <= run_bits:
        w.write(0, 1)
        w.write_fields(mask.astype(np.uint64), 1)
    else:
        w.write(1, 1)
        w.write(int(mask[0]), 1)
        for r in runs.tolist():
            w.write_eg(r - 1)


def _read_mask(r: BitReader, n: int) -> np.ndarray:
    if r.read(1):
        return np.ones(n, dtype=bool)
    if not r.read(1):
        return r.read_fields(n, 1).astype(bool)
    value = bool(r.read(1))
    out = np.empty(n, dtype=bool)
    i = 0
    while i < n:
        run = r.read_eg(limit=n - i - 1) + 1
        out[i : i + run] = value
        value = not value
        i += run
    return out


def _scan(index: np.ndarray, col_major: bool) -> np.ndarray:
    return (index.T if col_major else index).reshape(-1)


def _gaps(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nz = np.flatnonzero(flat)
    gaps = np.diff(nz, prepend=-1)
    gaps -= 1
    return nz, gaps


# ---------------------------------------------------------------------------------------------
# Layers


# Weight contexts: the table coding a weight index is chosen by ctx_map[adjacent][previous],
# "adjacent" = the previous position in scan order is a non-zero too (gap 0), "previous" = the
# previous non-zero's index minus one (the alphabet size K-1 before the first). Neighbouring
# inputs of a trained layer (pixels of a receptive field) have similar weights, so a context
# on the previous weight pays; the encoder keeps whichever map gives the smallest layer.
# Context-coded streams decode in a Python loop (~1 us a symbol): above this many non-zeros a
# layer uses one table, which bitarray decodes in C.
MAX_CONTEXT_NNZ = 1 << 23
WEIGHT_CONTEXTS = ("none", "adjacent", "previous", "previous-if-adjacent", "previous-and-adjacent")


def _ctx_map(scheme: int, k1: int) -> np.ndarray:
    prev = np.arange(k1 + 1)
    m = np.zeros((2, k1 + 1), dtype=np.int64)
    if scheme == 1:
        m[1] = 1
    elif scheme == 2:
        m[:] = prev
    elif scheme == 3:
        m[0], m[1] = k1, prev
    elif scheme == 4:
        m[0], m[1] = k1 + 1 + prev, prev
    return m


def _weight_plan(wsym: np.ndarray, gaps: np.ndarray, k1: int, schemes=range(5)):
    """(bits, scheme, contexts or None for one table, codes) of the cheapest weight coding."""
    prev = adj = None
    best = None
    for scheme in schemes:
        if scheme == 0:
            ctx = None
            counts = np.bincount(wsym, minlength=k1)[None, :k1] if k1 else np.zeros((1, 0), int)
        else:
            if prev is None:
                prev = np.concatenate(([k1], wsym[:-1])) if wsym.size else wsym
                adj = (gaps == 0).astype(np.int64)
            cmap = _ctx_map(scheme, k1)
            n_ctx = int(cmap.max()) + 1
            ctx = cmap[adj, prev] if wsym.size else wsym
            counts = np.bincount(ctx * k1 + wsym, minlength=n_ctx * k1).reshape(n_ctx, k1)
        codes = [HuffmanCode.from_counts(c) for c in counts]
        bits = _eg_bits(scheme) + sum(
            1 + (lengths_bits(c.lengths) if cnt.any() else 0) + c.bits(cnt)
            for c, cnt in zip(codes, counts)
        )
        if best is None or bits < best[0]:
            best = (bits, scheme, ctx, codes)
    return best


def _scan_cost(index: np.ndarray, col_major: bool, k1: int, schemes) -> int:
    flat = _scan(index, col_major)
    nz, gaps = _gaps(flat)
    wsym = flat[nz].astype(np.int64)
    wsym -= 1
    del flat, nz
    return _gap_cost(gaps, best_gap_alphabet(gaps))[0] + _weight_plan(wsym, gaps, k1, schemes)[0]


def _encode_layer(layer: Layer) -> tuple[bytes, dict]:
    """The layer section payload and the sizes of its parts (in bits)."""
    k = int(layer.codebook.shape[0])
    k1 = max(k - 1, 0)
    schemes = range(len(WEIGHT_CONTEXTS)) if layer.index.size and np.count_nonzero(
        layer.index
    ) <= MAX_CONTEXT_NNZ else (0,)
    index = layer.index
    row_live, col_live = index.any(axis=1), index.any(axis=0)
    masked_options = [False] if row_live.all() and col_live.all() else [False, True]
    costs = {}
    for masked in masked_options:
        # Dead lines (all-zero rows or columns, e.g. MNIST's border pixels) are cut out and
        # given as masks when that is smaller; then the scan order with the fewest bits.
        sub = index[np.ix_(row_live, col_live)] if masked else index
        extra = _mask_bits(row_live) + _mask_bits(col_live) if masked else 0
        for col_major in (True, False):
            costs[masked, col_major] = _scan_cost(sub, col_major, k1, schemes) + extra
    masked, col_major = min(costs, key=lambda c: (costs[c], c[0], not c[1]))
    sub = index[np.ix_(row_live, col_live)] if masked else index
    flat = _scan(sub, col_major)
    nz, gaps = _gaps(flat)
    m = best_gap_alphabet(gaps)
    wsym = flat[nz].astype(np.int64)
    wsym -= 1
    nnz = int(nz.shape[0])
    del flat, sub, nz
    _, scheme, ctx, codes = _weight_plan(wsym, gaps, k1, schemes)

    w = BitWriter()
    sizes = {}
    mark = 0

    def part(name):
        nonlocal mark
        sizes[name] = w.nbits - mark
        mark = w.nbits

    _write_layer_head(w, layer, col_major, k, masked, row_live, col_live)
    part("shape")
    _write_ints(w, layer.codebook[1:])
    part("codebook")
    _write_ints(w, layer.bias)
    part("bias")
    w.write_eg(nnz)
    gsym = gap_symbols(gaps, m)
    gcode = HuffmanCode.from_symbols(gsym, m + 1)
    w.write_eg(m)
    n_fill = int(gsym.shape[0] - nnz)
    w.write_eg(n_fill)
    write_lengths(w, gcode.lengths)
    part("index_table")
    w.write_symbols(gsym, gcode)
    part("index_stream")
    w.write_eg(scheme)
    for c in codes:
        used = bool(c.num_used)
        w.write(int(used), 1)
        if used:
            write_lengths(w, c.lengths)
    part("weight_table")
    if ctx is None:
        w.write_symbols(wsym, codes[0])
    else:
        w.write_symbols_ctx(wsym, ctx, codes)
    part("weight_stream")
    w.align()
    part("padding")
    info = {
        "scan": "column" if col_major else "row",
        "gap_alphabet": m,
        "weight_context": WEIGHT_CONTEXTS[scheme],
        "nnz": nnz,
        "fillers": n_fill,
        "bits": sizes,
        "gaps": gaps,
    }
    return w.getvalue(), info


class _Budget:
    """The weights a file may still declare: max_weights in all, and dcz_free_weights +
    dcz_weights_per_byte per byte of the file (see the module docstring)."""

    def __init__(self, nbytes: int):
        lim = limits.get()
        self.total = 0
        self.nbytes = nbytes
        self.max_weights = lim.max_weights
        self.ratio_cap = lim.dcz_free_weights + lim.dcz_weights_per_byte * nbytes

    def take(self, weights: int, what: str) -> None:
        self.total += weights
        limits.check("max_weights", self.total, f"{what}: total weights")
        if self.total > self.ratio_cap:
            lim = limits.get()
            raise InputError(
                f"{what}: declares {self.total:,} weights in a file of {self.nbytes:,} bytes, "
                f"more than dcz_free_weights + dcz_weights_per_byte x bytes = "
                f"{lim.dcz_free_weights:,} + {lim.dcz_weights_per_byte:,} x {self.nbytes:,} "
                f"(a decompression bomb, or an almost empty network: "
                f"{limits.how_to_raise('dcz_weights_per_byte')})"
            )


def _write_layer_head(w: BitWriter, layer: Layer, col_major: bool, k: int, masked: bool,
                      row_live: np.ndarray, col_live: np.ndarray) -> None:
    """The fields every layer section starts with (what _read_layer_head reads), then the
    live-line masks when the layer is masked."""
    out_f, in_f = layer.index.shape
    w.write_eg(out_f)
    w.write_eg(in_f)
    w.write_eg(int(layer.shift))
    w.write(int(bool(layer.relu)), 1)
    w.write(int(col_major), 1)
    w.write_eg(k)
    w.write(int(masked), 1)
    if masked:
        _write_mask(w, row_live)
        _write_mask(w, col_live)


def _read_layer_head(r: "BitReader", what: str, payload: bytes, budget: "_Budget | None"):
    """The fields every layer section starts with, checked (shape against the limits and the
    file's weight budget before anything is allocated): out, in, shift, relu, column-major,
    codebook size, masked."""
    out_f = r.read_eg(limit=_MAX_DIM)
    in_f = r.read_eg(limit=_MAX_DIM)
    if out_f < 1 or in_f < 1 or out_f * in_f > 1 << 32:
        raise InputError(f"{what}: corrupt shape [{out_f}, {in_f}]")
    limits.check("max_dim", max(out_f, in_f), f"{what}: layer dimension")
    (budget or _Budget(len(payload))).take(out_f * in_f, f"{what} ([{out_f}, {in_f}])")
    shift = r.read_eg(limit=62)
    relu = bool(r.read(1))
    col_major = bool(r.read(1))
    k = r.read_eg(limit=256)
    if k < 1:
        raise InputError(f"{what}: corrupt codebook size {k}")
    return out_f, in_f, shift, relu, col_major, k, bool(r.read(1))


def _decode_layer(payload: bytes, i: int, budget: "_Budget | None" = None,
                  parts: dict | None = None) -> Layer:
    """A Huffman-coded layer section; `parts` (a dict) receives the bits of each of its parts
    (the encoder's `bits`), read off the stream as it is decoded."""
    what = f"section layer {i}"
    r = BitReader(payload, what)
    mark = [0]

    def part(name):
        if parts is not None:
            parts[name] = r.pos - mark[0]
            mark[0] = r.pos

    out_f, in_f, shift, relu, col_major, k, masked = _read_layer_head(r, what, payload, budget)
    if masked:
        row_live, col_live = _read_mask(r, out_f), _read_mask(r, in_f)
    else:
        row_live, col_live = np.ones(out_f, dtype=bool), np.ones(in_f, dtype=bool)
    part("shape")
    n_r, n_c = int(row_live.sum()), int(col_live.sum())
    k1 = k - 1
    codebook = np.zeros(k, dtype=np.int16)
    codebook[1:] = _read_ints(r, k1, -32768, 32767, "codebook")
    part("codebook")
    bias = _read_ints(r, out_f, -(1 << 31), (1 << 31) - 1, "bias").astype(np.int32)
    part("bias")
    nnz = r.read_eg(limit=n_r * n_c)
    if nnz and k < 2:
        raise InputError(f"{what}: non-zero weights but a codebook of size {k}")
    m = r.read_eg(limit=n_r * n_c + 1)
    if m < 1:
        raise InputError(f"{what}: corrupt gap alphabet size {m}")
    limits.check("max_code_table", m + 1, f"{what}: gap code table")
    fillers = r.read_eg(limit=n_r * n_c)
    # Each filler stands for m zeros and each non-zero takes a position: all within the matrix.
    if fillers and (not nnz or fillers * m + nnz > n_r * n_c):
        raise InputError(f"{what}: corrupt index stream ({fillers} fillers of {m} zeros "
                         f"for {nnz} non-zeros in {n_r * n_c} positions)")
    gcode = read_lengths(r, m + 1)
    part("index_table")
    if gcode.num_used == 1:  # a one-symbol code costs no bits: check what it implies first
        s = int(np.flatnonzero(gcode.lengths)[0])
        if nnz and (s == m or fillers or nnz * (s + 1) > n_r * n_c):
            raise InputError(f"{what}: corrupt index stream (one-symbol code {s} cannot place "
                             f"{nnz} non-zeros and {fillers} fillers)")
    gsym = r.read_symbols(nnz + fillers, gcode)
    part("index_stream")
    is_fill = gsym == m
    if int(np.count_nonzero(is_fill)) != fillers:
        raise InputError(f"{what}: corrupt index stream (filler count does not match)")
    if nnz and is_fill[-1]:
        raise InputError(f"{what}: corrupt index stream (ends with a filler)")
    # Positions: cumulative steps (m for a filler, gap + 1 otherwise), computed in place.
    gsym += 1
    if fillers:
        gsym[is_fill] = m
    np.cumsum(gsym, out=gsym)
    pos = gsym[~is_fill] if fillers else gsym
    del is_fill
    pos -= 1
    if nnz and int(pos[-1]) >= n_r * n_c:
        raise InputError(f"{what}: corrupt index stream (position beyond the matrix)")
    scheme = r.read_eg(limit=len(WEIGHT_CONTEXTS) - 1)
    if scheme and nnz > MAX_CONTEXT_NNZ:
        raise InputError(f"{what}: corrupt (context-coded weights for {nnz:,} non-zeros, "
                         f"the format allows it up to {MAX_CONTEXT_NNZ:,})")
    cmap = _ctx_map(scheme, k1)
    codes = []
    for _ in range(int(cmap.max()) + 1):
        codes.append(read_lengths(r, k1) if r.read(1) else HuffmanCode(np.zeros(k1, np.uint8)))
    part("weight_table")
    if scheme == 0:
        wsym = r.read_symbols(nnz, codes[0])
    else:
        adj = np.diff(pos, prepend=-1) == 1
        wsym = r.read_symbols_ctx(nnz, codes, adj, cmap)
        del adj
    part("weight_stream")
    if len(r.bits) - r.pos >= 8 or r.bits[r.pos :].any():
        raise InputError(f"{what}: corrupt (unexpected bits after the weight stream)")
    if parts is not None:
        parts["padding"] = len(r.bits) - r.pos
    flat = np.zeros(n_r * n_c, dtype=np.uint8)
    wsym += 1
    flat[pos] = wsym
    del pos, wsym
    sub = flat.reshape(n_c, n_r).T if col_major else flat.reshape(n_r, n_c)
    if n_r == out_f and n_c == in_f:
        index = np.ascontiguousarray(sub)
    else:
        index = np.zeros((out_f, in_f), dtype=np.uint8)
        index[np.ix_(row_live, col_live)] = sub
    if masked and (
        not index.any(axis=1)[row_live].all() or not index.any(axis=0)[col_live].all()
    ):
        raise InputError(f"{what}: corrupt (a line marked live holds no non-zero)")
    return Layer(codebook=codebook, index=index, bias=bias, shift=int(shift), relu=relu)


# ---------------------------------------------------------------------------------------------
# Version 2: arithmetic-coded layers (section tag "A"; see compress/entropy.py for the coder)

# An arithmetic-coded layer decodes one decision at a time in Python (~1.5 us each), so it is
# only used, and only accepted, where that stays fast and where the file's size bounds the work:
# at most AC_MAX_POSITIONS live positions, and at most AC_FREE_POSITIONS +
# AC_POSITIONS_PER_BYTE per byte of the section. Larger or sparser layers use Huffman ("L").
AC_MAX_POSITIONS = 1 << 22
AC_FREE_POSITIONS = 1 << 14
AC_POSITIONS_PER_BYTE = 256
WEIGHT_MODELS = ("none", "left", "left-and-up")
_DENSITY_BUCKETS = 9  # d = min(bit length of floor(256 * density estimate), 8)
_N_POS_CTX = _DENSITY_BUCKETS * 4


def _ac_allowed(live_positions: int, payload_bytes: int) -> bool:
    return live_positions <= min(
        AC_MAX_POSITIONS, AC_FREE_POSITIONS + AC_POSITIONS_PER_BYTE * payload_bytes
    )


def _neighbours(n_pos: int, period: int) -> tuple[np.ndarray, np.ndarray]:
    """Per position j of a line: the position of its left and up neighbour, or n_pos (a slot
    that always reads 0) where there is none. Left is j - 1 unless j starts a line of the
    period; up is j - period (period 0: no up)."""
    j = np.arange(n_pos)
    left = np.where((j >= 1) & ((j % period != 0) if period else True), j - 1, n_pos)
    up = np.where((j >= period) & (period > 0), j - period, n_pos)
    return left, up


def _wbucket(v: np.ndarray, k1: int) -> np.ndarray:
    """0 for a zero weight, else 1..3 by where its index falls in 1..K-1."""
    return np.where(v == 0, 0, 1 + ((v - 1) * 3) // max(k1, 1))


def _density_bucket(cnt: np.ndarray, lines: np.ndarray) -> np.ndarray:
    t = ((2 * cnt + 1) << 8) // (2 * lines + 2)
    return sum((t >= (1 << b)).astype(np.int64) for b in range(_DENSITY_BUCKETS - 1))


def _ac_neighbour_values(m: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """The index values of every position's left and up neighbour ([lines, positions])."""
    n_l, n_p = m.shape
    left, up = _neighbours(n_p, period)
    padded = np.concatenate([m, np.zeros((n_l, 1), m.dtype)], axis=1).astype(np.int64)
    return padded[:, left], padded[:, up]


def _ac_density(nzm: np.ndarray) -> np.ndarray:
    """Density bucket of each position of the live lines nzm (0/1, dead lines removed)."""
    cnt = np.cumsum(nzm, axis=0, dtype=np.int64) - nzm
    return _density_bucket(cnt, np.arange(nzm.shape[0], dtype=np.int64)[:, None])


def _ac_pos_contexts(m: np.ndarray, live_p: np.ndarray, period: int):
    """Position contexts of the live lines m ([lines, positions], dead lines removed), the
    0/1 matrix of non-zeros at the live positions, and every position's neighbour values."""
    lv, uv = _ac_neighbour_values(m, period)
    nzm = (m != 0).astype(np.int64)
    ctx = _ac_density(nzm) * 4 + (lv != 0) * 2 + (uv != 0)
    return ctx[:, live_p], nzm[:, live_p], lv, uv


def _tree_decisions(sym: np.ndarray, ctx: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """(contexts, bits) of coding sym in nb bits, MSB first, node by node (ctx * 2**nb + node)."""
    ctxs, bits = [], []
    node = np.ones_like(sym)
    for i in range(nb - 1, -1, -1):
        b = (sym >> i) & 1
        ctxs.append(ctx * (1 << nb) + node)
        bits.append(b)
        node = node * 2 + b
    if not ctxs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ctxs), np.concatenate(bits)


def _weight_ctx(model: int, lv: np.ndarray, uv: np.ndarray, k1: int) -> np.ndarray:
    if model == 0:
        return np.zeros_like(lv)
    if model == 1:
        return _wbucket(lv, k1)
    return _wbucket(lv, k1) * 4 + _wbucket(uv, k1)


def _periods(n_pos: int) -> list[int]:
    """Candidate periods: none, and the divisors of the line length up to 64 (an image row
    of a flattened input, a kernel row of a conv layer's [out, in * kh * kw] matrix)."""
    return [0] + [p for p in range(2, min(64, n_pos // 2) + 1) if n_pos % p == 0]


_PLAN_SAMPLE = 1 << 18  # positions: a larger layer is planned on a sample of its lines


def _ac_plan(layer: Layer) -> tuple[dict, float] | None:
    """The cheapest arithmetic-coding choice for a layer and its estimated bits (positions,
    indices and masks, by `kt_bits`), or None if the layer is too large for one. A layer of
    more than _PLAN_SAMPLE positions is planned on every step-th line (the choice only needs
    relative costs), then the choice is priced in full."""
    index = layer.index
    k = int(layer.codebook.shape[0])
    if k < 2 or not index.any():
        if k >= 2 and index.size > AC_MAX_POSITIONS:
            return None
        return {"col_major": False, "masked": False, "period": 0, "wmodel": 0}, 0.0
    row_live, col_live = index.any(axis=1), index.any(axis=0)
    step = -(-index.size // _PLAN_SAMPLE)
    best = None
    for col_major in (False, True):
        got = _ac_search(index, k, row_live, col_live, col_major, step)
        if got is not None and (best is None or got[1] < best[1] - 1e-9):
            best = got
    if best is not None and step > 1:
        best = _ac_search(index, k, row_live, col_live, best[0]["col_major"], 1, only=best[0])
    return best


def _ac_search(index, k, row_live, col_live, col_major, step, only=None):
    """Best (choice, bits) for one scan order, on every step-th line; `only`: price one."""
    k1 = k - 1
    nb = (k - 2).bit_length()
    m = index.T if col_major else index
    live_l, live_p = (col_live, row_live) if col_major else (row_live, col_live)
    all_live = bool(row_live.all() and col_live.all())
    options = []
    for masked in (False,) if all_live else (False, True):
        if only is not None and masked != only["masked"]:
            continue
        ll = live_l if masked else np.ones_like(live_l)
        lp = live_p if masked else np.ones_like(live_p)
        if int(ll.sum()) * int(lp.sum()) > AC_MAX_POSITIONS:
            continue
        extra = (_mask_bits(row_live) + _mask_bits(col_live)) / step if masked else 0
        sub = m[ll][::step]
        nzm = (sub != 0).astype(np.int64)
        options.append((masked, sub, lp, extra, _ac_density(nzm)[:, lp] * 4, nzm[:, lp]))
    best = None
    periods = _periods(m.shape[1]) if only is None else [only["period"]]
    for period in periods:
        for masked, sub, lp, extra, dens, bits in options:
            # Weights are priced on the same lines (their cost does not depend on masks).
            lv, uv = _ac_neighbour_values(sub, period)
            nz = sub != 0
            sym = sub[nz].astype(np.int64) - 1
            models = range(3 if period else 2) if only is None else [only["wmodel"]]
            wcost = min(
                (kt_bits(*_tree_decisions(sym, _weight_ctx(wm, lv[nz], uv[nz], k1), nb)), wm)
                for wm in models
            )
            nbr = (lv[:, lp] != 0) * 2 + (uv[:, lp] != 0)
            cost = kt_bits(dens + nbr, bits, _N_POS_CTX) + wcost[0] + extra
            if best is None or cost < best[1] - 1e-9:
                best = ({"col_major": col_major, "masked": masked, "period": period,
                         "wmodel": wcost[1]}, cost)
    return best


def _ac_encode(layer: Layer, choice: dict) -> tuple[bytes, dict]:
    """The "A" section payload for a choice, and the bits of its parts."""
    index = layer.index
    k = int(layer.codebook.shape[0])
    k1 = k - 1
    col_major, masked, period, wmodel = (choice[x] for x in ("col_major", "masked", "period",
                                                                 "wmodel"))
    row_live, col_live = index.any(axis=1), index.any(axis=0)
    w = BitWriter()
    _write_layer_head(w, layer, col_major, k, masked, row_live, col_live)
    w.write_eg(period)
    w.write_eg(wmodel)
    w.align()
    head = w.getvalue()

    enc = Encoder()
    _ac_put_codebook(enc, layer.codebook)
    if k >= 2:
        m = index.T if col_major else index
        live_l, live_p = (col_live, row_live) if col_major else (row_live, col_live)
        if not masked:
            live_l, live_p = np.ones_like(live_l), np.ones_like(live_p)
        est = _ac_put_matrix(enc, m, live_l, live_p, period, wmodel, k1)
    else:
        est = {}
    _ac_put_bias(enc, layer.bias, row_live)
    body = enc.finish()
    parts = {"header": 8 * len(head), "codebook": 0.0, "bias": 0.0, "positions": 0.0,
             "indices": 0.0}
    parts.update(enc.cost)
    parts.update(est)
    # The coder's own overhead (termination, rounding) goes to the positions, the largest part.
    parts["positions"] += 8 * len(body) - sum(v for k, v in parts.items() if k != "header")
    return head + body, parts


def _ac_put_codebook(enc: Encoder, codebook: np.ndarray) -> None:
    enc.part = "codebook"
    first, delta = enc.grow(INT_CONTEXTS), enc.grow(INT_CONTEXTS)
    cb = codebook.astype(np.int64).tolist()
    for i in range(1, len(cb)):
        enc.put_sint(cb[i] - (cb[i - 1] if i > 1 else 0), first if i == 1 else delta)


def _ac_get_codebook(dec: Decoder, k: int, what: str) -> np.ndarray:
    first, delta = dec.grow(INT_CONTEXTS), dec.grow(INT_CONTEXTS)
    cb = [0] * k
    for i in range(1, k):
        cb[i] = dec.get_sint(first if i == 1 else delta) + (cb[i - 1] if i > 1 else 0)
        if not -32768 <= cb[i] <= 32767:
            raise InputError(f"{what}: corrupt codebook (value {cb[i]} outside int16)")
    return np.array(cb, dtype=np.int16)


def _ac_put_bias(enc: Encoder, bias: np.ndarray, row_live: np.ndarray) -> None:
    """Common trailing zero bits tz, then each bias >> tz (zigzag) in one of two integer
    models: neurons with weights, and neurons without (whose bias is often 0)."""
    enc.part = "bias"
    b = bias.astype(np.int64)
    nz = b[b != 0]
    tz = _trailing_zeros(np.bitwise_or.reduce(nz)) if nz.size else 0
    tzm, live, dead = enc.grow(INT_CONTEXTS), enc.grow(INT_CONTEXTS), enc.grow(INT_CONTEXTS)
    enc.put_int(tz, tzm)
    for v, lv in zip((b >> tz).tolist(), row_live.tolist()):
        enc.put_sint(v, live if lv else dead)


def _ac_get_bias(dec: Decoder, row_live: np.ndarray, what: str) -> np.ndarray:
    tzm, live, dead = dec.grow(INT_CONTEXTS), dec.grow(INT_CONTEXTS), dec.grow(INT_CONTEXTS)
    tz = dec.get_int(tzm)
    if tz > 31:
        raise InputError(f"{what}: corrupt bias (trailing zeros {tz})")
    out = [0] * row_live.shape[0]
    lo, hi = -(1 << 31), (1 << 31) - 1
    for i, lv in enumerate(row_live.tolist()):
        v = dec.get_sint(live if lv else dead) << tz
        if not lo <= v <= hi:
            raise InputError(f"{what}: corrupt bias (value {v} outside int32)")
        out[i] = v
    return np.array(out, dtype=np.int32)


def _ac_put_matrix(enc, m, live_l, live_p, period, wmodel, k1) -> dict:
    """Positions and weights, interleaved in scan order (see the module docstring); returns
    the estimated bits of each (`kt_bits`, for `info`)."""
    nb = (k1 - 1).bit_length()
    pbase = enc.grow(_N_POS_CTX)
    wbase = enc.grow((16 if wmodel == 2 else 4) << nb)
    sub = m[live_l]
    ctx, bits, lv, uv = _ac_pos_contexts(sub, live_p, period)
    jj = np.flatnonzero(live_p)
    vals = sub[:, jj].astype(np.int64).reshape(-1)
    wc = _weight_ctx(wmodel, lv[:, jj], uv[:, jj], k1).reshape(-1)
    # Decisions in order: per live position its bit, and after a 1 the weight's nb tree bits.
    nzv = vals != 0
    sym = vals[nzv] - 1
    tctx, tbits = _tree_decisions(sym, wc[nzv], nb)  # grouped by tree level
    per = 1 + nb * nzv.astype(np.int64)
    start = np.cumsum(per) - per
    n = int(per.sum())
    all_ctx = np.empty(n, dtype=np.int64)
    all_bits = np.empty(n, dtype=np.int64)
    all_ctx[start] = ctx.reshape(-1) + pbase
    all_bits[start] = nzv
    first = start[nzv] + 1
    n_w = sym.shape[0]
    for level in range(nb):
        all_ctx[first + level] = tctx[level * n_w : (level + 1) * n_w] + wbase
        all_bits[first + level] = tbits[level * n_w : (level + 1) * n_w]
    enc.bits(all_bits.tolist(), all_ctx.tolist())
    return {"positions": kt_bits(ctx, bits), "indices": kt_bits(tctx, tbits)}


def _ac_get_matrix(dec, n_l, n_p, live_l, live_p, period, wmodel, k1, what) -> np.ndarray:
    """Inverse of `_ac_put_matrix`: the decoder's loop with the coder inlined (this is where
    a .dcz spends its decoding time, ~1 us a decision)."""
    nb = (k1 - 1).bit_length()
    pbase = dec.grow(_N_POS_CTX)
    wbase = dec.grow((16 if wmodel == 2 else 4) << nb)
    left, up = (a.tolist() for a in _neighbours(n_p, period))
    out = np.zeros((n_l, n_p), dtype=np.uint8)
    cnt = [0] * n_p
    bucket = [0] + [1 + ((v - 1) * 3) // max(k1, 1) for v in range(1, k1 + 1)]
    jj = np.flatnonzero(live_p).tolist()
    n0s, n1s = dec.n0, dec.n1
    code, rng, pos, data = dec.code, dec.range, dec.pos, dec.data
    size = len(data)
    PB, PMAX, TOP = PROB_BITS, (1 << PROB_BITS) - 1, 1 << 24
    lines = 0
    top = 1 << nb
    for li in np.flatnonzero(live_l).tolist():
        cur = [0] * (n_p + 1)
        denom = 2 * lines + 2
        for j in jj:
            lv, uv = cur[left[j]], cur[up[j]]
            d = (((2 * cnt[j] + 1) << 8) // denom).bit_length()
            c = pbase + (32 if d > 8 else d * 4) + (2 if lv else 0) + (1 if uv else 0)
            # One decision, inlined: node = 1 is the position bit, then the weight's tree bits.
            node = 0
            while True:
                n0, n1 = n0s[c], n1s[c]
                p0 = ((2 * n0 + 1) << PB) // (2 * (n0 + n1) + 2)
                p0 = 1 if p0 < 1 else (PMAX if p0 > PMAX else p0)
                bound = (rng >> PB) * p0
                if code < bound:
                    rng = bound
                    n0s[c] = n0 + 1
                    b = 0
                else:
                    code -= bound
                    rng -= bound
                    n1s[c] = n1 + 1
                    b = 1
                while rng < TOP:
                    rng <<= 8
                    code = (code << 8) | (data[pos] if pos < size else 0)
                    pos += 1
                if node == 0:  # the position bit
                    if not b:
                        break
                    cnt[j] += 1
                    if not nb:
                        node = top
                        break
                    if wmodel == 0:
                        wc = 0
                    elif wmodel == 1:
                        wc = bucket[lv]
                    else:
                        wc = bucket[lv] * 4 + bucket[uv]
                    base = wbase + (wc << nb)
                    node = 1
                else:
                    node = 2 * node + b
                    if node >= top:
                        break
                c = base + node
            if node:
                s = node - top
                if s >= k1:
                    raise InputError(f"{what}: corrupt weight index {s + 1} (codebook "
                                     f"of {k1 + 1})")
                cur[j] = s + 1
        lines += 1
        out[li] = cur[:n_p]
    dec.code, dec.range, dec.pos = code, rng, pos
    return out


def _ac_decode_layer(payload: bytes, i: int, budget: "_Budget | None" = None,
                     want_choice: bool = False, parts: dict | None = None):
    """An arithmetic-coded layer section; `parts` (a dict) receives the bits of each part as
    `_ac_encode` counts them: the coder's own accounting of the codebook and biases, and the
    positions' and indices' information content from the contexts' final counts (which is all
    `kt_bits` needs)."""
    what = f"section layer {i}"
    r = BitReader(payload, what)
    out_f, in_f, shift, relu, col_major, k, masked = _read_layer_head(r, what, payload, budget)
    if masked:
        if k < 2:
            raise InputError(f"{what}: corrupt (line masks for a codebook of size {k})")
        row_live, col_live = _read_mask(r, out_f), _read_mask(r, in_f)
    else:
        row_live, col_live = np.ones(out_f, dtype=bool), np.ones(in_f, dtype=bool)
    n_l, n_p = (in_f, out_f) if col_major else (out_f, in_f)
    live_l, live_p = (col_live, row_live) if col_major else (row_live, col_live)
    period = r.read_eg(limit=n_p)
    wmodel = r.read_eg(limit=len(WEIGHT_MODELS) - 1)
    pad_end = (r.pos + 7) // 8 * 8
    if pad_end > len(r.bits):
        raise InputError(f"{what}: truncated (ends in its header)")
    if r.bits[r.pos : pad_end].any():
        raise InputError(f"{what}: corrupt (padding bits after the header)")
    r.pos = pad_end
    body = payload[r.pos // 8 :]
    if body[-1:] == b"\x00":
        # The encoder drops every trailing zero byte (the decoder reads past the end as
        # zeros), so a zero byte at the end is padding: it must not count towards the bound.
        raise InputError(f"{what}: corrupt (the arithmetic-coded stream ends in a zero byte; "
                         f"the encoder never writes one: padding)")
    live = int(live_l.sum()) * int(live_p.sum()) if k >= 2 else 0
    if not _ac_allowed(live, len(payload)):
        raise InputError(f"{what}: corrupt (an arithmetic-coded layer of {live:,} positions in "
                         f"{len(payload):,} bytes; the format allows at most "
                         f"{AC_FREE_POSITIONS:,} + {AC_POSITIONS_PER_BYTE} per byte, "
                         f"and {AC_MAX_POSITIONS:,})")
    dec = Decoder(body, 0, what)
    if parts is not None:
        dec.cost = {}
    dec.part = "codebook"
    codebook = _ac_get_codebook(dec, k, what)
    est = {}
    if k >= 2:
        pbase = len(dec.n0)  # _ac_get_matrix's position contexts, then its weight contexts
        m = _ac_get_matrix(dec, n_l, n_p, live_l, live_p, period, wmodel, k - 1, what)
        index = np.ascontiguousarray(m.T) if col_major else m
        if parts is not None:
            wbase = pbase + _N_POS_CTX
            est = {"positions": _kt_range(dec, pbase, wbase),
                   "indices": _kt_range(dec, wbase, len(dec.n0))}
    else:
        index = np.zeros((out_f, in_f), dtype=np.uint8)
    if masked and (
        not index.any(axis=1)[row_live].all() or not index.any(axis=0)[col_live].all()
    ):
        raise InputError(f"{what}: corrupt (a line marked live holds no non-zero)")
    dec.part = "bias"
    bias = _ac_get_bias(dec, index.any(axis=1), what)
    if dec.pos < len(body):
        # The decoder reads every byte the encoder wrote (and a few past the end): bytes it
        # never reached are padding, counted towards the bounds above and refused.
        raise InputError(f"{what}: corrupt ({len(body) - dec.pos:,} bytes after the "
                         f"arithmetic-coded stream that the decoder never reads)")
    if parts is not None:
        parts.update({"header": 8 * (len(payload) - len(body)), "codebook": 0.0, "bias": 0.0,
                      "positions": 0.0, "indices": 0.0})
        parts.update(dec.cost)
        parts.update(est)
        parts["positions"] += 8 * len(body) - sum(v for n, v in parts.items() if n != "header")
    layer = Layer(codebook=codebook, index=index, bias=bias, shift=int(shift), relu=relu)
    if want_choice:
        return layer, {"col_major": col_major, "masked": masked, "period": period,
                       "wmodel": wmodel}
    return layer


def _kt_range(dec: Decoder, lo: int, hi: int) -> float:
    """The information content (`kt_counts`) of the decisions in contexts lo .. hi - 1."""
    n = [a + b for a, b in zip(dec.n0[lo:hi], dec.n1[lo:hi])]
    n1 = dec.n1[lo:hi]
    used = [j for j, c in enumerate(n) if c]
    return kt_counts([n[j] for j in used], [n1[j] for j in used])


# ---------------------------------------------------------------------------------------------
# Sections and file


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _section(tag: bytes, payload: bytes) -> bytes:
    head = tag + _varint(len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(head + payload))


@dataclass(eq=False)
class LayerSet:
    """Layers stored independently (not a chain): e.g. LeNet-5's conv layers as their
    [out, in * kh * kw] matrices beside its fully connected layers. `shapes` are the original
    weight shapes (first dimension = out, the product of the others = in)."""

    layers: list[Layer]
    shapes: list[tuple[int, ...]]
    input_frac: int = 8

    def equals(self, other: "LayerSet") -> bool:
        return (
            self.input_frac == other.input_frac
            and [tuple(x) for x in self.shapes] == [tuple(x) for x in other.shapes]
            and len(self.layers) == len(other.layers)
            and all(a.equals(b) for a, b in zip(self.layers, other.layers))
        )


def _header_payload(layers: list[Layer], input_frac: int, shapes,
                    input_shape: tuple[int, ...] | None = None) -> bytes:
    """The header section; with `input_shape` (version 3 qnets) also the network's geometry."""
    w = BitWriter()
    w.write_sint(int(input_frac))
    w.write_eg(len(layers))
    w.write(int(shapes is not None), 1)
    if shapes is not None:
        for shape in shapes:
            w.write_eg(len(shape))
            for d in shape:
                w.write_eg(int(d))
    elif input_shape is not None:
        _write_geometry(w, layers, input_shape)
    w.align()
    return w.getvalue()


# ---------------------------------------------------------------------------------------------
# Version 3: a qnet's conv geometry in the header (docs/dcz-format.md)


def _write_geometry(w: BitWriter, layers: list[Layer], input_shape: tuple[int, ...]) -> None:
    """eg ndim of input_shape (1 or 3), eg each size; per layer 1 bit conv, and for a conv
    layer eg kh, kw, sh, sw, ph, pw, qh, qw."""
    w.write_eg(len(input_shape))
    for d in input_shape:
        w.write_eg(int(d))
    for ly in layers:
        w.write(int(ly.is_conv), 1)
        if ly.is_conv:
            for pair in (ly.kernel, ly.stride, ly.padding, ly.pool):
                for v in pair:
                    w.write_eg(int(v))


def _read_geometry(r: BitReader, num_layers: int) -> tuple[tuple[int, ...], list[dict | None]]:
    """(input_shape, per layer None for fc or its conv fields); sizes bounded as they are read
    (the decoded qnet is validated against the limits after its layers)."""
    nd = r.read_eg(limit=3)
    if nd not in (1, 3):
        raise InputError(f"section header: corrupt input shape ({nd} dimensions)")
    input_shape = tuple(r.read_eg(limit=_MAX_DIM) for _ in range(nd))
    geo: list[dict | None] = []
    for _ in range(num_layers):
        if not r.read(1):
            geo.append(None)
            continue
        v = [r.read_eg(limit=_MAX_DIM) for _ in range(8)]
        geo.append({"kind": "conv", "kernel": (v[0], v[1]), "stride": (v[2], v[3]),
                    "padding": (v[4], v[5]), "pool": (v[6], v[7])})
    return input_shape, geo


def _with_geometry(layers: list[Layer], geo: list[dict | None]) -> list[Layer]:
    return [ly if g is None else dataclasses.replace(ly, **g) for ly, g in zip(layers, geo)]


def _qnet_version(qnet: QNet, version: int | None) -> int:
    """The .dcz version to write: the one asked for, else 3 when the qnet has conv layers or a
    [C, H, W] input (version 2 of the qnet) and 2 otherwise."""
    need = GEOMETRY_VERSION if qnet.version >= 2 else 1
    if version is None:
        return max(need, DCZ_VERSION)
    if version not in READ_VERSIONS:
        raise InputError(f"pack: unknown .dcz version {version} (known: 1, 2, 3)")
    if version < need:
        raise InputError(f"pack: a qnet with conv layers or a [C, H, W] input needs .dcz "
                         f"version {need}, not {version}")
    return version


def _check_qnet(qnet: QNet) -> None:
    if not isinstance(qnet, QNet):
        raise InputError(f"pack: expected a QNet, not {type(qnet).__name__}")
    qnet.validate(index_bits=8)


def _check_shapes(layers: list[Layer], shapes) -> list[tuple[int, ...]]:
    if shapes is None:
        shapes = [tuple(ly.index.shape) for ly in layers]
    if len(shapes) != len(layers):
        raise InputError(f"pack: {len(shapes)} shapes for {len(layers)} layers")
    out = []
    for i, (ly, shape) in enumerate(zip(layers, shapes)):
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2 or min(shape) < 1 or shape[0] != ly.out_features or (
            math.prod(shape[1:]) != ly.in_features
        ):
            raise InputError(
                f"l{i}: shape {list(shape)} does not fit its [out, in] = "
                f"{list(ly.index.shape)} matrix"
            )
        out.append(shape)
    return out


def pack(qnet: QNet, *, version: int | None = None) -> bytes:
    """The .dcz bytes of a qnet (deterministic: same qnet -> same bytes). By default version 2,
    or 3 for a qnet with conv layers (its geometry in the header); version=1 writes the old
    format (Huffman only) for readers that predate version 2."""
    _check_qnet(qnet)
    version = _qnet_version(qnet, version)
    return _pack(qnet.layers, qnet.input_frac, None, version,
                 qnet.input_shape if version >= GEOMETRY_VERSION else None)[0]


def pack_layers(layers: list[Layer], *, shapes=None, input_frac: int = 8,
                version: int = DCZ_VERSION) -> bytes:
    """The .dcz bytes of independent layers (a LayerSet), e.g. conv layers as 2-D matrices."""
    ls = _as_layer_set(layers, shapes, input_frac)
    return _pack(ls.layers, ls.input_frac, ls.shapes, version)[0]


def _as_layer_set(layers, shapes, input_frac) -> LayerSet:
    layers = list(layers)
    if not layers:
        raise InputError("pack: no layers")
    for i, ly in enumerate(layers):
        if not isinstance(ly, Layer):
            raise InputError(f"l{i}: expected a Layer, not {type(ly).__name__}")
        try:
            validate_layers([ly], index_bits=8)
        except InputError as e:
            raise InputError(str(e).replace("l0", f"l{i}", 1)) from None
    return LayerSet(layers, _check_shapes(layers, shapes), int(input_frac))


def _huffman_parts(bits: dict) -> dict:
    return {
        "header": bits["shape"] + bits["padding"],
        "codebook": bits["codebook"],
        "bias": bits["bias"],
        "positions": bits["index_table"] + bits["index_stream"],
        "indices": bits["weight_table"] + bits["weight_stream"],
    }


def _encode_layer_v2(layer: Layer) -> tuple[bytes, bytes, dict]:
    """(tag, payload, info) of the smaller of the Huffman and the arithmetic coding."""
    payload, info = _encode_layer(layer)
    info["coding"] = "huffman"
    info["parts"] = _huffman_parts(info["bits"])
    # Arithmetic decoding is ~10x slower than Huffman's: it must save 2% of the section.
    # The estimate leaves out the codebook and biases (the arithmetic coding of those is
    # rarely more than 10% smaller): a layer that cannot win is not coded a second time.
    plan = _ac_plan(layer)
    side = info["bits"]["codebook"] + info["bits"]["bias"]
    if plan is None or plan[1] + 0.9 * side > 0.98 * 8 * len(payload):
        return _TAG_LAYER, payload, info
    ac, parts = _ac_encode(layer, plan[0])
    live = _ac_live_positions(layer, plan[0])
    if len(ac) >= 0.98 * len(payload) or not _ac_allowed(live, len(ac)):
        return _TAG_LAYER, payload, info
    col_major = plan[0]["col_major"]
    nnz = int(np.count_nonzero(layer.index))
    info = {
        "coding": "arithmetic",
        "scan": "column" if col_major else "row",
        "gap_alphabet": None,
        "period": plan[0]["period"],
        "weight_context": WEIGHT_MODELS[plan[0]["wmodel"]],
        "nnz": nnz,
        "fillers": 0,
        "parts": parts,
        "bits": {"shape": parts["header"], "codebook": parts["codebook"], "bias": parts["bias"],
                 "index_table": 0, "index_stream": parts["positions"],
                 "weight_table": 0, "weight_stream": parts["indices"], "padding": 0},
        "gaps": _gaps(_scan(layer.index, col_major))[1],
    }
    return _TAG_AC, ac, info


def _ac_live_positions(layer: Layer, choice: dict) -> int:
    if layer.codebook.shape[0] < 2:
        return 0
    if not choice["masked"]:
        return int(layer.index.size)
    return int(layer.index.any(axis=1).sum()) * int(layer.index.any(axis=0).sum())


def _pack(layers: list[Layer], input_frac: int, shapes, version: int = DCZ_VERSION,
          input_shape: tuple[int, ...] | None = None) -> tuple[bytes, list[dict]]:
    if version not in READ_VERSIONS:
        raise InputError(f"pack: unknown .dcz version {version} (known: 1, 2, 3)")
    limits.check("max_layers", len(layers), "pack: layers")
    header = _section(_TAG_HEADER, _header_payload(layers, input_frac, shapes, input_shape))
    out = [MAGIC, bytes([version]), header]
    infos = []
    for layer in layers:
        if version == 1:
            tag, (payload, info) = _TAG_LAYER, _encode_layer(layer)
            info["coding"] = "huffman"
            info["parts"] = _huffman_parts(info["bits"])
        else:
            tag, payload, info = _encode_layer_v2(layer)
        sec = _section(tag, payload)
        info["section_bytes"] = len(sec)
        infos.append(info)
        out.append(sec)
    body = b"".join(out)
    data = body + struct.pack("<I", zlib.crc32(body))
    # Never write a file the reader refuses under the same limits (an almost empty network
    # is too small a file for its declared size): say so now, naming the limit to raise.
    budget = _Budget(len(data))
    for i, layer in enumerate(layers):
        budget.take(int(layer.index.size), f"pack: l{i}")
    return data, infos


def _sections(data: bytes) -> tuple[list[tuple[bytes, bytes, int]], int]:
    """Check magic, version and every section's framing and crc; return [(tag, payload, size)]."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError("dcz: expected bytes")
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise InputError("dcz: bad magic (not a .dcz file)")
    if len(data) < 5:
        raise InputError("dcz: truncated (file ends before the version byte)")
    version = data[4]
    if version not in READ_VERSIONS:
        raise InputError(f"dcz: unsupported version {version} (this reader supports "
                         f"{', '.join(map(str, READ_VERSIONS))})")
    pos = 5
    sections = []
    num_layers = None
    while True:
        name = _section_name(len(sections))
        if num_layers is not None and len(sections) == num_layers + 1:
            break
        if pos >= len(data):
            raise InputError(f"dcz: truncated (file ends before {name})")
        tag = data[pos : pos + 1]
        expected = (_TAG_HEADER,) if not sections else (
            (_TAG_LAYER, _TAG_AC) if version >= 2 else (_TAG_LAYER,))
        length, p = 0, pos + 1
        for shift in range(0, 64, 7):
            if p >= len(data):
                raise InputError(f"dcz: truncated {name} (in its length)")
            b = data[p]
            p += 1
            length |= (b & 0x7F) << shift
            if not b & 0x80:
                break
        else:
            raise InputError(f"dcz: corrupt {name} (bad length)")
        end = p + length + 4
        if end > len(data):
            raise InputError(
                f"dcz: truncated {name} (needs {end - pos} bytes, {len(data) - pos} left)"
            )
        (crc,) = struct.unpack("<I", data[end - 4 : end])
        if zlib.crc32(data[pos : end - 4]) != crc:
            raise InputError(f"dcz: checksum mismatch in {name}")
        if tag not in expected:
            raise InputError(f"dcz: corrupt {name} (tag {tag!r}, expected "
                             f"{' or '.join(map(repr, expected))})")
        payload = data[p : end - 4]
        sections.append((tag, payload, end - pos))
        pos = end
        if num_layers is None:
            num_layers = _read_header(payload, version)[1]
    if len(data) < pos + 4:
        raise InputError("dcz: truncated (file ends before the whole-file checksum)")
    if len(data) > pos + 4:
        raise InputError(f"dcz: {len(data) - pos - 4} unexpected bytes after the file checksum")
    (crc,) = struct.unpack("<I", data[pos:])
    if zlib.crc32(data[:pos]) != crc:
        raise InputError("dcz: whole-file checksum mismatch")
    return sections, len(data)


def _section_name(i: int) -> str:
    return "section header" if i == 0 else f"section layer {i - 1}"


def _read_header(payload: bytes, version: int = DCZ_VERSION) -> tuple:
    """(input_frac, num_layers, shapes or None for a qnet, (input_shape, per-layer geometry)
    or None: a version 3 qnet's geometry)."""
    r = BitReader(payload, "section header")
    input_frac = r.read_sint()
    num_layers = r.read_eg(limit=1 << 16)
    if num_layers < 1:
        raise InputError("section header: corrupt (num_layers must be >= 1)")
    limits.check("max_layers", num_layers, "section header: num_layers")
    if not -(1 << 62) <= input_frac < 1 << 62:
        raise InputError("section header: corrupt input_frac")
    shapes = geometry = None
    if r.read(1):
        shapes = []
        for _ in range(num_layers):
            nd = r.read_eg(limit=8)
            shapes.append(tuple(r.read_eg(limit=_MAX_DIM) for _ in range(nd)))
    elif version >= GEOMETRY_VERSION:
        geometry = _read_geometry(r, num_layers)
    if len(r.bits) - r.pos >= 8 or r.bits[r.pos :].any():
        raise InputError("section header: corrupt (unexpected bits at the end)")
    return input_frac, num_layers, shapes, geometry


def _decode_all(data: bytes, parts: list | None = None):
    """Sections, size, input_frac, shapes and layers of a .dcz; with `parts` (a list), each
    layer's part sizes in bits are appended to it as it is decoded."""
    sections, size = _sections(data)
    input_frac, _, shapes, geometry = _read_header(sections[0][1], data[4])
    budget = _Budget(size)
    layers = []
    for i, (tag, payload, _) in enumerate(sections[1:]):
        p = None if parts is None else {}
        if tag == _TAG_AC:
            layers.append(_ac_decode_layer(payload, i, budget, parts=p))
        else:
            layers.append(_decode_layer(payload, i, budget, parts=p))
            p = None if p is None else _huffman_parts(p)
        if parts is not None:
            parts.append(p)
    return sections, size, input_frac, shapes, geometry, layers


def unpack(data: bytes) -> QNet:
    """The qnet a .dcz holds (exactly the one packed); InputError saying what is wrong."""
    _, _, input_frac, shapes, geometry, layers = _decode_all(data)
    if shapes is not None:
        raise InputError("dcz: holds a layer set (e.g. conv layers), not a qnet: use unpack_layers")
    input_shape = None
    if geometry is not None:
        input_shape, geo = geometry
        layers = _with_geometry(layers, geo)
    qnet = QNet(layers=layers, input_frac=input_frac, input_shape=input_shape)
    try:
        qnet.validate(index_bits=8)
    except InputError as e:
        raise InputError(f"dcz: decoded network is invalid ({e})") from None
    return qnet


def unpack_layers(data: bytes) -> LayerSet:
    """The layers of any .dcz (a qnet's too), with their 2-D [out, in] shapes when the file
    names none (a qnet's conv layers are their [out_ch, in_ch * kh * kw] matrices)."""
    _, _, input_frac, shapes, _, layers = _decode_all(data)
    try:
        return _as_layer_set(layers, shapes, input_frac)
    except InputError as e:
        raise InputError(f"dcz: decoded layers are invalid ({e})") from None


def write_dcz(qnet: QNet, path: str | Path, *, what: str | None = None,
              version: int | None = None) -> int:
    """Write the .dcz atomically; return its size in bytes."""
    data = pack(qnet, version=version)
    write_bytes_atomic(path, data, what=what)
    return len(data)


def read_dcz(path: str | Path) -> QNet:
    return unpack(read_file(path))


def read_file(path: str | Path) -> bytes:
    """A .dcz file's bytes (a regular file, at most 4 bytes a weight of max_weights + 64 MiB:
    no layer of a file within the limits codes a weight in more)."""
    from .infile import read_input

    return read_input(path, max_bytes=4 * limits.get().max_weights + (64 << 20),
                      limit="max_weights", expected="a .dcz file")


def info(data: bytes) -> dict:
    """Sections, their sizes and the ratios of a .dcz (verifies every checksum, decodes all).

    One decode, as `unpack` does: each layer's split into header, codebook, biases, positions
    and indices is read off its streams while they are decoded, so `info` costs no more than
    `unpack` (it used to code every layer again, up to 4x the CPU and 10x the memory)."""
    parts: list = []
    sections, size, input_frac, shapes, geometry, layers = _decode_all(data, parts)
    n_params = sum(ly.index.size + ly.bias.size for ly in layers)
    geo = geometry[1] if geometry is not None else [None] * len(layers)
    d = {
        "version": data[4],
        "kind": "qnet" if shapes is None else "layer set",
        "bytes": size,
        "input_frac": input_frac,
        "num_layers": len(layers),
        "sections": [
            {"name": _section_name(i).removeprefix("section "), "bytes": s}
            for i, (_, _, s) in enumerate(sections)
        ],
        "overhead_bytes": 5 + 4,  # magic, version, file crc
        "layers": [
            {"shape": list(shapes[i]) if shapes else list(ly.index.shape),
             "nnz": int(np.count_nonzero(ly.index)), "codebook": int(ly.codebook.shape[0]),
             "coding": "arithmetic" if tag == _TAG_AC else "huffman",
             **({"kind": "conv", **{k: list(v) for k, v in geo[i].items() if k != "kind"}}
                if geo[i] is not None else {}),
             "parts": {k: round(v / 8, 1) for k, v in p.items()}}
            for i, (ly, (tag, _, _), p) in enumerate(zip(layers, sections[1:], parts))
        ],
        "params": n_params,
        "float32_bytes": 4 * n_params,
        "ratio": 4 * n_params / size,
    }
    if geometry is not None:
        d["input_shape"] = list(geometry[0])
    if shapes is None:
        input_shape = None
        if geometry is not None:
            input_shape = geometry[0]
            layers = _with_geometry(layers, geometry[1])
        # what unpack gives, checked alike
        qnet = QNet(layers=layers, input_frac=input_frac, input_shape=input_shape)
        try:
            qnet.validate(index_bits=8)
        except InputError as e:
            raise InputError(f"dcz: decoded network is invalid ({e})") from None
        d["sha256"] = qnet.checksum()
    return d


# ---------------------------------------------------------------------------------------------
# The paper's per-layer table (Han et al. 2016, Tables 2-5), from the real streams


def _fixed_index_bits(gaps: np.ndarray) -> tuple[int, int]:
    """Best fixed relative-index width w (fillers every 2**w - 1 zeros): (w, entries)."""
    best = None
    for wbits in range(1, _MAX_FIXED_INDEX_BITS + 1):
        m = (1 << wbits) - 1
        entries = int(gaps.shape[0] + (gaps // m).sum())
        if best is None or wbits * entries < best[0] * best[1]:
            best = (wbits, entries)
    return best


def layer_sizes(qnet: QNet | LayerSet) -> list[dict]:
    """Per layer and in total: weights, kept %, weight bits P+Q and P+Q+H, index bits P+Q and
    P+Q+H (per non-zero), compression rate P+Q and P+Q+H (% of 32-bit dense weights).

    P+Q (pruning + quantization, fixed width): each non-zero costs ceil(log2(K-1)) weight bits
    and the best fixed relative-index width w (`index_width_pq`); gaps longer than 2**w - 1 add
    filler entries that cost both, and `index_bits_pq` counts them (w * entries / non-zeros). P+Q+H are the Huffman streams actually written in the .dcz (per non-zero:
    stream bits only; the rate adds the code tables and the int16 codebook). The total row adds
    the biases, headers and checksums too: the .dcz file size against 32-bit floats.
    """
    if isinstance(qnet, LayerSet):
        ls = _as_layer_set(qnet.layers, qnet.shapes, qnet.input_frac)
        data, infos = _pack(ls.layers, ls.input_frac, ls.shapes)
    else:
        _check_qnet(qnet)
        version = _qnet_version(qnet, None)  # the file `pack` writes, geometry included
        data, infos = _pack(qnet.layers, qnet.input_frac, None, version,
                            qnet.input_shape if version >= GEOMETRY_VERSION else None)
    rows = []
    tot = dict.fromkeys(("weights", "nnz", "pq_bits", "pqh_bits", "wh", "ih", "wf", "if", "iff"), 0)
    for i, (layer, inf) in enumerate(zip(qnet.layers, infos)):
        weights = int(layer.index.size)
        nnz = inf["nnz"]
        k = int(layer.codebook.shape[0])
        wbits = max(1, math.ceil(math.log2(k - 1))) if k > 2 else 1
        ibits, entries = _fixed_index_bits(inf["gaps"])
        b = inf["bits"]
        cb_bits = 16 * k
        pq = entries * (wbits + ibits) + cb_bits
        pqh = (
            b["weight_table"] + b["weight_stream"] + b["index_table"] + b["index_stream"]
            + b["codebook"]
        )
        per = max(nnz, 1)
        rows.append(
            {
                "layer": f"l{i}",
                "weights": weights,
                "kept_pct": 100.0 * nnz / weights,
                "weight_bits_pq": wbits,
                "weight_bits_pqh": b["weight_stream"] / per,
                "index_bits_pq": ibits * entries / per,  # incl. fillers, per non-zero
                "index_width_pq": ibits,
                "index_bits_pqh": b["index_stream"] / per,
                "rate_pq_pct": 100.0 * pq / (32 * weights),
                "rate_pqh_pct": 100.0 * pqh / (32 * weights),
                "scan": inf["scan"],
                "gap_alphabet": inf["gap_alphabet"],
                "weight_context": inf["weight_context"],
                "weight_coded_bits": b["weight_table"] + b["weight_stream"],
                "fillers_pq": entries - nnz,
                "fillers_pqh": inf["fillers"],
                "section_bytes": inf["section_bytes"],
                "bias_bits": b["bias"],
            }
        )
        tot["weights"] += weights
        tot["nnz"] += nnz
        tot["pq_bits"] += pq
        tot["pqh_bits"] += pqh
        tot["wh"] += b["weight_stream"]
        tot["ih"] += b["index_stream"]
        tot["wf"] += wbits * nnz
        tot["if"] += ibits * nnz
        tot["iff"] += ibits * entries
    params = tot["weights"] + sum(int(ly.bias.size) for ly in qnet.layers)
    per = max(tot["nnz"], 1)
    rows.append(
        {
            "layer": "total",
            "weights": tot["weights"],
            "kept_pct": 100.0 * tot["nnz"] / tot["weights"],
            "weight_bits_pq": tot["wf"] / per,
            "weight_bits_pqh": tot["wh"] / per,
            "index_bits_pq": tot["iff"] / per,
            "index_width_pq": tot["if"] / per,
            "index_bits_pqh": tot["ih"] / per,
            "rate_pq_pct": 100.0 * tot["pq_bits"] / (32 * tot["weights"]),
            "rate_pqh_pct": 100.0 * tot["pqh_bits"] / (32 * tot["weights"]),
            "dcz_bytes": len(data),
            "float32_bytes": 4 * params,
            "ratio": 4 * params / len(data),
        }
    )
    return rows


def format_table(rows: list[dict]) -> str:
    """The layer_sizes rows as a plain-text table like the paper's."""
    w = max([6] + [len(str(r["layer"])) for r in rows])  # a user's long layer names fit
    head = (
        f"{'layer':<{w}} {'weights':>10} {'kept':>7} {'w P+Q':>6} {'w P+Q+H':>8} "
        f"{'i P+Q':>6} {'i P+Q+H':>8} {'rate P+Q':>9} {'rate P+Q+H':>11}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['layer']:<{w}} {r['weights']:>10,} {r['kept_pct']:>6.2f}% "
            f"{r['weight_bits_pq']:>6.2f} {r['weight_bits_pqh']:>8.2f} "
            f"{r['index_bits_pq']:>6.2f} {r['index_bits_pqh']:>8.2f} "
            f"{r['rate_pq_pct']:>8.2f}% {r['rate_pqh_pct']:>10.2f}%"
        )
    t = rows[-1]
    lines.append(
        f".dcz: {t['dcz_bytes']:,} bytes; float32 weights and biases {t['float32_bytes']:,} bytes; "
        f"{t['ratio']:.1f}x"
    )
    return "\n".join(lines)
