"""MLflow tracking: one parent run per search, one child run per trial.

`MLflowTracking` is a Ray Tune callback on the driver (only the driver writes, so a sqlite
store works). Unlike Ray's `MLflowLoggerCallback`, which forgets its trial -> run map on
restore and opens duplicate runs, it keeps that map in the experiment state and also finds a
trial's run by its `trial_id` tag, so `--resume` continues the same child runs.
"""
from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from ray import tune

from trainable.config import MixConfig, plan
from trainable.schedule import PHASES

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "mixtraining"
# Per-epoch metrics logged with step = epoch; NaN (no classifier yet) is skipped.
EPOCH_METRICS = ("loss_ssl", "loss_sl", "val_acc", "lr", "epoch_time_s", "train_time_s", "calibrated_time_s",
                 "compute_tflop", "images_ssl", "images_mix", "images_sl", "images_per_s", "sl_epochs",
                 "ssl_epochs_reused", "ssl_time_reused_s", "alpha", "lam")


def resolve_uri(uri: str | None) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else ./mlflow.db made absolute (trial actors change folder)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def client(uri: str):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)


def experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp else c.create_experiment(name)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def start_parent(uri: str, experiment: str, name: str, params: dict[str, Any]) -> str:
    c = client(uri)
    tags = {"mixtune.search": name}
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    run = c.create_run(experiment_id(c, experiment), run_name=name, tags=tags)
    from mlflow.entities import Param
    c.log_batch(run.info.run_id, params=[Param(k, _param_str(v)) for k, v in sorted(params.items())])
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str) -> None:
    """End a run if it still exists (a search started afresh ends its first attempt's parent)."""
    try:
        client(uri).set_terminated(run_id, status=status)
    except Exception as e:  # noqa: BLE001 - MlflowException or a connection error: nothing to end
        log.warning("could not end MLflow run %s: %s", run_id, e)


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """The resolved engine config plus e_mix and the phase plan."""
    cfg = MixConfig.from_trial(config)
    p = plan(cfg)
    out = {k: _param_str(v) for k, v in cfg.to_dict().items()}
    out.update(e_mix=str(p.mix), plan_ssl_epochs=str(p.ssl), plan_mix_epochs=str(p.mix), plan_sl_epochs=str(p.sl),
               epoch_scale=str(config.get("_epoch_scale", 1.0)))
    return out


