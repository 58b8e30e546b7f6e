"""The comparison in the layout of the paper's Table 1, from one row per trial.

Pure functions over a pandas DataFrame (no Ray, no MLflow), so the search's own summary,
`tuning/report.py` (rebuilt from MLflow) and `benchmarks/replicate.py` (no Ray at all) are the
same code. The rows come from `trial_row`, the one place that knows their columns.

What makes the comparison fair:
- Rows are grouped by everything that defines a comparison (`COMPARISON_KEYS`): runs on other
  data, models, budgets or optimiser settings never share a row.
- MixTraining's configuration is chosen on validation accuracy (`choose_best`) among the trials of
  the search proper; it is reported on test accuracy over all its completed runs, including the
  runs the search added to finish the seeds the scheduler had stopped (`completion`).
- Every row of a group covers the same seeds: the seeds on which every method of the group
  completed. `n` counts them.
- Per-seed differences (runs with one seed share data split and initialisation) give paired
  statistics with a t-interval (`paired_stats`).
- Speedups are ratios of contention-free quantities: compute (FLOPs counted by PyTorch) and
  time from epoch costs measured on one slot with nothing else running (`calibrated_time_s`).
  The wall-clock training time of trials that shared the machine is shown as its own column.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from trainable.config import MixConfig, model_name, resolve_optim

CONFIG_KEYS = ["alpha", "rho", "lam"]
METHOD_NAMES = {"sl": "SL", "ssl_sl": "SSL+SL", "mixtraining": "MixTraining"}
# Everything that defines a comparison: rows differing in any of these are never pooled.
COMPARISON_KEYS = ["datasets", "ssl_dataset", "model", "fraction", "epochs", "epoch_scale", "batch_size", "ssl_lr",
                   "sl_lr", "mix_step", "mix_optim"]
_DEFAULTS = MixConfig()
_TRUE = (True, "true", "True", 1, "1")


def trial_row(config: Mapping[str, Any], metrics: Mapping[str, Any], *, completed: bool, error: str | None,
              **extra: Any) -> dict[str, Any]:
    """One trial as a row of the comparison's input.

    config: the trial's config fields and bookkeeping keys (a Tune config over the search's base, or
    MLflow's parameter strings); fields it lacks take the config's defaults. metrics: its last
    reported metrics. alpha and lam are taken from the metrics where present: population-based
    training changes them during a trial, and the metrics hold the last values used. extra: further
    columns (trial_id when not in the metrics, ...).
    """
    cfg = MixConfig.from_strings({k: v for k, v in config.items() if k in _FIELDS})
    ssl_lr, sl_lr = resolve_optim(cfg)
    return {
        "trial_id": metrics.get("trial_id"), "method": config.get("method"),
        "completion": config.get("_completion", config.get("completion")) in _TRUE,
        "datasets": "+".join(cfg.datasets), "ssl_dataset": cfg.ssl_dataset or "", "model": _model(cfg),
        "fraction": cfg.fraction, "epochs": cfg.e_sl, "e_ssl": cfg.e_ssl,
        "epoch_scale": float(config.get("_epoch_scale", config.get("epoch_scale", 1.0))),
        "batch_size": cfg.batch_size, "ssl_lr": ssl_lr, "sl_lr": sl_lr, "mix_step": cfg.mix_step,
        "mix_optim": cfg.mix_optim, "seed": cfg.seed,
        "alpha": float(metrics.get("alpha", cfg.alpha)), "rho": cfg.rho, "lam": float(metrics.get("lam", cfg.lam)),
        "val_acc": metrics.get("val_acc"), "test_acc": metrics.get("test_acc"),
        "train_time_s": metrics.get("train_time_s"), "calibrated_time_s": metrics.get("calibrated_time_s"),
        "compute_tflop": metrics.get("compute_tflop"),
        "sl_epochs": int(metrics.get("sl_epochs", 0)), "completed": bool(completed),
        "ssl_epochs_reused": int(metrics.get("ssl_epochs_reused", 0)),
        "ssl_time_reused_s": float(metrics.get("ssl_time_reused_s", 0.0)),
        "error": error, **extra}


_FIELDS = set(MixConfig.__dataclass_fields__)


def _model(cfg: MixConfig) -> str:
    return model_name(cfg)


def _keys(df: pd.DataFrame) -> list[str]:
    return [k for k in COMPARISON_KEYS if k in df.columns]


def choose_best(df: pd.DataFrame) -> pd.DataFrame:
    """Per comparison group: the MixTraining configuration with the best mean validation accuracy over its
    completed runs of the search proper (the runs added to complete it aside), and how many configurations
    the group tried. One row per group: its keys, the configuration, mean_val and tried.

    The search finishes this configuration on every seed before reporting it (tuning.searcher), and choosing
    it again here, from the same runs, gives the same choice.
    """
    mixes = df[df["method"] == "mixtraining"]
    proper = mixes[mixes["completed"] & ~mixes["completion"]]
    if proper.empty:
        return proper.iloc[:0]
    group = _keys(df)
    mean = proper.groupby(group + CONFIG_KEYS, dropna=False)["val_acc"].mean().rename("mean_val").reset_index()
    best = mean.loc[mean.groupby(group, dropna=False)["mean_val"].idxmax()]
    tried = mixes.groupby(group, dropna=False)[CONFIG_KEYS].apply(lambda g: len(g.drop_duplicates()))
    return best.merge(tried.rename("tried").reset_index(), on=group, how="left")


def _per_seed(rows: pd.DataFrame, value: str) -> pd.Series:
    """One value per seed (the mean where a seed ran twice, e.g. a configuration proposed twice)."""
    return rows.groupby("seed")[value].mean()


def comparison_rows(df: pd.DataFrame) -> list[tuple[dict, dict[str, pd.DataFrame]]]:
    """Per comparison group: its keys and, per method, the completed runs on the group's common seeds."""
    group = _keys(df)
    out = []
    for key, sub in df.groupby(group, dropna=False):
        key = dict(zip(group, key if isinstance(key, tuple) else (key,)))
        done = sub[sub["completed"] & sub["error"].isna()]
        runs = {m: done[done["method"] == m] for m in ("sl", "ssl_sl")}
        best = choose_best(sub)  # from every run of the group: `tried` counts stopped configurations too
        if not best.empty:
            b = best.iloc[0]
            mix = done[done["method"] == "mixtraining"]
            runs["mixtraining"] = mix[(mix[CONFIG_KEYS] == b[CONFIG_KEYS]).all(axis=1)].assign(tried=b["tried"])
        runs = {m: r for m, r in runs.items() if not r.empty}
        common = set.intersection(*(set(r["seed"]) for r in runs.values())) if runs else set()
        out.append((key, {m: r[r["seed"].isin(common)] for m, r in runs.items()}))
    return out


