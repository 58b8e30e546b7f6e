"""The search's flags, each declared once with its role.

A flag's role says what it means for an experiment that already ran:
- RUN: where and how the search runs and what it prints; `--resume` may change it.
- SEARCH: what the search tries (samples, scheduler, resources...); `--resume` refuses a new value,
  `--warm-start` may differ.
- RESULT: what each trial computes (data, model, budget, seeds, optimiser); `--resume` refuses a new
  value and `--warm-start` must match it.
The flags shared with `trainable.train` take their role from the config field behind them (a runtime
field is RUN, any other RESULT). `RESUMABLE` and `WARM_START` are derived from the roles, and building
the parser fails when a flag has none.
"""
from __future__ import annotations

import argparse

from search_spaces import SpaceError, read
from trainable.cli import (COUNT, FRACTION, INDEX, NON_NEGATIVE, POSITIVE, add_common_args, folder_name,
                           mlflow_experiment, number, ray_address, storage_path, tracking_uri)
from trainable.config import RUNTIME, field_roles
from tuning.schedulers import SCHEDULERS
from tuning.searchers import SEARCHERS

RUN, SEARCH, RESULT = "run", "search", "result"
ROLES = (RUN, SEARCH, RESULT)
DEFAULT_STORAGE = "ray_results"
OBJECTIVES = ("accuracy", "pareto")
MAX_SEEDS = 1000  # seeds per configuration
MAX_SAMPLES = 100_000  # configurations per fraction
MAX_EPOCH_SCALE = 100.0  # 100x the paper's epochs is already 10,000


def space_spec(text: str) -> str:
    """--space: a built-in space's name or a YAML/JSON file, read and checked now."""
    try:
        read(text)
    except SpaceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _arg(group, role: str, *names: str, **kw) -> argparse.Action:
    action = group.add_argument(*names, **kw)
    action.role = role  # read back by `roles`
    return action


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tuning/search.py", description=description,
                                usage="%(prog)s [options]   (--help lists them)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _search_args(p.add_argument_group("search"))
    _resource_args(p.add_argument_group("resources and storage"))
    _tracking_args(p.add_argument_group("tracking and output"))
    add_common_args(p, default_dataset="cifar10")
    roles(p)  # every flag has a role
    return p


def _search_args(g) -> None:
    _arg(g, RESULT, "--space", default="paper", type=space_spec, metavar="NAME|FILE",
         help="search space: a built-in one (paper, table1, continuous, pbt, smoke) or a YAML/JSON file mapping "
              "config fields to values, lists or {uniform|loguniform|randint|qrandint: [...]} (default: paper); "
              "a space with nothing to search (table1) runs every seed to the end")
    _arg(g, SEARCH, "--search", choices=tuple(SEARCHERS),
         help="optuna: TPE (default); random; grid: every combination once per seed (fixed spaces')")
    _arg(g, RESULT, "--objective", default="accuracy", choices=OBJECTIVES,
         help="accuracy: maximise validation accuracy; pareto: accuracy up and compute down")
    _arg(g, SEARCH, "--scheduler", choices=tuple(SCHEDULERS),
         help="asha: phase-aware early stopping in supervised epochs (default); fifo: none (fixed spaces'); "
              "pbt: population-based training of alpha/lam (with --space pbt and --search random)")
    _arg(g, SEARCH, "--num-samples", type=number(int, 1, MAX_SAMPLES), default=10,
         help="configurations per fraction for optuna/random (default 10); each runs --seeds times")
    _arg(g, RESULT, "--seeds", type=number(int, 1, MAX_SEEDS), default=1,
         help="seeds per configuration, averaged (the paper uses 4)")
    _arg(g, RESULT, "--confirm-seeds", type=number(int, 0, MAX_SEEDS), default=2,
         help="after the search has chosen, run the chosen configuration, the paper's default, SL and SSL+SL on "
              "this many fresh seeds the search never used; the comparison reports those runs only (default 2; "
              "the paper's protocol: 4; 0: report the search's own runs, selected on the same seeds: optimistic)")
    _arg(g, SEARCH, "--fraction", type=FRACTION, nargs="+", default=[1.0],
         help="data fraction(s) p in (0, 1], one search each (default 1.0)")
    _arg(g, RESULT, "--epoch-scale", type=number(float, 0, MAX_EPOCH_SCALE, low_open=True), default=1.0,
         help="multiply every epoch count (e.g. 0.1 turns 50/75/100 into 5/8/10)")
    _arg(g, SEARCH, "--grace-period", type=COUNT,
         help="ASHA: supervised epochs before a first stop; PBT: between perturbations "
              "(default: a quarter of the budget)")
    _arg(g, SEARCH, "--no-baselines", action="store_true", help="skip the SL and SSL+SL baselines")
    _arg(g, SEARCH, "--search-seed", type=INDEX, default=0, help="seed of the Optuna sampler")
    _arg(g, SEARCH, "--warm-start", type=folder_name, metavar="NAME",
         help="build on the finished search NAME (same data, model, budget and seeds): Optuna starts from its "
              "results, its baselines and configurations are not run again, its SSL prefixes are reused")
    _arg(g, SEARCH, "--no-share-ssl", dest="share_ssl", action="store_false",
         help="do not share SSL-only prefixes between trials with the same SSL settings")
    _arg(g, RUN, "--prefix-store-gb", type=POSITIVE, default=20.0,
         help="size bound of the shared SSL-prefix store, in GiB (default 20)")


