"""SSL-only epochs trained for the `paper` grid with and without SSL-prefix sharing, and search efficiency.

    python benchmarks/prefix_sharing.py --epoch-scale 0.08 --concurrent 4

Runs `tuning/search.py --space paper --search grid` twice in one Ray instance (sharing off,
then on), 4 trials at a time, and reports for each: SSL-only epochs actually trained, wall
time, and search efficiency = sum of the trials' own training time / (wall time x slots).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray
import torch

from trainable.schedule import phase_plan
from tuning import search


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
    parser = search.build_parser()
    a = parser.parse_args(argv)
    search.validate(a, parser)
    t0 = time.perf_counter()
    df = search.run(a).df
    wall = time.perf_counter() - t0
    planned = sum(ssl_only_planned(r) for r in df.itertuples())
    reused = int(df["ssl_epochs_reused"].sum())
    own_time = float((df["train_time_s"] - df["ssl_time_reused_s"]).sum())
    return {"trials": len(df), "ssl_only_epochs_planned": planned, "ssl_only_epochs_trained": planned - reused,
            "wall_s": wall, "trials_own_train_time_s": own_time,
            "search_efficiency": own_time / (wall * args.concurrent)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="tiny")
    p.add_argument("--epoch-scale", type=float, default=0.08, help="50/75/100 epochs -> 4/6/8")
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--out")
    args = p.parse_args(argv)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        results = {"without_sharing": run(False, args, storage), "with_sharing": run(True, args, storage)}
    ray.shutdown()
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
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
