"""Adaptive binary arithmetic coding for the .dcz version 2 layer sections.

The coder is the carry-propagating binary range coder of LZMA with one change: the
probability of each decision comes from adaptive counts instead of a shift-updated state.
Everything is integer arithmetic, so an encoder and a decoder written from this description
agree bit for bit (docs/dcz-format.md gives the same definition in prose).

Probability model. A context holds two counts n0, n1 (both 0 at the start). The probability
of a 0, in units of 2**-15, is the Krichevsky-Trofimov estimate::

    p0 = ((2 * n0 + 1) << 15) // (2 * (n0 + n1) + 2), clamped to 1..32767

and after the decision the count of the bit that occurred grows by one. Counts never decay:
a trained layer's statistics do not drift along the matrix, and order-free counts let the
encoder price a whole candidate coding with one vectorised formula (`kt_bits`) instead of
running the coder.

Encoder (low: integer, range: 32 bits, cache: one byte, pending: a count)::

    start:   low = 0, range = 2**32 - 1, cache = 0, pending = 1
    bit b with probability p0:
             bound = (range >> 15) * p0
             b == 0: range = bound;   b == 1: low += bound, range -= bound
             while range < 2**24: range <<= 8, shift()
    shift(): if low < 0xFF000000 or low >= 2**32:      # the top byte is settled
                 carry = low >> 32
                 emit (cache + carry) & 0xFF, then pending - 1 bytes (0xFF + carry) & 0xFF
                 pending = 0, cache = (low >> 24) & 0xFF
             pending += 1, low = (low & 0x00FFFFFF) << 8
    finish:  pick v in [low, low + range) with the most trailing zero bits (a multiple of
             2**32, else of 2**24, 2**16, 2**8, else low itself), low = v, shift() five times;
             drop the first byte emitted (always 0) and every trailing zero byte

Decoder: code = the first four bytes (big endian), range = 2**32 - 1; a byte past the end of
the stream reads as 0 (that is why the encoder may drop trailing zeros). A code >= range is a
corrupt stream. For each decision::

    bound = (range >> 15) * p0
    code < bound: bit 0, range = bound;   else: bit 1, code -= bound, range -= bound
    while range < 2**24: range <<= 8, code = (code << 8) | next byte

Integers (`put_int` / `get_int`, "adaptive Elias-gamma"): u >= 0 is coded through v = u + 1,
n = bit length of v - 1: n one-bits then a zero-bit (the i-th of these decisions in context
base + min(i, 23)), then the n bits of v below its leading one, most significant first, at
probability one half (p0 = 16384). n is at most 63. Signed values are zigzagged first
(0, -1, 1, -2, ... -> 0, 1, 2, 3, ...).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError

PROB_BITS = 15
_HALF = 1 << (PROB_BITS - 1)
_PMAX = (1 << PROB_BITS) - 1
_TOP = 1 << 24
_MASK32 = (1 << 32) - 1
INT_CONTEXTS = 24  # contexts of one integer model (unary class decisions)
MAX_INT_CLASS = 63


class Encoder:
    """Adaptive binary range encoder; contexts are indices into the count lists."""

    def __init__(self, n_contexts: int = 0):
        self.low = 0
        self.range = _MASK32
        self.cache = 0
        self.pending = 1
        self.out = bytearray()
        self.n0 = [0] * n_contexts
        self.n1 = [0] * n_contexts
        # Information content of the decisions so far (bits), by part: for `info`.
        self.cost: dict[str, float] = {}
        self.part = "other"

    def grow(self, n_contexts: int) -> int:
        """Add n_contexts fresh contexts; return the index of the first."""
        base = len(self.n0)
        self.n0.extend([0] * n_contexts)
        self.n1.extend([0] * n_contexts)
        return base

    def _shift(self) -> None:
        low = self.low
        if low < 0xFF000000 or low > _MASK32:
            carry = low >> 32
            out = self.out
            out.append((self.cache + carry) & 0xFF)
            for _ in range(self.pending - 1):
                out.append((0xFF + carry) & 0xFF)
            self.pending = 0
            self.cache = (low >> 24) & 0xFF
        self.pending += 1
        self.low = (low & 0x00FFFFFF) << 8

    def _code(self, bit: int, p0: int) -> None:
        bound = (self.range >> PROB_BITS) * p0
        if bit:
            self.low += bound
            self.range -= bound
        else:
            self.range = bound
        while self.range < _TOP:
            self.range <<= 8
            self._shift()

    def bit(self, bit: int, ctx: int) -> None:
        n0, n1 = self.n0[ctx], self.n1[ctx]
        p0 = ((2 * n0 + 1) << PROB_BITS) // (2 * (n0 + n1) + 2)
        p0 = 1 if p0 < 1 else (_PMAX if p0 > _PMAX else p0)
        self.cost[self.part] = self.cost.get(self.part, 0.0) - math.log2(
            (p0 if not bit else (1 << PROB_BITS) - p0) / (1 << PROB_BITS)
        )
        self._code(bit, p0)
        if bit:
            self.n1[ctx] = n1 + 1
        else:
            self.n0[ctx] = n0 + 1

    def bits(self, bits, ctxs) -> None:
        """Code a sequence of decisions (bits[i] in context ctxs[i]) in one tight loop; the
        same as calling `bit` for each, without the per-part accounting."""
        low, rng, cache, pending, out = self.low, self.range, self.cache, self.pending, self.out
        n0s, n1s = self.n0, self.n1
        for b, c in zip(bits, ctxs):
            n0, n1 = n0s[c], n1s[c]
            p0 = ((2 * n0 + 1) << PROB_BITS) // (2 * (n0 + n1) + 2)
            p0 = 1 if p0 < 1 else (_PMAX if p0 > _PMAX else p0)
            bound = (rng >> PROB_BITS) * p0
            if b:
                low += bound
                rng -= bound
                n1s[c] = n1 + 1
            else:
                rng = bound
                n0s[c] = n0 + 1
            while rng < _TOP:
                rng <<= 8
                if low < 0xFF000000 or low > _MASK32:  # shift(), inlined
                    carry = low >> 32
                    out.append((cache + carry) & 0xFF)
                    for _ in range(pending - 1):
                        out.append((0xFF + carry) & 0xFF)
                    pending = 0
                    cache = (low >> 24) & 0xFF
                pending += 1
                low = (low & 0x00FFFFFF) << 8
        self.low, self.range, self.cache, self.pending = low, rng, cache, pending

    def direct(self, value: int, nbits: int) -> None:
        """nbits of value, most significant first, each at probability one half."""
        for i in range(nbits - 1, -1, -1):
            self._code((value >> i) & 1, _HALF)
        self.cost[self.part] = self.cost.get(self.part, 0.0) + nbits

    def put_int(self, u: int, base: int) -> None:
        """u >= 0 as an adaptive Elias-gamma code (contexts base .. base + INT_CONTEXTS - 1)."""
        v = int(u) + 1
        n = v.bit_length() - 1
        if n > MAX_INT_CLASS:
            raise ValueError(f"{u} is too large for the integer code")
        for i in range(n):
            self.bit(1, base + min(i, INT_CONTEXTS - 1))
        self.bit(0, base + min(n, INT_CONTEXTS - 1))
        self.direct(v & ((1 << n) - 1), n)

    def put_sint(self, s: int, base: int) -> None:
        self.put_int(zigzag(s), base)

    def finish(self) -> bytes:
        lo, hi = self.low, self.low + self.range
        for zeros in (32, 24, 16, 8, 0):
            m = (1 << zeros) - 1
            v = (lo + m) & ~m
            if v < hi:
                break
        self.low = v
        for _ in range(5):
            self._shift()
        data = bytes(self.out[1:])
        return data.rstrip(b"\x00")


class Decoder:
    """Reads what `Encoder` wrote; bytes past the end read as zero.

    With `cost` set to a dict, `bit` and `direct` add the information content of each decision
    to cost[part], exactly as `Encoder` does (for `info`: the split of a layer's bytes)."""

    def __init__(self, data: bytes, n_contexts: int = 0, what: str = "stream"):
        self.data = bytes(data)
        self.pos = 4
        self.what = what
        head = self.data[:4] + bytes(max(0, 4 - len(self.data)))
        self.code = int.from_bytes(head, "big")
        self.range = _MASK32
        if self.code >= self.range:
            raise InputError(f"{what}: corrupt arithmetic-coded stream")
        self.n0 = [0] * n_contexts
        self.n1 = [0] * n_contexts
        self.cost: dict[str, float] | None = None
        self.part = "other"

    def grow(self, n_contexts: int) -> int:
        base = len(self.n0)
        self.n0.extend([0] * n_contexts)
        self.n1.extend([0] * n_contexts)
        return base

    def _decode(self, p0: int) -> int:
        bound = (self.range >> PROB_BITS) * p0
        if self.code < bound:
            self.range = bound
            bit = 0
        else:
            self.code -= bound
            self.range -= bound
            bit = 1
        while self.range < _TOP:
            self.range <<= 8
            p = self.pos
            self.code = (self.code << 8) | (self.data[p] if p < len(self.data) else 0)
            self.pos = p + 1
        return bit

    def bit(self, ctx: int) -> int:
        n0, n1 = self.n0[ctx], self.n1[ctx]
        p0 = ((2 * n0 + 1) << PROB_BITS) // (2 * (n0 + n1) + 2)
        p0 = 1 if p0 < 1 else (_PMAX if p0 > _PMAX else p0)
        bit = self._decode(p0)
        if self.cost is not None:
            self.cost[self.part] = self.cost.get(self.part, 0.0) - math.log2(
                (p0 if not bit else (1 << PROB_BITS) - p0) / (1 << PROB_BITS)
            )
        if bit:
            self.n1[ctx] = n1 + 1
            return 1
        self.n0[ctx] = n0 + 1
        return 0

    def direct(self, nbits: int) -> int:
        v = 0
        for _ in range(nbits):
            v = (v << 1) | self._decode(_HALF)
        if self.cost is not None:
            self.cost[self.part] = self.cost.get(self.part, 0.0) + nbits
        return v

    def get_int(self, base: int) -> int:
        n = 0
        while self.bit(base + min(n, INT_CONTEXTS - 1)):
            n += 1
            if n > MAX_INT_CLASS:
                raise InputError(f"{self.what}: corrupt integer code (over 64 bits)")
        return ((1 << n) | self.direct(n)) - 1

    def get_sint(self, base: int) -> int:
        return unzigzag(self.get_int(base))

    @property
    def overrun(self) -> int:
        """Bytes read past the end of the data (the encoder's stream never needs more than 4)."""
        return max(0, self.pos - len(self.data))


def zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def unzigzag(u: int) -> int:
    return u >> 1 if not u & 1 else -((u + 1) >> 1)


# ---------------------------------------------------------------------------------------------
# Pricing candidate codings without running the coder


def kt_bits(ctx: np.ndarray, bits: np.ndarray, n_ctx: int | None = None) -> float:
    """Bits an adaptive-count coder spends on `bits` (0/1) coded in contexts `ctx`: with counts
    that never decay the cost of a context depends only on its totals (Krichevsky-Trofimov:
    log2 of Gamma(n + 1) Gamma(1/2)^2 / (Gamma(n0 + 1/2) Gamma(n1 + 1/2))). The real coder's
    15-bit probabilities add a small fraction of a bit per thousand decisions."""
    ctx = np.asarray(ctx, dtype=np.int64).reshape(-1)
    if ctx.size == 0:
        return 0.0
    bits = np.asarray(bits, dtype=np.int64).reshape(-1)
    n_ctx = int(ctx.max()) + 1 if n_ctx is None else n_ctx
    n = np.bincount(ctx, minlength=n_ctx)
    n1 = np.bincount(ctx, weights=bits, minlength=n_ctx).astype(np.int64)
    used = n > 0
    return kt_counts(n[used].tolist(), n1[used].tolist())


def kt_counts(n: list[int], n1: list[int]) -> float:
    """`kt_bits` from each used context's totals (n decisions, n1 of them ones), in context
    order: what a decoder's counts give after the fact."""
    lg = math.lgamma
    nats = sum(lg(a + 1.0) - lg(b + 0.5) - lg(a - b + 0.5) for a, b in zip(n, n1))
    return (nats + 2 * lg(0.5) * len(n)) / math.log(2)
