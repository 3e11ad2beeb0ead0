"""`python -m fpga`: bad invocations (exit 2, one line), the resource analysis, PLL settings."""

import json
import os
import shlex
import time
from pathlib import Path
import tty
import subprocess
import sys

import numpy as np
import pytest

from compress.synthetic import random_qnet
from images.eie import build_rom
from images import get
from images.lockstep import build_lockstep
from fpga.boards.ice40 import parse_report
from fpga.boards.ice40 import ebr_blocks
from fpga.flow.resources import analyse
from fpga.boards.ice40 import pll_config

from .conftest import REPO, elaborate



def fpga_cli(*args):
    return subprocess.run([sys.executable, "-m", "fpga", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, words", [
    (["build", "--board", "nexys"], ["unknown board 'nexys'", "icebreaker"]),
    (["run"], ["--port", "--sim"]),
    (["run", "--port", "/dev/null", "--sim"], ["exactly one"]),
    (["resources", "--model", "synthetic:12"], ["synthetic:IN-HIDDEN"]),
    (["resources", "--model", "/nonexistent.npz"], ["nonexistent"]),
    (["frobnicate"], ["invalid choice"]),
    (["build", "--engine", "queue"], ["invalid choice", "lockstep"]),
    (["resources", "--pes", "0"], ["--pes must be 1..64"]),
    (["run", "--sim", "--model", "synthetic:64-16-10"], ["takes 64 inputs", "--inputs"]),
    (["run", "--sim", "--model", "synthetic:12-8-3", "--labels", "y.npy"], ["needs --inputs"]),
    # --issue-width: the EIE engine's; 1, 2 or 4; 4 the pipelined front end's (not the
    # iCEBreaker's EIE engine) and only where four pointer ports fit the block RAMs
    (["build", "--issue-width", "2"], ["--issue-width", "EIE engine", "lockstep"]),
    (["build", "--board", "ulx3s", "--issue-width", "3"], ["--issue-width must be 1, 2 or 4"]),
    (["build", "--engine", "eie", "--pes", "2", "--issue-width", "4", "--model",
      "synthetic:64-16-10"], ["--issue-width 4", "pipelined"]),
    (["build", "--board", "ulx3s", "--issue-width", "1", "--model", "synthetic:64-16-10"],
     ["--issue-width 1", "pipelined"]),
    (["build", "--board", "ulx3s", "--issue-width", "4", "--model",
      "synthetic:784-1024-512-10"], ["--issue-width 4", "block RAMs", "--issue-width 2"]),
])
def test_bad_invocations(args, words):
    r = fpga_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr
    assert "Traceback" not in r.stderr


def test_resources_lenet():
    r = fpga_cli("resources", "--model", "synthetic", "--pes", "8", "--engine", "eie")
    assert r.returncode == 2, r.stderr  # does not fit: exit 2, the figures and one line
    assert "eie engine, 8 PEs: does NOT fit in EBR" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "EBR blocks" in lines[0] and "2 PEs could fit" in lines[0]
    # the lockstep engine (default): lanes in the 4 SPRAMs (the build's plan, also without
    # --spram, which is kept for old scripts), 16 + 8 + 6 EBR
    for extra in ([], ["--spram"]):
        r = fpga_cli("resources", "--model", "synthetic", "--pes", "8", *extra)
        assert r.returncode == 0, r.stderr
        assert "lockstep engine, 8 PEs: fits in EBR (30 of 30 blocks, 4 ROMs in SPRAM)" \
            in r.stdout


def test_resources_counts_what_yosys_maps():
    """synthetic:64-32-10 on the 8-PE lockstep board: yosys' memory_libmap put its two column
    pointer ROMs (7 x 49 bits) in logic and used 24 EBR (measured, docs/fpga.md); the
    resources used to predict 26. Small ROMs go to logic, small RAMs too, big ones to EBR."""
    from fpga.boards.ice40 import block_rams as yosys_ebr
    from images.memmap import MemorySpec

    r = fpga_cli("resources", "--model", "synthetic:64-32-10")
    assert r.returncode == 0, r.stderr
    assert "fits in EBR (24 of 30 blocks, 4 ROMs in SPRAM)" in r.stdout
    rom = lambda w, d, ports=1: MemorySpec("m", "rom", w, d, read_ports=ports)  # noqa: E731
    ram = lambda w, d: MemorySpec("m", "ram", w, d, read_ports=1, write_ports=1)  # noqa: E731
    assert [yosys_ebr(rom(7, 49)), yosys_ebr(rom(12, 593)), yosys_ebr(rom(16, 48)),
            yosys_ebr(ram(32, 4)), yosys_ebr(ram(16, 16)), yosys_ebr(ram(32, 91))] == \
        [0, 3, 0, 0, 1, 2]
    # two read ports: a copy each; address banks packed side by side (9 x 1000: 3, not 4)
    assert yosys_ebr(rom(12, 593, ports=2)) == 6 and yosys_ebr(rom(9, 1000)) == 3