def _resource_args(g) -> None:
    _arg(g, RUN, "--max-concurrent", type=COUNT, help="trials at once (default: as many as resources allow)")
    _arg(g, SEARCH, "--cpus-per-trial", type=POSITIVE, default=1.0)
    _arg(g, SEARCH, "--gpus-per-trial", type=NON_NEGATIVE, default=0.0,
         help="fractional GPUs per trial: 0.25 puts four trials on one GPU (default 0)")
    _arg(g, RUN, "--address", type=ray_address, help="join a running Ray cluster (e.g. auto)")
    _arg(g, RUN, "--wait-for-nodes", type=NON_NEGATIVE, default=0.0, metavar="SECONDS",
         help="on a cluster without an autoscaler, wait this long for a node that can run a trial "
              "(worker nodes started by hand after the search); default 0: fail at once")
    _arg(g, RUN, "--storage-path", default=DEFAULT_STORAGE, type=storage_path,
         help="experiment folder: a local path (default ./ray_results) or s3:// / gs:// on clusters")
    _arg(g, RUN, "--name", type=folder_name, help="experiment name (default: <space>-<datasets>-<date>)")
    _arg(g, RUN, "--resume", action="store_true", help="continue the experiment --name")
    _arg(g, SEARCH, "--checkpoint-every", type=COUNT, default=1, help="epochs between trial checkpoints")
    _arg(g, RUN, "--keep-checkpoints", action="store_true",
         help="keep every trial's last checkpoint (default: only running, failed and best-model trials')")
    _arg(g, RUN, "--max-failures", type=number(int, 0, 100), default=3,
         help="retries of a failed trial from its checkpoint")
    _arg(g, RUN, "--time-budget", type=POSITIVE, metavar="SECONDS",
         help="stop the search after this long (Ray Tune's time_budget_s), print the comparison of what finished, "
              "marked partial, and how to resume")
    _arg(g, RUN, "--dry-run", action="store_true",
         help="print the resolved settings, the space, the phase plans and the cost estimate, then exit")


def _tracking_args(g) -> None:
    _arg(g, RUN, "--mlflow-uri", type=tracking_uri,
         help="tracking server or store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder); "
              "a password in it is never written or printed")
    _arg(g, SEARCH, "--experiment", default="mixtraining", type=mlflow_experiment,
         help="MLflow experiment name (default: mixtraining)")
    _arg(g, RUN, "--no-mlflow", action="store_true", help="do not track in MLflow")
    _arg(g, SEARCH, "--register-model", type=mlflow_experiment, metavar="NAME",
         help="register the best model in MLflow's model registry under NAME")
    _arg(g, SEARCH, "--system-metrics", action="store_true",
         help="log each trial's CPU, memory and GPU use per epoch (needs psutil; nvidia-ml-py for GPUs)")
    _arg(g, RUN, "--verbose", type=int, default=0, choices=(0, 1, 2),
         help="0: our progress line and the results (default); 1: also Ray Tune's trial tables; 2: also every "
              "trial process's own output")


# Flags shared with trainable.train whose config field has another name.
_FIELD = {"dataset": "datasets"}


def roles(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each flag's role by its destination; a TypeError names a flag without one."""
    config = field_roles()
    out = {}
    for action in parser._actions:  # argparse keeps no public list of its actions
        if isinstance(action, argparse._HelpAction):
            continue
        role = getattr(action, "role", None)
        field = _FIELD.get(action.dest, action.dest)
        if role is None and field in config:
            role = RUN if RUNTIME in config[field] else RESULT
        if role not in ROLES:
            raise TypeError(f"flag {action.option_strings[0]} has no role; declare it with _arg(group, role, ...), "
                            f"roles from {ROLES}")
        out[action.dest] = role
    return out


def with_role(*wanted: str) -> tuple[str, ...]:
    return tuple(dest for dest, role in roles(build_parser()).items() if role in wanted)


RESUMABLE = with_role(RUN)  # flags --resume may change
WARM_START = with_role(RESULT)  # flags a --warm-start search must share with the earlier one


def defaults() -> dict:
    return vars(build_parser().parse_args([]))


def given_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not taking their defaults)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-") if dest != "share_ssl" else "--no-share-ssl"
