"""Property-based fuzzing of the .dcz and qnet readers with structural mutations.

Random byte flips only exercise the checksums, so the mutations here work on the structure and
recompute every checksum: a .dcz is split into the fields its decoder reads (Exp-Golomb counts,
shapes, code lengths, flags, raw streams), one or more fields are changed, dropped or repeated,
sections are dropped or repeated, and the file is re-encoded with valid section and file crc32s.
A qnet is rebuilt with changed .npy headers (shapes, dtypes, order), values, member names,
compression and zip-declared sizes. Every mutant must either load as a valid network or raise
`InputError`, within bounded memory and time. A bounded run here; LONG=1 runs many more.
"""

import io
import struct
import time
import tracemalloc
import zipfile
import zlib
from datetime import timedelta

import numpy as np
import pytest
from bitarray import bitarray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compress.dcz as dcz
from compress.errors import InputError
from compress.huffman import BitReader, BitWriter
from compress.qnet import load_qnet, save_qnet
from compress.synthetic import random_cnn, random_qnet

from .conftest import long_tests

EXAMPLES = 2000 if long_tests() else 120
MAX_MB = 48  # tracemalloc peak per mutant (a few hundred bytes may declare ~0.4M weights)
MAX_SECONDS = 2.0  # CPU seconds per mutant, with tracemalloc's overhead (CPU time: a loaded
# machine must not fail the bound, only more work would)
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=30), derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _bounded_call(fn):
    """fn() -> ("ok", value) or ("refused", message); any other exception fails the test."""
    tracemalloc.start()
    t = time.process_time()
    try:
        return "ok", fn()
    except InputError as e:
        msg = str(e)
        assert msg and "\n" not in msg, msg
        return "refused", msg
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MAX_MB * 2**20, f"peak {peak / 2**20:.1f} MB"
        assert time.process_time() - t < MAX_SECONDS


# ---------------------------------------------------------------------------------------------
# .dcz: the fields each section's decoder reads


class _Recorder(BitReader):
    """A BitReader that records every top-level field it reads: ("eg"|"sint", value),
    ("bits", nbits, value) and ("raw", bitarray) for streams and anything read directly."""

    def __init__(self, data, what="stream"):
        super().__init__(data, what)
        self.tokens = []
        self._depth = 0
        self._done = 0

    def _gap(self):
        if self.pos > self._done:
            self.tokens.append(("raw", self.bits[self._done : self.pos]))
            self._done = self.pos

    def _record(self, method, token_of, *args, **kw):
        top = self._depth == 0
        if top:
            self._gap()
        self._depth += 1
        try:
            v = method(*args, **kw)
        finally:
            self._depth -= 1
        if top:
            self.tokens.append(token_of(v, args))
            self._done = self.pos
        return v

    def read(self, nbits):
        start = self.pos
        return self._record(super().read, lambda v, a: ("bits", self.pos - start, v), nbits)

    def read_eg(self, **kw):
        return self._record(super().read_eg, lambda v, a: ("eg", v), **kw)

    def read_sint(self):
        return self._record(super().read_sint, lambda v, a: ("sint", v))

    def _raw(self, method, *args):
        start = self.pos
        return self._record(method, lambda v, a: ("raw", self.bits[start : self.pos]), *args)

    def read_fields(self, n, width):
        return self._raw(super().read_fields, n, width)

    def read_symbols(self, n, code):
        return self._raw(super().read_symbols, n, code)

    def read_symbols_ctx(self, n, codes, side, ctx_map):
        return self._raw(super().read_symbols_ctx, n, codes, side, ctx_map)

    def finish(self):
        self.pos = len(self.bits)
        self._gap()
        return self.tokens


