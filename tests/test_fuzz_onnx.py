"""Property-based fuzzing of the ONNX importer with structural mutations of the protobuf.

A small valid model (tests/onnx_cases.py: a Gemm/MatMul chain, a Conv/MaxPool network with
the shape arithmetic in front of a Reshape, and a CNN with BatchNormalization, Dropout and a
final LogSoftmax) is split into its protobuf fields, guided by the
ONNX schema so that messages nest; one or more fields are then changed (a number set to an
extreme, a name swapped for another value's, a float made NaN, inf or 3e38), dropped, repeated
(up to 40 times: a shape list doubled, a node copied), reordered, given another wire type, or
a field is inserted; the result is serialized again and sometimes cut short. Every mutant must
either import or be refused with `InputError` of one line (what the command line turns into
exit 2), with no warning, within bounded CPU time and memory. A bounded run here (a few seconds
of CPU); LONG=1 runs many more.
"""

import struct
import time
import warnings
from datetime import timedelta

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.errors import InputError
from compress.onnx_import import load_onnx

from . import onnx_cases as C
from .conftest import long_tests

EXAMPLES = 3000 if long_tests() else 150
MAX_SECONDS = 2.0  # CPU seconds per mutant (a valid one imports in ~10 ms)
MAX_MB = 64  # peak RSS growth per mutant
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=30), derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# -- a protobuf as a tree of [number, wire, value] fields ---------------------------------


def _varint(data, pos):
    v = shift = 0
    while True:
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, pos
        shift += 7


def _enc_varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def parse(data: bytes, desc) -> list:
    """The fields of a message; a length-delimited field the schema says is a message is a
    nested list, anything else keeps its value (int for varints, bytes otherwise)."""
    fields, pos = [], 0
    by_number = {f.number: f for f in desc.fields}
    while pos < len(data):
        key, pos = _varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, pos = _varint(data, pos)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            v, pos = data[pos:pos + n], pos + n
        else:
            n, pos = _varint(data, pos)
            v, pos = data[pos:pos + n], pos + n
            fd = by_number.get(num)
            if fd is not None and fd.type == fd.TYPE_MESSAGE:
                v = (fd.message_type, parse(v, fd.message_type))
        fields.append([num, wire, v])
    return fields


def serialize(fields: list) -> bytes:
    out = bytearray()
    for num, wire, v in fields:
        out += _enc_varint(num << 3 | wire)
        if isinstance(v, tuple):
            v = serialize(v[1])
        if wire == 0:
            out += _enc_varint(v if isinstance(v, int) else len(v))
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            b = v if isinstance(v, bytes) else struct.pack("<Q", v & (2**64 - 1))
            out += (b + bytes(n))[:n]
        else:
            b = v if isinstance(v, bytes) else _enc_varint(v)
            out += _enc_varint(len(b)) + b
    return bytes(out)


def slots(fields: list, out: list | None = None) -> list:
    """Every (list, index) of the tree, depth first."""
    out = [] if out is None else out
    for i, f in enumerate(fields):
        out.append((fields, i))
        if isinstance(f[2], tuple):
            slots(f[2][1], out)
    return out


def messages(fields: list, out: list | None = None) -> list:
    """Every message's field list (the root's too)."""
    out = [fields] if out is None else out
    for f in fields:
        if isinstance(f[2], tuple):
            out.append(f[2][1])
            messages(f[2][1], out)
    return out


def names(fields: list) -> list[bytes]:
    """Every short string of the model (value and node names, op types ...)."""
    return sorted({f[2] for _, f in ((lst, lst[i]) for lst, i in slots(fields))
                   if isinstance(f[2], bytes) and 0 < len(f[2]) < 24 and f[1] == 2})


INTERESTING = [0, 1, 2, 3, 4, 7, 16, 17, 70, 999, 1000, 2001, 2**20 + 1, 2**31, 2**32 + 3,
               2**62, 2**63 - 1, 2**64 - 1, 2**64 - 2]
FLOATS = [float("nan"), float("inf"), float("-inf"), 3e38, 1e38, -0.0, 1e-45, 2.0**31]

SEEDS = {"chain": C.small_valid(), "conv": C.small_conv(), "cnn_bn": C.small_cnn_bn()}
TREES = {k: parse(v, onnx.ModelProto.DESCRIPTOR) for k, v in SEEDS.items()}

