"""The comparison in the layout of the paper's Table 1, from one row per trial.

Pure functions over a pandas DataFrame (no Ray, no MLflow), so the search's own summary,
`tuning/report.py` (rebuilt from MLflow) and `benchmarks/replicate.py` (no Ray at all) are the
same code. The rows come from `trial_row`, the one place that knows their columns.

What makes the comparison fair:
- Rows are grouped by everything that defines a comparison (`COMPARISON_KEYS`): runs on other
  data, models, budgets or optimiser settings never share a row. A field the search varied is not
  a group key but part of a MixTraining configuration's identity (`config_keys`): the baselines
  run at its default.
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
from scipy import stats

from search_spaces import AXES
from trainable.config import MixConfig, field_names, model_name, resolve_optim

# What tells MixTraining configurations apart in every search: the paper's three knobs.
CONFIG_KEYS = ["alpha", "rho", "lam"]
METHOD_NAMES = {"sl": "SL", "ssl_sl": "SSL+SL", "mixtraining": "MixTraining", "default": "MixTraining (default)"}
# Everything that defines a comparison: rows differing in any of these are never pooled (unless the search varied
# one of them: then it tells configurations apart instead).
COMPARISON_KEYS = ["datasets", "ssl_dataset", "model", "fraction", "val_frac", "epochs", "epoch_scale", "batch_size",
                   "ssl_lr", "sl_lr", "mix_step", "mix_optim"]
# Fields a search space may vary, each a column of the rows (e_sl is the `epochs` column).
SEARCHABLE = [f for f in field_names() if f not in AXES and f != "e_sl"]
_TRUE = (True, "true", "True", 1, "1")
MIXES = ("mixtraining", "default")  # the comparison's MixTraining rows: the chosen configuration, the paper's default
# Keys the experiment searcher adds to a trial's config (tuning.searcher): the seed repeats of one proposed
# configuration share GROUP; COMPLETION marks a trial that completes a stopped seed of the chosen configuration.
GROUP = "_group"
COMPLETION = "_completion"
# CONFIRM marks a run on the fresh confirmation seeds (--confirm-seeds): its role, one of CONFIRM_ROLES.
CONFIRM = "_confirm"
TUNED, DEFAULT, BOTH, BASELINE = "tuned", "default", "tuned+default", "baseline"


def trial_row(config: Mapping[str, Any], metrics: Mapping[str, Any], *, completed: bool, error: str | None,
              epoch_scale: float | None = None, **extra: Any) -> dict[str, Any]:
    """One trial as a row of the comparison's input.

    config: the trial's config fields and bookkeeping keys (a Tune config over the search's base, or
    MLflow's parameter strings); fields it lacks take the config's defaults. metrics: its last
    reported metrics. alpha and lam are taken from the metrics where present: population-based
    training changes them during a trial, and the metrics hold the last values used. epoch_scale: the
    search's (else the config's `epoch_scale`, as MLflow's parameters hold it). extra: further columns
    (trial_id when not in the metrics, ...).
    """
    cfg = MixConfig.from_strings({k: v for k, v in config.items() if k in _FIELDS})
    # Base learning rates (before MAE's batch-size scaling): a search over batch_size compares with baselines
    # run at the same base rates.
    ssl_lr, sl_lr = (lr * 256 / cfg.batch_size for lr in resolve_optim(cfg))
    searchable = {k: getattr(cfg, k) for k in SEARCHABLE}
    return {**searchable,
        "trial_id": metrics.get("trial_id"), "method": config.get("method"),
        "completion": config.get(COMPLETION, config.get("completion")) in _TRUE,
        "confirm": str(config.get(CONFIRM, config.get("confirm")) or ""),
        "datasets": "+".join(cfg.datasets), "ssl_dataset": cfg.ssl_dataset or "", "model": _model(cfg),
        "fraction": cfg.fraction, "val_frac": cfg.val_frac, "epochs": cfg.e_sl, "e_ssl": cfg.e_ssl,
        "epoch_scale": float(epoch_scale if epoch_scale is not None else config.get("epoch_scale", 1.0)),
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


_FIELDS = set(field_names())


def _model(cfg: MixConfig) -> str:
    return model_name(cfg)


def config_keys(df: pd.DataFrame) -> list[str]:
    """What tells MixTraining configurations apart in these rows: `df.attrs["config_keys"]` where the search set
    it (from its space), else alpha, rho, lam and every searchable field that varies among the MixTraining runs
    of one search at one fraction and budget (`search` tells searches apart where the rows come from several,
    as in `tuning/report.py`)."""
    if "config_keys" in df.attrs:
        return list(df.attrs["config_keys"])
    mix = df[df["method"] == "mixtraining"] if "method" in df else df.iloc[:0]
    by = [mix[k] for k in ("search", "fraction", "epochs") if k in mix]
    texts = {k: as_text(mix[k]) for k in SEARCHABLE if k in mix and k not in CONFIG_KEYS}
    varying = {k for k, text in texts.items()
               if (text.groupby(by, dropna=False).nunique().gt(1).any() if by else text.nunique() > 1)}
    return CONFIG_KEYS + sorted(varying)


def comparison_keys(df: pd.DataFrame, config: list[str] | None = None) -> list[str]:
    """The comparison keys of these rows: those present and not varied by a search."""
    config = config_keys(df) if config is None else config
    return [k for k in COMPARISON_KEYS if k in df.columns and k not in config]


def choose_best(df: pd.DataFrame, config: list[str] | None = None) -> pd.DataFrame:
    """Per comparison group: the MixTraining configuration with the best mean validation accuracy over its
    completed runs of the search proper (completion and confirmation runs aside), and how many configurations
    the group tried. One row per group: its keys, the configuration, mean_val and tried.
    config: the configuration keys (`config_keys`), when the caller has them.

    Selection on equal footing: where some configurations of a group completed every seed they ran, only
    those are ranked, each over all its seeds; a configuration whose weak seeds the scheduler stopped is not
    ranked on its surviving seeds alone. Only where none did are the completed runs ranked as they are (the
    search then completes the choice on its stopped seeds).
    """
    config = config_keys(df) if config is None else config
    mixes = df[df["method"] == "mixtraining"]
    mixes = mixes[confirm_roles(mixes) == ""]
    ran = mixes[~mixes["completion"]]  # a failed run counts as not completed
    if not ran["completed"].any():  # nothing to choose from: no group, the same columns
        return ran.iloc[:0].assign(mean_val=pd.Series(dtype=float), tried=pd.Series(dtype=int))
    group = comparison_keys(df, config)  # never empty: the data fields (datasets, fraction) are never searched
    full = ran.groupby(group + config, dropna=False)["completed"].transform("all")
    some_full = full.groupby([as_text(ran[k]) for k in group]).transform("any")
    proper = ran[ran["completed"] & (full | ~some_full)]
    mean = proper.groupby(group + config, dropna=False)["val_acc"].mean().rename("mean_val").reset_index()
    # No validation (--val-frac 0, allowed only where one configuration is tried) ranks below any measured one.
    ranked = mean["mean_val"].fillna(-math.inf)
    best = mean.loc[ranked.groupby([mean[k] for k in group], dropna=False).idxmax()]
    tried = mixes.groupby(group, dropna=False)[config].apply(lambda g: len(g.apply(as_text).drop_duplicates()))
    return best.merge(tried.rename("tried").reset_index(), on=group, how="left")


def _text(value: Any) -> str:
    return "nan" if pd.isna(value) else str(value)


def as_text(values: pd.Series) -> pd.Series:
    """Values as text, to tell configurations apart: every missing value (None, NaN) one and the same, never
    dropped. (`astype(str)` is not this: pandas 3 keeps a missing value missing, and groupby and nunique drop it.)"""
    return values.map(_text)


def confirm_roles(rows: pd.DataFrame) -> pd.Series:
    """Each row's role on the confirmation seeds ("" for the search's own runs)."""
    return rows["confirm"].fillna("").astype(str) if "confirm" in rows else pd.Series("", index=rows.index)


def same_config(rows: pd.DataFrame, best: Mapping[str, Any], config: list[str]) -> pd.Series:
    """Which rows have the configuration `best` (None and NaN equal to themselves)."""
    return (rows[config].apply(as_text) == pd.Series({k: _text(best[k]) for k in config})).all(axis=1)


def _per_seed(rows: pd.DataFrame, value: str) -> pd.Series:
    """One value per seed (the mean where a seed ran twice, e.g. a configuration proposed twice)."""
    return rows.groupby("seed")[value].mean()


def comparison_rows(df: pd.DataFrame) -> list[tuple[dict, dict[str, pd.DataFrame]]]:
    """Per comparison group: its keys (with `confirmed`: whether its runs are confirmation runs) and, per method,
    the completed runs on the group's common seeds. Where the search confirmed its choice on fresh seeds, the
    group's rows are those runs only: the chosen configuration ("mixtraining"), the paper's default
    ("default"), SL and SSL+SL; the search's own seeds only chose."""
    config = config_keys(df)
    group = comparison_keys(df, config)
    chosen = choose_best(df, config)  # every group's at once: from all its runs (`tried` counts stopped ones too)
    best_of = {tuple(map(_text, best[group])): best for _, best in chosen.iterrows()}
    out = []
    for key, sub in df.groupby(group, dropna=False):
        key = dict(zip(group, key))  # a tuple: grouped by a list
        done = sub[sub["completed"] & sub["error"].isna()]
        best = best_of.get(tuple(_text(key[k]) for k in group))
        role = confirm_roles(done)
        if (role != "").any():
            runs = {"sl": done[(role == BASELINE) & (done["method"] == "sl")],
                    "ssl_sl": done[(role == BASELINE) & (done["method"] == "ssl_sl")],
                    "mixtraining": done[role.isin([TUNED, BOTH])], "default": done[role.isin([DEFAULT, BOTH])]}
        else:
            runs = {m: done[done["method"] == m] for m in ("sl", "ssl_sl")}
            mix = done[done["method"] == "mixtraining"]
            runs["mixtraining"] = mix[same_config(mix, best, config)] if best is not None else mix.iloc[:0]
        if best is not None:
            runs["mixtraining"] = runs["mixtraining"].assign(tried=best["tried"])
        runs = {m: r for m, r in runs.items() if not r.empty}
        common = set.intersection(*(set(r["seed"]) for r in runs.values())) if runs else set()
        key["confirmed"] = bool((role != "").any())
        out.append((key, {m: r[r["seed"].isin(common)] for m, r in runs.items()}))
    return out


