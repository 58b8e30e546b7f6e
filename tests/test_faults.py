"""Nothing lost when a trial fails or the driver dies: trainable.faults' hooks, and the two reproductions of
lost checkpoints run for real (a failed trial retried on --resume; a driver killed right after a trial finished)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs
import pytest

from tests_helpers import NO_GPU, REPO, TINY, run_search_cli, trial_results
from trainable import faults
from tuning import checkpoints, search

SSL_SL = {"method": "ssl_sl", "seed": 0}


@pytest.fixture
def fault_at(tmp_path, monkeypatch):
    """Write a fault file (at the path trials see when Ray is running) and remove it whatever the outcome."""
    path = Path(os.environ.get(faults.ENV) or tmp_path / "fault.json")
    monkeypatch.setenv(faults.ENV, str(path))

    def write(**spec):
        path.write_text(json.dumps(spec))
        return path
    yield write
    path.unlink(missing_ok=True)


def test_check__raises_only_in_the_named_trial_and_epoch(fault_at):
    faults.check(SSL_SL, 3)  # no file: no fault
    fault_at(method="ssl_sl", epoch=3, seed=0)
    with pytest.raises(faults.InjectedFault, match="epoch 3"):
        faults.check({**SSL_SL, "alpha": 0.5}, 3)
    faults.check(SSL_SL, 2)
    faults.check({**SSL_SL, "seed": 1}, 3)
    faults.check({"method": "sl", "seed": 0}, 3)
    fault_at(method="sl")
    with pytest.raises(faults.InjectedFault):  # no epoch named: any
        faults.check({"method": "sl"}, 1)


def test_check__off_without_the_variable_and_a_driver_fault_never_fails_a_trial(fault_at, monkeypatch):
    fault_at(method="sl", kill_driver_on="trial_complete")
    faults.check({"method": "sl"}, 1)
    fault_at(method="sl")
    monkeypatch.delenv(faults.ENV)
    faults.check({"method": "sl"}, 1)


def _driver_event(path, event, config):
    code = f"from trainable import faults; faults.driver_event({event!r}, {config!r}); print('alive')"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, faults.ENV: str(path)}, timeout=120)


def test_driver_event__kills_the_driver_once_at_the_named_event_of_a_matching_trial(fault_at):
    path = fault_at(method="sl", kill_driver_on="trial_complete")
    assert _driver_event(path, "trial_complete", {"method": "ssl_sl"}).stdout == "alive\n"
    assert _driver_event(path, "trial_error", {"method": "sl"}).stdout == "alive\n"
    killed = _driver_event(path, "trial_complete", {"method": "sl"})
    assert killed.returncode == -9 and killed.stdout == "" and not path.exists()  # one kill: the file is gone


# --- the reproductions, on the session's Ray --------------------------------------------------------------

SSL_SL_ROW = "| SSL+SL |"  # in the comparison table


def _trial_of(exp: Path, method: str) -> tuple[str, list[dict]]:
    (found,) = [(t, rs) for t, rs in trial_results(exp).items() if rs[0]["config"]["method"] == method]
    return found


def _resume(tmp_path, name, capsys) -> str:
    """`python tuning/search.py --resume --name NAME` (in this process); its printed summary."""
    capsys.readouterr()
    assert search.main(["--resume", "--name", name, "--storage-path", str(tmp_path), "--verbose", "0"]) == 0
    return capsys.readouterr().out


def _saved_statuses(exp: Path) -> dict[str, str]:
    fs = pyarrow.fs.LocalFileSystem()
    return checkpoints.saved_statuses(fs, checkpoints.newest_state_file(fs, str(exp)).path)


def _all_finished_without_error(exp: Path) -> bool:
    results = trial_results(exp)
    return {rs[0]["config"]["method"] for rs in results.values()} == {"sl", "ssl_sl", "mixtraining"} and \
        all(rs[-1]["completed"] for rs in results.values()) and not list(exp.glob("*/error.txt"))


def test_search__a_failed_trial_keeps_its_checkpoints_and_resume_retries_it_from_there(ray_cluster, fault_at,
                                                                                         tmp_path, capsys):
    fault = fault_at(method="ssl_sl", epoch=3)  # SSL+SL: epochs 1-2 SSL, 3-4 SL; a checkpoint after each epoch
    argv = ["--space", "smoke", "--name", "failed", "--num-samples", "1", "--scheduler", "fifo", "--no-mlflow"]
    df, out = run_search_cli(tmp_path, *argv, "--max-failures", "0")
    assert SSL_SL_ROW not in out
    exp = tmp_path / "failed"
    trial, before = _trial_of(exp, "ssl_sl")
    assert [r["epoch"] for r in before] == [1, 2] and "ssl_sl" not in set(df.loc[df["completed"], "method"])
    assert list(exp.glob(f"*{trial}*/checkpoint_*")), "the failed trial's checkpoints were removed"

    fault.unlink()  # the cause is gone
    out = _resume(tmp_path, "failed", capsys)
    _, after = _trial_of(exp, "ssl_sl")
    # retried from its epoch-2 checkpoint: Tune's iteration count goes on (a fresh start would count from 1,
    # even with a reused SSL prefix)
    assert [(r["epoch"], r["training_iteration"]) for r in after] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert all(rs[-1]["completed"] for rs in trial_results(exp).values()) and SSL_SL_ROW in out
    assert set(_saved_statuses(exp).values()) == {"TERMINATED"}
    assert len(list(exp.glob("*/checkpoint_*"))) == 1  # every trial finished: only the best model's is left


def test_search__a_driver_killed_right_after_a_trial_finished_resumes_with_no_trial_failing(
        ray_cluster, fault_at, tmp_path, processes, capsys):
    # SL trains 3 epochs here, one at a time: a snapshot is forced after its second checkpoint (Tune's
    # num_to_keep=2), none after its third and final one, and none on a timer: the driver is killed in the
    # window where the trial finished but the saved state still lists it RUNNING with its epoch-2 checkpoint.
    fault_at(method="sl", kill_driver_on="trial_complete")
    cmd = [sys.executable, str(REPO / "tuning" / "search.py"), *TINY, "--space", "smoke", "--name", "killed",
           "--num-samples", "1", "--scheduler", "fifo", "--storage-path", str(tmp_path), "--address", ray_cluster,
           "--epoch-scale", "1.5", "--max-concurrent", "1", "--no-mlflow"]
    driver = processes.start(cmd, log=tmp_path / "driver.log", env={**NO_GPU, "TUNE_GLOBAL_CHECKPOINT_S": "3600"})
    assert driver.wait(timeout=600) == -9
    log = (tmp_path / "driver.log").read_text()
    assert "killing the driver after trial_complete" in log, log[-3000:]
    exp = tmp_path / "killed"
    trial, _ = _trial_of(exp, "sl")
    assert _saved_statuses(exp)[trial] == "RUNNING"  # finished, but not in the saved state: the window

    _resume(tmp_path, "killed", capsys)
    assert _all_finished_without_error(exp)
    _, results = _trial_of(exp, "sl")
    # continued from the checkpoint the saved state names (epoch 2), not from scratch (result.json may or may
    # not have had epoch 3's line written before the kill)
    assert {(r["epoch"], r["training_iteration"]) for r in results} == {(1, 1), (2, 2), (3, 3)}
    assert results[-1]["iterations_since_restore"] == 1 and results[-1]["epoch"] == 3
