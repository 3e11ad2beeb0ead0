"""Import a network from an ONNX file as a PyTorch `nn.Sequential`, by parsing it only.

The `onnx` package reads the protobuf; nothing in the file is ever executed and external data
files are refused. The graph must be one chain from its single input to its single output:

    Gemm (transA 0, any transB, alpha and beta folded in)  -> Linear
    MatMul by a constant matrix, optionally then Add of a constant bias -> Linear
    Relu -> ReLU;  Flatten (axis 1) and Reshape to [batch, -1] -> Flatten
    Conv (2-D, group 1, symmetric pads) -> Conv2d;  MaxPool (2-D) -> MaxPool2d
    BatchNormalization (inference) -> BatchNorm1d/2d;  Softmax, LogSoftmax (the last op, over
    the classes) -> Softmax/LogSoftmax;  Identity, Dropout (inference) -> nothing

plus the constant and shape arithmetic exporters put in front of a Reshape
(Constant, Shape, Gather, Unsqueeze, Concat), as torch writes for `x.view(x.size(0), -1)` with
a dynamic batch axis. Any other op is refused with one line naming the node and the op.
`compress.compress_model` then takes the chain as it takes a PyTorch module (docs/formats.md
section 7): it folds each BatchNorm into the Conv/Gemm before it, drops the final Softmax and
refuses, naming the layer, what the integer network cannot hold (dilation, a pooling window
other than its stride, a BatchNorm after a ReLU ...).

Every tensor's declared size is checked against a limit before anything is converted or
allocated. The input shape without the batch axis is recorded as `model.input_shape`.

The file is untrusted. Before the protobuf is parsed (which costs ~80 times the bytes of a
file of tiny messages), `_scan` walks its wire format without allocating: nodes, messages,
other entries and packed numbers are counted against `compress.limits` (max_onnx_nodes,
max_weights). While the graph is walked, every attribute is read through a typed getter
(`_attr_int`, `_attr_float`, `_attr_ints`, `_attr_str`), every shape value through
`_shape_list` (at most max_rank entries), and every layer goes through `_Graph.advance`, which
checks its output dimensions (max_dim), the activations one example makes (max_activations)
and its operations (max_ops). Every failure is an `InputError` of one line naming the node.
Weights and biases are checked finite and within `limits.MAX_ABS_VALUE` before the network is
returned. A new op handler gets all of this by using those helpers.
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
from .infile import read_input

SUPPORTED = ("Gemm, MatMul, Add, Relu, Flatten, Reshape, Conv, MaxPool, BatchNormalization, "
             "Dropout, Softmax, LogSoftmax, Identity")

_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # TensorProto data types
_INT_TYPES = {6: np.int32, 7: np.int64}
_BATCH = "N"  # the batch axis in a shape value
_MAX_DEPTH = 32  # nested protobuf messages (a chain's graph needs 6)
_MESSAGES_PER_NODE = 16  # protobuf messages the file may hold per allowed node ...
_ENTRIES_PER_NODE = 64  # ... and other entries (names, numbers that are not tensor data)


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
        self.lim = limits.get()
        self.total = 0
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, list] = {}  # shape values: lists of ints and _BATCH
        self.layers: list[nn.Module] = []
        self.names: list[str] = []
        self.nodes: list[str] = []  # the node each layer came from (for messages)
        self.cur = ""  # the data value the chain has reached
        self.cur_shape: tuple[int, ...] = ()
        self.batch_value: int | None = None  # a fixed batch size in the input's dims
        self.bias_for = ""  # value a following Add of a constant may add a bias to
        self.activations = 0  # values one example makes, the input's and every layer's
        self.ops = 0  # multiply-adds and comparisons of one example
        self.softmax = ""  # the Softmax/LogSoftmax node, once there is one: nothing may follow

    def fail(self, msg: str):
        raise InputError(f"{self.path}: {msg}")

    # -- tensors -------------------------------------------------------------------------

    def tensor(self, t, where: str) -> np.ndarray:
        onnx = _onnx()
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            self.fail(f"{where}: external data is not supported (the weights must be inside "
                      f"the .onnx file)")
        if t.HasField("segment"):
            self.fail(f"{where}: segmented tensors are not supported")
        if len(t.dims) > self.lim.max_rank:
            self.fail(f"{where}: {len(t.dims)} axes exceed the limit max_rank="
                      f"{self.lim.max_rank} ({limits.how_to_raise('max_rank')})")
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
            self.fail(f"{where}: data type {_type_name(dt)} is not supported")
        # Declared size and stored data must agree before numpy_helper touches them.
        if t.HasField("raw_data"):
            have, want = len(t.raw_data), n * np.dtype(np_type).itemsize
        else:
            have, want = len(getattr(t, field)), n
        if have != want:
            self.fail(f"{where}: declares {dims} but holds {have} "
                      f"{'bytes' if t.HasField('raw_data') else 'values'}, expected {want}")
        from onnx import numpy_helper

        try:
            return np.array(numpy_helper.to_array(t), dtype=np_type)
        except (ValueError, TypeError, OverflowError) as e:  # e.g. float16 bits out of range
            self.fail(f"{where}: cannot read the tensor ({_first_line(e)})")

    def const(self, node, i: int, what: str) -> np.ndarray:
        name = node.input[i] if i < len(node.input) else ""
        if name not in self.consts:
            self.fail(f"{_where(node)}: {what} ({_short(name) if name else 'missing'}) must be "
                      f"a constant")
        return self.consts[name]

    # -- the chain -----------------------------------------------------------------------

    def data_input(self, node, n_consts: tuple[int, ...] = ()) -> None:
        if self.softmax and node.input and node.input[0] == self.cur and \
                node.op_type != "Identity":
            self.fail(f"{_where(node)}: follows the {self.softmax}; a Softmax is only dropped "
                      f"as the last op")
        if not node.input or node.input[0] != self.cur:
            got = _short(node.input[0]) if node.input else "nothing"
            self.fail(f"{_where(node)}: takes {got}, not the previous layer's output "
                      f"{_short(self.cur)} (only a single chain of layers is supported)")
        for i, name in enumerate(node.input[1:], 1):
            if name and i not in n_consts:
                self.fail(f"{_where(node)}: unexpected input {_short(name)}")
        _output(self, node)

    def advance(self, node, layer: nn.Module | None, shape: tuple[int, ...],
                weight: str = "") -> None:
        """Move the chain past `node`; a `layer` (with output `shape` per example) is checked
        against the limits on dimensions, activations and operations first (the importer never
        runs the network, so nothing of that size has been made)."""
        out = _output(self, node)
        if layer is not None:
            self.check_layer(node, layer, shape)
            self.layers.append(layer)
            self.names.append(self.layer_name(layer, weight))
            self.nodes.append(_where(node))
        self.cur = out
        self.cur_shape = shape
        self.bias_for = ""

    def check_layer(self, node, layer: nn.Module, shape: tuple[int, ...]) -> None:
        lim = self.lim
        if any(not 1 <= d <= lim.max_dim for d in shape):
            self.fail(f"{_where(node)}: output of shape {list(shape)} per example; every size "
                      f"must be 1 .. max_dim={lim.max_dim:,}")
        n = math.prod(shape)
        self.activations += n
        if self.activations > lim.max_activations:
            self.fail(f"{_where(node)}: output {list(shape)} per example brings the values one "
                      f"example makes to {self.activations:,}, over the limit max_activations="
                      f"{lim.max_activations:,} ({limits.how_to_raise('max_activations')})")
        self.ops += _layer_ops(layer, n)
        if self.ops > lim.max_ops:
            self.fail(f"{_where(node)}: brings the operations of one example to {self.ops:,}, "
                      f"over the limit max_ops={lim.max_ops:,} "
                      f"({limits.how_to_raise('max_ops')})")

    def layer_name(self, layer: nn.Module, weight: str) -> str:
        """The exporter's name for a layer with weights ("fc1.weight" -> "fc1"), else kind + index.

        torch.onnx.export names initializers after the modules' parameters, so the tables of
        the compressed network use the names of the user's own modules.
        """
        weight = _text(weight)
        base = weight[:-len(".weight")] if weight.endswith(".weight") else ""
        name = base.replace(".", "_")
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name) or name in self.names:
            kind = {nn.Linear: "linear", nn.Conv2d: "conv", nn.ReLU: "relu",
                    nn.Flatten: "flatten", nn.MaxPool2d: "pool", nn.BatchNorm1d: "bn",
                    nn.BatchNorm2d: "bn", nn.Softmax: "softmax",
                    nn.LogSoftmax: "logsoftmax"}.get(type(layer), "layer")
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
        if out_f < 1:
            self.fail(f"{_where(node)}: weight of shape {list(w.shape)} has no outputs")
        lin = nn.utils.skip_init(nn.Linear, in_f, out_f)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            lin.bias.copy_(torch.from_numpy(
                np.zeros(out_f, np.float32) if b is None else b.astype(np.float32)))
        self.advance(node, lin, (out_f,), node.input[1])
        self.bias_for = self.cur

    def check_values(self) -> None:
        """Every weight and bias finite and within MAX_ABS_VALUE (before any training)."""
        for where, layer in zip(self.nodes, self.layers):
            for pname, p in layer.named_parameters():
                a = p.detach()
                if not bool(torch.isfinite(a).all()):
                    self.fail(f"{where}: {pname} holds NaN or infinite values (after alpha and "
                              f"beta are applied)")
                peak = float(a.abs().max()) if a.numel() else 0.0
                if peak > limits.MAX_ABS_VALUE:
                    self.fail(f"{where}: {pname} reaches |{peak:.4g}|, beyond the +-2**31 "
                              f"the fixed point and float32 training can hold")


def _layer_ops(layer: nn.Module, out_values: int) -> int:
    """Multiply-adds (a weight layer) or comparisons (a pooling window) per example."""
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    if isinstance(layer, nn.Conv2d):
        return out_values * math.prod(layer.weight.shape[1:])
    if isinstance(layer, nn.MaxPool2d):
        k = layer.kernel_size
        return out_values * (k * k if isinstance(k, int) else math.prod(k))
    return out_values


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _text(s) -> str:
    """A protobuf string as text: proto2 hands over invalid UTF-8 as bytes."""
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else s


def _short(name) -> str:
    """A value or node name for a one-line message: quoted, newlines escaped, cut short."""
    name = _text(name)
    return repr(name[:64] + ("..." if len(name) > 64 else ""))


def _type_name(dt: int) -> str:
    onnx = _onnx()
    try:
        return onnx.TensorProto.DataType.Name(dt)
    except ValueError:
        return f"{dt} (unknown)"


def _op(node) -> str:
    op = _text(node.op_type)
    return op if re.fullmatch(r"[A-Za-z0-9_]{1,64}", op) else _short(op)


def _where(node) -> str:
    return f"node {_short(node.name)} ({_op(node)})" if node.name else f"{_op(node)} node"


def _output(g: _Graph, node) -> str:
    """The node's one output name (InputError naming the node for none or several)."""
    outs = list(node.output)
    if len(outs) < 1 or not outs[0]:
        g.fail(f"{_where(node)}: has no output")
    if any(outs[1:]):
        g.fail(f"{_where(node)}: only one output is supported")
    return outs[0]


