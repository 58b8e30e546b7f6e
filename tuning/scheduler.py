"""Phase-aware ASHA: progress is counted in supervised epochs.

During the SSL-only phase no classifier has trained, so validation accuracy says nothing
about a trial: ASHA must not rank or stop it there. Its time attribute is therefore
`sl_epochs` (epochs in which the classifier trained), and results from before the first such
epoch are not shown to ASHA at all. Baselines always run to the end: the comparison table
needs their final accuracy.
"""
from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

SL_EPOCHS = "sl_epochs"


class PhaseAwareASHA(ASHAScheduler):
    def __init__(self, metric: str = "val_acc", mode: str = "max", max_t: int = 100,
                 grace_period: int = 1, reduction_factor: float = 4):
        super().__init__(time_attr=SL_EPOCHS, metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(SL_EPOCHS, 0) < 1 or trial.config.get("method") != "mixtraining":
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
