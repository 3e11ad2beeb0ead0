"""The quantized network file ("qnet"): a NumPy .npz of integer layers (docs/formats.md section 2).

The interchange between the compression tooling, the golden model and the hardware. The loader
parses and validates every key, dtype, shape and range, and raises `InputError` naming the key
or layer at fault; nothing is unpickled. Keys starting with ``meta.`` are ours and optional:
``meta.sha256`` is a checksum of the network written by `save_qnet` and verified on load when
present (a user's hand-made qnet need not carry it).
"""

from __future__ import annotations

import hashlib
import io
import lzma
import math
import os
import struct
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import limits
from .atomic import atomic_path
from .errors import InputError
from .infile import open_input

QNET_VERSION = 1
DEFAULT_INDEX_BITS = 4
MAX_SHIFT = 62  # int64 golden arithmetic; wider shifts are meaningless for 16-bit outputs


@dataclass(frozen=True, eq=False)
class Layer:
    """One fully connected layer: y = post(bias + codebook[index] @ a)."""

    codebook: np.ndarray  # int16[K], codebook[0] == 0
    index: np.ndarray  # uint8[out, in], 0 = pruned
    bias: np.ndarray  # int32[out]
    shift: int
    relu: bool

    @property
    def in_features(self) -> int:
        return int(self.index.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.index.shape[0])

    def weights(self) -> np.ndarray:
        """The integer weight matrix codebook[index], int64[out, in]."""
        return self.codebook.astype(np.int64)[self.index]

    def equals(self, other: "Layer") -> bool:
        return (
            np.array_equal(self.codebook, other.codebook)
            and np.array_equal(self.index, other.index)
            and np.array_equal(self.bias, other.bias)
            and self.shift == other.shift
            and self.relu == other.relu
        )


@dataclass(eq=False)
class QNet:
    layers: list[Layer]
    input_frac: int = 8
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    def equals(self, other: "QNet") -> bool:
        return (
            self.input_frac == other.input_frac
            and self.num_layers == other.num_layers
            and all(a.equals(b) for a, b in zip(self.layers, other.layers))
        )

    def validate(self, *, index_bits: int = DEFAULT_INDEX_BITS) -> "QNet":
        validate_layers(self.layers, index_bits=index_bits)
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The qnet's keys and values exactly as stored (without checksum)."""
        arrays: dict[str, np.ndarray] = {
            "version": np.array(QNET_VERSION, dtype=np.int64),
            "num_layers": np.array(self.num_layers, dtype=np.int64),
            "input_frac": np.array(self.input_frac, dtype=np.int64),
        }
        for i, layer in enumerate(self.layers):
            arrays[f"l{i}.codebook"] = np.ascontiguousarray(layer.codebook, dtype=np.int16)
            arrays[f"l{i}.index"] = np.ascontiguousarray(layer.index, dtype=np.uint8)
            arrays[f"l{i}.bias"] = np.ascontiguousarray(layer.bias, dtype=np.int32)
            arrays[f"l{i}.shift"] = np.array(layer.shift, dtype=np.int64)
            arrays[f"l{i}.relu"] = np.array(bool(layer.relu))
        return arrays

    def checksum(self) -> str:
        return _checksum(self.to_arrays())


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every key, dtype, shape and the raw little-endian bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(k for k in arrays if not k.startswith("meta.")):
        a = np.asarray(arrays[key])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def validate_layers(layers: list[Layer], *, index_bits: int = DEFAULT_INDEX_BITS) -> None:
    """Check the ranges of docs/formats.md section 2; raise InputError naming the layer, key."""
    if not 1 <= index_bits <= 8:
        raise InputError(f"index_bits must be 1..8 (uint8 indices), not {index_bits!r}")
    if len(layers) < 1:
        raise InputError("num_layers: a qnet needs at least one layer")
    for i, layer in enumerate(layers):
        k = f"l{i}"
        cb, idx, bias = layer.codebook, layer.index, layer.bias
        if cb.dtype != np.int16 or cb.ndim != 1:
            raise InputError(f"{k}.codebook: expected int16[K], got {cb.dtype}{list(cb.shape)}")
        if idx.dtype != np.uint8 or idx.ndim != 2:
            raise InputError(f"{k}.index: expected uint8[out, in], got {idx.dtype}{list(idx.shape)}")
        if bias.dtype != np.int32 or bias.ndim != 1:
            raise InputError(f"{k}.bias: expected int32[out], got {bias.dtype}{list(bias.shape)}")
        K = cb.shape[0]
        if K < 1:
            raise InputError(f"{k}.codebook: empty codebook (codebook[0] must be 0)")
        if cb[0] != 0:
            raise InputError(f"{k}.codebook: codebook[0] must be 0 (the pruned weight), not {cb[0]}")
        if K > 2**index_bits:
            raise InputError(
                f"{k}.codebook: {K} entries exceed 2**index_bits = {2**index_bits} "
                f"(index_bits={index_bits})"
            )
        if idx.shape[0] < 1 or idx.shape[1] < 1:
            raise InputError(f"{k}.index: empty matrix of shape {list(idx.shape)}")
        if idx.size and int(idx.max()) >= K:
            raise InputError(f"{k}.index: index {int(idx.max())} >= codebook size {K}")
        if bias.shape[0] != idx.shape[0]:
            raise InputError(
                f"{k}.bias: {bias.shape[0]} entries but {k}.index has {idx.shape[0]} output rows"
            )
        if not isinstance(layer.shift, (int, np.integer)) or layer.shift < 0:
            raise InputError(f"{k}.shift: must be an integer >= 0, not {layer.shift!r}")
        if layer.shift > MAX_SHIFT:
            raise InputError(f"{k}.shift: {layer.shift} exceeds the largest shift {MAX_SHIFT}")
        if i > 0 and layers[i - 1].out_features != layer.in_features:
            raise InputError(
                f"{k}.index: {layer.in_features} inputs but l{i - 1} has "
                f"{layers[i - 1].out_features} outputs"
            )


