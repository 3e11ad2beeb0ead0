# amaranth: UnusedElaboratable=no
"""Conv layers in the lockstep image (`images.lockstep`), construction and validation: images
of random CNNs decode to exactly their qnet, the slot count of a conv layer against a literal
walk, the map regions, the memories the engine makes for LeNet-5, what is refused (the Amaranth
simulator cases are tests/test_hw_lockstep_conv.py, the Verilog ones
tests/test_tb_lockstep_conv.py)."""

from __future__ import annotations

import numpy as np
import pytest

from compress.errors import InputError
from compress.golden import run_layers
from compress.qnet import load_qnet
from compress.synthetic import random_cnn, random_inputs, random_qnet
from hw import make_engine
from hw.blocks import EngineConfigError
from hw.lockstep import LockstepEngine
from images import conv
from images.lockstep import (LockstepParams, act_words, build_lockstep, column_maps,
                             decode_lockstep, lockstep_cycles, map_bases, map_region, memory_map)

CNNS = [
    ((1, 6, 6), [(3, 3, 1, 1, 2), (4, 3, 1, 0, 1)], [5]),
    ((2, 7, 7), [(5, (4, 3), 2, 1, (1, 2)), (6, 2, 1, 0, 1)], [3]),
    ((1, 7, 7), [(10, 5, 1, 2, 2), (3, 3, 2, 1, 1)], []),
    ((3, 5, 5), [(20, 1, 1, 0, 1)], [7, 4]),
]


@pytest.mark.parametrize("pes", [1, 2, 4, 8])
@pytest.mark.parametrize("case", range(len(CNNS)))
def test_conv_images_decode_to_their_qnet(case, pes):
    shape, convs, fc = CNNS[case]
    q = random_cnn(shape, convs, fc, seed=case + pes, density=0.5)
    q.layers[0].index[min(1, q.layers[0].out_features - 1), :] = 0  # an all-pruned channel
    img = build_lockstep(q, pes)
    assert decode_lockstep(img).equals(q)
    assert img.has_conv and img.input_shape == shape
    assert img.in_features == int(np.prod(shape))
    assert img.out_features == q.out_features
    for ll, g in zip(img.layers, conv.geometries(q)):
        assert (ll.conv_geom is None) == (g is None)
        if g is not None:
            assert ll.conv_geom.as_tuple()[:12] == g.as_tuple()[:12]
            assert img.acc_rows(ll) == -(-g.out_ch // pes) << img.sub_bits


def test_an_mlp_image_has_no_conv_fields():
    q = random_qnet([20, 9, 5], seed=1)
    img = build_lockstep(q, 4)
    assert not img.has_conv and img.sub_bits == 0
    assert all(ll.geom == () for ll in img.layers)
    assert act_words(img) == 5  # ceil(20 / 4): one bank of the widest vector, as before
    assert map_bases(img) == [(0, 0), (0, 0)]


def _literal_slots(img, q, x):
    """Slot cycles per layer by walking every pass (`images.conv.gather`) and adding L(c) of
    each non-zero column read, the physical maps as the engine holds them."""
    acts = [x] + run_layers(q, x[None])[:-1]
    acts = [np.asarray(a).reshape(-1) for a in acts]
    out = []
    for i, ll in enumerate(img.layers):
        lc = np.diff(img.col_ptr[ll.col_base: ll.col_base + ll.in_features + 1])
        g = ll.conv_geom
        if g is None:
            cols, _ = column_maps(img)
            phys = np.where(cols[i] >= 0, acts[i][np.maximum(cols[i], 0)], 0)
            out.append(int(lc[phys != 0].sum()))
            continue
        vals = acts[i]
        if g.src == conv.CHAN:  # the previous layer's channels in their physical order
            prev = img.layers[i - 1].perm
            vals = vals.reshape(g.c, -1)[prev].reshape(-1)
        words = conv.map_to_words(vals, (g.c, g.h, g.w), g.src, img.pes)
        out.append(sum(int(lc[col]) for p in range(g.passes)
                       for _v, col, _s in conv.gather(g, img.pes, p, words)))
    return out


@pytest.mark.parametrize("case", range(len(CNNS)))
def test_slot_count_of_conv_layers_is_the_walk(case):
    shape, convs, fc = CNNS[case]
    q = random_cnn(shape, convs, fc, seed=case, density=0.4)
    pes = 4
    img = build_lockstep(q, pes)
    x = random_inputs(3, int(np.prod(shape)), seed=case, density=0.6)
    x[0] = 0
    acts = [x] + run_layers(q, x)[:-1]
    got = lockstep_cycles(img, acts)
    for j in range(len(x)):
        assert got[j].tolist() == _literal_slots(img, q, x[j])
    assert got[0, 0] == 0  # an all-zero map reads nothing


def test_map_regions_alternate_for_conv_layers():
    q = random_cnn((1, 8, 8), [(4, 3, 1, 1, 2), (6, 3, 1, 1, 1)], [5, 3], seed=0)
    img = build_lockstep(q, 2)
    r = map_region(img)
    assert act_words(img) == 2 * r
    # conv reads 0 writes r, conv reads r writes 0, then the fc layers in place
    assert map_bases(img) == [(0, r), (r, 0), (0, 0), (0, 0)]
    one = build_lockstep(random_cnn((1, 8, 8), [(4, 3, 1, 1, 2)], [5], seed=0), 2)
    assert map_bases(one)[-1] == (map_region(one), map_region(one))  # output in region 1


def test_lenet5_memories_on_8_pes():
    q = load_qnet("compress/models/lenet-5.qnet.npz")
    img = build_lockstep(q, 8)
    assert decode_lockstep(img).equals(q)
    assert [img.acc_rows(ll) for ll in img.layers] == [12, 28, 63, 2]
    specs = {s.name: s for s in memory_map(img, LockstepParams())}
    assert specs["pe0.acc"].depth == 63 + 3 + 7 + 63 + 2  # rows, then every layer's biases
    # conv1's pooled output in CHAN (24 channels: 3 groups x 144 words) is the largest map
    assert map_region(img) == 432 and act_words(img) == 864
    assert specs["pe0.act"].depth == 1024 + 864
    assert specs["lane0"].depth == img.num_slots


def test_power_of_two_pes_for_a_conv_reading_the_input():
    q = random_cnn((1, 6, 6), [(3, 3, 1, 1, 2)], [4], seed=0)
    with pytest.raises(InputError, match="power-of-two"):
        build_lockstep(q, 3)


def test_the_engine_takes_conv_images():
    q = random_cnn((1, 6, 6), [(3, 3, 1, 1, 2)], [4], seed=0)
    eng = LockstepEngine(build_lockstep(q, 2), drain_share=2)
    assert eng.has_conv and eng.in_features == 36 and eng.out_features == 4
    with pytest.raises(EngineConfigError, match="inputs exceed"):
        make_engine(build_lockstep(q, 2), LockstepParams(max_width=20))
