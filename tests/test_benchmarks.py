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
