"""Pruning patterns shaped for an engine: every column's weights spread evenly over the PEs.

The board's engine (the lockstep engine, docs/lockstep.md) runs all N PEs on one column at a
time; physical row p of a layer lives in PE p % N as local row p // N, and a column costs as
many cycles as its busiest PE has entries there (weights, plus a filler entry wherever a PE's
gap of zero rows reaches 2**rel_bits), plus a hold cycle whenever a column's first entry in
some PE is on the row that PE's previous entry (the last of the previous column) writes.
Unstructured magnitude pruning leaves the busiest PE far above the mean: on the shipped
LeNet-300-100 the slots are 1.3x the non-zeros / N even after the row placement search. The
pattern here removes the imbalance at the source (load-balance-aware pruning, ESE, Han et al.
FPGA 2017; bank-balanced sparsity, Cao et al. FPGA 2019), with the rows placed in their
logical order (row p in PE p % N, what the image then keeps):

* Balanced: column c of a layer keeps m_c weights in every PE's rows, so it costs m_c slots
  in every PE and ceil(nnz_c / N) in all, the fewest any placement can give. (A PE whose rows
  cannot give m_c, as in a 10-row last layer on 8 PEs, keeps what they give, and a column only
  takes a count its weights need: more than N (m_c - 1) of them.)
* `bound_gaps`: a PE's kept rows in a column leave no gap of 2**rel_bits or more zero rows,
  counted from its first row: no filler entries.
* `split_ends`: where every PE has two rows or more, a PE's first kept row in a column lies
  below a split row and its last at or above it, so no column's first entry can be the row a
  previous column's last entry writes: no hold, whatever the input (a PE then keeps 0 or >= 2
  weights in a column).
* Which weights, and how many per column: magnitude. For every (column, PE) block and every
  count t, the largest sum of |w| over t of its rows that keep the rules above (a dynamic
  program over the block's rows; with no rule to keep, its t largest); a column's step from
  one count to the next adds that much magnitude for one slot (two from none with split ends),
  and the steps are taken by decreasing magnitude per slot (each column's steps in order)
  until the layer holds its count. With N = 1 and no rules this is magnitude pruning.

* Conv layers: the kernel as the engine's [out_ch, in_ch * kh * kw] matrix (`as_matrix`;
  output channel p in PE p % N, a column one (in_ch, ky, kx)). In a network with conv layers
  every layer takes the board's one-map layout's relative index (`conv_rel_bits`: 2 bits on
  the iCEBreaker), and a conv layer's steps also keep `walk_ahead`: the board's walker reads
  every column of a patch in order, each `walk_subs` times in a row (once for every
  sub-position of the pooling window), one read a cycle, into a queue of that many reads, so
  a read's slots beyond its cycle wait unless reads without weights follow; the steps are
  taken so that the slots never fall further behind the reads than the queue holds
  (`walk_backlog`): a conv layer with a dense input map then costs the walker's reads, no more.
  With 4 sub-positions and a queue of 2 that is one slot a column at most.

`lockstep_mask` is the pattern for one layer; `compress.prune` applies it in every pruning step
(`PruneConfig.pattern`), with the same count the unstructured threshold keeps (so the densities
are the same), and in a chain of Linear layers it drops the incoming weights of units the next
layer no longer reads. Retraining, quantization and coding after it are unchanged.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

UNSTRUCTURED = "unstructured"
LOCKSTEP = "lockstep"
PATTERNS = (UNSTRUCTURED, LOCKSTEP)

# The boards a network can be pruned for, and what their engine needs. The iCEBreaker's
# lockstep engine: 8 PEs, 8-bit entries (4-bit codebook index, 4-bit relative row), two
# entries in a 16-bit SPRAM word (fpga.boards builds it; a test checks that they agree). A
# network with conv layers runs in the engine's one-map layout (the slot word of 8 entries in
# three 16-bit lanes: 6-bit entries, a 2-bit relative row, `images.lockstep.board_rel_bits`):
# `conv_rel_bits`, for every layer of such a network. Its walker reads a conv layer's columns
# in order, each once for every sub-position of the pooling window in a row, one read a cycle,
# into a queue of `walk_ahead` reads (the board's queue depth): the conv layers'
# `lockstep_mask` walk_ahead (walk_subs: the layer's pooling window, `compress.prune`).
# `cnn_fc_pattern`: the fc layers of such a network stay unstructured: at 2-bit relative rows
# the gap bound confines an fc layer's weights to the first rows of every PE (LeNet-5's fc1 of
# 63 rows a PE then reads 233 of its 800 inputs, and the network's test error doubles:
# docs/board-pattern.md "Conv layers"), and the conv layers are where the cycles are.
BOARDS = {"icebreaker": {"pattern": LOCKSTEP, "pes": 8, "rel_bits": 4, "conv_rel_bits": 2,
                         "walk_ahead": 2, "cnn_fc_pattern": UNSTRUCTURED}}

# The dynamic program's work per pruning step (block x row x window x count elements) above
# which larger counts take a block's largest weights without the gap bound.
DP_WORK = 1 << 28
# Without split ends: a PE's first row in a column differs from its last rows in this many
# columns with weights before it, less one (a hold then needs them all without activation).
HAZARD_WINDOW = 3
# split_ends="auto": the largest share of a layer's kept magnitude that split ends may cost.
SPLIT_COST = 0.01
# Rows of blocks evaluated at once (bounds the memory of the traceback pointers).
CHUNK = 1 << 22


def board_pattern(board: str) -> dict:
    """The pattern settings {pattern, pes, rel_bits, conv_rel_bits, walk_ahead,
    cnn_fc_pattern} of a board."""
    if board not in BOARDS:
        raise InputError(f"unknown board {board!r}: the boards are {', '.join(BOARDS)}")
    return dict(BOARDS[board])


def prune_settings(board: str | None) -> dict:
    """`PruneConfig` fields that prune in a board's pattern ({} for None: unstructured)."""
    if board is None:
        return {}
    b = board_pattern(board)
    return {"pattern": b["pattern"], "pattern_pes": b["pes"], "pattern_rel_bits": b["rel_bits"],
            "pattern_conv_rel_bits": b["conv_rel_bits"], "pattern_walk_ahead": b["walk_ahead"],
            "pattern_cnn_fc": b["cnn_fc_pattern"]}


