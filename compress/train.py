"""Training and retraining: one seeded loop for the dense baseline, pruning and centroid tuning.

The whole MNIST split sits in memory as one float tensor; an epoch is a seeded permutation cut
into batches, so the same seed gives the same weights. Progress is shown with tqdm on rank 0.
CUDA is used when present. Under ``torchrun`` (WORLD_SIZE > 1) the process group is set up
with NCCL on GPUs and gloo on CPUs, the model is wrapped in DistributedDataParallel and every
rank trains on its own shard of each epoch's permutation; gradients are averaged by DDP, so the
ranks keep identical weights (and identical pruning masks).

Checkpoints are ``.npz`` files (no pickle) with a format version, the architecture, every
parameter and buffer, optional masks and codebooks, and a sha256 over all of it.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path
from .data import Split, Tensors, model_inputs, to_float
from .errors import InputError

CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    epochs: float = 20.0
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | constant
    max_steps: int | None = None  # stop early (smoke runs)
    seed: int = 0
    progress: bool = True
    # Knowledge distillation (Hinton et al. 2015): the loss is (1 - distill) x cross-entropy on
    # the labels + distill x T^2 x KL(teacher || student) of the logits softened by T =
    # temperature. The teacher is the model before compression (`teacher_logits`). 0 = off.
    distill: float = 0.0
    temperature: float = 4.0
    # Translation augmentation: each training image moves by a random whole number of pixels in
    # [-shift, shift] along x and y (vacated pixels are 0, the background). Image inputs only
    # ([n, c, h, w], or flat [n, 784] read as 28 x 28). Its draws use their own generator, so
    # 0 (off) leaves the batch order and the weights exactly as before.
    shift: int = 0

    def validate(self) -> "TrainConfig":
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0:
            raise InputError(f"bad training settings: {asdict(self)}")
        if not 0.0 <= self.distill <= 1.0:
            raise InputError(f"distill must be in [0, 1], not {self.distill}")
        if not isinstance(self.shift, int) or isinstance(self.shift, bool) or self.shift < 0:
            raise InputError(f"shift must be a whole number of pixels >= 0, not {self.shift!r}")
        if self.shift > 0 and self.distill > 0:
            # The soft targets are computed once on unshifted images.
            raise InputError("shift and distill cannot be combined")
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0, not {self.temperature}")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be adam or sgd, not {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise InputError(f"schedule must be cosine or constant, not {self.schedule!r}")
        return self


# ---------------------------------------------------------------------------------------------
# Devices and torchrun


def device() -> torch.device:
    if torch.cuda.is_available():
        rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed() -> tuple[int, int]:
    """Join the torchrun process group if there is one; return (rank, world_size)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


