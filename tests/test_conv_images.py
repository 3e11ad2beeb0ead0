"""Conv layers in the images (construction and validation, no simulator): the EIE image of a
CNN decodes to exactly its qnet, the walk reads exactly each patch's non-zeros (padding never),
the PE counts a FLAT-source conv cannot use are refused with one line, and LeNet-5's
activation banks are as docs/conv.md says."""

from __future__ import annotations

import numpy as np
import pytest

from compress.errors import InputError
from compress.qnet import load_qnet
from compress.synthetic import random_cnn, random_inputs
from images import conv
from images.eie import build_rom, column_maps_of, decode_rom

NETS = [
    ((1, 6, 6), [(3, 3, 1, 1, 2), (4, 3, 1, 0, 1)], [5]),
    ((2, 7, 5), [(5, (4, 3), 2, 1, (1, 2)), (6, (2, 1), 1, 0, 1)], [3]),
    ((3, 4, 4), [(10, 1, 2, 0, 1), (2, 2, 1, 1, 2)], []),
]


@pytest.mark.parametrize("pes", [1, 2, 4, 8])
@pytest.mark.parametrize("net", range(len(NETS)))
def test_image_decodes_to_the_qnet(net, pes):
    shape, convs, fc = NETS[net]
    q = random_cnn(shape, convs, fc, seed=net, density=0.5)
    q.layers[0].index[0, :] = 0  # an all-pruned output channel
    rom = build_rom(q, pes=pes)
    assert decode_rom(rom).equals(q)
    assert rom.in_features == int(np.prod(shape))
    assert rom.out_features == int(np.prod(q.layer_shapes()[-1][1]))


def _patch_nonzeros(g: conv.ConvGeom, m: np.ndarray, p: int) -> list[tuple[int, int, int]]:
    """(value, logical column, sub-position) of pass p's non-zeros, straight from the map."""
    out = []
    py, px = divmod(p, g.wp)
    for s in range(g.subs):
        a, b = divmod(s, g.qw)
        oy, ox = py * g.qh + a, px * g.qw + b
        for c in range(g.c):
            for dy in range(g.kh):
                for dx in range(g.kw):
                    y, x = oy * g.sh - g.ph + dy, ox * g.sw - g.pw + dx
                    if 0 <= y < g.h and 0 <= x < g.w and m[c, y, x]:
                        out.append((int(m[c, y, x]), (c * g.kh + dy) * g.kw + dx, s))
    return sorted(out)


@pytest.mark.parametrize("pes", [1, 2, 4, 8])
def test_the_walk_reads_each_patch_non_zeros_exactly(pes):
    """`images.conv.gather` over a map in its layout (FLAT for the first layer, CHAN after a
    conv), columns mapped back to logical ones, is the patch's non-zeros, each once."""
    q = random_cnn((3, 7, 6), [(5, 3, 1, 1, 2), (4, (2, 3), 2, 2, 1)], [], seed=pes,
                   density=0.6)
    rom = build_rom(q, pes=pes, balance=False)  # identity row order: logical = physical channel
    cols, _ = column_maps_of(rom)
    shapes = q.layer_shapes()
    for i, g in enumerate(conv.geometries(q)):
        m = random_inputs(1, int(np.prod(shapes[i][0])), seed=i, density=0.5)[0]
        m = m.reshape(shapes[i][0])
        words = conv.map_to_words(m, shapes[i][0], g.src, pes)
        for p in range(g.passes):
            got = sorted((v, int(cols[i][c]), s) for v, c, s in conv.gather(g, pes, p, words))
            assert got == _patch_nonzeros(g, m, p), (i, p)


def test_power_of_two_pes_for_a_flat_source():
    q = random_cnn((1, 5, 5), [(2, 3, 1, 0, 1)], [2], seed=0)
    with pytest.raises(InputError, match="power-of-two") as e:
        build_rom(q, pes=3)
    assert "\n" not in str(e.value)


def test_lenet5_activation_banks():
    """conv1's output in CHAN (20 channels padded to 24: 3 x 12 x 12 words) is the largest map
    a PE holds with 8 PEs."""
    rom = build_rom(load_qnet("compress/models/lenet-5.qnet.npz"), pes=8)
    assert conv.act_words(rom) == 3 * 144
    assert [rl.kind for rl in rom.layers] == ["conv", "conv", "fc", "fc"]
    assert [rl.in_features for rl in rom.layers] == [25, 24 * 25, 56 * 16, 500]


def test_rom_files_carry_no_conv_geometry(tmp_path):
    """The ROM files' manifest has no geometry field; one that claims a conv layer is refused."""
    import json

    from compress.synthetic import random_qnet
    from images.eie import export_rom, read_rom

    m = export_rom(random_qnet((12, 6, 3), seed=0, density=0.5), tmp_path / "rom", pes=2)
    assert all("geom" not in rl for rl in m["layers"])
    path = tmp_path / "rom" / "manifest.json"
    bad = json.loads(path.read_text())
    bad["layers"][0]["geom"] = [1, 3, 4, 3, 3, 1, 1, 0, 0, 1, 1, 6, "flat"]
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError, match="conv geometry") as e:
        read_rom(tmp_path / "rom")
    assert "\n" not in str(e.value)


def test_the_eie_cycle_model_refuses_conv_layers():
    """The fully connected cycle model does not model the walk: it says so, not a number."""
    from images.eie import model_cycles

    q = random_cnn((1, 5, 5), [(2, 3, 1, 0, 1)], [2], seed=0)
    with pytest.raises(InputError, match="fully connected layers only"):
        model_cycles(build_rom(q, pes=2), np.zeros((1, 25), np.int16))
