""".dcz: the reader refuses what the writer would refuse, and `info` costs no more than
`unpack`.

An arithmetic-coded layer may declare at most 2**14 + 256 positions per byte of its section,
and a file at most dcz_free_weights + dcz_weights_per_byte weights per byte. Padding inflated
both: a 16 KB file, its body zero-padded, declared 2**22 positions and unpacked (2.6 s) to a qnet
that `pack` refuses ("declares 4,194,304 weights in a file of 630 bytes"). The encoder never
ends a stream with a zero byte, and its decoder reads every byte it wrote: a trailing zero byte
is refused before anything is decoded, and bytes the decoder never reaches after it. `info`
coded every layer again to split it into parts (up to 4x the CPU, 10x the memory of a decode);
it now reads the split off the decode itself.
"""

import struct
import time
import zlib

import numpy as np
import pytest

import compress.dcz as D
from compress.errors import InputError
from compress.qnet import Layer
from compress.synthetic import random_qnet

CHOICE = {"col_major": False, "masked": False, "period": 0, "wmodel": 0}


def _seal(layer, payload):
    body = (D.MAGIC + bytes([2]) + D._section(b"H", D._header_payload([layer], 8, None))
            + D._section(b"A", payload))
    return body + struct.pack("<I", zlib.crc32(body))


def _padded(pad: bytes, side: int = 2048):
    """An arithmetic-coded side x side layer (a few non-zeros: ~100 bytes of stream), its
    body padded with `pad` until the section allows every position."""
    idx = np.zeros((side, side), np.uint8)
    idx[:: side // 4, :: side // 3] = 1
    layer = Layer(np.array([0, 3], np.int16), idx, np.zeros(side, np.int32), 0, False)
    payload, _ = D._ac_encode(layer, CHOICE)
    need = -(-(side * side - D.AC_FREE_POSITIONS) // D.AC_POSITIONS_PER_BYTE)
    payload += (pad * need)[: max(0, need - len(payload))]
    return _seal(layer, payload), layer


def test_zero_padding_refused_before_decoding():
    """Item 7: the issue's 16 KB file (2**22 positions): unpack took 2.6 s and wrote a qnet
    pack refuses; info 8.7 s and 482 MB. Now refused before a position is decoded."""
    data, layer = _padded(b"\x00")
    assert 16_000 < len(data) < 17_000
    # (pack refuses this network: 4,194,304 weights in the ~50 bytes it codes them in; 7 s of
    # CPU to show, so not shown here: test_pack_refuses_what_unpack_would_refuse does that)
    for fn in (D.unpack, D.info):
        t = time.process_time()
        with pytest.raises(InputError, match="ends in a zero byte.*padding"):
            fn(data)
        assert time.process_time() - t < 0.1  # CPU, with headroom (measured: < 1 ms)


def test_unread_bytes_refused_after_a_bounded_decode():
    """Padding that is not zeros: the decoder never reaches it, and says so. The work is the
    format's bound for the bytes the file holds (256 positions a byte): 512x512 here."""
    data, _ = _padded(b"\x55", side=512)
    for fn in (D.unpack, D.info):
        t = time.process_time()
        with pytest.raises(InputError, match="bytes after the arithmetic-coded stream that the "
                                             "decoder never reads"):
            fn(data)
        assert time.process_time() - t < 2.0


def test_decoder_reads_every_byte_the_encoder_writes():
    """What the two new refusals rest on: over many layers and every coding choice, the body
    never ends in a zero byte and the decoder always reads all of it (and a few bytes past)."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        o, i, k = int(rng.integers(1, 40)), int(rng.integers(1, 50)), int(rng.integers(2, 17))
        dens = [0.0, 0.002, 0.05, 0.3, 1.0][trial % 5]
        idx = ((rng.random((o, i)) < dens) * rng.integers(1, k, (o, i))).astype(np.uint8)
        cb = np.concatenate([[0], np.arange(1, k) * 11]).astype(np.int16)
        bias = (rng.integers(-99, 99, o) * (trial % 2)).astype(np.int32)
        layer = Layer(cb, idx, bias, 2, True)
        for choice in (CHOICE, {**CHOICE, "col_major": True, "wmodel": 1}):
            payload, _ = D._ac_encode(layer, choice)
            assert D._ac_decode_layer(payload, 0, D._Budget(1 << 20)).equals(layer)


def _cpu(fn, repeat=3):
    best = None
    for _ in range(repeat):
        t = time.process_time()
        fn()
        c = time.process_time() - t
        best = c if best is None else min(best, c)
    return best


def test_info_costs_no_more_than_unpack():
    """Item 7: info coded each layer again (4x the decode's CPU); now one decode. CPU time,
    the best of three, with headroom."""
    from .test_dcz import image_like_qnet

    data = D.pack(image_like_qnet())
    assert D.info(data)["layers"][0]["coding"] == "arithmetic"
    for blob in (data, _padded(b"\x55", side=256)[0]):
        def run(fn):
            try:
                fn(blob)
            except InputError:
                pass
        t_unpack, t_info = _cpu(lambda: run(D.unpack)), _cpu(lambda: run(D.info))
        assert t_info <= 1.5 * t_unpack + 0.02, (t_info, t_unpack)


def test_info_parts_are_the_encoders():
    """The split read off the decode is the one the encoder counts (Huffman and arithmetic
    layers, both versions), and every part adds up to the section."""
    for q, version in ((random_qnet((40, 30, 5), density=0.3, seed=1), 2),
                       (random_qnet((40, 30, 5), density=0.3, seed=1), 1),
                       (random_qnet((64, 48, 6), density=0.05, seed=2), 2)):
        data = D.pack(q, version=version)
        _, infos = D._pack(q.layers, q.input_frac, None, version)
        d = D.info(data)
        for ly, inf in zip(d["layers"], infos):
            assert ly["parts"] == {k: round(v / 8, 1) for k, v in inf["parts"].items()}
        assert d["sha256"] == q.checksum()
