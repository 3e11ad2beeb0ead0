"""The EIE sparse format and ROM images: the paper's example, property-based round trips, files."""

import hashlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.cli import main
from compress.errors import InputError
from compress.qnet import Layer, QNet, save_qnet
from compress.golden import golden
from images.placement import place_balanced
from images.eie import (build_rom, choose_rel_bits, decode_csc, decode_rom, encode_csc,
                        busiest_entries, entries_bits, export_rom, parse_rel_bits, physical_qnet,
                        read_rom)
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


@given(q=qnets(), pes=st.integers(1, 16), rel_bits=st.sampled_from([4, 5, 8]),
       balance=st.booleans())
@settings(max_examples=120, deadline=None)
def test_rom_round_trip(q, pes, rel_bits, balance):
    """Any N >= 1 (rows fewer than PEs gives all-zero PEs), any shape and density, rows balanced
    or interleaved: decode_rom gives back the logical qnet exactly."""
    rom = build_rom(q, pes=pes, rel_bits=rel_bits, balance=balance)
    assert decode_rom(rom).equals(q)
    phys = physical_qnet(rom)
    for i, rl in enumerate(rom.layers):
        out = q.layers[i].out_features
        perm = rom.perm[i]
        assert sorted(perm.tolist()) == list(range(out))  # a permutation of 0..out-1
        if not balance or i == q.num_layers - 1:
            assert perm.tolist() == list(range(out))  # interleaving; outputs in logical order
        cols = rom.perm[i - 1] if i else np.arange(q.layers[i].in_features)
        assert np.array_equal(phys.layers[i].index, q.layers[i].index[perm][:, cols])
        assert np.array_equal(phys.layers[i].bias, q.layers[i].bias[perm])
        assert sum(rl.rows) == out
        assert sum(rl.nonzeros) == np.count_nonzero(q.layers[i].index)


@given(q=qnets(), pes=st.integers(1, 16), balance=st.booleans())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rom_files_round_trip(tmp_path_factory, q, pes, balance):
    d = tmp_path_factory.mktemp("rom")
    export_rom(q, d / "rom", pes=pes, balance=balance)
    rom = read_rom(d / "rom")
    assert rom.balanced == balance
    assert decode_rom(rom).equals(q)


def test_placed_network_computes_the_same_outputs():
    """The physical network (rows permuted, next layer's columns likewise) is the same function:
    its outputs are the logical network's, bit for bit (the last layer is never permuted)."""
    q = random_qnet((60, 45, 30, 7), seed=11, density=0.2, shift=[7, 6, 5])
    x = np.random.default_rng(0).integers(-3000, 3000, (16, 60)).astype(np.int16)
    rom = build_rom(q, pes=4)
    assert any(not np.array_equal(p, np.arange(len(p))) for p in rom.perm)  # really permuted
    np.testing.assert_array_equal(golden(physical_qnet(rom), x), golden(q, x))


def test_balance_evens_out_a_skewed_matrix():
    """Every 4th row dense: interleaving gives one PE all of them, the balanced ROM spreads them."""
    rng = np.random.default_rng(3)
    index = np.where(rng.random((40, 50)) < 0.05, 1, 0).astype(np.uint8)
    index[::4] = rng.integers(1, 4, (10, 50))
    q = QNet(layers=[Layer(np.array([0, 5, -7, 9], np.int16), index, np.zeros(40, np.int32), 4,
                           True),
                     Layer(np.array([0, 1], np.int16), np.ones((3, 40), np.uint8),
                           np.zeros(3, np.int32), 0, False)])
    plain = build_rom(q, pes=4, balance=False)
    bal = build_rom(q, pes=4)
    assert max(plain.layers[0].entries) >= 500  # PE 0 holds the 10 dense rows
    assert max(bal.layers[0].entries) < 0.6 * max(plain.layers[0].entries)
    assert max(bal.layers[0].nonzeros) - min(bal.layers[0].nonzeros) <= 50  # within ~one row
    assert bal.layers[0].rows == plain.layers[0].rows  # same slots per PE
    assert decode_rom(bal).equals(q)


