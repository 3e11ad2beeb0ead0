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


def random_inputs(
    n: int, width: int, *, seed: int = 0, density: float = 0.2, scale: int = 256
) -> np.ndarray:
    """int16[n, width] inputs, non-negative like MNIST pixels, `density` of them non-zero."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, scale + 1, size=(n, width))
    return np.where(rng.random((n, width)) < density, x, 0).astype(np.int16)
