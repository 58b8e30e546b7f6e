"""A real PostgreSQL server for the tests, run from the binaries that the `pgserver` wheel ships (offline).

It listens on a loopback port with password authentication (scram-sha-256), as a managed database would,
and has one user with a password and one database for MLflow. PostgreSQL refuses to run as root: when the
tests do, the server runs as `nobody`, its data in a folder of its own under the system's temp folder
(pytest's are private to root). Stopped by its pid, its data removed.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests_helpers import free_port


def binaries() -> Path:
    """The wheel's bin folder, found without importing `pgserver` (its import sets up files of its own)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None:
        raise RuntimeError("the tests' PostgreSQL comes from the pgserver wheel: pip install -e .[dev]")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


class Postgres:
    """`Postgres().start()`: a server; `.uri()` its SQLAlchemy URL for the MLflow database; `.stop()`."""

    user, password, database = "alice", "Pw-9f3kQ7zL", "mixtune"  # the password is searched for in outputs
    ADMIN = "postgres"

    def __init__(self):
        self.bin = binaries()
        self.root = Path(tempfile.mkdtemp(prefix="mixtune-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._as = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        self.root.chmod(0o700)

    def uri(self, scheme: str = "postgresql+psycopg", user: str | None = None, password: str | None = None,
            database: str | None = None) -> str:
        return (f"{scheme}://{user or self.user}:{password or self.password}@127.0.0.1:{self.port}/"
                f"{database or self.database}")

    def start(self, attempts: int = 3) -> "Postgres":
        """initdb, then the server on a free port (another taken between the pick and the bind: the next
        port), then the user and the database."""
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        self._run(["initdb", "-D", str(self.data), "-U", self.ADMIN, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                   "--encoding=UTF8", "--no-sync"])
        for attempt in range(attempts):
            if self._serve(free_port()):
                break
            if attempt == attempts - 1 or "could not bind" not in self.log.read_text():
                raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")
        self._sql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'",
                  f"CREATE DATABASE {self.database} OWNER {self.user}")
        return self

    def _run(self, cmd: list[str]) -> None:
        subprocess.run([str(self.bin / cmd[0]), *cmd[1:]], check=True, capture_output=True, **self._as)

    def _serve(self, port: int, timeout: float = 120) -> bool:
        """Whether the server started on `port` and accepts connections."""
        import psycopg
        self.port = port
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"port={port}", "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **self._as)
        deadline = time.time() + timeout
        while self.proc.poll() is None and time.time() < deadline:
            try:
                psycopg.connect(self.uri("postgresql", self.ADMIN, database="postgres"), connect_timeout=5).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.2)
        self.stop_server()
        return False

    def _sql(self, *statements: str) -> None:
        import psycopg
        with psycopg.connect(self.uri("postgresql", self.ADMIN, database="postgres"), autocommit=True) as con:
            for statement in statements:
                con.execute(statement)

    def query(self, sql: str) -> list[tuple]:
        """Rows of a query on the MLflow database, as its user."""
        import psycopg
        with psycopg.connect(self.uri("postgresql")) as con:
            return con.execute(sql).fetchall()

    def stop_server(self) -> None:
        """A fast shutdown (SIGINT), then SIGKILL to its whole session if it does not end."""
        if self.proc is None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        try:
            self.stop_server()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
