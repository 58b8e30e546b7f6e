"""MLflow tracking without Ray or a server: the callback and each operation against a local sqlite store, the
classification of MLflow's errors, and the reproductions of issue 21 that concern tracking (the end-to-end
tests with a real search and server are in test_tracking_search.py)."""
import http.server
import json
import logging
import math
import os
import pickle
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from ray.tune import Checkpoint

from conftest import small_config
from tests_helpers import free_port
from trainable import storage
from trainable.tune_trainable import TrialSettings
from tuning import delivery, tracking
from tuning.mlflow_calls import (LogMetrics, MLflowCalls, OpenTrialRun, RunMissing, SetStatus, SetTag,
                                 artifact_location, drop_orphans, experiment_id, is_outage)
from tuning.searcher import GROUP


def test_tracking__a_local_stores_artifacts_live_next_to_its_database_wherever_the_search_runs(tmp_path,
                                                                                                monkeypatch):
    uri = f"sqlite:///{tmp_path}/store/m.db"
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)  # not the store's folder: MLflow's default would be ./mlruns here
    c = MlflowClient(uri)
    parent = c.create_run(experiment_id(c, "where", uri)).info.run_id
    c.log_text(parent, "hello", "note.txt")
    assert (tmp_path / "store" / "mlruns").is_dir() and not (tmp_path / "mlruns").exists()
    assert artifact_location("http://127.0.0.1:5000") is None  # a server chooses


def test_tracking__a_run_of_a_trial_lost_with_the_driver_is_ended_and_deleted(tmp_path):
    c = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    eid = experiment_id(c, "orphans", f"sqlite:///{tmp_path}/m.db")
    parent = c.create_run(eid).info.run_id
    kept = c.create_run(eid, tags={"mlflow.parentRunId": parent, "trial_id": "kept"}).info.run_id
    ghost = c.create_run(eid, tags={"mlflow.parentRunId": parent, "trial_id": "ghost"}).info.run_id
    drop_orphans(c, parent, {"kept"})
    assert [r.info.run_id for r in c.search_runs([eid], "tags.trial_id != ''")] == [kept]
    gone = c.get_run(ghost)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED" and "superseded" in gone.data.tags


@pytest.fixture
def fast_delivery(monkeypatch):
    """Quick retries and a short wait for a tracking store known to be down; MLflow's fail-fast HTTP settings."""
    monkeypatch.setattr(delivery, "RETRY_S", 0.05)
    monkeypatch.setattr(delivery, "DOWN_WAIT_S", 0.5)
    for key, value in tracking.HTTP_ENV.items():
        monkeypatch.setenv(key, value)


def sqlite_parent(tmp_path, experiment: str):
    """A local store (no server) with a parent run: (uri, client, parent run id)."""
    uri = f"sqlite:///{tmp_path}/m.db"
    c = MlflowClient(uri)
    return uri, c, tracking.start_parent(uri, experiment, experiment, {"space": "smoke"})


def dead_letters(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((folder / tracking.DEAD_LETTERS_DIR).glob("*.jsonl"))
            for line in f.read_text().splitlines()]


class FakeTrial:
    """What the callback reads of a Tune trial."""

    def __init__(self, tmp_path, trial_id: str, config: dict, error_file: str | None = None):
        self.trial_id, self.config, self.error_file = trial_id, config, error_file
        self.last_result, self.checkpoint = {}, None
        self.storage = type("Storage", (), {"storage_filesystem": pyarrow.fs.LocalFileSystem(),
                                            "experiment_fs_path": str(tmp_path / "experiment")})

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


DIGESTS = {"digits": {"train": "a1", "test": "b2", "n_train": 1617, "n_test": 180, "shape": [8, 8]}}


