"""Search spaces as data: engine config fields mapped to Ray Tune distributions.

A space's keys are `MixConfig` field names, plus the alias `epochs`, which sets e_ssl = e_sl
(the paper's Table 6 varies them together). `check_space` rejects any other key at once, so a
misspelt field fails before a single trial starts. Data fraction and seed are experiment
axes set on the command line, never searched.

`lam` is only searched when the SSL and SL datasets differ (Eq. (2)); for same-dataset runs
D_mix = D_sl and lam has no effect, so `resolve_space` pins it to 0.5.
"""
from __future__ import annotations

import itertools
from typing import Any

from ray import tune
from ray.tune.search.sample import Categorical, Domain, Integer

from trainable.config import field_names

EPOCHS = "epochs"  # alias: e_ssl = e_sl

SPACES: dict[str, dict[str, Any]] = {
    # The paper's parameter studies: alpha (Table 4), rho (Table 5), epochs (Table 6), lam (Sec. 2.2.2).
    "paper": {
        "alpha": tune.choice([0.01, 0.1, 0.5, 0.9, 0.99]),
        "rho": tune.choice([0.25, 0.5, 0.75, 1.0]),
        EPOCHS: tune.choice([50, 75, 100]),
        "lam": tune.choice([0.25, 0.5, 0.75]),
    },
    # The paper's main protocol (Sec. 3.1, Table 1): one configuration, every seed to the end
    # (tuning/search.py runs it as a grid with no early stopping), against SL and SSL+SL.
    "table1": {
        "alpha": 0.5,
        "rho": 0.5,
        EPOCHS: 100,
        "lam": 0.5,
    },
    # For Optuna's TPE: alpha, rho, lam continuous in [0, 1]; the paper's epoch budgets.
    "continuous": {
        "alpha": tune.uniform(0.0, 1.0),
        "rho": tune.uniform(0.0, 1.0),
        EPOCHS: tune.qrandint(50, 100, 25),
        "lam": tune.uniform(0.0, 1.0),
    },
    # Population-based training (--scheduler pbt): alpha adapted during training; the phase plan
    # (rho, epochs) must be shared by a population, so it is fixed at the paper's main setting.
    "pbt": {
        "alpha": tune.uniform(0.01, 0.99),
        "rho": 0.5,
        EPOCHS: 100,
        "lam": tune.uniform(0.0, 1.0),
    },
    # Tests: two values of each searched field, one short budget.
    "smoke": {
        "alpha": tune.choice([0.1, 0.9]),
        "rho": tune.choice([0.5, 1.0]),
        EPOCHS: tune.choice([2]),
    },
}


def check_space(space: dict[str, Any]) -> None:
    """Raise ValueError naming any key that is neither a config field nor `epochs`."""
    known = set(field_names()) | {EPOCHS}
    unknown = sorted(set(space) - known)
    if unknown:
        raise ValueError(f"search space key(s) {unknown} are not config fields; known: {sorted(known)}")
    if EPOCHS in space and ({"e_ssl", "e_sl"} & set(space)):
        raise ValueError("search space: give either 'epochs' or 'e_ssl'/'e_sl', not both")


def get_space(name: str, different_ssl_data: bool = False) -> dict[str, Any]:
    """The named space, checked; `lam` pinned to 0.5 unless the SSL dataset differs."""
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; choose one of {', '.join(SPACES)}")
    space = dict(SPACES[name])
    check_space(space)
    if not different_ssl_data and isinstance(space.get("lam"), Domain):
        space["lam"] = 0.5  # no effect when D_mix = D_sl (Sec. 2.2.2)
    return space


def values(domain: Any) -> list[Any]:
    """The finite values of a dimension, for grids and epoch budgets."""
    if not isinstance(domain, Domain):
        return [domain]
    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Integer) and domain.sampler is not None and hasattr(domain.sampler, "q"):
        q = domain.sampler.q
        # qrandint's upper bound is inclusive
        return list(range(domain.lower, domain.upper + 1, q))
    raise ValueError(f"{domain} has no finite set of values; a grid needs tune.choice dimensions")


def grid(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the space's values, in a stable order."""
    keys = list(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values(space[k]) for k in keys))]


def epoch_budgets(space: dict[str, Any], scale: float = 1.0) -> list[int]:
    """The distinct epoch budgets of a space after scaling (baselines run once per budget)."""
    return sorted({scale_epochs(v, scale) for v in values(space.get(EPOCHS, space.get("e_sl", 100)))})


def scale_epochs(epochs: int, scale: float) -> int:
    """--epoch-scale: shrink an epoch count proportionally, never below 1."""
    return max(1, round(epochs * scale))


def to_config_fields(point: dict[str, Any], scale: float = 1.0) -> dict[str, Any]:
    """A sampled point -> MixConfig fields: `epochs` expanded, epoch counts scaled."""
    out = dict(point)
    if EPOCHS in out:
        e = out.pop(EPOCHS)
        out["e_ssl"] = out["e_sl"] = e
    for k in ("e_ssl", "e_sl"):
        if k in out:
            out[k] = scale_epochs(int(out[k]), scale)
    return out