def test_a_network_too_big_is_told_at_once_what_binds_and_what_would_fit():
    """784-1024-1024-10 (150k non-zeros): refused before any placement, in a fraction of a
    second, exit 2 and one line: the lane ROMs' words against the SPRAM's 16,384, and the
    accumulators that no density shrinks; fpga build the same before any tool runs."""
    for cmd in ("resources", "build"):
        r = fpga_cli(cmd, "--model", "synthetic:784-1024-1024-10")
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert "lane ROMs need at least" in lines[0] and "16,384" in lines[0]
        assert "at any density" in lines[0] and "acc 32" in lines[0]
        assert "no PE count or density fits" in lines[0]
        assert "--force" not in lines[0]
        assert "building" not in r.stdout


def test_a_network_whose_placed_lanes_are_too_deep_gets_the_density_that_fits(tmp_path):
    """784-256-10 at 55 %: the bound from the non-zeros passes (14,435 slots) but the placed
    lanes need 16,498 words: exit 2 naming them against 16,384 and the non-zeros that fit."""
    from compress.qnet import save_qnet

    q = random_qnet((784, 256, 10), density=[0.55, 0.3], seed=0)
    save_qnet(q, tmp_path / "q.npz")
    r = fpga_cli("resources", "--model", str(tmp_path / "q.npz"))
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "the lane ROMs need 16,498 words each, an SPRAM holds 16,384" in line, line
    assert "8 PEs fit about" in line and "prune further" in line
    assert "does NOT fit: lane0 needs 16,498 words" in r.stdout


def test_build_help_clock_range_comes_from_the_code():
    from fpga.flow.build import DEFAULT_CLOCK_FMAX_MHZ, DEFAULT_CLOCK_MHZ, pll_range_mhz

    r = fpga_cli("build", "--help")
    text = " ".join(r.stdout.split())
    lo, hi = pll_range_mhz()
    assert f"{lo:g}..{hi:g} MHz" in text
    assert f"default {DEFAULT_CLOCK_MHZ:g}" in text
    assert "{:g}-{:g} MHz".format(*DEFAULT_CLOCK_FMAX_MHZ) in text
    r = fpga_cli("build", "--clock-mhz", "500")
    assert r.returncode == 2 and "--clock-mhz must be" in r.stderr


def test_analysis_counts():
    assert [ebr_blocks(16, 256), ebr_blocks(8, 2607), ebr_blocks(32, 38), ebr_blocks(12, 594)] \
        == [1, 6, 2, 3]
    rom = build_rom(random_qnet((20, 8, 4), density=0.5), pes=2)
    a = analyse(rom)
    assert {"entries", "bias", "codebook"} <= set(a["groups"])  # one group per kind of memory
    assert all(g["count"] == 2 for g in a["groups"].values())  # one memory of each per PE
    assert a["total_ebr"] == sum(g["ebr"] for g in a["groups"].values())
    b = analyse(rom, spram=True)
    assert b["spram_used"] == 4 and b["total_ebr"] <= a["total_ebr"]  # tiny ROMs: logic anyway
    ls = build_lockstep(random_qnet((20, 8, 4), density=0.5), 4)
    c = analyse(ls, spram=True)
    assert c["engine"] == "lockstep"
    assert set(c["groups"]) == {"lane", "colptr_even", "colptr_odd", "acc", "act"}
    assert c["groups"]["lane"]["spram"] == 2 and c["groups"]["acc"]["count"] == 4


@pytest.mark.parametrize("mhz", [24, 30, 36, 42, 48])
def test_pll(mhz):
    p = pll_config(12e6, mhz * 1e6)
    vco = 12e6 / (p.divr + 1) * (p.divf + 1)
    assert 533e6 <= vco <= 1066e6 and abs(p.fout - mhz * 1e6) < 0.3e6
    assert p.fout == vco / 2 ** p.divq


