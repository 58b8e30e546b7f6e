"""Compute to a good answer: this tool's default search against what a Ray Tune user writes by hand.

    python benchmarks/vs_tune.py --search-seeds 0 1 2 --num-samples 12 --out benchmarks/results/vs_tune.json

1. Ground truth: the `paper` grid (every alpha x rho x epochs) with SL and SSL+SL, each on --truth-seeds seeds
   to the end (this tool's grid search with FIFO; prefix sharing does not change a result), kept as JSON
   (--truth) and reused when it is there: per configuration, mean validation and test accuracy with standard
   errors, and compute.
2. Three ways to choose alpha, rho per epoch budget, each proposing --num-samples MixTraining configurations,
   on every search seed:
   - mixtune: `tuning/search.py --space paper` with its defaults (Optuna under phase-aware ASHA, SSL-prefix
     sharing, baselines, completion and confirmation runs, all counted); mixtune-noconfirm: the same with
     `--confirm-seeds 0` (the search alone, without the fresh-seed confirmation the others do not do);
   - tune: Ray Tune as its docs teach it: a function trainable that runs one configuration's SSL -> mix -> SL
     schedule and reports validation accuracy every epoch (an untrained head's too), OptunaSearch with its
     defaults, ASHAScheduler on training iterations; SL and SSL+SL once per budget;
   - random: the same trainable, random sampling, every trial to the end (FIFO): the floor.
3. For each: total compute actually spent (FLOPs; prefixes reused from other trials are not spent again),
   wall time, the regret of its choice per budget against the ground truth's best at that budget (ground truth
   mean test accuracy, points, averaged over budgets), and regret as the search goes, against compute spent.

The data, model and scale are those of `prefix_sharing.py`: the `tiny` model on digits, epochs 4/6/8.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from scipy import stats

from common import run_search  # benchmarks/common.py (this folder is on sys.path when run as a script)
from search_spaces import SPACES, scale_epochs
from trainable.config import MixConfig, resolve
from trainable.engine import Engine, load_training_data
from tuning.summary import choose_best, confirm_roles

METHODS = ("mixtune", "mixtune-noconfirm", "tune", "random")
SLOTS = 4  # trials at once on the 2 cores, as prefix_sharing.py runs them


def bench_flags(args) -> list[str]:
    return ["--dataset", "digits", "--model", "tiny", "--epoch-scale", str(args.epoch_scale),
            "--cpus-per-trial", str(2 / SLOTS), "--max-concurrent", str(SLOTS), "--no-mlflow", "--verbose", "0"]


def base_config(args) -> MixConfig:
    from trainable.cli import common_config
    from tuning.flags import build_parser
    return MixConfig(**{**common_config(build_parser().parse_args(bench_flags(args))), "device": "cpu"})


# --- the ground truth ------------------------------------------------------------------------------------

def ground_truth(args, storage: str) -> dict:
    df, wall = run_search(["--space", "paper", "--search", "grid", "--scheduler", "fifo", "--seeds",
                           str(args.truth_seeds), "--confirm-seeds", "0", "--storage-path", storage, "--name", "truth",
                           *bench_flags(args)])
    done = df[df["completed"]]
    key = ["method", "epochs", "alpha", "rho"]
    done = done.assign(alpha=done["alpha"].where(done["method"] == "mixtraining"),
                       rho=done["rho"].where(done["method"] == "mixtraining"))
    g = done.groupby(key, dropna=False)
    table = g.agg(val=("val_acc", "mean"), val_se=("val_acc", "sem"), test=("test_acc", "mean"),
                  test_se=("test_acc", "sem"), test_sd=("test_acc", "std"), seeds=("seed", "nunique"),
                  compute_tflop=("compute_tflop", "mean")).reset_index()
    mix = table[table["method"] == "mixtraining"]
    n = int(mix["seeds"].min())
    sd = float(np.sqrt((mix["test_sd"] ** 2).mean()))  # pooled seed-to-seed spread of one configuration
    # Two configurations' means differ beyond noise (two-sided 5%) when apart by more than this:
    resolvable = float(stats.t.ppf(0.975, 2 * (n - 1)) * sd * math.sqrt(2 / n))
    return {"command": "tuning/search.py " + " ".join(["--space paper --search grid --scheduler fifo --seeds",
                                                       str(args.truth_seeds), *bench_flags(args)]),
            "wall_s": wall, "trials": len(df), "seeds": n, "pooled_test_sd": sd, "resolvable_points": 100 * resolvable,
            "rows": table.to_dict("records")}


def truth_frames(truth: dict) -> tuple[pd.DataFrame, dict[int, float]]:
    """The MixTraining rows of the ground truth, and its best mean test accuracy per budget."""
    t = pd.DataFrame(truth["rows"])
    mix = t[t["method"] == "mixtraining"]
    return mix, mix.groupby("epochs")["test"].max().to_dict()


DEFAULT = (0.5, 0.5)  # alpha, rho: the paper's default, what a budget no trial has run yet gets


def regret(choice: dict[int, tuple[float, float]], mix: pd.DataFrame, best: dict[int, float]) -> float:
    """Mean over budgets of (best mean test accuracy - the chosen configuration's), in points; a budget without a
    choice counts with the paper's default."""
    out = []
    for epochs in best:
        alpha, rho = choice.get(epochs, DEFAULT)
        row = mix[(mix["epochs"] == epochs) & np.isclose(mix["alpha"], alpha) & np.isclose(mix["rho"], rho)]
        out.append(100 * (best[epochs] - float(row["test"].iloc[0])))
    return float(np.mean(out))


# --- the alternative, as a Ray Tune user writes it -------------------------------------------------------

def train_one(config: dict) -> None:
    """One configuration's whole schedule, reporting validation accuracy after every epoch."""
    import torch
    from ray import tune
    torch.set_num_threads(1)
    cfg = MixConfig.from_trial(config["base"]).replace(method=config["method"], alpha=config["alpha"],
                                                        rho=config["rho"], e_ssl=config["epochs"],
                                                        e_sl=config["epochs"], seed=0)
    run = resolve(cfg)
    engine = Engine(run, data=load_training_data(run))
    while not engine.done:
        m = engine.run_epoch()
        report = {"val_acc": engine.evaluate("val")["acc"], "compute_tflop": m["compute_tflop"],
                  "train_time_s": m["train_time_s"], "completed": engine.done}
        if engine.done:
            report["test_acc"] = engine.evaluate("test")["acc"]
        tune.report(report)


def run_tune(args, storage: str, name: str, seed: int, budgets: list[int], search: str) -> pd.DataFrame:
    """search 'tune': OptunaSearch + ASHAScheduler; 'random': random sampling, FIFO. Baselines once per budget."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch
    base = base_config(args).to_dict()
    space = {"base": base, "method": "mixtraining", "alpha": tune.choice(SPACES["paper"]["alpha"]),
             "rho": tune.choice(SPACES["paper"]["rho"]), "epochs": tune.choice(budgets)}
    longest = max(budgets) * 2  # SSL-only + mix + SL-only epochs of the longest schedule, at most
    searcher = OptunaSearch(seed=seed) if search == "tune" else BasicVariantGenerator(random_state=seed)
    scheduler = ASHAScheduler(max_t=longest) if search == "tune" else FIFOScheduler()
    frames = []
    for part, param_space, tune_config in [
        ("mix", space, tune.TuneConfig(metric="val_acc", mode="max", search_alg=searcher, scheduler=scheduler,
                                       num_samples=args.num_samples, max_concurrent_trials=SLOTS)),
        ("baselines", {**space, "method": tune.grid_search(["sl", "ssl_sl"]), "epochs": tune.grid_search(budgets),
                       "alpha": 0.5, "rho": 0.5}, tune.TuneConfig(max_concurrent_trials=SLOTS)),
    ]:
        tuner = tune.Tuner(tune.with_resources(train_one, {"cpu": 2 / SLOTS}), param_space=param_space,
                           tune_config=tune_config,
                           run_config=tune.RunConfig(storage_path=storage, name=f"{name}-{part}", verbose=0))
        grid = tuner.fit()
        rows = []
        for r in grid:
            last = r.metrics or {}
            rows.append({"method": r.config["method"], "alpha": r.config["alpha"], "rho": r.config["rho"],
                         "epochs": r.config["epochs"], "val_acc": last.get("val_acc"),
                         "test_acc": last.get("test_acc"), "completed": bool(last.get("completed")),
                         "spent_tflop": last.get("compute_tflop", 0.0), "end": last.get("timestamp", 0),
                         "train_time_s": last.get("train_time_s", 0.0), "search_proper": part == "mix",
                         "part": "search" if part == "mix" else "baselines"})
        frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)


# --- this tool -------------------------------------------------------------------------------------------

def ssl_epoch_tflop(args) -> float:
    """FLOPs of one SSL-only epoch (what a reused prefix epoch did not cost again)."""
    run = resolve(base_config(args).replace(method="ssl_sl", e_ssl=1, e_sl=1, seed=0))
    engine = Engine(run, data=load_training_data(run))
    return engine.run_epoch()["compute_tflop"]


def end_times(folder: str) -> dict[str, float]:
    """Each trial's last reported timestamp, from Ray's result files."""
    out = {}
    for f in glob.glob(os.path.join(folder, "*", "result.json")):
        lines = [json.loads(x) for x in Path(f).read_text().splitlines() if x.strip()]
        if lines:
            out[lines[-1]["trial_id"]] = lines[-1]["timestamp"]
    return out


def trial_parts(df: pd.DataFrame) -> np.ndarray:
    """Each trial's part of the compute: confirmation (any method, fresh seeds), completion (the chosen
    configuration's stopped seeds), search (the search's own MixTraining proposals), or baselines."""
    roles = confirm_roles(df)
    return np.select([roles != "", df["completion"], df["method"] == "mixtraining"],
                     ["confirmation", "completion", "search"], "baselines")


def run_mixtune(args, storage: str, name: str, seed: int, ssl_epoch: float, confirm: bool) -> pd.DataFrame:
    df, _ = run_search(["--space", "paper", "--num-samples", str(args.num_samples), "--search-seed", str(seed),
                        "--storage-path", storage, "--name", name, *bench_flags(args)]
                       + ([] if confirm else ["--confirm-seeds", "0"]))
    ends = end_times(os.path.join(storage, name))
    chosen = {int(r["epochs"]): (r["alpha"], r["rho"]) for r in choose_best(df).to_dict("records")}
    part = trial_parts(df)
    return pd.DataFrame({
        "method": df["method"], "alpha": df["alpha"], "rho": df["rho"], "epochs": df["epochs"],
        "val_acc": df["val_acc"], "test_acc": df["test_acc"], "completed": df["completed"],
        "spent_tflop": df["compute_tflop"] - df["ssl_epochs_reused"] * ssl_epoch,
        "end": df["trial_id"].map(ends).fillna(0), "train_time_s": df["train_time_s"] - df["ssl_time_reused_s"],
        "search_proper": part == "search", "part": part}).assign(final_choice=json.dumps({str(k): v for k, v in chosen.items()}))


# --- regret as the search goes ---------------------------------------------------------------------------

def choice_from(trials: pd.DataFrame) -> dict[int, tuple[float, float]]:
    """Per budget: the MixTraining configuration with the best validation accuracy among those that completed,
    else among those stopped early (what a user of the alternative reads off its results)."""
    mine = trials[trials["search_proper"] & trials["val_acc"].notna()]
    out = {}
    for e, g in mine.groupby("epochs"):
        g = g[g["completed"]] if g["completed"].any() else g
        top = g.loc[g["val_acc"].idxmax()]
        out[int(e)] = (float(top["alpha"]), float(top["rho"]))
    return out


def curve(trials: pd.DataFrame, mix: pd.DataFrame, best: dict[int, float]) -> list[tuple[float, float]]:
    """(compute spent so far, regret of the choice so far): at the start, then after each trial ends, in the order
    they ended."""
    ordered = trials.sort_values("end", kind="stable").reset_index(drop=True)
    spent = ordered["spent_tflop"].cumsum()
    return [(0.0, regret({}, mix, best))] + [(float(spent[i]), regret(choice_from(ordered.iloc[:i + 1]), mix, best))
                                             for i in range(len(ordered))]


def first_within(points: list[tuple[float, float]], points_of_regret: float = 1.0) -> float | None:
    """The compute at which regret first falls to within `points_of_regret` and stays there."""
    for i, (c, r) in enumerate(points):
        if all(not math.isnan(x) and x <= points_of_regret for _, x in points[i:]):
            return c
    return None


def spent_by_part(trials: pd.DataFrame) -> dict:
    """Where the compute went (TFLOP: the search's MixTraining trials, baselines, completion and confirmation
    runs) and how many of the search's MixTraining trials the scheduler stopped before their end."""
    spent = trials.groupby("part")["spent_tflop"].sum()
    out = {f"{p}_tflop": float(spent.get(p, 0.0)) for p in ("search", "baselines", "completion", "confirmation")}
    return {**out, "stopped_early": int((trials["search_proper"] & ~trials["completed"].astype(bool)).sum())}


