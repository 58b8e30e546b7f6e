"""tuning.mlflow_store: the tracking database copied to a bucket and brought back on a new head, never over a copy
another head wrote, and the server that `serve` supervises (a local folder stands for the bucket)."""
import argparse
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from tests_helpers import REPO, MlflowServer
from tuning import mlflow_store
from tuning.mlflow_store import Restarts, Superseded, Supervisor


def _db(path, rows):
    """An MLflow-like database (the tables the backup checks for) with these run ids added."""
    con = sqlite3.connect(path)
    con.execute("create table if not exists alembic_version (version_num text)")
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

def _bucket_state(bucket: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in bucket.parent.iterdir()}


@pytest.mark.parametrize("make, message", [
    (None, "does not exist; nothing was backed up"),  # a typo
    (lambda p: p.write_bytes(b""), "is not an MLflow database (no alembic_version or runs table)"),
    (lambda p: p.write_text("not a database, " * 100), "is not an sqlite database (file is not a database)"),
    (lambda p: sqlite3.connect(p).execute("create table runs (id text)").connection.commit(),
     "is not an MLflow database (no alembic_version table)"),
])
def test_backup_command__a_db_that_is_not_an_mlflow_database_exits_2_and_leaves_the_copy_byte_identical(
        tmp_path, capsys, make, message):
    head, bucket = tmp_path / "head" / "mlflow.db", tmp_path / "bucket" / "mlflow.db"
    head.parent.mkdir()
    _db(head, ["a", "b"]).close()
    assert mlflow_store.main(["backup", "--db", str(head), "--backup", str(bucket)]) == 0
    before = _bucket_state(bucket)
    capsys.readouterr()
    wrong = tmp_path / "head" / "mlfow.db"
    if make:
        make(wrong)
    assert mlflow_store.main(["backup", "--db", str(wrong), "--backup", str(bucket)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --db {wrong} {message}") and err.count("\n") == 1
    assert _bucket_state(bucket) == before
    assert wrong.exists() == bool(make)  # a typo is not created either


def test_backup__two_heads_restored_from_one_copy__the_second_writer_is_refused_naming_both(tmp_path, capsys):
    bucket, old = str(tmp_path / "bucket" / "mlflow.db"), tmp_path / "old" / "mlflow.db"
    old.parent.mkdir()
    _db(old, ["a"]).close()
    assert mlflow_store.main(["backup", "--db", str(old), "--backup", bucket]) == 0  # generation 1
    a, b = (str(tmp_path / h / "mlflow.db") for h in ("a", "b"))
    mlflow_store.start_head(bucket, a)
    mlflow_store.start_head(bucket, b)  # a second `ray up`, while the first head still runs
    _db(a, ["from_a"]).close()
    _db(b, ["from_b"]).close()
    assert mlflow_store.main(["backup", "--db", a, "--backup", bucket]) == 0  # generation 2
    capsys.readouterr()
    assert mlflow_store.main(["backup", "--db", b, "--backup", bucket]) == 1
    err = capsys.readouterr().err
    head_a, head_b = (mlflow_store.local_generation(db)["head"] for db in (a, b))
    assert err.count("\n") == 1 and f"generation 2 (written by head {head_a} at " in err
    assert f"this head ({head_b}) started from generation 1 (written by head " in err
    assert _rows(bucket) == ["a", "from_a"]  # the first head's runs survive
    _db(a, ["from_a_later"]).close()
    assert mlflow_store.main(["backup", "--db", a, "--backup", bucket]) == 0  # the first head goes on copying
    assert _rows(bucket) == ["a", "from_a", "from_a_later"]
    assert mlflow_store.main(["backup", "--db", b, "--backup", bucket, "--take-over"]) == 0  # said explicitly
    assert _rows(bucket) == ["a", "from_b"]


def test_backup__of_two_heads_that_started_without_a_copy_only_the_first_writes(tmp_path):
    bucket = str(tmp_path / "bucket" / "mlflow.db")
    a, b = (tmp_path / h / "mlflow.db" for h in ("a", "b"))
    for db in (a, b):
        mlflow_store.start_head(bucket, str(db))  # nothing in the bucket yet: both start empty
        _db(db, [db.parent.name]).close()
    mlflow_store.backup(str(a), bucket)
    with pytest.raises(Superseded, match="started without a copy there"):
        mlflow_store.backup(str(b), bucket)
    assert _rows(bucket) == ["a"]


def test_backup__a_database_and_a_copy_older_than_generations_are_adopted_but_a_newer_copy_is_never_replaced(
        tmp_path):
    head, bucket = tmp_path / "head" / "mlflow.db", tmp_path / "bucket" / "mlflow.db"
    head.parent.mkdir()
    bucket.parent.mkdir()
    _db(bucket, ["old"]).close()  # as the previous version left them: no generation recorded on either side
    _db(head, ["old", "new"]).close()
    mlflow_store.backup(str(head), str(bucket))
    assert _rows(bucket) == ["new", "old"] and mlflow_store.remote_generation(str(bucket))["generation"] == 1
    other = tmp_path / "other" / "mlflow.db"  # a database from somewhere else, no record of its copy
    other.parent.mkdir()
    _db(other, ["elsewhere"]).close()
    with pytest.raises(Superseded, match="has no record of the copy it came from"):
        mlflow_store.backup(str(other), str(bucket))
    assert _rows(bucket) == ["new", "old"]


def _supervisor(db, bucket, restarts, start) -> Supervisor:
    args = argparse.Namespace(db=str(db), backup=str(bucket), interval=0.0, host="127.0.0.1", port=5000)
    return Supervisor(args, restarts, start)


def test_serve__stops_copying_but_keeps_the_server_running_when_another_head_wrote_the_copy(
        tmp_path, processes, caplog):
    bucket, first, second = (tmp_path / h / "mlflow.db" for h in ("bucket", "first", "second"))
    first.parent.mkdir()
    _db(first, ["a"]).close()
    mlflow_store.backup(str(first), str(bucket))
    mlflow_store.start_head(str(bucket), str(second))  # restored
    _db(first, ["b"]).close()
    mlflow_store.backup(str(first), str(bucket))  # the first head wrote since
    _db(second, ["c"]).close()
    sup = _supervisor(second, bucket, Restarts(), lambda: processes.start(["sleep", "600"]))
    sup.start()
    with caplog.at_level(logging.INFO, logger="tuning.mlflow_store"):
        assert sup.tick()
        assert sup.proc.poll() is None and not sup.copying
        assert "refusing to overwrite" in caplog.text and "its MLflow server keeps running" in caplog.text
        assert sup.stop() == 1  # and no last copy either
    assert _rows(bucket) == ["a", "b"]


def test_supervisor__copies_a_changed_database_at_most_once_per_interval_and_an_unchanged_one_never(
        tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"v1")
    copies, now = [], [1000.0]
    monkeypatch.setattr(mlflow_store, "backup", lambda src, dest: copies.append((now[0], Path(src).read_bytes())))
    monkeypatch.setattr(mlflow_store.time, "time", lambda: now[0])
    sup = Supervisor(argparse.Namespace(db=str(db), backup=str(tmp_path / "copy.db"), interval=15.0),
                     Restarts(), lambda: None)

    def change(data: bytes) -> None:
        db.write_bytes(data)
        os.utime(db, ns=(int(now[0] * 1e9),) * 2)  # each write a new modification time

    sup._maybe_backup()  # a database never copied: now
    change(b"v2")
    for t in (1005.0, 1014.9):  # changed, but within 15 s of the last copy
        now[0] = t
        sup._maybe_backup()
    now[0] = 1015.0
    sup._maybe_backup()
    now[0] = 1100.0  # unchanged since: never copied again
    sup._maybe_backup()
    assert copies == [(1000.0, b"v1"), (1015.0, b"v2")]


@pytest.mark.parametrize("lives, delays", [
    ([1, 1, 1, 1, 1], [1, 2, 4, 5, None]),  # doubled, capped, then given up
    ([1, 1, 100, 1], [1, 2, 0, 1]),  # a server that ran a while is started again at once, and the count restarts
])
def test_restarts__quick_deaths_wait_longer_each_time_and_give_up_after_the_limit(lives, delays):
    restarts = Restarts(base=1, cap=5, quick=10, limit=5)
    assert [restarts.after_exit(lived) for lived in lives] == delays


def test_serve__a_server_that_keeps_dying_is_started_with_backoff_then_given_up_on(tmp_path, processes, caplog):
    starts = []

    def start():
        starts.append(processes.start(["sh", "-c", "exit 3"]))
        return starts[-1]

    sup = _supervisor(tmp_path / "mlflow.db", tmp_path / "bucket" / "mlflow.db",
                      Restarts(base=0.01, cap=0.02, quick=1e9, limit=3), start)  # every death counts as quick
    sup.poll = 0.01
    with caplog.at_level(logging.INFO, logger="tuning.mlflow_store"):
        assert sup.run() == 1
    messages = [r.getMessage() for r in caplog.records]
    assert len(starts) == 3 and messages[:2] == [f"the MLflow server exited (code 3); starting it again in {d} s"
                                                 for d in ("0.01", "0.02")]
    assert messages[2].startswith("the MLflow server exited (code 3): 3 times in a row within 1e+09 s of its start; "
                                  "giving up. Is port 5000 on 127.0.0.1 taken")


def _serve_command(db: Path, bucket: Path, port: int, *flags) -> list[str]:
    """`serve` as cluster.yaml runs it, the bucket a local folder."""
    return [sys.executable, "-m", "tuning.mlflow_store", "serve", "--db", str(db),
            "--backup", str(bucket / "mlflow.db"), "--artifacts", str(bucket / "artifacts"),
            "--port", str(port), "--workers", "1", *flags]


@pytest.mark.slow
def test_serve__a_port_that_is_taken_ends_the_supervisor_with_exit_1_after_the_given_failures(tmp_path, processes):
    log = tmp_path / "serve.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = processes.start(_serve_command(tmp_path / "head" / "mlflow.db", tmp_path / "bucket", port,
                                              "--restart-delay", "0", "--give-up-after", "2"), log=log, cwd=REPO)
        assert proc.wait(timeout=120) == 1
    text = log.read_text()
    taken = f"the MLflow server could not start (port {port} on 127.0.0.1 is taken (Address already in use))"
    assert f"{taken}; starting it again in 0 s" in text
    assert f"{taken}: 2 times in a row within 30 s of its start; giving up. Is port {port} on 127.0.0.1 taken" in text
    assert "mlflow.server" not in text  # no server was started only to fail


