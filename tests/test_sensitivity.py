"""Per-layer pruning sensitivity on a tiny trained network."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import InputError
from compress.sensitivity import (
    DEFAULT_DENSITIES,
    Sensitivity,
    choose_densities,
    format_sensitivity,
    layer_sensitivity,
    write_sensitivity,
)


def _data(n, seed):
    """4 classes in 16 dimensions, separable by a fixed random linear map."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    proj = np.random.default_rng(99).normal(size=(16, 4)).astype(np.float32)
    return x, (x @ proj).argmax(1)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = _data(2048, 0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    xv, yv = _data(1000, 1)
    return model, xv, yv


def _layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_curves_fall_with_density_and_weights_are_restored(trained):
    model, xv, yv = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    s = layer_sensitivity(model, _layers(model), xv, yv, progress=False)
    assert model.training  # the mode it was in
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert s.densities == list(DEFAULT_DENSITIES)
    assert s.densities[0] == 1.0 and s.densities[-1] == pytest.approx(0.01)
    assert s.dense_acc > 90
    assert set(s.acc) == {"0", "2"}
    for row in s.acc.values():
        assert len(row) == len(s.densities)
        assert row[0] == s.dense_acc
        # Monotone-ish: the sparse end is clearly worse, the top levels close to dense.
        assert row[-1] < s.dense_acc - 20
        assert row[1] > s.dense_acc - 3
        assert np.mean(row[-4:]) < np.mean(row[:4])


def test_same_inputs_same_table_and_numpy_or_tensor(trained):
    model, xv, yv = trained
    a = layer_sensitivity(model, _layers(model), xv, yv, progress=False)
    b = layer_sensitivity(model, _layers(model), torch.from_numpy(xv), torch.from_numpy(yv),
                          batch=97, progress=False)
    assert a == b


def test_any_forward_gives_the_same_table(trained):
    """A forward that reshapes by a batch size taken up front cannot be widened: same numbers."""
    model, xv, yv = trained

    class Odd(nn.Module):
        def __init__(self, seq):
            super().__init__()
            self.seq = seq

        def forward(self, x):
            n = x.shape[0]
            h = self.seq[1](self.seq[0](x.view(n, -1)))
            return self.seq[2](h.view(n, -1))

    odd = Odd(model)
    dens = [1.0, 0.5, 0.2, 0.05]
    a = layer_sensitivity(model, _layers(model), xv, yv, densities=dens, progress=False)
    b = layer_sensitivity(odd, {"0": model[0], "2": model[2]}, xv, yv, densities=dens,
                          batch=300, progress=False)
    assert a == b


def test_choose_densities_respects_the_drop(trained):
    model, xv, yv = trained
    s = layer_sensitivity(model, _layers(model), xv, yv, progress=False)
    for drop in (0.0, 0.5, 2.0, 10.0):
        chosen = choose_densities(s, drop)
        for name, d in chosen.items():
            i = s.densities.index(d)
            # The chosen level and every denser one are within the budget.
            assert all(s.dense_acc - a <= drop + 1e-9 for a in s.acc[name][: i + 1])
            if i + 1 < len(s.densities):
                assert s.dense_acc - s.acc[name][i + 1] > drop
    assert choose_densities(s, 100.0) == {n: s.densities[-1] for n in s.acc}


def test_choose_densities_stops_at_the_first_failing_level():
    s = Sensitivity(dense_acc=90.0, densities=[1.0, 0.5, 0.25, 0.1],
                    acc={"a": [90.0, 89.8, 80.0, 89.9], "b": [90.0, 70.0, 60.0, 50.0],
                         "c": [90.0, 91.0, 89.6, 89.0]})
    assert choose_densities(s, 0.5) == {"a": 0.5, "b": 1.0, "c": 0.25}
    with pytest.raises(InputError):
        choose_densities(s, -1)


def test_files_written(trained, tmp_path):
    model, xv, yv = trained
    s = layer_sensitivity(model, _layers(model), xv, yv, densities=[1, 0.3, 0.1],
                          progress=False)
    paths = write_sensitivity(s, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "sensitivity.json", "sensitivity.png", "sensitivity.txt"]
    assert Sensitivity.from_dict(json.loads(paths["json"].read_text())) == s
    txt = paths["txt"].read_text()
    assert txt == format_sensitivity(s) + "\n"
    assert txt.splitlines()[1].split() == ["layer", "1", "0.3", "0.1"]
    assert [line.split()[0] for line in txt.splitlines()[2:]] == ["0", "2"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments():
    model = nn.Sequential(nn.Linear(4, 2))
    x, y = np.zeros((3, 4), np.float32), np.zeros(3, np.int64)
    with pytest.raises(InputError, match="densities"):
        layer_sensitivity(model, _layers(model), x, y, densities=[1.0, 0.0], progress=False)
    with pytest.raises(InputError, match="3 inputs and 2 labels"):
        layer_sensitivity(model, _layers(model), x, y[:2], progress=False)
    with pytest.raises(InputError, match="layer r"):
        layer_sensitivity(model, {"r": nn.ReLU()}, x, y, progress=False)
    with pytest.raises(InputError, match="malformed"):
        Sensitivity.from_dict({"dense_acc": 1.0})
    with pytest.raises(InputError, match="layer a"):
        Sensitivity.from_dict({"dense_acc": 1.0, "densities": [1.0], "acc": {"a": [1, 2]}})
