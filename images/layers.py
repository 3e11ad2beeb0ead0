"""Layer kinds: what a qnet layer of each kind gives the engines' images.

Images are built and decoded layer by layer, and what a layer gives depends on its kind (a qnet
layer's `kind`; every layer of a version 1 qnet is fully connected, "fc"): the matrix of
codebook indices the sparse column format encodes (`images.csc`), one row per output row, and
how a decoded layer of that kind is made again. A kind is a `LayerKind` in `LAYER_KINDS`; each
engine lists the kinds it runs (`layer_kinds` of its record in `images.engines`), which
`check_kinds` enforces before an image is built. The builders ask `layer_kind(layer)` and do
not branch on kinds.

* "fc": a fully connected layer, its index [out, in];
* "conv": a convolution (qnet version 2), its index [out_ch, in_ch * kh * kw] slid over the
  input map; an image keeps its geometry (`images.conv.ConvGeom`) and the engines walk its
  output positions (`images.conv`, `hw.convfe`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from compress.errors import InputError
from compress.qnet import Layer


@dataclass(frozen=True)
class LayerKind:
    name: str
    # layer -> int[rows, cols]: the codebook indices the images encode, a row per output row
    matrix: Callable[[Layer], np.ndarray]
    # (codebook, index, bias, shift, relu, geom) -> the layer of this kind a decoder rebuilds
    # (geom: the image's `images.conv.ConvGeom` of a conv layer, None for fc)
    make: Callable[..., Layer]

    def with_matrix(self, layer: Layer, index: np.ndarray, bias: np.ndarray) -> Layer:
        """`layer` with another matrix and bias (rows or columns permuted), all else kept."""
        return replace(layer, index=index, bias=bias)


def _make_fc(*, codebook, index, bias, shift, relu, geom=None) -> Layer:
    return Layer(codebook=codebook, index=index, bias=bias, shift=shift, relu=relu)


def _make_conv(*, codebook, index, bias, shift, relu, geom) -> Layer:
    return Layer(codebook=codebook, index=index, bias=bias, shift=shift, relu=relu,
                 kind="conv", kernel=(geom.kh, geom.kw), stride=(geom.sh, geom.sw),
                 padding=(geom.ph, geom.pw), pool=(geom.qh, geom.qw))


FC = LayerKind("fc", matrix=lambda layer: layer.index, make=_make_fc)
CONV = LayerKind("conv", matrix=lambda layer: layer.index, make=_make_conv)

LAYER_KINDS: dict[str, LayerKind] = {k.name: k for k in (FC, CONV)}


def kind_name(layer) -> str:
    """The kind of a qnet layer ("fc" where the layer names none)."""
    return getattr(layer, "kind", FC.name)


def layer_kind(layer) -> LayerKind:
    name = kind_name(layer)
    if name not in LAYER_KINDS:
        raise InputError(f"layer kind {name!r}: the images know {', '.join(LAYER_KINDS)}")
    return LAYER_KINDS[name]


def check_kinds(qnet, runs: tuple[str, ...], engine: str) -> None:
    """InputError naming the first layer whose kind the `engine` does not run (`runs`)."""
    for i, layer in enumerate(qnet.layers):
        name = kind_name(layer)
        if name not in runs:
            raise InputError(f"l{i}: the {engine} engine runs {', '.join(runs)} layers, "
                             f"not {name!r}")
