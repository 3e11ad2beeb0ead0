"""Pruning: thresholds, masks held through retraining, iterative and gradual schedules."""

import pytest
import torch
from torch import nn

from tests.conftest import striped_digits
from compress.errors import InputError
from compress.models import LeNet300100, compressible_layers
from compress.prune import (PruneConfig, density_table, full_masks, make_threshold, prune,
                            ramp)
from compress.train import TrainConfig


def test_percentile_keeps_exact_fraction_of_largest():
    w = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
    m = make_threshold("percentile")(w, torch.ones_like(w, dtype=torch.bool), 0.1)
    assert int(m.sum()) == 200
    assert w[m].abs().min() >= w[~m].abs().max()


def test_std_threshold_is_quality_times_std():
    w = torch.randn(100, 100, generator=torch.Generator().manual_seed(1))
    m = make_threshold("std")(w, torch.ones_like(w, dtype=torch.bool), 0.5)
    assert torch.equal(m, w.abs() > 0.5 * w.std())


def test_new_mask_is_subset_of_old():
    w = torch.randn(30, 30, generator=torch.Generator().manual_seed(2))
    old = torch.rand(30, 30, generator=torch.Generator().manual_seed(3)) > 0.5
    for method, level in (("percentile", 0.2), ("std", 0.3)):
        new = make_threshold(method)(w, old, level)
        assert not (new & ~old).any()


def test_bad_method_and_levels_refused():
    with pytest.raises(InputError, match="pruning method"):
        make_threshold("random")
    with pytest.raises(InputError, match="unknown layer"):
        PruneConfig(levels={"fc9": 0.1}).validate(["fc1"])
    with pytest.raises(InputError, match="density"):
        PruneConfig(level=1.5).validate(["fc1"])


def test_ramp_is_cubic_and_ends_at_target():
    assert ramp(0.1, 0, 4) == 1.0 and ramp(0.1, 4, 4) == pytest.approx(0.1)
    vals = [ramp(0.1, s, 4) for s in range(5)]
    assert all(a > b for a, b in zip(vals, vals[1:]))


@pytest.mark.parametrize("schedule", ["iterative", "gradual"])
def test_masks_hold_through_retraining(schedule):
    torch.manual_seed(0)
    model = LeNet300100()
    data = striped_digits(512)
    levels = {"fc1": 0.05, "fc2": 0.1, "fc3": 0.3}
    seen = []

    cfg = PruneConfig(schedule=schedule, levels=levels, steps=3, frequency=5,
                      retrain=TrainConfig(epochs=2, batch_size=64, lr=1e-2, progress=False))
    masks = prune(model, data, cfg, log=seen.append)
    layers = compressible_layers(model)
    for name, mask in masks.items():
        w = layers[name].weight.detach()
        # Every pruned weight is exactly zero after retraining with a large learning rate.
        assert torch.all(w[~mask] == 0), name
        assert int(mask.sum()) == round(levels[name] * mask.numel())
        assert torch.all(w[mask] != 0)
    rows = density_table(masks)
    assert rows[-1]["layer"] == "total" and rows[0]["kept"] == int(masks["fc1"].sum())
    assert seen


def test_retraining_changes_surviving_weights_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    before = {n: m.weight.detach().clone() for n, m in compressible_layers(model).items()}
    cfg = PruneConfig(schedule="oneshot", level=0.2,
                      retrain=TrainConfig(epochs=1, batch_size=64, lr=1e-2, progress=False))
    masks = prune(model, striped_digits(512), cfg, masks=full_masks(model), log=lambda s: None)
    for n, m in compressible_layers(model).items():
        assert torch.all(m.weight[~masks[n]] == 0)
        assert not torch.equal(m.weight[masks[n]], before[n][masks[n]])
