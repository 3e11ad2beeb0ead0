"""Convolution layers on the engines: geometry, feature-map layouts, column order, the walk.

A conv layer runs on an engine as a sparse matrix [out_ch, in_ch * kh * kw] (the qnet's index)
times each output position's patch, the same sparse column format as a fully connected layer,
its weights reused at every position (docs/engine.md, "Convolution"). What this module fixes,
for every engine:

* **Passes.** A layer walks its pooled output positions (py, px) row by row, one *pass* each;
  a pass visits the qh x qw conv positions of its pooling window one after another (its
  *sub-positions* s = a * qw + b) and each accumulates into its own block of accumulator rows:
  PE-local output row r of sub-position s is accumulator row (r << sub_bits) | s, sub_bits =
  ceil(log2(qh * qw)). Conv outputs beyond the last whole pooling window are never computed
  (pooling drops them). The drain reads a row's qh * qw sub-positions one after another and
  keeps their maximum (the maximum of the wrapped accumulators, then the output rule: the same
  bits as pooling the outputs, since the rule never decreases).
* **Feature maps** live in the PEs' activation memories in one of two layouts:
  `FLAT`: value f of the map flattened (C, H, W) row-major in PE f % N at word f // N (the
  engine's input vector, and every fully connected layer's input and output);
  `CHAN`: channel p (physical: after the row placement) in PE p % N, value (p, y, x) at word
  (p // N) * H * W + y * W + x, the layout a conv layer's output stage writes (PE p % N holds
  output channel p). Channels p >= C of the last group are written as zeros.
* **Columns.** One read of every PE's memory at one word gives N lanes; a conv layer's
  physical columns are numbered so that lane k of a word is column base + k: for a FLAT source
  (the first layer) the qnet's own (c, dy, dx) order; for a CHAN source ((cg, dy, dx, k) with
  channel p = cg * N + k), column ((cg * kh + dy) * kw + dx) * N + k. A fully connected layer
  after a conv reads the CHAN map word by word: physical column g * N + k is channel
  (g // (H * W)) * N + k at spatial s = g % (H * W). `physical_columns` gives the logical column
  of every physical one (-1: a padding channel, never a weight), so the images encode the
  physical matrix and decode the exact qnet.
* **The walk** (`walk`): per sub-position, its input rows clipped to the map (zero padding is
  never read, it costs nothing), each row read word by word with the lanes of the row's
  window: the descriptors (word, column base, first lane, end lane, sub-position) the engines'
  conv front end (`hw.convfe`) produces, one a cycle. Everything is affine in the loop indices
  with per-layer constants (`walker_constants`), so the hardware only adds.

The PE count must be a power of two for a layer with a FLAT source (a word is a lane index
shifted by log2 N); `check_pes` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress.errors import InputError

from .memmap import ceil_div

FLAT = "flat"
CHAN = "chan"


@dataclass(frozen=True)
class ConvGeom:
    """A conv layer's geometry on the engines: its input map [c, h, w] (logical channels),
    kernel, stride, padding, pooling, output channels and the layout its input is read in."""

    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    qh: int
    qw: int
    out_ch: int
    src: str = FLAT

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    @property
    def hp(self) -> int:
        return self.ho // self.qh

    @property
    def wp(self) -> int:
        return self.wo // self.qw

    @property
    def passes(self) -> int:
        return self.hp * self.wp

    @property
    def subs(self) -> int:
        """Sub-positions of a pass: the pooling window's conv positions."""
        return self.qh * self.qw

    @property
    def sub_bits(self) -> int:
        return max(0, (self.subs - 1).bit_length())

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.out_ch, self.hp, self.wp)

    def as_tuple(self) -> tuple:
        return (self.c, self.h, self.w, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw,
                self.qh, self.qw, self.out_ch, self.src)


def geom_of(layer, in_shape, src: str) -> ConvGeom:
    """The geometry of qnet conv `layer` taking a map of `in_shape` in layout `src`."""
    c, h, w = (int(v) for v in in_shape)
    (kh, kw), (sh, sw), (ph, pw), (qh, qw) = (
        tuple(int(v) for v in getattr(layer, g)) for g in ("kernel", "stride", "padding", "pool"))
    return ConvGeom(c, h, w, kh, kw, sh, sw, ph, pw, qh, qw, int(layer.out_features), src)


def source_layouts(qnet) -> list[str]:
    """The layout each layer's input is read in: FLAT for the first layer and after a fully
    connected one, CHAN after a conv layer (whose output stage writes channel by PE)."""
    out = []
    for i, layer in enumerate(qnet.layers):
        out.append(CHAN if i and qnet.layers[i - 1].kind == "conv" else FLAT)
    return out


