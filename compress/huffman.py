"""Canonical Huffman codes as real bit streams, vectorised for 100M-symbol inputs.

* `code_lengths(counts)` builds Huffman code lengths (deterministic tie-breaking, lengths
  limited to `MAX_CODE_LEN` by flattening the counts when a distribution is adversarial, e.g.
  Fibonacci frequencies), `HuffmanCode` holds them and derives the canonical (DEFLATE-order)
  codes: symbols sorted by (length, symbol), consecutive code values.
* A code table is serialised as its code lengths only (`write_table` / `read_table`): alphabet
  size, first length, then the zigzag delta to the previous length, all Exp-Golomb, so the
  smooth length profiles of gap and weight alphabets cost one to three bits per symbol.
* Bits are packed MSB first. `pack_bits` places up to 32-bit fields into 64-bit words with
  numpy: the fields of one word are contiguous (positions only grow), so an OR-`reduceat`
  merges them and the one field that straddles each word boundary spills into the next word.
  No Python loop runs per symbol; 100M symbols are packed in chunks of a few million.
* Decoding uses bitarray's C canonical decoder (`canonical_decode`). Context-coded streams
  (`write_symbols_ctx`: the table of each symbol chosen by the previous symbol and a side
  value, as the .dcz weight streams use) decode in a table-driven Python loop (~1 us/symbol).
* A one-symbol alphabet costs no bits at all: the decoder is told how many symbols to produce.

`BitWriter` / `BitReader` are the small bit-level container the .dcz sections are built with.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
from bitarray import bitarray
from bitarray.util import canonical_decode

from . import limits
from .errors import InputError

MAX_CODE_LEN = 24  # well below bitarray's decoder limit and our 32-bit packing fields
_CHUNK = 1 << 22


# ---------------------------------------------------------------------------------------------
# Code construction


def code_lengths(counts, *, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Huffman code lengths (uint8[A]) for symbol counts; unused symbols get length 0.

    One used symbol gets length 1 (its stream is empty, see `HuffmanCode.encode`). Lengths
    over `max_len` are avoided by halving the counts (keeping them >= 1) until they fit.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts.size and counts.min() < 0):
        raise InputError("Huffman: counts must be a 1-D array of non-negative integers")
    if max_len < 1 or (max_len < 64 and (1 << max_len) < np.count_nonzero(counts)):
        n = np.count_nonzero(counts)
        raise InputError(f"Huffman: max_len {max_len} cannot code {n} symbols")
    lengths = np.zeros(counts.shape[0], dtype=np.uint8)
    used = np.flatnonzero(counts)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1
        return lengths
    c = counts[used]
    while True:
        depth = _huffman_depths(c)
        if depth.max() <= max_len:
            break
        c = (c + 1) // 2
    lengths[used] = depth
    return lengths


def _huffman_depths(c: np.ndarray) -> np.ndarray:
    """Depth of each leaf in a Huffman tree; ties broken by creation order (deterministic)."""
    n = c.shape[0]
    heap = [(int(w), i) for i, w in enumerate(c)]
    heapq.heapify(heap)
    parent = np.zeros(2 * n - 1, dtype=np.int64)
    nxt = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (w1 + w2, nxt))
        nxt += 1
    depth = np.zeros(2 * n - 1, dtype=np.int64)
    for node in range(2 * n - 3, -1, -1):  # parents are created after their children
        depth[node] = depth[parent[node]] + 1
    return depth[:n]


@dataclass(frozen=True, eq=False)
class HuffmanCode:
    """A canonical prefix code given by its code lengths (0 = symbol unused)."""

    lengths: np.ndarray  # uint8[A]

    @classmethod
    def from_counts(cls, counts, *, max_len: int = MAX_CODE_LEN) -> "HuffmanCode":
        return cls(code_lengths(counts, max_len=max_len))

    @classmethod
    def from_symbols(cls, symbols, alphabet: int, *, max_len: int = MAX_CODE_LEN):
        return cls.from_counts(symbol_counts(symbols, alphabet), max_len=max_len)

    @property
    def alphabet(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_used(self) -> int:
        return int(np.count_nonzero(self.lengths))

    def codes(self) -> np.ndarray:
        """Canonical code values (uint64[A]): by (length, symbol), consecutive integers."""
        lengths = self.lengths.astype(np.int64)
        order = np.lexsort((np.arange(lengths.shape[0]), lengths))
        order = order[lengths[order] > 0]
        codes = np.zeros(lengths.shape[0], dtype=np.uint64)
        code, prev = 0, 0
        for sym in order.tolist():
            ln = int(lengths[sym])
            code <<= ln - prev
            codes[sym] = code
            code += 1
            prev = ln
        return codes

    def stream_lengths(self) -> np.ndarray:
        """Bits each symbol takes in a stream: the code lengths, or all 0 for a one-symbol code."""
        if self.num_used <= 1:
            return np.zeros(self.alphabet, dtype=np.int64)
        return self.lengths.astype(np.int64)

    def bits(self, counts) -> int:
        """Bits the stream of symbols with these counts takes (0 for a one-symbol code)."""
        if self.num_used <= 1:
            return 0
        return int(np.dot(np.asarray(counts, dtype=np.int64), self.lengths.astype(np.int64)))

    def encode(self, symbols) -> tuple[bytes, int]:
        """(packed bytes, number of bits) of the symbols' codes, MSB first."""
        w = BitWriter()
        w.write_symbols(symbols, self)
        return w.getvalue(), w.nbits

    def decode(self, data, n: int, *, offset: int = 0) -> tuple[np.ndarray, int]:
        """Decode n symbols from `data` (bytes or bitarray) at bit `offset`.

        Returns (int64[n] symbols, bit position after the last one). InputError when the bits
        run out or do not form codes of this table.
        """
        bits = data if isinstance(data, bitarray) else _to_bitarray(data)
        if n == 0:
            return np.zeros(0, dtype=np.int64), offset
        used = self.num_used
        if used == 0:
            raise InputError("Huffman: symbols to decode but the code table is empty")
        if used == 1:
            return np.full(n, int(np.flatnonzero(self.lengths)[0]), dtype=np.int64), offset
        if n > len(bits) - offset:  # every symbol of a code of two or more takes a bit or more
            raise InputError(f"Huffman stream is truncated ({n} symbols in {len(bits) - offset} "
                             "bits)")
        lengths = self.lengths.astype(np.int64)
        maxlen = int(lengths.max())
        count = np.bincount(lengths, minlength=maxlen + 1).tolist()
        count[0] = 0
        order = np.lexsort((np.arange(lengths.shape[0]), lengths))
        symbol = order[lengths[order] > 0].tolist()
        try:
            it = canonical_decode(bits[offset:], count, symbol)
            out = np.fromiter(it, dtype=np.int64, count=n)
        except (ValueError, StopIteration) as e:
            raise InputError(f"Huffman stream is corrupt or truncated ({e})") from None
        end = offset + int(lengths[out].sum())
        if end > len(bits):
            raise InputError("Huffman stream is truncated")
        return out, end


