"""The engines in Amaranth, and `make_engine`, which picks one by the type of its image.

* `hw.eie`: the EIE engine (a package: the engine, its PE and the PE's stages).
* `hw.lockstep`: the lockstep engine, the board's (one module: its PEs are lanes of one
  datapath, not blocks of their own).
* What both share: `hw.blocks` (the engine signature, limits, the output rule, LOAD/OUTPUT
  and counters, the slot sequencer), `hw.frontend` (zero-skipping front end), `hw.queue`
  (register FIFO), `hw.memory` (the one place memories are made).
"""

from __future__ import annotations

from .blocks import MAX_PES, EngineConfigError, EngineSignature, check_fits

__all__ = ["MAX_PES", "EngineConfigError", "EngineSignature", "check_fits", "engine_class",
           "make_engine"]


def engine_class(image) -> type:
    """The engine class for `image`: each engine names its image type (`image_type`)."""
    from .eie import Engine
    from .lockstep import LockstepEngine

    for cls in (Engine, LockstepEngine):
        if isinstance(image, cls.image_type):
            return cls
    raise TypeError(f"not an image of a known engine: {type(image).__name__}")


def make_engine(image, **params):
    """The engine of `image` (`RomImage` -> EIE, `LockstepImage` -> lockstep) with `params`.

    params: the engine parameters (queue_depth, acc_bits, sparse, max_width, drain_share) and
    `memories`. Each engine takes the ones it has; a parameter the other engine alone has is
    not used, except a dense baseline (sparse=False), which only the EIE engine has.
    """
    import inspect

    cls = engine_class(image)
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(params) - {"queue_depth", "acc_bits", "sparse", "max_width", "drain_share",
                             "memories"}
    if unknown:
        raise TypeError(f"unknown engine parameters: {', '.join(sorted(unknown))}")
    if "sparse" not in names and params.get("sparse", True) is not True:
        raise EngineConfigError(f"the {cls.__name__} has no dense baseline (sparse=False)")
    return cls(image, **{k: v for k, v in params.items() if k in names})