# -- typed attributes --------------------------------------------------------------------------
# Each getter takes the attribute of that name (the default when absent) and refuses another
# type, a repeated name, or a value out of range, in one line naming the node.

_ATTR_KINDS = {1: ("float", "f"), 2: ("int", "i"), 3: ("string", "s"), 7: ("ints", "ints")}
_ATTR_NAMES = {0: "undefined", 1: "a float", 2: "an integer", 3: "a string", 4: "a tensor",
               5: "a graph", 6: "floats", 7: "integers", 8: "strings", 9: "tensors",
               10: "graphs", 11: "a sparse tensor", 12: "sparse tensors", 13: "a type",
               14: "types"}


def _attr(g: _Graph, node, name: str, atype: int):
    found = [a for a in node.attribute if a.name == name]
    if not found:
        return None
    if len(found) > 1:
        g.fail(f"{_where(node)}: attribute {name} given {len(found)} times")
    a = found[0]
    # An attribute with no type (files older than IR version 3) counts by the field it sets.
    kind, field = _ATTR_KINDS[atype]
    ok = a.type == atype or (a.type == 0 and (len(a.ints) > 0 if atype == 7 else
                                              a.HasField(field)))
    if not ok:
        g.fail(f"{_where(node)}: attribute {name} must be {_ATTR_NAMES[atype]}, not "
               f"{_ATTR_NAMES.get(a.type, f'type {a.type}')}")
    return a