def comparison_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (comparison group, method): test accuracy mean/std over the common seeds, time and
    compute, and MixTraining's speedups over SSL+SL."""
    if df.empty:
        return pd.DataFrame()
    rows = []
    for key, runs in comparison_rows(df):
        ref = runs.get("ssl_sl")
        for method, r in runs.items():
            acc = _per_seed(r, "test_acc")
            row = {**key, "method": method, "test_acc_mean": acc.mean(),
                   "test_acc_std": acc.std() if len(acc) > 1 else 0.0, "val_acc_mean": r["val_acc"].mean(),
                   "seeds": len(acc), "calibrated_time_s": r["calibrated_time_s"].mean(),
                   "compute_tflop": r["compute_tflop"].mean(), "train_time_s": r["train_time_s"].mean(),
                   "tried": r["tried"].iloc[0] if "tried" in r else math.nan,
                   **{k: r[k].iloc[0] if method == "mixtraining" else math.nan for k in CONFIG_KEYS}}
            for what in ("calibrated_time_s", "compute_tflop"):
                row[f"speedup_{what}"] = (ref[what].mean() / row[what] if method == "mixtraining" and ref is not None
                                          and row[what] else math.nan)
            rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    return table.sort_values(_keys(table) + ["method"], key=lambda s: s.map(order) if s.name == "method" else s,
                             ignore_index=True)


