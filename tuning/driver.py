"""One search, stage by stage: `run` reads as the list of what happens, in order.

    settings -> space -> data -> Ray -> resources -> step costs -> searcher -> cost estimate
      -> tracking -> Tuner -> fit -> results, report, best model -> checkpoints pruned

`tuning/search.py` (the command) parses and checks the flags and prints the `Outcome`; everything
about the experiment folder is `tuning.experiment`'s, about the cluster `tuning.cluster`'s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
from ray import tune

import search_spaces
from trainable import storage
from trainable.config import MixConfig, model_name
from trainable.datasets import load_dataset
from trainable.tune_trainable import MixTrainable, TrialSettings, measure_step_seconds
from tuning import cluster, experiment, ray_internals, tracking
from tuning.checkpoints import PruneCheckpoints, prune_all_but
from tuning.experiment import CALIBRATION_FILE, PARENT_FILE, PLAN_FILE, UsageError
from tuning.plots import report_files
from tuning.progress import Line, Progress, describe, estimate, paper_setting_on_cpu_warning
from tuning.redact import redact
from tuning.schedulers import SCHEDULERS
from tuning.searcher import GROUP
from tuning.searchers import make_searcher
from tuning.summary import choose_best, comparison_table, config_keys, same_config, trial_row

log = logging.getLogger("tuning.search")

REPO = str(Path(__file__).resolve().parent.parent)


@dataclass
class Outcome:
    """What a finished search produced; the command prints it."""
    args: argparse.Namespace  # the settings it ran with (the saved ones, on --resume)
    df: pd.DataFrame  # one row per trial
    table: pd.DataFrame  # the comparison
    folder: storage.Folder  # the experiment folder
    parent: str | None  # the MLflow parent run
    links: tuple[str, ...] = ()  # how to see it in MLflow's UI
    chosen: tuple[dict, ...] = ()  # per fraction and budget, the chosen configuration's config (experiment.CHOSEN_FILE)


class Interrupted(KeyboardInterrupt):
    """The search stopped before its end (Ctrl-C, --time-budget): `outcome` holds the runs that finished."""

    def __init__(self, results=None):
        super().__init__()
        self.results, self.outcome = results, None


def run(args: argparse.Namespace, given: set[str] | None = None) -> Outcome:
    """Run (or resume) the search. given: the flags written on the command line (see `experiment.load_args`)."""
    folder = experiment.folder_of(args.storage_path, args.name)
    if args.resume and not folder.exists(experiment.ARGS_FILE):
        experiment.load_args(args, given)  # raises the "no experiment" error
    with experiment.hold_lock(folder, args.name):
        args, restore = experiment.prepare(args, folder, given)
        space = load_space(args, folder)
        history = experiment.load_history(args)  # an earlier search to build on: refused before anything starts
        loaded = preload_datasets(args)
        base = experiment.base_config(args)
        start_ray(args)
        check_resources(args)
        warn_paper_setting_on_cpu(base, args.gpus_per_trial)
        step_seconds = calibrate_costs(args, base, loaded, folder)
        settings = experiment.trial_settings(args, step_seconds, None if args.no_mlflow else dataset_digests(loaded))
        scheduler = SCHEDULERS[args.scheduler]
        searcher = None if restore else make_searcher(args, space, history, scheduler.stops_early)
        planned = announce_cost(args, searcher, space, loaded, base, folder, step_seconds)
        parent = start_tracking(args, folder)
        tuner, tracker = make_tuner(args, space, base, loaded, settings, parent, folder, restore, searcher, planned)
        try:
            results = fit(tuner, parent, args.mlflow_uri, cluster_pending(args))
        except Interrupted as stop:  # the comparison of what finished, marked partial by the command
            if stop.results is not None:
                df = trial_rows(stop.results, base, settings.epoch_scale, search_spaces.table_keys(space), history)
                stop.outcome = Outcome(args, df, comparison_table(df), folder, parent)
            raise
        return finish(args, space, results, base, settings, parent, folder, history, tracker)


def load_space(args: argparse.Namespace, folder: storage.Folder | None = None) -> dict:
    return search_spaces.from_data(experiment.space_data(args, folder), experiment.different_ssl_data(args))


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
    def digest(t):
        return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]
    return {name: {"train": digest(s.train_images), "test": digest(s.test_images), "n_train": len(s.train_labels),
                   "n_test": len(s.test_labels), "shape": "x".join(map(str, s.train_images.shape[1:]))}
            for name, s in loaded.items()}


def start_ray(args: argparse.Namespace) -> None:
    if ray.is_initialized():
        return
    env = {}
    if not args.address and os.path.exists(os.path.join(REPO, "pyproject.toml")):
        # Trial processes of a local instance: let them import this checkout's packages even where it is not
        # pip-installed, as this process can.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    # "local" always starts a fresh instance; None would join any cluster left running on this machine.
    ray.init(address=args.address or "local", include_dashboard=False, log_to_driver=args.verbose > 1,
             configure_logging=True, logging_level=logging.WARNING,
             runtime_env={"env_vars": env} if env else None)


def check_resources(args: argparse.Namespace) -> None:
    try:
        cluster.check_resources(args.cpus_per_trial, args.gpus_per_trial, args.wait_for_nodes)
    except cluster.NoNode as e:
        raise UsageError(str(e)) from None


def cluster_pending(args: argparse.Namespace) -> int:
    """How many trials Ray Tune may keep waiting for resources at once: --max-concurrent, else every slot the
    alive nodes and the autoscaler's node types offer (`ray_internals.fit_with_pending`)."""
    return args.max_concurrent or cluster.slot_capacity(args.cpus_per_trial, args.gpus_per_trial)


