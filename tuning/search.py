"""Search MixTraining's alpha / rho / lam / epochs with Ray Tune, baselines alongside.

    python tuning/search.py --space paper                       # the paper's setting: CIFAR-10, ViT-T
    python tuning/search.py --space paper --dataset digits --model tiny --epoch-scale 0.2 --num-samples 12
    python tuning/search.py --space my_space.yaml ...          # a space of your own (see search_spaces/)

Runs SL and SSL+SL once per (epoch budget, fraction, seed) and the searched MixTraining
configurations over every seed, with Optuna (TPE), random sampling or a grid, under
phase-aware ASHA; then prints the comparison in the layout of the paper's Table 1.
`--resume --name X` continues an interrupted search; `--dry-run` shows what a search would do.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python tuning/search.py`: import this checkout's packages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402
import pandas as pd  # noqa: E402

import search_spaces  # noqa: E402
from trainable.cli import common_config, config_error_message  # noqa: E402
from trainable.config import ConfigError, MixConfig, method_plan  # noqa: E402
from trainable.datasets import MissingDataError  # noqa: E402
from tuning import driver, experiment, flags, tracking  # noqa: E402
from tuning.progress import describe, estimate  # noqa: E402
from tuning.redact import redact  # noqa: E402
from tuning.schedulers import SCHEDULERS  # noqa: E402
from tuning.searchers import make_searcher  # noqa: E402
from tuning.studies import configurations, format_configurations, pareto_front  # noqa: E402
from tuning.summary import (choose_best, comparison_table, config_keys, format_paired, format_table,  # noqa: E402
                            paired_stats)

log = logging.getLogger("tuning.search")


def build_parser() -> argparse.ArgumentParser:
    return flags.build_parser(__doc__)


def resolve_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--search and --scheduler by space (`experiment.default_choices`): a space with nothing to search (the
    paper's protocol, table1) is a grid of one configuration, never stopped, and refuses anything else."""
    search, scheduler = experiment.default_choices(args)
    if search == "grid":
        for flag, value, want in (("--search", args.search, search), ("--scheduler", args.scheduler, scheduler)):
            if value not in (None, want):
                parser.error(f"{flag} {value}: --space {args.space} has nothing to search: its one configuration "
                             f"runs on every seed to the end; leave {flag} out (or give {want})")
    args.search, args.scheduler = args.search or search, args.scheduler or scheduler


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What the flags' types cannot check alone; every mistake is one parser error naming the flag."""
    resolve_defaults(args, parser)
    if args.gpus_per_trial > 1 and not float(args.gpus_per_trial).is_integer():
        parser.error(f"--gpus-per-trial: above 1 it must be a whole number of GPUs, got {args.gpus_per_trial:g}")
    if args.resume and not args.name:
        parser.error("--resume needs --name of the experiment to continue")
    if args.warm_start and args.objective == "pareto":
        parser.error("--warm-start: give --objective accuracy (Optuna is seeded with single results)")
    space = search_spaces.load(args.space)
    if why := SCHEDULERS[args.scheduler].refusal(space, args.search):
        parser.error(f"--scheduler {args.scheduler} with --space {args.space}: {why}")
    if args.val_frac == 0 and (search_spaces.searched(space) or args.scheduler != "fifo"):
        parser.error(f"--val-frac 0: --space {args.space} with --scheduler {args.scheduler} chooses on validation "
                     "accuracy and nothing would be held out for it; give --val-frac above 0 (default 0.1), or "
                     "--space table1 (nothing to choose) to train on every training image as the paper does")
    if args.search == "grid":
        try:
            search_spaces.grid(space)
        except ValueError:
            parser.error(f"--search grid: --space {args.space} has continuous dimensions; give lists of values")
    try:
        for f in args.fraction:
            MixConfig(**common_config(args), fraction=f)
    except ConfigError as e:
        parser.error(config_error_message(e))


# --- what the command prints ----------------------------------------------------------------------

