"""Deterministic synthetic qnets for tests and for running the engine without a trained model."""

from __future__ import annotations

import numpy as np

from .qnet import Layer, QNet


def random_qnet(
    sizes: list[int] | tuple[int, ...] = (784, 300, 100, 10),
    *,
    seed: int = 0,
    density: float | list[float] = 0.08,
    index_bits: int = 4,
    codebook_size: int | None = None,
    weight_scale: int = 2000,
    bias_scale: int = 1 << 16,
    shift: int | list[int] = 12,
    relu_last: bool = False,
    input_frac: int = 8,
) -> QNet:
    """A random network of fully connected layers with sizes[0] inputs.

    Hidden layers use ReLU; `density` is the fraction of non-zero weights per layer.
    """
    rng = np.random.default_rng(seed)
    n_layers = len(sizes) - 1
    dens = density if isinstance(density, (list, tuple)) else [density] * n_layers
    shifts = shift if isinstance(shift, (list, tuple)) else [shift] * n_layers
    k = codebook_size or (1 << index_bits)
    layers = []
    for i in range(n_layers):
        n_in, n_out = sizes[i], sizes[i + 1]
        codebook = np.zeros(k, dtype=np.int16)
        codebook[1:] = rng.integers(-weight_scale, weight_scale + 1, size=k - 1)
        mask = rng.random((n_out, n_in)) < dens[i]
        index = np.where(mask, rng.integers(1, max(k, 2), size=(n_out, n_in)), 0).astype(np.uint8)
        if k == 1:
            index[:] = 0
        bias = rng.integers(-bias_scale, bias_scale + 1, size=n_out).astype(np.int32)
        layers.append(
            Layer(
                codebook=codebook,
                index=index,
                bias=bias,
                shift=int(shifts[i]),
                relu=(i < n_layers - 1) or relu_last,
            )
        )
    return QNet(layers=layers, input_frac=input_frac)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def random_cnn(
    input_shape: tuple[int, int, int] = (1, 28, 28),
    convs=((6, 5, 1, 0, 2), (12, 5, 1, 0, 2)),
    fc: list[int] | tuple[int, ...] = (10,),
    *,
    seed: int = 0,
    density: float = 0.3,
    index_bits: int = 4,
    weight_scale: int = 2000,
    bias_scale: int = 1 << 14,
    shift: int = 10,
    relu_last: bool = False,
    input_frac: int = 8,
) -> QNet:
    """A random version 2 qnet: conv layers, each (out_ch, kernel, stride, padding, pool) with
    an int or an (h, w) pair for the last four, then fully connected layers of sizes `fc` on
    the flattened map. Every layer but the last has ReLU; `density` of the weights non-zero."""
    rng = np.random.default_rng(seed)
    k = 1 << index_bits
    layers = []
    c, h, w = (int(d) for d in input_shape)
    n_layers = len(convs) + len(fc)

    def codebook():
        cb = np.zeros(k, dtype=np.int16)
        cb[1:] = rng.integers(-weight_scale, weight_scale + 1, size=k - 1)
        return cb

    def index(rows, cols):
        mask = rng.random((rows, cols)) < density
        return np.where(mask, rng.integers(1, k, size=(rows, cols)), 0).astype(np.uint8)

    for oc, kernel, stride, padding, pool in convs:
        kh, kw = _pair(kernel)
        (sh, sw), (ph, pw), (qh, qw) = _pair(stride), _pair(padding), _pair(pool)
        layers.append(Layer(codebook=codebook(), index=index(oc, c * kh * kw),
                            bias=rng.integers(-bias_scale, bias_scale + 1, oc).astype(np.int32),
                            shift=shift, relu=len(layers) < n_layers - 1 or relu_last,
                            kind="conv", kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw),
                            pool=(qh, qw)))
        h, w = ((h + 2 * ph - kh) // sh + 1) // qh, ((w + 2 * pw - kw) // sw + 1) // qw
        c = oc
    n_in = c * h * w
    for n_out in fc:
        layers.append(Layer(codebook=codebook(), index=index(n_out, n_in),
                            bias=rng.integers(-bias_scale, bias_scale + 1, n_out).astype(np.int32),
                            shift=shift, relu=len(layers) < n_layers - 1 or relu_last))
        n_in = n_out
    return QNet(layers=layers, input_frac=input_frac, input_shape=tuple(input_shape))


def random_inputs(
    n: int, width: int, *, seed: int = 0, density: float = 0.2, scale: int = 256
) -> np.ndarray:
    """int16[n, width] inputs, non-negative like MNIST pixels, `density` of them non-zero."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, scale + 1, size=(n, width))
    return np.where(rng.random((n, width)) < density, x, 0).astype(np.int16)
