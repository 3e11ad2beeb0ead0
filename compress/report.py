"""The report: the paper's per-layer table with real sizes, and the weight-distribution figure.

`format_table` prints the rows `compress.dcz.layer_sizes` computes from the real coded streams
(weights, % kept, weight bits P+Q and P+Q+H, index bits P+Q and P+Q+H, compression rate P+Q
and P+Q+H, one row per layer and a total) with the size of the .dcz file on disk and the
ratio 1,066,440 bytes (LeNet-300-100 in float32) / file size.

`plot_weights` draws, per layer, the weight distribution before pruning, after pruning and
after quantization (the shared values as stems, their counts on the y axis), as in the
paper's figures; matplotlib's Agg backend, written atomically as a PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path

def format_table(rows: list[dict], *, dcz_bytes: int | None = None,
                 uncompressed_bytes: int | None = None) -> str:
    """The per-layer table of `dcz.layer_sizes` rows, then the file on disk and the ratio."""
    from .dcz import format_table as dcz_table

    text = dcz_table(rows)
    if dcz_bytes is not None and uncompressed_bytes is not None and \
            rows and rows[-1].get("dcz_bytes") != dcz_bytes:
        text += (f"\nfile on disk: {dcz_bytes:,} bytes; uncompressed float32 "
                 f"{uncompressed_bytes:,} bytes; ratio {uncompressed_bytes / dcz_bytes:.1f}x")
    return text


def plot_weights(dense: dict[str, np.ndarray], pruned: dict[str, np.ndarray],
                 codebooks: dict[str, np.ndarray], indices: dict[str, np.ndarray],
                 path: str | Path, *, title: str = "", bins: int = 200) -> None:
    """PNG per layer: histograms before / after pruning, shared values after quantization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(codebooks)
    fig, axes = plt.subplots(len(names), 3, figsize=(13, 2.8 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        w0 = dense[name].reshape(-1)
        w1 = pruned[name].reshape(-1)
        w1 = w1[w1 != 0]
        lim = float(np.abs(w0).max()) or 1.0
        ax = axes[r][0]
        ax.hist(w0, bins=bins, range=(-lim, lim), color="tab:blue")
        ax.set_title(f"{name}: dense ({w0.size:,} weights)", fontsize=9)
        ax = axes[r][1]
        ax.hist(w1, bins=bins, range=(-lim, lim), color="tab:orange")
        ax.set_title(f"{name}: after pruning ({w1.size:,} kept)", fontsize=9)
        ax = axes[r][2]
        idx = indices[name].reshape(-1)
        counts = np.bincount(idx, minlength=len(codebooks[name]))[1:]
        cb = codebooks[name][1:]
        ax.vlines(cb, 0, counts, color="tab:green")
        ax.plot(cb, counts, "o", color="tab:green", markersize=3)
        ax.set_xlim(-lim, lim)
        ax.set_title(f"{name}: after quantization ({len(cb)} shared values + zero)", fontsize=9)
        for ax in axes[r]:
            ax.tick_params(labelsize=7)
            ax.set_xlabel("weight value", fontsize=8)
        axes[r][0].set_ylabel("count", fontsize=8)
    if title:
        fig.suptitle(f"{title}: weight distribution", fontsize=11)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png", metadata={"Software": None})
    plt.close(fig)
