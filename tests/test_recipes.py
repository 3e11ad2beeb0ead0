"""Recipe logic: bias rounding chosen on validation, the density scale knob, the recipes' shape,
and the frontier table's choice. All on tiny synthetic networks (well under a second each)."""

import json

import numpy as np
import pytest
import torch

from bench import frontier
from compress.data import Split
from compress.errors import InputError
from compress.fixedpoint import (FixedPointConfig, bias_bits_fixed, choose_bias_rounding,
                                 round_bias, run_integer)
from compress.golden import golden, predict
from compress.pipeline import RECIPES, make_config, validate_config
from compress.prune import PruneConfig
from compress.qnet import Layer, QNet


def test_round_bias_nearest_multiple():
    b = np.array([0, 1, 2, 3, 5, 6, -1, -2, -3, -5, 1000, 2**31 - 1, -2**31], dtype=np.int32)
    r = round_bias(b, 2)
    assert r.dtype == np.int32
    assert np.all(r % 4 == 0)
    # Nearest multiple of 4, halves up: 2 -> 4, -2 -> 0; the int32 extremes stay inside.
    assert list(r[:11]) == [0, 0, 4, 4, 4, 8, 0, 0, -4, -4, 1000]
    assert r[11] == 2**31 - 4 and r[12] == -2**31 + 4
    assert np.array_equal(round_bias(b, 0), b)
    assert np.all(np.abs(round_bias(b, 3)[:11].astype(np.int64) - b[:11]) <= 4)


def _tiny_qnet(seed=0):
    """A 2-layer integer net and inputs on which its biases matter."""
    rng = np.random.default_rng(seed)
    cb1 = np.array([0, -300, -100, 100, 300], dtype=np.int16)
    cb2 = np.array([0, -200, 200], dtype=np.int16)
    l1 = Layer(codebook=cb1, index=rng.integers(0, 5, (12, 20)).astype(np.uint8),
               bias=rng.integers(-40000, 40000, 12).astype(np.int32), shift=8, relu=True)
    l2 = Layer(codebook=cb2, index=rng.integers(0, 3, (4, 12)).astype(np.uint8),
               bias=rng.integers(-30000, 30000, 4).astype(np.int32), shift=6, relu=False)
    q = QNet(layers=[l1, l2], input_frac=8)
    x = rng.integers(0, 256, (400, 20)).astype(np.int16)
    labels = predict(golden(q, x))  # the exact-bias net is right on every input
    return q, x, labels


def _wrong(q, x, labels):
    return int(np.sum(predict(run_integer(q, x)[0]) != labels))


def test_choose_bias_rounding_keeps_the_budget():
    q, x, labels = _tiny_qnet()
    r0, ks0 = choose_bias_rounding(q, x, labels, tolerance=0.0)
    assert _wrong(r0, x, labels) == 0
    for ly, k in zip(r0.layers, ks0):
        assert np.all(ly.bias.astype(np.int64) % (1 << k) == 0)
    # A larger budget never gives finer biases, and the budget holds.
    r1, ks1 = choose_bias_rounding(q, x, labels, tolerance=5.0)
    assert all(a >= b for a, b in zip(ks1, ks0))
    assert _wrong(r1, x, labels) <= 0.05 * len(x)
    # Everything else is untouched.
    for a, b in zip(q.layers, r1.layers):
        assert np.array_equal(a.index, b.index) and np.array_equal(a.codebook, b.codebook)
        assert a.shift == b.shift and a.relu == b.relu
    # A budget of every input: the coarsest k, every bias rounds to zero.
    r2, ks2 = choose_bias_rounding(q, x, labels, tolerance=100.0)
    assert all(np.all(ly.bias == 0) for ly in r2.layers)
    # Deterministic.
    assert choose_bias_rounding(q, x, labels, tolerance=0.0)[1] == ks0


def test_choose_bias_rounding_stops_at_first_failure():
    # Layer 2 has no weights: its bias is the output. k = 1 turns [3, 5, 0, 6] into
    # [4, 6, 0, 6] (class 1, wrong); k = 2 into [4, 4, 0, 8] (class 3, right by luck).
    q, x, labels = _tiny_qnet(1)
    l2 = q.layers[1]
    out2 = Layer(codebook=l2.codebook, index=np.zeros_like(l2.index),
                 bias=np.array([3, 5, 0, 6], dtype=np.int32), shift=0, relu=False)
    q = QNet(layers=[q.layers[0], out2], input_frac=8)
    labels = predict(golden(q, x))
    assert np.all(labels == 3)
    _, ks = choose_bias_rounding(q, x, labels, tolerance=0.0)
    assert ks[1] == 0


