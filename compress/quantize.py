"""Trained quantization: per-layer weight sharing by 1-D k-means, then centroid fine-tuning.

Per compressible layer, the surviving (unpruned) weights are clustered into 2**bits - 1
centroids with `compress.kmeans.kmeans_1d` (init linear by default, density or random). The
layer's codebook is ``[0, c_1, ..., c_K]``: index 0 is reserved for the pruned weight, so pruned
weights are exactly zero after quantization and stay so (codebook[0] is not a parameter).

Fine-tuning keeps every assignment fixed and trains the centroids: the layer's weight is
computed as ``codebook[index]`` inside the forward pass, so autograd's gather gives each centroid
the sum of the gradients of the weights assigned to it (Han et al. 2016, eq. 3). The biases are
trained with them by default. Under torchrun the wrapper is a DDP module like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .data import Split
from .errors import InputError
from .kmeans import kmeans_1d
from .models import compressible_layers
from .train import TrainConfig, fit, teacher_logits


@dataclass
class QuantConfig:
    bits: int = 4  # index bits: 2**bits - 1 shared values plus the zero
    layer_bits: dict[str, int] = field(default_factory=dict)
    init: str = "linear"  # linear | density | random
    seed: int = 0
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=5.0, lr=1e-4, label_smoothing=0.1))
    train_bias: bool = True

    def bits_for(self, name: str) -> int:
        b = int(self.layer_bits.get(name, self.bits))
        if not 1 <= b <= 8:
            raise InputError(f"index bits for {name} must be 1..8, not {b}")
        return b


def cluster_layer(w: np.ndarray, mask: np.ndarray, bits: int, *, init: str = "linear",
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means on the surviving weights -> (codebook float32[K+1] with [0] = 0, index uint8)."""
    k = (1 << bits) - 1
    index = np.zeros(w.shape, dtype=np.uint8)
    alive = w[mask]
    if alive.size == 0:
        return np.zeros(1, dtype=np.float32), index
    k = min(k, alive.size)
    centroids, labels = kmeans_1d(alive.astype(np.float64), k, init=init, seed=seed)
    index[mask] = (labels + 1).astype(np.uint8)
    codebook = np.concatenate(([0.0], centroids)).astype(np.float32)
    return codebook, index


def cluster(model: nn.Module, masks: dict[str, torch.Tensor] | None,
            cfg: QuantConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Codebooks and index matrices for every compressible layer (masks default: w != 0)."""
    codebooks, indices = {}, {}
    layers = compressible_layers(model)
    unknown = sorted(set(cfg.layer_bits) - set(layers))
    if unknown:
        raise InputError(f"index bits for unknown layer {unknown[0]!r}")
    for i, (name, m) in enumerate(layers.items()):
        w = m.weight.detach().cpu().numpy()
        mask = (masks[name].cpu().numpy() if masks is not None and name in masks else w != 0)
        codebooks[name], indices[name] = cluster_layer(
            w, mask.astype(bool), cfg.bits_for(name), init=cfg.init, seed=cfg.seed + i)
    return codebooks, indices


class SharedWeights(nn.Module):
    """Wraps a model so each compressible layer's weight is codebook[index] (centroids trained).

    Parameters: ``centroids.<layer>`` (the K shared values, codebook[1:]) and, with
    train_bias, the wrapped model's biases. The wrapped model's own weights are not used.
    """

    def __init__(self, model: nn.Module, codebooks: dict[str, np.ndarray],
                 indices: dict[str, np.ndarray], *, train_bias: bool = True):
        super().__init__()
        self.model = model
        self.names = list(codebooks)
        self.centroids = nn.ParameterDict()
        for name in self.names:
            key = name.replace(".", "__")
            self.centroids[key] = nn.Parameter(
                torch.tensor(codebooks[name][1:], dtype=torch.float32))
            self.register_buffer(f"index__{key}", torch.from_numpy(indices[name].astype(np.int64)))
        layers = compressible_layers(model)
        for name, m in layers.items():
            m.weight.requires_grad_(False)
            if m.bias is not None:
                m.bias.requires_grad_(train_bias)

    def codebook(self, name: str) -> torch.Tensor:
        c = self.centroids[name.replace(".", "__")]
        return torch.cat([c.new_zeros(1), c])

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": self.codebook(name)[self._index(name)] for name in self.names}

    def _index(self, name: str) -> torch.Tensor:
        return getattr(self, f"index__{name.replace('.', '__')}")

    def forward(self, x):
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        params.update(self.weights())
        return torch.func.functional_call(self.model, params, (x,))

    def export(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Write the current shared weights into the wrapped model; return codebooks, indices."""
        layers = compressible_layers(self.model)
        cbs, idx = {}, {}
        with torch.no_grad():
            for name in self.names:
                key = name.replace(".", "__")
                cb = self.codebook(name)
                ix = getattr(self, f"index__{key}")
                layers[name].weight.copy_(cb[ix])
                cbs[name] = cb.cpu().numpy().astype(np.float32)
                idx[name] = ix.cpu().numpy().astype(np.uint8)
        return cbs, idx


def finetune(model: nn.Module, codebooks, indices, data: Split, cfg: QuantConfig,
             teacher: torch.Tensor | None = None):
    """Fine-tune the centroids (assignments fixed); returns the new (codebooks, indices).

    With cfg.finetune.distill > 0 the loss distills from `teacher` (logits for every training
    example), by default the model's own before weight sharing.
    """
    run = cfg.finetune.epochs > 0 and (cfg.finetune.max_steps is None or
                                       cfg.finetune.max_steps > 0)
    if run and cfg.finetune.distill > 0 and teacher is None:
        teacher = teacher_logits(model, data)
    wrapped = SharedWeights(model, codebooks, indices, train_bias=cfg.train_bias)
    if run:
        params = [p for p in wrapped.parameters() if p.requires_grad]
        fit(wrapped, data, cfg.finetune, params=params, desc="centroids", teacher=teacher)
    return _export(wrapped, model)


def _export(wrapped: SharedWeights, model: nn.Module):
    """The shared-weight layers written back into the model, its parameters trainable again."""
    out = wrapped.export()
    for m in compressible_layers(model).values():
        m.weight.requires_grad_(True)
        if m.bias is not None:
            m.bias.requires_grad_(True)
    return out


def quantize(model: nn.Module, masks, data: Split | None, cfg: QuantConfig,
             teacher: torch.Tensor | None = None):
    """k-means per layer, then (if data is given) centroid fine-tuning. Model weights updated.
    `teacher`: logits to distill from when the fine-tuning has distill > 0."""
    codebooks, indices = cluster(model, masks, cfg)
    if data is None:
        return _export(SharedWeights(model, codebooks, indices, train_bias=False), model)
    return finetune(model, codebooks, indices, data, cfg, teacher=teacher)
