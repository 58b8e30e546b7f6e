"""The comparison table in the layout of the paper's Table 1, from one row per finished trial.

Pure functions over a pandas DataFrame, so that the search's own summary and
`tuning/report.py` (rebuilt from MLflow) are the same code.

The rows come from `trial_row`, the one place that knows their columns, whether the search
builds them from Ray's results or `tuning/report.py` from MLflow's runs.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from trainable.config import MixConfig

CONFIG_KEYS = ["alpha", "rho", "lam"]
METHOD_NAMES = {"sl": "SL", "ssl_sl": "SSL+SL", "mixtraining": "MixTraining"}
_DEFAULTS = MixConfig()


def trial_row(config: Mapping[str, Any], metrics: Mapping[str, Any], *, completed: bool, error: str | None,
              **extra: Any) -> dict[str, Any]:
    """One trial as a row of the comparison's input.

    config: the trial's config fields (values may be MLflow's parameter strings; fields it lacks take
    the config's defaults). metrics: its last reported metrics. alpha and lam are taken from the
    metrics where present: population-based training changes them during a trial, and the metrics
    hold the last values used. extra: further columns (trial_id, when not in the metrics, ...).
    """
    def field(name: str, kind: type):
        v = config.get(name, getattr(_DEFAULTS, name))
        return None if v is None else kind(v)

    return {
        "trial_id": metrics.get("trial_id"), "method": config.get("method"), "fraction": field("fraction", float),
        "epochs": field("e_sl", int), "seed": field("seed", int),
        "alpha": float(metrics.get("alpha", field("alpha", float))), "rho": field("rho", float),
        "lam": float(metrics.get("lam", field("lam", float))),
        "val_acc": metrics.get("val_acc"), "test_acc": metrics.get("test_acc"),
        "train_time_s": metrics.get("train_time_s"), "compute_gtok": metrics.get("compute_gtok"),
        "sl_epochs": int(metrics.get("sl_epochs", 0)), "completed": bool(completed),
        "ssl_epochs_reused": int(metrics.get("ssl_epochs_reused", 0)),
        "ssl_time_reused_s": float(metrics.get("ssl_time_reused_s", 0.0)),
        "error": error, **extra}


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


def pareto_front(df: pd.DataFrame) -> pd.DataFrame:
    """Finished configurations not dominated in (mean val_acc up, mean compute down)."""
    fin = df[df["completed"]]
    if fin.empty:
        return fin
    g = fin.groupby(["method", "fraction", "epochs", *CONFIG_KEYS], dropna=False).agg(
        val_acc=("val_acc", "mean"), compute_gtok=("compute_gtok", "mean")).reset_index()
    return g[pareto_mask(g["val_acc"], g["compute_gtok"])].sort_values("compute_gtok", ignore_index=True)


def pareto_mask(acc: pd.Series, cost: pd.Series) -> list[bool]:
    """True where no other point has accuracy >= and cost <=, one of them strictly."""
    return [not (((acc >= a) & (cost <= c)) & ((acc > a) | (cost < c))).any() for a, c in zip(acc, cost)]
