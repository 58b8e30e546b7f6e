"""An experiment's folder and its rules: what a search saves there, how `--resume` and `--warm-start` read it.

The folder (`<storage path>/<name>`) holds Ray Tune's own state and trials, and the files listed in
`own_files`: the settings the search started with (`ARGS_FILE`, passwords redacted), its space as
data (`SPACE_FILE`, so `--resume` and `--warm-start` compare content, not a name), the MLflow parent
run, the step-cost calibration, the plan, the SSL-prefix store, the tracking journal, the driver lock
and the report. One driver at a time runs an experiment (`hold_lock`).

Trust: `--resume` and `--warm-start` load Ray Tune's pickled state from the folder, so only people
trusted to run code on the driver's machine may be able to write to the storage path.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os

import pandas as pd
from ray.tune import ExperimentAnalysis

import search_spaces
from trainable import storage
from trainable.cli import common_config
from trainable.config import MixConfig
from trainable.tune_trainable import TrialSettings
from tuning import flags, tracking
from tuning.plots import REPORT_ENTRIES
from tuning.redact import MASK, redact
from tuning.searcher import GROUP
from tuning.summary import trial_row

log = logging.getLogger(__name__)

ARGS_FILE = "mixtune_args.json"  # the search's settings, beside Ray's experiment state, for --resume
SPACE_FILE = "search_space.json"  # the space as data (file syntax), compared by --resume and --warm-start
PARENT_FILE = "mlflow_parent_run.txt"  # the MLflow parent run, so --resume continues it
CALIBRATION_FILE = "step_seconds.json"  # each step kind's cost measured alone at the start
PLAN_FILE = "plan.json"  # the planned trials and epochs, which the progress output counts against
PREFIX_DIR = "ssl_prefixes"  # the shared SSL-prefix store
CHOSEN_FILE = "chosen.json"  # the chosen configurations, as `python -m trainable.train` takes them


class UsageError(Exception):
    """A mistake on the command line or in the environment the user can fix; no traceback."""


def own_files() -> tuple[str, ...]:
    """What a search writes into its experiment folder besides Ray Tune's own state."""
    return (ARGS_FILE, SPACE_FILE, PARENT_FILE, CALIBRATION_FILE, PLAN_FILE, PREFIX_DIR, CHOSEN_FILE,
            storage.DriverLock.NAME, *tracking.FILES, *REPORT_ENTRIES)


def folder_of(storage_path: str, name: str) -> storage.Folder:
    """The experiment's folder: Ray's state and checkpoints, our settings, tables and figures."""
    return storage.Folder(storage.absolute(storage_path).rstrip("/") + "/" + name)


def snapshotted(folder: storage.Folder) -> bool:
    """Whether Ray Tune saved the experiment's state at least once (so Tuner.restore can continue it)."""
    return any(n.startswith("experiment_state-") for n in folder.names())


def clear_tune_leftovers(folder: storage.Folder) -> None:
    """What a driver killed before Tune's first snapshot left (tuner.pkl, trial folders): nothing to resume."""
    own = set(own_files())
    for name in folder.names():
        if name not in own:
            folder.delete_entry(name)


@contextlib.contextmanager
def hold_lock(folder: storage.Folder, name: str):
    """One driver per experiment, for the duration of the block."""
    try:
        lock = storage.DriverLock(folder, on_lost=storage.exit_on_lost).acquire()  # a successor owns it: stop
    except storage.LockHeld as e:
        raise UsageError(f"experiment {name!r} is being run by another driver ({e}); wait for it to end or stop it "
                         f"(the lock of a killed driver lapses within {storage.DriverLock.STALE_S:.0f} s)") from None
    try:
        yield lock
    finally:
        lock.release()


# --- settings: saved, resumed, compared ------------------------------------------------------------------

