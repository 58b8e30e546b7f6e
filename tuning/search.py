"""Search MixTraining's alpha / rho / lam / epochs with Ray Tune, baselines alongside.

    python tuning/search.py --space paper                       # the paper's setting: CIFAR-10, ViT-T
    python tuning/search.py --space paper --dataset digits --model tiny --epoch-scale 0.2 --num-samples 12

Runs SL and SSL+SL once per (epoch budget, fraction, seed) and the searched MixTraining
configurations over every seed, with Optuna (TPE), random sampling or a grid, under
phase-aware ASHA; then prints the comparison in the layout of the paper's Table 1.
`--resume --name X` continues an interrupted search.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
if __name__ == "__main__" and not __package__:  # `python tuning/search.py`: import this checkout's packages
    sys.path.insert(0, REPO)

import pandas as pd  # noqa: E402

from search_spaces import SPACES, epoch_budgets, get_space  # noqa: E402
from trainable import storage  # noqa: E402
from trainable.cli import (COUNT, FRACTION, INDEX, NON_NEGATIVE, POSITIVE, add_common_args,  # noqa: E402
                           common_config, config_error_message, folder_name, mlflow_experiment, number, ray_address,
                           storage_path, tracking_uri)
from trainable.config import ConfigError, MixConfig, model_name  # noqa: E402
from trainable.datasets import MissingDataError, load_dataset  # noqa: E402
from trainable.tune_trainable import PBT_MUTABLE  # noqa: E402
from tuning import tracking  # noqa: E402
from tuning.summary import (CONFIG_KEYS, choose_best, comparison_table, format_paired,  # noqa: E402
                            format_table, paired_stats, pareto_front, trial_row)

log = logging.getLogger("tuning.search")

ARGS_FILE = "mixtune_args.json"  # the search's settings, beside Ray's experiment state, for --resume
PARENT_FILE = "mlflow_parent_run.txt"  # the MLflow parent run, so --resume continues it
CALIBRATION_FILE = "step_seconds.json"  # each step kind's cost measured alone at the start
PLAN_FILE = "plan.json"  # the planned trials and epochs, which the progress output counts against
SEARCHES = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "fifo", "pbt")
OBJECTIVES = ("accuracy", "pareto")
DEFAULT_STORAGE = "ray_results"


class UsageError(Exception):
    """A mistake on the command line or in the environment the user can fix; no traceback."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tuning/search.py", description=__doc__,
                                usage="%(prog)s [options]   (--help lists them)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _search_args(p.add_argument_group("search"))
    _resource_args(p.add_argument_group("resources and storage"))
    _tracking_args(p.add_argument_group("tracking"))
    add_common_args(p, default_dataset="cifar10")
    return p


def _search_args(g) -> None:
    g.add_argument("--space", default="paper", choices=SPACES,
                   help="search space (default: paper); table1: the paper's main protocol, every seed to the end")
    g.add_argument("--search", choices=SEARCHES,
                   help="optuna: TPE (default); random; grid: every combination once per seed (table1's)")
    g.add_argument("--objective", default="accuracy", choices=OBJECTIVES,
                   help="accuracy: maximise validation accuracy; pareto: accuracy up and compute down")
    g.add_argument("--scheduler", choices=SCHEDULERS,
                   help="asha: phase-aware early stopping in supervised epochs (default); fifo: none (table1's); "
                        "pbt: population-based training of alpha/lam (with --space pbt and --search random)")
    g.add_argument("--num-samples", type=COUNT, default=10,
                   help="configurations per fraction for optuna/random (default 10); each runs --seeds times")
    g.add_argument("--seeds", type=COUNT, default=1, help="seeds per configuration, averaged (the paper uses 4)")
    g.add_argument("--fraction", type=FRACTION, nargs="+", default=[1.0],
                   help="data fraction(s) p in (0, 1], one search each (default 1.0)")
    g.add_argument("--epoch-scale", type=POSITIVE, default=1.0,
                   help="multiply every epoch count (e.g. 0.1 turns 50/75/100 into 5/8/10)")
    g.add_argument("--grace-period", type=COUNT,
                   help="ASHA: supervised epochs before a first stop; PBT: between perturbations "
                        "(default: a quarter of the budget)")
    g.add_argument("--no-baselines", action="store_true", help="skip the SL and SSL+SL baselines")
    g.add_argument("--search-seed", type=INDEX, default=0, help="seed of the Optuna sampler")
    g.add_argument("--warm-start", type=folder_name, metavar="NAME",
                   help="build on the finished search NAME (same data, model, budget and seeds): Optuna starts from its "
                        "results, its baselines and configurations are not run again, its SSL prefixes are reused")
    g.add_argument("--no-share-ssl", dest="share_ssl", action="store_false",
                   help="do not share SSL-only prefixes between trials with the same SSL settings")
    g.add_argument("--prefix-store-gb", type=POSITIVE, default=20.0,
                   help="size bound of the shared SSL-prefix store, in GiB (default 20)")


