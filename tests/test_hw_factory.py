"""hw.make_engine picks the engine by the image's type (the registry's component) with that
engine's own parameters; hw.blocks' output rule and signature."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from compress.synthetic import random_qnet
from hw import EngineConfigError, EngineSignature, engine_class, make_engine
from hw.blocks import post_process
from hw.eie import Engine
from hw.lockstep import LockstepEngine
from images import get
from images.eie import EieParams, build_rom
from images.lockstep import LockstepParams, build_lockstep

from .conftest import elaborate


@pytest.fixture(scope="module")
def qnet():
    return random_qnet((12, 8, 5), seed=3, density=0.5)


def test_factory_picks_engine_by_image_type(qnet):
    rom = build_rom(qnet, pes=2)
    ls = build_lockstep(qnet, 2)
    eie = make_engine(rom, EieParams(queue_depth=4))
    lock = make_engine(ls, LockstepParams(queue_depth=3, drain_share=2))
    assert type(eie) is Engine and eie.queue_depth == 4
    assert type(lock) is LockstepEngine and (lock.queue_depth, lock.drain_share) == (3, 2)
    assert engine_class(rom) is Engine and engine_class(ls) is LockstepEngine
    # both engines have the one signature
    assert eie.signature == lock.signature == EngineSignature(2)
    # a drain share is the lockstep engine's alone, a dense baseline the EIE engine's
    assert "drain_share" not in EieParams.names() and "sparse" not in LockstepParams.names()
    # each parameter dataclass is exactly what its component takes as keywords
    import inspect

    for params, cls in ((EieParams, Engine), (LockstepParams, LockstepEngine)):
        kw = set(inspect.signature(cls.__init__).parameters) - {"self", "memories"}
        assert kw - {"rom", "img"} == set(params.names()), cls
    for e in (eie, lock):
        elaborate(e)  # made to be inspected


def test_factory_refuses(qnet):
    with pytest.raises(TypeError, match="not an image of a known engine"):
        make_engine(object())
    with pytest.raises(TypeError, match="depth"):
        EieParams(depth=4)  # no such parameter
    with pytest.raises(TypeError, match="the eie engine takes EieParams, not LockstepParams"):
        make_engine(build_rom(qnet, pes=2), LockstepParams())
    with pytest.raises(TypeError, match="sparse"):
        LockstepParams(sparse=False)  # the lockstep engine has no dense baseline
    assert not get("lockstep").has_dense and get("eie").has_dense
    with pytest.raises(EngineConfigError, match="queue_depth must be an integer 1..64, not 0"):
        make_engine(build_lockstep(qnet, 2), LockstepParams(queue_depth=0))


def _rule(acc: np.ndarray, shift: int, relu: bool) -> np.ndarray:
    """docs/formats.md section 3 in numpy: round half up, saturate to int16, ReLU."""
    y = (acc + (1 << (shift - 1))) >> shift if shift else acc
    y = np.clip(y, -32768, 32767)
    return np.maximum(y, 0) if relu else y


@pytest.mark.parametrize("acc_bits,shift", [(17, 0), (24, 3), (32, 12), (32, 20)])
def test_post_process_matches_rule(acc_bits, shift):
    """The one Amaranth output rule (round_shift + saturate) on edge and random values."""
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    rng = np.random.default_rng(acc_bits + shift)
    edges = [lo, lo + 1, -1, 0, 1, hi - 1, hi, (32767 << shift), (32768 << shift) - 1,
             -(32768 << shift), -(32768 << shift) - 1, (1 << shift) >> 1]
    vals = np.array([v for v in edges if lo <= v <= hi]
                    + list(rng.integers(lo, hi + 1, 40)), dtype=np.int64)
    m = Module()
    acc = Signal(signed(acc_bits))
    y, y_relu = Signal(signed(16)), Signal(signed(16))
    m.d.comb += [y.eq(post_process(acc, shift, False)), y_relu.eq(post_process(acc, shift, True))]
    got, got_relu = [], []

    async def bench(ctx):
        for v in vals:
            ctx.set(acc, int(v))
            got.append(ctx.get(y))
            got_relu.append(ctx.get(y_relu))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert got == _rule(vals, shift, False).tolist()
    assert got_relu == _rule(vals, shift, True).tolist()