def _scalar_int(arrays, key: str) -> int:
    a = arrays[key]
    if a.shape != () or a.dtype.kind not in "iu":
        raise InputError(f"{key}: expected an integer scalar, got {a.dtype}{list(a.shape)}")
    return int(a)


def _scalar_bool(arrays, key: str) -> bool:
    a = arrays[key]
    if a.shape != () or a.dtype != np.bool_:
        raise InputError(f"{key}: expected a bool scalar, got {a.dtype}{list(a.shape)}")
    return bool(a)


def qnet_from_arrays(arrays: dict[str, np.ndarray], *, index_bits: int = DEFAULT_INDEX_BITS) -> QNet:
    """Build and validate a QNet from the npz's key -> array mapping."""
    for key in ("version", "num_layers", "input_frac"):
        if key not in arrays:
            raise InputError(f"{key}: missing key")
    version = _scalar_int(arrays, "version")
    if version != QNET_VERSION:
        raise InputError(f"version: unsupported qnet version {version} (expected {QNET_VERSION})")
    num_layers = _scalar_int(arrays, "num_layers")
    if num_layers < 1:
        raise InputError(f"num_layers: must be >= 1, not {num_layers}")
    limits.check("max_layers", num_layers, "num_layers")
    input_frac = _scalar_int(arrays, "input_frac")
    expected = _qnet_keys(num_layers)
    for key in expected:
        if key not in arrays:
            raise InputError(f"{key}: missing key")
    extra = sorted(k for k in arrays if k not in expected and not k.startswith("meta."))
    if extra:
        raise InputError(f"{extra[0]}: unexpected key (num_layers is {num_layers})")
    layers = [
        Layer(
            codebook=arrays[f"l{i}.codebook"],
            index=arrays[f"l{i}.index"],
            bias=arrays[f"l{i}.bias"],
            shift=_scalar_int(arrays, f"l{i}.shift"),
            relu=_scalar_bool(arrays, f"l{i}.relu"),
        )
        for i in range(num_layers)
    ]
    validate_layers(layers, index_bits=index_bits)
    meta = {k: v for k, v in arrays.items() if k.startswith("meta.")}
    if "meta.sha256" in meta:
        stored = meta["meta.sha256"]
        if stored.dtype.kind != "U" or stored.shape != ():
            raise InputError("meta.sha256: expected a string scalar")
        if str(stored) != _checksum(arrays):
            raise InputError("meta.sha256: checksum mismatch, the qnet is corrupted")
    return QNet(layers=layers, input_frac=input_frac, meta=meta)


_LAYER_KEYS = ("codebook", "index", "bias", "shift", "relu")


def _qnet_keys(num_layers: int) -> list[str]:
    """The keys of a qnet of num_layers layers, in the order they are checked."""
    return ["version", "num_layers", "input_frac"] + [
        f"l{i}.{f}" for i in range(num_layers) for f in _LAYER_KEYS
    ]


