"""Search spaces as data: engine config fields mapped to values or distributions.

A space is a YAML or JSON mapping from `MixConfig` field names (plus the alias `epochs`, which sets
e_ssl = e_sl, as the paper's Table 6 varies them together) to
- a constant:                    rho: 0.5
- a list of values (a choice):   alpha: [0.1, 0.5, 0.9]
- a distribution, with Ray Tune's names: {uniform: [lo, hi]}, {loguniform: [lo, hi]},
  {randint: [lo, hi]} (hi exclusive, as in Ray Tune), {qrandint: [lo, hi, q]} (hi inclusive).
The built-in spaces are such files beside this module (`paper.yaml`, ...); `--space FILE.yaml`
takes a user's own. Every key and value is checked against the config when the space is read, so
a typo or an out-of-range bound fails before a single trial starts, with one line naming the key.

Data fraction, seed, datasets and model are experiment axes set on the command line, never searched.
`lam` is only searched when the SSL and SL datasets differ (Eq. (2)): for same-dataset runs
D_mix = D_sl and lam has no effect, so `load` pins it to 0.5. Reading the data needs no Ray
(`read`, `SPACES`), so `benchmarks/replicate.py` runs on a machine without it.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml

from trainable.config import DATA, RUNTIME, ConfigError, MixConfig, field_names, fields_with

EPOCHS = "epochs"  # alias: e_ssl = e_sl
HERE = Path(__file__).resolve().parent
SUFFIXES = (".yaml", ".yml", ".json")
DISTRIBUTIONS = {"uniform": 2, "loguniform": 2, "randint": 2, "qrandint": 3}  # name -> number of arguments
# Set on the command line for the whole experiment, never searched: what data, which method, which seed.
AXES = ("method", *fields_with(DATA), *fields_with(RUNTIME))
# What tells MixTraining configurations apart whatever the space (the paper's knobs and the epoch budget).
BASE_IDENTITY = ("alpha", "rho", "lam", "e_ssl", "e_sl")


class SpaceError(ValueError):
    """A space that cannot be searched; `key` names the offending entry."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise SpaceError(str(path), f"cannot be read as {path.suffix[1:].upper()}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise SpaceError(str(path), "must be a non-empty mapping of config fields to values or distributions")
    return data


SPACES: dict[str, dict[str, Any]] = {p.stem: _read_file(p) for p in sorted(HERE.glob("*.yaml"))}


def is_file(spec: str) -> bool:
    return Path(spec).suffix in SUFFIXES


def label(spec: str) -> str:
    """How an experiment's default name calls the space: a built-in's name, or the file's stem."""
    return Path(spec).stem if is_file(spec) else spec


def read(spec: str) -> dict[str, Any]:
    """A space's data (plain values, as written) from a built-in name or a file path, checked."""
    if is_file(spec):
        path = Path(spec)
        if not path.is_file():
            raise SpaceError(spec, "no such file")
        data = _read_file(path)
    elif spec in SPACES:
        data = SPACES[spec]
    else:
        raise SpaceError(spec, f"not a built-in space ({', '.join(SPACES)}) nor a {'/'.join(SUFFIXES)} file")
    check(data)
    return {k: _plain(v) for k, v in data.items()}


def _plain(v: Any) -> Any:
    """Numbers written as strings ('1e-3': YAML 1.1 reads it so) as numbers; lists as lists."""
    if isinstance(v, str):
        try:
            return int(v) if v.lstrip("-").isdigit() else float(v)
        except ValueError:
            return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def check(data: dict[str, Any]) -> None:
    """Raise SpaceError naming the first key that is not a searchable field or holds a bad value."""
    known = set(field_names()) | {EPOCHS}
    for key in data:
        if key not in known:
            raise SpaceError(key, f"not a config field; known: {', '.join(sorted(known - set(AXES)))}")
        if key in AXES:
            raise SpaceError(key, "is set on the command line for the whole experiment, not searched")
    if EPOCHS in data and ({"e_ssl", "e_sl"} & set(data)):
        raise SpaceError(EPOCHS, "give either 'epochs' or 'e_ssl'/'e_sl', not both")
    for key, value in data.items():
        for v in _checked_values(key, _plain(value)):
            _check_value(key, v)


