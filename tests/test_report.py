"""tuning/report.py: the comparison rebuilt from MLflow alone, its options and its error exits."""
import statistics

import pandas as pd
import pytest
from mlflow import MlflowClient

from tuning import report, tracking


def test_report__statistics_rebuilt_from_the_server_match_the_runs_metrics(tracked_search, mlflow_server, tmp_path):
    df, _, c = tracked_search
    assert report.main(["--experiment", "tracked", "--mlflow-uri", mlflow_server, "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "comparison.csv")
    runs = c.search_runs([c.get_experiment_by_name("tracked").experiment_id], "tags.method = 'sl'")
    accs = [r.data.metrics["test_acc"] for r in runs]
    assert len(accs) == 2  # two seeds
    sl = table[table["method"] == "sl"].iloc[0]
    assert sl["test_acc_mean"] == pytest.approx(statistics.mean(accs))
    assert sl["test_acc_std"] == pytest.approx(statistics.stdev(accs))
    assert sl["seeds"] == 2
    assert (tmp_path / "accuracy_vs_cost.png").stat().st_size > 1000


def test_report__parent_run_option_reads_one_search_only(tracked_search, mlflow_server, tmp_path, capsys):
    df, _, c = tracked_search
    parent = [r for r in c.search_runs([c.get_experiment_by_name("tracked").experiment_id])
              if "mlflow.parentRunId" not in r.data.tags][0].info.run_id
    assert report.main(["--experiment", "tracked", "--mlflow-uri", mlflow_server, "--parent-run", parent,
                        "--out", str(tmp_path)]) == 0
    assert f"{len(df)} trial runs from 1 search(es)" in capsys.readouterr().out
    assert report.main(["--experiment", "tracked", "--mlflow-uri", mlflow_server, "--parent-run", "0" * 32,
                        "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("experiment, message", [("nope", "no MLflow experiment 'nope'"),
                                                 ("empty", "experiment 'empty' has no trial runs")])
def test_report__missing_or_empty_experiment_exits_2_with_a_message(tmp_path, capsys, experiment, message):
    uri = f"sqlite:///{tmp_path}/m.db"
    tracking.experiment_id(MlflowClient(uri), "empty", uri)
    assert report.main(["--experiment", experiment, "--mlflow-uri", uri, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
