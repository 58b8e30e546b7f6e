"""MLflow tracking: one parent run per search, one child run per trial.

`MLflowTracking` is a Ray Tune callback on the driver (only the driver writes, so a sqlite store works).
Unlike Ray's `MLflowLoggerCallback`, which forgets its trial -> run map on restore and opens duplicate
runs, it keeps that map in the experiment state and also finds a trial's run by its `trial_id` tag, so
`--resume` continues the same child runs.

A tracking server that stops answering costs no trial: the callback never calls MLflow itself. It queues
typed operations (`tuning.mlflow_calls`) in a `tuning.delivery.Delivery`, whose thread delivers them in
order when MLflow answers. While it is away, at each snapshot of the experiment and when the search ends,
the operations still waiting are journaled in PENDING_DIR of the experiment folder, which the next driver
of the experiment (`--resume`) delivers first; an operation that fails on its own (a moved checkpoint, a
bad value) is set aside in DEAD_LETTERS_DIR, with its error, and retried once by that next driver.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow.fs
import torch
from ray import tune

from trainable import storage
from trainable.config import MixConfig, plan
from trainable.schedule import PHASES
from trainable.tune_trainable import RECONSTRUCTION_FILE
from tuning.delivery import Delivery
from tuning.mlflow_calls import (OPS, DropOrphans, LogBestModel, LogInputs, LogMetrics, LogPng, LogText,
                                 MLflowCalls, OpenTrialRun, SetStatus, SetTag, client, experiment_id, is_outage)
from tuning.plots import png, reconstruction_figure
from tuning.redact import redact
from tuning.searcher import COMPLETION, CONFIRM, GROUP

if TYPE_CHECKING:
    from trainable.tune_trainable import TrialSettings

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "mixtraining"
# Per-epoch metrics logged with step = epoch; NaN (no classifier yet) is skipped.
EPOCH_METRICS = ("loss_ssl", "loss_sl", "val_acc", "lr", "epoch_time_s", "train_time_s", "calibrated_time_s",
                 "compute_tflop", "images_ssl", "images_mix", "images_sl", "images_per_s", "sl_epochs",
                 "ssl_epochs_reused", "ssl_time_reused_s", "alpha", "lam")
PENDING_DIR = "mlflow_pending"  # in the experiment folder: the journal of the calls MLflow has not taken yet
DEAD_LETTERS_DIR = "mlflow_dead_letters"  # ... and of those that failed on their own, with their errors
FILES = (PENDING_DIR, DEAD_LETTERS_DIR)  # the experiment folder's entries that tracking writes
HTTP_TIMEOUT_S = 30  # one request; MLflow's default, 120 s and 7 retries with backoff, is minutes per call
# One try of at most HTTP_TIMEOUT_S per request: the delivery queue retries by itself, and MLflow's own
# retries would only delay noticing an outage and ending a search. The command applies these to its
# process (os.environ.setdefault: a user's own settings win); MLflow reads them at every request.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(HTTP_TIMEOUT_S)}


def resolve_uri(uri: str | None) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else ./mlflow.db made absolute (trial actors change folder)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def ui_links(uri: str, parent: str) -> list[str]:
    """How a person opens the search: the command (for a store, not a server) and the URLs of its runs."""
    exp = client(uri).get_run(parent).info.experiment_id
    web = redact(uri.rstrip("/")) if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    lines = [] if uri.startswith(("http://", "https://")) else [f"mlflow ui --backend-store-uri {redact(uri)}"]
    return lines + [f"{web}/#/experiments/{exp}/runs?workflowType=machine_learning  (the search's runs)",
                    f"{web}/#/experiments/{exp}/runs/{parent}/artifacts?workflowType=machine_learning  "
                    "(its parent run: table, figures, best model)"]


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def start_parent(uri: str, experiment: str, name: str, params: dict[str, Any]) -> str:
    from mlflow.entities import Param  # MLflow takes about 2 s to import: only where it is called
    c = client(uri)
    tags = {"mixtune.search": name}
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    run = c.create_run(experiment_id(c, experiment, uri), run_name=name, tags=tags)
    c.log_batch(run.info.run_id, params=[Param(k, _param_str(v)) for k, v in sorted(params.items())])
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str) -> None:
    """End a run if it still exists (a search started afresh ends its first attempt's parent)."""
    try:
        client(uri).set_terminated(run_id, status=status)
    except Exception as e:  # noqa: BLE001 - MlflowException or a connection error: nothing to end
        log.warning("could not end MLflow run %s: %s", run_id, redact(str(e)))


def trial_params(config: dict[str, Any], epoch_scale: float = 1.0) -> dict[str, str]:
    """The resolved engine config plus e_mix, the phase plan and the epoch scale."""
    cfg = MixConfig.from_trial(config)
    p = plan(cfg)
    out = {k: _param_str(v) for k, v in cfg.to_dict().items()}
    out.update(e_mix=str(p.mix), plan_ssl_epochs=str(p.ssl), plan_mix_epochs=str(p.mix), plan_sl_epochs=str(p.sl),
               epoch_scale=str(epoch_scale))
    return out


def _param_str(v: Any) -> str:
    return redact(",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))


def epoch_metrics(result: dict) -> list[list]:
    """One result's metrics as [key, value, timestamp ms, step = epoch]; NaN (no classifier yet) is skipped."""
    step, ts = int(result["epoch"]), int(time.time() * 1000)
    values = {k: result[k] for k in EPOCH_METRICS if k in result}
    values.update({k: v for k, v in result.items() if k.startswith(("val_acc/", "test_acc", "sys_"))})
    values["phase"] = PHASES.index(result["phase"])  # 0 SSL-only, 1 mix, 2 SL-only
    return [[k, float(v), ts, step] for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)]


def dataset_inputs(config: dict, digests: dict | None) -> list[dict]:
    """What a trial trained, validated and was tested on, as MLflow dataset inputs (see LogInputs): digests
    of the images the driver loaded (TrialSettings.dataset_digests), told apart by split, fraction and seed."""
    cfg, digests = MixConfig.from_trial(config), digests or {}
    out = []
    for name in cfg.datasets:
        d = digests.get(name)
        if d is None:
            continue
        sub = lambda *parts: hashlib.sha256("/".join(map(str, (d["train"], *parts))).encode()).hexdigest()[:16]  # noqa: E731
        profile = {"train_images": d["n_train"], "test_images": d["n_test"], "image_shape": d["shape"]}
        out += [dict(name=name, digest=sub("train", cfg.fraction, cfg.seed, cfg.val_frac), context="training",
                     profile=profile, tags={"fraction": cfg.fraction, "seed": cfg.seed}),
                dict(name=name, digest=sub("val", cfg.val_frac), context="validation", profile=profile,
                     tags={"val_frac": cfg.val_frac}),
                dict(name=name, digest=d["test"], context="test", profile=profile, tags={})]
    if cfg.ssl_dataset and cfg.ssl_dataset not in cfg.datasets and cfg.ssl_dataset in digests:
        d = digests[cfg.ssl_dataset]
        out.append(dict(name=cfg.ssl_dataset, digest=d["train"], context="ssl", tags={},
                        profile={"train_images": d["n_train"], "image_shape": d["shape"]}))
    return out


def new_delivery(uri: str, runs: dict[str, str] | None = None) -> Delivery:
    """A queue of MLflow operations for `uri`; its journals' folder comes with `load`."""
    return Delivery(MLflowCalls(uri, runs), is_outage, OPS, name=f"MLflow at {uri}", journal=PENDING_DIR,
                    dead_letters=DEAD_LETTERS_DIR)


def _uri(fs: pyarrow.fs.FileSystem, path: str) -> str:
    """A path on a pyarrow filesystem as the URI that `storage.Folder` and Ray's `Checkpoint` resolve back."""
    return path if isinstance(fs, pyarrow.fs.LocalFileSystem) else f"{fs.type_name}://{path}"


class MLflowTracking(tune.Callback):
    """Tune's trial events as MLflow operations, queued in a `Delivery` (`.delivery`): no event waits for MLflow.

    base: the config fields every trial shares; settings: the search's TrialSettings (the epoch scale, the
    datasets' digests); folder: the experiment folder (a path or URI) for the journals; None: the one the
    trials' storage names.
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str, base: dict[str, Any],
                 settings: TrialSettings, folder: str | None = None):
        self.uri, self.experiment, self.parent, self.folder = uri, experiment, parent_run_id, folder
        self.base, self.settings = base, settings
        self.runs: dict[str, str] = {}  # trial id -> child run id, filled as the queue makes or finds the runs
        self.delivery: Delivery | None = None
        self._opened: set[str] = set()  # trials whose run this driver has asked for
        self._last_at = 0

    # --- picklable: Tune stores the callback in tuner.pkl and its state in every snapshot ---
    def __getstate__(self):
        # Tune pickles its callbacks into tuner.pkl (the bucket, on a cluster): no password there. A restore
        # replaces the callbacks with this run's (ray_internals.override_restored_run), so the URI is not lost.
        return {**self.__dict__, "uri": redact(self.uri), "delivery": None, "_opened": set()}

    def get_state(self) -> dict:
        """Called by each snapshot of the experiment (Tune's `save_to_dir`), before the snapshot is synced: the
        operations still waiting go to the journal first, so a driver killed after the snapshot loses none of
        them (a trial the snapshot lists finished is never run again, so nothing else would log its end)."""
        if self.delivery is not None:
            self.delivery.persist()
        # A trial whose run is not made yet is missing here: its OpenTrialRun waits in that journal.
        return {"runs": dict(self.runs)}  # a copy taken at once (under the GIL) while the queue adds runs

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))  # runs on restore, before setup(): never cleared there

    def setup(self, **info) -> None:
        """The queue, with an earlier driver's undelivered operations first. No MLflow call: it may be away."""
        self.delivery = new_delivery(self.uri, self.runs)
        if self.folder:
            self.delivery.load(storage.Folder(self.folder))

    def _queue(self, trial) -> Delivery:
        """The queue, with the experiment folder known and the trial's run asked for."""
        if self.delivery is None:
            self.setup()
        if self.delivery.folder is None:
            self.delivery.load(storage.Folder(_uri(trial.storage.storage_filesystem, trial.storage.experiment_fs_path)))
        if trial.trial_id not in self.runs and trial.trial_id not in self._opened:
            self._opened.add(trial.trial_id)
            config = {**self.base, **trial.config}
            self.delivery.put(OpenTrialRun(**self._on(trial), experiment=self.experiment, **self._run_spec(trial)))
            self.delivery.put(LogInputs(**self._on(trial), datasets=dataset_inputs(config,
                                                                                   self.settings.dataset_digests)))
        return self.delivery

    def _on(self, trial) -> dict[str, str]:
        return {"run": self.parent, "trial": trial.trial_id}

    def _run_spec(self, trial) -> dict:
        tid, cfg = trial.trial_id, trial.config
        tags = {"mlflow.parentRunId": self.parent, "trial_id": tid, "method": cfg["method"],
                "seed": str(cfg["seed"]), "datasets": _param_str(self.base["datasets"]),
                "fraction": str(cfg["fraction"]), "trial_name": str(trial)}
        if cfg.get(GROUP):
            tags["config_group"] = str(cfg[GROUP])
        if cfg.get(COMPLETION):
            tags["completion"] = "true"  # completes a seed the scheduler had stopped
        if cfg.get(CONFIRM):
            tags["confirm"] = str(cfg[CONFIRM])  # a run on the fresh confirmation seeds, and its role
        return dict(name=f"{cfg['method']}-{tid}", tags=tags,
                    params=trial_params({**self.base, **cfg}, self.settings.epoch_scale))

    def _status(self, trial, status: str) -> SetStatus:
        """A status change stamped with a strictly increasing time (see SetStatus)."""
        self._last_at = max(time.time_ns(), self._last_at + 1)
        return SetStatus(**self._on(trial), status=status, at=self._last_at)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._queue(trial).put(self._status(trial, "RUNNING"))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._queue(trial).put(LogMetrics(**self._on(trial), metrics=epoch_metrics(result)))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        queue, on = self._queue(trial), self._on(trial)
        completed = bool((trial.last_result or {}).get("completed"))
        queue.put(SetTag(**on, key="completed", value=str(completed).lower()))
        if not completed:
            queue.put(SetTag(**on, key="stopped_early", value="true"))
        if figure := reconstruction_png(trial):  # read now: the checkpoint may be pruned before delivery
            queue.put(LogPng(**on, file="reconstruction.png", png=figure))
        queue.put(self._status(trial, "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        queue, on = self._queue(trial), self._on(trial)
        error = "unknown error"
        if trial.error_file and os.path.exists(trial.error_file):
            error = redact(Path(trial.error_file).read_text())
        queue.put(SetTag(**on, key="error", value=error[-4000:]))
        queue.put(LogText(**on, file="error.txt", text=error))
        queue.put(self._status(trial, "FAILED"))

    def on_experiment_end(self, trials, **info) -> None:
        """The operations still waiting go to the journal now: a driver stopped from here on loses none."""
        if self.delivery is not None:
            self.delivery.persist()


def reconstruction_png(trial) -> str | None:
    """The reconstruction figure (Fig. 4) of a trial's last checkpoint as base64 PNG; None without a decoder."""
    ckpt = trial.checkpoint
    path = ckpt and os.path.join(ckpt.path, RECONSTRUCTION_FILE)
    if not path or not ckpt.filesystem.get_file_info(path).size:
        return None
    with ckpt.filesystem.open_input_file(path) as f:
        data = torch.load(f, weights_only=True)
    figure = reconstruction_figure(data["original"], data["masked"], data["reconstructed"],
                                   title=f"{trial.config['method']} {trial.trial_id}")
    return base64.b64encode(png(figure)).decode()


def finish_parent(uri: str, parent: str, df, files: dict[str, bytes], best_checkpoint, step_seconds=None,
                  folder: str | None = None, register_model: str | None = None, delivery: Delivery | None = None,
                  timeout: float | None = None) -> None:
    """The parent's artifacts (the search's report files, `tuning.plots.report_files`), the best model and its
    end, queued behind its trials' operations; then all delivered within `timeout` s (FLUSH_TIMEOUT_S of
    `tuning.delivery`; DOWN_WAIT_S once MLflow is known to be down), or left in the journal for --resume.
    delivery: the callback's queue (MLflowTracking.delivery); None: a new one, its journals in `folder`."""
    queue = delivery or new_delivery(uri)
    if queue.folder is None and folder:
        queue.load(storage.Folder(folder))
    for op in _parent_ops(parent, df, files, best_checkpoint, step_seconds, register_model):
        queue.put(op)
    queue.finish(timeout)
    _report(queue, uri)


def _parent_ops(parent: str, df, files: dict[str, bytes], best_checkpoint, step_seconds,
                register: str | None) -> Iterator:
    yield DropOrphans(run=parent, trial_ids=sorted(df["trial_id"].dropna()))
    metrics = {f"seconds_per_image_{kind}": float(s) for kind, s in (step_seconds or {}).items()}
    if "ssl_epochs_reused" in df:  # what SSL-prefix sharing saved; the calibration behind the time column
        metrics.update(ssl_epochs_reused=float(df["ssl_epochs_reused"].sum()),
                       ssl_time_saved_s=float(df["ssl_time_reused_s"].sum()))
    if metrics:
        ts = int(time.time() * 1000)
        yield LogMetrics(run=parent, metrics=[[k, v, ts, 0] for k, v in metrics.items()])
    for file, data in files.items():
        if file.endswith(".png"):
            yield LogPng(run=parent, file=file, png=base64.b64encode(data).decode())
        else:
            yield LogText(run=parent, file=file, text=data.decode())
    if best_checkpoint is not None:
        yield LogBestModel(run=parent, checkpoint=_uri(best_checkpoint.filesystem, best_checkpoint.path),
                           register=register)
    yield SetStatus(run=parent, status="FINISHED", at=time.time_ns())


def _report(queue: Delivery, uri: str) -> None:
    """What the end of the search left undone, and where it waits."""
    if queue.set_aside and queue.dead is not None:
        log.warning("%d MLflow call(s) failed on their own and were set aside, with their errors, in %s; --resume "
                    "of this experiment retries each once", queue.set_aside, redact(queue.dead.folder.uri))
    if not queue.waiting:
        return
    if queue.pending is None:
        log.error("MLflow at %s did not take %d tracking call(s) in time; with no experiment folder they are lost",
                  redact(uri), queue.waiting)
        return
    log.warning("MLflow at %s does not answer: %d tracking call(s) wait in %s; --resume of this experiment "
                "delivers them once it answers", redact(uri), queue.waiting, redact(queue.pending.folder.uri))
