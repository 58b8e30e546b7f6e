"""MLflow on a real PostgreSQL server (`--mlflow-uri postgresql+psycopg://USER:PASSWORD@HOST/DB`), which the tests
start from the `pgserver` wheel: the client, `mlflow server` on it, and a search with its resume and its report,
the password shown nowhere."""
import logging
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from postgres_helpers import Postgres
from tests_helpers import MlflowServer, run_search_cli, trial_results
from tuning import driver, report, search

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server for this module's tests, stopped (by pid) and removed whatever their outcome."""
    pg = Postgres()
    try:
        yield pg.start()
    finally:
        pg.stop()


def _runs(client, experiment: str) -> dict[str, dict]:
    """Every run of an experiment: info, metrics, params, tags."""
    eid = client.get_experiment_by_name(experiment).experiment_id
    return {r.info.run_id: r.to_dictionary() for r in client.search_runs([eid], run_view_type=ViewType.ALL)}


@pytest.fixture(scope="module")
def logged(postgres):
    """Two runs written by an MLflow client straight to the database; {run_id: run as a dict}."""
    c = MlflowClient(postgres.uri())
    eid = c.create_experiment("direct")
    for i in range(2):
        run_id = c.create_run(eid, run_name=f"run{i}", tags={"seed": str(i)}).info.run_id
        c.log_param(run_id, "lr", str(0.1 * (i + 1)))
        for step in range(3):
            c.log_metric(run_id, "loss", 1.0 / (step + 1 + i), step=step)
        c.set_terminated(run_id)
    return _runs(c, "direct")


# SQLAlchemy 2.1 and later take psycopg (3) for a plain postgresql:// too; before, only with +psycopg.
@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "postgresql"])
def test_client__runs_written_to_postgresql_are_read_back_from_its_tables(postgres, logged, scheme):
    c = MlflowClient(postgres.uri(scheme))
    assert _runs(c, "direct") == logged
    assert {d["info"]["status"] for d in logged.values()} == {"FINISHED"}
    run0 = next(r for r, d in logged.items() if d["data"]["tags"]["seed"] == "0")
    assert [m.value for m in c.get_metric_history(run0, "loss")] == [1.0, 0.5, pytest.approx(1 / 3)]
    in_table = postgres.query("select run_uuid from runs join experiments using (experiment_id) "
                              "where experiments.name = 'direct'")  # PostgreSQL's own table, not a file
    assert {r for (r,) in in_table} == set(logged)


class PostgresMlflowServer(MlflowServer):
    """`mlflow server` on a loopback port, artifacts in `root`, its database from MLFLOW_BACKEND_STORE_URI (as
    README's cluster variant runs it: the password stays out of the command line that `ps` shows)."""

    def _command(self) -> list[str]:
        cmd = super()._command()
        at = cmd.index("--backend-store-uri")
        return cmd[:at] + cmd[at + 2:]


def _start_server(root, processes, attempts: int = 3) -> PostgresMlflowServer:
    """The server on a free port; another process taking that port first costs a retry on the next."""
    for attempt in range(attempts - 1):
        try:
            return PostgresMlflowServer(root / f"try{attempt}", processes).start()
        except RuntimeError as e:
            if "address already in use" not in str(e):
                raise
    return PostgresMlflowServer(root / "last", processes).start()


def test_server__mlflow_server_on_postgresql_serves_its_runs_and_records_new_ones(postgres, logged, processes,
                                                                                 tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", postgres.uri())
    server = _start_server(tmp_path, processes)
    session = subprocess.run(["pgrep", "-s", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(session) > 1  # the server and its workers
    for pid in session:
        assert postgres.password not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    c = MlflowClient(server.uri)
    assert _runs(c, "direct") == logged
    run_id = c.create_run(c.create_experiment("through_the_server")).info.run_id
    c.log_metric(run_id, "acc", 0.9)
    c.set_terminated(run_id)
    direct = MlflowClient(postgres.uri()).get_run(run_id)
    assert direct.data.metrics == {"acc": 0.9} and direct.info.status == "FINISHED"


def _resume(storage, name: str):
    """`--resume` of a search, its tracking URI from the environment alone (the args file has it redacted)."""
    args = search.build_parser().parse_args(["--resume", "--name", name, "--storage-path", str(storage),
                                             "--verbose", "0"])
    return search.render(driver.run(args))


def test_search__tracked_on_postgresql_resumes_and_reports_the_same_table_never_showing_the_password(
        ray_cluster, postgres, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder for a database store is ./mlruns
    uri = postgres.uri()
    df, out = run_search_cli(tmp_path, "--space", "smoke", "--name", "pg", "--num-samples", "2", "--scheduler",
                             "fifo", "--mlflow-uri", uri, "--experiment", "pg")
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("pg").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == len(df) + 1 and {r.info.status for r in runs} == {"FINISHED"}

    # --resume of the finished search reruns nothing and says the same.
    before = {t: len(rs) for t, rs in trial_results(tmp_path / "pg").items()}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    resumed = _resume(tmp_path, "pg")
    assert {t: len(rs) for t, rs in trial_results(tmp_path / "pg").items()} == before
    assert resumed.split("table saved")[0] == out.split("table saved")[0]
    assert len(c.search_runs([parents[0].info.experiment_id])) == len(runs)

    # The report from the database alone gives the search's table.
    assert report.main(["--experiment", "pg", "--mlflow-uri", uri, "--out", str(tmp_path / "report")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "report" / "comparison.csv"),
                                  pd.read_csv(tmp_path / "pg" / "comparison.csv"))

    # The password: not at rest (the args file, every file of the experiment, the runs' parameters), not printed,
    # not logged.
    at_rest = {f.relative_to(tmp_path).as_posix(): f.read_bytes() for f in (tmp_path / "pg").rglob("*") if f.is_file()}
    assert "pg/mixtune_args.json" in at_rest
    params = {r.info.run_id: r.data.params for r in c.search_runs([parents[0].info.experiment_id])}
    assert params[parents[0].info.run_id]  # the search's settings
    for where, text in [("printed", out + resumed), ("logged", caplog.text), ("run parameters", repr(params)),
                        *((name, data.decode(errors="replace")) for name, data in at_rest.items())]:
        assert postgres.password not in text, where
