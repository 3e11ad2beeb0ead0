"""The golden model's conv layers (docs/formats.md section 7) against two references written
independently of compress.golden: a literal loop over every output element (Python integers,
small shapes), and a shift-and-add numpy evaluation (one kernel offset at a time, no im2col)
fast enough for LeNet-5 on MNIST. Random shapes, then the corners: saturation, accumulator
wrap, all-pruned channels, a 1x1 map, pooling that drops a border, kernels as large as the map.
"""

import resource
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.golden import golden, predict, run_layers
from compress.qnet import Layer, QNet
from compress.synthetic import random_cnn

from .conftest import long_tests
from .conv_reference import loop_reference, shift_add_reference


def _inputs(qnet, n, seed, scale=32767):
    rng = np.random.default_rng(seed)
    return rng.integers(-scale, scale + 1, (n, qnet.in_features)).astype(np.int16)


@st.composite
def small_cnns(draw):
    """(input shape, conv specs, fc sizes) of a small CNN that chains: 1-2 conv layers (odd
    sizes, strides, paddings, pools, channels 1-7), then 0-2 fc layers."""
    shape = _, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    convs = []
    for _ in range(draw(st.integers(1, 2))):
        kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        if h + 2 * ph < kh or w + 2 * pw < kw:
            break
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        qh, qw = draw(st.integers(1, min(ho, 3))), draw(st.integers(1, min(wo, 3)))
        oc = draw(st.sampled_from([1, 2, 3, 5, 7]))
        convs.append((oc, (kh, kw), (sh, sw), (ph, pw), (qh, qw)))
        h, w = ho // qh, wo // qw
    if not convs:
        convs = [(2, 1, 1, 0, 1)]
    return shape, convs, draw(st.lists(st.integers(1, 6), max_size=2))


@given(net=small_cnns(), seed=st.integers(0, 10**6), acc_bits=st.sampled_from([14, 20, 32, 64]),
       shift=st.integers(0, 16), density=st.sampled_from([0.0, 0.3, 1.0]),
       relu_last=st.booleans())
@settings(max_examples=60, deadline=None)
def test_random_shapes_match_the_loop_reference(net, seed, acc_bits, shift, density,
                                                relu_last):
    shape, convs, fc = net
    q = random_cnn(shape, convs, fc, seed=seed, shift=shift, density=density,
                   relu_last=relu_last, weight_scale=30000, bias_scale=1 << 20).validate()
    x = _inputs(q, 2, seed)
    got = golden(q, x, acc_bits=acc_bits)
    assert np.array_equal(got, loop_reference(q, x, acc_bits))
    assert np.array_equal(got, shift_add_reference(q, x, acc_bits))
    # every layer's output is there, flattened, and the last one is golden's
    outs = run_layers(q, x, acc_bits=acc_bits)
    assert [o.shape[1] for o in outs] == [int(np.prod(s[1])) for s in q.layer_shapes()]
    assert np.array_equal(outs[-1], got)


def _conv(codebook, index, bias, *, shift=0, relu=False, kernel=(1, 1), stride=(1, 1),
          padding=(0, 0), pool=(1, 1)):
    return Layer(np.array(codebook, np.int16), np.array(index, np.uint8), np.array(bias, np.int32),
                 shift, relu, kind="conv", kernel=kernel, stride=stride, padding=padding,
                 pool=pool)


def test_saturation_and_wrap_in_a_conv_layer():
    # 1x1 kernel on a 1x2x2 map: outputs are codebook * input, saturated to int16
    big = _conv([0, 32767, -32768], [[1], [2]], [0, 0])
    q = QNet([big], input_frac=0, input_shape=(1, 2, 2))
    x = np.array([[32767, -32768, 1, 0]], np.int16)
    y = golden(q, x)
    assert y.tolist() == [[32767, -32768, 32767, 0, -32768, 32767, -32768, 0]]
    assert np.array_equal(y, loop_reference(q, x, 32))
    # 3x3 kernel of 32767s over a full map of 32767s: 9 * 2**30 wraps at 32 bits
    w = _conv([0, 32767], [[1] * 9], [0], kernel=(3, 3))
    q = QNet([w], input_frac=0, input_shape=(1, 3, 3))
    x = np.full((1, 9), 32767, np.int16)
    for acc_bits in (16, 24, 32, 36, 64):
        assert np.array_equal(golden(q, x, acc_bits=acc_bits), loop_reference(q, x, acc_bits))
    acc = 9 * 32767 * 32767
    assert golden(q, x, acc_bits=32)[0, 0] == np.clip((acc + 2**31) % 2**32 - 2**31,
                                                      -32768, 32767)


def test_all_pruned_channel_gives_its_bias_and_pooling_floors():
    # channel 0 all pruned: its output is post(bias) everywhere; a 5x5 map pooled 2x2 keeps 2x2
    layer = _conv([0, 5], [[0] * 9, [1] * 9], [-7, 3], shift=1, relu=False, kernel=(3, 3),
                  padding=(1, 1), pool=(2, 2))
    q = QNet([layer], input_frac=0, input_shape=(1, 5, 5))
    x = _inputs(q, 3, 1, scale=100)
    y = golden(q, x)
    assert y.shape == (3, 2 * 2 * 2)
    assert (y[:, :4] == (-7 + 1) >> 1).all()  # floor((-7 + 1) / 2) = -3
    assert np.array_equal(y, loop_reference(q, x, 32))


