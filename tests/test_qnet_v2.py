"""The qnet, version 2 (docs/formats.md section 7): the writer's choice of version, round trips,
and every new key's bad values refused by `golden` with exit 2 and one line naming the key,
nothing written."""

import numpy as np
import pytest

from compress.cli import main
from compress.errors import InputError
from compress.qnet import Layer, QNet, load_qnet, save_qnet
from compress.synthetic import random_cnn, random_qnet


def _cnn():
    return random_cnn((2, 7, 6), [(3, 3, 1, 1, 2), (4, (2, 3), (1, 2), 0, 1)], [5, 3], seed=2,
                      density=0.5)


def test_version_1_when_it_can_hold_the_network(tmp_path):
    fc = random_qnet((12, 7, 3), seed=1)
    assert fc.version == 1 and "input_shape" not in fc.to_arrays()
    assert "l0.kind" not in fc.to_arrays()
    # the same layers on a [C, H, W] input need version 2 (every layer has its kind)
    shaped = QNet(fc.layers, input_frac=8, input_shape=(3, 2, 2))
    a = shaped.to_arrays()
    assert shaped.version == 2 and a["input_shape"].tolist() == [3, 2, 2]
    assert str(a["l0.kind"]) == "fc" and "l0.kernel" not in a
    q = _cnn()
    a = q.to_arrays()
    assert q.version == 2 and str(a["l0.kind"]) == "conv" and a["l0.pool"].tolist() == [2, 2]
    assert a["l1.stride"].dtype == np.int64 and a["l1.stride"].tolist() == [1, 2]
    for net in (fc, shaped, q):
        save_qnet(net, tmp_path / "a.npz")
        save_qnet(net, tmp_path / "b.npz")
        assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
        back = load_qnet(tmp_path / "a.npz")
        assert back.equals(net) and back.version == net.version
        assert back.input_shape == net.input_shape


def test_layer_shapes_and_widths():
    q = _cnn()
    assert q.layer_shapes() == [((2, 7, 6), (3, 3, 3)), ((3, 3, 3), (4, 2, 1)),
                                ((4, 2, 1), (5,)), ((5,), (3,))]
    assert q.in_features == 84 and q.out_features == 3
    assert q.layers[0].index.shape == (3, 2 * 3 * 3)


def test_a_hand_written_version_2_file_loads(tmp_path):
    """A user's own file: plain np.savez, int32 pairs, no checksum."""
    a = _cnn().to_arrays()
    for k in list(a):
        if k.rsplit(".", 1)[-1] in ("kernel", "stride", "padding", "pool"):
            a[k] = a[k].astype(np.int32)
    np.savez(tmp_path / "user.npz", **a)
    assert load_qnet(tmp_path / "user.npz").equals(_cnn())


def _set(key, value):
    return lambda a: {**a, key: value}


def _drop(key):
    return lambda a: {k: v for k, v in a.items() if k != key}


