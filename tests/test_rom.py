"""The EIE sparse format and ROM images: the paper's example, property-based round trips, files."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.cli import main
from compress.errors import InputError
from compress.qnet import Layer, QNet, save_qnet
from compress.rom import build_rom, decode_csc, decode_rom, encode_csc, export_rom, read_rom
from compress.synthetic import random_qnet


def test_paper_example():
    col = np.array([0, 0, 1, 2] + [0] * 18 + [3], dtype=np.uint8)[:, None]
    v, z, ptr = encode_csc(col, rel_bits=4)
    assert v.tolist() == [1, 2, 0, 3]
    assert z.tolist() == [2, 0, 15, 2]
    assert ptr.tolist() == [0, 4]
    assert np.array_equal(decode_csc(v, z, ptr, len(col)), col)


@pytest.mark.parametrize(
    "gap,fillers", [(0, 0), (14, 0), (15, 0), (16, 1), (17, 1), (31, 1), (32, 2), (47, 2), (48, 3)]
)
def test_gap_fillers(gap, fillers):
    col = np.zeros(gap + 1, dtype=np.uint8)
    col[gap] = 7
    v, z, _ = encode_csc(col[:, None], rel_bits=4)
    assert len(v) == fillers + 1
    assert v.tolist() == [0] * fillers + [7]
    assert z.tolist() == [15] * fillers + [gap - 16 * fillers]
    assert np.array_equal(decode_csc(v, z, [0, len(v)], len(col)), col[:, None])


def test_wider_relative_index_needs_fewer_fillers():
    col = np.zeros(100, dtype=np.uint8)
    col[99] = 1
    assert len(encode_csc(col[:, None], rel_bits=4)[0]) == 7  # 6 fillers
    assert len(encode_csc(col[:, None], rel_bits=7)[0]) == 1


@st.composite
def index_matrices(draw):
    rows = draw(st.integers(1, 70))
    cols = draw(st.integers(1, 12))
    density = draw(st.sampled_from([0.0, 0.01, 0.05, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    m = np.where(rng.random((rows, cols)) < density, rng.integers(1, 16, (rows, cols)), 0)
    # exact gap corners: a non-zero after 15, 16, 31, 32 zeros in some columns
    for c, gap in enumerate(draw(st.lists(st.sampled_from([15, 16, 31, 32, 33, 64]), max_size=3))):
        if c < cols and gap < rows:
            m[:, c] = 0
            m[gap, c] = 5
    if draw(st.booleans()):
        m[:, draw(st.integers(0, cols - 1))] = 0  # an all-zero column
    return m.astype(np.uint8)


@given(m=index_matrices(), rel_bits=st.integers(1, 8))
@settings(max_examples=150, deadline=None)
def test_csc_round_trip(m, rel_bits):
    v, z, ptr = encode_csc(m, rel_bits=rel_bits)
    assert z.max(initial=0) < 2**rel_bits
    assert len(ptr) == m.shape[1] + 1 and ptr[-1] == len(v)
    assert np.count_nonzero(v) == np.count_nonzero(m)
    assert np.array_equal(decode_csc(v, z, ptr, m.shape[0]), m)


@st.composite
def qnets(draw):
    n_layers = draw(st.integers(1, 4))
    sizes = [draw(st.integers(1, 40)) for _ in range(n_layers + 1)]
    density = draw(st.sampled_from([0.0, 0.03, 0.2, 0.7, 1.0]))
    return random_qnet(sizes, seed=draw(st.integers(0, 10**6)), density=density)


@given(q=qnets(), pes=st.integers(1, 16), rel_bits=st.sampled_from([4, 5, 8]))
@settings(max_examples=120, deadline=None)
def test_rom_round_trip(q, pes, rel_bits):
    """Any N >= 1 (rows fewer than PEs gives all-zero PEs), any shape and density."""
    rom = build_rom(q, pes=pes, rel_bits=rel_bits)
    assert decode_rom(rom).equals(q)
    for i, rl in enumerate(rom.layers):
        assert sum(rl.rows) == q.layers[i].out_features
        assert sum(rl.nonzeros) == np.count_nonzero(q.layers[i].index)


@given(q=qnets(), pes=st.integers(1, 16))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rom_files_round_trip(tmp_path_factory, q, pes):
    d = tmp_path_factory.mktemp("rom")
    export_rom(q, d / "rom", pes=pes)
    assert decode_rom(read_rom(d / "rom")).equals(q)


def test_files_hex_bin_manifest(tmp_path):
    q = random_qnet((50, 20, 6), seed=1, density=0.1)
    m = export_rom(q, tmp_path / "rom", pes=3)
    assert m["version"] == 2 and m["pes"] == 3 and m["entry_bits"] == 8
    on_disk = json.loads((tmp_path / "rom" / "manifest.json").read_text())
    assert on_disk == m
    names = {p.name for p in (tmp_path / "rom").iterdir()}
    for pe in range(3):
        for kind in ("entries", "ptr", "bias"):
            assert {f"pe{pe}.{kind}.hex", f"pe{pe}.{kind}.bin"} <= names
    # $readmemh text matches the binary image word for word
    rom = read_rom(tmp_path / "rom")
    hex_words = [int(w, 16) for w in (tmp_path / "rom" / "pe1.entries.hex").read_text().split()]
    assert hex_words == rom.entries[1].tolist()
    bias_words = [int(w, 16) for w in (tmp_path / "rom" / "pe2.bias.hex").read_text().split()]
    assert bias_words == (rom.bias[2].astype(np.int64) & 0xFFFFFFFF).tolist()
    # same command -> same bytes
    export_rom(q, tmp_path / "rom2", pes=3)
    for name in names:
        assert (tmp_path / "rom" / name).read_bytes() == (tmp_path / "rom2" / name).read_bytes()


def test_corrupted_image_refused(tmp_path):
    export_rom(random_qnet((30, 10), seed=2), tmp_path / "rom", pes=2)
    f = tmp_path / "rom" / "pe0.entries.bin"
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 mismatch"):
        read_rom(tmp_path / "rom")


def test_rows_fewer_than_pes_and_all_zero_layer():
    q = QNet(
        layers=[
            Layer(np.array([0, 3], np.int16), np.zeros((3, 5), np.uint8),
                  np.array([1, -2, 3], np.int32), 0, True),
            Layer(np.array([0, -1, 2], np.int16), np.array([[1, 2, 0]], np.uint8),
                  np.zeros(1, np.int32), 1, False),
        ]
    )
    rom = build_rom(q, pes=8)
    assert rom.layers[0].rows == [1, 1, 1, 0, 0, 0, 0, 0]
    assert rom.layers[0].entries == [0] * 8
    assert rom.layers[1].rows == [1] + [0] * 7
    assert decode_rom(rom).equals(q)


def test_export_rom_cli(tmp_path, capsys):
    q = random_qnet((40, 16, 4), seed=5, density=0.2)
    save_qnet(q, tmp_path / "q.npz")
    assert main(["export-rom", "--model", str(tmp_path / "q.npz"), "--pes", "5",
                 "--out", str(tmp_path / "rom"), "--rel-bits", "5"]) == 0
    assert "5 PEs" in capsys.readouterr().out
    rom = read_rom(tmp_path / "rom")
    assert rom.pes == 5 and rom.rel_bits == 5
    assert decode_rom(rom).equals(q)
