"""compress.huffman: optimal lengths, canonical codes, bit streams round trip on hard inputs."""

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.errors import InputError
from compress.huffman import (
    MAX_CODE_LEN,
    BitReader,
    BitWriter,
    HuffmanCode,
    code_lengths,
    read_table,
    table_bits,
    write_table,
)


def fib(n):
    f = [1, 1]
    while len(f) < n:
        f.append(f[-1] + f[-2])
    return f[:n]


def optimal_cost(counts):
    """Huffman's total cost = the sum of all merged weights (reference)."""
    h = [c for c in counts if c > 0]
    if len(h) < 2:
        return 0
    heapq.heapify(h)
    cost = 0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        cost += a + b
        heapq.heappush(h, a + b)
    return cost


def roundtrip(symbols, alphabet):
    code = HuffmanCode.from_symbols(symbols, alphabet)
    w = BitWriter()
    w.write(0b101, 3)  # misalign on purpose
    write_table(w, code)
    w.write_symbols(symbols, code)
    w.write_eg(12345)
    data = w.getvalue()
    assert len(data) == (w.nbits + 7) // 8
    r = BitReader(data)
    assert r.read(3) == 0b101
    code2 = read_table(r)
    np.testing.assert_array_equal(code2.lengths, code.lengths)
    out = r.read_symbols(len(symbols), code2)
    np.testing.assert_array_equal(out, np.asarray(symbols, dtype=np.int64))
    assert r.read_eg() == 12345
    return code


DISTRIBUTIONS = {
    "single": [37],
    "two": [1, 1000],
    "fibonacci-20": fib(20),
    "fibonacci-32": fib(32),  # optimal lengths would exceed MAX_CODE_LEN
    "geometric": [int(1e6 * 0.5**i) + 1 for i in range(30)],
    "uniform": [50] * 16,
    "sparse-alphabet": [0, 0, 5, 0, 9, 0, 0, 1],
    "empty": [],
    "all-zero-counts": [0, 0, 0],
}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_roundtrip_adversarial(name):
    counts = np.array(DISTRIBUTIONS[name], dtype=np.int64)
    if counts.sum() > 300_000:
        counts = np.maximum(counts // (counts.sum() // 300_000 + 1), (counts > 0).astype(int))
    rng = np.random.default_rng(0)
    symbols = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    code = roundtrip(symbols, len(counts))
    assert code.lengths.max(initial=0) <= MAX_CODE_LEN
    if np.count_nonzero(counts) > 1 and code.lengths.max() < MAX_CODE_LEN:
        assert code.bits(counts) == optimal_cost(counts.tolist())


def test_single_symbol_costs_no_bits():
    code = HuffmanCode.from_counts([0, 1000, 0])
    assert code.bits([0, 1000, 0]) == 0
    data, nbits = code.encode(np.ones(1000, dtype=np.int64))
    assert nbits == 0 and data == b""
    out, end = code.decode(b"", 1000)
    assert end == 0 and np.all(out == 1)


def test_canonical_codes_are_prefix_free_and_ordered():
    code = HuffmanCode.from_counts(fib(12) + [0, 3])
    codes, lengths = code.codes(), code.lengths
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths) if n]
    for a in words:
        assert sum(b.startswith(a) for b in words) == 1
    used = np.flatnonzero(lengths)
    order = sorted(used, key=lambda s: (lengths[s], s))
    vals = [int(codes[s]) << (MAX_CODE_LEN - int(lengths[s])) for s in order]
    assert vals == sorted(vals)


def test_length_limit_holds():
    counts = np.array(fib(40), dtype=np.int64)
    assert code_lengths(counts, max_len=60).max() == 39
    ln = code_lengths(counts)
    assert ln.max() <= MAX_CODE_LEN
    assert np.sum(2.0 ** -ln.astype(float)) == pytest.approx(1.0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=500), st.integers(0, 3))
def test_roundtrip_property(symbols, extra):
    alphabet = (max(symbols) + 1 if symbols else 0) + extra
    roundtrip(np.array(symbols, dtype=np.int64), alphabet)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=30))
def test_fields_and_exp_golomb(values):
    w = BitWriter()
    for v in values:
        w.write_eg(v)
        w.write(v, 41)
        w.write_sint(-v)
    w.write_fields(np.array(values) & 0xFFFF, 16)
    r = BitReader(w.getvalue())
    for v in values:
        assert r.read_eg() == v and r.read(41) == v and r.read_sint() == -v
    np.testing.assert_array_equal(r.read_fields(len(values), 16), np.array(values) & 0xFFFF)


def test_table_bits_matches_writer():
    for counts in DISTRIBUTIONS.values():
        code = HuffmanCode.from_counts(np.array(counts, dtype=np.int64))
        w = BitWriter()
        write_table(w, code)
        assert w.nbits == table_bits(code.lengths)


def test_truncated_and_corrupt_streams_are_refused():
    rng = np.random.default_rng(1)
    s = rng.geometric(0.3, size=2000) - 1
    code = HuffmanCode.from_symbols(s, int(s.max()) + 1)
    data, nbits = code.encode(s)
    with pytest.raises(InputError, match="truncated|corrupt"):
        code.decode(data[: len(data) // 2], len(s))
    r = BitReader(b"\x00")
    with pytest.raises(InputError, match="truncated"):
        r.read_eg()
    with pytest.raises(InputError, match="truncated"):
        BitReader(b"\xff").read(9)
    # A table whose lengths break Kraft's equality is refused.
    w = BitWriter()
    write_table(w, HuffmanCode(np.array([1, 2, 3], dtype=np.uint8)))
    with pytest.raises(InputError, match="complete prefix code"):
        read_table(BitReader(w.getvalue()))


def test_many_symbols_vectorised():
    rng = np.random.default_rng(2)
    s = np.minimum(rng.geometric(0.2, size=2_000_000) - 1, 60)
    code = HuffmanCode.from_symbols(s, 61)
    data, nbits = code.encode(s)
    out, end = code.decode(data, len(s))
    assert end == nbits
    np.testing.assert_array_equal(out, s)


@pytest.mark.parametrize("n", [(1 << 16) + 1, 300_000])
def test_pair_packing_path(n):
    """Long streams over small alphabets are packed two symbols at a time; odd lengths and a
    misaligned start must come out the same as symbol by symbol."""
    rng = np.random.default_rng(n)
    s = np.minimum(rng.geometric(0.3, size=n) - 1, 19)
    code = HuffmanCode.from_symbols(s, 20)
    assert code.lengths.max() <= 16
    w = BitWriter()
    w.write(0b10110, 5)
    w.write_symbols(s, code)
    w.write(1, 1)
    data = w.getvalue()
    head = s[:2000]
    ref = "10110" + "".join(
        format(int(c), f"0{int(ln)}b") for c, ln in zip(code.codes()[head], code.lengths[head])
    )
    bits = "".join(format(b, "08b") for b in data[: len(ref) // 8 + 1])
    assert bits[: len(ref)] == ref
    r = BitReader(data)
    assert r.read(5) == 0b10110
    np.testing.assert_array_equal(r.read_symbols(n, code), s)
    assert r.read(1) == 1
