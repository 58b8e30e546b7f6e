"""MLflow tracking: one parent run per search, one child run per trial.

`MLflowTracking` is a Ray Tune callback on the driver (only the driver writes, so a sqlite
store works). Unlike Ray's `MLflowLoggerCallback`, which forgets its trial -> run map on
restore and opens duplicate runs, it keeps that map in the experiment state and also finds a
trial's run by its `trial_id` tag, so `--resume` continues the same child runs.

A tracking server that stops answering costs no trial: the callback never calls MLflow itself. It
queues its calls in an `Outbox`, whose thread delivers them in order when the server answers; what
has not gone out when the search ends, or while the server is away, waits in PENDING_FILE of the
experiment folder, which the next driver of the experiment (`--resume`) delivers first.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune

from trainable import storage
from trainable.config import MixConfig, plan
from trainable.schedule import PHASES

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "mixtraining"
# Per-epoch metrics logged with step = epoch; NaN (no classifier yet) is skipped.
EPOCH_METRICS = ("loss_ssl", "loss_sl", "val_acc", "lr", "epoch_time_s", "train_time_s", "calibrated_time_s",
                 "compute_tflop", "images_ssl", "images_mix", "images_sl", "images_per_s", "sl_epochs",
                 "ssl_epochs_reused", "ssl_time_reused_s", "alpha", "lam")
# In the experiment folder: the calls MLflow has not taken yet, as JSON lines: first {"runs": {trial id: run id}}
# (the runs already made for trials named below), then one call a line (see `Outbox`).
PENDING_FILE = "mlflow_pending.jsonl"
RETRY_S = 2.0  # between deliveries while MLflow does not answer (a new call retries at once)
PERSIST_EVERY_S = 10.0  # while it does not answer, the waiting calls are written to PENDING_FILE this often at most
FLUSH_TIMEOUT_S = 600.0  # how long the end of a search waits for MLflow before leaving the calls in PENDING_FILE
HTTP_TIMEOUT_S = 30  # one request; MLflow's default, 120 s and 7 retries with backoff, is minutes per call


def resolve_uri(uri: str | None) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else ./mlflow.db made absolute (trial actors change folder)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def client(uri: str):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)


# MLflow 3 shows new experiments in its GenAI overview ("Traces 0"); this tag marks a model-training one.
# (MLflow 3.17's UI reads the kind from its own switch instead, which the links below set: ?workflowType=...)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a local sqlite store keeps its artifacts: `mlruns/` next to the database, as
    an absolute path (MLflow's default, `./mlruns`, lands in whatever folder each logging process runs
    in); for a server, its own choice (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return str(Path(os.path.abspath(uri[len("sqlite:///"):])).parent / "mlruns")


def experiment_id(c, name: str, uri: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name, artifact_location=artifact_location(uri), tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            c.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def ui_links(uri: str, parent: str) -> list[str]:
    """How a person opens the search: the command (for a store, not a server) and the URLs of its runs."""
    exp = client(uri).get_run(parent).info.experiment_id
    web = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    lines = [] if uri.startswith(("http://", "https://")) else [f"mlflow ui --backend-store-uri {uri}"]
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
    c = client(uri)
    tags = {"mixtune.search": name}
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    run = c.create_run(experiment_id(c, experiment, uri), run_name=name, tags=tags)
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


def epoch_metrics(result: dict) -> list[list]:
    """One result's metrics as [key, value, timestamp ms, step = epoch]; NaN (no classifier yet) is skipped."""
    step, ts = int(result["epoch"]), int(time.time() * 1000)
    values = {k: result[k] for k in EPOCH_METRICS if k in result}
    values.update({k: v for k, v in result.items() if k.startswith(("val_acc/", "test_acc", "sys_"))})
    values["phase"] = PHASES.index(result["phase"])  # 0 SSL-only, 1 mix, 2 SL-only
    return [[k, float(v), ts, step] for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)]


# --- delivery: calls queued in order, sent by a thread, kept in the experiment folder -------------

class RunMissing(LookupError):
    """A call for a trial whose run MLflow refused to create: nothing to deliver it to."""


