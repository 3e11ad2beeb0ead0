"""The engines in Amaranth, and `make_engine`, which makes the engine of an image.

* `hw.eie`: the EIE engine (a package: the engine, its PE and the PE's stages).
* `hw.lockstep`: the lockstep engine, the board's (one module: its PEs are lanes of one
  datapath, not blocks of their own).
* What the engines share: `hw.blocks` (the engine signature, limits, the output rule, LOAD/OUTPUT
  and counters, the slot sequencer), `hw.frontend` (the zero-skipping front ends), `hw.queue`
  (the register FIFOs), `hw.memory` (the one place memories are made).

Which component an image gets is the engine registry's answer (`images.engines`: the record's
`component`), with that engine's own parameter dataclass. The component checks its image and
parameters in a classmethod `check` before anything is made, so a refused engine leaves nothing
behind (no component that is never elaborated).
"""

from __future__ import annotations

import importlib

from images.engines import MAX_PES, engine_of
from images.params import EngineParams

from . import convfe  # noqa: F401 (adds the conv layers' front ends to FRONT_ENDS)
from .blocks import EngineConfigError, EngineSignature, check_fits

__all__ = ["MAX_PES", "EngineConfigError", "EngineSignature", "check_fits", "engine_class",
           "make_engine"]


def engine_class(image) -> type:
    """The component class of the engine `image` is for (the registry's `component`)."""
    component = engine_of(image).component
    if isinstance(component, type):
        return component
    module, _, name = component.partition(":")
    return getattr(importlib.import_module(module), name)


def make_engine(image, params: EngineParams | None = None, *, memories=None):
    """The engine of `image` with `params` (its engine's parameter dataclass; None: the
    dataclass' defaults) and `memories` (a `hw.memory.MemoryFactory`; None: the default).

    EngineConfigError, before anything is made, for what the engine cannot build.
    """
    rec = engine_of(image)
    params = rec.params() if params is None else params
    if type(params) is not rec.params:
        raise TypeError(f"the {rec.name} engine takes {rec.params.__name__}, "
                        f"not {type(params).__name__}")
    cls = engine_class(image)
    cls.check(image, **params.as_dict())
    return cls(image, memories=memories, **params.as_dict())
