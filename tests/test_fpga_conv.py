"""Conv networks on the board's EIE engine (one activation bank of each PE in an SPRAM,
docs/conv.md "The board"; the lockstep engine's one-map layout is
tests/test_lockstep_board_conv.py).

Three depths: the SPRAM plan and the refusals (construction), the split activation RAM in the
Amaranth simulator against a reference, and the board core in cocotb + Icarus driven through
its UART pins with a small random CNN, weights loaded over the UART, bit-exact against the
golden model (RTL here; the netlist under LONG=1).
"""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from compress.golden import golden
from compress.qnet import save_qnet
from compress.synthetic import random_cnn, random_inputs, random_qnet
from fpga.boards import ice40
from fpga.flow.resources import analyse, board_image, default_pes, fit_bound, fits
from hw.memory import MemorySpec
from images import build_image

from .conftest import long_tests

# conv (pool 2) -> conv -> fc -> fc: LeNet-5's kinds on an 8x8 map, 1 PE (what fits the UP5K
# for LeNet-5) and 2 PEs
CNN = random_cnn((1, 8, 8), [(3, 3, 1, 1, 2), (4, 3, 1, 1, 1)], [12, 10], seed=3,
                 density=0.5)


# ---- construction: the plan and the refusals ------------------------------------------------


@pytest.mark.parametrize("kinds, bank", [
    (["fc", "fc", "fc"], None),  # no conv: the memories as always
    (["conv", "conv", "fc", "fc"], 0),  # LeNet-5: fc2 reads bank 1 while fc1's drain writes it
    (["conv", "fc", "fc"], 1),
    (["conv", "conv", "conv"], 0),
    (["conv", "fc"], 0),
    (["conv", "fc", "fc", "fc"], None),  # fc pairs read both banks while they are written
    (["fc", "conv", "fc", "fc"], 0),
])
def test_act_bank(kinds, bank):
    assert ice40.act_bank(kinds) == bank


def _acts(n, depth=5760):
    return [MemorySpec(f"pe{k}.act", "ram", 16, depth, (), read_ports=1, write_ports=1)
            for k in range(n)]


def test_act_plan():
    kinds = ["conv", "fc"]
    assert ice40.act_plan(_acts(1), kinds) == {"pe0.act": 0}
    assert ice40.act_plan(_acts(3), kinds) == {f"pe{k}.act": 0 for k in range(3)}
    assert ice40.act_plan(_acts(4), kinds) == {}  # no SPRAM would stay for the ROMs
    assert ice40.act_plan(_acts(1, depth=2 * 16384 + 2), kinds) == {}  # a bank deeper than one
    assert ice40.act_plan(_acts(1), ["fc", "fc"]) == {}
    rom = MemorySpec("pe0.entries", "rom", 10, 9000, tuple(range(9000)))
    plan = ice40.load_plan([rom, *_acts(1)], kinds=kinds)
    assert list(plan) == [rom] and plan.acts == {"pe0.act": 0}
    plan = ice40.load_plan([rom, *_acts(1)])  # no kinds: ROMs only, as before
    assert list(plan) == [rom] and plan.acts == {}
    with pytest.raises(ValueError, match="at most 4"):
        ice40.Memories([rom] * 4, acts={"pe0.act": 0})


def test_an_mlp_plan_is_unchanged():
    """An fc-only network's SPRAM plan is the one it always had (no activation in SPRAM)."""
    q = random_qnet((40, 24, 10), density=[0.3, 0.5], seed=1)
    img = build_image(q, "eie", 2)
    plan = ice40.load_plan_for(img)
    assert plan.acts == {} and len(plan) == 4
    assert board_image(q, "eie", 2) is not None
    assert board_image(q, "eie", 2).rel_bits == img.rel_bits


def test_lenet5_fits_one_pe():
    """LeNet-5 on the UP5K's EIE engine: 1 PE fits (entries at rel_bits 6 in one SPRAM, one
    activation bank in another), 2 PEs do not (EBR binds) at any density."""
    from compress.shipped import load_model

    q, _ = load_model("compress/models/lenet-5.qnet.npz")
    assert not fits(fit_bound(q, "eie", 2))
    img = board_image(q, "eie", 1)
    assert img.rel_bits == 6 and max(len(e) for e in img.entries) <= ice40.SPRAM_DEPTH
    a = analyse(img, spram=True)
    # bias 6, codebook 1 (in EBR: the logic cells bind), accumulators 8, activation bank 1: 12
    assert fits(a) and a["total_ebr"] == 27 and a["spram_used"] == 4 and a["spram_acts"] == 1
    assert ice40.load_plan_for(img).blocks == {"pe0.codebook"}


