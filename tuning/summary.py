"""The comparison table in the layout of the paper's Table 1, from one row per finished trial.

Pure functions over a pandas DataFrame, so that the search's own summary and
`tuning/report.py` (rebuilt from MLflow) are the same code.

Expected columns: method, fraction, epochs, seed, alpha, rho, lam, val_acc, test_acc,
train_time_s, compute_gtok, completed.
"""
from __future__ import annotations

import pandas as pd

CONFIG_KEYS = ["alpha", "rho", "lam"]
METHOD_NAMES = {"sl": "SL", "ssl_sl": "SSL+SL", "mixtraining": "MixTraining"}


def best_mixtraining(df: pd.DataFrame) -> pd.DataFrame:
    """Per (fraction, epochs): the MixTraining config with the best mean validation accuracy.

    Only trials that ran to the end count (ASHA's stopped trials have no final accuracy).
    Selection uses validation accuracy; the test accuracy of the chosen config is reported.
    """
    mix = df[(df["method"] == "mixtraining") & df["completed"].astype(bool)]
    if mix.empty:
        return mix
    keys = ["fraction", "epochs", *CONFIG_KEYS]
    mean_val = mix.groupby(keys, dropna=False)["val_acc"].mean().rename("mean_val").reset_index()
    best = mean_val.loc[mean_val.groupby(["fraction", "epochs"])["mean_val"].idxmax()]
    return mix.merge(best[keys], on=keys)


def comparison_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (fraction, epochs, method): accuracy mean/std over seeds, time, speedup."""
    base = df[df["method"].isin(["sl", "ssl_sl"]) & df["completed"].astype(bool)]
    rows = pd.concat([base, best_mixtraining(df)])
    if rows.empty:
        return pd.DataFrame()
    agg = rows.groupby(["fraction", "epochs", "method"]).agg(
        test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", "std"),
        val_acc_mean=("val_acc", "mean"), train_time_s=("train_time_s", "mean"),
        compute_gtok=("compute_gtok", "mean"), seeds=("seed", "nunique"),
        alpha=("alpha", "first"), rho=("rho", "first"), lam=("lam", "first")).reset_index()
    agg["test_acc_std"] = agg["test_acc_std"].fillna(0.0)
    ssl_sl_time = agg[agg["method"] == "ssl_sl"].set_index(["fraction", "epochs"])["train_time_s"]
    agg["speedup"] = [
        ssl_sl_time.get((f, e), float("nan")) / t if m == "mixtraining" else float("nan")
        for f, e, m, t in zip(agg["fraction"], agg["epochs"], agg["method"], agg["train_time_s"])]
    agg.loc[agg["method"] != "mixtraining", CONFIG_KEYS] = float("nan")
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    return agg.sort_values(["fraction", "epochs", "method"], key=lambda s: s.map(order) if s.name == "method" else s,
                           ignore_index=True)


def format_table(table: pd.DataFrame) -> str:
    """Markdown table: one line per method under each fraction and budget (Table 1 / Table 6 layout)."""
    if table.empty:
        return "(no finished trials to compare)"
    lines = ["| fraction | epochs | method | test accuracy | train time (s) | compute (Gtok) | speedup "
             "| alpha | rho | lam |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        acc = f"{100 * r.test_acc_mean:.2f}% ± {100 * r.test_acc_std:.2f} (n={r.seeds})"
        speed = f"{r.speedup:.2f}x" if pd.notna(r.speedup) else ""
        cfg = [f"{getattr(r, k):g}" if pd.notna(getattr(r, k)) else "" for k in CONFIG_KEYS]
        lines.append(f"| {r.fraction:g} | {r.epochs} | {METHOD_NAMES[r.method]} | {acc} | {r.train_time_s:.1f} | "
                     f"{r.compute_gtok:.4g} | {speed} | " + " | ".join(cfg) + " |")
    return "\n".join(lines)


def pareto_mask(acc: pd.Series, cost: pd.Series) -> list[bool]:
    """True where no other point has accuracy >= and cost <=, one of them strictly."""
    return [not (((acc >= a) & (cost <= c)) & ((acc > a) | (cost < c))).any() for a, c in zip(acc, cost)]
