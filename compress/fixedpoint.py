"""Fixed point: turn a weight-shared fully connected network into a qnet (docs/formats.md,
the qnet file and the numerics).

The integer network the engine runs: the input is a fixed-point value with ``input_frac``
fractional bits: for MNIST ``x = (pixel * 2**input_frac + 127) // 255``
(`golden.mnist_to_input`), for any other data ``clamp(floor(x * 2**input_frac + 0.5))``
(`compress.encode_inputs`, calibration inputs passed as `calib_inputs`). Layer i has
an input with f_i fractional bits and an int16 codebook with w_i fractional bits, so its
accumulator has f_i + w_i; the int32 bias is the float bias at that scale, and the right shift
``f_i + w_i - f_{i+1}`` (rounding, as in the numerics) brings the output to f_{i+1} bits.

Calibration on training data chooses, per layer:

* w_i: the most fractional bits such that the largest centroid still fits int16;
* f_{i+1}: the most fractional bits such that the largest activation seen (times
  2**-headroom) fits int16 (the last layer's logits too), never more than f_i + w_i;
* and then w_i is lowered while the largest accumulator seen (with a safety factor) does not
  fit ``acc_bits`` two's complement.

`to_qnet` returns the qnet plus a calibration record (the frac bits, shifts, the largest
activations and accumulators) for the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .golden import golden, mnist_to_input, predict, run_layers
from .models import LeNet300100
from .qnet import Layer, QNet


@dataclass
class FixedPointConfig:
    input_frac: int = 8
    acc_bits: int = 32
    headroom_bits: int = 0  # extra integer bits of activation headroom beyond the max seen
    acc_margin: float = 2.0  # the largest accumulator seen times this must fit acc_bits
    calib_images: int = 10000
    verify_golden: bool = True  # re-run the test set through golden.golden itself (int64)
    # Bias granularity: each layer's int32 bias rounded to a multiple of 2**k. "auto": per
    # layer the largest k whose integer error on the validation split (else the calibration
    # images) stays within bias_tolerance points of exact biases; or a list of k per layer.
    # Trailing zero bits cost nothing in the .dcz, so coarse biases make the file smaller.
    bias_round: str | list[int] = "exact"
    bias_tolerance: float = 0.0  # percentage points of integer error ("auto")

    def validate(self, n_layers: int | None = None) -> "FixedPointConfig":
        br = self.bias_round
        if isinstance(br, str):
            if br not in ("exact", "auto"):
                raise InputError(f"fixedpoint.bias_round must be exact, auto or a list of bits "
                                 f"per layer, not {br!r}")
        elif not isinstance(br, (list, tuple)) or not all(
                isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 31 for k in br):
            raise InputError(f"fixedpoint.bias_round: a list of bits per layer (0..31), "
                             f"not {br!r}")
        elif n_layers is not None and len(br) != n_layers:
            raise InputError(f"fixedpoint.bias_round: {len(br)} entries for {n_layers} layers")
        if not self.bias_tolerance >= 0:
            raise InputError(f"fixedpoint.bias_tolerance must be >= 0, not "
                             f"{self.bias_tolerance!r}")
        return self


@dataclass
class Calibration:
    weight_frac: list[int] = field(default_factory=list)
    act_frac: list[int] = field(default_factory=list)  # input frac of each layer, then output
    shifts: list[int] = field(default_factory=list)
    max_act: list[float] = field(default_factory=list)
    max_acc_log2: list[float] = field(default_factory=list)
    bias_round: list[int] = field(default_factory=list)  # biases are multiples of 2**k


def fc_chain(model: nn.Module) -> list[tuple[nn.Linear, bool]]:
    """The (Linear, relu) layers of a fully connected network the engine can run."""
    if isinstance(model, LeNet300100):
        return [(model.fc1, True), (model.fc2, True), (model.fc3, False)]
    # Any other module (nn.Sequential, a user's class): trace its forward; anything but a
    # Linear/ReLU chain is refused with one line naming the op.
    from .trace import linear_chain

    return [(layer.linear, layer.relu) for layer in linear_chain(model)]


def _frac_for(max_abs: float, limit: int = 32767) -> int:
    """Most fractional bits f with max_abs * 2**f <= limit."""
    if max_abs <= 0:
        return 15
    return int(math.floor(math.log2(limit / max_abs)))


def to_qnet(model: nn.Module, codebooks: dict[str, np.ndarray], indices: dict[str, np.ndarray],
            calib_pixels: np.ndarray | None, cfg: FixedPointConfig | None = None, *,
            calib_inputs: np.ndarray | None = None) -> tuple[QNet, Calibration]:
    """Fixed-point qnet from shared weights (codebook[0] = 0) and float biases, calibrated.

    Calibration data: MNIST `calib_pixels` (0..255, mapped with `mnist_to_input`), or any
    network's `calib_inputs`, already the engine's int16 inputs [n, in_0] at cfg.input_frac
    fractional bits (`compress.encode_inputs`).
    """
    cfg = cfg or FixedPointConfig()
    chain = fc_chain(model)
    names = {id(m): n for n, m in model.named_modules()}
    if calib_inputs is not None:
        x_int = np.asarray(calib_inputs)[: cfg.calib_images]
        if x_int.dtype != np.int16 or x_int.ndim != 2 or \
                x_int.shape[1] != chain[0][0].in_features:
            raise InputError(f"fixed point: calibration inputs must be int16[n, "
                             f"{chain[0][0].in_features}], got {x_int.dtype}{list(x_int.shape)}")
    else:
        pixels = np.asarray(calib_pixels)[: cfg.calib_images]
        x_int = mnist_to_input(pixels, cfg.input_frac)
    a = torch.from_numpy(x_int.astype(np.float64)) / (1 << cfg.input_frac)
    cal = Calibration(act_frac=[cfg.input_frac])
    layers: list[Layer] = []
    a_int = torch.from_numpy(x_int.astype(np.int64))
    for li, (lin, relu) in enumerate(chain):
        name = names[id(lin)]
        if name not in codebooks:
            raise InputError(f"fixed point: no codebook for layer {name}")
        cb = np.asarray(codebooks[name], dtype=np.float64)
        idx = np.asarray(indices[name])
        if cb[0] != 0:
            raise InputError(f"fixed point: codebook of {name} must start with the zero")
        bias = (lin.bias.detach().cpu().double().numpy() if lin.bias is not None
                else np.zeros(lin.out_features))
        f_in = cal.act_frac[-1]
        w_frac = min(_frac_for(float(np.abs(cb).max())), 24)
        # Float output of the shared-weight layer on the calibration set.
        w = torch.from_numpy(cb[idx.astype(np.int64)])
        y = a @ w.T + torch.from_numpy(bias)
        if relu:
            y = y.clamp(min=0)
        max_act = float(y.abs().max()) * 2.0 ** cfg.headroom_bits
        while True:
            f_out = min(_frac_for(max_act), f_in + w_frac)
            cb_int = np.clip(np.round(cb * 2.0 ** w_frac), -32768, 32767).astype(np.int16)
            b_int64 = np.round(bias * 2.0 ** (f_in + w_frac))
            acc = _int_matmul(a_int, cb_int.astype(np.int64)[idx.astype(np.int64)]) \
                + torch.from_numpy(b_int64.astype(np.int64))
            max_acc = max(float(acc.abs().max()), float(np.abs(b_int64).max(initial=0)), 1.0)
            fits = max_acc * cfg.acc_margin < 2.0 ** (cfg.acc_bits - 1) and \
                np.abs(b_int64).max(initial=0) < 2**31
            if fits or w_frac <= 0:
                break
            w_frac -= 1
        if not fits:
            raise InputError(f"fixed point: layer {name} does not fit {cfg.acc_bits}-bit "
                             "accumulators")
        shift = f_in + w_frac - f_out
        layer = Layer(codebook=cb_int, index=idx.astype(np.uint8),
                      bias=b_int64.astype(np.int32), shift=int(shift), relu=bool(relu))
        layers.append(layer)
        cal.weight_frac.append(int(w_frac))
        cal.act_frac.append(int(f_out))
        cal.shifts.append(int(shift))
        cal.max_act.append(float(y.abs().max()))
        cal.max_acc_log2.append(math.log2(max_acc))
        # Continue with the integer activations the engine will see (exact golden arithmetic).
        from .golden import layer_output, wrap

        acc = _int_matmul(a_int, layer.weights()) + torch.from_numpy(layer.bias.astype(np.int64))
        a_int = layer_output(layer, wrap(acc, cfg.acc_bits))
        a = y
    qnet = QNet(layers=layers, input_frac=cfg.input_frac)
    qnet.validate(index_bits=8)
    return qnet, cal


def _int_matmul(a: torch.Tensor, w: np.ndarray) -> torch.Tensor:
    """a @ w.T for int64 a [n, in] and w [out, in]: float64 BLAS when every sum is an integer
    below 2**53 (then exactly the int64 result, many times faster), int64 otherwise."""
    bound = int(a.abs().max()) * int(np.abs(w).max(initial=0)) * w.shape[1] if a.numel() else 0
    if bound < 2**53:
        return (a.double() @ torch.from_numpy(w.astype(np.float64)).T).to(torch.int64)
    return a @ torch.from_numpy(w).T


def _exact_in_float64(layer: Layer, a_max: int) -> bool:
    """Every partial sum of the layer is an integer below 2**53, so float64 sums are exact."""
    bound = int(np.abs(layer.codebook.astype(np.int64)).max(initial=0)) * a_max * \
        layer.in_features + int(np.abs(layer.bias.astype(np.int64)).max(initial=0))
    return bound < 2**53


def run_integer(qnet: QNet, x: np.ndarray, *, acc_bits: int = 32) -> tuple[np.ndarray, float]:
    """The golden model's output bits, with the matrix products done by float64 BLAS.

    Products are < 2**30 and a layer's sums stay far below 2**53, so the float64 sums are the
    exact integers (checked per layer; the int64 golden path is used otherwise); wrap, shift,
    saturation and ReLU are `golden.layer_output` itself. Returns (output, log2 of the largest
    |accumulator| before wrapping). tests/test_compress_fixedpoint.py checks it against
    `golden.run_layers` bit for bit.
    """
    from .golden import layer_accumulators, layer_output, wrap

    a = torch.from_numpy(np.asarray(x, dtype=np.int64))
    best = 1.0
    for layer in qnet.layers:
        if _exact_in_float64(layer, 32768):
            w = torch.from_numpy(layer.weights().astype(np.float64))
            acc = (a.double() @ w.T).to(torch.int64) + \
                torch.from_numpy(layer.bias.astype(np.int64))
            best = max(best, float(acc.abs().max()))
            acc = wrap(acc, acc_bits)
        else:
            full = layer_accumulators(layer, a, acc_bits=64)
            best = max(best, float(full.abs().max()))
            acc = wrap(full, acc_bits)
        a = layer_output(layer, acc)
    return a.numpy().astype(np.int16), math.log2(best)


def integer_error(qnet: QNet, pixels: np.ndarray, labels: np.ndarray, *,
                  acc_bits: int = 32, batch: int = 5000) -> float:
    """Error in percent of the integer network (golden-model bits) on MNIST pixels."""
    wrong = 0
    for i in range(0, len(pixels), batch):
        x = mnist_to_input(pixels[i : i + batch], qnet.input_frac)
        y, _ = run_integer(qnet, x, acc_bits=acc_bits)
        wrong += int(np.sum(predict(y) != labels[i : i + batch]))
    return 100.0 * wrong / max(len(pixels), 1)


def max_accumulator_log2(qnet: QNet, pixels: np.ndarray, *, batch: int = 5000) -> float:
    """log2 of the largest |accumulator| over the images (before wrapping)."""
    best = 0.0
    for i in range(0, len(pixels), batch):
        x = mnist_to_input(pixels[i : i + batch], qnet.input_frac)
        best = max(best, run_integer(qnet, x, acc_bits=64)[1])
    return best


def round_bias(bias: np.ndarray, k: int) -> np.ndarray:
    """int32 biases rounded to the nearest multiple of 2**k (halves up), kept in int32."""
    if k <= 0:
        return np.asarray(bias, dtype=np.int32).copy()
    b = np.asarray(bias, dtype=np.int64)
    r = ((b + (1 << (k - 1))) >> k) << k
    # A bias near the int32 limit may round past it: the largest multiple inside instead.
    top = ((2**31 - 1) >> k) << k
    return np.clip(r, -top, top).astype(np.int32)


def _with_bias(layer: Layer, bias: np.ndarray) -> Layer:
    return Layer(codebook=layer.codebook, index=layer.index, bias=bias, shift=layer.shift,
                 relu=layer.relu)


class _Tail:
    """Wrong predictions of the layers from i on, for int64 activations entering layer i.

    The weights are converted once (float64 when every sum is exact, see `run_integer`), as
    the same tail runs for every candidate rounding.
    """

    def __init__(self, layers: list[Layer], labels: np.ndarray, acc_bits: int):
        self.layers, self.labels, self.acc_bits = layers, labels, acc_bits
        self.w = [torch.from_numpy(ly.weights().astype(np.float64))
                  if _exact_in_float64(ly, 32768) else None for ly in layers]

    def errors(self, a: torch.Tensor, start: int) -> int:
        from .golden import layer_accumulators, layer_output, wrap

        for i in range(start, len(self.layers)):
            ly = self.layers[i]
            if self.w[i] is not None:
                acc = (a.double() @ self.w[i].T).to(torch.int64) + \
                    torch.from_numpy(ly.bias.astype(np.int64))
                a = layer_output(ly, wrap(acc, self.acc_bits))
            else:
                a = layer_output(ly, layer_accumulators(ly, a, acc_bits=self.acc_bits))
        return int(np.sum(predict(a.numpy()) != self.labels))


def bias_bits_fixed(qnet: QNet, ks: list[int]) -> QNet:
    """The qnet with layer i's bias rounded to a multiple of 2**ks[i]."""
    if len(ks) != qnet.num_layers:
        raise InputError(f"bias rounding: {len(ks)} entries for {qnet.num_layers} layers")
    return QNet(layers=[_with_bias(ly, round_bias(ly.bias, k)) for ly, k in zip(qnet.layers, ks)],
                input_frac=qnet.input_frac, meta=dict(qnet.meta))