def _attr_int(g: _Graph, node, name: str, default: int, lo: int | None = None,
              hi: int | None = None) -> int:
    a = _attr(g, node, name, 2)
    v = default if a is None else int(a.i)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        g.fail(f"{_where(node)}: attribute {name}={v} outside {lo} .. {hi}")
    return v


def _attr_float(g: _Graph, node, name: str, default: float) -> float:
    a = _attr(g, node, name, 1)
    v = default if a is None else float(a.f)
    if not math.isfinite(v):
        g.fail(f"{_where(node)}: attribute {name}={v} is not a finite number")
    return v


def _attr_ints(g: _Graph, node, name: str, default: list[int] | None,
               lo: int | None = None) -> list[int] | None:
    """A list attribute (at most max_rank entries; each >= lo and <= max_dim when lo is set)."""
    a = _attr(g, node, name, 7)
    if a is None:
        return None if default is None else list(default)
    if len(a.ints) > g.lim.max_rank:
        g.fail(f"{_where(node)}: attribute {name} has {len(a.ints):,} entries, over the limit "
               f"max_rank={g.lim.max_rank}")
    v = [int(x) for x in a.ints]
    if lo is not None and any(not lo <= x <= g.lim.max_dim for x in v):
        g.fail(f"{_where(node)}: attribute {name}={v}; each entry must be {lo} .. "
               f"max_dim={g.lim.max_dim:,}")
    return v


