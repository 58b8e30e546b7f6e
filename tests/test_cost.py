"""trainable.cost: FLOPs per step kind, and the one-slot calibration of seconds per image."""
import pytest

from conftest import small_config
from trainable.config import resolve
from trainable.cost import KINDS, calibrate, step_flops
from trainable.engine import Engine


def test_step_flops__the_merged_mix_step_costs_less_than_its_separate_passes():
    cfg = resolve(small_config()).model_cfg
    ssl, sl = step_flops(cfg, (10,), "ssl"), step_flops(cfg, (10,), "sl")
    separate, merged = step_flops(cfg, (10,), "mix", "separate"), step_flops(cfg, (10,), "mix", "merged")
    assert separate == pytest.approx(ssl + sl, rel=1e-6)  # a true MAE pass plus an SL pass
    assert sl < merged < separate  # one encoder pass, plus the decoder


def test_train_steps__trains_the_images_of_its_steps_and_times_only_them(digits_data):
    eng = Engine(small_config(batch_size=32), data=digits_data)
    images, seconds = eng.train_steps("sl", 3)
    assert images == 3 * 32 and seconds > 0


def test_calibrate__seconds_per_image_for_every_step_kind(digits_data):
    seconds = calibrate(Engine(small_config(batch_size=32), data=digits_data), steps=2, reps=1)
    assert set(seconds) == set(KINDS) and all(0 < s < 1 for s in seconds.values())
