"""`python -m compress train | prune | quantize | pipeline | report`: the training-side stages.

Every stage runs alone (checkpoint in, checkpoint out) or all together (`pipeline`), from a
recipe, a config file (JSON or TOML, the same nesting as `PipelineConfig`) and flags; a
``--set section.key=value`` flag overrides any setting (value parsed as JSON, else a string).
All of them run under ``torchrun`` too (DDP; only rank 0 writes files).

`pipeline --model M.onnx --data D.npz --out DIR` is the same path for your own network:
the ONNX file is parsed (`compress.onnx_import`), the data set read (`compress.cli.user`)
and `compress.compress_model` chooses the per-layer densities under ``--max-drop``.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

from .registry import command
from ..errors import InputError


def _parse_sets(items: list[str] | None) -> dict:
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        d = out
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise InputError(f"--set {item!r}: {p} is not a section")
        d[parts[-1]] = value
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _common(p, *, arch=True):
    if arch:
        p.add_argument("--arch", default=None, help="lenet-300-100 (default) or lenet-5")
    p.add_argument("--data", default=None, help="MNIST IDX directory (default: $MNIST_DIR); "
                                               "with pipeline --model, the data set .npz")
    p.add_argument("--config", default=None, help="JSON or TOML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. prune.levels.fc1=0.05 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="seed of every random choice")
    p.add_argument("--val-size", type=int, default=None,
                   help="hold out this many training images as a validation split")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap every training stage at this many steps (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1: fastest on a shared 2-core machine)")


def _config(args, arch_default="lenet-300-100"):
    from ..pipeline import make_config, read_config_file, set_threads
    from ..train import setup_distributed

    setup_distributed()
    over: dict = read_config_file(args.config) if args.config else {}
    over = _merge(over, _parse_sets(args.set))
    for key, val in (("data", args.data), ("seed", args.seed), ("val_size", args.val_size),
                     ("threads", args.threads)):
        if val is not None:
            over[key] = val
    if getattr(args, "arch", None):
        over["arch"] = args.arch
    if args.no_progress:
        over["progress"] = False
    cfg = make_config(over.pop("arch", arch_default), over)
    set_threads(cfg)
    if args.max_steps is not None:
        for t in (cfg.train, cfg.prune.retrain, cfg.prune.final_retrain, cfg.quantize.finetune):
            if t is not None:
                t.max_steps = args.max_steps
    return cfg


# ---------------------------------------------------------------------------------------------


def _train_args(p):
    _common(p)
    p.add_argument("--epochs", type=float, default=None, help="training epochs")
    p.add_argument("--out", required=True, help="dense checkpoint to write (.npz)")


@command("train", "train a dense baseline on MNIST")(_train_args)
def _train(args):
    from ..pipeline import load_data, stage_train
    from ..train import is_main, save_checkpoint

    cfg = _config(args)
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    data = load_data(cfg)
    model, _ = stage_train(cfg, data)
    if is_main():
        save_checkpoint(args.out, cfg.arch, model, stage="dense")
        print(f"wrote {args.out}")


def _prune_args(p):
    _common(p, arch=False)
    p.add_argument("--checkpoint", required=True, help="dense (or pruned) checkpoint")
    p.add_argument("--method", choices=["std", "percentile"], default=None)
    p.add_argument("--schedule", choices=["iterative", "gradual", "oneshot"], default=None)
    p.add_argument("--level", type=float, default=None,
                   help="final density (percentile) or quality (std) of layers not in --levels")
    p.add_argument("--levels", default=None, help="per layer, e.g. fc1=0.05,fc2=0.065,fc3=0.26")
    p.add_argument("--steps", type=int, default=None, help="iterative prune/retrain rounds")
    p.add_argument("--out", required=True, help="pruned checkpoint to write (.npz)")


def _levels(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise InputError(f"--levels: expected layer=value, got {part!r}")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise InputError(f"--levels: {v!r} is not a number") from None
    return out


@command("prune", "magnitude pruning with retraining (masks held)")(_prune_args)
def _prune(args):
    from ..pipeline import load_data, stage_prune
    from ..train import is_main, load_checkpoint, save_checkpoint

    ck = load_checkpoint(args.checkpoint)
    cfg = _config(args, ck.arch)
    if ck.arch != cfg.arch:
        cfg = _config(args, ck.arch)
    p = cfg.prune
    if args.method:
        p.method = args.method
        if args.level is None and not args.levels and args.method == "std":
            raise InputError("--method std needs --level (quality) or --levels")
        if args.method == "std":
            p.levels = {}
    if args.schedule:
        p.schedule = args.schedule
    if args.level is not None:
        p.level = args.level
        p.levels = {}
    if args.levels:
        p.levels = _levels(args.levels)
    if args.steps is not None:
        p.steps = args.steps
    model = ck.model()
    masks, _ = stage_prune(model, cfg, load_data(cfg), masks=ck.masks or None)
    if is_main():
        save_checkpoint(args.out, ck.arch, model, stage="pruned", masks=masks)
        print(f"wrote {args.out}")


def _quantize_args(p):
    _common(p, arch=False)
    p.add_argument("--checkpoint", required=True, help="pruned checkpoint")
    p.add_argument("--bits", type=int, default=None, help="index bits of every layer (default 4)")
    p.add_argument("--init", choices=["linear", "density", "random"], default=None)
    p.add_argument("--finetune-epochs", type=float, default=None)
    p.add_argument("--out", required=True, help="quantized checkpoint to write (.npz)")
    p.add_argument("--qnet", default=None, help="also write the fixed-point qnet (FC networks)")
    p.add_argument("--dcz", default=None, help="also write the .dcz (FC networks)")


@command("quantize", "trained quantization (k-means + centroid fine-tuning), fixed point")(
    _quantize_args)
def _quantize(args):
    from ..pipeline import load_data, stage_fixedpoint, stage_quantize
    from ..qnet import save_qnet
    from ..train import is_main, load_checkpoint, save_checkpoint

    ck = load_checkpoint(args.checkpoint)
    cfg = _config(args, ck.arch)
    q = cfg.quantize
    if args.bits is not None:
        q.bits = args.bits
        q.layer_bits = {}
    if args.init:
        q.init = args.init
    if args.finetune_epochs is not None:
        q.finetune.epochs = args.finetune_epochs
    model = ck.model()
    masks = ck.masks or None
    data = load_data(cfg)
    codebooks, indices, _ = stage_quantize(model, masks, cfg, data)
    if not is_main():
        return
    save_checkpoint(args.out, ck.arch, model, stage="quantized", masks=masks,
                    codebooks=codebooks, indices=indices)
    print(f"wrote {args.out}")
    if args.qnet or args.dcz:
        qnet, *_ = stage_fixedpoint(model, codebooks, indices, cfg, data)
        if args.qnet:
            save_qnet(qnet, args.qnet, index_bits=8)
            print(f"wrote {args.qnet}")
        if args.dcz:
            from ..dcz import write_dcz

            write_dcz(qnet, args.dcz)
            print(f"wrote {args.dcz}: {Path(args.dcz).stat().st_size:,} bytes")


def _pipeline_args(p):
    _common(p)
    p.add_argument("--model", default=None,
                   help="your own trained network as an ONNX file (instead of --arch); --data "
                        "is then an .npz with x_train, y_train, x_test, y_test (optionally "
                        "x_val, y_val)")
    p.add_argument("--max-drop", type=float, default=None,
                   help="with --model: validation accuracy (percentage points) compression may "
                        "lose against the dense model (default 0.5)")
    p.add_argument("--epochs", type=float, default=None,
                   help="with --model: retraining epochs per pruning round (default: one epoch, "
                        "150..1000 steps)")
    p.add_argument("--prune-rounds", type=int, default=None,
                   help="with --model: iterative prune/retrain rounds (default 4)")
    p.add_argument("--attempts", type=int, default=None,
                   help="with --model: tries, each denser than the last, to meet --max-drop "
                        "(default 3)")
    p.add_argument("--for-board", default=None, metavar="BOARD",
                   help="prune in the pattern of BOARD's engine (icebreaker: every column even "
                        "over the lockstep engine's 8 PEs, a conv layer's kernel as its "
                        "[out_ch, in_ch*kh*kw] matrix; default: unstructured)")
    p.add_argument("--baseline", default=None, help="start from this dense checkpoint")
    p.add_argument("--out", default=None, help="output directory (default build/compress; with "
                                              "--model: a new or empty directory, see --force)")
    p.add_argument("--force", action="store_true",
                   help="with --model: write into an existing non-empty --out; the files this "
                        "command writes are replaced, nothing else is touched")
    p.add_argument("--stages", default="train,prune,quantize,fixedpoint",
                   help="comma-separated subset of train,prune,quantize,fixedpoint")
    p.add_argument("--ship", default=None, metavar="DIR",
                   help="also install the result as the embedded default in DIR "
                        "(<arch>.dcz, <arch>.qnet.npz unpacked from it, mnist-test-100.npz)")
    p.add_argument("--ship-name", default=None, metavar="NAME",
                   help="with --ship: install as NAME.dcz and NAME.qnet.npz (default: the "
                        "arch, e.g. lenet-300-100-board for the board's network)")


@command("pipeline", "run every stage: train, prune, quantize, fixed point, .dcz, report "
                     "(--arch: the LeNet recipes on MNIST; --model: your ONNX network)")(
    _pipeline_args)
def _pipeline(args):
    from ..pipeline import run_pipeline
    from ..train import is_main

    if args.model is not None:
        return _pipeline_model(args)
    for flag, value in (("--max-drop", args.max_drop), ("--epochs", args.epochs),
                        ("--prune-rounds", args.prune_rounds), ("--attempts", args.attempts),
                        ("--force", args.force or None)):
        if value is not None:
            raise InputError(f"{flag} goes with --model (the recipes take --config/--set)")
    cfg = _config(args)
    if args.for_board is not None:
        from ..pattern import prune_settings

        for k, v in prune_settings(args.for_board).items():
            setattr(cfg.prune, k, v)
    if args.baseline:
        cfg.baseline = args.baseline
    if args.out:
        cfg.out = args.out
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    bad = [s for s in stages if s not in ("train", "prune", "quantize", "fixedpoint")]
    if bad:
        raise InputError(f"--stages: unknown stage {bad[0]!r}")
    if args.ship_name is not None and (not args.ship or not _NAME.fullmatch(args.ship_name)):
        raise InputError(f"--ship-name {args.ship_name!r}: goes with --ship, and is a file "
                         "name stem (letters, digits, '.', '_', '-')")
    summary = run_pipeline(cfg, stages=stages)
    if args.ship and is_main():
        ship(cfg, Path(args.ship), name=args.ship_name)
    return 0 if summary else 1


def _one_line_warning(message, *_args, **_kwargs) -> None:
    """warnings.showwarning for the CLI: one line on stderr, not the source line Python adds."""
    print(f"warning: {str(message).splitlines()[0]}", file=sys.stderr, flush=True)


def _pipeline_model(args) -> int:
    """`pipeline --model M.onnx --data D.npz`: compress_model on the user's network and data."""
    from ..api import compress_model
    from ..atomic import atomic_dir, check_dir_output
    from .user import load_dataset, load_model
    from ..sensitivity import write_sensitivity

    if args.arch is not None:
        raise InputError("--arch and --model exclude each other (--arch: the LeNet recipes on "
                         "MNIST; --model: your own ONNX network)")
    for flag, value in (("--baseline", args.baseline), ("--ship", args.ship),
                        ("--ship-name", args.ship_name),
                        ("--config", args.config), ("--set", args.set),
                        ("--val-size", args.val_size)):
        if value is not None:
            raise InputError(f"{flag} goes with --arch, not --model")
    if args.stages != "train,prune,quantize,fixedpoint":
        raise InputError("--stages goes with --arch, not --model")
    if args.data is None:
        raise InputError("--model needs --data D.npz (x_train, y_train, x_test, y_test)")
    if args.out is None:
        raise InputError("--model needs --out DIR")
    out = Path(args.out)
    # export-rom's rule, before the run: a new or empty DIR, or --force (then only this
    # command's files are replaced); no output may be a directory in the way or an input.
    check_dir_output(out, force=args.force, what="--out", names=PIPELINE_OUTPUTS,
                     keep=(args.model, args.data))
    if args.max_steps is not None and args.max_steps < 1:
        raise InputError(f"--max-steps must be >= 1, not {args.max_steps}")
    model = load_model(args.model)
    from ..trace import network_chain

    network_chain(model)  # a layer the integer network cannot hold: one line, before anything
    data = load_dataset(args.data, model.input_shape)
    # One CPU thread unless asked, as for the recipes (fastest on a shared 2-core machine).
    opts: dict = {"test": data["test"], "progress": not args.no_progress,
                  "threads": 1 if args.threads is None else args.threads}
    for key, value in (("epochs", args.epochs), ("prune_rounds", args.prune_rounds),
                       ("attempts", args.attempts), ("for_board", args.for_board)):
        if value is not None:
            opts[key] = value
    if args.max_steps is not None:  # a cap on the steps of every retraining round
        opts["round_steps"] = (min(150, args.max_steps), args.max_steps)
    with warnings.catch_warnings():
        # each warning once, as one line, when it happens (not after an hour of training)
        warnings.simplefilter("default")
        warnings.showwarning = _one_line_warning
        result = compress_model(model, train=data["train"], val=data["val"],
                                seed=0 if args.seed is None else args.seed,
                                max_drop=0.5 if args.max_drop is None else args.max_drop,
                                **opts)
    if data["val"] is None and args.no_progress:  # else the stage lines said it at the start
        print(f"note: {args.data} has no x_val/y_val: {result.summary['examples']['val']} "
              "examples of x_train were held out for validation (seeded by --seed); max_drop "
              "was judged on them", file=sys.stderr)
    with atomic_dir(out, force=args.force, what="--out", keep=(args.model, args.data)) as tmp:
        result.save(tmp)
        if result.sensitivity is not None:
            write_sensitivity(result.sensitivity, tmp)
    s = result.summary
    acc = s["accuracy"]
    final = "integer" if "integer" in acc else "quantized"
    met = "met" if s["met_max_drop"] else "NOT met"
    print(f"{args.model}: .dcz {s['dcz_bytes']:,} bytes, {s['ratio']:.1f}x smaller than float32 "
          f"({s['uncompressed_bytes']:,} bytes); max_drop {s['max_drop']} {met} "
          f"(validation drop {s['drop']:.2f} points on {s['examples']['val']} examples, "
          f"{100 / s['examples']['val']:.2f} points each)")
    print("test accuracy: dense {:.2f}%, {} {:.2f}%".format(
        acc["dense"]["test"], final, acc[final]["test"]))
    print("density " + ", ".join(f"{k} {v:.3f}" for k, v in s["density"].items()) +
          "; index bits " + ", ".join(f"{k} {v}" for k, v in s["index_bits"].items()))
    written = ["model.dcz", "model.qnet.npz", "report.txt", "summary.json", "sensitivity.json",
               "sensitivity.txt", "sensitivity.png"]
    print(f"wrote {out}/: {', '.join(written)}" +
          (" (a version 2 qnet: conv layers, which the golden model runs; the RTL engine and "
           "the board do not yet)" if result.qnet.has_conv else ""))
    return 0