def warn_paper_setting_on_cpu(base: dict, gpus_per_trial: float) -> None:
    if warning := paper_setting_on_cpu_warning(model_name(MixConfig.from_trial(base)), gpus_per_trial):
        log.warning(warning)


def calibrate_costs(args: argparse.Namespace, base: dict, loaded: dict, folder: storage.Folder) -> dict[str, float]:
    """Seconds per image of each step kind on one trial's resources with nothing else running, measured once
    per experiment (a resume reuses it): what time speedups are computed from (trainable.cost)."""
    if folder.exists(CALIBRATION_FILE):
        return json.loads(folder.read_text(CALIBRATION_FILE))
    log.info("measuring the cost of each step kind alone, on one trial's resources")
    task = ray.remote(num_cpus=args.cpus_per_trial, num_gpus=args.gpus_per_trial, max_retries=0)(measure_step_seconds)
    try:
        seconds = ray.get(task.remote(base, loaded, max(1, int(args.cpus_per_trial))))
    except ray.exceptions.RayError as e:  # the trials will meet the same problem and say so one by one
        log.warning("could not measure the step costs (%s); the table will have no time column",
                    str(e).strip().splitlines()[-1])
        return {}
    folder.write_text(CALIBRATION_FILE, json.dumps(seconds, indent=1))
    log.info("seconds per image alone: %s", ", ".join(f"{k} {v:.3g}" for k, v in seconds.items()))
    return seconds


def announce_cost(args, searcher, space: dict, loaded: dict, base: dict, folder: storage.Folder,
                  step_seconds: dict) -> float:
    """Say what the search will cost (trials, epochs, images, time on the slots there are); the planned
    epochs, which the progress line counts against (kept in the experiment folder for a resume)."""
    if searcher is None:
        return json.loads(folder.read_text(PLAN_FILE))["epochs"] if folder.exists(PLAN_FILE) else 0.0
    est = estimate(searcher, space, loaded, base)
    capacity = cluster.slot_capacity(args.cpus_per_trial, args.gpus_per_trial)
    slots = min(args.max_concurrent or capacity, capacity)
    log.info(describe(est, step_seconds, slots, SCHEDULERS[args.scheduler].stops_early))
    folder.write_text(PLAN_FILE, json.dumps({"epochs": est.epochs, "trials": est.trials}))
    return est.epochs


