import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
