"""The board's pruning pattern against unstructured pruning: accuracy, size and lockstep cycles.

    python -m bench.board_pattern lenet DIR... [--data MNIST_DIR] [--count 1000]
        one row per pipeline output directory (summary.json, model.qnet.npz, model.dcz), e.g.
        `python -m compress pipeline --arch lenet-300-100 --seed S [--for-board icebreaker]`
    python -m bench.board_pattern rtl --model Q --data MNIST_DIR [--count 200]
        the board's engine (lockstep, 8 PEs, drain_share 2, queue depth 2) in RTL with
        Verilator: one digit at a time and back to back (the next input loading while one
        computes): bit-exact, compute cycles, MAC utilisation, cycles between results
    python -m bench.board_pattern phases --model Q --data MNIST_DIR [--count 50]
        the same engine in the Amaranth simulator, inputs back to back: where the cycles
        between results go, per phase and layer (slot, hold and bubble cycles of COMPUTE,
        PRELOAD, DRAIN; OUTPUT; PRE0 with or without the next input loaded)
    python -m bench.board_pattern user --out DIR [--seeds 0,1,2]
        a user's MLP on data that is not MNIST (seeded synthetic sensor features, 6 classes),
        trained here, compressed by `compress.compress_model` at the same densities with and
        without `for_board="icebreaker"`; writes DIR/<pattern>-s<seed>/ and DIR/table.md

Cycles are those of the lockstep engine with 8 PEs at rel_bits 4 and the board's
`drain_share` 2: the slot cycles (`images.lockstep.lockstep_cycles`), the accumulator hazards
(`images.balance.holds`) and the engine's cycle model (`images.lanes`, option "lockstep",
queue depth 2, which is about 5 % pessimistic on the shipped network; docs/lanes.md); MAC
utilisation = useful MACs / (8 x cycles). The RTL figures come from `python -m tb sim`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .util import md_table

PES = 8
REL_BITS = 4
DRAIN_SHARE = 2


def engine_figures(qnet, x: np.ndarray) -> dict:
    """Per-input means of the lockstep figures of `qnet` on int16 inputs x."""
    from compress.golden import run_layers
    from images.balance import holds, layer_slots
    from images.lanes import model, useful_macs
    from images.lockstep import build_lockstep, lockstep_cycles

    img = build_lockstep(qnet, PES, rel_bits=REL_BITS)
    acts = [x] + run_layers(qnet, x)[:-1]
    perms = [ll.perm for ll in img.layers]
    slots = lockstep_cycles(img, acts)
    hz = holds(img, acts)
    useful = useful_macs(qnet.layers, acts)
    cyc = model(qnet.layers, perms, acts, "lockstep", pes=PES, depth=2,
                drain_share=DRAIN_SHARE, rel_bits=REL_BITS)
    per_layer = []
    for i, (layer, ll) in enumerate(zip(qnet.layers, img.layers)):
        idx = layer.index if i == 0 else layer.index[:, img.layers[i - 1].perm]
        per_layer.append(layer_slots(idx, PES, perm=ll.perm, rel_bits=REL_BITS))
    return {
        "layers": per_layer,
        "slot_cycles": float(slots.sum(axis=1).mean()),
        "hazards": float(hz.sum(axis=1).mean()),
        "useful_macs": float(useful.sum(axis=1).mean()),
        "model_cycles": float(cyc.sum(axis=1).mean()),
        "slot_util": float(useful.sum() / (PES * slots.sum())),
        "model_util": float(useful.sum() / (PES * cyc.sum())),
        "identity": all(np.array_equal(ll.perm, np.arange(len(ll.perm))) for ll in img.layers),
    }


def _row(name, err, size, ratio, f) -> list:
    lay = f["layers"]
    return [name, err, f"{size:,}", f"{ratio:.1f}x",
            " / ".join(f"{s['slots']}" for s in lay), " / ".join(f"{s['bound']}" for s in lay),
            str(sum(s["fillers"] for s in lay)), f"{f['slot_cycles']:.1f}",
            f"{f['hazards']:.1f}", f"{f['model_cycles']:.1f}", f"{100 * f['model_util']:.1f}%"]


HEAD = ["network", "test error", ".dcz bytes", "ratio", "slots per layer",
        "bound", "fillers", "slot cycles / input", "hazards / input",
        "modelled cycles (depth 2, share 2)", "modelled MAC util."]


def cmd_lenet(args) -> int:
    from compress.data import load_split
    from compress.golden import mnist_to_input
    from compress.qnet import load_qnet

    split = load_split("test", args.data)
    rows, data = [], {}
    for d in args.dirs:
        d = Path(d)
        s = json.loads((d / "summary.json").read_text())
        q = load_qnet(d / "model.qnet.npz")
        x = mnist_to_input(split.images[: args.count], q.input_frac)
        f = engine_figures(q, x)
        e = s["errors"]["integer"]
        rows.append(_row(str(d), f"{e['test']:.2f}% (val {e['val']:.2f}%)", s["dcz_bytes"],
                         s["ratio"], f))
        data[str(d)] = {"errors": s["errors"], "dcz_bytes": s["dcz_bytes"], **f}
    print(md_table(HEAD, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------
# A user's MLP on data that is not MNIST


FEATURES, CLASSES = 96, 6


def user_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n examples of 96 sensor features (in their own units, 0..10) and a class 0..5.

    Each class is a mixture of three prototypes over correlated features; the label is
    nearest-prototype plus 3 % label noise. Seed 1234 fixes the prototypes; `seed` the draw.
    """
    proto_rng = np.random.default_rng(1234)
    protos = proto_rng.normal(0, 1, (CLASSES * 3, FEATURES))
    mix = proto_rng.normal(0, 1, (FEATURES, FEATURES)) / np.sqrt(FEATURES)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    which = y * 3 + rng.integers(0, 3, n)
    z = protos[which] + rng.normal(0, 1.1, (n, FEATURES))
    x = np.tanh(z @ mix) * 5 + 5  # correlated, bounded: readings 0..10
    flip = rng.random(n) < 0.03
    y = np.where(flip, rng.integers(0, CLASSES, n), y)
    return x.astype(np.float32), y.astype(np.int64)


