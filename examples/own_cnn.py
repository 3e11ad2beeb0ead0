"""Your own CNN with BatchNorm to an integer network, in Python and through ONNX.

A small convolutional network (two conv layers with BatchNorm, ReLU and max pooling, a fully
connected layer with BatchNorm and Dropout, a final LogSoftmax) on data this script makes
itself: 12x12 "scan" images of one stroke (horizontal, vertical or one of the two diagonals)
at a random place, length and brightness, in noise, four classes. Nothing here is MNIST.

    python examples/own_cnn.py --out build/example-cnn      # about a minute of CPU

Steps, each one a documented command or function (docs/your-network.md, section "CNNs"):
  1. train the dense float model (plain PyTorch, seeded)
  2. compress.compress_model -> result.save(DIR/python)    BatchNorm folded, LogSoftmax dropped:
                                                            a version 2 qnet with conv layers
  3. torch.onnx.export, then python -m compress pipeline --model M.onnx --data D.npz
                                                            the same network through ONNX
  4. compress.encode_inputs / python -m compress encode-inputs, python -m compress golden
                                                            the integer network on the test set
Exit status 0 only if neither integer network is more than 1 point below the dense float model's
test accuracy, both are within 0.3 points of their own compressed float network's, and the golden command
line agrees with the Python golden model bit for bit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import compress  # noqa: E402
from compress.golden import golden, predict  # noqa: E402

SIZE = 12


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images [1, 12, 12] of one stroke each in noise, and its direction 0..3."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(0.0, 0.35, (n, 1, SIZE, SIZE))
    steps = {0: (0, 1), 1: (1, 0), 2: (1, 1), 3: (1, -1)}  # (dy, dx) of each direction
    for k in range(n):
        dy, dx = steps[int(y[k])]
        length = int(rng.integers(4, 8))
        r0 = int(rng.integers(0, SIZE - length * dy)) if dy else int(rng.integers(0, SIZE))
        lo, hi = (length - 1 if dx < 0 else 0), (SIZE - (length if dx > 0 else 1))
        c0 = int(rng.integers(lo, hi + 1)) if dx else int(rng.integers(0, SIZE))
        v = rng.uniform(0.6, 1.4)
        for i in range(length):
            x[k, 0, r0 + i * dy, c0 + i * dx] += v
    return x.astype(np.float32), y.astype(np.int64)


class StrokeNet(nn.Module):
    """An ordinary user class: BatchNorm after each layer, functional pooling and softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 2 * 2, 32)
        self.bn3 = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = self.drop(torch.relu(self.bn3(self.fc(x.flatten(1)))))
        return nn.functional.log_softmax(self.head(x), dim=1)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.nll_loss(model(xt[b]), yt[b]).backward()
            opt.step()
    model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return 100.0 * float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def run(cmd: list[str]) -> None:
    print("$ python", " ".join(cmd), flush=True)
    r = subprocess.run([sys.executable, *cmd], cwd=REPO)
    if r.returncode != 0:
        sys.exit(f"example: FAILED: python {' '.join(cmd[:3])} exited with status {r.returncode}")


# The settings of both compressions: short retraining (the data set is small), the rest chosen
# by compress_model itself under max_drop.
SETTINGS = {"prune_rounds": 2, "round_steps": (150, 160)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/example-cnn", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    # 1. A dense CNN of our own, trained in our own units.
    x_train, y_train = make_data(4000, args.seed)
    x_val, y_val = make_data(2000, args.seed + 1)
    x_test, y_test = make_data(2000, args.seed + 2)
    model = StrokeNet()
    train(model, x_train, y_train, epochs=12, seed=args.seed)
    dense = accuracy(model, x_test, y_test)
    print(f"dense float CNN: {dense:.2f}% test accuracy")

    # 2. Python: BatchNorm is folded, the LogSoftmax dropped, conv layers become qnet layers.
    result = compress.compress_model(model, train=(x_train, y_train), val=(x_val, y_val),
                                     test=(x_test, y_test), seed=args.seed, max_drop=0.5,
                                     progress=False, **SETTINGS)
    result.save(out / "python")
    q = result.qnet
    s = result.summary
    print(f"Python: {s['ratio']:.1f}x ({s['dcz_bytes']} bytes), qnet version {q.version}, "
          f"input {list(q.input_shape)}, layers "
          + ", ".join(f"{ly.kind}{'+relu' if ly.relu else ''}"
                      f"{'+pool' if ly.kind == 'conv' and ly.pool != (1, 1) else ''}"
                      for ly in q.layers))
    xi = compress.encode_inputs(x_test, q)
    py_int = 100.0 * float(np.mean(predict(golden(q, xi)) == y_test))

    # 3. ONNX: the same trained model exported, then the command line.
    onnx_path = out / "strokenet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, torch.zeros(1, 1, SIZE, SIZE), str(onnx_path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    np.savez(out / "strokes.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
             x_test=x_test, y_test=y_test)
    run(["-m", "compress", "pipeline", "--model", str(onnx_path), "--data",
         str(out / "strokes.npz"), "--out", str(out / "onnx"), "--max-drop", "0.5", "--seed",
         str(args.seed), "--no-progress", "--prune-rounds", str(SETTINGS["prune_rounds"]),
         "--max-steps", str(SETTINGS["round_steps"][1])])
    qnet = str(out / "onnx" / "model.qnet.npz")

    # 4. The integer network from the command line: encode the inputs, run the golden model.
    np.save(out / "x_test.npy", x_test)
    run(["-m", "compress", "encode-inputs", "--model", qnet, "--inputs",
         str(out / "x_test.npy"), "--out", str(out / "xi.npy")])
    run(["-m", "compress", "golden", "--model", qnet, "--inputs", str(out / "xi.npy"),
         "--out", str(out / "y_golden.npy"), "--index-bits", "8"])
    from compress.qnet import load_qnet

    q_onnx = load_qnet(qnet, index_bits=8)
    y_cli = np.load(out / "y_golden.npy")
    same = np.array_equal(y_cli, golden(q_onnx, compress.encode_inputs(x_test, q_onnx)))
    onnx_int = 100.0 * float(np.mean(predict(y_cli) == y_test))
    s_onnx = json.loads((out / "onnx" / "summary.json").read_text())
    print(f"ONNX: {s_onnx['ratio']:.1f}x ({s_onnx['dcz_bytes']} bytes)")
    py_q, onnx_q = s["accuracy"]["quantized"]["test"], s_onnx["accuracy"]["quantized"]["test"]
    print(f"test accuracy: dense float {dense:.2f}%; compressed float (shared weights) "
          f"{py_q:.2f}% from Python, {onnx_q:.2f}% from ONNX; integer (golden) {py_int:.2f}% "
          f"from Python, {onnx_int:.2f}% from ONNX")
    print(f"integer - compressed float: {py_int - py_q:+.2f} points (Python), "
          f"{onnx_int - onnx_q:+.2f} (ONNX); integer - dense float: {py_int - dense:+.2f}, "
          f"{onnx_int - dense:+.2f}")
    print(f"golden command line = golden in Python, bit for bit: {same}")
    ok = same and py_int >= dense - 1.0 and onnx_int >= dense - 1.0 and \
        abs(py_int - py_q) <= 0.3 and abs(onnx_int - onnx_q) <= 0.3
    print("example: OK" if ok else "example: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
