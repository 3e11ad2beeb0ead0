"""The PyTorch golden model: integer-exact evaluation of a qnet (docs/formats.md sections 3, 7).

Everything is int64 on the CPU: products and sums are exact (|sum| < in * 2**30 fits easily),
then the accumulator is wrapped to `acc_bits` two's complement, rounded by the shift
(floor((acc + 2**(shift-1)) / 2**shift), computed on the wrapped value without wrapping again),
saturated to int16 and passed through ReLU. A conv layer computes the same per output channel
and position, its products taken from the zero-padded input map (im2col: the input windows
gathered into rows, then one int64 matrix product), and max pooling of the int16 results comes
last. The hardware must match these bits exactly.

A layer's input and output travel flattened, [batch, values], in (C, H, W) row-major order;
`QNet.layer_shapes` gives their shapes.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .qnet import Layer, QNet, check_inputs

DEFAULT_ACC_BITS = 32
# im2col rows are gathered in blocks of at most this many int64 values (64 MiB), whatever the
# batch or map size: a block is some examples, or some output rows of one example.
IM2COL_BLOCK = 1 << 23


def wrap(acc: torch.Tensor, acc_bits: int) -> torch.Tensor:
    """Wrap int64 values to `acc_bits`-bit two's complement."""
    if acc_bits >= 64:
        return acc
    half = 1 << (acc_bits - 1)
    return ((acc + half) & ((1 << acc_bits) - 1)) - half


