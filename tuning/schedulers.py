"""Phase-aware schedulers: progress in supervised epochs, trials compared only with comparable ones.

During the SSL-only phase no classifier has trained, so validation accuracy says nothing
about a trial: no scheduler may rank, stop or exploit it there. Time is therefore
`sl_epochs` (epochs in which the classifier trained), and results from before the first such
epoch are never shown to the scheduler. Baselines always run to the end: the comparison table
needs their final accuracy, and so do the trials that complete the chosen configuration's stopped
seeds and those that confirm it on fresh seeds (tuning.searcher). Each group of comparable MixTraining trials gets its own Ray scheduler:
- `PhaseAwareASHA`: one `ASHAScheduler` per (fraction, epoch budget). A 10-epoch trial at its
  8th supervised epoch has annealed its learning rate while a 20-epoch trial there is
  mid-schedule; ranking them together kills the longer budgets. ASHA always lets the first
  trial at a rung continue, so every group finishes at least one trial.
- `PhaseAwarePBT`: one `PopulationBasedTraining` per (fraction, seed, e_ssl, e_sl, rho). PBT
  copies a better trial's weights into a worse one, so donor and recipient must share the
  phase plan and data; only alpha and lam are perturbed.

`--scheduler NAME` picks `SCHEDULERS[NAME]`: adding a scheduler is one class with `for_search`
(and, where some searches or spaces do not fit it, `refusal`) and one entry there.
"""
from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler

from search_spaces import searched
from trainable.tune_trainable import PBT_MUTABLE
from tuning.ray_internals import without_search_alg
from tuning.searcher import COMPLETION, CONFIRM

SL_EPOCHS = "sl_epochs"


class Choice:
    """What `--scheduler` needs of a scheduler class."""

    stops_early = False  # whether some MixTraining seeds end before their plan (then the chosen one is completed)

    @classmethod
    def for_search(cls, space: dict[str, Any], grace_period: int | None, metric: str = "val_acc",
                   mode: str = "max") -> TrialScheduler:
        raise NotImplementedError

    @classmethod
    def refusal(cls, space: dict[str, Any], search: str) -> str | None:
        """Why this scheduler cannot run that search over that space (None: it can)."""
        return None


class Fifo(Choice, FIFOScheduler):
    """No early stopping: every trial runs to the end (the paper's protocol)."""

    @classmethod
    def for_search(cls, space, grace_period, metric="val_acc", mode="max") -> TrialScheduler:
        return cls()


class _Grouped(Choice, FIFOScheduler):
    """Delegates each MixTraining trial to the Ray scheduler of its group; baselines run freely."""

    group_keys: tuple[str, ...] = ()

    def __init__(self, metric: str, mode: str):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.groups: dict[tuple, TrialScheduler] = {}

    def _make(self, config: dict) -> TrialScheduler:
        raise NotImplementedError

    def _inner(self, trial) -> TrialScheduler | None:
        cfg = trial.config
        if cfg.get("method") != "mixtraining" or cfg.get(COMPLETION) or cfg.get(CONFIRM):
            return None
        key = tuple(cfg.get(k) for k in self.group_keys)
        if key not in self.groups:
            self.groups[key] = self._make(cfg)
        return self.groups[key]

    def on_trial_add(self, tune_controller, trial) -> None:
        if inner := self._inner(trial):
            inner.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        inner = self._inner(trial)
        if inner is None or result.get(SL_EPOCHS, 0) < 1:
            return TrialScheduler.CONTINUE
        return inner.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if inner := self._inner(trial):
            inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if inner := self._inner(trial):
            inner.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"{type(self).__name__}: {len(self.groups)} group(s) of comparable trials"


class PhaseAwareASHA(_Grouped):
    group_keys = ("fraction", "e_sl")
    stops_early = True

    @classmethod
    def for_search(cls, space, grace_period, metric="val_acc", mode="max") -> TrialScheduler:
        return cls(metric, mode, grace_period=grace_period)

    def __init__(self, metric: str = "val_acc", mode: str = "max", grace_period: int | None = None,
                 reduction_factor: float = 4):
        super().__init__(metric, mode)
        self.grace_period, self.reduction_factor = grace_period, reduction_factor

    def _make(self, config: dict) -> TrialScheduler:
        budget = int(config["e_sl"])
        return ASHAScheduler(time_attr=SL_EPOCHS, metric=self._metric, mode=self._mode, max_t=budget,
                             grace_period=min(budget, self.grace_period or max(1, budget // 4)),
                             reduction_factor=self.reduction_factor)


class PhaseAwarePBT(_Grouped):
    group_keys = ("fraction", "seed", "e_ssl", "e_sl", "rho")
    stops_early = False  # PBT changes configurations; it stops none

    @classmethod
    def for_search(cls, space, grace_period, metric="val_acc", mode="max") -> TrialScheduler:
        mutations = {k: v for k, v in searched(space).items() if k in PBT_MUTABLE}
        return cls(mutations, metric, mode, perturbation_interval=grace_period)

    @classmethod
    def refusal(cls, space: dict[str, Any], search: str) -> str | None:
        varying = [k for k in searched(space) if k not in PBT_MUTABLE]
        if varying:
            return (f"the space varies {', '.join(varying)}; PBT copies weights between trials, which must share "
                    f"the phase plan and every other setting: use --space pbt, or a space varying only "
                    f"{' and '.join(PBT_MUTABLE)}")
        if search == "optuna":
            return "use --search random or grid (PBT changes the configs Optuna would learn from)"
        return None

    def __init__(self, mutations: dict, metric: str = "val_acc", mode: str = "max",
                 perturbation_interval: int | None = None):
        super().__init__(metric, mode)
        self.mutations, self.interval = mutations, perturbation_interval

    def _make(self, config: dict) -> TrialScheduler:
        return PopulationBasedTraining(
            time_attr=SL_EPOCHS, metric=self._metric, mode=self._mode, quantile_fraction=0.25,
            perturbation_interval=self.interval or max(1, int(config["e_sl"]) // 4),
            hyperparam_mutations=self.mutations)

    def on_trial_add(self, tune_controller, trial) -> None:
        # Ray's PBT refuses any search algorithm, since it overwrites the configs a searcher would
        # learn from. Ours only hands out starting points (`refusal` allows PBT with the random and
        # grid searches, which learn nothing), so PBT is shown no search algorithm.
        super().on_trial_add(without_search_alg(tune_controller), trial)


# --scheduler's choices: one entry per scheduler.
SCHEDULERS: dict[str, type] = {"asha": PhaseAwareASHA, "fifo": Fifo, "pbt": PhaseAwarePBT}
