"""The images package: build_image, image_digest, the memory map read from an image (checked
against the memories the engines make when they are elaborated), and the tb build cache key (it
follows every source that generates the Verilog, the placement search included)."""

from __future__ import annotations

import numpy as np
import pytest

from compress.synthetic import random_qnet
from hw.memory import MemoryFactory
from images import build_image, engine_of, get, image_digest, memory_specs

from .conftest import elaborate

SHAPES = [((20, 8, 4), 2, 0.5), ((40, 6, 3), 8, 0.6), ((24, 10), 1, 0.3), ((30, 17, 9, 5), 3, 0.2)]


@pytest.mark.parametrize("engine", ["eie", "lockstep"])
@pytest.mark.parametrize("sizes, pes, density", SHAPES)
def test_memory_map_is_the_engines(engine, sizes, pes, density):
    """memory_specs(image) lists exactly the memories the engine makes (names, kinds, widths,
    depths, init words, ports, order), without making one: the memories an elaborated engine
    asks its memory factory for are these, in this order."""
    from tb.sim import engine_for

    class Recording(MemoryFactory):
        def __init__(self):
            self.made = []

        def __call__(self, m, spec):
            self.made.append(spec)
            return super().__call__(m, spec)

    img = build_image(random_qnet(sizes, density=density, seed=pes), engine, pes)
    assert engine_of(img).name == engine
    for acc_bits in (32, 20):
        params = get(engine).params(acc_bits=acc_bits, queue_depth=2)
        eng = engine_for(img, params)
        assert memory_specs(img, params) == eng.memory_specs
        eng.memories = factory = Recording()
        for pe in getattr(eng, "pe_blocks", []):
            pe.memories = factory
        elaborate(eng)
        by_name = sorted(memory_specs(img, params), key=lambda s: s.name)
        assert sorted(factory.made, key=lambda s: s.name) == by_name


def test_image_digest_follows_image_and_params():
    q = random_qnet((20, 8, 4), density=0.5, seed=1)
    a = build_image(q, "eie", 2)
    assert image_digest(a) == image_digest(build_image(q, "eie", 2))
    assert image_digest(a) != image_digest(build_image(q, "eie", 3))
    assert image_digest(a) != image_digest(build_image(q, "eie", 2, balance=False))
    eie = get("eie")
    assert image_digest(a, eie.params(queue_depth=4)) != image_digest(a, eie.params())
    b = build_image(q, "lockstep", 2)
    assert image_digest(b) != image_digest(a)
    with pytest.raises(Exception, match="unknown engine"):
        build_image(q, "nope", 2)


