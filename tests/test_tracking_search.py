"""MLflow tracking end to end: a real search tracked on a real `mlflow server` on loopback (runs, tags, params,
histories, artifacts, the registered model), and a server that goes away mid-search. Slow: Ray and a server."""
import json
import logging
import math
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from tests_helpers import MlflowServer, run_search_cli, trial_results
from tuning import delivery, tracking

TRACKED_TRIALS = 2 * 2 + 2 * 2  # (SL, SSL+SL) x 2 seeds + 2 samples x 2 seeds


def _runs(c):
    runs = c.search_runs([c.get_experiment_by_name("tracked").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(children) == TRACKED_TRIALS  # every loop below runs over all of them
    return parent, children


def _artifacts(c, run_id, path=None):
    out = []
    for f in c.list_artifacts(run_id, path):
        out += _artifacts(c, run_id, f.path) if f.is_dir else [f.path]
    return out


def test_tracking__ssl_prefixes_are_shared_and_the_parent_reports_what_was_saved(tracked_search):
    df, out, c = tracked_search
    parent, children = _runs(c)
    reused = int(sum(r.data.metrics["ssl_epochs_reused"] for r in children))
    assert reused > 0 and df["ssl_epochs_reused"].sum() == reused
    assert parent[0].data.metrics["ssl_epochs_reused"] == reused
    assert f"SSL-prefix sharing: {reused} SSL-only epochs reused" in out


def test_tracking__one_parent_and_a_tagged_child_per_trial(tracked_search):
    df, _, c = tracked_search
    parent, children = _runs(c)
    assert len(df) == TRACKED_TRIALS
    p = parent[0]
    assert p.info.status == "FINISHED"
    assert p.data.params["space"] == "smoke" and p.data.params["seeds"] == "2"
    assert "mlflow.source.git.commit" in p.data.tags
    assert all(r.data.tags["mlflow.parentRunId"] == p.info.run_id for r in children)
    assert sorted(r.data.tags["method"] for r in children) == ["mixtraining"] * 4 + ["sl"] * 2 + ["ssl_sl"] * 2
    assert sorted(r.data.tags["seed"] for r in children) == ["0"] * 4 + ["1"] * 4
    assert {r.data.tags["datasets"] for r in children} == {"digits"}
    assert {r.data.tags["trial_id"] for r in children} == set(df["trial_id"])
    assert {r.info.status for r in children} == {"FINISHED"}


def test_tracking__child_params_hold_the_resolved_config_and_phase_plan(tracked_search):
    _, _, c = tracked_search
    _, children = _runs(c)
    for r in children:
        p = r.data.params
        assert p["model"] == "test" and p["datasets"] == "digits" and p["e_sl"] == "2"
        plan = (int(p["plan_ssl_epochs"]), int(p["plan_mix_epochs"]), int(p["plan_sl_epochs"]))
        expected = {"sl": (0, 0, 2), "ssl_sl": (2, 0, 2)}.get(r.data.tags["method"])
        assert plan == expected if expected else plan[1] == int(p["e_mix"]) == int(float(p["rho"]) * 2)


def test_tracking__per_epoch_metric_histories_and_test_accuracy(tracked_search):
    _, _, c = tracked_search
    _, children = _runs(c)
    for r in children:
        p = r.data.params
        n_ssl, n_mix, n_sl = (int(p[k]) for k in ("plan_ssl_epochs", "plan_mix_epochs", "plan_sl_epochs"))
        total = n_ssl + n_mix + n_sl
        # Epochs taken from a shared SSL prefix were trained (and logged) by another trial.
        reused = int(r.data.metrics["ssl_epochs_reused"])
        assert 0 <= reused <= n_ssl
        hist = lambda key: [m.step for m in c.get_metric_history(r.info.run_id, key)]  # noqa: E731
        assert hist("train_time_s") == list(range(reused + 1, total + 1))
        assert hist("compute_tflop") == list(range(reused + 1, total + 1))
        assert hist("val_acc") == list(range(n_ssl + 1, total + 1))  # only once the classifier trained
        assert hist("loss_ssl") == list(range(reused + 1, n_ssl + n_mix + 1))
        phases = [m.value for m in c.get_metric_history(r.info.run_id, "phase")]
        assert phases == [0.0] * (n_ssl - reused) + [1.0] * n_mix + [2.0] * n_sl
        assert 0.0 <= r.data.metrics["test_acc"] <= 1.0


def test_tracking__reconstructions_on_trials_with_a_decoder_and_parent_artifacts(tracked_search):
    _, _, c = tracked_search
    parent, children = _runs(c)
    for r in children:
        has = "reconstruction.png" in _artifacts(c, r.info.run_id)
        assert has == (r.data.tags["method"] != "sl"), r.data.tags["method"]
    arts = set(_artifacts(c, parent[0].info.run_id))
    assert {"comparison.csv", "comparison.md", "accuracy_vs_cost.png", "best_model/engine.pt",
            "best_model/config.json"} <= arts


def test_tracking__a_failed_trial_ends_failed_with_its_error(ray_cluster, mlflow_server, tmp_path):
    df, out = run_search_cli(tmp_path, "--space", "smoke", "--name", "failing", "--num-samples", "1",
                             "--no-baselines", "--scheduler", "fifo", "--max-failures", "0", "--sl-lr", "1e30",
                             "--mlflow-uri", mlflow_server, "--experiment", "failing")
    c = MlflowClient(mlflow_server)
    runs = c.search_runs([c.get_experiment_by_name("failing").experiment_id], "tags.trial_id != ''")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "non-finite loss" in runs[0].data.tags["error"]
    assert "error.txt" in _artifacts(c, runs[0].info.run_id)
    assert df["error"].notna().all() and "(0 stopped early by the scheduler, 1 failed)" in out


OUTAGE_S = 2  # how long the server stays killed; starting it again takes 10 s or more on 2 busy cores


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _kill_and_restart(server: MlflowServer, exp, seen: dict) -> None:
    """Kill the server once a trial has reported and start it again OUTAGE_S later on the same port and store;
    note the results Ray had written when it was killed and when it answered again."""
    try:
        deadline = time.time() + 600  # only against a hang: the event is a trial's first result, however slow
        while not trial_results(exp) and time.time() < deadline:
            time.sleep(0.1)
        server.stop()
        seen["at_kill"] = trial_results(exp)
        time.sleep(OUTAGE_S)
        server.start()
        seen["at_back"] = trial_results(exp)
    except Exception as e:  # noqa: BLE001 - reported by the test's thread
        seen["error"] = e


def test_tracking__a_server_killed_mid_search_costs_no_trial_and_no_metric(ray_cluster, tmp_path, processes,
                                                                           monkeypatch, caplog):
    # A server that never comes back fails in time; one slow to restart on a loaded machine is still waited for.
    monkeypatch.setattr(delivery, "FLUSH_TIMEOUT_S", 300.0)
    for key, value in tracking.HTTP_ENV.items():  # as the command sets them: MLflow's client fails fast
        monkeypatch.setenv(key, value)
    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow", processes).start()
    exp, seen = tmp_path / "outage", {}
    outage = threading.Thread(target=_kill_and_restart, args=(server, exp, seen), daemon=True)
    outage.start()
    with caplog.at_level(logging.INFO, logger="tuning"):
        df, _ = run_search_cli(tmp_path, "--space", "smoke", "--name", "outage", "--num-samples", "2",
                               "--scheduler", "fifo", "--mlflow-uri", server.uri, "--experiment", "outage")
    outage.join(timeout=600)
    assert "error" not in seen and server.healthy(), seen.get("error")
    count = lambda results: sum(map(len, results.values()))  # noqa: E731
    # Killed before the search's end: some of its 4 trials (2 samples + 2 baselines) had not finished (the ones
    # that had reported may all have: the others had not started yet).
    assert sum(bool(rs[-1].get("done")) for rs in seen["at_kill"].values()) < 4, "killed after the search"
    assert count(seen["at_back"]) >= count(seen["at_kill"]) + 2, "Tune waited for MLflow: no results while it was away"
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "does not answer" in m]) == 1  # one warning per outage, not one per call
    assert len([m for m in messages if "answers again" in m]) == 1
    assert df["error"].isna().all() and len(df) == 4
    assert not (exp / tracking.PENDING_DIR).exists()

    c = MlflowClient(server.uri)
    runs = c.search_runs([c.get_experiment_by_name("outage").experiment_id], run_view_type=ViewType.ALL)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    results = trial_results(exp)
    assert len(children) == len(runs) - 1 and set(children) == set(results) == set(df["trial_id"])
    for trial_id, reported in results.items():
        run = children[trial_id]
        assert run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
        for key in tracking.EPOCH_METRICS:
            expected = [(r["epoch"], r[key]) for r in reported if _finite(r.get(key))]
            got = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, key))
            assert got == expected, (trial_id, key)
        assert len(c.get_metric_history(run.info.run_id, "train_time_s")) == len(reported)


