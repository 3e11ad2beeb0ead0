"""Every size limit the file readers enforce, in one place.

Files are untrusted: each reader checks what a file *declares* (shapes, counts, code tables,
zip member sizes) against these limits before it allocates anything, and refuses with
`InputError` (exit status 2) naming the limit and how to raise it. The defaults take a
VGG-16-sized model (138M parameters, fc6 alone 4096 x 25088 = 102.8M weights; 3.3M values in
its largest map, 15.5G multiply-accumulates per 224x224 image).

Raise a limit for one run with the environment variable ``DEEPCOMP_LIMITS``, a comma-separated
list of ``name=value`` (``value`` an integer, ``1e9`` or ``2**30`` style)::

    DEEPCOMP_LIMITS="max_weights=1e9,max_dim=4194304" python -m compress unpack big.dcz --out q.npz

or from Python with `override`, which applies at once and, used as a context manager, restores
the previous values on exit::

    from compress import limits
    with limits.override(max_weights=10**9):
        qnet = load_qnet("big.npz")

`get()` returns the values in force (overrides, then the environment, then the defaults).
The table of limits and what each reader refuses is in docs/limits.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass

from .errors import InputError

ENV = "DEEPCOMP_LIMITS"


@dataclass(frozen=True)
class Limits:
    # Networks (qnet, .dcz, ROM images).
    max_weights: int = 1 << 28  # total weights (sum of out * in over the layers): 268M
    max_dim: int = 1 << 20  # any one layer dimension (out, in) or input width: 1M
    max_layers: int = 1024  # layers in a network
    # Conv networks (qnet version 2, .dcz version 3): the values of one example's map entering
    # or leaving a layer (padded input, output before pooling), and the multiply-accumulates of
    # one example through the whole network. VGG-16 on 224x224: 3.3M values, 15.5G MACs.
    max_map: int = 1 << 24  # 16.7M
    max_macs: int = 1 << 36  # 68.7G
    max_code_table: int = 1 << 20  # symbols in one Huffman code table of a .dcz
    # .dcz ratio bound: a file may declare at most dcz_free_weights plus this many weights per
    # byte it holds (a real pruned layer costs bits per non-zero and per run of zeros; 1024 a
    # byte is ~60x sparser than Deep Compression's sparsest VGG-16 layer).
    dcz_weights_per_byte: int = 1024
    dcz_free_weights: int = 1 << 16
    # Zip archives (.npz: qnets, checkpoints, data files).
    max_member_bytes: int = 1 << 30  # declared uncompressed size of one zip member: 1 GiB
    max_npz_bytes: int = 1 << 31  # declared uncompressed size of all members read: 2 GiB
    max_members: int = 1 << 16  # members in one archive
    max_meta_bytes: int = 1 << 12  # a qnet's optional meta.* member; larger ones are not read
    # Arrays (.npy inputs, labels; each .npz member too).
    max_array_bytes: int = 1 << 30  # one array's data: 1 GiB
    max_batch: int = 1 << 20  # rows of an input batch or labels
    # Text files (JSON/TOML configs, ROM manifests).
    max_config_bytes: int = 1 << 20  # 1 MiB
    # ROM images.
    max_pes: int = 1 << 12  # processing elements in a ROM image
    # ONNX import (a user's float network, trained further on the CPU).
    max_onnx_nodes: int = 1 << 12  # nodes of the graph (the protobuf may hold at most 16
    # messages and 64 other entries per node: the parse costs ~80x the bytes of tiny messages)
    max_rank: int = 16  # axes of a tensor, or entries of a shape value, in an ONNX graph
    max_activations: int = 1 << 20  # values one example makes in all the layers together
    max_ops: int = 1 << 31  # multiply-adds and pooling comparisons of one example


DEFAULTS = Limits()
# Weights, biases and data values the tools train on: finite and at most this large in magnitude
# (the engine's values are int16 with 32-bit accumulators; float32 training of larger values
# overflows within a layer or two).
MAX_ABS_VALUE = float(1 << 31)
MAX_VALUE_BITS = 64  # a limit past 2**64 means "none"; larger numbers only cost time
NAMES = tuple(f.name for f in dataclasses.fields(Limits))
_overrides: dict[str, int] = {}
_env_cache: tuple[str, dict[str, int]] | None = None


def _parse_value(name: str, text: str, source: str) -> int:
    t = text.strip().replace("_", "")
    if not t.isascii():  # int() and float() take full-width and other Unicode digits
        raise InputError(f"{source}: {name}={text!r} is not a whole number (ASCII digits)")
    m = re.fullmatch(r"(\d+)\s*\*\*\s*(\d+)", t)
    try:
        if m:
            base, exp = int(m[1]), int(m[2])
            # bound the work before computing: 2**99999999999 would take minutes and GBs
            if base > 1 and exp * math.log2(base) > MAX_VALUE_BITS:
                raise InputError(f"{source}: {name}={text!r} is over 2**{MAX_VALUE_BITS}")
            v = base ** exp
        elif re.fullmatch(r"[0-9]+", t):
            v = int(t)
        else:
            f = float(t)
            if not f.is_integer():
                raise ValueError
            v = int(f)
        if v > 1 << MAX_VALUE_BITS:
            raise InputError(f"{source}: {name}={text!r} is over 2**{MAX_VALUE_BITS}")
    except InputError:
        raise
    except (ValueError, OverflowError):
        raise InputError(f"{source}: {name}={text!r} is not a whole number") from None
    if v < 1:
        raise InputError(f"{source}: {name}={text!r} must be >= 1")
    return v


def parse(spec: str, *, source: str = ENV) -> dict[str, int]:
    """``"name=value,name=value"`` -> {name: value}; InputError naming a bad entry."""
    out = {}
    for item in spec.replace(";", ",").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise InputError(f"{source}: expected name=value, got {item.strip()!r}")
        if name not in NAMES:
            raise InputError(f"{source}: unknown limit {name!r} (known: {', '.join(NAMES)})")
        if name in out:
            raise InputError(f"{source}: {name} is given twice")
        out[name] = _parse_value(name, value, source)
    return out


def _from_env() -> dict[str, int]:
    global _env_cache
    spec = os.environ.get(ENV, "")
    if _env_cache is None or _env_cache[0] != spec:
        _env_cache = (spec, parse(spec))
    return _env_cache[1]


def get() -> Limits:
    """The limits in force: `override` values, then DEEPCOMP_LIMITS, then the defaults."""
    return dataclasses.replace(DEFAULTS, **{**_from_env(), **_overrides})


class override:
    """Set limits now (``limits.override(max_weights=10**9)``); as a context manager, the
    previous values come back on exit."""

    def __init__(self, **values):
        for name, v in values.items():
            if name not in NAMES:
                raise TypeError(f"unknown limit {name!r} (known: {', '.join(NAMES)})")
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"limit {name} must be an integer >= 1, not {v!r}")
        self._saved = dict(_overrides)
        _overrides.update(values)

    def __enter__(self):
        return get()

    def __exit__(self, *exc):
        _overrides.clear()
        _overrides.update(self._saved)
        return False


def reset() -> None:
    """Drop every `override` (the environment and the defaults remain)."""
    _overrides.clear()


def how_to_raise(name: str) -> str:
    return f"raise it with {ENV}={name}=N"


def check(name: str, value: int, what: str) -> None:
    """InputError unless `value` <= the limit `name`; the message names `what` and the limit."""
    limit = getattr(get(), name)
    if value > limit:
        raise InputError(f"{what}: {value:,} exceeds the limit {name}={limit:,} "
                         f"({how_to_raise(name)})")
