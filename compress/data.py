"""MNIST from the original IDX files, and the 100 sample digits the package ships.

The data directory is the one the user names (`--data`), else the environment variable
``MNIST_DIR``. Files may be gzipped (``*.gz``) or raw; every header, magic number, shape and
length is checked and a bad file raises `InputError` naming it. When the directory holds a
``SHA256SUMS`` file the files it lists are verified against it.

`load_sample()` reads ``compress/models/mnist-test-100.npz``: the first 100 test digits
(uint8[100, 28, 28] ``images``, uint8[100] ``labels``) with a format version and a sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import limits
from .errors import InputError
from .shipped import SAMPLE_DIGITS

ENV_VAR = "MNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SAMPLE_PATH = SAMPLE_DIGITS  # compress/models/mnist-test-100.npz
SAMPLE_VERSION = 1
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8[n, 28, 28]
    labels: np.ndarray  # uint8[n]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Tensors:
    """Any other data: float inputs in the model's own units and shape, integer labels.

    The training loop takes a `Split` (MNIST pixels, scaled by `to_float`) or this (used as is).
    """

    x: "torch.Tensor"  # noqa: F821 - float32 [n, ...]
    labels: np.ndarray  # int64[n]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The MNIST directory: `path` if given, else $MNIST_DIR; InputError if neither is usable."""
    if path is None:
        path = os.environ.get(ENV_VAR)
        if not path:
            raise InputError(f"no MNIST directory: pass --data DIR or set {ENV_VAR}")
    d = Path(path)
    if not d.is_dir():
        raise InputError(f"{d}: MNIST directory does not exist")
    return d


def _find(d: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (d / name).is_file():
            return d / name
    raise InputError(f"{d}: {stem}[.gz] not found")


def _checksums(d: Path) -> dict[str, str]:
    sums = d / "SHA256SUMS"
    if not sums.is_file():
        return {}
    from .infile import read_text

    out = {}
    for line in read_text(sums, limit="max_config_bytes").splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def read_idx(path: str | os.PathLike, *, expected_sha256: str | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or raw) into a NumPy array; InputError on a malformed file.

    The header is read first and its declared size checked against the limits; then exactly
    that many bytes are decompressed, so a gzip bomb costs no more than its declared size."""
    from .infile import read_input

    path = Path(path)
    raw = read_input(path, limit="max_array_bytes", expected="an IDX file")
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise InputError(f"{path}: sha256 does not match SHA256SUMS (corrupted file)")
    gz = raw[:2] == b"\x1f\x8b"
    stream = gzip.GzipFile(fileobj=io.BytesIO(raw)) if gz else io.BytesIO(raw)
    try:
        magic = stream.read(4)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
            raise InputError(f"{path}: not an IDX file (bad magic number)")
        code, ndim = magic[2], magic[3]
        if code not in _IDX_DTYPES or ndim < 1:
            raise InputError(f"{path}: unsupported IDX type 0x{code:02x} / {ndim} dimensions")
        dims = stream.read(4 * ndim)
        if len(dims) < 4 * ndim:
            raise InputError(f"{path}: truncated IDX header")
        shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
        dtype = np.dtype(_IDX_DTYPES[code])
        need = math.prod(shape) * dtype.itemsize  # Python ints: no wrap past 2**64
        limits.check("max_array_bytes", need, f"{path}: IDX shape {list(shape)}, bytes")
        data = stream.read(need)
        extra = len(stream.read(1))
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: bad gzip stream ({e})") from None
    if len(data) != need or extra:
        got = f"more than {need}" if extra else f"{len(data)}"
        raise InputError(f"{path}: IDX payload is {got} bytes, shape {list(shape)} needs {need}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(
        dtype.newbyteorder("="), copy=True
    )


def load_split(split: str, path: str | os.PathLike | None = None) -> Split:
    """Load the 'train' (60k) or 'test' (10k) split from the IDX files, validated."""
    if split not in FILES:
        raise InputError(f"unknown MNIST split {split!r} (train or test)")
    d = data_dir(path)
    sums = _checksums(d)
    arrays = []
    for stem in FILES[split]:
        f = _find(d, stem)
        arrays.append(read_idx(f, expected_sha256=sums.get(f.name)))
    images, labels = arrays
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(f"{d}: {split} images must be uint8[n, 28, 28], got {list(images.shape)}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InputError(f"{d}: {split} labels must be uint8[n], got {list(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"{d}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise InputError(f"{d}: the {split} split holds no images")
    if labels.size and int(labels.max()) > 9:
        raise InputError(f"{d}: {split} label {int(labels.max())} outside 0..9")
    return Split(images, labels)


def train_val_split(train: Split, val_size: int, *, seed: int = 0) -> tuple[Split, Split]:
    """A seeded split of the training set into (train, validation) for choosing recipes."""
    if not 0 <= val_size < len(train):
        raise InputError(f"validation size must be 0..{len(train) - 1}, not {val_size}")
    perm = np.random.default_rng(seed).permutation(len(train))
    v, t = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    return Split(train.images[t], train.labels[t]), Split(train.images[v], train.labels[v])


def model_inputs(data) -> "torch.Tensor":  # noqa: F821
    """The float tensor a model takes for a split: MNIST pixels / 255, or `Tensors.x` as is."""
    if isinstance(data, Tensors):
        return data.x
    return to_float(data.images)


def to_float(images: np.ndarray):
    """MNIST only: uint8 pixels -> float32 tensor [n, 1, 28, 28] of pixel / 255 (0 stays 0)."""
    import torch

    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)


# ---------------------------------------------------------------------------------------------
# The shipped sample digits


def _sample_checksum(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (images, labels):
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def write_sample(path: str | os.PathLike, test: Split, n: int = 100) -> None:
    """Write the first n test digits with version and checksum, deterministically and atomically."""
    import io
    import zipfile

    from .atomic import atomic_path

    images = np.ascontiguousarray(test.images[:n], dtype=np.uint8)
    labels = np.ascontiguousarray(test.labels[:n], dtype=np.uint8)
    arrays = {
        "version": np.array(SAMPLE_VERSION, dtype=np.int64),
        "images": images,
        "labels": labels,
        "sha256": np.array(_sample_checksum(images, labels)),
    }
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for key, a in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, a, allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0)),
                            buf.getvalue())


def load_sample(path: str | os.PathLike | None = None) -> Split:
    """The sample digits shipped in the package (first 100 MNIST test images), verified."""
    from .qnet import read_npz

    p = Path(path) if path is not None else SAMPLE_PATH
    arrays = read_npz(p)
    for key in ("version", "images", "labels", "sha256"):
        if key not in arrays:
            raise InputError(f"{p}: {key}: missing key")
    if arrays["version"].shape != () or int(arrays["version"]) != SAMPLE_VERSION:
        raise InputError(f"{p}: version: unsupported sample version (expected {SAMPLE_VERSION})")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(f"{p}: images: expected uint8[n, 28, 28], "
                         f"got {images.dtype}{list(images.shape)}")
    if labels.dtype != np.uint8 or labels.shape != (images.shape[0],):
        raise InputError(f"{p}: labels: expected uint8[{images.shape[0]}], "
                         f"got {labels.dtype}{list(labels.shape)}")
    if str(arrays["sha256"]) != _sample_checksum(images, labels):
        raise InputError(f"{p}: sha256: checksum mismatch, the sample file is corrupted")
    return Split(images, labels)