def _tokenize(data: bytes):
    """[(tag, tokens)] of every section of a valid .dcz."""
    sections, _ = dcz._sections(data)
    out = []
    orig = dcz.BitReader
    try:
        recs = []

        def make(payload, what="stream"):
            r = _Recorder(payload, what)
            recs.append(r)
            return r

        dcz.BitReader = make
        for i, (tag, payload, _) in enumerate(sections):
            recs.clear()
            if i == 0:
                dcz._read_header(payload, data[4])  # version 3: the conv geometry too
            elif tag == dcz._TAG_AC:  # the arithmetic-coded body is one raw token
                dcz._ac_decode_layer(payload, i - 1)
            else:
                dcz._decode_layer(payload, i - 1)
            out.append((tag, recs[0].finish()))
    finally:
        dcz.BitReader = orig
    return out


def _encode(tokens) -> bytes:
    w = BitWriter()
    for tok in tokens:
        kind = tok[0]
        if kind == "eg":
            w.write_eg(max(int(tok[1]), 0))
        elif kind == "sint":
            w.write_sint(int(tok[1]))
        elif kind == "bits":
            n = tok[1]
            w.write(int(tok[2]) & ((1 << n) - 1), n)
        else:
            bits = tok[1]
            for s in range(0, len(bits), 32):
                chunk = bits[s : s + 32]
                w.write(int(chunk.to01(), 2) if len(chunk) else 0, len(chunk))
    w.align()
    return w.getvalue()


def _seal(sections, version: int = dcz.DCZ_VERSION) -> bytes:
    body = dcz.MAGIC + bytes([version])
    body += b"".join(dcz._section(tag, _encode(tokens)) for tag, tokens in sections)
    return body + struct.pack("<I", zlib.crc32(body))


def _smooth():
    rng = np.random.default_rng(13)
    walk = np.cumsum(rng.choice([-1, 0, 1], p=[0.1, 0.8, 0.1], size=(12, 40)), axis=1)
    index = (np.mod(walk, 15) + 1).astype(np.uint8)
    index[rng.random(index.shape) < 0.5] = 0
    index[3] = 0  # a dead row: masks
    cb = np.concatenate(([0], np.arange(-7, 8) * 100)).astype(np.int16)
    bias = rng.integers(-5000, 5000, size=12).astype(np.int32)
    return dcz.QNet([dcz.Layer(cb, index, bias, shift=9, relu=False)], input_frac=8)


def _uniform():
    """Dense, one weight value, zero biases: every code has one symbol and costs no bits, so
    changing a declared count changes the decoded size with no stream to contradict it."""
    index = np.ones((16, 16), np.uint8)
    return dcz.QNet([dcz.Layer(np.array([0, 5], np.int16), index, np.zeros(16, np.int32),
                               shift=0, relu=False)], input_frac=0)


def _image_like():
    """A layer whose rows are smooth 8x8 "receptive fields": arithmetic-coded with neighbour
    contexts (period 8), masks, and a dead neuron with a zero bias."""
    rng = np.random.default_rng(17)
    y, x = np.mgrid[0:8, 0:8]
    rows = []
    for r in range(10):
        cy, cx = rng.uniform(2, 6, size=2)
        field = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 6.0).reshape(-1)
        idx = np.clip((field * 15).round(), 0, 15).astype(np.uint8)
        idx[rng.random(64) < 0.3] = 0
        rows.append(idx)
    index = np.stack(rows)
    index[4] = 0
    index[:, :8] = 0  # a dead image row: dead columns
    cb = np.concatenate(([0], np.arange(1, 16) * 97)).astype(np.int16)
    bias = rng.integers(-(2**20), 2**20, size=10).astype(np.int32) << 3
    bias[4] = 0
    return dcz.QNet([dcz.Layer(cb, index, bias, shift=9, relu=True)], input_frac=8)


