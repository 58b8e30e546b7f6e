"""The copies of a head's MLflow sqlite database in the bucket, and which head may write them.

`backup` makes a consistent snapshot (sqlite's online backup) and writes it whole; `restore` brings it back
on a new head. A copy never replaces one that another head wrote since this head restored or last wrote it:
`BACKUP.generation` names the copy's generation and the head that wrote it; `DB.head`, the generation this
head started from. On object stores the check and the write are two requests, so two heads copying in the
same instant can both pass it. `tuning/mlflow_store.py` supervises the server and calls these.
"""
from __future__ import annotations

import logging
import datetime
import json
import os
import socket
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from trainable import storage

log = logging.getLogger("tuning.mlflow_store")

TABLES = ("alembic_version", "runs")  # every MLflow tracking database has them; an empty file has neither
GENERATION = ".generation"  # beside the backup: {"generation", "head", "written"} of the copy there
HEAD = ".head"  # beside the database: {"head": this head's id, "based_on": the generation it last restored/wrote}


class NotADatabase(ValueError):
    """--db is missing or is not an MLflow sqlite database (a typo must not replace the backup)."""


class Superseded(RuntimeError):
    """Another head wrote the backup since this head restored it or last wrote it."""


def _split(uri: str) -> tuple[storage.Folder, str]:
    """The folder and the file name of a file's storage path."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    return storage.Folder(parent or "."), name


def check_database(db: str) -> None:
    """Raises NotADatabase unless `db` is an MLflow sqlite database. Opens it read-only: never creates it."""
    if not os.path.isfile(db):
        raise NotADatabase(f"{db} does not exist; nothing was backed up (is it the path `serve` was given?)")
    try:
        con = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            tables = {name for (name,) in con.execute("select name from sqlite_master where type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise NotADatabase(f"{db} is not an sqlite database ({e}); nothing was backed up") from e
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise NotADatabase(f"{db} is not an MLflow database (no {' or '.join(missing)} table); nothing was backed up")


# --- backup generations: which head wrote the copy, and from which copy this head started ----------------

def remote_generation(dest: str) -> dict | None:
    """The generation of the copy at `dest`: None when there is none; head None for a copy written before
    generations were recorded."""
    folder, name = _split(dest)
    try:
        return json.loads(folder.read_text(name + GENERATION))
    except FileNotFoundError:
        return {"generation": 0, "head": None, "written": None} if folder.exists(name) else None


def local_generation(db: str) -> dict | None:
    """{"head", "based_on"} recorded beside the database; None when this database's origin is unknown."""
    try:
        return json.loads(Path(db + HEAD).read_text())
    except FileNotFoundError:
        return None


def _record(db: str, head: str, based_on: dict | None) -> None:
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    storage.write_durably(db + HEAD, json.dumps({"head": head, "based_on": based_on}).encode())


def _new_head() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


def start_head(dest: str, db: str) -> None:
    """Restore the database when this head has none, and record the generation it starts from."""
    before = remote_generation(dest)  # read before the data: a copy written meanwhile is newer, not older
    if restore(dest, db) or (local_generation(db) is None and _may_write(None, before)):
        _record(db, _new_head(), before)


def _may_write(mine: dict | None, current: dict | None) -> bool:
    if current is None:
        return True  # nothing there to lose
    if mine is None:
        return current["head"] is None  # a database and a copy that both predate generations
    return current == mine["based_on"] or current["head"] == mine["head"]


def _describe(gen: dict | None) -> str:
    if gen is None:  # this head started empty
        return "started without a copy there"
    written = datetime.datetime.fromtimestamp(gen["written"]).isoformat(" ", "seconds") if gen["written"] else "?"
    return f"generation {gen['generation']} (written by head {gen['head'] or 'unknown'} at {written})"


def _superseded(db: str, dest: str, mine: dict | None, current: dict) -> Superseded:
    this = f"this head ({mine['head']}) started from {_describe(mine['based_on'])}" if mine else \
        f"this head's database {db} has no record of the copy it came from"
    return Superseded(
        f"refusing to overwrite {dest}: it holds {_describe(current)}, but {this}; another head's runs would be "
        f"lost. Keep them: stop this head's server, delete {db} and start `serve` again to restore them; or "
        f"replace them anyway with `backup --take-over`")


def _claim(db: str, dest: str, take_over: bool) -> dict:
    """The next generation, announced beside the copy before the copy is written; raises Superseded when
    another head wrote the copy since this head restored or wrote it."""
    mine, current = local_generation(db), remote_generation(dest)
    if not take_over and not _may_write(mine, current):
        raise _superseded(db, dest, mine, current)
    gen = {"generation": (current or {"generation": 0})["generation"] + 1,
           "head": mine["head"] if mine else _new_head(), "written": time.time()}
    folder, name = _split(dest)
    folder.write_text(name + GENERATION, json.dumps(gen))
    return gen


def backup(db: str, dest: str, take_over: bool = False) -> None:
    """A consistent copy of the MLflow sqlite database `db` at `dest` (written whole). Raises NotADatabase
    or Superseded (`take_over`: overwrite a copy another head wrote) before touching the copy."""
    check_database(db)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = os.path.join(tmp, "snapshot.db")
        src, dst = sqlite3.connect(db), sqlite3.connect(snapshot)
        try:
            src.backup(dst)  # a snapshot even while the server writes
        finally:
            src.close()
            dst.close()
        data = Path(snapshot).read_bytes()
    gen = _claim(db, dest, take_over)
    folder, name = _split(dest)
    folder.write_bytes(name, data)
    _record(db, gen["head"], gen)


def restore(dest: str, db: str) -> bool:
    """Bring the database back from `dest` when it is not here (a new head); whether it did."""
    if os.path.exists(db):
        return False
    folder, name = _split(dest)
    if not folder.exists(name):
        return False
    with folder.fs.open_input_stream(folder.path(name)) as f:
        data = f.read()
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    storage.write_durably(db, data)
    log.info("restored the MLflow database from %s (%d bytes)", dest, len(data))
    return True
