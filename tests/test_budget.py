"""compress_model's budget: the search over the rungs (a looser max_drop never keeps a larger
file), drops never reported below zero, the validation split's resolution, collapsed inputs."""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import compress
from compress import api

from .test_api import FAST, TinyMLP, blobs, image_blobs, trained_tiny


def _fake_search(table, max_drop, attempts, densities=None):
    """api._search with each rung's training replaced by table[rung] = (drop, file bytes)."""
    dense_val = 90.0

    def attempt(work, dense_state, layers, dens, j, *a, **k):
        return {"attempt": j + 1, "density": dens, "index_bits": {"l": 4},
                "accuracy": {"integer": {"val": dense_val - table[j][0]}},
                "qnet": j, "model": None, "codebooks": None, "indices": None}

    def pack(qnet, *a, **k):
        return b"x" * table[qnet][1], []

    opts = api.Options(attempts=attempts, densities=densities).validate()
    d = SimpleNamespace(x_tr=torch.zeros(4, 2), y_tr=np.zeros(4, np.int64), splits={},
                        x_val=None, y_val=None)
    with mock.patch.object(api, "_attempt", attempt), mock.patch.object(api, "_pack", pack), \
            mock.patch("compress.sensitivity.choose_densities",
                       lambda sens, budget: {"l": min(1.0, 1 / (1 + budget))}):
        best, tried = api._search(torch.nn.Linear(2, 2), object(), {"l": None}, None, d, opts,
                                  0, max_drop, 8, dense_val, {}, lambda s: None)
    return best, tried


rung = st.tuples(st.floats(-3, 12, allow_nan=False), st.integers(50, 5000))


@settings(max_examples=300, deadline=None)
@given(table=st.lists(rung, min_size=len(api.LADDER), max_size=len(api.LADDER)),
       budgets=st.tuples(st.floats(0, 40), st.floats(0, 40)), attempts=st.integers(1, 6),
       fixed=st.booleans())
def test_a_looser_budget_never_keeps_a_larger_file(table, budgets, attempts, fixed):
    """Whatever each rung's training gives (drop, file size, in any order: noise makes a
    sparser rung's file larger at times), the looser of two budgets keeps a file no larger than
    the tighter one's whenever the tighter one was met (an unmet budget keeps its smallest
    drop, flagged, and is no promise about size); the drop reported is never negative; a kept
    file within the budget is the smallest of the attempts within it."""
    tight, loose = sorted(budgets)
    dens = {"l": 0.3} if fixed else None
    bt, tt = _fake_search(table, tight, attempts, dens)
    bl, tl = _fake_search(table, loose, attempts, dens)
    if bt["met"]:
        assert bl["met"] and bl["dcz_bytes"] <= bt["dcz_bytes"], (tight, loose, table)
    elif bt["raw_drop"] <= loose:  # the tighter one's fallback is within the looser budget
        assert bl["dcz_bytes"] <= bt["dcz_bytes"], (tight, loose, table)
    for best, tried, budget in ((bt, tt, tight), (bl, tl, loose)):
        assert best["drop"] >= 0 and all(a["drop"] >= 0 for a in tried)
        met = [a["dcz_bytes"] for a in tried if a["raw_drop"] <= budget + 1e-9]
        assert best["met"] == bool(met)
        if met:
            assert best["dcz_bytes"] == min(met)
    # the tighter budget's trainings are among the looser one's, the same rungs in order
    assert [a["rung"] for a in tt] == [a["rung"] for a in tl][: len(tt)]


def test_rungs_start_dense_and_follow_the_budget():
    opts = api.Options().validate()
    assert api._rungs(0.5, opts) == [0, 1]  # 1/8 and 1/2 point: 0.5 and 2 points a layer
    assert api._rungs(3, opts) == [0, 1, 2]  # up to `attempts`
    assert api._rungs(0.01, opts) == [0]  # the first rung whatever the budget
    assert api._rungs(100, api.Options(attempts=5).validate()) == [0, 1, 2, 3, 4]


def test_the_drop_is_never_negative():
    assert api._drop(90.0, 91.1) == {"drop": 0.0, "raw_drop": pytest.approx(-1.1)}
    assert api._drop(90.0, 89.5) == {"drop": 0.5, "raw_drop": 0.5}
    assert "no drop: 1.10 points above" in api._drop_words(api._drop(90.0, 91.1))


