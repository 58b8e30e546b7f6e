"""Replicate the paper's Table 1 protocol: SL, SSL+SL and MixTraining (alpha = rho = lam = 0.5,
e_ssl = e_sl = 100 x --epoch-scale) on every seed and data fraction, one run at a time.

    python benchmarks/replicate.py --dataset digits --seeds 3 --fraction 1.0 0.1 --epoch-scale 0.2   # this CPU
    python benchmarks/replicate.py --dataset mnist --model vit_tiny --batch-size 256 --ssl-lr 1.5e-4 \\
        --sl-lr 1e-3 --seeds 3 --fraction 1.0 0.1 --epoch-scale 0.5                                  # a GPU

No Ray and no MLflow: only torch, timm, scikit-learn, pandas and scipy, so it runs on a bare GPU
machine. Runs go one after another on one device, so their wall-clock times are contention-free
too; the table also shows each run's time from a one-slot calibration and its FLOPs
(`trainable.cost`), as the search does. Prints the comparison (`tuning.summary`, the search's own
code) and the paired per-seed differences, and writes both with every run to --out (JSON).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import torch

from search_spaces import SPACES, scale_epochs
from trainable.cli import COUNT, FRACTION, POSITIVE, add_common_args, common_config
from trainable.config import SSL_COSINES, MixConfig, resolve
from trainable.cost import calibrate
from trainable.engine import Engine, load_training_data
from tuning.summary import (comparison_table, format_paired, format_table, paired_difference, paired_stats,
                            trial_row)

METHODS = ("sl", "ssl_sl", "mixtraining")
PROTOCOL = {k: v for k, v in SPACES["table1"].items() if k != "epochs"}  # alpha, rho, lam of Sec. 3.1


def run_one(cfg: MixConfig, data, step_seconds: dict[str, float], epoch_scale: float) -> dict:
    """Train one configuration to the end; its row for the comparison."""
    engine = Engine(resolve(cfg), data=data, step_seconds=step_seconds)
    while not engine.done:
        metrics = engine.run_epoch()
    metrics.update({f"test_{k}": v for k, v in engine.evaluate("test").items()})
    return trial_row({**cfg.to_dict(), "_epoch_scale": epoch_scale}, metrics, completed=True, error=None,
                     trial_id=f"{cfg.method}-{cfg.fraction:g}-{cfg.seed}")


def runs_of(base: MixConfig, cosines: tuple[str, ...]) -> list[MixConfig]:
    """The runs of one seed and fraction: each method, and MixTraining again under each other SSL cosine."""
    runs = [base.replace(method=m) for m in METHODS]
    return runs + [base.replace(method="mixtraining", ssl_cosine=c) for c in cosines if c != base.ssl_cosine]


def replicate(base: MixConfig, fractions: list[float], seeds: int, epochs: int, epoch_scale: float,
              cosines: tuple[str, ...] = ()) -> pd.DataFrame:
    rows = []
    for fraction in fractions:
        data_by_seed = {}
        for seed in range(seeds):
            run = resolve(base.replace(fraction=fraction, seed=seed))
            data_by_seed[seed] = load_training_data(run)
        # One calibration per fraction: the per-image cost of each step kind on this device, alone.
        step_seconds = calibrate(Engine(resolve(base.replace(fraction=fraction)), data=data_by_seed[0]))
        for seed in range(seeds):
            for cfg in runs_of(base.replace(fraction=fraction, seed=seed, e_ssl=epochs, e_sl=epochs, **PROTOCOL),
                               cosines):
                t0 = time.perf_counter()
                rows.append(run_one(cfg, data_by_seed[seed], step_seconds, epoch_scale))
                r = rows[-1]
                label = cfg.method if cfg.ssl_cosine == base.ssl_cosine else f"{cfg.method} ({cfg.ssl_cosine})"
                print(f"fraction {fraction:g} seed {seed} {label:<11} test_acc={r['test_acc']:.4f} "
                      f"train {r['train_time_s']:.1f} s ({time.perf_counter() - t0:.1f} s with evaluation)",
                      flush=True)
    return pd.DataFrame(rows)


def cosine_ablation(df: pd.DataFrame, default: str) -> pd.DataFrame:
    """Per fraction, MixTraining under each other SSL cosine against `default`'s on the same seeds: the paired
    difference in test accuracy (t-interval), each schedule's difference against SSL+SL, and the cost ratios."""
    rows = []
    for fraction, runs in df.groupby("fraction"):
        mix = runs[runs["method"] == "mixtraining"]
        ref = mix[mix["ssl_cosine"] == default].set_index("seed")
        base = runs[runs["method"] == "ssl_sl"].set_index("seed")["test_acc"]
        for cosine, alt in mix[mix["ssl_cosine"] != default].groupby("ssl_cosine"):
            alt = alt.set_index("seed")
            rows.append({"fraction": fraction, "epochs": int(runs["epochs"].iloc[0]), "ssl_cosine": cosine,
                         "versus": default, **paired_difference((alt["test_acc"] - ref["test_acc"]).dropna()),
                         "vs_ssl_sl": (alt["test_acc"] - base).mean(), "default_vs_ssl_sl": (ref["test_acc"] - base).mean(),
                         "compute_ratio": alt["compute_tflop"].mean() / ref["compute_tflop"].mean(),
                         "time_ratio": alt["calibrated_time_s"].mean() / ref["calibrated_time_s"].mean()})
    return pd.DataFrame(rows)