def test_parse_report():
    npr = {"utilization": {"ICESTORM_LC": {"used": 3000, "available": 5280},
                           "ICESTORM_RAM": {"used": 17, "available": 30},
                           "ICESTORM_DSP": {"used": 1, "available": 8}},
           "fmax": {"clk": {"achieved": 26.55, "constraint": 36.0}}}
    f = parse_report(json.loads(json.dumps(npr)), clock_hz=36e6)
    assert (f["lc_used"], f["lc_total"], f["ebr_used"], f["dsp_used"], f["spram_used"]) == \
        (3000, 5280, 17, 1, 0)
    assert (f["clock_mhz"], f["fmax_mhz"]) == (36.0, 26.55)


def test_serial_transport_pty():
    """The pyserial path of the host runner, against a pty answering PING like a board."""
    import os
    import pty
    import struct
    import threading

    from fpga import protocol as P
    from fpga.host.client import Board, SerialTransport

    master, slave = pty.openpty()
    tty.setraw(slave)
    payload = struct.pack("<BBBHHIB", P.VERSION, 2, 3, 784, 10, 25_500_000, 1)

    def board_side():
        dec = P.FrameDecoder(sync=P.SYNC_REQ)
        while True:
            for f in dec.feed(os.read(master, 64)):
                assert f.cmd == P.CMD_PING
                os.write(master, b"\x00\x13" + P.encode_frame(P.CMD_PING, payload,
                                                              sync=P.SYNC_REP))
                return

    th = threading.Thread(target=board_side, daemon=True)
    th.start()
    t = SerialTransport(os.ttyname(slave), 115200)
    try:
        info = Board(t, timeout=5).ping()
    finally:
        t.close()
        os.close(master)
        os.close(slave)
    assert (info.pes, info.num_layers, info.in_features, info.clock_hz, info.loaded) == \
        (2, 3, 784, 25_500_000, True)


def test_build_retry_logic(tmp_path, monkeypatch):
    """A missed clock is rebuilt once under the fmax found, on a fresh platform; report.json."""
    import fpga.flow.build as B

    calls = []

    def fake_flow(platform, top, out, *, seed, name="top", budget=None, synth=None):
        calls.append((id(platform), top.clock_hz))
        elaborate(top, platform)  # the design the flow would build (no tools run)
        fmax = 25.91 if len(calls) == 1 else 26.3
        return ({"utilization": {"ICESTORM_LC": {"used": 4810, "available": 5280}},
                 "fmax": {"clk": {"achieved": fmax, "constraint": top.clock_hz / 1e6}}}, 1.0)

    monkeypatch.setattr(B, "_flow", fake_flow)
    rom = build_rom(random_qnet((20, 8, 4), density=0.5), pes=2)
    r = B.build(rom, clock_mhz=36, build_root=tmp_path, log=lambda *a: None)
    assert len(calls) == 2 and calls[0][0] != calls[1][0]
    assert calls[0][1] == 36e6 and calls[1][1] <= 0.97 * 25.91e6
    assert r["timing_met"] and r["clock_mhz"] == calls[1][1] / 1e6 and r["fmax_mhz"] == 26.3
    on_disk = json.loads((tmp_path / "icebreaker" / "report.json").read_text())
    assert [a["clock_mhz"] for a in on_disk["attempts"]] == [36.0, calls[1][1] / 1e6]
    for key in ("board", "device", "clock_mhz", "fmax_mhz", "lc_used", "lc_total", "dsp_used",
                "ebr_used", "spram_used", "pes", "model", "model_sha256"):
        assert key in on_disk


@pytest.mark.parametrize("second, third", [(33.41, None), (31.57, 32.0)])
def test_build_retry_next_seed_first(tmp_path, monkeypatch, second, third):
    """A miss within 5 % of the clock is placed again at the next seed at the same clock; if
    that misses too, the clock is lowered under the first fmax, at the first seed."""
    import fpga.flow.build as B

    calls = []
    fmaxes = [32.83, second, third]

    def fake_flow(platform, top, out, *, seed, name="top", budget=None, synth=None):
        calls.append((seed, top.clock_hz))
        elaborate(top, platform)
        return ({"utilization": {"ICESTORM_LC": {"used": 5028, "available": 5280}},
                 "fmax": {"clk": {"achieved": fmaxes[len(calls) - 1],
                                  "constraint": top.clock_hz / 1e6}}}, 1.0)

    monkeypatch.setattr(B, "_flow", fake_flow)
    rom = build_rom(random_qnet((20, 8, 4), density=0.5), pes=2)
    r = B.build(rom, clock_mhz=33, seed=1, build_root=tmp_path, log=lambda *a: None)
    assert calls[:2] == [(1, 33e6), (2, 33e6)]
    if third is None:
        assert len(calls) == 2 and r["timing_met"] and r["fmax_mhz"] == 33.41
    else:
        assert len(calls) == 3 and calls[2][0] == 1 and calls[2][1] <= 0.97 * 32.83e6
        assert r["timing_met"] and r["clock_mhz"] == calls[2][1] / 1e6
    assert [a["seed"] for a in r["attempts"]] == [c[0] for c in calls]


