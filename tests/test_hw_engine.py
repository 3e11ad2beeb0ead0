# amaranth: UnusedElaboratable=no
"""The whole engine in the Amaranth simulator against the golden model (fast cases).

The cocotb bench on the generated Verilog (tests/test_tb_engine.py) covers the sweep; these
cases check the Amaranth description directly, the memory factory and the parameter checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden
from images.eie import build_rom
from compress.synthetic import random_inputs, random_qnet
from hw import EngineConfigError, check_fits
from hw.eie import Engine
from hw.memory import MemoryFactory
from tb.pysim import run_engine

from .conftest import elaborate


def _inputs(n, width, seed):
    """A mix of densities from 0 to 1, the first vector all zero."""
    rng = np.random.default_rng(seed)
    xs = [np.zeros((1, width), np.int16)]
    for d in rng.uniform(0, 1, n - 1):
        xs.append(random_inputs(1, width, seed=int(rng.integers(1 << 30)), density=float(d)))
    return np.concatenate(xs)


CASES = [
    # id, sizes, pes, density, extra qnet kwargs, engine kwargs, stall
    ("1pe-1layer", (9, 5), 1, 0.5, {}, {}, 0.0),
    ("3pe-2layers-stalls", (20, 13, 7), 3, 0.3, {"shift": 8}, {}, 0.4),
    ("4pe-gaps-fillers", (12, 70, 6), 4, 0.04, {"shift": [9, 0]}, {}, 0.0),
    ("16pe-rows-fewer-than-pes", (30, 9, 17, 4), 16, 0.4, {"shift": [8, 0, 40]},
     {"queue_depth": 2}, 0.0),
    ("2pe-dense-baseline", (15, 11, 6), 2, 0.5, {"shift": 6}, {"sparse": False}, 0.2),
    ("5pe-depth1-wrap", (18, 10, 10, 7, 5), 5, 0.6,
     {"weight_scale": 32767, "bias_scale": 1 << 30, "shift": [0, 3, 62, 0]},
     {"queue_depth": 1, "acc_bits": 20}, 0.0),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_engine_bit_exact(case):
    _id, sizes, pes, density, qkw, ekw, stall = case
    qnet = random_qnet(sizes, seed=pes, density=density, **qkw)
    x = _inputs(6, sizes[0], seed=pes)
    acc_bits = ekw.get("acc_bits", 32)
    y, cycles, lcs = run_engine(Engine(build_rom(qnet, pes=pes), **ekw), x,
                                stall_in=stall, stall_out=stall, seed=pes)
    np.testing.assert_array_equal(y, golden(qnet, x, acc_bits=acc_bits))
    assert np.all(cycles > lcs.sum(axis=1)) and np.all(lcs > 0)
    if ekw.get("sparse", True) is False:
        assert len(set(cycles.tolist())) == 1 or stall  # dense work does not depend on data


def test_saturation_and_wrap_are_exercised():
    """The wrap case above really wraps and saturates (otherwise it proves nothing)."""
    qnet = random_qnet((18, 10, 10, 7, 5), seed=5, density=0.6, weight_scale=32767,
                       bias_scale=1 << 30, shift=[0, 3, 62, 0])
    x = _inputs(6, 18, seed=5)
    assert not np.array_equal(golden(qnet, x, acc_bits=20), golden(qnet, x, acc_bits=32))
    from compress.golden import run_layers

    outs = run_layers(qnet, x, acc_bits=20)
    assert any(np.any(np.abs(o.astype(np.int64)) == 32767) or np.any(o == -32768) for o in outs)


class _CountingFactory(MemoryFactory):
    def __init__(self):
        self.seen = []

    def __call__(self, m, spec):
        self.seen.append(spec)
        return super().__call__(m, spec)


def test_every_memory_goes_through_the_factory():
    qnet = random_qnet((20, 13, 7), seed=1, density=0.3, shift=8)
    x = _inputs(3, 20, seed=2)
    fac = _CountingFactory()
    eng = Engine(build_rom(qnet, pes=3), memories=fac)
    y, _, _ = run_engine(eng, x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    names = sorted(s.name for s in fac.seen)
    assert names == sorted(s.name for s in eng.memory_specs)
    for k in range(3):
        for what in ("entries", "ptr_even", "ptr_odd", "bias", "codebook", "acc0", "acc1", "act"):
            assert f"pe{k}.{what}" in names
    roms = [s for s in fac.seen if s.kind == "rom"]
    assert all(s.write_ports == 0 and s.read_ports == 1 for s in roms)


def test_interface_is_the_agreed_one():
    eng = Engine(build_rom(random_qnet((9, 6, 4), seed=0, density=0.5), pes=2))
    sig = eng.signature.members
    assert set(sig.keys()) >= {"i_act", "o_act", "cycles", "layer_cycles", "busy"}
    assert eng.layer_cycles.shape().length == 2
    assert len(eng.cycles) == 32
    elaborate(eng)  # made to be inspected


def test_refuses_what_does_not_fit():
    qnet = random_qnet((40, 12, 5), seed=0, density=0.5)
    rom = build_rom(qnet, pes=4)
    with pytest.raises(EngineConfigError, match=r"l0: 40 inputs exceed .* 32 words"):
        check_fits(rom, max_width=32)
    with pytest.raises(EngineConfigError, match="acc_bits"):
        Engine(rom, acc_bits=8)
    with pytest.raises(EngineConfigError, match="queue_depth"):
        Engine(rom, queue_depth=0)
    with pytest.raises(EngineConfigError, match="pes must be 1..64"):
        check_fits(build_rom(qnet, pes=65))


@pytest.mark.parametrize("index_bits,rel_bits", [(2, 4), (5, 3), (8, 7)])
def test_engine_other_index_and_rel_bits(index_bits, rel_bits):
    qnet = random_qnet((25, 14, 6), seed=index_bits, density=0.3, index_bits=index_bits,
                       shift=[8, 4])
    x = _inputs(4, 25, seed=index_bits)
    rom = build_rom(qnet, pes=3, index_bits=index_bits, rel_bits=rel_bits)
    y, _, _ = run_engine(Engine(rom), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
