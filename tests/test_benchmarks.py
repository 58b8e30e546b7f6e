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