def _set_running(c, run_id: str, call: dict) -> None:
    if c.get_run(run_id).info.status != "RUNNING":  # a resumed or retried trial continues its run
        c.update_run(run_id, status="RUNNING")


def _log_metrics(c, run_id: str, call: dict) -> None:
    from mlflow.entities import Metric
    c.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in call["metrics"]])


def _log_png(c, run_id: str, call: dict) -> None:
    """The PNG travels in the call (so PENDING_FILE holds it whole); MLflow takes artifacts from files."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, os.path.basename(call["file"]))
        Path(path).write_bytes(base64.b64decode(call["png"]))
        c.log_artifact(run_id, path, os.path.dirname(call["file"]) or None)


def _log_best_model(c, run_id: str, call: dict) -> None:
    from ray.tune import Checkpoint
    log_best_model(c, run_id, Checkpoint(call["checkpoint"]), call.get("register"), call["uri"])


def _log_inputs(c, run_id: str, call: dict) -> None:
    """The trial's datasets as MLflow dataset inputs (name, digest, context, sizes), for the UI's Dataset
    column and filters. Per-run facts (fraction, seed, sizes) go in the input tags: MLflow keeps one profile
    per (name, digest) and experiment."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    inputs = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type="code",
                                   source=json.dumps({"tags": {"loader": "trainable.datasets"}}),
                                   profile=json.dumps(d["profile"])),
                           tags=[InputTag("mlflow.data.context", d["context"])]
                           + [InputTag(k, str(v)) for k, v in d["tags"].items()])
              for d in call["datasets"]]
    c.log_inputs(run_id, datasets=inputs)


# What each queued call does, given a client and its run. Every one may be delivered twice (an answer lost
# in an outage, a file replayed after a crash) without harm: MLflow merges a metric logged again with the same
# timestamp, and tags, texts, artifacts and statuses are set to the same values again.
OPS = {
    "set_running": _set_running,
    "log_metrics": _log_metrics,
    "set_tag": lambda c, run_id, call: c.set_tag(run_id, call["key"], call["value"]),
    "log_text": lambda c, run_id, call: c.log_text(run_id, call["text"], call["file"]),
    "log_png": _log_png,
    "log_best_model": _log_best_model,
    "log_inputs": _log_inputs,
    "drop_orphans": lambda c, run_id, call: drop_orphans(c, run_id, set(call["trial_ids"])),
    "set_terminated": lambda c, run_id, call: c.set_terminated(run_id, status=call["status"]),
}


def _fail_fast_http() -> None:
    """One try of at most HTTP_TIMEOUT_S per request (unless the user set these): the outbox retries itself,
    and MLflow's own retries would only delay noticing an outage and ending a search. Process-wide: MLflow
    reads them at every request."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))


def _refused(error: Exception) -> bool:
    """Whether MLflow answered and said no (a 4xx but 429, "slow down"), so that retrying cannot help."""
    from mlflow.exceptions import MlflowException
    if isinstance(error, RunMissing):
        return True
    return isinstance(error, MlflowException) and 400 <= error.get_http_status_code() < 500 \
        and error.get_http_status_code() != 429


def _uri(fs: pyarrow.fs.FileSystem, path: str) -> str:
    """A path on a pyarrow filesystem as the URI that `storage.Folder` and Ray's `Checkpoint` resolve back."""
    return path if isinstance(fs, pyarrow.fs.LocalFileSystem) else f"{fs.type_name}://{path}"


def _png(fig) -> str:
    """A figure as base64 PNG: rendered when its event happens, a plain string in a queued call."""
    from tuning.plots import png
    return base64.b64encode(png(fig)).decode()


