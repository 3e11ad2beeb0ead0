"""`python -m fpga`: build a bitstream, run inputs on a board (or the simulated board).

Exit status 0 on success, 2 with one line on stderr for a bad invocation or bad input
(`InputError`), 1 for anything else (a failed build prints the tool's reasons). FPGA_DEBUG=1
shows tracebacks.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from compress.errors import InputError, OneLineParser as _Parser, run_main
from compress.progress import step
from compress.shipped import BOARD_QNET, SHIPPED_QNET, SYNTHETIC, load_model, model_record
from images import check_pes, get, names, registered

from .boards import BOARDS, DEFAULT_BOARD, engine_params, get_board
from .flow.build import (DEFAULT_CLOCK_MHZ, BuildError, build, clock_help, default_clock_for,
                         default_clock_mhz, pll_range_mhz, table, time_budget_s)
from .flow.resources import (analyse, binding, board_image, check_board_kinds, default_pes,
                             fit_bound, fit_message, fits, format_analysis, what_fits)
from .gateware.uart import DEFAULT_BAUD, baud_divisor
from .host.runner import run_cli


def _for_board(args) -> bool:
    """With no --model: the network pruned for this board's engine (compress.pattern.BOARDS)
    where one is shipped, the default LeNet-300-100 elsewhere."""
    from compress.pattern import BOARDS as PRUNED_FOR

    return (getattr(args, "board", None) or DEFAULT_BOARD) in PRUNED_FOR


def _load_model(args):
    """(qnet, name): a network whose layer kinds args.engine runs (a conv qnet on the lockstep
    engine: one line, exit 2)."""
    qnet, name = load_model(args.model, board=_for_board(args))
    check_board_kinds(qnet, args.engine)
    return qnet, name


def _image(args):
    """(the board's image for args.engine and args.pes, qnet, model name)."""
    qnet, name = _load_model(args)
    check_pes(args.pes)
    with step(f"placing the rows of {name} over {args.pes} PEs ({args.engine} engine)"):
        return (board_image(qnet, args.engine, args.pes, spram=not args.no_spram,
                            board=getattr(args, "board", DEFAULT_BOARD)), qnet, name)


def _fit_first(args, qnet, name) -> dict:
    """The memories at their least, before any placement (fpga.flow.resources.fit_bound): a network
    that cannot fit is refused at once (exit 2) with what binds and what would fit."""
    board = getattr(args, "board", DEFAULT_BOARD)
    b = fit_bound(qnet, args.engine, args.pes, spram=not args.no_spram, board=board)
    if not fits(b):
        print(f"model: {name}\n{format_analysis(b)}")
        raise InputError(fit_message(qnet, b, what_fits(qnet, args.engine, args.pes,
                                                        spram=not args.no_spram, quick=False,
                                                        board=board)))
    return b


def _refuse(args, qnet, a, *, force_hint: bool):
    """InputError naming what binds and what would fit (the analysis `a` of the image)."""
    with step("finding what would fit"):
        advice = what_fits(qnet, args.engine, args.pes, spram=not args.no_spram,
                           board=getattr(args, "board", DEFAULT_BOARD))
    hint = (" (--force runs the tools anyway)"
            if force_hint and binding(a)["unit"] == "blocks" else "")
    raise InputError(fit_message(qnet, a, advice) + hint)


def _common(p, pes=True):
    default = BOARDS[DEFAULT_BOARD].engine
    p.add_argument("--model", help=f"qnet .npz (default: the shipped {BOARD_QNET.name}, the "
                   f"LeNet-300-100 pruned for the {DEFAULT_BOARD}'s engine, else "
                   f"{SHIPPED_QNET.name}; "
                   f"'{SYNTHETIC}' for a random LeNet-300-100, 'synthetic:784-32-10' for other "
                   f"sizes)")
    p.add_argument("--engine", choices=names(), default=None,
                   help="; ".join(f"{e.name}: {e.summary}" for e in registered())
                   + f" (default: the board's, {default} on the {DEFAULT_BOARD})")
    if pes:
        p.add_argument("--board", default=DEFAULT_BOARD,
                       help=f"board: {', '.join(BOARDS)} (default {DEFAULT_BOARD})")
        p.add_argument("--pes", type=int, default=None,
                       help="processing elements (default: the board's for its engine, 8 on "
                            "the iCEBreaker, 16 for the EIE engine on the ULX3S)")
    p.add_argument("--baud", type=int, default=None,
                   help=f"UART baud rate (default: the board's, {DEFAULT_BAUD:,} on the "
                        f"{DEFAULT_BOARD}; the board's clock must give it within 2%% with at "
                        f"least 8 clocks a bit)")


def check_clock(clock_mhz: float, board: str = DEFAULT_BOARD) -> None:
    """InputError unless the board's PLL can make `clock_mhz` (fpga.flow.build.pll_range_mhz)."""
    lo, hi = pll_range_mhz(board)
    fin = get_board(board).clock_hz / 1e6
    if not (math.isfinite(clock_mhz) and lo <= clock_mhz <= hi):
        raise InputError(f"--clock-mhz must be {lo:g}..{hi:g} (the PLL's range from {fin:g} "
                         f"MHz), not {clock_mhz:g}")


def check_baud(clock_mhz: float, baud: int, board: str = DEFAULT_BOARD) -> int:
    """The UART divisor at the PLL clock nearest `clock_mhz` on `board`; InputError for a bad
    baud."""
    b = get_board(board)
    try:
        return baud_divisor(b.fam.pll_config(b.clock_hz, clock_mhz * 1e6).fout, baud)
    except ValueError as e:
        raise InputError(f"--baud: {e}") from None


ISSUE_WIDTHS = (1, 2, 4)  # the EIE engine's front ends (images.eie.ISSUE_WIDTHS)


def check_issue_width_arg(width: int | None, engine: str) -> None:
    """InputError for an --issue-width the EIE engine has no front end for, or another engine."""
    if width is None:
        return
    if "issue_width" not in get(engine).params.names():
        raise InputError(f"--issue-width is the EIE engine's (--engine eie), not the {engine} "
                         f"engine's")
    if width not in ISSUE_WIDTHS:
        raise InputError(f"--issue-width must be 1, 2 or 4, not {width}")


def check_issue_width(img, params, board: str) -> None:
    """InputError when the board's engine cannot take the width asked for: four columns a
    cycle are the pipelined front end's (the ULX3S's) and read every pointer bank on four
    ports, which must fit the device's block RAMs; the pipelined front end sends two or four."""
    from .boards import _blocks

    w, b = params.issue_width, get_board(board)
    if w == 1 and params.pipelined:
        raise InputError(f"--issue-width 1: the {board}'s EIE engine has the pipelined front "
                         f"end, which sends 2 or 4 columns a cycle")
    if w == 4 and not params.pipelined:
        raise InputError(f"--issue-width 4 takes the pipelined front end (the ULX3S's, from 4 "
                         f"PEs), not the {board}'s engine at {img.pes} PEs")
    if w == 4 and _blocks(img, params, b) > b.budget.ebr:
        raise InputError(f"--issue-width 4: the pointer banks read on four ports need "
                         f"{_blocks(img, params, b)} block RAMs of the {b.device}'s "
                         f"{b.budget.ebr} (--issue-width 2 fits)")


def cmd_build(args):
    board = get_board(args.board)  # unknown board: one line, exit 2, before any work
    clock_given = args.clock_mhz is not None
    if args.clock_mhz is None:
        args.clock_mhz = default_clock_mhz(board.name)
    check_clock(args.clock_mhz, board.name)
    args.baud = args.baud or board.baud
    check_baud(args.clock_mhz, args.baud, board.name)  # before any work too
    args.engine = args.engine or board.engine
    check_issue_width_arg(args.issue_width, args.engine)
    budget = time_budget_s(board.name)
    if args.time_budget is not None:
        if not math.isfinite(args.time_budget) or args.time_budget < 0:
            raise InputError(f"--time-budget must be minutes >= 0 (0: no limit), not "
                             f"{args.time_budget!r}")
        budget = args.time_budget * 60 or None
    values = {} if args.queue_depth is None else {"queue_depth": args.queue_depth}
    if args.no_overlap:
        if "overlap" not in get(args.engine).params.names():
            raise InputError(f"--no-overlap: the {args.engine} engine has no overlap to switch "
                             f"off (the lockstep engine's layer 1 under layer 0's drain)")
        values["overlap"] = False
    if args.pes is None:  # the engine's PEs on this board (None: as many as fit)
        pes = get(args.engine).defaults_for(board.name, board.family).pes
        args.pes = "auto" if pes is None else str(pes)
    spram = not args.no_spram
    qnet, name = _load_model(args)
    if not clock_given:  # a CNN may have its own default clock on this engine
        args.clock_mhz = default_clock_for(board.name, args.engine, qnet)
        check_baud(args.clock_mhz, args.baud, board.name)
    img = a = None
    if args.pes == "auto":
        # The most PEs (8, 4, 2, 1) whose memories fit (the link and UART use no EBR): first
        # the bound from the non-zero counts, then the placed image.
        for pes in (8, 4, 2, 1):
            args.pes = pes
            b = fit_bound(qnet, args.engine, pes, spram=spram, board=board.name)
            if not fits(b) and pes > 1:
                print(f"{pes} PEs: the memories need at least {b['total_ebr']} EBR of "
                      f"{b['ebr_available']}, trying fewer")
                continue
            if not fits(b):
                break  # 1 PE: refused below with the bound's figures
            img, _qnet, name = _image(args)
            a = analyse(img, spram=spram, board=board.name)
            if fits(a):
                break
            print(f"{pes} PEs: the memories need {a['total_ebr']} EBR of "
                  f"{a['ebr_available']}, trying fewer")
    else:
        try:
            args.pes = int(args.pes)
        except ValueError:
            raise InputError(f"--pes must be a number or 'auto', not {args.pes!r}") from None
        check_pes(args.pes)
    if not args.force:
        _fit_first(args, qnet, name)  # seconds before any placement, before any tool
    if img is None or img.pes != args.pes:
        img, _qnet, name = _image(args)
        a = analyse(img, spram=spram, board=board.name)
    if not fits(a) and not args.force:
        # The engine's memories alone exceed the device: a 10-minute build would end in the
        # placer's "design uses N RAM cells" error. Say so at once, with the figures.
        print(f"model: {name}\n{format_analysis(a)}")
        _refuse(args, qnet, a, force_hint=True)
    if args.issue_width is not None:
        values["issue_width"] = args.issue_width
    params = engine_params(img, args.board, **values)
    if args.issue_width is not None:
        check_issue_width(img, params, board.name)
    try:
        report = build(img, board=args.board, clock_mhz=args.clock_mhz, baud=args.baud,
                       build_root=args.build_dir, seed=args.seed,
                       model=model_record(args.model, qnet, board=_for_board(args)),
                       spram=spram, retry=not args.no_retry, params=params,
                       time_budget=budget)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table(report))
    print(f"wrote {Path(args.build_dir) / args.board}/{report['bitstream']} and report.json")
    return 0


