"""Run by tests/test_compress_ddp.py under torchrun (2 processes, gloo on CPU).

Trains, prunes (masks held) and fine-tunes centroids with DistributedDataParallel, then checks
on every rank that the ranks hold identical weights and masks; rank 0 writes a JSON result.
"""

import json
import sys

import numpy as np
import torch
import torch.distributed as dist

from compress.data import Split
from compress.models import LeNet300100, compressible_layers
from compress.prune import PruneConfig, prune
from compress.quantize import QuantConfig, quantize
from compress.train import TrainConfig, fit, setup_distributed


def main(out: str) -> None:
    torch.set_num_threads(1)
    rank, size = setup_distributed()
    rng = np.random.default_rng(0)  # the same data on every rank; each trains on its shard
    labels = rng.integers(0, 10, 512).astype(np.uint8)
    images = rng.integers(0, 256, (512, 28, 28)).astype(np.uint8)
    data = Split(images, labels)
    torch.manual_seed(0)
    model = LeNet300100()
    res = fit(model, data, TrainConfig(epochs=1, batch_size=32, progress=False))
    masks = prune(model, data, PruneConfig(level=0.1, steps=2, retrain=TrainConfig(
        epochs=1, batch_size=32, lr=1e-2, progress=False)), log=lambda s: None)
    cbs, idx = quantize(model, masks, data, QuantConfig(finetune=TrainConfig(
        epochs=1, batch_size=32, progress=False)))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(size)]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(g, gathered[0]) for g in gathered)
    zero = all(bool(torch.all(m.weight[~masks[n]] == 0))
               for n, m in compressible_layers(model).items())
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"world": size, "steps": res["steps"], "same": same, "zero": zero,
                       "backend": dist.get_backend()}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
