"""What each tracking operation does in MLflow: the typed operations the tracking callback queues (a
`tuning.delivery.Delivery` carries them), one `apply` per type, and which MLflow errors are outages.

Every operation may be delivered twice (an answer lost in an outage, a journal replayed after a crash)
without harm: MLflow merges a metric logged again with the same timestamp; tags, texts and artifacts are
set to the same values again; the best model is logged once per parent; and a status change older than the
one a run shows (its STATUS_AT tag) is ignored, so a replayed start never turns a finished run back to
RUNNING, while a trial retried later (a newer start) does continue its run.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from ray.tune import Checkpoint

from trainable.engine import classifier_from_state
from trainable.tune_trainable import CHECKPOINT_FILE
from tuning.delivery import OpTypes

log = logging.getLogger(__name__)

# MLflow itself is imported inside the functions that call it: importing it takes about 2 s, which the
# search's --help, --dry-run and validation errors need not wait for.

OPS = OpTypes()
STATUS_AT = "mixtune.status_at"  # run tag: when (ns since the epoch) the status it shows was queued
# MLflow 3 shows new experiments in its GenAI overview ("Traces 0"); this tag marks a model-training one.
# (MLflow 3.17's UI reads the kind from its own switch instead, which the links set: ?workflowType=...)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
OUTAGE_STATUS = (401, 403, 429)  # unauthenticated, forbidden (an expired token, a gateway), too many requests
# Connection errors and timeouts of requests, urllib3, botocore and SQLAlchemy (a database that went away),
# told by class name: those packages are optional here.
UNREACHABLE = {"ConnectionError", "Timeout", "TimeoutError", "OperationalError"}


def client(uri: str):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a local sqlite store keeps its artifacts: `mlruns/` next to the database, as
    an absolute path (MLflow's default, `./mlruns`, lands in whatever folder each logging process runs
    in); for a database server (postgresql://...), `mlruns/` in the driver's folder as an absolute path, said
    once (only the driver logs artifacts; on a cluster, run an MLflow server with --artifacts-destination in
    the bucket instead); for a tracking server, its own choice (None)."""
    if uri.startswith("sqlite:///"):
        return str(Path(os.path.abspath(uri[len("sqlite:///"):])).parent / "mlruns")
    if uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql"):
        where = os.path.abspath("mlruns")
        log.info("MLflow artifacts of a new experiment in a database store go to %s", where)
        return where
    return None


def experiment_id(c, name: str, uri: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name, artifact_location=artifact_location(uri), tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            c.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def is_outage(error: BaseException) -> bool:
    """Whether an error means MLflow is away (unreachable, overloaded, refusing our credentials): the call
    waits and is retried. Any other error (bad input, a missing file, a bug) is the call's own."""
    from mlflow.exceptions import MlflowException, RestException
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        if status == 500:  # also MLflow's code for any local failure: an outage only if the server was asked
            return isinstance(error, RestException) or "API request" in str(error) or _unreachable(error)
        return status in OUTAGE_STATUS or status >= 500
    return _unreachable(error)


def _unreachable(error: BaseException | None) -> bool:
    for _ in range(8):  # the error and its causes
        if error is None:
            return False
        if any(cls.__name__ in UNREACHABLE for cls in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
    return False


class RunMissing(LookupError):
    """A call for a trial whose run could not be made or found: nothing to deliver it to."""


class MLflowCalls:
    """The tracking queue's deliver function: one operation at a time, on a client made at first use.

    runs: trial id -> its run id, filled as runs are made or found (shared with the callback's Tune state).
    """

    def __init__(self, uri: str, runs: dict[str, str] | None = None):
        self.uri = uri
        self.runs = {} if runs is None else runs
        self._client = None
        self._experiments: dict[str, str] = {}  # parent run id -> its experiment id

    @property
    def client(self):
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    def __call__(self, op: RunOp) -> None:
        op.apply(self)

    def run_id(self, op: RunOp) -> str:
        """The operation's run: its own id, or the trial's run, found by its tags if not mapped yet (the Tune
        snapshot that maps it can lag a crash, and an answer can be lost in an outage)."""
        if op.trial is None:
            return op.run
        if op.trial not in self.runs:
            found = self.find(op.run, op.trial)
            if found is None:
                raise RunMissing(f"trial {op.trial} has no run under {op.run}")
            self.runs[op.trial] = found.info.run_id
        return self.runs[op.trial]

    def find(self, parent: str, trial: str):
        """The run of `trial` under `parent`, or None."""
        if parent not in self._experiments:
            self._experiments[parent] = self.client.get_run(parent).info.experiment_id
        found = self.client.search_runs([self._experiments[parent]], filter_string=(
            f"tags.trial_id = '{trial}' and tags.`mlflow.parentRunId` = '{parent}'"))
        return found[0] if found else None


# --- the operations ------------------------------------------------------------------------------------

def operation(cls: type) -> type:
    """An operation type (a class decorator): a frozen dataclass, registered in OPS for the journal."""
    return OPS.add(dataclass(frozen=True, kw_only=True)(cls))


@dataclass(frozen=True, kw_only=True)
class RunOp:
    """An operation on one run: `run` is its id, or, with `trial`, the id of the parent under which the
    trial's run is found when the operation is delivered (it may not exist yet when it is queued)."""
    run: str
    trial: str | None = None


@operation
class OpenTrialRun(RunOp):
    """The trial's run: the one mapped or found, else a new one; its parameters when it has none yet."""
    experiment: str
    name: str
    tags: dict
    params: dict

    def apply(self, m: MLflowCalls) -> None:
        from mlflow.entities import Param
        if self.trial in m.runs:
            return
        run = m.find(self.run, self.trial) or m.client.create_run(
            experiment_id(m.client, self.experiment, m.uri), run_name=self.name, tags=self.tags)
        if not run.data.params:
            m.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in self.params.items()])
        m.runs[self.trial] = run.info.run_id


