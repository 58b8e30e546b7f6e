"""Every numeric and path-like flag of the three commands is checked before anything starts: one line naming
the flag and the accepted range, exit code 2, no traceback."""
import math
import os

import pytest

from trainable import train
from tuning import report, search

NAN, INF = str(math.nan), str(math.inf)

SEARCH_BAD = [  # (flag, bad values, what the message says)
    ("--num-samples", ["0", "-3", "2.5", NAN, "100001"], "must be in [1, 100000]"),
    ("--seeds", ["0", "x", "1001"], "must be in [1, 1000]"),
    ("--fraction", ["0", "1.5", "-0.1", NAN, INF], "must be in (0, 1]"),
    ("--epoch-scale", ["0", "-1", NAN, INF, "1e307", "100.5"], "must be in (0, 100]"),
    ("--grace-period", ["0"], "must be at least 1"),
    ("--search-seed", ["-1"], "must be at least 0"),
    ("--prefix-store-gb", ["0", "-1", NAN, INF], "must be positive"),
    ("--max-concurrent", ["0"], "must be at least 1"),
    ("--cpus-per-trial", ["0", "-1", NAN, INF], "must be positive"),
    ("--gpus-per-trial", ["-0.5", NAN, INF], "must be at least 0"),
    ("--gpus-per-trial", ["1.5"], "above 1 it must be a whole number of GPUs"),
    ("--checkpoint-every", ["0"], "must be at least 1"),
    ("--max-failures", ["-1", "101"], "must be in [0, 100]"),
    ("--batch-size", ["0"], "must be at least 1"),
    ("--ssl-lr", ["0", "-1e-3", NAN, INF], "must be positive"),
    ("--sl-lr", ["0", NAN], "must be positive"),
    ("--val-frac", ["-0.1", "1", NAN], "must be in [0, 1)"),
    ("--name", ["a/b", "..", "", "-x", "a b"], "must be one folder name"),
    ("--storage-path", ["ftp://host/x", "s3://"], "must be a local folder or a URI"),
    ("--mlflow-uri", ["ftp://host", "sqlite://relative.db"], "must be an MLflow tracking URI"),
    ("--address", ["nowhere", "host:port"], "must be auto, local or HOST:PORT"),
    ("--experiment", [" "], "must be a non-empty name"),
    ("--device", ["gpu", "cuda:x"], "must be auto, cpu, cuda or cuda:N"),
]

TRAIN_BAD = [
    ("--epochs", ["0", "-1", "1.5"], "must be at least 1"),
    ("--e-ssl", ["-1"], "must be at least 0"),
    ("--e-sl", ["0"], "must be at least 1"),
    ("--alpha", ["1.5", "-0.1", NAN, INF], "must be in [0, 1]"),
    ("--rho", ["2", NAN], "must be in [0, 1]"),
    ("--lam", ["-1", NAN], "must be in [0, 1]"),
    ("--seed", ["-1"], "must be at least 0"),
    ("--fraction", ["0", NAN], "must be in (0, 1]"),
    ("--threads", ["0"], "must be at least 1"),
    ("--batch-size", ["0"], "must be at least 1"),
    ("--sl-lr", [INF], "must be positive"),
    ("--val-frac", ["1", INF], "must be in [0, 1)"),
]

REPORT_BAD = [
    ("--parent-run", ["abc", "G" * 32], "must be an MLflow run id"),
    ("--mlflow-uri", ["ftp://x"], "must be an MLflow tracking URI"),
    ("--experiment", [""], "must be a non-empty name"),
]


def _cases(table):
    return [(flag, value, message) for flag, values, message in table for value in values]


def _exit(main, argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("flag, value, message", _cases(SEARCH_BAD))
def test_search_flags__bad_values_stop_at_once_naming_the_flag(flag, value, message, capsys, tmp_path):
    assert _exit(search.main, ["--storage-path", str(tmp_path), f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert flag in err and message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing started


@pytest.mark.parametrize("flag, value, message", _cases(TRAIN_BAD))
def test_train_flags__bad_values_stop_at_once_naming_the_flag(flag, value, message, capsys):
    assert _exit(train.main, [f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert flag in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value, message", _cases(REPORT_BAD))
def test_report_flags__bad_values_stop_at_once_naming_the_flag(flag, value, message, capsys):
    assert _exit(report.main, [f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert flag in err and message in err and "Traceback" not in err


def test_flags__a_path_that_is_a_file_is_refused_where_a_folder_is_expected(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert _exit(search.main, ["--storage-path", str(f)]) == 2
    assert _exit(train.main, ["--data-dir", str(f)]) == 2
    assert _exit(report.main, ["--out", str(f)]) == 2
    assert capsys.readouterr().err.count("must be a folder path") == 3


# --- roles: what --resume may change and what --warm-start must match, derived from each flag's declaration ---

from tuning import flags  # noqa: E402


def test_roles__every_search_flag_has_one_and_resume_and_warm_start_sets_follow_from_them():
    roles = flags.roles(search.build_parser())
    assert set(roles.values()) <= set(flags.ROLES) and "space" in roles and "mlflow_uri" in roles
    # runtime config fields are resumable (device was missing from the hand-kept list); the tracking switch too
    assert {"device", "data_dir", "download", "storage_path", "mlflow_uri", "no_mlflow", "max_failures"} \
        <= set(flags.RESUMABLE)
    assert {"dataset", "model", "epoch_scale", "seeds", "space", "batch_size", "amp"} <= set(flags.WARM_START)
    assert not set(flags.RESUMABLE) & set(flags.WARM_START)
    assert "num_samples" not in flags.RESUMABLE and "num_samples" not in flags.WARM_START  # SEARCH


def test_roles__a_flag_declared_without_one_fails_when_the_parser_is_built(monkeypatch):
    real = flags._tracking_args

    def with_a_new_flag(g):
        real(g)
        g.add_argument("--new-knob", type=int, default=3)  # no role
    monkeypatch.setattr(flags, "_tracking_args", with_a_new_flag)
    with pytest.raises(TypeError, match="flag --new-knob has no role"):
        flags.build_parser()


def test_configure_environment__mlflow_fails_fast_unless_the_user_chose_otherwise(monkeypatch):
    """The delivery queue retries by itself: MLflow's client must not retry and wait minutes per call first."""
    from tuning import tracking
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own choice stays
    search.configure_environment()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" == tracking.HTTP_ENV["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7" and tracking.HTTP_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