def symbol_counts(symbols, alphabet: int) -> np.ndarray:
    s = np.asarray(symbols).reshape(-1)
    if s.size and (int(s.min()) < 0 or int(s.max()) >= alphabet):
        raise InputError(f"Huffman: symbols outside the alphabet 0..{alphabet - 1}")
    return np.bincount(s, minlength=alphabet).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Bit packing


def _to_bitarray(data) -> bitarray:
    b = bitarray(endian="big")
    b.frombytes(bytes(data))
    return b


def _pack_into(
    words: np.ndarray, offset: int, values: np.ndarray, lengths: np.ndarray, *, trusted=False
) -> int:
    """OR fields (values < 2**lengths, lengths <= 32) MSB first into uint64 words at bit
    `offset`; return the offset after them. `trusted`: the values are known to fit (codes)."""
    n = values.shape[0]
    if n == 0:
        return offset
    end = np.cumsum(lengths, dtype=np.int64)
    end += offset
    pos = end - lengths
    v = values.astype(np.uint64, copy=False)
    if not trusted:
        v = v & ((np.uint64(1) << lengths.astype(np.uint64)) - np.uint64(1))
    w = pos >> 6
    shift = (64 - (pos & 63)) - lengths  # where the field's lowest bit lands; < 0: spills over
    del pos
    # shift >= 0: v << shift; shift < 0: the high part v >> -shift here, the rest spills.
    part = (v << np.maximum(shift, 0).view(np.uint64)) >> np.maximum(-shift, 0).view(np.uint64)
    starts = np.flatnonzero(np.concatenate(([True], w[1:] != w[:-1])))
    words[w[starts]] |= np.bitwise_or.reduceat(part, starts)
    sp = np.flatnonzero(shift < 0)
    if sp.size:
        words[w[sp] + 1] |= v[sp] << (64 + shift[sp]).view(np.uint64)
    return int(end[-1])