@operation
class SetStatus(RunOp):
    """RUNNING, or a run's end (FINISHED, FAILED, KILLED); ignored when the run shows a newer change."""
    status: str
    at: int  # when it was queued, ns since the epoch

    def apply(self, m: MLflowCalls) -> None:
        run_id = m.run_id(self)
        run = m.client.get_run(run_id)
        if int(run.data.tags.get(STATUS_AT, 0)) > self.at:
            return  # a replay of an older change (a start the run has finished since)
        if self.status == "RUNNING":
            if run.info.status != "RUNNING":  # a retried or resumed trial continues its run
                m.client.update_run(run_id, status="RUNNING")
        else:
            m.client.set_terminated(run_id, status=self.status)
        m.client.set_tag(run_id, STATUS_AT, str(self.at))  # after the change: a crash between replays it


@operation
class LogMetrics(RunOp):
    metrics: list  # [key, value, timestamp ms, step]

    def apply(self, m: MLflowCalls) -> None:
        from mlflow.entities import Metric
        m.client.log_batch(m.run_id(self), metrics=[Metric(k, v, ts, step) for k, v, ts, step in self.metrics])


@operation
class SetTag(RunOp):
    key: str
    value: str

    def apply(self, m: MLflowCalls) -> None:
        m.client.set_tag(m.run_id(self), self.key, self.value)


@operation
class LogText(RunOp):
    file: str
    text: str

    def apply(self, m: MLflowCalls) -> None:
        m.client.log_text(m.run_id(self), self.text, self.file)


@operation
class LogPng(RunOp):
    """A PNG that travels in the operation (so a journal holds it whole); MLflow takes artifacts from files."""
    file: str
    png: str  # base64

    def apply(self, m: MLflowCalls) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, os.path.basename(self.file))
            Path(path).write_bytes(base64.b64decode(self.png))
            m.client.log_artifact(m.run_id(self), path, os.path.dirname(self.file) or None)


@operation
class LogInputs(RunOp):
    """The trial's datasets as MLflow dataset inputs (name, digest, context, sizes), for the UI's Dataset
    column and filters. Per-run facts (fraction, seed) go in the input tags: MLflow keeps one profile
    per (name, digest) and experiment."""
    datasets: list  # dicts: name, digest, context, profile, tags

    def apply(self, m: MLflowCalls) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        inputs = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type="code",
                                       source=json.dumps({"tags": {"loader": "trainable.datasets"}}),
                                       profile=json.dumps(d["profile"])),
                               tags=[InputTag("mlflow.data.context", d["context"])]
                               + [InputTag(k, str(v)) for k, v in d["tags"].items()])
                  for d in self.datasets]
        m.client.log_inputs(m.run_id(self), datasets=inputs)


@operation
class LogBestModel(RunOp):
    checkpoint: str  # a path or URI that Ray's Checkpoint resolves
    register: str | None = None

    def apply(self, m: MLflowCalls) -> None:
        log_best_model(m.client, m.run_id(self), Checkpoint(self.checkpoint), self.register, m.uri)


@operation
class DropOrphans(RunOp):
    trial_ids: list

    def apply(self, m: MLflowCalls) -> None:
        drop_orphans(m.client, m.run_id(self), set(self.trial_ids))


def log_best_model(c, parent: str, checkpoint, register: str | None, uri: str) -> None:
    """The best trial's checkpoint and config as artifacts, and its classifier as an MLflow model (loadable with
    `mlflow.pytorch.load_model`, registered as `register` when given). Once per parent, however often delivered."""
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
    from mlflow.models import infer_signature
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
            pip_requirements=[f"{p}=={version(p)}" for p in ("torch", "timm", "mlflow")])  # not inferred: offline
    finally:
        mlflow.set_tracking_uri(before)
    c.set_tag(parent, "mixtune.best_model", logged.model_id)


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
