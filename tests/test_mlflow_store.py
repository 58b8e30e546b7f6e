"""tuning.mlflow_store: the tracking database copied to a bucket and brought back on a new head."""
import sqlite3

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
