"""tuning.summary: the cases mutation testing (`make mutation`) found unchecked: every column of a trial's row,
which fields tell configurations apart, selection with defaults (None) and stopped seeds, confirmation runs,
intervals on both sides of zero, and the text of the tables."""
import math

import pandas as pd
import pytest

from tuning.summary import (SEARCHABLE, choose_best, comparison_keys, comparison_rows, comparison_table, config_keys,
                            confirm_roles, format_paired, format_table, format_value, holm, paired_difference,
                            paired_stats, trial_row)


def row(method, seed, val, test, completed=True, error=None, confirm="", tflop=1.0, time=10.0, **fields):
    config = {"method": method, "datasets": ["digits"], "model": "tiny", "e_ssl": 10, "e_sl": 10, "seed": seed,
              "_confirm": confirm, **fields}
    metrics = {"val_acc": val, "test_acc": test, "calibrated_time_s": time, "compute_tflop": tflop,
               "train_time_s": 2 * time}
    return trial_row(config, metrics, completed=completed, error=error, epoch_scale=0.1)


def frame(*rows):
    return pd.DataFrame(list(rows))


# --- trial_row ---------------------------------------------------------------------------------------------

def test_trial_row__every_column_comes_from_its_source():
    config = {"method": "mixtraining", "datasets": ["digits", "mnist"], "e_ssl": 4, "e_sl": 6, "seed": 3,
              "alpha": 0.5, "rho": 0.5, "lam": 0.5, "batch_size": 64, "_completion": True, "_confirm": "tuned",
              "epoch_scale": 0.3, "val_frac": 0.2}
    metrics = {"trial_id": "t1", "alpha": 0.25, "lam": 0.75, "val_acc": 0.8, "test_acc": 0.7, "train_time_s": 12.0,
               "calibrated_time_s": 9.0, "compute_tflop": 2.0, "sl_epochs": 5, "ssl_epochs_reused": 2,
               "ssl_time_reused_s": 3.5}
    r = trial_row(config, metrics, completed=True, error="boom", where="here")
    expected = {"trial_id": "t1", "method": "mixtraining", "completion": True, "confirm": "tuned",
                "datasets": "digits+mnist", "ssl_dataset": "", "model": "tiny", "fraction": 1.0, "val_frac": 0.2,
                "epochs": 6, "e_ssl": 4, "epoch_scale": 0.3, "batch_size": 64, "seed": 3,
                "alpha": 0.25, "rho": 0.5, "lam": 0.75,  # PBT's last values, from the metrics
                "val_acc": 0.8, "test_acc": 0.7, "train_time_s": 12.0, "calibrated_time_s": 9.0,
                "compute_tflop": 2.0, "sl_epochs": 5, "completed": True, "ssl_epochs_reused": 2,
                "ssl_time_reused_s": 3.5, "error": "boom", "where": "here"}
    assert {k: r[k] for k in expected} == expected
    assert set(r) == set(SEARCHABLE) | set(expected) | {"ssl_lr", "sl_lr", "mix_step", "mix_optim"}
    # Base learning rates: the same whatever the batch size (MAE's scaling undone).
    same = trial_row({**config, "batch_size": 256}, metrics, completed=True, error=None)
    assert (r["ssl_lr"], r["sl_lr"]) == (pytest.approx(same["ssl_lr"]), pytest.approx(same["sl_lr"]))


def test_trial_row__from_mlflow_parameter_strings_and_no_metrics():
    r = trial_row({"method": "sl", "completion": "true", "confirm": "baseline", "epoch_scale": "0.5", "lam": "0.2",
                   "alpha": "0.3"}, {}, completed=False, error=None)
    assert (r["completion"], r["confirm"], r["epoch_scale"]) == (True, "baseline", 0.5)
    assert (r["alpha"], r["lam"], r["sl_epochs"], r["ssl_epochs_reused"], r["ssl_time_reused_s"]) == \
        (0.3, 0.2, 0, 0, 0.0)
    bare = trial_row({"method": "sl", "completion": "false"}, {}, completed=True, error=None)
    assert (bare["completion"], bare["confirm"], bare["epoch_scale"]) == (False, "", 1.0)
    assert trial_row({"_epoch_scale": 9}, {}, completed=True, error=None, epoch_scale=0.25)["epoch_scale"] == 0.25


