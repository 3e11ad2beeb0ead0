"""The stand-in engine's image: every layer's weights as a dense matrix of codebook values.

Memories (`memory_map`): `weights` (int16, layer after layer, row-major), `bias` (int32, layer
after layer) and `act` (two banks of the widest layer: a layer reads one, writes the other).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress.errors import InputError
from compress.qnet import DEFAULT_INDEX_BITS, QNet
from images.layers import layer_kind
from images.memmap import MemorySpec
from images.params import EngineParams


@dataclass(frozen=True)
class DenseLayer:
    in_features: int
    out_features: int
    shift: int
    relu: bool
    codebook_size: int
    weight_base: int
    bias_base: int
    kind: str = "fc"


@dataclass(frozen=True, eq=False)
class DenseImage:
    pes: int
    index_bits: int
    layers: list[DenseLayer]
    weights: np.ndarray  # int16, every layer's [out, in] row-major
    bias: np.ndarray  # int32, every layer's
    rel_bits: int = 0  # no relative indices: every weight is stored

    @property
    def num_layers(self) -> int:
        return len(self.layers)


@dataclass(frozen=True)
class DenseParams(EngineParams):
    """The stand-in's parameters: what every engine takes (it queues nothing)."""


def build(qnet: QNet, pes: int, *, index_bits: int = DEFAULT_INDEX_BITS, rel_bits="auto",
          balance: bool = True) -> DenseImage:
    if pes != 1:
        raise InputError(f"the stand-in engine has one PE, not {pes}")
    qnet.validate(index_bits=index_bits)
    layers, weights, bias = [], [], []
    wb = bb = 0
    for layer in qnet.layers:
        kind = layer_kind(layer)
        w = layer.codebook.astype(np.int64)[kind.matrix(layer)].astype(np.int16)
        layers.append(DenseLayer(layer.in_features, layer.out_features, int(layer.shift),
                                 bool(layer.relu), len(layer.codebook), wb, bb, kind.name))
        weights.append(w.reshape(-1))
        bias.append(layer.bias.astype(np.int32))
        wb += w.size
        bb += layer.out_features
    return DenseImage(pes=1, index_bits=index_bits, layers=layers,
                      weights=np.concatenate(weights), bias=np.concatenate(bias))


def act_words(img: DenseImage) -> int:
    return max([img.layers[0].in_features] + [ll.out_features for ll in img.layers])


def memory_map(img: DenseImage, params: DenseParams = DenseParams()) -> list[MemorySpec]:
    return [
        MemorySpec("weights", "rom", 16, len(img.weights),
                   tuple(int(v) & 0xFFFF for v in img.weights)),
        MemorySpec("bias", "rom", 32, len(img.bias), tuple(int(v) & 0xFFFFFFFF for v in img.bias)),
        MemorySpec("act", "ram", 16, 2 * act_words(img), (), read_ports=1, write_ports=1),
    ]


def cycle_model(img: DenseImage, x, params: DenseParams = DenseParams()) -> np.ndarray:
    """Exact: a row costs its bias read, its columns and its write (in + 3 cycles)."""
    per = [ll.out_features * (ll.in_features + 3) for ll in img.layers]
    return np.tile(np.array(per, dtype=np.int64), (len(np.asarray(x)), 1))


def logic_of(img: DenseImage) -> dict:
    return {"layers": [[ll.in_features, ll.out_features, ll.shift, ll.relu, ll.weight_base,
                        ll.bias_base] for ll in img.layers]}
