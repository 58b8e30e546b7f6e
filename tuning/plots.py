"""Figures for the tracker and reports: reconstructions (Fig. 4) and accuracy vs time (Fig. 1)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on trial machines
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from tuning.summary import METHOD_NAMES, pareto_mask  # noqa: E402

COLORS = {"sl": "tab:gray", "ssl_sl": "tab:blue", "mixtraining": "tab:red"}


def reconstruction_figure(original, masked, reconstructed, title: str = ""):
    """Rows: original, masked, reconstructed; tensors (n, C, H, W) in [0, 1]."""
    n = original.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 3.8), squeeze=False)
    for row, (name, imgs) in enumerate((("original", original), ("masked", masked), ("reconstructed", reconstructed))):
        for i in range(n):
            ax = axes[row][i]
            ax.imshow(imgs[i].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
        axes[row][0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_vs_time_figure(df: pd.DataFrame, acc: str = "test_acc"):
    """Every finished trial as a point, the three methods marked, and the Pareto front drawn (Fig. 1)."""
    fin = df[df["completed"] & df[acc].notna()]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, sub in fin.groupby("method"):
        ax.scatter(sub["train_time_s"], 100 * sub[acc], s=22, alpha=0.75, color=COLORS.get(method),
                   label=METHOD_NAMES.get(method, method))
    if not fin.empty:
        front = fin[pareto_mask(fin[acc], fin["train_time_s"])].sort_values("train_time_s")
        ax.step(front["train_time_s"], 100 * front[acc], where="post", color="black", lw=1, label="Pareto front")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"{'test' if acc == 'test_acc' else 'validation'} accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
