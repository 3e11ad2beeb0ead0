# amaranth: UnusedElaboratable=no
"""The loadable EIE engine (per-layer constants in table memories, memories of given sizes) and
its memories filled at simulation time (`hw.simmem`, `$readmemh` through `+mems=DIR`).

Three depths: construction (the Verilog carries no memory contents; shape keys and sizes);
the Amaranth simulator (bit-exact and cycle-identical to the fixed engine on the corner cases
of tests/test_hw_engine.py); the generated Verilog under Icarus (cocotb, `tb.sim`) and
Verilator (`tb.fastbench`), two networks on one compiled simulator.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden
from compress.errors import InputError
from compress.synthetic import random_cnn, random_inputs, random_qnet
from hw import EngineConfigError
from hw.eie import Engine
from images.eie import EieParams, EieSizes, bucket, build_rom, has_conv, image_sizes, sizes_of
from tb import fastbench
from tb import sim as tbsim
from tb.pysim import run_engine

from .test_hw_engine import CASES, _inputs


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_loadable_matches_fixed_engine(case):
    _id, sizes, pes, density, qkw, ekw, stall = case
    qnet = random_qnet(sizes, seed=pes, density=density, **qkw)
    x = _inputs(5, sizes[0], seed=pes)
    rom = build_rom(qnet, pes=pes)
    y0, c0, l0 = run_engine(Engine(rom, **ekw), x, stall_in=stall, stall_out=stall, seed=pes)
    y1, c1, l1 = run_engine(Engine(rom, loadable=True, **ekw), x, stall_in=stall,
                            stall_out=stall, seed=pes)
    np.testing.assert_array_equal(y1, golden(qnet, x, acc_bits=ekw.get("acc_bits", 32)))
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(c1, c0)
    np.testing.assert_array_equal(l1, l0)


def test_sizes_checked_and_bucketed():
    rom = build_rom(random_qnet((40, 30, 10), seed=1, density=0.3), pes=4)
    need = image_sizes(rom)
    with pytest.raises(EngineConfigError, match="entries a PE"):
        Engine(rom, loadable=True, sizes=EieSizes(**{**need.as_dict(), "entries": 1}))
    with pytest.raises(EngineConfigError, match="loadable"):
        Engine(rom, sizes=need)
    assert [bucket(n) for n in (1, 16, 17, 100, 1000, 25088)] == [1, 16, 18, 104, 1024, 26624]
    assert all(bucket(n) >= n and bucket(n) <= n * 9 // 8 + 1 for n in range(1, 5000))


def test_loadable_refuses_conv_layers():
    """The loadable engine runs fully connected networks only: a CNN is refused up front (the
    engine, the image's sizes, the RTL build) and runs on the fixed engine (tests/test_hw_conv.py
    and tests/test_tb_conv.py; `tb run` picks the fixed engine for it)."""
    rom = build_rom(random_cnn((1, 6, 6), [(3, 3, 1, 1, 2)], [4], seed=2, density=0.5, shift=9),
                    pes=2)
    assert has_conv(rom) and not has_conv(build_rom(random_qnet((8, 4), seed=1), pes=2))
    with pytest.raises(EngineConfigError, match="fully connected networks only"):
        Engine(rom, loadable=True)
    with pytest.raises(EngineConfigError, match="one word a beat"):
        Engine(rom, io_lanes=2)
    with pytest.raises(ValueError, match="fully connected networks only"):
        sizes_of(rom, EieParams(loadable=True))
    with pytest.raises(InputError, match="fully connected networks only"):
        tbsim.build(rom, EieParams(loadable=True))
    Engine(rom)  # the fixed engine takes it


def _pair(pes=4, sizes=(24, 17, 9)):
    """Two networks of one shape: the same layer sizes, other weights, memories of one size."""
    nets = [random_qnet(sizes, seed=s, density=d, shift=[7, 3]) for s, d in ((1, 0.3), (2, 0.5))]
    roms = [build_rom(q, pes=pes, rel_bits=4) for q in nets]
    need = [image_sizes(r).as_dict() for r in roms]
    sizes = EieSizes(**{k: max(n[k] for n in need) for k in need[0]})
    return nets, roms, EieParams(loadable=True, sizes=sizes)


def test_verilog_has_no_contents_and_one_shape():
    nets, roms, params = _pair()
    keys = {tbsim.shape_key(r, params) for r in roms}
    assert len(keys) == 1
    (t0, m0), (t1, m1) = (tbsim.shape_template(r, params) for r in roms)
    assert t0 == t1 and m0 == m1  # the key's promise: the same Verilog
    assert "$readmemh" in t0 and "initial begin\n    pe0_" not in t0
    # the words of neither network are in it; a fixed engine's Verilog has them
    assert "pe0_entries[0] =" not in t0
    assert "pe0_entries[0] =" in tbsim.engine_verilog(roms[0], EieParams())
    # another rel_bits is another shape
    other = build_rom(nets[0], pes=4, rel_bits=5)
    assert tbsim.shape_key(other, params) not in keys


def test_icarus_two_networks_one_build(tmp_path, monkeypatch):
    monkeypatch.setenv("TB_BUILD_DIR", str(tmp_path))
    nets, roms, params = _pair()
    x = random_inputs(4, 24, seed=3, density=0.5)
    b0 = tbsim.build(roms[0], params, sim="icarus")
    r0 = tbsim.simulate(b0, x)
    np.testing.assert_array_equal(r0.outputs, golden(nets[0], x))

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(tbsim, "shape_template", no_conversion)
    monkeypatch.setattr(tbsim, "engine_verilog", no_conversion)
    b1 = tbsim.build(roms[1], params, sim="icarus")
    assert b1.dir == b0.dir
    r1 = tbsim.simulate(b1, x)
    np.testing.assert_array_equal(r1.outputs, golden(nets[1], x))
    monkeypatch.undo()
    monkeypatch.setenv("TB_BUILD_DIR", str(tmp_path))
    # cycles as the fixed engine's
    fixed = tbsim.simulate(tbsim.build(roms[1], EieParams(), sim="icarus"), x)
    np.testing.assert_array_equal(r1.cycles, fixed.cycles)


def test_verilator_two_networks_one_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTBENCH_BUILD_DIR", str(tmp_path))
    nets, roms, params = _pair(pes=3, sizes=(20, 9))
    x = random_inputs(6, 20, seed=4, density=0.6)
    fb0 = fastbench.build(roms[0], params)
    fb1 = fastbench.build(roms[1], params)
    assert fb1.dir == fb0.dir and fb1.build_seconds == 0.0
    for q, rom in zip(nets, roms):
        r = fastbench.simulate(rom, x, params)
        np.testing.assert_array_equal(r.outputs, golden(q, x))
