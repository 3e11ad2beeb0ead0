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

A conv layer is converted the same way, per layer: its input map has f_i fractional bits, its
codebook w_i, its bias is at f_i + w_i and its shift brings the output to f_{i+1}; the largest
activation is taken before the pooling (the values the shift and the saturation see). The
calibration runs in blocks of examples, so a conv network's maps never all sit in memory.

`to_qnet` returns the qnet plus a calibration record (the frac bits, shifts, the largest
activations and accumulators) for the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import golden as G
from .errors import InputError
from .golden import mnist_to_input, predict, run_layers
from .models import LeNet5, LeNet300100
from .qnet import Layer, QNet
from .trace import Chain, ChainLayer, conv_padding


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


def model_chain(model: nn.Module) -> tuple[Chain, tuple[int, ...] | None]:
    """(the layer chain, one example's input shape or None if only data can tell) of a network:
    the LeNets by their definition, any other module by tracing it (`trace.network_chain`)."""
    if isinstance(model, LeNet300100):
        return Chain([ChainLayer("fc1", model.fc1, True), ChainLayer("fc2", model.fc2, True),
                      ChainLayer("fc3", model.fc3, False)]), (784,)
    if isinstance(model, LeNet5):
        # Caffe's LeNet-5: no ReLU after the convolutions (compress/models.py)
        return Chain([ChainLayer("conv1", model.conv1, False, (2, 2)),
                      ChainLayer("conv2", model.conv2, False, (2, 2)),
                      ChainLayer("fc1", model.fc1, True), ChainLayer("fc2", model.fc2, False)]), \
            (1, 28, 28)
    from .trace import network_chain

    chain = network_chain(model)
    return chain, ((chain[0].module.in_features,) if chain[0].kind == "fc" else None)


def _frac_for(max_abs: float, limit: int = 32767) -> int:
    """Most fractional bits f with max_abs * 2**f <= limit."""
    if max_abs <= 0:
        return 15
    return int(math.floor(math.log2(limit / max_abs)))


def _geometry(c: ChainLayer) -> dict:
    """A chain layer's kind and conv geometry, as the qnet's Layer fields."""
    if c.kind != "conv":
        return {"kind": "fc"}
    m = c.module
    return {"kind": "conv", "kernel": tuple(int(k) for k in m.kernel_size),
            "stride": tuple(int(v) for v in m.stride), "padding": conv_padding(m),
            "pool": tuple(int(v) for v in c.pool)}


def _float_block(c: ChainLayer, w: torch.Tensor, b: torch.Tensor, a: torch.Tensor,
                 in_shape: tuple[int, ...]) -> torch.Tensor:
    """The float64 output of one chain layer with weights w (its weight's shape) on a block
    a [n, values]: before pooling, after the ReLU."""
    if c.kind == "conv":
        m = c.module
        y = torch.nn.functional.conv2d(a.reshape(len(a), *in_shape), w, b, stride=m.stride,
                                       padding=conv_padding(m))
    else:
        y = a @ w.T + b
    return y.clamp(min=0) if c.relu else y


def _pool_flat(c: ChainLayer, y: torch.Tensor) -> torch.Tensor:
    if c.kind == "conv" and tuple(c.pool) != (1, 1):
        y = torch.nn.functional.max_pool2d(y, c.pool)
    return y.reshape(len(y), -1)