def summarize(df: pd.DataFrame, objective: str) -> str:
    table = comparison_table(df)
    lines = ["", f"== Comparison (test accuracy mean ± std over the seeds every method completed; {_basis(table)}; "
                 "speedups over SSL+SL) ==", format_table(table),
             "", "== Paired differences per seed (test accuracy) ==", format_paired(paired_stats(df)),
             "", "== MixTraining configurations tried (mean over completed seeds; best on validation first) ==",
             format_configurations(configurations(df))]
    keys = config_keys(df)
    for r in choose_best(df).to_dict("records"):
        chosen = " ".join(f"{k}={r[k]:g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in keys)
        val = "no validation (--val-frac 0)" if pd.isna(r["mean_val"]) else f"mean val_acc {r['mean_val']:.4f}"
        lines.append(f"best MixTraining at fraction {r['fraction']:g}, {r['epochs']} epochs: {chosen} "
                     f"({val}; {int(r['tried'])} configuration(s) tried)")
    if objective == "pareto":
        lines += ["", "== Pareto front (validation accuracy vs compute) ==",
                  pareto_front(df).to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    if df["ssl_epochs_reused"].sum():
        lines.append(f"SSL-prefix sharing: {int(df['ssl_epochs_reused'].sum())} SSL-only epochs reused instead of "
                     f"trained, {df['ssl_time_reused_s'].sum():.1f} s of training saved")
    stopped = int(((df["method"] == "mixtraining") & ~df["completed"] & df["error"].isna()).sum())
    failed = int(df["error"].notna().sum())
    completing = int(df["completion"].sum())
    lines.append(f"trials: {len(df)} ({stopped} stopped early by the scheduler, {failed} failed"
                 + (f", {completing} completing stopped seeds of the chosen configuration" if completing else "")
                 + ")")
    return "\n".join(lines)


def _basis(table: pd.DataFrame) -> str:
    """Which runs the comparison's accuracies come from."""
    if "confirmed" in table and table["confirmed"].all():
        return ("every row from confirmation seeds the search never used (MixTraining: the configuration chosen on "
                "validation of the search's seeds; MixTraining (default): the paper's)")
    if "confirmed" in table and table["confirmed"].any():
        return "rows with a default from confirmation seeds; the others selected on the same seeds (optimistic)"
    return ("MixTraining chosen on validation of the same seeds it reports: optimistic under selection "
            "(--confirm-seeds N reports fresh seeds)")


def render(outcome: driver.Outcome) -> str:
    lines = [summarize(outcome.df, outcome.args.objective)]
    if not outcome.table.empty:
        lines.append(f"table saved to {outcome.folder.uri}/comparison.{{csv,md}}")
    if outcome.chosen:
        lines.append(f"chosen configurations in {outcome.folder.uri}/{experiment.CHOSEN_FILE}; to train one:")
        lines += [f"  {train_command(c)}" for c in outcome.chosen]
    if outcome.parent:
        lines.append(f"MLflow: parent run {outcome.parent} in experiment {outcome.args.experiment!r} "
                     f"({redact(outcome.args.mlflow_uri)}); to see it:")
        lines += [f"  {redact(link)}" for link in outcome.links]
    return "\n".join(lines)


# Config fields `python -m trainable.train` takes as flags (the others stay at their defaults there).
TRAIN_FLAGS = ("fraction", "val_frac", "e_ssl", "e_sl", "alpha", "rho", "lam", "model", "batch_size", "ssl_lr", "sl_lr",
               "mix_step", "mix_optim", "ssl_cosine")


def train_command(chosen: dict) -> str:
    """The command that trains a chosen configuration, saying at which --epoch-scale it was tuned (the epochs in
    it are already scaled)."""
    cfg = chosen["config"]
    flags_ = [f"--{k.replace('_', '-')} {cfg[k]:g}" if isinstance(cfg[k], float) else f"--{k.replace('_', '-')} {cfg[k]}"
              for k in TRAIN_FLAGS if cfg.get(k) is not None]
    left = sorted(k for k in cfg if k not in TRAIN_FLAGS and cfg[k] != getattr(MixConfig, k, cfg[k])
                  and k not in ("datasets", "data_dir", "method", "seed", "ssl_dataset"))
    return (f"python -m trainable.train --dataset {' '.join(cfg['datasets'])} {' '.join(flags_)}"
            f"  # tuned at --epoch-scale {chosen['tuned_at_epoch_scale']:g}"
            + (f"; also set {', '.join(left)} as in the file" if left else ""))


def dry_run(args: argparse.Namespace) -> str:
    """The resolved settings, the space, the phase plans and the cost estimate, without starting Ray."""
    space = driver.load_space(args)
    base = experiment.base_config(args)
    loaded = driver.preload_datasets(args)
    searcher = make_searcher(args, space, None, SCHEDULERS[args.scheduler].stops_early)
    est = estimate(searcher, space, loaded, base)
    plans = sorted({(c["method"], c["e_ssl"], c["e_sl"], c.get("rho", MixConfig.rho)) for c in searcher.queue})
    lines = ["== settings ==", *(f"{k}: {redact(v) if isinstance(v, str) else v}" for k, v in sorted(vars(args).items())),
             "", "== config every trial shares (a trial sets method, seed, fraction and what the space searches) ==",
             *(f"{k}: {v}" for k, v in base.items()),
             "", "== space ==", *(f"{k}: {v}" for k, v in experiment.space_data(args).items()),
             f"epoch budgets after --epoch-scale {args.epoch_scale:g}: "
             f"{search_spaces.epoch_budgets(space, args.epoch_scale)}",
             "", "== phase plans of the queued trials (SSL-only, mix, SL-only epochs) =="]
    for method, e_ssl, e_sl, rho in plans:
        p = method_plan(method, e_ssl, e_sl, rho)
        rho_text = f" rho={rho:g}" if method == "mixtraining" else ""
        lines.append(f"{method:12s} e_ssl={e_ssl} e_sl={e_sl}{rho_text}: {p.ssl} + {p.mix} + {p.sl}")
    if searcher.remaining and any(searcher.remaining.values()):
        lines.append(f"(and {sum(searcher.remaining.values())} configuration(s) the {args.search} search proposes "
                     f"as results come in, each on {args.seeds} seed(s))")
    lines += ["", "== cost ==", describe(est, {}, 1, SCHEDULERS[args.scheduler].stops_early),
              "(time: measured on the trial's resources when the search starts)"]
    return "\n".join(lines)


# --- the command line ---------------------------------------------------------------------------

class _Redacting(logging.Filter):
    """Passwords and tokens out of every log line (a URI can come from anywhere, an exception's text too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


class _Stderr(logging.StreamHandler):
    """Whatever sys.stderr is when a line is written (a test's capture, a redirect made after start-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_output() -> None:
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_Redacting())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.models.model"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # database creation and model logging chatter
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory" for every fraction
    # Ray 2.60 turns token authentication on for a new local instance and says so as a warning at every start.
    # It stays on (the safe default); the notice does not: setting RAY_AUTH_MODE=token would say the same
    # silently, but Ray reads it when imported, before a command could set it.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def configure_environment() -> None:
    """Process-wide settings, made here only (the command), never by library code."""
    for key, value in tracking.HTTP_ENV.items():  # fail fast: the delivery queue retries by itself
        os.environ.setdefault(key, value)
    # Checkpoints every epoch with num_to_keep force experiment snapshots; on local storage they are cheap.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow would print a "View run" link for every trial run it ends; the summary names the parent run.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Ray's new console output prints a box per trial; the progress line replaces it (--verbose 1 shows tables).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def main(argv: list[str] | None = None) -> int:
    configure_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args, parser)
    configure_output()
    if not args.name:
        args.name = f"{search_spaces.label(args.space)}-{'+'.join(args.dataset)}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    try:
        if args.dry_run:
            print(dry_run(args))
            return 0
        outcome = driver.run(args, flags.given_flags(argv))
    except (experiment.UsageError, MissingDataError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        if isinstance(stop, driver.Interrupted) and stop.outcome is not None and len(stop.outcome.df):
            print("\n== PARTIAL: the search stopped before its end; the runs that finished so far ==")
            print(render(stop.outcome))
        print(f"\ninterrupted; continue with: python tuning/search.py --resume --name {args.name}"
              + (f" --storage-path {args.storage_path}" if args.storage_path != flags.DEFAULT_STORAGE else ""),
              file=sys.stderr)
        return 130
    print(render(outcome))
    df = outcome.df
    if len(df) and df["error"].notna().all():
        print(f"error: all {len(df)} trials failed; their error files are in the experiment folder "
              f"(each trial's own output with --verbose 2)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