# ---------------------------------------------------------------------------------------------
# Checked .npy / .npz readers: every size a file declares is checked before it is allocated.


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError,
               KeyError, RuntimeError, NotImplementedError, zlib.error, lzma.LZMAError,
               struct.error, SyntaxError, TypeError, UnicodeDecodeError, OverflowError,
               tokenize.TokenError, MemoryError, RecursionError)


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    header_bytes: int  # magic + header: the array data follow

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


def _npy_header(f, name: str) -> NpyHeader:
    """Parse a .npy header from the file object `f` (at its start); nothing else is read.

    InputError for a bad magic or header, an unsupported version, or an object dtype.
    """
    try:
        # numpy re-tokenizes a header written by Python 2 (`(3L, 4L)`) and warns that it did:
        # such a file is read, quietly; a header that cannot be tokenized is refused below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise InputError(f"{name}: unsupported .npy format version {version}")
    except InputError:
        raise
    except _ZIP_ERRORS as e:
        raise InputError(f"{name}: not a valid .npy array ({_first_line(e)})") from None
    if dtype.hasobject:
        raise InputError(f"{name}: object arrays are refused (they would need unpickling)")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise InputError(f"{name}: corrupt .npy header (shape {shape})")
    return NpyHeader(tuple(shape), bool(fortran), dtype, f.tell())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _check_array_size(h: NpyHeader, name: str) -> None:
    # The element count too: a zero-size dtype must not smuggle in a 2**60-element shape.
    limits.check("max_array_bytes", max(h.nbytes, h.count),
                 f"{name}: declared {h.describe()}, bytes")


def _read_data(f, h: NpyHeader, name: str) -> np.ndarray:
    """The array data after the header: one allocation of the declared (checked) size."""
    a = np.empty(h.shape, dtype=h.dtype, order="F" if h.fortran else "C")
    if h.nbytes:
        view = memoryview(a.reshape(-1, order="A").view(np.uint8))
        got = 0
        try:
            while got < h.nbytes:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
        except _ZIP_ERRORS as e:
            raise InputError(f"{name}: cannot read the array data ({_first_line(e)})") from None
        if got != h.nbytes:
            raise InputError(f"{name}: truncated array data ({got} of {h.nbytes} bytes)")
    return a


_MAX_DEFLATE_RATIO = 1032


class _Zip:
    """An .npz opened for checked reading: members listed, nothing decompressed yet."""

    def __init__(self, path: Path):
        self.path = path
        fh = open_input(path, expected="an .npz file")  # a regular file: zip seeks in it
        try:
            if not zipfile.is_zipfile(fh):
                fh.seek(0)
                if fh.read(4) == b"\x89DCZ":  # dcz.MAGIC: say what to do with it
                    raise InputError(f"{path}: is a .dcz model file, not a qnet .npz (python -m "
                                     "compress unpack M.dcz --out Q.npz gives the qnet)")
                raise InputError(f"{path}: not a valid .npz file (not a zip archive)")
            fh.seek(0)
            self.zf = zipfile.ZipFile(fh)
        except InputError:
            fh.close()
            raise
        except _ZIP_ERRORS as e:
            fh.close()
            raise InputError(f"{path}: not a valid .npz file ({_first_line(e)})") from None
        self.fh = fh
        infos = self.zf.infolist()
        limits.check("max_members", len(infos), f"{path}: zip members")
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if not info.filename.endswith(".npy") or info.is_dir():
                self.close()
                raise InputError(f"{path}: zip member {info.filename!r} is not a .npy array")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                self.close()
                raise InputError(f"{path}: zip member {info.filename!r} uses compression "
                                 f"method {info.compress_type} (NumPy writes stored or deflated)")
            # Deflate expands at most ~1032:1; a member declaring more is lying about its size.
            if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
                self.close()
                raise InputError(f"{path}: zip member {info.filename!r} declares "
                                 f"{info.file_size:,} bytes from {info.compress_size:,} "
                                 "compressed: more than deflate can expand")
            key = info.filename[: -len(".npy")]
            if key in self.members:
                self.close()
                raise InputError(f"{path}: zip member {info.filename!r} appears twice")
            self.members[key] = info
        self.total = 0

    def close(self):
        self.zf.close()
        self.fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def header(self, key: str) -> tuple[NpyHeader, zipfile.ZipInfo]:
        """The member's .npy header (only the first bytes are decompressed), checked against
        the member's declared size and the limits."""
        info = self.members[key]
        name = f"{self.path}: {key}"
        limits.check("max_member_bytes", info.file_size, f"{name}: declared uncompressed size")
        try:
            with self.zf.open(info) as f:
                h = _npy_header(f, name)
        except InputError:
            raise
        except _ZIP_ERRORS as e:
            raise InputError(f"{name}: cannot read ({_first_line(e)})") from None
        if h.header_bytes + h.nbytes != info.file_size:
            raise InputError(f"{name}: declares {h.describe()} ({h.nbytes:,} bytes) but the zip "
                             f"member holds {info.file_size - h.header_bytes:,} bytes of data")
        return h, info

    def read(self, key: str, h: NpyHeader | None = None) -> np.ndarray:
        info = self.members[key]
        name = f"{self.path}: {key}"
        if h is None:
            h, info = self.header(key)
        _check_array_size(h, name)
        self.total += info.file_size
        limits.check("max_npz_bytes", self.total, f"{self.path}: declared uncompressed size "
                     "of the members read")
        try:
            with self.zf.open(info) as f:
                _npy_header(f, name)
                return _read_data(f, h, name)
        except InputError:
            raise
        except _ZIP_ERRORS as e:
            raise InputError(f"{name}: cannot read ({_first_line(e)})") from None