def comparison_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (comparison group, method): test accuracy mean/std over the common seeds, time and
    compute, and MixTraining's speedups over SSL+SL."""
    if df.empty:
        return pd.DataFrame()
    config = config_keys(df)
    rows = []
    for key, runs in comparison_rows(df):
        ref = runs.get("ssl_sl")
        for method, r in runs.items():
            acc = _per_seed(r, "test_acc")
            row = {**key, "method": method, "test_acc_mean": acc.mean(),
                   "test_acc_std": acc.std() if len(acc) > 1 else math.nan, "val_acc_mean": r["val_acc"].mean(),
                   "seeds": len(acc), "calibrated_time_s": r["calibrated_time_s"].mean(),
                   "compute_tflop": r["compute_tflop"].mean(), "train_time_s": r["train_time_s"].mean(),
                   "tried": r["tried"].iloc[0] if "tried" in r else math.nan,
                   **{k: r[k].iloc[0] if method in MIXES else math.nan for k in config}}
            for what in ("calibrated_time_s", "compute_tflop"):
                row[f"speedup_{what}"] = (ref[what].mean() / row[what] if method in MIXES and ref is not None
                                          and row[what] else math.nan)
            rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    table = table.sort_values([*comparison_keys(table, config), "method"], ignore_index=True,
                              key=lambda s: s.map(order) if s.name == "method" else s)
    table.attrs["config_keys"] = config
    return table