def start_tracking(args: argparse.Namespace, folder: storage.Folder) -> str | None:
    """The MLflow parent run: on --resume the one the experiment started, else a new one."""
    if args.no_mlflow:
        return None
    try:
        if args.resume:
            parent = folder.read_text(PARENT_FILE).strip()
            tracking.client(args.mlflow_uri).update_run(parent, status="RUNNING")
            return parent
        params = {k: v for k, v in experiment.saved_args(args).items() if v is not None}
        parent = tracking.start_parent(args.mlflow_uri, args.experiment, args.name, params)
    except Exception as e:  # noqa: BLE001 - MlflowException or a connection error, before anything ran
        raise UsageError(f"MLflow at {redact(args.mlflow_uri)} does not answer or lost the search's parent run "
                         f"({redact(str(e).splitlines()[0][:200])}): start it, pass another --mlflow-uri, or "
                         f"--no-mlflow (with --resume too)") from None
    folder.write_text(PARENT_FILE, parent)
    log.info("MLflow: experiment %r, parent run %s at %s", args.experiment, parent, redact(args.mlflow_uri))
    return parent


def make_tuner(args, space: dict, base: dict, loaded: dict, settings: TrialSettings, parent: str | None,
               folder: storage.Folder, restore: bool, searcher=None, planned_epochs: float = 0.0):
    """A new Tuner, or the saved one continuing its unfinished and errored trials under this run's settings;
    and the tracking callback (None without MLflow)."""
    trainable = tune.with_resources(tune.with_parameters(MixTrainable, base=base, loaded=loaded, settings=settings),
                                    {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    tracker = None if parent is None else tracking.MLflowTracking(args.mlflow_uri, args.experiment, parent, base,
                                                                  settings, folder=folder.uri)
    callbacks = [] if tracker is None else [tracker]
    if not args.keep_checkpoints:  # after tracking, which reads a finished trial's reconstruction from it
        callbacks.append(PruneCheckpoints())
    callbacks.append(Progress(planned_epochs, Line()))
    failures = tune.FailureConfig(max_failures=args.max_failures)
    ray_verbose = min(args.verbose, 1) * 2  # Ray's trial tables and results only when asked
    if restore:
        ray_internals.tolerate_deleted_checkpoints()  # a saved state may name a checkpoint deleted after it
        tuner = tune.Tuner.restore(folder.uri, trainable=trainable, resume_unfinished=True, resume_errored=True)
        ray_internals.override_restored_run(tuner, callbacks, failures, ray_verbose, args.time_budget)
        ray_internals.restored_search_alg(tuner).resume_with(storage.absolute(args.storage_path), args.name,
                                                             args.max_failures, args.max_concurrent)
        return tuner, tracker
    log.info("experiment %s: %d trials (%s baselines), epoch budgets %s", folder.uri, searcher.total_trials,
             "no" if args.no_baselines else "with", search_spaces.epoch_budgets(space, args.epoch_scale))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(  # concurrency: the searcher's own limit, which a resume may change
            search_alg=ray_internals.ExperimentSearch(searcher),
            scheduler=SCHEDULERS[args.scheduler].for_search(space, args.grace_period),
            num_samples=searcher.max_trials, reuse_actors=True, time_budget_s=args.time_budget),
        run_config=tune.RunConfig(
            name=args.name, storage_path=storage.absolute(args.storage_path), verbose=ray_verbose,
            callbacks=callbacks, failure_config=failures,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=args.checkpoint_every, checkpoint_at_end=True,
                # Two: a driver killed after a trial's newest checkpoint replaced the older one but before the
                # experiment snapshot that names the newest leaves a snapshot naming the older (Tune forces a
                # snapshot once a trial has checkpointed num_to_keep times). PBT exploits others' checkpoints.
                num_to_keep=4 if args.scheduler == "pbt" else 2))), tracker


def fit(tuner, parent: str | None, mlflow_uri: str | None, pending: int = 1):
    """Tune's results; KeyboardInterrupt when the search was interrupted (its parent run then KILLED)."""
    try:
        results = ray_internals.fit_with_pending(tuner, pending)
        # On Ctrl-C, or when --time-budget runs out, Tune saves its state and returns; trials neither done nor
        # failed mean that.
        if any(r.error is None and not (r.metrics or {}).get("done") for r in results):
            raise Interrupted(results)
        return results
    except BaseException:
        if parent:
            tracking.end_run(mlflow_uri, parent, "KILLED")  # a warning, not a new error, if MLflow is away
        raise


