"""`python -m tb`: run networks on the RTL engine in cocotb simulation.

    python -m tb run   --model Q --inputs X.npy --out Y.npy [--pes N] [--stats S.json]
    python -m tb sim   [--model Q] [--inputs X.npy [--labels Y.npy]] [--pes N]  (`make sim`)
    python -m tb sweep [--model Q] [--pes N]         utilisation vs queue depth, rel_bits, placement
    python -m tb speed [--count N] [--pes N]         simulated cycles/s, Icarus beside Verilator
    python -m tb verify-mnist [ARGS...]              every MNIST test digit through the RTL
                                                     (tb/verify.py; `python -m tb verify-mnist -h`)

Exit status 0 on success, 2 with one line on stderr for a bad invocation or bad input
(including a network that does not fit the hardware parameters, refused before simulation),
1 for anything else (TB_DEBUG=1 shows the traceback). Outputs are written atomically.
`--sim icarus|verilator` picks the simulator of run, sim and sweep (default: $TB_SIM, else
Icarus; docs/simulators.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from compress import data
from compress.atomic import atomic_path, check_output, refuse_same_path, save_npy
from compress.errors import InputError, OneLineParser as _Parser, run_main
from compress.progress import step
from compress.qnet import load_inputs, load_labels, load_qnet
from compress.shipped import load_model
from compress.synthetic import random_inputs
from images import MAX_PES, SIM_ENGINE, build_image, check_pes, get, names, registered
from images.cli import add_image_args
from images.eie import ISSUE_WIDTHS, has_conv, parse_rel_bits
from images.engines import dense_baseline
from images.lockstep import DRAIN_SHARES

from . import sim as tbsim  # build and simulate through the module (tests stand in for them)
from .sim import SIMULATORS, SimResult, build_key, build_root, default_sim, sim_pool, waves_enabled
from .verilator import require
SIM_NAMES = {"icarus": "Icarus", "verilator": "Verilator"}
# the widest layer the simulated engines accept by default (the EIE paper's widest layers:
# 25,088 inputs, 8,791 outputs)
MAX_WIDTH = 32768
# tb sim's dense baseline makes every weight an entry: past this many weights (LeNet-300-100
# has 266,200) its Verilog and simulator build take minutes, so it is left out unless asked.
DENSE_BASELINE_MAX_WEIGHTS = 400_000
# and runs only this many inputs of such a network unless --count asks for more
BIG_NETWORK_COUNT = 5


def _hw_args(p, *, pes_default=8, engine=True):
    p.add_argument("--pes", type=int, default=pes_default,
                   help=f"processing elements 1..{MAX_PES}")
    p.add_argument("--queue-depth", type=int, default=None,
                   help="activation queue depth (default: the engine's, 8)")
    p.add_argument("--acc-bits", type=int, default=None,
                   help="accumulator width (default: the engine's, 32)")
    add_image_args(p, rel_bits_help="relative row index bits 1..12, auto (default: the EIE "
                                    "image's smallest entry memories; 4 for the lockstep "
                                    "engine) or fast (EIE engine: the fewest cycles by "
                                    "entries)")
    if engine:
        p.add_argument("--engine", choices=names(), default=SIM_ENGINE,
                       help="; ".join(f"{e.name}: {e.summary}" for e in registered())
                       + f" (default {SIM_ENGINE})")
        p.add_argument("--sim", choices=SIMULATORS, default=None,
                       help="simulator: icarus (default, or $TB_SIM) or verilator (a 30-70 s "
                            "build, then several times faster; docs/simulators.md)")
    p.add_argument("--drain-share", type=int, default=None,
                   help="lockstep: PEs per output stage, 1/2/4/8/16 (default: the engine's, 1)")
    p.add_argument("--issue-width", type=int, default=None,
                   help="eie: non-zero columns the front end sends a cycle, 1, 2 or 4 (default: "
                        "the engine's, 2 from 4 PEs; 4 with --pipelined only)")
    p.add_argument("--pipelined", action="store_true",
                   help="eie: the pipelined front end (the ULX3S's; two or four columns a "
                        "cycle: docs/engine.md 'The pipelined front end')")
    p.add_argument("--no-overlap", action="store_true",
                   help="lockstep: the engine without layer 1 computing under layer 0's drain "
                        "(drain_share 2; what `fpga build --no-overlap` builds)")
    p.add_argument("--one-map", action="store_true",
                   help="lockstep, a network with conv layers: the board's layout (every map "
                        "in one RAM read a value a cycle, the slot word in 16-bit lanes, "
                        "rel_bits auto as on the board; docs/lockstep.md 'On the board')")
    p.add_argument("--max-width", type=int, default=MAX_WIDTH,
                   help=f"activation buffer limit: widest layer the engine accepts "
                        f"({MAX_WIDTH:,}: VGG-16's fc6 has 25,088 inputs)")


def _model_args(p, inputs: str):
    p.add_argument("--model", help="qnet .npz (default: the shipped LeNet-300-100)")
    p.add_argument("--inputs", help=f"int16[batch, in_0] .npy (default: {inputs})")


def _engine_defaults(args, engine: str | None = None) -> None:
    """The engine parameters not given on the command line: the engine's for the RTL benches
    (`images.engines`, "sim")."""
    d = get(engine or getattr(args, "engine", SIM_ENGINE)).defaults_for().params.as_dict()
    for name in ("queue_depth", "acc_bits", "drain_share"):
        if getattr(args, name) is None:
            setattr(args, name, d.get(name, 1))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m tb", description="the EIE engine in cocotb simulation")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    p = sub.add_parser("run", help="run a qnet on the RTL engine, write its outputs")
    p.add_argument("--model", required=True, help="qnet .npz")
    p.add_argument("--inputs", required=True, help="int16[batch, in_0] .npy")
    p.add_argument("--out", required=True, help="int16[batch, out] .npy the hardware produced")
    p.add_argument("--stats", help="JSON with the cycle counts")
    p.add_argument("--dense", action="store_true", help="the dense baseline engine")
    p.add_argument("--count", type=int, default=None,
                   help="run only the first N inputs (default: all; the simulator takes about "
                        "half a second per input for a small network)")
    _hw_args(p)
    p = sub.add_parser("sim", help="the embedded default (or a given network) on the engine")
    _model_args(p, "the sample MNIST digits")
    p.add_argument("--labels", help="integer [batch] .npy class labels for --inputs (optional)")
    p.add_argument("--count", type=int, default=None,
                   help="inputs to run (default: the first 20 sample digits; all of --inputs; "
                        f"at most {BIG_NETWORK_COUNT} for a network of more than "
                        f"{DENSE_BASELINE_MAX_WEIGHTS:,} weights)")
    p.add_argument("--dense-count", type=int, default=None,
                   help="inputs for the dense baseline (its cycle count does not depend on "
                        "data); 0: no dense baseline (default 1, or 0 for a network of more "
                        f"than {DENSE_BASELINE_MAX_WEIGHTS:,} weights: every weight a ROM word)")
    _hw_args(p)
    p = sub.add_parser("sweep", help="utilisation vs queue depth, rel_bits and row placement, "
                       "dense speedup")
    _model_args(p, "the sample digits")
    p.add_argument("--count", type=int, default=10, help="inputs per configuration (10)")
    p.add_argument("--depths", default="1,2,4,8,16", help="queue depths (1,2,4,8,16)")
    p.add_argument("--rel-bits-list", default="4,5,6,8", help="rel_bits values (4,5,6,8)")
    p.add_argument("--out", help="write the figures as JSON")
    _hw_args(p)
    p = sub.add_parser("speed", help="simulated engine cycles per second of each simulator, "
                       "side by side on the same network and inputs")
    _model_args(p, "the sample digits")
    p.add_argument("--count", type=int, default=50, help="inputs per run (50)")
    p.add_argument("--engines", default=",".join(names()),
                   help=f"engines ({','.join(names())})")
    p.add_argument("--sims", default=",".join(SIMULATORS),
                   help="simulators, in this order (icarus,verilator)")
    p.add_argument("--out", help="write the figures as JSON")
    _hw_args(p, engine=False)
    # dispatched in main() before parsing (tb/verify.py has its own parser); listed for --help
    sub.add_parser("verify-mnist", add_help=False,
                   help="every MNIST test digit through the RTL engine, bit-exact "
                        "(`python -m tb verify-mnist -h`)")
    return parser


# ---------------------------------------------------------------------------------------------


def load_model_and_inputs(model, inputs, index_bits, labels_path=None):
    """(qnet, x, labels or None, description lines, mnist: the inputs are MNIST digits).

    The model as `compress.shipped.load_model` reads it (None: the shipped LeNet-300-100);
    the inputs from `inputs`, else the shipped sample digits (else $MNIST_DIR's, else
    synthetic vectors)."""
    from compress.golden import mnist_to_input

    qnet, name = load_model(model, index_bits=index_bits)
    notes = [f"model: {name}" if model or not name.startswith("synthetic")
             else f"model: SYNTHETIC {name}"]
    labels = None
    mnist = False
    if labels_path and not inputs:
        raise InputError("--labels needs --inputs (the sample digits come with their labels)")
    if inputs:
        x = load_inputs(inputs, qnet.in_features)
        notes.append(f"inputs: {inputs}")
        if labels_path:
            labels = load_labels(labels_path, len(x), classes=qnet.out_features)
            notes.append(f"labels: {labels_path}")
    else:
        if qnet.in_features != 784:
            raise InputError(f"the sample digits have 784 pixels but the model takes "
                             f"{qnet.in_features} inputs: pass --inputs")
        try:
            sample = data.load_sample()
            x = mnist_to_input(sample.images, qnet.input_frac)
            labels = sample.labels.astype(np.int64)
            mnist = True
            notes.append(f"inputs: the {len(x)} sample digits ({data.SAMPLE_PATH.name})")
        except InputError:
            try:
                test = data.load_split("test")
                x = mnist_to_input(test.images[:100], qnet.input_frac)
                labels = test.labels[:100].astype(np.int64)
                mnist = True
                notes.append("inputs: first 100 MNIST test digits from $MNIST_DIR (the shipped "
                             "sample digits do not exist yet)")
            except InputError:
                x = random_inputs(100, 784, seed=1, density=0.19)
                notes.append("inputs: SYNTHETIC MNIST-like vectors (19% non-zero): no sample "
                             "digits and no $MNIST_DIR")
    return qnet, x, labels, notes, mnist


def _rom(qnet, args, rel_bits=None, balance=None):
    """The dense baseline engine's image (the EIE engine's: also the analysis' for every
    engine)."""
    with step(f"EIE image: placing the rows over {args.pes} PEs"):
        rom = build_image(qnet, dense_baseline().name, args.pes, index_bits=args.index_bits,
                          rel_bits=args.rel_bits if rel_bits is None else rel_bits,
                          balance=args.balance if balance is None else balance)
    return _fits(rom, args)


def _analysis_rom(qnet, args, engine: str | None = None):
    """The dense baseline engine's image for `engine` (default args.engine): the engine's own
    when it is that engine; else one built without placement (its `unplaced` options: the
    dense engine's cycles and the useful-MAC count do not depend on the placement), made in
    milliseconds instead of the placement's seconds."""
    base = dense_baseline()
    if get(engine or args.engine) is base:
        return _rom(qnet, args)
    return _rom(qnet, args, **base.unplaced)


def _image(qnet, args, rom, rel_bits=None):
    """The image of args.engine: `rom` itself when it is one, else built from the qnet (same
    PEs and index_bits as `rom`; rel_bits: the given one, else --rel-bits, where auto is the
    engine's own choice)."""
    rb = args.rel_bits if rel_bits is None else rel_bits
    extra = {}
    if getattr(args, "one_map", False):
        # the engine's own board layout (`Engine.board_options`): the lockstep engine's for a CNN
        rec = get(args.engine)
        opts = (rec.board_options(qnet, rom.pes, index_bits=rom.index_bits)
                if rec.board_options else {})
        if not opts.get("one_map"):
            raise InputError("--one-map is the lockstep engine's layout of a network with conv "
                             "layers")
        extra["one_map"] = True
        if parse_rel_bits(rb) == "auto":
            rb = opts["rel_bits"]
    if isinstance(rom, get(args.engine).image_type):
        return rom
    with step(f"{args.engine} image: placing the rows over {rom.pes} PEs"):
        img = build_image(qnet, args.engine, rom.pes, index_bits=rom.index_bits, rel_bits=rb,
                          **extra)
    return _fits(img, args)


def _fits(img, args):
    from hw import EngineConfigError, check_fits

    try:
        check_fits(img, acc_bits=args.acc_bits, max_width=args.max_width)
    except EngineConfigError as e:
        raise InputError(str(e)) from None
    return img


def _params(args, *, sparse=True, queue_depth=None, loadable=False):
    """The parameters of args.engine (sparse), or of the dense baseline engine (sparse=False);
    loadable: an engine whose memories are filled at run time, built by shape (for an engine
    that has the choice: the EIE engine)."""
    if not 1 <= args.queue_depth <= 64:
        raise InputError(f"--queue-depth must be 1..64, not {args.queue_depth!r}")
    rec = get(args.engine) if sparse else dense_baseline()
    if "drain_share" in rec.params.names() and args.drain_share not in DRAIN_SHARES:
        raise InputError(f"--drain-share must be 1, 2, 4, 8 or 16, not {args.drain_share!r}")
    width, pipelined = getattr(args, "issue_width", None), getattr(args, "pipelined", False)
    front = {}
    if width is not None or pipelined:
        if "issue_width" not in rec.params.names():
            raise InputError(f"--issue-width and --pipelined are the EIE engine's, not the "
                             f"{rec.name} engine's")
        if width is not None and width not in ISSUE_WIDTHS:
            raise InputError(f"--issue-width must be 1, 2 or 4, not {width!r}")
        if pipelined and width == 1 or width == 4 and not pipelined:
            raise InputError("the pipelined front end sends 2 or 4 columns a cycle, and 4 "
                             "only the pipelined one (--issue-width 4 --pipelined)")
        if sparse:  # the dense baseline keeps its own front end
            front = {"issue_width": width, "pipelined": pipelined}
    if getattr(args, "no_overlap", False) and sparse and "overlap" not in rec.params.names():
        raise InputError(f"--no-overlap: the {rec.name} engine has no overlap to switch off "
                         f"(the lockstep engine's layer 1 under layer 0's drain)")
    return rec.params_for(queue_depth=args.queue_depth if queue_depth is None else queue_depth,
                          acc_bits=args.acc_bits, sparse=sparse, max_width=args.max_width,
                          drain_share=args.drain_share, loadable=loadable, **front,
                          **({"overlap": False} if getattr(args, "no_overlap", False) else {}))


def _sim(args) -> str:
    """The simulator of this command (--sim, else $TB_SIM, else Icarus), checked up front: a
    bad $TB_SIM or a missing Verilator is one line before any work."""
    sim = args.sim or default_sim()
    if sim == "verilator":
        require()
    args.sim = sim
    return sim


def _shards(x, k):
    idx = np.array_split(np.arange(len(x)), k)
    return [i for i in idx if len(i)]


def _simulate_parallel(b, x, jobs=2):
    """Simulate x in up to `jobs` simulator processes at once; results in input order."""
    parts = _shards(x, jobs)
    with sim_pool(jobs) as ex:
        res = list(ex.map(lambda i: tbsim.simulate(b, x[i]), parts))
    return SimResult(
        outputs=np.concatenate([r.outputs for r in res]),
        cycles=np.concatenate([r.cycles for r in res]),
        layer_cycles=np.concatenate([r.layer_cycles for r in res]),
    )


def cmd_run(args):
    refuse_same_path(args.out, args.model, args.inputs)
    refuse_same_path(args.stats, args.model, args.inputs, what="--stats")
    if args.stats and Path(args.stats).resolve() == Path(args.out).resolve():
        raise InputError(f"--out and --stats are the same file: {args.out}")
    check_output(args.out)
    check_output(args.stats, "--stats")
    _sim(args)
    jobs = os.environ.get("TB_JOBS", "2")
    if not jobs.isdigit() or not 1 <= int(jobs) <= 64:
        raise InputError(f"TB_JOBS must be a number 1..64, not {jobs!r}")
    qnet = load_qnet(args.model, index_bits=args.index_bits)
    x = load_inputs(args.inputs, qnet.in_features)
    if args.count is not None:
        if args.count < 1:
            raise InputError(f"--count must be >= 1, not {args.count}")
        x = x[: args.count]
    if args.dense and not get(args.engine).has_dense:
        base = dense_baseline()
        raise InputError(f"--dense is the {base.title(base.params())}'s baseline: not with "
                         f"--engine {args.engine}")
    rom = _analysis_rom(qnet, args)
    img = _image(qnet, args, rom)
    # memories filled when the simulation starts: the Verilog and the compiled simulator are
    # those of the engine's shape, reused by every network of that shape (fully connected
    # networks: the loadable engine has no conv layers yet, a CNN gets the fixed engine)
    params = _params(args, sparse=not args.dense, loadable=not has_conv(img))
    with step(f"building the engine's Verilog for {SIM_NAMES[args.sim]}"):
        b = tbsim.build(img, params, sim=args.sim)
    print(f"simulating {len(x)} inputs on the RTL engine ({args.pes} PEs, "
          f"{SIM_NAMES[b.sim]})", flush=True)
    with step(f"simulating {len(x)} inputs"):
        r = _simulate_parallel(b, x, jobs=int(jobs))
    if args.stats:
        stats = {
            "pes": args.pes,
            "cycles": [int(c) for c in r.cycles],
            "layer_cycles": [[int(c) for c in row] for row in r.layer_cycles],
            "engine": "dense" if args.dense else "sparse",
            "design": args.engine,
            "simulator": b.sim,
            "queue_depth": params.queue_depth, "acc_bits": args.acc_bits,
            "index_bits": args.index_bits, "rel_bits": img.rel_bits,
            "balanced": args.balance,
        }
        with atomic_path(args.stats, what="--stats") as tmp:
            tmp.write_text(json.dumps(stats, indent=1) + "\n")
    save_npy(args.out, r.outputs)
    print(f"wrote {args.out}: {len(x)} inputs, {args.pes} PEs, "
          f"mean {r.cycles.mean():.0f} cycles per inference")


def _cycles(n: int) -> str:
    return f"{n} cycle" + ("" if n == 1 else "s")


def cmd_sim(args):
    from compress.golden import golden, predict
    from tb.analysis import report

    _sim(args)
    t0 = time.time()
    qnet, x, labels, notes, mnist = load_model_and_inputs(args.model, args.inputs,
                                                          args.index_bits, args.labels)
    noun = "digit" if mnist else "input"
    weights = sum(layer.index.size for layer in qnet.layers)
    big = weights > DENSE_BASELINE_MAX_WEIGHTS
    if args.count is not None:
        count = args.count
    else:  # all of --inputs, else 20 sample digits; a large network: the first few
        count = len(x) if args.inputs else 20
        if big and count > BIG_NETWORK_COUNT:
            count = BIG_NETWORK_COUNT
            notes.append(f"the first {count} {noun}s only: {weights:,} weights take seconds "
                         "an input in simulation (--count N for more)")
    if count < 1:
        raise InputError(f"--count must be >= 1, not {count}")
    if args.dense_count is None:
        args.dense_count = 0 if big else 1
        if not args.dense_count:
            notes.append(f"dense baseline left out: {weights:,} weights would each be a ROM "
                         "word (--dense-count 1 runs it)")
    if args.dense_count < 0:
        raise InputError(f"--dense-count must be >= 0, not {args.dense_count}")
    full_x, full_labels = x, labels
    x = x[:count]
    labels = labels[:count] if labels is not None else None
    rom = _analysis_rom(qnet, args)
    img = _image(qnet, args, rom)
    p_sparse, p_dense = _params(args), _params(args, sparse=False)
    with step(f"building the engines' Verilog for {SIM_NAMES[args.sim]}"), sim_pool(2) as ex:
        fb_s = ex.submit(tbsim.build, img, p_sparse, sim=args.sim)
        fb_d = ex.submit(tbsim.build, rom, p_dense, sim=args.sim) if args.dense_count else None
        b_s = fb_s.result()
        b_d = fb_d.result() if fb_d else None
    t_build = time.time() - t0
    nd = max(1, min(args.dense_count, len(x))) if b_d else 0
    with step(f"simulating {len(x)} inputs"), sim_pool(1) as ex:
        # two simulators at once, one per core: the dense baseline (one long run) and the
        # sparse engine over all the inputs
        f_d = ex.submit(tbsim.simulate, b_d, x[:nd]) if b_d else None
        r = tbsim.simulate(b_s, x)
        rd = f_d.result() if f_d else None
    t_sim = time.time() - t0 - t_build
    g = golden(qnet, x, acc_bits=args.acc_bits)
    gd = g[:nd]
    exact = np.all(r.outputs == g, axis=1)
    pred = predict(r.outputs)
    gpred = predict(g)
    L = qnet.num_layers

    print(f"{get(args.engine).title(p_sparse)} in cocotb + {SIM_NAMES[b_s.sim]}: "
          f"{args.pes} PEs, queue depth {p_sparse.queue_depth}, index_bits {args.index_bits}, "
          f"rel_bits {img.rel_bits}, acc_bits {args.acc_bits}, rows "
          f"{'balanced' if args.balance else 'interleaved'}")
    for line in notes:
        print("  " + line)
    print()
    print(f"{noun}  label  predicted  golden  cycles")
    for i in range(len(x)):
        lab = str(int(labels[i])) if labels is not None else "-"
        mark = "" if exact[i] else "   MISMATCH"
        print(f"{i:{len(noun)}d}  {lab:>5}  {int(pred[i]):9d}  {int(gpred[i]):6d}  "
              f"{int(r.cycles[i]):6d}{mark}")
    print()
    dense_ok = rd is None or bool(np.all(rd.outputs == gd))
    print(f"bit-exact: {int(exact.sum())}/{len(x)} against the golden model"
          + (f" (dense baseline: {int(np.all(rd.outputs == gd, axis=1).sum())}/{nd} bit-exact)"
             if rd is not None else ""))
    if labels is not None:
        acc = float((pred == labels).mean())
        synthetic = any(n.startswith("model: SYNTHETIC") for n in notes)
        where = "the sample" if mnist else "these inputs"
        print(f"accuracy on {where}: {int((pred == labels).sum())}/{len(x)} = {100 * acc:.1f}% "
              f"on the engine" + ("  (synthetic network: labels are not meaningful)"
                                  if synthetic else ""))
        if full_labels is not None and len(full_labels) > len(x):
            full_pred = predict(golden(qnet, full_x, acc_bits=args.acc_bits))
            ga = float((full_pred == full_labels).mean())
            what = "sample digits" if mnist else "inputs"
            print(f"  (golden model on all {len(full_labels)} {what}: {100 * ga:.1f}%; "
                  f"--count {len(full_labels)} runs them all on the engine)")
    comp = r.layer_cycles.sum(axis=1)
    print(f"cycles per inference: mean {r.cycles.mean():.1f} (min {r.cycles.min()}, "
          f"max {r.cycles.max()}), of which compute {comp.mean():.1f}; "
          f"the rest is {_cycles(qnet.in_features)} of input and {qnet.out_features} of output")
    print("cycles per layer (mean): " + ", ".join(
        f"l{i} {r.layer_cycles[:, i].mean():.1f}" for i in range(L)))
    if rd is not None:
        comp_d = rd.layer_cycles.sum(axis=1)
        print(f"dense baseline engine: {rd.cycles.mean():.0f} cycles per inference, "
              f"{comp_d.mean():.0f} compute; speedup of sparsity "
              f"{comp_d.mean() / comp.mean():.2f}x on compute cycles, "
              f"{rd.cycles.mean() / r.cycles.mean():.2f}x per inference")
    for line in report(qnet, rom, img, x, r.layer_cycles, args.acc_bits,
                       getattr(p_sparse, "issue_width", None)):
        print(line)
    print()
    print(f"wall time {time.time() - t0:.1f} s (builds {t_build:.1f} s, simulation {t_sim:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    return 0 if exact.all() and dense_ok else 1


def _int_list(text: str, what: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4]; InputError (one line) for anything else."""
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if not vals:
        raise InputError(f"{what}: expected comma-separated integers, not {text!r}")
    return vals


def cmd_sweep(args):
    from tb.analysis import utilisation  # torch: the golden model

    refuse_same_path(args.out, args.model, args.inputs)
    check_output(args.out)  # before the sweep, not after it
    depths = _int_list(args.depths, "--depths")
    _sim(args)
    t0 = time.time()
    qnet, x, _labels, notes, _mnist = load_model_and_inputs(args.model, args.inputs,
                                                            args.index_bits)
    if args.count < 1:
        raise InputError(f"--count must be >= 1, not {args.count}")
    x = x[: args.count]
    rels = [parse_rel_bits(v) for v in args.rel_bits_list.split(",")]
    if any(isinstance(rb, str) for rb in rels):
        raise InputError("--rel-bits-list takes integers 1..12 (--rel-bits may be auto or fast)")
    rb0 = parse_rel_bits(args.rel_bits)  # the base of the sweep, resolved for the engine
    if isinstance(rb0, str):
        rb0 = _image(qnet, args, _rom(qnet, args)).rel_bits
    # (variant, queue depth, rel_bits, sparse, balanced rows)
    bal = args.balance
    configs = [("depth", d, rb0, True, bal) for d in depths]
    configs += [("rel_bits", args.queue_depth, rb, True, bal) for rb in rels if rb != rb0]
    configs += [("no-balance" if bal else "balance", args.queue_depth, rb0, True, not bal)]
    configs += [("dense", args.queue_depth, rb0, False, bal)]
    roms = {(rb, b): _rom(qnet, args, rel_bits=rb, balance=b)
            for rb, b in {(c[2], c[4]) for c in configs}}

    def one(cfg):
        _kind, depth, rb, sparse, b_ = cfg
        img = _image(qnet, args, roms[rb, b_], rel_bits=rb) if sparse else roms[rb, b_]
        b = tbsim.build(img, _params(args, sparse=sparse, queue_depth=depth), sim=args.sim)
        r = tbsim.simulate(b, x if sparse else x[:1])
        return r

    with sim_pool(2) as ex:
        results = list(ex.map(one, configs))
    dense_comp = results[-1].layer_cycles.sum(axis=1).mean()
    print(f"sweep: {args.pes} PEs, {len(x)} inputs, {SIM_NAMES[args.sim]}; " + "; ".join(notes))
    print("variant           rel_bits depth  rows         entries(fillers)  compute-cycles  "
          "utilisation  ideal  speedup-vs-dense")
    rows = []
    for cfg, r in zip(configs, results):
        kind, depth, rb, sparse, b_ = cfg
        rom = roms[rb, b_]
        comp = r.layer_cycles.sum(axis=1).mean()
        util, ideal = utilisation(qnet, rom, x[: len(r.cycles)], r.layer_cycles, args.acc_bits)
        ents = sum(len(e) for e in rom.entries)
        fill = sum(sum(rl.fillers) for rl in rom.layers)
        row = {"variant": kind, "rel_bits": rb, "queue_depth": depth, "sparse": sparse,
               "balanced": b_, "entries": ents, "fillers": fill, "compute_cycles": float(comp),
               "cycles": float(r.cycles.mean()), "utilisation": util, "ideal": ideal,
               "speedup_vs_dense": float(dense_comp / comp)}
        rows.append(row)
        place = "balanced" if b_ else "interleaved"
        print(f"{kind:16s}  {rb:8d} {depth:5d}  {place:11s}  {ents:8d}({fill:6d})  {comp:14.1f}  "
              f"{100 * util:10.1f}%  {100 * ideal:5.1f}%  {dense_comp / comp:8.2f}x")
    print(f"wall time {time.time() - t0:.1f} s")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({"pes": args.pes, "inputs": len(x), "simulator": args.sim,
                                       "rows": rows},
                                      indent=1) + "\n")


def _list(text: str, allowed, what: str) -> list[str]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items or len(set(items)) != len(items):
        raise InputError(f"{what} must be distinct names from {', '.join(allowed)}, "
                         f"not {text!r}")
    return items


def cmd_speed(args):
    """Simulated engine cycles per second of each simulator, measured one after the other on
    the same network, inputs and parameters; every run checked against the golden model and
    the simulators against each other (outputs, cycles and per-layer cycles)."""
    from compress.golden import golden  # torch

    refuse_same_path(args.out, args.model, args.inputs)
    check_output(args.out)
    sims = _list(args.sims, SIMULATORS, "--sims")
    engines = _list(args.engines, names(), "--engines")
    if "verilator" in sims:
        require()
    if args.count < 2:
        raise InputError(f"--count must be >= 2, not {args.count}")
    qnet, x, _labels, notes, _mnist = load_model_and_inputs(args.model, args.inputs,
                                                            args.index_bits)
    x = x[: args.count]
    want = golden(qnet, x, acc_bits=args.acc_bits)
    load0 = os.getloadavg()[0]
    rows, ok = [], True
    print(f"simulated engine cycles per second: {args.pes} PEs, {len(x)} inputs per run; "
          + "; ".join(notes))
    print("engine    simulator  build-s  cached  start-up-s  run-s  cycles     cycles/s  "
          "cycles/s-after-start-up  bit-exact  same-as-first")
    for engine in engines:
        args.engine = engine
        img = _image(qnet, args, _analysis_rom(qnet, args))
        params = _params(args)
        first = None
        for sim in sims:
            stamp = (build_root() / build_key(img, params, waves_enabled(), sim) / "sim_build"
                     / ".built")
            cached = stamp.exists()
            t = time.perf_counter()
            b = tbsim.build(img, params, sim=sim)
            t_build = time.perf_counter() - t
            # one input alone: the fixed cost of a run (simulator and Python start-up, reset)
            t = time.perf_counter()
            r1 = tbsim.simulate(b, x[:1])
            t_one = time.perf_counter() - t
            t = time.perf_counter()
            r = tbsim.simulate(b, x)
            t_run = time.perf_counter() - t
            cycles = int(r.cycles.sum())
            extra = cycles - int(r1.cycles.sum())
            exact = int(np.all(r.outputs == want, axis=1).sum())
            same = first is None or all(
                np.array_equal(getattr(r, f), getattr(first, f))
                for f in ("outputs", "cycles", "layer_cycles"))
            first = r if first is None else first
            ok &= exact == len(x) and same
            row = {"engine": engine, "simulator": sim, "build_s": t_build, "cached": cached,
                   "one_input_s": t_one, "run_s": t_run, "inputs": len(x), "cycles": cycles,
                   "cycles_per_s": cycles / t_run,
                   # the run's cycles beyond the one-input run's, over the time beyond it
                   "cycles_per_s_after_startup": extra / max(t_run - t_one, 1e-9),
                   "bit_exact": exact, "same_as_first": bool(same)}
            rows.append(row)
            print(f"{engine:8s}  {sim:9s}  {t_build:7.1f}  {'yes' if cached else 'no':6s}  "
                  f"{t_one:10.1f}  {t_run:5.1f}  {cycles:9,d}  {row['cycles_per_s']:8,.0f}  "
                  f"{row['cycles_per_s_after_startup']:23,.0f}  {exact:4d}/{len(x):<4d}  "
                  f"{'yes' if same else 'NO'}")
    for engine in engines:
        per = {r["simulator"]: r for r in rows if r["engine"] == engine}
        base = per[sims[0]]
        for sim in sims[1:]:
            ratio = {k: per[sim][k] / base[k]
                     for k in ("cycles_per_s", "cycles_per_s_after_startup")}
            print(f"{engine}: {sim} / {sims[0]} = {ratio['cycles_per_s']:.1f}x per run, "
                  f"{ratio['cycles_per_s_after_startup']:.1f}x after start-up")
    load1 = os.getloadavg()[0]
    print(f"load average {load0:.1f} at the start, {load1:.1f} at the end, on {os.cpu_count()} "
          "CPUs (the runs take turns: one simulator at a time)")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({"pes": args.pes, "inputs": len(x), "notes": notes,
                                       "load_average": [load0, load1], "rows": rows},
                                      indent=1) + "\n")
    return 0 if ok else 1


COMMANDS = {"run": cmd_run, "sim": cmd_sim, "sweep": cmd_sweep, "speed": cmd_speed}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify-mnist"]:
        # imported only here: tb.verify brings its own parser and its own exit statuses
        try:
            import importlib

            verify = importlib.import_module("tb.verify")
        except ModuleNotFoundError as e:
            if e.name != "tb.verify":
                raise
            print("error: verify-mnist is not part of this checkout (no tb/verify.py)",
                  file=sys.stderr)
            return 2
        return verify.main(argv[1:])

    def body():
        args = build_parser().parse_args(argv)
        check_pes(args.pes)
        _engine_defaults(args)
        return COMMANDS[args.cmd](args)

    return run_main(body, debug_env="TB_DEBUG")