def geometries(qnet) -> list[ConvGeom | None]:
    """Each layer's `ConvGeom` (None for a fully connected layer)."""
    shapes = qnet.layer_shapes()
    srcs = source_layouts(qnet)
    return [geom_of(layer, shapes[i][0], srcs[i]) if layer.kind == "conv" else None
            for i, layer in enumerate(qnet.layers)]


def check_pes(qnet, pes: int) -> None:
    """InputError unless the engines can run the conv layers of `qnet` on `pes` PEs."""
    if any(g is not None and g.src == FLAT for g in geometries(qnet)) and pes & (pes - 1):
        raise InputError(f"a conv layer reading the input map needs a power-of-two PE count "
                         f"(1, 2, 4, 8, 16), not {pes}")


def channel_groups(c: int, pes: int) -> int:
    return ceil_div(c, pes)


def map_words(shape, layout: str, pes: int) -> int:
    """Words per PE of a map of `shape` ((n,) or (C, H, W)) in `layout`."""
    if layout == CHAN:
        c, h, w = shape
        return channel_groups(c, pes) * h * w
    return ceil_div(int(np.prod(shape)), pes)


def physical_columns(kind: str, in_features: int, kernel, in_shape, src: str,
                     prev_perm: np.ndarray | None, pes: int) -> np.ndarray:
    """int64[physical columns]: the logical column of a layer (`kind`, `in_features` logical
    columns, conv `kernel`) each physical column reads, -1 for a padding channel's (module
    docstring). in_shape: the layer's input map; src: its layout; prev_perm: the previous
    layer's row (channel) permutation, physical p = logical prev_perm[p] (None: the first
    layer)."""
    if src == FLAT:
        if prev_perm is None:
            return np.arange(in_features, dtype=np.int64)
        return np.asarray(prev_perm, dtype=np.int64)  # fc after fc: its rows' order
    c, h, w = (int(v) for v in in_shape)
    cg = channel_groups(c, pes)
    logical = np.full(cg * pes, -1, dtype=np.int64)
    logical[:c] = np.asarray(prev_perm, dtype=np.int64)[:c]
    lane_ch = logical.reshape(cg, pes)  # [cg, k] -> logical channel
    # conv: physical (cg, d, k) with d = dy * kw + dx reads logical ch * kh * kw + d;
    # fc: word g = cg * h * w + s, lane k reads logical ch * h * w + s
    per = int(np.prod(kernel)) if kind == "conv" else h * w
    d = np.arange(per)
    ch = np.broadcast_to(lane_ch[:, None, :], (cg, per, pes))
    return np.where(ch >= 0, ch * per + d[None, :, None], -1).reshape(-1)


def column_maps(kinds, in_features, geoms, perms, pes: int) -> list[np.ndarray]:
    """Every layer's `physical_columns` from what an image keeps: the layers' kinds, logical
    column counts, `ConvGeom`s (None for fc) and row permutations."""
    out = []
    for i, kind in enumerate(kinds):
        prev = geoms[i - 1] if i else None
        if prev is not None:
            shape, src = prev.out_shape, CHAN
        else:
            shape, src = None, FLAT
        g = geoms[i]
        kernel = (g.kh, g.kw) if g is not None else None
        out.append(physical_columns(kind, in_features[i], kernel, shape, src,
                                    perms[i - 1] if i else None, pes))
    return out


