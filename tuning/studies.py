"""Beyond the comparison: every configuration tried, the Pareto front, parameter studies and importances.

Pure functions over the trial rows of `tuning.summary` (no Ray, no MLflow), like the comparison itself.
"""
from __future__ import annotations

import math

import optuna
import pandas as pd
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from tuning.summary import (CONFIG_KEYS, as_text, comparison_keys, config_keys, confirm_roles, format_value,
                            varying_keys)

IMPORTANCE_MAX_CONFIGS = 500  # fANOVA's forest grows with the configurations: a seeded sample of this many at most


def configurations(df: pd.DataFrame) -> pd.DataFrame:
    """Every MixTraining configuration tried, per comparison group: mean validation and test accuracy over its
    completed runs, how many it completed and ran, best (by validation) first."""
    config = config_keys(df)
    df = df[confirm_roles(df) == ""]  # what the search tried (the confirmation runs are the comparison's)
    mix = df[df["method"] == "mixtraining"].assign(done=lambda d: d["completed"] & d["error"].isna())
    if mix.empty:
        return pd.DataFrame()
    keys = ["fraction", "epochs"]
    done = mix[mix["done"]]
    out = done.groupby(keys + config, dropna=False).agg(val_acc=("val_acc", "mean"), test_acc=("test_acc", "mean"),
                                                        completed=("seed", "nunique")).reset_index()
    ran = mix.groupby(keys + config, dropna=False)["seed"].nunique().rename("ran").reset_index()
    out = ran.merge(out, on=keys + config, how="left").fillna({"completed": 0})
    out = out.sort_values(keys + ["val_acc"], ascending=[True, True, False], ignore_index=True)
    out.attrs["config_keys"] = config
    return out


def format_configurations(table: pd.DataFrame, top: int = 10) -> str:
    """The configurations tried, `top` per fraction and budget (the CSV in the experiment folder has them all)."""
    if table.empty:
        return "(no MixTraining configuration finished)"
    config = table.attrs.get("config_keys", CONFIG_KEYS)
    lines = []
    for (fraction, epochs), sub in table.groupby(["fraction", "epochs"]):
        for r in sub.head(top).to_dict("records"):
            cfg = " ".join(f"{k}={format_value(r[k])}" for k in config)
            lines.append(f"fraction {fraction:g}, {epochs} epochs: {cfg}: val {_pct(r['val_acc'])}, test "
                         f"{_pct(r['test_acc'])} ({int(r['completed'])} of {int(r['ran'])} seed(s) completed)")
        if len(sub) > top:
            lines.append(f"fraction {fraction:g}, {epochs} epochs: ... and {len(sub) - top} more (configurations.csv)")
    return "\n".join(lines)


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if v == v and v is not None else "-"


# --- Pareto ------------------------------------------------------------------------------------------

def pareto_front(df: pd.DataFrame) -> pd.DataFrame:
    """Finished configurations not dominated in (mean val_acc up, mean compute down)."""
    config = config_keys(df)
    fin = df[df["completed"]]
    if fin.empty:
        return fin
    g = fin.groupby(["method", *comparison_keys(df, config), *config], dropna=False).agg(
        val_acc=("val_acc", "mean"), compute_tflop=("compute_tflop", "mean")).reset_index()
    g.attrs["config_keys"] = config
    g = g[["method", *varying_keys(g), *config, "val_acc", "compute_tflop"]]
    return g[pareto_mask(g["val_acc"], g["compute_tflop"])].sort_values("compute_tflop", ignore_index=True)


def pareto_mask(acc: pd.Series, cost: pd.Series) -> list[bool]:
    """True where no other point has accuracy >= and cost <=, one of them strictly."""
    return [not (((acc >= a) & (cost <= c)) & ((acc > a) | (cost < c))).any() for a, c in zip(acc, cost)]


def param_importances(df: pd.DataFrame, seed: int = 0) -> dict[float, dict[str, float]]:
    """Per data fraction: Optuna's fANOVA importances of the MixTraining parameters that varied (the configuration
    keys and the epoch budget), for the mean validation accuracy of each configuration over its completed runs
    ({} where fewer than two varied). Numbers are declared as numeric ranges (a continuous alpha is one
    dimension, not a category per value tried), and at most IMPORTANCE_MAX_CONFIGS configurations, a seeded
    sample, go into the forest, so the time stays bounded however long the search ran."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = {}
    mix = df[(df["method"] == "mixtraining") & df["completed"] & df["val_acc"].notna() & (confirm_roles(df) == "")]
    for fraction, sub in mix.groupby("fraction"):
        varied = [p for p in [*config_keys(df), "epochs"] if as_text(sub[p]).nunique() > 1]
        configs = sub.groupby(varied, dropna=False)["val_acc"].mean().reset_index() if varied else sub.iloc[:0]
        if len(configs) < 2:
            continue
        configs = configs.sample(min(len(configs), IMPORTANCE_MAX_CONFIGS), random_state=seed)
        dists = {p: _distribution(configs[p]) for p in varied}
        study = optuna.create_study(direction="maximize")
        study.add_trials([optuna.trial.create_trial(params={p: _param(r[p]) for p in varied}, distributions=dists,
                                                    value=float(r["val_acc"])) for _, r in configs.iterrows()])
        try:
            imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
        except RuntimeError:  # fANOVA's "zero total variance": every configuration scored the same
            continue
        out[float(fraction)] = {k: float(v) for k, v in imp.items()}
    return out


def _param(v):
    return v.item() if hasattr(v, "item") else (str(v) if v is None else v)


def _distribution(values: pd.Series) -> optuna.distributions.BaseDistribution:
    """A numeric range for numbers (integers as integers), a category per value otherwise."""
    if pd.api.types.is_integer_dtype(values):
        return optuna.distributions.IntDistribution(int(values.min()), int(values.max()))
    if pd.api.types.is_float_dtype(values) and values.notna().all():
        return optuna.distributions.FloatDistribution(float(values.min()), float(values.max()))
    return optuna.distributions.CategoricalDistribution(sorted({_param(v) for v in values}, key=str))


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
