"""MLflow tracking against a real `mlflow server` on loopback: runs, tags, params, histories, artifacts."""
from mlflow import MlflowClient

from tests_helpers import run_search_cli

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


def test_tracking__a_run_of_a_trial_lost_with_the_driver_is_ended_and_deleted(tmp_path):
    from tuning.tracking import drop_orphans, experiment_id
    c = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    eid = experiment_id(c, "orphans")
    parent = c.create_run(eid).info.run_id
    kept = c.create_run(eid, tags={"mlflow.parentRunId": parent, "trial_id": "kept"}).info.run_id
    ghost = c.create_run(eid, tags={"mlflow.parentRunId": parent, "trial_id": "ghost"}).info.run_id
    drop_orphans(c, parent, {"kept"})
    assert [r.info.run_id for r in c.search_runs([eid], "tags.trial_id != ''")] == [kept]
    gone = c.get_run(ghost)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED" and "superseded" in gone.data.tags


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
