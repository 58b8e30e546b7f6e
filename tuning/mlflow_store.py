"""An MLflow tracking server whose results outlive the machine it runs on.

    python -m tuning.mlflow_store serve --db /home/ray/mlflow.db --backup s3://BUCKET/mixtune/mlflow.db \\
        --artifacts s3://BUCKET/mixtune/mlflow-artifacts --host 127.0.0.1 --port 5000
    python -m tuning.mlflow_store backup --db /home/ray/mlflow.db --backup s3://BUCKET/mixtune/mlflow.db

On a cluster the tracking server lives on the head node, which `ray down` deletes. Artifacts go straight
to the bucket (`--artifacts`). The run database is a sqlite file on the head: `serve` restores it from the
bucket when the head starts, copies it there whenever it changed (at most every --interval seconds) and
when stopped, and restarts the server when it dies (waiting longer after each quick death; giving up after
--give-up-after in a row). One supervisor per database: a second `serve` on the same --db exits. `backup`
makes one copy now (before `ray down`). Copies are consistent snapshots (sqlite's online backup) written
whole, to any storage path (a local folder in the tests).

For one head at a time: a copy never replaces one that another head wrote since this head restored or
last wrote it. `BACKUP.generation` names the copy's generation and the head that wrote it; `DB.head`, the
generation this head started from. On object stores the check and the write are two requests, so two
heads copying in the same instant can both pass it. A database server (`--mlflow-uri postgresql+psycopg://
...`) needs none of this.
"""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __name__ == "__main__" and not __package__:  # `python tuning/mlflow_store.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainable import storage  # noqa: E402
from trainable.cli import COUNT, NON_NEGATIVE, POSITIVE, local_file, storage_file, storage_path  # noqa: E402
from tuning.mlflow_backup import (NotADatabase, Superseded, backup, check_database, local_generation,  # noqa: E402,F401
                                   remote_generation, restore, start_head)  # (tests reach the copies here too)

log = logging.getLogger("tuning.mlflow_store")

# --- the supervised server ------------------------------------------------------------------------------

def start_server(db: str, artifacts: str, host: str, port: int, workers: int) -> subprocess.Popen:
    """The MLflow server, in a session of its own; raises OSError when its port is taken."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        socket.create_server((host, port), family=family).close()  # with SO_REUSEADDR, as the server binds
    except OSError as e:
        raise OSError(f"port {port} on {host} is taken ({os.strerror(e.errno) if e.errno else e})") from e
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


@dataclass
class Restarts:
    """When to start a dead server again: at once after a long life; after a quick death (within `quick`
    seconds of its start: say, its port is taken) after base, 2 base, 4 base ... at most `cap` seconds,
    and never after `limit` quick deaths in a row."""
    base: float = 1.0
    cap: float = 60.0
    quick: float = 30.0
    limit: int = 5
    failures: int = 0  # quick deaths in a row

    def after_exit(self, lived: float) -> float | None:
        """Seconds to wait before the next start; None: give up."""
        self.failures = self.failures + 1 if lived < self.quick else 0
        if self.failures >= self.limit:
            return None
        return min(self.cap, self.base * 2 ** (self.failures - 1)) if self.failures else 0.0


class AlreadyServing(RuntimeError):
    """Another supervisor holds the database's lock."""