BASES = [
    dcz.pack(_uniform()),
    dcz.pack(_image_like()),
    dcz.pack(_smooth(), version=1),  # version 1 files are still read
    dcz.pack(_uniform(), version=1),
    dcz.pack(random_qnet((30, 40, 4), density=0.5, seed=5)),
    dcz.pack(random_qnet((20, 12, 5), density=0.3, seed=1)),
    dcz.pack(_smooth()),  # context-coded weights, masks
    dcz.pack(random_qnet((60, 8), density=0.05, seed=2, bias_scale=2**20, index_bits=8)),
    dcz.pack(random_qnet((9, 7, 3), density=1.0, seed=3, codebook_size=1)),
    dcz.pack_layers([random_qnet((24, 6), density=0.4, seed=4).layers[0]], shapes=[(6, 4, 2, 3)]),
    # version 3: a qnet with conv layers (kernel, stride, padding, pool, input shape in the header)
    dcz.pack(random_cnn((2, 7, 6), [(3, (3, 2), (1, 2), (1, 0), (2, 1)), (4, 2, 1, 0, 1)], [5],
                        seed=6, density=0.5)),
    dcz.pack(random_qnet((20, 12, 5), density=0.3, seed=1), version=3),  # fc, [in_0]
]
TOKENS = [_tokenize(b) for b in BASES]
VERSIONS = [b[4] for b in BASES]


def test_tokenizer_round_trips():
    for data, secs, version in zip(BASES, TOKENS, VERSIONS):
        assert _seal(secs, version) == data
        assert any(tok[0] == "eg" for _, toks in secs[1:] for tok in toks)


def test_bases_cover_both_codings_and_versions():
    tags = {tag for secs in TOKENS for tag, _ in secs[1:]}
    assert {dcz._TAG_LAYER, dcz._TAG_AC} <= tags
    assert set(VERSIONS) == {1, 2, 3}


_VALUES = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 8, 255, 256, 257, 1 << 16, (1 << 20) + 1, 1 << 24,
                     1 << 28, 1 << 31, 1 << 32, (1 << 40) + 3, (1 << 62) - 1]),
    st.integers(0, 1 << 12),
    st.integers(0, 1 << 62),
)

_MUTATION = st.tuples(
    st.sampled_from(["set", "delta", "double", "grow", "drop", "repeat", "truncate_raw",
                     "dup_section", "drop_section"]),
    st.integers(0, 10**6),  # which section / token (modulo their number)
    st.integers(0, 10**6),
    _VALUES,
    st.integers(-3, 3),
)


def _mutate(secs, mutations):
    secs = [(tag, list(toks)) for tag, toks in secs]
    for op, si, ti, value, delta in mutations:
        if op in ("dup_section", "drop_section") and len(secs) > 1:
            i = 1 + si % (len(secs) - 1)
            if op == "drop_section" and len(secs) > 2:
                del secs[i]
            elif op == "dup_section" and len(secs) < 12:
                secs.insert(i, (secs[i][0], list(secs[i][1])))
            if delta >= 0:  # mostly keep the header's layer count in step, so layers parse
                head = secs[0][1]
                if len(head) > 1 and head[1][0] == "eg":
                    head[1] = ("eg", len(secs) - 1)
            continue
        # Layer sections hold most of the structure: the header is picked one time in five.
        tag, toks = secs[0] if si % 5 == 0 or len(secs) == 1 else secs[1 + si % (len(secs) - 1)]
        if not toks:
            continue
        j = ti % len(toks)
        fields = [k for k, tk in enumerate(toks) if tk[0] != "raw"]
        if op in ("set", "delta", "double") and fields and ti % 4:
            j = fields[ti % len(fields)]  # mostly a declared value (count, size, flag)
        tok = toks[j]
        if op == "grow":  # a layer's shape (its first two fields) or the header's layer count
            k = 1 if tag == b"H" else ti % 2
            if len(toks) > k and toks[k][0] == "eg":
                toks[k] = ("eg", toks[k][1] * (2 + value % (1 << 24)))
        elif op == "drop":
            del toks[j]
        elif op == "repeat":
            toks.insert(j, tok)
        elif op == "truncate_raw":
            raws = [k for k, t in enumerate(toks) if t[0] == "raw" and len(t[1])]
            if raws:
                k = raws[ti % len(raws)]
                toks[k] = ("raw", toks[k][1][: value % len(toks[k][1])])
        elif tok[0] in ("eg", "sint"):
            v = {"set": value, "delta": tok[1] + delta, "double": 2 * tok[1] + 1}.get(op, value)
            toks[j] = (tok[0], v if tok[0] == "sint" else max(v, 0))
        elif tok[0] == "bits":
            v = {"set": value, "delta": tok[2] + delta, "double": ~tok[2]}.get(op, value)
            toks[j] = ("bits", tok[1], v)
        else:  # a raw stream: flip bits behind a valid checksum
            bits = bitarray(tok[1])
            if len(bits):
                bits[value % len(bits)] ^= 1
            toks[j] = ("raw", bits)
    return secs


