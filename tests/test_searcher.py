"""tuning.searcher: baselines, seeds, per-fraction proposals and SSL-prefix waits, without starting Ray."""
import pytest
from ray.tune.search import Searcher

from search_spaces import get_space
from trainable.config import MixConfig
from tuning.searcher import GROUP, ExperimentSearcher

BASE = MixConfig(datasets=("digits",), model="test").to_dict()


def _drain(searcher, prefix="t", finish=False):
    """Every suggestion until the searcher waits (None) or is done; with finish, the waiting trials end
    (completed, val_acc 0.5) whenever it waits, until it is done."""
    out, i = [], 0
    while True:
        cfg = searcher.suggest(f"{prefix}{i}")
        if cfg is None and finish and searcher.live:
            for tid in list(searcher.live):
                searcher.on_trial_complete(tid, {"val_acc": 0.5, "completed": True})
            continue
        if cfg in (None, Searcher.FINISHED):
            return out, cfg
        out.append((f"{prefix}{i}", cfg))
        i += 1


def test_grid__one_trial_per_combination_and_seed_plus_baselines_once_per_budget_fraction_seed():
    space = get_space("paper")
    s = ExperimentSearcher(space, fractions=[0.5, 1.0], seeds=2, budgets=[2, 3, 4], epoch_scale=0.04,
                           num_samples=1, inner=None, metric="val_acc", mode="max")
    expected = s.total_trials
    trials, end = _drain(s, finish=True)
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
    assert end is None and len(trials) == 6  # waits for its trials' results before it can be done
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


def test_searcher__holds_back_a_trial_whose_prefix_a_running_trial_is_computing():
    s = ExperimentSearcher(get_space("paper"), fractions=[1.0], seeds=1, budgets=[4], epoch_scale=0.04,
                           num_samples=1, inner=None, metric="val_acc", mode="max", share_ssl=True)
    sl, producer = s.suggest("t0"), s.suggest("t1")
    assert (sl["method"], producer["method"], producer["e_ssl"]) == ("sl", "ssl_sl", 4)
    # Mix trials with e_ssl = 4 and rho < 1 need 1..3 SSL-only epochs that t1 (ssl_sl, 4 SSL epochs) will store.
    blocked = [c for c in s.queue if c["e_ssl"] == 4 and c["rho"] < 1.0]
    assert blocked and not any(s._ready(c) for c in blocked)
    started = [s.suggest(f"m{i}") for i in range(len(s.queue))]
    assert not any(c["e_ssl"] == 4 and c["rho"] < 1.0 for c in started if c), "a blocked trial started"
    assert started[-1] is None and all(c in s.queue for c in blocked)
    s.on_trial_result("t1", {"phase": "ssl", "epoch": 1})  # one SSL epoch stored: rho = 0.75 (needs 1) is ready
    ready = s.suggest("m_ready")
    assert (ready["e_ssl"], ready["rho"]) == (4, 0.75)
    s.on_trial_result("t1", {"phase": "sl", "epoch": 5})  # t1 left its SSL phase: all its key's trials may start
    waiting = [c for c in s.queue if c["e_ssl"] == 4]
    assert waiting and all(s._ready(c) for c in waiting)


def test_searcher__a_trial_that_needs_more_waits_for_the_shorter_prefix_a_running_trial_is_computing():
    """As in the confirmation runs: SSL+SL (4 SSL-only epochs) queued behind the chosen configuration (fewer)
    on the same seed continues from that configuration's prefix instead of training it again beside it."""
    s = ExperimentSearcher(get_space("paper"), fractions=[1.0], seeds=1, budgets=[4], epoch_scale=0.04,
                           num_samples=1, inner=None, metric="val_acc", mode="max", share_ssl=True, baselines=False)
    four = sorted((c for c in s.queue if c["e_ssl"] == 4), key=lambda c: -c["rho"])  # rho 1 needs none, 0.75 one
    s.queue = four + [c for c in s.queue if c["e_ssl"] != 4]
    while s.queue[0]["rho"] == 1.0:
        s.suggest(f"r{len(s.queue)}")
    short = s.suggest("short")
    longer = [c for c in s.queue if c["e_ssl"] == 4 and c["rho"] < 0.75]  # need 2 or 3 SSL-only epochs
    assert (short["e_ssl"], short["rho"]) == (4, 0.75) and longer
    assert not any(s._ready(c) for c in longer)
    assert all(s._ready(c) for c in s.queue if c["e_ssl"] != 4)  # other keys take the free slots meanwhile
    s.on_trial_result("short", {"phase": "ssl", "epoch": 1})  # its one SSL-only epoch is stored
    assert all(s._ready(c) for c in longer)


