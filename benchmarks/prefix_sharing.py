"""SSL-only epochs trained for the `paper` grid with and without SSL-prefix sharing, and search efficiency.

    python benchmarks/prefix_sharing.py --epoch-scale 0.08 --concurrent 4

Runs `tuning/search.py --space paper --search grid` twice in one Ray instance (sharing off,
then on), 4 trials at a time, and reports for each: SSL-only epochs actually trained, wall
time, and search efficiency = sum of the trials' own training time / (wall time x slots).
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from trainable.schedule import phase_plan

from common import run_search, run_searches, search_parser, write_result  # benchmarks/common.py (this folder is on sys.path when run as a script)


def ssl_only_planned(row) -> int:
    e_ssl = 0 if row.method == "sl" else row.epochs
    rho = 0.0 if row.method != "mixtraining" else row.rho
    return phase_plan(e_ssl, row.epochs, rho).ssl


def run(share: bool, args, storage: str) -> dict:
    argv = ["--space", "paper", "--search", "grid", "--scheduler", "fifo", "--dataset", args.dataset,
            "--model", args.model, "--epoch-scale", str(args.epoch_scale), "--fraction", str(args.fraction),
            "--cpus-per-trial", str(2 / args.concurrent), "--max-concurrent", str(args.concurrent),
            "--storage-path", storage, "--name", f"share-{share}", "--no-mlflow", "--verbose", "0",
            "--checkpoint-every", "100"] + ([] if share else ["--no-share-ssl"])
    df, wall = run_search(argv)
    planned = sum(ssl_only_planned(r) for r in df.itertuples())
    reused = int(df["ssl_epochs_reused"].sum())
    own_time = float((df["train_time_s"] - df["ssl_time_reused_s"]).sum())
    return {"trials": len(df), "ssl_only_epochs_planned": planned, "ssl_only_epochs_trained": planned - reused,
            "wall_s": wall, "trials_own_train_time_s": own_time,
            "search_efficiency": own_time / (wall * args.concurrent)}


def main(argv=None) -> int:
    p = search_parser(__doc__, 0.08, "50/75/100 epochs -> 4/6/8")
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--concurrent", type=int, default=4)
    args = p.parse_args(argv)
    results = run_searches(lambda share, storage: run(share, args, storage),
                           {"without_sharing": False, "with_sharing": True})
    off, on = results["without_sharing"], results["with_sharing"]
    results.update(
        machine=f"{platform.machine()} torch {torch.__version__} cpu, 2 cores, {args.concurrent} trials at once",
        config=vars(args),
        ssl_epochs_ratio=off["ssl_only_epochs_trained"] / max(1, on["ssl_only_epochs_trained"]),
        wall_ratio=off["wall_s"] / on["wall_s"])
    for name in ("without_sharing", "with_sharing"):
        r = results[name]
        print(f"{name:<16} trials {r['trials']}  SSL-only epochs trained {r['ssl_only_epochs_trained']:>4} "
              f"of {r['ssl_only_epochs_planned']}  wall {r['wall_s']:.1f} s  search efficiency "
              f"{100 * r['search_efficiency']:.0f}%")
    print(f"SSL-only epochs: {results['ssl_epochs_ratio']:.1f}x fewer with sharing; "
          f"wall time {results['wall_ratio']:.2f}x shorter")
    return write_result(args.out, results)


if __name__ == "__main__":
    sys.exit(main())