def test_the_report_names_its_network(tmp_path, monkeypatch):
    """report.json's model and model_sha256: the default's repository path (the board's
    network when shipped), a file as named, a synthetic spec by the qnet file it would be."""
    import hashlib

    import fpga.flow.build as B
    from compress.qnet import save_qnet
    from compress.shipped import BOARD_QNET, SHIPPED_QNET, load_model, model_record

    def sha(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    q, name = load_model(None, board=True)
    rec = model_record(None, q, board=True)
    default = BOARD_QNET if BOARD_QNET.exists() else SHIPPED_QNET
    assert rec == {"model": str(default.relative_to(REPO)), "model_sha256": sha(default)}
    assert "board" in name or not BOARD_QNET.exists()
    plain = model_record(None, load_model(None)[0])
    assert plain["model"] == "compress/models/lenet-300-100.qnet.npz"
    f = tmp_path / "mine.qnet.npz"
    small = random_qnet((20, 8, 4), density=0.5)
    save_qnet(small, f)
    assert model_record(str(f), small) == {"model": str(f), "model_sha256": sha(f)}
    syn = model_record("synthetic:20-8-4", load_model("synthetic:20-8-4")[0])
    save_qnet(load_model("synthetic:20-8-4")[0], tmp_path / "s.qnet.npz")
    assert syn == {"model": "synthetic:20-8-4", "model_sha256": sha(tmp_path / "s.qnet.npz")}

    def fake_flow(platform, top, out, *, seed, name="top", budget=None, synth=None):
        elaborate(top, platform)  # the design the flow would build (no tools run)
        return ({"utilization": {"ICESTORM_LC": {"used": 4000, "available": 5280}},
                 "fmax": {"clk": {"achieved": 40.0, "constraint": top.clock_hz / 1e6}}}, 1.0)

    monkeypatch.setattr(B, "_flow", fake_flow)
    B.build(build_rom(small, pes=2), build_root=tmp_path, model=model_record(str(f), small),
            log=lambda *a: None)
    on_disk = json.loads((tmp_path / "icebreaker" / "report.json").read_text())
    assert on_disk["model"] == str(f) and on_disk["model_sha256"] == sha(f)
    # the EIE engine's report names the columns a cycle its front end sends (resolved: 1 at 2
    # PEs, `images.eie.default_issue_width`)
    assert on_disk["engine"] == "eie" and on_disk["issue_width"] == 1


def test_flow_passes_nextpnr_options(tmp_path, monkeypatch):
    """The build script runs nextpnr with the seed and the router's timing-driven rip-up."""
    import fpga.flow.build as B
    from fpga.gateware.top import BoardTop
    from images import build_image

    monkeypatch.setattr(B, "_run_tools", lambda *a, **k: (1, "no tools here"))
    img = build_image(random_qnet((20, 8, 4), density=0.5), "lockstep", 2)
    top = BoardTop(img, clock_hz=30e6, spram=True)
    with pytest.raises(B.BuildError):
        B._flow(B.board_platform("icebreaker"), top, tmp_path, seed=7)
    script = (tmp_path / "build_top.sh").read_text()
    assert "--seed 7 --tmg-ripup" in script and "--timing-allow-fail" in script


def test_tools_past_their_budget_are_stopped(tmp_path):
    """`_run_tools` past its budget kills the whole process group (the shell and what it
    started) and raises ToolTimeout; within it, the return code and stderr."""
    import fpga.flow.build as B

    pidfile = tmp_path / "child"
    t0 = time.monotonic()
    with pytest.raises(B.ToolTimeout) as e:
        B._run_tools(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], cwd=tmp_path,
                     env=dict(os.environ), budget=1.0)
    assert time.monotonic() - t0 < 30, "the budget did not stop the tools (hang guard)"
    assert e.value.seconds >= 1.0
    child = int(pidfile.read_text())
    for _ in range(50):  # the killed child is reaped by init shortly after
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the tool's child process outlived the budget")
    assert B._run_tools(["sh", "-c", "echo why >&2; exit 3"], cwd=tmp_path, env=dict(os.environ),
                        budget=10) == (3, "why\n")