def as_matrix(weight: np.ndarray) -> np.ndarray:
    """A layer's weight as the engine's [out, in] matrix: a conv kernel [out_ch, in_ch, kh, kw]
    as [out_ch, in_ch * kh * kw], columns in (in_ch, ky, kx) order (the qnet's index, and the
    order in which the board's one-map walker reads a patch)."""
    w = np.asarray(weight)
    if w.ndim not in (2, 4):
        raise InputError(f"a pruning pattern needs a Linear [out, in] or Conv2d "
                         f"[out, in, kh, kw] weight, not one of shape {w.shape}")
    return w.reshape(w.shape[0], -1)


def check_pattern(pattern: str, pes: int, rel_bits: int) -> None:
    if pattern not in PATTERNS:
        raise InputError(f"pruning pattern must be one of {', '.join(PATTERNS)}, "
                         f"not {pattern!r}")
    if not isinstance(pes, (int, np.integer)) or isinstance(pes, bool) or not 1 <= pes <= 4096:
        raise InputError(f"pattern PEs must be 1..4096, not {pes!r}")
    if not isinstance(rel_bits, (int, np.integer)) or isinstance(rel_bits, bool) \
            or not 1 <= rel_bits <= 12:
        raise InputError(f"pattern rel_bits must be 1..12, not {rel_bits!r}")


