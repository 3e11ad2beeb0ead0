"""The lockstep image: the EIE format laid out so that every PE reads the same address.

The board engine (`hw.lockstep.LockstepEngine`) runs all N PEs on the same column at the same
time, so one address serves every PE and a 16-bit single-port SPRAM word can hold the entries of
two PEs. Layout:

* Rows are placed as in the EIE ROM (`images.eie`): physical row p of a layer lives in PE
  p % N as local row p // N. A hidden layer's rows are permuted first (`placement`, by default
  the slot-minimising search of `images.placement.place_search`): physical row p is logical row
  perm[p]; the next layer's columns are permuted the same way, so the network computed is the
  same. The last layer is never permuted (outputs come out in order) and
  neither are the inputs. A layer whose logical order already gives every column the fewest
  slots possible (`images.placement.at_bound`: a network pruned for this engine) keeps it, and
  so does one where the search does not find fewer slots than the logical order.
* Per PE and column the entries are the EIE (v, z) entries of `images.csc.encode_csc`
  (v = codebook index, 0 = filler; z = zero rows before it; fillers where a gap exceeds
  2**rel_bits - 1). Column c gets L(c) = max over PEs of its entry count "slots"; a PE with fewer
  entries is padded with (v = 0, z = 0) at the end of the column (padding never reaches an
  accumulator, its row is never used); where it has two or more padding slots and its first
  entry is a weight on a row >= 1, one of them goes first instead (a (0, 0) entry there is a
  filler of zero rows; the first slot then cannot hit the row the previous column writes, which
  would cost the engine a hold cycle, `_lead_pad`). A column with no entry in any PE has
  L(c) = 0.
* `slots[s, k]` is PE k's entry in slot s, `v | z << index_bits`; layers and columns are
  concatenated, `col_ptr[g]` is the first slot of global column g (layer i's column c is
  g = col_base[i] + c) and `col_ptr[-1]` the number of slots.
* Dead units (`trim`, on by default): a hidden unit with no weight in, no bias and no weight
  out (nobody reads it; a network pruned for the board has many, docs/board-pattern.md) is
  always 0. Each PE's rows keep their PE but put such units after the others, in order, and
  the layer's rows_per_pe is the most rows any PE has left: the engine preloads, computes and
  drains only those, and the next layer's front end reads only N * rows_per_pe columns
  (`in_used`; the columns after them hold no weights). The layer's logical size and the
  network computed are unchanged (`decode_lockstep` gives the same qnet).
* Biases: every PE holds rows_per_pe[i] (ceil(out_i / N) untrimmed) rows of layer i (absent
  rows have bias 0), at bias_base[i] = sum of the previous layers' rows_per_pe: the same
  offsets in every PE, so one address serves them all.

* Conv layers (qnet version 2, `images.conv`): a conv layer's matrix is [out_ch, physical
  columns] with the columns in the order the conv front end reads them (`images.conv`: the
  qnet's (c, dy, dx) for the input map, (channel group, dy, dx, lane) for a map a conv layer
  wrote, channel p in PE p % N), the layer keeps its `geom` (`ConvGeom.as_tuple()`), and the
  image the qnet's `input_shape`. Output channel p lives in PE p % N as for an fc row; its
  accumulator rows are one block per sub-position of the pooling window (`acc_rows`).

`build_lockstep` makes the image from a qnet, `decode_lockstep` rebuilds the exact qnet, and
`lockstep_cycles` counts the slot cycles an input costs (what the engine spends computing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from compress import limits
from compress.errors import InputError
from compress.qnet import DEFAULT_INDEX_BITS, QNet

from . import conv
from .csc import DEFAULT_REL_BITS, decode_csc, encode_csc
from .layers import LAYER_KINDS, layer_kind
from .memmap import MemorySpec, bits, ceil_div
from .params import EngineParams
from .placement import at_bound, place_longest_first, place_search, slot_cost


@dataclass(frozen=True, eq=False)
class LockstepLayer:
    in_features: int
    out_features: int
    shift: int
    relu: bool
    codebook: np.ndarray  # int16[2**index_bits], zero padded
    codebook_size: int
    col_base: int  # first global column
    rows_per_pe: int  # ceil(out / N), or fewer: the local rows the engine computes (`_trim`)
    bias_base: int  # first bias word (same in every PE)
    perm: np.ndarray  # int64[out]: physical row p holds logical row perm[p]
    kind: str = "fc"  # the layer's kind (`images.layers`)
    geom: tuple = ()  # conv: `images.conv.ConvGeom.as_tuple()` (empty for fc)
    in_used: int | None = None  # the input columns the engine reads (None: in_features)

    @property
    def conv_geom(self) -> "conv.ConvGeom | None":
        return conv.ConvGeom(*self.geom) if self.geom else None

    @property
    def engine_in(self) -> int:
        """Input columns the engine's front end reads: the previous layer's computed rows
        (the columns after them are units nobody computes, with no weights here)."""
        return self.in_features if self.in_used is None else self.in_used


@dataclass(frozen=True, eq=False)
class LockstepImage:
    pes: int
    index_bits: int
    rel_bits: int
    layers: list[LockstepLayer]
    slots: np.ndarray  # uint32[S, pes]
    col_ptr: np.ndarray  # int64[sum(in) + 1]
    bias: np.ndarray  # int64[pes, sum(rows_per_pe)]
    input_frac: int = 8
    input_shape: tuple | None = None  # the qnet's input_shape ((in_0,) or (C, H, W))
    # the board's layout for a CNN (docs/lockstep.md, "On the board"): every map in one memory,
    # one value a word in plain (C, H, W) order (channels in the writing layer's row order),
    # and the slot words packed PE after PE into 16-bit lanes
    one_map: bool = False
    # PEs whose codebook is a ROM (one block RAM each) instead of logic: the first ones; the
    # board sets it to the block RAMs it has left (`fpga.flow.resources.board_image`)
    codebook_roms: int = 0
    # `one_map` only: per layer, the physical columns the walker reads (sorted; every column
    # with a slot among them) or None (every column): a conv layer's columns with no weight
    # are never read (`col_lists` of `build_lockstep`, docs/lockstep.md "Column lists")
    col_lists: tuple | None = None

    def __post_init__(self):
        check_col_lists(self)

    @property
    def listed(self) -> bool:
        """Some layer walks a column list (the engine then has the `coltab` memory)."""
        return self.col_lists is not None and any(c is not None for c in self.col_lists)

    @property
    def long_fillers(self) -> bool:
        """A filler (v = 0, z) stands for 1 + z << rel_bits rows (`images.csc`): the one-map
        layout's, whose 6-bit entries at 8 PEs leave a 2-bit relative index."""
        return self.one_map

    @property
    def map_lanes(self) -> int:
        """Values a map word holds: one with `one_map`, else one per PE."""
        return 1 if self.one_map else self.pes

    @property
    def entry_bits(self) -> int:
        return self.index_bits + self.rel_bits

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_slots(self) -> int:
        return int(self.col_ptr[-1])

    @property
    def in_features(self) -> int:
        """The engine's input words (the input map flattened for a CNN)."""
        return conv.engine_in_features(self)

    @property
    def out_features(self) -> int:
        """The engine's output words (a conv last layer's pooled map flattened)."""
        return conv.engine_out_features(self)

    @property
    def has_conv(self) -> bool:
        return any(ll.geom for ll in self.layers)

    @property
    def sub_bits(self) -> int:
        """Accumulator address bits of a sub-position (the most of any conv layer): a conv
        layer's local row r, sub-position s is accumulator row (r << sub_bits) | s."""
        return max([conv.ConvGeom(*ll.geom).sub_bits for ll in self.layers if ll.geom],
                   default=0)

    def acc_rows(self, ll: "LockstepLayer") -> int:
        """Accumulator rows a layer uses in every PE."""
        return ll.rows_per_pe << self.sub_bits if ll.geom else ll.rows_per_pe

    def lanes(self) -> list[np.ndarray]:
        """The slot words of each lane memory: PEs 2j (low bits) and 2j+1 (high bits); with
        `one_map` the slot's entries PE after PE (PE k at bits k * entry_bits) cut into
        16-bit words."""
        e = self.entry_bits
        if self.one_map:
            return packed_lanes(self.slots, e)
        out = []
        for j in range(0, self.pes, 2):
            w = self.slots[:, j].astype(np.uint64)
            if j + 1 < self.pes:
                w = w | (self.slots[:, j + 1].astype(np.uint64) << np.uint64(e))
            out.append(w)
        return out