def _resource_args(g) -> None:
    g.add_argument("--max-concurrent", type=COUNT, help="trials at once (default: as many as resources allow)")
    g.add_argument("--cpus-per-trial", type=POSITIVE, default=1.0)
    g.add_argument("--gpus-per-trial", type=NON_NEGATIVE, default=0.0,
                   help="fractional GPUs per trial: 0.25 puts four trials on one GPU (default 0)")
    g.add_argument("--address", type=ray_address, help="join a running Ray cluster (e.g. auto)")
    g.add_argument("--wait-for-nodes", type=NON_NEGATIVE, default=0.0, metavar="SECONDS",
                   help="on a cluster without an autoscaler, wait this long for a node that can run a trial "
                        "(worker nodes started by hand after the search); default 0: fail at once")
    g.add_argument("--storage-path", default=DEFAULT_STORAGE, type=storage_path,
                   help="experiment folder: a local path (default ./ray_results) or s3:// / gs:// on clusters")
    g.add_argument("--name", type=folder_name, help="experiment name (default: <space>-<datasets>-<date>)")
    g.add_argument("--resume", action="store_true", help="continue the experiment --name")
    g.add_argument("--checkpoint-every", type=COUNT, default=1, help="epochs between trial checkpoints")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every trial's last checkpoint (default: only running, failed and best-model trials')")
    g.add_argument("--max-failures", type=number(int, 0, 100), default=3, help="retries of a failed trial from its checkpoint")
    g.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Ray's progress output")


def _tracking_args(g) -> None:
    g.add_argument("--mlflow-uri", type=tracking_uri, help="tracking server or store (default: $MLFLOW_TRACKING_URI, else "
                                        "sqlite:///mlflow.db in this folder)")
    g.add_argument("--experiment", default="mixtraining", type=mlflow_experiment, help="MLflow experiment name (default: mixtraining)")
    g.add_argument("--no-mlflow", action="store_true", help="do not track in MLflow")
    g.add_argument("--register-model", type=mlflow_experiment, metavar="NAME",
                   help="register the best model in MLflow's model registry under NAME")
    g.add_argument("--system-metrics", action="store_true",
                   help="log each trial's CPU, memory and GPU use per epoch (needs psutil; nvidia-ml-py for GPUs)")


PROTOCOL_SPACES = ("table1",)  # spaces that fix one configuration and run every seed to the end


def resolve_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--search and --scheduler by space: the paper's protocol is a grid of one configuration, never stopped."""
    if args.space in PROTOCOL_SPACES:
        for flag, value, want in (("--search", args.search, "grid"), ("--scheduler", args.scheduler, "fifo")):
            if value not in (None, want):
                parser.error(f"{flag} {value}: --space {args.space} runs the paper's one configuration on every seed "
                             f"to the end; leave {flag} out (or give {want})")
        args.search, args.scheduler = "grid", "fifo"
    args.search = args.search or "optuna"
    args.scheduler = args.scheduler or "asha"


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What the flags' types cannot check alone; every mistake is one parser error naming the flag."""
    resolve_defaults(args, parser)
    if args.gpus_per_trial > 1 and not float(args.gpus_per_trial).is_integer():
        parser.error(f"--gpus-per-trial: above 1 it must be a whole number of GPUs, got {args.gpus_per_trial:g}")
    if args.resume and not args.name:
        parser.error("--resume needs --name of the experiment to continue")
    if args.warm_start and args.objective == "pareto":
        parser.error("--warm-start: give --objective accuracy (Optuna is seeded with single results)")
    if args.scheduler == "pbt":
        from ray.tune.search.sample import Domain
        varying = [k for k in ("rho", "epochs", "e_ssl", "e_sl") if isinstance(SPACES[args.space].get(k), Domain)]
        if varying:
            parser.error(f"--scheduler pbt: space {args.space!r} varies {', '.join(varying)}; PBT copies weights "
                         f"between trials, which must share the phase plan: use --space pbt")
        if args.search == "optuna":
            parser.error("--scheduler pbt: use --search random or grid "
                         "(PBT changes the configs Optuna would learn from)")
    try:
        for f in args.fraction:
            MixConfig(**common_config(args), fraction=f)
    except ConfigError as e:
        parser.error(config_error_message(e))


# --- experiment folder ------------------------------------------------------------------------

def experiment_folder(storage_path: str, name: str) -> storage.Folder:
    """The experiment's folder: Ray's state and checkpoints, our settings, tables and figures."""
    return storage.Folder(storage.absolute(storage_path).rstrip("/") + "/" + name)


# Flags that may change between the runs of one experiment: where it lives and runs, where it is tracked,
# how failures and concurrency are handled, what is printed. Every other flag defines what the trials
# compute, and --resume refuses a new value for it.
RESUMABLE = ("storage_path", "mlflow_uri", "address", "max_failures", "max_concurrent", "verbose", "data_dir",
             "download", "wait_for_nodes", "keep_checkpoints", "resume", "name")
# What a search writes into its experiment folder besides Ray Tune's own state.
OWN_FILES = (ARGS_FILE, PARENT_FILE, CALIBRATION_FILE, PLAN_FILE, tracking.PENDING_FILE, storage.DriverLock.NAME, "ssl_prefixes", "comparison.csv",
             "comparison.md", "paired.csv", "accuracy_vs_cost.png")


