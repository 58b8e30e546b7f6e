"""Trial checkpoints removed once nothing can need them, so a long search's disk use stays bounded.

Tune keeps the latest two checkpoints of each trial (`CheckpointConfig(num_to_keep=2)`), what a resume
needs when the driver was killed between a trial's checkpoint and the experiment snapshot naming it.
What a resume needs is what Tune's newest saved experiment state (`experiment_state-*.json`) says: a trial
it lists as RUNNING is continued from its checkpoint even if it finished a moment before the driver died.
So a checkpoint goes only when
- its trial is finished (TERMINATED) in a saved experiment state, and it is not the final checkpoint of a
  completed MixTraining trial (a candidate for the best model; a completion run is one too):
  `PruneCheckpoints`, during the search;
- or the search has ended with every trial finished, and it is not the best model's: `prune_all_but`.
A failed trial (ERROR) keeps its checkpoints: `--resume` retries it from there.
`--keep-checkpoints` turns both off (the driver then adds no `PruneCheckpoints`).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import time
from dataclasses import dataclass

import pyarrow.fs
from ray import tune

from trainable import faults

log = logging.getLogger(__name__)

STATE_FILES = "experiment_state-*.json"  # TuneController.CKPT_FILE_TMPL; the newest name is the newest state
TERMINATED = "TERMINATED"


def delete_checkpoints(fs: pyarrow.fs.FileSystem, trial_path: str, keep: str | None = None) -> int:
    """Remove the `checkpoint_*` folders of a trial (but `keep`); how many."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
    gone = 0
    for info in infos:
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_") \
                and info.path != keep:
            try:
                fs.delete_dir(info.path)
                gone += 1
            except (FileNotFoundError, OSError) as e:  # already gone, or a storage hiccup: nothing to save
                log.info("could not remove %s: %s", info.path, e)
    return gone