COL_LIST_VERSION = 1  # the column lists' layout (`check_col_lists`, `col_table`)
# `col_lists=None` (auto): a conv layer is listed when at least this share of its columns
# holds no weight (the column table costs two block RAMs; the pointers it drops free some)
COL_LIST_MIN_EMPTY = 1 / 8


def check_col_lists(img: "LockstepImage") -> None:
    """InputError unless `img.col_lists` is None or, per layer, None or a list the walker can
    take: only with `one_map`, only for conv layers, strictly increasing physical columns,
    at least one, and every column with a slot among them."""
    lists = img.col_lists
    if lists is None:
        return
    if not img.one_map:
        raise InputError("column lists are the one-map layout's")
    if len(lists) != len(img.layers):
        raise InputError(f"col_lists must have one entry per layer ({len(img.layers)})")
    for i, (ll, cols) in enumerate(zip(img.layers, lists)):
        if cols is None:
            continue
        if not ll.geom:
            raise InputError(f"layer l{i}: a column list is for conv layers only")
        c = np.asarray(cols, dtype=np.int64)
        if c.ndim != 1 or len(c) < 2 or c[0] < 0 or c[-1] >= ll.in_features or np.any(
                np.diff(c) <= 0):
            raise InputError(f"layer l{i}: a column list must be 2..{ll.in_features} strictly "
                             "increasing columns of the layer")
        lc = np.diff(np.asarray(img.col_ptr[ll.col_base: ll.col_base + ll.in_features + 1]))
        if np.any(np.delete(lc, c) != 0):
            raise InputError(f"layer l{i}: a column with slots is not in its column list")


def choose_col_lists(qnet_layers, mats, how) -> tuple | None:
    """The column lists of `build_lockstep`: how None (auto: the conv layers with at least
    COL_LIST_MIN_EMPTY of their columns empty), True (every conv layer of two columns or
    more), False (none). A list holds the columns with a weight, and the first empty ones
    where that makes fewer than two (the walker's least)."""
    if how is False:
        return None
    out = []
    for layer, idx in zip(qnet_layers, mats):
        full = np.flatnonzero((idx != 0).any(axis=0))
        empty = idx.shape[1] - len(full)
        if (not layer.is_conv or idx.shape[1] < 2
                or not (how is True or empty >= COL_LIST_MIN_EMPTY * idx.shape[1])):
            out.append(None)
        else:  # two columns at least (the walker's): empty ones first where fewer hold one
            pad = np.setdiff1d(np.arange(idx.shape[1]), full)[: max(0, 2 - len(full))]
            out.append(tuple(int(v) for v in np.union1d(full, pad)))
    return tuple(out) if any(c is not None for c in out) else None


def engine_columns(img: "LockstepImage", i: int) -> np.ndarray:
    """The physical columns of layer i the engine walks, in order (its list, or all)."""
    ll = img.layers[i]
    cols = img.col_lists[i] if img.col_lists is not None else None
    return (np.arange(ll.in_features, dtype=np.int64) if cols is None
            else np.asarray(cols, dtype=np.int64))


