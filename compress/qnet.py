"""The quantized network file ("qnet"): a NumPy .npz of integer layers (CONTRACT section 2).

The interchange between the compression tooling, the golden model and the hardware. The loader
parses and validates every key, dtype, shape and range, and raises `InputError` naming the key
or layer at fault; nothing is unpickled. Keys starting with ``meta.`` are ours and optional:
``meta.sha256`` is a checksum of the network written by `save_qnet` and verified on load when
present (a user's hand-made qnet need not carry it).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError

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
    """Check the ranges CONTRACT section 4 names; raise InputError naming the layer and key."""
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
    input_frac = _scalar_int(arrays, "input_frac")
    expected = {"version", "num_layers", "input_frac"}
    layers = []
    for i in range(num_layers):
        names = {f: f"l{i}.{f}" for f in ("codebook", "index", "bias", "shift", "relu")}
        for name in names.values():
            if name not in arrays:
                raise InputError(f"{name}: missing key")
        expected |= set(names.values())
        layers.append(
            Layer(
                codebook=arrays[names["codebook"]],
                index=arrays[names["index"]],
                bias=arrays[names["bias"]],
                shift=_scalar_int(arrays, names["shift"]),
                relu=_scalar_bool(arrays, names["relu"]),
            )
        )
    extra = sorted(k for k in arrays if k not in expected and not k.startswith("meta."))
    if extra:
        raise InputError(f"{extra[0]}: unexpected key (num_layers is {num_layers})")
    validate_layers(layers, index_bits=index_bits)
    meta = {k: v for k, v in arrays.items() if k.startswith("meta.")}
    if "meta.sha256" in meta:
        stored = meta["meta.sha256"]
        if stored.dtype.kind != "U" or stored.shape != ():
            raise InputError("meta.sha256: expected a string scalar")
        if str(stored) != _checksum(arrays):
            raise InputError("meta.sha256: checksum mismatch, the qnet is corrupted")
    return QNet(layers=layers, input_frac=input_frac, meta=meta)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of an .npz without unpickling anything; InputError on an unreadable file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected an .npz file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise InputError(f"{path}: not a valid .npz file (not a zip archive)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise InputError(f"{path}: not a valid .npz file ({type(e).__name__}: {e})") from None


def load_qnet(path: str | Path, *, index_bits: int = DEFAULT_INDEX_BITS) -> QNet:
    """Load and validate a qnet file; raise InputError (naming the key or layer) on bad input."""
    return qnet_from_arrays(read_npz(path), index_bits=index_bits)


def save_qnet(qnet: QNet, path: str | Path, *, index_bits: int = 8) -> None:
    """Validate and write a qnet with its checksum, atomically. Same network -> same bytes."""
    qnet.validate(index_bits=index_bits)
    arrays = qnet.to_arrays()
    arrays["meta.sha256"] = np.array(_checksum(arrays))
    with atomic_path(path) as tmp:
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
    """Load an input batch X.npy as int16[batch, in_features]; InputError when it does not fit."""
    path = Path(path)
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a valid .npy file ({e})") from None
    if not isinstance(x, np.ndarray):
        raise InputError(f"{path}: expected a single .npy array, not an archive")
    return check_inputs(x, in_features, name=str(path))


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