def _pack_lut(words, off: int, s: np.ndarray, codes: np.ndarray, lengths: np.ndarray) -> int:
    """Pack codes[s] (lengths[s] bits each). Long streams over a small alphabet with codes of
    at most 16 bits go two symbols at a time through a table of pair codes (half the fields)."""
    a = codes.shape[0]
    n = s.shape[0]
    if n >= 1 << 16 and a <= 1024 and (lengths.max(initial=0) <= 16):
        pair_codes = (codes[:, None] << lengths[None, :].astype(np.uint64)) | codes[None, :]
        pair_lengths = lengths[:, None] + lengths[None, :]
        pair_codes, pair_lengths = pair_codes.reshape(-1), pair_lengths.reshape(-1)
        even = n - n % 2
        step = _CHUNK * 2
        for b in range(0, even, step):
            c = s[b : min(b + step, even)]
            p = c[0::2] * a
            p += c[1::2]
            off = _pack_into(words, off, pair_codes[p], pair_lengths[p], trusted=True)
        if n % 2:
            off = _pack_into(words, off, codes[s[-1:]], lengths[s[-1:]], trusted=True)
        return off
    for b in range(0, n, _CHUNK):
        c = s[b : b + _CHUNK]
        off = _pack_into(words, off, codes[c], lengths[c], trusted=True)
    return off


