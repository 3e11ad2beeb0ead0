"""compress.entropy: the adaptive binary range coder of .dcz version 2."""

import math

import numpy as np
import pytest

from compress.entropy import INT_CONTEXTS, Decoder, Encoder, kt_bits, unzigzag, zigzag
from compress.errors import InputError


def _roundtrip(bits, ctx, ints=(), sints=()):
    n_ctx = int(max(ctx, default=0)) + 1
    e = Encoder(n_ctx)
    ib, sb = e.grow(INT_CONTEXTS), e.grow(INT_CONTEXTS)
    for b, c in zip(bits, ctx):
        e.bit(int(b), int(c))
    for v in ints:
        e.put_int(int(v), ib)
    for v in sints:
        e.put_sint(int(v), sb)
    data = e.finish()
    d = Decoder(data, n_ctx)
    ib2, sb2 = d.grow(INT_CONTEXTS), d.grow(INT_CONTEXTS)
    assert (ib2, sb2) == (ib, sb)
    out = [d.bit(int(c)) for c in ctx]
    oi = [d.get_int(ib2) for _ in ints]
    os_ = [d.get_sint(sb2) for _ in sints]
    assert out == [int(b) for b in bits]
    assert oi == [int(v) for v in ints]
    assert os_ == [int(v) for v in sints]
    return data, e


@pytest.mark.parametrize("seed", range(12))
def test_random_roundtrips(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 4000))
    p = float(rng.random()) ** 3  # from nearly always 0 to balanced
    bits = (rng.random(n) < p).astype(int)
    ctx = rng.integers(0, int(rng.integers(1, 9)), n)
    ints = rng.integers(0, 2 ** int(rng.integers(1, 63)), int(rng.integers(0, 40)), dtype=np.int64)
    sints = rng.integers(-(2**40), 2**40, int(rng.integers(0, 40)))
    _roundtrip(bits.tolist(), ctx.tolist(), ints.tolist(), sints.tolist())


def test_corner_streams():
    _roundtrip([], [])  # nothing coded: an empty stream
    assert Encoder(1).finish() == b""
    _roundtrip([1] * 5000, [0] * 5000)  # long runs of the unlikely symbol at first
    _roundtrip([0] * 20000 + [1], [0] * 20001)  # the clamp at p0 = 32767
    _roundtrip([], [], ints=[0, 1, 2**63 - 1, 2**62], sints=[0, -1, 1, -(2**62), 2**62 - 1])
    # Carries: alternating extreme probabilities make low cross 2**32 with 0xFF bytes pending.
    rng = np.random.default_rng(5)
    bits = (rng.random(30000) < 0.999).astype(int)
    _roundtrip(bits.tolist(), [0] * 30000)


def test_size_matches_the_estimate_and_entropy():
    rng = np.random.default_rng(1)
    n = 50000
    bits = (rng.random(n) < 0.06).astype(int)
    ctx = np.zeros(n, dtype=int)
    data, enc = _roundtrip(bits.tolist(), ctx.tolist())
    est = kt_bits(ctx, bits)
    assert abs(8 * len(data) - est) < 40  # termination and 15-bit rounding only
    assert abs(sum(enc.cost.values()) - est) < 0.002 * est
    p = bits.mean()
    h = -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) * n
    assert h <= est <= h + 20  # adaptive counts pay ~0.5 log2 n for not knowing p


def test_contexts_pay_on_dependent_bits():
    rng = np.random.default_rng(2)
    ctx = rng.integers(0, 2, 20000)
    bits = np.where(ctx == 1, rng.random(20000) < 0.9, rng.random(20000) < 0.1).astype(int)
    with_ctx = kt_bits(ctx, bits)
    without = kt_bits(np.zeros_like(ctx), bits)
    assert with_ctx < 0.5 * without
    data, _ = _roundtrip(bits.tolist(), ctx.tolist())
    assert 8 * len(data) < with_ctx + 40


def test_deterministic_and_trailing_zeros_dropped():
    rng = np.random.default_rng(3)
    bits = (rng.random(3000) < 0.3).astype(int).tolist()
    a, _ = _roundtrip(bits, [0] * 3000)
    b, _ = _roundtrip(bits, [0] * 3000)
    assert a == b and not a.endswith(b"\x00")


def test_bytes_past_the_end_read_as_zero():
    # A decoder reading more decisions than were coded never fails or hangs: it reads zeros.
    d = Decoder(b"\x12", 1)
    assert len([d.bit(0) for _ in range(1000)]) == 1000


def test_corrupt_start_and_runaway_integer_refused():
    with pytest.raises(InputError, match="corrupt arithmetic-coded stream"):
        Decoder(b"\xff\xff\xff\xff", 1, what="x")
    # A stream of one-bits decodes as an integer class above 63: refused, not a huge number.
    e = Encoder(INT_CONTEXTS)
    for _ in range(70):
        e.bit(1, min(_, INT_CONTEXTS - 1))
    d = Decoder(e.finish(), INT_CONTEXTS, what="ints")
    with pytest.raises(InputError, match="ints: corrupt integer code"):
        d.get_int(0)


def test_zigzag():
    for v in (0, -1, 1, -(2**40), 2**40 - 1):
        assert unzigzag(zigzag(v)) == v
    assert [zigzag(v) for v in (0, -1, 1, -2)] == [0, 1, 2, 3]
