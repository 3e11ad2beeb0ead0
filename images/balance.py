"""How evenly a layer's columns spread over the lockstep engine's PEs, and what it costs.

The lockstep engine (docs/lockstep.md) pays for column c the entry count of its busiest PE,
L(c), fillers included; no placement can go under ceil(nnz_c / N). A network pruned in the
board's pattern (`compress.pattern`) meets that bound with its rows in logical order (row p in
PE p % N), so the image keeps that order (`at_bound`) instead of searching for another.

* `layer_slots`: non-zeros, entries, fillers, slots and the bound of one layer under a
  placement;
* `at_bound`: whether the logical order already meets the bound in every column;
* `holds`: the accumulator hazards a batch meets in a lockstep image (a column whose first
  slot, in some PE, is a weight on the row the previous column's last slot writes; the engine
  holds a cycle there when the two slots come back to back).
"""

from __future__ import annotations

import numpy as np

from .csc import DEFAULT_REL_BITS, entry_steps
from .placement import at_bound, layer_slots  # noqa: F401 (their home: the placement's)


def _column_ends(img):
    """Per global column and PE: (first slot is a weight, its row, last slot is a weight,
    its row), each [columns, pes]."""
    mask = (1 << img.index_bits) - 1
    ent = img.slots.astype(np.int64)
    v, z = ent & mask, ent >> img.index_bits
    ptr = np.asarray(img.col_ptr, dtype=np.int64)
    lc = np.diff(ptr)
    cols = len(lc)
    pes = img.pes
    first_w = np.zeros((cols, pes), dtype=bool)
    last_w = np.zeros((cols, pes), dtype=bool)
    first_r = np.full((cols, pes), -1, dtype=np.int64)
    last_r = np.full((cols, pes), -2, dtype=np.int64)
    live = lc > 0
    if not live.any():
        return first_w, first_r, last_w, last_r
    # row of every slot: the running sum of z + 1 (a long filler's 1 + z << rel_bits) inside
    # its column, minus one
    step = np.cumsum(entry_steps(v, z, img.rel_bits, getattr(img, "long_fillers", False)),
                     axis=0)
    before = np.vstack([np.zeros((1, pes), dtype=np.int64), step])[ptr[:-1]]  # [cols, pes]
    row = step - 1 - np.repeat(before, lc, axis=0)
    a, b = ptr[:-1][live], ptr[1:][live] - 1
    first_w[live], first_r[live] = v[a] != 0, z[a]
    last_w[live], last_r[live] = v[b] != 0, row[b]
    return first_w, first_r, last_w, last_r


def holds(img, acts: list[np.ndarray]) -> np.ndarray:
    """Hazards [batch, layers]: consecutive computed columns of a layer (non-zero activation,
    L(c) > 0) where some PE's first slot is a weight on the row its previous column's last
    slot (a weight) writes. acts[i] is layer i's input in logical column order."""
    fw, fr, lw, lr = _column_ends(img)
    ptr = np.asarray(img.col_ptr, dtype=np.int64)
    out = np.zeros((len(acts[0]), img.num_layers), dtype=np.int64)
    for i, ll in enumerate(img.layers):
        g = ll.col_base + np.arange(ll.in_features)
        phys = acts[i] if i == 0 else acts[i][:, img.layers[i - 1].perm]
        lc = ptr[g + 1] - ptr[g]
        # hit[a, b]: column b right after column a holds
        hit = ((lw[g][:, None, :] & fw[g][None, :, :])
               & (lr[g][:, None, :] == fr[g][None, :, :])).any(axis=2)
        for n, row in enumerate(phys):
            cs = np.flatnonzero((row != 0) & (lc > 0))
            if len(cs) > 1:
                out[n, i] = int(hit[cs[:-1], cs[1:]].sum())
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m images.balance: a network's lockstep slots, fillers and holds per layer."""
    import argparse
    import sys

    from compress.errors import InputError, run_main

    p = argparse.ArgumentParser(prog="python -m images.balance",
                                description=main.__doc__.split(": ", 1)[1])
    p.add_argument("--model", default=None, help="qnet .npz (default: the shipped LeNet-300-100)")
    p.add_argument("--pes", type=int, default=8, help="PEs (default 8)")
    p.add_argument("--rel-bits", type=int, default=DEFAULT_REL_BITS,
                   help=f"relative row index bits (default {DEFAULT_REL_BITS}, the board's)")
    p.add_argument("--data", default=None,
                   help="MNIST directory: per-digit figures on its test digits (default: the "
                        "100 sample digits)")
    p.add_argument("--count", type=int, default=100, help="digits (default 100)")
    args = p.parse_args(argv)

    def body():
        from compress.data import load_sample, load_split
        from compress.golden import mnist_to_input, run_layers
        from compress.shipped import load_model

        from .lanes import useful_macs
        from .lockstep import build_lockstep, lockstep_cycles

        if args.count < 1:
            raise InputError(f"--count must be >= 1, not {args.count}")
        qnet, desc = load_model(args.model)
        img = build_lockstep(qnet, args.pes, rel_bits=args.rel_bits)
        print(f"{desc}: {args.pes} PEs, rel_bits {args.rel_bits}, the lockstep image's "
              f"placement")
        print(f"{'layer':6s} {'shape':>10s} {'nnz':>7s} {'fillers':>7s} {'slots':>7s} "
              f"{'bound':>7s} {'slots/bound':>11s}  rows")
        for i, (layer, ll) in enumerate(zip(qnet.layers, img.layers)):
            idx = layer.index if i == 0 else layer.index[:, img.layers[i - 1].perm]
            s = layer_slots(idx, args.pes, perm=ll.perm, rel_bits=args.rel_bits)
            order = ("logical order" if np.array_equal(ll.perm, np.arange(len(ll.perm)))
                     else "permuted")
            print(f"l{i:<5d} {layer.out_features:>4d}x{layer.in_features:<5d} {s['nnz']:7d} "
                  f"{s['fillers']:7d} {s['slots']:7d} {s['bound']:7d} "
                  f"{s['slots'] / max(s['bound'], 1):11.3f}  {order}")
        if qnet.in_features != 784:
            return 0
        split = load_split("test", args.data) if args.data else load_sample()
        x = mnist_to_input(split.images[: args.count], qnet.input_frac)
        acts = [x] + run_layers(qnet, x)[:-1]
        slots = lockstep_cycles(img, acts)
        hz = holds(img, acts)
        useful = useful_macs(qnet.layers, acts)
        per = lambda a: " / ".join(f"{v:.1f}" for v in a.mean(axis=0))  # noqa: E731
        print(f"{len(x)} MNIST test digits, per digit (l0 / l1 / l2):")
        print(f"  slot cycles {slots.sum(axis=1).mean():.1f} ({per(slots)})")
        print(f"  accumulator hazards (a hold each when back to back) "
              f"{hz.sum(axis=1).mean():.1f} ({per(hz)})")
        print(f"  useful MACs {useful.sum(axis=1).mean():.1f}; MAC utilisation of the slot "
              f"cycles alone {100 * useful.sum() / (args.pes * slots.sum()):.1f}%, with the "
              f"holds {100 * useful.sum() / (args.pes * (slots.sum() + hz.sum())):.1f}%")
        return 0

    return run_main(body, debug_env="BALANCE_DEBUG")


if __name__ == "__main__":
    import sys

    sys.exit(main())