class Outbox:
    """MLflow calls kept in order and delivered by a background thread, so that a tracking server that stops
    answering never stops training: the calls wait and go out, oldest first, when it answers again.

    A call is a JSON-ready dict: {"op": name, "run": run id, ...} or {"op": name, "trial": trial id, ...}.
    A trial's run is created when its "open_trial_run" call is delivered (the server may be away when the
    trial starts); `runs` maps the trial to it then, and that trial's later calls go there. While the server
    is away, and when the experiment ends, the waiting calls are also written to PENDING_FILE in the
    experiment folder, which `load` puts first in a later driver's queue.
    """

    def __init__(self, uri: str, runs: dict[str, str] | None = None):
        _fail_fast_http()
        self.uri = uri
        self.folder: storage.Folder | None = None
        self.runs = {} if runs is None else runs  # trial id -> run id, shared with the callback's Tune state
        self._calls: deque[dict] = deque()
        self._cond = threading.Condition()  # guards _calls and _version; signals new calls and deliveries
        self._file_lock = threading.Lock()  # one writer of PENDING_FILE at a time
        self._version = self._synced_version = 0  # changes to _calls; the last one written to PENDING_FILE
        self._synced_at = 0.0
        self._on_disk = False  # PENDING_FILE may exist
        self._down_since: float | None = None  # when a delivery first failed in the current outage
        self._late = 0  # calls delivered since then
        self._client = None
        self._experiments: dict[str, str] = {}
        self._closing = False
        self._thread = threading.Thread(target=self._deliver_forever, name="mlflow-outbox", daemon=True)
        self._thread.start()

    def put(self, op: str, **args) -> None:
        """Queue a call; never waits for MLflow."""
        with self._cond:
            self._calls.append({"op": op, **args})
            self._version += 1
            self._cond.notify_all()  # a delivery thread waiting out an outage retries now

    def load(self, folder: storage.Folder) -> None:
        """Use `folder` for PENDING_FILE; the calls an earlier driver left there go before any of this one's.
        Its runs map complements Tune's snapshot, which can predate a run the earlier driver made."""
        try:
            lines = [json.loads(line) for line in folder.read_text(PENDING_FILE).splitlines() if line.strip()]
        except FileNotFoundError:
            lines = []
        calls = [line for line in lines if "op" in line]
        with self._cond:
            for line in lines[:1]:
                for trial_id, run_id in line.get("runs", {}).items():
                    self.runs.setdefault(trial_id, run_id)
            self._calls.extendleft(reversed(calls))
            self._version += 1
            self._on_disk = bool(lines)
            self.folder = folder
            self._cond.notify_all()
        if calls:
            log.info("MLflow: %d tracking call(s) an earlier driver could not deliver go first", len(calls))

    def sync_file(self) -> None:
        """Make PENDING_FILE hold the calls still waiting (none: no file), so a driver that dies loses none.
        A call delivered after its snapshot is delivered again from the file, which does no harm (OPS)."""
        if self.folder is None:
            return
        with self._file_lock:
            with self._cond:
                calls, version = list(self._calls), self._version
                if not calls and not self._on_disk:
                    return  # no file, and none needed
                if calls and self._on_disk and version == self._synced_version:
                    return  # the file holds these already
                self._on_disk, self._synced_version, self._synced_at = bool(calls), version, time.monotonic()
            try:
                if calls:
                    runs = {c["trial"]: self.runs[c["trial"]] for c in calls if c.get("trial") in self.runs}
                    lines = [json.dumps(line) + "\n" for line in [{"runs": runs}, *calls]]
                    self.folder.write_text(PENDING_FILE, "".join(lines))
                else:
                    self.folder.delete(PENDING_FILE)
            except OSError as e:  # a storage hiccup: the next sync tries again
                self._on_disk, self._synced_version = True, -1
                log.warning("could not update %s: %s", self.folder.path(PENDING_FILE), e)

    def finish(self, timeout: float) -> None:
        """Deliver every waiting call within `timeout` s, then stop; what is left waits in PENDING_FILE."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()  # retry now
            while self._calls and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            self._closing = True
            self._cond.notify_all()
        self._thread.join(HTTP_TIMEOUT_S + 5)  # a delivery under way ends within its request's timeout
        self.sync_file()
        if not self._calls:
            return
        if self.folder is None:
            log.error("MLflow at %s did not answer for %.0f s: %d tracking call(s) are lost", self.uri, timeout,
                      len(self._calls))
            return
        log.warning("MLflow at %s did not answer for %.0f s: %d tracking call(s) wait in %s; --resume of this "
                    "experiment delivers them once it answers", self.uri, timeout, len(self._calls),
                    self.folder.path(PENDING_FILE))

    def _deliver_forever(self) -> None:
        """The oldest call first; while MLflow does not answer, retry every RETRY_S or when a call comes."""
        while True:
            with self._cond:
                while not self._calls and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                call = self._calls[0]
            if self._deliver(call):
                self._delivered()
                continue
            if time.monotonic() - self._synced_at >= PERSIST_EVERY_S:
                self.sync_file()
            with self._cond:
                if not self._closing:
                    self._cond.wait(RETRY_S)

    def _deliver(self, call: dict) -> bool:
        """Whether the call is done with: delivered, or refused by MLflow (then dropped, with a warning)."""
        try:
            if self._client is None:
                self._client = client(self.uri)
            if call["op"] == "open_trial_run":
                self._open_trial_run(call)
            else:
                OPS[call["op"]](self._client, self._run_id(call), call)
        except Exception as e:  # noqa: BLE001 - unreachable, timed out, or a 5xx: MLflow may take it later
            if not _refused(e):
                self._went_away(e)
                return False
            log.warning("MLflow at %s refused %s for %s (%s); dropped", self.uri, call["op"],
                        call.get("run") or f"trial {call.get('trial')}", e)
        return True

    def _delivered(self) -> None:
        """The oldest call is done; the end of an outage is announced once its backlog has gone out."""
        with self._cond:
            self._calls.popleft()
            self._version += 1
            drained = not self._calls
            self._cond.notify_all()  # finish() waits for the queue to drain
        if self._down_since is not None:
            self._late += 1
            if drained:
                log.info("MLflow at %s answers again after %.0f s: delivered the %d tracking call(s) that waited",
                         self.uri, time.monotonic() - self._down_since, self._late)
                self._down_since = None
        if drained and self._on_disk:
            self.sync_file()

    def _went_away(self, error: Exception) -> None:
        """One warning per outage, at its start."""
        if self._down_since is not None:
            return
        self._down_since, self._late = time.monotonic(), 0
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("MLflow at %s does not answer (%s): training goes on; its tracking calls wait, in order, "
                    "and are retried every %g s", self.uri, reason, RETRY_S)

    def _run_id(self, call: dict) -> str:
        if "run" in call:
            return call["run"]
        if call["trial"] not in self.runs:
            raise RunMissing(f"trial {call['trial']} has no run")
        return self.runs[call["trial"]]

    def _open_trial_run(self, call: dict) -> None:
        """The trial's run: the one mapped, else found by its tags (the Tune snapshot can lag a crash, and
        an answer can be lost in an outage), else a new one; its parameters when it has none yet."""
        from mlflow.entities import Param
        c, tid, tags = self._client, call["trial"], call["tags"]
        if tid in self.runs:
            return
        if call["experiment"] not in self._experiments:
            self._experiments[call["experiment"]] = experiment_id(c, call["experiment"], self.uri)
        exp = self._experiments[call["experiment"]]
        found = c.search_runs([exp], filter_string=(
            f"tags.trial_id = '{tid}' and tags.`mlflow.parentRunId` = '{tags['mlflow.parentRunId']}'"))
        run = found[0] if found else c.create_run(exp, run_name=call["name"], tags=tags)
        if not run.data.params:
            c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in call["params"].items()])
        self.runs[tid] = run.info.run_id


# The outbox of each search's parent run in this process: the callback fills it, and `finish_parent`, which
# the search calls without holding the callback, puts the parent's calls behind the trials' and drains it.
_OUTBOXES: dict[str, Outbox] = {}


class MLflowTracking(tune.Callback):
    """Tune's trial events as MLflow calls, queued in an `Outbox`: no event waits for MLflow.

    folder: the experiment folder (a path or URI) for PENDING_FILE; None: the one the trials' storage names.
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str, base: dict[str, Any],
                 folder: str | None = None):
        self.uri, self.experiment, self.parent, self.base, self.folder = uri, experiment, parent_run_id, base, folder
        self.runs: dict[str, str] = {}  # trial id -> child run id, filled as the outbox creates the runs
        self._outbox: Outbox | None = None
        self._opened: set[str] = set()  # trials whose run this driver has asked for

    # --- picklable: Tune stores the callback in tuner.pkl and its state in every snapshot ---
    def __getstate__(self):
        return {**self.__dict__, "_outbox": None, "_opened": set()}

    def get_state(self) -> dict:
        # A trial whose run is not made yet is missing here: its "open_trial_run" call still waits in the outbox,
        # which PENDING_FILE keeps while MLflow is away and when the experiment ends.
        return {"runs": dict(self.runs)}  # a copy taken at once (under the GIL) while the outbox adds runs

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))  # runs on restore, before setup(): never cleared there

    def setup(self, **info) -> None:
        """The outbox, with an earlier driver's undelivered calls first. No MLflow call: it may be away."""
        self._outbox = Outbox(self.uri, self.runs)
        _OUTBOXES[self.parent] = self._outbox
        if self.folder:
            self._outbox.load(storage.Folder(self.folder))

    def _box(self, trial) -> Outbox:
        """The outbox, with the experiment folder known and the trial's run asked for."""
        if self._outbox is None:
            self.setup()
        if self._outbox.folder is None:
            self._outbox.load(storage.Folder(_uri(trial.storage.storage_filesystem, trial.storage.experiment_fs_path)))
        if trial.trial_id not in self.runs and trial.trial_id not in self._opened:
            self._opened.add(trial.trial_id)
            self._outbox.put("open_trial_run", **self._run_spec(trial))
            self._outbox.put("log_inputs", trial=trial.trial_id, datasets=dataset_inputs({**self.base, **trial.config}))
        return self._outbox

    def _run_spec(self, trial) -> dict:
        tid, cfg = trial.trial_id, trial.config
        tags = {"mlflow.parentRunId": self.parent, "trial_id": tid, "method": cfg["method"],
                "seed": str(cfg["seed"]), "datasets": _param_str(self.base["datasets"]),
                "fraction": str(cfg["fraction"]), "trial_name": str(trial)}
        if cfg.get("_group"):
            tags["config_group"] = str(cfg["_group"])
        if cfg.get("_completion"):
            tags["completion"] = "true"  # completes a seed the scheduler had stopped
        return dict(trial=tid, experiment=self.experiment, name=f"{cfg['method']}-{tid}", tags=tags,
                    params=trial_params({**self.base, **cfg}))

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._box(trial).put("set_running", trial=trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._box(trial).put("log_metrics", trial=trial.trial_id, metrics=epoch_metrics(result))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        box, tid = self._box(trial), trial.trial_id
        completed = bool((trial.last_result or {}).get("completed"))
        box.put("set_tag", trial=tid, key="completed", value=str(completed).lower())
        if not completed:
            box.put("set_tag", trial=tid, key="stopped_early", value="true")
        if figure := reconstruction_png(trial):  # read now: the checkpoint may be pruned before delivery
            box.put("log_png", trial=tid, file="reconstruction.png", png=figure)
        box.put("set_terminated", trial=tid, status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        box, tid = self._box(trial), trial.trial_id
        error = "unknown error"
        if trial.error_file and os.path.exists(trial.error_file):
            error = Path(trial.error_file).read_text()
        box.put("set_tag", trial=tid, key="error", value=error[-4000:])
        box.put("log_text", trial=tid, text=error, file="error.txt")
        box.put("set_terminated", trial=tid, status="FAILED")

    def on_experiment_end(self, trials, **info) -> None:
        """The calls still waiting go to PENDING_FILE now: a driver stopped from here on loses none."""
        if self._outbox is not None:
            self._outbox.sync_file()


def reconstruction_png(trial) -> str | None:
    """The reconstruction figure (Fig. 4) of a trial's last checkpoint as base64 PNG; None without a decoder."""
    import torch

    from trainable.tune_trainable import RECONSTRUCTION_FILE
    from tuning.plots import reconstruction_figure
    ckpt = trial.checkpoint
    path = ckpt and os.path.join(ckpt.path, RECONSTRUCTION_FILE)
    if not path or not ckpt.filesystem.get_file_info(path).size:
        return None
    with ckpt.filesystem.open_input_file(path) as f:
        data = torch.load(f, weights_only=True)
    return _png(reconstruction_figure(data["original"], data["masked"], data["reconstructed"],
                                      title=f"{trial.config['method']} {trial.trial_id}"))


def finish_parent(uri: str, parent: str, df, files: dict[str, bytes], best_checkpoint, step_seconds=None,
                  folder: str | None = None, register_model: str | None = None) -> None:
    """The parent's artifacts: the search's report files (`tuning.plots.report_files`), the best model; queued
    behind its trials' calls, then all delivered within FLUSH_TIMEOUT_S, or left in PENDING_FILE.
    folder: the experiment folder, when no callback of this process tracked the search."""
    box = _OUTBOXES.pop(parent, None) or Outbox(uri)
    if box.folder is None and folder:
        box.load(storage.Folder(folder))
    box.put("drop_orphans", run=parent, trial_ids=sorted(df["trial_id"].dropna()))
    metrics = {f"seconds_per_image_{kind}": float(s) for kind, s in (step_seconds or {}).items()}
    if "ssl_epochs_reused" in df:  # what SSL-prefix sharing saved; the calibration behind the time column
        metrics.update(ssl_epochs_reused=float(df["ssl_epochs_reused"].sum()),
                       ssl_time_saved_s=float(df["ssl_time_reused_s"].sum()))
    if metrics:
        ts = int(time.time() * 1000)
        box.put("log_metrics", run=parent, metrics=[[k, v, ts, 0] for k, v in metrics.items()])
    for file, data in files.items():
        if file.endswith(".png"):
            box.put("log_png", run=parent, file=file, png=base64.b64encode(data).decode())
        else:
            box.put("log_text", run=parent, text=data.decode(), file=file)
    if best_checkpoint is not None:
        box.put("log_best_model", run=parent, checkpoint=_uri(best_checkpoint.filesystem, best_checkpoint.path),
                register=register_model, uri=uri)
    box.put("set_terminated", run=parent, status="FINISHED")
    box.finish(FLUSH_TIMEOUT_S)


def log_best_model(c, parent: str, checkpoint, register: str | None, uri: str) -> None:
    """The best trial's checkpoint and config as artifacts, and its classifier as an MLflow model (loadable with
    `mlflow.pytorch.load_model`, registered as `register` when given). Once per parent, however often delivered."""
    import torch

    from trainable.tune_trainable import CHECKPOINT_FILE
    with checkpoint.as_directory() as d:
        weights = os.path.join(d, CHECKPOINT_FILE)
        c.log_artifact(parent, weights, "best_model")
        state = torch.load(weights, weights_only=True, map_location="cpu")
        c.log_dict(parent, state["config"], "best_model/config.json")
    if c.get_run(parent).data.tags.get("mixtune.best_model"):
        return  # logged (and registered) by an earlier delivery of this call
    log_classifier(c, parent, state, register, uri)


def log_classifier(c, parent: str, state: dict, register: str | None, uri: str) -> None:
    """The best trial's classifier (images in [0, 1] -> logits) as an MLflow model with a signature and an
    input example, registered as `register` when given."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from trainable.engine import classifier_from_state
    model = classifier_from_state(state).eval()
    example = np.random.default_rng(0).random((2, 3, model.image_size, model.image_size), dtype=np.float32)
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    logged = c.create_logged_model(experiment_id=c.get_run(parent).info.experiment_id, name="classifier",
                                   source_run_id=parent)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # log_model takes the process-wide tracking URI: set for this call only
    try:
        mlflow.pytorch.log_model(
            model, name="classifier", model_id=logged.model_id, signature=signature, input_example=example,
            registered_model_name=register, serialization_format="pickle", await_registration_for=60,
            code_paths=[str(Path(__file__).resolve().parent.parent / "trainable")],  # MixViT, wherever loaded
            pip_requirements=[f"{p}=={_version(p)}" for p in ("torch", "timm", "mlflow")])  # not inferred: offline
    finally:
        mlflow.set_tracking_uri(before)
    c.set_tag(parent, "mixtune.best_model", logged.model_id)


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


def dataset_inputs(config: dict) -> list[dict]:
    """What a trial trained, validated and was tested on, as MLflow dataset inputs (see _log_inputs): digests
    of the images the driver loaded (`_dataset_digests`), told apart by split, fraction and seed."""
    cfg, digests = MixConfig.from_trial(config), config.get("_dataset_digests", {})
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
