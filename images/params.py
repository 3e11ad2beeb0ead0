"""Engine parameters: what makes an engine besides its image, one typed dataclass per engine.

`EngineParams` holds what every engine takes (queue depth, accumulator width, widest layer);
each engine subclasses it with its own (`images.eie.EieParams`, `images.lockstep.
LockstepParams`), and its component takes exactly those fields as keywords. With the image they
determine the engine's Verilog (`images.image_digest(image, params)`). The registry
(`images.engines`) names each engine's class and its defaults per board.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class EngineParams:
    queue_depth: int = 8  # columns queued ahead of the sequencer(s)
    acc_bits: int = 32  # accumulator width
    max_width: int | None = None  # widest layer the activation buffers accept (a check)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_values(self, **values):
        """These parameters with `values` for the fields this engine has; the others are not
        its parameters and are left out."""
        return replace(self, **{k: v for k, v in values.items() if k in self.names()})

    def fitted(self, pes: int):
        """These parameters as an engine of `pes` PEs takes them (most: unchanged)."""
        return self