# --- config_keys ----------------------------------------------------------------------------------------------

def test_config_keys__a_field_that_varies_among_mixtraining_runs_of_one_fraction_and_budget():
    mix = [row("mixtraining", 0, 0.5, 0.5, mask_ratio=m) for m in (0.5, 0.75)]
    assert config_keys(frame(*mix)) == ["alpha", "rho", "lam", "mask_ratio"]
    # two values are enough; one is not, nor a field that only the baselines vary
    base = [row("sl", 0, 0.5, 0.5, mask_ratio=m) for m in (0.5, 0.75)]
    assert config_keys(frame(mix[0], *base)) == ["alpha", "rho", "lam"]
    # varying only from one fraction to the next: not a configuration key
    other_fraction = row("mixtraining", 0, 0.5, 0.5, mask_ratio=0.75, fraction=0.5)
    assert config_keys(frame(mix[0], other_fraction)) == ["alpha", "rho", "lam"]
    # rows of a search whose name is unknown (None) still count
    unnamed = frame(*mix).assign(search=None)
    assert config_keys(unnamed) == ["alpha", "rho", "lam", "mask_ratio"]


def test_config_keys__the_searchs_own_list_wins_and_rows_without_a_method_have_only_the_paper_knobs():
    df = frame(*[row("mixtraining", 0, 0.5, 0.5, mask_ratio=m) for m in (0.5, 0.75)])
    df.attrs["config_keys"] = ["alpha", "batch_size"]
    assert config_keys(df) == ["alpha", "batch_size"]
    assert config_keys(pd.DataFrame({"mask_ratio": [0.5, 0.75]})) == ["alpha", "rho", "lam"]


def test_config_keys__a_field_that_differs_only_between_searches_or_budgets_is_not_a_configuration_key():
    two_searches = frame(*[row("mixtraining", 0, 0.5, 0.5, mask_ratio=m) for m in (0.5, 0.75)])
    assert config_keys(two_searches.assign(search=["a", "b"])) == ["alpha", "rho", "lam"]
    two_budgets = frame(*[row("mixtraining", 0, 0.5, 0.5, mask_ratio=m, e_sl=e) for m, e in ((0.5, 10), (0.75, 20))])
    assert config_keys(two_budgets) == ["alpha", "rho", "lam"]
    # rows with none of search, fraction and epochs: one part, all of it
    bare = pd.DataFrame({"method": ["mixtraining"] * 2, "mask_ratio": [0.5, 0.75]})
    assert config_keys(bare) == ["alpha", "rho", "lam", "mask_ratio"]


def test_comparison_keys__of_rows_alone_leave_out_what_the_rows_vary():
    df = frame(*[row("mixtraining", 0, 0.5, 0.5, batch_size=b) for b in (64, 128)])
    assert "batch_size" not in comparison_keys(df) and "datasets" in comparison_keys(df)
    assert "batch_size" in comparison_keys(df, ["alpha"])


# --- choose_best ----------------------------------------------------------------------------------------------

def test_choose_best__a_default_none_value_is_a_configuration_like_any_other():
    df = frame(row("mixtraining", 0, 0.9, 0.5, ssl_beta2=None), row("mixtraining", 0, 0.7, 0.5, ssl_beta2=0.95))
    best = choose_best(df, ["alpha", "rho", "lam", "ssl_beta2"])
    assert len(best) == 1 and pd.isna(best.iloc[0]["ssl_beta2"]) and best.iloc[0]["mean_val"] == 0.9
    assert best.iloc[0]["tried"] == 2
    # Without the search's list, the rows tell it too: None and a value are two values, the chosen None's runs
    # are MixTraining's row (pandas 3's astype(str) kept None missing: one value, and no run matched the choice).
    df = frame(row("sl", 0, 0.5, 0.5), row("sl", 1, 0.5, 0.5), *[row("mixtraining", s, 0.9, 0.6, ssl_beta2=None)
               for s in (0, 1)], *[row("mixtraining", s, 0.7, 0.9, ssl_beta2=0.95) for s in (0, 1)])
    assert config_keys(df) == ["alpha", "rho", "lam", "ssl_beta2"]
    ((_, runs),) = comparison_rows(df)
    assert list(runs["mixtraining"]["test_acc"]) == [0.6, 0.6] and runs["mixtraining"]["ssl_beta2"].isna().all()


