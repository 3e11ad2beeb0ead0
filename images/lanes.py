"""A cycle model of "lanes": the lockstep engine split into independent lanes of PEs.

The lockstep engine (`hw.lockstep`, docs/lockstep.md) gives every column L(c) = max over all N
PEs of the PE's entry count, because one slot address serves every memory. The four SPRAMs
could take four different addresses per cycle, so four lanes of two PEs (the two PEs of a lane
still share a 16-bit word and an address), each with its own column queue fed by the front
end's broadcast, would pay per column only max over the lane's two PEs and balance the lanes
over many columns. What stops that on the iCE40UP5K is where each lane finds where its column
starts and ends. This module measures the options (docs/lanes.md has the reasoning and the
figures):

* `pe_counts`: per layer, the entry count [N, cols] of every PE and column (fillers included,
  as `images.csc.encode_csc` makes them), for a row placement;
* `lane_costs(counts, option)`: the cycles every lane spends on every column under one way of
  storing its pointers (`OPTIONS`);
* `simulate_layer`: one layer of a batch, column by column in the front end's order, vectorised
  over the batch: the front end broadcasts one non-zero column per cycle (an all-zero group of
  N columns costs a cycle), stalls while any lane's queue (depth `depth`) is full; a lane
  starts a column when its previous one is done and the column has come through the pointer
  stage; then the pipeline tail, the drain (rows x drain_share + 3) and the next layer's
  PRELOAD, as the lockstep engine spends them. The accumulator hold on back-to-back row hits is
  not modelled (on the shipped network with option "lockstep" and depth 2 the model gives
  1,044.2 cycles per digit on the 20 sample digits, the engine 995.4: its pointer stage writes
  the queue ahead, so depth 2 there sits between the model's 2 and 3);
* `model`: every layer of a qnet for a batch of layer inputs -> cycles and useful MACs;
* `work_bound`: the ceiling of an option whatever its queues, front end and drains: per layer
  and input, the busiest lane's cycles over the non-zero columns, nothing else;
* `pointer_ebr(option, ...)`: the EBR blocks of the option's column pointers.

Nothing here is an engine: no option that fits the UP5K's 30 EBR has a ceiling (`work_bound`)
of the 75 % MAC utilisation the lanes engine was meant for (docs/lanes.md), so none was
built. `python -m images.lanes` prints the table.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from compress.errors import InputError

from .csc import DEFAULT_REL_BITS, encode_csc
from .lockstep import build_lockstep, decode_lockstep, layer1_under_drain
from .memmap import bits

# option -> what it stores and where (docs/lanes.md section 2)
OPTIONS = {
    "lockstep": "one address for all 8 PEs: today's engine (L(c) = max over 8 PEs)",
    "exact": "4 lanes of 2 PEs, shared start + exact per-lane lengths (12 + 4 x 6 bits/column)",
    "esc3": "4 lanes, start/end banks + a 3-bit length per lane, 7 = the whole L(c)",
    "esc1": "4 lanes, start/end banks + 1 bit per lane: empty or the whole L(c)",
    "zerostop": "4 lanes, start/end banks + 1 bit per lane: whole L(c), or read up to the "
                "all-zero (padding) word",
    "desc": "4 lanes, a length word before every lane column in its SPRAM",
    "marks3": "4 lanes, rel_bits 3 and an end mark bit in every lane word",
    "2x4": "2 lanes of 4 PEs, shared start + exact per-lane lengths",
    "merged": "4 lanes at one address (today's pointers), each lane's 2 MACs share its rows "
              "(two accumulator copies, summed at the drain): max over lanes of ceil(n / 2)",
    "merged_exact": "as merged, lanes independent with exact lengths: ceil(n / 2) per lane",
    "pe8": "8 independent PEs (per-PE pointers, the EIE schedule): the reference",
}
MERGED = ("merged", "merged_exact")
LANES = 4
EBR_SHAPES = ((16, 256), (8, 512), (4, 1024), (2, 2048))


def ebr_blocks(width: int, depth: int) -> int:
    """EBR blocks of one width x depth memory in its cheapest shape (as fpga.flow.resources)."""
    return min(-(-width // w) * -(-depth // d) for w, d in EBR_SHAPES)


def lane_of(pes: int) -> np.ndarray:
    """Lane of every PE: PEs k and k + N/2 share lane k (a lane's word: PE k low, k + N/2 high).

    So a lane's rows are the rows a 4-way placement gives one group, split 2 ways inside.
    """
    return np.arange(pes) % (pes // 2)


def pe_counts(layers, perms, pes: int, *, rel_bits: int = DEFAULT_REL_BITS) -> list[np.ndarray]:
    """Per layer, entries [pes, cols] of every PE and physical column for the placement perms.

    layers: the qnet's layers (each with .index [out, in]); perms[i]: physical row p of layer i
    is logical row perms[i][p] (layer i + 1's columns follow perms[i]); PE k holds rows k::pes.
    """
    out = []
    for i, layer in enumerate(layers):
        idx = np.asarray(layer.index)[np.asarray(perms[i])]
        if i > 0:
            idx = idx[:, np.asarray(perms[i - 1])]
        out.append(np.stack([np.diff(encode_csc(idx[k::pes], rel_bits=rel_bits)[2])
                             for k in range(pes)]))
    return out


def _lane_max(counts: np.ndarray, lanes: int) -> np.ndarray:
    n = counts.shape[0]
    group = np.arange(n) % lanes
    return np.stack([counts[group == j].max(axis=0) for j in range(lanes)])


def _escape(width: int):
    """Option escN: a width-bit length per lane, the top code meaning "the whole column"."""
    lim = (1 << width) - 2
    return lambda k, full, pair, p3: np.where(pair <= lim, pair, full)


def _marks3(k, full, pair, counts_rel3):
    if counts_rel3 is None:
        raise InputError("option marks3 needs the rel_bits 3 counts")
    p3 = _lane_max(counts_rel3, pair.shape[0])
    return np.maximum(p3, 1) * (counts_rel3.max(axis=0) > 0)  # an empty lane reads a word


# option -> its costs (counts, L(c), the lanes' maxima, the rel_bits 3 counts) -> [lanes, cols]
_COSTS = {
    "lockstep": lambda k, full, pair, p3: full[None, :],
    "exact": lambda k, full, pair, p3: pair,
    "esc3": _escape(3),
    "esc1": _escape(1),
    # the word after the lane's last is padding in both PEs (all zero) unless the lane is the
    # column's longest: reading it is the stop, one cycle
    "zerostop": lambda k, full, pair, p3: np.where(pair >= full - 1, full, pair + 1),
    "desc": lambda k, full, pair, p3: (pair + 1) * (full > 0),
    "marks3": _marks3,
    "2x4": lambda k, full, pair, p3: _lane_max(k, 2),
    "pe8": lambda k, full, pair, p3: k,
}


def lane_costs(counts: np.ndarray, option: str, *, counts_rel3: np.ndarray | None = None
               ) -> np.ndarray:
    """Cycles [lanes, cols] every lane spends on every column (when its activation is non-zero).

    counts: [N, cols] entries per PE; counts_rel3: the same with rel_bits 3 ("marks3").
    """
    if option not in OPTIONS:
        raise InputError(f"unknown option {option!r}: the options are {', '.join(OPTIONS)}")
    if option in MERGED:
        raise InputError(f"option {option!r} counts a lane's rows together: use `model`")
    n = counts.shape[0]
    if n % 2 or n < 2:
        raise InputError(f"lanes of PE pairs need an even number of PEs, not {n}")
    full = counts.max(axis=0)  # L(c)
    pair = _lane_max(counts, n // 2 if n // 2 < LANES else LANES)
    return _COSTS[option](counts, full, pair, counts_rel3)


def simulate_layer(cost: np.ndarray, nz: np.ndarray, *, pes: int, depth: int = 2, rows: int = 1,
                   drain_share: int = 1, preload: bool = True, drain_tail: int = 0,
                   skip_ends: bool = False) -> np.ndarray:
    """Cycles of one layer for every input of a batch.

    cost: [lanes, cols] (`lane_costs`); nz: bool [batch, cols], the non-zero input columns in
    physical order. The front end takes groups of `pes` columns, one non-zero column per cycle
    and one cycle per all-zero group; it stalls while a lane that needs the column has `depth`
    columns queued. A column reaches a lane's sequencer 2 cycles after it leaves the front end
    (pointer stage, queue) and leaves the queue in its last slot cycle; lanes skip columns
    that cost them 0. Then 3 cycles of pipeline and idle check, the drain (rows x drain_share,
    + drain_tail where the next layer's front end waits for the output stages to empty: 3 in a
    network with conv layers; an fc network's front end reads each group once it is written),
    PRELOAD (rows, unless the layer's biases came in before the input) and START. skip_ends:
    the front end reads only the groups from the first with a non-zero column to the last (the
    lockstep engine's layer 0).
    """
    if depth < 1:
        raise InputError(f"queue depth must be >= 1, not {depth!r}")
    batch, cols = nz.shape
    lanes = cost.shape[0]
    never = np.iinfo(np.int64).min // 4
    t = np.full(batch, -1, dtype=np.int64)  # the front end's last emission
    done = np.zeros((batch, lanes), dtype=np.int64)  # each lane's next free cycle
    ring = np.full((batch, lanes, depth), never, dtype=np.int64)  # pop cycles of queued columns
    groups = np.stack([nz[:, g0:g0 + pes].any(axis=1) for g0 in range(0, cols, pes)], axis=1)
    if skip_ends:  # (an all-zero input: group 0 only)
        first = np.where(groups.any(axis=1), groups.argmax(axis=1), 0)
        last = np.where(groups.any(axis=1), groups.shape[1] - 1 - groups[:, ::-1].argmax(axis=1),
                        0)
    for g0 in range(0, cols, pes):
        g = g0 // pes
        no_cycle = groups[:, g] | ((g < first) | (g > last) if skip_ends else False)
        t = np.where(no_cycle, t, t + 1)
        for c in range(g0, min(cols, g0 + pes)):
            m = nz[:, c]
            if not m.any():
                continue
            u = cost[:, c]
            used = u > 0
            credit = ring[:, used, 0].max(axis=1) + 1 if used.any() else np.full(batch, never)
            tn = np.maximum(t + 1, credit)
            start = np.maximum(done, tn[:, None] + 2)
            fin = start + u[None, :]
            upd = m[:, None] & used[None, :]
            done = np.where(upd, fin, done)
            shifted = np.concatenate([ring[:, :, 1:], (fin - 1)[:, :, None]], axis=2)
            ring = np.where(upd[:, :, None], shifted, ring)
            t = np.where(m, tn, t)
    end = np.maximum(done.max(axis=1), t + 2) + 3
    return end + rows * drain_share + drain_tail + (rows if preload else 0) + 1


def useful_macs(layers, acts: list[np.ndarray]) -> np.ndarray:
    """Useful MACs [batch, layers]: pairs (non-zero weight, non-zero activation)."""
    return np.stack([(np.asarray(a) != 0).astype(np.int64)
                     @ (np.asarray(layer.index) != 0).sum(axis=0)
                     for layer, a in zip(layers, acts)], axis=1)


def model(layers, perms, acts: list[np.ndarray], option: str, *, pes: int = 8, depth: int = 2,
          drain_share: int = 1, rel_bits: int = DEFAULT_REL_BITS) -> np.ndarray:
    """Cycles [batch, layers] of `option` for layer inputs acts (logical column order).

    The "merged" options count a lane's entries over its rows (PEs k and k + N/2 together,
    physical rows p with p % (N/2) = lane) and drain a lane's rows through one output stage per
    lane (drain_share / 2 lanes per stage when drain_share > 2).
    """
    if option in MERGED:
        if option not in OPTIONS or pes % 2:
            raise InputError(f"option {option!r} needs an even number of PEs, not {pes}")
        counts = pe_counts(layers, perms, pes // 2, rel_bits=rel_bits)
        out = []
        for i, layer in enumerate(layers):
            a = np.asarray(acts[i])
            phys = a if i == 0 else a[:, np.asarray(perms[i - 1])]
            words = (counts[i] + 1) // 2  # two entries of the lane per cycle
            cost = words.max(axis=0)[None, :] if option == "merged" else words
            rows = -(-layer.index.shape[0] // (pes // 2))
            out.append(simulate_layer(cost, phys != 0, pes=pes, depth=depth, rows=rows,
                                      drain_share=max(1, drain_share // 2), preload=i > 0))
        return np.stack(out, axis=1)
    counts = pe_counts(layers, perms, pes, rel_bits=rel_bits)
    c3 = pe_counts(layers, perms, pes, rel_bits=3) if option == "marks3" else [None] * len(layers)
    out = []
    for i, layer in enumerate(layers):
        a = np.asarray(acts[i])
        phys = a if i == 0 else a[:, np.asarray(perms[i - 1])]
        cost = lane_costs(counts[i], option, counts_rel3=c3[i])
        rows = -(-layer.index.shape[0] // pes)
        out.append(simulate_layer(cost, phys != 0, pes=pes, depth=depth, rows=rows,
                                  drain_share=drain_share, preload=i > 0))
    return np.stack(out, axis=1)


def lockstep_cycle_model(img, x: np.ndarray, params) -> np.ndarray:
    """Compute cycles [batch, layers] of the lockstep engine (`images.lockstep`) on int16
    inputs x[batch, in_0]: `model` with option "lockstep" at the engine's queue depth and
    drain_share (`params`, `images.lockstep.LockstepParams`). The accumulator hold on
    back-to-back row hits is not modelled (module docstring: within about 5 % of the engine on
    the shipped network)."""
    from compress.golden import run_layers  # torch: only when modelling

    if getattr(img, "one_map", False):  # (its walk, drain and hold are not modelled here)
        raise ValueError("the lockstep cycle model does not cover the board's one-map layout "
                         "of a CNN: measure it (python -m tb sim --one-map)")
    qnet = decode_lockstep(img)
    x = np.asarray(x)
    acts = [x] + run_layers(qnet, x, acc_bits=params.acc_bits)[:-1]
    if img.has_conv:
        return _conv_net_cycles(img, acts, params)
    return _fc_net_cycles(img, qnet, acts, params)


def _fc_net_cycles(img, qnet, acts, params) -> np.ndarray:
    """`model`'s option "lockstep" as the engine runs a network of fc layers: each layer's
    computed rows (dead units trimmed, `images.lockstep`) and the columns its front end reads,
    layer 0 from its input's first non-zero group to the last, and with drain_share 2 (and
    `overlap`) layer 1 under layer 0's DRAIN (`hw.lockstep`, `bg_drain`): layer 1's bias rows one every other
    cycle after the drain reads each, then a cycle of its slots for each later row read; the
    layer counts as the engine's (layer 0: its COMPUTE; layer 1: the rest)."""
    pes, share = img.pes, params.drain_share
    perms = [ll.perm for ll in img.layers]
    counts = pe_counts(qnet.layers, perms, pes, rel_bits=img.rel_bits)
    rows = [ll.rows_per_pe for ll in img.layers]
    out = []
    for i, layer in enumerate(qnet.layers):
        a = np.asarray(acts[i])
        phys = a if i == 0 else a[:, np.asarray(perms[i - 1])]
        used = img.layers[i].engine_in
        cost = lane_costs(counts[i], "lockstep")[:, :used]
        out.append(simulate_layer(cost, phys[:, :used] != 0, pes=pes, depth=params.queue_depth,
                                  rows=rows[i], drain_share=share, preload=i > 0,
                                  skip_ends=i == 0))
    cyc = np.stack(out, axis=1)
    if layer1_under_drain(img, share, getattr(params, "overlap", True)):
        cyc[:, 0] -= rows[0] * share
        cyc[:, 1] += rows[1] + (rows[0] - rows[1])
    return cyc


# per pass of a conv layer, the cycles the lockstep engine spends besides its walk, PRELOAD and
# drain (the front end's and the pipeline's latency, the drain's hand-over): fitted to the RTL
# on LeNet-5's first 300 MNIST test digits, where 6 a pass fits both conv layers (16 and 144
# passes) to within 0.1 % (docs/lockstep.md, "Conv layers")
CONV_PASS_CYCLES = 6


def _conv_net_cycles(img, acts, params) -> np.ndarray:
    """Compute cycles [batch, layers] of a network with conv layers on the lockstep engine:
    a conv layer by `conv_layer_cycles`, an fc layer by `simulate_layer` on its physical
    columns (the bypass replaces the hold there too)."""
    from .lockstep import column_maps

    cols, _ = column_maps(img)
    out = []
    for i, ll in enumerate(img.layers):
        a = np.asarray(acts[i])
        lc = np.diff(img.col_ptr[ll.col_base: ll.col_base + ll.in_features + 1])
        if ll.geom:
            out.append(conv_layer_cycles(img, i, a, params))
            continue
        phys = np.where(cols[i][None, :] >= 0, a[:, np.maximum(cols[i], 0)], 0)
        out.append(simulate_layer(lc[None, :], phys != 0, pes=img.pes, depth=params.queue_depth,
                                  rows=ll.rows_per_pe, drain_share=params.drain_share,
                                  preload=i > 0, drain_tail=3))
    return np.stack(out, axis=1)


def conv_layer_cycles(img, i: int, a: np.ndarray, params) -> np.ndarray:
    """Cycles [batch] of conv layer i of a lockstep image on its inputs a [batch, c * h * w]
    (logical channel order): every pass walks its sub-positions' words (`images.conv.walk`);
    a sub-position costs the larger of its slots (L(c) over the non-zero columns read) and the
    front end's cycles (a non-zero column a cycle, a word without one a cycle): the queue lets
    the front end run ahead of the slots. A pass adds PRELOAD (its
    accumulator rows), the drain (rows x subs x drain_share) and `CONV_PASS_CYCLES`. Within
    2 % of the RTL with queues of 2 or more columns and no stalls (up to 14 % on networks of
    under 200 cycles); a queue of 1 column and stalls on the streams are not modelled (up to
    11 % off on small networks)."""
    from . import conv

    ll = img.layers[i]
    g = ll.conv_geom
    n = img.pes
    vals = np.asarray(a).reshape(len(a), g.c, g.h * g.w)
    if g.src == conv.CHAN:
        vals = vals[:, np.asarray(img.layers[i - 1].perm)]
    words = np.stack([conv.map_to_words(v.reshape(-1), (g.c, g.h, g.w), g.src, n)
                      for v in vals]) != 0  # [batch, W, N]
    lc = np.diff(img.col_ptr[ll.col_base: ll.col_base + ll.in_features + 1])
    cost = lc  # a column of no slots costs the front end only (dropped at the pointer stage)
    desc = np.array([d for p in range(g.passes) for d in conv.walk(g, n, p)],
                    dtype=np.int64).reshape(-1, 5)
    lane = np.arange(n)
    inwin = (lane[None, :] >= desc[:, 2:3]) & (lane[None, :] < desc[:, 3:4])  # [D, N]
    col = np.clip(desc[:, 1:2] + lane[None, :], 0, len(cost) - 1)
    ccost = np.where(inwin, cost[col], 0)  # [D, N]
    nzw = words[:, desc[:, 0], :]  # [batch, D, N]: each word's lanes
    slots = (nzw * ccost[None]).sum(axis=2)  # [batch, D]
    sends = np.maximum((nzw & inwin[None]).sum(axis=2), 1)  # the front end's cycles
    # the queue lets the front end run ahead of the slots within a sub-position: it costs the
    # larger of the two
    sub = np.concatenate([[0], np.flatnonzero(np.diff(desc[:, 4]) != 0) + 1]) if len(desc) else \
        np.zeros(0, np.int64)
    walk = np.maximum(np.add.reduceat(slots, sub, axis=1),
                      np.add.reduceat(sends, sub, axis=1)).sum(axis=1) if len(desc) else \
        np.zeros(len(a), np.int64)
    share = params.drain_share
    rows = img.acc_rows(ll)
    return walk + g.passes * (rows + ll.rows_per_pe * g.subs * share + CONV_PASS_CYCLES)


def work_bound(layers, perms, acts: list[np.ndarray], option: str, *, pes: int = 8,
               rel_bits: int = DEFAULT_REL_BITS) -> np.ndarray:
    """Cycles [batch, layers] no engine of `option` can go under: the busiest lane's work.

    Per layer and input: max over lanes of the sum of its costs over the non-zero columns, as
    if queues were infinite, the front end free and drains and PRELOAD overlapped. Useful MACs
    over pes x this is the option's MAC utilisation ceiling.
    """
    if option in MERGED:
        counts = pe_counts(layers, perms, pes // 2, rel_bits=rel_bits)
        words = [(k + 1) // 2 for k in counts]
        costs = [w.max(axis=0)[None, :] if option == "merged" else w for w in words]
    else:
        counts = pe_counts(layers, perms, pes, rel_bits=rel_bits)
        c3 = (pe_counts(layers, perms, pes, rel_bits=3) if option == "marks3"
              else [None] * len(layers))
        costs = [lane_costs(k, option, counts_rel3=k3) for k, k3 in zip(counts, c3)]
    out = []
    for i, cost in enumerate(costs):
        a = np.asarray(acts[i])
        phys = a if i == 0 else a[:, np.asarray(perms[i - 1])]
        out.append(((phys != 0).astype(np.int64) @ cost.T).max(axis=1))
    return np.stack(out, axis=1)


def pointer_memories(option: str, counts: list[np.ndarray], slots: int, *,
                     entries_per_pe: list[int] | None = None) -> list[tuple[int, int]]:
    """The (width, depth) memories the option's column pointers need in EBR.

    counts: every layer's [N, cols] entries (for the length widths); slots: the padded slot
    count (the start pointer's range); entries_per_pe: for "pe8", each PE's entry count.
    """
    cols = sum(c.shape[1] for c in counts)
    n = counts[0].shape[0]
    pb = bits(slots)
    even, odd = (cols + 2) // 2, (cols + 1) // 2  # cols + 1 pointers in two banks
    pair_max = max(int(_lane_max(c, LANES).max()) for c in counts)
    lb = bits(pair_max)

    def exact2x4():
        lb4 = bits(max(int(_lane_max(c, 2).max()) for c in counts))
        return [(pb, cols), (2 * lb4, cols)]

    def merged_exact():
        # the two PEs' counts bound the lane's own (its merged rows need no more fillers)
        lbm = bits(max(int(((c[:LANES] + c[LANES:2 * LANES] + 1) // 2).max()) for c in counts))
        return [(pb, cols), (LANES * lbm, cols)]

    def pe8():
        sizes = entries_per_pe or [int(sum(c[k].sum() for c in counts)) for k in range(n)]
        return [m for e in sizes for m in ((bits(e), even), (bits(e), odd))]

    memories = {
        "lockstep": lambda: [(pb, even), (pb, odd)],
        "esc1": lambda: [(pb + LANES, even), (pb + LANES, odd)],
        "zerostop": lambda: [(pb + LANES, even), (pb + LANES, odd)],
        "esc3": lambda: [(pb + 3 * LANES, even), (pb + 3 * LANES, odd)],
        "exact": lambda: [(pb, cols), (LANES * lb, cols)],
        "2x4": exact2x4,
        "desc": lambda: [(pb, cols)],
        "marks3": lambda: [(pb + LANES, cols)],  # start + "one word" flag per lane
        "merged": lambda: [(pb, even), (pb, odd)],
        "merged_exact": merged_exact,
        "pe8": pe8,
    }
    if option not in memories:
        raise InputError(f"unknown option {option!r}")
    return memories[option]()


def pointer_ebr(option: str, counts: list[np.ndarray], slots: int) -> int:
    return sum(ebr_blocks(w, d) for w, d in pointer_memories(option, counts, slots))


def main(argv: list[str] | None = None) -> int:
    """python -m images.lanes: the options' cycles, MAC utilisation and pointer EBR."""
    from compress.errors import run_main

    p = argparse.ArgumentParser(prog="python -m images.lanes", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="qnet .npz, 'synthetic' (default: shipped)")
    p.add_argument("--count", type=int, default=100, help="MNIST digits (default 100)")
    p.add_argument("--data", default=None, help="MNIST directory (default: the 100 sample digits)")
    p.add_argument("--options", default=",".join(OPTIONS), help="comma-separated options")
    p.add_argument("--depth", type=int, default=2, help="queue depth per lane (default 2)")
    p.add_argument("--drain-share", type=int, default=1, help="PEs per output stage (default 1)")
    p.add_argument("--placement", default="search", choices=("search", "lpt", "interleave"))
    p.add_argument("--placement-pes", type=int, default=8, choices=(8, 4),
                   help="rows placed for 8 PEs (lockstep) or for 4 lanes (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bound", action="store_true",
                   help="also print each option's ceiling (`work_bound`: the busiest lane's "
                        "work alone)")
    args = p.parse_args(argv)

    def body():
        from compress.data import load_sample, load_split
        from compress.golden import mnist_to_input, run_layers
        from compress.shipped import load_model

        opts = [o for o in args.options.split(",") if o]
        for o in opts:
            if o not in OPTIONS:
                raise InputError(f"--options: unknown option {o!r}: the options are "
                                 f"{', '.join(OPTIONS)}")
        if args.count < 1:
            raise InputError(f"--count must be >= 1, not {args.count}")
        qnet, desc = load_model(args.model)
        if qnet.in_features != 784:
            raise InputError(f"{desc}: the model takes {qnet.in_features} inputs, MNIST 784")
        split = load_split("test", args.data) if args.data else load_sample()
        x = mnist_to_input(split.images[: args.count], qnet.input_frac)
        acts = [x] + run_layers(qnet, x)[:-1]
        img = build_lockstep(qnet, 8, placement=args.placement, seed=args.seed)
        if args.placement_pes != 8:
            perms = [ll.perm for ll in build_lockstep(qnet, args.placement_pes,
                                                      placement=args.placement,
                                                      seed=args.seed).layers]
            img = build_lockstep(qnet, 8, perms=perms[:-1])
        perms = [ll.perm for ll in img.layers]
        counts = pe_counts(qnet.layers, perms, 8)
        useful = useful_macs(qnet.layers, acts)
        print(f"{desc}: {len(x)} digits, 8 PEs, queue depth {args.depth}, drain_share "
              f"{args.drain_share}, placement {args.placement} for {args.placement_pes}")
        print(f"{'option':12s} {'cycles':>8s}  {'per layer':22s} {'MAC util':>8s} {'ptr EBR':>7s}"
              + (f" {'ceiling':>8s}" if args.bound else ""))
        for o in opts:
            cyc = model(qnet.layers, perms, acts, o, depth=args.depth,
                        drain_share=args.drain_share)
            util = useful.sum() / (8 * cyc.sum())
            per = " ".join(f"{v:.1f}" for v in cyc.mean(axis=0))
            ceil = ""
            if args.bound:
                bound = work_bound(qnet.layers, perms, acts, o)
                ceil = f" {100 * useful.sum() / (8 * bound.sum()):7.1f}%"
            print(f"{o:12s} {cyc.sum(axis=1).mean():8.1f}  {per:22s} {100 * util:7.1f}% "
                  f"{pointer_ebr(o, counts, img.num_slots):7d}{ceil}")
        return 0

    return run_main(body, debug_env="LANES_DEBUG")


if __name__ == "__main__":
    sys.exit(main())
