"""Random networks at scale through the RTL, one Verilator binary per shape (tests/
test_random_networks.py; docs/verification.md).

A *shape* fixes everything that is logic in the engine's Verilog: the engine, PEs, layer sizes,
shifts, ReLUs, index_bits, rel_bits, the engine parameters and, for the lockstep engine, the
codebooks (its codebook is a table of constants, not a memory). The networks of a shape differ in
what lives in memories: which weights are pruned (densities 0..1, all-zero columns), their
codebook indices, the biases and, for the EIE engine, the codebook values. So that their memories
have one depth, every image is padded to the shape's bound: an EIE PE's entries to
sum_i in_i * rows_i (a column never holds more entries than rows, fillers included) with words
past the last pointer, which are never read; the lockstep slots to sum_i in_i * rows_per_pe_i
with (v = 0, z = 0) slots at the end of the last column, which reach no accumulator (they cost
cycles when that column is non-zero, nothing else).

`shape_key` hashes those fields of the image (and the engine sources): equal keys share a
binary without a conversion. `check_template` converts a network and compares its Verilog,
memories taken out, with the binary's: the tests do it for the second network of each shape.

The corner mix (`SHAPES`) is that of tests/test_tb_engine.py and tests/test_degenerate.py:
1 to 16 PEs, one-word memories (1x1 on 8 PEs, 1xN, Nx1), fewer rows than PEs, gaps longer than
2**rel_bits - 1 (fillers), every weight pruned, dense weights, all-zero columns and inputs,
saturation (weights and inputs at +-32767, shift 0), accumulator wrap (acc_bits 20, biases near
2**30, shift 62), queue depth 1, stalls on both streams and a reset in the middle of an
inference.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.qnet import Layer, QNet
from images import EngineParams, build_image, get
from images.eie import EieParams
from images.lockstep import LockstepParams

from . import fastbench
from .sim import source_hash as _source_hash

# The engine sources as this process loaded them: hashed once, so that files edited during a
# long run do not key the loaded code's Verilog under their new hash.
source_hash = functools.cache(_source_hash)


@dataclass(frozen=True)
class Shape:
    name: str
    engine: str  # a registered engine (images.engines)
    pes: int
    sizes: tuple[int, ...]
    shifts: tuple[int, ...]
    rel_bits: int = 4
    params: EngineParams | None = None  # the engine's parameters (None: its own defaults)
    weight_scale: int = 2000  # codebook values in -scale..scale (+-32767: saturation)
    bias_scale: int = 1 << 16
    relu_last: bool = False
    run: dict = field(default_factory=dict, hash=False)  # fastbench.run keywords
    image: dict = field(default_factory=dict, hash=False)  # build_image keywords

    def __post_init__(self):
        if self.params is None:
            object.__setattr__(self, "params", get(self.engine).params())


_LS = LockstepParams()  # the lockstep engine's own default queue (2)
SHAPES = [
    Shape("eie-1pe-1layer-stalls", "eie", 1, (24, 10), (6,),
          run={"stall_in": 0.3, "stall_out": 0.3}),
    Shape("eie-2pe-gaps-no-balance", "eie", 2, (16, 90, 8), (9, 2),
          image={"balance": False}),
    Shape("eie-3pe-3layers", "eie", 3, (20, 14, 9, 6), (10, 10, 4), run={"stall_out": 0.5}),
    Shape("eie-4pe-4layers-reset-mid", "eie", 4, (30, 17, 12, 9, 5), (9, 8, 7, 0),
          run={"reset_mid": True, "stall_in": 0.2}),
    Shape("eie-8pe-fewer-rows-saturate", "eie", 8, (40, 6, 3), (0, 0), weight_scale=32767),
    Shape("eie-16pe-acc-wrap-rel2", "eie", 16, (48, 33, 20), (3, 62), rel_bits=2,
          params=EieParams(acc_bits=20), weight_scale=32767, bias_scale=1 << 30,
          run={"stall_in": 0.1, "stall_out": 0.1}),
    Shape("eie-3pe-depth1-rel3", "eie", 3, (26, 15, 6), (8, 5), rel_bits=3,
          params=EieParams(queue_depth=1)),
    Shape("eie-8pe-1x1", "eie", 8, (1, 1), (4,)),
    Shape("eie-8pe-1x6-6x1", "eie", 8, (1, 6, 1), (4, 3)),
    Shape("eie-3pe-1-1-1", "eie", 3, (1, 1, 1), (2, 0), relu_last=True),
    Shape("ls-1pe-1layer-stalls", "lockstep", 1, (24, 10), (6,), params=_LS,
          run={"stall_in": 0.3, "stall_out": 0.3}),
    Shape("ls-2pe-gaps-interleave", "lockstep", 2, (16, 90, 8), (9, 2), params=_LS,
          image={"placement": "interleave"}),
    Shape("ls-3pe-3layers", "lockstep", 3, (20, 14, 9, 6), (10, 10, 4), params=_LS,
          run={"stall_out": 0.5}),
    Shape("ls-4pe-4layers-reset-mid-lpt", "lockstep", 4, (30, 17, 12, 9, 5), (9, 8, 7, 0),
          params=_LS, image={"placement": "lpt"}, run={"reset_mid": True, "stall_in": 0.2}),
    Shape("ls-8pe-fewer-rows-saturate", "lockstep", 8, (40, 6, 3), (0, 0), params=_LS,
          weight_scale=32767),
    Shape("ls-16pe-acc-wrap-rel2-share4", "lockstep", 16, (48, 33, 20), (3, 62), rel_bits=2,
          params=LockstepParams(acc_bits=20, queue_depth=2, drain_share=4), weight_scale=32767,
          bias_scale=1 << 30, run={"stall_in": 0.1, "stall_out": 0.1}),
    Shape("ls-3pe-depth1-rel3", "lockstep", 3, (26, 15, 6), (8, 5), rel_bits=3,
          params=LockstepParams(queue_depth=1)),
    Shape("ls-8pe-1x1", "lockstep", 8, (1, 1), (4,), params=_LS),
    Shape("ls-8pe-1x6-6x1", "lockstep", 8, (1, 6, 1), (4, 3), params=_LS),
    Shape("ls-3pe-1-1-1", "lockstep", 3, (1, 1, 1), (2, 0), params=_LS, relu_last=True),
]

INDEX_BITS = 4


def _codebook(rng, scale: int) -> np.ndarray:
    k = 1 << INDEX_BITS
    cb = np.zeros(k, np.int16)
    cb[1:] = rng.integers(-scale, scale + 1, k - 1)
    if scale >= 32767:  # the extremes, for saturation
        cb[1], cb[2] = 32767, -32767
    return cb


def network(shape: Shape, seed: int) -> QNet:
    """Network `seed` of `shape`: densities 0..1 with all-zero columns; the lockstep engine's
    codebooks are the shape's (seed 0 of the shape), every other value is drawn from `seed`."""
    rng = np.random.default_rng([seed, len(shape.name), *shape.name.encode()])
    shape_rng = np.random.default_rng([0, *shape.name.encode()])
    layers = []
    n = len(shape.sizes) - 1
    for i in range(n):
        n_in, n_out = shape.sizes[i], shape.sizes[i + 1]
        cb = _codebook(shape_rng if get(shape.engine).codebook_in_logic else rng,
                       shape.weight_scale)
        density = float(rng.choice([0.0, 0.03, 0.1, 0.3, 0.6, 1.0, rng.random()]))
        mask = rng.random((n_out, n_in)) < density
        if n_in > 1 and rng.random() < 0.5:  # all-zero columns
            mask[:, rng.random(n_in) < 0.3] = False
        index = np.where(mask, rng.integers(1, 1 << INDEX_BITS, (n_out, n_in)), 0)
        bias = rng.integers(-shape.bias_scale, shape.bias_scale + 1, n_out)
        layers.append(Layer(codebook=cb, index=index.astype(np.uint8),
                            bias=bias.astype(np.int32), shift=int(shape.shifts[i]),
                            relu=(i < n - 1) or shape.relu_last))
    return QNet(layers=layers, input_frac=8)