def _blocks(a: np.ndarray, pes: int, fill) -> np.ndarray:
    """[out, cols] -> [pes * cols, R]: block (k, c) holds PE k's local rows of column c."""
    out, cols = a.shape
    r = -(-out // pes)
    pad = np.full((r * pes, cols), fill, dtype=a.dtype)
    pad[:out] = a
    return pad.reshape(r, pes, cols).transpose(1, 2, 0).reshape(pes * cols, r)


def _unblocks(b: np.ndarray, pes: int, out: int) -> np.ndarray:
    cols = b.shape[0] // pes
    r = b.shape[1]
    return b.reshape(pes, cols, r).transpose(2, 0, 1).reshape(r * pes, cols)[:out]


class _Blocks:
    """The dynamic program over a set of blocks: best value and weights for every count t.

    val [B, R]: |w| of a live weight, -inf for a pruned row or one the PE does not have. A
    solution of t picks has its first pick at a row < W (and < split) and each next pick at
    most W rows after the previous one (W = 2**rel_bits, so no gap reaches W zero rows); with
    a split its last pick is at a row >= split. For t > tdp the t largest values are taken
    without these rules (work bound for wide blocks).
    """

    def __init__(self, val: np.ndarray, live: np.ndarray, window: int, tdp: int,
                 split: int = 0, first_ok: np.ndarray | None = None):
        self.val, self.live, self.window, self.tdp = val, live, window, tdp
        B, R = val.shape
        self.ptr = []  # ptr[t - 2][b, j]: the previous pick of the best t-pick path ending at j
        self.jbest = np.zeros((B, tdp + 1), dtype=np.int64)
        self.best = np.full((B, R + 1), -np.inf)
        self.count = np.zeros((B, R + 1), dtype=np.int64)
        self.best[:, 0] = 0.0
        rows = np.arange(R)
        # split: the first pick at a row < split, the last at a row >= split
        first_lim = min(window, split) if split else window
        ok1 = rows[None, :] < first_lim
        if first_ok is not None:
            ok1 = ok1 & first_ok
        f = np.where(ok1, val, -np.inf)
        ends = rows >= split
        cnt = live.astype(np.int64)
        idt = np.int16 if R < (1 << 15) else np.int64
        for t in range(1, tdp + 1):
            if t > 1:
                pad = np.concatenate([np.full((B, window), -np.inf), f], axis=1)
                win = np.lib.stride_tricks.sliding_window_view(pad, window, axis=1)[:, :R]
                arg = win.argmax(axis=2)  # first maximum: the lowest row on ties
                prev = rows[None, :] - window + arg  # the previous pick's row
                f = val + np.take_along_axis(win, arg[:, :, None], axis=2)[:, :, 0]
                ok = prev >= 0
                f = np.where(ok, f, -np.inf)
                prev = np.maximum(prev, 0)
                cnt = live + np.take_along_axis(cnt, prev, axis=1)
                self.ptr.append(prev.astype(idt))
            j = np.where(ends[None, :], f, -np.inf).argmax(axis=1)
            self.jbest[:, t] = j
            self.best[:, t] = np.where(ends[j], f[np.arange(B), j], -np.inf)
            self.count[:, t] = cnt[np.arange(B), j]
        if tdp < R:  # larger counts: the largest values, no gap bound
            order = np.argsort(-val, axis=1, kind="stable")
            s = np.take_along_axis(val, order, axis=1)
            c = np.take_along_axis(live, order, axis=1)
            self.order = order
            self.best[:, tdp + 1:] = np.cumsum(s, axis=1)[:, tdp:]
            self.count[:, tdp + 1:] = np.cumsum(c, axis=1)[:, tdp:]

    def picks(self, t: np.ndarray) -> np.ndarray:
        """bool [B, R]: the rows of every block's best solution with t[b] picks."""
        B, R = self.val.shape
        out = np.zeros((B, R), dtype=bool)
        big = t > self.tdp
        if big.any():
            rank = np.empty_like(self.order)
            np.put_along_axis(rank, self.order, np.arange(R)[None, :].repeat(B, 0), axis=1)
            out[big] = rank[big] < t[big, None]
        small = np.where(big, 0, t)
        j = np.zeros(B, dtype=np.int64)
        ar = np.arange(B)
        for step in range(int(small.max(initial=0)), 0, -1):
            start = small == step
            j[start] = self.jbest[start, step]
            act = small >= step
            out[ar[act], j[act]] = True
            if step > 1:
                j[act] = self.ptr[step - 2][ar[act], j[act]]
        return out


def _split(rows: int, window: int) -> int:
    return min(window, -(-rows // 2))


def lockstep_mask(weight, alive, keep: int, *, pes: int = 8, rel_bits: int = 4,
                  bound_gaps: bool = True, split_ends: bool | str = "auto",
                  hazard_window: int = HAZARD_WINDOW, split: int | None = None,
                  walk_ahead: int | None = None, walk_subs: int = 1) -> np.ndarray:
    """The balanced mask of one [out, in] layer: a subset of `alive` with about `keep` weights.

    Every column keeps the same number of weights in each PE's rows (row p in PE p % pes), as
    the module docstring says; with `bound_gaps`, no PE's kept rows leave a gap that needs a
    filler entry at `rel_bits`; with `split_ends` (when every PE has two rows or more), every
    PE's first kept row in a column lies below `split` (default: half its rows, at most
    2**rel_bits) and its last one at or above it. The count is the one nearest `keep` that
    whole steps give (a step adds a weight in every PE, two from none with split ends).
    `split_ends="auto"`: split ends where they keep at least 1 - SPLIT_COST of the magnitude
    the layer keeps without them (a layer with many rows per PE, where a column's entries in a
    PE rarely number one; elsewhere the holds are cheaper than the weights a split moves), and
    where they keep the walk rule below if the layer without them keeps it; never where the
    walk rule allows one slot a column at most (`walk_subs` > `walk_ahead`: in every pruning
    round, also the early ones whose count no pattern can walk, as each round prunes within
    the last one's mask).
    `walk_ahead` (a conv layer on the board's one-map walker): the columns are read in order,
    each `walk_subs` times in a row (the pooling window's sub-positions), one read a cycle,
    every one of them (as a dense input map makes them), into a queue at most `walk_ahead`
    reads ahead of the slots; the steps are also taken so that the slots never fall more than
    that behind the reads (`walk_backlog`), so a read costs the reader's cycle and no more.
    Where the count cannot be reached so, the steps left out are taken after the others, in
    their order. With `walk_subs` > 1 there is no hazard window: consecutive slots of a dense
    map write different sub-positions' accumulator words.
    Deterministic: ties go to the lower row, column and count.
    """
    if split_ends == "auto" and walk_ahead is not None and walk_subs > walk_ahead:
        split_ends = False  # 2 slots a column, subs times in a row: never within the walk rule
    if walk_ahead is not None and walk_subs > 1:
        # a column's reads write its sub-positions' accumulator words in turn, so consecutive
        # slots of a dense map never hit one word: no hazard to spread the first rows for
        hazard_window = 0
    if split_ends == "auto" and split is None:
        a = lockstep_mask(weight, alive, keep, pes=pes, rel_bits=rel_bits, bound_gaps=bound_gaps,
                          split_ends=True, walk_ahead=walk_ahead, walk_subs=walk_subs)
        b = lockstep_mask(weight, alive, keep, pes=pes, rel_bits=rel_bits, bound_gaps=bound_gaps,
                          split_ends=False, hazard_window=hazard_window, walk_ahead=walk_ahead,
                          walk_subs=walk_subs)
        if walk_ahead is not None:  # split ends (2 slots a column) must not break the walk
            walked = [walk_backlog(column_slots(x, pes), walk_subs) <= walk_ahead for x in (a, b)]
            if walked[1] and not walked[0]:
                return b
        w = np.abs(np.asarray(weight, dtype=np.float64))
        return a if w[a].sum() >= (1 - SPLIT_COST) * w[b].sum() else b
    w = np.abs(np.asarray(weight, dtype=np.float64))
    alive = np.asarray(alive, dtype=bool)
    if w.ndim != 2 or alive.shape != w.shape:
        raise InputError(f"lockstep_mask needs a 2-D weight and a mask of its shape, not "
                         f"{w.shape} and {alive.shape}")
    check_pattern(LOCKSTEP, pes, rel_bits)
    out, cols = w.shape
    keep = int(keep)
    if keep >= int(alive.sum()):
        return alive.copy()
    if keep <= 0:
        return np.zeros_like(alive)
    val = _blocks(np.where(alive, w, -np.inf), pes, -np.inf)
    live = _blocks(alive, pes, False)
    R = val.shape[1]
    have = np.array([len(range(k, out, pes)) for k in range(pes)]).repeat(cols)  # rows of PE
    window = (1 << rel_bits) if bound_gaps else R
    window = max(1, min(window, R))
    if split is None:
        split = _split(R, window) if split_ends and int(have.min()) >= 2 else 0
    # counts t <= tdp by the dynamic program (work B x R x window per count), larger ones
    # by magnitude alone
    tdp = max(1, min(R, DP_WORK // max(1, val.size * window)))
    if window >= R and not split:
        tdp = 0  # no bound to keep: the largest values are the best t picks
    step = max(1, CHUNK // max(1, R * max(tdp, 1)))
    chunks = [(a, min(len(val), a + step)) for a in range(0, len(val), step)]
    solved = [_Blocks(val[a:b], live[a:b], window, tdp, split) for a, b in chunks]
    best = np.concatenate([s.best for s in solved])  # [B, R + 1]
    count = np.concatenate([s.count for s in solved])
    # a block that cannot give t weights (too few rows, or live rows too far apart for the
    # bound) keeps its most: the column still costs t slots, its other PEs fill them
    feasible = np.isfinite(best)
    cap = R - np.argmax(feasible[:, ::-1], axis=1)
    t_all = np.minimum(np.arange(R + 1)[None, :], cap[:, None])
    best = np.take_along_axis(best, t_all, axis=1)
    count = np.take_along_axis(count, t_all, axis=1)
    colv = best.reshape(pes, cols, R + 1).sum(axis=0)  # [cols, R + 1]
    coln = count.reshape(pes, cols, R + 1).sum(axis=0)
    # a column's steps go from one feasible count to the next (with split ends, a PE cannot
    # hold one weight: 0 -> 2); a step's key is the magnitude it adds per slot, lowered to the
    # previous step's key where it is higher, so that the steps are taken in order
    key = np.full((cols, R + 1), -np.inf)
    dn = np.zeros((cols, R + 1), dtype=np.int64)
    prev = np.zeros(cols, dtype=np.int64)
    run = np.full(cols, np.inf)
    ar = np.arange(cols)
    for t in range(1, R + 1):
        # feasible, and at the bound: more than pes * (t - 1) weights need t slots anyhow
        ok = np.isfinite(colv[:, t]) & (coln[:, t] > pes * (t - 1))
        d_n = coln[:, t] - coln[ar, prev]
        with np.errstate(invalid="ignore"):
            g = np.where(d_n > 0, (colv[:, t] - colv[ar, prev]) / (t - prev), -np.inf)
        run = np.where(ok, np.minimum(run, g), run)
        key[:, t] = np.where(ok, run, -np.inf)
        dn[:, t] = np.where(ok, d_n, 0)
        prev = np.where(ok, t, prev)
    c_idx, t_idx = np.nonzero(key > -np.inf)
    order = np.lexsort((t_idx, c_idx, -key[c_idx, t_idx]))
    if walk_ahead is not None:
        order = _walk_order(c_idx[order], t_idx[order], dn[c_idx[order], t_idx[order]], keep,
                            cols, walk_ahead, order, walk_subs)
    taken = np.cumsum(dn[c_idx[order], t_idx[order]])
    n = min(len(order), int(np.searchsorted(taken, keep)) + 1)
    if n > 1 and taken[n - 1] - keep > keep - taken[n - 2]:
        n -= 1  # the nearer count: a step adds a weight in every PE (two with split ends)
    m = np.zeros(cols, dtype=np.int64)
    np.maximum.at(m, c_idx[order[:n]], t_idx[order[:n]])  # the count each column reached
    tb = np.minimum(np.tile(m, pes), cap)
    # the hazard window where every PE has rows to spare for it (not a 10-row last layer)
    spread = (not split and hazard_window >= 2 and int(have.min()) >= 2 * hazard_window
              and val.size * window * int(m.max()) <= DP_WORK)
    if not spread:
        picks = np.concatenate([s.picks(tb[a:b]) for s, (a, b) in zip(solved, chunks)])
    else:
        picks = _spread_firsts(val, live, window, tb.reshape(pes, cols), m, hazard_window)
    return _unblocks(picks & live, pes, out)


def column_slots(mask: np.ndarray, pes: int) -> np.ndarray:
    """L(c) of an [out, in] mask: the most weights any PE (rows p % pes) keeps in column c."""
    m = np.asarray(mask, dtype=bool)
    return np.stack([m[k::pes].sum(axis=0) for k in range(pes)]).max(axis=0)


def walk_backlog(lc: np.ndarray, subs: int = 1) -> int:
    """The most reads the slots fall behind a reader of one read a cycle over the columns in
    order, each read `subs` times in a row (slots lc[c] a read, a read without any costing its
    cycle alone), over one pass (the walker's passes are apart: PRELOAD and the drain empty
    the queue between them): the largest B_k of B_k = max(0, B_(k-1) + x_k - 1), B_0 = 0, x
    the lc repeated."""
    x = np.repeat(np.asarray(lc, dtype=np.int64) - 1, max(1, int(subs)))
    s = np.cumsum(x)
    return int(max(0, (s - np.minimum(np.minimum.accumulate(s), 0)).max(initial=0)))


def _walk_order(c, t, d, keep: int, cols: int, ahead: int, order: np.ndarray,
                subs: int = 1) -> np.ndarray:
    """`order` (steps by decreasing key: column c[i] to count t[i], adding d[i] weights) with
    the steps that would let the slots fall more than `ahead` reads behind the reads
    (`walk_backlog`, each column read `subs` times) moved after the others, once the rest
    cannot reach `keep`. A column whose step is moved has its later steps moved too (a
    column's counts are taken in order)."""
    lc = np.zeros(cols, dtype=np.int64)
    closed = np.zeros(cols, dtype=bool)
    first, later = [], []
    got = 0
    for i in range(len(c)):
        if got >= keep:
            later.append(i)
            continue
        if not closed[c[i]]:
            prev = lc[c[i]]
            lc[c[i]] = t[i]
            if walk_backlog(lc, subs) <= ahead:
                first.append(i)
                got += int(d[i])
                continue
            lc[c[i]] = prev
            closed[c[i]] = True
        later.append(i)
    return order[np.array(first + later, dtype=np.int64)]


def _spread_firsts(val, live, window: int, t: np.ndarray, m: np.ndarray,
                   hazard_window: int) -> np.ndarray:
    """The picks of every block, column by column, where a PE's first kept row in a column is
    never the row its last entry wrote in any of the previous hazard_window - 1 columns that
    have weights (so a hold needs that many columns without an activation in between).

    t [pes, cols]: each block's count; a block that cannot keep it under the rule keeps its
    most. val/live: [pes * cols, R] blocks, block (k, c) at k * cols + c.
    """
    pes, cols = t.shape
    R = val.shape[1]
    out = np.zeros(val.shape, dtype=bool)
    recent: list[np.ndarray] = []  # last rows [pes] of the latest columns with weights
    ks = np.arange(pes)
    for c in np.flatnonzero(m):
        idx = ks * cols + c
        forbid = np.zeros((pes, R), dtype=bool)
        for last in recent:
            has = last >= 0
            forbid[ks[has], last[has]] = True
        tc = t[:, c]
        blk = _Blocks(val[idx], live[idx], window, int(tc.max()), first_ok=~forbid)
        ok = np.isfinite(blk.best[:, : int(tc.max()) + 1])
        ok &= np.arange(ok.shape[1])[None, :] <= tc[:, None]
        teff = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)  # the most it can keep
        p = blk.picks(teff)
        out[idx] = p
        # a PE's last slot is its last entry only when it fills the column
        rows = np.where(p, np.arange(R)[None, :], -1).max(axis=1)
        recent.append(np.where((teff == m[c]) & (teff > 0), rows, -1))
        recent = recent[-(hazard_window - 1):]
    return out