def test_tracking__the_callback_records_each_trial_s_run_and_the_parent_ends(tmp_path):
    uri, c, parent = sqlite_parent(tmp_path, "callback")
    base = small_config().to_dict()
    cb = tracking.MLflowTracking(uri, "callback", parent, base, TrialSettings(epoch_scale=0.5,
                                                                              dataset_digests=DIGESTS))
    cb.setup()
    good = FakeTrial(tmp_path, "t1", {"method": "mixtraining", "alpha": 0.25, "seed": 1, "fraction": 1.0, GROUP: 7})
    error = tmp_path / "error.txt"
    error.write_text("could not reach postgresql://alice:SECRET@db/x")
    bad = FakeTrial(tmp_path, "t2", {"method": "sl", "seed": 0, "fraction": 1.0}, error_file=str(error))
    cb.on_trial_start(0, [], good)
    cb.on_trial_result(0, [], good, {"epoch": 1, "phase": "ssl", "loss_ssl": 0.5, "val_acc": math.nan})
    cb.on_trial_result(0, [], good, {"epoch": 2, "phase": "sl", "loss_sl": 0.25, "val_acc": 0.75})
    good.last_result = {"completed": True}
    cb.on_trial_complete(0, [], good)
    cb.on_trial_start(0, [], bad)
    cb.on_trial_error(0, [], bad)
    cb.on_experiment_end([])
    assert pickle.loads(pickle.dumps(cb)).delivery is None  # Tune pickles the callback; its queue stays here
    tracking.finish_parent(uri, parent, pd.DataFrame({"trial_id": ["t1", "t2"]}), {"comparison.md": b"| a |"},
                           None, delivery=cb.delivery)

    runs = {r.data.tags["trial_id"]: r for r in c.search_runs([c.get_run(parent).info.experiment_id],
                                                               "tags.trial_id != ''")}
    assert set(runs) == {"t1", "t2"} and cb.runs == {t: r.info.run_id for t, r in runs.items()}
    ok, failed = runs["t1"], runs["t2"]
    assert ok.info.status == "FINISHED" and ok.data.tags["completed"] == "true"
    assert ok.data.tags["config_group"] == "7" and ok.data.tags["mlflow.parentRunId"] == parent
    assert ok.data.params["alpha"] == "0.25" and ok.data.params["epoch_scale"] == "0.5"
    assert [(m.step, m.value) for m in c.get_metric_history(ok.info.run_id, "val_acc")] == [(2, 0.75)]
    assert [m.value for m in c.get_metric_history(ok.info.run_id, "phase")] == [0.0, 2.0]
    contexts = {t.value for i in c.get_run(ok.info.run_id).inputs.dataset_inputs for t in i.tags
                if t.key == "mlflow.data.context"}
    assert contexts == {"training", "validation", "test"}
    assert failed.info.status == "FAILED" and "alice:***@db" in failed.data.tags["error"]
    assert "SECRET" not in failed.data.tags["error"]
    assert c.get_run(parent).info.status == "FINISHED"
    assert [a.path for a in c.list_artifacts(parent)] == ["comparison.md"]


def test_tracking__a_replayed_start_never_turns_a_finished_run_back_to_running(tmp_path):
    """Issue 21, reproduction 9: a replayed `set_running` turned a finished run back to RUNNING."""
    uri, c, parent = sqlite_parent(tmp_path, "statuses")
    calls, on = MLflowCalls(uri), {"run": parent, "trial": "t1"}
    calls(OpenTrialRun(**on, experiment="statuses", name="t1", params={}, tags={"mlflow.parentRunId": parent,
                                                                                "trial_id": "t1"}))
    status = lambda: c.get_run(calls.runs["t1"]).info.status  # noqa: E731
    start, end = SetStatus(**on, status="RUNNING", at=1), SetStatus(**on, status="FINISHED", at=2)
    for op in (start, end, start):  # the start delivered again after a crash
        calls(op)
    assert status() == "FINISHED"
    calls(SetStatus(**on, status="RUNNING", at=3))  # the trial retried later continues its run
    assert status() == "RUNNING"
    calls(end)  # its first end, replayed
    assert status() == "RUNNING"


