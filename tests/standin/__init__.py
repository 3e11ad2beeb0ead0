"""A stand-in third engine, to prove that an engine is a package and one registration.

`image` is its image (numpy only: the network's codebook weights as dense matrices), builder,
parameters, memory map and cycle model; `engine` its Amaranth component (one multiply-accumulate,
row by row, using the LOAD/OUTPUT and counters every engine shares, `hw.blocks.ActIO`).
`register()` is the one call that makes it an engine of the house (tests/test_engine_registry.py):
nothing else in the repository names it.
"""

from __future__ import annotations

from images.engines import Defaults, Engine, register, unregister

from . import image

NAME = "standin"


def record() -> Engine:
    return Engine(
        name=NAME, protocol_id=7,
        summary="a stand-in: one multiply-accumulate, every weight in turn (tests/standin)",
        image_type=image.DenseImage, build=image.build, memory_map=image.memory_map,
        component="tests.standin.engine:DenseEngine", params=image.DenseParams,
        defaults={"sim": Defaults(image.DenseParams(), pes=1)},
        cycle_model=image.cycle_model, logic_of=image.logic_of, padded=lambda img: img,
        title=lambda p: "stand-in engine")


def register_standin() -> Engine:
    return register(record())


def unregister_standin() -> None:
    unregister(NAME)
