"""tuning.summary on hand-made result tables: choice on validation, no survivorship, common seeds, paired
statistics against a t-interval computed here, contention-free speedups, nothing pooled that differs."""
import math
import statistics

import pandas as pd
import pytest
from scipy import stats

from tuning.summary import choose_best, comparison_table, format_paired, format_table, paired_stats, trial_row, holm


def row(method, seed, val, test, alpha=0.5, rho=0.5, completed=True, error=None, completion=False, confirm="",
        dataset="digits", time=10.0, tflop=1.0, wall=20.0, **fields):
    config = {"method": method, "datasets": [dataset], "model": "tiny", "fraction": 1.0, "e_ssl": 10, "e_sl": 10,
              "seed": seed, "alpha": alpha, "rho": rho, "_completion": completion, "_confirm": confirm, **fields}
    metrics = {"val_acc": val, "test_acc": test, "calibrated_time_s": time, "compute_tflop": tflop,
               "train_time_s": wall, "trial_id": f"{method}-{seed}-{alpha}-{rho}-{completion}"}
    return trial_row(config, metrics, completed=completed, error=error, epoch_scale=0.1)


def frame(*rows):
    return pd.DataFrame(list(rows))


BASELINES = [row("sl", s, 0.5, t, time=5, tflop=1.0) for s, t in ((0, 0.50), (1, 0.54), (2, 0.46))] + \
            [row("ssl_sl", s, 0.6, t, time=20, tflop=4.0) for s, t in ((0, 0.60), (1, 0.66), (2, 0.63))]


def test_choose_best__on_validation_not_test_among_completed_runs_of_the_search_proper():
    df = frame(*BASELINES,
               row("mixtraining", 0, val=0.90, test=0.10, alpha=0.1),  # best on validation, poor on test
               row("mixtraining", 0, val=0.70, test=0.99, alpha=0.9),
               row("mixtraining", 0, val=0.99, test=0.99, alpha=0.5, completed=False),  # stopped: no final value
               row("mixtraining", 0, val=0.95, test=0.99, alpha=0.3, completion=True))  # added later: not a choice
    best = choose_best(df)
    assert len(best) == 1 and best.iloc[0]["alpha"] == 0.1 and best.iloc[0]["tried"] == 4


def test_comparison_table__each_group_reports_its_own_choice_with_its_tried_count_and_runs():
    # Two data fractions (two groups): alpha 0.1 wins on validation at one, alpha 0.9 at the other; the second
    # group also tried a third configuration. Each row shows its group's choice, tried count and test accuracy.
    rows = []
    for fraction, (best, other), tried in ((0.1, (0.1, 0.9), (0.1, 0.9)), (1.0, (0.9, 0.1), (0.1, 0.5, 0.9))):
        rows += [{**r, "fraction": fraction} for r in BASELINES]
        for a in tried:
            rows += [{**row("mixtraining", s, 0.9 if a == best else 0.7, 0.8 if a == best else 0.3, alpha=a),
                      "fraction": fraction} for s in (0, 1, 2)]
    table = comparison_table(frame(*rows))
    mix = table[table["method"] == "mixtraining"].set_index("fraction")
    assert mix.loc[0.1, "alpha"] == 0.1 and mix.loc[1.0, "alpha"] == 0.9
    assert (mix.loc[0.1, "tried"], mix.loc[1.0, "tried"]) == (2, 3)
    assert mix["test_acc_mean"].tolist() == [pytest.approx(0.8)] * 2 and (mix["seeds"] == 3).all()


def test_comparison_table__chosen_configuration_over_every_common_seed_including_completed_ones():
    mix = [row("mixtraining", 0, 0.9, 0.70, time=12, tflop=3.0),
           row("mixtraining", 1, 0.2, 0.40, completed=False),  # stopped by the scheduler ...
           row("mixtraining", 1, 0.8, 0.64, completion=True, time=12, tflop=3.0),  # ... then completed
           row("mixtraining", 2, 0.8, 0.67, time=12, tflop=3.0),
           row("mixtraining", 0, 0.5, 0.99, alpha=0.9),
           row("mixtraining", 1, 0.5, 0.99, alpha=0.9, error="boom", completed=False)]
    table = comparison_table(frame(*BASELINES, *mix)).set_index("method")
    assert table.loc["mixtraining", "seeds"] == table.loc["sl", "seeds"] == table.loc["ssl_sl", "seeds"] == 3
    assert table.loc["mixtraining", "test_acc_mean"] == pytest.approx(statistics.mean([0.70, 0.64, 0.67]))
    assert table.loc["mixtraining", "test_acc_std"] == pytest.approx(statistics.stdev([0.70, 0.64, 0.67]))
    assert table.loc["sl", "test_acc_mean"] == pytest.approx(0.50)
    assert table.loc["mixtraining", "alpha"] == 0.5 and table.loc["mixtraining", "tried"] == 2
    assert table.loc["mixtraining", "speedup_calibrated_time_s"] == pytest.approx(20 / 12)
    assert table.loc["mixtraining", "speedup_compute_tflop"] == pytest.approx(4 / 3)
    assert math.isnan(table.loc["ssl_sl", "speedup_compute_tflop"])


