"""Hostile and malformed ONNX files, built from their description (tests and measurements).

Each builder returns the bytes of an .onnx file. `small_valid` is the seed of the fuzz test.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper


def _model(nodes, inits, in_shape=("n", 4), opset=17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _bytes(m: onnx.ModelProto) -> bytes:
    return m.SerializeToString()


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def small_valid() -> bytes:
    """Flatten -> Gemm -> Relu -> MatMul + Add on [n, 2, 3]: every op kind of the importer's
    chain path, a few hundred bytes."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(5, 6)).astype(np.float32), "fc.weight"),
             numpy_helper.from_array(rng.normal(size=(5,)).astype(np.float32), "fc.bias"),
             numpy_helper.from_array(rng.normal(size=(5, 3)).astype(np.float32), "W2"),
             numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b2")]
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["h"], name="fc",
                              transB=1, alpha=1.0, beta=1.0),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b2"], ["y"], name="bias")]
    return _bytes(_model(nodes, inits, ("n", 2, 3)))


def small_conv() -> bytes:
    """Conv -> Relu -> MaxPool -> Shape/Gather/Unsqueeze/Concat -> Reshape -> Gemm on
    [n, 1, 6, 6]: the window ops and the shape arithmetic in front of a Reshape."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.normal(size=(2,)).astype(np.float32), "cb"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             numpy_helper.from_array(rng.normal(size=(3, 8)).astype(np.float32), "fw")]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3], strides=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[3, 3],
                              strides=[3, 3]),
             helper.make_node("Shape", ["p"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["b"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["b"], ["bu"], name="unsq"),
             helper.make_node("Concat", ["bu", "minus1"], ["target"], name="cat", axis=0),
             helper.make_node("Reshape", ["p", "target"], ["flat"], name="reshape"),
             helper.make_node("Gemm", ["flat", "fw"], ["y"], name="fc", transB=1)]
    return _bytes(_model(nodes, inits, ("n", 1, 6, 6)))


def small_cnn_bn() -> bytes:
    """Conv -> BatchNormalization -> Relu -> MaxPool -> Flatten -> Gemm -> BatchNormalization
    -> Relu -> Dropout -> Gemm -> LogSoftmax on [n, 1, 6, 6]: the ops a CNN brings."""
    rng = np.random.default_rng(2)

    def arr(name, *shape, pos=False):
        a = rng.normal(size=shape).astype(np.float32)
        return numpy_helper.from_array(np.abs(a) + 0.5 if pos else a, name)

    inits = [arr("cw", 3, 1, 3, 3), arr("cb", 3), arr("s1", 3), arr("b1", 3), arr("m1", 3),
             arr("v1", 3, pos=True), arr("fw", 4, 12), arr("fb", 4), arr("s2", 4), arr("b2", 4),
             arr("m2", 4), arr("v2", 4, pos=True), arr("ow", 2, 4)]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c", "s1", "b1", "m1", "v1"], ["n1"],
                              name="bn1", epsilon=1e-3),
             helper.make_node("Relu", ["n1"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["h"], name="fc", transB=1),
             helper.make_node("BatchNormalization", ["h", "s2", "b2", "m2", "v2"], ["n2"],
                              name="bn2"),
             helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
             helper.make_node("Dropout", ["r2"], ["d"], name="drop"),
             helper.make_node("Gemm", ["d", "ow"], ["o"], name="out", transB=1),
             helper.make_node("LogSoftmax", ["o"], ["y"], name="lsm", axis=1)]
    return _bytes(_model(nodes, inits, ("n", 1, 6, 6)))


# -- item 1: bombs --------------------------------------------------------------------------


def concat_bomb(doublings: int = 27) -> bytes:
    """A Shape, then Concat(s, s) doubling the shape list `doublings` times (~1 KB)."""
    nodes = [helper.make_node("Shape", ["x"], ["s0"], name="shape")]
    for i in range(doublings):
        nodes.append(helper.make_node("Concat", [f"s{i}", f"s{i}"], [f"s{i + 1}"],
                                      name=f"cat{i}", axis=0))
    nodes.append(helper.make_node("Reshape", ["x", f"s{doublings}"], ["y"], name="reshape"))
    return _bytes(_model(nodes, []))


def pads_bomb(pads: int = 1000) -> bytes:
    """A 1x1 Conv with `pads` on a 1x1 input, a (2 pads + 1)-square MaxPool, Flatten, Gemm:
    ~240 bytes whose cost grows with the pads."""
    k = 2 * pads + 1
    inits = [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "cw"),
             numpy_helper.from_array(np.ones((2, 1), np.float32), "fw")]
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[pads] * 4),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[k, k]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    return _bytes(_model(nodes, inits, ("n", 1, 1, 1)))


def pool_work_bomb(pads: int = 500, kernel: int = 501) -> bytes:
    """Few activations, much work: a padded 1x1 Conv, a large stride-1 MaxPool window, then a
    pool to 1x1, Flatten, Gemm."""
    out = 2 * pads + 1 - kernel + 1
    inits = [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "cw"),
             numpy_helper.from_array(np.ones((2, 1), np.float32), "fw")]
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[pads] * 4),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[kernel, kernel]),
             helper.make_node("MaxPool", ["p"], ["q"], kernel_shape=[out, out],
                              strides=[out, out]),
             helper.make_node("Flatten", ["q"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    return _bytes(_model(nodes, inits, ("n", 1, 1, 1)))


def empty_nodes(megabytes: float = 33) -> bytes:
    """A valid model with `megabytes` of empty NodeProtos merged into its graph."""
    base = small_valid()
    n = int(megabytes * 2**20) // 2
    graph = b"\x0a\x00" * n  # GraphProto.node (field 1), length 0
    return base + _key(7, 2) + _varint(len(graph)) + graph


# -- item 2: malformed ---------------------------------------------------------------------


def _gemm_net(**attrs) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    node = helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1)
    for k, v in attrs.items():
        node.attribute.append(v if isinstance(v, AttributeProto) else
                              helper.make_attribute(k, v))
    return _model([node], [w])


def gemm_alpha(kind: str) -> bytes:
    if kind == "string":
        return _bytes(_gemm_net(alpha="a"))
    if kind == "tensor":
        return _bytes(_gemm_net(alpha=numpy_helper.from_array(np.ones(2, np.float32))))
    if kind == "graph":
        return _bytes(_gemm_net(alpha=helper.make_graph([], "sub", [], [])))
    if kind == "ints":
        return _bytes(_gemm_net(alpha=[1, 2]))
    return _bytes(_gemm_net(alpha=float(kind)))  # "inf", "nan", "1e38"


def no_outputs(op: str) -> bytes:
    """A node of `op` with no outputs."""
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    if op == "Constant":
        nodes = [helper.make_node("Constant", [], [], name="c",
                                  value=numpy_helper.from_array(np.ones(2, np.int64))),
                 helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1)]
    else:
        nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], name="fc", transB=1),
                 helper.make_node(op, ["h"], [], name="bad")]
    return _bytes(_model(nodes, [w]))


def initializer(kind: str) -> bytes:
    """A Gemm whose weight initializer is malformed in the way `kind` names."""
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    if kind == "segment":
        w.segment.begin, w.segment.end = 0, 12
    elif kind == "axes70":
        w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1] * 70,
                        raw_data=b"\0" * 4)
    elif kind == "type999":
        w.data_type = 999
    elif kind == "zero-outputs":
        w = numpy_helper.from_array(np.ones((0, 4), np.float32), "W")
    elif kind in ("nan", "inf", "3e38"):
        a = np.ones((3, 4), np.float32)
        a[1, 2] = float(kind)
        w = numpy_helper.from_array(a, "W")
    node = helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1)
    return _bytes(_model([node], [w]))


def shape_start(value) -> bytes:
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape", start=value),
             helper.make_node("Reshape", ["x", "s"], ["f"], name="reshape"),
             helper.make_node("Gemm", ["f", "W"], ["y"], name="fc", transB=1)]
    return _bytes(_model(nodes, [w]))


def data_npz(path, x_value, dtype=np.float32, shape=(4,), n=40, classes=3):
    """A data set .npz for pipeline/sensitivity whose x is `x_value` everywhere (or random)."""
    rng = np.random.default_rng(0)
    def split(k):
        x = (rng.normal(size=(k, *shape)) if x_value is None else
             np.full((k, *shape), x_value, dtype=np.float64)).astype(dtype)
        return x, rng.integers(0, classes, k)
    (xtr, ytr), (xv, yv), (xte, yte) = split(n), split(n // 2), split(n // 2)
    np.savez(path, x_train=xtr, y_train=ytr, x_val=xv, y_val=yv, x_test=xte, y_test=yte)
    return path
