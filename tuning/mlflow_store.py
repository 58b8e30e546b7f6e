"""An MLflow tracking server whose results outlive the machine it runs on.

    python -m tuning.mlflow_store serve --db /home/ray/mlflow.db --backup s3://BUCKET/mixtune/mlflow.db \\
        --artifacts s3://BUCKET/mixtune/mlflow-artifacts --host 127.0.0.1 --port 5000
    python -m tuning.mlflow_store backup --db /home/ray/mlflow.db --backup s3://BUCKET/mixtune/mlflow.db

On a cluster the tracking server lives on the head node, which `ray down` deletes. Artifacts
(figures, tables, models) go straight to the bucket (`--artifacts`). The run database is a
sqlite file on the head: `serve` restores it from the bucket when the head starts, copies it
there whenever it changed (at most every --interval seconds) and when it is stopped, and
restarts the server whenever it dies. `backup` makes one copy now (the last step before
`ray down`). Copies are consistent snapshots (sqlite's online backup) written whole.
The bucket may be any storage path: a local folder stands for it in the tests.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tuning/mlflow_store.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainable import storage  # noqa: E402
from trainable.cli import COUNT, POSITIVE, local_file, storage_file, storage_path  # noqa: E402

log = logging.getLogger("tuning.mlflow_store")


def _split(uri: str) -> tuple[storage.Folder, str]:
    """The folder and the file name of a file's storage path."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    return storage.Folder(parent or "."), name


def backup(db: str, dest: str) -> None:
    """A consistent copy of the sqlite database `db` at `dest` (written whole)."""
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = os.path.join(tmp, "snapshot.db")
        src, dst = sqlite3.connect(db), sqlite3.connect(snapshot)
        try:
            src.backup(dst)  # a snapshot even while the server writes
        finally:
            src.close()
            dst.close()
        folder, name = _split(dest)
        folder.write_bytes(name, Path(snapshot).read_bytes())


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


def start_server(db: str, artifacts: str, host: str, port: int, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{os.path.abspath(db)}",
           "--artifacts-destination", storage.absolute(artifacts), "--host", host, "--port", str(port),
           "--workers", str(workers)]
    return subprocess.Popen(cmd, start_new_session=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def serve(args: argparse.Namespace) -> int:
    """Run the server, restart it when it dies, back the database up when it changes and at the end."""
    restore(args.backup, args.db)
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    proc = start_server(args.db, args.artifacts, args.host, args.port, args.workers)
    log.info("MLflow server on %s:%d (database %s, backed up to %s)", args.host, args.port, args.db, args.backup)
    saved_mtime, saved_at = None, 0.0
    while not stopping:
        time.sleep(1.0)
        if proc.poll() is not None and not stopping:  # not when it was stopped with the supervisor
            log.warning("the MLflow server exited (code %s); starting it again", proc.returncode)
            proc = start_server(args.db, args.artifacts, args.host, args.port, args.workers)
        saved_mtime, saved_at = _maybe_backup(args, saved_mtime, saved_at)
    stop_server(proc)
    if os.path.exists(args.db):
        backup(args.db, args.backup)
        log.info("stopped; final backup written to %s", args.backup)
    return 0


def _maybe_backup(args: argparse.Namespace, saved_mtime, saved_at: float):
    """Back up when the database changed since the last copy and --interval has passed; the new marks."""
    if not os.path.exists(args.db):
        return saved_mtime, saved_at
    mtime = os.stat(args.db).st_mtime_ns
    if mtime == saved_mtime or time.time() - saved_at < args.interval:
        return saved_mtime, saved_at
    try:
        backup(args.db, args.backup)
    except (OSError, sqlite3.Error) as e:  # the bucket or the disk hiccupped: the next round tries again
        log.warning("backup to %s failed: %s", args.backup, e)
        return saved_mtime, saved_at
    return mtime, time.time()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuning.mlflow_store", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("serve", "backup"):
        s = sub.add_parser(name)
        s.add_argument("--db", required=True, type=local_file, help="the server's sqlite database file")
        s.add_argument("--backup", required=True, type=storage_file, help="where its copy lives (s3://..., a path)")
    s = sub.choices["serve"]
    s.add_argument("--artifacts", required=True, type=storage_path, help="artifact store (s3://..., a path)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=COUNT, default=5000)
    s.add_argument("--workers", type=COUNT, default=2)
    s.add_argument("--interval", type=POSITIVE, default=15.0, help="seconds between copies at most (default 15)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "backup":
        backup(args.db, args.backup)
        print(f"backed up {args.db} to {args.backup}")
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