def engine_col_ptr(img: "LockstepImage") -> tuple[np.ndarray, list[int]]:
    """(the column pointers the engine's `colptr` memories hold, each layer's first engine
    column): a listed layer's columns are its list's (the k-th listed column is engine column
    base + k); without lists `img.col_ptr` and the layers' `col_base`."""
    if not img.listed:
        return img.col_ptr, [ll.col_base for ll in img.layers]
    ptrs, bases, base = [], [], 0
    for i, ll in enumerate(img.layers):
        cols = engine_columns(img, i)
        ptrs.append(np.asarray(img.col_ptr)[ll.col_base + cols])
        bases.append(base)
        base += len(cols)
    return np.concatenate(ptrs + [np.asarray(img.col_ptr)[-1:]]).astype(np.int64), bases


def col_table(img: "LockstepImage") -> tuple[list[int], list[int], int, int]:
    """(words, each layer's first word (0 if not listed), address bits, y/x bits) of the
    `coltab` memory: every listed layer's `images.conv.one_map_list_entries`, a word
    word_step | y_step << aw | x_step << (aw + yb), the word step modulo 2**aw (the walker's
    map address width, `act_words`), y and x in yb-bit two's complement; yb = 0 (the word
    steps alone) when no conv layer of the image is padded (the walker tests no (y, x))."""
    aw = bits(act_words(img))
    lists = img.col_lists or [None] * len(img.layers)
    geoms = [ll.conv_geom for ll in img.layers]
    words, firsts, yb = pack_col_table(
        [conv.one_map_list_entries(g, cols) if cols is not None else None
         for g, cols in zip(geoms, lists)], aw,
        yx=any(g.ph or g.pw for g in geoms if g is not None))
    return words, firsts, aw, yb


def pack_col_table(entries, aw: int, yx: bool = True) -> tuple[list[int], list[int], int]:
    """(words, each layer's first word, y/x bits) of per-layer (word, y, x) steps (None: a
    layer without a list), packed as `col_table` says; yx False (no layer is padded, so the
    walker keeps no (y, x)): the word steps alone, y/x bits 0."""
    flat, firsts = [], []
    for ents in entries:
        firsts.append(len(flat) if ents is not None else 0)
        flat += list(ents or [])
    yb = max([max(abs(e[1]), abs(e[2])).bit_length() + 1 for e in flat] + [2]) if yx else 0
    words = [(w % (1 << aw)) | ((y % (1 << yb)) << aw) | ((x % (1 << yb)) << (aw + yb))
             for w, y, x in flat]
    return words, firsts, yb


PLACEMENTS = ("search", "lpt", "interleave")
LANE_BITS = 16  # a packed lane word (`one_map`): an SPRAM's width


def packed_lanes(slots: np.ndarray, e: int) -> list[np.ndarray]:
    """The slot words (PE k's entry at bits k * e) cut into 16-bit lane words, lowest first."""
    s = np.asarray(slots, dtype=np.uint64)
    n = s.shape[1] if s.ndim == 2 else 0
    out = []
    for j in range(ceil_div(n * e, LANE_BITS)):
        w = np.zeros(len(s), dtype=np.uint64)
        for k in range(n):  # the bits of PE k's entry that fall in lane j
            lo, hi = max(k * e, j * LANE_BITS), min((k + 1) * e, (j + 1) * LANE_BITS)
            if lo >= hi:
                continue
            part = (s[:, k] >> np.uint64(lo - k * e)) & np.uint64((1 << (hi - lo)) - 1)
            w |= part << np.uint64(lo - j * LANE_BITS)
        out.append(w)
    return out


def _lead_pad(v, z, p, lc) -> np.ndarray:
    """Columns [cols] (bool) where a PE's entries start one slot late, after a (0, 0) entry.

    The engine holds for a cycle when a column's first slot hits, in some PE, the row that
    the previous column's last slot writes (the accumulator read misses that write). A PE
    whose first slot is padding cannot hit, so where a PE has two or more padding slots in a
    column (its last slot stays padding: no new hit on the next column) and its first entry
    is a weight on a row >= 1 (so 1 + (z - 1) reaches it after the (0, 0) entry, which acts
    as a filler of zero rows), one padding slot moves to the front.
    """
    cnt = np.diff(p)
    first = np.minimum(p[:-1], max(len(v) - 1, 0))
    if len(v) == 0:
        return np.zeros(len(cnt), dtype=bool)
    return (cnt >= 1) & (cnt + 2 <= lc) & (v[first] != 0) & (z[first] >= 1)


def dead_units(qnet: QNet) -> list[np.ndarray]:
    """Per hidden layer, bool[out]: units with no weight in, bias 0 and no weight out (always
    0, read by nobody); the last layer's outputs are never dead."""
    mats = [layer_kind(ll).matrix(ll) for ll in qnet.layers]
    out = []
    for i, layer in enumerate(qnet.layers[:-1]):
        out.append(~(mats[i] != 0).any(axis=1) & (np.asarray(layer.bias) == 0)
                   & ~(mats[i + 1] != 0).any(axis=0))
    return out


def _trim(perm: np.ndarray, dead: np.ndarray, pes: int) -> tuple[np.ndarray, int]:
    """(perm with each PE's dead units after its others, in their order; the most live units
    of a PE, at least 1): physical rows p with p // pes >= that are all dead. A PE with fewer
    live units than that keeps one dead unit first: its first weight in a column is then on a
    row >= 1, which lets a padding slot go first (`_lead_pad`; a PE with one live row would
    otherwise hold on every other column it has a weight in)."""
    perm = perm.copy()
    live = [~dead[perm[k::pes]] for k in range(pes)]
    most = max([1] + [int(lv.sum()) for lv in live])
    for k in range(pes):
        units, lv = perm[k::pes], live[k]
        lead = 1 if 0 < lv.sum() < most else 0  # (a PE with none has a dead unit then)
        perm[k::pes] = np.concatenate([units[~lv][:lead], units[lv], units[~lv][lead:]])
    return perm, most