def test_serve__a_second_supervisor_on_the_same_database_exits_2_naming_the_first(
        mlflow_supervisor, processes, tmp_path):
    head, log = mlflow_supervisor, tmp_path / "second.log"
    proc = processes.start(_serve_command(head.db, head.bucket, head.port), log=log, cwd=REPO)  # `ray up` again
    assert proc.wait(timeout=120) == 2
    assert f"another supervisor (pid {head.proc.pid} on this machine) already serves {head.db}" in log.read_text()
    assert head.proc.poll() is None and head.healthy()


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

    # `ray down` took the head and its files, leaving the bucket as it is now; `ray up` brings a new, empty
    # head (a long interval leaves the copy it makes when stopped as the only one after the first).
    bucket = shutil.copytree(head.bucket, tmp_path / "bucket")
    new = MlflowServer(tmp_path / "new_head", processes, bucket=bucket, interval=3600).start()
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

    # What the new head records reaches the bucket when it is stopped.
    c.create_experiment("recorded_on_the_new_head")
    os.kill(new.proc.pid, signal.SIGTERM)
    assert new.proc.wait(timeout=60) == 0
    con = sqlite3.connect(new.backup)
    try:
        assert ("recorded_on_the_new_head",) in con.execute("select name from experiments").fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_serve__restarts_the_mlflow_server_when_it_dies(tmp_path, processes):
    server = MlflowServer(tmp_path / "head", processes, bucket=tmp_path / "bucket").start()
    first = server.server_pid()
    os.killpg(first, signal.SIGKILL)  # the server and its workers; the supervisor lives on
    _poll(lambda: server.server_pid() not in (None, first) and server.healthy(), 60,
          "the MLflow server was not started again")
    assert server.proc.poll() is None
    assert "the MLflow server exited (code -9); starting it again" in server.log.read_text()
