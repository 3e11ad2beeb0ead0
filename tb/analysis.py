"""Figures of a run: useful MACs, MAC utilisation and where the lost cycles go, per layer.

Useful MACs of a layer for one input = pairs (non-zero weight, non-zero activation), counted
from the golden model's layer inputs. Utilisation = useful MACs / (PEs x compute cycles), with
compute cycles the engine's own `layer_cycles`. The lost cycles of a layer are split using
the ROM image (what each PE must do for this input) and the engine's fixed costs:

* imbalance: the busiest PE's useful MACs above the mean (rows placed over PEs as in the ROM:
             interleaved, or permuted by a balanced ROM);
* fillers:   entries of the busiest PE that are not useful MACs (filler entries, a codebook
             value 0), i.e. max PE work - max PE useful MACs;
* front end: what the front end's rate needs beyond the busiest PE's work (`frontend_cycles`):
             at issue width 1 it broadcasts one non-zero activation per cycle and spends one
             cycle on an all-zero group of N columns; at width 2 two a cycle, across group
             boundaries, one group read a cycle; so a layer takes at least that many cycles
             (with one column a cycle, LeNet-300-100's l1 and l2 on 8 PEs were bound by it);
* output:    the drain of the last layer (output stage, one row per cycle) and its start; the
             drain of every other layer overlaps the compute of the next one;
* other:     the rest: start and fill of the PE pipeline, waiting for the previous layer's
             drain, queue stalls (a PE with a run of heavy columns fills its queue and holds
             the broadcast for all the others).

So cycles = ideal + imbalance + fillers + front end + output + other, per layer.
"""

from __future__ import annotations

import numpy as np

from compress.golden import run_layers
from compress.qnet import QNet
from images.eie import RomImage, column_maps_of, default_issue_width
from images.lockstep import LockstepImage, lockstep_cycles
from images.memmap import ceil_div


def layer_inputs(qnet: QNet, x: np.ndarray, acc_bits: int = 32) -> list[np.ndarray]:
    outs = run_layers(qnet, x, acc_bits=acc_bits)
    return [np.asarray(x)] + outs[:-1]


