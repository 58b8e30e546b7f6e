"""`tuning/search.py` end to end on one session-wide Ray instance: tiny model, bundled digits."""
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.fs
import pytest

from tests_helpers import (NO_GPU, TINY, free_port, kill_session, run_search_cli, saved_checkpoint_epochs,
                           trial_results)
from trainable import storage
from tuning import checkpoints, driver, experiment, flags, ray_internals, search
from tuning.studies import pareto_mask

REPO = Path(__file__).resolve().parent.parent


def run_search(tmp_path, *argv):
    df, out = run_search_cli(tmp_path, *argv)
    print(out)
    return df


@pytest.fixture(scope="module")
def asha_search(ray_cluster, tmp_path_factory):
    """One phase-aware ASHA search with Optuna and the Pareto objective, one trial at a time (so ASHA sees
    trials in a fixed order and stops the same ones every run), tracked in the default embedded store."""
    tmp = tmp_path_factory.mktemp("asha")
    cwd, uri = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(tmp)
    try:
        df, out = run_search_cli(tmp, "--space", "smoke", "--name", "asha", "--num-samples", "4", "--fraction", "0.5",
                                 "--grace-period", "1", "--max-concurrent", "1", "--objective", "pareto")
    finally:
        os.chdir(cwd)
        if uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = uri
    print(out)
    return df, out, tmp


def test_search__asha_runs_baselines_to_the_end_and_stops_only_trials_that_trained_their_classifier(asha_search):
    df, out, _ = asha_search
    base = df[df["method"] != "mixtraining"]
    assert sorted(base["method"]) == ["sl", "ssl_sl"]  # once each: one budget, one fraction, one seed
    mix = df[df["method"] == "mixtraining"]
    assert len(mix) == 4 and df["error"].isna().all()
    assert set(mix["alpha"]) <= {0.1, 0.9} and set(mix["rho"]) <= {0.5, 1.0}
    assert base["completed"].all()
    stopped = mix[~mix["completed"]]
    assert len(stopped) >= 1, "ASHA stopped nothing: the run shows nothing about early stopping"
    assert (stopped["sl_epochs"] >= 1).all()  # never during the SSL-only phase
    assert f"({len(stopped)} stopped early by the scheduler, 0 failed)" in out
    assert "| 0.5 | 2 | SL |" in out and "| 0.5 | 2 | SSL+SL |" in out and "MixTraining" in out


def test_search__pareto_objective_prints_the_non_dominated_configurations(asha_search):
    df, out, _ = asha_search
    section = out.split("== Pareto front (validation accuracy vs compute) ==")[1].strip().splitlines()
    front = [line for line in section[:next(i for i, x in enumerate(section) if x.startswith(("SSL-prefix", "trials:")))]]
    fin = df[df["completed"]].groupby(["method", "epochs", "alpha", "rho"]).agg(
        val_acc=("val_acc", "mean"), compute_tflop=("compute_tflop", "mean")).reset_index()
    expected = fin[[not ((fin["val_acc"] >= a) & (fin["compute_tflop"] <= c) & ((fin["val_acc"] > a) |
                    (fin["compute_tflop"] < c))).any() for a, c in zip(fin["val_acc"], fin["compute_tflop"])]]
    assert 1 <= len(expected) == len(front) - 1  # a header line, then one line per configuration
    assert pareto_mask(fin["val_acc"], fin["compute_tflop"]) == [i in expected.index for i in fin.index]


def test_search__only_the_best_models_checkpoint_is_left_when_the_search_ends(asha_search):
    df, _, tmp = asha_search
    left = {p.parent.name.split("_")[1] for p in (tmp / "asha").glob("MixTrainable_*/checkpoint_*")}
    assert len(list((tmp / "asha").glob("MixTrainable_*/checkpoint_*"))) == 1  # Tune kept one per trial, then pruned
    mix = df[(df["method"] == "mixtraining") & df["completed"]]
    assert left <= set(mix.loc[mix["val_acc"] == mix["val_acc"].max(), "trial_id"])  # the best (or a tie of it)


