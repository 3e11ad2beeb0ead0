# amaranth: UnusedElaboratable=no
"""The EIE engine's I/O: `io_lanes` words a beat on i_act and o_act, the cycles around the
compute (`images.eie.io_cycles`: load, output, preload, total and the period of a stream) and
the Verilator bench's one PE module for all PEs (`hw.simmem.share_pe_modules`).

Three depths: construction (refusals, the I/O cycle formula, the shared module's Verilog);
the Amaranth simulator (bit-exact and cycle-exact at 1, 2 and N lanes, with the corners: one
input word, one output word, vectors not a multiple of the lanes, stalls); the generated
Verilog in Verilator (`tb.fastbench`, randomised nets: bit-exact, `cycles` and the period of
back-to-back vectors as the formula).
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden
from compress.synthetic import random_inputs, random_qnet
from hw import EngineConfigError
from hw.eie import Engine
from hw.simmem import share_pe_modules
from images.eie import EieParams, EieSizes, build_rom, image_sizes, io_cycles
from tb import fastbench
from tb import sim as tbsim
from tb.pysim import run_engine


def test_lanes_refused_unless_a_divisor_of_the_pes():
    rom = build_rom(random_qnet((10, 6), seed=0, density=0.5), pes=4)
    for bad in (0, 3, 8, True, 2.0):
        with pytest.raises(EngineConfigError, match="io_lanes"):
            Engine(rom, io_lanes=bad)
    assert Engine(rom, io_lanes=None).lanes == 4 and Engine(rom, io_lanes=2).lanes == 2


def test_io_cycles_formula():
    rom = build_rom(random_qnet((37, 21, 9), seed=1, density=0.4), pes=4)
    io = io_cycles(rom, np.array([100, 200]), EieParams(io_lanes=2))
    assert io["load"] == 19 and io["output"] == 5  # ceil(37 / 2), ceil(9 / 2)
    assert io["preload"] == (6 + 1) + (3 + 1)  # ceil(21 / 4) and ceil(9 / 4) rows, +1 each
    assert io["total"].tolist() == [100 + 19 + 5 + 1, 200 + 19 + 5 + 1]
    assert (io["period"] - io["total"]).tolist() == [io["preload"]] * 2
    one = build_rom(random_qnet((5, 3), seed=1, density=0.4), pes=4)
    # one layer: PRELOAD1 still writes a row
    assert io_cycles(one, np.array([10]), EieParams(io_lanes=None))["preload"] == 2 + 2


def _net(seed, sizes, pes):
    q = random_qnet(sizes, seed=seed, density=0.35, shift=[6] * (len(sizes) - 1))
    return q, build_rom(q, pes=pes, rel_bits=4)


# (sizes, pes, lanes): corners: one input word, one output, vectors shorter than a beat or
# not a multiple of it, lanes = PEs
PYSIM = [((1, 5), 4, 4), ((9, 1), 4, 2), ((23, 17, 6), 4, 4), ((30, 13), 2, 2)]


@pytest.mark.parametrize("sizes,pes,lanes", PYSIM, ids=[f"{s}-{p}-{w}" for s, p, w in PYSIM])
def test_lanes_bit_exact_and_cycles_as_the_formula(sizes, pes, lanes):
    q, rom = _net(pes + lanes, sizes, pes)
    x = random_inputs(3, sizes[0], seed=lanes, density=0.6)
    y, c, lc = run_engine(Engine(rom, io_lanes=lanes), x)
    np.testing.assert_array_equal(y, golden(q, x))
    np.testing.assert_array_equal(c, io_cycles(rom, lc.sum(1), EieParams(io_lanes=lanes))["total"])
    y1, c1, lc1 = run_engine(Engine(rom, io_lanes=1), x)
    np.testing.assert_array_equal(lc1, lc)  # the compute does not depend on the lanes
    assert (c1 - c).tolist() == [(sizes[0] - -(-sizes[0] // lanes))
                                 + (sizes[-1] - -(-sizes[-1] // lanes))] * len(x)
    # stalls on both streams: still bit-exact; the loadable engine the same
    y2, _, _ = run_engine(Engine(rom, io_lanes=lanes, loadable=True), x, stall_in=0.4,
                          stall_out=0.4, seed=3)
    np.testing.assert_array_equal(y2, y)


def test_share_pe_modules_one_module_or_none():
    rom = build_rom(random_qnet((24, 17), seed=2, density=0.4), pes=4)
    params = EieParams(loadable=True)
    flat, mems = tbsim.shape_template(rom, params)
    shared, mems2 = tbsim.shape_template(rom, params, share_pes=True)
    assert mems == mems2
    for k in range(4):
        assert f"module \\engine.pe{k} " in flat
        assert f"  \\engine.pe0  pe{k} (" in shared  # every PE an instance of PE 0's module
    assert "module \\engine.pe1 " not in shared and "module \\engine.pe3.queue " not in shared
    assert shared.count("/*verilator no_inline_module*/") == 1
    assert '.NAME("pe*_entries")' in shared and '.NAME("pe0_entries")' not in shared
    # PEs that differ beyond their numbers are left alone
    head = "module \\engine.pe2 ("
    at = flat.index(";\n", flat.index(head)) + 2
    changed = flat[:at] + "  wire extra;\n" + flat[at:]
    assert share_pe_modules(changed) == changed
    assert share_pe_modules("module engine (a);\nendmodule\n") == "module engine (a);\nendmodule\n"


# through Verilator: per lanes, nets of 4 PEs and one layer count on one binary (memories sized
# for all of them); randomised nets and the corners (one input word, an output shorter than a
# beat)
FAST = {2: [(23, 17, 6), (9, 5, 2)], 4: [(1, 9), (40, 3)]}


def test_verilator_lanes_bit_exact_and_the_period(tmp_path, monkeypatch):
    """Outputs as the golden model's, `cycles` and the period of back-to-back vectors exactly
    `io_cycles`; with stalls still bit-exact. One compile per lanes (the shape's)."""
    monkeypatch.setenv("FASTBENCH_BUILD_DIR", str(tmp_path))
    rng = np.random.default_rng(5)
    for lanes, shapes in FAST.items():
        nets = [_net(int(rng.integers(1000)), sizes, 4) for sizes in shapes]
        need = [image_sizes(rom).as_dict() for _q, rom in nets]
        sizes = EieSizes(**{k: max(n[k] for n in need) for k in need[0]})
        params = EieParams(loadable=True, io_lanes=lanes, sizes=sizes)
        bins = set()
        for (q, rom), shape in zip(nets, shapes):
            x = random_inputs(4, shape[0], seed=int(rng.integers(1000)), density=0.6)
            r = fastbench.simulate(rom, x, params)
            bins.add(fastbench.build(rom, params).dir)
            np.testing.assert_array_equal(r.outputs, golden(q, x))
            io = io_cycles(rom, r.layer_cycles.sum(1), params)
            np.testing.assert_array_equal(r.cycles, io["total"])
            np.testing.assert_array_equal(r.period, io["period"][1:])
            rs = fastbench.simulate(rom, x, params, stall_in=0.3, stall_out=0.3, seed=2)
            np.testing.assert_array_equal(rs.outputs, r.outputs)
        assert len(bins) == 1
