"""The engine registry (images.engines): every engine one record, a new engine one package and one
registration.

The stand-in engine of tests/standin (its image, parameters, memory map and cycle model, and a
one-MAC Amaranth component) is registered here and nowhere else; then it is built, simulated
bit-exact in the Amaranth simulator and through `python -m tb run` (cocotb), listed by the
command lines, analysed by the board's resource count, made into a board core, and named in the
board protocol, with no other file edited."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress.golden import golden
from compress.qnet import save_qnet
from compress.synthetic import random_inputs, random_qnet
from hw import make_engine
from images import build_image, engine_of, get, memory_specs, names, registered
from images.engines import MAX_PES, Defaults, Engine, by_protocol_id, check_pes, register
from tb.pysim import run_engine

from . import standin
from .conftest import elaborate

QNET = random_qnet((9, 7, 4), seed=4, density=0.5, shift=[6, 3])


@pytest.fixture
def stand_in():
    rec = standin.register_standin()
    try:
        yield rec
    finally:
        standin.unregister_standin()


def test_the_two_engines_are_records():
    assert names()[:2] == ("eie", "lockstep")
    for rec in registered():
        img = build_image(QNET, rec.name, 2)
        assert engine_of(img) is rec and isinstance(img, rec.image_type)
        assert by_protocol_id(rec.protocol_id) is rec
        assert memory_specs(img) == rec.memory_map(img, rec.params())
        assert set(rec.defaults_for().params.names()) == set(rec.params.names())
        cyc = rec.cycle_model(img, random_inputs(2, 9, seed=1, density=0.5), rec.params())
        assert cyc.shape == (2, QNET.num_layers) and (cyc > 0).all()
    assert get("lockstep").defaults_for("icebreaker", "ice40").pes == 8
    assert get("eie").defaults_for("icebreaker", "ice40").pes is None  # as many as fit


def test_registration_refuses_a_clash():
    rec = get("eie")
    with pytest.raises(ValueError, match="clashes"):
        register(Engine(**{**rec.__dict__, "name": "other"}))  # same protocol id, image type
    with pytest.raises(Exception, match="unknown engine 'nope'"):
        get("nope")


def test_the_one_pe_limit():
    assert check_pes(MAX_PES) == MAX_PES
    for bad in (0, MAX_PES + 1, True, "8"):
        with pytest.raises(Exception, match=f"--pes must be 1..{MAX_PES}"):
            check_pes(bad)


def test_a_new_engine_is_a_package_and_a_registration(stand_in, tmp_path):
    assert "standin" in names() and get("standin") is stand_in
    img = build_image(QNET, "standin", 1)
    assert engine_of(img) is stand_in
    assert [s.name for s in memory_specs(img)] == ["weights", "bias", "act"]
    x = random_inputs(5, 9, seed=2, density=0.6)
    x[0] = 0
    params = stand_in.params()
    eng = make_engine(img, params)
    y, cycles, lc = run_engine(eng, x)
    np.testing.assert_array_equal(y, golden(QNET, x))
    np.testing.assert_array_equal(lc, stand_in.cycle_model(img, x, params))  # exact model
    assert (cycles > lc.sum(axis=1)).all()


def test_the_command_line_runs_a_new_engine(stand_in, tmp_path):
    """`python -m tb run --engine standin`: the CLI takes its choices, defaults and parameters
    from the registry; the Verilog runs in cocotb (Icarus) bit-exact."""
    from tb.cli import main

    save_qnet(QNET, tmp_path / "q.npz")
    x = random_inputs(3, 9, seed=3, density=0.5)
    np.save(tmp_path / "x.npy", x)
    rc = main(["run", "--engine", "standin", "--pes", "1", "--model", str(tmp_path / "q.npz"),
               "--inputs", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy"),
               "--stats", str(tmp_path / "s.json"), "--sim", "icarus"])
    assert rc == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), golden(QNET, x))
    stats = json.loads((tmp_path / "s.json").read_text())
    img = build_image(QNET, "standin", 1)
    assert stats["layer_cycles"] == stand_in.cycle_model(img, x).tolist()


def test_the_board_takes_a_new_engine(stand_in):
    """The board core makes the registry's component with the board's memories; the protocol
    names the engine by its id; the resource count reads its memory map."""
    from fpga import protocol as P
    from fpga.flow.resources import analyse
    from fpga.gateware.top import BoardCore

    img = build_image(QNET, "standin", 1)
    core = BoardCore(img, clock_hz=100e6, divisor=4, timeout_cycles=2560)
    assert type(core.engine).__name__ == "DenseEngine" and core.link.engine_id == 7
    elaborate(core)
    a = analyse(img)
    assert a["engine"] == "standin" and set(a["groups"]) == {"weights", "bias", "act"}
    flags = 1 | (7 & 1) << 1 | (7 >> 1) << 5  # loaded, the id's low bit, its high bits
    ping = P.encode_frame(P.CMD_PING, bytes([P.VERSION, 1, 2]) + (9).to_bytes(2, "little")
                          + (4).to_bytes(2, "little") + (10**8).to_bytes(4, "little")
                          + bytes([flags]), sync=P.SYNC_REP)
    (frame,) = P.FrameDecoder().feed(ping)
    assert P.decode_ping(frame).engine == "standin"


def test_defaults_fall_back_from_board_to_family_to_sim():
    rec = get("lockstep")
    assert rec.defaults_for("nosuchboard", "ice40") == rec.defaults["ice40"]
    assert rec.defaults_for("nosuchboard") == rec.defaults["sim"]
    assert rec.params_for("nosuchboard", queue_depth=5, sparse=False).queue_depth == 5
    lone = Engine(**{**rec.__dict__, "defaults": {}})
    assert lone.defaults_for("x") == Defaults(rec.params())