def test_search__tracked_in_the_default_embedded_store_with_the_table_saved(asha_search):
    df, _, tmp = asha_search
    assert (tmp / "asha" / "comparison.csv").exists() and (tmp / "asha" / "accuracy_vs_cost.png").exists()
    from mlflow import MlflowClient
    assert (tmp / "mlflow.db").exists()
    c = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("mixtraining").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == len(df) == 6
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_search__resuming_a_finished_search_reruns_nothing_and_reports_the_same(asha_search, monkeypatch):
    df, out, tmp = asha_search
    before = {t: len(rs) for t, rs in trial_results(tmp / "asha").items()}
    # A call the last driver could not deliver (MLflow was away at its end) waits in the experiment's journal:
    # `search --resume` delivers it first.
    from mlflow import MlflowClient

    from tuning import delivery, tracking
    from tuning.mlflow_calls import SetTag
    monkeypatch.setattr(delivery, "RETRY_S", 0.1)
    monkeypatch.setattr(delivery, "DOWN_WAIT_S", 0.5)
    for key, value in tracking.HTTP_ENV.items():  # as the command sets them: no minute of MLflow's own retries
        monkeypatch.setenv(key, value)
    parent = (tmp / "asha" / driver.PARENT_FILE).read_text().strip()
    away = tracking.new_delivery(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    away.load(storage.Folder(str(tmp / "asha")))
    away.put(SetTag(run=parent, key="left_behind", value="delivered on resume"))
    assert away.finish(timeout=60) == 1 and (tmp / "asha" / tracking.PENDING_DIR).exists()
    args = search.build_parser().parse_args(["--resume", "--name", "asha", "--storage-path", str(tmp), "--verbose",
                                             "0"])
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        outcome = driver.run(args)
    finally:
        os.chdir(cwd)
    assert {t: len(rs) for t, rs in trial_results(tmp / "asha").items()} == before
    assert search.render(outcome).split("table saved")[0] == out.split("table saved")[0]
    assert MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_run(parent).data.tags["left_behind"] == "delivered on resume"
    assert not (tmp / "asha" / tracking.PENDING_DIR).exists()


def test_search__grid_over_paper_space_runs_each_combination_once_plus_baselines(ray_cluster, tmp_path):
    df = run_search(tmp_path, "--space", "paper", "--search", "grid", "--scheduler", "fifo", "--name", "grid",
                    "--epoch-scale", "0.02", "--fraction", "0.05", "--checkpoint-every", "100", "--no-mlflow")
    mix = df[df["method"] == "mixtraining"]
    assert len(mix) == 5 * 4 * 3  # alpha x rho x epochs
    assert (mix.groupby(["alpha", "rho"]).size() == 3).all()  # the three budgets (50/75/100 -> 1/2/2 epochs)
    assert sorted(set(zip(mix["alpha"], mix["rho"]))) == sorted(
        (a, r) for a in (0.01, 0.1, 0.5, 0.9, 0.99) for r in (0.25, 0.5, 0.75, 1.0))
    base = df[df["method"] != "mixtraining"]
    assert sorted(zip(base["method"], base["epochs"])) == [("sl", 1), ("sl", 2), ("ssl_sl", 1), ("ssl_sl", 2)]
    assert df["completed"].all() and df["error"].isna().all()


def test_search__table1_protocol_runs_the_papers_configuration_on_every_seed_to_the_end(ray_cluster, tmp_path):
    df, out = run_search_cli(tmp_path, "--space", "table1", "--epoch-scale", "0.02", "--seeds", "2", "--fraction",
                             "0.5", "--name", "t1", "--no-mlflow", "--val-frac", "0")  # nothing chosen: every image trains
    assert sorted(df["method"]) == ["mixtraining"] * 2 + ["sl"] * 2 + ["ssl_sl"] * 2
    assert (df["val_frac"] == 0).all() and df["val_acc"].isna().all()
    assert "MixTraining at fraction 0.5, 2 epochs: alpha=0.5 rho=0.5 lam=0.5 (no validation (--val-frac 0);" in out
    assert df["completed"].all() and (df["epochs"] == 2).all()
    mix = df[df["method"] == "mixtraining"]
    assert (mix[["alpha", "rho", "lam"]] == 0.5).all().all() and sorted(mix["seed"]) == [0, 1]
    rows = [line for line in out.splitlines() if line.startswith("| 0.5 | 2 |")]
    assert [r.split(" | ")[2] for r in rows] == ["SL", "SSL+SL", "MixTraining"]
    assert all(r.split(" | ")[4] == "2" for r in rows)  # n: both seeds, every method
    mix_row = rows[2].split(" | ")
    assert mix_row[7].endswith("x") and mix_row[8].endswith("x") and mix_row[10] == "1"  # speedups; 1 config
    assert "MixTraining - SSL+SL (fraction 0.5, epochs 2):" in out and "95% CI [" in out


def test_search__trials_take_datasets_from_the_object_store_not_from_data_dir(ray_cluster, tmp_path, monkeypatch):
    from test_datasets import publish_checksums, write_cifar
    data_dir = tmp_path / "data"
    write_cifar(data_dir, "cifar-10-batches-py", {f"data_batch_{i}": 8 for i in range(1, 6)} | {"test_batch": 8},
                "labels", "batches.meta", "label_names")
    publish_checksums(monkeypatch, "cifar10", data_dir / "cifar-10-batches-py")
    loads = []

    def load_then_delete(name, where, download=False):
        loaded = load_dataset(name, where, download)
        loads.append(name)
        shutil.rmtree(data_dir)  # from here on, a trial that reads data_dir fails with MissingDataError
        return loaded

    load_dataset = driver.load_dataset
    monkeypatch.setattr(driver, "load_dataset", load_then_delete)
    df = run_search(tmp_path, "--dataset", "cifar10", "--data-dir", str(data_dir), "--space", "smoke",
                    "--name", "objstore", "--num-samples", "2", "--scheduler", "fifo", "--no-mlflow")
    assert loads == ["cifar10"]  # read once, by the driver
    assert len(df) == 4 and df["error"].isna().all() and df["completed"].all()
    assert df["test_acc"].between(0, 1).all()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).digest() for p in root.rglob("*") if p.is_file()}