def to_qnet(model: nn.Module, codebooks: dict[str, np.ndarray], indices: dict[str, np.ndarray],
            calib_pixels: np.ndarray | None, cfg: FixedPointConfig | None = None, *,
            calib_inputs: np.ndarray | None = None, chain: Chain | None = None,
            input_shape: tuple[int, ...] | None = None) -> tuple[QNet, Calibration]:
    """Fixed-point qnet from shared weights (codebook[0] = 0) and float biases, calibrated.

    Calibration data: MNIST `calib_pixels` (0..255, mapped with `mnist_to_input`), or any
    network's `calib_inputs`, already the engine's int16 inputs [n, in_0] at cfg.input_frac
    fractional bits (`compress.encode_inputs`). `chain` and `input_shape` (one example, [C, H,
    W] for a conv network) default to what `model_chain` finds.
    """
    cfg = cfg or FixedPointConfig()
    found, shape0 = (chain, None) if chain is not None else model_chain(model)
    chain = found
    input_shape = tuple(input_shape or shape0 or ())
    if not input_shape:
        raise InputError("fixed point: the input shape of a conv network is needed "
                         "(input_shape=(C, H, W))")
    width = math.prod(input_shape)
    if calib_inputs is not None:
        x_int = np.asarray(calib_inputs)[: cfg.calib_images]
        if x_int.dtype != np.int16 or x_int.ndim != 2 or x_int.shape[1] != width:
            raise InputError(f"fixed point: calibration inputs must be int16[n, {width}], got "
                             f"{x_int.dtype}{list(x_int.shape)}")
    else:
        pixels = np.asarray(calib_pixels)[: cfg.calib_images]
        x_int = mnist_to_input(pixels, cfg.input_frac)
    n = len(x_int)
    cal = Calibration(act_frac=[cfg.input_frac])
    layers: list[Layer] = []
    a_int = x_int  # int16 [n, values]: the integer network's input to the layer
    a_flt = x_int.astype(np.float32) / np.float32(1 << cfg.input_frac)  # the float network's
    shape = input_shape
    for c in chain:
        name = c.name
        if name not in codebooks:
            raise InputError(f"fixed point: no codebook for layer {name}")
        cb = np.asarray(codebooks[name], dtype=np.float64)
        idx = np.asarray(indices[name]).reshape(len(indices[name]), -1)
        if cb[0] != 0:
            raise InputError(f"fixed point: codebook of {name} must start with the zero")
        m = c.module
        n_out = idx.shape[0]
        bias = (m.bias.detach().cpu().double().numpy() if m.bias is not None
                else np.zeros(n_out))
        geo = _geometry(c)
        f_in = cal.act_frac[-1]
        w_frac = min(_frac_for(float(np.abs(cb).max())), 24)
        # The float output of the shared-weight layer on the calibration set, in blocks.
        w = torch.from_numpy(cb[idx.astype(np.int64)].reshape(m.weight.shape))
        b = torch.from_numpy(bias)
        proto = Layer(codebook=np.zeros(1, np.int16), index=idx.astype(np.uint8),
                      bias=np.zeros(n_out, np.int32), shift=0, relu=c.relu, **geo)
        step = _block(proto, shape)
        peak, nxt = 0.0, []
        with torch.no_grad():
            for b0 in range(0, n, step):
                y = _float_block(c, w, b, torch.from_numpy(a_flt[b0:b0 + step]).double(), shape)
                peak = max(peak, float(y.abs().max()) if y.numel() else 0.0)
                nxt.append(_pool_flat(c, y).float().numpy())
        max_act = peak * 2.0 ** cfg.headroom_bits
        while True:
            f_out = min(_frac_for(max_act), f_in + w_frac)
            cb_int = np.clip(np.round(cb * 2.0 ** w_frac), -32768, 32767).astype(np.int16)
            b_int64 = np.round(bias * 2.0 ** (f_in + w_frac))
            layer = Layer(codebook=cb_int, index=idx.astype(np.uint8),
                          bias=np.clip(b_int64, -2**31, 2**31 - 1).astype(np.int32),
                          shift=int(f_in + w_frac - f_out), relu=bool(c.relu), **geo)
            # The integer layer on the engine's own inputs: largest accumulator, and the
            # outputs the next layer sees (exact golden arithmetic).
            run = _Runner(QNet([layer], input_frac=0, input_shape=shape), cfg.acc_bits)
            max_acc, out_int = 1.0, []
            for b0 in range(0, n, step):
                acc = run.accumulators(0, torch.from_numpy(a_int[b0:b0 + step].astype(np.int64)))
                if acc.numel():
                    max_acc = max(max_acc, float(acc.abs().max()))
                out_int.append(run.finish(0, acc).numpy().astype(np.int16))
            max_acc = max(max_acc, float(np.abs(b_int64).max(initial=0)))
            fits = max_acc * cfg.acc_margin < 2.0 ** (cfg.acc_bits - 1) and \
                np.abs(b_int64).max(initial=0) < 2**31
            if fits or w_frac <= 0:
                break
            w_frac -= 1
        if not fits:
            raise InputError(f"fixed point: layer {name} does not fit {cfg.acc_bits}-bit "
                             "accumulators")
        layers.append(layer)
        cal.weight_frac.append(int(w_frac))
        cal.act_frac.append(int(f_out))
        cal.shifts.append(int(layer.shift))
        cal.max_act.append(peak)
        cal.max_acc_log2.append(math.log2(max_acc))
        a_int = np.concatenate(out_int) if out_int else np.zeros((0, 0), np.int16)
        a_flt = np.concatenate(nxt) if nxt else np.zeros((0, 0), np.float32)
        shape = run.shapes[0][1]
    qnet = QNet(layers=layers, input_frac=cfg.input_frac, input_shape=input_shape)
    qnet.validate(index_bits=8)
    return qnet, cal