def given_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not taking their defaults)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def load_args(args: argparse.Namespace, given: set[str] | None = None) -> argparse.Namespace:
    """The settings the experiment was started with, with the RESUMABLE flags of this command line applied;
    a UsageError for any other flag given with a new value. given: the flags written on the command line
    (None: those that differ from their defaults)."""
    folder = experiment_folder(args.storage_path, args.name)
    try:
        saved = json.loads(folder.read_text(ARGS_FILE))
    except FileNotFoundError:
        raise UsageError(f"no experiment {args.name!r} under {storage.absolute(args.storage_path)} to resume "
                         f"(looked for {ARGS_FILE}); check --name and --storage-path") from None
    # Flags added since the experiment started take their defaults (which its checkpoints recorded).
    defaults = vars(build_parser().parse_args([]))
    saved = {**defaults, **saved}
    if given is None:
        given = {k for k, v in vars(args).items() if v != defaults.get(k)}
    refused = {k: (saved.get(k), getattr(args, k)) for k in sorted(given)
               if k not in RESUMABLE and _differs(getattr(args, k), saved.get(k))}
    if refused:
        said = "; ".join(f"--{k.replace('_', '-')} {_show(new)} (it ran with {_show(old)})"
                         for k, (old, new) in refused.items())
        raise UsageError(f"--resume continues experiment {args.name!r} as it was started, and these flags would "
                         f"change what its trials compute: {said}. Leave them out to resume, or start a new "
                         f"experiment with another --name")
    saved.update({k: getattr(args, k) for k in given if k in RESUMABLE}, resume=True)
    return argparse.Namespace(**saved)


def _differs(a, b) -> bool:
    return (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b)


