"""Magnitude pruning: per-layer thresholds, masks held while retraining, iterative and gradual.

A mask is a bool tensor per compressible layer (Linear / Conv2d weight; biases are kept). A
weight once pruned stays pruned: every new mask is a subset of the old one, and after each
optimizer step the weights are multiplied by their masks, so retraining never revives them.

Thresholds (`PruneMethod`, built by `make_threshold`):

* ``std``: the paper's rule, |w| > quality x std(w) over the layer's current weights;
* ``percentile``: keep exactly the top ``density`` fraction of the layer by magnitude.

Patterns (`PruneConfig.pattern`): ``unstructured`` keeps what the threshold keeps; ``lockstep``
(`compress.pattern`, the board's engine) keeps as many weights in every layer, chosen so that
each column has the same count in every PE's rows (a conv layer's columns: its kernel taken as
the engine's [out_ch, in_ch * kh * kw] matrix).

Schedules:

* iterative (`prune_iterative`): prune -> retrain with the mask held, for a list of steps; the
  per-step densities follow the polynomial ramp d_s = d + (1 - d) (1 - s/n)^3 (or the std
  quality ramps linearly to its final value);
* gradual (`prune_gradual`, Zhu & Gupta 2017): one training run in which the masks are
  recomputed every ``frequency`` steps along the same cubic ramp, then held to the end.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .data import Split
from .errors import InputError
from .models import compressible_layers
from .pattern import HAZARD_WINDOW, UNSTRUCTURED, as_matrix, check_pattern, lockstep_mask
from .train import TrainConfig, fit, teacher_logits, world


class PruneMethod(str, enum.Enum):
    STD = "std"
    PERCENTILE = "percentile"


class Schedule(str, enum.Enum):
    ITERATIVE = "iterative"
    GRADUAL = "gradual"
    ONESHOT = "oneshot"


Threshold = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _std_mask(w: torch.Tensor, mask: torch.Tensor, quality: float) -> torch.Tensor:
    alive = w[mask]
    if alive.numel() < 2:
        return mask.clone()
    return mask & (w.abs() > quality * alive.std())


def _percentile_mask(w: torch.Tensor, mask: torch.Tensor, density: float) -> torch.Tensor:
    keep = int(round(density * w.numel()))
    keep = min(keep, int(mask.sum()))
    if keep >= int(mask.sum()):
        return mask.clone()
    mag = torch.where(mask, w.abs(), torch.full_like(w, -1.0)).reshape(-1)
    # Stable ordering: ties at the threshold are broken by position, so masks are reproducible.
    order = torch.from_numpy(np.argsort(-mag.detach().cpu().numpy(), kind="stable"))
    new = torch.zeros(w.numel(), dtype=torch.bool)
    new[order[:keep]] = True
    return new.reshape(w.shape).to(mask.device) & mask


_THRESHOLDS: dict[PruneMethod, Threshold] = {
    PruneMethod.STD: _std_mask,
    PruneMethod.PERCENTILE: _percentile_mask,
}


def make_threshold(method: str | PruneMethod) -> Threshold:
    """f(weight, mask, level) -> new mask (a subset of mask); level = quality or density."""
    try:
        return _THRESHOLDS[PruneMethod(method)]
    except ValueError:
        names = ", ".join(m.value for m in PruneMethod)
        raise InputError(f"pruning method must be one of {names}, not {method!r}") from None


@dataclass
class PruneConfig:
    method: str = "percentile"
    schedule: str = "iterative"
    # Final density (percentile) or quality (std) per layer; `level` for layers not named.
    level: float = 0.06
    levels: dict[str, float] = field(default_factory=dict)
    steps: int = 8  # iterative: prune/retrain rounds
    retrain: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0))
    final_retrain: TrainConfig | None = None  # extra retraining after the last round
    frequency: int = 100  # gradual: steps between mask updates
    ramp_fraction: float = 0.7  # gradual: share of the run over which density ramps
    # Percentile: every layer's final density times this (the recipe's one knob for sweeping
    # size against error; 1.0 = the densities as written).
    scale: float = 1.0
    # The sparsity pattern (`compress.pattern`): "unstructured", or "lockstep" for the board's
    # engine with pattern_pes PEs and pattern_rel_bits-bit relative row indices (row p in PE
    # p % pattern_pes; pattern_bound_gaps: no PE's gap needs a filler entry; pattern_split_ends:
    # no accumulator hazard between columns, True, False or "auto" where it costs little
    # magnitude; elsewhere pattern_hazard_window spaces the reuse of a PE's row); `patterns`
    # per layer, `pattern` for the others.
    pattern: str = "unstructured"
    patterns: dict[str, str] = field(default_factory=dict)
    pattern_pes: int = 8
    pattern_rel_bits: int = 4
    # the relative row bits for every layer of a network with conv layers (the board's CNN
    # layout has narrower entries: `compress.pattern.BOARDS` conv_rel_bits); None: as above
    pattern_conv_rel_bits: int | None = None
    # conv layers: the walker reads every column in order, each as many times in a row as the
    # layer's pooling window has values, one read a cycle, at most this many reads ahead of
    # the slots (`lockstep_mask` walk_ahead, walk_subs); None: no such rule
    pattern_walk_ahead: int | None = None
    # the pattern of the fc layers of a network with conv layers (None: `pattern`); `patterns`
    # names a layer's own
    pattern_cnn_fc: str | None = None
    pattern_bound_gaps: bool = True
    pattern_split_ends: bool | str = "auto"
    # per layer, as pattern_split_ends (e.g. {"fc2": false}: "auto" measures only the
    # magnitude a split costs, not the units it kills where a PE keeps 0 or >= 2 weights)
    pattern_split_ends_layers: dict[str, bool | str] = field(default_factory=dict)
    pattern_hazard_window: int = HAZARD_WINDOW
    # in a chain of Linear layers, drop the incoming weights of units the next layer no
    # longer reads (their count goes to live units)
    pattern_drop_dead: bool = True

    def validate(self, layer_names) -> "PruneConfig":
        make_threshold(self.method)
        for pat in [self.pattern, *self.patterns.values(),
                    *([self.pattern_cnn_fc] if self.pattern_cnn_fc is not None else [])]:
            check_pattern(pat, self.pattern_pes, self.pattern_rel_bits)
            if self.pattern_conv_rel_bits is not None:
                check_pattern(pat, self.pattern_pes, self.pattern_conv_rel_bits)
        wa = self.pattern_walk_ahead
        if wa is not None and (not isinstance(wa, int) or isinstance(wa, bool) or wa < 0):
            raise InputError(f"pattern_walk_ahead must be an integer >= 0 or null, not {wa!r}")
        if not isinstance(self.pattern_hazard_window, int) or self.pattern_hazard_window < 0:
            raise InputError(f"pattern_hazard_window must be an integer >= 0, not "
                             f"{self.pattern_hazard_window!r}")
        for where, v in [("", self.pattern_split_ends),
                         *((f"[{k!r}]", v) for k, v in self.pattern_split_ends_layers.items())]:
            if v not in (True, False, "auto"):
                raise InputError(f"pattern_split_ends{where} must be true, false or \"auto\", "
                                 f"not {v!r}")
        if self.schedule not in {s.value for s in Schedule}:
            names = ", ".join(s.value for s in Schedule)
            raise InputError(f"pruning schedule must be one of {names}, not {self.schedule!r}")
        if not 0 < self.scale <= 100:
            raise InputError(f"pruning scale must be in (0, 100], not {self.scale}")
        unknown = sorted(set(self.levels) - set(layer_names))
        if unknown:
            raise InputError(f"pruning level for unknown layer {unknown[0]!r} "
                             f"(layers: {', '.join(layer_names)})")
        for what, d in (("pruning pattern", self.patterns),
                        ("pattern_split_ends", self.pattern_split_ends_layers)):
            unknown = sorted(set(d) - set(layer_names))
            if unknown:
                raise InputError(f"{what} for unknown layer {unknown[0]!r} "
                                 f"(layers: {', '.join(layer_names)})")
        for name in layer_names:
            lv = self.level_for(name)
            if self.method == "percentile" and not 0 < lv <= 1:
                raise InputError(f"density for {name} must be in (0, 1], not {lv}")
            if self.method == "std" and lv < 0:
                raise InputError(f"quality for {name} must be >= 0, not {lv}")
        if self.steps < 1 or self.frequency < 1 or not 0 < self.ramp_fraction <= 1:
            raise InputError("pruning steps and frequency must be >= 1, ramp_fraction in (0, 1]")
        return self

    def level_for(self, name: str) -> float:
        lv = float(self.levels.get(name, self.level))
        if self.method == PruneMethod.PERCENTILE.value and self.scale != 1.0:
            return min(1.0, lv * self.scale)
        return lv


def full_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(m.weight, dtype=torch.bool)
            for n, m in compressible_layers(model).items()}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    layers = compressible_layers(model)
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].weight.mul_(mask.to(layers[name].weight.device))


def ramp(final: float, s: int, n: int, *, start: float = 1.0) -> float:
    """Cubic (polynomial) ramp from `start` at s = 0 to `final` at s = n."""
    t = min(max(s / n, 0.0), 1.0)
    return final + (start - final) * (1.0 - t) ** 3


def step_level(cfg: PruneConfig, name: str, s: int, n: int) -> float:
    final = cfg.level_for(name)
    if cfg.method == "std":
        return final * min(s / n, 1.0)  # quality grows linearly to its final value
    return ramp(final, s, n)


def update_masks(model, masks, cfg: PruneConfig, s: int, n: int) -> dict[str, torch.Tensor]:
    thr = make_threshold(cfg.method)
    layers = compressible_layers(model)
    out = {}
    for name, mask in masks.items():
        w = layers[name].weight.detach()
        out[name] = thr(w, mask.to(w.device), step_level(cfg, name, s, n))
    out = _apply_patterns(model, layers, masks, out, cfg)
    _sync_masks(out)
    apply_masks(model, out)
    return out


def _chain_names(model, layers) -> list[str] | None:
    """The compressible layers' names in forward order when the model is a chain of Linear
    layers (the engine's networks), else None."""
    from .fixedpoint import fc_chain

    try:
        chain = fc_chain(model)
    except InputError:
        return None
    names = {id(m): k for k, m in layers.items()}
    order = [names.get(id(lin)) for lin, _relu in chain]
    return order if None not in order and sorted(order) == sorted(layers) else None


def _conv_subs(model, layers) -> dict[str, int]:
    """Each conv layer's pooling window in values (the board's walker reads a column that many
    times in a row: `lockstep_mask` walk_subs); {} where the model's chain cannot be read."""
    from .fixedpoint import model_chain

    try:
        chain, _shape = model_chain(model)
    except InputError:
        return {}
    names = {id(m): k for k, m in layers.items()}
    return {names[id(c.module)]: int(c.pool[0]) * int(c.pool[1]) for c in chain.layers
            if c.kind == "conv" and id(c.module) in names}


def _apply_patterns(model, layers, old, new, cfg: PruneConfig) -> dict[str, torch.Tensor]:
    """The threshold's masks `new` recut in each layer's pattern, as many weights each.

    In a chain of Linear layers the last layer goes first: a hidden unit that no weight of
    the next layer reads any more is dead, and its incoming weights are not kept (they would
    cost bytes and cycles for nothing; with a coarse pattern units die that magnitude alone
    would have kept alive), so the layer's count goes to live units.
    """
    has_conv = any(m.weight.ndim == 4 for m in layers.values())

    def pattern_of(k):
        if k in cfg.patterns:
            return cfg.patterns[k]
        if has_conv and layers[k].weight.ndim == 2 and cfg.pattern_cnn_fc is not None:
            return cfg.pattern_cnn_fc
        return cfg.pattern

    patterned = [k for k in new if pattern_of(k) != UNSTRUCTURED]
    if not patterned:
        return new
    rel_bits = (cfg.pattern_conv_rel_bits if has_conv and cfg.pattern_conv_rel_bits is not None
                else cfg.pattern_rel_bits)
    chain = _chain_names(model, layers)
    subs = _conv_subs(model, layers) if has_conv and cfg.pattern_walk_ahead is not None else {}
    order = list(reversed(chain)) if chain else list(new)
    out = dict(new)
    for name in order:
        if name not in patterned:
            continue
        w = layers[name].weight.detach()
        alive = as_matrix(old[name].cpu().numpy())  # a conv kernel as [out_ch, in_ch*kh*kw]
        if cfg.pattern_drop_dead and chain and name != chain[-1]:
            nxt = chain[chain.index(name) + 1]
            alive = alive & out[nxt].cpu().numpy().any(axis=0)[:, None]
        pat = lockstep_mask(as_matrix(w.cpu().numpy()), alive, int(new[name].sum()),
                            pes=cfg.pattern_pes, rel_bits=rel_bits,
                            bound_gaps=cfg.pattern_bound_gaps,
                            split_ends=cfg.pattern_split_ends_layers.get(
                                name, cfg.pattern_split_ends),
                            hazard_window=cfg.pattern_hazard_window,
                            walk_ahead=cfg.pattern_walk_ahead if w.ndim == 4 else None,
                            walk_subs=subs.get(name, 1))
        out[name] = torch.from_numpy(pat.reshape(w.shape)).to(w.device)
    return out


def _sync_masks(masks):
    # Ranks hold identical weights under DDP; broadcasting rank 0's masks guards ties anyway.
    rank, size = world()
    if size > 1:
        import torch.distributed as dist

        for k in masks:
            t = masks[k].to(torch.uint8)
            dist.broadcast(t, 0)
            masks[k] = t.bool()


def _teacher(model, data, cfg: PruneConfig, teacher):
    """Distillation's teacher logits: as given, else the model before pruning (if needed)."""
    wants = any(t is not None and t.distill > 0 for t in (cfg.retrain, cfg.final_retrain))
    return teacher_logits(model, data) if wants and teacher is None else teacher


def prune_iterative(model: nn.Module, data: Split, cfg: PruneConfig, *,
                    masks: dict[str, torch.Tensor] | None = None,
                    log: Callable[[str], None] = print,
                    teacher: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Prune -> retrain (mask held) for cfg.steps rounds; returns the final masks."""
    layers = compressible_layers(model)
    cfg.validate(list(layers))
    teacher = _teacher(model, data, cfg, teacher)
    masks = full_masks(model) if masks is None else masks
    n = 1 if cfg.schedule == Schedule.ONESHOT.value else cfg.steps
    for s in range(1, n + 1):
        masks = update_masks(model, masks, cfg, s, n)
        rt = TrainConfig(**{**cfg.retrain.__dict__, "seed": cfg.retrain.seed + s})
        fit(model, data, rt, after_step=lambda _step: apply_masks(model, masks),
            desc=f"prune {s}/{n}", teacher=teacher)
        log(f"prune round {s}/{n}: density {100 * overall_density(masks):.2f}%")
    if cfg.final_retrain is not None:
        fit(model, data, cfg.final_retrain, after_step=lambda _step: apply_masks(model, masks),
            desc="retrain", teacher=teacher)
    return masks


def prune_gradual(model: nn.Module, data: Split, cfg: PruneConfig, *,
                  masks: dict[str, torch.Tensor] | None = None,
                  log: Callable[[str], None] = print,
                  teacher: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One training run; masks recomputed every cfg.frequency steps along the cubic ramp."""
    layers = compressible_layers(model)
    cfg.validate(list(layers))
    teacher = _teacher(model, data, cfg, teacher)
    state = {"masks": full_masks(model) if masks is None else masks}
    rt = cfg.retrain
    # The number of steps `fit` will take, to place the ramp inside the run.
    rank, size = world()
    batches = max(1, (len(data) // size) // rt.batch_size)
    total = max(1, int(np.ceil(rt.epochs * batches)))
    if rt.max_steps is not None:
        total = min(total, rt.max_steps)
    n_updates = max(1, int(cfg.ramp_fraction * total) // cfg.frequency)

    def after(step):
        if step % cfg.frequency == 0 and step // cfg.frequency < n_updates:
            state["masks"] = update_masks(model, state["masks"], cfg,
                                          step // cfg.frequency + 1, n_updates)
        apply_masks(model, state["masks"])

    fit(model, data, rt, after_step=after, desc="gradual prune", teacher=teacher)
    # Guarantee the final level even if the run was cut short.
    state["masks"] = update_masks(model, state["masks"], cfg, n_updates, n_updates)
    log(f"gradual pruning: density {100 * overall_density(state['masks']):.2f}%")
    return state["masks"]


def prune(model, data, cfg: PruneConfig, *, masks=None, log=print, teacher=None):
    """Run the configured schedule. `teacher`: logits to distill from (retraining with
    distill > 0); default: the model's own before pruning."""
    if cfg.schedule == Schedule.GRADUAL.value:
        out = prune_gradual(model, data, cfg, masks=masks, log=log, teacher=teacher)
    else:
        out = prune_iterative(model, data, cfg, masks=masks, log=log, teacher=teacher)
    if cfg.pattern_drop_dead:
        _silence_unread(model, out)
    return out


@torch.no_grad()
def _silence_unread(model, masks) -> None:
    """Bias 0 for a hidden unit of a Linear chain that has no incoming weight left and that
    no weight of the next layer reads: its output was unused, now it is also 0, so the
    engine's front end skips it instead of spending a cycle on it. The network's outputs are
    unchanged."""
    layers = compressible_layers(model)
    chain = _chain_names(model, layers)
    if not chain:
        return
    for a, b in zip(chain, chain[1:]):
        quiet = ~masks[a].any(dim=1) & ~masks[b].any(dim=0)
        if layers[a].bias is not None:
            layers[a].bias[quiet.to(layers[a].bias.device)] = 0.0


def overall_density(masks: dict[str, torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / max(total, 1)


def density_table(masks: dict[str, torch.Tensor]) -> list[dict]:
    """Per-layer weights and % kept, plus a total row."""
    rows = [{"layer": k, "weights": m.numel(), "kept": int(m.sum()),
             "kept_pct": 100.0 * int(m.sum()) / m.numel()} for k, m in masks.items()]
    total = sum(r["weights"] for r in rows)
    kept = sum(r["kept"] for r in rows)
    rows.append({"layer": "total", "weights": total, "kept": kept,
                 "kept_pct": 100.0 * kept / max(total, 1)})
    return rows


def format_density(rows: list[dict]) -> str:
    lines = [f"{'layer':<10} {'weights':>9} {'kept':>8} {'kept %':>7}"]
    for r in rows:
        lines.append(f"{r['layer']:<10} {r['weights']:>9} {r['kept']:>8} {r['kept_pct']:>6.2f}%")
    return "\n".join(lines)
