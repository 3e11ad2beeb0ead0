"""End-to-end: the generated Verilog in cocotb + Icarus, bit-exact against the golden model.

Each case is one cached build (build/tb/<key>/) and one simulator run over a batch of random
vectors (densities from 0 to 1, an all-zero vector first), so `make test` covers hundreds of
vectors in a few builds. ROMs are balanced (hidden rows permuted, the default of `build_rom`)
except in the `no-balance` case (plain interleaving). `make test-long` (LONG=1) adds a wider
random sweep.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden
from images.eie import build_rom
from compress.synthetic import random_inputs, random_qnet
from images.eie import EieParams, model_cycles
from tb.sim import build, simulate
from tests.conftest import long_tests


def _inputs(n, width, seed):
    rng = np.random.default_rng(seed)
    xs = [np.zeros((1, width), np.int16)]
    for d in rng.uniform(0, 1, n - 1):
        xs.append(random_inputs(1, width, seed=int(rng.integers(1 << 30)), density=float(d),
                                scale=int(rng.choice([256, 4096, 32767]))))
    return np.concatenate(xs)


# id, sizes, pes, weight density, qnet kwargs, rom kwargs, engine params, run kwargs, vectors
CASES = [
    ("1pe-1layer-stalls", (24, 10), 1, 0.5, {"shift": 6}, {}, {},
     {"stall_in": 0.3, "stall_out": 0.3}, 40),
    ("2pe-gaps-16-and-more-no-balance", (16, 90, 8), 2, 0.03, {"shift": [9, 2]},
     {"balance": False}, {}, {}, 60),
    ("3pe-dense-weights-3layers", (20, 14, 9, 6), 3, 1.0, {"shift": [10, 10, 4]}, {}, {},
     {"stall_out": 0.5}, 40),
    ("4pe-4layers-reset-mid", (30, 17, 12, 9, 5), 4, 0.35, {"shift": [9, 8, 7, 0]}, {}, {},
     {"reset_mid": True, "stall_in": 0.2}, 40),
    ("8pe-rows-fewer-than-pes-saturate", (40, 6, 3), 8, 0.6,
     {"weight_scale": 32767, "shift": [0, 0]}, {}, {}, {}, 40),
    ("16pe-acc-wrap-rel2", (48, 33, 20), 16, 0.3,
     {"weight_scale": 32767, "bias_scale": 1 << 30, "shift": [3, 62]}, {"rel_bits": 2},
     {"acc_bits": 20}, {"stall_in": 0.1, "stall_out": 0.1}, 40),
    ("4pe-dense-baseline", (20, 12, 7), 4, 0.3, {"shift": [8, 8]}, {}, {"sparse": False},
     {"stall_out": 0.3}, 20),
    ("3pe-depth1-zero-columns", (26, 15, 6), 3, 0.15, {"shift": [8, 5]}, {"rel_bits": 3},
     {"queue_depth": 1}, {}, 40),
    # the pipelined front end (the ECP5 boards' engine): small queues full under stalls, and
    # fewer rows than PEs with all-zero columns
    ("8pe-pipelined-depth2-stalls", (40, 23, 9), 8, 0.4, {"shift": [9, 6]}, {},
     {"pipelined": True, "queue_depth": 2}, {"stall_in": 0.2, "stall_out": 0.3}, 40),
    ("4pe-pipelined-rows-fewer-zero-columns", (30, 3, 5), 4, 0.1, {"shift": [8, 0]}, {},
     {"pipelined": True}, {}, 40),
    # the ULX3S's shape: 16 PEs, queues of 16, the relative index wider (fewer fillers)
    ("16pe-pipelined-depth16", (70, 40, 10), 16, 0.25, {"shift": [9, 7]}, {"rel_bits": 4},
     {"pipelined": True, "queue_depth": 16}, {}, 30),
    # four columns a cycle (the ULX3S's default, queues of 20); queues of 2 under stalls
    ("16pe-pipelined-4wide-depth20", (70, 40, 10), 16, 0.25, {"shift": [9, 7]}, {"rel_bits": 4},
     {"pipelined": True, "issue_width": 4, "queue_depth": 20}, {}, 30),
    ("8pe-pipelined-4wide-depth2-stalls", (40, 23, 9), 8, 0.4, {"shift": [9, 6]}, {},
     {"pipelined": True, "issue_width": 4, "queue_depth": 2},
     {"stall_in": 0.2, "stall_out": 0.3}, 40),
]


def _check(sizes, pes, density, qkw, rkw, pkw, runkw, n, seed):
    qnet = random_qnet(sizes, seed=seed, density=density, **qkw)
    x = _inputs(n, sizes[0], seed)
    params = EieParams(**pkw)
    b = build(build_rom(qnet, pes=pes, **rkw), params)
    r = simulate(b, x, seed=seed, **runkw)
    want = golden(qnet, x, acc_bits=params.acc_bits)
    bad = np.flatnonzero(np.any(r.outputs != want, axis=1))
    assert len(bad) == 0, f"{len(bad)}/{n} vectors differ, first {bad[:5]}"
    assert np.all(r.layer_cycles > 0)
    assert np.all(r.cycles >= r.layer_cycles.sum(axis=1) + sizes[0] + sizes[-1] - 1)
    if params.pipelined and params.queue_depth >= 2:
        # the pipelined engine's cycle model is exact (tests/test_hw_pipelined.py), also on
        # the Verilog
        np.testing.assert_array_equal(
            model_cycles(b.image, x, pipelined=True, queue_depth=params.queue_depth,
                         acc_bits=params.acc_bits, issue_width=params.issue_width),
            r.layer_cycles)
    return qnet, x, r


def test_cases_run_permuted_roms():
    """The cases above run balanced ROMs whose hidden rows are really permuted (equal rows, as
    with dense weights, may keep their places), and one plain interleaved ROM."""
    permuted = plain = 0
    for _id, sizes, pes, density, qkw, rkw, *_ in CASES:
        rom = build_rom(random_qnet(sizes, seed=pes + len(sizes), density=density, **qkw),
                        pes=pes, **rkw)
        moved = any(not np.array_equal(p, np.arange(len(p))) for p in rom.perm)
        permuted += moved and rom.balanced
        plain += not rom.balanced and not moved
    assert permuted >= 4 and plain == 1


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_engine_bit_exact_cocotb(case):
    _id, sizes, pes, density, qkw, rkw, pkw, runkw, n = case
    _check(sizes, pes, density, qkw, rkw, pkw, runkw, n, seed=pes + len(sizes))


def test_dense_engine_is_slower_and_sparse_skips_zero_activations():
    sizes = (32, 24, 8)
    qnet = random_qnet(sizes, seed=3, density=0.1, shift=[8, 6])
    x = np.concatenate([np.zeros((1, 32), np.int16), random_inputs(3, 32, seed=4, density=0.3)])
    rom = build_rom(qnet, pes=4)
    rs = simulate(build(rom, EieParams()), x)
    rd = simulate(build(rom, EieParams(sparse=False)), x)
    np.testing.assert_array_equal(rs.outputs, golden(qnet, x))
    np.testing.assert_array_equal(rd.outputs, golden(qnet, x))
    assert len(set(rd.layer_cycles[:, 0].tolist())) == 1  # dense: data-independent
    assert rs.layer_cycles[0, 0] < rs.layer_cycles[1:, 0].min()  # all-zero input: fastest
    assert rd.layer_cycles.sum(axis=1).min() > 2 * rs.layer_cycles.sum(axis=1).max()


@pytest.mark.skipif(not long_tests(), reason="long sweep: make test-long")
@pytest.mark.parametrize("seed", range(12))
def test_engine_random_sweep_long(seed):
    rng = np.random.default_rng(1000 + seed)
    layers = int(rng.integers(1, 5))
    sizes = tuple(int(v) for v in rng.integers(1, 80, layers + 1))
    pes = int(rng.choice([1, 2, 3, 4, 8, 16]))
    density = float(rng.choice([0.0, 0.02, 0.1, 0.3, 0.7, 1.0]))
    qkw = {"shift": [int(v) for v in rng.integers(0, 20, layers)],
           "weight_scale": int(rng.choice([100, 2000, 32767]))}
    rkw = {"rel_bits": int(rng.choice([1, 2, 4, 6]))}
    pkw = {"queue_depth": int(rng.choice([1, 2, 4, 8, 16])),
           "acc_bits": int(rng.choice([18, 24, 32, 48])), "sparse": bool(rng.random() < 0.8)}
    runkw = {"stall_in": float(rng.choice([0, 0.3])), "stall_out": float(rng.choice([0, 0.5])),
             "reset_mid": bool(rng.random() < 0.3)}
    _check(sizes, pes, density, qkw, rkw, pkw, runkw, 60, seed)


@pytest.mark.parametrize("seed", range(12 if long_tests() else 1))
def test_pipelined_engine_random_nets(seed):
    """The pipelined engine on random networks (shapes, PEs 4-16, densities, queue depths,
    stalls, two or four columns a cycle) against the golden model; one network in `make test`,
    12 in `make test-long`."""
    rng = np.random.default_rng(2000 + seed)
    layers = int(rng.integers(1, 4))
    sizes = tuple(int(v) for v in rng.integers(2, 70, layers + 1))
    pes = int(rng.choice([4, 8, 16]))
    density = float(rng.choice([0.02, 0.1, 0.3, 0.7]))
    qkw = {"shift": [int(v) for v in rng.integers(4, 12, layers)]}
    pkw = {"pipelined": True, "queue_depth": int(rng.choice([1, 2, 4, 8])),
           "sparse": bool(rng.random() < 0.8)}
    runkw = {"stall_in": float(rng.choice([0, 0.3])), "stall_out": float(rng.choice([0, 0.5]))}
    pkw["issue_width"] = int(rng.choice([2, 4]))  # drawn last: the other draws as before
    _check(sizes, pes, density, qkw, {}, pkw, runkw, 30, seed)


@pytest.mark.skipif(not long_tests(), reason="LeNet-300-100 on 8 PEs: make test-long")
def test_lenet_utilisation_8_pes_long():
    """The issue's target: MAC utilisation >= 80% with 8 PEs on the shipped LeNet-300-100 over
    sample digits, bit-exact; plain interleaving is measurably worse."""
    from tb.analysis import utilisation
    from tb.cli import load_model_and_inputs

    qnet, x, _labels, _notes, _mnist = load_model_and_inputs(None, None, 4)
    x = x[:10]
    util = {}
    for balance in (True, False):
        rom = build_rom(qnet, pes=8, balance=balance)
        r = simulate(build(rom, EieParams()), x)
        np.testing.assert_array_equal(r.outputs, golden(qnet, x))
        util[balance] = utilisation(qnet, rom, x, r.layer_cycles)[0]
    assert util[True] >= 0.80 and util[True] > util[False] + 0.05, util
