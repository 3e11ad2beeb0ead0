"""`python -m fpga run`: inputs streamed to the board (or the simulated board), answers checked.

`run_inputs` streams engine inputs through a `Board` (fpga/host.py), compares every answer with
the golden model and the label, and gathers the on-chip cycle counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compress.errors import InputError

from . import protocol as P
from .host import Board, SerialTransport


@dataclass
class RunStats:
    n: int = 0
    correct: int = 0  # prediction == label
    agree: int = 0  # prediction == golden prediction
    exact: int = 0  # output vector == golden output vector, bit for bit
    cycles: list[int] = field(default_factory=list)
    layer_cycles: list[list[int]] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)


def run_inputs(board: Board, qnet, x: np.ndarray, labels: np.ndarray | None, *,
               progress: bool = True, rom=None) -> RunStats:
    """Stream x through the board; if it reports its weights not loaded, load `rom` first.

    `rom` is the ROM image (a RomImage or a LockstepImage) the board's weights are cut from.
    """
    from compress.golden import golden, predict

    from .engines import kind_of

    info = board.ping()
    if not info.loaded:
        if rom is None:
            raise InputError("the board's weights are not loaded and no ROM image was given")
        if (kind_of(rom), rom.pes) != (info.engine, info.pes):
            raise InputError(f"the board runs the {info.engine} engine with {info.pes} PEs, the "
                             f"ROM image is for the {kind_of(rom)} engine with {rom.pes}")
        board.load(rom, progress=progress)
        info = board.ping()
    if info.in_features != qnet.in_features or info.out_features != qnet.out_features:
        raise InputError(f"the board runs a {info.in_features} -> {info.out_features} network, "
                         f"the model is {qnet.in_features} -> {qnet.out_features}")
    want = golden(qnet, x)
    stats = RunStats()
    it = range(len(x))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="digits", unit="digit")
    for i in it:
        r = board.infer(x[i])
        stats.n += 1
        stats.outputs.append(r.y)
        stats.exact += bool(np.array_equal(r.y, want[i]))
        p = int(predict(r.y[None])[0])
        stats.agree += p == int(predict(want[i][None])[0])
        if labels is not None:
            stats.correct += p == int(labels[i])
        stats.cycles.append(r.cycles)
        stats.layer_cycles.append(r.layer_cycles)
    return stats


def summary(stats: RunStats, info: P.Info, *, has_labels: bool) -> str:
    c = np.array(stats.cycles, dtype=np.float64)
    lc = np.array(stats.layer_cycles, dtype=np.float64)
    lines = [f"digits: {stats.n}"]
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
        f"at {info.clock_hz / 1e6:g} MHz: {info.clock_hz / comp.mean():.0f} inferences/s of engine "
        f"compute ({comp.mean() / info.clock_hz * 1e6:.1f} us each; the UART transfer is not "
        f"counted)",
    ]
    return "\n".join(lines)


def run_cli(args) -> int:
    if bool(args.port) == bool(args.sim):
        raise InputError("give exactly one of --port PORT or --sim")
    if args.count < 1:
        raise InputError(f"--count must be >= 1, not {args.count!r}")
    if args.timeout is None:
        args.timeout = 600.0 if args.sim else 5.0
    if args.timeout <= 0:
        raise InputError(f"--timeout must be positive, not {args.timeout!r}")

    from compress.data import load_split
    from compress.golden import mnist_to_input

    from .cli import load_model

    qnet, name = load_model(args.model)
    if qnet.in_features != 784:
        raise InputError(f"the model takes {qnet.in_features} inputs, MNIST digits have 784")
    test = load_split("test", args.data)
    n = min(args.count, len(test.labels))
    x = mnist_to_input(test.images[:n], qnet.input_frac)
    labels = np.asarray(test.labels[:n])
    print(f"model: {name}")
    from .engines import build_image

    if args.sim:
        from .bench import simulated_board

        rom = build_image(qnet, args.engine, args.pes)
        print(f"simulated board: {args.engine} engine, {args.pes} PEs")
        with simulated_board(rom, spram=not args.no_spram) as transport:
            board = Board(transport, timeout=args.timeout)
            stats = run_inputs(board, qnet, x, labels, rom=rom)
            info = board.info
    else:
        transport = SerialTransport(args.port, args.baud)
        try:
            board = Board(transport, timeout=args.timeout)
            # The ROM image for the weight load is cut for the board's own engine and PE count.
            info = board.ping()
            rom = build_image(qnet, info.engine, info.pes)
            stats = run_inputs(board, qnet, x, labels, rom=rom)
            info = board.info
        finally:
            transport.close()
    print(summary(stats, info, has_labels=True))
    return 0 if stats.agree == stats.n else 1


run_digits = run_inputs  # the earlier name