def test_searcher__optuna_proposals_also_wait_for_a_prefix_being_computed():
    class Inner(Searcher):
        def suggest(self, trial_id):
            return {"alpha": 0.5, "rho": 0.5, "epochs": 100}  # needs 2 of the 4 SSL epochs at scale 0.04

    s = ExperimentSearcher(get_space("paper"), fractions=[1.0], seeds=1, budgets=[4], epoch_scale=0.04,
                           num_samples=2, inner={1.0: Inner(metric="val_acc", mode="max")}, metric="val_acc",
                           mode="max", share_ssl=True)
    assert [s.suggest("b0")["method"], s.suggest("b1")["method"]] == ["sl", "ssl_sl"]  # b1 computes the prefix
    assert s.suggest("p0") is None and len(s.queue) == 1  # the proposal waits in the queue
    s.on_trial_result("b1", {"phase": "ssl", "epoch": 2})
    cfg = s.suggest("p1")
    assert cfg["method"] == "mixtraining" and cfg["_group"] == "p0"  # the group keeps the id Optuna knows


def test_searcher__a_failed_seed_is_left_out_of_the_mean_and_all_seeds_failed_is_an_error():
    inner = _FakeInner()
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=3, budgets=[2], epoch_scale=1.0,
                           num_samples=2, inner={1.0: inner}, metric="val_acc", mode="max", baselines=False)
    trials, _ = _drain(s)
    first, second = trials[0][0], trials[3][0]
    s.on_trial_complete(trials[0][0], {"val_acc": 0.4})
    s.on_trial_complete(trials[1][0], None, error=True)
    assert inner.told == {}  # still waiting for the third seed
    s.on_trial_complete(trials[2][0], {"val_acc": 0.8})
    assert inner.told == {first: {"val_acc": pytest.approx(0.6)}}
    for tid, _ in trials[3:]:
        s.on_trial_complete(tid, None, error=True)
    assert inner.told[second] is None  # the inner searcher hears of an error, not of a made-up value


def test_searcher__trials_waiting_for_a_prefix_start_when_its_producer_fails():
    s = ExperimentSearcher(get_space("paper"), fractions=[1.0], seeds=1, budgets=[4], epoch_scale=0.04,
                           num_samples=1, inner=None, metric="val_acc", mode="max", share_ssl=True)
    s.suggest("t0")
    producer = s.suggest("t1")
    assert (producer["method"], producer["e_ssl"]) == ("ssl_sl", 4)
    i = 0
    while s.suggest(f"u{i}") is not None:  # everything not waiting for t1's prefix starts
        i += 1
    blocked = [c for c in s.queue if c["e_ssl"] == 4]  # (others wait for the producers of their budgets)
    assert blocked and all(c["rho"] < 1.0 for c in blocked)
    s.on_trial_complete("t1", None, error=True)  # the producer died before storing anything
    nxt = s.suggest("m0")  # one of them starts, and computes the prefix for the others in its turn
    assert nxt is not None and nxt in blocked


def test_searcher__the_chosen_configuration_is_completed_on_the_seeds_the_scheduler_stopped():
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0,
                           num_samples=1, inner=None, metric="val_acc", mode="max", baselines=False)
    trials, end = _drain(s)
    assert end is None and len(trials) == 8  # 4 grid points x 2 seeds, all running
    by_config = {}
    for tid, c in trials:
        by_config.setdefault((c["alpha"], c["rho"]), {})[c["seed"]] = tid
    best = by_config[(0.9, 0.5)]
    s.on_trial_complete(best[0], {"val_acc": 0.9, "completed": True})
    s.on_trial_complete(best[1], {"val_acc": 0.2, "completed": False})  # stopped early by ASHA
    for (alpha, rho), seeds in by_config.items():  # none completed every seed: survivors are all there is to rank
        if (alpha, rho) != (0.9, 0.5):
            s.on_trial_complete(seeds[0], {"val_acc": 0.6, "completed": True})
            s.on_trial_complete(seeds[1], {"val_acc": 0.1, "completed": False})
    completion = s.suggest("c0")
    assert (completion["alpha"], completion["rho"], completion["seed"], completion["_completion"]) == (0.9, 0.5, 1, True)
    group = next(c["_group"] for _, c in trials if (c["alpha"], c["rho"]) == (0.9, 0.5))
    assert completion["_group"] == group
    assert s.suggest("c1") is None  # waits for the completion
    s.on_trial_complete("c0", {"val_acc": 0.5, "completed": True})
    assert s.suggest("c2") == Searcher.FINISHED


