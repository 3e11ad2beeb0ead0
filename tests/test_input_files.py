"""One rule for every file the tools read (compress/infile.py): a regular file after symlinks,
or exit 2 "not a regular file"; its size checked before it is read; never read to the end of a
stream; a FIFO never waits for a writer.

Every reader is tried with a symlink to /dev/zero and to /dev/urandom, a FIFO with no writer,
and a directory, in a child process (one torch import for all of them) under an address-space
cap and an alarm per case, so that a reader that still reads a device to its end, or blocks,
fails its case instead of the machine or the suite."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from compress import infile
from compress.errors import InputError
from compress.qnet import save_qnet
from compress.synthetic import random_inputs, random_qnet

from . import onnx_cases as C
from .conftest import REPO

_CHILD = textwrap.dedent("""
    import contextlib, io, json, resource, signal, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from compress.cli import main
    from compress.data import read_idx
    from compress.errors import InputError
    from images.eie import read_rom

    def kb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])

    def alarm(signum, frame):
        raise TimeoutError("blocked or still reading after 10 s")

    def run(argv):
        if argv[0] in ("read_rom", "read_idx"):
            try:
                (read_rom if argv[0] == "read_rom" else read_idx)(argv[1])
                return 0
            except InputError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        return main(argv)

    signal.signal(signal.SIGALRM, alarm)
    out = {}
    for case in json.loads(sys.argv[1]):
        name, argv = case["name"], case["argv"]
        with contextlib.redirect_stderr(io.StringIO()):  # warm up: the command's imports
            run([a.replace(case["path"], "/nonexistent/" + case["path"].rsplit("/", 1)[1])
                 for a in argv])
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss0, t, err = kb("VmRSS:"), time.process_time(), io.StringIO()
        signal.alarm(10)
        try:
            with contextlib.redirect_stderr(err):
                rc = run(argv)
        except BaseException as e:
            rc = f"{type(e).__name__}: {e}"
        finally:
            signal.alarm(0)
        out[name] = {"rc": rc, "err": err.getvalue(), "cpu": time.process_time() - t,
                     "mb": (kb("VmHWM:") - rss0) / 1024}
    print(json.dumps(out))
""")

KINDS = ("zero", "urandom", "fifo", "dir")


def _make(path, kind):
    if kind == "zero":
        os.symlink("/dev/zero", path)
    elif kind == "urandom":
        os.symlink("/dev/urandom", path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    return path


@pytest.fixture(scope="module")
def goods(tmp_path_factory):
    d = tmp_path_factory.mktemp("goods")
    q = random_qnet((4, 3), seed=1, density=0.8)
    save_qnet(q, d / "q.npz")
    np.save(d / "x.npy", random_inputs(2, 4))
    (d / "m.onnx").write_bytes(C.initializer("none"))
    C.data_npz(d / "d.npz", None)
    return d


def test_every_reader_refuses_devices_fifos_and_directories(tmp_path, goods):
    """Item 4: each reader gave MemoryError at 1.6-1.9 GB on /dev/zero, kept reading
    /dev/urandom, or blocked forever on a FIFO."""
    out = tmp_path / "out"
    readers = {  # name -> (file name, argv with {} for the path)
        "qnet": ("q.npz", ["golden", "--model", "{}", "--inputs", goods / "x.npy",
                           "--out", out / "y.npy"]),
        "npy": ("x.npy", ["golden", "--model", goods / "q.npz", "--inputs", "{}",
                          "--out", out / "y.npy"]),
        "dcz-unpack": ("m.dcz", ["unpack", "{}", "--out", out / "q.npz"]),
        "dcz-info": ("m.dcz", ["info", "{}"]),
        "onnx": ("m.onnx", ["pipeline", "--model", "{}", "--data", goods / "d.npz",
                            "--out", out / "p"]),
        "data": ("d.npz", ["pipeline", "--model", goods / "m.onnx", "--data", "{}",
                           "--out", out / "p"]),
        "config": ("c.json", ["pipeline", "--arch", "lenet-300-100", "--config", "{}",
                              "--out", out / "p"]),
        "checkpoint": ("c.npz", ["prune", "--checkpoint", "{}", "--out", out / "c.npz"]),
        "encode-inputs": ("x.npz", ["encode-inputs", "--model", goods / "q.npz", "--inputs",
                                    "{}", "--out", out / "xi.npy"]),
        "manifest": ("manifest.json", ["read_rom", "{dir}"]),
        "idx": ("t10k-images-idx3-ubyte.gz", ["read_idx", "{}"]),
    }
    cases = []
    for reader, (fname, argv) in readers.items():
        for kind in KINDS:
            d = tmp_path / f"{reader}-{kind}"
            d.mkdir()
            p = _make(d / fname, kind)
            cases.append({"name": f"{reader}/{kind}", "path": str(p if "{}" in argv else d),
                          "argv": [str(p) if a == "{}" else str(d) if a == "{dir}" else str(a)
                                   for a in argv]})
    p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout)
    bad = {}
    for name, r in got.items():
        kind = name.split("/")[1]
        word = "is a directory" if kind == "dir" else "not a regular file"
        ok = (r["rc"] == 2 and r["err"].count("\n") == 1 and word in r["err"]
              and "Traceback" not in r["err"] and r["cpu"] < 0.5 and r["mb"] < 16)
        if not ok:
            bad[name] = r
    assert not bad, bad
    assert not out.exists()


def test_rule_units(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    assert infile.read_input(f, max_bytes=3) == b"abc"
    with pytest.raises(InputError, match=r"3 bytes is more than .*\(2\)"):
        infile.read_input(f, max_bytes=2)
    with pytest.raises(InputError, match="no such file"):
        infile.read_input(tmp_path / "none")
    os.symlink(f, tmp_path / "link")
    assert infile.read_input(tmp_path / "link") == b"abc"  # a symlink to a file is a file
    os.symlink(tmp_path / "none", tmp_path / "dangling")
    with pytest.raises(InputError, match="no such file"):
        infile.read_input(tmp_path / "dangling")
    for kind in KINDS:
        p = _make(tmp_path / kind, kind)
        with pytest.raises(InputError, match=r"is a directory|not a regular file \(a (character"
                                             r" device|FIFO)\)"):
            infile.read_input(p)
        assert not infile.is_regular(p)
    assert infile.is_regular(f)
    (tmp_path / "t.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="not UTF-8"):
        infile.read_text(tmp_path / "t.txt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_one_line(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    f.chmod(0)
    with pytest.raises(InputError, match="cannot read"):
        infile.read_input(f)