class BitWriter:
    """Collects fields and symbol streams; packs everything in one vectorised pass."""

    def __init__(self):
        self._parts: list = []  # (values, lengths) or ("lut", indices, codes, lengths)
        self.nbits = 0

    def write(self, value: int, nbits: int) -> None:
        if nbits < 0 or value < 0 or (nbits < 64 and value >> nbits):
            raise ValueError(f"{value} does not fit in {nbits} bits")
        while nbits > 32:
            nbits -= 32
            self._fields([value >> nbits], [32])
            value &= (1 << nbits) - 1
        self._fields([value], [nbits])

    def _fields(self, values, lengths) -> None:
        v = np.asarray(values, dtype=np.uint64).reshape(-1)
        ln = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if ln.size and (ln.min() < 0 or ln.max() > 32):
            raise ValueError("field lengths must be 0..32")
        self._parts.append((v, ln))
        self.nbits += int(ln.sum())

    def write_fields(self, values, width: int) -> None:
        """Write each value in `width` (<= 32) bits."""
        v = np.asarray(values, dtype=np.uint64).reshape(-1)
        self._fields(v, np.full(v.shape[0], width, dtype=np.int64))

    def write_eg(self, value: int) -> None:
        """Exp-Golomb (order 0) code of a non-negative integer."""
        value = int(value)
        if value < 0:
            raise ValueError("Exp-Golomb needs a non-negative integer")
        v = value + 1
        self.write(v, 2 * v.bit_length() - 1)

    def write_sint(self, value: int) -> None:
        self.write_eg(zigzag(int(value)))

    def write_symbols(self, symbols, code: HuffmanCode) -> None:
        s = np.asarray(symbols).reshape(-1)
        counts = symbol_counts(s, code.alphabet)
        if s.size and np.any(code.lengths[counts > 0] == 0):
            raise InputError("Huffman: a symbol to encode has no code in the table")
        self._parts.append(("lut", s, code.codes(), code.stream_lengths()))
        self.nbits += code.bits(counts)

    def write_symbols_ctx(self, symbols, contexts, codes: list[HuffmanCode]) -> None:
        """Each symbol coded with the table of its context (codes[contexts[i]])."""
        s = np.asarray(symbols, dtype=np.int64).reshape(-1)
        c = np.asarray(contexts, dtype=np.int64).reshape(-1)
        a = max((code.alphabet for code in codes), default=0)
        cl = np.zeros((len(codes), a), dtype=np.uint64)
        ll = np.zeros((len(codes), a), dtype=np.int64)
        for i, code in enumerate(codes):
            cl[i, : code.alphabet] = code.codes()
            ll[i, : code.alphabet] = code.stream_lengths()
        flat = c * a + s
        if s.size:
            present = np.zeros(len(codes) * a, dtype=bool)
            present[flat] = True
            has_code = np.concatenate([
                np.pad(code.lengths > 0, (0, a - code.alphabet)) for code in codes
            ])
            if np.any(present & ~has_code):
                raise InputError("Huffman: a symbol to encode has no code in its context's table")
        self._parts.append(("lut", flat, cl.reshape(-1), ll.reshape(-1)))
        self.nbits += int(ll.reshape(-1)[flat].sum())

    def align(self) -> None:
        self.write(0, -self.nbits % 8)

    def getvalue(self) -> bytes:
        words = np.zeros(self.nbits // 64 + 2, dtype=np.uint64)
        off = 0
        for part in self._parts:
            if isinstance(part[0], str):
                _, s, codes, lengths = part
                off = _pack_lut(words, off, s, codes, lengths.astype(np.int64))
            else:
                v, ln = part
                off = _pack_into(words, off, v, ln)
        assert off == self.nbits
        return words.astype(">u8").tobytes()[: (self.nbits + 7) // 8]


class BitReader:
    """Reads what BitWriter wrote; every read past the end raises InputError naming `what`."""

    def __init__(self, data, what: str = "stream"):
        self.bits = data if isinstance(data, bitarray) else _to_bitarray(data)
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.bits):
            raise InputError(f"{self.what}: truncated (needs {n} more bits at bit {self.pos})")

    def read(self, nbits: int) -> int:
        self._need(nbits)
        if nbits == 0:
            return 0
        v = int.from_bytes(self.bits[self.pos : self.pos + nbits].tobytes(), "big") >> (
            -nbits % 8
        )
        self.pos += nbits
        return v

    def read_fields(self, n: int, width: int) -> np.ndarray:
        """n fields of `width` bits as int64 (vectorised)."""
        self._need(n * width)
        if n == 0 or width == 0:
            return np.zeros(n, dtype=np.int64)
        a = np.frombuffer(
            self.bits[self.pos : self.pos + n * width].unpack(zero=b"\x00", one=b"\x01"),
            dtype=np.uint8,
        ).reshape(n, width)
        self.pos += n * width
        weights = (np.uint64(1) << np.arange(width - 1, -1, -1, dtype=np.uint64))
        return (a.astype(np.uint64) @ weights).astype(np.int64)

    def read_eg(self, *, limit: int = 1 << 62) -> int:
        try:
            one = self.bits.index(1, self.pos)
        except ValueError:
            raise InputError(f"{self.what}: truncated (unterminated Exp-Golomb code)") from None
        zeros = one - self.pos
        if zeros > 62:
            raise InputError(f"{self.what}: corrupt (Exp-Golomb code of {zeros} zero bits)")
        self.pos = one
        v = self.read(zeros + 1) - 1
        if v > limit:
            raise InputError(f"{self.what}: corrupt (value {v} exceeds {limit})")
        return v

    def read_sint(self) -> int:
        return unzigzag(self.read_eg())

    def read_symbols(self, n: int, code: HuffmanCode) -> np.ndarray:
        out, self.pos = code.decode(self.bits, n, offset=self.pos)
        return out

    def read_symbols_ctx(self, n: int, codes: list[HuffmanCode], side, ctx_map) -> np.ndarray:
        """Decode n symbols whose table is codes[ctx_map[side[i]][previous symbol]] (the
        previous symbol of the first is the alphabet size): a sequential table-driven loop."""
        out, self.pos = _decode_ctx(self.bits, self.pos, n, codes, side, ctx_map, self.what)
        return out


_LUT_BITS = 12
_WIN = 32


class _Table:
    """Lookup for one canonical code: a 2**L-entry table for codes up to L bits, a canonical
    (first code per length) search beyond."""

    def __init__(self, code: HuffmanCode):
        ln = code.lengths.astype(np.int64)
        self.single = int(np.flatnonzero(ln)[0]) if code.num_used == 1 else None
        self.empty = code.num_used == 0
        if self.single is not None or self.empty:
            return
        codes = code.codes()
        self.maxlen = int(ln.max())
        self.lut_bits = min(self.maxlen, _LUT_BITS)
        self.lut_shift = _WIN - self.lut_bits
        lut_sym = np.full(1 << self.lut_bits, -1, dtype=np.int64)
        lut_len = np.zeros(1 << self.lut_bits, dtype=np.int64)
        for sym in np.flatnonzero((ln > 0) & (ln <= self.lut_bits)).tolist():
            k = self.lut_bits - int(ln[sym])
            lo = int(codes[sym]) << k
            lut_sym[lo : lo + (1 << k)] = sym
            lut_len[lo : lo + (1 << k)] = ln[sym]
        self.lut_sym, self.lut_len = lut_sym.tolist(), lut_len.tolist()
        order = np.lexsort((np.arange(ln.shape[0]), ln))
        order = order[ln[order] > 0]
        self.sorted_syms = order.tolist()
        self.first, self.count, self.offset = {}, {}, {}
        for i, sym in enumerate(self.sorted_syms):
            L = int(ln[sym])
            if L not in self.first:
                self.first[L], self.count[L], self.offset[L] = int(codes[sym]), 0, i
            self.count[L] += 1

    def slow(self, w: int) -> tuple[int, int]:
        for L in range(1, self.maxlen + 1):
            if L in self.first:
                v = w >> (_WIN - L)
                if 0 <= v - self.first[L] < self.count[L]:
                    return self.sorted_syms[self.offset[L] + v - self.first[L]], L
        return -1, 0


def _decode_ctx(bits, pos, n, codes, side, ctx_map, what):
    # Tables are built when first used: a crafted file may list many it never uses.
    tables = [None] * len(codes)
    if n == 0:
        return np.zeros(0, dtype=np.int64), pos
    # The 32 bits from bit q on are int.from_bytes(buf[q >> 3 : (q >> 3) + 5]) >> (8 - (q & 7)).
    buf = bits[pos:].tobytes() + bytes(5)
    nbits = len(bits) - pos
    side = np.asarray(side, dtype=np.int64).tolist()
    cmap = [list(map(int, row)) for row in np.asarray(ctx_map)]
    prev = alphabet = max(c.alphabet for c in codes) if codes else 0
    out = [0] * n
    p = 0
    from_bytes = int.from_bytes
    mask = 0xFFFFFFFF
    for i in range(n):
        c = cmap[side[i]][prev]
        t = tables[c]
        if t is None:
            t = tables[c] = _Table(codes[c])
        if t.single is not None:
            sym = t.single
        else:
            if t.empty or p >= nbits:
                raise InputError(f"{what}: corrupt or truncated context-coded stream")
            q = p >> 3
            w = (from_bytes(buf[q : q + 5], "big") >> (8 - (p & 7))) & mask
            j = w >> t.lut_shift
            sym = t.lut_sym[j]
            if sym >= 0:
                p += t.lut_len[j]
            else:
                sym, L = t.slow(w)
                if sym < 0:
                    raise InputError(f"{what}: corrupt context-coded stream")
                p += L
        out[i] = sym
        prev = sym
    if pos + p > len(bits):
        raise InputError(f"{what}: truncated context-coded stream")
    # Symbols of alphabets up to 256 (the .dcz weight tables) fit a byte: 1/8 of the memory.
    return np.array(out, dtype=np.uint8 if alphabet <= 256 else np.int64), pos + p


def zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def unzigzag(u: int) -> int:
    return u >> 1 if not u & 1 else -((u + 1) >> 1)


# ---------------------------------------------------------------------------------------------
# Code tables on the wire


def write_table(w: BitWriter, code: HuffmanCode) -> None:
    """Alphabet size (Exp-Golomb), then the code lengths (`write_lengths`)."""
    w.write_eg(code.alphabet)
    write_lengths(w, code.lengths)


def write_lengths(w: BitWriter, lengths) -> None:
    """First code length, then zigzag deltas to the previous length, all Exp-Golomb."""
    ln = np.asarray(lengths, dtype=np.int64)
    if ln.shape[0] == 0:
        return
    w.write_eg(int(ln[0]))
    d = np.diff(ln)
    zz = np.where(d >= 0, 2 * d, -2 * d - 1) + 1  # Exp-Golomb of zz - 1, vectorised
    nb = np.floor(np.log2(zz)).astype(np.int64) + 1
    w._fields(zz, 2 * nb - 1)  # nb - 1 leading zeros, then zz in nb bits


def lengths_bits(lengths) -> int:
    """Bits `write_lengths` takes."""
    ln = np.asarray(lengths, dtype=np.int64)
    if ln.shape[0] == 0:
        return 0
    d = np.diff(ln)
    zz = np.where(d >= 0, 2 * d, -2 * d - 1) + 1
    return _eg_bits(int(ln[0])) + int((2 * np.floor(np.log2(zz)).astype(np.int64) + 1).sum())


def table_bits(lengths: np.ndarray) -> int:
    """Bits `write_table` takes for these lengths (for choosing between schemes)."""
    return _eg_bits(len(lengths)) + lengths_bits(lengths)


def _eg_bits(v: int) -> int:
    return 2 * (int(v) + 1).bit_length() - 1


def read_table(r: BitReader, *, max_alphabet: int = 1 << 24) -> HuffmanCode:
    return read_lengths(r, r.read_eg(limit=max_alphabet))


def read_lengths(r: BitReader, a: int) -> HuffmanCode:
    """The code of `a` symbols `write_lengths` wrote; InputError unless it is a valid code."""
    if a == 0:
        return HuffmanCode(np.zeros(0, dtype=np.uint8))
    limits.check("max_code_table", a, f"{r.what}: Huffman table")
    if a > len(r.bits) - r.pos:  # every length takes at least one bit
        raise InputError(f"{r.what}: truncated Huffman table ({a} code lengths)")
    ln = np.empty(a, dtype=np.int64)
    ln[0] = r.read_eg(limit=MAX_CODE_LEN)
    for i in range(1, a):
        ln[i] = ln[i - 1] + r.read_sint()
        if not 0 <= ln[i] <= MAX_CODE_LEN:
            raise InputError(f"{r.what}: corrupt Huffman table (code length {ln[i]})")
    lengths = ln.astype(np.uint8)
    # Kraft: a table from our encoder is complete (or a single symbol); anything else is bad.
    used = lengths[lengths > 0].astype(np.int64)
    if used.size > 1:
        kraft = int(np.sum(np.left_shift(1, MAX_CODE_LEN - used)))
        if kraft != 1 << MAX_CODE_LEN:
            raise InputError(f"{r.what}: corrupt Huffman table (not a complete prefix code)")
    if used.size == 1 and used[0] != 1:
        raise InputError(f"{r.what}: corrupt Huffman table (one symbol of length {used[0]})")
    return HuffmanCode(lengths)


def encode_symbols(symbols, alphabet: int) -> tuple[HuffmanCode, bytes, int]:
    """Convenience: build the code for `symbols` and encode them -> (code, bytes, nbits)."""
    code = HuffmanCode.from_symbols(symbols, alphabet)
    data, nbits = code.encode(symbols)
    return code, data, nbits