def _attr_str(g: _Graph, node, name: str, default: str) -> str:
    a = _attr(g, node, name, 3)
    return default if a is None else a.s.decode("utf-8", "replace")


def _shape_list(g: _Graph, node, values: list) -> list:
    """A shape value as the shape arithmetic makes it: at most max_rank entries."""
    _check_rank(g, node, len(values))
    return values


def _check_rank(g: _Graph, node, n: int) -> None:
    if n > g.lim.max_rank:
        g.fail(f"{_where(node)}: a shape value of {n:,} entries, over the limit "
               f"max_rank={g.lim.max_rank} ({limits.how_to_raise('max_rank')})")


def _vector(g: _Graph, node, c: np.ndarray, n: int, what: str) -> np.ndarray:
    """A bias of any shape that broadcasts to [n] along the last axis, as [n]."""
    c = np.asarray(c)
    while c.ndim > 1 and c.shape[0] == 1:
        c = c[0]
    try:
        return np.broadcast_to(c, (n,)).astype(np.float32)
    except ValueError:
        g.fail(f"{_where(node)}: {what} of shape {list(np.shape(c))} does not fit {n} outputs")


# -- the file ----------------------------------------------------------------------------------


def _max_file_bytes(max_elements: int) -> int:
    # Weights are at most 8 bytes an element; the rest of a model is small. Protobuf stops at 2 GB.
    return min(8 * max_elements + (64 << 20), (1 << 31) - 1)


class _Scan:
    """A walk over the protobuf wire format of a ModelProto that counts what the parser would
    make, without allocating: nodes, other messages, other entries (names, numbers that are
    not tensor data) and packed numbers. Refuses a file that would cost more than the limits
    allow (or is not a protobuf) before `onnx` parses it."""

    def __init__(self, data: bytes, path: Path, lim: limits.Limits):
        self.buf = memoryview(data)
        self.arr = np.frombuffer(data, np.uint8)
        self.path = path
        self.lim = lim
        self.nodes = self.messages = self.entries = self.numbers = 0
        self.max_messages = _MESSAGES_PER_NODE * lim.max_onnx_nodes
        self.max_entries = _ENTRIES_PER_NODE * lim.max_onnx_nodes
        self._fields: dict = {}

    def bad(self, why: str):
        raise InputError(f"{self.path}: not a valid ONNX file ({why})")

    def fields(self, desc) -> dict:
        f = self._fields.get(desc.full_name)
        if f is None:
            f = self._fields[desc.full_name] = {fd.number: fd for fd in desc.fields}
        return f

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        buf, v, shift = self.buf, 0, 0
        while True:
            if pos >= end:
                self.bad("truncated protobuf")
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            if b < 0x80:
                return v, pos
            shift += 7
            if shift >= 70:
                self.bad("malformed varint")

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise InputError(f"{self.path}: more than {self.max_entries:,} protobuf entries "
                             f"besides tensor data ({_ENTRIES_PER_NODE} per node of the limit "
                             f"max_onnx_nodes={self.lim.max_onnx_nodes:,}; "
                             f"{limits.how_to_raise('max_onnx_nodes')})")

    def message(self, desc) -> None:
        self.messages += 1
        if desc.name == "NodeProto":
            self.nodes += 1
            if self.nodes > self.lim.max_onnx_nodes:
                raise InputError(f"{self.path}: more than {self.lim.max_onnx_nodes:,} nodes, "
                                 f"the limit max_onnx_nodes "
                                 f"({limits.how_to_raise('max_onnx_nodes')})")
        if self.messages > self.max_messages:
            raise InputError(f"{self.path}: more than {self.max_messages:,} protobuf messages "
                             f"({_MESSAGES_PER_NODE} per node of the limit max_onnx_nodes="
                             f"{self.lim.max_onnx_nodes:,}; "
                             f"{limits.how_to_raise('max_onnx_nodes')})")

    def packed(self, fd, pos: int, n: int) -> None:
        t = fd.type
        if t in (2, 7, 15):  # float, fixed32, sfixed32
            count = n // 4
        elif t in (1, 6, 16):  # double, fixed64, sfixed64
            count = n // 8
        else:  # varints: one byte below 0x80 ends each
            count = int(np.count_nonzero(self.arr[pos:pos + n] < 0x80))
        self.numbers += count
        if self.numbers > self.lim.max_weights:
            raise InputError(f"{self.path}: more than {self.lim.max_weights:,} numbers in "
                             f"tensors and lists, over the limit max_weights "
                             f"({limits.how_to_raise('max_weights')})")

    def walk(self, pos: int, end: int, desc, depth: int) -> None:
        fields = self.fields(desc)
        while pos < end:
            key, pos = self.varint(pos, end)
            num, wire = key >> 3, key & 7
            if num == 0:
                self.bad("field number 0")
            if wire == 0:
                _, pos = self.varint(pos, end)
                self.entry()
            elif wire == 1 or wire == 5:
                pos += 8 if wire == 1 else 4
                self.entry()
            elif wire == 2:
                n, pos = self.varint(pos, end)
                if pos + n > end:
                    self.bad("truncated protobuf")
                fd = fields.get(num)
                if fd is not None and fd.type == 11:  # a message
                    self.message(fd.message_type)
                    if depth >= _MAX_DEPTH:
                        raise InputError(f"{self.path}: protobuf messages nested more than "
                                         f"{_MAX_DEPTH} deep")
                    self.walk(pos, pos + n, fd.message_type, depth + 1)
                elif fd is not None and fd.is_repeated and fd.type not in (9, 12):
                    self.packed(fd, pos, n)
                else:  # a string, bytes or an unknown field: held as it is
                    self.entry()
                pos += n
            else:
                self.bad(f"wire type {wire}")
            if pos > end:
                self.bad("truncated protobuf")


