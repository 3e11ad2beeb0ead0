"""The full LeNet-300-100 run against the issue's targets (make test-long only: ~10 CPU-minutes)."""

import json

import pytest

from compress.cli import main

from .conftest import long_tests


@pytest.mark.skipif(not long_tests(), reason="full training run: LONG=1 (make test-long)")
def test_full_lenet_300_100_meets_targets(tmp_path, mnist_dir):
    out = tmp_path / "full"
    assert main(["pipeline", "--data", str(mnist_dir), "--seed", "0", "--out", str(out),
                 "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    size = (out / "model.dcz").stat().st_size
    assert 1_066_440 / size >= 40
    assert s["errors"]["integer"]["test"] <= 1.64
    assert s["max_acc_log2"] < 31