BAD = [
    ("missing input_shape", "input_shape: missing key", _drop("input_shape")),
    ("missing kind", "l1.kind: missing key", _drop("l1.kind")),
    ("missing kernel", "l0.kernel: missing key", _drop("l0.kernel")),
    ("missing pool", "l1.pool: missing key", _drop("l1.pool")),
    ("kind value", "l1.kind: must be 'fc' or 'conv', not 'pool'",
     _set("l1.kind", np.array("pool"))),
    ("kind dtype", "l0.kind: expected a string scalar", _set("l0.kind", np.array(1))),
    ("kind long", "l0.kind: expected a string scalar", _set("l0.kind", np.array("c" * 40))),
    ("kernel float", "l0.kernel: expected int64[2]", _set("l0.kernel", np.array([3.0, 3.0]))),
    ("kernel shape", "l0.kernel: expected int64[2]", _set("l0.kernel", np.array([3]))),
    ("kernel 0", "l0.kernel: [0, 3]: each must be >= 1", _set("l0.kernel", np.array([0, 3]))),
    ("stride 0", "l1.stride: [1, 0]: each must be >= 1", _set("l1.stride", np.array([1, 0]))),
    ("padding < 0", "l0.padding: [-1, 1]: each must be >= 0",
     _set("l0.padding", np.array([-1, 1]))),
    ("pool 0", "l0.pool: [0, 2]: each must be >= 1", _set("l0.pool", np.array([0, 2]))),
    ("pool too big", "l1.pool: window 4x1 is larger than the 2x1 map",
     _set("l1.pool", np.array([4, 1]))),
    ("kernel too big", "l1.kernel: 4x3 does not fit the padded input 3x3",
     lambda a: {**a, "l1.kernel": np.array([4, 3]),
                "l1.index": np.zeros((4, 3 * 4 * 3), np.uint8)}),
    ("index columns", "l1.index: 17 columns but in_ch * kh * kw = 3 * 2 * 3 = 18",
     None),  # placeholder replaced below
    ("fc after conv", "l2.index: 7 inputs but l1 gives 4x2x1 = 8 values", None),
    ("input_shape 2-D", "input_shape: expected int64[1] ([in_0]) or int64[3]",
     _set("input_shape", np.array([7, 6]))),
    ("input_shape 0", "input_shape: [2, 0, 6]: every size must be >= 1",
     _set("input_shape", np.array([2, 0, 6]))),
    ("input_shape float", "input_shape: expected int64[1]",
     _set("input_shape", np.array([2.0, 7.0, 6.0]))),
    ("flat input to conv",
     "l0.kind: a conv layer takes a [C, H, W] map, but input_shape gives [84]",
     _set("input_shape", np.array([84]))),
    ("conv after fc", "l3.kind: a conv layer takes a [C, H, W] map, but l2 (fully connected) "
                      "gives [5]",
     None),
    ("geometry on fc", "l2.kernel: unexpected key (l2 is a fully connected layer",
     _set("l2.kernel", np.array([1, 1]))),
    ("input_shape in v1", "input_shape: unexpected key", None),
    ("max_map", "exceeds the limit max_map", _set("input_shape", np.array([1, 1 << 13, 1 << 12]))),
    ("max_macs", "exceeds the limit max_macs", None),
]


def _mutation(name, mutate):
    if name == "index columns":
        return lambda a: {**a, "l1.index": a["l1.index"][:, :-1]}
    if name == "fc after conv":
        return lambda a: {**a, "l2.index": a["l2.index"][:, :7]}
    if name == "conv after fc":
        def m(a):
            a = {**a, "l3.kind": np.array("conv")}
            for g in ("kernel", "stride", "padding", "pool"):
                a[f"l3.{g}"] = np.array([1, 1])
            return a
        return m
    if name == "input_shape in v1":
        return lambda a: {**random_qnet((12, 7, 3), seed=1).to_arrays(),
                          "input_shape": np.array([12])}
    if name == "max_macs":
        # l0 alone: 3 x 18 weights over a 4096 x 4096 map, 0.9G multiply-accumulates
        return _set("input_shape", np.array([2, 1 << 12, 1 << 12]))
    return mutate


@pytest.mark.parametrize("name,words,mutate", BAD, ids=[b[0] for b in BAD])
def test_bad_version_2_keys_refused_with_one_line(tmp_path, capsys, monkeypatch, name, words,
                                                   mutate):
    if name == "max_macs":
        monkeypatch.setenv("DEEPCOMP_LIMITS", "max_map=2**26,max_macs=2**29")
    a = {k: np.asarray(v) for k, v in _cnn().to_arrays().items()}
    np.savez(tmp_path / "bad.npz", **_mutation(name, mutate)(a))
    np.save(tmp_path / "x.npy", np.zeros((2, 84), np.int16))
    rc = main(["golden", "--model", str(tmp_path / "bad.npz"), "--inputs",
               str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "y.npy").exists()


def test_layers_validate_their_geometry():
    cb, idx, b = np.array([0, 1], np.int16), np.ones((2, 9), np.uint8), np.zeros(2, np.int32)
    for kw, words in (({"kind": "dense"}, "l0.kind: must be 'fc' or 'conv'"),
                      ({"kind": "conv", "kernel": (3,)}, "l0.kernel: expected two integers"),
                      ({"kind": "conv", "kernel": (3, 3), "stride": (1.5, 1)},
                       "l0.stride: expected two integers")):
        with pytest.raises(InputError, match=words):
            QNet([Layer(cb, idx, b, 0, False, **kw)], input_shape=(1, 4, 4)).validate()
    with pytest.raises(InputError, match="input_shape: missing"):
        QNet([Layer(cb, idx, b, 0, False, kind="conv", kernel=(3, 3))]).validate()
