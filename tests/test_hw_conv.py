# amaranth: UnusedElaboratable=no
"""Conv layers on the EIE engine in the Amaranth simulator against the golden model.

Small random CNNs chosen for the corners: zero padding, stride 2, pooling 1 and 2 (square and
not), a kernel larger than the padded map's remainder (rows the pooling drops), maps down to
1x1, more channels than PEs (several channel groups), an all-pruned output channel and an
all-pruned input channel, an all-zero input map; issue width 1 and 2, the dense baseline, a
conv last layer. The cocotb bench on the generated Verilog is tests/test_tb_conv.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from compress.golden import golden
from compress.synthetic import random_cnn, random_inputs
from hw.eie import Engine
from images.eie import build_rom
from tb.pysim import run_engine

from .conftest import long_tests


def _inputs(n, width, seed):
    """The first all zero, the rest of densities from 0.2 to 1."""
    rng = np.random.default_rng(seed)
    xs = [np.zeros((1, width), np.int16)]
    for d in rng.uniform(0.2, 1, n - 1):
        xs.append(random_inputs(1, width, seed=int(rng.integers(1 << 30)), density=float(d)))
    return np.concatenate(xs)


def _prune(qnet, layer: int, out_ch: int | None = None, in_ch: int | None = None):
    """Zero one output channel's (or one input channel's) every weight of conv `layer`."""
    ly = qnet.layers[layer]
    kk = int(np.prod(ly.kernel))
    if out_ch is not None:
        ly.index[out_ch, :] = 0
    if in_ch is not None:
        ly.index[:, in_ch * kk:(in_ch + 1) * kk] = 0
    return qnet


# id, input shape, convs (out_ch, kernel, stride, padding, pool), fc sizes, pes, prune,
# engine kwargs
CASES = [
    ("2pe-pad-pool2-to-1x1", (1, 6, 6), [(3, 3, 1, 1, 2), (4, 3, 1, 0, 1)], [5], 2,
     {"layer": 0, "out_ch": 1}, {}),
    ("4pe-stride2-remainder-wide", (2, 7, 7), [(5, (4, 3), 2, 1, (1, 2)), (6, 2, 1, 0, 1)],
     [3], 4, {"layer": 1, "in_ch": 2}, {"issue_width": 2}),
    ("8pe-groups-conv-last", (1, 7, 7), [(10, 5, 1, 2, 2), (3, 3, 2, 1, 1)], [], 8,
     {"layer": 1, "out_ch": 0}, {"issue_width": 1}),
    ("2pe-dense-baseline", (1, 5, 5), [(3, 2, 1, 1, 2)], [4], 2, {"layer": 0, "out_ch": 2},
     {"sparse": False}),
    # the pipelined front end (the ECP5 boards' engine) with the conv front end, queues of 2
    ("4pe-pipelined-depth2", (2, 7, 7), [(5, (4, 3), 2, 1, (1, 2)), (6, 2, 1, 0, 1)], [3], 4,
     {"layer": 0, "out_ch": 3}, {"issue_width": 2, "pipelined": True, "queue_depth": 2}),
]
if long_tests():
    CASES += [
        ("8pe-w2-lenet-like", (1, 16, 16), [(6, 5, 1, 0, 2), (12, 3, 1, 1, 2)], [10], 8,
         {"layer": 1, "out_ch": 5}, {"issue_width": 2}),
        ("1pe-k1-stride2", (3, 4, 4), [(4, 1, 2, 0, 1), (2, 2, 1, 1, 2)], [2], 1, {}, {}),
    ]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conv_engine_bit_exact(case):
    _id, shape, convs, fc, pes, prune, ekw = case
    qnet = random_cnn(shape, convs, fc, seed=pes, density=0.5, shift=9)
    if prune:
        _prune(qnet, **prune)
    x = _inputs(4, int(np.prod(shape)), seed=pes)
    y, cycles, lcs = run_engine(Engine(build_rom(qnet, pes=pes), **ekw), x, seed=pes,
                                max_cycles=400_000)
    want = golden(qnet, x)
    np.testing.assert_array_equal(y, want)
    assert np.all(lcs > 0) and np.all(cycles > lcs.sum(axis=1))
    if ekw.get("sparse", True):
        # the all-zero map has nothing to multiply: its conv layers cost less than any other
        assert np.all(lcs[0, 0] < lcs[1:, 0])
    else:
        assert len(set(lcs[:, 0].tolist())) == 1  # dense work does not depend on data


def test_an_all_pruned_channel_comes_out_as_its_bias():
    """A conv layer whose every weight of one output channel is pruned writes relu(bias)
    rounded for that channel at every position, through the next layer bit-exact."""
    qnet = _prune(random_cnn((1, 4, 4), [(2, 3, 1, 1, 1)], [], seed=3, density=0.6,
                             shift=0, relu_last=True), layer=0, out_ch=0)
    qnet.layers[0].bias[0] = 7
    x = _inputs(3, 16, seed=3)
    y, _, _ = run_engine(Engine(build_rom(qnet, pes=2)), x)
    np.testing.assert_array_equal(y, golden(qnet, x))
    assert np.all(y[:, :16] == 7)  # channel 0 of the [2, 4, 4] output map, every position


def test_cycle_model_counts_conv_macs_literally():
    """tb.analysis: a conv layer's useful MACs (non-zero weight x non-zero patch value at every
    computed position, padding zero) equal a literal loop, and every PE's share sums to it."""
    from tb.analysis import layer_inputs, useful_macs, work

    qnet = random_cnn((2, 6, 5), [(3, 3, 2, 1, (2, 1)), (4, 2, 1, 1, 1)], [3], seed=5,
                      density=0.5, shift=9)
    x = _inputs(3, 60, seed=5)
    got = useful_macs(qnet, x)
    shapes = qnet.layer_shapes()
    for i, (layer, a) in enumerate(zip(qnet.layers, layer_inputs(qnet, x))):
        if layer.kind != "conv":
            continue
        (c, h, w), (_oc, hp, wp) = shapes[i]
        (kh, kw), (sh, sw), (ph, pw), (qh, qw) = (layer.kernel, layer.stride, layer.padding,
                                                  layer.pool)
        nzw = layer.weights() != 0
        for b in range(len(x)):
            m = np.asarray(a[b]).reshape(c, h, w)
            want = 0
            for oy in range(hp * qh):
                for ox in range(wp * qw):
                    for ci in range(c):
                        for dy in range(kh):
                            for dx in range(kw):
                                y, xx = oy * sh - ph + dy, ox * sw - pw + dx
                                if 0 <= y < h and 0 <= xx < w and m[ci, y, xx]:
                                    want += int(nzw[:, (ci * kh + dy) * kw + dx].sum())
            assert got[i][b] == want, (i, b)
    w = work(qnet, build_rom(qnet, pes=2), x)
    for i in range(qnet.num_layers):
        np.testing.assert_array_equal(w["useful"][i].sum(axis=1), got[i])