def _layer_block(idx: np.ndarray, pes: int, rel_bits: int, index_bits: int,
                 long_fillers: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(slots uint32[S, pes], start int64[cols + 1]) of one layer's physical index matrix."""
    cols = idx.shape[1]
    per_pe = [encode_csc(idx[k::pes], rel_bits=rel_bits, long_fillers=long_fillers)
              for k in range(pes)]
    counts = np.stack([np.diff(p) for (_, _, p) in per_pe])  # [pes, cols]
    lc = counts.max(axis=0)
    start = np.zeros(cols + 1, dtype=np.int64)
    np.cumsum(lc, out=start[1:])
    block = np.zeros((int(start[-1]), pes), dtype=np.uint32)
    for k, (v, z, p) in enumerate(per_pe):
        cnt = np.diff(p)
        col = np.repeat(np.arange(cols), cnt)
        z = z.astype(np.int64)
        lead = _lead_pad(v, z, p, lc)
        z[p[:-1][lead]] -= 1  # its row is now 1 + z after the leading (0, 0)
        pos = start[col] + np.arange(len(v)) - p[col] + lead[col]
        block[pos, k] = v.astype(np.uint32) | (z.astype(np.uint32) << index_bits)
    return block, start


def _adjacent_hits(idx: np.ndarray, pes: int, rel_bits: int, index_bits: int) -> int:
    """Pairs of non-empty columns one or two apart (in the engine's order) whose first slot
    in some PE is a weight on the row the earlier one's last slot writes: where a hold can
    come when both are computed (`images.balance.holds` counts them for given inputs)."""
    block, start = _layer_block(idx, pes, rel_bits, index_bits)
    mask = (1 << index_bits) - 1
    ent = block.astype(np.int64)
    v, z = ent & mask, ent >> index_bits
    lc = np.diff(start)
    live = lc > 0
    if live.sum() < 2:
        return 0
    step = np.cumsum(z + 1, axis=0)
    before = np.vstack([np.zeros((1, pes), dtype=np.int64), step])[start[:-1][live]]
    a, b = start[:-1][live], start[1:][live] - 1
    first_w, first_r = v[a] != 0, z[a]
    last_w, last_r = v[b] != 0, step[b] - 1 - before
    hits = 0
    for d in (1, 2):
        hits += int(((last_w[:-d] & first_w[d:]) & (last_r[:-d] == first_r[d:]))
                    .any(axis=1).sum())
    return hits


def build_lockstep(qnet: QNet, pes: int, *, index_bits: int = DEFAULT_INDEX_BITS,
                   rel_bits: int = DEFAULT_REL_BITS, placement: str = "search",
                   perms: list[np.ndarray] | None = None, seed: int = 0,
                   trim: bool | None = None, one_map: bool = False,
                   col_lists: bool | None = None) -> LockstepImage:
    """The lockstep image of a qnet for `pes` PEs.

    placement of the hidden layers' rows: "search" (`images.placement.place_search`,
    fewest slots; deterministic for a seed), "lpt" (`place_longest_first`, even work per PE) or
    "interleave" (no permutation); or `perms`, one permutation per hidden layer, given.
    trim: dead units last in their PE and left out of the engine's rows (`dead_units`; the
    placement's PE of every row is kept, so are the slots); False: every layer has
    ceil(out / N) rows (a fixed shape for any network of the same sizes); None (default):
    True unless `perms` are given (they are then kept as they are).
    one_map: the board's layout for a CNN (`LockstepImage.one_map`; a network with conv
    layers only).
    col_lists (with one_map): which conv layers walk only their columns with a weight
    (`choose_col_lists`): None (auto, and only where the lists leave as many PE codebooks in
    the board's block RAMs: `lists_keep_codebooks`), True (every conv layer), False (none).
    """
    if not isinstance(pes, int) or pes < 1:
        raise InputError(f"pes must be a positive integer, not {pes!r}")
    limits.check("max_pes", pes, "pes")
    if one_map and not any(ll.is_conv for ll in qnet.layers):
        raise InputError("one_map is the layout of a network with conv layers")
    if not one_map:  # (one value a map word: any PE count walks a flat map)
        conv.check_pes(qnet, pes)
    if not 1 <= rel_bits <= 12:
        raise InputError(f"rel_bits must be 1..12, not {rel_bits!r}")
    if placement not in PLACEMENTS:
        raise InputError(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
    qnet.validate(index_bits=index_bits)

    K = 1 << index_bits
    L = qnet.num_layers
    given = perms
    if perms is not None:
        perms = [np.asarray(p, dtype=np.int64) for p in perms]
        if len(perms) != L - 1 or any(
                not np.array_equal(np.sort(p), np.arange(layer.out_features))
                for p, layer in zip(perms, qnet.layers)):
            raise InputError(f"perms must be {L - 1} permutations of the hidden layers' rows")
        perms = perms + [np.arange(qnet.layers[-1].out_features, dtype=np.int64)]
    else:
        perms = []
        for i, layer in enumerate(qnet.layers):
            if i == L - 1 or placement == "interleave":
                perms.append(np.arange(layer.out_features, dtype=np.int64))
            elif placement == "lpt":
                matrix = layer_kind(layer).matrix(layer)
                perms.append(place_longest_first(np.count_nonzero(matrix, axis=1), pes))
            elif at_bound(layer_kind(layer).matrix(layer), pes, rel_bits=rel_bits):
                # already optimal in logical order (a network pruned for this engine,
                # compress.pattern): keep it, no search can do better
                perms.append(np.arange(layer.out_features, dtype=np.int64))
            else:
                # search effort ~ sqrt(layer size): 2 nominal seconds for LeNet-300-100's l0
                # (784 x 300), less where a small layer has converged long before
                size = layer.out_features * layer.in_features
                budget = 2.0 * min(1.0, (size / (784 * 300)) ** 0.5)
                matrix = layer_kind(layer).matrix(layer)
                perm = place_search(matrix, pes, rel_bits=rel_bits, seed=seed, budget_s=budget)
                ident = np.arange(layer.out_features, dtype=np.int64)
                if slot_cost(matrix, ident, pes, rel_bits=rel_bits) <= slot_cost(
                        matrix, perm, pes, rel_bits=rel_bits):
                    perm = ident  # a network pruned for this engine, a few slots off the bound
                perms.append(perm)

    rows_of = [ceil_div(layer.out_features, pes) for layer in qnet.layers]
    has_conv = any(ll.is_conv for ll in qnet.layers)
    if (trim or (trim is None and given is None)) and not has_conv:
        mats = [layer_kind(ll).matrix(ll) for ll in qnet.layers]
        dead = dead_units(qnet)
        # from the last hidden layer back: layer i's trim reorders layer i + 1's columns (the
        # engine takes them in physical order), which can put two columns that hit the same
        # row in some PE next to each other (a hold each time both are computed; a network
        # pruned for the board avoids them in its logical order). Trimmed where the pairs that
        # hit do not grow by more than the rows saved (each saves a drain row, a bias row
        # and a front-end group every inference)
        for i in range(L - 2, -1, -1):
            if not dead[i].any():
                continue
            perm, most = _trim(perms[i], dead[i], pes)
            nxt = mats[i + 1][perms[i + 1]]
            before = _adjacent_hits(nxt[:, perms[i]], pes, rel_bits, index_bits)
            after = _adjacent_hits(nxt[:, perm], pes, rel_bits, index_bits)
            if after - before <= rows_of[i] - most:
                perms[i], rows_of[i] = perm, most

    # every layer's matrix, rows placed and columns in physical order (`images.conv`: the
    # previous layer's row order, and a conv map's channels by PE)
    mats, _cols = conv.physical_layers(qnet, perms, 1 if one_map else pes)
    geoms = conv.network_geometries(qnet)
    slot_blocks, ptrs, layers, biases = [], [], [], []
    col_base = bias_base = slot_base = 0
    for i, layer in enumerate(qnet.layers):
        kind = layer_kind(layer)
        idx = mats[i]
        cols = idx.shape[1]
        block, start = _layer_block(idx, pes, rel_bits, index_bits, long_fillers=one_map)
        slot_blocks.append(block)
        ptrs.append(slot_base + start[:-1])
        rows = rows_of[i]
        b = np.zeros(rows * pes, dtype=np.int64)
        kept = min(rows * pes, layer.out_features)  # the rows after them: dead, bias 0
        b[:kept] = layer.bias[perms[i]][:kept]
        biases.append(b.reshape(rows, pes).T)  # [pes, rows]: PE k row j = physical k + pes*j
        cb = np.zeros(K, dtype=np.int16)
        cb[: len(layer.codebook)] = layer.codebook
        layers.append(LockstepLayer(
            in_features=cols, out_features=layer.out_features, shift=layer.shift,
            relu=layer.relu, codebook=cb, codebook_size=len(layer.codebook),
            col_base=col_base, rows_per_pe=rows, bias_base=bias_base, perm=perms[i],
            kind=kind.name, geom=geoms[i].as_tuple() if geoms[i] is not None else (),
            in_used=(None if i == 0 or has_conv or rows_of[i - 1] * pes >= cols
                     else rows_of[i - 1] * pes)))
        col_base += cols
        bias_base += rows
        slot_base += int(start[-1])
    col_ptr = np.concatenate(ptrs + [np.array([slot_base], dtype=np.int64)])
    img = LockstepImage(pes=pes, index_bits=index_bits, rel_bits=rel_bits, layers=layers,
                        slots=np.concatenate(slot_blocks), col_ptr=col_ptr,
                        bias=np.concatenate(biases, axis=1), input_frac=qnet.input_frac,
                        input_shape=(tuple(int(v) for v in qnet.input_shape)
                                     if qnet.input_shape else None), one_map=one_map,
                        col_lists=(choose_col_lists(qnet.layers, mats, col_lists)
                                   if one_map else None))
    if col_lists is None and img.listed and not lists_keep_codebooks(img):
        img = replace(img, col_lists=None)
    return img


BOARD_EBR = 30  # the iCE40UP5K's block RAMs: the one-map layout is the iCEBreaker's
_EBR_SHAPES = ((16, 256), (8, 512), (4, 1024), (2, 2048))  # an iCE40 block RAM's shapes


def lists_keep_codebooks(img: "LockstepImage") -> bool:
    """Whether `img`'s column lists (auto) leave as many PE codebooks in the board's block RAMs
    as the walk without them. The lists' table and pointers can take a block RAM more than
    the plain pointers, and a codebook pushed into logic costs cells the UP5K has none to
    spare for (LeNet-5 retrained for the board: 375 listed conv2 columns, a table of 377 words
    in 2 blocks, the pointers still 8: 4 codebooks in block RAM, 5,367 of 5,280 LCs). The
    block RAMs are counted as the build maps them (every memory but the lane ROMs and the
    map, which go to SPRAM; fpga.boards.ice40.ebr_blocks), accumulators of 32 bits."""
    def codebooks(im) -> int:
        used = sum(min(-(-m.width // w) * -(-m.depth // d) for w, d in _EBR_SHAPES)
                   for m in memory_map(replace(im, codebook_roms=0))
                   if not (m.name.startswith("lane") or m.name == "map"))
        return min(im.pes, max(0, BOARD_EBR - used))

    return codebooks(img) >= codebooks(replace(img, col_lists=None))


def decode_lockstep(img: LockstepImage) -> QNet:
    """The logical qnet the image computes (undoes placement, padding and permutations)."""
    n = img.pes
    mask = (1 << img.index_bits) - 1
    cmaps, in_logical = column_maps(img)
    layers = []
    for i, ll in enumerate(img.layers):
        cols = ll.in_features
        g0 = ll.col_base
        lo, hi = int(img.col_ptr[g0]), int(img.col_ptr[g0 + cols])
        idx = np.zeros((ll.out_features, cols), dtype=np.uint8)
        for k in range(n):
            rows_k = len(range(k, ll.out_features, n))
            ent = img.slots[lo:hi, k].astype(np.int64)
            v, z = ent & mask, ent >> img.index_bits
            # drop the padding after each column's last real entry: keep entries up to the last v != 0
            keep = np.zeros(len(ent), dtype=bool)
            ptr = [0]
            for c in range(cols):
                a, b = int(img.col_ptr[g0 + c]) - lo, int(img.col_ptr[g0 + c + 1]) - lo
                nz = np.flatnonzero(v[a:b])
                end = a + (int(nz[-1]) + 1 if len(nz) else 0)
                keep[a:end] = True
                ptr.append(ptr[-1] + end - a)
            sub = decode_csc(v[keep], z[keep], np.array(ptr), rows_k, rel_bits=img.rel_bits,
                             long_fillers=img.long_fillers)
            idx[k::n] = sub
        # undo the permutations: rows by this layer's, columns by the column map (the
        # previous layer's rows, and a conv map's channels by PE: `images.conv`)
        logical = np.empty_like(idx)
        logical[ll.perm] = idx
        try:
            logical = conv.logical_matrix(logical, cmaps[i], in_logical[i])
        except ValueError as e:
            raise InputError(f"lockstep layer l{i}: {e}") from None
        bias_phys = img.bias[:, ll.bias_base: ll.bias_base + ll.rows_per_pe].T.reshape(-1)
        kept = min(len(bias_phys), ll.out_features)  # physical rows after them: dead, bias 0
        bias = np.zeros(ll.out_features, dtype=np.int32)
        bias[ll.perm[:kept]] = bias_phys[:kept]
        layers.append(LAYER_KINDS[ll.kind].make(
            codebook=ll.codebook[: ll.codebook_size].copy(), index=logical, bias=bias,
            shift=ll.shift, relu=ll.relu, geom=ll.conv_geom))
    return QNet(layers=layers, input_frac=img.input_frac, input_shape=img.input_shape)


def column_maps(img: LockstepImage) -> tuple[list[np.ndarray], list[int]]:
    """(column maps, logical column counts) of the image's layers: the logical column each
    physical one reads, -1 for a padding channel's (`images.conv.column_maps`)."""
    geoms = [ll.conv_geom for ll in img.layers]
    kinds = [ll.kind for ll in img.layers]
    logical = conv.logical_in_features(kinds, geoms, img.layers[0].in_features)
    for i, n in enumerate(logical):
        if n < 0:
            logical[i] = img.layers[i - 1].out_features
    perms = [np.asarray(ll.perm) for ll in img.layers]
    return conv.column_maps(kinds, logical, geoms, perms, img.map_lanes), logical


def _patches(x: np.ndarray, g: "conv.ConvGeom") -> np.ndarray:
    """bool[batch, positions, c * kh * kw]: the non-zeros of every computed position's patch
    (the positions of whole pooling windows; zero padding is zero), columns (c, dy, dx)."""
    b = x.shape[0]
    m = np.asarray(x).reshape(b, g.c, g.h, g.w) != 0
    m = np.pad(m, ((0, 0), (0, 0), (g.ph, g.ph), (g.pw, g.pw)))
    win = np.lib.stride_tricks.sliding_window_view(m, (g.kh, g.kw), axis=(2, 3))
    win = win[:, :, :: g.sh, :: g.sw][:, :, : g.hp * g.qh, : g.wp * g.qw]  # [b, c, y, x, kh, kw]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(b, -1, g.c * g.kh * g.kw)


def lockstep_cycles(img: LockstepImage, acts: list[np.ndarray]) -> np.ndarray:
    """Slot cycles per layer for a batch: sum of L(c) over the non-zero input columns (a conv
    layer: over every computed position's patch).

    acts[i] is layer i's input int16[batch, in_i] in logical column order (the golden model's
    layer inputs, a map flattened (C, H, W)); returns int64[batch, layers].
    """
    cols, logical = column_maps(img)
    out = []
    for i, ll in enumerate(img.layers):
        g0 = ll.col_base
        lc = np.diff(img.col_ptr[g0: g0 + ll.in_features + 1])
        lc_log = np.zeros(logical[i], dtype=np.int64)  # L of each logical column
        ok = cols[i] >= 0
        lc_log[cols[i][ok]] = lc[ok]
        a = np.asarray(acts[i])
        g = ll.conv_geom
        if g is None:
            out.append((a != 0).astype(np.int64) @ lc_log)
        else:  # in chunks: the patches of a batch are large
            out.append(np.concatenate(
                [(_patches(a[j: j + 64], g).astype(np.int32) @ lc_log).sum(axis=1)
                 for j in range(0, len(a), 64)] or [np.zeros(0, np.int64)]))
    return np.stack(out, axis=1)


# ---------------------------------------------------------------------------------------------
# The engine: its parameters and its memory map (hw.lockstep is built from these)


DRAIN_SHARES = (1, 2, 4, 8, 16)  # PEs per output stage the engine can have


@dataclass(frozen=True)
class LockstepParams(EngineParams):
    """The lockstep engine's parameters (`hw.lockstep.LockstepEngine` takes them as keywords)."""

    queue_depth: int = 2  # columns queued between the pointer stage and the slot sequencer
    drain_share: int = 1  # PEs per output stage: 1, 2, 4, 8 or 16 (fewer stages, longer drain)
    # layer 1's PRELOAD and COMPUTE under layer 0's DRAIN where the network allows it
    # (`hw.lockstep`, `bg_drain`: drain_share 2, fc layers, layer 1 no wider a PE than layer
    # 0); False builds the engine without it (about 100 logic cells fewer, a few % more cycles)
    overlap: bool = True

    def fitted(self, pes: int) -> "LockstepParams":
        """drain_share rounded down to a power of two <= pes (an output stage for at most the
        PEs there are)."""
        return replace(self, drain_share=1 << (min(self.drain_share, pes).bit_length() - 1))


def layer1_under_drain(img: LockstepImage, drain_share: int, overlap: bool = True) -> bool:
    """Whether the engine runs layer 1's PRELOAD and COMPUTE under layer 0's DRAIN
    (`hw.lockstep`, `bg_drain`): with `overlap`, drain_share 2, fc layers only, at least two
    layers and layer 1 no more rows a PE than layer 0 (its rows drained before its biases go
    in)."""
    rows = [ll.rows_per_pe for ll in img.layers]
    return bool(overlap and not img.has_conv and drain_share == 2 and len(rows) >= 2
                and rows[1] <= rows[0])


def act_words(img: LockstepImage) -> int:
    """Words per PE of one activation bank: the widest layer input or output over N PEs; with
    conv layers two regions of the largest map (`map_region`), a conv layer reading one and
    writing the other (its later passes still read its input)."""
    if img.has_conv:
        return 2 * map_region(img)
    widths = [img.in_features] + [ll.out_features for ll in img.layers]
    return max(ceil_div(w, img.pes) for w in widths)


def map_region(img: LockstepImage) -> int:
    """Words per PE of one map region of a CNN's bank: the largest map (the input, every
    layer's output) in the layout it is kept in (`images.conv.act_words`); with `one_map` in
    values: the input, a conv layer's output channels rounded up to N (a PE's row beyond them
    drains a zero), an fc layer's N x rows_per_pe outputs."""
    if img.one_map:
        n = img.pes
        words = [conv.engine_in_features(img)]
        for ll in img.layers:
            g = ll.conv_geom
            words.append(ll.rows_per_pe * n * (g.hp * g.wp if g else 1))
        return max(words)
    return conv.act_words(img)


def map_bases(img: LockstepImage) -> list[tuple[int, int]]:
    """(source, destination) first word of each layer's maps in the bank: the input is at 0, a
    conv layer writes the region it does not read, an fc layer overwrites its input (its drain
    runs after its compute). All 0 for a network without conv layers."""
    r = map_region(img) if img.has_conv else 0
    out, src = [], 0
    for ll in img.layers:
        dst = (r - src) if ll.geom else src
        out.append((src, dst))
        src = dst
    return out


def memory_map(img: LockstepImage, params: LockstepParams = LockstepParams()
               ) -> list[MemorySpec]:
    """Every memory of `hw.lockstep.LockstepEngine` for `img`, in the order it makes them: the
    lane ROMs (the slot words of PE pairs), the column pointer banks, per PE an accumulator RAM
    (rows, then the biases) and an activation RAM with two input banks."""
    n = img.pes
    e = img.entry_bits
    slots = max(1, img.num_slots)
    lane_w = [LANE_BITS if img.one_map else e * min(2, n - 2 * j)
              for j in range(len(img.lanes()))]
    if img.one_map:  # the last lane word holds what is left of the slot word
        lane_w[-1] = n * e - LANE_BITS * (len(lane_w) - 1)
    specs = [MemorySpec(f"lane{j}", "rom", lane_w[j], slots,
                        tuple(int(w) for w in words) or (0,))
             for j, words in enumerate(img.lanes())]
    ptr_bits = bits(img.num_slots)
    ptr = [int(p) for p in engine_col_ptr(img)[0]]
    specs += [
        MemorySpec("colptr_even", "rom", ptr_bits, max(1, len(ptr[0::2])), tuple(ptr[0::2])),
        MemorySpec("colptr_odd", "rom", ptr_bits, max(1, len(ptr[1::2])),
                   tuple(ptr[1::2]) or (0,)),
    ]
    acc_bits = params.acc_bits
    mask = (1 << acc_bits) - 1
    rows = max(img.acc_rows(layer) for layer in img.layers)
    bias = np.asarray(img.bias)
    specs += [MemorySpec(f"pe{k}.acc", "ram", acc_bits, rows + bias.shape[1],
                         tuple([0] * rows + [int(b) & mask for b in bias[k]]),
                         read_ports=1, write_ports=1) for k in range(n)]
    if img.one_map:  # every map in one RAM (on the board: an SPRAM)
        specs.append(MemorySpec("map", "ram", 16, act_depth(img), (), read_ports=1,
                                write_ports=1))
        table = codebook_table(img)
        specs += [MemorySpec(f"pe{k}.codebook", "rom", 16, len(table), tuple(table))
                  for k in range(min(img.codebook_roms, n))]
        if img.listed:  # the walker's column table (`col_table`)
            words, _, aw, yb = col_table(img)
            specs.append(MemorySpec("coltab", "rom", aw + 2 * yb, len(words), tuple(words)))
        return specs
    specs += [MemorySpec(f"pe{k}.act", "ram", 16, act_depth(img), (), read_ports=1,
                         write_ports=1) for k in range(n)]
    return specs


def codebook_table(img: LockstepImage) -> list[int]:
    """Every layer's codebook, 2**index_bits words each (zero padded), for as many layers as
    the engine's layer register counts (at least 2): word (layer << index_bits) | v is
    codebook[layer][v] as 16-bit two's complement."""
    K = 1 << img.index_bits
    L = 1 << max(1, (img.num_layers - 1).bit_length())
    vals = [int(ll.codebook[v]) for ll in img.layers for v in range(K)]
    return [v & 0xFFFF for v in vals + [0] * (K * L - len(vals))]


def act_bank_bits(img) -> int:
    """Word-address bits of one input bank of the lockstep engine's activation RAMs: bank b
    starts at b << bits, so the bank is an address bit, not an adder."""
    return bits(act_words(img) - 1)


def low_words(img) -> int | None:
    """Words of a bank below every layer's outputs in a network of fc layers: the engine
    writes layer outputs top down (row r at word 2**act_bank_bits - 1 - r), the input goes
    bottom up, so once layer 0 has read the input the loader may refill these words while the
    later layers still run. None with conv layers (their maps' regions, `map_bases`: the bank
    is refilled after the last output word)."""
    if img.has_conv:
        return None
    return max(0, (1 << act_bank_bits(img)) - max(ll.rows_per_pe for ll in img.layers))


def act_depth(img) -> int:
    """Two banks (the next input loads while the current one computes): bank b at
    b << act_bank_bits; fc layers' outputs at the top of each (`low_words`), with conv
    layers bank 1 act_words deep."""
    if img.has_conv:
        return (1 << act_bank_bits(img)) + act_words(img)
    return 2 << act_bank_bits(img)


BOARD_LANES = 3  # lane words of a CNN on the board: three SPRAMs, the fourth holds the maps


def board_rel_bits(pes: int, index_bits: int = DEFAULT_INDEX_BITS) -> int:
    """The relative index of a CNN's image on the board: the widest up to the default whose
    slot word (pes entries) fits `BOARD_LANES` 16-bit lanes (8 PEs: 6-bit entries, rel_bits 2);
    1 when not even that does (more lanes than SPRAMs: the board's fit check says so)."""
    return max(1, min(DEFAULT_REL_BITS, BOARD_LANES * LANE_BITS // pes - index_bits))


def board_options(qnet: QNet, pes: int, *, index_bits: int = DEFAULT_INDEX_BITS) -> dict:
    """The image options on the boards: a CNN takes the one-map layout with the slot word in
    `BOARD_LANES` lanes (`board_rel_bits`); a network of fc layers its usual image."""
    if not any(ll.is_conv for ll in qnet.layers):
        return {}
    return {"one_map": True, "rel_bits": board_rel_bits(pes, index_bits)}


def one_map_region(qnet: QNet, pes: int) -> int:
    """`map_region` of a CNN's one-map image, from the qnet (ceil(out / N) rows a PE)."""
    geoms = conv.network_geometries(qnet)
    words = [int(qnet.in_features)]
    for ll, g in zip(qnet.layers, geoms):
        rows = ceil_div(g.out_ch if g is not None else ll.out_features, pes)
        words.append(rows * pes * (g.hp * g.wp if g is not None else 1))
    return max(words)


def board_bound(qnet: QNet, pes: int, *, index_bits: int = DEFAULT_INDEX_BITS) -> dict:
    """`memory_bound`'s options matching `board_options`."""
    if not any(ll.is_conv for ll in qnet.layers):
        return {}
    return {"rel_bits": board_rel_bits(pes, index_bits), "region": one_map_region(qnet, pes)}


def memory_bound(nonzeros: list[np.ndarray], shape: list[int], pes: int, *,
                 acc_bits: int = 32, index_bits: int = DEFAULT_INDEX_BITS,
                 rel_bits: int = DEFAULT_REL_BITS, region: int = 0) -> list[MemorySpec]:
    """The memories of the engine for a network of layer sizes `shape` (in_0, out_0, ...)
    whose layer i has nonzeros[i][c] non-zero weights in column c, every depth the row
    placement decides at its least: a lane ROM word per slot, and a column takes at least
    ceil(non-zeros / PEs) slots (fillers and the spread over PEs only add); the column
    pointers, accumulators (rows and biases) and activations do not depend on the placement.
    region > 0: a CNN's one-map layout (`board_options`) with map regions of that many words."""
    e = index_bits + rel_bits
    outs = shape[1:]
    slots = max(1, sum(int(np.sum(-(-np.asarray(c, dtype=np.int64) // pes)))
                       for c in nonzeros))
    if region:
        nl = ceil_div(pes * e, LANE_BITS)
        specs = [MemorySpec(f"lane{j}", "rom", min(LANE_BITS, pes * e - LANE_BITS * j), slots)
                 for j in range(nl)]
    else:
        specs = [MemorySpec(f"lane{j}", "rom", e * min(2, pes - 2 * j), slots)
                 for j in range(ceil_div(pes, 2))]
    ptrs = sum(shape[:-1]) + 1
    specs += [MemorySpec("colptr_even", "rom", bits(slots), ceil_div(ptrs, 2)),
              MemorySpec("colptr_odd", "rom", bits(slots), max(1, ptrs // 2))]
    rows = [ceil_div(o, pes) for o in outs]
    specs += [MemorySpec(f"pe{k}.acc", "ram", acc_bits, max(rows) + sum(rows),
                         read_ports=1, write_ports=1) for k in range(pes)]
    if region:
        words = 2 * region
        specs.append(MemorySpec("map", "ram", 16, (1 << bits(words - 1)) + words,
                                read_ports=1, write_ports=1))
        return specs
    words = max(ceil_div(w, pes) for w in shape)
    specs += [MemorySpec(f"pe{k}.act", "ram", 16, (1 << bits(words - 1)) + words,
                         read_ports=1, write_ports=1) for k in range(pes)]
    return specs


def logic_of(img: LockstepImage) -> dict:
    """Everything of `img` that is logic in the engine's Verilog rather than memory contents
    (the codebooks are constants in logic): two images with equal `logic_of` make the same
    Verilog but for what their memories hold."""
    return {"layers": [[ll.in_features, ll.out_features, ll.shift, bool(ll.relu),
                        ll.codebook.tolist(), ll.col_base, ll.rows_per_pe, ll.bias_base, ll.kind,
                        ll.engine_in]
                       + ([list(ll.geom)] if ll.geom else [])
                       for ll in img.layers],
            "mems": [int(img.num_slots), len(img.col_ptr), list(img.bias.shape)],
            **({"input_shape": list(img.input_shape)} if img.has_conv else {}),
            **({"one_map": True, "codebook_roms": img.codebook_roms} if img.one_map else {}),
            **({"col_lists": [None if c is None else len(c) for c in img.col_lists],
                "col_table": [COL_LIST_VERSION, *col_table(img)[1:]]} if img.listed else {})}


def padded(img: LockstepImage) -> LockstepImage:
    """`img` with its slots padded to the bound of its shape, sum_i in_i * rows_per_pe_i:
    (v = 0, z = 0) slots at the end of the last column, which reach no accumulator (they cost
    cycles when that column is non-zero, nothing else)."""
    bound = sum(ll.in_features * ll.rows_per_pe for ll in img.layers)
    s = img.num_slots
    assert s <= bound, (s, bound)
    slots = np.concatenate([img.slots, np.zeros((bound - s, img.pes), img.slots.dtype)])
    col_ptr = img.col_ptr.copy()
    col_ptr[-1] = bound  # the last column gets the padding slots
    return replace(img, slots=slots, col_ptr=col_ptr)
