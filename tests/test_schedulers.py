"""tuning.scheduler: phase-aware ASHA, without starting Ray."""
import pytest
from ray.tune.schedulers import TrialScheduler

from tuning.schedulers import PhaseAwareASHA


class _Trial:
    def __init__(self, trial_id, method="mixtraining", e_sl=8, fraction=1.0):
        self.trial_id, self.config = trial_id, {"method": method, "e_sl": e_sl, "fraction": fraction}


def test_phase_aware_asha__never_stops_a_trial_in_its_ssl_only_phase_nor_a_baseline():
    sched = PhaseAwareASHA(metric="val_acc", mode="max", grace_period=1, reduction_factor=2)
    good, bad, base = _Trial("good"), _Trial("bad"), _Trial("base", method="ssl_sl")
    for t in (good, bad, base):
        sched.on_trial_add(None, t)
    # Many SSL-only epochs with a meaningless (NaN) or terrible accuracy: always CONTINUE.
    for epoch in range(1, 6):
        nan_result = {"sl_epochs": 0, "val_acc": float("nan"), "training_iteration": epoch}
        assert sched.on_trial_result(None, bad, nan_result) == TrialScheduler.CONTINUE
        assert sched.on_trial_result(None, base, {"sl_epochs": 0, "val_acc": 0.0}) == TrialScheduler.CONTINUE
    # Once both have trained their classifier, ASHA compares them at its rungs and stops the worse one.
    decisions = []
    for sl in (1, 2):
        sched.on_trial_result(None, good, {"sl_epochs": sl, "val_acc": 0.9})
        decisions.append(sched.on_trial_result(None, bad, {"sl_epochs": sl, "val_acc": 0.1}))
        assert sched.on_trial_result(None, base, {"sl_epochs": sl, "val_acc": 0.0}) == TrialScheduler.CONTINUE
    assert TrialScheduler.STOP in decisions


def test_phase_aware_asha__ranks_trials_only_within_their_fraction_and_epoch_budget():
    sched = PhaseAwareASHA(metric="val_acc", mode="max", grace_period=1, reduction_factor=2)
    long_good, short, other_fraction = _Trial("a", e_sl=20), _Trial("b", e_sl=10), _Trial("c", e_sl=20, fraction=0.1)
    for t in (long_good, short, other_fraction):
        sched.on_trial_add(None, t)
    for sl in (1, 2, 4):
        sched.on_trial_result(None, long_good, {"sl_epochs": sl, "val_acc": 0.9})
        assert sched.on_trial_result(None, short, {"sl_epochs": sl, "val_acc": 0.1}) == TrialScheduler.CONTINUE
        assert sched.on_trial_result(None, other_fraction, {"sl_epochs": sl, "val_acc": 0.1}) == TrialScheduler.CONTINUE
    same_budget = _Trial("d", e_sl=20)
    sched.on_trial_add(None, same_budget)
    assert sched.on_trial_result(None, same_budget, {"sl_epochs": 1, "val_acc": 0.1}) == TrialScheduler.STOP


def test_registry__a_new_scheduler_is_one_class_and_one_entry(monkeypatch):
    """--scheduler's choices and the driver's factory both come from SCHEDULERS: nothing else to edit."""
    from search_spaces import load
    from tuning import schedulers, search
    from tuning.schedulers import SCHEDULERS, Fifo

    class EveryOther(Fifo):  # a trivial scheduler: FIFO under another name, refusing the grid search
        @classmethod
        def refusal(cls, space, search):
            return "no grids here" if search == "grid" else None

    monkeypatch.setitem(SCHEDULERS, "every-other", EveryOther)
    parser = search.build_parser()
    args = parser.parse_args(["--scheduler", "every-other", "--space", "smoke"])
    search.validate(args, parser)
    assert isinstance(schedulers.SCHEDULERS[args.scheduler].for_search(load("smoke"), None), EveryOther)
    with pytest.raises(SystemExit):
        search.validate(parser.parse_args(["--scheduler", "every-other", "--search", "grid"]), parser)
