"""Row placement: which PE holds which row of a layer, for both engines.

Physical row p of a layer lives in PE p % N as local row p // N; a hidden layer's rows can be
permuted freely (the next layer's columns follow). Three placements, each returning perm with
physical row p = logical row perm[p], deterministic:

* `place_balanced` (the EIE image, `images.eie`): even work per PE and each column's entries
  spread over the PEs, then pairwise swaps; rows inside a PE by decreasing work.
* `place_longest_first` (the lockstep image's "lpt"): longest-processing-time greedy on the
  work per row alone.
* `place_search` (the lockstep image's default): a seeded search for the fewest lockstep slots,
  described below.

The lockstep search: fewer slot cycles per column.

In the lockstep image (`images.lockstep`) every column c of a layer costs
L(c) = max over the N PEs of the PE's entry count in c (non-zeros plus the fillers that
`images.csc.encode_csc` inserts where a PE's gap of zero rows exceeds 2**rel_bits - 1), in
ROM slots and in cycles whenever the column's activation is non-zero. Physical row p lives in PE
p % N as local row p // N, and a hidden layer's rows can be permuted freely. Balancing the total
work per PE (`place_longest_first`, LPT) leaves the per-column maxima far above
ceil(entries_c / N): what the slots pay for is the worst PE of each column, not the totals.

`place_search` searches the placement directly on sum_c w_c * L(c):

* Start: `place_greedy`, rows by decreasing work each to the PE where they raise the fewest
  column maxima (on the shipped LeNet-300-100 with 8 PEs already 2,651 slots for layer 0
  against 3,249 for LPT), every PE's rows by decreasing work (dense rows first: a column's
  first entries sit near the top, fewer gaps need fillers).
* State: the logical row at every physical place. Per PE and column the entry count `len`,
  and per local place q the change d[q, c] in {0, 1} that flipping the bit at q would make
  (removing a non-zero either frees its entry or turns it into a filler when the gap it
  closed was long; inserting one is the mirror image), from the nearest non-zeros above and
  below. So a swap of the rows at two places is evaluated exactly, fillers included.
* Moves: swap two rows of different PEs (each takes the other's local place), or two rows of
  one PE (its order decides the fillers). For a pair of PEs every (a, b) swap is evaluated at
  once with numpy over [rows_i, rows_j, columns] (only the columns where the pair comes within
  one entry of the other PEs' maximum: a swap moves a PE's count by at most 1); the best one
  is applied if it lowers the objective, or keeps it and lowers the weighted number of PEs
  that sit at their column's maximum (a plateau move that makes the next decrease possible;
  it cannot cycle). The pairs are visited in a seeded random order, a pair that improved up
  to PAIR_REPEAT times in a row.
* When no move improves, a few random swaps (numpy Generator seeded by `seed`) perturb the
  placement and the descent goes on from there (iterated local search); the best placement seen
  is kept. The work is bounded by a count of evaluated (swap, column) elements derived from
  `budget_s` at a fixed nominal rate, never by the clock, so the result depends only on the
  arguments.
* The result is checked at the end with `encode_csc` (the exact objective) against LPT
  (`place_longest_first`), LPT with every PE's rows by decreasing work and the greedy start; the best
  of them is returned (LPT on ties), so the result is never worse than LPT.

Shipped LeNet-300-100, 8 PEs, default budget (~1-2.5 s CPU per hidden layer on the shared
2-core box): slots l0 3,249 -> 2,549, l1 692 -> 499 (the bound sum_c ceil(nnz_c / 8) is
1,998 and 397); slot cycles on the first 20 sample digits 1,361.7 -> 1,089.7 per digit, MAC
utilisation 55% -> 68%. Weighting the columns by activation frequencies from MNIST training
digits did not do better on those digits (1,097.4): the uniform slot count is the default.
"""

from __future__ import annotations

import numpy as np

from compress.errors import InputError

from .csc import DEFAULT_REL_BITS, encode_csc, pe_rows

# Nominal work rate for `budget_s`: (swap, column) elements evaluated per second on one core.
# A fixed constant, so the amount of search (and the result) never depends on the machine.
NOMINAL_RATE = 5.0e7
# Work units charged per pair visit on top of the evaluated elements (numpy call overhead).
VISIT_UNITS = 5000
# Largest candidate array ([rows, rows, columns] elements) evaluated at once.
CHUNK = 1 << 21
# Visits in a row to a pair of PEs while they improve.
PAIR_REPEAT = 3
# Perturbation strength of the iterated local search: random swaps per kick.
KICK_SWAPS = 3
# order_for_fillers: the greedy start's weight of a gap of g zero rows, (g + 1) ** URGENCY_POWER,
# and the most rounds of swaps per PE.
URGENCY_POWER = 8
FILLER_ROUNDS = 50
# Weights are scaled to integers for the search (exact, order-independent sums).
WEIGHT_SCALE = 1 << 12