@FUZZ
@given(base=st.integers(0, len(BASES) - 1), mutations=st.lists(_MUTATION, min_size=1, max_size=3))
def test_dcz_structural_mutations(base, mutations):
    data = _seal(_mutate(TOKENS[base], mutations), VERSIONS[base])
    status, value = _bounded_call(lambda: dcz.unpack_layers(data))
    if status == "ok":
        for layer in value.layers:
            dcz.validate_layers([layer], index_bits=8)
        if value.shapes == [tuple(ly.index.shape) for ly in value.layers]:
            try:
                q = dcz.unpack(data)
            except InputError:
                return  # a chain whose layer sizes do not match: refused as a qnet
            assert dcz.unpack(dcz.pack(q)).equals(q)


# ---------------------------------------------------------------------------------------------
# qnet: members rebuilt with changed headers, values, names, compression and declared sizes


def _npy(a, *, shape=None, descr=None, fortran=None, extra=b""):
    """A .npy of `a`'s bytes with (optionally) a header that says something else."""
    a = np.array(a, order="C")  # (ascontiguousarray would make a scalar 1-D)
    header = {"descr": np.lib.format.dtype_to_descr(a.dtype) if descr is None else descr,
              "fortran_order": bool(fortran), "shape": a.shape if shape is None else shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + a.tobytes() + extra


_SHAPES = st.one_of(
    st.tuples(),
    st.tuples(st.sampled_from([0, 1, 3, 4, 12, 1 << 20, 1 << 31, 1 << 40])),
    st.tuples(st.sampled_from([0, 1, 5, 12, 1 << 16, 1 << 30]),
              st.sampled_from([0, 1, 7, 12, 1 << 16, 1 << 30])),
    st.lists(st.integers(0, 4), min_size=3, max_size=5).map(tuple),
)
_DESCRS = st.sampled_from(["|u1", "<i2", ">i2", "<i4", "<i8", "|b1", "<f4", "|O", "|V0", "<U64",
                           "|S0", "<U100000", "<c16", "|V8"])
_QMUT = st.tuples(
    st.sampled_from(["shape", "descr", "fortran", "value", "drop", "rename", "add", "extra_bytes",
                     "truncate", "meta_big", "num_layers", "declared_size"]),
    st.integers(0, 10**6),
    _SHAPES,
    _DESCRS,
    st.integers(-(1 << 40), 1 << 40),
)

QBASE = random_qnet((12, 7, 3), density=0.5, seed=5)
# version 2: input_shape, every layer's kind, a conv layer's kernel, stride, padding and pool
QBASE2 = random_cnn((2, 6, 5), [(3, 3, (1, 2), 1, 2)], [4], seed=5, density=0.5)
QBASES = [QBASE, QBASE2]


def _patch_declared_size(data: bytes, name: str, size: int) -> bytes:
    """Rewrite a member's uncompressed size in its local and central headers."""
    b = bytearray(data)
    enc = name.encode()
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (i := b.find(sig, start)) >= 0:
            nlen_off = 26 if sig == b"PK\x03\x04" else 28
            nlen = struct.unpack_from("<H", b, i + nlen_off)[0]
            fname_at = i + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(b[fname_at : fname_at + nlen]) == enc:
                struct.pack_into("<I", b, i + off, size & 0xFFFFFFFF)
            start = i + 4
    return bytes(b)


def _qnet_file(mutations, base: int = 0) -> bytes:
    arrays = {k: np.asarray(v) for k, v in QBASES[base].to_arrays().items()}
    members = {k + ".npy": _npy(v) for k, v in arrays.items()}
    compression = zipfile.ZIP_STORED
    size_patch = None
    for op, i, shape, descr, value in mutations:
        names = sorted(members)
        name = names[i % len(names)] if names else "x.npy"
        key = name[:-4]
        a = arrays.get(key, np.zeros(2, np.uint8))
        if op == "shape":
            members[name] = _npy(a, shape=shape)
        elif op == "descr":
            members[name] = _npy(a, descr=descr)
        elif op == "fortran":
            members[name] = _npy(a, fortran=True)
        elif op == "value":
            v = np.full(a.shape, value % 256 if a.dtype.kind in "ub" else value)
            members[name] = _npy(v.astype(a.dtype if a.dtype.kind != "b" else np.int64))
        elif op == "drop" and names:
            del members[name]
        elif op == "rename" and names:
            members[("meta.x" if value % 3 == 0 else key if value % 3 == 1 else f"l9.{key}")
                    + ("" if value % 3 == 1 else ".npy")] = members.pop(name)
        elif op == "add":
            # The header declares `shape`; the data are a few bytes (never the declared size).
            members[f"l{value % 5}.index.npy"] = _npy(np.zeros(value % 50, np.uint8), shape=shape)
        elif op == "extra_bytes":
            members[name] = members.get(name, b"") + b"\x00" * (1 + value % 64)
        elif op == "truncate" and names:
            members[name] = members[name][: value % max(len(members[name]), 1)]
        elif op == "meta_big":
            members["meta.big.npy"] = _npy(np.zeros(8 << 20, np.uint8))  # 8 MB, deflates small
            compression = zipfile.ZIP_DEFLATED
        elif op == "num_layers":
            members["num_layers.npy"] = _npy(np.array(value % 7 - 1))
        elif op == "declared_size" and names:
            size_patch = (name, [0, 1, len(members[name]) - 1, len(members[name]) + 1,
                                 1 << 31, 0xFFFFFFFF][value % 6])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                        compress_type=compression)
    data = buf.getvalue()
    if size_patch:
        data = _patch_declared_size(data, *size_patch)
    return data


