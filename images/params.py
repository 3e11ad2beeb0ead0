"""The engine parameters: one dataclass, passed with an image wherever an engine is made.

With the image they determine the engine's Verilog (`images.image_digest(image,
**params.as_dict())`). Which engine is made is decided by the image (`images.kind_of`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EngineParams:
    queue_depth: int = 8  # activation queue per PE (EIE) / column queue (lockstep)
    acc_bits: int = 32  # accumulator width
    sparse: bool = True  # False: the EIE engine's dense baseline (every weight an entry)
    max_width: int | None = None  # widest layer the activation buffers accept
    drain_share: int = 1  # lockstep only: PEs per output stage

    def as_dict(self) -> dict:
        return asdict(self)