def test_choose_best__stopped_seeds_never_count_in_a_mean():
    # Neither configuration completed every seed: each is ranked on its completed seed only.
    df = frame(row("mixtraining", 0, 0.7, 0.5, alpha=0.1), row("mixtraining", 1, 0.99, 0.5, alpha=0.1, completed=False),
               row("mixtraining", 0, 0.8, 0.5, alpha=0.9), row("mixtraining", 1, 0.1, 0.5, alpha=0.9, completed=False))
    best = choose_best(df)
    assert best.iloc[0]["alpha"] == 0.9 and best.iloc[0]["mean_val"] == pytest.approx(0.8)


def test_choose_best__nothing_completed_chooses_nothing():
    assert choose_best(frame(row("mixtraining", 0, 0.7, 0.5, completed=False))).empty


def test_choose_best__the_callers_configuration_keys_are_used():
    df = frame(row("mixtraining", 0, 0.9, 0.5, alpha=0.5, rho=0.5), row("mixtraining", 0, 0.5, 0.5, alpha=0.5, rho=1.0),
               row("mixtraining", 0, 0.8, 0.5, alpha=0.1, rho=0.5))
    best = choose_best(df, ["alpha"])  # rho is not a key: both alpha 0.5 runs are one configuration (mean 0.7)
    assert (best.iloc[0]["alpha"], best.iloc[0]["tried"]) == (0.1, 2)
    df.attrs["config_keys"] = ["alpha"]
    mixed = frame(*[row("mixtraining", 0, v, 0.5, batch_size=b) for v, b in ((0.9, 64), (0.8, 128))])
    mixed.attrs["config_keys"] = ["alpha"]
    assert len(choose_best(mixed, ["alpha", "batch_size"])) == 1  # batch_size searched: one group, not two


def test_choose_best__rows_without_a_confirm_column_or_with_gaps_in_it_are_the_searchs_own():
    df = frame(row("mixtraining", 0, 0.9, 0.5))
    assert len(choose_best(df.drop(columns="confirm"))) == 1
    assert len(choose_best(df.assign(confirm=None))) == 1


def test_choose_best__nothing_to_choose_is_an_empty_frame_with_the_answers_typed_columns():
    best = choose_best(frame(row("mixtraining", 0, 0.7, 0.5, completed=False)))
    assert best.empty and str(best["mean_val"].dtype) == "float64" and str(best["tried"].dtype) == "int64"


def test_choose_best__each_group_ranks_its_own_configurations_on_equal_footing():
    # fraction 1: alpha 0.1 completed both seeds, alpha 0.9 only seed 0 (its seed 1 stopped): 0.1 is chosen.
    # fraction 0.5: neither completed every seed: ranked on what completed, 0.9 is chosen there.
    full = [row("mixtraining", s, 0.6, 0.5, alpha=0.1) for s in (0, 1)] + \
        [row("mixtraining", 0, 0.95, 0.5, alpha=0.9), row("mixtraining", 1, 0.2, 0.5, alpha=0.9, completed=False)]
    part = [row("mixtraining", 0, 0.5, 0.5, alpha=0.1, fraction=0.5),
            row("mixtraining", 1, 0.1, 0.5, alpha=0.1, fraction=0.5, completed=False),
            row("mixtraining", 0, 0.7, 0.5, alpha=0.9, fraction=0.5),
            row("mixtraining", 1, 0.1, 0.5, alpha=0.9, fraction=0.5, completed=False)]
    best = choose_best(frame(*full, *part)).set_index("fraction")
    assert (best.loc[1.0, "alpha"], best.loc[1.0, "mean_val"]) == (0.1, pytest.approx(0.6))
    assert (best.loc[0.5, "alpha"], best.loc[0.5, "mean_val"]) == (0.9, pytest.approx(0.7))
    assert list(best["tried"]) == [2, 2]