def space_data(args: argparse.Namespace, folder: storage.Folder | None = None) -> dict:
    """The experiment's space as data: what its folder saved, else what --space names."""
    if folder is not None and folder.exists(SPACE_FILE):
        return json.loads(folder.read_text(SPACE_FILE))
    return search_spaces.read(args.space)


def default_choices(args: argparse.Namespace, folder: storage.Folder | None = None) -> tuple[str, str]:
    """--search and --scheduler when not given: Optuna under ASHA, or for a space with nothing to search (the
    paper's protocol, table1) a grid of its one configuration, never stopped."""
    fixed = not search_spaces.searched(search_spaces.from_data(space_data(args, folder)))
    return ("grid", "fifo") if fixed else ("optuna", "asha")


def load_args(args: argparse.Namespace, given: set[str] | None = None) -> argparse.Namespace:
    """The settings the experiment was started with, with the RESUMABLE flags of this command line applied;
    a UsageError for any other flag given with a new value. given: the flags written on the command line
    (None: those that differ from their defaults)."""
    folder = folder_of(args.storage_path, args.name)
    try:
        saved = json.loads(folder.read_text(ARGS_FILE))
    except FileNotFoundError:
        raise UsageError(f"no experiment {args.name!r} under {storage.absolute(args.storage_path)} to resume "
                         f"(looked for {ARGS_FILE}); check --name and --storage-path") from None
    # Flags added since the experiment started take their defaults (which its checkpoints recorded).
    defaults = flags.defaults()
    saved = {**defaults, **saved}
    if given is None:
        given = {k for k, v in vars(args).items() if v != defaults.get(k)}
    refused = {k: (saved.get(k), getattr(args, k)) for k in sorted(given)
               if k not in flags.RESUMABLE and _changes(k, args, saved, folder)}
    if refused:
        said = "; ".join(f"{flags.flag(k)} {_show(new)} (it ran with {_show(old)})" for k, (old, new) in refused.items())
        raise UsageError(f"--resume continues experiment {args.name!r} as it was started, and these flags would "
                         f"change what its trials compute: {said}. Leave them out to resume, or start a new "
                         f"experiment with another --name")
    saved.update({k: getattr(args, k) for k in given if k in flags.RESUMABLE}, resume=True)
    if "mlflow_uri" not in given:
        saved["mlflow_uri"] = _unredacted(saved.get("mlflow_uri"), saved.get("no_mlflow"), args.name)
    return argparse.Namespace(**saved)


def _changes(key: str, args: argparse.Namespace, saved: dict, folder: storage.Folder) -> bool:
    if key == "space":  # the content counts, not the name or path it was read from
        return search_spaces.read(args.space) != space_data(argparse.Namespace(**saved), folder)
    return _differs(getattr(args, key), saved.get(key))


def _unredacted(saved_uri: str | None, no_mlflow: bool, name: str) -> str | None:
    """The tracking URI to resume with: the saved one, unless its password was redacted; then the environment's
    (MLFLOW_TRACKING_URI), which must be the same URI."""
    if no_mlflow or not saved_uri or MASK not in saved_uri:
        return saved_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and redact(env) == saved_uri:
        return env
    raise UsageError(f"experiment {name!r} is tracked at {saved_uri}, whose password is not stored: pass "
                     f"--mlflow-uri with it, or set MLFLOW_TRACKING_URI (or resume with --no-mlflow)")


def _differs(a, b) -> bool:
    return (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b)


def _show(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


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
                             f"{args.name!r} in experiment {args.experiment!r}) to continue the same runs, or "
                             f"resume with --no-mlflow")
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
    # Settings saved without the command's checks (by a library caller) take the command's defaults.
    search, scheduler = default_choices(args, folder)
    args.search, args.scheduler = args.search or search, args.scheduler or scheduler
    restore = args.resume and snapshotted(folder)
    if not restore and folder.exists(ARGS_FILE):
        log.info("experiment %s stopped before its first snapshot: starting it afresh", folder.uri)
        clear_tune_leftovers(folder)
    if not folder.exists(SPACE_FILE):
        folder.write_text(SPACE_FILE, json.dumps(space_data(args), indent=1))
    folder.write_text(ARGS_FILE, json.dumps(saved_args(args), indent=1))
    return args, restore