def _checked_values(key: str, value: Any) -> list[Any]:
    """The values of an entry that the config must accept: each choice, or a distribution's bounds."""
    if isinstance(value, list):
        if not value:
            raise SpaceError(key, "an empty list: give at least one value")
        return value
    if not isinstance(value, dict):
        return [value]
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise SpaceError(key, f"a distribution is one of {{{', '.join(f'{d}: [...]' for d in DISTRIBUTIONS)}}}, "
                              f"got {value!r}")
    (name, args), = value.items()
    if not isinstance(args, list) or len(args) != DISTRIBUTIONS[name] or \
            not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SpaceError(key, f"{name} takes {DISTRIBUTIONS[name]} numbers, got {args!r}")
    lo, hi = args[0], args[1]
    if name in ("randint", "qrandint") and not all(isinstance(a, int) for a in args):
        raise SpaceError(key, f"{name} takes whole numbers, got {args!r}")
    if name == "randint" and hi - 1 < lo or name != "randint" and hi <= lo:
        raise SpaceError(key, f"{name} needs lo < hi{' (hi is exclusive)' if name == 'randint' else ''}, got {args!r}")
    if name == "loguniform" and lo <= 0:
        raise SpaceError(key, f"loguniform needs lo > 0, got {args!r}")
    if name == "qrandint" and args[2] < 1:
        raise SpaceError(key, f"qrandint needs q >= 1, got {args!r}")
    return [lo, hi - 1 if name == "randint" else hi]


def _check_value(key: str, value: Any) -> None:
    fields = {"e_ssl": value, "e_sl": value} if key == EPOCHS else {key: value}
    try:
        MixConfig(**fields)
    except ConfigError as e:
        raise SpaceError(key, e.reason) from None
    except TypeError as e:
        raise SpaceError(key, str(e)) from None
    if key == EPOCHS and not (isinstance(value, int) and value >= 1):
        raise SpaceError(key, f"must be a whole number of epochs >= 1, got {value!r}")


def to_domains(data: dict[str, Any]) -> dict[str, Any]:
    """A space's data as Ray Tune values and distributions."""
    from ray import tune  # Ray only here: reading and checking a space does not need it

    def domain(v):
        if isinstance(v, list):
            return tune.choice(v)
        if isinstance(v, dict):
            (name, args), = v.items()
            return getattr(tune, name)(*args)
        return v
    return {k: domain(v) for k, v in data.items()}


def load(spec: str, different_ssl_data: bool = False) -> dict[str, Any]:
    """The space `spec` names (built-in or file) as Ray Tune distributions; `lam` pinned to 0.5 unless the SSL
    dataset differs."""
    return from_data(read(spec), different_ssl_data)


def from_data(data: dict[str, Any], different_ssl_data: bool = False) -> dict[str, Any]:
    """Checked data (`read`, or what an experiment folder saved) as Ray Tune distributions."""
    check(data)
    data = dict(data)
    if not different_ssl_data and isinstance(data.get("lam"), (list, dict)):
        data["lam"] = 0.5  # no effect when D_mix = D_sl (Sec. 2.2.2)
    return to_domains(data)


get_space = load


def searched(space: dict[str, Any]) -> dict[str, Any]:
    """The dimensions of a space that vary (Ray Tune domains)."""
    from ray.tune.search.sample import Domain
    return {k: v for k, v in space.items() if isinstance(v, Domain)}


def constants(space: dict[str, Any]) -> dict[str, Any]:
    found = searched(space)
    return {k: v for k, v in space.items() if k not in found}


def identity(space: dict[str, Any]) -> tuple[str, ...]:
    """The config fields that tell the space's configurations apart: alpha, rho, lam and the epoch counts, and
    every other field the space names (a space over mask_ratio runs and reports each value separately)."""
    named = [k for k in space if k != EPOCHS and k not in BASE_IDENTITY]
    return (*BASE_IDENTITY, *named)


def table_keys(space: dict[str, Any]) -> list[str]:
    """The configuration columns of a comparison of this space's runs: alpha, rho, lam, and every other field the
    space names but the epoch budget (which is a comparison group of its own)."""
    return ["alpha", "rho", "lam", *[k for k in space if k not in ("alpha", "rho", "lam", EPOCHS, "e_sl")]]


def values(domain: Any) -> list[Any]:
    """The finite values of a dimension, for grids and epoch budgets."""
    from ray.tune.search.sample import Categorical, Domain, Integer
    if not isinstance(domain, Domain):
        return [domain]
    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Integer) and domain.sampler is not None and hasattr(domain.sampler, "q"):
        q = domain.sampler.q
        # qrandint's upper bound is inclusive
        return list(range(domain.lower, domain.upper + 1, q))
    raise ValueError(f"{domain} has no finite set of values; a grid needs lists of values")


def grid(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the space's values, in a stable order."""
    keys = list(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values(space[k]) for k in keys))]


def epoch_budgets(space: dict[str, Any], scale: float = 1.0) -> list[int]:
    """The distinct epoch budgets of a space after scaling (baselines run once per budget)."""
    return sorted({scale_epochs(v, scale) for v in values(space.get(EPOCHS, space.get("e_sl", MixConfig.e_sl)))})


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
