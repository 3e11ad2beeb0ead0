"""`python -m compress encode-inputs | sensitivity`: commands for your own network and data.

The data set file of `pipeline --model` and `sensitivity --model` is an .npz with the arrays
x_train, y_train, x_test, y_test and optionally x_val, y_val: inputs in the model's own units
and shape (any numeric dtype, [n, ...]), labels integer class indices [n].
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from .registry import command
from ..errors import InputError

DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("x_val", "y_val")


def load_dataset(path, input_shape: tuple[int, ...] | None = None) -> dict:
    """{'train': (x, y), 'val': (x, y) or None, 'test': (x, y)} from a data set .npz, checked.

    Inputs of another shape with the same number of values per example as `input_shape` are
    reshaped to it (e.g. flat rows for a model that takes 8x8 images).
    """
    from ..qnet import read_npz

    path = Path(path)
    arrays = read_npz(path)
    extra = sorted(set(arrays) - set(DATA_KEYS) - set(OPTIONAL_KEYS))
    if extra:
        raise InputError(f"{path}: unexpected key {extra[0]!r} (expected "
                         f"{', '.join(DATA_KEYS)}, optionally {', '.join(OPTIONAL_KEYS)})")
    missing = [k for k in DATA_KEYS if k not in arrays]
    if missing:
        raise InputError(f"{path}: missing key {missing[0]!r} (expected {', '.join(DATA_KEYS)}, "
                         f"optionally {', '.join(OPTIONAL_KEYS)})")
    if ("x_val" in arrays) != ("y_val" in arrays):
        have, lack = ("x_val", "y_val") if "x_val" in arrays else ("y_val", "x_val")
        raise InputError(f"{path}: {have} without {lack}")
    out: dict = {"val": None}
    shape = None
    for split in ("train", "val", "test"):
        if f"x_{split}" not in arrays:
            continue
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype.kind not in "iuf":
            raise InputError(f"{path}: x_{split}: expected numbers, got dtype {x.dtype}")
        if x.ndim < 2:
            raise InputError(f"{path}: x_{split}: expected [examples, ...], got shape "
                             f"{list(x.shape)}")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise InputError(f"{path}: y_{split}: expected integer class labels [examples], got "
                             f"{y.dtype}{list(y.shape)}")
        if len(x) != len(y):
            raise InputError(f"{path}: x_{split} has {len(x)} examples but y_{split} has {len(y)}")
        if len(x) == 0:
            raise InputError(f"{path}: x_{split} has no examples")
        if y.min() < 0:
            raise InputError(f"{path}: y_{split}: negative label {int(y.min())}")
        from ..api import check_values

        check_values(x, f"{path}: x_{split}")  # finite, within range, before float32
        if shape is None:
            shape = x.shape[1:]
        elif x.shape[1:] != shape:
            raise InputError(f"{path}: x_{split} examples are {list(x.shape[1:])}, x_train's "
                             f"are {list(shape)}")
        if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
            if math.prod(x.shape[1:]) != math.prod(input_shape):
                raise InputError(f"{path}: x_{split} examples are {list(x.shape[1:])} "
                                 f"({math.prod(x.shape[1:])} values), the model takes "
                                 f"{list(input_shape)} ({math.prod(input_shape)} values)")
            x = x.reshape(len(x), *input_shape)
        out[split] = (x.astype(np.float32, copy=False), y.astype(np.int64))
    return out


def load_model(path):
    """A network from an ONNX file (the only format `--model` takes for a float network)."""
    from ..onnx_import import load_onnx

    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: expected an ONNX file (.onnx); export a PyTorch model with "
                         f"torch.onnx.export")
    return load_onnx(path)


def load_engine_net(path):
    """A qnet .npz or a .dcz: the integer network the engine runs."""
    path = Path(path)
    if path.suffix.lower() == ".dcz":
        from ..dcz import read_dcz

        return read_dcz(path)
    from ..qnet import load_qnet

    return load_qnet(path, index_bits=8)


# ---------------------------------------------------------------------------------------------


def _encode_args(p):
    p.add_argument("--model", required=True, help="the network: qnet .npz or .dcz (its "
                                                  "input_frac sets the scaling)")
    p.add_argument("--inputs", required=True,
                   help="float inputs [batch, ...] in the model's own units and shape: an .npy, "
                        "or an array of an .npz as D.npz:KEY (e.g. the data set's "
                        "D.npz:x_test) or with --key")
    p.add_argument("--key", default=None,
                   help="the array of an .npz --inputs to encode (e.g. x_test)")
    p.add_argument("--out", required=True, help="where to write the int16 [batch, in_0] .npy")


def read_inputs_array(spec: str, key: str | None = None) -> tuple[np.ndarray, str, str]:
    """(array, its file, a name for messages) from an .npy, or from an .npz with `key` or as
    "FILE.npz:KEY" (the file's own name wins when such a file exists). An .npz without a key is
    refused with the names of its arrays."""
    from ..qnet import read_npy, read_npz

    path = spec
    if key is None and ":" in spec and not Path(spec).exists():
        path, key = spec.rsplit(":", 1)
        if not key:
            raise InputError(f"--inputs {spec}: no array name after ':'")
    from ..infile import open_input

    p = Path(path)
    with open_input(p, expected="an .npy or .npz file", name=f"--inputs {path}") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if not is_zip:
        if key is not None:
            raise InputError(f"--inputs {path}: an .npy holds one array; --key / :{key} is for "
                             "an .npz")
        return read_npy(p, name=path), path, path
    names: list[str] = []
    got = read_npz(p, keys=lambda k: names.append(k) or k == key)
    if key is None:
        raise InputError(f"--inputs {path} is an .npz: name the array to encode, "
                         f"{path}:KEY or --key KEY (it holds {', '.join(names) or 'nothing'})")
    if key not in got:
        raise InputError(f"--inputs {path}: no array {key!r} (it holds "
                         f"{', '.join(names) or 'nothing'})")
    return got[key], path, f"{path}:{key}"


@command("encode-inputs", "float inputs -> the engine's int16 inputs (the qnet's input_frac)")(
    _encode_args)
def _encode_inputs(args):
    from ..api import encode_inputs
    from ..atomic import refuse_same_path
    from ..atomic import save_npy

    x, path, name = read_inputs_array(args.inputs, args.key)
    refuse_same_path(args.out, path, args.model)
    qnet = load_engine_net(args.model)
    args.inputs = name
    if x.dtype.kind not in "iuf":
        raise InputError(f"{args.inputs}: expected numbers, got dtype {x.dtype}")
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"{args.inputs}: expected [batch, ...] (one row per example), got "
                         f"shape {list(x.shape)}")
    width = math.prod(x.shape[1:])
    if width != qnet.in_features:
        raise InputError(f"{args.inputs}: {width} values per example ({list(x.shape[1:])}), the "
                         f"network takes {qnet.in_features}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InputError(f"{args.inputs}: NaN or infinite value")
    if x.dtype == np.int16 and qnet.input_frac > 0:
        print(f"warning: {args.inputs} is already int16: encode-inputs takes the float inputs "
              "in the model's own units (engine inputs go straight to golden / tb run)",
              file=sys.stderr)
    xi = encode_inputs(x, qnet)
    save_npy(args.out, xi)
    sat = int(np.count_nonzero((xi == 32767) | (xi == -32768)))
    if sat:
        print(f"warning: {sat} of {xi.size} values saturated at the int16 range (inputs larger "
              f"than the training inputs the qnet's input_frac {qnet.input_frac} was calibrated "
              "on)", file=sys.stderr)
    print(f"wrote {args.out}: int16{list(xi.shape)}, input_frac {qnet.input_frac}")


def _sens_args(p):
    p.add_argument("--model", default=None, help="the trained network as an ONNX file")
    p.add_argument("--data", default=None,
                   help="with --model: the data set .npz (x_train, y_train, x_test, y_test, "
                        "optionally x_val, y_val); with --arch: the MNIST directory "
                        "(default $MNIST_DIR)")
    p.add_argument("--arch", default=None, help="lenet-300-100 or lenet-5 (with --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="with --arch: a dense checkpoint .npz")
    p.add_argument("--val-size", type=int, default=None,
                   help="with --arch: measure on this many training images held out (seeded) "
                        "instead of the test set")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (--arch)")
    p.add_argument("--densities", default=None,
                   help="comma-separated densities to try (default: 17 levels, 1.0 to 0.01)")
    p.add_argument("--out", required=True, help="directory for sensitivity.json/.txt/.png (a "
                                               "new or empty directory; see --force)")
    p.add_argument("--force", action="store_true",
                   help="write into an existing non-empty --out: the files this command writes "
                        "are replaced, nothing else is touched")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest on a shared 2-core machine)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def _densities(text):
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"--densities: {text!r} is not a list of numbers") from None


@command("sensitivity", "per-layer pruning sensitivity: accuracy against density, table + PNG")(
    _sens_args)
def _sensitivity(args):
    import torch

    from ..atomic import atomic_dir, check_dir_output
    from ..models import compressible_layers
    from ..sensitivity import format_sensitivity, layer_sensitivity, write_sensitivity

    if (args.model is None) == (args.arch is None):
        raise InputError("give --model M.onnx --data D.npz, or --arch A --checkpoint C")
    out = Path(args.out)
    inputs = tuple(p for p in (args.model, args.data, args.checkpoint) if p is not None)
    # export-rom's rule, before the run (see `pipeline --model`)
    check_dir_output(out, force=args.force, what="--out",
                     names=[f"sensitivity.{k}" for k in ("json", "txt", "png")], keep=inputs)
    dens = _densities(args.densities)
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, not {args.threads}")
    torch.set_num_threads(args.threads)
    if args.model is not None:
        if args.checkpoint or args.val_size is not None:
            raise InputError("--checkpoint and --val-size go with --arch, not --model")
        if args.data is None:
            raise InputError("--model needs --data D.npz")
        model = load_model(args.model)
        data = load_dataset(args.data, model.input_shape)
        split = "val" if data["val"] is not None else "test"
        x, y = data[split]
        what = f"{split} split of {args.data}, {len(y)} examples"
    else:
        from ..data import load_split, to_float, train_val_split
        from ..train import load_checkpoint

        if args.checkpoint is None:
            raise InputError("--arch needs --checkpoint (a dense checkpoint .npz)")
        ck = load_checkpoint(args.checkpoint)
        if ck.arch != args.arch:
            raise InputError(f"{args.checkpoint}: a {ck.arch} checkpoint, not {args.arch}")
        model = ck.model()
        if args.val_size is not None:
            split_ = train_val_split(load_split("train", args.data), args.val_size,
                                     seed=args.seed)[1]
            what = f"{args.val_size} MNIST training images held out (seed {args.seed})"
        else:
            split_ = load_split("test", args.data)
            what = f"MNIST test set, {len(split_)} images"
        x, y = to_float(split_.images), split_.labels.astype(np.int64)
    from ..train import device

    model = model.float().to(device()).eval()
    with torch.no_grad():
        try:
            out_shape = model(torch.from_numpy(np.asarray(x[:2])).float().to(device())).shape
        except RuntimeError as e:
            raise InputError(f"the model does not run on the data ({str(e).splitlines()[0]})") \
                from None
    if len(out_shape) != 2 or int(y.max()) >= out_shape[1]:
        raise InputError(f"the model's output {list(out_shape)} does not fit labels up to "
                         f"{int(y.max())}")
    sens = layer_sensitivity(model, compressible_layers(model), x, y, densities=dens,
                             progress=not args.no_progress)
    with atomic_dir(out, force=args.force, what="--out", keep=inputs) as tmp:
        names = {k: p.name for k, p in write_sensitivity(sens, tmp).items()}
    print(f"measured on the {what}")
    print(format_sensitivity(sens))
    print(f"wrote {out / names['json']}, {out / names['txt']}, {out / names['png']}")
