"""One Ray Tune searcher for a whole MixTraining experiment.

Ray Tune's searchers propose points of a space; an experiment here also needs what they lack:
- the SL and SSL+SL baselines, once per (epoch budget, fraction, seed), in the same experiment;
- every proposed configuration repeated over `seeds` seeds, the searcher told the mean;
- one independent search per data fraction (the best alpha/rho differ between fractions);
- no survivorship: when every trial has ended, the configuration the comparison will report
  (`tuning.summary.choose_best`) is completed on the seeds the scheduler stopped, so its test
  accuracy is averaged over every seed, like the baselines'.
`ExperimentSearcher` does exactly that bookkeeping and delegates the proposals to Optuna
(`OptunaSearch`, TPE or random sampling) or to a precomputed grid. `tuning.ray_internals.ExperimentSearch`
is the Tune search algorithm around it that a moved or re-configured experiment resumes with.
"""
from __future__ import annotations

import logging
import pickle
from typing import Any

import pandas as pd
from ray.tune.search import Searcher

from search_spaces import BASE_IDENTITY, constants, grid, to_config_fields
from trainable.config import MixConfig, method_plan
from tuning.summary import BASELINE, BOTH, COMPLETION, CONFIRM, DEFAULT, GROUP, TUNED, choose_best, same_config

log = logging.getLogger(__name__)

__all__ = ["COMPLETION", "CONFIRM", "GROUP", "ExperimentSearcher", "baseline_configs", "config_key"]


def baseline_configs(budgets: list[int], fractions: list[float], seeds: int) -> list[dict[str, Any]]:
    """SL and SSL+SL once per budget, fraction and seed (never once per alpha or rho)."""
    return [{"method": method, "e_ssl": e, "e_sl": e, "fraction": f, "seed": s}
            for f in fractions for e in budgets for method in ("sl", "ssl_sl") for s in range(seeds)]


def config_key(fields: dict[str, Any], identity: tuple[str, ...] = BASE_IDENTITY) -> tuple:
    """What tells configurations of one search apart: the values of its identity fields (`search_spaces.identity`:
    alpha, rho, lam, the epoch counts and whatever else the space names), defaults filled."""
    return tuple((k, _value(fields.get(k, getattr(MixConfig, k)))) for k in identity)


def _value(v):
    return v.item() if hasattr(v, "item") else v