_MUTATION = st.tuples(
    st.sampled_from(["set", "float", "name", "bytes", "drop", "repeat", "swap", "wire",
                     "insert"]),
    st.integers(0, 2**16), st.integers(0, 2**16), st.binary(max_size=12))


def _copy(fields: list) -> list:
    return [[n, w, (v[0], _copy(v[1])) if isinstance(v, tuple) else v] for n, w, v in fields]


def mutate(tree: list, muts) -> list:
    tree = _copy(tree)
    pool = names(tree)
    for op, a, b, blob in muts:
        all_slots = slots(tree)
        if not all_slots:  # everything dropped: an empty model
            break
        lst, i = all_slots[a % len(all_slots)]
        f = lst[i]
        if op == "set":  # a number (a fixed-width field keeps its width; else a varint)
            v = INTERESTING[b % len(INTERESTING)]
            lst[i] = [f[0], f[1], struct.pack("<Q", v)] if f[1] in (1, 5) else [f[0], 0, v]
        elif op == "float":
            x = FLOATS[b % len(FLOATS)]
            if f[1] == 5:
                lst[i] = [f[0], 5, struct.pack("<f", x)]
            elif f[1] == 2 and isinstance(f[2], bytes) and len(f[2]) >= 4:
                raw = bytearray(f[2])  # a float inside packed or raw tensor data
                k = 4 * ((b // len(FLOATS)) % (len(raw) // 4))
                raw[k:k + 4] = struct.pack("<f", x)
                lst[i] = [f[0], 2, bytes(raw)]
        elif op == "name" and pool and f[1] == 2 and isinstance(f[2], bytes):
            lst[i] = [f[0], 2, pool[b % len(pool)]]
        elif op == "bytes" and not isinstance(f[2], tuple):
            lst[i] = [f[0], 2, blob]
        elif op == "drop":
            del lst[i]
        elif op == "repeat":
            lst[i:i + 1] = [f] * (1 + b % 40)
        elif op == "swap":
            j = b % len(lst)
            lst[i], lst[j] = lst[j], lst[i]
        elif op == "wire" and not isinstance(f[2], tuple):
            lst[i] = [f[0], (0, 1, 2, 5)[b % 4], f[2]]
        elif op == "insert":
            msgs = messages(tree)
            target = msgs[b % len(msgs)]
            wire = (0, 1, 2, 5)[a % 4]
            value = INTERESTING[a % len(INTERESTING)] if wire == 0 else blob
            target.insert(b % (len(target) + 1), [1 + a % 30, wire, value])
    return tree


def _kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def bounded_import(path):
    """load_onnx(path) -> ("ok", model) or ("refused", message); anything else fails."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS starts again from the current RSS
    rss0, t = _kb("VmRSS:"), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = "ok", load_onnx(path)
        except InputError as e:
            msg = str(e)
            assert msg and "\n" not in msg, msg
            result = "refused", msg
    assert not caught, [str(w.message) for w in caught]
    assert time.process_time() - t < MAX_SECONDS
    grew = (_kb("VmHWM:") - rss0) / 1024
    assert grew < MAX_MB, f"peak RSS grew {grew:.0f} MB"
    return result


def test_tree_round_trips():
    for name, data in SEEDS.items():
        assert serialize(TREES[name]) == data
        assert len(slots(TREES[name])) > 20


@pytest.mark.parametrize("name", list(SEEDS))
def test_seeds_import(tmp_path, name):
    path = tmp_path / "m.onnx"
    path.write_bytes(SEEDS[name])
    assert bounded_import(path)[0] == "ok"


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), muts=st.lists(_MUTATION, min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 2**16)))
def test_onnx_structural_mutations(tmp_path_factory, seed, muts, cut):
    data = serialize(mutate(TREES[seed], muts))
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = tmp_path_factory.getbasetemp() / "fuzz.onnx"
    path.write_bytes(data)
    status, value = bounded_import(path)
    if status == "ok":  # what the importer accepts runs, with the shape it computed
        assert len(value) >= 1 and all(d >= 1 for d in value.input_shape)
        with torch.no_grad():
            y = value(torch.zeros(2, *value.input_shape))
        assert y.ndim == 2 and len(y) == 2