def layer_accumulators(layer: Layer, a: torch.Tensor, *, acc_bits: int,
                       in_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """acc = wrap(bias + products): fc [batch, out]; conv [batch, out_ch, Ho, Wo] (before
    pooling). `a` is the int64 input [batch, values]; `in_shape` a conv layer's [C, H, W]."""
    return wrap(add_bias(layer, layer_sums(layer, a, in_shape)), acc_bits)


def layer_sums(layer: Layer, a: torch.Tensor, in_shape: tuple[int, ...] | None = None,
               w: torch.Tensor | None = None) -> torch.Tensor:
    """The exact int64 sums of products without the bias, before wrapping: fc [batch, out],
    conv [batch, out_ch, Ho, Wo]. `w` may give the int64 weight matrix already made."""
    if w is None:
        w = torch.from_numpy(layer.weights())  # int64[out, in]
    a = a.to(torch.int64)
    if not layer.is_conv:
        return a @ w.T
    if in_shape is None or len(in_shape) != 3:
        raise InputError(f"a conv layer takes a [C, H, W] map, not {in_shape}")
    return conv_sums(a.reshape(len(a), *in_shape), w, layer.kernel, layer.stride,
                     layer.padding)


def conv_sums(a: torch.Tensor, w: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """sum over ic, dy, dx of w[oc, (ic*kh + dy)*kw + dx] * a[b, ic, y*sh + dy - ph,
    x*sw + dx - pw], zero outside the map: [batch, out_ch, Ho, Wo], in the dtype of a and w."""
    (kh, kw), (sh, sw), (ph, pw) = (tuple(int(v) for v in t) for t in (kernel, stride, padding))
    b, c, h, wd = a.shape
    if ph or pw:
        a = torch.nn.functional.pad(a, (pw, pw, ph, ph))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    oc, fan_in = w.shape
    out = torch.empty((b, oc, ho, wo), dtype=a.dtype)
    wt = w.T.contiguous()
    row = wo * fan_in  # im2col values of one output row of one example
    rows = max(1, min(ho, IM2COL_BLOCK // max(row, 1)))  # output rows of a block
    per = max(1, IM2COL_BLOCK // max(row * ho, 1))  # examples of a block (whole maps)
    for b0 in range(0, b, per if rows == ho else 1):
        b1 = min(b, b0 + (per if rows == ho else 1))
        for y0 in range(0, ho, rows):
            y1 = min(ho, y0 + rows)
            band = a[b0:b1, :, y0 * sh:(y1 - 1) * sh + kh, :]
            # [n, C, rows, Wo, kh, kw] -> rows of (ic, dy, dx), PyTorch's weight order
            cols = band.unfold(2, kh, sh).unfold(3, kw, sw).permute(0, 2, 3, 1, 4, 5)
            prod = cols.reshape(-1, fan_in) @ wt
            out[b0:b1, :, y0:y1, :] = prod.reshape(b1 - b0, y1 - y0, wo, oc).permute(0, 3, 1, 2)
    return out


def add_bias(layer: Layer, sums: torch.Tensor, bias: np.ndarray | None = None) -> torch.Tensor:
    """sums + bias, the bias per output row (fc) or per output channel (conv)."""
    b = torch.from_numpy(np.asarray(layer.bias if bias is None else bias).astype(np.int64))
    return sums + (b.reshape(-1, 1, 1) if sums.ndim == 4 else b)


def layer_output(layer: Layer, acc: torch.Tensor) -> torch.Tensor:
    """Rounding shift, int16 saturation and ReLU of the wrapped accumulators (elementwise)."""
    if layer.shift > 0:
        y = (acc + (1 << (layer.shift - 1))) >> layer.shift  # arithmetic shift = floor
    else:
        y = acc
    return y.clamp(0 if layer.relu else -32768, 32767)


def max_pool(y: torch.Tensor, pool) -> torch.Tensor:
    """Max of each qh x qw window of [batch, C, H, W] (stride = window, no padding, floor)."""
    qh, qw = (int(v) for v in pool)
    if qh == 1 and qw == 1:
        return y
    b, c, h, w = y.shape
    ho, wo = h // qh, w // qw
    y = y[:, :, : ho * qh, : wo * qw].reshape(b, c, ho, qh, wo, qw)
    return y.amax(dim=(3, 5))


def layer_finish(layer: Layer, acc: torch.Tensor) -> torch.Tensor:
    """Shift, saturation, ReLU, then a conv layer's pooling, of the wrapped accumulators;
    flattened [batch, values].

    The pooling is done first here: shift (a floor), saturation and ReLU never decrease, and
    for a function f that never decreases max(f(u), f(v)) = f(max(u, v)), so the maximum of
    the window's accumulators, then f, gives the same bits with a quarter of the work (2x2)."""
    if layer.is_conv:
        acc = max_pool(acc, layer.pool)
    y = layer_output(layer, acc)
    return y.reshape(len(y), -1)


def layer_forward(layer: Layer, a: torch.Tensor, in_shape: tuple[int, ...], *,
                  acc_bits: int) -> torch.Tensor:
    """One layer of the golden model: int64 [batch, values] in, int64 [batch, values] out."""
    return layer_finish(layer, layer_accumulators(layer, a, acc_bits=acc_bits,
                                                  in_shape=in_shape))


def _acc_bound(layer: Layer, w: torch.Tensor) -> tuple[int, int]:
    """(the largest sum of |weights| of one output row, the largest |bias|): every accumulator
    of an input with |a| <= m has |acc| <= row * m + bias (a conv window sees a subset of its
    row's inputs, the zeros of the padding included)."""
    row = int(w.abs().sum(1).max()) if w.numel() else 0
    return row, int(np.abs(layer.bias.astype(np.int64)).max(initial=0))


def batch_size(qnet: QNet, shapes=None) -> int:
    """Examples per block of a batch: the largest map of one example (a layer's input or its
    output before pooling) times the block fits IM2COL_BLOCK int64 values."""
    shapes = shapes or qnet.layer_shapes()
    big = 1
    for layer, (sin, sout) in zip(qnet.layers, shapes):
        pre = int(np.prod(sout))
        if layer.is_conv:
            pre *= int(layer.pool[0]) * int(layer.pool[1])
        big = max(big, int(np.prod(sin)), pre)
    return max(1, IM2COL_BLOCK // big)


def run_layers(
    qnet: QNet, x: np.ndarray, *, acc_bits: int = DEFAULT_ACC_BITS
) -> list[np.ndarray]:
    """Every layer's int16 output for a batch x, flattened: int16[batch, in_0] ->
    [y_0, ..., y_{L-1}] with y_i of shape [batch, values of layer i's output]."""
    return _run(qnet, x, acc_bits, every=True)


def golden(qnet: QNet, x: np.ndarray, *, acc_bits: int = DEFAULT_ACC_BITS) -> np.ndarray:
    """The network's int16 output for a batch: int16[batch, in_0] -> int16[batch, out_{L-1}]."""
    return _run(qnet, x, acc_bits, every=False)[-1]


def _run(qnet: QNet, x: np.ndarray, acc_bits: int, every: bool) -> list[np.ndarray]:
    """The batch in blocks of `batch_size` examples (memory stays bounded), each through every
    layer; the outputs of every layer (every) or of the last, int16, flattened."""
    if not 2 <= acc_bits <= 64:
        raise InputError(f"acc_bits must be 2..64, not {acc_bits!r}")
    x = check_inputs(x, qnet.in_features)
    shapes = qnet.layer_shapes()
    step = batch_size(qnet, shapes)
    weights = [torch.from_numpy(ly.weights()) for ly in qnet.layers]
    bounds = [_acc_bound(ly, w) for ly, w in zip(qnet.layers, weights)]
    parts: list[list[np.ndarray]] = [[] for _ in qnet.layers] if every else [[]]
    with torch.no_grad():
        for b0 in range(0, len(x), step):
            a = torch.from_numpy(x[b0:b0 + step].astype(np.int64))
            for i, (layer, (in_shape, _)) in enumerate(zip(qnet.layers, shapes)):
                acc = add_bias(layer, layer_sums(layer, a, in_shape, weights[i]))
                row, bias = bounds[i]
                if row * int(a.abs().max()) + bias >= 1 << (acc_bits - 1):
                    acc = wrap(acc, acc_bits)  # else every |acc| < 2**(acc_bits-1): no wrap
                a = layer_finish(layer, acc)
                if every:
                    parts[i].append(a.numpy().astype(np.int16))
            if not every:
                parts[0].append(a.numpy().astype(np.int16))
    return [np.concatenate(p) for p in parts]


def predict(y: np.ndarray) -> np.ndarray:
    """A classifier's prediction: index of the first maximum of the last layer's output."""
    return np.argmax(y, axis=-1)


def mnist_to_input(pixels: np.ndarray, input_frac: int) -> np.ndarray:
    """MNIST pixels 0..255 -> int16 input vectors: (pixel * 2**input_frac + 127) // 255."""
    p = np.asarray(pixels).reshape(len(pixels), -1).astype(np.int64)
    # input_frac 15 would turn pixel 255 into 32768: saturate like every other int16 value.
    return np.minimum((p * (1 << input_frac) + 127) // 255, 32767).astype(np.int16)