class ExperimentSearcher(Searcher):
    """Baselines, then proposals of per-fraction inner searchers (or a grid), each over all seeds.

    Suggestions hold only what varies between trials; the Trainable adds the search's shared base.

    inner: one Ray searcher per fraction, already built over the space's searched dimensions,
        or None for a grid, which emits every combination of the space once per seed.
    identity: the config fields that tell configurations apart (`search_spaces.identity`).
    """

    # (for a searcher saved before these were arguments)
    identity: tuple[str, ...] = BASE_IDENTITY
    confirm_seeds, baselines = 0, True

    def __init__(self, space: dict[str, Any], fractions: list[float], seeds: int,
                 budgets: list[int], epoch_scale: float, num_samples: int,
                 inner: dict[float, Searcher] | None, metric: str | list[str], mode: str | list[str],
                 baselines: bool = True, share_ssl: bool = False, complete: bool = True,
                 max_concurrent: int | None = None, identity: tuple[str, ...] = BASE_IDENTITY,
                 confirm_seeds: int = 0):
        super().__init__(metric=metric, mode=mode)
        self.identity, self.confirm_seeds, self.baselines = tuple(identity), confirm_seeds, baselines
        self.share_ssl, self.complete, self.max_concurrent = share_ssl, complete, max_concurrent
        # Trials in their SSL-only phase: SSL key -> trial id -> [epoch reached, SSL-only epochs planned];
        # and the furthest SSL-only epoch any trial of a key has reached (and stored).
        self.ssl_running: dict[tuple, dict[str, list[int]]] = {}
        self.ssl_reached: dict[tuple, int] = {}
        self.fractions, self.seeds, self.scale, self.budgets = list(fractions), seeds, epoch_scale, list(budgets)
        self.inner = inner
        self.constants = constants(space)
        self.queue: list[dict[str, Any]] = []
        self.configs: dict[str, dict[str, Any]] = {}  # group -> its configuration (seed 0)
        self.outcomes: dict[str, dict[int, dict | None]] = {}  # group -> seed -> final result (None: failed)
        if baselines:
            self.queue += baseline_configs(budgets, self.fractions, seeds)
        if inner is None:
            for f in self.fractions:
                for i, point in enumerate(grid(space)):
                    self._queue_group(f"grid-{f:g}-{i}", point, f, first_seed=0)
            self.remaining = {f: 0 for f in self.fractions}
        else:
            self.remaining = {f: num_samples for f in self.fractions}
        self.groups: dict[str, dict[str, Any]] = {}  # inner trial id -> fraction and key, until told
        self.trial_group: dict[str, tuple[str, int]] = {}  # trial id -> (group, seed)
        self.live: set[str] = set()  # trials suggested and not ended
        self.completion_queued = False
        self.completing: set[str] = set()  # trials that complete a stopped seed
        # fraction -> configuration key -> what its group told the inner searcher (None while running)
        self.known: dict[float, dict[tuple, dict | None]] = {}
        self.alias: dict[str, str] = {}  # group id -> the id the inner searcher proposed it under
        self.turn = 0

    @property
    def total_trials(self) -> int:
        """Trials the search plans, before completing stopped seeds."""
        return len(self.queue) + sum(self.remaining.values()) * self.seeds

    @property
    def max_trials(self) -> int:
        """At most this many trials in all (Tune's num_samples): the plan, and at most every seed of the
        chosen configuration of each (fraction, budget) completed again."""
        groups = len(self.fractions) * len(self.budgets)
        confirm = groups * self.confirm_seeds * (2 + 2 * self.baselines)  # tuned, default, SL, SSL+SL
        return self.total_trials + (groups * self.seeds if self.complete else 0) + confirm

    def _config(self, point: dict[str, Any], fraction: float, seed: int, group: str) -> dict[str, Any]:
        fields = to_config_fields({**self.constants, **point}, self.scale)
        return {"method": "mixtraining", **fields, "fraction": fraction, "seed": seed, GROUP: group}

    def _queue_group(self, group: str, point: dict[str, Any], fraction: float, first_seed: int) -> None:
        self.configs[group] = self._config(point, fraction, 0, group)
        self.queue += [self._config(point, fraction, s, group) for s in range(first_seed, self.seeds)]

    # --- SSL-prefix sharing: do not start a trial whose prefix a running trial is about to store ---
    @staticmethod
    def _ssl_need(cfg: dict[str, Any]) -> tuple[tuple, int]:
        """(SSL key within this search, SSL-only epochs) of a trial config (the search's constants aside)."""
        p = method_plan(cfg["method"], cfg["e_ssl"], cfg["e_sl"], cfg.get("rho", MixConfig.rho))
        return (cfg["fraction"], cfg["seed"], p.ssl + p.mix), p.ssl

    def _ready(self, cfg: dict[str, Any]) -> bool:
        """False while a running trial of the same SSL key is computing SSL-only epochs this trial would use:
        all it needs (the running trial plans as many or more), or a shorter prefix it then continues from
        (the running trial stores its last SSL-only epoch). Other queued trials take the free slots meanwhile."""
        key, need = self._ssl_need(cfg)
        return not (self.share_ssl and need and any(
            done < min(need, planned) for done, planned in self.ssl_running.get(key, {}).values()))

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
                    self.trial_group[trial_id] = (cfg[GROUP], cfg["seed"])
                if cfg.get(COMPLETION):
                    self.completing.add(trial_id)
                self.live.add(trial_id)
                return self._started(trial_id, cfg)
        return None

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None
        if (cfg := self._pop_ready(trial_id)) is not None:
            return cfg
        if self.queue:
            return None  # every queued trial waits for a prefix that a running trial is computing
        if (cfg := self._propose(trial_id)) is not None or self.queue:
            return cfg
        if any(self.remaining.values()) or self.live:
            return None  # waiting for results: for the inner searchers, or for the completion decision
        if not self.completion_queued:  # the choice is made: complete it, and confirm it on fresh seeds
            self.completion_queued = True
            self.queue += (self.completions() if self.complete else []) + self.confirmations()
            return self._pop_ready(trial_id) or (None if self.queue else Searcher.FINISHED)
        return Searcher.FINISHED

    def _propose(self, trial_id: str) -> dict[str, Any] | None:
        """The next configuration of a per-fraction inner searcher, queued over all seeds; its first ready trial."""
        for _ in range(len(self.fractions)):
            f = self.fractions[self.turn % len(self.fractions)]
            self.turn += 1
            if self.remaining.get(f, 0) <= 0:
                continue
            point = self._new_point(f, trial_id)
            if point is None:  # the inner searcher waits for results
                self.turn -= 1
                return None
            if point == Searcher.FINISHED:
                self.remaining[f] = 0
                continue
            self.remaining[f] -= 1
            # The group is known to the inner searcher by this trial id, whichever trial runs seed 0.
            self.groups[trial_id] = {"fraction": f, "key": self._key(point)}
            self._queue_group(trial_id, point, f, first_seed=0)
            return self._pop_ready(trial_id)  # None while its SSL prefix is being computed
        return None

    def _key(self, point: dict[str, Any]) -> tuple:
        """A proposed point's configuration key (`config_key`)."""
        return config_key(to_config_fields({**self.constants, **point}, self.scale), self.identity)

    def _new_point(self, fraction: float, trial_id: str, attempts: int = 50):
        """The inner searcher's next proposal that is not a configuration already tried at this fraction.

        Optuna's samplers repeat points of categorical spaces; a repeat of a finished configuration is told
        its known result at once (so the sampler learns without a rerun), a repeat of a running one counts as
        failed (Optuna's samplers ignore those), and the sampler is asked again.
        """
        inner = self.inner[fraction]
        for attempt in range(attempts):
            tid = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            point = inner.suggest(tid)
            if point is None or point == Searcher.FINISHED:
                return point
            key = self._key(point)
            known = self.known.setdefault(fraction, {})
            if key not in known:
                known[key] = None  # running: its result comes with the group's
                if attempt:  # the group is known to the inner searcher under the id it proposed it with
                    self.alias[trial_id] = tid
                return point
            inner.on_trial_complete(tid, known[key], error=known[key] is None)
        log.info("no configuration left to try at fraction %g after %d repeats", fraction, attempts)
        return Searcher.FINISHED

    def add_history(self, rows: "pd.DataFrame") -> None:
        """The finished trials of an earlier search on the same data and budget (--warm-start): their
        configurations count as tried (with their mean validation accuracy over seeds, as a group here tells
        the inner searcher), their baselines are not run again, and they take part in choosing and completing
        the best configuration."""
        done = rows[rows["error"].isna()]
        base = done[done["method"] != "mixtraining"]
        ran = set(zip(base["method"], base["epochs"], base["fraction"], base["seed"]))
        self.queue = [c for c in self.queue if c["method"] == "mixtraining"
                      or (c["method"], c["e_sl"], c["fraction"], c["seed"]) not in ran]
        for (fraction, group), runs in done[done["method"] == "mixtraining"].groupby(["fraction", "group"]):
            # The search proper's runs, as this searcher records its own; a completion run of the earlier
            # search only marks its seed as finished.
            proper, completions = runs[~runs["completion"]], runs[runs["completion"] & runs["completed"]]
            first = proper.iloc[0]
            point = {k: _value(first[k]) for k in self.identity if k != "e_sl"} | {"e_sl": int(first["epochs"])}
            cfg = {"method": "mixtraining", **point, "fraction": fraction, "seed": 0, GROUP: group}
            self.configs[group] = cfg
            self.outcomes[group] = {int(r.seed): {"val_acc": r.val_acc, "completed": bool(r.completed),
                                                  "finished": bool(r.completed) or r.seed in set(completions["seed"])}
                                    for r in proper.itertuples()}
            key = config_key(point, self.identity)
            self.known.setdefault(fraction, {})[key] = {self.metric: float(proper["val_acc"].mean())}
        # A grid queues every configuration up front: those the earlier search finished are not run again.
        self.queue = [c for c in self.queue if c["method"] != "mixtraining"
                      or config_key(c, self.identity) not in self.known.get(c["fraction"], {})]

    def _outcome_rows(self) -> tuple[pd.DataFrame, list[str]]:
        """The search's MixTraining runs as summary rows (one per group and seed), and their configuration keys."""
        keys = [k for k in self.identity if k != "e_sl"]
        rows = [{"group": g, "method": "mixtraining", "completion": False, "fraction": cfg["fraction"],
                 "epochs": cfg["e_sl"], **{k: cfg.get(k, getattr(MixConfig, k)) for k in keys}, "seed": seed,
                 "val_acc": (r or {}).get("val_acc"), "completed": bool(r and r.get("completed")), "failed": r is None,
                 "finished": bool(r and r.get("finished", r.get("completed")))}
                for g, cfg in self.configs.items() for seed, r in self.outcomes.get(g, {}).items()]
        return pd.DataFrame(rows), keys

    def completions(self) -> list[dict[str, Any]]:
        """Trials that finish the chosen configuration of every (fraction, budget) on the seeds that were
        stopped before the end: without them its test accuracy would average only the seeds the scheduler
        let through, which favours it over the baselines, whose every seed runs to the end."""
        df, keys = self._outcome_rows()
        if df.empty:
            return []
        out = []
        for best in choose_best(df, keys).to_dict("records"):
            same = df[same_config(df, best, ["fraction", "epochs", *keys])]
            finished = set(same[same["finished"] | same["failed"]]["seed"])
            for seed in sorted(set(same["seed"]) - finished):  # stopped, never completed
                group = same[same["seed"] == seed]["group"].iloc[0]
                out.append({**self.configs[group], "seed": seed, COMPLETION: True})
        if out:
            log.info("completing the chosen configurations on %d stopped seed(s)", len(out))
        return out

    def confirmations(self) -> list[dict[str, Any]]:
        """Trials that confirm each (fraction, budget)'s choice on `confirm_seeds` seeds the search never used:
        the chosen configuration, the paper's default (MixConfig's defaults for every searched field, at the
        same budget), SL and SSL+SL, all to the end. The comparison reports these runs only, so its accuracies
        carry no selection bias."""
        df, keys = self._outcome_rows()
        if not self.confirm_seeds or df.empty:
            return []
        seeds = range(self.seeds, self.seeds + self.confirm_seeds)  # never a search seed
        out = []
        for best in choose_best(df, keys).to_dict("records"):
            chosen = self.configs[df[same_config(df, best, ["fraction", "epochs", *keys])]["group"].iloc[0]]
            chosen = {k: v for k, v in chosen.items() if k != GROUP}
            default = {**chosen, **{k: getattr(MixConfig, k) for k in self._searched_fields()}}
            same = config_key(default, self.identity) == config_key(chosen, self.identity)
            for s in seeds:
                out.append({**chosen, "seed": s, CONFIRM: BOTH if same else TUNED})
                if not same:
                    out.append({**default, "seed": s, CONFIRM: DEFAULT})
                if self.baselines:
                    out += [{"method": m, "e_ssl": chosen["e_sl"], "e_sl": chosen["e_sl"], "fraction": chosen["fraction"],
                             "seed": s, CONFIRM: BASELINE} for m in ("sl", "ssl_sl")]
        log.info("confirming the chosen configurations on %d fresh seed(s): %d trials", self.confirm_seeds, len(out))
        return out

    def _searched_fields(self) -> list[str]:
        """The config fields the space varies, but the epoch budget (which the default keeps)."""
        return [k for k in self.identity if k not in ("e_ssl", "e_sl") and k not in self.constants]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # The inner searchers learn from the mean over seeds, at completion; here only the SSL progress.
        self.live.add(trial_id)  # (a trial restored after a crash reports again)
        if result.get("phase") != "ssl":
            self._left_ssl(trial_id)
            return
        for key, trials in self.ssl_running.items():
            if trial_id in trials:
                trials[trial_id][0] = result["epoch"]
                self.ssl_reached[key] = max(self.ssl_reached.get(key, 0), result["epoch"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._left_ssl(trial_id)
        self.live.discard(trial_id)
        # A failed trial keeps its group: `--resume` retries it under the same id, and its result then
        # replaces the failure.
        group_id, seed = (self.trial_group.get if error else self.trial_group.pop)(trial_id, (None, None))
        if group_id is None or trial_id in self.completing:
            return
        outcomes = self.outcomes.setdefault(group_id, {})
        outcomes[seed] = None if error or not result else result
        group = self.groups.get(group_id)
        if group is None or len(outcomes) < self.seeds:  # a baseline, a grid point, or seeds still running
            return
        ok = [r for r in outcomes.values() if r is not None]
        inner = self.inner[group["fraction"]]
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        told = None if not ok or any(m not in r for r in ok for m in metrics) else \
            {m: sum(r[m] for r in ok) / len(ok) for m in metrics}
        inner.on_trial_complete(self.alias.pop(group_id, group_id), told, error=told is None)
        self.known.setdefault(group["fraction"], {})[group["key"]] = told
        del self.groups[group_id]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
