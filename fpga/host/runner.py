"""`python -m fpga run`: inputs streamed to the board (or the simulated board), answers checked.

`run_inputs` streams engine inputs (int16 [batch, in_0], any network the board runs) through a
`Board` (fpga/host/client.py), compares every answer with the golden model and the label, and
gathers the on-chip cycle counters. `summary` reports throughput at the clock the bitstream
runs at: the clock a real board reports in PING, or for the simulated board (whose bench clock
is 100 MHz) the board's PLL clock that `fpga build` uses by default; cycle counts do not depend
on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from compress.errors import InputError
from compress.atomic import check_output, refuse_same_path, save_npy
from compress.data import load_split
from compress.progress import step
from compress.qnet import load_inputs, load_labels
from compress.shipped import load_model
from images import check_pes, engine_of, get

from .. import protocol as P
from ..boards import engine_params
from ..flow.bench import simulated_board
from ..flow.build import default_clock_for
from ..flow.resources import board_image, check_board_fit, check_board_kinds
from ..gateware.uart import baud_divisor
from .client import Board, SerialTransport


@dataclass
class RunStats:
    n: int = 0
    correct: int = 0  # prediction == label
    agree: int = 0  # prediction == golden prediction
    exact: int = 0  # output vector == golden output vector, bit for bit
    cycles: list[int] = field(default_factory=list)
    layer_cycles: list[list[int]] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0  # wall clock of the stream (first request written -> last reply read)
    request_bytes: int = 0  # PACKED frames of the stream, one each (no resends)
    reply_bytes: int = 0  # their replies
    stream_bytes: tuple[int, int, int, int] = (0, 0, 0, 0)  # Board byte counts before, after
    load_bytes: tuple[int, int, int, int] | None = None  # the same for the weight load
    load_seconds: float = 0.0  # wall clock of the weight load
    useful_macs: int = 0  # (non-zero weight, non-zero activation) pairs of the inputs run
    pes: int = 0  # the engine's PEs (for MAC utilisation)


def line_rate(stats: RunStats, baud: int) -> float:
    """Inferences/s the UART allows, from frame bytes and baud: requests and replies travel on
    separate wires at once, so the longer of the two per inference (10 bits a byte)."""
    per = max(stats.request_bytes, stats.reply_bytes) / max(stats.n, 1)
    return baud / (10 * per)


def sim_span(counts, times: dict, clock_hz: float) -> float | None:
    """Seconds at `clock_hz` on the simulated board from the first byte written (Board byte
    counts `counts` = out0, out1, in0, in1) starting on rx to the last byte read ending on tx
    (`simulated_board`'s `times`, in the board's clock cycles)."""
    out0, _out1, _in0, in1 = counts
    try:
        span = times["tx_end"][in1 - 1] - times["rx_start"][out0]
    except (IndexError, KeyError, TypeError):
        return None
    return span / clock_hz if span > 0 else None


def sim_rate(stats: RunStats, times: dict, clock_hz: float) -> float | None:
    """Inferences/s end to end on the simulated board, in its own clock cycles: from the first
    stream byte starting on rx to the last reply byte ending on tx (`simulated_board` times)."""
    t = sim_span(stats.stream_bytes, times, clock_hz)
    return stats.n / t if t else None


def run_inputs(board: Board, qnet, x: np.ndarray, labels: np.ndarray | None, *,
               progress: bool = True, rom=None, noun: str = "input") -> RunStats:
    """Stream x through the board; if it reports its weights not loaded, load `rom` first.

    `rom` is the image (of a registered engine) the board's weights are cut from.
    """
    from compress.golden import golden, predict

    info = board.ping()
    if not info.loaded:
        if rom is None:
            raise InputError("the board's weights are not loaded and no ROM image was given")
        engine = engine_of(rom).name
        if (engine, rom.pes) != (info.engine, info.pes):
            raise InputError(f"the board runs the {info.engine} engine with {info.pes} PEs, the "
                             f"ROM image is for the {engine} engine with {rom.pes}")
        counts = (board.bytes_out, board.bytes_in)
        t0 = time.monotonic()
        board.load(rom, progress=progress)
        load_seconds = time.monotonic() - t0
        load_bytes = (counts[0], board.bytes_out, counts[1], board.bytes_in)
        info = board.ping()
    else:
        load_seconds, load_bytes = 0.0, None
    if info.in_features != qnet.in_features or info.out_features != qnet.out_features:
        raise InputError(f"the board runs a {info.in_features} -> {info.out_features} network, "
                         f"the model is {qnet.in_features} -> {qnet.out_features}")
    want = golden(qnet, x)
    stats = RunStats(load_bytes=load_bytes, load_seconds=load_seconds)
    bar = None
    if progress:
        from compress.progress import bar as progress_bar

        # redrawn on a terminal, a line every 30 s in a log (compress.progress)
        bar = progress_bar(total=len(x), desc=f"{noun}s", unit=noun)
    out0, in0 = board.bytes_out, board.bytes_in
    t0 = time.monotonic()
    try:
        results = board.infer_many(x, progress=bar and (lambda k: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
    stats.seconds = time.monotonic() - t0
    stats.stream_bytes = (out0, board.bytes_out, in0, board.bytes_in)
    reply_len = 5 + 1 + 2 * info.out_features + 4 + 4 * info.num_layers
    for i, r in enumerate(results):
        stats.n += 1
        stats.request_bytes += len(P.packed_request(x[i]))
        stats.reply_bytes += reply_len
        stats.outputs.append(r.y)
        stats.exact += bool(np.array_equal(r.y, want[i]))
        p = int(predict(r.y[None])[0])
        stats.agree += p == int(predict(want[i][None])[0])
        if labels is not None:
            stats.correct += p == int(labels[i])
        stats.cycles.append(r.cycles)
        stats.layer_cycles.append(r.layer_cycles)
    stats.useful_macs = useful_macs(qnet, x[: stats.n])
    stats.pes = info.pes
    return stats


def useful_macs(qnet, x: np.ndarray) -> int:
    """The MACs a sparse engine must do for inputs x: per layer and input, the pairs (non-zero
    weight, non-zero activation), activations from the golden model (tb.analysis's count);
    0 (no utilisation figure) for a network with conv layers."""
    from tb.analysis import layer_inputs

    if any(layer.is_conv for layer in qnet.layers):
        return 0

    total = 0
    for layer, a in zip(qnet.layers, layer_inputs(qnet, x)):
        per_col = (layer.weights() != 0).sum(axis=0)  # non-zero weights per input column
        total += int(((np.asarray(a) != 0) @ per_col).sum())
    return total


def summary(stats: RunStats, info: P.Info, *, has_labels: bool, clock_hz: float | None = None,
            clock_note: str = "the board's clock, from PING", noun: str = "input",
            baud: int | None = None, end_to_end: float | None = None,
            end_to_end_note: str = "") -> str:
    """The run's figures; throughput at `clock_hz` (default: the clock PING reported); with
    `baud`, what the frames allow on the UART, and `end_to_end` as measured."""
    clock_hz = float(clock_hz or info.clock_hz)
    c = np.array(stats.cycles, dtype=np.float64)
    lc = np.array(stats.layer_cycles, dtype=np.float64).reshape(len(c), -1)
    lines = [f"{noun}s: {stats.n}"]
    if has_labels:
        lines.append(f"accuracy: {stats.correct}/{stats.n} = {stats.correct / stats.n:.2%}")
    comp = lc.sum(axis=1)
    lines += [
        f"agreement with golden: {stats.agree}/{stats.n} predictions, "
        f"{stats.exact}/{stats.n} output vectors bit-exact",
        f"on-chip cycles per inference (first input word -> last output word, includes waiting "
        f"for UART bytes): mean {c.mean():.0f}",
        f"engine compute cycles per inference (sum of layer_cycles): mean {comp.mean():.0f}, "
        f"min {comp.min():.0f}, max {comp.max():.0f} (per layer: "
        f"{', '.join(f'{v:.0f}' for v in lc.mean(axis=0))})",
        *([f"MAC utilisation: {100 * stats.useful_macs / (stats.pes * comp.sum()):.1f}% "
            f"({stats.useful_macs / stats.n:,.0f} useful MACs per {noun}: non-zero weight x "
            f"non-zero activation, over {stats.pes} PEs x compute cycles)"]
          if stats.useful_macs and stats.pes and comp.sum() else []),
        f"throughput at {clock_hz / 1e6:g} MHz ({clock_note}): "
        f"{clock_hz / comp.mean():.0f} inferences/s of engine compute "
        f"({comp.mean() / clock_hz * 1e6:.1f} us each; the UART transfer is not counted)",
    ]
    if baud and stats.request_bytes:
        lines.append(
            f"UART at {baud:,} baud: {stats.request_bytes / stats.n:.1f} request bytes (PACKED) "
            f"and {stats.reply_bytes / stats.n:.0f} reply bytes per {noun}: "
            f"{line_rate(stats, baud):.0f} {noun}s/s computed from frame bytes and baud")
    if end_to_end:
        lines.append(f"end to end: {end_to_end:.0f} {noun}s/s ({end_to_end_note}; "
                     f"window of {info.window} requests in flight)")
    return "\n".join(lines)


def _inputs(args, qnet):
    """(x int16[n, in_0], labels int64[n] or None, noun, description) for `fpga run`."""
    if args.inputs:
        x = load_inputs(args.inputs, qnet.in_features)
        labels = (load_labels(args.labels, len(x), classes=qnet.out_features)
                  if args.labels else None)
        n = min(args.count, len(x)) if args.count is not None else len(x)
        return (x[:n], None if labels is None else labels[:n], "input",
                f"inputs: {args.inputs}" + (f", labels: {args.labels}" if args.labels else ""))
    if args.labels:
        raise InputError("--labels needs --inputs (MNIST digits come with their labels)")
    if qnet.in_features != 784:
        raise InputError(f"the model takes {qnet.in_features} inputs, not 784 (an MNIST digit): "
                         f"pass your inputs with --inputs XI.npy (int16 [batch, "
                         f"{qnet.in_features}], e.g. from python -m compress encode-inputs)")
    from compress.golden import mnist_to_input

    test = load_split("test", args.data)
    n = min(args.count if args.count is not None else 100, len(test.labels))
    return (mnist_to_input(test.images[:n], qnet.input_frac), np.asarray(test.labels[:n]),
            "digit", f"inputs: the first {n} MNIST test digits")


def run_cli(args) -> int:
    if bool(args.port) == bool(args.sim):
        raise InputError("give exactly one of --port PORT or --sim")
    if args.count is not None and args.count < 1:
        raise InputError(f"--count must be >= 1, not {args.count!r}")
    if args.timeout is None:
        args.timeout = 600.0 if args.sim else 5.0
    if not args.timeout > 0 or args.timeout == float("inf"):  # nan and inf too
        raise InputError(f"--timeout must be a positive number of seconds, not {args.timeout!r}")
    if args.clock_mhz is not None and not 0 < args.clock_mhz <= 1000:
        raise InputError(f"--clock-mhz must be in (0, 1000], not {args.clock_mhz!r}")
    if getattr(args, "no_overlap", False) and not args.sim:
        raise InputError("--no-overlap: only with --sim (a board runs the engine it was "
                         "built with)")
    if getattr(args, "no_overlap", False) and "overlap" not in get(args.engine).params.names():
        raise InputError(f"--no-overlap: the {args.engine} engine has no overlap to switch off "
                         f"(the lockstep engine's layer 1 under layer 0's drain)")
    if args.out:
        refuse_same_path(args.out, args.model, args.inputs, args.labels)
        check_output(args.out)

    from compress.pattern import BOARDS as PRUNED_FOR

    # what the bitstream is built for: the network pruned for this board where one is shipped
    qnet, name = load_model(args.model, board=args.board in PRUNED_FOR)
    if args.sim:  # a conv network on an engine without conv layers: one line (a real board
        check_board_kinds(qnet, args.engine)  # says its engine in PING, checked below)
    x, labels, noun, what = _inputs(args, qnet)
    print(f"model: {name}")
    print(what)
    if args.sim:
        check_pes(args.pes)
        # The bench clocks the simulation at 100 MHz, but counts in the board's cycles: the
        # UART runs at the divisor the bitstream has at the board's PLL clock.
        mhz = args.clock_mhz or default_clock_for(args.board, args.engine, qnet)
        try:
            divisor = baud_divisor(mhz * 1e6, args.baud)
        except ValueError as e:
            raise InputError(f"--baud: {e}") from None
        # the simulated board is the board: a network the UP5K cannot hold (with the build's
        # SPRAM plan; --no-spram only preloads the simulation) is refused at once
        check_board_fit(qnet, args.engine, args.pes, board=args.board)
        with step(f"placing the rows over {args.pes} PEs ({args.engine} engine)"):
            rom = board_image(qnet, args.engine, args.pes, board=args.board)
        check_board_fit(qnet, args.engine, args.pes, img=rom, board=args.board)
        print(f"simulated board: {args.board}, {args.engine} engine, {args.pes} PEs, UART at "
              f"{divisor} clocks a bit ({args.baud:,} baud at {mhz:g} MHz)")
        params = (replace(engine_params(rom, args.board), overlap=False)
                  if getattr(args, "no_overlap", False) else None)
        with simulated_board(rom, spram=not args.no_spram, divisor=divisor,
                             board=args.board, params=params) as transport:
            board = Board(transport, timeout=args.timeout)
            stats = run_inputs(board, qnet, x, labels, rom=rom, noun=noun)
            info = board.info
        e2e = sim_rate(stats, transport.times, mhz * 1e6)
        load_s = stats.load_bytes and sim_span(stats.load_bytes, transport.times, mhz * 1e6)
        e2e_note = (f"simulated board at {mhz:g} MHz, first request byte on rx to last reply "
                    f"byte on tx, in its clock cycles")
        clock_note = ("the board clock given by --clock-mhz" if args.clock_mhz else
                      "the board's PLL clock, the fpga build default") + \
            "; cycle counts do not depend on the clock"
    else:
        transport = SerialTransport(args.port, args.baud)
        try:
            board = Board(transport, timeout=args.timeout)
            # The ROM image for the weight load is cut for the board's own engine and PE count.
            info = board.ping()
            check_board_kinds(qnet, info.engine)
            rom = board_image(qnet, info.engine, info.pes, board=args.board)
            stats = run_inputs(board, qnet, x, labels, rom=rom, noun=noun)
            info = board.info
        finally:
            transport.close()
        mhz = args.clock_mhz or info.clock_hz / 1e6
        e2e = stats.n / stats.seconds if stats.seconds > 0 else None
        e2e_note = "wall clock, first request written to last reply read"
        load_s = stats.load_seconds
        clock_note = ("given by --clock-mhz" if args.clock_mhz else
                      "the board's clock, as it reports in PING")
    if stats.load_bytes:
        sent = stats.load_bytes[1] - stats.load_bytes[0]
        how = "simulated board, in its clock cycles" if args.sim else "wall clock"
        took = f"{load_s * 1e3:.0f} ms measured ({how}), " if load_s else ""
        print(f"weights loaded: {sent:,} bytes of LOAD and COMMIT frames, {took}"
              f"{sent * 10 / args.baud * 1e3:.0f} ms from bytes and baud")
    print(summary(stats, info, has_labels=labels is not None, clock_hz=mhz * 1e6,
                  clock_note=clock_note, noun=noun, baud=args.baud, end_to_end=e2e,
                  end_to_end_note=e2e_note))
    if args.out:
        save_npy(args.out, np.stack(stats.outputs).astype(np.int16))
        print(f"wrote {args.out}: the board's outputs, int16 [{stats.n}, {qnet.out_features}]")
    return 0 if stats.exact == stats.n else 1


run_digits = run_inputs  # the earlier name