# --- MLflow 3 conventions: dataset inputs, the registered model, the experiment's kind, figures ------------

def test_tracking__every_child_run_has_its_datasets_as_inputs(tracked_search):
    _, _, c = tracked_search
    _, children = _runs(c)
    for r in children:
        inputs = c.get_run(r.info.run_id).inputs.dataset_inputs
        by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in inputs}
        assert set(by_context) == {"training", "validation", "test"}
        assert {i.dataset.name for i in inputs} == {"digits"}
        training_tags = {t.key: t.value for t in by_context["training"].tags}
        assert (training_tags["fraction"], training_tags["seed"]) == (r.data.params["fraction"], r.data.params["seed"])
    seeds = {c.get_run(r.info.run_id).inputs.dataset_inputs[0].dataset.digest for r in children}
    assert len(seeds) >= 2  # the two seeds train on different subsets... of the same images, told apart
    found = c.search_runs([c.get_experiment_by_name("tracked").experiment_id], "dataset.context = 'test'")
    assert len(found) == TRACKED_TRIALS  # the UI's dataset filters work


def test_tracking__the_experiment_opens_as_model_training_and_the_search_prints_where(tracked_search):
    _, out, c = tracked_search
    exp = c.get_experiment_by_name("tracked")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in out
    parent = c.search_runs([exp.experiment_id], "attributes.run_name = 'tracked'")  # its parent, opened on its figures
    assert f"/runs/{parent[0].info.run_id}/artifacts?workflowType=machine_learning" in out