def patch_nonzeros(layer, a: np.ndarray, in_shape) -> np.ndarray:
    """bool [batch, positions, in_ch * kh * kw]: which values of each computed position's patch
    are non-zero (a conv layer; the positions the engines compute: those inside a whole
    pooling window), columns in the qnet's (c, dy, dx) order; zero padding is zero."""
    import torch

    c, h, w = (int(v) for v in in_shape)
    (kh, kw), (sh, sw), (ph, pw), (qh, qw) = (
        tuple(int(v) for v in getattr(layer, g)) for g in ("kernel", "stride", "padding", "pool"))
    t = torch.from_numpy(np.asarray(a) != 0).reshape(len(a), c, h, w).to(torch.uint8)
    t = torch.nn.functional.pad(t, (pw, pw, ph, ph))
    cols = t.unfold(2, kh, sh).unfold(3, kw, sw)  # [b, c, ho, wo, kh, kw]
    ho, wo = cols.shape[2], cols.shape[3]
    cols = cols[:, :, : (ho // qh) * qh, : (wo // qw) * qw]
    cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(len(a), -1, c * kh * kw)
    return cols.numpy().astype(bool)


def useful_macs(qnet: QNet, x: np.ndarray, acc_bits: int = 32) -> list[np.ndarray]:
    """Per layer, int64[batch]: the pairs (non-zero weight, non-zero activation) the engines
    compute (a conv layer's at every computed position)."""
    shapes = qnet.layer_shapes()
    out = []
    for i, (layer, a) in enumerate(zip(qnet.layers, layer_inputs(qnet, x, acc_bits))):
        per_col = (layer.weights() != 0).sum(axis=0).astype(np.int64)
        if layer.kind == "conv":
            out.append(patch_nonzeros(layer, a, shapes[i][0]).astype(np.int64).sum(axis=1)
                       @ per_col)
        else:
            out.append((np.asarray(a) != 0).astype(np.int64) @ per_col)
    return out


def frontend_cycles(nz: np.ndarray, pes: int, width: int = 1) -> np.ndarray:
    """Cycles [batch] the front end needs for a layer with nothing holding it: nz is bool
    [batch, cols] in physical column order. Width 1: one per non-zero column and one per
    all-zero group of `pes` columns. Width 2 (`hw.eie.frontend.WideFrontEnd`): group j is
    loaded in L_j = max(the cycle group j-1 sent its last column, L_{j-1} + 1), its columns
    go two a cycle from L_j on (sharing a cycle with the group before), and the front end is
    done in L_groups, L_0 = 0. Width 4 (the pipelined front end's four lanes): the same with
    four a cycle."""
    nz = np.asarray(nz, dtype=bool)
    batch, cols = nz.shape
    pad = (-cols) % pes
    counts = np.pad(nz, ((0, 0), (0, pad))).reshape(batch, -1, pes).sum(axis=2)
    if width == 1:
        return np.maximum(counts, 1).sum(axis=1)
    never = -(1 << 40)
    w = width
    t = np.full(batch, never)
    slot = np.zeros(batch, dtype=np.int64)  # columns sent in cycle t
    load = np.zeros(batch, dtype=np.int64)
    for k in counts.T:
        # the first column: in cycle t if a slot is left there and the group is loaded
        first = np.maximum(load, np.where(slot >= w, t + 1, t))
        free0 = np.where(first == t, w - slot, w)  # slots left in the first cycle
        rest = np.maximum(k - free0, 0)  # columns after the first cycle
        last = first + -(-rest // w)
        slot_end = np.where(rest > 0, (rest - 1) % w + 1, w - free0 + k)
        has = k > 0
        t = np.where(has, last, t)
        slot = np.where(has, slot_end, slot)
        load = np.maximum(np.where(has, last, never), load + 1)
    return load


def work(qnet: QNet, rom: RomImage, x: np.ndarray, acc_bits: int = 32,
         issue_width: int | None = None) -> dict:
    """Per layer, per input, per PE: useful MACs and entries processed (incl. fillers).

    Useful MACs come from the logical network (the golden model's layer inputs); a balanced ROM
    only moves them between PEs: PE k holds the logical rows perm_i[k::N] and reads the logical
    columns perm_{i-1} in the order of its pointer array.
    """
    n = rom.pes
    width = default_issue_width(n) if issue_width is None else issue_width
    useful, entries, frontend = [], [], []
    shapes = qnet.layer_shapes()
    col_maps, _logical = column_maps_of(rom)
    for i, (layer, a) in enumerate(zip(qnet.layers, layer_inputs(qnet, x, acc_bits))):
        nzw = layer.weights() != 0  # [out, in], logical
        rl = rom.layers[i]
        if layer.kind == "conv" or (i and qnet.layers[i - 1].kind == "conv"):
            # per position (conv) or over the CHAN map (fc after conv): counts by logical
            # column, each PE's entries taken from its physical columns
            cols = col_maps[i]
            if layer.kind == "conv":
                nz = patch_nonzeros(layer, a, shapes[i][0]).astype(np.int64).sum(axis=1)
            else:
                nz = (np.asarray(a) != 0).astype(np.int64)
            rows = np.asarray(rom.perm[i])
            u = np.zeros((len(nz), n), dtype=np.int64)
            e = np.zeros((len(nz), n), dtype=np.int64)
            ok = cols >= 0
            for k in range(n):
                u[:, k] = nz @ nzw[rows[k::n]].sum(axis=0)
                pb = rl.ptr_base[k]
                per_phys = np.diff(rom.ptr[k][pb: pb + rl.in_features + 1])
                per_log = np.zeros(layer.in_features, dtype=np.int64)
                per_log[cols[ok]] = per_phys[ok]
                e[:, k] = nz @ per_log
            useful.append(u)
            entries.append(e)
            frontend.append(np.zeros(len(nz), dtype=np.int64))  # not modelled for conv
            continue
        act = (np.asarray(a) != 0).astype(np.int64)  # [batch, in], logical columns
        rows = np.asarray(rom.perm[i])
        cols = np.asarray(rom.perm[i - 1]) if i else np.arange(layer.in_features)
        act_phys = act[:, cols]  # physical column p is logical column cols[p]
        u = np.zeros((len(act), n), dtype=np.int64)
        e = np.zeros((len(act), n), dtype=np.int64)
        for k in range(n):
            u[:, k] = act @ nzw[rows[k::n]].sum(axis=0)
            pb = rl.ptr_base[k]
            per_col = np.diff(rom.ptr[k][pb : pb + rl.in_features + 1])
            e[:, k] = act_phys @ per_col
        useful.append(u)
        entries.append(e)
        frontend.append(frontend_cycles(act_phys != 0, n, width))
    return {"useful": useful, "entries": entries, "frontend": frontend}


def breakdown(qnet: QNet, rom: RomImage, x: np.ndarray, layer_cycles: np.ndarray,
              acc_bits: int = 32, issue_width: int | None = None) -> list[dict]:
    """Per layer, averaged over the inputs: cycles, ideal and the lost-cycle split
    (issue_width: the engine's, None for its default)."""
    n = rom.pes
    w = work(qnet, rom, x, acc_bits, issue_width)
    rows = []
    L = rom.num_layers
    for i in range(L):
        u, e = w["useful"][i], w["entries"][i]
        lc = np.asarray(layer_cycles)[:, i].astype(np.float64)
        useful = u.sum(axis=1).astype(np.float64)
        ideal = useful / n
        max_u = u.max(axis=1)
        max_e = e.max(axis=1)
        fe = w["frontend"][i]
        out_i = rom.layers[i].out_features
        output = ceil_div(out_i, n) + 2 if i == L - 1 else 0  # drain rows + flush + start
        rows.append({
            "layer": i,
            "cycles": float(lc.mean()),
            "useful_macs": float(useful.mean()),
            "ideal": float(ideal.mean()),
            "utilisation": float(useful.sum() / (n * lc.sum())) if lc.sum() else 0.0,
            "imbalance": float((max_u - ideal).mean()),
            "fillers": float((max_e - max_u).mean()),
            "frontend": float(np.maximum(fe - max_e, 0).mean()),
            "output": float(output),
            "other": float((lc - np.maximum(max_e, fe) - output).mean()),
        })
    return rows


def utilisation(qnet: QNet, rom: RomImage, x: np.ndarray, layer_cycles: np.ndarray,
                acc_bits: int = 32) -> tuple[float, float]:
    """(overall MAC utilisation, ideal) over all layers and inputs; the ideal is useful MACs over
    N x the busiest PE's useful MACs per layer and input (the load imbalance of the ROM's own
    row placement alone)."""
    w = work(qnet, rom, x, acc_bits)
    useful = sum(int(u.sum()) for u in w["useful"])
    busiest = sum(int(u.max(axis=1).sum()) for u in w["useful"])
    total = int(np.asarray(layer_cycles).sum())
    n = rom.pes
    return (useful / (n * total) if total else 0.0, useful / (n * busiest) if busiest else 0.0)


# ---- what `tb sim` prints after the cycles, per engine ---------------------------------------


def _report_any(qnet, rom, img, x, layer_cycles, acc_bits) -> list[str]:
    util, _ideal = utilisation(qnet, rom, x, layer_cycles, acc_bits)
    return [f"MAC utilisation: {100 * util:.1f}% of {img.pes} PEs x compute cycles"]


def _report_eie(qnet, rom, img, x, layer_cycles, acc_bits, issue_width=None) -> list[str]:
    """Utilisation against its ideal, and where the cycles go (`breakdown`)."""
    util, ideal = utilisation(qnet, rom, x, layer_cycles, acc_bits)
    place = "balanced" if rom.balanced else "interleaved"
    lines = [f"MAC utilisation: {100 * util:.1f}% of {rom.pes} PEs x compute cycles "
             f"(ideal {100 * ideal:.1f}%: the load imbalance of the ROM's {place} rows alone)",
             "",
             "where the cycles go, per layer (mean per inference; cycles = ideal + the rest):",
             "layer  cycles  useful-MACs  ideal  util   imbalance  fillers  front-end  output  "
             "other"]
    for row in breakdown(qnet, rom, x, layer_cycles, acc_bits, issue_width):
        lines.append(f"l{row['layer']:<4d} {row['cycles']:7.1f}  {row['useful_macs']:11.1f} "
                     f"{row['ideal']:6.1f}  {100 * row['utilisation']:5.1f}%  "
                     f"{row['imbalance']:9.1f}  {row['fillers']:7.1f}  {row['frontend']:9.1f}"
                     f"  {row['output']:6.1f}  {row['other']:5.1f}")
    return lines


def _report_lockstep(qnet, rom, img, x, layer_cycles, acc_bits) -> list[str]:
    """Utilisation against what the slot cycles alone allow, per layer."""
    util, _ideal = utilisation(qnet, rom, x, layer_cycles, acc_bits)
    lc = np.asarray(layer_cycles)
    slots = lockstep_cycles(img, layer_inputs(qnet, x, acc_bits))
    return [f"MAC utilisation: {100 * util:.1f}% of {img.pes} PEs x compute cycles; the slot "
            f"cycles alone (max over PEs per column) allow "
            f"{100 * util * lc.sum(axis=1).mean() / slots.sum(axis=1).mean():.1f}%",
            "per layer (mean): " + ", ".join(
                f"l{i} {lc[:, i].mean():.1f} cycles = {slots[:, i].mean():.1f} slot "
                f"+ {lc[:, i].mean() - slots[:, i].mean():.1f} preload/pipeline/drain"
                for i in range(img.num_layers))]


# the image type of an engine -> its report; any other engine gets its MAC utilisation
REPORTS = {RomImage: _report_eie, LockstepImage: _report_lockstep}


def report(qnet: QNet, rom: RomImage, img, x: np.ndarray, layer_cycles: np.ndarray,
           acc_bits: int = 32, issue_width: int | None = None) -> list[str]:
    """The lines `tb sim` prints about a run of the engine of `img` (`rom`: the EIE image of
    the same network and PEs, whose placement the utilisation's ideal is taken from;
    issue_width: the EIE engine's front end, None for its default)."""
    if isinstance(img, RomImage):
        return _report_eie(qnet, rom, img, x, layer_cycles, acc_bits, issue_width)
    return REPORTS.get(type(img), _report_any)(qnet, rom, img, x, layer_cycles, acc_bits)
