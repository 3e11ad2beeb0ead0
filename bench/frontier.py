"""Error against file size for both LeNets: our sweep beside Deep Compression, DNS and SWS.

Each point of ours is one pipeline run (its directory holds summary.json): the recipe with one
knob changed, ``prune.scale`` (every layer's density times the scale), all from the same
trained dense baseline and validation split. The size is the .dcz file on disk; the error is
the integer golden model's on the 10k test set (runs from before LeNet-5 had a qnet: the float
model holding exactly the .dcz's values). The validation error of
each point is in the table: the recipe is the smallest file whose validation error stays within
the budget (``--max-drop`` points over the dense model's validation error); the test error
only reports.

    python -m bench.frontier sweep --arch lenet-300-100 --data $MNIST_DIR \\
        --baseline build/frontier/dense-lenet-300-100-s0.npz --scales 0.55,0.7,0.85,1.0 \\
        --out build/frontier/lenet-300-100
    python -m bench.frontier plot build/frontier/lenet-300-100 build/frontier/lenet-5 \\
        --png docs/images/frontier.png
    python -m bench.frontier ship build/frontier/lenet-5 --out compress/models \\
        --seeds build/frontier/lenet-5-seeds

`ship` applies the same rule to the LeNet-5 sweep and copies the chosen point's .dcz to
compress/models/lenet-5.dcz with lenet-5.qnet.npz (what the .dcz unpacks to) and lenet-5.json
beside it: its float, fake-quantized and integer errors on validation and test, the recipe,
every sweep point, and the other seeds' runs (`--keep-record`: those of the existing record).

`plot` writes the PNG (matplotlib Agg) and prints a markdown table of every point and the
published ones. The published ratios are against float32 weights and biases, as ours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FLOAT_BYTES = {"lenet-300-100": 1_066_440, "lenet-5": 1_724_320}

# ratio, test error (%): Han et al. ICLR 2016; Guo et al. NIPS 2016; Ullrich et al. ICLR 2017.
PUBLISHED = {
    "lenet-300-100": [("Deep Compression", 40, 1.58), ("DNS", 56, 1.99),
                      ("Soft Weight-Sharing", 64, 1.94)],
    "lenet-5": [("Deep Compression", 39, 0.74), ("DNS", 108, 0.91),
                ("Soft Weight-Sharing", 162, 0.97)],
}
# The error budget of the targets: the paper's dense error.
BUDGET = {"lenet-300-100": 1.64, "lenet-5": 0.80}


def read_point(run: Path) -> dict | None:
    """One run directory -> {arch, bytes, ratio, test, val, val_dense, scale, seed, ...}."""
    p = run / "summary.json"
    if not p.exists():
        return None
    s = json.loads(p.read_text())
    errs = s.get("errors", {})
    final = "integer" if "integer" in errs else "stored" if "stored" in errs else "quantized"
    if final not in errs or "dcz_bytes" not in s:
        return None
    cfg = s.get("config", {})
    return {"run": str(run), "arch": s["arch"], "bytes": int(s["dcz_bytes"]),
            "ratio": FLOAT_BYTES.get(s["arch"], 0) / int(s["dcz_bytes"]) or s.get("ratio"),
            "test": errs[final]["test"], "val": errs[final].get("val"),
            "val_dense": errs.get("dense", {}).get("val"),
            "test_dense": errs.get("dense", {}).get("test"), "kind": final,
            "scale": cfg.get("prune", {}).get("scale", 1.0), "seed": cfg.get("seed"),
            # the recipe: "shift" when the retraining ran with random shifts (train.shift)
            "recipe": "shift" if cfg.get("prune", {}).get("retrain", {}).get("shift") else "base",
            "nonzeros": (s.get("density") or [{}])[-1].get("kept"),
            "seconds": s.get("seconds", {}).get("compress")}


def collect(dirs: list[str]) -> list[dict]:
    """Points from run directories, or from directories of run directories."""
    out = []
    for d in map(Path, dirs):
        if not d.is_dir():  # a missing directory holds no points (the caller says so)
            continue
        for run in ([d] if (d / "summary.json").exists() else sorted(d.iterdir())):
            if run.is_dir() and (pt := read_point(run)) is not None:
                out.append(pt)
    return out


def choose(points: list[dict], max_drop: float, seed: int = 0,
           max_val: float | None = None) -> dict | None:
    """Of the sweep's points (one seed), the smallest file whose validation error is within
    max_drop of the dense model's. With max_val (the budget rule), the smallest file whose
    validation error is at most max_val, over every recipe's points; if none is, the point
    with the lowest validation error (then the smaller file)."""
    mine = [p for p in points if p["val"] is not None and p["seed"] == seed]
    if max_val is not None:
        ok = [p for p in mine if p["val"] <= max_val + 1e-9]
        if ok:
            return min(ok, key=lambda p: p["bytes"])
        return min(mine, key=lambda p: (p["val"], p["bytes"])) if mine else None
    ok = [p for p in mine if p["val_dense"] is not None
          and p["val"] - p["val_dense"] <= max_drop + 1e-9]
    return min(ok, key=lambda p: p["bytes"]) if ok else None


def rule_text(max_drop: float, max_val: float | None) -> str:
    if max_val is not None:
        return (f"the smallest file (over every recipe swept) whose validation error is at most "
                f"{max_val:g}%, or, if none is, the lowest validation error")
    return f"the smallest file within {max_drop:g} points of the dense validation error"


def table(points: list[dict], max_drop: float, max_val_l5: float | None = None) -> str:
    lines = ["| network | point | .dcz bytes | ratio | validation error (dense) | test error |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arch in FLOAT_BYTES:
        pts = sorted((p for p in points if p["arch"] == arch), key=lambda p: -p["bytes"])
        best = choose(pts, max_drop, max_val=max_val_l5 if arch == "lenet-5" else None)
        for p in pts:
            mark = " (chosen)" if p is best else \
                " (same recipe)" if best is not None and p["seed"] != best["seed"] and \
                p["scale"] == best["scale"] and p.get("recipe") == best.get("recipe") else ""
            val = (f"{p['val']:.2f}% ({p['val_dense']:.2f}%)" if p["val"] is not None
                   and p["val_dense"] is not None else "n/a")
            tag = ", shift recipe" if p.get("recipe") == "shift" else ""
            lines.append(f"| {arch} | scale {p['scale']:g}, seed {p['seed']}{tag}{mark} | "
                         f"{p['bytes']:,} | {p['ratio']:.1f}x | {val} | {p['test']:.2f}% |")
        for name, ratio, err in PUBLISHED[arch]:
            lines.append(f"| {arch} | {name} (published) | {FLOAT_BYTES[arch] / ratio:,.0f} | "
                         f"{ratio}x | n/a | {err:.2f}% |")
    return "\n".join(lines)


def plot(points: list[dict], png: Path, chosen: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compress.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    markers = {"Deep Compression": ("s", "tab:red"), "DNS": ("^", "tab:purple"),
               "Soft Weight-Sharing": ("D", "tab:brown")}
    for ax, arch in zip(axes, FLOAT_BYTES):
        pts = sorted((p for p in points if p["arch"] == arch), key=lambda p: p["bytes"])
        seeds = sorted({p["seed"] for p in pts}, key=lambda s: (s is None, s))
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, seed in enumerate(seeds):
            # one line per seed and recipe: the shift recipe dashed, with square markers
            for recipe, style in (("base", "o-"), ("shift", "s--")):
                ps = [p for p in pts if p["seed"] == seed and p.get("recipe", "base") == recipe]
                if ps:
                    ax.plot([p["bytes"] / 1000 for p in ps], [p["test"] for p in ps], style,
                            markersize=4, color=colours[i % len(colours)],
                            label=f"ours (seed {seed}" + (", shifts)" if recipe == "shift"
                                                          else ")"))
        mine = [p for p in chosen or [] if p["arch"] == arch]
        if mine:
            ax.plot([p["bytes"] / 1000 for p in mine], [p["test"] for p in mine], "o",
                    markersize=11, markerfacecolor="none", markeredgecolor="black",
                    label="chosen on validation (a seed's sweep)")
        for name, ratio, err in PUBLISHED[arch]:
            ax.plot(FLOAT_BYTES[arch] / ratio / 1000, err, markers[name][0], markersize=7,
                    color=markers[name][1], label=f"{name} ({ratio}x)")
        ax.axhline(BUDGET[arch], color="gray", linestyle="--", linewidth=0.8,
                   label=f"budget {BUDGET[arch]}%")
        y0, y1 = ax.get_ylim()  # room above the points for the legend
        ax.set_ylim(y0, y1 + 0.8 * (y1 - y0))
        lo = min([FLOAT_BYTES[arch] / 170 / 1000] + [p["bytes"] / 1000 for p in pts])
        ax.set_xlim(0.9 * lo, 1.08 * FLOAT_BYTES[arch] / 38 / 1000)
        for r in (40, 50, 70, 100, 150):
            x = FLOAT_BYTES[arch] / r / 1000
            if ax.get_xlim()[0] < x:
                ax.axvline(x, color="lightgray", linewidth=0.6, zorder=0)
                ax.text(x, ax.get_ylim()[1], f"{r}x", fontsize=7, ha="center", va="bottom",
                        color="gray")
        ax.set_xlabel("compressed file (kB)")
        kinds = {p["kind"] for p in pts}
        ax.set_ylabel("test error (%), " + ("integer golden model" if kinds <= {"integer"}
                                            else "integer, or the file's values in float"))
        ax.set_title(arch, fontsize=10, pad=14)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper right", ncol=2 if len(seeds) > 3 else 1)
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})
    plt.close(fig)


def sweep(args) -> int:
    """One pipeline run per scale, from the same baseline, sequentially (one core each)."""
    try:
        scales = [float(x) for x in args.scales.split(",")]
    except ValueError:
        scales = []
    if not scales or not all(0 < x <= 10 for x in scales):
        print(f"error: --scales: expected comma-separated numbers in (0, 10], not "
              f"{args.scales!r}", file=sys.stderr)
        return 2
    for scale in scales:
        out = Path(args.out) / f"s{args.seed}-x{scale:g}"
        cmd = [sys.executable, "-m", "compress", "pipeline", "--arch", args.arch,
               "--data", args.data, "--seed", str(args.seed), "--val-size", str(args.val_size),
               "--baseline", args.baseline, "--stages", "prune,quantize,fixedpoint",
               "--set", f"prune.scale={scale}", "--out", str(out), "--no-progress"]
        print(" ".join(cmd), flush=True)
        if subprocess.call(cmd) != 0:
            return 1
    return 0


_ERROR_WHAT = {
    "dense": "float, dense",
    "pruned": "float, pruned (before weight sharing)",
    "quantized": "fake-quantized: shared weights in float, after centroid fine-tuning",
    "stored": "the .dcz's own values in float: int16 codebooks, biases rounded as chosen on "
              "validation",
    "integer": "the integer network (the qnet the .dcz unpacks to) by the golden model, "
               "32-bit accumulators",
}


def _recipe(cfg: dict) -> dict:
    """The settings of a run that make the recipe (not paths, seeds or progress bars)."""
    drop = {"seed", "progress", "max_steps"}

    def clean(d):
        return {k: clean(v) if isinstance(v, dict) else v for k, v in d.items()
                if k not in drop}

    return {k: clean(cfg[k]) if isinstance(cfg[k], dict) else cfg[k]
            for k in ("val_size", "train", "prune", "quantize", "fixedpoint") if k in cfg}


def _r2(v):
    return None if v is None else round(v, 2)


def ship_record(run: Path, points: list[dict], seeds: list[dict], max_drop: float,
                note: str = "", max_val: float | None = None) -> dict:
    """lenet-5.json for the chosen run directory (its summary.json and model.dcz)."""
    import hashlib

    from compress import dcz

    s = json.loads((run / "summary.json").read_text())
    blob = (run / "model.dcz").read_bytes()
    cfg = s["config"]
    errs = {k: {"what": _ERROR_WHAT[k], **{split: round(v, 2) for split, v in e.items()}}
            for k, e in s["errors"].items() if k in _ERROR_WHAT}
    bits = {n: cfg["quantize"]["layer_bits"].get(n, cfg["quantize"]["bits"])
            for n in (r["layer"] for r in s["density"][:-1])}
    scale = cfg["prune"]["scale"]
    recipe = _recipe(cfg)
    if cfg.get("baseline"):  # the run's own train settings did not make its dense model
        recipe["train"] = (f"the dense checkpoint {Path(cfg['baseline']).name} (its training "
                           "settings are not stored in it: see the note)")
    scales = ", ".join(f"{p['scale']:g}" for p in sorted(points, key=lambda p: p["scale"]))

    def brief(p):
        return {"recipe": p.get("recipe"), "scale": p["scale"], "seed": p["seed"],
                "dcz_bytes": p["bytes"],
                "ratio": round(p["ratio"], 2), "val": round(p["val"], 2),
                "val_dense": _r2(p["val_dense"]), "test": round(p["test"], 2),
                "test_dense": _r2(p.get("test_dense")),
                "compress_seconds": round(p["seconds"]) if p.get("seconds") else None}

    return {
        "arch": s["arch"], "file": "lenet-5.dcz", "dcz_bytes": len(blob),
        "dcz_sha256": hashlib.sha256(blob).hexdigest(), "format_version": blob[4] if
        blob[:4] == dcz.MAGIC else None,
        "float32_bytes": FLOAT_BYTES[s["arch"]],
        "ratio": round(FLOAT_BYTES[s["arch"]] / len(blob), 2),
        "errors_percent": errs,
        "error_sets": f"test: the 10k MNIST test set; val: {cfg['val_size'] // 1000}k images "
                      f"held out of the training set (seed {cfg['seed']}), on which the recipe "
                      "was chosen",
        "density": [dict(r, kept_pct=round(r["kept_pct"], 2)) for r in s["density"]],
        "bias_round_bits": s.get("bias_round"), "index_bits": bits,
        "seed": cfg["seed"], "recipe": recipe,
        "command": f"python -m compress pipeline --arch {s['arch']} --data $MNIST_DIR --seed "
                   f"{cfg['seed']} --set prune.scale={scale:g} (the recipe with this scale); "
                   "this file came from the seed's dense checkpoint with --baseline and "
                   "--stages prune,quantize,fixedpoint",
        "note": f"Chosen on the validation split: of the sweep's points (prune.scale "
                f"{scales}) {rule_text(max_drop, max_val)}; the test error only reports." +
                (f" {note}" if note else ""),
        "sweep": [brief(p) for p in sorted(points, key=lambda p: p["scale"])],
        "other_seeds": [brief(p) for p in sorted(seeds, key=lambda p: p["seed"])],
    }


def ship(args) -> int:
    from compress.atomic import atomic_path

    points = [p for p in collect(args.runs) if p["arch"] == "lenet-5"]
    best = choose(points, args.max_drop, seed=args.seed, max_val=args.max_val)
    if best is None:
        print(f"error: no lenet-5 point of seed {args.seed} meets the rule: "
              f"{rule_text(args.max_drop, args.max_val)}", file=sys.stderr)
        return 2
    seeds = [p for p in collect(args.seeds) if p["arch"] == "lenet-5"] if args.seeds else []
    sweep_pts = [p for p in points if p["seed"] == args.seed]
    rec = ship_record(Path(best["run"]), sweep_pts, seeds, args.max_drop, note=args.note,
                      max_val=args.max_val)
    out = Path(args.out)
    old = out / "lenet-5.json"
    if args.keep_record and old.exists():
        # the run is the recipe again (make models): the choice's evidence stays as recorded
        kept = json.loads(old.read_text())
        rec.update({k: kept[k] for k in ("note", "sweep", "other_seeds") if k in kept})
    blob = (Path(best["run"]) / "model.dcz").read_bytes()
    written = [out / "lenet-5.dcz"]
    qnet = None
    if blob[4:5] == bytes([3]):  # an integer network (qnet version 2): ship it too
        from compress import dcz
        from compress.qnet import load_qnet, save_qnet

        qnet = dcz.unpack(blob)
        run_q = Path(best["run"]) / "model.qnet.npz"
        if run_q.exists() and not load_qnet(run_q, index_bits=8).equals(qnet):
            print(f"error: {run_q} is not what {best['run']}/model.dcz unpacks to",
                  file=sys.stderr)
            return 1
        qnet.validate(index_bits=4)  # the engines' 4-bit codebook indices
        written.append(out / "lenet-5.qnet.npz")
    with atomic_path(out / "lenet-5.dcz") as tmp:
        tmp.write_bytes(blob)
    if qnet is not None:
        save_qnet(qnet, out / "lenet-5.qnet.npz")
    written.append(out / "lenet-5.json")
    with atomic_path(out / "lenet-5.json") as tmp:
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"chose {best['run']} (scale {best['scale']:g}): {rec['dcz_bytes']:,} bytes, "
          f"{rec['ratio']}x, test {best['test']:.2f}%, val {best['val']:.2f}%; wrote "
          f"{', '.join(map(str, written))}")
    return 0


def choose_cmd(args) -> int:
    """The rule's choice at every seed of the runs, with the points it chose from."""
    points = [p for p in collect(args.runs) if p["arch"] == args.arch]
    if not points:
        print(f"error: no {args.arch} run under {', '.join(args.runs)}", file=sys.stderr)
        return 2
    print(f"rule: {rule_text(args.max_drop, args.max_val)}")
    for seed in sorted({p["seed"] for p in points}):
        best = choose(points, args.max_drop, seed=seed, max_val=args.max_val)
        for p in sorted((q for q in points if q["seed"] == seed),
                        key=lambda q: (q.get("recipe", ""), q["scale"])):
            mark = "  <- chosen" if p is best else ""
            print(f"seed {seed}  {p.get('recipe', 'base'):5}  scale {p['scale']:<5g} "
                  f"{p['bytes']:>7,} B  {p['ratio']:6.1f}x  val {p['val']:.2f}%  "
                  f"test {p['test']:.2f}%{mark}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.frontier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep", help="run the pipeline at several prune.scale values")
    s.add_argument("--arch", required=True, choices=list(FLOAT_BYTES))
    s.add_argument("--data", required=True)
    s.add_argument("--baseline", required=True, help="dense checkpoint (same seed and split)")
    s.add_argument("--scales", default="0.55,0.7,0.85,1.0")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-size", type=int, default=10000)
    s.add_argument("--out", required=True)
    q = sub.add_parser("plot", help="PNG and markdown table from run directories")
    q.add_argument("runs", nargs="+", help="run directories (or directories of them)")
    q.add_argument("--png", default="docs/images/frontier.png")
    q.add_argument("--max-drop", type=float, default=0.2,
                   help="validation budget of the choice, points over the dense model")
    q.add_argument("--max-val", type=float, default=None,
                   help="LeNet-5's budget rule: the smallest file with validation error <= this")
    q.add_argument("--json", default=None, help="also write the points here")
    r = sub.add_parser("ship", help="copy the chosen LeNet-5 point to compress/models")
    r.add_argument("runs", nargs="+", help="the sweep's run directories (or their parent)")
    r.add_argument("--out", default="compress/models")
    r.add_argument("--seed", type=int, default=0, help="the sweep's seed")
    r.add_argument("--seeds", nargs="*", default=None,
                   help="run directories of the chosen recipe at other seeds (recorded)")
    r.add_argument("--max-drop", type=float, default=0.2)
    r.add_argument("--max-val", type=float, default=None,
                   help="the budget rule: the smallest file with validation error <= this (%%)")
    r.add_argument("--note", default="", help="appended to the record's note")
    r.add_argument("--keep-record", action="store_true",
                   help="keep the note, sweep and other seeds of the existing lenet-5.json in "
                        "--out (the runs given are the chosen recipe again, e.g. make models)")
    c = sub.add_parser("choose", help="print the point a rule chooses at each seed")
    c.add_argument("runs", nargs="+", help="run directories (or directories of them)")
    c.add_argument("--arch", default="lenet-5", choices=list(FLOAT_BYTES))
    c.add_argument("--max-drop", type=float, default=0.2)
    c.add_argument("--max-val", type=float, default=None)
    args = p.parse_args(argv)
    if args.cmd == "sweep":
        return sweep(args)
    if args.cmd == "ship":
        return ship(args)
    if args.cmd == "choose":
        return choose_cmd(args)
    points = collect(args.runs)
    if not points:
        print(f"error: no summary.json with a .dcz size under {', '.join(args.runs)}",
              file=sys.stderr)
        return 2
    # the rule's choice at each seed that has a sweep (three points or more); a seed with one
    # or two points holds the chosen recipe run again, not a choice
    chosen = [c for arch in FLOAT_BYTES for seed in sorted({p["seed"] for p in points
                                                             if p["arch"] == arch})
              if sum(p["arch"] == arch and p["seed"] == seed for p in points) >= 3
              if (c := choose([p for p in points if p["arch"] == arch], args.max_drop,
                              seed=seed, max_val=args.max_val if arch == "lenet-5" else None))]
    plot(points, Path(args.png), chosen)
    print(table(points, args.max_drop, args.max_val))
    print(f"wrote {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps(points, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