def _read_model(path: Path, max_elements: int):
    onnx = _onnx()
    data = read_input(path, max_bytes=_max_file_bytes(max_elements), limit="max_weights",
                      expected="an .onnx file")
    _Scan(data, path, limits.get()).walk(0, len(data), onnx.ModelProto.DESCRIPTOR, 0)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises several kinds on garbage
        raise InputError(f"{path}: not a valid ONNX file ({_first_line(e)})") from None
    return model


def load_onnx(path: str | os.PathLike, *, max_elements: int | None = None) -> nn.Sequential:
    """The network in an ONNX file as an `nn.Sequential` of Linear/ReLU/Flatten (Conv2d/MaxPool2d).

    `model.input_shape` is the input's shape without the batch axis. InputError (one line,
    naming the node and op) for anything that is not such a chain, or that exceeds a limit of
    `compress.limits`. `max_elements` bounds the elements of all tensors together (default:
    the limit max_weights).
    """
    path = Path(path)
    if max_elements is None:
        max_elements = limits.get().max_weights
    model = _read_model(path, max_elements)
    graph = model.graph
    g = _Graph(path, max_elements)
    if len(graph.sparse_initializer):
        g.fail("sparse initializers are not supported")
    limits.check("max_onnx_nodes", len(graph.node), f"{path}: graph nodes")
    for t in graph.initializer:
        g.consts[t.name] = g.tensor(t, f"initializer {_short(t.name)}")
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
            dom = _text(node.domain)
            dom = dom if re.fullmatch(r"[A-Za-z0-9_.]{1,64}", dom) else _short(dom)
            g.fail(f"{_where(node)}: op {dom}.{_op(node)} is not supported "
                   f"(supported: {SUPPORTED})")
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            g.fail(f"{_where(node)}: op {_op(node)} is not supported (supported: {SUPPORTED})")
        handler(g, node)
    out = graph.output[0].name
    if out != g.cur:
        g.fail(f"graph output {_short(out)} is not the end of the chain of layers "
               f"({_short(g.cur)})")
    if not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in g.layers):
        g.fail("the graph has no Gemm, MatMul or Conv layer")
    g.check_values()
    seq = nn.Sequential(OrderedDict(zip(g.names, g.layers))).eval()
    seq.input_shape = input_shape
    seq.activations = g.activations  # values one example makes (sizes evaluation batches)
    return seq