def read_npz(path: str | Path, keys=None) -> dict[str, np.ndarray]:
    """Read the arrays of an .npz without unpickling anything (all of them, or those whose key
    `keys(key)` accepts); every member is checked by name (a .npy), declared uncompressed size
    and .npy header against `compress.limits` before it is decompressed. InputError on a bad
    file."""
    with _Zip(Path(path)) as z:
        return {k: z.read(k) for k in z.members if keys is None or keys(k)}


def read_npy(path: str | Path, *, name: str | None = None, check=None) -> np.ndarray:
    """Read one .npy array file, checked like an .npz member: the header is parsed and the
    declared shape, dtype (no objects) and size are checked against `compress.limits` and the
    file's size before the data are read; `check(header)` may refuse more (e.g. a shape).
    InputError on a bad file."""
    path = Path(path)
    name = name or str(path)
    try:
        with open_input(path, expected="a .npy file", name=name) as f:
            if f.read(4) == b"PK\x03\x04":
                raise InputError(f"{name}: expected a single .npy array, not an archive")
            f.seek(0)
            h = _npy_header(f, name)
            _check_array_size(h, name)
            if check is not None:
                check(h)
            size = os.fstat(f.fileno()).st_size
            if size != h.header_bytes + h.nbytes:
                raise InputError(f"{name}: declares {h.describe()} ({h.nbytes:,} bytes) but the "
                                 f"file holds {size - h.header_bytes:,} bytes of data")
            return _read_data(f, h, name)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, expected a .npy file") from None
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror or e})") from None


def check_batch(h: NpyHeader, name: str) -> None:
    """An input batch or labels file: at most max_batch rows (before the data are read)."""
    if h.shape:
        limits.check("max_batch", h.shape[0], f"{name}: declared {h.describe()}, rows")


def _read_qnet_arrays(path: Path) -> dict[str, np.ndarray]:
    """The qnet's arrays, each member checked before it is read: only the keys a qnet has
    are read, in order; scalars must be scalars and an index fits max_dim and max_weights
    before its data are decompressed; meta.* members other than a small meta.sha256 are
    never read."""
    lim = limits.get()
    with _Zip(path) as z:
        arrays: dict[str, np.ndarray] = {}
        headers: dict[str, NpyHeader] = {}

        def head(key):
            if key not in headers:
                if key not in z.members:
                    raise InputError(f"{key}: missing key")
                headers[key] = z.header(key)[0]
            return headers[key]

        def scalar(key):
            h = head(key)
            if h.shape != ():
                kind = "a bool" if key.endswith(".relu") else "an integer"
                raise InputError(f"{key}: expected {kind} scalar, got {h.describe()}")
            arrays[key] = z.read(key, h)

        for key in ("version", "num_layers", "input_frac"):
            scalar(key)
        version = _scalar_int(arrays, "version")
        if version != QNET_VERSION:
            raise InputError(f"version: unsupported qnet version {version} "
                             f"(expected {QNET_VERSION})")
        num_layers = _scalar_int(arrays, "num_layers")
        if num_layers < 1:
            raise InputError(f"num_layers: must be >= 1, not {num_layers}")
        limits.check("max_layers", num_layers, "num_layers")
        expected = set(_qnet_keys(num_layers))
        extra = sorted(k for k in z.members if k not in expected and not k.startswith("meta."))
        if extra:
            raise InputError(f"{extra[0]}: unexpected key (num_layers is {num_layers})")
        for key in _qnet_keys(num_layers):
            head(key)  # every key present, every header readable, before any layer data
        total = 0
        for i in range(num_layers):
            h = headers[f"l{i}.index"]
            if len(h.shape) == 2:
                limits.check("max_dim", max(h.shape), f"l{i}.index: declared shape "
                             f"{list(h.shape)}, dimension")
                total += h.count
                limits.check("max_weights", total, f"l{i}.index: total weights")
            for f in ("codebook", "bias"):
                hv = headers[f"l{i}.{f}"]
                if hv.count > lim.max_dim:
                    raise InputError(f"l{i}.{f}: declared {hv.describe()}: more entries than "
                                     f"a layer can have (max_dim={lim.max_dim:,})")
        for key in _qnet_keys(num_layers)[3:]:
            if key.endswith((".shift", ".relu")):
                scalar(key)
            else:
                arrays[key] = z.read(key, headers[key])
        if "meta.sha256" in z.members:
            info = z.members["meta.sha256"]
            # Only a small checksum is read; other meta.* members are ignored, unread.
            if info.file_size <= lim.max_meta_bytes:
                arrays["meta.sha256"] = z.read("meta.sha256")
    return arrays


