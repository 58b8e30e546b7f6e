"""Rebuild the comparison table and figures from the MLflow tracking store alone.

    python tuning/report.py --experiment mixtraining [--mlflow-uri URI] [--out report]

Reads every trial (child) run of the experiment, across all the searches logged there (say,
one search per data fraction gives the whole of Table 1; searches on other data, models or
budgets get rows of their own), and writes comparison.csv/md, paired.csv and accuracy_vs_cost.png.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tuning/report.py`: import this checkout's packages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from trainable.cli import local_folder, mlflow_experiment, tracking_uri  # noqa: E402
from tuning import tracking  # noqa: E402
from tuning.plots import report_files  # noqa: E402
from tuning.summary import comparison_table, format_paired, format_table, paired_stats, trial_row  # noqa: E402


def trial_frame(uri: str, experiment: str, parent_run_id: str | None = None) -> pd.DataFrame:
    """One row per trial run (`tuning.summary.trial_row`)."""
    from mlflow.entities import ViewType
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {uri}")
    query = "tags.method != ''" + (f" and tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else "")
    runs, token = [], None
    while True:
        page = c.search_runs([exp.experiment_id], query, ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    rows = [trial_row({**r.data.params, "completion": r.data.tags.get("completion"), "confirm": r.data.tags.get("confirm")},
                      r.data.metrics,
                      completed=r.data.tags.get("completed") == "true",
                      error=r.data.tags.get("error"), trial_id=r.data.tags.get("trial_id"), status=r.info.status,
                      search=r.data.tags.get("mlflow.parentRunId"))
            for r in runs]
    return pd.DataFrame(rows)


def run_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise argparse.ArgumentTypeError(f"must be an MLflow run id (32 hex digits), got {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tuning/report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default=tracking.DEFAULT_EXPERIMENT, type=mlflow_experiment,
                   help="MLflow experiment name")
    p.add_argument("--mlflow-uri", type=tracking_uri, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    p.add_argument("--parent-run", type=run_id, help="only the search with this parent run id")
    p.add_argument("--out", default="report", type=local_folder,
                   help="folder for the table and figure (default: ./report)")
    args = p.parse_args(argv)
    uri = tracking.resolve_uri(args.mlflow_uri)
    try:
        df = trial_frame(uri, args.experiment, args.parent_run)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if df.empty:
        print(f"error: experiment {args.experiment!r} has no trial runs", file=sys.stderr)
        return 2
    write_report(df, Path(args.out))
    print(f"{len(df)} trial runs from {df['search'].nunique()} search(es); written to {args.out}/")
    return 0


def write_report(df: pd.DataFrame, out: Path) -> None:
    """The search's report files (`tuning.plots.report_files`: the comparison table, the paired statistics,
    Fig. 1, the parameter studies), written to `out`; the table and the paired statistics printed."""
    table, paired = comparison_table(df), paired_stats(df)
    for name, data in report_files(df, table).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    print(format_table(table))
    print()
    print(format_paired(paired))


if __name__ == "__main__":
    sys.exit(main())