def test_the_budget_is_judged_with_the_validation_resolution():
    """91 examples: one is worth 1.10 points, more than half of max_drop 0.5: a warning naming
    the numbers; 10,000 examples (0.01 points each): none; max_drop 0: none."""
    note = api._resolution_note(91, 0.5)
    assert "91 validation examples" in note and "1.10 points" in note
    assert "allows 0 examples" in note and "at least 400 examples" in note
    assert api._resolution_note(10_000, 0.5) is None
    assert api._resolution_note(91, 0.0) is None
    assert api._resolution_note(91, 3.0) is None  # 1.10 <= 1.5: two examples and more


def test_compress_model_warns_once_about_the_resolution_and_holds_out_val(capsys):
    """A 50-example validation split (2 points each) under max_drop 0.5: one warning that
    names them, kept in the summary's notes; no val given: the held-out split is said on
    stderr (the stage lines) and in the report."""
    model = trained_tiny()
    train, val = image_blobs(400, 0), image_blobs(50, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = compress.compress_model(model, train=train, val=val, seed=0, attempts=1, **FAST)
    msgs = [str(w.message) for w in caught if "validation examples" in str(w.message)]
    assert len(msgs) == 1 and "50 validation examples" in msgs[0] and "2.00 points" in msgs[0]
    assert msgs[0] in r.summary["notes"]
    assert r.summary["drop"] >= 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = compress.compress_model(model, train=train, seed=0, attempts=1,
                                    **{**FAST, "progress": True})
    err = capsys.readouterr().err
    assert "validation: 40 examples held out of train (seed 0)" in err
    assert "40 examples held out of train" in r.report


def test_a_looser_budget_never_gives_a_larger_file_on_real_training():
    """The same data and seed, max_drop 0.5 and 8: the looser budget's file is no larger, and
    the rungs both trained gave the same bytes (a rung's training depends on the rung only)."""
    model = trained_tiny()
    train, val = image_blobs(400, 0), image_blobs(200, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tight = compress.compress_model(model, train=train, val=val, seed=1, max_drop=0.5,
                                        **FAST)
        loose = compress.compress_model(model, train=train, val=val, seed=1, max_drop=8,
                                        **FAST)
    assert len(loose.dcz) <= len(tight.dcz)
    for a, b in zip(tight.summary["attempts"], loose.summary["attempts"]):
        assert (a["rung"], a["dcz_bytes"], a["raw_drop"]) == (b["rung"], b["dcz_bytes"],
                                                             b["raw_drop"])


def test_collapsed_inputs_are_counted_and_standardising_is_advised():
    """One global input_frac: a feature 2,000 times smaller than the largest keeps 3 or fewer
    codes. The warning counts them; standardised inputs give none."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 10)).astype(np.float32)
    x[:, 0] *= 4000  # the largest input sets input_frac (1: steps of 0.5)
    x[:, 1:4] *= 0.1  # three small features: a code or two
    x[:, 5:] *= 30  # five with plenty of codes
    frac, _ = api.calibrate_input_frac(x)  # feature 4 (unit scale): about a dozen codes
    note = api._collapsed_note(x, frac)
    assert note.startswith("inputs: 3 of 10 features take 3 or fewer distinct engine values "
                           "and 1 more take fewer than 16"), note
    assert f"input_frac {frac}" in note and "standardise" in note
    x[:, 1:4] *= 3000  # only the coarse one left
    assert api._collapsed_note(x, frac).startswith("inputs: 1 of 10 features take fewer than")
    z = (x - x.mean(0)) / x.std(0)
    assert api._collapsed_note(z, api.calibrate_input_frac(z)[0]) is None
    binary = (rng.random((100, 5)) < 0.5).astype(np.float32)  # two values: nothing is lost
    assert api._collapsed_note(binary, 14) is None


def test_compress_model_reports_collapsed_inputs():
    x, y = blobs(300, 0)
    x = x.copy()
    x[:, 0] *= 1000  # one huge feature sets input_frac to 1
    x[:, 1:6] *= 0.05  # five small ones keep a code or three
    torch.manual_seed(0)
    m = TinyMLP()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = compress.compress_model(m, train=(x.reshape(-1, 3, 4), y), seed=0, attempts=1,
                                    max_drop=100, **FAST)
    notes = [n for n in r.summary["notes"] if n.startswith("inputs:")]
    assert len(notes) == 1 and notes[0].startswith("inputs: 5 of 12 features"), notes
    assert any(str(w.message) == notes[0] for w in caught)
