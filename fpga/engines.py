"""Which engine the board runs: the lockstep engine (default) or the queue-based EIE engine.

* ``lockstep``: `hw.lockstep.LockstepEngine` on a `images.lockstep.LockstepImage`
  (`images.build_image(qnet, "lockstep", pes)`): all PEs on the same column, the entries of PE
  pairs in shared 16-bit lane memories read at one address (the four SPRAMs), one shared
  column-pointer ROM.
  The engine that fits 8 PEs on the iCE40UP5K (docs/fpga.md, section 1).
* ``eie``: `hw.eie.Engine` on a `images.eie.RomImage` (`images.build_image(qnet, "eie", pes)`):
  every PE with its own queue, entries and pointer banks. 2 PEs fit the UP5K.

The image decides the engine (`images.kind_of`), so everything downstream of the image (board core,
resources, SPRAM plan, weight load, simulation cache) takes just the image; the memories come
from the image too (`images.memmap.memory_specs`), without making an engine.
"""

from __future__ import annotations

from images import EngineParams, kind_of

# PEs per output stage of the lockstep engine on the board: one stage per 2 PEs saves 4 of 8
# stages; per 4 PEs would save 2 more for ~105 more DRAIN cycles per LeNet inference (1,197
# against 1,092 between results back to back) and only ~11 LCs since the drain's rework.
BOARD_DRAIN_SHARE = 2


def board_params(img, *, queue_depth: int = 8, acc_bits: int = 32,
                 drain_share: int = BOARD_DRAIN_SHARE) -> EngineParams:
    """The board's engine parameters for `img`.

    `queue_depth` only applies to the EIE engine (the lockstep engine keeps its own short
    column queue of 2), `drain_share` only to the lockstep engine (rounded down to a power of
    two <= pes).
    """
    if kind_of(img) == "eie":
        return EngineParams(queue_depth=queue_depth, acc_bits=acc_bits)
    share = 1 << (min(drain_share, img.pes).bit_length() - 1)
    return EngineParams(queue_depth=2, acc_bits=acc_bits, drain_share=share)


def board_engine(img, params: EngineParams, *, memories=None):
    """The engine component for `img` with `params` (`board_params`) and a memory factory."""
    from hw import make_engine

    return make_engine(img, memories=memories, **params.as_dict())
