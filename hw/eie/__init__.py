"""The EIE engine (after Han et al., ISCA 2016): every PE with its own column queue.

`engine.Engine` (the engine of an `images.eie.RomImage`, N PEs and the front end),
`pe.PE` (one PE: pointer read, queue, slot sequencer, entry decode, MAC, drain), and the PE's
own stages `pointer.PointerRead`, `codebook.CodebookDecoder`, `mac.Mac`. What it shares with
the lockstep engine is in `hw.blocks`, `hw.frontend`, `hw.queue` and `hw.memory`; what it is
built from (its image, per-PE images, parameters and memory map) is in `images.eie`.
"""

from .engine import Engine

__all__ = ["Engine"]