def test_searcher__without_completion_or_with_nothing_stopped_it_finishes_when_the_trials_end():
    for complete, completed in ((False, False), (True, True)):
        s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0,
                               num_samples=1, inner=None, metric="val_acc", mode="max", baselines=False,
                               complete=complete)
        trials, _ = _drain(s)
        for i, (tid, _) in enumerate(trials):
            s.on_trial_complete(tid, {"val_acc": i / 10, "completed": completed or i % 2 == 0})
        assert s.suggest("x") == Searcher.FINISHED


def test_searcher__never_more_trials_at_once_than_max_concurrent():
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0,
                           num_samples=1, inner=None, metric="val_acc", mode="max", max_concurrent=3)
    first, _ = _drain(s)
    assert len(first) == 3 and s.suggest("waiting") is None
    s.on_trial_complete(first[0][0], {"val_acc": 0.5, "completed": True})
    assert s.suggest("next") is not None and s.suggest("more") is None


class _Repeating(_FakeInner):
    """Proposes alpha 0.1, 0.1, 0.9, 0.9, ...: every point twice in a row, as TPE does on small categorical spaces."""

    def suggest(self, trial_id):
        self.n += 1
        return {"alpha": 0.1 if self.n <= 2 else 0.9, "rho": 0.5, "epochs": 2}


def test_searcher__a_repeated_proposal_is_answered_from_what_is_known_not_run_again():
    inner = _Repeating()
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=1, budgets=[2], epoch_scale=1.0,
                           num_samples=2, inner={1.0: inner}, metric="val_acc", mode="max", baselines=False)
    first = s.suggest("a")
    assert first["alpha"] == 0.1
    s.on_trial_complete("a", {"val_acc": 0.7, "completed": True})
    second = s.suggest("b")  # the sampler repeats alpha 0.1: told 0.7 at once, asked again
    assert second["alpha"] == 0.9 and inner.told["b"] == {"val_acc": 0.7}
    s.on_trial_complete("b", {"val_acc": 0.4, "completed": True})
    assert inner.told["b~1"] == {"val_acc": 0.4}  # the new group's result, under the id it was proposed with


def test_searcher__history_of_an_earlier_search_skips_its_baselines_and_its_configurations():
    import pandas as pd
    inner = _Repeating()
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=1, budgets=[2], epoch_scale=1.0,
                           num_samples=1, inner={1.0: inner}, metric="val_acc", mode="max")
    history = pd.DataFrame([
        {"method": "sl", "epochs": 2, "e_ssl": 2, "fraction": 1.0, "seed": 0, "group": None, "alpha": 0.5,
         "rho": 0.5, "lam": 0.5, "val_acc": 0.3, "completed": True, "completion": False, "error": None},
        {"method": "mixtraining", "epochs": 2, "e_ssl": 2, "fraction": 1.0, "seed": 0, "group": "old",
         "alpha": 0.1, "rho": 0.5, "lam": 0.5, "val_acc": 0.6, "completed": True, "completion": False,
         "error": None}])
    s.add_history(history)
    trials, _ = _drain(s)
    assert [c["method"] for _, c in trials] == ["ssl_sl", "mixtraining"]  # SL ran before; SSL+SL did not
    assert trials[1][1]["alpha"] == 0.9 and inner.told[trials[1][0]] == {"val_acc": 0.6}


def _by_config(trials):
    by = {}
    for tid, c in trials:
        by.setdefault((c["alpha"], c["rho"]), {})[c["seed"]] = tid
    return by


def test_searcher__selection_on_equal_footing_ranks_configurations_that_completed_every_seed():
    """A configuration whose weak seed the scheduler stopped is not ranked on its surviving seed alone."""
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0,
                           num_samples=1, inner=None, metric="val_acc", mode="max", baselines=False, confirm_seeds=1)
    by = _by_config(_drain(s)[0])
    lucky = by.pop((0.9, 0.5))
    s.on_trial_complete(lucky[0], {"val_acc": 0.95, "completed": True})
    s.on_trial_complete(lucky[1], {"val_acc": 0.2, "completed": False})  # its weak seed, stopped
    for i, seeds in enumerate(by.values()):
        for tid in seeds.values():
            s.on_trial_complete(tid, {"val_acc": 0.6 + 0.01 * i, "completed": True})
    chosen = s.suggest("c0")  # no completion run: the choice completed every seed; its confirmation comes
    assert chosen["_confirm"] == "tuned" and chosen["seed"] == 2 and (chosen["alpha"], chosen["rho"]) != (0.9, 0.5)