@pytest.mark.parametrize("outcomes, met, seeds", [
    (["timeout", 33.4], True, [1, 2]),  # a stuck router: the next seed
    (["timeout", "timeout", 33.4], True, [1, 2, 3]),
    (["timeout", "timeout", "timeout"], None, [1, 2, 3]),  # gives up: BuildError
    ([32.83, "timeout", 33.1], True, [1, 2, 3]),  # a near miss, then a stuck seed
])
def test_build_moves_on_from_a_stuck_seed(tmp_path, monkeypatch, outcomes, met, seeds):
    """An attempt stopped by the time budget is placed again at the next seed (at most
    MAX_TIMEOUTS times); report.json records it with timed_out."""
    import fpga.flow.build as B

    calls = []

    def fake_flow(platform, top, out, *, seed, name="top", budget=None, synth=None):
        calls.append(seed)
        assert budget == 5.0
        got = outcomes[len(calls) - 1]
        elaborate(top, platform)  # the design the flow would build (no tools run)
        if got == "timeout":
            raise B.ToolTimeout(5.0)
        return ({"utilization": {"ICESTORM_LC": {"used": 5028, "available": 5280}},
                 "fmax": {"clk": {"achieved": got, "constraint": top.clock_hz / 1e6}}}, 1.0)

    monkeypatch.setattr(B, "_flow", fake_flow)
    rom = build_rom(random_qnet((20, 8, 4), density=0.5), pes=2)
    if met is None:
        with pytest.raises(B.BuildError, match="time budget of 5 s"):
            B.build(rom, clock_mhz=33, build_root=tmp_path, log=lambda *a: None, time_budget=5.0)
        assert calls == seeds
        return
    r = B.build(rom, clock_mhz=33, build_root=tmp_path, log=lambda *a: None, time_budget=5.0)
    assert calls == seeds and r["timing_met"] is met
    assert [a.get("timed_out", False) for a in r["attempts"]] == [o == "timeout" for o in outcomes]
    with pytest.raises(B.BuildError, match="time budget"):  # no retry: the first stop is final
        calls.clear()
        outcomes[:] = ["timeout"]
        B.build(rom, clock_mhz=33, build_root=tmp_path, log=lambda *a: None, time_budget=5.0,
                retry=False)


@pytest.mark.parametrize("outcomes, want", [
    ([32.58, 33.44], [(1, True), (1, False)]),  # the easier design first, same seed
    (["timeout", 33.2], [(1, True), (1, False)]),  # stuck: the easier design too
    ([32.58, 32.9, 33.1], [(1, True), (1, False), (2, False)]),  # then the next seed
    ([40.0], [(1, True)]),  # met: as asked
])
def test_build_drops_the_lockstep_overlap_before_seed_or_clock(tmp_path, monkeypatch, outcomes,
                                                                want):
    """A lockstep build that misses its clock (or is stopped) is rebuilt without layer 1 under
    layer 0's drain before another seed or a lower clock; report.json says which design it is
    (params.overlap) and what each attempt was."""
    import fpga.flow.build as B
    from fpga.boards import engine_params

    calls = []

    def fake_flow(platform, top, out, *, seed, name="top", budget=None, synth=None):
        calls.append((seed, top.core.engine.overlap))
        elaborate(top, platform)
        got = outcomes[len(calls) - 1]
        if got == "timeout":
            raise B.ToolTimeout(5.0)
        return ({"utilization": {"ICESTORM_LC": {"used": 5124, "available": 5280}},
                 "fmax": {"clk": {"achieved": got, "constraint": top.clock_hz / 1e6}}}, 1.0)

    monkeypatch.setattr(B, "_flow", fake_flow)
    img = build_lockstep(random_qnet((24, 16, 8, 4), density=0.5, seed=1), 2)
    params = engine_params(img)
    assert params.overlap and params.drain_share == 2
    r = B.build(img, clock_mhz=33, build_root=tmp_path, log=lambda *a: None, params=params,
                time_budget=5.0)
    assert calls == want and r["timing_met"]
    assert r["params"]["overlap"] is want[-1][1]
    assert [(a["seed"], a["overlap"]) for a in r["attempts"]] == want