def test_build_key_follows_every_verilog_source(tmp_path, monkeypatch):
    """The tb build cache key changes when any source that generates the Verilog changes: the
    engines (hw/), the image formats and the row placement search (images/placement.py: a
    stale engine.v after an edit of the placement search was the bug)."""
    import shutil

    import tb.sim as S

    repo = tmp_path / "repo"
    for d in ("hw", "images"):
        shutil.copytree(S.REPO / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(S, "REPO", repo)
    monkeypatch.setattr(S, "SOURCE_DIRS", (repo / "hw", repo / "images"))
    img = build_image(random_qnet((20, 8, 4), density=0.5, seed=1), "lockstep", 2,
                      placement="lpt")
    params = get("lockstep").params
    key = S.build_key(img, params(), False)
    assert S.build_key(img, params(), False) == key
    assert S.build_key(img, params(queue_depth=3), False) != key
    for rel in ("images/placement.py", "images/lockstep.py", "images/csc.py", "hw/memory.py"):
        f = repo / rel
        text = f.read_text()
        f.write_text(text + "\n# edited\n")
        assert S.build_key(img, params(), False) != key, rel
        f.write_text(text)
    assert S.build_key(img, params(), False) == key


def _encoded_fillers(bits, rel_bits):
    from images.csc import encode_csc

    v, _, _ = encode_csc(np.asarray(bits, dtype=np.uint8), rel_bits=rel_bits)
    return len(v) - int(np.count_nonzero(bits))


@pytest.mark.parametrize("rows, cols, density, rel_bits, seed",
                         [(38, 200, 0.06, 4, 0), (40, 60, 0.1, 3, 1), (25, 80, 0.04, 2, 2)])
def test_order_for_fillers_lowers_the_encoded_fillers(rows, cols, density, rel_bits, seed):
    """Sparse PE rows whose gaps exceed 2**rel_bits - 1: the order found is a permutation,
    the same on every call, and encode_csc then needs clearly fewer fillers."""
    from images.placement import _fillers, order_for_fillers

    bits = np.random.default_rng(seed).random((rows, cols)) < density
    before = _encoded_fillers(bits, rel_bits)
    assert _fillers(bits, rel_bits) == before  # the fast count is encode_csc's
    assert before > 0
    order = order_for_fillers(bits, rel_bits)
    assert sorted(order.tolist()) == list(range(rows))
    assert np.array_equal(order, order_for_fillers(bits.copy(), rel_bits))
    after = _encoded_fillers(bits[order], rel_bits)
    assert _fillers(bits[order], rel_bits) == after
    assert after < 0.8 * before


def test_order_for_fillers_keeps_an_order_without_fillers():
    from images.placement import order_for_fillers

    bits = np.random.default_rng(3).random((20, 30)) < 0.5
    assert _encoded_fillers(bits, 4) == 0
    assert np.array_equal(order_for_fillers(bits, 4), np.arange(20))
    assert np.array_equal(order_for_fillers(np.zeros((0, 5), bool), 4), np.zeros(0, int))


def test_balanced_eie_image_has_fewer_fillers_and_the_same_network():
    """The EIE image orders each PE's rows for fewer fillers (rel_bits 4 and 3) without changing
    what it computes: decode_rom gives the logical network back, the PEs' non-zeros are those
    of the balanced placement without the order search, and the golden model of the physical
    network agrees with the logical one."""
    from compress.golden import run_layers
    from images.eie import decode_rom, physical_qnet
    from images.placement import place_balanced

    q = random_qnet((120, 90, 30, 10), density=[0.05, 0.08, 0.3], seed=4)
    for rel_bits in (4, 3):
        new = build_image(q, "eie", 4, rel_bits=rel_bits)
        old_perm = [place_balanced(layer.index, 4, rel_bits=rel_bits, filler_order=False)
                    for layer in q.layers[:-1]]
        for i, p in enumerate(old_perm):  # the same rows in every PE, another order inside
            for k in range(4):
                assert sorted(new.perm[i][k::4].tolist()) == sorted(p[k::4].tolist())
        old_fill = sum(
            _encoded_fillers(q.layers[i].index[p[k::4]] != 0, rel_bits)
            for i, p in enumerate(old_perm) for k in range(4))
        new_fill = sum(sum(rl.fillers) for rl in new.layers)
        assert new_fill < old_fill
        assert decode_rom(new).equals(q)
        x = np.random.default_rng(5).integers(-200, 3000, (6, 120)).astype(np.int16)
        assert np.array_equal(run_layers(physical_qnet(new), x)[-1], run_layers(q, x)[-1])


def test_model_cycles_shape_queue_depth_and_empty_input():
    """The cycle model: one row of per-layer cycles per input; an all-zero input costs layer 0
    one cycle per group of N columns plus the fixed 7; a deeper queue is never slower, and
    depth 1 is slower than 8 on a dense enough network."""
    from images.eie import model_cycles

    q = random_qnet((50, 24, 6), density=[0.3, 0.4], seed=7)
    rom = build_image(q, "eie", 4)
    x = np.random.default_rng(8).integers(0, 2000, (5, 50)).astype(np.int16)
    x[0] = 0
    c = {d: model_cycles(rom, x, queue_depth=d) for d in (1, 2, 8, 16)}
    assert c[8].shape == (5, 2) and c[8].dtype.kind == "i"
    assert c[8][0, 0] == -(-50 // 4) + 7
    for a, b in ((1, 2), (2, 8), (8, 16)):
        assert np.all(c[b] <= c[a])
    assert c[1].sum() > c[8].sum()


@pytest.mark.parametrize("seed", range(6))
def test_swap_totals_are_the_column_sums_of_swap_delta(seed):
    """The sparse evaluation of every swap inside a PE (what order_for_fillers uses) gives
    exactly the dense one's column sums, for every pair qa < qb: random shapes, densities from
    empty to dense, reaches 2..16 (trailing gaps, rows without non-zeros, a single row)."""
    from images.placement import _PE

    rng = np.random.default_rng(seed)
    for _ in range(25):
        rows, cols = int(rng.integers(1, 45)), int(rng.integers(1, 40))
        bits = rng.random((rows, cols)) < rng.choice([0.0, 0.03, 0.1, 0.3, 0.8])
        pe = _PE(bits, int(rng.integers(1, 5)), np.int16)
        dense = pe.swap_delta(np.arange(cols)).sum(axis=-1, dtype=np.int64)
        upper = np.arange(rows)[:, None] < np.arange(rows)[None, :]
        assert np.array_equal(np.where(upper, pe.swap_totals(), 0), np.where(upper, dense, 0))


def test_eie_image_of_a_large_sparse_network_takes_seconds():
    """784-512-512-10 at 4 % (42k non-zeros, 8 PEs): the balanced placement with its filler
    order and the relative index width search took 23 s of CPU when every swap was evaluated
    over all columns; about 1.3 s now (docs/engine.md, the placement's cost against size)."""
    import time

    q = random_qnet((784, 512, 512, 10), density=[0.04, 0.04, 0.26], seed=1)
    t = time.process_time()
    img = build_image(q, "eie", 8)
    assert time.process_time() - t < 8.0
    assert img.rel_bits == 5
