"""The prepared GPU check must keep working: GPU sessions are rare and short, so a broken script
there costs the measurement. Here it runs on the CPU with the `test` model."""
import importlib
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_switches__times_each_variant_phase_and_shared_device_against_the_all_off_baseline(
        tmp_path, monkeypatch):
    # Imported by name, as the processes it spawns import it (they inherit sys.path).
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    gpu_switches = importlib.import_module("gpu_switches")
    out = tmp_path / "switches.json"
    gpu_switches.main(["--device", "cpu", "--model", "test", "--repeat", "1", "--reps", "1", "--batch-size", "128",
                       "--variants", "baseline", "sdpa", "--phases", "ssl", "mix", "--concurrent", "1", "2", "--concurrent-variant", "baseline", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"baseline", "sdpa"}
    for variant, phases in result["variants"].items():
        assert set(phases) == {"ssl", "mix"}
        for r in phases.values():
            assert r["images_per_s"] > 0 and r["first_epoch_loss"] > 0
    for ph, r in result["variants"]["sdpa"].items():  # the speedup is the variant's rate over the baseline's
        base = result["variants"]["baseline"][ph]["images_per_s"]
        assert r["speedup_over_baseline"] == pytest.approx(r["images_per_s"] / base)
    assert set(result["shared_device_sl_images_per_s"]) == {"1", "2"}  # trial processes sharing the device
    assert all(v > 0 for v in result["shared_device_sl_images_per_s"].values())
    # Same weights, same batches: SDPA and the explicit softmax compute the same first-epoch loss.
    for ph in ("ssl", "mix"):
        assert abs(result["variants"]["sdpa"][ph]["first_epoch_loss"]
                   - result["variants"]["baseline"][ph]["first_epoch_loss"]) < 1e-3


@pytest.mark.slow
def test_scale__reports_throughput_memory_sizes_and_the_end_of_a_tracked_five_trial_search(tmp_path):
    # As README runs it, in a process of its own (it starts its own Ray instance), with 5 trials instead of 1,000.
    import subprocess
    import sys
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--trials", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert (r["trials"], r["failed"], r["completed"]) == (5, 0, 5)  # exactly --trials: no baselines, no completions
    assert set(r["driver_rss_mb"]) == {"at_start", "1", "2", "5", "at_end"}  # a tenth, half and all (at least 1)
    assert r["growth_between_trials"] == [1, 5] and r["trials_per_s_per_cpu"] > 0
    assert r["experiment"]["experiment_state_json_bytes"] > 0 and r["experiment"]["trial_folders"] == 5
    assert r["tracking_store"]["db_bytes"] > 0
    assert r["bookkeeping"]["tracker_runs"] == 5 and r["bookkeeping"]["delivery_left"] == 0  # every call delivered
    assert 0 < r["end"]["last_trial_end_to_printed_table_s"] < r["wall_s"]
    assert (tmp_path / "scale.png").stat().st_size > 0
    assert "python tuning/search.py --space continuous" in r["search_command"]


@pytest.mark.slow
def test_replicate__ssl_cosine_ablation_pairs_each_seed_and_keeps_the_table_on_the_default_schedule(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    replicate = importlib.import_module("replicate")
    out = tmp_path / "replicate.json"
    assert replicate.main(["--seeds", "2", "--fraction", "0.1", "--epoch-scale", "0.05", "--model", "test",
                           "--ablate-ssl-cosine", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = result["runs"]
    mixes = {(r["ssl_cosine"], r["seed"]): r for r in runs if r["method"] == "mixtraining"}
    assert sorted(mixes) == [("e_ssl", 0), ("e_ssl", 1), ("ssl_only", 0), ("ssl_only", 1)]
    assert all(r["ssl_cosine"] == "e_ssl" for r in runs if r["method"] != "mixtraining")  # baselines run once
    # The schedules train differently (SSL-only LRs differ), at the same cost.
    assert mixes["ssl_only", 0]["test_acc"] != mixes["e_ssl", 0]["test_acc"] or \
        mixes["ssl_only", 1]["test_acc"] != mixes["e_ssl", 1]["test_acc"]
    [ablation] = result["ssl_cosine_ablation"]
    diffs = [mixes["ssl_only", s]["test_acc"] - mixes["e_ssl", s]["test_acc"] for s in (0, 1)]
    assert (ablation["ssl_cosine"], ablation["versus"], ablation["n"]) == ("ssl_only", "e_ssl", 2)
    assert ablation["mean_diff"] == pytest.approx(sum(diffs) / 2)
    assert ablation["compute_ratio"] == pytest.approx(1.0, rel=1e-6)
    mix_rows = [r for r in result["table"] if r["method"] == "mixtraining"]
    assert len(mix_rows) == 1 and mix_rows[0]["test_acc_mean"] == pytest.approx(
        sum(mixes["e_ssl", s]["test_acc"] for s in (0, 1)) / 2)
    assert "ssl_cosine=ssl_only - ssl_cosine=e_ssl (fraction 0.1, epochs 5)" in result["markdown"]


def _vs_tune(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("vs_tune")


def test_vs_tune__regret_is_the_mean_shortfall_of_the_choices_against_the_best_per_budget(monkeypatch):
    vs_tune = _vs_tune(monkeypatch)
    import pandas as pd
    mix = pd.DataFrame([{"epochs": e, "alpha": a, "rho": r, "test": t} for e, a, r, t in [
        (4, 0.1, 0.5, 0.80), (4, 0.9, 0.5, 0.70), (4, 0.5, 0.5, 0.75), (8, 0.1, 0.5, 0.90), (8, 0.9, 1.0, 0.86),
        (8, 0.5, 0.5, 0.89)]])
    best = {4: 0.80, 8: 0.90}
    assert vs_tune.regret({4: (0.1, 0.5), 8: (0.1, 0.5)}, mix, best) == pytest.approx(0.0)
    assert vs_tune.regret({4: (0.9, 0.5), 8: (0.9, 1.0)}, mix, best) == pytest.approx((10 + 4) / 2)
    assert vs_tune.regret({4: (0.1, 0.5)}, mix, best) == pytest.approx((0 + 1) / 2)  # no choice yet: the default
    # As the search goes: trials in the order they ended; baselines choose nothing, and a budget's completed runs
    # outrank its stopped ones.
    trials = pd.DataFrame([
        {"end": 3, "epochs": 4, "alpha": 0.9, "rho": 0.5, "val_acc": 0.6, "completed": True, "search_proper": True,
         "spent_tflop": 1.0},
        {"end": 1, "epochs": 8, "alpha": 0.9, "rho": 1.0, "val_acc": 0.7, "completed": True, "search_proper": True,
         "spent_tflop": 2.0},
        {"end": 2, "epochs": 8, "alpha": 0.1, "rho": 0.5, "val_acc": 0.9, "completed": False, "search_proper": True,
         "spent_tflop": 0.5},
        {"end": 4, "epochs": 4, "alpha": 0.5, "rho": 0.5, "val_acc": 0.99, "completed": True, "search_proper": False,
         "spent_tflop": 1.5},
        {"end": 5, "epochs": 4, "alpha": 0.1, "rho": 0.5, "val_acc": 0.7, "completed": True, "search_proper": True,
         "spent_tflop": 1.0}])
    points = vs_tune.curve(trials, mix, best)
    assert [c for c, _ in points] == [0.0, 2.0, 2.5, 3.5, 5.0, 6.0]
    assert [r for _, r in points] == [pytest.approx(x) for x in [(5 + 1) / 2, (5 + 4) / 2, (5 + 4) / 2, (10 + 4) / 2,
                                                                 (10 + 4) / 2, (0 + 4) / 2]]
    assert vs_tune.first_within(points, 2.5) == 6.0 and vs_tune.first_within(points, 1.0) is None
    stopped_only = trials.assign(completed=False)  # then the best stopped run at a budget is the choice
    assert vs_tune.choice_from(stopped_only)[8] == (0.1, 0.5)
    assert vs_tune.first_within([(1.0, 0.5), (2.0, 3.0), (3.0, 0.5)], 1.0) == 3.0  # and stays there
    parts = trials.assign(part=["search", "search", "search", "baselines", "search"],
                          completed=[True, True, False, False, True])  # a stopped baseline is not the search's
    assert vs_tune.spent_by_part(parts) == {"search_tflop": 4.5, "baselines_tflop": 1.5, "completion_tflop": 0.0,
                                            "confirmation_tflop": 0.0, "stopped_early": 1}


def test_vs_tune__each_trial_of_a_search_counts_toward_one_part_of_its_compute(monkeypatch):
    vs_tune = _vs_tune(monkeypatch)
    import pandas as pd
    from test_summary import row
    df = pd.DataFrame([row("sl", 0, 0.5, 0.5), row("ssl_sl", 0, 0.6, 0.6),
                       row("mixtraining", 0, 0.9, 0.9), row("mixtraining", 1, 0.9, 0.9, completion=True),
                       row("mixtraining", 5, 0.9, 0.9, confirm="tuned"), row("sl", 5, 0.5, 0.5, confirm="sl")])
    part = vs_tune.trial_parts(df)
    assert list(part == "search") == [False, False, True, False, False, False]
    assert list(part) == ["baselines", "baselines", "search", "completion", "confirmation", "confirmation"]