def test_place_balanced_is_deterministic_and_keeps_the_slots():
    index = np.random.default_rng(5).integers(0, 2, (37, 20)).astype(np.uint8)
    p1, p2 = place_balanced(index, 5), place_balanced(index.copy(), 5)
    assert np.array_equal(p1, p2)
    assert sorted(p1.tolist()) == list(range(37))
    one = place_balanced(index, 1)  # one PE: only the order inside it, by decreasing work
    w = np.count_nonzero(index, axis=1)
    assert np.all(np.diff(w[one]) <= 0)


def _retamper(rom_dir, fn):
    """Rewrite perm.bin through `fn` and fix its sha256 in the manifest (a consistent forgery)."""
    mpath = rom_dir / "manifest.json"
    m = json.loads(mpath.read_text())
    dt = "<u1" if m["perm"]["width"] <= 8 else "<u2"
    f = rom_dir / "perm.bin"
    words = np.frombuffer(f.read_bytes(), dtype=dt).copy()
    f.write_bytes(fn(words).astype(dt).tobytes())
    m["files"]["perm.bin"]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    mpath.write_text(json.dumps(m))


def test_tampered_permutation_refused(tmp_path):
    q = random_qnet((30, 20, 12, 5), seed=4, density=0.3)
    export_rom(q, tmp_path / "a", pes=3)
    export_rom(q, tmp_path / "b", pes=3)
    export_rom(q, tmp_path / "c", pes=3)
    f = tmp_path / "a" / "perm.bin"
    data = bytearray(f.read_bytes())
    data[0] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 mismatch"):
        read_rom(tmp_path / "a")

    def dup(w):
        w[1] = w[0]  # layer 0 loses a row
        return w

    with pytest.raises(InputError, match="l0: the row permutation is not a permutation") as e:
        _retamper(tmp_path / "b", dup)
        read_rom(tmp_path / "b")
    assert "\n" not in str(e.value)

    def swap_last(w):
        w[-2], w[-1] = w[-1], w[-2]  # the last layer's outputs would come out of order
        return w

    with pytest.raises(InputError, match="l2: the last layer's row permutation must be"):
        _retamper(tmp_path / "c", swap_last)
        read_rom(tmp_path / "c")


def test_files_hex_bin_manifest(tmp_path):
    q = random_qnet((50, 20, 6), seed=1, density=0.1)
    m = export_rom(q, tmp_path / "rom", pes=3, rel_bits=4)
    assert m["version"] == 2 and m["pes"] == 3 and m["entry_bits"] == 8
    assert m["perm"] == {"width": 5, "depth": 26, "balanced": True}
    assert [rl["perm_base"] for rl in m["layers"]] == [0, 20]
    on_disk = json.loads((tmp_path / "rom" / "manifest.json").read_text())
    assert on_disk == m
    names = {p.name for p in (tmp_path / "rom").iterdir()}
    for pe in range(3):
        for kind in ("entries", "ptr", "bias"):
            assert {f"pe{pe}.{kind}.hex", f"pe{pe}.{kind}.bin"} <= names
    assert {"perm.hex", "perm.bin"} <= names and "perm" not in m["memories"]
    # $readmemh text matches the binary image word for word
    rom = read_rom(tmp_path / "rom")
    hex_words = [int(w, 16) for w in (tmp_path / "rom" / "pe1.entries.hex").read_text().split()]
    assert hex_words == rom.entries[1].tolist()
    bias_words = [int(w, 16) for w in (tmp_path / "rom" / "pe2.bias.hex").read_text().split()]
    assert bias_words == (rom.bias[2].astype(np.int64) & 0xFFFFFFFF).tolist()
    # same command -> same bytes
    export_rom(q, tmp_path / "rom2", pes=3, rel_bits=4)
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
    assert rom.pes == 5 and rom.rel_bits == 5 and rom.balanced
    assert decode_rom(rom).equals(q)
    assert main(["export-rom", "--model", str(tmp_path / "q.npz"), "--pes", "5",
                 "--out", str(tmp_path / "plain"), "--no-balance"]) == 0
    assert "rows interleaved" in capsys.readouterr().out
    plain = read_rom(tmp_path / "plain")
    assert not plain.balanced and all(np.array_equal(p, np.arange(len(p))) for p in plain.perm)
    assert decode_rom(plain).equals(q)