def newest_state_file(fs: pyarrow.fs.FileSystem, experiment_path: str) -> pyarrow.fs.FileInfo | None:
    """The experiment snapshot a resume would read (Tune takes the greatest name); None if there is none."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(experiment_path, allow_not_found=True))
    states = [i for i in infos if i.type == pyarrow.fs.FileType.File and fnmatch.fnmatch(i.base_name, STATE_FILES)]
    return max(states, key=lambda i: i.base_name, default=None)


def saved_statuses(fs: pyarrow.fs.FileSystem, state_file: str) -> dict[str, str] | None:
    """Trial id -> status in a saved experiment state; None when it cannot be read (e.g. half uploaded).

    Ray 2.60 writes {"trial_data": [[trial_json, run_metadata_json], ...], ...}, each trial_json a JSON text
    with "trial_id" and "status". Read as plain JSON: the pickled fields stay hex strings, never loaded.
    """
    try:
        with fs.open_input_stream(state_file) as f:
            state = json.loads(f.read())
        trials = (json.loads(trial_json) for trial_json, _ in state["trial_data"])
        return {t["trial_id"]: t["status"] for t in trials}
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Expected now and then: Tune rewrites the file in place, and the next check reads it again.
        log.debug("could not read the experiment state %s: %s", state_file, e)
        return None


def finished_in_saved_state(fs: pyarrow.fs.FileSystem, experiment_path: str) -> set[str]:
    """The ids of the trials that the newest saved experiment state lists as TERMINATED."""
    newest = newest_state_file(fs, experiment_path)
    statuses = saved_statuses(fs, newest.path) if newest is not None else None
    return {t for t, status in (statuses or {}).items() if status == TERMINATED}


@dataclass(frozen=True)
class _Finished:
    """A trial Tune reported complete, whose checkpoints wait for a snapshot that lists it finished."""
    fs: pyarrow.fs.FileSystem
    experiment_path: str
    trial_path: str
    keep: str | None  # its final checkpoint when it is a best-model candidate


def final_if_candidate(config: dict | None, last: dict | None, checkpoint) -> str | None:
    """The final checkpoint of a completed MixTraining trial (a best-model candidate), else None."""
    if (config or {}).get("method") == "mixtraining" and (last or {}).get("completed") and checkpoint is not None:
        return checkpoint.path
    return None


class PruneCheckpoints(tune.Callback):
    """Removes a finished trial's checkpoints once a saved experiment state lists it TERMINATED.

    Tune calls `on_trial_complete` before its next snapshot, up to ~10 s later (the snapshot is also uploaded
    in the background): a driver killed in between leaves a state that lists the trial RUNNING, and a
    resume continues it from its checkpoint. So a finished trial only waits here; the newest saved state
    is read on later steps (at most every `every_s`, and only when it changed) and at the experiment's end,
    after Tune's final snapshot. A trial in ERROR is never among them. The state grows with the trials (about
    30 KB each): reads are spaced by at least `spacing` times the last read's time, so a long search's
    driver does not spend itself parsing it.
    """

    def __init__(self, every_s: float = 5.0, spacing: float = 20.0):
        self.every_s, self.spacing = every_s, spacing
        self.waiting: dict[str, _Finished] = {}  # trial id -> what to remove once the saved state agrees
        self._next_look = 0.0
        self._last_state: tuple | None = None  # (path, mtime, size) of the state file last read

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        storage = trial.storage
        self.waiting[trial.trial_id] = _Finished(storage.storage_filesystem, storage.experiment_fs_path,
                                                 storage.trial_fs_path,
                                                 final_if_candidate(trial.config, trial.last_result, trial.checkpoint))
        faults.driver_event("trial_complete", trial.config)  # a test's driver kill, right in the window

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.waiting and time.monotonic() >= self._next_look:
            start = time.monotonic()
            self.prune_finished()
            took = time.monotonic() - start
            self._next_look = start + max(self.every_s, self.spacing * took)

    def on_experiment_end(self, trials, **info) -> None:
        if self.waiting:  # Tune wrote (and waited for) its final snapshot before calling this
            self.prune_finished(even_unchanged=True)

    def prune_finished(self, even_unchanged: bool = False) -> int:
        """Remove the checkpoints of the waiting trials that the newest saved state lists as finished; how many."""
        first = next(iter(self.waiting.values()), None)
        if first is None:
            return 0
        newest = newest_state_file(first.fs, first.experiment_path)
        seen = None if newest is None else (newest.path, newest.mtime_ns, newest.size)
        if seen is None or (seen == self._last_state and not even_unchanged):
            return 0
        statuses = saved_statuses(first.fs, newest.path)
        if statuses is None:
            return 0
        self._last_state = seen
        done = [t for t in self.waiting if statuses.get(t) == TERMINATED]
        return sum(delete_checkpoints(w.fs, w.trial_path, w.keep) for w in map(self.waiting.pop, done))


def prune_all_but(results, best) -> int:
    """At the end of a search: checkpoints that nothing can need any more; how many were removed.

    A trial in ERROR keeps all of its checkpoints (`--resume` retries it), and so does a trial that the saved
    experiment state does not list as finished. While any trial failed, the final checkpoints of completed
    MixTraining trials stay too: the retried trial may change which one is the best model. Otherwise only
    the best model's checkpoint (`best`, a Checkpoint or None) is left.
    """
    finished = {}  # experiment folder -> trial ids finished in its saved state
    all_done = not any(r.error for r in results)
    keep_best = best.path if best is not None else None
    gone = 0
    for r in results:
        if r.error or not r.path:
            continue
        experiment = r.path.rsplit("/", 1)[0]
        if experiment not in finished:
            finished[experiment] = finished_in_saved_state(r.filesystem, experiment)
        if (r.metrics or {}).get("trial_id") not in finished[experiment]:
            continue
        own = None if all_done else final_if_candidate(r.config, r.metrics, r.checkpoint)
        keep = own or keep_best
        gone += delete_checkpoints(r.filesystem, r.path, keep)
    return gone