def _input_shape(g: _Graph, inp) -> tuple[int, ...]:
    tt = inp.type.tensor_type
    name = _short(inp.name)
    if not inp.type.HasField("tensor_type") or tt.elem_type not in _FLOAT_TYPES:
        g.fail(f"graph input {name}: expected a float tensor")
    if not tt.HasField("shape") or len(tt.shape.dim) < 2:
        g.fail(f"graph input {name}: expected a shape [batch, ...] with known sizes")
    dims = list(tt.shape.dim)
    if len(dims) > g.lim.max_rank:
        g.fail(f"graph input {name}: {len(dims)} axes exceed the limit max_rank="
               f"{g.lim.max_rank}")
    if dims[0].HasField("dim_value"):
        g.batch_value = int(dims[0].dim_value)
    shape = []
    for i, d in enumerate(dims[1:], 1):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            g.fail(f"graph input {name}: axis {i} has no fixed size")
        if d.dim_value > g.lim.max_dim:
            g.fail(f"graph input {name}: axis {i} of size {d.dim_value:,} exceeds the limit "
                   f"max_dim={g.lim.max_dim:,}")
        shape.append(int(d.dim_value))
    n = math.prod(shape)
    if n > g.lim.max_activations:
        g.fail(f"graph input {name}: {n:,} values per example exceed the limit "
               f"max_activations={g.lim.max_activations:,} "
               f"({limits.how_to_raise('max_activations')})")
    g.activations = n
    return tuple(shape)


# -- op handlers -------------------------------------------------------------------------------


def _constant(g: _Graph, node):
    onnx = _onnx()
    out = _output(g, node)
    a = node.attribute[0] if len(node.attribute) == 1 else None
    if a is None:
        g.fail(f"{_where(node)}: expected one value attribute")
    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
        v = g.tensor(a.t, _where(node))
    elif a.name == "value_int" and a.type == onnx.AttributeProto.INT:
        v = np.array(a.i)
    elif a.name == "value_float" and a.type == onnx.AttributeProto.FLOAT:
        v = np.array(a.f, dtype=np.float32)
    elif a.name in ("value_ints", "value_floats") and a.type in (onnx.AttributeProto.INTS,
                                                                   onnx.AttributeProto.FLOATS):
        vals = a.ints if a.type == onnx.AttributeProto.INTS else a.floats
        if g.total + len(vals) > g.max_elements:
            g.fail(f"{_where(node)}: {len(vals):,} values exceed the limit max_weights="
                   f"{g.max_elements:,}")
        g.total += len(vals)
        v = np.array(list(vals), dtype=np.int64 if a.type == onnx.AttributeProto.INTS
                     else np.float32)
    else:
        g.fail(f"{_where(node)}: constant attribute {_short(a.name)} "
               f"({_ATTR_NAMES.get(a.type, f'type {a.type}')}) is not supported")
    g.consts[out] = v


def _identity(g: _Graph, node):
    src = node.input[0] if node.input else ""
    if src in g.consts:
        g.consts[_output(g, node)] = g.consts[src]
    elif src in g.shapes:
        g.shapes[_output(g, node)] = g.shapes[src]
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
    c = g.consts.get(name)
    if c is not None and c.dtype.kind in "iu" and c.ndim <= 1:
        _check_rank(g, node, c.size)
        return [int(v) for v in c.reshape(-1)]
    g.fail(f"{_where(node)}: op {node.op_type} on {_short(name)} is not supported; only on the "
           f"shape arithmetic in front of a Reshape (supported: {SUPPORTED})")


def _shape(g: _Graph, node):
    if not node.input or node.input[0] != g.cur:
        g.fail(f"{_where(node)}: only the shape of the previous layer's output is supported")
    full = [_BATCH, *g.cur_shape]
    start = _attr_int(g, node, "start", 0)
    end = _attr_int(g, node, "end", len(full))
    g.shapes[_output(g, node)] = _shape_list(g, node, full[start:end])


def _gather(g: _Graph, node):
    if node.input and node.input[0] not in g.shapes:
        g.fail(f"{_where(node)}: op Gather is not supported (supported: {SUPPORTED}); "
               f"only the shape arithmetic in front of a Reshape")
    vals = _shape_value(g, node, 0)
    idx = g.const(node, 1, "indices")
    if _attr_int(g, node, "axis", 0) != 0 or idx.dtype.kind not in "iu" or idx.ndim > 1:
        g.fail(f"{_where(node)}: only gathering from a shape by constant indices is supported")
    _check_rank(g, node, idx.size)
    try:
        out = [vals[int(i)] for i in idx.reshape(-1)]
    except IndexError:
        g.fail(f"{_where(node)}: index out of range of the shape {vals}")
    g.shapes[_output(g, node)] = out


