"""Compress your own network: `compress_model`, `CompressResult.save`, `encode_inputs`.

    result = compress.compress_model(model, train=(x, y), val=(x, y), seed=0, max_drop=0.5)
    result.save(DIR)    # model.dcz, model.qnet.npz, report.txt, summary.json
    xi = compress.encode_inputs(x, result.qnet)

`model` is a trained `nn.Module` whose forward is a chain of Linear/ReLU layers, or of Conv2d
layers (with max pooling) then Linear ones, BatchNorms after them, Dropout and a final
Softmax allowed (found by tracing it, `compress.trace`; docs/formats.md section 7). The
BatchNorms are folded and the Softmax dropped in a working copy before anything else; a CNN
gives a version 2 qnet. `x` is in the model's own input units and shape, `y` integer class
labels.

The steps, all on the validation split:

1. calibration: ``input_frac`` = the most fractional bits (0..15) with which the largest
   |training input| still fits int16;
2. sensitivity (Han et al. 2015, fig. 6): each layer alone pruned to a range of densities,
   no retraining; per-layer densities are the smallest whose accuracy drop stays under a
   per-layer budget (`compress.sensitivity`);
3. iterative magnitude pruning with retraining to those densities (`compress.prune`);
4. index bits per layer: the smallest (2..4 by default) whose k-means weight sharing of that
   layer alone keeps the accuracy within budget, then trained quantization of every layer
   (`compress.quantize`);
5. fixed point (`compress.fixedpoint.to_qnet`, calibrated on the encoded training inputs) and
   the integer accuracy by the golden numerics;
6. steps 2-5 are made for each rung of a fixed ladder of per-layer budgets up to `max_drop`
   (`LADDER`, `_rungs`: densest first, at most `attempts`), each from the dense weights and
   seeded by its rung, and the smallest file whose integer accuracy dropped by no more than
   `max_drop` points against the dense model is kept (`_pick`): a looser budget never keeps
   a larger file than a tighter one that was met. The summary says what was tried and chosen.

Warnings (also in ``notes``): one validation example worth more than half of `max_drop`
(`_resolution_note`), input features that keep few distinct codes at the one input_frac
(`_collapsed_note`: standardise them), inputs beyond int16, a `max_drop` not met.

`CompressResult.summary` (also summary.json): ``accuracy`` {dense, pruned, quantized, integer}
-> {val, test} in %, ``drop`` (dense - integer on val, points, never below 0; each attempt's
``raw_drop`` keeps the sign), ``met_max_drop``, ``density``
and ``index_bits`` per layer, ``input_frac``, ``input_max_abs``, ``dcz_bytes``,
``uncompressed_bytes`` (float32 weights and biases), ``ratio`` (their quotient), ``chosen``
(one sentence), ``attempts`` (each try's densities, bits, accuracies), ``sensitivity`` (the
curves), ``seconds`` per stage, ``notes`` (warnings), and the model, shape, examples, seed,
max_drop and device; ``input_shape`` and ``kinds`` (fc/conv per layer) of the qnet, and
``engine``: whether the RTL engines run it today (fully connected layers only).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import limits
from .errors import InputError

MAX_INDEX_BITS = 8
# Refuse data sets above this many input values (4 GiB of float32) before materialising them.
DEFAULT_MAX_VALUES = 1 << 30


@dataclass
class Options:
    """Settings of `compress_model` (its keyword options); defaults scale with the data."""

    test: object = None  # (x, y), Dataset or DataLoader: also report accuracies on it
    epochs: float | None = None  # retraining epochs per pruning round (None: scaled, see below)
    round_steps: tuple[int, int] = (150, 1000)  # epochs=None: one epoch clamped to this range
    prune_rounds: int = 4  # iterative prune -> retrain rounds
    batch_size: int = 128
    lr: float = 1e-3  # pruning retraining (Adam, cosine decay)
    finetune_lr: float = 1e-4  # centroid fine-tuning
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    min_bits: int = 2  # index bits tried per layer
    max_bits: int = 4  # the engine's default index width is 4; up to 8
    # Fixed per-layer densities {name: fraction kept} instead of the sensitivity choice
    # (layers not named stay dense); a back-off multiplies them by 1.5 per attempt.
    densities: dict | None = None
    # Prune for a board's engine (`compress.pattern.BOARDS`, e.g. "icebreaker"): every layer's
    # columns even over its PEs, no fillers, no accumulator hazards. None: unstructured.
    for_board: str | None = None
    attempts: int = 3  # pruning attempts, each denser than the last, until max_drop is met
    layer_drop: float = 4.0  # first attempt's per-layer sensitivity budget, times max_drop
    val_fraction: float = 0.1  # held out of train when val is None
    acc_bits: int = 32  # the engine's accumulator width
    calib_examples: int = 10000  # training examples used for fixed-point calibration
    max_values: int = DEFAULT_MAX_VALUES  # refuse data with more input values than this
    threads: int | None = None  # torch CPU threads (None: leave as is)
    progress: bool = True  # tqdm bars and one line per stage on stderr
    log: object = None  # callable(str) for the stage lines (default: stderr when progress)

    def validate(self) -> "Options":
        if not 1 <= self.min_bits <= self.max_bits <= MAX_INDEX_BITS:
            raise InputError(f"index bits: need 1 <= min_bits <= max_bits <= {MAX_INDEX_BITS}, "
                             f"got {self.min_bits}..{self.max_bits}")
        if self.epochs is not None and not self.epochs > 0:
            raise InputError(f"epochs must be > 0, not {self.epochs!r}")
        if not self.layer_drop >= 0:
            raise InputError(f"layer_drop must be >= 0, not {self.layer_drop!r}")
        if self.prune_rounds < 1 or self.attempts < 1 or self.batch_size < 1:
            raise InputError("prune_rounds, attempts and batch_size must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val_fraction must be in (0, 1), not {self.val_fraction!r}")
        if not 8 <= self.acc_bits <= 64:
            raise InputError(f"acc_bits must be 8..64, not {self.acc_bits!r}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be >= 1, not {self.threads!r}")
        if self.for_board is not None:
            from .pattern import board_pattern

            board_pattern(self.for_board)
        return self


def _options(kw: dict) -> Options:
    names = {f.name for f in fields(Options)}
    unknown = sorted(set(kw) - names)
    if unknown:
        raise InputError(f"compress_model: unknown option {unknown[0]!r} "
                         f"(known: {', '.join(sorted(names))})")
    return Options(**kw).validate()


# ---------------------------------------------------------------------------------------------
# Data: arrays, tensors, Datasets and DataLoaders -> (float32 tensor, int64 labels)


def _numel(shape) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64))


def _as_x(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.is_complex() or t.dtype == torch.bool:
            raise InputError(f"{what} x: expected real numbers, got {t.dtype}")
        return t.float()
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{what} x: expected a numeric array, got dtype {a.dtype}")
    if a.dtype.kind != "f" or np.isfinite(a).all():  # NaN and inf: named with their example
        check_values(a, f"{what} x")  # before float32 could overflow to inf
    with np.errstate(over="ignore"):  # 1e300 beside a NaN: inf, refused with the NaN
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def check_values(a: np.ndarray, what: str) -> None:
    """InputError unless every value of the numeric array `a` is finite and within
    +-limits.MAX_ABS_VALUE (checked in its own dtype, so nothing overflows or warns)."""
    if not a.size or a.dtype.kind == "b":
        return
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError(f"{what}: NaN or infinite value")
    peak = max(abs(float(a.min())), abs(float(a.max())))
    if peak > limits.MAX_ABS_VALUE:
        raise InputError(f"{what}: values reach |{peak:.4g}|, beyond the +-2**31 the fixed "
                         "point and float32 training can hold: scale them down")


def _as_y(y, what: str) -> np.ndarray:
    a = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise InputError(f"{what} y: labels must be a 1-D array of class indices, "
                         f"got shape {list(a.shape)}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise InputError(f"{what} y: labels must be integers (class indices)")
    elif a.dtype.kind not in "biu":
        raise InputError(f"{what} y: labels must be integers, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise InputError(f"{what} y: negative label {int(a.min())}")
    return a.astype(np.int64)


def _pair(item, what: str):
    if isinstance(item, dict) or not isinstance(item, (tuple, list)) or len(item) != 2:
        raise InputError(f"{what}: each item must be an (x, y) pair, got {type(item).__name__}")
    return item


def materialise(data, what: str, *, max_values: int = DEFAULT_MAX_VALUES
                ) -> tuple[torch.Tensor, np.ndarray]:
    """(x, y) arrays/tensors, a torch Dataset or a DataLoader -> (float32 x, int64 y), checked."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, DataLoader):
        xs, ys, total = [], [], 0
        for batch in data:
            xb, yb = _pair(batch, what)
            xb = _as_x(xb, what)
            total += xb.numel()
            if total > max_values:
                raise InputError(f"{what}: more than {max_values:,} input values; raise "
                                 "max_values to allow it")
            xs.append(xb)
            ys.append(_as_y(yb, what))
        if not xs:
            raise InputError(f"{what}: the DataLoader yields no batches")
        x, y = torch.cat(xs), np.concatenate(ys)
    elif isinstance(data, Dataset) and not isinstance(data, (tuple, list)):
        try:
            n = len(data)
        except TypeError:
            raise InputError(f"{what}: the Dataset has no length; pass a DataLoader") from None
        if n == 0:
            raise InputError(f"{what}: the Dataset is empty")
        x0, _ = _pair(data[0], what)
        if n * _numel(np.shape(x0)) > max_values:
            raise InputError(f"{what}: {n:,} examples of shape {list(np.shape(x0))} exceed "
                             f"{max_values:,} input values; raise max_values to allow it")
        items = [_pair(data[i], what) for i in range(n)]
        try:
            x = torch.stack([_as_x(a, what) for a, _ in items])
        except RuntimeError:
            raise InputError(f"{what}: examples of different shapes") from None
        y = _as_y(np.array([int(b) if np.ndim(b) == 0 else np.asarray(b).reshape(-1)[0]
                            for _, b in items]), what)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if _numel(np.shape(x) if not isinstance(x, torch.Tensor) else x.shape) > max_values:
            raise InputError(f"{what}: more than {max_values:,} input values; raise "
                             "max_values to allow it")
        x, y = _as_x(x, what), _as_y(y, what)
    else:
        raise InputError(f"{what}: expected (x, y), a torch Dataset or a DataLoader, "
                         f"got {type(data).__name__}")
    if x.ndim < 1 or len(x) != len(y):
        raise InputError(f"{what}: {len(x) if x.ndim else 0} inputs but {len(y)} labels")
    if len(x) == 0:
        raise InputError(f"{what}: no examples")
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
    if bool(bad.any()):
        raise InputError(f"{what} x: NaN or infinite value in example {int(bad.nonzero()[0])}")
    if x.numel() and float(x.abs().max()) > limits.MAX_ABS_VALUE:
        raise InputError(f"{what} x: values beyond the +-2**31 the fixed point and float32 "
                         "training can hold: scale them down")
    return x.contiguous(), y


