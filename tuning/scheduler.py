"""Phase-aware ASHA: progress in supervised epochs, trials ranked within their epoch budget.

During the SSL-only phase no classifier has trained, so validation accuracy says nothing
about a trial: ASHA must not rank or stop it there. Its time attribute is therefore
`sl_epochs` (epochs in which the classifier trained), and results from before the first such
epoch are never shown to ASHA. Trials are ranked only against trials with the same data
fraction and epoch budget: a 10-epoch trial at its 8th supervised epoch has annealed its
learning rate while a 20-epoch trial there is mid-schedule, and ranking them together kills
the longer budgets. Each (fraction, budget) group gets its own Ray `ASHAScheduler`, and ASHA
always lets the first trial at a rung continue, so every group finishes at least one trial.
Baselines always run to the end: the comparison table needs their final accuracy.
"""
from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler

SL_EPOCHS = "sl_epochs"


class PhaseAwareASHA(FIFOScheduler):
    def __init__(self, metric: str = "val_acc", mode: str = "max", grace_period: int | None = None,
                 reduction_factor: float = 4):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.grace_period, self.reduction_factor = grace_period, reduction_factor
        self.groups: dict[tuple, ASHAScheduler] = {}

    def _asha(self, trial) -> ASHAScheduler | None:
        """The ASHA of the trial's (fraction, budget) group; None for baselines."""
        cfg = trial.config
        if cfg.get("method") != "mixtraining":
            return None
        key = (cfg["fraction"], cfg["e_sl"])
        if key not in self.groups:
            budget = int(cfg["e_sl"])
            grace = min(budget, self.grace_period or max(1, budget // 4))
            self.groups[key] = ASHAScheduler(time_attr=SL_EPOCHS, metric=self._metric, mode=self._mode,
                                             max_t=budget, grace_period=grace,
                                             reduction_factor=self.reduction_factor)
        return self.groups[key]

    def on_trial_add(self, tune_controller, trial) -> None:
        if asha := self._asha(trial):
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        asha = self._asha(trial)
        if asha is None or result.get(SL_EPOCHS, 0) < 1:
            return TrialScheduler.CONTINUE
        return asha.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if asha := self._asha(trial):
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if asha := self._asha(trial):
            asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"PhaseAwareASHA: {len(self.groups)} (fraction, budget) group(s)"


class PhaseAwarePBT(FIFOScheduler):
    """Population-based training of alpha (and lam) within populations that share a phase plan.

    PBT copies a better trial's weights into a worse one and perturbs its hyperparameters, so
    donor and recipient must agree on everything that shapes the run but the mutated fields:
    one Ray `PopulationBasedTraining` per (fraction, seed, e_ssl, e_sl, rho) group. Time is
    counted in supervised epochs; the SSL-only phase and the baselines are left alone.
    """

    def __init__(self, mutations: dict, metric: str = "val_acc", mode: str = "max",
                 perturbation_interval: int | None = None, seed: int = 0):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.mutations, self.interval, self.seed = mutations, perturbation_interval, seed
        self.groups: dict[tuple, PopulationBasedTraining] = {}

    def _pbt(self, trial) -> PopulationBasedTraining | None:
        cfg = trial.config
        if cfg.get("method") != "mixtraining":
            return None
        key = tuple(cfg.get(k) for k in ("fraction", "seed", "e_ssl", "e_sl", "rho"))
        if key not in self.groups:
            interval = self.interval or max(1, int(cfg["e_sl"]) // 4)
            self.groups[key] = PopulationBasedTraining(
                time_attr=SL_EPOCHS, metric=self._metric, mode=self._mode, perturbation_interval=interval,
                hyperparam_mutations=self.mutations, quantile_fraction=0.25)
        return self.groups[key]

    def on_trial_add(self, tune_controller, trial) -> None:
        if pbt := self._pbt(trial):
            # Ray's PBT refuses any search algorithm, since it overwrites the configs a searcher would
            # learn from. Ours only hands out starting points (tuning/search.py allows PBT with the
            # random and grid searches, which learn nothing), so PBT is shown no search algorithm.
            pbt.on_trial_add(_WithoutSearchAlg(tune_controller), trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        pbt = self._pbt(trial)
        if pbt is None or result.get(SL_EPOCHS, 0) < 1:
            return TrialScheduler.CONTINUE
        return pbt.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if pbt := self._pbt(trial):
            pbt.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if pbt := self._pbt(trial):
            pbt.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"PhaseAwarePBT: {len(self.groups)} population(s)"


class _WithoutSearchAlg:
    """The tune controller as PBT's trial registration sees it: everything but the search algorithm."""

    search_alg = None

    def __init__(self, controller):
        self._controller = controller

    def __getattr__(self, name):
        return getattr(self._controller, name)
