"""Two evaluations of docs/formats.md section 7 written independently of compress.golden: a
literal loop over every output element in Python integers (small networks), and a shift-and-add
int64 numpy evaluation, one kernel offset at a time over whole maps (no im2col; LeNet-5 on all
of MNIST in under a minute)."""

import numpy as np

from compress.qnet import Layer, QNet


def _post(acc: int, layer: Layer, acc_bits: int) -> int:
    """Wrap, rounding shift, saturation, ReLU of one accumulator (Python integers)."""
    m = 1 << acc_bits
    acc = (acc + m // 2) % m - m // 2
    if layer.shift > 0:
        acc = (acc + (1 << (layer.shift - 1))) // (1 << layer.shift)  # floor division
    y = min(max(acc, -32768), 32767)
    return max(y, 0) if layer.relu else y


def loop_reference(qnet: QNet, x: np.ndarray, acc_bits: int) -> np.ndarray:
    """Section 9 word for word, one output element at a time (slow: small networks only)."""
    outs = []
    for ex in x.astype(np.int64):
        shape = tuple(qnet.input_shape)
        a = ex.reshape(shape).tolist() if len(shape) == 3 else ex.tolist()
        for layer in qnet.layers:
            cb = layer.codebook.astype(np.int64).tolist()
            idx = layer.index.tolist()
            bias = layer.bias.astype(np.int64).tolist()
            if layer.kind == "fc":
                flat = np.asarray(a, dtype=np.int64).reshape(-1).tolist()
                a = [_post(bias[r] + sum(cb[idx[r][c]] * flat[c] for c in range(len(flat))),
                           layer, acc_bits) for r in range(len(idx))]
                continue
            c_in, h, w = len(a), len(a[0]), len(a[0][0])
            (kh, kw), (sh, sw), (ph, pw), (qh, qw) = (layer.kernel, layer.stride,
                                                      layer.padding, layer.pool)
            ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            pre = [[[0] * wo for _ in range(ho)] for _ in range(len(idx))]
            for oc in range(len(idx)):
                for y in range(ho):
                    for xx in range(wo):
                        acc = bias[oc]
                        for ic in range(c_in):
                            for dy in range(kh):
                                for dx in range(kw):
                                    iy, ix = y * sh + dy - ph, xx * sw + dx - pw
                                    if 0 <= iy < h and 0 <= ix < w:
                                        acc += cb[idx[oc][(ic * kh + dy) * kw + dx]] * a[ic][iy][ix]
                        pre[oc][y][xx] = _post(acc, layer, acc_bits)
            a = [[[max(pre[oc][y * qh + i][xx * qw + j] for i in range(qh) for j in range(qw))
                   for xx in range(wo // qw)] for y in range(ho // qh)] for oc in range(len(idx))]
        outs.append(np.asarray(a, dtype=np.int64).reshape(-1))
    return np.array(outs, dtype=np.int16)


def shift_add_reference(qnet: QNet, x: np.ndarray, acc_bits: int = 32) -> np.ndarray:
    """Section 9 in int64 numpy, one kernel offset (dy, dx) at a time over whole maps."""
    a = x.astype(np.int64).reshape(len(x), *qnet.input_shape)
    m = 1 << acc_bits
    for layer in qnet.layers:
        w = layer.codebook.astype(np.int64)[layer.index]
        if layer.kind == "fc":
            acc = a.reshape(len(a), -1) @ w.T + layer.bias
        else:
            n, c, h, wd = a.shape
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
            ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
            p = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=np.int64)
            p[:, :, ph:ph + h, pw:pw + wd] = a
            w4 = w.reshape(len(w), c, kh, kw)
            acc = np.broadcast_to(layer.bias.astype(np.int64)[None, :, None, None],
                                  (n, len(w), ho, wo)).copy()
            for dy in range(kh):
                for dx in range(kw):
                    win = p[:, :, dy:dy + (ho - 1) * sh + 1:sh, dx:dx + (wo - 1) * sw + 1:sw]
                    acc += np.einsum("oc,nchw->nohw", w4[:, :, dy, dx], win)
        if acc_bits < 64:
            acc = (acc + m // 2) % m - m // 2
        if layer.shift:
            acc = (acc + (1 << (layer.shift - 1))) >> layer.shift
        y = np.clip(acc, -32768, 32767)
        if layer.relu:
            y = np.maximum(y, 0)
        if layer.kind == "conv" and tuple(layer.pool) != (1, 1):
            qh, qw = layer.pool
            n, oc, ho, wo = y.shape
            y = y[:, :, :ho // qh * qh, :wo // qw * qw].reshape(n, oc, ho // qh, qh, wo // qw, qw)
            y = y.max(axis=(3, 5))
        a = y
    return a.reshape(len(a), -1).astype(np.int16)