def paired_stats(df: pd.DataFrame, confidence: float = 0.95, alpha: float = 0.05) -> pd.DataFrame:
    """Per comparison group, per pair of methods (`PAIRS`: MixTraining against SSL+SL and SL, and where the
    search confirmed its choice, the chosen configuration against the paper's default and the default against
    SSL+SL): the per-seed differences in test accuracy over the common seeds; their mean, t-interval
    (`confidence`, for this comparison alone), whether that interval excludes zero, the paired t-test's
    two-sided p-value, the compute ratio, and `significant`: whether the difference holds at family-wise level
    `alpha` over every comparison of these rows (Holm's step-down correction: it controls the chance of any
    false mark among them without assuming they are independent, and never marks less than Bonferroni
    would). A difference with no spread (n < 2, or every seed equal) has no test: never marked."""
    rows = []
    for key, runs in comparison_rows(df):
        for method, other in PAIRS:
            if method in runs and other in runs:
                d = (_per_seed(runs[method], "test_acc") - _per_seed(runs[other], "test_acc")).dropna()
                ratio = runs[method]["compute_tflop"].mean() / runs[other]["compute_tflop"].mean()
                rows.append({**key, "method": method, "versus": other, "compute_ratio": ratio,
                             **paired_difference(d, confidence)})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = holm(out["p_value"].tolist())
        out["significant"] = out["p_holm"] < alpha
    return out


# The paired comparisons: the chosen MixTraining against each baseline; with confirmation, also against the paper's
# default (does tuning pay at equal compute?) and the default against SSL+SL.
PAIRS = (("mixtraining", "default"), ("mixtraining", "ssl_sl"), ("mixtraining", "sl"), ("default", "ssl_sl"))