def physical_matrix(matrix: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`matrix` [rows, logical columns] with its columns in physical order (zero columns
    for padding channels)."""
    out = np.zeros((matrix.shape[0], len(cols)), dtype=matrix.dtype)
    ok = cols >= 0
    out[:, ok] = matrix[:, cols[ok]]
    return out


def logical_matrix(phys: np.ndarray, cols: np.ndarray, n_logical: int) -> np.ndarray:
    """The inverse of `physical_matrix`; ValueError when a padding column holds a weight."""
    ok = cols >= 0
    if np.any(phys[:, ~ok]):
        raise ValueError("a padding channel's column holds weights")
    out = np.zeros((phys.shape[0], n_logical), dtype=phys.dtype)
    out[:, cols[ok]] = phys[:, ok]
    return out


# ---- the walk: what a conv front end reads for one pass ---------------------------------------


@dataclass(frozen=True)
class WalkConstants:
    """Per-layer constants of the walk, in lane units (a word holds N lanes): a map value's
    lane address is  base * N + channel * lc + y * ly + x * lx  and its column
    channel * cc + dy * cy + dx * cx  (+ lane for CHAN); `groups` channel iterations."""

    groups: int
    lc: int
    ly: int
    lx: int
    cc: int
    cy: int
    cx: int


def walker_constants(g: ConvGeom, pes: int) -> WalkConstants:
    if g.src == FLAT:
        return WalkConstants(g.c, g.h * g.w, g.w, 1, g.kh * g.kw, g.kw, 1)
    n = pes
    return WalkConstants(channel_groups(g.c, n), g.h * g.w * n, g.w * n, n,
                         g.kh * g.kw * n, g.kw * n, n)


def sub_origin(g: ConvGeom, pass_index: int, s: int) -> tuple[int, int]:
    """The input coordinates (y, x) of the patch of pass `pass_index`, sub-position `s`."""
    py, px = divmod(pass_index, g.wp)
    a, b = divmod(s, g.qw)
    return (py * g.qh + a) * g.sh - g.ph, (px * g.qw + b) * g.sw - g.pw


def walk(g: ConvGeom, pes: int, pass_index: int, base: int = 0) -> list[tuple]:
    """The descriptors of one pass in the order the front end reads them: (word, column base,
    first lane, end lane, sub-position); lane k of the word is column base + k when
    first <= k < end. `base`: the map's first word in the PEs' memories."""
    k = walker_constants(g, pes)
    n = pes
    out = []
    for s in range(g.subs):
        ys, xs = sub_origin(g, pass_index, s)
        dyl, dyh = max(0, -ys), min(g.kh, g.h - ys)
        dxl, dxh = max(0, -xs), min(g.kw, g.w - xs)
        if dyl >= dyh or dxl >= dxh:
            continue
        length = (dxh - dxl) * k.lx
        for ch in range(k.groups):
            for dy in range(dyl, dyh):
                l0 = base * n + ch * k.lc + (ys + dy) * k.ly + (xs + dxl) * k.lx
                col0 = ch * k.cc + dy * k.cy + dxl * k.cx
                for word in range(l0 // n, (l0 + length - 1) // n + 1):
                    lo = max(l0 - word * n, 0)
                    hi = min(l0 + length - word * n, n)
                    out.append((word, col0 - l0 + word * n, lo, hi, s))
    return out


def gather(g: ConvGeom, pes: int, pass_index: int, words: np.ndarray, base: int = 0
           ) -> list[tuple[int, int, int]]:
    """The (value, column, sub-position) of every non-zero the walk of a pass reads from
    `words` [word, lane] (the PEs' memories side by side), in order."""
    out = []
    for word, colbase, lo, hi, s in walk(g, pes, pass_index, base):
        for lane in range(lo, hi):
            v = int(words[word, lane])
            if v:
                out.append((v, colbase + lane, s))
    return out


def map_to_words(values: np.ndarray, shape, layout: str, pes: int) -> np.ndarray:
    """int [words, pes]: a map (flattened (C, H, W), logical = physical channel order) as
    the PEs' memories hold it in `layout`."""
    values = np.asarray(values).reshape(-1)
    if layout == FLAT:
        w = ceil_div(len(values), pes)
        out = np.zeros(w * pes, dtype=values.dtype)
        out[: len(values)] = values
        return out.reshape(w, pes)
    c, h, w = shape
    cg = channel_groups(c, pes)
    m = np.zeros((cg * pes, h * w), dtype=values.dtype)
    m[:c] = values.reshape(c, h * w)
    return m.reshape(cg, pes, h * w).transpose(0, 2, 1).reshape(cg * h * w, pes)


# ---- the network as the images place it ------------------------------------------------------


def logical_in_features(kinds, geoms, first_in: int) -> list[int]:
    """Each layer's logical column count from the image's kinds and geometries: a conv layer's
    c * kh * kw, an fc layer's the previous layer's outputs (`first_in` for the first)."""
    out = []
    for i, kind in enumerate(kinds):
        g = geoms[i]
        if g is not None:
            out.append(g.c * g.kh * g.kw)
        elif i == 0:
            out.append(first_in)
        elif geoms[i - 1] is not None:
            out.append(int(np.prod(geoms[i - 1].out_shape)))
        else:
            out.append(-1)  # fc after fc: the previous layer's rows (filled by the caller)
    return out


def network_geometries(qnet) -> list[ConvGeom | None]:
    """`geometries`, an empty list of Nones for a network with no conv layer."""
    return geometries(qnet) if any(ly.kind == "conv" for ly in qnet.layers) else \
        [None] * qnet.num_layers


def physical_layers(qnet, perms, pes: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(matrices, column maps): every layer's index matrix as the images encode it, rows
    permuted by perm_i and columns in physical order (`column_maps`)."""
    geoms = network_geometries(qnet)
    cols = column_maps([ly.kind for ly in qnet.layers], [ly.in_features for ly in qnet.layers],
                       geoms, perms, pes)
    mats = [physical_matrix(np.asarray(ly.index)[perms[i]], cols[i])
            for i, ly in enumerate(qnet.layers)]
    return mats, cols


# ---- what an engine's image needs of its conv layers -----------------------------------------


def acc_rows(g: ConvGeom | None, own_rows: int, pes: int) -> int:
    """Accumulator rows a PE uses for a layer: its own rows (fc), or every PE's
    ceil(out_ch / N) rows times the sub-position blocks (conv)."""
    if g is None:
        return own_rows
    return channel_groups(g.out_ch, pes) << g.sub_bits


def out_map_words(g: ConvGeom | None, out_features: int, pes: int) -> int:
    """Words per PE of a layer's output: CHAN for conv, FLAT for fc."""
    if g is None:
        return ceil_div(out_features, pes)
    return map_words(g.out_shape, CHAN, pes)


def engine_in_features(img) -> int:
    """The engine's input width: the qnet's input_shape flattened."""
    shape = getattr(img, "input_shape", None)
    return int(np.prod(shape)) if shape else img.layers[0].in_features


def engine_out_features(img) -> int:
    """The engine's output width: the last layer's output flattened."""
    last = img.layers[-1]
    if getattr(last, "geom", ()):
        return int(np.prod(ConvGeom(*last.geom).out_shape))
    return last.out_features


def act_words(img) -> int:
    """Words per PE of one activation bank: the largest map (the input, every layer's output)
    in the layout it is kept in."""
    n = img.pes
    words = [ceil_div(engine_in_features(img), n)]
    for ll in img.layers:
        g = ConvGeom(*ll.geom) if getattr(ll, "geom", ()) else None
        words.append(out_map_words(g, ll.out_features, n))
    return max(words)


# ---- the one-value walk (the lockstep engine's one-map layout on the board) -----------------

# what steps after a kernel position: the pooling window's b and a, dx, dy, channel, pass, pass row
ONE_MAP_LEVELS = 7


def one_map_steps(g: ConvGeom) -> dict[str, list[int]]:
    """The changes of (word, y, x) from one kernel position to the next in
    `hw.convfe.OneMapConvFrontEnd`'s walk of a map of one value a word (plain (C, H, W)), by
    the innermost counter that does not wrap: the pooling window's b and a (sub-positions
    innermost: one column's sub-positions follow each other, and as each has its own
    accumulator word, a column's first slot never reads the word the previous column's last
    slot writes unless sub-positions in between were zero), then dx, dy, channel, then the
    next pass (px + 1) or the next row of passes (py + 1, px = 0). Position
    (pass, c, dy, dx, a, b) reads y = py * qh * sh - ph + a * sh + dy,
    x = px * qw * sw - pw + b * sw + dx, word c * h * w + y * w + x."""
    kw1, kh1, c1 = g.kw - 1, g.kh - 1, g.c - 1
    bw, ah = (g.qw - 1) * g.sw, (g.qh - 1) * g.sh  # back to b = 0, a = 0
    dxp, dyp = g.qw * g.sw, g.qh * g.sh
    dx = [g.sw, -bw, 1 - bw, -kw1 - bw, -kw1 - bw, dxp - kw1 - bw,
          -(g.wp - 1) * dxp - kw1 - bw]
    dy = [0, g.sh, -ah, 1 - ah, -kh1 - ah, -kh1 - ah, dyp - kh1 - ah]
    dc = [0, 0, 0, 0, 1, -c1, -c1]
    return {"x": dx, "y": dy,
            "word": [c * g.h * g.w + y * g.w + x for c, y, x in zip(dc, dy, dx)]}


def one_map_pass_steps(g: ConvGeom) -> dict[str, list[int]]:
    """The changes of (word, y, x) from a pass's first kernel position to the next pass's
    first: to the next pass of the row (px + 1), or the next row of passes (py + 1, px = 0).
    What `hw.convfe.OneMapConvFrontEnd` steps by when it skips a pass whose every position
    holds 0 (its result is the bias)."""
    dxp, dyp = g.qw * g.sw, g.qh * g.sh
    dx, dy = [dxp, -(g.wp - 1) * dxp], [0, dyp]
    return {"x": dx, "y": dy, "word": [y * g.w + x for y, x in zip(dy, dx)]}


def one_map_pass_cols(g: ConvGeom) -> list[tuple[int, int]]:
    """The columns [lo, hi) of the map (of every row and channel) a pass column px reads,
    clipped to the map: a pass reads only zeros where they hold only zeros."""
    span = (g.qw - 1) * g.sw + g.kw
    return [(max(0, px * g.qw * g.sw - g.pw), min(g.w, px * g.qw * g.sw - g.pw + span))
            for px in range(g.wp)]


def one_map_walk(g: ConvGeom, pass_index: int) -> list[tuple[int, int, int, int]]:
    """(word, column, sub-position, in the map) of every kernel position of a pass, in the
    order `hw.convfe.OneMapConvFrontEnd` reads them (the reference its tests use)."""
    py, px = divmod(pass_index, g.wp)
    out = []
    for c in range(g.c):
        for dy in range(g.kh):
            for dx in range(g.kw):
                for s in range(g.subs):
                    a, b = divmod(s, g.qw)
                    y = py * g.qh * g.sh - g.ph + a * g.sh + dy
                    x = px * g.qw * g.sw - g.pw + b * g.sw + dx
                    out.append((c * g.h * g.w + y * g.w + x, (c * g.kh + dy) * g.kw + dx, s,
                                0 <= y < g.h and 0 <= x < g.w))
    return out


# ---- column lists: the one-value walk over the columns that hold a weight -------------------


def one_map_col_offsets(g: ConvGeom, cols) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(word, dy, dx) of physical columns `cols` ((c * kh + dy) * kw + dx) of a one-map conv
    layer, the word relative to the pass's first position (c = dy = dx = 0, sub-position 0)."""
    cols = np.asarray(cols, dtype=np.int64)
    c, rest = np.divmod(cols, g.kh * g.kw)
    dy, dx = np.divmod(rest, g.kw)
    return c * g.h * g.w + dy * g.w + dx, dy, dx


def one_map_list_entries(g: ConvGeom, cols) -> list[tuple[int, int, int]]:
    """The column table of a listed layer (`images.lockstep`, `col_lists`): K + 2 steps
    (word, y, x) for `hw.convfe.OneMapConvFrontEnd`, K = len(cols) >= 2:

    * entry 0 (I): from the pass origin to the first listed column (the layer's first pass);
    * entries 1 and 2 (W5, W6): from the last listed column's last sub-position to the first
      listed column of the next pass, in the same row of passes (px + 1) or the next
      (py + 1, px = 0): a pass's end;
    * entry 2 + j (j = 1..K-1): from column j - 1's last sub-position to column j's first.
    """
    word, dy, dx = one_map_col_offsets(g, cols)
    if len(word) < 2:
        raise ValueError("a column list needs two columns at least")
    ah, bw = (g.qh - 1) * g.sh, (g.qw - 1) * g.sw  # the last sub-position from the first
    back = ah * g.w + bw

    def step(a, b):
        return (int(word[b] - word[a] - back), int(dy[b] - dy[a] - ah), int(dx[b] - dx[a] - bw))

    ps = one_map_pass_steps(g)
    w = step(-1, 0)
    out = [(int(word[0]), int(dy[0]), int(dx[0]))]
    out += [(w[0] + ps["word"][r], w[1] + ps["y"][r], w[2] + ps["x"][r]) for r in (0, 1)]
    out += [step(j - 1, j) for j in range(1, len(word))]
    return out


def one_map_list_walk(g: ConvGeom, pass_index: int, cols) -> list[tuple[int, int, int, int]]:
    """`one_map_walk` over the listed columns only: (word, list index, sub-position, in the
    map) of every position the walker reads, in its order (the reference its tests use)."""
    py, px = divmod(pass_index, g.wp)
    word, dys, dxs = one_map_col_offsets(g, cols)
    out = []
    for k in range(len(word)):
        for s in range(g.subs):
            a, b = divmod(s, g.qw)
            y = py * g.qh * g.sh - g.ph + a * g.sh + int(dys[k])
            x = px * g.qw * g.sw - g.pw + b * g.sw + int(dxs[k])
            c = (int(word[k]) - int(dys[k]) * g.w - int(dxs[k])) // (g.h * g.w)
            out.append((c * g.h * g.w + y * g.w + x, k, s, 0 <= y < g.h and 0 <= x < g.w))
    return out
