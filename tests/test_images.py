"""The images package: build_image, image_digest, the memory map read from an image (checked
against the engines' own memories), and the tb build cache key (it follows every source that
generates the Verilog, the placement search included)."""

from __future__ import annotations

import numpy as np
import pytest

from compress.synthetic import random_qnet
from images import EngineParams, build_image, image_digest, kind_of
from images.memmap import memory_specs

from .conftest import never_elaborated

SHAPES = [((20, 8, 4), 2, 0.5), ((40, 6, 3), 8, 0.6), ((24, 10), 1, 0.3), ((30, 17, 9, 5), 3, 0.2)]


@pytest.mark.parametrize("engine", ["eie", "lockstep"])
@pytest.mark.parametrize("sizes, pes, density", SHAPES)
def test_memory_map_is_the_engines(engine, sizes, pes, density):
    """memory_specs(image) lists exactly the memories the engine makes (names, kinds, widths,
    depths, init words, ports, order), without making one."""
    from tb.sim import engine_for

    img = build_image(random_qnet(sizes, density=density, seed=pes), engine, pes)
    assert kind_of(img) == engine
    for acc_bits in (32, 20):
        eng = engine_for(img, EngineParams(acc_bits=acc_bits, queue_depth=2))
        never_elaborated(eng)  # made for its memory list only
        assert memory_specs(img, acc_bits=acc_bits) == eng.memory_specs


def test_image_digest_follows_image_and_params():
    q = random_qnet((20, 8, 4), density=0.5, seed=1)
    a = build_image(q, "eie", 2)
    assert image_digest(a) == image_digest(build_image(q, "eie", 2))
    assert image_digest(a) != image_digest(build_image(q, "eie", 3))
    assert image_digest(a) != image_digest(build_image(q, "eie", 2, balance=False))
    assert image_digest(a, queue_depth=4) != image_digest(a, queue_depth=8)
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
    key = S.build_key(img, EngineParams(), False)
    assert S.build_key(img, EngineParams(), False) == key
    assert S.build_key(img, EngineParams(queue_depth=2), False) != key
    for rel in ("images/placement.py", "images/lockstep.py", "images/csc.py", "hw/memory.py"):
        f = repo / rel
        text = f.read_text()
        f.write_text(text + "\n# edited\n")
        assert S.build_key(img, EngineParams(), False) != key, rel
        f.write_text(text)
    assert S.build_key(img, EngineParams(), False) == key