def test_build_flags_refused_in_one_line(tmp_path):
    """--time-budget below 0 and --no-overlap on an engine without it: exit 2 before any work."""
    for extra, what in ((["build", "--time-budget", "-1"], "--time-budget"),
                        (["build", "--engine", "eie", "--no-overlap"], "--no-overlap"),
                        (["run", "--sim", "--engine", "eie", "--no-overlap"], "--no-overlap"),
                        (["run", "--port", "/dev/null", "--no-overlap"], "only with --sim")):
        res = subprocess.run([sys.executable, "-m", "fpga", *extra,
                              *(["--build-dir", str(tmp_path)] if extra[0] == "build" else [])],
                             capture_output=True, text=True, cwd=REPO)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and what in res.stderr, \
            res.stderr
    assert not any(tmp_path.iterdir())


def test_retry_prefers_exact_baud_divisor():
    """The retry clock: 3 % under the fmax, a whole number of bit times when the PLL makes one."""
    from fpga.flow.build import exact_baud_clock, retry_clock
    from fpga.gateware.uart import baud_divisor

    for fmax, want in ((29.6, 27.0), (30.5, 27.0), (31.2, 30.0), (34.5, 33.0), (37.5, 36.0),
                       (25.91, 24.0)):
        p = retry_clock(fmax * 1e6, 3_000_000)
        assert p.fout == want * 1e6, (fmax, p.fout)
        assert p.fout / baud_divisor(p.fout, 3_000_000) == 3_000_000
    assert retry_clock(20e6, 3_000_000) is None  # under 8 clocks a bit at any clock left
    # no exact divisor the PLL can make at 115,200 baud: the fastest clock within the rule
    p = retry_clock(29.6e6, 115_200)
    assert exact_baud_clock(0.97 * 29.6e6, 115_200) is None
    assert 16e6 <= p.fout <= 29.6e6 and baud_divisor(p.fout, 115_200) >= 8


@pytest.mark.parametrize("board, engine", [("icebreaker", "lockstep"), ("icebreaker", "eie"),
                                           ("icesugar", "lockstep")])
def test_board_tops_elaborate(board, engine, tmp_path):
    """Every supported board's top elaborates into a build plan (no tools run): pins exist."""
    from fpga.flow.build import board_platform
    from images import build_image
    from fpga.gateware.top import BoardTop

    img = build_image(random_qnet((20, 8, 4), density=0.5), engine, 2)
    top = BoardTop(img, clock_hz=24e6, spram=True, board=board)
    plan = board_platform(board).prepare(top, name="top", synth_opts="-dsp -spram")
    plan.extract(tmp_path)
    il = (tmp_path / "top.il").read_text()
    assert "SB_PLL40_PAD" in il and "SB_SPRAM256KA" in il
    # the lockstep engine's RAMs carry no_rw_check (no read-before-write logic, memories.py)
    assert ("no_rw_check" in il) == get(engine).no_rw_check
    pcf = (tmp_path / "top.pcf").read_text()
    for line in ("set_io uart_0__rx__io ", "set_io uart_0__tx__io ", "set_io clk12_0__io 35",
                 "set_frequency pll_clk 24.0"):
        assert line in pcf, line
    if board == "icebreaker":  # FTDI channel B on pins 6/9; digit LEDs on the break-off PMOD
        assert "set_io uart_0__rx__io 6\n" in pcf and "set_io led_g_4__io 21" in pcf


@pytest.fixture
def user_net(tmp_path):
    """A 12-20-8-3 network, 3 inputs and labels (the last one wrong), as a user brings them."""
    from compress.golden import golden
    from compress.qnet import save_qnet

    qnet = random_qnet((12, 20, 8, 3), seed=2, density=0.5, shift=[6, 5, 4])
    save_qnet(qnet, tmp_path / "q.npz")
    x = np.random.default_rng(3).integers(-200, 300, (3, 12)).astype(np.int16)
    np.save(tmp_path / "x.npy", x)
    labels = golden(qnet, x).argmax(axis=1)
    labels[2] = (labels[2] + 1) % 3
    np.save(tmp_path / "y.npy", labels)
    return qnet, x, tmp_path