def test_tracking__the_registered_best_model_loads_and_reproduces_its_test_accuracy(tracked_search, mlflow_server):
    import mlflow
    import mlflow.pytorch
    import torch

    from trainable.data import to_input_shape
    from trainable.datasets import load_dataset
    df, _, c = tracked_search
    parent, _ = _runs(c)
    config = json.loads(Path(c.download_artifacts(parent[0].info.run_id, "best_model/config.json",
                                                  tempfile.mkdtemp())).read_text())
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pytorch.load_model("models:/tracked-best/1").eval()
    test = load_dataset("digits")
    with torch.no_grad():
        images = to_input_shape(test.test_images, model.image_size).float() / 255
        acc = (model(images).argmax(-1) == test.test_labels).float().mean().item()
    best = df[(df["method"] == "mixtraining") & (df["seed"] == config["seed"]) & (df["alpha"] == config["alpha"])
              & (df["rho"] == config["rho"])]
    assert len(best) == 1 and acc == pytest.approx(best["test_acc"].iloc[0], abs=1e-9)
    # Its signature says what it takes and gives (images in [0, 1] of the model's size -> one logit per class),
    # and its input example is one such batch, which the model serves.
    info = mlflow.models.get_model_info("models:/tracked-best/1")
    (given,), (out,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert given.shape == (-1, 3, model.image_size, model.image_size) and str(given.type) == "float32"
    assert out.shape == (-1, 10)
    example = mlflow.models.Model.load("models:/tracked-best/1").load_input_example(
        mlflow.artifacts.download_artifacts("models:/tracked-best/1"))
    assert example.shape[1:] == given.shape[1:] and 0 <= example.min() and example.max() <= 1
    with torch.no_grad():
        assert model(torch.from_numpy(example)).shape == (len(example), 10)


def test_tracking__parameter_studies_on_the_parent_have_a_point_per_value_tried(tracked_search):
    df, _, c = tracked_search
    parent, _ = _runs(c)
    pid = parent[0].info.run_id
    arts = set(_artifacts(c, pid))
    assert {"parameter_study/alpha.png", "parameter_study/rho.png", "parameter_study/epochs.png",
            "parameter_study/importances.png", "parameter_study/importances.json"} <= arts
    mix = df[(df["method"] == "mixtraining") & df["completed"]]
    for param in ("alpha", "rho"):
        study = pd.read_csv(c.download_artifacts(pid, f"parameter_study/{param}.csv", tempfile.mkdtemp()))
        assert sorted(study[param]) == sorted(mix[param].unique())  # one point per value tried


def test_tracking__system_metrics_per_epoch_on_every_child(tracked_search):
    _, _, c = tracked_search
    _, children = _runs(c)
    for r in children:
        history = c.get_metric_history(r.info.run_id, "sys_rss_mb")
        assert history and all(m.value > 10 for m in history)  # a trial process uses more than 10 MB
