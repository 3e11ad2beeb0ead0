"""Per-layer pruning sensitivity: validation accuracy against density, one layer at a time.

As in Han et al. ("Learning both Weights and Connections", fig. 6): each layer alone is
magnitude-pruned to a density (no retraining, every other layer dense), the validation accuracy
is measured, and the weights are put back. The curves say how far each layer can be pruned;
`choose_densities` turns them into per-layer densities under an accuracy budget.

The magnitude order is a stable sort of |w| (ties broken by position), so the same model and
data give the same table on every run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path
from .errors import InputError

# 1.0 down to 0.01, about 0.75x a step: fine enough to pick a density, 17 points per layer.
DEFAULT_DENSITIES: tuple[float, ...] = tuple(
    float(f"{d:.3g}") for d in np.geomspace(1.0, 0.01, 17)
)


@dataclasses.dataclass
class Sensitivity:
    """Validation accuracy (%) of the dense model and of each layer pruned alone per density."""

    dense_acc: float
    densities: list[float]
    acc: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"dense_acc": self.dense_acc, "densities": list(self.densities),
                "acc": {k: list(v) for k, v in self.acc.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Sensitivity":
        try:
            dense = float(d["dense_acc"])
            dens = [float(x) for x in d["densities"]]
            acc = {str(k): [float(x) for x in v] for k, v in d["acc"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"sensitivity table: malformed ({type(e).__name__}: {e})") from None
        for k, v in acc.items():
            if len(v) != len(dens):
                raise InputError(f"sensitivity table: layer {k} has {len(v)} accuracies "
                                 f"for {len(dens)} densities")
        return cls(dense_acc=dense, densities=dens, acc=acc)


def _as_tensor(x, dtype, device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=dtype)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        correct += int((out.reshape(len(out), -1).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def _check_densities(densities) -> list[float]:
    dens = [float(d) for d in densities]
    if not dens or any(not (0.0 < d <= 1.0) or math.isnan(d) for d in dens):
        raise InputError(f"densities must be in (0, 1], got {dens}")
    return sorted(set(dens), reverse=True)


_STACK_LIMIT = 1 << 23  # elements (32 MB of float32) of pruned weights kept at once


class _NotAChain(Exception):
    """The model's forward does not carry a widened batch through (see `_sweep_widened`)."""


@torch.no_grad()
def _sweep_widened(model, mod, weight, keeps, x, y, batch) -> list[float]:
    """Accuracy per kept-weight count, every level in one forward pass per batch.

    A forward hook on the layer replaces its output by the outputs of all pruned versions
    stacked along the batch axis, so the layers before it run once instead of once per level.
    Raises _NotAChain when the model's output does not come back len(keeps) times as long
    (e.g. a forward that reshapes by a batch size taken before the layer, or a layer used twice).
    """
    saved = weight.detach().clone()
    flat = saved.reshape(-1)
    # Rank 0 = largest magnitude; a stable sort makes the kept set reproducible.
    rank = torch.empty(flat.numel(), dtype=torch.long, device=flat.device)
    rank[torch.argsort(flat.abs(), descending=True, stable=True)] = torch.arange(
        flat.numel(), device=flat.device)
    n = len(keeps)

    def pruned(k):
        return torch.where(rank < k, flat, torch.zeros_like(flat)).reshape(saved.shape)

    # Build the pruned weights once when they fit in a few tens of MB, else per batch.
    stack = [pruned(k) for k in keeps] if n * flat.numel() <= _STACK_LIMIT else None

    def hook(m, args, out):
        outs = []
        for j, k in enumerate(keeps):
            weight.copy_(stack[j] if stack is not None else pruned(k))
            outs.append(m.forward(*args))  # .forward: no hooks, no recursion
        weight.copy_(saved)
        return torch.cat(outs)

    sub = max(1, batch // n)  # the widened batch is about `batch` examples
    correct = torch.zeros(n, dtype=torch.long, device=y.device)
    handle = mod.register_forward_hook(hook)
    try:
        for i in range(0, len(x), sub):
            xb, yb = x[i:i + sub], y[i:i + sub]
            try:
                out = model(xb)
            except (RuntimeError, ValueError, IndexError, TypeError):
                raise _NotAChain from None
            if not isinstance(out, torch.Tensor) or out.shape[0] != n * len(xb):
                raise _NotAChain
            out = out.reshape(n, len(xb), -1)
            if i == 0:
                # Check the widening against a plain pass at the sparsest level once.
                handle.remove()
                weight.copy_(pruned(keeps[-1]))
                ref = model(xb)
                weight.copy_(saved)
                handle = mod.register_forward_hook(hook)
                if not torch.allclose(ref.reshape(len(xb), -1), out[-1], rtol=1e-4, atol=1e-5):
                    raise _NotAChain
            pred = out.argmax(2)
            correct += (pred == yb[None, :]).sum(1)
    finally:
        handle.remove()
        weight.copy_(saved)
    return [100.0 * int(c) / len(x) for c in correct]


@torch.no_grad()
def _sweep_plain(model, weight, keeps, x, y, batch) -> list[float]:
    """The same as `_sweep_widened`, one full forward pass per level (any model)."""
    saved = weight.detach().clone()
    flat = saved.reshape(-1)
    order = torch.argsort(flat.abs(), descending=True, stable=True)
    row = []
    try:
        for k in keeps:
            pruned = torch.zeros_like(flat)
            pruned[order[:k]] = flat[order[:k]]
            weight.copy_(pruned.reshape(saved.shape))
            row.append(_accuracy(model, x, y, batch))
    finally:
        weight.copy_(saved)
    return row


@torch.no_grad()
def layer_sensitivity(model: nn.Module, layers: dict[str, nn.Module], x_val, y_val,
                      densities=None, batch: int = 4096, progress: bool = True) -> Sensitivity:
    """Accuracy (%) on (x_val, y_val) with each layer alone magnitude-pruned to each density.

    `layers`: name -> module with a `weight` (e.g. `compress.models.compressible_layers`).
    Weights are restored afterwards, also when interrupted; the model runs in eval mode on its
    own device and is left in the mode it was in.
    """
    dens = _check_densities(DEFAULT_DENSITIES if densities is None else densities)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = _as_tensor(x_val, dtype, device)
    y = _as_tensor(y_val, torch.long, device).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"validation data: {len(x)} inputs and {len(y)} labels")
    if batch < 1:
        raise InputError(f"batch must be >= 1, not {batch!r}")
    was_training = model.training
    model.eval()
    from .train import eval_batch

    batch = eval_batch(model, x, batch)  # fewer examples a batch for large feature maps
    bar = None
    try:
        dense = _accuracy(model, x, y, batch)
        acc: dict[str, list[float]] = {}
        if progress:
            from .progress import bar as progress_bar

            # a redrawn bar on a terminal, sparse lines in a log (compress.progress)
            bar = progress_bar(total=len(layers), desc="sensitivity", unit="layer")
        widen = True
        for name, mod in layers.items():
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.Tensor):
                raise InputError(f"layer {name}: has no weight to prune")
            keeps = [int(round(d * w.numel())) for d in dens]
            todo = [k for k in keeps if k < w.numel()]  # density 1.0 is the dense model
            row: list[float] = []
            if todo and widen:
                try:
                    row = _sweep_widened(model, mod, w, todo, x, y, batch)
                except _NotAChain:
                    widen = False
            if todo and not widen:
                row = _sweep_plain(model, w, todo, x, y, batch)
            acc[name] = [dense] * (len(keeps) - len(todo)) + row
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return Sensitivity(dense_acc=dense, densities=dens, acc=acc)


