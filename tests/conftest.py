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


@pytest.fixture(scope="session")
def small_mnist_dir(mnist_dir, tmp_path_factory) -> Path:
    """The first 6,000 training and 2,000 test images of MNIST as IDX files with their
    SHA256SUMS: the full pipeline's tests at a fifth of the golden model's work."""
    import gzip
    import hashlib

    from compress.data import read_idx

    out = tmp_path_factory.mktemp("mnist-small")
    sums = []
    for stem, n in (("train-images-idx3-ubyte", 6000), ("train-labels-idx1-ubyte", 6000),
                    ("t10k-images-idx3-ubyte", 2000), ("t10k-labels-idx1-ubyte", 2000)):
        a = read_idx(mnist_dir / f"{stem}.gz")[:n]
        code = 0x08  # unsigned bytes, as MNIST
        head = bytes([0, 0, code, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
        raw = gzip.compress(head + a.astype("u1").tobytes(), mtime=0)
        (out / f"{stem}.gz").write_bytes(raw)
        sums.append(f"{hashlib.sha256(raw).hexdigest()}  {stem}.gz")
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return out


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


def elaborate(obj, platform=None):
    """Elaborate `obj` and everything it is made of (returns the fragment): a component made to
    be inspected is then used, and Amaranth does not report it as made and never used."""
    from amaranth.hdl import Fragment

    return Fragment.get(obj, platform)

