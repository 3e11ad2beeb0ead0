"""The PyTorch golden model: integer-exact evaluation of a qnet (docs/formats.md section 3).

Everything is int64 on the CPU: products and sums are exact (|sum| < in * 2**30 fits easily),
then the accumulator is wrapped to `acc_bits` two's complement, rounded by the shift
(floor((acc + 2**(shift-1)) / 2**shift), computed on the wrapped value without wrapping again),
saturated to int16 and passed through ReLU. The hardware must match these bits exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .qnet import Layer, QNet, check_inputs

DEFAULT_ACC_BITS = 32


def wrap(acc: torch.Tensor, acc_bits: int) -> torch.Tensor:
    """Wrap int64 values to `acc_bits`-bit two's complement."""
    if acc_bits >= 64:
        return acc
    half = 1 << (acc_bits - 1)
    return ((acc + half) & ((1 << acc_bits) - 1)) - half


def layer_accumulators(layer: Layer, a: torch.Tensor, *, acc_bits: int) -> torch.Tensor:
    """acc[b, r] = wrap(bias_r + sum_c codebook[index[r, c]] * a[b, c])."""
    w = torch.from_numpy(layer.weights())  # int64[out, in]
    acc = a.to(torch.int64) @ w.T + torch.from_numpy(layer.bias.astype(np.int64))
    return wrap(acc, acc_bits)


def layer_output(layer: Layer, acc: torch.Tensor) -> torch.Tensor:
    """Rounding shift, int16 saturation and ReLU of the wrapped accumulators."""
    if layer.shift > 0:
        y = (acc + (1 << (layer.shift - 1))) >> layer.shift  # arithmetic shift = floor
    else:
        y = acc
    y = y.clamp(-32768, 32767)
    if layer.relu:
        y = y.clamp(min=0)
    return y


def run_layers(
    qnet: QNet, x: np.ndarray, *, acc_bits: int = DEFAULT_ACC_BITS
) -> list[np.ndarray]:
    """Every layer's int16 output for a batch x: int16[batch, in_0] -> [y_0, ..., y_{L-1}]."""
    if not 2 <= acc_bits <= 64:
        raise InputError(f"acc_bits must be 2..64, not {acc_bits!r}")
    x = check_inputs(x, qnet.in_features)
    a = torch.from_numpy(x.astype(np.int64))
    outs = []
    with torch.no_grad():
        for layer in qnet.layers:
            a = layer_output(layer, layer_accumulators(layer, a, acc_bits=acc_bits))
            outs.append(a.numpy().astype(np.int16))
    return outs


def golden(qnet: QNet, x: np.ndarray, *, acc_bits: int = DEFAULT_ACC_BITS) -> np.ndarray:
    """The network's int16 output for a batch: int16[batch, in_0] -> int16[batch, out_{L-1}]."""
    return run_layers(qnet, x, acc_bits=acc_bits)[-1]


def predict(y: np.ndarray) -> np.ndarray:
    """A classifier's prediction: index of the first maximum of the last layer's output."""
    return np.argmax(y, axis=-1)


def mnist_to_input(pixels: np.ndarray, input_frac: int) -> np.ndarray:
    """MNIST pixels 0..255 -> int16 input vectors: (pixel * 2**input_frac + 127) // 255."""
    p = np.asarray(pixels).reshape(len(pixels), -1).astype(np.int64)
    # input_frac 15 would turn pixel 255 into 32768: saturate like every other int16 value.
    return np.minimum((p * (1 << input_frac) + 127) // 255, 32767).astype(np.int16)
