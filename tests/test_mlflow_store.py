"""tuning.mlflow_store: the tracking database copied to a bucket and brought back on a new head, and the server
that `serve` supervises (a local folder stands for the bucket)."""
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from tests_helpers import MlflowServer
from tuning import mlflow_store


def _db(path, rows):
    con = sqlite3.connect(path)
    con.execute("create table if not exists runs (id text)")
    con.executemany("insert into runs values (?)", [(r,) for r in rows])
    con.commit()
    return con


def _rows(path):
    con = sqlite3.connect(path)
    try:
        return [r for (r,) in con.execute("select id from runs order by id")]
    finally:
        con.close()


def test_backup_and_restore__a_consistent_copy_comes_back_on_a_new_head(tmp_path):
    head, bucket = tmp_path / "head" / "mlflow.db", tmp_path / "bucket" / "mlflow.db"
    head.parent.mkdir()
    con = _db(head, ["a", "b"])  # the server still has the database open
    mlflow_store.backup(str(head), str(bucket))
    con.execute("insert into runs values ('c')")  # not yet copied
    con.commit()
    con.close()
    assert _rows(bucket) == ["a", "b"]
    new_head = tmp_path / "new_head" / "mlflow.db"
    assert mlflow_store.restore(str(bucket), str(new_head)) and _rows(new_head) == ["a", "b"]
    assert not mlflow_store.restore(str(bucket), str(head))  # a database already here is never overwritten
    assert _rows(head) == ["a", "b", "c"]
    assert not mlflow_store.restore(str(tmp_path / "empty" / "mlflow.db"), str(tmp_path / "x.db"))  # no copy yet


def test_backup_command__replaces_an_earlier_copy_in_a_local_bucket(tmp_path):
    head, bucket = tmp_path / "head" / "mlflow.db", tmp_path / "bucket" / "mlflow.db"
    head.parent.mkdir()
    _db(head, ["a"]).close()
    argv = ["backup", "--db", str(head), "--backup", str(bucket)]
    assert mlflow_store.main(argv) == 0
    _db(head, ["b"]).close()
    assert mlflow_store.main(argv) == 0  # the copy now exists: a file path, not a folder
    assert _rows(bucket) == ["a", "b"]


def _dump(db) -> str:
    """Everything in a sqlite database, as SQL."""
    con = sqlite3.connect(db)
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


def _poll(condition, timeout: float, message: str) -> None:
    """Wait until `condition()` holds; fail with `message` after `timeout` seconds."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(message)
        time.sleep(0.2)


def _runs(client, experiment: str) -> dict[str, dict]:
    """Every run of an experiment, deleted ones too: info (status, times, artifact URI), metrics, params, tags."""
    eid = client.get_experiment_by_name(experiment).experiment_id
    return {r.info.run_id: r.to_dictionary() for r in client.search_runs([eid], run_view_type=ViewType.ALL)}


def _listed(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _listed(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _downloaded(client, run_id: str, dst: Path) -> dict[str, bytes]:
    """A run's artifacts downloaded through the client's server: {path: bytes}."""
    root = Path(client.download_artifacts(run_id, "", str(dst)))
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def test_serve__a_new_head_finds_every_run_and_artifact_of_a_search_in_the_bucket(
        tracked_search, mlflow_supervisor, processes, tmp_path):
    df, _, old = tracked_search
    head = mlflow_supervisor
    _poll(lambda: head.backup.exists() and _dump(head.backup) == _dump(head.db), 30,
          "the supervisor's copy in the bucket never caught up with its database")

    # `ray down` took the head and its files; `ray up` brings a new, empty one (a long interval leaves the
    # copy it makes when stopped as the only one after the first).
    new = MlflowServer(tmp_path / "new_head", processes, bucket=head.bucket, interval=3600).start()
    assert "restored the MLflow database" in new.log.read_text()
    c = MlflowClient(new.uri)
    before = _runs(old, "tracked")
    assert len(before) == len(df) + 1  # the trials and their parent
    assert _runs(c, "tracked") == before
    listed = {run_id: _listed(old, run_id) for run_id in before}
    parent = next(r for r, d in before.items() if "mlflow.parentRunId" not in d["data"]["tags"])
    assert {"comparison.csv", "best_model/engine.pt"} <= listed[parent]
    assert any("reconstruction.png" in files for files in listed.values())
    for run_id, files in listed.items():
        got = _downloaded(c, run_id, tmp_path / "new" / run_id)
        assert set(got) == files and got == _downloaded(old, run_id, tmp_path / "old" / run_id), run_id

    # What the new head records reaches the bucket when it is stopped. (The session's server shares the
    # bucket: its next change or its own stop writes its copy back.)
    c.create_experiment("recorded_on_the_new_head")
    os.kill(new.proc.pid, signal.SIGTERM)
    assert new.proc.wait(timeout=60) == 0
    con = sqlite3.connect(head.backup)
    try:
        assert ("recorded_on_the_new_head",) in con.execute("select name from experiments").fetchall()
    finally:
        con.close()


def test_serve__restarts_the_mlflow_server_when_it_dies(tmp_path, processes):
    server = MlflowServer(tmp_path / "head", processes, bucket=tmp_path / "bucket").start()
    first = server.server_pid()
    os.killpg(first, signal.SIGKILL)  # the server and its workers; the supervisor lives on
    _poll(lambda: server.server_pid() not in (None, first) and server.healthy(), 60,
          "the MLflow server was not started again")
    assert server.proc.poll() is None
    assert "the MLflow server exited (code -9); starting it again" in server.log.read_text()