def finish(args, space: dict, results, base: dict, settings: TrialSettings, parent: str | None,
           folder: storage.Folder, history: pd.DataFrame | None = None, tracker=None) -> Outcome:
    """The comparison and Fig. 1 written to the experiment folder (whatever its scheme) and to the parent run;
    then the checkpoints nothing needs any more removed."""
    df = trial_rows(results, base, settings.epoch_scale, search_spaces.table_keys(space), history)
    table = comparison_table(df)
    files = report_files(df, table)
    if not table.empty:
        for name, data in files.items():
            folder.write_bytes(name, data)
    chosen = chosen_configurations(df, base, settings.epoch_scale)
    if chosen:
        folder.write_text(experiment.CHOSEN_FILE, json.dumps(chosen, indent=1))
    best = best_checkpoint(results, df)
    if parent:
        tracking.finish_parent(args.mlflow_uri, parent, df, files, best, settings.step_seconds, folder=folder.uri,
                               register_model=getattr(args, "register_model", None),
                               delivery=tracker.delivery if tracker else None)
    if not args.keep_checkpoints:
        log.info("removed %d checkpoint(s) of finished trials", prune_all_but(results, best))
    return Outcome(args, df, table, folder, parent, tuple(mlflow_links(args.mlflow_uri, parent)), tuple(chosen))


def chosen_configurations(df: pd.DataFrame, base: dict, epoch_scale: float) -> list[dict]:
    """Per comparison group the chosen MixTraining configuration as a full config (the search's shared fields and
    the configuration's), with the epoch scale it was tuned at: what `python -m trainable.train` trains."""
    keys = config_keys(df)
    out = []
    for r in choose_best(df).to_dict("records"):
        fields = {**base, "method": "mixtraining", "fraction": r["fraction"], "e_sl": int(r["epochs"]),
                  **{k: r[k] for k in keys if k in base}}
        fields["e_ssl"] = int(r.get("e_ssl", fields["e_sl"]))
        out.append({"config": {k: v.item() if hasattr(v, "item") else v for k, v in fields.items()},
                    "tuned_at_epoch_scale": epoch_scale, "mean_val_acc": float(r["mean_val"])})
    return out


def mlflow_links(uri: str | None, parent: str | None) -> list[str]:
    if not parent:
        return []
    try:
        return tracking.ui_links(uri, parent)
    except Exception as e:  # noqa: BLE001 - MLflow away at the very end: the runs are there, the link not
        log.warning("could not look up the MLflow experiment for its link: %s", redact(str(e)))
        return []


def trial_rows(results, base: dict, epoch_scale: float, keys: list[str] | None = None,
               history: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per trial (`tuning.summary.trial_row`) from Tune's results over the search's shared base, after
    the rows of the earlier search it warm-started from; its configurations told apart by `keys`
    (`search_spaces.table_keys`; None: whatever varies)."""
    rows = pd.DataFrame([
        trial_row({**base, **(r.config or {})}, r.metrics or {}, epoch_scale=epoch_scale,  # no config: failed early
                  completed=bool((r.metrics or {}).get("completed", False)),
                  error=str(r.error) if r.error else None, group=(r.config or {}).get(GROUP))
        for r in results])
    df = rows if history is None else pd.concat([history, rows], ignore_index=True)
    if keys is not None:
        df.attrs["config_keys"] = list(keys)
    return df


def best_checkpoint(results, df: pd.DataFrame):
    """The final checkpoint of the chosen MixTraining configuration's best seed (on validation) among this
    search's trials (a --warm-start search's earlier trials have their checkpoints in the earlier search); None
    without validation accuracy to choose by (--val-frac 0)."""
    best = choose_best(df)
    if best["mean_val"].isna().all():  # nothing chosen, or chosen without validation
        return None
    b = best.loc[best["mean_val"].idxmax()]
    keys = [*config_keys(df), "fraction", "epochs"]
    checkpoints = {(r.metrics or {}).get("trial_id"): r.checkpoint for r in results}
    runs = df[(df["method"] == "mixtraining") & df["completed"] & same_config(df, b, keys)
              & df["trial_id"].isin(checkpoints) & df["val_acc"].notna()]
    return None if runs.empty else checkpoints[runs.loc[runs["val_acc"].idxmax(), "trial_id"]]

