"""Which engine the board runs: the lockstep engine (default) or the queue-based EIE engine.

* ``lockstep``: `hw.lockstep.LockstepEngine` on a `images.lockstep.LockstepImage`
  (`images.build_image(qnet, "lockstep", pes)`): all PEs on the same column, the entries of PE pairs in shared
  16-bit lane memories read at one address (the four SPRAMs), one shared column-pointer ROM.
  The engine that fits 8 PEs on the iCE40UP5K (docs/fpga.md, section 1).
* ``eie``: `hw.engine.Engine` on a `images.eie.RomImage` (`images.build_image(qnet, "eie", pes)`): every
  PE with its own queue, entries and pointer banks. 2 PEs fit the UP5K.

The image decides the engine (`images.kind_of`), so everything downstream of the image (board core,
resources, SPRAM plan, weight load, simulation cache) takes just the image.
"""

from __future__ import annotations

from amaranth.hdl import Elaboratable

from images import kind_of

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