# ---------------------------------------------------------------------------------------------
# Input scaling


def calibrate_input_frac(x, *, what: str = "train") -> tuple[int, list[str]]:
    """The most fractional bits f in 0..15 with max|x| * 2**f <= 32767, and warnings.

    Warns when every input is zero, when the inputs exceed int16 even at f = 0 (they will
    saturate), or when most non-zero inputs round to zero even at f = 15.
    """
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
    a = t.detach().abs().float()
    peak = float(a.max()) if a.numel() else 0.0
    notes = []
    if peak == 0.0:
        notes.append(f"{what} inputs are all zero: the network sees no signal")
        return 15, notes
    frac = int(math.floor(math.log2(32767.0 / peak)))
    if frac < 0:
        notes.append(f"{what} inputs reach |x| = {peak:.4g}, beyond int16 even with 0 "
                     "fractional bits: larger values saturate at +-32767; scale the inputs "
                     "(and the first layer) down")
    frac = min(max(frac, 0), 15)
    nz = a[a > 0]
    tiny = float((nz * 2.0**frac < 0.5).float().mean()) if nz.numel() else 0.0
    if tiny > 0.5:
        notes.append(f"{what} inputs: {100 * tiny:.0f}% of the non-zero values round to 0 at "
                     f"input_frac {frac}: scale the inputs up")
    return frac, notes


