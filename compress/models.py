"""The networks of the Deep Compression paper's MNIST experiments (Caffe variants).

* LeNet-300-100: 784 -> 300 -> 100 -> 10, ReLU between (266,610 parameters).
* LeNet-5 (Caffe's ``lenet_train_test.prototxt``): conv1 20@5x5, max-pool 2, conv2 50@5x5,
  max-pool 2, ip1 800 -> 500, ReLU, ip2 500 -> 10; no non-linearity after the convolutions,
  as in Caffe (431,080 parameters).

Inputs are float pixel / 255 of shape [n, 1, 28, 28] (zero pixels stay zero, so the integer
input of docs/formats.md section 4 is the same value in fixed point). Every stage of the
pipeline also takes any user `nn.Module` whose weights live in Linear and Conv2d layers: see
`compressible_layers`.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import InputError


class LeNet300100(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, 28, 28)
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


ARCHS = {"lenet-300-100": LeNet300100, "lenet-5": LeNet5}
UNCOMPRESSED_PARAMS = {"lenet-300-100": 266_610, "lenet-5": 431_080}


def build(arch: str) -> nn.Module:
    if arch not in ARCHS:
        raise InputError(f"unknown model {arch!r} (choose from {', '.join(ARCHS)})")
    return ARCHS[arch]()


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module of every Linear and Conv2d layer, in definition order."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    if not layers:
        raise InputError("the model has no Linear or Conv2d layer to compress")
    return layers


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
