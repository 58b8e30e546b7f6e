"""Trial checkpoints kept only while something needs them, so a long search's disk use stays bounded.

Tune keeps the latest two checkpoints of each trial (`CheckpointConfig(num_to_keep=2)`), what a resume
needs when the driver was killed between a trial's checkpoint and the experiment snapshot naming it. Once a trial has ended, its checkpoints serve nothing unless it is a candidate for the
best model, which is taken from a completed MixTraining trial at the end of the search:
- `PruneCheckpoints` removes them as soon as a baseline or a stopped trial ends, and all but the final
  one of a completed MixTraining trial (a completion run is a completed run of the chosen
  configuration, so a candidate too); a failed trial keeps them: `--resume` retries it from there;
- `prune_all_but` removes those of every trial but the best model's when the search has finished.
`--keep-checkpoints` turns both off.
"""
from __future__ import annotations

import logging

import pyarrow.fs
from ray import tune

log = logging.getLogger(__name__)


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


class PruneCheckpoints(tune.Callback):
    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        cfg, last = trial.config, trial.last_result or {}
        candidate = cfg.get("method") == "mixtraining" and last.get("completed")
        final = trial.checkpoint.path if candidate and trial.checkpoint is not None else None
        delete_checkpoints(trial.storage.storage_filesystem, trial.storage.trial_fs_path, keep=final)


def prune_all_but(results, best) -> int:
    """At the end of a search: the checkpoints of every trial but the best model's; how many were removed."""
    keep = best.path if best is not None else None
    return sum(delete_checkpoints(r.filesystem, r.path, keep) for r in results if r.path)