def test_one_by_one_map_and_a_kernel_as_large_as_the_map():
    one = _conv([0, 3, -2], [[1, 2, 1]], [4], kernel=(1, 1))  # 3 channels of a 1x1 map
    whole = _conv([0, 1, -1], [np.arange(2 * 4 * 3) % 3], [0], kernel=(4, 3), stride=(5, 7))
    for layer, shape in ((one, (3, 1, 1)), (whole, (2, 4, 3))):
        q = QNet([layer], input_frac=0, input_shape=shape)
        assert q.layer_shapes()[0][1] == (1, 1, 1)
        x = _inputs(q, 4, 2, scale=1000)
        assert np.array_equal(golden(q, x), loop_reference(q, x, 32))


def test_stride_padding_asymmetric_and_fc_after_conv():
    q = random_cnn((2, 7, 10), [(3, (2, 3), (2, 1), (1, 2), (1, 3)),
                                (5, (3, 1), (1, 2), (0, 1), (2, 1))], [4, 3], seed=5,
                   density=0.6, weight_scale=3000, shift=9)
    q.validate()
    assert q.version == 2
    x = _inputs(q, 5, 3, scale=3000)
    assert np.array_equal(golden(q, x), loop_reference(q, x, 32))


def test_matches_torch_float64_conv_on_a_lenet_sized_network():
    """A LeNet-5-shaped random network (products < 2**30, sums < 2**40: float64 is exact)."""
    import torch

    q = random_cnn((1, 28, 28), [(20, 5, 1, 0, 2), (50, 5, 1, 0, 2)], [500, 10], seed=0,
                   density=0.2, shift=12)
    x = _inputs(q, 64, 0, scale=256)
    a = torch.from_numpy(x.astype(np.float64)).reshape(64, 1, 28, 28)
    for layer in q.layers:
        w = torch.from_numpy(layer.weights().astype(np.float64))
        b = torch.from_numpy(layer.bias.astype(np.float64))
        if layer.kind == "conv":
            acc = torch.nn.functional.conv2d(a, w.reshape(len(w), a.shape[1], *layer.kernel), b)
        else:
            acc = a.reshape(len(a), -1) @ w.T + b
        acc = torch.remainder(acc + 2**31, 2**32) - 2**31
        y = torch.floor((acc + 2 ** (layer.shift - 1)) / 2**layer.shift).clamp(-32768, 32767)
        y = y.clamp(min=0) if layer.relu else y
        a = torch.nn.functional.max_pool2d(y, 2) if layer.kind == "conv" else y
    assert np.array_equal(golden(q, x), a.numpy().astype(np.int16))


def test_ten_thousand_lenet5_sized_inputs_cpu_time():
    """LeNet-5's shape: 10,000 inputs through the golden model well inside a minute of CPU."""
    q = random_cnn((1, 28, 28), [(20, 5, 1, 0, 2), (50, 5, 1, 0, 2)], [500, 10], seed=1,
                   density=0.1, shift=12)
    x = np.random.default_rng(0).integers(0, 256, (10000, 784)).astype(np.int16)
    t = time.process_time()
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    y = golden(q, x)
    cpu = time.process_time() - t
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    assert y.shape == (10000, 10)
    assert cpu < 60, cpu  # CPU seconds of all threads (measured about 5-10)
    assert c1.ru_maxrss - c0.ru_maxrss < 2_000_000  # KiB: the im2col blocks stay bounded
    assert np.array_equal(y[:500], shift_add_reference(q, x[:500]))


def test_predict_on_flattened_conv_output():
    layer = _conv([0, 1], [[1]], [0], pool=(1, 1))
    q = QNet([layer], input_frac=0, input_shape=(1, 2, 2))
    y = golden(q, np.array([[1, 5, 5, 2]], np.int16))
    assert predict(y).tolist() == [1]  # the first maximum of the flattened map


@pytest.mark.skipif(not long_tests(), reason="1,000 loop-reference examples: LONG=1")
def test_many_random_networks_long():
    rng = np.random.default_rng(7)
    for seed in range(200):
        shape = tuple(int(v) for v in rng.integers([1, 3, 3], [4, 12, 12]))
        q = random_cnn(shape, [(int(rng.integers(1, 6)), int(rng.integers(1, 4)),
                                    int(rng.integers(1, 3)), int(rng.integers(0, 2)), 1)],
                       [int(rng.integers(1, 5))], seed=seed, weight_scale=30000,
                       bias_scale=1 << 20, shift=int(rng.integers(0, 16)))
        x = _inputs(q, 5, seed)
        for acc_bits in (16, 32):
            assert np.array_equal(golden(q, x, acc_bits=acc_bits),
                                  loop_reference(q, x, acc_bits))