def test_comparison_table__a_seed_missing_for_one_method_is_left_out_of_every_row_of_its_group():
    df = frame(*[r for r in BASELINES if not (r["method"] == "sl" and r["seed"] == 2)],
               row("sl", 2, 0.5, 0.1, error="crashed", completed=False),
               *[row("mixtraining", s, 0.8, t) for s, t in ((0, 0.7), (1, 0.6), (2, 0.2))])
    table = comparison_table(df).set_index("method")
    assert (table["seeds"] == 2).all()
    assert table.loc["mixtraining", "test_acc_mean"] == pytest.approx(0.65)  # seeds 0 and 1 only
    assert table.loc["ssl_sl", "test_acc_mean"] == pytest.approx(0.63)


def test_comparison_table__runs_on_other_data_get_rows_of_their_own():
    other = [row(m, s, 0.9, 0.9, dataset="mnist") for m in ("sl", "ssl_sl", "mixtraining") for s in (0, 1)]
    df = frame(*BASELINES, *[row("mixtraining", s, 0.8, 0.7) for s in (0, 1, 2)], *other)
    table = comparison_table(df)
    assert len(table) == 6 and set(table["datasets"]) == {"digits", "mnist"}
    assert table.groupby("datasets")["seeds"].max().to_dict() == {"digits": 3, "mnist": 2}
    assert "| datasets |" in format_table(table).splitlines()[0]  # shown, since it varies
    paired = format_paired(paired_stats(df))  # and its paired lines say which data they are about
    assert "MixTraining - SL (datasets mnist, fraction 1, epochs 10)" in paired
    assert "MixTraining - SL (datasets digits, fraction 1, epochs 10)" in paired


def test_comparison_table__runs_with_another_validation_hold_out_train_on_other_images_and_get_rows_of_their_own():
    all_images = [row(m, s, None, 0.9, val_frac=0.0) for m in ("sl", "ssl_sl", "mixtraining") for s in (0, 1)]
    df = frame(*[row(m, s, 0.5, 0.5, val_frac=0.1) for m in ("sl", "ssl_sl", "mixtraining") for s in (0, 1)],
               *all_images)
    table = comparison_table(df)
    assert len(table) == 6 and sorted(set(table["val_frac"])) == [0.0, 0.1]
    assert (table[table["val_frac"] == 0]["test_acc_mean"] == 0.9).all()  # nothing pooled across hold-outs
    assert "| val_frac |" in format_table(table).splitlines()[0]


def test_paired_stats__mean_and_t_interval_of_the_per_seed_differences():
    mix = [row("mixtraining", s, 0.8, t) for s, t in ((0, 0.70), (1, 0.64), (2, 0.69))]
    paired = paired_stats(frame(*BASELINES, *mix)).set_index("versus")
    d = [0.70 - 0.60, 0.64 - 0.66, 0.69 - 0.63]
    mean, sem = statistics.mean(d), statistics.stdev(d) / math.sqrt(3)
    half = stats.t.ppf(0.975, 2) * sem  # 4.30 standard errors with two degrees of freedom
    r = paired.loc["ssl_sl"]
    assert r["n"] == 3 and r["mean_diff"] == pytest.approx(mean)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert not r["excludes_zero"]
    sl = paired.loc["sl"]  # 0.20, 0.10, 0.23 above SL: an interval clear of zero on its own ...
    assert sl["excludes_zero"] and sl["ci_low"] > 0
    d_sl = [0.70 - 0.50, 0.64 - 0.54, 0.69 - 0.46]
    p_sl = 2 * stats.t.sf(statistics.mean(d_sl) / (statistics.stdev(d_sl) / math.sqrt(3)), 2)
    p_ssl = 2 * stats.t.sf(abs(mean) / sem, 2)
    assert (sl["p_value"], r["p_value"]) == (pytest.approx(p_sl), pytest.approx(p_ssl))
    # ... but not over the family of two comparisons: Holm multiplies the smaller p (0.046) by 2
    assert sl["p_holm"] == pytest.approx(2 * p_sl) and not sl["significant"]
    assert r["p_holm"] == pytest.approx(max(2 * p_sl, p_ssl))
    text = format_paired(paired.reset_index())
    assert "MixTraining - SL (fraction 1, epochs 10): +17.67 points at " in text and " *" not in text
    assert "95% CI [" in text