def _unsqueeze(g: _Graph, node):
    vals = _shape_value(g, node, 0)
    g.shapes[_output(g, node)] = vals  # a scalar and a 1-element list are the same shape value


def _concat(g: _Graph, node):
    out: list = []
    for i in range(len(node.input)):
        out = _shape_list(g, node, out + _shape_value(g, node, i))
    g.shapes[_output(g, node)] = out


def _gemm(g: _Graph, node):
    g.data_input(node, (1, 2))
    if _attr_int(g, node, "transA", 0) != 0:
        g.fail(f"{_where(node)}: transA=1 is not supported")
    trans_b = _attr_int(g, node, "transB", 0, 0, 1)
    alpha = _attr_float(g, node, "alpha", 1.0)
    beta = _attr_float(g, node, "beta", 1.0)
    w = g.const(node, 1, "weight B").astype(np.float32)
    if w.ndim != 2:
        g.fail(f"{_where(node)}: weight B of shape {list(w.shape)}, expected a matrix")
    w = w if trans_b else w.T
    with np.errstate(all="ignore"):  # an overflow is refused with the other values
        w = w * np.float32(alpha)
    b = None
    if len(node.input) > 2 and node.input[2]:
        b = _vector(g, node, g.const(node, 2, "bias C"), w.shape[0], "bias C")
        with np.errstate(all="ignore"):
            b = b * np.float32(beta)
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
    axis = _attr_int(g, node, "axis", 1)
    if axis not in (1, -len(g.cur_shape)):  # -len: axis 1 counted from the end
        g.fail(f"{_where(node)}: axis {axis}; only flattening all but the batch axis is "
               f"supported")
    g.advance(node, nn.Flatten(), (math.prod(g.cur_shape),))


def _reshape(g: _Graph, node):
    g.data_input(node, (1,))
    target = _shape_value(g, node, 1)
    n = math.prod(g.cur_shape)
    allowzero = _attr_int(g, node, "allowzero", 0)
    batch_ok = {_BATCH, -1} | ({0} if not allowzero else set()) | (
        {g.batch_value} if g.batch_value else set())
    if len(target) != 2 or target[0] not in batch_ok or target[1] not in (-1, n) or \
            target == [-1, -1]:
        g.fail(f"{_where(node)}: reshape of {[_BATCH, *g.cur_shape]} to {target}; only a "
               f"flatten to [batch, -1] is supported")
    g.advance(node, nn.Flatten(), (n,))


def _pair(g: _Graph, node, key: str, default: int) -> tuple[int, int]:
    v = _attr_ints(g, node, key, [default, default], lo=0 if key == "pads" else 1)
    if len(v) != 2:
        g.fail(f"{_where(node)}: {key} {v}; only 2-D is supported")
    return v[0], v[1]


