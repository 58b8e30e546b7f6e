"""What a search will cost before it starts, and how far it has come while it runs.

`estimate` counts the trials and, from the datasets' sizes, the images each step kind will train
on; with the per-image costs measured at the start (`trainable.cost.calibrate`) that gives an
estimated wall time on the slots the cluster has. `Progress` is a Ray Tune callback that prints the
search's completed share and a remaining-time estimate every so often, next to Ray's own table.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ray import tune
from ray.tune.search.sample import Domain

from search_spaces import grid, to_config_fields
from trainable.config import method_plan

log = logging.getLogger("tuning.search")

PAPER_MODELS = ("vit_tiny", "vit_tiny_64")


@dataclass
class Estimate:
    trials: int = 0
    epochs: int = 0
    images: dict[str, float] = field(default_factory=lambda: {"ssl": 0.0, "mix": 0.0, "sl": 0.0})

    def add(self, plan, sl_images: float, ssl_images: float, count: float = 1.0) -> None:
        self.trials += count
        self.epochs += count * plan.total
        self.images["ssl"] += count * plan.ssl * ssl_images
        self.images["mix"] += count * plan.mix * sl_images
        self.images["sl"] += count * plan.sl * sl_images

    def seconds(self, step_seconds: dict[str, float], slots: int) -> float | None:
        if not step_seconds:
            return None
        return sum(n * step_seconds[k] for k, n in self.images.items()) / max(1, slots)


def epoch_images(loaded: dict, datasets: list[str], ssl_dataset: str | None, fraction: float,
                 val_frac: float) -> tuple[float, float]:
    """Images in one SL (and mix) epoch and in one SSL epoch: pools after the validation hold-out and the fraction."""
    pools = [len(loaded[d].train_labels) * (1 - val_frac) * fraction for d in datasets]
    sl = max(pools) * len(pools)  # an epoch is one pass over the largest task, each task a share of the batch
    ssl = len(loaded[ssl_dataset].train_labels) if ssl_dataset and ssl_dataset not in datasets else sum(pools)
    return sl, ssl


def _points(space: dict[str, Any], n: int = 64) -> list[dict[str, Any]]:
    """The space's configurations: its grid, or for continuous spaces n seeded samples."""
    try:
        return grid(space)
    except ValueError:
        import random
        rng = random.Random(0)
        return [{k: (v.sample(random_state=rng.randint(0, 2**31)) if isinstance(v, Domain) else v)
                 for k, v in space.items()} for _ in range(n)]


def estimate(searcher, space: dict[str, Any], loaded: dict, base: dict) -> Estimate:
    """The plan of the search's queued trials and of its proposals still to come (the space's average)."""
    est = Estimate()
    sizes = {}

    def images(fraction: float) -> tuple[float, float]:
        if fraction not in sizes:
            sizes[fraction] = epoch_images(loaded, base["datasets"], base["ssl_dataset"], fraction, base["val_frac"])
        return sizes[fraction]

    for cfg in searcher.queue:
        plan = method_plan(cfg["method"], cfg["e_ssl"], cfg["e_sl"], cfg.get("rho", 0.5))
        est.add(plan, *images(cfg["fraction"]))
    points = [to_config_fields(p, searcher.scale) for p in _points(space)]
    for fraction, left in searcher.remaining.items():
        for p in points:
            plan = method_plan("mixtraining", p["e_ssl"], p["e_sl"], p.get("rho", 0.5))
            est.add(plan, *images(fraction), count=left * searcher.seeds / len(points))
    est.trials = round(est.trials)
    return est


def trials_per_node(resources: dict, cpus: float, gpus: float) -> int:
    """Trials of `cpus` CPUs and `gpus` GPUs that one node with these resources runs at once."""
    fits = [resources.get("CPU", 0) / cpus] + ([resources.get("GPU", 0) / gpus] if gpus else [])
    return math.floor(min(fits) + 1e-9)


def slots_available(cpus: float, gpus: float) -> int:
    """Trials the alive nodes can run at once."""
    import ray
    return sum(trials_per_node(n["Resources"], cpus, gpus) for n in ray.nodes() if n.get("Alive"))


def describe(est: Estimate, step_seconds: dict[str, float], slots: int, early_stopping: bool) -> str:
    images = sum(est.images.values())
    line = f"this search: about {est.trials} trials, {est.epochs:.0f} epochs, {images / 1e6:.2f} M images"
    seconds = est.seconds(step_seconds, slots)
    if seconds is not None:
        line += (f"; about {_duration(seconds)} of training steps on {slots} slot(s)"
                 + (" at most (the scheduler stops some trials early)" if early_stopping else "")
                 + "; start-up, evaluation and checkpoints add to it")
    return line


def paper_setting_on_cpu_warning(model: str, gpus_per_trial: float) -> str | None:
    if model in PAPER_MODELS and not gpus_per_trial:
        return (f"warning: the paper's {model} on a CPU trains at a few images per second: a search takes days. "
                f"Give it GPUs (--gpus-per-trial 0.25 on a GPU machine), or try the CPU demo: "
                f"--dataset digits --model tiny --epoch-scale 0.2")
    return None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class Progress(tune.Callback):
    """Every `every` seconds: the share of the planned epochs done, trials finished, and the time left."""

    def __init__(self, planned_epochs: float, every: float = 30.0):
        self.planned, self.every = max(1.0, planned_epochs), every
        self.done: dict[str, int] = {}  # trial -> epochs reported
        self.cut = 0.0  # epochs that stopped trials will not train
        self.finished = 0
        self.start = self.last = None

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.done[trial.trial_id] = int(result.get("epoch", 0))
        self._maybe_report()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.finished += 1
        last = trial.last_result or {}
        if not last.get("completed"):  # stopped early: the rest of its plan will not run
            total = method_plan(trial.config["method"], trial.config["e_ssl"], trial.config["e_sl"],
                                trial.config.get("rho", 0.5)).total
            self.cut += max(0, total - int(last.get("epoch", 0)))
        self._maybe_report()

    def _maybe_report(self) -> None:
        now = time.time()
        self.start = self.start or now
        if self.last is not None and now - self.last < self.every:
            return
        self.last = now
        share = min(1.0, sum(self.done.values()) / max(1.0, self.planned - self.cut))
        elapsed = now - self.start
        left = elapsed * (1 - share) / share if share >= 0.1 and elapsed >= 10 else None
        log.info("progress: %.0f%% of the planned epochs, %d trial(s) finished%s", 100 * share, self.finished,
                 f", about {_duration(left)} left" if left is not None else "")
