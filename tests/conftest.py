import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Progress lines for steps past a few seconds (compress.progress) depend on the machine's load:
# the tests' commands stay quiet unless a test asks for them (tests/test_progress.py).
os.environ.setdefault("DEEPCOMP_PROGRESS_AFTER", "600")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST IDX files: $MNIST_DIR, else ../shared/datasets/mnist beside the repo."""
    d = Path(os.environ.get("MNIST_DIR") or REPO.parent / "shared" / "datasets" / "mnist")
    if not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST IDX files not found in {d}: set MNIST_DIR")
    return d


def long_tests() -> bool:
    """`make test-long` sets LONG=1 for the longer sweeps."""
    return os.environ.get("LONG", "") not in ("", "0")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Training tests run one torch thread: pytest-xdist already uses both cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def striped_digits(n: int = 256, seed: int = 0):
    """A learnable stand-in for MNIST: random 28x28 images with a label-dependent bright stripe."""
    import numpy as np

    from compress.data import Split

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    for c in range(10):
        images[labels == c, c * 2 : c * 2 + 3, :] = 255
    return Split(images, labels)


def never_elaborated(obj, seen=None) -> None:
    """Mark a component (and the sub-blocks it made in __init__) as deliberately never
    elaborated: Amaranth would otherwise warn about unused elaboratables at exit."""
    from amaranth.hdl import Elaboratable

    seen = set() if seen is None else seen
    if id(obj) in seen or not isinstance(obj, Elaboratable):
        return
    seen.add(id(obj))
    obj._MustUse__silence = True
    for v in vars(obj).values():
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            never_elaborated(item, seen)

