"""The quantized network file ("qnet"): a NumPy .npz of integer layers (docs/formats.md
sections 2 and 7).

The interchange between the compression tooling, the golden model and the hardware. Version 1
holds a chain of fully connected layers; version 2 adds convolution layers (`kind` "conv", with
kernel, stride, padding and a fused max pooling) and the shape of one example (`input_shape`,
[in_0] or [C, H, W]). A writer uses version 1 whenever it can hold the network (every layer
fully connected, a flat input), so version 1 files keep their bytes.

The loader parses and validates every key, dtype, shape and range, and raises `InputError`
naming the key or layer at fault; nothing is unpickled. Keys starting with ``meta.`` are ours
and optional: ``meta.sha256`` is a checksum of the network written by `save_qnet` and verified
on load when present (a user's hand-made qnet need not carry it).
"""

from __future__ import annotations

import dataclasses
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

QNET_VERSION = 2  # the newest version; `QNet.version` is the one a network is written in
READ_VERSIONS = (1, 2)
DEFAULT_INDEX_BITS = 4
MAX_SHIFT = 62  # int64 golden arithmetic; wider shifts are meaningless for 16-bit outputs
KINDS = ("fc", "conv")
GEOMETRY = ("kernel", "stride", "padding", "pool")  # the conv-only keys of a layer
_MAX_KIND_CHARS = 8  # a kind string longer than this is refused before it is read


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer: y = post(bias + codebook[index] @ a) for "fc"; for "conv" the same weights
    slide over the input map (docs/formats.md section 7) and a max pooling may follow.

    `index` is [out, in] for fc and [out_ch, in_ch * kh * kw] for conv (PyTorch's
    ``weight.reshape(out_ch, -1)``); the geometry fields mean something for conv layers only.
    """

    codebook: np.ndarray  # int16[K], codebook[0] == 0
    index: np.ndarray  # uint8[out, in], 0 = pruned
    bias: np.ndarray  # int32[out]
    shift: int
    relu: bool
    kind: str = "fc"
    kernel: tuple[int, int] = (1, 1)  # [kh, kw]
    stride: tuple[int, int] = (1, 1)  # [sh, sw]
    padding: tuple[int, int] = (0, 0)  # [ph, pw] zeros on each side
    pool: tuple[int, int] = (1, 1)  # max-pool window [qh, qw] (stride = window); (1, 1): none

    @property
    def in_features(self) -> int:
        """Columns of the index: the fan-in of one output (in_ch * kh * kw for conv)."""
        return int(self.index.shape[1])

    @property
    def out_features(self) -> int:
        """Rows of the index: outputs (fc) or output channels (conv)."""
        return int(self.index.shape[0])

    @property
    def is_conv(self) -> bool:
        return self.kind == "conv"

    def weights(self) -> np.ndarray:
        """The integer weight matrix codebook[index], int64[out, in]."""
        return self.codebook.astype(np.int64)[self.index]

    def with_bias(self, bias: np.ndarray) -> "Layer":
        """The same layer with another bias (geometry and all else kept)."""
        return dataclasses.replace(self, bias=bias)

    def equals(self, other: "Layer") -> bool:
        return (
            np.array_equal(self.codebook, other.codebook)
            and np.array_equal(self.index, other.index)
            and np.array_equal(self.bias, other.bias)
            and self.shift == other.shift
            and self.relu == other.relu
            and self.kind == other.kind
            and (not self.is_conv or _geometry(self) == _geometry(other))
        )


def _geometry(layer: Layer) -> tuple:
    return tuple(tuple(int(v) for v in getattr(layer, g)) for g in GEOMETRY)


@dataclass(eq=False)
class QNet:
    layers: list[Layer]
    input_frac: int = 8
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    # One example's shape: (in_0,) or (C, H, W). None: the first layer's inputs, flat.
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.input_shape is None and self.layers and self.layers[0].kind == "fc":
            self.input_shape = (self.layers[0].in_features,)
        elif self.input_shape is not None:
            self.input_shape = tuple(int(d) for d in self.input_shape)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def version(self) -> int:
        """1 when every layer is fully connected and the input is flat, else 2."""
        flat = self.input_shape is not None and len(self.input_shape) == 1
        return 1 if flat and all(ly.kind == "fc" for ly in self.layers) else 2

    @property
    def has_conv(self) -> bool:
        return any(ly.is_conv for ly in self.layers)

    @property
    def in_features(self) -> int:
        """Values of one example: prod(input_shape), the width of the engine's input rows."""
        if self.input_shape is None:
            return self.layers[0].in_features
        return math.prod(self.input_shape)

    @property
    def out_features(self) -> int:
        """Values of the last layer's output, flattened."""
        if not self.layers[-1].is_conv:
            return self.layers[-1].out_features
        return math.prod(self.layer_shapes()[-1][1])

    def layer_shapes(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(input shape, output shape) of each layer, one example: (n,) or (C, H, W)."""
        return chain_shapes(self.layers, self.input_shape)

    def equals(self, other: "QNet") -> bool:
        return (
            self.input_frac == other.input_frac
            and self.num_layers == other.num_layers
            and self.input_shape == other.input_shape
            and all(a.equals(b) for a, b in zip(self.layers, other.layers))
        )

    def validate(self, *, index_bits: int = DEFAULT_INDEX_BITS) -> "QNet":
        validate_layers(self.layers, index_bits=index_bits, input_shape=self.input_shape)
        return self

    def require_fc(self, what: str = "the engine") -> "QNet":
        """InputError unless every layer is fully connected (what `what` runs; an input_shape
        of [C, H, W] is the same flat input to it)."""
        for i, ly in enumerate(self.layers):
            if ly.kind != "fc":
                raise InputError(f"l{i}: conv layers are not supported by {what} yet "
                                 f"(convolution layers run on the EIE engine and in the "
                                 f"golden model)")
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The qnet's keys and values exactly as stored (without checksum), in `version`."""
        v = self.version
        arrays: dict[str, np.ndarray] = {
            "version": np.array(v, dtype=np.int64),
            "num_layers": np.array(self.num_layers, dtype=np.int64),
            "input_frac": np.array(self.input_frac, dtype=np.int64),
        }
        if v >= 2:
            arrays["input_shape"] = np.array(self.input_shape, dtype=np.int64)
        for i, layer in enumerate(self.layers):
            arrays[f"l{i}.codebook"] = np.ascontiguousarray(layer.codebook, dtype=np.int16)
            arrays[f"l{i}.index"] = np.ascontiguousarray(layer.index, dtype=np.uint8)
            arrays[f"l{i}.bias"] = np.ascontiguousarray(layer.bias, dtype=np.int32)
            arrays[f"l{i}.shift"] = np.array(layer.shift, dtype=np.int64)
            arrays[f"l{i}.relu"] = np.array(bool(layer.relu))
            if v >= 2:
                arrays[f"l{i}.kind"] = np.array(layer.kind)
                if layer.is_conv:
                    for g in GEOMETRY:
                        arrays[f"l{i}.{g}"] = np.array(getattr(layer, g), dtype=np.int64)
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


def validate_layers(layers: list[Layer], *, index_bits: int = DEFAULT_INDEX_BITS,
                    input_shape: tuple[int, ...] | None = None) -> None:
    """Check the ranges of docs/formats.md sections 2 and 7; raise InputError naming the layer
    and key. `input_shape` None: the first layer's inputs, flat."""
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
        _check_geometry(layer, k)
    chain_shapes(layers, input_shape)


def _check_geometry(layer: Layer, k: str) -> None:
    """A layer's kind and, for conv, its kernel, stride, padding and pool pairs."""
    if layer.kind not in KINDS:
        raise InputError(f"{k}.kind: must be 'fc' or 'conv', not {layer.kind!r}")
    if not layer.is_conv:
        return
    for g, lo in (("kernel", 1), ("stride", 1), ("padding", 0), ("pool", 1)):
        v = getattr(layer, g)
        if not isinstance(v, (tuple, list)) or len(v) != 2 or not all(
                isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
            raise InputError(f"{k}.{g}: expected two integers, not {v!r}")
        if min(int(x) for x in v) < lo:
            raise InputError(f"{k}.{g}: {[int(x) for x in v]}: each must be >= {lo}")
        limits.check("max_dim", max(int(x) for x in v), f"{k}.{g}: {[int(x) for x in v]}, value")


def chain_shapes(layers: list[Layer], input_shape: tuple[int, ...] | None
                 ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape, output shape) of each layer for one example, checking that the shapes
    chain (docs/formats.md section 7), that every derived size is at least 1 and that the maps
    and the work per example stay within `compress.limits` (max_map, max_macs).
    InputError naming the layer and key otherwise."""
    if input_shape is None:
        if layers and layers[0].is_conv:
            raise InputError("input_shape: missing (l0 is a conv layer: the input must be "
                             "[C, H, W])")
        input_shape = (layers[0].in_features,) if layers else (1,)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise InputError(f"input_shape: {list(shape)}: expected [in_0] or [C, H, W], each >= 1")
    limits.check("max_map", math.prod(shape), f"input_shape: {list(shape)}, values")
    out: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    macs = 0
    for i, layer in enumerate(layers):
        k = f"l{i}"
        if not layer.is_conv:
            need = math.prod(shape)
            if layer.in_features != need:
                if i == 0:
                    src = f"input_shape {list(shape)} has {need} values"
                elif len(shape) == 1:
                    src = f"l{i - 1} has {need} outputs"
                else:
                    src = f"l{i - 1} gives {'x'.join(map(str, shape))} = {need} values"
                raise InputError(f"{k}.index: {layer.in_features} inputs but {src}")
            macs += layer.out_features * need
            new = (layer.out_features,)
        else:
            if len(shape) != 3:
                src = "input_shape" if i == 0 else f"l{i - 1} (fully connected)"
                raise InputError(f"{k}.kind: a conv layer takes a [C, H, W] map, but {src} "
                                 f"gives {list(shape)}")
            c, h, w = shape
            (kh, kw), (sh, sw), (ph, pw), (qh, qw) = (
                tuple(int(v) for v in getattr(layer, g)) for g in GEOMETRY)
            if layer.in_features != c * kh * kw:
                raise InputError(f"{k}.index: {layer.in_features} columns but in_ch * kh * kw "
                                 f"= {c} * {kh} * {kw} = {c * kh * kw}")
            hp, wp = h + 2 * ph, w + 2 * pw
            limits.check("max_map", c * hp * wp, f"{k}: padded input {c}x{hp}x{wp}, "
                         "values")
            if hp < kh or wp < kw:
                raise InputError(f"{k}.kernel: {kh}x{kw} does not fit the padded input "
                                 f"{hp}x{wp} (output size < 1)")
            ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
            oc = layer.out_features
            limits.check("max_map", oc * ho * wo, f"{k}: output map {oc}x{ho}x{wo}, "
                         "values")
            if ho // qh < 1 or wo // qw < 1:
                raise InputError(f"{k}.pool: window {qh}x{qw} is larger than the {ho}x{wo} "
                                 f"map (output size < 1)")
            macs += oc * layer.in_features * ho * wo
            new = (oc, ho // qh, wo // qw)
        limits.check("max_macs", macs, f"{k}: multiply-accumulates per example (layers "
                     f"l0..{k})")
        out.append((shape, new))
        shape = new
    return out


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
    version = _check_version(_scalar_int(arrays, "version"))
    num_layers = _scalar_int(arrays, "num_layers")
    if num_layers < 1:
        raise InputError(f"num_layers: must be >= 1, not {num_layers}")
    limits.check("max_layers", num_layers, "num_layers")
    input_frac = _scalar_int(arrays, "input_frac")
    kinds = _read_kinds(arrays, version, num_layers)
    expected = _qnet_keys(num_layers, version, kinds)
    for key in expected:
        if key not in arrays:
            raise InputError(f"{key}: missing key")
    extra = sorted(k for k in arrays if k not in expected and not k.startswith("meta."))
    if extra:
        raise InputError(_unexpected(extra[0], num_layers, kinds))
    layers = [
        Layer(
            codebook=arrays[f"l{i}.codebook"],
            index=arrays[f"l{i}.index"],
            bias=arrays[f"l{i}.bias"],
            shift=_scalar_int(arrays, f"l{i}.shift"),
            relu=_scalar_bool(arrays, f"l{i}.relu"),
            **_geometry_from_arrays(arrays, i, kinds[i]),
        )
        for i in range(num_layers)
    ]
    input_shape = _input_shape_value(arrays["input_shape"]) if version >= 2 else None
    validate_layers(layers, index_bits=index_bits, input_shape=input_shape)
    meta = {k: v for k, v in arrays.items() if k.startswith("meta.")}
    if "meta.sha256" in meta:
        stored = meta["meta.sha256"]
        if stored.dtype.kind != "U" or stored.shape != ():
            raise InputError("meta.sha256: expected a string scalar")
        if str(stored) != _checksum(arrays):
            raise InputError("meta.sha256: checksum mismatch, the qnet is corrupted")
    return QNet(layers=layers, input_frac=input_frac, meta=meta, input_shape=input_shape)


_LAYER_KEYS = ("codebook", "index", "bias", "shift", "relu")


def _qnet_keys(num_layers: int, version: int = 1, kinds: list[str] | None = None) -> list[str]:
    """The keys of a qnet of num_layers layers, in the order they are checked."""
    head = ["version", "num_layers", "input_frac"] + (["input_shape"] if version >= 2 else [])
    keys = []
    for i in range(num_layers):
        keys += [f"l{i}.{f}" for f in _LAYER_KEYS]
        if version >= 2:
            keys.append(f"l{i}.kind")
            if kinds is not None and kinds[i] == "conv":
                keys += [f"l{i}.{g}" for g in GEOMETRY]
    return head + keys


# ---------------------------------------------------------------------------------------------
# Version 2 keys: the input shape, each layer's kind and a conv layer's geometry


def _check_version(version: int) -> int:
    if version not in READ_VERSIONS:
        raise InputError(f"version: unsupported qnet version {version} (this reader takes "
                         f"{' and '.join(map(str, READ_VERSIONS))})")
    return version


def _unexpected(key: str, num_layers: int, kinds: list[str]) -> str:
    layer, _, name = key.partition(".")
    if name in GEOMETRY and layer[1:].isdigit() and int(layer[1:]) < num_layers:
        return f"{key}: unexpected key ({layer} is a fully connected layer; {name} is for " \
               "conv layers)"
    if key in ("input_shape",) or name == "kind":
        return f"{key}: unexpected key (a version 1 qnet has none; version 2 adds it)"
    return f"{key}: unexpected key (num_layers is {num_layers})"


def _kind_value(a: np.ndarray, key: str) -> str:
    if a.shape != () or a.dtype.kind != "U":
        raise InputError(f"{key}: expected a string scalar 'fc' or 'conv', got "
                         f"{a.dtype}{list(a.shape)}")
    v = str(a)
    if v not in KINDS:
        raise InputError(f"{key}: must be 'fc' or 'conv', not {v[:_MAX_KIND_CHARS]!r}")
    return v


def _read_kinds(arrays, version: int, num_layers: int) -> list[str]:
    if version < 2:
        return ["fc"] * num_layers
    kinds = []
    for i in range(num_layers):
        key = f"l{i}.kind"
        if key not in arrays:
            raise InputError(f"{key}: missing key")
        kinds.append(_kind_value(arrays[key], key))
    return kinds


def _pair_value(a: np.ndarray, key: str) -> tuple[int, int]:
    if a.shape != (2,) or a.dtype.kind not in "iu":
        raise InputError(f"{key}: expected int64[2], got {a.dtype}{list(a.shape)}")
    return int(a[0]), int(a[1])


def _geometry_from_arrays(arrays, i: int, kind: str) -> dict:
    if kind != "conv":
        return {"kind": kind}
    return {"kind": kind, **{g: _pair_value(arrays[f"l{i}.{g}"], f"l{i}.{g}") for g in GEOMETRY}}


def _input_shape_value(a: np.ndarray) -> tuple[int, ...]:
    if a.ndim != 1 or a.shape[0] not in (1, 3) or a.dtype.kind not in "iu":
        raise InputError(f"input_shape: expected int64[1] ([in_0]) or int64[3] ([C, H, W]), got "
                         f"{a.dtype}{list(a.shape)}")
    shape = tuple(int(v) for v in a)
    if min(shape) < 1:
        raise InputError(f"input_shape: {list(shape)}: every size must be >= 1")
    return shape


def _check_v2_header(h: "NpyHeader", key: str) -> None:
    """A version 2 key's .npy header, before its data are read (they are all tiny)."""
    if key.endswith(".kind"):
        if h.shape != () or h.dtype.kind != "U" or h.dtype.itemsize > 4 * _MAX_KIND_CHARS:
            raise InputError(f"{key}: expected a string scalar 'fc' or 'conv', got "
                             f"{h.describe()}")
    elif key == "input_shape":
        if len(h.shape) != 1 or h.shape[0] not in (1, 3) or h.dtype.kind not in "iu":
            raise InputError(f"input_shape: expected int64[1] ([in_0]) or int64[3] "
                             f"([C, H, W]), got {h.describe()}")
    elif h.shape != (2,) or h.dtype.kind not in "iu":
        raise InputError(f"{key}: expected int64[2], got {h.describe()}")


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
        version = _check_version(_scalar_int(arrays, "version"))
        num_layers = _scalar_int(arrays, "num_layers")
        if num_layers < 1:
            raise InputError(f"num_layers: must be >= 1, not {num_layers}")
        limits.check("max_layers", num_layers, "num_layers")
        kinds = ["fc"] * num_layers
        if version >= 2:  # the shape and the kinds decide which other keys a layer has
            for key in ["input_shape"] + [f"l{i}.kind" for i in range(num_layers)]:
                _check_v2_header(head(key), key)
                arrays[key] = z.read(key, headers[key])
            kinds = _read_kinds(arrays, version, num_layers)
        keys = _qnet_keys(num_layers, version, kinds)
        expected = set(keys)
        extra = sorted(k for k in z.members if k not in expected and not k.startswith("meta."))
        if extra:
            raise InputError(_unexpected(extra[0], num_layers, kinds))
        for key in keys:
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
        for key in keys[3:]:
            if key in arrays:
                continue
            if key.endswith((".shift", ".relu")):
                scalar(key)
            else:
                if key.rpartition(".")[2] in GEOMETRY:
                    _check_v2_header(headers[key], key)
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