def test_choose_best__a_configuration_without_validation_ranks_below_a_measured_one():
    df = frame(row("mixtraining", 0, None, 0.9, alpha=0.1), row("mixtraining", 0, 0.3, 0.5, alpha=0.9))
    assert choose_best(df).iloc[0]["alpha"] == 0.9


def test_choose_best_and_comparison_rows__a_missing_comparison_value_is_a_group_of_its_own():
    # rows rebuilt from elsewhere may lack a value (NaN): such runs are never dropped, nor pooled with the others
    runs = [row(m, 0, 0.8, 0.6, val_frac=v) for m in ("sl", "mixtraining") for v in (0.2, 0.1)]
    df = frame(*runs)
    df.loc[df["val_frac"] == 0.2, "val_frac"] = math.nan
    best = choose_best(df)
    assert len(best) == 2 and list(best["tried"]) == [1, 1]
    assert [sorted(runs) for _, runs in comparison_rows(df)] == [["mixtraining", "sl"]] * 2
    assert format_table(comparison_table(df)).splitlines()[0].startswith("| fraction | val_frac | epochs |")


# --- confirmation runs -------------------------------------------------------------------------------------------

def confirmed_rows():
    search = [row("mixtraining", 0, 0.9, 0.1, alpha=0.1), row("mixtraining", 0, 0.5, 0.1, alpha=0.5)]
    fresh = [row("sl", s, 0.5, 0.50 + s / 100, confirm="baseline", tflop=1.0) for s in (10, 11)] + \
            [row("ssl_sl", s, 0.6, 0.60 + s / 100, confirm="baseline", tflop=4.0) for s in (10, 11)] + \
            [row("mixtraining", s, 0.8, 0.70 + s / 50, alpha=0.1, confirm="tuned", tflop=3.0) for s in (10, 11)] + \
            [row("mixtraining", s, 0.7, 0.65 + s / 100, alpha=0.5, confirm="default", tflop=3.0) for s in (10, 11)]
    return frame(*search, *fresh)


def test_comparison_rows__a_confirmed_group_is_its_confirmation_runs_by_role():
    ((key, runs),) = comparison_rows(confirmed_rows())
    assert key["confirmed"] is True
    assert {m: sorted(r["seed"]) for m, r in runs.items()} == \
        {"sl": [10, 11], "ssl_sl": [10, 11], "mixtraining": [10, 11], "default": [10, 11]}
    assert set(runs["mixtraining"]["alpha"]) == {0.1} and set(runs["default"]["alpha"]) == {0.5}
    assert set(runs["sl"]["method"]) == {"sl"} and set(runs["ssl_sl"]["method"]) == {"ssl_sl"}
    ((plain, _),) = comparison_rows(frame(row("sl", 0, 0.5, 0.5)))
    assert plain["confirmed"] is False


def test_comparison_rows__a_configuration_tried_on_both_roles_counts_for_both():
    df = frame(row("mixtraining", 0, 0.9, 0.1), row("sl", 10, 0.5, 0.5, confirm="baseline"),
               row("mixtraining", 10, 0.8, 0.7, confirm="tuned+default"))
    ((_, runs),) = comparison_rows(df)
    assert sorted(runs) == ["default", "mixtraining", "sl"]


def test_paired_stats__with_confirmation_every_pair_and_its_compute_ratio():
    paired = paired_stats(confirmed_rows()).set_index(["method", "versus"])
    assert set(paired.index) == {("mixtraining", "default"), ("mixtraining", "ssl_sl"), ("mixtraining", "sl"),
                                 ("default", "ssl_sl")}
    assert paired.loc[("mixtraining", "ssl_sl"), "compute_ratio"] == pytest.approx(3 / 4)
    assert paired.loc[("mixtraining", "sl"), "compute_ratio"] == pytest.approx(3.0)
    assert paired.loc[("mixtraining", "default"), "mean_diff"] == pytest.approx(((0.9 - 0.75) + (0.92 - 0.76)) / 2)


