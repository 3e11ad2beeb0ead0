"""Import a network from an ONNX file as a PyTorch `nn.Sequential`, by parsing it only.

The `onnx` package reads the protobuf; nothing in the file is ever executed and external data
files are refused. The graph must be one chain from its single input to its single output:

    Gemm (transA 0, any transB, alpha and beta folded in)  -> Linear
    MatMul by a constant matrix, optionally then Add of a constant bias -> Linear
    Relu -> ReLU;  Flatten (axis 1) and Reshape to [batch, -1] -> Flatten
    Conv (2-D, group 1, symmetric pads) -> Conv2d;  MaxPool (2-D) -> MaxPool2d
    Identity -> nothing

plus the constant and shape arithmetic exporters put in front of a Reshape
(Constant, Shape, Gather, Unsqueeze, Concat), as torch writes for `x.view(x.size(0), -1)` with
a dynamic batch axis. Any other op is refused with one line naming the node and the op.
Conv/MaxPool networks compress to a .dcz but have no qnet (the engine runs Linear/ReLU chains).

Every tensor's declared size is checked against a limit before anything is converted or
allocated. The input shape without the batch axis is recorded as `model.input_shape`.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import limits
from .errors import InputError

SUPPORTED = "Gemm, MatMul, Add, Relu, Flatten, Reshape, Conv, MaxPool, Identity"

_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # TensorProto data types
_INT_TYPES = {6: np.int32, 7: np.int64}
_BATCH = "N"  # the batch axis in a shape value


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency
        raise InputError("reading ONNX files needs the onnx package (pip install onnx)") from None
    return onnx


class _Graph:
    """The walk over the nodes: constants, shape values and the chain built so far."""

    def __init__(self, path: Path, max_elements: int):
        self.path = path
        self.max_elements = max_elements
        self.total = 0
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, list] = {}  # shape values: lists of ints and _BATCH
        self.layers: list[nn.Module] = []
        self.names: list[str] = []
        self.cur = ""  # the data value the chain has reached
        self.cur_shape: tuple[int, ...] = ()
        self.batch_value: int | None = None  # a fixed batch size in the input's dims
        self.bias_for = ""  # value a following Add of a constant may add a bias to

    def fail(self, msg: str):
        raise InputError(f"{self.path}: {msg}")

    # -- tensors -------------------------------------------------------------------------

    def tensor(self, t, where: str) -> np.ndarray:
        onnx = _onnx()
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            self.fail(f"{where}: external data is not supported (the weights must be inside "
                      f"the .onnx file)")
        dims = [int(d) for d in t.dims]
        if any(d < 0 for d in dims):
            self.fail(f"{where}: negative dimension in {dims}")
        n = math.prod(dims)
        if n > self.max_elements or self.total + n > self.max_elements:
            self.fail(f"{where}: {n:,} elements ({self.total + n:,} in all) exceed the limit "
                      f"max_weights={self.max_elements:,} ({limits.how_to_raise('max_weights')})")
        self.total += n
        dt = t.data_type
        if dt in _FLOAT_TYPES:
            np_type, field = _FLOAT_TYPES[dt], {1: "float_data", 10: "int32_data",
                                                11: "double_data"}[dt]
        elif dt in _INT_TYPES:
            np_type, field = _INT_TYPES[dt], {6: "int32_data", 7: "int64_data"}[dt]
        else:
            self.fail(f"{where}: data type {onnx.TensorProto.DataType.Name(dt)} is not supported")
        # Declared size and stored data must agree before numpy_helper touches them.
        if t.HasField("raw_data"):
            have, want = len(t.raw_data), n * np.dtype(np_type).itemsize
        else:
            have, want = len(getattr(t, field)), n
        if have != want:
            self.fail(f"{where}: declares {dims} but holds {have} "
                      f"{'bytes' if t.HasField('raw_data') else 'values'}, expected {want}")
        from onnx import numpy_helper

        return np.array(numpy_helper.to_array(t), dtype=np_type)

    def const(self, node, i: int, what: str) -> np.ndarray:
        name = node.input[i] if i < len(node.input) else ""
        if name not in self.consts:
            self.fail(f"{_where(node)}: {what} ({name or 'missing'}) must be a constant")
        return self.consts[name]

    # -- the chain -----------------------------------------------------------------------

    def data_input(self, node, n_consts: tuple[int, ...] = ()) -> None:
        if not node.input or node.input[0] != self.cur:
            got = node.input[0] if node.input else "nothing"
            self.fail(f"{_where(node)}: takes {got!r}, not the previous layer's output "
                      f"{self.cur!r} (only a single chain of layers is supported)")
        for i, name in enumerate(node.input[1:], 1):
            if name and i not in n_consts:
                self.fail(f"{_where(node)}: unexpected input {name!r}")
        if len(node.output) != 1 and any(node.output[1:]):
            self.fail(f"{_where(node)}: only one output is supported")

    def advance(self, node, layer: nn.Module | None, shape: tuple[int, ...],
                weight: str = "") -> None:
        if layer is not None:
            self.layers.append(layer)
            self.names.append(self.layer_name(layer, weight))
        self.cur = node.output[0]
        self.cur_shape = shape
        self.bias_for = ""

    def layer_name(self, layer: nn.Module, weight: str) -> str:
        """The exporter's name for a layer with weights ("fc1.weight" -> "fc1"), else kind + index.

        torch.onnx.export names initializers after the modules' parameters, so the tables of
        the compressed network use the names of the user's own modules.
        """
        base = weight[:-len(".weight")] if weight.endswith(".weight") else ""
        name = base.replace(".", "_")
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name) or name in self.names:
            kind = {nn.Linear: "linear", nn.Conv2d: "conv", nn.ReLU: "relu",
                    nn.Flatten: "flatten", nn.MaxPool2d: "pool"}[type(layer)]
            name = f"{kind}{len(self.layers) - 1}"
            while name in self.names:
                name += "_"
        return name

    def linear(self, node, w: np.ndarray, b: np.ndarray | None) -> None:
        """w: [out, in] float; b: [out] or None."""
        if len(self.cur_shape) != 1:
            self.fail(f"{_where(node)}: input of shape {list(self.cur_shape)} per example; a "
                      f"matrix product needs a flat vector (add a Flatten before it)")
        out_f, in_f = w.shape
        if in_f != self.cur_shape[0]:
            self.fail(f"{_where(node)}: weight takes {in_f} inputs, the previous layer gives "
                      f"{self.cur_shape[0]}")
        lin = nn.utils.skip_init(nn.Linear, in_f, out_f)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            lin.bias.copy_(torch.from_numpy(
                np.zeros(out_f, np.float32) if b is None else b.astype(np.float32)))
        self.advance(node, lin, (out_f,), node.input[1])
        self.bias_for = self.cur


def _where(node) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"{node.op_type} node"


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _vector(g: _Graph, node, c: np.ndarray, n: int, what: str) -> np.ndarray:
    """A bias of any shape that broadcasts to [n] along the last axis, as [n]."""
    c = np.asarray(c)
    while c.ndim > 1 and c.shape[0] == 1:
        c = c[0]
    try:
        return np.broadcast_to(c, (n,)).astype(np.float32)
    except ValueError:
        g.fail(f"{_where(node)}: {what} of shape {list(np.shape(c))} does not fit {n} outputs")


def _read_model(path: Path, max_elements: int):
    onnx = _onnx()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .onnx file")
    # Weights are at most 8 bytes an element; the rest of a model is small.
    if size > 8 * max_elements + (64 << 20) or size >= 2**31:
        raise InputError(f"{path}: {size:,} bytes is larger than any model within the limit "
                         f"max_weights={max_elements:,} ({limits.how_to_raise('max_weights')})")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises several kinds on garbage
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a valid ONNX file ({msg})") from None
    return model


def load_onnx(path: str | os.PathLike, *, max_elements: int | None = None) -> nn.Sequential:
    """The network in an ONNX file as an `nn.Sequential` of Linear/ReLU/Flatten (Conv2d/MaxPool2d).

    `model.input_shape` is the input's shape without the batch axis. InputError (one line,
    naming the node and op) for anything that is not such a chain. `max_elements` bounds the
    elements of all tensors together (default: the limit max_weights of `compress.limits`).
    """
    path = Path(path)
    if max_elements is None:
        max_elements = limits.get().max_weights
    model = _read_model(path, max_elements)
    graph = model.graph
    g = _Graph(path, max_elements)
    if len(graph.sparse_initializer):
        g.fail("sparse initializers are not supported")
    for t in graph.initializer:
        g.consts[t.name] = g.tensor(t, f"initializer {t.name!r}")
    inputs = [i for i in graph.input if i.name not in g.consts]
    if len(inputs) != 1:
        g.fail(f"the graph has {len(inputs)} inputs, expected one")
    if len(graph.output) != 1:
        g.fail(f"the graph has {len(graph.output)} outputs, expected one")
    inp = inputs[0]
    input_shape = _input_shape(g, inp)
    g.cur, g.cur_shape = inp.name, input_shape

    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            g.fail(f"{_where(node)}: op {node.domain}.{node.op_type} is not supported "
                   f"(supported: {SUPPORTED})")
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            g.fail(f"{_where(node)}: op {node.op_type} is not supported (supported: {SUPPORTED})")
        handler(g, node)
    out = graph.output[0].name
    if out != g.cur:
        g.fail(f"graph output {out!r} is not the end of the chain of layers ({g.cur!r})")
    if not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in g.layers):
        g.fail("the graph has no Gemm, MatMul or Conv layer")
    seq = nn.Sequential(OrderedDict(zip(g.names, g.layers))).eval()
    seq.input_shape = input_shape
    return seq


def _input_shape(g: _Graph, inp) -> tuple[int, ...]:
    tt = inp.type.tensor_type
    if not inp.type.HasField("tensor_type") or tt.elem_type not in _FLOAT_TYPES:
        g.fail(f"graph input {inp.name!r}: expected a float tensor")
    if not tt.HasField("shape") or len(tt.shape.dim) < 2:
        g.fail(f"graph input {inp.name!r}: expected a shape [batch, ...] with known sizes")
    dims = list(tt.shape.dim)
    if dims[0].HasField("dim_value"):
        g.batch_value = int(dims[0].dim_value)
    shape = []
    for i, d in enumerate(dims[1:], 1):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            g.fail(f"graph input {inp.name!r}: axis {i} has no fixed size")
        shape.append(int(d.dim_value))
    if math.prod(shape) > g.max_elements:
        g.fail(f"graph input {inp.name!r}: {math.prod(shape):,} values per example exceed the "
               f"limit max_weights={g.max_elements:,}")
    return tuple(shape)


# -- op handlers -------------------------------------------------------------------------------


def _constant(g: _Graph, node):
    onnx = _onnx()
    a = node.attribute[0] if len(node.attribute) == 1 else None
    if a is None:
        g.fail(f"{_where(node)}: expected one value attribute")
    if a.name == "value":
        v = g.tensor(a.t, _where(node))
    elif a.name in ("value_int", "value_float"):
        v = np.array(a.i if a.name == "value_int" else a.f)
    elif a.name in ("value_ints", "value_floats"):
        vals = a.ints if a.name == "value_ints" else a.floats
        if len(vals) > g.max_elements:
            g.fail(f"{_where(node)}: too many values")
        v = np.array(list(vals), dtype=np.int64 if a.name == "value_ints" else np.float32)
    else:
        g.fail(f"{_where(node)}: constant attribute {a.name!r} "
               f"({onnx.AttributeProto.AttributeType.Name(a.type)}) is not supported")
    g.consts[node.output[0]] = v


def _identity(g: _Graph, node):
    src = node.input[0] if node.input else ""
    if src in g.consts:
        g.consts[node.output[0]] = g.consts[src]
    elif src in g.shapes:
        g.shapes[node.output[0]] = g.shapes[src]
    else:
        g.data_input(node)
        keep = g.bias_for == g.cur
        g.advance(node, None, g.cur_shape)
        if keep:
            g.bias_for = g.cur


def _shape_value(g: _Graph, node, i: int) -> list:
    name = node.input[i] if i < len(node.input) else ""
    if name in g.shapes:
        return g.shapes[name]
    if name in g.consts and g.consts[name].dtype.kind in "iu" and g.consts[name].ndim <= 1:
        return [int(v) for v in g.consts[name].reshape(-1)]
    g.fail(f"{_where(node)}: op {node.op_type} on {name!r} is not supported; only on the shape "
           f"arithmetic in front of a Reshape (supported: {SUPPORTED})")


def _shape(g: _Graph, node):
    if not node.input or node.input[0] != g.cur:
        g.fail(f"{_where(node)}: only the shape of the previous layer's output is supported")
    a = _attrs(node)
    full = [_BATCH, *g.cur_shape]
    g.shapes[node.output[0]] = full[a.get("start", 0):a.get("end", len(full))]


def _gather(g: _Graph, node):
    if node.input and node.input[0] not in g.shapes:
        g.fail(f"{_where(node)}: op Gather is not supported (supported: {SUPPORTED}); "
               f"only the shape arithmetic in front of a Reshape")
    vals = _shape_value(g, node, 0)
    idx = g.const(node, 1, "indices")
    if _attrs(node).get("axis", 0) != 0 or idx.dtype.kind not in "iu" or idx.ndim > 1:
        g.fail(f"{_where(node)}: only gathering from a shape by constant indices is supported")
    try:
        out = [vals[int(i)] for i in idx.reshape(-1)]
    except IndexError:
        g.fail(f"{_where(node)}: index out of range of the shape {vals}")
    g.shapes[node.output[0]] = out


def _unsqueeze(g: _Graph, node):
    vals = _shape_value(g, node, 0)
    g.shapes[node.output[0]] = vals  # a scalar and a 1-element list are the same shape value


def _concat(g: _Graph, node):
    out: list = []
    for i in range(len(node.input)):
        out += _shape_value(g, node, i)
    g.shapes[node.output[0]] = out


def _gemm(g: _Graph, node):
    g.data_input(node, (1, 2))
    a = _attrs(node)
    if a.get("transA", 0) != 0:
        g.fail(f"{_where(node)}: transA=1 is not supported")
    w = g.const(node, 1, "weight B").astype(np.float32)
    if w.ndim != 2:
        g.fail(f"{_where(node)}: weight B of shape {list(w.shape)}, expected a matrix")
    w = w if a.get("transB", 0) else w.T
    w = w * np.float32(a.get("alpha", 1.0))
    b = None
    if len(node.input) > 2 and node.input[2]:
        b = _vector(g, node, g.const(node, 2, "bias C"), w.shape[0], "bias C")
        b = b * np.float32(a.get("beta", 1.0))
    g.linear(node, w, b)


def _matmul(g: _Graph, node):
    g.data_input(node, (1,))
    w = g.const(node, 1, "weight")
    if w.ndim != 2 or w.dtype.kind != "f":
        g.fail(f"{_where(node)}: weight of shape {list(w.shape)}, expected a float matrix")
    g.linear(node, w.T.astype(np.float32), None)


def _add(g: _Graph, node):
    ins = list(node.input)
    if len(ins) != 2 or g.cur not in ins:
        g.fail(f"{_where(node)}: only adding a constant bias to the previous layer's output is "
               f"supported")
    other = ins[1] if ins[0] == g.cur else ins[0]
    if other not in g.consts or g.bias_for != g.cur:
        g.fail(f"{_where(node)}: only a constant bias right after a MatMul or Gemm is supported")
    lin = g.layers[-1]
    b = _vector(g, node, g.consts[other], lin.out_features, "bias")
    with torch.no_grad():
        lin.bias.add_(torch.from_numpy(b))
    g.advance(node, None, g.cur_shape)


def _relu(g: _Graph, node):
    g.data_input(node)
    g.advance(node, nn.ReLU(), g.cur_shape)


def _flatten(g: _Graph, node):
    g.data_input(node)
    axis = _attrs(node).get("axis", 1)
    if axis not in (1, -len(g.cur_shape)):  # -len: axis 1 counted from the end
        g.fail(f"{_where(node)}: axis {axis}; only flattening all but the batch axis is "
               f"supported")
    g.advance(node, nn.Flatten(), (math.prod(g.cur_shape),))


def _reshape(g: _Graph, node):
    g.data_input(node, (1,))
    target = _shape_value(g, node, 1)
    n = math.prod(g.cur_shape)
    allowzero = _attrs(node).get("allowzero", 0)
    batch_ok = {_BATCH, -1} | ({0} if not allowzero else set()) | (
        {g.batch_value} if g.batch_value else set())
    if len(target) != 2 or target[0] not in batch_ok or target[1] not in (-1, n) or \
            target == [-1, -1]:
        g.fail(f"{_where(node)}: reshape of {[_BATCH, *g.cur_shape]} to {target}; only a "
               f"flatten to [batch, -1] is supported")
    g.advance(node, nn.Flatten(), (n,))


def _pair(g: _Graph, node, a: dict, key: str, default: int) -> tuple[int, int]:
    v = list(a.get(key, [default, default]))
    if len(v) != 2 or any(int(x) < (0 if key == "pads" else 1) for x in v):
        g.fail(f"{_where(node)}: {key} {v}; only 2-D is supported")
    return int(v[0]), int(v[1])


def _window(g: _Graph, node, a: dict, kernel: tuple[int, int]):
    """Strides, symmetric pads, dilations of a 2-D window op and its output size."""
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        g.fail(f"{_where(node)}: auto_pad is not supported (give explicit pads)")
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3] or min(pads) < 0:
        g.fail(f"{_where(node)}: pads {pads}; only symmetric 2-D padding is supported")
    stride = _pair(g, node, a, "strides", 1)
    dil = _pair(g, node, a, "dilations", 1)
    pad = (int(pads[0]), int(pads[1]))
    if len(g.cur_shape) != 3:
        g.fail(f"{_where(node)}: input of shape {list(g.cur_shape)} per example, expected "
               f"[channels, height, width]")
    rnd = math.ceil if a.get("ceil_mode", 0) else math.floor
    hw = tuple(rnd((g.cur_shape[1 + i] + 2 * pad[i] - dil[i] * (kernel[i] - 1) - 1) / stride[i])
               + 1 for i in range(2))
    if min(hw) < 1:
        g.fail(f"{_where(node)}: the window does not fit the input {list(g.cur_shape)}")
    return stride, pad, dil, hw


def _conv(g: _Graph, node):
    g.data_input(node, (1, 2))
    a = _attrs(node)
    w = g.const(node, 1, "weight").astype(np.float32)
    if w.ndim != 4:
        g.fail(f"{_where(node)}: weight of shape {list(w.shape)}; only 2-D convolution is "
               f"supported")
    if a.get("group", 1) != 1:
        g.fail(f"{_where(node)}: group {a['group']}; only group 1 is supported")
    out_c, in_c, kh, kw = w.shape
    if "kernel_shape" in a and list(a["kernel_shape"]) != [kh, kw]:
        g.fail(f"{_where(node)}: kernel_shape {list(a['kernel_shape'])} does not match the "
               f"weight {list(w.shape)}")
    if len(g.cur_shape) != 3 or g.cur_shape[0] != in_c:
        g.fail(f"{_where(node)}: weight takes {in_c} channels, the input is "
               f"{list(g.cur_shape)}")
    stride, pad, dil, hw = _window(g, node, a, (kh, kw))
    b = None
    if len(node.input) > 2 and node.input[2]:
        b = _vector(g, node, g.const(node, 2, "bias"), out_c, "bias")
    conv = nn.utils.skip_init(nn.Conv2d, in_c, out_c, (kh, kw), stride=stride, padding=pad,
                              dilation=dil, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
        conv.bias.copy_(torch.from_numpy(np.zeros(out_c, np.float32) if b is None else b))
    g.advance(node, conv, (out_c, *hw), node.input[1])


def _maxpool(g: _Graph, node):
    g.data_input(node)
    a = _attrs(node)
    if a.get("storage_order", 0) != 0:
        g.fail(f"{_where(node)}: storage_order 1 is not supported")
    kernel = _pair(g, node, a, "kernel_shape", 0)
    stride, pad, dil, hw = _window(g, node, a, kernel)
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        g.fail(f"{_where(node)}: pads {list(pad)} larger than half the kernel {list(kernel)}")
    pool = nn.MaxPool2d(kernel, stride=stride, padding=pad, dilation=dil,
                        ceil_mode=bool(a.get("ceil_mode", 0)))
    g.advance(node, pool, (g.cur_shape[0], *hw))


_HANDLERS = {
    "Constant": _constant,
    "Identity": _identity,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _add,
    "Relu": _relu,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Conv": _conv,
    "MaxPool": _maxpool,
}
