"""Proposal algorithms by name (`--search`), and the experiment's searcher built around one.

`SEARCHERS[name]` makes the proposer of one data fraction from the space's searched dimensions; None
means a grid (the experiment searcher then queues every combination itself). Adding an algorithm is
one function and one entry. `make_searcher` wraps the proposers in the `ExperimentSearcher`, which
adds baselines, seeds, fractions, deduplication and the completion of stopped seeds.
"""
from __future__ import annotations

from typing import Any, Callable

import optuna
import pandas as pd
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces import EPOCHS, epoch_budgets, identity, scale_epochs, searched, values
from tuning.searcher import ExperimentSearcher


def _optuna(sampler: Callable[[int], optuna.samplers.BaseSampler]):
    def make(space: dict[str, Any], metric, mode, seed: int, points: list[dict], rewards: list[float]) -> Searcher:
        # The space as Optuna's own distributions: handed Ray Tune domains, OptunaSearch warns and converts them.
        return OptunaSearch(space=OptunaSearch.convert_search_space(space), metric=metric, mode=mode,
                            sampler=sampler(seed), points_to_evaluate=points or None,
                            evaluated_rewards=rewards or None)
    return make


# name -> factory(searched dimensions, metric, mode, seed, earlier points, their rewards) -> Searcher | None (grid)
SEARCHERS: dict[str, Callable[..., Searcher | None]] = {
    "optuna": _optuna(lambda seed: optuna.samplers.TPESampler(seed=seed)),
    "random": _optuna(lambda seed: optuna.samplers.RandomSampler(seed=seed)),
    "grid": lambda *args: None,
}


def metrics_and_modes(objective: str) -> tuple[str | list[str], str | list[str]]:
    if objective == "pareto":  # the paper's trade-off: accuracy up, deterministic compute down
        return ["val_acc", "compute_tflop"], ["max", "min"]
    return "val_acc", "max"


def make_searcher(args, space: dict[str, Any], history: pd.DataFrame | None = None,
                  stops_early: bool = True) -> ExperimentSearcher:
    """The experiment's searcher; with the history of an earlier search (--warm-start), the proposers start from
    its finished configurations and their results, and nothing it ran is run again."""
    metric, mode = metrics_and_modes(args.objective)
    factory, dims = SEARCHERS[args.search], searched(space)
    inner = {}
    for i, f in enumerate(args.fraction):
        points, rewards = history_points(history, f, dims, args.epoch_scale)
        inner[f] = factory(dims, metric, mode, args.search_seed + i, points, rewards)
    searcher = ExperimentSearcher(
        space=space, fractions=args.fraction, seeds=args.seeds, budgets=epoch_budgets(space, args.epoch_scale),
        epoch_scale=args.epoch_scale, num_samples=args.num_samples,
        inner=None if any(v is None for v in inner.values()) else inner, metric=metric, mode=mode,
        baselines=not args.no_baselines, share_ssl=args.share_ssl, complete=stops_early,
        max_concurrent=args.max_concurrent, identity=identity(space),
        confirm_seeds=args.confirm_seeds if dims else 0)  # a fixed space chooses nothing: nothing to confirm
    if history is not None:
        searcher.add_history(history)
    return searcher


def history_points(history: pd.DataFrame | None, fraction: float, dims: dict,
                   scale: float) -> tuple[list[dict], list[float]]:
    """An earlier search's finished configurations at `fraction` in the space's own terms (unscaled epochs),
    with the mean validation accuracy over their seeds, as its searcher was told."""
    if history is None:
        return [], []
    mix = history[(history["method"] == "mixtraining") & (history["fraction"] == fraction) & history["error"].isna()]
    # Epoch counts: the rows hold them scaled, the space unscaled.
    raw = {k: {scale_epochs(v, scale): v for v in values(dims[k])} for k in _EPOCH_COLUMNS if k in dims}
    points, rewards = [], []
    for _, runs in mix.groupby("group"):
        first = runs.iloc[0]
        point = {k: raw[k][int(first[_EPOCH_COLUMNS[k]])] if k in raw else _plain(first[k]) for k in dims}
        points.append(point)
        rewards.append(float(runs["val_acc"].mean()))
    return points, rewards


_EPOCH_COLUMNS = {EPOCHS: "epochs", "e_sl": "epochs", "e_ssl": "e_ssl"}  # a space's epoch key -> its row column


def _plain(v):
    return v.item() if hasattr(v, "item") else v