def format_ablation(ablation: pd.DataFrame) -> str:
    lines = []
    for r in ablation.to_dict("records"):
        ci = ("no interval (n < 2 or no spread)" if math.isnan(r["ci_low"])
              else f"95% CI [{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]")
        lines.append(f"MixTraining ssl_cosine={r['ssl_cosine']} - ssl_cosine={r['versus']} (fraction {r['fraction']:g}, "
                     f"epochs {r['epochs']}): {100 * r['mean_diff']:+.2f} points, {ci}, n={r['n']}; against SSL+SL "
                     f"{100 * r['vs_ssl_sl']:+.2f} vs {100 * r['default_vs_ssl_sl']:+.2f} points; compute "
                     f"{r['compute_ratio']:.2f}x, time {r['time_ratio']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/replicate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=COUNT, default=3, help="seeds per method and fraction (default 3)")
    p.add_argument("--fraction", type=FRACTION, nargs="+", default=[1.0, 0.1], help="data fractions (default 1 0.1)")
    p.add_argument("--epoch-scale", type=POSITIVE, default=1.0, help="of the paper's 100 epochs (default 1)")
    p.add_argument("--threads", type=COUNT, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--ablate-ssl-cosine", action="store_true",
                   help="also train MixTraining under the other SSL cosine (--ssl-cosine) on every seed and print the "
                        "paired difference; the table keeps the --ssl-cosine runs")
    p.add_argument("--out", type=Path, help="write the runs, the table and the paired statistics here (JSON)")
    add_common_args(p, default_dataset="digits")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = scale_epochs(SPACES["table1"]["epochs"], args.epoch_scale)
    base = MixConfig(**common_config(args))
    device = resolve(base).device
    print(f"Table 1 protocol on {'+'.join(base.datasets)}: {epochs} + {epochs} epochs, {args.seeds} seeds, "
          f"fractions {' '.join(f'{f:g}' for f in args.fraction)}, model {resolve(base).model} on {device}",
          flush=True)
    t0 = time.perf_counter()
    cosines = SSL_COSINES if args.ablate_ssl_cosine else ()
    runs = replicate(base, args.fraction, args.seeds, epochs, args.epoch_scale, cosines)
    df = runs[runs["ssl_cosine"] == base.ssl_cosine]
    table, paired = comparison_table(df), paired_stats(df)
    print(f"\n{format_table(table)}\n\n{format_paired(paired)}")
    ablation = cosine_ablation(runs, base.ssl_cosine) if cosines else pd.DataFrame()
    if cosines:
        print(f"\n== SSL cosine (mix_optim {base.mix_optim}) ==\n{format_ablation(ablation)}")
    print(f"{len(runs)} runs in {time.perf_counter() - t0:.0f} s")
    if args.out:
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        result = {"machine": f"{platform.machine()} {platform.processor() or ''} {gpu or 'CPU'} "
                             f"torch {torch.__version__} threads {args.threads}".strip(),
                  "command": "python benchmarks/replicate.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "runs": runs.to_dict("records"), "table": table.to_dict("records"),
                  "paired": paired.to_dict("records"), "ssl_cosine_ablation": ablation.to_dict("records"),
                  "markdown": format_table(table) + "\n\n" + format_paired(paired)
                  + (f"\n\n{format_ablation(ablation)}" if cosines else "")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