@FUZZ
@given(base=st.integers(0, len(QBASES) - 1), mutations=st.lists(_QMUT, min_size=1, max_size=3))
def test_qnet_structural_mutations(tmp_path_factory, base, mutations):
    path = tmp_path_factory.getbasetemp() / "fuzz.npz"
    path.write_bytes(_qnet_file(mutations, base))
    status, value = _bounded_call(lambda: load_qnet(path, index_bits=8))
    if status == "ok":
        value.validate(index_bits=8)


def test_qnet_mutation_builder_is_faithful(tmp_path):
    """With no real change the rebuilt file loads as the original network."""
    (tmp_path / "q.npz").write_bytes(_qnet_file([]))
    assert load_qnet(tmp_path / "q.npz", index_bits=8).equals(QBASE)
    (tmp_path / "q2.npz").write_bytes(_qnet_file([], 1))
    assert load_qnet(tmp_path / "q2.npz", index_bits=8).equals(QBASE2)
    assert QBASE2.version == 2 and "l0.pool" in QBASE2.to_arrays()
    save_qnet(QBASE, tmp_path / "s.npz")
    assert load_qnet(tmp_path / "s.npz").equals(QBASE)


@pytest.mark.parametrize("size", [0, 1, 1 << 31, 0xFFFFFFFF])
def test_qnet_lying_declared_size_refused(tmp_path, size):
    p = tmp_path / "q.npz"
    p.write_bytes(_patch_declared_size(_qnet_file([]), "l0.index.npy", size))
    status, msg = _bounded_call(lambda: load_qnet(p, index_bits=8))
    assert status == "refused" and "l0.index" in msg, msg