def saved_args(args: argparse.Namespace) -> dict:
    """The settings as the folder keeps them: every flag, passwords and tokens redacted."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in vars(args).items()}


# --- what every trial shares ---------------------------------------------------------------------------

def different_ssl_data(args: argparse.Namespace) -> bool:
    return bool(args.ssl_dataset and args.ssl_dataset not in args.dataset)


def base_config(args: argparse.Namespace) -> dict:
    """The config fields every trial of the search shares (a trial's own config holds what varies)."""
    base = MixConfig(**common_config(args)).to_dict()
    base["data_dir"] = os.path.abspath(base["data_dir"])  # trials run in other working folders
    return base


def trial_settings(args: argparse.Namespace, step_seconds: dict | None = None,
                   dataset_digests: dict | None = None) -> TrialSettings:
    """What the search tells every trial besides its config."""
    prefixes = None
    also: tuple[str, ...] = ()
    if args.share_ssl:  # under the storage path, so every node of a cluster sees it
        prefixes = folder_of(args.storage_path, args.name).uri + "/" + PREFIX_DIR
        if getattr(args, "warm_start", None):  # read (never written): the earlier search's prefixes
            also = (folder_of(args.storage_path, args.warm_start).uri + "/" + PREFIX_DIR,)
    return TrialSettings(threads=max(1, int(args.cpus_per_trial)), gpu_share=args.gpus_per_trial,
                         epoch_scale=args.epoch_scale, pbt=args.scheduler == "pbt",
                         system_metrics=bool(getattr(args, "system_metrics", False)), prefix_store=prefixes,
                         prefix_max_bytes=int(args.prefix_store_gb * 2**30), prefix_also=also,
                         step_seconds=step_seconds, dataset_digests=dataset_digests)


# --- --warm-start: an earlier search's results ------------------------------------------------------------

def load_history(args: argparse.Namespace) -> pd.DataFrame | None:
    """The trials of the earlier search --warm-start names, as trial rows (with their config group and search),
    after checking it ran with the same data, model, budget and seeds."""
    if not getattr(args, "warm_start", None):
        return None
    folder = folder_of(args.storage_path, args.warm_start)
    try:
        old = argparse.Namespace(**{**flags.defaults(), **json.loads(folder.read_text(ARGS_FILE))})
    except FileNotFoundError:
        raise UsageError(f"--warm-start {args.warm_start}: no experiment of that name under "
                         f"{storage.absolute(args.storage_path)}") from None
    differ = [f"{flags.flag(k)} {_show(getattr(args, k))} (it ran {_show(getattr(old, k))})"
              for k in flags.WARM_START if _warm_differs(k, args, old, folder)]
    if differ:
        raise UsageError(f"--warm-start {args.warm_start}: that search ran on other data, model or budget: "
                         f"{'; '.join(differ)}. Warm-start only from a search with the same settings")
    if not snapshotted(folder):
        raise UsageError(f"--warm-start {args.warm_start}: that search has no results yet")
    base = base_config(old)
    rows = []
    for t in ExperimentAnalysis(folder.uri).trials:
        cfg, last = t.config or {}, t.last_result or {}
        rows.append(trial_row({**base, **cfg}, last, completed=bool(last.get("completed")), epoch_scale=old.epoch_scale,
                              error="failed" if t.status == "ERROR" else None, group=cfg.get(GROUP),
                              search=args.warm_start))
    return pd.DataFrame(rows)


def _warm_differs(key: str, args: argparse.Namespace, old: argparse.Namespace, folder: storage.Folder) -> bool:
    if key == "space":
        return search_spaces.read(args.space) != space_data(old, folder)
    return _differs(getattr(args, key), getattr(old, key))
