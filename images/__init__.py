"""The engine images: what compress hands to hw (numpy only, no torch, no Amaranth).

* `images.engines`: the engine registry, one record per engine (what it is called, its image,
  memory map, component, parameters, defaults per board, cycle model) and the PE limit.
* `images.csc`: the sparse column format (encode/decode) every image is made of.
* `images.layers`: layer kinds, what a qnet layer of each kind gives an image.
* `images.placement`: which PE holds which row (balanced, longest-first, slot search).
* `images.eie`: the EIE engine's ROM image, its files and manifest (docs/rom-format.md), its
  parameters and memory map.
* `images.lockstep`: the lockstep engine's image (docs/lockstep.md), parameters, memory map.
* `images.memmap`: `MemorySpec`, how a memory of an engine is described.
* `images.lanes`: a cycle model of lanes of PE pairs (docs/lanes.md: measured, not built).

`build_image(qnet, engine, pes, **options)` makes the image of an engine, `engine_of(image)`
names the engine of an image, `memory_specs(image, params)` lists its engine's memories and
`image_digest(image, params)` is a hash of everything that determines the engine's Verilog
(the image and the engine parameters).
"""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass

import numpy as np

from .engines import (MAX_PES, SIM_ENGINE, Engine, build_image, check_pes, engine_of, get,
                      memory_specs, names, registered)
from .params import EngineParams

__all__ = ["MAX_PES", "SIM_ENGINE", "Engine", "EngineParams", "build_image", "check_pes",
           "engine_of", "get", "image_digest", "memory_specs", "names", "registered"]


def image_digest(image, params: EngineParams | None = None) -> str:
    """sha256 (hex) of an image and engine parameters: equal digests, equal Verilog.

    The image is hashed field by field (dataclasses of ints, lists and numpy arrays, with their
    dtypes and shapes); `params` (the engine's parameter dataclass) likewise.
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
    if params is not None:
        feed(params)
    return h.hexdigest()
