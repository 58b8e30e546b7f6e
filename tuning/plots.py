"""Figures for the tracker and reports: reconstructions (Fig. 4) and accuracy vs compute and time (Fig. 1)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on trial machines
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from tuning.summary import COMPARISON_KEYS, CONFIG_KEYS, METHOD_NAMES, pareto_mask  # noqa: E402

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


def accuracy_vs_cost_figure(df: pd.DataFrame, acc: str = "test_acc"):
    """Fig. 1 as the paper draws it: accuracy against compute (left) and against time on one slot (right).

    One point per method and configuration of each comparison group: the mean over the seeds its
    completed runs cover, with the standard deviation as error bars; MixTraining's configurations
    joined by their Pareto front (accuracy up, cost down).
    """
    fin = df[df["completed"] & df[acc].notna()]
    keys = [k for k in COMPARISON_KEYS if k in fin.columns]
    points = fin.groupby(["method", *keys, *CONFIG_KEYS], dropna=False).agg(
        acc=(acc, "mean"), acc_std=(acc, "std"), compute=("compute_tflop", "mean"),
        time=("calibrated_time_s", "mean")).reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, cost, label in ((axes[0], "compute", "training compute (TFLOP)"),
                            (axes[1], "time", "training time on one slot, alone (s)")):
        for method, sub in points.groupby("method"):
            ax.errorbar(sub[cost], 100 * sub["acc"], yerr=100 * sub["acc_std"].fillna(0), fmt="o", ms=5, capsize=2,
                        alpha=0.8, color=COLORS.get(method), label=METHOD_NAMES.get(method, method))
        mix = points[(points["method"] == "mixtraining") & points[cost].notna()]
        if not mix.empty:
            front = mix[pareto_mask(mix["acc"], mix[cost])].sort_values(cost)
            ax.step(front[cost], 100 * front["acc"], where="post", color="black", lw=1,
                    label="MixTraining Pareto front")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{'test' if acc == 'test_acc' else 'validation'} accuracy (%), mean ± std over seeds")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