def test_tracking__a_trial_s_end_queued_before_a_snapshot_survives_a_driver_killed_after_it(tmp_path, monkeypatch):
    """A trial the snapshot lists finished is never rerun on --resume: its end, still waiting in the driver's
    memory when the driver was killed, must reach its run through the journal (seen in the resume test)."""
    uri, c, parent = sqlite_parent(tmp_path, "snapshot")
    gate, deliver = threading.Event(), MLflowCalls.__call__

    def slow(self, op):  # MLflow answers, but slower than the driver dies: the trial's end waits in memory
        if isinstance(op, SetTag) and op.key == "completed":
            gate.wait(60)
        if gate.is_set():
            raise RuntimeError("the killed driver delivers nothing")  # (set aside in its own folder)
        deliver(self, op)

    monkeypatch.setattr(MLflowCalls, "__call__", slow)
    folder = str(tmp_path / "experiment")
    os.makedirs(folder)
    killed = tracking.MLflowTracking(uri, "snapshot", parent, small_config().to_dict(), TrialSettings(), folder)
    killed.setup()
    trial = FakeTrial(tmp_path, "t1", {"method": "sl", "seed": 0, "fraction": 1.0})
    killed.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        killed.on_trial_result(0, [], trial, {"epoch": epoch, "phase": "sl", "val_acc": epoch / 4})
    trial.last_result = {"completed": True}
    killed.on_trial_complete(0, [], trial)
    deadline = time.monotonic() + 30
    while "t1" not in killed.runs and time.monotonic() < deadline:  # its run made, its end waiting
        time.sleep(0.05)
    state = pickle.loads(pickle.dumps(killed.get_state()))  # the snapshot; then the driver is killed
    shutil.copytree(folder, tmp_path / "at_kill")
    gate.set()
    killed.delivery.finish(timeout=30)  # only stops its thread: the folder at the kill is what resumes
    monkeypatch.setattr(MLflowCalls, "__call__", deliver)

    resumed = tracking.MLflowTracking(uri, "snapshot", parent, small_config().to_dict(), TrialSettings(),
                                      str(tmp_path / "at_kill"))
    resumed.set_state(state)
    resumed.setup()
    assert resumed.delivery.finish(timeout=60) == 0
    run = c.get_run(resumed.runs["t1"])
    assert run.info.status == "FINISHED" and run.data.tags["completed"] == "true"
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "val_acc")] == [(1, 0.25), (2, 0.5)]


def test_tracking__calls_kept_while_mlflow_was_away_reach_the_run_the_next_driver_creates(tmp_path,
                                                                                          fast_delivery):
    uri, c, parent = sqlite_parent(tmp_path, "replay")
    folder = storage.Folder(str(tmp_path / "experiment"))
    away = tracking.new_delivery(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    away.load(folder)
    on = {"run": parent, "trial": "t1"}
    away.put(OpenTrialRun(**on, experiment="replay", name="sl-t1", params={"seed": "0"},
                          tags={"mlflow.parentRunId": parent, "trial_id": "t1"}))
    away.put(LogMetrics(**on, metrics=[["val_acc", 0.5, 1000, 1], ["val_acc", 0.75, 2000, 2]]))
    away.put(SetStatus(**on, status="FINISHED", at=time.time_ns()))
    start = time.monotonic()
    assert away.finish(timeout=600) == 3 and time.monotonic() - start < 30  # MLflow down: no 600 s wait
    shutil.copytree(tmp_path / "experiment", tmp_path / "saved")

    # The next driver delivers them first; then once more, as after a crash before its journal was deleted.
    for _ in range(2):
        runs = {}
        back = tracking.new_delivery(uri, runs)
        back.load(folder)
        assert back.finish(timeout=60) == 0 and back.set_aside == 0
        assert not (tmp_path / "experiment" / tracking.PENDING_DIR).exists()
        shutil.rmtree(tmp_path / "experiment")
        shutil.copytree(tmp_path / "saved", tmp_path / "experiment")
        children = c.search_runs([c.get_run(parent).info.experiment_id], "tags.trial_id = 't1'")
        assert [r.info.run_id for r in children] == [runs["t1"]]
        run = children[0]
        assert run.info.status == "FINISHED" and run.data.params == {"seed": "0"}
        history = c.get_metric_history(run.info.run_id, "val_acc")
        assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.75)]

    # A run made before Tune's last snapshot knew it is found by its tags; a trial with no run is set aside.
    late = tracking.new_delivery(uri, {})
    late.load(storage.Folder(str(tmp_path / "elsewhere")))
    late.put(SetTag(**on, key="note", value="late"))
    late.put(SetTag(run=parent, trial="ghost", key="note", value="nowhere"))
    assert late.finish(timeout=60) == 0 and late.set_aside == 1
    assert c.get_run(runs["t1"]).data.tags["note"] == "late"
    assert "RunMissing" in dead_letters(tmp_path / "elsewhere")[0]["error"]