def _param_str(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


class MLflowTracking(tune.Callback):
    def __init__(self, uri: str, experiment: str, parent_run_id: str, base: dict[str, Any]):
        self.uri, self.experiment, self.parent, self.base = uri, experiment, parent_run_id, base
        self.runs: dict[str, str] = {}  # trial id -> child run id
        self._client = None
        self._exp_id = None

    # --- picklable: Tune stores the callback in tuner.pkl and its state in every snapshot ---
    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_exp_id": None}

    def get_state(self) -> dict:
        return {"runs": dict(self.runs)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))  # runs on restore, before setup(): never cleared there

    def setup(self, **info) -> None:
        self._client = client(self.uri)
        self._exp_id = experiment_id(self._client, self.experiment)

    @property
    def c(self):
        if self._client is None:
            self.setup()
        return self._client

    def _run_for(self, trial) -> str:
        tid = trial.trial_id
        if tid in self.runs:
            return self.runs[tid]
        # The experiment snapshot can lag a crash: look the run up by its tags before creating one.
        found = self.c.search_runs([self._exp_id], filter_string=(
            f"tags.trial_id = '{tid}' and tags.`mlflow.parentRunId` = '{self.parent}'"))
        if found:
            self.runs[tid] = found[0].info.run_id
            return self.runs[tid]
        cfg = trial.config
        tags = {"mlflow.parentRunId": self.parent, "trial_id": tid, "method": cfg["method"],
                "seed": str(cfg["seed"]), "datasets": _param_str(self.base["datasets"]),
                "fraction": str(cfg["fraction"]),
                "trial_name": str(trial)}
        if cfg.get("_group"):
            tags["config_group"] = str(cfg["_group"])
        if cfg.get("_completion"):
            tags["completion"] = "true"  # completes a seed the scheduler had stopped
        run = self.c.create_run(self._exp_id, run_name=f"{cfg['method']}-{tid}", tags=tags)
        from mlflow.entities import Param
        self.c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in trial_params({**self.base, **cfg}).items()])
        self.runs[tid] = run.info.run_id
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        if self.c.get_run(run_id).info.status != "RUNNING":  # a resumed or retried trial continues its run
            self.c.update_run(run_id, status="RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        from mlflow.entities import Metric
        run_id = self._run_for(trial)
        step, ts = int(result["epoch"]), int(time.time() * 1000)
        values = {k: result[k] for k in EPOCH_METRICS if k in result}
        values.update({k: v for k, v in result.items() if k.startswith(("val_acc/", "test_acc"))})
        values["phase"] = PHASES.index(result["phase"])  # 0 SSL-only, 1 mix, 2 SL-only
        metrics = [Metric(k, float(v), ts, step) for k, v in values.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)]
        self.c.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        completed = bool((trial.last_result or {}).get("completed"))
        self.c.set_tag(run_id, "completed", str(completed).lower())
        if not completed:
            self.c.set_tag(run_id, "stopped_early", "true")
        self._log_reconstruction(trial, run_id)
        self.c.set_terminated(run_id, status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_for(trial)
        error = "unknown error"
        if trial.error_file and os.path.exists(trial.error_file):
            error = Path(trial.error_file).read_text()
        self.c.set_tag(run_id, "error", error[-4000:])
        self.c.log_text(run_id, error, "error.txt")
        self.c.set_terminated(run_id, status="FAILED")

    def _log_reconstruction(self, trial, run_id: str) -> None:
        import torch

        from trainable.tune_trainable import RECONSTRUCTION_FILE
        from tuning.plots import reconstruction_figure
        ckpt = trial.checkpoint
        path = ckpt and os.path.join(ckpt.path, RECONSTRUCTION_FILE)
        if not path or not ckpt.filesystem.get_file_info(path).size:
            return
        with ckpt.filesystem.open_input_file(path) as f:
            data = torch.load(f, weights_only=True)
        fig = reconstruction_figure(data["original"], data["masked"], data["reconstructed"],
                                    title=f"{trial.config['method']} {trial.trial_id}")
        self.c.log_figure(run_id, fig, "reconstruction.png")
        import matplotlib.pyplot as plt
        plt.close(fig)


def finish_parent(uri: str, parent: str, df, table, best_checkpoint, step_seconds=None) -> None:
    """The parent's artifacts: the comparison table and paired statistics, Fig. 1, the best model."""
    import matplotlib.pyplot as plt

    from tuning.plots import accuracy_vs_cost_figure
    from tuning.summary import format_paired, format_table, paired_stats

    c = client(uri)
    drop_orphans(c, parent, set(df["trial_id"].dropna()))
    if "ssl_epochs_reused" in df:
        c.log_metric(parent, "ssl_epochs_reused", float(df["ssl_epochs_reused"].sum()))
        c.log_metric(parent, "ssl_time_saved_s", float(df["ssl_time_reused_s"].sum()))
    for kind, seconds in (step_seconds or {}).items():  # the calibration behind the time column
        c.log_metric(parent, f"seconds_per_image_{kind}", float(seconds))
    if not table.empty:
        paired = paired_stats(df)
        c.log_text(parent, table.to_csv(index=False), "comparison.csv")
        c.log_text(parent, paired.to_csv(index=False), "paired.csv")
        c.log_text(parent, format_table(table) + "\n\n" + format_paired(paired) + "\n", "comparison.md")
    fig = accuracy_vs_cost_figure(df)
    c.log_figure(parent, fig, "accuracy_vs_cost.png")
    plt.close(fig)
    if best_checkpoint is not None:
        log_best_model(c, parent, best_checkpoint)
    c.set_terminated(parent, status="FINISHED")


def log_best_model(c, parent: str, checkpoint) -> None:
    import torch

    from trainable.tune_trainable import CHECKPOINT_FILE
    with checkpoint.as_directory() as d:
        weights = os.path.join(d, CHECKPOINT_FILE)
        c.log_artifact(parent, weights, "best_model")
        state = torch.load(weights, weights_only=True, map_location="cpu")
        c.log_dict(parent, state["config"], "best_model/config.json")


def drop_orphans(c, parent: str, trial_ids: set[str]) -> None:
    """Delete child runs whose trial the experiment does not know.

    A driver killed after a trial started but before Tune's next experiment snapshot loses that
    trial: `--resume` runs its configuration again under a new trial id. The first run is then a
    duplicate of the new one: it is tagged, ended and deleted (`MlflowClient.restore_run` brings it back
    until `mlflow gc` purges it).
    """
    exp = c.get_run(parent).info.experiment_id
    for r in c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'"):
        if r.data.tags.get("trial_id") not in trial_ids:
            c.set_tag(r.info.run_id, "superseded", "trial lost with the driver before it was saved; rerun")
            c.set_terminated(r.info.run_id, status="KILLED")
            c.delete_run(r.info.run_id)
            log.info("deleted MLflow run %s of a trial lost with the driver", r.info.run_id)