def test_comparison_rows__a_field_searched_at_one_fraction_tells_configurations_apart_at_every_fraction():
    # mask_ratio varies among the MixTraining runs at fraction 1 only: a configuration key for every group
    df = frame(row("sl", 0, 0.5, 0.5), row("mixtraining", 0, 0.9, 0.7, mask_ratio=0.5),
               row("mixtraining", 0, 0.8, 0.6, mask_ratio=0.75), row("sl", 0, 0.5, 0.5, fraction=0.5),
               row("mixtraining", 0, 0.6, 0.55, mask_ratio=0.5, fraction=0.5))
    got = {key["fraction"]: runs for key, runs in comparison_rows(df)}
    assert list(got[0.5]["mixtraining"]["mask_ratio"]) == [0.5] and list(got[1.0]["mixtraining"]["test_acc"]) == [0.7]


def test_comparison_rows__completion_runs_alone_choose_nothing_and_a_group_with_no_finished_run_has_no_rows():
    ((_, runs),) = comparison_rows(frame(row("sl", 0, 0.5, 0.5), row("mixtraining", 0, 0.8, 0.7, _completion=True)))
    assert sorted(runs) == ["sl"]
    failed = frame(row("sl", 0, 0.5, 0.5, completed=False), row("mixtraining", 0, 0.8, 0.7, error="boom"))
    ((key, runs),) = comparison_rows(failed)
    assert runs == {} and key["fraction"] == 1.0
    assert comparison_table(failed).empty and paired_stats(failed).empty


def test_comparison_table__groups_in_order_of_their_keys_methods_in_the_papers_order_a_searched_field_aside():
    seeds = (0, 1)
    df = frame(*[row(m, s, 0.5, 0.5, fraction=f) for f in (1.0, 0.5) for m in ("ssl_sl", "sl") for s in seeds],
               *[row("mixtraining", s, v, 0.6, batch_size=b, fraction=f) for f in (1.0, 0.5)
                 for b, v in ((64, 0.9), (128, 0.8)) for s in seeds])
    table = comparison_table(df)
    assert table.attrs["config_keys"] == ["alpha", "rho", "lam", "batch_size"]
    assert list(zip(table["fraction"], table["method"])) == [
        (0.5, "sl"), (0.5, "ssl_sl"), (0.5, "mixtraining"), (1.0, "sl"), (1.0, "ssl_sl"), (1.0, "mixtraining")]
    assert list(table["batch_size"].dropna()) == [64, 64]
    header = format_table(table).splitlines()[0]
    assert header.startswith("| fraction | epochs | method |") and header.endswith("| lam | batch_size |")


# --- paired statistics ----------------------------------------------------------------------------------------

def baselines_and_mix(diffs_sl):
    sl = [row("sl", s, 0.5, 0.5) for s in range(len(diffs_sl))]
    mix = [row("mixtraining", s, 0.8, 0.5 + d) for s, d in enumerate(diffs_sl)]
    return frame(*sl, *mix)


def test_paired_stats__two_seeds_with_spread_have_an_interval():
    r = paired_stats(baselines_and_mix([0.10, 0.12])).iloc[0]
    assert r["n"] == 2 and r["ci_low"] < 0.11 < r["ci_high"] and r["p_value"] == r["p_value"]


def test_paired_stats__worse_on_every_seed_excludes_zero_below_it_and_is_significant():
    r = paired_stats(baselines_and_mix([-0.20, -0.21, -0.22, -0.20])).iloc[0]
    assert r["ci_high"] < 0 and r["excludes_zero"] and r["significant"]
    assert r["compute_ratio"] == pytest.approx(1.0)


def test_paired_stats__one_seed_has_nan_bounds_and_excludes_nothing():
    r = paired_stats(baselines_and_mix([0.3])).iloc[0]
    assert r["n"] == 1 and math.isnan(r["ci_low"]) and math.isnan(r["ci_high"]) and not r["excludes_zero"]