COLLAPSED_CODES = 3  # a feature with this few distinct engine codes or fewer has collapsed
COARSE_CODES = 16  # fewer than this, and a quarter of its own values or fewer: coarse


def _collapsed_note(x, input_frac: int) -> str | None:
    """A warning when input features lose their detail at the one input_frac every feature
    shares: collapsed to COLLAPSED_CODES or fewer distinct int16 codes, or coarse (fewer than
    COARSE_CODES, and at most a quarter of the feature's own distinct values). One input_frac
    is what the engine's inputs are (encode_inputs), so no per-feature scale can be folded in
    behind the user's back: standardising the inputs before training is the cure."""
    a = (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor)
         else np.asarray(x, dtype=np.float64))
    a = a.reshape(len(a), -1)
    if a.size == 0:
        return None

    def distinct(v):
        s = np.sort(v, axis=0)
        return (np.diff(s, axis=0) != 0).sum(axis=0) + 1

    codes = distinct(_encode(a, input_frac).astype(np.int64))
    values = distinct(a)
    collapsed = int(((codes <= COLLAPSED_CODES) & (values > codes)).sum())
    coarse = int(((codes > COLLAPSED_CODES) & (codes < COARSE_CODES)
                  & (values >= 4 * codes)).sum())
    if not collapsed and not coarse:
        return None
    what = []
    if collapsed:
        what.append(f"{collapsed} of {a.shape[1]} features take {COLLAPSED_CODES} or fewer "
                    "distinct engine values")
    if coarse:
        what.append(f"{coarse} {'more ' if collapsed else f'of {a.shape[1]} features '}take "
                    f"fewer than {COARSE_CODES} (a quarter of their own or fewer)")
    peak = float(np.abs(a).max())
    return (f"inputs: {' and '.join(what)} at input_frac {input_frac} (one scale for every "
            f"feature, set by the largest input, {peak:.4g}): they reach the network "
            "coarsely; standardise the inputs (per feature: subtract the training mean, "
            "divide by the training standard deviation, the same for every split) and train "
            "on those")


def encode_inputs(x, qnet) -> np.ndarray:
    """The engine's int16 inputs [batch, in_0]: each example flattened,
    ``clamp(floor(x * 2**input_frac + 0.5), -32768, 32767)`` with the qnet's input_frac."""
    from .qnet import QNet, load_qnet

    if isinstance(qnet, (str, os.PathLike)):
        qnet = load_qnet(qnet, index_bits=MAX_INDEX_BITS)
    if not isinstance(qnet, QNet):
        raise InputError(f"encode_inputs: expected a QNet, got {type(qnet).__name__}")
    a = (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor)
         else np.asarray(x))
    if a.dtype.kind not in "biuf":
        raise InputError(f"inputs: expected numbers, got dtype {a.dtype}")
    if a.ndim < 1 or len(a) == 0:
        raise InputError(f"inputs: expected [batch, ...], got shape {list(a.shape)}")
    a = a.reshape(len(a), -1).astype(np.float64)
    if a.shape[1] != qnet.in_features:
        raise InputError(f"inputs: {a.shape[1]} values per example, the network takes "
                         f"{qnet.in_features}")
    if not np.all(np.isfinite(a)):
        raise InputError("inputs: NaN or infinite value")
    return _encode(a, qnet.input_frac)