@pytest.mark.skipif(not long_tests(), reason="LONG=1: places LeNet-5 again (about a minute)")
def test_lenet5_default_pes():
    from compress.shipped import load_model

    q, _ = load_model("compress/models/lenet-5.qnet.npz")
    assert default_pes(q, "eie") == 1


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cnn")
    save_qnet(CNN, d / "cnn.npz", index_bits=4)
    np.save(d / "xi.npy", random_inputs(2, CNN.in_features, seed=4, density=0.5))
    return d


def test_resources_lockstep_conv(cnn_file, capsys):
    """The board's default engine takes a CNN in its one-map layout: the map in an SPRAM."""
    from fpga.cli import main

    assert main(["resources", "--model", str(cnn_file / "cnn.npz")]) == 0
    out = capsys.readouterr().out
    assert "lockstep engine, 8 PEs: fits in EBR" in out and "map " in out


def test_resources_eie_conv(cnn_file, capsys):
    from fpga.cli import main

    q = str(cnn_file / "cnn.npz")
    assert main(["resources", "--engine", "eie", "--pes", "1", "--model", q]) == 0
    out = capsys.readouterr().out
    assert "fits in EBR" in out and "3 ROMs and 1 activation bank in SPRAM" in out
    assert main(["resources", "--engine", "eie", "--model", q]) == 0  # 8 PEs fit: ROMs only
    assert "8 PEs: fits in EBR" in capsys.readouterr().out


def test_resources_lenet5_two_pes_refused(capsys):
    from fpga.cli import main

    assert main(["resources", "--engine", "eie", "--pes", "2", "--model",
                 "compress/models/lenet-5.qnet.npz"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "EBR" in err and "1 PEs could fit" in err


# ---- the split activation RAM in the Amaranth simulator ---------------------------------------


@pytest.mark.parametrize("bank", [0, 1])
def test_split_act_ram(bank):
    """Random reads and writes against a reference: a read returns the word before the write
    of the same cycle, holds with en low, and reads the SPRAM bank in a cycle its write takes the
    port only as a poison value (a read the engine must never use)."""
    half = 40
    spec = MemorySpec("pe0.act", "ram", 16, 2 * half, (), read_ports=1, write_ports=1)
    mem = ice40.Memories([], acts={spec.name: bank})
    m = Module()
    ports = mem(m, spec)
    r, w = ports.read[0], ports.write[0]
    dut_sig = Signal()  # a sync signal so the module has a clock domain
    m.d.sync += dut_sig.eq(~dut_sig)
    rng = np.random.default_rng(bank)
    n = 600
    ops = [(int(rng.integers(0, 2)), int(rng.integers(0, 2 * half)),
            int(rng.integers(0, 2)), int(rng.integers(0, 2 * half)), int(rng.integers(0, 1 << 16)))
           for _ in range(n)]
    checked = []

    async def bench(ctx):
        ref = [None] * (2 * half)
        want = None
        for ren, raddr, wen, waddr, wdata in ops:
            ctx.set(r.en, ren)
            ctx.set(r.addr, raddr)
            ctx.set(w.en, wen)
            ctx.set(w.addr, waddr)
            ctx.set(w.data, wdata)
            in_s = (raddr < half) == (bank == 0)
            w_s = wen and ((waddr < half) == (bank == 0))
            if ren:
                want = 0x5A5A if (in_s and w_s) else ref[raddr]
            await ctx.tick()
            if wen:
                ref[waddr] = wdata
            if want is not None:
                assert ctx.get(r.data) == want
                checked.append(want)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) > n // 4 and 0x5A5A in checked


# ---- the board core in cocotb + Icarus, weights over the UART ---------------------------------


def _board_cnn(pes, gate_level=False, count=2):
    from fpga import protocol as P
    from fpga.flow.bench import simulated_board
    from fpga.host.client import Board

    img = board_image(CNN, "eie", pes)
    assert ice40.load_plan_for(img).acts == {f"pe{k}.act": 0 for k in range(pes)}
    x = random_inputs(count, CNN.in_features, seed=6, density=0.5)
    x[0, :3] = [32767, -32768, -1]
    want = golden(CNN, x)
    with simulated_board(img, spram=True, gate_level=gate_level) as t:
        board = Board(t, timeout=600)
        info = board.ping()
        assert not info.loaded and (info.pes, info.num_layers) == (pes, 4)
        assert board.load(img) > 0 and board.ping().loaded
        for i in range(len(x)):
            res = board.infer(x[i])
            np.testing.assert_array_equal(res.y, want[i])
            assert res.cycles > sum(res.layer_cycles) > 0
        c = board.counters()
        assert (c.inferences, c.errors) == (len(x), 0)
        assert P.VERSION == info.version


@pytest.mark.parametrize("pes", [1, 2])
def test_board_cnn_rtl(pes):
    _board_cnn(pes)


@pytest.mark.skipif(not long_tests(), reason="LONG=1: a CNN through the board's netlist")
def test_board_cnn_gate_level():
    _board_cnn(1, gate_level=True, count=1)
