"""Helpers shared by the tests: the search CLI in-process, Ray's result files, processes ended by pid."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.fs

TINY = ["--dataset", "digits", "--model", "test", "--verbose", "0", "--cpus-per-trial", "1", "--confirm-seeds", "0"]
REPO = Path(__file__).resolve().parent.parent  # where `python -m tuning...` finds the package
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # for processes that must not see a GPU, whatever the machine has


def run_search_cli(tmp_path, *argv):
    """Run tuning/search.py in this process (on the session's Ray); returns (trial rows, printed summary)."""
    from tuning import driver, search  # here: conftest imports this module, and the fast tests need no driver
    parser = search.build_parser()
    args = parser.parse_args([*TINY, "--storage-path", str(tmp_path), *argv])
    search.validate(args, parser)
    outcome = driver.run(args)
    return outcome.df, search.render(outcome)


def trial_results(exp_dir: Path) -> dict[str, list[dict]]:
    """Every trial's reported results, read from Ray's result.json files.

    Read while Ray writes them: a last line still being written is left out, not an error.
    """
    out = {}
    for f in Path(exp_dir).glob("*/result.json"):
        lines = []
        for line in f.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                break
        if lines:
            out[lines[0]["trial_id"]] = lines
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_session(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Every process of the session `proc` leads (started with start_new_session=True), by pid."""
    pids = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in [*pids, str(proc.pid)]:
        try:
            os.kill(int(pid), sig)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kill_session(proc, signal.SIGKILL)


class Processes:
    """Processes a test starts, each leading its own session, all ended when the test ends (pass or fail)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, log: Path | None = None, env: dict | None = None, **kw) -> subprocess.Popen:
        out = open(log, "w") if log else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})}, **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            kill_session(proc, signal.SIGTERM if proc.poll() is None else signal.SIGKILL)


class MlflowServer:
    """A real `mlflow server` on a loopback port with a sqlite backend, that a test may stop and start again.

    Given a `bucket` folder it runs as on a cluster's head, through the supervisor
    `python -m tuning.mlflow_store serve`: the database `root/mlflow.db` is restored from and copied to
    `bucket/mlflow.db` (every `interval` seconds at most), and the artifacts go to `bucket/artifacts`.
    """

    def __init__(self, root: Path, processes: Processes, port: int | None = None, bucket: Path | None = None,
                 interval: float = 2):
        self.root, self.processes, self.port = Path(root), processes, port or free_port()
        self.bucket, self.interval = (Path(bucket) if bucket else None), interval
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = self.root / "mlflow.db"
        self.backup = self.bucket / "mlflow.db" if self.bucket else None
        self.proc = self.log = None

    def _command(self) -> list[str]:
        if self.bucket is None:
            return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
                    "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                    "--port", str(self.port), "--workers", "1"]
        return [sys.executable, "-m", "tuning.mlflow_store", "serve", "--db", str(self.db),
                "--backup", str(self.backup), "--artifacts", str(self.bucket / "artifacts"), "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", "1", "--interval", str(self.interval)]

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / f"server-{len(self.processes.procs)}.log"
        self.proc = self.processes.start(self._command(), log=self.log, env={"MLFLOW_DISABLE_TELEMETRY": "true"},
                                         cwd=REPO)
        deadline = time.time() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.time() > deadline:
                logs = "".join(p.read_text()[-2000:] for p in self.root.glob("server-*.log"))
                raise RuntimeError(f"mlflow server did not start: {logs}")
            time.sleep(0.5)
        return self

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.uri}/health", timeout=2).read().strip() == b"OK"
        except OSError:
            return False

    def server_pid(self) -> int | None:
        """The `mlflow server` process: the supervisor's child (None between two), or the process started."""
        if self.bucket is None:
            return self.proc.pid
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return int(children[0]) if children else None

    def stop(self) -> None:
        """Killed at once, as by a crash: the supervisor first (else it would start the server again), then
        the server, which leads a session of its own."""
        server = self.server_pid()
        kill_session(self.proc, signal.SIGKILL)
        if server != self.proc.pid and server is not None:
            try:
                os.killpg(server, signal.SIGKILL)
            except ProcessLookupError:
                pass


def saved_checkpoint_epochs(exp_dir: Path) -> dict[str, int]:
    """Trial id -> the epoch of the checkpoint the newest saved experiment state resumes it from (0: none)."""
    from ray.tune.experiment import Trial

    from tuning import checkpoints
    newest = checkpoints.newest_state_file(pyarrow.fs.LocalFileSystem(), str(exp_dir))
    out = {}
    for trial_json, run_metadata in json.loads(Path(newest.path).read_text())["trial_data"]:
        trial = Trial.from_json_state(trial_json, stub=True)
        trial.restore_run_metadata(run_metadata)
        latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
        out[trial.trial_id] = int(latest.metrics["epoch"]) if latest is not None else 0
    return out