def test_shipped_lenet_balanced_over_8_pes():
    """The shipped LeNet-300-100 at 8 PEs: the busiest PE within 2% of the mean in the hidden
    layers (1.1% and 0.1% for the shipped model; plain interleaving: 13% and 72% above), fewer
    fillers, and the same network."""
    from compress.qnet import load_qnet
    from compress.shipped import SHIPPED_QNET

    q = load_qnet(SHIPPED_QNET)
    bal, plain = build_rom(q, pes=8, rel_bits=4), build_rom(q, pes=8, rel_bits=4, balance=False)
    for i in (0, 1):
        mean = sum(bal.layers[i].entries) / 8
        assert max(bal.layers[i].entries) <= 1.02 * mean
        assert max(plain.layers[i].entries) >= 1.1 * sum(plain.layers[i].entries) / 8
    assert sum(map(sum, (rl.fillers for rl in bal.layers))) < sum(
        map(sum, (rl.fillers for rl in plain.layers))) / 2
    assert decode_rom(bal).equals(q)


@pytest.mark.parametrize("sizes,density,pes", [
    ((300, 200, 10), 0.03, 8),        # uniform random sparsity: long gaps, wider wins (5)
    ((200, 120, 10), 0.5, 4),         # dense: short gaps, narrower wins
    ((60, 45, 30, 7), 0.2, 3),
    ((1, 1), 1.0, 1),                 # a 1x1 network
    ((40, 3), 0.3, 8),                # fewer rows than PEs
])
def test_auto_rel_bits_is_the_smallest_entry_memory(sizes, density, pes):
    """auto (the default) gives the image with the fewest entry bits of every width 1..12 (the
    narrower on a tie), and it is exactly the image of that width."""
    q = random_qnet(sizes, seed=3, density=density)
    auto = build_rom(q, pes=pes)
    sizes_by_width = {rb: entries_bits(build_rom(q, pes=pes, rel_bits=rb)) for rb in range(1, 13)}
    best = min(sizes_by_width.values())
    assert auto.rel_bits == min(rb for rb, b in sizes_by_width.items() if b == best)
    fixed = build_rom(q, pes=pes, rel_bits=auto.rel_bits)
    assert all(np.array_equal(a, b) for a, b in zip(auto.entries, fixed.entries))
    assert decode_rom(auto).equals(q)
    assert choose_rel_bits(q, pes=pes).rel_bits == auto.rel_bits


def test_auto_rel_bits_walk_finds_the_global_minimum():
    """The walk from 4 assumes the size is unimodal in rel_bits: over 30 small random networks
    (densities 2-70 %, 1 / 3 / 8 PEs) it lands on the exhaustive choice every time."""
    for seed in range(2):
        for density in (0.02, 0.05, 0.1, 0.3, 0.7):
            for pes in (1, 3, 8):
                q = random_qnet((90, 40, 6), seed=seed, density=density)
                size = {rb: entries_bits(build_rom(q, pes=pes, rel_bits=rb))
                        for rb in range(1, 13)}
                want = min(rb for rb, b in size.items() if b == min(size.values()))
                assert build_rom(q, pes=pes).rel_bits == want, (seed, density, pes, size)