def hold_lock(db: str) -> int:
    """An exclusive lock on `DB.supervisor.lock`, held while this process lives (the kernel drops it when the
    process dies, however it dies); its file descriptor. Raises AlreadyServing naming the holder's pid."""
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db + ".supervisor.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyServing(f"another supervisor (pid {holder} on this machine) already serves {db}; "
                             f"stop it first (kill {holder}) to start a new one") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class Supervisor:
    """Runs the MLflow server, starts it again when it dies, copies the database when it changed."""
    poll = 1.0  # seconds between looks

    def __init__(self, args: argparse.Namespace, restarts: Restarts, start: Callable[[], subprocess.Popen]):
        self.args, self.restarts, self._start = args, restarts, start
        self.stopping = False
        self.failed = False  # gave up on the server, or another head wrote the copy
        self.copying = True  # False once another head wrote the copy: it is never overwritten
        self.proc: subprocess.Popen | None = None
        self.started_at = self.restart_at = 0.0
        self.saved_mtime, self.saved_at = None, 0.0

    def run(self) -> int:
        """Until stopped (SIGTERM, SIGINT) or the server keeps dying; the exit code."""
        while not self.stopping and self.tick():  # the first tick starts the server
            time.sleep(self.poll)
        return self.stop()

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.proc = self._start()

    def tick(self) -> bool:
        """One look: (re)start the server when due, copy the database when due; False: the server keeps dying."""
        if not self._watch():
            return False
        self._maybe_backup()
        return True

    def stop(self) -> int:
        """Stop the server and make the last copy; the exit code (1: gave up on the server or on copying)."""
        if self.proc is not None:
            stop_server(self.proc)
        if self.copying and os.path.exists(self.args.db) and self._copy():
            log.info("stopped; final backup written to %s", self.args.backup)
        return 1 if self.failed else 0

    def _watch(self) -> bool:
        """Start the server again when it died and its wait is over; False: it keeps dying, give up."""
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is not None and not self.stopping:
            if not self._failed(now, f"exited (code {self.proc.returncode})"):
                return False
        if self.proc is None and now >= self.restart_at and not self.stopping:
            try:
                self.start()
            except OSError as e:  # its port is taken: a server would only fail, after a long start
                return self._failed(now, f"could not start ({e})")
        return True

    def _failed(self, now: float, what: str) -> bool:
        """Schedule the next start after a failure; False: give up."""
        delay = self.restarts.after_exit(now - self.started_at)
        self.proc = None
        if delay is None:
            log.error("the MLflow server %s: %d times in a row within %g s of its start; giving up. Is port %s on "
                      "%s taken (another MLflow server)? Its output is above.", what, self.restarts.limit,
                      self.restarts.quick, self.args.port, self.args.host)
            self.failed = True
            return False
        log.warning("the MLflow server %s; starting it again in %g s", what, delay)
        self.restart_at = now + delay
        return True

    def _maybe_backup(self) -> None:
        """A copy when the database changed since the last one and --interval has passed."""
        if not self.copying or not os.path.exists(self.args.db):
            return
        mtime = os.stat(self.args.db).st_mtime_ns
        if mtime == self.saved_mtime or time.time() - self.saved_at < self.args.interval:
            return
        if self._copy():
            self.saved_mtime = mtime
        self.saved_at = time.time()

    def _copy(self) -> bool:
        try:
            backup(self.args.db, self.args.backup)
            return True
        except NotADatabase as e:  # a new server may still be creating its tables
            log.warning("not backed up: %s", e)
        except Superseded as e:
            log.error("%s. No more copies from this head; its MLflow server keeps running.", e)
            self.copying, self.failed = False, True
        except (OSError, sqlite3.Error) as e:  # the bucket or the disk hiccupped: the next round tries again
            log.warning("backup to %s failed: %s", self.args.backup, e)
        return False


def serve(args: argparse.Namespace) -> int:
    """Run the server, restart it when it dies, back the database up when it changes and at the end."""
    try:
        lock = hold_lock(args.db)
    except AlreadyServing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        start_head(args.backup, args.db)
        sup = Supervisor(args, Restarts(base=args.restart_delay, limit=args.give_up_after),
                         lambda: start_server(args.db, args.artifacts, args.host, args.port, args.workers))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(sup, "stopping", True))
        log.info("MLflow server on %s:%d (database %s, backed up to %s)", args.host, args.port, args.db, args.backup)
        return sup.run()
    finally:
        os.close(lock)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning.mlflow_store", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("serve", "backup"):
        s = sub.add_parser(name)
        s.add_argument("--db", required=True, type=local_file, help="the server's sqlite database file")
        s.add_argument("--backup", required=True, type=storage_file, help="where its copy lives (s3://..., a path)")
    sub.choices["backup"].add_argument("--take-over", action="store_true",
                                       help="replace the copy even if another head wrote it since (its runs are lost)")
    s = sub.choices["serve"]
    s.add_argument("--artifacts", required=True, type=storage_path, help="artifact store (s3://..., a path)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=COUNT, default=5000)
    s.add_argument("--workers", type=COUNT, default=2)
    s.add_argument("--interval", type=POSITIVE, default=15.0, help="seconds between copies at most (default 15)")
    s.add_argument("--restart-delay", type=NON_NEGATIVE, default=1.0,
                   help="seconds before restarting a server that died quickly, doubled each time up to 60 (default 1)")
    s.add_argument("--give-up-after", type=COUNT, default=5, help="quick deaths in a row that stop it (default 5)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "serve":
        return serve(args)
    try:
        backup(args.db, args.backup, take_over=args.take_over)
    except NotADatabase as e:
        print(f"error: --db {e}", file=sys.stderr)
        return 2
    except Superseded as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"backed up {args.db} to {args.backup}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
