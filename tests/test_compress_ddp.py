"""Training and retraining under torchrun: DistributedDataParallel with gloo, 2 CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ddp_gloo_two_processes(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests" / "ddp_worker.py"), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["backend"] == "gloo"
    # 512 images, 2 ranks, batch 32: each rank takes 8 steps per epoch on its own shard.
    assert r["steps"] == 8
    assert r["same"], "ranks diverged: gradients were not averaged"
    assert r["zero"], "a pruned weight came back under DDP"