def test_auto_rel_bits_on_the_shipped_and_synthetic_networks():
    """The trained LeNet keeps EIE's 4 bits; uniform random sparsity takes 5
    (docs/rom-format.md)."""
    from compress.shipped import load_model

    q, _ = load_model(None, index_bits=4)
    assert build_rom(q, pes=8).rel_bits == 4
    s, _ = load_model("synthetic", index_bits=4)
    rom = build_rom(s, pes=8)
    assert rom.rel_bits == 5
    assert entries_bits(rom) < entries_bits(build_rom(s, pes=8, rel_bits=4))


@pytest.mark.parametrize("sizes,density,pes", [
    ((300, 200, 10), 0.03, 8),        # long gaps: fillers at the smallest memory's width
    ((600, 300, 10), 0.05, 16),
    ((200, 120, 10), 0.5, 4),         # dense: no fillers, fast is auto
    ((1, 1), 1.0, 1),                 # a 1x1 network
])
def test_fast_rel_bits_takes_a_wider_index_only_for_cycles(sizes, density, pes):
    """fast starts from auto's width and takes a wider one only for at least 1% fewer of the
    busiest PE's entries a bit (checked against every width by hand); the image decodes to the
    same network and is exactly that width's image."""
    q = random_qnet(sizes, seed=4, density=density)
    auto, fast = build_rom(q, pes=pes), build_rom(q, pes=pes, rel_bits="fast")
    best = auto
    for rb in range(auto.rel_bits + 1, 13):
        cand = build_rom(q, pes=pes, rel_bits=rb)
        if busiest_entries(cand) * 100 <= busiest_entries(best) * (100 - (rb - best.rel_bits)):
            best = cand
    assert fast.rel_bits == best.rel_bits >= auto.rel_bits
    assert busiest_entries(fast) <= busiest_entries(auto)
    if sum(sum(layer.fillers) for layer in auto.layers) == 0:
        assert fast.rel_bits == auto.rel_bits  # nothing to gain
    fixed = build_rom(q, pes=pes, rel_bits=fast.rel_bits)
    assert all(np.array_equal(a, b) for a, b in zip(fast.entries, fixed.entries))
    assert decode_rom(fast).equals(q)


def test_fast_rel_bits_is_faster_by_the_cycle_model():
    """On a layer with fillers at auto's width, fast's image takes fewer modelled cycles."""
    from images.eie import model_cycles

    q = random_qnet((400, 300, 10), seed=6, density=0.04)
    x = np.random.default_rng(0).integers(0, 100, size=(4, 400)).astype(np.int16)
    auto, fast = build_rom(q, pes=16), build_rom(q, pes=16, rel_bits="fast")
    assert fast.rel_bits > auto.rel_bits
    assert model_cycles(fast, x).sum() < model_cycles(auto, x).sum()


def test_lockstep_refuses_fast_rel_bits():
    from images.engines import build_image

    q = random_qnet((40, 20, 4), seed=1, density=0.3)
    with pytest.raises(InputError, match="fast is for the EIE engine"):
        build_image(q, "lockstep", 4, rel_bits="fast")
    assert parse_rel_bits("fast") == "fast"


@pytest.mark.parametrize("bad", ["x", "0", "13", "4.5", "", True, None, "auto "])
def test_rel_bits_values_refused(bad):
    with pytest.raises(InputError, match="--rel-bits"):
        parse_rel_bits(bad)


def test_export_rom_cli_rel_bits(tmp_path, capsys):
    q = random_qnet((300, 40, 4), seed=5, density=0.05)
    save_qnet(q, tmp_path / "q.npz")
    assert main(["export-rom", "--model", str(tmp_path / "q.npz"), "--pes", "4",
                 "--out", str(tmp_path / "rom")]) == 0
    rom = read_rom(tmp_path / "rom")
    assert f"rel_bits {rom.rel_bits}," in capsys.readouterr().out
    assert rom.rel_bits == build_rom(q, pes=4).rel_bits
    assert main(["export-rom", "--model", str(tmp_path / "q.npz"), "--pes", "4",
                 "--out", str(tmp_path / "bad"), "--rel-bits", "13"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rel-bits" in err
    assert not (tmp_path / "bad").exists()
