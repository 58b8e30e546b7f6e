"""One Ray Tune searcher for a whole MixTraining experiment.

Ray Tune's searchers propose points of a space; an experiment here also needs what they lack:
- the SL and SSL+SL baselines, once per (epoch budget, fraction, seed), in the same experiment;
- every proposed configuration repeated over `seeds` seeds, the searcher told the mean;
- one independent search per data fraction (the best alpha/rho differ between fractions).
`ExperimentSearcher` does exactly that bookkeeping and delegates the proposals to Optuna
(`OptunaSearch`, TPE or random sampling) or to a precomputed grid.
"""
from __future__ import annotations

import logging
import pickle
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.sample import Domain

from search_spaces import grid, to_config_fields
from trainable.config import MixConfig, method_plan

log = logging.getLogger(__name__)

GROUP = "_group"  # config key shared by the seed repeats of one proposed configuration


def baseline_configs(budgets: list[int], fractions: list[float], seeds: int) -> list[dict[str, Any]]:
    """SL and SSL+SL once per budget, fraction and seed (never once per alpha or rho)."""
    return [{"method": method, "e_ssl": e, "e_sl": e, "fraction": f, "seed": s}
            for f in fractions for e in budgets for method in ("sl", "ssl_sl") for s in range(seeds)]


def split_space(space: dict[str, Any]) -> tuple[dict[str, Domain], dict[str, Any]]:
    """(searched dimensions, constants) of a space."""
    searched = {k: v for k, v in space.items() if isinstance(v, Domain)}
    return searched, {k: v for k, v in space.items() if k not in searched}


class ExperimentSearcher(Searcher):
    """Baselines, then proposals of per-fraction inner searchers (or a grid), each over all seeds.

    Suggestions hold only what varies between trials; the Trainable adds the search's shared base.

    inner: one Ray searcher per fraction, already built over the space's searched dimensions,
        or None for a grid, which emits every combination of the space once per seed.
    """

    def __init__(self, space: dict[str, Any], fractions: list[float], seeds: int,
                 budgets: list[int], epoch_scale: float, num_samples: int,
                 inner: dict[float, Searcher] | None, metric: str | list[str], mode: str | list[str],
                 baselines: bool = True, share_ssl: bool = False):
        super().__init__(metric=metric, mode=mode)
        self.share_ssl = share_ssl
        # Trials in their SSL-only phase: SSL key -> trial id -> [epoch reached, SSL-only epochs planned];
        # and the furthest SSL-only epoch any trial of a key has reached (and stored).
        self.ssl_running: dict[tuple, dict[str, list[int]]] = {}
        self.ssl_reached: dict[tuple, int] = {}
        self.fractions, self.seeds, self.scale = list(fractions), seeds, epoch_scale
        self.inner = inner
        searched, self.constants = split_space(space)
        self.queue: list[dict[str, Any]] = []
        if baselines:
            self.queue += baseline_configs(budgets, self.fractions, seeds)
        if inner is None:
            for f in self.fractions:
                for i, point in enumerate(grid(space)):
                    self._queue_group(f"grid-{f:g}-{i}", point, f, first_seed=0)
            self.remaining = {f: 0 for f in self.fractions}
        else:
            self.remaining = {f: num_samples for f in self.fractions}
        self.groups: dict[str, dict[str, Any]] = {}  # inner trial id -> fraction and seed results
        self.trial_group: dict[str, str] = {}
        self.turn = 0

    @property
    def total_trials(self) -> int:
        """Trials this searcher will create in all (Tune's num_samples)."""
        return len(self.queue) + sum(self.remaining.values()) * self.seeds

    def _config(self, point: dict[str, Any], fraction: float, seed: int, group: str) -> dict[str, Any]:
        fields = to_config_fields({**self.constants, **point}, self.scale)
        return {"method": "mixtraining", **fields, "fraction": fraction, "seed": seed, GROUP: group}

    def _queue_group(self, group: str, point: dict[str, Any], fraction: float, first_seed: int) -> None:
        self.queue += [self._config(point, fraction, s, group) for s in range(first_seed, self.seeds)]

    # --- SSL-prefix sharing: do not start a trial whose prefix a running trial is about to store ---
    @staticmethod
    def _ssl_need(cfg: dict[str, Any]) -> tuple[tuple, int]:
        """(SSL key within this search, SSL-only epochs) of a trial config (the search's constants aside)."""
        p = method_plan(cfg["method"], cfg["e_ssl"], cfg["e_sl"], cfg.get("rho", MixConfig.rho))
        return (cfg["fraction"], cfg["seed"], p.ssl + p.mix), p.ssl

    def _ready(self, cfg: dict[str, Any]) -> bool:
        key, need = self._ssl_need(cfg)
        return not (self.share_ssl and need and any(
            done < need <= planned for done, planned in self.ssl_running.get(key, {}).values()))

    def _started(self, trial_id: str, cfg: dict[str, Any]) -> dict[str, Any]:
        key, need = self._ssl_need(cfg)
        if self.share_ssl and need:
            # It starts from the prefix already computed for its key, as far as that goes.
            self.ssl_running.setdefault(key, {})[trial_id] = [min(need, self.ssl_reached.get(key, 0)), need]
        return cfg

    def _left_ssl(self, trial_id: str) -> None:
        for trials in self.ssl_running.values():
            trials.pop(trial_id, None)

    def _pop_ready(self, trial_id: str) -> dict[str, Any] | None:
        for i, cfg in enumerate(self.queue):
            if self._ready(cfg):
                del self.queue[i]
                if GROUP in cfg:
                    self.trial_group[trial_id] = cfg[GROUP]
                return self._started(trial_id, cfg)
        return None

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if (cfg := self._pop_ready(trial_id)) is not None:
            return cfg
        if self.queue:
            return None  # every queued trial waits for a prefix that a running trial is computing
        for _ in range(len(self.fractions)):
            f = self.fractions[self.turn % len(self.fractions)]
            self.turn += 1
            if self.remaining.get(f, 0) <= 0:
                continue
            point = self.inner[f].suggest(trial_id)
            if point is None:  # the inner searcher waits for results
                self.turn -= 1
                return None
            if point == Searcher.FINISHED:
                self.remaining[f] = 0
                continue
            self.remaining[f] -= 1
            # The group is known to the inner searcher by this trial id, whichever trial runs seed 0.
            self.groups[trial_id] = {"fraction": f, "results": []}
            self._queue_group(trial_id, point, f, first_seed=0)
            return self._pop_ready(trial_id)  # None while its SSL prefix is being computed
        return None if self.queue else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # The inner searchers learn from the mean over seeds, at completion; here only the SSL progress.
        if result.get("phase") != "ssl":
            self._left_ssl(trial_id)
            return
        for key, trials in self.ssl_running.items():
            if trial_id in trials:
                trials[trial_id][0] = result["epoch"]
                self.ssl_reached[key] = max(self.ssl_reached.get(key, 0), result["epoch"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._left_ssl(trial_id)
        group_id = self.trial_group.pop(trial_id, None)
        group = self.groups.get(group_id)
        if group is None:  # a baseline or a grid point: nothing to learn
            return
        group["results"].append(None if error or not result else result)
        if len(group["results"]) < self.seeds:
            return
        ok = [r for r in group["results"] if r is not None]
        inner = self.inner[group["fraction"]]
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if not ok or any(m not in r for r in ok for m in metrics):
            inner.on_trial_complete(group_id, None, error=True)
        else:
            inner.on_trial_complete(group_id, {m: sum(r[m] for r in ok) / len(ok) for m in metrics})
        del self.groups[group_id]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
