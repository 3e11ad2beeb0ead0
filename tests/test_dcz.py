"""compress.dcz: exact round trips, size accounting, every corruption refused, the CLI."""

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.cli import main
from compress.dcz import (
    DCZ_VERSION,
    MAGIC,
    format_table,
    info,
    layer_sizes,
    pack,
    read_dcz,
    unpack,
    write_dcz,
)
from compress.errors import InputError
from compress.qnet import Layer, QNet, load_qnet, save_qnet
from compress.synthetic import random_qnet

CASES = [
    dict(sizes=(784, 300, 100, 10), density=[0.08, 0.09, 0.26]),
    dict(sizes=(64, 32, 10), density=1.0, seed=1),
    dict(sizes=(50, 40), density=0.0, seed=2),
    dict(sizes=(30, 20, 5), density=0.3, codebook_size=2, seed=3),
    dict(sizes=(30, 20), density=0.5, codebook_size=1, seed=4),
    dict(sizes=(1, 1), density=1.0, seed=5),
    dict(sizes=(1000, 3), density=0.002, seed=6, index_bits=8, codebook_size=256),
    dict(sizes=(17, 9, 4), density=0.6, index_bits=2, seed=7, bias_scale=0, shift=0),
    dict(sizes=(40, 30), density=0.1, seed=8, bias_scale=2**31 - 1, weight_scale=32767),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_roundtrip_exact(case):
    q = random_qnet(**CASES[case])
    data = pack(q)
    assert data[:4] == MAGIC and data[4] == DCZ_VERSION
    back = unpack(data)
    assert back.equals(q)
    assert back.checksum() == q.checksum()
    assert pack(back) == data  # deterministic


def test_structured_sparsity_and_extreme_values():
    rng = np.random.default_rng(9)
    index = np.zeros((30, 200), dtype=np.uint8)
    index[:, 80:120] = rng.integers(0, 16, size=(30, 40))  # whole empty columns
    index[-1, -1] = 15  # a non-zero at the very end
    cb = np.array([0, -32768, 32767] + list(range(1, 14)), dtype=np.int16)
    bias = np.array([-(2**31), 2**31 - 1] + [0] * 28, dtype=np.int32)
    q = QNet([Layer(cb, index, bias, shift=62, relu=True)], input_frac=-3)
    assert unpack(pack(q)).equals(q)


def test_smaller_than_float32_and_table():
    q = random_qnet((784, 300, 100, 10), density=[0.08, 0.09, 0.26], seed=0)
    data = pack(q)
    rows = layer_sizes(q)
    total = rows[-1]
    assert total["dcz_bytes"] == len(data)
    assert total["float32_bytes"] == 1_066_440
    assert total["ratio"] == pytest.approx(1_066_440 / len(data))
    for r, layer in zip(rows, q.layers):
        nnz = np.count_nonzero(layer.index)
        assert r["weights"] == layer.index.size
        assert r["kept_pct"] == pytest.approx(100 * nnz / layer.index.size)
        # Random positions at density p cannot beat the entropy H(p)/p bits per non-zero.
        p = nnz / layer.index.size
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / p
        assert h <= r["index_bits_pqh"] <= h + 0.35
        assert r["weight_bits_pqh"] <= 4.0 + 1e-9
    assert "x" in format_table(rows)
    d = info(data)
    assert d["bytes"] == len(data) and sum(s["bytes"] for s in d["sections"]) + 9 == len(data)


def corrupt_cases():
    q = random_qnet((20, 12, 6), density=0.4, seed=11)
    return q, pack(q)


def test_every_truncation_refused():
    q, data = corrupt_cases()
    for n in range(len(data)):
        with pytest.raises(InputError, match="truncated|bad magic"):
            unpack(data[:n])


def test_every_byte_flip_refused():
    _, data = corrupt_cases()
    seen = set()
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(InputError) as e:
                unpack(bytes(bad))
            seen.add(str(e.value).split("(")[0].strip())
    assert any("checksum mismatch in section header" in s for s in seen)
    assert any("checksum mismatch in section layer 1" in s for s in seen)
    assert any("whole-file checksum mismatch" in s for s in seen)


def test_section_content_checked_beyond_crc():
    # A payload with a valid crc but nonsense content (re-sealed) is still refused.
    _, data = corrupt_cases()
    body = bytearray(data[:-4])
    start = 5 + 1 + 1 + body[6] + 4  # after the header section
    assert body[start : start + 1] in (b"L", b"A")
    bad = bytearray(body)
    tag_len = 2 if bad[start + 1] < 0x80 else 3
    bad[start + tag_len] ^= 0xFF  # first payload byte: the shape
    sec_len = bad[start + 1] if tag_len == 2 else (bad[start + 1] & 0x7F) | (bad[start + 2] << 7)
    end = start + tag_len + sec_len
    bad[end : end + 4] = struct.pack("<I", zlib.crc32(bytes(bad[start:end])))
    bad = bytes(bad) + struct.pack("<I", zlib.crc32(bytes(bad)))
    with pytest.raises(InputError, match="section layer 0"):
        unpack(bad)


def test_magic_version_and_trailing():
    _, data = corrupt_cases()
    with pytest.raises(InputError, match="bad magic"):
        unpack(b"PK\x03\x04" + data[4:])
    with pytest.raises(InputError, match="bad magic"):
        unpack(b"")
    with pytest.raises(InputError, match="unsupported version 4"):
        unpack(data[:4] + bytes([4]) + data[5:])
    with pytest.raises(InputError, match="unexpected bytes"):
        unpack(data + b"\x00")


def test_files_and_cli(tmp_path, capsys):
    q = random_qnet((60, 20, 10), density=0.2, seed=12)
    qpath, dpath, back = tmp_path / "q.npz", tmp_path / "m.dcz", tmp_path / "back.npz"
    save_qnet(q, qpath)
    assert main(["pack", str(qpath), "--out", str(dpath), "--table"]) == 0
    assert "total" in capsys.readouterr().out
    assert main(["pack", str(qpath), "--out", str(tmp_path / "v1.dcz"), "--dcz-version", "1"]) == 0
    assert (tmp_path / "v1.dcz").read_bytes() == pack(q, version=1)
    assert read_dcz(tmp_path / "v1.dcz").equals(q)
    assert read_dcz(dpath).equals(q)
    assert main(["unpack", str(dpath), "--out", str(back)]) == 0
    assert load_qnet(back).equals(q)
    assert back.read_bytes() == qpath.read_bytes()
    assert main(["info", str(dpath)]) == 0
    assert "ratio" in capsys.readouterr().out
    assert main(["info", str(dpath), "--json"]) == 0

    data = dpath.read_bytes()
    cases = {
        "trunc.dcz": (data[: len(data) // 2], "truncated section layer 0"),
        "flip.dcz": (data[:-1] + bytes([data[-1] ^ 1]), "whole-file checksum mismatch"),
        "magic.dcz": (b"XXXX" + data[4:], "bad magic"),
        "ver.dcz": (data[:4] + b"\x07" + data[5:], "unsupported version 7"),
    }
    for name, (content, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        out = tmp_path / f"{name}.npz"
        capsys.readouterr()
        assert main(["unpack", str(p), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1
        assert not out.exists()
        assert main(["info", str(p)]) == 2
    capsys.readouterr()
    assert main(["unpack", str(tmp_path / "missing.dcz"), "--out", str(back)]) == 2
    assert "no such file" in capsys.readouterr().err
    # A pack that fails leaves no output behind.
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["pack", str(bad), "--out", str(tmp_path / "no.dcz")]) == 2
    assert not (tmp_path / "no.dcz").exists()
    assert write_dcz(q, tmp_path / "w.dcz") == len(pack(q))


def test_cli_subprocess_exit_status(tmp_path):
    p = tmp_path / "x.dcz"
    p.write_bytes(MAGIC + b"\x01H")
    r = subprocess.run(
        [sys.executable, "-m", "compress", "unpack", str(p), "--out", str(tmp_path / "o.npz")],
        capture_output=True, text=True,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: dcz: truncated") and r.stderr.count("\n") == 1


def smooth_qnet(seed=13):
    """Neighbouring weights alike (as in trained receptive fields): the context coder pays."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.choice([-1, 0, 1], p=[0.1, 0.8, 0.1], size=(40, 300)), axis=1)
    index = (np.mod(walk, 15) + 1).astype(np.uint8)
    index[rng.random(index.shape) < 0.5] = 0
    cb = np.concatenate(([0], np.arange(-7, 8) * 100)).astype(np.int16)
    bias = rng.integers(-5000, 5000, size=40).astype(np.int32)
    return QNet([Layer(cb, index, bias, shift=9, relu=False)], input_frac=8)


def test_context_coded_weights_roundtrip_and_corruption():
    q = smooth_qnet()
    data = pack(q)
    row = layer_sizes(q)[0]
    assert row["weight_context"] != "none"
    assert unpack(data).equals(q)
    nnz = np.count_nonzero(q.layers[0].index)
    assert row["weight_coded_bits"] < 3 * nnz  # a single table needs ~3.9 bits here
    for n in range(0, len(data), 7):
        with pytest.raises(InputError):
            unpack(data[:n])
    for i in range(0, len(data), 5):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(InputError):
            unpack(bytes(bad))


def test_layer_set_for_conv_layers(tmp_path, capsys):
    from compress.dcz import LayerSet, pack_layers, unpack_layers

    q = random_qnet((25, 20, 50, 10), density=[0.6, 0.2, 0.3], seed=14)
    # LeNet-5-like: conv1 [20, 1, 5, 5] and a fully connected layer, not a chain.
    layers = [q.layers[0], q.layers[2]]
    shapes = [(20, 1, 5, 5), (10, 50)]
    data = pack_layers(layers, shapes=shapes, input_frac=6)
    back = unpack_layers(data)
    assert back.equals(LayerSet(layers, shapes, 6))
    with pytest.raises(InputError, match="layer set"):
        unpack(data)
    rows = layer_sizes(back)
    assert rows[-1]["dcz_bytes"] == len(data)
    assert unpack_layers(pack(q)).equals(LayerSet(q.layers, [ly.index.shape for ly in q.layers], 8))
    p = tmp_path / "conv.dcz"
    p.write_bytes(data)
    assert main(["info", str(p)]) == 0
    assert "20x1x5x5" in capsys.readouterr().out
    assert main(["unpack", str(p), "--out", str(tmp_path / "x.npz")]) == 2
    with pytest.raises(InputError, match="does not fit"):
        pack_layers(layers, shapes=[(20, 2, 5, 5), (10, 50)])
    for n in range(0, len(data), 3):
        with pytest.raises(InputError):
            unpack_layers(data[:n])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=2, max_size=4),
    st.floats(0.0, 1.0),
    st.integers(1, 8),
    st.integers(0, 2**31),
)
def test_roundtrip_property(sizes, density, index_bits, seed):
    q = random_qnet(sizes, density=density, index_bits=index_bits, seed=seed)
    data = pack(q)
    assert unpack(data).equals(q)
    assert info(data)["bytes"] == len(data)


def test_bell_shaped_biases_use_rice_and_roundtrip():
    rng = np.random.default_rng(15)
    q = random_qnet((50, 400, 10), density=0.1, seed=15)
    bias = np.round(rng.standard_normal(400) * 1e6).astype(np.int32)
    bias[7] = 2**31 - 1  # one outlier: the Rice plan must still fit or fall back
    layers = [Layer(q.layers[0].codebook, q.layers[0].index, bias, 3, True), q.layers[1]]
    for b in (bias, np.round(rng.standard_normal(400) * 1e6).astype(np.int32) * 8):
        layers[0] = Layer(q.layers[0].codebook, q.layers[0].index, b.astype(np.int32), 3, True)
        qq = QNet(layers, input_frac=8)
        assert unpack(pack(qq)).equals(qq)
    row = layer_sizes(qq)[0]
    width = int(int(b.max()) - int(b.min())).bit_length() - 3  # the * 8 gives 3 trailing zeros
    assert row["bias_bits"] < width * 400  # Rice beats the fixed width on a bell shape


def _sections_of(data):
    pos, out = 5, []
    while pos < len(data) - 4:
        tag, p, length, sh = data[pos : pos + 1], pos + 1, 0, 0
        while True:
            b = data[p]
            p += 1
            length |= (b & 0x7F) << sh
            sh += 7
            if not b & 0x80:
                break
        out.append((tag, data[p : p + length]))
        pos = p + length + 4
    return out


def _seal(sections):
    from compress.dcz import _section

    body = MAGIC + bytes([DCZ_VERSION]) + b"".join(_section(t, p) for t, p in sections)
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("which", range(4))
def test_resealed_corruption_never_crashes(which):
    """Payload damage behind valid checksums (a crafted file) gives InputError or a valid
    network, never another exception."""
    q = [
        random_qnet((30, 20, 5), density=0.3, seed=1),
        smooth_qnet(),
        random_qnet((50, 40), density=0.05, seed=2, bias_scale=2**20, index_bits=8),
        image_like_qnet(),  # an arithmetic-coded section
    ][which]
    data = pack(q)
    secs = _sections_of(data)
    assert _seal(secs) == data
    rng = np.random.default_rng(which)
    for _ in range(150):
        s = list(secs)
        i = int(rng.integers(0, len(s)))
        payload = bytearray(s[i][1])
        j = int(rng.integers(0, len(payload)))
        mode = int(rng.integers(0, 3))
        if mode == 0:
            payload[j] ^= int(rng.integers(1, 256))
        elif mode == 1:
            del payload[j:]
        else:
            payload[j : j + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        s[i] = (s[i][0], bytes(payload))
        try:
            back = unpack(_seal(s))
        except InputError:
            continue
        back.validate(index_bits=8)


def test_shipped_model_is_what_the_encoder_writes():
    """The embedded default (docs/formats.md section 6) decodes exactly, and packing its qnet again
    gives the same bytes: the shipped size is the current encoder's size."""
    from compress.shipped import SHIPPED_DCZ as dcz_path, SHIPPED_QNET as qnet_path

    if not dcz_path.exists():
        pytest.skip("no shipped model yet")
    q = load_qnet(qnet_path, index_bits=8)
    data = dcz_path.read_bytes()
    assert read_dcz(dcz_path).equals(q)
    # A file of an older version is exactly what the encoder writes in that version.
    assert pack(q, version=data[4]) == data
    if data[4] == DCZ_VERSION:
        assert layer_sizes(q)[-1]["ratio"] == pytest.approx(1_066_440 / len(data))
    else:
        assert len(pack(q)) < len(data)  # the current version is smaller


# ---------------------------------------------------------------------------------------------
# Version 2: arithmetic-coded layers


def _ac_corner_layers():
    rng = np.random.default_rng(21)
    out = []
    for k, shape, density in [
        (2, (1, 1), 1.0),  # 1x1, one-bit indices (no index decisions at all)
        (3, (5, 7), 0.5),
        (16, (12, 30), 0.3),
        (33, (9, 64), 0.6),  # 6-bit indices, a 32-symbol alphabet plus one
        (256, (20, 16), 0.9),  # 8-bit indices
        (16, (8, 8), 0.0),  # an empty layer
        (1, (4, 6), 0.0),  # codebook of one: no positions coded
    ]:
        cb = np.zeros(k, dtype=np.int16)
        cb[1:] = rng.integers(-32768, 32768, size=k - 1)
        index = np.where(rng.random(shape) < density, rng.integers(1, max(k, 2), size=shape),
                         0).astype(np.uint8)
        if k == 1:
            index[:] = 0
        bias = rng.integers(-(2**31), 2**31, size=shape[0], dtype=np.int64).astype(np.int32)
        out.append(Layer(cb, index, bias, shift=int(rng.integers(0, 63)), relu=bool(k % 2)))
    # All-zero rows and columns (dead neurons and inputs, zero biases there), a lone non-zero
    # at the very end: long gaps, masks.
    index = np.zeros((40, 50), np.uint8)
    index[3:9, 10:20] = rng.integers(0, 16, size=(6, 10))
    index[-1, -1] = 7
    bias = np.where(index.any(axis=1), rng.integers(-99, 99, size=40) * 64, 0).astype(np.int32)
    cb = np.concatenate(([0], np.arange(1, 16) * 1000)).astype(np.int16)
    out.append(Layer(cb, index, bias, shift=5, relu=True))
    return out


def test_arithmetic_layers_roundtrip_every_choice():
    """Every coding choice the format allows decodes back exactly, whatever the encoder picks."""
    from compress.dcz import _TAG_AC, _ac_decode_layer, _ac_encode, _periods

    for i, ly in enumerate(_ac_corner_layers()):
        for col_major in (False, True):
            n_p = ly.index.shape[0] if col_major else ly.index.shape[1]
            for masked in ((False, True) if ly.codebook.shape[0] > 1 else (False,)):
                for period in _periods(n_p)[:3]:
                    for wmodel in range(3):
                        choice = dict(col_major=col_major, masked=masked, period=period,
                                      wmodel=wmodel)
                        payload, parts = _ac_encode(ly, choice)
                        back, got = _ac_decode_layer(payload, i, want_choice=True)
                        assert back.equals(ly), (i, choice)
                        assert got == choice
                        assert sum(parts.values()) == pytest.approx(8 * len(payload), abs=1e-6)
        # And through the file, where the encoder chooses (and may prefer Huffman).
        q = QNet([ly], input_frac=3)
        assert unpack(pack(q)).equals(q)
    assert _TAG_AC == b"A"


def test_version_1_still_written_and_read_and_never_smaller():
    for case in (1, 3, 6, 7):
        q = random_qnet(**CASES[case])
        v1, v2 = pack(q, version=1), pack(q)
        assert v1[4] == 1 and v2[4] == 2
        assert unpack(v1).equals(q) and unpack(v2).equals(q)
        assert info(v1)["version"] == 1
        assert len(v2) <= len(v1)  # each layer keeps the smaller of its two codings
    v3 = pack(q, version=3)  # version 3 holds any qnet (its geometry: a flat input here)
    assert v3[4] == 3 and unpack(v3).equals(q) and len(v3) - len(v2) <= 8
    with pytest.raises(InputError, match="unknown .dcz version 4"):
        pack(q, version=4)


def image_like_qnet(seed=22):
    """Rows are smooth 10x10 receptive fields with an empty border: what LeNet-300-100's
    first layer looks like, where the neighbour contexts (period 10) pay."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:10, 0:10]
    rows = []
    for _ in range(60):
        cy, cx, s = *rng.uniform(3, 7, size=2), rng.uniform(2, 6)
        f = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / s) * rng.choice([-1, 1])
        idx = np.clip(np.round(f * 7) + 8, 1, 15).astype(np.uint8)
        idx[(rng.random((10, 10)) < 0.6) | (np.abs(f) < 0.2)] = 0
        idx[0], idx[:, 0] = 0, 0
        rows.append(idx.reshape(-1))
    index = np.stack(rows)
    index[[5, 17]] = 0
    cb = np.concatenate(([0], np.arange(-7, 8) * 300 + 10)).astype(np.int16)
    bias = np.where(index.any(axis=1), rng.integers(-2**20, 2**20, size=60), 0).astype(np.int32)
    return QNet([Layer(cb, index, bias, shift=9, relu=True)], input_frac=8)


def test_image_like_layer_is_arithmetic_coded_with_neighbour_contexts(capsys, tmp_path):
    q = image_like_qnet()
    data = pack(q)
    v1 = pack(q, version=1)
    assert unpack(data).equals(q)
    assert len(data) < 0.97 * len(v1)
    d = info(data)
    ly = d["layers"][0]
    assert ly["coding"] == "arithmetic"
    parts = ly["parts"]
    assert set(parts) == {"header", "codebook", "bias", "positions", "indices"}
    assert sum(parts.values()) == pytest.approx(len(_sections_of(data)[1][1]), abs=0.01)
    rows = layer_sizes(q)
    assert rows[0]["weight_context"] == "left-and-up"
    assert rows[-1]["dcz_bytes"] == len(data)
    p = tmp_path / "img.dcz"
    p.write_bytes(data)
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "arithmetic coded" in out and "positions" in out and "bias" in out
    for n in range(0, len(data), 11):
        with pytest.raises(InputError):
            unpack(data[:n])


def test_arithmetic_layer_work_is_bounded_by_its_size():
    """A crafted "A" section declaring far more positions than its bytes can code is refused
    before decoding (the coder's work would otherwise not be bounded by the file)."""
    from compress import limits
    from compress.dcz import _TAG_AC, _header_payload
    from compress.huffman import BitWriter

    w = BitWriter()
    for v in (1000, 1000, 0):
        w.write_eg(v)
    w.write(0, 1)  # relu
    w.write(0, 1)  # row-major
    w.write_eg(2)  # K
    w.write(0, 1)  # no masks
    w.write_eg(0)
    w.write_eg(0)
    w.align()
    layer = Layer(np.array([0, 1], np.int16), np.zeros((1000, 1000), np.uint8),
                  np.zeros(1000, np.int32), 0, False)
    payload = w.getvalue() + b"\x01" * 40  # (a zero byte at the end is refused as padding)
    data = _seal([(b"H", _header_payload([layer], 8, None)), (_TAG_AC, payload)])
    with limits.override(dcz_weights_per_byte=10**6):
        with pytest.raises(InputError, match="arithmetic-coded layer of 1,000,000 positions"):
            unpack(data)