def cmd_resources(args):
    """The engine's memories against the default board's device with the board build's
    settings (the SPRAM plan
    unless --no-spram): exit 0 when they fit, 2 with what binds and what would fit when not."""
    _board_defaults(args)
    qnet, name = _load_model(args)
    check_pes(args.pes)
    _fit_first(args, qnet, name)
    img, _qnet, name = _image(args)
    a = analyse(img, spram=not args.no_spram, board=args.board)
    print(f"model: {name}")
    print(format_analysis(a))
    if not fits(a):
        _refuse(args, qnet, a, force_hint=False)
    return 0


def _board_defaults(args):
    """--engine and --pes not given: the board's engine and its PEs there (when the registry
    says 'as many as fit': the most of 8, 4, 2, 1 that fit the network)."""
    board = get_board(args.board)
    args.engine = args.engine or board.engine
    if getattr(args, "baud", 0) is None:
        args.baud = board.baud
    _default_pes(args)


def cmd_run(args):
    _board_defaults(args)
    return run_cli(args)


def _default_pes(args):
    """--pes not given: the board's for the engine, or the most that fit this network."""
    if args.pes is None:
        qnet, _name = _load_model(args)
        args.pes = default_pes(qnet, args.engine, args.board)


def build_parser():
    parser = _Parser(prog="python -m fpga", description="iCE40 board tops, bitstreams, host runner")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    b = sub.add_parser("build", help="build the bitstream and print resources and timing")
    b.add_argument("--board", default=DEFAULT_BOARD,
                   help=f"board: {', '.join(BOARDS)} (default {DEFAULT_BOARD})")
    b.add_argument("--pes", default=None,
                   help="processing elements, or 'auto': the most of 8, 4, 2, 1 that fit "
                        "(default 8 for the lockstep engine, auto for eie)")
    b.add_argument("--clock-mhz", type=float, default=None, help=clock_help())
    b.add_argument("--build-dir", default="build", help="build root (default build/)")
    b.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    b.add_argument("--queue-depth", type=int, default=None,
                   help="the engine's queue depth (default: the board's; eie 4: the queues are "
                        "flip-flops, and 8 of them do not leave room for 2 PEs on the UP5K)")
    b.add_argument("--issue-width", type=int, default=None,
                   help="non-zero columns the EIE engine's front end sends a cycle: 1, 2, or 4 "
                        "(the pipelined front end's: 2 or 4; default: the board's, four on the "
                        "ULX3S where the pointer banks' four read ports fit, else two)")
    b.add_argument("--no-retry", action="store_true",
                   help="keep the first result even when timing is not met (default: a miss "
                        "within 5%% is placed again at the next seed, then the design is rebuilt "
                        "at the fastest PLL clock under the fmax found)")
    b.add_argument("--no-spram", action="store_true",
                   help="every memory in EBR/logic with its initial contents (no weight load)")
    b.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="minutes one attempt's tools may run before it is stopped and placed "
                        "again at the next seed (default: the board's, 20 for iCE40, 60 for "
                        "ECP5; 0: no limit)")
    b.add_argument("--no-overlap", action="store_true",
                   help="lockstep engine: build it without layer 1 computing under layer 0's "
                        "drain (about 100 logic cells fewer, a few %% more cycles)")
    b.add_argument("--force", action="store_true",
                   help="run the tools even when the memories cannot fit the device")
    _common(b, pes=False)
    b.set_defaults(run=cmd_build)

    r = sub.add_parser("resources", help="the engine's memories against the board's budget")
    _common(r)
    r.add_argument("--no-spram", action="store_true",
                   help="every memory in EBR/logic, as fpga build --no-spram (default: the "
                        "build's plan, the four largest ROMs in SPRAM)")
    r.add_argument("--spram", action="store_true", help=argparse.SUPPRESS)  # the default now
    r.set_defaults(run=cmd_resources)

    h = sub.add_parser("run", help="stream inputs to a board (or the simulated board) and check "
                       "them against the golden model")
    h.add_argument("--port", help="serial port of the board, e.g. /dev/ttyUSB1")
    h.add_argument("--sim", action="store_true",
                   help="instead of a port: the board top in cocotb simulation")
    h.add_argument("--inputs", help="int16 [batch, in_0] .npy engine inputs (e.g. from python -m "
                   "compress encode-inputs); default: MNIST test digits, for a 784-input model")
    h.add_argument("--labels", help="integer [batch] .npy class labels of --inputs (optional)")
    h.add_argument("--count", type=int, default=None,
                   help="inputs to send (default: all of --inputs, or 100 MNIST digits)")
    h.add_argument("--data", help="MNIST IDX directory without --inputs (default $MNIST_DIR)")
    h.add_argument("--out", help="write the board's outputs, int16 [batch, out] .npy")
    h.add_argument("--clock-mhz", type=float, default=None,
                   help=f"clock for the throughput figure (default: the board's, from PING; "
                        f"with --sim the fpga build default, {DEFAULT_CLOCK_MHZ:g} MHz, not the "
                        f"simulation's 100 MHz bench clock)")
    h.add_argument("--timeout", type=float, default=None,
                   help="seconds a reply may take before it is given up, however many bytes "
                        "come meanwhile (default 5 with --port, 600 with --sim: a simulated "
                        "INFER frame takes minutes under load)")
    h.add_argument("--no-spram", action="store_true",
                   help="--sim: every memory initialised (no SPRAM, no weight load)")
    h.add_argument("--no-overlap", action="store_true",
                   help="--sim, lockstep engine: the engine `fpga build --no-overlap` builds "
                        "(layer 1 not under layer 0's drain)")
    _common(h)
    h.set_defaults(run=cmd_run)
    return parser


def main(argv=None) -> int:
    def body():
        args = build_parser().parse_args(argv)
        return args.run(args)

    return run_main(body, debug_env="FPGA_DEBUG")