PIPELINE_OUTPUTS = ("model.dcz", "model.qnet.npz", "report.txt", "summary.json",
                    "sensitivity.json", "sensitivity.txt", "sensitivity.png")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def ship(cfg, dest: Path, name: str | None = None) -> None:
    """Install out/model.dcz as the embedded default (or NAME beside it); the qnet is what
    unpacking gives."""
    from .. import dcz
    from ..atomic import write_bytes_atomic
    from ..data import load_split, write_sample
    from ..qnet import save_qnet

    src = Path(cfg.out) / "model.dcz"
    if not src.exists():
        raise InputError(f"{src}: no .dcz to ship (run the fixedpoint stage first)")
    data = dcz.read_file(src)
    qnet = dcz.unpack(data)
    qnet.validate(index_bits=4)  # the engine's 4-bit codebook indices
    dest.mkdir(parents=True, exist_ok=True)
    name = name or cfg.arch
    write_bytes_atomic(dest / f"{name}.dcz", data)
    save_qnet(qnet, dest / f"{name}.qnet.npz")
    write_sample(dest / "mnist-test-100.npz", load_split("test", cfg.data))
    print(f"shipped {dest / (name + '.dcz')} ({len(data):,} bytes), "
          f"{dest / (name + '.qnet.npz')}, {dest / 'mnist-test-100.npz'}")