def test_bias_bits_fixed():
    q, _, _ = _tiny_qnet()
    r = bias_bits_fixed(q, [4, 0])
    assert np.all(r.layers[0].bias % 16 == 0)
    assert np.array_equal(r.layers[1].bias, q.layers[1].bias)
    with pytest.raises(InputError):
        bias_bits_fixed(q, [1])


@pytest.mark.parametrize("value, ok", [("exact", True), ("auto", True), ([0, 3, 9], True),
                                       ("coarse", False), ([0, 40, 1], False),
                                       ([0, -1, 2], False), ([0, 1], False), (3, False)])
def test_bias_round_setting(value, ok):
    over = {"fixedpoint": {"bias_round": value}}
    if ok:
        cfg = make_config("lenet-300-100", over)
        validate_config(cfg)
        cfg.fixedpoint.validate(3)
    else:
        with pytest.raises(InputError, match="bias_round"):
            cfg = make_config("lenet-300-100", over)
            validate_config(cfg)
            cfg.fixedpoint.validate(3)
    with pytest.raises(InputError, match="bias_tolerance"):
        FixedPointConfig(bias_tolerance=-1).validate()


def test_prune_scale():
    c = PruneConfig(levels={"fc1": 0.06, "fc3": 0.8}, level=0.1, scale=0.5)
    assert c.level_for("fc1") == pytest.approx(0.03)
    assert c.level_for("fc2") == pytest.approx(0.05)
    c.scale = 2.0
    assert c.level_for("fc3") == 1.0  # never above dense
    assert PruneConfig(method="std", level=1.5, scale=0.5).level_for("fc1") == 1.5
    for bad in (0.0, -1.0):
        with pytest.raises(InputError, match="scale"):
            PruneConfig(scale=bad).validate(["fc1"])
    cfg = make_config("lenet-300-100", {"prune": {"scale": 0.7}})
    assert cfg.prune.level_for("fc1") == pytest.approx(
        0.7 * RECIPES["lenet-300-100"]["prune"]["levels"]["fc1"])


def test_recipes_validate_and_choose_on_validation():
    for arch in RECIPES:
        cfg = make_config(arch)
        validate_config(cfg)
        # Biases are rounded as the validation split allows, and there is one by default.
        assert cfg.fixedpoint.bias_round == "auto"
        assert cfg.val_size > 0
    # The engine runs LeNet-300-100: 4-bit codebook indices at most.
    cfg = make_config("lenet-300-100")
    assert all(cfg.quantize.bits_for(n) <= 4 for n in ("fc1", "fc2", "fc3"))


@pytest.mark.parametrize("conv", [False, True])
def test_bias_rounding_is_the_plain_walk(conv):
    """choose_bias_rounding (blocks, only changed examples re-run) gives exactly what the plain
    rule gives: per layer the first k whose full golden-model error is over the budget, minus 1."""
    from compress.fixedpoint import round_bias
    from compress.synthetic import random_cnn, random_inputs, random_qnet

    if conv:
        q = random_cnn((2, 9, 9), [(5, 3, 1, 1, 2), (6, 3, 1, 0, 1)], [7, 4], seed=3,
                       density=0.6, weight_scale=300, bias_scale=1 << 17, shift=9)
    else:
        q = random_qnet([30, 20, 12, 4], seed=3, density=0.5, bias_scale=1 << 17, shift=9)
    x = random_inputs(300, q.in_features, seed=4, density=0.8, scale=400)
    y = predict(golden(q, x))
    y[::7] = (y[::7] + 1) % 4  # some wrong at the start
    for tol in (0.0, 1.0):
        got, ks = choose_bias_rounding(q, x, y, tolerance=tol)
        layers = list(q.layers)

        def wrong(ls):
            return int(np.sum(predict(golden(QNet(ls, input_shape=q.input_shape), x)) != y))

        allowed = wrong(layers) + tol / 100 * len(y) + 1e-9
        want = []
        for i, ly in enumerate(layers):
            best = 0
            top = int(np.abs(ly.bias.astype(np.int64)).max()).bit_length() + 1
            for k in range(1, min(top, 31) + 1):
                trial = layers[:i] + [ly.with_bias(round_bias(ly.bias, k))] + layers[i + 1:]
                if wrong(trial) > allowed:
                    break
                best = k
            layers[i] = ly.with_bias(round_bias(ly.bias, best))
            want.append(best)
        assert ks == want
        assert got.equals(QNet(layers, input_frac=q.input_frac, input_shape=q.input_shape))