def test_tracking__a_best_model_whose_checkpoint_moved_is_set_aside_and_the_search_still_ends(tmp_path,
                                                                                              fast_delivery, caplog):
    """Issue 21, reproduction 6: one bad call (a moved checkpoint) jammed every later one, and every --resume."""
    uri, c, parent = sqlite_parent(tmp_path, "moved")
    with caplog.at_level(logging.WARNING, logger="tuning"):
        tracking.finish_parent(uri, parent, pd.DataFrame({"trial_id": []}), {"comparison.md": b"| a |"},
                               Checkpoint(str(tmp_path / "moved_away")), folder=str(tmp_path / "experiment"))
    run = c.get_run(parent)
    assert run.info.status == "FINISHED" and "comparison.md" in [a.path for a in c.list_artifacts(parent)]
    [dead] = dead_letters(tmp_path / "experiment")
    assert dead["op"]["type"] == "LogBestModel" and "FileNotFoundError" in dead["error"]
    assert any("set aside" in r.getMessage() and "--resume" in r.getMessage() and tracking.DEAD_LETTERS_DIR
               in r.getMessage() for r in caplog.records)


class Forbidden(http.server.BaseHTTPRequestHandler):
    """A gateway in front of MLflow that refuses our (expired) token."""

    def do_GET(self):
        self.send_response(403)
        self.end_headers()
        self.wfile.write(b"Forbidden")

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_tracking__a_forbidden_answer_keeps_every_call_for_later(tmp_path, fast_delivery, gateway):
    """Issue 21, reproduction 7: a 401/403 from a gateway or an expired token dropped every call made meanwhile."""
    uri, c, parent = sqlite_parent(tmp_path, "forbidden")
    folder = storage.Folder(str(tmp_path / "experiment"))
    refused = tracking.new_delivery(gateway)
    refused.load(folder)
    refused.put(SetTag(run=parent, key="note", value="kept"))
    assert refused.finish(timeout=60) == 1 and refused.set_aside == 0
    renewed = tracking.new_delivery(uri)  # the token renewed (here: the store itself)
    renewed.load(folder)
    assert renewed.finish(timeout=60) == 0
    assert c.get_run(parent).data.tags["note"] == "kept"


@pytest.mark.parametrize("error, outage", [
    (RestException({"error_code": "PERMISSION_DENIED", "message": "token expired"}), True),
    (RestException({"error_code": "UNAUTHENTICATED", "message": "who?"}), True),
    (RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}), True),
    (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "database is down"}), True),
    (RestException({"error_code": "INTERNAL_ERROR", "message": "the server failed"}), True),
    (MlflowException("API request to http://h/api/2.0/mlflow/runs/get failed with exception refused"), True),
    (requests.ConnectionError("refused"), True),
    (requests.Timeout("slow"), True),
    (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad metric"}), False),
    (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}), False),
    (MlflowException("could not serialize the model"), False),  # raised here, not by a server
    (FileNotFoundError("/checkpoints/engine.pt"), False),
    (RunMissing("trial t has no run"), False),
    (ValueError("bad"), False),
])
def test_tracking__outages_are_told_apart_from_a_call_s_own_errors(error, outage):
    assert is_outage(error) is outage


def test_tracking__a_password_in_the_tracking_uri_reaches_no_log_and_no_journal(tmp_path, fast_delivery, caplog):
    uri = f"http://alice:SECRET@127.0.0.1:{free_port()}/?token=TOKEN"  # nothing listens there
    with caplog.at_level(logging.INFO, logger="tuning"):
        tracking.finish_parent(uri, "r1", pd.DataFrame({"trial_id": []}), {}, None, folder=str(tmp_path / "exp"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "does not answer" in text and "alice:***@" in text and "SECRET" not in text and "TOKEN" not in text
    journal = "".join(f.read_text() for f in (tmp_path / "exp").rglob("*.jsonl"))
    assert "SetStatus" in journal and "SECRET" not in journal