def _report_args(p):
    p.add_argument("--model", required=True, help=".dcz file or qnet .npz")
    p.add_argument("--data", default=None, help="MNIST directory: also print the integer error")
    p.add_argument("--dense", default=None, help="dense checkpoint (for --png)")
    p.add_argument("--pruned", default=None, help="pruned checkpoint (for --png)")
    p.add_argument("--quantized", default=None, help="quantized checkpoint (for --png)")
    p.add_argument("--png", default=None, help="write the weight-distribution figure here")


@command("report", "per-layer size table (real streams), .dcz size, weight histograms")(
    _report_args)
def _report(args):
    from .. import dcz
    from ..data import load_split
    import numpy as np

    from ..qnet import load_qnet
    from ..report import format_table, plot_weights

    path = Path(args.model)
    if path.suffix == ".dcz":
        raw = dcz.read_file(path)
        qnet, size = dcz.unpack(raw), len(raw)
    else:
        qnet, size = load_qnet(path, index_bits=8), len(dcz.pack(load_qnet(path, index_bits=8)))
    unc = 4 * sum(l.index.size + l.bias.size for l in qnet.layers)
    print(format_table(dcz.layer_sizes(qnet), dcz_bytes=size, uncompressed_bytes=unc))
    if args.data:
        test = load_split("test", args.data)
        from ..golden import golden, mnist_to_input, predict

        y = golden(qnet, mnist_to_input(test.images, qnet.input_frac))
        print(f"integer test error (golden.golden, 32-bit accumulators, {len(test)} images): "
              f"{100.0 * float(np.mean(predict(y) != test.labels)):.2f}%")
    if args.png:
        from ..models import compressible_layers
        from ..train import load_checkpoint

        if not (args.dense and args.pruned and args.quantized):
            raise InputError("--png needs --dense, --pruned and --quantized checkpoints")
        d, p, q = (load_checkpoint(x) for x in (args.dense, args.pruned, args.quantized))

        def weights(ck):
            m = ck.model()
            return {n: mod.weight.detach().numpy() for n, mod in compressible_layers(m).items()}

        plot_weights(weights(d), weights(p), q.codebooks, q.indices, args.png, title=q.arch)
        print(f"wrote {args.png}")