def _encode(a: np.ndarray, input_frac: int) -> np.ndarray:
    return np.clip(np.floor(a * 2.0 ** input_frac + 0.5), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------
# The result


@dataclass(eq=False)
class CompressResult:
    qnet: object  # compress.qnet.QNet, or None for a network the engine cannot run (conv)
    dcz: bytes  # the model.dcz file's bytes
    summary: dict
    report: str
    model: nn.Module | None = None  # the compressed float model (shared weights)
    sensitivity: object = None  # compress.sensitivity.Sensitivity
    extra: dict = field(default_factory=dict)

    def save(self, out_dir) -> Path:
        """Write model.dcz, model.qnet.npz (engine networks), report.txt and summary.json.

        The files are written into a temporary directory inside DIR and then renamed into
        place; nothing else in DIR is touched.
        """
        from .qnet import save_qnet

        d = Path(out_dir)
        if d.exists() and not d.is_dir():
            raise InputError(f"{d}: exists and is not a directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{d}: cannot create ({e.strerror or e})") from None
        tmp = Path(tempfile.mkdtemp(prefix=".compress-", dir=d))
        try:
            (tmp / "model.dcz").write_bytes(self.dcz)
            names = ["model.dcz"]
            if self.qnet is not None:
                save_qnet(self.qnet, tmp / "model.qnet.npz", index_bits=MAX_INDEX_BITS)
                names.append("model.qnet.npz")
            (tmp / "report.txt").write_text(self.report + "\n")
            (tmp / "summary.json").write_text(
                json.dumps(self.summary, indent=2, default=_json_default) + "\n")
            names += ["report.txt", "summary.json"]
            for n in names:
                os.replace(tmp / n, d / n)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return d


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ---------------------------------------------------------------------------------------------
# Helpers


def _accuracy(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    from .train import logits

    out = logits(model, x, batch=4096)
    return float(100.0 * np.mean(out.reshape(len(out), -1).argmax(1).numpy() == y))


def _int_accuracy(qnet, x: torch.Tensor, y: np.ndarray, acc_bits: int) -> float:
    from .fixedpoint import run_integer
    from .golden import predict

    right = 0
    for i in range(0, len(x), 8192):
        out, _ = run_integer(qnet, encode_inputs(x[i:i + 8192], qnet), acc_bits=acc_bits)
        right += int(np.sum(predict(out) == y[i:i + 8192]))
    return 100.0 * right / len(x)


@torch.no_grad()
def _one_layer_shared(model, layer: nn.Module, mask: torch.Tensor, bits: int, seed: int,
                      x, y) -> float:
    """Validation accuracy with only `layer` weight-shared at `bits` (k-means, no tuning)."""
    from .quantize import cluster_layer

    w = layer.weight
    saved = w.detach().clone()
    cb, idx = cluster_layer(saved.cpu().numpy(), mask.cpu().numpy().astype(bool), bits,
                            init="linear", seed=seed)
    try:
        w.copy_(torch.from_numpy(cb[idx.astype(np.int64)]).to(w))
        return _accuracy(model, x, y)
    finally:
        w.copy_(saved)


def _split(x, y, frac: float, seed: int):
    n = len(x)
    n_val = max(1, int(round(n * frac)))
    if n - n_val < 2:
        raise InputError(f"train: {n} examples are too few to hold out a validation split; "
                         "pass val=(x, y)")
    perm = np.random.default_rng(seed).permutation(n)
    v, t = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return (x[torch.from_numpy(t)], y[t]), (x[torch.from_numpy(v)], y[v])


# ---------------------------------------------------------------------------------------------
# compress_model


def compress_model(model: nn.Module, train, val=None, seed: int = 0, max_drop: float = 0.5,
                   **options) -> CompressResult:
    """Prune, share weights, quantize to fixed point and code a trained network (see module doc).

    Options (keyword): see `Options` (test, epochs, prune_rounds, min_bits, max_bits,
    densities, attempts, progress, log, threads, ...). Bad input raises `InputError` with one
    line naming it. The user's model is not modified.
    """
    from .sensitivity import layer_sensitivity
    from .train import device

    opts = _options(options)
    max_drop, seed = _check_args(model, max_drop, seed)
    if opts.threads is not None and not torch.cuda.is_available():
        torch.set_num_threads(opts.threads)
    log = opts.log or (_stderr_log if opts.progress else (lambda s: None))
    t_start = time.time()
    seconds: dict[str, float] = {}
    notes: list[str] = []

    work, chain, layers = _network(model)
    d = _data(work, chain, train, val, opts, seed, notes, model)
    if val is None:
        log(f"validation: {len(d.y_val)} examples held out of train (seed {seed}): pass val= "
            "to choose them")

    # Input scaling.
    input_frac, warn = calibrate_input_frac(d.x_tr)
    warn += [w for w in (_collapsed_note(d.x_tr[: opts.calib_examples], input_frac),
                         _resolution_note(len(d.y_val), max_drop)) if w]
    for w in warn:
        warnings.warn(w, stacklevel=2)
    notes += warn

    dev = device()
    work.to(dev)
    accuracy = {"dense": {k: _accuracy(work, xx, yy) for k, (xx, yy) in d.splits.items()}}
    log(f"dense: val accuracy {accuracy['dense']['val']:.2f}%" +
        (f", test {accuracy['dense']['test']:.2f}%" if d.test else "") +
        f"; input_frac {input_frac}")

    t = time.time()
    sens = layer_sensitivity(work, layers, d.x_val, d.y_val, progress=opts.progress)
    seconds["sensitivity"] = time.time() - t

    best, attempts = _search(work, chain, layers, sens, d, opts, seed, max_drop, input_frac,
                             accuracy["dense"]["val"], seconds, log)

    # The chosen attempt's files.
    qnet, m = best.pop("qnet"), best.pop("model")
    data, rows = best.pop("dcz"), best.pop("dcz_rows")
    for other in attempts:
        for k in ("qnet", "model", "codebooks", "indices", "dcz", "dcz_rows"):
            other.pop(k, None)
    seconds["total"] = time.time() - t_start
    uncompressed = 4 * sum(mod.weight.numel() + (mod.bias.numel() if mod.bias is not None
                                                 else 0) for mod in layers.values())
    accuracy.update(best["accuracy"])
    chosen = _chosen(best, attempts, opts, max_drop, True)
    summary = {
        "model": type(model).__name__,
        # every engine and the board run it (a CNN runs on the EIE engine only)
        "engine": not qnet.has_conv,
        "layers": list(layers),
        "shape": [qnet.in_features] + [int(np.prod(o)) for _, o in qnet.layer_shapes()],
        "input_shape": list(qnet.input_shape),
        "kinds": [ly.kind for ly in qnet.layers],
        "classes": d.n_out,
        "examples": {"train": int(len(d.y_tr)), "val": int(len(d.y_val)),
                     **({"test": int(len(d.test[1]))} if d.test else {})},
        "seed": seed,
        "max_drop": max_drop,
        "device": str(dev),
        "input_frac": qnet.input_frac,
        "input_max_abs": float(d.x_tr.abs().max()),
        "accuracy": accuracy,
        "drop": best["drop"],
        "met_max_drop": best["met"],
        "density": best["density"],
        "index_bits": best["index_bits"],
        "dcz_bytes": len(data),
        "uncompressed_bytes": uncompressed,
        "ratio": uncompressed / len(data),
        "chosen": chosen,
        "attempts": attempts,
        "sensitivity": sens.to_dict(),
        "notes": notes,
        "seconds": seconds,
    }
    summary["calibration"] = best.get("calibration")
    report = _report(summary, rows, len(data), uncompressed)
    log(f"done in {seconds['total']:.0f} s: {len(data):,} bytes, {summary['ratio']:.1f}x")
    return CompressResult(qnet=qnet, dcz=data, summary=summary, report=report, model=m,
                          sensitivity=sens)


def _check_args(model, max_drop, seed) -> tuple[float, int]:
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    try:
        ok = not isinstance(max_drop, (bool, str)) and math.isfinite(float(max_drop)) and \
            float(max_drop) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"max_drop must be >= 0 percentage points, not {max_drop!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InputError(f"seed must be an integer, not {seed!r}")
    return float(max_drop), int(seed)


def _network(model: nn.Module):
    """(a float CPU copy of the model ready to compress, its layer chain, its layers).

    The copy has every BatchNorm folded into the Linear/Conv2d before it and a final
    Softmax/LogSoftmax dropped (`compress.trace`), so pruning and retraining see the network
    the engine will run; anything the engine cannot run is refused here, before any work."""
    from .models import compressible_layers
    from .trace import drop_softmax, fold_batchnorm, network_chain

    work = copy.deepcopy(model).float().cpu().eval()
    chain = network_chain(work)
    chain = fold_batchnorm(work, chain)
    work = drop_softmax(work, chain)
    return work, chain, compressible_layers(work)


def _check_chain(model: nn.Module, work: nn.Module, chain, x: torch.Tensor) -> None:
    """The chain's own forward (folded BatchNorms, the Softmax put back) must reproduce the
    user's model in float on a few training inputs; sets the chain's input shape (measured on
    `work`, the copy the chain's modules belong to)."""
    from .trace import input_shape, run_chain

    chain.input_shape = input_shape(chain, work, x)
    ref_model = copy.deepcopy(model).float().cpu().eval()
    n = min(16, len(x))
    with torch.no_grad():
        ref = ref_model(x[:n])
        got = run_chain(chain, x[:n], chain.input_shape)
        if chain.softmax is not None:
            got = torch.log_softmax(got, 1) if chain.softmax_log else torch.softmax(got, 1)
    if not isinstance(ref, torch.Tensor):
        return  # _check_shapes says what is wrong with the output
    ref = ref.reshape(n, -1)
    what = "BatchNorm-folded " if any(c.bn for c in chain) or chain.softmax else ""
    if ref.shape != got.shape or not torch.allclose(ref, got, rtol=1e-4,
                                                     atol=1e-5 * float(ref.abs().max() + 1)):
        raise InputError(f"model: the traced {what}layer chain does not reproduce the model's "
                         "output on the training inputs")


def _chain_for(m: nn.Module, chain):
    """The chain with its layers taken from `m`, a copy of the model it was traced on."""
    from dataclasses import replace

    return replace(chain, layers=[replace(c, module=m.get_submodule(c.name)) for c in chain])


@dataclass
class _Data:
    x_tr: torch.Tensor
    y_tr: np.ndarray
    x_val: torch.Tensor
    y_val: np.ndarray
    test: tuple | None
    splits: dict
    n_out: int


def _data(work, chain, train, val, opts, seed: int, notes: list[str],
          user_model: nn.Module) -> _Data:
    """The splits as tensors, checked against the network (and the traced chain against the
    user's model)."""
    x_tr, y_tr = materialise(train, "train", max_values=opts.max_values)
    if val is None:
        (x_tr, y_tr), (x_val, y_val) = _split(x_tr, y_tr, opts.val_fraction, seed)
        notes.append(f"validation: {len(y_val)} examples held out of train (seed {seed})")
    else:
        x_val, y_val = materialise(val, "val", max_values=opts.max_values)
    test = None
    if opts.test is not None:
        test = materialise(opts.test, "test", max_values=opts.max_values)
    n_out = _check_shapes(work, chain, x_tr, {"train": y_tr, "val": y_val,
                                             **({"test": test[1]} if test else {})})
    from .train import logits

    if not bool(torch.isfinite(logits(work, x_tr)).all()):  # once, before any training
        raise InputError("model: its outputs on train x are not finite (float32 overflows): "
                         "scale the weights or the inputs down")
    work.eval()
    for name, (xx, _) in {"val": (x_val, y_val), **({"test": test} if test else {})}.items():
        if tuple(xx.shape[1:]) != tuple(x_tr.shape[1:]):
            raise InputError(f"{name} x: examples of shape {list(xx.shape[1:])}, train has "
                             f"{list(x_tr.shape[1:])}")
    _check_chain(user_model, work, chain, x_tr)
    splits = {"val": (x_val, y_val), **({"test": test} if test else {})}
    return _Data(x_tr, y_tr, x_val, y_val, test, splits, n_out)


# The budget search's rungs, in points of max_drop, the same for every budget: rung j prunes
# each layer to the densities its sensitivity curve allows at layer_drop * LADDER[j] points and
# chooses index bits at LADDER[j] / (2 * layers), with seeds from j. See `_rungs`.
LADDER = tuple(2.0 ** (2 * j - 3) for j in range(12))  # 1/8, 1/2, 2, 8, 32, ... points


def _rungs(max_drop: float, opts) -> list[int]:
    """The rungs max_drop may try, densest first: those of LADDER up to max_drop (at least the
    first), at most `attempts`. With fixed `densities`, rung j multiplies them by
    1.5 ** (attempts - 1 - j): the last rung is the densities given.

    The search trains every one of them and keeps the smallest file among those that met
    max_drop (`_pick`). A rung's training depends only on the data, the seed and the rung, and
    a looser budget's rungs are a superset of a tighter one's (the same first rung, the same
    order, as far or further), so it never keeps a larger file than a tighter budget that was
    met (nor than an unmet one whose fallback, the smallest drop, is within the looser budget).
    """
    if opts.densities:
        return list(range(opts.attempts))
    n = sum(1 for m in LADDER if m <= max_drop + 1e-12)
    return list(range(max(1, min(n, opts.attempts))))


def _pick(attempts: list[dict]) -> dict:
    """The smallest file among the attempts that met max_drop, else the smallest drop (the
    denser on a tie)."""
    met = [a for a in attempts if a["met"]]
    if met:
        return min(met, key=lambda a: (a["dcz_bytes"], a["rung"]))
    return min(attempts, key=lambda a: (a["raw_drop"], a["rung"]))


def _search(work, chain, layers, sens, d: _Data, opts, seed, max_drop, input_frac, dense_val,
            seconds, log) -> tuple[dict, list[dict]]:
    """An attempt from the dense weights on each rung of `_rungs`; the one `_pick` keeps."""
    from .data import Tensors
    from .sensitivity import choose_densities

    dense_state = copy.deepcopy(work.state_dict())
    # Training settings scaled to the data: one epoch per pruning round, clamped in steps.
    batches = max(1, len(d.y_tr) // opts.batch_size)
    lo, hi = opts.round_steps
    round_epochs = opts.epochs if opts.epochs is not None else \
        min(max(batches, lo), hi) / batches
    train_set = Tensors(d.x_tr, d.y_tr)
    x_cal = d.x_tr[: opts.calib_examples]
    L = len(layers)
    attempts: list[dict] = []
    rungs = _rungs(max_drop, opts)
    for n, j in enumerate(rungs):
        # The per-layer drop allowed on the sensitivity curves (pruned alone, no retraining):
        # retraining recovers most of it.
        budget = opts.layer_drop * LADDER[j]
        if opts.densities:
            dens = {k: min(1.0, v * 1.5 ** (len(rungs) - 1 - j))
                    for k, v in opts.densities.items()}
        else:
            dens = choose_densities(sens, budget)
        bad = sorted(set(dens) - set(layers))
        if bad:
            raise InputError(f"densities: unknown layer {bad[0]!r} (layers: {', '.join(layers)})")
        dens = {k: float(dens.get(k, 1.0)) for k in layers}
        log(f"attempt {n + 1} of {len(rungs)}: pruning to densities "
            f"{_fmt_map(dens, '{:.3f}')} ...")
        attempt = _attempt(work, dense_state, layers, dens, j, seed, opts, train_set, d.splits,
                           round_epochs, x_cal, input_frac, chain, LADDER[j] / (2 * L),
                           seconds, log)
        attempt["attempt"], attempt["rung"] = n + 1, j
        attempt["per_layer_budget"] = None if opts.densities else budget
        final_val = attempt["accuracy"]["integer"]["val"]
        attempt.update(_drop(dense_val, final_val))
        attempt["met"] = attempt["raw_drop"] <= max_drop + 1e-9
        t = time.time()
        attempt["dcz"], attempt["dcz_rows"] = _pack(attempt["qnet"], chain)
        seconds["dcz"] = seconds.get("dcz", 0.0) + time.time() - t
        attempt["dcz_bytes"] = len(attempt["dcz"])
        log(f"attempt {n + 1}: index bits {_fmt_map(attempt['index_bits'], '{}')}: val "
            f"{final_val:.2f}% ({_drop_words(attempt)}, budget {max_drop}), "
            f"{attempt['dcz_bytes']:,} bytes")
        attempts.append(attempt)
    return _pick(attempts), attempts


def _drop(dense_val: float, final_val: float) -> dict:
    """{"drop": the validation accuracy lost against the dense model, never below 0;
    "raw_drop": the same with its sign (negative: the compressed network scored higher)}."""
    raw = dense_val - final_val
    return {"drop": max(0.0, raw), "raw_drop": raw}


def _drop_words(attempt: dict) -> str:
    raw = attempt["raw_drop"]
    return (f"drop {raw:.2f} points" if raw >= 0
            else f"no drop: {-raw:.2f} points above the dense model")


def _resolution_note(n_val: int, max_drop: float) -> str | None:
    """A warning when one validation example is worth more than half of max_drop: the drop is
    judged in steps of 100 / n_val points, so such a budget allows at most one example and
    says little about the accuracy on other data."""
    step = 100.0 / n_val
    if max_drop <= 0 or step <= max_drop / 2:
        return None
    allowed = int(max_drop / step + 1e-9)
    need = math.ceil(200.0 / max_drop)
    return (f"max_drop {max_drop:g} points is judged on {n_val} validation examples, one of "
            f"which is worth {step:.2f} points: the budget allows {allowed} example"
            f"{'' if allowed == 1 else 's'}, and the test accuracy can move by several times "
            f"{step:.2f} points unseen; a validation split of at least {need} examples (or a "
            f"max_drop of at least {2 * step:.2f}) resolves it")


def _pack(qnet, chain) -> tuple[bytes, list[dict]]:
    """The .dcz bytes (checked to unpack to the qnet) and its per-layer size rows."""
    from . import dcz as dczmod

    data = dczmod.pack(qnet)
    if not dczmod.unpack(data).equals(qnet):
        raise RuntimeError("the .dcz does not unpack to the qnet it was packed from")
    rows = dczmod.layer_sizes(qnet)
    for r, c in zip(rows, chain):
        r["layer"] = c.name
    return data, rows


def _chosen(best: dict, attempts: list[dict], opts, max_drop: float, engine: bool) -> str:
    """One sentence on what was chosen and why (a warning when max_drop was not met)."""
    if best["met"]:
        how = ("the densities given" if best["per_layer_budget"] is None else
               f"densities from the sensitivity curves at {best['per_layer_budget']:.3g} points "
               "per layer")
        return (f"attempt {best['attempt']} of {len(attempts)} made, the smallest file of "
                f"those within max_drop {max_drop}: {how}; the "
                f"{'integer' if engine else 'weight-shared'} validation accuracy: "
                f"{_drop_words(best)}")
    chosen = (f"max_drop {max_drop} not met after {len(attempts)} attempts; kept the "
              f"attempt with the smallest drop ({best['drop']:.2f} points)")
    warnings.warn(f"compress_model: {chosen}", stacklevel=3)
    return chosen


def _stderr_log(s: str) -> None:
    from tqdm import tqdm

    tqdm.write(s, file=sys.stderr)


def _fmt_map(d: dict, fmt: str) -> str:
    return "{" + ", ".join(f"{k}: {fmt.format(v)}" for k, v in d.items()) + "}"


def _check_shapes(model, chain, x, labels: dict) -> int:
    """Run the model on two examples; check the output is [n, classes] and labels fit."""
    if chain[0].kind == "fc" and _numel(x.shape[1:]) != chain[0].linear.in_features:
        raise InputError(f"train x: {_numel(x.shape[1:])} values per example, the first "
                         f"layer {chain[0].name} takes {chain[0].linear.in_features}")
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as e:  # noqa: BLE001 - the user's forward: report its first line
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"model: forward fails on train x of shape {list(x.shape[1:])} "
                         f"per example ({msg[:160]})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(x[:2]):
        raise InputError(f"model: output must be [batch, classes], got "
                         f"{list(out.shape) if isinstance(out, torch.Tensor) else type(out)}")
    classes = int(out.shape[1])
    for name, y in labels.items():
        if y.size and int(y.max()) >= classes:
            raise InputError(f"{name} y: label {int(y.max())} but the model has {classes} "
                             "outputs")
    return classes


def _attempt(work, dense_state, layers, dens, a, seed, opts, train_set, splits, round_epochs,
             x_cal, input_frac, chain, bits_budget, seconds, log) -> dict:
    """Prune to `dens`, choose index bits, quantize, fixed point; return the attempt's record."""
    from .fixedpoint import FixedPointConfig, to_qnet
    from .models import compressible_layers
    from .pattern import prune_settings
    from .prune import PruneConfig, density_table, prune
    from .quantize import QuantConfig, quantize
    from .train import TrainConfig

    s0 = seed + 10000 * a

    def tc(epochs, lr, s):
        return TrainConfig(epochs=epochs, batch_size=opts.batch_size, lr=lr,
                           weight_decay=opts.weight_decay,
                           label_smoothing=opts.label_smoothing, seed=s,
                           progress=opts.progress)

    m = copy.deepcopy(work)
    m.load_state_dict(dense_state)
    mlayers = compressible_layers(m)
    t = time.time()
    pcfg = PruneConfig(method="percentile", schedule="iterative", levels=dens,
                       steps=opts.prune_rounds, retrain=tc(round_epochs, opts.lr, s0 + 1000),
                       final_retrain=tc(2 * round_epochs, opts.lr, s0 + 2000),
                       **prune_settings(opts.for_board))
    if all(d >= 1.0 for d in dens.values()):
        masks = {n: torch.ones_like(l.weight, dtype=torch.bool) for n, l in mlayers.items()}
    else:
        masks = prune(m, train_set, pcfg, log=lambda s: None)
    seconds["prune"] = seconds.get("prune", 0.0) + time.time() - t
    rec: dict = {"attempt": a + 1, "density": {r["layer"]: r["kept"] / r["weights"]
                                               for r in density_table(masks)[:-1]}}
    acc = {"pruned": {k: _accuracy(m, xx, yy) for k, (xx, yy) in splits.items()}}

    # Index bits per layer: the smallest whose weight sharing alone stays within budget.
    t = time.time()
    x_val, y_val = splits["val"]
    pruned_val = acc["pruned"]["val"]
    bits = {}
    for i, (name, layer) in enumerate(mlayers.items()):
        bits[name] = opts.max_bits
        for b in range(opts.min_bits, opts.max_bits):
            if pruned_val - _one_layer_shared(m, layer, masks[name], b, s0 + i,
                                              x_val, y_val) <= bits_budget + 1e-9:
                bits[name] = b
                break
    qcfg = QuantConfig(bits=opts.max_bits, layer_bits=bits, init="linear", seed=s0,
                       finetune=tc(round_epochs, opts.finetune_lr, s0 + 3000))
    cbs, idx = quantize(m, masks, train_set, qcfg)
    m.eval()
    seconds["quantize"] = seconds.get("quantize", 0.0) + time.time() - t
    acc["quantized"] = {k: _accuracy(m, xx, yy) for k, (xx, yy) in splits.items()}
    rec["index_bits"] = bits
    t = time.time()
    x_flat = x_cal.reshape(len(x_cal), -1).double().numpy()
    frac = input_frac
    while True:
        try:
            qnet, cal = to_qnet(m, cbs, idx, None,
                                FixedPointConfig(input_frac=frac, acc_bits=opts.acc_bits,
                                                 calib_images=len(x_flat)),
                                calib_inputs=_encode(x_flat, frac),
                                chain=_chain_for(m, chain), input_shape=chain.input_shape)
            break
        except InputError as e:
            # A wide layer's sums overflow the accumulator even with integer weights:
            # give up input precision before giving up.
            if "does not fit" not in str(e) or frac == 0:
                raise
            frac -= 1
    if frac != input_frac:
        rec["input_frac_lowered"] = f"{input_frac} -> {frac} to fit {opts.acc_bits}-bit sums"
    acc["integer"] = {k: _int_accuracy(qnet, xx, yy, opts.acc_bits)
                      for k, (xx, yy) in splits.items()}
    rec["calibration"] = asdict(cal)
    seconds["fixedpoint"] = seconds.get("fixedpoint", 0.0) + time.time() - t
    rec["accuracy"] = acc
    rec.update(qnet=qnet, model=m, codebooks=cbs, indices=idx)
    return rec


def _report(s: dict, rows: list[dict], size: int, uncompressed: int) -> str:
    from .dcz import format_table

    stages = [k for k in ("dense", "pruned", "quantized", "integer") if k in s["accuracy"]]
    lines = [f"compress_model: {s['model']} "
             + (f"({'-'.join(map(str, s['shape']))} Linear/ReLU chain)" if s["engine"]
                else f"(CNN on {'x'.join(map(str, s['input_shape']))} inputs: "
                     f"{', '.join(s['kinds'])})"),
             f"seed {s['seed']}, max_drop {s['max_drop']} points, input_frac {s['input_frac']}, "
             f"{s['examples']['train']} train / {s['examples']['val']} val examples",
             "accuracy (%):  " + "  ".join(
                 f"{k} " + "/".join(f"{s['accuracy'][k][sp]:.2f}" for sp in s["accuracy"][k])
                 for k in stages) + "   (" + "/".join(s["accuracy"]["dense"]) + ")",
             "index bits: " + ", ".join(f"{k} {v}" for k, v in s["index_bits"].items()),
             f"chosen: {s['chosen']}", ""]
    lines.append(format_table(rows))
    lines.append(f"ratio: float32 weights and biases {uncompressed:,} bytes / .dcz {size:,} "
                 f"bytes = {uncompressed / size:.1f}x")
    for n in s["notes"]:
        lines.append(f"note: {n}")
    return "\n".join(lines)


__all__ = ["compress_model", "encode_inputs", "CompressResult", "Options",
           "calibrate_input_frac", "materialise"]