def _block(layer: Layer, in_shape: tuple[int, ...]) -> int:
    """Examples per block for one layer (its maps and im2col stay within golden's block)."""
    q = QNet([layer], input_frac=0, input_shape=in_shape)
    per = max(math.prod(in_shape), math.prod(q.layer_shapes()[0][1]) * math.prod(layer.pool))
    if layer.is_conv:
        ho_wo = math.prod(q.layer_shapes()[0][1][1:]) * math.prod(layer.pool)
        per = max(per, ho_wo * layer.in_features)
    return max(1, G.IM2COL_BLOCK // per)


def _exact_in_float64(layer: Layer, a_max: int) -> bool:
    """Every partial sum of the layer is an integer below 2**53, so float64 sums are exact."""
    bound = int(np.abs(layer.codebook.astype(np.int64)).max(initial=0)) * a_max * \
        layer.in_features + int(np.abs(layer.bias.astype(np.int64)).max(initial=0))
    return bound < 2**53


class _Runner:
    """The golden model's arithmetic for a qnet, fast: an fc layer's products by float64 BLAS
    when every partial sum is an integer below 2**53 (then exactly the int64 result, many times
    faster), int64 otherwise and for conv layers (`golden.layer_sums`); the wrap, shift,
    saturation, ReLU and pooling are golden's own functions. Blocks of `step` examples."""

    def __init__(self, qnet: QNet, acc_bits: int):
        self.layers, self.acc_bits = list(qnet.layers), acc_bits  # a copy: biases may change
        self.shapes = qnet.layer_shapes()
        self.w = []
        for ly in qnet.layers:
            w = torch.from_numpy(ly.weights())
            self.w.append(w.double() if _exact_in_float64(ly, 32768) else w)
        self.step = G.batch_size(qnet, self.shapes)

    def sums(self, i: int, a: torch.Tensor) -> torch.Tensor:
        """Layer i's exact products without its bias (int64), for int64 inputs a (float64
        im2col and BLAS for a conv layer whose sums are exact in float64, like fc)."""
        w, ly = self.w[i], self.layers[i]
        if w.dtype != torch.float64:
            return G.layer_sums(ly, a, self.shapes[i][0], w)
        if not ly.is_conv:
            return (a.double() @ w.T).to(torch.int64)
        a = a.double().reshape(len(a), *self.shapes[i][0])
        return G.conv_sums(a, w, ly.kernel, ly.stride, ly.padding).to(torch.int64)

    def accumulators(self, i: int, a: torch.Tensor, bias=None) -> torch.Tensor:
        """bias + products of layer i, before wrapping."""
        return G.add_bias(self.layers[i], self.sums(i, a), bias)

    def finish(self, i: int, acc: torch.Tensor, peak: float | None = None) -> torch.Tensor:
        """Wrap, shift, saturation, ReLU, pooling: layer i's output [n, values], int64.
        `peak`, the largest |acc| if known: below 2**(acc_bits-1) nothing wraps."""
        if peak is None or peak >= 2.0 ** (self.acc_bits - 1):
            acc = G.wrap(acc, self.acc_bits)
        return G.layer_finish(self.layers[i], acc)

    def run(self, a: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, float]:
        """Layers start.. on int64 inputs a; (output, the largest |accumulator| before any
        wrap)."""
        best = 1.0
        for i in range(start, len(self.layers)):
            acc = self.accumulators(i, a)
            peak = float(acc.abs().max()) if acc.numel() else 0.0
            best = max(best, peak)
            a = self.finish(i, acc, peak)
        return a, best


def run_integer(qnet: QNet, x: np.ndarray, *, acc_bits: int = 32) -> tuple[np.ndarray, float]:
    """The golden model's output bits, the fc products by float64 BLAS where that is exact
    (`_Runner`). Returns (output, log2 of the largest |accumulator| before wrapping).
    tests/test_compress_fixedpoint.py checks it against `golden.run_layers` bit for bit."""
    run = _Runner(qnet, acc_bits)
    x = np.asarray(x)
    outs, best = [], 1.0
    with torch.no_grad():
        for b0 in range(0, len(x), run.step):
            y, m = run.run(torch.from_numpy(x[b0:b0 + run.step].astype(np.int64)))
            outs.append(y.numpy().astype(np.int16))
            best = max(best, m)
    out = np.concatenate(outs) if outs else np.zeros((0, qnet.out_features), np.int16)
    return out, math.log2(best)


def integer_error(qnet: QNet, pixels: np.ndarray, labels: np.ndarray, *,
                  acc_bits: int = 32, batch: int = 5000) -> float:
    """Error in percent of the integer network (golden-model bits) on MNIST pixels."""
    return integer_error_and_acc(qnet, pixels, labels, acc_bits=acc_bits, batch=batch)[0]


def integer_error_and_acc(qnet: QNet, pixels: np.ndarray, labels: np.ndarray, *,
                          acc_bits: int = 32, batch: int = 5000) -> tuple[float, float]:
    """(error in percent, log2 of the largest |accumulator| before wrapping) of the integer
    network on MNIST pixels. When the largest is below 2**(acc_bits-1) nothing wrapped, so it
    is also what `max_accumulator_log2` (64-bit accumulators) finds; else that is measured."""
    wrong, best = 0, 0.0
    for i in range(0, len(pixels), batch):
        x = mnist_to_input(pixels[i : i + batch], qnet.input_frac)
        y, peak = run_integer(qnet, x, acc_bits=acc_bits)
        wrong += int(np.sum(predict(y) != labels[i : i + batch]))
        best = max(best, peak)
    if best >= acc_bits - 1:
        best = max_accumulator_log2(qnet, pixels, batch=batch)
    return 100.0 * wrong / max(len(pixels), 1), best


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


def bias_bits_fixed(qnet: QNet, ks: list[int]) -> QNet:
    """The qnet with layer i's bias rounded to a multiple of 2**ks[i]."""
    if len(ks) != qnet.num_layers:
        raise InputError(f"bias rounding: {len(ks)} entries for {qnet.num_layers} layers")
    return QNet(layers=[ly.with_bias(round_bias(ly.bias, k)) for ly, k in zip(qnet.layers, ks)],
                input_frac=qnet.input_frac, meta=dict(qnet.meta), input_shape=qnet.input_shape)


# Pre-bias sums of a layer over the whole split are kept between the candidate roundings when
# they take at most this many int64 values (256 MiB); else they are computed again each time.
_CACHE_VALUES = 1 << 25


def choose_bias_rounding(qnet: QNet, x: np.ndarray, labels: np.ndarray, *,
                         tolerance: float = 0.0, acc_bits: int = 32) -> tuple[QNet, list[int]]:
    """Per layer, in order, the coarsest bias granularity 2**k the data allows.

    `x`: the engine's int16 inputs, `labels` their classes (a validation split). k grows from
    0 while the integer error stays within `tolerance` percentage points of the error with
    exact biases, and stops at the first k over it (a lucky coarse k past a failing one is not
    taken). Earlier layers keep their chosen rounding while later ones are tried. Returns the
    rounded qnet and the k per layer. The split runs in blocks (conv maps stay bounded).
    """
    labels = np.asarray(labels)
    layers, ks = list(qnet.layers), []
    run = _Runner(qnet, acc_bits)
    x = np.asarray(x)
    # the inputs of the layer being rounded, per block (int16: the layers' outputs are int16)
    blocks = [x[b0:b0 + run.step] for b0 in range(0, len(x), run.step)]
    labs = [labels[b0:b0 + run.step] for b0 in range(0, len(x), run.step)]

    def bad_after(i, y, lab) -> np.ndarray:
        """Which examples the layers after i get wrong, from layer i's outputs y."""
        out, _ = run.run(torch.from_numpy(y.astype(np.int64)), i + 1)
        return predict(out.numpy()) != lab

    allowed = None
    with torch.no_grad():
        for i, layer in enumerate(layers):
            pre_size = len(x) * (math.prod(run.shapes[i][1]) * math.prod(layer.pool)
                                 if layer.is_conv else layer.out_features)
            pre = [run.sums(i, torch.from_numpy(b.astype(np.int64))) for b in blocks] \
                if pre_size <= _CACHE_VALUES else None

            def out(j, bias=None) -> np.ndarray:
                s = pre[j] if pre is not None else \
                    run.sums(i, torch.from_numpy(blocks[j].astype(np.int64)))
                return run.finish(i, G.add_bias(layers[i], s, bias)).numpy().astype(np.int16)

            # The reference: layer i with its exact bias. A candidate rounding changes the
            # outputs of some examples only (a bias step under the layer's shift often changes
            # nothing); the others keep the reference's predictions, so only the changed ones
            # run through the later layers: the same count, much less work.
            ref = [out(j) for j in range(len(blocks))]
            ref_bad = [bad_after(i, r, lab) for r, lab in zip(ref, labs)]
            if allowed is None:  # every bias exact
                allowed = sum(int(b.sum()) for b in ref_bad) + \
                    tolerance / 100.0 * len(labels) + 1e-9

            def wrong(bias) -> int:
                total = 0
                for j in range(len(blocks)):
                    y = out(j, bias)
                    changed = (y != ref[j]).any(axis=1)
                    bad = ref_bad[j].copy()
                    if changed.any():
                        bad[changed] = bad_after(i, y[changed], labs[j][changed])
                    total += int(bad.sum())
                return total

            top = int(np.abs(layer.bias.astype(np.int64)).max(initial=0)).bit_length() + 1
            best = 0
            for k in range(1, min(top, 31) + 1):
                if wrong(round_bias(layer.bias, k)) > allowed:
                    break
                best = k
            layers[i] = layer.with_bias(round_bias(layer.bias, best))
            run.layers[i] = layers[i]
            ks.append(best)
            blocks = [out(j) for j in range(len(blocks))]
    return QNet(layers=layers, input_frac=qnet.input_frac, meta=dict(qnet.meta),
                input_shape=qnet.input_shape), ks


__all__ = ["FixedPointConfig", "Calibration", "fc_chain", "model_chain", "to_qnet",
           "integer_error", "integer_error_and_acc",
           "max_accumulator_log2", "run_integer", "run_layers", "round_bias",
           "choose_bias_rounding", "bias_bits_fixed"]
