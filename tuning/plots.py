"""Figures for the tracker and reports: reconstructions (Fig. 4) and accuracy vs compute and time (Fig. 1)."""
from __future__ import annotations

import io
import json

import matplotlib

matplotlib.use("Agg")  # files only; no display on trial machines
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from tuning.studies import configurations, param_importances, parameter_study, pareto_mask  # noqa: E402
from tuning.summary import (METHOD_NAMES, comparison_keys, config_keys, format_paired, format_table,  # noqa: E402
                            paired_stats)

COLORS = {"sl": "tab:gray", "ssl_sl": "tab:blue", "mixtraining": "tab:red"}
# The entries `report_files` writes into an experiment folder (files, and one folder).
REPORT_ENTRIES = ("comparison.csv", "comparison.md", "paired.csv", "configurations.csv", "accuracy_vs_cost.png",
                  "parameter_study")


def png(fig) -> bytes:
    """A figure as PNG bytes, closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


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
    config = config_keys(df)
    fin = df[df["completed"] & df[acc].notna()]
    keys = comparison_keys(fin, config)
    points = fin.groupby(["method", *keys, *config], dropna=False).agg(
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


def parameter_study_figure(study: pd.DataFrame, param: str):
    """The paper's Tables 4 and 5 as plots (`tuning.summary.parameter_study`): MixTraining's accuracy against
    one parameter, a point per value tried (mean ± std over its completed runs), SSL+SL and SL of the same
    comparison group as reference lines. One panel per (fraction, epochs)."""
    groups = sorted(study.groupby(["fraction", "epochs"]).groups) if not study.empty else []
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.2 * max(1, len(groups)), 3.6), squeeze=False)
    for ax, (fraction, epochs) in zip(axes[0], groups):
        sub = study[(study["fraction"] == fraction) & (study["epochs"] == epochs)].sort_values(param)
        ax.errorbar(sub[param], 100 * sub["mean"], yerr=100 * sub["std"].fillna(0), fmt="o-", capsize=3,
                    color=COLORS["mixtraining"], label="MixTraining")
        for method in ("ssl_sl", "sl"):
            if sub[method].notna().any():
                ax.axhline(100 * sub[method].iloc[0], ls="--", color=COLORS[method], label=METHOD_NAMES[method])
        ax.set_title(f"fraction {fraction:g}, {epochs} epochs", fontsize=9)
        ax.set_xlabel({"alpha": "alpha (loss ratio, Eq. 3)", "rho": "rho (mix ratio, Eq. 1)"}.get(param, param))
    return _finish_panels(fig, axes)


def _finish_panels(fig, axes):
    """A row of panels sharing a y label, with a grid each and the legend in the first."""
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def budget_figure(table: pd.DataFrame):
    """The paper's Table 6 as a plot: each method's accuracy against the epoch budget (mean ± std over the
    common seeds, MixTraining at its chosen configuration), one panel per data fraction."""
    fractions = sorted(table["fraction"].unique()) if not table.empty else []
    fig, axes = plt.subplots(1, max(1, len(fractions)), figsize=(4.2 * max(1, len(fractions)), 3.6), squeeze=False)
    for ax, fraction in zip(axes[0], fractions):
        sub = table[table["fraction"] == fraction]
        for method, rows in sub.groupby("method"):
            rows = rows.sort_values("epochs")
            ax.errorbar(rows["epochs"], 100 * rows["test_acc_mean"], yerr=100 * rows["test_acc_std"], fmt="o-",
                        capsize=3, color=COLORS.get(method), label=METHOD_NAMES.get(method, method))
        ax.set_title(f"fraction {fraction:g}", fontsize=9)
        ax.set_xlabel("epochs (e_ssl = e_sl)")
    return _finish_panels(fig, axes)


def importance_figure(importances: dict[float, dict[str, float]]):
    """Optuna's hyperparameter importances (fANOVA) of the MixTraining configurations, per data fraction."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    params = sorted({p for imp in importances.values() for p in imp})
    width = 0.8 / max(1, len(importances))
    for i, (fraction, imp) in enumerate(sorted(importances.items())):
        ax.bar([j + i * width for j in range(len(params))], [imp.get(p, 0.0) for p in params], width,
               label=f"fraction {fraction:g}")
    ax.set_xticks([j + width * (len(importances) - 1) / 2 for j in range(len(params))], params)
    ax.set_ylabel("importance (fANOVA)")
    if importances:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def report_files(df: pd.DataFrame, table: pd.DataFrame) -> dict[str, bytes]:
    """The search's report by file name, each made once: the comparison (CSV, Markdown with the paired
    statistics), the paired statistics (CSV), Fig. 1, and the parameter studies (accuracy against alpha,
    rho and the epoch budget, the paper's Tables 4-6, as CSV and plots) with the hyperparameter importances.
    Written to the experiment folder and logged on the MLflow parent run; `tuning/report.py` writes it too.
    The parameter studies cover each numeric configuration key that varied (alpha, rho, and any field the space
    searched)."""
    if table.empty:
        return {"accuracy_vs_cost.png": png(accuracy_vs_cost_figure(df))}
    paired, importances = paired_stats(df), param_importances(df)
    files = {"comparison.csv": table.to_csv(index=False), "paired.csv": paired.to_csv(index=False),
             "configurations.csv": configurations(df).to_csv(index=False),
             "comparison.md": format_table(table) + "\n\n" + format_paired(paired) + "\n",
             "parameter_study/importances.json": json.dumps(importances, indent=1)}
    figures = {"accuracy_vs_cost.png": accuracy_vs_cost_figure(df), "parameter_study/epochs.png": budget_figure(table),
               "parameter_study/importances.png": importance_figure(importances)}
    for p in studied_params(df):
        study = parameter_study(df, p)
        files[f"parameter_study/{p}.csv"] = study.to_csv(index=False)
        figures[f"parameter_study/{p}.png"] = parameter_study_figure(study, p)
    return {**{k: v.encode() for k, v in files.items()}, **{k: png(fig) for k, fig in figures.items()}}


def studied_params(df: pd.DataFrame) -> list[str]:
    """The numeric configuration keys worth a parameter study: alpha and rho always (the paper's Tables 4-5), and
    any other that took more than one value among the MixTraining runs."""
    mix = df[df["method"] == "mixtraining"]
    return ["alpha", "rho"] + [k for k in config_keys(df) if k not in ("alpha", "rho", "lam") and k in mix
                               and pd.api.types.is_numeric_dtype(mix[k]) and mix[k].nunique() > 1]
