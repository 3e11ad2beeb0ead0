"""`python -m bench.eie`: the EIE paper's layers made deterministically at their densities; the
command's refusals. (The RTL path it uses, the loadable engine in the Verilator bench, is
tests/test_loadable.py's.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.eie import BY_NAME, LAYERS, BenchLayer, make_inputs, make_qnet, table

REPO = Path(__file__).resolve().parents[1]


def test_the_nine_layers():
    assert [b.name for b in LAYERS] == ["Alex-6", "Alex-7", "Alex-8", "VGG-6", "VGG-7", "VGG-8",
                                        "NT-We", "NT-Wd", "NT-LSTM"]
    assert max(b.in_features for b in LAYERS) == 25088
    assert max(b.out_features for b in LAYERS) == 8791
    assert BY_NAME["Alex-6"].weight_density == 0.09 and BY_NAME["Alex-6"].act_density == 0.351


def test_layer_deterministic_at_its_densities():
    b = BenchLayer("t", 3000, 700, 0.09, 0.351)
    q1, q2 = make_qnet(b, seed=3), make_qnet(b, seed=3)
    np.testing.assert_array_equal(q1.layers[0].index, q2.layers[0].index)
    assert not np.array_equal(q1.layers[0].index, make_qnet(b, seed=4).layers[0].index)
    idx = q1.layers[0].index
    assert idx.shape == (700, 3000) and idx.max() <= 15
    assert abs(np.count_nonzero(idx) / idx.size - 0.09) < 0.002
    x = make_inputs(b, 50, seed=3)
    np.testing.assert_array_equal(x, make_inputs(b, 50, seed=3))
    assert x.dtype == np.int16 and x.min() >= 0 and x.max() <= 255
    assert abs(np.count_nonzero(x) / x.size - 0.351) < 0.01


def test_table_row():
    r = {"layer": "Alex-8", "pes": 8, "rel_bits": 5, "io_lanes": 8, "bit_exact": 4, "count": 4,
         "compute_cycles": [100, 110], "total_cycles": [150, 160], "period_cycles": [170],
         "util_compute": 0.9, "util_total": 0.6, "util_period": 0.55, "model_error": -0.01,
         "model_period_error": 0.002, "dense_cycles": 512000,
         "speedup_over_dense": 9.5, "build_seconds": 80.0, "wall_seconds": 90.0,
         "peak_rss_mb": 300, "peak_child_rss_mb": 320}
    row = table([r]).splitlines()[-1]
    assert row.startswith("| Alex-8 | 8 | 5 | 8 | 4/4 | 105 | 155 | 170 | 90.0% | 60.0% | 55.0% "
                          "| -1.0% / +0.2% |")
    # a result of one vector has no period
    one = {**r, "period_cycles": [], "util_period": None, "model_period_error": None}
    assert "| 155 | - | 90.0% | 60.0% | - | -1.0% / - |" in table([one])


def test_unknown_layer_refused():
    p = subprocess.run([sys.executable, "-m", "bench.eie", "--layers", "Alex-9"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Alex-9" in p.stderr


def test_bad_io_lanes_refused():
    for bad, why in (("0", "--io-lanes"), ("three", "--io-lanes"), ("3", "divide")):
        p = subprocess.run([sys.executable, "-m", "bench.eie", "--pes", "8", "--io-lanes", bad],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and why in p.stderr, p.stderr