def _window(g: _Graph, node, kernel: tuple[int, int]):
    """Strides, symmetric pads, dilations of a 2-D window op and its output size."""
    if _attr_str(g, node, "auto_pad", "NOTSET") != "NOTSET":
        g.fail(f"{_where(node)}: auto_pad is not supported (give explicit pads)")
    pads = _attr_ints(g, node, "pads", [0, 0, 0, 0], lo=0)
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        g.fail(f"{_where(node)}: pads {pads}; only symmetric 2-D padding is supported")
    stride = _pair(g, node, "strides", 1)
    dil = _pair(g, node, "dilations", 1)
    pad = (pads[0], pads[1])
    if len(g.cur_shape) != 3:
        g.fail(f"{_where(node)}: input of shape {list(g.cur_shape)} per example, expected "
               f"[channels, height, width]")
    ceil = _attr_int(g, node, "ceil_mode", 0, 0, 1)
    # Integer arithmetic: floor or ceiling of (size + 2 pad - dilated kernel) / stride, plus 1.
    hw = tuple((g.cur_shape[1 + i] + 2 * pad[i] - dil[i] * (kernel[i] - 1) - 1
                + (stride[i] - 1 if ceil else 0)) // stride[i] + 1 for i in range(2))
    if ceil:  # as torch (which runs the network): the last window starts inside the input
        hw = tuple(n - 1 if (n - 1) * stride[i] >= g.cur_shape[1 + i] + pad[i] else n
                   for i, n in enumerate(hw))
    if min(hw) < 1:
        g.fail(f"{_where(node)}: the window does not fit the input {list(g.cur_shape)}")
    return stride, pad, dil, hw


def _conv(g: _Graph, node):
    g.data_input(node, (1, 2))
    w = g.const(node, 1, "weight").astype(np.float32)
    if w.ndim != 4:
        g.fail(f"{_where(node)}: weight of shape {list(w.shape)}; only 2-D convolution is "
               f"supported")
    group = _attr_int(g, node, "group", 1)
    if group != 1:
        g.fail(f"{_where(node)}: group {group}; only group 1 is supported")
    out_c, in_c, kh, kw = w.shape
    if min(w.shape) < 1:
        g.fail(f"{_where(node)}: weight of shape {list(w.shape)} is empty")
    ks = _attr_ints(g, node, "kernel_shape", None, lo=1)
    if ks is not None and ks != [kh, kw]:
        g.fail(f"{_where(node)}: kernel_shape {ks} does not match the weight {list(w.shape)}")
    if len(g.cur_shape) != 3 or g.cur_shape[0] != in_c:
        g.fail(f"{_where(node)}: weight takes {in_c} channels, the input is "
               f"{list(g.cur_shape)}")
    stride, pad, dil, hw = _window(g, node, (kh, kw))
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
    if _attr_int(g, node, "storage_order", 0) != 0:
        g.fail(f"{_where(node)}: storage_order 1 is not supported")
    if _attr_ints(g, node, "kernel_shape", None) is None:
        g.fail(f"{_where(node)}: no kernel_shape")
    kernel = _pair(g, node, "kernel_shape", 1)
    stride, pad, dil, hw = _window(g, node, kernel)
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        g.fail(f"{_where(node)}: pads {list(pad)} larger than half the kernel {list(kernel)}")
    pool = nn.MaxPool2d(kernel, stride=stride, padding=pad, dilation=dil,
                        ceil_mode=bool(_attr_int(g, node, "ceil_mode", 0)))
    g.advance(node, pool, (g.cur_shape[0], *hw))


def _batchnorm(g: _Graph, node):
    """BatchNormalization in inference mode -> BatchNorm1d ([C]) / BatchNorm2d ([C, H, W]) with
    its running statistics (compress_model folds it into the layer before it)."""
    g.data_input(node, (1, 2, 3, 4))
    if _attr_int(g, node, "training_mode", 0) != 0:
        g.fail(f"{_where(node)}: training_mode=1; export the model in eval mode")
    eps = _attr_float(g, node, "epsilon", 1e-5)
    if len(node.input) != 5:
        g.fail(f"{_where(node)}: expected the inputs X, scale, B, mean and var")
    shape = g.cur_shape
    if len(shape) not in (1, 3):
        g.fail(f"{_where(node)}: input of shape {list(shape)} per example; only [C] or "
               f"[C, H, W]")
    c = shape[0]
    vals = [_vector(g, node, g.const(node, i, what), c, what)
            for i, what in enumerate(("scale", "B", "mean", "var"), 1)]
    if not all(bool(np.isfinite(v).all()) for v in vals):
        g.fail(f"{_where(node)}: scale, B, mean or var holds NaN or infinite values")
    if not eps >= 0 or not bool(np.all(vals[3] + eps > 0)):
        g.fail(f"{_where(node)}: var + epsilon must be > 0")
    bn = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(c, eps=eps)
    with torch.no_grad():
        for p, v in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), vals):
            p.copy_(torch.from_numpy(v))
    g.advance(node, bn.eval(), shape, node.input[1])


def _dropout(g: _Graph, node):
    """Dropout at inference is the identity (a mask output is refused: nothing may use it)."""
    g.data_input(node, (1, 2))
    if len(node.input) > 2 and node.input[2]:
        mode = g.const(node, 2, "training_mode")
        if mode.size != 1 or bool(mode.reshape(-1)[0]):
            g.fail(f"{_where(node)}: training_mode must be a constant false")
    g.advance(node, None, g.cur_shape)


def _softmax(g: _Graph, node):
    """Softmax/LogSoftmax over the classes of a [batch, classes] output: the last op."""
    g.data_input(node)
    if len(g.cur_shape) != 1:
        g.fail(f"{_where(node)}: over an input of shape {list(g.cur_shape)} per example; only "
               f"over the classes of a flat output")
    axis = _attr_int(g, node, "axis", -1)
    if axis not in (1, -1):
        g.fail(f"{_where(node)}: axis {axis}; only over the classes (axis 1 or -1)")
    layer = nn.LogSoftmax(dim=1) if node.op_type == "LogSoftmax" else nn.Softmax(dim=1)
    g.advance(node, layer, g.cur_shape)
    g.softmax = _where(node)


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
    "BatchNormalization": _batchnorm,
    "Dropout": _dropout,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
}
