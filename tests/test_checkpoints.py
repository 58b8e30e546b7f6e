"""tuning.checkpoints: a checkpoint removed only once nothing can need it.

Tune's saved experiment state is written here by hand in Ray 2.60's format (`experiment_state-<time>.json`:
{"trial_data": [[trial_json, run_metadata_json], ...]}); tests/test_faults.py checks the reader against
states that Ray wrote.
"""
import json
import os
from types import SimpleNamespace

import pyarrow.fs

from tuning import checkpoints
from tuning.checkpoints import PruneCheckpoints, prune_all_but

LOCAL = pyarrow.fs.LocalFileSystem()


def _save_state(exp, statuses, session="2026-01-01_00-00-00"):
    """A saved experiment state listing {trial id: status}, as Tune writes it."""
    data = [[json.dumps({"trial_id": t, "status": s, "config": {}}), json.dumps({"last_result": {}})]
            for t, s in statuses.items()]
    exp.mkdir(parents=True, exist_ok=True)
    (exp / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": data, "runner_data": {}}))


def _trial(exp, trial_id, method="sl", completed=True):
    path = exp / f"MixTrainable_{trial_id}"
    for i in range(2):
        (path / f"checkpoint_00000{i}").mkdir(parents=True)
    return SimpleNamespace(trial_id=trial_id, config={"method": method}, last_result={"completed": completed},
                           checkpoint=SimpleNamespace(path=str(path / "checkpoint_000001")),
                           storage=SimpleNamespace(storage_filesystem=LOCAL, experiment_fs_path=str(exp),
                                                   trial_fs_path=str(path)))


def _left(exp, trial_id):
    return sorted(p.name for p in (exp / f"MixTrainable_{trial_id}").iterdir())


BOTH = ["checkpoint_000000", "checkpoint_000001"]


def test_prune__a_finished_trial_keeps_its_checkpoints_until_a_saved_state_lists_it_terminated(tmp_path):
    exp, prune = tmp_path / "exp", PruneCheckpoints(every_s=0, spacing=0)
    _save_state(exp, {"a": "RUNNING"})
    prune.on_trial_complete(0, [], _trial(exp, "a"))
    prune.on_step_end(1, [])
    assert _left(exp, "a") == BOTH  # a driver killed now resumes "a" from its checkpoint
    _save_state(exp, {"a": "TERMINATED"})
    prune.on_step_end(2, [])
    assert _left(exp, "a") == [] and prune.waiting == {}


def test_prune__baselines_and_stopped_trials_lose_all_completed_mixtraining_keeps_its_final_one(tmp_path):
    exp, prune = tmp_path / "exp", PruneCheckpoints()
    cases = {"sl": ("sl", True), "stopped": ("mixtraining", False), "done": ("mixtraining", True)}
    for name, (method, completed) in cases.items():
        prune.on_trial_complete(0, [], _trial(exp, name, method, completed))
    _save_state(exp, dict.fromkeys(cases, "TERMINATED"))
    prune.on_experiment_end([])
    assert {name: _left(exp, name) for name in cases} == {"sl": [], "stopped": [], "done": ["checkpoint_000001"]}


def test_prune__only_the_newest_saved_state_counts(tmp_path):
    exp, prune = tmp_path / "exp", PruneCheckpoints(every_s=0, spacing=0)
    _save_state(exp, {"a": "TERMINATED"}, session="2026-01-01_00-00-00")
    _save_state(exp, {"a": "RUNNING"}, session="2026-01-02_00-00-00")  # a resumed session's snapshot
    prune.on_trial_complete(0, [], _trial(exp, "a"))
    prune.on_experiment_end([])
    assert _left(exp, "a") == BOTH


def test_prune__looks_at_most_every_every_s_and_once_more_at_the_end(tmp_path):
    exp, prune = tmp_path / "exp", PruneCheckpoints(every_s=3600)
    _save_state(exp, {"a": "RUNNING"})
    prune.on_trial_complete(0, [], _trial(exp, "a"))
    prune.on_step_end(1, [])  # the first look: not finished yet
    _save_state(exp, {"a": "TERMINATED"})
    prune.on_step_end(2, [])
    assert _left(exp, "a") == BOTH  # within every_s of the last look
    prune.on_experiment_end([])
    assert _left(exp, "a") == []


def test_prune__an_unreadable_or_missing_state_removes_nothing(tmp_path):
    exp, prune = tmp_path / "exp", PruneCheckpoints(every_s=0, spacing=0)
    prune.on_trial_complete(0, [], _trial(exp, "a"))
    prune.on_step_end(1, [])  # no snapshot yet
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["{\\"trial_id\\": \\"a", ')
    prune.on_experiment_end([])  # half uploaded
    assert _left(exp, "a") == BOTH and set(prune.waiting) == {"a"}


def _result(exp, trial_id, method="mixtraining", completed=True, error=None):
    t = _trial(exp, trial_id, method, completed)
    return SimpleNamespace(path=t.storage.trial_fs_path, filesystem=LOCAL, error=error, config=t.config,
                           metrics={"trial_id": trial_id, "completed": completed}, checkpoint=t.checkpoint)


def test_prune_all_but__every_trial_finished_leaves_only_the_best_models_checkpoint(tmp_path):
    exp = tmp_path / "exp"
    results = [_result(exp, "best"), _result(exp, "other"), _result(exp, "sl", method="sl")]
    _save_state(exp, dict.fromkeys(["best", "other", "sl"], "TERMINATED"))
    assert prune_all_but(results, results[0].checkpoint) == 5
    assert [_left(exp, t) for t in ("best", "other", "sl")] == [["checkpoint_000001"], [], []]


def test_prune_all_but__a_failed_trial_keeps_all_and_the_candidates_keep_their_final_ones(tmp_path):
    exp = tmp_path / "exp"
    results = [_result(exp, "failed", method="ssl_sl", completed=False, error=RuntimeError("epoch 3")),
               _result(exp, "best"), _result(exp, "other"), _result(exp, "sl", method="sl"),
               _result(exp, "unsaved", method="sl"),  # finished after the last snapshot Tune managed to save
               _result(exp, "failed_late", method="sl", error=RuntimeError("x"))]  # an error is final, whatever
    _save_state(exp, {"failed": "ERROR", "best": "TERMINATED", "other": "TERMINATED", "sl": "TERMINATED",
                      "unsaved": "RUNNING", "failed_late": "TERMINATED"})
    prune_all_but(results, results[1].checkpoint)
    left = {t: _left(exp, t) for t in ("failed", "best", "other", "sl", "unsaved", "failed_late")}
    # the retried trial may change the chosen configuration: every candidate's final checkpoint stays
    assert left == {"failed": BOTH, "best": ["checkpoint_000001"], "other": ["checkpoint_000001"], "sl": [],
                    "unsaved": BOTH, "failed_late": BOTH}


def test_saved_statuses__reads_the_newest_state_as_plain_json(tmp_path):
    exp = tmp_path / "exp"
    _save_state(exp, {"a": "TERMINATED", "b": "ERROR", "c": "PENDING"})
    newest = checkpoints.newest_state_file(LOCAL, str(exp))
    assert checkpoints.saved_statuses(LOCAL, newest.path) == {"a": "TERMINATED", "b": "ERROR", "c": "PENDING"}
    assert checkpoints.finished_in_saved_state(LOCAL, str(exp)) == {"a"}
    assert checkpoints.finished_in_saved_state(LOCAL, str(tmp_path / "nothing")) == set()


def test_prune__an_unchanged_state_is_not_read_again_until_the_end(tmp_path):
    exp, prune = tmp_path / "exp", PruneCheckpoints(every_s=0, spacing=0)
    _save_state(exp, {"a": "RUNNING", "b": "TERMINATED"})
    state = next(exp.glob("experiment_state-*.json"))
    stat = state.stat()
    prune.on_trial_complete(0, [], _trial(exp, "a"))
    prune.on_step_end(1, [])
    _save_state(exp, {"b": "RUNNING", "a": "TERMINATED"})  # same size, and the same time as before
    os.utime(state, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    prune.on_step_end(2, [])
    assert _left(exp, "a") == BOTH  # looks unchanged: not read again during the search
    prune.on_experiment_end([])
    assert _left(exp, "a") == []


def test_prune__reads_of_a_large_saved_state_are_spaced_by_their_own_cost(tmp_path, monkeypatch):
    """At 1,000 trials the state is ~30 MB: parsing it every 5 s would take the driver over."""
    from tuning import checkpoints
    reads, clock = [], iter(range(0, 10**6, 10))  # each read "takes" 10 s of the fake clock
    real = checkpoints.saved_statuses
    monkeypatch.setattr(checkpoints, "saved_statuses", lambda fs, path: reads.append(path) or real(fs, path))
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: float(next(clock)))
    exp, prune = tmp_path / "exp", PruneCheckpoints(every_s=5, spacing=20)
    prune.on_trial_complete(0, [], _trial(exp, "a"))
    _save_state(exp, {"a": "RUNNING"}, session="2026-01-01_00-00-01")
    prune.on_step_end(0, [])  # reads at t=0..10: the next read no sooner than t = 0 + 20 x 10
    for step in range(5):  # t = 20, 30, ..., 60: too soon
        _save_state(exp, {"a": "RUNNING"}, session=f"2026-01-01_00-00-1{step}")
        prune.on_step_end(0, [])
    assert len(reads) == 1


def test_tune_deleting_a_checkpoint_that_is_already_gone_is_not_an_error(tmp_path, monkeypatch):
    """A saved state can name a checkpoint Tune deleted after the snapshot (driver killed in between)."""
    import pyarrow.fs
    import pytest
    from ray.train._internal import checkpoint_manager

    from tuning import ray_internals
    tunes_own = getattr(checkpoint_manager._delete_fs_path, "__wrapped__", checkpoint_manager._delete_fs_path)
    monkeypatch.setattr(checkpoint_manager, "_delete_fs_path", tunes_own)  # a driver restored earlier patched it
    fs = pyarrow.fs.LocalFileSystem()
    with pytest.raises(FileNotFoundError):  # Tune's own
        checkpoint_manager._delete_fs_path(fs=fs, fs_path=str(tmp_path / "checkpoint_000001"))
    ray_internals.tolerate_deleted_checkpoints()
    ray_internals.tolerate_deleted_checkpoints()  # once only, however often a driver restores
    checkpoint_manager._delete_fs_path(fs=fs, fs_path=str(tmp_path / "checkpoint_000001"))
    (tmp_path / "checkpoint_000002").mkdir()
    checkpoint_manager._delete_fs_path(fs=fs, fs_path=str(tmp_path / "checkpoint_000002"))
    assert not (tmp_path / "checkpoint_000002").exists()
