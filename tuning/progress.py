"""What a search will cost before it starts, and how far it has come while it runs.

`estimate` counts the trials and, from the datasets' sizes, the images each step kind will train
on; with the per-image costs measured at the start (`trainable.cost.calibrate`) that gives an
estimated wall time on the slots the cluster has. `Progress` is a Ray Tune callback that prints the
search's state on one line: in place on a terminal, a line now and then in a log.
"""
from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

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
        rng = random.Random(0)
        return [{k: (v.sample(random_state=rng.randint(0, 2**31)) if isinstance(v, Domain) else v)
                 for k, v in space.items()} for _ in range(n)]


def estimate(searcher, space: dict[str, Any], loaded: dict, base: dict) -> Estimate:
    """The plan of the search's queued trials, of its proposals still to come (the space's average), and of the
    runs that confirm each budget's choice on fresh seeds (the chosen configuration taken as the space's
    average, the default at rho 0.5, SL and SSL+SL). Completion runs, which only some searches need, are not
    counted."""
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
    for fraction in searcher.fractions if getattr(searcher, "confirm_seeds", 0) else []:
        for e in searcher.budgets:
            n = searcher.confirm_seeds
            est.add(method_plan("mixtraining", e, e, 0.5), *images(fraction), count=n)
            for p in points:
                est.add(method_plan("mixtraining", e, e, p.get("rho", 0.5)), *images(fraction), count=n / len(points))
            for method in ("sl", "ssl_sl") if searcher.baselines else ():
                est.add(method_plan(method, e, e, 0.0), *images(fraction), count=n)
    est.trials = round(est.trials)
    return est


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
                f"Give it GPUs (--gpus-per-trial 1 on a GPU machine), or try the CPU demo: "
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


class Line:
    """One status line: rewritten in place on a terminal, a new line at most every `log_every` s in a log
    (`ray job logs --follow`, a file), so a long search leaves a readable trail either way."""

    def __init__(self, stream: TextIO | None = None, tty_every: float = 0.5, log_every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self._stream, self.clock = stream, clock  # None: whatever sys.stderr is when a line is written
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = tty_every if self.tty else log_every
        self.last: float | None = None
        self.shown = ""

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def __getstate__(self):  # Tune pickles its callbacks with the experiment: a stream does not travel
        return {**self.__dict__, "_stream": None}

    def show(self, text: str, force: bool = False) -> None:
        now = self.clock()
        if not force and self.last is not None and now - self.last < self.every:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.shown = text
        self.stream.flush()

    def close(self) -> None:
        """End the line on a terminal, so what is printed next starts on its own."""
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = ""


class Progress(tune.Callback):
    """The search's one progress line: trials done, running, stopped early and failed, the best validation
    accuracy so far per epoch budget (MixTraining), the share of the planned epochs trained and the time left."""

    def __init__(self, planned_epochs: float, line: Line, clock: Callable[[], float] = time.monotonic):
        self.planned, self.line, self.clock = max(1.0, planned_epochs), line, clock
        self.epochs: dict[str, int] = {}  # trial -> epochs reported
        self.cut = 0.0  # epochs that stopped trials will not train
        self.running: set[str] = set()
        self.counts = {"done": 0, "stopped": 0, "failed": 0}
        self.best: dict[int, float] = {}  # epoch budget -> best validation accuracy of a MixTraining trial
        self.start = clock()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running.add(trial.trial_id)
        self.update()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.running.add(trial.trial_id)
        self.epochs[trial.trial_id] = int(result.get("epoch", 0))
        acc = result.get("val_acc")
        if trial.config.get("method") == "mixtraining" and acc is not None and acc == acc:
            budget = int(trial.config["e_sl"])
            self.best[budget] = max(self.best.get(budget, 0.0), float(acc))
        self.update()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        last = trial.last_result or {}
        if last.get("completed"):
            self.counts["done"] += 1
        else:  # stopped early: the rest of its plan will not run
            self.counts["stopped"] += 1
            cfg = trial.config
            total = method_plan(cfg["method"], cfg["e_ssl"], cfg["e_sl"], cfg.get("rho", 0.5)).total
            self.cut += max(0, total - int(last.get("epoch", 0)))
        self.update()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.running.discard(trial.trial_id)
        self.counts["failed"] += 1
        self.update()

    def on_experiment_end(self, trials, **info) -> None:
        self.update(force=True)
        self.line.close()

    def text(self) -> str:
        share = min(1.0, sum(self.epochs.values()) / max(1.0, self.planned - self.cut))
        elapsed = self.clock() - self.start
        left = elapsed * (1 - share) / share if share >= 0.05 and elapsed >= 10 else None
        c = self.counts
        best = " ".join(f"{b}ep {100 * a:.1f}%" for b, a in sorted(self.best.items()))
        return (f"trials: {c['done']} done, {len(self.running)} running, {c['stopped']} stopped early, "
                f"{c['failed']} failed | best val acc: {best or '-'} | {100 * share:.0f}% of planned epochs"
                + (f", about {_duration(left)} left" if left is not None else ""))

    def update(self, force: bool = False) -> None:
        self.line.show(self.text(), force=force)