def choose_bias_rounding(qnet: QNet, x: np.ndarray, labels: np.ndarray, *,
                         tolerance: float = 0.0, acc_bits: int = 32) -> tuple[QNet, list[int]]:
    """Per layer, in order, the coarsest bias granularity 2**k the data allows.

    `x`: the engine's int16 inputs, `labels` their classes (a validation split). k grows from
    0 while the integer error stays within `tolerance` percentage points of the error with
    exact biases, and stops at the first k over it (a lucky coarse k past a failing one is not
    taken). Earlier layers keep their chosen rounding while later ones are tried. Returns the
    rounded qnet and the k per layer.
    """
    from .golden import layer_output, wrap

    labels = np.asarray(labels)
    a = torch.from_numpy(np.asarray(x, dtype=np.int64))
    layers, ks = list(qnet.layers), []
    tail = _Tail(layers, labels, acc_bits)
    allowed = tail.errors(a, 0) + tolerance / 100.0 * len(labels) + 1e-9
    for i, layer in enumerate(layers):
        pre = _int_matmul(a, layer.weights())  # the accumulators without the bias
        top = int(np.abs(layer.bias.astype(np.int64)).max(initial=0)).bit_length() + 1
        best = 0
        for k in range(1, min(top, 31) + 1):
            b = torch.from_numpy(round_bias(layer.bias, k).astype(np.int64))
            if tail.errors(layer_output(layer, wrap(pre + b, acc_bits)), i + 1) > allowed:
                break
            best = k
        layers[i] = _with_bias(layer, round_bias(layer.bias, best))
        ks.append(best)
        b = torch.from_numpy(layers[i].bias.astype(np.int64))
        a = layer_output(layers[i], wrap(pre + b, acc_bits))
    return QNet(layers=layers, input_frac=qnet.input_frac, meta=dict(qnet.meta)), ks


__all__ = ["FixedPointConfig", "Calibration", "fc_chain", "to_qnet", "integer_error",
           "max_accumulator_log2", "run_integer", "run_layers", "round_bias",
           "choose_bias_rounding", "bias_bits_fixed"]
