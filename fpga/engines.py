"""Which engine the board runs: the lockstep engine (default) or the queue-based EIE engine.

* ``lockstep``: `hw.lockstep.LockstepEngine` on a `compress.lockstep.LockstepImage`
  (`build_lockstep(qnet, pes)`): all PEs on the same column, the entries of PE pairs in shared
  16-bit lane memories read at one address (the four SPRAMs), one shared column-pointer ROM.
  The engine that fits 8 PEs on the iCE40UP5K (docs/fpga.md, section 1).
* ``eie``: `hw.engine.Engine` on a `compress.rom.RomImage` (`build_rom(qnet, pes=...)`): every
  PE with its own queue, entries and pointer banks. 2 PEs fit the UP5K.

The image decides the engine (`kind_of`), so everything downstream of the image (board core,
resources, SPRAM plan, weight load, simulation cache) takes just the image.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass

import numpy as np
from amaranth.hdl import Elaboratable

from compress.errors import InputError

KINDS = ("lockstep", "eie")
DEFAULT_KIND = "lockstep"


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(f"unknown engine {kind!r}: the engines are {', '.join(KINDS)}")
    return kind


def build_image(qnet, kind: str, pes: int):
    """The ROM image of `qnet` for `pes` PEs of engine `kind`."""
    check_kind(kind)
    if kind == "eie":
        from compress.rom import build_rom

        return build_rom(qnet, pes=pes)
    from compress.lockstep import build_lockstep

    return build_lockstep(qnet, pes)


def kind_of(img) -> str:
    from compress.rom import RomImage

    if isinstance(img, RomImage):
        return "eie"
    if type(img).__name__ == "LockstepImage":  # compress.lockstep, imported only when used
        return "lockstep"
    raise TypeError(f"not a ROM image of a known engine: {type(img).__name__}")


# PEs per output stage of the lockstep engine on the board: one stage per 4 PEs costs
# 3 x rows more DRAIN cycles per layer (~160 per LeNet inference) and saves 6 of 8 stages.
BOARD_DRAIN_SHARE = 4


def make_engine(img, *, memories=None, acc_bits: int = 32, queue_depth: int = 8,
                drain_share: int = BOARD_DRAIN_SHARE):
    """The engine component for `img`.

    `queue_depth` only applies to the EIE engine (the lockstep engine keeps its own short
    column queue), `drain_share` only to the lockstep engine.
    """
    if kind_of(img) == "eie":
        from hw.engine import Engine

        return Engine(img, queue_depth=queue_depth, acc_bits=acc_bits, memories=memories)
    from hw.lockstep import LockstepEngine

    share = 1 << (min(drain_share, img.pes).bit_length() - 1)  # a power of two, <= pes
    return LockstepEngine(img, acc_bits=acc_bits, memories=memories, drain_share=share)


def silence(obj, _seen=None) -> None:
    """Mark an engine (and the sub-blocks it made in __init__) as deliberately not elaborated.

    Used when only `memory_specs` are wanted: Amaranth would otherwise warn about unused
    elaboratables at exit.
    """
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Elaboratable):
        obj._MustUse__silence = True
        for v in vars(obj).values():
            for item in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(item, Elaboratable):
                    silence(item, seen)


def memory_specs(img, **engine_kw):
    """Every memory the engine of `img` would create (the engine is never elaborated)."""
    eng = make_engine(img, **engine_kw)
    silence(eng)
    return eng.memory_specs


def image_digest(img) -> str:
    """A deterministic hash of a ROM image (dataclasses of ints, lists and numpy arrays)."""
    h = hashlib.sha256(type(img).__name__.encode())

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
            raise TypeError(f"cannot hash a {type(v).__name__} in a ROM image")

    feed(img)
    return h.hexdigest()
