"""trainable.cost: FLOPs per step kind, and the one-slot calibration of seconds per image."""
import statistics
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import small_config
from trainable import engine as engine_module
from trainable.config import resolve
from trainable.cost import KINDS, calibrate, step_flops
from trainable.data import generator
from trainable.engine import Engine
from trainable.models import MODEL_CONFIGS, MixViT
from trainable.steps import ssl_step


def test_step_flops__the_merged_mix_step_costs_less_than_its_separate_passes():
    cfg = resolve(small_config()).model_cfg
    ssl, sl = step_flops(cfg, (10,), "ssl"), step_flops(cfg, (10,), "sl")
    separate, merged = step_flops(cfg, (10,), "mix", "separate"), step_flops(cfg, (10,), "mix", "merged")
    assert separate == pytest.approx(ssl + sl, rel=1e-6)  # a true MAE pass plus an SL pass
    assert sl < merged < separate  # one encoder pass, plus the decoder


def test_step_flops__an_sl_step_of_vit_tiny_per_image_is_the_hand_count_of_its_matmuls():
    # PyTorch's FlopCounterMode counts 2 FLOPs per multiply-add of every matmul and convolution (nothing for
    # norms, softmax or GELU). Backward repeats each matmul twice (the gradient of its input and of its
    # weight): 3x the forward, except the patch embedding, whose input (the images) needs no gradient: 2x.
    c = MODEL_CONFIGS["vit_tiny"]  # App. A.3: 32x32 images in 2x2 patches, D = 192, 12 blocks, 3 heads
    n, d, classes = (32 // 2) ** 2, 192, 10
    t = n + 1  # the class token
    patch_embed = 2 * n * (2 * 2 * 3) * d
    per_block = 2 * t * d * (3 * d + d + 4 * d + 4 * d)  # qkv, attention output projection, MLP in and out
    per_block += 2 * 2 * t * t * d  # attention scores q k^T and their weighting of v, over all heads
    head = 2 * d * classes  # the class token only
    hand = 2 * patch_embed + 3 * (12 * per_block + head)
    assert hand == 10_014_071_040  # about 10.0 GFLOP per image
    assert step_flops(c, (classes,), "sl") == hand


def test_step_flops__counts_the_mask_ratio_that_runs():
    cfg = MODEL_CONFIGS["test"]
    half, default = step_flops(cfg, (10,), "ssl", mask_ratio=0.5), step_flops(cfg, (10,), "ssl", mask_ratio=0.75)
    assert half > default  # the encoder sees half of the patches instead of a quarter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MixViT(cfg, [10])
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    x = torch.zeros(4, 3, cfg.img_size, cfg.img_size)
    with FlopCounterMode(display=False) as counter:
        ssl_step(model, x, 0.5, generator(0)).loss.backward()
    assert half == counter.get_total_flops() / 4


class _Clock:
    """A fake time.perf_counter: time moves only when the test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_train_steps__trains_the_images_of_its_steps_and_times_only_them(digits_data, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=clock))
    eng = Engine(small_config(batch_size=32), data=digits_data)

    def slow(method):  # setup that takes 100 "seconds"
        def wrapped(*args, **kwargs):
            clock.now += 100.0
            return method(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(eng, "_ensure_optimizer", slow(eng._ensure_optimizer))
    monkeypatch.setattr(eng, "_batches", slow(eng._batches))
    real_phase_step = engine_module.phase_step

    def one_second_steps(*args):
        step = real_phase_step(*args)
        return lambda batch, gen: (setattr(clock, "now", clock.now + 1.0), step(batch, gen))[1]

    monkeypatch.setattr(engine_module, "phase_step", one_second_steps)
    images, seconds = eng.train_steps("sl", 3)
    assert images == 3 * 32 and seconds == 3.0


class _ScriptedSteps:
    """Stands in for an engine: each call's seconds per step come from `per_step(kind, call number)`."""

    def __init__(self, per_step, images_per_step=32):
        self.per_step, self.images_per_step, self.calls = per_step, images_per_step, []

    def train_steps(self, kind, steps, seed=0):
        self.calls.append((kind, steps, seed))
        return steps * self.images_per_step, steps * self.per_step(kind, len(self.calls))


def test_calibrate__median_of_the_timed_runs_after_two_warm_ups_per_kind():
    slow_warm_up = lambda kind, call: 50.0 if call <= 3 else 0.01 * (1 + KINDS.index(kind)) * (1 + call % 4)  # noqa
    fake = _ScriptedSteps(slow_warm_up)
    seconds = calibrate(fake, steps=5, reps=3)
    assert fake.calls[:6] == [(k, 1, 0) for k in KINDS] * 2
    assert fake.calls[6:] == [(k, 5, rep + 1) for rep in range(3) for k in KINDS]  # interleaved
    for kind in KINDS:
        timed = [slow_warm_up(kind, i + 1) / 32 for i, c in enumerate(fake.calls) if i >= 6 and c[0] == kind]
        assert seconds[kind] == statistics.median(timed) and len(timed) == 3
    assert seconds["mix"] != statistics.mean(slow_warm_up("mix", i) / 32 for i in (8, 11, 14))


def test_calibrate__cuts_the_steps_to_stay_near_max_seconds():
    fake = _ScriptedSteps(lambda kind, call: 2.0)  # 6 s for one step of each kind
    calibrate(fake, steps=8, reps=2, max_seconds=60.0)
    assert {c[1] for c in fake.calls[6:]} == {5}  # 60 s / (2 reps x 6 s)
    fake = _ScriptedSteps(lambda kind, call: 100.0)
    calibrate(fake, steps=8, reps=2, max_seconds=60.0)
    assert {c[1] for c in fake.calls[6:]} == {1}  # at least one step


def test_calibrate__an_engine_gives_the_median_seconds_per_image_of_its_timed_steps(digits_data):
    eng = Engine(small_config(batch_size=32), data=digits_data)
    real, timed = eng.train_steps, []

    def spy(kind, steps, seed=0):
        images, seconds = real(kind, steps, seed)
        timed.append((kind, steps, images, seconds))
        return images, seconds

    eng.train_steps = spy
    seconds = calibrate(eng, steps=2, reps=3, max_seconds=1e9)
    timed = timed[6:]  # after the warm-ups
    assert [(k, s, i) for k, s, i, _ in timed] == [(k, 2, 64) for _ in range(3) for k in KINDS]
    assert seconds == {k: statistics.median(s / i for kind, _, i, s in timed if kind == k) for k in KINDS}
