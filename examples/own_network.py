"""Your own network end to end: train, compress, golden model, RTL engine, simulated board.

A 4-layer network (36-48-24-12-4) on data this script makes itself: 6x6 "sensor grids" with
readings 0..100, four classes, each a blob of hot cells in its own corner plus noise. Nothing
here is MNIST: not the shape, not the range, not the number of layers.

    python examples/own_network.py --out build/example      # about a minute on 2 cores

Steps, each one a documented command or function (docs/your-network.md):
  1. train the dense float model (plain PyTorch, seeded)
  2. compress.compress_model -> result.save(DIR)           DIR/model.dcz, model.qnet.npz, ...
  3. compress.encode_inputs                                 the engine's int16 inputs
  4. python -m compress golden                              the golden model's outputs
  5. python -m tb run                                       the RTL engine in cocotb: bit-exact?
  6. python -m fpga run --sim                               the whole board in simulation
Exit status 0 only if the RTL engine and the simulated board agree bit for bit with the golden
model and the integer accuracy is within 1 point of the dense model's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import compress  # noqa: E402


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n grids of 6x6 readings in 0..100 and their class 0..3 (the hot corner)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.uniform(0, 50, (n, 6, 6))
    rows = np.where(y < 2, 0, 3)
    cols = np.where(y % 2 == 0, 0, 3)
    for k in range(n):
        r, c = rows[k] + rng.integers(0, 2), cols[k] + rng.integers(0, 2)
        x[k, r : r + 2, c : c + 2] += rng.uniform(15, 50, (2, 2))
    return np.clip(x, 0, 100).astype(np.float32), y.astype(np.int64)


class SensorNet(nn.Module):
    """An ordinary user class: a flatten, then Linear/ReLU layers in nested modules."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(36, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, x):
        return self.head(self.features(torch.flatten(x, 1)))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return 100.0 * float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def run(cmd: list[str]) -> None:
    print("$ python", " ".join(cmd), flush=True)
    r = subprocess.run([sys.executable, *cmd], cwd=REPO)
    if r.returncode != 0:
        sys.exit(f"example: FAILED: python {' '.join(cmd[:3])} exited with status {r.returncode}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/example", help="output directory")
    ap.add_argument("--count", type=int, default=40, help="test inputs through the RTL engine")
    ap.add_argument("--board-count", type=int, default=4,
                    help="test inputs through the simulated board (0: skip the board)")
    ap.add_argument("--board-preloaded", action="store_true",
                    help="simulate the board with its memories initialised instead of loading "
                         "the weights over the UART (about 40 s less; the load is what a real "
                         "board does)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    # 1. A dense model of our own, trained in our own units (readings 0..100).
    x_train, y_train = make_data(3000, args.seed)
    x_val, y_val = make_data(600, args.seed + 1)
    x_test, y_test = make_data(600, args.seed + 2)
    model = SensorNet()
    train(model, x_train, y_train, epochs=8, seed=args.seed)
    dense = accuracy(model, x_test, y_test)
    print(f"dense float model: {dense:.2f}% test accuracy")

    # 2. Compress: densities, index bits and input scaling are all chosen automatically.
    result = compress.compress_model(model, train=(x_train, y_train), val=(x_val, y_val),
                                     test=(x_test, y_test), seed=args.seed, max_drop=0.5,
                                     progress=False)
    result.save(out)
    s = result.summary
    print(f"compressed: {s['ratio']:.1f}x ({s['dcz_bytes']} bytes), input_frac "
          f"{result.qnet.input_frac}")

    # 3. The engine's inputs, and the labels, as files the command lines read.
    n = min(args.count, len(x_test))
    xi = compress.encode_inputs(x_test[:n], result.qnet)
    np.save(out / "xi.npy", xi)
    np.save(out / "y.npy", y_test[:n])
    qnet = str(out / "model.qnet.npz")

    # 4-5. The golden model and the RTL engine, then compare bit for bit.
    run(["-m", "compress", "golden", "--model", qnet, "--inputs", str(out / "xi.npy"),
         "--out", str(out / "y_golden.npy")])
    run(["-m", "tb", "run", "--model", qnet, "--inputs", str(out / "xi.npy"),
         "--out", str(out / "y_rtl.npy"), "--pes", "8", "--stats", str(out / "stats.json")])
    golden = np.load(out / "y_golden.npy")
    rtl = np.load(out / "y_rtl.npy")
    exact = int(np.sum(np.all(golden == rtl, axis=1)))
    integer_acc = 100.0 * float(np.mean(golden.argmax(1) == y_test[:n]))
    print(f"RTL engine: bit-exact {exact}/{n}; integer accuracy {integer_acc:.2f}% "
          f"on these {n} inputs")

    # 6. The whole board (UART, link, engine) in simulation, inputs streamed by the host.
    if args.board_count:
        run(["-m", "fpga", "run", "--sim", "--model", qnet, "--inputs", str(out / "xi.npy"),
             "--labels", str(out / "y.npy"), "--count", str(args.board_count),
             *(["--no-spram"] if args.board_preloaded else [])])

    full = compress.encode_inputs(x_test, result.qnet)
    from compress.golden import golden as golden_model, predict

    int_acc = 100.0 * float(np.mean(predict(golden_model(result.qnet, full)) == y_test))
    print(f"integer (golden) accuracy on all {len(y_test)} test inputs: {int_acc:.2f}% "
          f"(dense {dense:.2f}%)")
    ok = exact == n and int_acc >= dense - 1.0
    print("example: OK" if ok else "example: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