def test_frontier_choice_and_table(tmp_path):
    def run(name, scale, nbytes, val, test):
        d = tmp_path / name
        d.mkdir()
        d.joinpath("summary.json").write_text(json.dumps({
            "arch": "lenet-300-100", "dcz_bytes": nbytes, "config": {"seed": 0, "prune":
                                                                    {"scale": scale}},
            "errors": {"dense": {"val": 1.6, "test": 1.4},
                       "integer": {"val": val, "test": test}}}))

    run("a", 1.0, 16000, 1.65, 1.45)
    run("b", 0.7, 13000, 1.75, 1.50)
    run("c", 0.5, 11000, 1.95, 1.70)
    (tmp_path / "empty").mkdir()
    pts = frontier.collect([str(tmp_path)])
    assert len(pts) == 3
    assert frontier.choose(pts, 0.2)["bytes"] == 13000  # c is over the validation budget
    assert frontier.choose(pts, 0.01) is None
    text = frontier.table(pts, 0.2)
    assert "| lenet-300-100 | scale 0.7, seed 0 (chosen) | 13,000 | 82.0x |" in text
    assert "Soft Weight-Sharing (published)" in text
    png = tmp_path / "f.png"
    assert frontier.main(["plot", str(tmp_path), "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_frontier_budget_rule(tmp_path, capsys):
    """--max-val: the smallest file at or under the validation budget over both recipes; with
    none under it, the lowest validation error."""
    def run(name, scale, nbytes, val, shift):
        d = tmp_path / name
        d.mkdir()
        d.joinpath("summary.json").write_text(json.dumps({
            "arch": "lenet-5", "dcz_bytes": nbytes,
            "config": {"seed": 3, "prune": {"scale": scale, "retrain": {"shift": shift}}},
            "errors": {"dense": {"val": 0.6, "test": 0.5},
                       "stored": {"val": val, "test": 0.7}}}))

    run("base1", 1.0, 13000, 0.78, 0)
    run("base125", 1.25, 16000, 0.69, 0)
    run("shift125", 1.25, 15500, 0.70, 2)
    run("shift15", 1.5, 19000, 0.60, 2)
    pts = frontier.collect([str(tmp_path)])
    assert {p["recipe"] for p in pts} == {"base", "shift"}
    best = frontier.choose(pts, 0.2, seed=3, max_val=0.70)
    assert (best["bytes"], best["recipe"]) == (15500, "shift")  # 0.70 is within the budget
    assert frontier.choose(pts, 0.2, seed=3, max_val=0.5)["bytes"] == 19000  # none: lowest val
    assert frontier.choose(pts, 0.2, seed=0, max_val=0.7) is None  # no point of that seed
    assert frontier.main(["choose", str(tmp_path), "--max-val", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "seed 3  shift  scale 1.25" in out and out.count("<- chosen") == 1
    assert frontier.main(["choose", str(tmp_path / "nothing-here"), "--max-val", "0.7"]) == 2


# ---------------------------------------------------------------------------------------------
# Knowledge distillation (off by default; the LeNet-5 recipe turns it on)


def _tiny_split(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
                 rng.integers(0, 10, n).astype(np.uint8))


def _tiny_model(seed=0):
    from compress.models import build

    torch.manual_seed(seed)
    return build("lenet-300-100")


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_distill_off_by_default_is_plain_cross_entropy():
    from compress.train import TrainConfig, fit, teacher_logits

    torch.set_num_threads(1)
    d = _tiny_split()
    assert TrainConfig().distill == 0.0
    a, b = _tiny_model(), _tiny_model()
    # A teacher given with distill = 0 is ignored: bit-identical weights and loss.
    other = teacher_logits(_tiny_model(1), d)
    ra = fit(a, d, TrainConfig(epochs=2, batch_size=32, progress=False))
    rb = fit(b, d, TrainConfig(epochs=2, batch_size=32, progress=False), teacher=other)
    assert ra == rb
    sa, sb = _state(a), _state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The recipes leave it off in every training stage (it lost on LeNet-5's validation split),
    # and a setting turns it on.
    for arch in RECIPES:
        cfg = make_config(arch)
        for t in (cfg.train, cfg.prune.retrain, cfg.prune.final_retrain, cfg.quantize.finetune):
            assert t.distill == 0.0
    cfg = make_config("lenet-5", {"prune": {"retrain": {"distill": 0.7, "temperature": 4.0}}})
    assert cfg.prune.retrain.distill == 0.7 and cfg.prune.retrain.temperature == 4.0
    assert cfg.prune.retrain.epochs == RECIPES["lenet-5"]["prune"]["retrain"]["epochs"]


def test_distill_changes_the_loss_towards_the_teacher():
    from compress.train import TrainConfig, fit, teacher_logits

    torch.set_num_threads(1)
    d = _tiny_split()
    teacher_model = _tiny_model(1)
    t = teacher_logits(teacher_model, d)
    assert t.shape == (len(d), 10)

    def kl_to_teacher(m):
        from compress.train import logits

        s = logits(m, d.images)
        return float(torch.nn.functional.kl_div(torch.log_softmax(s, 1), torch.softmax(t, 1),
                                                reduction="batchmean"))

    plain, dist = _tiny_model(), _tiny_model()
    before = kl_to_teacher(plain)
    cfg = dict(epochs=6, batch_size=32, lr=3e-3, progress=False, temperature=2.0)
    fit(plain, d, TrainConfig(**cfg))
    # distill = 1: soft targets only, so the student moves towards the teacher, not the labels.
    fit(dist, d, TrainConfig(**cfg, distill=1.0), teacher=t)
    sp, sd = _state(plain), _state(dist)
    assert any(not torch.equal(sp[k], sd[k]) for k in sp)
    assert kl_to_teacher(dist) < 0.5 * before
    assert kl_to_teacher(dist) < kl_to_teacher(plain)
    # Deterministic: the same seed and teacher give the same weights.
    again = _tiny_model()
    fit(again, d, TrainConfig(**cfg, distill=1.0), teacher=t)
    sa = _state(again)
    assert all(torch.equal(sa[k], sd[k]) for k in sa)


def test_distill_settings_are_checked():
    from compress.train import TrainConfig, fit

    d = _tiny_split(32)
    for bad in ({"distill": -0.1}, {"distill": 1.5}, {"temperature": 0.0}):
        with pytest.raises(InputError):
            TrainConfig(**bad).validate()
    with pytest.raises(InputError, match="teacher"):
        fit(_tiny_model(), d, TrainConfig(epochs=1, progress=False, distill=0.5))
    with pytest.raises(InputError, match="teacher"):
        fit(_tiny_model(), d, TrainConfig(epochs=1, progress=False, distill=0.5),
            teacher=torch.zeros(5, 10))
    with pytest.raises(InputError, match="distill"):
        validate_config(make_config("lenet-5", {"prune": {"retrain": {"distill": 2}}}))


def test_prune_and_quantize_distill_from_the_model_before_by_default():
    """Without an explicit teacher, pruning and centroid tuning distill from the model they
    were given (its logits before any change); passing those logits gives the same result."""
    from compress.prune import PruneConfig, prune
    from compress.quantize import QuantConfig, quantize
    from compress.train import TrainConfig, teacher_logits

    torch.set_num_threads(1)
    d = _tiny_split()
    rt = TrainConfig(epochs=1, batch_size=32, progress=False, distill=0.7)
    pc = PruneConfig(levels={"fc1": 0.3, "fc2": 0.3, "fc3": 0.5}, steps=2, retrain=rt)
    a, b = _tiny_model(), _tiny_model()
    t = teacher_logits(b, d)
    ma = prune(a, d, pc, log=lambda s: None)
    mb = prune(b, d, pc, log=lambda s: None, teacher=t)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    sa, sb = _state(a), _state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    qc = QuantConfig(bits=3, finetune=TrainConfig(epochs=1, batch_size=32, lr=1e-3,
                                                  progress=False, distill=0.7))
    ta = teacher_logits(a, d)
    ca, _ = quantize(a, ma, d, qc)
    cb, _ = quantize(b, mb, d, qc, teacher=ta)
    assert all(np.array_equal(ca[k], cb[k]) for k in ca)
    # ... and differs from tuning without distillation.
    c = _tiny_model()
    mc = prune(c, d, pc, log=lambda s: None)
    qc.finetune.distill = 0.0
    cc, _ = quantize(c, mc, d, qc)
    assert any(not np.array_equal(ca[k], cc[k]) for k in ca)


def test_frontier_ship_applies_the_rule_and_records_the_point(tmp_path):
    """`bench.frontier ship`: the smallest LeNet-5 file within the validation budget is copied
    to the models directory with its record (errors on val and test, the recipe, the sweep)."""
    from compress.dcz import MAGIC
    from compress.pipeline import config_dict

    cfg = config_dict(make_config("lenet-5"))
    density = [{"layer": n, "weights": 10, "kept": 5, "kept_pct": 50.0}
               for n in ("conv1", "conv2", "fc1", "fc2")]
    density.append({"layer": "total", "weights": 40, "kept": 20, "kept_pct": 50.0})

    def run(name, scale, seed, nbytes, val, test):
        d = tmp_path / ("seeds" if seed else "sweep") / name
        d.mkdir(parents=True)
        c = dict(cfg, seed=seed, prune=dict(cfg["prune"], scale=scale))
        d.joinpath("summary.json").write_text(json.dumps({
            "arch": "lenet-5", "dcz_bytes": nbytes, "config": c, "density": density,
            "bias_round": [1, 2, 3, 4], "seconds": {"compress": 600.4},
            "errors": {"dense": {"val": 0.7, "test": 0.6}, "pruned": {"val": 0.8, "test": 0.7},
                       "quantized": {"val": 0.8, "test": 0.7},
                       "stored": {"val": val, "test": test}}}))
        d.joinpath("model.dcz").write_bytes(MAGIC + bytes([2]) + bytes([seed]) * (nbytes - 5))

    run("a", 1.25, 0, 16000, 0.75, 0.70)
    run("b", 1.0, 0, 13000, 0.85, 0.79)
    run("c", 0.75, 0, 10000, 0.95, 0.85)  # over the budget: 0.25 points over the dense
    run("d", 1.0, 1, 13100, 0.80, 0.75)
    out = tmp_path / "models"
    out.mkdir()
    assert frontier.main(["ship", str(tmp_path / "sweep"), "--out", str(out),
                          "--seeds", str(tmp_path / "seeds")]) == 0
    blob = (out / "lenet-5.dcz").read_bytes()
    assert blob == (tmp_path / "sweep" / "b" / "model.dcz").read_bytes()
    rec = json.loads((out / "lenet-5.json").read_text())
    assert rec["dcz_bytes"] == 13000 and rec["ratio"] == pytest.approx(1_724_320 / 13000, abs=0.01)
    assert rec["format_version"] == 2
    assert rec["errors_percent"]["stored"]["val"] == 0.85
    assert rec["errors_percent"]["stored"]["test"] == 0.79
    assert rec["recipe"]["prune"]["scale"] == 1.0
    assert rec["recipe"]["prune"]["final_retrain"]["epochs"] == \
        RECIPES["lenet-5"]["prune"]["final_retrain"]["epochs"]
    assert "seed" not in rec["recipe"]["train"]
    assert [p["scale"] for p in rec["sweep"]] == [0.75, 1.0, 1.25]
    assert [p["seed"] for p in rec["other_seeds"]] == [1]
    # Nothing within the budget: exit 2 and nothing written.
    (out / "lenet-5.json").unlink()
    assert frontier.main(["ship", str(tmp_path / "sweep"), "--out", str(out),
                          "--max-drop", "0.01"]) == 2
    assert not (out / "lenet-5.json").exists()


def test_translate_moves_a_hand_made_image():
    from compress.train import translate

    x = torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4)
    x = torch.cat([x, 10 * x])  # two images, two different shifts in one call
    out = translate(x, torch.tensor([1, -2]), torch.tensor([-1, 0]))
    # Image 0: one row down, one column left; the top row and right column fill with 0.
    assert out[0, 0].tolist() == [[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]]
    # Image 1: two rows up, no sideways move.
    assert out[1, 0].tolist() == [[90, 100, 110, 120], [130, 140, 150, 160],
                                  [0, 0, 0, 0], [0, 0, 0, 0]]
    # No move is the identity; a move by the full height leaves nothing.
    assert torch.equal(translate(x, torch.tensor([0, 0]), torch.tensor([0, 0])), x)
    assert not translate(x, torch.tensor([4, 0]), torch.tensor([0, 5])).any()


def test_random_shift_is_seeded_bounded_and_takes_flat_inputs():
    from compress.train import random_shift, translate

    # One lit pixel per image in the middle: where it lands shows the draw.
    x = torch.zeros(200, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    a = random_shift(x, 2, torch.Generator().manual_seed(5))
    b = random_shift(x, 2, torch.Generator().manual_seed(5))
    c = random_shift(x, 2, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    pos = a.flatten(1).argmax(1)
    dy, dx = pos // 28 - 14, pos % 28 - 14
    assert a.flatten(1).sum(1).eq(1).all()  # moved, not lost
    assert dy.abs().max() == 2 and dx.abs().max() == 2  # every offset in [-2, 2] is drawn
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 25
    # Flat [n, 784] inputs are read as 28 x 28 images, with the same draw.
    flat = random_shift(x.reshape(200, 784), 2, torch.Generator().manual_seed(5))
    assert flat.shape == (200, 784) and torch.equal(flat.reshape(a.shape), a)
    assert torch.equal(translate(x, dy, dx), a)
    assert random_shift(x, 0, torch.Generator()) is x
    with pytest.raises(InputError, match="image inputs"):
        random_shift(torch.zeros(4, 10), 1, torch.Generator())


def test_shift_off_is_the_old_loop_and_on_is_deterministic(monkeypatch):
    from compress import train as tr

    torch.set_num_threads(1)
    d = _tiny_split()
    cfg = dict(epochs=2, batch_size=32, progress=False)
    ref = _tiny_model()
    r_ref = tr.fit(ref, d, tr.TrainConfig(**cfg))
    on1, on2 = _tiny_model(), _tiny_model()
    r1 = tr.fit(on1, d, tr.TrainConfig(**cfg, shift=2))
    r2 = tr.fit(on2, d, tr.TrainConfig(**cfg, shift=2))
    assert r1 == r2 and r1["steps"] == r_ref["steps"]
    s1, s2, sr = _state(on1), _state(on2), _state(ref)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], sr[k]) for k in s1)
    # Off (the default): no augmentation call and no extra random draw, so the weights are
    # exactly those of the loop without the option (same batch order, same updates).
    assert tr.TrainConfig().shift == 0

    def boom(*a, **k):
        raise AssertionError("random_shift called with shift 0")

    monkeypatch.setattr(tr, "random_shift", boom)
    off = _tiny_model()
    assert tr.fit(off, d, tr.TrainConfig(**cfg, shift=0)) == r_ref
    so = _state(off)
    assert all(torch.equal(so[k], sr[k]) for k in so)
    # LeNet-300-100 keeps it off in every stage; settings are checked.
    c = make_config("lenet-300-100")
    for t in (c.train, c.prune.retrain, c.prune.final_retrain, c.quantize.finetune):
        assert t.shift == 0
    for bad in ({"shift": -1}, {"shift": 1.5}, {"shift": True}, {"shift": 1, "distill": 0.5}):
        with pytest.raises(InputError, match="shift"):
            tr.TrainConfig(**bad).validate()


def test_frontier_ship_writes_the_integer_network_and_keeps_the_record(tmp_path):
    """A run whose .dcz is a version 3 qnet ships lenet-5.qnet.npz (what it unpacks to) with
    the integer error in the record; --keep-record keeps the note and the sweep already there."""
    from compress import dcz
    from compress.pipeline import config_dict
    from compress.qnet import load_qnet, save_qnet
    from compress.synthetic import random_cnn

    q = random_cnn((1, 28, 28), [(20, 5, 1, 0, 2), (50, 5, 1, 0, 2)], [500, 10], seed=0,
                   density=0.02)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.dcz").write_bytes(dcz.pack(q))
    save_qnet(q, run / "model.qnet.npz")
    density = [{"layer": n, "weights": 10, "kept": 5, "kept_pct": 50.0}
               for n in ("conv1", "conv2", "fc1", "fc2", "total")]
    run.joinpath("summary.json").write_text(json.dumps({
        "arch": "lenet-5", "dcz_bytes": len(dcz.pack(q)), "config": config_dict(make_config(
            "lenet-5")), "density": density, "bias_round": [1, 2, 3, 4],
        "errors": {"dense": {"val": 0.5, "test": 0.4}, "quantized": {"val": 0.7, "test": 0.6},
                   "integer": {"val": 0.72, "test": 0.61}}}))
    out = tmp_path / "models"
    out.mkdir()
    (out / "lenet-5.json").write_text(json.dumps({"note": "kept", "sweep": [{"scale": 9}],
                                                  "other_seeds": []}))
    assert frontier.main(["ship", str(run), "--out", str(out), "--max-val", "0.70",
                          "--keep-record"]) == 0
    assert load_qnet(out / "lenet-5.qnet.npz").equals(q)
    rec = json.loads((out / "lenet-5.json").read_text())
    assert rec["format_version"] == 3 and rec["errors_percent"]["integer"]["test"] == 0.61
    assert rec["note"] == "kept" and rec["sweep"] == [{"scale": 9}]
