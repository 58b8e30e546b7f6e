"""tuning.checkpoints, what its first mutation run (`make mutation MODULES=checkpoints`) showed untested: what is
logged when a checkpoint or a state cannot be read or removed, a folder named like a state, the end of a search
without a best model, the driver-kill hook's event, the counts returned, and the look interval's defaults."""
import logging

from test_checkpoints import BOTH, LOCAL, _left, _result, _save_state, _trial
from trainable import faults
from tuning import checkpoints
from tuning.checkpoints import PruneCheckpoints, prune_all_but


class Undeletable:
    """A filesystem whose folders cannot be removed (a storage hiccup, a permission): everything else is real."""

    def delete_dir(self, path):
        raise OSError(f"permission denied: {path}")

    def __getattr__(self, name):
        return getattr(LOCAL, name)


def test_delete_checkpoints__one_that_cannot_be_removed_is_logged_with_its_path_and_reason(tmp_path, caplog):
    trial = _trial(tmp_path / "exp", "a")
    with caplog.at_level(logging.INFO, logger="tuning.checkpoints"):
        assert checkpoints.delete_checkpoints(Undeletable(), trial.storage.trial_fs_path) == 0
    assert _left(tmp_path / "exp", "a") == BOTH
    folder = trial.storage.trial_fs_path
    assert [r.getMessage() for r in caplog.records] == [
        f"could not remove {folder}/{name}: permission denied: {folder}/{name}" for name in BOTH]


def test_saved_statuses__an_unreadable_state_is_logged_with_its_path_and_reason(tmp_path, caplog):
    state = tmp_path / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text("{half")
    with caplog.at_level(logging.DEBUG, logger="tuning.checkpoints"):
        assert checkpoints.saved_statuses(LOCAL, str(state)) is None
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG  # a search's output stays quiet: the next check reads it again
    message = record.getMessage()
    assert message.startswith(f"could not read the experiment state {state}: ") and "line 1" in message


def test_newest_state_file__a_folder_named_like_a_state_is_not_one(tmp_path):
    _save_state(tmp_path, {"a": "TERMINATED"}, session="2026-01-01_00-00-00")
    (tmp_path / "experiment_state-2026-12-31_00-00-00.json").mkdir()  # e.g. a sync tool's folder
    assert checkpoints.newest_state_file(LOCAL, str(tmp_path)).base_name == \
        "experiment_state-2026-01-01_00-00-00.json"


def test_prune_all_but__without_a_best_model_and_after_a_trial_the_state_does_not_list_finished(tmp_path):
    exp = tmp_path / "exp"
    results = [_result(exp, "running"), _result(exp, "sl", method="sl"), _result(exp, "mix")]
    _save_state(exp, {"running": "RUNNING", "sl": "TERMINATED", "mix": "TERMINATED"})
    assert prune_all_but(results, None) == 4  # no best model (every run failed validation): nothing kept for it
    assert (_left(exp, "running"), _left(exp, "sl"), _left(exp, "mix")) == (BOTH, [], [])


def test_prune__tells_the_fault_hook_when_a_trial_completes(tmp_path, monkeypatch):
    """tests/test_faults.py kills the driver on this event, in the window before the next snapshot."""
    events = []
    monkeypatch.setattr(faults, "driver_event", lambda event, config: events.append((event, config)))
    trial = _trial(tmp_path / "exp", "a", method="mixtraining")
    PruneCheckpoints().on_trial_complete(0, [], trial)
    assert events == [("trial_complete", {"method": "mixtraining"})]


def test_prune_finished__counts_nothing_when_nothing_waits_or_nothing_can_be_read(tmp_path):
    exp, prune = tmp_path / "exp", PruneCheckpoints()
    assert prune.prune_finished() == 0  # nothing waits
    prune.on_trial_complete(0, [], _trial(exp, "a"))
    assert prune.prune_finished() == 0  # no saved state yet
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text("{half")
    assert prune.prune_finished() == 0  # unreadable
    _save_state(exp, {"a": "TERMINATED"}, session="2026-01-02_00-00-00")
    assert prune.prune_finished() == 2
    _save_state(exp, {"a": "TERMINATED"}, session="2026-01-03_00-00-00")
    prune.on_trial_complete(0, [], _trial(exp, "b"))
    assert prune.prune_finished() == 0 and set(prune.waiting) == {"b"}  # read, and "b" not finished in it


def _looks(tmp_path, monkeypatch, read_s: float, steps: list[float]) -> list[float]:
    """When a default PruneCheckpoints reads the saved state, on steps at these times (a new state each step,
    each read taking `read_s` of the clock)."""
    now, reads = [0.0], []
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: now[0])
    real = checkpoints.saved_statuses

    def read(fs, path):
        reads.append(now[0])
        now[0] += read_s
        return real(fs, path)

    monkeypatch.setattr(checkpoints, "saved_statuses", read)
    exp, prune = tmp_path / "exp", PruneCheckpoints()
    prune.on_trial_complete(0, [], _trial(exp, "a"))
    for i, t in enumerate(steps):
        now[0] = t
        _save_state(exp, {"a": "RUNNING"}, session=f"2026-01-01_00-00-{i:02d}")
        prune.on_step_end(i, [])
    return reads


def test_prune__by_default_looks_at_most_every_5_s(tmp_path, monkeypatch):
    assert _looks(tmp_path, monkeypatch, 0.0, [1000.0, 1004.9, 1005.0, 1009.9]) == [1000.0, 1005.0]


def test_prune__by_default_spaces_looks_by_20_times_the_cost_of_the_last_read(tmp_path, monkeypatch):
    assert _looks(tmp_path, monkeypatch, 0.5, [1000.0, 1009.9, 1010.0]) == [1000.0, 1010.0]


def test_delete_checkpoints__a_trial_folder_that_is_gone_has_none_to_remove(tmp_path):
    assert checkpoints.delete_checkpoints(LOCAL, str(tmp_path / "gone")) == 0


def test_prune__the_first_step_looks_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: 0.5)  # a clock that starts near zero
    exp, prune = tmp_path / "exp", PruneCheckpoints()
    _save_state(exp, {"a": "TERMINATED"})
    prune.on_trial_complete(0, [], _trial(exp, "a"))
    prune.on_step_end(0, [])
    assert _left(exp, "a") == []

