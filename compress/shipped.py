"""The shipped files (compress/models/) and the one model loader of the tools (tb, fpga).

compress/models/ holds the default network, LeNet-300-100 trained, pruned, quantized and packed
from scratch (`make models`): its .dcz and the qnet that unpacking it gives, and 100 MNIST test
digits; beside it the same network pruned in the board's pattern (lenet-300-100-board.*), the
one the iCEBreaker's bitstream is built for, and LeNet-5 pruned in the board's pattern for its
CNN layout (lenet-5-board.*). Here, not in `compress.models` (the PyTorch
architectures), so that a path costs no torch import.
"""

from __future__ import annotations

from pathlib import Path

from . import limits
from .errors import InputError
from .paths import SHIPPED_DIR
SHIPPED_QNET = SHIPPED_DIR / "lenet-300-100.qnet.npz"
SHIPPED_DCZ = SHIPPED_DIR / "lenet-300-100.dcz"
SAMPLE_DIGITS = SHIPPED_DIR / "mnist-test-100.npz"
# The same network pruned in the board's pattern (compress.pattern, `--for-board icebreaker`):
# what the iCEBreaker's bitstream is built for by default.
BOARD_QNET = SHIPPED_DIR / "lenet-300-100-board.qnet.npz"
BOARD_DCZ = SHIPPED_DIR / "lenet-300-100-board.dcz"
# LeNet-5 pruned in the board's pattern for its CNN layout (`make models-board-lenet-5`)
BOARD_CNN_QNET = SHIPPED_DIR / "lenet-5-board.qnet.npz"
BOARD_CNN_DCZ = SHIPPED_DIR / "lenet-5-board.dcz"

LENET = (784, 300, 100, 10)
SYNTHETIC = "synthetic"  # a model spec: the synthetic stand-in; "synthetic:784-32-10": other sizes


def load_model(spec: str | Path | None = None, *, index_bits: int = 4, board: bool = False):
    """(qnet, description) for a model spec.

    None: the shipped LeNet-300-100 (with `board`, the board's network, `BOARD_QNET`, when it
    is shipped: what the fpga tools default to), or the synthetic stand-in while that file does
    not exist;
    "synthetic": a random LeNet-300-100-shaped qnet (random_qnet seed 0, density 6/8/26 %);
    "synthetic:IN-HIDDEN-...-OUT": other sizes (density 8 %, the last layer 26 %);
    anything else: a qnet .npz file (version 1, or version 2 with conv layers: an engine
    that does not run a layer's kind refuses it when its image is built).
    """
    from .qnet import load_qnet
    from .synthetic import random_qnet

    spec = None if spec is None else str(spec)
    if spec is None and board and BOARD_QNET.exists():
        return (load_qnet(BOARD_QNET, index_bits=index_bits),
                f"{_short(BOARD_QNET)} (the shipped LeNet-300-100 pruned for the board)")
    if spec == SYNTHETIC or (spec is None and not SHIPPED_QNET.exists()):
        why = "" if spec else f": {_short(SHIPPED_QNET)} does not exist yet"
        return (random_qnet(LENET, density=[0.06, 0.08, 0.26], seed=0),
                f"synthetic LeNet-300-100 (random_qnet seed 0, density 6/8/26 %){why}")
    if spec and spec.startswith(SYNTHETIC + ":"):
        try:
            sizes = [int(v) for v in spec.split(":", 1)[1].split("-")]
        except ValueError:
            sizes = []
        if len(sizes) < 2 or min(sizes) < 1:
            raise InputError(f"--model {spec!r}: expected synthetic:IN-HIDDEN-...-OUT")
        # the limits a qnet file is held to, before anything is allocated
        limits.check("max_layers", len(sizes) - 1, f"--model {spec!r}: layers")
        limits.check("max_dim", max(sizes), f"--model {spec!r}: a layer dimension")
        limits.check("max_weights", sum(a * b for a, b in zip(sizes, sizes[1:])),
                     f"--model {spec!r}: weights")
        dens = [0.08] * (len(sizes) - 2) + [0.26]
        return (random_qnet(tuple(sizes), density=dens, seed=0),
                f"synthetic {'-'.join(map(str, sizes))} (random_qnet seed 0, density 8 %, "
                f"last layer 26 %)")
    if spec is None:
        return (load_qnet(SHIPPED_QNET, index_bits=index_bits),
                f"{_short(SHIPPED_QNET)} (the shipped LeNet-300-100)")
    return load_qnet(spec, index_bits=index_bits), spec


def model_record(spec: str | Path | None, qnet, *, board: bool = False) -> dict:
    """{"model", "model_sha256"}: the network a spec names, as a report records it.

    A file: the path as given, and the sha256 of its bytes; no spec: the default's path
    relative to the repository (`load_model`'s choice, `board` as there); a synthetic spec:
    the spec, and the sha256 of the qnet file the tools would write for it (`save_qnet`)."""
    import hashlib
    import tempfile

    from .qnet import save_qnet

    spec = None if spec is None else str(spec)
    if spec is None:
        path = BOARD_QNET if board and BOARD_QNET.exists() else SHIPPED_QNET
        if path.exists():
            return {"model": _short(path),
                    "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        spec = SYNTHETIC
    if spec == SYNTHETIC or spec.startswith(SYNTHETIC + ":"):
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "model.qnet.npz"
            save_qnet(qnet, f)
            return {"model": spec, "model_sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    return {"model": spec, "model_sha256": hashlib.sha256(Path(spec).read_bytes()).hexdigest()}


def _short(path: Path) -> str:
    """The path relative to the repository when it is inside it (as the tools print it)."""
    root = SHIPPED_DIR.parents[1]
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
