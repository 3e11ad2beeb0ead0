"""Untrusted files and careless outputs: every reader checks declared sizes against
`compress.limits` before allocating, outputs never destroy what the command did not make, and
SIGTERM cleans up like SIGINT."""

import io
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from compress import limits
from compress.atomic import atomic_dir, atomic_path, refuse_same_path
from compress.cli import main
from compress.dcz import (DCZ_VERSION, MAGIC, _ctx_map, _header_payload, _section, pack,
                          read_dcz, unpack, write_dcz)
from compress.errors import InputError
from compress.huffman import BitWriter, write_lengths
from compress.qnet import load_inputs, load_qnet, read_npy, read_npz, save_qnet
from images.eie import export_rom, read_rom
from compress.synthetic import random_inputs, random_qnet

from .conftest import REPO


def _run(argv, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _one_line(err):
    return err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture
def qfile(tmp_path):
    q = random_qnet((12, 7, 3), seed=1, density=0.5)
    save_qnet(q, tmp_path / "q.npz")
    return tmp_path / "q.npz"


# ---------------------------------------------------------------------------------------------
# Outputs


def test_refuse_same_path(tmp_path):
    a = tmp_path / "a.npy"
    a.write_bytes(b"x")
    os.symlink(a, tmp_path / "link.npy")
    os.link(a, tmp_path / "hard.npy")
    for out in (a, tmp_path / "link.npy", tmp_path / "hard.npy", tmp_path / "sub" / ".." / "a.npy"):
        with pytest.raises(InputError, match=r"^--out .* is the same file as the input"):
            refuse_same_path(out, None, tmp_path / "other.npy", a)
    refuse_same_path(tmp_path / "b.npy", a, None)  # different files: fine
    refuse_same_path(None, a)


def test_unwritable_output_names_the_output(tmp_path, qfile, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match=r"^--out .*file/y\.npy: cannot write"):
        with atomic_path(blocker / "y.npy", what="--out"):
            pass
    np.save(tmp_path / "x.npy", random_inputs(2, 12))
    for out in (blocker / "y.npy", tmp_path):  # parent is a file; the output is a directory
        rc, err = _run(["golden", "--model", qfile, "--inputs", tmp_path / "x.npy", "--out", out],
                       capsys)
        assert rc == 2 and _one_line(err) and f"--out {out}" in err and ".tmp" not in err, err
    assert blocker.read_text() == "not a directory"


def test_export_rom_never_deletes_what_it_did_not_write(tmp_path, qfile, capsys):
    d = tmp_path / "rom"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    model = d / "model.npz"
    model.write_bytes(qfile.read_bytes())
    argv = ["export-rom", "--model", model, "--pes", 2, "--out", d]
    # A non-empty directory: refused, everything as it was.
    rc, err = _run(argv, capsys)
    assert rc == 2 and _one_line(err) and "not empty" in err and "--force" in err, err
    assert sorted(p.name for p in d.iterdir()) == ["model.npz", "notes.txt"]
    # --force: the ROM files are written, the user's file and the model survive.
    assert _run(argv + ["--force"], capsys)[0] == 0
    names = {p.name for p in d.iterdir()}
    assert {"notes.txt", "model.npz", "manifest.json", "codebook.bin"} <= names
    assert (d / "notes.txt").read_text() == "mine"
    assert model.read_bytes() == qfile.read_bytes()
    assert read_rom(d).pes == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    # Again with --force: the ROM files are replaced in place, the rest untouched.
    (d / "manifest.json").write_text("stale")
    assert _run(argv + ["--force"], capsys)[0] == 0
    assert read_rom(d).pes == 2 and (d / "notes.txt").read_text() == "mine"


def test_export_rom_refuses_a_file_and_a_model_named_like_an_output(tmp_path, qfile, capsys):
    f = tmp_path / "rom"
    f.write_text("a file")
    for extra in ([], ["--force"]):
        rc, err = _run(["export-rom", "--model", qfile, "--pes", 2, "--out", f] + extra, capsys)
        assert rc == 2 and _one_line(err) and "not a directory" in err, err
        assert f.read_text() == "a file"
    # --out is the model itself
    rc, err = _run(["export-rom", "--model", qfile, "--pes", 2, "--out", qfile, "--force"], capsys)
    assert rc == 2 and "same file" in err and load_qnet(qfile)
    # A model whose name is one of the outputs, inside DIR with --force: refused, it survives.
    d = tmp_path / "d"
    d.mkdir()
    model = d / "manifest.json"
    model.write_bytes(qfile.read_bytes())
    rc, err = _run(["export-rom", "--model", model, "--pes", 2, "--out", d, "--force"], capsys)
    assert rc == 2 and _one_line(err) and "same file" in err, err
    assert model.read_bytes() == qfile.read_bytes()
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json"]
    # An empty existing directory is fine.
    e = tmp_path / "empty"
    e.mkdir()
    assert _run(["export-rom", "--model", qfile, "--pes", 2, "--out", e], capsys)[0] == 0
    assert (e / "manifest.json").exists()


def test_atomic_dir_failure_leaves_the_directory_alone(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "keep").write_text("k")
    with pytest.raises(RuntimeError):
        with atomic_dir(d, force=True) as tmp:
            (tmp / "keep").write_text("new")
            raise RuntimeError("boom")
    assert (d / "keep").read_text() == "k"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_equal_to_an_input_is_refused(tmp_path, qfile, capsys):
    x = tmp_path / "x.npy"
    np.save(x, random_inputs(2, 12))
    dcz = tmp_path / "m.dcz"
    assert _run(["pack", qfile, "--out", dcz], capsys)[0] == 0
    os.symlink(dcz, tmp_path / "alias.dcz")
    before = {p: p.read_bytes() for p in (qfile, x, dcz)}
    for argv in (
        ["unpack", dcz, "--out", dcz],
        ["unpack", dcz, "--out", tmp_path / "alias.dcz"],
        ["pack", qfile, "--out", qfile],
        ["golden", "--model", qfile, "--inputs", x, "--out", qfile],
        ["golden", "--model", qfile, "--inputs", x, "--out", x],
    ):
        rc, err = _run(argv, capsys)
        assert rc == 2 and _one_line(err) and "is the same file as the input" in err, (argv, err)
    assert {p: p.read_bytes() for p in before} == before


# ---------------------------------------------------------------------------------------------
# .dcz: decompression bombs


def _bomb_layer(out_f, in_f, *, nnz=None, scheme=0, k=2):
    """A dense layer of one weight value with one-symbol codes: its streams take no bits."""
    nnz = out_f * in_f if nnz is None else nnz
    w = BitWriter()
    w.write_eg(out_f), w.write_eg(in_f), w.write_eg(0), w.write(0, 1), w.write(0, 1)
    w.write_eg(k), w.write(0, 1)
    for mn in (1, 0):  # codebook[1:] = 1..., bias = 0: min, tz 0, fixed width 0
        w.write_sint(mn), w.write_eg(0), w.write(0, 1), w.write_eg(0)
    w.write_eg(nnz), w.write_eg(1), w.write_eg(0)  # nnz, gap alphabet M = 1, no fillers
    write_lengths(w, [1, 0])  # one gap symbol: 0 (adjacent)
    w.write_eg(scheme)
    for _ in range(int(_ctx_map(scheme, k - 1).max()) + 1):
        w.write(1, 1)
        write_lengths(w, [1] + [0] * (k - 2))
    w.align()
    return w.getvalue()


def _dcz(payloads, input_frac=0):
    head = _header_payload([None] * len(payloads), input_frac, None)
    body = MAGIC + bytes([DCZ_VERSION]) + _section(b"H", head)
    body += b"".join(_section(b"L", p) for p in payloads)
    return body + struct.pack("<I", zlib.crc32(body))


def _bounded(fn, *, mb=8, seconds=1.0):
    """fn() within `mb` of traced memory and `seconds` of CPU time (x4: tracemalloc slows
    Python; CPU time, never wall time: a loaded machine must not fail the bound)."""
    tracemalloc.start()
    t = time.process_time()
    try:
        return fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < mb * 2**20, f"peak {peak / 2**20:.1f} MB"
        assert time.process_time() - t < seconds * 4


def test_dcz_bomb_refused_before_allocating(tmp_path, capsys):
    data = _dcz([_bomb_layer(1 << 13, 1 << 13)])  # 2**26 weights in ~40 bytes
    assert len(data) < 50
    with pytest.raises(InputError, match="declares 67,108,864 weights in a file of"):
        _bounded(lambda: unpack(data), mb=1)
    p = tmp_path / "bomb.dcz"
    p.write_bytes(data)
    rc, err = _run(["unpack", p, "--out", tmp_path / "q.npz"], capsys)
    assert rc == 2 and _one_line(err) and "dcz_weights_per_byte" in err, err
    assert not (tmp_path / "q.npz").exists()
    # 2**28 weights (MemoryError before) and 2**40 are refused the same way.
    for dims in ((1 << 14, 1 << 14), (1 << 20, 1 << 20)):
        with pytest.raises(InputError, match="weights|corrupt shape"):
            _bounded(lambda: unpack(_dcz([_bomb_layer(*dims)])), mb=1)
    # Many layers, each within the limits: the total counts.
    with pytest.raises(InputError, match="declares"):
        _bounded(lambda: unpack(_dcz([_bomb_layer(256, 256)] * 40)), mb=4)


def test_dcz_limits_can_be_raised(monkeypatch):
    data = _dcz([_bomb_layer(1 << 10, 1 << 10)])  # 1M weights in 37 bytes
    with pytest.raises(InputError, match="dcz_weights_per_byte"):
        unpack(data)
    with limits.override(dcz_weights_per_byte=10**6):
        q = unpack(data)
    assert q.layers[0].index.shape == (1024, 1024) and q.layers[0].index.all()
    monkeypatch.setenv("DEEPCOMP_LIMITS", "dcz_weights_per_byte=1e6")
    assert unpack(data).equals(q)
    monkeypatch.setenv("DEEPCOMP_LIMITS", "dcz_weights_per_byte=1e6,max_weights=1000")
    with pytest.raises(InputError, match="max_weights=1,000"):
        unpack(data)
    monkeypatch.setenv("DEEPCOMP_LIMITS", "max_dim=100,dcz_weights_per_byte=2**20")
    with pytest.raises(InputError, match="max_dim"):
        unpack(data)


def test_dcz_worst_case_a_few_hundred_bytes_cost(monkeypatch):
    """The most a 300-byte file may declare, coded as expensively as the format allows
    (context-coded weights decode symbol by symbol): well under a second and a few MB."""
    n = limits.get().dcz_free_weights + limits.get().dcz_weights_per_byte * 300
    data = _dcz([_bomb_layer(512, n // 512, scheme=4)])
    with limits.override(dcz_free_weights=n):  # the file itself is only ~40 bytes
        t = time.process_time()
        q = unpack(data)
        assert time.process_time() - t < 1.0  # CPU time, ~0.1 s measured
        assert q.layers[0].index.size == 512 * (n // 512)
        _bounded(lambda: unpack(data), mb=16, seconds=1.0)


def test_dcz_context_limit_and_counts_checked(monkeypatch):
    import compress.dcz as dcz

    monkeypatch.setattr(dcz, "MAX_CONTEXT_NNZ", 1000)
    with pytest.raises(InputError, match="context-coded weights for 2,048 non-zeros"):
        unpack(_dcz([_bomb_layer(32, 64, scheme=1)]))
    assert unpack(_dcz([_bomb_layer(32, 64, scheme=0)])).layers[0].index.all()
    # More non-zeros than one-symbol gaps can place, fillers without non-zeros.
    with pytest.raises(InputError, match="corrupt"):
        unpack(_dcz([_bomb_layer(32, 64, nnz=32 * 64 + 1)]))


def test_huffman_count_beyond_the_bits_refused_before_decoding():
    from compress.huffman import HuffmanCode

    code = HuffmanCode(np.array([1, 1], dtype=np.uint8))
    with pytest.raises(InputError, match="truncated"):
        _bounded(lambda: code.decode(b"\x00" * 10, 1 << 40), mb=1)


def test_pack_refuses_what_unpack_would_refuse():
    from compress.qnet import Layer, QNet

    index = np.zeros((1000, 1000), np.uint8)  # an empty million-weight layer: ~30 bytes
    q = QNet([Layer(np.zeros(1, np.int16), index, np.zeros(1000, np.int32), 0, False)])
    with pytest.raises(InputError, match="pack: l0.*dcz_weights_per_byte"):
        pack(q)
    with limits.override(dcz_weights_per_byte=10**6):
        assert unpack(pack(q)).equals(q)


# ---------------------------------------------------------------------------------------------
# qnet and .npy: zip members checked by name, type and declared size


def _npy_bytes(a):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    return buf.getvalue()


def _header_only(shape, dtype="|u1"):
    """A .npy header declaring `shape` with no data behind it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def _zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _qnet_members(q):
    return {k + ".npy": _npy_bytes(v) for k, v in q.to_arrays().items()}


def test_qnet_non_npy_member_refused(tmp_path, capsys):
    members = _qnet_members(random_qnet((6, 4), seed=2))
    members["version"] = b"1"  # not a .npy (np.load crashed with AttributeError)
    p = _zip(tmp_path / "q.npz", members)
    x = tmp_path / "x.npy"
    np.save(x, random_inputs(1, 6))
    rc, err = _run(["golden", "--model", p, "--inputs", x, "--out", tmp_path / "y.npy"], capsys)
    assert rc == 2 and _one_line(err) and "zip member 'version' is not a .npy array" in err, err


def test_qnet_huge_declared_shape_refused(tmp_path, capsys):
    members = _qnet_members(random_qnet((6, 4), seed=2))
    members["l0.index.npy"] = _header_only((1 << 20, 1 << 20))
    p = _zip(tmp_path / "q.npz", members)
    with pytest.raises(InputError, match="l0.index"):
        _bounded(lambda: load_qnet(p), mb=2)
    x = tmp_path / "x.npy"
    np.save(x, random_inputs(1, 6))
    rc, err = _run(["golden", "--model", p, "--inputs", x, "--out", tmp_path / "y.npy"], capsys)
    assert rc == 2 and _one_line(err) and "l0.index" in err, err
    # A header whose shape disagrees with the member's size (a lie) is refused too.
    members["l0.index.npy"] = _header_only((4, 6)) + b"\x01" * 5
    with pytest.raises(InputError, match="declares uint8\\[4, 6\\]"):
        load_qnet(_zip(tmp_path / "q2.npz", members))


def test_qnet_object_and_scalar_shapes_refused_unread(tmp_path):
    q = random_qnet((6, 4), seed=2)
    members = _qnet_members(q)
    members["l0.bias.npy"] = _header_only((4,), "|O")
    with pytest.raises(InputError, match="object arrays are refused"):
        load_qnet(_zip(tmp_path / "o.npz", members))
    members = _qnet_members(q)
    members["num_layers.npy"] = _header_only((1 << 30,), "<i8")
    with pytest.raises(InputError, match="num_layers: (expected an integer scalar|declares)"):
        _bounded(lambda: load_qnet(_zip(tmp_path / "s.npz", members)), mb=2)


def test_qnet_ignored_meta_member_is_not_decompressed(tmp_path):
    q = random_qnet((6, 4), seed=2)
    members = _qnet_members(q)
    members["meta.junk.npy"] = _npy_bytes(np.zeros(64 << 20, np.uint8))  # 64 MB of zeros
    p = _zip(tmp_path / "q.npz", members, compression=zipfile.ZIP_DEFLATED)
    assert p.stat().st_size < 200_000
    back = _bounded(lambda: load_qnet(p), mb=4)
    assert back.equals(q) and "meta.junk" not in back.meta


def test_zip_compression_methods_and_ratios(tmp_path):
    q = random_qnet((6, 4), seed=2)
    members = _qnet_members(q)
    p = _zip(tmp_path / "bz.npz", members, compression=zipfile.ZIP_BZIP2)
    with pytest.raises(InputError, match="compression method 12"):
        load_qnet(p)
    p = _zip(tmp_path / "d.npz", members, compression=zipfile.ZIP_DEFLATED)
    assert load_qnet(p).equals(q)  # np.savez_compressed files load
    # A member declaring more than deflate can expand to: refused before decompressing.
    from .test_fuzz_readers import _patch_declared_size

    data = _patch_declared_size(p.read_bytes(), "l0.index.npy", 1 << 30)
    p.write_bytes(data)
    with pytest.raises(InputError, match="more than deflate can expand"):
        _bounded(lambda: load_qnet(p), mb=2)


def test_member_sizes_checked_against_limits(tmp_path):
    q = random_qnet((60, 40), seed=2)
    save_qnet(q, tmp_path / "q.npz")
    with limits.override(max_member_bytes=1000):
        with pytest.raises(InputError, match="l0.index: declared uncompressed size: 2,528 "
                                             "exceeds the limit max_member_bytes=1,000"):
            load_qnet(tmp_path / "q.npz")
        with pytest.raises(InputError, match="max_member_bytes"):
            read_npz(tmp_path / "q.npz")
    with limits.override(max_weights=100):
        with pytest.raises(InputError, match="l0.index: total weights"):
            load_qnet(tmp_path / "q.npz")
    with limits.override(max_layers=1):
        save_qnet(random_qnet((5, 4, 3), seed=1), tmp_path / "q2.npz")
        with pytest.raises(InputError, match="num_layers: 2 exceeds the limit max_layers=1"):
            load_qnet(tmp_path / "q2.npz")
    assert load_qnet(tmp_path / "q.npz").equals(q)


def test_input_npy_checked_before_reading(tmp_path, qfile, capsys):
    x = tmp_path / "x.npy"
    x.write_bytes(_header_only((1 << 40, 12), "<i2"))
    with pytest.raises(InputError, match="max_array_bytes"):
        _bounded(lambda: load_inputs(x, 12), mb=1)
    rc, err = _run(["golden", "--model", qfile, "--inputs", x, "--out", tmp_path / "y.npy"],
                   capsys)
    assert rc == 2 and _one_line(err) and str(x) in err, err
    x.write_bytes(_header_only((4,), "|O"))
    with pytest.raises(InputError, match="object arrays"):
        read_npy(x)
    # a header that cannot be tokenized (numpy raised tokenize.TokenError, exit 1)
    x.write_bytes(_npy_bytes(random_inputs(3, 12)).replace(b"'fortran_order'",
                                                            b"#fortran_order'"))
    with pytest.raises(InputError, match="not a valid .npy array"):
        read_npy(x)
    rc, err = _run(["golden", "--model", qfile, "--inputs", x, "--out", tmp_path / "y.npy"],
                   capsys)
    assert rc == 2 and _one_line(err) and str(x) in err, err
    # a header written by Python 2 (`3L`) is read, without numpy's warning on stderr
    good = random_inputs(3, 12)
    raw = _npy_bytes(good)
    x.write_bytes(raw.replace(b"(3, 12)", b"(3L, 12L)", 1)[:-2 * good.size]
                  .replace(b"  \n", b"\n", 1) + good.tobytes())
    rc, err = _run(["golden", "--model", qfile, "--inputs", x, "--out", tmp_path / "y.npy"],
                   capsys)
    assert rc == 0 and err == "", err
    x.write_bytes(_npy_bytes(random_inputs(3, 12))[:-2])
    with pytest.raises(InputError, match="holds"):
        read_npy(x)
    np.save(x, random_inputs(3, 12))
    with limits.override(max_batch=2):
        with pytest.raises(InputError, match="max_batch=2"):
            load_inputs(x, 12)
    assert load_inputs(x, 12).shape == (3, 12)


def test_rom_manifest_sizes_checked(tmp_path):
    import json

    export_rom(random_qnet((20, 8), seed=1), tmp_path / "rom", pes=2)
    m = tmp_path / "rom" / "manifest.json"
    good = json.loads(m.read_text())
    for mutate, words in (
        (lambda d: d["memories"]["codebook"].update(depth=1 << 40), "max_array_bytes"),
        (lambda d: d["files"]["codebook.bin"].update(bytes=1 << 40), "max_array_bytes"),
        (lambda d: d["files"]["codebook.bin"].update(bytes=3), "the manifest declares 3"),
        (lambda d: d.update(pes=1 << 30), "max_pes"),
        (lambda d: d["files"].update({"../../etc/passwd": {"bytes": 1, "sha256": "0"}}),
         "not a plain name"),
        (lambda d: d.pop("memories"), "malformed manifest"),
        (lambda d: d.update(layers=7), "malformed manifest"),
    ):
        d = json.loads(json.dumps(good))
        mutate(d)
        m.write_text(json.dumps(d))
        with pytest.raises(InputError, match=words):
            read_rom(tmp_path / "rom")
    m.write_text(json.dumps(good))
    assert read_rom(tmp_path / "rom").pes == 2


def test_export_rom_refuses_what_read_rom_would_refuse(tmp_path, capsys):
    q = random_qnet((20, 8), seed=1)
    with limits.override(max_pes=16):
        with pytest.raises(InputError, match="max_pes"):
            _bounded(lambda: export_rom(q, tmp_path / "a", pes=100_000), mb=4)
    # a manifest over max_config_bytes: nothing is written (it took 8 s and 24,580 files
    # at 4,096 PEs, then read_rom refused the image)
    with limits.override(max_config_bytes=4096):
        with pytest.raises(InputError, match="manifest for 64 PEs would be too large"):
            export_rom(q, tmp_path / "b", pes=64)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []
    qf = tmp_path / "q.npz"
    save_qnet(q, qf)
    rc, err = _run(["export-rom", "--model", qf, "--pes", "100000", "--out", tmp_path / "c"],
                   capsys)
    assert rc == 2 and _one_line(err) and "max_pes" in err and not (tmp_path / "c").exists()


def test_labels_outside_the_models_classes_refused(tmp_path, capsys):
    from compress.qnet import load_labels

    y = tmp_path / "y.npy"
    np.save(y, np.array([0, 2, 5]))
    assert load_labels(y, 3).tolist() == [0, 2, 5]
    assert load_labels(y, 3, classes=6).tolist() == [0, 2, 5]
    with pytest.raises(InputError, match="label 5 but the model has 3 outputs"):
        load_labels(y, 3, classes=3)
    from tb.cli import main as tb_main

    q = random_qnet((6, 4, 3), seed=2)
    qf, x = tmp_path / "q.npz", tmp_path / "x.npy"
    save_qnet(q, qf)
    np.save(x, random_inputs(3, 6))
    assert tb_main(["sim", "--model", str(qf), "--inputs", str(x), "--labels", str(y),
                    "--pes", "2"]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "label 5 but the model has 3 outputs" in err, err
    from fpga.cli import main as fpga_main

    assert fpga_main(["run", "--sim", "--model", str(qf), "--inputs", str(x), "--labels",
                      str(y), "--pes", "2"]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "label 5 but the model has 3 outputs" in err, err


def test_limits_spec_parsing(monkeypatch):
    assert limits.parse("max_weights=1e9, max_dim=2**21") == {"max_weights": 10**9,
                                                              "max_dim": 1 << 21}
    for bad, words in (("max_weights", "name=value"), ("nope=3", "unknown limit"),
                       ("max_dim=1.5", "whole number"), ("max_dim=0", ">= 1"),
                       ("max_dim=1e9999", "whole number"), ("max_dim=2**65", "over 2\\*\\*64"),
                       ("max_dim=1" + "0" * 30, "over 2\\*\\*64")):
        with pytest.raises(InputError, match=words):
            limits.parse(bad)
    monkeypatch.setenv("DEEPCOMP_LIMITS", "bogus=1")
    rc = main(["unpack", "x.dcz", "--out", "y.npz"])
    assert rc == 2
    # a huge power is refused before it is computed (it took minutes and GBs)
    t0 = time.process_time()
    with pytest.raises(InputError, match="over 2"):
        limits.parse("max_weights=2**99999999999")
    assert time.process_time() - t0 < 0.5
    assert limits.parse("max_weights=2**64, max_dim=1**99999999999") == {
        "max_weights": 1 << 64, "max_dim": 1}
    monkeypatch.delenv("DEEPCOMP_LIMITS")
    with limits.override(max_dim=5) as lim:
        assert lim.max_dim == 5 and limits.get().max_dim == 5
    assert limits.get().max_dim == limits.DEFAULTS.max_dim
    # The defaults take a VGG-16-sized model.
    d = limits.DEFAULTS
    assert d.max_weights >= 138_357_544 and d.max_dim >= 25088
    assert d.max_member_bytes >= 4096 * 25088 and d.max_array_bytes >= 4 * 4096 * 25088


# ---------------------------------------------------------------------------------------------
# SIGTERM


@pytest.fixture(scope="module")
def big_dcz(tmp_path_factory):
    """A valid model whose unpack runs ~1 s (context-coded weights decode symbol by symbol)."""
    d = tmp_path_factory.mktemp("big")
    q = random_qnet((1000, 1000, 1000), density=0.5, seed=0)
    write_dcz(q, d / "big.dcz")
    return d / "big.dcz"


def _wait_for(cond, timeout=300.0):  # a guard against a hang (a loaded machine is slow)
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout:
            raise AssertionError("timed out")
        time.sleep(0.002)


def _temps(d, name):
    return [p for p in d.iterdir() if p.name.startswith(f".{name}.")]


def test_sigterm_while_writing_removes_the_temp_file(tmp_path, big_dcz):
    """SIGTERM while the output is being written: exit 143, one line, the temp file removed.
    The write is slowed from the outside so the signal lands inside it every time."""
    out = tmp_path / "q.npz"
    code = (
        "import sys, time, compress.qnet as q\n"
        "w = q._write_npz_deterministic\n"
        "def slow(path, arrays):\n"
        "    w(path, arrays)\n"
        "    time.sleep(60)\n"
        "q._write_npz_deterministic = slow\n"
        "from compress.cli import main\n"
        f"sys.exit(main(['unpack', {str(big_dcz)!r}, '--out', {str(out)!r}]))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE,
                         text=True)
    try:
        _wait_for(lambda: _temps(tmp_path, "q.npz") and _temps(tmp_path, "q.npz")[0].stat().st_size)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 143 and err == "error: terminated\n", (p.returncode, err)
    assert list(tmp_path.iterdir()) == []


def _wait_for_handler(pid: int, sig: int, limit: float = 30.0) -> None:
    """Until process `pid` catches `sig` (Linux: SigCgt in /proc), so the signal tests what the
    program does with it, not what the default action does during a slow import."""
    status = Path(f"/proc/{pid}/status")
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            caught = next(int(line.split()[1], 16) for line in status.read_text().splitlines()
                          if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            time.sleep(0.8)  # no /proc: the old fixed wait
            return
        if caught >> (sig - 1) & 1:
            return
        time.sleep(0.02)


def test_sigterm_during_a_real_unpack(tmp_path, big_dcz):
    out = tmp_path / "q.npz"
    p = subprocess.Popen([sys.executable, "-m", "compress", "unpack", str(big_dcz), "--out",
                          str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_handler(p.pid, signal.SIGTERM)  # imports done (slow under load), decoding
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    if p.returncode == 0:  # a fast machine finished first: then the output is complete
        assert read_dcz(big_dcz).equals(load_qnet(out))
    else:
        assert p.returncode == 143 and err == "error: terminated\n", (p.returncode, err)
        assert not out.exists()
    assert not _temps(tmp_path, "q.npz")


# ---------------------------------------------------------------------------------------------
# From a hostile probe of tb, fpga and bench: refused up front, exit 2, one line


def test_tb_fpga_bench_bad_arguments_refused_up_front(tmp_path, capsys):
    import hashlib

    from bench.__main__ import main as bench_main
    from compress.shipped import SHIPPED_QNET
    from fpga.cli import main as fpga_main
    from tb.cli import main as tb_main

    shipped = hashlib.sha256(SHIPPED_QNET.read_bytes()).hexdigest()
    afile = tmp_path / "afile"
    afile.write_text("mine")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    cases = [
        # an output over the default model (no --model given): it overwrote the shipped qnet
        (tb_main, ["sweep", "--out", str(SHIPPED_QNET), "--count", "1"], "shipped model file"),
        (tb_main, ["sweep", "--out", str(tmp_path), "--count", "1"], "is a directory"),
        (tb_main, ["sweep", "--depths", "abc", "--count", "1"], "--depths"),
        (tb_main, ["verify-mnist", "--out", str(afile), "--count", "1"], "not a directory"),
        (tb_main, ["sim", "--model", "synthetic:784-2000000-10"], "max_dim"),
        (tb_main, ["sim", "--model", "synthetic:20000-20000-10"], "max_weights"),
        (fpga_main, ["run", "--sim", "--count", "1", "--timeout", "nan"], "--timeout"),
        (main, ["pipeline", "--config", str(deep), "--out", str(tmp_path / "p")],
         "nested too deeply"),
        (bench_main, ["--only", "bogus", "--out", str(tmp_path / "b")], "unknown section"),
        (bench_main, ["--only", "tooling", "--out", str(afile)], "not a directory"),
    ]
    for fn, argv, words in cases:
        t0 = time.process_time()
        assert fn(argv) == 2, argv
        err = capsys.readouterr().err
        assert _one_line(err) and words in err, (argv, err)
        assert time.process_time() - t0 < 20, argv  # CPU time: refused before any work
    assert hashlib.sha256(SHIPPED_QNET.read_bytes()).hexdigest() == shipped
    assert afile.read_text() == "mine" and not (tmp_path / "b").exists()
    assert not (tmp_path / "p").exists()