def choose_densities(sens: Sensitivity, drop_points: float) -> dict[str, float]:
    """Per layer, the smallest density whose accuracy is within `drop_points` of the dense model.

    The scan goes from the densest level down and stops at the first level over the budget, so a
    lucky bump on a curve below a failing level is not taken. 1.0 when no pruned level fits.
    """
    if not (drop_points >= 0):
        raise InputError(f"max drop must be >= 0 percentage points, not {drop_points!r}")
    order = sorted(range(len(sens.densities)), key=lambda i: -sens.densities[i])
    out = {}
    for name, row in sens.acc.items():
        best = 1.0
        for i in order:
            if sens.dense_acc - row[i] > drop_points + 1e-9:
                break
            best = min(best, sens.densities[i])
        out[name] = best
    return out


def format_sensitivity(sens: Sensitivity) -> str:
    """The table: one row per layer, one column per density, validation accuracy in %."""
    names = list(sens.acc)
    w = max([5] + [len(n) for n in names])
    head = f"{'layer':<{w}}" + "".join(f"{d:>7.3g}" for d in sens.densities)
    lines = [f"accuracy (%) with one layer alone pruned to each density, no retraining "
             f"(dense model {sens.dense_acc:.2f}%)", head]
    for n in names:
        lines.append(f"{n:<{w}}" + "".join(f"{a:>7.2f}" for a in sens.acc[n]))
    return "\n".join(lines)


def plot_sensitivity(sens: Sensitivity, path: str | Path, *, title: str = "") -> None:
    """Error (%) against density per layer, log density axis (Han et al. fig. 6), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, row in sens.acc.items():
        ax.plot(sens.densities, [100.0 - a for a in row], "o-", markersize=3, label=name)
    ax.axhline(100.0 - sens.dense_acc, color="gray", linestyle="--", linewidth=0.8,
               label="dense")
    ax.set_xscale("log")
    ax.invert_xaxis()  # dense on the left, sparser to the right, as in the paper
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_ylabel("error (%)")
    ax.set_title(title or "pruning sensitivity (one layer at a time, no retraining)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})
    plt.close(fig)


def write_sensitivity(sens: Sensitivity, out_dir: str | Path) -> dict[str, Path]:
    """Write sensitivity.json, sensitivity.txt (the table) and sensitivity.png into out_dir."""
    out = Path(out_dir)
    paths = {k: out / f"sensitivity.{k}" for k in ("json", "txt", "png")}
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(sens.to_dict(), indent=1) + "\n")
    with atomic_path(paths["txt"]) as tmp:
        tmp.write_text(format_sensitivity(sens) + "\n")
    plot_sensitivity(sens, paths["png"])
    return paths