def load_qnet(path: str | Path, *, index_bits: int = DEFAULT_INDEX_BITS) -> QNet:
    """Load and validate a qnet file; raise InputError (naming the key or layer) on bad input."""
    return qnet_from_arrays(_read_qnet_arrays(Path(path)), index_bits=index_bits)


def save_qnet(qnet: QNet, path: str | Path, *, index_bits: int = 8,
              what: str | None = None) -> None:
    """Validate and write a qnet with its checksum, atomically. Same network -> same bytes."""
    qnet.validate(index_bits=index_bits)
    arrays = qnet.to_arrays()
    arrays["meta.sha256"] = np.array(_checksum(arrays))
    with atomic_path(path, what=what) as tmp:
        _write_npz_deterministic(tmp, arrays)


def _write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # np.savez stamps the current time into the zip entries; write them with a fixed date.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in arrays:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def load_inputs(path: str | Path, in_features: int) -> np.ndarray:
    """Load an input batch X.npy as int16[batch, in_features]; InputError when it does not fit.

    The file goes through `read_npy`: its declared size is checked before it is read."""
    name = str(path)
    x = read_npy(path, check=lambda h: check_batch(h, name))
    return check_inputs(x, in_features, name=name)


def check_inputs(x: np.ndarray, in_features: int, *, name: str = "inputs") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"{name}: expected shape [batch, {in_features}], got {list(x.shape)}")
    if x.shape[1] != in_features:
        raise InputError(
            f"{name}: inputs are {x.shape[1]} wide but layer l0 takes {in_features} inputs"
        )
    if x.shape[0] < 1:
        raise InputError(f"{name}: empty batch")
    if x.dtype.kind not in "iu":
        raise InputError(f"{name}: expected integer (int16) inputs, got dtype {x.dtype}")
    if x.size and (int(x.min()) < -32768 or int(x.max()) > 32767):
        raise InputError(f"{name}: values outside the int16 range")
    return x.astype(np.int16)


def load_labels(path, n: int, *, what: str = "--labels", classes: int | None = None
                ) -> np.ndarray:
    """Integer class labels [n] from an .npy file, as int64; InputError (one line) when the file
    is not a readable .npy, not integers, not one label per input, or (with `classes`, the
    model's outputs) a label the model cannot answer. The header is checked before the data
    are read."""
    name = f"{what} {path}"

    def check(h):
        check_batch(h, name)
        if h.dtype.kind not in "iu":
            raise InputError(f"{name}: expected integer class labels, got dtype {h.dtype}")
        if h.shape != (n,):
            raise InputError(f"{name}: expected {n} labels (one per input, shape [{n}]), got "
                             f"shape {list(h.shape)}")

    y = read_npy(path, name=name, check=check)
    if n and int(y.min()) < 0:
        raise InputError(f"{name}: negative class label {int(y.min())}")
    if n and classes is not None and int(y.max()) >= classes:
        raise InputError(f"{name}: label {int(y.max())} but the model has {classes} outputs "
                         f"(labels 0..{classes - 1})")
    return y.astype(np.int64)