@pytest.mark.parametrize("extra, words", [
    (["--labels", "{d}/bad.npy"], ["--labels", "expected 3 labels"]),
    (["--labels", "{d}/missing.npy"], ["--labels", "no such file"]),
    (["--out", "{d}/x.npy"], ["--out", "same file"]),
    (["--out", "{d}/q.npz"], ["--out", "same file"]),
    (["--count", "0"], ["--count must be >= 1"]),
    (["--clock-mhz", "0"], ["--clock-mhz"]),
])
def test_run_refusals(user_net, extra, words, capsys):
    """fpga run --inputs: bad labels, an output equal to an input: exit 2, one line, before the
    board (real or simulated) is touched; the inputs are left as they were."""
    from fpga.cli import main

    _qnet, _x, d = user_net
    np.save(d / "bad.npy", np.zeros(4, np.int64))
    before = (d / "x.npy").read_bytes()
    status = main(["run", "--sim", "--model", str(d / "q.npz"), "--inputs", str(d / "x.npy"),
                   *[e.format(d=d) for e in extra]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert (d / "x.npy").read_bytes() == before


def test_summary_throughput_at_the_board_clock():
    """Throughput is cycles at the clock the bitstream runs at, and says which clock."""
    from fpga import protocol as P
    from fpga.host.runner import RunStats, summary

    st = RunStats(n=2, correct=1, agree=2, exact=2, cycles=[900, 1100],
                  layer_cycles=[[200, 70], [260, 70]])
    info = P.Info(version=1, pes=8, num_layers=2, in_features=12, out_features=3,
                  clock_hz=100_000_000, loaded=True, engine="lockstep")
    text = summary(st, info, has_labels=True, clock_hz=27e6, clock_note="the PLL clock")
    assert "inputs: 2" in text and "digit" not in text and "accuracy: 1/2" in text
    assert f"throughput at 27 MHz (the PLL clock): {27e6 / 300:.0f} inferences/s" in text
    assert "at 100 MHz" not in text
    text = summary(st, info, has_labels=False)  # a real board: the clock it reports
    assert f"throughput at 100 MHz (the board's clock, from PING): {1e8 / 300:.0f}" in text
    assert "accuracy" not in text


def test_useful_macs_and_utilisation_line():
    """useful_macs counts (non-zero weight, non-zero activation) pairs as tb.analysis does
    (its per-PE count summed), and the summary turns them into MAC utilisation."""
    from compress.synthetic import random_qnet
    from fpga import protocol as P
    from fpga.host.runner import RunStats, summary, useful_macs
    from images import build_image
    from tb.analysis import work

    qnet = random_qnet([40, 24, 12, 5], seed=3, density=0.3)
    x = np.random.default_rng(4).integers(-200, 300, (6, 40)).astype(np.int16)
    x[x < 0] = 0  # zero activations, as a digit's background
    want = sum(int(u.sum()) for u in work(qnet, build_image(qnet, "eie", 4), x)["useful"])
    assert useful_macs(qnet, x) == want > 0
    st = RunStats(n=2, exact=2, agree=2, cycles=[900, 1100], layer_cycles=[[200, 70], [260, 70]],
                  useful_macs=1200, pes=4)
    info = P.Info(version=1, pes=4, num_layers=2, in_features=12, out_features=3,
                  clock_hz=100_000_000, loaded=True, engine="eie")
    text = summary(st, info, has_labels=False)
    assert f"MAC utilisation: {100 * 1200 / (4 * 600):.1f}% (600 useful MACs per input" in text
    st.useful_macs = 0  # not counted (a conv network): no figure rather than a wrong one
    assert "MAC utilisation" not in summary(st, info, has_labels=False)


def test_run_sim_user_network(user_net, capsys):
    """fpga run --sim --inputs --labels --out on a 12-20-8-3 network: bit-exact outputs written,
    accuracy from the labels, throughput at the board's default clock, generic wording."""
    from compress.golden import golden
    from fpga.flow.build import DEFAULT_CLOCK_MHZ
    from fpga.cli import main

    qnet, x, d = user_net
    status = main(["run", "--sim", "--model", str(d / "q.npz"), "--inputs", str(d / "x.npy"),
                   "--labels", str(d / "y.npy"), "--out", str(d / "out.npy"), "--pes", "4"])
    out = capsys.readouterr().out
    assert status == 0, out
    np.testing.assert_array_equal(np.load(d / "out.npy"), golden(qnet, x))
    assert "inputs: 3" in out and "digit" not in out
    assert "accuracy: 2/3" in out and "3/3 output vectors bit-exact" in out
    assert f"throughput at {DEFAULT_CLOCK_MHZ:g} MHz (the board's PLL clock" in out


def test_make_bitstream_takes_a_build_dir():
    """make bitstream BUILD_DIR=DIR builds into DIR/<board>/ (a second model no longer
    overwrites build/icebreaker/); without it, build/<board>/ as before."""
    def dry(*extra):
        r = subprocess.run(["make", "-n", "bitstream", *extra], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [ln for ln in r.stdout.splitlines() if "-m fpga build" in ln][-1]

    assert shlex.split(dry("BUILD_DIR=build/mynet"))[-2:] == ["--build-dir", "build/mynet"]
    assert "--build-dir" not in dry()


def test_the_simulated_board_refuses_a_network_the_board_cannot_hold(tmp_path):
    """fpga run --sim is the board: a network too big for the UP5K is refused at once (exit 2,
    one line with what binds), not simulated for minutes."""
    np.save(tmp_path / "x.npy", np.zeros((2, 784), np.int16))
    r = fpga_cli("run", "--sim", "--model", "synthetic:784-1024-1024-10", "--inputs",
                 str(tmp_path / "x.npy"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit" in lines[0] and "16,384" in lines[0]


ABC9_BUG = ("2.46.18.7. Executing ABC_OPS_REINTEGRATE pass (reintegrate ABC mapped design into "
            "module).\nERROR: Assert `GetSize(conn.first) == GetSize(conn.second)' failed in "
            "kernel/rtlil.cc:3091.\n")


def test_ecp5_synthesis_falls_back_to_classic_abc_where_abc9_fails(tmp_path, monkeypatch):
    """yosys 0.70's abc9 fails an assertion on some ECP5 netlists (the two-wide 16-PE engine
    with queues of 8 and the 4-bit relative index): the family knows that failure alone, and
    the build synthesises again once with classic abc between synth_ecp5's own steps, on a
    fresh platform, then goes on as usual; another yosys failure is the build's error."""
    import fpga.boards.ecp5 as ecp5
    import fpga.flow.build as B
    from images import build_image

    assert ecp5.synth_fallback("top", "ERROR: Failed to import cell foo\n") is None
    again = ecp5.synth_fallback("top", "lots of log\n" * 500 + ABC9_BUG)
    assert again["synth_opts"] == "-run :map_luts"
    assert "abc -lut 4" in again["script_after_synth"]
    assert "synth_ecp5 -run map_cells: -top top" in again["script_after_synth"]

    runs = []

    def fake_tools(cmd, *, cwd, env, budget):
        ys = (cwd / "top.ys").read_text()
        runs.append(ys)
        if len(runs) == 1:
            (cwd / "top.rpt").write_text("synthesis ...\n" + ABC9_BUG)
            return 1, "ERROR: Assert failed"
        assert "synth_ecp5 -run :map_luts -top top" in ys and "abc -lut 4" in ys
        (cwd / "top.report.json").write_text(json.dumps({
            "utilization": {"TRELLIS_COMB": {"used": 900, "available": 83640},
                            "MULT18X18D": {"used": 2, "available": 156},
                            "DP16KD": {"used": 4, "available": 208}},
            "fmax": {"clk": {"achieved": 61.0, "constraint": 50.0}}}))
        (cwd / "top.bit").write_bytes(b"bits")
        return 0, ""

    monkeypatch.setattr(B, "_run_tools", fake_tools)
    logs = []
    img = build_image(random_qnet((20, 8, 4), density=0.5), "eie", 2)
    r = B.build(img, board="ulx3s", build_root=tmp_path, log=logs.append, retry=False)
    assert len(runs) == 2 and "abc -lut 4" not in runs[0]
    assert any("classic abc" in line for line in logs)
    assert r["timing_met"] and r["fmax_mhz"] == 61.0 and len(r["attempts"]) == 1

    # a yosys failure the family does not know is the build's error, at once
    runs.clear()

    def failing(cmd, *, cwd, env, budget):
        runs.append(1)
        (cwd / "top.rpt").write_text("ERROR: Module `foo' referenced but not defined\n")
        return 1, "ERROR"

    monkeypatch.setattr(B, "_run_tools", failing)
    with pytest.raises(B.BuildError):
        B.build(img, board="ulx3s", build_root=tmp_path, log=logs.append, retry=False)
    assert len(runs) == 1