def user_model():
    from torch import nn

    return nn.Sequential(nn.Linear(FEATURES, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, CLASSES))


def _train(model, x, y, *, epochs: int, seed: int) -> None:
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 128):
            b = perm[i: i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()


def cmd_user(args) -> int:
    import torch

    import compress
    from compress.models import compressible_layers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    torch.set_num_threads(1)
    x_tr, y_tr = user_data(30000, 1)
    x_va, y_va = user_data(5000, 2)
    x_te, y_te = user_data(5000, 3)
    rows, data = [], {}
    densities = None
    for seed in seeds:
        torch.manual_seed(seed)
        model = user_model()
        _train(model, x_tr, y_tr, epochs=args.epochs, seed=seed)
        with torch.no_grad():
            dense = 100 * float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
        print(f"seed {seed}: dense test accuracy {dense:.2f}%", flush=True)
        if densities is None:
            # the densities: compress_model's own choice for seed 0's model, unstructured;
            # then every run uses them, so the two patterns prune to the same densities
            r = compress.compress_model(model, train=(x_tr, y_tr), val=(x_va, y_va),
                                        test=(x_te, y_te), seed=seed, max_drop=args.max_drop,
                                        progress=False)
            densities = {k: round(v, 4) for k, v in r.summary["density"].items()}
            names = list(compressible_layers(model))
            print(f"densities (compress_model's choice, seed {seed}): {densities}", flush=True)
            assert list(densities) == names
        for board in (None, "icebreaker"):
            name = f"{board or 'unstructured'}-s{seed}"
            r = compress.compress_model(model, train=(x_tr, y_tr), val=(x_va, y_va),
                                        test=(x_te, y_te), seed=seed, max_drop=args.max_drop,
                                        densities=densities, attempts=1, for_board=board,
                                        progress=False)
            r.save(out / name)
            xi = compress.encode_inputs(x_te, r.qnet)
            np.save(out / name / "xi.npy", xi)
            np.save(out / name / "y.npy", y_te)
            f = engine_figures(r.qnet, xi[: args.count])
            s = r.summary
            err = 100 - s["accuracy"]["integer"]["test"]
            rows.append(_row(name, f"{err:.2f}% (dense {100 - dense:.2f}%)", s["dcz_bytes"],
                             s["ratio"], f))
            data[name] = {"dense_test_acc": dense, "accuracy": s["accuracy"],
                          "density": s["density"], "dcz_bytes": s["dcz_bytes"], **f}
            print(md_table(HEAD, rows[-1:]), flush=True)
    md = md_table(HEAD, rows)
    (out / "table.md").write_text(md + "\n")
    (out / "figures.json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    print(md)
    return 0


def cmd_rtl(args) -> int:
    """The board's engine in RTL (Verilator) on MNIST test digits, one at a time and back to
    back: bit-exact, compute cycles, MAC utilisation, cycles between results."""
    from compress.data import load_split
    from compress.golden import golden, mnist_to_input, run_layers
    from compress.shipped import load_model
    from fpga.boards import engine_params as board_params
    from images import build_image
    from images.lanes import useful_macs
    from tb.sim import build, simulate

    qnet, name = load_model(args.model)
    split = load_split("test", args.data)
    x = mnist_to_input(split.images[args.start: args.start + args.count], qnet.input_frac)
    img = build_image(qnet, "lockstep", PES)
    params = board_params(img)
    b = build(img, params, sim="verilator")
    g = golden(qnet, x)
    acts = [x] + run_layers(qnet, x)[:-1]
    useful = useful_macs(qnet.layers, acts).sum()
    out = {"model": name, "digits": len(x), "drain_share": params.drain_share,
           "queue_depth": params.queue_depth}
    for mode in ("one at a time", "back to back"):
        r = simulate(b, x, back_to_back=mode == "back to back")
        compute = r.layer_cycles.sum(axis=1)
        rec = {"bit_exact": int(np.all(r.outputs == g, axis=1).sum()),
               "compute": float(compute.mean()),
               "layer_cycles": [float(v) for v in r.layer_cycles.mean(axis=0)],
               "mac_util": float(useful / (PES * compute.sum())),
               "cycles": float(r.cycles[1:].mean() if mode == "back to back"
                               else r.cycles.mean())}
        out[mode] = rec
        what = ("cycles between results" if mode == "back to back"
                else "cycles first input word -> last output word")
        print(f"{name}, {mode}: bit-exact {rec['bit_exact']}/{len(x)}, compute "
              f"{rec['compute']:.1f} (" + " / ".join(f"{v:.1f}" for v in rec["layer_cycles"])
              + f"), MAC utilisation {100 * rec['mac_util']:.1f}%, {what} {rec['cycles']:.1f}"
              + (f", {args.clock_mhz * 1e6 / rec['cycles']:,.0f} inferences/s at "
                 f"{args.clock_mhz:g} MHz" if mode == "back to back" else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def phase_split(qnet, x: np.ndarray, *, pes: int = PES, drain_share: int = DRAIN_SHARE,
                queue_depth: int = 2) -> tuple[dict, float, int]:
    """({(layer or -1, phase): mean cycles per result}, mean cycles between results, bit-exact
    results) of the lockstep engine on inputs x back to back (the next word offered every
    cycle, outputs always taken), in the Amaranth simulator, from the first result on.

    Each cycle counts once, by the state machine's state: COMPUTE split into slot (a slot
    issued), hold (an accumulator hazard), steal (a slot waiting while layer 0's drain reads
    the accumulators under layer 1's COMPUTE) and bubble (front end, pointer stage, pipeline);
    PRELOAD, DRAIN; OUTPUT; PRE0 split by whether the next input is loaded ("bank full") or
    not ("wait input"). Layer 0's bias preload runs in OUTPUT and PRE0, the next layer's
    front end starts in PRELOAD, and with drain_share 2 layer 0's DRAIN runs under layer 1's
    PRELOAD and COMPUTE: those cycles count under the state they fall in."""
    import collections

    from amaranth.sim import Simulator

    from compress.golden import golden
    from hw.lockstep import LockstepEngine
    from images.lockstep import build_lockstep

    img = build_lockstep(qnet, pes, rel_bits=REL_BITS)
    eng = LockstepEngine(img, drain_share=drain_share, queue_depth=queue_depth)
    n_out = eng.out_features
    words = [int(w) for v in x for w in v]
    got: list[int] = []
    marks: list[int] = []
    tally: collections.Counter = collections.Counter()

    async def bench(ctx):
        i = cyc = 0
        while len(got) < len(x) * n_out:
            ctx.set(eng.i_act.valid, int(i < len(words)))
            ctx.set(eng.i_act.payload, words[i] if i < len(words) else 0)
            ctx.set(eng.o_act.ready, 1)
            _, _, rdy, ov, op = await ctx.tick().sample(eng.i_act.ready, eng.o_act.valid,
                                                        eng.o_act.payload)
            cyc += 1
            if i < len(words) and rdy:
                i += 1
            if ov:
                got.append(op)
                if len(got) % n_out == 0:
                    marks.append(cyc)

    async def probe(ctx):
        c = eng.probe
        fsm = c.fsm._data  # the state register and its encoding (amaranth.hdl.FSM)
        names = {v: k for k, v in fsm["encoding"].items()}
        steal = getattr(c, "steal", c.hold)  # (no steal without the overlap: hold then)
        async for _, _, st, layer, sv, hold, stl, full in ctx.tick().sample(
                fsm["signal"], c.layer, c.s.valid, c.hold, steal, c.io.cb_full):
            if not marks:
                continue
            st = names[st]
            if st == "COMPUTE":
                key = (layer, "compute: hold" if hold
                       else "compute: steal" if stl and sv
                       else "compute: slot" if sv else "compute: bubble")
            elif st in ("PRELOAD", "DRAIN"):
                key = (layer, st.lower())
            elif st == "PRE0":
                key = (-1, "pre0: bank full" if full else "pre0: wait input")
            else:
                key = (-1, st.lower())
            tally[key] += 1

    sim = Simulator(eng)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_process(probe)
    sim.run()
    y = np.array(got).reshape(len(x), n_out)
    exact = int(np.all(y == golden(qnet, x), axis=1).sum())
    k = len(marks) - 1
    # the probe counted from the first result to the end of the run: the last result's cycle
    return ({key: v / k for key, v in tally.items()}, (marks[-1] - marks[0]) / k, exact)


def cmd_phases(args) -> int:
    """Where the cycles between results go, per phase and layer (Amaranth simulator)."""
    from compress.data import load_split
    from compress.golden import mnist_to_input
    from compress.shipped import load_model

    qnet, name = load_model(args.model)
    split = load_split("test", args.data)
    x = mnist_to_input(split.images[args.start: args.start + args.count], qnet.input_frac)
    split_, between, exact = phase_split(qnet, x)
    rows = [[("-" if layer < 0 else f"l{layer}"), phase, f"{v:.1f}"]
            for (layer, phase), v in sorted(split_.items())]
    rows.append(["", "sum", f"{sum(split_.values()):.1f}"])
    print(f"{name}: {len(x)} digits back to back, bit-exact {exact}/{len(x)}, "
          f"{between:.1f} cycles between results (from the first result on)")
    print(md_table(["layer", "phase", "cycles per result"], rows))
    return 0


def walk_cycles(slots, sent=None, depth: int = 2) -> int:
    """Cycles of one pass of a conv layer on the one-map walker, modelled cycle by cycle after
    the RTL (`hw.convfe.OneMapConvFrontEnd` -> pointer stage -> queue -> slot sequencer,
    `hw.lockstep`), from its first read to its last slot: reads[k] in the walker's order
    (every kernel position of every sub-position, sub-positions innermost) has `slots[k]`
    slots (its column's L(c)) and is sent when `sent[k]` (a non-zero value; default all).
    The walker reads one position a cycle while it holds a credit (depth + 1 of them: the
    queue and the pointer stage); a sent read takes a credit, which comes back when the slot
    sequencer takes the column (or a cycle later for a column without weights, dropped in
    the pointer stage); a read not sent waits for a credit but takes none. The slot
    sequencer issues a column's slots one a cycle and takes the next on its last. No holds
    (with sub-positions innermost, a dense patch has none) and no per-pass costs (PRELOAD,
    the drain: about 85 cycles a pass of LeNet-5's conv2 on the RTL)."""
    slots = np.asarray(slots, dtype=np.int64).tolist()
    n = len(slots)
    sent = [True] * n if sent is None else np.asarray(sent, dtype=bool).tolist()
    credits, ready = depth + 1, True
    p = None  # the column in the pointer stage: its slots
    q: list[int] = []
    left = 0  # slots the sequencer has still to issue of its column
    i = t = 0
    while i < n or p is not None or q or left:
        take = i < n and sent[i] and ready
        hold = i < n and not ready
        last = left == 1
        pop = bool(q) and (left == 0 or last)
        room = len(q) != depth
        drop = p == 0
        push = p is not None and p > 0 and room
        credits += pop + drop - take
        ready = credits != 0
        head = q.pop(0) if pop else None
        if push:
            q.append(p)
        p = slots[i] if take else (p if p is not None and p > 0 and not room else None)
        left = head if pop else max(0, left - 1)
        i += not hold
        t += 1
    return t


def conv_figures(qnet, x: np.ndarray, *, pes: int = PES, ahead: int = 2) -> list[dict]:
    """Where a CNN's conv cycles go on the board's one-map layout (the image the board builds:
    `images.lockstep.board_options`), per conv layer, per input on average: the walker's reads
    (every kernel position of every sub-position), the slot cycles sum L(c) over the non-zero
    activations, the bound sum ceil(nnz_c / pes), the busiest PE's weights and the mean per
    column, the fillers at the layout's relative index, columns without a weight, the zero
    activations the walker reads, the accumulator hazards between consecutive columns of a
    dense patch, and the cycles `walk_cycles` models (every pass walked, over the columns the
    walker reads: its column list where the image has one, else all; reads and slots through
    the queue of depth `ahead`, without per-pass costs: the RTL adds those, and skips layer
    0's all-zero passes)."""
    from compress.golden import run_layers
    from images.balance import _column_ends
    from images.lockstep import (_patches, board_options, build_lockstep, column_maps,
                                 engine_columns)

    img = build_lockstep(qnet, pes, **board_options(qnet, pes))
    acts = [x] + run_layers(qnet, x)[:-1]
    cols, logical = column_maps(img)
    ptr = np.asarray(img.col_ptr, dtype=np.int64)
    fw, fr, lw, lr = _column_ends(img)
    out = []
    for i, (layer, ll) in enumerate(zip(qnet.layers, img.layers)):
        g = ll.conv_geom
        if g is None:
            continue
        gc = ll.col_base + np.arange(ll.in_features)
        lc = ptr[gc + 1] - ptr[gc]  # physical order: the walker's (c, dy, dx)
        ok = cols[i] >= 0
        lc_log = np.zeros(logical[i], dtype=np.int64)
        lc_log[cols[i][ok]] = lc[ok]
        nz = _patches(np.asarray(acts[i]), g)  # [batch, positions, logical columns]
        mat = np.asarray(layer.index)[np.asarray(ll.perm)] != 0
        cnt = np.stack([mat[k::pes].sum(axis=0) for k in range(pes)])
        nnz = mat.sum(axis=0)
        ne = np.flatnonzero(lc > 0)
        hz = ((lw[gc][ne[:-1]] & fw[gc][ne[1:]]) & (lr[gc][ne[:-1]] == fr[gc][ne[1:]])).any(1)
        pos = nz.shape[1]
        # every pass in the walker's order: column (c, dy, dx), then the sub-position
        a, b = np.divmod(np.arange(g.subs), g.qw)
        py, px = np.divmod(np.arange(g.hp * g.wp), g.wp)
        at = ((py[:, None] * g.qh + a[None, :]) * (g.wp * g.qw)
              + px[:, None] * g.qw + b[None, :])  # [pass, sub]: the patch's position
        wc = engine_columns(img, i)  # the columns the walker reads: its list, or all
        lg, okw = np.where(ok, cols[i], 0)[wc], ok[wc]
        reads = np.repeat(lc[wc], g.subs)
        modelled = np.mean([
            sum(walk_cycles(reads, (nz[d][at[p]][:, lg] & okw[None, :]).T.ravel(), ahead)
                for p in range(len(at))) for d in range(min(len(x), 5))])
        out.append({
            "layer": f"l{i}", "columns": int(ll.in_features), "positions": int(pos),
            "reads": int(pos * ll.in_features),
            "zero_reads": float((~nz).sum(axis=(1, 2)).mean()),
            "slots": float((nz.astype(np.int64) @ lc_log).sum(axis=1).mean()),
            "slots_dense_position": int(lc.sum()),
            "bound_dense_position": int((-(-nnz // pes)).sum()),
            "busiest_pe": float(cnt.max(axis=0).mean()), "mean_pe": float(cnt.mean()),
            "fillers": _fillers(img, ll),
            "empty_columns": int((nnz == 0).sum()), "walked_columns": int(len(wc)),
            "hazards_dense_position": int(hz.sum()),
            "modelled": float(modelled)})
    return out


def _fillers(img, ll) -> int:
    """Filler entries (v = 0 before a weight) of a layer in its image."""
    mask = (1 << img.index_bits) - 1
    a, b = int(img.col_ptr[ll.col_base]), int(img.col_ptr[ll.col_base + ll.in_features])
    ent = img.slots[a:b].astype(np.int64)
    v, z = ent & mask, ent >> img.index_bits
    return int(((v == 0) & (z == (1 << img.rel_bits) - 1)).sum())


def cmd_conv(args) -> int:
    """Where the conv layers' cycles go on the board's one-map layout (numpy, no RTL)."""
    from compress.data import load_split
    from compress.golden import mnist_to_input
    from compress.shipped import load_model

    qnet, name = load_model(args.model)
    split = load_split("test", args.data)
    x = mnist_to_input(split.images[args.start: args.start + args.count], qnet.input_frac)
    rows = conv_figures(qnet, x)
    keys = list(rows[0]) if rows else []
    print(f"{name}: {len(x)} digits, the one-map layout at {PES} PEs (modelled: 5 digits)")
    print(md_table(keys, [[r[k] if not isinstance(r[k], float) else f"{r[k]:.1f}" for k in keys]
                          for r in rows]))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.board_pattern",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("lenet", help="figures of LeNet-300-100 pipeline outputs")
    a.add_argument("dirs", nargs="+")
    a.add_argument("--data", required=True, help="MNIST directory")
    a.add_argument("--count", type=int, default=1000, help="MNIST test digits (1000)")
    a.add_argument("--json", default=None, help="also write the figures here")
    u = sub.add_parser("user", help="a user's MLP on synthetic sensor data, both patterns")
    u.add_argument("--out", required=True)
    u.add_argument("--seeds", default="0,1,2")
    u.add_argument("--epochs", type=int, default=20)
    u.add_argument("--max-drop", type=float, default=0.5)
    u.add_argument("--count", type=int, default=1000, help="test inputs for the cycles")
    r = sub.add_parser("rtl", help="the board's engine in RTL on MNIST test digits")
    r.add_argument("--model", required=True)
    r.add_argument("--data", required=True, help="MNIST directory")
    r.add_argument("--count", type=int, default=200)
    r.add_argument("--start", type=int, default=0, help="first test digit (0)")
    r.add_argument("--clock-mhz", type=float, default=33.0)
    r.add_argument("--json", default=None)
    ph = sub.add_parser("phases", help="where the cycles between results go (Amaranth sim)")
    ph.add_argument("--model", required=True)
    ph.add_argument("--data", required=True, help="MNIST directory")
    ph.add_argument("--count", type=int, default=50)
    ph.add_argument("--start", type=int, default=0, help="first test digit (0)")
    cv = sub.add_parser("conv", help="where a CNN's conv cycles go on the one-map layout")
    cv.add_argument("--model", required=True)
    cv.add_argument("--data", required=True, help="MNIST directory")
    cv.add_argument("--count", type=int, default=20)
    cv.add_argument("--start", type=int, default=0, help="first test digit (0)")
    args = p.parse_args(argv)
    return {"lenet": cmd_lenet, "user": cmd_user, "rtl": cmd_rtl,
            "phases": cmd_phases, "conv": cmd_conv}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