def inputs(shape: Shape, seed: int, count: int) -> np.ndarray:
    """int16[count, in]: an all-zero vector first, then densities 0..1, signed values up to
    +-32767 (saturation) or small ones."""
    rng = np.random.default_rng([seed, 7, *shape.name.encode()])
    n_in = shape.sizes[0]
    x = np.zeros((count, n_in), np.int16)
    for j in range(1, count):
        scale = int(rng.choice([256, 4096, 32767]))
        v = rng.integers(-scale, scale + 1, n_in)
        if rng.random() < 0.5:
            v = np.abs(v)  # like MNIST pixels
        x[j] = np.where(rng.random(n_in) < rng.random(), v, 0)
    return x


def padded_image(shape: Shape, qnet: QNet):
    """The image of `qnet` for `shape`, its memories padded to the shape's depths (the
    engine's `padded`)."""
    options = {**get(shape.engine).fixed_shape, **shape.image}  # the same logic per shape
    img = build_image(qnet, shape.engine, shape.pes, index_bits=INDEX_BITS,
                      rel_bits=shape.rel_bits, **options)
    return get(shape.engine).padded(img)


def shape_key(shape: Shape, img) -> str:
    """What is logic in the engine of `img`: equal keys, equal Verilog but for memory contents."""
    d = {"shape": [shape.engine, shape.pes, list(shape.sizes), list(shape.shifts),
                   shape.rel_bits, shape.relu_last, shape.params.as_dict()],
         "src": source_hash(), **get(shape.engine).logic_of(img)}
    return "shape-" + hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]


def binary_for(shape: Shape, img) -> fastbench.FastBuild:
    return fastbench.build(img, shape.params, key=shape_key(shape, img))


def check_template(fb: fastbench.FastBuild, img, params: EngineParams) -> None:
    """AssertionError unless `img` converts to exactly the binary's Verilog (memories aside)."""
    template, _ = fastbench.template_of(img, params)
    if template != (fb.dir / "engine.sv").read_text():
        raise AssertionError(f"{fb.dir}: a network of this shape has other logic")


@dataclass
class Outcome:
    shape: str
    seed: int
    vectors: int
    differing: int
    cycles: int  # simulated clock cycles


def run_network(shape: Shape, seed: int, count: int, workdir: Path, *,
                check: bool = False) -> Outcome:
    """Network `seed` of `shape` on `count` vectors, compared with the golden model."""
    from compress.golden import golden

    qnet = network(shape, seed)
    img = padded_image(shape, qnet)
    fb = binary_for(shape, img)
    if check:
        check_template(fb, img, shape.params)
    x = inputs(shape, seed, count)
    mems = workdir / "mems"
    fastbench.write_mems(fb, img, shape.params, mems)
    r = fastbench.run(fb, mems, x, seed=seed, workdir=workdir / "run", **shape.run)
    want = golden(qnet, x, acc_bits=shape.params.acc_bits)
    bad = int(np.any(r.outputs != want, axis=1).sum())
    return Outcome(shape.name, seed, count, bad, r.sim_cycles)