def test_holm__step_down_adjusted_p_values_non_decreasing_and_untested_left_out():
    assert holm([0.01, 0.04, 0.03, math.nan]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06),
                                                   pytest.approx(math.nan, nan_ok=True)]
    assert holm([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1
    assert holm([0.001]) == [pytest.approx(0.001)]


def test_paired_stats__one_seed_has_no_interval_and_no_spread_is_never_significant():
    df = frame(*[r for r in BASELINES if r["seed"] == 0], row("mixtraining", 0, 0.8, 0.7))
    assert "n=1: one seed, no interval exists" in format_paired(paired_stats(df))
    assert "| 70.00% |" in format_table(comparison_table(df))  # n = 1: no "± 0.00"
    same = [row("mixtraining", s, 0.8, t + 0.05) for s, t in ((0, 0.60), (1, 0.66))]  # +5 points on both seeds
    paired = paired_stats(frame(*[r for r in BASELINES if r["seed"] < 2], *same)).set_index("versus")
    assert not paired.loc["ssl_sl", "significant"] and paired.loc["ssl_sl", "p_value"] != paired.loc["ssl_sl", "p_value"]
    assert "every seed differs by the same amount, no interval exists" in format_paired(paired.reset_index())


def test_param_importances__the_parameter_that_decides_the_accuracy_matters_most_and_ties_give_none():
    from tuning.studies import param_importances
    rows = [row("mixtraining", s, 0.3 + 0.6 * a + 0.01 * r, 0.5, alpha=a, rho=r)
            for a in (0.1, 0.5, 0.9) for r in (0.25, 0.5, 1.0) for s in (0, 1)]
    importances = param_importances(frame(*rows))[1.0]
    assert importances["alpha"] > 0.9 > importances["rho"]
    flat = [row("mixtraining", 0, 0.5, 0.5, alpha=a, rho=r) for a in (0.1, 0.9) for r in (0.5, 1.0)]
    assert param_importances(frame(*flat)) == {}  # every configuration scored the same: nothing to rank


def test_comparison_table__configs_tried_counts_the_configurations_the_scheduler_stopped_too():
    df = frame(*BASELINES, *[row("mixtraining", s, 0.8, 0.7) for s in (0, 1, 2)],
               row("mixtraining", 0, 0.3, 0.3, alpha=0.9, completed=False),
               row("mixtraining", 0, 0.2, 0.2, alpha=0.1, completed=False))
    assert comparison_table(df).set_index("method").loc["mixtraining", "tried"] == 3


def test_param_importances__continuous_values_are_one_numeric_dimension_and_the_forest_input_is_bounded(monkeypatch):
    """300 configurations of a continuous alpha: one FloatDistribution, not a 300-way category (which kept a
    300-trial search's driver in fANOVA for more than 18 minutes), and at most IMPORTANCE_MAX_CONFIGS of them."""
    import optuna

    from tuning import studies
    rng = __import__("random").Random(0)
    rows = [row("mixtraining", 0, 0.3 + 0.6 * a + 0.01 * r, 0.5, alpha=a, rho=r)
            for a, r in ((rng.random(), rng.random()) for _ in range(300))]
    seen = []
    real = optuna.study.Study.add_trials

    def spy(study, trials):
        seen.append(trials)
        return real(study, trials)
    monkeypatch.setattr(optuna.study.Study, "add_trials", spy)
    monkeypatch.setattr(studies, "IMPORTANCE_MAX_CONFIGS", 120)
    importances = studies.param_importances(frame(*rows))[1.0]
    assert importances["alpha"] > importances["rho"]
    (trials,) = seen
    assert len(trials) == 120
    assert isinstance(trials[0].distributions["alpha"], optuna.distributions.FloatDistribution)