def test_start_ray__starts_a_fresh_local_instance_unless_given_an_address(monkeypatch):
    """address=None would join any Ray left running on the machine (another user's, a crashed search's)."""
    import argparse
    calls = []
    monkeypatch.setattr(driver.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(driver.ray, "init", lambda **kw: calls.append(kw))
    for address in (None, "10.0.0.1:6379"):
        driver.start_ray(argparse.Namespace(address=address, verbose=0))
    assert [c["address"] for c in calls] == ["local", "10.0.0.1:6379"]
    assert driver.REPO in calls[0]["runtime_env"]["env_vars"]["PYTHONPATH"].split(os.pathsep)  # this checkout
    assert calls[1]["runtime_env"] is None  # a cluster's nodes have their own install


def test_search__resumes_after_the_driver_is_killed_at_a_new_location_without_rerunning_or_duplicating(
        ray_cluster, mlflow_server, tmp_path, processes):
    name = "killed"
    cmd = [sys.executable, str(REPO / "tuning" / "search.py"), *TINY, "--space", "smoke", "--name", name,
           "--num-samples", "4", "--scheduler", "fifo", "--storage-path", str(tmp_path), "--address", ray_cluster,
           "--max-concurrent", "2", "--mlflow-uri", mlflow_server, "--experiment", "killed"]
    proc = processes.start(cmd, log=tmp_path / "driver.log", env=NO_GPU)
    exp = tmp_path / name
    # Killed once Tune's saved state lists two trials finished: those are never rerun. (A trial that ends in
    # the seconds before the next snapshot is still RUNNING there and redoes its last epochs on resume.)
    fs, path = pyarrow.fs.LocalFileSystem(), str(exp)
    deadline = time.time() + 180
    while time.time() < deadline:
        saved_finished = checkpoints.finished_in_saved_state(fs, path) if exp.exists() else set()
        if len(saved_finished) >= 2:
            break
        time.sleep(0.2)
    kill_session(proc)
    assert len(saved_finished) >= 2, "the search never finished two trials"
    before = trial_results(exp)
    finished_before = {t: len(before[t]) for t in saved_finished}
    assert all(before[t][-1].get("done") for t in finished_before)
    assert len(before) < 6 or len(finished_before) < 6, "killed too late to test anything"

    # The experiment is moved (say, to a bigger disk) and resumed there; its old copy must stay as it was.
    moved = tmp_path / "moved"
    shutil.copytree(exp, moved / name)
    resume_from = saved_checkpoint_epochs(moved / name)  # what each trial continues from
    old = _tree(exp)
    argv = ["--resume", "--name", name, "--storage-path", str(moved), "--verbose", "0"]
    df = driver.run(search.build_parser().parse_args(argv), flags.given_flags(argv)).df
    assert len(df) == 6 and df["completed"].all() and df["error"].isna().all()
    assert _tree(exp) == old, "the resumed search touched the experiment's old location"
    exp = moved / name
    after = trial_results(exp)
    assert len(after) == 6
    for t, n in finished_before.items():
        assert len(after[t]) == n, f"finished trial {t} was rerun"
    # MLflow: one parent and exactly one child per trial, none left RUNNING.
    from mlflow import MlflowClient
    c = MlflowClient(mlflow_server)
    runs = c.search_runs([c.get_experiment_by_name("killed").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 7 and sorted(r.data.tags["trial_id"] for r in children) == sorted(after)
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in children:
        t = r.data.tags["trial_id"]
        epochs, first = [row["epoch"] for row in after[t]], after[t][0]["ssl_epochs_reused"] + 1
        # A trial running at the kill continued from the checkpoint the saved state names (from its start
        # only without one): its epochs run first..k, then again from that checkpoint to its end.
        redo = next((i for i in range(1, len(epochs)) if epochs[i] <= epochs[i - 1]), len(epochs))
        assert epochs[:redo] == list(range(first, first + redo)), (t, epochs)
        if redo < len(epochs):
            k = resume_from.get(t, 0)  # (without a checkpoint it may start from a longer SSL prefix now)
            assert (epochs[redo] == k + 1) if k else (epochs[redo] >= first), (t, epochs, k)
            assert epochs[redo:] == list(range(epochs[redo], epochs[-1] + 1)), (t, epochs)
        # Every epoch it trained is in the trial's one run, at most as often as it was trained (an epoch
        # redone after the kill may be there twice, or once where its first report died with the driver).
        steps = Counter(m.step for m in c.get_metric_history(r.info.run_id, "train_time_s"))
        assert set(steps) == set(epochs) and all(n <= epochs.count(e) for e, n in steps.items()), (t, steps, epochs)


def test_search__ctrl_c_stops_with_a_resume_hint_and_resume_finishes(ray_cluster, tmp_path, processes):
    store = f"sqlite:///{tmp_path}/m.db"
    cmd = [sys.executable, str(REPO / "tuning" / "search.py"), *TINY, "--space", "smoke", "--name", "ctrlc",
           "--num-samples", "2", "--scheduler", "fifo", "--storage-path", str(tmp_path), "--address", ray_cluster,
           "--mlflow-uri", store, "--experiment", "ctrlc"]
    proc = processes.start(cmd, log=tmp_path / "driver.log", env=NO_GPU)
    deadline = time.time() + 180
    while time.time() < deadline and not any(len(rs) >= 2 for rs in trial_results(tmp_path / "ctrlc").values()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    out = (tmp_path / "driver.log").read_text()
    assert proc.returncode == 130, out[-2000:]
    assert "continue with: python tuning/search.py --resume --name ctrlc" in out
    assert "== PARTIAL: the search stopped before its end" in out
    from mlflow import MlflowClient
    c = MlflowClient(store)
    eid = c.get_experiment_by_name("ctrlc").experiment_id
    parent = [r for r in c.search_runs([eid]) if "mlflow.parentRunId" not in r.data.tags][0]
    assert parent.info.status == "KILLED"
    args = search.build_parser().parse_args(["--resume", "--name", "ctrlc", "--storage-path", str(tmp_path),
                                             "--verbose", "0"])
    df = driver.run(args).df
    assert len(df) == 4 and df["completed"].all()
    assert c.get_run(parent.info.run_id).info.status == "FINISHED"


def test_search__pbt_adapts_alpha_within_a_population_sharing_one_plan(ray_cluster, tmp_path):
    df = run_search(tmp_path, "--space", "pbt", "--scheduler", "pbt", "--search", "random", "--name", "pbt",
                    "--num-samples", "4", "--epoch-scale", "0.06", "--grace-period", "1", "--no-baselines",
                    "--no-mlflow", "--checkpoint-every", "1")
    assert len(df) == 4 and df["completed"].all() and df["error"].isna().all()
    assert set(df["rho"]) == {0.5} and set(df["epochs"]) == {6}
    alphas = {t: [r["alpha"] for r in rs] for t, rs in trial_results(tmp_path / "pbt").items()}
    assert any(len(set(a)) > 1 for a in alphas.values()), f"PBT never perturbed alpha: {alphas}"


def test_search__impossible_resource_request_fails_fast(ray_cluster, tmp_path, capsys):
    rc = search.main([*TINY, "--space", "smoke", "--storage-path", str(tmp_path), "--gpus-per-trial", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no node can run a trial needing 1 CPU and 1 GPU" in err and "--gpus-per-trial 0" in err


@pytest.mark.parametrize("argv, message", [
    (["--space", "nope"],
     "argument --space: nope: not a built-in space (continuous, paper, pbt, smoke, table1) nor a .yaml/.yml/.json file"),
    (["--search", "bayes"], "argument --search: invalid choice: 'bayes'"),
    (["--scheduler", "hyperband"], "argument --scheduler: invalid choice"),
    (["--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet'"),
    (["--fraction", "1.5"], "--fraction: must be in (0, 1], got 1.5"),
    (["--seeds", "0"], "--seeds: must be in [1, 1000]"),
    (["--resume"], "--resume needs --name"),
    (["--scheduler", "pbt", "--search", "random"], "--scheduler pbt with --space paper: the space varies rho, epochs; "
                                                   "PBT copies weights"),
    (["--scheduler", "pbt", "--space", "pbt"], "--scheduler pbt with --space pbt: use --search random or grid"),
    (["--space", "table1", "--scheduler", "asha"], "--scheduler asha: --space table1 has nothing to search: its one "
                                                   "configuration runs on every seed to the end"),
    (["--space", "table1", "--search", "optuna"], "--search optuna: --space table1"),
    (["--val-frac", "0"], "--val-frac 0: --space paper with --scheduler asha chooses on validation accuracy"),
    (["--val-frac", "0", "--space", "smoke", "--scheduler", "fifo"], "--val-frac 0: --space smoke with --scheduler fifo"),
])
def test_search__invalid_flags_fail_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        search.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_search__paper_setting_offline_fails_with_the_missing_data_error(tmp_path, capsys):
    rc = search.main(["--space", "paper", "--data-dir", str(tmp_path / "data"), "--storage-path", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "digits" in err and "Traceback" not in err


def test_search__resume_of_an_experiment_saved_before_a_flag_existed_uses_its_default(tmp_path):
    _saved_experiment(tmp_path, "old")
    saved = json.loads((tmp_path / "old" / experiment.ARGS_FILE).read_text())
    del saved["amp"]  # as written by a version without --amp
    (tmp_path / "old" / experiment.ARGS_FILE).write_text(json.dumps(saved))
    argv = ["--resume", "--name", "old", "--storage-path", str(tmp_path)]
    args = experiment.load_args(search.build_parser().parse_args(argv), flags.given_flags(argv))
    # The default, which the experiment's checkpoints recorded.
    assert args.amp == "auto" and args.resume and args.name == "old"
    with pytest.raises(experiment.UsageError, match=r"--amp on \(it ran with auto\)"):
        experiment.load_args(search.build_parser().parse_args([*argv, "--amp", "on"]), flags.given_flags([*argv, "--amp",
                                                                                                     "on"]))


def _saved_experiment(tmp_path, name, *argv):
    """An experiment folder as a started search leaves it: its settings file (and nothing of Ray's yet)."""
    saved = vars(search.build_parser().parse_args([*TINY, "--space", "smoke", "--name", name, "--storage-path",
                                                   str(tmp_path), *argv]))
    (tmp_path / name).mkdir()
    (tmp_path / name / experiment.ARGS_FILE).write_text(json.dumps(saved))


def _snapshot(tmp_path, name):
    (tmp_path / name / "experiment_state-2026-11-30_00-00-00.json").write_text("{}")  # as Tune's first snapshot


@pytest.mark.parametrize("setup, argv, message", [
    (None, ["--resume", "--name", "nothere"], "no experiment 'nothere' under"),
    ("snapshotted", ["--name", "exists"], "experiment 'exists' already exists under"),
    ("saved", ["--resume", "--name", "exists"], "mlflow_parent_run.txt, which names its parent run, is missing"),
    ("snapshotted", ["--resume", "--name", "exists", "--no-mlflow", "--seeds", "3", "--model", "tiny"],
     "these flags would change what its trials compute: --model tiny (it ran with test); --seeds 3 (it ran with 1)"),
    ("locked", ["--resume", "--name", "exists"], "experiment 'exists' is being run by another driver (pid"),
])
def test_search__resume_and_name_errors_exit_2_with_a_message(tmp_path, capsys, setup, argv, message):
    if setup:
        _saved_experiment(tmp_path, "exists", *(["--no-mlflow"] if "--no-mlflow" in argv else []))
    if setup == "snapshotted":
        _snapshot(tmp_path, "exists")
    if setup == "locked":
        held = storage.DriverLock(storage.Folder(str(tmp_path / "exists"))).acquire()
    rc = search.main([*TINY, "--space", "smoke", "--storage-path", str(tmp_path), *argv])
    if setup == "locked":
        held.release()
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_search__resume_takes_the_flags_that_may_change_and_refuses_the_others(tmp_path):
    _saved_experiment(tmp_path, "exp", "--seeds", "2")
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "exp", moved / "exp")
    given = ["--resume", "--name", "exp", "--storage-path", str(moved), "--max-failures", "7", "--max-concurrent",
             "3", "--mlflow-uri", "http://127.0.0.1:1", "--seeds", "2"]  # --seeds as it ran: no change
    args = experiment.load_args(search.build_parser().parse_args(given), flags.given_flags(given))
    assert (args.storage_path, args.max_failures, args.max_concurrent, args.mlflow_uri, args.seeds, args.space) == \
           (str(moved), 7, 3, "http://127.0.0.1:1", 2, "smoke")
    refused = [*given, "--epoch-scale", "0.5", "--dataset", "mnist"]
    with pytest.raises(experiment.UsageError, match=r"--dataset mnist \(it ran with digits\); --epoch-scale 0.5 "
                                                r"\(it ran with 1.0\)"):
        experiment.load_args(search.build_parser().parse_args(refused), flags.given_flags(refused))


def test_search__an_experiment_stopped_before_its_first_snapshot_is_started_afresh(tmp_path):
    _saved_experiment(tmp_path, "early", "--no-mlflow")
    (tmp_path / "early" / "tuner.pkl").write_bytes(b"junk")
    (tmp_path / "early" / "MixTrainable_abc").mkdir()
    (tmp_path / "early" / "ssl_prefixes").mkdir()
    folder = storage.Folder(str(tmp_path / "early"))
    argv = ["--resume", "--name", "early", "--storage-path", str(tmp_path)]
    args, restore = experiment.prepare(search.build_parser().parse_args(argv), folder, flags.given_flags(argv))
    assert args.resume and not restore  # nothing of Tune's to restore: a fresh start with the saved settings
    assert sorted(p.name for p in (tmp_path / "early").iterdir()) == [experiment.ARGS_FILE, experiment.SPACE_FILE,
                                                                     "ssl_prefixes"]
    argv = ["--name", "early", "--storage-path", str(tmp_path), "--no-mlflow", "--seeds", "3"]
    args, restore = experiment.prepare(search.build_parser().parse_args(argv), folder)  # or started again
    assert not restore and args.seeds == 3


def test_search__all_trials_failing_in_setup_ends_with_exit_code_1_and_says_so(ray_cluster, tmp_path, capsys):
    # The driver cannot check the device (a cluster's head may have no GPU): each trial fails at setup.
    code = search.main([*TINY, "--space", "smoke", "--num-samples", "1", "--device", "cuda", "--max-failures", "0",
                        "--no-mlflow", "--no-share-ssl", "--storage-path", str(tmp_path), "--name", "nocuda"])
    assert code == 1
    captured = capsys.readouterr()
    assert "all 3 trials failed" in captured.err and "trials: 3 (0 stopped early by the scheduler, 3 failed)" in captured.out


def test_search__a_run_stopped_before_its_first_snapshot_with_truncated_prefixes_resumes_to_the_same_results(
        ray_cluster, tracked_search, tmp_path):
    from trainable.config import MixConfig, resolve
    from trainable.prefix_store import decode, encode, prefix_key
    # The settings of the tracked search (which shared whole prefixes), without tracking.
    argv = [*TINY, "--space", "smoke", "--name", "crashed", "--num-samples", "2", "--scheduler", "fifo", "--seeds", "2",
            "--no-mlflow", "--storage-path", str(tmp_path)]
    args = search.build_parser().parse_args(argv)
    # What a driver killed before Tune's first snapshot leaves: its settings and a junk tuner.pkl; and in the
    # prefix store, every prefix the search will look for, truncated (a crash, a full disk).
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / experiment.ARGS_FILE).write_text(json.dumps(vars(args)))
    (tmp_path / "crashed" / "tuner.pkl").write_bytes(b"junk")
    base = experiment.base_config(args)
    for seed in (0, 1):
        run = resolve(MixConfig.from_trial({**base, "method": "ssl_sl", "e_ssl": 2, "e_sl": 2, "seed": seed}))
        folder = tmp_path / "crashed" / "ssl_prefixes" / prefix_key(run, "cpu")
        folder.mkdir(parents=True)
        for epoch in (1, 2):
            (folder / f"epoch_{epoch:05d}.pt").write_bytes(encode({"epoch": epoch})[:40])
    resume = ["--resume", "--name", "crashed", "--storage-path", str(tmp_path), "--verbose", "0"]
    df = driver.run(search.build_parser().parse_args(resume), flags.given_flags(resume)).df
    assert len(df) == 8 and df["error"].isna().all() and df["completed"].all()
    stored = list((tmp_path / "crashed" / "ssl_prefixes").rglob("epoch_*.pt"))
    assert len(stored) == 4  # two keys x two epochs, each discarded and stored again, whole
    for f in stored:
        decode(f.read_bytes(), "cpu")
    reference = tracked_search[0]
    key = ["method", "seed", "alpha", "rho", "epochs"]
    ours = df.set_index(key)["test_acc"].sort_index()
    theirs = reference.set_index(key)["test_acc"].sort_index()
    assert ours.index.equals(theirs.index) and (ours == theirs).all()


def test_search__warm_start_proposes_no_finished_configuration_and_runs_no_baseline_twice(tracked_search):
    earlier = tracked_search[0]
    storage = earlier.attrs["storage"]
    df, out = run_search_cli(storage, "--space", "smoke", "--name", "warm", "--num-samples", "2", "--scheduler",
                             "fifo", "--seeds", "2", "--warm-start", "tracked", "--no-mlflow")
    new = df[df["search"].isna()]
    assert len(new) == 4 and set(new["method"]) == {"mixtraining"}  # 2 proposals x 2 seeds; no baseline again
    tried = set(zip(earlier.loc[earlier["method"] == "mixtraining", "alpha"],
                    earlier.loc[earlier["method"] == "mixtraining", "rho"]))
    assert not tried & set(zip(new["alpha"], new["rho"])) and len(tried | set(zip(new["alpha"], new["rho"]))) == 4
    assert len(df) == len(earlier) + 4 and "| 1 | 2 | SSL+SL |" in out  # the earlier baselines in the comparison
    reusing = new[new["rho"] == 0.5]
    assert reusing.empty or (reusing["ssl_epochs_reused"] > 0).all()  # from the earlier search's prefix store


def test_search__warm_start_from_a_search_on_other_data_is_refused(tmp_path, capsys):
    _saved_experiment(tmp_path, "old")
    _snapshot(tmp_path, "old")
    rc = search.main([*TINY, "--space", "smoke", "--storage-path", str(tmp_path), "--name", "new", "--dataset",
                      "mnist", "--seeds", "3", "--epoch-scale", "0.5", "--warm-start", "old", "--no-mlflow"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--warm-start old: that search ran on other data, model or budget: " in err
    for differs in ("--dataset mnist (it ran digits)", "--seeds 3 (it ran 1)", "--epoch-scale 0.5 (it ran 1.0)"):
        assert differs in err  # every flag that differs, not only the first


def test_search__tune_may_keep_as_many_trials_pending_as_there_are_slots(ray_cluster, monkeypatch):
    from tuning import cluster
    """Tune keeps one trial pending for a search algorithm of its own kind: freed slots then fill one at a
    time and an autoscaler is asked for one worker at a time."""
    args = search.build_parser().parse_args([*TINY, "--cpus-per-trial", "0.5"])
    assert driver.cluster_pending(args) == 4  # the session's Ray has 2 CPUs
    args.max_concurrent = 3
    assert driver.cluster_pending(args) == 3
    monkeypatch.setattr(cluster, "launchable_node_types",
                        lambda address: [cluster.NodeType("gpu_worker", {"CPU": 4, "GPU": 1}, max_workers=2)])
    gpu = search.build_parser().parse_args([*TINY, "--cpus-per-trial", "1", "--gpus-per-trial", "0.25"])
    assert driver.cluster_pending(gpu) == 8  # no GPU here; two workers of four trials each may join

    seen = []

    class Tuner:
        def fit(self):
            seen.append(os.environ.get(ray_internals.PENDING_ENV))
            return []

    monkeypatch.delenv(ray_internals.PENDING_ENV, raising=False)
    driver.fit(Tuner(), None, None, pending=4)
    assert seen == ["4"] and ray_internals.PENDING_ENV not in os.environ
    monkeypatch.setenv(ray_internals.PENDING_ENV, "16")  # the user's own setting wins
    driver.fit(Tuner(), None, None, pending=4)
    assert seen == ["4", "16"]


def test_best_checkpoint__the_best_seed_of_the_chosen_configuration_among_this_searchs_trials():
    """A completion run is a completed run of the chosen configuration (so a candidate, whose checkpoint
    PruneCheckpoints keeps); a warm-started search's earlier trials are not among its results."""
    from types import SimpleNamespace

    from test_summary import BASELINES, frame, row
    rows = [row("mixtraining", 0, val=0.90, test=0.9, alpha=0.1),
            row("mixtraining", 1, val=0.95, test=0.9, alpha=0.1, completion=True),
            row("mixtraining", 2, val=0.99, test=0.9, alpha=0.1),  # the earlier search's
            row("mixtraining", 0, val=0.60, test=0.9, alpha=0.9)]
    results = [SimpleNamespace(metrics={"trial_id": r["trial_id"]}, checkpoint=f"ckpt-{r['trial_id']}")
               for r in rows if r["seed"] != 2]
    assert driver.best_checkpoint(results, frame(*BASELINES, *rows)) == f"ckpt-{rows[1]['trial_id']}"
    assert driver.best_checkpoint([], frame(*BASELINES, *rows)) is None
    # Nothing to choose from: no MixTraining run (every trial failed), or none with validation (--val-frac 0).
    assert driver.best_checkpoint(results, frame(*BASELINES)) is None
    no_val = [row("mixtraining", 0, val=float("nan"), test=0.9, alpha=a) for a in (0.1, 0.9)]
    assert driver.best_checkpoint([SimpleNamespace(metrics={"trial_id": r["trial_id"]}, checkpoint="c") for r in no_val],
                                  frame(*BASELINES, *no_val)) is None


# --- spaces from files, dry runs -------------------------------------------------------------------

def test_search__dry_run_prints_settings_space_plans_and_cost_and_starts_nothing(tmp_path, capsys, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("a dry run started Ray")
    monkeypatch.setattr(ray, "init", no_ray)
    space = tmp_path / "mine.yaml"
    space.write_text("alpha: [0.1, 0.9]\nrho: 0.5\nepochs: [2, 4]\n")
    rc = search.main([*TINY, "--space", str(space), "--storage-path", str(tmp_path / "runs"), "--dry-run",
                      "--mlflow-uri", "postgresql://alice:s3cret@db.example/mlflow", "--search", "grid"])
    out = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "runs").exists()
    assert "== space ==\nalpha: [0.1, 0.9]\nrho: 0.5\nepochs: [2, 4]" in out
    assert "sl           e_ssl=4 e_sl=4: 0 + 0 + 4" in out and "ssl_sl       e_ssl=2 e_sl=2: 2 + 0 + 2" in out
    assert "mixtraining  e_ssl=4 e_sl=4 rho=0.5: 2 + 2 + 2" in out
    assert "this search: about 8 trials" in out  # 2 budgets x (SL, SSL+SL) + a grid of 2 x 2
    assert "name: mine-digits-" in out  # the default name from the file's stem
    assert "s3cret" not in out and "postgresql://alice:***@db.example/mlflow" in out


def test_search__resume_compares_the_space_files_content_not_its_path(tmp_path):
    space = tmp_path / "a.yaml"
    space.write_text("alpha: [0.1, 0.9]\nepochs: 2\n")
    _saved_experiment(tmp_path, "spaced", "--space", str(space), "--no-mlflow")
    folder = experiment.folder_of(str(tmp_path), "spaced")
    experiment.prepare(search.build_parser().parse_args([*TINY, "--space", str(space), "--name", "spaced",
                                                          "--storage-path", str(tmp_path), "--no-mlflow"]), folder)
    _snapshot(tmp_path, "spaced")
    moved = tmp_path / "b.json"
    moved.write_text(json.dumps({"alpha": [0.1, 0.9], "epochs": 2}))  # the same space, elsewhere, as JSON
    argv = ["--resume", "--name", "spaced", "--storage-path", str(tmp_path), "--space", str(moved)]
    args = experiment.load_args(search.build_parser().parse_args(argv), flags.given_flags(argv))
    assert args.space == str(space)
    space.write_text("alpha: [0.1, 0.5]\nepochs: 2\n")  # the file changed since: its content now differs
    argv[-1] = str(space)
    with pytest.raises(experiment.UsageError, match=r"--space .*a.yaml \(it ran with .*a.yaml\)"):
        experiment.load_args(search.build_parser().parse_args(argv), flags.given_flags(argv))
    assert json.loads((tmp_path / "spaced" / experiment.SPACE_FILE).read_text()) == {"alpha": [0.1, 0.9], "epochs": 2}


def test_search__a_space_over_mask_ratio_runs_each_value_and_reports_each_confirmed_on_fresh_seeds(
        ray_cluster, tmp_path):
    space = tmp_path / "mask.yaml"
    space.write_text("mask_ratio: [0.5, 0.9]\nalpha: 0.5\nrho: 0.5\nepochs: 2\n")
    df, out = run_search_cli(tmp_path, "--space", str(space), "--name", "mask", "--search", "random",
                             "--num-samples", "2", "--scheduler", "fifo", "--no-mlflow", "--confirm-seeds", "1",
                             "--keep-checkpoints")
    search_runs, confirm = df[df["confirm"] == ""], df[df["confirm"] != ""]
    # --keep-checkpoints: every trial keeps what Tune kept, its two newest (one checkpoint per epoch trained).
    trials = list((tmp_path / "mask").glob("MixTrainable_*"))
    assert len(trials) == len(df)
    for trial in trials:
        trained = len((trial / "result.json").read_text().splitlines())
        assert len(list(trial.glob("checkpoint_*"))) == min(2, trained), trial.name
    mix = search_runs[search_runs["method"] == "mixtraining"]
    assert sorted(mix["mask_ratio"]) == [0.5, 0.9] and mix["completed"].all()  # both ran, neither answered
    assert (df.loc[df["method"] != "mixtraining", "mask_ratio"] == 0.75).all()  # baselines at the default
    # the choice, the paper's default (mask ratio 0.75) and both baselines on seed 1, which the search never used
    assert sorted(zip(confirm["confirm"], confirm["mask_ratio"])) == sorted(
        [("baseline", 0.75), ("baseline", 0.75), ("default", 0.75),
         ("tuned", float(mix.loc[mix["val_acc"].idxmax(), "mask_ratio"]))])
    assert (confirm["seed"] == 1).all() and (search_runs["seed"] == 0).all() and confirm["completed"].all()
    assert "every row from confirmation seeds the search never used" in out
    assert "| configs tried | alpha | rho | lam | mask_ratio |" in out and "| MixTraining (default) |" in out
    configs = out.split("== MixTraining configurations tried")[1]
    assert "mask_ratio=0.5" in configs and "mask_ratio=0.9" in configs
    assert (tmp_path / "mask" / "parameter_study" / "mask_ratio.png").exists()


def test_search__resume_with_a_lost_tracking_store_continues_with_no_mlflow(tmp_path):
    _saved_experiment(tmp_path, "tracked-once")  # tracked in MLflow, and its parent run file is gone with the store
    _snapshot(tmp_path, "tracked-once")
    folder = experiment.folder_of(str(tmp_path), "tracked-once")
    argv = ["--resume", "--name", "tracked-once", "--storage-path", str(tmp_path)]
    with pytest.raises(experiment.UsageError, match="or resume with --no-mlflow"):
        experiment.prepare(search.build_parser().parse_args(argv), folder, flags.given_flags(argv))
    argv.append("--no-mlflow")
    args, restore = experiment.prepare(search.build_parser().parse_args(argv), folder, flags.given_flags(argv))
    assert args.no_mlflow and args.resume and restore


def test_search__a_password_in_the_tracking_uri_is_never_written_and_resume_takes_it_from_the_environment(
        tmp_path, monkeypatch):
    secret = "postgresql://alice:s3cret@db.example/mlflow"
    monkeypatch.setattr(experiment.tracking, "resolve_uri", lambda uri: uri)
    argv = [*TINY, "--space", "smoke", "--name", "pw", "--storage-path", str(tmp_path), "--mlflow-uri", secret]
    folder = experiment.folder_of(str(tmp_path), "pw")
    args, _ = experiment.prepare(search.build_parser().parse_args(argv), folder)
    assert args.mlflow_uri == secret  # this run uses it ...
    saved = (tmp_path / "pw" / experiment.ARGS_FILE).read_text()
    assert "s3cret" not in saved and "postgresql://alice:***@db.example/mlflow" in saved  # ... the folder does not
    (tmp_path / "pw" / experiment.PARENT_FILE).write_text("0" * 32)
    _snapshot(tmp_path, "pw")
    resume = ["--resume", "--name", "pw", "--storage-path", str(tmp_path)]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(experiment.UsageError, match=r"whose password is not stored: pass --mlflow-uri"):
        experiment.load_args(search.build_parser().parse_args(resume), flags.given_flags(resume))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret)
    assert experiment.load_args(search.build_parser().parse_args(resume), flags.given_flags(resume)).mlflow_uri == secret


def test_search__a_time_budget_stops_the_search_with_the_partial_comparison_and_a_resume_hint(
        ray_cluster, tmp_path, capsys):
    rc = search.main([*TINY, "--space", "smoke", "--num-samples", "2", "--scheduler", "fifo", "--no-mlflow",
                      "--time-budget", "2", "--storage-path", str(tmp_path), "--name", "budget"])
    captured = capsys.readouterr()
    assert rc == 130
    assert "== PARTIAL: the search stopped before its end" in captured.out
    assert "continue with: python tuning/search.py --resume --name budget" in captured.err