def test_searcher__confirmation_runs_the_choice_the_default_and_the_baselines_on_fresh_seeds_only():
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0,
                           num_samples=1, inner=None, metric="val_acc", mode="max", confirm_seeds=2)
    planned = s.max_trials
    trials, _ = _drain(s)
    for tid, c in trials:
        good = c["method"] == "mixtraining" and (c["alpha"], c["rho"]) == (0.1, 1.0)
        s.on_trial_complete(tid, {"val_acc": 0.9 if good else 0.5, "completed": True})
    confirm, end = _drain(s)
    cfgs = sorted((c["_confirm"], c["method"], c.get("alpha"), c.get("rho"), c["seed"]) for _, c in confirm)
    assert cfgs == sorted([(role, m, a, r, seed) for seed in (2, 3) for role, m, a, r in (
        ("tuned", "mixtraining", 0.1, 1.0), ("default", "mixtraining", 0.5, 0.5),
        ("baseline", "sl", None, None), ("baseline", "ssl_sl", None, None))])
    assert all(c["e_sl"] == 2 and "_group" not in c for _, c in confirm)
    assert len(trials) + len(confirm) <= planned and end == Searcher.FINISHED or end is None


def test_searcher__a_failed_trial_retried_on_resume_counts_with_its_result():
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0,
                           num_samples=1, inner=None, metric="val_acc", mode="max", baselines=False,
                           confirm_seeds=1)
    by = _by_config(_drain(s)[0])
    a, b = by.pop((0.9, 0.5)), by.pop((0.1, 0.5))
    s.on_trial_complete(a[0], None, error=True)
    s.on_trial_complete(a[1], {"val_acc": 0.9, "completed": True})
    s.on_trial_complete(b[0], {"val_acc": 0.7, "completed": True})
    s.on_trial_complete(b[1], {"val_acc": 0.3, "completed": False})  # stopped early
    for seeds in by.values():  # none completes every seed: the completed runs are ranked as they are
        s.on_trial_complete(seeds[0], {"val_acc": 0.1, "completed": True})
        s.on_trial_complete(seeds[1], {"val_acc": 0.1, "completed": False})
    s.on_trial_result(a[0], {"phase": "sl", "epoch": 1})  # `--resume` retries the failed trial
    s.on_trial_complete(a[0], {"val_acc": 0.1, "completed": True})
    # With its result, a completed both seeds: the only configuration that did, so the choice, with nothing to
    # complete (counted as a failure, a would have been ranked on its 0.9 alone and completed on seed 0).
    first = s.suggest("c0")
    assert "_completion" not in first and (first["_confirm"], first["alpha"], first["rho"]) == ("tuned", 0.9, 0.5)


def test_searcher__an_earlier_searchs_completion_runs_finish_their_seed_and_stay_out_of_the_mean():
    import pandas as pd
    s = ExperimentSearcher(get_space("smoke"), fractions=[1.0], seeds=2, budgets=[2], epoch_scale=1.0,
                           num_samples=1, inner=None, metric="val_acc", mode="max", baselines=False)
    row = {"method": "mixtraining", "epochs": 2, "e_ssl": 2, "fraction": 1.0, "group": "old", "alpha": 0.9,
           "rho": 0.5, "lam": 0.5, "error": None}
    s.add_history(pd.DataFrame([
        {**row, "seed": 1, "val_acc": 0.85, "completed": True, "completion": True},  # completed seed 1 later
        {**row, "seed": 0, "val_acc": 0.9, "completed": True, "completion": False},
        {**row, "seed": 1, "val_acc": 0.2, "completed": False, "completion": False}]))
    assert s.known[1.0][("alpha", 0.9), ("rho", 0.5), ("lam", 0.5), ("e_ssl", 2), ("e_sl", 2)] == \
        {"val_acc": pytest.approx(0.55)}  # the search proper's two seeds, as the searcher tells its own
    trials, _ = _drain(s, finish=True)
    assert len(trials) == 6  # the three other grid points on two seeds; seed 1 of the best is not rerun
    assert s.suggest("x") == Searcher.FINISHED


