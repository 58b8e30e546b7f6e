"""tuning.checkpoints: a finished trial's checkpoints removed unless it is a candidate for the best model."""
from types import SimpleNamespace

import pyarrow.fs

from tuning.checkpoints import PruneCheckpoints


def _trial(tmp_path, name, method, completed):
    path = tmp_path / name
    for i in range(2):
        (path / f"checkpoint_00000{i}").mkdir(parents=True)
    return SimpleNamespace(config={"method": method}, last_result={"completed": completed},
                           checkpoint=SimpleNamespace(path=str(path / "checkpoint_000001")),
                           storage=SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(),
                                                   trial_fs_path=str(path)))


def test_prune__baselines_and_stopped_trials_lose_all_completed_mixtraining_keeps_its_final_one(tmp_path):
    cases = {"sl": ("sl", True), "stopped": ("mixtraining", False), "done": ("mixtraining", True)}
    for name, (method, completed) in cases.items():
        PruneCheckpoints().on_trial_complete(0, [], _trial(tmp_path, name, method, completed))
    kept = {name: sorted(p.name for p in (tmp_path / name).iterdir()) for name in cases}
    assert kept == {"sl": [], "stopped": [], "done": ["checkpoint_000001"]}