# ---------------------------------------------------------------------------------------------
# Augmentation


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Move image i of `x` ([n, c, h, w]) down by dy[i] and right by dx[i] pixels, zero fill.

    Shifts may be negative (up / left). One pad and two gathers for the whole batch.
    """
    n, c, h, w = x.shape
    s = int(max(dy.abs().max().item(), dx.abs().max().item())) if n else 0
    if s == 0:
        return x
    xp = nn.functional.pad(x, (s, s, s, s))
    # out[i, :, r, q] = x[i, :, r - dy[i], q - dx[i]] = xp[i, :, r + s - dy[i], q + s - dx[i]]
    rows = torch.arange(h, device=x.device)[None, :] + s - dy.to(x.device)[:, None]  # [n, h]
    cols = torch.arange(w, device=x.device)[None, :] + s - dx.to(x.device)[:, None]  # [n, w]
    xp = xp.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * s))
    return xp.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """`translate` by offsets drawn uniformly from [-shift, shift] (y then x) with `gen`."""
    if shift <= 0:
        return x
    shape = x.shape
    if x.ndim == 2 and shape[1] == 28 * 28:
        x = x.reshape(-1, 1, 28, 28)
    elif x.ndim != 4:
        raise InputError(f"shift needs image inputs [n, c, h, w] (or [n, 784]), "
                         f"not {list(shape)}")
    d = torch.randint(-shift, shift + 1, (2, x.shape[0]), generator=gen)
    return translate(x, d[0], d[1]).reshape(shape)


# ---------------------------------------------------------------------------------------------
# The loop


def fit(
    model: nn.Module,
    data: Split,
    cfg: TrainConfig,
    *,
    params: list[torch.nn.Parameter] | None = None,
    after_step: Callable[[int], None] | None = None,
    before_step: Callable[[int], None] | None = None,
    desc: str = "train",
    teacher: torch.Tensor | None = None,
) -> dict:
    """Train `model` on `data` with cross-entropy; `after_step(step)` runs after each update.

    `params` restricts what the optimizer updates (default: every parameter that requires a
    gradient). `teacher`: the teacher's logits for every example of `data`, in order (needed
    when cfg.distill > 0, ignored otherwise). Returns {"steps", "loss"} (mean loss of the last
    epoch on this rank).

    Whatever in the model draws from torch's global generator while training (a user's
    `Dropout`) draws from one seeded by cfg.seed, and the caller's global state is restored
    afterwards: the same seed gives the same weights.
    """
    rank = world()[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 7919 + 13 + rank)
        return _fit(model, data, cfg, params=params, after_step=after_step,
                    before_step=before_step, desc=desc, teacher=teacher)


def _fit(model, data, cfg, *, params, after_step, before_step, desc, teacher) -> dict:
    cfg.validate()
    if cfg.distill > 0:
        if teacher is None:
            raise InputError("distill > 0 needs the teacher's logits")
        if teacher.ndim != 2 or teacher.shape[0] != len(data):
            raise InputError(f"teacher logits {list(teacher.shape)} do not match the "
                             f"{len(data)} training examples")
    from .progress import bar as progress_bar

    dev = device()
    model.to(dev)
    rank, size = world()
    net = model
    if size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    x_all = model_inputs(data).to(dev)
    y_all = torch.from_numpy(data.labels.astype(np.int64)).to(dev)
    n = (len(data) // size) * size
    per_rank = n // size
    batches = max(1, per_rank // cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * batches))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    else:
        sched = None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    # Soft targets once for the whole split (the teacher is fixed and there is no augmentation).
    soft = (torch.softmax(teacher.float() / cfg.temperature, 1).to(dev)
            if cfg.distill > 0 else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    # A separate stream for the shifts (one per rank), so shift 0 draws nothing extra.
    shift_gen = torch.Generator().manual_seed(cfg.seed * 1009 + 7 + rank) if cfg.shift else None
    net.train()
    step, losses = 0, []
    # a redrawn bar on a terminal, a line every 30 s in a log (compress.progress)
    bar = progress_bar(total=total, desc=desc, unit="step", enabled=cfg.progress and rank == 0)
    while step < total:
        perm = torch.randperm(len(data), generator=gen)[:n][rank::size].to(dev)
        losses = []
        for b in range(batches):
            if step >= total:
                break
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if before_step is not None:
                before_step(step)
            opt.zero_grad(set_to_none=True)
            xb = x_all[idx]
            if shift_gen is not None:
                xb = random_shift(xb, cfg.shift, shift_gen)
            out = net(xb)
            loss = loss_fn(out, y_all[idx])
            if soft is not None:
                t = cfg.temperature
                kd = nn.functional.kl_div(torch.log_softmax(out / t, 1), soft[idx],
                                          reduction="batchmean") * (t * t)
                loss = (1.0 - cfg.distill) * loss + cfg.distill * kd
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(step)
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if step % 50 == 0:
                # no redraw of its own: a log gets the loss with the next timed line
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    bar.close()
    return {"steps": step, "loss": float(np.mean(losses)) if losses else float("nan")}


EVAL_VALUES = 1 << 26  # activations one evaluation batch may make (256 MiB of float32)


@torch.no_grad()
def eval_batch(model: nn.Module, x: torch.Tensor, batch: int) -> int:
    """`batch`, or fewer examples when one example of `x` makes so many activations (every
    module's output, measured on x[:1]) that a batch would make more than EVAL_VALUES: a
    network with large feature maps must not take gigabytes to evaluate."""
    seen = [0]

    def count(mod, inputs, out):
        if isinstance(out, torch.Tensor):
            seen[0] += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not any(m.children())]
    try:
        model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return max(1, min(batch, EVAL_VALUES // max(seen[0], 1)))


@torch.no_grad()
def logits(model: nn.Module, images, *, batch: int = 2000) -> torch.Tensor:
    """Model outputs for MNIST pixels (uint8 array) or for a float tensor of model inputs."""
    dev = device()
    model.to(dev).eval()
    out = []
    if len(images):
        x0 = images[:1]
        x0 = x0 if isinstance(x0, torch.Tensor) else to_float(x0)
        batch = eval_batch(model, x0.to(dev), batch)
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        x = x if isinstance(x, torch.Tensor) else to_float(x)
        out.append(model(x.to(dev)).cpu())
    model.train()
    return torch.cat(out) if out else torch.empty(0, 10)


def teacher_logits(model: nn.Module, data: Split | Tensors) -> torch.Tensor:
    """The logits `fit` distills from: `model` on every example of `data`, in order."""
    return logits(model, model_inputs(data))


def error_rate(model: nn.Module, data: Split | Tensors) -> float:
    """Top-1 error in percent on a split."""
    x = data.x if isinstance(data, Tensors) else data.images
    pred = logits(model, x).argmax(1).numpy()
    return float(100.0 * np.mean(pred != data.labels))


# ---------------------------------------------------------------------------------------------
# Checkpoints: versioned, checksummed .npz (no pickle)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(k for k in arrays if k != "sha256"):
        a = np.asarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    arch: str,
    model: nn.Module,
    *,
    stage: str,
    masks: dict[str, torch.Tensor] | None = None,
    codebooks: dict[str, np.ndarray] | None = None,
    indices: dict[str, np.ndarray] | None = None,
) -> None:
    """Write the model (and masks / codebooks / indices) atomically and deterministically."""
    arrays: dict[str, np.ndarray] = {
        "version": np.array(CHECKPOINT_VERSION, dtype=np.int64),
        "arch": np.array(arch),
        "stage": np.array(stage),
    }
    for k, v in model.state_dict().items():
        arrays[f"param.{k}"] = v.detach().cpu().numpy()
    for k, v in (masks or {}).items():
        arrays[f"mask.{k}"] = v.detach().cpu().numpy().astype(bool)
    for k, v in (codebooks or {}).items():
        arrays[f"codebook.{k}"] = np.asarray(v, dtype=np.float32)
    for k, v in (indices or {}).items():
        arrays[f"index.{k}"] = np.asarray(v, dtype=np.uint8)
    arrays["sha256"] = np.array(_digest(arrays))
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key, a in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0)),
                            buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)


@dataclass
class Checkpoint:
    arch: str
    stage: str
    state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    codebooks: dict[str, np.ndarray]
    indices: dict[str, np.ndarray]

    def model(self) -> nn.Module:
        from .models import build

        m = build(self.arch)
        try:
            m.load_state_dict(self.state)
        except RuntimeError as e:
            raise InputError(f"checkpoint does not fit {self.arch}: {str(e).splitlines()[0]}") \
                from None
        return m


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    from .qnet import read_npz

    p = Path(path)
    arrays = read_npz(p)
    for key in ("version", "arch", "stage", "sha256"):
        if key not in arrays:
            raise InputError(f"{p}: {key}: missing key (not a compress checkpoint)")
    if int(arrays["version"]) != CHECKPOINT_VERSION:
        raise InputError(f"{p}: version: unsupported checkpoint version {int(arrays['version'])}")
    if str(arrays["sha256"]) != _digest(arrays):
        raise InputError(f"{p}: sha256: checksum mismatch, the checkpoint is corrupted")

    def group(prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    return Checkpoint(
        arch=str(arrays["arch"]),
        stage=str(arrays["stage"]),
        state={k: torch.from_numpy(np.array(v)) for k, v in group("param.").items()},
        masks={k: torch.from_numpy(np.array(v)) for k, v in group("mask.").items()},
        codebooks=group("codebook."),
        indices=group("index."),
    )


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train_dense(model: nn.Module, data: Split, cfg: TrainConfig) -> dict:
    """Dense baseline training."""
    seed_everything(cfg.seed)
    return fit(model, data, cfg, desc="train")