def test_registry__a_new_proposal_algorithm_is_one_function_and_one_entry(monkeypatch):
    from search_spaces import load
    from tuning import search, searchers

    made = []

    def first_values(space, metric, mode, seed, points, rewards):
        made.append((sorted(space), seed))
        return searchers.SEARCHERS["random"](space, metric, mode, seed, points, rewards)

    monkeypatch.setitem(searchers.SEARCHERS, "mine", first_values)
    parser = search.build_parser()
    args = parser.parse_args(["--search", "mine", "--space", "smoke", "--fraction", "0.5", "1.0", "--search-seed", "7"])
    search.validate(args, parser)
    s = searchers.make_searcher(args, load("smoke"))
    assert made == [(["alpha", "epochs", "rho"], 7), (["alpha", "epochs", "rho"], 8)] and set(s.inner) == {0.5, 1.0}


def test_make_searcher__optuna_starts_from_an_earlier_search_s_configurations_and_their_mean_results():
    """--warm-start: each finished configuration once, in the space's own (unscaled) epochs, told its mean
    validation accuracy over seeds; failed trials and other fractions are not among them."""
    import pandas as pd

    from search_spaces import load
    from tuning import search, searchers
    parser = search.build_parser()
    args = parser.parse_args(["--space", "smoke", "--epoch-scale", "0.5", "--search", "optuna"])
    search.validate(args, parser)
    history = pd.DataFrame([
        dict(group="g1", method="mixtraining", fraction=1.0, alpha=0.1, rho=0.5, epochs=1, seed=0, val_acc=0.5),
        dict(group="g1", method="mixtraining", fraction=1.0, alpha=0.1, rho=0.5, epochs=1, seed=1, val_acc=0.7),
        dict(group="g2", method="mixtraining", fraction=1.0, alpha=0.9, rho=1.0, epochs=1, seed=0, val_acc=0.4),
        dict(group="g3", method="mixtraining", fraction=1.0, alpha=0.9, rho=0.5, epochs=1, seed=0, val_acc=0.9,
             error="failed"),
        dict(group="g4", method="mixtraining", fraction=0.5, alpha=0.1, rho=1.0, epochs=1, seed=0, val_acc=0.8),
        dict(group=None, method="sl", fraction=1.0, alpha=0.5, rho=0.5, epochs=1, seed=0, val_acc=0.6),
    ]).assign(error=lambda d: d.get("error"), completion=False, completed=True, e_ssl=1, lam=0.5)
    inner = searchers.make_searcher(args, load("smoke"), history).inner[1.0]
    assert inner._points_to_evaluate == [{"alpha": 0.1, "rho": 0.5, "epochs": 2}, {"alpha": 0.9, "rho": 1.0, "epochs": 2}]
    assert inner._evaluated_rewards == pytest.approx([0.6, 0.4])


def test_make_searcher__optuna_gets_a_resolved_space_and_warns_of_nothing(caplog):
    from search_spaces import load
    from tuning import search, searchers
    parser = search.build_parser()
    args = parser.parse_args(["--space", "continuous"])
    search.validate(args, parser)
    with caplog.at_level("WARNING"):
        searchers.make_searcher(args, load("continuous"))
    assert not [r for r in caplog.records if "unresolved search space" in r.getMessage().lower()]


def test_searcher__a_field_the_space_names_tells_configurations_apart():
    """A space over mask_ratio: its two values are two configurations, each run, never one answered with the
    other's result (alpha, rho, lam and epochs alone told them apart before)."""
    from search_spaces import from_data, identity
    space = from_data({"mask_ratio": [0.5, 0.9], "alpha": 0.5, "rho": 0.5, "epochs": 2})
    inner = {1.0: _Scripted([{"mask_ratio": 0.5}, {"mask_ratio": 0.5}, {"mask_ratio": 0.9}])}
    s = ExperimentSearcher(space, fractions=[1.0], seeds=1, budgets=[2], epoch_scale=1.0, num_samples=2, inner=inner,
                           metric="val_acc", mode="max", baselines=False, identity=identity(space))
    first = s.suggest("t1")
    s.on_trial_complete("t1", {"val_acc": 0.7, "completed": True})
    second = s.suggest("t2")
    assert (first["mask_ratio"], second["mask_ratio"]) == (0.5, 0.9)
    assert inner[1.0].told == [("t1", {"val_acc": 0.7}), ("t2", {"val_acc": 0.7})]  # the repeat answered, not run


class _Scripted(Searcher):
    """Proposes the given points in turn and records what it is told, in order."""

    def __init__(self, points):
        super().__init__(metric="val_acc", mode="max")
        self.points, self.told = list(points), []

    def suggest(self, trial_id):
        return self.points.pop(0) if self.points else Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append((trial_id, result))