def place_balanced(index: np.ndarray, pes: int, *, rel_bits: int = DEFAULT_REL_BITS,
                   filler_order: bool = True) -> np.ndarray:
    """A row permutation that evens out the PEs' work; physical row p = logical row perm[p].

    Static, from the weights alone (no data). Work of a row = its non-zero weights. Rows by
    decreasing work (ties: lower row first) each go to a PE with a free place (PE k has exactly
    len(range(k, out, pes)) places, the slots of physical rows k, k + N, ...) whose load stays
    within ceil(total / N); among those, the PE whose rows so far share the fewest columns with
    this row (then the least loaded, then the lowest). Spreading each column's entries over the
    PEs matters as much as the totals: the front end broadcasts column after column and every
    PE's queue holds only `queue_depth` of them, so a PE with a run of heavy columns stalls all
    the others (the shipped LeNet-300-100, 8 PEs, measured: l0 712 cycles per digit, 755
    balancing the totals alone, 830 interleaved). Then pairwise swaps between the busiest PE and another lower the maximum
    while they can. Inside a PE the rows go by decreasing work (ties: logical order): a column's
    first entries then sit near its top, so fewer gaps exceed 2**rel_bits - 1 and need filler
    entries (3x fewer than logical order on LeNet-300-100 at rel_bits 4). With `filler_order`
    (the default) every PE's order is then searched for fewer fillers still (`order_for_fillers`,
    kept only when it has fewer than decreasing work). Deterministic.
    """
    nz = np.asarray(index) != 0  # bool: one byte a weight, as the index matrix itself
    w = nz.sum(axis=1, dtype=np.int64)
    out = len(w)
    cap = np.array([pe_rows(out, pes, k) for k in range(pes)], dtype=np.int64)
    load = np.zeros(pes, dtype=np.int64)
    used = np.zeros(pes, dtype=np.int64)
    per_col = np.zeros((pes, nz.shape[1]), dtype=np.int64)  # entries of each PE per column
    owner = np.empty(out, dtype=np.int64)
    limit = -(-int(w.sum()) // pes)
    for r in np.argsort(-w, kind="stable"):
        free = np.flatnonzero(used < cap)
        fits = free[load[free] + w[r] <= limit]
        if len(fits):
            overlap = per_col[fits] @ nz[r]
            k = fits[np.lexsort((fits, load[fits], overlap))[0]]
        else:  # nothing fits under the even share: the least loaded
            k = free[np.argmin(load[free])]
        owner[r] = k
        load[k] += w[r]
        used[k] += 1
        per_col[k] += nz[r]
    for _ in range(4 * out):  # swap improvement; each accepted swap lowers sum(load**2)
        k = int(np.argmax(load))
        mine = np.flatnonzero(owner == k)
        best = None
        for j in np.argsort(load, kind="stable"):
            gap = load[k] - load[j]
            if j == k or gap <= 1:
                continue
            theirs = np.flatnonzero(owner == j)
            d = w[mine][:, None] - w[theirs][None, :]  # work moved from k to j
            ok = (d > 0) & (d < gap)
            if not ok.any():
                continue
            # the swap that brings the pair closest to even
            cost = np.where(ok, np.abs(gap - 2 * d), np.iinfo(np.int64).max)
            a, b = np.unravel_index(int(np.argmin(cost)), cost.shape)
            best = (int(mine[a]), int(theirs[b]), int(j), int(d[a, b]))
            break
        if best is None:
            break
        ra, rb, j, dd = best
        owner[ra], owner[rb] = j, k
        load[k] -= dd
        load[j] += dd
    perm = np.empty(out, dtype=np.int64)
    for k in range(pes):
        rows = np.flatnonzero(owner == k)
        rows = rows[np.argsort(-w[rows], kind="stable")]
        if filler_order:
            rows = rows[order_for_fillers(nz[rows], rel_bits)]
        perm[k::pes] = rows
    return perm


def _fillers(bits: np.ndarray, rel_bits: int) -> int:
    """Filler entries of one PE's rows (bool [R, C], in order): what encode_csc adds."""
    R, C = bits.shape
    r = np.arange(R)[:, None]
    last = np.maximum.accumulate(np.where(bits, r, -1), axis=0)
    prev = np.vstack([np.full((1, C), -1), last[:-1]]) if R else last
    return int(np.where(bits, (r - prev - 1) >> rel_bits, 0).sum())


def _urgent_order(bits: np.ndarray, rel_bits: int) -> np.ndarray:
    """A greedy row order with few fillers: at every place the row whose non-zeros close the
    longest open gaps ((gap + 1) ** URGENCY_POWER summed over its columns that still have rows to
    come), so few gaps reach 2**rel_bits zero rows. Ties: the lowest index (the given order)."""
    R, C = bits.shape
    x = bits.astype(np.int64)  # integer sums: exact, no BLAS
    left = np.ones(R, dtype=bool)
    rem = x.sum(axis=0)
    gap = np.zeros(C, dtype=np.int64)
    lim = 1 << rel_bits
    order = np.empty(R, dtype=np.int64)
    for q in range(R):
        # the gap scaled to 1..16 whatever rel_bits: (16 ** 8) x columns stays within int64
        urg = ((gap + 1) * 15 // lim + 1) ** URGENCY_POWER
        score = x @ np.where(rem > 0, urg, 0)
        score[~left] = -1
        r = int(np.argmax(score))
        order[q] = r
        left[r] = False
        rem -= x[r]
        gap = np.where(x[r] > 0, 0, gap + 1)
        gap[gap >= lim] = 0  # a filler entry closed that gap
    return order


def order_for_fillers(bits: np.ndarray, rel_bits: int = DEFAULT_REL_BITS, *,
                      max_rounds: int = FILLER_ROUNDS) -> np.ndarray:
    """An order of one PE's rows (bool [R, C]) with fewer filler entries; a permutation of
    range(R), the identity unless it has strictly fewer fillers.

    Fillers are entries the PE spends on nothing (a gap of 2**rel_bits or more zero rows in a
    column), in every column whose activation is non-zero: on the EIE engine they add to the
    busiest PE's cycles. Greedy start (`_urgent_order`), then swaps of two places inside the
    PE, evaluated exactly for every pair and column at once (`_PE.swap_delta`); each round
    applies the best swap and then the next best ones on places not touched yet, and keeps
    them all only if the exact count went down by at least the best one's gain (else the best
    alone). At most `max_rounds` rounds: deterministic, about 10 ms a round on 38 x 784.
    """
    bits = np.asarray(bits, dtype=bool)
    R, C = bits.shape
    ident = np.arange(R, dtype=np.int64)
    base = _fillers(bits, rel_bits)
    if R < 2 or base == 0:
        return ident
    cols = np.flatnonzero(bits.any(axis=0))
    order = _urgent_order(bits[:, cols], rel_bits)
    dtype = np.int16 if 2 * R + 4 < (1 << 14) else np.int32
    upper = ident[:, None] < ident[None, :]
    sub = bits[:, cols]
    pe = _PE(sub[order], rel_bits, dtype)
    cur = int(pe.len.sum(dtype=np.int64))
    for _ in range(max_rounds):
        d = np.where(upper, pe.swap_totals(), 0)
        flat = np.argsort(d, axis=None, kind="stable")
        if d.flat[flat[0]] >= 0:
            break
        touched = np.zeros(R, dtype=bool)
        swaps = []
        for f in flat:
            if d.flat[f] >= 0:
                break
            qa, qb = divmod(int(f), R)
            if touched[qa] or touched[qb]:
                continue
            touched[qa] = touched[qb] = True
            swaps.append((qa, qb))
        trial = order.copy()
        for qa, qb in swaps:
            trial[[qa, qb]] = trial[[qb, qa]]
        pe.bits = sub[trial]
        pe.refresh()
        got = int(pe.len.sum(dtype=np.int64))
        if got > cur + int(d.flat[flat[0]]) and len(swaps) > 1:  # interacting swaps: the best alone
            qa, qb = swaps[0]
            trial = order.copy()
            trial[[qa, qb]] = trial[[qb, qa]]
            pe.bits = sub[trial]
            pe.refresh()
            got = int(pe.len.sum(dtype=np.int64))
        if got >= cur:
            break
        order, cur = trial, got
    return order if _fillers(bits[order], rel_bits) < base else ident


def place_longest_first(nnz_per_row: np.ndarray, pes: int) -> np.ndarray:
    """A row permutation that evens out the work per PE (deterministic).

    Longest-processing-time greedy: rows by decreasing work (ties: lower row first) go to the
    PE with the least work so far among those with a free place (PE k has
    len(range(k, out, pes)) places). Inside a PE the rows keep their logical order.
    Returns perm with physical row p = logical row perm[p].
    """
    w = np.asarray(nnz_per_row, dtype=np.int64)
    out = len(w)
    cap = np.array([len(range(k, out, pes)) for k in range(pes)], dtype=np.int64)
    load = np.zeros(pes, dtype=np.int64)
    used = np.zeros(pes, dtype=np.int64)
    owner = np.empty(out, dtype=np.int64)
    for r in np.argsort(-w, kind="stable"):
        free = np.flatnonzero(used < cap)
        k = free[np.argmin(load[free])]
        owner[r] = k
        load[k] += w[r]
        used[k] += 1
    perm = np.empty(out, dtype=np.int64)
    for k in range(pes):
        perm[k::pes] = np.flatnonzero(owner == k)
    return perm


def exact_lengths(index: np.ndarray, perm: np.ndarray, pes: int, *,
                  rel_bits: int = DEFAULT_REL_BITS) -> np.ndarray:
    """Entries per PE and column [pes, cols] of the placement perm, as build_lockstep has them."""
    idx = np.asarray(index)[np.asarray(perm)]
    return np.stack([np.diff(encode_csc(idx[k::pes], rel_bits=rel_bits)[2]) for k in range(pes)])


def slot_cost(index: np.ndarray, perm: np.ndarray, pes: int, *, rel_bits: int = DEFAULT_REL_BITS,
              col_weight: np.ndarray | None = None) -> float:
    """sum_c col_weight[c] * L(c) for the placement perm (the number of slots when unweighted)."""
    lc = exact_lengths(index, perm, pes, rel_bits=rel_bits).max(axis=0)
    if col_weight is None:
        return float(lc.sum())
    return float((np.asarray(col_weight, dtype=np.float64) * lc).sum())  # no BLAS: same everywhere


class _PE:
    """One PE's local rows (bits [R, C]) with the entry counts and flip costs of every place."""

    def __init__(self, bits: np.ndarray, shift: int, dtype):
        self.bits = bits  # bool [R, C]
        self.shift = shift  # a gap of g zero rows costs g >> rel_bits fillers
        self.dtype = dtype
        self.refresh()

    def refresh(self):
        x = self.bits
        R, C = x.shape
        r = np.arange(R, dtype=self.dtype)[:, None]
        last = np.maximum.accumulate(np.where(x, r, -1), axis=0)
        first = np.minimum.accumulate(np.where(x, r, R)[::-1], axis=0)[::-1]
        prev1 = np.empty((R, C), dtype=self.dtype)  # last non-zero strictly above q, -1 if none
        next1 = np.empty((R, C), dtype=self.dtype)  # first non-zero strictly below q, R if none
        if R:
            prev1[0] = -1
            prev1[1:] = last[:-1]
            next1[-1] = R
            next1[:-1] = first[1:]
        has_next = next1 < R
        sh = self.shift
        g_left = (r - prev1 - 1) >> sh
        g_right = np.where(has_next, (next1 - r - 1) >> sh, 0)
        g_merged = np.where(has_next, (next1 - prev1 - 1) >> sh, 0)
        fillers = np.where(x, g_left, 0).sum(axis=0)
        self.prev1, self.next1, self.has_next = prev1, next1, has_next
        self.len = (x.sum(axis=0) + fillers).astype(self.dtype)  # [C]
        # entries gained by a non-zero at q (lost by removing it): 1, or 0 when it splits
        # (closes) a gap that then needs one filler fewer (more)
        self.d = (1 + g_left + g_right - g_merged).astype(self.dtype)  # [R, C], 0 or 1
        self.e0 = (self.len[None, :] - np.where(x, self.d, 0)).astype(self.dtype)  # q cleared

    def swap_delta(self, cols: np.ndarray, a0: int = 0, a1: int | None = None) -> np.ndarray:
        """Change of the entry counts [a1 - a0, R, len(cols)] when the rows at places qa < qb swap.

        qa runs over a0..a1-1 and qb over all places; only qa < qb is meaningful. Where the two
        rows differ, a non-zero moves from src to dst: with a non-zero strictly between them the
        removal and the insertion touch separate gaps (d[dst] - d[src]); otherwise it moves
        inside one gap from the non-zero above qa (P) to the one below qb (Nx).
        """
        # arithmetic instead of np.where: several times faster on these [R, R, C] int16 arrays
        x = self.bits[:, cols].astype(self.dtype)
        a1 = x.shape[0] if a1 is None else a1
        d = self.d[:, cols]
        n1 = self.next1[:, cols]
        sh = self.shift
        qa = np.arange(a0, a1, dtype=self.dtype)[:, None, None]
        qb = np.arange(x.shape[0], dtype=self.dtype)[None, :, None]
        xa, xb = x[a0:a1, None, :], x[None, :, :]
        between = n1[a0:a1, None, :] < qb
        sep = (d[None, :, :] - d[a0:a1, None, :]) * (2 * xa - 1)
        src = qb + xa * (qa - qb)
        dst = qa + xa * (qb - qa)
        p = self.prev1[a0:a1, cols][:, None, :]
        nx = n1[None, :, :]
        inside = ((dst - p - 1) >> sh) - ((src - p - 1) >> sh)
        inside += self.has_next[:, cols][None, :, :] * (((nx - dst - 1) >> sh)
                                                         - ((nx - src - 1) >> sh))
        return (xa ^ xb) * (inside + between * (sep - inside))

    def swap_totals(self) -> np.ndarray:
        """int64 [R, R]: for qa < qb the change of the total entry count over all columns when
        the rows at places qa and qb swap (the column sum of `swap_delta`, equal to it).

        A swap changes a column only where exactly one of the two rows has a non-zero, which
        moves from src to dst: M[src, dst] sums that move's change over the columns, and the
        swap's change is M[qa, qb] + M[qb, qa]. With a non-zero between src and dst the move
        touches two separate gaps, d[dst] - d[src]: for all pairs at once a sum over the
        non-zeros only (nnz x R terms instead of R x R x C). Where dst lies in src's own gap
        (between the non-zeros above and below src) the non-zero only slides inside it: at
        most two such pairs per zero place, corrected to their exact change. Integer sums
        throughout: the same result on every machine, about 25x faster than `swap_delta` on a
        128 x 1024 PE at 4 % density.
        """
        x = self.bits
        R, C = x.shape
        if R < 2 or not x.any():
            return np.zeros((R, R), dtype=np.int64)
        sh = self.shift
        d = self.d.astype(np.int32)
        # M[src] = sum over the non-zeros (src, c) of z[:, c] (d[:, c] - d[src, c]):
        # gathered rows summed per src (integers, no BLAS), src rows in blocks of bounded size
        zt = (~x).T.astype(np.int16)  # [C, R]
        zdt = zt * d.T.astype(np.int16)
        per_row = x.sum(axis=1)
        row_ptr = np.concatenate(([0], np.cumsum(per_row)))
        q_src, c_src = np.nonzero(x)  # row-major: grouped by src
        m = np.zeros((R, R), dtype=np.int64)
        r0 = 0
        while r0 < R:
            r1 = r0 + 1
            while r1 < R and (row_ptr[r1 + 1] - row_ptr[r0]) * R <= CHUNK:
                r1 += 1
            lo, hi = int(row_ptr[r0]), int(row_ptr[r1])
            if hi > lo:
                rows = np.flatnonzero(per_row[r0:r1]) + r0
                starts = row_ptr[rows] - lo
                c = c_src[lo:hi]
                g = zdt[c] - d[q_src[lo:hi], c].astype(np.int16)[:, None] * zt[c]
                m[rows] = np.add.reduceat(g, starts, axis=0, dtype=np.int32)
            r0 = r1
        # the pairs where dst is a zero place in a gap next to src: every zero place q is in
        # one gap, between the non-zero above it (prev1) and the one below (next1), and is
        # such a dst for each of the two. src's own gap runs from p = prev1[src] to n =
        # next1[src]; the non-zero sliding from src to dst inside it changes the fillers of
        # the gaps above and below it: f(dst) - f(src) with f(r) = (r - p - 1) >> sh +
        # [n < R] (n - r - 1) >> sh; the sum above counted d[dst] - d[src] for it instead.
        prev1 = self.prev1.astype(np.int32)
        next1 = self.next1.astype(np.int32)
        zero = ~x
        corr = np.zeros(R * R, dtype=np.float64)  # integer sums: exact
        for src, ok in ((prev1, zero & (prev1 >= 0)), (next1, zero & (next1 < R))):
            qq, cc = np.nonzero(ok)
            qq = qq.astype(np.int32)
            s = src[qq, cc]
            pp, nn = prev1[s, cc], next1[s, cc]
            moved = ((qq - pp - 1) >> sh) - ((s - pp - 1) >> sh)
            moved += (nn < R) * (((nn - qq - 1) >> sh) - ((nn - s - 1) >> sh))
            fix = moved - (d[qq, cc] - d[s, cc])
            corr += np.bincount(s.astype(np.int64) * R + qq, weights=fix, minlength=R * R)
        m += np.rint(corr).astype(np.int64).reshape(R, R)
        return m + m.T


def _validate(index, pes, rel_bits, col_weight):
    index = np.asarray(index)
    if index.ndim != 2:
        raise InputError(f"index must be a 2-D [out, in] array, not shape {index.shape}")
    if not isinstance(pes, (int, np.integer)) or isinstance(pes, bool) or pes < 1:
        raise InputError(f"pes must be a positive integer, not {pes!r}")
    if not isinstance(rel_bits, (int, np.integer)) or not 1 <= rel_bits <= 12:
        raise InputError(f"rel_bits must be 1..12, not {rel_bits!r}")
    cols = index.shape[1]
    if col_weight is None:
        return index, np.ones(cols, dtype=np.float64)
    w = np.asarray(col_weight, dtype=np.float64)
    if w.shape != (cols,):
        raise InputError(f"col_weight must have shape ({cols},), not {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("col_weight must be finite and non-negative")
    return index, w


def _sorted_within(perm: np.ndarray, work: np.ndarray, pes: int) -> np.ndarray:
    """perm with every PE's rows by decreasing work (ties: physical order): fewer fillers."""
    out = perm.copy()
    for k in range(pes):
        rows = perm[k::pes]
        out[k::pes] = rows[np.argsort(-work[rows], kind="stable")]
    return out


def place_greedy(nz: np.ndarray, pes: int, w: np.ndarray) -> np.ndarray:
    """A placement built for the per-column maxima (non-zeros only), deterministic.

    Rows by decreasing non-zeros (ties: lower row first) each go to the PE with a free place
    where they raise the fewest (weighted) column maxima, i.e. overlap the columns where that
    PE already holds the maximum the least; then the fewest shared columns, the least work and
    the lowest PE. Inside a PE the rows keep their logical order.
    """
    out, cols = nz.shape
    x = nz.astype(np.int64)
    work = x.sum(axis=1)
    cap = np.array([len(range(k, out, pes)) for k in range(pes)], dtype=np.int64)
    cnt = np.zeros((pes, cols), dtype=np.int64)
    top = np.zeros(cols, dtype=np.int64)
    used = np.zeros(pes, dtype=np.int64)
    load = np.zeros(pes, dtype=np.int64)
    owner = np.empty(out, dtype=np.int64)
    for r in np.argsort(-work, kind="stable"):
        free = np.flatnonzero(used < cap)
        raise_max = ((cnt[free] == top[None]) * x[r]) @ w
        overlap = cnt[free] @ x[r]
        k = free[np.lexsort((free, load[free], overlap, raise_max))[0]]
        owner[r] = k
        cnt[k] += x[r]
        np.maximum(top, cnt[k], out=top)
        used[k] += 1
        load[k] += work[r]
    perm = np.empty(out, dtype=np.int64)
    for k in range(pes):
        perm[k::pes] = np.flatnonzero(owner == k)
    return perm


def place_search(index: np.ndarray, pes: int, *, rel_bits: int = DEFAULT_REL_BITS, seed: int = 0,
                  col_weight: np.ndarray | None = None, budget_s: float = 2.0) -> np.ndarray:
    """A row permutation (physical row p = logical row perm[p]) with few lockstep slots.

    Minimises sum_c col_weight[c] * max_k entries_k(c) (uniform weights by default: the slot
    count; pass activation frequencies to minimise expected cycles). `budget_s` is nominal
    seconds of search at NOMINAL_RATE (about real seconds on one core), converted to a fixed
    work count: the result depends only on the arguments. Never worse than
    `place_longest_first` on the exact objective.
    """
    index, w = _validate(index, pes, rel_bits, col_weight)
    if not np.isfinite(budget_s) or budget_s < 0:
        raise InputError(f"budget_s must be a non-negative number, not {budget_s!r}")
    out, cols = index.shape
    nz = index != 0
    work = nz.sum(axis=1)
    start = place_longest_first(work, pes)
    candidates = [start, _sorted_within(start, work, pes)]

    # the search runs on the columns that have a non-zero (the others cost 0 anyhow)
    live = np.flatnonzero(nz.any(axis=0) & (w > 0))
    if out > 1 and len(live):
        wmax = w[live].max()
        wi = np.maximum(1, np.rint(w[live] / wmax * WEIGHT_SCALE)).astype(np.int64)
        if np.all(w[live] == wmax):
            wi = np.ones(len(live), dtype=np.int64)
        units = int(budget_s * NOMINAL_RATE)
        greedy = _sorted_within(place_greedy(nz[:, live], pes, wi), work, pes)
        candidates.append(greedy)
        candidates.append(_search(nz[:, live], greedy, pes, rel_bits, wi, units,
                                  np.random.default_rng(seed)))

    costs = [slot_cost(index, p, pes, rel_bits=rel_bits, col_weight=w) for p in candidates]
    return candidates[int(np.argmin(costs))].astype(np.int64)  # first best: LPT on ties


def _search(nz: np.ndarray, perm0: np.ndarray, pes: int, rel_bits: int, w: np.ndarray,
            units: int, rng: np.random.Generator) -> np.ndarray:
    out, C = nz.shape
    dtype = np.int16 if 2 * out + 4 < (1 << 14) else np.int32
    uniform = bool(np.all(w == 1))
    w32 = w.astype(np.int32)
    tie = int(w.sum()) * pes + 1  # one unit of objective outweighs any change of the tie-breaker
    places = [perm0[k::pes].copy() for k in range(pes)]  # logical row at each local place
    pe = [_PE(nz[places[k]], rel_bits, dtype) for k in range(pes)]
    lens = np.stack([p.len for p in pe]).astype(np.int64)  # [pes, C]

    def objective() -> int:
        return int(lens.max(axis=0) @ w)

    def apply(k):
        pe[k].bits = nz[places[k]]
        pe[k].refresh()
        lens[k] = pe[k].len

    def excluding(ks):
        mask = np.ones(pes, dtype=bool)
        mask[list(ks)] = False
        if not mask.any():
            return np.zeros(C, dtype=np.int64), np.zeros(C, dtype=np.int64)
        other = lens[mask]
        mex = other.max(axis=0)
        return mex, (other == mex[None]).sum(axis=0)

    def best_swap(new_lens, cols, mex, cntex, valid=None):
        """(key, (qa, qb)) of the best swap (improving when key < 0).

        new_lens: the pair's candidate counts [Ra, Rb, len(cols)].

        Lexicographic: the objective, then the weight of the columns' PEs at the maximum.
        A swap changes a PE's count by at most 1, so columns where the pair stays 2 below the
        others' maximum cannot change and are left out by the caller.
        """
        m = lens[:, cols].max(axis=0).astype(dtype)
        cnt = (lens[:, cols] == m[None]).sum(axis=0).astype(dtype)
        mx, cx = mex[cols].astype(dtype), cntex[cols].astype(dtype)  # no int64 upcasts
        new_m = mx
        for a in new_lens:
            new_m = np.maximum(new_m, a)
        new_cnt = (new_m == mx) * cx
        for a in new_lens:
            new_cnt += a == new_m
        shape = new_m.shape[:-1]
        # integer sums (no BLAS): exact and independent of the summation order
        if uniform:
            prim = (new_m - m).sum(axis=-1, dtype=np.int64)
            sec = (new_cnt - cnt).sum(axis=-1, dtype=np.int64)
        else:
            wc = w32[cols]
            prim = np.einsum("...c,c->...", (new_m - m).astype(np.int32), wc, dtype=np.int64)
            sec = np.einsum("...c,c->...", (new_cnt - cnt).astype(np.int32), wc, dtype=np.int64)
        key = (prim * tie + sec).reshape(-1)
        if valid is not None:
            key = np.where(valid.reshape(-1), key, np.iinfo(np.int64).max)
        b = int(np.argmin(key))
        return int(key[b]), np.unravel_index(b, shape)

    best_obj, best_perm = objective(), _to_perm(places, pes, out)
    pairs = [(i, j) for i in range(pes) for j in range(i, pes)]
    spent = 0

    def visit(i: int, j: int) -> bool:
        """Apply the best swap between PEs i and j (within PE i when i == j) if it improves."""
        nonlocal spent, best_obj, best_perm
        ri, rj = len(places[i]), len(places[j])
        # a visit costs its numpy call overhead too: small layers end in about budget_s,
        # and the loop ends even when nothing can be evaluated
        spent += VISIT_UNITS
        if ri == 0 or rj == 0 or (i == j and ri < 2):
            return False
        if i == j:
            mex, cntex = excluding([i])
            cols = np.flatnonzero(lens[i] + 1 >= mex)
        else:
            mex, cntex = excluding([i, j])
            cols = np.flatnonzero(np.maximum(lens[i], lens[j]) + 1 >= mex)
        spent += ri * rj * len(cols)
        if not len(cols):
            return False
        a, b = pe[i], pe[j]
        ae0, ad, ab = a.e0[:, cols], a.d[:, cols], a.bits[:, cols]
        be0, bd, bb = b.e0[:, cols], b.d[:, cols], b.bits[:, cols]
        res = None
        step = max(1, CHUNK // (rj * len(cols)))  # bounded memory on wide layers
        for a0 in range(0, ri, step):
            a1 = min(ri, a0 + step)
            if i == j:
                cand = (a.len[cols][None, None, :] + a.swap_delta(cols, a0, a1),)
                upper = np.arange(a0, a1)[:, None] < np.arange(rj)[None, :]
                got = best_swap(cand, cols, mex, cntex, upper)
            else:
                # place qa of PE i gets row b's bits and place qb of PE j gets row a's bits
                li = ae0[a0:a1, None, :] + bb[None, :, :] * ad[a0:a1, None, :]
                lj = be0[None, :, :] + ab[a0:a1, None, :] * bd[None, :, :]
                got = best_swap((li, lj), cols, mex, cntex)
            if got[0] < 0 and (res is None or got[0] < res[0]):
                res = (got[0], (a0 + int(got[1][0]), int(got[1][1])))
        if res is None:
            return False
        qa, qb = res[1]
        places[i][qa], places[j][qb] = places[j][qb], places[i][qa]
        apply(i)
        if j != i:
            apply(j)
        obj = objective()
        if obj < best_obj:
            best_obj, best_perm = obj, _to_perm(places, pes, out)
        return True

    while spent < units:
        improved = False
        for t in rng.permutation(len(pairs)):
            # a pair that just improved often has more to give: stay on it a few times
            for _ in range(PAIR_REPEAT):
                if spent >= units or not visit(*pairs[t]):
                    break
                improved = True
            if spent >= units:
                break
        if not improved and spent < units:
            if pes < 2:
                break  # one PE: nothing to kick between PEs and the order is a local optimum
            if objective() > best_obj:  # kick from the best placement seen
                for k in range(pes):
                    places[k] = best_perm[k::pes].copy()
                    apply(k)
            for _ in range(KICK_SWAPS):
                i, j = (int(v) for v in rng.choice(pes, size=2, replace=False))
                if len(places[i]) and len(places[j]):
                    qa, qb = int(rng.integers(len(places[i]))), int(rng.integers(len(places[j])))
                    places[i][qa], places[j][qb] = places[j][qb], places[i][qa]
                    apply(i)
                    apply(j)
    return best_perm


def _to_perm(places: list[np.ndarray], pes: int, out: int) -> np.ndarray:
    perm = np.empty(out, dtype=np.int64)
    for k in range(pes):
        perm[k::pes] = places[k]
    return perm


# ---- a layer already placed: its slots against the bound -----------------------------------


def layer_slots(index: np.ndarray, pes: int, *, perm: np.ndarray | None = None,
                rel_bits: int = DEFAULT_REL_BITS) -> dict:
    """{nnz, entries, fillers, slots, bound} of one [out, in] layer with rows placed by perm
    (physical row p = logical row perm[p]; default: logical order)."""
    idx = np.asarray(index)
    if perm is not None:
        idx = idx[np.asarray(perm)]
    counts = np.stack([np.diff(encode_csc(idx[k::pes], rel_bits=rel_bits)[2])
                       for k in range(pes)])  # [pes, cols]
    nnz_c = np.count_nonzero(idx, axis=0)
    nnz = int(nnz_c.sum())
    return {"nnz": nnz, "entries": int(counts.sum()), "fillers": int(counts.sum()) - nnz,
            "slots": int(counts.max(axis=0).sum()), "bound": int((-(-nnz_c // pes)).sum())}


def at_bound(index: np.ndarray, pes: int, *, rel_bits: int = DEFAULT_REL_BITS) -> bool:
    """True when rows in logical order give every column ceil(nnz_c / pes) slots (no
    placement does better)."""
    s = layer_slots(index, pes, rel_bits=rel_bits)
    return s["slots"] == s["bound"]