def _show(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def snapshotted(folder: storage.Folder) -> bool:
    """Whether Ray Tune saved the experiment's state at least once (so Tuner.restore can continue it)."""
    return any(n.startswith("experiment_state-") for n in folder.names())


def clear_tune_leftovers(folder: storage.Folder) -> None:
    """What a driver killed before Tune's first snapshot left (tuner.pkl, trial folders): nothing to resume."""
    for name in folder.names():
        if name not in OWN_FILES:
            folder.delete_entry(name)


# --- search pieces ----------------------------------------------------------------------------

def different_ssl_data(args: argparse.Namespace) -> bool:
    return bool(args.ssl_dataset and args.ssl_dataset not in args.dataset)


def metrics_and_modes(objective: str) -> tuple[str | list[str], str | list[str]]:
    if objective == "pareto":  # the paper's trade-off: accuracy up, deterministic compute down
        return ["val_acc", "compute_tflop"], ["max", "min"]
    return "val_acc", "max"


def make_searcher(args: argparse.Namespace, history: pd.DataFrame | None = None):
    """The experiment's searcher; with the history of an earlier search (--warm-start), Optuna starts from its
    finished configurations and their results, and nothing it ran is run again."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from tuning.searcher import ExperimentSearcher, split_space

    space = get_space(args.space, different_ssl_data=different_ssl_data(args))
    metric, mode = metrics_and_modes(args.objective)
    inner = None
    if args.search != "grid":
        searched, _ = split_space(space)
        inner = {}
        for i, f in enumerate(args.fraction):
            seed = args.search_seed + i
            sampler = (optuna.samplers.RandomSampler(seed=seed) if args.search == "random"
                       else optuna.samplers.TPESampler(seed=seed))
            points, rewards = history_points(history, f, searched, args.epoch_scale)
            inner[f] = OptunaSearch(space=searched, metric=metric, mode=mode, sampler=sampler,
                                    points_to_evaluate=points or None, evaluated_rewards=rewards or None)
    searcher = ExperimentSearcher(
        space=space, fractions=args.fraction, seeds=args.seeds,
        budgets=epoch_budgets(space, args.epoch_scale), epoch_scale=args.epoch_scale,
        num_samples=args.num_samples, inner=inner, metric=metric, mode=mode,
        baselines=not args.no_baselines, share_ssl=args.share_ssl,
        complete=args.scheduler == "asha", max_concurrent=args.max_concurrent)
    if history is not None:
        searcher.add_history(history)
    return searcher


def history_points(history: pd.DataFrame | None, fraction: float, searched: dict,
                   scale: float) -> tuple[list[dict], list[float]]:
    """An earlier search's finished configurations at `fraction` in the space's own terms (unscaled epochs),
    with the mean validation accuracy over their seeds, as its searcher was told."""
    if history is None:
        return [], []
    from search_spaces import EPOCHS, scale_epochs, values
    mix = history[(history["method"] == "mixtraining") & (history["fraction"] == fraction) & history["error"].isna()]
    raw = {scale_epochs(v, scale): v for v in values(searched[EPOCHS])} if EPOCHS in searched else {}
    points, rewards = [], []
    for _, runs in mix.groupby("group"):
        first = runs.iloc[0]
        point = {k: float(first[k]) for k in searched if k != EPOCHS}
        if EPOCHS in searched:
            point[EPOCHS] = raw[int(first["epochs"])]
        points.append(point)
        rewards.append(float(runs["val_acc"].mean()))
    return points, rewards


# Flags a search must share with the earlier one it warm-starts from: same data, model, budget and seeds.
WARM_START_KEYS = ("dataset", "ssl_dataset", "model", "space", "epoch_scale", "seeds", "batch_size", "ssl_lr",
                   "sl_lr", "mix_step", "mix_optim", "objective", "amp", "compile", "fused_adamw", "sdpa",
                   "deterministic")


def load_history(args: argparse.Namespace) -> pd.DataFrame | None:
    """The trials of the earlier search --warm-start names, as trial rows (with their config group and search)."""
    if not getattr(args, "warm_start", None):
        return None
    folder = experiment_folder(args.storage_path, args.warm_start)
    try:
        old = argparse.Namespace(**{**vars(build_parser().parse_args([])), **json.loads(folder.read_text(ARGS_FILE))})
    except FileNotFoundError:
        raise UsageError(f"--warm-start {args.warm_start}: no experiment of that name under "
                         f"{storage.absolute(args.storage_path)}") from None
    differ = [f"--{k.replace('_', '-')} {_show(getattr(args, k))} (it ran {_show(getattr(old, k))})"
              for k in WARM_START_KEYS if _differs(getattr(args, k), getattr(old, k))]
    if differ:
        raise UsageError(f"--warm-start {args.warm_start}: that search ran on other data, model or budget: "
                         f"{'; '.join(differ)}. Warm-start only from a search with the same settings")
    if not snapshotted(folder):
        raise UsageError(f"--warm-start {args.warm_start}: that search has no results yet")
    from ray.tune import ExperimentAnalysis
    base = base_config(old)
    rows = []
    for t in ExperimentAnalysis(folder.uri).trials:
        cfg, last = t.config or {}, t.last_result or {}
        rows.append(trial_row({**base, **cfg}, last, completed=bool(last.get("completed")),
                              error="failed" if t.status == "ERROR" else None, group=cfg.get("_group"),
                              search=args.warm_start))
    return pd.DataFrame(rows)


def make_scheduler(args: argparse.Namespace):
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.sample import Domain

    from tuning.scheduler import PhaseAwareASHA, PhaseAwarePBT
    if args.scheduler == "fifo":
        return FIFOScheduler()
    if args.scheduler == "pbt":
        space = get_space(args.space, different_ssl_data=different_ssl_data(args))
        mutations = {k: space[k] for k in PBT_MUTABLE if isinstance(space.get(k), Domain)}
        return PhaseAwarePBT(mutations, metric="val_acc", mode="max", perturbation_interval=args.grace_period)
    return PhaseAwareASHA(metric="val_acc", mode="max", grace_period=args.grace_period)


def check_resources(cpus: float, gpus: float, wait_s: float = 0.0) -> None:
    """Fail at once when nothing the cluster has or may get can hold one trial, instead of trials PENDING
    forever. A node type its autoscaler can add is enough: Tune's pending trials are the demand that
    starts it (a GPU cluster scales up from zero workers). When neither can, wait up to wait_s for nodes
    the user starts by hand (--wait-for-nodes)."""
    import ray

    from tuning import cluster
    address = ray.get_runtime_context().gcs_address
    types = cluster.launchable_node_types(address)
    alive = alive_resources()
    verdict, fitting = cluster.decide(cpus, gpus, alive, types, wait_s)
    if verdict == cluster.AUTOSCALE:
        log.info("waiting for a %s to join; the autoscaler starts it",
                 " or a ".join(t.describe() for t in fitting))
    elif verdict == cluster.WAIT:
        wait_for_nodes(cpus, gpus, wait_s, address, types)
    elif verdict == cluster.IMPOSSIBLE:
        raise UsageError(no_node_message(cpus, gpus, alive, types))


def alive_resources() -> list[dict]:
    """The resources of each alive node of the cluster this process joined."""
    import ray
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def wait_for_nodes(cpus: float, gpus: float, wait_s: float, address: str, types: list, poll_s: float = 1.0) -> None:
    """Poll the alive nodes until one can hold a trial (--wait-for-nodes): the search may be started before
    the worker nodes its user starts by hand. A UsageError when none has joined after wait_s."""
    import time

    from tuning.cluster import can_hold, resources_text
    log.info("waiting up to %g s for a node that can run a trial needing %g CPU and %g GPU; start one with: "
             "ray start --address=%s", wait_s, cpus, gpus, address)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        joined = [r for r in alive_resources() if can_hold(r, cpus, gpus)]
        if joined:
            log.info("a node with %s joined; starting the search", resources_text(joined[0]))
            return
    raise UsageError(no_node_message(cpus, gpus, alive_resources(), types, waited_s=wait_s))


def no_node_message(cpus: float, gpus: float, alive: list[dict], types: list, waited_s: float = 0.0) -> str:
    """Why no trial can run: what it needs, what the nodes (and the autoscaler's node types) have, and the fix."""
    from tuning.cluster import resources_text
    have = "; ".join(resources_text(r) for r in alive) or "no nodes"
    if types:
        have += "; the autoscaler can add: " + ", ".join(t.describe() for t in types)
    waited = f" and none that can joined within --wait-for-nodes {waited_s:g} s" if waited_s else ""
    no_gpu = gpus and not any(r.get("GPU") for r in [*alive, *(t.resources for t in types)])
    return (f"no node can run a trial needing {cpus:g} CPU and {gpus:g} GPU (nodes have: {have}){waited}. "
            f"Lower --cpus-per-trial / --gpus-per-trial" + (" (no GPU here: use --gpus-per-trial 0)" if no_gpu else ""))


def trial_rows(results, base: dict, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per trial (`tuning.summary.trial_row`) from Tune's results over the search's shared base, after
    the rows of the earlier search it warm-started from."""
    rows = pd.DataFrame([
        trial_row({**base, **(r.config or {})}, r.metrics or {},  # no config: failed before its first report
                  completed=bool((r.metrics or {}).get("completed", False)),
                  error=str(r.error) if r.error else None, group=(r.config or {}).get("_group"))
        for r in results])
    return rows if history is None else pd.concat([history, rows], ignore_index=True)


def summarize(df: pd.DataFrame, objective: str) -> str:
    table = comparison_table(df)
    lines = ["", "== Comparison (test accuracy mean ± std over the seeds every method completed; MixTraining "
                 "chosen on validation; speedups over SSL+SL) ==", format_table(table),
             "", "== Paired differences per seed (test accuracy) ==", format_paired(paired_stats(df))]
    for r in choose_best(df).to_dict("records"):
        lines.append(f"best MixTraining at fraction {r['fraction']:g}, {r['epochs']} epochs: alpha={r['alpha']:g} "
                     f"rho={r['rho']:g} lam={r['lam']:g} (mean val_acc {r['mean_val']:.4f}; "
                     f"{int(r['tried'])} configuration(s) tried)")
    if objective == "pareto":
        lines += ["", "== Pareto front (validation accuracy vs compute) ==",
                  pareto_front(df).to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    if df["ssl_epochs_reused"].sum():
        lines.append(f"SSL-prefix sharing: {int(df['ssl_epochs_reused'].sum())} SSL-only epochs reused instead of "
                     f"trained, {df['ssl_time_reused_s'].sum():.1f} s of training saved")
    stopped = int(((df["method"] == "mixtraining") & ~df["completed"] & df["error"].isna()).sum())
    failed = int(df["error"].notna().sum())
    completing = int(df["completion"].sum())
    lines.append(f"trials: {len(df)} ({stopped} stopped early by the scheduler, {failed} failed"
                 + (f", {completing} completing stopped seeds of the chosen configuration" if completing else "")
                 + ")")
    return "\n".join(lines)


# --- the stages of a search, in order -----------------------------------------------------------

@dataclass
class Outcome:
    """What a finished search produced; `main` prints it (`render`)."""
    args: argparse.Namespace  # the settings it ran with (the saved ones, on --resume)
    df: pd.DataFrame  # one row per trial
    table: pd.DataFrame  # the comparison
    folder: storage.Folder  # the experiment folder
    parent: str | None  # the MLflow parent run
    links: tuple[str, ...] = ()  # how to see it in MLflow's UI


def prepare(args: argparse.Namespace, folder: storage.Folder,
            given: set[str] | None = None) -> tuple[argparse.Namespace, bool]:
    """The settings to run and whether Tune restores a saved state.

    --resume takes the saved settings (RESUMABLE flags may change). An experiment whose driver died
    before Tune's first snapshot has no state to restore: it is started afresh, by --resume with its
    saved settings or by a plain start with the new ones. A new experiment must not exist yet.
    """
    if args.resume:
        args = load_args(args, given)
        if not args.no_mlflow and not folder.exists(PARENT_FILE):
            raise UsageError(f"experiment {args.name!r} was tracked in MLflow, but {folder.path(PARENT_FILE)}, which "
                             f"names its parent run, is missing: restore it (it holds the id of the run named "
                             f"{args.name!r} in experiment {args.experiment!r}) to continue the same runs")
    elif snapshotted(folder):
        raise UsageError(f"experiment {args.name!r} already exists under {storage.absolute(args.storage_path)}: "
                         f"pass --resume to continue it, or another --name")
    else:
        args = argparse.Namespace(**vars(args))
        if not args.no_mlflow:
            args.mlflow_uri = tracking.resolve_uri(args.mlflow_uri)
        if folder.exists(PARENT_FILE) and not args.no_mlflow:  # the parent of an attempt that never got going
            tracking.end_run(args.mlflow_uri, folder.read_text(PARENT_FILE).strip(), "KILLED")
            folder.delete(PARENT_FILE)
    restore = args.resume and snapshotted(folder)
    if not restore and folder.exists(ARGS_FILE):
        log.info("experiment %s stopped before its first snapshot: starting it afresh", folder.uri)
        clear_tune_leftovers(folder)
    folder.write_text(ARGS_FILE, json.dumps(vars(args), indent=1))
    return args, restore


def preload_datasets(args: argparse.Namespace) -> dict:
    """Each dataset read (or downloaded) once, here, before any Ray process starts, so missing data fails
    at once. Trials get them through Ray's object store: one copy per node, mapped by every trial process
    without a copy, a decode or access to data_dir."""
    loaded = {}
    for d in dict.fromkeys([*args.dataset, *([args.ssl_dataset] if args.ssl_dataset else [])]):
        log.info("loading %s", d)
        loaded[d] = load_dataset(d, args.data_dir, args.download)
    return loaded


def dataset_digests(loaded: dict) -> dict[str, dict]:
    """What identifies each dataset's images in MLflow's dataset inputs: digests of its train and test images."""
    import hashlib
    digest = lambda t: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]  # noqa: E731
    return {name: {"train": digest(s.train_images), "test": digest(s.test_images), "n_train": len(s.train_labels),
                   "n_test": len(s.test_labels), "shape": "x".join(map(str, s.train_images.shape[1:]))}
            for name, s in loaded.items()}


def base_config(args: argparse.Namespace) -> dict:
    """The config every trial shares, and the bookkeeping keys ('_'-prefixed) its Trainable reads."""
    base = {**MixConfig(**common_config(args)).to_dict(), "_threads": max(1, int(args.cpus_per_trial)),
            "_gpu_share": args.gpus_per_trial, "_epoch_scale": args.epoch_scale}
    base["data_dir"] = os.path.abspath(base["data_dir"])  # trials run in other working folders
    if args.scheduler == "pbt":
        base["_pbt"] = True  # checkpoints may then come from a population member with another alpha / lam
    if getattr(args, "system_metrics", False):
        base["_system_metrics"] = True
    if args.share_ssl:  # under the storage path, so every node of a cluster sees it
        base["_prefix_store"] = experiment_folder(args.storage_path, args.name).uri + "/ssl_prefixes"
        base["_prefix_max_bytes"] = int(args.prefix_store_gb * 2**30)
        if getattr(args, "warm_start", None):  # read (never written): the earlier search's prefixes
            base["_prefix_also"] = [experiment_folder(args.storage_path, args.warm_start).uri + "/ssl_prefixes"]
    return base


def start_ray(args: argparse.Namespace) -> None:
    import ray
    if ray.is_initialized():
        return
    if not args.address and os.path.exists(os.path.join(REPO, "pyproject.toml")):
        # Trial processes of a local instance inherit this environment: let them import this
        # checkout's packages even where it is not pip-installed, as this process can.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    # "local" always starts a fresh instance; None would join any cluster left running on this machine.
    ray.init(address=args.address or "local", include_dashboard=False, log_to_driver=args.verbose > 1,
             configure_logging=True, logging_level=logging.WARNING)


def warn_paper_setting_on_cpu(base: dict, gpus_per_trial: float) -> None:
    from tuning.progress import paper_setting_on_cpu_warning
    if warning := paper_setting_on_cpu_warning(model_name(MixConfig.from_trial(base)), gpus_per_trial):
        print(warning, file=sys.stderr)


def calibrate_costs(args: argparse.Namespace, base: dict, loaded: dict, folder: storage.Folder) -> dict[str, float]:
    """Seconds per image of each step kind on one trial's resources with nothing else running, measured once
    per experiment (a resume reuses it): what time speedups are computed from (trainable.cost)."""
    import ray

    from trainable.tune_trainable import measure_step_seconds
    if folder.exists(CALIBRATION_FILE):
        return json.loads(folder.read_text(CALIBRATION_FILE))
    log.info("measuring the cost of each step kind alone, on one trial's resources")
    task = ray.remote(num_cpus=args.cpus_per_trial, num_gpus=args.gpus_per_trial, max_retries=0)(measure_step_seconds)
    try:
        seconds = ray.get(task.remote(base, loaded))
    except ray.exceptions.RayError as e:  # the trials will meet the same problem and say so one by one
        log.warning("could not measure the step costs (%s); the table will have no time column",
                    str(e).strip().splitlines()[-1])
        return {}
    folder.write_text(CALIBRATION_FILE, json.dumps(seconds, indent=1))
    log.info("seconds per image alone: %s", ", ".join(f"{k} {v:.3g}" for k, v in seconds.items()))
    return seconds


def start_tracking(args: argparse.Namespace, folder: storage.Folder) -> str | None:
    """The MLflow parent run: on --resume the one the experiment started, else a new one."""
    if args.no_mlflow:
        return None
    try:
        if args.resume:
            parent = folder.read_text(PARENT_FILE).strip()
            tracking.client(args.mlflow_uri).update_run(parent, status="RUNNING")
            return parent
        parent = tracking.start_parent(args.mlflow_uri, args.experiment, args.name,
                                       {k: v for k, v in vars(args).items() if v is not None})
    except Exception as e:  # noqa: BLE001 - MlflowException or a connection error, before anything ran
        raise UsageError(f"MLflow at {args.mlflow_uri} does not answer ({str(e).splitlines()[0][:200]}): start it, "
                         f"pass another --mlflow-uri, or --no-mlflow") from None
    folder.write_text(PARENT_FILE, parent)
    log.info("MLflow: experiment %r, parent run %s at %s", args.experiment, parent, args.mlflow_uri)
    return parent


def announce_cost(args: argparse.Namespace, searcher, loaded: dict, base: dict, folder: storage.Folder) -> float:
    """Print what the search will cost (trials, epochs, images, time on the slots there are); the planned
    epochs, which the progress output counts against (kept in the experiment folder for a resume)."""
    from tuning.progress import describe, estimate
    if searcher is None:
        return json.loads(folder.read_text(PLAN_FILE))["epochs"] if folder.exists(PLAN_FILE) else 0.0
    est = estimate(searcher, get_space(args.space, different_ssl_data=different_ssl_data(args)), loaded, base)
    capacity = slot_capacity(args)
    slots = min(args.max_concurrent or capacity, capacity)
    log.info(describe(est, base.get("_step_seconds") or {}, slots, args.scheduler == "asha"))
    folder.write_text(PLAN_FILE, json.dumps({"epochs": est.epochs, "trials": est.trials}))
    return est.epochs


def make_tuner(args: argparse.Namespace, base: dict, loaded: dict, parent: str | None, folder: storage.Folder,
               restore: bool, searcher=None, planned_epochs: float = 0.0):
    """A new Tuner, or the saved one continuing its unfinished and errored trials under this run's settings."""
    from ray import tune

    from trainable.tune_trainable import MixTrainable
    from tuning.checkpoints import PruneCheckpoints
    from tuning.progress import Progress
    from tuning.searcher import ExperimentSearch
    trainable = tune.with_resources(tune.with_parameters(MixTrainable, base=base, loaded=loaded),
                                    {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    callbacks = [] if parent is None else [
        tracking.MLflowTracking(args.mlflow_uri, args.experiment, parent, base, folder=folder.uri)]
    if not args.keep_checkpoints:  # after tracking, which reads a finished trial's reconstruction from it
        callbacks.append(PruneCheckpoints())
    if planned_epochs and args.verbose:
        callbacks.append(Progress(planned_epochs))
    failures = tune.FailureConfig(max_failures=args.max_failures)
    if restore:
        tuner = tune.Tuner.restore(folder.uri, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # The RESUMABLE settings of this run replace the saved ones (Tuner.restore has no arguments for them).
        internal = tuner._local_tuner
        run_config = internal.get_run_config()
        run_config.callbacks, run_config.failure_config, run_config.verbose = callbacks, failures, args.verbose
        internal._tune_config.search_alg.resume_with(storage.absolute(args.storage_path), args.name,
                                                     args.max_failures, args.max_concurrent)
        return tuner
    log.info("experiment %s: %d trials (%s baselines), epoch budgets %s", folder.uri, searcher.total_trials,
             "no" if args.no_baselines else "with", epoch_budgets(get_space(args.space), args.epoch_scale))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(  # concurrency: the searcher's own limit, which a resume may change
            search_alg=ExperimentSearch(searcher), scheduler=make_scheduler(args),
            num_samples=searcher.max_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name=args.name, storage_path=storage.absolute(args.storage_path), verbose=args.verbose,
            callbacks=callbacks, failure_config=failures,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=args.checkpoint_every, checkpoint_at_end=True,
                # Two: a driver killed after a trial's newest checkpoint replaced the older one but before the
                # experiment snapshot that names the newest leaves a snapshot naming the older (Tune forces a
                # snapshot once a trial has checkpointed num_to_keep times). PBT exploits others' checkpoints.
                num_to_keep=4 if args.scheduler == "pbt" else 2)))


PENDING_ENV = "TUNE_MAX_PENDING_TRIALS_PG"


def slot_capacity(args: argparse.Namespace) -> int:
    """Trials that the alive nodes and the nodes the autoscaler may add can run at once (at least 1)."""
    import ray

    from tuning import cluster
    from tuning.progress import slots_available, trials_per_node
    cpus, gpus = args.cpus_per_trial, args.gpus_per_trial
    launchable = sum(min(t.max_workers, 1000) * trials_per_node(t.resources, cpus, gpus)
                     for t in cluster.launchable_node_types(ray.get_runtime_context().gcs_address))
    return max(1, slots_available(cpus, gpus) + int(launchable))


def pending_trials(args: argparse.Namespace) -> int:
    """How many trials Ray Tune may keep waiting for resources at once.

    For a search algorithm of its own kind Tune allows one (`_get_max_pending_trials`): slots freed
    together are then filled one after another, each waiting for the trial before it to get its actor,
    and an autoscaler is asked for one worker at a time. Here: --max-concurrent, else `slot_capacity`.
    """
    return args.max_concurrent or slot_capacity(args)


def fit(tuner, parent: str | None, mlflow_uri: str | None, pending: int = 1):
    """Tune's results; KeyboardInterrupt when the search was interrupted (its parent run then KILLED).
    pending: trials Tune may keep waiting for resources (`pending_trials`), unless the user set it."""
    user_set = PENDING_ENV in os.environ
    if not user_set:
        os.environ[PENDING_ENV] = str(pending)  # read when tuner.fit() builds Tune's controller
    try:
        results = tuner.fit()
        # On Ctrl-C Tune saves its state and returns; trials neither done nor failed mean that.
        if any(r.error is None and not (r.metrics or {}).get("done") for r in results):
            raise KeyboardInterrupt
        return results
    except BaseException:
        if parent:
            tracking.end_run(mlflow_uri, parent, "KILLED")  # a warning, not a new error, if MLflow is away
        raise
    finally:
        if not user_set:
            os.environ.pop(PENDING_ENV, None)


def finish(args: argparse.Namespace, results, base: dict, parent: str | None, folder: storage.Folder,
           history: pd.DataFrame | None = None) -> Outcome:
    """The comparison and Fig. 1 written to the experiment folder (whatever its scheme) and to the parent run;
    then the checkpoints nothing needs any more removed."""
    from tuning.checkpoints import prune_all_but
    from tuning.plots import report_files
    df = trial_rows(results, base, history)
    table = comparison_table(df)
    files = report_files(df, table)
    if not table.empty:
        for name, data in files.items():
            folder.write_bytes(name, data)
    best = best_checkpoint(results, df)
    if parent:
        tracking.finish_parent(args.mlflow_uri, parent, df, files, best, base.get("_step_seconds"), folder=folder.uri,
                               register_model=getattr(args, "register_model", None))
    if not args.keep_checkpoints:
        log.info("removed %d checkpoint(s) of finished trials", prune_all_but(results, best))
    return Outcome(args, df, table, folder, parent, tuple(mlflow_links(args.mlflow_uri, parent)))


def mlflow_links(uri: str | None, parent: str | None) -> list[str]:
    if not parent:
        return []
    try:
        return tracking.ui_links(uri, parent)
    except Exception as e:  # noqa: BLE001 - MLflow away at the very end: the runs are there, the link not
        log.warning("could not look up the MLflow experiment for its link: %s", e)
        return []


def run(args: argparse.Namespace, given: set[str] | None = None) -> Outcome:
    """Run (or resume) the search. given: the flags written on the command line (see `load_args`)."""
    folder = experiment_folder(args.storage_path, args.name)
    if args.resume and not folder.exists(ARGS_FILE):
        load_args(args, given)  # raises the "no experiment" error
    try:
        lock = storage.DriverLock(folder).acquire()
    except storage.LockHeld as e:
        raise UsageError(f"experiment {args.name!r} is being run by another driver ({e}); wait for it to end or "
                         f"stop it (the lock of a killed driver lapses within "
                         f"{storage.DriverLock.STALE_S:.0f} s)") from None
    try:
        args, restore = prepare(args, folder, given)
        history = load_history(args)  # an earlier search to build on: refused before anything starts
        loaded = preload_datasets(args)
        base = base_config(args)
        if not args.no_mlflow:
            base["_dataset_digests"] = dataset_digests(loaded)
        start_ray(args)
        check_resources(args.cpus_per_trial, args.gpus_per_trial, args.wait_for_nodes)
        warn_paper_setting_on_cpu(base, args.gpus_per_trial)
        base["_step_seconds"] = calibrate_costs(args, base, loaded, folder)
        searcher = None if restore else make_searcher(args, history)
        planned = announce_cost(args, searcher, loaded, base, folder)
        parent = start_tracking(args, folder)
        tuner = make_tuner(args, base, loaded, parent, folder, restore, searcher, planned)
        results = fit(tuner, parent, args.mlflow_uri, pending_trials(args))
        return finish(args, results, base, parent, folder, history)
    finally:
        lock.release()


def best_checkpoint(results, df: pd.DataFrame):
    """The final checkpoint of the chosen MixTraining configuration's best seed (on validation) among this
    search's trials (a --warm-start search's earlier trials have their checkpoints in the earlier search)."""
    best = choose_best(df)
    if best.empty:
        return None
    b = best.loc[best["mean_val"].idxmax()]
    checkpoints = {(r.metrics or {}).get("trial_id"): r.checkpoint for r in results}
    runs = df[(df["method"] == "mixtraining") & df["completed"] & (df[CONFIG_KEYS] == b[CONFIG_KEYS]).all(axis=1)
              & (df["fraction"] == b["fraction"]) & (df["epochs"] == b["epochs"]) & df["trial_id"].isin(checkpoints)]
    return None if runs.empty else checkpoints[runs.loc[runs["val_acc"].idxmax(), "trial_id"]]


# --- the command line ---------------------------------------------------------------------------

def render(outcome: Outcome) -> str:
    lines = [summarize(outcome.df, outcome.args.objective)]
    if not outcome.table.empty:
        lines.append(f"table saved to {outcome.folder.uri}/comparison.{{csv,md}}")
    if outcome.parent:
        lines.append(f"MLflow: parent run {outcome.parent} in experiment {outcome.args.experiment!r} "
                     f"({outcome.args.mlflow_uri}); to see it:")
        lines += [f"  {link}" for link in outcome.links]
    return "\n".join(lines)


def configure_environment() -> None:
    # Checkpoints every epoch with num_to_keep force experiment snapshots; on local storage they are cheap.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow would print a "View run" link for every trial run it ends; the summary names the parent run.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def main(argv: list[str] | None = None) -> int:
    configure_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args, parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.name:
        args.name = f"{args.space}-{'+'.join(args.dataset)}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    try:
        outcome = run(args, given_flags(argv))
    except (UsageError, MissingDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python tuning/search.py --resume --name {args.name}"
              + (f" --storage-path {args.storage_path}" if args.storage_path != DEFAULT_STORAGE else ""),
              file=sys.stderr)
        return 130
    print(render(outcome))
    df = outcome.df
    if len(df) and df["error"].notna().all():
        print(f"error: all {len(df)} trials failed; Ray printed each trial's error and its error file above "
              f"(more with --verbose 2)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
