"""Every place the search reaches into Ray Tune's internals, in one file, each with why.

Ray Tune (2.60) has no public way to do these; when Ray changes, this is the file to read.
"""
from __future__ import annotations

import copy
import functools
import logging
import os
from typing import TYPE_CHECKING, Any

from ray.train._internal import checkpoint_manager
from ray.train._internal.storage import get_fs_and_path
from ray.tune.search import SearchGenerator

if TYPE_CHECKING:
    from tuning.searcher import ExperimentSearcher

# Tune keeps one trial pending for a search algorithm of its own kind (`_get_max_pending_trials`); it reads
# this variable when `tuner.fit()` builds its controller.
PENDING_ENV = "TUNE_MAX_PENDING_TRIALS_PG"


def fit_with_pending(tuner, pending: int):
    """`tuner.fit()` with Tune allowed `pending` trials waiting for resources at once (unless the user set
    PENDING_ENV): with Tune's default of one, slots freed together fill one after another and an autoscaler
    is asked for one worker at a time. The variable is restored afterwards."""
    user_set = PENDING_ENV in os.environ
    if not user_set:
        os.environ[PENDING_ENV] = str(pending)
    try:
        return tuner.fit()
    finally:
        if not user_set:
            os.environ.pop(PENDING_ENV, None)


def override_restored_run(tuner, callbacks: list, failure_config, verbose: int, time_budget_s: float | None) -> None:
    """A restored Tuner with this run's callbacks, failure budget, verbosity and time budget: `Tuner.restore`
    takes no arguments for them and would bring back the saved ones."""
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks, run_config.failure_config, run_config.verbose = callbacks, failure_config, verbose
    tuner._local_tuner._tune_config.time_budget_s = time_budget_s


def restored_search_alg(tuner):
    """The search algorithm of a restored Tuner (to give it this run's settings)."""
    return tuner._local_tuner._tune_config.search_alg


def move_experiment_spec(spec: dict[str, Any], storage_path: str, name: str, max_failures: int) -> None:
    """Point a restored search generator's experiment spec at this run's storage path, name and failure budget,
    as Tune's controller moves the trials it restores (`TuneController._restore_trials`): without it a moved
    experiment's new trials would be written to its old location (Ray 2.60)."""
    storage = copy.copy(spec["storage"])
    storage.storage_filesystem, storage.storage_fs_path = get_fs_and_path(storage_path, None)
    storage.experiment_dir_name = name
    spec.update(storage=storage, max_failures=max_failures)


class _WithoutSearchAlg:
    """The tune controller as PBT's trial registration sees it: everything but the search algorithm."""

    search_alg = None

    def __init__(self, controller):
        self._controller = controller

    def __getattr__(self, name):
        return getattr(self._controller, name)


def without_search_alg(controller):
    """Ray's PBT refuses to run beside any search algorithm (it reads `controller.search_alg`)."""
    return _WithoutSearchAlg(controller)


class ExperimentSearch(SearchGenerator):
    """Ray Tune's SearchGenerator around an ExperimentSearcher, resumable with new run settings.

    On restore Tune brings back the experiment spec it saved when the search started, storage path
    and failure budget included, and the searcher's own state: a moved experiment's new trials would
    be written to its old location (Ray 2.60), and a new failure budget or concurrency ignored.
    `resume_with` gives the values of this run, applied once the saved state is restored.
    """

    def __init__(self, searcher: ExperimentSearcher):
        super().__init__(searcher)
        self.spec_now: dict[str, Any] = {}
        self.max_concurrent_now: int | None = None

    def resume_with(self, storage_path: str, name: str, max_failures: int, max_concurrent: int | None) -> None:
        self.spec_now = {"storage_path": storage_path, "name": name, "max_failures": max_failures}
        self.max_concurrent_now = max_concurrent

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        if not self.spec_now:
            return
        move_experiment_spec(self._experiment.spec, **self.spec_now)
        self.searcher.max_concurrent = self.max_concurrent_now


def tolerate_deleted_checkpoints() -> None:
    """Make Tune's removal of a trial's surplus checkpoints (beyond `num_to_keep`) accept one already gone.

    Tune deletes by the list in its saved experiment state: a driver killed after a deletion but before the
    next snapshot leaves a state naming a deleted checkpoint, and on `--resume` that trial's next checkpoint
    raised FileNotFoundError inside Tune, which then skipped the rest of the checkpoint's bookkeeping.
    """
    original = checkpoint_manager._delete_fs_path
    if getattr(original, "tolerates_missing", False):
        return

    @functools.wraps(original)
    def delete(fs, fs_path):
        try:
            original(fs=fs, fs_path=fs_path)
        except FileNotFoundError:
            logging.getLogger(__name__).info("checkpoint %s was already removed", fs_path)

    delete.tolerates_missing = True
    checkpoint_manager._delete_fs_path = delete