def paired_stats(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per comparison group: MixTraining - SSL+SL and MixTraining - SL in test accuracy, per seed over the
    common seeds; mean, the t-interval of the mean, and whether it excludes zero."""
    from scipy import stats

    rows = []
    for key, runs in comparison_rows(df):
        if "mixtraining" not in runs:
            continue
        mix = _per_seed(runs["mixtraining"], "test_acc")
        for other in ("ssl_sl", "sl"):
            if other not in runs:
                continue
            d = (mix - _per_seed(runs[other], "test_acc")).dropna()
            n = len(d)
            half = (stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std() / math.sqrt(n)) if n > 1 else math.nan
            rows.append({**key, "versus": other, "n": n, "mean_diff": d.mean(), "ci_low": d.mean() - half,
                         "ci_high": d.mean() + half, "excludes_zero": n > 1 and (d.mean() - half > 0 or
                                                                                  d.mean() + half < 0)})
    return pd.DataFrame(rows)


# --- text --------------------------------------------------------------------------------------------

def varying_keys(table: pd.DataFrame) -> list[str]:
    """The comparison keys worth a column: fraction and epochs always, the others where they vary."""
    return [k for k in _keys(table) if k in ("fraction", "epochs") or table[k].nunique(dropna=False) > 1]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def format_table(table: pd.DataFrame) -> str:
    """Markdown: one line per method under each comparison group (Table 1 / Table 6 layout)."""
    if table.empty:
        return "(no finished trials to compare)"
    keys = varying_keys(table)
    head = keys + ["method", "test accuracy", "n", "time (s, one slot)", "compute (TFLOP)", "speedup (time)",
                   "speedup (compute)", "wall-clock (s)", "configs tried", "alpha", "rho", "lam"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.to_dict("records"):
        mix = r["method"] == "mixtraining"
        cells = [_fmt(r[k]) for k in keys] + [
            METHOD_NAMES[r["method"]], f"{100 * r['test_acc_mean']:.2f}% ± {100 * r['test_acc_std']:.2f}",
            str(r["seeds"]), _num(r["calibrated_time_s"], "{:.1f}"), _num(r["compute_tflop"], "{:.4g}"),
            _num(r["speedup_calibrated_time_s"], "{:.2f}x"), _num(r["speedup_compute_tflop"], "{:.2f}x"),
            _num(r["train_time_s"], "{:.1f}"), str(int(r["tried"])) if mix and r["tried"] == r["tried"] else "",
            *[_num(r[k], "{:g}") for k in CONFIG_KEYS]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(v, fmt: str) -> str:
    return fmt.format(v) if v is not None and v == v else ""


def format_paired(paired: pd.DataFrame) -> str:
    """One line per comparison: mean difference in points, its 95% interval, marked when it excludes zero."""
    if paired.empty:
        return "(no MixTraining run shares seeds with a baseline: no paired comparison)"
    lines, keys = [], varying_keys(paired)
    for r in paired.to_dict("records"):
        where = ", ".join(f"{k} {_fmt(r[k])}" for k in keys)
        head = f"MixTraining - {METHOD_NAMES[r['versus']]} ({where}): {100 * r['mean_diff']:+.2f} points"
        if r["n"] < 2:
            lines.append(f"{head}, n={r['n']}: one seed, no interval exists")
        else:
            mark = " *" if r["excludes_zero"] else ""
            lines.append(f"{head}, 95% CI [{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}], "
                         f"n={r['n']}{mark}")
    if paired["excludes_zero"].any():
        lines.append("* the interval excludes zero")
    return "\n".join(lines)


# --- Pareto ------------------------------------------------------------------------------------------

def pareto_front(df: pd.DataFrame) -> pd.DataFrame:
    """Finished configurations not dominated in (mean val_acc up, mean compute down)."""
    fin = df[df["completed"]]
    if fin.empty:
        return fin
    g = fin.groupby(["method", *_keys(df), *CONFIG_KEYS], dropna=False).agg(
        val_acc=("val_acc", "mean"), compute_tflop=("compute_tflop", "mean")).reset_index()
    g = g[["method", *varying_keys(g), *CONFIG_KEYS, "val_acc", "compute_tflop"]]
    return g[pareto_mask(g["val_acc"], g["compute_tflop"])].sort_values("compute_tflop", ignore_index=True)


def pareto_mask(acc: pd.Series, cost: pd.Series) -> list[bool]:
    """True where no other point has accuracy >= and cost <=, one of them strictly."""
    return [not (((acc >= a) & (cost <= c)) & ((acc > a) | (cost < c))).any() for a, c in zip(acc, cost)]


def param_importances(df: pd.DataFrame, params: tuple[str, ...] = ("alpha", "rho", "lam", "epochs"),
                      seed: int = 0) -> dict[float, dict[str, float]]:
    """Per data fraction: Optuna's fANOVA importances of the MixTraining parameters that varied, for the mean
    validation accuracy of each configuration over its completed runs ({} where fewer than two varied)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = {}
    mix = df[(df["method"] == "mixtraining") & df["completed"] & df["val_acc"].notna()]
    for fraction, sub in mix.groupby("fraction"):
        varied = [p for p in params if sub[p].nunique() > 1]
        configs = sub.groupby(varied)["val_acc"].mean().reset_index() if varied else sub.iloc[:0]
        if len(configs) < 2:
            continue
        dists = {p: optuna.distributions.CategoricalDistribution(sorted(configs[p].unique().tolist()))
                 for p in varied}
        study = optuna.create_study(direction="maximize")
        study.add_trials([optuna.trial.create_trial(params={p: r[p] for p in varied}, distributions=dists,
                                                    value=float(r["val_acc"])) for _, r in configs.iterrows()])
        try:
            imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
        except RuntimeError:  # fANOVA's "zero total variance": every configuration scored the same
            continue
        out[float(fraction)] = {k: float(v) for k, v in imp.items()}
    return out


def parameter_study(df: pd.DataFrame, param: str, acc: str = "test_acc") -> pd.DataFrame:
    """The paper's Tables 4-5 as data: per (fraction, epochs) and value of `param` tried, MixTraining's mean
    and std of `acc` over its completed runs (whatever the other parameters were), and the reference means
    of SSL+SL and SL in the same group."""
    fin = df[df["completed"] & df[acc].notna()]
    mix = fin[fin["method"] == "mixtraining"].groupby(["fraction", "epochs", param])[acc].agg(
        ["mean", "std", "count"]).reset_index()
    refs = fin[fin["method"] != "mixtraining"].groupby(["fraction", "epochs", "method"])[acc].mean().unstack()
    for method in ("ssl_sl", "sl"):
        mix[method] = [refs.loc[(f, e), method] if method in refs and (f, e) in refs.index else math.nan
                       for f, e in zip(mix["fraction"], mix["epochs"])]
    return mix