def test_holm__products_above_one_are_capped_at_one():
    assert holm([0.7, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_paired_stats__the_confidence_given_is_the_intervals_and_95_percent_by_default():
    df = baselines_and_mix([0.10, 0.12, 0.15])
    wide, narrow = paired_stats(df).iloc[0], paired_stats(df, confidence=0.5).iloc[0]
    assert narrow["ci_high"] - narrow["ci_low"] < wide["ci_high"] - wide["ci_low"]
    d = pd.Series([0.10, 0.12, 0.15])
    assert paired_difference(d)["ci_low"] == pytest.approx(paired_difference(d, 0.95)["ci_low"])
    assert paired_difference(d)["ci_low"] == pytest.approx(0.1233 - 4.303 * 0.02517 / math.sqrt(3), abs=1e-3)


def test_paired_stats__marked_only_below_the_family_wise_level_never_at_it():
    # a mean difference of zero has p = 1 exactly: not marked even at level 1
    r = paired_stats(baselines_and_mix([0.1, -0.1]), alpha=1.0).iloc[0]
    assert r["p_holm"] == pytest.approx(1.0) and not r["significant"]


# --- text -------------------------------------------------------------------------------------------------------

def test_format_table__one_line_per_method_in_the_papers_order_with_units():
    df = frame(*[row("sl", s, 0.5, t, time=5.0, tflop=1.0) for s, t in ((0, 0.5), (1, 0.6))],
               *[row("ssl_sl", s, 0.6, t, time=20.0, tflop=4.0) for s, t in ((0, 0.6), (1, 0.7))],
               *[row("mixtraining", s, 0.8, t, time=10.0, tflop=2.0) for s, t in ((0, 0.7), (1, 0.8))])
    table = comparison_table(df)
    assert list(table["method"]) == ["sl", "ssl_sl", "mixtraining"] and list(table.index) == [0, 1, 2]
    assert table.attrs["config_keys"] == ["alpha", "rho", "lam"]
    assert list(table["val_acc_mean"]) == [pytest.approx(0.5), pytest.approx(0.6), pytest.approx(0.8)]
    assert math.isnan(table.loc[0, "alpha"]) and table.loc[2, "alpha"] == 0.5
    lines = format_table(table).splitlines()
    assert lines[0] == ("| fraction | epochs | method | test accuracy | n | time (s, one slot) | compute (TFLOP) | "
                        "speedup (time) | speedup (compute) | wall-clock (s) | configs tried | alpha | rho | lam |")
    assert lines[1] == "|" + "---|" * 14
    assert lines[2] == "| 1 | 10 | SL | 55.00% ± 7.07 | 2 | 5.0 | 1 |  |  | 10.0 |  |  |  |  |"
    assert lines[4] == "| 1 | 10 | MixTraining | 75.00% ± 7.07 | 2 | 10.0 | 2 | 2.00x | 2.00x | 20.0 | 1 | 0.5 | 0.5 | 0.5 |"


def test_format_table__one_seed_shows_no_spread():
    df = frame(row("sl", 0, 0.5, 0.5), row("mixtraining", 0, 0.8, 0.7))
    table = comparison_table(df)
    assert math.isnan(table.set_index("method").loc["mixtraining", "test_acc_std"])
    assert "| 70.00% |" in format_table(table)


@pytest.mark.parametrize("value, text", [(None, "default"), (0.001, "0.001"), (1e-5, "1e-05"), (3, "3"),
                                         (True, "True"), ("adamw", "adamw"), (math.nan, "")])
def test_format_value__numbers_as_g_none_as_default(value, text):
    assert format_value(value) == text


def test_format_paired__names_both_methods_the_compute_and_the_mark():
    text = format_paired(paired_stats(baselines_and_mix([-0.20, -0.21, -0.22, -0.20])))
    first, footnote = text.splitlines()
    assert first.startswith("MixTraining - SL (fraction 1, epochs 10): -20.75 points at 1.00x the compute, 95% CI [")
    assert first.endswith(", n=4 *")
    assert footnote.startswith("* holds at 5% family-wise over the 1 tested comparison(s) above")


def test_format_paired__the_interval_in_points_as_a_t_interval_gives_it_and_no_mark_when_it_holds_nothing():
    # Hand counts: differences -20, -21, -22, -20 points: mean -20.75, SD 0.957, t(3, 0.975) = 3.182 -> +-1.52;
    # +10 and -12: mean -1, SD 15.56, t(1, 0.975) = 12.71 -> +-139.77.
    text = format_paired(paired_stats(baselines_and_mix([-0.20, -0.21, -0.22, -0.20])))
    assert "95% CI [-22.27, -19.23], Holm p=2.7e-05, n=4 *" in text.splitlines()[0]
    wide = format_paired(paired_stats(baselines_and_mix([0.10, -0.12]))).splitlines()[0]
    assert wide.endswith("-1.00 points at 1.00x the compute, 95% CI [-140.77, +138.77], Holm p=0.942, n=2")


def test_format_paired__names_mixtraining_when_the_rows_have_no_method_and_leaves_out_an_unknown_compute():
    paired = paired_stats(baselines_and_mix([-0.20, -0.21, -0.22, -0.20])).drop(columns="method")
    paired["compute_ratio"] = math.nan  # runs without a compute figure
    first = format_paired(paired).splitlines()[0]
    assert first.startswith("MixTraining - SL (fraction 1, epochs 10): -20.75 points, 95% CI [")


def test_format_paired_and_table__say_when_there_is_nothing_to_show():
    assert format_paired(pd.DataFrame()) == "(no MixTraining run shares seeds with a baseline: no paired comparison)"
    assert format_table(pd.DataFrame()) == "(no finished trials to compare)"


def test_format_table__shows_the_configuration_columns_the_table_names():
    df = frame(row("sl", 0, 0.5, 0.5), row("mixtraining", 0, 0.8, 0.7))
    table = comparison_table(df)
    table.attrs["config_keys"] = ["rho"]
    header, _, sl, mix = format_table(table).splitlines()
    assert header.endswith("| configs tried | rho |") and mix.endswith("| 1 | 0.5 |") and sl.endswith("|  |  |")


def test_confirm_roles__rows_without_the_column_are_the_searchs_own_on_their_own_index():
    rows = frame(row("sl", 0, 0.5, 0.5), row("sl", 1, 0.5, 0.5)).drop(columns="confirm").set_axis([5, 7])
    assert confirm_roles(rows).to_dict() == {5: "", 7: ""}


def test_format_table__the_default_shows_its_configuration_and_a_tiny_compute_keeps_its_digits():
    table = comparison_table(confirmed_rows())
    default = format_table(table).splitlines()[-1]
    assert default.startswith("| 1 | 10 | MixTraining (default) |") and default.endswith("|  | 0.5 | 0.5 | 0.5 |")
    tiny = comparison_table(frame(row("sl", 0, 0.5, 0.5, tflop=1.5e-5)))
    assert "| 1.5e-05 |" in format_table(tiny)


def test_format_table_and_paired__a_table_without_its_configuration_keys_shows_the_papers_knobs():
    table = comparison_table(frame(row("sl", 0, 0.5, 0.5), row("mixtraining", 0, 0.8, 0.7)))
    table.attrs.clear()
    assert format_table(table).splitlines()[0].endswith("| configs tried | alpha | rho | lam |")


def test_format_paired__names_the_default_and_the_key_that_tells_two_searches_groups_apart():
    by_search = frame(*[row(m, s, 0.5, 0.5 + (m == "mixtraining") * (0.1 + s / 100), batch_size=b)
                        for b in (64, 128) for m in ("sl", "mixtraining") for s in (0, 1)])
    lines = format_paired(paired_stats(by_search.assign(search=["a"] * 4 + ["b"] * 4))).splitlines()
    assert lines[0].startswith("MixTraining - SL (fraction 1, epochs 10, batch_size 64): +10.50 points")
    assert lines[1].startswith("MixTraining - SL (fraction 1, epochs 10, batch_size 128): +10.50 points")
    default = format_paired(paired_stats(confirmed_rows())).splitlines()[3]
    assert default.startswith("MixTraining (default) - SSL+SL (fraction 1, epochs 10): +5.00 points")