def summarize(results: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(results)
    out = []
    for method, g in df.groupby("method", sort=False):
        n = len(g)
        half = stats.t.ppf(0.975, n - 1) * g["regret"].std() / math.sqrt(n) if n > 1 else math.nan
        out.append({"method": method, "search_seeds": n, "regret_points": g["regret"].mean(), "regret_ci_half": half,
                    "compute_tflop": g["spent_tflop"].mean(), "search_tflop": g["search_tflop"].mean(),
                    "baselines_tflop": g["baselines_tflop"].mean(),
                    "completion_confirmation_tflop": (g["completion_tflop"] + g["confirmation_tflop"]).mean(),
                    "stopped_early": g["stopped_early"].mean(), "wall_s": g["wall_s"].mean(),
                    "compute_to_1_point_tflop": g["to_1_point"].median() if g["to_1_point"].notna().all() else None,
                    "reached_1_point": int(g["to_1_point"].notna().sum())})
    return pd.DataFrame(out)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, color in zip(METHODS, ("C0", "C3", "C1", "C2")):
        curves = [r["curve"] for r in results if r["method"] == method]
        if not curves:
            continue
        top = max(c[-1][0] for c in curves)
        xs = np.linspace(0, top, 200)
        ys = np.array([[next((r for x0, r in reversed(c) if x0 <= x), math.nan) for x in xs] for c in curves])
        with np.errstate(all="ignore"):
            ax.plot(xs, np.nanmean(ys, 0), color=color, label=f"{method} (mean of {len(curves)} search seeds)")
            ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=0.2)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("compute spent (TFLOP)")
    ax.set_ylabel("regret (points of test accuracy, mean over budgets)")
    ax.set_title("Regret of the chosen alpha, rho against compute\n(line: mean; band: min-max over search seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/vs_tune.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=12, help="MixTraining configurations each search proposes")
    p.add_argument("--truth-seeds", type=int, default=4)
    p.add_argument("--epoch-scale", type=float, default=0.08, help="of the paper's 50/75/100 epochs (4/6/8)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--truth", type=Path, default=Path("benchmarks/results/vs_tune_truth.json"),
                   help="the ground truth: read when it exists, else computed and written here")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/vs_tune.json"))
    args = p.parse_args(argv)
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            if args.truth.exists():
                truth = json.loads(args.truth.read_text())
            else:
                truth = ground_truth(args, storage)
                args.truth.write_text(json.dumps(truth, indent=1, default=str) + "\n")
            print(f"ground truth: {truth['trials']} runs, {truth['seeds']} seeds, {truth['wall_s']:.0f} s; two "
                  f"configurations are told apart when {truth['resolvable_points']:.1f} points apart", flush=True)
            mix, best = truth_frames(truth)
            budgets = sorted(best)
            ssl_epoch = ssl_epoch_tflop(args)
            results = []
            for seed in args.search_seeds:
                for method in args.methods:
                    t0, name = time.perf_counter(), f"{method}-{seed}"
                    trials = (run_mixtune(args, storage, name, seed, ssl_epoch, method == "mixtune")
                              if method.startswith("mixtune") else run_tune(args, storage, name, seed, budgets, method))
                    wall = time.perf_counter() - t0
                    points = curve(trials, mix, best)
                    final = regret(choice_from(trials), mix, best) if not method.startswith("mixtune") else regret(
                        {int(k): tuple(v) for k, v in json.loads(trials["final_choice"].iloc[0]).items()}, mix, best)
                    results.append({"method": method, "seed": seed, "regret": final, "wall_s": wall,
                                    "spent_tflop": float(trials["spent_tflop"].sum()), "trials": len(trials),
                                    **spent_by_part(trials),
                                    "to_1_point": first_within(points), "curve": points})
                    print(f"{method} seed {seed}: regret {final:.2f} points, {results[-1]['spent_tflop']:.2f} TFLOP, "
                          f"{len(trials)} trials, {wall:.0f} s", flush=True)
    finally:
        ray.shutdown()
    table = summarize(results)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    png = args.out.with_suffix(".png")
    plot(results, png)
    args.out.write_text(json.dumps({
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "command": "python benchmarks/vs_tune.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {k: str(v) for k, v in vars(args).items()}, "ground_truth": {k: v for k, v in truth.items()
                                                                               if k != "rows"},
        "table": table.to_dict("records"), "runs": results, "plot": str(png)}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
