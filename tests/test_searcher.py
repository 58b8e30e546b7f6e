"""The experiment searcher, search spaces and phase-aware ASHA, without starting Ray."""
import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from search_spaces import SPACES, epoch_budgets, get_space, grid, to_config_fields
from trainable.config import MixConfig
from tuning.scheduler import PhaseAwareASHA
from tuning.searcher import GROUP, ExperimentSearcher

BASE = MixConfig(datasets=("digits",), model="test").to_dict()


def _drain(searcher, prefix="t"):
    out, i = [], 0
    while True:
        cfg = searcher.suggest(f"{prefix}{i}")
        if cfg in (None, Searcher.FINISHED):
            return out, cfg
        out.append((f"{prefix}{i}", cfg))
        i += 1


def test_spaces__every_key_is_a_config_field_and_a_typo_fails_at_once():
    for name in SPACES:
        get_space(name)
    SPACES["typo"] = {"alhpa": 0.5}
    try:
        with pytest.raises(ValueError, match=r"\['alhpa'\] are not config fields"):
            get_space("typo")
    finally:
        del SPACES["typo"]


def test_paper_space__values_of_tables_4_5_6_and_lam_only_when_datasets_differ():
    space = get_space("paper")
    assert space["lam"] == 0.5
    values = {k: sorted({p[k] for p in grid(space)}) for k in ("alpha", "rho", "epochs")}
    assert values == {"alpha": [0.01, 0.1, 0.5, 0.9, 0.99], "rho": [0.25, 0.5, 0.75, 1.0], "epochs": [50, 75, 100]}
    assert len(grid(space)) == 60
    assert sorted({p["lam"] for p in grid(get_space("paper", different_ssl_data=True))}) == [0.25, 0.5, 0.75]


def test_epoch_scale__shrinks_budgets_proportionally_never_below_one():
    assert epoch_budgets(get_space("paper"), 0.1) == [5, 8, 10]
    assert epoch_budgets(get_space("paper"), 0.001) == [1]
    assert epoch_budgets(get_space("continuous")) == [50, 75, 100]
    assert to_config_fields({"epochs": 75, "alpha": 0.1}, 0.1) == {"e_ssl": 8, "e_sl": 8, "alpha": 0.1}


def test_grid__one_trial_per_combination_and_seed_plus_baselines_once_per_budget_fraction_seed():
    space = get_space("paper")
    s = ExperimentSearcher(space, fractions=[0.5, 1.0], seeds=2, budgets=[2, 3, 4], epoch_scale=0.04,
                           num_samples=1, inner=None, metric="val_acc", mode="max")
    expected = s.total_trials
    trials, end = _drain(s)
    assert end == Searcher.FINISHED and len(trials) == expected
    configs = [c for _, c in trials]
    base = [c for c in configs if c["method"] != "mixtraining"]
    mix = [c for c in configs if c["method"] == "mixtraining"]
    assert len(mix) == 60 * 2 * 2
    assert len(base) == 2 * 3 * 2 * 2  # methods x budgets x fractions x seeds
    keys = [(c["method"], c["e_sl"], c["fraction"], c["seed"]) for c in base]
    assert len(set(keys)) == len(keys), "each baseline exactly once"
    for c in configs:  # every trial over the shared base is a valid config
        MixConfig.from_dict({**BASE, **{k: v for k, v in c.items() if not k.startswith("_")}})
    assert {c["e_sl"] for c in mix} == {2, 3, 4}


class _FakeInner(Searcher):
    """Proposes alpha = 0.1, 0.2, ... and records what it is told."""

    def __init__(self):
        super().__init__(metric="val_acc", mode="max")
        self.n, self.told = 0, {}

    def suggest(self, trial_id):
        self.n += 1
        return {"alpha": self.n / 10, "rho": 0.5, "epochs": 2}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told[trial_id] = result


def test_optuna_style__each_proposal_runs_over_all_seeds_and_the_searcher_learns_the_mean():
    inner = _FakeInner()
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=3, budgets=[2], epoch_scale=1.0,
                           num_samples=2, inner={1.0: inner}, metric="val_acc", mode="max", baselines=False)
    assert s.total_trials == 6
    trials, end = _drain(s)
    assert end == Searcher.FINISHED and len(trials) == 6
    assert [c["seed"] for _, c in trials] == [0, 1, 2, 0, 1, 2]
    group = trials[0][0]
    assert all(c[GROUP] == group and c["alpha"] == 0.1 for _, c in trials[:3])
    for (tid, _), acc in zip(trials[:3], [0.5, 0.6, 0.7]):
        s.on_trial_complete(tid, {"val_acc": acc})
    assert inner.told == {group: {"val_acc": pytest.approx(0.6)}}


def test_searcher__state_survives_save_and_restore(tmp_path):
    inner = _FakeInner()
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0,
                           num_samples=3, inner={1.0: inner}, metric="val_acc", mode="max")
    first = [s.suggest(f"a{i}") for i in range(5)]  # four baselines (2 methods x 2 seeds), one proposal
    assert [c["method"] for c in first] == ["sl", "sl", "ssl_sl", "ssl_sl", "mixtraining"]
    s.save(str(tmp_path / "s.pkl"))
    restored = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0,
                                  num_samples=3, inner={1.0: _FakeInner()}, metric="val_acc", mode="max")
    restored.restore(str(tmp_path / "s.pkl"))
    repeat = restored.suggest("a5")  # the pending seed repeat of the proposal
    assert (repeat["alpha"], repeat["seed"], repeat[GROUP]) == (first[-1]["alpha"], 1, "a4")
    assert restored.suggest("a6")["alpha"] == 0.2  # the restored inner searcher goes on where it was


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
