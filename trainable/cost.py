"""What a run costs, independent of whatever else runs on the machine.

- `step_flops`: the floating-point operations of one training step (forward and backward) per
  image, for each step kind (SSL, mix merged or separate, SL), counted by PyTorch's own
  `FlopCounterMode` once per model, kind and mask ratio, attention included. FLOPs depend on neither
  the weights nor the device, so they are counted on the CPU with a batch of two and the attention
  written as explicit matrix products (which the counter sees whatever kernel runs them).
- `calibrate`: seconds per image of each step kind on a device with nothing else running on it.
  The search measures this once, on one trial's resources before any trial starts, so that time
  speedups compare epoch costs rather than how trials happened to share the machine.
"""
from __future__ import annotations

import functools
import statistics
from typing import Protocol

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainable.models import MixViT, ModelConfig
from trainable.steps import MIX_STEP_FUNCTIONS, sl_step, ssl_step

KINDS = ("ssl", "mix", "sl")


@functools.lru_cache(maxsize=None)
def step_flops(model_cfg: ModelConfig, classes: tuple[int, ...], kind: str, mix_step: str = "merged",
               mask_ratio: float = 0.75) -> float:
    """Forward + backward FLOPs per image of one `kind` step ("ssl", "mix" or "sl") of this model, at the
    run's `mask_ratio`: it sets how many tokens the SSL step's encoder and every decoder input see."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MixViT(model_cfg, list(classes))
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    per_task = 2
    x = torch.zeros(per_task * len(classes), model.in_chans, model_cfg.img_size, model_cfg.img_size)
    labels = [torch.zeros(per_task, dtype=torch.long) for _ in classes]
    gen = torch.Generator().manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        if kind == "ssl":
            out = ssl_step(model, x, mask_ratio, gen)
        elif kind == "sl":
            out = sl_step(model, x, labels)
        else:  # alpha only weighs two scalars: any value counts the same
            out = MIX_STEP_FUNCTIONS[mix_step](model, x, labels, 0.5, mask_ratio, gen)
        out.loss.backward()
    return counter.get_total_flops() / len(x)


class StepTimer(Protocol):
    """What `calibrate` needs of an engine (`trainable.engine.Engine`): timed steps of a kind."""

    def train_steps(self, phase: str, steps: int, seed: int = 0) -> tuple[int, float]:
        """(images trained on, seconds the steps alone took)."""


def calibrate(engine: StepTimer, steps: int = 8, reps: int = 3, max_seconds: float = 60.0) -> dict[str, float]:
    """Seconds per image of an SSL, a mix and an SL step of `engine`'s model and data on its device:
    the median of `reps` interleaved timings of `steps` steps each, after two warm-up steps per kind.

    Only the steps are timed (not making the optimiser or the batches). On a slow device the steps are
    cut so the whole calibration stays near `max_seconds`. `engine` is used up (its weights and
    optimiser move): pass a throwaway one.
    """
    for kind in KINDS:  # the first step of each kind: lazy initialisation, compilation
        engine.train_steps(kind, 1)
    step_seconds = 0.0  # one step of each kind, as the timed runs will take them
    for kind in KINDS:  # the second, compiled already, sizes the timed runs
        step_seconds += engine.train_steps(kind, 1)[1]
    steps = max(1, min(steps, int(max_seconds / (reps * max(step_seconds, 1e-9)))))
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for rep in range(reps):
        for kind in KINDS:
            images, seconds = engine.train_steps(kind, steps, seed=rep + 1)
            times[kind].append(seconds / images)
    return {k: statistics.median(v) for k, v in times.items()}
