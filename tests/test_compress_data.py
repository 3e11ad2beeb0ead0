"""MNIST IDX reading (validated), the train/validation split and the shipped sample digits."""

import gzip
import struct

import numpy as np
import pytest

from compress.data import (SAMPLE_PATH, load_sample, load_split, read_idx, train_val_split,
                           write_sample)
from compress.errors import InputError


def _idx(shape, data: bytes, code=0x08) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape) + data


def test_read_idx_raw_and_gzip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(a.shape, a.tobytes()))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(a.shape, a.tobytes())))
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)


@pytest.mark.parametrize("raw, what", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
    (b"\x00\x00\x08\x02\x00\x00", "header"),
    (_idx((3,), b"\x01\x02"), "payload"),
    (_idx((1,), b"\x01", code=0x07), "type"),
    (b"\x1f\x8b\x08\x00garbage", "gzip"),
])
def test_read_idx_refuses_bad_files(tmp_path, raw, what):
    (tmp_path / "bad").write_bytes(raw)
    with pytest.raises(InputError, match=what):
        read_idx(tmp_path / "bad")


def test_read_idx_gzip_bomb_and_wrapping_shape_refused_cheaply(tmp_path):
    import tracemalloc

    from compress import limits

    # 10 images declared, 400 MB of zeros behind them: only the declared size is inflated
    bomb = gzip.compress(_idx((10, 28, 28), bytes(400 << 20)), compresslevel=1)
    (tmp_path / "bomb.gz").write_bytes(bomb)
    tracemalloc.start()
    with pytest.raises(InputError, match="IDX payload is more than 7840 bytes"):
        read_idx(tmp_path / "bomb.gz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, peak
    # four dimensions of 65,536: 2**64 elements (numpy's product wrapped to 0)
    (tmp_path / "wrap").write_bytes(_idx((65536,) * 4, b""))
    with pytest.raises(InputError, match="max_array_bytes"):
        read_idx(tmp_path / "wrap")
    with limits.override(max_array_bytes=100):
        (tmp_path / "big").write_bytes(_idx((200,), bytes(200)))
        with pytest.raises(InputError, match="max_array_bytes"):
            read_idx(tmp_path / "big")


def test_empty_split_refused(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx((0, 28, 28), b""))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx((0,), b""))
    with pytest.raises(InputError, match="holds no images"):
        load_split("test", tmp_path)


def test_checksum_mismatch_refused(tmp_path):
    a = _idx((1,), b"\x01")
    (tmp_path / "f").write_bytes(a)
    with pytest.raises(InputError, match="sha256"):
        read_idx(tmp_path / "f", expected_sha256="0" * 64)


def test_missing_directory_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_DIR", raising=False)
    with pytest.raises(InputError, match="--data"):
        load_split("test")
    with pytest.raises(InputError, match="does not exist"):
        load_split("test", tmp_path / "nope")
    with pytest.raises(InputError, match="not found"):
        load_split("test", tmp_path)


def test_real_mnist_and_split(mnist_dir, monkeypatch):
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    test = load_split("test")  # from the environment variable
    assert test.images.shape == (10000, 28, 28) and test.labels.shape == (10000,)
    assert test.images.dtype == np.uint8 and int(test.labels.max()) == 9
    tr, va = train_val_split(test, 1000, seed=3)
    assert len(tr) == 9000 and len(va) == 1000
    tr2, va2 = train_val_split(test, 1000, seed=3)
    assert np.array_equal(va.labels, va2.labels)


def test_sample_round_trip_and_corruption(tmp_path, mnist_dir):
    test = load_split("test", mnist_dir)
    write_sample(tmp_path / "s.npz", test, n=7)
    s = load_sample(tmp_path / "s.npz")
    assert np.array_equal(s.images, test.images[:7]) and np.array_equal(s.labels, test.labels[:7])
    raw = bytearray((tmp_path / "s.npz").read_bytes())
    # Flip a byte inside the stored images: the checksum must catch it.
    pos = raw.find(bytes(test.images[0].reshape(-1)[150:160]))
    assert pos > 0
    raw[pos] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(InputError):
        load_sample(tmp_path / "bad.npz")


@pytest.mark.skipif(not SAMPLE_PATH.exists(), reason="sample digits not shipped yet")
def test_shipped_sample_is_first_100_test_digits(mnist_dir):
    s = load_sample()
    test = load_split("test", mnist_dir)
    assert s.images.shape == (100, 28, 28)
    assert np.array_equal(s.images, test.images[:100])
    assert np.array_equal(s.labels, test.labels[:100])