def paired_difference(d: pd.Series, confidence: float = 0.95) -> dict[str, Any]:
    """Mean of per-seed differences `d`, its t-interval and two-sided p-value; no interval without spread."""
    n, mean = len(d), d.mean()
    sd = d.std() if n > 1 else math.nan
    if n < 2 or not sd > 0:
        return {"n": n, "mean_diff": mean, "ci_low": math.nan, "ci_high": math.nan, "excludes_zero": False,
                "p_value": math.nan}
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    p = 2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)
    return {"n": n, "mean_diff": mean, "ci_low": mean - half, "ci_high": mean + half,
            "excludes_zero": bool(mean - half > 0 or mean + half < 0), "p_value": float(p)}


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN, no test, stays NaN and counts for nothing): the k-th smallest of m
    p-values is multiplied by m - k + 1, made non-decreasing, capped at 1."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p == p)
    out, running = [math.nan] * len(p_values), 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - k) * p))
        out[i] = running
    return out


# --- text --------------------------------------------------------------------------------------------

def varying_keys(table: pd.DataFrame) -> list[str]:
    """The comparison keys worth a column: fraction and epochs always, the others where they vary."""
    return [k for k in comparison_keys(table, table.attrs.get("config_keys", CONFIG_KEYS))
            if k in ("fraction", "epochs") or table[k].nunique(dropna=False) > 1]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def format_table(table: pd.DataFrame) -> str:
    """Markdown: one line per method under each comparison group (Table 1 / Table 6 layout)."""
    if table.empty:
        return "(no finished trials to compare)"
    keys, config = varying_keys(table), table.attrs.get("config_keys", CONFIG_KEYS)
    head = keys + ["method", "test accuracy", "n", "time (s, one slot)", "compute (TFLOP)", "speedup (time)",
                   "speedup (compute)", "wall-clock (s)", "configs tried", *config]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.to_dict("records"):  # `tried` and the configuration are NaN (blank) but on MixTraining's rows
        cells = [_fmt(r[k]) for k in keys] + [
            METHOD_NAMES[r["method"]], _accuracy(r["test_acc_mean"], r["test_acc_std"], r["seeds"]),
            str(r["seeds"]), _num(r["calibrated_time_s"], "{:.1f}"), _num(r["compute_tflop"], "{:.4g}"),
            _num(r["speedup_calibrated_time_s"], "{:.2f}x"), _num(r["speedup_compute_tflop"], "{:.2f}x"),
            _num(r["train_time_s"], "{:.1f}"), str(int(r["tried"])) if r["tried"] == r["tried"] else "",
            *[format_value(r[k]) for k in config]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(v, fmt: str) -> str:
    return fmt.format(v) if v is not None and v == v else ""


def _accuracy(mean: float, std: float, n: int) -> str:
    """Mean ± std in percent; one seed has no spread to show."""
    return f"{100 * mean:.2f}%" + (f" ± {100 * std:.2f}" if n > 1 else "")


def format_value(v) -> str:
    """A configuration value: numbers as %g, None (a default chosen by the data) as 'default'."""
    if v is None:
        return "default"
    return _num(v, "{:g}") if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def format_paired(paired: pd.DataFrame) -> str:
    """One line per comparison: mean difference in points, its 95% interval, marked * when the difference holds
    family-wise over all the lines (Holm, 5%)."""
    if paired.empty:
        return "(no MixTraining run shares seeds with a baseline: no paired comparison)"
    lines, keys = [], varying_keys(paired)
    for r in paired.to_dict("records"):
        where = ", ".join(f"{k} {_fmt(r[k])}" for k in keys)
        head = (f"{METHOD_NAMES[r.get('method', 'mixtraining')]} - {METHOD_NAMES[r['versus']]} ({where}): "
                f"{100 * r['mean_diff']:+.2f} points")
        if r.get("compute_ratio") == r.get("compute_ratio") and r.get("compute_ratio") is not None:
            head += f" at {r['compute_ratio']:.2f}x the compute"
        if r["n"] < 2:
            lines.append(f"{head}, n={r['n']}: one seed, no interval exists")
        elif r["ci_low"] != r["ci_low"]:
            lines.append(f"{head}, n={r['n']}: every seed differs by the same amount, no interval exists")
        else:
            mark = " *" if r["significant"] else ""
            lines.append(f"{head}, 95% CI [{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}], "
                         f"Holm p={r['p_holm']:.3g}, n={r['n']}{mark}")
    tests = int(paired["p_value"].notna().sum())
    if tests:
        lines.append(f"* holds at 5% family-wise over the {tests} tested comparison(s) above (Holm's correction of "
                     f"paired t-tests); each interval is for its comparison alone")
    return "\n".join(lines)
