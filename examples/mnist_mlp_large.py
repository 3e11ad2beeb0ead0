"""A larger MNIST MLP (784-1024-512-10) compressed for the EIE engine: a network the UP5K cannot
hold, for the ULX3S (docs/fpga.md, "ULX3S").

    python examples/mnist_mlp_large.py --out build/models/mlp-1024-512   # minutes on 2 cores
    python -m fpga run --sim --board ulx3s --model build/models/mlp-1024-512/model.qnet.npz

Every step is seeded (the same command gives the same qnet): a dense float model trained with
plain PyTorch on the MNIST training split, then `compress.compress_model` with fixed per-layer
densities (pruning with retraining, weight sharing, fixed point, as for any user's network).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import compress  # noqa: E402
from compress.data import load_split  # noqa: E402

SIZES = (784, 1024, 512, 10)
# fraction of the weights kept per layer: about what LeNet-300-100's sensitivity allows
DENSITIES = {"fc1": 0.06, "fc2": 0.06, "fc3": 0.25}


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(SIZES[0], SIZES[1])
        self.fc2 = nn.Linear(SIZES[1], SIZES[2])
        self.fc3 = nn.Linear(SIZES[2], SIZES[3])

    def forward(self, x):
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc3(self.relu(self.fc2(x)))


def data(path: str | None, seed: int):
    """(train, val, test) as float32 [n, 784] in 0..1 and int64 labels; 5,000 of the training
    images held out for validation (seeded)."""
    tr, te = load_split("train", path), load_split("test", path)
    x = tr.images.reshape(len(tr), -1).astype(np.float32) / 255
    y = tr.labels.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    val, train = perm[:5000], perm[5000:]
    xt = te.images.reshape(len(te), -1).astype(np.float32) / 255
    return (x[train], y[train]), (x[val], y[val]), (xt, te.labels.astype(np.int64))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 128):
            b = perm[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/models/mlp-1024-512", help="output directory")
    ap.add_argument("--data", help="MNIST IDX directory (default: $MNIST_DIR)")
    ap.add_argument("--epochs", type=int, default=2, help="dense training epochs (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    tr, val, test = data(args.data, args.seed)
    model = Mlp()
    train(model, *tr, epochs=args.epochs, seed=args.seed)
    with torch.no_grad():
        dense = 100.0 * float((model(torch.from_numpy(test[0])).argmax(1).numpy()
                               == test[1]).mean())
    print(f"dense {'-'.join(map(str, SIZES))}: {dense:.2f}% test accuracy", flush=True)
    result = compress.compress_model(model, train=tr, val=val, test=test, seed=args.seed,
                                     max_drop=1.0, densities=DENSITIES, attempts=1,
                                     prune_rounds=2, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out)
    s = result.summary
    print(f"compressed: {s['ratio']:.1f}x ({s['dcz_bytes']} bytes); wrote {out}/model.qnet.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
