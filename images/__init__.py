"""The engine images: what compress hands to hw (numpy only, no torch, no Amaranth).

* `images.csc`: the sparse column format (encode/decode) both images are made of.
* `images.placement`: which PE holds which row (balanced, longest-first, slot search).
* `images.eie`: the EIE engine's ROM image, its files and manifest (docs/rom-format.md).
* `images.lockstep`: the lockstep engine's image (docs/lockstep.md).
* `images.lanes`: a cycle model of lanes of PE pairs (docs/lanes.md: measured, not built).

`build_image(qnet, engine, pes, **params)` makes the image of either engine and `kind_of`
names the engine of an image; `EngineParams` are the engine's parameters and
`image_digest(image, **params)` is a hash of everything that determines the engine's Verilog
(the image and the engine parameters).
"""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass

import numpy as np

from compress.errors import InputError

from .eie import RomImage, build_rom
from .lockstep import LockstepImage, build_lockstep
from .params import EngineParams

__all__ = ["ENGINES", "DEFAULT_ENGINE", "build_image", "check_engine", "image_digest", "kind_of",
           "RomImage", "LockstepImage", "EngineParams"]

# The engines an image can be built for: "lockstep" (hw.lockstep, the board's default) and
# "eie" (hw.eie, per-PE queues).
ENGINES = ("lockstep", "eie")
DEFAULT_ENGINE = "lockstep"


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}: the engines are {', '.join(ENGINES)}")
    return engine


def build_image(qnet, engine: str, pes: int, **params):
    """The image of `qnet` for `pes` PEs of `engine`.

    params go to `build_rom` (eie: index_bits, rel_bits, balance) or `build_lockstep`
    (lockstep: index_bits, rel_bits, placement, perms, seed).
    """
    if check_engine(engine) == "eie":
        return build_rom(qnet, pes=pes, **params)
    return build_lockstep(qnet, pes, **params)


def kind_of(image) -> str:
    """The engine an image is for: "eie" or "lockstep"."""
    if isinstance(image, RomImage):
        return "eie"
    if isinstance(image, LockstepImage):
        return "lockstep"
    raise TypeError(f"not an image of a known engine: {type(image).__name__}")


def image_digest(image, **params) -> str:
    """sha256 (hex) of an image and engine parameters: equal digests, equal Verilog.

    The image is hashed field by field (dataclasses of ints, lists and numpy arrays, with their
    dtypes and shapes); `params` (engine parameters such as queue_depth, acc_bits) by name.
    """
    h = hashlib.sha256(type(image).__name__.encode())

    def feed(v):
        if is_dataclass(v) and not isinstance(v, type):
            h.update(b"D" + type(v).__name__.encode())
            for f in fields(v):
                h.update(f.name.encode())
                feed(getattr(v, f.name))
        elif isinstance(v, np.ndarray):
            h.update(f"A{v.dtype.str}{v.shape}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        elif isinstance(v, (list, tuple)):
            h.update(f"L{len(v)}".encode())
            for x in v:
                feed(x)
        elif isinstance(v, dict):
            h.update(f"M{len(v)}".encode())
            for k in sorted(v):
                feed(k)
                feed(v[k])
        elif isinstance(v, (bool, int, float, str, np.integer, np.floating)) or v is None:
            h.update(f"S{type(v).__name__}:{v!r}".encode())
        else:
            raise TypeError(f"cannot hash a {type(v).__name__} in an image")

    feed(image)
    if params:
        feed(dict(params))
    return h.hexdigest()
